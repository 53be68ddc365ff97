/*
 * test_merge.c - cflash_merge (SPEC 7): the worked example, -inf rules, random states against
 * the formula in fp64 (rank 3 and rank 4, every dtype, fp32 out, strided out, in place,
 * lse_out NULL), and the promise that merging a split of the key set reproduces the unsplit
 * attention row: attention over k[:, :s] and k[:, s:] (views, no copy), merged, against the
 * unsplit call.
 */
#include "attn_common.h"

#include <stdlib.h>
#include <string.h>

/* fp64 merge of one row: returns lse, writes o */
static double merge_row(double l1, const double *o1, double l2, const double *o2, int64_t Dv,
                        double *o)
{
    double m = l1 > l2 ? l1 : l2;
    if (m == -INFINITY) {
        for (int64_t d = 0; d < Dv; d++)
            o[d] = 0;
        return -INFINITY;
    }
    double w1 = exp(l1 - m), w2 = exp(l2 - m);
    for (int64_t d = 0; d < Dv; d++)
        o[d] = (w1 * o1[d] + w2 * o2[d]) / (w1 + w2);
    return m + log(w1 + w2);
}

/* ---- the worked example: 1.0 (+) 2.0 -> weights 0.2689 / 0.7311, lse 2.3133 ------------- */

static void merge_worked(const void *arg)
{
    (void)arg;
    float o1[4] = {1, 2, 3, 4}, o2[4] = {-1, 0, 5, 2}, out[4];
    float l1 = 1.0f, l2 = 2.0f, lo = 0;
    int64_t os[3] = {1, 1, 4}, ls[2] = {1, 1};
    struct cflash_tensor t1 = tdesc(o1, CFLASH_DTYPE_F32, 3, os), t2 = tdesc(o2, CFLASH_DTYPE_F32, 3, os),
                         to = tdesc(out, CFLASH_DTYPE_F32, 3, os);
    struct cflash_tensor tl1 = tdesc(&l1, CFLASH_DTYPE_F32, 2, ls), tl2 = tdesc(&l2, CFLASH_DTYPE_F32, 2, ls),
                         tlo = tdesc(&lo, CFLASH_DTYPE_F32, 2, ls);
    CHECK_STATUS(cflash_merge(&t1, &tl1, &t2, &tl2, &to, &tlo), CFLASH_STATUS_OK);
    CHECK(fabs(lo - 2.3133) <= 1e-4, "lse = %.6f, want 2.3133", lo);
    for (int d = 0; d < 4; d++)
        CHECK(fabs(out[d] - (0.2689 * o1[d] + 0.7311 * o2[d])) <= 2e-4,
              "out[%d] = %.6f, want 0.2689*%g + 0.7311*%g", d, out[d], o1[d], o2[d]);

    /* -inf (+) x = x, x (+) -inf = x, -inf (+) -inf = (0, -inf) */
    const float cases[3][2] = {{-INFINITY, 0.7f}, {-0.4f, -INFINITY}, {-INFINITY, -INFINITY}};
    for (int c = 0; c < 3; c++) {
        l1 = cases[c][0];
        l2 = cases[c][1];
        memset(out, 0xff, sizeof out);
        lo = NAN;
        CHECK_STATUS(cflash_merge(&t1, &tl1, &t2, &tl2, &to, &tlo), CFLASH_STATUS_OK);
        for (int d = 0; d < 4; d++) {
            float want = c == 0 ? o2[d] : c == 1 ? o1[d] : 0.0f;
            CHECK(fabs(out[d] - want) <= 1e-6 && isfinite(out[d]),
                  "(%g) (+) (%g): out[%d] = %g, want %g", l1, l2, d, out[d], want);
        }
        float wl = c == 0 ? l2 : c == 1 ? l1 : -INFINITY;
        CHECK(c == 2 ? lo == -INFINITY : fabs(lo - wl) <= 1e-6, "(%g) (+) (%g): lse = %g, want %g",
              l1, l2, lo, wl);
        if (c == 2)
            for (int d = 0; d < 4; d++)
                CHECK(out[d] == 0, "-inf (+) -inf: out[%d] = %g, want exactly 0", d, out[d]);
    }
}

/* ---- random states against the formula ------------------------------------------------- */

enum { MERGE_NEW = 0, MERGE_INPLACE = 1, MERGE_NO_LSE = 2, MERGE_STRIDED = 3 };

