/*
 * test_mask.c - boolean masks and additive biases (SPEC.md section 5; cflash.h enum
 * cflash_layout): the DENSE [B|1, Hv, Lq|1, Lk|1], KEY_SIDE [Tk, Hv] and QUERY_SIDE
 * [Tq, Hv, max_seqlen_k] layouts, any strides, Hv in {1, Hk, Hq}.
 *
 * Cases (group `mask`):
 *   mask/worked/...   SPEC 5's worked example, exact visible sets (identity V).
 *   mask/defect/...   one test per defect of the flash-dmattn key-side PR (seeds/003): stride
 *                     order, unit-stride key axis, local vs global key column, heads-axis
 *                     padding and the GQA head mapping; plus the softcap-then-bias order.
 *                     These use "uniform K" (every key row equal, so all scores are equal)
 *                     and V = identity (Dv = key count): the output row IS the probability
 *                     vector, p_j = exp(bias_j) / sum over the kept keys, computed here from
 *                     the intended logical mask/bias values, independently of any storage.
 *   mask/sweep/...,   every kernel forced through params.kernel against the reference
 *   mask/random/...   kernel under SPEC 1's tolerances, and the reference kernel against the
 *                     test's own oracle (mask_oracle.c, SPEC 5's table read from the raw
 *                     tensors with their strides). Unread elements of mask/bias storage
 *                     (gaps between strides, columns j >= Lk_b, rows/cols past the longest
 *                     sequence) hold garbage: 0 (= masked) in masks, NaN in biases.
 *   mask/misuse/...   exact INVALID_ARGUMENT naming `mask` / `bias`, outputs untouched;
 *                     mask/misuse/range/...: cflash_attn_range with masks / biases on the
 *                     plan's global axes, valid shapes OK and wrong ones per layout rejected
 *                     (results against the oracle: range/mask/... in test_range.c).
 *   mask/threads/...  1, 2 and 3 threads give identical bytes with a mask and a bias.
 */
#include "attn_common.h"

#include <stdlib.h>
#include <string.h>

#define GARBAGE_MASK 0x00 /* masked: reading it by mistake drops a key */
#define GARBAGE_BIAS 0xff /* NaN in fp32, fp16 and bf16 */
#define POISON 0xff

static const enum cflash_dtype dtypes[3] = {CFLASH_DTYPE_F32, CFLASH_DTYPE_BF16, CFLASH_DTYPE_F16};

/* ---- configuration --------------------------------------------------------------------- */

/* storages of a mask / bias tensor (strides are free, SPEC 5) */
enum {
    ST_CONTIG,     /* row-major */
    ST_TRANSPOSED, /* every axis reversed: e.g. key-side as a (Hv, Tk) storage */
    ST_PADDED,     /* row-major with gaps after every axis (odd strides) */
    ST_KSTRIDE3,   /* the key axis has stride 3 (a slice of a wider buffer) */
    ST_NEGATIVE,   /* the key axis has a negative stride */
    ST_ZERO,       /* one axis has stride 0 (all its indices alias one element) */
    ST_HEADPAD,    /* heads axis outermost with a stride larger than needed; Hv = 1: 2^40 */
    ST_COUNT
};
static const char *const st_names[ST_COUNT] = {"contig", "transposed", "padded", "kstride3",
                                               "negstride", "stride0", "headpad"};
/* masks: 70% kept; an all-false block of 64..144 keys per sequence; fully masked rows (or,
 * key-side, fully masked sequences per variant); an all-false block of 85% of the keys (whole
 * split-KV chunks of 4096 keys masked) */
enum { FILL_RANDOM, FILL_BLOCKS, FILL_EMPTYROWS, FILL_HUGE, FILL_COUNT };
static const char *const fill_names[FILL_COUNT] = {"keep70", "blocks64", "emptyrows", "block85pct"};
enum { HV_1, HV_HK, HV_HQ };
static const char *const hv_names[3] = {"1", "Hk", "Hq"};
static const char *const layout_names[3] = {"dense", "key", "query"};

struct sspec { /* one mask or bias */
    int on;
    int layout;          /* enum cflash_layout */
    int hv;              /* HV_* */
    int storage;         /* ST_* */
    int fill;            /* masks: FILL_* */
    enum cflash_dtype dtype; /* biases */
    int b1, q1, k1;      /* DENSE: size-1 (broadcast) batch / query / key axes */
    int grow;            /* packed DENSE: Lq/Lk axes this much longer than the longest
                          * sequence; QUERY_SIDE: the last axis this much longer */
    float sd;            /* biases: standard deviation (0: 1) */
};

struct mcfg {
    struct attn_cfg a; /* q, k, v, lengths, causal, window, alibi, softcap, sinks, layouts */
    struct sspec m, bi;
    int idv; /* V = identity over the keys (Dv = Tk or Lk): check exact visible sets */
};

#define APPEND(...)                                                        \
    do {                                                                   \
        size_t len_ = strlen(buf);                                         \
        if (len_ < n)                                                      \
            snprintf(buf + len_, n - len_, __VA_ARGS__);                   \
    } while (0)

static void spec_name(char *buf, size_t n, const char *what, const struct sspec *sp, int is_mask)
{
    if (!sp->on)
        return;
    APPEND("/%s=%s,Hv=%s,%s", what, layout_names[sp->layout], hv_names[sp->hv],
           st_names[sp->storage]);
    if (is_mask)
        APPEND(",%s", fill_names[sp->fill]);
    else
        APPEND(",%s", dtype_name(sp->dtype));
    if (sp->layout == CFLASH_LAYOUT_DENSE && (sp->b1 || sp->q1 || sp->k1))
        APPEND(",bcast=%s%s%s", sp->b1 ? "B" : "", sp->q1 ? "Lq" : "", sp->k1 ? "Lk" : "");
    if (sp->grow)
        APPEND(",grow=%d", sp->grow);
    if (!is_mask && sp->sd != 0 && sp->sd != 1)
        APPEND(",sd=%g", sp->sd);
}

static void mcfg_name(char *buf, size_t n, const char *prefix, const struct mcfg *c)
{
    cfg_name(buf, n, prefix, &c->a);
    spec_name(buf, n, "mask", &c->m, 1);
    spec_name(buf, n, "bias", &c->bi, 0);
    if (c->idv)
        APPEND("/v=identity");
}

/* ---- building mask / bias tensors ------------------------------------------------------ */

struct srcbuf {
    struct tbuf tb;
    struct mask_src src;
    unsigned char *copy; /* the bytes before the calls: inputs must stay untouched */
};

static void srcbuf_free(struct srcbuf *sb)
{
    tbuf_free(&sb->tb);
    free(sb->copy);
    memset(sb, 0, sizeof *sb);
}

static int64_t seq_max(const int64_t *off, int64_t B)
{
    int64_t m = 0;
    for (int64_t b = 0; b < B; b++)
        if (off[b + 1] - off[b] > m)
            m = off[b + 1] - off[b];
    return m;
}

static int64_t hv_value(int hv, int64_t Hq, int64_t Hk)
{
    return hv == HV_1 ? 1 : hv == HV_HK ? Hk : Hq;
}

/* Logical shape of a mask / bias in its layout for this problem. */
static int src_shape(const struct sspec *sp, const struct attn_setup *s, int64_t *sh)
{
    const int64_t Hv = hv_value(sp->hv, s->Hq, s->Hk);
    const int64_t maxq = seq_max(s->qoff, s->B), maxk = seq_max(s->koff, s->B);
    switch (sp->layout) {
    case CFLASH_LAYOUT_KEY_SIDE:
        sh[0] = s->Tk;
        sh[1] = Hv;
        return 2;
    case CFLASH_LAYOUT_QUERY_SIDE:
        sh[0] = s->Tq;
        sh[1] = Hv;
        sh[2] = maxk + sp->grow;
        return 3;
    default:
        sh[0] = sp->b1 ? 1 : s->B;
        sh[1] = Hv;
        sh[2] = sp->q1 ? 1 : (s->c.varlen ? maxq + sp->grow : s->c.Lq);
        sh[3] = sp->k1 ? 1 : (s->c.varlen ? maxk + sp->grow : s->c.Lk);
        return 4;
    }
}

/* Element strides of a storage: axes laid out in `order` (outermost first), each axis's
 * stride multiplied by step[ax], and extra[ax] elements of gap after each run of axis ax. */
static void strides_of(int nd, const int64_t *sh, const int *order, const int64_t *step,
                       const int64_t *extra, int64_t *st)
{
    int64_t s = 1;
    for (int k = nd - 1; k >= 0; k--) {
        const int ax = order[k];
        st[ax] = s * step[ax];
        s = st[ax] * (sh[ax] > 0 ? sh[ax] : 1) + extra[ax];
    }
}

static void src_strides(int storage, int layout, int nd, const int64_t *sh, int64_t *st)
{
    int order[4] = {0, 1, 2, 3};
    int64_t step[4] = {1, 1, 1, 1}, extra[4] = {0, 0, 0, 0};
    const int kax = layout == CFLASH_LAYOUT_KEY_SIDE ? 0 : nd - 1; /* the key axis */
    switch (storage) {
    case ST_TRANSPOSED:
        for (int i = 0; i < nd; i++)
            order[i] = nd - 1 - i;
        break;
    case ST_PADDED:
        for (int i = 0; i < nd; i++)
            extra[i] = 3 + 2 * i;
        break;
    case ST_KSTRIDE3:
        step[kax] = 3;
        break;
    case ST_HEADPAD: {
        /* heads axis outermost; the gap after the axis inside it pads the heads stride */
        int k = 0;
        order[k++] = 1;
        for (int i = 0; i < nd; i++)
            if (i != 1)
                order[k++] = i;
        extra[order[1]] = 7;
        break;
    }
    default:
        break;
    }
    strides_of(nd, sh, order, step, extra, st);
    if (storage == ST_NEGATIVE)
        st[kax] = -st[kax];
    if (storage == ST_HEADPAD && sh[1] == 1)
        st[1] = (int64_t)1 << 40; /* never multiplied by anything but 0 */
    if (storage == ST_ZERO) {
        /* dense: the query axis; key-side: the heads axis; query-side: the token axis */
        int zax = layout == CFLASH_LAYOUT_DENSE ? 2 : layout == CFLASH_LAYOUT_KEY_SIDE ? 1 : 0;
        st[zax] = 0;
    }
}

/* All-false key block [blk_a[b], blk_e[b]) of each sequence (local key indices). */
struct blocks {
    int64_t a[MAXB], e[MAXB];   /* FILL_BLOCKS */
    int64_t ha[MAXB], he[MAXB]; /* FILL_HUGE */
};

static void make_blocks(struct blocks *bl, const struct attn_setup *s, struct rng *r)
{
    for (int64_t b = 0; b < s->B; b++) {
        const int64_t Lk = s->koff[b + 1] - s->koff[b];
        if (Lk >= 64) {
            int64_t len = 64 + rng_int(r, Lk - 64 + 1);
            if (len > 64 + 80)
                len = 64 + 80; /* leave kept keys around the block */
            bl->a[b] = rng_int(r, Lk - len + 1);
            bl->e[b] = bl->a[b] + len;
        } else {
            bl->a[b] = 0;
            bl->e[b] = Lk / 2;
        }
        bl->ha[b] = Lk / 10;
        bl->he[b] = Lk / 10 + Lk * 85 / 100;
    }
}

static double mask_value(const struct sspec *sp, const struct blocks *bl, struct rng *r,
                         int64_t b, int64_t var, int64_t i, int64_t j)
{
    int keep;
    if (sp->fill == FILL_BLOCKS) {
        keep = !(j >= bl->a[b] && j < bl->e[b]) && rng_uniform(r) < 0.85;
    } else if (sp->fill == FILL_HUGE) {
        keep = !(j >= bl->ha[b] && j < bl->he[b]) && rng_uniform(r) < 0.7;
    } else if (sp->fill == FILL_EMPTYROWS) {
        int empty = sp->layout == CFLASH_LAYOUT_KEY_SIDE ? (b + var) % 2 == 1
                                                         : (b * 7 + i * 3 + var) % 5 == 0;
        keep = !empty && rng_uniform(r) < 0.7;
    } else {
        keep = rng_uniform(r) < 0.7;
    }
    return keep ? (double)(1 + rng_int(r, 255)) : 0.0; /* any nonzero byte keeps */
}

/* Builds the tensor of one spec; every element some (b, h, i, j) reads gets a value, all
 * other bytes of the allocation keep the garbage. */
static void build_src(struct srcbuf *sb, const struct sspec *sp, int is_mask,
                      const struct attn_setup *s, struct rng *r)
{
    memset(sb, 0, sizeof *sb);
    int64_t sh[4], st[4];
    const int nd = src_shape(sp, s, sh);
    src_strides(sp->storage, sp->layout, nd, sh, st);
    tbuf_make_strided(&sb->tb, is_mask ? CFLASH_DTYPE_U8 : sp->dtype, nd, sh, st);
    tbuf_poison(&sb->tb, is_mask ? GARBAGE_MASK : GARBAGE_BIAS);
    sb->src.t = &sb->tb.t;
    sb->src.layout = sp->layout;
    const int64_t numel = tnumel(&sb->tb.t);
    char *written = calloc((size_t)(numel > 0 ? numel : 1), 1);
    struct blocks bl;
    make_blocks(&bl, s, r);
    const double sd = sp->sd != 0 ? sp->sd : 1.0;
    for (int64_t b = 0; b < s->B; b++) {
        const int64_t Lq = s->qoff[b + 1] - s->qoff[b], Lk = s->koff[b + 1] - s->koff[b];
        for (int64_t i = 0; i < Lq; i++)
            for (int64_t h = 0; h < s->Hq; h++)
                for (int64_t j = 0; j < Lk; j++) {
                    int64_t idx[4], lin = 0;
                    mask_elem_index(&sb->src, s->Hq, s->qoff, s->koff, b, h, i, j, idx);
                    for (int a = 0; a < nd; a++)
                        lin = lin * sh[a] + idx[a];
                    if (written[lin])
                        continue;
                    written[lin] = 1;
                    double v = is_mask ? mask_value(sp, &bl, r, b, idx[1], i, j)
                                       : sd * rng_normal(r);
                    tset(&sb->tb.t, idx, v);
                }
    }
    free(written);
    if (sb->tb.bytes) {
        sb->copy = malloc(sb->tb.bytes);
        memcpy(sb->copy, sb->tb.base, sb->tb.bytes);
    }
}

