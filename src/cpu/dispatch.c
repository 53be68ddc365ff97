/*
 * dispatch.c - picks the CPU kernel (instruction set) at run time and hands out work items of
 * the tiled kernel to threads. Work items are (segment, kv head, query tile); each writes a
 * disjoint set of output rows and is computed the same way whichever thread takes it, so the
 * result is bitwise identical for any thread count.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

int cflash_kernel_available(enum cflash_kernel kernel) {
    switch (kernel) {
    case CFLASH_KERNEL_AUTO:
    case CFLASH_KERNEL_REFERENCE:
    case CFLASH_KERNEL_CPU_GENERIC:
        return 1;
#if defined(CFLASH_HAVE_X86_KERNELS)
    case CFLASH_KERNEL_CPU_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CFLASH_KERNEL_CPU_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("fma");
    case CFLASH_KERNEL_CPU_AVX512_BF16:
        return cflash_kernel_available(CFLASH_KERNEL_CPU_AVX512) &&
               __builtin_cpu_supports("avx512bf16");
#endif
    default:
        return 0;
    }
}

const char *cflash_kernel_name(enum cflash_kernel kernel) {
    switch (kernel) {
    case CFLASH_KERNEL_AUTO: return "auto";
    case CFLASH_KERNEL_REFERENCE: return "ref";
    case CFLASH_KERNEL_CPU_AVX512: return "avx512";
    case CFLASH_KERNEL_CPU_AVX2: return "avx2";
    case CFLASH_KERNEL_CPU_GENERIC: return "generic";
    case CFLASH_KERNEL_CPU_AVX512_BF16: return "avx512bf16";
    }
    return "unknown";
}

/* The best kernel this machine runs (ignoring the environment). */
static enum cflash_kernel cpu_best_kernel(void) {
    if (cflash_kernel_available(CFLASH_KERNEL_CPU_AVX512_BF16)) return CFLASH_KERNEL_CPU_AVX512_BF16;
    if (cflash_kernel_available(CFLASH_KERNEL_CPU_AVX512)) return CFLASH_KERNEL_CPU_AVX512;
    if (cflash_kernel_available(CFLASH_KERNEL_CPU_AVX2)) return CFLASH_KERNEL_CPU_AVX2;
    return CFLASH_KERNEL_CPU_GENERIC;
}

/* CFLASH_KERNEL, if set, names the kernel AUTO means; "auto" or unset: the best one. */
static int kernel_from_env(enum cflash_kernel *k) {
    const char *env = getenv("CFLASH_KERNEL");
    if (!env || !*env || strcmp(env, "auto") == 0) {
        *k = cpu_best_kernel();
        return 1;
    }
    for (int i = CFLASH_KERNEL_REFERENCE; i < CFLASH_KERNEL_COUNT; i++)
        if (strcmp(env, cflash_kernel_name((enum cflash_kernel)i)) == 0) {
            *k = (enum cflash_kernel)i;
            return 1;
        }
    return 0;
}

enum cflash_kernel cflash_kernel_auto(void) {
    enum cflash_kernel k;
    return kernel_from_env(&k) ? k : cpu_best_kernel();
}

enum cflash_status cpu_resolve_kernel(enum cflash_kernel requested, enum cflash_kernel *kernel) {
    if (requested == CFLASH_KERNEL_AUTO && !kernel_from_env(&requested))
        return cflash_set_error(CFLASH_STATUS_INVALID_ARGUMENT,
                                "CFLASH_KERNEL: unknown kernel '%s' (auto|ref|avx512bf16|avx512|avx2|generic)",
                                getenv("CFLASH_KERNEL"));
    if (!cflash_kernel_available(requested))
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "kernel: '%s' is not available on this CPU",
                                cflash_kernel_name(requested));
    *kernel = requested;
    return CFLASH_STATUS_OK;
}

