/*
 * api.c - the public entry points: validate every argument once, compile the call into a
 * struct attn_work (plan.c), route it to a kernel. Status strings and the per-thread error
 * message live here too. Nothing below a successful validation can fail for a reason the
 * caller could have avoided, and nothing is written before validation succeeds.
 */
#include "internal.h"
#ifdef CFLASH_HAVE_CUDA
#include "cuda/cuda.h"
#endif
#include "cpu/convert.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- messages ---- */

static _Thread_local char last_error[512];

enum cflash_status cflash_set_error(enum cflash_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return st;
}

const char *cflash_last_error(void) { return last_error; }

const char *cflash_status_string(enum cflash_status status) {
    switch (status) {
    case CFLASH_STATUS_OK: return "OK";
    case CFLASH_STATUS_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case CFLASH_STATUS_UNSUPPORTED: return "UNSUPPORTED";
    case CFLASH_STATUS_OUT_OF_MEMORY: return "OUT_OF_MEMORY";
    case CFLASH_STATUS_DEVICE_ERROR: return "DEVICE_ERROR";
    }
    return "UNKNOWN_STATUS";
}

struct cflash_attn_params cflash_attn_params_default(void) {
    struct cflash_attn_params p = CFLASH_ATTN_PARAMS_INIT;
    return p;
}

int32_t cflash_default_num_threads(void) {
    const char *env = getenv("CFLASH_NUM_THREADS");
    if (env && *env) {
        char *end;
        long n = strtol(env, &end, 10);
        if (*end == '\0' && n >= 1 && n <= 4096) return (int32_t)n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n >= 1 ? (int32_t)(n < 4096 ? n : 4096) : 1;
}

/* ---- tensor checks; each returns OK or sets a message naming `name` ---- */


const char *api_dtype_name(enum cflash_dtype t) {
    switch (t) {
    case CFLASH_DTYPE_F32: return "float32";
    case CFLASH_DTYPE_F16: return "float16";
    case CFLASH_DTYPE_BF16: return "bfloat16";
    case CFLASH_DTYPE_I32: return "int32";
    case CFLASH_DTYPE_U8: return "uint8";
    }
    return "unknown";
}

static int is_float_dtype(enum cflash_dtype t) {
    return t == CFLASH_DTYPE_F32 || t == CFLASH_DTYPE_F16 || t == CFLASH_DTYPE_BF16;
}

/* Rank, dtype, device, non-negative shape, and data != NULL when non-empty. */
enum cflash_status check_tensor(const char *name, const struct cflash_tensor *t, int ndim) {
    if (!t) return INVALID("%s: must not be NULL", name);
    if (t->ndim != ndim) return INVALID("%s: must have %d dimensions, got %d", name, ndim, (int)t->ndim);
    if ((unsigned)t->dtype > CFLASH_DTYPE_U8) return INVALID("%s: unknown dtype %d", name, (int)t->dtype);
    if (t->device != CFLASH_DEVICE_CPU) {
        if (t->device != CFLASH_DEVICE_CUDA) return INVALID("%s: unknown device type %d", name, (int)t->device);
#ifndef CFLASH_HAVE_CUDA
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "%s: CUDA tensors need the CUDA backend, which this build does not have", name);
#endif
        /* CUDA tensors pass the shape checks; entry points the CUDA backend does not serve
         * refuse them with require_cpu, the others check that all tensors share q's device */
    }
    /* Element counts and offsets stay far from int64 overflow: each below 2^53. */
    const int64_t limit = (int64_t)1 << 53;
    int64_t numel = 1, span = 0;
    for (int i = 0; i < ndim; i++) {
        const int64_t n = t->shape[i], st = t->stride[i];
        const int64_t s = st == INT64_MIN ? INT64_MAX : st < 0 ? -st : st;
        if (n < 0) return INVALID("%s: shape[%d] = %lld is negative", name, i, (long long)n);
        if (n > limit || (n > 0 && numel > limit / n)) return INVALID("%s: more than 2^53 elements", name);
        numel *= n;
        if (n > 1 && (s > limit || (n - 1) > (limit - span) / (s > 0 ? s : 1)))
            return INVALID("%s: strides reach past 2^53 elements", name);
        if (n > 1) span += (n - 1) * s;
    }
    if (numel == 0) return CFLASH_STATUS_OK;
    if (numel > 0 && !t->data) return INVALID("%s: data is NULL but the tensor has %lld elements", name, (long long)numel);
    return CFLASH_STATUS_OK;
}

/* Entry points (or options) the CUDA backend does not serve yet: UNSUPPORTED for a GPU tensor. */
enum cflash_status require_cpu(const char *name, const struct cflash_tensor *t) {
    if (t && t->device == CFLASH_DEVICE_CUDA)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "%s: this call is not served by the CUDA backend yet (CPU tensors only)", name);
    return CFLASH_STATUS_OK;
}

enum cflash_status require_cpu_params(const struct cflash_attn_params *p) {
    if (!p) return CFLASH_STATUS_OK;
    CHECK(require_cpu("alibi_slopes", p->alibi_slopes));
    CHECK(require_cpu("sinks", p->sinks));
    CHECK(require_cpu("mask", p->mask));
    return require_cpu("bias", p->bias);
}

/* t (if given) lives where q does: same device type and device id. */
enum cflash_status check_device(const char *name, const struct cflash_tensor *t, const struct cflash_tensor *q) {
    if (!t || (t->device == q->device && (t->device == CFLASH_DEVICE_CPU || t->device_id == q->device_id)))
        return CFLASH_STATUS_OK;
    return INVALID("%s: must be on q's device (%s:%d), got %s:%d", name, q->device == CFLASH_DEVICE_CPU ? "cpu" : "cuda",
                   (int)q->device_id, t->device == CFLASH_DEVICE_CPU ? "cpu" : "cuda", (int)t->device_id);
}

enum cflash_status check_float(const char *name, const struct cflash_tensor *t) {
    if (!is_float_dtype(t->dtype))
        return INVALID("%s: dtype must be float32, float16 or bfloat16, got %s", name, api_dtype_name(t->dtype));
    return CFLASH_STATUS_OK;
}

enum cflash_status check_dtype(const char *name, const struct cflash_tensor *t, enum cflash_dtype want) {
    if (t->dtype != want)
        return INVALID("%s: dtype must be %s, got %s", name, api_dtype_name(want), api_dtype_name(t->dtype));
    return CFLASH_STATUS_OK;
}

enum cflash_status check_dim(const char *name, const struct cflash_tensor *t, int axis,
                                    int64_t want, const char *what) {
    if (t->shape[axis] != want)
        return INVALID("%s: shape[%d] must be %s = %lld, got %lld", name, axis, what, (long long)want, (long long)t->shape[axis]);
    return CFLASH_STATUS_OK;
}

enum cflash_status check_unit_last(const char *name, const struct cflash_tensor *t) {
    const int a = t->ndim - 1;
    if (t->shape[a] > 1 && t->stride[a] != 1)
        return INVALID("%s: the head-dim axis (last) must have stride 1, got %lld", name, (long long)t->stride[a]);
    return CFLASH_STATUS_OK;
}

/* Outputs: every axis of size > 1 has a positive stride, and no two elements share memory
 * (sorted by stride, each axis steps past the whole extent of the smaller ones). */
enum cflash_status check_output_layout(const char *name, const struct cflash_tensor *t) {
    int order[CFLASH_MAX_DIMS], n = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] == 0) return CFLASH_STATUS_OK; /* empty: nothing is written */
        if (t->shape[i] == 1) continue;
        if (t->stride[i] <= 0)
            return INVALID("%s: output strides must be positive, stride[%d] = %lld", name, i, (long long)t->stride[i]);
        order[n++] = i;
    }
    for (int a = 1; a < n; a++)
        for (int b = a; b > 0 && t->stride[order[b]] < t->stride[order[b - 1]]; b--) {
            int x = order[b]; order[b] = order[b - 1]; order[b - 1] = x;
        }
    int64_t extent = 1; /* elements spanned by the axes so far */
    for (int a = 0; a < n; a++) {
        const int i = order[a];
        if (t->stride[i] < extent)
            return INVALID("%s: output elements overlap (stride[%d] = %lld is smaller than the extent %lld of the inner axes)", name, i, (long long)t->stride[i], (long long)extent);
        extent = t->stride[i] * (t->shape[i] - 1) + extent;
    }
    return CFLASH_STATUS_OK;
}

/* ---- parameters ---- */

enum cflash_status check_params(const struct cflash_attn_params *p, int64_t B, int64_t Hq) {
    if (!isfinite(p->scale)) return INVALID("scale: must be finite (0 selects 1/sqrt(D))");
    if (!isfinite(p->softcap) || p->softcap < 0.0f) return INVALID("softcap: must be finite and >= 0 (0 = off), got %g", (double)p->softcap);
    if (p->causal != 0 && p->causal != 1) return INVALID("causal: must be 0 or 1, got %d", (int)p->causal);
    if (p->align != CFLASH_ALIGN_BOTTOM_RIGHT && p->align != CFLASH_ALIGN_TOP_LEFT)
        return INVALID("align: must be CFLASH_ALIGN_BOTTOM_RIGHT or CFLASH_ALIGN_TOP_LEFT, got %d", (int)p->align);
    if (p->window_left < -1) return INVALID("window_left: must be >= -1 (-1 = unbounded), got %lld", (long long)p->window_left);
    if (p->window_right < -1) return INVALID("window_right: must be >= -1 (-1 = unbounded), got %lld", (long long)p->window_right);
    if (p->num_threads < 0) return INVALID("num_threads: must be >= 0 (0 = default), got %d", (int)p->num_threads);
    if ((unsigned)p->kernel >= CFLASH_KERNEL_COUNT) return INVALID("kernel: unknown kernel %d", (int)p->kernel);
    if (p->alibi_slopes) {
        const struct cflash_tensor *a = p->alibi_slopes;
        if (!a || a->ndim < 1 || a->ndim > 2) return INVALID("alibi_slopes: must have shape [Hq] or [B, Hq]");
        CHECK(check_tensor("alibi_slopes", a, a->ndim));
        CHECK(check_dtype("alibi_slopes", a, CFLASH_DTYPE_F32));
        CHECK(check_dim("alibi_slopes", a, a->ndim - 1, Hq, "Hq"));
        if (a->ndim == 2) CHECK(check_dim("alibi_slopes", a, 0, B, "B"));
    }
    if (p->sinks) {
        CHECK(check_tensor("sinks", p->sinks, 1));
        CHECK(check_dtype("sinks", p->sinks, CFLASH_DTYPE_F32));
        CHECK(check_dim("sinks", p->sinks, 0, Hq, "Hq"));
    }
    enum cflash_kernel kernel;
    CHECK(cpu_resolve_kernel(p->kernel, &kernel));
    return CFLASH_STATUS_OK;
}

