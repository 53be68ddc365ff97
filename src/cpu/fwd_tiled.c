/*
 * fwd_tiled.c - the CPU attention kernel: tiled online softmax over the slices of a work item.
 *
 * What it is: one source compiled once per instruction set (CPU_ISA_AVX512 / CPU_ISA_AVX2 /
 * CPU_ISA_GENERIC) with GNU C vector extensions; dispatch.c picks one at run time. What it is
 * not: a validator (api.c did that) or a scheduler (dispatch.c hands out work items).
 *
 * A work item is (segment, kv head g, query tile). The tile's rows are (query position, head)
 * pairs, position-major: row r is position i0 + r / G of query head g * G + r % G, where
 * G = Hq / Hk. Packing the G heads that share a K/V head into one tile makes every key tile
 * loaded once serve all of them (GQA decode reads K/V once, not G times).
 *
 * Per key tile of BC columns:  S = Q Kt (fp32 FMA), score rules, online softmax in base 2
 * (the scale and log2(e) are folded into Q, or applied after the softcap's tanh), then
 * O = O * alpha + P V. Only keys inside a slice's rectangle and band are visited; tiles fully
 * inside skip the per-row column clipping.
 */
#include "internal.h"
#include "cpu/convert.h"

#include <math.h>
#include <string.h>
#if defined(CPU_ISA_AVX512BF16) || defined(CPU_ISA_AVX512) || defined(CPU_ISA_AVX2)
#include <immintrin.h>
#endif

#if defined(CPU_ISA_AVX512BF16)
#define ISA(name) name##_avx512bf16
#define VL 16
#define BF16_DOT 1 /* bf16 inputs: QK and PV by vdpbf16ps (2 products per fp32 lane) */
#elif defined(CPU_ISA_AVX512)
#define ISA(name) name##_avx512
#define VL 16
#elif defined(CPU_ISA_AVX2)
#define ISA(name) name##_avx2
#define VL 8
#else
#define ISA(name) name##_generic
#define VL 4
#endif
#ifndef BF16_DOT
#define BF16_DOT 0
#endif

/* Key tile width (columns of S), a multiple of every VL. */
#define BC 64
/* Rows per register block of both micro-kernels; tiles are padded to a multiple of it. */
#define RB 4
/* Output vectors per register block of PV (RB x NVO accumulators): AVX-512 4 x 4 zmm = 16 of
 * 32 registers; AVX2 / generic 4 x 2 of 16. QK blocks are chosen in qk_tile the same way. */
#if VL == 16
#define NVO 4
#define QK_CB2 6 /* keys per QK block with 2 row vectors: 12 accumulators */
#else
#define NVO 2
#define QK_CB2 4 /* 8 accumulators + 2 row vectors of 16 registers */
#endif
/* Target rows of a query tile: 64 rows x D=128 fp32 is 32 KB per operand, L2-resident. */
#define TILE_ROWS 128

typedef float vf __attribute__((vector_size(VL * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VL * 4), aligned(4)));

static const float LOG2E = 1.4426950408889634f;

/* Unaligned loads and stores (vf has 4-byte alignment; GCC lets vectors alias their element
 * type). Not memcpy: GCC's generic tuning splits a 32-byte memcpy into 16-byte moves. */
static inline vf vload(const float *p) { return *(const vf *)p; }
static inline void vstore(float *p, vf v) { *(vf *)p = v; }
/* A broadcast. Written x - 0, which folds to x exactly (0 + x would not fold: -0.0). */
static inline vf vset1(float x) { return x - (vf){0}; }
static inline vf vsel(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }
static inline vf vmax(vf a, vf b) { return vsel(a > b, a, b); }
static inline vf vmin(vf a, vf b) { return vsel(a < b, a, b); }
static inline vf vabs(vf a) { return (vf)((vi)a & 0x7fffffff); }

static inline uint32_t load_u32(const void *p) { uint32_t x; memcpy(&x, p, 4); return x; }

static inline float hmax(vf v) {
    float m = v[0];
    for (int i = 1; i < VL; i++) m = v[i] > m ? v[i] : m;
    return m;
}
static inline float hsum(vf v) {
    float s = 0.0f;
    for (int i = 0; i < VL; i++) s += v[i];
    return s;
}

/* 2^x for x in [-127, 127] (clamped; -inf gives exactly 0): x = n + f with n an integer and
 * |f| <= 0.5, 2^f by its degree-7 Taylor polynomial (relative error 5e-9), 2^n built in the
 * exponent bits. n = -127 yields the bit pattern 0, i.e. +0.0, so masked scores vanish. */
static inline vf vexp2(vf x) {
    const float round_magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    x = vmin(vmax(x, vset1(-127.0f)), vset1(127.0f));
    vf n = (x + round_magic) - round_magic;
    vf f = x - n;
    vf p = vset1(1.5252733804e-5f);
    p = p * f + 1.5403530393e-4f;
    p = p * f + 1.3333558146e-3f;
    p = p * f + 9.6181291076e-3f;
    p = p * f + 5.5504108665e-2f;
    p = p * f + 2.4022650696e-1f;
    p = p * f + 6.9314718056e-1f;
    p = p * f + 1.0f;
    vi e = (__builtin_convertvector(n, vi) + 127) << 23;
    return p * (vf)e;
}

