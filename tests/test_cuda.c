/*
 * test_cuda.c - the CUDA backend: the same configurations as test_attn.c, run on the GPU and
 * compared with the CPU fp64 reference kernel under the SPEC.md section 1 tolerance (poisoned
 * outputs, gaps checked), and the routing rules that need no GPU: what the CUDA backend does
 * not serve is UNSUPPORTED, mixed devices are INVALID_ARGUMENT, and without a device a call
 * returns DEVICE_ERROR instead of crashing.
 *
 * GPU cases skip (and say so) in builds without CUDA and on machines without a device.
 */
#include "attn_common.h"

#include <stdlib.h>
#include <string.h>
#ifdef CFLASH_HAVE_CUDA
#include "cuda/cuda.h"
#include <cuda_runtime_api.h>
#endif

static void run_case(const void *arg) { attn_check_case((const struct attn_cfg *)arg); }

static int n_cases;

/* each case three times: with the engine and kernel the library picks (on an H100 the
 * warp-specialized wgmma kernel for plain calls), with the mma.sync kernel forced (what other
 * GPUs run), and with the lockstep wgmma kernel (CFLASH_CUDA_WS=0; masks and plans always run
 * it) */
static void add(struct attn_cfg c)
{
    static const char *prefix[3] = {"cuda", "cuda/mma", "cuda/lockstep"};
    c.kernel = CFLASH_KERNEL_AUTO;
    c.seed = 0xc0da0000u + (uint64_t)n_cases++;
    for (int engine = 1; engine <= 3; engine++) {
        char name[512];
        c.cuda = engine;
        cfg_name(name, sizeof name, prefix[engine - 1], &c);
        tcase_add(name, run_case, &c, sizeof c);
    }
}

static struct attn_cfg base(enum cflash_dtype dt, int D, int Lq, int Lk)
{
    struct attn_cfg c = cfg_default();
    c.dtype = dt;
    c.D = c.Dv = D;
    c.Lq = Lq;
    c.Lk = Lk;
    c.Hq = 4;
    c.Hk = 2;
    return c;
}

static void add_grid(void)
{
    static const enum cflash_dtype dts[2] = {CFLASH_DTYPE_F16, CFLASH_DTYPE_BF16};
    static const int dims[6] = {64, 128, 256, 40, 96, 136};
    for (int t = 0; t < 2; t++)
        for (int d = 0; d < 6; d++)
            for (int mode = 0; mode < 3; mode++) {
                struct attn_cfg c = base(dts[t], dims[d], 130, 130);
                c.B = 2;
                c.causal = mode > 0;
                c.align = mode == 2 ? CFLASH_ALIGN_TOP_LEFT : CFLASH_ALIGN_BOTTOM_RIGHT;
                add(c);
            }
    /* odd lengths, Lq != Lk in both directions, both alignments */
    static const int lens[6][2] = {{1, 17}, {17, 1023}, {1023, 17}, {1, 1023}, {1023, 1023}, {1100, 1100}};
    for (int i = 0; i < 6; i++) /* 1100: D = 64 full attention takes the WS kernel past 1024 rows */
        for (int mode = 0; mode < 3; mode++) {
            struct attn_cfg c = base(CFLASH_DTYPE_F16, 64, lens[i][0], lens[i][1]);
            c.Hq = 2;
            c.Hk = 1;
            c.causal = mode > 0;
            c.align = mode == 2 ? CFLASH_ALIGN_TOP_LEFT : CFLASH_ALIGN_BOTTOM_RIGHT;
            add(c);
        }
}

