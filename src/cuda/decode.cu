/*
 * decode.cu - attention over a KV cache for short queries (Lq <= 8: decode and speculative
 * decode) on tensor cores, split over the key axis when the batch and the KV heads alone cannot
 * fill the GPU (flash-decoding), with the two small kernels around it: the in-place append of
 * the new keys and values, and the combine of the split partial states (SPEC.md section 7).
 *
 * Schedule: one thread block owns one (batch entry, KV head, key split) and all Lq x G query
 * rows of that KV head (G = Hq / Hk, up to DEC_ROWS rows; more rows take more blocks), so each
 * key and value row is read from memory once per KV head. The block streams its key range
 * through a multi-stage cp.async pipeline (16-byte copies, STAGES - 1 stages in flight while one
 * is computed); for each stage S = Q K^T and O += P V run on mma.sync m16n8k16 exactly as in
 * fwd_mma.cu (ldmatrix, fp32 accumulators, base-2 online softmax, P rounded to the input type).
 * Few rows cannot feed four warps with 16-row tiles, so the warps split the keys of a stage
 * instead (4 warps x 16 keys for <= 16 rows, 2 x 32 for <= 32, 1 x 64 for <= 64), each keeping
 * its own softmax state; the states are merged through shared memory at the end. Paged caches
 * address every key row through the block table (any page size); the addressing is per row, so
 * a page of one row costs what a contiguous row costs.
 *
 * Also here: the MLA kernel (D = 576, Dv = 512, V := K[..., :512]; any Lq), and chunked
 * prefill (Lq > 8, other head dims): the append, q rotated into a workspace when there is
 * rotary, then fwd_mma.cu's prefill kernel over the cache rows or pages.
 *
 * Masks and biases (the DENSE layout over each sequence's logical keys) are read per score in
 * the decode and MLA kernels and by the prefill kernel's GENERAL variant.
 *
 * What it is not: a Hopper wgmma/TMA decode kernel.
 *
 * Device metadata (cache_seqlens, cache_batch_idx, block_table) is read only by the kernels,
 * never on the host: each length is clamped to the cache capacity and each row / page id to the
 * tensor, so bad metadata gives unspecified numbers but never an access out of bounds.
 */
#include "cuda/cuda.h"
#include "cuda/ptx.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

extern "C" enum cflash_status cflash_set_error(enum cflash_status st, const char *fmt, ...);
extern "C" const char *api_dtype_name(enum cflash_dtype t);

/* Compiled in parts, so that a build compiles the kernels in parallel (as FlashAttention splits
 * its instantiations by head dim): decode_d64.cu, decode_d128.cu and decode_d256.cu include this
 * file with CFLASH_DECODE_PART set to their head dim and define cuda_decode_launch_d<dim>; this
 * file itself (part 0) holds the MLA kernel and the entry points. */
#ifndef CFLASH_DECODE_PART
#define CFLASH_DECODE_PART 0
#endif
enum cflash_status cuda_decode_launch_d64(const struct cuda_kvcache *f);
enum cflash_status cuda_decode_launch_d128(const struct cuda_kvcache *f);
enum cflash_status cuda_decode_launch_d256(const struct cuda_kvcache *f);

