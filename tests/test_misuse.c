/*
 * test_misuse.c - every bad argument of every entry point returns exactly INVALID_ARGUMENT,
 * writes nothing (output buffers poisoned with 0x7f bytes are byte-identical afterwards), and
 * leaves a message in cflash_last_error() that names the argument (as a whole identifier
 * token). Also: the message is per thread, UNSUPPORTED for a forced kernel this machine lacks,
 * and the small API helpers (status strings, kernel names, defaults).
 *
 * Each case starts from a valid call (checked by the .../baseline_ok cases) and breaks one
 * rule. The buffers are much larger than the views, so a mutated view that the library fails
 * to reject still stays inside memory the test owns.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define BUF_ELEMS 40000 /* >= 2 * 3 * 4 * 1025: the D = 1025 views fit */
#define POISON 0x7f

enum entry { E_DENSE, E_VARLEN, E_MERGE };

struct fix {
    float *qb, *kb, *vb, *ob, *lb, *ab, *sb, *o1b, *o2b, *l1b, *l2b;
    int32_t cuq_b[8], cuk_b[8];
    struct cflash_tensor q, k, v, out, lse, alibi, sinks, cuq, cuk;
    const struct cflash_tensor *pq, *pk, *pv, *pout, *plse, *pcuq, *pcuk;
    int64_t hint_q, hint_k;
    struct cflash_attn_params p;
    /* merge */
    struct cflash_tensor o1, l1, o2, l2, mo, ml;
    const struct cflash_tensor *po1, *pl1, *po2, *pl2, *pmo, *pml;
};

static float *buf_rand(struct rng *r)
{
    float *b = malloc(BUF_ELEMS * sizeof *b);
    for (int i = 0; i < BUF_ELEMS; i++)
        b[i] = (float)rng_normal(r);
    return b;
}

static float *buf_poison(void)
{
    float *b = malloc(BUF_ELEMS * sizeof *b);
    memset(b, POISON, BUF_ELEMS * sizeof *b);
    return b;
}

static int buf_clean(const float *b)
{
    const unsigned char *c = (const unsigned char *)b;
    for (size_t i = 0; i < BUF_ELEMS * sizeof *b; i++)
        if (c[i] != POISON)
            return 0;
    return 1;
}

static void contig(struct cflash_tensor *t)
{
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        t->stride[i] = s;
        s *= t->shape[i] > 0 ? t->shape[i] : 1;
    }
}

/* dense: q [2,3,4,8], k [2,5,2,8], v [2,5,2,6], out [2,3,4,6], lse [2,4,3]
 * varlen: q [8,4,8], k [10,2,8], v [10,2,6], cu_q [0,3,3,8], cu_k [0,4,10,10], out [8,4,6],
 *         lse [4,8], alibi [3,4]
 * merge: o1, o2, out [5,3,8]; lse1, lse2, lse_out [3,5] */
static void fix_init(struct fix *f, enum entry e)
{
    memset(f, 0, sizeof *f);
    struct rng r = {42};
    f->qb = buf_rand(&r);
    f->kb = buf_rand(&r);
    f->vb = buf_rand(&r);
    f->ab = buf_rand(&r);
    f->sb = buf_rand(&r);
    f->o1b = buf_rand(&r);
    f->o2b = buf_rand(&r);
    f->l1b = buf_rand(&r);
    f->l2b = buf_rand(&r);
    for (int i = 0; i < BUF_ELEMS; i++)
        f->ab[i] = 0.1f + 0.01f * (float)(i % 7);
    f->ob = buf_poison();
    f->lb = buf_poison();
    f->p = cflash_attn_params_default();
    f->p.causal = 1;
    f->p.window_left = 2;
    f->p.softcap = 10;
    f->p.scale = 0.3f;
    f->hint_q = f->hint_k = -1;
    if (e == E_DENSE) {
        int64_t qs[4] = {2, 3, 4, 8}, ks[4] = {2, 5, 2, 8}, vs[4] = {2, 5, 2, 6},
                os[4] = {2, 3, 4, 6}, ls[3] = {2, 4, 3}, as[1] = {4}, ss[1] = {4};
        f->q = tdesc(f->qb, CFLASH_DTYPE_F32, 4, qs);
        f->k = tdesc(f->kb, CFLASH_DTYPE_F32, 4, ks);
        f->v = tdesc(f->vb, CFLASH_DTYPE_F32, 4, vs);
        f->out = tdesc(f->ob, CFLASH_DTYPE_F32, 4, os);
        f->lse = tdesc(f->lb, CFLASH_DTYPE_F32, 3, ls);
        f->alibi = tdesc(f->ab, CFLASH_DTYPE_F32, 1, as);
        f->sinks = tdesc(f->sb, CFLASH_DTYPE_F32, 1, ss);
    } else if (e == E_VARLEN) {
        int64_t qs[3] = {8, 4, 8}, ks[3] = {10, 2, 8}, vs[3] = {10, 2, 6}, os[3] = {8, 4, 6},
                ls[2] = {4, 8}, as[2] = {3, 4}, ss[1] = {4}, cs[1] = {4};
        f->q = tdesc(f->qb, CFLASH_DTYPE_F32, 3, qs);
        f->k = tdesc(f->kb, CFLASH_DTYPE_F32, 3, ks);
        f->v = tdesc(f->vb, CFLASH_DTYPE_F32, 3, vs);
        f->out = tdesc(f->ob, CFLASH_DTYPE_F32, 3, os);
        f->lse = tdesc(f->lb, CFLASH_DTYPE_F32, 2, ls);
        f->alibi = tdesc(f->ab, CFLASH_DTYPE_F32, 2, as);
        f->sinks = tdesc(f->sb, CFLASH_DTYPE_F32, 1, ss);
        static const int32_t cq[4] = {0, 3, 3, 8}, ck[4] = {0, 4, 10, 10};
        memcpy(f->cuq_b, cq, sizeof cq);
        memcpy(f->cuk_b, ck, sizeof ck);
        f->cuq = tdesc(f->cuq_b, CFLASH_DTYPE_I32, 1, cs);
        f->cuk = tdesc(f->cuk_b, CFLASH_DTYPE_I32, 1, cs);
    } else {
        int64_t os[3] = {5, 3, 8}, ls[2] = {3, 5};
        f->o1 = tdesc(f->o1b, CFLASH_DTYPE_F32, 3, os);
        f->o2 = tdesc(f->o2b, CFLASH_DTYPE_F32, 3, os);
        f->mo = tdesc(f->ob, CFLASH_DTYPE_F32, 3, os);
        f->l1 = tdesc(f->l1b, CFLASH_DTYPE_F32, 2, ls);
        f->l2 = tdesc(f->l2b, CFLASH_DTYPE_F32, 2, ls);
        f->ml = tdesc(f->lb, CFLASH_DTYPE_F32, 2, ls);
    }
    f->p.alibi_slopes = &f->alibi;
    f->p.sinks = &f->sinks;
    f->pq = &f->q;
    f->pk = &f->k;
    f->pv = &f->v;
    f->pout = &f->out;
    f->plse = &f->lse;
    f->pcuq = &f->cuq;
    f->pcuk = &f->cuk;
    f->po1 = &f->o1;
    f->pl1 = &f->l1;
    f->po2 = &f->o2;
    f->pl2 = &f->l2;
    f->pmo = &f->mo;
    f->pml = &f->ml;
}

