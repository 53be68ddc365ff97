/*
 * test_context.c - flash-mlm layer contexts (SPEC.md section 6; cflash.h:
 * cflash_context_cache_create / _destroy / _clear / _info / _lengths / _store and
 * cflash_attn_mlm with struct cflash_mlm_args), through every kernel forced by params.kernel.
 *
 * The test keeps its own model of the cache: per layer, the contexts' keys and values in fp64
 * (the exact values stored in the entry's dtype), updated by the rules of the header (REPLACE:
 * the call's sequences become the contexts; APPEND: sequence b's tokens go to context ctx(b),
 * in batch order; an absent entry is created with B contexts). The expected result of an mlm
 * call is computed from that model by the test's own oracle: for each query row of sequence b
 * the visible keys are all keys of its context ctx(b) (nothing on a miss) plus its new keys
 * (own sequence, or with `cumulative` the new keys of sequences 0..b), gathered into one
 * key list per sequence and handed to oracle_attn (oracle.c) without any mask, so scale,
 * softcap and sinks follow SPEC section 1 exactly.
 *
 * Cases (group `context`):
 *   context/attn/<kernel>/<dtype>/...  one mlm call (dense or packed; no cache, miss, shared,
 *        per-batch and ctx_idx contexts; cumulative; MLA; empty rows; GQA; prefill) against
 *        the oracle: fp32 relative L2 <= 1e-5 (1e-6 for the reference kernel) and max abs
 *        <= 1e-4; fp16/bf16 max abs <= 2 e_naive + 1e-3 (e_naive of the naive same-precision
 *        oracle); LSE within 1e-4 (1e-3 half); rows with nothing visible: out exactly 0 and
 *        lse exactly -inf (or the sink logit). Outputs are poisoned first; bytes outside the
 *        views must stay poisoned; inputs must be unchanged. After the call the entry's
 *        info / lengths must match the model, and its contents are checked by a probe call
 *        (reference kernel, ctx_idx = identity) against the oracle over the model.
 *   context/threads/<kernel>/...       1, 2 and 3 threads: identical out / lse bytes.
 *   context/seq/<kernel>/...           call sequences: REPLACE then attending the stored
 *        context, APPEND growth (shared context appended by several sequences, repeated
 *        ctx_idx), cflash_context_cache_store dense / packed / APPEND, clear of one layer and
 *        of all layers, independent layer ids, MLA entries stored and reused.
 *   context/misuse/...                 exact status, message naming the argument, out / lse
 *        byte-identical, and every cache entry unchanged (info, lengths and contents).
 */
#include "harness.h"

#include <stdlib.h>
#include <string.h>

#define CMAX 8         /* sequences per call and contexts per entry */
#define POISON 0xff    /* NaN in every float dtype */

enum { VM_SEP = 0, VM_NULL = 1, VM_VIEW = 2 };
enum { CTX_NONE = 0, CTX_MISS = 1, CTX_SHARED = 2, CTX_PER_BATCH = 3, CTX_IDX = 4 };
enum { PF_NONE = 0, PF_REPLACE = 1, PF_APPEND = 2 };

static const enum cflash_dtype dtypes[3] = {CFLASH_DTYPE_F32, CFLASH_DTYPE_F16, CFLASH_DTYPE_BF16};

/* ---- the test's model of one cache entry ------------------------------------------------ */

struct mentry {
    int present;
    int vmode; /* how V was given when the entry was stored: VM_SEP, or V := K (NULL / view) */
    enum cflash_dtype dt;
    int64_t C, Hk, D, Dv;
    int64_t len[CMAX];
    double *k[CMAX], *v[CMAX]; /* [len][Hk][D], [len][Hk][Dv] (V values also for V := K) */
};

static void model_clear(struct mentry *e)
{
    for (int c = 0; c < CMAX; c++) {
        free(e->k[c]);
        free(e->v[c]);
    }
    memset(e, 0, sizeof *e);
}

/* New tokens of a call or a store, logical fp64: B sequences, sequence b = rows
 * [off[b], off[b + 1]) of k [T][Hk][D] and v [T][Hk][Dv]. */
struct toks {
    int64_t B, Hk, D, Dv;
    int64_t off[CMAX + 1];
    double *k, *v;
};

static void toks_free(struct toks *t)
{
    free(t->k);
    free(t->v);
    memset(t, 0, sizeof *t);
}

/* k [B, L, Hk, D] or [T, Hk, D]; vp NULL: V := K. */
static void toks_load(struct toks *t, const struct cflash_tensor *k, const struct cflash_tensor *vp,
                      int64_t B, const int64_t *off, int64_t Dv)
{
    memset(t, 0, sizeof *t);
    t->B = B;
    t->Hk = k->shape[k->ndim - 2];
    t->D = k->shape[k->ndim - 1];
    t->Dv = Dv;
    for (int64_t b = 0; b <= B; b++)
        t->off[b] = off[b];
    t->k = tload(k);
    t->v = tload(vp ? vp : k);
}

/* APPEND: sequence b's tokens to context target[b] (NULL: b), in batch order; an absent entry
 * is created with B (empty) contexts first. */
static void model_append(struct mentry *e, const struct toks *t, enum cflash_dtype dt, int vmode,
                         const int32_t *target)
{
    if (!e->present) {
        model_clear(e);
        e->present = 1;
        e->vmode = vmode;
        e->dt = dt;
        e->C = t->B;
        e->Hk = t->Hk;
        e->D = t->D;
        e->Dv = t->Dv;
        for (int64_t c = 0; c < t->B; c++) {
            e->k[c] = malloc(sizeof(double));
            e->v[c] = malloc(sizeof(double));
        }
    }
    for (int64_t b = 0; b < t->B; b++) {
        const int64_t c = target ? target[b] : b, n = t->off[b + 1] - t->off[b];
        const int64_t kw = t->Hk * t->D, vw = t->Hk * t->Dv, old = e->len[c];
        e->k[c] = realloc(e->k[c], sizeof(double) * (size_t)((old + n) * kw + 1));
        e->v[c] = realloc(e->v[c], sizeof(double) * (size_t)((old + n) * vw + 1));
        memcpy(e->k[c] + old * kw, t->k + t->off[b] * kw, sizeof(double) * (size_t)(n * kw));
        memcpy(e->v[c] + old * vw, t->v + t->off[b] * vw, sizeof(double) * (size_t)(n * vw));
        e->len[c] = old + n;
    }
}

/* REPLACE: the B sequences become the contexts (an append to a cleared entry). */
static void model_replace(struct mentry *e, const struct toks *t, enum cflash_dtype dt, int vmode)
{
    model_clear(e);
    model_append(e, t, dt, vmode, NULL);
}

/* info and lengths of the library's entry against the model */
static int check_entry(cflash_context_cache_t cache, int64_t layer, const struct mentry *e,
                       const char *when)
{
    struct cflash_context_info info;
    memset(&info, 0xab, sizeof info);
    enum cflash_status st = cflash_context_cache_info(cache, layer, &info);
    CHECK0(st == CFLASH_STATUS_OK, "%s: cflash_context_cache_info(layer %lld) returned %s (%s)",
           when, (long long)layer, cflash_status_string(st), cflash_last_error());
    if (!e->present) {
        CHECK0(info.present == 0 && info.v_is_k == 0 && info.dtype == 0 && info.num_contexts == 0 &&
                   info.Hk == 0 && info.D == 0 && info.Dv == 0 && info.total_len == 0,
               "%s: layer %lld should have no entry: info = {present %d, v_is_k %d, dtype %d, "
               "num_contexts %lld, Hk %lld, D %lld, Dv %lld, total_len %lld} (want all 0)",
               when, (long long)layer, info.present, info.v_is_k, (int)info.dtype,
               (long long)info.num_contexts, (long long)info.Hk, (long long)info.D,
               (long long)info.Dv, (long long)info.total_len);
        return 1;
    }
    int64_t total = 0;
    for (int64_t c = 0; c < e->C; c++)
        total += e->len[c];
    CHECK0(info.present == 1, "%s: layer %lld: info.present = %d, want 1", when, (long long)layer,
           info.present);
    CHECK0(info.v_is_k == (e->vmode != VM_SEP), "%s: layer %lld: info.v_is_k = %d, want %d", when,
           (long long)layer, info.v_is_k, e->vmode != VM_SEP);
    CHECK0(info.dtype == e->dt, "%s: layer %lld: info.dtype = %d, want %s", when, (long long)layer,
           (int)info.dtype, dtype_name(e->dt));
    CHECK0(info.num_contexts == e->C && info.Hk == e->Hk && info.D == e->D && info.Dv == e->Dv,
           "%s: layer %lld: info {num_contexts %lld, Hk %lld, D %lld, Dv %lld}, want {%lld, %lld, "
           "%lld, %lld}",
           when, (long long)layer, (long long)info.num_contexts, (long long)info.Hk,
           (long long)info.D, (long long)info.Dv, (long long)e->C, (long long)e->Hk,
           (long long)e->D, (long long)e->Dv);
    CHECK0(info.total_len == total, "%s: layer %lld: info.total_len = %lld, want %lld", when,
           (long long)layer, (long long)info.total_len, (long long)total);
    int64_t lens[CMAX + 2];
    for (int i = 0; i < CMAX + 2; i++)
        lens[i] = -77;
    st = cflash_context_cache_lengths(cache, layer, lens);
    CHECK0(st == CFLASH_STATUS_OK, "%s: cflash_context_cache_lengths(layer %lld) returned %s (%s)",
           when, (long long)layer, cflash_status_string(st), cflash_last_error());
    for (int64_t c = 0; c < e->C; c++)
        CHECK0(lens[c] == e->len[c], "%s: layer %lld: lengths[%lld] = %lld, want %lld", when,
               (long long)layer, (long long)c, (long long)lens[c], (long long)e->len[c]);
    CHECK0(lens[e->C] == -77, "%s: layer %lld: cflash_context_cache_lengths wrote past "
           "num_contexts", when, (long long)layer);
    return 1;
}

/* ---- one mlm call ----------------------------------------------------------------------- */

struct cspec {
    int dense, B;
    int Lq, Lk;              /* dense */
    int lq[CMAX], lk[CMAX];  /* packed */
    int cuk_null;            /* packed: cu_seqlens_k = NULL (k rows = q rows) */
    int cumulative;
    int Hq, Hk, D, Dv, vmode;
    enum cflash_dtype dt;
    int has_idx;
    int idx[CMAX];
    int strided;             /* padded q / out / lse, head-major k, negative-stride v, strided ctx_idx */
    int sinks;
    float softcap, scale;
    int out_f32, lse_null;
    uint64_t seed;
};

struct cprob {
    struct cspec s;
    int64_t B, Tq, Tk, Hq, Hk, D, Dv;
    int64_t qoff[CMAX + 1], koff[CMAX + 1];
    int64_t *row_seq; /* [Tq] */
    struct tbuf q, k, v, cuq, cuk, idx, sinks, out, lse;
    struct cflash_tensor vview;
    const struct cflash_tensor *vp;
    int32_t idxh[CMAX];
    struct cflash_attn_params params;
    double *Q, *sinkv;
    unsigned char *snap[6];
};

static void fill_garbage(struct tbuf *t, struct rng *r)
{
    for (size_t i = 0; i < t->bytes; i++)
        t->base[i] = (unsigned char)rng_next(r);
}

