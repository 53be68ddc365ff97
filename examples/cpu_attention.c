/*
 * cpu_attention.c - the cflash example: one realistic causal GQA attention on the CPU with the
 * fast default kernel (CFLASH_KERNEL_AUTO), checked against the library's fp64 reference kernel
 * (CFLASH_KERNEL_REFERENCE) and against an independent fp64 loop written here, then timed.
 *
 * What it is not: a benchmark (bench/bench_cpu.c is; it has peers, more shapes and JSON).
 *
 * Problem: B=1, Hq=16, Hk=4 (GQA 4:1), L=2048 (Lq = Lk), D=Dv=128, causal, in fp32 and bf16.
 * The reference is naive fp64 and O(L^2) per head, so it is run on slices of query rows: rows
 * [r0, r0 + n) against keys [0, r0 + n). With bottom-right causal alignment the slice's diagonal
 * offset Lk' - Lq' = r0 puts the mask exactly where the full problem has it (key j <= row i),
 * so the sliced reference computes exactly those rows of the full output.
 *
 * Tolerances (SPEC.md section 1): fp32, ||o - o_ref|| / ||o_ref|| <= 1e-5 over the checked rows;
 * bf16, max |o - o_ref| <= 2 * e_naive + 1e-3 where e_naive is the error of a naive bf16
 * computation of the same rows (scores and probabilities rounded to bf16, fp32 accumulation;
 * the FlashAttention test rule).
 *
 * Usage: cflash_example [--L N] [--reps N] [--threads N]. Exit status 0 iff every check passes.
 */
#include "cflash.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

#define B_ 1
#define HQ 16
#define HK 4
#define HEAD_DIM 128
#define CHECK_BLOCKS 6   /* row blocks checked against the reference */
#define CHECK_ROWS 8     /* query rows per block (all heads) */
#define F32_REL_TOL 1e-5 /* SPEC.md 1: fp32 relative L2 error bound */
#define LOWP_ABS_TOL 1e-3
#define REF_SELF_TOL 1e-6 /* library fp64 reference vs this file's fp64 loop (relative L2) */

/* ---- small helpers: bf16 rounding, random normals, wall clock ---- */

static float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_uniform(void) { return ((double)(rng_next() >> 11) + 0.5) * 0x1p-53; }