static void fix_free(struct fix *f)
{
    free(f->qb);
    free(f->kb);
    free(f->vb);
    free(f->ob);
    free(f->lb);
    free(f->ab);
    free(f->sb);
    free(f->o1b);
    free(f->o2b);
    free(f->l1b);
    free(f->l2b);
}

static enum cflash_status fix_call(struct fix *f, enum entry e)
{
    if (e == E_DENSE)
        return cflash_attn_dense(f->pq, f->pk, f->pv, f->pout, f->plse, &f->p);
    if (e == E_VARLEN)
        return cflash_attn_varlen(f->pq, f->pk, f->pv, f->pcuq, f->pcuk, f->hint_q, f->hint_k,
                                  f->pout, f->plse, &f->p);
    return cflash_merge(f->po1, f->pl1, f->po2, f->pl2, f->pmo, f->pml);
}

/* ---- the cases ------------------------------------------------------------------------- */

/* X(id, entry, expected names separated by '|', description) */
#define MISUSE_CASES(X)                                                                      \
    X(D_Q_NULL, E_DENSE, "q", "q=NULL")                                                      \
    X(D_K_NULL, E_DENSE, "k", "k=NULL")                                                      \
    X(D_OUT_NULL, E_DENSE, "out", "out=NULL")                                                \
    X(D_Q_DATA_NULL, E_DENSE, "q", "q.data=NULL")                                            \
    X(D_K_DATA_NULL, E_DENSE, "k", "k.data=NULL")                                            \
    X(D_V_DATA_NULL, E_DENSE, "v", "v.data=NULL")                                            \
    X(D_OUT_DATA_NULL, E_DENSE, "out", "out.data=NULL")                                      \
    X(D_LSE_DATA_NULL, E_DENSE, "lse", "lse.data=NULL")                                      \
    X(D_Q_NDIM3, E_DENSE, "q", "q.ndim=3")                                                   \
    X(D_Q_NDIM0, E_DENSE, "q", "q.ndim=0")                                                   \
    X(D_K_NDIM5, E_DENSE, "k", "k.ndim=5")                                                   \
    X(D_V_NDIM3, E_DENSE, "v", "v.ndim=3")                                                   \
    X(D_OUT_NDIM3, E_DENSE, "out", "out.ndim=3")                                             \
    X(D_LSE_NDIM2, E_DENSE, "lse", "lse.ndim=2")                                             \
    X(D_Q_NEG_L, E_DENSE, "q", "q.shape[1]=-1")                                              \
    X(D_K_NEG_L, E_DENSE, "k|v", "k.shape[1]=v.shape[1]=-2")                                 \
    X(D_K_B, E_DENSE, "k|q", "k.shape[0]!=B")                                                \
    X(D_V_B, E_DENSE, "v", "v.shape[0]!=B")                                                  \
    X(D_OUT_B, E_DENSE, "out", "out.shape[0]!=B")                                            \
    X(D_LSE_B, E_DENSE, "lse", "lse.shape[0]!=B")                                            \
    X(D_V_L, E_DENSE, "v|k", "v.shape[1]!=Lk")                                               \
    X(D_OUT_L, E_DENSE, "out", "out.shape[1]!=Lq")                                           \
    X(D_LSE_L, E_DENSE, "lse", "lse.shape[2]!=Lq")                                           \
    X(D_HQ_NOT_MULT, E_DENSE, "k|q|Hq|Hk", "Hq%Hk!=0")                                       \
    X(D_V_H, E_DENSE, "v", "v.shape[2]!=Hk")                                                 \
    X(D_OUT_H, E_DENSE, "out", "out.shape[2]!=Hq")                                           \
    X(D_LSE_H, E_DENSE, "lse", "lse.shape[1]!=Hq")                                           \
    X(D_K_D, E_DENSE, "k|q|D", "k.shape[3]!=D")                                              \
    X(D_D0, E_DENSE, "q|k|D", "D=0")                                                         \
    X(D_D1025, E_DENSE, "q|k|D", "D=1025")                                                   \
    X(D_DV0, E_DENSE, "v|Dv|out", "Dv=0")                                                    \
    X(D_DV1025, E_DENSE, "v|Dv|out", "Dv=1025")                                              \
    X(D_OUT_DV, E_DENSE, "out", "out.shape[3]!=Dv")                                          \
    X(D_VNULL_OUT_DV, E_DENSE, "out", "v=NULL,out.shape[3]!=D")                              \
    X(D_Q_STRIDE, E_DENSE, "q", "q.stride[3]=2")                                             \
    X(D_K_STRIDE, E_DENSE, "k", "k.stride[3]=2")                                             \
    X(D_V_STRIDE, E_DENSE, "v", "v.stride[3]=-1")                                            \
    X(D_OUT_STRIDE, E_DENSE, "out", "out.stride[3]=2")                                       \
    X(D_K_F16, E_DENSE, "k", "k.dtype=f16,q.dtype=f32")                                      \
    X(D_V_BF16, E_DENSE, "v", "v.dtype=bf16,q.dtype=f32")                                    \
    X(D_Q_I32, E_DENSE, "q", "q,k,v.dtype=i32")                                              \
    X(D_Q_U8, E_DENSE, "q", "q,k,v.dtype=u8")                                                \
    X(D_OUT_BF16_F16, E_DENSE, "out", "q.dtype=f16,out.dtype=bf16")                          \
    X(D_OUT_F16_F32, E_DENSE, "out", "q.dtype=f32,out.dtype=f16")                            \
    X(D_OUT_I32, E_DENSE, "out", "out.dtype=i32")                                            \
    X(D_LSE_F16, E_DENSE, "lse", "lse.dtype=f16")                                            \
    X(D_LSE_I32, E_DENSE, "lse", "lse.dtype=i32")                                            \
    X(D_OUT_STRIDE0, E_DENSE, "out", "out.stride[1]=0")                                      \
    X(D_OUT_NEGSTRIDE, E_DENSE, "out", "out.stride[0]<0")                                    \
    X(D_OUT_OVERLAP, E_DENSE, "out", "out.stride[2]=3<Dv(overlap)")                          \
    X(D_LSE_STRIDE0, E_DENSE, "lse", "lse.stride[2]=0")                                      \
    X(D_LSE_NEGSTRIDE, E_DENSE, "lse", "lse.stride[1]<0")                                    \
    X(D_SCALE_NAN, E_DENSE, "scale", "scale=nan")                                            \
    X(D_SCALE_INF, E_DENSE, "scale", "scale=inf")                                            \
    X(D_SCALE_NINF, E_DENSE, "scale", "scale=-inf")                                          \
    X(D_SOFTCAP_NEG, E_DENSE, "softcap", "softcap=-1")                                       \
    X(D_SOFTCAP_NAN, E_DENSE, "softcap", "softcap=nan")                                      \
    X(D_WL, E_DENSE, "window_left", "window_left=-2")                                        \
    X(D_WR, E_DENSE, "window_right", "window_right=-5")                                      \
    X(D_CAUSAL2, E_DENSE, "causal", "causal=2")                                              \
    X(D_CAUSALNEG, E_DENSE, "causal", "causal=-1")                                           \
    X(D_ALIGN2, E_DENSE, "align", "align=2")                                                 \
    X(D_ALIGNNEG, E_DENSE, "align", "align=-1")                                              \
    X(D_KERNEL_COUNT, E_DENSE, "kernel", "kernel=CFLASH_KERNEL_COUNT")                                              \
    X(D_KERNELNEG, E_DENSE, "kernel", "kernel=-1")                                           \
    X(D_THREADSNEG, E_DENSE, "num_threads", "num_threads=-1")                                \
    X(D_ALIBI_SHAPE, E_DENSE, "alibi_slopes", "alibi_slopes.shape=[5]")                      \
    X(D_ALIBI_F16, E_DENSE, "alibi_slopes", "alibi_slopes.dtype=f16")                        \
    X(D_ALIBI_B, E_DENSE, "alibi_slopes", "alibi_slopes.shape=[3,4]")                        \
    X(D_ALIBI_NDIM3, E_DENSE, "alibi_slopes", "alibi_slopes.ndim=3")                         \
    X(D_ALIBI_DATA_NULL, E_DENSE, "alibi_slopes", "alibi_slopes.data=NULL")                  \
    X(D_SINKS_SHAPE, E_DENSE, "sinks", "sinks.shape=[3]")                                    \
    X(D_SINKS_BF16, E_DENSE, "sinks", "sinks.dtype=bf16")                                    \
    X(D_SINKS_NDIM2, E_DENSE, "sinks", "sinks.shape=[2,4]")                                  \
    X(D_SINKS_DATA_NULL, E_DENSE, "sinks", "sinks.data=NULL")                                \
    X(V_CUQ_NULL, E_VARLEN, "cu_seqlens_q", "cu_seqlens_q=NULL")                             \
    X(V_CUK_NULL, E_VARLEN, "cu_seqlens_k", "cu_seqlens_k=NULL")                             \
    X(V_CUQ_START, E_VARLEN, "cu_seqlens_q", "cu_seqlens_q[0]=1")                            \
    X(V_CUK_START, E_VARLEN, "cu_seqlens_k", "cu_seqlens_k[0]=-1")                           \
    X(V_CUQ_DECREASING, E_VARLEN, "cu_seqlens_q", "cu_seqlens_q=[0,3,2,8]")                  \
    X(V_CUK_DECREASING, E_VARLEN, "cu_seqlens_k", "cu_seqlens_k=[0,4,10,9]")                 \
    X(V_CUQ_LAST, E_VARLEN, "cu_seqlens_q", "cu_seqlens_q[-1]=7!=Tq")                        \
    X(V_CUK_LAST, E_VARLEN, "cu_seqlens_k", "cu_seqlens_k[-1]=11!=Tk")                       \
    X(V_CU_LEN, E_VARLEN, "cu_seqlens_q|cu_seqlens_k", "len(cu_seqlens_q)!=len(cu_seqlens_k)") \
    X(V_CUQ_F32, E_VARLEN, "cu_seqlens_q", "cu_seqlens_q.dtype=f32")                         \
    X(V_CUK_U8, E_VARLEN, "cu_seqlens_k", "cu_seqlens_k.dtype=u8")                           \
    X(V_CUQ_NDIM2, E_VARLEN, "cu_seqlens_q", "cu_seqlens_q.ndim=2")                          \
    X(V_CUQ_EMPTY, E_VARLEN, "cu_seqlens_q|cu_seqlens_k", "cu_seqlens_q.shape=[0]")          \
    X(V_CUQ_DATA_NULL, E_VARLEN, "cu_seqlens_q", "cu_seqlens_q.data=NULL")                   \
    X(V_HINTQ, E_VARLEN, "max_seqlen_q", "max_seqlen_q=4<5")                                 \
    X(V_HINTK, E_VARLEN, "max_seqlen_k", "max_seqlen_k=5<6")                                 \
    X(V_HINTK0, E_VARLEN, "max_seqlen_k", "max_seqlen_k=0<6")                                \
    X(V_Q_NDIM4, E_VARLEN, "q", "q.ndim=4")                                                  \
    X(V_V_NDIM2, E_VARLEN, "v", "v.ndim=2")                                                  \
    X(V_Q_T, E_VARLEN, "cu_seqlens_q|q", "q.shape[0]=7!=cu_seqlens_q[-1]")                   \
    X(V_K_T, E_VARLEN, "k|v|cu_seqlens_k", "k.shape[0]=v.shape[0]=9!=cu_seqlens_k[-1]")     \
    X(V_OUT_T, E_VARLEN, "out", "out.shape[0]!=Tq")                                          \
    X(V_LSE_SWAPPED, E_VARLEN, "lse", "lse.shape=[Tq,Hq]")                                   \
    X(V_HQ_NOT_MULT, E_VARLEN, "k|q|Hq|Hk", "Hq%Hk!=0")                                      \
    X(V_K_D, E_VARLEN, "k|q|D", "k.shape[2]!=D")                                             \
    X(V_V_T, E_VARLEN, "v|k", "v.shape[0]!=Tk")                                              \
    X(V_ALIBI_B, E_VARLEN, "alibi_slopes", "alibi_slopes.shape=[2,4],B=3")                   \
    X(V_Q_STRIDE, E_VARLEN, "q", "q.stride[2]=2")                                            \
    X(V_K_F16, E_VARLEN, "k", "k.dtype=f16")                                                 \
    X(V_OUT_BF16, E_VARLEN, "out", "out.dtype=bf16,q.dtype=f32")                             \
    X(V_WL, E_VARLEN, "window_left", "window_left=-3")                                       \
    X(V_SOFTCAP, E_VARLEN, "softcap", "softcap=-0.5")                                        \
    X(V_LSE_STRIDE0, E_VARLEN, "lse", "lse.stride[1]=0")                                     \
    X(V_OUT_STRIDE0, E_VARLEN, "out", "out.stride[0]=0")                                     \
    X(V_SINKS_SHAPE, E_VARLEN, "sinks", "sinks.shape=[5]")                                   \
    X(V_SCALE_NAN, E_VARLEN, "scale", "scale=nan")                                           \
    X(M_O1_NULL, E_MERGE, "o1", "o1=NULL")                                                   \
    X(M_L1_NULL, E_MERGE, "lse1", "lse1=NULL")                                               \
    X(M_O2_NULL, E_MERGE, "o2", "o2=NULL")                                                   \
    X(M_L2_NULL, E_MERGE, "lse2", "lse2=NULL")                                               \
    X(M_OUT_NULL, E_MERGE, "out", "out=NULL")                                                \
    X(M_O1_DATA_NULL, E_MERGE, "o1", "o1.data=NULL")                                         \
    X(M_L2_DATA_NULL, E_MERGE, "lse2", "lse2.data=NULL")                                     \
    X(M_O2_T, E_MERGE, "o2", "o2.shape[0]!=T")                                               \
    X(M_O2_H, E_MERGE, "o2", "o2.shape[1]!=H")                                               \
    X(M_O2_DV, E_MERGE, "o2", "o2.shape[2]!=Dv")                                             \
    X(M_OUT_DV, E_MERGE, "out", "out.shape[2]!=Dv")                                          \
    X(M_OUT_T, E_MERGE, "out", "out.shape[0]!=T")                                            \
    X(M_L1_SWAPPED, E_MERGE, "lse1", "lse1.shape=[T,H]")                                     \
    X(M_L2_T, E_MERGE, "lse2", "lse2.shape[1]!=T")                                           \
    X(M_LO_SHAPE, E_MERGE, "lse_out", "lse_out.shape[1]!=T")                                 \
    X(M_O1_NDIM2, E_MERGE, "o1", "o1.ndim=2")                                                \
    X(M_O2_RANK4, E_MERGE, "o2|o1", "o2.ndim=4,o1.ndim=3")                                      \
    X(M_L1_NDIM3, E_MERGE, "lse1", "lse1.ndim=3")                                            \
    X(M_R4_L2, E_MERGE, "lse2", "rank4,lse2.shape=[B,L,H]")                                  \
    X(M_O2_F16, E_MERGE, "o2", "o2.dtype=f16,o1.dtype=f32")                                  \
    X(M_OUT_BF16, E_MERGE, "out", "o.dtype=f16,out.dtype=bf16")                              \
    X(M_L1_F16, E_MERGE, "lse1", "lse1.dtype=f16")                                           \
    X(M_LO_BF16, E_MERGE, "lse_out", "lse_out.dtype=bf16")                                   \
    X(M_O_I32, E_MERGE, "o1|o2", "o1,o2,out.dtype=i32")                                         \
    X(M_OUT_STRIDE, E_MERGE, "out", "out.stride[2]=2")                                       \
    X(M_OUT_STRIDE0, E_MERGE, "out", "out.stride[0]=0")                                      \
    X(M_LO_STRIDE0, E_MERGE, "lse_out", "lse_out.stride[1]=0")                               \
    X(M_OUT_NEGSTRIDE, E_MERGE, "out", "out.stride[1]<0")

