/*
 * cuda.h - the CUDA backend's internal interface: api.c validates the public arguments (shapes,
 * dtypes, devices) exactly as for the CPU, then hands one struct cuda_fwd to the backend.
 *
 * What crosses here: device pointers and element strides, the score rules, and the metadata of
 * a packed call as device pointers (cu_seqlens are never read on the host: that would need a
 * synchronization). What does not: anything the host must validate by reading device memory.
 * The kernels clamp every sequence to the tensors' extents, so bad device metadata can give
 * wrong numbers but never an access out of bounds.
 */
#ifndef CFLASH_CUDA_H
#define CFLASH_CUDA_H

#include "cflash.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A boolean mask or additive bias on the device: element (b, h, row, col) of a sequence with
 * origins (qorg, korg) at data[b * sb + (h / hdiv) * sh + (q_local ? i : qorg + i) * sq +
 * (k_local ? j : korg + j) * sk] for local row i and key j (SPEC.md section 5's three layouts
 * are this with other strides; broadcast axes have stride 0). data == NULL: absent. */
struct cuda_scoresrc {
    const void *data;
    enum cflash_dtype dtype;       /* mask: uint8 (0 = masked); bias: fp32 | fp16 | bf16 */
    int64_t sb, sh, sq, sk, hdiv;
    int32_t q_local, k_local;
};

/* The score rules of a call (SPEC sections 1-3), the same for every CUDA kernel: api.c fills
 * them once (cuda_rules_fill), the kernels read them. */
struct cuda_rules {
    float scale, softcap;
    int32_t causal, top_left;
    int64_t window_left, window_right;
    const float *alibi;    /* NULL or fp32 slope (b, h) at alibi[b * alibi_sb + h * alibi_sh] */
    int64_t alibi_sb, alibi_sh;
    const float *sinks;    /* NULL or fp32 [Hq] */
    int64_t sinks_sh;
};

/* One slice of a range plan on the device (the layout of struct attn_slice, internal.h): rows
 * [q0, q1) see keys [k0, k1) with dlo <= col - row <= dhi; ALiBi distance |col - row - alibi_diag|. */
struct cuda_slice {
    int64_t q0, q1, k0, k1, dlo, dhi, alibi_diag;
};

/* One forward attention call on the GPU (dense: cu_q == NULL; packed: cu_q, cu_k device int32;
 * range plan: slices != NULL, B = 1, q / k / v packed over the plan's global axes). */
struct cuda_fwd {
    const void *q, *k, *v; /* v == k for V := K (or a prefix of K's head dim) */
    void *out;
    float *lse;            /* NULL or fp32 */
    enum cflash_dtype dtype, out_dtype;
    int64_t q_sb, q_st, q_sh, k_sb, k_st, k_sh, v_sb, v_st, v_sh, o_sb, o_st, o_sh;
    int64_t lse_sb, lse_sh, lse_st;
    int32_t B, Hq, Hk, D, Dv;
    int64_t Lq, Lk;        /* dense: the lengths; packed: the token totals Tq, Tk */
    const int32_t *cu_q, *cu_k;
    int64_t cu_q_s, cu_k_s;
    int64_t max_seqlen_q;  /* rows the grid covers per sequence (packed: the hint, else Tq) */
    struct cuda_rules r;
    struct cuda_scoresrc mask, bias;
    int64_t max_seqlen_k;  /* packed: the hint the mask / bias shapes were checked against */
    int32_t device_id;     /* the tensors' GPU: the launch runs there (and restores the caller's) */
    void *stream;          /* cudaStream_t; NULL = the legacy default stream */
    /* range plans: the device copy of the plan (cuda_plan_upload); 128-row block t of q has
     * slices [tile_slices[t], tile_slices[t + 1]) */
    const struct cuda_slice *slices;
    const int32_t *tile_slices;
    /* KV caches with Lq > CUDA_DECODE_MAX_LQ (decode.cu hands them here): k / v are the caches
     * ([rows, Lk = cap, H, D]), sequence b sees its first min(seqlens_k[b], Lk - seqlens_add) +
     * seqlens_add keys (the appended ones included) in cache row kv_batch_idx[b] (or b),
     * clamped to [0, kv_rows); paged (block_table != NULL): key t of sequence b is row
     * t % page_size of page block_table[b][t / page_size] (k_sb / v_sb: the page strides; the
     * page id clamped to [0, kv_rows)) */
    const int32_t *seqlens_k;
    int64_t seqlens_k_s;
    int32_t seqlens_add;
    const int32_t *kv_batch_idx;
    int64_t kv_batch_idx_s, kv_rows;
    const int32_t *block_table;
    int64_t bt_sb, bt_sp;
    int32_t page_size;
    /* explicit sequences (flash-mlm's passes; cu_q NULL): int32 [B][4] on the device, sequence b
     * = query rows [t0, t0 + n) and key rows [k0, k0 + m) of the token axes (Lq, Lk: their
     * totals; clamped to them); the grid covers max_seqlen_q rows */
    const int32_t *seq_table;
};

