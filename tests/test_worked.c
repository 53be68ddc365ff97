/*
 * test_worked.c - the worked rows of SPEC.md sections 3 and 7, and exhaustive visible-set
 * checks of small mask configurations, through every kernel.
 *
 * The identity-value trick: with v = identity (Dv = Lk, v[j][j] = 1) the output row is exactly
 * the attention probability row, so the visible key set is the set of entries > 0 (random q
 * and k keep every visible probability far from underflow). Invisible keys must give exactly
 * 0, and a row with no visible key out 0 and lse -inf.
 */
#include "harness.h"

#include <stdlib.h>
#include <string.h>

static const enum cflash_dtype dtypes[3] = {CFLASH_DTYPE_F32, CFLASH_DTYPE_F16, CFLASH_DTYPE_BF16};

struct probs {
    int64_t Lq, Lk, Hq, Hk, D;
    double *p;   /* [Hq][Lq][Lk] */
    double *lse; /* [Hq][Lq] */
    double *q, *k; /* the inputs as stored: [Lq][Hq][D], [Lk][Hk][D] */
};

static void probs_free(struct probs *r)
{
    free(r->p);
    free(r->lse);
    free(r->q);
    free(r->k);
    memset(r, 0, sizeof *r);
}

/* Runs attention with v = identity and returns the probability rows. q_value: if finite, every
 * q element is that value (and k is given by k_values if non-NULL), else random. */
static enum cflash_status run_probs(struct probs *r, enum cflash_kernel kernel,
                                    enum cflash_dtype dt, int64_t Lq, int64_t Lk, int64_t Hq,
                                    int64_t Hk, int64_t D, const struct cflash_attn_params *params,
                                    double q_value, const double *k_values, uint64_t seed)
{
    struct rng rg = {seed};
    struct tbuf q, k, v, out, lse;
    int64_t qs[4] = {1, Lq, Hq, D}, ks[4] = {1, Lk, Hk, D}, vs[4] = {1, Lk, Hk, Lk},
            os[4] = {1, Lq, Hq, Lk}, ls[3] = {1, Hq, Lq};
    tbuf_make(&q, dt, 4, qs, NULL, 0, -1);
    tbuf_make(&k, dt, 4, ks, NULL, 0, -1);
    tbuf_make(&v, dt, 4, vs, NULL, 0, -1);
    tbuf_make(&out, CFLASH_DTYPE_F32, 4, os, NULL, 0, -1);
    tbuf_make(&lse, CFLASH_DTYPE_F32, 3, ls, NULL, 0, -1);
    if (isfinite(q_value)) {
        int64_t idx[4] = {0};
        for (idx[1] = 0; idx[1] < Lq; idx[1]++)
            for (idx[2] = 0; idx[2] < Hq; idx[2]++)
                for (idx[3] = 0; idx[3] < D; idx[3]++)
                    tset(&q.t, idx, q_value);
    } else {
        tfill_randn(&q.t, &rg, 0, 1);
    }
    if (k_values) {
        int64_t idx[4] = {0};
        for (idx[1] = 0; idx[1] < Lk; idx[1]++)
            for (idx[2] = 0; idx[2] < Hk; idx[2]++)
                for (idx[3] = 0; idx[3] < D; idx[3]++)
                    tset(&k.t, idx, k_values[(idx[1] * Hk + idx[2]) * D + idx[3]]);
    } else {
        tfill_randn(&k.t, &rg, 0, 1);
    }
    {
        int64_t idx[4] = {0};
        for (idx[1] = 0; idx[1] < Lk; idx[1]++)
            for (idx[2] = 0; idx[2] < Hk; idx[2]++)
                for (idx[3] = 0; idx[3] < Lk; idx[3]++)
                    tset(&v.t, idx, idx[1] == idx[3] ? 1.0 : 0.0);
    }
    tbuf_poison(&out, 0xff);
    tbuf_poison(&lse, 0xff);
    struct cflash_attn_params p = *params;
    p.kernel = kernel;
    enum cflash_status st = cflash_attn_dense(&q.t, &k.t, &v.t, &out.t, &lse.t, &p);
    r->Lq = Lq;
    r->Lk = Lk;
    r->Hq = Hq;
    r->Hk = Hk;
    r->D = D;
    r->p = malloc((size_t)(Hq * Lq * Lk + 1) * sizeof *r->p);
    r->lse = malloc((size_t)(Hq * Lq + 1) * sizeof *r->lse);
    r->q = tload(&q.t);
    r->k = tload(&k.t);
    for (int64_t h = 0; h < Hq; h++)
        for (int64_t i = 0; i < Lq; i++) {
            int64_t li[3] = {0, h, i};
            r->lse[h * Lq + i] = tget(&lse.t, li);
            for (int64_t j = 0; j < Lk; j++) {
                int64_t oi[4] = {0, i, h, j};
                r->p[(h * Lq + i) * Lk + j] = tget(&out.t, oi);
            }
        }
    tbuf_free(&q);
    tbuf_free(&k);
    tbuf_free(&v);
    tbuf_free(&out);
    tbuf_free(&lse);
    return st;
}