/* tanh(x) = sign(x) (1 - 2 / (e^{2|x|} + 1)); absolute error ~1e-7. */
static inline vf vtanh(vf x) {
    vf e = vexp2(vabs(x) * (2.0f * LOG2E));
    vf t = 1.0f - 2.0f / (e + 1.0f);
    return (vf)((vi)t | ((vi)x & (int32_t)0x80000000));
}

/* Workspace layout of one thread, in floats. Scores are kept transposed (S^T[c][r]): a key's
 * scores for VL consecutive rows form one vector, so the softmax row statistics are vertical
 * vector operations and K, V are read in their natural [key][dim] layout (straight from the
 * caller's memory for fp32, through a small converted buffer for fp16/bf16). */
struct tile_ws {
    float *qt;    /* [D][max_rows]    query rows transposed, pre-scaled */
    float *kb;    /* [BC][D]          converted key tile (fp16/bf16 only) */
    float *vb;    /* [BC][Dvp]        converted or padded value tile */
    float *st;    /* [BC][max_rows]   scores, then probabilities, transposed */
    uint32_t *pp; /* [BC/2][max_rows] bf16 pairs of probabilities (BF16_DOT only) */
    float *o;     /* [max_rows][Dvp]  unnormalized output */
    float *m, *l, *alpha;  /* [max_rows] running max (base 2), sum, this tile's rescale */
    float *slope, *adiag;  /* [max_rows] ALiBi slope * log2(e); row's ALiBi diagonal (tile-local) */
    int32_t *lo, *hi;      /* [max_rows] visible key columns [lo, hi) of the current tile */
};

static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

static void ws_carve(struct tile_ws *t, void *base, int64_t R, int64_t D, int64_t Dvp) {
    float *p = (float *)base;
    t->qt = p;    p += round_up(D * R, 16);
    t->kb = p;    p += round_up(BC * D, 16);
    t->vb = p;    p += BC * Dvp;
    t->st = p;    p += BC * R;
    t->pp = (uint32_t *)(void *)p; p += BC / 2 * R;
    t->o = p;     p += R * Dvp;
    t->m = p;     p += R;
    t->l = p;     p += R;
    t->alpha = p; p += R;
    t->slope = p; p += R;
    t->adiag = p; p += R;
    t->lo = (int32_t *)(void *)p; p += R;
    t->hi = (int32_t *)(void *)p;
}

/* S^T[c + j][r0 + n VL ...] = sum_d K[c + j][d] Q^T[d][r0 + n VL ...] for CB keys, NV row
 * vectors: CB x NV accumulators, per d NV vector loads and CB broadcasts. */
static inline __attribute__((always_inline)) void qk_block(
    const float *const *restrict kp, int64_t D, const float *restrict qt, int64_t R, int64_t r0,
    float *restrict st, const int CB, const int NV) {
    vf acc[8][4];
    for (int j = 0; j < CB; j++)
        for (int n = 0; n < NV; n++) acc[j][n] = vset1(0.0f);
    for (int64_t d = 0; d < D; d++) {
        vf qv[4];
        for (int n = 0; n < NV; n++) qv[n] = vload(qt + d * R + r0 + n * VL);
        for (int j = 0; j < CB; j++) {
            vf kb = vset1(kp[j][d]);
            for (int n = 0; n < NV; n++) acc[j][n] += kb * qv[n];
        }
    }
    for (int j = 0; j < CB; j++)
        for (int n = 0; n < NV; n++) vstore(st + j * R + r0 + n * VL, acc[j][n]);
}

static void qk_tile(const float *const *kp, int ncols, int64_t D, const float *qt, int64_t R,
                    int64_t arows, float *st) {
    int64_t r0 = 0;
#if VL == 16
    for (; r0 + 4 * VL <= arows; r0 += 4 * VL) {
        int c = 0;
        for (; c + 4 <= ncols; c += 4) qk_block(kp + c, D, qt, R, r0, st + c * R, 4, 4);
        for (; c < ncols; c++) qk_block(kp + c, D, qt, R, r0, st + c * R, 1, 4);
    }
#endif
    for (; r0 + 2 * VL <= arows; r0 += 2 * VL) {
        int c = 0;
        for (; c + QK_CB2 <= ncols; c += QK_CB2) qk_block(kp + c, D, qt, R, r0, st + c * R, QK_CB2, 2);
        for (; c < ncols; c++) qk_block(kp + c, D, qt, R, r0, st + c * R, 1, 2);
    }
    for (; r0 < arows; r0 += VL) {
        int c = 0;
        for (; c + 8 <= ncols; c += 8) qk_block(kp + c, D, qt, R, r0, st + c * R, 8, 1);
        for (; c < ncols; c++) qk_block(kp + c, D, qt, R, r0, st + c * R, 1, 1);
    }
}

/* Few rows (decode, q_len x G <= VL / P): a score vector of VL lanes would carry only a few
 * rows, so the head dim is split into P phases instead. Lane r * P + p accumulates the terms
 * d = P dd + p of row r; Q^T is stored as qt[dd][r * P + p] and the key's P consecutive values
 * are broadcast to every group of P lanes. A key costs D / P FMAs instead of D; the P partial
 * sums of a row are added by two shuffles at the end. Needs D % P == 0. */
