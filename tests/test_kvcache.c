/*
 * test_kvcache.c - cflash_attn_kvcache (SPEC.md section 6: contiguous and paged KV caches with
 * in-place append, MLA), on fresh seeded random inputs, for every kernel forced through
 * params.kernel:
 *
 *   kvcache/<kernel>/...   equivalence: each batch entry's logical key sequence (cache prefix
 *                          [0, cache_seqlens[b]) followed by the Lnew new rows) is rebuilt by
 *                          the test from its own page/row addressing, and the expected result
 *                          is computed twice: cflash_attn_dense with the reference kernel per
 *                          batch entry (Lq vs Lk_total, bottom-right) and the test's own fp64
 *                          oracle. The kvcache call's out/lse must match both under the SPEC 1
 *                          tolerances, and the caches must hold exactly the snapshot plus the
 *                          appended rows (every other byte, pages, rows and padding included,
 *                          unchanged). Cache positions past each sequence's keys hold NaN bytes
 *                          and unused block-table entries are out of range, so a kernel that
 *                          reads past the logical keys fails (or trips AddressSanitizer).
 *   kvcache/threads/...    the same paged call with 1, 2, 3 and the default thread count gives
 *                          identical out, lse and cache bytes.
 *   kvcache/misuse/...     each bad argument returns INVALID_ARGUMENT with a message naming
 *                          the argument, and changes no byte of the caches, the inputs, out or
 *                          lse (masks / biases: only the DENSE layout with a cache).
 *
 * Masks and biases (cflash.h): DENSE [B|1, Hv, Lq|1, Lk|1] with Lk >= the longest total key
 * count; column t is logical key t of batch entry b. The oracle is mask_oracle_attn over the
 * logical key sequences; the dense reference call gets the batch entry's slice of the mask /
 * bias (its first cache_seqlens[b] + Lnew columns). Columns no batch entry reads hold garbage
 * (0 = masked, NaN bias).
 *
 * flash_attn_with_kvcache semantics mirrored here: cache_seqlens is not modified by the call;
 * k_new / v_new are written at cache_seqlens[b] .. + Lnew - 1 before attending; queries see
 * keys [0, cache_seqlens[b] + Lnew) with causal / window aligned bottom-right to that total;
 * Lq and Lnew are independent.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <stdlib.h>
#include <string.h>

#define KMAXB 6
#define POISON 0xff /* NaN in every float dtype */

enum { VM_SEP = 0, VM_NULL = 1, VM_VIEW = 2 };
enum { BIDX_NONE = 0, BIDX_PERM = 1, BIDX_SUBSET = 2, BIDX_DUP = 3 };

/* a DENSE mask or bias [B|1, Hv, Lq|1, Lk|1] over the logical keys */
struct kmspec {
    int on;
    int hv;        /* 0: 1, 1: Hk, 2: Hq */
    int b1, q1, k1; /* size-1 (broadcast) axes */
    int grow;      /* the key axis this much longer than the longest total key count */
    int storage;   /* 0 row-major, 1 transposed (every axis reversed), 2 padded */
    int emptyrows; /* masks: some rows fully masked */
    enum cflash_dtype dtype; /* biases */
};

struct kvc_cfg {
    enum cflash_kernel kernel;
    enum cflash_dtype dtype;
    int out_f32;
    int B, Hq, Hk, D, Dv, vmode;
    int Lq, Lnew;
    int knew_empty;       /* Lnew == 0 with k_new (and v_new) given as [B, 0, Hk, D] */
    int seq[KMAXB];       /* cache_seqlens */
    int page;             /* 0: contiguous cache; else the page size of a paged cache */
    int bidx;             /* contiguous only: BIDX_* */
    int at_cap;           /* the longest sequence ends exactly at the cache capacity */
    int share;            /* paged: full prefix pages shared between batch entries */
    int causal, align;
    int64_t wl, wr;
    int alibi;            /* 0 none, 1 [Hq], 2 [B, Hq] */
    float softcap, scale;
    int sinks, lse_null;
    int strided;          /* padded / bhsd caches, padded q, bhsd k_new, v_new with a negative
                           * sequence stride, padded out / lse / tables */
    int threads;
    struct kmspec m, bi; /* mask / bias (DENSE layout) */
    uint64_t seed;
};

static struct kvc_cfg kdef(enum cflash_kernel k, enum cflash_dtype dt)
{
    struct kvc_cfg c;
    memset(&c, 0, sizeof c);
    c.kernel = k;
    c.dtype = dt;
    c.B = 3;
    c.Hq = 4;
    c.Hk = 2;
    c.D = c.Dv = 64;
    c.Lq = 4;
    c.Lnew = 4;
    c.seq[0] = 5;
    c.seq[1] = 0;
    c.seq[2] = 13;
    c.wl = c.wr = -1;
    c.align = CFLASH_ALIGN_BOTTOM_RIGHT;
    return c;
}

/* at_cap on a paged cache: the longest sequence is stretched to fill its last page */
static void kvc_normalize(struct kvc_cfg *c)
{
    if (c->vmode == VM_NULL)
        c->Dv = c->D;
    if (!c->at_cap || !c->page)
        return;
    int am = 0;
    for (int b = 1; b < c->B; b++)
        if (c->seq[b] > c->seq[am])
            am = b;
    int maxtot = c->seq[am] + c->Lnew;
    int mp = (maxtot + c->page - 1) / c->page;
    if (mp < 1)
        mp = 1;
    c->seq[am] = mp * c->page - c->Lnew;
}

#define APPEND(...)                                                        \
    do {                                                                   \
        size_t len_ = strlen(buf);                                         \
        if (len_ < n)                                                      \
            snprintf(buf + len_, n - len_, __VA_ARGS__);                   \
    } while (0)

static void kvc_name(char *buf, size_t n, const char *prefix, const struct kvc_cfg *c)
{
    static const char *bn[4] = {"", "perm", "subset", "dup"};
    buf[0] = 0;
    APPEND("%s/%s/%s/D=%d", prefix, kname(c->kernel), dtype_name(c->dtype), c->D);
    if (c->vmode == VM_NULL)
        APPEND(",v=null");
    else if (c->vmode == VM_VIEW)
        APPEND(",Dv=%d,v=kview", c->Dv);
    else if (c->Dv != c->D)
        APPEND(",Dv=%d", c->Dv);
    APPEND("/Hq=%d,Hk=%d/B=%d,seq=[", c->Hq, c->Hk, c->B);
    for (int b = 0; b < c->B; b++)
        APPEND("%s%d", b ? "," : "", c->seq[b]);
    APPEND("],new=%d,q=%d", c->Lnew, c->Lq);
    if (c->knew_empty)
        APPEND(",knew=empty");
    if (c->page)
        APPEND("/paged=%d", c->page);
    else
        APPEND("/contig");
    if (c->bidx)
        APPEND(",bidx=%s", bn[c->bidx]);
    if (c->share)
        APPEND(",shared");
    if (c->at_cap)
        APPEND(",atcap");
    if (c->causal)
        APPEND("/causal=%s", c->align == CFLASH_ALIGN_TOP_LEFT ? "tl" : "br");
    else if (c->align == CFLASH_ALIGN_TOP_LEFT)
        APPEND("/align=tl");
    if (c->wl != -1 || c->wr != -1)
        APPEND("/window=(%lld,%lld)", (long long)c->wl, (long long)c->wr);
    if (c->alibi == 1)
        APPEND("/alibi");
    else if (c->alibi == 2)
        APPEND("/alibi=[B,Hq]");
    if (c->softcap > 0)
        APPEND("/softcap=%g", c->softcap);
    if (c->sinks)
        APPEND("/sinks");
    if (c->scale != 0)
        APPEND("/scale=%g", c->scale);
    if (c->lse_null)
        APPEND("/lse=null");
    if (c->out_f32 && c->dtype != CFLASH_DTYPE_F32)
        APPEND("/out=f32");
    if (c->strided)
        APPEND("/strided");
    if (c->threads)
        APPEND("/threads=%d", c->threads);
    static const char *hvn[3] = {"1", "Hk", "Hq"}, *stn[3] = {"contig", "transposed", "padded"};
    for (int w = 0; w < 2; w++) {
        const struct kmspec *sp = w ? &c->bi : &c->m;
        if (!sp->on)
            continue;
        APPEND("/%s=Hv=%s,%s", w ? "bias" : "mask", hvn[sp->hv], stn[sp->storage]);
        if (w)
            APPEND(",%s", dtype_name(sp->dtype));
        else if (sp->emptyrows)
            APPEND(",emptyrows");
        if (sp->b1 || sp->q1 || sp->k1)
            APPEND(",bcast=%s%s%s", sp->b1 ? "B" : "", sp->q1 ? "Lq" : "", sp->k1 ? "Lk" : "");
        if (sp->grow)
            APPEND(",grow=%d", sp->grow);
    }
    if (c->seed)
        APPEND("/seed=%llx", (unsigned long long)c->seed);
}

/* ---- one problem: tensors, tables and the test's own view of the cache --------------- */

struct kvc {
    struct kvc_cfg c;
    int64_t B, Lq, Lnew, Hq, Hk, D, Dv;
    int64_t seq[KMAXB], tot[KMAXB], koff[KMAXB + 1], qoff[KMAXB + 1];
    int64_t nrows, L1, maxp; /* Bc x Lmax, or num_pages x page_size; block-table width */
    int32_t bidxh[KMAXB];
    int32_t *bth;            /* [B][maxp] */
    struct tbuf q, kc, vc, kn, vn, seqt, bidx, bt, alibi, sinks, mask, bias;
    struct mask_src msrc, bsrc;
    struct cflash_tensor vc_view, vn_view;
    const struct cflash_tensor *vcp, *knp, *vnp;
    struct cflash_kvcache cache;
    struct cflash_attn_params params;
};

static unsigned char *elem(const struct cflash_tensor *t, const int64_t *idx)
{
    return (unsigned char *)t->data + toffset(t, idx) * (int64_t)dtype_size(t->dtype);
}

/* cache row/page and position of logical key t of batch entry b */
static void kvc_loc(const struct kvc *s, int64_t b, int64_t t, int64_t *r, int64_t *pos)
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

