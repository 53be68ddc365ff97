/*
 * internal.h - the one internal work description every backend executes.
 *
 * api.c validates the public arguments once and plan.c compiles them into a struct attn_work:
 * pointers and element strides of q, k, v, out and lse, the score rules shared by all rows
 * (scale, softcap, ALiBi, sinks), and a list of segments, each with a list of slices. Kernels
 * trust this description completely; nothing here is validated again.
 *
 * Coordinates: every row and column index below is a token index along the (packed) q or k
 * axis of one batch entry `b`; for dense inputs b selects the batch via the batch stride, for
 * packed inputs b is the sequence and the batch stride is 0. A slice is a rectangle
 * [q0, q1) x [k0, k1) cut by a diagonal band dlo <= col - row <= dhi; a row's visible keys are
 * the union of the slices of its segment that contain it, computed in one softmax. This is
 * how dense, varlen, range plans, document masks and caches all reach the same kernels.
 */
#ifndef CFLASH_INTERNAL_H
#define CFLASH_INTERNAL_H

#include "cflash.h"

#include <pthread.h>
#include <stdint.h>

/* A band bound that never clips, and never overflows when a row or column is added to it. */
#define BAND_UNBOUNDED ((int64_t)1 << 60)

struct attn_slice {
    int64_t q0, q1;     /* query rows [q0, q1) */
    int64_t k0, k1;     /* key rows [k0, k1) */
    int64_t dlo, dhi;   /* visible iff dlo <= col - row <= dhi */
    int64_t alibi_diag; /* ALiBi distance is |col - row - alibi_diag| */
};

struct attn_segment {
    int64_t b;          /* batch index: pointer offset b * stride_b, ALiBi [B, Hq] row */
    int64_t qorg, korg; /* the sequence's first row and key: origin of local mask/bias coords */
    int64_t kvb;        /* batch row of the K/V operands (b, or cache_batch_idx[b]) */
    int64_t q0, q1;     /* the rows this segment owns (every row is written exactly once) */
    int64_t s0, s1;     /* its slices: work->slices[s0 .. s1) */
};

/* One strided operand. Element strides; `sb` is the batch stride (0 for packed inputs). */
struct attn_operand {
    char *data;
    enum cflash_dtype dtype;
    int64_t es;         /* element size in bytes */
    int64_t sb, st, sh; /* batch, token, head strides (elements); head-dim stride is 1 */
};

/* A mask or bias source: element (b, h, row, col) at
 *   data[b * sb + (h / hdiv) * sh + (row - (q_local ? qorg : 0)) * sq + (col - (k_local ? korg : 0)) * sk]
 * (broadcast axes have stride 0). Every layout of SPEC.md section 5 is this with other strides
 * and origins. */
struct attn_scoresrc {
    const char *data;   /* NULL: absent */
    enum cflash_dtype dtype;
    int64_t sb, sh, sq, sk, hdiv;
    int q_local, k_local;
};

struct attn_work {
    int64_t B, Hq, Hk, D, Dv;
    struct attn_operand q, k, v, out;
    /* lse: element (b, h, t) at lse_data[b * lse_sb + h * lse_sh + t * lse_st]; NULL if none */
    float *lse_data;
    int64_t lse_sb, lse_sh, lse_st;

    float scale;   /* resolved (default already applied) */
    float softcap; /* 0 = off */
    const float *alibi; /* NULL or slope (b, h) at alibi[b * alibi_sb + h * alibi_sh] */
    int64_t alibi_sb, alibi_sh;
    const float *sinks; /* NULL or sink logit of head h at sinks[h * sinks_sh] */
    int64_t sinks_sh;

    struct attn_scoresrc mask, bias;

    /* Paged K/V (NULL: contiguous): key t of segment sg lives in page
     * block_table[sg->b * bt_sb + (t / page_size) * bt_sp], row t % page_size; the K/V
     * operands' batch stride `sb` is then the page stride. */
    const int32_t *block_table;
    int64_t bt_sb, bt_sp, page_size;

