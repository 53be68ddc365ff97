/*
 * test_rotary.c - rotary embedding on KV-cache append (cflash_kvcache.rotary_cos/sin):
 * the appended cache rows equal k_new rotated at cache_seqlens[b] + t, and the attention equals
 * an fp32 reference-kernel attention over the rotated keys with q rotated at cache_seqlens[b] + i
 * (causal or window) or at cache_seqlens[b] (otherwise), for both pair conventions, contiguous
 * and paged caches, every kernel. Misuse: bad tables return INVALID_ARGUMENT, nothing written.
 * Cases are named kvcache/rotary/... so the kvcache ctest group runs them.
 */
#include "harness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { RB = 2, RLMAX = 24, RHQ = 4, RHK = 2, RD = 16, RLNEW = 3, RLQ = 3, RLRO = 40 };

struct rcase {
    enum cflash_kernel kernel;
    enum cflash_dtype dtype;
    int interleaved, causal, paged, rd, misuse;
};

static float rnd(struct rng *r) { return (float)(2.0 * rng_uniform(r) - 1.0); }

/* element i of a buffer of dtype dt, as float */
static float get(const void *p, enum cflash_dtype dt, int64_t i)
{
    if (dt == CFLASH_DTYPE_F32) return ((const float *)p)[i];
    const uint16_t h = ((const uint16_t *)p)[i];
    return dt == CFLASH_DTYPE_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}
static void put(void *p, enum cflash_dtype dt, int64_t i, float x)
{
    if (dt == CFLASH_DTYPE_F32) ((float *)p)[i] = x;
    else ((uint16_t *)p)[i] = dt == CFLASH_DTYPE_BF16 ? f32_to_bf16(x) : f32_to_f16(x);
}

static void rotate(double *x, const float *cs, const float *sn, int rd, int inter, int pos)
{
    for (int j = 0; j < rd / 2; j++) {
        const int i1 = inter ? 2 * j : j, i2 = inter ? 2 * j + 1 : j + rd / 2;
        const double c = cs[pos * (rd / 2) + j], s = sn[pos * (rd / 2) + j];
        const double a = x[i1], b = x[i2];
        x[i1] = a * c - b * s;
        x[i2] = a * s + b * c;
    }
}

static struct cflash_tensor t4(void *d, enum cflash_dtype dt, int64_t a, int64_t b, int64_t c, int64_t e)
{
    const int64_t shape[4] = {a, b, c, e};
    return tdesc(d, dt, 4, shape);
}

