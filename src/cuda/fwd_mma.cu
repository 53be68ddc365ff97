/*
 * fwd_mma.cu - the prefill kernel family on tensor cores, one kernel template with two engines:
 *   mma.sync m16n8k16 (sm_80 and later): FlashAttention-2's schedule. One thread block owns BM
 *     query rows of one (sequence, head); each warp owns 16 * MT of them. Per key block of BN
 *     keys: S = Q K^T (Q and K read from shared memory with ldmatrix), the score rules and the
 *     online softmax in registers, then O += P V with P reused from the S accumulators as A
 *     fragments and V read with ldmatrix.trans; cp.async copies overlap V's copy with Q K^T and
 *     the next K's copy with P V.
 *   wgmma (sm_90a, compute capability 9.0): two warpgroups of 64 rows, S and O as wgmma
 *     accumulators, P from registers, FlashAttention-3's intra-warpgroup pipelining (S_n and
 *     P_{n-1} V_{n-1} in flight together). Tiles in the tensor cores' 128-byte swizzle. Plain
 *     calls run it warp-specialized (WS): a producer warpgroup copies behind mbarriers and the
 *     two consumer warpgroups take turns at the tensor cores; masks, biases, plans and caches
 *     (GENERAL) run it in lockstep (all threads copy, one __syncthreads per key block).
 * Both walk the same visibility rules: one per dense / packed sequence, or a range plan's
 * slices (GENERAL kernels, with masks and biases). docs/kernels.md has the tables and reasons.
 *
 * What it is not: the decode kernel (decode.cu: one query row per sequence wastes 15 of 16 mma
 * rows), nor a TMA kernel (the producer issues cp.async; no tensor maps).
 *
 * Numerics: fp16/bf16 inputs, fp32 accumulation, softmax in base 2 (scores pre-multiplied by
 * scale * log2(e)); P is rounded to the input type before P V, as in FlashAttention.
 */
#include "cuda/cuda.h"
#include "cuda/ptx.cuh"
#include "cuda/wgmma.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <type_traits>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

extern "C" enum cflash_status cflash_set_error(enum cflash_status st, const char *fmt, ...);

/* Compiled in parts, so that a build compiles the kernels in parallel (as FlashAttention splits
 * its instantiations by head dim): fwd_d64.cu, fwd_d128.cu and fwd_d256.cu include this file
 * with CFLASH_FWD_PART set to their padded head dim and define cuda_fwd_launch_d<dim>; this file
 * itself (part 0) holds the host entry points. */
#ifndef CFLASH_FWD_PART
#define CFLASH_FWD_PART 0
#endif
enum cflash_status cuda_fwd_launch_d64(const struct cuda_fwd *f, bool wg);
enum cflash_status cuda_fwd_launch_d128(const struct cuda_fwd *f, bool wg);
enum cflash_status cuda_fwd_launch_d256(const struct cuda_fwd *f, bool wg);

#define LOG2E_F 1.4426950408889634f
/* Double-buffered ldmatrix fragments (load the next before this one's mmas); 0 turns it off
 * (an experiment switch: it costs registers, which the D = 128 tile has none of to spare). */
#ifndef CFLASH_FWD_PREFETCH
#define CFLASH_FWD_PREFETCH 1
#endif
#define LN2_F 0.6931471805599453f

/* the PTX wrappers (cp.async, ldmatrix, mma.sync, pack2, swz): cuda/ptx.cuh */

/* Where 16-byte chunk c of row r of a ROWS x DP tile lives. mma.sync kernel (WG false): rows
 * of DP elements, chunks XOR-swizzled by row (ptx.cuh). wgmma kernel (WG true): the tensor cores'
 * 128-byte swizzle, i.e. panels of 64 columns, each ROWS rows of 128 bytes with chunk c % 8 of
 * row r stored at chunk (c % 8) ^ (r % 8); every 8-row group is one 1024-byte swizzle atom, so
 * the tile base must be 1024-byte aligned. */
template <int DP, int ROWS, bool WG>
static __device__ __forceinline__ uint32_t tile_addr(uint32_t base, int r, int c) {
    if constexpr (WG) return base + (uint32_t)((c / 8) * ROWS * 128 + r * 128 + (((c % 8) ^ (r & 7)) << 4));
    else return swz_addr<DP>(base, r, c);
}

/* rows x DP tile from global rows g + r * stride (r < valid_rows, chunk < chunks), zeros elsewhere.
 * Each thread copies one fixed chunk column of every (THREADS / CH)-th row: a constant trip
 * count (the loop unrolls, no branches), one pointer increment per copy, and a swizzled chunk
 * that is the same for all of a thread's rows (the row step is a multiple of 8). */
template <typename T, int DP, int ROWS, int THREADS, bool WG>
__device__ __forceinline__ void load_tile(uint32_t s, const T *g, int64_t stride, int valid_rows, int chunks,
                                          const T *safe, int tid = (int)threadIdx.x) { /* tid in [0, THREADS) */
    constexpr int CH = DP / 8, RSTEP = THREADS / CH, ITERS = ROWS * CH / THREADS;
    static_assert(THREADS % CH == 0 && (ROWS * CH) % THREADS == 0, "tile and block do not divide");
    const int c = tid % CH, r0 = tid / CH; /* a row step of 8k keeps the swizzled chunk fixed (no address math) */
    const bool chunk_ok = c < chunks;
    const T *gp = g + (int64_t)r0 * stride + c * 8;
    const int64_t step = (int64_t)RSTEP * stride;
#pragma unroll
    for (int it = 0; it < ITERS; it++) {
        const int r = r0 + it * RSTEP;
        const bool pred = chunk_ok && r < valid_rows;
        cp_async16(tile_addr<DP, ROWS, WG>(s, r, c), pred ? gp : safe, pred);
        gp += step;
    }
}

/* load_tile over a paged cache: row r is key t0 + r of the sequence whose block-table row is
 * `table` (entries `table_s` apart), at page id (clamped to [0, pages)) x page_stride + (key %
 * page_size) x stride. One table read per copied row: the GENERAL variant's path only. */
template <typename T, int DP, int ROWS, int THREADS, bool WG>
__device__ __forceinline__ void load_tile_paged(uint32_t s, const T *g, int64_t page_stride, int64_t stride,
                                                const int32_t *table, int64_t table_s, int page_size, int64_t pages,
                                                int t0, int valid_rows, int chunks, const T *safe,
                                                int tid = (int)threadIdx.x) {
    constexpr int CH = DP / 8, RSTEP = THREADS / CH, ITERS = ROWS * CH / THREADS;
    static_assert(THREADS % CH == 0 && (ROWS * CH) % THREADS == 0, "tile and block do not divide");
    const int c = tid % CH, r0 = tid / CH;
    const bool chunk_ok = c < chunks;
#pragma unroll
    for (int it = 0; it < ITERS; it++) {
        const int r = r0 + it * RSTEP;
        const bool pred = chunk_ok && r < valid_rows;
        const T *gp = safe;
        if (pred) {
            const int t = t0 + r;
            int off;
            int64_t id = table[(int64_t)page_split(t, page_size, &off) * table_s];
            id = id < 0 ? 0 : id >= pages ? pages - 1 : id;
            gp = g + id * page_stride + (int64_t)off * stride + c * 8;
        }
        cp_async16(tile_addr<DP, ROWS, WG>(s, r, c), gp, pred);
    }
}

/* one mask (uint8) or bias element as fp32 */
static __device__ __forceinline__ float src_val(uint8_t x) { return (float)x; }
static __device__ __forceinline__ float src_val(float x) { return x; }
static __device__ __forceinline__ float src_val(__half x) { return __half2float(x); }
static __device__ __forceinline__ float src_val(__nv_bfloat16 x) { return __bfloat162float(x); }

/* ---- the tile table: one row per (padded head dim, engine); select.c picks the row ----
 * MT  m16 tiles per warp (B fragments of K and V are reused MT times: at MT = 1 an H100 SM
 *     would need two shared-memory reads per mma, more than its bandwidth)
 * NW  warps per block; BM = 16 * MT * NW query rows, BN keys per copied tile, SUB keys per
 *     compute step (S takes MT * SUB / 2 registers: at D = 128, where O takes 128, SUB = 32
 *     is what keeps the kernel from spilling).
 * D=256 takes MT = 1: O alone is 32 * 4 fp32 registers per thread per m tile. */
