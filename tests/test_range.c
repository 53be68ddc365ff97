/*
 * test_range.c - range plans (SPEC.md section 4): cflash_range_plan_create / _destroy /
 * _num_slices / _visible_cells and cflash_attn_range, through every kernel.
 *
 * Every attention case builds a plan as raw (q_range, k_range, type) triplets, lets the tests'
 * own oracle (range_oracle.c) evaluate SPEC 4's visibility rule cell by cell from those
 * triplets, and then checks:
 *   - the planner: create OK, num_slices = the non-empty slices, visible_cells = the cells the
 *     oracle counts;
 *   - the reference kernel against the oracle (fp64, relative L2 <= 1e-6, LSE 1e-5);
 *   - the kernel under test (forced through params.kernel) against the reference kernel under
 *     SPEC 1's tolerances (fp32: relative L2 <= 1e-5; fp16/bf16: max abs <= 2 e_naive + 1e-3
 *     with e_naive from the naive same-precision oracle), plus empty rows exactly (out 0, lse
 *     -inf or the sink logit), outputs poisoned beforehand and bytes outside the views intact.
 * Identity-value cases (v = identity, Dv = Tk: out rows are the probability rows) also compare
 * the visible set (entries > 0; all others exactly 0) with sets hard-coded from SPEC 4.
 *
 * Masks and biases (params.mask / params.bias, SPEC 5 on the plan's global axes: DENSE
 * [1, Hv, Tq|1, Tk|1], KEY_SIDE [Tk, Hv], QUERY_SIDE [Tq, Hv, >= Tk], column = global key index):
 * range/mask/... cases add them to plans of all four slice types; the oracle (range_oracle.c)
 * keeps a cell iff the plan covers it and the mask is nonzero, and adds the bias after the
 * softcap. Unread storage holds garbage (0 = masked in masks, NaN in biases).
 *
 * Groups (all under range/): worked, mtp, cumulative, docs, random, overlap, empty, misuse,
 * scale, threads, reuse, edge, mask.
 */
#include "attn_common.h" /* oracle_in_free, LSE_* */

#include <stdlib.h>
#include <string.h>

#define POISON 0xff

static const enum cflash_dtype dtypes[3] = {CFLASH_DTYPE_F32, CFLASH_DTYPE_F16, CFLASH_DTYPE_BF16};

enum { LAY_CONTIG = 0, LAY_PADDED = 1, LAY_HEADMAJOR = 2, LAY_NEG = 3 };

/* a mask or bias over the plan's global axes */
enum { RST_CONTIG, RST_TRANSPOSED, RST_PADDED, RST_NEGKEY, RST_COUNT };
enum { RF_KEEP70, RF_EMPTYROWS, RF_KEEPALL, RF_COUNT };
struct rsrc {
    int on;
    int layout;    /* enum cflash_layout */
    int hv;        /* 0: 1, 1: Hk, 2: Hq */
    int storage;   /* RST_* */
    int fill;      /* masks: RF_* */
    int q1, k1;    /* DENSE: size-1 (broadcast) query / key axes */
    int grow;      /* QUERY_SIDE: the last axis this much longer than Tk */
    enum cflash_dtype dtype; /* biases */
    float sd;      /* biases: standard deviation (0: 1) */
};

/* one attention configuration over a plan */
struct rcfg {
    enum cflash_kernel kernel;
    enum cflash_dtype dtype;
    int Hq, Hk, D, Dv;
    int vnull;     /* v = NULL (V := K, Dv = D) */
    int identity;  /* v = identity (Dv = Tk): out rows are the probability rows */
    int alibi, sinks;
    float softcap, scale;
    int layout;    /* LAY_* for q, k, v */
    int out_f32, out_padded, lse_mode;
    int threads;
    int range_layout; /* 0: contiguous range tensors; 1: transposed / padded / strided */
    int null_types;   /* pass attn_type_map = NULL (the plan must be all FULL) */
    struct rsrc m, bi; /* mask / bias */
    uint64_t seed;
};

static struct rcfg rcfg_default(enum cflash_kernel k, enum cflash_dtype dt)
{
    struct rcfg c;
    memset(&c, 0, sizeof c);
    c.kernel = k;
    c.dtype = dt;
    c.Hq = c.Hk = 1;
    c.D = c.Dv = 16;
    return c;
}

/* ---- the plan through the API ---------------------------------------------------------- */

/* Creates the library plan from raw triplets; range tensors contiguous or (range_layout 1)
 * q_ranges transposed, k_ranges and attn_type_map padded with garbage between elements. */
static enum cflash_status api_plan(const struct rplan *p, int range_layout, int null_types,
                                   const int32_t *seg, int64_t nseg, cflash_range_plan_t *out)
{
    const int64_t n = p->n;
    const int64_t cap = n > 0 ? n : 1;
    int32_t *qb = malloc((size_t)(2 * cap) * sizeof *qb);
    int32_t *kb = malloc((size_t)(3 * cap) * sizeof *kb);
    int32_t *tb = malloc((size_t)(2 * cap) * sizeof *tb);
    for (int64_t i = 0; i < 3 * cap; i++)
        kb[i] = -7;
    for (int64_t i = 0; i < 2 * cap; i++)
        tb[i] = 9;
    struct cflash_tensor q, k, t, s;
    int64_t sh2[2] = {n, 2}, sh1[1] = {n};
    q = tdesc(n ? qb : NULL, CFLASH_DTYPE_I32, 2, sh2);
    k = tdesc(n ? kb : NULL, CFLASH_DTYPE_I32, 2, sh2);
    t = tdesc(n ? tb : NULL, CFLASH_DTYPE_I32, 1, sh1);
    if (range_layout) {
        q.stride[0] = 1; /* [2][n] storage */
        q.stride[1] = n;
        k.stride[0] = 3;
        t.stride[0] = 2;
    }
    for (int64_t i = 0; i < n; i++) {
        qb[i * q.stride[0]] = p->s[i][0];
        qb[i * q.stride[0] + q.stride[1]] = p->s[i][1];
        kb[i * k.stride[0]] = p->s[i][2];
        kb[i * k.stride[0] + k.stride[1]] = p->s[i][3];
        tb[i * t.stride[0]] = p->s[i][4];
    }
    int64_t shs[1] = {nseg};
    s = tdesc((void *)seg, CFLASH_DTYPE_I32, 1, shs);
    enum cflash_status st =
        cflash_range_plan_create(out, &q, &k, null_types ? NULL : &t, p->Tq, p->Tk, seg ? &s : NULL);
    free(qb);
    free(kb);
    free(tb);
    return st;
}

/* ---- tensors and the check ------------------------------------------------------------- */

struct rctx {
    struct rcfg c;
    const struct rplan *p;
    const struct rcells *cells;
    const char *expect; /* NULL or [Tq][Tk] of '0'/'1' */
    int64_t Tq, Tk, Dv;
    struct tbuf q, k, v, alibi, sinks, oref, lref, out, lse, mask, bias;
    struct mask_src msrc, bsrc;
    unsigned char *mask0, *bias0; /* their bytes before the calls */
    const struct cflash_tensor *vp;
    struct cflash_attn_params params;
    struct oracle_in in;
    double *on, *ol;
    int64_t *nvis; /* [Tq][Hq] with a mask or bias (else NULL: row_cells) */
};

static const char *const rst_names[RST_COUNT] = {"contig", "transposed", "padded", "negkey"};
static const char *const rf_names[RF_COUNT] = {"keep70", "emptyrows", "keepall"};
static const char *const rlay_names[3] = {"dense", "key", "query"};
static const char *const rhv_names[3] = {"1", "Hk", "Hq"};

/* Builds a mask / bias over the plan's axes: every element a cell can read gets a value; the
 * rest of the allocation (and QUERY_SIDE columns >= Tk) keeps garbage: 0 (= masked) in masks,
 * 0xff bytes (NaN) in biases. */
static void build_rsrc(struct tbuf *tb, struct mask_src *ms, const struct rsrc *sp, int is_mask,
                       int64_t Tq, int64_t Tk, int64_t Hq, int64_t Hk, struct rng *r)
{
    const int64_t Hv = sp->hv == 0 ? 1 : sp->hv == 1 ? Hk : Hq;
    int64_t sh[4];
    int nd, kax;
    if (sp->layout == CFLASH_LAYOUT_KEY_SIDE) {
        nd = 2;
        sh[0] = Tk;
        sh[1] = Hv;
        kax = 0;
    } else if (sp->layout == CFLASH_LAYOUT_QUERY_SIDE) {
        nd = 3;
        sh[0] = Tq;
        sh[1] = Hv;
        sh[2] = Tk + sp->grow;
        kax = 2;
    } else {
        nd = 4;
        sh[0] = 1;
        sh[1] = Hv;
        sh[2] = sp->q1 ? 1 : Tq;
        sh[3] = sp->k1 ? 1 : Tk;
        kax = 3;
    }
    int order[4] = {0, 1, 2, 3};
    if (sp->storage == RST_TRANSPOSED)
        for (int i = 0; i < nd; i++)
            order[i] = nd - 1 - i;
    tbuf_make(tb, is_mask ? CFLASH_DTYPE_U8 : sp->dtype, nd, sh, order,
              sp->storage == RST_PADDED ? 3 : 0, sp->storage == RST_NEGKEY ? kax : -1);
    tbuf_poison(tb, is_mask ? 0x00 : 0xff);
    ms->t = &tb->t;
    ms->layout = sp->layout;
    const int64_t n = tnumel(&tb->t);
    const double sd = sp->sd != 0 ? sp->sd : 1.0;
    for (int64_t lin = 0; lin < n; lin++) {
        int64_t idx[4], rest = lin;
        for (int a = nd - 1; a >= 0; a--) {
            idx[a] = rest % sh[a];
            rest /= sh[a];
        }
        if (sp->layout == CFLASH_LAYOUT_QUERY_SIDE && idx[2] >= Tk)
            continue; /* never read */
        double v;
        if (is_mask) {
            /* the row (dense / query-side) or the key (key-side) and the variant */
            const int64_t row = sp->layout == CFLASH_LAYOUT_KEY_SIDE ? idx[0]
                                : sp->layout == CFLASH_LAYOUT_QUERY_SIDE ? idx[0] : idx[2];
            int keep = sp->fill == RF_KEEPALL || rng_uniform(r) < 0.7;
            if (sp->fill == RF_EMPTYROWS) {
                if (sp->layout == CFLASH_LAYOUT_KEY_SIDE)
                    keep = keep && idx[1] % 2 == 0; /* odd variants see no key at all */
                else
                    keep = keep && (row * 3 + idx[1]) % 5 != 0; /* fully masked rows */
            }
            v = keep ? (double)(1 + rng_int(r, 255)) : 0.0; /* any nonzero byte keeps */
        } else {
            v = sd * rng_normal(r);
        }
        tset(&tb->t, idx, v);
    }
}


static void make_input(struct tbuf *b, enum cflash_dtype dt, const int64_t *shape, int layout)
{
    static const int headmajor[3] = {1, 0, 2};
    tbuf_make(b, dt, 3, shape, layout == LAY_HEADMAJOR ? headmajor : NULL,
              layout == LAY_PADDED ? 3 : 0, layout == LAY_NEG ? 0 : -1);
}

static void rctx_setup(struct rctx *x, const struct rcfg *c, const struct rplan *p,
                       const struct rcells *cells)
{
    memset(x, 0, sizeof *x);
    x->c = *c;
    x->p = p;
    x->cells = cells;
    x->Tq = p->Tq;
    x->Tk = p->Tk;
    x->Dv = c->identity ? p->Tk : c->vnull ? c->D : c->Dv;
    struct rng r = {c->seed ^ 0x7a11ce5eedull};
    int64_t qs[3] = {x->Tq, c->Hq, c->D}, ks[3] = {x->Tk, c->Hk, c->D},
            vs[3] = {x->Tk, c->Hk, x->Dv};
    make_input(&x->q, c->dtype, qs, c->layout);
    make_input(&x->k, c->dtype, ks, c->layout);
    tfill_randn(&x->q.t, &r, 0, 1);
    tfill_randn(&x->k.t, &r, 0, 1);
    if (c->vnull) {
        x->vp = NULL;
    } else {
        make_input(&x->v, c->dtype, vs, c->layout);
        if (c->identity) {
            int64_t idx[3];
            for (idx[0] = 0; idx[0] < x->Tk; idx[0]++)
                for (idx[1] = 0; idx[1] < c->Hk; idx[1]++)
                    for (idx[2] = 0; idx[2] < x->Dv; idx[2]++)
                        tset(&x->v.t, idx, idx[0] == idx[2] ? 1.0 : 0.0);
        } else {
            tfill_randn(&x->v.t, &r, 0, 1);
        }
        x->vp = &x->v.t;
    }
    x->params = cflash_attn_params_default();
    x->params.scale = c->scale;
    x->params.softcap = c->softcap;
    if (c->alibi) {
        int64_t sh[1] = {c->Hq};
        tbuf_make(&x->alibi, CFLASH_DTYPE_F32, 1, sh, NULL, 0, -1);
        for (int64_t h = 0; h < c->Hq; h++)
            tset(&x->alibi.t, &h, 0.05 + 0.5 * rng_uniform(&r));
        x->params.alibi_slopes = &x->alibi.t;
    }
    if (c->sinks) {
        int64_t sh[1] = {c->Hq};
        tbuf_make(&x->sinks, CFLASH_DTYPE_F32, 1, sh, NULL, 0, -1);
        tfill_randn(&x->sinks.t, &r, 1, 1);
        x->params.sinks = &x->sinks.t;
    }
    if (c->m.on) {
        build_rsrc(&x->mask, &x->msrc, &c->m, 1, x->Tq, x->Tk, c->Hq, c->Hk, &r);
        x->params.mask = &x->mask.t;
        x->params.mask_layout = (enum cflash_layout)c->m.layout;
        x->mask0 = malloc(x->mask.bytes + 1);
        if (x->mask.bytes)
            memcpy(x->mask0, x->mask.base, x->mask.bytes);
    }
    if (c->bi.on) {
        build_rsrc(&x->bias, &x->bsrc, &c->bi, 0, x->Tq, x->Tk, c->Hq, c->Hk, &r);
        x->params.bias = &x->bias.t;
        x->params.bias_layout = (enum cflash_layout)c->bi.layout;
        x->bias0 = malloc(x->bias.bytes + 1);
        if (x->bias.bytes)
            memcpy(x->bias0, x->bias.base, x->bias.bytes);
    }
}

static void rctx_free(struct rctx *x)
{
    tbuf_free(&x->q);
    tbuf_free(&x->k);
    tbuf_free(&x->v);
    tbuf_free(&x->alibi);
    tbuf_free(&x->sinks);
    tbuf_free(&x->oref);
    tbuf_free(&x->lref);
    tbuf_free(&x->out);
    tbuf_free(&x->lse);
    tbuf_free(&x->mask);
    tbuf_free(&x->bias);
    free(x->mask0);
    free(x->bias0);
    free(x->nvis);
    if (x->in.q)
        oracle_in_free(&x->in);
    free(x->on);
    free(x->ol);
}

/* visible keys of (row t, head h): the plan's cells, less the masked ones */
static int64_t row_visible(const struct rctx *x, int64_t t, int64_t h)
{
    return x->nvis ? x->nvis[t * x->c.Hq + h] : x->cells->row_start[t + 1] - x->cells->row_start[t];
}

/* the mask keeps cell (t, col) for head h (no mask: 1) */
static int cell_kept(const struct rctx *x, int64_t t, int64_t h, int64_t col)
{
    if (!x->c.m.on)
        return 1;
    const int64_t qoff[2] = {0, x->Tq}, koff[2] = {0, x->Tk};
    int64_t idx[CFLASH_MAX_DIMS];
    mask_elem_index(&x->msrc, x->c.Hq, qoff, koff, 0, h, t, col, idx);
    return tget(x->msrc.t, idx) != 0;
}

