/*
 * context.c - the flash-mlm layer context (SPEC.md section 6): a library-owned cache of
 * per-layer context K/V, and attention of new tokens over (their context + new tokens).
 *
 * An entry stores its C contexts packed: keys [total, Hk, D] (and values [total, Hk, Dv] unless
 * V := K), context c at rows [cu[c], cu[c + 1]). Attention runs as two passes over the same
 * queries, each an ordinary per-sequence attention (api.c run_attention) into fp32 scratch:
 *   pass 1: sequence b over context ctx(b), read in place from the entry (no sink);
 *   pass 2: sequence b over its new keys (or those of sequences 0..b when cumulative);
 * then the state merge (SPEC section 7) writes out and lse. The merge is exact, so this is the
 * softmax over the union; its cost is one extra fp32 read/write of the outputs. Without a
 * context the second pass writes out directly.
 *
 * Nothing is written before everything is validated and allocated: a prefill builds the new
 * entry in fresh memory, attends (reading the old entry), and only then swaps it in.
 *
 * CUDA tensors: an entry lives on the GPU of the call that stored it (and is an error for a call
 * on another device); the passes run the prefill kernel over explicit sequences (api.c
 * run_attention) and the CUDA merge. The metadata (cu_seqlens, ctx_idx) is copied to the host
 * with one stream synchronization, since the sequences are planned there: flash-mlm calls are
 * not in the decode hot path.
 */
#include "internal.h"
#ifdef CFLASH_HAVE_CUDA
#include "cuda/cuda.h"
#endif

#include <stdlib.h>
#include <string.h>

struct ctx_entry {
    int64_t layer_id;
    int64_t C, Hk, D, Dv;
    enum cflash_dtype dtype;
    int v_is_k;
    int32_t device; /* -1: host memory; else the CUDA device holding k / v */
    int64_t *cu;  /* [C + 1] */
    char *k, *v;  /* packed [cu[C], Hk, D] / [cu[C], Hk, Dv]; v NULL when v_is_k */
};

struct cflash_context_cache {
    struct ctx_entry *entries;
    int64_t n, cap;
};

static int64_t dtype_size(enum cflash_dtype t) { return t == CFLASH_DTYPE_F32 ? 4 : 2; }

static void entry_free(struct ctx_entry *e) {
    free(e->cu);
#ifdef CFLASH_HAVE_CUDA
    if (e->device >= 0) {
        cuda_mem_free(e->device, NULL, 0, e->k);
        cuda_mem_free(e->device, NULL, 0, e->v);
        memset(e, 0, sizeof *e);
        return;
    }
#endif
    free(e->k);
    free(e->v);
    memset(e, 0, sizeof *e);
}

/* The device a tensor's data lives on, as an entry records it. */
static int32_t device_of(const struct cflash_tensor *t) {
    return t->device == CFLASH_DEVICE_CUDA ? t->device_id : -1;
}

static struct ctx_entry *entry_find(const struct cflash_context_cache *c, int64_t layer_id) {
    for (int64_t i = 0; i < c->n; i++)
        if (c->entries[i].layer_id == layer_id) return &c->entries[i];
    return NULL;
}

/* Room for one more entry, so that installing one later cannot fail. */
static enum cflash_status cache_reserve(struct cflash_context_cache *c) {
    if (c->n < c->cap) return CFLASH_STATUS_OK;
    const int64_t cap = c->cap ? 2 * c->cap : 8;
    struct ctx_entry *e = realloc(c->entries, sizeof *e * (size_t)cap);
    if (!e) return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "cache: out of memory");
    c->entries = e;
    c->cap = cap;
    return CFLASH_STATUS_OK;
}

/* Replace layer e->layer_id's entry by *e (taking ownership); cache_reserve ran before. */
static void cache_install(struct cflash_context_cache *c, struct ctx_entry *e) {
    struct ctx_entry *old = entry_find(c, e->layer_id);
    if (old) entry_free(old);
    else old = &c->entries[c->n++];
    *old = *e;
    memset(e, 0, sizeof *e);
}

enum cflash_status cflash_context_cache_create(cflash_context_cache_t *cache) {
    if (!cache) return INVALID("cache: must not be NULL");
    struct cflash_context_cache *c = calloc(1, sizeof *c);
    if (!c) return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "cache: out of memory");
    *cache = c;
    return CFLASH_STATUS_OK;
}

void cflash_context_cache_destroy(cflash_context_cache_t cache) {
    if (!cache) return;
    for (int64_t i = 0; i < cache->n; i++) entry_free(&cache->entries[i]);
    free(cache->entries);
    free(cache);
}

