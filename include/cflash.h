/*
 * cflash.h - the whole public C API of cflash: exact softmax attention (forward, inference).
 *
 * What it is: C11 declarations of tensors, parameters, statuses and entry points. What it is
 * not: CUDA or Python types; those live in their backends. The semantic contract is SPEC.md;
 * each function below computes exactly what it says there.
 *
 * Dimension letters (SPEC.md): B batch, Hq query heads, Hk key/value heads, Lq / Lk query / key
 * length of one sequence, Tq / Tk total packed query / key tokens, D query/key head dim, Dv
 * value head dim.
 *
 * Conventions for every entry point:
 * - Tensors are strided views (struct cflash_tensor). Strides count ELEMENTS, not bytes, and may
 *   be any int64 (zero and negative included) for inputs; the head-dim axis (last axis) of q, k,
 *   v and out must have stride 1. Outputs need positive, non-overlapping strides.
 * - The caller owns all memory. Nothing is retained after a call returns.
 * - Every call validates all arguments before touching any output and returns a status. On any
 *   status other than OK nothing has been written. cflash_last_error() then gives a message
 *   naming the argument and the rule it broke; the message is per thread (thread-local).
 * - The library never prints, exits or aborts.
 */
#ifndef CFLASH_H
#define CFLASH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CFLASH_VERSION_MAJOR 0
#define CFLASH_VERSION_MINOR 1
#define CFLASH_VERSION_PATCH 0

#define CFLASH_MAX_DIMS 4
/* Head dims the CPU backend accepts: 1 <= D, Dv <= CFLASH_MAX_HEAD_DIM. */
#define CFLASH_MAX_HEAD_DIM 1024

enum cflash_status {
    CFLASH_STATUS_OK = 0,
    CFLASH_STATUS_INVALID_ARGUMENT = 1, /* an argument breaks a rule of SPEC.md */
    CFLASH_STATUS_UNSUPPORTED = 2,      /* valid, but not available on this backend/device */
    CFLASH_STATUS_OUT_OF_MEMORY = 3,    /* workspace allocation failed */
    CFLASH_STATUS_DEVICE_ERROR = 4      /* a device or OS call failed (e.g. thread creation) */
};

enum cflash_dtype {
    CFLASH_DTYPE_F32 = 0,
    CFLASH_DTYPE_F16 = 1,
    CFLASH_DTYPE_BF16 = 2,
    CFLASH_DTYPE_I32 = 3, /* cu_seqlens, cache_seqlens, block tables */
    CFLASH_DTYPE_U8 = 4   /* boolean masks (nonzero = keep) */
};

/* Which diagonal the causal mask and the sliding window are aligned to (SPEC.md section 3).
 * BOTTOM_RIGHT (flash-attn's meaning of "causal"): key j is on row i's diagonal when
 * j == i + (Lk - Lq). TOP_LEFT (torch SDPA is_causal): when j == i. ALiBi always uses the
 * bottom-right diagonal (SPEC.md section 1.3). */
enum cflash_align {
    CFLASH_ALIGN_BOTTOM_RIGHT = 0,
    CFLASH_ALIGN_TOP_LEFT = 1
};

/* Kernel choice. AUTO picks the fastest available; anything else forces that kernel, and a
 * forced kernel that cannot serve the call returns UNSUPPORTED (never a silent fallback).
 * The environment variable CFLASH_KERNEL (auto|ref|avx512bf16|avx512|avx2|generic) overrides
 * AUTO. All CPU kernels compute fp32 and fp16 inputs the same way; AVX512_BF16 differs from
 * AVX512 only for bf16 inputs (vdpbf16ps dot products, probabilities rounded to bf16). */
