/*
 * bench_cpu_features.c - range plans and key-side masks against our own dense kernel on the same
 * useful FLOPs (PERF.md peer `self_dense`), and decode over a paged KV cache against the same
 * decode over a contiguous cache (peer `self_contiguous`, GB/s of K+V read).
 *
 * Useful FLOPs = 2 * Hq * cells * (D + Dv), cells = visible (row, col) pairs of one head
 * (counted exactly: cflash_range_plan_visible_cells, or rows x kept keys for a key-side mask).
 * The peer is cflash_attn_dense, B = 1, with the same useful FLOPs and mask class: full
 * attention at L = round(sqrt(cells)) for full documents and key masks, causal attention at
 * L (L + 1) / 2 = cells for causal documents. Correctness first: head 0 of every case (a strided view, no
 * copy) is compared with the fp64 reference kernel (fp32: relative L2 <= 1e-5; bf16: relative
 * L2 <= 1e-2, a smoke check; the tests enforce SPEC's half-precision rule). Times are medians
 * of 5 after a warm-up; threads = CFLASH_NUM_THREADS or all cores.
 *
 * usage: bench_cpu_features [--json PATH] [--threads N]
 */
#include "cflash.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double urand(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1p-53;
}

static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* packed [T, H, D] tensor of dtype dt, random in [-1, 1) */
static struct cflash_tensor packed(int64_t T, int64_t H, int64_t D, enum cflash_dtype dt, int fill) {
    struct cflash_tensor t = {0};
    const size_t n = (size_t)(T * H * D), es = dt == CFLASH_DTYPE_F32 ? 4 : 2;
    t.data = malloc(n * es);
    if (!t.data) { fprintf(stderr, "out of memory\n"); exit(2); }
    for (size_t i = 0; fill && i < n; i++) {
        float x = (float)(2.0 * urand() - 1.0);
        if (dt == CFLASH_DTYPE_F32) ((float *)t.data)[i] = x;
        else ((uint16_t *)t.data)[i] = to_bf16(x);
    }
    t.dtype = dt;
    t.ndim = 3;
    t.shape[0] = T; t.shape[1] = H; t.shape[2] = D;
    t.stride[0] = H * D; t.stride[1] = D; t.stride[2] = 1;
    return t;
}

static struct cflash_tensor head0(const struct cflash_tensor *t) {
    struct cflash_tensor v = *t;
    v.shape[1] = 1;
    return v;
}

static struct cflash_tensor i32(int32_t *d, int64_t n, int64_t cols) {
    struct cflash_tensor t = {0};
    t.data = d;
    t.dtype = CFLASH_DTYPE_I32;
    t.ndim = cols ? 2 : 1;
    t.shape[0] = n;
    t.shape[1] = cols;
    t.stride[0] = cols ? cols : 1;
    t.stride[1] = 1;
    return t;
}

static double rel_l2(const struct cflash_tensor *a, const struct cflash_tensor *b) {
    /* a: head 0 of the fast output (strided), b: reference [T, 1, D] fp32 contiguous */
    double num = 0, den = 0;
    for (int64_t t = 0; t < b->shape[0]; t++)
        for (int64_t d = 0; d < b->shape[2]; d++) {
            const int64_t ia = t * a->stride[0] + d;
            float x;
            if (a->dtype == CFLASH_DTYPE_F32) x = ((float *)a->data)[ia];
            else { uint32_t u = (uint32_t)((uint16_t *)a->data)[ia] << 16; memcpy(&x, &u, 4); }
            const double y = ((float *)b->data)[t * b->stride[0] + d];
            num += (x - y) * (x - y);
            den += y * y;
        }
    return sqrt(num / (den > 0 ? den : 1));
}

struct result { char name[160]; double ours, peer, err; int ok; const char *unit, *peer_name; };

#define REPS 5
typedef enum cflash_status (*call_fn)(void *ctx, const struct cflash_attn_params *p,
                                      const struct cflash_tensor *out);

static double time_call(call_fn fn, void *ctx, const struct cflash_attn_params *p,
                        const struct cflash_tensor *out) {
    double t[REPS];
    if (fn(ctx, p, out)) { fprintf(stderr, "call failed: %s\n", cflash_last_error()); exit(1); }
    for (int r = 0; r < REPS; r++) {
        double t0 = now_s();
        fn(ctx, p, out);
        t[r] = now_s() - t0;
    }
    qsort(t, REPS, sizeof t[0], cmp_double);
    return t[REPS / 2];
}

