/*
 * bench_cpu.c - CPU prefill and decode benchmark of cflash against a naive OpenBLAS attention,
 * measured in the same run on the same data (PERF.md sections 1, 3b, 4, 5).
 *
 * Per case, in this order:
 *   1. correctness: cflash (CFLASH_KERNEL_AUTO) on poisoned output, every element must be
 *      written; rows checked against the fp64 reference kernel (CFLASH_KERNEL_REFERENCE) run on
 *      row slices: rows [r0, r0+n) against keys [0, r0+n + Lk-Lq) when causal (bottom-right
 *      alignment then keeps the full problem's diagonal), all keys otherwise; the OpenBLAS peer
 *      checked against the same reference rows; the whole cflash output cross-checked against
 *      the whole peer output.
 *   2. timing: wall clock, the correctness call is the warm-up, then the median of --reps runs
 *      (default 5), for cflash and for the peer, at the case's thread count.
 * Tolerances (SPEC.md 1): fp32 relative L2 <= 1e-5; bf16 max abs <= 2 * e_naive + 1e-3 where
 * e_naive is the error of a naive bf16 computation of the same rows. The peer computes in fp32
 * on the exact fp32 upcast of the bf16 inputs and is held to the fp32 rule.
 *
 * FLOPs (PERF.md 1): 2 * B * Hq * Lq * avg_k * (D + Dv), avg_k = Lk non-causal, (Lk + 1) / 2
 * causal with Lq == Lk. Decode also reports GB/s = bytes of K and V read / time.
 *
 * What it is not: the torch peer (bench/bench_cpu_torch.py times torch SDPA on the cases this
 * program wrote and merges both into bench/results/cpu_prefill.json).
 *
 * Usage: bench_cpu [--quick] [--threads 1,2] [--filter SUBSTR]... [--json PATH] [--reps N]
 *                  [--openblas-mode heads|sgemm] [--list]
 */
#include "cflash.h"
#ifdef CFLASH_BENCH_HAVE_OPENBLAS
#include "peer_openblas.h"
static enum peer_openblas_mode peer_mode = PEER_OPENBLAS_THREADS_OVER_HEADS;
#endif

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif
#ifndef CFLASH_SOURCE_DIR
#define CFLASH_SOURCE_DIR "."
#endif

#define DEFAULT_JSON CFLASH_SOURCE_DIR "/bench/results/cpu_prefill_cflash_openblas.json"
#define MAX_CASES 256
#define MAX_FILTERS 8
#define MAX_THREAD_COUNTS 8
#define CHECK_BLOCKS 4        /* row blocks checked against the reference: first, last, 2 random */
#define CHECK_ROWS 4          /* query rows per block, all heads */
#define F32_REL_TOL 1e-5      /* SPEC.md 1 */
#define LOWP_ABS_TOL 1e-3     /* SPEC.md 1: + 2 * e_naive */
#define BF16_OUT_REL 0x1p-8   /* cross-check slack: twice bf16's rounding of the output */
#define HQ_TIMES_D_GRID 2048 /* Hq * D for the prefill grid (PERF.md 1) */
/* PERF.md 2: measured fp32 AVX-512 FMA peak of the 2-core dev/CI machine, GFLOP/s */
static const double FMA_PEAK_GFLOPS[3] = {0.0, 117.0, 233.0};

