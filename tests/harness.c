/*
 * harness.c - the runner (main) of cflash_tests and the shared helpers declared in harness.h.
 *
 * Usage: cflash_tests [-k SUBSTR]... [--list] [-v]
 *   -k SUBSTR  run only cases whose name contains SUBSTR (several -k: any of them); a leading
 *              '^' anchors SUBSTR at the start of the name.
 *   --list     print the selected case names and exit.
 *   -v         print every case with its result and time.
 *   --env-probe  (internal) the child process of test_env.c.
 * Prints each failing case with its reason, then one line "N passed, N failed, N skipped";
 * exits 1 if any case failed.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- runner ---------------------------------------------------------------------------- */

struct tcase {
    char *name;
    tcase_fn fn;
    void *arg;
};

static struct tcase *g_cases;
static size_t g_ncases, g_capcases;

static int g_failed, g_skipped;
static char g_msg[2048];

/* open-addressing set of registered names: a generator that produces the same parameters
 * twice registers the case once */
static uint64_t *g_hashes;
static size_t g_hashcap;

static int seen_before(const char *name)
{
    if (g_ncases * 2 >= g_hashcap) {
        size_t cap = g_hashcap ? 2 * g_hashcap : 4096;
        uint64_t *h = calloc(cap, sizeof *h);
        for (size_t i = 0; i < g_hashcap; i++)
            if (g_hashes[i]) {
                size_t j = g_hashes[i] & (cap - 1);
                while (h[j])
                    j = (j + 1) & (cap - 1);
                h[j] = g_hashes[i];
            }
        free(g_hashes);
        g_hashes = h;
        g_hashcap = cap;
    }
    uint64_t x = hash_str(name) | 1;
    size_t j = x & (g_hashcap - 1);
    while (g_hashes[j]) {
        if (g_hashes[j] == x)
            for (size_t i = 0; i < g_ncases; i++)
                if (strcmp(g_cases[i].name, name) == 0)
                    return 1;
        j = (j + 1) & (g_hashcap - 1);
    }
    g_hashes[j] = x;
    return 0;
}

void tcase_add(const char *name, tcase_fn fn, const void *arg, size_t argsize)
{
    if (seen_before(name))
        return;
    if (g_ncases == g_capcases) {
        g_capcases = g_capcases ? 2 * g_capcases : 256;
        g_cases = realloc(g_cases, g_capcases * sizeof *g_cases);
        if (!g_cases) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
    }
    struct tcase *c = &g_cases[g_ncases++];
    c->name = strdup(name);
    c->fn = fn;
    c->arg = NULL;
    if (argsize) {
        c->arg = malloc(argsize);
        memcpy(c->arg, arg, argsize);
    }
}

void tfail(const char *file, int line, const char *fmt, ...)
{
    if (g_failed)
        return;
    g_failed = 1;
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    int n = snprintf(g_msg, sizeof g_msg, "%s:%d: ", base, line);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg + n, sizeof g_msg - (size_t)n, fmt, ap);
    va_end(ap);
}

void tskip(const char *fmt, ...)
{
    g_skipped = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
}

int tfailed(void) { return g_failed; }

/* Every case must belong to one of the groups that CMakeLists.txt registers with ctest
 * (passed in as CFLASH_TEST_GROUPS="a,b,..."), or ctest would silently never run it. */
static void groups_case(const void *arg)
{
    (void)arg;
#ifdef CFLASH_TEST_GROUPS
    const char *groups = CFLASH_TEST_GROUPS;
    for (size_t i = 0; i < g_ncases; i++) {
        const char *name = g_cases[i].name, *slash = strchr(name, '/');
        size_t n = slash ? (size_t)(slash - name) : strlen(name);
        int found = 0;
        for (const char *g = groups; *g && !found;) {
            size_t gl = strcspn(g, ",");
            found = gl == n && strncmp(g, name, n) == 0 && slash;
            g += gl + (g[gl] == ',');
        }
        CHECK(found, "case %s is in no ctest group (%s)", name, groups);
    }
#else
    tskip("CFLASH_TEST_GROUPS not defined by the build");
#endif
}