/* Query rows per block of the prefill kernels (every engine and head dim): a range plan's
 * segments are blocks of this many rows (RANGE_BLOCK_ROWS, internal.h). */
#define CUDA_FWD_BLOCK_ROWS 128

/* A range plan's device copy (fwd_mma.cu): `bytes` of host data (slices, then the int32 tile
 * list) copied once to `device` (a synchronous copy: this is the plan's one-time upload, not
 * the call's hot path). *dev receives the allocation; cuda_plan_free gives it back. */
enum cflash_status cuda_plan_upload(int32_t device, const void *host, size_t bytes, void **dev);
void cuda_plan_free(int32_t device, void *dev);

/* Which kernel serves `f` (select.c; the same answer decides UNSUPPORTED). Returns OK and sets
 * *config, or UNSUPPORTED with a message naming the reason. */
enum cuda_fwd_config { CUDA_FWD_D64 = 0, CUDA_FWD_D128 = 1, CUDA_FWD_D256 = 2, CUDA_FWD_MLA = 3 /* KV caches: D 576, Dv 512 */ };
enum cflash_status cuda_fwd_select(const struct cuda_fwd *f, enum cuda_fwd_config *config);

/* Which engine computes a prefill call (select.c, a pure host function): the wgmma kernel
 * (Hopper tensor-core instructions, sm_90a code) on compute capability 9.0 when the build has
 * sm_90a code, the mma.sync kernel otherwise. The environment
 * variable CFLASH_CUDA_KERNEL = auto | mma | wgmma forces one (tests, experiments): a forced
 * engine that cannot serve the call is UNSUPPORTED, an unknown name INVALID_ARGUMENT. */
enum cuda_fwd_engine { CUDA_ENGINE_MMA = 0, CUDA_ENGINE_WGMMA = 1 };
enum cflash_status cuda_fwd_engine_select(enum cuda_fwd_config config, int cc_major, int cc_minor, int have_sm90a,
                                          enum cuda_fwd_engine *engine);

/* Which schedule the wgmma engine runs (select.c): 1 the warp-specialized kernel (a producer
 * warpgroup, two consumer warpgroups taking turns), 0 the lockstep one. Warp-specialized but at
 * D = 64 full attention over <= 1024 query rows (`rows`: the longest sequence's), where the
 * lockstep kernel's two blocks a SM win. CFLASH_CUDA_WS=0 takes the lockstep kernel for every
 * call (an A/B switch, and the tests' third pass). */
int cuda_fwd_ws_select(enum cuda_fwd_config config, int causal, int64_t rows);

/* The rules every CUDA kernel shares (select.c): fp16 / bf16 inputs, head dims multiples of 8 up
 * to 256 (*dmax: the larger of D and Dv), 16-byte aligned rows of the three inputs (named in the
 * message), out written in pairs of elements. */