enum cflash_status cflash_context_cache_clear(cflash_context_cache_t cache, int64_t layer_id) {
    if (!cache) return INVALID("cache: must not be NULL");
    if (layer_id < -1) return INVALID("layer_id: must be >= 0, or -1 for every layer, got %lld", (long long)layer_id);
    for (int64_t i = 0; i < cache->n;) {
        if (layer_id == -1 || cache->entries[i].layer_id == layer_id) {
            entry_free(&cache->entries[i]);
            cache->entries[i] = cache->entries[--cache->n];
        } else {
            i++;
        }
    }
    return CFLASH_STATUS_OK;
}

enum cflash_status cflash_context_cache_info(const struct cflash_context_cache *cache,
                                             int64_t layer_id, struct cflash_context_info *info) {
    if (!cache) return INVALID("cache: must not be NULL");
    if (!info) return INVALID("info: must not be NULL");
    if (layer_id < 0) return INVALID("layer_id: must be >= 0, got %lld", (long long)layer_id);
    memset(info, 0, sizeof *info);
    const struct ctx_entry *e = entry_find(cache, layer_id);
    if (!e) return CFLASH_STATUS_OK;
    info->present = 1;
    info->v_is_k = e->v_is_k;
    info->dtype = e->dtype;
    info->num_contexts = e->C;
    info->Hk = e->Hk;
    info->D = e->D;
    info->Dv = e->Dv;
    info->total_len = e->cu[e->C];
    return CFLASH_STATUS_OK;
}

enum cflash_status cflash_context_cache_lengths(const struct cflash_context_cache *cache,
                                                int64_t layer_id, int64_t *lengths) {
    if (!cache) return INVALID("cache: must not be NULL");
    if (layer_id < 0) return INVALID("layer_id: must be >= 0, got %lld", (long long)layer_id);
    const struct ctx_entry *e = entry_find(cache, layer_id);
    if (!e) return INVALID("layer_id: no entry for layer %lld", (long long)layer_id);
    if (!lengths) return INVALID("lengths: must not be NULL");
    for (int64_t c = 0; c < e->C; c++) lengths[c] = e->cu[c + 1] - e->cu[c];
    return CFLASH_STATUS_OK;
}

/* ---- new tokens: a validated call's K/V and its sequences ---- */

struct kv_source {
    int rank;                             /* 4: dense [B, L, Hk, .]; 3: packed [T, Hk, .] */
    const struct cflash_tensor *k, *v;    /* v NULL: V := K (prefix of Dv columns) */
    int64_t B, Hk, D, Dv;
    int v_is_k;
    const int64_t *ks, *lk;               /* sequence b: key rows [ks[b], ks[b] + lk[b]) */
};

/* V is K: v NULL, or a view of k's first Dv columns (same data and strides, Dv <= D). */
static int is_view_of_k(const struct cflash_tensor *k, const struct cflash_tensor *v) {
    if (!v) return 1;
    if (!v->data || v->data != k->data || v->ndim != k->ndim || v->shape[v->ndim - 1] > k->shape[k->ndim - 1]) return 0;
    for (int a = 0; a < k->ndim - 1; a++)
        if (v->shape[a] != k->shape[a] || (v->shape[a] > 1 && v->stride[a] != k->stride[a])) return 0;
    return 1;
}

/* Copy key row t (all heads) of sequence b's source into dst ([Hk, dim] packed). */
static void copy_rows(char *dst, const struct cflash_tensor *t, int rank, int64_t b, int64_t row,
                      int64_t Hk, int64_t dim) {
    const int64_t es = dtype_size(t->dtype);
    const int64_t base = rank == 4 ? b * t->stride[0] + row * t->stride[1] : row * t->stride[0];
    const int64_t sh = t->stride[rank - 2];
    for (int64_t h = 0; h < Hk; h++)
        memcpy(dst + h * dim * es, (const char *)t->data + (base + h * sh) * es, (size_t)(dim * es));
}

/* Device entries: the rows of src sequence b (all heads) after fill into dst, one 2-D copy per
 * head (rows at the source's token stride, packed [Hk, dim] rows in the entry). */
#ifdef CFLASH_HAVE_CUDA
static enum cflash_status copy_rows_device(char *dst, const struct cflash_tensor *t, int rank, int64_t b, int64_t row,
                                           int64_t n, int64_t Hk, int64_t dim, void *stream) {
    const int64_t es = dtype_size(t->dtype), ts = t->stride[rank - 3], sh = t->stride[rank - 2];
    if (ts < 0 || sh < 0)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "k: storing a context from CUDA tensors needs non-negative strides");
    const int64_t base = rank == 4 ? b * t->stride[0] + row * ts : row * ts;
    for (int64_t h = 0; h < Hk; h++)
        CHECK(cuda_mem_copy2d("cache", t->device_id, stream, dst + h * dim * es, (size_t)(Hk * dim * es),
                              (const char *)t->data + (base + h * sh) * es, (size_t)(ts * es), (size_t)(dim * es), (size_t)n));
    return CFLASH_STATUS_OK;
}
#endif