static float rng_normal(void) { /* Box-Muller */
    return (float)(sqrt(-2.0 * log(rng_uniform())) * cos(2.0 * M_PI * rng_uniform()));
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* A [B, L, H, D] contiguous ("bshd") tensor view starting `row0` tokens in. */
static struct cflash_tensor bshd(void *base, enum cflash_dtype dt, int64_t L_total, int64_t row0,
                                 int64_t L, int64_t H, int64_t D) {
    size_t es = dt == CFLASH_DTYPE_F32 ? 4 : 2;
    struct cflash_tensor t;
    memset(&t, 0, sizeof t);
    t.data = (char *)base + (size_t)(row0 * H * D) * es;
    t.dtype = dt;
    t.ndim = 4;
    t.shape[0] = B_; t.shape[1] = L; t.shape[2] = H; t.shape[3] = D;
    t.stride[0] = L_total * H * D; t.stride[1] = H * D; t.stride[2] = D; t.stride[3] = 1;
    t.device = CFLASH_DEVICE_CPU;
    return t;
}

/* ---- the check: rows of the fast output against the reference kernel ---- */

struct inputs {
    enum cflash_dtype dt;
    int64_t L;
    void *q, *k, *v;    /* storage in dt */
    float *qf, *kf, *vf; /* the same values in fp32 (exact upcast) */
};

static float elem(const void *base, enum cflash_dtype dt, size_t i) {
    return dt == CFLASH_DTYPE_F32 ? ((const float *)base)[i] : bf16_to_f32(((const uint16_t *)base)[i]);
}

/* This file's own fp64 loop for row i, head h (independent of the library) and, for bf16, the
 * naive low-precision loop that defines e_naive. Writes HEAD_DIM values to ref64 / naive. */
static void row_by_hand(const struct inputs *in, int64_t i, int64_t h, double scale, double *ref64,
                        float *naive, double *sbuf, float *sbuf32) {
    int64_t g = h / (HQ / HK), nk = i + 1; /* causal, Lq == Lk: keys 0..i */
    const float *q = in->qf + (size_t)(i * HQ + h) * HEAD_DIM;
    double m = -INFINITY;
    for (int64_t j = 0; j < nk; j++) {
        const float *kr = in->kf + (size_t)(j * HK + g) * HEAD_DIM;
        double s = 0;
        for (int d = 0; d < HEAD_DIM; d++) s += (double)q[d] * kr[d];
        sbuf[j] = s * scale;
        if (sbuf[j] > m) m = sbuf[j];
    }
    double sum = 0;
    for (int64_t j = 0; j < nk; j++) sum += (sbuf[j] = exp(sbuf[j] - m));
    for (int d = 0; d < HEAD_DIM; d++) ref64[d] = 0;
    for (int64_t j = 0; j < nk; j++) {
        const float *vr = in->vf + (size_t)(j * HK + g) * HEAD_DIM;
        double p = sbuf[j] / sum;
        for (int d = 0; d < HEAD_DIM; d++) ref64[d] += p * vr[d];
    }
    if (in->dt == CFLASH_DTYPE_F32) return;
    /* naive bf16: q * scale rounded, scores rounded, softmax in fp32 rounded, P V rounded */
    float qs[HEAD_DIM], m32 = -INFINITY, sum32 = 0;
    for (int d = 0; d < HEAD_DIM; d++) qs[d] = round_bf16(q[d] * (float)scale);
    for (int64_t j = 0; j < nk; j++) {
        const float *kr = in->kf + (size_t)(j * HK + g) * HEAD_DIM;
        float s = 0;
        for (int d = 0; d < HEAD_DIM; d++) s += qs[d] * kr[d];
        sbuf32[j] = round_bf16(s);
        if (sbuf32[j] > m32) m32 = sbuf32[j];
    }
    for (int64_t j = 0; j < nk; j++) sum32 += (sbuf32[j] = expf(sbuf32[j] - m32));
    float acc[HEAD_DIM] = {0};
    for (int64_t j = 0; j < nk; j++) {
        const float *vr = in->vf + (size_t)(j * HK + g) * HEAD_DIM;
        float p = round_bf16(sbuf32[j] / sum32);
        for (int d = 0; d < HEAD_DIM; d++) acc[d] += p * vr[d];
    }
    for (int d = 0; d < HEAD_DIM; d++) naive[d] = round_bf16(acc[d]);
}

struct check {
    double max_err, rel_l2, e_naive, tol, ref_self_rel;
    int ok;
};

static int check_rows(const struct inputs *in, const void *out, struct check *c) {
    int64_t L = in->L;
    double scale = 1.0 / sqrt((double)HEAD_DIM);
    float *ref = malloc(sizeof(float) * CHECK_ROWS * HQ * HEAD_DIM);
    double *sbuf = malloc(sizeof(double) * (size_t)L);
    float *sbuf32 = malloc(sizeof(float) * (size_t)L);
    if (!ref || !sbuf || !sbuf32) return -1;
    double err2 = 0, ref2 = 0, self_err2 = 0;
    c->max_err = 0;
    c->e_naive = 0;
    for (int blk = 0; blk < CHECK_BLOCKS; blk++) {
        /* first block, last block, the rest at random positions */
        int64_t span = L - CHECK_ROWS;
        int64_t r0 = blk == 0 ? 0 : blk == 1 ? span : (int64_t)(rng_uniform() * (double)(span + 1));
        if (r0 > span) r0 = span;
        struct cflash_tensor qv = bshd(in->q, in->dt, L, r0, CHECK_ROWS, HQ, HEAD_DIM);
        struct cflash_tensor kv = bshd(in->k, in->dt, L, 0, r0 + CHECK_ROWS, HK, HEAD_DIM);
        struct cflash_tensor vv = bshd(in->v, in->dt, L, 0, r0 + CHECK_ROWS, HK, HEAD_DIM);
        struct cflash_tensor ov = bshd(ref, CFLASH_DTYPE_F32, CHECK_ROWS, 0, CHECK_ROWS, HQ, HEAD_DIM);
        struct cflash_attn_params p = cflash_attn_params_default();
        p.causal = 1; /* bottom-right: the slice's offset r0 keeps the full problem's diagonal */
        p.kernel = CFLASH_KERNEL_REFERENCE;
        enum cflash_status st = cflash_attn_dense(&qv, &kv, &vv, &ov, NULL, &p);
        if (st != CFLASH_STATUS_OK) {
            fprintf(stderr, "reference kernel failed: %s: %s\n", cflash_status_string(st),
                    cflash_last_error());
            return -1;
        }
        for (int64_t r = 0; r < CHECK_ROWS; r++) {
            for (int64_t h = 0; h < HQ; h++) {
                double by_hand[HEAD_DIM];
                float naive[HEAD_DIM];
                row_by_hand(in, r0 + r, h, scale, by_hand, naive, sbuf, sbuf32);
                const float *rr = ref + (size_t)(r * HQ + h) * HEAD_DIM;
                size_t oi = (size_t)((r0 + r) * HQ + h) * HEAD_DIM;
                for (int d = 0; d < HEAD_DIM; d++) {
                    double o = elem(out, in->dt, oi + d), e = fabs(o - rr[d]);
                    err2 += e * e;
                    ref2 += (double)rr[d] * rr[d];
                    self_err2 += (rr[d] - by_hand[d]) * (rr[d] - by_hand[d]);
                    if (!(e <= c->max_err)) c->max_err = isnan(e) ? INFINITY : e;
                    if (in->dt != CFLASH_DTYPE_F32) {
                        double en = fabs((double)naive[d] - rr[d]);
                        if (en > c->e_naive) c->e_naive = en;
                    }
                }
            }
        }
    }
    c->rel_l2 = sqrt(err2 / ref2);
    c->ref_self_rel = sqrt(self_err2 / ref2);
    if (in->dt == CFLASH_DTYPE_F32) {
        c->tol = F32_REL_TOL;
        c->ok = c->rel_l2 <= c->tol;
    } else {
        c->tol = 2 * c->e_naive + LOWP_ABS_TOL;
        c->ok = c->max_err <= c->tol;
    }
    if (!(c->ref_self_rel <= REF_SELF_TOL)) c->ok = 0; /* the oracle itself disagrees */
    free(ref);
    free(sbuf);
    free(sbuf32);
    return 0;
}

/* ---- one dtype: build inputs, run AUTO, check, time ---- */

static int run_case(enum cflash_dtype dt, int64_t L, int reps, int32_t threads) {
    const char *dname = dt == CFLASH_DTYPE_F32 ? "fp32" : "bf16";
    size_t es = dt == CFLASH_DTYPE_F32 ? 4 : 2;
    size_t nq = (size_t)(L * HQ * HEAD_DIM), nk = (size_t)(L * HK * HEAD_DIM);
    struct inputs in = {dt, L, malloc(nq * es), malloc(nk * es), malloc(nk * es),
                        malloc(nq * 4), malloc(nk * 4), malloc(nk * 4)};
    void *out = malloc(nq * es);
    if (!in.q || !in.k || !in.v || !in.qf || !in.kf || !in.vf || !out) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    void *stor[3] = {in.q, in.k, in.v};
    float *f32[3] = {in.qf, in.kf, in.vf};
    size_t n[3] = {nq, nk, nk};
    for (int t = 0; t < 3; t++) {
        for (size_t i = 0; i < n[t]; i++) {
            float x = rng_normal();
            if (dt == CFLASH_DTYPE_F32) {
                ((float *)stor[t])[i] = x;
            } else {
                ((uint16_t *)stor[t])[i] = f32_to_bf16(x);
                x = round_bf16(x);
            }
            f32[t][i] = x;
        }
    }
    /* Poison the output (all-ones bits: NaN in both dtypes) so an unwritten element fails. */
    memset(out, 0xff, nq * es);

    struct cflash_tensor q = bshd(in.q, dt, L, 0, L, HQ, HEAD_DIM);
    struct cflash_tensor k = bshd(in.k, dt, L, 0, L, HK, HEAD_DIM);
    struct cflash_tensor v = bshd(in.v, dt, L, 0, L, HK, HEAD_DIM);
    struct cflash_tensor o = bshd(out, dt, L, 0, L, HQ, HEAD_DIM);
    struct cflash_attn_params p = cflash_attn_params_default();
    p.causal = 1;
    p.num_threads = threads; /* 0: CFLASH_NUM_THREADS or the core count */
    p.kernel = CFLASH_KERNEL_AUTO;

    double t0 = now_s();
    enum cflash_status st = cflash_attn_dense(&q, &k, &v, &o, NULL, &p);
    double first = now_s() - t0;
    if (st != CFLASH_STATUS_OK) {
        fprintf(stderr, "cflash_attn_dense (%s) failed: %s: %s\n", dname, cflash_status_string(st),
                cflash_last_error());
        return 1;
    }
    size_t unwritten = 0;
    for (size_t i = 0; i < nq; i++) unwritten += !isfinite(elem(out, dt, i));

    struct check c;
    if (check_rows(&in, out, &c) != 0) return 1;

    double *times = malloc(sizeof(double) * (size_t)(reps > 0 ? reps : 1));
    for (int r = 0; r < reps; r++) {
        t0 = now_s();
        cflash_attn_dense(&q, &k, &v, &o, NULL, &p);
        times[r] = now_s() - t0;
    }
    qsort(times, (size_t)(reps > 0 ? reps : 1), sizeof(double), cmp_double);
    double med = times[(reps > 0 ? reps : 1) / 2];
    /* useful FLOPs, causal Lq == Lk: each row sees (L + 1) / 2 keys on average (PERF.md 1) */
    double flops = 2.0 * B_ * HQ * (double)L * ((double)(L + 1) / 2.0) * (HEAD_DIM + HEAD_DIM);

    int ok = c.ok && unwritten == 0;
    printf("%s  B=%d Hq=%d Hk=%d L=%lld D=%d causal\n", dname, B_, HQ, HK, (long long)L, HEAD_DIM);
    printf("  check vs reference (%d x %d rows, all heads): max_err %.3g  rel_l2 %.3g  ",
           CHECK_BLOCKS, CHECK_ROWS, c.max_err, c.rel_l2);
    if (dt == CFLASH_DTYPE_F32)
        printf("(tol rel_l2 <= %.0e)", c.tol);
    else
        printf("(tol max_err <= 2*e_naive + 1e-3 = %.3g, e_naive %.3g)", c.tol, c.e_naive);
    printf("  reference vs by-hand fp64 %.1e  unwritten %zu  %s\n", c.ref_self_rel, unwritten,
           ok ? "PASS" : "FAIL");
    printf("  time: median %.1f ms of %d (first call %.1f ms)  %.1f GFLOP/s\n", med * 1e3, reps,
           first * 1e3, flops / med * 1e-9);
    free(times);
    free(in.q); free(in.k); free(in.v); free(in.qf); free(in.kf); free(in.vf); free(out);
    return ok ? 0 : 1;
}

int main(int argc, char **argv) {
    int64_t L = 2048;
    int reps = 5;
    int32_t threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--L") && i + 1 < argc) L = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--L N (>= %d)] [--reps N] [--threads N]\n", argv[0], CHECK_ROWS);
            return 2;
        }
    }
    if (L < CHECK_ROWS || reps < 1) {
        fprintf(stderr, "need --L >= %d and --reps >= 1\n", CHECK_ROWS);
        return 2;
    }
    printf("cflash %d.%d.%d  kernel %s  threads %d\n", CFLASH_VERSION_MAJOR, CFLASH_VERSION_MINOR,
           CFLASH_VERSION_PATCH, cflash_kernel_name(cflash_kernel_auto()),
           threads > 0 ? threads : cflash_default_num_threads());
    int fails = run_case(CFLASH_DTYPE_F32, L, reps, threads);
    fails += run_case(CFLASH_DTYPE_BF16, L, reps, threads);
    printf(fails ? "cflash_example: FAILED\n" : "cflash_example: all checks passed\n");
    return fails ? 1 : 0;
}
