/*
 * test_attn.c - every kernel against the fp64 reference kernel (and the reference kernel
 * against the test's own oracle) on fresh random inputs: a deterministic list that walks each
 * axis of the problem (dtypes, head dims, GQA, lengths, masks, extras, layouts, varlen), then
 * a seeded random sweep over all of them at once.
 *
 * Case names: dense/..., varlen/..., random/... followed by the parameters (attn_common.c).
 */
#include "attn_common.h"

#include <string.h>

static void run_case(const void *arg) { attn_check_case((const struct attn_cfg *)arg); }

static void add(const char *prefix, const struct attn_cfg *c)
{
    char name[512];
    cfg_name(name, sizeof name, prefix, c);
    tcase_add(name, run_case, c, sizeof *c);
}

static struct attn_cfg base_dense(enum cflash_kernel k, enum cflash_dtype dt)
{
    struct attn_cfg c = cfg_default();
    c.kernel = k;
    c.dtype = dt;
    c.B = 2;
    c.Lq = 17;
    c.Lk = 33;
    c.Hq = 4;
    c.Hk = 2;
    c.D = 64;
    c.Dv = 64;
    return c;
}

static const enum cflash_dtype dtypes[3] = {CFLASH_DTYPE_F32, CFLASH_DTYPE_F16, CFLASH_DTYPE_BF16};

