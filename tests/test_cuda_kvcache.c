/*
 * test_cuda_kvcache.c - cflash_attn_kvcache on CUDA tensors: the decode kernel (Lq <= 8) and
 * chunked prefill over contiguous caches (Lq > 8, the prefill kernel), and the CUDA merge:
 *
 *   cuda/kvcache/...        every host allocation of a KV-cache problem (q, the caches with NaN
 *                           bytes past each sequence, k_new / v_new, cache_seqlens,
 *                           cache_batch_idx, block_table with out-of-range unused entries, ALiBi
 *                           slopes, sinks, poisoned out / lse, padding included) is mirrored to
 *                           the device, the call runs there, and everything comes back whole:
 *                           out / lse against the CPU reference kernel (the same call on the host
 *                           copies) under the SPEC.md section 1 rule, with e_naive from the
 *                           test's naive same-precision oracle over the logical keys; the caches
 *                           byte for byte (the snapshot plus the appended rows, nothing else);
 *                           every other input unchanged; no byte of out / lse outside the views.
 *   cuda/merge/...          cflash_merge on the GPU against the fp64 formula (-inf rules, both
 *                           ranks, every dtype, fp32 out, in place, lse_out NULL, strided).
 *   cuda/kvcache/misuse/..., cuda/merge/misuse/...
 *                           routing that needs no device: fake device pointers (nothing may be
 *                           read on the host or launched), each case its exact status and a
 *                           message naming the argument; without a device a valid call is
 *                           DEVICE_ERROR (skipped where a device is present).
 *
 * GPU cases skip without CUDA in the build or without a device. CFLASH_TEST_CUDA_ON_CPU=1 runs
 * them on host tensors through the CPU backend instead (no mirror): a check of these checks on
 * machines without a GPU. CFLASH_DECODE_SPLITS (cuda/cuda.h) is set around the calls of cases
 * named splits=N and restored after.
 */
#define _GNU_SOURCE
#include "attn_common.h"

#include <stdlib.h>
#include <string.h>
#ifdef CFLASH_HAVE_CUDA
#include <cuda_runtime_api.h>

/* A device is visible (without recording a skip). */
static int device_present(void)
{
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}
#endif

/* tests/cuda_mirror.c */
int cuda_mirror_tbuf(const struct tbuf *b, struct cflash_tensor *t, void **dev);
int cuda_fetch_tbuf(const struct tbuf *b, const struct cflash_tensor *t);
void cuda_mirror_free(void *dev);
int cuda_sync_ok(void);

#define GMAXB 32
#define POISON 0xff /* NaN in every float dtype */

enum { VM_SEP = 0, VM_NULL = 1, VM_VIEW = 2 };

static int on_cpu_mode(void)
{
    const char *e = getenv("CFLASH_TEST_CUDA_ON_CPU");
    return e && strcmp(e, "1") == 0;
}

/* 1 when the GPU cases can run (a device, or the on-CPU self-check); else a skip. */
static int gpu_or_self_check(void)
{
    return on_cpu_mode() || cuda_require_device();
}

/* ---- KV-cache configurations ------------------------------------------------------------ */

struct gkv_cfg {
    enum cflash_dtype dtype;
    int out_f32;
    int B, Hq, Hk, D, Dv, vmode;
    int Lq, Lnew;
    int seq[GMAXB];  /* cache_seqlens */
    int page;        /* 0: contiguous; else the page size */
    int bidx;        /* contiguous: rows through cache_batch_idx (shuffled, with spare rows) */
    int at_cap;      /* the longest sequence ends exactly at the capacity */
    int causal, align;
    int64_t wl, wr;
    int alibi;       /* 0 none, 1 [Hq], 2 [B, Hq] */
    float softcap, scale;
    int sinks, lse_null;
    int strided;     /* bhsd caches and q with padded (aligned) strides, padded out / lse /
                      * tables, k_new with odd strides, v_new with a negative sequence stride */
    int splits;      /* CFLASH_DECODE_SPLITS for the call; 0: the heuristic */
};

#define APPEND(...)                                                        \
    do {                                                                   \
        size_t len_ = strlen(buf);                                         \
        if (len_ < n)                                                      \
            snprintf(buf + len_, n - len_, __VA_ARGS__);                   \
    } while (0)

static void gkv_name(char *buf, size_t n, const struct gkv_cfg *c)
{
    buf[0] = 0;
    APPEND("cuda/kvcache/%s/D=%d", dtype_name(c->dtype), c->D);
    if (c->vmode == VM_NULL)
        APPEND(",v=null");
    else if (c->vmode == VM_VIEW)
        APPEND(",Dv=%d,v=kview", c->Dv);
    else if (c->Dv != c->D)
        APPEND(",Dv=%d", c->Dv);
    APPEND("/Hq=%d,Hk=%d/B=%d,Lq=%d,new=%d,", c->Hq, c->Hk, c->B, c->Lq, c->Lnew);
    if (c->B <= 6) {
        APPEND("seq=[");
        for (int b = 0; b < c->B; b++)
            APPEND("%s%d", b ? "," : "", c->seq[b]);
        APPEND("]");
    } else {
        int mx = 0;
        for (int b = 0; b < c->B; b++)
            mx = c->seq[b] > mx ? c->seq[b] : mx;
        APPEND("seq<=%d", mx);
    }
    if (c->page)
        APPEND("/paged=%d", c->page);
    else
        APPEND("/contig%s", c->bidx ? ",bidx" : "");
    if (c->at_cap)
        APPEND(",atcap");
    if (c->causal)
        APPEND("/causal=%s", c->align == CFLASH_ALIGN_TOP_LEFT ? "tl" : "br");
    if (c->wl != -1 || c->wr != -1)
        APPEND("/window=(%lld,%lld)", (long long)c->wl, (long long)c->wr);
    if (c->alibi)
        APPEND("/alibi%s", c->alibi == 2 ? "=[B,Hq]" : "");
    if (c->softcap > 0)
        APPEND("/softcap=%g", c->softcap);
    if (c->sinks)
        APPEND("/sinks");
    if (c->scale != 0)
        APPEND("/scale=%g", c->scale);
    if (c->lse_null)
        APPEND("/lse=null");
    if (c->out_f32)
        APPEND("/out=f32");
    if (c->strided)
        APPEND("/strided");
    if (c->splits)
        APPEND("/splits=%d", c->splits);
}

/* ---- one problem ------------------------------------------------------------------------- */

enum { T_Q, T_KC, T_VC, T_KN, T_VN, T_SEQ, T_BIDX, T_BT, T_ALIBI, T_SINKS, T_OUT, T_LSE, NT };

struct gkv {
    struct gkv_cfg c;
    int64_t B, Lq, Lnew, Hq, Hk, D, Dv;
    int64_t seq[GMAXB], tot[GMAXB], koff[GMAXB + 1], qoff[GMAXB + 1];
    int64_t nrows, L1, maxp;
    int32_t bidxh[GMAXB];
    int32_t *bth; /* [B][maxp] */
    struct tbuf tb[NT];
    struct cflash_attn_params params;
};

static unsigned char *elem(const struct cflash_tensor *t, const int64_t *idx)
{
    return (unsigned char *)t->data + toffset(t, idx) * (int64_t)dtype_size(t->dtype);
}

/* cache row / page and position of logical key t of batch entry b */
static void gkv_loc(const struct gkv *s, int64_t b, int64_t t, int64_t *r, int64_t *pos)
{
    if (s->c.page) {
        *r = s->bth[b * s->maxp + t / s->L1];
        *pos = t % s->L1;
    } else {
        *r = s->c.bidx ? s->bidxh[b] : b;
        *pos = t;
    }
}

static void fill_bytes(struct tbuf *t, struct rng *r)
{
    for (size_t i = 0; i < t->bytes; i++)
        t->base[i] = (unsigned char)rng_next(r);
}

static void shuffle(int32_t *a, int64_t n, struct rng *r)
{
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = rng_int(r, i + 1);
        int32_t x = a[i];
        a[i] = a[j];
        a[j] = x;
    }
}

/* Every stride a multiple of 8 elements (the GPU copies 16-byte chunks): storage order `order`
 * (NULL: row-major), `pad` elements (a multiple of 8, or any even number for outputs) after
 * each storage axis but the innermost. */
static void make_padded(struct tbuf *b, enum cflash_dtype dt, int ndim, const int64_t *shape,
                        const int *order, int64_t pad)
{
    int64_t stride[CFLASH_MAX_DIMS], s = 1;
    for (int k = ndim - 1; k >= 0; k--) {
        const int ax = order ? order[k] : k;
        stride[ax] = s;
        s = s * (shape[ax] > 0 ? shape[ax] : 1) + pad;
    }
    tbuf_make_strided(b, dt, ndim, shape, stride);
}

static void set_nan_row(const struct cflash_tensor *t, int64_t r, int64_t pos, int64_t Hk,
                        int64_t width)
{
    const size_t es = dtype_size(t->dtype);
    for (int64_t h = 0; h < Hk; h++)
        for (int64_t d = 0; d < width; d++) {
            int64_t idx[4] = {r, pos, h, d};
            memset(elem(t, idx), POISON, es);
        }
}