static int matches(const char *name, char **pats, int npats)
{
    if (npats == 0)
        return 1;
    for (int i = 0; i < npats; i++) {
        const char *p = pats[i];
        if (p[0] == '^') {
            if (strncmp(name, p + 1, strlen(p + 1)) == 0)
                return 1;
        } else if (strstr(name, p)) {
            return 1;
        }
    }
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--env-probe") == 0)
        return env_probe_main();
    char **pats = calloc((size_t)argc + 1, sizeof *pats);
    int npats = 0, list = 0, verbose = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-k") == 0 && i + 1 < argc) {
            pats[npats++] = argv[++i];
        } else if (strncmp(argv[i], "-k", 2) == 0 && argv[i][2]) {
            pats[npats++] = argv[i] + 2;
        } else if (strcmp(argv[i], "--list") == 0) {
            list = 1;
        } else if (strcmp(argv[i], "-v") == 0) {
            verbose = 1;
        } else {
            fprintf(stderr, "usage: %s [-k SUBSTR]... [--list] [-v]\n", argv[0]);
            return 2;
        }
    }

    register_worked_tests();
    register_attn_tests();
    register_thread_tests();
    register_merge_tests();
    register_misuse_tests();
    register_edge_tests();
    register_env_tests();
    register_range_tests();
    register_mask_tests();
    register_kvcache_tests();
    register_split_tests();
    register_rotary_tests();
    register_context_tests();
    register_cuda_tests();
    register_cuda_kvcache_tests();
    tcase_add("api/every_case_in_a_ctest_group", groups_case, NULL, 0);

    int passed = 0, failed = 0, skipped = 0;
    double t0 = now_s();
    for (size_t i = 0; i < g_ncases; i++) {
        struct tcase *c = &g_cases[i];
        if (!matches(c->name, pats, npats))
            continue;
        if (list) {
            printf("%s\n", c->name);
            continue;
        }
        g_failed = 0;
        g_skipped = 0;
        g_msg[0] = 0;
        double t = now_s();
        c->fn(c->arg);
        t = now_s() - t;
        if (g_failed) {
            failed++;
            printf("FAIL %s\n     %s\n", c->name, g_msg);
        } else if (g_skipped) {
            skipped++;
            printf("SKIP %s: %s\n", c->name, g_msg);
        } else {
            passed++;
            if (verbose)
                printf("ok   %s (%.3f s)\n", c->name, t);
        }
        fflush(stdout);
    }
    for (size_t i = 0; i < g_ncases; i++) {
        free(g_cases[i].name);
        free(g_cases[i].arg);
    }
    free(g_cases);
    free(g_hashes);
    free(pats);
    if (list)
        return 0;
    if (verbose)
        printf("total %.2f s\n", now_s() - t0);
    if (skipped)
        printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    else
        printf("%d passed, %d failed\n", passed, failed);
    if (passed + failed + skipped == 0) {
        fprintf(stderr, "no case matches the filter\n");
        return 1;
    }
    return failed ? 1 : 0;
}

/* ---- kernels --------------------------------------------------------------------------- */

const enum cflash_kernel all_kernels[N_ALL_KERNELS] = {
    CFLASH_KERNEL_REFERENCE, CFLASH_KERNEL_CPU_AVX512_BF16, CFLASH_KERNEL_CPU_AVX512,
    CFLASH_KERNEL_CPU_AVX2, CFLASH_KERNEL_CPU_GENERIC};
const enum cflash_kernel fast_kernels[N_FAST_KERNELS] = {
    CFLASH_KERNEL_CPU_AVX512_BF16, CFLASH_KERNEL_CPU_AVX512, CFLASH_KERNEL_CPU_AVX2,
    CFLASH_KERNEL_CPU_GENERIC};