template <int DP, bool WG, bool WS = false> struct fwd_tile;
#ifndef CFLASH_FWD_SUB128 /* experiment switch: keys per compute step at D = 128 */
#define CFLASH_FWD_SUB128 32
#endif
template <> struct fwd_tile<64, false>  { static constexpr int MT = 2, NW = 4, BN = 64, SUB = 64, MINB = 1; };
template <> struct fwd_tile<128, false> { static constexpr int MT = 2, NW = 4, BN = 64, SUB = CFLASH_FWD_SUB128, MINB = 1; };
template <> struct fwd_tile<256, false> { static constexpr int MT = 1, NW = 8, BN = 64, SUB = 64, MINB = 1; };
/* wgmma (sm_90a): two warpgroups of 64 rows share each K / V tile of 128 keys (64 at D = 256);
 * S (BN / 2 registers) and O (DP / 2) are wgmma accumulators; one compute step per tile */
template <> struct fwd_tile<64, true>  { static constexpr int MT = 1, NW = 8, BN = 64, SUB = 64, MINB = 2; };
template <> struct fwd_tile<128, true> { static constexpr int MT = 1, NW = 8, BN = 128, SUB = 128, MINB = 1; };
template <> struct fwd_tile<256, true> { static constexpr int MT = 1, NW = 8, BN = 64, SUB = 64, MINB = 1; }; /* O: 128 registers */
/* warp-specialized wgmma (WS): one block a SM (the producers' registers go to the consumers);
 * D = 64 then takes 128-key tiles (80 KB), D = 128 and 256 the lockstep kernel's */
template <> struct fwd_tile<64, true, true>  { static constexpr int MT = 1, NW = 8, BN = 128, SUB = 128, MINB = 1; };
template <> struct fwd_tile<128, true, true> : fwd_tile<128, true> {};
template <> struct fwd_tile<256, true, true> : fwd_tile<256, true> {};

/* Q, then two K tiles and two V tiles (block nb + 1 is copied while block nb is computed):
 * mma.sync D=64 48 KB, D=128 96 KB (two blocks per SM), D=256 192 KB (one block of 8 warps);
 * wgmma D=64 80 KB, D=128 160 KB, D=256 192 KB, plus 1 KB to align the tiles to the swizzle atom. */
static_assert(16 * fwd_tile<64, false>::MT * fwd_tile<64, false>::NW == CUDA_FWD_BLOCK_ROWS &&
              16 * fwd_tile<128, false>::MT * fwd_tile<128, false>::NW == CUDA_FWD_BLOCK_ROWS &&
              16 * fwd_tile<256, false>::MT * fwd_tile<256, false>::NW == CUDA_FWD_BLOCK_ROWS &&
              16 * fwd_tile<64, true>::NW == CUDA_FWD_BLOCK_ROWS && 16 * fwd_tile<128, true>::NW == CUDA_FWD_BLOCK_ROWS &&
              16 * fwd_tile<256, true>::NW == CUDA_FWD_BLOCK_ROWS, "a range plan's row blocks are the kernels' query blocks");

/* GENERAL adds two buffers of BN floats: a key-side mask / bias staged per key block; WS (the
 * warp-specialized wgmma kernel) its mbarriers */
template <int DP, bool WG, bool GENERAL, bool WS = false>
constexpr int fwd_smem_bytes() {
    using t = fwd_tile<DP, WG, WS>;
    return (16 * t::MT * t::NW + 4 * t::BN) * DP * 2 + (WG ? 1024 : 0) + (GENERAL ? 2 * t::BN * 4 : 0) + (WS ? 128 : 0);
}
/* WS: a producer warpgroup (it only copies: Q, then K and V of each key block into two stages
 * each) beside the NW consumer warps */
constexpr int WS_PRODUCERS = 128;
template <int DP, bool WG, bool WS>
constexpr int fwd_threads() { return fwd_tile<DP, WG, WS>::NW * 32 + (WS ? WS_PRODUCERS : 0); }

/* the wgmma shapes the kernel uses, by N */
template <int N, typename T>
static __device__ __forceinline__ void wg_ss(float (&d)[N / 2], uint64_t da, uint64_t db, int accumulate) {
    if constexpr (N == 64) wgmma_ss_m64n64k16(d, da, db, accumulate, T());
    else wgmma_ss_m64n128k16(d, da, db, accumulate, T());
}
template <int N, typename T>
static __device__ __forceinline__ void wg_rs(float (&d)[N / 2], const uint32_t a[4], uint64_t db) {
    if constexpr (N == 64) wgmma_rs_m64n64k16_tb(d, a, db, T());
    else if constexpr (N == 128) wgmma_rs_m64n128k16_tb(d, a, db, T());
    else wgmma_rs_m64n256k16_tb(d, a, db, T());
}

/* GENERAL: masks, biases and range plans (f.slices: a plan's slices instead of one rule per
 * sequence) are compiled in; without them (a template argument) plain dense and packed calls
 * keep the registers the mask reads and the slice walk would take */