static void gkv_setup(struct gkv *s, const struct gkv_cfg *cin)
{
    memset(s, 0, sizeof *s);
    s->c = *cin;
    struct gkv_cfg *c = &s->c;
    if (c->vmode == VM_NULL)
        c->Dv = c->D;
    /* at_cap on a paged cache: the longest sequence is stretched to fill its last page */
    if (c->at_cap && c->page) {
        int am = 0;
        for (int b = 1; b < c->B; b++)
            if (c->seq[b] > c->seq[am])
                am = b;
        const int mp = (c->seq[am] + c->Lnew + c->page - 1) / c->page;
        c->seq[am] = (mp < 1 ? 1 : mp) * c->page - c->Lnew;
    }
    char name[512];
    gkv_name(name, sizeof name, c);
    struct rng r = {hash_str(name) ^ 0x6375646b76ull};
    s->B = c->B;
    s->Lq = c->Lq;
    s->Lnew = c->Lnew;
    s->Hq = c->Hq;
    s->Hk = c->Hk;
    s->D = c->D;
    s->Dv = c->Dv;
    int64_t maxtot = 0;
    for (int b = 0; b < c->B; b++) {
        s->seq[b] = c->seq[b];
        s->tot[b] = c->seq[b] + c->Lnew;
        s->koff[b + 1] = s->koff[b] + s->tot[b];
        s->qoff[b + 1] = s->qoff[b] + c->Lq;
        maxtot = s->tot[b] > maxtot ? s->tot[b] : maxtot;
    }
    const enum cflash_dtype dt = c->dtype;
    static const int bhsd[4] = {0, 2, 1, 3};
    const int64_t pad8 = c->strided ? 8 : 0;

    /* tables */
    int64_t needp[GMAXB] = {0}, npages = 0;
    if (c->page) {
        s->L1 = c->page;
        for (int b = 0; b < c->B; b++) {
            needp[b] = (s->tot[b] + s->L1 - 1) / s->L1;
            npages += needp[b];
            s->maxp = needp[b] > s->maxp ? needp[b] : s->maxp;
        }
        if (!c->at_cap || s->maxp == 0)
            s->maxp++;
        s->nrows = npages + 2; /* two spare pages nobody references */
        int32_t *perm = malloc(sizeof *perm * (size_t)s->nrows);
        for (int64_t i = 0; i < s->nrows; i++)
            perm[i] = (int32_t)i;
        shuffle(perm, s->nrows, &r);
        s->bth = malloc(sizeof *s->bth * (size_t)(c->B * s->maxp + 1));
        int64_t next = 0;
        for (int64_t b = 0; b < c->B; b++)
            for (int64_t p = 0; p < s->maxp; p++)
                s->bth[b * s->maxp + p] = p < needp[b] ? perm[next++]
                                                       : (((b + p) & 1) ? -1 : (int32_t)s->nrows);
        free(perm);
        int64_t bs[2] = {c->B, s->maxp};
        tbuf_make(&s->tb[T_BT], CFLASH_DTYPE_I32, 2, bs, NULL, c->strided ? 1 : 0, -1);
        fill_bytes(&s->tb[T_BT], &r);
        for (int64_t b = 0; b < c->B; b++)
            for (int64_t p = 0; p < s->maxp; p++) {
                int64_t idx[2] = {b, p};
                tset(&s->tb[T_BT].t, idx, s->bth[b * s->maxp + p]);
            }
    } else {
        s->nrows = c->bidx ? c->B + 2 : c->B;
        s->L1 = c->at_cap ? maxtot : maxtot + 3;
        if (c->bidx) {
            int32_t rows[GMAXB + 2];
            for (int64_t i = 0; i < s->nrows; i++)
                rows[i] = (int32_t)i;
            shuffle(rows, s->nrows, &r);
            for (int b = 0; b < c->B; b++)
                s->bidxh[b] = rows[b];
            int64_t bs[1] = {c->B}, bst[1] = {c->strided ? 3 : 1};
            tbuf_make_strided(&s->tb[T_BIDX], CFLASH_DTYPE_I32, 1, bs, bst);
            fill_bytes(&s->tb[T_BIDX], &r);
            for (int64_t b = 0; b < c->B; b++)
                tset(&s->tb[T_BIDX].t, &b, s->bidxh[b]);
        }
    }
    {
        int64_t bs[1] = {c->B}, bst[1] = {c->strided ? 2 : 1};
        tbuf_make_strided(&s->tb[T_SEQ], CFLASH_DTYPE_I32, 1, bs, bst);
        fill_bytes(&s->tb[T_SEQ], &r);
        for (int64_t b = 0; b < c->B; b++)
            tset(&s->tb[T_SEQ].t, &b, (double)s->seq[b]);
    }

    /* caches: random, then NaN at every position past a sequence's keys */
    int64_t ks[4] = {s->nrows, s->L1, s->Hk, s->D}, vs[4] = {s->nrows, s->L1, s->Hk, s->Dv};
    make_padded(&s->tb[T_KC], dt, 4, ks, c->strided ? bhsd : NULL, pad8);
    fill_bytes(&s->tb[T_KC], &r);
    tfill_randn(&s->tb[T_KC].t, &r, 0, 1);
    if (c->vmode == VM_SEP) {
        make_padded(&s->tb[T_VC], dt, 4, vs, c->strided ? bhsd : NULL, pad8);
        fill_bytes(&s->tb[T_VC], &r);
        tfill_randn(&s->tb[T_VC].t, &r, 0, 1);
    }
    if (c->page) {
        for (int64_t b = 0; b < c->B; b++)
            for (int64_t p = 0; p < needp[b]; p++)
                for (int64_t pos = 0; pos < s->L1; pos++)
                    if (p * s->L1 + pos >= s->seq[b]) {
                        const int64_t pg = s->bth[b * s->maxp + p];
                        set_nan_row(&s->tb[T_KC].t, pg, pos, s->Hk, s->D);
                        if (c->vmode == VM_SEP)
                            set_nan_row(&s->tb[T_VC].t, pg, pos, s->Hk, s->Dv);
                    }
    } else {
        for (int64_t b = 0; b < c->B; b++) {
            const int64_t row = c->bidx ? s->bidxh[b] : b;
            for (int64_t pos = s->seq[b]; pos < s->L1; pos++) {
                set_nan_row(&s->tb[T_KC].t, row, pos, s->Hk, s->D);
                if (c->vmode == VM_SEP)
                    set_nan_row(&s->tb[T_VC].t, row, pos, s->Hk, s->Dv);
            }
        }
    }

    /* q and the new rows (k_new / v_new take any strides: the append copies elements) */
    int64_t qs[4] = {c->B, c->Lq, s->Hq, s->D};
    make_padded(&s->tb[T_Q], dt, 4, qs, NULL, pad8);
    fill_bytes(&s->tb[T_Q], &r);
    tfill_randn(&s->tb[T_Q].t, &r, 0, 1);
    if (c->Lnew > 0) {
        int64_t kns[4] = {c->B, c->Lnew, s->Hk, s->D}, vns[4] = {c->B, c->Lnew, s->Hk, s->Dv};
        tbuf_make(&s->tb[T_KN], dt, 4, kns, c->strided ? bhsd : NULL, c->strided ? 3 : 0, -1);
        fill_bytes(&s->tb[T_KN], &r);
        tfill_randn(&s->tb[T_KN].t, &r, 0, 1);
        if (c->vmode == VM_SEP) {
            tbuf_make(&s->tb[T_VN], dt, 4, vns, NULL, c->strided ? 5 : 0, c->strided ? 1 : -1);
            fill_bytes(&s->tb[T_VN], &r);
            tfill_randn(&s->tb[T_VN].t, &r, 0, 1);
        }
    }

    s->params = cflash_attn_params_default();
    s->params.scale = c->scale;
    s->params.softcap = c->softcap;
    s->params.causal = c->causal;
    s->params.align = (enum cflash_align)c->align;
    s->params.window_left = c->wl;
    s->params.window_right = c->wr;
    if (c->alibi) {
        int64_t sh[2] = {c->B, s->Hq};
        tbuf_make(&s->tb[T_ALIBI], CFLASH_DTYPE_F32, c->alibi, c->alibi == 2 ? sh : sh + 1, NULL, 0, -1);
        float *a = s->tb[T_ALIBI].t.data;
        for (int64_t i = 0; i < tnumel(&s->tb[T_ALIBI].t); i++)
            a[i] = (float)(0.05 + 0.5 * rng_uniform(&r));
    }
    if (c->sinks) {
        int64_t sh[1] = {s->Hq};
        tbuf_make(&s->tb[T_SINKS], CFLASH_DTYPE_F32, 1, sh, NULL, 0, -1);
        tfill_randn(&s->tb[T_SINKS].t, &r, 1, 1);
    }
}

static void gkv_free(struct gkv *s)
{
    for (int i = 0; i < NT; i++)
        tbuf_free(&s->tb[i]);
    free(s->bth);
    s->bth = NULL;
}

/* out [B, Lq, Hq, Dv] (padded: even strides, as the GPU stores pairs) and lse [B, Hq, Lq] */
static void gkv_make_out(const struct gkv *s, struct tbuf *out, struct tbuf *lse,
                         enum cflash_dtype odt, int strided)
{
    int64_t os[4] = {s->B, s->Lq, s->Hq, s->Dv}, ls[3] = {s->B, s->Hq, s->Lq};
    make_padded(out, odt, 4, os, NULL, strided ? 2 : 0);
    make_padded(lse, CFLASH_DTYPE_F32, 3, ls, NULL, strided ? 1 : 0);
}

/* The call on tensors `t` (host, or device mirrors), with views of the caches / new rows made
 * from them the way the setup made them from the host buffers. */
static enum cflash_status gkv_call(const struct gkv *s, struct cflash_tensor *t, int with_lse,
                                   enum cflash_kernel kernel)
{
    const struct gkv_cfg *c = &s->c;
    struct cflash_tensor vcv, vnv;
    const struct cflash_tensor *vcp = NULL, *knp = NULL, *vnp = NULL;
    if (c->vmode == VM_SEP) {
        vcp = &t[T_VC];
    } else if (c->vmode == VM_VIEW) {
        vcv = t[T_KC];
        vcv.shape[3] = s->Dv;
        vcp = &vcv;
    }
    if (c->Lnew > 0) {
        knp = &t[T_KN];
        if (c->vmode == VM_SEP) {
            vnp = &t[T_VN];
        } else if (c->vmode == VM_VIEW) {
            vnv = t[T_KN];
            vnv.shape[3] = s->Dv;
            vnp = &vnv;
        }
    }
    struct cflash_kvcache cache;
    memset(&cache, 0, sizeof cache);
    cache.k_cache = &t[T_KC];
    cache.v_cache = vcp;
    cache.cache_seqlens = &t[T_SEQ];
    cache.cache_batch_idx = c->bidx ? &t[T_BIDX] : NULL;
    cache.block_table = c->page ? &t[T_BT] : NULL;
    struct cflash_attn_params p = s->params;
    p.kernel = kernel;
    if (c->alibi)
        p.alibi_slopes = &t[T_ALIBI];
    if (c->sinks)
        p.sinks = &t[T_SINKS];
    return cflash_attn_kvcache(&t[T_Q], &cache, knp, vnp, &t[T_OUT], with_lse ? &t[T_LSE] : NULL, &p);
}