namespace {

constexpr float LOG2E_F = 1.4426950408889634f;
constexpr float LN2_F = 0.6931471805599453f;

/* the PTX wrappers (cp.async, ldmatrix, mma.sync, pack2, swz): cuda/ptx.cuh */

/* Two adjacent output elements (col, col + 1) of a row: out dtype fp32, or the input type T. */
template <typename T>
__device__ __forceinline__ void store_pair(void *row, enum cflash_dtype odt, int col, float x, float y) {
    if (odt == CFLASH_DTYPE_F32)
        *(float2 *)((float *)row + col) = make_float2(x, y);
    else
        *(uint32_t *)((T *)row + col) = pack2(x, y, T());
}

/* ---- geometry ----
 * DEC_ROWS query rows per block: one 16-row mma tile per warp when every warp owns rows.
 * DEC_BN keys per pipeline stage: the smallest stage that still gives each of 4 warps one
 * 16-key mma step. STAGES by padded head dim: the K and V tiles of a stage are
 * 2 * DEC_BN * DP * 2 bytes (16 / 32 / 64 KB); with the Q tile the block takes 72 / 112 / 160 KB
 * of shared memory, so an H100 SM holds 3 / 2 / 1 blocks (and A100's 164 KB one D = 256 block),
 * each with (STAGES - 1) stages in flight: 48 to 128 KB per SM, far above the ~20 KB per SM that
 * 3 TB/s at ~1 us of memory latency needs (D = 128 with <= 16 rows: decode_geom below). What
 * limits the kernel is its instruction stream, not the bytes in flight. */
constexpr int DEC_WARPS = 4;
constexpr int DEC_THREADS = 32 * DEC_WARPS;
constexpr int DEC_ROWS = 16 * DEC_WARPS;
constexpr int DEC_BN = 64;
template <int DP> struct decode_tile;
template <> struct decode_tile<64>  { static constexpr int STAGES = 4; };
template <> struct decode_tile<128> { static constexpr int STAGES = 3; };
template <> struct decode_tile<256> { static constexpr int STAGES = 2; };

/* The geometry of one kernel variant (WK: warps sharing a row tile's keys, 0 = a runtime
 * value). SMALL (paged caches at D = 128 with 4 or 2 warps on the keys, <= 16 or 32 query rows):
 * the Q tile is 16 or 32 rows and a block keeps two stages (68 / 72 KB), so an SM holds three
 * blocks, 12 warps, instead of two (112 KB, 8 warps). The kernel is issue-bound (2 warps a
 * scheduler idle 66 % of cycles, Nsight Compute), and paged rows cost more instructions: with 4
 * warps on the keys paged decode went 0.88-0.91 -> 0.94-0.99 of contiguous; contiguous caches
 * lost 0-4 % (fewer stages in flight) and keep three stages. */
template <int DP, int WK, bool SMALL_ = false>
struct decode_geom {
    static constexpr bool SMALL = SMALL_ && DP == 128 && (WK == DEC_WARPS || WK == DEC_WARPS / 2);
    static constexpr int QROWS = SMALL ? 16 * (DEC_WARPS / WK) : DEC_ROWS;
    static constexpr int STAGES = SMALL ? 2 : decode_tile<DP>::STAGES;
};
template <int DP, int WK, bool SMALL = false>
__host__ __device__ constexpr int decode_smem_bytes() {
    return (decode_geom<DP, WK, SMALL>::QROWS + decode_geom<DP, WK, SMALL>::STAGES * 2 * DEC_BN) * DP * 2;
}
/* the end-of-block merge of the warps' states reuses the same memory */
template <int DP>
__host__ __device__ constexpr int decode_merge_bytes() {
    return (DEC_WARPS * 16 * DP + 2 * DEC_WARPS * 16) * 4;
}

/* Split-KV limits: at most DECODE_MAX_SPLITS splits, and by default at least
 * MIN_SPLIT_BLOCKS key blocks (256 keys) of capacity per split, so a split's pipeline fill and
 * its partial state (Lq x G rows x Dv fp32 written and read back) stay small next to its keys. */
constexpr int DECODE_MAX_SPLITS = 128;
constexpr int HEURISTIC_MAX_SPLITS = 64;
constexpr int MIN_SPLIT_BLOCKS = 4;
/* The combine kernel: one warp per query row. */
constexpr int COMBINE_WARPS = 4;
/* The append kernel: one block per (new key, KV head, batch entry). */
constexpr int APPEND_THREADS = 128;
/* Keys of one sequence: 32-bit key indices with room for one stage past the end. */
constexpr int64_t DECODE_MAX_KEYS = ((int64_t)1 << 31) - 65536;

struct decode_plan {
    int splits;      /* blocks along the key axis (1: the decode kernel writes out / lse) */
    int row_tiles;   /* blocks along the query rows of one KV head: ceil(Lq * G / DEC_ROWS) */
    int row_groups;  /* warps along the rows (1, 2 or 4); DEC_WARPS / row_groups share a stage's keys */
    float *ws_o;     /* splits > 1: fp32 [splits][B * Lq * Hq][Dv], each row normalized */
    float *ws_lse;   /* splits > 1: fp32 [splits][B * Lq * Hq], base-2 LSE (-inf: no key) */
};

/* ---- the sequence of batch entry b, clamped to the tensors ---- */

/* Keys already in the cache: cache_seqlens[b] clamped to [0, cap - Lnew] (host: Lnew <= cap);
 * without cache_seqlens (dense calls) cap - Lnew. */
__device__ __forceinline__ int seq_start(const cuda_kvcache &f, int b) {
    if (!f.cache_seqlens) return f.cap - f.Lnew; /* a dense call (MLA): every sequence full */
    const int64_t s = f.cache_seqlens[(int64_t)b * f.seqlens_s];
    const int64_t room = (int64_t)f.cap - f.Lnew;
    return (int)(s < 0 ? 0 : s > room ? room : s);
}

/* Contiguous caches: the cache row of batch entry b, clamped to [0, num_rows). */
__device__ __forceinline__ int64_t cache_row(const cuda_kvcache &f, int b) {
    if (!f.cache_batch_idx || f.block_table) return b;
    const int64_t r = f.cache_batch_idx[(int64_t)b * f.batch_idx_s];
    return r < 0 ? 0 : r >= f.num_rows ? f.num_rows - 1 : r;
}

/* Element offsets (head 0, column 0) of logical key t (0 <= t < cap) of batch entry b in the K
 * and V caches. Paged: page block_table[b][t / page_size] (t < cap <= max_pages * page_size keeps
 * the table index in range; the page id is clamped). */
struct key_loc { int64_t k, v; };
__device__ __forceinline__ key_loc key_at(const cuda_kvcache &f, int b, int64_t row, int t) {
    int64_t pos = t;
    if (f.block_table) {
        int off;
        const int p = page_split(t, f.page_size, &off);
        pos = off;
        const int64_t id = f.block_table[(int64_t)b * f.bt_sb + (int64_t)p * f.bt_sp];
        row = id < 0 ? 0 : id >= f.num_rows ? f.num_rows - 1 : id;
    }
    key_loc at;
    at.k = row * f.kc_sb + pos * f.kc_st;
    at.v = row * f.vc_sb + pos * f.vc_st;
    return at;
}

/* ---- rotary embedding (SPEC section 6; the CPU's cpu_rotary): pair j of the first 2 * rot_half
 * elements is (2j, 2j + 1) interleaved (GPT-J) or (j, j + rot_half) (GPT-NeoX); with c, s the
 * tables at (pos, j): x1' = x1 c - x2 s, x2' = x1 s + x2 c ---- */

__device__ __forceinline__ float to_f32(uint16_t bits, enum cflash_dtype dt) {
    return dt == CFLASH_DTYPE_BF16 ? __bfloat162float(__ushort_as_bfloat16(bits)) : __half2float(__ushort_as_half(bits));
}
__device__ __forceinline__ uint16_t from_f32(float x, enum cflash_dtype dt) {
    return dt == CFLASH_DTYPE_BF16 ? __bfloat16_as_ushort(__float2bfloat16_rn(x)) : __half_as_ushort(__float2half_rn(x));
}
__device__ __forceinline__ float rot_table(const cuda_kvcache &f, const void *table, int64_t pos, int j) {
    const int64_t off = pos * f.rot_s0 + (int64_t)j * f.rot_s1;
    if (f.rot_dtype == CFLASH_DTYPE_F32) return ((const float *)table)[off];
    return to_f32(((const uint16_t *)table)[off], f.rot_dtype);
}
/* the other element of d's pair (d < 2 * rot_half) */
__device__ __forceinline__ int rot_partner(const cuda_kvcache &f, int d) {
    return f.rot_interleaved ? d ^ 1 : d < f.rot_half ? d + f.rot_half : d - f.rot_half;
}
/* element d (value x) rotated to position pos, its partner's value y; pos clamped to the table */
__device__ __forceinline__ float rotate(const cuda_kvcache &f, float x, float y, int d, int64_t pos) {
    pos = pos < 0 ? 0 : pos >= f.rot_rows ? f.rot_rows - 1 : pos;
    const bool first = f.rot_interleaved ? (d & 1) == 0 : d < f.rot_half;
    const int j = f.rot_interleaved ? d >> 1 : (first ? d : d - f.rot_half);
    const float c = rot_table(f, f.rot_cos, pos, j), s = rot_table(f, f.rot_sin, pos, j);
    return first ? x * c - y * s : y * s + x * c;
}

/* ---- append: k_new / v_new rows to positions cache_seqlens[b] + t (2-byte elements) ---- */

__global__ void __launch_bounds__(APPEND_THREADS)
kv_append_kernel(const cuda_kvcache f) {
    const int t = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const key_loc at = key_at(f, b, cache_row(f, b), seq_start(f, b) + t);
    const uint16_t *kn = (const uint16_t *)f.k_new + (int64_t)b * f.kn_sb + (int64_t)t * f.kn_st + (int64_t)h * f.kn_sh;
    uint16_t *kc = (uint16_t *)f.k_cache + at.k + (int64_t)h * f.kc_sh;
    if (f.rot_cos) { /* rotated to its position in fp32, stored in the cache's dtype (as the CPU does) */
        const int64_t pos = seq_start(f, b) + t;
        for (int d = threadIdx.x; d < f.D; d += APPEND_THREADS) {
            if (d >= 2 * f.rot_half) { kc[d] = kn[d]; continue; }
            const int partner = rot_partner(f, d);
            const float x = to_f32(kn[d], f.dtype), y = to_f32(kn[partner], f.dtype);
            kc[d] = from_f32(rotate(f, x, y, d, pos), f.dtype);
        }
    } else {
        for (int d = threadIdx.x; d < f.D; d += APPEND_THREADS) kc[d] = kn[d];
    }
    if (f.append_v) {
        const uint16_t *vn = (const uint16_t *)f.v_new + (int64_t)b * f.vn_sb + (int64_t)t * f.vn_st + (int64_t)h * f.vn_sh;
        uint16_t *vc = (uint16_t *)f.v_cache + at.v + (int64_t)h * f.vc_sh;
        for (int d = threadIdx.x; d < f.Dv; d += APPEND_THREADS) vc[d] = vn[d];
    }
}

/* ---- rotary q for the prefill kernel (Lq > CUDA_DECODE_MAX_LQ): q rotated into a contiguous
 * [B, Lq, Hq, D] buffer (the decode kernels rotate their Q tile in shared memory instead), at
 * position seq_start + i (rot_q_per_row) or seq_start, in fp32, stored in the input type ---- */
__global__ void __launch_bounds__(APPEND_THREADS)
rotary_q_kernel(const cuda_kvcache f, uint16_t *qr) {
    const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const uint16_t *src = (const uint16_t *)f.q + (int64_t)b * f.q_sb + (int64_t)i * f.q_st + (int64_t)h * f.q_sh;
    uint16_t *dst = qr + (((int64_t)b * f.Lq + i) * f.Hq + h) * f.D;
    const int64_t pos = seq_start(f, b) + (f.rot_q_per_row ? i : 0);
    for (int d = threadIdx.x; d < f.D; d += APPEND_THREADS) {
        if (d >= 2 * f.rot_half) { dst[d] = src[d]; continue; }
        const float x = to_f32(src[d], f.dtype), y = to_f32(src[rot_partner(f, d)], f.dtype);
        dst[d] = from_f32(rotate(f, x, y, d, pos), f.dtype);
    }
}

/* ---- what the decode and MLA kernels share ---- */

/* a row's value across the 4 lanes of an mma quad (the lanes holding one accumulator row) */
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

/* The keys one block attends: rows r0 .. r0 + rows - 1 (packed position-major: query position
 * i = row / G) of batch entry b, key split `split` of `splits`, in key blocks of BN keys. Visible
 * keys of position i: [lo_of(i), hi_of(i)] around the diagonal c = i + off (64-bit: the window
 * sides are clamped to Lq + Lk, beyond which they cut nothing). */
struct block_keys {
    int lk;                    /* keys of the sequence, appended ones included */
    int64_t off, left, right;
    int nb_lo, nb_hi;          /* this block's key blocks, cut to its rows' keys */
    int full_lo, full_hi;      /* a key block inside [full_lo, full_hi] is seen whole by every row */
    __device__ __forceinline__ int lo_of(int i) const {
        const int64_t lo = left >= 0 ? i + off - left : 0;
        return (int)(lo < 0 ? 0 : lo > lk ? lk : lo);
    }
    __device__ __forceinline__ int hi_of(int i) const {
        const int64_t hi = right >= 0 ? i + off + right : (int64_t)lk - 1;
        return (int)(hi > lk - 1 ? lk - 1 : hi < -1 ? -1 : hi);
    }
};
template <int BN>
__device__ __forceinline__ block_keys block_keys_of(const cuda_kvcache &f, int b, int r0, int rows, int G,
                                                    int split, int splits) {
    block_keys k;
    k.lk = seq_start(f, b) + f.Lnew;
    const int lq = f.Lq;
    k.off = f.r.top_left ? 0 : (int64_t)k.lk - lq;
    const int64_t span = (int64_t)lq + k.lk;
    k.right = f.r.causal ? 0 : (f.r.window_right > span ? span : f.r.window_right);
    k.left = f.r.window_left > span ? span : f.r.window_left;
    const int i_first = r0 / G, i_last = (r0 + rows - 1) / G;
    /* whole blocks: the splits never cut a stage */
    const int nblk = (k.lk + BN - 1) / BN;
    const int per = max((nblk + splits - 1) / splits, 1);
    const int klo = k.lo_of(i_first), khi = k.hi_of(i_last);
    k.nb_lo = max(split * per, klo / BN);
    k.nb_hi = khi < 0 ? -1 : min(min(split * per + per, nblk) - 1, khi / BN);
    k.full_lo = k.lo_of(i_last);
    k.full_hi = k.hi_of(i_first);
    return k;
}

/* The rules of one packed row rg (padding rows past the last take the last position's rules and
 * are never stored): visible keys, ALiBi diagonal (always bottom-right) and base-2 slope. */
struct row_rule {
    int lo, hi;
    int64_t diag;
    float slope2;
    int i, h;             /* query position and head (mask / bias reads) */
};
__device__ __forceinline__ row_rule row_rule_of(const cuda_kvcache &f, const block_keys &k, int b, int kvh, int G, int rg) {
    const int i = min(rg / G, f.Lq - 1), h = kvh * G + rg % G;
    row_rule r;
    r.lo = k.lo_of(i);
    r.hi = k.hi_of(i);
    r.diag = (int64_t)i + k.lk - f.Lq;
    r.slope2 = f.r.alibi ? f.r.alibi[(int64_t)b * f.r.alibi_sb + (int64_t)h * f.r.alibi_sh] * LOG2E_F : 0.0f;
    r.i = i;
    r.h = h;
    return r;
}

/* element `off` of a bias source as fp32 */
/* the origin of row (b, i, h) in a mask / bias source (DENSE layout, element offsets) */
__device__ __forceinline__ int64_t src_row(const cuda_scoresrc &src, int b, int i, int h) {
    return (int64_t)b * src.sb + (int64_t)(h / (src.hdiv > 0 ? src.hdiv : 1)) * src.sh + (int64_t)i * src.sq;
}
__device__ __forceinline__ float bias_at(const cuda_scoresrc &src, int64_t off) {
    if (src.dtype == CFLASH_DTYPE_F32) return ((const float *)src.data)[off];
    const uint16_t bits = ((const uint16_t *)src.data)[off];
    return src.dtype == CFLASH_DTYPE_BF16 ? __bfloat162float(__ushort_as_bfloat16(bits)) : __half2float(__ushort_as_half(bits));
}

/* The scale in base 2, and where it is applied: with softcap or ALiBi (`mods`) or a scale <= 0
 * the scores are scaled before the softmax; otherwise inside exp2 (`sc`, one FFMA a score). */
struct score_scale {
    float scale2, sc, softcap2, cap_in;
    bool mods;
};
__device__ __forceinline__ score_scale score_scale_of(const cuda_kvcache &f) {
    score_scale k;
    k.scale2 = f.r.scale * LOG2E_F;
    k.mods = f.r.softcap > 0.0f || f.r.alibi || f.bias.data; /* a bias is added to scaled scores */
    k.sc = k.mods || k.scale2 <= 0.0f ? 1.0f : k.scale2;
    k.softcap2 = f.r.softcap * LOG2E_F;
    k.cap_in = f.r.softcap > 0.0f ? f.r.scale / f.r.softcap : 0.0f;
    return k;
}

/* The score rules in base 2 on one warp's accumulator tile s[NT][4] (its first `nts` n tiles):
 * s[nt][e] is row (lane / 4 + 8 (e / 2)) with rules rr[e / 2], key c0 + nt * 8 + 2 (lane % 4) + (e & 1).
 * Each rule is its own block-uniform loop (as fwd_mma.cu); `whole`: every row sees every key. */
template <int NT>
__device__ __forceinline__ void score_rules(float (&s)[NT][4], int nts, const cuda_kvcache &f, const score_scale &k,
                                            const row_rule rr[2], int b, int c0, bool whole, int lane) {
    if (k.mods) {
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            if (nt >= nts) break;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float x = s[nt][e];
                x = f.r.softcap > 0.0f ? k.softcap2 * tanhf(x * k.cap_in) : x * k.scale2;
                if (f.r.alibi) {
                    const int j = c0 + nt * 8 + 2 * (lane % 4) + (e & 1);
                    x -= rr[e / 2].slope2 * fabsf((float)(j - rr[e / 2].diag));
                }
                s[nt][e] = x;
            }
        }
    } else if (k.scale2 <= 0.0f) { /* a negative scale turns maxima into minima: scale first */
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[nt][e] *= k.scale2;
    }
    if (f.mask.data || f.bias.data) { /* SPEC section 5, after the scale, softcap and ALiBi */
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            if (nt >= nts) break;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int j = c0 + nt * 8 + 2 * (lane % 4) + (e & 1);
                const row_rule &r = rr[e / 2];
                float x = s[nt][e];
                if (f.bias.data) { /* the index clamped: keys past the source are dropped */
                    const int64_t jc = j < f.bias_keys ? j : f.bias_keys - 1;
                    const float v = bias_at(f.bias, src_row(f.bias, b, r.i, r.h) + jc * f.bias.sk);
                    x = j < f.bias_keys ? x + LOG2E_F * v : -INFINITY;
                }
                if (f.mask.data) {
                    const int64_t jc = j < f.mask_keys ? j : f.mask_keys - 1;
                    const uint8_t v = ((const uint8_t *)f.mask.data)[src_row(f.mask, b, r.i, r.h) + jc * f.mask.sk];
                    if (j >= f.mask_keys || v == 0) x = -INFINITY;
                }
                s[nt][e] = x;
            }
        }
    }
    if (!whole) {
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int j = c0 + nt * 8 + 2 * (lane % 4) + (e & 1);
                if (j < rr[e / 2].lo || j > rr[e / 2].hi) s[nt][e] = -INFINITY;
            }
    }
}

