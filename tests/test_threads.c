/*
 * test_threads.c - thread-count determinism (SPEC 1: "thread count does not change it"): the
 * same call with params.num_threads = 1, 2, 3, 5, 17 and 0 (the default) must give bitwise
 * identical out and lse bytes, for every kernel, on configurations that split work in
 * different ways (GQA, causal varlen with empty sequences, decode-like Lq = 1 with a long key
 * axis, MLA). The threads=1 result is also checked against the reference once.
 */
#include "attn_common.h"

#include <stdlib.h>
#include <string.h>

static void threads_case(const void *arg)
{
    const struct attn_cfg *c = arg;
    if (!require_kernel(c->kernel))
        return;
    /* the single-thread result is correct ... */
    struct attn_cfg one = *c;
    one.threads = 1;
    attn_check_case(&one);
    if (tfailed())
        return;
    /* ... and every other thread count reproduces its bytes */
    struct attn_setup s;
    attn_setup(&s, c);
    enum cflash_dtype odt = c->out_f32 ? CFLASH_DTYPE_F32 : c->dtype;
    struct tbuf out1, lse1, out, lse;
    attn_make_out(&s, &out1, odt, c->out_layout);
    attn_make_lse(&s, &lse1, LSE_CONTIG);
    attn_make_out(&s, &out, odt, c->out_layout);
    attn_make_lse(&s, &lse, LSE_CONTIG);
    tbuf_poison(&out1, 0xa5);
    tbuf_poison(&lse1, 0xa5);
    enum cflash_status st = attn_call(&s, c->kernel, 1, &out1.t, &lse1.t);
    static const int counts[] = {2, 3, 5, 17, 0, 1};
    char msg[256] = "";
    if (st != CFLASH_STATUS_OK)
        snprintf(msg, sizeof msg, "threads=1: status %s (%s)", cflash_status_string(st),
                 cflash_last_error());
    for (size_t i = 0; !msg[0] && i < sizeof counts / sizeof counts[0]; i++) {
        tbuf_poison(&out, 0xa5);
        tbuf_poison(&lse, 0xa5);
        st = attn_call(&s, c->kernel, counts[i], &out.t, &lse.t);
        if (st != CFLASH_STATUS_OK) {
            snprintf(msg, sizeof msg, "threads=%d: status %s (%s)", counts[i],
                     cflash_status_string(st), cflash_last_error());
            break;
        }
        if (out.bytes && memcmp(out.base, out1.base, out.bytes) != 0) {
            size_t b = 0;
            while (out.base[b] == out1.base[b])
                b++;
            snprintf(msg, sizeof msg, "threads=%d: out differs from threads=1 (first at byte %zu of %zu)",
                     counts[i], b, out.bytes);
        } else if (lse.bytes && memcmp(lse.base, lse1.base, lse.bytes) != 0) {
            snprintf(msg, sizeof msg, "threads=%d: lse differs from threads=1", counts[i]);
        }
    }
    tbuf_free(&out1);
    tbuf_free(&lse1);
    tbuf_free(&out);
    tbuf_free(&lse);
    attn_free(&s);
    CHECK(!msg[0], "%s", msg);
}

void register_thread_tests(void)
{
    for (int ki = 0; ki < N_ALL_KERNELS; ki++) {
        enum cflash_kernel k = all_kernels[ki];
        char name[512];
        struct attn_cfg cs[5];
        int n = 0;

        struct attn_cfg c = cfg_default();
        c.kernel = k;
        c.dtype = CFLASH_DTYPE_BF16;
        c.B = 2;
        c.Lq = 129;
        c.Lk = 129;
        c.Hq = 8;
        c.Hk = 2;
        c.D = c.Dv = 64;
        c.causal = 1;
        c.alibi = 1;
        c.sinks = 1;
        cs[n++] = c;

        c = cfg_default();
        c.kernel = k;
        c.varlen = 1;
        c.B = 4;
        int lq[4] = {17, 0, 129, 33}, lk[4] = {33, 5, 129, 1};
        memcpy(c.lq, lq, sizeof lq);
        memcpy(c.lk, lk, sizeof lk);
        c.Hq = 6;
        c.Hk = 2;
        c.D = c.Dv = 96;
        c.causal = 1;
        c.wl = 40;
        cs[n++] = c;

        c = cfg_default();
        c.kernel = k;
        c.dtype = CFLASH_DTYPE_F16;
        c.out_f32 = 1;
        c.B = 3;
        c.Lq = 1;
        c.Lk = 300;
        c.Hq = 4;
        c.Hk = 1;
        c.D = c.Dv = 128;
        c.softcap = 30;
        cs[n++] = c;

        c = cfg_default();
        c.kernel = k;
        c.dtype = CFLASH_DTYPE_BF16;
        c.varlen = 1;
        c.B = 3;
        int mq[3] = {5, 1, 9}, mk[3] = {20, 7, 9};
        memcpy(c.lq, mq, sizeof mq);
        memcpy(c.lk, mk, sizeof mk);
        c.Hq = 4;
        c.Hk = 1;
        c.D = 576;
        c.Dv = 512;
        c.vmode = V_VIEW_OF_K;
        c.causal = 1;
        cs[n++] = c;

        c = cfg_default();
        c.kernel = k;
        c.B = 1;
        c.Lq = 300;
        c.Lk = 40;
        c.Hq = 7;
        c.Hk = 7;
        c.D = c.Dv = 32;
        c.causal = 1;
        c.align = CFLASH_ALIGN_TOP_LEFT;
        c.layout = LAYOUT_BHSD;
        c.out_layout = OUT_PADDED;
        cs[n++] = c;

        for (int i = 0; i < n; i++) {
            cfg_name(name, sizeof name, "threads", &cs[i]);
            tcase_add(name, threads_case, &cs[i], sizeof cs[i]);
        }
    }
}
