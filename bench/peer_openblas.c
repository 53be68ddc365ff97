/*
 * peer_openblas.c - naive attention on OpenBLAS, the "openblas" peer of bench_cpu.
 *
 * What it is: per (b, h) and per chunk of query rows, S = scale * Q K^T with cblas_sgemm, mask
 * and softmax in plain C (compiled with -O3 -ffast-math and the host ISA, so expf vectorizes
 * through libmvec), then O = P V with cblas_sgemm. Causal chunks only multiply the key columns
 * some row of the chunk can see. For decode (Lq == 1) the G = Hq / Hk query heads of one kv
 * head form the rows of one sgemm, so K and V are streamed once per kv head, not G times.
 * What it is not: a flash kernel; it materializes a chunk of scores (bounded, not Lq x Lk).
 *
 * Threads, two modes (peer_openblas.h): OpenBLAS's own threads inside each sgemm
 * (openblas_set_num_threads(threads); the softmax between the sgemm calls is then serial), or
 * `threads` pthreads that each own whole heads and call a single-threaded sgemm.
 */
#include "peer_openblas.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

void openblas_set_num_threads(int num_threads); /* OpenBLAS extension (declared by its cblas.h) */

/* Score chunk budget: 256K floats = 1 MB, the L2 of one Zen 4 core, so S is still cache-resident
 * when the second sgemm reads it back (L=4096: 64 rows per chunk; L<=1024: 256 rows). */
#define PEER_CHUNK_FLOATS (256 * 1024)
#define PEER_MAX_CHUNK_ROWS 256
#define PEER_MAX_THREADS 256

/* Rows of S (m x n, row stride n) -> probabilities. Row r sees keys [0, vis) with
 * vis = clamp(pos0 + r * pos_step + diag + 1, 0, n) when causal, else n; the rest become 0. */
static void softmax_rows(float *S, int64_t m, int64_t n, int causal, int64_t pos0, int64_t pos_step,
                         int64_t diag) {
    for (int64_t r = 0; r < m; r++) {
        float *s = S + r * n;
        int64_t vis = n;
        if (causal) {
            vis = pos0 + r * pos_step + diag + 1;
            vis = vis < 0 ? 0 : vis > n ? n : vis;
        }
        float mx = -INFINITY;
        for (int64_t j = 0; j < vis; j++) mx = s[j] > mx ? s[j] : mx;
        float sum = 0.0f;
        for (int64_t j = 0; j < vis; j++) {
            s[j] = expf(s[j] - mx);
            sum += s[j];
        }
        float inv = vis > 0 ? 1.0f / sum : 0.0f;
        for (int64_t j = 0; j < vis; j++) s[j] *= inv;
        for (int64_t j = vis; j < n; j++) s[j] = 0.0f;
    }
}

struct peer_job {
    const float *q, *k, *v;
    float *out;
    int64_t B, Lq, Lk, Hq, Hk, D, Dv, G, diag, chunk, items;
    int causal, nthreads, failed;
    float scale;
};