static void rotary_case(const void *arg)
{
    const struct rcase *rc = arg;
    if (!cflash_kernel_available(rc->kernel)) {
        tskip("kernel %s is not available on this machine", cflash_kernel_name(rc->kernel));
        return;
    }
    const enum cflash_dtype dt = rc->dtype;
    const int es = dt == CFLASH_DTYPE_F32 ? 4 : 2, rd = rc->rd, half = rd / 2;
    struct rng r = {0x7a11 + (uint64_t)(rc->kernel * 131 + dt * 17 + rc->interleaved * 7 + rc->causal * 3 + rc->paged)};
    const int32_t seqlens[RB] = {5, 11};
    /* the cache: contiguous [RB, RLMAX, RHK, RD], or 4-row pages [12, 4, RHK, RD] (same bytes),
     * pages of batch b reversed in the pool */
    const int64_t cache_elems = (int64_t)RB * RLMAX * RHK * RD;
    void *kc = malloc((size_t)(cache_elems * es)), *vc = malloc((size_t)(cache_elems * es));
    void *q = malloc((size_t)(RB * RLQ * RHQ * RD * es)), *kn = malloc((size_t)(RB * RLNEW * RHK * RD * es));
    void *vn = malloc((size_t)(RB * RLNEW * RHK * RD * es)), *out = malloc((size_t)(RB * RLQ * RHQ * RD * es));
    float cosb[RLRO * RD / 2], sinb[RLRO * RD / 2];
    for (int64_t i = 0; i < cache_elems; i++) { put(kc, dt, i, rnd(&r)); put(vc, dt, i, rnd(&r)); }
    for (int64_t i = 0; i < RB * RLQ * RHQ * RD; i++) put(q, dt, i, rnd(&r));
    for (int64_t i = 0; i < RB * RLNEW * RHK * RD; i++) { put(kn, dt, i, rnd(&r)); put(vn, dt, i, rnd(&r)); }
    for (int p = 0; p < RLRO; p++)
        for (int j = 0; j < half; j++) {
            const double th = p * pow(10000.0, -2.0 * j / rd);
            cosb[p * half + j] = (float)cos(th);
            sinb[p * half + j] = (float)sin(th);
        }
    void *kc0 = malloc((size_t)(cache_elems * es)), *vc0 = malloc((size_t)(cache_elems * es));
    memcpy(kc0, kc, (size_t)(cache_elems * es));
    memcpy(vc0, vc, (size_t)(cache_elems * es));

    const int page = 4, npages = RB * RLMAX / page, per_b = RLMAX / page;
    int32_t table[RB][RLMAX / 4];
    for (int b = 0; b < RB; b++)
        for (int p = 0; p < per_b; p++) table[b][p] = b * per_b + (per_b - 1 - p);
    /* logical (b, t) -> element offset of row start in the cache buffer */
    #define ROW(b, t, h) (rc->paged ? (((int64_t)table[b][(t) / page] * page + (t) % page) * RHK + (h)) * RD \
                                    : ((((int64_t)(b) * RLMAX + (t)) * RHK + (h)) * RD))

    struct cflash_tensor K = rc->paged ? t4(kc, dt, npages, page, RHK, RD) : t4(kc, dt, RB, RLMAX, RHK, RD);
    struct cflash_tensor V = rc->paged ? t4(vc, dt, npages, page, RHK, RD) : t4(vc, dt, RB, RLMAX, RHK, RD);
    const int64_t s1[1] = {RB}, s2[2] = {RB, per_b}, sro[2] = {RLRO, half};
    struct cflash_tensor SL = tdesc((void *)seqlens, CFLASH_DTYPE_I32, 1, s1);
    struct cflash_tensor BT = tdesc(table, CFLASH_DTYPE_I32, 2, s2);
    struct cflash_tensor C = tdesc(cosb, CFLASH_DTYPE_F32, 2, sro), S = tdesc(sinb, CFLASH_DTYPE_F32, 2, sro);
    struct cflash_tensor Q = t4(q, dt, RB, RLQ, RHQ, RD), KN = t4(kn, dt, RB, RLNEW, RHK, RD);
    struct cflash_tensor VN = t4(vn, dt, RB, RLNEW, RHK, RD), O = t4(out, dt, RB, RLQ, RHQ, RD);
    struct cflash_kvcache cache = {&K, &V, &SL, NULL, rc->paged ? &BT : NULL, &C, &S, rc->interleaved};
    struct cflash_attn_params p = cflash_attn_params_default();
    p.kernel = rc->kernel;
    p.causal = rc->causal;

    if (rc->misuse) {
        const int64_t short_shape[2] = {seqlens[1] + RLNEW - 1, half}; /* one row short */
        struct cflash_tensor Cs = tdesc(cosb, CFLASH_DTYPE_F32, 2, short_shape), Ss = tdesc(sinb, CFLASH_DTYPE_F32, 2, short_shape);
        const int64_t wide[2] = {RLRO, RD / 2 + 1};
        struct cflash_tensor Cw = tdesc(cosb, CFLASH_DTYPE_F32, 2, wide);
        memset(out, 0x7f, (size_t)(RB * RLQ * RHQ * RD * es));
        struct cflash_kvcache bad = cache;
        bad.rotary_cos = &Cs; bad.rotary_sin = &Ss;                 /* table too short */
        CHECK_STATUS(cflash_attn_kvcache(&Q, &bad, &KN, &VN, &O, NULL, &p), CFLASH_STATUS_INVALID_ARGUMENT);
        CHECK(strstr(cflash_last_error(), "rotary_cos"), "message \"%s\" does not name rotary_cos", cflash_last_error());
        bad = cache; bad.rotary_cos = &Cw;                          /* rotary_dim > D, shapes differ */
        CHECK_STATUS(cflash_attn_kvcache(&Q, &bad, &KN, &VN, &O, NULL, &p), CFLASH_STATUS_INVALID_ARGUMENT);
        bad = cache; bad.rotary_sin = NULL;                         /* cos without sin */
        CHECK_STATUS(cflash_attn_kvcache(&Q, &bad, &KN, &VN, &O, NULL, &p), CFLASH_STATUS_INVALID_ARGUMENT);
        bad = cache; bad.rotary_interleaved = 2;
        CHECK_STATUS(cflash_attn_kvcache(&Q, &bad, &KN, &VN, &O, NULL, &p), CFLASH_STATUS_INVALID_ARGUMENT);
        CHECK(strstr(cflash_last_error(), "rotary_interleaved"), "message \"%s\" does not name rotary_interleaved", cflash_last_error());
        CHECK_STATUS(cflash_attn_kvcache(&Q, &cache, NULL, NULL, &O, NULL, &p), CFLASH_STATUS_INVALID_ARGUMENT); /* no k_new */
        CHECK(memcmp(kc, kc0, (size_t)(cache_elems * es)) == 0 && memcmp(vc, vc0, (size_t)(cache_elems * es)) == 0,
              "a failed call changed the cache");
        for (int64_t i = 0; i < (int64_t)(RB * RLQ * RHQ * RD * es); i++)
            CHECK(((unsigned char *)out)[i] == 0x7f, "a failed call wrote out");
        goto done;
    }

    CHECK_STATUS(cflash_attn_kvcache(&Q, &cache, &KN, &VN, &O, NULL, &p), CFLASH_STATUS_OK);

    /* 1. appended rows: k_new rotated (fp64) then rounded to dt; v_new copied exactly */
    const double ktol = dt == CFLASH_DTYPE_F32 ? 1e-6 : dt == CFLASH_DTYPE_BF16 ? 1.6e-2 : 2e-3;
    for (int b = 0; b < RB; b++)
        for (int t = 0; t < RLNEW; t++)
            for (int h = 0; h < RHK; h++) {
                double x[RD];
                for (int d = 0; d < RD; d++) x[d] = get(kn, dt, ((b * RLNEW + t) * RHK + h) * RD + d);
                rotate(x, cosb, sinb, rd, rc->interleaved, seqlens[b] + t);
                const int64_t row = ROW(b, seqlens[b] + t, h);
                for (int d = 0; d < RD; d++) {
                    const double got = get(kc, dt, row + d);
                    CHECK(fabs(got - x[d]) <= ktol * (1.0 + fabs(x[d])), "cache k[b=%d, t=%d, h=%d, d=%d] = %g, want rotated %g", b, seqlens[b] + t, h, d, got, x[d]);
                    CHECK(get(vc, dt, row + d) == get(vn, dt, ((b * RLNEW + t) * RHK + h) * RD + d), "cache v[b=%d] not the new row", b);
                }
            }

    /* 2. attention: fp32 reference over the keys as stored, q rotated in fp64 */
    double maxerr = 0;
    for (int b = 0; b < RB; b++) {
        const int Lk = seqlens[b] + RLNEW;
        float *qq = malloc(sizeof(float) * RLQ * RHQ * RD), *kk = malloc(sizeof(float) * (size_t)(Lk * RHK * RD));
        float *vv = malloc(sizeof(float) * (size_t)(Lk * RHK * RD)), *oo = malloc(sizeof(float) * RLQ * RHQ * RD);
        for (int t = 0; t < Lk; t++)
            for (int h = 0; h < RHK; h++)
                for (int d = 0; d < RD; d++) {
                    kk[(t * RHK + h) * RD + d] = get(kc, dt, ROW(b, t, h) + d);
                    vv[(t * RHK + h) * RD + d] = get(vc, dt, ROW(b, t, h) + d);
                }
        for (int i = 0; i < RLQ; i++)
            for (int h = 0; h < RHQ; h++) {
                double x[RD];
                for (int d = 0; d < RD; d++) x[d] = get(q, dt, ((b * RLQ + i) * RHQ + h) * RD + d);
                rotate(x, cosb, sinb, rd, rc->interleaved, seqlens[b] + (rc->causal ? i : 0));
                for (int d = 0; d < RD; d++) qq[(i * RHQ + h) * RD + d] = (float)x[d];
            }
        struct cflash_tensor q1 = t4(qq, CFLASH_DTYPE_F32, 1, RLQ, RHQ, RD), k1 = t4(kk, CFLASH_DTYPE_F32, 1, Lk, RHK, RD);
        struct cflash_tensor v1 = t4(vv, CFLASH_DTYPE_F32, 1, Lk, RHK, RD), o1 = t4(oo, CFLASH_DTYPE_F32, 1, RLQ, RHQ, RD);
        struct cflash_attn_params pr = cflash_attn_params_default();
        pr.causal = rc->causal;
        pr.kernel = CFLASH_KERNEL_REFERENCE;
        enum cflash_status st = cflash_attn_dense(&q1, &k1, &v1, &o1, NULL, &pr);
        if (st == CFLASH_STATUS_OK)
            for (int64_t i = 0; i < RLQ * RHQ * RD; i++) {
                const double e = fabs(get(out, dt, b * RLQ * RHQ * RD + i) - oo[i]);
                maxerr = e > maxerr ? e : maxerr;
            }
        free(qq); free(kk); free(vv); free(oo);
        CHECK(st == CFLASH_STATUS_OK, "reference call failed: %s", cflash_last_error());
    }
    /* fp32: the q copy is rotated in fp32 (1e-7); half types: out rounded to the dtype */
    const double otol = dt == CFLASH_DTYPE_F32 ? 2e-5 : dt == CFLASH_DTYPE_BF16 ? 1.6e-2 : 2e-3;
    CHECK(maxerr <= otol, "max |out - reference| = %g > %g", maxerr, otol);
