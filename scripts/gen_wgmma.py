#!/usr/bin/env python3
"""Writes src/cuda/wgmma.cuh: the Hopper warpgroup MMA wrappers the prefill kernel uses.

A wgmma.mma_async instruction names every accumulator register in its operand list (N / 2 of
them for m64nNk16), which is tedious and error-prone by hand; this script writes them out.
Run it from the repository root after changing the shapes below, and commit both files.
"""
import pathlib

SHAPES = (64, 128, 256)     # N of m64nNk16 (key block for S = Q K^T, padded head dim for P V)
TYPES = (("__half", "f16"), ("__nv_bfloat16", "bf16"))


def regs(first, count):
    return ", ".join(f"%{i}" for i in range(first, first + count))


def acc_operands(n):
    return ", ".join(f'"+f"(d[{i}])' for i in range(n // 2))


def ss(n, ctype, ptype):
    k = n // 2
    return f'''static __device__ __forceinline__ void wgmma_ss_m64n{n}k16(float (&d)[{k}], uint64_t da, uint64_t db, int accumulate, {ctype}) {{
    asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{k + 2}, 0;\\n"
                 "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ptype}.{ptype} {{{regs(0, k)}}}, %{k}, %{k + 1}, p, 1, 1, 0, 0;\\n}}\\n"
                 : {acc_operands(n)}
                 : "l"(da), "l"(db), "r"(accumulate));
}}
'''


def rs(n, ctype, ptype):
    k = n // 2
    return f'''static __device__ __forceinline__ void wgmma_rs_m64n{n}k16_tb(float (&d)[{k}], const uint32_t a[4], uint64_t db, {ctype}) {{
    asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{k + 5}, 0;\\n"
                 "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ptype}.{ptype} {{{regs(0, k)}}}, {{{regs(k, 4)}}}, %{k + 4}, p, 1, 1, 1;\\n}}\\n"
                 : {acc_operands(n)}
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}}
'''


HEAD = '''/*
 * wgmma.cuh - Hopper warpgroup matrix multiply-accumulate (wgmma.mma_async, sm_90a), written by
 * scripts/gen_wgmma.py (edit that, not this). m64nNk16 with fp32 accumulators:
 *   wgmma_ss_m64nNk16     D (+)= A B, A and B in shared memory, both K-major (S = Q K^T);
 *                         accumulate = 0 overwrites D.
 *   wgmma_rs_m64nNk16_tb  D += A B, A in registers (mma.sync's A fragment layout), B in shared
 *                         memory N-major (O += P V with V stored row per key).
 * The accumulator layout of each warp of the warpgroup is mma.sync's m16n8 C layout repeated
 * N / 8 times: d[4 n + e] is row 16 (warp % 4) + lane / 4 + 8 (e / 2), column 8 n + 2 (lane % 4)
 * + e % 2. Outside an sm_90a compilation the functions are empty: the launcher selects the
 * wgmma kernel only on compute capability 9.0, where the sm_90a code is the one that runs.
 */
#ifndef CFLASH_CUDA_WGMMA_CUH
#define CFLASH_CUDA_WGMMA_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define CFLASH_WGMMA 1
'''

FENCES = '''
static __device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\\n" ::: "memory"); }
static __device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\\n" ::: "memory"); }
template <int N>
static __device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\\n" ::"n"(N) : "memory"); }
/* shared memory written by the generic proxy (cp.async, st.shared) before the tensor cores read it */
static __device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\\n" ::: "memory"); }
'''

STUBS = '''#else
#define CFLASH_WGMMA 0
static __device__ __forceinline__ void wgmma_fence() {}
static __device__ __forceinline__ void wgmma_commit() {}
template <int N>
static __device__ __forceinline__ void wgmma_wait() {}
static __device__ __forceinline__ void fence_proxy_async() {}
'''


def main():
    out = [HEAD, FENCES]
    for n in SHAPES:
        for ctype, ptype in TYPES:
            out.append(ss(n, ctype, ptype))
            out.append(rs(n, ctype, ptype))
    out.append(STUBS)
    for n in SHAPES:
        for ctype, _ in TYPES:
            out.append(f"static __device__ __forceinline__ void wgmma_ss_m64n{n}k16(float (&)[{n // 2}], uint64_t, uint64_t, int, {ctype}) {{}}\n")
            out.append(f"static __device__ __forceinline__ void wgmma_rs_m64n{n}k16_tb(float (&)[{n // 2}], const uint32_t *, uint64_t, {ctype}) {{}}\n")
    out.append('''#endif

/* keeps the compiler from moving reads or writes of an accumulator across the asynchronous
 * wgmma (the hardware writes it between the issue and the wait) */
template <int K>
static __device__ __forceinline__ void wgmma_fence_regs(float (&d)[K]) {
#pragma unroll
    for (int i = 0; i < K; i++) asm volatile("" : "+f"(d[i])::"memory");
}

/* A shared-memory matrix descriptor for the 128-byte swizzle: start address, leading and
 * stride byte offsets (PTX ISA, "Matrix Descriptor Format"). */
static __device__ __forceinline__ uint64_t wgmma_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
           ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

#endif
''')
    path = pathlib.Path(__file__).resolve().parent.parent / "src" / "cuda" / "wgmma.cuh"
    path.write_text("".join(out))


if __name__ == "__main__":
    main()