/* The entry after storing src: REPLACE (old NULL: context b = sequence b) or APPEND (sequence b
 * appended to old's context map[b], in batch order; map NULL: b). All memory is new; on the
 * source's device for CUDA tensors (the copies are complete when this returns: the stream is
 * synchronized, so any later stream reads a whole entry). */
static enum cflash_status entry_build(struct ctx_entry *e, int64_t layer_id, const struct kv_source *src,
                                      const struct ctx_entry *old, const int64_t *map, void *stream) {
    memset(e, 0, sizeof *e);
    e->layer_id = layer_id;
    e->device = device_of(src->k);
    e->C = old ? old->C : src->B;
    e->Hk = src->Hk; e->D = src->D; e->Dv = src->Dv;
    e->dtype = src->k->dtype;
    e->v_is_k = src->v_is_k;
    e->cu = calloc((size_t)(e->C + 1), sizeof(int64_t));
    if (!e->cu) return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "cache: out of memory");
    for (int64_t c = 0; c < e->C; c++) e->cu[c + 1] = old ? old->cu[c + 1] - old->cu[c] : 0;
    for (int64_t b = 0; b < src->B; b++) e->cu[(old ? (map ? map[b] : b) : b) + 1] += src->lk[b];
    for (int64_t c = 0; c < e->C; c++) e->cu[c + 1] += e->cu[c];
    const int64_t total = e->cu[e->C], es = dtype_size(e->dtype);
    const size_t kbytes = (size_t)(total * e->Hk * e->D * es), vbytes = (size_t)(total * e->Hk * e->Dv * es);
#ifdef CFLASH_HAVE_CUDA
    if (e->device >= 0) {
        const int64_t krow = e->Hk * e->D * es, vrow = e->Hk * e->Dv * es;
        enum cflash_status st = cuda_mem_alloc("cache", e->device, stream, 0, kbytes, (void **)&e->k);
        if (!st && !e->v_is_k) st = cuda_mem_alloc("cache", e->device, stream, 0, vbytes, (void **)&e->v);
        for (int64_t c = 0; !st && old && c < e->C; c++) { /* the old contexts first, each at its new start */
            const int64_t n = old->cu[c + 1] - old->cu[c];
            st = cuda_mem_copy2d("cache", e->device, stream, e->k + e->cu[c] * krow, (size_t)krow, old->k + old->cu[c] * krow,
                                 (size_t)krow, (size_t)krow, (size_t)n);
            if (!st && e->v)
                st = cuda_mem_copy2d("cache", e->device, stream, e->v + e->cu[c] * vrow, (size_t)vrow, old->v + old->cu[c] * vrow,
                                     (size_t)vrow, (size_t)vrow, (size_t)n);
        }
        /* then each sequence after what its context already holds (sequences of one context in batch order) */
        int64_t *fill = st ? NULL : malloc(sizeof(int64_t) * (size_t)(e->C > 0 ? e->C : 1));
        if (!st && !fill) st = cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "cache: out of memory");
        for (int64_t c = 0; !st && c < e->C; c++) fill[c] = e->cu[c] + (old ? old->cu[c + 1] - old->cu[c] : 0);
        for (int64_t b = 0; !st && b < src->B; b++) {
            const int64_t c = old ? (map ? map[b] : b) : b;
            st = copy_rows_device(e->k + fill[c] * krow, src->k, src->rank, b, src->ks[b], src->lk[b], e->Hk, e->D, stream);
            if (!st && e->v) st = copy_rows_device(e->v + fill[c] * vrow, src->v, src->rank, b, src->ks[b], src->lk[b], e->Hk, e->Dv, stream);
            fill[c] += src->lk[b];
        }
        free(fill);
        if (!st) st = cuda_mem_sync("cache", e->device, stream);
        if (st) entry_free(e);
        return st;
    }
#else
    (void)stream;
#endif
    e->k = malloc(kbytes ? kbytes : 1);
    e->v = e->v_is_k ? NULL : malloc(vbytes ? vbytes : 1);
    if (!e->k || (!e->v_is_k && !e->v)) {
        entry_free(e);
        return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "cache: cannot allocate %lld context rows", (long long)total);
    }
    const int64_t krow = e->Hk * e->D * es, vrow = e->Hk * e->Dv * es;
    int64_t *fill = malloc(sizeof(int64_t) * (size_t)(e->C > 0 ? e->C : 1)); /* next row per context */
    if (!fill) { entry_free(e); return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "cache: out of memory"); }
    for (int64_t c = 0; c < e->C; c++) {
        fill[c] = e->cu[c];
        if (!old) continue;
        const int64_t n = old->cu[c + 1] - old->cu[c];
        memcpy(e->k + fill[c] * krow, old->k + old->cu[c] * krow, (size_t)(n * krow));
        if (e->v) memcpy(e->v + fill[c] * vrow, old->v + old->cu[c] * vrow, (size_t)(n * vrow));
        fill[c] += n;
    }
    for (int64_t b = 0; b < src->B; b++) {
        const int64_t c = old ? (map ? map[b] : b) : b;
        for (int64_t t = 0; t < src->lk[b]; t++, fill[c]++) {
            copy_rows(e->k + fill[c] * krow, src->k, src->rank, b, src->ks[b] + t, e->Hk, e->D);
            if (e->v) copy_rows(e->v + fill[c] * vrow, src->v, src->rank, b, src->ks[b] + t, e->Hk, e->Dv);
        }
    }
    free(fill);
    return CFLASH_STATUS_OK;
}

