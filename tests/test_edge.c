/*
 * test_edge.c - edge cases: empty rows never NaN (out exactly 0, lse -inf, or exactly the
 * sink logit when a sink is present), rows emptied at the top and at the bottom of the
 * score matrix, large score magnitudes (the online max must avoid overflow), zero batch
 * strides on k / v, 64-bit element offsets (views whose offsets pass 2^31 elements, backed
 * by a sparse mapping), V := K given as NULL vs as k itself, AUTO vs the kernel it picks,
 * inputs left unchanged, and varlen with zero sequences.
 */
#define _GNU_SOURCE
#include "attn_common.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static void run_case(const void *arg) { attn_check_case((const struct attn_cfg *)arg); }

/* ---- empty rows ------------------------------------------------------------------------ */

struct empty_arg {
    enum cflash_kernel kernel;
    enum cflash_dtype dt;
    int sinks;
    int shape; /* 0: causal br Lq=5 Lk=2 (top rows); 1: window (0,0) top-left Lq=6 Lk=2 (bottom
                * rows); 2: dense Lk=0; 3: varlen with Lk_b = 0 sequences */
};

static void empty_rows_case(const void *arg)
{
    const struct empty_arg *a = arg;
    if (!require_kernel(a->kernel))
        return;
    struct attn_cfg c = cfg_default();
    c.kernel = a->kernel;
    c.dtype = a->dt;
    c.sinks = a->sinks;
    c.Hq = 4;
    c.Hk = 2;
    c.D = c.Dv = 32;
    c.B = 2;
    c.alibi = 1;
    c.softcap = 20;
    switch (a->shape) {
    case 0:
        c.Lq = 5;
        c.Lk = 2;
        c.causal = 1;
        break;
    case 1:
        c.Lq = 6;
        c.Lk = 2;
        c.align = CFLASH_ALIGN_TOP_LEFT;
        c.wl = 0;
        c.wr = 0;
        break;
    case 2:
        c.Lq = 3;
        c.Lk = 0;
        break;
    default: {
        c.varlen = 1;
        c.B = 4;
        int lq[4] = {3, 2, 0, 4}, lk[4] = {0, 5, 3, 0};
        memcpy(c.lq, lq, sizeof lq);
        memcpy(c.lk, lk, sizeof lk);
        break;
    }
    }
    /* attn_check_case verifies empty rows exactly: out == 0, lse == -inf or == the sink */
    attn_check_case(&c);
    if (tfailed())
        return;
    /* and directly: every row of this kernel's output is empty or finite; no NaN anywhere */
    struct attn_setup s;
    attn_setup(&s, &c);
    struct tbuf out, lse;
    attn_make_out(&s, &out, c.dtype, OUT_CONTIG);
    attn_make_lse(&s, &lse, LSE_CONTIG);
    enum cflash_status st = attn_call(&s, c.kernel, 0, &out.t, &lse.t);
    int64_t empty = 0, bad = 0;
    char first[256] = "";
    for (int64_t t = 0; t < s.Tq; t++)
        for (int64_t h = 0; h < s.Hq; h++) {
            int64_t sh[1] = {h};
            if (attn_visible_count(&s, t) == 0) {
                empty++;
                double l = attn_lse_at(&s, &lse.t, t, h);
                double want = c.sinks ? tget(&s.sinks.t, sh) : -INFINITY;
                if (l != want) {
                    if (!bad)
                        snprintf(first, sizeof first,
                                 "t=%lld h=%lld: lse = %.9g, want exactly %.9g (the sink logit)",
                                 (long long)t, (long long)h, l, want);
                    bad++;
                }
                for (int64_t d = 0; d < s.Dv; d++)
                    if (attn_out_at(&s, &out.t, t, h, d) != 0) {
                        if (!bad)
                            snprintf(first, sizeof first, "t=%lld h=%lld: out[%lld] = %g, want 0",
                                     (long long)t, (long long)h, (long long)d,
                                     attn_out_at(&s, &out.t, t, h, d));
                        bad++;
                    }
            }
        }
    tbuf_free(&out);
    tbuf_free(&lse);
    attn_free(&s);
    CHECK(st == CFLASH_STATUS_OK, "status %s", cflash_status_string(st));
    CHECK(empty > 0, "test setup: no empty row");
    CHECK(bad == 0, "%lld wrong values in empty rows; first: %s", (long long)bad, first);
}

/* ---- 64-bit offsets ------------------------------------------------------------------- */