/* Sets CFLASH_DECODE_SPLITS to n (0: unset) and returns the previous value to restore. */
static char *splits_env_set(int n)
{
    const char *old = getenv("CFLASH_DECODE_SPLITS");
    char *saved = old ? strdup(old) : NULL;
    if (n > 0) {
        char v[16];
        snprintf(v, sizeof v, "%d", n);
        setenv("CFLASH_DECODE_SPLITS", v, 1);
    } else {
        unsetenv("CFLASH_DECODE_SPLITS");
    }
    return saved;
}

static void splits_env_restore(char *saved)
{
    if (saved)
        setenv("CFLASH_DECODE_SPLITS", saved, 1);
    else
        unsetenv("CFLASH_DECODE_SPLITS");
    free(saved);
}

/* The call under test: on the GPU (every allocation mirrored, everything fetched back into the
 * host buffers), or in the self-check mode on the host tensors with the AUTO CPU kernel. */
static enum cflash_status gkv_run(struct gkv *s, char *msg, size_t n)
{
    const int cpu = on_cpu_mode();
    struct cflash_tensor t[NT];
    void *dev[NT] = {0};
    int ok = 1;
    for (int i = 0; i < NT; i++) {
        t[i] = s->tb[i].t;
        if (cpu || (i == T_LSE && s->c.lse_null))
            continue;
        if (!cuda_mirror_tbuf(&s->tb[i], &t[i], &dev[i])) {
            snprintf(msg, n, "mirroring tensor %d to the device failed", i);
            ok = 0;
            break;
        }
        t[i].device = CFLASH_DEVICE_CUDA; /* empty tensors (no allocation) too */
        t[i].device_id = 0;
    }
    enum cflash_status st = CFLASH_STATUS_DEVICE_ERROR;
    if (ok) {
        char *saved = splits_env_set(s->c.splits);
        st = gkv_call(s, t, !s->c.lse_null, CFLASH_KERNEL_AUTO);
        splits_env_restore(saved);
        if (st != CFLASH_STATUS_OK)
            snprintf(msg, n, "the call returned %s (%s)", cflash_status_string(st), cflash_last_error());
        if (!cpu && st == CFLASH_STATUS_OK && !cuda_sync_ok()) {
            st = CFLASH_STATUS_DEVICE_ERROR;
            snprintf(msg, n, "the device reported an error after the call");
        }
        for (int i = 0; !cpu && i < NT; i++)
            if (dev[i] && !cuda_fetch_tbuf(&s->tb[i], &t[i])) {
                st = CFLASH_STATUS_DEVICE_ERROR;
                snprintf(msg, n, "copying tensor %d back from the device failed", i);
            }
    }
    for (int i = 0; i < NT; i++)
        cuda_mirror_free(dev[i]);
    return st;
}

/* ---- the check ----------------------------------------------------------------------------- */

struct snap {
    unsigned char *p;
    size_t n;
};

static void snap_take(struct snap *sn, const struct tbuf *t)
{
    sn->n = t->bytes;
    sn->p = malloc(t->bytes ? t->bytes : 1);
    if (t->bytes)
        memcpy(sn->p, t->base, t->bytes);
}

static void snap_restore(const struct snap *sn, struct tbuf *t)
{
    if (sn->n)
        memcpy(t->base, sn->p, sn->n);
}

/* First differing byte of t against want (or -1). */
static int64_t first_diff(const struct tbuf *t, const unsigned char *want)
{
    for (size_t i = 0; i < t->bytes; i++)
        if (t->base[i] != want[i])
            return (int64_t)i;
    return -1;
}

struct gctx {
    struct gkv s;
    struct snap sn[NT];
    unsigned char *kc_want, *vc_want;
    double *K, *V, *Q, *alibi, *sinks;
    double *nv_o, *rf_o, *rf_l, *got_o, *got_l;
    struct tbuf oref, lref;
};

static void gctx_free(struct gctx *x)
{
    gkv_free(&x->s);
    for (int i = 0; i < NT; i++)
        free(x->sn[i].p);
    free(x->kc_want);
    free(x->vc_want);
    free(x->K);
    free(x->V);
    free(x->Q);
    free(x->alibi);
    free(x->sinks);
    free(x->nv_o);
    free(x->rf_o);
    free(x->rf_l);
    free(x->got_o);
    free(x->got_l);
    tbuf_free(&x->oref);
    tbuf_free(&x->lref);
    free(x);
}

/* Expected cache bytes: the snapshot plus k_new / v_new at positions seq[b] .. + Lnew - 1 (a
 * v_new view of k_new lands on the bytes k_new already put there). */
static void expected_cache(struct gctx *x)
{
    struct gkv *s = &x->s;
    const size_t es = dtype_size(s->c.dtype);
    const struct tbuf *kc = &s->tb[T_KC], *vc = &s->tb[T_VC];
    x->kc_want = malloc(kc->bytes ? kc->bytes : 1);
    memcpy(x->kc_want, x->sn[T_KC].p, kc->bytes);
    x->vc_want = malloc(vc->bytes ? vc->bytes : 1);
    if (vc->bytes)
        memcpy(x->vc_want, x->sn[T_VC].p, vc->bytes);
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t t = 0; t < s->Lnew; t++) {
            int64_t row, pos;
            gkv_loc(s, b, s->seq[b] + t, &row, &pos);
            for (int64_t h = 0; h < s->Hk; h++) {
                int64_t ci[4] = {row, pos, h, 0};
                for (int64_t d = 0; d < s->D; d++) {
                    int64_t ni[4] = {b, t, h, d};
                    ci[3] = d;
                    memcpy(x->kc_want + (elem(&kc->t, ci) - kc->base), elem(&s->tb[T_KN].t, ni), es);
                }
                for (int64_t d = 0; s->c.vmode == VM_SEP && d < s->Dv; d++) {
                    int64_t ni[4] = {b, t, h, d};
                    ci[3] = d;
                    memcpy(x->vc_want + (elem(&vc->t, ci) - vc->base), elem(&s->tb[T_VN].t, ni), es);
                }
            }
        }
}

/* The logical key sequences [Ktot][Hk][D|Dv] and queries, read with the test's own addressing. */
static void build_logical(struct gctx *x)
{
    struct gkv *s = &x->s;
    const int64_t Ktot = s->koff[s->B], Hk = s->Hk, D = s->D, Dv = s->Dv;
    x->K = malloc(sizeof(double) * (size_t)(Ktot * Hk * D + 1));
    x->V = malloc(sizeof(double) * (size_t)(Ktot * Hk * Dv + 1));
    const struct cflash_tensor *kc = &s->tb[T_KC].t, *kn = &s->tb[T_KN].t;
    const struct cflash_tensor *vc = s->c.vmode == VM_SEP ? &s->tb[T_VC].t : kc;
    const struct cflash_tensor *vn = s->c.vmode == VM_SEP ? &s->tb[T_VN].t : kn;
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t t = 0; t < s->tot[b]; t++)
            for (int64_t h = 0; h < Hk; h++) {
                const int64_t row = (s->koff[b] + t) * Hk + h;
                int64_t idx[4];
                const struct cflash_tensor *kt = kc, *vt = vc;
                if (t < s->seq[b]) {
                    gkv_loc(s, b, t, &idx[0], &idx[1]);
                } else {
                    idx[0] = b;
                    idx[1] = t - s->seq[b];
                    kt = kn;
                    vt = vn;
                }
                idx[2] = h;
                for (int64_t d = 0; d < D; d++) {
                    idx[3] = d;
                    x->K[row * D + d] = tget(kt, idx);
                }
                for (int64_t d = 0; d < Dv; d++) {
                    idx[3] = d;
                    x->V[row * Dv + d] = tget(vt, idx);
                }
            }
    x->Q = tload(&s->tb[T_Q].t);
}

static void load_result(const struct gkv *s, const struct cflash_tensor *out,
                        const struct cflash_tensor *lse, double *o, double *l)
{
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t i = 0; i < s->Lq; i++)
            for (int64_t h = 0; h < s->Hq; h++) {
                const int64_t t = b * s->Lq + i;
                for (int64_t d = 0; d < s->Dv; d++) {
                    int64_t idx[4] = {b, i, h, d};
                    o[(t * s->Hq + h) * s->Dv + d] = tget(out, idx);
                }
                if (lse) {
                    int64_t idx[3] = {b, h, i};
                    l[t * s->Hq + h] = tget(lse, idx);
                }
            }
}

static int64_t visible_count(const struct gkv *s, int64_t b, int64_t i)
{
    int64_t n = 0;
    for (int64_t j = 0; j < s->tot[b]; j++)
        n += oracle_visible(i, j, s->Lq, s->tot[b], s->c.causal, s->c.align, s->c.wl, s->c.wr);
    return n;
}

/* The GPU result against the reference kernel's: finite, empty rows exact (0, lse -inf or the
 * sink), SPEC 1 (half: max abs <= 2 e_naive + 1e-3; lse 1e-3). */