/* A mask or bias (SPEC.md section 5): dtype, layout and shape for this call; fills `src`.
 * packed: 0 for dense calls (layout DENSE, [B|1, Hv, Lq|1, Lk|1] exactly), 1 for packed calls
 * (Lq / Lk = the longest sequences; Tq, Tk the token counts). */
static enum cflash_status check_scoresrc(const char *name, const struct cflash_tensor *t,
                                         enum cflash_layout layout, int is_mask, int packed,
                                         int64_t B, int64_t Hq, int64_t Hk, int64_t Lq, int64_t Lk,
                                         int64_t Tq, int64_t Tk, struct attn_scoresrc *src) {
    memset(src, 0, sizeof *src);
    if (!t) return CFLASH_STATUS_OK;
    const int ndim = layout == CFLASH_LAYOUT_DENSE ? 4 : layout == CFLASH_LAYOUT_KEY_SIDE ? 2 : 3;
    if ((unsigned)layout > CFLASH_LAYOUT_QUERY_SIDE) return INVALID("%s: unknown layout %d", name, (int)layout);
    if (layout != CFLASH_LAYOUT_DENSE && !packed)
        return INVALID("%s: the key-side and query-side layouts are for packed (varlen) calls; dense calls use the DENSE layout", name);
    CHECK(check_tensor(name, t, ndim));
    if (is_mask && t->dtype != CFLASH_DTYPE_U8) return INVALID("%s: dtype must be uint8/bool (nonzero = keep), got %s", name, api_dtype_name(t->dtype));
    if (!is_mask && !is_float_dtype(t->dtype)) return INVALID("%s: dtype must be float32, float16 or bfloat16, got %s", name, api_dtype_name(t->dtype));
    const int ha = 1; /* the heads axis, in every layout */
    const int64_t Hv = t->shape[ha];
    if (Hv != 1 && Hv != Hk && Hv != Hq)
        return INVALID("%s: shape[%d] (head variants Hv) must be 1, Hk (%lld) or Hq (%lld), got %lld", name, ha, (long long)Hk, (long long)Hq, (long long)Hv);
    src->data = t->data;
    src->dtype = t->dtype;
    src->hdiv = Hq / Hv;
    src->sh = Hv > 1 ? t->stride[ha] : 0;
    if (layout == CFLASH_LAYOUT_DENSE) {
        const int64_t want[4] = {B, Hv, Lq, Lk};
        const char *what[4] = {"B", "Hv", packed ? "the longest query sequence" : "Lq", packed ? "the longest key sequence" : "Lk"};
        for (int a = 0; a < 4; a += (a == 0 ? 2 : 1)) {
            const int64_t n = t->shape[a];
            if (n == 1) continue;
            if (packed && a >= 2 ? n < want[a] : n != want[a])
                return INVALID("%s: shape[%d] must be 1 or %s%s (%lld), got %lld", name, a, packed && a >= 2 ? ">= " : "", what[a], (long long)want[a], (long long)n);
        }
        src->sb = t->shape[0] > 1 ? t->stride[0] : 0;
        src->sq = t->shape[2] > 1 ? t->stride[2] : 0;
        src->sk = t->shape[3] > 1 ? t->stride[3] : 0;
        src->q_local = src->k_local = 1;
    } else if (layout == CFLASH_LAYOUT_KEY_SIDE) {
        if (t->shape[0] != Tk) return INVALID("%s: key-side layout [Tk, Hv]: shape[0] must be Tk = %lld, got %lld", name, (long long)Tk, (long long)t->shape[0]);
        src->sk = t->stride[0];
        src->k_local = 0;
    } else {
        if (t->shape[0] != Tq) return INVALID("%s: query-side layout [Tq, Hv, max_seqlen_k]: shape[0] must be Tq = %lld, got %lld", name, (long long)Tq, (long long)t->shape[0]);
        if (t->shape[2] < Lk) return INVALID("%s: query-side layout: shape[2] must be >= the longest key sequence (%lld), got %lld", name, (long long)Lk, (long long)t->shape[2]);
        src->sq = t->stride[0];
        src->sk = t->stride[2];
        src->q_local = 0;
        src->k_local = 1;
    }
    return CFLASH_STATUS_OK;
}

/* q, k, v, out: shared rules of dense (rank 4, seq axis 1) and packed (rank 3, seq axis 0).
 * Fills Hq, Hk, D, Dv. */
enum cflash_status check_qkvo(int rank, const struct cflash_tensor *q, const struct cflash_tensor *k,
                                     const struct cflash_tensor *v, const struct cflash_tensor *out,
                                     int64_t *Hq, int64_t *Hk, int64_t *D, int64_t *Dv) {
    const int ha = rank - 2, da = rank - 1, la = rank - 3; /* heads, head dim, keys axis */
    CHECK(check_tensor("q", q, rank));
    CHECK(check_float("q", q));
    CHECK(check_unit_last("q", q));
    CHECK(check_tensor("k", k, rank));
    CHECK(check_device("k", k, q));
    if (k->dtype != q->dtype) return INVALID("k: dtype must equal q's (%s), got %s", api_dtype_name(q->dtype), api_dtype_name(k->dtype));
    CHECK(check_unit_last("k", k));
    *Hq = q->shape[ha];
    *Hk = k->shape[ha];
    *D = q->shape[da];
    if (*Hq < 1) return INVALID("q: number of heads must be >= 1");
    if (*Hk < 1) return INVALID("k: number of heads must be >= 1");
    if (*Hq % *Hk) return INVALID("k: Hq (%lld) must be a multiple of Hk (%lld)", (long long)*Hq, (long long)*Hk);
    if (*D < 1 || *D > CFLASH_MAX_HEAD_DIM) return INVALID("q: head dim D must be in [1, %d], got %lld", CFLASH_MAX_HEAD_DIM, (long long)*D);
    CHECK(check_dim("k", k, da, *D, "D"));
    if (rank == 4) CHECK(check_dim("k", k, 0, q->shape[0], "B"));
    if (v) {
        CHECK(check_tensor("v", v, rank));
        CHECK(check_device("v", v, q));
        if (v->dtype != q->dtype) return INVALID("v: dtype must equal q's (%s), got %s", api_dtype_name(q->dtype), api_dtype_name(v->dtype));
        CHECK(check_unit_last("v", v));
        if (rank == 4) CHECK(check_dim("v", v, 0, q->shape[0], "B"));
        CHECK(check_dim("v", v, la, k->shape[la], "Lk"));
        CHECK(check_dim("v", v, ha, *Hk, "Hk"));
        *Dv = v->shape[da];
        if (*Dv < 1 || *Dv > CFLASH_MAX_HEAD_DIM) return INVALID("v: head dim Dv must be in [1, %d], got %lld", CFLASH_MAX_HEAD_DIM, (long long)*Dv);
    } else {
        *Dv = *D;
    }
    CHECK(check_tensor("out", out, rank));
    CHECK(check_device("out", out, q));
    if (out->dtype != q->dtype && out->dtype != CFLASH_DTYPE_F32)
        return INVALID("out: dtype must be q's (%s) or float32, got %s", api_dtype_name(q->dtype), api_dtype_name(out->dtype));
    for (int a = 0; a < rank - 1; a++)
        if (out->shape[a] != q->shape[a])
            return INVALID("out: shape[%d] must equal q's (%lld), got %lld", a, (long long)q->shape[a], (long long)out->shape[a]);
    CHECK(check_dim("out", out, da, *Dv, "Dv"));
    CHECK(check_unit_last("out", out));
    CHECK(check_output_layout("out", out));
    return CFLASH_STATUS_OK;
}

/* lse: NULL, or fp32 [B, Hq, T] (dense, rank 3) / [Hq, T] (packed, rank 2), an output. */
enum cflash_status check_lse(const struct cflash_tensor *lse, int dense, int64_t B,
                                    int64_t Hq, int64_t T) {
    if (!lse) return CFLASH_STATUS_OK;
    CHECK(check_tensor("lse", lse, dense ? 3 : 2));
    CHECK(check_dtype("lse", lse, CFLASH_DTYPE_F32));
    if (dense) CHECK(check_dim("lse", lse, 0, B, "B"));
    CHECK(check_dim("lse", lse, dense, Hq, "Hq"));
    CHECK(check_dim("lse", lse, dense + 1, T, dense ? "Lq" : "Tq"));
    return check_output_layout("lse", lse);
}

static void operand(struct attn_operand *o, const struct cflash_tensor *t, int rank) {
    o->data = t->data;
    o->dtype = t->dtype;
    o->es = t->dtype == CFLASH_DTYPE_F32 || t->dtype == CFLASH_DTYPE_I32 ? 4 : t->dtype == CFLASH_DTYPE_U8 ? 1 : 2;
    if (rank == 4) {
        o->sb = t->stride[0]; o->st = t->stride[1]; o->sh = t->stride[2];
    } else {
        o->sb = 0; o->st = t->stride[0]; o->sh = t->stride[1];
    }
}

/* The work's operands and score rules from validated arguments (no segments yet). */
static void fill_work(struct attn_work *w, int rank, const struct cflash_tensor *q,
                      const struct cflash_tensor *k, const struct cflash_tensor *v,
                      const struct cflash_tensor *out, const struct cflash_tensor *lse,
                      const struct cflash_attn_params *p, int64_t B, int64_t Hq, int64_t Hk,
                      int64_t D, int64_t Dv) {
    memset(w, 0, sizeof *w);
    w->B = B; w->Hq = Hq; w->Hk = Hk; w->D = D; w->Dv = Dv;
    operand(&w->q, q, rank);
    operand(&w->k, k, rank);
    operand(&w->v, v ? v : k, rank);
    operand(&w->out, out, rank);
    if (lse) {
        w->lse_data = lse->data;
        if (rank == 4) { w->lse_sb = lse->stride[0]; w->lse_sh = lse->stride[1]; w->lse_st = lse->stride[2]; }
        else { w->lse_sb = 0; w->lse_sh = lse->stride[0]; w->lse_st = lse->stride[1]; }
    }
    w->scale = p->scale != 0.0f ? p->scale : (float)(1.0 / sqrt((double)D));
    w->softcap = p->softcap;
    if (p->alibi_slopes) {
        const struct cflash_tensor *a = p->alibi_slopes;
        w->alibi = a->data;
        w->alibi_sh = a->stride[a->ndim - 1];
        w->alibi_sb = a->ndim == 2 ? a->stride[0] : 0;
    }
    if (p->sinks) {
        w->sinks = p->sinks->data;
        w->sinks_sh = p->sinks->stride[0];
    }
    w->num_threads = p->num_threads > 0 ? p->num_threads : cflash_default_num_threads();
}

