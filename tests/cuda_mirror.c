/*
 * cuda_mirror.c - runs a test's attention call on the GPU: every host allocation of the setup
 * (inputs, metadata, ALiBi slopes, sinks, the poisoned out / lse buffers, gaps included) is
 * copied to device memory with the same layout, the call gets tensors that point into those
 * copies, and out / lse come back whole. The checks of attn_common.c then read the results as
 * if a CPU kernel had written them, including "nothing was written outside the view".
 *
 * Without CUDA in the build these are stubs that skip. Without a device they skip too.
 */
#define _GNU_SOURCE /* setenv */
#include "attn_common.h"

#ifdef CFLASH_HAVE_CUDA
#include <cuda_runtime_api.h>
#include <stdlib.h>
#include <string.h>

int cuda_require_device(void)
{
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess || n == 0) {
        tskip("no CUDA device (%s): GPU cases run on the GPU machine (scripts/gpu_check.sh)",
              err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
        return 0;
    }
    return 1;
}

struct mirror {
    void *dev[8];
    int n;
};

/* A device copy of b's allocation; *t becomes b->t pointing into it. 0 on failure. */
static int mirror_buf(struct mirror *m, const struct tbuf *b, struct cflash_tensor *t)
{
    *t = b->t;
    if (!b->base)
        return 1;
    void *d = NULL;
    if (cudaMalloc(&d, b->bytes ? b->bytes : 1) != cudaSuccess)
        return 0;
    m->dev[m->n++] = d;
    if (cudaMemcpy(d, b->base, b->bytes, cudaMemcpyHostToDevice) != cudaSuccess)
        return 0;
    t->data = (char *)d + ((unsigned char *)b->t.data - b->base);
    t->device = CFLASH_DEVICE_CUDA;
    t->device_id = 0;
    return 1;
}

static int fetch_buf(const struct tbuf *b, const struct cflash_tensor *t)
{
    void *d = (char *)t->data - ((unsigned char *)b->t.data - b->base);
    return cudaMemcpy(b->base, d, b->bytes, cudaMemcpyDeviceToHost) == cudaSuccess;
}

enum cflash_status cuda_attn_call(const struct attn_setup *s, struct tbuf *out, struct tbuf *lse)
{
    struct mirror m = {{0}, 0};
    struct cflash_tensor q, k, v, vview, cuq, cuk, alibi, sinks, o, l;
    enum cflash_status st = CFLASH_STATUS_DEVICE_ERROR;
    int ok = mirror_buf(&m, &s->q, &q) && mirror_buf(&m, &s->k, &k) && mirror_buf(&m, &s->v, &v) &&
             mirror_buf(&m, &s->cuq, &cuq) && mirror_buf(&m, &s->cuk, &cuk) &&
             mirror_buf(&m, &s->alibi, &alibi) && mirror_buf(&m, &s->sinks, &sinks) &&
             mirror_buf(&m, out, &o) && (!lse || mirror_buf(&m, lse, &l));
    if (ok) {
        const struct cflash_tensor *vp = NULL;
        if (s->vp == &s->v.t) {
            vp = &v;
        } else if (s->vp == &s->vview) { /* a view of k: the same offset into k's device copy */
            vview = s->vview;
            vview.data = (char *)k.data + ((char *)s->vview.data - (char *)s->k.t.data);
            vview.device = CFLASH_DEVICE_CUDA;
            vp = &vview;
        }
        struct cflash_attn_params p = s->params;
        if (p.alibi_slopes)
            p.alibi_slopes = &alibi;
        if (p.sinks)
            p.sinks = &sinks;
        if (s->c.cuda == 2)
            setenv("CFLASH_CUDA_KERNEL", "mma", 1);
        if (s->c.cuda == 3)
            setenv("CFLASH_CUDA_WS", "0", 1);
        st = s->c.varlen ? cflash_attn_varlen(&q, &k, vp, &cuq, &cuk, s->hint_q, s->hint_k, &o,
                                              lse ? &l : NULL, &p)
                         : cflash_attn_dense(&q, &k, vp, &o, lse ? &l : NULL, &p);
        if (s->c.cuda == 2)
            unsetenv("CFLASH_CUDA_KERNEL");
        if (s->c.cuda == 3)
            unsetenv("CFLASH_CUDA_WS");
        if (st == CFLASH_STATUS_OK && cudaDeviceSynchronize() != cudaSuccess)
            st = CFLASH_STATUS_DEVICE_ERROR;
        if (!fetch_buf(out, &o) || (lse && !fetch_buf(lse, &l)))
            st = CFLASH_STATUS_DEVICE_ERROR;
    }
    for (int i = 0; i < m.n; i++)
        cudaFree(m.dev[i]);
    return st;
}

#else

int cuda_require_device(void)
{
    tskip("this build has no CUDA backend (configure with nvcc present, CFLASH_CUDA=AUTO or ON)");
    return 0;
}

enum cflash_status cuda_attn_call(const struct attn_setup *s, struct tbuf *out, struct tbuf *lse)
{
    (void)s;
    (void)out;
    (void)lse;
    return CFLASH_STATUS_UNSUPPORTED;
}

#endif

/* ---- single-buffer mirrors for the KV-cache and merge cases (test_cuda_kvcache.c declares
 * these; the caches and outputs come back whole, gaps and padding included) ---- */

#ifdef CFLASH_HAVE_CUDA

/* A device copy of b's whole allocation; *t = b->t pointing into it (device 0), *dev = the
 * allocation to free with cuda_mirror_free. A tbuf without allocation gives *t = b->t and
 * *dev = NULL. Returns 0 on failure. */
int cuda_mirror_tbuf(const struct tbuf *b, struct cflash_tensor *t, void **dev)
{
    struct mirror m = {{0}, 0};
    const int ok = mirror_buf(&m, b, t);
    *dev = m.n ? m.dev[0] : NULL;
    return ok;
}

/* The device copy of b (t from cuda_mirror_tbuf) back into b's host allocation. */
int cuda_fetch_tbuf(const struct tbuf *b, const struct cflash_tensor *t)
{
    return !b->base || fetch_buf(b, t);
}

void cuda_mirror_free(void *dev)
{
    if (dev)
        cudaFree(dev);
}

/* Waits for the device; 0 if it reports an error. */
int cuda_sync_ok(void)
{
    return cudaDeviceSynchronize() == cudaSuccess;
}

#else

int cuda_mirror_tbuf(const struct tbuf *b, struct cflash_tensor *t, void **dev)
{
    *t = b->t;
    *dev = NULL;
    return 0;
}

int cuda_fetch_tbuf(const struct tbuf *b, const struct cflash_tensor *t)
{
    (void)b;
    (void)t;
    return 0;
}

void cuda_mirror_free(void *dev) { (void)dev; }

int cuda_sync_ok(void) { return 0; }

#endif