static void compare(struct gctx *x, const double *got_l, double e_naive)
{
    struct gkv *s = &x->s;
    double maxabs = 0;
    int64_t wi = 0;
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t i = 0; i < s->Lq; i++) {
            const int64_t t = b * s->Lq + i, nvis = visible_count(s, b, i);
            for (int64_t h = 0; h < s->Hq; h++) {
                for (int64_t d = 0; d < s->Dv; d++) {
                    const int64_t k = (t * s->Hq + h) * s->Dv + d;
                    const double v = x->got_o[k];
                    CHECK(isfinite(v), "out[b=%lld,i=%lld,h=%lld,d=%lld] = %g is not finite",
                          (long long)b, (long long)i, (long long)h, (long long)d, v);
                    if (nvis == 0)
                        CHECK(v == 0, "empty row b=%lld i=%lld h=%lld: out[d=%lld] = %g, want 0",
                              (long long)b, (long long)i, (long long)h, (long long)d, v);
                    const double e = fabs(v - x->rf_o[k]);
                    if (e > maxabs) {
                        maxabs = e;
                        wi = k;
                    }
                }
                if (!got_l)
                    continue;
                const double a = got_l[t * s->Hq + h], rl = x->rf_l[t * s->Hq + h];
                if (nvis == 0) {
                    const double want = s->c.sinks ? x->sinks[h] : -INFINITY;
                    const int okl = s->c.sinks ? fabs(a - want) <= 1e-6 * (1 + fabs(want)) : a == want;
                    CHECK(okl, "empty row b=%lld i=%lld h=%lld: lse = %.9g, want %.9g", (long long)b,
                          (long long)i, (long long)h, a, want);
                    continue;
                }
                const double tol = 1e-3 + 1e-6 * fabs(rl);
                CHECK(isfinite(a) && fabs(a - rl) <= tol,
                      "lse[b=%lld,h=%lld,i=%lld] = %.9g, reference %.9g (tol %g)", (long long)b,
                      (long long)h, (long long)i, a, rl, tol);
            }
        }
    const double tol = 2 * e_naive + 1e-3;
    const int64_t wt = wi / (s->Hq * s->Dv), wh = wi / s->Dv % s->Hq, wd = wi % s->Dv;
    CHECK(maxabs <= tol,
          "max abs error %.3g at b=%lld,i=%lld,h=%lld,d=%lld (got %.6g, reference %.6g) > "
          "2*e_naive+1e-3 = %.3g",
          maxabs, (long long)(wt / s->Lq), (long long)(wt % s->Lq), (long long)wh, (long long)wd,
          x->got_o[wi], x->rf_o[wi], tol);
}

static void gkv_check_inner(struct gctx *x)
{
    struct gkv *s = &x->s;
    const struct gkv_cfg *c = &s->c;
    const int64_t Tq = s->B * s->Lq, no = Tq * s->Hq * s->Dv + 1, nl = Tq * s->Hq + 1;
    for (int i = 0; i < NT; i++)
        snap_take(&x->sn[i], &s->tb[i]);
    expected_cache(x);
    build_logical(x);

    /* the naive same-precision oracle over the logical keys (for e_naive) */
    struct oracle_in in;
    memset(&in, 0, sizeof in);
    in.B = s->B;
    in.qoff = s->qoff;
    in.koff = s->koff;
    in.Hq = s->Hq;
    in.Hk = s->Hk;
    in.D = s->D;
    in.Dv = s->Dv;
    in.q = x->Q;
    in.k = x->K;
    in.v = x->V;
    in.scale = c->scale != 0 ? (double)c->scale : 1.0 / sqrt((double)s->D);
    in.softcap = c->softcap;
    in.causal = c->causal;
    in.align = c->align;
    in.wl = c->wl;
    in.wr = c->wr;
    if (c->alibi) {
        x->alibi = tload(&s->tb[T_ALIBI].t);
        in.alibi = x->alibi;
        in.alibi_per_batch = c->alibi == 2;
    }
    if (c->sinks) {
        x->sinks = tload(&s->tb[T_SINKS].t);
        in.sinks = x->sinks;
    }
    x->nv_o = malloc(sizeof(double) * (size_t)no);
    oracle_attn(&in, c->dtype, x->nv_o, NULL);

    /* the reference kernel: the same call on the host tensors (it appends on the host) */
    {
        int64_t os[4] = {s->B, s->Lq, s->Hq, s->Dv}, ls[3] = {s->B, s->Hq, s->Lq};
        tbuf_make(&x->oref, CFLASH_DTYPE_F32, 4, os, NULL, 0, -1);
        tbuf_make(&x->lref, CFLASH_DTYPE_F32, 3, ls, NULL, 0, -1);
        struct cflash_tensor t[NT];
        for (int i = 0; i < NT; i++)
            t[i] = s->tb[i].t;
        t[T_OUT] = x->oref.t;
        t[T_LSE] = x->lref.t;
        enum cflash_status st = gkv_call(s, t, 1, CFLASH_KERNEL_REFERENCE);
        CHECK(st == CFLASH_STATUS_OK, "reference call: %s (%s)", cflash_status_string(st), cflash_last_error());
        /* the test's expected cache agrees with the reference's append (a check of the test) */
        CHECK(first_diff(&s->tb[T_KC], x->kc_want) < 0, "test bug: expected k_cache differs from the reference append");
        CHECK(c->vmode != VM_SEP || first_diff(&s->tb[T_VC], x->vc_want) < 0,
              "test bug: expected v_cache differs from the reference append");
        snap_restore(&x->sn[T_KC], &s->tb[T_KC]);
        snap_restore(&x->sn[T_VC], &s->tb[T_VC]);
    }
    x->rf_o = malloc(sizeof(double) * (size_t)no);
    x->rf_l = malloc(sizeof(double) * (size_t)nl);
    load_result(s, &x->oref.t, &x->lref.t, x->rf_o, x->rf_l);
    double e_naive = 0;
    if (c->dtype != CFLASH_DTYPE_F32)
        for (int64_t k = 0; k < no - 1; k++) {
            const double e = fabs(x->nv_o[k] - x->rf_o[k]);
            e_naive = e > e_naive ? e : e_naive;
        }

    /* the call under test, on poisoned outputs */
    const enum cflash_dtype odt = c->out_f32 ? CFLASH_DTYPE_F32 : c->dtype;
    gkv_make_out(s, &s->tb[T_OUT], &s->tb[T_LSE], odt, c->strided);
    tbuf_poison(&s->tb[T_OUT], POISON);
    tbuf_poison(&s->tb[T_LSE], POISON);
    free(x->sn[T_LSE].p);
    snap_take(&x->sn[T_LSE], &s->tb[T_LSE]); /* lse=null: must come back untouched */
    char msg[512] = "";
    enum cflash_status st = gkv_run(s, msg, sizeof msg);
    CHECK(st == CFLASH_STATUS_OK, "%s", msg);

    /* the caches: exactly the appended rows changed; every other input unchanged */
    int64_t at = first_diff(&s->tb[T_KC], x->kc_want);
    CHECK(at < 0, "k_cache after the call differs from the snapshot plus the appended rows at byte %lld of %zu",
          (long long)at, s->tb[T_KC].bytes);
    at = c->vmode == VM_SEP ? first_diff(&s->tb[T_VC], x->vc_want) : -1;
    CHECK(at < 0, "v_cache after the call differs from the snapshot plus the appended rows at byte %lld of %zu",
          (long long)at, s->tb[T_VC].bytes);
    static const int inputs[8] = {T_Q, T_KN, T_VN, T_SEQ, T_BIDX, T_BT, T_ALIBI, T_SINKS};
    static const char *input_names[8] = {"q", "k_new", "v_new", "cache_seqlens", "cache_batch_idx",
                                         "block_table", "alibi_slopes", "sinks"};
    for (int i = 0; i < 8; i++)
        CHECK(first_diff(&s->tb[inputs[i]], x->sn[inputs[i]].p) < 0, "%s was modified by the call", input_names[i]);

    /* out / lse */
    int64_t gaps = tbuf_gap_changes(&s->tb[T_OUT], POISON);
    CHECK(gaps == 0, "%lld bytes of out outside the view were written", (long long)gaps);
    if (c->lse_null) {
        CHECK(first_diff(&s->tb[T_LSE], x->sn[T_LSE].p) < 0, "lse was written although NULL was passed");
    } else {
        gaps = tbuf_gap_changes(&s->tb[T_LSE], POISON);
        CHECK(gaps == 0, "%lld bytes of lse outside the view were written", (long long)gaps);
    }
    x->got_o = malloc(sizeof(double) * (size_t)no);
    x->got_l = malloc(sizeof(double) * (size_t)nl);
    load_result(s, &s->tb[T_OUT].t, c->lse_null ? NULL : &s->tb[T_LSE].t, x->got_o, x->got_l);
    compare(x, c->lse_null ? NULL : x->got_l, e_naive);
}

static void gkv_case(const void *arg)
{
    if (!gpu_or_self_check())
        return;
    struct gctx *x = calloc(1, sizeof *x);
    gkv_setup(&x->s, (const struct gkv_cfg *)arg);
    gkv_check_inner(x);
    gctx_free(x);
}

/* ---- registration of the GPU KV-cache cases ------------------------------------------------ */

static void add_gkv(struct gkv_cfg c)
{
    char name[512];
    if (c.vmode == VM_NULL)
        c.Dv = c.D;
    gkv_name(name, sizeof name, &c);
    tcase_add(name, gkv_case, &c, sizeof c);
}

static struct gkv_cfg gbase(enum cflash_dtype dt)
{
    struct gkv_cfg c;
    memset(&c, 0, sizeof c);
    c.dtype = dt;
    c.B = 3;
    c.Hq = 32;
    c.Hk = 8;
    c.D = c.Dv = 128;
    c.Lq = 1;
    c.Lnew = 1;
    c.seq[0] = 37;
    c.seq[1] = 0;
    c.seq[2] = 300;
    c.wl = c.wr = -1;
    c.align = CFLASH_ALIGN_BOTTOM_RIGHT;
    return c;
}