struct range_ctx { struct cflash_tensor q, k, v; cflash_range_plan_t plan; };
static enum cflash_status call_range(void *c, const struct cflash_attn_params *p, const struct cflash_tensor *out) {
    struct range_ctx *x = c;
    return cflash_attn_range(&x->q, &x->k, &x->v, x->plan, out, NULL, p);
}

struct varlen_ctx { struct cflash_tensor q, k, v, cu; int64_t L; };
static enum cflash_status call_varlen(void *c, const struct cflash_attn_params *p, const struct cflash_tensor *out) {
    struct varlen_ctx *x = c;
    return cflash_attn_varlen(&x->q, &x->k, &x->v, &x->cu, &x->cu, x->L, x->L, out, NULL, p);
}

struct dense_ctx { struct cflash_tensor q, k, v; };
static enum cflash_status call_dense(void *c, const struct cflash_attn_params *p, const struct cflash_tensor *out) {
    struct dense_ctx *x = c;
    return cflash_attn_dense(&x->q, &x->k, &x->v, out, NULL, p);
}

/* our dense attention with the same useful FLOPs and the same mask class: full at
 * L = sqrt(cells), or causal at L with L (L + 1) / 2 = cells; GFLOP/s on its useful FLOPs */
static double self_dense(int64_t cells, int64_t H, int64_t D, enum cflash_dtype dt, int threads, int causal) {
    const int64_t L = causal ? (int64_t)llround((sqrt(8.0 * (double)cells + 1.0) - 1.0) / 2.0)
                             : (int64_t)llround(sqrt((double)cells));
    struct dense_ctx x;
    struct cflash_tensor out;
    x.q = packed(L, H, D, dt, 1); x.k = packed(L, H, D, dt, 1); x.v = packed(L, H, D, dt, 1);
    out = packed(L, H, D, dt, 0);
    struct cflash_tensor *ts[4] = {&x.q, &x.k, &x.v, &out};
    for (int i = 0; i < 4; i++) { /* as [1, L, H, D] */
        ts[i]->ndim = 4;
        ts[i]->shape[3] = D; ts[i]->shape[2] = H; ts[i]->shape[1] = L; ts[i]->shape[0] = 1;
        ts[i]->stride[3] = 1; ts[i]->stride[2] = D; ts[i]->stride[1] = H * D; ts[i]->stride[0] = L * H * D;
    }
    struct cflash_attn_params p = cflash_attn_params_default();
    p.num_threads = threads;
    p.causal = causal;
    const double t = time_call(call_dense, &x, &p, &out);
    free(x.q.data); free(x.k.data); free(x.v.data); free(out.data);
    const double dense_cells = causal ? (double)L * (double)(L + 1) / 2.0 : (double)L * (double)L;
    return 4.0 * (double)H * dense_cells * (double)D / t * 1e-9;
}

/* Checks head 0 of `out` against the reference kernel; returns the relative L2 error. */
static double check_head0(call_fn fn, void *ctx, struct cflash_tensor *q, struct cflash_tensor *k,
                          struct cflash_tensor *v, const struct cflash_tensor *out,
                          struct cflash_attn_params p) {
    struct cflash_tensor q0 = head0(q), k0 = head0(k), v0 = head0(v), o0 = head0(out);
    struct cflash_tensor ref = packed(q->shape[0], 1, v->shape[2], CFLASH_DTYPE_F32, 0);
    struct cflash_tensor sq = *q, sk = *k, sv = *v;
    *q = q0; *k = k0; *v = v0;
    p.kernel = CFLASH_KERNEL_REFERENCE;
    if (fn(ctx, &p, &ref)) { fprintf(stderr, "reference failed: %s\n", cflash_last_error()); exit(1); }
    *q = sq; *k = sk; *v = sv;
    const double e = rel_l2(&o0, &ref);
    free(ref.data);
    return e;
}