#if VL == 16
#define PHASES_MAX 4
static inline vf bcast_group(const float *p, const int P) {
    if (P == 4) return (vf)_mm512_broadcast_f32x4(_mm_loadu_ps(p));  /* vbroadcastf32x4 m128 */
    double x;
    memcpy(&x, p, sizeof x);
    return (vf)_mm512_castpd_ps(_mm512_set1_pd(x));                  /* vbroadcastsd m64 */
}
/* lane r (< VL / P) = sum of lanes r * P .. r * P + P - 1 */
static inline vf phase_reduce(vf a, const int P) {
    if (P == 4) {
        a += __builtin_shufflevector(a, a, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
        a += __builtin_shufflevector(a, a, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
        return __builtin_shufflevector(a, a, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12);
    }
    a += __builtin_shufflevector(a, a, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
    return __builtin_shufflevector(a, a, 0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8, 10, 12, 14);
}
#elif VL == 8
#define PHASES_MAX 4
static inline vf bcast_group(const float *p, const int P) {
    if (P == 4) return (vf)_mm256_broadcast_ps((const __m128 *)(const void *)p);
    double x;
    memcpy(&x, p, sizeof x);
    return (vf)_mm256_castpd_ps(_mm256_set1_pd(x));
}
static inline vf phase_reduce(vf a, const int P) {
    if (P == 4) {
        a += __builtin_shufflevector(a, a, 1, 0, 3, 2, 5, 4, 7, 6);
        a += __builtin_shufflevector(a, a, 2, 3, 0, 1, 6, 7, 4, 5);
        return __builtin_shufflevector(a, a, 0, 4, 0, 4, 0, 4, 0, 4);
    }
    a += __builtin_shufflevector(a, a, 1, 0, 3, 2, 5, 4, 7, 6);
    return __builtin_shufflevector(a, a, 0, 2, 4, 6, 0, 2, 4, 6);
}
#else
#define PHASES_MAX 1
#endif

/* Phases for a tile of nrows rows: the largest P <= PHASES_MAX with nrows * P <= VL, D % P == 0. */
static inline int qk_phases(int64_t nrows, int64_t D) {
    int P = 1;
    while (P < PHASES_MAX && nrows * P * 2 <= VL && D % (P * 2) == 0) P *= 2;
    return P;
}

#if PHASES_MAX > 1
static inline __attribute__((always_inline)) void qk_phase_block(
    const float *const *restrict kp, int64_t D, const float *restrict qt, int64_t R,
    float *restrict st, const int CB, const int P) {
    vf acc[8];
    for (int j = 0; j < CB; j++) acc[j] = vset1(0.0f);
    for (int64_t dd = 0; dd < D / P; dd++) {
        const vf qv = vload(qt + dd * R);
        for (int j = 0; j < CB; j++) acc[j] += bcast_group(kp[j] + dd * P, P) * qv;
    }
    for (int j = 0; j < CB; j++) vstore(st + j * R, phase_reduce(acc[j], P));
}

static void qk_tile_phased(const float *const *kp, int ncols, int64_t D, const float *qt,
                           int64_t R, float *st, int P) {
    int c = 0;
    if (P == 4) {
        for (; c + 8 <= ncols; c += 8) qk_phase_block(kp + c, D, qt, R, st + c * R, 8, 4);
        for (; c < ncols; c++) qk_phase_block(kp + c, D, qt, R, st + c * R, 1, 4);
    } else {
        for (; c + 8 <= ncols; c += 8) qk_phase_block(kp + c, D, qt, R, st + c * R, 8, 2);
        for (; c < ncols; c++) qk_phase_block(kp + c, D, qt, R, st + c * R, 1, 2);
    }
}
#endif

/* O[r][d0 ...] = O[r][d0 ...] alpha[r] + sum_c P^T[c][r] V[c][d0 ...], for RB rows, NV vectors. */
static inline __attribute__((always_inline)) void pv_block(
    const float *restrict pt, int64_t R, const float *const *restrict vp, int64_t d0, int ncols,
    const float *restrict alpha, float *restrict o, int64_t Dvp, const int NV) {
    vf acc[RB][NVO];
    for (int r = 0; r < RB; r++)
        for (int n = 0; n < NV; n++) acc[r][n] = vload(o + r * Dvp + d0 + n * VL) * alpha[r];
    for (int c = 0; c < ncols; c++) {
        vf vv[NVO];
        for (int n = 0; n < NV; n++) vv[n] = vload(vp[c] + d0 + n * VL);
        for (int r = 0; r < RB; r++) {
            vf pb = vset1(pt[c * R + r]);
            for (int n = 0; n < NV; n++) acc[r][n] += pb * vv[n];
        }
    }
    for (int r = 0; r < RB; r++)
        for (int n = 0; n < NV; n++) vstore(o + r * Dvp + d0 + n * VL, acc[r][n]);
}

static void pv_tile(const float *pt, int64_t R, int64_t prows, const float *const *vp,
                    int ncols, const float *alpha, float *o, int64_t Dvp) {
    for (int64_t r = 0; r < prows; r += RB) {
        int64_t d0 = 0;
        for (; d0 + NVO * VL <= Dvp; d0 += NVO * VL)
            pv_block(pt + r, R, vp, d0, ncols, alpha + r, o + r * Dvp, Dvp, NVO);
        for (; d0 < Dvp; d0 += VL) pv_block(pt + r, R, vp, d0, ncols, alpha + r, o + r * Dvp, Dvp, 1);
    }
}


#if BF16_DOT
/* bf16 inputs on CPUs with AVX512-BF16. vdpbf16ps adds a[2i] b[2i] + a[2i+1] b[2i+1] into
 * fp32 lane i, and bf16 x bf16 products are exact in fp32, so QK loses nothing against the
 * fp32 path: Q is stored as raw bf16 pairs along d (the scale is applied to the scores), K
 * pairs are broadcast straight from the caller's memory. PV pairs along keys: probabilities
 * are rounded to bf16 (as FlashAttention does on GPUs; within SPEC.md's half-precision
 * rule) and V is repacked into key pairs. */
static inline __m512i pack_pairs(__m512 lo, __m512 hi) {
    const __m512i a = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(lo));
    const __m512i b = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(hi));
    return _mm512_or_si512(a, _mm512_slli_epi32(b, 16));
}

static inline __attribute__((always_inline)) void qk_block_bf16(
    const uint16_t *const *restrict kp, int64_t D2, const uint32_t *restrict qt, int64_t R,
    int64_t r0, float *restrict st, const int CB, const int NV) {
    __m512 acc[4][4];
    for (int j = 0; j < CB; j++)
        for (int n = 0; n < NV; n++) acc[j][n] = _mm512_setzero_ps();
    for (int64_t dd = 0; dd < D2; dd++) {
        __m512i qv[4];
        for (int n = 0; n < NV; n++) qv[n] = _mm512_loadu_si512(qt + dd * R + r0 + n * 16);
        for (int j = 0; j < CB; j++) {
            const __m512i kb = _mm512_set1_epi32((int)load_u32(kp[j] + 2 * dd));
            for (int n = 0; n < NV; n++)
                acc[j][n] = _mm512_dpbf16_ps(acc[j][n], (__m512bh)kb, (__m512bh)qv[n]);
        }
    }
    for (int j = 0; j < CB; j++)
        for (int n = 0; n < NV; n++) _mm512_storeu_ps(st + j * R + r0 + n * 16, acc[j][n]);
}

static void qk_tile_bf16(const uint16_t *const *kp, int ncols, int64_t D, const uint32_t *qt,
                         int64_t R, int64_t arows, float *st) {
    int64_t r0 = 0;
    for (; r0 + 64 <= arows; r0 += 64) {
        int c = 0;
        for (; c + 4 <= ncols; c += 4) qk_block_bf16(kp + c, D / 2, qt, R, r0, st + c * R, 4, 4);
        for (; c < ncols; c++) qk_block_bf16(kp + c, D / 2, qt, R, r0, st + c * R, 1, 4);
    }
    for (; r0 < arows; r0 += 16) {
        int c = 0;
        for (; c + 4 <= ncols; c += 4) qk_block_bf16(kp + c, D / 2, qt, R, r0, st + c * R, 4, 1);
        for (; c < ncols; c++) qk_block_bf16(kp + c, D / 2, qt, R, r0, st + c * R, 1, 1);
    }
}

/* V rows c0 + 2 cp, c0 + 2 cp + 1 -> vp[cp][d] = (v[2cp][d], v[2cp+1][d]); zero padded. */
static void pack_v_pairs(uint32_t *vp, const struct attn_work *w, const struct attn_segment *sg,
                         int64_t kvh, const int64_t *col, int ncols, int64_t Dvp) {
    const int64_t Dv = w->Dv;
    for (int cp = 0; cp < (ncols + 1) / 2; cp++) {
        const uint16_t *v0 = (const uint16_t *)(const void *)kv_row(w, &w->v, sg, col[2 * cp], kvh);
        const uint16_t *v1 = 2 * cp + 1 < ncols ? (const uint16_t *)(const void *)kv_row(w, &w->v, sg, col[2 * cp + 1], kvh) : NULL;
        uint32_t *dst = vp + cp * Dvp;
        int64_t d = 0;
        for (; d + 16 <= Dv; d += 16) {
            const __m512i a = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(v0 + d)));
            const __m512i hi = v1 ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(v1 + d))) : _mm512_setzero_si512();
            _mm512_storeu_si512(dst + d, _mm512_or_si512(a, _mm512_slli_epi32(hi, 16)));
        }
        for (; d < Dvp; d++)
            dst[d] = d < Dv ? (uint32_t)v0[d] | (v1 ? (uint32_t)v1[d] << 16 : 0u) : 0u;
    }
}