template <typename T, int DP, bool WG, bool GENERAL, bool WS>
__global__ void __launch_bounds__(fwd_threads<DP, WG, WS>(), fwd_tile<DP, WG, WS>::MINB)
fwd_mma_kernel(const struct cuda_fwd f) {
    using tile = fwd_tile<DP, WG, WS>;
    constexpr int MT = tile::MT, NW = tile::NW, BN = tile::BN, SUB = tile::SUB;
    constexpr int BM = 16 * MT * NW, NT = SUB / 8, DT = DP / 8, THREADS = NW * 32;
    constexpr uint32_t TILE = 2u * BN * DP; /* bytes of one K or V tile */
    static_assert(!WG || (MT == 1 && SUB == BN && NW % 4 == 0), "wgmma: one m16 tile per warp, whole key tiles, warpgroups");
    static_assert(!WS || (WG && NW == 8 && tile::MINB == 1), "WS: the wgmma kernel, two consumer warpgroups");
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const uint32_t sQ = WG ? (smem_addr(smem_raw) + 1023u) & ~1023u : smem_addr(smem_raw);
    const uint32_t sK = sQ + 2u * BM * DP, sV = sK + 2 * TILE;
    /* GENERAL: key-side sources staged per key block, two buffers of BN floats after the tiles */
    float *const sX = (float *)(smem_raw + (sV + 2 * TILE - smem_addr(smem_raw)));

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int mblock = gridDim.x - 1 - blockIdx.x; /* last (longest under causal) blocks first */
    const int h = blockIdx.y, b = blockIdx.z;

    /* the sequence: dense, or clamped packed metadata (never outside the tensors) */
    int64_t qorg = 0, korg = 0, Lq = f.Lq, Lk = f.Lk;
    if (f.cu_q) {
        int64_t a = f.cu_q[(int64_t)b * f.cu_q_s], e = f.cu_q[(int64_t)(b + 1) * f.cu_q_s];
        a = a < 0 ? 0 : a > f.Lq ? f.Lq : a;
        e = e < a ? a : e > f.Lq ? f.Lq : e;
        qorg = a; Lq = e - a;
        a = f.cu_k[(int64_t)b * f.cu_k_s]; e = f.cu_k[(int64_t)(b + 1) * f.cu_k_s];
        a = a < 0 ? 0 : a > f.Lk ? f.Lk : a;
        e = e < a ? a : e > f.Lk ? f.Lk : e;
        korg = a; Lk = e - a;
    }
    int64_t kvb = b; /* the K / V batch row */
    if constexpr (GENERAL) {
        if (f.seq_table) { /* explicit per-sequence rows (flash-mlm passes), clamped to the tensors */
            const int32_t *e = f.seq_table + 4 * (int64_t)b;
            int64_t a = e[0], n = e[1];
            a = a < 0 ? 0 : a > f.Lq ? f.Lq : a;
            n = n < 0 ? 0 : n > f.Lq - a ? f.Lq - a : n;
            qorg = a; Lq = n;
            a = e[2]; n = e[3];
            a = a < 0 ? 0 : a > f.Lk ? f.Lk : a;
            n = n < 0 ? 0 : n > f.Lk - a ? f.Lk - a : n;
            korg = a; Lk = n;
        }
        if (f.seqlens_k) { /* a KV cache: this sequence's keys, clamped to the cache (decode.cu's rule) */
            int64_t n = f.seqlens_k[(int64_t)b * f.seqlens_k_s];
            const int64_t room = f.Lk - f.seqlens_add;
            n = n < 0 ? 0 : n > room ? room : n;
            Lk = n + f.seqlens_add;
            if (f.block_table) kvb = 0; /* the rows come from the block table */
            else if (f.kv_batch_idx) {
                const int64_t r = f.kv_batch_idx[(int64_t)b * f.kv_batch_idx_s];
                kvb = r < 0 ? 0 : r >= f.kv_rows ? f.kv_rows - 1 : r;
            }
        }
    }
    const int row0 = mblock * BM;
    if (row0 >= Lq) return;
    const int rows = (int)(Lq - row0 < BM ? Lq - row0 : BM);
    const int g = h / (f.Hq / f.Hk);
    const T *Qg = (const T *)f.q + (int64_t)b * f.q_sb + (qorg + row0) * f.q_st + (int64_t)h * f.q_sh;
    const T *Kg = (const T *)f.k + kvb * f.k_sb + korg * f.k_st + (int64_t)g * f.k_sh;
    const T *Vg = (const T *)f.v + kvb * f.v_sb + korg * f.v_st + (int64_t)g * f.v_sh;
    /* BN keys from key c0 on of K (or V) into the tile at dst: rows past the sequence zero */
    /* (the WS producers: NTH = WS_PRODUCERS threads, tid their index among them) */
    auto load_kv_by = [&](auto nth, uint32_t dst, bool v, int c0, int tid) {
        constexpr int NTH = decltype(nth)::value;
        const T *base = v ? Vg : Kg, *safe = (const T *)(v ? f.v : f.k);
        const int64_t st = v ? f.v_st : f.k_st;
        const int chunks = v ? f.Dv / 8 : f.D / 8;
        if constexpr (GENERAL) {
            if (f.block_table) {
                load_tile_paged<T, DP, BN, NTH, WG>(dst, base, v ? f.v_sb : f.k_sb, st, f.block_table + (int64_t)b * f.bt_sb,
                                                    f.bt_sp, f.page_size, f.kv_rows, c0, (int)Lk - c0, chunks, safe, tid);
                return;
            }
        }
        load_tile<T, DP, BN, NTH, WG>(dst, base + (int64_t)c0 * st, st, (int)Lk - c0, chunks, safe, tid);
    };
    auto load_kv = [&](uint32_t dst, bool v, int c0) {
        load_kv_by(std::integral_constant<int, THREADS>(), dst, v, c0, (int)threadIdx.x);
    };

    /* The visibility rule in force (32-bit from here on: select.c caps the token counts at
     * 2^31 - 1, and every live register counts at 255 per thread): rows [vq0, vq1) see keys
     * [vk0, vk1) with dlo <= j - i <= dhi, ALiBi's distance is |j - i - adiag|. A sequence is
     * one rule in its own coordinates; a range plan's slices are rules in the global ones,
     * applied one after another to the same online softmax (one softmax over their union).
     * Derived for this block's rows: the key blocks [nb_lo, nb_hi] some row sees, the keys
     * [klo, khi] they span, and [full_lo, full_hi], the keys every row sees (no per-score test). */
    const int lq = (int)Lq, lk = (int)Lk;
    const int64_t cap = (int64_t)lq + lk + 1; /* a band side beyond this cuts nothing */
    struct rule {
        int vq0, vq1, vk0, vk1, adiag;
        int64_t dlo, dhi;
        int klo, khi, nb_lo, nb_hi, full_lo, full_hi;
    };
    auto lo_of = [&](const rule &R, int i) -> int { /* 64-bit: i + dlo can pass 2^31 */
        if (i < R.vq0 || i >= R.vq1) return lk;
        const int64_t lo = (int64_t)i + R.dlo;
        return (int)(lo < R.vk0 ? R.vk0 : lo > lk ? lk : lo);
    };
    auto hi_of = [&](const rule &R, int i) -> int {
        if (i < R.vq0 || i >= R.vq1) return -1;
        const int64_t hi = (int64_t)i + R.dhi;
        return (int)(hi > R.vk1 - 1 ? R.vk1 - 1 : hi < -1 ? -1 : hi);
    };
    /* this block's rules: the plan's slices for its 128 rows, or the sequence's one */
    const bool range = GENERAL && f.slices;
    const int s_begin = range ? f.tile_slices[mblock] : 0, s_end = range ? f.tile_slices[mblock + 1] : 1;
    auto make_rule = [&](int si) -> rule {
        rule R;
        if (range) {
            const struct cuda_slice sl = f.slices[si];
            R.vq0 = (int)sl.q0; R.vq1 = (int)sl.q1; R.vk0 = (int)sl.k0; R.vk1 = (int)sl.k1;
            R.dlo = sl.dlo < -cap ? -cap : sl.dlo;
            R.dhi = sl.dhi > cap ? cap : sl.dhi;
            R.adiag = (int)(sl.alibi_diag < -cap ? -cap : sl.alibi_diag > cap ? cap : sl.alibi_diag);
        } else {
            const int64_t off = f.r.top_left ? 0 : (int64_t)lk - lq;
            const int64_t right = f.r.causal ? 0 : f.r.window_right, left = f.r.window_left;
            R.vq0 = 0; R.vq1 = lq; R.vk0 = 0; R.vk1 = lk;
            R.dlo = left >= 0 ? off - (left > cap ? cap : left) : -cap;
            R.dhi = right >= 0 ? off + (right > cap ? cap : right) : cap;
            R.adiag = lk - lq;
        }
        const int r0 = row0 > R.vq0 ? row0 : R.vq0, r1 = row0 + rows - 1 < R.vq1 - 1 ? row0 + rows - 1 : R.vq1 - 1;
        R.klo = lk; R.khi = -1; R.nb_lo = 0; R.nb_hi = -1; R.full_lo = INT_MAX; R.full_hi = INT_MIN;
        if (r0 <= r1) {
            R.klo = lo_of(R, r0);
            R.khi = hi_of(R, r1);
            if (R.klo <= R.khi) { R.nb_lo = R.klo / BN; R.nb_hi = R.khi / BN; }
            if (r0 == row0 && r1 == row0 + rows - 1) { R.full_lo = lo_of(R, r1); R.full_hi = hi_of(R, r0); }
        }
        return R;
    };
    /* the first rule at or after si with a key block; s_end when none */
    auto first_from = [&](int si, rule &R) -> int {
        for (; si < s_end; si++) {
            R = make_rule(si);
            if (R.nb_lo <= R.nb_hi) break;
        }
        return si;
    };
    /* the block after (si, nb) under rule R: (*nsi, *nnb) */
    auto next_block = [&](int si, const rule &R, int nb, int *nsi, int *nnb) {
        if (nb < R.nb_hi) { *nsi = si; *nnb = nb + 1; return; }
        rule nx;
        *nsi = first_from(si + 1, nx);
        *nnb = nx.nb_lo;
    };
    const float slope2 = f.r.alibi ? f.r.alibi[(int64_t)b * f.r.alibi_sb + (int64_t)h * f.r.alibi_sh] * LOG2E_F : 0.0f;
    const float scale2 = f.r.scale * LOG2E_F;
    const bool score_mods = f.r.softcap > 0.0f || f.r.alibi || (GENERAL && f.bias.data);
    /* masks and biases (SPEC section 5): this block's origin in each source */
    const bool mask_or_bias = GENERAL && (f.mask.data || f.bias.data);
    /* the extents the sources were checked against (packed: the hints; KV caches: the sources'
     * key extents, decode.cu) */
    const int64_t hint_q = f.cu_q ? f.max_seqlen_q : f.Lq, hint_k = f.cu_q || f.seqlens_k ? f.max_seqlen_k : f.Lk;
    const int64_t mask_base = (int64_t)b * f.mask.sb + (int64_t)(h / (f.mask.hdiv > 0 ? f.mask.hdiv : 1)) * f.mask.sh +
                              (f.mask.q_local ? 0 : qorg) * f.mask.sq + (f.mask.k_local ? 0 : korg) * f.mask.sk;
    const int64_t bias_base = (int64_t)b * f.bias.sb + (int64_t)(h / (f.bias.hdiv > 0 ? f.bias.hdiv : 1)) * f.bias.sh +
                              (f.bias.q_local ? 0 : qorg) * f.bias.sq + (f.bias.k_local ? 0 : korg) * f.bias.sk;
    const float sc = score_mods || scale2 <= 0.0f ? 1.0f : scale2; /* scale left for exp2 */
    /* Key-side sources (one value per key: sq == 0 for the mask and the bias, flash-dmattn's
     * case) are staged: per key block, BN threads read key c0 + t's values into one additive
     * term (log2(e) * bias, -inf where the mask is 0 or the key is past the hint) for block
     * n + 1, kept in a register during block n and stored to sX[(n + 1) % 2] (wgmma: once block
     * n's wgmmas are issued; mma.sync: at its end), read by the score rules as one add per score. Read per score from global memory instead, they halved the kernel
     * (140 against 426 TFLOP/s dense, 70 % of keys kept). */
    const bool stage = mask_or_bias && f.mask.sq == 0 && f.bias.sq == 0;
    const int jmax_k = (int)(lk < hint_k ? lk : hint_k) - 1; /* the last key inside the hints */
    auto stage_load = [&](int c0, int tid = (int)threadIdx.x) -> float { /* key c0 + tid's term (tid < BN) */
        const int j = c0 + tid;
        if (j > jmax_k) return -INFINITY;
        float x = 0.0f;
        if (f.bias.data) {
            const int64_t at = bias_base + (int64_t)j * f.bias.sk;
            x = LOG2E_F * (f.bias.dtype == CFLASH_DTYPE_F32 ? ((const float *)f.bias.data)[at]
                           : f.bias.dtype == CFLASH_DTYPE_F16 ? __half2float(((const __half *)f.bias.data)[at])
                                                               : __bfloat162float(((const __nv_bfloat16 *)f.bias.data)[at]));
        }
        if (f.mask.data && ((const uint8_t *)f.mask.data)[mask_base + (int64_t)j * f.mask.sk] == 0) x = -INFINITY;
        return x;
    };
    const float softcap2 = f.r.softcap * LOG2E_F, cap_in = f.r.softcap > 0.0f ? f.r.scale / f.r.softcap : 0.0f;
    const int row_base = row0 + warp * 16 * MT + lane / 4;       /* this thread's first row */
    const int dq = f.D / 8, dv = f.Dv / 8;

    float o[MT][DT][4];
    float m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int dt = 0; dt < DT; dt++) o[mt][dt][0] = o[mt][dt][1] = o[mt][dt][2] = o[mt][dt][3] = 0.0f;
        m[mt][0] = m[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.0f;
    }

    rule rl; /* the rule of the block computed: (si, nb); step counts the blocks so far */
    int si = first_from(s_begin, rl), nb = rl.nb_lo, step = 0;
    /* ALiBi where no visible key lies right of the diagonal (dhi <= adiag: causal in the
     * bottom-right alignment, or top-left with Lk >= Lq): there -slope |j - i - diag| =
     * slope (j - row0 - diag) - slope (i - row0), and the row's term, the same in all its key
     * blocks, is left out of the scores (the softmax does not see it; the sink and the LSE get it
     * back in the epilogue). One FFMA per score instead of four; the scores stay within
     * slope * 127 of the true ones, so fp32 keeps their precision. The plain variant only: in
     * the GENERAL one (range plans' slices have diagonals of their own) the extra path cost
     * spills (28 -> 52 bytes at D = 128). */
    /* derived where used (a bool kept live through the loop cost the plain kernel spills) */
    auto alibi_cols = [&]() -> bool { return !GENERAL && f.r.alibi && (int64_t)rl.dhi <= (int64_t)rl.adiag; };

    /* The steps of one key block both engines share, on S = Q K^T of keys [cs, cs + SUB):
     * the score rules (in base 2), the online softmax (S becomes P, m and l move, corr is the
     * factor O must be rescaled by), and the rescale of O. */
    auto score_rules = [&](float(&s)[MT][NT][4], const int cs) {
        /* score rules, in base 2: scale, softcap, ALiBi, the visible interval. Each rule is its
         * own loop under a block-uniform branch: folded into one loop, the compiler computes
         * tanh and the ALiBi distance for every score whether or not they are on. */
        if (alibi_cols()) {
            /* ALiBi with no visible key right of the diagonal: the column term slope * (j - row0 -
             * diag), two values per 8 columns (from a per-block base plus compile-time offsets),
             * one FFMA per score */
            const float cbase = slope2 * (float)((int64_t)cs + 2 * (lane % 4) - row0 - rl.adiag);
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const float c0v = fmaf(slope2, (float)(nt * 8), cbase), c1v = c0v + slope2;
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const float x = s[mt][nt][e], cj = e & 1 ? c1v : c0v;
                        s[mt][nt][e] = f.r.softcap > 0.0f ? softcap2 * tanhf(x * cap_in) + cj : fmaf(x, scale2, cj);
                    }
            }
        } else if (score_mods) {
            /* ALiBi's distance j - i - diag as this thread's base for the block plus compile-time
             * offsets, in float (an int -> float conversion per score runs at a quarter of the FMA
             * rate); exact while distances stay below 2^24 */
            const float abase = (float)((int64_t)cs + 2 * (lane % 4) - row_base - rl.adiag);
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        float x = s[mt][nt][e];
                        x = f.r.softcap > 0.0f ? softcap2 * tanhf(x * cap_in) : x * scale2;
                        if (f.r.alibi) x -= slope2 * fabsf(abase + (float)(nt * 8 + (e & 1) - mt * 16 - (e / 2) * 8));
                        s[mt][nt][e] = x;
                    }
        } else if (scale2 <= 0.0f) { /* a negative scale turns maxima into minima: scale first */
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) s[mt][nt][e] *= scale2;
        } /* else the scale is applied inside exp2 (one FFMA per score) */
        if constexpr (GENERAL) if (mask_or_bias) {
            /* Key-side sources (sq == 0 for both) come from the staged buffer (`stage`). Other
             * masks and biases are read from global memory (L1 / L2 resident). All reads of a
             * block are issued before the first use: indices are clamped into the sequence and
             * its hints (a packed sequence longer than its hint, i.e. bad device metadata, must
             * not read past the shapes checked against the hints; its out-of-hint scores are
             * dropped), so no branch separates the loads. */
            const int imax = (int)(lq < hint_q ? lq : hint_q) - 1, jmax = (int)(lk < hint_k ? lk : hint_k) - 1;
            if (stage) { /* the staged key-side term: one add per score */
                const float2 *kx = (const float2 *)(sX + (step & 1) * BN + (cs - nb * BN)) + lane % 4;
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const float2 t = kx[nt * 4];
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        s[mt][nt][0] += t.x;
                        s[mt][nt][1] += t.y;
                        s[mt][nt][2] += t.x;
                        s[mt][nt][3] += t.y;
                    }
                }
                if (row0 + rows - 1 > imax) { /* rows past the query hint (bad metadata): dropped */
#pragma unroll
                    for (int mt = 0; mt < MT; mt++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int i = row_base + mt * 16 + (e / 2) * 8;
#pragma unroll
                            for (int nt = 0; nt < NT; nt++)
                                if (i > imax && i < lq) s[mt][nt][e] = -INFINITY;
                        }
                }
            } else {
                auto apply = [&](float &x, int i, int j, float v, bool is_mask) {
                    if (i >= lq || j >= lk) return; /* outside the sequence: the visibility rule's */
                    x = i > imax || j > jmax ? -INFINITY : is_mask ? (v == 0.0f ? -INFINITY : x) : x + LOG2E_F * v;
                };
                auto pass = [&](auto tag, const void *data, int64_t base, int64_t sq, int64_t sk, bool is_mask) {
                    using S = decltype(tag);
                    const S *src = (const S *)data + base;
#pragma unroll
                    for (int mt = 0; mt < MT; mt++)
#pragma unroll
                        for (int nt = 0; nt < NT; nt++)
#pragma unroll
                            for (int e = 0; e < 4; e++) {
                                const int i = row_base + mt * 16 + (e / 2) * 8;
                                const int j = cs + nt * 8 + 2 * (lane % 4) + (e & 1);
                                const int ic = i < imax ? i : imax, jc = j < jmax ? j : jmax;
                                apply(s[mt][nt][e], i, j, src_val(src[(int64_t)ic * sq + (int64_t)jc * sk]), is_mask);
                            }
                };
                if (jmax < 0 || imax < 0) { /* nothing inside the hints (bad metadata): all dropped */
#pragma unroll
                    for (int mt = 0; mt < MT; mt++)
#pragma unroll
                        for (int nt = 0; nt < NT; nt++)
#pragma unroll
                            for (int e = 0; e < 4; e++)
                                apply(s[mt][nt][e], row_base + mt * 16 + (e / 2) * 8, cs + nt * 8 + 2 * (lane % 4) + (e & 1), 0.0f, true);
                } else {
                    if (f.bias.dtype == CFLASH_DTYPE_F32 && f.bias.data) pass(0.0f, f.bias.data, bias_base, f.bias.sq, f.bias.sk, false);
                    if (f.bias.dtype == CFLASH_DTYPE_F16 && f.bias.data) pass(__half(), f.bias.data, bias_base, f.bias.sq, f.bias.sk, false);
                    if (f.bias.dtype == CFLASH_DTYPE_BF16 && f.bias.data) pass(__nv_bfloat16(), f.bias.data, bias_base, f.bias.sq, f.bias.sk, false);
                    if (f.mask.data) pass((uint8_t)0, f.mask.data, mask_base, f.mask.sq, f.mask.sk, true);
                }
            }
        }
        if (!(cs >= rl.full_lo && cs + SUB - 1 <= rl.full_hi)) { /* some row does not see all of it */
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int i = row_base + mt * 16 + (e / 2) * 8;
                        const int j = cs + nt * 8 + 2 * (lane % 4) + (e & 1);
                        if (j < lo_of(rl, i) || j > hi_of(rl, i)) s[mt][nt][e] = -INFINITY;
                    }
        }
    };
    auto softmax = [&](float(&s)[MT][NT][4], float(&corr)[MT][2]) {
        /* online softmax: rows are shared by the 4 lanes of a quad; scores are in base 2 times
         * `sc` (1 when the rules above already scaled them) */
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int hr = 0; hr < 2; hr++) {
                float mx = -INFINITY;
#pragma unroll
                for (int nt = 0; nt < NT; nt++) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * hr], s[mt][nt][2 * hr + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float mnew = fmaxf(m[mt][hr], mx * sc);
                const float muse = mnew == -INFINITY ? 0.0f : mnew; /* no key yet: keep exp2 finite */
                corr[mt][hr] = exp2f(m[mt][hr] - muse);
                m[mt][hr] = mnew;
                float sum = 0.0f;
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    s[mt][nt][2 * hr] = exp2f(fmaf(s[mt][nt][2 * hr], sc, -muse));
                    s[mt][nt][2 * hr + 1] = exp2f(fmaf(s[mt][nt][2 * hr + 1], sc, -muse));
                    sum += s[mt][nt][2 * hr] + s[mt][nt][2 * hr + 1];
                }
                l[mt][hr] = l[mt][hr] * corr[mt][hr] + sum;
            }
    };
    auto rescale_o = [&](const float(&corr)[MT][2]) {
        /* O is rescaled only when some row's maximum moved (a warp-uniform vote): after the
         * first key blocks of a row that is the rare case, and x * 1 is exact anyway */
        bool moved = false;
#pragma unroll
        for (int mt = 0; mt < MT; mt++) moved |= corr[mt][0] != 1.0f || corr[mt][1] != 1.0f;
        if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int dt = 0; dt < DT; dt++) {
                    o[mt][dt][0] *= corr[mt][0];
                    o[mt][dt][1] *= corr[mt][0];
                    o[mt][dt][2] *= corr[mt][1];
                    o[mt][dt][3] *= corr[mt][1];
                }
        }
    };

    if constexpr (WS) {
        /* Warp-specialized wgmma (FlashAttention-3's structure, with cp.async copies): warpgroup 2
         * only copies, warpgroups 0 and 1 only compute. Per K and V stage (two each) a "full"
         * mbarrier (the producers' 128 cp.async arrivals: the tile landed) and an "empty" one (the
         * 8 consumer warps' arrivals: both warpgroups are done reading it), so no __syncthreads in
         * the loop. The consumers take turns issuing their wgmmas (named barriers 1 and 2: one
         * warpgroup's softmax runs under the other's GEMMs), each keeping the intra-warpgroup
         * pipeline of the lockstep kernel (S_n and P_{n-1} V_{n-1} in flight together).
         * Registers: 168 a thread at launch; the producers give theirs up (40), the consumers
         * take 232. Copies zero rows past the sequence, as the other kernels' do.
         * GENERAL: both roles walk the same key blocks (a plan's slices one after another); the
         * producers also stage the key-side terms (sX[stage], behind x_full: plain stores, so a
         * plain mbarrier arrival orders them), and the consumers release a K stage only after
         * the score rules have read its terms. */
        const uint32_t sBar = sV + 2 * TILE + (GENERAL ? 2u * BN * 4u : 0u);
        /* q_full, k_full[2], v_full[2], k_empty[2], v_empty[2], x_full[2] */
        const uint32_t q_full = sBar, k_full = sBar + 8, v_full = sBar + 24, k_empty = sBar + 40, v_empty = sBar + 56,
                       x_full = sBar + 72;
        if (threadIdx.x == 0) {
            mbar_init(q_full, WS_PRODUCERS);
            for (int i = 0; i < 2; i++) {
                mbar_init(k_full + 8 * i, WS_PRODUCERS);
                mbar_init(v_full + 8 * i, WS_PRODUCERS);
                /* staged key-side terms: every consumer thread releases the stage after reading
                 * them (racecheck sees a warp's single arrival as a WAR hazard on sX) */
                mbar_init(k_empty + 8 * i, stage ? NW * 32 : NW);
                mbar_init(v_empty + 8 * i, NW);
                mbar_init(x_full + 8 * i, WS_PRODUCERS);
            }
        }
        __syncthreads();
        if (threadIdx.x >= NW * 32) { /* the producers */
            setmaxnreg_dec<40>();
            const int pt = (int)threadIdx.x - NW * 32;
            load_tile<T, DP, BM, WS_PRODUCERS, WG>(sQ, Qg, f.q_st, rows, dq, (const T *)f.q, pt);
            cp_async_mbar_arrive(q_full);
            for (int n = 0; si < s_end; n++) {
                const int stg = n & 1;
                const uint32_t ph = (uint32_t)((n >> 1) + 1) & 1u; /* use n / 2 - 1 of the stage was released */
                if (n >= 2) mbar_wait(k_empty + 8 * stg, ph);
                load_kv_by(std::integral_constant<int, WS_PRODUCERS>(), sK + stg * TILE, false, nb * BN, pt);
                cp_async_mbar_arrive(k_full + 8 * stg);
                if (stage) {
                    if (pt < BN) sX[stg * BN + pt] = stage_load(nb * BN, pt);
                    mbar_arrive(x_full + 8 * stg);
                }
                if (n >= 2) mbar_wait(v_empty + 8 * stg, ph);
                load_kv_by(std::integral_constant<int, WS_PRODUCERS>(), sV + stg * TILE, true, nb * BN, pt);
                cp_async_mbar_arrive(v_full + 8 * stg);
                int nsi, nnb;
                next_block(si, rl, nb, &nsi, &nnb);
                if (nsi != si && nsi < s_end) rl = make_rule(nsi);
                si = nsi;
                nb = nnb;
            }
            cp_async_wait_all(); /* copies must not outlive the thread */
            return;
        }
        setmaxnreg_inc<232>();
        const int wg = warp / 4;
        const uint32_t qrow = sQ + (uint32_t)wg * 64u * 128u;
        float(&oacc)[DT * 4] = *reinterpret_cast<float(*)[DT * 4]>(&o[0][0][0]);
        uint32_t pa[SUB / 16][4];
        auto issue_pv = [&](uint32_t sVb) {
#pragma unroll
            for (int kc = 0; kc < SUB / 16; kc++)
                wg_rs<DP, T>(oacc, pa[kc], wgmma_desc(sVb + (uint32_t)(kc * 16) * 128u, (uint32_t)BN * 128u, 1024));
        };
        /* turns: warpgroup w issues after bar.sync on barrier 1 + w; the other arrives there when it
         * has issued. Warpgroup 0 goes first; every sync meets exactly one arrive (warpgroup 1 skips
         * its arrive after its last turn, warpgroup 0 makes one before warpgroup 1's last turn). */
        if (si < s_end) {
            mbar_wait(q_full, 0);
            if (wg == 1) named_bar_arrive(1, 2 * 128);
        }
        /* step: the blocks so far (score_rules reads the staged terms of sX[step & 1]) */
        for (; si < s_end; step++) {
            const int n = step, stg = n & 1, c0 = nb * BN;
            const uint32_t ph = (uint32_t)(n >> 1) & 1u;
            int nsi, nnb;
            next_block(si, rl, nb, &nsi, &nnb);
            mbar_wait(k_full + 8 * stg, ph);
            if (n > 0) mbar_wait(v_full + 8 * (stg ^ 1), (uint32_t)((n - 1) >> 1) & 1u);
            if (stage) mbar_wait(x_full + 8 * stg, ph);
            fence_proxy_async(); /* the copies are read by the tensor cores' proxy */
            float s[MT][NT][4];
            float(&sacc)[NT * 4] = *reinterpret_cast<float(*)[NT * 4]>(&s[0][0][0]);
#pragma unroll
            for (int i = 0; i < NT * 4; i++) sacc[i] = 0.0f;
            named_bar_sync(1 + wg, 2 * 128);
            wgmma_fence_regs(sacc);
            wgmma_fence();
#pragma unroll
            for (int kc = 0; kc < DP / 16; kc++) {
                if (kc * 2 >= dq) break;
                const uint32_t kstep = (uint32_t)(kc % 4) * 32u, panel = (uint32_t)(kc / 4) * 128u;
                wg_ss<SUB, T>(sacc, wgmma_desc(qrow + panel * BM + kstep, 16, 1024),
                              wgmma_desc(sK + stg * TILE + panel * BN + kstep, 16, 1024), kc > 0);
            }
            wgmma_commit();
            if (n > 0) issue_pv(sV + (stg ^ 1) * TILE);
            wgmma_commit();
            named_bar_arrive(2 - wg, 2 * 128); /* the other warpgroup's turn */
            wgmma_wait<1>(); /* S_n done: K_n is free (its staged terms once the rules read them) */
            wgmma_fence_regs(sacc);
            if (!stage && lane == 0) mbar_arrive(k_empty + 8 * stg);
            score_rules(s, c0);
            if (stage) mbar_arrive(k_empty + 8 * stg); /* each thread after its own reads of sX */
            float corr[MT][2];
            softmax(s, corr);
            wgmma_wait<0>(); /* P_{n-1} V_{n-1} done: V_{n-1} is free */
            wgmma_fence_regs(oacc);
            if (n > 0 && lane == 0) mbar_arrive(v_empty + 8 * (stg ^ 1));
            rescale_o(corr);
#pragma unroll
            for (int kc = 0; kc < SUB / 16; kc++) {
                pa[kc][0] = pack2(s[0][2 * kc][0], s[0][2 * kc][1], T());
                pa[kc][1] = pack2(s[0][2 * kc][2], s[0][2 * kc][3], T());
                pa[kc][2] = pack2(s[0][2 * kc + 1][0], s[0][2 * kc + 1][1], T());
                pa[kc][3] = pack2(s[0][2 * kc + 1][2], s[0][2 * kc + 1][3], T());
            }
            if (nsi != si && nsi < s_end) rl = make_rule(nsi);
            si = nsi;
            nb = nnb;
        }
        if (step > 0) { /* the last block's P V */
            const int stg = (step - 1) & 1;
            mbar_wait(v_full + 8 * stg, (uint32_t)((step - 1) >> 1) & 1u);
            fence_proxy_async();
            named_bar_sync(1 + wg, 2 * 128);
            wgmma_fence();
            issue_pv(sV + stg * TILE);
            wgmma_commit();
            if (wg == 0) named_bar_arrive(2, 2 * 128);
            wgmma_wait<0>();
            wgmma_fence_regs(oacc);
        }
    } else if constexpr (WG) {
        /* wgmma: software-pipelined per warpgroup (FlashAttention-3's intra-warpgroup overlap):
         * in iteration nb, S_nb = Q K_nb^T and O += P_{nb-1} V_{nb-1} are issued back to back;
         * the softmax of S_nb runs while the tensor cores still compute P V. Copies: K_{nb+1}
         * and V_nb are in flight during iteration nb (V one block behind K), two buffers each. */
        const uint32_t qrow = sQ + (uint32_t)(warp / 4) * 64u * 128u;
        float(&oacc)[DT * 4] = *reinterpret_cast<float(*)[DT * 4]>(&o[0][0][0]);
        uint32_t pa[SUB / 16][4];
        auto issue_pv = [&](uint32_t sVb) { /* V is N-major: 8-key groups 1024 bytes apart, 64-column panels a tile apart */
#pragma unroll
            for (int kc = 0; kc < SUB / 16; kc++)
                wg_rs<DP, T>(oacc, pa[kc], wgmma_desc(sVb + (uint32_t)(kc * 16) * 128u, (uint32_t)BN * 128u, 1024));
        };
        load_tile<T, DP, BM, THREADS, WG>(sQ, Qg, f.q_st, rows, dq, (const T *)f.q);
        if (si < s_end)
            load_kv(sK, false, nb * BN);
        cp_async_commit();
        if (stage && si < s_end && threadIdx.x < BN) sX[threadIdx.x] = stage_load(nb * BN);
        for (; si < s_end; step++) {
            const int c0 = nb * BN;
            const uint32_t cur = (step & 1) * TILE, prev = TILE - cur;
            int nsi, nnb;
            next_block(si, rl, nb, &nsi, &nnb);
            cp_async_wait_all();
            fence_proxy_async(); /* the copies are read by the tensor cores' proxy */
            __syncthreads();     /* K of this block and V of the last landed; every warpgroup is done with the buffers refilled now */
            if (nsi < s_end)
                load_kv(sK + prev, false, nnb * BN);
            load_kv(sV + cur, true, c0);
            cp_async_commit();
            const bool stage_next = stage && nsi < s_end && threadIdx.x < BN;
            const float kx_next = stage_next ? stage_load(nnb * BN) : 0.0f; /* stored once the wgmmas are issued */

            float s[MT][NT][4];
            float(&sacc)[NT * 4] = *reinterpret_cast<float(*)[NT * 4]>(&s[0][0][0]);
            /* defined before the pipeline stage (the first wgmma overwrites them): an undefined
             * accumulator makes ptxas serialize the wgmmas (C7515) */
#pragma unroll
            for (int i = 0; i < NT * 4; i++) sacc[i] = 0.0f;
            wgmma_fence_regs(sacc);
            wgmma_fence();
#pragma unroll
            for (int kc = 0; kc < DP / 16; kc++) { /* the warpgroup's 64 rows x 128 keys, 16 columns of D per step */
                if (kc * 2 >= dq) break;
                /* 16 columns = 32 bytes into 64-column panel kc / 4; 8-row atoms 1024 bytes apart */
                const uint32_t kstep = (uint32_t)(kc % 4) * 32u, panel = (uint32_t)(kc / 4) * 128u;
                wg_ss<SUB, T>(sacc, wgmma_desc(qrow + panel * BM + kstep, 16, 1024),
                              wgmma_desc(sK + cur + panel * BN + kstep, 16, 1024), kc > 0);
            }
            wgmma_commit();
            if (step > 0) issue_pv(sV + prev);
            wgmma_commit();  /* (empty in the first iteration: the waits below need not branch) */
            /* the next block's key-side terms: stored while the tensor cores run (its register is
             * free before the softmax, where registers are scarcest) */
            if (stage_next) sX[((step + 1) & 1) * BN + threadIdx.x] = kx_next;
            wgmma_wait<1>(); /* S_nb done; P V may still run */
            wgmma_fence_regs(sacc);
            score_rules(s, c0);
            float corr[MT][2];
            softmax(s, corr);
            wgmma_wait<0>();
            wgmma_fence_regs(oacc);
            rescale_o(corr);
#pragma unroll
            for (int kc = 0; kc < SUB / 16; kc++) {
                pa[kc][0] = pack2(s[0][2 * kc][0], s[0][2 * kc][1], T());
                pa[kc][1] = pack2(s[0][2 * kc][2], s[0][2 * kc][3], T());
                pa[kc][2] = pack2(s[0][2 * kc + 1][0], s[0][2 * kc + 1][1], T());
                pa[kc][3] = pack2(s[0][2 * kc + 1][2], s[0][2 * kc + 1][3], T());
            }
            if (nsi != si && nsi < s_end) rl = make_rule(nsi);
            si = nsi;
            nb = nnb;
        }
        cp_async_wait_all(); /* V of the last block (or, with no key block, Q: copies must not outlive the block) */
        if (step > 0) {
            fence_proxy_async();
            __syncthreads();
            wgmma_fence();
            issue_pv(sV + ((step - 1) & 1) * TILE);
            wgmma_commit();
            wgmma_wait<0>();
            wgmma_fence_regs(oacc);
        }
    } else {
        /* mma.sync: Q once; the K and V tiles of key block nb + 1 are in flight while block nb is
         * computed (two buffers each, one barrier per block). Each block is computed in sub-blocks
         * of SUB keys: S = Q K^T, the score rules, the online softmax, O += P V. */
        load_tile<T, DP, BM, THREADS, WG>(sQ, Qg, f.q_st, rows, dq, (const T *)f.q);
        if (si < s_end) {
            const int c0 = nb * BN;
            load_kv(sK, false, c0);
            load_kv(sV, true, c0);
        }
        cp_async_commit();
        if (stage && si < s_end && threadIdx.x < BN) sX[threadIdx.x] = stage_load(nb * BN);

        for (; si < s_end; step++) {
            const int c0 = nb * BN;
            const uint32_t cur = (step & 1) * TILE, next = TILE - cur;
            const uint32_t sKb = sK + cur, sVb = sV + cur;
            int nsi, nnb;
            next_block(si, rl, nb, &nsi, &nnb);
            cp_async_wait_all();
            __syncthreads(); /* this block landed; every warp finished the last one, whose buffers are refilled now */
            if (nsi < s_end) {
                const int c1 = nnb * BN;
                load_kv(sK + next, false, c1);
                load_kv(sV + next, true, c1);
            }
            cp_async_commit();
            const bool stage_next = stage && nsi < s_end && threadIdx.x < BN;
            const float kx_next = stage_next ? stage_load(nnb * BN) : 0.0f; /* stored at the block's end */

#pragma unroll
            for (int sb = 0; sb < BN / SUB; sb++) {
                const int cs = c0 + sb * SUB;
                if (cs > rl.khi || cs + SUB - 1 < rl.klo) continue; /* no row of this block sees these keys */
                /* S = Q K^T */
                float s[MT][NT][4];
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
#pragma unroll
                    for (int nt = 0; nt < NT; nt++) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
#pragma unroll
                for (int kc = 0; kc < DP / 16; kc++) {
                    if (kc * 2 >= dq) break;
                    uint32_t a[MT][4];
#pragma unroll
                    for (int mt = 0; mt < MT; mt++)
                        ldmatrix_x4(a[mt], swz_addr<DP>(sQ, warp * 16 * MT + mt * 16 + lane % 16, kc * 2 + lane / 16));
                    /* the next pair of K fragments is loaded before this pair's mmas (double buffer):
                     * the ldmatrix latency hides behind 2 * MT mmas */
                    uint32_t bk[2][4];
                    ldmatrix_x4(bk[0], swz_addr<DP>(sKb, sb * SUB + (lane / 16) * 8 + lane % 8, kc * 2 + (lane / 8) % 2));
#pragma unroll
                    for (int np = 0; np < NT / 2; np++) {
                        if (CFLASH_FWD_PREFETCH && np + 1 < NT / 2)
                            ldmatrix_x4(bk[(np + 1) & 1], swz_addr<DP>(sKb, sb * SUB + (np + 1) * 16 + (lane / 16) * 8 + lane % 8, kc * 2 + (lane / 8) % 2));
                        if (!CFLASH_FWD_PREFETCH && np > 0)
                            ldmatrix_x4(bk[np & 1], swz_addr<DP>(sKb, sb * SUB + np * 16 + (lane / 16) * 8 + lane % 8, kc * 2 + (lane / 8) % 2));
#pragma unroll
                        for (int mt = 0; mt < MT; mt++) {
                            mma_m16n8k16(s[mt][2 * np], a[mt], bk[np & 1][0], bk[np & 1][1], T());
                            mma_m16n8k16(s[mt][2 * np + 1], a[mt], bk[np & 1][2], bk[np & 1][3], T());
                        }
                    }
                }
                score_rules(s, cs);
                float corr[MT][2];
                softmax(s, corr);
                rescale_o(corr);
                /* O += P V: the S accumulators of n tiles 2kc and 2kc + 1 are the A fragment of keys
                 * [16 kc, 16 kc + 16) */
#pragma unroll
                for (int kc = 0; kc < SUB / 16; kc++) {
                    uint32_t a[MT][4];
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        a[mt][0] = pack2(s[mt][2 * kc][0], s[mt][2 * kc][1], T());
                        a[mt][1] = pack2(s[mt][2 * kc][2], s[mt][2 * kc][3], T());
                        a[mt][2] = pack2(s[mt][2 * kc + 1][0], s[mt][2 * kc + 1][1], T());
                        a[mt][3] = pack2(s[mt][2 * kc + 1][2], s[mt][2 * kc + 1][3], T());
                    }
                    const int vrow = sb * SUB + kc * 16 + ((lane / 8) % 2) * 8 + lane % 8;
                    uint32_t bv[2][4];
                    ldmatrix_x4_trans(bv[0], swz_addr<DP>(sVb, vrow, lane / 16));
#pragma unroll
                    for (int dp = 0; dp < DP / 16; dp++) {
                        if (dp * 2 >= dv) break;
                        if (CFLASH_FWD_PREFETCH && dp + 1 < DP / 16 && (dp + 1) * 2 < dv) /* next V fragments first */
                            ldmatrix_x4_trans(bv[(dp + 1) & 1], swz_addr<DP>(sVb, vrow, (dp + 1) * 2 + lane / 16));
                        if (!CFLASH_FWD_PREFETCH && dp > 0)
                            ldmatrix_x4_trans(bv[dp & 1], swz_addr<DP>(sVb, vrow, dp * 2 + lane / 16));
#pragma unroll
                        for (int mt = 0; mt < MT; mt++) {
                            mma_m16n8k16(o[mt][2 * dp], a[mt], bv[dp & 1][0], bv[dp & 1][1], T());
                            mma_m16n8k16(o[mt][2 * dp + 1], a[mt], bv[dp & 1][2], bv[dp & 1][3], T());
                        }
                    }
                }
            }
            if (stage_next) sX[((step + 1) & 1) * BN + threadIdx.x] = kx_next;
            if (nsi != si && nsi < s_end) rl = make_rule(nsi);
            si = nsi;
            nb = nnb;
        }
        cp_async_wait_all(); /* no key block (Lk = 0, all masked): Q's copies must not outlive the block */
    }

    /* epilogue: row sums across the quad, the sink, 1 / l, stores */
    const float z2 = f.r.sinks ? f.r.sinks[(int64_t)h * f.r.sinks_sh] * LOG2E_F : -INFINITY;
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            float sum = l[mt][hr];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            const int ir = warp * 16 * MT + mt * 16 + lane / 4 + hr * 8;
            const float shift = alibi_cols() ? slope2 * (float)ir : 0.0f; /* the row term left out of the scores */
            float mrow = m[mt][hr], factor = 1.0f;
            if (f.r.sinks) {
                const float zr = z2 + shift, mm = fmaxf(mrow, zr);
                factor = exp2f(mrow - mm);
                sum = sum * factor + exp2f(zr - mm);
                mrow = mm;
            }
            const float inv = sum > 0.0f ? factor / sum : 0.0f;
            if (ir >= rows) continue;
            const int64_t t = qorg + row0 + ir;
            if (f.out_dtype == CFLASH_DTYPE_F32) {
                float *orow = (float *)f.out + (int64_t)b * f.o_sb + t * f.o_st + (int64_t)h * f.o_sh;
#pragma unroll
                for (int dt = 0; dt < DT; dt++) {
                    const int col = dt * 8 + 2 * (lane % 4);
                    if (col < f.Dv)
                        *(float2 *)(orow + col) = make_float2(o[mt][dt][2 * hr] * inv, o[mt][dt][2 * hr + 1] * inv);
                }
            } else {
                T *orow = (T *)f.out + (int64_t)b * f.o_sb + t * f.o_st + (int64_t)h * f.o_sh;
#pragma unroll
                for (int dt = 0; dt < DT; dt++) {
                    const int col = dt * 8 + 2 * (lane % 4);
                    if (col < f.Dv)
                        *(uint32_t *)(orow + col) = pack2(o[mt][dt][2 * hr] * inv, o[mt][dt][2 * hr + 1] * inv, T());
                }
            }
            if (f.lse && lane % 4 == 0)
                f.lse[(int64_t)b * f.lse_sb + (int64_t)h * f.lse_sh + t * f.lse_st] =
                    sum > 0.0f ? (mrow - shift) * LN2_F + logf(sum) : -INFINITY;
        }
}

