/*
 * merge.c - combine two partial attention states over disjoint key sets (SPEC.md section 7):
 *   m = max(lse1, lse2), w_i = exp(lse_i - m), o = (w1 o1 + w2 o2) / (w1 + w2),
 *   lse = m + ln(w1 + w2); -inf (+) x = x; -inf (+) -inf gives o = 0, lse = -inf.
 * Reads both inputs of a row before writing it, so out may alias o1 or o2 element for element.
 */
#include "internal.h"
#include "cpu/convert.h"

#include <math.h>

enum cflash_status cpu_merge(const struct cflash_tensor *o1, const struct cflash_tensor *lse1,
                             const struct cflash_tensor *o2, const struct cflash_tensor *lse2,
                             const struct cflash_tensor *out, const struct cflash_tensor *lse_out) {
    const int rank = o1->ndim;
    /* View both layouts as [B, T, H, Dv] with lse [B, H, T]. */
    const int64_t B = rank == 4 ? o1->shape[0] : 1;
    const int64_t T = o1->shape[rank - 3], H = o1->shape[rank - 2], Dv = o1->shape[rank - 1];
    const struct cflash_tensor *os[3] = {o1, o2, out};
    const struct cflash_tensor *ls[3] = {lse1, lse2, lse_out};
    int64_t osb[3], ost[3], osh[3], osd[3], lsb[3], lsh[3], lst[3];
    for (int i = 0; i < 3; i++) {
        const int64_t *s = os[i]->stride;
        osb[i] = rank == 4 ? s[0] : 0;
        ost[i] = s[rank - 3]; osh[i] = s[rank - 2]; osd[i] = s[rank - 1];
        if (ls[i]) {
            const int64_t *l = ls[i]->stride;
            lsb[i] = rank == 4 ? l[0] : 0;
            lsh[i] = l[rank - 3]; lst[i] = l[rank - 2];
        }
    }
    const enum cflash_dtype it = o1->dtype, ot = out->dtype;
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++) {
                const float *l1p = lse1->data, *l2p = lse2->data;
                const float a = l1p[b * lsb[0] + h * lsh[0] + t * lst[0]];
                const float c = l2p[b * lsb[1] + h * lsh[1] + t * lst[1]];
                const float m = a > c ? a : c;
                float w1 = 0.0f, w2 = 0.0f, lse = -INFINITY;
                if (m != -INFINITY) {
                    w1 = expf(a - m);
                    w2 = expf(c - m);
                    const float sum = w1 + w2;
                    lse = m + logf(sum);
                    w1 /= sum;
                    w2 /= sum;
                }
                const char *p1 = (const char *)o1->data + (b * osb[0] + t * ost[0] + h * osh[0]) * (int64_t)dtype_size(it);
                const char *p2 = (const char *)o2->data + (b * osb[1] + t * ost[1] + h * osh[1]) * (int64_t)dtype_size(it);
                char *po = (char *)out->data + (b * osb[2] + t * ost[2] + h * osh[2]) * (int64_t)dtype_size(ot);
                for (int64_t d = 0; d < Dv; d++) {
                    const float x = w1 == 0.0f ? 0.0f : w1 * load_f32(p1, it, d * osd[0]);
                    const float y = w2 == 0.0f ? 0.0f : w2 * load_f32(p2, it, d * osd[1]);
                    store_f32(po, ot, d * osd[2], x + y);
                }
                if (lse_out) ((float *)lse_out->data)[b * lsb[2] + h * lsh[2] + t * lst[2]] = lse;
            }
    return CFLASH_STATUS_OK;
}