static void make_out(const struct rctx *x, struct tbuf *out, enum cflash_dtype dt, int padded)
{
    int64_t sh[3] = {x->Tq, x->c.Hq, x->Dv};
    tbuf_make(out, dt, 3, sh, NULL, padded ? 1 : 0, -1);
}

static void make_lse(const struct rctx *x, struct tbuf *lse, int padded)
{
    int64_t sh[2] = {x->c.Hq, x->Tq};
    tbuf_make(lse, CFLASH_DTYPE_F32, 2, sh, NULL, padded ? 1 : 0, -1);
}

static enum cflash_status rcall(const struct rctx *x, cflash_range_plan_t plan,
                                enum cflash_kernel kernel, int threads,
                                const struct cflash_tensor *out, const struct cflash_tensor *lse)
{
    struct cflash_attn_params prm = x->params;
    prm.kernel = kernel;
    prm.num_threads = threads;
    return cflash_attn_range(&x->q.t, &x->k.t, x->vp, plan, out, lse, &prm);
}

static double oat(const struct cflash_tensor *out, int64_t t, int64_t h, int64_t d)
{
    int64_t idx[3] = {t, h, d};
    return tget(out, idx);
}

static double lat(const struct cflash_tensor *lse, int64_t t, int64_t h)
{
    int64_t idx[2] = {h, t};
    return tget(lse, idx);
}

/* empty rows exact, others finite */
static int check_rows(struct rctx *x, const struct cflash_tensor *out,
                      const struct cflash_tensor *lse, const char *who)
{
    for (int64_t t = 0; t < x->Tq; t++) {
        for (int64_t h = 0; h < x->c.Hq; h++) {
            const int64_t nvis = row_visible(x, t, h);
            for (int64_t d = 0; d < x->Dv; d++) {
                double o = oat(out, t, h, d);
                CHECK0(isfinite(o), "%s: out[t=%lld,h=%lld,d=%lld] = %g is not finite", who,
                       (long long)t, (long long)h, (long long)d, o);
                if (nvis == 0)
                    CHECK0(o == 0, "%s: empty row t=%lld h=%lld: out[d=%lld] = %g, want exactly 0",
                           who, (long long)t, (long long)h, (long long)d, o);
            }
            if (!lse)
                continue;
            double l = lat(lse, t, h);
            if (nvis == 0) {
                double want = -INFINITY;
                if (x->c.sinks) {
                    int64_t hh = h;
                    want = tget(&x->sinks.t, &hh);
                }
                CHECK0(l == want, "%s: empty row t=%lld h=%lld: lse = %.9g, want exactly %.9g", who,
                       (long long)t, (long long)h, l, want);
            } else {
                CHECK0(isfinite(l), "%s: lse[t=%lld,h=%lld] = %g is not finite (row has %lld visible keys)",
                       who, (long long)t, (long long)h, l, (long long)nvis);
            }
        }
    }
    return 1;
}

/* identity-value: entries > 0 exactly on the visible cells, exactly 0 elsewhere */
static int check_identity(struct rctx *x, const struct cflash_tensor *out, const char *who)
{
    const struct rcells *cl = x->cells;
    char *vis = malloc((size_t)(x->Tk > 0 ? x->Tk : 1));
    for (int64_t t = 0; t < x->Tq; t++) {
        memset(vis, 0, (size_t)x->Tk);
        for (int64_t e = cl->row_start[t]; e < cl->row_start[t + 1]; e++)
            vis[cl->col[e]] = 1;
        for (int64_t h = 0; h < x->c.Hq; h++)
            for (int64_t j = 0; j < x->Tk; j++) {
                double o = oat(out, t, h, j);
                const int v = vis[j] && cell_kept(x, t, h, j), ok = v ? o > 0 : o == 0;
                if (!ok) {
                    free(vis);
                    CHECK0(0, "%s: row %lld head %lld key %lld: probability %g, but the key is %s",
                           who, (long long)t, (long long)h, (long long)j, o,
                           v ? "visible" : "invisible");
                }
            }
    }
    free(vis);
    return 1;
}

/* the kernel's result against the reference kernel's (SPEC 1 tolerances) */
static int compare_to_ref(struct rctx *x, const struct cflash_tensor *out,
                          const struct cflash_tensor *lse, int half, double e_naive,
                          const char *who)
{
    double num = 0, den = 0, maxabs = 0;
    int64_t wt = 0, wh = 0, wd = 0;
    for (int64_t t = 0; t < x->Tq; t++)
        for (int64_t h = 0; h < x->c.Hq; h++) {
            for (int64_t d = 0; d < x->Dv; d++) {
                double o = oat(out, t, h, d), r = oat(&x->oref.t, t, h, d);
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
                double l = lat(lse, t, h), r = lat(&x->lref.t, t, h);
                if (isinf(r)) {
                    CHECK0(l == r, "%s: lse[t=%lld,h=%lld] = %g, reference %g", who, (long long)t,
                           (long long)h, l, r);
                    continue;
                }
                double tol = (half ? 1e-3 : 1e-4) + 1e-6 * fabs(r);
                CHECK0(fabs(l - r) <= tol, "%s: lse[t=%lld,h=%lld] = %.9g, reference %.9g (tol %g)",
                       who, (long long)t, (long long)h, l, r, tol);
            }
        }
    if (half) {
        double tol = 2 * e_naive + 1e-3;
        CHECK0(maxabs <= tol,
               "%s: max abs error %.3g at t=%lld,h=%lld,d=%lld (got %.6g, ref %.6g) > 2*e_naive+1e-3 = %.3g",
               who, maxabs, (long long)wt, (long long)wh, (long long)wd, oat(out, wt, wh, wd),
               oat(&x->oref.t, wt, wh, wd), tol);
    } else {
        double rel = den == 0 ? sqrt(num) : sqrt(num / den);
        CHECK0(rel <= 1e-5,
               "%s: relative L2 error %.3g > 1e-5 (max abs %.3g at t=%lld,h=%lld,d=%lld: got %.7g, ref %.7g)",
               who, rel, maxabs, (long long)wt, (long long)wh, (long long)wd, oat(out, wt, wh, wd),
               oat(&x->oref.t, wt, wh, wd));
        /* a single wrongly masked row can hide in a global norm: per element too */
        CHECK0(maxabs <= 1e-4,
               "%s: max abs error %.3g at t=%lld,h=%lld,d=%lld (got %.7g, ref %.7g; row has %lld visible keys)",
               who, maxabs, (long long)wt, (long long)wh, (long long)wd, oat(out, wt, wh, wd),
               oat(&x->oref.t, wt, wh, wd), (long long)row_visible(x, wt, wh));
    }
    return 1;
}

/* The whole check of one configuration on an already created plan. */
static int check_with_plan(struct rctx *x, cflash_range_plan_t plan)
{
    const struct rcfg *c = &x->c;
    const int half = c->dtype != CFLASH_DTYPE_F32;
    const int64_t nout = x->Tq * c->Hq * x->Dv, nl = x->Tq * c->Hq;

    x->in.B = 1;
    x->in.Hq = c->Hq;
    x->in.Hk = c->Hk;
    x->in.D = c->D;
    x->in.Dv = x->Dv;
    x->in.q = tload(&x->q.t);
    x->in.k = tload(&x->k.t);
    x->in.v = tload(x->vp ? x->vp : &x->k.t);
    x->in.scale = c->scale != 0 ? (double)c->scale : 1.0 / sqrt((double)c->D);
    x->in.softcap = c->softcap;
    x->in.wl = x->in.wr = -1;
    if (c->alibi)
        x->in.alibi = tload(&x->alibi.t);
    if (c->sinks)
        x->in.sinks = tload(&x->sinks.t);
    x->on = malloc((size_t)(nout > 0 ? nout : 1) * sizeof *x->on);
    x->ol = malloc((size_t)(nl > 0 ? nl : 1) * sizeof *x->ol);

    /* the exact oracle first: with a mask its visible counts decide the empty rows */
    x->nvis = (c->m.on || c->bi.on) ? malloc((size_t)(nl > 0 ? nl : 1) * sizeof *x->nvis) : NULL;
    if (x->nvis || c->kernel == CFLASH_KERNEL_REFERENCE)
        range_oracle_attn(&x->in, x->p, x->cells, &x->msrc, &x->bsrc, CFLASH_DTYPE_F32, x->on,
                          x->ol, x->nvis);

    /* the reference call: fp32 out, contiguous */
    make_out(x, &x->oref, CFLASH_DTYPE_F32, 0);
    make_lse(x, &x->lref, 0);
    tbuf_poison(&x->oref, POISON);
    tbuf_poison(&x->lref, POISON);
    enum cflash_status st = rcall(x, plan, CFLASH_KERNEL_REFERENCE, 0, &x->oref.t, &x->lref.t);
    CHECK0(st == CFLASH_STATUS_OK, "reference call: %s (%s)", cflash_status_string(st),
           cflash_last_error());
    if (!check_rows(x, &x->oref.t, &x->lref.t, "ref(f32 out)"))
        return 0;
    if (c->identity && !check_identity(x, &x->oref.t, "ref(f32 out)"))
        return 0;

    if (c->kernel == CFLASH_KERNEL_REFERENCE) {
        /* the reference kernel against the tests' own fp64 oracle of SPEC 4 (computed above) */
        double num = 0, den = 0;
        for (int64_t t = 0; t < x->Tq; t++)
            for (int64_t h = 0; h < c->Hq; h++) {
                for (int64_t d = 0; d < x->Dv; d++) {
                    double r = oat(&x->oref.t, t, h, d), o = x->on[(t * c->Hq + h) * x->Dv + d];
                    num += (r - o) * (r - o);
                    den += o * o;
                    CHECK0(fabs(r - o) <= 1e-5,
                           "ref out[t=%lld,h=%lld,d=%lld] = %.9g, oracle %.9g (row has %lld visible keys)",
                           (long long)t, (long long)h, (long long)d, r, o, (long long)row_visible(x, t, h));
                }
                double l = lat(&x->lref.t, t, h), ol = x->ol[t * c->Hq + h];
                if (isinf(ol))
                    CHECK0(l == ol, "ref lse[t=%lld,h=%lld] = %g, oracle %g", (long long)t,
                           (long long)h, l, ol);
                else
                    CHECK0(fabs(l - ol) <= 1e-5 * (1 + fabs(ol)),
                           "ref lse[t=%lld,h=%lld] = %.9g, oracle %.9g", (long long)t, (long long)h,
                           l, ol);
            }
        CHECK0(den == 0 ? num == 0 : sqrt(num / den) <= 1e-6,
               "ref vs test oracle: relative L2 error %.3g > 1e-6", den == 0 ? sqrt(num) : sqrt(num / den));
    }

    double e_naive = 0;
    if (half) {
        range_oracle_attn(&x->in, x->p, x->cells, &x->msrc, &x->bsrc, c->dtype, x->on, NULL, NULL);
        for (int64_t t = 0; t < x->Tq; t++)
            for (int64_t h = 0; h < c->Hq; h++)
                for (int64_t d = 0; d < x->Dv; d++) {
                    double e = fabs(x->on[(t * c->Hq + h) * x->Dv + d] - oat(&x->oref.t, t, h, d));
                    if (e > e_naive)
                        e_naive = e;
                }
    }

    /* the call under test */
    enum cflash_dtype odt = c->out_f32 ? CFLASH_DTYPE_F32 : c->dtype;
    make_out(x, &x->out, odt, c->out_padded);
    make_lse(x, &x->lse, c->lse_mode == LSE_PADDED);
    tbuf_poison(&x->out, POISON);
    tbuf_poison(&x->lse, POISON);
    const struct cflash_tensor *lsep = c->lse_mode == LSE_NONE ? NULL : &x->lse.t;
    st = rcall(x, plan, c->kernel, c->threads, &x->out.t, lsep);
    CHECK0(st == CFLASH_STATUS_OK, "%s call: %s (%s)", kname(c->kernel), cflash_status_string(st),
           cflash_last_error());
    CHECK0(!x->mask.bytes || memcmp(x->mask0, x->mask.base, x->mask.bytes) == 0,
           "the call wrote into the mask");
    CHECK0(!x->bias.bytes || memcmp(x->bias0, x->bias.base, x->bias.bytes) == 0,
           "the call wrote into the bias");
    int64_t gaps = tbuf_gap_changes(&x->out, POISON);
    CHECK0(gaps == 0, "%lld bytes of out outside the view were written", (long long)gaps);
    gaps = tbuf_gap_changes(&x->lse, POISON);
    CHECK0(gaps == 0, "%lld bytes of lse outside the view were written", (long long)gaps);
    if (!lsep && x->lse.base)
        for (size_t i = 0; i < x->lse.bytes; i++)
            CHECK0(x->lse.base[i] == POISON, "lse = NULL, yet the lse buffer changed");
    char who[64];
    snprintf(who, sizeof who, "%s(%s out)", kname(c->kernel), dtype_name(odt));
    if (!check_rows(x, &x->out.t, lsep, who))
        return 0;
    if (c->identity && !check_identity(x, &x->out.t, who))
        return 0;
    return compare_to_ref(x, &x->out.t, lsep, half, e_naive, who);
}

/* oracle visible sets against hard-coded SPEC sets */
static int check_expect(const struct rplan *p, const struct rcells *cl, const char *expect)
{
    for (int64_t t = 0; t < p->Tq; t++) {
        char row[4096];
        int64_t n = p->Tk < 4095 ? p->Tk : 4095;
        memset(row, '0', (size_t)n);
        row[n] = 0;
        for (int64_t e = cl->row_start[t]; e < cl->row_start[t + 1]; e++)
            if (cl->col[e] < n)
                row[cl->col[e]] = '1';
        CHECK0(strncmp(row, expect + t * p->Tk, (size_t)n) == 0,
               "test oracle: row %lld visible set %s, SPEC says %.*s", (long long)t, row, (int)n,
               expect + t * p->Tk);
    }
    return 1;
}

/* Creates the plan, checks the planner's counts, then the configuration. */
static void range_check(const struct rcfg *c, const struct rplan *p, const int32_t *seg,
                        int64_t nseg, const char *expect)
{
    if (!require_kernel(c->kernel))
        return;
    struct rcells cl;
    int valid = rcells_build(&cl, p);
    struct rctx *x = calloc(1, sizeof *x);
    cflash_range_plan_t plan = NULL;
    if (!valid) {
        tfail(__FILE__, __LINE__, "test bug: the generated plan covers cell (%lld, %lld) twice (slices %lld, %lld)",
              (long long)cl.ov_row, (long long)cl.ov_col, (long long)cl.ov_a, (long long)cl.ov_b);
        goto done;
    }
    if (expect && !check_expect(p, &cl, expect))
        goto done;
    {
        enum cflash_status st = api_plan(p, c->range_layout, c->null_types, seg, nseg, &plan);
        if (st != CFLASH_STATUS_OK) {
            tfail(__FILE__, __LINE__, "cflash_range_plan_create: %s (%s)", cflash_status_string(st),
                  cflash_last_error());
            plan = NULL;
            goto done;
        }
        int64_t nonempty = 0;
        for (int64_t i = 0; i < p->n; i++)
            nonempty += rplan_slice_cells(p, i) > 0;
        int64_t ns = cflash_range_plan_num_slices(plan), vc = cflash_range_plan_visible_cells(plan);
        if (ns != nonempty) {
            tfail(__FILE__, __LINE__, "num_slices = %lld, want %lld (of %lld slices, the non-empty ones)",
                  (long long)ns, (long long)nonempty, (long long)p->n);
            goto done;
        }
        if (vc != cl.total) {
            tfail(__FILE__, __LINE__, "visible_cells = %lld, brute force counts %lld", (long long)vc,
                  (long long)cl.total);
            goto done;
        }
    }
    rctx_setup(x, c, p, &cl);
    check_with_plan(x, plan);
done:
    rctx_free(x);
    free(x);
    cflash_range_plan_destroy(plan);
    rcells_free(&cl);
}

/* ---- case descriptions ----------------------------------------------------------------- */