/* The test's own names, so case names do not depend on the library under test. */
const char *kname(enum cflash_kernel k)
{
    switch (k) {
    case CFLASH_KERNEL_AUTO: return "auto";
    case CFLASH_KERNEL_REFERENCE: return "ref";
    case CFLASH_KERNEL_CPU_AVX512_BF16: return "avx512bf16";
    case CFLASH_KERNEL_CPU_AVX512: return "avx512";
    case CFLASH_KERNEL_CPU_AVX2: return "avx2";
    case CFLASH_KERNEL_CPU_GENERIC: return "generic";
    }
    return "unknown";
}

int require_kernel(enum cflash_kernel k)
{
    if (!cflash_kernel_available(k)) {
        tskip("kernel %s is not available on this machine", kname(k));
        return 0;
    }
    return 1;
}

/* ---- PRNG ------------------------------------------------------------------------------ */

uint64_t rng_next(struct rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double rng_uniform(struct rng *r) { return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }

double rng_normal(struct rng *r)
{
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

int64_t rng_int(struct rng *r, int64_t n) { return n <= 0 ? 0 : (int64_t)(rng_next(r) % (uint64_t)n); }

uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

/* ---- dtypes ---------------------------------------------------------------------------- */

uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u);
    if (ax >= 0x47800000u) /* >= 65536 (and inf) */
        return (uint16_t)(sign | 0x7c00u);
    if (ax >= 0x38800000u) { /* normal half: [2^-14, 65536) */
        uint32_t mant = ax & 0x7fffffu;
        uint32_t e = (ax >> 23) - 127 + 15;
        uint32_t h = (e << 10) | (mant >> 13);
        uint32_t rem = mant & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
            h++; /* a carry into the exponent (up to inf) is the right result */
        return (uint16_t)(sign | h);
    }
    /* subnormal half: multiples of 2^-24, round half to even */
    float a;
    memcpy(&a, &ax, 4);
    uint32_t m = (uint32_t)nearbyintf(a * 16777216.0f);
    return (uint16_t)(sign | m);
}

float f16_to_f32(uint16_t h)
{
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    float r;
    if (e == 0)
        r = ldexpf((float)m, -24);
    else if (e == 31)
        r = m ? NAN : INFINITY;
    else
        r = ldexpf((float)(m | 0x400u), (int)e - 25);
    return (h & 0x8000u) ? -r : r;
}

uint16_t f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

