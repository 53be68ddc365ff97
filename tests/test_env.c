/*
 * test_env.c - the environment variables of SPEC 9 as the C library sees them:
 * CFLASH_KERNEL overrides AUTO (and a bad value is an error, never a silent fallback) and
 * CFLASH_NUM_THREADS sets the default thread count. The library may read the environment
 * once per process, so each case runs this binary again (`cflash_tests --env-probe`) with the
 * variable set, and reads what the probe prints.
 */
#define _GNU_SOURCE
#include "attn_common.h"

#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the probe (runs in the child) ------------------------------------------------------ */

int env_probe_main(void)
{
    printf("auto=%s\n", kname(cflash_kernel_auto()));
    printf("threads=%d\n", (int)cflash_default_num_threads());
    /* an AUTO call: its status, and whether its bytes equal the kernel AUTO names */
    struct attn_cfg c = cfg_default();
    c.dtype = CFLASH_DTYPE_BF16;
    c.B = 2;
    c.Lq = 9;
    c.Lk = 20;
    c.Hq = 4;
    c.Hk = 2;
    c.D = c.Dv = 32;
    c.causal = 1;
    struct attn_setup s;
    attn_setup(&s, &c);
    struct tbuf o1, l1, o2, l2;
    attn_make_out(&s, &o1, c.dtype, OUT_CONTIG);
    attn_make_lse(&s, &l1, LSE_CONTIG);
    attn_make_out(&s, &o2, c.dtype, OUT_CONTIG);
    attn_make_lse(&s, &l2, LSE_CONTIG);
    tbuf_poison(&o1, 0x7f);
    tbuf_poison(&l1, 0x7f);
    enum cflash_status st = attn_call(&s, CFLASH_KERNEL_AUTO, 0, &o1.t, &l1.t);
    printf("status=%s\n", cflash_status_string(st));
    printf("msg=%s\n", st == CFLASH_STATUS_OK ? "" : cflash_last_error());
    int written = 0;
    for (size_t i = 0; i < o1.bytes; i++)
        written |= o1.base[i] != 0x7f;
    printf("written=%d\n", written);
    if (st == CFLASH_STATUS_OK) {
        enum cflash_status st2 = attn_call(&s, cflash_kernel_auto(), 1, &o2.t, &l2.t);
        int same = st2 == CFLASH_STATUS_OK && memcmp(o1.base, o2.base, o1.bytes) == 0 &&
                   memcmp(l1.base, l2.base, l1.bytes) == 0;
        printf("same=%d\n", same);
    }
    tbuf_free(&o1);
    tbuf_free(&l1);
    tbuf_free(&o2);
    tbuf_free(&l2);
    attn_free(&s);
    fflush(stdout);
    return 0;
}

/* ---- the cases (run in the parent) ------------------------------------------------------- */