/* The block's query rows gathered from their (position, head) into the swizzled tile sQ
 * [ROWS][DP]: zeros past the last row and past D; then, with rotary, each pair rotated in place
 * (the copies are waited for here; no other commit group is in flight yet). */
template <typename T, int DP, int ROWS, int THREADS>
__device__ __forceinline__ void load_q(T *sQ, const cuda_kvcache &f, int b, int kvh, int G, int r0, int rows) {
    constexpr int CH = DP / 8;
    const int dq = f.D / 8;
    for (int idx = threadIdx.x; idx < ROWS * CH; idx += THREADS) {
        const int r = idx / CH, c = idx % CH, rg = r0 + r;
        const bool pred = r < rows && c < dq;
        const T *src = pred ? (const T *)f.q + (int64_t)b * f.q_sb + (int64_t)(rg / G) * f.q_st +
                                  (int64_t)(kvh * G + rg % G) * f.q_sh + c * 8
                            : (const T *)f.q;
        cp_async16(sQ + swz<DP>(r, c), src, pred);
    }
    if (!f.rot_cos) return; /* the copies join the first stage's commit group */
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    const int seq0 = seq_start(f, b);
    uint16_t *q16 = (uint16_t *)sQ;
    for (int idx = threadIdx.x; idx < rows * f.rot_half; idx += THREADS) {
        const int r = idx / f.rot_half, j = idx % f.rot_half;
        const int64_t pos = seq0 + (f.rot_q_per_row ? (r0 + r) / G : 0);
        const int d1 = f.rot_interleaved ? 2 * j : j, d2 = f.rot_interleaved ? 2 * j + 1 : j + f.rot_half;
        uint16_t *p1 = q16 + swz<DP>(r, d1 >> 3) + (d1 & 7), *p2 = q16 + swz<DP>(r, d2 >> 3) + (d2 & 7);
        const float x1 = to_f32(*p1, f.dtype), x2 = to_f32(*p2, f.dtype);
        *p1 = from_f32(rotate(f, x1, x2, d1, pos), f.dtype);
        *p2 = from_f32(rotate(f, x2, x1, d2, pos), f.dtype);
    }
    __syncthreads();
}

/* One finished pair of output columns (col, col + 1) of query row (i, h), o0 / o1 unnormalized
 * against the row's base-2 maximum M with sum L: out and lse (one split; the sink joins the
 * denominator here), or this split's partial state (normalized O, base-2 LSE) for the combine. */
template <typename T>
__device__ __forceinline__ void store_row_pair(const cuda_kvcache &f, const decode_plan &pl, int split, int b, int i,
                                               int h, int col, float o0, float o1, float M, float L) {
    if (pl.splits == 1) {
        float mrow = M, factor = 1.0f, sum = L;
        if (f.r.sinks) {
            const float z2 = f.r.sinks[(int64_t)h * f.r.sinks_sh] * LOG2E_F;
            const float mm = fmaxf(mrow, z2);
            factor = mm == -INFINITY ? 0.0f : exp2f(mrow - mm);
            sum = sum * factor + (z2 == -INFINITY ? 0.0f : exp2f(z2 - mm));
            mrow = mm;
        }
        const float inv = sum > 0.0f ? factor / sum : 0.0f;
        store_pair<T>((char *)f.out + ((int64_t)b * f.o_sb + (int64_t)i * f.o_st + (int64_t)h * f.o_sh) *
                                          (f.out_dtype == CFLASH_DTYPE_F32 ? 4 : 2),
                      f.out_dtype, col, o0 * inv, o1 * inv);
        if (f.lse && col == 0)
            f.lse[(int64_t)b * f.lse_sb + (int64_t)h * f.lse_sh + (int64_t)i * f.lse_st] =
                sum > 0.0f ? mrow * LN2_F + logf(sum) : -INFINITY;
    } else {
        const int64_t nrows_all = (int64_t)f.B * f.Lq * f.Hq;
        const int64_t n = ((int64_t)b * f.Lq + i) * f.Hq + h, at = (int64_t)split * nrows_all + n;
        const float inv = L > 0.0f ? 1.0f / L : 0.0f;
        *(float2 *)(pl.ws_o + at * f.Dv + col) = make_float2(o0 * inv, o1 * inv);
        if (col == 0) pl.ws_lse[at] = L > 0.0f ? M + log2f(L) : -INFINITY;
    }
}

/* ---- the decode kernel ----
 * grid (splits, Hk * row_tiles, B). Rows of a block: r = 0 .. rows - 1 stand for the packed
 * query row r0 + r = i * G + g (query position i, head kvh * G + g), position-major. */
