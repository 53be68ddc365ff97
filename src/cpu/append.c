/*
 * append.c - in-place KV cache append: new K/V rows copied to their cache positions through
 * the same addressing the kernels read with (kv_row: contiguous, cache-indexed or paged).
 * The caller has validated capacity and page ids; nothing here can fail.
 */
#include "internal.h"

#include <string.h>

void cpu_kv_append(const struct attn_work *w, const struct attn_segment *sg, int64_t start,
                   int64_t Lnew, const struct attn_operand *k_new, const struct attn_operand *v_new) {
    for (int64_t t = 0; t < Lnew; t++)
        for (int64_t h = 0; h < w->Hk; h++) {
            const char *ks = k_new->data + (sg->b * k_new->sb + t * k_new->st + h * k_new->sh) * k_new->es;
            memcpy((char *)kv_row(w, &w->k, sg, start + t, h), ks, (size_t)(w->D * k_new->es));
            if (v_new) {
                const char *vs = v_new->data + (sg->b * v_new->sb + t * v_new->st + h * v_new->sh) * v_new->es;
                memcpy((char *)kv_row(w, &w->v, sg, start + t, h), vs, (size_t)(w->Dv * v_new->es));
            }
        }
}
