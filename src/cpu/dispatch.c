/*
 * dispatch.c - picks the CPU kernel (instruction set) at run time and hands out work items of
 * the tiled kernel to threads. Work items are (segment, kv head, query tile); each writes a
 * disjoint set of output rows and is computed the same way whichever thread takes it, so the
 * result is bitwise identical for any thread count.
 */
#include "internal.h"

#include "cpu/convert.h"

#include <math.h>
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

static const float LOG2E = 1.4426950408889634f;
static const float LN2 = 0.6931471805599453f;

void tiled_finalize(const struct attn_work *w, const struct attn_segment *sg, int64_t kvh,
                    int64_t i0, int64_t nrows, const float *m_run, const float *l_run,
                    const float *o, int64_t ostride) {
    const int64_t G = w->Hq / w->Hk, b = sg->b, Dv = w->Dv;
    for (int64_t r = 0; r < nrows; r++) {
        const int64_t i = i0 + r / G, h = kvh * G + r % G;
        float m = m_run[r], l = l_run[r], oscale;
        if (w->sinks) { /* the sink joins the denominator only */
            const float z = w->sinks[h * w->sinks_sh] * LOG2E;
            const float mm = m > z ? m : z;
            l = (m == -INFINITY ? 0.0f : l * exp2f(m - mm)) + exp2f(z - mm);
            oscale = (m == -INFINITY ? 0.0f : exp2f(m - mm)) / l;
            m = mm;
        } else {
            oscale = l > 0.0f ? 1.0f / l : 0.0f;
        }
        const float *orow = o + r * ostride;
        char *dst = w->out.data + (b * w->out.sb + i * w->out.st + h * w->out.sh) * w->out.es;
        if (w->out.dtype == CFLASH_DTYPE_F32) {
            float *df = (float *)(void *)dst;
            for (int64_t d = 0; d < Dv; d++) df[d] = orow[d] * oscale;
        } else {
            for (int64_t d = 0; d < Dv; d++) store_f32(dst, w->out.dtype, d, orow[d] * oscale);
        }
        if (w->lse_data) {
            float lse = l > 0.0f ? (m + log2f(l)) * LN2 : -INFINITY;
            if (w->sinks && m_run[r] == -INFINITY) lse = w->sinks[h * w->sinks_sh]; /* exactly z */
            w->lse_data[b * w->lse_sb + h * w->lse_sh + i * w->lse_st] = lse;
        }
    }
}

/* Split-KV (flash-decoding on the CPU). A segment whose rows fit one small tile
 * ((Lq x G) <= SPLIT_MAX_ROWS, i.e. decode and short speculative decode) gives one work item
 * per kv head; with few such items the cores would idle while one thread walks 32k keys. Its
 * keys are then cut into chunks of SPLIT_KEYS; each chunk's state is merged in chunk order
 * (SPEC.md section 7 arithmetic), so the result does not depend on the thread count: the
 * decision uses only the problem's shape. Worked numbers: decode 32:8 heads, Lk = 32768,
 * B = 1: 8 items unsplit -> 8 x 8 chunks of 4096 keys = 64 items, both cores busy to the end. */
#define SPLIT_MAX_ROWS 16
#define SPLIT_KEYS 4096
#define SPLIT_MAX_ITEMS 64 /* split only while unsplit items are fewer than this */
#define SPLIT_MAX_CHUNKS 64

struct tiled_job {
    const struct attn_work *w;
    struct tiled_geometry geo;
    const int64_t *item_start; /* [num_segments + 1]: first item of each segment */
    const int64_t *nsplit;     /* [num_segments]: key chunks (1: not split) */
    const int64_t *klo;        /* [num_segments]: first key of the segment's span */
    const int64_t *ksz;        /* [num_segments]: keys per chunk of a split segment */
    const int64_t *part_start; /* [num_segments]: first partial slot of a split segment */
    float *partial;            /* split segments: per (segment, kv head, chunk) a state */
    int64_t part_stride;       /* floats per state: nrows * (Dv + 2) */
    char *ws;
    size_t ws_stride;
    void (*item)(const struct attn_work *, const struct tiled_geometry *, int64_t, int64_t,
                 int64_t, int64_t, int64_t, float *, void *);
};