enum misuse_id {
#define X(id, e, names, desc) id,
    MISUSE_CASES(X)
#undef X
        N_MISUSE
};

static const struct {
    enum entry e;
    const char *names, *desc;
} misuse_info[N_MISUSE] = {
#define X(id, e, names, desc) {e, names, desc},
    MISUSE_CASES(X)
#undef X
};

static void mutate(struct fix *f, enum misuse_id id)
{
    switch (id) {
    /* ---- dense ---- */
    case D_Q_NULL: f->pq = NULL; break;
    case D_K_NULL: f->pk = NULL; break;
    case D_OUT_NULL: f->pout = NULL; break;
    case D_Q_DATA_NULL: f->q.data = NULL; break;
    case D_K_DATA_NULL: f->k.data = NULL; break;
    case D_V_DATA_NULL: f->v.data = NULL; break;
    case D_OUT_DATA_NULL: f->out.data = NULL; break;
    case D_LSE_DATA_NULL: f->lse.data = NULL; break;
    case D_Q_NDIM3: f->q.ndim = 3; break;
    case D_Q_NDIM0: f->q.ndim = 0; break;
    case D_K_NDIM5: f->k.ndim = 5; break;
    case D_V_NDIM3: f->v.ndim = 3; break;
    case D_OUT_NDIM3: f->out.ndim = 3; break;
    case D_LSE_NDIM2: f->lse.ndim = 2; break;
    case D_Q_NEG_L: f->q.shape[1] = -1; break;
    case D_K_NEG_L: f->k.shape[1] = f->v.shape[1] = -2; break;
    case D_K_B: f->k.shape[0] = 1; break;
    case D_V_B: f->v.shape[0] = 1; break;
    case D_OUT_B: f->out.shape[0] = 1; break;
    case D_LSE_B: f->lse.shape[0] = 1; break;
    case D_V_L: f->v.shape[1] = 4; break;
    case D_OUT_L: f->out.shape[1] = 2; break;
    case D_LSE_L: f->lse.shape[2] = 2; break;
    case D_HQ_NOT_MULT:
        f->k.shape[2] = f->v.shape[2] = 3;
        contig(&f->k);
        contig(&f->v);
        break;
    case D_V_H: f->v.shape[2] = 1; break;
    case D_OUT_H: f->out.shape[2] = 2; break;
    case D_LSE_H: f->lse.shape[1] = 2; break;
    case D_K_D: f->k.shape[3] = 7; break;
    case D_D0: f->q.shape[3] = f->k.shape[3] = 0; break;
    case D_D1025:
        f->q.shape[3] = f->k.shape[3] = 1025;
        contig(&f->q);
        contig(&f->k);
        break;
    case D_DV0: f->v.shape[3] = f->out.shape[3] = 0; break;
    case D_DV1025:
        f->v.shape[3] = f->out.shape[3] = 1025;
        contig(&f->v);
        contig(&f->out);
        break;
    case D_OUT_DV: f->out.shape[3] = 5; break;
    case D_VNULL_OUT_DV: f->pv = NULL; break; /* V := K gives Dv = 8, out has 6 */
    case D_Q_STRIDE: f->q.stride[3] = 2; break;
    case D_K_STRIDE: f->k.stride[3] = 2; break;
    case D_V_STRIDE: f->v.stride[3] = -1; f->v.data = f->vb + 100; break;
    case D_OUT_STRIDE: f->out.stride[3] = 2; break;
    case D_K_F16: f->k.dtype = CFLASH_DTYPE_F16; break;
    case D_V_BF16: f->v.dtype = CFLASH_DTYPE_BF16; break;
    case D_Q_I32: f->q.dtype = f->k.dtype = f->v.dtype = CFLASH_DTYPE_I32; break;
    case D_Q_U8: f->q.dtype = f->k.dtype = f->v.dtype = CFLASH_DTYPE_U8; break;
    case D_OUT_BF16_F16:
        f->q.dtype = f->k.dtype = f->v.dtype = CFLASH_DTYPE_F16;
        f->out.dtype = CFLASH_DTYPE_BF16;
        break;
    case D_OUT_F16_F32: f->out.dtype = CFLASH_DTYPE_F16; break;
    case D_OUT_I32: f->out.dtype = CFLASH_DTYPE_I32; break;
    case D_LSE_F16: f->lse.dtype = CFLASH_DTYPE_F16; break;
    case D_LSE_I32: f->lse.dtype = CFLASH_DTYPE_I32; break;
    case D_OUT_STRIDE0: f->out.stride[1] = 0; break;
    case D_OUT_NEGSTRIDE: f->out.stride[0] = -f->out.stride[0]; f->out.data = f->ob + 1000; break;
    case D_OUT_OVERLAP: f->out.stride[2] = 3; f->out.stride[1] = 12; f->out.stride[0] = 36; break;
    case D_LSE_STRIDE0: f->lse.stride[2] = 0; break;
    case D_LSE_NEGSTRIDE: f->lse.stride[1] = -3; f->lse.data = f->lb + 1000; break;
    case D_SCALE_NAN: f->p.scale = NAN; break;
    case D_SCALE_INF: f->p.scale = INFINITY; break;
    case D_SCALE_NINF: f->p.scale = -INFINITY; break;
    case D_SOFTCAP_NEG: f->p.softcap = -1; break;
    case D_SOFTCAP_NAN: f->p.softcap = NAN; break;
    case D_WL: f->p.window_left = -2; break;
    case D_WR: f->p.window_right = -5; break;
    case D_CAUSAL2: f->p.causal = 2; break;
    case D_CAUSALNEG: f->p.causal = -1; break;
    case D_ALIGN2: f->p.align = (enum cflash_align)2; break;
    case D_ALIGNNEG: f->p.align = (enum cflash_align)-1; break;
    case D_KERNEL_COUNT: f->p.kernel = (enum cflash_kernel)CFLASH_KERNEL_COUNT; break;
    case D_KERNELNEG: f->p.kernel = (enum cflash_kernel)-1; break;
    case D_THREADSNEG: f->p.num_threads = -1; break;
    case D_ALIBI_SHAPE: f->alibi.shape[0] = 5; break;
    case D_ALIBI_F16: f->alibi.dtype = CFLASH_DTYPE_F16; break;
    case D_ALIBI_B: {
        int64_t s[2] = {3, 4};
        f->alibi = tdesc(f->ab, CFLASH_DTYPE_F32, 2, s);
        break;
    }
    case D_ALIBI_NDIM3: {
        int64_t s[3] = {1, 2, 4};
        f->alibi = tdesc(f->ab, CFLASH_DTYPE_F32, 3, s);
        break;
    }
    case D_ALIBI_DATA_NULL: f->alibi.data = NULL; break;
    case D_SINKS_SHAPE: f->sinks.shape[0] = 3; break;
    case D_SINKS_BF16: f->sinks.dtype = CFLASH_DTYPE_BF16; break;
    case D_SINKS_NDIM2: {
        int64_t s[2] = {2, 4};
        f->sinks = tdesc(f->sb, CFLASH_DTYPE_F32, 2, s);
        break;
    }
    case D_SINKS_DATA_NULL: f->sinks.data = NULL; break;
    /* ---- varlen ---- */
    case V_CUQ_NULL: f->pcuq = NULL; break;
    case V_CUK_NULL: f->pcuk = NULL; break;
    case V_CUQ_START: f->cuq_b[0] = 1; break;
    case V_CUK_START: f->cuk_b[0] = -1; break;
    case V_CUQ_DECREASING: f->cuq_b[2] = 2; break;
    case V_CUK_DECREASING: f->cuk_b[3] = 9; break;
    case V_CUQ_LAST: f->cuq_b[3] = 7; break;
    case V_CUK_LAST: f->cuk_b[3] = 11; break;
    case V_CU_LEN:
        f->cuq.shape[0] = 3;
        f->cuq_b[2] = 8;
        f->p.alibi_slopes = NULL; /* [B, Hq] alibi would be a second inconsistency */
        break;
    case V_CUQ_F32: f->cuq.dtype = CFLASH_DTYPE_F32; break;
    case V_CUK_U8: f->cuk.dtype = CFLASH_DTYPE_U8; break;
    case V_CUQ_NDIM2: {
        int64_t s[2] = {1, 4};
        f->cuq = tdesc(f->cuq_b, CFLASH_DTYPE_I32, 2, s);
        break;
    }
    case V_CUQ_EMPTY:
        f->cuq.shape[0] = 0;
        f->p.alibi_slopes = NULL;
        break;
    case V_CUQ_DATA_NULL: f->cuq.data = NULL; break;
    case V_HINTQ: f->hint_q = 4; break;
    case V_HINTK: f->hint_k = 5; break;
    case V_HINTK0: f->hint_k = 0; break;
    case V_Q_NDIM4: {
        int64_t s[4] = {1, 8, 4, 8};
        f->q = tdesc(f->qb, CFLASH_DTYPE_F32, 4, s);
        break;
    }
    case V_V_NDIM2: f->v.ndim = 2; break;
    case V_Q_T: /* q, out and lse agree on Tq = 7; only cu_seqlens_q says 8 */
        f->q.shape[0] = f->out.shape[0] = 7;
        f->lse.shape[1] = 7;
        contig(&f->lse);
        break;
    case V_K_T: f->k.shape[0] = f->v.shape[0] = 9; break;
    case V_OUT_T: f->out.shape[0] = 7; break;
    case V_LSE_SWAPPED: {
        int64_t s[2] = {8, 4};
        f->lse = tdesc(f->lb, CFLASH_DTYPE_F32, 2, s);
        break;
    }
    case V_HQ_NOT_MULT:
        f->k.shape[1] = f->v.shape[1] = 3;
        contig(&f->k);
        contig(&f->v);
        break;
    case V_K_D: f->k.shape[2] = 4; break;
    case V_V_T: f->v.shape[0] = 9; break;
    case V_ALIBI_B: f->alibi.shape[0] = 2; break;
    case V_Q_STRIDE: f->q.stride[2] = 2; break;
    case V_K_F16: f->k.dtype = CFLASH_DTYPE_F16; break;
    case V_OUT_BF16: f->out.dtype = CFLASH_DTYPE_BF16; break;
    case V_WL: f->p.window_left = -3; break;
    case V_SOFTCAP: f->p.softcap = -0.5f; break;
    case V_LSE_STRIDE0: f->lse.stride[1] = 0; break;
    case V_OUT_STRIDE0: f->out.stride[0] = 0; break;
    case V_SINKS_SHAPE: f->sinks.shape[0] = 5; break;
    case V_SCALE_NAN: f->p.scale = NAN; break;
    /* ---- merge ---- */
    case M_O1_NULL: f->po1 = NULL; break;
    case M_L1_NULL: f->pl1 = NULL; break;
    case M_O2_NULL: f->po2 = NULL; break;
    case M_L2_NULL: f->pl2 = NULL; break;
    case M_OUT_NULL: f->pmo = NULL; break;
    case M_O1_DATA_NULL: f->o1.data = NULL; break;
    case M_L2_DATA_NULL: f->l2.data = NULL; break;
    case M_O2_T: f->o2.shape[0] = 4; break;
    case M_O2_H: f->o2.shape[1] = 2; break;
    case M_O2_DV: f->o2.shape[2] = 7; break;
    case M_OUT_DV: f->mo.shape[2] = 7; break;
    case M_OUT_T: f->mo.shape[0] = 4; break;
    case M_L1_SWAPPED: {
        int64_t s[2] = {5, 3};
        f->l1 = tdesc(f->l1b, CFLASH_DTYPE_F32, 2, s);
        break;
    }
    case M_L2_T: f->l2.shape[1] = 4; break;
    case M_LO_SHAPE: f->ml.shape[1] = 4; break;
    case M_O1_NDIM2: f->o1.ndim = 2; break;
    case M_O2_RANK4: {
        int64_t s[4] = {1, 5, 3, 8};
        f->o2 = tdesc(f->o2b, CFLASH_DTYPE_F32, 4, s);
        break;
    }
    case M_L1_NDIM3: {
        int64_t s[3] = {1, 3, 5};
        f->l1 = tdesc(f->l1b, CFLASH_DTYPE_F32, 3, s);
        break;
    }
    case M_R4_L2: {
        int64_t os[4] = {1, 5, 3, 8}, ls[3] = {1, 3, 5}, bad[3] = {1, 5, 3};
        f->o1 = tdesc(f->o1b, CFLASH_DTYPE_F32, 4, os);
        f->o2 = tdesc(f->o2b, CFLASH_DTYPE_F32, 4, os);
        f->mo = tdesc(f->ob, CFLASH_DTYPE_F32, 4, os);
        f->l1 = tdesc(f->l1b, CFLASH_DTYPE_F32, 3, ls);
        f->l2 = tdesc(f->l2b, CFLASH_DTYPE_F32, 3, bad);
        f->ml = tdesc(f->lb, CFLASH_DTYPE_F32, 3, ls);
        break;
    }
    case M_O2_F16: f->o2.dtype = CFLASH_DTYPE_F16; break;
    case M_OUT_BF16:
        f->o1.dtype = f->o2.dtype = CFLASH_DTYPE_F16;
        f->mo.dtype = CFLASH_DTYPE_BF16;
        break;
    case M_L1_F16: f->l1.dtype = CFLASH_DTYPE_F16; break;
    case M_LO_BF16: f->ml.dtype = CFLASH_DTYPE_BF16; break;
    case M_O_I32: f->o1.dtype = f->o2.dtype = f->mo.dtype = CFLASH_DTYPE_I32; break;
    case M_OUT_STRIDE: f->mo.stride[2] = 2; break;
    case M_OUT_STRIDE0: f->mo.stride[0] = 0; break;
    case M_LO_STRIDE0: f->ml.stride[1] = 0; break;
    case M_OUT_NEGSTRIDE: f->mo.stride[1] = -8; f->mo.data = f->ob + 1000; break;
    case N_MISUSE: break;
    }
}