struct merge_arg {
    enum cflash_dtype dt;
    int out_f32;
    int rank;
    int mode;
    uint64_t seed;
};

static void merge_random(const void *arg)
{
    const struct merge_arg *a = arg;
    struct rng r = {a->seed};
    const int64_t B = 2, L = 13, H = 3, Dv = 40, T = B * L;
    int64_t os4[4] = {B, L, H, Dv}, ls4[3] = {B, H, L}, os3[3] = {T, H, Dv}, ls3[2] = {H, T};
    const int64_t *os = a->rank == 4 ? os4 : os3, *ls = a->rank == 4 ? ls4 : ls3;
    int ond = a->rank, lnd = a->rank - 1;
    static const int bhsd4[4] = {0, 2, 1, 3}, bhsd3[3] = {1, 0, 2};
    struct tbuf o1, o2, l1, l2, out, lo;
    memset(&out, 0, sizeof out);
    memset(&lo, 0, sizeof lo);
    /* inputs: o2 in a permuted layout, lse2 padded, to exercise input strides */
    tbuf_make(&o1, a->dt, ond, os, NULL, 0, -1);
    tbuf_make(&o2, a->dt, ond, os, a->rank == 4 ? bhsd4 : bhsd3, 0, -1);
    tbuf_make(&l1, CFLASH_DTYPE_F32, lnd, ls, NULL, 0, -1);
    tbuf_make(&l2, CFLASH_DTYPE_F32, lnd, ls, NULL, 1, -1);
    tfill_randn(&o1.t, &r, 0, 1);
    tfill_randn(&o2.t, &r, 0.5, 2);
    tfill_randn(&l1.t, &r, 0, 3);
    tfill_randn(&l2.t, &r, 1, 3);
    /* -inf rows: some in lse1, some in lse2, some in both */
    int64_t nl = tnumel(&l1.t), idx[4];
    for (int64_t i = 0; i < nl; i++) {
        int64_t li[3];
        if (lnd == 2) {
            li[0] = i / T;
            li[1] = i % T;
        } else {
            li[0] = i / (H * L);
            li[1] = (i / L) % H;
            li[2] = i % L;
        }
        int kind = (int)(rng_next(&r) % 7);
        if (kind == 0 || kind == 2)
            tset(&l1.t, li, -INFINITY);
        if (kind == 1 || kind == 2)
            tset(&l2.t, li, -INFINITY);
    }
    /* expected values in fp64 from the stored inputs */
    double *e_o = malloc((size_t)(T * H * Dv) * sizeof *e_o), *e_l = malloc((size_t)(T * H) * sizeof *e_l);
    double *r1 = malloc((size_t)Dv * sizeof *r1), *r2 = malloc((size_t)Dv * sizeof *r2);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            int64_t li[3], b = t / L, i = t % L;
            if (lnd == 2) {
                li[0] = h;
                li[1] = t;
            } else {
                li[0] = b;
                li[1] = h;
                li[2] = i;
            }
            for (int64_t d = 0; d < Dv; d++) {
                if (ond == 3) {
                    idx[0] = t;
                    idx[1] = h;
                    idx[2] = d;
                } else {
                    idx[0] = b;
                    idx[1] = i;
                    idx[2] = h;
                    idx[3] = d;
                }
                r1[d] = tget(&o1.t, idx);
                r2[d] = tget(&o2.t, idx);
            }
            e_l[t * H + h] = merge_row(tget(&l1.t, li), r1, tget(&l2.t, li), r2, Dv, e_o + (t * H + h) * Dv);
        }
    enum cflash_dtype odt = a->out_f32 ? CFLASH_DTYPE_F32 : a->dt;
    const struct cflash_tensor *pout, *plo;
    if (a->mode == MERGE_INPLACE) {
        pout = &o1.t;
        plo = &l1.t;
    } else {
        tbuf_make(&out, odt, ond, os, NULL, a->mode == MERGE_STRIDED ? 3 : 0, -1);
        tbuf_make(&lo, CFLASH_DTYPE_F32, lnd, ls, NULL, a->mode == MERGE_STRIDED ? 1 : 0, -1);
        tbuf_poison(&out, 0xff);
        tbuf_poison(&lo, 0xff);
        pout = &out.t;
        plo = a->mode == MERGE_NO_LSE ? NULL : &lo.t;
    }
    enum cflash_status st = cflash_merge(&o1.t, &l1.t, &o2.t, &l2.t, pout, plo);
    char msg[512] = "";
    if (st != CFLASH_STATUS_OK)
        snprintf(msg, sizeof msg, "cflash_merge returned %s (%s)", cflash_status_string(st),
                 cflash_last_error());
    double rel = odt == CFLASH_DTYPE_F32 ? 2e-6 : odt == CFLASH_DTYPE_F16 ? 1.0 / 1024 : 1.0 / 256;
    for (int64_t t = 0; !msg[0] && t < T; t++)
        for (int64_t h = 0; !msg[0] && h < H; h++) {
            int64_t li[3], b = t / L, i = t % L;
            if (lnd == 2) {
                li[0] = h;
                li[1] = t;
            } else {
                li[0] = b;
                li[1] = h;
                li[2] = i;
            }
            double wl = e_l[t * H + h];
            if (plo) {
                double gl = tget(plo, li);
                if (isinf(wl) ? gl != wl : !(fabs(gl - wl) <= 1e-5 * (1 + fabs(wl))))
                    snprintf(msg, sizeof msg, "lse_out[t=%lld,h=%lld] = %.9g, want %.9g", (long long)t,
                             (long long)h, gl, wl);
            }
            for (int64_t d = 0; !msg[0] && d < Dv; d++) {
                if (ond == 3) {
                    idx[0] = t;
                    idx[1] = h;
                    idx[2] = d;
                } else {
                    idx[0] = b;
                    idx[1] = i;
                    idx[2] = h;
                    idx[3] = d;
                }
                double g = tget(pout, idx), w = e_o[(t * H + h) * Dv + d];
                int bad = isinf(wl) ? g != 0 : !(fabs(g - w) <= rel * fabs(w) + 1e-6);
                if (bad)
                    snprintf(msg, sizeof msg, "out[t=%lld,h=%lld,d=%lld] = %.9g, want %.9g (lse %g)",
                             (long long)t, (long long)h, (long long)d, g, w, wl);
            }
        }
    if (!msg[0] && a->mode != MERGE_INPLACE) {
        int64_t g = tbuf_gap_changes(&out, 0xff) + tbuf_gap_changes(&lo, 0xff);
        if (a->mode == MERGE_NO_LSE) {
            g = tbuf_gap_changes(&out, 0xff);
            for (size_t i = 0; i < lo.bytes; i++)
                if (lo.base[i] != 0xff)
                    g++;
        }
        if (g)
            snprintf(msg, sizeof msg, "%lld bytes written outside the views (or to an unused lse)",
                     (long long)g);
    }
    free(e_o);
    free(e_l);
    free(r1);
    free(r2);
    tbuf_free(&o1);
    tbuf_free(&o2);
    tbuf_free(&l1);
    tbuf_free(&l2);
    tbuf_free(&out);
    tbuf_free(&lo);
    CHECK(!msg[0], "%s", msg);
}

