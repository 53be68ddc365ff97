/*
 * ref.c - the oracle: naive attention in double precision, one row at a time.
 *
 * What it is: SPEC.md section 1 read literally, over the same work description as the fast
 * kernels (a row sees the union of its segment's slices). Two passes per row (max, then
 * exp-sum and accumulation), recomputing the scores, so nothing of size Lq x Lk or even Lk is
 * stored. What it is not: fast. Every kernel is tested against it.
 */
#include "internal.h"
#include "cpu/convert.h"

#include <math.h>

struct ref_job {
    const struct attn_work *w;
};

/* The score of (row, col) under slice sl, or -inf when invisible. */
static double ref_score(const struct attn_work *w, const struct attn_segment *sg,
                        const struct attn_slice *sl, int64_t b, int64_t h, int64_t row, int64_t col) {
    if (row < sl->q0 || row >= sl->q1 || col < sl->k0 || col >= sl->k1) return -INFINITY;
    const int64_t dc = col - row;
    if (dc < sl->dlo || dc > sl->dhi) return -INFINITY;
    if (w->mask.data && w->mask.data[scoresrc_offset(&w->mask, sg, h, row, col)] == 0) return -INFINITY;
    const int64_t g = h / (w->Hq / w->Hk);
    const char *q = w->q.data + (b * w->q.sb + row * w->q.st + h * w->q.sh) * (int64_t)dtype_size(w->q.dtype);
    const char *k = kv_row(w, &w->k, sg, col, g);
    double s = 0.0;
    for (int64_t d = 0; d < w->D; d++)
        s += (double)load_f32(q, w->q.dtype, d) * (double)load_f32(k, w->k.dtype, d);
    s *= (double)w->scale;
    if (w->softcap > 0.0f) s = (double)w->softcap * tanh(s / (double)w->softcap);
    if (w->alibi) {
        const double slope = w->alibi[b * w->alibi_sb + h * w->alibi_sh];
        s -= slope * fabs((double)(dc - sl->alibi_diag));
    }
    if (w->bias.data) s += (double)load_f32(w->bias.data, w->bias.dtype, scoresrc_offset(&w->bias, sg, h, row, col));
    return s;
}

static void ref_item(void *ctx, int64_t item, int32_t thread) {
    const struct attn_work *w = ((struct ref_job *)ctx)->w;
    const int64_t seg = item / w->Hq, h = item % w->Hq, g = h / (w->Hq / w->Hk);
    const struct attn_segment *sg = &w->segments[seg];
    const int64_t b = sg->b, Dv = w->Dv;
    double acc[CFLASH_MAX_HEAD_DIM];
    for (int64_t row = sg->q0; row < sg->q1; row++) {
        double m = -INFINITY;
        for (int64_t si = sg->s0; si < sg->s1; si++)
            for (int64_t col = w->slices[si].k0; col < w->slices[si].k1; col++) {
                double s = ref_score(w, sg, &w->slices[si], b, h, row, col);
                if (s > m) m = s;
            }
        const double z = w->sinks ? (double)w->sinks[h * w->sinks_sh] : -INFINITY;
        const double mm = z > m ? z : m;
        double l = 0.0;
        for (int64_t d = 0; d < Dv; d++) acc[d] = 0.0;
        if (mm != -INFINITY) {
            for (int64_t si = sg->s0; si < sg->s1; si++)
                for (int64_t col = w->slices[si].k0; col < w->slices[si].k1; col++) {
                    double s = ref_score(w, sg, &w->slices[si], b, h, row, col);
                    if (s == -INFINITY) continue;
                    double p = exp(s - mm);
                    l += p;
                    const char *v = kv_row(w, &w->v, sg, col, g);
                    for (int64_t d = 0; d < Dv; d++) acc[d] += p * (double)load_f32(v, w->v.dtype, d);
                }
            if (w->sinks) l += exp(z - mm);
        }
        char *o = w->out.data + (b * w->out.sb + row * w->out.st + h * w->out.sh) * (int64_t)dtype_size(w->out.dtype);
        for (int64_t d = 0; d < Dv; d++)
            store_f32(o, w->out.dtype, d, l > 0.0 ? (float)(acc[d] / l) : 0.0f);
        if (w->lse_data)
            w->lse_data[b * w->lse_sb + h * w->lse_sh + row * w->lse_st] =
                l > 0.0 ? (float)(mm + log(l)) : -INFINITY;
    }
}

enum cflash_status cpu_ref_attention(const struct attn_work *w) {
    struct ref_job job = {w};
    return cpu_parallel_for(w->num_threads, w->num_segments * w->Hq, ref_item, &job);
}