static void misuse_case(const void *arg)
{
    enum misuse_id id = *(const enum misuse_id *)arg;
    enum entry e = misuse_info[id].e;
    struct fix f;
    fix_init(&f, e);
    mutate(&f, id);
    enum cflash_status st = fix_call(&f, e);
    char msg[1024];
    const char *le = cflash_last_error();
    snprintf(msg, sizeof msg, "%s", le ? le : "(null)");
    int out_clean = buf_clean(f.ob), lse_clean = buf_clean(f.lb);
    fix_free(&f);
    CHECK(st == CFLASH_STATUS_INVALID_ARGUMENT, "status %s, want INVALID_ARGUMENT (message \"%s\")",
          cflash_status_string(st), msg);
    CHECK(out_clean, "out buffer was written (message \"%s\")", msg);
    CHECK(lse_clean, "lse buffer was written (message \"%s\")", msg);
    CHECK(le && le[0], "cflash_last_error() is empty");
    CHECK(msg_names_any(msg, misuse_info[id].names), "message \"%s\" does not name %s", msg,
          misuse_info[id].names);
}

static void baseline_case(const void *arg)
{
    enum entry e = *(const enum entry *)arg;
    struct fix f;
    fix_init(&f, e);
    enum cflash_status st = fix_call(&f, e);
    int written = !buf_clean(f.ob);
    /* and the optional arguments may be absent */
    enum cflash_status st2 = CFLASH_STATUS_OK;
    if (e == E_MERGE) {
        f.pml = NULL;
        st2 = fix_call(&f, e);
    } else {
        f.plse = NULL;
        f.p.alibi_slopes = NULL;
        f.p.sinks = NULL;
        st2 = fix_call(&f, e);
    }
    fix_free(&f);
    CHECK(st == CFLASH_STATUS_OK, "valid baseline call returned %s (%s)", cflash_status_string(st),
          cflash_last_error());
    CHECK(written, "valid baseline call wrote nothing");
    CHECK(st2 == CFLASH_STATUS_OK, "baseline without optional arguments returned %s (%s)",
          cflash_status_string(st2), cflash_last_error());
}