/* ---- merging a split key set reproduces the unsplit attention --------------------------- */

struct split_arg {
    enum cflash_kernel kernel;
    enum cflash_dtype dt;
    int Lk, s;   /* keys [0, s) and [s, Lk) */
    int rank;    /* 4: dense [B, L, H, Dv]; 3: the B = 1 results viewed as [L, H, Dv] */
    int sinks;   /* the sinks join the first call only */
    int softcap;
    int layout;
};

static struct cflash_tensor key_slice(const struct cflash_tensor *t, int64_t start, int64_t len)
{
    struct cflash_tensor v = *t;
    if (t->data)
        v.data = (char *)t->data + start * t->stride[1] * (int64_t)dtype_size(t->dtype);
    v.shape[1] = len;
    if (len == 0)
        v.data = NULL;
    return v;
}

/* rank-4 [1, L, H, Dv] -> rank-3 [L, H, Dv]; lse [1, H, L] -> [H, L] */
static struct cflash_tensor drop_batch(const struct cflash_tensor *t)
{
    struct cflash_tensor v = *t;
    v.ndim = t->ndim - 1;
    for (int i = 0; i < v.ndim; i++) {
        v.shape[i] = t->shape[i + 1];
        v.stride[i] = t->stride[i + 1];
    }
    return v;
}