static void register_gkv_cases(void)
{
    static const enum cflash_dtype dts[2] = {CFLASH_DTYPE_F16, CFLASH_DTYPE_BF16};
    struct gkv_cfg c;

    /* layouts x (Lq, Lnew): contiguous, cache_batch_idx, pages of 1, 16, 256 */
    static const int lay[5][2] = {{0, 0}, {0, 1}, {1, 0}, {16, 0}, {256, 0}};
    static const int qn[3][2] = {{1, 0}, {1, 1}, {4, 3}};
    for (int t = 0; t < 2; t++)
        for (int l = 0; l < 5; l++)
            for (int k = 0; k < 3; k++) {
                c = gbase(dts[t]);
                c.page = lay[l][0];
                c.bidx = lay[l][1];
                c.Lq = qn[k][0];
                c.Lnew = qn[k][1];
                add_gkv(c);
            }

    /* GQA x head dim: G = 4, 8, 3, 1, 16 (Lq 4: 64 rows, four warps of rows), 16 with Lq 8 (128
     * rows: two row tiles) */
    static const int gqa[6][3] = {{32, 8, 4}, {8, 1, 4}, {6, 2, 4}, {4, 4, 4}, {64, 4, 4}, {16, 1, 8}};
    static const int dims[3] = {64, 128, 256};
    for (int g = 0; g < 6; g++)
        for (int d = 0; d < 3; d++) {
            if (g == 0 && dims[d] == 128)
                continue; /* the layout grid's case */
            c = gbase(dts[(g + d) % 2]);
            c.Hq = gqa[g][0];
            c.Hk = gqa[g][1];
            c.Lq = gqa[g][2];
            c.Lnew = 3;
            c.D = c.Dv = dims[d];
            c.page = (g + d) % 2 ? 16 : 0;
            add_gkv(c);
        }

    /* Dv != D, odd chunk counts (D = 40, 72), 136 (padded to 256), V := K and V := K[..., :Dv] */
    static const int dv[6][2] = {{128, 64}, {64, 128}, {40, 72}, {136, 136}, {256, 128}, {96, 256}};
    for (int i = 0; i < 6; i++) {
        c = gbase(CFLASH_DTYPE_F16);
        c.D = dv[i][0];
        c.Dv = dv[i][1];
        c.Lq = 4;
        c.Lnew = 3;
        c.page = i % 2 ? 16 : 0;
        add_gkv(c);
    }
    static const int vk[4][3] = {{VM_NULL, 128, 128}, {VM_NULL, 256, 256}, {VM_VIEW, 128, 64}, {VM_VIEW, 256, 192}};
    for (int i = 0; i < 4; i++) {
        c = gbase(dts[i % 2]);
        c.vmode = vk[i][0];
        c.D = vk[i][1];
        c.Dv = vk[i][2];
        c.Lq = 4;
        c.Lnew = 3;
        c.page = i < 2 ? 0 : 16;
        add_gkv(c);
    }

    /* chunked prefill over a cache (Lq > 8: the append, then the prefill kernel), contiguous
     * caches, cache_batch_idx (layout 1) and pages of 16, 1, 256 and 3 (layout -page), new keys
     * as many as the queries or fewer, every score rule, head dims 64 / 128 / 256, GQA 1, 4, 8 */
    static const int cp[8][3] = {{9, 9, 0}, {64, 64, 1}, {130, 130, -16}, {17, 0, 1},
                                 {33, 5, -1}, {200, 200, -256}, {9, 0, -3}, {64, 16, 1}};
    for (int i = 0; i < 8; i++)
        for (int r = 0; r < 3; r++) {
            c = gbase(dts[(i + r) % 2]);
            c.Lq = cp[i][0];
            c.Lnew = cp[i][1];
            c.bidx = cp[i][2] == 1;
            c.page = cp[i][2] < 0 ? -cp[i][2] : 0;
            c.D = c.Dv = dims[(i + r) % 3];
            c.Hq = (i % 3 == 0) ? 8 : (i % 3 == 1) ? 32 : 16;
            c.Hk = (i % 3 == 0) ? 8 : (i % 3 == 1) ? 8 : 2;
            switch (r) {
            case 0: c.causal = 1; break;
            case 1: c.causal = 1; c.align = CFLASH_ALIGN_TOP_LEFT; c.alibi = 1 + i % 2; c.softcap = i % 2 ? 0.0f : 20.0f; break;
            default: c.wl = 40; c.wr = i % 2 ? 3 : 0; c.sinks = 1; c.vmode = i % 2 ? VM_NULL : 0; break;
            }
            add_gkv(c);
        }

    /* score rules, on Lq 4 with 3 new keys (paged 16 and contiguous alternating) */
    for (int f = 0; f < 18; f++) {
        c = gbase(dts[f % 2]);
        c.Lq = 4;
        c.Lnew = 3;
        c.page = f % 3 ? 16 : 0;
        switch (f) {
        case 0: c.causal = 1; break;
        case 1: c.causal = 1; c.align = CFLASH_ALIGN_TOP_LEFT; break;
        case 2: c.wl = 32; c.wr = 0; break;
        case 3: c.wl = 8; c.wr = 8; break;
        case 4: c.wl = -1; c.wr = 2; break;
        case 5: c.wl = 100; c.causal = 1; break;
        case 6: c.softcap = 30.0f; break;
        case 7: c.softcap = 5.0f; c.causal = 1; break;
        case 8: c.alibi = 1; c.causal = 1; break;
        case 9: c.alibi = 2; break;
        case 10: c.sinks = 1; break;
        case 11: /* causal with Lq > the keys of entry 1 (0 + 1): its first rows are empty */
            c.sinks = 1;
            c.causal = 1;
            c.Lnew = 1;
            break;
        case 12: c.scale = 0.3f; break;
        case 13: c.scale = -0.5f; c.causal = 1; break;
        case 14: c.out_f32 = 1; c.causal = 1; break;
        case 15: c.lse_null = 1; break;
        case 16: c.strided = 1; c.causal = 1; break;
        case 17: c.strided = 1; c.bidx = 1; c.page = 0; c.alibi = 1; break;
        }
        add_gkv(c);
    }
    c = gbase(CFLASH_DTYPE_BF16);
    c.strided = 1;
    c.page = 1;
    c.Lq = 4;
    c.Lnew = 3;
    c.vmode = VM_SEP;
    add_gkv(c);

    /* edges: empty caches, single keys, exactly full caches, append only (Lq = 0) */
    for (int e = 0; e < 10; e++) {
        c = gbase(dts[e % 2]);
        switch (e) {
        case 0: c.seq[0] = c.seq[1] = c.seq[2] = 0; c.Lnew = 0; c.Lq = 4; break; /* no keys at all */
        case 1: c.seq[0] = c.seq[1] = c.seq[2] = 0; c.Lnew = 0; c.page = 16; c.sinks = 1; break;
        case 2: c.seq[0] = c.seq[1] = c.seq[2] = 0; c.Lnew = 1; c.Lq = 4; c.causal = 1; break;
        case 3: c.at_cap = 1; c.Lnew = 3; c.Lq = 4; break;
        case 4: c.at_cap = 1; c.Lnew = 3; c.page = 16; c.causal = 1; break;
        case 5: c.at_cap = 1; c.Lnew = 0; c.page = 1; break;
        case 6: c.at_cap = 1; c.Lnew = 1; c.bidx = 1; break;
        case 7: c.B = 1; c.seq[0] = 1; c.Lnew = 0; break;
        case 8: c.Lq = 0; c.Lnew = 3; c.page = 16; break; /* append only */
        case 9: c.Hq = 8; c.Hk = 1; c.Lq = 8; c.Lnew = 8; c.causal = 1; c.page = 16; break; /* 64 rows */
        }
        add_gkv(c);
    }

    /* split-KV: few blocks (B x Hk x row tiles) over long caches, by the heuristic and forced */
    for (int sp = 0; sp < 11; sp++) {
        c = gbase(CFLASH_DTYPE_BF16);
        c.B = 1;
        c.seq[0] = 3000;
        c.Lnew = 1;
        switch (sp) {
        case 0: break;
        case 1: c.splits = 1; break;
        case 2: c.splits = 7; break;
        case 3: c.splits = 64; c.seq[0] = 1000; break; /* more splits than key blocks: empty ones */
        case 4: c.sinks = 1; c.Lq = 4; c.Lnew = 3; break;
        case 5: c.causal = 1; c.wl = 256; c.Lq = 4; c.Lnew = 3; break; /* most splits see nothing */
        case 6: c.Hq = 8; c.Hk = 1; c.Lq = 4; c.page = 1; c.seq[0] = 2000; break;
        case 7: c.B = 2; c.seq[1] = 5000; c.page = 256; c.out_f32 = 1; c.alibi = 2; break;
        case 8: c.dtype = CFLASH_DTYPE_F16; c.D = c.Dv = 256; c.Hq = 8; c.Hk = 1; c.Lq = 8; c.seq[0] = 4000; break;
        case 9: c.D = c.Dv = 64; c.Hq = c.Hk = 1; c.softcap = 20.0f; c.page = 16; break;
        case 10: c.splits = 3; c.B = 2; c.seq[1] = 0; c.Lnew = 0; c.lse_null = 1; break; /* an empty entry */
        }
        add_gkv(c);
    }

    /* paged, grids too large for key splits: the decode geometry whose waves fill better runs
     * (H100: B 16 x Hk 32 = 512 blocks fill 1.29 waves of the small geometry's 396 slots and 1.94
     * of the large one's 264, so the large one), with 4 and 2 warps on the keys */
    for (int g = 0; g < 2; g++) {
        c = gbase(dts[g]);
        c.B = 16;
        c.Hk = 32;
        c.Hq = g ? 128 : 32;
        c.Lq = g ? 8 : 1;
        c.Lnew = g ? 8 : 1;
        c.causal = g;
        c.page = 16;
        for (int b = 0; b < c.B; b++) c.seq[b] = 20 + 13 * b;
        add_gkv(c);
    }

    /* MLA (D = 576, Dv = 512, V := K[..., :512], one latent head): the MLA kernel at every Lq
     * (64-row tiles: Hq 16 or 128, one to 17 tiles), contiguous, cache_batch_idx and pages of 1,
     * 16 and 64, every score rule, splits by the heuristic and forced, empty and full caches */
    for (int i = 0; i < 16; i++) {
        c = gbase(dts[i % 2]);
        c.D = 576;
        c.Dv = 512;
        c.vmode = VM_VIEW;
        c.Hk = 1;
        c.Hq = i % 4 == 3 ? 128 : 16;
        c.Lq = 4;
        c.Lnew = 3;
        switch (i) {
        case 0: c.Lq = 1; c.Lnew = 1; break;
        case 1: c.Lq = 1; c.Lnew = 0; c.page = 1; break;
        case 2: c.page = 16; c.causal = 1; break;
        case 3: c.Lq = 2; c.Lnew = 2; c.page = 64; c.causal = 1; break; /* 256 rows: 4 tiles */
        case 4: c.Lq = 9; c.Lnew = 9; c.causal = 1; c.align = CFLASH_ALIGN_TOP_LEFT; break;
        case 5: c.wl = 20; c.wr = 0; c.sinks = 1; break;
        case 6: c.alibi = 2; c.page = 16; break;
        case 7: c.Lq = 1; c.Lnew = 1; c.softcap = 20.0f; c.bidx = 1; break;
        case 8: c.scale = -0.5f; c.causal = 1; break;
        case 9: c.Lq = 1; c.Lnew = 1; c.out_f32 = 1; c.lse_null = 1; break;
        case 10: c.B = 1; c.seq[0] = 3000; c.Lq = 1; c.Lnew = 1; break; /* the heuristic splits */
        case 11: c.B = 1; c.seq[0] = 2000; c.splits = 7; c.Lq = 2; c.Lnew = 2; c.page = 16; c.causal = 1; break;
        case 12: c.Lq = 64; c.Lnew = 64; c.causal = 1; break; /* 1024 rows: 16 tiles */
        case 13: c.seq[0] = c.seq[1] = c.seq[2] = 0; c.Lnew = 0; c.sinks = 1; break; /* no keys at all */
        case 14: c.at_cap = 1; c.page = 16; c.strided = 1; break;
        case 15: c.Hq = 16; c.Lq = 33; c.Lnew = 5; c.causal = 1; c.wl = 40; c.page = 1; break;
        }
        add_gkv(c);
    }

    /* many blocks (B x Hk = 256): no split */
    for (int i = 0; i < 4; i++) {
        c = gbase(dts[i % 2]);
        c.B = 32;
        for (int b = 0; b < c.B; b++)
            c.seq[b] = (17 * b + 5) % 533;
        c.Lq = i < 2 ? 1 : 4;
        c.page = i % 2 ? 16 : 0;
        c.causal = i >= 2;
        add_gkv(c);
    }
}