/* Run a filled work over its segments and slices on the kernel params asks for. prologue (may
 * be NULL) runs after every allocation succeeded and before any output is computed. */
static enum cflash_status exec_work(struct attn_work *w, const struct cflash_attn_params *p,
                                    const struct attn_segment *segments, int64_t num_segments,
                                    const struct attn_slice *slices, void (*prologue)(void *),
                                    void *prologue_ctx) {
    enum cflash_kernel kernel;
    CHECK(cpu_resolve_kernel(p->kernel, &kernel));
    w->num_segments = num_segments;
    w->segments = segments;
    w->slices = slices;
    if (num_segments == 0 || kernel == CFLASH_KERNEL_REFERENCE) { /* the oracle allocates nothing */
        if (prologue) prologue(prologue_ctx);
        return num_segments == 0 ? CFLASH_STATUS_OK : cpu_ref_attention(w);
    }
    return cpu_tiled_attention(w, kernel, prologue, prologue_ctx);
}

static enum cflash_status run_work(int rank, const struct cflash_tensor *q, const struct cflash_tensor *k,
                                   const struct cflash_tensor *v, const struct cflash_tensor *out,
                                   const struct cflash_tensor *lse, const struct cflash_attn_params *p,
                                   int64_t B, int64_t Hq, int64_t Hk, int64_t D, int64_t Dv,
                                   const struct attn_segment *segments, int64_t num_segments,
                                   const struct attn_slice *slices, const struct attn_scoresrc *mask,
                                   const struct attn_scoresrc *bias) {
    struct attn_work w;
    fill_work(&w, rank, q, k, v, out, lse, p, B, Hq, Hk, D, Dv);
    if (mask) w.mask = *mask;
    if (bias) w.bias = *bias;
    return exec_work(&w, p, segments, num_segments, slices, NULL, NULL);
}

/* Per-sequence masks: plan the sequences (plan.c), then run. */
#ifdef CFLASH_HAVE_CUDA
static enum cflash_status cuda_run_seqs(int rank, const struct cflash_tensor *q, const struct cflash_tensor *k,
                                        const struct cflash_tensor *v, const struct cflash_tensor *out,
                                        const struct cflash_tensor *lse, const struct cflash_attn_params *p,
                                        int64_t B, int64_t Hq, int64_t Hk, int64_t D, int64_t Dv,
                                        const int64_t *qs, const int64_t *lq, const int64_t *ks, const int64_t *lk);
#endif

enum cflash_status run_attention(int rank, const struct cflash_tensor *q, const struct cflash_tensor *k,
                                        const struct cflash_tensor *v, const struct cflash_tensor *out,
                                        const struct cflash_tensor *lse, const struct cflash_attn_params *p,
                                        int64_t B, int64_t Hq, int64_t Hk, int64_t D, int64_t Dv,
                                        const int64_t *qs, const int64_t *lq, const int64_t *ks, const int64_t *lk,
                                        const struct attn_scoresrc *mask, const struct attn_scoresrc *bias) {
#ifdef CFLASH_HAVE_CUDA
    if (q->device == CFLASH_DEVICE_CUDA) { /* flash-mlm's passes on the GPU (no masks there) */
        if ((mask && mask->data) || (bias && bias->data))
            return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "mask: explicit-sequence attention on CUDA tensors takes no masks or biases");
        return cuda_run_seqs(rank, q, k, v, out, lse, p, B, Hq, Hk, D, Dv, qs, lq, ks, lk);
    }
#endif
    struct attn_plan plan;
    CHECK(plan_sequences(&plan, B, qs, lq, ks, lk, p));
    enum cflash_status st = run_work(rank, q, k, v, out, lse, p, B, Hq, Hk, D, Dv, plan.segments,
                                     plan.num_segments, plan.slices, mask, bias);
    plan_free(&plan);
    return st;
}

/* lse and the tensors of params live where q does. */
static enum cflash_status check_call_devices(const struct cflash_tensor *q, const struct cflash_tensor *lse,
                                             const struct cflash_attn_params *p) {
    CHECK(check_device("lse", lse, q));
    CHECK(check_device("alibi_slopes", p->alibi_slopes, q));
    CHECK(check_device("sinks", p->sinks, q));
    CHECK(check_device("mask", p->mask, q));
    return check_device("bias", p->bias, q);
}

#ifdef CFLASH_HAVE_CUDA
/* The score rules every CUDA kernel reads, from the call's parameters (checked before). */
static void cuda_rules_fill(struct cuda_rules *r, const struct cflash_attn_params *p, int64_t D) {
    r->scale = p->scale != 0.0f ? p->scale : (float)(1.0 / sqrt((double)D));
    r->softcap = p->softcap;
    r->causal = p->causal;
    r->top_left = p->align == CFLASH_ALIGN_TOP_LEFT;
    r->window_left = p->window_left;
    r->window_right = p->window_right;
    if (p->alibi_slopes) {
        const struct cflash_tensor *a = p->alibi_slopes;
        r->alibi = a->data;
        r->alibi_sh = a->stride[a->ndim - 1];
        r->alibi_sb = a->ndim == 2 ? a->stride[0] : 0;
    }
    if (p->sinks) {
        r->sinks = p->sinks->data;
        r->sinks_sh = p->sinks->stride[0];
    }
}

static void cuda_scoresrc_fill(struct cuda_scoresrc *dst, const struct attn_scoresrc *src) {
    memset(dst, 0, sizeof *dst);
    if (!src || !src->data) return;
    dst->data = src->data;
    dst->dtype = src->dtype;
    dst->sb = src->sb; dst->sh = src->sh; dst->sq = src->sq; dst->sk = src->sk;
    dst->hdiv = src->hdiv;
    dst->q_local = src->q_local; dst->k_local = src->k_local;
}

static void cuda_operand(const struct cflash_tensor *t, int rank, int64_t *sb, int64_t *st, int64_t *sh) {
    *sb = rank == 4 ? t->stride[0] : 0;
    *st = t->stride[rank - 3];
    *sh = t->stride[rank - 2];
}

/* The operands, shapes and score rules of a prefill-kernel call (dense rank 4, packed rank 3):
 * what cuda_route and cuda_run_seqs share; the sequence description is theirs. */
static void cuda_fwd_fill(struct cuda_fwd *f, int rank, const struct cflash_tensor *q, const struct cflash_tensor *k,
                          const struct cflash_tensor *v, const struct cflash_tensor *out,
                          const struct cflash_tensor *lse, const struct cflash_attn_params *p,
                          int64_t B, int64_t Hq, int64_t Hk, int64_t D, int64_t Dv) {
    memset(f, 0, sizeof *f);
    f->q = q->data; f->k = k->data; f->v = v ? v->data : k->data; f->out = out->data;
    f->lse = lse ? lse->data : NULL;
    f->dtype = q->dtype; f->out_dtype = out->dtype;
    cuda_operand(q, rank, &f->q_sb, &f->q_st, &f->q_sh);
    cuda_operand(k, rank, &f->k_sb, &f->k_st, &f->k_sh);
    cuda_operand(v ? v : k, rank, &f->v_sb, &f->v_st, &f->v_sh);
    cuda_operand(out, rank, &f->o_sb, &f->o_st, &f->o_sh);
    if (lse) {
        f->lse_sb = rank == 4 ? lse->stride[0] : 0;
        f->lse_sh = lse->stride[rank - 3];
        f->lse_st = lse->stride[rank - 2];
    }
    f->B = (int32_t)B; f->Hq = (int32_t)Hq; f->Hk = (int32_t)Hk; f->D = (int32_t)D; f->Dv = (int32_t)Dv;
    f->Lq = q->shape[rank - 3]; f->Lk = k->shape[rank - 3];
    cuda_rules_fill(&f->r, p, D);
    f->device_id = q->device_id;
    f->stream = p->cuda_stream;
}

static enum cflash_status cuda_kvcache_route(const struct cflash_tensor *q, const struct cflash_kvcache *cache,
                                             const struct cflash_tensor *k_new, const struct cflash_tensor *v_new,
                                             const struct cflash_tensor *out, const struct cflash_tensor *lse,
                                             const struct cflash_attn_params *p, int64_t Hq, int64_t Hk,
                                             int64_t D, int64_t Dv, int64_t Lnew, int64_t room,
                                             const struct attn_scoresrc *mask, const struct attn_scoresrc *bias);

/* Dense (rank 4) and packed (rank 3, cu_q / cu_k on the device) calls on CUDA tensors, after
 * the checks every backend shares. Queued on p->cuda_stream; nothing waits for the GPU. The MLA
 * shape (D 576, Dv 512) runs the cache path's MLA kernel: k / v as a full cache, one row a
 * sequence, no metadata. */
static enum cflash_status cuda_route(int rank, const struct cflash_tensor *q, const struct cflash_tensor *k,
                                     const struct cflash_tensor *v, const struct cflash_tensor *out,
                                     const struct cflash_tensor *lse, const struct cflash_attn_params *p,
                                     int64_t B, int64_t Hq, int64_t Hk, int64_t D, int64_t Dv,
                                     const struct cflash_tensor *cu_q, const struct cflash_tensor *cu_k,
                                     int64_t max_seqlen_q, int64_t max_seqlen_k,
                                     const struct attn_scoresrc *mask, const struct attn_scoresrc *bias,
                                     const struct cuda_slice *slices, const int32_t *tile_slices) {
    if (p->kernel != CFLASH_KERNEL_AUTO)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "kernel: %s is a CPU kernel; CUDA tensors take CFLASH_KERNEL_AUTO", cflash_kernel_name(p->kernel));
    if (B > 65535) return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA backend takes at most 65535 sequences, got %lld", (long long)B);
    if (Hq > 65535) return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA backend takes at most 65535 heads, got %lld", (long long)Hq);
    if (D == 576 && Dv == 512) {
        if (rank != 4 || slices)
            return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA MLA kernel (D = 576, Dv = 512) serves dense and KV-cache calls, not %s",
                                    slices ? "range plans" : "packed (varlen) ones");
        if (!v || v->data != k->data || v->stride[0] != k->stride[0] || v->stride[1] != k->stride[1] || v->stride[2] != k->stride[2])
            return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "v: the CUDA MLA kernel (D = 576, Dv = 512) reads V as the first 512 columns of K: pass v as a view of k (k[..., :512])");
        if (k->shape[1] > INT32_MAX)
            return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "k: the CUDA backend takes at most 2^31 - 1 keys per sequence, got %lld", (long long)k->shape[1]);
        struct cflash_kvcache full;
        memset(&full, 0, sizeof full);
        full.k_cache = k;
        full.v_cache = v;
        return cuda_kvcache_route(q, &full, NULL, NULL, out, lse, p, Hq, Hk, D, Dv, 0, k->shape[1], mask, bias);
    }
    struct cuda_fwd f;
    cuda_fwd_fill(&f, rank, q, k, v, out, lse, p, B, Hq, Hk, D, Dv);
    if (cu_q) {
        f.cu_q = cu_q->data; f.cu_k = cu_k->data;
        f.cu_q_s = cu_q->stride[0]; f.cu_k_s = cu_k->stride[0];
        /* the grid covers the hint's rows; a hint above Tq covers nothing more */
        f.max_seqlen_q = max_seqlen_q >= 0 && max_seqlen_q < f.Lq ? max_seqlen_q : f.Lq;
        f.max_seqlen_k = max_seqlen_k >= 0 && max_seqlen_k < f.Lk ? max_seqlen_k : f.Lk;
    }
    cuda_scoresrc_fill(&f.mask, mask);
    cuda_scoresrc_fill(&f.bias, bias);
    f.slices = slices;
    f.tile_slices = tile_slices;
    enum cuda_fwd_config config;
    CHECK(cuda_fwd_select(&f, &config));
    return cuda_fwd_launch(&f, config);
}
#endif