/* Checks the visible sets: expect(i, j) -> 0/1. Rows with no visible key: all 0, lse -inf. */
static int check_sets(const struct probs *r, int (*expect)(int64_t i, int64_t j, const void *ctx),
                      const void *ctx, enum cflash_dtype dt, const char *what)
{
    double sumtol = dt == CFLASH_DTYPE_F32 ? 1e-5 : 4e-3;
    for (int64_t h = 0; h < r->Hq; h++)
        for (int64_t i = 0; i < r->Lq; i++) {
            double sum = 0;
            int any = 0;
            for (int64_t j = 0; j < r->Lk; j++) {
                double p = r->p[(h * r->Lq + i) * r->Lk + j];
                int want = expect(i, j, ctx);
                CHECK0(isfinite(p), "%s %s: h=%lld row %lld key %lld: p = %g", what,
                       dtype_name(dt), (long long)h, (long long)i, (long long)j, p);
                if (want)
                    CHECK0(p > 0, "%s %s: h=%lld row %lld should see key %lld, p = %g", what,
                           dtype_name(dt), (long long)h, (long long)i, (long long)j, p);
                else
                    CHECK0(p == 0, "%s %s: h=%lld row %lld should not see key %lld, p = %g",
                           what, dtype_name(dt), (long long)h, (long long)i, (long long)j, p);
                sum += p;
                any |= want;
            }
            double l = r->lse[h * r->Lq + i];
            if (!any) {
                CHECK0(l == -INFINITY, "%s %s: empty row %lld (h=%lld): lse = %g, want -inf",
                       what, dtype_name(dt), (long long)i, (long long)h, l);
            } else {
                CHECK0(isfinite(l), "%s %s: row %lld: lse = %g", what, dtype_name(dt),
                       (long long)i, l);
                CHECK0(fabs(sum - 1) <= sumtol, "%s %s: row %lld (h=%lld): probabilities sum to %.9g",
                       what, dtype_name(dt), (long long)i, (long long)h, sum);
            }
        }
    return 1;
}

/* ---- the SPEC 3 worked rows, as literal strings: rows separated by '|', '-' = empty ---- */

struct worked {
    const char *name;
    int Lq, Lk, causal, align;
    int64_t wl, wr;
    const char *rows;
};

static const struct worked worked_rows[] = {
    {"causal_br/Lq=2,Lk=5", 2, 5, 1, CFLASH_ALIGN_BOTTOM_RIGHT, -1, -1, "0123|01234"},
    {"causal_br/Lq=5,Lk=2", 5, 2, 1, CFLASH_ALIGN_BOTTOM_RIGHT, -1, -1, "-|-|-|0|01"},
    {"window=(2,1)/Lq=6,Lk=6", 6, 6, 0, CFLASH_ALIGN_BOTTOM_RIGHT, 2, 1,
     "01|012|0123|1234|2345|345"},
    {"window=(1,0)/Lq=2,Lk=5", 2, 5, 0, CFLASH_ALIGN_BOTTOM_RIGHT, 1, 0, "23|34"},
    {"causal_tl/Lq=2,Lk=5", 2, 5, 1, CFLASH_ALIGN_TOP_LEFT, -1, -1, "0|01"},
    {"causal_tl/Lq=5,Lk=2", 5, 2, 1, CFLASH_ALIGN_TOP_LEFT, -1, -1, "0|01|01|01|01"},
    {"causal_tl/Lq=4,Lk=4", 4, 4, 1, CFLASH_ALIGN_TOP_LEFT, -1, -1, "0|01|012|0123"},
    {"causal_br+window=(1,-1)/Lq=3,Lk=6", 3, 6, 1, CFLASH_ALIGN_BOTTOM_RIGHT, 1, -1,
     "23|34|45"},
};