template <typename T, int DP, int FIXED_WK, bool SMALL = false>
__global__ void __launch_bounds__(DEC_THREADS)
decode_kernel(const cuda_kvcache f, const decode_plan pl) {
    constexpr int STAGES = decode_geom<DP, FIXED_WK, SMALL>::STAGES, QROWS = decode_geom<DP, FIXED_WK, SMALL>::QROWS;
    constexpr int CH = DP / 8, DT = DP / 8, NT = DEC_BN / 8;
    constexpr int STAGE_ELEMS = 2 * DEC_BN * DP; /* K tile, then V tile */
    static_assert(DEC_THREADS % CH == 0, "each thread copies one fixed chunk column");
    static_assert(decode_merge_bytes<DP>() <= decode_smem_bytes<DP, FIXED_WK, SMALL>(), "the merge reuses the tiles");
    extern __shared__ __align__(128) unsigned char smem_raw[];
    T *sQ = (T *)smem_raw, *sKV = sQ + QROWS * DP;

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int split = blockIdx.x, tile = blockIdx.y % pl.row_tiles, kvh = blockIdx.y / pl.row_tiles;
    const int b = blockIdx.z;
    const int G = f.Hq / f.Hk, lq = f.Lq, r0 = tile * DEC_ROWS;
    const int rows = min(lq * G - r0, DEC_ROWS);
    /* WK, the warps sharing one row tile's keys (DEC_WARPS / pl.row_groups), is a template
     * argument where Lq x G <= 32 rows (FIXED_WK 4 or 2): the compiler then drops the key loops'
     * unused trips and their tests. The kernel is issue-bound (two warps per scheduler); with WK
     * a runtime value, decode of 268 MB ran at 2.40 TB/s, with it a constant at 2.54 (paged 0.81
     * -> 0.88 of contiguous). One warp per row tile (FIXED_WK 0) keeps the runtime value: as a
     * constant it spilled 108 bytes at D = 256. */
    const int WK = FIXED_WK ? FIXED_WK : DEC_WARPS / pl.row_groups;
    const int wr = warp / WK, wk = warp % WK;   /* this warp: rows 16 wr .., keys kbase .. */
    const int nkw = DEC_BN / WK, kbase = wk * nkw;

    const block_keys bk = block_keys_of<DEC_BN>(f, b, r0, rows, G, split, pl.splits);
    const int lk = bk.lk, nb_lo = bk.nb_lo, nb_hi = bk.nb_hi;
    const int64_t crow = cache_row(f, b);
    /* this thread's two rows (lane / 4 and lane / 4 + 8 of its warp's tile) */
    row_rule rr[2];
#pragma unroll
    for (int hr = 0; hr < 2; hr++) rr[hr] = row_rule_of(f, bk, b, kvh, G, r0 + wr * 16 + lane / 4 + 8 * hr);
    const score_scale sk = score_scale_of(f);
    const float sc = sk.sc;
    const int dq = f.D / 8, dv = f.Dv / 8;

    float o[DT][4];
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int dt = 0; dt < DT; dt++) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;

    load_q<T, DP, QROWS, DEC_THREADS>(sQ, f, b, kvh, G, r0, rows); /* rows <= QROWS (launch_decode) */

    /* one stage: keys [nb * DEC_BN, + DEC_BN) of K and V into slot `slot`; keys past lk and chunks
     * past D / Dv are zero-filled. Each thread copies chunk column c of every (DEC_THREADS / CH)-th
     * row, so the row's address (a block-table read when paged) is computed once for K and V. */
    const T *kc = (const T *)f.k_cache + (int64_t)kvh * f.kc_sh;
    const T *vc = (const T *)f.v_cache + (int64_t)kvh * f.vc_sh;
    /* A constant trip count: the loops unroll. Paged caches: the block-table entries of a stage
     * are read one stage before its copies are issued (into `pages`), so the copies never wait
     * on a table read; issued together with the copies they stalled every warp for an L2 round
     * trip per stage (paged decode ran at ~0.72x contiguous even with 256-key pages). */
    constexpr int RSTEP = DEC_THREADS / CH, ROWS_PER_THREAD = DEC_BN / RSTEP;
    static_assert(DEC_THREADS % CH == 0 && DEC_BN % RSTEP == 0, "stage and block do not divide");
    const int c = threadIdx.x % CH;
    /* Each row's offset in its page comes with its page id (the division is done once, here);
     * at D = 256 (16 rows a thread) the registers are not there, and the offset is recomputed. */
    constexpr bool KEEP_OFFS = ROWS_PER_THREAD <= 8;
    int32_t pages[ROWS_PER_THREAD], offs[KEEP_OFFS ? ROWS_PER_THREAD : 1];
    auto read_pages = [&](int nb) {
#pragma unroll
        for (int i = 0; i < ROWS_PER_THREAD; i++) {
            const int t = nb * DEC_BN + threadIdx.x / CH + i * RSTEP;
            int off = 0;
            const int p = f.block_table ? page_split(t, f.page_size, &off) : 0;
            pages[i] = f.block_table && t < lk && nb <= nb_hi ? f.block_table[(int64_t)b * f.bt_sb + (int64_t)p * f.bt_sp] : 0;
            if constexpr (KEEP_OFFS) offs[i] = off;
        }
    };
    /* Contiguous caches: this thread's first row of stage 0 and fixed steps (a row's address is
     * one 64-bit add; computed per row from its index, the address math was about a third of
     * the kernel's instructions, and the kernel is issue-bound at two warps per scheduler).
     * Not at D = 256: 16 rows a thread, and the registers are not there (24 bytes of spills). */
    const bool kchunk = c < dq, vchunk = c < dv;
    const int64_t kstep = (int64_t)RSTEP * f.kc_st, vstep = (int64_t)RSTEP * f.vc_st;
    const T *kthr = kc + crow * f.kc_sb + (int64_t)(threadIdx.x / CH) * f.kc_st + (kchunk ? c * 8 : 0);
    const T *vthr = vc + crow * f.vc_sb + (int64_t)(threadIdx.x / CH) * f.vc_st + (vchunk ? c * 8 : 0);
    /* Paged caches: a row's page (read a stage ahead; clamped to the pool: bad metadata makes
     * no stray access) and offset in it. Where the strides fit in 32 bits (every pool in use:
     * a page stride is page_size x Hk x D elements), the offsets are 32 x 32 -> 64-bit
     * multiply-adds (S = int32_t) instead of 64-bit products, four to a row. */
    const int32_t last_page = (int32_t)(f.num_rows - 1 > INT32_MAX ? INT32_MAX : f.num_rows - 1);
    const bool narrow = f.kc_sb >= 0 && f.kc_sb <= INT32_MAX && f.kc_st >= 0 && f.kc_st <= INT32_MAX &&
                        f.vc_sb >= 0 && f.vc_sb <= INT32_MAX && f.vc_st >= 0 && f.vc_st <= INT32_MAX;
    auto paged_rows = [&](T *sK, T *sV, int nb, auto stride_type) {
        using S = decltype(stride_type);
        const S ksb = (S)f.kc_sb, kst = (S)f.kc_st, vsb = (S)f.vc_sb, vst = (S)f.vc_st;
#pragma unroll
        for (int i = 0; i < ROWS_PER_THREAD; i++) {
            const int r = threadIdx.x / CH + i * RSTEP, t = nb * DEC_BN + r;
            const bool valid = t < lk;
            const int32_t id = pages[i] < 0 ? 0 : pages[i] > last_page ? last_page : pages[i];
            int pos;
            if constexpr (KEEP_OFFS) pos = offs[i];
            else (void)page_split(t, f.page_size, &pos);
            const int64_t ko = (int64_t)id * ksb + (int64_t)pos * kst, vo = (int64_t)id * vsb + (int64_t)pos * vst;
            cp_async16(sK + swz<DP>(r, c), valid && kchunk ? kc + ko + c * 8 : kc, valid && kchunk);
            if (!f.v_is_k) cp_async16(sV + swz<DP>(r, c), valid && vchunk ? vc + vo + c * 8 : vc, valid && vchunk);
        }
    };
    auto load_stage = [&](int nb, int slot) {
        T *sK = sKV + slot * STAGE_ELEMS, *sV = sK + DEC_BN * DP;
        if (DP <= 128 && !f.block_table) {
            const T *kp = kthr + (int64_t)nb * DEC_BN * f.kc_st, *vp = vthr + (int64_t)nb * DEC_BN * f.vc_st;
#pragma unroll
            for (int i = 0; i < ROWS_PER_THREAD; i++, kp += kstep, vp += vstep) {
                const int r = threadIdx.x / CH + i * RSTEP;
                const bool valid = nb * DEC_BN + r < lk;
                cp_async16(sK + swz<DP>(r, c), valid && kchunk ? kp : kc, valid && kchunk);
                if (!f.v_is_k) cp_async16(sV + swz<DP>(r, c), valid && vchunk ? vp : vc, valid && vchunk);
            }
            return;
        }
        if (f.block_table) {
            if (DP <= 128 && narrow) paged_rows(sK, sV, nb, int32_t()); /* D = 256: 4 bytes of spills */
            else paged_rows(sK, sV, nb, int64_t());
            return;
        }
#pragma unroll
        for (int i = 0; i < ROWS_PER_THREAD; i++) { /* contiguous, D = 256 */
            const int r = threadIdx.x / CH + i * RSTEP, t = nb * DEC_BN + r;
            const bool valid = t < lk;
            const int64_t ko = crow * f.kc_sb + (int64_t)t * f.kc_st, vo = crow * f.vc_sb + (int64_t)t * f.vc_st;
            cp_async16(sK + swz<DP>(r, c), valid && kchunk ? kc + ko + c * 8 : kc, valid && kchunk);
            if (!f.v_is_k) cp_async16(sV + swz<DP>(r, c), valid && vchunk ? vc + vo + c * 8 : vc, valid && vchunk);
        }
    };

    /* pipeline prologue: Q and the first STAGES - 1 stages, one commit group per stage (empty
     * groups too, so that "stage n is complete" is always "all but STAGES - 2 groups are") */
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        read_pages(nb_lo + s);
        if (nb_lo + s <= nb_hi) load_stage(nb_lo + s, s);
        cp_async_commit();
    }
    read_pages(nb_lo + STAGES - 1); /* the table entries of the first stage the loop issues */

    for (int nb = nb_lo; nb <= nb_hi; nb++) {
        const int it = nb - nb_lo, c0 = nb * DEC_BN;
        cp_async_wait<STAGES - 2>();
        __syncthreads(); /* stage nb landed (every thread's copies); every warp finished stage nb - 1 */
        if (nb + STAGES - 1 <= nb_hi) load_stage(nb + STAGES - 1, (it + STAGES - 1) % STAGES);
        cp_async_commit();
        read_pages(nb + STAGES); /* consumed one iteration from now */
        const T *sK = sKV + (it % STAGES) * STAGE_ELEMS;
        const T *sV = f.v_is_k ? sK : sK + DEC_BN * DP;

        /* S = Q K^T over this warp's nkw keys (2, 4 or 8 n tiles) */
        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int kc16 = 0; kc16 < DP / 16; kc16++) {
            if (kc16 * 2 >= dq) break;
            uint32_t a[4];
            ldmatrix_x4(a, sQ + swz<DP>(wr * 16 + lane % 16, kc16 * 2 + lane / 16));
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                if (np * 16 >= nkw) break;
                uint32_t bk[4];
                ldmatrix_x4(bk, sK + swz<DP>(kbase + np * 16 + (lane / 16) * 8 + lane % 8, kc16 * 2 + (lane / 8) % 2));
                mma_m16n8k16(s[2 * np], a, bk[0], bk[1], T());
                mma_m16n8k16(s[2 * np + 1], a, bk[2], bk[3], T());
            }
        }

        score_rules<NT>(s, nkw / 8, f, sk, rr, b, c0 + kbase, c0 >= bk.full_lo && c0 + DEC_BN - 1 <= bk.full_hi, lane);

        /* online softmax over this warp's keys (rows are shared by the 4 lanes of a quad) */
        float corr[2];
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            float mx = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
                if (nt * 8 < nkw) mx = fmaxf(mx, fmaxf(s[nt][2 * hr], s[nt][2 * hr + 1]));
            mx = quad_max(mx);
            const float mnew = fmaxf(m[hr], mx * sc);
            const float muse = mnew == -INFINITY ? 0.0f : mnew; /* no key yet: keep exp2 finite */
            corr[hr] = exp2f(m[hr] - muse);
            m[hr] = mnew;
            float sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                if (nt * 8 >= nkw) break;
                s[nt][2 * hr] = exp2f(fmaf(s[nt][2 * hr], sc, -muse));
                s[nt][2 * hr + 1] = exp2f(fmaf(s[nt][2 * hr + 1], sc, -muse));
                sum += s[nt][2 * hr] + s[nt][2 * hr + 1];
            }
            l[hr] = l[hr] * corr[hr] + sum;
        }
        /* O is rescaled only when a row maximum moved (a warp-uniform vote, as fwd_mma.cu) */
        if (__any_sync(0xffffffffu, corr[0] != 1.0f || corr[1] != 1.0f)) {
#pragma unroll
            for (int dt = 0; dt < DT; dt++) {
                o[dt][0] *= corr[0];
                o[dt][1] *= corr[0];
                o[dt][2] *= corr[1];
                o[dt][3] *= corr[1];
            }
        }

        /* O += P V: the S accumulators of n tiles 2kc and 2kc + 1 are the A fragment of keys
         * [16 kc, 16 kc + 16) of this warp */