#ifdef CFLASH_HAVE_CUDA
/* Attention over explicit sequences on CUDA tensors (run_attention's GPU side: flash-mlm's
 * context and new-token passes): sequence b = query rows [qs, qs + lq), key rows [ks, ks + lk)
 * of the token axis (rank 3) or of batch row b (rank 4, key batch stride 0 for a shared
 * operand). The table goes to the device per call (stream-ordered), the prefill kernel reads it. */
static enum cflash_status cuda_run_seqs(int rank, const struct cflash_tensor *q, const struct cflash_tensor *k,
                                        const struct cflash_tensor *v, const struct cflash_tensor *out,
                                        const struct cflash_tensor *lse, const struct cflash_attn_params *p,
                                        int64_t B, int64_t Hq, int64_t Hk, int64_t D, int64_t Dv,
                                        const int64_t *qs, const int64_t *lq, const int64_t *ks, const int64_t *lk) {
    if (p->kernel != CFLASH_KERNEL_AUTO)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "kernel: %s is a CPU kernel; CUDA tensors take CFLASH_KERNEL_AUTO", cflash_kernel_name(p->kernel));
    if (B > 65535) return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA backend takes at most 65535 sequences, got %lld", (long long)B);
    if (Hq > 65535) return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA backend takes at most 65535 heads, got %lld", (long long)Hq);
    if (B <= 0) return CFLASH_STATUS_OK;
    struct cuda_fwd f;
    cuda_fwd_fill(&f, rank, q, k, v, out, lse, p, B, Hq, Hk, D, Dv);
    enum cuda_fwd_config config;
    CHECK(cuda_fwd_select(&f, &config));
    int32_t *tbl = malloc(sizeof(int32_t) * 4 * (size_t)B);
    if (!tbl) return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "q: out of memory");
    for (int64_t b = 0; b < B; b++) {
        tbl[4 * b] = (int32_t)qs[b]; tbl[4 * b + 1] = (int32_t)lq[b];
        tbl[4 * b + 2] = (int32_t)ks[b]; tbl[4 * b + 3] = (int32_t)lk[b];
        if (lq[b] > f.max_seqlen_q) f.max_seqlen_q = lq[b];
    } /* 32-bit: cuda_fwd_select capped both token axes below 2^31 */
    void *dev = NULL;
    const size_t bytes = sizeof(int32_t) * 4 * (size_t)B;
    enum cflash_status st = cuda_mem_alloc("q", f.device_id, f.stream, 1, bytes, &dev);
    if (!st) st = cuda_mem_copy2d("q", f.device_id, f.stream, dev, bytes, tbl, bytes, bytes, 1);
    free(tbl); /* a pageable source is staged before the copy returns */
    if (!st) {
        f.seq_table = dev;
        st = cuda_fwd_launch(&f, config);
    }
    if (dev) cuda_mem_free(f.device_id, f.stream, 1, dev);
    return st;
}
#endif

enum cflash_status cflash_attn_dense(const struct cflash_tensor *q, const struct cflash_tensor *k,
                                     const struct cflash_tensor *v, const struct cflash_tensor *out,
                                     const struct cflash_tensor *lse,
                                     const struct cflash_attn_params *params) {
    const struct cflash_attn_params defaults = CFLASH_ATTN_PARAMS_INIT;
    const struct cflash_attn_params *p = params ? params : &defaults;
    int64_t Hq = 0, Hk = 0, D = 0, Dv = 0;
    CHECK(check_qkvo(4, q, k, v, out, &Hq, &Hk, &D, &Dv));
    const int64_t B = q->shape[0], Lq = q->shape[1], Lk = k->shape[1];
    CHECK(check_lse(lse, 1, B, Hq, Lq));
    CHECK(check_params(p, B, Hq));
    struct attn_scoresrc mask, bias;
    CHECK(check_scoresrc("mask", p->mask, p->mask_layout, 1, 0, B, Hq, Hk, Lq, Lk, 0, 0, &mask));
    CHECK(check_scoresrc("bias", p->bias, p->bias_layout, 0, 0, B, Hq, Hk, Lq, Lk, 0, 0, &bias));
    CHECK(check_call_devices(q, lse, p));
#ifdef CFLASH_HAVE_CUDA
    if (q->device == CFLASH_DEVICE_CUDA)
        return cuda_route(4, q, k, v, out, lse, p, B, Hq, Hk, D, Dv, NULL, NULL, -1, -1, &mask, &bias, NULL, NULL);
#endif
    if (B == 0 || Lq == 0) return CFLASH_STATUS_OK;

    int64_t *idx = malloc(sizeof(int64_t) * 4 * (size_t)B);
    if (!idx) return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "plan: out of memory");
    int64_t *qs = idx, *lq = idx + B, *ks = idx + 2 * B, *lk = idx + 3 * B;
    for (int64_t b = 0; b < B; b++) { qs[b] = 0; lq[b] = Lq; ks[b] = 0; lk[b] = Lk; }
    enum cflash_status st = run_attention(4, q, k, v, out, lse, p, B, Hq, Hk, D, Dv, qs, lq, ks, lk, &mask, &bias);
    free(idx);
    return st;
}

/* cu_seqlens: int32 [B + 1], 0 first, non-decreasing, last == total; max length <= hint. */
enum cflash_status check_cu_seqlens(const char *name, const char *hint_name,
                                           const struct cflash_tensor *cu, int64_t B, int64_t total,
                                           int64_t hint) {
    CHECK(check_tensor(name, cu, 1));
    CHECK(check_dtype(name, cu, CFLASH_DTYPE_I32));
    if (cu->shape[0] < 1) return INVALID("%s: must have B + 1 >= 1 entries", name);
    if (B >= 0 && cu->shape[0] != B + 1)
        return INVALID("%s: must have B + 1 = %lld entries (as cu_seqlens_q), got %lld", name, (long long)(B + 1), (long long)cu->shape[0]);
    if (hint < -1) return INVALID("%s: must be >= 0, or -1 for not given, got %lld", hint_name, (long long)hint);
    if (cu->device != CFLASH_DEVICE_CPU) return CFLASH_STATUS_OK; /* device contents: see cuda/cuda.h */
    const int32_t *c = cu->data;
    const int64_t s = cu->stride[0], n = cu->shape[0];
    if (c[0] != 0) return INVALID("%s: must start at 0, got %d", name, (int)c[0]);
    int64_t maxlen = 0;
    for (int64_t b = 1; b < n; b++) {
        const int64_t len = (int64_t)c[b * s] - c[(b - 1) * s];
        if (len < 0) return INVALID("%s: must be non-decreasing, entry %lld (%d) < entry %lld (%d)", name, (long long)b, (int)c[b * s], (long long)(b - 1), (int)c[(b - 1) * s]);
        if (len > maxlen) maxlen = len;
    }
    if (c[(n - 1) * s] != total)
        return INVALID("%s: last entry must equal the total token count %lld, got %d", name, (long long)total, (int)c[(n - 1) * s]);
    if (hint >= 0 && hint < maxlen)
        return INVALID("%s: hint %lld is smaller than the longest sequence (%lld)", hint_name, (long long)hint, (long long)maxlen);
    return CFLASH_STATUS_OK;
}