template <typename T, int DP, bool WG, bool GENERAL, bool WS = false>
static enum cflash_status launch1(const struct cuda_fwd *f) {
    constexpr int BM = 16 * fwd_tile<DP, WG, WS>::MT * fwd_tile<DP, WG, WS>::NW;
    constexpr int bytes = fwd_smem_bytes<DP, WG, GENERAL, WS>();
    const int64_t rows = f->cu_q || f->seq_table ? f->max_seqlen_q : f->Lq;
    if (rows <= 0 || f->B <= 0) return CFLASH_STATUS_OK;
    const dim3 grid((unsigned)((rows + BM - 1) / BM), (unsigned)f->Hq, (unsigned)f->B);
    cudaError_t err = cudaFuncSetAttribute(fwd_mma_kernel<T, DP, WG, GENERAL, WS>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (err == cudaSuccess) {
        fwd_mma_kernel<T, DP, WG, GENERAL, WS><<<grid, fwd_threads<DP, WG, WS>(), bytes, (cudaStream_t)f->stream>>>(*f);
        err = cudaGetLastError();
    }
    if (err != cudaSuccess)
        return cflash_set_error(CFLASH_STATUS_DEVICE_ERROR, "q: CUDA launch of the prefill kernel failed: %s", cudaGetErrorString(err));
    return CFLASH_STATUS_OK;
}

/* the wgmma engine's schedule: select.c (cuda_fwd_ws_select) */
static bool ws_pick(const struct cuda_fwd *f, int dp) {
    const int64_t rows = f->cu_q || f->seq_table ? f->max_seqlen_q : f->Lq;
    return cuda_fwd_ws_select(dp == 64 ? CUDA_FWD_D64 : dp == 128 ? CUDA_FWD_D128 : CUDA_FWD_D256, f->r.causal, rows) != 0;
}

template <typename T, int DP, bool WG>
static enum cflash_status launch(const struct cuda_fwd *f) {
    const bool general = f->slices || f->mask.data || f->bias.data || f->seqlens_k || f->seq_table;
    if constexpr (WG)
        if (ws_pick(f, DP)) return general ? launch1<T, DP, WG, true, true>(f) : launch1<T, DP, WG, false, true>(f);
    return general ? launch1<T, DP, WG, true>(f) : launch1<T, DP, WG, false>(f);
}

#if CFLASH_FWD_PART != 0
#define CFLASH_FWD_FN_(d) cuda_fwd_launch_d##d
#define CFLASH_FWD_FN(d) CFLASH_FWD_FN_(d)
enum cflash_status CFLASH_FWD_FN(CFLASH_FWD_PART)(const struct cuda_fwd *f, bool wg) {
    constexpr int DP = CFLASH_FWD_PART;
    const bool bf = f->dtype == CFLASH_DTYPE_BF16;
    return wg ? (bf ? launch<__nv_bfloat16, DP, true>(f) : launch<__half, DP, true>(f))
              : (bf ? launch<__nv_bfloat16, DP, false>(f) : launch<__half, DP, false>(f));
}
#else
/* sm_90a code is in this build (CMake defines CFLASH_CUDA_SM90A when the architectures list 90a) */
#ifdef CFLASH_CUDA_SM90A
#define HAVE_SM90A 1
#else
#define HAVE_SM90A 0
#endif

extern "C" enum cflash_status cuda_plan_upload(int32_t device, const void *host, size_t bytes, void **dev) {
    int prev;
    enum cflash_status st = cuda_device_enter("plan", device, &prev);
    if (st) return st;
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes ? bytes : 1);
    if (err == cudaErrorMemoryAllocation) {
        cuda_device_leave(device, prev);
        return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "plan: out of GPU memory for the plan's %zu bytes", bytes);
    }
    if (err == cudaSuccess && bytes) err = cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice);
    cuda_device_leave(device, prev);
    if (err != cudaSuccess) {
        if (p) (void)cudaFree(p);
        return cflash_set_error(CFLASH_STATUS_DEVICE_ERROR, "plan: copying the plan to CUDA device %d failed: %s", (int)device, cudaGetErrorString(err));
    }
    *dev = p;
    return CFLASH_STATUS_OK;
}