#define MAXS 8
enum gen { G_LIST, G_RANDOM, G_TILE, G_DOCS, G_BLOCKS };
enum { DOCS_FULL = 0, DOCS_CAUSAL = 1, DOCS_MIXED = 2, DOCS_CROSS = 3 };

struct rcase {
    struct rcfg c;
    int gen;
    int Tq, Tk;
    int n;
    int32_t sl[MAXS][5];
    int nseg;
    int32_t seg[MAXS + 3];
    const char *const *expect_local; /* local rows of the single slice sl[0] (worked cases) */
    const char *const *expect;       /* global rows */
    int gp;                          /* generator parameter */
    int segments;                    /* generated plans: group slices by q_range */
    uint64_t pseed;
};

/* Random rectangles and types, kept when no cell is covered yet (brute force on a map). */
static int try_add(struct rplan *p, char *map, int64_t qs, int64_t qe, int64_t ks, int64_t ke,
                   int type)
{
    for (int64_t r = qs; r < qe; r++)
        for (int64_t c = ks; c < ke; c++)
            if (map[r * p->Tk + c] && range_visible(qs, qe, ks, ke, type, r, c))
                return 0;
    for (int64_t r = qs; r < qe; r++)
        for (int64_t c = ks; c < ke; c++)
            if (range_visible(qs, qe, ks, ke, type, r, c))
                map[r * p->Tk + c] = 1;
    rplan_add(p, qs, qe, ks, ke, type);
    return 1;
}

static void gen_random_fill(struct rplan *p, char *map, struct rng *r, int attempts, int maxn)
{
    const int64_t Tq = p->Tq, Tk = p->Tk;
    for (int a = 0; a < attempts && p->n < maxn; a++) {
        int64_t qs, qe, ks, ke;
        int type = (int)rng_int(r, 4);
        int shape = (int)rng_int(r, 20);
        if (shape < 8) { /* general */
            qs = rng_int(r, Tq);
            qe = qs + 1 + rng_int(r, (Tq - qs + 1) / 2 + 1);
            ks = rng_int(r, Tk);
            ke = ks + 1 + rng_int(r, (Tk - ks + 1) / 2 + 1);
        } else if (shape < 14) { /* thin in k: several slices on one row */
            qs = rng_int(r, Tq);
            qe = qs + 1 + rng_int(r, Tq / 2 + 1);
            ks = rng_int(r, Tk);
            ke = ks + 1 + rng_int(r, 8);
        } else if (shape < 17) { /* thin in q: slices sharing columns on other rows */
            qs = rng_int(r, Tq);
            qe = qs + 1 + rng_int(r, 4);
            ks = rng_int(r, Tk);
            ke = ks + 1 + rng_int(r, Tk);
        } else { /* empty: qs == qe, ks == ke or band with Lq > Lk (always kept, then dropped) */
            int e = (int)rng_int(r, 3);
            qs = rng_int(r, Tq + 1);
            ks = rng_int(r, Tk + 1);
            if (e == 0) {
                qe = qs;
                ke = ks + rng_int(r, Tk - ks + 1);
            } else if (e == 1) {
                ke = ks;
                qe = qs + rng_int(r, Tq - qs + 1);
            } else { /* Lq >= 1, Lk in [0, Lq) */
                qs = rng_int(r, Tq);
                qe = qs + 1 + rng_int(r, Tq - qs);
                int64_t lk = rng_int(r, qe - qs);
                if (lk > Tk)
                    lk = Tk;
                ks = rng_int(r, Tk - lk + 1);
                ke = ks + lk;
                type = 3;
            }
        }
        if (qe > Tq)
            qe = Tq;
        if (ke > Tk)
            ke = Tk;
        try_add(p, map, qs, qe, ks, ke, type);
    }
}

/* Shuffles the slices (the planner must not depend on their order). */
static void shuffle(struct rplan *p, struct rng *r)
{
    for (int64_t i = p->n - 1; i > 0; i--) {
        int64_t j = rng_int(r, i + 1);
        int32_t t[5];
        memcpy(t, p->s[i], sizeof t);
        memcpy(p->s[i], p->s[j], sizeof t);
        memcpy(p->s[j], t, sizeof t);
    }
}

static int qrange_cmp(const void *x, const void *y)
{
    const int32_t *a = x, *b = y;
    if (a[0] != b[0])
        return a[0] < b[0] ? -1 : 1;
    if (a[1] != b[1])
        return a[1] < b[1] ? -1 : 1;
    return a[2] < b[2] ? -1 : a[2] > b[2];
}

/* Orders slices by q_range and returns segment_offsets grouping equal q_ranges (with an empty
 * group now and then); caller frees. */
static int32_t *group_by_qrange(struct rplan *p, struct rng *r, int64_t *nseg)
{
    qsort(p->s, (size_t)p->n, sizeof p->s[0], qrange_cmp);
    int32_t *seg = malloc((size_t)(2 * p->n + 2) * sizeof *seg);
    int64_t g = 0;
    seg[g++] = 0;
    for (int64_t i = 1; i <= p->n; i++) {
        if (i == p->n || p->s[i][0] != p->s[i - 1][0] || p->s[i][1] != p->s[i - 1][1]) {
            seg[g++] = (int32_t)i;
            if (rng_int(r, 8) == 0)
                seg[g++] = (int32_t)i; /* an empty group */
        }
    }
    *nseg = g;
    return seg;
}

static void gen_docs(struct rplan *p, struct rng *r, int mode, int64_t target)
{
    /* document lengths incl. 0 and 1; in DOCS_CROSS the key documents have their own lengths */
    int64_t nd = 0, cap = 64;
    int64_t *lq = malloc((size_t)cap * sizeof *lq), *lk = malloc((size_t)cap * sizeof *lk);
    int64_t Tq = 0, Tk = 0;
    while (Tq < target) {
        if (nd == cap) {
            cap *= 2;
            lq = realloc(lq, (size_t)cap * sizeof *lq);
            lk = realloc(lk, (size_t)cap * sizeof *lk);
        }
        int kind = (int)rng_int(r, 10);
        int64_t l = kind == 0 ? 0 : kind == 1 ? 1 : kind < 8 ? 2 + rng_int(r, 40) : 40 + rng_int(r, 160);
        lq[nd] = l;
        lk[nd] = mode == DOCS_CROSS ? (rng_int(r, 6) == 0 ? 0 : 1 + rng_int(r, 60)) : l;
        Tq += lq[nd];
        Tk += lk[nd];
        nd++;
    }
    rplan_init(p, Tq, Tk);
    int64_t q0 = 0, k0 = 0;
    for (int64_t d = 0; d < nd; d++) {
        int type = mode == DOCS_FULL ? 0 : mode == DOCS_CAUSAL ? 1 : (int)rng_int(r, 4);
        if (rng_int(r, 7) != 0) /* some documents are left uncovered: their rows are empty */
            rplan_add(p, q0, q0 + lq[d], k0, k0 + lk[d], type);
        q0 += lq[d];
        k0 += lk[d];
    }
    free(lq);
    free(lk);
}

static void gen_blocks(struct rplan *p, struct rng *r)
{
    const int64_t bq = 8 + rng_int(r, 90), bk = 8 + rng_int(r, 90);
    for (int64_t q0 = 0; q0 < p->Tq; q0 += bq)
        for (int64_t k0 = 0; k0 < p->Tk; k0 += bk) {
            if (rng_int(r, 2))
                continue;
            int64_t q1 = q0 + bq < p->Tq ? q0 + bq : p->Tq, k1 = k0 + bk < p->Tk ? k0 + bk : p->Tk;
            rplan_add(p, q0, q1, k0, k1, (int)rng_int(r, 4));
        }
}

/* Builds the plan of a case; returns segment_offsets (or NULL) in *seg (caller frees) and the
 * expected global visible matrix in *expect (or NULL; caller frees). */
static void build_case(const struct rcase *rc, struct rplan *p, int32_t **seg, int64_t *nseg,
                       char **expect)
{
    struct rng r = {rc->pseed ^ 0xb10c5eedull};
    *seg = NULL;
    *nseg = 0;
    *expect = NULL;
    switch (rc->gen) {
    case G_LIST:
        rplan_init(p, rc->Tq, rc->Tk);
        for (int i = 0; i < rc->n; i++)
            rplan_add(p, rc->sl[i][0], rc->sl[i][1], rc->sl[i][2], rc->sl[i][3], rc->sl[i][4]);
        if (rc->nseg) {
            *seg = malloc((size_t)rc->nseg * sizeof **seg);
            memcpy(*seg, rc->seg, (size_t)rc->nseg * sizeof **seg);
            *nseg = rc->nseg;
        }
        break;
    case G_RANDOM:
    case G_TILE: {
        rplan_init(p, rc->Tq, rc->Tk);
        char *map = calloc((size_t)rc->Tq * (size_t)rc->Tk + 1, 1);
        if (rc->gen == G_TILE) {
            /* causal q[a, a+n) k[b, b+n) and inverse causal q[a, a+n) k[b+1, b+n+1) tile the
             * rectangle q[a, a+n) x k[b, b+n+1) without a common cell */
            int64_t n = 1 + rng_int(&r, (rc->Tq < rc->Tk - 1 ? rc->Tq : rc->Tk - 1));
            int64_t a = rng_int(&r, rc->Tq - n + 1), b = rng_int(&r, rc->Tk - n);
            int ok1 = try_add(p, map, a, a + n, b, b + n, 1);
            int ok2 = try_add(p, map, a, a + n, b + 1, b + n + 1, 2);
            (void)ok1;
            (void)ok2;
            gen_random_fill(p, map, &r, 60, rc->gp);
        } else {
            gen_random_fill(p, map, &r, 150, rc->gp);
        }
        free(map);
        break;
    }
    case G_DOCS:
        gen_docs(p, &r, rc->gp, rc->Tq);
        break;
    case G_BLOCKS:
        rplan_init(p, rc->Tq, rc->Tk);
        gen_blocks(p, &r);
        break;
    }
    if (rc->gen != G_LIST) {
        shuffle(p, &r);
        if (rc->segments)
            *seg = group_by_qrange(p, &r, nseg);
    }
    if (rc->expect || rc->expect_local) {
        char *e = malloc((size_t)(p->Tq * p->Tk + 1));
        memset(e, '0', (size_t)(p->Tq * p->Tk));
        e[p->Tq * p->Tk] = 0;
        if (rc->expect) {
            for (int64_t t = 0; t < p->Tq; t++)
                memcpy(e + t * p->Tk, rc->expect[t], (size_t)p->Tk);
        } else { /* local table of slice 0 placed at its offsets */
            const int32_t *s = rc->sl[0];
            for (int64_t i = 0; i < s[1] - s[0]; i++)
                memcpy(e + (s[0] + i) * p->Tk + s[2], rc->expect_local[i], (size_t)(s[3] - s[2]));
        }
        *expect = e;
    }
}

static void plan_case(const void *arg)
{
    const struct rcase *rc = arg;
    if (!require_kernel(rc->c.kernel))
        return;
    struct rplan p;
    int32_t *seg;
    int64_t nseg;
    char *expect;
    build_case(rc, &p, &seg, &nseg, &expect);
    struct rcfg c = rc->c;
    if (c.null_types)
        for (int64_t i = 0; i < p.n; i++)
            if (p.s[i][4] != 0)
                c.null_types = 0;
    range_check(&c, &p, seg, nseg, expect);
    free(seg);
    free(expect);
    rplan_free(&p);
}

/* ---- names ----------------------------------------------------------------------------- */

#define APPEND(...)                                                        \
    do {                                                                   \
        size_t len_ = strlen(buf);                                         \
        if (len_ < n)                                                      \
            snprintf(buf + len_, n - len_, __VA_ARGS__);                   \
    } while (0)

static void rcfg_name(char *buf, size_t n, const struct rcfg *c)
{
    APPEND("/%s/%s/D=%d", kname(c->kernel), dtype_name(c->dtype), c->D);
    if (c->vnull)
        APPEND(",v=null");
    else if (c->identity)
        APPEND(",v=identity");
    else if (c->Dv != c->D)
        APPEND(",Dv=%d", c->Dv);
    APPEND("/Hq=%d,Hk=%d", c->Hq, c->Hk);
    if (c->alibi)
        APPEND("/alibi");
    if (c->softcap > 0)
        APPEND("/softcap=%g", c->softcap);
    if (c->sinks)
        APPEND("/sinks");
    if (c->scale != 0)
        APPEND("/scale=%g", c->scale);
    static const char *lay[4] = {"", "padded", "headmajor", "negstride"};
    if (c->layout)
        APPEND("/layout=%s", lay[c->layout]);
    if (c->out_f32 && c->dtype != CFLASH_DTYPE_F32)
        APPEND("/out=f32");
    if (c->out_padded)
        APPEND("/outlayout=padded");
    if (c->lse_mode == LSE_NONE)
        APPEND("/lse=null");
    else if (c->lse_mode == LSE_PADDED)
        APPEND("/lse=padded");
    if (c->threads)
        APPEND("/threads=%d", c->threads);
    if (c->range_layout)
        APPEND("/ranges=strided");
    if (c->null_types)
        APPEND("/types=null");
    for (int w = 0; w < 2; w++) {
        const struct rsrc *sp = w ? &c->bi : &c->m;
        if (!sp->on)
            continue;
        APPEND("/%s=%s,Hv=%s,%s", w ? "bias" : "mask", rlay_names[sp->layout], rhv_names[sp->hv],
               rst_names[sp->storage]);
        if (w)
            APPEND(",%s", dtype_name(sp->dtype));
        else
            APPEND(",%s", rf_names[sp->fill]);
        if (sp->q1 || sp->k1)
            APPEND(",bcast=%s%s", sp->q1 ? "Tq" : "", sp->k1 ? "Tk" : "");
        if (sp->grow)
            APPEND(",grow=%d", sp->grow);
        if (w && sp->sd != 0 && sp->sd != 1)
            APPEND(",sd=%g", sp->sd);
    }
    if (c->seed)
        APPEND("/seed=%llx", (unsigned long long)c->seed);
}

static void add_plan_case(const char *prefix, const struct rcase *rc)
{
    char buf[512];
    size_t n = sizeof buf;
    snprintf(buf, n, "%s", prefix);
    rcfg_name(buf, n, &rc->c);
    if (rc->gen == G_DOCS)
        APPEND("/Tq>=%d", rc->Tq);
    else if (rc->gen != G_LIST)
        APPEND("/T=%d,%d", rc->Tq, rc->Tk);
    if (rc->segments)
        APPEND("/segments");
    if (rc->pseed)
        APPEND("/plan=%llx", (unsigned long long)rc->pseed);
    tcase_add(buf, plan_case, rc, sizeof *rc);
}

/* ---- 1. SPEC worked tables ------------------------------------------------------------- */

static const char *const W46[4][4] = {
    {"111111", "111111", "111111", "111111"}, /* full */
    {"111000", "111100", "111110", "111111"}, /* causal: 0-2, 0-3, 0-4, 0-5 */
    {"111111", "011111", "001111", "000111"}, /* inverse causal: 0-5, 1-5, 2-5, 3-5 */
    {"111000", "011100", "001110", "000111"}, /* band: 0-2, 1-3, 2-4, 3-5 */
};
static const char *const W64[4][6] = {
    {"1111", "1111", "1111", "1111", "1111", "1111"}, /* full */
    {"0000", "0000", "1000", "1100", "1110", "1111"}, /* causal: rows 0, 1 empty */
    {"1111", "0111", "0011", "0001", "0000", "0000"}, /* inverse causal: j >= i */
    {"0000", "0000", "0000", "0000", "0000", "0000"}, /* band with Lq > Lk: empty */
};
static const char *const type_names[4] = {"full", "causal", "inv_causal", "band"};