int main(int argc, char **argv) {
    const char *json = "bench/results/cpu_features.json";
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else { fprintf(stderr, "usage: %s [--json PATH] [--threads N]\n", argv[0]); return 2; }
    }
    if (threads <= 0) threads = cflash_default_num_threads();
    const int64_t H = 16, D = 128;
    struct result res[32];
    int nres = 0;
    printf("useful FLOPs = 2 * Hq * cells * (D + Dv); peer self_dense = our dense full attention at L = sqrt(cells); %d threads\n", threads);

    for (int dti = 0; dti < 2; dti++) {
        const enum cflash_dtype dt = dti ? CFLASH_DTYPE_BF16 : CFLASH_DTYPE_F32;
        /* document masks: 8192 tokens in 16 documents of 512, full or causal per document */
        for (int causal = 0; causal < 2; causal++) {
            const int64_t T = 8192, ndoc = 16;
            int32_t qr[32], kr[32], ty[16];
            for (int d = 0; d < ndoc; d++) {
                qr[2 * d] = kr[2 * d] = (int32_t)(d * (T / ndoc));
                qr[2 * d + 1] = kr[2 * d + 1] = (int32_t)((d + 1) * (T / ndoc));
                ty[d] = causal ? CFLASH_RANGE_CAUSAL : CFLASH_RANGE_FULL;
            }
            struct cflash_tensor tq = i32(qr, ndoc, 2), tk = i32(kr, ndoc, 2), tt = i32(ty, ndoc, 0);
            struct range_ctx x;
            if (cflash_range_plan_create(&x.plan, &tq, &tk, &tt, T, T, NULL)) { fprintf(stderr, "%s\n", cflash_last_error()); return 1; }
            x.q = packed(T, H, D, dt, 1); x.k = packed(T, H, D, dt, 1); x.v = packed(T, H, D, dt, 1);
            struct cflash_tensor out = packed(T, H, D, dt, 0);
            struct cflash_attn_params p = cflash_attn_params_default();
            p.num_threads = threads;
            const int64_t cells = cflash_range_plan_visible_cells(x.plan);
            struct result *r = &res[nres++];
            r->unit = "GFLOP/s";
            r->peer_name = "self_dense";
            const double t = time_call(call_range, &x, &p, &out);
            r->ours = 4.0 * (double)H * (double)cells * (double)D / t * 1e-9;
            r->err = check_head0(call_range, &x, &x.q, &x.k, &x.v, &out, p);
            r->ok = r->err <= (dt == CFLASH_DTYPE_F32 ? 1e-5 : 1e-2);
            r->peer = self_dense(cells, H, D, dt, threads, causal);
            snprintf(r->name, sizeof r->name, "range plan %s document mask 16x512 %s D=128 Hq=16 T=8192 threads=%d",
                     causal ? "causal" : "full", dti ? "bf16" : "fp32", threads);
            printf("%-80s %7.1f GFLOP/s  self_dense %7.1f  ratio %.2f  err %.2e %s\n", r->name, r->ours, r->peer, r->ours / r->peer, r->err, r->ok ? "ok" : "FAIL");
            cflash_range_plan_destroy(x.plan);
            free(x.q.data); free(x.k.data); free(x.v.data); free(out.data);
        }
        /* key-side mask, 70% kept: random keys, and 64-key blocks */
        for (int blocky = 0; blocky < 2; blocky++) {
            const int64_t L = 4096;
            struct varlen_ctx x;
            int32_t cu[2] = {0, (int32_t)L};
            x.cu = i32(cu, 2, 0);
            x.L = L;
            x.q = packed(L, H, D, dt, 1); x.k = packed(L, H, D, dt, 1); x.v = packed(L, H, D, dt, 1);
            struct cflash_tensor out = packed(L, H, D, dt, 0);
            uint8_t *m = malloc((size_t)L);
            int64_t kept = 0;
            for (int64_t j = 0; j < L; j++) {
                m[j] = blocky ? (uint8_t)((j / 64) % 10 < 7) : (uint8_t)(urand() < 0.7);
                kept += m[j];
            }
            struct cflash_tensor mt = {0};
            mt.data = m; mt.dtype = CFLASH_DTYPE_U8; mt.ndim = 2;
            mt.shape[0] = L; mt.shape[1] = 1; mt.stride[0] = 1; mt.stride[1] = 1;
            struct cflash_attn_params p = cflash_attn_params_default();
            p.num_threads = threads;
            p.mask = &mt;
            p.mask_layout = CFLASH_LAYOUT_KEY_SIDE;
            const int64_t cells = L * kept;
            struct result *r = &res[nres++];
            r->unit = "GFLOP/s";
            r->peer_name = "self_dense";
            const double t = time_call(call_varlen, &x, &p, &out);
            r->ours = 4.0 * (double)H * (double)cells * (double)D / t * 1e-9;
            r->err = check_head0(call_varlen, &x, &x.q, &x.k, &x.v, &out, p);
            r->ok = r->err <= (dt == CFLASH_DTYPE_F32 ? 1e-5 : 1e-2);
            r->peer = self_dense(cells, H, D, dt, threads, 0);
            snprintf(r->name, sizeof r->name, "key-side mask 70%% kept (%s) %s D=128 Hq=16 L=4096 threads=%d",
                     blocky ? "64-key blocks" : "random keys", dti ? "bf16" : "fp32", threads);
            printf("%-80s %7.1f GFLOP/s  self_dense %7.1f  ratio %.2f  err %.2e %s\n", r->name, r->ours, r->peer, r->ours / r->peer, r->err, r->ok ? "ok" : "FAIL");
            free(m);
            free(x.q.data); free(x.k.data); free(x.v.data); free(out.data);
        }
    }

    /* decode (Lq = 1) over 32768 cached keys, 32:8 heads: a paged cache (pages shuffled) vs a
     * contiguous one holding the same keys. GB/s = K+V bytes / time. */
    for (int dti = 0; dti < 2; dti++) {
        const enum cflash_dtype dt = dti ? CFLASH_DTYPE_BF16 : CFLASH_DTYPE_F32;
        const int64_t Lk = 32768, Hq = 32, Hk = 8, es = dti ? 2 : 4;
        struct cflash_tensor q = packed(1, Hq, D, dt, 1), out = packed(1, Hq, D, dt, 0);
        q.ndim = out.ndim = 4; /* [1, 1, Hq, D] */
        q.shape[3] = out.shape[3] = D; q.shape[2] = out.shape[2] = Hq; q.shape[1] = out.shape[1] = 1; q.shape[0] = out.shape[0] = 1;
        q.stride[3] = out.stride[3] = 1; q.stride[2] = out.stride[2] = D; q.stride[1] = out.stride[1] = Hq * D; q.stride[0] = out.stride[0] = Hq * D;
        struct cflash_tensor kc = packed(Lk, Hk, D, dt, 1), vc = packed(Lk, Hk, D, dt, 1);
        int32_t seqlen = (int32_t)Lk;
        struct cflash_tensor sl = i32(&seqlen, 1, 0);
        struct cflash_tensor kc4 = kc, vc4 = vc;
        kc4.ndim = vc4.ndim = 4;
        kc4.shape[0] = vc4.shape[0] = 1; kc4.shape[1] = vc4.shape[1] = Lk; kc4.shape[2] = vc4.shape[2] = Hk; kc4.shape[3] = vc4.shape[3] = D;
        kc4.stride[3] = vc4.stride[3] = 1; kc4.stride[2] = vc4.stride[2] = D; kc4.stride[1] = vc4.stride[1] = Hk * D; kc4.stride[0] = vc4.stride[0] = Lk * Hk * D;
        struct cflash_kvcache contiguous = {&kc4, &vc4, &sl, NULL, NULL, NULL, NULL, 0};
        struct cflash_attn_params p = cflash_attn_params_default();
        p.num_threads = threads;
        const double kv_bytes = 2.0 * (double)Lk * (double)Hk * (double)D * (double)es;
        double tc[REPS], tmed;
        for (int r = -1; r < REPS; r++) {
            const double t0 = now_s();
            if (cflash_attn_kvcache(&q, &contiguous, NULL, NULL, &out, NULL, &p)) { fprintf(stderr, "%s\n", cflash_last_error()); return 1; }
            if (r >= 0) tc[r] = now_s() - t0;
        }
        qsort(tc, REPS, sizeof tc[0], cmp_double);
        tmed = tc[REPS / 2];
        const double contig_gbs = kv_bytes / tmed * 1e-9;
        struct cflash_tensor ref_out = packed(1, Hq, D, CFLASH_DTYPE_F32, 0);
        ref_out.ndim = 4; ref_out.shape[3] = D; ref_out.shape[2] = Hq; ref_out.shape[1] = 1; ref_out.shape[0] = 1;
        ref_out.stride[3] = 1; ref_out.stride[2] = D; ref_out.stride[1] = Hq * D; ref_out.stride[0] = Hq * D;
        struct cflash_attn_params pr = p;
        pr.kernel = CFLASH_KERNEL_REFERENCE;
        if (cflash_attn_kvcache(&q, &contiguous, NULL, NULL, &ref_out, NULL, &pr)) { fprintf(stderr, "%s\n", cflash_last_error()); return 1; }
        const int64_t page_sizes[3] = {1, 16, 256};
        for (int pi = 0; pi < 3; pi++) {
            const int64_t ps = page_sizes[pi], np = Lk / ps;
            /* the same keys in pages, the pages in shuffled order */
            int32_t *tab = malloc(sizeof *tab * (size_t)np), *perm = malloc(sizeof *perm * (size_t)np);
            for (int64_t i = 0; i < np; i++) perm[i] = (int32_t)i;
            for (int64_t i = np - 1; i > 0; i--) { int64_t j = (int64_t)(urand() * (double)(i + 1)); int32_t x = perm[i]; perm[i] = perm[j]; perm[j] = x; }
            struct cflash_tensor kp = packed(Lk, Hk, D, dt, 0), vp = packed(Lk, Hk, D, dt, 0);
            for (int64_t lp = 0; lp < np; lp++) { /* logical page lp -> physical page perm[lp] */
                tab[lp] = perm[lp];
                memcpy((char *)kp.data + (size_t)(perm[lp] * ps * Hk * D * es), (char *)kc.data + (size_t)(lp * ps * Hk * D * es), (size_t)(ps * Hk * D * es));
                memcpy((char *)vp.data + (size_t)(perm[lp] * ps * Hk * D * es), (char *)vc.data + (size_t)(lp * ps * Hk * D * es), (size_t)(ps * Hk * D * es));
            }
            struct cflash_tensor kp4 = kp, vp4 = vp, bt = i32(tab, 1, np);
            kp4.ndim = vp4.ndim = 4;
            kp4.shape[0] = vp4.shape[0] = np; kp4.shape[1] = vp4.shape[1] = ps; kp4.shape[2] = vp4.shape[2] = Hk; kp4.shape[3] = vp4.shape[3] = D;
            kp4.stride[3] = vp4.stride[3] = 1; kp4.stride[2] = vp4.stride[2] = D; kp4.stride[1] = vp4.stride[1] = Hk * D; kp4.stride[0] = vp4.stride[0] = ps * Hk * D;
            struct cflash_kvcache paged = {&kp4, &vp4, &sl, NULL, &bt, NULL, NULL, 0};
            double tp[REPS];
            for (int r = -1; r < REPS; r++) {
                const double t0 = now_s();
                if (cflash_attn_kvcache(&q, &paged, NULL, NULL, &out, NULL, &p)) { fprintf(stderr, "%s\n", cflash_last_error()); return 1; }
                if (r >= 0) tp[r] = now_s() - t0;
            }
            qsort(tp, REPS, sizeof tp[0], cmp_double);
            struct result *r = &res[nres++];
            r->unit = "GB/s";
            r->peer_name = "self_contiguous";
            r->ours = kv_bytes / tp[REPS / 2] * 1e-9;
            r->peer = contig_gbs;
            { /* the last paged output against the reference, relative L2 over all Hq x D */
                double num = 0, den = 0;
                for (int64_t i = 0; i < Hq * D; i++) {
                    float x;
                    if (dt == CFLASH_DTYPE_F32) x = ((float *)out.data)[i];
                    else { uint32_t u = (uint32_t)((uint16_t *)out.data)[i] << 16; memcpy(&x, &u, 4); }
                    const double y = ((float *)ref_out.data)[i];
                    num += (x - y) * (x - y);
                    den += y * y;
                }
                r->err = sqrt(num / den);
            }
            r->ok = r->err <= (dt == CFLASH_DTYPE_F32 ? 1e-5 : 1e-2);
            snprintf(r->name, sizeof r->name, "decode paged page_size=%lld %s D=128 Hq=32 Hk=8 Lk=32768 threads=%d",
                     (long long)ps, dti ? "bf16" : "fp32", threads);
            printf("%-80s %7.2f GB/s     contiguous %7.2f  ratio %.2f  err %.2e %s\n", r->name, r->ours, r->peer, r->ours / r->peer, r->err, r->ok ? "ok" : "FAIL");
            free(tab); free(perm); free(kp.data); free(vp.data);
        }
        free(q.data); free(out.data); free(kc.data); free(vc.data); free(ref_out.data);
    }

    FILE *f = fopen(json, "w");
    if (!f) { fprintf(stderr, "cannot write %s\n", json); return 1; }
    char date[32];
    time_t tt = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d", gmtime(&tt));
    fprintf(f, "{\"device\": \"CPU (%d threads)\", \"date\": \"%s\",\n \"records\": [\n", threads, date);
    int fails = 0;
    for (int i = 0; i < nres; i++) {
        fails += !res[i].ok;
        fprintf(f, "  {\"case\": \"%s\", \"unit\": \"%s\", \"ours\": %.2f, \"peer\": \"%s\", \"peer_value\": %.2f, \"ratio\": %.3f, \"correct\": %s, \"max_err\": %.3g}%s\n",
                res[i].name, res[i].unit, res[i].ours, res[i].peer_name, res[i].peer, res[i].ours / res[i].peer, res[i].ok ? "true" : "false", res[i].err, i + 1 < nres ? "," : "");
    }
    fprintf(f, " ]}\n");
    fclose(f);
    printf("wrote %d records to %s\n", nres, json);
    return fails ? 1 : 0;
}
