/*
 * threads.c - a minimal fork-join parallel for over pthreads.
 *
 * Threads take items from a shared atomic counter (dynamic scheduling). Items must be
 * independent; which thread runs an item never changes what it computes. If the OS refuses a
 * thread, the threads that did start (at least the caller) finish all items: the result is the
 * same, only slower.
 */
#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct pool_ctx {
    _Atomic int64_t next;
    int64_t n;
    parallel_fn fn;
    void *ctx;
};

struct pool_arg {
    struct pool_ctx *pc;
    int32_t thread;
};

static void pool_loop(struct pool_ctx *pc, int32_t thread) {
    for (;;) {
        int64_t item = atomic_fetch_add_explicit(&pc->next, 1, memory_order_relaxed);
        if (item >= pc->n) break;
        pc->fn(pc->ctx, item, thread);
    }
}

static void *pool_main(void *p) {
    struct pool_arg *a = p;
    pool_loop(a->pc, a->thread);
    return NULL;
}

enum cflash_status cpu_parallel_for(int32_t num_threads, int64_t n, parallel_fn fn, void *ctx) {
    struct pool_ctx pc;
    atomic_init(&pc.next, 0);
    pc.n = n;
    pc.fn = fn;
    pc.ctx = ctx;
    if (num_threads <= 1 || n <= 1) {
        pool_loop(&pc, 0);
        return CFLASH_STATUS_OK;
    }
    pthread_t *tid = malloc(sizeof(pthread_t) * (size_t)num_threads);
    struct pool_arg *args = malloc(sizeof(struct pool_arg) * (size_t)num_threads);
    if (!tid || !args) {
        free(tid);
        free(args);
        pool_loop(&pc, 0);
        return CFLASH_STATUS_OK;
    }
    int32_t started = 0;
    for (int32_t t = 1; t < num_threads; t++) {
        args[t].pc = &pc;
        args[t].thread = t;
        if (pthread_create(&tid[t], NULL, pool_main, &args[t]) != 0) break;
        started = t;
    }
    pool_loop(&pc, 0);
    for (int32_t t = 1; t <= started; t++) pthread_join(tid[t], NULL);
    free(tid);
    free(args);
    return CFLASH_STATUS_OK;
}