/* An existing entry must match the call exactly. */
static enum cflash_status entry_match(const struct ctx_entry *e, enum cflash_dtype dtype,
                                      int64_t Hk, int64_t D, int64_t Dv, int v_is_k, int32_t device) {
    if (e->device != device)
        return INVALID("layer_id: the entry of layer %lld lives on %s%d, the call's tensors on %s%d", (long long)e->layer_id,
                       e->device < 0 ? "the host" : "CUDA device ", e->device < 0 ? 0 : (int)e->device,
                       device < 0 ? "the host" : "CUDA device ", device < 0 ? 0 : (int)device);
    if (e->Hk != Hk || e->D != D || e->Dv != Dv || e->dtype != dtype || e->v_is_k != v_is_k)
        return INVALID("layer_id: the entry of layer %lld holds Hk=%lld D=%lld Dv=%lld %s%s, the call has Hk=%lld D=%lld Dv=%lld %s%s",
                       (long long)e->layer_id, (long long)e->Hk, (long long)e->D, (long long)e->Dv,
                       api_dtype_name(e->dtype), e->v_is_k ? " V:=K" : "", (long long)Hk, (long long)D,
                       (long long)Dv, api_dtype_name(dtype), v_is_k ? " V:=K" : "");
    return CFLASH_STATUS_OK;
}

/* Per-sequence (start, length) of a dense (rank 4, length L) or packed (cu) axis. */
static void sequences(int64_t *s, int64_t *l, int64_t B, const struct cflash_tensor *cu, int64_t L) {
    for (int64_t b = 0; b < B; b++) {
        if (cu) {
            const int32_t *c = cu->data;
            s[b] = c[b * cu->stride[0]];
            l[b] = c[(b + 1) * cu->stride[0]] - s[b];
        } else {
            s[b] = 0;
            l[b] = L;
        }
    }
}

/* k / v of a store or an attention call: dense [B, L, Hk, .] or packed [T, Hk, .] with cu. */
static enum cflash_status check_kv(int rank, const struct cflash_tensor *k, const struct cflash_tensor *v,
                                   int64_t *Hk, int64_t *D, int64_t *Dv) {
    const int la = rank - 3, ha = rank - 2, da = rank - 1;
    CHECK(check_tensor("k", k, rank));
    CHECK(check_float("k", k));
    CHECK(check_unit_last("k", k));
    *Hk = k->shape[ha];
    *D = k->shape[da];
    if (*Hk < 1) return INVALID("k: number of heads must be >= 1");
    if (*D < 1 || *D > CFLASH_MAX_HEAD_DIM) return INVALID("k: head dim D must be in [1, %d], got %lld", CFLASH_MAX_HEAD_DIM, (long long)*D);
    *Dv = *D;
    if (v) {
        CHECK(check_tensor("v", v, rank));
        if (v->dtype != k->dtype) return INVALID("v: dtype must equal k's (%s), got %s", api_dtype_name(k->dtype), api_dtype_name(v->dtype));
        CHECK(check_unit_last("v", v));
        if (rank == 4) CHECK(check_dim("v", v, 0, k->shape[0], "B"));
        CHECK(check_dim("v", v, la, k->shape[la], "Lk"));
        CHECK(check_dim("v", v, ha, *Hk, "Hk"));
        *Dv = v->shape[da];
        if (*Dv < 1 || *Dv > CFLASH_MAX_HEAD_DIM) return INVALID("v: head dim Dv must be in [1, %d], got %lld", CFLASH_MAX_HEAD_DIM, (long long)*Dv);
    }
    return CFLASH_STATUS_OK;
}

/* A 1-D int32 metadata tensor on q's device, readable on the host: itself for host tensors; for
 * CUDA tensors a host copy of its span (*buf, freed by the caller) after the stream's pending
 * work, in *h. The descriptor is checked first (check_cu_seqlens / the caller's checks read the
 * contents of the copy afterwards). */