static void cp_setup(struct cprob *p, const struct cspec *s)
{
    memset(p, 0, sizeof *p);
    p->s = *s;
    struct rng r = {s->seed ^ 0xc0de7e87c0de7e87ull};
    p->B = s->B;
    p->Hq = s->Hq;
    p->Hk = s->Hk;
    p->D = s->D;
    p->Dv = s->vmode == VM_NULL ? s->D : s->Dv;
    p->qoff[0] = p->koff[0] = 0;
    for (int b = 0; b < s->B; b++) {
        int64_t lq = s->dense ? s->Lq : s->lq[b];
        int64_t lk = s->dense ? s->Lk : s->cuk_null ? s->lq[b] : s->lk[b];
        p->qoff[b + 1] = p->qoff[b] + lq;
        p->koff[b + 1] = p->koff[b] + lk;
    }
    p->Tq = p->qoff[s->B];
    p->Tk = p->koff[s->B];
    p->row_seq = malloc(sizeof(int64_t) * (size_t)(p->Tq + 1));
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t t = p->qoff[b]; t < p->qoff[b + 1]; t++)
            p->row_seq[t] = b;
    const int pad = s->strided ? 3 : 0;
    static const int hm4[4] = {0, 2, 1, 3}, hm3[3] = {1, 0, 2};
    if (s->dense) {
        int64_t qs[4] = {s->B, s->Lq, s->Hq, s->D}, ks[4] = {s->B, s->Lk, s->Hk, s->D},
                vs[4] = {s->B, s->Lk, s->Hk, p->Dv}, os[4] = {s->B, s->Lq, s->Hq, p->Dv},
                ls[3] = {s->B, s->Hq, s->Lq};
        tbuf_make(&p->q, s->dt, 4, qs, NULL, pad, -1);
        tbuf_make(&p->k, s->dt, 4, ks, s->strided ? hm4 : NULL, 0, -1);
        if (s->vmode == VM_SEP)
            tbuf_make(&p->v, s->dt, 4, vs, NULL, 0, s->strided ? 1 : -1);
        tbuf_make(&p->out, s->out_f32 ? CFLASH_DTYPE_F32 : s->dt, 4, os, NULL, s->strided ? 1 : 0, -1);
        tbuf_make(&p->lse, CFLASH_DTYPE_F32, 3, ls, NULL, s->strided ? 1 : 0, -1);
    } else {
        int64_t qs[3] = {p->Tq, s->Hq, s->D}, ks[3] = {p->Tk, s->Hk, s->D},
                vs[3] = {p->Tk, s->Hk, p->Dv}, os[3] = {p->Tq, s->Hq, p->Dv}, ls[2] = {s->Hq, p->Tq},
                cs[1] = {s->B + 1};
        tbuf_make(&p->q, s->dt, 3, qs, NULL, pad, -1);
        tbuf_make(&p->k, s->dt, 3, ks, s->strided ? hm3 : NULL, 0, -1);
        if (s->vmode == VM_SEP)
            tbuf_make(&p->v, s->dt, 3, vs, NULL, 0, s->strided ? 0 : -1);
        tbuf_make(&p->out, s->out_f32 ? CFLASH_DTYPE_F32 : s->dt, 3, os, NULL, s->strided ? 1 : 0, -1);
        tbuf_make(&p->lse, CFLASH_DTYPE_F32, 2, ls, NULL, s->strided ? 1 : 0, -1);
        tbuf_make(&p->cuq, CFLASH_DTYPE_I32, 1, cs, NULL, 0, -1);
        for (int64_t b = 0; b <= s->B; b++)
            ((int32_t *)p->cuq.t.data)[b] = (int32_t)p->qoff[b];
        if (!s->cuk_null) {
            tbuf_make(&p->cuk, CFLASH_DTYPE_I32, 1, cs, NULL, 0, -1);
            for (int64_t b = 0; b <= s->B; b++)
                ((int32_t *)p->cuk.t.data)[b] = (int32_t)p->koff[b];
        }
    }
    fill_garbage(&p->q, &r);
    fill_garbage(&p->k, &r);
    fill_garbage(&p->v, &r);
    tfill_randn(&p->q.t, &r, 0, 1);
    tfill_randn(&p->k.t, &r, 0, 1);
    if (s->vmode == VM_SEP) {
        tfill_randn(&p->v.t, &r, 0, 1);
        p->vp = &p->v.t;
    } else if (s->vmode == VM_VIEW) {
        p->vview = p->k.t; /* same data and strides, the first Dv columns */
        p->vview.shape[p->vview.ndim - 1] = p->Dv;
        p->vp = &p->vview;
    }
    if (s->has_idx) {
        int64_t is[1] = {s->B}, ist[1] = {s->strided ? 3 : 1};
        tbuf_make_strided(&p->idx, CFLASH_DTYPE_I32, 1, is, ist);
        fill_garbage(&p->idx, &r);
        for (int64_t b = 0; b < s->B; b++) {
            p->idxh[b] = s->idx[b];
            tset(&p->idx.t, &b, s->idx[b]);
        }
    }
    p->params = cflash_attn_params_default();
    p->params.scale = s->scale;
    p->params.softcap = s->softcap;
    if (s->sinks) {
        int64_t sh[1] = {s->Hq};
        tbuf_make(&p->sinks, CFLASH_DTYPE_F32, 1, sh, NULL, 0, -1);
        tfill_randn(&p->sinks.t, &r, 1, 1);
        p->params.sinks = &p->sinks.t;
        p->sinkv = tload(&p->sinks.t);
    }
    p->Q = tload(&p->q.t);
}

static void cp_free(struct cprob *p)
{
    struct tbuf *bs[9] = {&p->q, &p->k, &p->v, &p->cuq, &p->cuk, &p->idx, &p->sinks, &p->out, &p->lse};
    for (int i = 0; i < 9; i++)
        tbuf_free(bs[i]);
    for (int i = 0; i < 6; i++)
        free(p->snap[i]);
    free(p->row_seq);
    free(p->Q);
    free(p->sinkv);
    memset(p, 0, sizeof *p);
}

static void cp_snapshot(struct cprob *p)
{
    struct tbuf *bs[6] = {&p->q, &p->k, &p->v, &p->cuq, &p->cuk, &p->idx};
    for (int i = 0; i < 6; i++) {
        free(p->snap[i]);
        p->snap[i] = malloc(bs[i]->bytes + 1);
        if (bs[i]->bytes)
            memcpy(p->snap[i], bs[i]->base, bs[i]->bytes);
    }
}