static void set_nan_row(const struct cflash_tensor *t, int64_t r, int64_t pos, int64_t Hk,
                        int64_t width)
{
    size_t es = dtype_size(t->dtype);
    for (int64_t h = 0; h < Hk; h++)
        for (int64_t d = 0; d < width; d++) {
            int64_t idx[4] = {r, pos, h, d};
            memset(elem(t, idx), POISON, es);
        }
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

/* A DENSE mask / bias [B|1, Hv, Lq|1, Lk|1] (Lk = the longest total + grow, at least 1). An
 * element some batch entry reads (column t < its total) gets a value; columns no entry reads
 * keep garbage: 0 (masked) in masks, 0xff bytes (NaN) in biases. */
static void kvc_build_src(struct kvc *s, struct tbuf *tb, struct mask_src *ms,
                          const struct kmspec *sp, int is_mask, struct rng *r)
{
    int64_t maxtot = 0;
    for (int64_t b = 0; b < s->B; b++)
        if (s->tot[b] > maxtot)
            maxtot = s->tot[b];
    const int64_t Hv = sp->hv == 0 ? 1 : sp->hv == 1 ? s->Hk : s->Hq;
    int64_t sh[4] = {sp->b1 ? 1 : s->B, Hv, sp->q1 ? 1 : s->Lq, sp->k1 ? 1 : maxtot + sp->grow};
    if (sh[3] == 0)
        sh[3] = 1;
    static const int rev[4] = {3, 2, 1, 0};
    tbuf_make(tb, is_mask ? CFLASH_DTYPE_U8 : sp->dtype, 4, sh, sp->storage == 1 ? rev : NULL,
              sp->storage == 2 ? 3 : 0, -1);
    tbuf_poison(tb, is_mask ? 0x00 : 0xff);
    ms->t = &tb->t;
    ms->layout = CFLASH_LAYOUT_DENSE;
    int64_t idx[4];
    for (idx[0] = 0; idx[0] < sh[0]; idx[0]++)
        for (idx[1] = 0; idx[1] < sh[1]; idx[1]++)
            for (idx[2] = 0; idx[2] < sh[2]; idx[2]++)
                for (idx[3] = 0; idx[3] < sh[3]; idx[3]++) {
                    /* the longest total among the batch entries reading this element */
                    int64_t reach = sp->b1 ? maxtot : s->tot[idx[0]];
                    if (!sp->k1 && idx[3] >= reach)
                        continue;
                    double v;
                    if (is_mask) {
                        int keep = rng_uniform(r) < 0.7;
                        if (sp->emptyrows && (idx[0] * 7 + idx[2] * 3 + idx[1]) % 4 == 0)
                            keep = 0;
                        v = keep ? (double)(1 + rng_int(r, 255)) : 0.0;
                    } else {
                        v = rng_normal(r);
                    }
                    tset(&tb->t, idx, v);
                }
}

static void kvc_setup(struct kvc *s, const struct kvc_cfg *c)
{
    memset(s, 0, sizeof *s);
    s->c = *c;
    char name[512];
    kvc_name(name, sizeof name, "kvcache", c);
    struct rng r = {hash_str(name) ^ c->seed ^ 0x6b76636163686521ull};
    s->B = c->B;
    s->Lq = c->Lq;
    s->Lnew = c->Lnew;
    s->Hq = c->Hq;
    s->Hk = c->Hk;
    s->D = c->D;
    s->Dv = c->vmode == VM_NULL ? c->D : c->Dv;
    int64_t maxtot = 0;
    s->koff[0] = s->qoff[0] = 0;
    for (int b = 0; b < c->B; b++) {
        s->seq[b] = c->seq[b];
        s->tot[b] = c->seq[b] + c->Lnew;
        s->koff[b + 1] = s->koff[b] + s->tot[b];
        s->qoff[b + 1] = s->qoff[b] + c->Lq;
        if (s->tot[b] > maxtot)
            maxtot = s->tot[b];
    }
    const enum cflash_dtype dt = c->dtype;
    static const int bhsd[4] = {0, 2, 1, 3};
    const int *cache_order = c->strided ? bhsd : NULL;
    const int pad = c->strided ? 1 : 0;

    /* tables, then the caches */
    int64_t needp[KMAXB] = {0}, npages = 0;
    if (c->page) {
        s->L1 = c->page;
        s->maxp = 0;
        for (int b = 0; b < c->B; b++) {
            needp[b] = (s->tot[b] + s->L1 - 1) / s->L1;
            npages += needp[b];
            if (needp[b] > s->maxp)
                s->maxp = needp[b];
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
            for (int64_t p = 0; p < s->maxp; p++) {
                int32_t *e = &s->bth[b * s->maxp + p];
                if (p < needp[b]) {
                    /* a full prefix page of both b and 0 may be shared (read by both, written
                     * by neither) */
                    if (c->share && b > 0 && (p + 1) * s->L1 <= s->seq[b] &&
                        (p + 1) * s->L1 <= s->seq[0] && rng_int(&r, 2))
                        *e = s->bth[p];
                    else
                        *e = perm[next++];
                } else {
                    /* unused entries are never validated nor read */
                    *e = ((b + p) & 1) ? -1 : (int32_t)s->nrows;
                }
            }
        free(perm);
        int64_t bs[2] = {c->B, s->maxp};
        tbuf_make(&s->bt, CFLASH_DTYPE_I32, 2, bs, NULL, pad, -1);
        fill_bytes(&s->bt, &r);
        for (int64_t b = 0; b < c->B; b++)
            for (int64_t p = 0; p < s->maxp; p++) {
                int64_t idx[2] = {b, p};
                tset(&s->bt.t, idx, s->bth[b * s->maxp + p]);
            }
    } else {
        s->nrows = c->bidx == BIDX_SUBSET ? c->B + 3 : c->B;
        s->L1 = c->at_cap ? maxtot : maxtot + 3;
        if (c->bidx) {
            int32_t rows[KMAXB + 3];
            for (int64_t i = 0; i < s->nrows; i++)
                rows[i] = (int32_t)i;
            shuffle(rows, s->nrows, &r);
            for (int b = 0; b < c->B; b++)
                s->bidxh[b] = rows[b];
            if (c->bidx == BIDX_DUP && c->B > 1)
                s->bidxh[c->B - 1] = s->bidxh[0]; /* valid only without an append */
            int64_t bs[1] = {c->B}, bst[1] = {c->strided ? 3 : 1};
            tbuf_make_strided(&s->bidx, CFLASH_DTYPE_I32, 1, bs, bst);
            fill_bytes(&s->bidx, &r);
            for (int64_t b = 0; b < c->B; b++)
                tset(&s->bidx.t, &b, s->bidxh[b]);
        }
    }
    {
        int64_t bs[1] = {c->B}, bst[1] = {c->strided ? 2 : 1};
        tbuf_make_strided(&s->seqt, CFLASH_DTYPE_I32, 1, bs, bst);
        fill_bytes(&s->seqt, &r);
        for (int64_t b = 0; b < c->B; b++)
            tset(&s->seqt.t, &b, (double)s->seq[b]);
    }
    int64_t ks[4] = {s->nrows, s->L1, s->Hk, s->D}, vs[4] = {s->nrows, s->L1, s->Hk, s->Dv};
    tbuf_make(&s->kc, dt, 4, ks, cache_order, pad, -1);
    fill_bytes(&s->kc, &r);
    tfill_randn(&s->kc.t, &r, 0, 1);
    if (c->vmode == VM_SEP) {
        tbuf_make(&s->vc, dt, 4, vs, cache_order, pad, -1);
        fill_bytes(&s->vc, &r);
        tfill_randn(&s->vc.t, &r, 0, 1);
        s->vcp = &s->vc.t;
    } else if (c->vmode == VM_VIEW) {
        s->vc_view = s->kc.t;
        s->vc_view.shape[3] = s->Dv;
        s->vcp = &s->vc_view;
    }
    /* positions past each sequence's keys: NaN (stale cache contents nobody may read) */
    if (c->page) {
        for (int64_t b = 0; b < c->B; b++)
            for (int64_t p = 0; p < needp[b]; p++)
                for (int64_t pos = 0; pos < s->L1; pos++)
                    if (p * s->L1 + pos >= s->seq[b]) {
                        int64_t pg = s->bth[b * s->maxp + p];
                        set_nan_row(&s->kc.t, pg, pos, s->Hk, s->D);
                        if (c->vmode == VM_SEP)
                            set_nan_row(&s->vc.t, pg, pos, s->Hk, s->Dv);
                    }
    } else {
        for (int64_t row = 0; row < s->nrows; row++) {
            int64_t keep = -1; /* the longest prefix that lives in this row */
            for (int64_t b = 0; b < c->B; b++)
                if ((c->bidx ? s->bidxh[b] : b) == row && s->seq[b] > keep)
                    keep = s->seq[b];
            if (keep < 0)
                continue; /* a row no batch entry uses keeps its random contents */
            for (int64_t pos = keep; pos < s->L1; pos++) {
                set_nan_row(&s->kc.t, row, pos, s->Hk, s->D);
                if (c->vmode == VM_SEP)
                    set_nan_row(&s->vc.t, row, pos, s->Hk, s->Dv);
            }
        }
    }

    /* q and the new rows */
    int64_t qs[4] = {c->B, c->Lq, s->Hq, s->D};
    tbuf_make(&s->q, dt, 4, qs, NULL, c->strided ? 3 : 0, -1);
    fill_bytes(&s->q, &r);
    tfill_randn(&s->q.t, &r, 0, 1);
    if (c->Lnew > 0 || c->knew_empty) {
        int64_t kns[4] = {c->B, c->Lnew, s->Hk, s->D}, vns[4] = {c->B, c->Lnew, s->Hk, s->Dv};
        tbuf_make(&s->kn, dt, 4, kns, c->strided ? bhsd : NULL, 0, -1);
        fill_bytes(&s->kn, &r);
        tfill_randn(&s->kn.t, &r, 0, 1);
        s->knp = &s->kn.t;
        if (c->vmode == VM_SEP) {
            tbuf_make(&s->vn, dt, 4, vns, NULL, c->strided ? 5 : 0, c->strided ? 1 : -1);
            fill_bytes(&s->vn, &r);
            tfill_randn(&s->vn.t, &r, 0, 1);
            s->vnp = &s->vn.t;
        } else if (c->vmode == VM_VIEW) {
            s->vn_view = s->kn.t;
            s->vn_view.shape[3] = s->Dv;
            s->vnp = &s->vn_view;
        }
    }

    s->cache.k_cache = &s->kc.t;
    s->cache.v_cache = s->vcp;
    s->cache.cache_seqlens = &s->seqt.t;
    s->cache.cache_batch_idx = c->bidx ? &s->bidx.t : NULL;
    s->cache.block_table = c->page ? &s->bt.t : NULL;

    s->params = cflash_attn_params_default();
    s->params.scale = c->scale;
    s->params.softcap = c->softcap;
    s->params.causal = c->causal;
    s->params.align = (enum cflash_align)c->align;
    s->params.window_left = c->wl;
    s->params.window_right = c->wr;
    s->params.kernel = c->kernel;
    s->params.num_threads = c->threads;
    if (c->alibi) {
        int64_t sh[2] = {c->alibi == 2 ? c->B : s->Hq, s->Hq};
        tbuf_make(&s->alibi, CFLASH_DTYPE_F32, c->alibi, c->alibi == 2 ? sh : sh + 1, NULL, 0,
                  -1);
        float *a = s->alibi.t.data;
        for (int64_t i = 0; i < tnumel(&s->alibi.t); i++)
            a[i] = (float)(0.05 + 0.5 * rng_uniform(&r));
        s->params.alibi_slopes = &s->alibi.t;
    }
    if (c->sinks) {
        int64_t sh[1] = {s->Hq};
        tbuf_make(&s->sinks, CFLASH_DTYPE_F32, 1, sh, NULL, 0, -1);
        tfill_randn(&s->sinks.t, &r, 1, 1);
        s->params.sinks = &s->sinks.t;
    }
    if (c->m.on) {
        kvc_build_src(s, &s->mask, &s->msrc, &c->m, 1, &r);
        s->params.mask = &s->mask.t;
        s->params.mask_layout = CFLASH_LAYOUT_DENSE;
    }
    if (c->bi.on) {
        kvc_build_src(s, &s->bias, &s->bsrc, &c->bi, 0, &r);
        s->params.bias = &s->bias.t;
        s->params.bias_layout = CFLASH_LAYOUT_DENSE;
    }
}

static void kvc_free(struct kvc *s)
{
    tbuf_free(&s->q);
    tbuf_free(&s->kc);
    tbuf_free(&s->vc);
    tbuf_free(&s->kn);
    tbuf_free(&s->vn);
    tbuf_free(&s->seqt);
    tbuf_free(&s->bidx);
    tbuf_free(&s->bt);
    tbuf_free(&s->alibi);
    tbuf_free(&s->sinks);
    tbuf_free(&s->mask);
    tbuf_free(&s->bias);
    free(s->bth);
    s->bth = NULL;
}

static void kvc_make_out(const struct kvc *s, struct tbuf *out, struct tbuf *lse,
                         enum cflash_dtype odt, int strided)
{
    int64_t os[4] = {s->B, s->Lq, s->Hq, s->Dv}, ls[3] = {s->B, s->Hq, s->Lq};
    tbuf_make(out, odt, 4, os, NULL, strided ? 1 : 0, -1);
    tbuf_make(lse, CFLASH_DTYPE_F32, 3, ls, NULL, strided ? 1 : 0, -1);
}

static enum cflash_status kvc_call(const struct kvc *s, int threads, const struct cflash_tensor *out,
                                   const struct cflash_tensor *lse)
{
    struct cflash_attn_params p = s->params;
    p.num_threads = threads;
    return cflash_attn_kvcache(&s->q.t, &s->cache, s->knp, s->vnp, out, lse, &p);
}

/* ---- the check ------------------------------------------------------------------------- */

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

static int snap_same(const struct snap *sn, const struct tbuf *t)
{
    return sn->n == t->bytes && (sn->n == 0 || memcmp(sn->p, t->base, sn->n) == 0);
}

struct kctx {
    struct kvc s;
    double *K, *V, *Q;          /* logical keys/values [Ktot][Hk][D|Dv], queries [Tq][Hq][D] */
    double *ex_o, *ex_l;        /* fp64 oracle */
    double *nv_o;               /* naive same-precision oracle */
    double *rf_o, *rf_l;        /* dense reference kernel */
    double *got_o, *got_l;      /* the kvcache call */
    double *alibi, *sinks;
    int64_t *nvis;              /* [Tq][Hq] visible keys (fp64 oracle) */
    struct tbuf oref, lref, out, lse;
    struct snap kc0, vc0, q0, kn0, vn0, seq0, bidx0, bt0;
    unsigned char *kc_want, *vc_want;
};

/* Expected cache bytes: the snapshot plus k_new / v_new at positions seq[b] .. + Lnew - 1. */
static void expected_cache(struct kctx *x)
{
    struct kvc *s = &x->s;
    const size_t es = dtype_size(s->c.dtype);
    x->kc_want = malloc(s->kc.bytes ? s->kc.bytes : 1);
    memcpy(x->kc_want, x->kc0.p, s->kc.bytes);
    if (s->c.vmode == VM_SEP) {
        x->vc_want = malloc(s->vc.bytes ? s->vc.bytes : 1);
        memcpy(x->vc_want, x->vc0.p, s->vc.bytes);
    }
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t t = 0; t < s->Lnew; t++) {
            int64_t row, pos;
            kvc_loc(s, b, s->seq[b] + t, &row, &pos);
            for (int64_t h = 0; h < s->Hk; h++) {
                int64_t ci[4] = {row, pos, h, 0}, ni[4] = {b, t, h, 0};
                /* head-dim stride 1: D (Dv) contiguous elements */
                memcpy(x->kc_want + (elem(&s->kc.t, ci) - s->kc.base), elem(&s->kn.t, ni),
                       (size_t)s->D * es);
                if (s->c.vmode == VM_SEP)
                    memcpy(x->vc_want + (elem(&s->vc.t, ci) - s->vc.base), elem(&s->vn.t, ni),
                           (size_t)s->Dv * es);
                /* VM_VIEW: v_new is the first Dv columns of k_new, written onto the first Dv
                 * columns of the same cache row: the bytes k_new already put there */
            }
        }
}

/* Describes the first byte where a cache differs from what it should be. */
static void describe_cache_diff(const struct kvc *s, const struct tbuf *t, const unsigned char *want,
                                int64_t width, char *msg, size_t n)
{
    size_t i = 0;
    while (i < t->bytes && t->base[i] == want[i])
        i++;
    size_t nbad = 0;
    for (size_t j = i; j < t->bytes; j++)
        nbad += t->base[j] != want[j];
    /* find the element of the view holding byte i, if any */
    const size_t es = dtype_size(t->t.dtype);
    for (int64_t a = 0; a < t->t.shape[0]; a++)
        for (int64_t p = 0; p < t->t.shape[1]; p++)
            for (int64_t h = 0; h < t->t.shape[2]; h++)
                for (int64_t d = 0; d < width; d++) {
                    int64_t idx[4] = {a, p, h, d};
                    size_t off = (size_t)(elem(&t->t, idx) - t->base);
                    if (i >= off && i < off + es) {
                        /* which logical key is that, for which batch entry? */
                        char who[96] = "no batch entry's key";
                        for (int64_t b = 0; b < s->B && !strncmp(who, "no", 2); b++) {
                            const int64_t kmax = s->c.page ? s->maxp * s->L1 : s->L1;
                            for (int64_t k = 0; k < kmax; k++) {
                                int64_t rr, pp;
                                kvc_loc(s, b, k, &rr, &pp);
                                if (rr == a && pp == p) {
                                    snprintf(who, sizeof who, "batch %lld key %lld (cache_seqlens %lld, Lnew %lld)",
                                             (long long)b, (long long)k, (long long)s->seq[b],
                                             (long long)s->Lnew);
                                    break;
                                }
                            }
                        }
                        snprintf(msg, n, "%zu bytes differ; first at byte %zu = element [%lld,%lld,%lld,%lld] (%s): got 0x%02x, want 0x%02x",
                                 nbad, i, (long long)a, (long long)p, (long long)h, (long long)d,
                                 who, t->base[i], want[i]);
                        return;
                    }
                }
    snprintf(msg, n, "%zu bytes differ; first at byte %zu (padding outside the view): got 0x%02x, want 0x%02x",
             nbad, i, t->base[i], want[i]);
}

/* The logical key sequences, read with the test's own addressing before the call. */
static void build_logical(struct kctx *x)
{
    struct kvc *s = &x->s;
    const int64_t Ktot = s->koff[s->B], Hk = s->Hk, D = s->D, Dv = s->Dv;
    x->K = malloc(sizeof(double) * (size_t)(Ktot * Hk * D + 1));
    x->V = malloc(sizeof(double) * (size_t)(Ktot * Hk * Dv + 1));
    const struct cflash_tensor *vc = s->vcp ? s->vcp : &s->kc.t;
    const struct cflash_tensor *vn = s->vnp ? s->vnp : s->knp;
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t t = 0; t < s->tot[b]; t++)
            for (int64_t h = 0; h < Hk; h++) {
                const int64_t row = (s->koff[b] + t) * Hk + h;
                int64_t idx[4];
                const struct cflash_tensor *kt, *vt;
                if (t < s->seq[b]) {
                    int64_t r, pos;
                    kvc_loc(s, b, t, &r, &pos);
                    idx[0] = r;
                    idx[1] = pos;
                    kt = &s->kc.t;
                    vt = vc;
                } else {
                    idx[0] = b;
                    idx[1] = t - s->seq[b];
                    kt = s->knp;
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
    x->Q = tload(&s->q.t);
}

static void oracle_fill(struct kctx *x, struct oracle_in *in)
{
    struct kvc *s = &x->s;
    memset(in, 0, sizeof *in);
    in->B = s->B;
    in->qoff = s->qoff;
    in->koff = s->koff;
    in->Hq = s->Hq;
    in->Hk = s->Hk;
    in->D = s->D;
    in->Dv = s->Dv;
    in->q = x->Q;
    in->k = x->K;
    in->v = x->V;
    in->scale = s->c.scale != 0 ? (double)s->c.scale : 1.0 / sqrt((double)s->D);
    in->softcap = s->c.softcap;
    in->causal = s->c.causal;
    in->align = s->c.align;
    in->wl = s->c.wl;
    in->wr = s->c.wr;
    if (s->c.alibi) {
        x->alibi = tload(&s->alibi.t);
        in->alibi = x->alibi;
        in->alibi_per_batch = s->c.alibi == 2;
    }
    if (s->c.sinks) {
        x->sinks = tload(&s->sinks.t);
        in->sinks = x->sinks;
    }
}

/* The expected result through the library's dense entry point, reference kernel, one call per
 * batch entry over its logical keys (Lq vs Lk_total). */
static int dense_reference(struct kctx *x)
{
    struct kvc *s = &x->s;
    const enum cflash_dtype dt = s->c.dtype;
    kvc_make_out(s, &x->oref, &x->lref, CFLASH_DTYPE_F32, 0);
    tbuf_poison(&x->oref, POISON);
    tbuf_poison(&x->lref, POISON);
    for (int64_t b = 0; b < s->B && s->Lq > 0; b++) {
        const int64_t L = s->tot[b];
        int64_t ks[4] = {1, L, s->Hk, s->D}, vs[4] = {1, L, s->Hk, s->Dv};
        struct tbuf kb, vb;
        memset(&vb, 0, sizeof vb);
        tbuf_make(&kb, dt, 4, ks, NULL, 0, -1);
        struct cflash_tensor vview;
        const struct cflash_tensor *vp = NULL;
        for (int64_t t = 0; t < L; t++)
            for (int64_t h = 0; h < s->Hk; h++)
                for (int64_t d = 0; d < s->D; d++) {
                    int64_t idx[4] = {0, t, h, d};
                    tset(&kb.t, idx, x->K[((s->koff[b] + t) * s->Hk + h) * s->D + d]);
                }
        if (s->c.vmode == VM_SEP) {
            tbuf_make(&vb, dt, 4, vs, NULL, 0, -1);
            for (int64_t t = 0; t < L; t++)
                for (int64_t h = 0; h < s->Hk; h++)
                    for (int64_t d = 0; d < s->Dv; d++) {
                        int64_t idx[4] = {0, t, h, d};
                        tset(&vb.t, idx, x->V[((s->koff[b] + t) * s->Hk + h) * s->Dv + d]);
                    }
            vp = &vb.t;
        } else if (s->c.vmode == VM_VIEW) {
            vview = kb.t;
            vview.shape[3] = s->Dv;
            vp = &vview;
        }
        struct cflash_tensor qv = s->q.t, ov = x->oref.t, lv = x->lref.t, av;
        qv.shape[0] = ov.shape[0] = lv.shape[0] = 1;
        qv.data = (char *)qv.data + b * qv.stride[0] * (int64_t)dtype_size(dt);
        ov.data = (float *)ov.data + b * ov.stride[0];
        lv.data = (float *)lv.data + b * lv.stride[0];
        struct cflash_attn_params p = s->params;
        p.kernel = CFLASH_KERNEL_REFERENCE;
        p.num_threads = 0;
        if (s->c.alibi == 2) {
            av = s->alibi.t;
            av.shape[0] = 1;
            av.data = (float *)av.data + b * av.stride[0];
            p.alibi_slopes = &av;
        }
        /* batch entry b's slice of the mask / bias: its row and its first L columns */
        struct cflash_tensor mv, bv;
        const struct cflash_tensor *srcs[2] = {s->params.mask, s->params.bias};
        struct cflash_tensor *views[2] = {&mv, &bv};
        for (int w = 0; w < 2; w++) {
            if (!srcs[w])
                continue;
            *views[w] = *srcs[w];
            struct cflash_tensor *t = views[w];
            if (t->shape[0] != 1) {
                t->data = (char *)t->data + b * t->stride[0] * (int64_t)dtype_size(t->dtype);
                t->shape[0] = 1;
            }
            if (t->shape[3] != 1)
                t->shape[3] = L > 0 ? L : 1;
        }
        if (p.mask)
            p.mask = &mv;
        if (p.bias)
            p.bias = &bv;
        enum cflash_status st = cflash_attn_dense(&qv, &kb.t, vp, &ov, &lv, &p);
        tbuf_free(&kb);
        tbuf_free(&vb);
        CHECK0(st == CFLASH_STATUS_OK, "dense reference call for batch %lld returned %s (%s)",
               (long long)b, cflash_status_string(st), cflash_last_error());
    }
    return 1;
}

static void load_result(const struct kvc *s, const struct cflash_tensor *out,
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
                if (lse && l) {
                    int64_t idx[3] = {b, h, i};
                    l[t * s->Hq + h] = tget(lse, idx);
                }
            }
}

static int64_t visible_count(const struct kvc *s, int64_t b, int64_t i)
{
    int64_t n = 0;
    for (int64_t j = 0; j < s->tot[b]; j++)
        n += oracle_visible(i, j, s->Lq, s->tot[b], s->c.causal, s->c.align, s->c.wl, s->c.wr);
    return n;
}

/* finite everywhere; rows with no visible key exactly 0 with lse -inf (or the sink logit) */
static int check_rows_exact(struct kctx *x, const double *o, const double *l, const char *who)
{
    struct kvc *s = &x->s;
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t i = 0; i < s->Lq; i++) {
            const int64_t t = b * s->Lq + i;
            for (int64_t h = 0; h < s->Hq; h++) {
                const int64_t nvis = x->nvis ? x->nvis[t * s->Hq + h] : visible_count(s, b, i);
                for (int64_t d = 0; d < s->Dv; d++) {
                    double v = o[(t * s->Hq + h) * s->Dv + d];
                    CHECK0(isfinite(v), "%s: out[b=%lld,i=%lld,h=%lld,d=%lld] = %g is not finite",
                           who, (long long)b, (long long)i, (long long)h, (long long)d, v);
                    if (nvis == 0)
                        CHECK0(v == 0, "%s: empty row b=%lld i=%lld h=%lld: out[d=%lld] = %g, want 0",
                               who, (long long)b, (long long)i, (long long)h, (long long)d, v);
                }
                if (!l)
                    continue;
                double lv = l[t * s->Hq + h];
                if (nvis == 0) {
                    double want = s->c.sinks ? x->sinks[h] : -INFINITY;
                    int ok = s->c.sinks ? fabs(lv - want) <= 1e-6 * (1 + fabs(want)) : lv == want;
                    CHECK0(ok, "%s: empty row b=%lld i=%lld h=%lld: lse = %.9g, want %.9g", who,
                           (long long)b, (long long)i, (long long)h, lv, want);
                } else {
                    CHECK0(isfinite(lv), "%s: lse[b=%lld,h=%lld,i=%lld] = %g is not finite", who,
                           (long long)b, (long long)h, (long long)i, lv);
                }
            }
        }
    return 1;
}