static void add_features(void)
{
    for (int t = 0; t < 2; t++) {
        const enum cflash_dtype dt = t ? CFLASH_DTYPE_BF16 : CFLASH_DTYPE_F16;
        struct attn_cfg c;
        static const int64_t windows[4][2] = {{32, 0}, {16, 16}, {-1, 8}, {70, -1}};
        for (int w = 0; w < 4; w++) {
            c = base(dt, 128, 200, 300);
            c.wl = windows[w][0];
            c.wr = windows[w][1];
            add(c);
            c.causal = 1;
            add(c);
        }
        c = base(dt, 128, 200, 300); c.softcap = 30.0f; add(c);
        c = base(dt, 128, 200, 300); c.softcap = 5.0f; c.causal = 1; add(c);
        /* softcap alone (wgmma: half of the exp2 on the FMA pipe): large logits, long rows, fp32
         * out, window and sinks */
        c = base(dt, 64, 1023, 1023); c.softcap = 10.0f; c.causal = 1; c.qk_sd = 3.0f; c.Hq = 2; c.Hk = 1; add(c);
        c = base(dt, 256, 200, 300); c.softcap = 50.0f; c.sinks = 1; c.wl = 70; c.wr = 3; add(c);
        c = base(dt, 128, 200, 300); c.softcap = 2.0f; c.out_f32 = 1; c.qk_sd = 3.0f; add(c);
        c = base(dt, 128, 200, 300); c.alibi = 1; c.causal = 1; add(c);
        c = base(dt, 128, 200, 300); c.alibi = 2; c.B = 2; add(c);
        /* ALiBi with no key right of the diagonal (the column-term path: the row's term goes to
         * the sink and the LSE), and its edges: top-left with Lk > Lq (same path), with Lk < Lq
         * (the general path), softcap, long rows */
        c = base(dt, 128, 200, 300); c.alibi = 2; c.B = 2; c.causal = 1; c.sinks = 1; add(c);
        c = base(dt, 128, 200, 300); c.alibi = 1; c.causal = 1; c.align = CFLASH_ALIGN_TOP_LEFT; add(c);
        c = base(dt, 128, 300, 200); c.alibi = 1; c.causal = 1; c.align = CFLASH_ALIGN_TOP_LEFT; c.sinks = 1; add(c);
        c = base(dt, 64, 200, 300); c.alibi = 1; c.causal = 1; c.softcap = 15.0f; add(c);
        c = base(dt, 256, 1023, 1023); c.alibi = 2; c.B = 2; c.causal = 1; c.sinks = 1; c.Hq = 2; c.Hk = 1; add(c);
        c = base(dt, 128, 200, 300); c.sinks = 1; add(c);
        c = base(dt, 128, 300, 200); c.sinks = 1; c.causal = 1; add(c); /* empty rows: sink only */
        c = base(dt, 128, 300, 200); c.causal = 1; add(c);              /* empty rows: 0, -inf */
        c = base(dt, 128, 200, 300); c.scale = 0.3f; add(c);
        c = base(dt, 128, 200, 300); c.out_f32 = 1; c.causal = 1; add(c);
        c = base(dt, 128, 200, 300); c.lse_mode = LSE_NONE; add(c);
        c = base(dt, 128, 200, 300); c.layout = LAYOUT_BHSD; c.out_layout = OUT_BHSD; c.causal = 1; add(c);
        c = base(dt, 128, 200, 300); c.vmode = V_NULL; add(c);
        c = base(dt, 128, 200, 300); c.Dv = 64; add(c);
        c = base(dt, 64, 200, 300); c.Dv = 128; add(c);
        c = base(dt, 128, 200, 300); c.vmode = V_VIEW_OF_K; c.Dv = 64; add(c);
        c = base(dt, 128, 200, 300); c.kv_bcast = 1; c.B = 3; add(c);
        c = base(dt, 128, 200, 300); c.Hq = 8; c.Hk = 1; c.causal = 1; add(c);
        c = base(dt, 64, 200, 300); c.qk_sd = 3.0f; add(c); /* large logits */
    }
    /* MLA (D 576, Dv 512, v a view of k's first 512 columns, one latent head): dense calls run
     * the cache path's MLA kernel (64-row tiles of Lq x 16 heads); every score rule */
    for (int i = 0; i < 8; i++) {
        struct attn_cfg c = base(i % 2 ? CFLASH_DTYPE_BF16 : CFLASH_DTYPE_F16, 576, 33, 300);
        c.Dv = 512;
        c.vmode = V_VIEW_OF_K;
        c.Hq = 16;
        c.Hk = 1;
        switch (i) {
        case 0: break;
        case 1: c.causal = 1; break;
        case 2: c.causal = 1; c.align = CFLASH_ALIGN_TOP_LEFT; c.B = 2; break;
        case 3: c.wl = 40; c.wr = 5; c.sinks = 1; break;
        case 4: c.alibi = 2; c.B = 2; c.softcap = 20.0f; break;
        case 5: c.Lq = 1; c.Lk = 1023; c.out_f32 = 1; c.lse_mode = LSE_NONE; break;
        case 6: c.Lq = 130; c.Lk = 130; c.causal = 1; break; /* 2080 rows: 33 tiles */
        case 7: c.Lq = 300; c.Lk = 200; c.causal = 1; c.Hq = 4; break; /* empty rows */
        }
        add(c);
    }
}

