/*
 * oracle.c - the tests' own attention, written from SPEC.md sections 1-3 without looking at
 * the library: an exact fp64 version (to check the library's reference kernel) and a naive
 * same-precision fp16/bf16 version (to measure e_naive for the half-precision tolerance rule
 * of SPEC 1: max abs error <= 2 * e_naive + 1e-3).
 *
 * What it is not: fast. It materializes one score row at a time, O(Lk) extra memory.
 */
#include "harness.h"

#include <stdlib.h>

int oracle_visible(int64_t i, int64_t j, int64_t Lq, int64_t Lk, int causal, int align,
                   int64_t wl, int64_t wr)
{
    int64_t c = align == CFLASH_ALIGN_TOP_LEFT ? i : i + Lk - Lq;
    int64_t right = wr;
    if (causal)
        right = 0; /* causal caps right at 0; wr is -1 (unbounded) or >= 0, so always 0 */
    /* written as differences of small numbers: wl, wr may be as large as INT64_MAX */
    if (right >= 0 && j - c > right)
        return 0;
    if (wl >= 0 && c - j > wl)
        return 0;
    return 1;
}

/* rounding of the naive same-precision version; identity for the exact oracle */
static double rnd(enum cflash_dtype mode, double x)
{
    return mode == CFLASH_DTYPE_F32 ? x : round_to(mode, x);
}

double oracle_score(enum cflash_dtype mode, const double *qi, const double *kj, int64_t D,
                    double scale, double softcap)
{
    double sj;
    if (mode == CFLASH_DTYPE_F32) {
        double acc = 0;
        for (int64_t d = 0; d < D; d++)
            acc += qi[d] * kj[d];
        sj = scale * acc;
    } else {
        float acc = 0; /* a matmul accumulates in fp32 */
        for (int64_t d = 0; d < D; d++)
            acc += (float)qi[d] * (float)kj[d];
        sj = rnd(mode, rnd(mode, acc) * scale);
    }
    if (softcap > 0) /* SPEC 1: the softcap comes before the additive terms */
        sj = rnd(mode, softcap * rnd(mode, tanh(rnd(mode, sj / softcap))));
    return sj;
}

void oracle_softmax_row(enum cflash_dtype mode, double *s, int64_t n, double m, const double *sink,
                        const double *const *vrows, int64_t Dv, double *out, double *lse)
{
    const int exact = mode == CFLASH_DTYPE_F32;
    if (n == 0) {
        /* no visible key: out 0 whatever the sink; lse is the sink logit or -inf */
        for (int64_t d = 0; d < Dv; d++)
            out[d] = 0;
        if (lse)
            *lse = sink ? *sink : -INFINITY;
        return;
    }
    const double z = sink ? rnd(mode, *sink) : -INFINITY;
    if (z > m)
        m = z;
    double sum;
    if (exact) {
        sum = sink ? exp(z - m) : 0;
        for (int64_t e = 0; e < n; e++) {
            s[e] = exp(s[e] - m);
            sum += s[e];
        }
    } else {
        float acc = sink ? (float)rnd(mode, exp(rnd(mode, z - m))) : 0.0f;
        for (int64_t e = 0; e < n; e++) {
            s[e] = rnd(mode, exp(rnd(mode, s[e] - m)));
            acc += (float)s[e];
        }
        sum = rnd(mode, acc);
    }
    if (lse)
        *lse = m + log(sum);
    for (int64_t d = 0; d < Dv; d++) {
        if (exact) {
            double acc = 0;
            for (int64_t e = 0; e < n; e++)
                acc += s[e] / sum * vrows[e][d];
            out[d] = acc;
        } else {
            float acc = 0;
            for (int64_t e = 0; e < n; e++)
                acc += (float)rnd(mode, s[e] / sum) * (float)vrows[e][d];
            out[d] = rnd(mode, acc);
        }
    }
}

void oracle_attn(const struct oracle_in *in, enum cflash_dtype mode, double *o, double *lse)
{
    const int64_t Hq = in->Hq, Hk = in->Hk, D = in->D, Dv = in->Dv, group = Hq / Hk;
    int64_t maxLk = 1;
    for (int64_t b = 0; b < in->B; b++)
        if (in->koff[b + 1] - in->koff[b] > maxLk)
            maxLk = in->koff[b + 1] - in->koff[b];
    double *s = malloc((size_t)maxLk * sizeof *s);
    const double **vr = malloc((size_t)maxLk * sizeof *vr);
    char *vis = malloc((size_t)maxLk);
    for (int64_t b = 0; b < in->B; b++) {
        const int64_t Lq = in->qoff[b + 1] - in->qoff[b], Lk = in->koff[b + 1] - in->koff[b];
        for (int64_t i = 0; i < Lq; i++) {
            const int64_t tq = in->qoff[b] + i;
            for (int64_t h = 0; h < Hq; h++) {
                const int64_t g = h / group;
                const double *qi = in->q + (tq * Hq + h) * D;
                double *oi = o + (tq * Hq + h) * Dv;
                double m = -INFINITY;
                int64_t n = 0;
                for (int64_t j = 0; j < Lk; j++) {
                    vis[j] = (char)oracle_visible(i, j, Lq, Lk, in->causal, in->align, in->wl,
                                                  in->wr);
                    if (!vis[j])
                        continue;
                    const double *kj = in->k + ((in->koff[b] + j) * Hk + g) * D;
                    double sj = oracle_score(mode, qi, kj, D, in->scale, in->softcap);
                    if (in->alibi) {
                        double slope = in->alibi[(in->alibi_per_batch ? b * Hq : 0) + h];
                        double dist = fabs((double)(i + Lk - Lq - j));
                        sj = rnd(mode, sj - rnd(mode, slope * dist));
                    }
                    s[n] = sj;
                    vr[n++] = in->v + ((in->koff[b] + j) * Hk + g) * Dv;
                    if (sj > m)
                        m = sj;
                }
                oracle_softmax_row(mode, s, n, m, in->sinks ? &in->sinks[h] : NULL, vr, Dv, oi,
                                   lse ? &lse[tq * Hq + h] : NULL);
            }
        }
    }
    free(s);
    free(vr);
    free(vis);
}