/* SPEC 1: fp32 relative L2 <= 1e-5; fp16/bf16 max abs <= 2 e_naive + 1e-3; LSE 1e-4 / 1e-3. */
static int compare_spec(struct kctx *x, const double *o, const double *l, const double *ro,
                        const double *rl, int half, double e_naive, const char *who)
{
    struct kvc *s = &x->s;
    const int64_t Tq = s->B * s->Lq;
    double num = 0, den = 0, maxabs = 0;
    int64_t wi = 0;
    for (int64_t t = 0; t < Tq; t++)
        for (int64_t h = 0; h < s->Hq; h++) {
            for (int64_t d = 0; d < s->Dv; d++) {
                const int64_t k = (t * s->Hq + h) * s->Dv + d;
                double e = fabs(o[k] - ro[k]);
                num += e * e;
                den += ro[k] * ro[k];
                if (e > maxabs || isnan(e)) {
                    maxabs = isnan(e) ? INFINITY : e;
                    wi = k;
                }
            }
            if (l && rl) {
                double a = l[t * s->Hq + h], r = rl[t * s->Hq + h];
                if (isinf(r)) {
                    CHECK0(a == r, "%s: lse[b=%lld,h=%lld,i=%lld] = %g, expected %g", who,
                           (long long)(t / s->Lq), (long long)h, (long long)(t % s->Lq), a, r);
                    continue;
                }
                double tol = (half ? 1e-3 : 1e-4) + 1e-6 * fabs(r);
                CHECK0(fabs(a - r) <= tol, "%s: lse[b=%lld,h=%lld,i=%lld] = %.9g, expected %.9g (tol %g)",
                       who, (long long)(t / s->Lq), (long long)h, (long long)(t % s->Lq), a, r, tol);
            }
        }
    const int64_t wt = wi / (s->Hq * s->Dv), wh = wi / s->Dv % s->Hq, wd = wi % s->Dv;
    if (half) {
        double tol = 2 * e_naive + 1e-3;
        CHECK0(maxabs <= tol,
               "%s: max abs error %.3g at b=%lld,i=%lld,h=%lld,d=%lld (got %.6g, expected %.6g) > "
               "2*e_naive+1e-3 = %.3g",
               who, maxabs, (long long)(wt / s->Lq), (long long)(wt % s->Lq), (long long)wh,
               (long long)wd, o[wi], ro[wi], tol);
    } else if (den == 0) {
        CHECK0(num == 0, "%s: expected output is all zero but out differs (max abs %.3g)", who,
               maxabs);
    } else {
        double rel = sqrt(num / den);
        CHECK0(rel <= 1e-5,
               "%s: relative L2 error %.3g > 1e-5 (max abs %.3g at b=%lld,i=%lld,h=%lld,d=%lld: got "
               "%.7g, expected %.7g)",
               who, rel, maxabs, (long long)(wt / s->Lq), (long long)(wt % s->Lq), (long long)wh,
               (long long)wd, o[wi], ro[wi]);
    }
    return 1;
}