/* probabilities P^T[c][r] -> pp[cp][r] = (bf16 p[2cp][r], bf16 p[2cp+1][r]) */
static void pack_p_pairs(uint32_t *pp, const float *st, int64_t R, int64_t arows, int ncols) {
    for (int cp = 0; cp < (ncols + 1) / 2; cp++)
        for (int64_t r = 0; r < arows; r += 16) {
            const __m512 lo = _mm512_loadu_ps(st + 2 * cp * R + r);
            const __m512 hi = 2 * cp + 1 < ncols ? _mm512_loadu_ps(st + (2 * cp + 1) * R + r) : _mm512_setzero_ps();
            _mm512_storeu_si512(pp + cp * R + r, pack_pairs(lo, hi));
        }
}

static inline __attribute__((always_inline)) void pv_block_bf16(
    const uint32_t *restrict pp, int64_t R, const uint32_t *restrict vp, int64_t d0, int npairs,
    const float *restrict alpha, float *restrict o, int64_t Dvp, const int NV) {
    __m512 acc[RB][NVO];
    for (int r = 0; r < RB; r++)
        for (int n = 0; n < NV; n++)
            acc[r][n] = _mm512_mul_ps(_mm512_loadu_ps(o + r * Dvp + d0 + n * 16), _mm512_set1_ps(alpha[r]));
    for (int cp = 0; cp < npairs; cp++) {
        __m512i vv[NVO];
        for (int n = 0; n < NV; n++) vv[n] = _mm512_loadu_si512(vp + cp * Dvp + d0 + n * 16);
        for (int r = 0; r < RB; r++) {
            const __m512i pb = _mm512_set1_epi32((int)pp[cp * R + r]);
            for (int n = 0; n < NV; n++)
                acc[r][n] = _mm512_dpbf16_ps(acc[r][n], (__m512bh)pb, (__m512bh)vv[n]);
        }
    }
    for (int r = 0; r < RB; r++)
        for (int n = 0; n < NV; n++) _mm512_storeu_ps(o + r * Dvp + d0 + n * 16, acc[r][n]);
}

