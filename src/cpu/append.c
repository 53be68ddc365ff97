/*
 * append.c - in-place KV cache append: new K/V rows copied to their cache positions through
 * the same addressing the kernels read with (kv_row: contiguous, cache-indexed or paged).
 * The caller has validated capacity and page ids; nothing here can fail.
 */
#include "internal.h"
#include "cpu/convert.h"

#include <string.h>

void cpu_rotary(float *x, const struct rotary *ro, int64_t pos) {
    const int64_t half = ro->dim / 2;
    for (int64_t j = 0; j < half; j++) {
        const float c = load_f32(ro->cos, ro->dtype, pos * ro->s0 + j * ro->s1);
        const float s = load_f32(ro->sin, ro->dtype, pos * ro->s0 + j * ro->s1);
        const int64_t i1 = ro->interleaved ? 2 * j : j, i2 = ro->interleaved ? 2 * j + 1 : j + half;
        const float a = x[i1], b = x[i2];
        x[i1] = a * c - b * s;
        x[i2] = a * s + b * c;
    }
}

void cpu_kv_append(const struct attn_work *w, const struct attn_segment *sg, int64_t start,
                   int64_t Lnew, const struct attn_operand *k_new, const struct attn_operand *v_new,
                   const struct rotary *ro) {
    float row[CFLASH_MAX_HEAD_DIM];
    for (int64_t t = 0; t < Lnew; t++)
        for (int64_t h = 0; h < w->Hk; h++) {
            const char *ks = k_new->data + (sg->b * k_new->sb + t * k_new->st + h * k_new->sh) * k_new->es;
            char *dst = (char *)kv_row(w, &w->k, sg, start + t, h);
            if (ro) { /* rotate in fp32, store in the cache's dtype */
                load_row_f32(row, ks, k_new->dtype, w->D, 1.0f);
                cpu_rotary(row, ro, start + t);
                for (int64_t d = 0; d < w->D; d++) store_f32(dst, w->k.dtype, d, row[d]);
            } else {
                memcpy(dst, ks, (size_t)(w->D * k_new->es));
            }
            if (v_new) {
                const char *vs = v_new->data + (sg->b * v_new->sb + t * v_new->st + h * v_new->sh) * v_new->es;
                memcpy((char *)kv_row(w, &w->v, sg, start + t, h), vs, (size_t)(w->Dv * v_new->es));
            }
        }
}