/* A mixed-device call (q claims CUDA) must be refused without touching memory. The status may
 * be INVALID_ARGUMENT or UNSUPPORTED (SPEC does not decide which). */
static void mixed_device_case(const void *arg)
{
    (void)arg;
    struct fix f;
    fix_init(&f, E_DENSE);
    f.q.device = CFLASH_DEVICE_CUDA;
    enum cflash_status st = fix_call(&f, E_DENSE);
    int clean = buf_clean(f.ob) && buf_clean(f.lb);
    fix_free(&f);
    CHECK(st == CFLASH_STATUS_INVALID_ARGUMENT || st == CFLASH_STATUS_UNSUPPORTED,
          "status %s, want INVALID_ARGUMENT or UNSUPPORTED", cflash_status_string(st));
    CHECK(clean, "outputs were written");
    CHECK(cflash_last_error()[0], "no message");
}

/* A forced kernel that this machine cannot run: UNSUPPORTED, nothing written. */
static void unsupported_case(const void *arg)
{
    enum cflash_kernel k = *(const enum cflash_kernel *)arg;
    if (cflash_kernel_available(k)) {
        tskip("kernel %s is available here; UNSUPPORTED cannot be provoked", kname(k));
        return;
    }
    struct fix f;
    fix_init(&f, E_DENSE);
    f.p.kernel = k;
    enum cflash_status st = fix_call(&f, E_DENSE);
    int clean = buf_clean(f.ob) && buf_clean(f.lb);
    fix_free(&f);
    CHECK(st == CFLASH_STATUS_UNSUPPORTED, "status %s, want UNSUPPORTED", cflash_status_string(st));
    CHECK(clean, "outputs were written");
    CHECK(cflash_last_error()[0], "no message");
}