#pragma unroll
        for (int kc = 0; kc < NT / 2; kc++) {
            if (kc * 16 >= nkw) break;
            uint32_t a[4];
            a[0] = pack2(s[2 * kc][0], s[2 * kc][1], T());
            a[1] = pack2(s[2 * kc][2], s[2 * kc][3], T());
            a[2] = pack2(s[2 * kc + 1][0], s[2 * kc + 1][1], T());
            a[3] = pack2(s[2 * kc + 1][2], s[2 * kc + 1][3], T());
            const int vrow = kbase + kc * 16 + ((lane / 8) % 2) * 8 + lane % 8;
#pragma unroll
            for (int dp = 0; dp < DP / 16; dp++) {
                if (dp * 2 >= dv) break;
                uint32_t bv[4];
                ldmatrix_x4_trans(bv, sV + swz<DP>(vrow, dp * 2 + lane / 16));
                mma_m16n8k16(o[2 * dp], a, bv[0], bv[1], T());
                mma_m16n8k16(o[2 * dp + 1], a, bv[2], bv[3], T());
            }
        }
    }

    /* merge the states of the warps that shared a row tile's keys, through shared memory:
     * sO [warp][16][DP] unnormalized fp32 O, sM / sL [warp][16] row maximum and sum (base 2) */
    cp_async_wait<0>();
    __syncthreads(); /* every warp is done with the tiles (and no copy is in flight): reuse them */
    float *sO = (float *)smem_raw, *sM = sO + DEC_WARPS * 16 * DP, *sL = sM + DEC_WARPS * 16;
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        const float sum = quad_sum(l[hr]);
        const int rr = warp * 16 + lane / 4 + 8 * hr;
        if (lane % 4 == 0) {
            sM[rr] = m[hr];
            sL[rr] = sum;
        }
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            const int col = dt * 8 + 2 * (lane % 4);
            if (col < f.Dv) *(float2 *)(sO + rr * DP + col) = make_float2(o[dt][2 * hr], o[dt][2 * hr + 1]);
        }
    }
    __syncthreads();

    /* one (row, column pair) per thread and step: the merged row, then out / lse (one split) or
     * this split's partial state (normalized O and base-2 LSE) for the combine kernel */
    const int pairs = f.Dv / 2;
    for (int idx = threadIdx.x; idx < rows * pairs; idx += DEC_THREADS) {
        const int r = idx / pairs, col = 2 * (idx % pairs);
        const int w0 = (r / 16) * WK, rr = r % 16;
        float M = -INFINITY;
        for (int w = 0; w < WK; w++) M = fmaxf(M, sM[(w0 + w) * 16 + rr]);
        float L = 0.0f, o0 = 0.0f, o1 = 0.0f;
        for (int w = 0; w < WK && M != -INFINITY; w++) {
            const float mw = sM[(w0 + w) * 16 + rr];
            if (mw == -INFINITY) continue; /* that warp saw no key of this row */
            const float e = exp2f(mw - M);
            const float2 ov = *(const float2 *)(sO + ((w0 + w) * 16 + rr) * DP + col);
            L += sL[(w0 + w) * 16 + rr] * e;
            o0 += ov.x * e;
            o1 += ov.y * e;
        }
        const int rg = r0 + r;
        store_row_pair<T>(f, pl, split, b, rg / G, kvh * G + rg % G, col, o0, o1, M, L);
    }
}

/* ---- the MLA kernel: D = 576, Dv = 512, V := K[..., :512] (DeepSeek's absorbed latent cache)
 * grid (splits, Hk * row_tiles, B) as the decode kernel, 64 packed rows a block (Lq x G: 16 to
 * 128 heads share the one latent head, so a block holds many rows). A 16-row warp cannot hold
 * 512 output columns (256 fp32 registers a thread), so the eight warps take two roles a stage:
 *   S = Q K^T: warp w computes rows 16 (w % 4) .. + 16 x keys 16 (w / 4) .. + 16 of the 32-key
 *     stage; the two warps of a row group exchange row maxima through shared memory, each
 *     keeps its own running sum over its keys, and P (rounded to T) goes to shared memory;
 *   O += P V: warp w owns output columns 64 w .. + 64 of all 64 rows (4 x 8 mma tiles, 128
 *     registers), rescaled by the row corrections the S warps left in shared memory.
 * V is read from the K tile (its first 512 columns): one copy of each key row per block.
 * Shared memory: Q 72 KB, STAGES x 36 KB of K, P 5 KB: 186 KB with 3 stages (H100), 150 KB
 * with 2 (A100's 164 KB). Rows from query positions past Lq and keys past lk are zero and never
 * stored; rules, sinks, splits, paging and rotary are the decode kernel's. */
constexpr int MLA_D = 576, MLA_DV = 512;
constexpr int MLA_ROWS = 64, MLA_BN = 32, MLA_WARPS = 8, MLA_THREADS = 32 * MLA_WARPS;
constexpr int MLA_PS = MLA_BN + 8; /* P row stride: 80 bytes, so ldmatrix's 8 rows hit 8 bank groups */
/* A split's partial state (64 rows x 512 fp32, written and read back: 256 KB) must stay small next
 * to its keys (1152 bytes each): at least 256 keys a split (first measured with the decode
 * kernel's 128: Hq 128, B 1, L 4096 ran at 76 GB/s with 32 splits) */
constexpr int MLA_MIN_SPLIT_BLOCKS = 256 / MLA_BN;

template <int STAGES>
__host__ __device__ constexpr int mla_smem_bytes() {
    return (MLA_ROWS + STAGES * MLA_BN) * MLA_D * 2 + MLA_ROWS * MLA_PS * 2 + 3 * MLA_ROWS * 4;
}