/* "" when q, k, v, cu_seqlens, ctx_idx hold the snapshot's bytes, else the first that changed */
static const char *cp_inputs_changed(const struct cprob *p)
{
    static const char *names[6] = {"q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "ctx_idx"};
    const struct tbuf *bs[6] = {&p->q, &p->k, &p->v, &p->cuq, &p->cuk, &p->idx};
    for (int i = 0; i < 6; i++)
        if (bs[i]->bytes && memcmp(p->snap[i], bs[i]->base, bs[i]->bytes) != 0)
            return names[i];
    return "";
}

static enum cflash_status cp_call(const struct cprob *p, cflash_context_cache_t cache, int64_t layer,
                                  int prefill, enum cflash_kernel kernel, int threads,
                                  const struct cflash_tensor *out, const struct cflash_tensor *lse)
{
    struct cflash_mlm_args m;
    memset(&m, 0, sizeof m);
    m.cache = cache;
    m.layer_id = layer;
    m.ctx_idx = p->s.has_idx ? &p->idx.t : NULL;
    m.cumulative = p->s.cumulative;
    m.prefill = prefill != PF_NONE;
    m.prefill_mode = prefill == PF_APPEND ? CFLASH_PREFILL_APPEND : CFLASH_PREFILL_REPLACE;
    struct cflash_attn_params prm = p->params;
    prm.kernel = kernel;
    prm.num_threads = threads;
    if (p->s.dense)
        return cflash_attn_mlm(&p->q.t, &p->k.t, p->vp, NULL, NULL, &m, out, lse, &prm);
    return cflash_attn_mlm(&p->q.t, &p->k.t, p->vp, &p->cuq.t, p->s.cuk_null ? NULL : &p->cuk.t,
                           &m, out, lse, &prm);
}

static void cp_toks(const struct cprob *p, struct toks *t)
{
    toks_load(t, &p->k.t, p->vp, p->B, p->koff, p->Dv);
}

/* context of sequence b under entry e (-1: none) */
static int64_t ctx_of(const struct cprob *p, const struct mentry *e, int64_t b)
{
    if (!e || !e->present)
        return -1;
    if (p->s.has_idx)
        return p->idxh[b];
    return e->C == 1 ? 0 : b;
}

/* The oracle: every sequence's visible keys gathered (context, then new keys), then
 * oracle_attn without masks. nvis[b]: the number of visible keys of sequence b. */
static void cp_oracle(const struct cprob *p, const struct mentry *e, enum cflash_dtype mode,
                      double *o, double *l, int64_t *nvis)
{
    const int64_t Hk = p->Hk, D = p->D, Dv = p->Dv;
    int64_t off[CMAX + 1];
    off[0] = 0;
    for (int64_t b = 0; b < p->B; b++) {
        const int64_t c = ctx_of(p, e, b);
        const int64_t n0 = p->s.cumulative ? p->koff[0] : p->koff[b];
        const int64_t n = (c >= 0 ? e->len[c] : 0) + p->koff[b + 1] - n0;
        off[b + 1] = off[b] + n;
        if (nvis)
            nvis[b] = n;
    }
    double *K = malloc(sizeof(double) * (size_t)(off[p->B] * Hk * D + 1));
    double *V = malloc(sizeof(double) * (size_t)(off[p->B] * Hk * Dv + 1));
    struct toks t;
    cp_toks(p, &t);
    for (int64_t b = 0; b < p->B; b++) {
        const int64_t c = ctx_of(p, e, b);
        int64_t row = off[b];
        if (c >= 0) {
            memcpy(K + row * Hk * D, e->k[c], sizeof(double) * (size_t)(e->len[c] * Hk * D));
            memcpy(V + row * Hk * Dv, e->v[c], sizeof(double) * (size_t)(e->len[c] * Hk * Dv));
            row += e->len[c];
        }
        const int64_t n0 = p->s.cumulative ? p->koff[0] : p->koff[b], n = p->koff[b + 1] - n0;
        memcpy(K + row * Hk * D, t.k + n0 * Hk * D, sizeof(double) * (size_t)(n * Hk * D));
        memcpy(V + row * Hk * Dv, t.v + n0 * Hk * Dv, sizeof(double) * (size_t)(n * Hk * Dv));
    }
    struct oracle_in in;
    memset(&in, 0, sizeof in);
    in.B = p->B;
    in.qoff = p->qoff;
    in.koff = off;
    in.Hq = p->Hq;
    in.Hk = Hk;
    in.D = D;
    in.Dv = Dv;
    in.q = p->Q;
    in.k = K;
    in.v = V;
    in.scale = p->s.scale != 0 ? (double)p->s.scale : 1.0 / sqrt((double)D);
    in.softcap = p->s.softcap;
    in.wl = in.wr = -1;
    in.sinks = p->sinkv;
    oracle_attn(&in, mode, o, l);
    free(K);
    free(V);
    toks_free(&t);
}

static void cp_load(const struct cprob *p, const struct cflash_tensor *out,
                    const struct cflash_tensor *lse, double *o, double *l)
{
    for (int64_t t = 0; t < p->Tq; t++) {
        const int64_t b = p->row_seq[t], i = t - p->qoff[b];
        for (int64_t h = 0; h < p->Hq; h++) {
            for (int64_t d = 0; d < p->Dv; d++) {
                int64_t i4[4] = {b, i, h, d}, i3[3] = {t, h, d};
                o[(t * p->Hq + h) * p->Dv + d] = tget(out, p->s.dense ? i4 : i3);
            }
            if (lse) {
                int64_t i3[3] = {b, h, i}, i2[2] = {h, t};
                l[t * p->Hq + h] = tget(lse, p->s.dense ? i3 : i2);
            }
        }
    }
}

/* got (go, gl; gl NULL: no lse) against the oracle over entry e (the state the call saw). */
static int cp_compare(const struct cprob *p, const struct mentry *e, const double *go,
                      const double *gl, enum cflash_kernel kernel, const char *who)
{
    const int half = p->s.dt != CFLASH_DTYPE_F32;
    const int64_t no = p->Tq * p->Hq * p->Dv + 1, nl = p->Tq * p->Hq + 1;
    double *eo = malloc(sizeof(double) * (size_t)no), *el = malloc(sizeof(double) * (size_t)nl);
    double *nv = half ? malloc(sizeof(double) * (size_t)no) : NULL;
    int64_t nvis[CMAX];
    cp_oracle(p, e, CFLASH_DTYPE_F32, eo, el, nvis);
    double e_naive = 0;
    if (half) {
        cp_oracle(p, e, p->s.dt, nv, NULL, NULL);
        for (int64_t i = 0; i < no - 1; i++)
            if (fabs(nv[i] - eo[i]) > e_naive)
                e_naive = fabs(nv[i] - eo[i]);
    }
    char msg[512] = "";
    double num = 0, den = 0, maxabs = 0;
    int64_t wi = 0;
    for (int64_t t = 0; t < p->Tq && !msg[0]; t++) {
        const int64_t b = p->row_seq[t], n = nvis[b];
        for (int64_t h = 0; h < p->Hq && !msg[0]; h++) {
            for (int64_t d = 0; d < p->Dv && !msg[0]; d++) {
                const int64_t k = (t * p->Hq + h) * p->Dv + d;
                if (!isfinite(go[k]))
                    snprintf(msg, sizeof msg, "out[t=%lld,h=%lld,d=%lld] = %g is not finite "
                             "(sequence %lld, %lld visible keys)", (long long)t, (long long)h,
                             (long long)d, go[k], (long long)b, (long long)n);
                else if (n == 0 && go[k] != 0)
                    snprintf(msg, sizeof msg, "row t=%lld h=%lld sees no key: out[d=%lld] = %g, "
                             "want exactly 0", (long long)t, (long long)h, (long long)d, go[k]);
                double err = fabs(go[k] - eo[k]);
                num += err * err;
                den += eo[k] * eo[k];
                if (err > maxabs) {
                    maxabs = err;
                    wi = k;
                }
            }
            if (!gl || msg[0])
                continue;
            const double a = gl[t * p->Hq + h], r = el[t * p->Hq + h];
            if (n == 0) {
                const double want = p->sinkv ? p->sinkv[h] : -INFINITY;
                if (a != want)
                    snprintf(msg, sizeof msg, "row t=%lld h=%lld sees no key: lse = %.9g, want "
                             "exactly %.9g%s", (long long)t, (long long)h, a, want,
                             p->sinkv ? " (the sink logit)" : "");
                continue;
            }
            const double tol = kernel == CFLASH_KERNEL_REFERENCE && !half
                                   ? 1e-5 * (1 + fabs(r))
                                   : (half ? 1e-3 : 1e-4) + 1e-6 * fabs(r);
            if (!(fabs(a - r) <= tol))
                snprintf(msg, sizeof msg, "lse[t=%lld,h=%lld] = %.9g, oracle %.9g (tol %g; "
                         "sequence %lld, %lld visible keys)", (long long)t, (long long)h, a, r, tol,
                         (long long)b, (long long)n);
        }
    }
    if (!msg[0]) {
        const int64_t wt = wi / (p->Hq * p->Dv), wh = wi / p->Dv % p->Hq, wd = wi % p->Dv;
        char where[200];
        snprintf(where, sizeof where, "at t=%lld,h=%lld,d=%lld (got %.7g, oracle %.7g; sequence "
                 "%lld, %lld visible keys)", (long long)wt, (long long)wh, (long long)wd, go[wi],
                 eo[wi], (long long)p->row_seq[wt], (long long)nvis[p->row_seq[wt]]);
        const int exact_out = !half || p->s.out_f32;
        if (half && !(maxabs <= 2 * e_naive + 1e-3)) {
            snprintf(msg, sizeof msg, "max abs error %.3g %s > 2*e_naive+1e-3 = %.3g", maxabs,
                     where, 2 * e_naive + 1e-3);
        } else if (!half) {
            const double rel = den == 0 ? sqrt(num) : sqrt(num / den);
            const double lim = kernel == CFLASH_KERNEL_REFERENCE ? 1e-6 : 1e-5;
            if (!(rel <= lim))
                snprintf(msg, sizeof msg, "relative L2 error %.3g > %g (max abs %.3g %s)", rel, lim,
                         maxabs, where);
            else if (!(maxabs <= 1e-4))
                snprintf(msg, sizeof msg, "max abs error %.3g > 1e-4 %s", maxabs, where);
        } else if (kernel == CFLASH_KERNEL_REFERENCE && exact_out) {
            /* the reference kernel is fp64 inside: exact inputs, fp32 out */
            const double rel = den == 0 ? sqrt(num) : sqrt(num / den);
            if (!(rel <= 1e-6))
                snprintf(msg, sizeof msg, "reference kernel, fp32 out: relative L2 error %.3g > "
                         "1e-6 (max abs %.3g %s)", rel, maxabs, where);
        }
    }
    free(eo);
    free(el);
    free(nv);
    CHECK0(!msg[0], "%s: %s", who, msg);
    return 1;
}

/* Runs p with kernel / threads into its poisoned out / lse, checks status, untouched gaps and
 * inputs, and compares with the oracle over e. */
static int cp_run_check(struct cprob *p, cflash_context_cache_t cache, int64_t layer, int prefill,
                        const struct mentry *e, enum cflash_kernel kernel, int threads,
                        const char *who)
{
    tbuf_poison(&p->out, POISON);
    tbuf_poison(&p->lse, POISON);
    cp_snapshot(p);
    const struct cflash_tensor *lsep = p->s.lse_null ? NULL : &p->lse.t;
    enum cflash_status st = cp_call(p, cache, layer, prefill, kernel, threads, &p->out.t, lsep);
    CHECK0(st == CFLASH_STATUS_OK, "%s: cflash_attn_mlm returned %s (%s)", who,
           cflash_status_string(st), cflash_last_error());
    const char *ch = cp_inputs_changed(p);
    CHECK0(!ch[0], "%s: the call changed its input %s", who, ch);
    int64_t gaps = tbuf_gap_changes(&p->out, POISON);
    CHECK0(gaps == 0, "%s: %lld bytes of out outside the view were written", who, (long long)gaps);
    if (lsep) {
        gaps = tbuf_gap_changes(&p->lse, POISON);
        CHECK0(gaps == 0, "%s: %lld bytes of lse outside the view were written", who, (long long)gaps);
    } else if (p->lse.base) {
        for (size_t i = 0; i < p->lse.bytes; i++)
            CHECK0(p->lse.base[i] == POISON, "%s: lse = NULL, yet the lse buffer changed", who);
    }
    double *go = malloc(sizeof(double) * (size_t)(p->Tq * p->Hq * p->Dv + 1));
    double *gl = malloc(sizeof(double) * (size_t)(p->Tq * p->Hq + 1));
    cp_load(p, &p->out.t, lsep, go, gl);
    int ok = cp_compare(p, e, go, lsep ? gl : NULL, kernel, who);
    free(go);
    free(gl);
    return ok;
}

/* ---- stores and probes -------------------------------------------------------------------- */

/* C random contexts of lengths len[] stored into layer through cflash_context_cache_store
 * (dense [C, L, ...] when `dense`, which needs equal lengths; else packed with cu_seqlens), in
 * mode REPLACE or APPEND, and the same applied to the model. */
static int store_random(cflash_context_cache_t cache, int64_t layer, struct mentry *e, int C,
                        const int *len, int64_t Hk, int64_t D, int64_t Dv, int vmode,
                        enum cflash_dtype dt, int dense, enum cflash_prefill_mode mode,
                        uint64_t seed)
{
    struct rng r = {seed ^ 0x570e570e570eull};
    if (vmode == VM_NULL)
        Dv = D;
    int64_t off[CMAX + 1];
    off[0] = 0;
    for (int c = 0; c < C; c++)
        off[c + 1] = off[c] + len[c];
    struct tbuf k, v, cu;
    memset(&v, 0, sizeof v);
    memset(&cu, 0, sizeof cu);
    struct cflash_tensor vview;
    const struct cflash_tensor *vp = NULL;
    if (dense) {
        int64_t ks[4] = {C, len[0], Hk, D}, vs[4] = {C, len[0], Hk, Dv};
        tbuf_make(&k, dt, 4, ks, NULL, (int)(seed & 1), -1);
        if (vmode == VM_SEP)
            tbuf_make(&v, dt, 4, vs, NULL, 0, -1);
    } else {
        int64_t ks[3] = {off[C], Hk, D}, vs[3] = {off[C], Hk, Dv}, cs[1] = {C + 1};
        static const int hm3[3] = {1, 0, 2};
        tbuf_make(&k, dt, 3, ks, (seed & 1) ? hm3 : NULL, 0, -1);
        if (vmode == VM_SEP)
            tbuf_make(&v, dt, 3, vs, NULL, (int)(seed & 2), -1);
        tbuf_make(&cu, CFLASH_DTYPE_I32, 1, cs, NULL, 0, -1);
        for (int c = 0; c <= C; c++)
            ((int32_t *)cu.t.data)[c] = (int32_t)off[c];
    }
    tfill_randn(&k.t, &r, 0, 1);
    if (vmode == VM_SEP) {
        tfill_randn(&v.t, &r, 0, 1);
        vp = &v.t;
    } else if (vmode == VM_VIEW) {
        vview = k.t;
        vview.shape[vview.ndim - 1] = Dv;
        vp = &vview;
    }
    enum cflash_status st =
        cflash_context_cache_store(cache, layer, &k.t, vp, dense ? NULL : &cu.t, mode);
    if (st == CFLASH_STATUS_OK) {
        struct toks t;
        toks_load(&t, &k.t, vp, C, off, Dv);
        if (mode == CFLASH_PREFILL_REPLACE)
            model_replace(e, &t, dt, vmode);
        else
            model_append(e, &t, dt, vmode, NULL);
        toks_free(&t);
    }
    tbuf_free(&k);
    tbuf_free(&v);
    tbuf_free(&cu);
    CHECK0(st == CFLASH_STATUS_OK, "cflash_context_cache_store(layer %lld, %s, %s, C=%d) returned "
           "%s (%s)", (long long)layer, dense ? "dense" : "packed",
           mode == CFLASH_PREFILL_REPLACE ? "REPLACE" : "APPEND", C, cflash_status_string(st),
           cflash_last_error());
    return 1;
}

/* The entry's contents through a probe call: one packed sequence per context (ctx_idx =
 * identity, 1 or 2 queries and 1 new key each), reference kernel, fp32 out, against the
 * oracle over the model. Also checks info / lengths. */
static int verify_entry(cflash_context_cache_t cache, int64_t layer, const struct mentry *e,
                        const char *when)
{
    if (!check_entry(cache, layer, e, when))
        return 0;
    if (!e->present)
        return 1;
    struct cspec s;
    memset(&s, 0, sizeof s);
    s.B = (int)e->C;
    for (int b = 0; b < s.B; b++) {
        s.lq[b] = 1 + b % 2;
        s.lk[b] = 1;
        s.idx[b] = b;
    }
    s.has_idx = 1;
    s.Hk = (int)e->Hk;
    s.Hq = (int)e->Hk * 2;
    s.D = (int)e->D;
    s.Dv = (int)e->Dv;
    s.vmode = e->vmode;
    s.dt = e->dt;
    s.out_f32 = 1;
    s.seed = 0x9e0be ^ (uint64_t)layer;
    struct cprob p;
    cp_setup(&p, &s);
    char who[160];
    snprintf(who, sizeof who, "%s: probe of layer %lld's contents (ref kernel)", when, (long long)layer);
    int ok = cp_run_check(&p, cache, layer, PF_NONE, e, CFLASH_KERNEL_REFERENCE, 1, who);
    cp_free(&p);
    return ok;
}

/* ---- context/attn: one configured call ---------------------------------------------------- */

struct ccfg {
    enum cflash_kernel kernel;
    struct cspec s;
    int ctx;                /* CTX_* */
    int C;                  /* CTX_IDX: number of contexts */
    int clen[CMAX];         /* context lengths (CTX_SHARED: clen[0]) */
    int store_dense;        /* populate with a dense store (equal lengths) */
    int prefill;            /* PF_* */
    int64_t layer;
    int threads;
    const char *label;
};

static int ccfg_contexts(const struct ccfg *c)
{
    return c->ctx == CTX_SHARED ? 1 : c->ctx == CTX_PER_BATCH ? c->s.B : c->ctx == CTX_IDX ? c->C : 0;
}

static void attn_case(const void *arg)
{
    const struct ccfg *c = arg;
    if (!require_kernel(c->kernel))
        return;
    cflash_context_cache_t cache = NULL;
    struct mentry e, decoy;
    memset(&e, 0, sizeof e);
    memset(&decoy, 0, sizeof decoy);
    struct cprob p;
    memset(&p, 0, sizeof p);
    if (c->ctx != CTX_NONE) {
        enum cflash_status st = cflash_context_cache_create(&cache);
        CHECK(st == CFLASH_STATUS_OK && cache, "cflash_context_cache_create returned %s (%s)",
              cflash_status_string(st), cflash_last_error());
    }
    const int64_t layer = c->layer;
    const int C = ccfg_contexts(c);
    if (C > 0 && !store_random(cache, layer, &e, C, c->clen, c->s.Hk, c->s.D, c->s.Dv, c->s.vmode,
                               c->s.dt, c->store_dense, CFLASH_PREFILL_REPLACE, c->s.seed ^ 0x11))
        goto done;
    /* an entry of another shape in a neighbouring layer must not matter */
    if (cache) {
        static const int dl[2] = {3, 4};
        if (!store_random(cache, layer + 1, &decoy, 2, dl, 1, 8, 8, VM_SEP,
                          c->s.dt == CFLASH_DTYPE_F32 ? CFLASH_DTYPE_BF16 : CFLASH_DTYPE_F32, 0,
                          CFLASH_PREFILL_REPLACE, 0xdec0))
            goto done;
        if (!check_entry(cache, layer, &e, "after the setup"))
            goto done;
    }
    cp_setup(&p, &c->s);
    char who[96];
    snprintf(who, sizeof who, "%s (%s out)", kname(c->kernel),
             dtype_name(c->s.out_f32 ? CFLASH_DTYPE_F32 : c->s.dt));
    if (!cp_run_check(&p, cache, layer, c->prefill, &e, c->kernel, c->threads, who))
        goto done;
    if (!cache)
        goto done;
    if (c->prefill != PF_NONE) {
        struct toks t;
        cp_toks(&p, &t);
        if (c->prefill == PF_REPLACE) {
            model_replace(&e, &t, c->s.dt, c->s.vmode);
        } else {
            int32_t tg[CMAX];
            for (int64_t b = 0; b < p.B; b++)
                tg[b] = (int32_t)ctx_of(&p, &e, b);
            model_append(&e, &t, c->s.dt, c->s.vmode, e.present ? tg : NULL);
        }
        toks_free(&t);
    }
    if (!verify_entry(cache, layer, &e, c->prefill ? "after the prefill" : "after the call"))
        goto done;
    verify_entry(cache, layer + 1, &decoy, "the neighbouring layer after the call");
done:
    cp_free(&p);
    model_clear(&e);
    model_clear(&decoy);
    cflash_context_cache_destroy(cache);
}

/* ---- context/threads ----------------------------------------------------------------------- */

static void threads_case(const void *arg)
{
    const struct ccfg *c = arg;
    if (!require_kernel(c->kernel))
        return;
    cflash_context_cache_t cache = NULL;
    struct mentry e;
    memset(&e, 0, sizeof e);
    struct cprob p;
    memset(&p, 0, sizeof p);
    struct tbuf o1, l1;
    memset(&o1, 0, sizeof o1);
    memset(&l1, 0, sizeof l1);
    CHECK_STATUS(cflash_context_cache_create(&cache), CFLASH_STATUS_OK);
    const int C = ccfg_contexts(c);
    if (C > 0 && !store_random(cache, c->layer, &e, C, c->clen, c->s.Hk, c->s.D, c->s.Dv,
                               c->s.vmode, c->s.dt, 0, CFLASH_PREFILL_REPLACE, c->s.seed ^ 0x11))
        goto done;
    cp_setup(&p, &c->s);
    /* threads = 1 is right ... */
    if (!cp_run_check(&p, cache, c->layer, PF_NONE, &e, c->kernel, 1, "threads=1"))
        goto done;
    tbuf_make_strided(&o1, p.out.t.dtype, p.out.t.ndim, p.out.t.shape, p.out.t.stride);
    tbuf_make_strided(&l1, p.lse.t.dtype, p.lse.t.ndim, p.lse.t.shape, p.lse.t.stride);
    if (o1.bytes)
        memcpy(o1.base, p.out.base, o1.bytes);
    if (l1.bytes)
        memcpy(l1.base, p.lse.base, l1.bytes);
    /* ... and 2, 3 and the default reproduce its bytes */
    static const int counts[3] = {2, 3, 0};
    for (int i = 0; i < 3; i++) {
        tbuf_poison(&p.out, POISON);
        tbuf_poison(&p.lse, POISON);
        enum cflash_status st = cp_call(&p, cache, c->layer, PF_NONE, c->kernel, counts[i], &p.out.t,
                                        &p.lse.t);
        if (st != CFLASH_STATUS_OK) {
            tfail(__FILE__, __LINE__, "threads=%d: %s (%s)", counts[i], cflash_status_string(st),
                  cflash_last_error());
            goto done;
        }
        if (o1.bytes && memcmp(o1.base, p.out.base, o1.bytes) != 0) {
            tfail(__FILE__, __LINE__, "threads=%d: out bytes differ from threads=1", counts[i]);
            goto done;
        }
        if (l1.bytes && memcmp(l1.base, p.lse.base, l1.bytes) != 0) {
            tfail(__FILE__, __LINE__, "threads=%d: lse bytes differ from threads=1", counts[i]);
            goto done;
        }
    }
done:
    tbuf_free(&o1);
    tbuf_free(&l1);
    cp_free(&p);
    model_clear(&e);
    cflash_context_cache_destroy(cache);
}

/* ---- context/seq: call sequences ------------------------------------------------------------ */

struct seq_arg {
    enum cflash_kernel kernel;
    enum cflash_dtype dt;
    int which;
};

static struct cspec packed_spec(enum cflash_dtype dt, int B, const int *lq, const int *lk, int Hq,
                                int Hk, int D, int Dv, uint64_t seed)
{
    struct cspec s;
    memset(&s, 0, sizeof s);
    s.B = B;
    for (int b = 0; b < B; b++) {
        s.lq[b] = lq[b];
        s.lk[b] = lk[b];
    }
    s.Hq = Hq;
    s.Hk = Hk;
    s.D = D;
    s.Dv = Dv;
    s.dt = dt;
    s.seed = seed;
    return s;
}

static struct cspec dense_spec(enum cflash_dtype dt, int B, int Lq, int Lk, int Hq, int Hk, int D,
                               int Dv, uint64_t seed)
{
    struct cspec s;
    memset(&s, 0, sizeof s);
    s.dense = 1;
    s.B = B;
    s.Lq = Lq;
    s.Lk = Lk;
    s.Hq = Hq;
    s.Hk = Hk;
    s.D = D;
    s.Dv = Dv;
    s.dt = dt;
    s.seed = seed;
    return s;
}

/* One step of a sequence: the call over the model, then the model follows the prefill. */
static int seq_step(cflash_context_cache_t cache, int64_t layer, struct mentry *e,
                    const struct cspec *s, int prefill, enum cflash_kernel kernel, const char *step)
{
    struct cprob p;
    cp_setup(&p, s);
    char who[160];
    snprintf(who, sizeof who, "%s (%s)", step, kname(kernel));
    int ok = cp_run_check(&p, cache, layer, prefill, e, kernel, 0, who);
    if (ok && prefill != PF_NONE) {
        struct toks t;
        cp_toks(&p, &t);
        if (prefill == PF_REPLACE) {
            model_replace(e, &t, s->dt, s->vmode);
        } else {
            int32_t tg[CMAX];
            for (int64_t b = 0; b < p.B; b++)
                tg[b] = (int32_t)ctx_of(&p, e, b);
            model_append(e, &t, s->dt, s->vmode, e->present ? tg : NULL);
        }
        toks_free(&t);
    }
    cp_free(&p);
    if (!ok)
        return 0;
    char when[160];
    snprintf(when, sizeof when, "after %s", step);
    return verify_entry(cache, layer, e, when);
}

enum {
    SEQ_REPLACE_THEN_ATTEND,
    SEQ_APPEND_PER_BATCH,
    SEQ_APPEND_SHARED,
    SEQ_APPEND_CTX_IDX,
    SEQ_STORE_LAYERS_CLEAR,
    SEQ_MLA_576,
    SEQ_MLA_40,
    SEQ_MLA_VNULL,
    SEQ_COUNT
};
static const char *const seq_names[SEQ_COUNT] = {
    "replace_on_miss_then_attend_then_append", "append_per_batch_grows_contexts",
    "shared_context_appended_by_3_sequences_then_replaced",
    "append_through_ctx_idx=[1,1,0]", "store_dense_packed_append_layers_clear",
    "mla_D=576,Dv=512_v=kview_stored_and_reused", "mla_D=40,Dv=32_v=kview_stored_and_reused",
    "mla_v=null_stored_and_reused"};

static void seq_case(const void *arg)
{
    const struct seq_arg *a = arg;
    if (!require_kernel(a->kernel))
        return;
    const enum cflash_kernel k = a->kernel;
    const enum cflash_dtype dt = a->dt;
    cflash_context_cache_t cache = NULL;
    CHECK_STATUS(cflash_context_cache_create(&cache), CFLASH_STATUS_OK);
    struct mentry e[4];
    memset(e, 0, sizeof e);
    const uint64_t sd = 0x5e0000 + (uint64_t)a->which * 16 + (uint64_t)dt;
    switch (a->which) {
    case SEQ_REPLACE_THEN_ATTEND: {
        /* a miss with REPLACE stores the call's sequences (one empty) as 3 contexts */
        static const int lq[3] = {3, 2, 4}, lk[3] = {5, 0, 7};
        struct cspec s = packed_spec(dt, 3, lq, lk, 4, 2, 32, 32, sd);
        if (!seq_step(cache, 5, &e[0], &s, PF_REPLACE, k, "call 1 (miss, prefill REPLACE)"))
            break;
        /* a dense call attends them (per-batch), then APPENDs its own keys */
        struct cspec s2 = dense_spec(dt, 3, 2, 4, 4, 2, 32, 32, sd + 1);
        s2.sinks = 1;
        if (!seq_step(cache, 5, &e[0], &s2, PF_NONE, k, "call 2 (attends the stored contexts)"))
            break;
        s2.seed++;
        if (!seq_step(cache, 5, &e[0], &s2, PF_APPEND, k, "call 3 (prefill APPEND)"))
            break;
        /* REPLACE by a packed call of the same shape: the old keys are gone */
        static const int lq4[3] = {1, 1, 2}, lk4[3] = {2, 6, 1};
        struct cspec s4 = packed_spec(dt, 3, lq4, lk4, 4, 2, 32, 32, sd + 2);
        if (!seq_step(cache, 5, &e[0], &s4, PF_REPLACE, k, "call 4 (prefill REPLACE)"))
            break;
        seq_step(cache, 5, &e[0], &s4, PF_NONE, k, "call 5 (attends the replaced contexts)");
        break;
    }
    case SEQ_APPEND_PER_BATCH: {
        static const int cl[2] = {4, 0};
        if (!store_random(cache, 0, &e[0], 2, cl, 2, 16, 24, VM_SEP, dt, 0, CFLASH_PREFILL_REPLACE, sd))
            break;
        if (!verify_entry(cache, 0, &e[0], "after the store"))
            break;
        static const int lq[2] = {3, 1}, lk[2] = {2, 5};
        struct cspec s = packed_spec(dt, 2, lq, lk, 8, 2, 16, 24, sd + 1);
        for (int i = 0; i < 3; i++) {
            char step[64];
            snprintf(step, sizeof step, "APPEND call %d", i + 1);
            s.seed++;
            if (!seq_step(cache, 0, &e[0], &s, PF_APPEND, k, step))
                break;
        }
        break;
    }
    case SEQ_APPEND_SHARED: {
        /* one shared context: every sequence sees it, and APPEND adds all sequences' keys to
         * it, in batch order */
        static const int cl[1] = {6};
        if (!store_random(cache, 2, &e[0], 1, cl, 1, 32, 32, VM_SEP, dt, 1, CFLASH_PREFILL_REPLACE, sd))
            break;
        static const int lq[3] = {2, 3, 1}, lk[3] = {2, 3, 4};
        struct cspec s = packed_spec(dt, 3, lq, lk, 2, 1, 32, 32, sd + 1);
        if (!seq_step(cache, 2, &e[0], &s, PF_APPEND, k, "APPEND to the shared context"))
            break;
        if (e[0].C != 1 || e[0].len[0] != 15) {
            tfail(__FILE__, __LINE__, "test bug: model shared context length %lld",
                  (long long)e[0].len[0]);
            break;
        }
        s.seed++;
        s.cumulative = 1;
        if (!seq_step(cache, 2, &e[0], &s, PF_NONE, k, "cumulative call over the grown context"))
            break;
        /* REPLACE turns the one shared context into B = 3 contexts */
        s.seed++;
        s.cumulative = 0;
        if (!seq_step(cache, 2, &e[0], &s, PF_REPLACE, k, "REPLACE of the shared context"))
            break;
        s.seed++;
        seq_step(cache, 2, &e[0], &s, PF_NONE, k, "call over the 3 replaced contexts");
        break;
    }
    case SEQ_APPEND_CTX_IDX: {
        static const int cl[2] = {3, 5};
        if (!store_random(cache, 9, &e[0], 2, cl, 2, 16, 16, VM_SEP, dt, 0, CFLASH_PREFILL_REPLACE, sd))
            break;
        static const int lq[3] = {2, 2, 3}, lk[3] = {2, 1, 3};
        struct cspec s = packed_spec(dt, 3, lq, lk, 4, 2, 16, 16, sd + 1);
        s.has_idx = 1;
        s.idx[0] = 1;
        s.idx[1] = 1;
        s.idx[2] = 0;
        if (!seq_step(cache, 9, &e[0], &s, PF_APPEND, k, "APPEND through ctx_idx [1,1,0]"))
            break;
        if (e[0].len[0] != 6 || e[0].len[1] != 8) {
            tfail(__FILE__, __LINE__, "test bug: model lengths [%lld, %lld]", (long long)e[0].len[0],
                  (long long)e[0].len[1]);
            break;
        }
        s.seed++;
        s.idx[0] = 0;
        s.idx[1] = 1;
        s.idx[2] = 0;
        seq_step(cache, 9, &e[0], &s, PF_NONE, k, "call with ctx_idx [0,1,0] over the grown contexts");
        break;
    }
    case SEQ_STORE_LAYERS_CLEAR: {
        /* three layers of different shapes, dtypes and V kinds */
        static const int l0[2] = {4, 4}, l1[3] = {2, 0, 5}, l2[1] = {7}, ap[2] = {3, 1};
        if (!store_random(cache, 0, &e[0], 2, l0, 2, 16, 16, VM_SEP, dt, 1, CFLASH_PREFILL_REPLACE, sd))
            break;
        if (!store_random(cache, 7, &e[1], 3, l1, 1, 40, 32, VM_VIEW, CFLASH_DTYPE_BF16, 0,
                          CFLASH_PREFILL_REPLACE, sd + 1))
            break;
        if (!store_random(cache, 1000000, &e[2], 1, l2, 2, 8, 8, VM_NULL, CFLASH_DTYPE_F16, 0,
                          CFLASH_PREFILL_REPLACE, sd + 2))
            break;
        /* APPEND through the store: dense and packed */
        if (!store_random(cache, 0, &e[0], 2, ap, 2, 16, 16, VM_SEP, dt, 0, CFLASH_PREFILL_APPEND, sd + 3))
            break;
        static const int ad[2] = {2, 2};
        if (!store_random(cache, 0, &e[0], 2, ad, 2, 16, 16, VM_SEP, dt, 1, CFLASH_PREFILL_APPEND, sd + 4))
            break;
        /* APPEND through the store to an absent layer creates it */
        if (!store_random(cache, 3, &e[3], 2, ap, 1, 8, 4, VM_SEP, dt, 0, CFLASH_PREFILL_APPEND, sd + 5))
            break;
        static const int64_t layers[4] = {0, 7, 1000000, 3};
        int ok = 1;
        for (int i = 0; i < 4 && ok; i++)
            ok = verify_entry(cache, layers[i], &e[i], "after the stores");
        if (!ok)
            break;
        struct mentry none;
        memset(&none, 0, sizeof none);
        if (!check_entry(cache, 1, &none, "a layer never stored") ||
            !check_entry(cache, 999999, &none, "a layer never stored"))
            break;
        /* REPLACE through the store may change every property of the entry */
        static const int rp[1] = {3};
        if (!store_random(cache, 3, &e[3], 1, rp, 2, 24, 24, VM_NULL, CFLASH_DTYPE_BF16, 1,
                          CFLASH_PREFILL_REPLACE, sd + 6))
            break;
        if (!verify_entry(cache, 3, &e[3], "after REPLACE with new shapes"))
            break;
        /* clear one layer */
        enum cflash_status st = cflash_context_cache_clear(cache, 7);
        if (st != CFLASH_STATUS_OK) {
            tfail(__FILE__, __LINE__, "clear(7): %s (%s)", cflash_status_string(st), cflash_last_error());
            break;
        }
        model_clear(&e[1]);
        for (int i = 0; i < 4 && ok; i++)
            ok = verify_entry(cache, layers[i], &e[i], "after clear(7)");
        if (!ok)
            break;
        /* a call on the cleared layer is a miss (no context) */
        static const int lq[2] = {2, 1}, lk[2] = {1, 3};
        struct cspec s = packed_spec(CFLASH_DTYPE_F32, 2, lq, lk, 4, 2, 16, 16, sd + 7);
        if (!seq_step(cache, 7, &e[1], &s, PF_NONE, k, "call on the cleared layer (a miss)"))
            break;
        st = cflash_context_cache_clear(cache, 7); /* absent: OK */
        if (st != CFLASH_STATUS_OK) {
            tfail(__FILE__, __LINE__, "clear(7) of an absent layer: %s (%s)", cflash_status_string(st),
                  cflash_last_error());
            break;
        }
        st = cflash_context_cache_clear(cache, -1);
        if (st != CFLASH_STATUS_OK) {
            tfail(__FILE__, __LINE__, "clear(-1): %s (%s)", cflash_status_string(st), cflash_last_error());
            break;
        }
        for (int i = 0; i < 4; i++)
            model_clear(&e[i]);
        for (int i = 0; i < 4 && ok; i++)
            ok = check_entry(cache, layers[i], &e[i], "after clear(-1)");
        if (!ok)
            break;
        /* the cache is usable again */
        if (!seq_step(cache, 0, &e[0], &s, PF_REPLACE, k, "REPLACE after clear(-1)"))
            break;
        st = cflash_context_cache_clear(cache, -1);
        if (st != CFLASH_STATUS_OK)
            tfail(__FILE__, __LINE__, "clear(-1): %s", cflash_status_string(st));
        break;
    }
    case SEQ_MLA_576:
    case SEQ_MLA_40:
    case SEQ_MLA_VNULL: {
        const int big = a->which == SEQ_MLA_576, vnull = a->which == SEQ_MLA_VNULL;
        const int D = big ? 576 : vnull ? 64 : 40, Dv = big ? 512 : vnull ? 64 : 32;
        static const int lq[2] = {2, 3}, lk[2] = {3, 2};
        struct cspec s = packed_spec(dt, 2, lq, lk, big ? 2 : 4, 1, D, Dv, sd);
        s.vmode = vnull ? VM_NULL : VM_VIEW;
        /* a miss that stores (REPLACE), a call attending that, an APPEND, a dense call */
        if (!seq_step(cache, 4, &e[0], &s, PF_REPLACE, k, "MLA call 1 (miss, REPLACE)"))
            break;
        s.seed++;
        if (!seq_step(cache, 4, &e[0], &s, PF_APPEND, k, "MLA call 2 (APPEND)"))
            break;
        struct cspec s3 = dense_spec(dt, 2, 2, 1, big ? 2 : 4, 1, D, Dv, sd + 9);
        s3.vmode = s.vmode;
        seq_step(cache, 4, &e[0], &s3, PF_NONE, k, "MLA call 3 (dense)");
        break;
    }
    }
    for (int i = 0; i < 4; i++)
        model_clear(&e[i]);
    cflash_context_cache_destroy(cache);
}

/* ---- context/misuse ------------------------------------------------------------------------ */

/* A cache with four layers and a valid call over buffers much larger than the views:
 *   layer 2: C=2 contexts (lengths 3, 4), Hk=2, D=8, Dv=6, f32, separate V
 *   layer 3: C=2 (lengths 2, 5), Hk=2, D=8, Dv=8, f32, separate V
 *   layer 4: C=2 (lengths 3, 1), Hk=2, D=8, Dv=8, f32, V := K (stored with v = NULL)
 *   layer 5: C=3 (lengths 1, 2, 3), Hk=2, D=8, Dv=6, f32, separate V
 * packed: q [5,4,8], k [4,2,8], v [4,2,6], cu_q [0,3,5], cu_k [0,1,4], out [5,4,6], lse [4,5]
 * dense:  q [2,3,4,8], k [2,2,2,8], v [2,2,2,6], out [2,3,4,6], lse [2,4,3]
 * The call reads layer 2 with prefill APPEND, so a library that stores before it validates
 * changes the cache. */
#define MBUF 4096
#define MPOISON 0x7f
#define NLAYERS 4
static const int64_t fix_layers[NLAYERS] = {2, 3, 4, 5};

struct mfix {
    cflash_context_cache_t cache;
    struct mentry e[NLAYERS];
    float *qb, *kb, *vb, *ob, *lb, *mb;
    int32_t cuq[8], cuk[8], idx[8];
    struct cflash_tensor q, k, v, out, lse, cuqt, cukt, idxt, alibi, mask;
    const struct cflash_tensor *pv, *pcuq, *pcuk;
    int dense;
    struct cflash_mlm_args m;
    struct cflash_attn_params p;
};

static float *mbuf_rand(struct rng *r)
{
    float *b = malloc(MBUF * sizeof *b);
    for (int i = 0; i < MBUF; i++)
        b[i] = (float)rng_normal(r);
    return b;
}

static void contig(struct cflash_tensor *t)
{
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        t->stride[i] = s;
        s *= t->shape[i] > 0 ? t->shape[i] : 1;
    }
}