/* ---- merge on the GPU ------------------------------------------------------------------------ */

enum { GM_NEW = 0, GM_INPLACE = 1, GM_NO_LSE = 2, GM_STRIDED = 3 };

struct gm_cfg {
    enum cflash_dtype dt;
    int out_f32, rank, mode;
    int B, L, H, Dv;
    uint64_t seed;
};

/* fp64 merge of one row: returns lse, writes o */
static double merge_row(double l1, const double *o1, double l2, const double *o2, int64_t Dv, double *o)
{
    const double m = l1 > l2 ? l1 : l2;
    if (m == -INFINITY) {
        for (int64_t d = 0; d < Dv; d++)
            o[d] = 0;
        return -INFINITY;
    }
    const double w1 = exp(l1 - m), w2 = exp(l2 - m);
    for (int64_t d = 0; d < Dv; d++) /* a state of weight 0 holds NaN here: not read */
        o[d] = ((w1 > 0 ? w1 * o1[d] : 0) + (w2 > 0 ? w2 * o2[d] : 0)) / (w1 + w2);
    return m + log(w1 + w2);
}

/* index of (t, h, d) / lse (t, h) in either rank's logical layout */
static void gm_oidx(int rank, int64_t L, int64_t t, int64_t h, int64_t d, int64_t *idx)
{
    if (rank == 3) {
        idx[0] = t;
        idx[1] = h;
        idx[2] = d;
    } else {
        idx[0] = t / L;
        idx[1] = t % L;
        idx[2] = h;
        idx[3] = d;
    }
}

static void gm_lidx(int rank, int64_t L, int64_t t, int64_t h, int64_t *idx)
{
    if (rank == 3) {
        idx[0] = h;
        idx[1] = t;
    } else {
        idx[0] = t / L;
        idx[1] = h;
        idx[2] = t % L;
    }
}

enum { M_O1, M_L1, M_O2, M_L2, M_OUT, M_LO, NM };

static void gm_case(const void *arg)
{
    const struct gm_cfg *a = arg;
    if (!gpu_or_self_check())
        return;
    struct rng r = {a->seed};
    const int64_t B = a->B, L = a->L, H = a->H, Dv = a->Dv, T = B * L;
    int64_t os4[4] = {B, L, H, Dv}, ls4[3] = {B, H, L}, os3[3] = {T, H, Dv}, ls3[2] = {H, T};
    const int64_t *os = a->rank == 4 ? os4 : os3, *ls = a->rank == 4 ? ls4 : ls3;
    const int ond = a->rank, lnd = a->rank - 1;
    static const int bhsd4[4] = {0, 2, 1, 3}, bhsd3[3] = {1, 0, 2};
    struct tbuf tb[NM];
    memset(tb, 0, sizeof tb);
    /* o2 permuted, lse2 padded: input strides */
    tbuf_make(&tb[M_O1], a->dt, ond, os, NULL, 0, -1);
    tbuf_make(&tb[M_O2], a->dt, ond, os, a->rank == 4 ? bhsd4 : bhsd3, 0, -1);
    tbuf_make(&tb[M_L1], CFLASH_DTYPE_F32, lnd, ls, NULL, 0, -1);
    tbuf_make(&tb[M_L2], CFLASH_DTYPE_F32, lnd, ls, NULL, 1, -1);
    tfill_randn(&tb[M_O1].t, &r, 0, 1);
    tfill_randn(&tb[M_O2].t, &r, 0.5, 2);
    tfill_randn(&tb[M_L1].t, &r, 0, 3);
    tfill_randn(&tb[M_L2].t, &r, 1, 3);
    /* -inf rows: in lse1, in lse2, in both; a -inf state's o holds NaN (it must not be read) */
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            int64_t li[3], oi[4];
            gm_lidx(a->rank, L, t, h, li);
            const int kind = (int)(rng_next(&r) % 7);
            for (int w = 0; w < 2; w++) {
                if (!(kind == w || kind == 2))
                    continue;
                tset(&tb[w ? M_L2 : M_L1].t, li, -INFINITY);
                for (int64_t d = 0; d < Dv; d++) {
                    gm_oidx(a->rank, L, t, h, d, oi);
                    memset(elem(&tb[w ? M_O2 : M_O1].t, oi), POISON, dtype_size(a->dt));
                }
            }
        }
    double *e_o = malloc(sizeof(double) * (size_t)(T * H * Dv + 1)), *e_l = malloc(sizeof(double) * (size_t)(T * H + 1));
    double *r1 = malloc(sizeof(double) * (size_t)(Dv + 1)), *r2 = malloc(sizeof(double) * (size_t)(Dv + 1));
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            int64_t li[3], oi[4];
            gm_lidx(a->rank, L, t, h, li);
            for (int64_t d = 0; d < Dv; d++) {
                gm_oidx(a->rank, L, t, h, d, oi);
                r1[d] = tget(&tb[M_O1].t, oi);
                r2[d] = tget(&tb[M_O2].t, oi);
            }
            e_l[t * H + h] = merge_row(tget(&tb[M_L1].t, li), r1, tget(&tb[M_L2].t, li), r2, Dv, e_o + (t * H + h) * Dv);
        }
    const enum cflash_dtype odt = a->out_f32 ? CFLASH_DTYPE_F32 : a->dt;
    const int inplace = a->mode == GM_INPLACE;
    if (!inplace) {
        tbuf_make(&tb[M_OUT], odt, ond, os, NULL, a->mode == GM_STRIDED ? 3 : 0, -1);
        tbuf_make(&tb[M_LO], CFLASH_DTYPE_F32, lnd, ls, NULL, a->mode == GM_STRIDED ? 1 : 0, -1);
        tbuf_poison(&tb[M_OUT], POISON);
        tbuf_poison(&tb[M_LO], POISON);
    }

    /* the call: device mirrors (in place: out / lse_out are o1 / lse1's mirrors) */
    const int cpu = on_cpu_mode();
    struct cflash_tensor t[NM];
    void *dev[NM] = {0};
    char msg[512] = "";
    for (int i = 0; i < NM && !msg[0]; i++) {
        t[i] = tb[i].t;
        if (cpu || (inplace && (i == M_OUT || i == M_LO)) || (a->mode == GM_NO_LSE && i == M_LO))
            continue;
        if (!cuda_mirror_tbuf(&tb[i], &t[i], &dev[i]))
            snprintf(msg, sizeof msg, "mirroring tensor %d to the device failed", i);
        t[i].device = CFLASH_DEVICE_CUDA;
        t[i].device_id = 0;
    }
    if (inplace) {
        t[M_OUT] = t[M_O1];
        t[M_LO] = t[M_L1];
    }
    if (!msg[0]) {
        enum cflash_status st = cflash_merge(&t[M_O1], &t[M_L1], &t[M_O2], &t[M_L2], &t[M_OUT],
                                             a->mode == GM_NO_LSE ? NULL : &t[M_LO]);
        if (st != CFLASH_STATUS_OK)
            snprintf(msg, sizeof msg, "cflash_merge returned %s (%s)", cflash_status_string(st), cflash_last_error());
        else if (!cpu && !cuda_sync_ok())
            snprintf(msg, sizeof msg, "the device reported an error after the merge");
        for (int i = 0; !cpu && i < NM; i++)
            if (dev[i] && !cuda_fetch_tbuf(&tb[i], &t[i]) && !msg[0])
                snprintf(msg, sizeof msg, "copying tensor %d back failed", i);
    }
    for (int i = 0; i < NM; i++)
        cuda_mirror_free(dev[i]);

    const struct tbuf *ob = inplace ? &tb[M_O1] : &tb[M_OUT], *lb = inplace ? &tb[M_L1] : &tb[M_LO];
    const double rel = odt == CFLASH_DTYPE_F32 ? 2e-6 : odt == CFLASH_DTYPE_F16 ? 1.0 / 1024 : 1.0 / 256;
    for (int64_t tt = 0; !msg[0] && tt < T; tt++)
        for (int64_t h = 0; !msg[0] && h < H; h++) {
            int64_t li[3], oi[4];
            gm_lidx(a->rank, L, tt, h, li);
            const double wl = e_l[tt * H + h];
            if (a->mode != GM_NO_LSE) {
                const double gl = tget(&lb->t, li);
                if (isinf(wl) ? gl != wl : !(fabs(gl - wl) <= 1e-5 * (1 + fabs(wl))))
                    snprintf(msg, sizeof msg, "lse_out[t=%lld,h=%lld] = %.9g, want %.9g", (long long)tt, (long long)h, gl, wl);
            }
            for (int64_t d = 0; !msg[0] && d < Dv; d++) {
                gm_oidx(a->rank, L, tt, h, d, oi);
                const double g = tget(&ob->t, oi), w = e_o[(tt * H + h) * Dv + d];
                if (isinf(wl) ? g != 0 : !(fabs(g - w) <= rel * fabs(w) + 1e-6))
                    snprintf(msg, sizeof msg, "out[t=%lld,h=%lld,d=%lld] = %.9g, want %.9g (lse %g)",
                             (long long)tt, (long long)h, (long long)d, g, w, wl);
            }
        }
    if (!msg[0] && !inplace) {
        int64_t g = tbuf_gap_changes(&tb[M_OUT], POISON);
        if (a->mode == GM_NO_LSE) {
            for (size_t i = 0; i < tb[M_LO].bytes; i++)
                g += tb[M_LO].base[i] != POISON;
        } else {
            g += tbuf_gap_changes(&tb[M_LO], POISON);
        }
        if (g)
            snprintf(msg, sizeof msg, "%lld bytes written outside the views (or to an unused lse)", (long long)g);
    }
    free(e_o);
    free(e_l);
    free(r1);
    free(r2);
    for (int i = 0; i < NM; i++)
        tbuf_free(&tb[i]);
    CHECK(!msg[0], "%s", msg);
}