static enum cflash_status host_metadata(const char *name, const struct cflash_tensor *t, const struct cflash_tensor *q,
                                        void *stream, struct cflash_tensor *h, int32_t **buf) {
    *buf = NULL;
    if (!t) return CFLASH_STATUS_OK;
    *h = *t;
    CHECK(check_device(name, t, q)); /* metadata of a GPU call lives on its device, as elsewhere */
    if (t->device != CFLASH_DEVICE_CUDA) return CFLASH_STATUS_OK;
#ifdef CFLASH_HAVE_CUDA
    CHECK(check_tensor(name, t, 1));
    if (t->dtype != CFLASH_DTYPE_I32) return INVALID("%s: dtype must be int32", name);
    if (t->stride[0] < 0) return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "%s: a CUDA metadata tensor needs a non-negative stride", name);
    const int64_t n = t->shape[0] > 0 ? (t->shape[0] - 1) * t->stride[0] + 1 : 0;
    *buf = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    if (!*buf) return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "%s: out of memory", name);
    const size_t bytes = sizeof(int32_t) * (size_t)n;
    enum cflash_status st = cuda_mem_copy2d(name, t->device_id, stream, *buf, bytes, t->data, bytes, bytes, n > 0);
    if (!st) st = cuda_mem_sync(name, t->device_id, stream);
    if (st) { free(*buf); *buf = NULL; return st; }
    h->data = *buf;
    h->device = CFLASH_DEVICE_CPU;
    h->device_id = 0;
    return CFLASH_STATUS_OK;
#else
    (void)q; (void)stream;
    return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "%s: CUDA tensors need the CUDA backend, which this build does not have", name);
#endif
}

enum cflash_status cflash_context_cache_store(cflash_context_cache_t cache, int64_t layer_id,
                                              const struct cflash_tensor *k,
                                              const struct cflash_tensor *v,
                                              const struct cflash_tensor *cu_seqlens,
                                              enum cflash_prefill_mode mode) {
    if (!cache) return INVALID("cache: must not be NULL");
    if (layer_id < 0) return INVALID("layer_id: must be >= 0, got %lld", (long long)layer_id);
    if (mode != CFLASH_PREFILL_REPLACE && mode != CFLASH_PREFILL_APPEND)
        return INVALID("mode: must be CFLASH_PREFILL_REPLACE or CFLASH_PREFILL_APPEND, got %d", (int)mode);
    if (!k) return INVALID("k: must not be NULL");
#ifndef CFLASH_HAVE_CUDA
    CHECK(require_cpu("k", k));
#endif
    if (k->device == CFLASH_DEVICE_CPU) {
        CHECK(require_cpu("v", v));
        CHECK(require_cpu("cu_seqlens", cu_seqlens));
    } else if (v) {
        CHECK(check_device("v", v, k));
    }
    const int rank = cu_seqlens ? 3 : 4;
    struct kv_source src = {.rank = rank, .k = k, .v = v};
    CHECK(check_kv(rank, k, v, &src.Hk, &src.D, &src.Dv));
    src.v_is_k = is_view_of_k(k, v);
    /* CUDA: cu_seqlens read on the host (this store has no stream: the legacy default one) */
    struct cflash_tensor hcu;
    int32_t *cubuf = NULL;
    if (cu_seqlens) CHECK(check_cu_seqlens("cu_seqlens", "cu_seqlens", cu_seqlens, -1, k->shape[0], -1));
    CHECK(host_metadata("cu_seqlens", cu_seqlens, k, NULL, &hcu, &cubuf));
    if (cu_seqlens) {
        cu_seqlens = &hcu;
        const enum cflash_status cst = check_cu_seqlens("cu_seqlens", "cu_seqlens", cu_seqlens, -1, k->shape[0], -1);
        if (cst) { free(cubuf); return cst; }
    }
    src.B = cu_seqlens ? cu_seqlens->shape[0] - 1 : k->shape[0];
    const struct ctx_entry *old = entry_find(cache, layer_id);
    enum cflash_status st = CFLASH_STATUS_OK;
    if (src.B < 1) st = INVALID("k: an entry holds C >= 1 contexts; this store has no sequence");
    if (!st && mode == CFLASH_PREFILL_APPEND && old) {
        st = entry_match(old, k->dtype, src.Hk, src.D, src.Dv, src.v_is_k, device_of(k));
        if (!st && old->C != src.B)
            st = INVALID("k: appending %lld sequences to layer %lld, whose entry has %lld contexts", (long long)src.B, (long long)layer_id, (long long)old->C);
    }
    if (mode == CFLASH_PREFILL_REPLACE) old = NULL;
    int64_t *idx = st ? NULL : malloc(sizeof(int64_t) * 2 * (size_t)(src.B > 0 ? src.B : 1));
    if (!st && !idx) st = cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "cache: out of memory");
    if (st) { free(cubuf); return st; }
    sequences(idx, idx + src.B, src.B, cu_seqlens, rank == 4 ? k->shape[1] : 0);
    free(cubuf);
    src.ks = idx;
    src.lk = idx + src.B;
    struct ctx_entry e;
    st = cache_reserve(cache);
    if (!st) st = entry_build(&e, layer_id, &src, old, NULL, NULL);
    free(idx);
    if (st) return st;
    cache_install(cache, &e);
    return CFLASH_STATUS_OK;
}