static void register_worked(void)
{
    for (int ki = 0; ki < N_ALL_KERNELS; ki++)
        for (int di = 0; di < 3; di++)
            for (int ty = 0; ty < 4; ty++)
                for (int shape = 0; shape < 2; shape++)
                    for (int off = 0; off < 2; off++) {
                        struct rcase rc;
                        memset(&rc, 0, sizeof rc);
                        rc.c = rcfg_default(all_kernels[ki], dtypes[di]);
                        rc.c.identity = 1;
                        rc.c.Hq = 2;
                        rc.c.Hk = 1;
                        rc.c.out_f32 = (ty + shape) & 1;
                        rc.c.seed = 0x3000 + (uint64_t)(ty * 4 + shape * 2 + off);
                        rc.gen = G_LIST;
                        const int Lq = shape ? 6 : 4, Lk = shape ? 4 : 6;
                        /* off: the slice sits inside larger axes (global vs local coordinates);
                         * rows and keys outside it are empty / invisible */
                        const int qs = off ? 2 : 0, ks = off ? 3 : 0;
                        rc.Tq = Lq + (off ? 3 : 0);
                        rc.Tk = Lk + (off ? 5 : 0);
                        rc.n = 1;
                        int32_t s[5] = {qs, qs + Lq, ks, ks + Lk, ty};
                        memcpy(rc.sl[0], s, sizeof s);
                        rc.expect_local = shape ? W64[ty] : W46[ty];
                        char prefix[128];
                        snprintf(prefix, sizeof prefix, "range/worked/%s/Lq=%d,Lk=%d%s", type_names[ty],
                                 Lq, Lk, off ? "/offset=(2,3)" : "");
                        add_plan_case(prefix, &rc);
                    }
}

/* ---- 2. LocateAnything MTP ------------------------------------------------------------- */

static const char *const MTP[10] = {
    "1000000000", "1100000000", "1110000000", "1111000000", "1111100000",
    "1111110000", "1111111000", /* rows 0-6: causal over keys 0-6 */
    "1111110111", "1111110111", "1111110111", /* rows 7-9: {0..5} u {7, 8, 9} */
};

static void register_mtp(void)
{
    /* variants: 0 plain; 1 segment_offsets [0,1,3]; 2 with empty groups [0,0,1,1,3];
     * 3 reordered slices, one group each [0,1,2,3]; 4 random values, GQA, alibi, sinks, softcap */
    for (int ki = 0; ki < N_ALL_KERNELS; ki++)
        for (int di = 0; di < 3; di++)
            for (int var = 0; var < 5; var++) {
                struct rcase rc;
                memset(&rc, 0, sizeof rc);
                rc.c = rcfg_default(all_kernels[ki], dtypes[di]);
                rc.c.identity = var != 4;
                rc.c.Hq = 4;
                rc.c.Hk = 2;
                rc.c.seed = 0x4000 + (uint64_t)var;
                rc.gen = G_LIST;
                rc.Tq = rc.Tk = 10;
                rc.n = 3;
                static const int32_t sl[3][5] = {{0, 7, 0, 7, 1}, {7, 10, 0, 6, 0}, {7, 10, 7, 10, 0}};
                memcpy(rc.sl, sl, sizeof sl);
                if (var == 1) {
                    static const int32_t sg[3] = {0, 1, 3};
                    rc.nseg = 3;
                    memcpy(rc.seg, sg, sizeof sg);
                } else if (var == 2) {
                    static const int32_t sg[5] = {0, 0, 1, 1, 3};
                    rc.nseg = 5;
                    memcpy(rc.seg, sg, sizeof sg);
                } else if (var == 3) {
                    static const int32_t sl3[3][5] = {{7, 10, 7, 10, 0}, {0, 7, 0, 7, 1}, {7, 10, 0, 6, 0}};
                    memcpy(rc.sl, sl3, sizeof sl3);
                    static const int32_t sg[4] = {0, 1, 2, 3};
                    rc.nseg = 4;
                    memcpy(rc.seg, sg, sizeof sg);
                    rc.c.range_layout = 1;
                } else if (var == 4) {
                    rc.c.D = 64;
                    rc.c.Dv = 32;
                    rc.c.alibi = 1;
                    rc.c.sinks = 1;
                    rc.c.softcap = 5;
                    static const int32_t sg[3] = {0, 1, 3};
                    rc.nseg = 3;
                    memcpy(rc.seg, sg, sizeof sg);
                }
                rc.expect = MTP;
                static const char *vn[5] = {"plain", "segments=[0,1,3]", "segments=[0,0,1,1,3]",
                                            "reordered,segments=[0,1,2,3]", "values"};
                char prefix[128];
                snprintf(prefix, sizeof prefix, "range/mtp/%s", vn[var]);
                add_plan_case(prefix, &rc);
            }
}

/* ---- 3. flash-mlm cumulative query attention ------------------------------------------- */

static const char *const CUMUL[21] = {
    "111111111000000000000", "111111111000000000000", "111111111000000000000",
    "111111111000000000000", "111111111000000000000", "111111111000000000000",
    "111111111000000000000", "111111111000000000000", "111111111000000000000", /* seq 0: 0-8 */
    "111111111111111100000", "111111111111111100000", "111111111111111100000",
    "111111111111111100000", "111111111111111100000", "111111111111111100000",
    "111111111111111100000", /* seq 1: 0-15 */
    "111111111111111111111", "111111111111111111111", "111111111111111111111",
    "111111111111111111111", "111111111111111111111", /* seq 2: 0-20 */
};

static void register_cumulative(void)
{
    for (int ki = 0; ki < N_ALL_KERNELS; ki++)
        for (int di = 0; di < 3; di++)
            for (int var = 0; var < 2; var++) {
                struct rcase rc;
                memset(&rc, 0, sizeof rc);
                rc.c = rcfg_default(all_kernels[ki], dtypes[di]);
                rc.gen = G_LIST;
                rc.Tq = rc.Tk = 21;
                rc.n = 3;
                static const int32_t cu[4] = {0, 9, 16, 21};
                for (int b = 0; b < 3; b++) {
                    int32_t s[5] = {cu[b], cu[b + 1], 0, cu[b + 1], 0};
                    memcpy(rc.sl[b], s, sizeof s);
                }
                rc.expect = CUMUL;
                if (var == 0) {
                    rc.c.identity = 1;
                    rc.c.Hq = 2;
                    rc.c.Hk = 2;
                    rc.c.null_types = 1;
                } else {
                    rc.c.Hq = 8;
                    rc.c.Hk = 2;
                    rc.c.D = 64;
                    rc.c.Dv = 64;
                    rc.c.alibi = 1;
                    rc.c.layout = LAY_HEADMAJOR;
                }
                rc.c.seed = 0x5000 + (uint64_t)var;
                add_plan_case(var ? "range/cumulative/lengths=[9,7,5]/values"
                                  : "range/cumulative/lengths=[9,7,5]/sets",
                              &rc);
            }
}

/* ---- 4. document masks ----------------------------------------------------------------- */

static void register_docs(void)
{
    static const char *mn[4] = {"full", "causal", "mixed", "cross"};
    static const int Ds[3] = {16, 64, 128};
    for (int ki = 0; ki < N_ALL_KERNELS; ki++)
        for (int di = 0; di < 3; di++)
            for (int mode = 0; mode < 4; mode++) {
                struct rcase rc;
                memset(&rc, 0, sizeof rc);
                rc.c = rcfg_default(all_kernels[ki], dtypes[di]);
                rc.c.D = Ds[(mode + di) % 3];
                rc.c.Dv = mode == DOCS_CROSS ? 48 : rc.c.D;
                rc.c.Hq = 4;
                rc.c.Hk = mode & 1 ? 1 : 4;
                rc.c.null_types = mode == DOCS_FULL;
                rc.c.sinks = mode == DOCS_CAUSAL;
                rc.c.alibi = mode == DOCS_MIXED;
                rc.c.seed = 0x6000 + (uint64_t)(mode * 3 + di);
                rc.gen = G_DOCS;
                rc.gp = mode;
                rc.Tq = 300 + 60 * mode;
                rc.pseed = 0x600 + (uint64_t)mode;
                char prefix[64];
                snprintf(prefix, sizeof prefix, "range/docs/%s", mn[mode]);
                add_plan_case(prefix, &rc);
            }
}

/* ---- 5. random valid plans ------------------------------------------------------------- */

static struct rcase random_case(uint64_t seed, enum cflash_kernel k, enum cflash_dtype dt)
{
    struct rng r = {seed};
    struct rcase rc;
    memset(&rc, 0, sizeof rc);
    rc.c = rcfg_default(k, dt);
    static const int gens[4] = {G_RANDOM, G_RANDOM, G_TILE, G_BLOCKS};
    rc.gen = gens[rng_int(&r, 4)];
    int big = rng_int(&r, 3) == 0;
    rc.Tq = (int)(big ? 300 + rng_int(&r, 300) : 1 + rng_int(&r, 300));
    rc.Tk = (int)(big ? 300 + rng_int(&r, 300) : 2 + rng_int(&r, 300));
    rc.gp = 4 + (int)rng_int(&r, 40);
    static const int hq[4][2] = {{1, 1}, {4, 1}, {4, 4}, {8, 2}};
    int h = (int)rng_int(&r, 4);
    rc.c.Hq = hq[h][0];
    rc.c.Hk = hq[h][1];
    static const int Ds[3] = {16, 64, 128};
    rc.c.D = Ds[rng_int(&r, 3)];
    if (big && rc.c.D == 128 && rc.c.Hq == 8)
        rc.c.Hq = 4; /* keeps the fp64 oracle quick */
    int dv = (int)rng_int(&r, 4);
    rc.c.Dv = dv == 0 ? 24 : dv == 1 ? 80 : rc.c.D;
    rc.c.vnull = dv == 3 && rng_int(&r, 2);
    rc.c.alibi = rng_int(&r, 3) == 0;
    static const float caps[4] = {0, 0, 5, 30};
    rc.c.softcap = caps[rng_int(&r, 4)];
    rc.c.sinks = rng_int(&r, 3) == 0;
    static const float scales[5] = {0, 0, 0, 0.3f, -0.2f};
    rc.c.scale = scales[rng_int(&r, 5)];
    rc.c.layout = (int)rng_int(&r, 4);
    rc.c.out_f32 = dt != CFLASH_DTYPE_F32 && rng_int(&r, 3) == 0;
    rc.c.out_padded = rng_int(&r, 3) == 0;
    rc.c.lse_mode = (int)rng_int(&r, 3);
    rc.c.range_layout = rng_int(&r, 2);
    rc.segments = rng_int(&r, 3) == 0;
    rc.c.seed = seed;
    rc.pseed = seed ^ 0x1111;
    return rc;
}

#define N_RANDOM_PER 8
static void register_random(void)
{
    for (int ki = 0; ki < N_ALL_KERNELS; ki++)
        for (int di = 0; di < 3; di++)
            for (int i = 0; i < N_RANDOM_PER; i++) {
                uint64_t seed = 0x9e3779b9ull * (uint64_t)(1 + i + N_RANDOM_PER * (di + 3 * ki)) ^ 0xabcdef;
                struct rcase rc = random_case(seed, all_kernels[ki], dtypes[di]);
                add_plan_case("range/random", &rc);
            }
    /* fixed, demanding configurations of the list in SPEC 4's spirit, for every kernel */
    for (int ki = 0; ki < N_ALL_KERNELS; ki++)
        for (int di = 0; di < 3; di++) {
            /* causal + inverse causal tiling, GQA 4, D 128 != Dv 64, everything on */
            struct rcase rc;
            memset(&rc, 0, sizeof rc);
            rc.c = rcfg_default(all_kernels[ki], dtypes[di]);
            rc.c.Hq = 4;
            rc.c.Hk = 1;
            rc.c.D = 128;
            rc.c.Dv = 64;
            rc.c.alibi = 1;
            rc.c.softcap = 20;
            rc.c.sinks = 1;
            rc.c.seed = 0x7000 + (uint64_t)di;
            rc.gen = G_LIST;
            rc.Tq = 420;
            rc.Tk = 421;
            rc.n = 4;
            static const int32_t sl[4][5] = {
                {0, 420, 0, 420, 1},   /* causal: col <= row */
                {0, 420, 1, 421, 2},   /* inverse causal shifted by one: col >= row + 1 */
                {0, 0, 0, 421, 3},     /* empty (dropped) */
                {10, 20, 30, 35, 3}};  /* band with Lq > Lk: empty (dropped) */
            memcpy(rc.sl, sl, sizeof sl);
            add_plan_case("range/random/tile420", &rc);
            /* band + causal + full stacked in one row block: several k ranges per row */
            memset(&rc, 0, sizeof rc);
            rc.c = rcfg_default(all_kernels[ki], dtypes[di]);
            rc.c.Hq = 4;
            rc.c.Hk = 4;
            rc.c.D = 64;
            rc.c.Dv = 64;
            rc.c.scale = 0.2f;
            rc.c.seed = 0x7100 + (uint64_t)di;
            rc.gen = G_LIST;
            rc.Tq = 400;
            rc.Tk = 520;
            rc.n = 6;
            static const int32_t sl2[6][5] = {
                {0, 400, 0, 100, 0},     /* a full prefix for every row */
                {0, 256, 100, 356, 3},   /* band, Lq == Lk: col == row + 100 */
                {1, 256, 100, 355, 1},   /* causal: col <= row + 99, left of that diagonal */
                {256, 400, 100, 520, 1}, /* causal, Lk > Lq */
                {0, 128, 400, 520, 2},   /* inverse causal, Lk < Lq: rows 120-127 see none */
                {300, 301, 0, 0, 0}};    /* empty */
            memcpy(rc.sl, sl2, sizeof sl2);
            add_plan_case("range/random/stacked", &rc);
        }
}

/* ---- 6. overlap detection exactness ---------------------------------------------------- */

/* a random range of [0, T]: uniform, or (half the time) a large one */
static void rand_range(struct rng *r, int64_t T, int64_t *s, int64_t *e)
{
    if (rng_int(r, 2)) {
        *s = rng_int(r, T + 1);
        *e = *s + rng_int(r, T - *s + 1);
    } else {
        *s = rng_int(r, T / 2 + 1);
        *e = T - rng_int(r, T / 2 + 1);
        if (*e < *s)
            *e = *s;
    }
}

static void rand_slice(struct rng *r, int64_t Tq, int64_t Tk, int32_t *s)
{
    int64_t qs, qe, ks, ke;
    rand_range(r, Tq, &qs, &qe);
    rand_range(r, Tk, &ks, &ke);
    s[0] = (int32_t)qs;
    s[1] = (int32_t)qe;
    s[2] = (int32_t)ks;
    s[3] = (int32_t)ke;
    s[4] = (int32_t)rng_int(r, 4);
}

static int pair_overlap(const int32_t *a, const int32_t *b)
{
    for (int64_t row = a[0]; row < a[1]; row++)
        for (int64_t col = a[2]; col < a[3]; col++)
            if (range_visible(a[0], a[1], a[2], a[3], a[4], row, col) &&
                range_visible(b[0], b[1], b[2], b[3], b[4], row, col))
                return 1;
    return 0;
}

/* an empty slice of one of the three kinds */
static void empty_slice(struct rng *r, int64_t Tq, int64_t Tk, int32_t *s)
{
    int kind = (int)rng_int(r, 3);
    rand_slice(r, Tq, Tk, s);
    if (kind == 0)
        s[1] = s[0];
    else if (kind == 1)
        s[3] = s[2];
    else if (s[1] - s[0] >= 1 && s[3] - s[2] >= s[1] - s[0]) {
        s[3] = s[2] + (s[1] - s[0]) - 1; /* band with Lk < Lq */
        s[4] = 3;
    } else {
        s[1] = s[0];
    }
}

struct ovl_arg {
    int maxc;     /* coordinates in [0, maxc] */
    int iters;
    int nslices;  /* slices that may overlap (2: exact pairs) */
    int structured;
    uint64_t seed;
};