static int mfix_init(struct mfix *f, int dense)
{
    memset(f, 0, sizeof *f);
    struct rng r = {0xc0117e87ull + (uint64_t)dense};
    CHECK0(cflash_context_cache_create(&f->cache) == CFLASH_STATUS_OK, "create failed");
    static const int l2[2] = {3, 4}, l3[2] = {2, 5}, l4[2] = {3, 1}, l5[3] = {1, 2, 3};
    if (!store_random(f->cache, 2, &f->e[0], 2, l2, 2, 8, 6, VM_SEP, CFLASH_DTYPE_F32, 0,
                      CFLASH_PREFILL_REPLACE, 21) ||
        !store_random(f->cache, 3, &f->e[1], 2, l3, 2, 8, 8, VM_SEP, CFLASH_DTYPE_F32, 0,
                      CFLASH_PREFILL_REPLACE, 31) ||
        !store_random(f->cache, 4, &f->e[2], 2, l4, 2, 8, 8, VM_NULL, CFLASH_DTYPE_F32, 0,
                      CFLASH_PREFILL_REPLACE, 41) ||
        !store_random(f->cache, 5, &f->e[3], 3, l5, 2, 8, 6, VM_SEP, CFLASH_DTYPE_F32, 0,
                      CFLASH_PREFILL_REPLACE, 51))
        return 0;
    f->dense = dense;
    f->qb = mbuf_rand(&r);
    f->kb = mbuf_rand(&r);
    f->vb = mbuf_rand(&r);
    f->mb = mbuf_rand(&r);
    f->ob = malloc(MBUF * sizeof(float));
    f->lb = malloc(MBUF * sizeof(float));
    memset(f->ob, MPOISON, MBUF * sizeof(float));
    memset(f->lb, MPOISON, MBUF * sizeof(float));
    if (dense) {
        int64_t qs[4] = {2, 3, 4, 8}, ks[4] = {2, 2, 2, 8}, vs[4] = {2, 2, 2, 6},
                os[4] = {2, 3, 4, 6}, ls[3] = {2, 4, 3};
        f->q = tdesc(f->qb, CFLASH_DTYPE_F32, 4, qs);
        f->k = tdesc(f->kb, CFLASH_DTYPE_F32, 4, ks);
        f->v = tdesc(f->vb, CFLASH_DTYPE_F32, 4, vs);
        f->out = tdesc(f->ob, CFLASH_DTYPE_F32, 4, os);
        f->lse = tdesc(f->lb, CFLASH_DTYPE_F32, 3, ls);
    } else {
        int64_t qs[3] = {5, 4, 8}, ks[3] = {4, 2, 8}, vs[3] = {4, 2, 6}, os[3] = {5, 4, 6},
                ls[2] = {4, 5}, cs[1] = {3};
        f->q = tdesc(f->qb, CFLASH_DTYPE_F32, 3, qs);
        f->k = tdesc(f->kb, CFLASH_DTYPE_F32, 3, ks);
        f->v = tdesc(f->vb, CFLASH_DTYPE_F32, 3, vs);
        f->out = tdesc(f->ob, CFLASH_DTYPE_F32, 3, os);
        f->lse = tdesc(f->lb, CFLASH_DTYPE_F32, 2, ls);
        static const int32_t cq[3] = {0, 3, 5}, ck[3] = {0, 1, 4};
        memcpy(f->cuq, cq, sizeof cq);
        memcpy(f->cuk, ck, sizeof ck);
        f->cuqt = tdesc(f->cuq, CFLASH_DTYPE_I32, 1, cs);
        f->cukt = tdesc(f->cuk, CFLASH_DTYPE_I32, 1, cs);
        f->pcuq = &f->cuqt;
        f->pcuk = &f->cukt;
    }
    int64_t is[1] = {2}, as[1] = {4}, ms[4] = {1, 1, 1, 1};
    f->idx[0] = 1;
    f->idx[1] = 0;
    f->idxt = tdesc(f->idx, CFLASH_DTYPE_I32, 1, is);
    f->alibi = tdesc(f->mb, CFLASH_DTYPE_F32, 1, as);
    f->mask = tdesc(f->mb, CFLASH_DTYPE_U8, 4, ms);
    f->pv = &f->v;
    f->m.cache = f->cache;
    f->m.layer_id = 2;
    f->m.prefill = 1;
    f->m.prefill_mode = CFLASH_PREFILL_APPEND;
    f->p = cflash_attn_params_default();
    f->p.kernel = CFLASH_KERNEL_REFERENCE;
    return 1;
}