static void merge_split(const void *arg)
{
    const struct split_arg *a = arg;
    if (!require_kernel(a->kernel))
        return;
    struct attn_cfg c = cfg_default();
    c.kernel = a->kernel;
    c.dtype = a->dt;
    c.B = a->rank == 4 ? 2 : 1;
    c.Lq = 19;
    c.Lk = a->Lk;
    c.Hq = 4;
    c.Hk = 2;
    c.D = 64;
    c.Dv = 48;
    c.sinks = a->sinks;
    c.softcap = a->softcap ? 5.0f : 0.0f;
    c.layout = a->layout;
    c.seed = 0x5011171ull + (uint64_t)a->Lk * 31 + (uint64_t)a->s;
    struct attn_setup s;
    attn_setup(&s, &c);
    struct oracle_in in;
    attn_oracle_in(&s, &in);
    struct tbuf full, lfull, p1, l1, p2, l2, m, lm;
    attn_make_out(&s, &full, CFLASH_DTYPE_F32, OUT_CONTIG);
    attn_make_lse(&s, &lfull, LSE_CONTIG);
    attn_make_out(&s, &p1, CFLASH_DTYPE_F32, OUT_CONTIG);
    attn_make_lse(&s, &l1, LSE_CONTIG);
    attn_make_out(&s, &p2, CFLASH_DTYPE_F32, OUT_BHSD);
    attn_make_lse(&s, &l2, LSE_PADDED);
    attn_make_out(&s, &m, CFLASH_DTYPE_F32, OUT_PADDED);
    attn_make_lse(&s, &lm, LSE_CONTIG);
    char msg[512] = "";
    enum cflash_status st = attn_call(&s, CFLASH_KERNEL_REFERENCE, 0, &full.t, &lfull.t);
    if (st != CFLASH_STATUS_OK)
        snprintf(msg, sizeof msg, "unsplit reference call: %s (%s)", cflash_status_string(st),
                 cflash_last_error());
    struct cflash_tensor k1 = key_slice(&s.k.t, 0, a->s), k2 = key_slice(&s.k.t, a->s, a->Lk - a->s);
    struct cflash_tensor v1 = key_slice(&s.v.t, 0, a->s), v2 = key_slice(&s.v.t, a->s, a->Lk - a->s);
    struct cflash_attn_params pp = s.params;
    pp.kernel = a->kernel;
    if (!msg[0]) {
        st = cflash_attn_dense(&s.q.t, &k1, &v1, &p1.t, &l1.t, &pp);
        if (st != CFLASH_STATUS_OK)
            snprintf(msg, sizeof msg, "part 1 call: %s (%s)", cflash_status_string(st), cflash_last_error());
    }
    pp.sinks = NULL;
    if (!msg[0]) {
        st = cflash_attn_dense(&s.q.t, &k2, &v2, &p2.t, &l2.t, &pp);
        if (st != CFLASH_STATUS_OK)
            snprintf(msg, sizeof msg, "part 2 call: %s (%s)", cflash_status_string(st), cflash_last_error());
    }
    if (!msg[0]) {
        if (a->rank == 4) {
            st = cflash_merge(&p1.t, &l1.t, &p2.t, &l2.t, &m.t, &lm.t);
        } else {
            struct cflash_tensor a1 = drop_batch(&p1.t), b1 = drop_batch(&l1.t), a2 = drop_batch(&p2.t),
                                 b2 = drop_batch(&l2.t), am = drop_batch(&m.t), bm = drop_batch(&lm.t);
            st = cflash_merge(&a1, &b1, &a2, &b2, &am, &bm);
        }
        if (st != CFLASH_STATUS_OK)
            snprintf(msg, sizeof msg, "cflash_merge: %s (%s)", cflash_status_string(st), cflash_last_error());
    }
    if (!msg[0]) {
        /* SPEC 7: merging a split reproduces the unsplit row within the SPEC 1 tolerance */
        double num = 0, den = 0, maxabs = 0, e_naive = 0;
        const int half = a->dt != CFLASH_DTYPE_F32;
        if (half) {
            int64_t n = s.Tq * s.Hq * s.Dv;
            double *on = malloc((size_t)(n ? n : 1) * sizeof *on);
            oracle_attn(&in, a->dt, on, NULL);
            for (int64_t t = 0; t < s.Tq; t++)
                for (int64_t h = 0; h < s.Hq; h++)
                    for (int64_t d = 0; d < s.Dv; d++) {
                        double e = fabs(on[(t * s.Hq + h) * s.Dv + d] - attn_out_at(&s, &full.t, t, h, d));
                        if (e > e_naive)
                            e_naive = e;
                    }
            free(on);
        }
        for (int64_t t = 0; !msg[0] && t < s.Tq; t++)
            for (int64_t h = 0; !msg[0] && h < s.Hq; h++) {
                double gl = attn_lse_at(&s, &lm.t, t, h), wl = attn_lse_at(&s, &lfull.t, t, h);
                if (!(fabs(gl - wl) <= (half ? 1e-3 : 1e-4) + 1e-6 * fabs(wl)))
                    snprintf(msg, sizeof msg, "merged lse[t=%lld,h=%lld] = %.9g, unsplit %.9g",
                             (long long)t, (long long)h, gl, wl);
                for (int64_t d = 0; d < s.Dv; d++) {
                    double g = attn_out_at(&s, &m.t, t, h, d), w = attn_out_at(&s, &full.t, t, h, d);
                    if (!isfinite(g) && !msg[0])
                        snprintf(msg, sizeof msg, "merged out[t=%lld,h=%lld,d=%lld] = %g",
                                 (long long)t, (long long)h, (long long)d, g);
                    num += (g - w) * (g - w);
                    den += w * w;
                    if (fabs(g - w) > maxabs)
                        maxabs = fabs(g - w);
                }
            }
        if (!msg[0] && !half && sqrt(num / den) > 1e-5)
            snprintf(msg, sizeof msg, "merged vs unsplit: relative L2 error %.3g > 1e-5", sqrt(num / den));
        if (!msg[0] && half && maxabs > 2 * e_naive + 1e-3)
            snprintf(msg, sizeof msg, "merged vs unsplit: max abs error %.3g > 2*e_naive+1e-3 = %.3g",
                     maxabs, 2 * e_naive + 1e-3);
    }
    oracle_in_free(&in);
    tbuf_free(&full);
    tbuf_free(&lfull);
    tbuf_free(&p1);
    tbuf_free(&l1);
    tbuf_free(&p2);
    tbuf_free(&l2);
    tbuf_free(&m);
    tbuf_free(&lm);
    attn_free(&s);
    CHECK(!msg[0], "%s", msg);
}