/* One work item: (b, h) for prefill, (b, g) for decode. S holds chunk x Lk (or G x Lk) floats. */
static void peer_item(const struct peer_job *j, int64_t item, float *S) {
    int64_t Lq = j->Lq, Lk = j->Lk, Hq = j->Hq, Hk = j->Hk, D = j->D, Dv = j->Dv, G = j->G;
    int64_t diag = j->diag;
    if (Lq == 1) {
        /* decode: the G query heads of kv head g are G consecutive rows of stride D */
        int64_t b = item / Hk, g = item % Hk;
        const float *qg = j->q + (b * Hq + g * G) * D;
        const float *kb = j->k + b * Lk * Hk * D, *vb = j->v + b * Lk * Hk * Dv;
        float *og = j->out + (b * Hq + g * G) * Dv;
        int64_t nk = j->causal ? (diag + 1 < Lk ? diag + 1 : Lk) : Lk;
        if (nk <= 0) {
            memset(og, 0, sizeof(float) * (size_t)(G * Dv));
            return;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)G, (int)nk, (int)D, j->scale, qg,
                    (int)D, kb + g * D, (int)(Hk * D), 0.0f, S, (int)nk);
        softmax_rows(S, G, nk, j->causal, 0, 0, diag);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)G, (int)Dv, (int)nk, 1.0f, S,
                    (int)nk, vb + g * Dv, (int)(Hk * Dv), 0.0f, og, (int)Dv);
        return;
    }
    int64_t b = item / Hq, h = item % Hq, g = h / G;
    const float *qb = j->q + b * Lq * Hq * D, *kb = j->k + b * Lk * Hk * D;
    const float *vb = j->v + b * Lk * Hk * Dv;
    float *ob = j->out + b * Lq * Hq * Dv;
    for (int64_t r0 = 0; r0 < Lq; r0 += j->chunk) {
        int64_t m = Lq - r0 < j->chunk ? Lq - r0 : j->chunk;
        /* keys some row of the chunk can see: the last row's visible prefix */
        int64_t nk = j->causal ? r0 + m - 1 + diag + 1 : Lk;
        nk = nk > Lk ? Lk : nk;
        float *oc = ob + (r0 * Hq + h) * Dv;
        if (nk <= 0) {
            for (int64_t r = 0; r < m; r++) memset(oc + r * Hq * Dv, 0, sizeof(float) * (size_t)Dv);
            continue;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)nk, (int)D, j->scale,
                    qb + (r0 * Hq + h) * D, (int)(Hq * D), kb + g * D, (int)(Hk * D), 0.0f, S,
                    (int)nk);
        softmax_rows(S, m, nk, j->causal, r0, 1, diag);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)Dv, (int)nk, 1.0f, S,
                    (int)nk, vb + g * Dv, (int)(Hk * Dv), 0.0f, oc, (int)(Hq * Dv));
    }
}

struct peer_worker {
    struct peer_job *job;
    int tid;
};

static void *peer_worker_main(void *arg) {
    struct peer_worker *w = arg;
    struct peer_job *j = w->job;
    int64_t rows = j->Lq == 1 ? j->G : j->chunk;
    float *S = malloc(sizeof(float) * (size_t)(rows * j->Lk));
    if (!S) {
        j->failed = 1; /* benign race: any writer sets 1 */
        return NULL;
    }
    for (int64_t it = w->tid; it < j->items; it += j->nthreads) peer_item(j, it, S);
    free(S);
    return NULL;
}

int peer_openblas_attention(const float *q, const float *k, const float *v, float *out, int64_t B,
                            int64_t Lq, int64_t Lk, int64_t Hq, int64_t Hk, int64_t D, int64_t Dv,
                            int causal, float scale, int threads, enum peer_openblas_mode mode) {
    if (Lq == 0 || B == 0) return 0;
    if (Lk == 0) {
        memset(out, 0, sizeof(float) * (size_t)(B * Lq * Hq * Dv));
        return 0;
    }
    struct peer_job j = {q, k, v, out, B, Lq, Lk, Hq, Hk, D, Dv, Hq / Hk, Lk - Lq, 0, 0,
                         causal, 1, 0, scale};
    j.chunk = PEER_CHUNK_FLOATS / Lk;
    j.chunk = j.chunk < 1 ? 1 : j.chunk > PEER_MAX_CHUNK_ROWS ? PEER_MAX_CHUNK_ROWS : j.chunk;
    j.items = Lq == 1 ? B * Hk : B * Hq;
    if (threads < 1) threads = 1;
    if (mode == PEER_OPENBLAS_THREADS_IN_SGEMM || threads == 1) {
        openblas_set_num_threads(threads);
        struct peer_worker w = {&j, 0};
        peer_worker_main(&w);
        return j.failed ? -1 : 0;
    }
    /* PEER_OPENBLAS_THREADS_OVER_HEADS: each thread owns whole heads, sgemm single-threaded */
    openblas_set_num_threads(1);
    if (threads > PEER_MAX_THREADS) threads = PEER_MAX_THREADS;
    j.nthreads = threads;
    pthread_t tids[PEER_MAX_THREADS];
    struct peer_worker ws[PEER_MAX_THREADS];
    int started = 0;
    for (int t = 1; t < threads; t++) {
        ws[t].job = &j;
        ws[t].tid = t;
        if (pthread_create(&tids[t], NULL, peer_worker_main, &ws[t]) != 0) {
            j.failed = 1;
            break;
        }
        started = t;
    }
    ws[0].job = &j;
    ws[0].tid = 0;
    if (!j.failed) peer_worker_main(&ws[0]);
    for (int t = 1; t <= started; t++) pthread_join(tids[t], NULL);
    return j.failed ? -1 : 0;
}