static void mfix_free(struct mfix *f)
{
    free(f->qb);
    free(f->kb);
    free(f->vb);
    free(f->ob);
    free(f->lb);
    free(f->mb);
    for (int i = 0; i < NLAYERS; i++)
        model_clear(&f->e[i]);
    cflash_context_cache_destroy(f->cache);
}

static enum cflash_status mfix_call(struct mfix *f)
{
    return cflash_attn_mlm(&f->q, &f->k, f->pv, f->pcuq, f->pcuk, &f->m, &f->out, &f->lse, &f->p);
}

static int mbuf_clean(const float *b)
{
    const unsigned char *c = (const unsigned char *)b;
    for (size_t i = 0; i < MBUF * sizeof *b; i++)
        if (c[i] != MPOISON)
            return 0;
    return 1;
}

#define INV CFLASH_STATUS_INVALID_ARGUMENT
#define UNS CFLASH_STATUS_UNSUPPORTED
/* X(id, dense fixture, expected status, names ('|': any of them), description) */
#define CTX_MISUSE(X)                                                                            \
    X(ENTRY_HK, 0, INV, "k|v|cache|layer_id|Hk", "entry_mismatch/Hk=1_vs_entry_Hk=2")           \
    X(ENTRY_D, 0, INV, "q|k|cache|layer_id|D", "entry_mismatch/D=7_vs_entry_D=8")               \
    X(ENTRY_DV, 0, INV, "v|out|cache|layer_id|Dv", "entry_mismatch/Dv=5_vs_entry_Dv=6")         \
    X(ENTRY_DTYPE, 0, INV, "q|k|v|dtype|cache|layer_id", "entry_mismatch/f16_call_vs_f32_entry") \
    X(ENTRY_DTYPE_DENSE, 1, INV, "q|k|v|dtype|cache|layer_id", "entry_mismatch/dense_bf16_call_vs_f32_entry") \
    X(ENTRY_VKIND_NULL, 0, INV, "v|cache|layer_id", "entry_mismatch/v=NULL_vs_entry_with_separate_V") \
    X(ENTRY_VKIND_SEP, 0, INV, "v|cache|layer_id", "entry_mismatch/separate_v_vs_entry_V:=K")   \
    X(ENTRY_VKIND_VIEW, 0, INV, "v|cache|layer_id", "entry_mismatch/v=kview_Dv=6_vs_entry_with_separate_V") \
    X(COUNT_3_B_2, 0, INV, "ctx_idx|cache|layer_id|num_contexts", "context_count=3_with_B=2_without_ctx_idx") \
    X(COUNT_3_B_2_DENSE, 1, INV, "ctx_idx|cache|layer_id|num_contexts", "dense/context_count=3_with_B=2_without_ctx_idx") \
    X(IDX_OOR, 0, INV, "ctx_idx", "ctx_idx={0,2}_with_2_contexts")                             \
    X(IDX_NEG, 0, INV, "ctx_idx", "ctx_idx={-1,0}")                                             \
    X(IDX_BIG, 1, INV, "ctx_idx", "dense/ctx_idx={1,INT32_MAX}")                                 \
    X(IDX_F32, 0, INV, "ctx_idx", "ctx_idx.dtype=f32")                                          \
    X(IDX_I64ISH, 0, INV, "ctx_idx", "ctx_idx.dtype=u8")                                        \
    X(IDX_SHAPE, 0, INV, "ctx_idx", "ctx_idx.shape=[3]")                                        \
    X(IDX_SHAPE1, 1, INV, "ctx_idx", "dense/ctx_idx.shape=[1]")                                 \
    X(IDX_NDIM2, 0, INV, "ctx_idx", "ctx_idx.ndim=2")                                           \
    X(IDX_NULLDATA, 0, INV, "ctx_idx", "ctx_idx.data=NULL")                                     \
    X(CUMUL_DENSE, 1, INV, "cumulative", "cumulative_with_a_dense_call")                        \
    X(CUMUL_2, 0, INV, "cumulative", "cumulative=2")                                            \
    X(PREFILL_2, 0, INV, "prefill", "prefill=2")                                                \
    X(PREFILL_MODE, 0, INV, "prefill_mode", "prefill_mode=7")                                   \
    X(PREFILL_NO_CACHE, 0, INV, "prefill|cache", "prefill_without_cache")                       \
    X(PREFILL_NO_CACHE_DENSE, 1, INV, "prefill|cache", "dense/prefill_without_cache")           \
    X(LAYER_NEG, 0, INV, "layer_id", "layer_id=-1")                                             \
    X(LAYER_NEG2, 1, INV, "layer_id", "dense/layer_id=-5")                                      \
    X(CUK_NULL_TK, 0, INV, "cu_seqlens_k|k", "cu_seqlens_k=NULL_with_Tk!=Tq")                   \
    X(CUQ_NULL, 0, INV, "cu_seqlens_q|q", "packed_call_without_cu_seqlens_q")                     \
    X(CUK_LAST, 0, INV, "cu_seqlens_k", "cu_seqlens_k_last!=Tk")                                \
    X(CUK_B, 0, INV, "cu_seqlens_k", "cu_seqlens_k.shape=[2]!=B+1")                             \
    X(CAUSAL, 0, UNS, "causal", "causal=1")                                                     \
    X(CAUSAL_DENSE, 1, UNS, "causal", "dense/causal=1")                                         \
    X(WINDOW_LEFT, 0, UNS, "window_left|window", "window_left=3")                               \
    X(WINDOW_RIGHT, 1, UNS, "window_right|window", "dense/window_right=0")                      \
    X(ALIBI, 0, UNS, "alibi_slopes|alibi", "alibi_slopes_given")                                \
    X(MASK, 0, UNS, "mask", "mask_given")                                                       \
    X(BIAS, 1, UNS, "bias", "dense/bias_given")                                                 \
    X(Q_HQ, 0, INV, "q|k", "Hq=3_not_a_multiple_of_Hk")                                        \
    X(OUT_DV, 0, INV, "out", "out.shape[2]=5!=Dv")                                              \
    X(LSE_T, 0, INV, "lse", "lse.shape[1]=4!=Tq")                                               \
    X(STORE_APPEND_COUNT, 0, INV, "k|cu_seqlens|cache|layer_id|num_contexts", "store/APPEND_3_sequences_to_2_contexts") \
    X(STORE_APPEND_COUNT_DENSE, 1, INV, "k|cache|layer_id|num_contexts", "store/dense_APPEND_1_sequence_to_2_contexts") \
    X(STORE_APPEND_D, 0, INV, "k|cache|layer_id|D", "store/APPEND_D=7_to_D=8_entry")            \
    X(STORE_APPEND_DTYPE, 0, INV, "k|v|dtype|cache|layer_id", "store/APPEND_bf16_to_f32_entry") \
    X(STORE_APPEND_VKIND, 0, INV, "v|cache|layer_id", "store/APPEND_v=NULL_to_separate_V_entry") \
    X(STORE_LAYER_NEG, 0, INV, "layer_id", "store/layer_id=-1")                                 \
    X(STORE_MODE, 0, INV, "mode|prefill_mode", "store/mode=9")                                               \
    X(STORE_CU_LAST, 0, INV, "cu_seqlens", "store/cu_seqlens_last!=Tk")                         \
    X(STORE_V_SHAPE, 0, INV, "v", "store/v.shape[0]!=k.shape[0]")