enum cflash_kernel {
    CFLASH_KERNEL_AUTO = 0,
    CFLASH_KERNEL_REFERENCE = 1,   /* the naive fp64 oracle (src/cpu/ref.c) */
    CFLASH_KERNEL_CPU_AVX512 = 2,  /* tiled online softmax, AVX-512 (x86-64) */
    CFLASH_KERNEL_CPU_AVX2 = 3,    /* tiled online softmax, AVX2 + FMA (x86-64) */
    CFLASH_KERNEL_CPU_GENERIC = 4, /* tiled online softmax, portable C vectors (any CPU) */
    CFLASH_KERNEL_CPU_AVX512_BF16 = 5 /* AVX-512 plus AVX512-BF16 dot products for bf16 */
};
#define CFLASH_KERNEL_COUNT 6

enum cflash_device_type {
    CFLASH_DEVICE_CPU = 0,
    CFLASH_DEVICE_CUDA = 1
};

/* A strided view of memory. shape[i] and stride[i] are valid for i < ndim; strides count
 * elements of `dtype`. A tensor with zero elements may have data == NULL. */
struct cflash_tensor {
    void *data;
    enum cflash_dtype dtype;
    int32_t ndim;
    int64_t shape[CFLASH_MAX_DIMS];
    int64_t stride[CFLASH_MAX_DIMS];
    enum cflash_device_type device;
    int32_t device_id;
};

/* Where a boolean mask or an additive bias comes from (SPEC.md section 5). Hv in {1, Hk, Hq};
 * query head h reads variant h / (Hq / Hv). Strides are free (a (Hv, Tk) storage is the
 * key-side layout transposed).
 *   DENSE       [B or 1, Hv, Lq or 1, Lk or 1], element [b, var, i, j] in the sequence's local
 *               coordinates; size-1 axes broadcast. Packed calls: the Lq / Lk axes must be 1 or
 *               at least the longest sequence.
 *   KEY_SIDE    packed calls only: [Tk, Hv], element [cu_k[b] + j, var] for every query of b.
 *   QUERY_SIDE  packed calls only: [Tq, Hv, max_seqlen_k], element [cu_q[b] + i, var, j];
 *               columns j >= Lk_b are ignored; the last axis must be >= the longest key run.
 * Masks: uint8 (bool), nonzero = keep, ANDed with every other rule. Biases: fp32, fp16 or
 * bf16, added to the score after the softcap, unscaled. */
enum cflash_layout {
    CFLASH_LAYOUT_DENSE = 0,
    CFLASH_LAYOUT_KEY_SIDE = 1,
    CFLASH_LAYOUT_QUERY_SIDE = 2
};

/* Options of one attention call. Start from cflash_attn_params_default() (or
 * CFLASH_ATTN_PARAMS_INIT): a zeroed struct is NOT the default (the window would be (0, 0)). */
struct cflash_attn_params {
    float scale;              /* multiplies q.k; 0 means the default 1/sqrt(D); must be finite */
    float softcap;            /* > 0: s = softcap * tanh(s / softcap); 0: off; < 0 invalid */
    int32_t causal;           /* 0 or 1 */
    enum cflash_align align;  /* diagonal used by causal and window */
    int64_t window_left;      /* sliding window: c - left <= j <= c + right around the */
    int64_t window_right;     /* diagonal c; -1 = unbounded; < -1 invalid; causal caps right at 0 */
    const struct cflash_tensor *alibi_slopes; /* NULL, or fp32 [Hq] or [B, Hq] */
    const struct cflash_tensor *sinks;        /* NULL, or fp32 [Hq]: one sink logit per head */
    int32_t num_threads;      /* 0: CFLASH_NUM_THREADS, else the machine's core count */
    enum cflash_kernel kernel;
    const struct cflash_tensor *mask; /* NULL, or uint8 in mask_layout (keep = nonzero) */
    enum cflash_layout mask_layout;
    const struct cflash_tensor *bias; /* NULL, or fp32/fp16/bf16 in bias_layout */
    enum cflash_layout bias_layout;
    void *cuda_stream;        /* CUDA tensors: the cudaStream_t the call is queued on (NULL:
                                 the legacy default stream); ignored for CPU tensors */
};

