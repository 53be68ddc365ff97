/*
 * select.c - which CUDA kernel serves a call, as a pure host function (no CUDA calls): the
 * launcher asks it for the configuration, and api.c's UNSUPPORTED answers come from it too.
 *
 * The tile table itself lives beside the kernel (fwd_mma.cu: one row per padded head dim);
 * this file decides which row, and whether any row can serve the call.
 */
#include "cuda/cuda.h"
#include "internal.h"

#include <stdint.h>

/* 16-byte copies (cp.async) need 16-byte aligned rows: base pointers and every stride of the
 * token / head / batch axes a multiple of 8 elements of 2 bytes. */
static int aligned16(const void *p, int64_t sb, int64_t st, int64_t sh) {
    return ((uintptr_t)p % 16) == 0 && sb % 8 == 0 && st % 8 == 0 && sh % 8 == 0;
}

enum cflash_status cuda_fwd_select(const struct cuda_fwd *f, enum cuda_fwd_config *config) {
    if (f->dtype != CFLASH_DTYPE_F16 && f->dtype != CFLASH_DTYPE_BF16)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA backend takes float16 or bfloat16, got %s", api_dtype_name(f->dtype));
    if (f->D % 8 || f->Dv % 8)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA backend needs head dims that are multiples of 8, got D=%d, Dv=%d", (int)f->D, (int)f->Dv);
    const int dmax = f->D > f->Dv ? f->D : f->Dv;
    if (dmax > 256)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA backend supports head dims up to 256, got %d", dmax);
    if (!aligned16(f->q, f->q_sb, f->q_st, f->q_sh))
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA backend needs 16-byte aligned rows (pointer and strides multiples of 8 elements)");
    if (!aligned16(f->k, f->k_sb, f->k_st, f->k_sh))
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "k: the CUDA backend needs 16-byte aligned rows (pointer and strides multiples of 8 elements)");
    if (!aligned16(f->v, f->v_sb, f->v_st, f->v_sh))
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "v: the CUDA backend needs 16-byte aligned rows (pointer and strides multiples of 8 elements)");
    /* out is written as pairs of elements */
    const int64_t oes = f->out_dtype == CFLASH_DTYPE_F32 ? 4 : 2;
    if ((uintptr_t)f->out % (uintptr_t)(2 * oes) || f->o_sb % 2 || f->o_st % 2 || f->o_sh % 2)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "out: the CUDA backend needs even strides and a pointer aligned to two elements");
    if (f->Lq > INT32_MAX || f->Lk > INT32_MAX)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA backend takes at most 2^31 - 1 tokens per axis");
    *config = dmax <= 64 ? CUDA_FWD_D64 : dmax <= 128 ? CUDA_FWD_D128 : CUDA_FWD_D256;
    return CFLASH_STATUS_OK;
}