enum ctx_misuse_id {
#define X(id, dn, st, names, desc) CM_##id,
    CTX_MISUSE(X)
#undef X
        N_CTX_MISUSE
};

static const struct {
    int dense;
    enum cflash_status st;
    const char *names, *desc;
} cm_info[N_CTX_MISUSE] = {
#define X(id, dn, st, names, desc) {dn, st, names, desc},
    CTX_MISUSE(X)
#undef X
};

/* Applies the mutation; returns 1 when the misuse is a store call (done here, status in *st). */
static int cm_mutate(struct mfix *f, enum ctx_misuse_id id, enum cflash_status *st)
{
    switch (id) {
    case CM_ENTRY_HK:
        f->k.shape[1] = f->v.shape[1] = 1;
        f->q.shape[1] = 2; /* Hq % Hk stays 0; lse / out follow */
        f->out.shape[1] = 2;
        f->lse.shape[0] = 2;
        contig(&f->k);
        contig(&f->v);
        contig(&f->q);
        contig(&f->out);
        contig(&f->lse);
        break;
    case CM_ENTRY_D:
        f->q.shape[2] = f->k.shape[2] = 7;
        contig(&f->q);
        contig(&f->k);
        break;
    case CM_ENTRY_DV:
        f->v.shape[2] = f->out.shape[2] = 5;
        contig(&f->v);
        contig(&f->out);
        break;
    case CM_ENTRY_DTYPE:
        f->q.dtype = f->k.dtype = f->v.dtype = f->out.dtype = CFLASH_DTYPE_F16;
        break;
    case CM_ENTRY_DTYPE_DENSE:
        f->q.dtype = f->k.dtype = f->v.dtype = f->out.dtype = CFLASH_DTYPE_BF16;
        break;
    case CM_ENTRY_VKIND_NULL:
        f->m.layer_id = 3; /* Dv = D = 8, separate V */
        f->pv = NULL;
        f->out.shape[2] = 8;
        contig(&f->out);
        break;
    case CM_ENTRY_VKIND_SEP:
        f->m.layer_id = 4; /* V := K, Dv = 8 */
        f->v.shape[2] = f->out.shape[2] = 8;
        contig(&f->v);
        contig(&f->out);
        break;
    case CM_ENTRY_VKIND_VIEW:
        f->v = f->k; /* a view of k's first 6 columns: V := K[..., :6] */
        f->v.shape[2] = 6;
        break;
    case CM_COUNT_3_B_2:
    case CM_COUNT_3_B_2_DENSE: f->m.layer_id = 5; break;
    case CM_IDX_OOR: f->idx[0] = 0; f->idx[1] = 2; f->m.ctx_idx = &f->idxt; break;
    case CM_IDX_NEG: f->idx[0] = -1; f->idx[1] = 0; f->m.ctx_idx = &f->idxt; break;
    case CM_IDX_BIG: f->idx[0] = 1; f->idx[1] = INT32_MAX; f->m.ctx_idx = &f->idxt; break;
    case CM_IDX_F32: f->idxt.dtype = CFLASH_DTYPE_F32; f->m.ctx_idx = &f->idxt; break;
    case CM_IDX_I64ISH: f->idxt.dtype = CFLASH_DTYPE_U8; f->m.ctx_idx = &f->idxt; break;
    case CM_IDX_SHAPE: f->idxt.shape[0] = 3; f->idx[2] = 0; f->m.ctx_idx = &f->idxt; break;
    case CM_IDX_SHAPE1: f->idxt.shape[0] = 1; f->m.ctx_idx = &f->idxt; break;
    case CM_IDX_NDIM2:
        f->idxt.ndim = 2;
        f->idxt.shape[0] = 2;
        f->idxt.shape[1] = 1;
        contig(&f->idxt);
        f->m.ctx_idx = &f->idxt;
        break;
    case CM_IDX_NULLDATA: f->idxt.data = NULL; f->m.ctx_idx = &f->idxt; break;
    case CM_CUMUL_DENSE: f->m.cumulative = 1; break;
    case CM_CUMUL_2: f->m.cumulative = 2; break;
    case CM_PREFILL_2: f->m.prefill = 2; break;
    case CM_PREFILL_MODE: f->m.prefill_mode = (enum cflash_prefill_mode)7; break;
    case CM_PREFILL_NO_CACHE:
    case CM_PREFILL_NO_CACHE_DENSE: f->m.cache = NULL; break;
    case CM_LAYER_NEG: f->m.layer_id = -1; break;
    case CM_LAYER_NEG2: f->m.layer_id = -5; break;
    case CM_CUK_NULL_TK: f->pcuk = NULL; break; /* Tk = 4 != Tq = 5 */
    case CM_CUQ_NULL: f->pcuq = NULL; break;
    case CM_CUK_LAST: f->cuk[2] = 3; break;
    case CM_CUK_B: f->cukt.shape[0] = 2; break;
    case CM_CAUSAL:
    case CM_CAUSAL_DENSE: f->p.causal = 1; break;
    case CM_WINDOW_LEFT: f->p.window_left = 3; break;
    case CM_WINDOW_RIGHT: f->p.window_right = 0; break;
    case CM_ALIBI: f->p.alibi_slopes = &f->alibi; break;
    case CM_MASK: f->p.mask = &f->mask; break;
    case CM_BIAS: {
        int64_t bs[4] = {1, 1, 1, 1};
        f->mask = tdesc(f->mb, CFLASH_DTYPE_F32, 4, bs);
        f->p.bias = &f->mask;
        break;
    }
    case CM_Q_HQ:
        f->q.shape[1] = f->out.shape[1] = 3;
        f->lse.shape[0] = 3;
        contig(&f->q);
        contig(&f->out);
        contig(&f->lse);
        break;
    case CM_OUT_DV: f->out.shape[2] = 5; contig(&f->out); break;
    case CM_LSE_T: f->lse.shape[1] = 4; contig(&f->lse); break;
    case CM_STORE_APPEND_COUNT: {
        int32_t cu[4] = {0, 1, 3, 4};
        int64_t cs[1] = {4};
        struct cflash_tensor cut = tdesc(cu, CFLASH_DTYPE_I32, 1, cs);
        *st = cflash_context_cache_store(f->cache, 2, &f->k, &f->v, &cut, CFLASH_PREFILL_APPEND);
        return 1;
    }
    case CM_STORE_APPEND_COUNT_DENSE: {
        int64_t ks[4] = {1, 2, 2, 8}, vs[4] = {1, 2, 2, 6};
        struct cflash_tensor k = tdesc(f->kb, CFLASH_DTYPE_F32, 4, ks),
                             v = tdesc(f->vb, CFLASH_DTYPE_F32, 4, vs);
        *st = cflash_context_cache_store(f->cache, 2, &k, &v, NULL, CFLASH_PREFILL_APPEND);
        return 1;
    }
    case CM_STORE_APPEND_D:
        f->k.shape[2] = 7;
        contig(&f->k);
        *st = cflash_context_cache_store(f->cache, 2, &f->k, &f->v, &f->cukt, CFLASH_PREFILL_APPEND);
        return 1;
    case CM_STORE_APPEND_DTYPE:
        f->k.dtype = f->v.dtype = CFLASH_DTYPE_BF16;
        *st = cflash_context_cache_store(f->cache, 2, &f->k, &f->v, &f->cukt, CFLASH_PREFILL_APPEND);
        return 1;
    case CM_STORE_APPEND_VKIND:
        *st = cflash_context_cache_store(f->cache, 3, &f->k, NULL, &f->cukt, CFLASH_PREFILL_APPEND);
        return 1;
    case CM_STORE_LAYER_NEG:
        *st = cflash_context_cache_store(f->cache, -1, &f->k, &f->v, &f->cukt, CFLASH_PREFILL_REPLACE);
        return 1;
    case CM_STORE_MODE:
        *st = cflash_context_cache_store(f->cache, 2, &f->k, &f->v, &f->cukt,
                                         (enum cflash_prefill_mode)9);
        return 1;
    case CM_STORE_CU_LAST:
        f->cuk[2] = 3;
        *st = cflash_context_cache_store(f->cache, 2, &f->k, &f->v, &f->cukt, CFLASH_PREFILL_REPLACE);
        return 1;
    case CM_STORE_V_SHAPE:
        f->v.shape[0] = 3;
        *st = cflash_context_cache_store(f->cache, 2, &f->k, &f->v, &f->cukt, CFLASH_PREFILL_REPLACE);
        return 1;
    case N_CTX_MISUSE: break;
    }
    return 0;
}

