/*
 * convert.h - scalar conversions between fp32 and the 16-bit storage types, and typed element
 * loads/stores. Portable bit manipulation (round to nearest even), so every ISA build and the
 * reference give the same bytes for the same float.
 */
#ifndef CFLASH_CPU_CONVERT_H
#define CFLASH_CPU_CONVERT_H

#include "cflash.h"

#include <stdint.h>
#include <string.h>

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        /* zero or subnormal: m * 2^-24, exact in fp32 */
        float f = (float)m * 0x1p-24f;
        return bits_f32(f32_bits(f) | sign);
    }
    if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13));
    return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

static inline uint16_t f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);          /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);         /* >= 65520: inf */
    if (a < 0x38800000u) {                                           /* below 2^-14: subnormal */
        /* adding 0.5 (2^-1) aligns the fp16 subnormal grid (2^-24) with fp32's last bit; the
         * FPU then rounds to nearest even for us */
        float r = bits_f32(a) + 0.5f;
        return (uint16_t)(sign | (uint16_t)(f32_bits(r) - 0x3f000000u));
    }
    uint32_t mant_odd = (a >> 13) & 1u;
    a += 0xc8000fffu + mant_odd; /* rebias exponent (-112 << 23) and round to nearest even */
    return (uint16_t)(sign | (uint16_t)(a >> 13));
}

static inline size_t dtype_size(enum cflash_dtype t) {
    return t == CFLASH_DTYPE_F32 || t == CFLASH_DTYPE_I32 ? 4 : t == CFLASH_DTYPE_U8 ? 1 : 2;
}

/* Element idx of a float tensor of dtype t, as fp32. */
static inline float load_f32(const char *base, enum cflash_dtype t, int64_t idx) {
    switch (t) {
    case CFLASH_DTYPE_F16: { uint16_t h; memcpy(&h, base + idx * 2, 2); return f16_to_f32(h); }
    case CFLASH_DTYPE_BF16: { uint16_t h; memcpy(&h, base + idx * 2, 2); return bf16_to_f32(h); }
    default: { float f; memcpy(&f, base + idx * 4, 4); return f; }
    }
}

static inline void store_f32(char *base, enum cflash_dtype t, int64_t idx, float f) {
    switch (t) {
    case CFLASH_DTYPE_F16: { uint16_t h = f32_to_f16(f); memcpy(base + idx * 2, &h, 2); break; }
    case CFLASH_DTYPE_BF16: { uint16_t h = f32_to_bf16(f); memcpy(base + idx * 2, &h, 2); break; }
    default: memcpy(base + idx * 4, &f, 4); break;
    }
}

/* n contiguous elements of dtype t starting at src -> fp32 dst, times mul. */
static inline void load_row_f32(float *dst, const char *src, enum cflash_dtype t, int64_t n,
                                float mul) {
    if (t == CFLASH_DTYPE_F32) {
        const float *s = (const float *)(const void *)src;
        for (int64_t i = 0; i < n; i++) dst[i] = s[i] * mul;
    } else if (t == CFLASH_DTYPE_BF16) {
        const uint16_t *s = (const uint16_t *)(const void *)src;
        for (int64_t i = 0; i < n; i++) dst[i] = bits_f32((uint32_t)s[i] << 16) * mul;
    } else {
        const uint16_t *s = (const uint16_t *)(const void *)src;
        for (int64_t i = 0; i < n; i++) dst[i] = f16_to_f32(s[i]) * mul;
    }
}

#endif /* CFLASH_CPU_CONVERT_H */