/* ---- attention ---- */

/* A contiguous fp32 scratch tensor shaped like out (rank 4 [B, L, H, Dv] / 3 [T, H, Dv]) or
 * like lse ([B, H, L] / [H, T]). */
static struct cflash_tensor scratch(float *data, int rank, int64_t B, int64_t T, int64_t H, int64_t Dv,
                                    int is_lse) {
    struct cflash_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = CFLASH_DTYPE_F32;
    t.device = CFLASH_DEVICE_CPU;
    int64_t shape[4], n = 0;
    if (rank == 4) shape[n++] = B;
    if (is_lse) { shape[n++] = H; shape[n++] = T; }
    else { shape[n++] = T; shape[n++] = H; shape[n++] = Dv; }
    t.ndim = (int32_t)n;
    int64_t stride = 1;
    for (int64_t a = n - 1; a >= 0; a--) { t.shape[a] = shape[a]; t.stride[a] = stride; stride *= shape[a]; }
    return t;
}

/* cflash_attn_mlm after the device rules, with host-readable metadata */
static enum cflash_status mlm_run(const struct cflash_tensor *q, const struct cflash_tensor *k,
                                  const struct cflash_tensor *v, const struct cflash_tensor *cu_seqlens_q,
                                  const struct cflash_tensor *cu_seqlens_k, const struct cflash_mlm_args *m,
                                  const struct cflash_tensor *out, const struct cflash_tensor *lse,
                                  const struct cflash_attn_params *p) {
    const int rank = cu_seqlens_q ? 3 : 4;
    int64_t Hq = 0, Hk = 0, D = 0, Dv = 0;
    CHECK(check_qkvo(rank, q, k, v, out, &Hq, &Hk, &D, &Dv));
    int64_t B;
    if (rank == 3) {
        CHECK(check_cu_seqlens("cu_seqlens_q", "cu_seqlens_q", cu_seqlens_q, -1, q->shape[0], -1));
        B = cu_seqlens_q->shape[0] - 1;
        if (cu_seqlens_k) CHECK(check_cu_seqlens("cu_seqlens_k", "cu_seqlens_k", cu_seqlens_k, B, k->shape[0], -1));
        else if (k->shape[0] != q->shape[0])
            return INVALID("k: without cu_seqlens_k, k must have Tq = %lld tokens (cu_seqlens_q is used), got %lld", (long long)q->shape[0], (long long)k->shape[0]);
    } else {
        if (cu_seqlens_k) return INVALID("cu_seqlens_k: must be NULL for a dense call (cu_seqlens_q is NULL)");
        B = q->shape[0];
    }
    const int64_t T = rank == 4 ? q->shape[1] : q->shape[0];
    CHECK(check_lse(lse, rank == 4, B, Hq, T));
    CHECK(check_params(p, B, Hq));
    if (p->causal || p->window_left != -1 || p->window_right != -1 || p->alibi_slopes || p->mask || p->bias)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "%s: flash-mlm attention is bidirectional and takes no masks (scale, softcap and sinks only)",
                                p->causal ? "causal" : p->window_left != -1 ? "window_left" : p->window_right != -1 ? "window_right" : p->alibi_slopes ? "alibi_slopes" : p->mask ? "mask" : "bias");
    if (m->cumulative != 0 && m->cumulative != 1) return INVALID("cumulative: must be 0 or 1, got %d", (int)m->cumulative);
    if (m->prefill != 0 && m->prefill != 1) return INVALID("prefill: must be 0 or 1, got %d", (int)m->prefill);
    if (m->cumulative && rank == 4) return INVALID("cumulative: cumulative query attention needs a packed call (cu_seqlens_q)");
    if (m->prefill && !m->cache) return INVALID("prefill: needs a cache");
    if (m->prefill && m->prefill_mode != CFLASH_PREFILL_REPLACE && m->prefill_mode != CFLASH_PREFILL_APPEND)
        return INVALID("prefill_mode: must be CFLASH_PREFILL_REPLACE or CFLASH_PREFILL_APPEND, got %d", (int)m->prefill_mode);
    if (m->cache && m->layer_id < 0) return INVALID("layer_id: must be >= 0, got %lld", (long long)m->layer_id);
    const int v_is_k = is_view_of_k(k, v);

    /* the layer's entry and each sequence's context */
    const struct ctx_entry *e = m->cache ? entry_find(m->cache, m->layer_id) : NULL;
    if (m->ctx_idx) {
        CHECK(check_tensor("ctx_idx", m->ctx_idx, 1));
        CHECK(check_dtype("ctx_idx", m->ctx_idx, CFLASH_DTYPE_I32));
        CHECK(check_dim("ctx_idx", m->ctx_idx, 0, B, "B"));
    }
    if (e) {
        CHECK(entry_match(e, q->dtype, Hk, D, Dv, v_is_k, device_of(q)));
        if (!m->ctx_idx && e->C != 1 && e->C != B)
            return INVALID("ctx_idx: layer %lld has %lld contexts, neither 1 nor B = %lld; give ctx_idx", (long long)m->layer_id, (long long)e->C, (long long)B);
        for (int64_t b = 0; m->ctx_idx && b < B; b++) {
            const int32_t c = ((const int32_t *)m->ctx_idx->data)[b * m->ctx_idx->stride[0]];
            if (c < 0 || c >= e->C)
                return INVALID("ctx_idx: entry %lld = %d is not a context of layer %lld (it has %lld)", (long long)b, (int)c, (long long)m->layer_id, (long long)e->C);
        }
    }
    if (B == 0 && m->prefill) return INVALID("prefill: an entry holds C >= 1 contexts; this call has no sequence");
    if (B == 0) return CFLASH_STATUS_OK;

    /* per-sequence index arrays: rows, new keys, context keys, context map */
    const size_t nb = (size_t)(B > 0 ? B : 1);
    int64_t *idx = malloc(sizeof(int64_t) * 7 * nb);
    if (!idx) return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "plan: out of memory");
    int64_t *qs = idx, *lq = idx + nb, *ks = idx + 2 * nb, *lk = idx + 3 * nb;
    int64_t *cs = idx + 4 * nb, *cl = idx + 5 * nb, *map = idx + 6 * nb;
    sequences(qs, lq, B, cu_seqlens_q, rank == 4 ? q->shape[1] : 0);
    sequences(ks, lk, B, rank == 3 ? (cu_seqlens_k ? cu_seqlens_k : cu_seqlens_q) : NULL, rank == 4 ? k->shape[1] : 0);
    int64_t ctx_rows = 0;
    for (int64_t b = 0; b < B; b++) {
        map[b] = m->ctx_idx ? ((const int32_t *)m->ctx_idx->data)[b * m->ctx_idx->stride[0]] : (e && e->C == 1 ? 0 : b);
        cs[b] = e ? e->cu[map[b]] : 0;
        cl[b] = e ? e->cu[map[b] + 1] - cs[b] : 0;
        ctx_rows += lq[b] > 0 ? cl[b] : 0;
    }

    /* the entry a prefill installs, built before anything is computed */
    enum cflash_status st = CFLASH_STATUS_OK;
    struct ctx_entry next;
    memset(&next, 0, sizeof next);
    if (m->prefill) {
        struct kv_source src = {.rank = rank, .k = k, .v = v, .B = B, .Hk = Hk, .D = D, .Dv = Dv,
                                .v_is_k = v_is_k, .ks = ks, .lk = lk};
        const int append = m->prefill_mode == CFLASH_PREFILL_APPEND && e;
        st = cache_reserve(m->cache);
        if (!st) st = entry_build(&next, m->layer_id, &src, append ? e : NULL, append ? map : NULL, p->cuda_stream);
        if (st) { free(idx); return st; }
    }
    /* cumulative: sequence b sees the new keys of sequences 0..b */
    if (m->cumulative)
        for (int64_t b = 0; b < B; b++) { lk[b] += ks[b] - ks[0]; ks[b] = ks[0]; }

    if (B > 0 && ctx_rows == 0) {
        st = run_attention(rank, q, k, v, out, lse, p, B, Hq, Hk, D, Dv, qs, lq, ks, lk, NULL, NULL);
    } else if (B > 0) {
        const int64_t Tq = rank == 4 ? B * T : T;
        const size_t bytes = sizeof(float) * (size_t)(2 * Tq * Hq * (Dv + 1));
        const int on_cuda = q->device == CFLASH_DEVICE_CUDA;
        (void)on_cuda; /* read only in CUDA builds */
        float *buf = NULL;
#ifdef CFLASH_HAVE_CUDA
        if (on_cuda) st = cuda_mem_alloc("out", q->device_id, p->cuda_stream, 1, bytes, (void **)&buf);
        else
#endif
        if (!(buf = malloc(bytes)))
            st = cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "out: cannot allocate the context pass's scratch (%lld rows)", (long long)Tq);
        if (!st) {
            struct cflash_tensor o1 = scratch(buf, rank, B, T, Hq, Dv, 0);
            struct cflash_tensor o2 = scratch(buf + Tq * Hq * Dv, rank, B, T, Hq, Dv, 0);
            struct cflash_tensor l1 = scratch(buf + 2 * Tq * Hq * Dv, rank, B, T, Hq, Dv, 1);
            struct cflash_tensor l2 = scratch(buf + 2 * Tq * Hq * Dv + Tq * Hq, rank, B, T, Hq, Dv, 1);
            struct cflash_tensor *scr[4] = {&o1, &o2, &l1, &l2};
            for (int i = 0; i < 4; i++) { scr[i]->device = q->device; scr[i]->device_id = q->device_id; }
            /* the entry's packed keys as an operand of the call's rank (batch stride 0) */
            const int64_t total = e->cu[e->C];
            struct cflash_tensor ck, cv;
            memset(&ck, 0, sizeof ck);
            ck.data = e->k;
            ck.dtype = e->dtype;
            ck.device = q->device;
            ck.device_id = q->device_id;
            ck.ndim = rank;
            if (rank == 4) { ck.shape[0] = B; ck.stride[0] = 0; }
            ck.shape[rank - 3] = total; ck.stride[rank - 3] = Hk * D;
            ck.shape[rank - 2] = Hk;    ck.stride[rank - 2] = D;
            ck.shape[rank - 1] = D;     ck.stride[rank - 1] = 1;
            cv = ck;
            if (e->v) { cv.data = e->v; cv.stride[rank - 3] = Hk * Dv; cv.stride[rank - 2] = Dv; }
            cv.shape[rank - 1] = Dv;
            struct cflash_attn_params pc = *p;
            pc.sinks = NULL; /* the sink enters the softmax once (second pass) */
            st = run_attention(rank, q, &ck, &cv, &o1, &l1, &pc, B, Hq, Hk, D, Dv, qs, lq, cs, cl, NULL, NULL);
            if (!st) st = run_attention(rank, q, k, v, &o2, &l2, p, B, Hq, Hk, D, Dv, qs, lq, ks, lk, NULL, NULL);
#ifdef CFLASH_HAVE_CUDA
            if (!st && on_cuda) st = cuda_merge_passes(&o1, &l1, &o2, &l2, out, lse, p->cuda_stream);
            else
#endif
            if (!st) st = cpu_merge(&o1, &l1, &o2, &l2, out, lse);
        }