/* ---- per-thread messages --------------------------------------------------------------- */

struct thread_result {
    char initial[256];
    char after[1024];
    enum cflash_status st;
};

static void *thread_body(void *arg)
{
    struct thread_result *r = arg;
    const char *m = cflash_last_error();
    snprintf(r->initial, sizeof r->initial, "%s", m ? m : "(null)");
    struct fix f;
    fix_init(&f, E_VARLEN);
    mutate(&f, V_CUQ_START);
    r->st = fix_call(&f, E_VARLEN);
    m = cflash_last_error();
    snprintf(r->after, sizeof r->after, "%s", m ? m : "(null)");
    fix_free(&f);
    return NULL;
}

static void thread_local_case(const void *arg)
{
    (void)arg;
    struct fix f;
    fix_init(&f, E_DENSE);
    mutate(&f, D_SINKS_SHAPE);
    enum cflash_status st = fix_call(&f, E_DENSE);
    fix_free(&f);
    CHECK(st == CFLASH_STATUS_INVALID_ARGUMENT, "main thread call: %s", cflash_status_string(st));
    char before[1024];
    snprintf(before, sizeof before, "%s", cflash_last_error());
    CHECK(msg_names(before, "sinks"), "main thread message \"%s\" does not name sinks", before);

    struct thread_result r;
    memset(&r, 0, sizeof r);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, thread_body, &r) == 0, "pthread_create failed");
    pthread_join(th, NULL);
    CHECK(r.initial[0] == 0, "a fresh thread sees message \"%s\", want \"\"", r.initial);
    CHECK(r.st == CFLASH_STATUS_INVALID_ARGUMENT, "thread call: %s", cflash_status_string(r.st));
    CHECK(msg_names(r.after, "cu_seqlens_q"), "thread message \"%s\" does not name cu_seqlens_q",
          r.after);
    const char *now = cflash_last_error();
    CHECK(strcmp(now, before) == 0,
          "the main thread's message changed after another thread failed: \"%s\" -> \"%s\"",
          before, now);
}