#define CFLASH_ATTN_PARAMS_INIT                                                                 \
    { 0.0f, 0.0f, 0, CFLASH_ALIGN_BOTTOM_RIGHT, -1, -1, NULL, NULL, 0, CFLASH_KERNEL_AUTO, NULL, \
      CFLASH_LAYOUT_DENSE, NULL, CFLASH_LAYOUT_DENSE, NULL }

struct cflash_attn_params cflash_attn_params_default(void);

/*
 * Dense attention.
 *   q   [B, Lq, Hq, D]    fp32 | fp16 | bf16; any strides, q.stride[3] == 1 (so [B, Hq, Lq, D]
 *                         storage is passed with permuted strides, no copy)
 *   k   [B, Lk, Hk, D]    same dtype as q; Hq % Hk == 0 (GQA/MQA)
 *   v   [B, Lk, Hk, Dv]   same dtype as q; or NULL for V := K (Dv = D). MLA V := K[..., :Dv] is
 *                         a view of k: the same data and strides with shape[3] = Dv.
 *   out [B, Lq, Hq, Dv]   dtype of q, or fp32; written completely
 *   lse [B, Hq, Lq]       fp32 natural-log LSE, or NULL. Rows with no visible key: out 0, lse -inf.
 * 1 <= D, Dv <= CFLASH_MAX_HEAD_DIM. B, Lq, Lk may be 0.
 * Returns OK, INVALID_ARGUMENT, UNSUPPORTED (forced kernel unavailable), OUT_OF_MEMORY,
 * DEVICE_ERROR.
 */
enum cflash_status cflash_attn_dense(const struct cflash_tensor *q, const struct cflash_tensor *k,
                                     const struct cflash_tensor *v, const struct cflash_tensor *out,
                                     const struct cflash_tensor *lse,
                                     const struct cflash_attn_params *params);

/*
 * Packed variable-length attention.
 *   q [Tq, Hq, D], k [Tk, Hk, D], v [Tk, Hk, Dv] (or NULL: V := K), out [Tq, Hq, Dv]
 *   cu_seqlens_q, cu_seqlens_k: int32 [B + 1], start at 0, non-decreasing, last = Tq / Tk.
 *   max_seqlen_q, max_seqlen_k: hints; -1 = not given; a given hint smaller than a real length
 *   is INVALID_ARGUMENT.
 *   lse [Hq, Tq] fp32 or NULL. ALiBi slopes [Hq] or [B, Hq].
 * Masks are aligned per sequence in local coordinates. Sequences with Lq = 0 write nothing;
 * Lk = 0 gives empty rows (out 0, lse -inf).
 */
enum cflash_status cflash_attn_varlen(const struct cflash_tensor *q, const struct cflash_tensor *k,
                                      const struct cflash_tensor *v,
                                      const struct cflash_tensor *cu_seqlens_q,
                                      const struct cflash_tensor *cu_seqlens_k,
                                      int64_t max_seqlen_q, int64_t max_seqlen_k,
                                      const struct cflash_tensor *out,
                                      const struct cflash_tensor *lse,
                                      const struct cflash_attn_params *params);

/*
 * Range plans (SPEC.md section 4; MagiAttention / LocateAnything). A plan is a list of slices
 * over the global packed token axes of q [Tq, Hq, D] and k, v [Tk, Hk, D|Dv]:
 * slice n = (q_range [qs, qe), k_range [ks, ke), type). Inside a slice, with i = row - qs,
 * j = col - ks, Lq = qe - qs, Lk = ke - ks, a key is visible when (by type):
 *   CFLASH_RANGE_FULL         all
 *   CFLASH_RANGE_CAUSAL       j <= i + (Lk - Lq)        (bottom-right)
 *   CFLASH_RANGE_INV_CAUSAL   j >= i                    (top-left)
 *   CFLASH_RANGE_BAND         i <= j <= i + (Lk - Lq)   (empty when Lq > Lk)
 * A row's visible set is the union over the slices containing it, in one softmax; rows in no
 * slice are empty rows (out 0, lse -inf). A (row, col) cell in two slices is an invalid plan.
 * A plan is compiled once (validated, overlap-checked exactly, grouped by query tile) and
 * reused across calls and layers; it does not depend on heads, dims or dtypes.
 */