static int expect_rows(int64_t i, int64_t j, const void *ctx)
{
    const char *s = ctx;
    for (int64_t r = 0; r < i; r++) {
        s = strchr(s, '|');
        if (!s)
            return 0;
        s++;
    }
    for (; *s && *s != '|'; s++)
        if (*s - '0' == j)
            return 1;
    return 0;
}

struct worked_arg {
    enum cflash_kernel kernel;
    int idx;
};

static void worked_case(const void *arg)
{
    const struct worked_arg *a = arg;
    if (!require_kernel(a->kernel))
        return;
    const struct worked *w = &worked_rows[a->idx];
    for (int di = 0; di < 3; di++) {
        struct cflash_attn_params p = cflash_attn_params_default();
        p.causal = w->causal;
        p.align = (enum cflash_align)w->align;
        p.window_left = w->wl;
        p.window_right = w->wr;
        struct probs r;
        enum cflash_status st = run_probs(&r, a->kernel, dtypes[di], w->Lq, w->Lk, 2, 1, 16, &p,
                                          NAN, NULL, 1000 + (uint64_t)a->idx);
        if (st != CFLASH_STATUS_OK) {
            probs_free(&r);
            CHECK(0, "%s: status %s (%s)", dtype_name(dtypes[di]), cflash_status_string(st),
                  cflash_last_error());
        }
        int ok = check_sets(&r, expect_rows, w->rows, dtypes[di], w->name);
        probs_free(&r);
        if (!ok)
            return;
    }
}

/* ALiBi Lq=2, Lk=5, slope 0.5: with q = 0 every score is the bias alone. Row 0 adds
 * [-1.5,-1,-0.5,0,-0.5] (SPEC 3); row 1 adds -0.5*|4-j| = [-2,-1.5,-1,-0.5,0]. */
static void worked_alibi_zero_q(const void *arg)
{
    const struct worked_arg *a = arg;
    if (!require_kernel(a->kernel))
        return;
    static const double bias[2][5] = {{-1.5, -1, -0.5, 0, -0.5}, {-2, -1.5, -1, -0.5, 0}};
    for (int di = 0; di < 3; di++) {
        float slope = 0.5f;
        int64_t sh[1] = {1};
        struct cflash_tensor al = tdesc(&slope, CFLASH_DTYPE_F32, 1, sh);
        struct cflash_attn_params p = cflash_attn_params_default();
        p.alibi_slopes = &al;
        struct probs r;
        enum cflash_status st =
            run_probs(&r, a->kernel, dtypes[di], 2, 5, 1, 1, 8, &p, 0.0, NULL, 77);
        if (st != CFLASH_STATUS_OK) {
            probs_free(&r);
            CHECK(0, "status %s (%s)", cflash_status_string(st), cflash_last_error());
        }
        for (int i = 0; i < 2; i++) {
            double m = 0, sum = 0;
            for (int j = 0; j < 5; j++)
                sum += exp(bias[i][j] - m);
            for (int j = 0; j < 5; j++) {
                double want = exp(bias[i][j]) / sum, got = r.p[i * 5 + j];
                if (!(fabs(got - want) <= 1e-6)) {
                    probs_free(&r);
                    CHECK(0, "%s row %d key %d: p = %.9g, softmax(bias) = %.9g",
                          dtype_name(dtypes[di]), i, j, got, want);
                }
            }
            double wl = log(sum), gl = r.lse[i];
            if (!(fabs(gl - wl) <= 1e-6)) {
                probs_free(&r);
                CHECK(0, "%s row %d: lse = %.9g, want logsumexp(bias) = %.9g",
                      dtype_name(dtypes[di]), i, gl, wl);
            }
        }
        probs_free(&r);
    }
}

/* ALiBi with random q: p_j must be softmax_j(scale * q.k_j - slope * |i + Lk - Lq - j|), and
 * per-head slopes, GQA and a causal mask on top. */
