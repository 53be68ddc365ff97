/*
 * merge.cu - cflash_merge on CUDA tensors (SPEC.md section 7): two partial attention states over
 * disjoint key sets become one, row by row:
 *   m = max(lse1, lse2), w_i = exp(lse_i - m), o = (w1 o1 + w2 o2) / (w1 + w2),
 *   lse = m + ln(w1 + w2); -inf (+) x = x; -inf (+) -inf gives o = 0, lse = -inf.
 * One warp per row (b, t, h); the lanes walk the Dv columns (coalesced when the head-dim stride
 * is 1; any strides work). The weights are computed in double once per row (exp and log in
 * double stay exact under --use_fast_math, which turns expf into the approximate __expf), so
 * the result matches the CPU merge to float rounding.
 *
 * In place: out / lse_out may alias o1 / lse1 element for element. Each element of o is read and
 * written by the same lane, and lse_out is written by lane 0 after a __syncwarp that follows
 * every lane's read of lse1 / lse2.
 *
 * What it is not: the split-KV combine of the decode kernel (decode.cu merges n states of its
 * own fp32 workspace in one pass).
 */
#include "cuda/cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

extern "C" enum cflash_status cflash_set_error(enum cflash_status st, const char *fmt, ...);

namespace {

constexpr int MERGE_WARPS = 8; /* rows per block */

__device__ __forceinline__ float load_elem(const void *p, enum cflash_dtype dt, int64_t off) {
    if (dt == CFLASH_DTYPE_F32) return ((const float *)p)[off];
    if (dt == CFLASH_DTYPE_F16) return __half2float(((const __half *)p)[off]);
    return __bfloat162float(((const __nv_bfloat16 *)p)[off]);
}

__device__ __forceinline__ void store_elem(void *p, enum cflash_dtype dt, int64_t off, float x) {
    if (dt == CFLASH_DTYPE_F32) ((float *)p)[off] = x;
    else if (dt == CFLASH_DTYPE_F16) ((__half *)p)[off] = __float2half_rn(x);
    else ((__nv_bfloat16 *)p)[off] = __float2bfloat16_rn(x);
}

__global__ void __launch_bounds__(MERGE_WARPS * 32)
merge_kernel(const cuda_merge m) {
    const int lane = threadIdx.x % 32;
    const int64_t row = (int64_t)blockIdx.x * MERGE_WARPS + threadIdx.x / 32;
    if (row >= m.B * m.T * m.H) return; /* warp-uniform */
    const int64_t h = row % m.H, t = row / m.H % m.T, b = row / (m.H * m.T);
    const float a = m.lse1[b * m.l1_s[0] + h * m.l1_s[1] + t * m.l1_s[2]];
    const float c = m.lse2[b * m.l2_s[0] + h * m.l2_s[1] + t * m.l2_s[2]];
    const float mx = fmaxf(a, c);
    float w1 = 0.0f, w2 = 0.0f, lse = -INFINITY;
    if (mx != -INFINITY) {
        const double e1 = exp((double)a - mx), e2 = exp((double)c - mx), sum = e1 + e2;
        lse = (float)(mx + log(sum));
        w1 = (float)(e1 / sum);
        w2 = (float)(e2 / sum);
    }
    const int64_t p1 = b * m.o1_s[0] + t * m.o1_s[1] + h * m.o1_s[2];
    const int64_t p2 = b * m.o2_s[0] + t * m.o2_s[1] + h * m.o2_s[2];
    const int64_t po = b * m.out_s[0] + t * m.out_s[1] + h * m.out_s[2];
    for (int64_t d = lane; d < m.Dv; d += 32) {
        /* a state of weight 0 is not read: -inf rows may hold anything (NaN included) */
        const float x = w1 == 0.0f ? 0.0f : w1 * load_elem(m.o1, m.dtype, p1 + d * m.o1_s[3]);
        const float y = w2 == 0.0f ? 0.0f : w2 * load_elem(m.o2, m.dtype, p2 + d * m.o2_s[3]);
        store_elem(m.out, m.out_dtype, po + d * m.out_s[3], x + y);
    }
    __syncwarp(); /* every lane has read lse1 / lse2 before lse_out (which may be lse1) changes */
    if (m.lse_out && lane == 0) m.lse_out[b * m.lo_s[0] + h * m.lo_s[1] + t * m.lo_s[2]] = lse;
}

} /* namespace */

extern "C" enum cflash_status cuda_merge_launch(const struct cuda_merge *m) {
    const int64_t rows = m->B * m->T * m->H;
    if (rows == 0) return CFLASH_STATUS_OK; /* Dv == 0 still writes lse_out */
    const int64_t blocks = (rows + MERGE_WARPS - 1) / MERGE_WARPS;
    if (blocks > INT32_MAX)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "o1: the CUDA merge takes at most %lld rows (B x T x H), got %lld", (long long)INT32_MAX * MERGE_WARPS, (long long)rows);
    int prev;
    const enum cflash_status st = cuda_device_enter("o1", m->device_id, &prev);
    if (st) return st;
    (void)cudaGetLastError(); /* the check below reads this launch's error, not an older one */
    merge_kernel<<<(unsigned)blocks, MERGE_WARPS * 32, 0, (cudaStream_t)m->stream>>>(*m);
    const cudaError_t err = cudaGetLastError();
    cuda_device_leave(m->device_id, prev);
    if (err != cudaSuccess)
        return cflash_set_error(CFLASH_STATUS_DEVICE_ERROR, "o1: CUDA launch of the merge kernel failed: %s", cudaGetErrorString(err));
    return CFLASH_STATUS_OK;
}