static void register_dense(enum cflash_kernel k)
{
    /* dtypes and out dtypes */
    for (int di = 0; di < 3; di++)
        for (int of = 0; of < 2; of++) {
            if (of && dtypes[di] == CFLASH_DTYPE_F32)
                continue;
            struct attn_cfg c = base_dense(k, dtypes[di]);
            c.out_f32 = of;
            c.causal = 1;
            add("dense", &c);
        }
    /* head dims, equal D and Dv */
    static const int Ds[] = {1, 7, 32, 64, 80, 96, 128, 192, 256};
    for (size_t i = 0; i < sizeof Ds / sizeof Ds[0]; i++)
        for (int di = 0; di < 3; di++) {
            struct attn_cfg c = base_dense(k, dtypes[di]);
            c.D = c.Dv = Ds[i];
            if (Ds[i] >= 192) {
                c.Lq = 9;
                c.Lk = 21;
            }
            add("dense", &c);
        }
    /* D != Dv, V := K, MLA view */
    for (int di = 0; di < 3; di++) {
        struct attn_cfg c = base_dense(k, dtypes[di]);
        c.D = 64;
        c.Dv = 32;
        add("dense", &c);
        c.D = 32;
        c.Dv = 96;
        c.causal = 1;
        add("dense", &c);
        c = base_dense(k, dtypes[di]);
        c.vmode = V_NULL;
        c.Hq = 4;
        c.Hk = 1;
        add("dense", &c);
        c = base_dense(k, dtypes[di]);
        c.vmode = V_VIEW_OF_K;
        c.D = 576;
        c.Dv = 512;
        c.Hq = 4;
        c.Hk = 1;
        c.Lq = 5;
        c.Lk = 13;
        c.B = 1;
        c.causal = 1;
        add("dense", &c);
        c.vmode = V_NULL; /* MLA with V := K at D = 576 */
        c.Dv = 576;
        c.Lq = 3;
        c.Lk = 7;
        add("dense", &c);
    }
    /* GQA ratios */
    /* G = Hq / Hk from 1 to 160 (more heads per K/V head than rows per query tile) */
    static const int H[][2] = {{4, 4}, {8, 2}, {7, 1}, {14, 2}, {3, 1}, {1, 1}, {12, 4}, {32, 1}, {160, 1}};
    for (size_t i = 0; i < sizeof H / sizeof H[0]; i++)
        for (int di = 0; di < 3; di += 2) {
            struct attn_cfg c = base_dense(k, dtypes[di]);
            c.Hq = H[i][0];
            c.Hk = H[i][1];
            c.causal = 1;
            add("dense", &c);
        }
    /* lengths, including 0 and 1, Lq > Lk, Lq < Lk, odd lengths */
    static const int L[][2] = {{0, 5},   {5, 0},    {0, 0},   {1, 1},     {1, 33},   {33, 1},
                               {17, 33}, {33, 17},  {64, 64}, {129, 129}, {129, 17}, {3, 300},
                               {2, 5},   {5, 2},    {300, 300}, {1, 300}, {257, 300}, {300, 65}};
    for (size_t i = 0; i < sizeof L / sizeof L[0]; i++)
        for (int causal = 0; causal < 2; causal++) {
            struct attn_cfg c = base_dense(k, causal ? CFLASH_DTYPE_BF16 : CFLASH_DTYPE_F32);
            c.Lq = L[i][0];
            c.Lk = L[i][1];
            c.causal = causal;
            if (c.Lq * c.Lk > 4000) {
                c.B = 1;
                c.Hq = 2;
                c.Hk = 1;
            }
            add("dense", &c);
        }
    {
        struct attn_cfg c = base_dense(k, CFLASH_DTYPE_F32);
        c.B = 0;
        add("dense", &c);
        c.B = 3;
        c.Lq = 9;
        c.Lk = 9;
        c.causal = 1;
        add("dense", &c);
    }
    /* masks: causal off / bottom-right / top-left (and window alignment) x windows */
    static const int64_t W[][2] = {{-1, -1}, {4, -1}, {-1, 3}, {0, 0}, {2, 1}, {5, 5}, {0, -1}, {40, 2}};
    static const int lens[][2] = {{17, 33}, {33, 17}};
    for (int mode = 0; mode < 4; mode++)
        for (size_t w = 0; w < sizeof W / sizeof W[0]; w++)
            for (int li = 0; li < 2; li++) {
                if (mode == 3 && w == 0)
                    continue; /* top-left alignment without causal or window is plain */
                struct attn_cfg c = base_dense(k, li ? CFLASH_DTYPE_BF16 : CFLASH_DTYPE_F32);
                c.causal = mode == 1 || mode == 2;
                c.align = (mode == 2 || mode == 3) ? CFLASH_ALIGN_TOP_LEFT : CFLASH_ALIGN_BOTTOM_RIGHT;
                c.wl = W[w][0];
                c.wr = W[w][1];
                c.Lq = lens[li][0];
                c.Lk = lens[li][1];
                add("dense", &c);
            }
    /* ALiBi, softcap, sinks, custom scales */
    for (int di = 0; di < 3; di++) {
        struct attn_cfg c = base_dense(k, dtypes[di]);
        struct attn_cfg e = c;
        e.alibi = 1;
        add("dense", &e);
        e = c;
        e.alibi = 2;
        e.causal = 1;
        add("dense", &e);
        e = c;
        e.softcap = 5;
        add("dense", &e);
        e = c;
        e.softcap = 30;
        e.scale = 1.0f;
        add("dense", &e);
        e = c;
        e.sinks = 1;
        add("dense", &e);
        e = c;
        e.sinks = 1;
        e.causal = 1;
        e.Lq = 33;
        e.Lk = 17;
        add("dense", &e);
        e = c;
        e.scale = 0.3f;
        add("dense", &e);
        e = c;
        e.scale = -0.2f;
        add("dense", &e);
        e = c;
        e.alibi = 2;
        e.softcap = 5;
        e.sinks = 1;
        e.causal = 1;
        e.wl = 6;
        e.wr = 2;
        e.scale = 0.2f;
        add("dense", &e);
        e.align = CFLASH_ALIGN_TOP_LEFT;
        e.Lq = 33;
        e.Lk = 17;
        add("dense", &e);
    }
    /* layouts of inputs, outputs and lse */
    for (int di = 0; di < 3; di += 2)
        for (int lay = 0; lay <= LAYOUT_MIXED; lay++) {
            struct attn_cfg c = base_dense(k, dtypes[di]);
            c.layout = lay;
            c.causal = 1;
            if (lay)
                add("dense", &c);
            c.layout = LAYOUT_BSHD;
            if (lay == 1) {
                c.out_layout = OUT_BHSD;
                add("dense", &c);
                c.out_layout = OUT_PADDED;
                c.lse_mode = LSE_PADDED;
                add("dense", &c);
                c.out_layout = OUT_CONTIG;
                c.lse_mode = LSE_NONE;
                add("dense", &c);
                c.layout = LAYOUT_PADDED;
                c.vmode = V_VIEW_OF_K;
                c.Dv = 48;
                c.out_layout = OUT_PADDED;
                c.lse_mode = LSE_PADDED;
                c.out_f32 = 1;
                add("dense", &c);
            }
        }
}

static void set_lens(struct attn_cfg *c, int B, const int *lq, const int *lk)
{
    c->varlen = 1;
    c->B = B;
    for (int b = 0; b < B; b++) {
        c->lq[b] = lq[b];
        c->lk[b] = lk[b];
    }
}