enum cflash_status cflash_attn_varlen(const struct cflash_tensor *q, const struct cflash_tensor *k,
                                      const struct cflash_tensor *v,
                                      const struct cflash_tensor *cu_seqlens_q,
                                      const struct cflash_tensor *cu_seqlens_k,
                                      int64_t max_seqlen_q, int64_t max_seqlen_k,
                                      const struct cflash_tensor *out,
                                      const struct cflash_tensor *lse,
                                      const struct cflash_attn_params *params) {
    const struct cflash_attn_params defaults = CFLASH_ATTN_PARAMS_INIT;
    const struct cflash_attn_params *p = params ? params : &defaults;
    int64_t Hq = 0, Hk = 0, D = 0, Dv = 0;
    CHECK(check_qkvo(3, q, k, v, out, &Hq, &Hk, &D, &Dv));
    const int64_t Tq = q->shape[0], Tk = k->shape[0];
    CHECK(check_device("cu_seqlens_q", cu_seqlens_q, q));
    CHECK(check_device("cu_seqlens_k", cu_seqlens_k, q));
    CHECK(check_cu_seqlens("cu_seqlens_q", "max_seqlen_q", cu_seqlens_q, -1, Tq, max_seqlen_q));
    const int64_t B = cu_seqlens_q->shape[0] - 1;
    CHECK(check_cu_seqlens("cu_seqlens_k", "max_seqlen_k", cu_seqlens_k, B, Tk, max_seqlen_k));
    CHECK(check_lse(lse, 0, 1, Hq, Tq));
    CHECK(check_params(p, B, Hq));
    CHECK(check_call_devices(q, lse, p));
#ifdef CFLASH_HAVE_CUDA
    if (q->device == CFLASH_DEVICE_CUDA) { /* before anything reads cu_seqlens on the host */
        /* the longest sequences are on the device: masks and biases are checked against the
         * hints, which the caller must give with them (the kernel clamps to the real lengths) */
        struct attn_scoresrc mask, bias;
        if ((p->mask || p->bias) && (max_seqlen_q < 0 || max_seqlen_k < 0))
            return INVALID("%s: a mask or bias with CUDA tensors needs the max_seqlen_q and max_seqlen_k hints (the lengths are on the device)",
                           max_seqlen_q < 0 ? "max_seqlen_q" : "max_seqlen_k");
        CHECK(check_scoresrc("mask", p->mask, p->mask_layout, 1, 1, B, Hq, Hk, max_seqlen_q, max_seqlen_k, Tq, Tk, &mask));
        CHECK(check_scoresrc("bias", p->bias, p->bias_layout, 0, 1, B, Hq, Hk, max_seqlen_q, max_seqlen_k, Tq, Tk, &bias));
        return cuda_route(3, q, k, v, out, lse, p, B, Hq, Hk, D, Dv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, &mask, &bias,
                          NULL, NULL);
    }
#endif
    const int32_t *cq = cu_seqlens_q->data, *ck = cu_seqlens_k->data;
    const int64_t sq = cu_seqlens_q->stride[0], sk = cu_seqlens_k->stride[0];
    int64_t maxq = 0, maxk = 0;
    for (int64_t b = 0; b < B; b++) {
        maxq = cq[(b + 1) * sq] - cq[b * sq] > maxq ? cq[(b + 1) * sq] - cq[b * sq] : maxq;
        maxk = ck[(b + 1) * sk] - ck[b * sk] > maxk ? ck[(b + 1) * sk] - ck[b * sk] : maxk;
    }
    struct attn_scoresrc mask, bias;
    CHECK(check_scoresrc("mask", p->mask, p->mask_layout, 1, 1, B, Hq, Hk, maxq, maxk, Tq, Tk, &mask));
    CHECK(check_scoresrc("bias", p->bias, p->bias_layout, 0, 1, B, Hq, Hk, maxq, maxk, Tq, Tk, &bias));
    if (B == 0 || Tq == 0) return CFLASH_STATUS_OK;

    int64_t *idx = malloc(sizeof(int64_t) * 4 * (size_t)B);
    if (!idx) return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "plan: out of memory");
    int64_t *qs = idx, *lq = idx + B, *ks = idx + 2 * B, *lk = idx + 3 * B;
    for (int64_t b = 0; b < B; b++) {
        qs[b] = cq[b * sq]; lq[b] = cq[(b + 1) * sq] - qs[b];
        ks[b] = ck[b * sk]; lk[b] = ck[(b + 1) * sk] - ks[b];
    }
    enum cflash_status st = run_attention(3, q, k, v, out, lse, p, B, Hq, Hk, D, Dv, qs, lq, ks, lk, &mask, &bias);
    free(idx);
    return st;
}

/* ---- range plans ---- */

enum cflash_status cflash_attn_range(const struct cflash_tensor *q, const struct cflash_tensor *k,
                                     const struct cflash_tensor *v,
                                     const struct cflash_range_plan *plan,
                                     const struct cflash_tensor *out,
                                     const struct cflash_tensor *lse,
                                     const struct cflash_attn_params *params) {
    const struct cflash_attn_params defaults = CFLASH_ATTN_PARAMS_INIT;
    const struct cflash_attn_params *p = params ? params : &defaults;
    int64_t Hq = 0, Hk = 0, D = 0, Dv = 0;
    CHECK(check_qkvo(3, q, k, v, out, &Hq, &Hk, &D, &Dv));
    CHECK(check_call_devices(q, lse, p));
    if (!plan) return INVALID("plan: must not be NULL");
    const int64_t Tq = q->shape[0], Tk = k->shape[0];
    if (Tq != plan->Tq) return INVALID("q: the plan was made for Tq = %lld tokens, q has %lld", (long long)plan->Tq, (long long)Tq);
    if (Tk != plan->Tk) return INVALID("k: the plan was made for Tk = %lld tokens, k has %lld", (long long)plan->Tk, (long long)Tk);
    CHECK(check_lse(lse, 0, 1, Hq, Tq));
    if (p->causal) return INVALID("causal: must be 0 with a range plan (the plan's types set the masks)");
    if (p->window_left != -1 || p->window_right != -1)
        return INVALID("%s: the window must be (-1, -1) with a range plan", p->window_left != -1 ? "window_left" : "window_right");
    if (p->alibi_slopes && p->alibi_slopes->ndim != 1)
        return INVALID("alibi_slopes: must have shape [Hq] with a range plan");
    CHECK(check_params(p, 1, Hq));
    /* the plan's segments have origin 0: masks and biases index the global axes */
    struct attn_scoresrc mask, bias;
    CHECK(check_scoresrc("mask", p->mask, p->mask_layout, 1, 1, 1, Hq, Hk, Tq, Tk, Tq, Tk, &mask));
    CHECK(check_scoresrc("bias", p->bias, p->bias_layout, 0, 1, 1, Hq, Hk, Tq, Tk, Tq, Tk, &bias));
    /* A plan that is a packed batch (range.c, plan_as_varlen: disjoint slices in order, all full
     * or all causal) runs as one, without masks or biases (theirs are global coordinates, a
     * packed call's local ones): one rule per sequence instead of a walk over each row block's
     * slices (H100: 16 causal documents ran at 0.68x of the same call as varlen). */
    struct cflash_attn_params pv = *p;
    pv.causal = plan->varlen_causal > 0;
    pv.align = CFLASH_ALIGN_BOTTOM_RIGHT;
#ifdef CFLASH_HAVE_CUDA
    if (q->device == CFLASH_DEVICE_CUDA) { /* the plan's device copy is made on its first GPU call */
        const struct cuda_slice *slices = NULL;
        const int32_t *tiles = NULL, *cu = NULL;
        if (Tq == 0) return CFLASH_STATUS_OK;
        CHECK(range_plan_on_device(plan, q->device_id, &slices, &tiles, &cu));
        if (cu && !mask.data && !bias.data) { /* a packed batch: the packed-sequence kernel */
            const int64_t n = plan->varlen_B;
            struct cflash_tensor cq, ck;
            memset(&cq, 0, sizeof cq);
            cq.data = (void *)cu;
            cq.dtype = CFLASH_DTYPE_I32;
            cq.ndim = 1;
            cq.shape[0] = n + 1;
            cq.stride[0] = 1;
            cq.device = CFLASH_DEVICE_CUDA;
            cq.device_id = q->device_id;
            ck = cq;
            ck.data = (void *)(cu + n + 1);
            return cuda_route(3, q, k, v, out, lse, &pv, n, Hq, Hk, D, Dv, &cq, &ck, plan->varlen_max_q, plan->varlen_max_k,
                              &mask, &bias, NULL, NULL);
        }
        return cuda_route(3, q, k, v, out, lse, p, 1, Hq, Hk, D, Dv, NULL, NULL, -1, -1, &mask, &bias, slices, tiles);
    }
#endif
    if (Tq == 0) return CFLASH_STATUS_OK;
    if (plan->varlen_causal >= 0 && !mask.data && !bias.data) {
        const int64_t n = plan->varlen_B;
        const int32_t *cq = plan->varlen_cu, *ck = plan->varlen_cu + n + 1;
        int64_t *idx = malloc(sizeof(int64_t) * 4 * (size_t)n);
        if (!idx) return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "plan: out of memory");
        int64_t *qs = idx, *lq = idx + n, *ks = idx + 2 * n, *lk = idx + 3 * n;
        for (int64_t b = 0; b < n; b++) {
            qs[b] = cq[b]; lq[b] = cq[b + 1] - cq[b];
            ks[b] = ck[b]; lk[b] = ck[b + 1] - ck[b];
        }
        enum cflash_status st = run_attention(3, q, k, v, out, lse, &pv, n, Hq, Hk, D, Dv, qs, lq, ks, lk, &mask, &bias);
        free(idx);
        return st;
    }
    return run_work(3, q, k, v, out, lse, p, 1, Hq, Hk, D, Dv, plan->segments, plan->num_segments,
                    plan->slices, &mask, &bias);
}

/* ---- KV caches ---- */

/* element b of an int32 [B] tensor, (b, p) of an int32 [B, P] tensor */
static inline int64_t i32_at(const struct cflash_tensor *t, int64_t b) {
    return ((const int32_t *)t->data)[b * t->stride[0]];
}
static inline int64_t i32_at2(const struct cflash_tensor *t, int64_t b, int64_t p) {
    return ((const int32_t *)t->data)[b * t->stride[0] + p * t->stride[1]];
}

struct kv_append_job {
    const struct attn_work *w;
    const struct cflash_kvcache *cache;
    const struct cflash_tensor *k_new, *v_new;
    int64_t Lnew;
    const struct cflash_tensor *bidx;
    const struct rotary *ro;
};

static void kv_append_all(void *ctx) {
    const struct kv_append_job *j = ctx;
    struct attn_operand kn, vn;
    operand(&kn, j->k_new, 4);
    if (j->v_new) operand(&vn, j->v_new, 4);
    for (int64_t b = 0; b < j->w->B; b++) {
        struct attn_segment sg;
        memset(&sg, 0, sizeof sg);
        sg.b = b;
        sg.kvb = j->bidx ? i32_at(j->bidx, b) : b;
        cpu_kv_append(j->w, &sg, i32_at(j->cache->cache_seqlens, b), j->Lnew, &kn,
                      j->v_new ? &vn : NULL, j->ro);
    }
}

/* CUDA calls: what the host can check without reading cache_seqlens (a device tensor): the Lnew
 * new keys fit an empty sequence of the cache (room keys: Lmax, or max_pages * page_size), and a
 * cache without rows / pages takes no appends (B == 0: nothing is appended). */
static enum cflash_status kvcache_cuda_capacity(int64_t B, int64_t nrows, int64_t room, int64_t Lnew, int paged) {
    if (B == 0) return CFLASH_STATUS_OK;
    if (Lnew > 0 && nrows == 0)
        return INVALID("k_cache: has no %s (shape[0] = 0), the %lld new keys cannot be appended", paged ? "pages" : "rows", (long long)Lnew);
    if (Lnew > room)
        return INVALID("k_new: %lld new keys per batch entry do not fit the cache, which holds %lld keys per sequence", (long long)Lnew, (long long)room);
    return CFLASH_STATUS_OK;
}

/* Masks and biases of a KV-cache call: the DENSE layout [B|1, Hv, Lq|1, Lk|1] over each batch
 * entry's logical key axis, which must reach maxk keys (the CPU path passes the longest
 * sequence; the CUDA path, which cannot read cache_seqlens, passes 1: its kernels drop scores
 * past the source's keys). */