struct big {
    struct cflash_tensor t;
    void *map;
    size_t bytes;
};

/* A view with the given strides over a sparse anonymous mapping (only touched pages are
 * backed). Returns 0 if the mapping is refused. */
static int big_make(struct big *b, enum cflash_dtype dt, int ndim, const int64_t *shape,
                    const int64_t *stride)
{
    memset(b, 0, sizeof *b);
    int64_t hi = 0;
    for (int i = 0; i < ndim; i++)
        hi += (shape[i] - 1) * stride[i];
    b->bytes = (size_t)(hi + 1) * dtype_size(dt);
    b->map = mmap(NULL, b->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                  -1, 0);
    if (b->map == MAP_FAILED) {
        b->map = NULL;
        return 0;
    }
    b->t.data = b->map;
    b->t.dtype = dt;
    b->t.ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        b->t.shape[i] = shape[i];
        b->t.stride[i] = stride[i];
    }
    return 1;
}

static void big_free(struct big *b)
{
    if (b->map)
        munmap(b->map, b->bytes);
    b->map = NULL;
}

static void copy_into(const struct cflash_tensor *dst, const struct cflash_tensor *src)
{
    int64_t n = tnumel(src), idx[4];
    for (int64_t i = 0; i < n; i++) {
        int64_t r = i;
        for (int d = src->ndim - 1; d >= 0; d--) {
            idx[d] = r % src->shape[d];
            r /= src->shape[d];
        }
        tset(dst, idx, tget(src, idx));
    }
}

static void offsets64_case(const void *arg)
{
    enum cflash_kernel k = *(const enum cflash_kernel *)arg;
    if (!require_kernel(k))
        return;
    /* the compact problem */
    struct attn_cfg c = cfg_default();
    c.kernel = k;
    c.B = 2;
    c.Lq = 3;
    c.Lk = 5;
    c.Hq = 2;
    c.Hk = 1;
    c.D = c.Dv = 16;
    c.causal = 1;
    struct attn_setup s;
    attn_setup(&s, &c);
    struct tbuf oref, lref;
    attn_make_out(&s, &oref, CFLASH_DTYPE_F32, OUT_CONTIG);
    attn_make_lse(&s, &lref, LSE_CONTIG);
    enum cflash_status st = attn_call(&s, k, 1, &oref.t, &lref.t);
    /* the same data at offsets past 2^31 elements: batch strides of 2^31 + small */
    const int64_t G = (int64_t)1 << 31;
    int64_t qs[4] = {2, 3, 2, 16}, qst[4] = {G + 7, 2 * 16, 16, 1};
    int64_t ks[4] = {2, 5, 1, 16}, kst[4] = {G + 64, 16, 16, 1};
    int64_t os[4] = {2, 3, 2, 16}, ost[4] = {G + 3 * 2 * 16, 2 * 16, 16, 1};
    int64_t ls[3] = {2, 2, 3}, lst[3] = {G + 1, 3, 1};
    struct big q, kk, v, o, l;
    int ok = st == CFLASH_STATUS_OK;
    char msg[512] = "";
    if (!ok)
        snprintf(msg, sizeof msg, "compact call: %s", cflash_status_string(st));
    int mapped = big_make(&q, CFLASH_DTYPE_F32, 4, qs, qst);
    mapped &= big_make(&kk, CFLASH_DTYPE_F32, 4, ks, kst);
    mapped &= big_make(&v, CFLASH_DTYPE_F32, 4, ks, kst);
    mapped &= big_make(&o, CFLASH_DTYPE_F32, 4, os, ost);
    mapped &= big_make(&l, CFLASH_DTYPE_F32, 3, ls, lst);
    if (ok && mapped) {
        copy_into(&q.t, &s.q.t);
        copy_into(&kk.t, &s.k.t);
        copy_into(&v.t, &s.v.t);
        struct cflash_attn_params p = s.params;
        p.kernel = k;
        p.num_threads = 1;
        st = cflash_attn_dense(&q.t, &kk.t, &v.t, &o.t, &l.t, &p);
        if (st != CFLASH_STATUS_OK) {
            snprintf(msg, sizeof msg, "64-bit offset call: %s (%s)", cflash_status_string(st),
                     cflash_last_error());
        } else {
            for (int64_t t = 0; !msg[0] && t < s.Tq; t++)
                for (int64_t h = 0; !msg[0] && h < s.Hq; h++) {
                    double gl = attn_lse_at(&s, &l.t, t, h), wl = attn_lse_at(&s, &lref.t, t, h);
                    if (!(gl == wl || fabs(gl - wl) <= 1e-5))
                        snprintf(msg, sizeof msg, "lse[t=%lld,h=%lld] = %g, compact call %g",
                                 (long long)t, (long long)h, gl, wl);
                    for (int64_t d = 0; !msg[0] && d < s.Dv; d++) {
                        double g = attn_out_at(&s, &o.t, t, h, d), w = attn_out_at(&s, &oref.t, t, h, d);
                        if (!(fabs(g - w) <= 1e-5 * (1 + fabs(w))))
                            snprintf(msg, sizeof msg,
                                     "out[t=%lld,h=%lld,d=%lld] = %g, compact call %g",
                                     (long long)t, (long long)h, (long long)d, g, w);
                    }
                }
        }
    }
    big_free(&q);
    big_free(&kk);
    big_free(&v);
    big_free(&o);
    big_free(&l);
    tbuf_free(&oref);
    tbuf_free(&lref);
    attn_free(&s);
    if (ok && !mapped) {
        tskip("could not map a sparse 8 GiB region");
        return;
    }
    CHECK(!msg[0], "%s", msg);
}

