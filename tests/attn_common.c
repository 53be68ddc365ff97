/*
 * attn_common.c - builds the tensors of one attention test configuration and checks a kernel
 * against the fp64 reference kernel with the tolerances of SPEC.md section 1:
 *   fp32 inputs:      ||o - o_ref||_2 / ||o_ref||_2 <= 1e-5
 *   fp16/bf16 inputs: max |o - o_ref| <= 2 * e_naive + 1e-3, e_naive = max |naive - o_ref| of
 *                     the naive same-precision oracle (oracle.c)
 *   LSE: |lse - lse_ref| <= 1e-4 (fp32) / 1e-3 (half) (+ 1e-6 relative) where finite.
 *   Rows with no visible key: out exactly 0, lse exactly -inf (or the sink logit).
 * Output buffers are poisoned with 0xff bytes (NaN in every float dtype) before the call, so an
 * element the kernel forgot to write fails, and bytes between the view's elements (padded
 * layouts) must stay 0xff.
 */
#include "attn_common.h"

#include <stdlib.h>
#include <string.h>

#define POISON 0xff

struct attn_cfg cfg_default(void)
{
    struct attn_cfg c;
    memset(&c, 0, sizeof c);
    c.kernel = CFLASH_KERNEL_REFERENCE;
    c.dtype = CFLASH_DTYPE_F32;
    c.B = 1;
    c.Lq = 1;
    c.Lk = 1;
    c.Hq = 1;
    c.Hk = 1;
    c.D = 16;
    c.Dv = 16;
    c.wl = -1;
    c.wr = -1;
    c.align = CFLASH_ALIGN_BOTTOM_RIGHT;
    return c;
}

static const char *layout_name(int l)
{
    switch (l) {
    case LAYOUT_BHSD: return "bhsd";
    case LAYOUT_PADDED: return "padded";
    case LAYOUT_NEGSTRIDE: return "negstride";
    case LAYOUT_MIXED: return "mixed";
    }
    return "bshd";
}

#define APPEND(...)                                                        \
    do {                                                                   \
        size_t len_ = strlen(buf);                                         \
        if (len_ < n)                                                      \
            snprintf(buf + len_, n - len_, __VA_ARGS__);                   \
    } while (0)

void cfg_name(char *buf, size_t n, const char *prefix, const struct attn_cfg *c)
{
    buf[0] = 0;
    APPEND("%s/%s/%s/D=%d", prefix, kname(c->kernel), dtype_name(c->dtype), c->D);
    if (c->vmode == V_NULL)
        APPEND(",v=null");
    else if (c->vmode == V_VIEW_OF_K)
        APPEND(",Dv=%d,v=kview", c->Dv);
    else if (c->Dv != c->D)
        APPEND(",Dv=%d", c->Dv);
    APPEND("/Hq=%d,Hk=%d", c->Hq, c->Hk);
    if (c->varlen) {
        APPEND("/B=%d/Lq=[", c->B);
        for (int b = 0; b < c->B; b++)
            APPEND("%s%d", b ? "," : "", c->lq[b]);
        APPEND("],Lk=[");
        for (int b = 0; b < c->B; b++)
            APPEND("%s%d", b ? "," : "", c->lk[b]);
        APPEND("]");
    } else {
        APPEND("/Lq=%d,Lk=%d", c->Lq, c->Lk);
        if (c->B != 1)
            APPEND("/B=%d", c->B);
    }
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
    if (c->layout != LAYOUT_BSHD)
        APPEND("/layout=%s", layout_name(c->layout));
    if (c->out_f32 && c->dtype != CFLASH_DTYPE_F32)
        APPEND("/out=f32");
    if (c->out_layout == OUT_PADDED)
        APPEND("/outlayout=padded");
    else if (c->out_layout == OUT_BHSD)
        APPEND("/outlayout=bhsd");
    if (c->lse_mode == LSE_NONE)
        APPEND("/lse=null");
    else if (c->lse_mode == LSE_PADDED)
        APPEND("/lse=padded");
    if (c->varlen && c->hint == HINT_EXACT)
        APPEND("/hint=exact");
    else if (c->varlen && c->hint == HINT_LARGER)
        APPEND("/hint=larger");
    else if (c->varlen && c->hint == HINT_HUGE)
        APPEND("/hint=2^40");
    if (c->threads)
        APPEND("/threads=%d", c->threads);
    if (c->qk_sd != 0)
        APPEND("/qk_sd=%g", c->qk_sd);
    if (c->kv_bcast)
        APPEND("/kv=batch_stride0");
    if (c->seed)
        APPEND("/seed=%llx", (unsigned long long)c->seed);
}