static void pv_tile_bf16(const uint32_t *pp, int64_t R, int64_t prows, const uint32_t *vp,
                         int ncols, const float *alpha, float *o, int64_t Dvp) {
    const int npairs = (ncols + 1) / 2;
    for (int64_t r = 0; r < prows; r += RB) {
        int64_t d0 = 0;
        for (; d0 + NVO * 16 <= Dvp; d0 += NVO * 16)
            pv_block_bf16(pp + r, R, vp, d0, npairs, alpha + r, o + r * Dvp, Dvp, NVO);
        for (; d0 < Dvp; d0 += 16) pv_block_bf16(pp + r, R, vp, d0, npairs, alpha + r, o + r * Dvp, Dvp, 1);
    }
}
#endif

/* n elements of a 16/32-bit float row -> fp32. */
static inline void convert_row(float *restrict dst, const char *src, enum cflash_dtype t, int64_t n) {
#if defined(__FLT16_MAX__) && defined(__F16C__)
    if (t == CFLASH_DTYPE_F16) { /* exact, and vectorized through F16C */
        const _Float16 *s = (const _Float16 *)(const void *)src;
        for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
        return;
    }
#endif
    if (t == CFLASH_DTYPE_BF16) { /* bf16 is the top half of an fp32: widen and shift */
        typedef uint16_t vh __attribute__((vector_size(VL * 2), aligned(2)));
        const uint16_t *s = (const uint16_t *)(const void *)src;
        int64_t i = 0;
        for (; i + VL <= n; i += VL) {
            const vh h = *(const vh *)(s + i);
            vstore(dst + i, (vf)(__builtin_convertvector(h, vi) << 16));
        }
        for (; i < n; i++) dst[i] = bf16_to_f32(s[i]);
        return;
    }
    load_row_f32(dst, src, t, n, 1.0f);
}

/* The first c in [0, n) with col[c] >= x (n if none); col is increasing. */
static inline int64_t first_at_least(const int64_t *col, int n, int64_t x) {
    int lo = 0, hi = n;
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (col[mid] < x) lo = mid + 1; else hi = mid;
    }
    return lo;
}

/* The vector score rules of VL rows at tile column c (key col[c] = c0 + colf): the bf16 path's
 * deferred scale, softcap, ALiBi, and the per-row visible interval [lo, hi) of columns. */
static inline __attribute__((always_inline)) vf score_rules(
    vf s, int c, float colf, const int32_t *lo_p, const int32_t *hi_p, const float *slope_p,
    const float *adiag_p, int bf16dot, float qmul, int softcap, float cap2, float inv_cap,
    int alibi, int masked) {
    if (bf16dot) s *= qmul;
    if (softcap) s = cap2 * vtanh(s * inv_cap);
    if (alibi) s -= vload(slope_p) * vabs(colf - vload(adiag_p));
    if (masked) {
        vi lo, hi;
        memcpy(&lo, lo_p, sizeof lo);
        memcpy(&hi, hi_p, sizeof hi);
        s = vsel((lo <= c) & (hi > c), s, vset1(-INFINITY));
    }
    return s;
}

/* Does any row of the tile keep any of its columns under the boolean mask? A tile with none
 * is skipped before K and V are touched. */
static int mask_tile_any(const struct attn_work *w, const struct attn_segment *sg, int64_t kvh,
                         int64_t G, int64_t i0, int64_t nrows, int64_t c0, int ncols) {
    const struct attn_scoresrc *m = &w->mask;
    for (int64_t r = 0; r < nrows; r++) {
        const int64_t off = scoresrc_offset(m, sg, kvh * G + r % G, i0 + r / G, c0);
        for (int c = 0; c < ncols; c++)
            if (m->data[off + c * m->sk]) return 1;
        if (m->sq == 0 && r + 1 >= G) break; /* key-side: rows differ only by head */
    }
    return 0;
}

/* Boolean mask (-inf where 0) and additive bias (times log2 e: scores are base 2) on the
 * visible columns [lo, hi) of every row, after the softcap. */
