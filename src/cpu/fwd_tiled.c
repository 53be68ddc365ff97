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

#if defined(CPU_ISA_AVX512)
#define ISA(name) name##_avx512
#define VL 16
#elif defined(CPU_ISA_AVX2)
#define ISA(name) name##_avx2
#define VL 8
#else
#define ISA(name) name##_generic
#define VL 4
#endif

/* Key tile width (columns of S), a multiple of every VL. */
#define BC 64
/* Rows per register block of both micro-kernels; tiles are padded to a multiple of it. */
#define RB 4
/* Vectors per register block: QK covers NVQ*VL key columns, PV NVO*VL output columns.
 * AVX-512: 4 x 4 zmm accumulators = 16 of 32 registers; AVX2/generic: 4 x 2 of 16. */
#if VL == 16
#define NVQ 4
#define NVO 4
#else
#define NVQ 2
#define NVO 2
#endif
/* Target rows of a query tile: 64 rows x D=128 fp32 is 32 KB per operand, L2-resident. */
#define TILE_ROWS 64

typedef float vf __attribute__((vector_size(VL * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VL * 4), aligned(4)));

static const float LOG2E = 1.4426950408889634f;
static const float LN2 = 0.6931471805599453f;

static inline vf vload(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf vset1(float x) { return (vf){0} + x; }
static inline vf vsel(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }
static inline vf vmax(vf a, vf b) { return vsel(a > b, a, b); }
static inline vf vmin(vf a, vf b) { return vsel(a < b, a, b); }
static inline vf vabs(vf a) { return (vf)((vi)a & 0x7fffffff); }

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

/* Workspace layout of one thread, in floats (each region a multiple of VL). */
struct tile_ws {
    float *q;   /* [max_rows][D]      query rows, pre-scaled */
    float *kt;  /* [D][BC]            key tile, transposed */
    float *v;   /* [BC][Dvp]          value tile */
    float *s;   /* [max_rows][BC]     scores, then probabilities */
    float *o;   /* [max_rows][Dvp]    unnormalized output */
    float *m, *l, *alpha; /* [max_rows] running max (base 2), sum, rescale of this tile */
    float *slope;         /* [max_rows] ALiBi slope * log2(e) of the row's head */
};

static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

static void ws_carve(struct tile_ws *t, void *base, int64_t max_rows, int64_t D, int64_t Dvp) {
    float *p = (float *)base;
    t->q = p;     p += round_up(max_rows * D, 16);
    t->kt = p;    p += round_up(D * BC, 16);
    t->v = p;     p += BC * Dvp;
    t->s = p;     p += max_rows * BC;
    t->o = p;     p += max_rows * Dvp;
    t->m = p;     p += round_up(max_rows, 16);
    t->l = p;     p += round_up(max_rows, 16);
    t->alpha = p; p += round_up(max_rows, 16);
    t->slope = p;
}

/* S[r][c0..c0+NVQ*VL) = sum_d Q[r][d] Kt[d][c0..], for RB rows. */
static inline void qk_block(const float *restrict q, int64_t D, const float *restrict kt,
                            float *restrict s) {
    for (int c0 = 0; c0 < BC; c0 += NVQ * VL) {
        vf acc[RB][NVQ];
        for (int r = 0; r < RB; r++)
            for (int n = 0; n < NVQ; n++) acc[r][n] = vset1(0.0f);
        for (int64_t d = 0; d < D; d++) {
            vf kv[NVQ];
            for (int n = 0; n < NVQ; n++) kv[n] = vload(kt + d * BC + c0 + n * VL);
            for (int r = 0; r < RB; r++) {
                vf qb = vset1(q[r * D + d]);
                for (int n = 0; n < NVQ; n++) acc[r][n] += qb * kv[n];
            }
        }
        for (int r = 0; r < RB; r++)
            for (int n = 0; n < NVQ; n++) vstore(s + r * BC + c0 + n * VL, acc[r][n]);
    }
}

/* O[r][d0..d0+NV*VL) = O[r][..] * alpha[r] + sum_c P[r][c] V[c][..], for RB rows. */
static inline __attribute__((always_inline)) void pv_block(
    const float *restrict p, const float *restrict v, int64_t Dvp, int64_t d0, int ncols,
    const float *restrict alpha, float *restrict o, const int NV) {
    vf acc[RB][NVO];
    for (int r = 0; r < RB; r++)
        for (int n = 0; n < NV; n++) acc[r][n] = vload(o + r * Dvp + d0 + n * VL) * alpha[r];
    for (int c = 0; c < ncols; c++) {
        vf vv[NVO];
        for (int n = 0; n < NV; n++) vv[n] = vload(v + c * Dvp + d0 + n * VL);
        for (int r = 0; r < RB; r++) {
            vf pb = vset1(p[r * BC + c]);
            for (int n = 0; n < NV; n++) acc[r][n] += pb * vv[n];
        }
    }
    for (int r = 0; r < RB; r++)
        for (int n = 0; n < NV; n++) vstore(o + r * Dvp + d0 + n * VL, acc[r][n]);
}

static void pv_rows(const float *p, const float *v, int64_t Dvp, int ncols, const float *alpha,
                    float *o) {
    int64_t d0 = 0;
    for (; d0 + NVO * VL <= Dvp; d0 += NVO * VL) pv_block(p, v, Dvp, d0, ncols, alpha, o, NVO);
    for (; d0 < Dvp; d0 += VL) pv_block(p, v, Dvp, d0, ncols, alpha, o, 1);
}

void ISA(cpu_tiled_item)(const struct attn_work *w, const struct tiled_geometry *g, int64_t seg,
                         int64_t kvh, int64_t tile, void *wsp) {
    const int64_t D = w->D, Dv = w->Dv, G = w->Hq / w->Hk;
    const int64_t Dvp = round_up(Dv, VL);
    const struct attn_segment *sg = &w->segments[seg];
    const int64_t i0 = sg->q0 + tile * g->rows_per_tile;
    const int64_t i1 = i0 + g->rows_per_tile < sg->q1 ? i0 + g->rows_per_tile : sg->q1;
    const int64_t nrows = (i1 - i0) * G;        /* valid rows */
    const int64_t arows = round_up(nrows, RB);  /* rows computed */
    const int64_t b = sg->b;
    const int softcap = w->softcap > 0.0f;
    const float qmul = softcap ? w->scale : w->scale * LOG2E;
    const float cap2 = w->softcap * LOG2E, inv_cap = softcap ? 1.0f / w->softcap : 0.0f;

    struct tile_ws t;
    ws_carve(&t, wsp, g->max_rows, D, Dvp);

    /* Load the query rows (padding rows zero: their scores stay 0 and are never stored). */
    const size_t qes = dtype_size(w->q.dtype);
    for (int64_t r = 0; r < arows; r++) {
        float *dst = t.q + r * D;
        if (r < nrows) {
            int64_t i = i0 + r / G, h = kvh * G + r % G;
            const char *src = w->q.data + (b * w->q.sb + i * w->q.st + h * w->q.sh) * (int64_t)qes;
            load_row_f32(dst, src, w->q.dtype, D, qmul);
            t.slope[r] = w->alibi ? w->alibi[b * w->alibi_sb + h * w->alibi_sh] * LOG2E : 0.0f;
        } else {
            memset(dst, 0, (size_t)D * sizeof(float));
            t.slope[r] = 0.0f;
        }
        t.m[r] = -INFINITY;
        t.l[r] = 0.0f;
        memset(t.o + r * Dvp, 0, (size_t)Dvp * sizeof(float));
    }

    const size_t kes = dtype_size(w->k.dtype), ves = dtype_size(w->v.dtype);
    for (int64_t si = sg->s0; si < sg->s1; si++) {
        const struct attn_slice *sl = &w->slices[si];
        const int64_t rlo = i0 > sl->q0 ? i0 : sl->q0, rhi = i1 < sl->q1 ? i1 : sl->q1;
        if (rlo >= rhi) continue;
        int64_t clo = rlo + sl->dlo > sl->k0 ? rlo + sl->dlo : sl->k0;
        int64_t chi = rhi - 1 + sl->dhi + 1 < sl->k1 ? rhi + sl->dhi : sl->k1;
        const int all_rows = rlo == i0 && rhi == i1;

        for (int64_t c0 = clo; c0 < chi; c0 += BC) {
            const int64_t c1 = c0 + BC < chi ? c0 + BC : chi;
            const int ncols = (int)(c1 - c0);
            /* Every (row, col) of the tile visible: no per-row clipping needed. */
            const int full = all_rows && ncols == BC && c0 - (i1 - 1) >= sl->dlo &&
                             (c1 - 1) - i0 <= sl->dhi;

            /* Pack K transposed and V; padding columns/rows are zero (P is 0 there, and
             * 0 * garbage could be NaN). */
            for (int c = 0; c < ncols; c++) {
                const char *kr = w->k.data + (b * w->k.sb + (c0 + c) * w->k.st + kvh * w->k.sh) * (int64_t)kes;
                const char *vr = w->v.data + (b * w->v.sb + (c0 + c) * w->v.st + kvh * w->v.sh) * (int64_t)ves;
                if (w->k.dtype == CFLASH_DTYPE_F32) {
                    const float *kf = (const float *)(const void *)kr;
                    for (int64_t d = 0; d < D; d++) t.kt[d * BC + c] = kf[d];
                } else {
                    for (int64_t d = 0; d < D; d++) t.kt[d * BC + c] = load_f32(kr, w->k.dtype, d);
                }
                load_row_f32(t.v + c * Dvp, vr, w->v.dtype, Dv, 1.0f);
                for (int64_t d = Dv; d < Dvp; d++) t.v[c * Dvp + d] = 0.0f;
            }
            if (ncols < BC) {
                for (int64_t d = 0; d < D; d++)
                    memset(t.kt + d * BC + ncols, 0, (size_t)(BC - ncols) * sizeof(float));
                memset(t.v + ncols * Dvp, 0, (size_t)(BC - ncols) * (size_t)Dvp * sizeof(float));
            }

            for (int64_t r = 0; r < arows; r += RB) qk_block(t.q + r * D, D, t.kt, t.s + r * BC);

            /* Score rules and online softmax, row by row. */
            for (int64_t r = 0; r < nrows; r++) {
                float *srow = t.s + r * BC;
                const int64_t i = i0 + r / G;
                int64_t lo = 0, hi = BC; /* visible columns [lo, hi) of this tile */
                if (!full) {
                    if (i < sl->q0 || i >= sl->q1) {
                        lo = hi = 0;
                    } else {
                        int64_t a = i + sl->dlo - c0, z = i + sl->dhi + 1 - c0;
                        lo = a > 0 ? a : 0;
                        hi = z < ncols ? z : ncols;
                        if (hi < lo) hi = lo;
                    }
                }
                vf vmx = vset1(-INFINITY);
                const float slope = t.slope[r];
                const float adiag = (float)(i + sl->alibi_diag - c0);
                for (int c = 0; c < BC; c += VL) {
                    vf s = vload(srow + c);
                    if (softcap) s = cap2 * vtanh(s * inv_cap);
                    if (w->alibi) {
                        vf col = vset1(0.0f);
                        for (int e = 0; e < VL; e++) col[e] = (float)(c + e);
                        s -= slope * vabs(col - adiag);
                    }
                    if (!full) {
                        vi col;
                        for (int e = 0; e < VL; e++) col[e] = c + e;
                        vi keep = (col >= (int32_t)lo) & (col < (int32_t)hi);
                        s = vsel(keep, s, vset1(-INFINITY));
                    }
                    vstore(srow + c, s);
                    vmx = vmax(vmx, s);
                }
                const float m_old = t.m[r];
                float m_new = hmax(vmx);
                m_new = m_new > m_old ? m_new : m_old;
                if (m_new == -INFINITY) { /* nothing visible yet: P = 0, O stays 0 */
                    memset(srow, 0, BC * sizeof(float));
                    t.alpha[r] = 1.0f;
                    continue;
                }
                vf vsum = vset1(0.0f);
                for (int c = 0; c < BC; c += VL) {
                    vf p = vexp2(vload(srow + c) - m_new);
                    vstore(srow + c, p);
                    vsum += p;
                }
                const float alpha = exp2f(m_old - m_new); /* 0 when m_old = -inf */
                t.alpha[r] = alpha;
                t.l[r] = t.l[r] * alpha + hsum(vsum);
                t.m[r] = m_new;
            }
            for (int64_t r = nrows; r < arows; r++) {
                memset(t.s + r * BC, 0, BC * sizeof(float));
                t.alpha[r] = 1.0f;
            }

            for (int64_t r = 0; r < arows; r += RB)
                pv_rows(t.s + r * BC, t.v, Dvp, ncols, t.alpha + r, t.o + r * Dvp);
        }
    }

    /* Normalize, add the sink, store out and lse. */
    for (int64_t r = 0; r < nrows; r++) {
        const int64_t i = i0 + r / G, h = kvh * G + r % G;
        float m = t.m[r], l = t.l[r], oscale;
        if (w->sinks) {
            const float z = w->sinks[h * w->sinks_sh] * LOG2E;
            const float mm = m > z ? m : z;
            l = (m == -INFINITY ? 0.0f : l * exp2f(m - mm)) + exp2f(z - mm);
            oscale = (m == -INFINITY ? 0.0f : exp2f(m - mm)) / l;
            m = mm;
        } else {
            oscale = l > 0.0f ? 1.0f / l : 0.0f;
        }
        const float *orow = t.o + r * Dvp;
        char *dst = w->out.data + (b * w->out.sb + i * w->out.st + h * w->out.sh) * (int64_t)dtype_size(w->out.dtype);
        if (w->out.dtype == CFLASH_DTYPE_F32) {
            float *df = (float *)(void *)dst;
            for (int64_t d = 0; d < Dv; d++) df[d] = orow[d] * oscale;
        } else {
            for (int64_t d = 0; d < Dv; d++) store_f32(dst, w->out.dtype, d, orow[d] * oscale);
        }
        if (w->lse_data)
            w->lse_data[b * w->lse_sb + h * w->lse_sh + i * w->lse_st] =
                l > 0.0f ? (m + log2f(l)) * LN2 : -INFINITY;
    }
}

#if defined(CPU_ISA_GENERIC)
/* Geometry is the same for every ISA so that work items (and results) do not depend on it. */
void tiled_geometry(struct tiled_geometry *g, int64_t Hq, int64_t Hk) {
    const int64_t G = Hq / Hk;
    g->rows_per_tile = TILE_ROWS / G > 0 ? TILE_ROWS / G : 1;
    g->max_rows = round_up(g->rows_per_tile * G, RB);
}

size_t cpu_tiled_workspace_per_thread(int64_t Hq, int64_t Hk, int64_t D, int64_t Dv) {
    struct tiled_geometry g;
    tiled_geometry(&g, Hq, Hk);
    const int64_t R = g.max_rows, Dvp = round_up(Dv, 16); /* the widest VL */
    int64_t floats = round_up(R * D, 16) + round_up(D * BC, 16) + BC * Dvp + R * BC + R * Dvp +
                     4 * round_up(R, 16);
    return (size_t)floats * sizeof(float) + 64; /* + alignment slack */
}
#endif