static void kctx_free(struct kctx *x)
{
    kvc_free(&x->s);
    free(x->K);
    free(x->V);
    free(x->Q);
    free(x->ex_o);
    free(x->ex_l);
    free(x->nv_o);
    free(x->rf_o);
    free(x->rf_l);
    free(x->got_o);
    free(x->got_l);
    free(x->alibi);
    free(x->sinks);
    free(x->nvis);
    tbuf_free(&x->oref);
    tbuf_free(&x->lref);
    tbuf_free(&x->out);
    tbuf_free(&x->lse);
    struct snap *sn[8] = {&x->kc0, &x->vc0, &x->q0, &x->kn0, &x->vn0, &x->seq0, &x->bidx0, &x->bt0};
    for (int i = 0; i < 8; i++)
        free(sn[i]->p);
    free(x->kc_want);
    free(x->vc_want);
    free(x);
}

static void check_inner(struct kctx *x)
{
    struct kvc *s = &x->s;
    const struct kvc_cfg *c = &s->c;
    const int half = c->dtype != CFLASH_DTYPE_F32;
    const int64_t Tq = s->B * s->Lq, no = Tq * s->Hq * s->Dv + 1, nl = Tq * s->Hq + 1;

    snap_take(&x->kc0, &s->kc);
    snap_take(&x->vc0, &s->vc);
    snap_take(&x->q0, &s->q);
    snap_take(&x->kn0, &s->kn);
    snap_take(&x->vn0, &s->vn);
    snap_take(&x->seq0, &s->seqt);
    snap_take(&x->bidx0, &s->bidx);
    snap_take(&x->bt0, &s->bt);
    expected_cache(x);
    build_logical(x);

    /* expected: fp64 oracle, naive same-precision oracle, dense reference kernel */
    struct oracle_in in;
    oracle_fill(x, &in);
    x->ex_o = malloc(sizeof(double) * (size_t)no);
    x->ex_l = malloc(sizeof(double) * (size_t)nl);
    x->nv_o = malloc(sizeof(double) * (size_t)no);
    x->rf_o = malloc(sizeof(double) * (size_t)no);
    x->rf_l = malloc(sizeof(double) * (size_t)nl);
    x->got_o = malloc(sizeof(double) * (size_t)no);
    x->got_l = malloc(sizeof(double) * (size_t)nl);
    x->nvis = malloc(sizeof(int64_t) * (size_t)nl);
    mask_oracle_attn(&in, &s->msrc, &s->bsrc, CFLASH_DTYPE_F32, x->ex_o, x->ex_l, x->nvis);
    if (half)
        mask_oracle_attn(&in, &s->msrc, &s->bsrc, c->dtype, x->nv_o, NULL, NULL);
    if (!dense_reference(x))
        return;
    load_result(s, &x->oref.t, &x->lref.t, x->rf_o, x->rf_l);
    if (!check_rows_exact(x, x->rf_o, x->rf_l, "dense ref"))
        return;
    {
        /* the dense reference kernel agrees with the test's own oracle */
        double num = 0, den = 0;
        for (int64_t k = 0; k < no - 1; k++) {
            num += (x->rf_o[k] - x->ex_o[k]) * (x->rf_o[k] - x->ex_o[k]);
            den += x->ex_o[k] * x->ex_o[k];
        }
        CHECK(den == 0 ? num == 0 : sqrt(num / den) <= 1e-6,
              "dense ref vs test oracle: relative L2 error %.3g > 1e-6", den == 0 ? sqrt(num) : sqrt(num / den));
        for (int64_t k = 0; k < nl - 1; k++) {
            double a = x->rf_l[k], r = x->ex_l[k];
            CHECK(isinf(r) ? a == r : fabs(a - r) <= 1e-5 * (1 + fabs(r)),
                  "dense ref lse[%lld] = %.9g, test oracle %.9g", (long long)k, a, r);
        }
    }
    double e_naive_ref = 0, e_naive_ex = 0;
    if (half)
        for (int64_t k = 0; k < no - 1; k++) {
            double a = fabs(x->nv_o[k] - x->rf_o[k]), b = fabs(x->nv_o[k] - x->ex_o[k]);
            e_naive_ref = a > e_naive_ref ? a : e_naive_ref;
            e_naive_ex = b > e_naive_ex ? b : e_naive_ex;
        }

    /* the call under test */
    enum cflash_dtype odt = c->out_f32 ? CFLASH_DTYPE_F32 : c->dtype;
    kvc_make_out(s, &x->out, &x->lse, odt, c->strided);
    tbuf_poison(&x->out, POISON);
    tbuf_poison(&x->lse, POISON);
    const struct cflash_tensor *lsep = c->lse_null ? NULL : &x->lse.t;
    CHECK_STATUS(kvc_call(s, c->threads, &x->out.t, lsep), CFLASH_STATUS_OK);

    /* the append: exactly the new rows, every other cache byte unchanged */
    char msg[512];
    if (s->kc.bytes && memcmp(s->kc.base, x->kc_want, s->kc.bytes) != 0) {
        describe_cache_diff(s, &s->kc, x->kc_want, s->D, msg, sizeof msg);
        CHECK(0, "k_cache after the call: %s", msg);
    }
    if (c->vmode == VM_SEP && s->vc.bytes && memcmp(s->vc.base, x->vc_want, s->vc.bytes) != 0) {
        describe_cache_diff(s, &s->vc, x->vc_want, s->Dv, msg, sizeof msg);
        CHECK(0, "v_cache after the call: %s", msg);
    }
    CHECK(snap_same(&x->seq0, &s->seqt), "cache_seqlens was modified by the call");
    CHECK(snap_same(&x->bidx0, &s->bidx), "cache_batch_idx was modified by the call");
    CHECK(snap_same(&x->bt0, &s->bt), "block_table was modified by the call");
    CHECK(snap_same(&x->q0, &s->q), "q was modified by the call");
    CHECK(snap_same(&x->kn0, &s->kn), "k_new was modified by the call");
    CHECK(snap_same(&x->vn0, &s->vn), "v_new was modified by the call");

    /* the attention */
    int64_t gaps = tbuf_gap_changes(&x->out, POISON);
    CHECK(gaps == 0, "%lld bytes of out outside the view were written", (long long)gaps);
    if (lsep) {
        gaps = tbuf_gap_changes(&x->lse, POISON);
        CHECK(gaps == 0, "%lld bytes of lse outside the view were written", (long long)gaps);
    }
    load_result(s, &x->out.t, lsep, x->got_o, lsep ? x->got_l : NULL);
    const double *gl = lsep ? x->got_l : NULL;
    char who[64];
    snprintf(who, sizeof who, "kvcache %s (%s out)", kname(c->kernel), dtype_name(odt));
    if (!check_rows_exact(x, x->got_o, gl, who))
        return;
    snprintf(who, sizeof who, "kvcache %s vs dense ref", kname(c->kernel));
    if (!compare_spec(x, x->got_o, gl, x->rf_o, x->rf_l, half, e_naive_ref, who))
        return;
    snprintf(who, sizeof who, "kvcache %s vs fp64 oracle", kname(c->kernel));
    if (!compare_spec(x, x->got_o, gl, x->ex_o, x->ex_l, half, e_naive_ex, who))
        return;
}

static void kvc_check(const struct kvc_cfg *c)
{
    if (!require_kernel(c->kernel))
        return;
    struct kctx *x = calloc(1, sizeof *x);
    kvc_setup(&x->s, c);
    check_inner(x);
    kctx_free(x);
}

static void kvc_case(const void *arg) { kvc_check((const struct kvc_cfg *)arg); }

/* ---- thread determinism ------------------------------------------------------------------ */