static void apply_mask_bias(const struct attn_work *w, const struct attn_segment *sg, int64_t kvh,
                            int64_t G, int64_t i0, int64_t nrows, const int64_t *col,
                            const int32_t *lo, const int32_t *hi, float *st, int64_t R,
                            int64_t ra, int64_t rb) {
    /* rows [ra, rb) of the tile (whole vectors) are computed; lo / hi are set for them only */
    const int64_t rend = rb < nrows ? rb : nrows;
    const struct attn_scoresrc *m = &w->mask, *bs = &w->bias;
    /* Key-side sources read by one variant for the whole tile (Hv in {1, Hk}): one mask byte
     * and one bias value per key, applied to all rows as vectors. Rows outside their visible
     * interval are already -inf and stay so. */
    const int per_key = (!m->data || (m->sq == 0 && m->hdiv >= G)) &&
                        (!bs->data || (bs->sq == 0 && bs->hdiv >= G));
    if (per_key) {
        const int64_t h = kvh * G;
        const int64_t moff = m->data ? scoresrc_offset(m, sg, h, i0, 0) : 0; /* key 0; linear in key */
        const int64_t boff = bs->data ? scoresrc_offset(bs, sg, h, i0, 0) : 0;
        int cmax = 0;
        for (int64_t r = ra; r < rend; r++) cmax = hi[r] > cmax ? hi[r] : cmax;
        for (int c = 0; c < cmax; c++) {
            float *sp = st + c * R;
            if (m->data && !m->data[moff + col[c] * m->sk]) {
                for (int64_t r = ra; r < rb; r += VL) vstore(sp + r, vset1(-INFINITY));
            } else if (bs->data) {
                const float add = LOG2E * load_f32(bs->data, bs->dtype, boff + col[c] * bs->sk);
                for (int64_t r = ra; r < rb; r += VL) vstore(sp + r, vload(sp + r) + add);
            }
        }
        return;
    }
    for (int64_t r = ra; r < rend; r++) {
        if (lo[r] >= hi[r]) continue;
        const int64_t h = kvh * G + r % G, i = i0 + r / G;
        const int64_t moff = m->data ? scoresrc_offset(m, sg, h, i, 0) : 0;
        const int64_t boff = bs->data ? scoresrc_offset(bs, sg, h, i, 0) : 0;
        for (int c = lo[r]; c < hi[r]; c++) {
            float *sp = st + c * R + r;
            if (m->data && !m->data[moff + col[c] * m->sk]) *sp = -INFINITY;
            else if (bs->data) *sp += LOG2E * load_f32(bs->data, bs->dtype, boff + col[c] * bs->sk);
        }
    }
}

