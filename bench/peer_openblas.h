/*
 * peer_openblas.h - the "openblas" peer of bench_cpu: naive attention built from two OpenBLAS
 * sgemm calls per query chunk and a softmax in C. fp32 only; not part of the library.
 */
#ifndef CFLASH_BENCH_PEER_OPENBLAS_H
#define CFLASH_BENCH_PEER_OPENBLAS_H

#include <stdint.h>

/* How the peer uses `threads` threads. */
enum peer_openblas_mode {
    PEER_OPENBLAS_THREADS_IN_SGEMM = 0, /* openblas_set_num_threads(threads), heads in sequence */
    PEER_OPENBLAS_THREADS_OVER_HEADS = 1 /* threads pthreads own whole heads; sgemm on 1 thread */
};

/*
 * out = softmax(scale * q k^T, masked) v per (b, h), with kv head g = h / (Hq / Hk).
 *   q [B, Lq, Hq, D], k [B, Lk, Hk, D], v [B, Lk, Hk, Dv], out [B, Lq, Hq, Dv]: contiguous fp32.
 *   causal: bottom-right (key j visible to row i iff j <= i + Lk - Lq); rows with no visible
 *   key are written as 0.
 * Scores are materialized one chunk of query rows at a time (at most PEER_CHUNK_FLOATS floats),
 * never Lq x Lk. Returns 0, or -1 when a chunk buffer or a thread cannot be had.
 */
int peer_openblas_attention(const float *q, const float *k, const float *v, float *out, int64_t B,
                            int64_t Lq, int64_t Lk, int64_t Hq, int64_t Hk, int64_t D, int64_t Dv,
                            int causal, float scale, int threads, enum peer_openblas_mode mode);

#endif /* CFLASH_BENCH_PEER_OPENBLAS_H */