static void threads_case(const void *arg)
{
    const struct kvc_cfg *c = arg;
    if (!require_kernel(c->kernel))
        return;
    struct kvc_cfg one = *c;
    one.threads = 1;
    kvc_check(&one); /* threads=1 is right ... */
    if (tfailed())
        return;
    /* ... and every other thread count reproduces its bytes (out, lse and the caches) */
    struct kvc s;
    kvc_setup(&s, c);
    enum cflash_dtype odt = c->out_f32 ? CFLASH_DTYPE_F32 : c->dtype;
    struct tbuf out1, lse1, out, lse;
    kvc_make_out(&s, &out1, &lse1, odt, c->strided);
    kvc_make_out(&s, &out, &lse, odt, c->strided);
    struct snap kc0, vc0, kc1, vc1;
    snap_take(&kc0, &s.kc);
    snap_take(&vc0, &s.vc);
    tbuf_poison(&out1, 0xa5);
    tbuf_poison(&lse1, 0xa5);
    char msg[256] = "";
    enum cflash_status st = kvc_call(&s, 1, &out1.t, &lse1.t);
    if (st != CFLASH_STATUS_OK)
        snprintf(msg, sizeof msg, "threads=1: status %s (%s)", cflash_status_string(st),
                 cflash_last_error());
    snap_take(&kc1, &s.kc);
    snap_take(&vc1, &s.vc);
    static const int counts[] = {2, 3, 0, 1};
    for (size_t i = 0; !msg[0] && i < sizeof counts / sizeof counts[0]; i++) {
        if (kc0.n)
            memcpy(s.kc.base, kc0.p, kc0.n); /* the cache as before the first call */
        if (vc0.n)
            memcpy(s.vc.base, vc0.p, vc0.n);
        tbuf_poison(&out, 0xa5);
        tbuf_poison(&lse, 0xa5);
        st = kvc_call(&s, counts[i], &out.t, &lse.t);
        if (st != CFLASH_STATUS_OK) {
            snprintf(msg, sizeof msg, "threads=%d: status %s (%s)", counts[i],
                     cflash_status_string(st), cflash_last_error());
        } else if (out.bytes && memcmp(out.base, out1.base, out.bytes) != 0) {
            size_t b = 0;
            while (out.base[b] == out1.base[b])
                b++;
            snprintf(msg, sizeof msg, "threads=%d: out differs from threads=1 (first at byte %zu of %zu)",
                     counts[i], b, out.bytes);
        } else if (lse.bytes && memcmp(lse.base, lse1.base, lse.bytes) != 0) {
            snprintf(msg, sizeof msg, "threads=%d: lse differs from threads=1", counts[i]);
        } else if (!snap_same(&kc1, &s.kc) || !snap_same(&vc1, &s.vc)) {
            snprintf(msg, sizeof msg, "threads=%d: the caches differ from threads=1", counts[i]);
        }
    }
    free(kc0.p);
    free(vc0.p);
    free(kc1.p);
    free(vc1.p);
    tbuf_free(&out1);
    tbuf_free(&lse1);
    tbuf_free(&out);
    tbuf_free(&lse);
    kvc_free(&s);
    CHECK(!msg[0], "%s", msg);
}

/* ---- misuse ------------------------------------------------------------------------------ */

/* A valid call, contiguous or paged, over buffers much larger than the views:
 *   q [2,3,4,8], out [2,3,4,6], lse [2,4,3], cache_seqlens {3,5}, k_new [2,2,2,8],
 *   v_new [2,2,2,6] (totals 5 and 7);
 *   contiguous: k_cache [2,8,2,8], v_cache [2,8,2,6];
 *   paged: k_cache [6,3,2,8], v_cache [6,3,2,6], block_table [2,3] = {{4,0,-1},{2,5,3}}
 *   (batch 0 appends into page 0, batch 1 into pages 5 and 3; the -1 is never used). */
#define MBUF 4096
struct mfix {
    float *qb, *kcb, *vcb, *knb, *vnb, *ob, *lb, *mb, *bb;
    int32_t seq[8], bidx[8], bt[16];
    struct cflash_tensor q, kc, vc, kn, vn, out, lse, seqt, bidxt, btt, mask, bias;
    const struct cflash_tensor *pq, *pkn, *pvn, *pout, *plse;
    struct cflash_kvcache cache;
    int cache_null;
    struct cflash_attn_params p;
    /* snapshots */
    unsigned char *snap[5];
    int32_t seq0[8], bidx0[8], bt0[16];
};

static float *mbuf_rand(struct rng *r)
{
    float *b = malloc(MBUF * sizeof *b);
    for (int i = 0; i < MBUF; i++)
        b[i] = (float)rng_normal(r);
    return b;
}

static void mfix_init(struct mfix *f, int paged)
{
    memset(f, 0, sizeof *f);
    struct rng r = {0x6b7663616368ull + (uint64_t)paged};
    f->qb = mbuf_rand(&r);
    f->kcb = mbuf_rand(&r);
    f->vcb = mbuf_rand(&r);
    f->knb = mbuf_rand(&r);
    f->vnb = mbuf_rand(&r);
    f->mb = mbuf_rand(&r);
    f->bb = mbuf_rand(&r);
    f->ob = malloc(MBUF * sizeof(float));
    f->lb = malloc(MBUF * sizeof(float));
    memset(f->ob, 0x7f, MBUF * sizeof(float));
    memset(f->lb, 0x7f, MBUF * sizeof(float));
    int64_t qs[4] = {2, 3, 4, 8}, os[4] = {2, 3, 4, 6}, ls[3] = {2, 4, 3}, kns[4] = {2, 2, 2, 8},
            vns[4] = {2, 2, 2, 6}, b1[1] = {2}, bts[2] = {2, 3}, ms[4] = {2, 1, 3, 7};
    f->q = tdesc(f->qb, CFLASH_DTYPE_F32, 4, qs);
    f->out = tdesc(f->ob, CFLASH_DTYPE_F32, 4, os);
    f->lse = tdesc(f->lb, CFLASH_DTYPE_F32, 3, ls);
    f->kn = tdesc(f->knb, CFLASH_DTYPE_F32, 4, kns);
    f->vn = tdesc(f->vnb, CFLASH_DTYPE_F32, 4, vns);
    f->seq[0] = 3;
    f->seq[1] = 5;
    f->seqt = tdesc(f->seq, CFLASH_DTYPE_I32, 1, b1);
    f->bidx[0] = 1;
    f->bidx[1] = 0;
    f->bidxt = tdesc(f->bidx, CFLASH_DTYPE_I32, 1, b1);
    static const int32_t bt[6] = {4, 0, -1, 2, 5, 3};
    memcpy(f->bt, bt, sizeof bt);
    f->btt = tdesc(f->bt, CFLASH_DTYPE_I32, 2, bts);
    /* a valid dense mask [B, 1, Lq, Lk_max] (u8) and bias [1, Hq, 1, 9] (f32), not passed
     * unless a case says so */
    f->mask = tdesc(f->mb, CFLASH_DTYPE_U8, 4, ms);
    memset(f->mb, 1, 2 * 3 * 7);
    int64_t bsh[4] = {1, 4, 1, 9};
    f->bias = tdesc(f->bb, CFLASH_DTYPE_F32, 4, bsh);
    if (paged) {
        int64_t ks[4] = {6, 3, 2, 8}, vs[4] = {6, 3, 2, 6};
        f->kc = tdesc(f->kcb, CFLASH_DTYPE_F32, 4, ks);
        f->vc = tdesc(f->vcb, CFLASH_DTYPE_F32, 4, vs);
        f->cache.block_table = &f->btt;
    } else {
        int64_t ks[4] = {2, 8, 2, 8}, vs[4] = {2, 8, 2, 6};
        f->kc = tdesc(f->kcb, CFLASH_DTYPE_F32, 4, ks);
        f->vc = tdesc(f->vcb, CFLASH_DTYPE_F32, 4, vs);
    }
    f->cache.k_cache = &f->kc;
    f->cache.v_cache = &f->vc;
    f->cache.cache_seqlens = &f->seqt;
    f->pq = &f->q;
    f->pkn = &f->kn;
    f->pvn = &f->vn;
    f->pout = &f->out;
    f->plse = &f->lse;
    f->p = cflash_attn_params_default();
    f->p.causal = 1;
    f->p.softcap = 10;
    f->p.kernel = CFLASH_KERNEL_REFERENCE;
}

static void mfix_snapshot(struct mfix *f)
{
    float *bufs[5] = {f->qb, f->kcb, f->vcb, f->knb, f->vnb};
    for (int i = 0; i < 5; i++) {
        f->snap[i] = malloc(MBUF * sizeof(float));
        memcpy(f->snap[i], bufs[i], MBUF * sizeof(float));
    }
    memcpy(f->seq0, f->seq, sizeof f->seq);
    memcpy(f->bidx0, f->bidx, sizeof f->bidx);
    memcpy(f->bt0, f->bt, sizeof f->bt);
}

/* "" if nothing changed, else what did */
static const char *mfix_changed(const struct mfix *f)
{
    static const char *names[5] = {"q", "k_cache", "v_cache", "k_new", "v_new"};
    float *bufs[5] = {f->qb, f->kcb, f->vcb, f->knb, f->vnb};
    for (int i = 0; i < 5; i++)
        if (memcmp(f->snap[i], bufs[i], MBUF * sizeof(float)) != 0)
            return names[i];
    if (memcmp(f->seq0, f->seq, sizeof f->seq) != 0)
        return "cache_seqlens";
    if (memcmp(f->bidx0, f->bidx, sizeof f->bidx) != 0)
        return "cache_batch_idx";
    if (memcmp(f->bt0, f->bt, sizeof f->bt) != 0)
        return "block_table";
    const unsigned char *o = (const unsigned char *)f->ob, *l = (const unsigned char *)f->lb;
    for (size_t i = 0; i < MBUF * sizeof(float); i++) {
        if (o[i] != 0x7f)
            return "out";
        if (l[i] != 0x7f)
            return "lse";
    }
    return "";
}

static void mfix_free(struct mfix *f)
{
    free(f->qb);
    free(f->kcb);
    free(f->vcb);
    free(f->knb);
    free(f->vnb);
    free(f->ob);
    free(f->lb);
    free(f->mb);
    free(f->bb);
    for (int i = 0; i < 5; i++)
        free(f->snap[i]);
}

static enum cflash_status mfix_call(struct mfix *f)
{
    return cflash_attn_kvcache(f->pq, f->cache_null ? NULL : &f->cache, f->pkn, f->pvn, f->pout,
                               f->plse, &f->p);
}

static void contig4(struct cflash_tensor *t)
{
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        t->stride[i] = s;
        s *= t->shape[i] > 0 ? t->shape[i] : 1;
    }
}