done:
    #undef ROW
    free(kc); free(vc); free(kc0); free(vc0); free(q); free(kn); free(vn); free(out);
}

void register_rotary_tests(void)
{
    static const enum cflash_dtype dts[] = {CFLASH_DTYPE_F32, CFLASH_DTYPE_BF16, CFLASH_DTYPE_F16};
    static const char *dn[] = {"f32", "bf16", "f16"};
    char name[256];
    for (int ki = 0; ki < N_ALL_KERNELS; ki++)
        for (int di = 0; di < 3; di++)
            for (int v = 0; v < 8; v++) {
                struct rcase c = {all_kernels[ki], dts[di], v & 1, (v >> 1) & 1, (v >> 2) & 1, (v & 1) ? RD : RD / 2, 0};
                snprintf(name, sizeof name, "kvcache/rotary/%s/%s/interleaved=%d/causal=%d/paged=%d/rotary_dim=%d",
                         cflash_kernel_name(c.kernel), dn[di], c.interleaved, c.causal, c.paged, c.rd);
                tcase_add(name, rotary_case, &c, sizeof c);
            }
    struct rcase m = {CFLASH_KERNEL_REFERENCE, CFLASH_DTYPE_F32, 0, 1, 0, RD, 1};
    tcase_add("kvcache/rotary/misuse/tables", rotary_case, &m, sizeof m);
}