void register_merge_tests(void)
{
    tcase_add("merge/worked/1.0+2.0_and_-inf", merge_worked, NULL, 0);
    static const char *modes[] = {"new", "inplace", "lse_out=null", "strided_out"};
    char name[256];
    static const enum cflash_dtype dts[3] = {CFLASH_DTYPE_F32, CFLASH_DTYPE_F16, CFLASH_DTYPE_BF16};
    for (int di = 0; di < 3; di++)
        for (int of = 0; of < 2; of++)
            for (int rank = 3; rank <= 4; rank++)
                for (int mode = 0; mode < 4; mode++) {
                    if (of && (dts[di] == CFLASH_DTYPE_F32 || mode == MERGE_INPLACE))
                        continue;
                    struct merge_arg a = {dts[di], of, rank, mode, 0};
                    snprintf(name, sizeof name, "merge/random/%s%s/rank=%d/%s", dtype_name(dts[di]),
                             of ? "/out=f32" : "", rank, modes[mode]);
                    a.seed = hash_str(name);
                    tcase_add(name, merge_random, &a, sizeof a);
                }
    static const int splits[][2] = {{33, 16}, {33, 1}, {40, 39}, {17, 0}, {9, 9}};
    for (int k = 0; k < N_ALL_KERNELS; k++)
        for (int di = 0; di < 3; di++)
            for (size_t sp = 0; sp < sizeof splits / sizeof splits[0]; sp++) {
                struct split_arg a = {all_kernels[k], dts[di], splits[sp][0], splits[sp][1],
                                      sp % 2 ? 3 : 4, (int)(sp == 0 || sp == 2), (int)(sp == 1),
                                      (int)(sp % 4)};
                snprintf(name, sizeof name, "merge/split/%s/%s/Lk=%d,s=%d/rank=%d%s%s/layout=%d",
                         kname(a.kernel), dtype_name(a.dt), a.Lk, a.s, a.rank,
                         a.sinks ? "/sinks" : "", a.softcap ? "/softcap=5" : "", a.layout);
                tcase_add(name, merge_split, &a, sizeof a);
            }
}