float bf16_to_f32(uint16_t h)
{
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

size_t dtype_size(enum cflash_dtype dt)
{
    switch (dt) {
    case CFLASH_DTYPE_F32: return 4;
    case CFLASH_DTYPE_F16: return 2;
    case CFLASH_DTYPE_BF16: return 2;
    case CFLASH_DTYPE_I32: return 4;
    case CFLASH_DTYPE_U8: return 1;
    }
    return 4;
}

const char *dtype_name(enum cflash_dtype dt)
{
    switch (dt) {
    case CFLASH_DTYPE_F32: return "f32";
    case CFLASH_DTYPE_F16: return "f16";
    case CFLASH_DTYPE_BF16: return "bf16";
    case CFLASH_DTYPE_I32: return "i32";
    case CFLASH_DTYPE_U8: return "u8";
    }
    return "?";
}

double round_to(enum cflash_dtype dt, double x)
{
    switch (dt) {
    case CFLASH_DTYPE_F32: return (double)(float)x;
    case CFLASH_DTYPE_F16: return (double)f16_to_f32(f32_to_f16((float)x));
    case CFLASH_DTYPE_BF16: return (double)bf16_to_f32(f32_to_bf16((float)x));
    case CFLASH_DTYPE_I32: return (double)(int32_t)x;
    case CFLASH_DTYPE_U8: return (double)(uint8_t)x;
    }
    return x;
}

/* ---- tensors --------------------------------------------------------------------------- */

int64_t tnumel(const struct cflash_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

int64_t toffset(const struct cflash_tensor *t, const int64_t *idx)
{
    int64_t off = 0;
    for (int i = 0; i < t->ndim; i++)
        off += idx[i] * t->stride[i];
    return off;
}

static void span(const struct cflash_tensor *t, int64_t *lo, int64_t *hi)
{
    *lo = 0;
    *hi = 0;
    for (int i = 0; i < t->ndim; i++) {
        int64_t e = (t->shape[i] - 1) * t->stride[i];
        if (e < 0)
            *lo += e;
        else
            *hi += e;
    }
}

static void tbuf_alloc_span(struct tbuf *b)
{
    b->base = NULL;
    b->bytes = 0;
    b->t.data = NULL;
    if (tnumel(&b->t) == 0)
        return; /* zero elements: data == NULL is allowed by the API */
    int64_t lo, hi;
    span(&b->t, &lo, &hi);
    size_t es = dtype_size(b->t.dtype);
    b->bytes = (size_t)(hi - lo + 1) * es;
    b->base = malloc(b->bytes);
    if (!b->base) {
        fprintf(stderr, "out of memory (%zu bytes)\n", b->bytes);
        exit(2);
    }
    memset(b->base, 0, b->bytes);
    b->t.data = b->base + (size_t)(-lo) * es;
}

void tbuf_make_strided(struct tbuf *b, enum cflash_dtype dt, int ndim, const int64_t *shape,
                       const int64_t *stride)
{
    memset(b, 0, sizeof *b);
    b->t.dtype = dt;
    b->t.ndim = ndim;
    b->t.device = CFLASH_DEVICE_CPU;
    for (int i = 0; i < ndim; i++) {
        b->t.shape[i] = shape[i];
        b->t.stride[i] = stride[i];
    }
    tbuf_alloc_span(b);
}

void tbuf_make(struct tbuf *b, enum cflash_dtype dt, int ndim, const int64_t *shape,
               const int *order, int pad, int flip)
{
    int ord[CFLASH_MAX_DIMS];
    for (int i = 0; i < ndim; i++)
        ord[i] = order ? order[i] : i;
    int64_t stride[CFLASH_MAX_DIMS] = {0};
    int64_t s = 1;
    for (int k = ndim - 1; k >= 0; k--) {
        int ax = ord[k];
        stride[ax] = s;
        /* size-0 axes count as 1 so that strides stay positive; odd pads make odd strides */
        s = s * (shape[ax] > 0 ? shape[ax] : 1) + (pad ? pad + 2 * (ndim - 1 - k) : 0);
    }
    if (flip >= 0 && flip < ndim)
        stride[flip] = -stride[flip];
    tbuf_make_strided(b, dt, ndim, shape, stride);
}

void tbuf_free(struct tbuf *b)
{
    free(b->base);
    b->base = NULL;
    b->t.data = NULL;
}

double tget(const struct cflash_tensor *t, const int64_t *idx)
{
    int64_t off = toffset(t, idx);
    const unsigned char *p = (const unsigned char *)t->data + off * (int64_t)dtype_size(t->dtype);
    switch (t->dtype) {
    case CFLASH_DTYPE_F32: {
        float f;
        memcpy(&f, p, 4);
        return f;
    }
    case CFLASH_DTYPE_F16: {
        uint16_t h;
        memcpy(&h, p, 2);
        return f16_to_f32(h);
    }
    case CFLASH_DTYPE_BF16: {
        uint16_t h;
        memcpy(&h, p, 2);
        return bf16_to_f32(h);
    }
    case CFLASH_DTYPE_I32: {
        int32_t v;
        memcpy(&v, p, 4);
        return v;
    }
    case CFLASH_DTYPE_U8: return *p;
    }
    return 0;
}

void tset(const struct cflash_tensor *t, const int64_t *idx, double v)
{
    int64_t off = toffset(t, idx);
    unsigned char *p = (unsigned char *)t->data + off * (int64_t)dtype_size(t->dtype);
    switch (t->dtype) {
    case CFLASH_DTYPE_F32: {
        float f = (float)v;
        memcpy(p, &f, 4);
        break;
    }
    case CFLASH_DTYPE_F16: {
        uint16_t h = f32_to_f16((float)v);
        memcpy(p, &h, 2);
        break;
    }
    case CFLASH_DTYPE_BF16: {
        uint16_t h = f32_to_bf16((float)v);
        memcpy(p, &h, 2);
        break;
    }
    case CFLASH_DTYPE_I32: {
        int32_t x = (int32_t)v;
        memcpy(p, &x, 4);
        break;
    }
    case CFLASH_DTYPE_U8: *p = (unsigned char)v; break;
    }
}

static void unflatten(const struct cflash_tensor *t, int64_t lin, int64_t *idx)
{
    for (int i = t->ndim - 1; i >= 0; i--) {
        idx[i] = lin % t->shape[i];
        lin /= t->shape[i];
    }
}

void tfill_randn(const struct cflash_tensor *t, struct rng *r, double mean, double sd)
{
    int64_t n = tnumel(t), idx[CFLASH_MAX_DIMS];
    for (int64_t i = 0; i < n; i++) {
        unflatten(t, i, idx);
        tset(t, idx, mean + sd * rng_normal(r));
    }
}

double *tload(const struct cflash_tensor *t)
{
    int64_t n = tnumel(t), idx[CFLASH_MAX_DIMS];
    double *a = malloc((size_t)(n > 0 ? n : 1) * sizeof *a);
    for (int64_t i = 0; i < n; i++) {
        unflatten(t, i, idx);
        a[i] = tget(t, idx);
    }
    return a;
}

void tbuf_poison(struct tbuf *b, unsigned char byte)
{
    if (b->base)
        memset(b->base, byte, b->bytes);
}

int64_t tbuf_gap_changes(const struct tbuf *b, unsigned char byte)
{
    if (!b->base)
        return 0;
    size_t es = dtype_size(b->t.dtype);
    unsigned char *cover = calloc(b->bytes, 1);
    int64_t n = tnumel(&b->t), idx[CFLASH_MAX_DIMS];
    for (int64_t i = 0; i < n; i++) {
        unflatten(&b->t, i, idx);
        const unsigned char *p =
            (const unsigned char *)b->t.data + toffset(&b->t, idx) * (int64_t)es;
        memset(cover + (p - b->base), 1, es);
    }
    int64_t changed = 0;
    for (size_t i = 0; i < b->bytes; i++)
        if (!cover[i] && b->base[i] != byte)
            changed++;
    free(cover);
    return changed;
}

struct cflash_tensor tdesc(void *data, enum cflash_dtype dt, int ndim, const int64_t *shape)
{
    struct cflash_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dt;
    t.ndim = ndim;
    t.device = CFLASH_DEVICE_CPU;
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t.shape[i] = shape[i];
        t.stride[i] = s;
        s *= shape[i] > 0 ? shape[i] : 1;
    }
    return t;
}

int msg_names(const char *msg, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = msg; (p = strstr(p, name)) != NULL; p++) {
        int before = p > msg && (p[-1] == '_' || (p[-1] >= 'a' && p[-1] <= 'z') ||
                                 (p[-1] >= 'A' && p[-1] <= 'Z') || (p[-1] >= '0' && p[-1] <= '9'));
        char c = p[n];
        int after = c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9');
        if (!before && !after)
            return 1;
    }
    return 0;
}

int msg_names_any(const char *msg, const char *names)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", names);
    for (char *save = NULL, *tok = strtok_r(buf, "|", &save); tok; tok = strtok_r(NULL, "|", &save))
        if (msg_names(msg, tok))
            return 1;
    return 0;
}