static void worked_alibi_random_q(const void *arg)
{
    const struct worked_arg *a = arg;
    if (!require_kernel(a->kernel))
        return;
    for (int di = 0; di < 3; di++) {
        for (int causal = 0; causal < 2; causal++) {
            float slopes[4] = {0.5f, 0.25f, 1.0f, 0.125f};
            int64_t sh[1] = {4};
            struct cflash_tensor al = tdesc(slopes, CFLASH_DTYPE_F32, 1, sh);
            struct cflash_attn_params p = cflash_attn_params_default();
            p.alibi_slopes = &al;
            p.causal = causal;
            const int64_t Lq = 3, Lk = 7, Hq = 4, Hk = 2, D = 16;
            struct probs r;
            enum cflash_status st = run_probs(&r, a->kernel, dtypes[di], Lq, Lk, Hq, Hk, D, &p,
                                              NAN, NULL, 99 + (uint64_t)causal);
            if (st != CFLASH_STATUS_OK) {
                probs_free(&r);
                CHECK(0, "status %s (%s)", cflash_status_string(st), cflash_last_error());
            }
            double tol = dtypes[di] == CFLASH_DTYPE_F32 ? 1e-6 : 1e-5;
            for (int64_t h = 0; h < Hq; h++)
                for (int64_t i = 0; i < Lq; i++) {
                    double s[7], m = -INFINITY, sum = 0;
                    for (int64_t j = 0; j < Lk; j++) {
                        double dot = 0;
                        for (int64_t d = 0; d < D; d++)
                            dot += r.q[(i * Hq + h) * D + d] * r.k[(j * Hk + h / 2) * D + d];
                        s[j] = dot / 4.0 - slopes[h] * fabs((double)(i + Lk - Lq - j));
                        if (causal && j > i + Lk - Lq)
                            s[j] = -INFINITY;
                        if (s[j] > m)
                            m = s[j];
                    }
                    for (int64_t j = 0; j < Lk; j++)
                        sum += exp(s[j] - m);
                    for (int64_t j = 0; j < Lk; j++) {
                        double want = exp(s[j] - m) / sum, got = r.p[(h * Lq + i) * Lk + j];
                        if (!(fabs(got - want) <= tol * (1 + want * 10))) {
                            probs_free(&r);
                            CHECK(0, "%s causal=%d h=%lld row %lld key %lld: p = %.9g, want %.9g",
                                  dtype_name(dtypes[di]), causal, (long long)h, (long long)i,
                                  (long long)j, got, want);
                        }
                    }
                    double wl = m + log(sum), gl = r.lse[h * Lq + i];
                    if (!(fabs(gl - wl) <= 1e-5)) {
                        probs_free(&r);
                        CHECK(0, "%s h=%lld row %lld: lse = %.9g, want %.9g", dtype_name(dtypes[di]),
                              (long long)h, (long long)i, gl, wl);
                    }
                }
            probs_free(&r);
        }
    }
}

/* Softcap 30 maps a score of 50 to 30 * tanh(5/3) = 27.93...: D = 1, q = 50, k = [1, 0],
 * scale 1. Then p0 / p1 = exp(27.93...) and lse = ln(exp(27.93...) + 1). */
static void worked_softcap(const void *arg)
{
    const struct worked_arg *a = arg;
    if (!require_kernel(a->kernel))
        return;
    const double capped = 30.0 * tanh(50.0 / 30.0);
    CHECK(fabs(capped - 27.93) < 0.005, "test arithmetic: 30*tanh(50/30) = %.6f", capped);
    for (int di = 0; di < 3; di++) {
        struct cflash_attn_params p = cflash_attn_params_default();
        p.softcap = 30;
        p.scale = 1;
        static const double kv[2] = {1, 0};
        struct probs r;
        enum cflash_status st = run_probs(&r, a->kernel, dtypes[di], 1, 2, 1, 1, 1, &p, 50.0, kv, 5);
        if (st != CFLASH_STATUS_OK) {
            probs_free(&r);
            CHECK(0, "status %s (%s)", cflash_status_string(st), cflash_last_error());
        }
        double p0 = r.p[0], p1 = r.p[1], l = r.lse[0];
        probs_free(&r);
        CHECK(p1 > 0 && p0 > 0, "%s: p = [%g, %g]", dtype_name(dtypes[di]), p0, p1);
        double ratio = log(p0 / p1);
        CHECK(fabs(ratio - capped) <= 1e-3, "%s: ln(p0/p1) = %.6f, want softcapped score %.6f",
              dtype_name(dtypes[di]), ratio, capped);
        double wl = capped + log1p(exp(-capped));
        CHECK(fabs(l - wl) <= 1e-4, "%s: lse = %.7f, want %.7f", dtype_name(dtypes[di]), l, wl);
        CHECK(fabs(p0 - 1) <= 1e-6, "%s: p0 = %.9g", dtype_name(dtypes[di]), p0);
    }
}