static void misuse_case(const void *arg)
{
    const enum ctx_misuse_id id = *(const enum ctx_misuse_id *)arg;
    struct mfix *f = calloc(1, sizeof *f);
    if (!mfix_init(f, cm_info[id].dense))
        goto done;
    enum cflash_status st = CFLASH_STATUS_OK;
    if (!cm_mutate(f, id, &st))
        st = mfix_call(f);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", cflash_last_error());
    if (st != cm_info[id].st) {
        tfail(__FILE__, __LINE__, "status %s, want %s (message \"%s\")", cflash_status_string(st),
              cflash_status_string(cm_info[id].st), msg);
        goto done;
    }
    if (!msg[0]) {
        tfail(__FILE__, __LINE__, "cflash_last_error() is empty");
        goto done;
    }
    if (!msg_names_any(msg, cm_info[id].names)) {
        tfail(__FILE__, __LINE__, "message \"%s\" does not name %s", msg, cm_info[id].names);
        goto done;
    }
    if (!mbuf_clean(f->ob) || !mbuf_clean(f->lb)) {
        tfail(__FILE__, __LINE__, "out / lse were written by a call that failed (\"%s\")", msg);
        goto done;
    }
    /* every entry unchanged: info, lengths and contents */
    for (int i = 0; i < NLAYERS; i++) {
        char when[128];
        snprintf(when, sizeof when, "after the failed call (\"%.60s\")", msg);
        if (!verify_entry(f->cache, fix_layers[i], &f->e[i], when))
            goto done;
    }
done:
    mfix_free(f);
    free(f);
}

/* The fixture is valid (each misuse case breaks exactly one rule): OK, out / lse written, the
 * call's keys appended to contexts (ctx_idx {1, 0} too), and the stores of the fixture work. */
static void misuse_baseline(const void *arg)
{
    const int dense = *(const int *)arg;
    struct mfix *f = calloc(1, sizeof *f);
    if (!mfix_init(f, dense))
        goto done;
    enum cflash_status st = mfix_call(f);
    if (st != CFLASH_STATUS_OK) {
        tfail(__FILE__, __LINE__, "baseline call: %s (%s)", cflash_status_string(st), cflash_last_error());
        goto done;
    }
    if (mbuf_clean(f->ob) || mbuf_clean(f->lb)) {
        tfail(__FILE__, __LINE__, "baseline call wrote no out / lse");
        goto done;
    }
    struct cflash_context_info info;
    st = cflash_context_cache_info(f->cache, 2, &info);
    if (st != CFLASH_STATUS_OK || info.total_len != 11) {
        tfail(__FILE__, __LINE__, "baseline APPEND: total_len %lld, want 11 (%s)",
              (long long)info.total_len, cflash_status_string(st));
        goto done;
    }
    /* with ctx_idx {1, 0}, and without prefill on layers 3 (Dv 8 outputs needed: skip) */
    f->m.ctx_idx = &f->idxt;
    f->m.prefill = 0;
    st = mfix_call(f);
    if (st != CFLASH_STATUS_OK) {
        tfail(__FILE__, __LINE__, "baseline call with ctx_idx: %s (%s)", cflash_status_string(st),
              cflash_last_error());
        goto done;
    }
    /* the separate-V call with v = NULL and Dv = D on layer 4 (V := K) is fine */
    f->m.ctx_idx = NULL;
    f->m.layer_id = 4;
    f->pv = NULL;
    f->out.shape[f->out.ndim - 1] = 8;
    contig(&f->out);
    st = mfix_call(f);
    if (st != CFLASH_STATUS_OK) {
        tfail(__FILE__, __LINE__, "baseline V := K call on layer 4: %s (%s)", cflash_status_string(st),
              cflash_last_error());
        goto done;
    }
    if (!dense) {
        /* store REPLACE of the fixture's packed k, v into a new layer */
        st = cflash_context_cache_store(f->cache, 6, &f->k, &f->v, &f->cukt, CFLASH_PREFILL_REPLACE);
        if (st != CFLASH_STATUS_OK)
            tfail(__FILE__, __LINE__, "baseline store: %s (%s)", cflash_status_string(st),
                  cflash_last_error());
    }
done:
    mfix_free(f);
    free(f);
}

/* info / lengths / clear on a NULL-free cache with odd layer ids */
static void api_case(const void *arg)
{
    (void)arg;
    cflash_context_cache_t cache = (cflash_context_cache_t)(uintptr_t)0x1;
    CHECK_STATUS(cflash_context_cache_create(&cache), CFLASH_STATUS_OK);
    CHECK(cache != NULL && cache != (cflash_context_cache_t)(uintptr_t)0x1,
          "create did not set the handle");
    struct mentry none;
    memset(&none, 0, sizeof none);
    if (!check_entry(cache, 0, &none, "a fresh cache") ||
        !check_entry(cache, INT64_MAX, &none, "a fresh cache")) {
        cflash_context_cache_destroy(cache);
        return;
    }
    enum cflash_status st1 = cflash_context_cache_clear(cache, -1), st2 = cflash_context_cache_clear(cache, 12);
    cflash_context_cache_destroy(cache);
    cflash_context_cache_destroy(NULL); /* like free(NULL) */
    CHECK(st1 == CFLASH_STATUS_OK && st2 == CFLASH_STATUS_OK,
          "clear on an empty cache: %s / %s", cflash_status_string(st1), cflash_status_string(st2));
}

/* ---- registration ---------------------------------------------------------------------- */

static struct ccfg base(enum cflash_kernel k, enum cflash_dtype dt, const char *label, uint64_t seed)
{
    struct ccfg c;
    memset(&c, 0, sizeof c);
    c.kernel = k;
    c.s.dt = dt;
    c.s.Hq = 4;
    c.s.Hk = 2;
    c.s.D = c.s.Dv = 32;
    c.s.seed = seed;
    c.layer = 1;
    c.label = label;
    return c;
}

static void set_packed(struct ccfg *c, int B, const int *lq, const int *lk)
{
    c->s.dense = 0;
    c->s.B = B;
    for (int b = 0; b < B; b++) {
        c->s.lq[b] = lq[b];
        c->s.lk[b] = lk ? lk[b] : lq[b];
    }
    c->s.cuk_null = lk == NULL;
}

static void set_dense(struct ccfg *c, int B, int Lq, int Lk)
{
    c->s.dense = 1;
    c->s.B = B;
    c->s.Lq = Lq;
    c->s.Lk = Lk;
}

static void add_attn(struct ccfg c)
{
    char name[400];
    snprintf(name, sizeof name, "context/attn/%s/%s/%s", kname(c.kernel), dtype_name(c.s.dt), c.label);
    tcase_add(name, attn_case, &c, sizeof c);
}