static enum cflash_status check_cache_scoresrcs(const struct cflash_attn_params *p, int64_t B, int64_t Hq, int64_t Hk,
                                                int64_t Lq, int64_t maxk, struct attn_scoresrc *mask,
                                                struct attn_scoresrc *bias) {
    if (p->mask && p->mask_layout != CFLASH_LAYOUT_DENSE)
        return INVALID("mask: KV-cache calls take the DENSE layout [B|1, Hv, Lq|1, Lk|1] only");
    if (p->bias && p->bias_layout != CFLASH_LAYOUT_DENSE)
        return INVALID("bias: KV-cache calls take the DENSE layout [B|1, Hv, Lq|1, Lk|1] only");
    CHECK(check_scoresrc("mask", p->mask, p->mask_layout, 1, 1, B, Hq, Hk, Lq, maxk, 0, 0, mask));
    CHECK(check_scoresrc("bias", p->bias, p->bias_layout, 0, 1, B, Hq, Hk, Lq, maxk, 0, 0, bias));
    /* packed-style checks allow Lq|1 >= Lq; a cache call's query axis is exact */
    if (p->mask && p->mask->shape[2] != 1 && p->mask->shape[2] != Lq)
        return INVALID("mask: shape[2] must be 1 or Lq (%lld), got %lld", (long long)Lq, (long long)p->mask->shape[2]);
    if (p->bias && p->bias->shape[2] != 1 && p->bias->shape[2] != Lq)
        return INVALID("bias: shape[2] must be 1 or Lq (%lld), got %lld", (long long)Lq, (long long)p->bias->shape[2]);
    return CFLASH_STATUS_OK;
}

#ifdef CFLASH_HAVE_CUDA
/* KV-cache calls on CUDA tensors after every check that needs no device memory (room: the keys
 * one sequence can hold). Queued on p->cuda_stream; nothing waits for the GPU. */
static enum cflash_status cuda_kvcache_route(const struct cflash_tensor *q, const struct cflash_kvcache *cache,
                                             const struct cflash_tensor *k_new, const struct cflash_tensor *v_new,
                                             const struct cflash_tensor *out, const struct cflash_tensor *lse,
                                             const struct cflash_attn_params *p, int64_t Hq, int64_t Hk,
                                             int64_t D, int64_t Dv, int64_t Lnew, int64_t room,
                                             const struct attn_scoresrc *mask, const struct attn_scoresrc *bias) {
    if (p->kernel != CFLASH_KERNEL_AUTO)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "kernel: %s is a CPU kernel; CUDA tensors take CFLASH_KERNEL_AUTO", cflash_kernel_name(p->kernel));
    if (Hq > 65535) return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA backend takes at most 65535 heads, got %lld", (long long)Hq);
    if (q->shape[1] > INT32_MAX) /* before any 32-bit narrowing of Lq */
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA backend takes at most 2^31 - 1 query rows per sequence, got %lld", (long long)q->shape[1]);
    if (q->shape[0] > 65535) return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA backend takes at most 65535 sequences, got %lld", (long long)q->shape[0]);
    const struct cflash_tensor *kc = cache->k_cache, *vc = cache->v_cache ? cache->v_cache : cache->k_cache;
    struct cuda_kvcache f;
    memset(&f, 0, sizeof f);
    f.q = q->data; f.k_cache = kc->data; f.v_cache = vc->data; f.out = out->data;
    f.lse = lse ? lse->data : NULL;
    f.dtype = q->dtype; f.out_dtype = out->dtype;
    f.q_sb = q->stride[0]; f.q_st = q->stride[1]; f.q_sh = q->stride[2];
    f.kc_sb = kc->stride[0]; f.kc_st = kc->stride[1]; f.kc_sh = kc->stride[2];
    f.vc_sb = vc->stride[0]; f.vc_st = vc->stride[1]; f.vc_sh = vc->stride[2];
    f.o_sb = out->stride[0]; f.o_st = out->stride[1]; f.o_sh = out->stride[2];
    if (lse) { f.lse_sb = lse->stride[0]; f.lse_sh = lse->stride[1]; f.lse_st = lse->stride[2]; }
    f.B = (int32_t)q->shape[0]; f.Hq = (int32_t)Hq; f.Hk = (int32_t)Hk; f.D = (int32_t)D; f.Dv = (int32_t)Dv;
    f.Lq = (int32_t)q->shape[1];
    f.Lnew = (int32_t)Lnew; /* <= room, and room is capped below */
    /* V := K (v_cache NULL) or a view of K's first Dv columns: the K rows hold V; one load */
    f.v_is_k = f.v_cache == f.k_cache && f.vc_sb == f.kc_sb && f.vc_st == f.kc_st && f.vc_sh == f.kc_sh &&
               f.Dv <= f.D; /* a wider V over the same memory is not a prefix of K */
    if (Lnew > 0) {
        f.k_new = k_new->data;
        f.kn_sb = k_new->stride[0]; f.kn_st = k_new->stride[1]; f.kn_sh = k_new->stride[2];
        if (v_new) {
            f.v_new = v_new->data;
            f.vn_sb = v_new->stride[0]; f.vn_st = v_new->stride[1]; f.vn_sh = v_new->stride[2];
            /* v_new a view of k_new written into a view of k_cache: those bytes are K's, already written */
            f.append_v = !(f.v_is_k && f.v_new == f.k_new && f.vn_sb == f.kn_sb && f.vn_st == f.kn_st && f.vn_sh == f.kn_sh);
        }
    }
    f.num_rows = kc->shape[0];
    const int64_t cap32 = INT32_MAX;
    f.page_size = (int32_t)(kc->shape[1] > cap32 ? cap32 : kc->shape[1]);
    f.cap = (int32_t)(f.num_rows == 0 ? 0 : room > cap32 ? cap32 : room);
    if (cache->cache_seqlens) { /* NULL: a dense call served by the MLA kernel, every sequence full */
        f.cache_seqlens = cache->cache_seqlens->data;
        f.seqlens_s = cache->cache_seqlens->stride[0];
    }
    if (cache->block_table) {
        f.block_table = cache->block_table->data;
        f.bt_sb = cache->block_table->stride[0];
        f.bt_sp = cache->block_table->stride[1];
    } else if (cache->cache_batch_idx) {
        f.cache_batch_idx = cache->cache_batch_idx->data;
        f.batch_idx_s = cache->cache_batch_idx->stride[0];
    }
    cuda_rules_fill(&f.r, p, D);
    if (cache->rotary_cos) { /* positions are clamped to the table in the kernels (the host cannot read them) */
        const struct cflash_tensor *rc = cache->rotary_cos;
        f.rot_cos = rc->data; f.rot_sin = cache->rotary_sin->data; f.rot_dtype = rc->dtype;
        f.rot_s0 = rc->stride[0]; f.rot_s1 = rc->stride[1];
        f.rot_half = (int32_t)rc->shape[1];
        f.rot_rows = rc->shape[0];
        f.rot_interleaved = cache->rotary_interleaved;
        f.rot_q_per_row = p->causal || p->window_left != -1 || p->window_right != -1;
    }
    /* masks and biases: scores past a source's keys (only with bad cache_seqlens) are dropped */
    cuda_scoresrc_fill(&f.mask, mask);
    cuda_scoresrc_fill(&f.bias, bias);
    f.mask_keys = p->mask ? (p->mask->shape[3] > 1 ? p->mask->shape[3] : INT64_MAX) : INT64_MAX;
    f.bias_keys = p->bias ? (p->bias->shape[3] > 1 ? p->bias->shape[3] : INT64_MAX) : INT64_MAX;
    f.device_id = q->device_id;
    f.stream = p->cuda_stream;
    enum cuda_fwd_config config;
    CHECK(cuda_kvcache_select(&f, &config));
    return cuda_kvcache_launch(&f, config);
}
#endif

/* The rotary tables of a cache call, as far as the host can see them (shapes, dtypes, strides;
 * the positions they are read at depend on cache_seqlens). */
static enum cflash_status check_rotary(const struct cflash_kvcache *cache, const struct cflash_tensor *k_new, int64_t D) {
    const struct cflash_tensor *rc = cache->rotary_cos, *rs = cache->rotary_sin;
    if (!rc || !rs) return INVALID("%s: rotary_cos and rotary_sin go together", rc ? "rotary_sin" : "rotary_cos");
    if (!k_new) return INVALID("rotary_cos: rotary embedding needs k_new (it rotates the appended keys)");
    CHECK(check_tensor("rotary_cos", rc, 2));
    CHECK(check_tensor("rotary_sin", rs, 2));
    CHECK(check_float("rotary_cos", rc));
    if (rs->dtype != rc->dtype) return INVALID("rotary_sin: dtype must equal rotary_cos's");
    if (rs->shape[0] != rc->shape[0] || rs->shape[1] != rc->shape[1]) return INVALID("rotary_sin: shape must equal rotary_cos's");
    if (rc->shape[1] < 1 || 2 * rc->shape[1] > D)
        return INVALID("rotary_cos: shape[1] = rotary_dim / 2 must be in [1, D / 2 = %lld], got %lld", (long long)(D / 2), (long long)rc->shape[1]);
    if (cache->rotary_interleaved != 0 && cache->rotary_interleaved != 1)
        return INVALID("rotary_interleaved: must be 0 or 1, got %d", (int)cache->rotary_interleaved);
    if (rc->stride[0] != rs->stride[0] || rc->stride[1] != rs->stride[1])
        return INVALID("rotary_sin: strides must equal rotary_cos's");
    return CFLASH_STATUS_OK;
}