/* ---- helpers ---- */

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

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static uint64_t rng_next(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_uniform(void) { return ((double)(rng_next() >> 11) + 0.5) * 0x1p-53; }

static float rng_normal(void) {
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

static double median(double *t, int n) {
    qsort(t, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "bench_cpu: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static size_t dsize(enum cflash_dtype dt) { return dt == CFLASH_DTYPE_F32 ? 4 : 2; }
static const char *dname(enum cflash_dtype dt) { return dt == CFLASH_DTYPE_F32 ? "fp32" : "bf16"; }

static float elem(const void *base, enum cflash_dtype dt, size_t i) {
    return dt == CFLASH_DTYPE_F32 ? ((const float *)base)[i]
                                  : bf16_to_f32(((const uint16_t *)base)[i]);
}

/* ---- cases ---- */

struct bcase {
    int decode;
    enum cflash_dtype dt;
    int64_t B, Hq, Hk, Lq, Lk, D, Dv;
    int causal;
    int threads;
    char name[160];
};

static double case_flops(const struct bcase *c) {
    /* avg_k: exact mean of visible keys per row; causal is only used with Lq == Lk here */
    double avg_k = c->causal ? (double)(c->Lk + 1) / 2.0 : (double)c->Lk;
    return 2.0 * (double)(c->B * c->Hq * c->Lq) * avg_k * (double)(c->D + c->Dv);
}

static double case_kv_bytes(const struct bcase *c) {
    return (double)(c->B * c->Lk * c->Hk * (c->D + c->Dv)) * (double)dsize(c->dt);
}

static void case_name(struct bcase *c) {
    if (c->decode)
        snprintf(c->name, sizeof c->name, "decode %s D=%lld Lq=%lld Lk=%lld B=%lld Hq=%lld Hk=%lld threads=%d",
                 dname(c->dt), (long long)c->D, (long long)c->Lq, (long long)c->Lk, (long long)c->B,
                 (long long)c->Hq, (long long)c->Hk, c->threads);
    else
        snprintf(c->name, sizeof c->name, "prefill %s D=%lld L=%lld B=%lld Hq=%lld Hk=%lld mask=%s threads=%d",
                 dname(c->dt), (long long)c->D, (long long)c->Lq, (long long)c->B, (long long)c->Hq,
                 (long long)c->Hk, c->causal ? "causal" : "full", c->threads);
}

/* The grid: prefill fp32/bf16 x D {64,128} x L {512,2048,4096} x causal {0,1}, Hq * D = 2048,
 * B = 1 (quick: D = 128, L {512, 2048}); decode Lq = 1, Lk = 32768, Hq:Hk 32:8, D = 128.
 * Thread counts innermost so one set of inputs serves every thread count. */
static int build_cases(struct bcase *cs, int quick, const int *threads, int nthreads) {
    static const int64_t Ds[] = {64, 128}, Ls[] = {512, 2048, 4096};
    static const enum cflash_dtype dts[] = {CFLASH_DTYPE_F32, CFLASH_DTYPE_BF16};
    int n = 0;
    for (int di = 0; di < 2; di++)
        for (int Di = 0; Di < 2; Di++)
            for (int Li = 0; Li < 3; Li++)
                for (int causal = 0; causal <= 1; causal++)
                    for (int t = 0; t < nthreads; t++) {
                        if (quick && (Ds[Di] != 128 || Ls[Li] == 4096)) continue;
                        struct bcase *c = &cs[n++];
                        memset(c, 0, sizeof *c);
                        c->dt = dts[di];
                        c->B = 1;
                        c->D = c->Dv = Ds[Di];
                        c->Hq = c->Hk = HQ_TIMES_D_GRID / Ds[Di];
                        c->Lq = c->Lk = Ls[Li];
                        c->causal = causal;
                        c->threads = threads[t];
                        case_name(c);
                    }
    for (int di = 0; di < 2; di++)
        for (int t = 0; t < nthreads; t++) {
            struct bcase *c = &cs[n++];
            memset(c, 0, sizeof *c);
            c->decode = 1;
            c->dt = dts[di];
            c->B = 1;
            c->Hq = 32;
            c->Hk = 8;
            c->Lq = 1;
            c->Lk = 32768;
            c->D = c->Dv = 128;
            c->threads = threads[t];
            case_name(c);
        }
    return n;
}

/* ---- inputs ---- */

struct inputs {
    enum cflash_dtype dt;
    int64_t B, Hq, Hk, Lq, Lk, D, Dv;
    void *q, *k, *v;     /* storage in dt, [B, L, H, D] contiguous */
    float *qf, *kf, *vf; /* the same values as fp32 (exact upcast of bf16) */
};

static int inputs_match(const struct inputs *in, const struct bcase *c) {
    return in->q && in->dt == c->dt && in->B == c->B && in->Hq == c->Hq && in->Hk == c->Hk &&
           in->Lq == c->Lq && in->Lk == c->Lk && in->D == c->D && in->Dv == c->Dv;
}

static void inputs_free(struct inputs *in) {
    free(in->q); free(in->k); free(in->v); free(in->qf); free(in->kf); free(in->vf);
    memset(in, 0, sizeof *in);
}

static void inputs_make(struct inputs *in, const struct bcase *c) {
    inputs_free(in);
    in->dt = c->dt;
    in->B = c->B; in->Hq = c->Hq; in->Hk = c->Hk; in->Lq = c->Lq; in->Lk = c->Lk;
    in->D = c->D; in->Dv = c->Dv;
    size_t n[3] = {(size_t)(c->B * c->Lq * c->Hq * c->D), (size_t)(c->B * c->Lk * c->Hk * c->D),
                   (size_t)(c->B * c->Lk * c->Hk * c->Dv)};
    void **st[3] = {&in->q, &in->k, &in->v};
    float **f[3] = {&in->qf, &in->kf, &in->vf};
    for (int t = 0; t < 3; t++) {
        *st[t] = xmalloc(n[t] * dsize(c->dt));
        *f[t] = xmalloc(n[t] * 4);
        for (size_t i = 0; i < n[t]; i++) {
            float x = rng_normal();
            if (c->dt == CFLASH_DTYPE_F32) {
                ((float *)*st[t])[i] = x;
            } else {
                ((uint16_t *)*st[t])[i] = f32_to_bf16(x);
                x = round_bf16(x);
            }
            (*f[t])[i] = x;
        }
    }
}

/* [B, L, H, D] view of contiguous storage [B, Ltot, H, D], starting row0 tokens in. */
static struct cflash_tensor view(void *base, enum cflash_dtype dt, int64_t B, int64_t Ltot,
                                 int64_t row0, int64_t L, int64_t H, int64_t D) {
    struct cflash_tensor t;
    memset(&t, 0, sizeof t);
    t.data = (char *)base + (size_t)(row0 * H * D) * dsize(dt);
    t.dtype = dt;
    t.ndim = 4;
    t.shape[0] = B; t.shape[1] = L; t.shape[2] = H; t.shape[3] = D;
    t.stride[0] = Ltot * H * D; t.stride[1] = H * D; t.stride[2] = D; t.stride[3] = 1;
    t.device = CFLASH_DEVICE_CPU;
    return t;
}

static enum cflash_status run_cflash(const struct inputs *in, void *out, int causal, int threads,
                                     enum cflash_kernel kernel) {
    struct cflash_tensor q = view(in->q, in->dt, in->B, in->Lq, 0, in->Lq, in->Hq, in->D);
    struct cflash_tensor k = view(in->k, in->dt, in->B, in->Lk, 0, in->Lk, in->Hk, in->D);
    struct cflash_tensor v = view(in->v, in->dt, in->B, in->Lk, 0, in->Lk, in->Hk, in->Dv);
    struct cflash_tensor o = view(out, in->dt, in->B, in->Lq, 0, in->Lq, in->Hq, in->Dv);
    struct cflash_attn_params p = cflash_attn_params_default();
    p.causal = causal;
    p.num_threads = threads;
    p.kernel = kernel;
    return cflash_attn_dense(&q, &k, &v, &o, NULL, &p);
}

/* ---- reference rows ---- */

/* The checked rows: CHECK_BLOCKS blocks of CHECK_ROWS rows (all rows when Lq is small), their
 * fp64-reference outputs (fp32, [B, rows, Hq, Dv] per block), and e_naive for bf16. */
struct refrows {
    int nblocks;
    int64_t r0[CHECK_BLOCKS], n[CHECK_BLOCKS];
    float *out[CHECK_BLOCKS];
    double e_naive;
};

static void refrows_free(struct refrows *rr) {
    for (int i = 0; i < rr->nblocks; i++) free(rr->out[i]);
    memset(rr, 0, sizeof *rr);
}

/* Naive bf16 row (the e_naive yardstick): q * scale, scores and probabilities rounded to bf16,
 * fp32 accumulation, output rounded. sbuf: Lk floats. */
static void naive_bf16_row(const struct inputs *in, int64_t b, int64_t i, int64_t h, int causal,
                           float scale, float *sbuf, float *qs, float *acc) {
    int64_t g = h / (in->Hq / in->Hk), vis = in->Lk;
    if (causal) {
        vis = i + in->Lk - in->Lq + 1;
        vis = vis < 0 ? 0 : vis > in->Lk ? in->Lk : vis;
    }
    const float *q = in->qf + (size_t)(((b * in->Lq + i) * in->Hq + h) * in->D);
    for (int64_t d = 0; d < in->D; d++) qs[d] = round_bf16(q[d] * scale);
    float mx = -INFINITY, sum = 0;
    for (int64_t j = 0; j < vis; j++) {
        const float *kr = in->kf + (size_t)(((b * in->Lk + j) * in->Hk + g) * in->D);
        float s = 0;
        for (int64_t d = 0; d < in->D; d++) s += qs[d] * kr[d];
        sbuf[j] = round_bf16(s);
        mx = sbuf[j] > mx ? sbuf[j] : mx;
    }
    for (int64_t j = 0; j < vis; j++) sum += (sbuf[j] = expf(sbuf[j] - mx));
    for (int64_t d = 0; d < in->Dv; d++) acc[d] = 0;
    for (int64_t j = 0; j < vis; j++) {
        const float *vr = in->vf + (size_t)(((b * in->Lk + j) * in->Hk + g) * in->Dv);
        float p = round_bf16(sbuf[j] / sum);
        for (int64_t d = 0; d < in->Dv; d++) acc[d] += p * vr[d];
    }
    for (int64_t d = 0; d < in->Dv; d++) acc[d] = round_bf16(acc[d]);
}

static int refrows_make(struct refrows *rr, const struct inputs *in, int causal) {
    memset(rr, 0, sizeof *rr);
    if (in->Lq <= CHECK_BLOCKS * CHECK_ROWS) {
        rr->nblocks = 1;
        rr->r0[0] = 0;
        rr->n[0] = in->Lq;
    } else {
        rr->nblocks = CHECK_BLOCKS;
        int64_t span = in->Lq - CHECK_ROWS;
        for (int i = 0; i < CHECK_BLOCKS; i++) {
            rr->r0[i] = i == 0 ? 0 : i == 1 ? span : (int64_t)(rng_uniform() * (double)(span + 1));
            if (rr->r0[i] > span) rr->r0[i] = span;
            rr->n[i] = CHECK_ROWS;
        }
    }
    float scale = (float)(1.0 / sqrt((double)in->D));
    float *sbuf = xmalloc(sizeof(float) * (size_t)(in->Lk > 0 ? in->Lk : 1));
    float *qs = xmalloc(sizeof(float) * (size_t)in->D), *acc = xmalloc(sizeof(float) * (size_t)in->Dv);
    for (int i = 0; i < rr->nblocks; i++) {
        int64_t r0 = rr->r0[i], n = rr->n[i];
        /* keys [0, r0 + n + Lk - Lq): for causal the slice's own Lk' - Lq' equals r0 + Lk - Lq,
         * the full problem's diagonal for these rows; non-causal needs every key */
        int64_t kn = causal ? r0 + n + in->Lk - in->Lq : in->Lk;
        kn = kn < 0 ? 0 : kn > in->Lk ? in->Lk : kn;
        rr->out[i] = xmalloc(sizeof(float) * (size_t)(in->B * n * in->Hq * in->Dv));
        struct cflash_tensor q = view(in->q, in->dt, in->B, in->Lq, r0, n, in->Hq, in->D);
        struct cflash_tensor k = view(in->k, in->dt, in->B, in->Lk, 0, kn, in->Hk, in->D);
        struct cflash_tensor v = view(in->v, in->dt, in->B, in->Lk, 0, kn, in->Hk, in->Dv);
        struct cflash_tensor o = view(rr->out[i], CFLASH_DTYPE_F32, in->B, n, 0, n, in->Hq, in->Dv);
        struct cflash_attn_params p = cflash_attn_params_default();
        p.causal = causal;
        p.kernel = CFLASH_KERNEL_REFERENCE;
        enum cflash_status st = cflash_attn_dense(&q, &k, &v, &o, NULL, &p);
        if (st != CFLASH_STATUS_OK) {
            fprintf(stderr, "bench_cpu: reference kernel failed: %s: %s\n", cflash_status_string(st),
                    cflash_last_error());
            rr->nblocks = i + 1;
            return -1;
        }
        if (in->dt == CFLASH_DTYPE_F32) continue;
        for (int64_t b = 0; b < in->B; b++)
            for (int64_t r = 0; r < n; r++)
                for (int64_t h = 0; h < in->Hq; h++) {
                    naive_bf16_row(in, b, r0 + r, h, causal, scale, sbuf, qs, acc);
                    const float *ref = rr->out[i] + ((b * n + r) * in->Hq + h) * in->Dv;
                    for (int64_t d = 0; d < in->Dv; d++) {
                        double e = fabs((double)acc[d] - ref[d]);
                        rr->e_naive = e > rr->e_naive ? e : rr->e_naive;
                    }
                }
    }
    free(sbuf); free(qs); free(acc);
    return 0;
}

struct errs {
    double max_abs, rel_l2;
};

/* Error of an output (dtype dt, [B, Lq, Hq, Dv]) on the reference rows. */
static struct errs check_rows(const struct refrows *rr, const struct inputs *in, const void *out,
                              enum cflash_dtype dt) {
    double e2 = 0, r2 = 0, mx = 0;
    for (int i = 0; i < rr->nblocks; i++)
        for (int64_t b = 0; b < in->B; b++)
            for (int64_t r = 0; r < rr->n[i]; r++)
                for (int64_t h = 0; h < in->Hq; h++)
                    for (int64_t d = 0; d < in->Dv; d++) {
                        double ref = rr->out[i][((b * rr->n[i] + r) * in->Hq + h) * in->Dv + d];
                        size_t oi = (size_t)(((b * in->Lq + rr->r0[i] + r) * in->Hq + h) * in->Dv + d);
                        double e = fabs((double)elem(out, dt, oi) - ref);
                        if (!(e <= mx)) mx = isnan(e) ? INFINITY : e;
                        e2 += e * e;
                        r2 += ref * ref;
                    }
    struct errs E = {mx, r2 > 0 ? sqrt(e2 / r2) : sqrt(e2)};
    return E;
}

/* ---- JSON ---- */

struct record {
    struct bcase c;
    double ours_s, peer_s;       /* median seconds */
    double ours_rate, peer_rate; /* in `unit` */
    double ours_gflops, peer_gflops;
    int ours_ok, peer_ok, have_peer;
    double max_err, rel_l2, tol, peer_max_err, cross_err;
};

struct meta {
    char device[256], commit[64], date[32];
    const char *kernel, *openblas_mode;
    int reps;
};

static void read_meta(struct meta *m, int reps) {
    memset(m, 0, sizeof *m);
    strcpy(m->device, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    if (f) {
        while (fgets(line, sizeof line, f)) {
            if (!strncmp(line, "model name", 10)) {
                char *p = strchr(line, ':');
                if (p) {
                    p++;
                    while (*p == ' ') p++;
                    p[strcspn(p, "\n")] = 0;
                    snprintf(m->device, sizeof m->device, "%.200s (%ld CPUs online)", p,
                             sysconf(_SC_NPROCESSORS_ONLN));
                }
                break;
            }
        }
        fclose(f);
    }
    strcpy(m->commit, "unknown");
    f = popen("git -C '" CFLASH_SOURCE_DIR "' rev-parse --short HEAD 2>/dev/null", "r");
    if (f) {
        if (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = 0;
            if (line[0]) snprintf(m->commit, sizeof m->commit, "%.60s", line);
        }
        pclose(f);
    }
    time_t t = time(NULL);
    strftime(m->date, sizeof m->date, "%Y-%m-%d", localtime(&t));
    m->kernel = cflash_kernel_name(cflash_kernel_auto());
    m->reps = reps;
#ifdef CFLASH_BENCH_HAVE_OPENBLAS
    m->openblas_mode = peer_mode == PEER_OPENBLAS_THREADS_OVER_HEADS ? "heads" : "sgemm";
#else
    m->openblas_mode = "not built";
#endif
}

static void json_num(FILE *f, const char *key, double x) {
    if (isfinite(x))
        fprintf(f, ", \"%s\": %.10g", key, x);
    else
        fprintf(f, ", \"%s\": null", key);
}

static double pct_peak(double gflops, int threads) {
    return threads >= 1 && threads <= 2 ? 100.0 * gflops / FMA_PEAK_GFLOPS[threads] : NAN;
}

/* mkdir -p of the directory part of `path` (bench/results/ is not in a fresh clone). */
static void make_parent_dirs(const char *path) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        mkdir(buf, 0777); /* EEXIST is fine; a real failure shows up at fopen */
        *p = '/';
    }
}

/* The whole file, rewritten after every case so a partial run leaves valid JSON. */
static int write_json(const char *path, const struct meta *m, const struct record *rs, int n) {
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    make_parent_dirs(path);
    FILE *f = fopen(tmp, "w");
    if (!f) return -1;
    fprintf(f, "{\"device\": \"%s\", \"commit\": \"%s\", \"date\": \"%s\", \"kernel\": \"%s\", "
               "\"reps\": %d, \"openblas_mode\": \"%s\",\n \"flops\": \"2*B*Hq*Lq*avg_k*(D+Dv), avg_k = Lk (full) or (Lk+1)/2 (causal, Lq == Lk)\",\n"
               " \"records\": [",
            m->device, m->commit, m->date, m->kernel, m->reps, m->openblas_mode);
    for (int i = 0; i < n; i++) {
        const struct record *r = &rs[i];
        const struct bcase *c = &r->c;
        fprintf(f, "%s\n  {\"case\": \"%s\", \"unit\": \"%s\"", i ? "," : "", c->name,
                c->decode ? "GB/s" : "GFLOP/s");
        json_num(f, "ours", r->ours_rate);
        if (r->have_peer) {
            fprintf(f, ", \"peer\": \"openblas\"");
            json_num(f, "peer_value", r->peer_rate);
            json_num(f, "ratio", r->ours_rate / r->peer_rate);
        } else {
            fprintf(f, ", \"peer\": null, \"peer_value\": null, \"ratio\": null");
        }
        fprintf(f, ", \"correct\": %s", r->ours_ok && (!r->have_peer || r->peer_ok) ? "true" : "false");
        json_num(f, "max_err", r->max_err);
        fprintf(f, ",\n   \"kind\": \"%s\", \"dtype\": \"%s\", \"B\": %lld, \"Hq\": %lld, \"Hk\": %lld, "
                   "\"Lq\": %lld, \"Lk\": %lld, \"D\": %lld, \"Dv\": %lld, \"causal\": %s, \"threads\": %d",
                c->decode ? "decode" : "prefill", dname(c->dt), (long long)c->B, (long long)c->Hq,
                (long long)c->Hk, (long long)c->Lq, (long long)c->Lk, (long long)c->D,
                (long long)c->Dv, c->causal ? "true" : "false", c->threads);
        json_num(f, "flops", case_flops(c));
        json_num(f, "kv_bytes", case_kv_bytes(c));
        json_num(f, "ours_ms", r->ours_s * 1e3);
        json_num(f, "ours_gflops", r->ours_gflops);
        json_num(f, "ours_pct_fma_peak", pct_peak(r->ours_gflops, c->threads));
        fprintf(f, ", \"ours_correct\": %s", r->ours_ok ? "true" : "false");
        json_num(f, "rel_l2", r->rel_l2);
        json_num(f, "tol", r->tol);
        if (r->have_peer) {
            json_num(f, "peer_ms", r->peer_s * 1e3);
            json_num(f, "peer_gflops", r->peer_gflops);
            fprintf(f, ", \"peer_correct\": %s", r->peer_ok ? "true" : "false");
            json_num(f, "peer_max_err", r->peer_max_err);
            json_num(f, "ours_vs_peer_max_diff", r->cross_err);
        }
        fprintf(f, "}");
    }
    fprintf(f, "\n]}\n");
    if (fclose(f) != 0) return -1;
    return rename(tmp, path);
}

/* ---- one case ---- */

static int run_case(const struct bcase *c, struct inputs *in, int reps, struct record *r) {
    memset(r, 0, sizeof *r);
    r->c = *c;
    r->max_err = r->peer_max_err = r->cross_err = r->rel_l2 = NAN;
    if (!inputs_match(in, c)) inputs_make(in, c);
    size_t n_out = (size_t)(c->B * c->Lq * c->Hq * c->Dv);
    void *out = xmalloc(n_out * dsize(c->dt));
    double *times = xmalloc(sizeof(double) * (size_t)reps);
    double flops = case_flops(c), bytes = case_kv_bytes(c);

    /* 1. correctness of ours: poisoned output (all-ones bits is NaN in fp32 and bf16) */
    memset(out, 0xff, n_out * dsize(c->dt));
    enum cflash_status st = run_cflash(in, out, c->causal, c->threads, CFLASH_KERNEL_AUTO);
    if (st != CFLASH_STATUS_OK) {
        fprintf(stderr, "bench_cpu: %s: cflash_attn_dense failed: %s: %s\n", c->name,
                cflash_status_string(st), cflash_last_error());
        free(out); free(times);
        return -1;
    }
    size_t unwritten = 0;
    for (size_t i = 0; i < n_out; i++) unwritten += !isfinite(elem(out, c->dt, i));
    struct refrows rr;
    if (refrows_make(&rr, in, c->causal) != 0) {
        refrows_free(&rr);
        free(out); free(times);
        return -1;
    }
    struct errs E = check_rows(&rr, in, out, c->dt);
    r->max_err = E.max_abs;
    r->rel_l2 = E.rel_l2;
    if (c->dt == CFLASH_DTYPE_F32) {
        r->tol = F32_REL_TOL;
        r->ours_ok = E.rel_l2 <= r->tol;
    } else {
        r->tol = 2 * rr.e_naive + LOWP_ABS_TOL;
        r->ours_ok = E.max_abs <= r->tol;
    }
    if (unwritten) {
        fprintf(stderr, "bench_cpu: %s: %zu output elements not written or not finite\n", c->name,
                unwritten);
        r->ours_ok = 0;
    }

    /* 2. time ours: the correctness call was the warm-up */
    for (int i = 0; i < reps; i++) {
        double t0 = now_s();
        run_cflash(in, out, c->causal, c->threads, CFLASH_KERNEL_AUTO);
        times[i] = now_s() - t0;
    }
    r->ours_s = median(times, reps);
    r->ours_gflops = flops / r->ours_s * 1e-9;
    r->ours_rate = c->decode ? bytes / r->ours_s * 1e-9 : r->ours_gflops;

#ifdef CFLASH_BENCH_HAVE_OPENBLAS
    /* 3. the peer: check against the same reference rows, cross-check the whole output, time */
    r->have_peer = 1;
    float scale = (float)(1.0 / sqrt((double)c->D));
    float *pout = xmalloc(n_out * sizeof(float));
    memset(pout, 0xff, n_out * sizeof(float));
    if (peer_openblas_attention(in->qf, in->kf, in->vf, pout, c->B, c->Lq, c->Lk, c->Hq, c->Hk, c->D,
                                c->Dv, c->causal, scale, c->threads, peer_mode) != 0) {
        fprintf(stderr, "bench_cpu: %s: openblas peer out of memory or threads\n", c->name);
        r->have_peer = 0;
    } else {
        struct errs P = check_rows(&rr, in, pout, CFLASH_DTYPE_F32);
        r->peer_max_err = P.max_abs;
        r->peer_ok = P.rel_l2 <= F32_REL_TOL;
        /* whole-output cross-check: fp32 relative L2 within twice the per-kernel bound; bf16
         * elementwise within bf16's output rounding (twice, as slack) plus the SPEC bound */
        double e2 = 0, p2 = 0, mx = 0;
        int cross_ok = 1;
        for (size_t i = 0; i < n_out; i++) {
            double o = elem(out, c->dt, i), p = pout[i], e = fabs(o - p);
            if (!(e <= mx)) mx = isnan(e) ? INFINITY : e;
            e2 += e * e;
            p2 += p * p;
            if (c->dt != CFLASH_DTYPE_F32 && !(e <= BF16_OUT_REL * fabs(p) + r->tol)) cross_ok = 0;
        }
        if (c->dt == CFLASH_DTYPE_F32) cross_ok = sqrt(e2 / (p2 > 0 ? p2 : 1)) <= 2 * F32_REL_TOL;
        r->cross_err = mx;
        if (!cross_ok) {
            fprintf(stderr, "bench_cpu: %s: cflash and openblas outputs disagree (max diff %.3g)\n",
                    c->name, mx);
            r->ours_ok = 0;
        }
        for (int i = 0; i < reps; i++) {
            double t0 = now_s();
            peer_openblas_attention(in->qf, in->kf, in->vf, pout, c->B, c->Lq, c->Lk, c->Hq, c->Hk,
                                    c->D, c->Dv, c->causal, scale, c->threads, peer_mode);
            times[i] = now_s() - t0;
        }
        r->peer_s = median(times, reps);
        r->peer_gflops = flops / r->peer_s * 1e-9;
        r->peer_rate = c->decode ? bytes / r->peer_s * 1e-9 : r->peer_gflops;
    }
    free(pout);
#endif
    refrows_free(&rr);
    free(out);
    free(times);
    return 0;
}

/* ---- main ---- */

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [--quick] [--threads 1,2] [--filter SUBSTR]... [--json PATH] [--reps N]\n"
            "          [--openblas-mode heads|sgemm] [--list]\n"
            "  --quick        D=128, L in {512, 2048}, plus decode\n"
            "  --threads LIST thread counts (default 1,2)\n"
            "  --filter S     only cases whose name contains S (repeatable: all must match)\n"
            "  --json PATH    result file (default %s)\n"
            "  --reps N       timed runs per case after the warm-up, median reported (default 5; PERF.md asks >= 5)\n"
            "  --openblas-mode heads|sgemm\n"
            "                 how the openblas peer uses the threads: pthreads owning whole heads with\n"
            "                 single-threaded sgemm (default; the faster on 2 cores), or\n"
            "                 openblas_set_num_threads(threads) inside each sgemm\n"
            "  --list         print the selected case names and exit\n",
            argv0, DEFAULT_JSON);
}

int main(int argc, char **argv) {
    int quick = 0, list = 0, reps = 5, nthreads = 0, nfilters = 0;
    int threads[MAX_THREAD_COUNTS];
    const char *filters[MAX_FILTERS];
    const char *json = DEFAULT_JSON;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--quick")) {
            quick = 1;
        } else if (!strcmp(a, "--list")) {
            list = 1;
        } else if (!strcmp(a, "--threads") && i + 1 < argc) {
            char buf[256];
            snprintf(buf, sizeof buf, "%s", argv[++i]);
            for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
                int t = atoi(tok);
                if (t < 1 || nthreads == MAX_THREAD_COUNTS) {
                    fprintf(stderr, "bench_cpu: bad --threads list '%s'\n", argv[i]);
                    return 2;
                }
                threads[nthreads++] = t;
            }
        } else if (!strcmp(a, "--filter") && i + 1 < argc) {
            if (nfilters == MAX_FILTERS) {
                fprintf(stderr, "bench_cpu: at most %d --filter\n", MAX_FILTERS);
                return 2;
            }
            filters[nfilters++] = argv[++i];
        } else if (!strcmp(a, "--openblas-mode") && i + 1 < argc) {
            i++;
#ifdef CFLASH_BENCH_HAVE_OPENBLAS
            if (!strcmp(argv[i], "heads")) {
                peer_mode = PEER_OPENBLAS_THREADS_OVER_HEADS;
            } else if (!strcmp(argv[i], "sgemm")) {
                peer_mode = PEER_OPENBLAS_THREADS_IN_SGEMM;
            } else {
                usage(argv[0]);
                return 2;
            }
#endif
        } else if (!strcmp(a, "--json") && i + 1 < argc) {
            json = argv[++i];
        } else if (!strcmp(a, "--reps") && i + 1 < argc) {
            reps = atoi(argv[++i]);
            if (reps < 1) {
                fprintf(stderr, "bench_cpu: --reps must be >= 1\n");
                return 2;
            }
        } else {
            usage(argv[0]);
            return 2;
        }
    }
    if (nthreads == 0) {
        threads[0] = 1;
        threads[1] = 2;
        nthreads = 2;
    }

    static struct bcase all[MAX_CASES];
    struct bcase sel[MAX_CASES];
    int nall = build_cases(all, quick, threads, nthreads), nsel = 0;
    for (int i = 0; i < nall; i++) {
        int keep = 1;
        for (int f = 0; f < nfilters; f++) keep &= strstr(all[i].name, filters[f]) != NULL;
        if (keep) sel[nsel++] = all[i];
    }
    if (list) {
        for (int i = 0; i < nsel; i++) printf("%s\n", sel[i].name);
        return 0;
    }
    if (nsel == 0) {
        fprintf(stderr, "bench_cpu: no case matches the filters\n");
        return 2;
    }

    struct meta m;
    read_meta(&m, reps);
    printf("bench_cpu: cflash kernel %s, %s, commit %s, %s\n", m.kernel, m.device, m.commit, m.date);
    printf("FLOPs = 2*B*Hq*Lq*avg_k*(D+Dv), avg_k = Lk (mask=full) or (Lk+1)/2 (causal, Lq==Lk); "
           "decode GB/s = bytes of K+V / time\n");
    printf("timing: wall clock, 1 warm-up (the checked call), median of %d%s; %% peak vs fp32 FMA "
           "peak 117 (1 thread) / 233 (2 threads) GFLOP/s\n",
           reps, reps < 5 ? " (below PERF.md's 5: not a reportable median)" : "");