static void register_varlen(enum cflash_kernel k)
{
    static const int nseq[] = {3, 2, 1, 3, 2, 4};
    static const int LQ[][4] = {{3, 0, 5}, {0, 0}, {1}, {17, 1, 33}, {5, 9}, {7, 0, 4, 12}};
    static const int LK[][4] = {{4, 2, 0}, {0, 0}, {1}, {33, 17, 1}, {5, 9}, {7, 3, 0, 20}};
    for (size_t s = 0; s < sizeof nseq / sizeof nseq[0]; s++)
        for (int mode = 0; mode < 3; mode++)
            for (int di = 0; di < 3; di += 2) {
                struct attn_cfg c = base_dense(k, dtypes[di]);
                set_lens(&c, nseq[s], LQ[s], LK[s]);
                c.causal = mode > 0;
                c.align = mode == 2 ? CFLASH_ALIGN_TOP_LEFT : CFLASH_ALIGN_BOTTOM_RIGHT;
                add("varlen", &c);
            }
    static const int lq[4] = {17, 0, 9, 4}, lk[4] = {9, 5, 0, 30};
    for (int di = 0; di < 3; di++) {
        struct attn_cfg c = base_dense(k, dtypes[di]);
        set_lens(&c, 4, lq, lk);
        struct attn_cfg e = c;
        e.alibi = 2;
        e.causal = 1;
        add("varlen", &e);
        e = c;
        e.alibi = 1;
        e.wl = 3;
        e.wr = 2;
        add("varlen", &e);
        e = c;
        e.sinks = 1;
        e.causal = 1;
        add("varlen", &e);
        e = c;
        e.softcap = 5;
        e.scale = -0.3f;
        add("varlen", &e);
        e = c;
        e.hint = HINT_EXACT;
        e.wl = 2;
        e.wr = 0;
        add("varlen", &e);
        e = c;
        e.hint = HINT_LARGER;
        e.causal = 1;
        e.align = CFLASH_ALIGN_TOP_LEFT;
        add("varlen", &e);
        e = c;
        e.out_f32 = dtypes[di] != CFLASH_DTYPE_F32;
        e.layout = LAYOUT_BHSD;
        e.out_layout = OUT_BHSD;
        e.lse_mode = LSE_PADDED;
        add("varlen", &e);
        e = c;
        e.layout = LAYOUT_PADDED;
        e.out_layout = OUT_PADDED;
        e.lse_mode = LSE_NONE;
        e.causal = 1;
        add("varlen", &e);
        e = c;
        e.layout = LAYOUT_MIXED;
        e.causal = 1;
        e.align = CFLASH_ALIGN_TOP_LEFT;
        add("varlen", &e);
        e = c;
        e.layout = LAYOUT_NEGSTRIDE;
        e.alibi = 2;
        e.sinks = 1;
        e.softcap = 20;
        e.causal = 1;
        e.wl = 4;
        add("varlen", &e);
        e = c;
        e.vmode = V_NULL;
        e.Hq = 7;
        e.Hk = 1;
        e.causal = 1;
        add("varlen", &e);
        e = c;
        e.vmode = V_VIEW_OF_K;
        e.D = 576;
        e.Dv = 512;
        e.Hq = 4;
        e.Hk = 1;
        static const int mq[3] = {3, 0, 6}, mk[3] = {9, 4, 2};
        set_lens(&e, 3, mq, mk);
        e.causal = 1;
        add("varlen", &e);
        e = c;
        e.D = 32;
        e.Dv = 96;
        e.Hq = 8;
        e.Hk = 2;
        add("varlen", &e);
    }
}

/* ---- random sweep ---------------------------------------------------------------------- */

#define N_RANDOM 300

static int pick(struct rng *r, const int *a, int n) { return a[rng_int(r, n)]; }