template <typename T, int STAGES>
__global__ void __launch_bounds__(MLA_THREADS, 1)
mla_kernel(const cuda_kvcache f, const decode_plan pl) {
    constexpr int STAGE = MLA_BN * MLA_D, KSTEPS = MLA_D / 16;
    static_assert(MLA_THREADS == 8 * MLA_BN && MLA_D % 64 == 0, "a stage row is 8 threads x 9 chunks");
    extern __shared__ __align__(128) unsigned char smem_raw[];
    T *sQ = (T *)smem_raw, *sK = sQ + MLA_ROWS * MLA_D, *sP = sK + STAGES * STAGE;
    float *sRed = (float *)(sP + MLA_ROWS * MLA_PS); /* [2][ROWS]: the two S warps' row maxima, then sums */
    float *sRow = sRed + 2 * MLA_ROWS;               /* [ROWS]: a stage's corrections, then the final maxima */

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int split = blockIdx.x, tile = blockIdx.y % pl.row_tiles, kvh = blockIdx.y / pl.row_tiles;
    const int b = blockIdx.z;
    const int G = f.Hq / f.Hk, r0 = tile * MLA_ROWS, rows = min(f.Lq * G - r0, MLA_ROWS);
    const int wr = warp % 4, wk = warp / 4; /* S role: rows 16 wr .., keys 16 wk .. of a stage */

    const block_keys bk = block_keys_of<MLA_BN>(f, b, r0, rows, G, split, pl.splits);
    const int64_t crow = cache_row(f, b);
    row_rule rr[2];
#pragma unroll
    for (int hr = 0; hr < 2; hr++) rr[hr] = row_rule_of(f, bk, b, kvh, G, r0 + wr * 16 + lane / 4 + 8 * hr);
    const score_scale sk = score_scale_of(f);

    float o[4][8][4]; /* O role: rows 16 mt + lane / 4 (+ 8), columns 64 warp + 8 nt + 2 (lane % 4) */
#pragma unroll
    for (int mt = 0; mt < 4; mt++)
#pragma unroll
        for (int nt = 0; nt < 8; nt++) o[mt][nt][0] = o[mt][nt][1] = o[mt][nt][2] = o[mt][nt][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}; /* S role: this warp's two rows */

    load_q<T, MLA_D, MLA_ROWS, MLA_THREADS>(sQ, f, b, kvh, G, r0, rows);

    /* a stage: 32 key rows, 8 threads a row (chunks lc, lc + 8, ...), so each thread computes one
     * row address a stage; paged: its block-table entry read one stage ahead (as the decode kernel) */
    const T *kc = (const T *)f.k_cache + (int64_t)kvh * f.kc_sh;
    const int lr = threadIdx.x / 8, lc = threadIdx.x % 8;
    int32_t page = 0;
    auto read_page = [&](int nb) {
        const int t = nb * MLA_BN + lr;
        int off;
        page = f.block_table && t < bk.lk && nb <= bk.nb_hi
                   ? f.block_table[(int64_t)b * f.bt_sb + (int64_t)page_split(t, f.page_size, &off) * f.bt_sp] : 0;
    };
    auto load_stage = [&](int nb, int slot) {
        T *dst = sK + slot * STAGE;
        const int t = nb * MLA_BN + lr;
        const bool valid = t < bk.lk;
        int64_t row = crow, pos = t;
        if (f.block_table) {
            row = page < 0 ? 0 : page >= f.num_rows ? f.num_rows - 1 : page;
            int off;
            (void)page_split(t, f.page_size, &off);
            pos = off;
        }
        const T *src = kc + row * f.kc_sb + pos * f.kc_st;
#pragma unroll
        for (int j = 0; j < MLA_D / 64; j++) {
            const int c = lc + 8 * j;
            cp_async16(dst + swz<MLA_D>(lr, c), valid ? src + c * 8 : kc, valid);
        }
    };

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        read_page(bk.nb_lo + s);
        if (bk.nb_lo + s <= bk.nb_hi) load_stage(bk.nb_lo + s, s);
        cp_async_commit();
    }
    read_page(bk.nb_lo + STAGES - 1);

    for (int nb = bk.nb_lo; nb <= bk.nb_hi; nb++) {
        const int it = nb - bk.nb_lo, c0 = nb * MLA_BN;
        cp_async_wait<STAGES - 2>();
        __syncthreads(); /* stage nb landed; every warp is done with stage nb - 1, its P and corrections */
        if (nb + STAGES - 1 <= bk.nb_hi) load_stage(nb + STAGES - 1, (it + STAGES - 1) % STAGES);
        cp_async_commit();
        read_page(nb + STAGES);
        const T *cur = sK + (it % STAGES) * STAGE;

        /* S role: 16 rows x 16 keys over all 576 columns */
        float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll 4
        for (int k16 = 0; k16 < KSTEPS; k16++) {
            uint32_t a[4], bq[4];
            ldmatrix_x4(a, sQ + swz<MLA_D>(wr * 16 + lane % 16, k16 * 2 + lane / 16));
            ldmatrix_x4(bq, cur + swz<MLA_D>(wk * 16 + (lane / 16) * 8 + lane % 8, k16 * 2 + (lane / 8) % 2));
            mma_m16n8k16(s[0], a, bq[0], bq[1], T());
            mma_m16n8k16(s[1], a, bq[2], bq[3], T());
        }
        score_rules<2>(s, 2, f, sk, rr, b, c0 + wk * 16, c0 >= bk.full_lo && c0 + MLA_BN - 1 <= bk.full_hi, lane);
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            float mx = fmaxf(fmaxf(s[0][2 * hr], s[0][2 * hr + 1]), fmaxf(s[1][2 * hr], s[1][2 * hr + 1]));
            mx = quad_max(mx);
            if (lane % 4 == 0) sRed[wk * MLA_ROWS + wr * 16 + lane / 4 + 8 * hr] = mx;
        }
        __syncthreads(); /* both halves' maxima */
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            const int row = wr * 16 + lane / 4 + 8 * hr;
            const float mx = fmaxf(sRed[row], sRed[MLA_ROWS + row]);
            const float mnew = fmaxf(m[hr], mx * sk.sc);
            const float muse = mnew == -INFINITY ? 0.0f : mnew; /* no key yet: keep exp2 finite */
            const float corr = exp2f(m[hr] - muse);
            m[hr] = mnew;
            float sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                s[nt][2 * hr] = exp2f(fmaf(s[nt][2 * hr], sk.sc, -muse));
                s[nt][2 * hr + 1] = exp2f(fmaf(s[nt][2 * hr + 1], sk.sc, -muse));
                sum += s[nt][2 * hr] + s[nt][2 * hr + 1];
                *(uint32_t *)(sP + row * MLA_PS + wk * 16 + nt * 8 + 2 * (lane % 4)) =
                    pack2(s[nt][2 * hr], s[nt][2 * hr + 1], T());
            }
            l[hr] = l[hr] * corr + sum;
            if (wk == 0 && lane % 4 == 0) sRow[row] = corr;
        }
        __syncthreads(); /* P and the corrections */

        /* O role: rescale, then O += P V over the stage's 32 keys */
        float cr[4][2];
        bool moved = false;
#pragma unroll
        for (int mt = 0; mt < 4; mt++)
#pragma unroll
            for (int hr = 0; hr < 2; hr++) {
                cr[mt][hr] = sRow[mt * 16 + lane / 4 + 8 * hr];
                moved |= cr[mt][hr] != 1.0f;
            }
        if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
            for (int mt = 0; mt < 4; mt++)
#pragma unroll
                for (int nt = 0; nt < 8; nt++) {
                    o[mt][nt][0] *= cr[mt][0];
                    o[mt][nt][1] *= cr[mt][0];
                    o[mt][nt][2] *= cr[mt][1];
                    o[mt][nt][3] *= cr[mt][1];
                }
        }
#pragma unroll
        for (int k16 = 0; k16 < MLA_BN / 16; k16++) {
            uint32_t bv[4][4];
#pragma unroll
            for (int np = 0; np < 4; np++)
                ldmatrix_x4_trans(bv[np], cur + swz<MLA_D>(k16 * 16 + ((lane / 8) % 2) * 8 + lane % 8,
                                                            warp * 8 + np * 2 + lane / 16));
#pragma unroll
            for (int mt = 0; mt < 4; mt++) {
                uint32_t a[4];
                ldmatrix_x4(a, sP + (mt * 16 + lane % 16) * MLA_PS + k16 * 16 + (lane / 16) * 8);
#pragma unroll
                for (int np = 0; np < 4; np++) {
                    mma_m16n8k16(o[mt][2 * np], a, bv[np][0], bv[np][1], T());
                    mma_m16n8k16(o[mt][2 * np + 1], a, bv[np][2], bv[np][3], T());
                }
            }
        }
    }

    /* each row's maximum and its two warps' sums, then every warp stores its columns */
    cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        const float sum = quad_sum(l[hr]);
        const int row = wr * 16 + lane / 4 + 8 * hr;
        if (lane % 4 == 0) {
            sRed[wk * MLA_ROWS + row] = sum;
            if (wk == 0) sRow[row] = m[hr];
        }
    }
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < 4; mt++)
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            const int row = mt * 16 + lane / 4 + 8 * hr;
            if (row >= rows) continue;
            const float M = sRow[row], L = sRed[row] + sRed[MLA_ROWS + row];
            const int rg = r0 + row;
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
                store_row_pair<T>(f, pl, split, b, rg / G, kvh * G + rg % G, warp * 64 + nt * 8 + 2 * (lane % 4),
                                  o[mt][nt][2 * hr], o[mt][nt][2 * hr + 1], M, L);
        }
}

/* ---- combine: the splits' partial states of one query row (SPEC.md section 7, n-way), plus
 * the sink; one warp per row n = (b * Lq + i) * Hq + h ---- */
template <typename T>
__global__ void __launch_bounds__(COMBINE_WARPS * 32)
decode_combine_kernel(const cuda_kvcache f, const decode_plan pl) {
    __shared__ float sW[COMBINE_WARPS][DECODE_MAX_SPLITS];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int64_t nrows_all = (int64_t)f.B * f.Lq * f.Hq;
    const int64_t n = (int64_t)blockIdx.x * COMBINE_WARPS + warp;
    if (n >= nrows_all) return; /* warp-uniform */
    const int h = (int)(n % f.Hq), i = (int)(n / f.Hq % f.Lq), b = (int)(n / ((int64_t)f.Hq * f.Lq));
    float M = -INFINITY;
    for (int s = lane; s < pl.splits; s += 32) M = fmaxf(M, pl.ws_lse[(int64_t)s * nrows_all + n]);
#pragma unroll
    for (int x = 16; x > 0; x /= 2) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, x));
    const float z2 = f.r.sinks ? f.r.sinks[(int64_t)h * f.r.sinks_sh] * LOG2E_F : -INFINITY;
    M = fmaxf(M, z2);
    float sum = 0.0f;
    for (int s = lane; s < pl.splits; s += 32) {
        const float ls = pl.ws_lse[(int64_t)s * nrows_all + n];
        const float w = ls == -INFINITY ? 0.0f : exp2f(ls - M); /* empty split: weight 0, O unread */
        sW[warp][s] = w;
        sum += w;
    }
#pragma unroll
    for (int x = 16; x > 0; x /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, x);
    if (z2 != -INFINITY) sum += exp2f(z2 - M);
    __syncwarp();
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    char *orow = (char *)f.out + ((int64_t)b * f.o_sb + (int64_t)i * f.o_st + (int64_t)h * f.o_sh) *
                                     (f.out_dtype == CFLASH_DTYPE_F32 ? 4 : 2);
    for (int col = 2 * lane; col < f.Dv; col += 64) {
        float a0 = 0.0f, a1 = 0.0f;
        for (int s = 0; s < pl.splits; s++) {
            const float w = sW[warp][s];
            if (w == 0.0f) continue;
            const float2 v = *(const float2 *)(pl.ws_o + ((int64_t)s * nrows_all + n) * f.Dv + col);
            a0 += w * v.x;
            a1 += w * v.y;
        }
        store_pair<T>(orow, f.out_dtype, col, a0 * inv, a1 * inv);
    }
    if (f.lse && lane == 0)
        f.lse[(int64_t)b * f.lse_sb + (int64_t)h * f.lse_sh + (int64_t)i * f.lse_st] =
            sum > 0.0f ? M * LN2_F + logf(sum) : -INFINITY;
}

/* The fraction of the last wave's slots a grid of `blocks` fills, averaged over its waves (1: whole waves) */
double wave_efficiency(int64_t blocks, int64_t slots) {
    const double waves = (double)blocks / (double)slots;
    return waves / ceil(waves);
}

