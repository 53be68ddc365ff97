/*
 * test_split.c - split-KV decode (src/cpu/dispatch.c): segments of <= 16 rows over >= 8192
 * keys are cut into 4096-key chunks merged in chunk order. Every kernel against the fp64
 * reference (and the reference against the test's oracle) through attn_check_case, with
 * lengths around the chunk boundaries, GQA packing, varlen mixes of split and unsplit
 * sequences, masks of the score rules, and bitwise identity across thread counts.
 */
#include "attn_common.h"

#include <string.h>

static void run_case(const void *arg) { attn_check_case((const struct attn_cfg *)arg); }

static void add(const struct attn_cfg *c)
{
    char name[512];
    cfg_name(name, sizeof name, "split", c);
    tcase_add(name, run_case, c, sizeof *c);
}

void register_split_tests(void)
{
    static const enum cflash_dtype dts[] = {CFLASH_DTYPE_F32, CFLASH_DTYPE_BF16, CFLASH_DTYPE_F16};
    /* key counts: just at the split threshold, between chunks, past several chunks */
    static const int Lks[] = {8192, 8193, 12289, 20000};
    for (int ki = 0; ki < N_ALL_KERNELS; ki++)
        for (int di = 0; di < 3; di++)
            for (int li = 0; li < 4; li++) {
                struct attn_cfg c = cfg_default();
                c.kernel = all_kernels[ki];
                c.dtype = dts[di];
                c.B = 1;
                c.Lq = 1 + li % 3;             /* decode and short speculative decode */
                c.Lk = Lks[li];
                c.Hq = 8;
                c.Hk = li % 2 ? 2 : 8;         /* G = 4 packs 4 heads per row group */
                c.D = 32;
                c.Dv = li == 3 ? 16 : 32;
                c.causal = li >= 2;
                c.wl = li == 3 ? 5000 : -1;    /* a window that drops whole chunks */
                c.wr = -1;
                c.alibi = li == 1;
                c.softcap = li == 2 ? 20.0f : 0.0f;
                c.sinks = li == 3;
                c.threads = 2;
                c.seed = 0x5917 + (uint64_t)(ki * 100 + di * 10 + li);
                add(&c);
            }
    /* varlen: one long decode sequence beside short ones, and an empty one */
    for (int ki = 0; ki < N_ALL_KERNELS; ki++) {
        struct attn_cfg c = cfg_default();
        c.kernel = all_kernels[ki];
        c.varlen = 1;
        c.B = 3;
        c.lq[0] = 1; c.lk[0] = 9000;
        c.lq[1] = 2; c.lk[1] = 40;
        c.lq[2] = 1; c.lk[2] = 0;
        c.Hq = 4;
        c.Hk = 1;
        c.D = c.Dv = 16;
        c.causal = 1;
        c.threads = 3;
        c.seed = 0x5918 + (uint64_t)ki;
        add(&c);
    }
}
