/*
 * mask_oracle.c - the tests' own reading of SPEC.md section 5 (boolean mask and additive bias),
 * written from the SPEC table without looking at the library: which element of a mask or bias
 * tensor the score (b, h, i, j) reads in each layout, and attention with them (exact fp64, or
 * the naive same-precision fp16/bf16 version used for the half-precision tolerance rule).
 *
 * Elements are read from the raw tensor through its own shape and strides (tget), so a storage
 * with any strides (transposed, padded, non-unit key stride, zero or negative strides) is read
 * exactly as SPEC 5 says. What it is not: fast (one score row at a time, O(Lk) memory).
 */
#include "harness.h"

#include <stdlib.h>

/* SPEC 5: query head h reads variant h / (Hq / Hv); the element of (b, h, i, j) is
 *   dense       [b, var, i, j] with size-1 axes broadcast (local coordinates)
 *   key-side    [cu_k[b] + j, var]
 *   query-side  [cu_q[b] + i, var, j] */
int mask_elem_index(const struct mask_src *m, int64_t Hq, const int64_t *qoff,
                    const int64_t *koff, int64_t b, int64_t h, int64_t i, int64_t j, int64_t *idx)
{
    const struct cflash_tensor *t = m->t;
    const int64_t Hv = t->shape[1];
    const int64_t var = h / (Hq / Hv);
    switch (m->layout) {
    case CFLASH_LAYOUT_DENSE:
        idx[0] = t->shape[0] == 1 ? 0 : b;
        idx[1] = var;
        idx[2] = t->shape[2] == 1 ? 0 : i;
        idx[3] = t->shape[3] == 1 ? 0 : j;
        return 4;
    case CFLASH_LAYOUT_KEY_SIDE:
        idx[0] = koff[b] + j;
        idx[1] = var;
        return 2;
    case CFLASH_LAYOUT_QUERY_SIDE:
        idx[0] = qoff[b] + i;
        idx[1] = var;
        idx[2] = j;
        return 3;
    }
    return 0;
}

static double elem(const struct mask_src *m, const struct oracle_in *in, int64_t b, int64_t h,
                   int64_t i, int64_t j)
{
    int64_t idx[CFLASH_MAX_DIMS];
    mask_elem_index(m, in->Hq, in->qoff, in->koff, b, h, i, j, idx);
    return tget(m->t, idx);
}

static double rnd(enum cflash_dtype mode, double x)
{
    return mode == CFLASH_DTYPE_F32 ? x : round_to(mode, x);
}

void mask_oracle_attn(const struct oracle_in *in, const struct mask_src *mask,
                      const struct mask_src *bias, enum cflash_dtype mode, double *o, double *lse,
                      int64_t *nvis)
{
    const int has_mask = mask && mask->t, has_bias = bias && bias->t;
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
                int64_t count = 0;
                for (int64_t j = 0; j < Lk; j++) {
                    vis[j] = (char)oracle_visible(i, j, Lq, Lk, in->causal, in->align, in->wl,
                                                  in->wr);
                    if (vis[j] && has_mask && elem(mask, in, b, h, i, j) == 0)
                        vis[j] = 0; /* nonzero = keep, ANDed with every other rule */
                    if (!vis[j])
                        continue;
                    count++;
                    const double *kj = in->k + ((in->koff[b] + j) * Hk + g) * D;
                    double sj = oracle_score(mode, qi, kj, D, in->scale, in->softcap);
                    if (has_bias)
                        sj = rnd(mode, sj + elem(bias, in, b, h, i, j));
                    if (in->alibi) {
                        double slope = in->alibi[(in->alibi_per_batch ? b * Hq : 0) + h];
                        double dist = fabs((double)(i + Lk - Lq - j));
                        sj = rnd(mode, sj - rnd(mode, slope * dist));
                    }
                    s[count - 1] = sj;
                    vr[count - 1] = in->v + ((in->koff[b] + j) * Hk + g) * Dv;
                    if (sj > m)
                        m = sj;
                }
                if (nvis)
                    nvis[tq * Hq + h] = count;
                oracle_softmax_row(mode, s, count, m, in->sinks ? &in->sinks[h] : NULL, vr, Dv, oi,
                                   lse ? &lse[tq * Hq + h] : NULL);
            }
        }
    }
    free(s);
    free(vr);
    free(vis);
}