static void make_input(struct tbuf *b, enum cflash_dtype dt, int ndim, const int64_t *shape,
                       int layout)
{
    static const int bhsd4[4] = {0, 2, 1, 3}, bhsd3[3] = {1, 0, 2};
    const int *order = NULL;
    int pad = 0, flip = -1;
    if (layout == LAYOUT_BHSD)
        order = ndim == 4 ? bhsd4 : bhsd3;
    else if (layout == LAYOUT_PADDED)
        pad = 3;
    else if (layout == LAYOUT_NEGSTRIDE)
        flip = ndim == 4 ? 1 : 0;
    tbuf_make(b, dt, ndim, shape, order, pad, flip);
}

void attn_setup(struct attn_setup *s, const struct attn_cfg *c)
{
    memset(s, 0, sizeof *s);
    s->c = *c;
    struct rng r = {c->seed ^ 0x5eed5eed12345678ull};
    s->B = c->B;
    s->Hq = c->Hq;
    s->Hk = c->Hk;
    s->D = c->D;
    s->Dv = c->vmode == V_NULL ? c->D : c->Dv;
    s->qoff[0] = s->koff[0] = 0;
    int64_t mq = 0, mk = 0;
    for (int b = 0; b < c->B; b++) {
        int64_t lq = c->varlen ? c->lq[b] : c->Lq, lk = c->varlen ? c->lk[b] : c->Lk;
        s->qoff[b + 1] = s->qoff[b] + lq;
        s->koff[b + 1] = s->koff[b] + lk;
        if (lq > mq)
            mq = lq;
        if (lk > mk)
            mk = lk;
    }
    s->Tq = s->qoff[c->B];
    s->Tk = s->koff[c->B];
    s->hint_q = s->hint_k = -1;
    if (c->hint == HINT_EXACT) {
        s->hint_q = mq;
        s->hint_k = mk;
    } else if (c->hint == HINT_LARGER) {
        s->hint_q = mq + 5;
        s->hint_k = mk + 5;
    } else if (c->hint == HINT_HUGE) {
        s->hint_q = s->hint_k = (int64_t)1 << 40; /* a hint, not an allocation size */
    }

    const int mixed = c->layout == LAYOUT_MIXED;
    const int lay_q = mixed ? LAYOUT_PADDED : c->layout, lay_k = mixed ? LAYOUT_BHSD : c->layout,
              lay_v = mixed ? LAYOUT_NEGSTRIDE : c->layout;
    if (c->varlen) {
        int64_t qs[3] = {s->Tq, s->Hq, s->D}, ks[3] = {s->Tk, s->Hk, s->D},
                vs[3] = {s->Tk, s->Hk, s->Dv};
        make_input(&s->q, c->dtype, 3, qs, lay_q);
        make_input(&s->k, c->dtype, 3, ks, lay_k);
        if (c->vmode == V_SEPARATE)
            make_input(&s->v, c->dtype, 3, vs, lay_v);
        int64_t cs[1] = {c->B + 1};
        tbuf_make(&s->cuq, CFLASH_DTYPE_I32, 1, cs, NULL, 0, -1);
        tbuf_make(&s->cuk, CFLASH_DTYPE_I32, 1, cs, NULL, 0, -1);
        for (int64_t b = 0; b <= c->B; b++) {
            ((int32_t *)s->cuq.t.data)[b] = (int32_t)s->qoff[b];
            ((int32_t *)s->cuk.t.data)[b] = (int32_t)s->koff[b];
        }
    } else {
        int64_t qs[4] = {c->B, c->Lq, s->Hq, s->D}, ks[4] = {c->B, c->Lk, s->Hk, s->D},
                vs[4] = {c->B, c->Lk, s->Hk, s->Dv};
        make_input(&s->q, c->dtype, 4, qs, lay_q);
        if (c->kv_bcast) {
            /* one stored batch, read by every b through a zero batch stride */
            int64_t kst[4] = {0, s->Hk * s->D, s->D, 1}, vst[4] = {0, s->Hk * s->Dv, s->Dv, 1};
            tbuf_make_strided(&s->k, c->dtype, 4, ks, kst);
            if (c->vmode == V_SEPARATE)
                tbuf_make_strided(&s->v, c->dtype, 4, vs, vst);
        } else {
            make_input(&s->k, c->dtype, 4, ks, lay_k);
            if (c->vmode == V_SEPARATE)
                make_input(&s->v, c->dtype, 4, vs, lay_v);
        }
    }
    double sd = c->qk_sd != 0 ? c->qk_sd : 1.0;
    tfill_randn(&s->q.t, &r, 0, sd);
    tfill_randn(&s->k.t, &r, 0, sd);
    if (c->vmode == V_SEPARATE) {
        tfill_randn(&s->v.t, &r, 0, 1);
        s->vp = &s->v.t;
    } else if (c->vmode == V_VIEW_OF_K) {
        s->vview = s->k.t; /* same data and strides, shape[last] = Dv */
        s->vview.shape[s->vview.ndim - 1] = s->Dv;
        s->vp = &s->vview;
    } else {
        s->vp = NULL;
    }

    s->params = cflash_attn_params_default();
    s->params.scale = c->scale;
    s->params.softcap = c->softcap;
    s->params.causal = c->causal;
    s->params.align = (enum cflash_align)c->align;
    s->params.window_left = c->wl;
    s->params.window_right = c->wr;
    if (c->alibi) {
        if (c->alibi == 1) {
            int64_t sh[1] = {s->Hq};
            tbuf_make(&s->alibi, CFLASH_DTYPE_F32, 1, sh, NULL, 0, -1);
        } else {
            int64_t sh[2] = {c->B, s->Hq};
            tbuf_make(&s->alibi, CFLASH_DTYPE_F32, 2, sh, NULL,
                      c->layout == LAYOUT_PADDED ? 1 : 0, -1);
        }
        int64_t n = tnumel(&s->alibi.t), idx[2];
        for (int64_t i = 0; i < n; i++) {
            idx[0] = s->alibi.t.ndim == 1 ? i : i / s->Hq;
            idx[1] = i % s->Hq;
            tset(&s->alibi.t, idx, 0.05 + 0.5 * rng_uniform(&r));
        }
        s->params.alibi_slopes = &s->alibi.t;
    }
    if (c->sinks) {
        int64_t sh[1] = {s->Hq};
        tbuf_make(&s->sinks, CFLASH_DTYPE_F32, 1, sh, NULL, 0, -1);
        tfill_randn(&s->sinks.t, &r, 1, 1);
        s->params.sinks = &s->sinks.t;
    }
}