static void register_gm_cases(void)
{
    static const char *modes[4] = {"new", "inplace", "lse_out=null", "strided_out"};
    static const enum cflash_dtype dts[3] = {CFLASH_DTYPE_F32, CFLASH_DTYPE_F16, CFLASH_DTYPE_BF16};
    char name[256];
    for (int di = 0; di < 3; di++)
        for (int of = 0; of < 2; of++)
            for (int rank = 3; rank <= 4; rank++)
                for (int mode = 0; mode < 4; mode++) {
                    if (of && (dts[di] == CFLASH_DTYPE_F32 || mode == GM_INPLACE))
                        continue;
                    struct gm_cfg a = {dts[di], of, rank, mode, 2, 13, 3, 40, 0};
                    snprintf(name, sizeof name, "cuda/merge/%s%s/rank=%d/%s", dtype_name(a.dt),
                             of ? "/out=f32" : "", rank, modes[mode]);
                    a.seed = hash_str(name);
                    tcase_add(name, gm_case, &a, sizeof a);
                }
    /* many rows (more blocks than one wave), Dv past one warp's width, Dv = 0 (lse only) */
    static const int big[3][4] = {{4, 1000, 8, 128}, {1, 7, 5, 257}, {2, 5, 3, 0}};
    for (int i = 0; i < 3; i++) {
        struct gm_cfg a = {CFLASH_DTYPE_BF16, i == 1, 4, i == 2 ? GM_NEW : GM_INPLACE * (i == 0), big[i][0], big[i][1], big[i][2], big[i][3], 0};
        snprintf(name, sizeof name, "cuda/merge/%s%s/rank=4/B=%d,L=%d,H=%d,Dv=%d/%s", dtype_name(a.dt),
                 a.out_f32 ? "/out=f32" : "", a.B, a.L, a.H, a.Dv, modes[a.mode]);
        a.seed = hash_str(name);
        tcase_add(name, gm_case, &a, sizeof a);
    }
}

/* ---- routing without a device (fake pointers: nothing may be read or launched) ------------ */

#ifdef CFLASH_HAVE_CUDA
#define FAKE ((void *)(uintptr_t)0x10000)

static struct cflash_tensor fake(enum cflash_dtype dt, int ndim, int64_t a, int64_t b, int64_t c, int64_t d)
{
    int64_t sh[4] = {a, b, c, d};
    struct cflash_tensor t = tdesc(FAKE, dt, ndim, sh);
    t.device = CFLASH_DEVICE_CUDA;
    return t;
}
#endif

enum gmis {
    GK_ROTARY, GK_FP32, GK_D20, GK_D512, GK_MLA_SEPARATE_V, GK_MASK, GK_BIAS, GK_FORCED_KERNEL,
    GK_HOST_SEQLENS, GK_HOST_KCACHE, GK_HOST_VCACHE, GK_HOST_BT, GK_HOST_BIDX, GK_HOST_KNEW,
    GK_HOST_SINKS, GK_LSE_DEVICE1, GK_UNALIGNED_CACHE, GK_UNALIGNED_Q, GK_ODD_OUT, GK_LNEW_CAP,
    GK_LNEW_CAP_PAGED, GK_BIDX_WITH_BT, GK_BIDX_NO_ROWS, GK_HUGE_CAPACITY, GK_SEQLENS_F32,
    GK_EMPTY_BATCH, GK_NO_DEVICE, GK_NO_DEVICE_PAGED, N_GMIS
};

static const struct {
    const char *name;
    enum cflash_status st;
    const char *names; /* '|'-separated: the message names one of them */
} gmis_info[N_GMIS] = {
    [GK_ROTARY] = {"rotary_without_k_new", CFLASH_STATUS_INVALID_ARGUMENT, "rotary_cos"},
    [GK_FP32] = {"fp32", CFLASH_STATUS_UNSUPPORTED, "q"},
    [GK_D20] = {"D=20", CFLASH_STATUS_UNSUPPORTED, "q"},
    [GK_D512] = {"D=512", CFLASH_STATUS_UNSUPPORTED, "q"},
    [GK_MLA_SEPARATE_V] = {"D=576,Dv=512,separate_v_cache", CFLASH_STATUS_UNSUPPORTED, "v_cache"},
    [GK_MASK] = {"mask_key_side_layout", CFLASH_STATUS_INVALID_ARGUMENT, "mask"}, /* served in the DENSE layout */
    [GK_BIAS] = {"bias_query_axis_2", CFLASH_STATUS_INVALID_ARGUMENT, "bias"},
    [GK_FORCED_KERNEL] = {"forced_cpu_kernel", CFLASH_STATUS_UNSUPPORTED, "kernel"},
    [GK_HOST_SEQLENS] = {"host_cache_seqlens", CFLASH_STATUS_INVALID_ARGUMENT, "cache_seqlens"},
    [GK_HOST_KCACHE] = {"host_k_cache", CFLASH_STATUS_INVALID_ARGUMENT, "k_cache"},
    [GK_HOST_VCACHE] = {"host_v_cache", CFLASH_STATUS_INVALID_ARGUMENT, "v_cache"},
    [GK_HOST_BT] = {"host_block_table", CFLASH_STATUS_INVALID_ARGUMENT, "block_table"},
    [GK_HOST_BIDX] = {"host_cache_batch_idx", CFLASH_STATUS_INVALID_ARGUMENT, "cache_batch_idx"},
    [GK_HOST_KNEW] = {"host_k_new", CFLASH_STATUS_INVALID_ARGUMENT, "k_new"},
    [GK_HOST_SINKS] = {"host_sinks", CFLASH_STATUS_INVALID_ARGUMENT, "sinks"},
    [GK_LSE_DEVICE1] = {"lse_other_device", CFLASH_STATUS_INVALID_ARGUMENT, "lse"},
    [GK_UNALIGNED_CACHE] = {"unaligned_cache_rows", CFLASH_STATUS_UNSUPPORTED, "k_cache"},
    [GK_UNALIGNED_Q] = {"unaligned_q_rows", CFLASH_STATUS_UNSUPPORTED, "q"},
    [GK_ODD_OUT] = {"odd_out_stride", CFLASH_STATUS_UNSUPPORTED, "out"},
    [GK_LNEW_CAP] = {"Lnew>capacity", CFLASH_STATUS_INVALID_ARGUMENT, "k_new"},
    [GK_LNEW_CAP_PAGED] = {"paged_Lnew>capacity", CFLASH_STATUS_INVALID_ARGUMENT, "k_new"},
    [GK_BIDX_WITH_BT] = {"cache_batch_idx_with_block_table", CFLASH_STATUS_INVALID_ARGUMENT, "cache_batch_idx"},
    [GK_BIDX_NO_ROWS] = {"cache_batch_idx_without_rows", CFLASH_STATUS_INVALID_ARGUMENT, "cache_batch_idx|k_cache"},
    [GK_HUGE_CAPACITY] = {"capacity>2^31", CFLASH_STATUS_UNSUPPORTED, "k_cache"},
    [GK_SEQLENS_F32] = {"cache_seqlens_fp32", CFLASH_STATUS_INVALID_ARGUMENT, "cache_seqlens"},
    [GK_EMPTY_BATCH] = {"empty_batch", CFLASH_STATUS_OK, ""},
    [GK_NO_DEVICE] = {"no_device", CFLASH_STATUS_DEVICE_ERROR, "q"},
    [GK_NO_DEVICE_PAGED] = {"no_device_paged", CFLASH_STATUS_DEVICE_ERROR, "q"},
};

