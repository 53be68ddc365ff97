/*
 * ptx.cuh - the PTX the CUDA kernels share, each instruction in a small named function so the
 * kernels' main loops read like the algorithm: cp.async copies, ldmatrix, mma.sync m16n8k16
 * (fp16 / bf16 in, fp32 accumulators), fp32 -> 2-element packing, and the XOR swizzle of the
 * shared-memory tiles. Shared memory is addressed by 32-bit shared-window byte addresses
 * (`smem_addr`); the generic-pointer overloads convert.
 *
 * What it is not: a tensor library. Header-only, internal (static inline device functions).
 */
#ifndef CFLASH_CUDA_PTX_CUH
#define CFLASH_CUDA_PTX_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

static __device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* Key t of a paged cache: page t / size, row t % size of it. Power-of-two page sizes (1, 16, 256:
 * what the engines use) take a shift and a mask; others a division (about 25 instructions per
 * key row, which the paged decode kernel paid for every row it copied). The test is on the
 * kernel parameter `size`, so it is hoisted out of the loops. */
static __device__ __forceinline__ int page_split(int t, int size, int *pos) {
    if ((size & (size - 1)) == 0) {
        *pos = t & (size - 1);
        return t >> (31 - __clz(size));
    }
    const int p = t / size;
    *pos = t - p * size;
    return p;
}

/* 16 bytes global -> shared; pred false: no global read, the 16 bytes are zero-filled */
static __device__ __forceinline__ void cp_async16(uint32_t s, const void *gmem, bool pred) {
    const int n = pred ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
static __device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool pred) {
    cp_async16(smem_addr(smem), gmem, pred);
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
/* wait until at most N of this thread's commit groups are still in flight */
template <int N>
static __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
static __device__ __forceinline__ void cp_async_wait_all() { cp_async_wait<0>(); }

static __device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], uint32_t s) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}
static __device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *smem) { ldmatrix_x4(r, smem_addr(smem)); }
static __device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], uint32_t s) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}
static __device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *smem) {
    ldmatrix_x4_trans(r, smem_addr(smem));
}

/* c += a (16x16, row) * b (16x8, col), fp32 accumulators; the last argument picks the type */
static __device__ __forceinline__ void mma_m16n8k16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1, __half) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
static __device__ __forceinline__ void mma_m16n8k16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1, __nv_bfloat16) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

static __device__ __forceinline__ uint32_t pack2(float x, float y, __half) {
    __half2 h = __floats2half2_rn(x, y);
    return *(uint32_t *)&h;
}
static __device__ __forceinline__ uint32_t pack2(float x, float y, __nv_bfloat16) {
    __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
    return *(uint32_t *)&h;
}

/* Shared-memory tiles are rows of DP elements in 16-byte chunks; chunk c of row r is stored at
 * chunk c ^ (r % 8), so the 8 rows one ldmatrix matrix reads fall in 8 different bank groups. */
template <int DP>
static __device__ __forceinline__ int swz(int row, int chunk) {
    return row * DP + ((chunk ^ (row & 7)) << 3);
}
/* the byte address of (row, chunk) in a tile of 2-byte elements starting at `base` */
template <int DP>
static __device__ __forceinline__ uint32_t swz_addr(uint32_t base, int row, int chunk) {
    return base + 2u * (uint32_t)swz<DP>(row, chunk);
}

/* ---- Hopper (sm_90a) synchronization for warp-specialized kernels: mbarriers in shared memory
 * (a phase completes when its expected arrivals have arrived; waiters test a phase's parity),
 * cp.async completion as an mbarrier arrival, named barriers (ids 1-15; 0 is __syncthreads), and
 * the per-warpgroup register budget (setmaxnreg). Stubs elsewhere: only sm_90a kernels use them. */
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
static __device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
static __device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
}
/* wait until the phase of parity `parity` has completed */
static __device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    asm volatile("{\n.reg .pred done;\nwait_%=:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra wait_%=;\n}\n" ::"r"(bar), "r"(parity) : "memory");
}
/* one of the expected arrivals, made when this thread's cp.async copies so far have landed */
static __device__ __forceinline__ void cp_async_mbar_arrive(uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
static __device__ __forceinline__ void named_bar_sync(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
static __device__ __forceinline__ void named_bar_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
template <int N>
static __device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N>
static __device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
#else
static __device__ __forceinline__ void mbar_init(uint32_t, int) {}
static __device__ __forceinline__ void mbar_arrive(uint32_t) {}
static __device__ __forceinline__ void mbar_wait(uint32_t, uint32_t) {}
static __device__ __forceinline__ void cp_async_mbar_arrive(uint32_t) {}
static __device__ __forceinline__ void named_bar_sync(int, int) {}
static __device__ __forceinline__ void named_bar_arrive(int, int) {}
template <int N>
static __device__ __forceinline__ void setmaxnreg_inc() {}
template <int N>
static __device__ __forceinline__ void setmaxnreg_dec() {}
#endif

#endif