void ISA(cpu_tiled_item)(const struct attn_work *w, const struct tiled_geometry *g, int64_t seg,
                         int64_t kvh, int64_t tile, int64_t klo, int64_t khi, float *partial,
                         void *wsp) {
    const int64_t D = w->D, Dv = w->Dv, G = w->Hq / w->Hk, R = g->max_rows;
    const int64_t Dvp = round_up(Dv, VL);
    const struct attn_segment *sg = &w->segments[seg];
    const int64_t i0 = sg->q0 + tile * g->rows_per_tile;
    const int64_t i1 = i0 + g->rows_per_tile < sg->q1 ? i0 + g->rows_per_tile : sg->q1;
    const int64_t nrows = (i1 - i0) * G;          /* valid rows */
    const int64_t arows = round_up(nrows, VL);    /* rows of the score vectors */
    const int64_t prows = round_up(nrows, RB);    /* rows of the output update */
    const int64_t b = sg->b;
    const int softcap = w->softcap > 0.0f;
    const float qmul = softcap ? w->scale : w->scale * LOG2E;
    const float cap2 = w->softcap * LOG2E, inv_cap = softcap ? 1.0f / w->softcap : 0.0f;
    const size_t qes = dtype_size(w->q.dtype);
    /* fp32 keys are read in place; values too when rows are whole vectors. */
    const int k_direct = w->k.dtype == CFLASH_DTYPE_F32;
    const int v_direct = w->v.dtype == CFLASH_DTYPE_F32 && Dv == Dvp;

    const int P = qk_phases(nrows, D); /* head-dim phases of the QK product (1: none) */
    /* bf16 dot products: Q stays unscaled (raw bf16 pairs); the scale multiplies the scores. */
    const int bf16dot = BF16_DOT && P == 1 && w->q.dtype == CFLASH_DTYPE_BF16 && D % 2 == 0;

    struct tile_ws t;
    ws_carve(&t, wsp, R, D, Dvp);

    /* Query rows, transposed and pre-scaled; padding rows are zero and fully masked. */
    float qrow[CFLASH_MAX_HEAD_DIM];
    for (int64_t r = 0; r < arows; r++) {
        if (bf16dot) {
            uint32_t *qt2 = (uint32_t *)(void *)t.qt;
            const int64_t i = i0 + r / G, h = kvh * G + r % G;
            const char *src = r < nrows ? w->q.data + (b * w->q.sb + i * w->q.st + h * w->q.sh) * 2 : NULL;
            for (int64_t dd = 0; dd < D / 2; dd++) qt2[dd * R + r] = src ? load_u32(src + 4 * dd) : 0u;
            if (r < nrows) t.slope[r] = w->alibi ? w->alibi[b * w->alibi_sb + h * w->alibi_sh] * LOG2E : 0.0f;
        } else if (r < nrows) {
            const int64_t i = i0 + r / G, h = kvh * G + r % G;
            const char *src = w->q.data + (b * w->q.sb + i * w->q.st + h * w->q.sh) * (int64_t)qes;
            load_row_f32(qrow, src, w->q.dtype, D, qmul);
            for (int64_t d = 0; d < D; d++) t.qt[(d / P) * R + r * P + d % P] = qrow[d];
            t.slope[r] = w->alibi ? w->alibi[b * w->alibi_sb + h * w->alibi_sh] * LOG2E : 0.0f;
        } else if (r * P < VL || P == 1) { /* with phases, lanes r * P + p < VL exist */
            for (int64_t d = 0; d < D; d++) t.qt[(d / P) * R + r * P + d % P] = 0.0f;
        }
        if (r >= nrows) t.slope[r] = 0.0f;
        t.m[r] = -INFINITY;
        t.l[r] = 0.0f;
    }
    memset(t.o, 0, (size_t)(prows * Dvp) * sizeof(float));

    const float *kp[BC], *vp[BC];
    int64_t col[BC];  /* key index of each tile column */
    float colf[BC];   /* col[c] - col[0], for ALiBi */
    /* Key compaction: a mask that depends only on the key for all rows of this item (key-side,
     * or dense broadcast over queries, with one head variant for the G heads) selects the kept
     * keys before anything is loaded, so a 70% mask costs 70% of the work, not 100%. */
    const int compact = w->mask.data && w->mask.sq == 0 && w->mask.hdiv >= G;
    const int64_t compact_off = compact ? scoresrc_offset(&w->mask, sg, kvh * G, i0, 0) : 0;
#if BF16_DOT
    const uint16_t *kp16[BC];
#endif
    for (int64_t si = sg->s0; si < sg->s1; si++) {
        const struct attn_slice *sl = &w->slices[si];
        const int64_t rlo = i0 > sl->q0 ? i0 : sl->q0, rhi = i1 < sl->q1 ? i1 : sl->q1;
        if (rlo >= rhi) continue;
        int64_t clo = rlo + sl->dlo > sl->k0 ? rlo + sl->dlo : sl->k0;
        int64_t chi = rhi + sl->dhi < sl->k1 ? rhi + sl->dhi : sl->k1;
        clo = clo > klo ? clo : klo; /* this item's share of the keys (split-KV) */
        chi = chi < khi ? chi : khi;
        const int all_rows = rlo == i0 && rhi == i1;

        for (int64_t cur = clo; cur < chi;) {
            /* The tile's key columns col[0..ncols): the next BC keys, or with a key-side mask
             * the next BC kept keys (masked keys are never loaded or computed). */
            int ncols = 0;
            if (compact) {
                for (; cur < chi && ncols < BC; cur++)
                    if (w->mask.data[compact_off + cur * w->mask.sk]) col[ncols++] = cur;
                if (ncols == 0) break;
            } else {
                /* A tile the band cuts (some row cannot see its last key) takes half the keys:
                 * with the row trimming below, a causal diagonal wastes a quarter as much. */
                const int width = cur + BC - 1 > rlo + sl->dhi ? BC / 2 : BC;
                for (; cur < chi && ncols < width; cur++) col[ncols++] = cur;
            }
            const int64_t c0 = col[0], clast = col[ncols - 1];
            for (int c = 0; c < ncols; c++) colf[c] = (float)(col[c] - c0);
            /* Every (row, col) of the tile visible: skip the per-row clipping. */
            const int full = !compact && all_rows && c0 - (i1 - 1) >= sl->dlo && clast - i0 <= sl->dhi;
            if (w->mask.data && !compact && !mask_tile_any(w, sg, kvh, G, i0, nrows, c0, ncols)) continue;
            /* Rows [ra, rb) (whole vectors) can see a key of this tile: positions i with
             * i + dlo <= clast and i + dhi >= c0. Causal diagonal tiles skip the rows above
             * the diagonal (half of a 128-row tile's diagonal work). Not with head-dim phases,
             * whose rows are interleaved. */
            int64_t ra = 0, rb = arows;
            if (P == 1) {
                const int64_t fi = c0 - sl->dhi > rlo ? c0 - sl->dhi : rlo;
                const int64_t li = clast - sl->dlo < rhi - 1 ? clast - sl->dlo : rhi - 1;
                if (fi > li) continue;
                ra = (fi - i0) * G / VL * VL;
                rb = round_up((li - i0 + 1) * G, VL);
                if (rb > arows) rb = arows;
            }
            const int64_t pb = rb < prows ? rb : prows; /* output rows updated: [ra, pb) */

#if BF16_DOT
            if (bf16dot) {
                for (int c = 0; c < ncols; c++)
                    kp16[c] = (const uint16_t *)(const void *)kv_row(w, &w->k, sg, col[c], kvh);
                pack_v_pairs((uint32_t *)(void *)t.vb, w, sg, kvh, col, ncols, Dvp);
                qk_tile_bf16(kp16, ncols, D, (const uint32_t *)(void *)t.qt + ra, R, rb - ra, t.st + ra);
            } else
#endif
            for (int c = 0; c < ncols; c++) {
                const char *kr = kv_row(w, &w->k, sg, col[c], kvh);
                const char *vr = kv_row(w, &w->v, sg, col[c], kvh);
                if (k_direct) {
                    kp[c] = (const float *)(const void *)kr;
                } else {
                    convert_row(t.kb + c * D, kr, w->k.dtype, D);
                    kp[c] = t.kb + c * D;
                }
                if (v_direct) {
                    vp[c] = (const float *)(const void *)vr;
                } else {
                    convert_row(t.vb + c * Dvp, vr, w->v.dtype, Dv);
                    for (int64_t d = Dv; d < Dvp; d++) t.vb[c * Dvp + d] = 0.0f;
                    vp[c] = t.vb + c * Dvp;
                }
            }

            if (bf16dot) {
                /* scores computed above */
#if PHASES_MAX > 1
            } else if (P > 1) {
                qk_tile_phased(kp, ncols, D, t.qt, R, t.st, P);
#endif
            } else {
                qk_tile(kp, ncols, D, t.qt + ra, R, rb - ra, t.st + ra);
            }

            /* Visible columns of each row in this tile. */
            for (int64_t r = ra; r < rb; r++) {
                const int64_t i = i0 + r / G;
                int64_t lo = 0, hi = ncols;
                if (r >= nrows || i < sl->q0 || i >= sl->q1) {
                    lo = hi = 0;
                } else if (compact) {
                    /* visible keys [i + dlo, i + dhi] are a run of the increasing col[] */
                    lo = first_at_least(col, ncols, i + sl->dlo);
                    hi = first_at_least(col, ncols, i + sl->dhi + 1);
                } else if (!full) {
                    const int64_t a = i + sl->dlo - c0, z = i + sl->dhi + 1 - c0;
                    lo = a > 0 ? a : 0;
                    hi = z < ncols ? z : ncols;
                    if (lo > ncols) lo = ncols;
                    if (hi < lo) hi = lo;
                }
                t.lo[r] = (int32_t)lo;
                t.hi[r] = (int32_t)hi;
                t.adiag[r] = (float)(i + sl->alibi_diag - c0);
            }

            /* Score rules and the online softmax, VL rows at a time. With a mask or bias the
             * vector rules run first over the whole tile, then the scalar mask/bias pass
             * (which must follow the softcap), then the max; without, all in one pass. */
            const int masked = !full || arows != nrows;
            const int msrc = w->mask.data || w->bias.data;
            for (int64_t r = ra; msrc && r < rb; r += VL)
                for (int c = 0; c < ncols; c++) {
                    float *sp = t.st + c * R + r;
                    vstore(sp, score_rules(vload(sp), c, colf[c], t.lo + r, t.hi + r, t.slope + r, t.adiag + r,
                                           bf16dot, qmul, softcap, cap2, inv_cap, w->alibi != NULL, masked));
                }
            if (msrc) apply_mask_bias(w, sg, kvh, G, i0, nrows, col, t.lo, t.hi, t.st, R, ra, rb);
            for (int64_t r = ra; r < rb; r += VL) {
                vf mx = vset1(-INFINITY);
                for (int c = 0; c < ncols; c++) {
                    float *sp = t.st + c * R + r;
                    vf s = vload(sp);
                    if (!msrc) {
                        s = score_rules(s, c, colf[c], t.lo + r, t.hi + r, t.slope + r, t.adiag + r, bf16dot,
                                        qmul, softcap, cap2, inv_cap, w->alibi != NULL, masked);
                        vstore(sp, s);
                    }
                    mx = vmax(mx, s);
                }
                const vf m_old = vload(t.m + r);
                const vf m_new = vmax(m_old, mx);
                /* rows with nothing visible yet subtract 0: p = 2^-inf = 0, alpha = 0 */
                const vf m_use = vsel(m_new == -INFINITY, vset1(0.0f), m_new);
                vf sum = vset1(0.0f);
                for (int c = 0; c < ncols; c++) {
                    float *sp = t.st + c * R + r;
                    vf p = vexp2(vload(sp) - m_use);
                    vstore(sp, p);
                    sum += p;
                }
                const vf alpha = vexp2(m_old - m_use);
                vstore(t.alpha + r, alpha);
                vstore(t.l + r, vload(t.l + r) * alpha + sum);
                vstore(t.m + r, m_new);
            }

#if BF16_DOT
            if (bf16dot) {
                pack_p_pairs(t.pp + ra, t.st + ra, R, rb - ra, ncols);
                pv_tile_bf16(t.pp + ra, R, pb - ra, (const uint32_t *)(void *)t.vb, ncols, t.alpha + ra, t.o + ra * Dvp, Dvp);
            } else
#endif
            pv_tile(t.st + ra, R, pb - ra, vp, ncols, t.alpha + ra, t.o + ra * Dvp, Dvp);
        }
    }

    if (partial) { /* a split of the keys: unnormalized state, combined by dispatch.c */
        float *pm = partial + nrows * Dv, *pl = pm + nrows;
        for (int64_t r = 0; r < nrows; r++) {
            memcpy(partial + r * Dv, t.o + r * Dvp, (size_t)Dv * sizeof(float));
            pm[r] = t.m[r];
            pl[r] = t.l[r];
        }
        return;
    }
    tiled_finalize(w, sg, kvh, i0, nrows, t.m, t.l, t.o, Dvp);
}

#if defined(CPU_ISA_GENERIC)
/* Geometry is the same for every ISA so that work items (and results) do not depend on it. */
void tiled_geometry(struct tiled_geometry *g, int64_t Hq, int64_t Hk) {
    const int64_t G = Hq / Hk;
    g->rows_per_tile = TILE_ROWS / G > 0 ? TILE_ROWS / G : 1;
    g->max_rows = round_up(g->rows_per_tile * G, 16); /* the widest VL */
}

size_t cpu_tiled_workspace_per_thread(int64_t Hq, int64_t Hk, int64_t D, int64_t Dv) {
    struct tiled_geometry g;
    tiled_geometry(&g, Hq, Hk);
    const int64_t R = g.max_rows, Dvp = round_up(Dv, 16); /* the widest VL */
    int64_t floats = round_up(R * D, 16) + round_up(BC * D, 16) + BC * Dvp + BC * R + BC / 2 * R +
                     R * Dvp + 7 * R;
    return (size_t)floats * sizeof(float) + 64; /* + alignment slack */
}
#endif