/* ---- exhaustive visible sets of small configurations (compared with SPEC 3 rules) ------- */

struct vis_arg {
    enum cflash_kernel kernel;
    int causal, align;
    int64_t wl, wr;
};

struct vis_ctx {
    int64_t Lq, Lk;
    const struct vis_arg *a;
};

static int expect_vis(int64_t i, int64_t j, const void *ctx)
{
    const struct vis_ctx *c = ctx;
    return oracle_visible(i, j, c->Lq, c->Lk, c->a->causal, c->a->align, c->a->wl, c->a->wr);
}

static void vis_case(const void *arg)
{
    const struct vis_arg *a = arg;
    if (!require_kernel(a->kernel))
        return;
    static const int L[][2] = {{1, 1}, {2, 5}, {5, 2}, {6, 6}, {7, 3}, {3, 8}, {9, 9}, {1, 7}, {8, 1}};
    for (size_t li = 0; li < sizeof L / sizeof L[0]; li++)
        for (int di = 0; di < 3; di++) {
            struct cflash_attn_params p = cflash_attn_params_default();
            p.causal = a->causal;
            p.align = (enum cflash_align)a->align;
            p.window_left = a->wl;
            p.window_right = a->wr;
            struct probs r;
            enum cflash_status st = run_probs(&r, a->kernel, dtypes[di], L[li][0], L[li][1], 2,
                                              1, 8, &p, NAN, NULL, 31 * li + (uint64_t)di);
            if (st != CFLASH_STATUS_OK) {
                probs_free(&r);
                CHECK(0, "Lq=%d,Lk=%d: status %s (%s)", L[li][0], L[li][1],
                      cflash_status_string(st), cflash_last_error());
            }
            struct vis_ctx c = {L[li][0], L[li][1], a};
            char what[64];
            snprintf(what, sizeof what, "Lq=%d,Lk=%d", L[li][0], L[li][1]);
            int ok = check_sets(&r, expect_vis, &c, dtypes[di], what);
            probs_free(&r);
            if (!ok)
                return;
        }
}

void register_worked_tests(void)
{
    char name[256];
    for (int k = 0; k < N_ALL_KERNELS; k++) {
        struct worked_arg a = {all_kernels[k], 0};
        for (size_t i = 0; i < sizeof worked_rows / sizeof worked_rows[0]; i++) {
            a.idx = (int)i;
            snprintf(name, sizeof name, "worked/%s/%s", kname(a.kernel), worked_rows[i].name);
            tcase_add(name, worked_case, &a, sizeof a);
        }
        snprintf(name, sizeof name, "worked/%s/alibi/Lq=2,Lk=5/slope=0.5/q=0", kname(a.kernel));
        tcase_add(name, worked_alibi_zero_q, &a, sizeof a);
        snprintf(name, sizeof name, "worked/%s/alibi/Lq=3,Lk=7/Hq=4,Hk=2/random_q", kname(a.kernel));
        tcase_add(name, worked_alibi_random_q, &a, sizeof a);
        snprintf(name, sizeof name, "worked/%s/softcap=30/score=50", kname(a.kernel));
        tcase_add(name, worked_softcap, &a, sizeof a);
    }
    static const int64_t W[][2] = {{-1, -1}, {0, 0}, {1, 0}, {2, 1}, {0, 2}, {3, -1}, {-1, 2}, {0, -1}, {-1, 0}};
    for (int k = 0; k < N_ALL_KERNELS; k++)
        for (int mode = 0; mode < 4; mode++)
            for (size_t w = 0; w < sizeof W / sizeof W[0]; w++) {
                struct vis_arg a = {all_kernels[k], mode == 1 || mode == 3,
                                    mode >= 2 ? CFLASH_ALIGN_TOP_LEFT : CFLASH_ALIGN_BOTTOM_RIGHT,
                                    W[w][0], W[w][1]};
                if (mode == 2 && w == 0)
                    continue;
                snprintf(name, sizeof name, "visible/%s/causal=%s%s/window=(%lld,%lld)",
                         kname(a.kernel), a.causal ? (a.align ? "tl" : "br") : "0",
                         (!a.causal && a.align) ? "/align=tl" : "", (long long)a.wl,
                         (long long)a.wr);
                tcase_add(name, vis_case, &a, sizeof a);
            }
}
