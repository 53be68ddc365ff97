/*
 * buffers.cu - device memory for the host-side code that owns it (context.c's flash-mlm
 * entries, api.c's per-call tables): allocation (persistent, or stream-ordered for per-call
 * workspaces), strided copies in any direction, and a stream synchronization. Each call runs on
 * `device` and gives the caller's device back; failures are statuses with a message, a failed
 * runtime call's "last error" cleared.
 *
 * What it is not: a caching allocator (the stream-ordered pool of cudaMallocAsync is the cache).
 */
#include "cuda/cuda.h"

#include <cuda_runtime.h>

extern "C" enum cflash_status cflash_set_error(enum cflash_status st, const char *fmt, ...);

static enum cflash_status fail(const char *name, const char *what, cudaError_t err) {
    (void)cudaGetLastError();
    if (err == cudaErrorMemoryAllocation)
        return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "%s: out of GPU memory (%s)", name, what);
    return cflash_set_error(CFLASH_STATUS_DEVICE_ERROR, "%s: CUDA %s failed: %s", name, what, cudaGetErrorString(err));
}

extern "C" enum cflash_status cuda_mem_alloc(const char *name, int32_t device, void *stream, int ordered, size_t bytes,
                                             void **p) {
    int prev;
    enum cflash_status st = cuda_device_enter(name, device, &prev);
    if (st) return st;
    *p = NULL;
    const cudaError_t err = ordered ? cudaMallocAsync(p, bytes ? bytes : 1, (cudaStream_t)stream) : cudaMalloc(p, bytes ? bytes : 1);
    cuda_device_leave(device, prev);
    if (err != cudaSuccess) {
        *p = NULL;
        return fail(name, ordered ? "cudaMallocAsync" : "cudaMalloc", err);
    }
    return CFLASH_STATUS_OK;
}

extern "C" void cuda_mem_free(int32_t device, void *stream, int ordered, void *p) {
    int prev;
    if (!p || cuda_device_enter("cache", device, &prev)) return;
    (void)(ordered ? cudaFreeAsync(p, (cudaStream_t)stream) : cudaFree(p));
    (void)cudaGetLastError();
    cuda_device_leave(device, prev);
}

extern "C" enum cflash_status cuda_mem_copy2d(const char *name, int32_t device, void *stream, void *dst, size_t dpitch,
                                              const void *src, size_t spitch, size_t width, size_t height) {
    if (!width || !height) return CFLASH_STATUS_OK;
    int prev;
    enum cflash_status st = cuda_device_enter(name, device, &prev);
    if (st) return st;
    const cudaError_t err = cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, cudaMemcpyDefault, (cudaStream_t)stream);
    cuda_device_leave(device, prev);
    return err == cudaSuccess ? CFLASH_STATUS_OK : fail(name, "cudaMemcpy2DAsync", err);
}

extern "C" enum cflash_status cuda_mem_sync(const char *name, int32_t device, void *stream) {
    int prev;
    enum cflash_status st = cuda_device_enter(name, device, &prev);
    if (st) return st;
    const cudaError_t err = cudaStreamSynchronize((cudaStream_t)stream);
    cuda_device_leave(device, prev);
    return err == cudaSuccess ? CFLASH_STATUS_OK : fail(name, "cudaStreamSynchronize", err);
}