/* Key splits (flash-decoding), FlashAttention-2's rule on this kernel's numbers: none when the
 * blocks of the call already fill 80% of the blocks the GPU holds at once (`slots`); else the
 * smallest split count whose wave efficiency (blocks * s / slots over its ceiling) is within 5%
 * of the best, at most HEURISTIC_MAX_SPLITS and at most one split per min_split_blocks key
 * blocks of capacity. Worked (H100, 132 SMs, D = 128: 2 blocks per SM, 264 slots):
 *   Hq:Hk 32:8, B = 1, L = 32k: 8 blocks; s = 32 gives 256 blocks, efficiency 0.97 (s = 33
 *     would fill 264 exactly; 0.97 is within 5%), 1024 keys per split;
 *   B = 8: 64 blocks, s = 4 (256 blocks, 0.97); B = 4, Hk = 8: 32 blocks, s = 8;
 *   B = 32, Hk = 8: 256 blocks >= 0.8 * 264: no split. */
int decode_num_splits(int64_t blocks, int64_t slots, int64_t cap_blocks, int min_split_blocks) {
    if (blocks <= 0 || slots <= 0 || blocks * 5 >= slots * 4) return 1;
    int64_t smax = cap_blocks / min_split_blocks;
    smax = smax < 1 ? 1 : smax > HEURISTIC_MAX_SPLITS ? HEURISTIC_MAX_SPLITS : smax;
    double eff[HEURISTIC_MAX_SPLITS + 1], best = 0.0;
    for (int s = 1; s <= smax; s++) {
        eff[s] = wave_efficiency(blocks * s, slots);
        best = eff[s] > best ? eff[s] : best;
    }
    for (int s = 1; s <= smax; s++)
        if (eff[s] >= 0.95 * best) return s;
    return 1;
}

/* CFLASH_DECODE_SPLITS=n forces n splits (1 .. DECODE_MAX_SPLITS); anything else: 0 (the rule). */
int decode_forced_splits() {
    const char *env = getenv("CFLASH_DECODE_SPLITS");
    if (!env || !*env) return 0;
    char *end;
    const long n = strtol(env, &end, 10);
    return *end == '\0' && n >= 1 && n <= DECODE_MAX_SPLITS ? (int)n : 0;
}

/* A failed runtime call also leaves its error as the thread's "last error": clear it, so that a
 * later launch check (cudaGetLastError) does not take it for its own. */
enum cflash_status device_error(const char *what, cudaError_t err) {
    (void)cudaGetLastError();
    return cflash_set_error(CFLASH_STATUS_DEVICE_ERROR, "q: CUDA %s failed: %s", what, cudaGetErrorString(err));
}

typedef void (*kv_kernel)(const cuda_kvcache, const decode_plan);

/* The blocks of `kernel` (`threads`, `bytes` of shared memory) the GPU holds at once: SMs times
 * blocks a SM (at least one a SM). Sets the kernel's shared-memory limit first, which the
 * occupancy query and the launch need. */
cudaError_t kernel_slots(kv_kernel kernel, int threads, int bytes, int64_t *slots) {
    int dev = 0, sms = 0, per_sm = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (err == cudaSuccess) err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, bytes);
    *slots = (int64_t)sms * (per_sm > 0 ? per_sm : 1);
    return err;
}

/* One attention call over a cache with `kernel` (`threads` a block, `bytes` of shared memory, `bn`
 * keys a stage, pl.row_tiles / row_groups set): the split count, the workspace, then the append,
 * the kernel and the combine on f->stream. `known_slots`: the kernel's kernel_slots when the
 * caller already asked (its shared-memory limit is then set), else 0. */
template <typename T>
enum cflash_status launch_kv(const cuda_kvcache *f, kv_kernel kernel, int threads, int bytes, int bn, int min_split_blocks,
                             decode_plan pl, int64_t known_slots = 0) {
    const cudaStream_t stream = (cudaStream_t)f->stream;
    pl.ws_o = pl.ws_lse = NULL;
    pl.splits = 1;

    /* everything that can fail before anything is written: attributes, occupancy, workspace */
    cudaError_t err = cudaSuccess;
    if (f->Lq > 0) {
        int64_t slots = known_slots;
        if (slots <= 0) err = kernel_slots(kernel, threads, bytes, &slots);
        if (err != cudaSuccess) return device_error("setup of the decode kernel", err);
        const int forced = decode_forced_splits();
        const int64_t blocks = (int64_t)f->B * f->Hk * pl.row_tiles;
        pl.splits = forced ? forced : decode_num_splits(blocks, slots, ((int64_t)f->cap + bn - 1) / bn, min_split_blocks);
        if (((int64_t)f->B * f->Lq * f->Hq + COMBINE_WARPS - 1) / COMBINE_WARPS > INT32_MAX)
            pl.splits = 1; /* the combine grid would not fit (only with a forced split count) */
        if (pl.splits > 1) {
            const int64_t nrows_all = (int64_t)f->B * f->Lq * f->Hq;
            const size_t ws = (size_t)pl.splits * (size_t)nrows_all * (size_t)(f->Dv + 1) * sizeof(float);
            void *p = NULL;
            err = cudaMallocAsync(&p, ws, stream);
            if (err == cudaErrorMemoryAllocation) {
                (void)cudaGetLastError();
                return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "q: cannot allocate the %zu-byte split-KV workspace", ws);
            }
            if (err != cudaSuccess) return device_error("workspace allocation (cudaMallocAsync)", err);
            pl.ws_o = (float *)p;
            pl.ws_lse = pl.ws_o + (size_t)pl.splits * (size_t)nrows_all * (size_t)f->Dv;
        }
    }

    (void)cudaGetLastError(); /* launch errors are read back below: start from none */
    if (f->Lnew > 0) {
        kv_append_kernel<<<dim3((unsigned)f->Lnew, (unsigned)f->Hk, (unsigned)f->B), APPEND_THREADS, 0, stream>>>(*f);
        err = cudaGetLastError();
    }
    if (err == cudaSuccess && f->Lq > 0) {
        const dim3 grid((unsigned)pl.splits, (unsigned)(f->Hk * pl.row_tiles), (unsigned)f->B);
        kernel<<<grid, threads, bytes, stream>>>(*f, pl);
        err = cudaGetLastError();
        if (err == cudaSuccess && pl.splits > 1) {
            const int64_t nrows_all = (int64_t)f->B * f->Lq * f->Hq;
            decode_combine_kernel<T><<<(unsigned)((nrows_all + COMBINE_WARPS - 1) / COMBINE_WARPS), COMBINE_WARPS * 32, 0, stream>>>(*f, pl);
            err = cudaGetLastError();
        }
    }
    if (pl.ws_o) {
        const cudaError_t e2 = cudaFreeAsync(pl.ws_o, stream);
        if (err == cudaSuccess) err = e2;
    }
    if (err != cudaSuccess) return device_error("launch of the decode kernels", err);
    return CFLASH_STATUS_OK;
}

template <typename T, int DP>
enum cflash_status launch_decode(const cuda_kvcache *f) {
    if (f->B <= 0 || (f->Lq <= 0 && f->Lnew <= 0)) return CFLASH_STATUS_OK;
    decode_plan pl;
    const int64_t R = (int64_t)f->Lq * (f->Hq / f->Hk);
    pl.row_tiles = (int)((R + DEC_ROWS - 1) / DEC_ROWS);
    const int64_t mtiles = ((R < DEC_ROWS ? R : DEC_ROWS) + 15) / 16;
    pl.row_groups = mtiles <= 1 ? 1 : mtiles <= 2 ? 2 : 4;
    if constexpr (DP == 128) {
        /* paged caches take the small geometry (three blocks a SM), unless the grid is too large
         * for key splits and fills the small geometry's waves worse: Hq:Hk 32:32, B = 16 is 512
         * blocks, 1.29 waves of 396 (2330 GB/s paged on an H100) but 1.94 of 264 (2870). */
        if (f->block_table && f->Lq > 0 && pl.row_groups <= 2) {
            const bool g1 = pl.row_groups == 1;
            const kv_kernel small = g1 ? decode_kernel<T, DP, DEC_WARPS, true> : decode_kernel<T, DP, DEC_WARPS / 2, true>;
            const kv_kernel big = g1 ? decode_kernel<T, DP, DEC_WARPS> : decode_kernel<T, DP, DEC_WARPS / 2>;
            const int small_bytes = g1 ? decode_smem_bytes<DP, DEC_WARPS, true>() : decode_smem_bytes<DP, DEC_WARPS / 2, true>();
            const int big_bytes = g1 ? decode_smem_bytes<DP, DEC_WARPS>() : decode_smem_bytes<DP, DEC_WARPS / 2>();
            const int64_t blocks = (int64_t)f->B * f->Hk * pl.row_tiles;
            int64_t slots_small = 0, slots_big = 0;
            cudaError_t err = kernel_slots(small, DEC_THREADS, small_bytes, &slots_small);
            if (err == cudaSuccess) err = kernel_slots(big, DEC_THREADS, big_bytes, &slots_big);
            if (err != cudaSuccess) return device_error("setup of the decode kernel", err);
            if (blocks * 5 < slots_small * 4 || decode_forced_splits() ||
                wave_efficiency(blocks, slots_small) >= wave_efficiency(blocks, slots_big))
                return launch_kv<T>(f, small, DEC_THREADS, small_bytes, DEC_BN, MIN_SPLIT_BLOCKS, pl, slots_small);
            return launch_kv<T>(f, big, DEC_THREADS, big_bytes, DEC_BN, MIN_SPLIT_BLOCKS, pl, slots_big);
        }
    }
    if (pl.row_groups == 1)
        return launch_kv<T>(f, decode_kernel<T, DP, DEC_WARPS>, DEC_THREADS, decode_smem_bytes<DP, DEC_WARPS>(), DEC_BN,
                            MIN_SPLIT_BLOCKS, pl);
    if (pl.row_groups == 2)
        return launch_kv<T>(f, decode_kernel<T, DP, DEC_WARPS / 2>, DEC_THREADS, decode_smem_bytes<DP, DEC_WARPS / 2>(),
                            DEC_BN, MIN_SPLIT_BLOCKS, pl);
    return launch_kv<T>(f, decode_kernel<T, DP, 0>, DEC_THREADS, decode_smem_bytes<DP, 0>(), DEC_BN, MIN_SPLIT_BLOCKS, pl);
}