/* Runs the probe with NAME=VALUE (VALUE NULL: unset) and returns its output (caller frees). */
static char *run_probe(const char *name, const char *value)
{
    int fd[2];
    if (pipe(fd) != 0)
        return NULL;
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        return NULL;
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        unsetenv("CFLASH_KERNEL");
        unsetenv("CFLASH_NUM_THREADS");
        if (value)
            setenv(name, value, 1);
        char *argv[] = {"cflash_tests", "--env-probe", NULL};
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(fd[1]);
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    ssize_t n;
    while ((n = read(fd[0], buf + len, cap - len - 1)) > 0) {
        len += (size_t)n;
        if (cap - len < 2) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    buf[len] = 0;
    close(fd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* Value of "key=" in the probe output (static buffer). */
static const char *field(const char *out, const char *key)
{
    static char val[512];
    char pat[64];
    snprintf(pat, sizeof pat, "%s=", key);
    const char *p = out;
    while ((p = strstr(p, pat)) != NULL) {
        if (p == out || p[-1] == '\n') {
            p += strlen(pat);
            size_t n = strcspn(p, "\n");
            if (n >= sizeof val)
                n = sizeof val - 1;
            memcpy(val, p, n);
            val[n] = 0;
            return val;
        }
        p++;
    }
    return "";
}

struct env_arg {
    const char *value; /* CFLASH_KERNEL value */
    enum cflash_kernel want;
};

static void env_kernel_case(const void *arg)
{
    const struct env_arg *a = arg;
    if (!require_kernel(a->want))
        return;
    char *out = run_probe("CFLASH_KERNEL", a->value);
    CHECK(out, "the probe process failed");
    char got_auto[512], got_status[512], got_same[512];
    snprintf(got_auto, sizeof got_auto, "%s", field(out, "auto"));
    snprintf(got_status, sizeof got_status, "%s", field(out, "status"));
    snprintf(got_same, sizeof got_same, "%s", field(out, "same"));
    free(out);
    CHECK(strcmp(got_auto, kname(a->want)) == 0, "CFLASH_KERNEL=%s: cflash_kernel_auto() = %s, want %s",
          a->value, got_auto, kname(a->want));
    CHECK(strcmp(got_status, "OK") == 0, "CFLASH_KERNEL=%s: AUTO call returned %s", a->value, got_status);
    CHECK(strcmp(got_same, "1") == 0, "CFLASH_KERNEL=%s: AUTO and the forced %s kernel differ",
          a->value, kname(a->want));
}

/* A value that names no kernel: the AUTO call fails (no silent fallback), writes nothing and
 * names the variable. */
static void env_kernel_bad_case(const void *arg)
{
    (void)arg;
    char *out = run_probe("CFLASH_KERNEL", "no_such_kernel");
    CHECK(out, "the probe process failed");
    char st[512], msg[512], written[512];
    snprintf(st, sizeof st, "%s", field(out, "status"));
    snprintf(msg, sizeof msg, "%s", field(out, "msg"));
    snprintf(written, sizeof written, "%s", field(out, "written"));
    free(out);
    CHECK(strcmp(st, "INVALID_ARGUMENT") == 0 || strcmp(st, "UNSUPPORTED") == 0,
          "CFLASH_KERNEL=no_such_kernel: AUTO call returned %s, want an error", st);
    CHECK(strcmp(written, "0") == 0, "CFLASH_KERNEL=no_such_kernel: the failed call wrote out");
    CHECK(msg_names(msg, "CFLASH_KERNEL"), "message \"%s\" does not name CFLASH_KERNEL", msg);
}

static void env_threads_case(const void *arg)
{
    (void)arg;
    char *out = run_probe("CFLASH_NUM_THREADS", "3");
    CHECK(out, "the probe process failed");
    char th[512], st[512], same[512];
    snprintf(th, sizeof th, "%s", field(out, "threads"));
    snprintf(st, sizeof st, "%s", field(out, "status"));
    snprintf(same, sizeof same, "%s", field(out, "same"));
    free(out);
    CHECK(strcmp(th, "3") == 0, "CFLASH_NUM_THREADS=3: cflash_default_num_threads() = %s", th);
    CHECK(strcmp(st, "OK") == 0, "CFLASH_NUM_THREADS=3: call returned %s", st);
    CHECK(strcmp(same, "1") == 0, "CFLASH_NUM_THREADS=3 (3 threads) and 1 thread give different bytes");
}

void register_env_tests(void)
{
    static const struct env_arg ks[] = {{"ref", CFLASH_KERNEL_REFERENCE},
                                        {"generic", CFLASH_KERNEL_CPU_GENERIC},
                                        {"avx2", CFLASH_KERNEL_CPU_AVX2},
                                        {"avx512", CFLASH_KERNEL_CPU_AVX512},
                                        {"avx512bf16", CFLASH_KERNEL_CPU_AVX512_BF16}};
    char name[128];
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
        snprintf(name, sizeof name, "env/CFLASH_KERNEL=%s", ks[i].value);
        tcase_add(name, env_kernel_case, &ks[i], sizeof ks[i]);
    }
    tcase_add("env/CFLASH_KERNEL=no_such_kernel", env_kernel_bad_case, NULL, 0);
    tcase_add("env/CFLASH_NUM_THREADS=3", env_threads_case, NULL, 0);
}