/* ---- small API helpers ----------------------------------------------------------------- */

static void api_strings_case(const void *arg)
{
    (void)arg;
    static const struct {
        enum cflash_status s;
        const char *name;
    } st[] = {{CFLASH_STATUS_OK, "OK"},
              {CFLASH_STATUS_INVALID_ARGUMENT, "INVALID_ARGUMENT"},
              {CFLASH_STATUS_UNSUPPORTED, "UNSUPPORTED"},
              {CFLASH_STATUS_OUT_OF_MEMORY, "OUT_OF_MEMORY"},
              {CFLASH_STATUS_DEVICE_ERROR, "DEVICE_ERROR"}};
    for (size_t i = 0; i < sizeof st / sizeof st[0]; i++) {
        const char *s = cflash_status_string(st[i].s);
        CHECK(s && strcmp(s, st[i].name) == 0, "cflash_status_string(%d) = \"%s\", want \"%s\"",
              (int)st[i].s, s ? s : "(null)", st[i].name);
    }
    const char *bad = cflash_status_string((enum cflash_status)99);
    CHECK(bad != NULL, "cflash_status_string(99) returned NULL");
    static const struct {
        enum cflash_kernel k;
        const char *name;
    } kn[] = {{CFLASH_KERNEL_AUTO, "auto"},
              {CFLASH_KERNEL_REFERENCE, "ref"},
              {CFLASH_KERNEL_CPU_AVX512_BF16, "avx512bf16"},
              {CFLASH_KERNEL_CPU_AVX512, "avx512"},
              {CFLASH_KERNEL_CPU_AVX2, "avx2"},
              {CFLASH_KERNEL_CPU_GENERIC, "generic"},
              {(enum cflash_kernel)CFLASH_KERNEL_COUNT, "unknown"},
              {(enum cflash_kernel)99, "unknown"},
              {(enum cflash_kernel)-1, "unknown"}};
    for (size_t i = 0; i < sizeof kn / sizeof kn[0]; i++) {
        const char *s = cflash_kernel_name(kn[i].k);
        CHECK(s && strcmp(s, kn[i].name) == 0, "cflash_kernel_name(%d) = \"%s\", want \"%s\"",
              (int)kn[i].k, s ? s : "(null)", kn[i].name);
    }
    CHECK(cflash_kernel_available(CFLASH_KERNEL_AUTO) == 1, "AUTO not available");
    CHECK(cflash_kernel_available(CFLASH_KERNEL_REFERENCE) == 1, "REFERENCE not available");
    CHECK(cflash_kernel_available(CFLASH_KERNEL_CPU_GENERIC) == 1, "GENERIC (portable C) not available");
    CHECK(!cflash_kernel_available((enum cflash_kernel)99), "kernel 99 reported available");
    enum cflash_kernel a = cflash_kernel_auto();
    CHECK(a != CFLASH_KERNEL_AUTO && cflash_kernel_available(a),
          "cflash_kernel_auto() = %d is not a concrete available kernel", (int)a);
    CHECK(cflash_default_num_threads() >= 1, "cflash_default_num_threads() = %d",
          (int)cflash_default_num_threads());
}

