/*
 * plan.c - compiles per-sequence masks into segments and slices (internal.h).
 *
 * Sequence b owns query rows [qs, qs + Lq) and keys [ks, ks + Lk). In local coordinates
 * (i = row - qs, j = col - ks) its mask is a band around the diagonal j - i = c0, where
 * c0 = Lk - Lq (bottom-right alignment) or 0 (top-left):
 *   causal:          j - i <= c0
 *   window (l, r):   c0 - l <= j - i <= c0 + r    (-1: that side unbounded; causal caps r at 0)
 * In global coordinates j - i = (col - row) - (ks - qs), so the band shifts by ks - qs.
 * ALiBi uses |i + Lk - Lq - j| = |(col - row) - (ks - qs + Lk - Lq)| whatever the alignment.
 */
#include "internal.h"

#include <stdlib.h>

void plan_free(struct attn_plan *plan) {
    free(plan->segments);
    free(plan->slices);
    plan->segments = NULL;
    plan->slices = NULL;
    plan->num_segments = plan->num_slices = 0;
}

enum cflash_status plan_sequences(struct attn_plan *plan, int64_t B, const int64_t *qs,
                                  const int64_t *lq, const int64_t *ks, const int64_t *lk,
                                  const struct cflash_attn_params *p) {
    plan->segments = malloc(sizeof(struct attn_segment) * (size_t)(B > 0 ? B : 1));
    plan->slices = malloc(sizeof(struct attn_slice) * (size_t)(B > 0 ? B : 1));
    if (!plan->segments || !plan->slices) {
        plan_free(plan);
        return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "plan: out of memory");
    }
    int64_t ns = 0;
    for (int64_t b = 0; b < B; b++) {
        if (lq[b] == 0) continue; /* writes nothing */
        const int64_t diag = p->align == CFLASH_ALIGN_TOP_LEFT ? 0 : lk[b] - lq[b];
        int64_t lo = -BAND_UNBOUNDED, hi = BAND_UNBOUNDED;
        /* Lengths are below 2^53 (api.c), so a window of 2^55 already sees everything; the cap
         * keeps diag -/+ window and the shift below far from int64 overflow. */
        const int64_t cap = (int64_t)1 << 55;
        if (p->window_left >= 0) lo = diag - (p->window_left < cap ? p->window_left : cap);
        if (p->window_right >= 0) hi = diag + (p->window_right < cap ? p->window_right : cap);
        if (p->causal && hi > diag) hi = diag;
        const int64_t shift = ks[b] - qs[b];
        struct attn_slice *sl = &plan->slices[ns];
        sl->q0 = qs[b];
        sl->q1 = qs[b] + lq[b];
        sl->k0 = ks[b];
        sl->k1 = ks[b] + lk[b];
        sl->dlo = lo == -BAND_UNBOUNDED ? lo : lo + shift;
        sl->dhi = hi == BAND_UNBOUNDED ? hi : hi + shift;
        sl->alibi_diag = shift + lk[b] - lq[b];
        struct attn_segment *sg = &plan->segments[ns];
        sg->b = b;
        sg->kvb = b;
        sg->qorg = qs[b];
        sg->korg = ks[b];
        sg->q0 = sl->q0;
        sg->q1 = sl->q1;
        sg->s0 = ns;
        sg->s1 = ns + 1;
        ns++;
    }
    plan->num_segments = plan->num_slices = ns;
    return CFLASH_STATUS_OK;
}