#ifdef CFLASH_HAVE_CUDA
        if (on_cuda) cuda_mem_free(q->device_id, p->cuda_stream, 1, buf); /* stream-ordered: after the merge */
        else
#endif
        free(buf);
    }
    free(idx);
    if (st) { entry_free(&next); return st; }
    if (m->prefill) cache_install(m->cache, &next);
    return CFLASH_STATUS_OK;
}

enum cflash_status cflash_attn_mlm(const struct cflash_tensor *q, const struct cflash_tensor *k,
                                   const struct cflash_tensor *v,
                                   const struct cflash_tensor *cu_seqlens_q,
                                   const struct cflash_tensor *cu_seqlens_k,
                                   const struct cflash_mlm_args *mlm,
                                   const struct cflash_tensor *out,
                                   const struct cflash_tensor *lse,
                                   const struct cflash_attn_params *params) {
    const struct cflash_attn_params defaults = CFLASH_ATTN_PARAMS_INIT;
    const struct cflash_attn_params *p = params ? params : &defaults;
    const struct cflash_mlm_args no_mlm = {0};
    const struct cflash_mlm_args *m = mlm ? mlm : &no_mlm;
    if (!q) return INVALID("q: must not be NULL");
    if (q->device != CFLASH_DEVICE_CUDA) {
        const struct cflash_tensor *all[] = {q, k, v, cu_seqlens_q, cu_seqlens_k, m->ctx_idx, out, lse};
        const char *names[] = {"q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "ctx_idx", "out", "lse"};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) CHECK(require_cpu(names[i], all[i]));
        CHECK(require_cpu_params(p));
        return mlm_run(q, k, v, cu_seqlens_q, cu_seqlens_k, m, out, lse, p);
    }
#ifndef CFLASH_HAVE_CUDA
    return require_cpu("q", q);
#else
    /* CUDA: every tensor on q's device (check_qkvo: k, v, out); the metadata read on the host */
    CHECK(check_device("lse", lse, q));
    CHECK(check_device("sinks", p->sinks, q));
    struct cflash_tensor hq, hk, hx;
    int32_t *bq = NULL, *bk = NULL, *bx = NULL;
    enum cflash_status st = host_metadata("cu_seqlens_q", cu_seqlens_q, q, p->cuda_stream, &hq, &bq);
    if (!st) st = host_metadata("cu_seqlens_k", cu_seqlens_k, q, p->cuda_stream, &hk, &bk);
    if (!st) st = host_metadata("ctx_idx", m->ctx_idx, q, p->cuda_stream, &hx, &bx);
    if (!st) {
        struct cflash_mlm_args mh = *m;
        mh.ctx_idx = m->ctx_idx ? &hx : NULL;
        st = mlm_run(q, k, v, cu_seqlens_q ? &hq : NULL, cu_seqlens_k ? &hk : NULL, &mh, out, lse, p);
    }
    free(bq);
    free(bk);
    free(bx);
    return st;
#endif
}
