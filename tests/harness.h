/*
 * harness.h - the plain test runner of cflash_tests and the helpers every test file shares:
 * named cases, CHECK macros, a seeded PRNG, fp16/bf16 conversion, strided test tensors and
 * an independent attention oracle (fp64, or a naive same-precision fp16/bf16 version).
 *
 * What it is not: a framework. Cases are plain functions registered by name from the
 * register_*() function of each test file; main() in harness.c filters and runs them.
 */
#ifndef CFLASH_TESTS_HARNESS_H
#define CFLASH_TESTS_HARNESS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "cflash.h"

/* ---- runner ---------------------------------------------------------------------------- */

typedef void (*tcase_fn)(const void *arg);

/* Registers a case; arg (argsize bytes) is copied, so a stack struct may be passed. */
void tcase_add(const char *name, tcase_fn fn, const void *arg, size_t argsize);

/* Record a failure (first one wins) / a skip for the running case. */
void tfail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void tskip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int tfailed(void);

#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (!(cond)) {                                     \
            tfail(__FILE__, __LINE__, __VA_ARGS__);        \
            return;                                        \
        }                                                  \
    } while (0)

/* Same, for helpers returning int (0 = failed). */
#define CHECK0(cond, ...)                                  \
    do {                                                   \
        if (!(cond)) {                                     \
            tfail(__FILE__, __LINE__, __VA_ARGS__);        \
            return 0;                                      \
        }                                                  \
    } while (0)

#define CHECK_STATUS(expr, want)                                                           \
    do {                                                                                   \
        enum cflash_status st_ = (expr);                                                   \
        if (st_ != (want)) {                                                               \
            tfail(__FILE__, __LINE__, "%s returned %s, want %s (last error: \"%s\")", #expr, \
                  cflash_status_string(st_), cflash_status_string(want), cflash_last_error()); \
            return;                                                                        \
        }                                                                                  \
    } while (0)

/* registration functions, one per test file */
void register_worked_tests(void);
void register_attn_tests(void);
void register_thread_tests(void);
void register_merge_tests(void);
void register_misuse_tests(void);
void register_edge_tests(void);
void register_env_tests(void);
void register_range_tests(void);
void register_mask_tests(void);
void register_kvcache_tests(void);
void register_split_tests(void);
void register_rotary_tests(void); /* cases named kvcache/rotary/... */
void register_context_tests(void);
void register_cuda_tests(void);
void register_cuda_kvcache_tests(void); /* cases named cuda/kvcache/... and cuda/merge/... */
/* `cflash_tests --env-probe`: the child process of test_env.c */
int env_probe_main(void);

/* ---- kernels --------------------------------------------------------------------------- */

#define N_ALL_KERNELS 5
#define N_FAST_KERNELS 4
/* ref, avx512bf16, avx512, avx2, generic */
extern const enum cflash_kernel all_kernels[N_ALL_KERNELS];
/* avx512bf16, avx512, avx2, generic */
extern const enum cflash_kernel fast_kernels[N_FAST_KERNELS];
const char *kname(enum cflash_kernel k);
/* 1 if available; else records a skip and returns 0. */
int require_kernel(enum cflash_kernel k);

/* ---- PRNG (splitmix64) ----------------------------------------------------------------- */

struct rng {
    uint64_t s;
};
uint64_t rng_next(struct rng *r);
double rng_uniform(struct rng *r);          /* [0, 1) */
double rng_normal(struct rng *r);           /* N(0, 1) */
int64_t rng_int(struct rng *r, int64_t n);  /* [0, n) */
uint64_t hash_str(const char *s);           /* FNV-1a, for seeds derived from names */

/* ---- dtypes ---------------------------------------------------------------------------- */

uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t h);
size_t dtype_size(enum cflash_dtype dt);
const char *dtype_name(enum cflash_dtype dt);
/* Rounds x to what dtype dt can hold (identity for fp64 "mode" -1). */
double round_to(enum cflash_dtype dt, double x);

/* ---- strided test tensors -------------------------------------------------------------- */