static int64_t find_segment(const int64_t *start, int64_t n, int64_t item) {
    int64_t lo = 0, hi = n;
    while (hi - lo > 1) {
        int64_t mid = (lo + hi) / 2;
        if (start[mid] <= item) lo = mid; else hi = mid;
    }
    return lo;
}

static void tiled_run_item(void *ctx, int64_t item, int32_t thread) {
    const struct tiled_job *job = ctx;
    const int64_t seg = find_segment(job->item_start, job->w->num_segments, item);
    const struct attn_segment *sg = &job->w->segments[seg];
    const int64_t rem = item - job->item_start[seg];
    void *ws = job->ws + (size_t)thread * job->ws_stride;
    const int64_t ns = job->nsplit[seg];
    if (ns > 1) { /* one tile; item = kv head x chunk */
        const int64_t kvh = rem / ns, chunk = rem % ns;
        const int64_t k0 = job->klo[seg] + chunk * job->ksz[seg];
        float *part = job->partial + (job->part_start[seg] + kvh * ns + chunk) * job->part_stride;
        job->item(job->w, &job->geo, seg, kvh, 0, k0, k0 + job->ksz[seg], part, ws);
        return;
    }
    const int64_t ntiles = (sg->q1 - sg->q0 + job->geo.rows_per_tile - 1) / job->geo.rows_per_tile;
    /* Last tiles first: under a causal mask they see the most keys, and dynamic scheduling
     * balances best when the long items start early. */
    const int64_t tile = ntiles - 1 - rem % ntiles;
    job->item(job->w, &job->geo, seg, rem / ntiles, tile, INT64_MIN, INT64_MAX, NULL, ws);
}

/* Merge the chunks of one (split segment, kv head) in chunk order and store the rows. */
static void tiled_combine(void *ctx, int64_t item, int32_t thread) {
    const struct tiled_job *job = ctx;
    const struct attn_work *w = job->w;
    /* item enumerates (split segment, kv head) pairs over all segments */
    int64_t seg = 0, acc = 0;
    for (; seg < w->num_segments; seg++) {
        if (job->nsplit[seg] <= 1) continue;
        if (item < acc + w->Hk) break;
        acc += w->Hk;
    }
    const int64_t kvh = item - acc, ns = job->nsplit[seg], Dv = w->Dv;
    const struct attn_segment *sg = &w->segments[seg];
    const int64_t nrows = (sg->q1 - sg->q0) * (w->Hq / w->Hk);
    float *o = (float *)(void *)(job->ws + (size_t)thread * job->ws_stride); /* [nrows][Dv] + m + l */
    float *m = o + nrows * Dv, *l = m + nrows;
    for (int64_t r = 0; r < nrows; r++) {
        float mx = -INFINITY;
        for (int64_t c = 0; c < ns; c++) {
            const float *p = job->partial + (job->part_start[seg] + kvh * ns + c) * job->part_stride;
            mx = p[nrows * Dv + r] > mx ? p[nrows * Dv + r] : mx;
        }
        float lsum = 0.0f;
        for (int64_t d = 0; d < Dv; d++) o[r * Dv + d] = 0.0f;
        for (int64_t c = 0; mx != -INFINITY && c < ns; c++) {
            const float *p = job->partial + (job->part_start[seg] + kvh * ns + c) * job->part_stride;
            const float mc = p[nrows * Dv + r];
            if (mc == -INFINITY) continue;
            const float scale = exp2f(mc - mx);
            lsum += p[nrows * Dv + nrows + r] * scale;
            for (int64_t d = 0; d < Dv; d++) o[r * Dv + d] += p[r * Dv + d] * scale;
        }
        m[r] = mx;
        l[r] = lsum;
    }
    tiled_finalize(w, sg, kvh, sg->q0, nrows, m, l, o, Dv);
}