void attn_free(struct attn_setup *s)
{
    tbuf_free(&s->q);
    tbuf_free(&s->k);
    tbuf_free(&s->v);
    tbuf_free(&s->cuq);
    tbuf_free(&s->cuk);
    tbuf_free(&s->alibi);
    tbuf_free(&s->sinks);
}

void attn_make_out(const struct attn_setup *s, struct tbuf *out, enum cflash_dtype dt, int layout)
{
    static const int bhsd4[4] = {0, 2, 1, 3}, bhsd3[3] = {1, 0, 2};
    int nd = s->c.varlen ? 3 : 4;
    int64_t sh4[4] = {s->B, s->c.Lq, s->Hq, s->Dv}, sh3[3] = {s->Tq, s->Hq, s->Dv};
    const int *order = NULL;
    if (layout == OUT_BHSD)
        order = nd == 4 ? bhsd4 : bhsd3;
    tbuf_make(out, dt, nd, nd == 4 ? sh4 : sh3, order, layout == OUT_PADDED ? 1 : 0, -1);
}

void attn_make_lse(const struct attn_setup *s, struct tbuf *lse, int mode)
{
    int64_t sh3[3] = {s->B, s->Hq, s->c.Lq}, sh2[2] = {s->Hq, s->Tq};
    if (s->c.varlen)
        tbuf_make(lse, CFLASH_DTYPE_F32, 2, sh2, NULL, mode == LSE_PADDED ? 1 : 0, -1);
    else
        tbuf_make(lse, CFLASH_DTYPE_F32, 3, sh3, NULL, mode == LSE_PADDED ? 1 : 0, -1);
}

enum cflash_status attn_call(const struct attn_setup *s, enum cflash_kernel kernel, int threads,
                             const struct cflash_tensor *out, const struct cflash_tensor *lse)
{
    struct cflash_attn_params p = s->params;
    p.kernel = kernel;
    p.num_threads = threads;
    if (s->c.varlen)
        return cflash_attn_varlen(&s->q.t, &s->k.t, s->vp, &s->cuq.t, &s->cuk.t, s->hint_q,
                                  s->hint_k, out, lse, &p);
    return cflash_attn_dense(&s->q.t, &s->k.t, s->vp, out, lse, &p);
}