enum cflash_range_type {
    CFLASH_RANGE_FULL = 0,
    CFLASH_RANGE_CAUSAL = 1,
    CFLASH_RANGE_INV_CAUSAL = 2,
    CFLASH_RANGE_BAND = 3
};

typedef struct cflash_range_plan *cflash_range_plan_t;

/*
 *   q_ranges, k_ranges: int32 [n, 2] ([start, end) pairs), any strides.
 *   attn_type_map:      int32 [n] of enum cflash_range_type, or NULL (all FULL).
 *   Tq, Tk:             the token counts of the q and k axes the plan indexes.
 *   segment_offsets:    NULL, or int32 [G + 1] (LocateAnything's grouping): 0 first,
 *                       non-decreasing, last = n; group g = slices [off[g], off[g + 1]), and the
 *                       slices of one group must share one q_range (checked).
 * On OK *plan owns the compiled plan (free with cflash_range_plan_destroy). Errors:
 * INVALID_ARGUMENT naming the argument, the slice, and for overlaps both slices;
 * OUT_OF_MEMORY. *plan is untouched on error.
 */
enum cflash_status cflash_range_plan_create(cflash_range_plan_t *plan,
                                            const struct cflash_tensor *q_ranges,
                                            const struct cflash_tensor *k_ranges,
                                            const struct cflash_tensor *attn_type_map,
                                            int64_t Tq, int64_t Tk,
                                            const struct cflash_tensor *segment_offsets);
void cflash_range_plan_destroy(cflash_range_plan_t plan);
/* Number of slices kept (empty slices are dropped) and useful (visible) cells of the plan. */
int64_t cflash_range_plan_num_slices(const struct cflash_range_plan *plan);
int64_t cflash_range_plan_visible_cells(const struct cflash_range_plan *plan);
/* The sequences of a plan that is a packed batch, else 0. A packed batch: the kept slices,
 * ordered by first row, have disjoint query ranges and disjoint key ranges in the same order,
 * and are all full or all causal (a document mask). cflash_attn_range then runs it as
 * cflash_attn_varlen would (the slices, and gaps as sequences without keys or without rows)
 * unless a mask or bias is given. */
int64_t cflash_range_plan_packed_sequences(const struct cflash_range_plan *plan);

/*
 * Attention under a range plan: q [Tq, Hq, D], k [Tk, Hk, D], v [Tk, Hk, Dv] (or NULL: V := K),
 * out [Tq, Hq, Dv], lse [Hq, Tq] or NULL. Tq, Tk must match the plan's. params: the plan owns
 * the masking, so causal must be 0 and the window (-1, -1); ALiBi slopes are [Hq] (the distance
 * uses each slice's own bottom-right diagonal); softcap, sinks, scale as usual.
 * Mask / bias (SPEC.md section 5) index the plan's global axes: DENSE [1, Hv, Tq|1, Tk|1],
 * KEY_SIDE [Tk, Hv], QUERY_SIDE [Tq, Hv, >= Tk] (column = global key index).
 */
enum cflash_status cflash_attn_range(const struct cflash_tensor *q, const struct cflash_tensor *k,
                                     const struct cflash_tensor *v,
                                     const struct cflash_range_plan *plan,
                                     const struct cflash_tensor *out,
                                     const struct cflash_tensor *lse,
                                     const struct cflash_attn_params *params);

