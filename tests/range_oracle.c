/*
 * range_oracle.c - the tests' own reading of SPEC.md section 4 (range plans), written from the
 * SPEC table without looking at src/range.c: a plan is kept as its raw (q_range, k_range, type)
 * triplets, visibility is evaluated cell by cell from those triplets, and attention over a plan
 * is computed exactly in fp64 (or naively in fp16/bf16, for the e_naive of the SPEC 1 rule),
 * following oracle.c step by step.
 *
 * What it is not: fast or clever. Every slice's rectangle is walked cell by cell, so it is only
 * meant for plans whose slices have a modest total area.
 */
#include "harness.h"

#include <stdlib.h>
#include <string.h>

int range_visible(int64_t qs, int64_t qe, int64_t ks, int64_t ke, int type, int64_t row,
                  int64_t col)
{
    if (row < qs || row >= qe || col < ks || col >= ke)
        return 0;
    const int64_t i = row - qs, j = col - ks, Lq = qe - qs, Lk = ke - ks;
    switch (type) {
    case 0: /* full */
        return 1;
    case 1: /* causal, bottom-right */
        return j <= i + (Lk - Lq);
    case 2: /* inverse causal, top-left */
        return j >= i;
    case 3: /* band */
        return i <= j && j <= i + (Lk - Lq);
    }
    return 0;
}

void rplan_init(struct rplan *p, int64_t Tq, int64_t Tk)
{
    memset(p, 0, sizeof *p);
    p->Tq = Tq;
    p->Tk = Tk;
}

void rplan_add(struct rplan *p, int64_t qs, int64_t qe, int64_t ks, int64_t ke, int type)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 16;
        p->s = realloc(p->s, (size_t)p->cap * sizeof *p->s);
        if (!p->s) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
    }
    int32_t *s = p->s[p->n++];
    s[0] = (int32_t)qs;
    s[1] = (int32_t)qe;
    s[2] = (int32_t)ks;
    s[3] = (int32_t)ke;
    s[4] = type;
}

void rplan_free(struct rplan *p)
{
    free(p->s);
    memset(p, 0, sizeof *p);
}

int64_t rplan_slice_cells(const struct rplan *p, int64_t n)
{
    const int32_t *s = p->s[n];
    int64_t cells = 0;
    for (int64_t r = s[0]; r < s[1]; r++)
        for (int64_t c = s[2]; c < s[3]; c++)
            cells += range_visible(s[0], s[1], s[2], s[3], s[4], r, c);
    return cells;
}

struct cell {
    int64_t col, slice;
};

static int cell_cmp(const void *x, const void *y)
{
    const struct cell *a = x, *b = y;
    if (a->col != b->col)
        return a->col < b->col ? -1 : 1;
    return a->slice < b->slice ? -1 : a->slice > b->slice;
}

int rcells_build(struct rcells *c, const struct rplan *p)
{
    memset(c, 0, sizeof *c);
    c->ov_a = c->ov_b = -1;
    const int64_t Tq = p->Tq;
    /* slices by row: rows[rs[r] .. rs[r + 1]) are the slices whose q_range holds row r */
    int64_t *rs = calloc((size_t)Tq + 2, sizeof *rs);
    for (int64_t n = 0; n < p->n; n++)
        for (int64_t r = p->s[n][0]; r < p->s[n][1]; r++)
            rs[r + 2]++;
    for (int64_t r = 0; r < Tq; r++)
        rs[r + 2] += rs[r + 1];
    int64_t *rows = malloc((size_t)(rs[Tq + 1] > 0 ? rs[Tq + 1] : 1) * sizeof *rows);
    for (int64_t n = 0; n < p->n; n++)
        for (int64_t r = p->s[n][0]; r < p->s[n][1]; r++)
            rows[rs[r + 1]++] = n;
    /* now rows of r are rows[rs[r] .. rs[r + 1]) */
    c->row_start = malloc(((size_t)Tq + 1) * sizeof *c->row_start);
    int64_t cap = 1024, total = 0;
    struct cell *cells = malloc((size_t)cap * sizeof *cells);
    for (int64_t r = 0; r < Tq; r++) {
        c->row_start[r] = total;
        for (int64_t e = rs[r]; e < rs[r + 1]; e++) {
            const int32_t *s = p->s[rows[e]];
            for (int64_t col = s[2]; col < s[3]; col++) {
                if (!range_visible(s[0], s[1], s[2], s[3], s[4], r, col))
                    continue;
                if (total == cap) {
                    cap *= 2;
                    cells = realloc(cells, (size_t)cap * sizeof *cells);
                    if (!cells) {
                        fprintf(stderr, "out of memory\n");
                        exit(2);
                    }
                }
                cells[total].col = col;
                cells[total].slice = rows[e];
                total++;
            }
        }
        const int64_t n = total - c->row_start[r];
        qsort(cells + c->row_start[r], (size_t)n, sizeof *cells, cell_cmp);
        for (int64_t e = c->row_start[r] + 1; e < total; e++)
            if (cells[e].col == cells[e - 1].col && c->ov_a < 0) {
                c->ov_a = cells[e - 1].slice < cells[e].slice ? cells[e - 1].slice : cells[e].slice;
                c->ov_b = cells[e - 1].slice < cells[e].slice ? cells[e].slice : cells[e - 1].slice;
                c->ov_row = r;
                c->ov_col = cells[e].col;
            }
    }
    c->row_start[Tq] = total;
    c->total = total;
    c->col = malloc((size_t)(total > 0 ? total : 1) * sizeof *c->col);
    c->slice = malloc((size_t)(total > 0 ? total : 1) * sizeof *c->slice);
    for (int64_t e = 0; e < total; e++) {
        c->col[e] = cells[e].col;
        c->slice[e] = cells[e].slice;
    }
    free(cells);
    free(rows);
    free(rs);
    return c->ov_a < 0;
}