/* b derived from a: the same rectangle shifted by -2..2 in q and/or k, another type */
static void near_slice(struct rng *r, const int32_t *a, int64_t Tq, int64_t Tk, int32_t *b)
{
    memcpy(b, a, 5 * sizeof *b);
    int64_t dq = rng_int(r, 5) - 2, dk = rng_int(r, 5) - 2;
    int64_t q0 = a[0] + dq, q1 = a[1] + dq + (rng_int(r, 3) - 1), k0 = a[2] + dk,
            k1 = a[3] + dk + (rng_int(r, 3) - 1);
    if (q0 < 0) q0 = 0;
    if (k0 < 0) k0 = 0;
    if (q0 > Tq) q0 = Tq;
    if (k0 > Tk) k0 = Tk;
    if (q1 > Tq) q1 = Tq;
    if (k1 > Tk) k1 = Tk;
    if (q1 < q0) q1 = q0;
    if (k1 < k0) k1 = k0;
    b[0] = (int32_t)q0;
    b[1] = (int32_t)q1;
    b[2] = (int32_t)k0;
    b[3] = (int32_t)k1;
    b[4] = (int32_t)rng_int(r, 4);
}

static void overlap_case(const void *arg)
{
    const struct ovl_arg *o = arg;
    struct rng r = {o->seed};
    int64_t n_invalid = 0, n_valid = 0;
    for (int it = 0; it < o->iters; it++) {
        const int64_t Tq = 1 + rng_int(&r, o->maxc), Tk = 1 + rng_int(&r, o->maxc);
        /* the slices under test sit at indices >= 100 (never confused with a coordinate in the
         * message), among empty filler slices of every kind */
        const int64_t n = 100 + o->nslices + rng_int(&r, 40);
        struct rplan p;
        rplan_init(&p, Tq, Tk);
        int64_t idx[8];
        for (int a = 0; a < o->nslices; a++) {
            int64_t i;
            int dup;
            do {
                i = 100 + rng_int(&r, n - 100);
                dup = 0;
                for (int b = 0; b < a; b++)
                    dup |= idx[b] == i;
            } while (dup);
            idx[a] = i;
        }
        for (int64_t i = 0; i < n; i++) {
            int32_t s[5];
            empty_slice(&r, Tq, Tk, s);
            rplan_add(&p, s[0], s[1], s[2], s[3], s[4]);
        }
        for (int a = 0; a < o->nslices; a++) {
            if (o->structured && a > 0)
                near_slice(&r, p.s[idx[rng_int(&r, a)]], Tq, Tk, p.s[idx[a]]);
            else
                rand_slice(&r, Tq, Tk, p.s[idx[a]]);
        }
        struct rcells cl;
        int valid = rcells_build(&cl, &p);
        int64_t nonempty = 0;
        for (int64_t i = 0; i < n; i++)
            nonempty += rplan_slice_cells(&p, i) > 0;
        cflash_range_plan_t plan = (cflash_range_plan_t)(uintptr_t)0x5a5a;
        enum cflash_status st = api_plan(&p, (int)(it & 1), 0, NULL, 0, &plan);
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", cflash_last_error());
        char desc[512] = "";
        for (int a = 0; a < o->nslices; a++) {
            const int32_t *s = p.s[idx[a]];
            size_t l = strlen(desc);
            snprintf(desc + l, sizeof desc - l, " #%lld q[%d,%d) k[%d,%d) %s;", (long long)idx[a], s[0],
                     s[1], s[2], s[3], type_names[s[4]]);
        }
        int64_t ns = -1, vc = -1;
        if (st == CFLASH_STATUS_OK) {
            ns = cflash_range_plan_num_slices(plan);
            vc = cflash_range_plan_visible_cells(plan);
            cflash_range_plan_destroy(plan);
        }
        int named_pair = 0;
        if (!valid && st == CFLASH_STATUS_INVALID_ARGUMENT) {
            /* the message names two slices that really share a cell */
            for (int a = 0; a < o->nslices && !named_pair; a++)
                for (int b = a + 1; b < o->nslices && !named_pair; b++) {
                    char na[32], nb[32];
                    snprintf(na, sizeof na, "%lld", (long long)idx[a]);
                    snprintf(nb, sizeof nb, "%lld", (long long)idx[b]);
                    named_pair = msg_names(msg, na) && msg_names(msg, nb) &&
                                 pair_overlap(p.s[idx[a]], p.s[idx[b]]);
                }
        }
        int64_t total = cl.total;
        int64_t ova = cl.ov_a, ovb = cl.ov_b, ovr = cl.ov_row, ovc = cl.ov_col;
        rcells_free(&cl);
        rplan_free(&p);
        if (valid) {
            n_valid++;
            CHECK(st == CFLASH_STATUS_OK, "Tq=%lld Tk=%lld,%s no common cell, but create returned %s (%s)",
                  (long long)Tq, (long long)Tk, desc, cflash_status_string(st), msg);
            CHECK(ns == nonempty, "Tq=%lld Tk=%lld,%s num_slices %lld, want %lld", (long long)Tq,
                  (long long)Tk, desc, (long long)ns, (long long)nonempty);
            CHECK(vc == total, "Tq=%lld Tk=%lld,%s visible_cells %lld, want %lld", (long long)Tq,
                  (long long)Tk, desc, (long long)vc, (long long)total);
        } else {
            n_invalid++;
            CHECK(st == CFLASH_STATUS_INVALID_ARGUMENT,
                  "Tq=%lld Tk=%lld,%s slices %lld and %lld share cell (%lld, %lld), but create returned %s",
                  (long long)Tq, (long long)Tk, desc, (long long)ova, (long long)ovb, (long long)ovr,
                  (long long)ovc, cflash_status_string(st));
            CHECK(plan == (cflash_range_plan_t)(uintptr_t)0x5a5a, "*plan was written on error");
            CHECK(named_pair, "Tq=%lld Tk=%lld,%s: message \"%s\" does not name two overlapping slices (e.g. %lld and %lld)",
                  (long long)Tq, (long long)Tk, desc, msg, (long long)ova, (long long)ovb);
        }
    }
    /* the generator must exercise both outcomes */
    CHECK(n_valid > o->iters / 20 && n_invalid > o->iters / 20,
          "test bug: %lld valid and %lld overlapping plans out of %d", (long long)n_valid,
          (long long)n_invalid, o->iters);
}

/* Named overlapping / touching pairs that must be told apart exactly. */
struct pair_arg {
    int Tq, Tk;
    int32_t a[5], b[5];
    int overlap; /* as SPEC 4 decides (and the brute force confirms) */
};

static void pair_case(const void *arg)
{
    const struct pair_arg *pa = arg;
    struct rplan p;
    rplan_init(&p, pa->Tq, pa->Tk);
    for (int i = 0; i < 200; i++)
        rplan_add(&p, 0, 0, 0, 0, i & 3);
    memcpy(p.s[123], pa->a, sizeof pa->a);
    memcpy(p.s[177], pa->b, sizeof pa->b);
    int brute = pair_overlap(pa->a, pa->b);
    cflash_range_plan_t plan = NULL;
    enum cflash_status st = api_plan(&p, 0, 0, NULL, 0, &plan);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", cflash_last_error());
    rplan_free(&p);
    if (st == CFLASH_STATUS_OK)
        cflash_range_plan_destroy(plan);
    CHECK(brute == pa->overlap, "test bug: brute force says overlap=%d", brute);
    if (pa->overlap) {
        CHECK(st == CFLASH_STATUS_INVALID_ARGUMENT, "status %s, want INVALID_ARGUMENT",
              cflash_status_string(st));
        CHECK(msg_names(msg, "123") && msg_names(msg, "177"),
              "message \"%s\" does not name slices 123 and 177", msg);
    } else {
        CHECK(st == CFLASH_STATUS_OK, "status %s (%s), want OK: no common cell",
              cflash_status_string(st), msg);
    }
}

static void register_overlap(void)
{
    static const struct ovl_arg args[] = {
        {6, 100000, 2, 0, 0x0e1},  {12, 50000, 2, 0, 0x0e2}, {40, 3000, 2, 0, 0x0e3},
        {10, 50000, 2, 1, 0x0e4},  {30, 5000, 2, 1, 0x0e5},  {10, 5000, 5, 1, 0x0e6},
        {24, 3000, 6, 0, 0x0e7},
    };
    for (size_t i = 0; i < sizeof args / sizeof args[0]; i++) {
        char name[128];
        snprintf(name, sizeof name, "range/overlap/random/coords<=%d/slices=%d%s/iters=%d",
                 args[i].maxc, args[i].nslices, args[i].structured ? "/near" : "", args[i].iters);
        tcase_add(name, overlap_case, &args[i], sizeof args[i]);
    }
    static const struct {
        const char *name;
        struct pair_arg a;
    } pairs[] = {
        /* causal col <= row and inverse causal col >= row + 1: they tile, no common cell */
        {"causal+inv_causal_shifted_tile", {8, 9, {0, 8, 0, 8, 1}, {0, 8, 1, 9, 2}, 0}},
        /* causal and inverse causal on one square share the diagonal */
        {"causal+inv_causal_same_square", {8, 8, {0, 8, 0, 8, 1}, {0, 8, 0, 8, 2}, 1}},
        /* band (diagonal) and causal shifted by one: col <= row - 1 vs col == row */
        {"band+causal_below", {8, 8, {0, 8, 0, 8, 3}, {1, 8, 0, 7, 1}, 0}},
        {"band+causal_on_diagonal", {8, 8, {0, 8, 0, 8, 3}, {0, 8, 0, 8, 1}, 1}},
        /* rectangles that overlap while the bands do not */
        {"causal_vs_full_top_right", {6, 10, {0, 6, 0, 6, 1}, {0, 2, 3, 10, 0}, 0}},
        {"causal_vs_full_touching_diagonal", {6, 10, {0, 6, 0, 6, 1}, {1, 3, 1, 4, 0}, 1}},
        {"causal_vs_full_strictly_above", {6, 10, {0, 6, 0, 6, 1}, {0, 1, 2, 6, 0}, 0}},
        {"inv_causal_vs_full_below", {6, 6, {0, 6, 0, 6, 2}, {2, 6, 0, 2, 0}, 0}},
        {"inv_causal_vs_full_touching", {6, 6, {0, 6, 0, 6, 2}, {2, 6, 0, 3, 0}, 1}},
        /* bottom-right causal with Lq > Lk: its first rows are empty */
        {"causal_Lq>Lk_empty_rows_vs_full", {6, 3, {0, 6, 0, 3, 1}, {0, 3, 0, 3, 0}, 0}},
        {"causal_Lq>Lk_first_row_vs_full", {6, 3, {0, 6, 0, 3, 1}, {0, 4, 0, 1, 0}, 1}},
        /* band with Lq > Lk is empty and overlaps nothing */
        {"empty_band_inside_full", {6, 6, {1, 5, 1, 3, 3}, {0, 6, 0, 6, 0}, 0}},
        {"empty_q_range_inside_full", {6, 6, {3, 3, 0, 6, 0}, {0, 6, 0, 6, 0}, 0}},
        {"empty_k_range_inside_full", {6, 6, {0, 6, 4, 4, 1}, {0, 6, 0, 6, 0}, 0}},
        /* touching rectangles */
        {"adjacent_rows", {6, 6, {0, 3, 0, 6, 0}, {3, 6, 0, 6, 0}, 0}},
        {"adjacent_cols", {6, 6, {0, 6, 0, 3, 0}, {0, 6, 3, 6, 0}, 0}},
        {"one_cell", {6, 6, {2, 3, 4, 5, 3}, {0, 6, 4, 5, 0}, 1}},
        /* two bands of Lk > Lq, shifted: i <= j <= i + 2 vs i <= j <= i + 2 one column on */
        {"band_shift_overlap", {4, 8, {0, 4, 0, 6, 3}, {0, 4, 1, 7, 3}, 1}},
        {"band_shift_disjoint", {4, 9, {0, 4, 0, 6, 3}, {0, 4, 3, 9, 3}, 0}},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        char name[128];
        snprintf(name, sizeof name, "range/overlap/pair/%s", pairs[i].name);
        tcase_add(name, pair_case, &pairs[i].a, sizeof pairs[i].a);
    }
}

/* Empty slices are accepted and dropped. */
static void empty_case(const void *arg)
{
    (void)arg;
    struct rplan p;
    rplan_init(&p, 10, 8);
    rplan_add(&p, 3, 3, 0, 8, 0); /* qs == qe */
    rplan_add(&p, 0, 10, 5, 5, 1); /* ks == ke */
    rplan_add(&p, 2, 9, 1, 4, 3);  /* band, Lq 7 > Lk 3 */
    rplan_add(&p, 0, 0, 0, 0, 2);
    rplan_add(&p, 10, 10, 8, 8, 3); /* at the very end */
    rplan_add(&p, 0, 10, 0, 8, 0);  /* and a full slice over everything: no overlap with them */
    cflash_range_plan_t plan = NULL;
    enum cflash_status st = api_plan(&p, 0, 0, NULL, 0, &plan);
    rplan_free(&p);
    CHECK(st == CFLASH_STATUS_OK, "create: %s (%s)", cflash_status_string(st), cflash_last_error());
    int64_t ns = cflash_range_plan_num_slices(plan), vc = cflash_range_plan_visible_cells(plan);
    cflash_range_plan_destroy(plan);
    CHECK(ns == 1, "num_slices %lld, want 1 (five empty slices dropped)", (long long)ns);
    CHECK(vc == 80, "visible_cells %lld, want 80", (long long)vc);
    CHECK(cflash_range_plan_num_slices(NULL) == 0 && cflash_range_plan_visible_cells(NULL) == 0,
          "num_slices / visible_cells of NULL are not 0");
    cflash_range_plan_destroy(NULL); /* a no-op */
}

/* cflash_range_plan_packed_sequences: which plans are document masks (packed batches), and how
 * many sequences their gaps add. Each plan's attention through that path is checked against the
 * oracle by the plan cases (document masks, gaps, empty slices). */