/* MLA: three stages where the GPU gives a block 186 KB of shared memory (sm_90), else two */
template <typename T>
enum cflash_status launch_mla(const cuda_kvcache *f) {
    if (f->B <= 0 || (f->Lq <= 0 && f->Lnew <= 0)) return CFLASH_STATUS_OK;
    decode_plan pl;
    pl.row_tiles = (int)(((int64_t)f->Lq * (f->Hq / f->Hk) + MLA_ROWS - 1) / MLA_ROWS);
    pl.row_groups = 4;
    int dev = 0, optin = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (err != cudaSuccess) return device_error("setup of the MLA kernel", err);
    if (optin >= mla_smem_bytes<3>())
        return launch_kv<T>(f, mla_kernel<T, 3>, MLA_THREADS, mla_smem_bytes<3>(), MLA_BN, MLA_MIN_SPLIT_BLOCKS, pl);
    if (optin >= mla_smem_bytes<2>())
        return launch_kv<T>(f, mla_kernel<T, 2>, MLA_THREADS, mla_smem_bytes<2>(), MLA_BN, MLA_MIN_SPLIT_BLOCKS, pl);
    return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA MLA kernel needs %d bytes of shared memory per block; this GPU gives %d",
                            mla_smem_bytes<2>(), optin);
}

} /* namespace */

#if CFLASH_DECODE_PART != 0
#define CFLASH_DECODE_FN_(d) cuda_decode_launch_d##d
#define CFLASH_DECODE_FN(d) CFLASH_DECODE_FN_(d)
enum cflash_status CFLASH_DECODE_FN(CFLASH_DECODE_PART)(const struct cuda_kvcache *f) {
    return f->dtype == CFLASH_DTYPE_BF16 ? launch_decode<__nv_bfloat16, CFLASH_DECODE_PART>(f)
                                         : launch_decode<__half, CFLASH_DECODE_PART>(f);
}
#else
extern "C" enum cflash_status cuda_kvcache_select(const struct cuda_kvcache *f, enum cuda_fwd_config *config) {
    const struct cuda_rows rows[3] = {{f->q, f->q_sb, f->q_st, f->q_sh, "q"},
                                      {f->k_cache, f->kc_sb, f->kc_st, f->kc_sh, "k_cache"},
                                      {f->v_cache, f->vc_sb, f->vc_st, f->vc_sh, "v_cache"}};
    int dmax;
    enum cflash_status st = cuda_check_common(f->dtype, f->D, f->Dv, rows, f->out, f->out_dtype, f->o_sb,
                                              f->o_st, f->o_sh, &dmax);
    if (st) return st;
    if (f->B > 65535)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA backend takes at most 65535 sequences, got %d", (int)f->B);
    if (f->cap > DECODE_MAX_KEYS)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "k_cache: the CUDA decode kernels take caches of at most %lld keys per sequence, this one holds %lld", (long long)DECODE_MAX_KEYS, (long long)f->cap);
    const int64_t R = (int64_t)f->Lq * (f->Hq / f->Hk);
    if (dmax > 256) { /* the MLA shape (cuda_check_common lets no other past 256): every Lq, any cache */
        if (!f->v_is_k)
            return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "v_cache: the CUDA MLA kernel (D = %d, Dv = %d) reads V as the first %d columns of K: pass v_cache as a view of k_cache (k_cache[..., :%d]) or none", MLA_D, MLA_DV, MLA_DV, MLA_DV);
        if ((int64_t)f->Hk * ((R + MLA_ROWS - 1) / MLA_ROWS) > 65535)
            return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA MLA kernel takes at most 65535 KV heads x row tiles of %d query rows (Lq x Hq / Hk)", MLA_ROWS);
        *config = CUDA_FWD_MLA;
        return CFLASH_STATUS_OK;
    }
    /* Lq > CUDA_DECODE_MAX_LQ: the prefill kernel (its limits are cuda_fwd_select's: B, Hq <= 65535
     * checked here and by api.c, Lq and the capacity below 2^31 by construction) */
    if (f->Lq <= CUDA_DECODE_MAX_LQ && (int64_t)f->Hk * ((R + DEC_ROWS - 1) / DEC_ROWS) > 65535) {
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "k_cache: the CUDA decode kernel takes at most 65535 KV heads x row tiles of %d query rows, got %lld", DEC_ROWS, (long long)(f->Hk * ((R + DEC_ROWS - 1) / DEC_ROWS)));
    }
    *config = dmax <= 64 ? CUDA_FWD_D64 : dmax <= 128 ? CUDA_FWD_D128 : CUDA_FWD_D256;
    return CFLASH_STATUS_OK;
}

/* Lq > CUDA_DECODE_MAX_LQ: append, q rotated into a workspace (rotary), then the prefill kernel
 * over each sequence's cache row or pages */
static enum cflash_status launch_cache_prefill(const cuda_kvcache *f, enum cuda_fwd_config config) {
    const cudaStream_t stream = (cudaStream_t)f->stream;
    uint16_t *qr = NULL;
    if (f->rot_cos && f->Lq > 0) {
        const size_t bytes = (size_t)f->B * (size_t)f->Lq * (size_t)f->Hq * (size_t)f->D * 2;
        const cudaError_t err = cudaMallocAsync((void **)&qr, bytes, stream);
        if (err == cudaErrorMemoryAllocation) {
            (void)cudaGetLastError();
            return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "q: cannot allocate the %zu-byte rotated-q workspace", bytes);
        }
        if (err != cudaSuccess) return device_error("workspace allocation (cudaMallocAsync)", err);
    }
    (void)cudaGetLastError();
    cudaError_t err = cudaSuccess;
    if (f->Lnew > 0) {
        kv_append_kernel<<<dim3((unsigned)f->Lnew, (unsigned)f->Hk, (unsigned)f->B), APPEND_THREADS, 0, stream>>>(*f);
        err = cudaGetLastError();
    }
    if (err == cudaSuccess && qr) { /* after the append: both read seq_start, neither changes it */
        rotary_q_kernel<<<dim3((unsigned)f->Lq, (unsigned)f->Hq, (unsigned)f->B), APPEND_THREADS, 0, stream>>>(*f, qr);
        err = cudaGetLastError();
    }
    enum cflash_status st = CFLASH_STATUS_OK;
    if (err != cudaSuccess) {
        st = device_error("launch of the append / rotary kernels", err);
    } else {
        struct cuda_fwd g;
        memset(&g, 0, sizeof g);
        g.q = qr ? (const void *)qr : f->q; g.k = f->k_cache; g.v = f->v_cache; g.out = f->out; g.lse = f->lse;
        g.dtype = f->dtype; g.out_dtype = f->out_dtype;
        if (qr) { g.q_sh = f->D; g.q_st = (int64_t)f->Hq * f->D; g.q_sb = (int64_t)f->Lq * g.q_st; }
        else { g.q_sb = f->q_sb; g.q_st = f->q_st; g.q_sh = f->q_sh; }
        g.k_sb = f->kc_sb; g.k_st = f->kc_st; g.k_sh = f->kc_sh;
        g.v_sb = f->vc_sb; g.v_st = f->vc_st; g.v_sh = f->vc_sh;
        g.o_sb = f->o_sb; g.o_st = f->o_st; g.o_sh = f->o_sh;
        g.lse_sb = f->lse_sb; g.lse_sh = f->lse_sh; g.lse_st = f->lse_st;
        g.B = f->B; g.Hq = f->Hq; g.Hk = f->Hk; g.D = f->D; g.Dv = f->Dv;
        g.Lq = f->Lq; g.Lk = f->cap;
        g.r = f->r;
        g.seqlens_k = f->cache_seqlens; g.seqlens_k_s = f->seqlens_s; g.seqlens_add = f->Lnew;
        g.kv_batch_idx = f->cache_batch_idx; g.kv_batch_idx_s = f->batch_idx_s; g.kv_rows = f->num_rows;
        g.block_table = f->block_table; g.bt_sb = f->bt_sb; g.bt_sp = f->bt_sp; g.page_size = f->page_size;
        g.mask = f->mask; g.bias = f->bias;
        { /* the prefill kernel drops scores past its key hint: the sources' key extents */
            int64_t keys = f->cap;
            if (f->mask.data && f->mask_keys < keys) keys = f->mask_keys;
            if (f->bias.data && f->bias_keys < keys) keys = f->bias_keys;
            g.max_seqlen_k = keys;
        }
        g.device_id = f->device_id;
        g.stream = f->stream;
        st = cuda_fwd_launch(&g, config);
    }
    if (qr) { /* stream-ordered: freed after the prefill kernel has read it */
        const cudaError_t e2 = cudaFreeAsync(qr, stream);
        if (!st && e2 != cudaSuccess) st = device_error("workspace release (cudaFreeAsync)", e2);
    }
    return st;
}

extern "C" enum cflash_status cuda_kvcache_launch(const struct cuda_kvcache *f, enum cuda_fwd_config config) {
    const bool bf = f->dtype == CFLASH_DTYPE_BF16;
    if (f->B == 0) return CFLASH_STATUS_OK; /* nothing to do: the device is not touched */
    int prev;
    enum cflash_status st = cuda_device_enter("q", f->device_id, &prev);
    if (st) return st;
    if (config == CUDA_FWD_MLA) {
        st = bf ? launch_mla<__nv_bfloat16>(f) : launch_mla<__half>(f);
        cuda_device_leave(f->device_id, prev);
        return st;
    }
    if (f->Lq > CUDA_DECODE_MAX_LQ) {
        st = launch_cache_prefill(f, config);
        cuda_device_leave(f->device_id, prev);
        return st;
    }
    switch (config) {
    case CUDA_FWD_D64: st = cuda_decode_launch_d64(f); break;
    case CUDA_FWD_D128: st = cuda_decode_launch_d128(f); break;
    case CUDA_FWD_D256: st = cuda_decode_launch_d256(f); break;
    default: st = cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: no CUDA decode kernel for this head dim");
    }
    cuda_device_leave(f->device_id, prev);
    return st;
}
#endif