enum cflash_status cflash_attn_kvcache(const struct cflash_tensor *q,
                                       const struct cflash_kvcache *cache,
                                       const struct cflash_tensor *k_new,
                                       const struct cflash_tensor *v_new,
                                       const struct cflash_tensor *out,
                                       const struct cflash_tensor *lse,
                                       const struct cflash_attn_params *params) {
    const struct cflash_attn_params defaults = CFLASH_ATTN_PARAMS_INIT;
    const struct cflash_attn_params *p = params ? params : &defaults;
    if (!cache) return INVALID("cache: must not be NULL");
    const struct cflash_tensor *kc = cache->k_cache, *vc = cache->v_cache;
    const struct cflash_tensor *bt = cache->block_table, *bidx = cache->cache_batch_idx;
    /* CUDA calls (q on a GPU): the same shape rules, every tensor on q's device, and no read of
     * the metadata's contents on the host (cache_seqlens, cache_batch_idx, block_table stay on
     * the device; the kernels clamp them, see cuda/cuda.h) */
#ifdef CFLASH_HAVE_CUDA
    const int on_cuda = q && q->device == CFLASH_DEVICE_CUDA;
#else
    const int on_cuda = 0;
#endif
    if (!on_cuda) {
        const struct cflash_tensor *all[] = {q, kc, vc, cache->cache_seqlens, bidx, bt, cache->rotary_cos,
                                             cache->rotary_sin, k_new, v_new, out, lse};
        const char *names[] = {"q", "k_cache", "v_cache", "cache_seqlens", "cache_batch_idx", "block_table",
                               "rotary_cos", "rotary_sin", "k_new", "v_new", "out", "lse"};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) CHECK(require_cpu(names[i], all[i]));
        CHECK(require_cpu_params(p));
    }
    int64_t Hq = 0, Hk = 0, D = 0, Dv = 0;
    /* q, the caches and out share check_qkvo's rules (k_cache plays k, v_cache v) except the
     * batch axis: the cache's first axis is Bc or num_pages */
    CHECK(check_tensor("q", q, 4));
    CHECK(check_tensor("k_cache", kc, 4));
    {
        struct cflash_tensor kv = *kc, vv;
        kv.shape[0] = q->shape[0]; /* batch checked below */
        if (vc) { CHECK(check_tensor("v_cache", vc, 4)); vv = *vc; vv.shape[0] = q->shape[0]; }
        enum cflash_status st = check_qkvo(4, q, &kv, vc ? &vv : NULL, out, &Hq, &Hk, &D, &Dv);
        if (st) {
            /* check_qkvo names k / v; say which cache */
            char msg[512];
            snprintf(msg, sizeof msg, "%s", cflash_last_error());
            if (msg[0] == 'k' && msg[1] == ':') return cflash_set_error(st, "k_cache%s", msg + 1);
            if (msg[0] == 'v' && msg[1] == ':') return cflash_set_error(st, "v_cache%s", msg + 1);
            return st;
        }
    }
    const int64_t B = q->shape[0], Lq = q->shape[1];
    const int64_t nrows = kc->shape[0], L1 = kc->shape[1]; /* Bc x Lmax, or num_pages x page_size */
    if (vc && (vc->shape[0] != nrows || vc->shape[1] != L1))
        return INVALID("v_cache: shape[0..1] must equal k_cache's (%lld, %lld)", (long long)nrows, (long long)L1);
    CHECK(check_tensor("cache_seqlens", cache->cache_seqlens, 1));
    CHECK(check_dtype("cache_seqlens", cache->cache_seqlens, CFLASH_DTYPE_I32));
    CHECK(check_dim("cache_seqlens", cache->cache_seqlens, 0, B, "B"));
    if (on_cuda) CHECK(check_device("cache_seqlens", cache->cache_seqlens, q));
    for (int64_t b = 0; b < B && !on_cuda; b++)
        if (i32_at(cache->cache_seqlens, b) < 0)
            return INVALID("cache_seqlens: entry %lld is negative (%lld)", (long long)b, (long long)i32_at(cache->cache_seqlens, b));

    /* new keys and values */
    int64_t Lnew = 0;
    if (!k_new && v_new) return INVALID("k_new: must be given when v_new is");
    if (k_new) {
        CHECK(check_tensor("k_new", k_new, 4));
        if (on_cuda) CHECK(check_device("k_new", k_new, q));
        if (k_new->dtype != q->dtype) return INVALID("k_new: dtype must equal q's");
        CHECK(check_unit_last("k_new", k_new));
        CHECK(check_dim("k_new", k_new, 0, B, "B"));
        CHECK(check_dim("k_new", k_new, 2, Hk, "Hk"));
        CHECK(check_dim("k_new", k_new, 3, D, "D"));
        Lnew = k_new->shape[1];
        if (vc && !v_new) return INVALID("v_new: must be given with k_new when v_cache is");
        if (!vc && v_new) return INVALID("v_new: must be NULL when v_cache is NULL (V := K)");
        if (v_new) {
            CHECK(check_tensor("v_new", v_new, 4));
            if (on_cuda) CHECK(check_device("v_new", v_new, q));
            if (v_new->dtype != q->dtype) return INVALID("v_new: dtype must equal q's");
            CHECK(check_unit_last("v_new", v_new));
            CHECK(check_dim("v_new", v_new, 0, B, "B"));
            CHECK(check_dim("v_new", v_new, 1, Lnew, "Lnew"));
            CHECK(check_dim("v_new", v_new, 2, Hk, "Hk"));
            CHECK(check_dim("v_new", v_new, 3, Dv, "Dv"));
        }
    }
    if (Lnew > 0) { /* the caches are written: their rows must not overlap */
        CHECK(check_output_layout("k_cache", kc));
        if (vc) CHECK(check_output_layout("v_cache", vc));
    }

    /* capacity, indices, and no two batch entries writing the same cache rows */
    const int64_t cap = (int64_t)1 << 40;
    if (bt) {
        if (bidx) return INVALID("cache_batch_idx: not supported with a block_table (paged cache)");
        CHECK(check_tensor("block_table", bt, 2));
        CHECK(check_dtype("block_table", bt, CFLASH_DTYPE_I32));
        CHECK(check_dim("block_table", bt, 0, B, "B"));
        if (L1 < 1) return INVALID("k_cache: page_size (shape[1]) must be >= 1");
        const int64_t maxp = bt->shape[1];
        if (on_cuda) {
            CHECK(check_device("block_table", bt, q));
            CHECK(kvcache_cuda_capacity(B, nrows, maxp > cap / L1 ? cap : maxp * L1, Lnew, 1));
        }
        unsigned char *written = on_cuda ? NULL : calloc((size_t)(nrows > 0 ? nrows : 1), 1);
        if (!on_cuda && !written) return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "block_table: out of memory");
        for (int64_t b = 0; b < B && !on_cuda; b++) {
            const int64_t s0 = i32_at(cache->cache_seqlens, b), total = s0 + Lnew;
            const int64_t room = maxp > cap / L1 ? cap : maxp * L1; /* no int64 overflow */
            if (total > room) {
                free(written);
                return INVALID("cache_seqlens: batch %lld needs %lld keys, the block table holds %lld (%lld pages of %lld)", (long long)b, (long long)total, (long long)(maxp * L1), (long long)maxp, (long long)L1);
            }
            for (int64_t pg = 0; pg < (total + L1 - 1) / L1; pg++) {
                const int64_t id = i32_at2(bt, b, pg);
                if (id < 0 || id >= nrows) {
                    free(written);
                    return INVALID("block_table: entry [%lld][%lld] = %lld is not a page in [0, %lld)", (long long)b, (long long)pg, (long long)id, (long long)nrows);
                }
            }
            for (int64_t pg = s0 / L1; Lnew > 0 && pg <= (total - 1) / L1; pg++) {
                const int64_t id = i32_at2(bt, b, pg);
                if (written[id]) {
                    free(written);
                    return INVALID("block_table: page %lld is appended to by two batch entries (the second is %lld)", (long long)id, (long long)b);
                }
                written[id] = 1;
            }
        }
        free(written);
    } else {
        if (bidx) {
            CHECK(check_tensor("cache_batch_idx", bidx, 1));
            CHECK(check_dtype("cache_batch_idx", bidx, CFLASH_DTYPE_I32));
            CHECK(check_dim("cache_batch_idx", bidx, 0, B, "B"));
            if (on_cuda) CHECK(check_device("cache_batch_idx", bidx, q));
        } else if (nrows != B) {
            return INVALID("k_cache: shape[0] must be B = %lld without cache_batch_idx, got %lld", (long long)B, (long long)nrows);
        }
        if (on_cuda) {
            if (B > 0 && nrows == 0) return INVALID("cache_batch_idx: k_cache has no rows (shape[0] = 0) for %lld batch entries", (long long)B);
            CHECK(kvcache_cuda_capacity(B, nrows, L1, Lnew, 0));
        }
        for (int64_t b = 0; b < B && !on_cuda; b++) {
            const int64_t row = bidx ? i32_at(bidx, b) : b;
            if (row < 0 || row >= nrows)
                return INVALID("cache_batch_idx: entry %lld = %lld is not a cache row in [0, %lld)", (long long)b, (long long)row, (long long)nrows);
            const int64_t total = i32_at(cache->cache_seqlens, b) + Lnew;
            if (total > L1)
                return INVALID("cache_seqlens: batch %lld needs %lld keys, the cache holds %lld", (long long)b, (long long)total, (long long)L1);
            if (bidx && Lnew > 0)
                for (int64_t b2 = 0; b2 < b; b2++)
                    if (i32_at(bidx, b2) == row)
                        return INVALID("cache_batch_idx: entries %lld and %lld both append to cache row %lld", (long long)b2, (long long)b, (long long)row);
        }
    }
    CHECK(check_lse(lse, 1, B, Hq, Lq));
    CHECK(check_params(p, B, Hq));
#ifdef CFLASH_HAVE_CUDA
    if (on_cuda) {
        CHECK(check_call_devices(q, lse, p));
        CHECK(check_device("rotary_cos", cache->rotary_cos, q));
        CHECK(check_device("rotary_sin", cache->rotary_sin, q));
        if (cache->rotary_cos || cache->rotary_sin) CHECK(check_rotary(cache, k_new, D));
        struct attn_scoresrc mask, bias;
        CHECK(check_cache_scoresrcs(p, B, Hq, Hk, Lq, 1, &mask, &bias));
        return cuda_kvcache_route(q, cache, k_new, v_new, out, lse, p, Hq, Hk, D, Dv, Lnew,
                                  bt ? (bt->shape[1] > cap / L1 ? cap : bt->shape[1] * L1) : L1, &mask, &bias);
    }