static struct attn_cfg random_cfg(uint64_t seed, enum cflash_kernel k)
{
    struct rng r = {seed};
    struct attn_cfg c = cfg_default();
    c.kernel = k;
    c.seed = seed;
    c.dtype = dtypes[rng_int(&r, 3)];
    if (k == CFLASH_KERNEL_CPU_AVX512_BF16 && rng_int(&r, 3) != 0)
        c.dtype = CFLASH_DTYPE_BF16; /* the only dtype where it differs from avx512 */
    c.out_f32 = c.dtype != CFLASH_DTYPE_F32 && rng_int(&r, 2);
    static const int Ds[][2] = {{1, 1},   {7, 7},     {32, 32},   {64, 64},  {80, 80},
                                {96, 96}, {128, 128}, {192, 192}, {256, 256}, {64, 32},
                                {32, 96}, {576, 512}, {16, 8},    {48, 48},  {128, 64}};
    int di = (int)rng_int(&r, sizeof Ds / sizeof Ds[0]);
    c.D = Ds[di][0];
    c.Dv = Ds[di][1];
    if (c.D == 576) {
        c.vmode = rng_int(&r, 2) ? V_VIEW_OF_K : V_NULL;
        if (c.vmode == V_NULL)
            c.Dv = c.D;
    } else if (c.D == c.Dv && rng_int(&r, 6) == 0) {
        c.vmode = V_NULL;
    } else if (c.Dv < c.D && rng_int(&r, 3) == 0) {
        c.vmode = V_VIEW_OF_K;
    }
    static const int H[][2] = {{1, 1}, {2, 2}, {4, 1}, {4, 4}, {8, 2}, {7, 1}, {6, 3}, {3, 1}};
    int hi = (int)rng_int(&r, sizeof H / sizeof H[0]);
    c.Hq = H[hi][0];
    c.Hk = H[hi][1];
    if (c.vmode != V_SEPARATE && c.D == 576) {
        c.Hk = 1;
        c.Hq = 1 + (int)rng_int(&r, 4);
    }
    static const int Ls[] = {0, 1, 2, 3, 5, 8, 16, 17, 31, 33, 64, 65, 100, 129, 200, 300};
    const int nL = sizeof Ls / sizeof Ls[0];
    c.varlen = rng_int(&r, 3) == 0;
    /* cost bound: B * Lq * Lk * Hq * (D + Dv) at most ~12 million multiply-adds */
    int64_t budget = 12000000 / ((int64_t)c.Hq * (c.D + c.Dv));
    if (c.varlen) {
        c.B = 1 + (int)rng_int(&r, 4);
        for (int b = 0; b < c.B; b++) {
            c.lq[b] = pick(&r, Ls, nL - (c.D >= 192 ? 8 : 0));
            c.lk[b] = pick(&r, Ls, nL - (c.D >= 192 ? 8 : 0));
            if (rng_int(&r, 6) == 0)
                c.lq[b] = 0;
            if (rng_int(&r, 6) == 0)
                c.lk[b] = 0;
            while ((int64_t)c.lq[b] * c.lk[b] * c.B > budget && c.lq[b] > 1)
                c.lq[b] /= 2;
        }
        c.hint = (int)rng_int(&r, 3);
    } else {
        c.B = 1 + (int)rng_int(&r, 3);
        c.Lq = pick(&r, Ls, nL - (c.D >= 192 ? 8 : 0));
        c.Lk = pick(&r, Ls, nL - (c.D >= 192 ? 8 : 0));
        while ((int64_t)c.Lq * c.Lk * c.B > budget && c.Lk > 1)
            c.Lk /= 2;
    }
    c.causal = (int)rng_int(&r, 2);
    c.align = rng_int(&r, 3) == 0 ? CFLASH_ALIGN_TOP_LEFT : CFLASH_ALIGN_BOTTOM_RIGHT;
    static const int Wv[] = {-1, -1, 0, 1, 3, 8, 40};
    if (rng_int(&r, 2)) {
        c.wl = pick(&r, Wv, 7);
        c.wr = pick(&r, Wv, 7);
    }
    c.alibi = (int)rng_int(&r, 4);
    if (c.alibi == 3)
        c.alibi = 0;
    static const float caps[] = {0, 0, 5, 30};
    c.softcap = caps[rng_int(&r, 4)];
    c.sinks = rng_int(&r, 3) == 0;
    static const float scales[] = {0, 0, 0, 0.25f, -0.2f, 0.05f};
    c.scale = scales[rng_int(&r, 6)];
    c.layout = (int)rng_int(&r, LAYOUT_MIXED + 1);
    c.out_layout = (int)rng_int(&r, 3);
    c.lse_mode = (int)rng_int(&r, 3);
    return c;
}

static void register_random(void)
{
    for (int i = 0; i < N_RANDOM; i++) {
        uint64_t seed = 0x1234567ull * (uint64_t)(i + 1) ^ 0xc0ffee00ull;
        struct attn_cfg c = random_cfg(seed, all_kernels[i % N_ALL_KERNELS]);
        add("random", &c);
    }
}

void register_attn_tests(void)
{
    for (int i = 0; i < N_ALL_KERNELS; i++)
        register_dense(all_kernels[i]);
    for (int i = 0; i < N_ALL_KERNELS; i++)
        register_varlen(all_kernels[i]);
    register_random();
}
