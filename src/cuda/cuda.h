/*
 * cuda.h - the CUDA backend's internal interface: api.c validates the public arguments (shapes,
 * dtypes, devices) exactly as for the CPU, then hands one struct cuda_fwd to the backend.
 *
 * What crosses here: device pointers and element strides, the score rules, and the metadata of
 * a packed call as device pointers (cu_seqlens are never read on the host: that would need a
 * synchronization). What does not: anything the host must validate by reading device memory.
 * The kernels clamp every sequence to the tensors' extents, so bad device metadata can give
 * wrong numbers but never an access out of bounds.
 */
#ifndef CFLASH_CUDA_H
#define CFLASH_CUDA_H

#include "cflash.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One forward attention call on the GPU (dense: cu_q == NULL; packed: cu_q, cu_k device int32). */
struct cuda_fwd {
    const void *q, *k, *v; /* v == k for V := K (or a prefix of K's head dim) */
    void *out;
    float *lse;            /* NULL or fp32 */
    enum cflash_dtype dtype, out_dtype;
    int64_t q_sb, q_st, q_sh, k_sb, k_st, k_sh, v_sb, v_st, v_sh, o_sb, o_st, o_sh;
    int64_t lse_sb, lse_sh, lse_st;
    int32_t B, Hq, Hk, D, Dv;
    int64_t Lq, Lk;        /* dense: the lengths; packed: the token totals Tq, Tk */
    const int32_t *cu_q, *cu_k;
    int64_t cu_q_s, cu_k_s;
    int64_t max_seqlen_q;  /* rows the grid covers per sequence (packed: the hint, else Tq) */
    float scale, softcap;
    int32_t causal, top_left;
    int64_t window_left, window_right;
    const float *alibi;    /* NULL or fp32 slope (b, h) at alibi[b * alibi_sb + h * alibi_sh] */
    int64_t alibi_sb, alibi_sh;
    const float *sinks;    /* NULL or fp32 [Hq] */
    int64_t sinks_sh;
    void *stream;          /* cudaStream_t; NULL = the legacy default stream */
};

/* Which kernel serves `f` (select.c; the same answer decides UNSUPPORTED). Returns OK and sets
 * *config, or UNSUPPORTED with a message naming the reason. */
enum cuda_fwd_config { CUDA_FWD_D64 = 0, CUDA_FWD_D128 = 1, CUDA_FWD_D256 = 2 };
enum cflash_status cuda_fwd_select(const struct cuda_fwd *f, enum cuda_fwd_config *config);

/* Launch (fwd_mma.cu). Asynchronous on f->stream; DEVICE_ERROR if the launch fails. */
enum cflash_status cuda_fwd_launch(const struct cuda_fwd *f, enum cuda_fwd_config config);

#ifdef __cplusplus
}
#endif

#endif