double attn_out_at(const struct attn_setup *s, const struct cflash_tensor *out, int64_t t,
                   int64_t h, int64_t d)
{
    if (s->c.varlen) {
        int64_t idx[3] = {t, h, d};
        return tget(out, idx);
    }
    int64_t idx[4] = {t / s->c.Lq, t % s->c.Lq, h, d};
    return tget(out, idx);
}

double attn_lse_at(const struct attn_setup *s, const struct cflash_tensor *lse, int64_t t,
                   int64_t h)
{
    if (s->c.varlen) {
        int64_t idx[2] = {h, t};
        return tget(lse, idx);
    }
    int64_t idx[3] = {t / s->c.Lq, h, t % s->c.Lq};
    return tget(lse, idx);
}

void attn_oracle_in(const struct attn_setup *s, struct oracle_in *in)
{
    memset(in, 0, sizeof *in);
    in->B = s->B;
    in->qoff = s->qoff;
    in->koff = s->koff;
    in->Hq = s->Hq;
    in->Hk = s->Hk;
    in->D = s->D;
    in->Dv = s->Dv;
    in->q = tload(&s->q.t);
    in->k = tload(&s->k.t);
    in->v = tload(s->vp ? s->vp : &s->k.t);
    in->scale = s->c.scale != 0 ? (double)s->c.scale : 1.0 / sqrt((double)s->D);
    in->softcap = s->c.softcap;
    in->causal = s->c.causal;
    in->align = s->c.align;
    in->wl = s->c.wl;
    in->wr = s->c.wr;
    if (s->c.alibi) {
        in->alibi = tload(&s->alibi.t);
        in->alibi_per_batch = s->c.alibi == 2;
    }
    if (s->c.sinks)
        in->sinks = tload(&s->sinks.t);
}

void oracle_in_free(struct oracle_in *in)
{
    free((void *)in->q);
    free((void *)in->k);
    free((void *)in->v);
    free((void *)in->alibi);
    free((void *)in->sinks);
    memset(in, 0, sizeof *in);
}

int64_t attn_visible_count(const struct attn_setup *s, int64_t t)
{
    int64_t b = 0;
    while (b + 1 < s->B && s->qoff[b + 1] <= t)
        b++;
    int64_t Lq = s->qoff[b + 1] - s->qoff[b], Lk = s->koff[b + 1] - s->koff[b];
    int64_t i = t - s->qoff[b], n = 0;
    for (int64_t j = 0; j < Lk; j++)
        n += oracle_visible(i, j, Lq, Lk, s->c.causal, s->c.align, s->c.wl, s->c.wr);
    return n;
}

/* ---- the check ------------------------------------------------------------------------- */

struct check_ctx {
    struct attn_setup s;
    struct tbuf oref, lref, out, lse;
    struct oracle_in in;
    double *on; /* naive or exact oracle output */
    double *ol;
};

static double sink_of(const struct attn_setup *s, int64_t h)
{
    int64_t idx[1] = {h};
    return tget(&s->sinks.t, idx);
}

/* Checks result (out, lse) of the row structure: empty rows exact, others finite. */
static int check_rows_exact(struct check_ctx *x, const struct cflash_tensor *out,
                            const struct cflash_tensor *lse, const char *who)
{
    struct attn_setup *s = &x->s;
    for (int64_t t = 0; t < s->Tq; t++) {
        int64_t nvis = attn_visible_count(s, t);
        for (int64_t h = 0; h < s->Hq; h++) {
            for (int64_t d = 0; d < s->Dv; d++) {
                double o = attn_out_at(s, out, t, h, d);
                CHECK0(isfinite(o), "%s: out[t=%lld,h=%lld,d=%lld] = %g is not finite", who,
                       (long long)t, (long long)h, (long long)d, o);
                if (nvis == 0)
                    CHECK0(o == 0, "%s: empty row t=%lld h=%lld: out[d=%lld] = %g, want 0", who,
                           (long long)t, (long long)h, (long long)d, o);
            }
            if (!lse)
                continue;
            double l = attn_lse_at(s, lse, t, h);
            if (nvis == 0) {
                /* exactly -inf without a sink; the sink logit z with a sink (here within the
                 * LSE tolerance; test_edge.c's empty_rows cases demand lse == z exactly) */
                double want = s->c.sinks ? sink_of(s, h) : -INFINITY;
                int ok = s->c.sinks ? fabs(l - want) <= 1e-6 * (1 + fabs(want)) : l == want;
                CHECK0(ok, "%s: empty row t=%lld h=%lld: lse = %.9g, want %.9g", who,
                       (long long)t, (long long)h, l, want);
            } else {
                CHECK0(isfinite(l), "%s: lse[t=%lld,h=%lld] = %g is not finite", who,
                       (long long)t, (long long)h, l);
            }
        }
    }
    return 1;
}