/* X(id, paged, expected status, names separated by '|', description) */
#define INV CFLASH_STATUS_INVALID_ARGUMENT
#define KV_MISUSE(X)                                                                            \
    X(CAP_CONTIG, 0, INV, "cache_seqlens|k_cache", "contig/capacity:seqlens[1]+Lnew=9>Lmax=8")  \
    X(CAP_CONTIG_NONEW, 0, INV, "cache_seqlens|k_cache", "contig/capacity:seqlens[1]=9>Lmax,no_k_new") \
    X(CAP_PAGED, 1, INV, "cache_seqlens|block_table", "paged/capacity:seqlens[1]+Lnew=10>3*3")   \
    X(CAP_PAGED_NONEW, 1, INV, "cache_seqlens|block_table", "paged/capacity:seqlens[1]=10,no_k_new") \
    X(PAGE_OOR, 1, INV, "block_table", "paged/block_table[1][0]=num_pages")                     \
    X(PAGE_HUGE, 1, INV, "block_table", "paged/block_table[1][2]=INT32_MAX")                    \
    X(PAGE_NEG_WRITTEN, 1, INV, "block_table", "paged/block_table[0][1]=-1(appended_page)")     \
    X(PAGE_NEG_READ, 1, INV, "block_table", "paged/block_table[1][0]=-1(read-only_page)")       \
    X(PAGE_NEG_NONEW, 1, INV, "block_table", "paged/block_table[1][1]=-1,no_k_new")             \
    X(PAGE_SHARED_APPEND, 1, INV, "block_table", "paged/two_batches_append_to_one_page")        \
    X(BIDX_OOR, 0, INV, "cache_batch_idx", "contig/cache_batch_idx={0,2},Bc=2")                 \
    X(BIDX_NEG, 0, INV, "cache_batch_idx", "contig/cache_batch_idx={-1,0}")                     \
    X(BIDX_DUP, 0, INV, "cache_batch_idx", "contig/cache_batch_idx={1,1}_while_appending")      \
    X(BIDX_F32, 0, INV, "cache_batch_idx", "contig/cache_batch_idx.dtype=f32")                  \
    X(BIDX_SHAPE, 0, INV, "cache_batch_idx", "contig/cache_batch_idx.shape=[3]")                \
    X(BIDX_WITH_BT, 1, INV, "cache_batch_idx|block_table", "paged/cache_batch_idx_with_block_table") \
    X(SEQ_NEG, 0, INV, "cache_seqlens", "contig/cache_seqlens[0]=-1")                           \
    X(SEQ_NEG_PAGED, 1, INV, "cache_seqlens", "paged/cache_seqlens[1]=-2")                      \
    X(SEQ_F32, 0, INV, "cache_seqlens", "contig/cache_seqlens.dtype=f32")                       \
    X(SEQ_F32_PAGED, 1, INV, "cache_seqlens", "paged/cache_seqlens.dtype=f32")                  \
    X(SEQ_SHAPE, 0, INV, "cache_seqlens", "contig/cache_seqlens.shape=[1]")                     \
    X(SEQ_NULL, 0, INV, "cache_seqlens", "contig/cache_seqlens=NULL")                           \
    X(BT_F32, 1, INV, "block_table", "paged/block_table.dtype=f32")                             \
    X(BT_SHAPE_B, 1, INV, "block_table", "paged/block_table.shape[0]=1")                        \
    X(BT_NDIM1, 1, INV, "block_table", "paged/block_table.ndim=1")                              \
    X(KNEW_DTYPE, 0, INV, "k_new", "contig/k_new.dtype=f16")                                    \
    X(KNEW_DTYPE_PAGED, 1, INV, "k_new", "paged/k_new.dtype=bf16")                              \
    X(VNEW_DTYPE, 0, INV, "v_new", "contig/v_new.dtype=bf16")                                   \
    X(KNEW_HK, 0, INV, "k_new", "contig/k_new.shape[2]=1!=Hk")                                  \
    X(KNEW_D, 0, INV, "k_new", "contig/k_new.shape[3]=7!=D")                                    \
    X(KNEW_D_PAGED, 1, INV, "k_new", "paged/k_new.shape[3]=7!=D")                               \
    X(KNEW_B, 0, INV, "k_new", "contig/k_new.shape[0]=1!=B")                                    \
    X(KNEW_STRIDE, 0, INV, "k_new", "contig/k_new.stride[3]=2")                                 \
    X(VNEW_L, 0, INV, "v_new", "contig/v_new.shape[1]=1!=Lnew")                                 \
    X(VNEW_L_PAGED, 1, INV, "v_new", "paged/v_new.shape[1]=3!=Lnew")                            \
    X(VNEW_DV, 0, INV, "v_new", "contig/v_new.shape[3]=5!=Dv")                                  \
    X(VNEW_HK, 1, INV, "v_new", "paged/v_new.shape[2]=1!=Hk")                                   \
    X(VCACHE_L, 0, INV, "v_cache", "contig/v_cache.shape[1]=7!=k_cache_Lmax")                   \
    X(VCACHE_PAGES, 1, INV, "v_cache", "paged/v_cache.shape[0]=5!=num_pages")                   \
    X(VCACHE_PS, 1, INV, "v_cache", "paged/v_cache.shape[1]=2!=page_size")                      \
    X(VCACHE_HK, 0, INV, "v_cache", "contig/v_cache.shape[2]=1!=Hk")                            \
    X(VCACHE_DTYPE, 0, INV, "v_cache", "contig/v_cache.dtype=f16")                              \
    X(KCACHE_DTYPE, 0, INV, "k_cache", "contig/k_cache.dtype=bf16")                             \
    X(KCACHE_D, 0, INV, "k_cache", "contig/k_cache.shape[3]=7!=D")                              \
    X(KCACHE_B3, 0, INV, "k_cache", "contig/k_cache.shape[0]=3!=B_without_cache_batch_idx")     \
    X(KCACHE_B1, 0, INV, "k_cache", "contig/k_cache.shape[0]=1!=B_without_cache_batch_idx")     \
    X(KCACHE_NULL, 0, INV, "k_cache", "contig/k_cache=NULL")                                    \
    X(KCACHE_STRIDE0, 0, INV, "k_cache", "contig/k_cache.stride[1]=0(rows_overlap)")           \
    X(PAGESIZE0, 1, INV, "k_cache", "paged/page_size=0")                                        \
    X(VNEW_NO_VCACHE, 0, INV, "v_new", "contig/v_new_given_with_v_cache=NULL")                  \
    X(VNEW_MISSING, 0, INV, "v_new", "contig/v_new=NULL_with_v_cache_and_k_new")               \
    X(VNEW_WITHOUT_KNEW, 0, INV, "k_new", "contig/k_new=NULL_with_v_new")                       \
    X(VNEW_WITHOUT_KNEW_PAGED, 1, INV, "k_new", "paged/k_new=NULL_with_v_new")                  \
    X(Q_DTYPE, 0, INV, "q|k_cache", "contig/q.dtype=f16")                                       \
    X(Q_NULL, 0, INV, "q", "contig/q=NULL")                                                     \
    X(Q_HQ, 0, INV, "q|k_cache", "contig/Hq=3_not_a_multiple_of_Hk")                            \
    X(OUT_L, 0, INV, "out", "contig/out.shape[1]=2!=Lq")                                        \
    X(OUT_DV, 1, INV, "out", "paged/out.shape[3]=5!=Dv")                                        \
    X(LSE_L, 0, INV, "lse", "contig/lse.shape[2]=2!=Lq")                                        \
    X(LSE_DTYPE, 1, INV, "lse", "paged/lse.dtype=f16")                                          \
    X(CACHE_NULL, 0, INV, "cache", "contig/cache=NULL")                                         \
    X(MASK_KEY_SIDE, 0, INV, "mask", "contig/mask_layout=KEY_SIDE")                             \
    X(MASK_QUERY_SIDE, 1, INV, "mask", "paged/mask_layout=QUERY_SIDE")                          \
    X(BIAS_KEY_SIDE, 1, INV, "bias", "paged/bias_layout=KEY_SIDE")                              \
    X(BIAS_QUERY_SIDE, 0, INV, "bias", "contig/bias_layout=QUERY_SIDE")                         \
    X(MASK_LK_SHORT, 0, INV, "mask", "contig/mask.shape[3]=6<longest_total_7")                  \
    X(MASK_LK_SHORT_PAGED, 1, INV, "mask", "paged/mask.shape[3]=6<longest_total_7")             \
    X(BIAS_LK_SHORT_NONEW, 0, INV, "bias", "contig/bias.shape[3]=4<longest_total_5,no_k_new")    \
    X(MASK_B, 0, INV, "mask", "contig/mask.shape[0]=3!=B")                                      \
    X(MASK_LQ, 1, INV, "mask", "paged/mask.shape[2]=2!=Lq")                                     \
    X(MASK_LQ_BIG, 0, INV, "mask", "contig/mask.shape[2]=4!=Lq")                                \
    X(MASK_HV, 0, INV, "mask", "contig/mask.shape[1]=3")                                        \
    X(MASK_NDIM, 1, INV, "mask", "paged/mask.ndim=3")                                           \
    X(MASK_DTYPE, 0, INV, "mask", "contig/mask.dtype=f32")                                      \
    X(BIAS_DTYPE, 1, INV, "bias", "paged/bias.dtype=u8")                                        \
    X(BIAS_HV, 1, INV, "bias", "paged/bias.shape[1]=3")

enum kv_misuse_id {
#define X(id, pg, st, names, desc) KM_##id,
    KV_MISUSE(X)
#undef X
        N_KV_MISUSE
};

static const struct {
    int paged;
    enum cflash_status st;
    const char *names, *desc;
} km_info[N_KV_MISUSE] = {
#define X(id, pg, st, names, desc) {pg, st, names, desc},
    KV_MISUSE(X)
#undef X
};

