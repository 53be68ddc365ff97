/*
 * attn_common.h - one attention test configuration (dense or varlen), the tensors built from
 * it, and the comparison of a kernel's result against the fp64 reference kernel under the
 * tolerances of SPEC.md section 1. Shared by test_attn.c, test_threads.c and test_edge.c.
 */
#ifndef CFLASH_TESTS_ATTN_COMMON_H
#define CFLASH_TESTS_ATTN_COMMON_H

#include "harness.h"

#define MAXB 6

enum { V_SEPARATE = 0, V_NULL = 1, V_VIEW_OF_K = 2 };
/* LAYOUT_MIXED: q padded, k bhsd, v with a negative sequence stride (each its own layout) */
enum { LAYOUT_BSHD = 0, LAYOUT_BHSD = 1, LAYOUT_PADDED = 2, LAYOUT_NEGSTRIDE = 3, LAYOUT_MIXED = 4 };
enum { OUT_CONTIG = 0, OUT_PADDED = 1, OUT_BHSD = 2 };
enum { LSE_CONTIG = 0, LSE_NONE = 1, LSE_PADDED = 2 };
enum { HINT_NONE = 0, HINT_EXACT = 1, HINT_LARGER = 2, HINT_HUGE = 3 };

struct attn_cfg {
    enum cflash_kernel kernel;
    enum cflash_dtype dtype;
    int out_f32;          /* out dtype fp32 instead of the input dtype */
    int varlen;
    int B;                /* batch (dense) or number of sequences (varlen) */
    int Lq, Lk;           /* dense lengths */
    int lq[MAXB], lk[MAXB]; /* varlen lengths */
    int Hq, Hk, D, Dv;
    int vmode;
    int causal, align;
    int64_t wl, wr;
    int alibi;            /* 0 none, 1 [Hq], 2 [B, Hq] */
    float softcap;
    int sinks;
    float scale;          /* 0: default */
    int layout, out_layout, lse_mode, hint;
    int threads;          /* params.num_threads */
    float qk_sd;          /* standard deviation of q and k (0: 1) */
    int kv_bcast;         /* dense: k and v stored once, batch stride 0 */
    uint64_t seed;
    int cuda;             /* run the call under test on the GPU (tests/cuda_mirror.c): 1 with the engine
                             the library picks, 2 with CFLASH_CUDA_KERNEL=mma (the mma.sync kernel),
                             3 with CFLASH_CUDA_WS=0 (the lockstep wgmma kernel) */
};

/* A config with the defaults: fp32, B=1, no masks, contiguous, seed from nothing. */
struct attn_cfg cfg_default(void);
/* Appends the parameter-named case name to buf (prefix/kernel/dtype/...). */
void cfg_name(char *buf, size_t n, const char *prefix, const struct attn_cfg *c);

struct attn_setup {
    struct attn_cfg c;
    struct tbuf q, k, v, cuq, cuk, alibi, sinks;
    struct cflash_tensor vview;
    const struct cflash_tensor *vp; /* v argument: &v.t, NULL or &vview */
    int64_t B, Tq, Tk, Hq, Hk, D, Dv;
    int64_t qoff[MAXB + 1], koff[MAXB + 1];
    int64_t hint_q, hint_k;
    struct cflash_attn_params params;
};

void attn_setup(struct attn_setup *s, const struct attn_cfg *c);
void attn_free(struct attn_setup *s);
/* out [B, Lq, Hq, Dv] / [Tq, Hq, Dv] and lse [B, Hq, Lq] / [Hq, Tq] buffers. */
void attn_make_out(const struct attn_setup *s, struct tbuf *out, enum cflash_dtype dt, int layout);
void attn_make_lse(const struct attn_setup *s, struct tbuf *lse, int mode);
enum cflash_status attn_call(const struct attn_setup *s, enum cflash_kernel kernel, int threads,
                             const struct cflash_tensor *out, const struct cflash_tensor *lse);
/* Value of out at (token t, head h, d) / lse at (t, h) in the problem's logical layout. */
double attn_out_at(const struct attn_setup *s, const struct cflash_tensor *out, int64_t t,
                   int64_t h, int64_t d);
double attn_lse_at(const struct attn_setup *s, const struct cflash_tensor *lse, int64_t t,
                   int64_t h);
/* Fills an oracle_in from the setup (arrays allocated; free with oracle_in_free). */
void attn_oracle_in(const struct attn_setup *s, struct oracle_in *in);
void oracle_in_free(struct oracle_in *in);
/* Number of visible keys of token t (same for every head). */
int64_t attn_visible_count(const struct attn_setup *s, int64_t t);

/* out/lse of the problem s against the reference kernel's fp32 oref/lref under the SPEC 1 rule
 * (fp32: relative L2 <= 1e-5; half types: max abs <= 2 e_naive + 1e-3); lse within 1e-4 (1e-3
 * half), -inf exactly. Returns 0 after recording a failure. */
int attn_compare_ref(const struct attn_setup *s, const struct cflash_tensor *oref,
                     const struct cflash_tensor *lref, const struct cflash_tensor *out,
                     const struct cflash_tensor *lse, int half, double e_naive, const char *who);

/* The whole check of one configuration: c->kernel against the reference kernel (and, for the
 * reference kernel itself, against the test's own fp64 oracle). Records failures. */
void attn_check_case(const struct attn_cfg *c);

/* ---- the GPU (tests/cuda_mirror.c; stubs that skip in builds without CUDA) ---- */
/* 1 when a CUDA device can run the tests; else records a skip saying why and returns 0. */
int cuda_require_device(void);
/* attn_call on the GPU: every input and output allocation is mirrored to device memory (gaps
 * included), the call runs on the default stream, and out / lse (whole allocations) come back. */
enum cflash_status cuda_attn_call(const struct attn_setup *s, struct tbuf *out, struct tbuf *lse);

#endif