static int srcbuf_unchanged(const struct srcbuf *sb)
{
    return !sb->tb.bytes || memcmp(sb->copy, sb->tb.base, sb->tb.bytes) == 0;
}

/* V := identity over the keys (varlen: over global keys, dense: over the Lk keys). */
static void set_identity_v(struct attn_setup *s)
{
    const struct cflash_tensor *v = &s->v.t;
    const int64_t nk = s->c.varlen ? s->Tk : s->c.Lk;
    for (int64_t b = 0; b < (s->c.varlen ? 1 : s->B); b++)
        for (int64_t t = 0; t < nk; t++)
            for (int64_t g = 0; g < s->Hk; g++)
                for (int64_t d = 0; d < s->Dv; d++) {
                    if (s->c.varlen) {
                        int64_t idx[3] = {t, g, d};
                        tset(v, idx, d == t);
                    } else {
                        int64_t idx[4] = {b, t, g, d};
                        tset(v, idx, d == t);
                    }
                }
}

/* ---- the check against the reference kernel and the oracle ----------------------------- */

struct mctx {
    struct attn_setup s;
    struct srcbuf mask, bias;
    struct tbuf oref, lref, out, lse;
    struct oracle_in in;
    double *oo, *ol, *on; /* exact oracle out / lse, naive oracle out */
    int64_t *nvis;
};

static void msetup(struct mctx *x, const struct mcfg *c)
{
    struct attn_cfg a = c->a;
    if (c->idv) {
        /* Dv = number of keys (V = identity); fp32 out so tiny probabilities stay > 0 */
        int64_t nk = 0;
        if (a.varlen)
            for (int b = 0; b < a.B; b++)
                nk += a.lk[b];
        else
            nk = a.Lk;
        a.Dv = (int)nk;
        a.vmode = V_SEPARATE;
        a.out_f32 = 1;
    }
    attn_setup(&x->s, &a);
    if (c->idv)
        set_identity_v(&x->s);
    struct rng r = {a.seed ^ 0x3a5c0ffee1234567ull};
    if (c->m.on) {
        build_src(&x->mask, &c->m, 1, &x->s, &r);
        x->s.params.mask = &x->mask.tb.t;
        x->s.params.mask_layout = (enum cflash_layout)c->m.layout;
    }
    if (c->bi.on) {
        build_src(&x->bias, &c->bi, 0, &x->s, &r);
        x->s.params.bias = &x->bias.tb.t;
        x->s.params.bias_layout = (enum cflash_layout)c->bi.layout;
    }
}

static void mctx_free(struct mctx *x)
{
    attn_free(&x->s);
    srcbuf_free(&x->mask);
    srcbuf_free(&x->bias);
    tbuf_free(&x->oref);
    tbuf_free(&x->lref);
    tbuf_free(&x->out);
    tbuf_free(&x->lse);
    if (x->in.q)
        oracle_in_free(&x->in);
    free(x->oo);
    free(x->ol);
    free(x->on);
    free(x->nvis);
}

static double sink_at(const struct attn_setup *s, int64_t h)
{
    int64_t idx[1] = {h};
    return tget(&s->sinks.t, idx);
}

/* Rows with no visible key: out exactly 0, lse exactly -inf, or exactly the sink logit with
 * sinks (SPEC 1.7 and 5). Other rows: finite. Identity V: the exact visible sets. */
static int check_rows(struct mctx *x, int idv, const struct cflash_tensor *out,
                      const struct cflash_tensor *lse, const char *who)
{
    struct attn_setup *s = &x->s;
    for (int64_t t = 0; t < s->Tq; t++)
        for (int64_t h = 0; h < s->Hq; h++) {
            const int64_t nv = x->nvis[t * s->Hq + h];
            for (int64_t d = 0; d < s->Dv; d++) {
                double o = attn_out_at(s, out, t, h, d);
                CHECK0(isfinite(o), "%s: out[t=%lld,h=%lld,d=%lld] = %g is not finite", who,
                       (long long)t, (long long)h, (long long)d, o);
                if (nv == 0)
                    CHECK0(o == 0, "%s: fully masked row t=%lld h=%lld: out[d=%lld] = %g, want 0",
                           who, (long long)t, (long long)h, (long long)d, o);
                if (idv) {
                    /* out[d] is the probability of key d: 0 exactly where invisible */
                    double want = x->oo[(t * s->Hq + h) * s->Dv + d];
                    if (want == 0)
                        CHECK0(o == 0,
                               "%s: t=%lld h=%lld: key %lld must be invisible (mask/causal/window) "
                               "but has probability %g",
                               who, (long long)t, (long long)h, (long long)d, o);
                    else if (want > 1e-30)
                        CHECK0(o > 0,
                               "%s: t=%lld h=%lld: key %lld must be visible (oracle p = %g) but "
                               "has probability %g",
                               who, (long long)t, (long long)h, (long long)d, want, o);
                }
            }
            if (!lse)
                continue;
            double l = attn_lse_at(s, lse, t, h);
            if (nv == 0) {
                double want = s->c.sinks ? sink_at(s, h) : -INFINITY;
                CHECK0(l == want, "%s: fully masked row t=%lld h=%lld: lse = %.9g, want %.9g%s",
                       who, (long long)t, (long long)h, l, want,
                       s->c.sinks ? " (the sink logit, exactly)" : "");
            } else {
                CHECK0(isfinite(l), "%s: lse[t=%lld,h=%lld] = %g is not finite", who,
                       (long long)t, (long long)h, l);
            }
        }
    return 1;
}