struct cuda_rows { const void *p; int64_t sb, st, sh; const char *name; };
enum cflash_status cuda_check_common(enum cflash_dtype dtype, int32_t D, int32_t Dv, const struct cuda_rows rows[3],
                                     const void *out, enum cflash_dtype out_dtype, int64_t o_sb, int64_t o_st,
                                     int64_t o_sh, int *dmax);

/* Every launcher runs on the tensors' GPU, whatever the caller's current device is, and puts
 * the caller's current device back (fwd_mma.cu): *prev receives it. DEVICE_ERROR on failure,
 * naming `name` (the call's first tensor). Calls with nothing to do never touch the device. */
enum cflash_status cuda_device_enter(const char *name, int32_t device, int *prev);
void cuda_device_leave(int32_t device, int prev);

/* Launch (fwd_mma.cu). Asynchronous on f->stream; DEVICE_ERROR if the launch fails. */
enum cflash_status cuda_fwd_launch(const struct cuda_fwd *f, enum cuda_fwd_config config);

/* ---- KV caches: decode and speculative decode (decode.cu) ----
 *
 * One cflash_attn_kvcache call on CUDA tensors: Lq <= CUDA_DECODE_MAX_LQ runs the split-KV
 * decode kernel; longer queries (chunked prefill over a cache) run the prefill kernel after the
 * append, for contiguous caches without rotary embedding (paged or rotary: UNSUPPORTED). Contiguous caches
 * (block_table == NULL): element (row, t, h, d) of a cache is at row * k_sb + t * k_st + h * k_sh
 * + d with row = cache_batch_idx[b] (or b). Paged caches: row = block_table[b][t / page_size],
 * t % page_size in place of t. The metadata (cache_seqlens, cache_batch_idx, block_table) are
 * device pointers the host never reads; the kernels clamp cache_seqlens[b] to [0, cap - Lnew]
 * and every row / page id to [0, num_rows), so bad metadata gives unspecified numbers (and, when
 * two batch entries append to one row, unspecified contents of that row) but no access outside
 * the tensors. The new keys are appended by a first kernel on the same stream. */
#define CUDA_DECODE_MAX_LQ 8

struct cuda_kvcache {
    const void *q;
    void *k_cache, *v_cache;       /* v_cache == k_cache (same strides) for V := K or K[..., :Dv] */
    const void *k_new, *v_new;     /* NULL when Lnew == 0; v_new NULL for V := K */
    void *out;
    float *lse;                    /* NULL or fp32 [B, Hq, Lq] */
    enum cflash_dtype dtype, out_dtype;
    int64_t q_sb, q_st, q_sh;
    int64_t kc_sb, kc_st, kc_sh, vc_sb, vc_st, vc_sh; /* sb: cache row (contiguous) or page */
    int64_t kn_sb, kn_st, kn_sh, vn_sb, vn_st, vn_sh;
    int64_t o_sb, o_st, o_sh, lse_sb, lse_sh, lse_st;
    int32_t B, Hq, Hk, D, Dv, Lq;
    int32_t Lnew;                  /* new keys per batch entry, <= cap */
    int32_t append_v;              /* 1: v_new is written too (0 when V := K, or when v_new / v_cache
                                      are views of k_new / k_cache, already written with them) */
    int32_t v_is_k;                /* 1: V rows are the first Dv columns of the K rows (loaded once) */
    int64_t num_rows;              /* Bc (contiguous) or num_pages (paged) */
    int32_t page_size;             /* paged: k_cache.shape[1] (capped at 2^31 - 1) */
    int32_t cap;                   /* keys one batch entry can hold (Lmax, or max_pages * page_size;
                                      capped at 2^31 - 1; 0 when the cache has no rows) */
    const int32_t *cache_seqlens;  /* NULL: every sequence holds cap keys (dense MLA calls, api.c) */
    int64_t seqlens_s;
    const int32_t *cache_batch_idx; /* NULL: row b */
    int64_t batch_idx_s;
    const int32_t *block_table;    /* NULL: contiguous */
    int64_t bt_sb, bt_sp;
    struct cuda_rules r;
    /* mask / bias (data NULL: none), the DENSE layout over each sequence's logical keys (q_local,
     * k_local); a score at a key >= mask_keys / bias_keys (the sources' key extents; INT64_MAX
     * when broadcast) is dropped: only bad cache_seqlens reach there, the host cannot check */
    struct cuda_scoresrc mask, bias;
    int64_t mask_keys, bias_keys;
    /* rotary embedding (rot_cos NULL: none) of the appended keys (at seq_start + t) and of q (at
     * seq_start + i when rot_q_per_row, else seq_start): [rot_rows, rot_half] tables of
     * rot_dtype; positions are clamped to [0, rot_rows) (the host cannot check them) */
    const void *rot_cos, *rot_sin;
    enum cflash_dtype rot_dtype;
    int64_t rot_s0, rot_s1, rot_rows;
    int32_t rot_half, rot_interleaved, rot_q_per_row;
    int32_t device_id;             /* the tensors' GPU */
    void *stream;                  /* cudaStream_t; NULL = the legacy default stream */
};