/* A valid decode call on fake device tensors: q [2, 1, 8, 64] f16, caches [2, 32, 2, 64] (or
 * pages [6, 16, 2, 64] with block_table [2, 2]), k_new / v_new [2, 1, 2, 64], out like q,
 * lse [2, 8, 1], cache_seqlens [2]; then one rule broken. */
static void gmis_case(const void *arg)
{
    const int id = *(const int *)arg;
#ifndef CFLASH_HAVE_CUDA
    (void)id;
    tskip("this build has no CUDA backend (CUDA tensors are UNSUPPORTED; test_cuda.c covers that)");
    return;
#else
    if ((id == GK_NO_DEVICE || id == GK_NO_DEVICE_PAGED) && device_present()) {
        tskip("a CUDA device is present (fake pointers must not reach it; this case checks the no-device path)");
        return;
    }
    const enum cflash_dtype h = CFLASH_DTYPE_F16;
    const int paged = id == GK_HOST_BT || id == GK_LNEW_CAP_PAGED || id == GK_BIDX_WITH_BT ||
                      id == GK_HUGE_CAPACITY || id == GK_NO_DEVICE_PAGED;
    struct cflash_tensor q = fake(h, 4, 2, 1, 8, 64), out = q, lse = fake(CFLASH_DTYPE_F32, 3, 2, 8, 1, 0);
    struct cflash_tensor kc = paged ? fake(h, 4, 6, 16, 2, 64) : fake(h, 4, 2, 32, 2, 64), vc = kc;
    struct cflash_tensor kn = fake(h, 4, 2, 1, 2, 64), vn = kn;
    struct cflash_tensor seq = fake(CFLASH_DTYPE_I32, 1, 2, 0, 0, 0), bidx = seq;
    struct cflash_tensor bt = fake(CFLASH_DTYPE_I32, 2, 2, 2, 0, 0);
    struct cflash_tensor rc = fake(h, 2, 64, 16, 0, 0), rs = rc, sinks = fake(CFLASH_DTYPE_F32, 1, 8, 0, 0, 0);
    struct cflash_tensor mask = fake(CFLASH_DTYPE_U8, 4, 1, 1, 1, 64), bias = fake(CFLASH_DTYPE_F32, 4, 1, 1, 1, 64);
    struct cflash_kvcache cache;
    memset(&cache, 0, sizeof cache);
    cache.k_cache = &kc;
    cache.v_cache = &vc;
    cache.cache_seqlens = &seq;
    cache.block_table = paged ? &bt : NULL;
    struct cflash_attn_params p = cflash_attn_params_default();
    const struct cflash_tensor *pkn = &kn, *pvn = &vn;
    switch (id) {
    case GK_ROTARY: cache.rotary_cos = &rc; cache.rotary_sin = &rs; pkn = pvn = NULL; break; /* served, but not without k_new */
    case GK_FP32: q.dtype = out.dtype = kc.dtype = vc.dtype = kn.dtype = vn.dtype = CFLASH_DTYPE_F32; break;
    case GK_D20:
        q = fake(h, 4, 2, 1, 8, 20); out = q; kc = fake(h, 4, 2, 32, 2, 20); vc = kc; kn = fake(h, 4, 2, 1, 2, 20); vn = kn;
        break;
    case GK_D512:
        q = fake(h, 4, 2, 1, 8, 512); out = q; kc = fake(h, 4, 2, 32, 2, 512); vc = kc; kn = fake(h, 4, 2, 1, 2, 512); vn = kn;
        break;
    case GK_MLA_SEPARATE_V: /* the MLA kernel reads V from K's tile: a separate V is not served */
        q = fake(h, 4, 2, 1, 8, 576); kc = fake(h, 4, 2, 32, 2, 576); vc = fake(h, 4, 2, 32, 2, 512);
        out = fake(h, 4, 2, 1, 8, 512); kn = fake(h, 4, 2, 1, 2, 576); vn = fake(h, 4, 2, 1, 2, 512);
        break;
    case GK_MASK: mask = fake(CFLASH_DTYPE_U8, 2, 64, 1, 0, 0); p.mask = &mask; p.mask_layout = CFLASH_LAYOUT_KEY_SIDE; break;
    case GK_BIAS: bias = fake(CFLASH_DTYPE_F32, 4, 1, 1, 2, 64); p.bias = &bias; break; /* Lq = 1: shape[2] must be 1 */
    case GK_FORCED_KERNEL: p.kernel = CFLASH_KERNEL_REFERENCE; break;
    case GK_HOST_SEQLENS: seq.device = CFLASH_DEVICE_CPU; break;
    case GK_HOST_KCACHE: kc.device = CFLASH_DEVICE_CPU; break;
    case GK_HOST_VCACHE: vc.device = CFLASH_DEVICE_CPU; break;
    case GK_HOST_BT: bt.device = CFLASH_DEVICE_CPU; break;
    case GK_HOST_BIDX: bidx.device = CFLASH_DEVICE_CPU; cache.cache_batch_idx = &bidx; break;
    case GK_HOST_KNEW: kn.device = CFLASH_DEVICE_CPU; break;
    case GK_HOST_SINKS: sinks.device = CFLASH_DEVICE_CPU; p.sinks = &sinks; break;
    case GK_LSE_DEVICE1: lse.device_id = 1; break;
    case GK_UNALIGNED_CACHE: kc.stride[1] = 2 * 64 + 4; kc.stride[0] = 32 * kc.stride[1]; vc = kc; break;
    case GK_UNALIGNED_Q: q.data = (char *)FAKE + 2; break;
    case GK_ODD_OUT: out.stride[2] = 65; out.stride[1] = 8 * 65; out.stride[0] = 8 * 65; break;
    case GK_LNEW_CAP: kn = fake(h, 4, 2, 33, 2, 64); vn = kn; break;
    case GK_LNEW_CAP_PAGED: kn = fake(h, 4, 2, 33, 2, 64); vn = kn; break;
    case GK_BIDX_WITH_BT: cache.cache_batch_idx = &bidx; break;
    case GK_BIDX_NO_ROWS: kc = fake(h, 4, 0, 32, 2, 64); vc = kc; cache.cache_batch_idx = &bidx; break;
    case GK_HUGE_CAPACITY: bt = fake(CFLASH_DTYPE_I32, 2, 2, (int64_t)1 << 27, 0, 0); pkn = pvn = NULL; break;
    case GK_SEQLENS_F32: seq.dtype = CFLASH_DTYPE_F32; break;
    case GK_EMPTY_BATCH:
        q = fake(h, 4, 0, 1, 8, 64); out = q; lse = fake(CFLASH_DTYPE_F32, 3, 0, 8, 1, 0); kc = fake(h, 4, 0, 32, 2, 64); vc = kc;
        kn = fake(h, 4, 0, 1, 2, 64); vn = kn; seq = fake(CFLASH_DTYPE_I32, 1, 0, 0, 0, 0);
        break;
    }
    enum cflash_status st = cflash_attn_kvcache(&q, &cache, pkn, pvn, &out, &lse, &p);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", cflash_last_error());
    CHECK(st == gmis_info[id].st, "status %s, want %s (message \"%s\")", cflash_status_string(st),
          cflash_status_string(gmis_info[id].st), msg);
    if (st == CFLASH_STATUS_OK)
        return;
    CHECK(msg_names_any(msg, gmis_info[id].names), "message \"%s\" does not name %s", msg, gmis_info[id].names);
#endif
}

enum { GMM_HOST_O2, GMM_LSE_DEVICE1, GMM_SHAPE, GMM_NO_DEVICE, N_GMM };

static void gmm_case(const void *arg)
{
    const int id = *(const int *)arg;
#ifndef CFLASH_HAVE_CUDA
    (void)id;
    tskip("this build has no CUDA backend");
    return;
#else
    if (id == GMM_NO_DEVICE && device_present()) {
        tskip("a CUDA device is present (fake pointers must not reach it; this case checks the no-device path)");
        return;
    }
    struct cflash_tensor o1 = fake(CFLASH_DTYPE_BF16, 3, 16, 2, 64, 0), o2 = o1, out = o1;
    struct cflash_tensor l1 = fake(CFLASH_DTYPE_F32, 2, 2, 16, 0, 0), l2 = l1, lo = l1;
    enum cflash_status want = CFLASH_STATUS_INVALID_ARGUMENT;
    const char *name = "";
    switch (id) {
    case GMM_HOST_O2: o2.device = CFLASH_DEVICE_CPU; name = "o2"; break;
    case GMM_LSE_DEVICE1: l1.device_id = 1; name = "lse1"; break;
    case GMM_SHAPE: l2.shape[1] = 15; name = "lse2"; break;
    case GMM_NO_DEVICE: want = CFLASH_STATUS_DEVICE_ERROR; name = "o1"; break;
    }
    enum cflash_status st = cflash_merge(&o1, &l1, &o2, &l2, &out, &lo);
    CHECK(st == want, "status %s, want %s (message \"%s\")", cflash_status_string(st), cflash_status_string(want),
          cflash_last_error());
    CHECK(msg_names(cflash_last_error(), name), "message \"%s\" does not name %s", cflash_last_error(), name);
#endif
}

void register_cuda_kvcache_tests(void)
{
    register_gkv_cases();
    register_gm_cases();
    char name[128];
    for (int i = 0; i < N_GMIS; i++) {
        snprintf(name, sizeof name, "cuda/kvcache/misuse/%s", gmis_info[i].name);
        tcase_add(name, gmis_case, &i, sizeof i);
    }
    static const char *mm[N_GMM] = {"host_o2", "lse_other_device", "lse_shape", "no_device"};
    for (int i = 0; i < N_GMM; i++) {
        snprintf(name, sizeof name, "cuda/merge/misuse/%s", mm[i]);
        tcase_add(name, gmm_case, &i, sizeof i);
    }
}