static void register_kernel(enum cflash_kernel k)
{
    static const int L975[3] = {9, 7, 5};
    for (int di = 0; di < 3; di++) {
        const enum cflash_dtype dt = dtypes[di];
        const uint64_t sd = 0xc0000 + (uint64_t)di * 0x100;
        struct ccfg c;

        c = base(k, dt, "dense/per_batch/B=2,Lq=5,Lk=7,ctx=[6,9]", sd + 1);
        set_dense(&c, 2, 5, 7);
        c.ctx = CTX_PER_BATCH;
        c.clen[0] = 6;
        c.clen[1] = 9;
        add_attn(c);

        c = base(k, dt, "dense/shared/Hq=8,Hk=2,D=64/ctx=[11]/sinks", sd + 2);
        set_dense(&c, 3, 4, 3);
        c.s.Hq = 8;
        c.s.D = c.s.Dv = 64;
        c.s.sinks = 1;
        c.ctx = CTX_SHARED;
        c.clen[0] = 11;
        add_attn(c);

        {
            static const int lq[3] = {4, 0, 6}, lk[3] = {3, 5, 0};
            c = base(k, dt, "packed/shared/Hq=8,Hk=2/lq=[4,0,6],lk=[3,5,0]/ctx=[11]", sd + 3);
            set_packed(&c, 3, lq, lk);
            c.s.Hq = 8;
            c.ctx = CTX_SHARED;
            c.clen[0] = 11;
            add_attn(c);
        }
        {
            static const int lq[3] = {4, 2, 6}, lk[3] = {3, 5, 1};
            c = base(k, dt, "packed/per_batch/ctx=[4,0,3]/store=packed", sd + 4);
            set_packed(&c, 3, lq, lk);
            c.ctx = CTX_PER_BATCH;
            c.clen[0] = 4;
            c.clen[2] = 3;
            add_attn(c);
            c = base(k, dt, "packed/per_batch/ctx=[5,5,5]/store=dense/out=f32", sd + 5);
            set_packed(&c, 3, lq, lk);
            c.ctx = CTX_PER_BATCH;
            c.clen[0] = c.clen[1] = c.clen[2] = 5;
            c.store_dense = 1;
            c.s.out_f32 = 1;
            add_attn(c);
        }
        {
            static const int lq[4] = {3, 2, 5, 1}, lk[4] = {2, 4, 0, 3};
            c = base(k, dt, "packed/ctx_idx=[2,0,2,1]/C=3,ctx=[5,2,8]", sd + 6);
            set_packed(&c, 4, lq, lk);
            c.ctx = CTX_IDX;
            c.C = 3;
            c.clen[0] = 5;
            c.clen[1] = 2;
            c.clen[2] = 8;
            c.s.has_idx = 1;
            c.s.idx[0] = 2;
            c.s.idx[1] = 0;
            c.s.idx[2] = 2;
            c.s.idx[3] = 1;
            add_attn(c);
            c.label = "packed/ctx_idx=[0,0,0,0]/C=3,ctx=[5,2,8]/strided";
            c.s.idx[1] = c.s.idx[2] = c.s.idx[3] = 0;
            c.s.strided = 1;
            c.s.seed++;
            add_attn(c);
        }
        {
            /* ctx_idx on a single shared context and on the dense path */
            c = base(k, dt, "dense/ctx_idx=[1,1]/C=2,ctx=[3,7]", sd + 7);
            set_dense(&c, 2, 3, 2);
            c.ctx = CTX_IDX;
            c.C = 2;
            c.clen[0] = 3;
            c.clen[1] = 7;
            c.s.has_idx = 1;
            c.s.idx[0] = c.s.idx[1] = 1;
            add_attn(c);
        }
        /* cumulative query attention, lengths [9,7,5] (self-attention: cu_seqlens_k NULL) */
        c = base(k, dt, "packed/cumulative/lengths=[9,7,5]/no_cache", sd + 8);
        set_packed(&c, 3, L975, NULL);
        c.s.cumulative = 1;
        add_attn(c);
        c = base(k, dt, "packed/cumulative/lengths=[9,7,5]/per_batch_ctx=[4,0,3]", sd + 9);
        set_packed(&c, 3, L975, NULL);
        c.s.cumulative = 1;
        c.ctx = CTX_PER_BATCH;
        c.clen[0] = 4;
        c.clen[2] = 3;
        add_attn(c);
        {
            static const int lq[3] = {2, 3, 1};
            c = base(k, dt, "packed/cumulative/lq=[2,3,1],lk=[9,7,5]/shared_ctx=[6]/sinks", sd + 10);
            set_packed(&c, 3, lq, L975);
            c.s.cumulative = 1;
            c.s.sinks = 1;
            c.ctx = CTX_SHARED;
            c.clen[0] = 6;
            add_attn(c);
        }
        /* misses and no cache */
        c = base(k, dt, "dense/miss/B=2,Lq=3,Lk=5", sd + 11);
        set_dense(&c, 2, 3, 5);
        c.ctx = CTX_MISS;
        add_attn(c);
        {
            static const int lq[2] = {3, 5}, lk[2] = {4, 2};
            c = base(k, dt, "packed/no_cache/lse=null", sd + 12);
            set_packed(&c, 2, lq, lk);
            c.s.lse_null = 1;
            add_attn(c);
        }
        /* zero-length sequences and empty contexts: rows with nothing visible */
        for (int sinks = 0; sinks < 2; sinks++) {
            static const int lq[4] = {2, 3, 0, 2}, lk[4] = {0, 2, 0, 0};
            c = base(k, dt, sinks ? "packed/empty_rows/ctx=[0,0,3,0]/sinks" : "packed/empty_rows/ctx=[0,0,3,0]",
                     sd + 13 + (uint64_t)sinks);
            set_packed(&c, 4, lq, lk);
            c.s.sinks = sinks;
            c.ctx = CTX_PER_BATCH;
            c.clen[2] = 3;
            add_attn(c);
        }
        c = base(k, dt, "dense/Lk=0/keys_only_from_contexts=[0,4]", sd + 15);
        set_dense(&c, 2, 3, 0);
        c.ctx = CTX_PER_BATCH;
        c.clen[1] = 4;
        c.s.sinks = 1;
        add_attn(c);
        /* Dv != D, softcap, scale, strided layouts */
        {
            static const int lq[2] = {5, 3}, lk[2] = {6, 2};
            c = base(k, dt, "packed/Dv=48/softcap=5,scale=0.3/strided/per_batch_ctx=[7,2]", sd + 16);
            set_packed(&c, 2, lq, lk);
            c.s.Dv = 48;
            c.s.softcap = 5;
            c.s.scale = 0.3f;
            c.s.strided = 1;
            c.ctx = CTX_PER_BATCH;
            c.clen[0] = 7;
            c.clen[1] = 2;
            add_attn(c);
        }
        /* MLA: V := K (NULL) and V := K[..., :Dv] (views), shared latent head Hk = 1 */
        {
            static const int lq[2] = {3, 2}, lk[2] = {2, 4};
            c = base(k, dt, "mla/v=null/Hq=4,Hk=1,D=64/shared_ctx=[5]/prefill=append", sd + 17);
            set_packed(&c, 2, lq, lk);
            c.s.Hk = 1;
            c.s.D = c.s.Dv = 64;
            c.s.vmode = VM_NULL;
            c.ctx = CTX_SHARED;
            c.clen[0] = 5;
            c.prefill = PF_APPEND;
            add_attn(c);
            c = base(k, dt, "mla/v=kview/D=576,Dv=512/Hq=2,Hk=1/per_batch_ctx=[3,5]/prefill=append", sd + 18);
            set_packed(&c, 2, lq, lk);
            c.s.Hq = 2;
            c.s.Hk = 1;
            c.s.D = 576;
            c.s.Dv = 512;
            c.s.vmode = VM_VIEW;
            c.ctx = CTX_PER_BATCH;
            c.clen[0] = 3;
            c.clen[1] = 5;
            c.prefill = PF_APPEND;
            add_attn(c);
            c = base(k, dt, "mla/v=kview/D=40,Dv=32/Hq=4,Hk=1/miss/prefill=replace", sd + 19);
            set_packed(&c, 2, lq, lk);
            c.s.Hk = 1;
            c.s.D = 40;
            c.s.Dv = 32;
            c.s.vmode = VM_VIEW;
            c.ctx = CTX_MISS;
            c.prefill = PF_REPLACE;
            add_attn(c);
        }
        /* prefill on the plain paths */
        c = base(k, dt, "dense/per_batch_ctx=[2,6]/prefill=append", sd + 20);
        set_dense(&c, 2, 3, 4);
        c.ctx = CTX_PER_BATCH;
        c.clen[0] = 2;
        c.clen[1] = 6;
        c.prefill = PF_APPEND;
        add_attn(c);
        c = base(k, dt, "dense/miss/prefill=append_creates_B_contexts", sd + 21);
        set_dense(&c, 3, 2, 3);
        c.ctx = CTX_MISS;
        c.prefill = PF_APPEND;
        add_attn(c);
        {
            static const int lq[3] = {3, 1, 2}, lk[3] = {4, 0, 6};
            c = base(k, dt, "packed/per_batch_ctx=[1,3,2]/prefill=replace", sd + 22);
            set_packed(&c, 3, lq, lk);
            c.ctx = CTX_PER_BATCH;
            c.clen[0] = 1;
            c.clen[1] = 3;
            c.clen[2] = 2;
            c.prefill = PF_REPLACE;
            add_attn(c);
        }
        /* several query and key tiles: long context plus new keys */
        {
            static const int lq[2] = {80, 17}, lk[2] = {70, 33};
            c = base(k, dt, "packed/tiles/lq=[80,17],lk=[70,33]/ctx=[150,0]/Hq=8,Hk=2,D=64", sd + 23);
            set_packed(&c, 2, lq, lk);
            c.s.Hq = 8;
            c.s.D = c.s.Dv = 64;
            c.ctx = CTX_PER_BATCH;
            c.clen[0] = 150;
            add_attn(c);
        }
    }

    /* thread counts give identical bytes */
    {
        static const int lq[3] = {130, 1, 64}, lk[3] = {40, 90, 64};
        struct ccfg c = base(k, CFLASH_DTYPE_BF16, "", 0x7ead);
        set_packed(&c, 3, lq, lk);
        c.s.Hq = 8;
        c.s.Hk = 2;
        c.s.D = c.s.Dv = 64;
        c.s.sinks = 1;
        c.ctx = CTX_SHARED;
        c.clen[0] = 200;
        char name[256];
        snprintf(name, sizeof name, "context/threads/%s/bf16/packed/lq=[130,1,64]/shared_ctx=[200]",
                 kname(k));
        tcase_add(name, threads_case, &c, sizeof c);
        c = base(k, CFLASH_DTYPE_F32, "", 0x7eae);
        static const int L975[3] = {9, 7, 5};
        set_packed(&c, 3, L975, NULL);
        c.s.cumulative = 1;
        c.s.softcap = 4;
        c.ctx = CTX_PER_BATCH;
        c.clen[0] = 120;
        c.clen[1] = 3;
        c.clen[2] = 70;
        snprintf(name, sizeof name, "context/threads/%s/f32/packed/cumulative/ctx=[120,3,70]", kname(k));
        tcase_add(name, threads_case, &c, sizeof c);
    }

    /* call sequences */
    for (int w = 0; w < SEQ_COUNT; w++)
        for (int di = 0; di < 3; di++) {
            if (w >= SEQ_STORE_LAYERS_CLEAR && di == 1)
                continue;
            struct seq_arg a = {k, dtypes[di], w};
            char name[256];
            snprintf(name, sizeof name, "context/seq/%s/%s/%s", kname(k), dtype_name(dtypes[di]),
                     seq_names[w]);
            tcase_add(name, seq_case, &a, sizeof a);
        }
}

/* A store or prefill of zero sequences would install an entry no call could use: refused,
 * and an existing entry is left as it was. */
static void zero_sequences_case(const void *arg)
{
    (void)arg;
    cflash_context_cache_t cache = NULL;
    CHECK_STATUS(cflash_context_cache_create(&cache), CFLASH_STATUS_OK);
    uint16_t kd[2 * 8] = {0};
    int64_t sh1[4] = {1, 2, 1, 8}, sh0[4] = {0, 2, 1, 8}, shq[4] = {0, 1, 1, 8};
    struct cflash_tensor k1 = tdesc(kd, CFLASH_DTYPE_F16, 4, sh1), k0 = tdesc(kd, CFLASH_DTYPE_F16, 4, sh0);
    struct cflash_tensor q0 = tdesc(kd, CFLASH_DTYPE_F16, 4, shq);
    enum cflash_status st = cflash_context_cache_store(cache, 3, &k1, &k1, NULL, CFLASH_PREFILL_REPLACE);
    if (st == CFLASH_STATUS_OK)
        st = cflash_context_cache_store(cache, 3, &k0, &k0, NULL, CFLASH_PREFILL_REPLACE);
    char msg[256];
    snprintf(msg, sizeof msg, "%s", cflash_last_error()); /* the next call overwrites it */
    struct cflash_context_info info;
    enum cflash_status st_info = cflash_context_cache_info(cache, 3, &info);
    struct cflash_mlm_args m = {.cache = cache, .layer_id = 3, .prefill = 1, .prefill_mode = CFLASH_PREFILL_REPLACE};
    enum cflash_status st_mlm = cflash_attn_mlm(&q0, &k0, &k0, NULL, NULL, &m, &q0, NULL, NULL);
    cflash_context_cache_destroy(cache);
    CHECK(st == CFLASH_STATUS_INVALID_ARGUMENT && strncmp(msg, "k:", 2) == 0, "store of 0 sequences: %s (%s)",
          cflash_status_string(st), msg);
    CHECK(st_info == CFLASH_STATUS_OK && info.num_contexts == 1, "the layer-3 entry changed: %s, %lld contexts",
          cflash_status_string(st_info), (long long)info.num_contexts);
    CHECK(st_mlm == CFLASH_STATUS_INVALID_ARGUMENT, "prefill of 0 sequences: %s", cflash_status_string(st_mlm));
}

void register_context_tests(void)
{
    tcase_add("context/misuse/zero_sequences", zero_sequences_case, NULL, 0);
    for (int ki = 0; ki < N_ALL_KERNELS; ki++)
        register_kernel(all_kernels[ki]);
    char name[256];
    tcase_add("context/api/fresh_cache_info_clear_destroy", api_case, NULL, 0);
    static const int dense[2] = {0, 1};
    for (int d = 0; d < 2; d++) {
        snprintf(name, sizeof name, "context/misuse/%s/baseline_ok", d ? "dense" : "packed");
        tcase_add(name, misuse_baseline, &dense[d], sizeof dense[d]);
    }
    for (int i = 0; i < N_CTX_MISUSE; i++) {
        enum ctx_misuse_id id = (enum ctx_misuse_id)i;
        snprintf(name, sizeof name, "context/misuse/%s", cm_info[i].desc);
        tcase_add(name, misuse_case, &id, sizeof id);
    }
}