int attn_compare_ref(const struct attn_setup *s, const struct cflash_tensor *oref,
                     const struct cflash_tensor *lref, const struct cflash_tensor *out,
                     const struct cflash_tensor *lse, int half, double e_naive, const char *who)
{
    double num = 0, den = 0, maxabs = 0, maxlse = 0;
    int64_t wt = 0, wh = 0, wd = 0;
    for (int64_t t = 0; t < s->Tq; t++)
        for (int64_t h = 0; h < s->Hq; h++) {
            for (int64_t d = 0; d < s->Dv; d++) {
                double o = attn_out_at(s, out, t, h, d), r = attn_out_at(s, oref, t, h, d);
                double e = fabs(o - r);
                num += e * e;
                den += r * r;
                if (e > maxabs) {
                    maxabs = e;
                    wt = t;
                    wh = h;
                    wd = d;
                }
            }
            if (lse) {
                double l = attn_lse_at(s, lse, t, h), r = attn_lse_at(s, lref, t, h);
                if (isinf(r)) {
                    CHECK0(l == r, "%s: lse[t=%lld,h=%lld] = %g, reference %g", who,
                           (long long)t, (long long)h, l, r);
                    continue;
                }
                double tol = (half ? 1e-3 : 1e-4) + 1e-6 * fabs(r);
                CHECK0(fabs(l - r) <= tol, "%s: lse[t=%lld,h=%lld] = %.9g, reference %.9g (tol %g)",
                       who, (long long)t, (long long)h, l, r, tol);
                if (fabs(l - r) > maxlse)
                    maxlse = fabs(l - r);
            }
        }
    if (half) {
        double tol = 2 * e_naive + 1e-3;
        CHECK0(maxabs <= tol,
               "%s: max abs error %.3g at t=%lld,h=%lld,d=%lld (got %.6g, ref %.6g) > 2*e_naive+1e-3 "
               "= %.3g",
               who, maxabs, (long long)wt, (long long)wh, (long long)wd,
               attn_out_at(s, out, wt, wh, wd), attn_out_at(s, oref, wt, wh, wd), tol);
    } else if (den == 0) {
        CHECK0(num == 0, "%s: reference output is all zero but out differs (max abs %.3g)", who,
               maxabs);
    } else {
        double rel = sqrt(num / den);
        CHECK0(rel <= 1e-5,
               "%s: relative L2 error %.3g > 1e-5 (max abs %.3g at t=%lld,h=%lld,d=%lld: got %.7g, "
               "ref %.7g)",
               who, rel, maxabs, (long long)wt, (long long)wh, (long long)wd,
               attn_out_at(s, out, wt, wh, wd), attn_out_at(s, oref, wt, wh, wd));
    }
    return 1;
}