/* A cflash_tensor plus the allocation behind it. The allocation is exactly the span of the
 * view (no slack), so AddressSanitizer catches reads and writes outside the view. */
struct tbuf {
    struct cflash_tensor t;
    unsigned char *base;
    size_t bytes;
};

/* Layouts for tbuf_make: storage order and padding.
 *   order: storage order of the axes, outermost first (NULL = 0..ndim-1). The last entry should
 *          be ndim-1 (unit stride on the last axis).
 *   pad:   elements added after each storage axis (odd values make odd strides); 0 = dense.
 *   flip:  axis stored with a negative stride, or -1. */
void tbuf_make(struct tbuf *b, enum cflash_dtype dt, int ndim, const int64_t *shape,
               const int *order, int pad, int flip);
/* A tensor with explicit strides over a fresh allocation covering exactly its span. */
void tbuf_make_strided(struct tbuf *b, enum cflash_dtype dt, int ndim, const int64_t *shape,
                       const int64_t *stride);
void tbuf_free(struct tbuf *b);
int64_t tnumel(const struct cflash_tensor *t);
/* Offset (elements) of a multi-index. */
int64_t toffset(const struct cflash_tensor *t, const int64_t *idx);
double tget(const struct cflash_tensor *t, const int64_t *idx);
void tset(const struct cflash_tensor *t, const int64_t *idx, double v); /* rounds to dtype */
/* Fills every element with mean + sd * N(0,1), rounded to the dtype. */
void tfill_randn(const struct cflash_tensor *t, struct rng *r, double mean, double sd);
/* Logical row-major copy as doubles (caller frees). */
double *tload(const struct cflash_tensor *t);
/* Fills the whole allocation with a byte; checks that bytes outside the view are unchanged
 * (returns the number of changed bytes outside the view). */
void tbuf_poison(struct tbuf *b, unsigned char byte);
int64_t tbuf_gap_changes(const struct tbuf *b, unsigned char byte);
/* Plain tensor descriptor without memory (for misuse tests). */
struct cflash_tensor tdesc(void *data, enum cflash_dtype dt, int ndim, const int64_t *shape);

/* ---- oracle ---------------------------------------------------------------------------- */

/* One attention problem in logical, contiguous fp64 arrays; dense problems are varlen ones
 * with qoff[b] = b * Lq, koff[b] = b * Lk. */
struct oracle_in {
    int64_t B;
    const int64_t *qoff, *koff; /* [B + 1] token offsets */
    int64_t Hq, Hk, D, Dv;
    const double *q, *k, *v;    /* [Tq][Hq][D], [Tk][Hk][D], [Tk][Hk][Dv] */
    double scale;               /* already resolved (never 0 unless asked) */
    double softcap;
    int causal, align;
    int64_t wl, wr;
    const double *alibi;        /* NULL, [Hq] or [B][Hq] */
    int alibi_per_batch;
    const double *sinks;        /* NULL or [Hq] */
};

/* Visibility of key j for query i of a sequence (SPEC 3), independent of the library. */
int oracle_visible(int64_t i, int64_t j, int64_t Lq, int64_t Lk, int causal, int align,
                   int64_t wl, int64_t wr);
/* mode: CFLASH_DTYPE_F32 means exact fp64 (this is the test's own oracle); F16 / BF16 means the
 * naive same-precision implementation: scores, softmax steps, P and the output rounded to the
 * dtype, dot products accumulated in fp32 (as a matmul would).
 * o: [Tq][Hq][Dv]; lse: [Tq][Hq] (may be NULL). */
void oracle_attn(const struct oracle_in *in, enum cflash_dtype mode, double *o, double *lse);
/* One score, shared by every oracle: scale * q.k (fp32 matmul accumulation and rounding to mode
 * for the naive half-precision version), then the softcap. */
double oracle_score(enum cflash_dtype mode, const double *qi, const double *kj, int64_t D,
                    double scale, double softcap);
/* The end of one oracle row, shared by every oracle: the n visible scores s (overwritten) with
 * their maximum m, an optional sink logit, and the value row of each visible key -> out[Dv] and
 * *lse (may be NULL). n == 0: out 0, lse = the sink or -inf. mode as oracle_attn. */