/*
 * KV caches (SPEC.md section 6): attention of new queries over a cache, with the new keys and
 * values appended in place first (flash-attn's flash_attn_with_kvcache).
 *
 * Contiguous (block_table == NULL):
 *   k_cache [Bc, Lmax, Hk, D], v_cache [Bc, Lmax, Hk, Dv] (v_cache NULL: V := K);
 *   batch entry b uses cache row cache_batch_idx[b] (int32 [B], each in [0, Bc)) or b.
 * Paged (block_table != NULL):
 *   k_cache [num_pages, page_size, Hk, D], v_cache likewise, any page_size >= 1;
 *   block_table int32 [B, max_pages]: logical key t of b is row t % page_size of page
 *   block_table[b][t / page_size]; every page used must be in [0, num_pages).
 * cache_seqlens int32 [B]: keys [0, cache_seqlens[b]) are already in the cache.
 * k_new [B, Lnew, Hk, D], v_new [B, Lnew, Hk, Dv] (both NULL: nothing appended; v_new NULL
 * with v_cache NULL: V := K): written at positions cache_seqlens[b] .. + Lnew - 1 before
 * attending. cache_seqlens itself is not changed (the caller advances it, as in flash-attn).
 * Queries q [B, Lq, Hq, D] see keys [0, cache_seqlens[b] + Lnew); causal and window align to
 * that total (bottom-right). out [B, Lq, Hq, Dv], lse [B, Hq, Lq] or NULL.
 * Errors are detected before anything is written: capacity (cache_seqlens[b] + Lnew beyond
 * Lmax or max_pages * page_size), page ids out of range, two batch entries appending to the
 * same cache row or page, dtype/shape mismatches: the cache is byte-for-byte unchanged.
 * Rotary embedding on append (flash-attn's rotary_cos / rotary_sin; needs k_new): cos, sin
 * [Lro, rotary_dim / 2] (fp32, fp16 or bf16), rotary_dim even and <= D. The new keys are
 * rotated at positions cache_seqlens[b] + t before they are written; q is rotated (in a
 * private fp32 copy; the caller's q is not changed) at cache_seqlens[b] + i when causal or a
 * window is set, else every row at cache_seqlens[b]. Pairs are (x[j], x[j + rotary_dim / 2])
 * (GPT-NeoX), or (x[2j], x[2j + 1]) with rotary_interleaved (GPT-J); dims >= rotary_dim pass.
 * Lro must cover every position used.
 * Mask / bias: DENSE layout only, [B|1, Hv, Lq|1, Lk|1] with Lk >= the longest total key count
 * (cache_seqlens[b] + Lnew); column t is logical key t of batch entry b.
 */
struct cflash_kvcache {
    const struct cflash_tensor *k_cache;
    const struct cflash_tensor *v_cache;         /* NULL: V := K (MLA) */
    const struct cflash_tensor *cache_seqlens;   /* int32 [B] */
    const struct cflash_tensor *cache_batch_idx; /* NULL or int32 [B] (contiguous only) */
    const struct cflash_tensor *block_table;     /* NULL (contiguous) or int32 [B, max_pages] */
    const struct cflash_tensor *rotary_cos;      /* NULL or [Lro, rotary_dim / 2] */
    const struct cflash_tensor *rotary_sin;      /* NULL or [Lro, rotary_dim / 2] */
    int32_t rotary_interleaved;                  /* 0: GPT-NeoX halves, 1: GPT-J pairs */
};

enum cflash_status cflash_attn_kvcache(const struct cflash_tensor *q,
                                       const struct cflash_kvcache *cache,
                                       const struct cflash_tensor *k_new,
                                       const struct cflash_tensor *v_new,
                                       const struct cflash_tensor *out,
                                       const struct cflash_tensor *lse,
                                       const struct cflash_attn_params *params);

/*
 * flash-mlm layer context (SPEC.md section 6): a cache of per-layer context K/V, owned by the
 * library, that masked-LM inference loops attend to bidirectionally next to each call's own
 * new tokens.
 *
 * An entry (one per layer_id >= 0) holds C >= 1 contexts of lengths len[0..C), each
 * [len[c], Hk, D] keys and [len[c], Hk, Dv] values (or V := K / V := K[..., :Dv] for MLA: only
 * the keys are stored), in one dtype. A cache object is not safe for concurrent calls that
 * store into it; concurrent calls that only read it are.
 */
