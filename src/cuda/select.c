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
#include <stdlib.h>
#include <string.h>

/* 16-byte copies (cp.async) need 16-byte aligned rows: base pointers and every stride of the
 * token / head / batch axes a multiple of 8 elements of 2 bytes. */
static int aligned16(const void *p, int64_t sb, int64_t st, int64_t sh) {
    return ((uintptr_t)p % 16) == 0 && sb % 8 == 0 && st % 8 == 0 && sh % 8 == 0;
}

enum cflash_status cuda_check_common(enum cflash_dtype dtype, int32_t D, int32_t Dv, const struct cuda_rows rows[3],
                                     const void *out, enum cflash_dtype out_dtype, int64_t o_sb, int64_t o_st,
                                     int64_t o_sh, int *dmax) {
    if (dtype != CFLASH_DTYPE_F16 && dtype != CFLASH_DTYPE_BF16)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA backend takes float16 or bfloat16, got %s", api_dtype_name(dtype));
    if (D % 8 || Dv % 8)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA backend needs head dims that are multiples of 8, got D=%d, Dv=%d", (int)D, (int)Dv);
    *dmax = D > Dv ? D : Dv;
    if (*dmax > 256 && !(D == 576 && Dv == 512))
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA backend takes head dims up to 256 and the MLA shape D = 576, Dv = 512, got D=%d, Dv=%d", (int)D, (int)Dv);
    for (int i = 0; i < 3; i++)
        if (!aligned16(rows[i].p, rows[i].sb, rows[i].st, rows[i].sh))
            return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "%s: the CUDA backend needs 16-byte aligned rows (pointer and strides multiples of 8 elements)", rows[i].name);
    /* out is written as pairs of elements */
    const int64_t oes = out_dtype == CFLASH_DTYPE_F32 ? 4 : 2;
    if ((uintptr_t)out % (uintptr_t)(2 * oes) || o_sb % 2 || o_st % 2 || o_sh % 2)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "out: the CUDA backend needs even strides and a pointer aligned to two elements");
    return CFLASH_STATUS_OK;
}

enum cflash_status cuda_fwd_select(const struct cuda_fwd *f, enum cuda_fwd_config *config) {
    const struct cuda_rows rows[3] = {{f->q, f->q_sb, f->q_st, f->q_sh, "q"}, {f->k, f->k_sb, f->k_st, f->k_sh, "k"},
                                      {f->v, f->v_sb, f->v_st, f->v_sh, "v"}};
    int dmax;
    enum cflash_status st = cuda_check_common(f->dtype, f->D, f->Dv, rows, f->out, f->out_dtype, f->o_sb, f->o_st, f->o_sh, &dmax);
    if (st) return st;
    if (dmax > 256)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA prefill kernels take head dims up to 256 (api.c hands the MLA shape, D = 576 and Dv = 512, to the MLA kernel)");
    if (f->Lq > INT32_MAX || f->Lk > INT32_MAX)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "q: the CUDA backend takes at most 2^31 - 1 tokens per axis");
    *config = dmax <= 64 ? CUDA_FWD_D64 : dmax <= 128 ? CUDA_FWD_D128 : CUDA_FWD_D256;
    return CFLASH_STATUS_OK;
}

enum cflash_status cuda_fwd_engine_select(enum cuda_fwd_config config, int cc_major, int cc_minor, int have_sm90a,
                                          enum cuda_fwd_engine *engine) {
    /* sm_90a code runs only on compute capability 9.0 exactly (not on later chips) */
    (void)config; /* every padded head dim has a wgmma row */
    const int wgmma_ok = have_sm90a && cc_major == 9 && cc_minor == 0;
    const char *env = getenv("CFLASH_CUDA_KERNEL");
    if (!env || !*env || strcmp(env, "auto") == 0) {
        *engine = wgmma_ok ? CUDA_ENGINE_WGMMA : CUDA_ENGINE_MMA;
        return CFLASH_STATUS_OK;
    }
    if (strcmp(env, "mma") == 0) {
        *engine = CUDA_ENGINE_MMA;
        return CFLASH_STATUS_OK;
    }
    if (strcmp(env, "wgmma") == 0) {
        if (!wgmma_ok)
            return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "CFLASH_CUDA_KERNEL: wgmma needs sm_90a code in the build and a compute capability 9.0 GPU (this one is %d.%d)",
                                    cc_major, cc_minor);
        *engine = CUDA_ENGINE_WGMMA;
        return CFLASH_STATUS_OK;
    }
    return cflash_set_error(CFLASH_STATUS_INVALID_ARGUMENT, "CFLASH_CUDA_KERNEL: unknown kernel '%s' (auto, mma or wgmma)", env);
}

int cuda_fwd_ws_select(enum cuda_fwd_config config, int causal, int64_t rows) {
    /* H100: WS at D = 64 is 0.88-0.90x of lockstep at L = 512-1024 and 1.00-1.03x from 2048 for
     * full attention, 1.02-1.10x at every L for causal; at D = 128 and 256 1.14-1.36x everywhere */
    const char *env = getenv("CFLASH_CUDA_WS");
    if (env && strcmp(env, "0") == 0) return 0;
    return config != CUDA_FWD_D64 || causal || rows > 1024;
}