static void add_varlen(void)
{
    static const int sets[3][2][4] = {
        {{0, 17, 130, 1}, {5, 0, 200, 64}},
        {{1023, 1, 300, 0}, {1023, 700, 0, 9}},
        {{64, 128, 65, 127}, {64, 128, 65, 127}},
    };
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < 3; i++)
            for (int mode = 0; mode < 4; mode++) {
                struct attn_cfg c = base(t ? CFLASH_DTYPE_BF16 : CFLASH_DTYPE_F16, i == 1 ? 64 : 128, 0, 0);
                c.varlen = 1;
                c.B = 4;
                memcpy(c.lq, sets[i][0], sizeof sets[i][0]);
                memcpy(c.lk, sets[i][1], sizeof sets[i][1]);
                c.causal = mode == 1 || mode == 2;
                c.align = mode == 2 ? CFLASH_ALIGN_TOP_LEFT : CFLASH_ALIGN_BOTTOM_RIGHT;
                c.hint = mode == 3 ? HINT_EXACT : HINT_NONE;
                if (mode == 3) {
                    c.wl = 20;
                    c.wr = 3;
                    c.alibi = 2;
                    c.sinks = 1;
                }
                add(c);
            }
}

/* ---- routing rules that need no device (fake device pointers: nothing may be launched) ---- */

#define FAKE ((void *)(uintptr_t)0x10000)

static struct cflash_tensor dev4(enum cflash_dtype dt, int64_t B, int64_t L, int64_t H, int64_t D)
{
    int64_t sh[4] = {B, L, H, D};
    struct cflash_tensor t = tdesc(FAKE, dt, 4, sh);
    t.device = CFLASH_DEVICE_CUDA;
    return t;
}

#ifdef CFLASH_HAVE_CUDA
#define WANT_MIXED CFLASH_STATUS_INVALID_ARGUMENT
#else
#define WANT_MIXED CFLASH_STATUS_UNSUPPORTED
#endif

static void misuse_dense(const void *arg)
{
    const int which = *(const int *)arg;
    enum cflash_dtype dt = CFLASH_DTYPE_F16;
    int64_t D = 64;
    if (which == 0) dt = CFLASH_DTYPE_F32;
    if (which == 1) D = 20;
    struct cflash_tensor q = dev4(dt, 1, 16, 2, D), k = dev4(dt, 1, 16, 2, D), v = dev4(dt, 1, 16, 2, D),
                         o = dev4(dt, 1, 16, 2, D);
    struct cflash_attn_params p = cflash_attn_params_default();
    uint8_t keep[16];
    int64_t msh[4] = {1, 1, 1, 16};
    struct cflash_tensor mask = tdesc(keep, CFLASH_DTYPE_U8, 4, msh);
    enum cflash_status want = CFLASH_STATUS_UNSUPPORTED;
    const char *arg_name = "q";
    if (which == 2) { k.device = CFLASH_DEVICE_CPU; want = WANT_MIXED; arg_name = "k"; }
    if (which == 3) { p.kernel = CFLASH_KERNEL_REFERENCE; arg_name = "kernel"; }
    if (which == 4) { p.mask = &mask; want = WANT_MIXED; arg_name = "mask"; } /* a host mask for device q */
    if (which == 5) { q.stride[1] = 2 * 64 + 4; arg_name = "q"; } /* rows not 16-byte aligned */
    if (which == 6) { o.device_id = 1; want = WANT_MIXED; arg_name = "out"; }
    if (which == 7 || which == 8) { /* MLA's D with Dv 576 (not the MLA pair), or v not a view of k */
        q = dev4(dt, 1, 16, 2, 576); k = dev4(dt, 1, 16, 1, 576); o = dev4(dt, 1, 16, 2, 512);
        v = k;
        v.shape[3] = 512;
        if (which == 7) { v = k; o = dev4(dt, 1, 16, 2, 576); }
        else { v = dev4(dt, 1, 16, 1, 512); arg_name = "v"; }
    }
#ifndef CFLASH_HAVE_CUDA
    arg_name = "q"; /* every CUDA tensor is refused first */
#endif
    CHECK_STATUS(cflash_attn_dense(&q, &k, &v, &o, NULL, &p), want);
    CHECK(strncmp(cflash_last_error(), arg_name, strlen(arg_name)) == 0, "message \"%s\" does not name %s",
          cflash_last_error(), arg_name);
}