typedef struct cflash_context_cache *cflash_context_cache_t;

enum cflash_status cflash_context_cache_create(cflash_context_cache_t *cache);
void cflash_context_cache_destroy(cflash_context_cache_t cache);
/* Drop one layer's entry (layer_id >= 0; absent is OK) or every entry (layer_id == -1). */
enum cflash_status cflash_context_cache_clear(cflash_context_cache_t cache, int64_t layer_id);

struct cflash_context_info {
    int32_t present;       /* 0: no entry for this layer (the other fields are 0) */
    int32_t v_is_k;        /* 1: V := K[..., :Dv] (MLA; nothing stored for V) */
    enum cflash_dtype dtype;
    int64_t num_contexts, Hk, D, Dv;
    int64_t total_len;     /* sum of the context lengths */
};
enum cflash_status cflash_context_cache_info(const struct cflash_context_cache *cache,
                                             int64_t layer_id, struct cflash_context_info *info);
/* Context lengths of an entry: lengths int64 [num_contexts] (or NULL). */
enum cflash_status cflash_context_cache_lengths(const struct cflash_context_cache *cache,
                                                int64_t layer_id, int64_t *lengths);

enum cflash_prefill_mode {
    CFLASH_PREFILL_REPLACE = 0, /* the call's new K/V become the layer's contexts (flash-mlm) */
    CFLASH_PREFILL_APPEND = 1   /* they are appended to the contexts the call attended */
};

/*
 * Store K/V as layer_id's contexts, outside an attention call (flash-mlm's
 * InferenceCache.prefill_kv_cache). Dense: k [B, L, Hk, D], v [B, L, Hk, Dv] -> B contexts of
 * length L. Packed: k [Tk, Hk, D], v [Tk, Hk, Dv] with cu_seqlens int32 [B + 1] -> B contexts.
 * v NULL: V := K; v a view of k's first Dv columns (same data pointer and strides): V := K[..., :Dv].
 * REPLACE drops the old entry; APPEND adds sequence b's tokens to context b (an absent entry is
 * created; a present one must have B contexts and the same Hk, D, Dv, dtype and V kind).
 * On any error the cache is unchanged.
 */
enum cflash_status cflash_context_cache_store(cflash_context_cache_t cache, int64_t layer_id,
                                              const struct cflash_tensor *k,
                                              const struct cflash_tensor *v,
                                              const struct cflash_tensor *cu_seqlens,
                                              enum cflash_prefill_mode mode);

/*
 * flash-mlm attention: every query row of sequence b sees, bidirectionally (no causal mask),
 *   - its context: context ctx(b) of cache[layer_id] (ctx(b) = 0 with one context, b with B,
 *     ctx_idx[b] when ctx_idx is given), nothing when the layer has no entry (a miss);
 *   - its new tokens: keys of sequence b of k/v, or with `cumulative` (flash-mlm's
 *     causal_query_seq_attn, packed calls only) the new keys of sequences 0..b.
 * Dense: q [B, Lq, Hq, D], k [B, Lk, Hk, D], v [B, Lk, Hk, Dv] (NULL: V := K), out
 * [B, Lq, Hq, Dv], lse [B, Hq, Lq]. Packed: q [Tq, Hq, D] with cu_seqlens_q [B + 1], k / v
 * [Tk, ...] with cu_seqlens_k (NULL: cu_seqlens_q, then Tk must equal Tq), out [Tq, Hq, Dv],
 * lse [Hq, Tq].
 * With prefill, the call's new K/V are stored as the layer's contexts after attending (mode:
 * REPLACE or APPEND to context ctx(b), in batch order), exactly as cflash_context_cache_store.
 * params: scale, softcap, sinks, num_threads, kernel; causal, windows, ALiBi, masks and biases
 * are UNSUPPORTED here. An entry whose Hk, D, Dv, dtype or V kind differ from the call's, or
 * whose context count is neither 1 nor B without ctx_idx, is INVALID_ARGUMENT (never a silent
 * miss); nothing is written (out, lse, cache) on any error.
 */