void rcells_free(struct rcells *c)
{
    free(c->row_start);
    free(c->col);
    free(c->slice);
    memset(c, 0, sizeof *c);
}

/* rounding of the naive same-precision version; identity for the exact oracle */
static double rnd(enum cflash_dtype mode, double x)
{
    return mode == CFLASH_DTYPE_F32 ? x : round_to(mode, x);
}

void range_oracle_attn(const struct oracle_in *in, const struct rplan *p, const struct rcells *c,
                       const struct mask_src *mask, const struct mask_src *bias,
                       enum cflash_dtype mode, double *o, double *lse, int64_t *nvis)
{
    const int has_mask = mask && mask->t, has_bias = bias && bias->t;
    const int64_t Hq = in->Hq, Hk = in->Hk, D = in->D, Dv = in->Dv, group = Hq / Hk;
    /* the plan's axes as one sequence: row r = local query r, col = local key col */
    const int64_t qoff[2] = {0, p->Tq}, koff[2] = {0, p->Tk};
    int64_t maxw = 1;
    for (int64_t r = 0; r < p->Tq; r++)
        if (c->row_start[r + 1] - c->row_start[r] > maxw)
            maxw = c->row_start[r + 1] - c->row_start[r];
    double *s = malloc((size_t)maxw * sizeof *s);
    const double **vr = malloc((size_t)maxw * sizeof *vr);
    for (int64_t r = 0; r < p->Tq; r++) {
        const int64_t e0 = c->row_start[r], n = c->row_start[r + 1] - e0;
        for (int64_t h = 0; h < Hq; h++) {
            const int64_t g = h / group;
            const double *qi = in->q + (r * Hq + h) * D;
            double *oi = o + (r * Hq + h) * Dv;
            double m = -INFINITY;
            int64_t cnt = 0;
            for (int64_t e = 0; e < n; e++) {
                const int64_t col = c->col[e0 + e];
                const int32_t *sl = p->s[c->slice[e0 + e]];
                int64_t idx[CFLASH_MAX_DIMS];
                if (has_mask) {
                    mask_elem_index(mask, Hq, qoff, koff, 0, h, r, col, idx);
                    if (tget(mask->t, idx) == 0)
                        continue; /* nonzero = keep, ANDed with the plan */
                }
                const double *kj = in->k + (col * Hk + g) * D;
                double sj = oracle_score(mode, qi, kj, D, in->scale, in->softcap);
                if (has_bias) {
                    mask_elem_index(bias, Hq, qoff, koff, 0, h, r, col, idx);
                    sj = rnd(mode, sj + tget(bias->t, idx));
                }
                if (in->alibi) {
                    /* the distance to the bottom-right diagonal of the slice that owns the cell,
                     * in that slice's local coordinates */
                    const int64_t i = r - sl[0], j = col - sl[2], Lq = sl[1] - sl[0],
                                  Lk = sl[3] - sl[2];
                    double dist = fabs((double)(i + Lk - Lq - j));
                    sj = rnd(mode, sj - rnd(mode, in->alibi[h] * dist));
                }
                s[cnt] = sj;
                vr[cnt++] = in->v + (col * Hk + g) * Dv;
                if (sj > m)
                    m = sj;
            }
            if (nvis)
                nvis[r * Hq + h] = cnt;
            oracle_softmax_row(mode, s, cnt, m, in->sinks ? &in->sinks[h] : NULL, vr, Dv, oi,
                               lse ? &lse[r * Hq + h] : NULL);
        }
    }
    free(s);
    free(vr);
}