extern "C" void cuda_plan_free(int32_t device, void *dev) {
    int prev;
    if (!dev || cuda_device_enter("plan", device, &prev)) return;
    (void)cudaFree(dev);
    cuda_device_leave(device, prev);
}

extern "C" enum cflash_status cuda_device_enter(const char *name, int32_t device, int *prev) {
    cudaError_t err = cudaGetDevice(prev);
    if (err == cudaSuccess && *prev != device) err = cudaSetDevice(device);
    if (err != cudaSuccess)
        return cflash_set_error(CFLASH_STATUS_DEVICE_ERROR, "%s: cannot use CUDA device %d: %s", name, (int)device, cudaGetErrorString(err));
    return CFLASH_STATUS_OK;
}

extern "C" void cuda_device_leave(int32_t device, int prev) {
    if (prev != device) (void)cudaSetDevice(prev);
}

extern "C" enum cflash_status cuda_fwd_launch(const struct cuda_fwd *f, enum cuda_fwd_config config) {
    if ((f->cu_q || f->seq_table ? f->max_seqlen_q : f->Lq) <= 0 || f->B <= 0) return CFLASH_STATUS_OK; /* nothing to do */
    int prev, major = 0, minor = 0;
    enum cflash_status st = cuda_device_enter("q", f->device_id, &prev);
    if (st) return st;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, f->device_id) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, f->device_id) != cudaSuccess) {
        cuda_device_leave(f->device_id, prev);
        return cflash_set_error(CFLASH_STATUS_DEVICE_ERROR, "q: cannot read the compute capability of CUDA device %d", (int)f->device_id);
    }
    enum cuda_fwd_engine engine;
    st = cuda_fwd_engine_select(config, major, minor, HAVE_SM90A, &engine);
    if (st) {
        cuda_device_leave(f->device_id, prev);
        return st;
    }
    const bool wg = engine == CUDA_ENGINE_WGMMA;
    switch (config) {
    case CUDA_FWD_D64: st = cuda_fwd_launch_d64(f, wg); break;
    case CUDA_FWD_D128: st = cuda_fwd_launch_d128(f, wg); break;
    case CUDA_FWD_D256: st = cuda_fwd_launch_d256(f, wg); break;
    default: st = cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: no CUDA kernel for this head dim");
    }
    cuda_device_leave(f->device_id, prev);
    return st;
}
#endif