struct cflash_mlm_args {
    cflash_context_cache_t cache;     /* NULL: no context, no prefill */
    int64_t layer_id;                 /* >= 0 when cache is given */
    const struct cflash_tensor *ctx_idx; /* NULL or int32 [B], each in [0, num_contexts) */
    int32_t cumulative;               /* 0 or 1 (packed calls) */
    int32_t prefill;                  /* 0 or 1: store this call's K/V after attending */
    enum cflash_prefill_mode prefill_mode;
};

enum cflash_status cflash_attn_mlm(const struct cflash_tensor *q, const struct cflash_tensor *k,
                                   const struct cflash_tensor *v,
                                   const struct cflash_tensor *cu_seqlens_q,
                                   const struct cflash_tensor *cu_seqlens_k,
                                   const struct cflash_mlm_args *mlm,
                                   const struct cflash_tensor *out,
                                   const struct cflash_tensor *lse,
                                   const struct cflash_attn_params *params);

/*
 * Merge two partial attention states over disjoint key sets (SPEC.md section 7).
 *   o1, o2, out: [T, H, Dv] (rank 3) with lse1, lse2, lse_out [H, T]; or [B, L, H, Dv] (rank 4)
 *   with lse [B, H, L]. o tensors: fp32 | fp16 | bf16 (o1, o2 one dtype; out that dtype or
 *   fp32); lse tensors fp32. out / lse_out may alias o1 / lse1 element for element (in place).
 *   lse_out may be NULL. -inf (+) x = x; -inf (+) -inf gives out 0, lse -inf.
 */
enum cflash_status cflash_merge(const struct cflash_tensor *o1, const struct cflash_tensor *lse1,
                                const struct cflash_tensor *o2, const struct cflash_tensor *lse2,
                                const struct cflash_tensor *out,
                                const struct cflash_tensor *lse_out);

/* cflash_merge queued on a CUDA stream (a cudaStream_t; NULL: the legacy default stream) for
 * CUDA tensors; for CPU tensors the stream is ignored. cflash_merge is this with NULL. */
enum cflash_status cflash_merge_on_stream(const struct cflash_tensor *o1, const struct cflash_tensor *lse1,
                                          const struct cflash_tensor *o2, const struct cflash_tensor *lse2,
                                          const struct cflash_tensor *out,
                                          const struct cflash_tensor *lse_out, void *cuda_stream);

/*
 * Workspace the CPU backend allocates per call for these sizes (bytes, all threads together):
 * bounded by the tile sizes, independent of Lq and Lk. Returns 0 for invalid sizes.
 */
size_t cflash_cpu_workspace_size(int64_t Hq, int64_t Hk, int64_t D, int64_t Dv,
                                 int32_t num_threads);

/* The message of this thread's last failed call ("" if none). Valid until the next call on
 * this thread. */
const char *cflash_last_error(void);

/* "OK", "INVALID_ARGUMENT", ... */
const char *cflash_status_string(enum cflash_status status);

/* Name of a kernel ("ref", "avx512", ...); "unknown" for bad values. */
const char *cflash_kernel_name(enum cflash_kernel kernel);

/* Whether this machine can run the kernel (AUTO and REFERENCE: always 1). */
int cflash_kernel_available(enum cflash_kernel kernel);

/* The kernel AUTO resolves to on this machine (after CFLASH_KERNEL). */
enum cflash_kernel cflash_kernel_auto(void);

/* Thread count used when params->num_threads == 0 (CFLASH_NUM_THREADS or the core count). */
int32_t cflash_default_num_threads(void);

#ifdef __cplusplus
}
#endif
#endif /* CFLASH_H */