static void misuse_entry(const void *arg)
{
    const int which = *(const int *)arg;
    struct cflash_tensor q4 = dev4(CFLASH_DTYPE_F16, 1, 16, 2, 64), k4 = q4, v4 = q4, o4 = q4;
    int64_t sh3[3] = {16, 2, 64}, shl[2] = {2, 16}, shc[1] = {2};
    struct cflash_tensor q3 = tdesc(FAKE, CFLASH_DTYPE_F16, 3, sh3), lse = tdesc(FAKE, CFLASH_DTYPE_F32, 2, shl);
    q3.device = lse.device = CFLASH_DEVICE_CUDA;
    int32_t cu[2] = {0, 16};
    struct cflash_tensor cuq = tdesc(cu, CFLASH_DTYPE_I32, 1, shc);
    enum cflash_status st;
    if (which == 0) { /* merge */
#ifdef CFLASH_HAVE_CUDA
        /* served on CUDA (test_cuda_kvcache.c): a host o2 with a device o1 is a mixed-device
         * call, refused before anything is launched on these fake pointers */
        struct cflash_tensor o2 = q3;
        o2.device = CFLASH_DEVICE_CPU;
        st = cflash_merge(&q3, &lse, &o2, &lse, &q3, &lse);
        CHECK(st == CFLASH_STATUS_INVALID_ARGUMENT && strncmp(cflash_last_error(), "o2", 2) == 0,
              "host o2 with device o1: %s (%s)", cflash_status_string(st), cflash_last_error());
        return;
#endif
        st = cflash_merge(&q3, &lse, &q3, &lse, &q3, &lse);
    } else if (which == 1) { /* kvcache */
        int32_t lens[1] = {4};
        int64_t shs[1] = {1};
        struct cflash_tensor seqlens = tdesc(lens, CFLASH_DTYPE_I32, 1, shs);
        struct cflash_kvcache cache = {.k_cache = &k4, .v_cache = &v4, .cache_seqlens = &seqlens};
        st = cflash_attn_kvcache(&q4, &cache, NULL, NULL, &o4, NULL, NULL);
#ifdef CFLASH_HAVE_CUDA /* served on CUDA (test_cuda_kvcache.c): host metadata is a mixed-device call */
        CHECK(st == CFLASH_STATUS_INVALID_ARGUMENT && strncmp(cflash_last_error(), "cache_seqlens", 13) == 0,
              "host cache_seqlens with device q: %s (%s)", cflash_status_string(st), cflash_last_error());
        return;
#endif
    } else if (which == 2) { /* flash-mlm */
#ifdef CFLASH_HAVE_CUDA
        /* served on CUDA (python/tests/test_gpu.py): host metadata for device q is a mixed-device
         * call, and a bad argument is refused before any device memory is touched */
        st = cflash_attn_mlm(&q3, &q3, &q3, &cuq, NULL, NULL, &q3, NULL, NULL);
        CHECK(st == CFLASH_STATUS_INVALID_ARGUMENT && strncmp(cflash_last_error(), "cu_seqlens_q", 12) == 0,
              "host cu_seqlens_q with device q: %s (%s)", cflash_status_string(st), cflash_last_error());
        struct cflash_mlm_args a = {0};
        a.cumulative = 1; /* needs a packed call */
        st = cflash_attn_mlm(&q4, &k4, &v4, NULL, NULL, &a, &o4, NULL, NULL);
        CHECK(st == CFLASH_STATUS_INVALID_ARGUMENT && strncmp(cflash_last_error(), "cumulative", 10) == 0,
              "dense cumulative: %s (%s)", cflash_status_string(st), cflash_last_error());
        return;
#endif
        st = cflash_attn_mlm(&q4, &k4, &v4, NULL, NULL, NULL, &o4, NULL, NULL);
    } else { /* varlen with host cu_seqlens for device tensors */
        st = cflash_attn_varlen(&q3, &q3, &q3, &cuq, &cuq, -1, -1, &q3, NULL, NULL);
#ifdef CFLASH_HAVE_CUDA
        CHECK(st == CFLASH_STATUS_INVALID_ARGUMENT && strncmp(cflash_last_error(), "cu_seqlens_q", 12) == 0,
              "host cu_seqlens with device q: %s (%s)", cflash_status_string(st), cflash_last_error());
        return;
#endif
    }
    CHECK(st == CFLASH_STATUS_UNSUPPORTED, "got %s (%s), want UNSUPPORTED", cflash_status_string(st), cflash_last_error());
}