static void check_inner(struct check_ctx *x)
{
    struct attn_setup *s = &x->s;
    const struct attn_cfg *c = &s->c;
    const int half = c->dtype != CFLASH_DTYPE_F32;
    const int64_t nout = s->Tq * s->Hq * s->Dv, nl = s->Tq * s->Hq;

    /* the oracle call: reference kernel, fp32 out, contiguous */
    attn_make_out(s, &x->oref, CFLASH_DTYPE_F32, OUT_CONTIG);
    attn_make_lse(s, &x->lref, LSE_CONTIG);
    tbuf_poison(&x->oref, POISON);
    tbuf_poison(&x->lref, POISON);
    CHECK_STATUS(attn_call(s, CFLASH_KERNEL_REFERENCE, 0, &x->oref.t, &x->lref.t),
                 CFLASH_STATUS_OK);
    if (!check_rows_exact(x, &x->oref.t, &x->lref.t, "ref(fp32 out)"))
        return;

    attn_oracle_in(s, &x->in);
    x->on = malloc((size_t)(nout > 0 ? nout : 1) * sizeof *x->on);
    x->ol = malloc((size_t)(nl > 0 ? nl : 1) * sizeof *x->ol);

    if (c->kernel == CFLASH_KERNEL_REFERENCE) {
        /* the reference kernel itself against the test's own fp64 oracle */
        oracle_attn(&x->in, CFLASH_DTYPE_F32, x->on, x->ol);
        double num = 0, den = 0;
        for (int64_t t = 0; t < s->Tq; t++)
            for (int64_t h = 0; h < s->Hq; h++) {
                for (int64_t d = 0; d < s->Dv; d++) {
                    double r = attn_out_at(s, &x->oref.t, t, h, d), o = x->on[(t * s->Hq + h) * s->Dv + d];
                    num += (r - o) * (r - o);
                    den += o * o;
                }
                double l = attn_lse_at(s, &x->lref.t, t, h), ol = x->ol[t * s->Hq + h];
                if (isinf(ol))
                    CHECK(l == ol, "ref lse[t=%lld,h=%lld] = %g, oracle %g", (long long)t,
                          (long long)h, l, ol);
                else
                    CHECK(fabs(l - ol) <= 1e-5 * (1 + fabs(ol)),
                          "ref lse[t=%lld,h=%lld] = %.9g, oracle %.9g", (long long)t,
                          (long long)h, l, ol);
            }
        CHECK(den == 0 ? num == 0 : sqrt(num / den) <= 1e-6,
              "ref vs test oracle: relative L2 error %.3g > 1e-6 (|o| %.3g)",
              den == 0 ? sqrt(num) : sqrt(num / den), sqrt(den));
    }

    double e_naive = 0;
    if (half) {
        oracle_attn(&x->in, c->dtype, x->on, NULL);
        for (int64_t t = 0; t < s->Tq; t++)
            for (int64_t h = 0; h < s->Hq; h++)
                for (int64_t d = 0; d < s->Dv; d++) {
                    double e = fabs(x->on[(t * s->Hq + h) * s->Dv + d] -
                                    attn_out_at(s, &x->oref.t, t, h, d));
                    if (e > e_naive)
                        e_naive = e;
                }
    }

    /* the call under test */
    enum cflash_dtype odt = c->out_f32 ? CFLASH_DTYPE_F32 : c->dtype;
    attn_make_out(s, &x->out, odt, c->out_layout);
    attn_make_lse(s, &x->lse, c->lse_mode);
    tbuf_poison(&x->out, POISON);
    tbuf_poison(&x->lse, POISON);
    const struct cflash_tensor *lsep = c->lse_mode == LSE_NONE ? NULL : &x->lse.t;
    if (c->cuda)
        CHECK_STATUS(cuda_attn_call(s, &x->out, lsep ? &x->lse : NULL), CFLASH_STATUS_OK);
    else
        CHECK_STATUS(attn_call(s, c->kernel, c->threads, &x->out.t, lsep), CFLASH_STATUS_OK);
    int64_t gaps = tbuf_gap_changes(&x->out, POISON);
    CHECK(gaps == 0, "%lld bytes of out outside the view were written", (long long)gaps);
    if (lsep) {
        gaps = tbuf_gap_changes(&x->lse, POISON);
        CHECK(gaps == 0, "%lld bytes of lse outside the view were written", (long long)gaps);
    }
    char who[64];
    snprintf(who, sizeof who, "%s(%s out)", c->cuda ? "cuda" : kname(c->kernel), dtype_name(odt));
    if (!check_rows_exact(x, &x->out.t, lsep, who))
        return;
    if (!attn_compare_ref(&x->s, &x->oref.t, &x->lref.t, &x->out.t, lsep, half, e_naive, who))
        return;
}

void attn_check_case(const struct attn_cfg *c)
{
    if (c->cuda ? !cuda_require_device() : !require_kernel(c->kernel))
        return;
    struct check_ctx *x = calloc(1, sizeof *x);
    attn_setup(&x->s, c);
    check_inner(x);
    attn_free(&x->s);
    tbuf_free(&x->oref);
    tbuf_free(&x->lref);
    tbuf_free(&x->out);
    tbuf_free(&x->lse);
    if (x->in.q)
        oracle_in_free(&x->in);
    free(x->on);
    free(x->ol);
    free(x);
}