/* ---- bitwise equalities ---------------------------------------------------------------- */

/* V := K three ways (v = NULL, v = k, v = a view of k with the full D) gives identical bytes;
 * AUTO gives the bytes of the kernel it resolves to. */
static void same_bytes_case(const void *arg)
{
    enum cflash_kernel k = *(const enum cflash_kernel *)arg;
    if (!require_kernel(k))
        return;
    struct attn_cfg c = cfg_default();
    c.kernel = k;
    c.dtype = CFLASH_DTYPE_BF16;
    c.B = 2;
    c.Lq = 17;
    c.Lk = 29;
    c.Hq = 4;
    c.Hk = 1;
    c.D = c.Dv = 64;
    c.vmode = V_NULL;
    c.causal = 1;
    struct attn_setup s;
    attn_setup(&s, &c);
    struct tbuf o[3], l[3];
    for (int i = 0; i < 3; i++) {
        attn_make_out(&s, &o[i], c.dtype, OUT_CONTIG);
        attn_make_lse(&s, &l[i], LSE_CONTIG);
    }
    struct cflash_attn_params p = s.params;
    p.kernel = k;
    enum cflash_status st0 = cflash_attn_dense(&s.q.t, &s.k.t, NULL, &o[0].t, &l[0].t, &p);
    enum cflash_status st1 = cflash_attn_dense(&s.q.t, &s.k.t, &s.k.t, &o[1].t, &l[1].t, &p);
    int same01 = memcmp(o[0].base, o[1].base, o[0].bytes) == 0 && memcmp(l[0].base, l[1].base, l[0].bytes) == 0;
    /* AUTO against the kernel it picks (only meaningful for that kernel) */
    int same_auto = 1;
    enum cflash_status st2 = CFLASH_STATUS_OK;
    if (k == cflash_kernel_auto()) {
        p.kernel = CFLASH_KERNEL_AUTO;
        st2 = cflash_attn_dense(&s.q.t, &s.k.t, NULL, &o[2].t, &l[2].t, &p);
        same_auto = memcmp(o[0].base, o[2].base, o[0].bytes) == 0 &&
                    memcmp(l[0].base, l[2].base, l[0].bytes) == 0;
    }
    for (int i = 0; i < 3; i++) {
        tbuf_free(&o[i]);
        tbuf_free(&l[i]);
    }
    attn_free(&s);
    CHECK(st0 == CFLASH_STATUS_OK && st1 == CFLASH_STATUS_OK && st2 == CFLASH_STATUS_OK,
          "status %s / %s / %s", cflash_status_string(st0), cflash_status_string(st1),
          cflash_status_string(st2));
    CHECK(same01, "v=NULL and v=k give different bytes");
    CHECK(same_auto, "AUTO and the kernel it resolves to (%s) give different bytes", kname(k));
}