#endif
    /* masks and biases: DENSE layout over the logical key axis of each batch entry */
    struct attn_scoresrc mask, bias;
    {
        int64_t maxk = 0;
        for (int64_t b = 0; b < B; b++)
            if (i32_at(cache->cache_seqlens, b) + Lnew > maxk) maxk = i32_at(cache->cache_seqlens, b) + Lnew;
        CHECK(check_cache_scoresrcs(p, B, Hq, Hk, Lq, maxk, &mask, &bias));
    }

    /* rotary embedding: tables, dims, and every position inside the tables */
    struct rotary ro;
    const struct cflash_tensor *rc = cache->rotary_cos, *rs = cache->rotary_sin;
    const int q_per_row = p->causal || p->window_left != -1 || p->window_right != -1;
    if (rc || rs) {
        CHECK(check_rotary(cache, k_new, D));
        for (int64_t b = 0; b < B; b++) {
            const int64_t s0 = i32_at(cache->cache_seqlens, b);
            const int64_t last = s0 + (Lnew > (q_per_row ? Lq : 1) ? Lnew : (q_per_row ? Lq : 1)) - 1;
            if (last >= rc->shape[0])
                return INVALID("rotary_cos: batch %lld uses position %lld, the table has %lld rows", (long long)b, (long long)last, (long long)rc->shape[0]);
        }
        ro.cos = rc->data;
        ro.sin = rs->data;
        ro.dtype = rc->dtype;
        ro.s0 = rc->stride[0];
        ro.s1 = rc->stride[1];
        ro.dim = 2 * rc->shape[1];
        ro.interleaved = cache->rotary_interleaved;
    }
    if (B == 0) return CFLASH_STATUS_OK;

    /* the rotated queries: a private fp32 copy [B, Lq, Hq, D] */
    float *qrot = NULL;
    struct cflash_tensor qr;
    if (rc && Lq > 0) {
        qrot = malloc(sizeof(float) * (size_t)(B * Lq * Hq * D));
        if (!qrot) return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "q: cannot allocate the rotated copy");
        const int64_t es = q->dtype == CFLASH_DTYPE_F32 ? 4 : 2;
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < Lq; i++)
                for (int64_t h = 0; h < Hq; h++) {
                    float *row = qrot + ((b * Lq + i) * Hq + h) * D;
                    const char *src = (const char *)q->data + (b * q->stride[0] + i * q->stride[1] + h * q->stride[2]) * es;
                    for (int64_t d = 0; d < D; d++) row[d] = load_f32(src, q->dtype, d);
                    cpu_rotary(row, &ro, i32_at(cache->cache_seqlens, b) + (q_per_row ? i : 0));
                }
        qr = *q;
        qr.data = qrot;
        qr.dtype = CFLASH_DTYPE_F32;
        qr.stride[3] = 1; qr.stride[2] = D; qr.stride[1] = Hq * D; qr.stride[0] = Lq * Hq * D;
        q = &qr;
    }

    /* plan: sequence b has rows [0, Lq) and keys [0, cache_seqlens[b] + Lnew) */
    int64_t *idx = malloc(sizeof(int64_t) * 4 * (size_t)B);
    if (!idx) return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "plan: out of memory");
    int64_t *qs = idx, *lq = idx + B, *ks = idx + 2 * B, *lk = idx + 3 * B;
    for (int64_t b = 0; b < B; b++) { qs[b] = 0; lq[b] = Lq; ks[b] = 0; lk[b] = i32_at(cache->cache_seqlens, b) + Lnew; }
    struct attn_plan plan;
    enum cflash_status st = plan_sequences(&plan, B, qs, lq, ks, lk, p);
    free(idx);
    if (st) { free(qrot); return st; }

    struct attn_work w;
    fill_work(&w, 4, q, kc, vc, out, lse, p, B, Hq, Hk, D, Dv);
    w.mask = mask;
    w.bias = bias;
    if (bt) {
        w.block_table = bt->data;
        w.bt_sb = bt->stride[0];
        w.bt_sp = bt->stride[1];
        w.page_size = L1;
    }
    for (int64_t s = 0; s < plan.num_segments; s++)
        plan.segments[s].kvb = bidx ? i32_at(bidx, plan.segments[s].b) : plan.segments[s].b;

    /* append, then attend (the appended rows are read back from the cache); the append runs
     * as the prologue, after the kernel's allocations, so no error can follow it */
    struct kv_append_job aj = {&w, cache, k_new, v_new, Lnew, bidx, rc ? &ro : NULL};
    st = exec_work(&w, p, plan.segments, plan.num_segments, plan.slices, Lnew > 0 ? kv_append_all : NULL, &aj);
    plan_free(&plan);
    free(qrot);
    return st;
}

/* ---- merge ---- */

#ifdef CFLASH_HAVE_CUDA
/* t (if given) lives where o1 does. */
static enum cflash_status merge_check_device(const char *name, const struct cflash_tensor *t,
                                             const struct cflash_tensor *o1) {
    if (!t || (t->device == o1->device && t->device_id == o1->device_id)) return CFLASH_STATUS_OK;
    return INVALID("%s: must be on o1's device (cuda:%d), got %s:%d", name, (int)o1->device_id,
                   t->device == CFLASH_DEVICE_CPU ? "cpu" : "cuda", (int)t->device_id);
}

/* Validated merge on CUDA tensors: both layouts as [B, T, H, Dv] with lse [B, H, T]. */
static enum cflash_status cuda_merge_route(const struct cflash_tensor *o1, const struct cflash_tensor *lse1,
                                           const struct cflash_tensor *o2, const struct cflash_tensor *lse2,
                                           const struct cflash_tensor *out, const struct cflash_tensor *lse_out,
                                           void *stream) {
    const int rank = o1->ndim;
    struct cuda_merge m;
    memset(&m, 0, sizeof m);
    m.o1 = o1->data; m.o2 = o2->data; m.out = out->data;
    m.lse1 = lse1->data; m.lse2 = lse2->data; m.lse_out = lse_out ? lse_out->data : NULL;
    m.dtype = o1->dtype; m.out_dtype = out->dtype;
    m.B = rank == 4 ? o1->shape[0] : 1;
    m.T = o1->shape[rank - 3]; m.H = o1->shape[rank - 2]; m.Dv = o1->shape[rank - 1];
    const struct cflash_tensor *os[3] = {o1, o2, out}, *ls[3] = {lse1, lse2, lse_out};
    int64_t *osd[3] = {m.o1_s, m.o2_s, m.out_s}, *lsd[3] = {m.l1_s, m.l2_s, m.lo_s};
    for (int i = 0; i < 3; i++) {
        osd[i][0] = rank == 4 ? os[i]->stride[0] : 0;
        for (int a = 1; a < 4; a++) osd[i][a] = os[i]->stride[rank - 4 + a];
        if (!ls[i]) continue;
        lsd[i][0] = rank == 4 ? ls[i]->stride[0] : 0;
        for (int a = 1; a < 3; a++) lsd[i][a] = ls[i]->stride[rank - 4 + a];
    }
    m.device_id = o1->device_id;
    m.stream = stream;
    return cuda_merge_launch(&m);
}

/* context.c's merge of its fp32 passes into out of the call's dtype (shapes built there; the
 * public rule "out is o1's dtype or fp32" does not apply to that internal use) */
enum cflash_status cuda_merge_passes(const struct cflash_tensor *o1, const struct cflash_tensor *lse1,
                                     const struct cflash_tensor *o2, const struct cflash_tensor *lse2,
                                     const struct cflash_tensor *out, const struct cflash_tensor *lse_out, void *stream) {
    return cuda_merge_route(o1, lse1, o2, lse2, out, lse_out, stream);
}
#endif

enum cflash_status cflash_merge(const struct cflash_tensor *o1, const struct cflash_tensor *lse1,
                                const struct cflash_tensor *o2, const struct cflash_tensor *lse2,
                                const struct cflash_tensor *out,
                                const struct cflash_tensor *lse_out) {
    return cflash_merge_on_stream(o1, lse1, o2, lse2, out, lse_out, NULL);
}

enum cflash_status cflash_merge_on_stream(const struct cflash_tensor *o1, const struct cflash_tensor *lse1,
                                          const struct cflash_tensor *o2, const struct cflash_tensor *lse2,
                                          const struct cflash_tensor *out,
                                          const struct cflash_tensor *lse_out, void *cuda_stream) {
    if (!o1) return INVALID("o1: must not be NULL");
#ifdef CFLASH_HAVE_CUDA
    const int on_cuda = o1->device == CFLASH_DEVICE_CUDA; /* then every tensor on o1's device */
#else
    const int on_cuda = 0;
#endif
    if (!on_cuda) {
        CHECK(require_cpu("o1", o1));
        CHECK(require_cpu("lse1", lse1));
        CHECK(require_cpu("o2", o2));
        CHECK(require_cpu("lse2", lse2));
        CHECK(require_cpu("out", out));
        CHECK(require_cpu("lse_out", lse_out));
    }
    const int rank = o1->ndim;
    if (rank != 3 && rank != 4) return INVALID("o1: must have 3 ([T, H, Dv]) or 4 ([B, L, H, Dv]) dimensions, got %d", (int)o1->ndim);
    CHECK(check_tensor("o1", o1, rank));
    CHECK(check_float("o1", o1));
    CHECK(check_tensor("o2", o2, rank));
    if (o2->dtype != o1->dtype) return INVALID("o2: dtype must equal o1's (%s), got %s", api_dtype_name(o1->dtype), api_dtype_name(o2->dtype));
    CHECK(check_tensor("out", out, rank));
    if (out->dtype != o1->dtype && out->dtype != CFLASH_DTYPE_F32)
        return INVALID("out: dtype must be o1's (%s) or float32, got %s", api_dtype_name(o1->dtype), api_dtype_name(out->dtype));
    for (int a = 0; a < rank; a++) {
        if (o2->shape[a] != o1->shape[a]) return INVALID("o2: shape[%d] must equal o1's (%lld), got %lld", a, (long long)o1->shape[a], (long long)o2->shape[a]);
        if (out->shape[a] != o1->shape[a]) return INVALID("out: shape[%d] must equal o1's (%lld), got %lld", a, (long long)o1->shape[a], (long long)out->shape[a]);
    }
    CHECK(check_output_layout("out", out));
    /* lse: [H, T] for rank 3, [B, H, L] for rank 4 */
    int64_t want[3];
    const int lrank = rank - 1;
    if (rank == 3) { want[0] = o1->shape[1]; want[1] = o1->shape[0]; }
    else { want[0] = o1->shape[0]; want[1] = o1->shape[2]; want[2] = o1->shape[1]; }
    const struct cflash_tensor *ls[3] = {lse1, lse2, lse_out};
    const char *ln[3] = {"lse1", "lse2", "lse_out"};
    for (int i = 0; i < 3; i++) {
        if (i == 2 && !lse_out) break;
        CHECK(check_tensor(ln[i], ls[i], lrank));
        CHECK(check_dtype(ln[i], ls[i], CFLASH_DTYPE_F32));
        for (int a = 0; a < lrank; a++)
            if (ls[i]->shape[a] != want[a])
                return INVALID("%s: shape[%d] must be %lld (lse layout %s), got %lld", ln[i], a, (long long)want[a], rank == 3 ? "[H, T]" : "[B, H, L]", (long long)ls[i]->shape[a]);
    }
    if (lse_out) CHECK(check_output_layout("lse_out", lse_out));
#ifdef CFLASH_HAVE_CUDA
    if (on_cuda) {
        const struct cflash_tensor *all[5] = {o2, lse1, lse2, out, lse_out};
        const char *names[5] = {"o2", "lse1", "lse2", "out", "lse_out"};
        for (int i = 0; i < 5; i++) CHECK(merge_check_device(names[i], all[i], o1));
        return cuda_merge_route(o1, lse1, o2, lse2, out, lse_out, cuda_stream);
    }
#endif
    return cpu_merge(o1, lse1, o2, lse2, out, lse_out);
}