static void km_mutate(struct mfix *f, enum kv_misuse_id id)
{
    switch (id) {
    case KM_CAP_CONTIG: f->seq[1] = 7; break;
    case KM_CAP_CONTIG_NONEW: f->seq[1] = 9; f->pkn = f->pvn = NULL; break;
    case KM_CAP_PAGED: f->seq[1] = 8; break;
    case KM_CAP_PAGED_NONEW: f->seq[1] = 10; f->pkn = f->pvn = NULL; break;
    case KM_PAGE_OOR: f->bt[3] = 6; break;
    case KM_PAGE_HUGE: f->bt[5] = INT32_MAX; break;
    case KM_PAGE_NEG_WRITTEN: f->bt[1] = -1; break;
    case KM_PAGE_NEG_READ: f->bt[3] = -1; break;
    case KM_PAGE_NEG_NONEW: f->bt[4] = -1; f->pkn = f->pvn = NULL; break;
    case KM_PAGE_SHARED_APPEND: f->bt[4] = f->bt[1]; break;
    case KM_BIDX_OOR: f->bidx[0] = 0; f->bidx[1] = 2; f->cache.cache_batch_idx = &f->bidxt; break;
    case KM_BIDX_NEG: f->bidx[0] = -1; f->bidx[1] = 0; f->cache.cache_batch_idx = &f->bidxt; break;
    case KM_BIDX_DUP: f->bidx[0] = f->bidx[1] = 1; f->cache.cache_batch_idx = &f->bidxt; break;
    case KM_BIDX_F32: f->bidxt.dtype = CFLASH_DTYPE_F32; f->cache.cache_batch_idx = &f->bidxt; break;
    case KM_BIDX_SHAPE: f->bidxt.shape[0] = 3; f->cache.cache_batch_idx = &f->bidxt; break;
    case KM_BIDX_WITH_BT: f->bidx[0] = 0; f->bidx[1] = 1; f->cache.cache_batch_idx = &f->bidxt; break;
    case KM_SEQ_NEG: f->seq[0] = -1; break;
    case KM_SEQ_NEG_PAGED: f->seq[1] = -2; break;
    case KM_SEQ_F32: f->seqt.dtype = CFLASH_DTYPE_F32; break;
    case KM_SEQ_F32_PAGED: f->seqt.dtype = CFLASH_DTYPE_F32; break;
    case KM_SEQ_SHAPE: f->seqt.shape[0] = 1; break;
    case KM_SEQ_NULL: f->cache.cache_seqlens = NULL; break;
    case KM_BT_F32: f->btt.dtype = CFLASH_DTYPE_F32; break;
    case KM_BT_SHAPE_B: f->btt.shape[0] = 1; break;
    case KM_BT_NDIM1: f->btt.ndim = 1; f->btt.shape[0] = 6; f->btt.stride[0] = 1; break;
    case KM_KNEW_DTYPE: f->kn.dtype = CFLASH_DTYPE_F16; break;
    case KM_KNEW_DTYPE_PAGED: f->kn.dtype = CFLASH_DTYPE_BF16; break;
    case KM_VNEW_DTYPE: f->vn.dtype = CFLASH_DTYPE_BF16; break;
    case KM_KNEW_HK: f->kn.shape[2] = 1; break;
    case KM_KNEW_D: f->kn.shape[3] = 7; break;
    case KM_KNEW_D_PAGED: f->kn.shape[3] = 7; break;
    case KM_KNEW_B: f->kn.shape[0] = 1; break;
    case KM_KNEW_STRIDE: f->kn.stride[3] = 2; break;
    case KM_VNEW_L: f->vn.shape[1] = 1; break;
    case KM_VNEW_L_PAGED: f->vn.shape[1] = 3; break;
    case KM_VNEW_DV: f->vn.shape[3] = 5; break;
    case KM_VNEW_HK: f->vn.shape[2] = 1; break;
    case KM_VCACHE_L: f->vc.shape[1] = 7; break;
    case KM_VCACHE_PAGES: f->vc.shape[0] = 5; break;
    case KM_VCACHE_PS: f->vc.shape[1] = 2; break;
    case KM_VCACHE_HK: f->vc.shape[2] = 1; break;
    case KM_VCACHE_DTYPE: f->vc.dtype = CFLASH_DTYPE_F16; break;
    case KM_KCACHE_DTYPE: f->kc.dtype = CFLASH_DTYPE_BF16; break;
    case KM_KCACHE_D: f->kc.shape[3] = 7; break;
    case KM_KCACHE_B3: f->kc.shape[0] = f->vc.shape[0] = 3; break;
    case KM_KCACHE_B1: f->kc.shape[0] = f->vc.shape[0] = 1; break;
    case KM_KCACHE_NULL: f->cache.k_cache = NULL; break;
    case KM_KCACHE_STRIDE0: f->kc.stride[1] = 0; break;
    case KM_PAGESIZE0: f->kc.shape[1] = f->vc.shape[1] = 0; break;
    case KM_VNEW_NO_VCACHE:
        /* V := K makes Dv = D = 8: out and v_new are given that shape, so v_new is the only
         * inconsistency */
        f->cache.v_cache = NULL;
        f->out.shape[3] = 8;
        contig4(&f->out);
        f->vn.shape[3] = 8;
        contig4(&f->vn);
        break;
    case KM_VNEW_MISSING: f->pvn = NULL; break;
    case KM_VNEW_WITHOUT_KNEW: f->pkn = NULL; break;
    case KM_VNEW_WITHOUT_KNEW_PAGED: f->pkn = NULL; break;
    case KM_Q_DTYPE: f->q.dtype = CFLASH_DTYPE_F16; break;
    case KM_Q_NULL: f->pq = NULL; break;
    case KM_Q_HQ:
        f->q.shape[2] = f->out.shape[2] = 3;
        f->lse.shape[1] = 3;
        contig4(&f->q);
        contig4(&f->out);
        f->lse.stride[0] = 9;
        f->lse.stride[1] = 3;
        break;
    case KM_OUT_L: f->out.shape[1] = 2; break;
    case KM_OUT_DV: f->out.shape[3] = 5; break;
    case KM_LSE_L: f->lse.shape[2] = 2; break;
    case KM_LSE_DTYPE: f->lse.dtype = CFLASH_DTYPE_F16; break;
    case KM_CACHE_NULL: f->cache_null = 1; break;
    case KM_MASK_KEY_SIDE: {
        int64_t sh[2] = {12, 1}; /* the logical keys of both entries, packed */
        f->mask = tdesc(f->mb, CFLASH_DTYPE_U8, 2, sh);
        f->p.mask = &f->mask;
        f->p.mask_layout = CFLASH_LAYOUT_KEY_SIDE;
        break;
    }
    case KM_MASK_QUERY_SIDE: {
        int64_t sh[3] = {6, 1, 7};
        f->mask = tdesc(f->mb, CFLASH_DTYPE_U8, 3, sh);
        f->p.mask = &f->mask;
        f->p.mask_layout = CFLASH_LAYOUT_QUERY_SIDE;
        break;
    }
    case KM_BIAS_KEY_SIDE:
    case KM_BIAS_QUERY_SIDE: {
        const int ks = id == KM_BIAS_KEY_SIDE;
        int64_t sh2[2] = {12, 4}, sh3[3] = {6, 4, 7};
        f->bias = tdesc(f->bb, CFLASH_DTYPE_F32, ks ? 2 : 3, ks ? sh2 : sh3);
        f->p.bias = &f->bias;
        f->p.bias_layout = ks ? CFLASH_LAYOUT_KEY_SIDE : CFLASH_LAYOUT_QUERY_SIDE;
        break;
    }
    case KM_MASK_LK_SHORT:
    case KM_MASK_LK_SHORT_PAGED: f->mask.shape[3] = 6; contig4(&f->mask); f->p.mask = &f->mask; break;
    case KM_BIAS_LK_SHORT_NONEW:
        f->pkn = f->pvn = NULL; /* totals 3 and 5 */
        f->bias.shape[3] = 4;
        contig4(&f->bias);
        f->p.bias = &f->bias;
        break;
    case KM_MASK_B: f->mask.shape[0] = 3; contig4(&f->mask); f->p.mask = &f->mask; break;
    case KM_MASK_LQ: f->mask.shape[2] = 2; contig4(&f->mask); f->p.mask = &f->mask; break;
    case KM_MASK_LQ_BIG: f->mask.shape[2] = 4; contig4(&f->mask); f->p.mask = &f->mask; break;
    case KM_MASK_HV: f->mask.shape[1] = 3; contig4(&f->mask); f->p.mask = &f->mask; break;
    case KM_MASK_NDIM: f->mask.ndim = 3; f->p.mask = &f->mask; break;
    case KM_MASK_DTYPE: f->mask.dtype = CFLASH_DTYPE_F32; f->p.mask = &f->mask; break;
    case KM_BIAS_DTYPE: f->bias.dtype = CFLASH_DTYPE_U8; f->p.bias = &f->bias; break;
    case KM_BIAS_HV: f->bias.shape[1] = 3; contig4(&f->bias); f->p.bias = &f->bias; break;
    case N_KV_MISUSE: break;
    }
}

static void misuse_case(const void *arg)
{
    enum kv_misuse_id id = *(const enum kv_misuse_id *)arg;
    struct mfix f;
    mfix_init(&f, km_info[id].paged);
    km_mutate(&f, id);
    mfix_snapshot(&f);
    enum cflash_status st = mfix_call(&f);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", cflash_last_error());
    const char *changed = mfix_changed(&f);
    mfix_free(&f);
    CHECK(st == km_info[id].st, "status %s, want %s (message \"%s\")", cflash_status_string(st),
          cflash_status_string(km_info[id].st), msg);
    CHECK(!changed[0], "%s was written by a call that failed (message \"%s\")", changed, msg);
    CHECK(msg[0], "cflash_last_error() is empty");
    CHECK(msg_names_any(msg, km_info[id].names), "message \"%s\" does not name %s", msg,
          km_info[id].names);
}

/* The fixture is valid as it stands (so each misuse case breaks exactly one rule), appends,
 * writes out/lse; and cache_batch_idx duplicates are fine when nothing is appended. */
static void misuse_baseline_case(const void *arg)
{
    int paged = *(const int *)arg;
    struct mfix f;
    mfix_init(&f, paged);
    mfix_snapshot(&f);
    enum cflash_status st = mfix_call(&f);
    char msg[512];
    snprintf(msg, sizeof msg, "%s", cflash_last_error());
    const char *changed = mfix_changed(&f);
    int kc_changed = memcmp(f.snap[1], f.kcb, MBUF * sizeof(float)) != 0;
    /* the append is idempotent: a second identical call gives the same bytes */
    enum cflash_status st2 = CFLASH_STATUS_OK;
    if (!paged) {
        f.bidx[0] = f.bidx[1] = 1; /* duplicates, no append: valid */
        f.cache.cache_batch_idx = &f.bidxt;
        f.pkn = f.pvn = NULL;
        f.plse = NULL;
        st2 = mfix_call(&f);
    } else {
        f.bt[3] = f.bt[0]; /* a read-only prefix page shared by both batch entries: valid */
        f.pkn = f.pvn = NULL;
        st2 = mfix_call(&f);
    }
    char msg2[512];
    snprintf(msg2, sizeof msg2, "%s", cflash_last_error());
    /* the DENSE mask [2,1,3,7] and bias [1,4,1,9] (longer than the longest total) are valid */
    struct mfix g;
    mfix_init(&g, paged);
    g.p.mask = &g.mask;
    g.p.bias = &g.bias;
    enum cflash_status st3 = mfix_call(&g);
    char msg3[512];
    snprintf(msg3, sizeof msg3, "%s", cflash_last_error());
    int g_written = ((const unsigned char *)g.ob)[0] != 0x7f;
    mfix_free(&g);
    mfix_free(&f);
    CHECK(st3 == CFLASH_STATUS_OK && g_written, "a valid DENSE mask and bias: %s (%s)",
          cflash_status_string(st3), msg3);
    CHECK(st == CFLASH_STATUS_OK, "valid baseline call returned %s (%s)", cflash_status_string(st), msg);
    CHECK(kc_changed, "valid baseline call appended nothing to k_cache");
    CHECK(changed[0], "valid baseline call wrote nothing");
    CHECK(st2 == CFLASH_STATUS_OK, "%s without k_new returned %s (%s)",
          paged ? "a shared read-only page" : "duplicate cache_batch_idx", cflash_status_string(st2), msg2);
}

/* ---- registration ------------------------------------------------------------------------ */

static void add(const char *prefix, struct kvc_cfg c, tcase_fn fn)
{
    kvc_normalize(&c);
    char name[512];
    kvc_name(name, sizeof name, prefix, &c);
    tcase_add(name, fn, &c, sizeof c);
}

static void addc(struct kvc_cfg c) { add("kvcache", c, kvc_case); }

static const enum cflash_dtype dtypes[3] = {CFLASH_DTYPE_F32, CFLASH_DTYPE_F16, CFLASH_DTYPE_BF16};