/* The call never writes its inputs. */
static void inputs_unchanged_case(const void *arg)
{
    enum cflash_kernel k = *(const enum cflash_kernel *)arg;
    if (!require_kernel(k))
        return;
    struct attn_cfg c = cfg_default();
    c.kernel = k;
    c.dtype = CFLASH_DTYPE_F16;
    c.varlen = 1;
    c.B = 3;
    int lq[3] = {4, 0, 9}, lk[3] = {7, 2, 9};
    memcpy(c.lq, lq, sizeof lq);
    memcpy(c.lk, lk, sizeof lk);
    c.Hq = 6;
    c.Hk = 3;
    c.D = 40;
    c.Dv = 24;
    c.alibi = 2;
    c.sinks = 1;
    c.causal = 1;
    c.layout = LAYOUT_PADDED;
    struct attn_setup s;
    attn_setup(&s, &c);
    struct tbuf *in[7] = {&s.q, &s.k, &s.v, &s.cuq, &s.cuk, &s.alibi, &s.sinks};
    unsigned char *copy[7];
    for (int i = 0; i < 7; i++) {
        copy[i] = malloc(in[i]->bytes + 1);
        memcpy(copy[i], in[i]->base, in[i]->bytes);
    }
    struct tbuf out, lse;
    attn_make_out(&s, &out, CFLASH_DTYPE_F32, OUT_CONTIG);
    attn_make_lse(&s, &lse, LSE_CONTIG);
    enum cflash_status st = attn_call(&s, k, 2, &out.t, &lse.t);
    int changed = -1;
    for (int i = 0; i < 7; i++)
        if (memcmp(copy[i], in[i]->base, in[i]->bytes) != 0 && changed < 0)
            changed = i;
    for (int i = 0; i < 7; i++)
        free(copy[i]);
    tbuf_free(&out);
    tbuf_free(&lse);
    attn_free(&s);
    static const char *names[7] = {"q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "alibi_slopes", "sinks"};
    CHECK(st == CFLASH_STATUS_OK, "status %s", cflash_status_string(st));
    CHECK(changed < 0, "input %s was modified", names[changed]);
}

/* Varlen with B = 0 (cu_seqlens = [0]) and every sequence of length 0. */
static void varlen_nothing_case(const void *arg)
{
    enum cflash_kernel k = *(const enum cflash_kernel *)arg;
    if (!require_kernel(k))
        return;
    int32_t cu0[1] = {0}, cu2[3] = {0, 0, 0};
    int64_t s1[1] = {1}, s3[1] = {3}, q3[3] = {0, 2, 8}, o3[3] = {0, 2, 8}, l2[2] = {2, 0};
    struct cflash_tensor q = tdesc(NULL, CFLASH_DTYPE_F32, 3, q3), kk = tdesc(NULL, CFLASH_DTYPE_F32, 3, q3),
                         o = tdesc(NULL, CFLASH_DTYPE_F32, 3, o3), l = tdesc(NULL, CFLASH_DTYPE_F32, 2, l2);
    struct cflash_tensor c0 = tdesc(cu0, CFLASH_DTYPE_I32, 1, s1), c2 = tdesc(cu2, CFLASH_DTYPE_I32, 1, s3);
    struct cflash_attn_params p = cflash_attn_params_default();
    p.kernel = k;
    p.causal = 1;
    CHECK_STATUS(cflash_attn_varlen(&q, &kk, NULL, &c0, &c0, -1, -1, &o, &l, &p), CFLASH_STATUS_OK);
    CHECK_STATUS(cflash_attn_varlen(&q, &kk, NULL, &c2, &c2, 0, 0, &o, &l, &p), CFLASH_STATUS_OK);
    /* dense with B = 0 and Lq = 0 likewise */
    int64_t dq[4] = {0, 4, 2, 8}, dl[3] = {0, 2, 4};
    struct cflash_tensor dqt = tdesc(NULL, CFLASH_DTYPE_F32, 4, dq), dlt = tdesc(NULL, CFLASH_DTYPE_F32, 3, dl);
    CHECK_STATUS(cflash_attn_dense(&dqt, &dqt, NULL, &dqt, &dlt, &p), CFLASH_STATUS_OK);
}

void register_edge_tests(void)
{
    char name[512];
    static const enum cflash_dtype dts[3] = {CFLASH_DTYPE_F32, CFLASH_DTYPE_F16, CFLASH_DTYPE_BF16};
    static const char *shapes[4] = {"causal_br/Lq=5,Lk=2", "window=(0,0)/align=tl/Lq=6,Lk=2",
                                    "Lk=0", "varlen/Lk=[0,5,3,0]"};
    for (int k = 0; k < N_ALL_KERNELS; k++) {
        for (int sh = 0; sh < 4; sh++)
            for (int di = 0; di < 3; di++)
                for (int sk = 0; sk < 2; sk++) {
                    struct empty_arg a = {all_kernels[k], dts[di], sk, sh};
                    snprintf(name, sizeof name, "edge/empty_rows/%s/%s/%s%s", kname(a.kernel),
                             dtype_name(a.dt), shapes[sh], sk ? "/sinks" : "");
                    tcase_add(name, empty_rows_case, &a, sizeof a);
                }
        /* large scores: the running max must keep exp() in range */
        for (int di = 0; di < 3; di++) {
            struct attn_cfg c = cfg_default();
            c.kernel = all_kernels[k];
            c.dtype = dts[di];
            c.B = 1;
            c.Lq = 33;
            c.Lk = 70;
            c.Hq = 2;
            c.Hk = 2;
            c.D = c.Dv = 64;
            c.scale = 1.0f;
            c.qk_sd = 3.0f;
            cfg_name(name, sizeof name, "edge/large_scores", &c);
            tcase_add(name, run_case, &c, sizeof c);
            c.softcap = 50;
            c.alibi = 1;
            c.causal = 1;
            cfg_name(name, sizeof name, "edge/large_scores", &c);
            tcase_add(name, run_case, &c, sizeof c);
        }
        /* zero batch stride on k and v */
        for (int di = 0; di < 3; di += 2) {
            struct attn_cfg c = cfg_default();
            c.kernel = all_kernels[k];
            c.dtype = dts[di];
            c.B = 3;
            c.Lq = 9;
            c.Lk = 21;
            c.Hq = 4;
            c.Hk = 2;
            c.D = 32;
            c.Dv = 16;
            c.kv_bcast = 1;
            c.causal = 1;
            c.alibi = 2;
            cfg_name(name, sizeof name, "edge", &c);
            tcase_add(name, run_case, &c, sizeof c);
        }
        /* window bounds near INT64_MAX (valid: anything >= -1) must not overflow */
        {
            static const int64_t big[][2] = {{INT64_MAX, INT64_MAX}, {INT64_MAX, 0},
                                             {(int64_t)1 << 62, -1}, {0, INT64_MAX}};
            for (int w = 0; w < 4; w++)
                for (int li = 0; li < 2; li++) {
                    struct attn_cfg c = cfg_default();
                    c.kernel = all_kernels[k];
                    c.B = 2;
                    c.Lq = li ? 21 : 7;
                    c.Lk = li ? 6 : 30;
                    c.Hq = 2;
                    c.Hk = 1;
                    c.D = c.Dv = 16;
                    c.wl = big[w][0];
                    c.wr = big[w][1];
                    c.causal = w == 3;
                    c.alibi = 1;
                    c.align = li ? CFLASH_ALIGN_BOTTOM_RIGHT : CFLASH_ALIGN_TOP_LEFT;
                    cfg_name(name, sizeof name, "edge/huge_window", &c);
                    tcase_add(name, run_case, &c, sizeof c);
                }
        }
        /* a max_seqlen hint far above the real lengths is valid and only a hint */
        {
            struct attn_cfg c = cfg_default();
            c.kernel = all_kernels[k];
            c.dtype = CFLASH_DTYPE_BF16;
            c.varlen = 1;
            c.B = 2;
            int lq[2] = {5, 9}, lk[2] = {12, 3};
            memcpy(c.lq, lq, sizeof lq);
            memcpy(c.lk, lk, sizeof lk);
            c.Hq = 4;
            c.Hk = 2;
            c.D = c.Dv = 32;
            c.causal = 1;
            c.hint = HINT_HUGE;
            cfg_name(name, sizeof name, "edge/huge_hint", &c);
            tcase_add(name, run_case, &c, sizeof c);
        }
        snprintf(name, sizeof name, "edge/offsets64/%s/batch_stride=2^31+", kname(all_kernels[k]));
        tcase_add(name, offsets64_case, &all_kernels[k], sizeof all_kernels[k]);
        snprintf(name, sizeof name, "edge/same_bytes/%s/v=null,v=k,auto", kname(all_kernels[k]));
        tcase_add(name, same_bytes_case, &all_kernels[k], sizeof all_kernels[k]);
        snprintf(name, sizeof name, "edge/inputs_unchanged/%s", kname(all_kernels[k]));
        tcase_add(name, inputs_unchanged_case, &all_kernels[k], sizeof all_kernels[k]);
        snprintf(name, sizeof name, "edge/zero_sequences/%s/varlen_B=0,dense_B=0", kname(all_kernels[k]));
        tcase_add(name, varlen_nothing_case, &all_kernels[k], sizeof all_kernels[k]);
    }
}