/* A valid call on a machine without a GPU: DEVICE_ERROR with a message, never a crash. */
static void no_device(const void *arg)
{
    (void)arg;
#ifdef CFLASH_HAVE_CUDA
    int n = 0;
    if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) { /* fake pointers must not reach a GPU */
        tskip("a CUDA device is present (this case checks the no-device path)");
        return;
    }
    struct cflash_tensor q = dev4(CFLASH_DTYPE_F16, 1, 16, 2, 64);
    struct cflash_attn_params p = cflash_attn_params_default();
    enum cflash_status st = cflash_attn_dense(&q, &q, &q, &q, NULL, &p);
    CHECK(st == CFLASH_STATUS_DEVICE_ERROR, "got %s (%s), want DEVICE_ERROR", cflash_status_string(st), cflash_last_error());
#else
    tskip("this build has no CUDA backend");
#endif
}

/* The wgmma engine's schedule (select.c, a pure host function, so it runs without a GPU):
 * warp-specialized but at D = 64 full attention over <= 1024 rows; CFLASH_CUDA_WS=0 forces the
 * lockstep kernel. */
static void ws_select(const void *arg)
{
    (void)arg;
#ifdef CFLASH_HAVE_CUDA
    static const struct { enum cuda_fwd_config config; int causal; int64_t rows; int want; } cases[] = {
        {CUDA_FWD_D64, 0, 512, 0},   {CUDA_FWD_D64, 0, 1024, 0},  {CUDA_FWD_D64, 0, 1025, 1},
        {CUDA_FWD_D64, 1, 512, 1},   {CUDA_FWD_D128, 0, 1, 1},    {CUDA_FWD_D128, 1, 16384, 1},
        {CUDA_FWD_D256, 0, 512, 1},  {CUDA_FWD_D256, 1, 100, 1},
    };
    unsetenv("CFLASH_CUDA_WS");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const int got = cuda_fwd_ws_select(cases[i].config, cases[i].causal, cases[i].rows);
        CHECK(got == cases[i].want, "case %zu (config %d, causal %d, rows %lld): %d, want %d", i, (int)cases[i].config,
              cases[i].causal, (long long)cases[i].rows, got, cases[i].want);
    }
    setenv("CFLASH_CUDA_WS", "0", 1);
    const int forced = cuda_fwd_ws_select(CUDA_FWD_D128, 1, 16384);
    setenv("CFLASH_CUDA_WS", "1", 1);
    const int on = cuda_fwd_ws_select(CUDA_FWD_D128, 1, 16384);
    unsetenv("CFLASH_CUDA_WS");
    CHECK(forced == 0, "CFLASH_CUDA_WS=0 still picks the warp-specialized kernel");
    CHECK(on == 1, "CFLASH_CUDA_WS=1 does not pick the warp-specialized kernel");
#else
    tskip("this build has no CUDA backend");
#endif
}

void register_cuda_tests(void)
{
    add_grid();
    add_features();
    add_varlen();
    static const char *dense_names[9] = {"fp32", "D=20", "mixed_devices", "forced_cpu_kernel", "host_mask",
                                         "unaligned_rows", "other_device_id", "mla_dv_576", "mla_separate_v"};
    for (int i = 0; i < 9; i++) {
        char name[96];
        snprintf(name, sizeof name, "cuda/misuse/dense/%s", dense_names[i]);
        tcase_add(name, misuse_dense, &i, sizeof i);
    }
    tcase_add("cuda/no_device", no_device, NULL, 0);
    tcase_add("cuda/select/ws", ws_select, NULL, 0);
    static const char *entry_names[4] = {"merge", "kvcache", "mlm", "varlen_host_cu_seqlens"};
    for (int i = 0; i < 4; i++) {
        char name[96];
        snprintf(name, sizeof name, "cuda/misuse/%s", entry_names[i]);
        tcase_add(name, misuse_entry, &i, sizeof i);
    }
}