    int64_t num_segments;
    const struct attn_segment *segments;
    const struct attn_slice *slices;

    int32_t num_threads; /* resolved, >= 1 */
};

/* ---- status messages (api.c) ---- */
enum cflash_status cflash_set_error(enum cflash_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#define INVALID(...) cflash_set_error(CFLASH_STATUS_INVALID_ARGUMENT, __VA_ARGS__)
#define CHECK(expr) do { enum cflash_status st_ = (expr); if (st_) return st_; } while (0)

/* ---- api.c: argument checks shared by the entry points; each returns OK or sets a message
 * naming `name` ---- */
const char *api_dtype_name(enum cflash_dtype t);
/* rank, dtype, device, shape, strides below 2^53, data != NULL when non-empty */
enum cflash_status check_tensor(const char *name, const struct cflash_tensor *t, int ndim);
enum cflash_status check_device(const char *name, const struct cflash_tensor *t, const struct cflash_tensor *q);
enum cflash_status require_cpu(const char *name, const struct cflash_tensor *t);
enum cflash_status require_cpu_params(const struct cflash_attn_params *p);
enum cflash_status check_float(const char *name, const struct cflash_tensor *t);
enum cflash_status check_dtype(const char *name, const struct cflash_tensor *t, enum cflash_dtype want);
enum cflash_status check_dim(const char *name, const struct cflash_tensor *t, int axis,
                             int64_t want, const char *what);
enum cflash_status check_unit_last(const char *name, const struct cflash_tensor *t);
/* outputs: positive strides, no two elements sharing memory */
enum cflash_status check_output_layout(const char *name, const struct cflash_tensor *t);
enum cflash_status check_params(const struct cflash_attn_params *p, int64_t B, int64_t Hq);
/* q, k, v, out of a dense (rank 4) or packed (rank 3) call; fills Hq, Hk, D, Dv */
enum cflash_status check_qkvo(int rank, const struct cflash_tensor *q, const struct cflash_tensor *k,
                              const struct cflash_tensor *v, const struct cflash_tensor *out,
                              int64_t *Hq, int64_t *Hk, int64_t *D, int64_t *Dv);
enum cflash_status check_lse(const struct cflash_tensor *lse, int dense, int64_t B, int64_t Hq,
                             int64_t T);
/* int32 [B + 1] (B < 0: any), 0 first, non-decreasing, last == total, longest <= hint (-1: none) */
enum cflash_status check_cu_seqlens(const char *name, const char *hint_name,
                                    const struct cflash_tensor *cu, int64_t B, int64_t total,
                                    int64_t hint);
/* Per-sequence attention (sequence b: rows [qs, qs + lq), keys [ks, ks + lk)) of validated
 * operands of rank 4 (dense) or 3 (packed); mask / bias may be NULL. */
enum cflash_status run_attention(int rank, const struct cflash_tensor *q, const struct cflash_tensor *k,
                                 const struct cflash_tensor *v, const struct cflash_tensor *out,
                                 const struct cflash_tensor *lse, const struct cflash_attn_params *p,
                                 int64_t B, int64_t Hq, int64_t Hk, int64_t D, int64_t Dv,
                                 const int64_t *qs, const int64_t *lq, const int64_t *ks, const int64_t *lk,
                                 const struct attn_scoresrc *mask, const struct attn_scoresrc *bias);
#ifdef CFLASH_HAVE_CUDA
/* merge of CUDA tensors, any o / out dtypes (api.c; context.c's passes) */
enum cflash_status cuda_merge_passes(const struct cflash_tensor *o1, const struct cflash_tensor *lse1,
                                     const struct cflash_tensor *o2, const struct cflash_tensor *lse2,
                                     const struct cflash_tensor *out, const struct cflash_tensor *lse_out, void *stream);
#endif
enum cflash_status cpu_merge(const struct cflash_tensor *o1, const struct cflash_tensor *lse1,
                             const struct cflash_tensor *o2, const struct cflash_tensor *lse2,
                             const struct cflash_tensor *out, const struct cflash_tensor *lse_out);

/* ---- plan.c: per-sequence masks -> segments and slices ---- */
struct attn_plan {
    struct attn_segment *segments;
    struct attn_slice *slices;
    int64_t num_segments, num_slices;
};
/* One segment and one slice per sequence. Sequence b has rows [qs[b], qs[b] + lq[b]) and keys
 * [ks[b], ks[b] + lk[b]). Returns OUT_OF_MEMORY or OK. */
enum cflash_status plan_sequences(struct attn_plan *plan, int64_t B, const int64_t *qs,
                                  const int64_t *lq, const int64_t *ks, const int64_t *lk,
                                  const struct cflash_attn_params *p);
void plan_free(struct attn_plan *plan);

/* Address of key row `col` (kv head kvh) of operand o (w->k or w->v) for segment sg: the one
 * place that knows contiguous, cache-indexed and paged layouts. */
static inline const char *kv_row(const struct attn_work *w, const struct attn_operand *o,
                                 const struct attn_segment *sg, int64_t col, int64_t kvh) {
    int64_t base;
    if (w->block_table) {
        const int64_t page = w->block_table[sg->b * w->bt_sb + (col / w->page_size) * w->bt_sp];
        base = page * o->sb + (col % w->page_size) * o->st;
    } else {
        base = sg->kvb * o->sb + col * o->st;
    }
    return o->data + (base + kvh * o->sh) * o->es;
}

/* Offset of element (b, h, row, col) of a mask/bias source for segment sg. */
static inline int64_t scoresrc_offset(const struct attn_scoresrc *m, const struct attn_segment *sg,
                                      int64_t h, int64_t row, int64_t col) {
    return sg->b * m->sb + (h / m->hdiv) * m->sh + (row - (m->q_local ? sg->qorg : 0)) * m->sq +
           (col - (m->k_local ? sg->korg : 0)) * m->sk;
}

/* ---- range.c: a compiled range plan (public handle cflash_range_plan_t) ---- */
#define RANGE_BLOCK_ROWS 128 /* rows per segment: the largest query tile (tiled_geometry) */
#define RANGE_PLAN_MAX_GPUS 16
struct cflash_range_plan {
    int64_t Tq, Tk;
    int64_t num_slices;          /* distinct non-empty slices */
    struct attn_slice *unique;   /* [num_slices], sorted by (q0, k0) */
    int64_t num_segments;        /* ceil(Tq / RANGE_BLOCK_ROWS) row blocks */
    struct attn_segment *segments;
    struct attn_slice *slices;   /* per segment, copies of the slices that intersect it */
    /* A plan that is a packed batch (range.c, plan_as_varlen): disjoint slices in q and k
     * order, all full or all causal (bottom-right, as a slice's diagonal is), no other rule.
     * The CUDA backend then runs the packed-sequence kernel on cu_q / cu_k (the slices, with
     * documents for the gaps between them: rows without keys, keys without rows) instead of
     * walking slices. varlen_causal: -1 not a packed batch, 0 full, 1 causal. */
    int32_t varlen_causal;
    int64_t varlen_B, varlen_max_q, varlen_max_k;
    int32_t *varlen_cu;          /* [2 (varlen_B + 1)]: cu_q, then cu_k */
    /* device copies (range.c, range_plan_on_device): made on a GPU's first call with the plan,
     * under gpu_lock (calls on one plan may come from several threads), freed with the plan */
    pthread_mutex_t gpu_lock;
    int32_t num_gpus;
    int32_t gpu_device[RANGE_PLAN_MAX_GPUS];
    void *gpu_copy[RANGE_PLAN_MAX_GPUS];
};
#ifdef CFLASH_HAVE_CUDA
struct cuda_slice;
/* The plan's slices and 128-row block list on CUDA device `device` (struct cuda_fwd's `slices`
 * and `tile_slices`; a packed batch's cu_q then cu_k, else NULL), uploaded on the first call
 * there. OUT_OF_MEMORY / DEVICE_ERROR / UNSUPPORTED (more than RANGE_PLAN_MAX_GPUS devices). */
enum cflash_status range_plan_on_device(const struct cflash_range_plan *plan, int32_t device,
                                        const struct cuda_slice **slices, const int32_t **tiles,
                                        const int32_t **varlen_cu);
#endif

/* ---- threads.c: run fn(ctx, item, thread) for item in [0, n) on num_threads threads ---- */
typedef void (*parallel_fn)(void *ctx, int64_t item, int32_t thread);
enum cflash_status cpu_parallel_for(int32_t num_threads, int64_t n, parallel_fn fn, void *ctx);

/* ---- cpu backend ---- */
/* Rotary embedding tables: cos/sin element (pos, j) at cos[pos * s0 + j * s1]. */
struct rotary {
    const char *cos, *sin;
    enum cflash_dtype dtype;
    int64_t s0, s1, dim;
    int interleaved;
};
/* Rotate the first ro->dim entries of x (fp32) to position pos. */
void cpu_rotary(float *x, const struct rotary *ro, int64_t pos);
/* Write Lnew new rows of k (rotated when ro != NULL) and v (unless V := K) of segment sg's
 * batch entry at cache positions start .. start + Lnew - 1 (validated by the caller). */
void cpu_kv_append(const struct attn_work *w, const struct attn_segment *sg, int64_t start,
                   int64_t Lnew, const struct attn_operand *k_new, const struct attn_operand *v_new,
                   const struct rotary *ro);
/* AUTO -> CFLASH_KERNEL or the best ISA; INVALID_ARGUMENT for an unknown CFLASH_KERNEL value,
 * UNSUPPORTED for a kernel this CPU cannot run. */
enum cflash_status cpu_resolve_kernel(enum cflash_kernel requested, enum cflash_kernel *kernel);
enum cflash_status cpu_ref_attention(const struct attn_work *w);
/* prologue (may be NULL) runs once all workspace is allocated, before any output is computed:
 * the KV-cache append goes there, so an allocation failure leaves the cache unchanged. */
enum cflash_status cpu_tiled_attention(const struct attn_work *w, enum cflash_kernel kernel,
                                       void (*prologue)(void *), void *prologue_ctx);
size_t cpu_tiled_workspace_per_thread(int64_t Hq, int64_t Hk, int64_t D, int64_t Dv);

/* Per-ISA entry points of src/cpu/fwd_tiled.c (compiled once per instruction set). A kernel
 * processes one work item: segment, kv head, query tile; `ws` is its thread's workspace. */
struct tiled_geometry {
    int64_t rows_per_tile; /* query positions per tile (each carries G = Hq/Hk heads) */
    int64_t max_rows;      /* rows_per_tile * G rounded up to the row block */
};
void tiled_geometry(struct tiled_geometry *g, int64_t Hq, int64_t Hk);
/* Rows of one tile from their running state (m in base 2, l, unnormalized O with row stride
 * ostride): add the sink, normalize, store out and lse (dispatch.c). */
void tiled_finalize(const struct attn_work *w, const struct attn_segment *sg, int64_t kvh,
                    int64_t i0, int64_t nrows, const float *m, const float *l, const float *o,
                    int64_t ostride);
/* Keys outside [klo, khi) are skipped. partial == NULL: normalize and store out/lse; else write
 * the unnormalized state there: O [nrows][Dv], then m [nrows] (base 2), l [nrows]. */
#define DECLARE_TILED(isa) \
    void cpu_tiled_item_##isa(const struct attn_work *w, const struct tiled_geometry *g, \
                              int64_t seg, int64_t kvh, int64_t tile, int64_t klo, int64_t khi, \
                              float *partial, void *ws);
DECLARE_TILED(generic)
DECLARE_TILED(avx2)
DECLARE_TILED(avx512)
DECLARE_TILED(avx512bf16)

#endif /* CFLASH_INTERNAL_H */