enum cflash_status cpu_tiled_attention(const struct attn_work *w, enum cflash_kernel kernel,
                                       void (*prologue)(void *), void *prologue_ctx) {
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

    const int64_t nseg = w->num_segments, G = w->Hq / w->Hk;
    int64_t *buf = malloc((size_t)(6 * nseg + 1) * sizeof *buf);
    if (!buf) return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "workspace: out of memory");
    int64_t *start = buf, *nsplit = buf + nseg + 1, *klo = nsplit + nseg, *pstart = klo + nseg;
    int64_t *ntile = pstart + nseg, *ksz = ntile + nseg;
    int64_t unsplit_items = 0;
    for (int64_t s = 0; s < nseg; s++) {
        const struct attn_segment *sg = &w->segments[s];
        ntile[s] = (sg->q1 - sg->q0 + job.geo.rows_per_tile - 1) / job.geo.rows_per_tile;
        unsplit_items += ntile[s] * w->Hk;
    }
    int64_t nparts = 0, max_rows = 0;
    start[0] = 0;
    for (int64_t s = 0; s < nseg; s++) {
        const struct attn_segment *sg = &w->segments[s];
        int64_t k0 = INT64_MAX, k1 = INT64_MIN;
        for (int64_t i = sg->s0; i < sg->s1; i++) {
            k0 = w->slices[i].k0 < k0 ? w->slices[i].k0 : k0;
            k1 = w->slices[i].k1 > k1 ? w->slices[i].k1 : k1;
        }
        const int64_t rows = (sg->q1 - sg->q0) * G;
        nsplit[s] = 1;
        ksz[s] = 0;
        if (sg->s1 > sg->s0 && rows <= SPLIT_MAX_ROWS && unsplit_items < SPLIT_MAX_ITEMS &&
            k1 - k0 >= 2 * SPLIT_KEYS) {
            /* chunks of SPLIT_KEYS, at most SPLIT_MAX_CHUNKS (longer chunks beyond) */
            ksz[s] = SPLIT_KEYS;
            if ((k1 - k0 + ksz[s] - 1) / ksz[s] > SPLIT_MAX_CHUNKS)
                ksz[s] = (k1 - k0 + SPLIT_MAX_CHUNKS - 1) / SPLIT_MAX_CHUNKS;
            nsplit[s] = (k1 - k0 + ksz[s] - 1) / ksz[s];
        }
        klo[s] = sg->s1 > sg->s0 ? k0 : 0;
        pstart[s] = nparts;
        if (nsplit[s] > 1) {
            nparts += w->Hk * nsplit[s];
            max_rows = rows > max_rows ? rows : max_rows;
            start[s + 1] = start[s] + w->Hk * nsplit[s];
        } else {
            start[s + 1] = start[s] + ntile[s] * w->Hk;
        }
    }
    const int64_t n = start[nseg];
    int32_t nt = w->num_threads;
    if (nt > n) nt = (int32_t)(n > 0 ? n : 1);

    job.item_start = start;
    job.nsplit = nsplit;
    job.klo = klo;
    job.ksz = ksz;
    job.part_start = pstart;
    job.part_stride = max_rows * (w->Dv + 2);
    size_t per_thread = cpu_tiled_workspace_per_thread(w->Hq, w->Hk, w->D, w->Dv);
    const size_t combine_ws = (size_t)(max_rows * (w->Dv + 2)) * sizeof(float);
    if (combine_ws > per_thread) per_thread = combine_ws;
    job.ws_stride = (per_thread + 63) / 64 * 64;
    job.ws = aligned_alloc(64, job.ws_stride * (size_t)nt);
    job.partial = nparts > 0 ? malloc((size_t)(nparts * job.part_stride) * sizeof(float)) : NULL;
    if (!job.ws || (nparts > 0 && !job.partial)) {
        free(job.ws);
        free(job.partial);
        free(buf);
        return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "workspace: cannot allocate %zu bytes",
                                job.ws_stride * (size_t)nt);
    }
    if (prologue) prologue(prologue_ctx); /* every allocation has succeeded: nothing fails now */
    enum cflash_status st = cpu_parallel_for(nt, n, tiled_run_item, &job);
    if (st == CFLASH_STATUS_OK && nparts > 0) {
        int64_t pairs = 0;
        for (int64_t s = 0; s < nseg; s++) pairs += nsplit[s] > 1 ? w->Hk : 0;
        st = cpu_parallel_for(nt, pairs, tiled_combine, &job);
    }
    free(job.ws);
    free(job.partial);
    free(buf);
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