static void register_kernel(enum cflash_kernel k)
{
    struct kvc_cfg c;
    /* dtypes on both cache kinds */
    for (int di = 0; di < 3; di++)
        for (int pg = 0; pg < 2; pg++) {
            c = kdef(k, dtypes[di]);
            c.causal = 1;
            c.page = pg ? 3 : 0;
            addc(c);
            if (di) {
                c.out_f32 = 1;
                addc(c);
            }
        }
    /* Lnew x Lq (Lq != Lnew too), contiguous and paged, causal */
    static const int lnews[4] = {0, 1, 4, 17}, lqs[3] = {1, 4, 9};
    for (int a = 0; a < 4; a++)
        for (int q = 0; q < 3; q++)
            for (int pg = 0; pg < 2; pg++) {
                c = kdef(k, CFLASH_DTYPE_F32);
                c.Lnew = lnews[a];
                c.Lq = lqs[q];
                c.causal = 1;
                c.page = pg ? 16 : 0;
                addc(c);
            }
    /* k_new given but empty; Lq = 0 (append only) */
    c = kdef(k, CFLASH_DTYPE_F16);
    c.Lnew = 0;
    c.knew_empty = 1;
    c.causal = 1;
    addc(c);
    c.page = 3;
    addc(c);
    c = kdef(k, CFLASH_DTYPE_F32);
    c.Lq = 0;
    addc(c);
    c.page = 1;
    addc(c);
    /* page sizes, shuffled tables, causal on/off, sequences ending at capacity */
    static const int pages[4] = {1, 3, 16, 256};
    for (int pi = 0; pi < 4; pi++)
        for (int causal = 0; causal < 2; causal++) {
            c = kdef(k, causal ? CFLASH_DTYPE_BF16 : CFLASH_DTYPE_F32);
            c.page = pages[pi];
            c.causal = causal;
            c.B = 4;
            int seq[4] = {7, 0, 20, 3};
            memcpy(c.seq, seq, sizeof seq);
            c.Lnew = 5;
            c.Lq = causal ? 9 : 4;
            addc(c);
            c.at_cap = 1;
            c.share = 1;
            c.Lnew = 1;
            c.Lq = 1;
            addc(c);
        }
    /* shared read-only prefix pages with long prefixes */
    c = kdef(k, CFLASH_DTYPE_F16);
    c.page = 4;
    c.share = 1;
    c.B = 3;
    c.seq[0] = 37;
    c.seq[1] = 41;
    c.seq[2] = 16;
    c.Lnew = 3;
    c.Lq = 3;
    c.causal = 1;
    addc(c);
    /* contiguous: at capacity, cache_batch_idx permutation / subset of Bc > B / duplicates */
    for (int di = 0; di < 3; di += 2) {
        c = kdef(k, dtypes[di]);
        c.causal = 1;
        c.at_cap = 1;
        addc(c);
        c.bidx = BIDX_PERM;
        addc(c);
        c.bidx = BIDX_SUBSET;
        c.at_cap = 0;
        addc(c);
        c.Lnew = 1;
        c.Lq = 1;
        addc(c);
        c.bidx = BIDX_DUP;
        c.Lnew = 0;
        c.Lq = 4;
        addc(c);
    }
    /* all sequences empty before the call; all keys empty (0 + 0) */
    c = kdef(k, CFLASH_DTYPE_F32);
    memset(c.seq, 0, sizeof c.seq);
    c.causal = 1;
    addc(c);
    c.page = 16;
    addc(c);
    c.Lnew = 0;
    c.Lq = 3;
    c.sinks = 1;
    addc(c);
    c.page = 0;
    c.sinks = 0;
    addc(c);
    /* GQA / MQA / MHA */
    static const int heads[4][2] = {{4, 4}, {8, 2}, {8, 1}, {6, 3}};
    for (int hi = 0; hi < 4; hi++)
        for (int pg = 0; pg < 2; pg++) {
            c = kdef(k, hi & 1 ? CFLASH_DTYPE_BF16 : CFLASH_DTYPE_F32);
            c.Hq = heads[hi][0];
            c.Hk = heads[hi][1];
            c.page = pg ? 16 : 0;
            c.causal = 1;
            addc(c);
        }
    /* head dims, Dv != D */
    static const int dims[6][2] = {{64, 32}, {32, 96}, {128, 128}, {7, 5}, {256, 256}, {1, 3}};
    for (int di = 0; di < 6; di++)
        for (int t = 0; t < 3; t++) {
            c = kdef(k, dtypes[t]);
            c.D = dims[di][0];
            c.Dv = dims[di][1];
            c.page = t == 1 ? 0 : 3;
            c.causal = t != 2;
            addc(c);
        }
    /* masks and extras */
    for (int di = 0; di < 3; di++)
        for (int pg = 0; pg < 2; pg++) {
            c = kdef(k, dtypes[di]);
            c.page = pg ? 16 : 0;
            c.Lq = 9;
            c.Lnew = 4;
            c.causal = 1;
            c.wl = 3;
            addc(c); /* causal + left window */
            c.causal = 0;
            c.wl = 2;
            c.wr = 5;
            addc(c); /* two-sided window */
            c = kdef(k, dtypes[di]);
            c.page = pg ? 3 : 0;
            c.causal = 1;
            c.alibi = 1;
            addc(c);
            c.alibi = 2;
            c.causal = 0;
            addc(c);
            c = kdef(k, dtypes[di]);
            c.page = pg ? 1 : 0;
            c.softcap = 20;
            c.causal = 1;
            addc(c);
            c.softcap = 0;
            c.sinks = 1;
            c.Lq = 9;
            addc(c);
            c.lse_null = 1;
            addc(c);
            c = kdef(k, dtypes[di]);
            c.page = pg ? 16 : 0;
            c.causal = 1;
            c.align = CFLASH_ALIGN_TOP_LEFT;
            c.Lq = 9;
            addc(c);
            c = kdef(k, dtypes[di]);
            c.page = pg ? 3 : 0;
            c.causal = 1;
            c.wl = 5;
            c.alibi = 2;
            c.softcap = 15;
            c.sinks = 1;
            c.scale = 0.2f;
            c.strided = 1;
            c.Lq = 9;
            c.Lnew = 17;
            addc(c); /* everything at once, strided layouts */
            c.lse_null = 1;
            c.strided = 0;
            c.bidx = pg ? 0 : BIDX_SUBSET;
            addc(c);
        }
    /* MLA: V := K (v_cache and v_new NULL) and V := K[..., :Dv] (views) */
    for (int di = 0; di < 3; di++)
        for (int pg = 0; pg < 2; pg++) {
            c = kdef(k, dtypes[di]);
            c.Hq = 8;
            c.Hk = 1;
            c.vmode = VM_NULL;
            c.page = pg ? 16 : 0;
            c.causal = 1;
            addc(c);
            c.Lnew = 0;
            addc(c);
            c = kdef(k, dtypes[di]);
            c.Hq = 8;
            c.Hk = 1;
            c.D = 64;
            c.Dv = 32;
            c.vmode = VM_VIEW;
            c.page = pg ? 3 : 0;
            c.causal = 1;
            c.strided = pg;
            addc(c);
            c = kdef(k, dtypes[di]);
            c.Hq = 4;
            c.Hk = 1;
            c.D = 576;
            c.Dv = 512;
            c.vmode = VM_VIEW;
            c.B = 2;
            c.seq[0] = 3;
            c.seq[1] = 7;
            c.Lnew = 2;
            c.Lq = 2;
            c.page = pg ? 4 : 0;
            c.causal = 1;
            addc(c);
        }
    /* DENSE masks and biases over the logical keys: contiguous, cache_batch_idx, paged (page
     * sizes 1, 3, 16) with append */
    for (int di = 0; di < 3; di++)
        for (int v = 0; v < 6; v++) {
            c = kdef(k, dtypes[di]);
            c.seed = 0x6d6b00 + (uint64_t)(di * 8 + v);
            c.causal = v % 2;
            c.Lq = v == 3 ? 1 : 5;
            c.Lnew = v == 4 ? 0 : 3;
            c.page = v == 0 ? 0 : v == 1 ? 0 : v == 2 ? 1 : v == 3 ? 3 : 16;
            if (v == 5)
                c.page = 3;
            c.bidx = v == 1 ? BIDX_SUBSET : BIDX_NONE;
            c.m.on = v != 5;
            c.m.hv = (v + di) % 3;
            c.m.storage = v % 3;
            c.m.b1 = v == 1;
            c.m.q1 = v == 2;
            c.m.grow = v == 0 ? 6 : 0;
            c.m.emptyrows = v == 3 || v == 4;
            c.bi.on = v != 0;
            c.bi.hv = (v + 2 * di + 1) % 3;
            c.bi.storage = (v + 1) % 3;
            c.bi.dtype = dtypes[(di + v) % 3];
            c.bi.k1 = v == 2;
            c.bi.b1 = v == 4;
            c.bi.grow = v == 3 ? 2 : 0;
            c.sinks = v == 3;
            c.softcap = v == 4 ? 6.0f : 0.0f;
            addc(c);
        }
    /* everything at once: GQA, window, ALiBi, sinks, strided caches, out f32 */
    c = kdef(k, CFLASH_DTYPE_BF16);
    c.seed = 0x6d6b77;
    c.Hq = 8;
    c.Hk = 2;
    c.page = 3;
    c.share = 1;
    c.Lq = 4;
    c.Lnew = 4;
    c.causal = 1;
    c.wl = 6;
    c.alibi = 2;
    c.sinks = 1;
    c.strided = 1;
    c.out_f32 = 1;
    c.m.on = 1;
    c.m.hv = 1;
    c.m.emptyrows = 1;
    c.m.storage = 2;
    c.bi.on = 1;
    c.bi.hv = 2;
    c.bi.dtype = CFLASH_DTYPE_F16;
    c.bi.storage = 1;
    addc(c);
    /* MLA (V := K[..., :Dv]) with a mask */
    c = kdef(k, CFLASH_DTYPE_F32);
    c.seed = 0x6d6b78;
    c.Hq = 4;
    c.Hk = 1;
    c.D = 64;
    c.Dv = 32;
    c.vmode = VM_VIEW;
    c.page = 16;
    c.causal = 1;
    c.m.on = 1;
    c.m.hv = 2;
    addc(c);
    /* split-KV decode (long caches) with a mask and a bias */
    c = kdef(k, CFLASH_DTYPE_F32);
    c.seed = 0x6d6b79;
    c.B = 2;
    c.Hq = 4;
    c.Hk = 1;
    c.D = c.Dv = 16;
    c.seq[0] = 9000;
    c.seq[1] = 4100;
    c.Lnew = 1;
    c.Lq = 1;
    c.page = 64;
    c.sinks = 1;
    c.m.on = 1;
    c.m.hv = 1;
    c.bi.on = 1;
    c.bi.hv = 2;
    c.bi.b1 = 1;
    c.bi.dtype = CFLASH_DTYPE_BF16;
    addc(c);
    /* a seeded random sweep over all axes */
    struct rng r = {0x4b56434143484555ull ^ (uint64_t)k};
    for (int n = 0; n < 12; n++) {
        c = kdef(k, dtypes[rng_int(&r, 3)]);
        c.seed = rng_next(&r) & 0xffffffffull;
        c.B = 1 + (int)rng_int(&r, KMAXB);
        const int hk = 1 + (int)rng_int(&r, 3);
        c.Hk = hk;
        c.Hq = hk * (1 + (int)rng_int(&r, 4));
        c.vmode = (int)rng_int(&r, 3);
        if (c.vmode == VM_SEP) {
            c.D = 1 + (int)rng_int(&r, 96);
            c.Dv = 1 + (int)rng_int(&r, 96);
        } else {
            c.Hk = 1;
            c.Hq = 1 + (int)rng_int(&r, 8);
            c.D = 8 + (int)rng_int(&r, 120);
            c.Dv = c.vmode == VM_VIEW ? 1 + (int)rng_int(&r, c.D) : c.D;
        }
        for (int b = 0; b < c.B; b++)
            c.seq[b] = rng_int(&r, 4) == 0 ? 0 : (int)rng_int(&r, 70);
        c.Lnew = (int)rng_int(&r, 20);
        c.Lq = (int)rng_int(&r, 12);
        c.page = rng_int(&r, 3) == 0 ? 0 : 1 + (int)rng_int(&r, 20);
        if (!c.page)
            c.bidx = (int)rng_int(&r, 3); /* none, perm, subset */
        else
            c.share = (int)rng_int(&r, 2);
        c.at_cap = (int)rng_int(&r, 2);
        c.causal = (int)rng_int(&r, 2);
        if (rng_int(&r, 3) == 0)
            c.wl = rng_int(&r, 10);
        if (rng_int(&r, 4) == 0)
            c.wr = rng_int(&r, 10);
        c.alibi = (int)rng_int(&r, 3);
        c.softcap = rng_int(&r, 3) == 0 ? 25.0f : 0.0f;
        c.sinks = (int)rng_int(&r, 2);
        c.lse_null = rng_int(&r, 4) == 0;
        c.strided = (int)rng_int(&r, 2);
        c.out_f32 = c.dtype != CFLASH_DTYPE_F32 && rng_int(&r, 2);
        addc(c);
    }
    /* thread determinism on paged caches */
    c = kdef(k, CFLASH_DTYPE_BF16);
    c.B = 2;
    c.Hq = 8;
    c.Hk = 2;
    c.seq[0] = 300;
    c.seq[1] = 517;
    c.Lnew = 1;
    c.Lq = 1;
    c.page = 16;
    c.alibi = 1;
    add("kvcache/threads", c, threads_case);
    c = kdef(k, CFLASH_DTYPE_F16);
    c.B = 3;
    c.Hq = 6;
    c.Hk = 3;
    c.seq[0] = 100;
    c.seq[1] = 37;
    c.seq[2] = 0;
    c.Lnew = 9;
    c.Lq = 9;
    c.page = 3;
    c.share = 1;
    c.causal = 1;
    c.wl = 40;
    c.sinks = 1;
    add("kvcache/threads", c, threads_case);
    c.m.on = 1;
    c.m.hv = 2;
    c.m.emptyrows = 1;
    c.bi.on = 1;
    c.bi.q1 = 1;
    c.bi.dtype = CFLASH_DTYPE_F16;
    add("kvcache/threads", c, threads_case);
    c = kdef(k, CFLASH_DTYPE_F32);
    c.B = 2;
    c.Hq = 4;
    c.Hk = 1;
    c.D = 576;
    c.Dv = 512;
    c.vmode = VM_VIEW;
    c.seq[0] = 70;
    c.seq[1] = 129;
    c.Lnew = 2;
    c.Lq = 2;
    c.page = 64;
    c.causal = 1;
    add("kvcache/threads", c, threads_case);
}

void register_kvcache_tests(void)
{
    for (int ki = 0; ki < N_ALL_KERNELS; ki++)
        register_kernel(all_kernels[ki]);
    char name[256];
    static const int paged[2] = {0, 1};
    for (int pg = 0; pg < 2; pg++) {
        snprintf(name, sizeof name, "kvcache/misuse/%s/baseline_ok", pg ? "paged" : "contig");
        tcase_add(name, misuse_baseline_case, &paged[pg], sizeof paged[pg]);
    }
    for (int i = 0; i < N_KV_MISUSE; i++) {
        enum kv_misuse_id id = (enum kv_misuse_id)i;
        snprintf(name, sizeof name, "kvcache/misuse/%s", km_info[i].desc);
        tcase_add(name, misuse_case, &id, sizeof id);
    }
}