static void check_inner(struct mctx *x, const struct mcfg *c)
{
    struct attn_setup *s = &x->s;
    const struct attn_cfg *a = &s->c; /* after msetup's identity-V adjustments */
    const int half = a->dtype != CFLASH_DTYPE_F32;
    const int64_t nout = s->Tq * s->Hq * s->Dv, nl = s->Tq * s->Hq;

    /* the reference kernel, fp32 out, contiguous */
    attn_make_out(s, &x->oref, CFLASH_DTYPE_F32, OUT_CONTIG);
    attn_make_lse(s, &x->lref, LSE_CONTIG);
    tbuf_poison(&x->oref, POISON);
    tbuf_poison(&x->lref, POISON);
    CHECK_STATUS(attn_call(s, CFLASH_KERNEL_REFERENCE, 0, &x->oref.t, &x->lref.t),
                 CFLASH_STATUS_OK);

    /* the test's own oracle: SPEC 5's table over the raw mask / bias tensors */
    attn_oracle_in(s, &x->in);
    x->oo = malloc((size_t)(nout > 0 ? nout : 1) * sizeof *x->oo);
    x->ol = malloc((size_t)(nl > 0 ? nl : 1) * sizeof *x->ol);
    x->nvis = malloc((size_t)(nl > 0 ? nl : 1) * sizeof *x->nvis);
    mask_oracle_attn(&x->in, &x->mask.src, &x->bias.src, CFLASH_DTYPE_F32, x->oo, x->ol, x->nvis);
    if (!check_rows(x, c->idv, &x->oref.t, &x->lref.t, "ref(f32 out)"))
        return;

    if (a->kernel == CFLASH_KERNEL_REFERENCE) {
        double num = 0, den = 0;
        for (int64_t t = 0; t < s->Tq; t++)
            for (int64_t h = 0; h < s->Hq; h++) {
                for (int64_t d = 0; d < s->Dv; d++) {
                    double r = attn_out_at(s, &x->oref.t, t, h, d);
                    double o = x->oo[(t * s->Hq + h) * s->Dv + d];
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
              "ref vs the test's oracle: relative L2 error %.3g > 1e-6 (|o| %.3g)",
              den == 0 ? sqrt(num) : sqrt(num / den), sqrt(den));
    }

    double e_naive = 0;
    if (half) {
        x->on = malloc((size_t)(nout > 0 ? nout : 1) * sizeof *x->on);
        mask_oracle_attn(&x->in, &x->mask.src, &x->bias.src, a->dtype, x->on, NULL, NULL);
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
    enum cflash_dtype odt = a->out_f32 ? CFLASH_DTYPE_F32 : a->dtype;
    attn_make_out(s, &x->out, odt, a->out_layout);
    attn_make_lse(s, &x->lse, a->lse_mode);
    tbuf_poison(&x->out, POISON);
    tbuf_poison(&x->lse, POISON);
    const struct cflash_tensor *lsep = a->lse_mode == LSE_NONE ? NULL : &x->lse.t;
    CHECK_STATUS(attn_call(s, a->kernel, a->threads, &x->out.t, lsep), CFLASH_STATUS_OK);
    CHECK(srcbuf_unchanged(&x->mask), "the call wrote into the mask");
    CHECK(srcbuf_unchanged(&x->bias), "the call wrote into the bias");
    int64_t gaps = tbuf_gap_changes(&x->out, POISON);
    CHECK(gaps == 0, "%lld bytes of out outside the view were written", (long long)gaps);
    if (lsep) {
        gaps = tbuf_gap_changes(&x->lse, POISON);
        CHECK(gaps == 0, "%lld bytes of lse outside the view were written", (long long)gaps);
    }
    char who[64];
    snprintf(who, sizeof who, "%s(%s out)", kname(a->kernel), dtype_name(odt));
    if (!check_rows(x, c->idv && odt == CFLASH_DTYPE_F32, &x->out.t, lsep, who))
        return;
    attn_compare_ref(&x->s, &x->oref.t, &x->lref.t, &x->out.t, lsep, half, e_naive, who);
}

static void mask_check(const struct mcfg *c)
{
    if (!require_kernel(c->a.kernel))
        return;
    struct mctx *x = calloc(1, sizeof *x);
    msetup(x, c);
    check_inner(x, c);
    mctx_free(x);
    free(x);
}

static void run_mcase(const void *arg) { mask_check((const struct mcfg *)arg); }

static void add_mcase(const char *prefix, const struct mcfg *c)
{
    char name[768];
    mcfg_name(name, sizeof name, prefix, c);
    tcase_add(name, run_mcase, c, sizeof *c);
}

/* ---- oversized axes: the same bytes as a tight copy ------------------------------------- */

/* A contiguous copy of a mask / bias with grow = 0 (only the elements SPEC 5 reads). */
static void tight_copy(struct srcbuf *dst, const struct srcbuf *src, const struct sspec *sp,
                       const struct attn_setup *s)
{
    memset(dst, 0, sizeof *dst);
    struct sspec tsp = *sp;
    tsp.grow = 0;
    int64_t sh[4];
    const int nd = src_shape(&tsp, s, sh);
    tbuf_make(&dst->tb, src->tb.t.dtype, nd, sh, NULL, 0, -1);
    tbuf_poison(&dst->tb, src->tb.t.dtype == CFLASH_DTYPE_U8 ? GARBAGE_MASK : GARBAGE_BIAS);
    dst->src.t = &dst->tb.t;
    dst->src.layout = sp->layout;
    for (int64_t b = 0; b < s->B; b++)
        for (int64_t i = 0; i < s->qoff[b + 1] - s->qoff[b]; i++)
            for (int64_t h = 0; h < s->Hq; h++)
                for (int64_t j = 0; j < s->koff[b + 1] - s->koff[b]; j++) {
                    int64_t si[4], di[4];
                    mask_elem_index(&src->src, s->Hq, s->qoff, s->koff, b, h, i, j, si);
                    mask_elem_index(&dst->src, s->Hq, s->qoff, s->koff, b, h, i, j, di);
                    tset(&dst->tb.t, di, tget(&src->tb.t, si));
                }
}

/* Packed DENSE axes longer than the longest sequence and QUERY_SIDE columns j >= Lk_b hold
 * garbage (0 / NaN): the result must be byte-identical to the call with tight tensors. */
static void oversized_case(const void *arg)
{
    const struct mcfg *c = arg;
    if (!require_kernel(c->a.kernel))
        return;
    struct mctx *x = calloc(1, sizeof *x);
    msetup(x, c);
    struct attn_setup *s = &x->s;
    enum cflash_dtype odt = s->c.out_f32 ? CFLASH_DTYPE_F32 : s->c.dtype;
    struct tbuf o1, l1, o2, l2;
    struct srcbuf tm, tb;
    memset(&tm, 0, sizeof tm);
    memset(&tb, 0, sizeof tb);
    attn_make_out(s, &o1, odt, OUT_CONTIG);
    attn_make_lse(s, &l1, LSE_CONTIG);
    attn_make_out(s, &o2, odt, OUT_CONTIG);
    attn_make_lse(s, &l2, LSE_CONTIG);
    tbuf_poison(&o1, 0x5a);
    tbuf_poison(&l1, 0x5a);
    tbuf_poison(&o2, 0x5a);
    tbuf_poison(&l2, 0x5a);
    char msg[256] = "";
    enum cflash_status st = attn_call(s, s->c.kernel, 0, &o1.t, &l1.t);
    if (st != CFLASH_STATUS_OK)
        snprintf(msg, sizeof msg, "oversized: %s (%s)", cflash_status_string(st), cflash_last_error());
    if (!msg[0]) {
        if (c->m.on) {
            tight_copy(&tm, &x->mask, &c->m, s);
            s->params.mask = &tm.tb.t;
        }
        if (c->bi.on) {
            tight_copy(&tb, &x->bias, &c->bi, s);
            s->params.bias = &tb.tb.t;
        }
        st = attn_call(s, s->c.kernel, 0, &o2.t, &l2.t);
        if (st != CFLASH_STATUS_OK)
            snprintf(msg, sizeof msg, "tight: %s (%s)", cflash_status_string(st), cflash_last_error());
        else if (o1.bytes && memcmp(o1.base, o2.base, o1.bytes) != 0)
            snprintf(msg, sizeof msg, "out bytes differ between the oversized and the tight mask/bias");
        else if (l1.bytes && memcmp(l1.base, l2.base, l1.bytes) != 0)
            snprintf(msg, sizeof msg, "lse bytes differ between the oversized and the tight mask/bias");
    }
    srcbuf_free(&tm);
    srcbuf_free(&tb);
    tbuf_free(&o1);
    tbuf_free(&l1);
    tbuf_free(&o2);
    tbuf_free(&l2);
    mctx_free(x);
    free(x);
    CHECK(!msg[0], "%s", msg);
}

/* ---- uniform K, identity V: probabilities computed from the intended values ------------- */

/* What the test means the mask / bias to say for score (b, h, i, j): keep (nonzero) and the
 * bias value. Written per test from its logical tables, never from a tensor. */
typedef void (*intent_fn)(const void *ctx, int64_t b, int64_t h, int64_t i, int64_t j, int *keep,
                          double *bias);

/* Varlen (or dense) problem whose keys are all equal (k[t][g] = kvec[g]) and V = identity, so
 * that out[t][h][col(b, j)] = exp(bias_j) / sum over kept keys, and
 * lse = s0 + ln(sum exp(bias_j)), s0 = (softcapped) scale * q.kvec. */
static void uniform_setup(struct attn_setup *s, struct attn_cfg *a)
{
    int64_t nk = 0;
    if (a->varlen)
        for (int b = 0; b < a->B; b++)
            nk += a->lk[b];
    else
        nk = a->Lk;
    a->Dv = (int)nk;
    a->vmode = V_SEPARATE;
    a->out_f32 = 1;
    attn_setup(s, a);
    set_identity_v(s);
    /* every key row equal to the first one of its head (random, never zero) */
    const struct cflash_tensor *k = &s->k.t;
    for (int64_t g = 0; g < s->Hk; g++)
        for (int64_t d = 0; d < s->D; d++) {
            int64_t i0[4] = {0, 0, g, d}, i03[3] = {0, g, d};
            double v = a->varlen ? tget(k, i03) : tget(k, i0);
            for (int64_t b = 0; b < (a->varlen ? 1 : s->B); b++)
                for (int64_t t = 0; t < (a->varlen ? s->Tk : a->Lk); t++) {
                    if (a->varlen) {
                        int64_t idx[3] = {t, g, d};
                        tset(k, idx, v);
                    } else {
                        int64_t idx[4] = {b, t, g, d};
                        tset(k, idx, v);
                    }
                }
        }
}

static double dot_qk(const struct attn_setup *s, int64_t t, int64_t h)
{
    const int64_t g = h / (s->Hq / s->Hk);
    double acc = 0;
    for (int64_t d = 0; d < s->D; d++) {
        double q, k;
        if (s->c.varlen) {
            int64_t iq[3] = {t, h, d}, ik[3] = {0, g, d};
            q = tget(&s->q.t, iq);
            k = tget(&s->k.t, ik);
        } else {
            int64_t iq[4] = {t / s->c.Lq, t % s->c.Lq, h, d}, ik[4] = {0, 0, g, d};
            q = tget(&s->q.t, iq);
            k = tget(&s->k.t, ik);
        }
        acc += q * k;
    }
    double scale = s->c.scale != 0 ? s->c.scale : 1.0 / sqrt((double)s->D);
    return scale * acc;
}

/* Checks out / lse of a uniform-K identity-V call against the intent. before_softcap != 0
 * computes the WRONG order (bias added before the softcap) instead: used only to show that a
 * case can tell the two apart. Returns the max abs difference to `out` (or -1 on failure). */
static double uniform_expect(const struct attn_setup *s, intent_fn fn, const void *ctx,
                             const struct cflash_tensor *out, const struct cflash_tensor *lse,
                             const char *who, int before_softcap, int check)
{
    const int64_t Hq = s->Hq;
    double *p = malloc((size_t)(s->Dv > 0 ? s->Dv : 1) * sizeof *p), maxdiff = 0;
    for (int64_t b = 0; b < s->B; b++) {
        const int64_t Lq = s->qoff[b + 1] - s->qoff[b], Lk = s->koff[b + 1] - s->koff[b];
        for (int64_t i = 0; i < Lq; i++)
            for (int64_t h = 0; h < Hq; h++) {
                const int64_t t = s->qoff[b] + i;
                double s0 = dot_qk(s, t, h), c = s->c.softcap;
                if (c > 0 && !before_softcap)
                    s0 = c * tanh(s0 / c);
                for (int64_t d = 0; d < s->Dv; d++)
                    p[d] = 0;
                double m = -INFINITY;
                int any = 0;
                for (int64_t j = 0; j < Lk; j++) {
                    int keep = 0;
                    double bias = 0;
                    fn(ctx, b, h, i, j, &keep, &bias);
                    if (!keep ||
                        !oracle_visible(i, j, Lq, Lk, s->c.causal, s->c.align, s->c.wl, s->c.wr))
                        continue;
                    double sc = c > 0 && before_softcap ? c * tanh((s0 + bias) / c) : s0 + bias;
                    const int64_t col = s->c.varlen ? s->koff[b] + j : j;
                    p[col] = sc; /* score for now */
                    any = 1;
                    if (sc > m)
                        m = sc;
                }
                double sum = 0;
                for (int64_t j = 0; j < Lk; j++) {
                    const int64_t col = s->c.varlen ? s->koff[b] + j : j;
                    int keep = 0;
                    double bias = 0;
                    fn(ctx, b, h, i, j, &keep, &bias);
                    if (!keep ||
                        !oracle_visible(i, j, Lq, Lk, s->c.causal, s->c.align, s->c.wl, s->c.wr))
                        continue;
                    p[col] = exp(p[col] - m);
                    sum += p[col];
                }
                for (int64_t d = 0; d < s->Dv; d++)
                    p[d] = any ? p[d] / sum : 0;
                const double want_lse = any ? m + log(sum) : -INFINITY;
                for (int64_t d = 0; d < s->Dv; d++) {
                    double o = attn_out_at(s, out, t, h, d);
                    if (fabs(o - p[d]) > maxdiff)
                        maxdiff = fabs(o - p[d]);
                    if (!check)
                        continue;
                    if (p[d] == 0 && o != 0) {
                        tfail(__FILE__, __LINE__,
                              "%s: seq %lld query %lld head %lld: key column %lld must be invisible, "
                              "got probability %.6g",
                              who, (long long)b, (long long)i, (long long)h, (long long)d, o);
                        free(p);
                        return -1;
                    }
                    if (fabs(o - p[d]) > 2e-5) {
                        tfail(__FILE__, __LINE__,
                              "%s: seq %lld query %lld head %lld: probability of key column %lld "
                              "= %.7g, want %.7g",
                              who, (long long)b, (long long)i, (long long)h, (long long)d, o, p[d]);
                        free(p);
                        return -1;
                    }
                }
                if (check && lse) {
                    double l = attn_lse_at(s, lse, t, h);
                    int ok = isinf(want_lse) ? l == want_lse
                                             : fabs(l - want_lse) <= 1e-4 + 1e-6 * fabs(want_lse);
                    if (!ok) {
                        tfail(__FILE__, __LINE__,
                              "%s: seq %lld query %lld head %lld: lse = %.9g, want %.9g", who,
                              (long long)b, (long long)i, (long long)h, l, want_lse);
                        free(p);
                        return -1;
                    }
                }
            }
    }
    free(p);
    return maxdiff;
}

/* One call of a uniform problem with the current params; checks against the intent. */
static int uniform_run(const struct attn_setup *s, enum cflash_kernel kernel, intent_fn fn,
                       const void *ctx, const char *label, struct tbuf *out_keep)
{
    struct tbuf out, lse;
    attn_make_out(s, &out, CFLASH_DTYPE_F32, OUT_CONTIG);
    attn_make_lse(s, &lse, LSE_CONTIG);
    tbuf_poison(&out, POISON);
    tbuf_poison(&lse, POISON);
    enum cflash_status st = attn_call(s, kernel, 0, &out.t, &lse.t);
    int ok = 1;
    if (st != CFLASH_STATUS_OK) {
        tfail(__FILE__, __LINE__, "%s: %s returned %s (%s)", label, kname(kernel),
              cflash_status_string(st), cflash_last_error());
        ok = 0;
    } else {
        char who[128];
        snprintf(who, sizeof who, "%s %s", label, kname(kernel));
        ok = uniform_expect(s, fn, ctx, &out.t, &lse.t, who, 0, 1) >= 0;
    }
    if (out_keep)
        *out_keep = out;
    else
        tbuf_free(&out);
    tbuf_free(&lse);
    return ok;
}

/* Deterministic small tables: keep bits and exactly representable bias values (multiples
 * of 1/8 in [-2, 2], exact in fp16 and bf16). */
static uint64_t mix(uint64_t a, uint64_t b, uint64_t c, uint64_t salt)
{
    struct rng r = {a * 0x100000001b3ull ^ b * 0x9e3779b97f4a7c15ull ^ c * 0xc2b2ae3d27d4eb4full ^ salt};
    return rng_next(&r);
}
static int tab_keep(uint64_t a, uint64_t b, uint64_t c) { return mix(a, b, c, 11) % 10 < 6; }
static double tab_bias(uint64_t a, uint64_t b, uint64_t c)
{
    return ((double)(mix(a, b, c, 23) % 33) - 16.0) / 8.0;
}

/* Writes a logical table into a tensor (any strides): f(logical index) -> value. */
typedef double (*table_fn)(const void *ctx, const int64_t *idx);
static void fill_table(const struct cflash_tensor *t, table_fn f, const void *ctx)
{
    int64_t n = tnumel(t), idx[4];
    for (int64_t lin = 0; lin < n; lin++) {
        int64_t r = lin;
        for (int a = t->ndim - 1; a >= 0; a--) {
            idx[a] = r % t->shape[a];
            r /= t->shape[a];
        }
        tset(t, idx, f(ctx, idx));
    }
}

/* A tensor for the analytic tests: shape, storage (ST_*), garbage elsewhere. */
static void make_src(struct tbuf *tb, enum cflash_dtype dt, int layout, int nd, const int64_t *sh,
                     int storage)
{
    int64_t st[4];
    src_strides(storage, layout, nd, sh, st);
    tbuf_make_strided(tb, dt, nd, sh, st);
    tbuf_poison(tb, dt == CFLASH_DTYPE_U8 ? GARBAGE_MASK : GARBAGE_BIAS);
}

/* ---- SPEC 5's worked example ------------------------------------------------------------ */

/* cu_q = [0,1,3], cu_k = [0,3,5], Hq = 4, Hk = 2, key-side mask [5, 2] (Hv = Hk = 2):
 *   mask rows (var 0, var 1): t0 (1,0)  t1 (0,1)  t2 (1,1)  t3 (0,1)  t4 (1,0)
 * Heads 0,1 read variant 0 and heads 2,3 variant 1 (h / (4/2)). Batch 1 (queries 1, 2) has
 * local keys 0,1 = mask rows 3,4: heads 0,1 see global key {4}, heads 2,3 (head 3 in the SPEC)
 * see {3}. Batch 0: heads 0,1 see {0,2}, heads 2,3 see {1,2}. */
static const uint8_t worked_mask[5][2] = {{1, 0}, {0, 1}, {1, 1}, {0, 1}, {1, 0}};
static const int worked_visible[3][4] = {
    /* bit k = global key k visible, per query token t and head h (written by hand) */
    {0x05, 0x05, 0x06, 0x06},
    {0x10, 0x10, 0x08, 0x08},
    {0x10, 0x10, 0x08, 0x08},
};
static const double worked_bias[5][2] = {{0.5, -1}, {1.25, 0.25}, {-0.75, 2}, {1.5, -0.5}, {-1, 0.75}};

struct worked_arg {
    enum cflash_kernel kernel;
    int storage; /* ST_CONTIG, ST_TRANSPOSED, ST_KSTRIDE3 */
    int with_bias;
};

static void worked_intent(const void *ctx, int64_t b, int64_t h, int64_t i, int64_t j, int *keep,
                          double *bias)
{
    const struct worked_arg *a = ctx;
    static const int64_t cuq[3] = {0, 1, 3}, cuk[3] = {0, 3, 5};
    const int64_t t = cuq[b] + i, key = cuk[b] + j;
    *keep = (worked_visible[t][h] >> key) & 1;                     /* the hand-written sets */
    *bias = a->with_bias ? worked_bias[key][h / 2] : 0;             /* [cu_k[b] + j, h / 2] */
}

static double worked_mask_at(const void *ctx, const int64_t *idx)
{
    (void)ctx;
    return worked_mask[idx[0]][idx[1]];
}
static double worked_bias_at(const void *ctx, const int64_t *idx)
{
    (void)ctx;
    return worked_bias[idx[0]][idx[1]];
}

static void worked_case(const void *arg)
{
    const struct worked_arg *a = arg;
    if (!require_kernel(a->kernel))
        return;
    struct attn_cfg c = cfg_default();
    c.varlen = 1;
    c.B = 2;
    c.lq[0] = 1;
    c.lq[1] = 2;
    c.lk[0] = 3;
    c.lk[1] = 2;
    c.Hq = 4;
    c.Hk = 2;
    c.D = 16;
    c.seed = 0x5fec5;
    struct attn_setup s;
    uniform_setup(&s, &c);
    struct tbuf m, bias;
    memset(&bias, 0, sizeof bias);
    int64_t sh[2] = {5, 2};
    make_src(&m, CFLASH_DTYPE_U8, CFLASH_LAYOUT_KEY_SIDE, 2, sh, a->storage);
    fill_table(&m.t, worked_mask_at, NULL);
    s.params.mask = &m.t;
    s.params.mask_layout = CFLASH_LAYOUT_KEY_SIDE;
    if (a->with_bias) {
        make_src(&bias, CFLASH_DTYPE_F32, CFLASH_LAYOUT_KEY_SIDE, 2, sh, a->storage);
        fill_table(&bias.t, worked_bias_at, NULL);
        s.params.bias = &bias.t;
        s.params.bias_layout = CFLASH_LAYOUT_KEY_SIDE;
    }
    uniform_run(&s, a->kernel, worked_intent, a, "worked example", NULL);
    tbuf_free(&m);
    tbuf_free(&bias);
    attn_free(&s);
}

/* ---- the flash-dmattn defects ----------------------------------------------------------- */

/* Shared problem: 3 sequences, lq = {3, 5, 2}, lk = {7, 4, 9} (Tq = 10, Tk = 20), Hq = 4,
 * Hk = 2 unless a test says otherwise. */
static void defect_cfg(struct attn_cfg *c, int Hq, int Hk, uint64_t seed)
{
    *c = cfg_default();
    c->varlen = 1;
    c->B = 3;
    static const int lq[3] = {3, 5, 2}, lk[3] = {7, 4, 9};
    memcpy(c->lq, lq, sizeof lq);
    memcpy(c->lk, lk, sizeof lk);
    c->Hq = Hq;
    c->Hk = Hk;
    c->D = 16;
    c->seed = seed;
}

/* key-side tables: element [t, var] */
static double ks_mask_at(const void *ctx, const int64_t *idx)
{
    (void)ctx;
    return tab_keep((uint64_t)idx[0], (uint64_t)idx[1], 1) ? 1 + (double)(idx[0] % 200) : 0;
}
static double ks_bias_at(const void *ctx, const int64_t *idx)
{
    (void)ctx;
    return tab_bias((uint64_t)idx[0], (uint64_t)idx[1], 1);
}

struct ks_intent_ctx {
    const struct attn_setup *s;
    int64_t Hv;
    int mask, bias;
};
/* SPEC 5 key-side: (b, h, i, j) reads [cu_k[b] + j, h / (Hq / Hv)] */
static void ks_intent(const void *ctx, int64_t b, int64_t h, int64_t i, int64_t j, int *keep,
                      double *bias)
{
    const struct ks_intent_ctx *c = ctx;
    const int64_t t = c->s->koff[b] + j, var = h / (c->s->Hq / c->Hv);
    int64_t idx[2] = {t, var};
    *keep = c->mask ? ks_mask_at(NULL, idx) != 0 : 1;
    *bias = c->bias ? ks_bias_at(NULL, idx) : 0;
}

/* (a) stride order: the key-side [Tk, Hv] given as a (Hv, Tk) storage, transposed (strides
 * swapped), reads the same as the contiguous one; reading that storage as if it were [Tk, Hv]
 * row-major (the PR's assumption) would change the visible sets. */
static void defect_stride_order(const void *arg)
{
    const enum cflash_kernel kernel = *(const enum cflash_kernel *)arg;
    if (!require_kernel(kernel))
        return;
    struct attn_cfg c;
    defect_cfg(&c, 4, 2, 0xa0);
    struct attn_setup s;
    uniform_setup(&s, &c);
    int64_t sh[2] = {s.Tk, 2};
    struct tbuf m[2], bias[2], out[2];
    const int storages[2] = {ST_CONTIG, ST_TRANSPOSED};
    for (int v = 0; v < 2; v++) {
        make_src(&m[v], CFLASH_DTYPE_U8, CFLASH_LAYOUT_KEY_SIDE, 2, sh, storages[v]);
        make_src(&bias[v], CFLASH_DTYPE_F32, CFLASH_LAYOUT_KEY_SIDE, 2, sh, storages[v]);
        fill_table(&m[v].t, ks_mask_at, NULL);
        fill_table(&bias[v].t, ks_bias_at, NULL);
        memset(&out[v], 0, sizeof out[v]);
    }
    /* test design: the transposed storage read row-major disagrees with the intent */
    int64_t differ = 0;
    for (int64_t t = 0; t < s.Tk; t++)
        for (int64_t var = 0; var < 2; var++) {
            int64_t idx[2] = {t, var};
            differ += (((const uint8_t *)m[1].t.data)[t * 2 + var] != 0) != (ks_mask_at(NULL, idx) != 0);
        }
    struct ks_intent_ctx ic = {&s, 2, 1, 1};
    int ok = differ > 0;
    if (!ok)
        tfail(__FILE__, __LINE__, "test design: the transposed storage read row-major equals the intent");
    for (int v = 0; ok && v < 2; v++) {
        s.params.mask = &m[v].t;
        s.params.mask_layout = CFLASH_LAYOUT_KEY_SIDE;
        s.params.bias = &bias[v].t;
        s.params.bias_layout = CFLASH_LAYOUT_KEY_SIDE;
        ok = uniform_run(&s, kernel, ks_intent, &ic, v ? "key-side (Hv,Tk) storage" : "key-side [Tk,Hv]",
                         &out[v]);
    }
    if (ok && memcmp(out[0].base, out[1].base, out[0].bytes) != 0)
        tfail(__FILE__, __LINE__, "transposed storage: out bytes differ from the [Tk, Hv] storage");
    for (int v = 0; v < 2; v++) {
        tbuf_free(&m[v]);
        tbuf_free(&bias[v]);
        tbuf_free(&out[v]);
    }
    attn_free(&s);
}

/* generic per-layout tables for (b), (c) and (d); element index by layout */
struct lay_ctx {
    const struct attn_setup *s;
    int layout;
    int64_t Hv;
    int onehot; /* (c): exactly one kept key per row, at a column that depends on the row */
};
static double lay_mask_at(const void *ctx, const int64_t *idx)
{
    const struct lay_ctx *c = ctx;
    if (c->layout == CFLASH_LAYOUT_KEY_SIDE)
        return tab_keep((uint64_t)idx[0], (uint64_t)idx[1], 2) || idx[1] % 3 == 2 ? 1 : 0;
    if (c->layout == CFLASH_LAYOUT_QUERY_SIDE) {
        if (c->onehot) /* row tq keeps column (tq + 3 var) % 5 only */
            return idx[2] == (idx[0] + 3 * idx[1]) % 5 ? 7 : 0;
        return tab_keep((uint64_t)idx[0] * 64 + (uint64_t)idx[2], (uint64_t)idx[1], 3) ? 1 : 0;
    }
    if (c->onehot) /* [b, var, i, j] keeps column (i + 2 var + b) % 4 only */
        return idx[3] == (idx[2] + 2 * idx[1] + idx[0]) % 4 ? 9 : 0;
    return tab_keep((uint64_t)(idx[0] * 4096 + idx[2] * 64 + idx[3]), (uint64_t)idx[1], 4) ? 1 : 0;
}
static double lay_bias_at(const void *ctx, const int64_t *idx)
{
    const struct lay_ctx *c = ctx;
    if (c->layout == CFLASH_LAYOUT_KEY_SIDE)
        return tab_bias((uint64_t)idx[0], (uint64_t)idx[1], 5);
    if (c->layout == CFLASH_LAYOUT_QUERY_SIDE)
        return tab_bias((uint64_t)idx[0] * 64 + (uint64_t)idx[2], (uint64_t)idx[1], 6);
    return tab_bias((uint64_t)(idx[0] * 4096 + idx[2] * 64 + idx[3]), (uint64_t)idx[1], 7);
}
/* Elements beyond the ones SPEC 5 reads: left as garbage (0 / NaN). */
static int lay_used(const struct lay_ctx *c, const int64_t *idx)
{
    const struct attn_setup *s = c->s;
    if (c->layout == CFLASH_LAYOUT_QUERY_SIDE) {
        int64_t b = 0;
        while (s->qoff[b + 1] <= idx[0])
            b++;
        return idx[2] < s->koff[b + 1] - s->koff[b];
    }
    if (c->layout == CFLASH_LAYOUT_DENSE)
        return idx[2] < s->qoff[idx[0] + 1] - s->qoff[idx[0]] &&
               idx[3] < s->koff[idx[0] + 1] - s->koff[idx[0]];
    return 1;
}
static void fill_used(const struct cflash_tensor *t, const struct lay_ctx *c, table_fn f)
{
    int64_t n = tnumel(t), idx[4];
    for (int64_t lin = 0; lin < n; lin++) {
        int64_t r = lin;
        for (int a = t->ndim - 1; a >= 0; a--) {
            idx[a] = r % t->shape[a];
            r /= t->shape[a];
        }
        if (lay_used(c, idx))
            tset(t, idx, f(c, idx));
    }
}
/* the intent: SPEC 5's table, written out per layout */
struct lay_intent_ctx {
    struct lay_ctx lc;
    int mask, bias;
};
static void lay_intent(const void *ctx, int64_t b, int64_t h, int64_t i, int64_t j, int *keep,
                       double *bias)
{
    const struct lay_intent_ctx *c = ctx;
    const struct attn_setup *s = c->lc.s;
    const int64_t var = h / (s->Hq / c->lc.Hv);
    int64_t idx[4];
    if (c->lc.layout == CFLASH_LAYOUT_KEY_SIDE) {
        idx[0] = s->koff[b] + j; /* global key row */
        idx[1] = var;
    } else if (c->lc.layout == CFLASH_LAYOUT_QUERY_SIDE) {
        idx[0] = s->qoff[b] + i; /* global query row, local key column */
        idx[1] = var;
        idx[2] = j;
    } else {
        idx[0] = b; /* all local */
        idx[1] = var;
        idx[2] = i;
        idx[3] = j;
    }
    *keep = c->mask ? lay_mask_at(&c->lc, idx) != 0 : 1;
    *bias = c->bias ? lay_bias_at(&c->lc, idx) : 0;
}

static void lay_shape(const struct attn_setup *s, int layout, int64_t Hv, int grow, int64_t *sh)
{
    struct sspec sp;
    memset(&sp, 0, sizeof sp);
    sp.layout = layout;
    sp.hv = Hv == 1 ? HV_1 : Hv == s->Hk ? HV_HK : HV_HQ;
    sp.grow = grow;
    src_shape(&sp, s, sh);
}

struct lay_arg {
    enum cflash_kernel kernel;
    int layout;
    int hv;      /* HV_* */
    int storage; /* ST_* */
    int what;    /* 0 mask + bias, 1 mask only, 2 bias only */
    int Hq, Hk;
    int onehot;
    int wrong;   /* test design check: 1 local/global swap, 2 h % Hv mapping, 3 unit key stride */
};

/* Visible sets under a deliberately wrong reading differ from the intent somewhere (so the
 * case would catch that defect). */
static int64_t wrong_reading_differs(const struct lay_arg *a, const struct lay_intent_ctx *ic,
                                     const struct cflash_tensor *mt)
{
    const struct attn_setup *s = ic->lc.s;
    int64_t differ = 0;
    for (int64_t b = 0; b < s->B; b++) {
        const int64_t Lq = s->qoff[b + 1] - s->qoff[b], Lk = s->koff[b + 1] - s->koff[b];
        for (int64_t i = 0; i < Lq; i++)
            for (int64_t h = 0; h < s->Hq; h++)
                for (int64_t j = 0; j < Lk; j++) {
                    int keep, wkeep = 0;
                    double bias, wbias = 0;
                    lay_intent(ic, b, h, i, j, &keep, &bias);
                    const int64_t var = h / (s->Hq / ic->lc.Hv);
                    int64_t idx[4] = {0, 0, 0, 0};
                    if (a->wrong == 1) { /* local key row / global key column */
                        if (a->layout == CFLASH_LAYOUT_KEY_SIDE) {
                            idx[0] = j;
                            idx[1] = var;
                        } else if (a->layout == CFLASH_LAYOUT_QUERY_SIDE) {
                            idx[0] = s->qoff[b] + i;
                            idx[1] = var;
                            idx[2] = s->koff[b] + j;
                        } else {
                            idx[0] = b;
                            idx[1] = var;
                            idx[2] = s->qoff[b] + i;
                            idx[3] = s->koff[b] + j;
                        }
                        int in = 1;
                        for (int d = 0; d < mt->ndim; d++)
                            in &= idx[d] < mt->shape[d];
                        if (in) {
                            wkeep = a->what != 2 ? lay_mask_at(&ic->lc, idx) != 0 : 1;
                            wbias = a->what != 1 ? lay_bias_at(&ic->lc, idx) : 0;
                        }
                    } else if (a->wrong == 2) { /* interleaved head variants: h % Hv */
                        struct lay_intent_ctx w = *ic;
                        lay_intent(&w, b, h % ic->lc.Hv * (s->Hq / ic->lc.Hv), i, j, &wkeep, &wbias);
                    } else if (a->wrong == 3) { /* the key axis read with unit stride */
                        struct mask_src ms = {mt, a->layout};
                        mask_elem_index(&ms, s->Hq, s->qoff, s->koff, b, h, i, j, idx);
                        const int kax = a->layout == CFLASH_LAYOUT_KEY_SIDE ? 0 : mt->ndim - 1;
                        int64_t off = 0;
                        for (int d = 0; d < mt->ndim; d++)
                            off += idx[d] * (d == kax ? 1 : mt->stride[d]);
                        wkeep = ((const uint8_t *)mt->data)[off] != 0;
                        wbias = bias;
                    }
                    differ += wkeep != keep || wbias != bias;
                }
    }
    return differ;
}

static void defect_layout_case(const void *arg)
{
    const struct lay_arg *a = arg;
    if (!require_kernel(a->kernel))
        return;
    struct attn_cfg c;
    defect_cfg(&c, a->Hq, a->Hk, 0xd0 + (uint64_t)a->layout * 16 + (uint64_t)a->hv);
    struct attn_setup s;
    uniform_setup(&s, &c);
    struct lay_intent_ctx ic;
    ic.lc.s = &s;
    ic.lc.layout = a->layout;
    ic.lc.Hv = hv_value(a->hv, s.Hq, s.Hk);
    ic.lc.onehot = a->onehot;
    ic.mask = a->what != 2;
    ic.bias = a->what != 1;
    int64_t sh[4];
    /* packed DENSE and QUERY_SIDE: axes 2 longer than needed (their tails are garbage) */
    lay_shape(&s, a->layout, ic.lc.Hv, a->layout == CFLASH_LAYOUT_KEY_SIDE ? 0 : 2, sh);
    const int nd = a->layout == CFLASH_LAYOUT_KEY_SIDE ? 2 : a->layout == CFLASH_LAYOUT_QUERY_SIDE ? 3 : 4;
    struct tbuf m, bias;
    memset(&m, 0, sizeof m);
    memset(&bias, 0, sizeof bias);
    make_src(&m, CFLASH_DTYPE_U8, a->layout, nd, sh, a->storage);
    fill_used(&m.t, &ic.lc, lay_mask_at);
    make_src(&bias, CFLASH_DTYPE_BF16, a->layout, nd, sh, a->storage);
    fill_used(&bias.t, &ic.lc, lay_bias_at);
    if (ic.mask) {
        s.params.mask = &m.t;
        s.params.mask_layout = (enum cflash_layout)a->layout;
    }
    if (ic.bias) {
        s.params.bias = &bias.t;
        s.params.bias_layout = (enum cflash_layout)a->layout;
    }
    if (a->wrong && wrong_reading_differs(a, &ic, &m.t) == 0)
        tfail(__FILE__, __LINE__, "test design: the wrong reading (%d) gives the same result", a->wrong);
    else
        uniform_run(&s, a->kernel, lay_intent, &ic, layout_names[a->layout], NULL);
    tbuf_free(&m);
    tbuf_free(&bias);
    attn_free(&s);
}

/* Softcap, then the bias (SPEC 1.2-1.3): with softcap 1 and biases in [-2, 2] the two orders
 * give very different probabilities; the case checks the right one and that they differ. */
struct softcap_arg {
    enum cflash_kernel kernel;
    int layout;
};
static void defect_softcap_order(const void *arg)
{
    const struct softcap_arg *a = arg;
    if (!require_kernel(a->kernel))
        return;
    struct attn_cfg c;
    defect_cfg(&c, 4, 2, 0x5c);
    c.softcap = 1.0f;
    c.scale = 1.0f;
    c.causal = 1;
    struct attn_setup s;
    uniform_setup(&s, &c);
    struct lay_intent_ctx ic;
    ic.lc.s = &s;
    ic.lc.layout = a->layout;
    ic.lc.Hv = s.Hq;
    ic.lc.onehot = 0;
    ic.mask = 0;
    ic.bias = 1;
    int64_t sh[4];
    lay_shape(&s, a->layout, ic.lc.Hv, 0, sh);
    const int nd = a->layout == CFLASH_LAYOUT_KEY_SIDE ? 2 : a->layout == CFLASH_LAYOUT_QUERY_SIDE ? 3 : 4;
    struct tbuf bias, out;
    make_src(&bias, CFLASH_DTYPE_F16, a->layout, nd, sh, ST_CONTIG);
    fill_used(&bias.t, &ic.lc, lay_bias_at);
    s.params.bias = &bias.t;
    s.params.bias_layout = (enum cflash_layout)a->layout;
    if (uniform_run(&s, a->kernel, lay_intent, &ic, "softcap then bias", &out)) {
        double d = uniform_expect(&s, lay_intent, &ic, &out.t, NULL, "", 1, 0);
        if (d < 0.05)
            tfail(__FILE__, __LINE__,
                  "test design: bias-before-softcap differs from the output by only %.3g", d);
    }
    tbuf_free(&out);
    tbuf_free(&bias);
    attn_free(&s);
}

/* ---- misuse ----------------------------------------------------------------------------- */

#define MBUF 40000
#define MPOISON 0x7f

enum mut {
    MU_OK,           /* valid: OK */
    MU_OK_GROW,      /* valid: packed DENSE Lq/Lk axes or QUERY_SIDE last axis > longest */
    MU_OK_EMPTY,     /* valid: Tk = 0, key-side [0, Hv] with data NULL */
    MU_DTYPE,        /* dtype = val */
    MU_LAYOUT,       /* layout = val */
    MU_NDIM,         /* ndim = val */
    MU_HV,           /* shape[1] = val */
    MU_AXIS,         /* shape[ax] = val */
    MU_DATA_NULL,    /* data = NULL */
    MU_DENSE_CALL_LAYOUT, /* dense call with layout val (a tensor of that layout's rank) */
    MU_HV_DIV,       /* Hq = 8, Hk = 2 and Hv = 4: divides Hq but is neither 1, Hk nor Hq */
};

struct misuse_arg {
    int dense;  /* dense call, else varlen */
    int target; /* 0 mask, 1 bias */
    int layout;
    int mut;
    int ax;
    int64_t val;
};

struct mfix {
    float *qb, *kb, *vb, *ob, *lb, *biasb, *bias2b;
    uint8_t *maskb, *mask2b;
    int32_t cuq[4], cuk[4];
    struct cflash_tensor q, k, v, out, lse, cuq_t, cuk_t, mask, bias;
    struct cflash_tensor omask, obias; /* the valid other one */
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

/* dense: q [2,3,4,8], k [2,5,2,8], v [2,5,2,6], out [2,3,4,6], lse [2,4,3]
 * varlen: q [8,4,8], k [10,2,8], v [10,2,6], cu_q [0,3,3,8] (longest 5), cu_k [0,4,10,10]
 *         (longest 6), out [8,4,6], lse [4,8]
 * mask / bias (Hv = Hk = 2): DENSE [B, 2, Lq, Lk] (varlen [3, 2, 5, 6]), KEY_SIDE [10, 2],
 * QUERY_SIDE [8, 2, 6]. The other of mask / bias is valid (varlen: a key-side mask or a
 * query-side bias; dense: DENSE [1, 1, 1, 1] / [2, 4, 3, 5]), so the message must name the
 * broken one. */
static void shape_for(const struct misuse_arg *a, int layout, int64_t *sh, int *nd)
{
    if (layout == CFLASH_LAYOUT_KEY_SIDE) {
        *nd = 2;
        sh[0] = 10;
        sh[1] = 2;
    } else if (layout == CFLASH_LAYOUT_QUERY_SIDE) {
        *nd = 3;
        sh[0] = 8;
        sh[1] = 2;
        sh[2] = 6;
    } else {
        *nd = 4;
        if (a->dense) {
            sh[0] = 2;
            sh[1] = 2;
            sh[2] = 3;
            sh[3] = 5;
        } else {
            sh[0] = 3;
            sh[1] = 2;
            sh[2] = 5;
            sh[3] = 6;
        }
    }
}

static struct cflash_tensor tens(void *data, enum cflash_dtype dt, int nd, const int64_t *sh)
{
    return tdesc(data, dt, nd, sh);
}

static void mfix_init(struct mfix *f, const struct misuse_arg *a)
{
    memset(f, 0, sizeof *f);
    struct rng r = {77};
    f->qb = mbuf_rand(&r);
    f->kb = mbuf_rand(&r);
    f->vb = mbuf_rand(&r);
    f->biasb = mbuf_rand(&r);
    f->bias2b = mbuf_rand(&r);
    f->maskb = malloc(MBUF);
    f->mask2b = malloc(MBUF);
    for (int i = 0; i < MBUF; i++) {
        f->maskb[i] = (uint8_t)(1 + i % 3);
        f->mask2b[i] = (uint8_t)(i % 5 != 0);
    }
    f->ob = malloc(MBUF * sizeof *f->ob);
    f->lb = malloc(MBUF * sizeof *f->lb);
    memset(f->ob, MPOISON, MBUF * sizeof *f->ob);
    memset(f->lb, MPOISON, MBUF * sizeof *f->lb);
    f->p = cflash_attn_params_default();
    f->p.causal = 1;
    f->p.softcap = 10;
    if (a->dense) {
        int64_t qs[4] = {2, 3, 4, 8}, ks[4] = {2, 5, 2, 8}, vs[4] = {2, 5, 2, 6},
                os[4] = {2, 3, 4, 6}, ls[3] = {2, 4, 3};
        f->q = tens(f->qb, CFLASH_DTYPE_F32, 4, qs);
        f->k = tens(f->kb, CFLASH_DTYPE_F32, 4, ks);
        f->v = tens(f->vb, CFLASH_DTYPE_F32, 4, vs);
        f->out = tens(f->ob, CFLASH_DTYPE_F32, 4, os);
        f->lse = tens(f->lb, CFLASH_DTYPE_F32, 3, ls);
        int64_t om[4] = {1, 1, 1, 1}, ob[4] = {2, 4, 3, 5};
        f->omask = tens(f->mask2b, CFLASH_DTYPE_U8, 4, om);
        f->obias = tens(f->bias2b, CFLASH_DTYPE_F32, 4, ob);
    } else {
        int64_t qs[3] = {8, 4, 8}, ks[3] = {10, 2, 8}, vs[3] = {10, 2, 6}, os[3] = {8, 4, 6},
                ls[2] = {4, 8}, cs[1] = {4};
        f->q = tens(f->qb, CFLASH_DTYPE_F32, 3, qs);
        f->k = tens(f->kb, CFLASH_DTYPE_F32, 3, ks);
        f->v = tens(f->vb, CFLASH_DTYPE_F32, 3, vs);
        f->out = tens(f->ob, CFLASH_DTYPE_F32, 3, os);
        f->lse = tens(f->lb, CFLASH_DTYPE_F32, 2, ls);
        static const int32_t cq[4] = {0, 3, 3, 8}, ck[4] = {0, 4, 10, 10};
        memcpy(f->cuq, cq, sizeof cq);
        memcpy(f->cuk, ck, sizeof ck);
        f->cuq_t = tens(f->cuq, CFLASH_DTYPE_I32, 1, cs);
        f->cuk_t = tens(f->cuk, CFLASH_DTYPE_I32, 1, cs);
        int64_t om[2] = {10, 1}, ob[3] = {8, 4, 6};
        f->omask = tens(f->mask2b, CFLASH_DTYPE_U8, 2, om);
        f->obias = tens(f->bias2b, CFLASH_DTYPE_F16, 3, ob);
    }
    int64_t sh[4];
    int nd;
    shape_for(a, a->layout, sh, &nd);
    f->mask = tens(f->maskb, CFLASH_DTYPE_U8, nd, sh);
    f->bias = tens(f->biasb, CFLASH_DTYPE_F32, nd, sh);
    f->p.mask = a->target == 0 ? &f->mask : &f->omask;
    f->p.mask_layout = a->target == 0 ? (enum cflash_layout)a->layout
                                      : a->dense ? CFLASH_LAYOUT_DENSE : CFLASH_LAYOUT_KEY_SIDE;
    f->p.bias = a->target == 1 ? &f->bias : &f->obias;
    f->p.bias_layout = a->target == 1 ? (enum cflash_layout)a->layout
                                      : a->dense ? CFLASH_LAYOUT_DENSE : CFLASH_LAYOUT_QUERY_SIDE;
}

static void mfix_free(struct mfix *f)
{
    free(f->qb);
    free(f->kb);
    free(f->vb);
    free(f->ob);
    free(f->lb);
    free(f->biasb);
    free(f->bias2b);
    free(f->maskb);
    free(f->mask2b);
}

static enum cflash_status mfix_call(struct mfix *f, int dense)
{
    if (dense)
        return cflash_attn_dense(&f->q, &f->k, &f->v, &f->out, &f->lse, &f->p);
    return cflash_attn_varlen(&f->q, &f->k, &f->v, &f->cuq_t, &f->cuk_t, -1, -1, &f->out, &f->lse,
                              &f->p);
}

static int mbuf_clean(const float *b)
{
    const unsigned char *c = (const unsigned char *)b;
    for (size_t i = 0; i < MBUF * sizeof *b; i++)
        if (c[i] != MPOISON)
            return 0;
    return 1;
}

static void misuse_case(const void *arg)
{
    const struct misuse_arg *a = arg;
    struct mfix f;
    mfix_init(&f, a);
    struct cflash_tensor *t = a->target == 0 ? &f.mask : &f.bias;
    enum cflash_layout *lay = a->target == 0 ? &f.p.mask_layout : &f.p.bias_layout;
    const char *name = a->target == 0 ? "mask" : "bias";
    enum cflash_status want = CFLASH_STATUS_INVALID_ARGUMENT;
    switch (a->mut) {
    case MU_OK:
        want = CFLASH_STATUS_OK;
        break;

    case MU_OK_GROW:
        want = CFLASH_STATUS_OK;
        if (a->layout == CFLASH_LAYOUT_DENSE) {
            t->shape[2] += 3;
            t->shape[3] += 4;
        } else {
            t->shape[2] += 5;
        }
        contig(t);
        break;
    case MU_OK_EMPTY: {
        /* Tk = 0: every row empty; a key-side [0, Hv] tensor may have data NULL */
        want = CFLASH_STATUS_OK;
        static const int32_t zk[4] = {0, 0, 0, 0};
        memcpy(f.cuk, zk, sizeof zk);
        f.k.shape[0] = f.v.shape[0] = 0;
        contig(&f.k);
        contig(&f.v);
        t->shape[0] = 0;
        t->data = NULL;
        contig(t);
        if (a->target == 1) { /* the valid other one: a key-side mask, also [0, 1] */
            f.omask.shape[0] = 0;
            contig(&f.omask);
        }
        break;
    }
    case MU_DTYPE:
        t->dtype = (enum cflash_dtype)a->val;
        break;
    case MU_LAYOUT:
        *lay = (enum cflash_layout)a->val;
        break;
    case MU_NDIM: {
        /* a tensor of another rank (shapes of that layout, or [Tk] / 5 dims) */
        int64_t sh[4] = {10, 2, 6, 6};
        int nd = (int)a->val;
        if (nd >= 2 && nd <= 4) {
            static const int lay_of_nd[5] = {0, 0, CFLASH_LAYOUT_KEY_SIDE, CFLASH_LAYOUT_QUERY_SIDE,
                                             CFLASH_LAYOUT_DENSE};
            shape_for(a, lay_of_nd[nd], sh, &nd);
        }
        t->ndim = (int32_t)a->val;
        for (int i = 0; i < CFLASH_MAX_DIMS; i++)
            t->shape[i] = i < t->ndim ? sh[i] : 0;
        if (t->ndim <= CFLASH_MAX_DIMS)
            contig(t);
        break;
    }
    case MU_HV:
        t->shape[1] = a->val;
        contig(t);
        break;
    case MU_HV_DIV: {
        want = a->val == 8 ? CFLASH_STATUS_OK : CFLASH_STATUS_INVALID_ARGUMENT;
        const int ha = a->dense ? 2 : 1; /* heads axis of q and out */
        f.q.shape[ha] = 8;
        f.out.shape[ha] = 8;
        f.lse.shape[a->dense ? 1 : 0] = 8;
        contig(&f.q);
        contig(&f.out);
        contig(&f.lse);
        f.obias.shape[1] = 8; /* the other one stays valid: Hv = Hq */
        contig(&f.obias);
        t->shape[1] = a->val;
        contig(t);
        break;
    }
    case MU_AXIS:
        t->shape[a->ax] = a->val;
        contig(t);
        break;
    case MU_DATA_NULL:
        t->data = NULL;
        break;
    case MU_DENSE_CALL_LAYOUT: {
        int64_t sh[4];
        int nd;
        struct misuse_arg va = *a;
        va.dense = 0;
        shape_for(&va, (int)a->val, sh, &nd);
        if (a->ax) { /* keep the 4-D dense tensor, only the layout is wrong */
            *lay = (enum cflash_layout)a->val;
            break;
        }
        if (a->ax == 2) /* [0, Hv] / [0, Hv, Lk]: only the layout rule can reject it (a dense
                         * call has no Tq / Tk for the shape rules to disagree with) */
            sh[0] = 0;
        if (a->val == CFLASH_LAYOUT_QUERY_SIDE)
            sh[2] = 5; /* >= Lk */
        *t = tens(t->data, t->dtype, nd, sh);
        *lay = (enum cflash_layout)a->val;
        break;
    }
    }
    enum cflash_status st = mfix_call(&f, a->dense);
    const char *err = cflash_last_error();
    if (st != want)
        tfail(__FILE__, __LINE__, "returned %s, want %s (last error: \"%s\")",
              cflash_status_string(st), cflash_status_string(want), err);
    else if (want != CFLASH_STATUS_OK && !msg_names(err, name))
        tfail(__FILE__, __LINE__, "message \"%s\" does not name `%s`", err, name);
    else if (want != CFLASH_STATUS_OK && (!mbuf_clean(f.ob) || !mbuf_clean(f.lb)))
        tfail(__FILE__, __LINE__, "out / lse were written although the call failed");
    else if (want == CFLASH_STATUS_OK && mbuf_clean(f.ob))
        tfail(__FILE__, __LINE__, "OK but out was not written");
    mfix_free(&f);
}

/* cflash_attn_range with a mask / bias on the plan's global axes (cflash.h): DENSE
 * [1, Hv, Tq|1, Tk|1], KEY_SIDE [Tk, Hv], QUERY_SIDE [Tq, Hv, >= Tk]. The varlen fixture's
 * q [8,4,8], k [10,2,8], v [10,2,6] under a one-slice plan Tq = 8, Tk = 10; Hv = 2. Valid
 * shapes are OK (out written); each broken one is INVALID_ARGUMENT naming `mask` / `bias`,
 * nothing written. The other of mask / bias is valid (a key-side mask [10, 1] or a query-side
 * bias [8, 4, 10]), so the message must name the broken one. */
enum { RM_OK, RM_OK_BCAST, RM_OK_GROW, RM_AXIS, RM_HV, RM_NDIM, RM_DTYPE, RM_LAYOUT };
struct range_arg {
    int target; /* 0 mask, 1 bias */
    int layout;
    int mut;    /* RM_* */
    int ax;
    int64_t val;
};
static void range_case(const void *arg)
{
    const struct range_arg *a = arg;
    struct misuse_arg ma = {0, 0, CFLASH_LAYOUT_KEY_SIDE, MU_OK, 0, 0};
    struct mfix f;
    mfix_init(&f, &ma);
    int32_t qr[2] = {0, 8}, kr[2] = {0, 10};
    int64_t rs[2] = {1, 2};
    struct cflash_tensor qrt = tdesc(qr, CFLASH_DTYPE_I32, 2, rs), krt = tdesc(kr, CFLASH_DTYPE_I32, 2, rs);
    cflash_range_plan_t plan = NULL;
    CHECK_STATUS(cflash_range_plan_create(&plan, &qrt, &krt, NULL, 8, 10, NULL), CFLASH_STATUS_OK);
    int64_t sh[4];
    int nd;
    if (a->layout == CFLASH_LAYOUT_DENSE) {
        nd = 4;
        sh[0] = 1;
        sh[1] = 2;
        sh[2] = a->mut == RM_OK_BCAST ? 1 : 8;
        sh[3] = a->mut == RM_OK_BCAST ? 1 : 10;
    } else if (a->layout == CFLASH_LAYOUT_KEY_SIDE) {
        nd = 2;
        sh[0] = 10;
        sh[1] = 2;
    } else {
        nd = 3;
        sh[0] = 8;
        sh[1] = 2;
        sh[2] = a->mut == RM_OK_GROW ? 13 : 10;
    }
    enum cflash_dtype dt = a->target ? CFLASH_DTYPE_BF16 : CFLASH_DTYPE_U8;
    enum cflash_layout lay = (enum cflash_layout)a->layout;
    switch (a->mut) {
    case RM_AXIS: sh[a->ax] = a->val; break;
    case RM_HV: sh[1] = a->val; break;
    case RM_NDIM:
        nd = (int)a->val;
        for (int i = 0; i < nd; i++)
            if (i >= (a->layout == CFLASH_LAYOUT_DENSE ? 4 : a->layout == CFLASH_LAYOUT_KEY_SIDE ? 2 : 3))
                sh[i] = 1;
        break;
    case RM_DTYPE: dt = a->target ? CFLASH_DTYPE_U8 : CFLASH_DTYPE_F32; break;
    case RM_LAYOUT: lay = (enum cflash_layout)a->val; break;
    default: break;
    }
    struct cflash_tensor t = tens(a->target ? (void *)f.biasb : (void *)f.maskb, dt, nd, sh);
    int64_t oms[2] = {10, 1}, obs[3] = {8, 4, 10};
    struct cflash_tensor om = tens(f.mask2b, CFLASH_DTYPE_U8, 2, oms),
                         ob = tens(f.bias2b, CFLASH_DTYPE_F32, 3, obs);
    struct cflash_attn_params p = cflash_attn_params_default();
    p.mask = a->target ? &om : &t;
    p.mask_layout = a->target ? CFLASH_LAYOUT_KEY_SIDE : lay;
    p.bias = a->target ? &t : &ob;
    p.bias_layout = a->target ? lay : CFLASH_LAYOUT_QUERY_SIDE;
    const int ok = a->mut == RM_OK || a->mut == RM_OK_BCAST || a->mut == RM_OK_GROW;
    enum cflash_status want = ok ? CFLASH_STATUS_OK : CFLASH_STATUS_INVALID_ARGUMENT;
    enum cflash_status st = cflash_attn_range(&f.q, &f.k, &f.v, plan, &f.out, &f.lse, &p);
    const char *err = cflash_last_error();
    const char *name = a->target ? "bias" : "mask";
    if (st != want)
        tfail(__FILE__, __LINE__, "cflash_attn_range returned %s, want %s (\"%s\")",
              cflash_status_string(st), cflash_status_string(want), err);
    else if (!ok && !msg_names(err, name))
        tfail(__FILE__, __LINE__, "message \"%s\" does not name `%s`", err, name);
    else if (!ok && (!mbuf_clean(f.ob) || !mbuf_clean(f.lb)))
        tfail(__FILE__, __LINE__, "out / lse were written although the call failed");
    else if (ok && (mbuf_clean(f.ob) || mbuf_clean(f.lb)))
        tfail(__FILE__, __LINE__, "OK but out / lse were not written");
    cflash_range_plan_destroy(plan);
    mfix_free(&f);
}

/* ---- threads ---------------------------------------------------------------------------- */

static void threads_case(const void *arg)
{
    const struct mcfg *c = arg;
    if (!require_kernel(c->a.kernel))
        return;
    struct mcfg one = *c;
    one.a.threads = 1;
    mask_check(&one); /* the single-thread result is right ... */
    if (tfailed())
        return;
    struct mctx *x = calloc(1, sizeof *x);
    msetup(x, c);
    struct attn_setup *s = &x->s;
    enum cflash_dtype odt = s->c.out_f32 ? CFLASH_DTYPE_F32 : s->c.dtype;
    struct tbuf o1, l1, o, l;
    attn_make_out(s, &o1, odt, OUT_CONTIG);
    attn_make_lse(s, &l1, LSE_CONTIG);
    attn_make_out(s, &o, odt, OUT_CONTIG);
    attn_make_lse(s, &l, LSE_CONTIG);
    tbuf_poison(&o1, 0xa5);
    tbuf_poison(&l1, 0xa5);
    char msg[256] = "";
    enum cflash_status st = attn_call(s, s->c.kernel, 1, &o1.t, &l1.t);
    if (st != CFLASH_STATUS_OK)
        snprintf(msg, sizeof msg, "threads=1: %s", cflash_status_string(st));
    static const int counts[] = {2, 3, 0};
    for (size_t i = 0; !msg[0] && i < sizeof counts / sizeof counts[0]; i++) {
        tbuf_poison(&o, 0xa5);
        tbuf_poison(&l, 0xa5);
        st = attn_call(s, s->c.kernel, counts[i], &o.t, &l.t);
        if (st != CFLASH_STATUS_OK)
            snprintf(msg, sizeof msg, "threads=%d: %s", counts[i], cflash_status_string(st));
        else if (o.bytes && memcmp(o.base, o1.base, o.bytes) != 0)
            snprintf(msg, sizeof msg, "threads=%d: out bytes differ from threads=1", counts[i]);
        else if (l.bytes && memcmp(l.base, l1.base, l.bytes) != 0)
            snprintf(msg, sizeof msg, "threads=%d: lse bytes differ from threads=1", counts[i]);
    }
    tbuf_free(&o1);
    tbuf_free(&l1);
    tbuf_free(&o);
    tbuf_free(&l);
    mctx_free(x);
    free(x);
    CHECK(!msg[0], "%s", msg);
}


/* Regression: with a top-left window (0, -1) over Lq = 16, Lk = 5 keys, rows 5..15 see
 * nothing; the pass for a bias broadcast over the queries ([1, 1, 1, Lk]: one value per key)
 * must not read tile columns that were never filled. A first call over 32000 keys leaves large
 * key indices in the kernel's tile-column array, so such a read is an out-of-bounds bias read
 * (AddressSanitizer) or a wrong result. */
static void regress_case(const void *arg)
{
    const enum cflash_kernel k = *(const enum cflash_kernel *)arg;
    if (!require_kernel(k))
        return;
    const int D = 16, T1 = 32000;
    struct rng r = {0x5eedull};
    int64_t qs[4] = {1, 16, 1, D}, k1s[4] = {1, T1, 1, D}, k2s[4] = {1, 5, 1, D},
            bs[4] = {1, 1, 1, 5}, ls[3] = {1, 1, 16};
    struct tbuf q, k1, k2, o, oref, l, lref, bias;
    tbuf_make(&q, CFLASH_DTYPE_F32, 4, qs, NULL, 0, -1);
    tbuf_make(&k1, CFLASH_DTYPE_F32, 4, k1s, NULL, 0, -1);
    tbuf_make(&k2, CFLASH_DTYPE_F32, 4, k2s, NULL, 0, -1);
    tbuf_make(&o, CFLASH_DTYPE_F32, 4, qs, NULL, 0, -1);
    tbuf_make(&oref, CFLASH_DTYPE_F32, 4, qs, NULL, 0, -1);
    tbuf_make(&l, CFLASH_DTYPE_F32, 3, ls, NULL, 0, -1);
    tbuf_make(&lref, CFLASH_DTYPE_F32, 3, ls, NULL, 0, -1);
    tbuf_make(&bias, CFLASH_DTYPE_F32, 4, bs, NULL, 0, -1);
    tfill_randn(&q.t, &r, 0, 1);
    tfill_randn(&k2.t, &r, 0, 1);
    tfill_randn(&bias.t, &r, 0, 1);
    char msg[256] = "";
    struct cflash_attn_params prm = cflash_attn_params_default();
    prm.kernel = k;
    prm.num_threads = 1;
    enum cflash_status st = cflash_attn_dense(&q.t, &k1.t, NULL, &o.t, NULL, &prm);
    prm.align = CFLASH_ALIGN_TOP_LEFT;
    prm.window_left = 0;
    prm.bias = &bias.t;
    if (st == CFLASH_STATUS_OK)
        st = cflash_attn_dense(&q.t, &k2.t, NULL, &o.t, &l.t, &prm);
    prm.kernel = CFLASH_KERNEL_REFERENCE;
    if (st == CFLASH_STATUS_OK)
        st = cflash_attn_dense(&q.t, &k2.t, NULL, &oref.t, &lref.t, &prm);
    if (st != CFLASH_STATUS_OK)
        snprintf(msg, sizeof msg, "status %s (%s)", cflash_status_string(st), cflash_last_error());
    for (int64_t t = 0; t < 16 && !msg[0]; t++) {
        int64_t li[3] = {0, 0, t};
        const double lv = tget(&l.t, li), lr = tget(&lref.t, li);
        if (t >= 5 ? lv != -INFINITY : !(fabs(lv - lr) <= 1e-4 + 1e-6 * fabs(lr)))
            snprintf(msg, sizeof msg, "row %lld: lse %.9g, reference %.9g", (long long)t, lv, lr);
        for (int64_t d = 0; d < D && !msg[0]; d++) {
            int64_t oi[4] = {0, t, 0, d};
            const double ov = tget(&o.t, oi), orf = tget(&oref.t, oi);
            if (!(fabs(ov - orf) <= 1e-5))
                snprintf(msg, sizeof msg, "out[0,%lld,0,%lld] = %.7g, reference %.7g", (long long)t,
                         (long long)d, ov, orf);
        }
    }
    struct tbuf *all[8] = {&q, &k1, &k2, &o, &oref, &l, &lref, &bias};
    for (int i = 0; i < 8; i++)
        tbuf_free(all[i]);
    CHECK(!msg[0], "%s", msg);
}

/* ---- configurations --------------------------------------------------------------------- */

static struct sspec spec(int layout, int hv, int storage)
{
    struct sspec sp;
    memset(&sp, 0, sizeof sp);
    sp.on = 1;
    sp.layout = layout;
    sp.hv = hv;
    sp.storage = storage;
    sp.dtype = CFLASH_DTYPE_F32;
    return sp;
}

static void set_varlen(struct attn_cfg *a, int B, const int *lq, const int *lk)
{
    a->varlen = 1;
    a->B = B;
    for (int b = 0; b < B; b++) {
        a->lq[b] = lq[b];
        a->lk[b] = lk[b];
    }
}

/* A generator seeded from a small integer; consecutive seeds give unrelated streams (the raw
 * splitmix state of seed + 1 would be the stream of seed shifted by one). */
static struct rng rng_seeded(uint64_t seed)
{
    struct rng r0 = {seed ^ 0x6a09e667f3bcc909ull};
    struct rng r = {rng_next(&r0)};
    return r;
}

static struct mcfg base_cfg(enum cflash_kernel k, enum cflash_dtype dt, uint64_t seed)
{
    struct mcfg c;
    memset(&c, 0, sizeof c);
    c.a = cfg_default();
    c.a.kernel = k;
    c.a.dtype = dt;
    c.a.D = c.a.Dv = 32;
    c.a.Hq = 4;
    c.a.Hk = 2;
    c.a.seed = seed;
    return c;
}

/* A random configuration: everything at once. */
static struct mcfg random_cfg(enum cflash_kernel k, uint64_t seed)
{
    struct rng r = rng_seeded(seed);
    struct mcfg c = base_cfg(k, dtypes[rng_int(&r, 3)], seed);
    static const int H[][2] = {{4, 4}, {4, 1}, {8, 2}, {2, 2}, {3, 3}, {6, 2}};
    int hi = (int)rng_int(&r, 6);
    c.a.Hq = H[hi][0];
    c.a.Hk = H[hi][1];
    static const int Ds[] = {16, 32, 64, 24, 8};
    c.a.D = Ds[rng_int(&r, 5)];
    c.a.Dv = rng_int(&r, 3) == 0 ? Ds[rng_int(&r, 5)] : c.a.D;
    const int varlen = rng_uniform(&r) < 0.7;
    const int long_ = rng_int(&r, 4) == 0; /* several query tiles and key tiles */
    const int mq = long_ ? 200 : 70, mk = long_ ? 400 : 180;
    if (varlen) {
        c.a.varlen = 1;
        c.a.B = 1 + (int)rng_int(&r, long_ ? 3 : 5);
        for (int b = 0; b < c.a.B; b++) {
            c.a.lq[b] = rng_int(&r, 5) == 0 ? 0 : 1 + (int)rng_int(&r, mq);
            c.a.lk[b] = rng_int(&r, 6) == 0 ? 0 : 1 + (int)rng_int(&r, mk);
        }
    } else {
        c.a.B = 1 + (int)rng_int(&r, 2);
        c.a.Lq = 1 + (int)rng_int(&r, mq);
        c.a.Lk = 1 + (int)rng_int(&r, mk);
    }
    int cm = (int)rng_int(&r, 3);
    c.a.causal = cm > 0;
    c.a.align = cm == 2 ? CFLASH_ALIGN_TOP_LEFT : CFLASH_ALIGN_BOTTOM_RIGHT;
    if (rng_int(&r, 4) == 0) {
        c.a.wl = rng_int(&r, 50);
        c.a.wr = rng_int(&r, 2) ? -1 : rng_int(&r, 12);
    }
    if (rng_int(&r, 4) == 0)
        c.a.alibi = 1 + (int)rng_int(&r, 2);
    if (rng_int(&r, 4) == 0)
        c.a.softcap = rng_int(&r, 2) ? 2.0f : 15.0f;
    if (rng_int(&r, 4) == 0)
        c.a.sinks = 1;
    if (rng_int(&r, 5) == 0)
        c.a.layout = (int)rng_int(&r, LAYOUT_MIXED + 1);
    if (rng_int(&r, 5) == 0)
        c.a.out_layout = OUT_PADDED;
    if (rng_int(&r, 6) == 0)
        c.a.lse_mode = LSE_NONE;
    if (c.a.dtype != CFLASH_DTYPE_F32 && rng_int(&r, 3) == 0)
        c.a.out_f32 = 1;
    for (int w = 0; w < 2; w++) {
        struct sspec *sp = w ? &c.bi : &c.m;
        sp->on = rng_uniform(&r) < (w ? 0.65 : 0.75);
        if (w && !c.m.on)
            sp->on = 1;
        sp->layout = varlen ? (int)rng_int(&r, 3) : CFLASH_LAYOUT_DENSE;
        sp->hv = (int)rng_int(&r, 3);
        sp->storage = (int)rng_int(&r, ST_COUNT);
        sp->fill = (int)rng_int(&r, FILL_COUNT);
        sp->dtype = dtypes[rng_int(&r, 3)];
        if (sp->layout == CFLASH_LAYOUT_DENSE) {
            sp->b1 = rng_int(&r, 3) == 0;
            sp->q1 = rng_int(&r, 3) == 0;
            sp->k1 = rng_int(&r, 4) == 0;
        }
        if (varlen && sp->layout != CFLASH_LAYOUT_KEY_SIDE && rng_int(&r, 3) == 0)
            sp->grow = 1 + (int)rng_int(&r, 6);
        sp->sd = rng_int(&r, 3) == 0 ? 3.0f : 1.0f;
    }
    if (c.a.layout != LAYOUT_BSHD || c.a.vmode != V_SEPARATE)
        return c;
    int64_t nk = 0;
    for (int b = 0; b < (varlen ? c.a.B : 1); b++)
        nk += varlen ? c.a.lk[b] : c.a.Lk;
    if (nk >= 1 && nk <= 400 && rng_int(&r, 4) == 0)
        c.idv = 1;
    return c;
}

#define N_RANDOM 90

void register_mask_tests(void)
{
    char name[768];
    for (int ki = 0; ki < N_ALL_KERNELS; ki++) {
        const enum cflash_kernel k = all_kernels[ki];

        /* SPEC 5's worked example */
        {
            static const int sts[3] = {ST_CONTIG, ST_TRANSPOSED, ST_KSTRIDE3};
            for (int si = 0; si < 3; si++)
                for (int wb = 0; wb < 2; wb++) {
                    struct worked_arg a = {k, sts[si], wb};
                    snprintf(name, sizeof name, "mask/worked/spec5_key_side/%s/%s%s", kname(k),
                             st_names[sts[si]], wb ? "/with_bias" : "");
                    tcase_add(name, worked_case, &a, sizeof a);
                }
        }

        /* (a) stride order */
        snprintf(name, sizeof name, "mask/defect/stride_order/%s/key_side_Tk_Hv_vs_Hv_Tk", kname(k));
        tcase_add(name, defect_stride_order, &k, sizeof k);

        /* (b) unit-stride axis: the key axis with stride 3, gaps of garbage */
        for (int lay = 0; lay < 3; lay++)
            for (int what = 0; what < 3; what++) {
                struct lay_arg a = {k, lay, HV_HK, ST_KSTRIDE3, what, 4, 2, 0, what == 2 ? 0 : 3};
                snprintf(name, sizeof name, "mask/defect/key_axis_stride3/%s/%s/%s", kname(k),
                         layout_names[lay], what == 0 ? "mask+bias" : what == 1 ? "mask" : "bias");
                tcase_add(name, defect_layout_case, &a, sizeof a);
            }
        /* negative key stride too */
        for (int lay = 0; lay < 3; lay++) {
            struct lay_arg a = {k, lay, HV_HQ, ST_NEGATIVE, 0, 4, 2, 0, 0};
            snprintf(name, sizeof name, "mask/defect/key_axis_negative_stride/%s/%s", kname(k),
                     layout_names[lay]);
            tcase_add(name, defect_layout_case, &a, sizeof a);
        }

        /* (c) local vs global key column */
        for (int lay = 0; lay < 3; lay++)
            for (int what = 0; what < 3; what++) {
                struct lay_arg a = {k, lay, HV_HK, ST_CONTIG, what, 4, 2, what != 2 && lay != 1, 1};
                snprintf(name, sizeof name, "mask/defect/local_vs_global/%s/%s/%s%s", kname(k),
                         layout_names[lay], what == 0 ? "mask+bias" : what == 1 ? "mask" : "bias",
                         a.onehot ? ",onehot" : "");
                tcase_add(name, defect_layout_case, &a, sizeof a);
            }

        /* (d) heads-axis padding and the GQA head mapping h / (Hq / Hv) */
        for (int lay = 0; lay < 3; lay++)
            for (int hv = 0; hv < 3; hv++)
                for (int sti = 0; sti < 2; sti++) {
                    const int stg = sti ? ST_HEADPAD : ST_PADDED;
                    struct lay_arg a = {k, lay, hv, stg, 0, 8, 2, 0, hv == HV_HK ? 2 : 0};
                    snprintf(name, sizeof name, "mask/defect/heads_axis/%s/%s/Hq=8,Hk=2,Hv=%s/%s",
                             kname(k), layout_names[lay], hv_names[hv], st_names[stg]);
                    tcase_add(name, defect_layout_case, &a, sizeof a);
                }

        /* softcap, then bias */
        for (int lay = 0; lay < 3; lay++) {
            struct softcap_arg a = {k, lay};
            snprintf(name, sizeof name, "mask/defect/softcap_then_bias/%s/%s", kname(k),
                     layout_names[lay]);
            tcase_add(name, defect_softcap_order, &a, sizeof a);
        }

        /* dense calls: [B|1, Hv, Lq|1, Lk|1], every broadcast combination */
        for (int bc = 0; bc < 8; bc++) {
            struct mcfg c = base_cfg(k, dtypes[bc % 3], 0xbc00 + (uint64_t)bc);
            c.a.B = 2;
            c.a.Lq = 37;
            c.a.Lk = 75;
            c.a.Hq = bc & 1 ? 4 : 8;
            c.a.Hk = bc & 1 ? 1 : 2;
            c.a.causal = bc % 3 == 1;
            c.a.align = bc == 4 ? CFLASH_ALIGN_TOP_LEFT : CFLASH_ALIGN_BOTTOM_RIGHT;
            c.m = spec(CFLASH_LAYOUT_DENSE, bc % 3, bc % ST_COUNT);
            c.m.b1 = bc & 1;
            c.m.q1 = (bc >> 1) & 1;
            c.m.k1 = (bc >> 2) & 1;
            c.m.fill = bc % FILL_COUNT;
            c.bi = spec(CFLASH_LAYOUT_DENSE, (bc + 1) % 3, (bc + 3) % ST_COUNT);
            c.bi.b1 = !c.m.b1;
            c.bi.q1 = !c.m.q1;
            c.bi.k1 = !c.m.k1;
            c.bi.dtype = dtypes[(bc + 1) % 3];
            add_mcase("mask/sweep/dense_bcast", &c);
        }
        /* dense call with only a mask / only a bias, Lq = 1 decode and identity V */
        {
            struct mcfg c = base_cfg(k, CFLASH_DTYPE_F32, 0xde1);
            c.a.B = 2;
            c.a.Lq = 1;
            c.a.Lk = 200;
            c.m = spec(CFLASH_LAYOUT_DENSE, HV_HQ, ST_CONTIG);
            c.m.fill = FILL_BLOCKS;
            add_mcase("mask/sweep/dense_decode", &c);
            c.m.on = 0;
            c.bi = spec(CFLASH_LAYOUT_DENSE, HV_1, ST_TRANSPOSED);
            c.bi.dtype = CFLASH_DTYPE_BF16;
            add_mcase("mask/sweep/dense_decode", &c);
            c = base_cfg(k, CFLASH_DTYPE_F32, 0xde2);
            c.a.B = 2;
            c.a.Lq = 19;
            c.a.Lk = 41;
            c.a.causal = 1;
            c.m = spec(CFLASH_LAYOUT_DENSE, HV_HK, ST_PADDED);
            c.bi = spec(CFLASH_LAYOUT_DENSE, HV_HQ, ST_CONTIG);
            c.bi.q1 = 1;
            c.idv = 1;
            add_mcase("mask/sweep/dense_identity_v", &c);
        }

        /* varlen: every pair of layouts for mask and bias (and each alone) */
        static const int LQ[4] = {37, 0, 5, 70}, LK[4] = {100, 3, 0, 150};
        for (int ml = -1; ml < 3; ml++)
            for (int bl = -1; bl < 3; bl++) {
                if (ml < 0 && bl < 0)
                    continue;
                const uint64_t seed = 0x1a00 + (uint64_t)((ml + 1) * 4 + bl + 1);
                struct rng r = rng_seeded(seed);
                struct mcfg c = base_cfg(k, dtypes[rng_int(&r, 3)], seed);
                set_varlen(&c.a, 4, LQ, LK);
                c.a.Hq = (ml + bl) & 1 ? 8 : 4;
                c.a.Hk = 2;
                c.a.causal = (ml + 2 * bl) % 3 != 0;
                c.a.align = bl == 1 ? CFLASH_ALIGN_TOP_LEFT : CFLASH_ALIGN_BOTTOM_RIGHT;
                if (ml >= 0) {
                    c.m = spec(ml, (int)rng_int(&r, 3), (int)rng_int(&r, ST_COUNT));
                    c.m.fill = (int)rng_int(&r, FILL_COUNT);
                    if (ml == CFLASH_LAYOUT_QUERY_SIDE)
                        c.m.grow = 4;
                }
                if (bl >= 0) {
                    c.bi = spec(bl, (int)rng_int(&r, 3), (int)rng_int(&r, ST_COUNT));
                    c.bi.dtype = dtypes[rng_int(&r, 3)];
                    if (bl == CFLASH_LAYOUT_DENSE)
                        c.bi.grow = 3;
                }
                add_mcase("mask/sweep/varlen_layouts", &c);
            }

        /* tile skipping: all-false key blocks of 64+ keys in every layout */
        for (int lay = 0; lay < 3; lay++) {
            static const int lq[2] = {130, 64}, lk[2] = {300, 200};
            struct mcfg c = base_cfg(k, lay == 1 ? CFLASH_DTYPE_BF16 : CFLASH_DTYPE_F32,
                                     0xb10c + (uint64_t)lay);
            set_varlen(&c.a, 2, lq, lk);
            c.a.Hq = 4;
            c.a.Hk = 1;
            c.a.D = c.a.Dv = 64;
            c.a.causal = lay == 2;
            c.m = spec(lay, lay == 0 ? HV_1 : HV_HQ, ST_CONTIG);
            c.m.fill = FILL_BLOCKS;
            c.bi = spec((lay + 1) % 3, HV_HK, ST_CONTIG);
            c.bi.dtype = CFLASH_DTYPE_F16;
            add_mcase("mask/sweep/blocks", &c);
        }
        /* fully masked rows: out 0, lse -inf, or the sink logit with sinks */
        for (int lay = 0; lay < 3; lay++)
            for (int sinks = 0; sinks < 2; sinks++) {
                static const int lq[3] = {9, 4, 20}, lk[3] = {70, 5, 33};
                struct mcfg c = base_cfg(k, sinks ? CFLASH_DTYPE_F32 : CFLASH_DTYPE_BF16,
                                         0xe0 + (uint64_t)(lay * 2 + sinks));
                set_varlen(&c.a, 3, lq, lk);
                c.a.sinks = sinks;
                c.a.alibi = sinks ? 1 : 0;
                c.a.softcap = sinks ? 0.0f : 8.0f;
                c.m = spec(lay, lay == 1 ? HV_HQ : HV_HK, sinks ? ST_PADDED : ST_CONTIG);
                c.m.fill = FILL_EMPTYROWS;
                c.bi = spec(2 - lay, HV_1, ST_CONTIG);
                add_mcase("mask/sweep/empty_rows", &c);
            }
        /* packed DENSE longer than the longest sequence; QUERY_SIDE with a wider last axis
         * (the extra elements hold 0 / NaN and must be ignored); identity V */
        {
            static const int lq[3] = {6, 11, 0}, lk[3] = {13, 0, 29};
            struct mcfg c = base_cfg(k, CFLASH_DTYPE_F32, 0x960);
            set_varlen(&c.a, 3, lq, lk);
            c.m = spec(CFLASH_LAYOUT_DENSE, HV_HQ, ST_PADDED);
            c.m.grow = 7;
            c.bi = spec(CFLASH_LAYOUT_QUERY_SIDE, HV_HK, ST_CONTIG);
            c.bi.grow = 9;
            c.idv = 1;
            add_mcase("mask/sweep/oversized_axes", &c);
            c.m = spec(CFLASH_LAYOUT_QUERY_SIDE, HV_1, ST_TRANSPOSED);
            c.m.grow = 5;
            c.bi = spec(CFLASH_LAYOUT_DENSE, HV_HQ, ST_CONTIG);
            c.bi.grow = 4;
            c.bi.dtype = CFLASH_DTYPE_BF16;
            add_mcase("mask/sweep/oversized_axes", &c);
            /* the same bytes as tight tensors (garbage in the extra elements changes nothing) */
            for (int v = 0; v < 2; v++) {
                c = base_cfg(k, dtypes[v + 1], 0x961 + (uint64_t)v);
                set_varlen(&c.a, 3, lq, lk);
                c.a.causal = v;
                c.a.softcap = v ? 0.0f : 6.0f;
                c.m = spec(v ? CFLASH_LAYOUT_QUERY_SIDE : CFLASH_LAYOUT_DENSE, HV_HK, ST_CONTIG);
                c.m.grow = 6;
                c.bi = spec(v ? CFLASH_LAYOUT_DENSE : CFLASH_LAYOUT_QUERY_SIDE, HV_HQ, ST_PADDED);
                c.bi.grow = 5;
                c.bi.dtype = dtypes[v];
                mcfg_name(name, sizeof name, "mask/sweep/oversized_vs_tight", &c);
                tcase_add(name, oversized_case, &c, sizeof c);
            }
        }
        /* Tk = 0: key-side tensors [0, Hv] with data NULL; every row empty */
        {
            static const int lq[2] = {3, 2}, lk[2] = {0, 0};
            struct mcfg c = base_cfg(k, CFLASH_DTYPE_F32, 0x70);
            set_varlen(&c.a, 2, lq, lk);
            c.a.sinks = 1;
            c.m = spec(CFLASH_LAYOUT_KEY_SIDE, HV_HK, ST_CONTIG);
            c.bi = spec(CFLASH_LAYOUT_KEY_SIDE, HV_1, ST_CONTIG);
            add_mcase("mask/sweep/no_keys", &c);
        }
        /* softcap + ALiBi + window + sinks + GQA 4 with bias in each layout (random keys) */
        for (int lay = 0; lay < 3; lay++) {
            static const int lq[3] = {17, 40, 1}, lk[3] = {33, 40, 90};
            struct mcfg c = base_cfg(k, dtypes[lay], 0x5a + (uint64_t)lay);
            set_varlen(&c.a, 3, lq, lk);
            c.a.Hq = 8;
            c.a.Hk = 2;
            c.a.softcap = 3;
            c.a.alibi = 2;
            c.a.sinks = 1;
            c.a.causal = 1;
            c.a.wl = 20;
            c.bi = spec(lay, HV_HQ, ST_PADDED);
            c.bi.sd = 3;
            c.bi.dtype = dtypes[(lay + 2) % 3];
            c.m = spec((lay + 2) % 3, HV_HK, ST_ZERO);
            add_mcase("mask/sweep/all_features", &c);
        }

        /* split-KV decode (few rows, 8192+ keys: the keys are cut into 4096-key chunks and
         * merged): key-side / query-side / packed dense masks whose all-false blocks cover
         * whole chunks, fully masked rows, sinks; a dense decode call */
        for (int v = 0; v < 4; v++) {
            static const int lq[2] = {1, 3}, lk[2] = {9000, 8300};
            struct mcfg c = base_cfg(k, v == 1 ? CFLASH_DTYPE_BF16 : CFLASH_DTYPE_F32,
                                     0x5b17 + (uint64_t)v);
            c.a.D = c.a.Dv = 16;
            c.a.Hq = 4;
            c.a.Hk = 1;
            if (v < 3) {
                set_varlen(&c.a, 2, lq, lk);
            } else {
                c.a.Lq = 2;
                c.a.Lk = 8200;
                c.a.Hq = 8;
                c.a.Hk = 2;
            }
            c.a.sinks = v >= 2;
            c.a.causal = v == 1;
            c.m = spec(v < 3 ? v : CFLASH_LAYOUT_DENSE, v == 2 ? HV_HQ : HV_HK,
                       v == 1 ? ST_TRANSPOSED : ST_CONTIG);
            c.m.fill = v == 2 ? FILL_EMPTYROWS : FILL_HUGE;
            if (v == 3)
                c.m.q1 = 1;
            c.bi = spec(v < 3 ? (v + 2) % 3 : CFLASH_LAYOUT_DENSE, HV_HQ, ST_CONTIG);
            c.bi.dtype = dtypes[v % 3];
            c.bi.sd = 2;
            add_mcase("mask/sweep/split_kv", &c);
        }

        snprintf(name, sizeof name, "mask/regress/window_rows_past_the_tile/query_bcast_bias/%s",
                 kname(k));
        tcase_add(name, regress_case, &all_kernels[ki], sizeof all_kernels[ki]);

        /* random */
        for (int i = 0; i < N_RANDOM; i++) {
            struct mcfg c = random_cfg(k, 0x3000 + (uint64_t)i);
            add_mcase("mask/random", &c);
        }

        /* threads */
        {
            static const int lq[3] = {150, 1, 64}, lk[3] = {200, 300, 64};
            struct mcfg c = base_cfg(k, CFLASH_DTYPE_BF16, 0x7d);
            set_varlen(&c.a, 3, lq, lk);
            c.a.Hq = 8;
            c.a.Hk = 2;
            c.a.causal = 1;
            c.a.sinks = 1;
            c.m = spec(CFLASH_LAYOUT_KEY_SIDE, HV_HK, ST_TRANSPOSED);
            c.m.fill = FILL_BLOCKS;
            c.bi = spec(CFLASH_LAYOUT_QUERY_SIDE, HV_HQ, ST_CONTIG);
            c.bi.dtype = CFLASH_DTYPE_BF16;
            mcfg_name(name, sizeof name, "mask/threads", &c);
            tcase_add(name, threads_case, &c, sizeof c);
            c = base_cfg(k, CFLASH_DTYPE_F32, 0x7e);
            c.a.B = 2;
            c.a.Lq = 130;
            c.a.Lk = 140;
            c.a.softcap = 5;
            c.m = spec(CFLASH_LAYOUT_DENSE, HV_HQ, ST_CONTIG);
            c.m.fill = FILL_EMPTYROWS;
            c.bi = spec(CFLASH_LAYOUT_DENSE, HV_1, ST_CONTIG);
            c.bi.b1 = 1;
            c.bi.dtype = CFLASH_DTYPE_F16;
            mcfg_name(name, sizeof name, "mask/threads", &c);
            tcase_add(name, threads_case, &c, sizeof c);
            /* split-KV: chunk states merged in chunk order */
            static const int dq[2] = {2, 1}, dk[2] = {8500, 12000};
            c = base_cfg(k, CFLASH_DTYPE_F32, 0x7f);
            set_varlen(&c.a, 2, dq, dk);
            c.a.Hq = 8;
            c.a.Hk = 1;
            c.a.D = c.a.Dv = 16;
            c.a.sinks = 1;
            c.m = spec(CFLASH_LAYOUT_KEY_SIDE, HV_HQ, ST_CONTIG);
            c.m.fill = FILL_HUGE;
            c.bi = spec(CFLASH_LAYOUT_QUERY_SIDE, HV_1, ST_CONTIG);
            mcfg_name(name, sizeof name, "mask/threads", &c);
            tcase_add(name, threads_case, &c, sizeof c);
        }
    }

    /* misuse */
    for (int dense = 0; dense < 2; dense++)
        for (int target = 0; target < 2; target++) {
            const char *tn = target ? "bias" : "mask", *en = dense ? "dense" : "varlen";
            for (int lay = 0; lay < (dense ? 1 : 3); lay++) {
                const char *ln = layout_names[lay];
#define MADD(mut_, ax_, val_, desc_)                                                        \
    do {                                                                                    \
        struct misuse_arg a_ = {dense, target, lay, (mut_), (ax_), (val_)};                 \
        snprintf(name, sizeof name, "mask/misuse/%s/%s/%s/%s", en, tn, ln, (desc_));        \
        tcase_add(name, misuse_case, &a_, sizeof a_);                                       \
    } while (0)
                MADD(MU_OK, 0, 0, "baseline_ok");
                if (!dense && lay != CFLASH_LAYOUT_KEY_SIDE)
                    MADD(MU_OK_GROW, 0, 0, "ok_axes_longer_than_longest_sequence");
                if (!dense && lay == CFLASH_LAYOUT_KEY_SIDE)
                    MADD(MU_OK_EMPTY, 0, 0, "ok_Tk=0_data=NULL");
                if (target == 0) {
                    MADD(MU_DTYPE, 0, CFLASH_DTYPE_F32, "dtype=f32");
                    MADD(MU_DTYPE, 0, CFLASH_DTYPE_I32, "dtype=i32");
                    MADD(MU_DTYPE, 0, CFLASH_DTYPE_BF16, "dtype=bf16");
                } else {
                    MADD(MU_DTYPE, 0, CFLASH_DTYPE_I32, "dtype=i32");
                    MADD(MU_DTYPE, 0, CFLASH_DTYPE_U8, "dtype=u8");
                }
                MADD(MU_DTYPE, 0, 99, "dtype=99");
                MADD(MU_LAYOUT, 0, 7, "layout=7");
                MADD(MU_LAYOUT, 0, 3, "layout=3");
                MADD(MU_LAYOUT, 0, -1, "layout=-1");
                for (int nd = 0; nd <= 5; nd++) {
                    const int want = lay == CFLASH_LAYOUT_DENSE ? 4 : lay == CFLASH_LAYOUT_KEY_SIDE ? 2 : 3;
                    if (nd == want)
                        continue;
                    char d[32];
                    snprintf(d, sizeof d, "ndim=%d", nd);
                    MADD(MU_NDIM, 0, nd, d);
                }
                MADD(MU_HV, 0, 3, "Hv=3");
                MADD(MU_HV, 0, 8, "Hv=8");
                MADD(MU_HV, 0, 0, "Hv=0");
                MADD(MU_HV_DIV, 0, 4, "Hq=8,Hk=2,Hv=4");
                MADD(MU_HV_DIV, 0, 8, "ok_Hq=8,Hk=2,Hv=8");
                MADD(MU_DATA_NULL, 0, 0, "data=NULL");
                if (lay == CFLASH_LAYOUT_DENSE) {
                    /* B axis: 1 or B; Lq / Lk: 1 or Lq / Lk (dense), 1 or >= longest (varlen) */
                    MADD(MU_AXIS, 0, dense ? 3 : 4, "shape[0]=B+1");
                    MADD(MU_AXIS, 0, 0, "shape[0]=0");
                    MADD(MU_AXIS, 2, dense ? 2 : 4, dense ? "shape[2]=Lq-1" : "shape[2]=longest_q-1");
                    MADD(MU_AXIS, 3, dense ? 4 : 5, dense ? "shape[3]=Lk-1" : "shape[3]=longest_k-1");
                    if (dense) {
                        MADD(MU_AXIS, 2, 4, "shape[2]=Lq+1");
                        MADD(MU_AXIS, 3, 6, "shape[3]=Lk+1");
                    }
                    MADD(MU_AXIS, 3, 0, "shape[3]=0");
                } else if (lay == CFLASH_LAYOUT_KEY_SIDE) {
                    MADD(MU_AXIS, 0, 9, "shape[0]=Tk-1");
                    MADD(MU_AXIS, 0, 11, "shape[0]=Tk+1");
                    MADD(MU_AXIS, 0, 8, "shape[0]=Tq");
                } else {
                    MADD(MU_AXIS, 0, 7, "shape[0]=Tq-1");
                    MADD(MU_AXIS, 0, 10, "shape[0]=Tk");
                    MADD(MU_AXIS, 2, 5, "shape[2]=longest_k-1");
                    MADD(MU_AXIS, 2, 0, "shape[2]=0");
                }
                if (dense) {
                    MADD(MU_DENSE_CALL_LAYOUT, 0, CFLASH_LAYOUT_KEY_SIDE, "dense_call_key_side");
                    MADD(MU_DENSE_CALL_LAYOUT, 0, CFLASH_LAYOUT_QUERY_SIDE, "dense_call_query_side");
                    MADD(MU_DENSE_CALL_LAYOUT, 1, CFLASH_LAYOUT_KEY_SIDE, "dense_call_key_side_4d");
                    MADD(MU_DENSE_CALL_LAYOUT, 1, CFLASH_LAYOUT_QUERY_SIDE, "dense_call_query_side_4d");
                    MADD(MU_DENSE_CALL_LAYOUT, 2, CFLASH_LAYOUT_KEY_SIDE, "dense_call_key_side_0_rows");
                    MADD(MU_DENSE_CALL_LAYOUT, 2, CFLASH_LAYOUT_QUERY_SIDE, "dense_call_query_side_0_rows");
                }
#undef MADD
            }
        }
    for (int target = 0; target < 2; target++)
        for (int lay = 0; lay < 3; lay++) {
            const char *tn = target ? "bias" : "mask", *ln = layout_names[lay];
#define RADD(mut_, ax_, val_, desc_)                                                        \
    do {                                                                                    \
        struct range_arg a_ = {target, lay, (mut_), (ax_), (val_)};                         \
        snprintf(name, sizeof name, "mask/misuse/range/%s/%s/%s", tn, ln, (desc_));          \
        tcase_add(name, range_case, &a_, sizeof a_);                                        \
    } while (0)
            RADD(RM_OK, 0, 0, "ok");
            RADD(RM_HV, 0, 3, "Hv=3");
            RADD(RM_HV, 0, 0, "Hv=0");
            RADD(RM_NDIM, 0, lay == 0 ? 3 : 4, lay == 0 ? "ndim=3" : "ndim=4");
            RADD(RM_DTYPE, 0, 0, target ? "dtype=u8" : "dtype=f32");
            RADD(RM_LAYOUT, 0, 7, "layout=7");
            if (lay == CFLASH_LAYOUT_DENSE) {
                RADD(RM_OK_BCAST, 0, 0, "ok_[1,Hv,1,1]");
                RADD(RM_AXIS, 0, 2, "shape[0]=2");
                RADD(RM_AXIS, 2, 7, "shape[2]=Tq-1");
                RADD(RM_AXIS, 3, 9, "shape[3]=Tk-1");
                RADD(RM_AXIS, 3, 0, "shape[3]=0");
            } else if (lay == CFLASH_LAYOUT_KEY_SIDE) {
                RADD(RM_AXIS, 0, 9, "shape[0]=Tk-1");
                RADD(RM_AXIS, 0, 11, "shape[0]=Tk+1");
                RADD(RM_AXIS, 0, 8, "shape[0]=Tq");
            } else {
                RADD(RM_OK_GROW, 0, 0, "ok_shape[2]=Tk+3");
                RADD(RM_AXIS, 0, 7, "shape[0]=Tq-1");
                RADD(RM_AXIS, 0, 10, "shape[0]=Tk");
                RADD(RM_AXIS, 2, 9, "shape[2]=Tk-1");
            }
#undef RADD
        }
}