/* Whether the decode kernel serves `f` (a pure host function: dtype, head dims, Lq, alignment,
 * grid limits). OK with *config (the padded head dim), or UNSUPPORTED naming the reason. */
enum cflash_status cuda_kvcache_select(const struct cuda_kvcache *f, enum cuda_fwd_config *config);

/* Append, attend, combine: asynchronous on f->stream (the split-KV workspace is taken with
 * cudaMallocAsync and given back with cudaFreeAsync on that stream; the host never waits).
 * OUT_OF_MEMORY when the workspace cannot be had (nothing written then), DEVICE_ERROR when a
 * CUDA call fails. CFLASH_DECODE_SPLITS=n (1..256) forces the split count (tests, experiments). */
enum cflash_status cuda_kvcache_launch(const struct cuda_kvcache *f, enum cuda_fwd_config config);

/* ---- state merge (merge.cu) ----
 * cflash_merge on CUDA tensors, both layouts viewed as [B, T, H, Dv] (rank 3: B = 1, batch
 * strides 0) with lse [B, H, T]. Any element strides; out / lse_out may alias o1 / lse1 element
 * for element. Runs on the legacy default stream (cflash_merge takes no parameters). */
struct cuda_merge {
    const void *o1, *o2;
    void *out;
    const float *lse1, *lse2;
    float *lse_out;                /* NULL: not written */
    enum cflash_dtype dtype, out_dtype;
    int64_t B, T, H, Dv;
    int64_t o1_s[4], o2_s[4], out_s[4]; /* strides of (b, t, h, d) */
    int64_t l1_s[3], l2_s[3], lo_s[3];  /* strides of (b, h, t) */
    int32_t device_id;             /* the tensors' GPU */
    void *stream;
};

enum cflash_status cuda_merge_launch(const struct cuda_merge *m);

/* ---- device memory for host-side owners (buffers.cu) ----
 * cuda_mem_alloc: cudaMalloc (ordered 0: persistent) or cudaMallocAsync on `stream` (ordered 1:
 * per-call workspaces, freed the same way); OUT_OF_MEMORY / DEVICE_ERROR naming `name`.
 * cuda_mem_copy2d: cudaMemcpy2DAsync on `stream` in any direction (unified addressing; from
 * pageable host memory it returns once the source is staged). cuda_mem_sync: the stream. */
enum cflash_status cuda_mem_alloc(const char *name, int32_t device, void *stream, int ordered, size_t bytes, void **p);
void cuda_mem_free(int32_t device, void *stream, int ordered, void *p);
enum cflash_status cuda_mem_copy2d(const char *name, int32_t device, void *stream, void *dst, size_t dpitch,
                                   const void *src, size_t spitch, size_t width, size_t height);
enum cflash_status cuda_mem_sync(const char *name, int32_t device, void *stream);

#ifdef __cplusplus
}
#endif

#endif