struct tiled_job {
    const struct attn_work *w;
    struct tiled_geometry geo;
    const int64_t *item_start; /* [num_segments + 1]: first item of each segment */
    char *ws;
    size_t ws_stride;
    void (*item)(const struct attn_work *, const struct tiled_geometry *, int64_t, int64_t,
                 int64_t, void *);
};

static void tiled_run_item(void *ctx, int64_t item, int32_t thread) {
    const struct tiled_job *job = ctx;
    /* binary search the segment owning this item */
    int64_t lo = 0, hi = job->w->num_segments;
    while (hi - lo > 1) {
        int64_t mid = (lo + hi) / 2;
        if (job->item_start[mid] <= item) lo = mid; else hi = mid;
    }
    const struct attn_segment *sg = &job->w->segments[lo];
    const int64_t ntiles = (sg->q1 - sg->q0 + job->geo.rows_per_tile - 1) / job->geo.rows_per_tile;
    const int64_t rem = item - job->item_start[lo];
    /* Last tiles first: under a causal mask they see the most keys, and dynamic scheduling
     * balances best when the long items start early. */
    const int64_t tile = ntiles - 1 - rem % ntiles;
    job->item(job->w, &job->geo, lo, rem / ntiles, tile, job->ws + (size_t)thread * job->ws_stride);
}

enum cflash_status cpu_tiled_attention(const struct attn_work *w, enum cflash_kernel kernel) {
    struct tiled_job job;
    memset(&job, 0, sizeof job);
    job.w = w;
    tiled_geometry(&job.geo, w->Hq, w->Hk);
    switch (kernel) {
#if defined(CFLASH_HAVE_X86_KERNELS)
    case CFLASH_KERNEL_CPU_AVX512_BF16: job.item = cpu_tiled_item_avx512bf16; break;
    case CFLASH_KERNEL_CPU_AVX512: job.item = cpu_tiled_item_avx512; break;
    case CFLASH_KERNEL_CPU_AVX2: job.item = cpu_tiled_item_avx2; break;
#endif
    case CFLASH_KERNEL_CPU_GENERIC: job.item = cpu_tiled_item_generic; break;
    default: return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "kernel: '%s' is not built for this CPU", cflash_kernel_name(kernel));
    }

    int64_t *start = malloc((size_t)(w->num_segments + 1) * sizeof *start);
    if (!start) return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "workspace: out of memory");
    start[0] = 0;
    for (int64_t s = 0; s < w->num_segments; s++) {
        const struct attn_segment *sg = &w->segments[s];
        const int64_t ntiles = (sg->q1 - sg->q0 + job.geo.rows_per_tile - 1) / job.geo.rows_per_tile;
        start[s + 1] = start[s] + ntiles * w->Hk;
    }
    const int64_t n = start[w->num_segments];
    int32_t nt = w->num_threads;
    if (nt > n) nt = (int32_t)(n > 0 ? n : 1);

    job.item_start = start;
    job.ws_stride = (cpu_tiled_workspace_per_thread(w->Hq, w->Hk, w->D, w->Dv) + 63) / 64 * 64;
    job.ws = aligned_alloc(64, job.ws_stride * (size_t)nt);
    if (!job.ws) {
        free(start);
        return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "workspace: cannot allocate %zu bytes",
                                job.ws_stride * (size_t)nt);
    }
    enum cflash_status st = cpu_parallel_for(nt, n, tiled_run_item, &job);
    free(job.ws);
    free(start);
    return st;
}

size_t cflash_cpu_workspace_size(int64_t Hq, int64_t Hk, int64_t D, int64_t Dv,
                                 int32_t num_threads) {
    if (Hq < 1 || Hk < 1 || Hq % Hk || D < 1 || D > CFLASH_MAX_HEAD_DIM || Dv < 1 ||
        Dv > CFLASH_MAX_HEAD_DIM || num_threads < 0)
        return 0;
    if (num_threads == 0) num_threads = cflash_default_num_threads();
    return (cpu_tiled_workspace_per_thread(Hq, Hk, D, Dv) + 63) / 64 * 64 * (size_t)num_threads;
}