static void packed_case(const void *arg)
{
    (void)arg;
    static const struct {
        int64_t Tq, Tk;
        int n;
        int s[4][5]; /* qs, qe, ks, ke, type */
        int64_t want;
        const char *what;
    } cases[] = {
        {30, 40, 2, {{0, 10, 0, 15, 1}, {10, 30, 15, 40, 1}}, 2, "two causal documents covering both axes"},
        {30, 40, 2, {{12, 30, 20, 40, 0}, {2, 10, 5, 15, 0}}, 6,
         "full documents given out of order, with gaps: rows 0-2 / keys 0-5, rows 10-12 / keys 15-20"},
        {30, 40, 2, {{0, 10, 0, 15, 1}, {10, 20, 15, 25, 0}}, 0, "causal and full mixed"},
        {30, 40, 2, {{0, 10, 20, 30, 1}, {10, 20, 0, 15, 1}}, 0, "key ranges out of the rows' order"},
        {30, 40, 2, {{0, 10, 0, 15, 0}, {0, 10, 20, 30, 0}}, 0, "one row range seeing two key ranges"},
        {30, 40, 1, {{0, 30, 0, 40, 3}}, 0, "a band"},
        {30, 40, 1, {{0, 30, 0, 40, 2}}, 0, "inverse causal"},
        {30, 40, 2, {{0, 10, 0, 0, 1}, {10, 30, 0, 40, 1}}, 2, "an empty slice dropped: rows 0-10 a gap"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct rplan p;
        rplan_init(&p, cases[i].Tq, cases[i].Tk);
        for (int a = 0; a < cases[i].n; a++)
            rplan_add(&p, cases[i].s[a][0], cases[i].s[a][1], cases[i].s[a][2], cases[i].s[a][3], cases[i].s[a][4]);
        cflash_range_plan_t plan = NULL;
        enum cflash_status st = api_plan(&p, 0, 0, NULL, 0, &plan);
        rplan_free(&p);
        CHECK(st == CFLASH_STATUS_OK, "create (%s): %s (%s)", cases[i].what, cflash_status_string(st), cflash_last_error());
        const int64_t got = cflash_range_plan_packed_sequences(plan);
        cflash_range_plan_destroy(plan);
        CHECK(got == cases[i].want, "%s: packed_sequences %lld, want %lld", cases[i].what, (long long)got, (long long)cases[i].want);
    }
    CHECK(cflash_range_plan_packed_sequences(NULL) == 0, "packed_sequences of NULL is not 0");
}

/* Degenerate axes: n = 0, Tq = 0, Tk = 0, all-empty plans; through every kernel. */
struct edge_arg {
    enum cflash_kernel kernel;
    int which;
};

static void edge_case(const void *arg)
{
    const struct edge_arg *ea = arg;
    struct rplan p;
    struct rcfg c = rcfg_default(ea->kernel, CFLASH_DTYPE_F32);
    c.Hq = 2;
    c.Hk = 1;
    c.seed = 0xed6e + (uint64_t)ea->which;
    switch (ea->which) {
    case 0: /* no slices at all: every row empty */
        rplan_init(&p, 7, 5);
        break;
    case 1: /* Tk = 0 */
        rplan_init(&p, 7, 0);
        rplan_add(&p, 0, 7, 0, 0, 0);
        break;
    case 2: /* Tq = 0 */
        rplan_init(&p, 0, 5);
        rplan_add(&p, 0, 0, 0, 5, 1);
        break;
    case 3: /* only empty slices, with sinks: lse = the sink logit */
        rplan_init(&p, 7, 5);
        rplan_add(&p, 0, 7, 0, 5, 3);
        c.sinks = 1;
        break;
    default: /* one visible cell in the last row and column of two 128-row blocks */
        rplan_init(&p, 257, 300);
        rplan_add(&p, 256, 257, 299, 300, 2);
        rplan_add(&p, 127, 129, 0, 1, 0);
        c.sinks = 1;
        c.alibi = 1;
        break;
    }
    range_check(&c, &p, NULL, 0, NULL);
    rplan_free(&p);
}

/* ---- 7. misuse ------------------------------------------------------------------------- */

#define MBUF 4096
#define MPOISON 0x7f

struct mfix {
    int32_t qr[3][2], kr[3][2], ty[3], seg[4];
    struct cflash_tensor q_ranges, k_ranges, types, segs;
    const struct cflash_tensor *pq, *pk, *pt, *ps;
    int64_t Tq, Tk;
    int plan_null;
    /* attention */
    float *qb, *kb, *vb, *ob, *lb, *ab, *sb;
    struct cflash_tensor q, k, v, out, lse, alibi, sinks;
    const struct cflash_tensor *aq, *ak, *av, *aout, *alse;
    struct cflash_attn_params prm;
    int attn_plan_null;
};

/* plan: Tq 8, Tk 10; q[0,4) k[0,5) causal; q[4,8) k[2,10) full; q[4,8) k[0,2) inverse causal;
 * segment_offsets [0,1,3]. attention: q [8,4,8], k [10,2,8], v [10,2,6], out [8,4,6],
 * lse [4,8], alibi [4], sinks [4]. */
static void mfix_init(struct mfix *f)
{
    memset(f, 0, sizeof *f);
    static const int32_t qr[3][2] = {{0, 4}, {4, 8}, {4, 8}}, kr[3][2] = {{0, 5}, {2, 10}, {0, 2}},
                         ty[3] = {1, 0, 2}, seg[3] = {0, 1, 3};
    memcpy(f->qr, qr, sizeof qr);
    memcpy(f->kr, kr, sizeof kr);
    memcpy(f->ty, ty, sizeof ty);
    memcpy(f->seg, seg, sizeof seg);
    int64_t s2[2] = {3, 2}, s1[1] = {3};
    f->q_ranges = tdesc(f->qr, CFLASH_DTYPE_I32, 2, s2);
    f->k_ranges = tdesc(f->kr, CFLASH_DTYPE_I32, 2, s2);
    f->types = tdesc(f->ty, CFLASH_DTYPE_I32, 1, s1);
    f->segs = tdesc(f->seg, CFLASH_DTYPE_I32, 1, s1);
    f->pq = &f->q_ranges;
    f->pk = &f->k_ranges;
    f->pt = &f->types;
    f->ps = &f->segs;
    f->Tq = 8;
    f->Tk = 10;
    struct rng r = {77};
    float **bufs[7] = {&f->qb, &f->kb, &f->vb, &f->ob, &f->lb, &f->ab, &f->sb};
    for (int i = 0; i < 7; i++) {
        *bufs[i] = malloc(MBUF * sizeof(float));
        for (int j = 0; j < MBUF; j++)
            (*bufs[i])[j] = i == 3 || i == 4 ? 0 : (float)rng_normal(&r);
    }
    for (int j = 0; j < MBUF; j++)
        f->ab[j] = 0.25f;
    memset(f->ob, MPOISON, MBUF * sizeof(float));
    memset(f->lb, MPOISON, MBUF * sizeof(float));
    int64_t qs[3] = {8, 4, 8}, ks[3] = {10, 2, 8}, vs[3] = {10, 2, 6}, os[3] = {8, 4, 6},
            ls[2] = {4, 8}, hs[1] = {4};
    f->q = tdesc(f->qb, CFLASH_DTYPE_F32, 3, qs);
    f->k = tdesc(f->kb, CFLASH_DTYPE_F32, 3, ks);
    f->v = tdesc(f->vb, CFLASH_DTYPE_F32, 3, vs);
    f->out = tdesc(f->ob, CFLASH_DTYPE_F32, 3, os);
    f->lse = tdesc(f->lb, CFLASH_DTYPE_F32, 2, ls);
    f->alibi = tdesc(f->ab, CFLASH_DTYPE_F32, 1, hs);
    f->sinks = tdesc(f->sb, CFLASH_DTYPE_F32, 1, hs);
    f->aq = &f->q;
    f->ak = &f->k;
    f->av = &f->v;
    f->aout = &f->out;
    f->alse = &f->lse;
    f->prm = cflash_attn_params_default();
    f->prm.alibi_slopes = &f->alibi;
    f->prm.sinks = &f->sinks;
    f->prm.softcap = 10;
}

static void mfix_free(struct mfix *f)
{
    free(f->qb);
    free(f->kb);
    free(f->vb);
    free(f->ob);
    free(f->lb);
    free(f->ab);
    free(f->sb);
}

static int mbuf_clean(const float *b)
{
    const unsigned char *c = (const unsigned char *)b;
    for (size_t i = 0; i < MBUF * sizeof *b; i++)
        if (c[i] != MPOISON)
            return 0;
    return 1;
}

/* X(id, 0 = plan create / 1 = attention, expected names, description) */
#define RMISUSE(X)                                                                           \
    X(P_PLAN_NULL, 0, "plan", "plan=NULL")                                                   \
    X(P_QR_NULL, 0, "q_ranges", "q_ranges=NULL")                                             \
    X(P_KR_NULL, 0, "k_ranges", "k_ranges=NULL")                                             \
    X(P_QR_F32, 0, "q_ranges", "q_ranges.dtype=f32")                                         \
    X(P_KR_U8, 0, "k_ranges", "k_ranges.dtype=u8")                                           \
    X(P_TY_F32, 0, "attn_type_map", "attn_type_map.dtype=f32")                               \
    X(P_QR_NDIM1, 0, "q_ranges", "q_ranges.ndim=1")                                          \
    X(P_QR_NDIM3, 0, "q_ranges", "q_ranges.ndim=3")                                          \
    X(P_KR_NDIM1, 0, "k_ranges", "k_ranges.ndim=1")                                          \
    X(P_TY_NDIM2, 0, "attn_type_map", "attn_type_map.ndim=2")                                \
    X(P_QR_COLS3, 0, "q_ranges", "q_ranges.shape=[3,3]")                                     \
    X(P_KR_COLS1, 0, "k_ranges", "k_ranges.shape=[3,1]")                                     \
    X(P_KR_LEN, 0, "k_ranges|q_ranges", "k_ranges.shape[0]=2!=3")                            \
    X(P_KR_LEN4, 0, "k_ranges|q_ranges", "k_ranges.shape[0]=4!=3")                           \
    X(P_TY_LEN, 0, "attn_type_map", "attn_type_map.shape[0]=2!=3")                           \
    X(P_QR_DATA_NULL, 0, "q_ranges", "q_ranges.data=NULL")                                   \
    X(P_QS_NEG, 0, "q_ranges", "q_ranges[1]=[-1,8)")                                         \
    X(P_QE_BIG, 0, "q_ranges", "q_ranges[2]=[4,9),Tq=8")                                     \
    X(P_QS_GT_QE, 0, "q_ranges", "q_ranges[0]=[3,2)")                                        \
    X(P_KS_NEG, 0, "k_ranges", "k_ranges[2]=[-2,2)")                                         \
    X(P_KE_BIG, 0, "k_ranges", "k_ranges[1]=[2,11),Tk=10")                                   \
    X(P_KS_GT_KE, 0, "k_ranges", "k_ranges[0]=[5,4)")                                        \
    X(P_TQ_SMALL, 0, "q_ranges|Tq", "Tq=7<q_range_end")                                      \
    X(P_TK_SMALL, 0, "k_ranges|Tk", "Tk=9<k_range_end")                                      \
    X(P_TQ_NEG, 0, "Tq", "Tq=-1")                                                            \
    X(P_TK_NEG, 0, "Tk", "Tk=-1")                                                            \
    X(P_TYPE4, 0, "attn_type_map", "attn_type_map[1]=4")                                     \
    X(P_TYPENEG, 0, "attn_type_map", "attn_type_map[2]=-1")                                  \
    X(P_SEG_START, 0, "segment_offsets", "segment_offsets=[1,1,3]")                          \
    X(P_SEG_END, 0, "segment_offsets", "segment_offsets=[0,1,2]")                            \
    X(P_SEG_END_BIG, 0, "segment_offsets", "segment_offsets=[0,1,4]")                        \
    X(P_SEG_DECREASING, 0, "segment_offsets", "segment_offsets=[0,1,0,3]")                   \
    X(P_SEG_MIXES, 0, "segment_offsets", "segment_offsets=[0,2,3](mixes_q_ranges)")          \
    X(P_SEG_MIXES_END, 0, "segment_offsets", "segment_offsets=[0,1,3](q[4,8)_vs_q[4,7))")    \
    X(P_SEG_ALL_ONE, 0, "segment_offsets", "segment_offsets=[0,3](mixes_q_ranges)")          \
    X(P_SEG_EMPTY, 0, "segment_offsets", "segment_offsets.shape=[0]")                        \
    X(P_SEG_F32, 0, "segment_offsets", "segment_offsets.dtype=f32")                          \
    X(P_SEG_NDIM2, 0, "segment_offsets", "segment_offsets.ndim=2")                           \
    X(P_OVERLAP, 0, "q_ranges|k_ranges", "overlap(slice_2=q[4,8)k[0,3))")                    \
    X(A_PLAN_NULL, 1, "plan", "plan=NULL")                                                   \
    X(A_Q_NULL, 1, "q", "q=NULL")                                                            \
    X(A_OUT_NULL, 1, "out", "out=NULL")                                                      \
    X(A_Q_TQ, 1, "q", "q.shape[0]=out.shape[0]=7!=plan_Tq")                                  \
    X(A_Q_TQ9, 1, "q", "q.shape[0]=out.shape[0]=9!=plan_Tq")                                 \
    X(A_K_TK, 1, "k", "k.shape[0]=v.shape[0]=9!=plan_Tk")                                    \
    X(A_K_TK11, 1, "k", "k.shape[0]=v.shape[0]=11!=plan_Tk")                                 \
    X(A_OUT_T, 1, "out", "out.shape[0]=7")                                                   \
    X(A_LSE_T, 1, "lse", "lse.shape=[4,7]")                                                  \
    X(A_LSE_SWAPPED, 1, "lse", "lse.shape=[8,4]")                                            \
    X(A_CAUSAL, 1, "causal", "causal=1")                                                     \
    X(A_WINDOW_L, 1, "window_left", "window_left=2")                                         \
    X(A_WINDOW_R, 1, "window_right|window", "window_right=0")                                \
    X(A_ALIBI_2D, 1, "alibi_slopes", "alibi_slopes.shape=[1,4]")                             \
    X(A_ALIBI_LEN, 1, "alibi_slopes", "alibi_slopes.shape=[3]")                              \
    X(A_SINKS_LEN, 1, "sinks", "sinks.shape=[5]")                                            \
    X(A_SOFTCAP_NEG, 1, "softcap", "softcap=-1")                                             \
    X(A_SCALE_NAN, 1, "scale", "scale=nan")                                                  \
    X(A_THREADS_NEG, 1, "num_threads", "num_threads=-1")                                     \
    X(A_K_D, 1, "k|q|D", "k.shape[2]=7!=D")

enum rmisuse_id {
#define X(id, e, names, desc) id,
    RMISUSE(X)
#undef X
        N_RMISUSE
};

static const struct {
    int attn;
    const char *names, *desc;
} rmisuse_info[N_RMISUSE] = {
#define X(id, e, names, desc) {e, names, desc},
    RMISUSE(X)
#undef X
};

static void mutate(struct mfix *f, enum rmisuse_id id)
{
    switch (id) {
    case P_PLAN_NULL: f->plan_null = 1; break;
    case P_QR_NULL: f->pq = NULL; break;
    case P_KR_NULL: f->pk = NULL; break;
    case P_QR_F32: f->q_ranges.dtype = CFLASH_DTYPE_F32; break;
    case P_KR_U8: f->k_ranges.dtype = CFLASH_DTYPE_U8; break;
    case P_TY_F32: f->types.dtype = CFLASH_DTYPE_F32; break;
    case P_QR_NDIM1: f->q_ranges.ndim = 1; f->q_ranges.shape[0] = 6; f->q_ranges.stride[0] = 1; break;
    case P_QR_NDIM3:
        f->q_ranges.ndim = 3;
        f->q_ranges.shape[2] = 1;
        f->q_ranges.stride[2] = 1;
        break;
    case P_KR_NDIM1: f->k_ranges.ndim = 1; f->k_ranges.shape[0] = 3; break;
    case P_TY_NDIM2: f->types.ndim = 2; f->types.shape[1] = 1; f->types.stride[1] = 1; break;
    case P_QR_COLS3: f->q_ranges.shape[0] = 2; f->q_ranges.shape[1] = 3; f->q_ranges.stride[0] = 3; break;
    case P_KR_COLS1: f->k_ranges.shape[1] = 1; break;
    case P_KR_LEN: f->k_ranges.shape[0] = 2; break;
    case P_KR_LEN4: f->k_ranges.shape[0] = 4; f->k_ranges.stride[0] = 1; break; /* stays in the 6 ints */
    case P_TY_LEN: f->types.shape[0] = 2; break;
    case P_QR_DATA_NULL: f->q_ranges.data = NULL; break;
    case P_QS_NEG: f->qr[1][0] = -1; break;
    case P_QE_BIG: f->qr[2][1] = 9; f->qr[1][1] = 9; break; /* keeps the group's q_ranges equal */
    case P_QS_GT_QE: f->qr[0][0] = 3; f->qr[0][1] = 2; break;
    case P_KS_NEG: f->kr[2][0] = -2; break;
    case P_KE_BIG: f->kr[1][1] = 11; break;
    case P_KS_GT_KE: f->kr[0][0] = 5; f->kr[0][1] = 4; break;
    case P_TQ_SMALL: f->Tq = 7; break;
    case P_TK_SMALL: f->Tk = 9; break;
    case P_TQ_NEG: f->Tq = -1; break;
    case P_TK_NEG: f->Tk = -1; break;
    case P_TYPE4: f->ty[1] = 4; break;
    case P_TYPENEG: f->ty[2] = -1; break;
    case P_SEG_START: f->seg[0] = 1; f->seg[1] = 1; break;
    case P_SEG_END: f->seg[2] = 2; break;
    case P_SEG_END_BIG: f->seg[2] = 4; break;
    case P_SEG_DECREASING: {
        static const int32_t s[4] = {0, 1, 0, 3};
        memcpy(f->seg, s, sizeof s);
        f->segs.shape[0] = 4;
        break;
    }
    case P_SEG_MIXES: f->seg[1] = 2; break;
    case P_SEG_MIXES_END: f->qr[2][1] = 7; break; /* same start, another end */
    case P_SEG_ALL_ONE: f->seg[1] = 3; f->segs.shape[0] = 2; break;
    case P_SEG_EMPTY: f->segs.shape[0] = 0; break;
    case P_SEG_F32: f->segs.dtype = CFLASH_DTYPE_F32; break;
    case P_SEG_NDIM2: f->segs.ndim = 2; f->segs.shape[1] = 1; f->segs.stride[1] = 1; break;
    case P_OVERLAP: f->kr[2][1] = 3; break; /* q[4,8) k[0,3) inverse causal meets k[2,10) full */
    case A_PLAN_NULL: f->attn_plan_null = 1; break;
    case A_Q_NULL: f->aq = NULL; break;
    case A_OUT_NULL: f->aout = NULL; break;
    case A_Q_TQ: f->q.shape[0] = 7; f->out.shape[0] = 7; f->lse.shape[1] = 7; f->lse.stride[0] = 7; break;
    case A_Q_TQ9: f->q.shape[0] = 9; f->out.shape[0] = 9; f->lse.shape[1] = 9; f->lse.stride[0] = 9; break;
    case A_K_TK: f->k.shape[0] = 9; f->v.shape[0] = 9; break;
    case A_K_TK11: f->k.shape[0] = 11; f->v.shape[0] = 11; break;
    case A_OUT_T: f->out.shape[0] = 7; break;
    case A_LSE_T: f->lse.shape[1] = 7; f->lse.stride[0] = 7; break;
    case A_LSE_SWAPPED: f->lse.shape[0] = 8; f->lse.shape[1] = 4; f->lse.stride[0] = 4; break;
    case A_CAUSAL: f->prm.causal = 1; break;
    case A_WINDOW_L: f->prm.window_left = 2; break;
    case A_WINDOW_R: f->prm.window_right = 0; break;
    case A_ALIBI_2D:
        f->alibi.ndim = 2;
        f->alibi.shape[0] = 1;
        f->alibi.shape[1] = 4;
        f->alibi.stride[0] = 4;
        f->alibi.stride[1] = 1;
        break;
    case A_ALIBI_LEN: f->alibi.shape[0] = 3; break;
    case A_SINKS_LEN: f->sinks.shape[0] = 5; break;
    case A_SOFTCAP_NEG: f->prm.softcap = -1; break;
    case A_SCALE_NAN: f->prm.scale = NAN; break;
    case A_THREADS_NEG: f->prm.num_threads = -1; break;
    case A_K_D: f->k.shape[2] = 7; break;
    case N_RMISUSE: break;
    }
}

static enum cflash_status mfix_create(struct mfix *f, cflash_range_plan_t *plan)
{
    return cflash_range_plan_create(f->plan_null ? NULL : plan, f->pq, f->pk, f->pt, f->Tq, f->Tk,
                                    f->ps);
}

static void rmisuse_case(const void *arg)
{
    enum rmisuse_id id = *(const enum rmisuse_id *)arg;
    struct mfix f;
    mfix_init(&f);
    const int attn = rmisuse_info[id].attn;
    cflash_range_plan_t plan = NULL, sentinel = (cflash_range_plan_t)(uintptr_t)0x5a5a;
    enum cflash_status st;
    if (attn) {
        st = mfix_create(&f, &plan); /* the valid plan */
        if (st != CFLASH_STATUS_OK) {
            mfix_free(&f);
            CHECK(0, "baseline plan: %s (%s)", cflash_status_string(st), cflash_last_error());
        }
        mutate(&f, id);
        st = cflash_attn_range(f.aq, f.ak, f.av, f.attn_plan_null ? NULL : plan, f.aout, f.alse, &f.prm);
        cflash_range_plan_destroy(plan);
        plan = sentinel;
    } else {
        mutate(&f, id);
        plan = sentinel;
        st = mfix_create(&f, &plan);
        if (st == CFLASH_STATUS_OK && plan != sentinel)
            cflash_range_plan_destroy(plan);
    }
    char msg[1024];
    const char *le = cflash_last_error();
    snprintf(msg, sizeof msg, "%s", le ? le : "(null)");
    int clean = mbuf_clean(f.ob) && mbuf_clean(f.lb);
    mfix_free(&f);
    CHECK(st == CFLASH_STATUS_INVALID_ARGUMENT, "status %s, want INVALID_ARGUMENT (message \"%s\")",
          cflash_status_string(st), msg);
    CHECK(plan == sentinel, "*plan was written although create failed");
    CHECK(clean, "out / lse buffers were written (message \"%s\")", msg);
    CHECK(le && le[0], "cflash_last_error() is empty");
    CHECK(msg_names_any(msg, rmisuse_info[id].names), "message \"%s\" does not name %s", msg,
          rmisuse_info[id].names);
    if (id == P_OVERLAP)
        CHECK(msg_names(msg, "1") && msg_names(msg, "2"), "message \"%s\" does not name slices 1 and 2", msg);
}

static void rmisuse_baseline(const void *arg)
{
    (void)arg;
    struct mfix f;
    mfix_init(&f);
    cflash_range_plan_t plan = NULL;
    enum cflash_status st = mfix_create(&f, &plan);
    enum cflash_status st2 = CFLASH_STATUS_OK, st3 = CFLASH_STATUS_OK, st4 = CFLASH_STATUS_OK;
    int written = 0;
    int64_t ns = -1;
    if (st == CFLASH_STATUS_OK) {
        ns = cflash_range_plan_num_slices(plan);
        st2 = cflash_attn_range(f.aq, f.ak, f.av, plan, f.aout, f.alse, &f.prm);
        written = !mbuf_clean(f.ob) && !mbuf_clean(f.lb);
        /* optional arguments absent: lse, alibi, sinks, params, v */
        f.prm.alibi_slopes = NULL;
        f.prm.sinks = NULL;
        st3 = cflash_attn_range(f.aq, f.ak, f.av, plan, f.aout, NULL, &f.prm);
        int64_t os[3] = {8, 4, 8}; /* V := K: Dv = D */
        f.out = tdesc(f.ob, CFLASH_DTYPE_F32, 3, os);
        st4 = cflash_attn_range(f.aq, f.ak, NULL, plan, f.aout, NULL, NULL);
        cflash_range_plan_destroy(plan);
    }
    /* and without attn_type_map / segment_offsets */
    plan = NULL;
    enum cflash_status st5 =
        cflash_range_plan_create(&plan, f.pq, f.pk, NULL, f.Tq, f.Tk, NULL);
    cflash_range_plan_destroy(plan);
    mfix_free(&f);
    CHECK(st == CFLASH_STATUS_OK, "valid plan: %s (%s)", cflash_status_string(st), cflash_last_error());
    CHECK(ns == 3, "num_slices %lld, want 3", (long long)ns);
    CHECK(st2 == CFLASH_STATUS_OK, "valid call: %s (%s)", cflash_status_string(st2), cflash_last_error());
    CHECK(written, "valid call wrote nothing");
    CHECK(st3 == CFLASH_STATUS_OK, "without lse/alibi/sinks: %s (%s)", cflash_status_string(st3),
          cflash_last_error());
    CHECK(st4 == CFLASH_STATUS_OK, "v=NULL, params=NULL: %s (%s)", cflash_status_string(st4),
          cflash_last_error());
    CHECK(st5 == CFLASH_STATUS_OK, "attn_type_map = segment_offsets = NULL: %s (%s)",
          cflash_status_string(st5), cflash_last_error());
}

/* The MTP plan with a group that mixes q_ranges: INVALID_ARGUMENT naming segment_offsets. */
static void mtp_mixed_group_case(const void *arg)
{
    (void)arg;
    struct rplan p;
    rplan_init(&p, 10, 10);
    rplan_add(&p, 0, 7, 0, 7, 1);
    rplan_add(&p, 7, 10, 0, 6, 0);
    rplan_add(&p, 7, 10, 7, 10, 0);
    static const int32_t seg[3] = {0, 2, 3}; /* group 0 = slices 0 and 1: different q_ranges */
    cflash_range_plan_t plan = (cflash_range_plan_t)(uintptr_t)0x5a5a;
    enum cflash_status st = api_plan(&p, 0, 0, seg, 3, &plan);
    rplan_free(&p);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", cflash_last_error());
    CHECK(st == CFLASH_STATUS_INVALID_ARGUMENT, "status %s, want INVALID_ARGUMENT",
          cflash_status_string(st));
    CHECK(plan == (cflash_range_plan_t)(uintptr_t)0x5a5a, "*plan was written");
    CHECK(msg_names(msg, "segment_offsets"), "message \"%s\" does not name segment_offsets", msg);
}

static void register_misuse(void)
{
    char name[256];
    tcase_add("range/misuse/baseline_ok", rmisuse_baseline, NULL, 0);
    for (int i = 0; i < N_RMISUSE; i++) {
        enum rmisuse_id id = (enum rmisuse_id)i;
        snprintf(name, sizeof name, "range/misuse/%s/%s",
                 rmisuse_info[i].attn ? "cflash_attn_range" : "cflash_range_plan_create",
                 rmisuse_info[i].desc);
        tcase_add(name, rmisuse_case, &id, sizeof id);
    }
    tcase_add("range/misuse/mtp/segment_offsets_mix_q_ranges", mtp_mixed_group_case, NULL, 0);
}

/* ---- 8. scale -------------------------------------------------------------------------- */

/* No timing is asserted: each plan must only be created (counts exact) and attended correctly.
 * The column-strip plan makes every pair of slices a row-overlap candidate; the planner's sweep
 * (src/range.c) is quadratic there (about 2.6 s Release, 10 s ASan for 100k slices, vs 0.03 s for
 * the other two plans), which this case documents rather than hides. */
struct scale_arg {
    int kind; /* 0: 100k documents of length 1..3; 1: 316 x 316 blocks of 1 x 1; 2: 100k column
               * strips q[0,16) k[j, j+1) (every slice shares every row) */
    enum cflash_kernel kernel;
};

static void scale_case(const void *arg)
{
    const struct scale_arg *sa = arg;
    if (!require_kernel(sa->kernel))
        return;
    struct rng r = {0x5ca1e + (uint64_t)sa->kind};
    struct rplan p;
    if (sa->kind == 0) {
        int64_t T = 0;
        int32_t *len = malloc(100000 * sizeof *len);
        for (int i = 0; i < 100000; i++) {
            len[i] = 1 + (int32_t)rng_int(&r, 3);
            T += len[i];
        }
        rplan_init(&p, T, T);
        int64_t o = 0;
        for (int i = 0; i < 100000; i++) {
            rplan_add(&p, o, o + len[i], o, o + len[i], (int)rng_int(&r, 4));
            o += len[i];
        }
        free(len);
    } else if (sa->kind == 1) {
        rplan_init(&p, 316, 316);
        for (int i = 0; i < 316; i++)
            for (int j = 0; j < 316; j++)
                rplan_add(&p, i, i + 1, j, j + 1, (int)rng_int(&r, 4));
    } else {
        rplan_init(&p, 16, 100000);
        for (int j = 0; j < 100000; j++)
            rplan_add(&p, 0, 16, j, j + 1, (int)rng_int(&r, 4));
    }
    shuffle(&p, &r);
    struct rcfg c = rcfg_default(sa->kernel, CFLASH_DTYPE_F32);
    c.Hq = 2;
    c.Hk = 1;
    c.D = 8;
    c.Dv = 8;
    c.alibi = sa->kind != 2;
    c.seed = 0x5ca1e;
    range_check(&c, &p, NULL, 0, NULL); /* create (counts checked), attention vs ref / oracle */
    rplan_free(&p);
}

static void register_scale(void)
{
    static const char *kn[3] = {"docs=100000,len=1..3", "blocks=316x316,1x1", "column_strips=100000,q=[0,16)"};
    char name[128];
    for (int kind = 0; kind < 3; kind++)
        for (int ki = 0; ki < N_ALL_KERNELS; ki++) {
            if (kind == 2 && ki > 1)
                break; /* the strip plan: ref and the first fast kernel are enough */
            struct scale_arg sa = {kind, all_kernels[ki]};
            snprintf(name, sizeof name, "range/scale/%s/%s", kn[kind], kname(all_kernels[ki]));
            tcase_add(name, scale_case, &sa, sizeof sa);
        }
}

/* ---- 9. thread determinism ------------------------------------------------------------- */

static void threads_case(const void *arg)
{
    const struct rcase *rc0 = arg;
    if (!require_kernel(rc0->c.kernel))
        return;
    struct rcase rc = *rc0;
    rc.c.threads = 1;
    plan_case(&rc); /* the single-thread result is right ... */
    if (tfailed())
        return;
    /* ... and 2, 3 and the default reproduce its bytes */
    struct rplan p;
    int32_t *seg;
    int64_t nseg;
    char *expect;
    build_case(&rc, &p, &seg, &nseg, &expect);
    struct rcells cl;
    rcells_build(&cl, &p);
    cflash_range_plan_t plan = NULL;
    enum cflash_status st = api_plan(&p, 0, 0, seg, nseg, &plan);
    struct rctx *x = calloc(1, sizeof *x);
    char msg[256] = "";
    struct tbuf out1, lse1, out, lse;
    memset(&out1, 0, sizeof out1);
    memset(&lse1, 0, sizeof lse1);
    memset(&out, 0, sizeof out);
    memset(&lse, 0, sizeof lse);
    if (st != CFLASH_STATUS_OK) {
        snprintf(msg, sizeof msg, "create: %s", cflash_status_string(st));
    } else {
        rctx_setup(x, &rc.c, &p, &cl);
        enum cflash_dtype odt = rc.c.out_f32 ? CFLASH_DTYPE_F32 : rc.c.dtype;
        make_out(x, &out1, odt, 0);
        make_lse(x, &lse1, 0);
        make_out(x, &out, odt, 0);
        make_lse(x, &lse, 0);
        tbuf_poison(&out1, 0xa5);
        tbuf_poison(&lse1, 0xa5);
        st = rcall(x, plan, rc.c.kernel, 1, &out1.t, &lse1.t);
        if (st != CFLASH_STATUS_OK)
            snprintf(msg, sizeof msg, "threads=1: %s", cflash_status_string(st));
        static const int counts[] = {2, 3, 0, 7};
        for (size_t i = 0; !msg[0] && i < sizeof counts / sizeof counts[0]; i++) {
            tbuf_poison(&out, 0xa5);
            tbuf_poison(&lse, 0xa5);
            st = rcall(x, plan, rc.c.kernel, counts[i], &out.t, &lse.t);
            if (st != CFLASH_STATUS_OK)
                snprintf(msg, sizeof msg, "threads=%d: %s", counts[i], cflash_status_string(st));
            else if (out.bytes && memcmp(out.base, out1.base, out.bytes) != 0)
                snprintf(msg, sizeof msg, "threads=%d: out bytes differ from threads=1", counts[i]);
            else if (lse.bytes && memcmp(lse.base, lse1.base, lse.bytes) != 0)
                snprintf(msg, sizeof msg, "threads=%d: lse bytes differ from threads=1", counts[i]);
        }
    }
    tbuf_free(&out1);
    tbuf_free(&lse1);
    tbuf_free(&out);
    tbuf_free(&lse);
    rctx_free(x);
    free(x);
    cflash_range_plan_destroy(plan);
    rcells_free(&cl);
    rplan_free(&p);
    free(seg);
    free(expect);
    CHECK(!msg[0], "%s", msg);
}

static void register_threads(void)
{
    char name[512];
    for (int ki = 0; ki < N_ALL_KERNELS; ki++)
        for (int di = 0; di < 3; di++) {
            struct rcase rc;
            memset(&rc, 0, sizeof rc);
            rc.c = rcfg_default(all_kernels[ki], dtypes[di]);
            rc.c.Hq = 4;
            rc.c.Hk = 2;
            rc.c.D = 64;
            rc.c.Dv = 64;
            rc.c.alibi = 1;
            rc.c.sinks = di == 1;
            rc.c.seed = 0x8000 + (uint64_t)di;
            rc.gen = di == 2 ? G_BLOCKS : G_RANDOM;
            rc.Tq = 520;
            rc.Tk = 480;
            rc.gp = 30;
            rc.pseed = 0x800 + (uint64_t)di;
            snprintf(name, sizeof name, "range/threads/%s/%s/Tq=520,Tk=480/plan=%s", kname(rc.c.kernel),
                     dtype_name(rc.c.dtype), di == 2 ? "blocks" : "random");
            tcase_add(name, threads_case, &rc, sizeof rc);
        }
}

/* ---- plan reuse across heads, dims and dtypes ------------------------------------------ */

static void reuse_case(const void *arg)
{
    enum cflash_kernel k = *(const enum cflash_kernel *)arg;
    if (!require_kernel(k))
        return;
    struct rcase rc;
    memset(&rc, 0, sizeof rc);
    rc.gen = G_RANDOM;
    rc.Tq = 300;
    rc.Tk = 260;
    rc.gp = 25;
    rc.pseed = 0x4e05e;
    struct rplan p;
    int32_t *seg;
    int64_t nseg;
    char *expect;
    build_case(&rc, &p, &seg, &nseg, &expect);
    struct rcells cl;
    rcells_build(&cl, &p);
    cflash_range_plan_t plan = NULL;
    enum cflash_status st = api_plan(&p, 0, 0, NULL, 0, &plan);
    if (st == CFLASH_STATUS_OK) {
        struct rcfg cs[3];
        cs[0] = rcfg_default(k, CFLASH_DTYPE_F32);
        cs[0].Hq = 2;
        cs[0].Hk = 1;
        cs[1] = rcfg_default(k, CFLASH_DTYPE_BF16);
        cs[1].Hq = 4;
        cs[1].Hk = 4;
        cs[1].D = 64;
        cs[1].Dv = 32;
        cs[1].softcap = 10;
        cs[2] = rcfg_default(k, CFLASH_DTYPE_F16);
        cs[2].Hq = 8;
        cs[2].Hk = 2;
        cs[2].D = 128;
        cs[2].Dv = 128;
        cs[2].alibi = 1;
        for (int i = 0; i < 3 && !tfailed(); i++) {
            cs[i].seed = 0x4e05e + (uint64_t)i;
            struct rctx *x = calloc(1, sizeof *x);
            rctx_setup(x, &cs[i], &p, &cl);
            check_with_plan(x, plan);
            rctx_free(x);
            free(x);
        }
        cflash_range_plan_destroy(plan);
    }
    rcells_free(&cl);
    rplan_free(&p);
    free(seg);
    free(expect);
    CHECK(st == CFLASH_STATUS_OK, "create: %s (%s)", cflash_status_string(st), cflash_last_error());
}


/* ---- 10. masks and biases on plans ----------------------------------------------------- */

static struct rsrc rsrc_rand(struct rng *r, int is_mask)
{
    struct rsrc sp;
    memset(&sp, 0, sizeof sp);
    sp.on = 1;
    sp.layout = (int)rng_int(r, 3);
    sp.hv = (int)rng_int(r, 3);
    sp.storage = (int)rng_int(r, RST_COUNT);
    sp.fill = rng_int(r, 3) == 0 ? RF_EMPTYROWS : RF_KEEP70;
    sp.dtype = dtypes[rng_int(r, 3)];
    if (sp.layout == CFLASH_LAYOUT_DENSE) {
        sp.q1 = rng_int(r, 4) == 0;
        sp.k1 = rng_int(r, 4) == 0;
    }
    if (sp.layout == CFLASH_LAYOUT_QUERY_SIDE && rng_int(r, 2))
        sp.grow = 1 + (int)rng_int(r, 7);
    if (!is_mask)
        sp.sd = rng_int(r, 3) == 0 ? 3.0f : 1.0f;
    return sp;
}

static struct rsrc rsrc_make(int layout, int hv, int storage)
{
    struct rsrc sp;
    memset(&sp, 0, sizeof sp);
    sp.on = 1;
    sp.layout = layout;
    sp.hv = hv;
    sp.storage = storage;
    sp.dtype = CFLASH_DTYPE_F32;
    return sp;
}


/* Regression: rows of a tile's row block that lie past the tile's last column (here: an
 * inverse-causal slice, rows 5..15 see nothing of 5 keys) must not make the key-side bias pass
 * read tile columns that were never filled. A first call over keys ~30000 leaves large key
 * indices in the kernel's tile-column array, so a read of an unfilled column is an
 * out-of-bounds bias read (AddressSanitizer) or a wrong result. */
static void regress_case(const void *arg)
{
    const enum cflash_kernel k = *(const enum cflash_kernel *)arg;
    if (!require_kernel(k))
        return;
    const int D = 16, T1 = 32000;
    struct rng r = {0x5eedull};
    int64_t qs[3] = {16, 1, D}, k1s[3] = {T1, 1, D}, k2s[3] = {5, 1, D}, bs[2] = {5, 1}, ls[2] = {1, 16};
    struct tbuf q, k1, k2, o, oref, l, lref, bias;
    tbuf_make(&q, CFLASH_DTYPE_F32, 3, qs, NULL, 0, -1);
    tbuf_make(&k1, CFLASH_DTYPE_F32, 3, k1s, NULL, 0, -1);
    tbuf_make(&k2, CFLASH_DTYPE_F32, 3, k2s, NULL, 0, -1);
    tbuf_make(&o, CFLASH_DTYPE_F32, 3, qs, NULL, 0, -1);
    tbuf_make(&oref, CFLASH_DTYPE_F32, 3, qs, NULL, 0, -1);
    tbuf_make(&l, CFLASH_DTYPE_F32, 2, ls, NULL, 0, -1);
    tbuf_make(&lref, CFLASH_DTYPE_F32, 2, ls, NULL, 0, -1);
    tbuf_make(&bias, CFLASH_DTYPE_F32, 2, bs, NULL, 0, -1);
    tfill_randn(&q.t, &r, 0, 1);
    tfill_randn(&k2.t, &r, 0, 1);
    tfill_randn(&bias.t, &r, 0, 1);
    struct rplan p1, p2;
    rplan_init(&p1, 16, T1);
    rplan_add(&p1, 0, 16, 30000, T1, CFLASH_RANGE_FULL);
    rplan_init(&p2, 16, 5);
    rplan_add(&p2, 0, 16, 0, 5, CFLASH_RANGE_INV_CAUSAL);
    cflash_range_plan_t a = NULL, b = NULL;
    char msg[256] = "";
    if (api_plan(&p1, 0, 0, NULL, 0, &a) != CFLASH_STATUS_OK || api_plan(&p2, 0, 0, NULL, 0, &b) != CFLASH_STATUS_OK) {
        snprintf(msg, sizeof msg, "plan: %s", cflash_last_error());
        goto done;
    }
    struct cflash_attn_params prm = cflash_attn_params_default();
    prm.kernel = k;
    prm.num_threads = 1;
    enum cflash_status st = cflash_attn_range(&q.t, &k1.t, NULL, a, &o.t, NULL, &prm);
    prm.bias = &bias.t;
    prm.bias_layout = CFLASH_LAYOUT_KEY_SIDE;
    if (st == CFLASH_STATUS_OK)
        st = cflash_attn_range(&q.t, &k2.t, NULL, b, &o.t, &l.t, &prm);
    prm.kernel = CFLASH_KERNEL_REFERENCE;
    if (st == CFLASH_STATUS_OK)
        st = cflash_attn_range(&q.t, &k2.t, NULL, b, &oref.t, &lref.t, &prm);
    if (st != CFLASH_STATUS_OK) {
        snprintf(msg, sizeof msg, "status %s (%s)", cflash_status_string(st), cflash_last_error());
        goto done;
    }
    for (int64_t t = 0; t < 16 && !msg[0]; t++) {
        int64_t li[2] = {0, t};
        const double lv = tget(&l.t, li), lr = tget(&lref.t, li);
        if (t >= 5 ? lv != -INFINITY : !(fabs(lv - lr) <= 1e-4 + 1e-6 * fabs(lr)))
            snprintf(msg, sizeof msg, "row %lld: lse %.9g, reference %.9g", (long long)t, lv, lr);
        for (int64_t d = 0; d < D && !msg[0]; d++) {
            int64_t oi[3] = {t, 0, d};
            const double ov = tget(&o.t, oi), orf = tget(&oref.t, oi);
            if (!(fabs(ov - orf) <= 1e-5))
                snprintf(msg, sizeof msg, "out[%lld,0,%lld] = %.7g, reference %.7g", (long long)t,
                         (long long)d, ov, orf);
        }
    }
done:
    cflash_range_plan_destroy(a);
    cflash_range_plan_destroy(b);
    rplan_free(&p1);
    rplan_free(&p2);
    struct tbuf *all[8] = {&q, &k1, &k2, &o, &oref, &l, &lref, &bias};
    for (int i = 0; i < 8; i++)
        tbuf_free(all[i]);
    CHECK(!msg[0], "%s", msg);
}

#define N_MASK_RANDOM_PER 12
static void register_mask(void)
{
    char name[512];
    for (int ki = 0; ki < N_ALL_KERNELS; ki++) {
        const enum cflash_kernel k = all_kernels[ki];
        /* random plans (all four slice types) x random masks / biases in every layout */
        for (int i = 0; i < N_MASK_RANDOM_PER; i++) {
            const uint64_t seed = 0x3a5cull * (uint64_t)(1 + i + N_MASK_RANDOM_PER * ki) ^ 0x6d61736bull;
            struct rng r = {seed ^ 0x77};
            struct rcase rc = random_case(seed, k, dtypes[i % 3]);
            rc.Tq = 1 + (int)rng_int(&r, 180);
            rc.Tk = 2 + (int)rng_int(&r, 220);
            if (rc.c.D == 128)
                rc.c.D = 64;
            if (rc.c.Dv == 80)
                rc.c.Dv = 40;
            const int which = (int)rng_int(&r, 3); /* mask, bias, both */
            if (which != 1)
                rc.c.m = rsrc_rand(&r, 1);
            if (which != 0)
                rc.c.bi = rsrc_rand(&r, 0);
            add_plan_case("range/mask/random", &rc);
        }
        /* every layout for mask and bias, fixed plans */
        for (int lay = 0; lay < 3; lay++) {
            /* MTP windows with identity V: exact visible sets under plan AND mask */
            struct rcase rc;
            memset(&rc, 0, sizeof rc);
            rc.c = rcfg_default(k, dtypes[lay]);
            rc.c.identity = 1;
            rc.c.Hq = 4;
            rc.c.Hk = 2;
            rc.c.seed = 0x6d00 + (uint64_t)lay;
            rc.gen = G_LIST;
            rc.Tq = rc.Tk = 10;
            rc.n = 3;
            static const int32_t sl[3][5] = {{0, 7, 0, 7, 1}, {7, 10, 0, 6, 0}, {7, 10, 7, 10, 0}};
            memcpy(rc.sl, sl, sizeof sl);
            rc.c.m = rsrc_make(lay, lay, lay == 2 ? RST_TRANSPOSED : RST_CONTIG);
            rc.c.m.fill = RF_EMPTYROWS;
            rc.c.bi = rsrc_make((lay + 1) % 3, 2, RST_PADDED);
            rc.c.bi.dtype = dtypes[(lay + 1) % 3];
            add_plan_case("range/mask/mtp_identity", &rc);
            /* cumulative [9,7,5] with sinks, softcap, alibi and a bias alone */
            memset(&rc, 0, sizeof rc);
            rc.c = rcfg_default(k, dtypes[(lay + 2) % 3]);
            rc.c.Hq = 8;
            rc.c.Hk = 2;
            rc.c.D = rc.c.Dv = 64;
            rc.c.sinks = 1;
            rc.c.softcap = 3;
            rc.c.alibi = 1;
            rc.c.seed = 0x6d10 + (uint64_t)lay;
            rc.gen = G_LIST;
            rc.Tq = rc.Tk = 21;
            rc.n = 3;
            static const int32_t cu[4] = {0, 9, 16, 21};
            for (int b = 0; b < 3; b++) {
                int32_t s5[5] = {cu[b], cu[b + 1], 0, cu[b + 1], 0};
                memcpy(rc.sl[b], s5, sizeof s5);
            }
            rc.c.bi = rsrc_make(lay, 1, RST_NEGKEY);
            rc.c.bi.sd = 3;
            rc.c.bi.dtype = dtypes[lay];
            if (lay == CFLASH_LAYOUT_QUERY_SIDE)
                rc.c.bi.grow = 5;
            add_plan_case("range/mask/cumulative_bias_only", &rc);
            /* mask only, dense broadcast axes and document plans */
            memset(&rc, 0, sizeof rc);
            rc.c = rcfg_default(k, CFLASH_DTYPE_F32);
            rc.c.Hq = 4;
            rc.c.Hk = 1;
            rc.c.seed = 0x6d20 + (uint64_t)lay;
            rc.gen = G_DOCS;
            rc.gp = DOCS_MIXED;
            rc.Tq = 160;
            rc.pseed = 0x6d2000 + (uint64_t)lay;
            rc.c.m = rsrc_make(CFLASH_LAYOUT_DENSE, lay, RST_CONTIG);
            rc.c.m.q1 = lay == 1;
            rc.c.m.k1 = lay == 2;
            add_plan_case("range/mask/docs_dense_mask", &rc);
        }
        snprintf(name, sizeof name,
                 "range/mask/regress/inv_causal_rows_past_the_tile/key_side_bias/%s", kname(k));
        tcase_add(name, regress_case, &all_kernels[ki], sizeof all_kernels[ki]);
        /* identical bytes for 1, 2, 3 threads with a mask and a bias */
        {
            struct rcase rc;
            memset(&rc, 0, sizeof rc);
            rc.c = rcfg_default(k, CFLASH_DTYPE_BF16);
            rc.c.Hq = 4;
            rc.c.Hk = 2;
            rc.c.D = rc.c.Dv = 32;
            rc.c.sinks = 1;
            rc.c.seed = 0x6d30;
            rc.gen = G_RANDOM;
            rc.Tq = 300;
            rc.Tk = 280;
            rc.gp = 20;
            rc.pseed = 0x6d300;
            rc.c.m = rsrc_make(CFLASH_LAYOUT_KEY_SIDE, 2, RST_TRANSPOSED);
            rc.c.bi = rsrc_make(CFLASH_LAYOUT_QUERY_SIDE, 1, RST_CONTIG);
            rc.c.bi.dtype = CFLASH_DTYPE_BF16;
            snprintf(name, sizeof name, "range/mask/threads/%s/bf16/T=300,280/mask=key,bias=query",
                     kname(k));
            tcase_add(name, threads_case, &rc, sizeof rc);
        }
    }
}

void register_range_tests(void)
{
    register_worked();
    register_mtp();
    register_cumulative();
    register_docs();
    register_random();
    register_overlap();
    tcase_add("range/empty/slices_dropped", empty_case, NULL, 0);
    tcase_add("range/packed_sequences", packed_case, NULL, 0);
    static const char *en[5] = {"no_slices", "Tk=0", "Tq=0", "all_empty_with_sinks",
                                "single_cells_at_block_edges"};
    char name[256];
    for (int ki = 0; ki < N_ALL_KERNELS; ki++)
        for (int w = 0; w < 5; w++) {
            struct edge_arg ea = {all_kernels[ki], w};
            snprintf(name, sizeof name, "range/edge/%s/%s", en[w], kname(all_kernels[ki]));
            tcase_add(name, edge_case, &ea, sizeof ea);
        }
    register_misuse();
    register_scale();
    register_threads();
    for (int ki = 0; ki < N_ALL_KERNELS; ki++) {
        snprintf(name, sizeof name, "range/reuse/one_plan_three_configs/%s", kname(all_kernels[ki]));
        tcase_add(name, reuse_case, &all_kernels[ki], sizeof all_kernels[ki]);
    }
    register_mask();
}