#ifdef CFLASH_BENCH_HAVE_OPENBLAS
    printf("peer openblas: per head sgemm S=QK^T (query chunks, S <= 1 MB), softmax in C, sgemm "
           "O=PV; fp32 on the upcast inputs; threads: %s\n",
           peer_mode == PEER_OPENBLAS_THREADS_OVER_HEADS
               ? "pthreads over heads, each sgemm on 1 OpenBLAS thread (--openblas-mode heads)"
               : "openblas_set_num_threads(threads) inside each sgemm (--openblas-mode sgemm)");
#else
    printf("peer openblas: NOT BUILT (OpenBLAS not found at configure time); cflash only\n");
#endif
    printf("\n%-66s %10s %10s %9s %7s %6s %9s %s\n", "case", "ours", "openblas", "unit", "ratio",
           "%peak", "max_err", "ok");

    struct record *recs = xmalloc(sizeof(struct record) * (size_t)nsel);
    struct inputs in;
    memset(&in, 0, sizeof in);
    int nrec = 0, failures = 0;
    for (int i = 0; i < nsel; i++) {
        struct record *r = &recs[nrec];
        if (run_case(&sel[i], &in, reps, r) != 0) {
            failures++;
            continue;
        }
        nrec++;
        int ok = r->ours_ok && (!r->have_peer || r->peer_ok);
        failures += !ok;
        const char *unit = sel[i].decode ? "GB/s" : "GFLOP/s";
        char peerbuf[32] = "-", ratiobuf[32] = "-", peakbuf[32] = "-";
        if (r->have_peer) {
            snprintf(peerbuf, sizeof peerbuf, "%.1f", r->peer_rate);
            snprintf(ratiobuf, sizeof ratiobuf, "%.2fx", r->ours_rate / r->peer_rate);
        }
        double pk = pct_peak(r->ours_gflops, sel[i].threads);
        if (isfinite(pk)) snprintf(peakbuf, sizeof peakbuf, "%.0f%%", pk);
        printf("%-66s %10.1f %10s %9s %7s %6s %9.2e %s", sel[i].name, r->ours_rate, peerbuf, unit,
               ratiobuf, peakbuf, r->max_err,
               ok ? "ok" : r->ours_ok ? "PEER WRONG" : "WRONG");
        if (sel[i].decode)
            printf("  (%.1f GFLOP/s; KV %.0f MB)", r->ours_gflops, case_kv_bytes(&sel[i]) * 1e-6);
        printf("\n");
        fflush(stdout);
        if (write_json(json, &m, recs, nrec) != 0) {
            fprintf(stderr, "bench_cpu: cannot write %s\n", json);
            return 1;
        }
    }
    printf("\nwrote %d records to %s%s\n", nrec, json,
           failures ? "" : "; every case passed its correctness checks");
    inputs_free(&in);
    free(recs);
    if (failures) fprintf(stderr, "bench_cpu: %d case(s) failed\n", failures);
    return failures ? 1 : 0;
}