static void api_defaults_case(const void *arg)
{
    (void)arg;
    struct cflash_attn_params d = cflash_attn_params_default(), m = CFLASH_ATTN_PARAMS_INIT;
    CHECK(d.scale == 0 && d.softcap == 0 && d.causal == 0 && d.align == CFLASH_ALIGN_BOTTOM_RIGHT &&
              d.window_left == -1 && d.window_right == -1 && d.alibi_slopes == NULL &&
              d.sinks == NULL && d.num_threads == 0 && d.kernel == CFLASH_KERNEL_AUTO,
          "cflash_attn_params_default() is not the documented default");
    CHECK(memcmp(&d.window_left, &m.window_left, sizeof d.window_left) == 0 &&
              m.window_right == -1 && m.kernel == CFLASH_KERNEL_AUTO,
          "CFLASH_ATTN_PARAMS_INIT differs from the default");
    size_t w = cflash_cpu_workspace_size(8, 2, 128, 128, 2);
    CHECK(w > 0, "cflash_cpu_workspace_size(valid) = 0");
    CHECK(cflash_cpu_workspace_size(8, 3, 128, 128, 2) == 0, "workspace size for Hq %% Hk != 0 is not 0");
    CHECK(cflash_cpu_workspace_size(8, 2, 0, 128, 2) == 0, "workspace size for D = 0 is not 0");
    CHECK(cflash_cpu_workspace_size(8, 2, 128, 1025, 2) == 0, "workspace size for Dv = 1025 is not 0");
    CHECK(cflash_cpu_workspace_size(8, 2, 1024, 1024, 2) > 0, "workspace size for D = Dv = 1024 is 0");
    size_t w1 = cflash_cpu_workspace_size(8, 2, 128, 128, 1), w4 = cflash_cpu_workspace_size(8, 2, 128, 128, 4);
    CHECK(w1 > 0 && w4 >= w1, "workspace does not grow with threads: %zu (1) vs %zu (4)", w1, w4);
}

void register_misuse_tests(void)
{
    char name[256];
    static const char *entry_name[3] = {"cflash_attn_dense", "cflash_attn_varlen", "cflash_merge"};
    for (int e = 0; e < 3; e++) {
        enum entry en = (enum entry)e;
        snprintf(name, sizeof name, "misuse/%s/baseline_ok", entry_name[e]);
        tcase_add(name, baseline_case, &en, sizeof en);
    }
    for (int i = 0; i < N_MISUSE; i++) {
        enum misuse_id id = (enum misuse_id)i;
        snprintf(name, sizeof name, "misuse/%s/%s", entry_name[misuse_info[i].e], misuse_info[i].desc);
        tcase_add(name, misuse_case, &id, sizeof id);
    }
    tcase_add("misuse/cflash_attn_dense/q.device=cuda", mixed_device_case, NULL, 0);
    for (int k = 0; k < N_FAST_KERNELS; k++) {
        snprintf(name, sizeof name, "misuse/unsupported/%s", kname(fast_kernels[k]));
        tcase_add(name, unsupported_case, &fast_kernels[k], sizeof fast_kernels[k]);
    }
    tcase_add("misuse/last_error/thread_local", thread_local_case, NULL, 0);
    tcase_add("api/strings_and_kernels", api_strings_case, NULL, 0);
    tcase_add("api/defaults_and_workspace", api_defaults_case, NULL, 0);
}