void oracle_softmax_row(enum cflash_dtype mode, double *s, int64_t n, double m, const double *sink,
                        const double *const *vrows, int64_t Dv, double *out, double *lse);

/* ---- range plans (SPEC 4; range_oracle.c) ---------------------------------------------- */

/* Visibility of global cell (row, col) under one slice, straight from SPEC 4's table. */
int range_visible(int64_t qs, int64_t qe, int64_t ks, int64_t ke, int type, int64_t row,
                  int64_t col);

/* A plan as raw triplets: slice n = s[n] = {qs, qe, ks, ke, type}. */
struct rplan {
    int64_t n, cap, Tq, Tk;
    int32_t (*s)[5];
};
void rplan_init(struct rplan *p, int64_t Tq, int64_t Tk);
void rplan_add(struct rplan *p, int64_t qs, int64_t qe, int64_t ks, int64_t ke, int type);
void rplan_free(struct rplan *p);
/* Visible cells of slice n, counted cell by cell. */
int64_t rplan_slice_cells(const struct rplan *p, int64_t n);

/* The visible cells of every row, cell by cell: row r owns entries [row_start[r],
 * row_start[r + 1]) of col / slice, sorted by column. Returns 1 for a valid plan; 0 if a cell is
 * covered twice (ov_a < ov_b are then the first such pair found, at (ov_row, ov_col)). */
struct rcells {
    int64_t *row_start, *col, *slice;
    int64_t total;
    int64_t ov_a, ov_b, ov_row, ov_col;
};
int rcells_build(struct rcells *c, const struct rplan *p);
void rcells_free(struct rcells *c);

struct mask_src;
/* Attention over a plan (in->B, qoff, koff, causal, window are ignored; alibi is [Hq]), exact
 * fp64 (mode F32) or naive same-precision (F16 / BF16), as oracle_attn. mask / bias (NULL or
 * t NULL: none) index the plan's global axes as one sequence (SPEC 5's table with b = 0,
 * i = row, j = col): a cell is visible iff the plan covers it and the mask keeps it; the bias is
 * added after the softcap. o: [Tq][Hq][Dv]; lse: [Tq][Hq] or NULL; nvis: [Tq][Hq] visible-key
 * counts or NULL. */
void range_oracle_attn(const struct oracle_in *in, const struct rplan *p, const struct rcells *c,
                       const struct mask_src *mask, const struct mask_src *bias,
                       enum cflash_dtype mode, double *o, double *lse, int64_t *nvis);

/* Substring match of a whole identifier token: name occurs in msg delimited by
 * non-identifier characters. */
int msg_names(const char *msg, const char *name);
/* msg_names for any of the '|'-separated names ("k|cache|layer_id"). */
int msg_names_any(const char *msg, const char *names);

/* ---- boolean mask and additive bias (SPEC 5; mask_oracle.c) ---------------------------- */

/* A mask (uint8, nonzero = keep) or bias tensor and its layout (enum cflash_layout); t NULL:
 * none. */
struct mask_src {
    const struct cflash_tensor *t;
    int layout;
};
/* The multi-index of the element that score (b, h, i, j) reads, by SPEC 5's table (query head
 * h reads variant h / (Hq / Hv), Hv = t->shape[1]). qoff / koff: [B + 1] token offsets.
 * Returns the tensor's rank. */
int mask_elem_index(const struct mask_src *m, int64_t Hq, const int64_t *qoff,
                    const int64_t *koff, int64_t b, int64_t h, int64_t i, int64_t j, int64_t *idx);
/* oracle_attn with a mask and a bias (either may be NULL or have t NULL): masked keys are
 * invisible; the bias is added after the softcap. nvis: [Tq][Hq] visible-key counts, or NULL. */
void mask_oracle_attn(const struct oracle_in *in, const struct mask_src *mask,
                      const struct mask_src *bias, enum cflash_dtype mode, double *o, double *lse,
                      int64_t *nvis);

#endif
