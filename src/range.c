/*
 * range.c - compiles a MagiAttention-style range plan into segments and slices (internal.h).
 *
 * Each plan slice (q_range, k_range, type) becomes one attn_slice in global coordinates: the
 * type's local band (full: none; causal: j - i <= Lk - Lq; inverse causal: j - i >= 0; band:
 * both) shifted by ks - qs. Overlap detection is exact: two slices share a cell iff the
 * intersection of their rectangles and bands is non-empty, an O(1) test (overlap_cell); the
 * candidate pairs are those whose row ranges overlap, found by a sweep over slices sorted by
 * first row, and filtered by column overlap before the exact test. Rows are then grouped into
 * blocks of RANGE_BLOCK_ROWS; each block is a segment listing copies of the slices that
 * intersect it, so the kernels see the same structure as for dense and packed inputs.
 */
#include "internal.h"
#ifdef CFLASH_HAVE_CUDA
#include "cuda/cuda.h"
#endif

#include <stdlib.h>
#include <string.h>

#define INVALID(...) cflash_set_error(CFLASH_STATUS_INVALID_ARGUMENT, __VA_ARGS__)

static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Does the intersection of slices a and b (rectangle and band) contain a cell? With b == a:
 * is a non-empty. Rows [r0, r1) x cols [c0, c1) reach every diagonal col - row in
 * [c0 - (r1 - 1), (c1 - 1) - r0]; the bands must meet it. */
static int overlap_cell(const struct attn_slice *a, const struct attn_slice *b) {
    const int64_t r0 = max64(a->q0, b->q0), r1 = min64(a->q1, b->q1);
    const int64_t c0 = max64(a->k0, b->k0), c1 = min64(a->k1, b->k1);
    if (r0 >= r1 || c0 >= c1) return 0;
    const int64_t d0 = max64(max64(a->dlo, b->dlo), c0 - (r1 - 1));
    const int64_t d1 = min64(min64(a->dhi, b->dhi), (c1 - 1) - r0);
    return d0 <= d1;
}

struct keyed { int64_t q0, k0, index, kept; }; /* index: in the caller's list; kept: in `all` */

static int keyed_cmp(const void *x, const void *y) {
    const struct keyed *a = x, *b = y;
    if (a->q0 != b->q0) return a->q0 < b->q0 ? -1 : 1;
    if (a->k0 != b->k0) return a->k0 < b->k0 ? -1 : 1;
    return a->index < b->index ? -1 : a->index > b->index;
}

static const char *type_name(int32_t t) {
    static const char *names[] = {"full", "causal", "inverse causal", "band"};
    return t >= 0 && t <= 3 ? names[t] : "unknown";
}

/* element (n, c) of an int32 [n, 2] or [n] tensor */
static inline int32_t at(const struct cflash_tensor *t, int64_t n, int c) {
    const int32_t *p = t->data;
    return p[n * t->stride[0] + (t->ndim == 2 ? c * t->stride[1] : 0)];
}

static enum cflash_status check_int_tensor(const char *name, const struct cflash_tensor *t,
                                           int ndim, int64_t n, int64_t cols) {
    if (!t) return INVALID("%s: must not be NULL", name);
    if (t->ndim != ndim) return INVALID("%s: must have %d dimensions, got %d", name, ndim, (int)t->ndim);
    if (t->dtype != CFLASH_DTYPE_I32) return INVALID("%s: dtype must be int32", name);
    if (t->device != CFLASH_DEVICE_CPU) return INVALID("%s: range plans are built from host (CPU) memory", name);
    if (n >= 0 && t->shape[0] != n)
        return INVALID("%s: shape[0] must be %lld, got %lld", name, (long long)n, (long long)t->shape[0]);
    if (t->shape[0] < 0 || t->shape[0] > ((int64_t)1 << 40)) return INVALID("%s: bad shape[0] %lld", name, (long long)t->shape[0]);
    if (ndim == 2 && t->shape[1] != cols)
        return INVALID("%s: shape[1] must be %lld, got %lld", name, (long long)cols, (long long)t->shape[1]);
    if (t->shape[0] > 0 && !t->data) return INVALID("%s: data is NULL", name);
    return CFLASH_STATUS_OK;
}

/* Whether the plan is a packed batch (struct cflash_range_plan's varlen_* fields): its slices,
 * sorted by (q0, k0), have disjoint query ranges and disjoint key ranges in the same order, and
 * are all full or all causal. The documents are the slices plus one for each gap: rows no slice
 * covers (no keys: empty rows, as in the plan) and keys no slice covers (no rows). A causal
 * slice's diagonal is its bottom-right corner, the packed kernel's alignment. Only an
 * allocation can fail (OUT_OF_MEMORY); a plan that is no packed batch keeps varlen_causal -1. */
static enum cflash_status plan_as_varlen(struct cflash_range_plan *plan) {
    const int64_t m = plan->num_slices;
    const struct attn_slice *u = plan->unique;
    plan->varlen_causal = -1;
    if (m == 0 || plan->Tq > INT32_MAX || plan->Tk > INT32_MAX) return CFLASH_STATUS_OK;
    int causal = -1;
    for (int64_t a = 0; a < m; a++) {
        const int64_t diag_hi = (u[a].k1 - u[a].k0) - (u[a].q1 - u[a].q0) + (u[a].k0 - u[a].q0);
        const int c = u[a].dlo != -BAND_UNBOUNDED ? -1 : u[a].dhi == BAND_UNBOUNDED ? 0 : u[a].dhi == diag_hi ? 1 : -1;
        if (c < 0 || (a > 0 && c != causal)) return CFLASH_STATUS_OK;
        causal = c;
        if (a > 0 && (u[a].q0 < u[a - 1].q1 || u[a].k0 < u[a - 1].k1)) return CFLASH_STATUS_OK;
    }
    /* documents: at most a row gap, a key gap and the slice per slice, and the two tails */
    int32_t *cu = malloc(sizeof *cu * (size_t)(2 * (3 * m + 3)));
    if (!cu) return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "plan: out of memory");
    int64_t n = 0, qpos = 0, kpos = 0, maxq = 0, maxk = 0;
    int32_t *cq = cu, *ck = cu + (3 * m + 3);
    cq[0] = ck[0] = 0;
#define DOC(q1_, k1_)                                                   \
    do {                                                                \
        maxq = (q1_) - qpos > maxq ? (q1_) - qpos : maxq;               \
        maxk = (k1_) - kpos > maxk ? (k1_) - kpos : maxk;               \
        qpos = (q1_);                                                   \
        kpos = (k1_);                                                   \
        n++;                                                            \
        cq[n] = (int32_t)qpos;                                          \
        ck[n] = (int32_t)kpos;                                          \
    } while (0)
    for (int64_t a = 0; a < m; a++) {
        if (u[a].q0 > qpos) DOC(u[a].q0, kpos); /* rows without keys */
        if (u[a].k0 > kpos) DOC(qpos, u[a].k0); /* keys without rows */
        DOC(u[a].q1, u[a].k1);
    }
    if (plan->Tq > qpos) DOC(plan->Tq, kpos);
    if (plan->Tk > kpos) DOC(qpos, plan->Tk);
#undef DOC
    if (n > 65535) { /* more than a CUDA grid's sequences: the slice walk */
        free(cu);
        return CFLASH_STATUS_OK;
    }
    /* cu_k right after cu_q: [2 (n + 1)] */
    memmove(cu + n + 1, ck, sizeof *cu * (size_t)(n + 1));
    plan->varlen_cu = cu;
    plan->varlen_B = n;
    plan->varlen_max_q = maxq;
    plan->varlen_max_k = maxk;
    plan->varlen_causal = causal;
    return CFLASH_STATUS_OK;
}

enum cflash_status cflash_range_plan_create(cflash_range_plan_t *out_plan,
                                            const struct cflash_tensor *q_ranges,
                                            const struct cflash_tensor *k_ranges,
                                            const struct cflash_tensor *attn_type_map,
                                            int64_t Tq, int64_t Tk,
                                            const struct cflash_tensor *segment_offsets) {
    enum cflash_status st;
    if (!out_plan) return INVALID("plan: must not be NULL");
    if (Tq < 0 || Tq > ((int64_t)1 << 40)) return INVALID("Tq: must be in [0, 2^40], got %lld", (long long)Tq);
    if (Tk < 0 || Tk > ((int64_t)1 << 40)) return INVALID("Tk: must be in [0, 2^40], got %lld", (long long)Tk);
    if ((st = require_cpu("q_ranges", q_ranges)) || (st = require_cpu("k_ranges", k_ranges)) ||
        (st = require_cpu("attn_type_map", attn_type_map)) || (st = require_cpu("segment_offsets", segment_offsets)))
        return st;
    if ((st = check_int_tensor("q_ranges", q_ranges, 2, -1, 2))) return st;
    const int64_t n = q_ranges->shape[0];
    if ((st = check_int_tensor("k_ranges", k_ranges, 2, n, 2))) return st;
    if (attn_type_map && (st = check_int_tensor("attn_type_map", attn_type_map, 1, n, 1))) return st;

    /* every slice: ranges inside the axes, ordered, a known type */
    for (int64_t i = 0; i < n; i++) {
        const int64_t qs = at(q_ranges, i, 0), qe = at(q_ranges, i, 1);
        const int64_t ks = at(k_ranges, i, 0), ke = at(k_ranges, i, 1);
        if (qs < 0 || qs > qe || qe > Tq)
            return INVALID("q_ranges: slice %lld [%lld, %lld) must satisfy 0 <= start <= end <= Tq = %lld", (long long)i, (long long)qs, (long long)qe, (long long)Tq);
        if (ks < 0 || ks > ke || ke > Tk)
            return INVALID("k_ranges: slice %lld [%lld, %lld) must satisfy 0 <= start <= end <= Tk = %lld", (long long)i, (long long)ks, (long long)ke, (long long)Tk);
        if (attn_type_map) {
            const int32_t t = at(attn_type_map, i, 0);
            if (t < 0 || t > 3) return INVALID("attn_type_map: slice %lld has type %d (0 full, 1 causal, 2 inverse causal, 3 band)", (long long)i, (int)t);
        }
    }
    if (segment_offsets) {
        if ((st = check_int_tensor("segment_offsets", segment_offsets, 1, -1, 1))) return st;
        const int64_t g = segment_offsets->shape[0];
        if (g < 1 || at(segment_offsets, 0, 0) != 0 || at(segment_offsets, g - 1, 0) != n)
            return INVALID("segment_offsets: must start at 0 and end at the slice count %lld", (long long)n);
        for (int64_t s = 0; s + 1 < g; s++) {
            const int64_t a = at(segment_offsets, s, 0), b = at(segment_offsets, s + 1, 0);
            if (b < a) return INVALID("segment_offsets: must be non-decreasing (entry %lld)", (long long)(s + 1));
            for (int64_t i = a + 1; i < b; i++)
                if (at(q_ranges, i, 0) != at(q_ranges, a, 0) || at(q_ranges, i, 1) != at(q_ranges, a, 1))
                    return INVALID("segment_offsets: group %lld mixes q_ranges (slice %lld differs from slice %lld)", (long long)s, (long long)i, (long long)a);
        }
    }

    struct cflash_range_plan *plan = calloc(1, sizeof *plan);
    struct attn_slice *all = malloc(sizeof *all * (size_t)(n > 0 ? n : 1));
    struct keyed *order = malloc(sizeof *order * (size_t)(n > 0 ? n : 1));
    if (!plan || !all || !order || pthread_mutex_init(&plan->gpu_lock, NULL) != 0) {
        free(plan); free(all); free(order);
        return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "plan: out of memory");
    }
    plan->Tq = Tq;
    plan->Tk = Tk;
    plan->varlen_causal = -1;

    /* global slices; empty ones are dropped */
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        const int64_t qs = at(q_ranges, i, 0), qe = at(q_ranges, i, 1);
        const int64_t ks = at(k_ranges, i, 0), ke = at(k_ranges, i, 1);
        const int32_t type = attn_type_map ? at(attn_type_map, i, 0) : CFLASH_RANGE_FULL;
        const int64_t shift = ks - qs, diag = (ke - ks) - (qe - qs);
        struct attn_slice s = {qs, qe, ks, ke, -BAND_UNBOUNDED, BAND_UNBOUNDED, shift + diag};
        if (type == CFLASH_RANGE_CAUSAL || type == CFLASH_RANGE_BAND) s.dhi = diag + shift;
        if (type == CFLASH_RANGE_INV_CAUSAL || type == CFLASH_RANGE_BAND) s.dlo = shift;
        if (!overlap_cell(&s, &s)) continue;
        all[m] = s;
        order[m].q0 = qs;
        order[m].k0 = ks;
        order[m].index = i;
        order[m].kept = m;
        m++;
    }
    qsort(order, (size_t)m, sizeof *order, keyed_cmp);

    /* sorted by first row, then first key */
    plan->unique = malloc(sizeof *plan->unique * (size_t)(m > 0 ? m : 1));
    if (!plan->unique) goto oom;
    for (int64_t a = 0; a < m; a++) plan->unique[a] = all[order[a].kept];
    plan->num_slices = m;
    /* group_end[a]: one past the last slice with the same first row as a */
    int64_t *group_end = malloc(sizeof *group_end * (size_t)(m > 0 ? m : 1));
    if (!group_end) goto oom;
    for (int64_t a = m - 1; a >= 0; a--)
        group_end[a] = a + 1 < m && plan->unique[a + 1].q0 == plan->unique[a].q0 ? group_end[a + 1] : a + 1;
    /* exact overlap test on every pair whose rows and columns overlap */
    for (int64_t a = 0; a < m; a++) {
        const struct attn_slice *sa = &plan->unique[a];
        for (int64_t b = a + 1; b < m && plan->unique[b].q0 < sa->q1; b++) {
            const struct attn_slice *sb = &plan->unique[b];
            if (sb->q0 == sa->q0 && sb->k0 >= sa->k1) {
                /* same first row, sorted by first key: the rest of this group starts right of
                 * a's columns; jump past it (column strips sharing rows stay linear) */
                b = group_end[b] - 1;
                continue;
            }
            if (sb->k0 >= sa->k1 || sb->k1 <= sa->k0) continue;
            if (overlap_cell(sa, sb)) {
                const int64_t ia = order[a].index, ib = order[b].index;
                const int64_t lo = ia < ib ? ia : ib, hi = ia < ib ? ib : ia;
                const int32_t tl = attn_type_map ? at(attn_type_map, lo, 0) : 0;
                const int32_t th = attn_type_map ? at(attn_type_map, hi, 0) : 0;
                cflash_range_plan_destroy(plan);
                free(all); free(order); free(group_end);
                return INVALID("q_ranges: slices %lld (q [%d, %d) k [%d, %d) %s) and %lld (q [%d, %d) k [%d, %d) %s) cover a common (row, col) cell",
                               (long long)lo, at(q_ranges, lo, 0), at(q_ranges, lo, 1), at(k_ranges, lo, 0), at(k_ranges, lo, 1), type_name(tl),
                               (long long)hi, at(q_ranges, hi, 0), at(q_ranges, hi, 1), at(k_ranges, hi, 0), at(k_ranges, hi, 1), type_name(th));
            }
        }
    }
    free(all);
    free(order);
    free(group_end);
    all = NULL;
    order = NULL;

    /* Segments: one per 128-row block that some slice touches, and one per maximal run of
     * untouched blocks (its rows are empty rows), so memory follows the slices, not Tq.
     * Covered block intervals come from merging the slices' block ranges in q0 order. */
    int64_t *iv = malloc(sizeof *iv * (size_t)(3 * (m > 0 ? m : 1)));
    if (!iv) goto oom;
    int64_t niv = 0;
    for (int64_t a = 0; a < m; a++) {
        const int64_t bs = plan->unique[a].q0 / RANGE_BLOCK_ROWS, be = (plan->unique[a].q1 - 1) / RANGE_BLOCK_ROWS;
        if (niv > 0 && bs <= iv[3 * (niv - 1) + 1] + 1) {
            if (be > iv[3 * (niv - 1) + 1]) iv[3 * (niv - 1) + 1] = be;
        } else {
            iv[3 * niv] = bs;
            iv[3 * niv + 1] = be;
            niv++;
        }
    }
    int64_t nseg = 0, blk_next = 0; /* count: covered blocks + non-empty gaps */
    for (int64_t i = 0; i < niv; i++) {
        nseg += (iv[3 * i] > blk_next) + (iv[3 * i + 1] - iv[3 * i] + 1);
        blk_next = iv[3 * i + 1] + 1;
    }
    nseg += blk_next * RANGE_BLOCK_ROWS < Tq;
    plan->num_segments = nseg;
    plan->segments = calloc((size_t)(nseg > 0 ? nseg : 1), sizeof *plan->segments);
    if (!plan->segments) { free(iv); goto oom; }
    int64_t ns = 0;
    blk_next = 0;
    for (int64_t i = 0; i <= niv; i++) {
        const int64_t gap_end = i < niv ? iv[3 * i] * RANGE_BLOCK_ROWS : Tq;
        if (blk_next * RANGE_BLOCK_ROWS < gap_end) { /* untouched rows */
            plan->segments[ns].q0 = blk_next * RANGE_BLOCK_ROWS;
            plan->segments[ns].q1 = gap_end;
            ns++;
        }
        if (i == niv) break;
        iv[3 * i + 2] = ns; /* first segment of this interval */
        for (int64_t blk = iv[3 * i]; blk <= iv[3 * i + 1]; blk++, ns++) {
            plan->segments[ns].q0 = blk * RANGE_BLOCK_ROWS;
            plan->segments[ns].q1 = min64(Tq, (blk + 1) * RANGE_BLOCK_ROWS);
        }
        blk_next = iv[3 * i + 1] + 1;
    }
    /* count, prefix, fill; slices are in q0 order, so their interval only moves forward */
    int64_t total = 0, cur = 0;
    for (int64_t a = 0; a < m; a++) {
        const struct attn_slice *sl = &plan->unique[a];
        const int64_t bs = sl->q0 / RANGE_BLOCK_ROWS, be = (sl->q1 - 1) / RANGE_BLOCK_ROWS;
        while (iv[3 * cur + 1] < bs) cur++;
        for (int64_t blk = bs; blk <= be; blk++) plan->segments[iv[3 * cur + 2] + blk - iv[3 * cur]].s1++;
        total += be - bs + 1;
    }
    plan->slices = malloc(sizeof *plan->slices * (size_t)(total > 0 ? total : 1));
    if (!plan->slices) { free(iv); goto oom; }
    int64_t acc = 0;
    for (int64_t g = 0; g < nseg; g++) {
        struct attn_segment *sg = &plan->segments[g];
        const int64_t cnt = sg->s1;
        sg->b = sg->kvb = 0;
        sg->qorg = sg->korg = 0; /* plans index the global axes */
        sg->s0 = sg->s1 = acc;   /* s1 advances while filling */
        acc += cnt;
    }
    cur = 0;
    for (int64_t a = 0; a < m; a++) {
        const struct attn_slice *sl = &plan->unique[a];
        const int64_t bs = sl->q0 / RANGE_BLOCK_ROWS, be = (sl->q1 - 1) / RANGE_BLOCK_ROWS;
        while (iv[3 * cur + 1] < bs) cur++;
        for (int64_t blk = bs; blk <= be; blk++)
            plan->slices[plan->segments[iv[3 * cur + 2] + blk - iv[3 * cur]].s1++] = *sl;
    }
    free(iv);
    if (plan_as_varlen(plan) != CFLASH_STATUS_OK) {
        cflash_range_plan_destroy(plan);
        return CFLASH_STATUS_OUT_OF_MEMORY; /* the message is set */
    }
    *out_plan = plan;
    return CFLASH_STATUS_OK;

oom:
    free(all);
    free(order);
    cflash_range_plan_destroy(plan);
    return cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "plan: out of memory");
}

void cflash_range_plan_destroy(cflash_range_plan_t plan) {
    if (!plan) return;
#ifdef CFLASH_HAVE_CUDA
    for (int32_t g = 0; g < plan->num_gpus; g++) cuda_plan_free(plan->gpu_device[g], plan->gpu_copy[g]);
#endif
    pthread_mutex_destroy(&plan->gpu_lock);
    free(plan->unique);
    free(plan->segments);
    free(plan->slices);
    free(plan->varlen_cu);
    free(plan);
}

int64_t cflash_range_plan_num_slices(const struct cflash_range_plan *plan) {
    return plan ? plan->num_slices : 0;
}

int64_t cflash_range_plan_packed_sequences(const struct cflash_range_plan *plan) {
    return plan && plan->varlen_causal >= 0 ? plan->varlen_B : 0;
}

int64_t cflash_range_plan_visible_cells(const struct cflash_range_plan *plan) {
    if (!plan) return 0;
    int64_t cells = 0;
    for (int64_t a = 0; a < plan->num_slices; a++) {
        const struct attn_slice *s = &plan->unique[a];
        for (int64_t r = s->q0; r < s->q1; r++) {
            const int64_t lo = max64(s->k0, r + s->dlo), hi = min64(s->k1, r + s->dhi + 1);
            if (hi > lo) cells += hi - lo;
        }
    }
    return cells;
}

#ifdef CFLASH_HAVE_CUDA
_Static_assert(sizeof(struct cuda_slice) == sizeof(struct attn_slice), "the device slice is struct attn_slice's layout");

/* The device layout: the segments' slices as they are, then int32 tile_slices[ntiles + 1] with
 * 128-row block t owning slices [tile_slices[t], tile_slices[t + 1]) (blocks in no slice:
 * empty ranges, so their rows are written as empty rows), then a packed batch's cu_q and cu_k. */
enum cflash_status range_plan_on_device(const struct cflash_range_plan *cplan, int32_t device,
                                        const struct cuda_slice **slices, const int32_t **tiles,
                                        const int32_t **varlen_cu) {
    struct cflash_range_plan *plan = (struct cflash_range_plan *)cplan; /* the device copies are a cache */
    const int64_t ntiles = (plan->Tq + RANGE_BLOCK_ROWS - 1) / RANGE_BLOCK_ROWS;
    const int64_t ns = plan->num_segments > 0 ? plan->segments[plan->num_segments - 1].s1 : 0;
    const size_t slice_bytes = sizeof(struct attn_slice) * (size_t)ns;
    const size_t cu_bytes = plan->varlen_causal >= 0 ? sizeof(int32_t) * 2 * (size_t)(plan->varlen_B + 1) : 0;
    if (ntiles + 1 > INT32_MAX || ns > INT32_MAX)
        return cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "plan: too many blocks or slices for the CUDA backend");
    enum cflash_status st = CFLASH_STATUS_OK;
    pthread_mutex_lock(&plan->gpu_lock);
    int32_t g = 0;
    while (g < plan->num_gpus && plan->gpu_device[g] != device) g++;
    if (g == plan->num_gpus) {
        if (g == RANGE_PLAN_MAX_GPUS) {
            st = cflash_set_error(CFLASH_STATUS_UNSUPPORTED, "plan: used on more than %d GPUs", RANGE_PLAN_MAX_GPUS);
        } else {
            const size_t bytes = slice_bytes + sizeof(int32_t) * (size_t)(ntiles + 1) + cu_bytes;
            char *host = malloc(bytes);
            if (!host) {
                st = cflash_set_error(CFLASH_STATUS_OUT_OF_MEMORY, "plan: out of memory");
            } else {
                memcpy(host, plan->slices, slice_bytes);
                int32_t *t = (int32_t *)(host + slice_bytes);
                for (int64_t i = 0; i <= ntiles; i++) t[i] = -1;
                for (int64_t i = 0; i < plan->num_segments; i++) {
                    const struct attn_segment *sg = &plan->segments[i];
                    if (sg->s1 > sg->s0) t[sg->q0 / RANGE_BLOCK_ROWS] = (int32_t)sg->s0; /* one block */
                }
                t[ntiles] = (int32_t)ns;
                for (int64_t i = ntiles - 1; i >= 0; i--) /* blocks in no slice: the next block's start */
                    if (t[i] < 0) t[i] = t[i + 1];
                if (cu_bytes) memcpy(t + ntiles + 1, plan->varlen_cu, cu_bytes);
                void *dev = NULL;
                st = cuda_plan_upload(device, host, bytes, &dev);
                free(host);
                if (st == CFLASH_STATUS_OK) {
                    plan->gpu_device[g] = device;
                    plan->gpu_copy[g] = dev;
                    plan->num_gpus = g + 1;
                }
            }
        }
    }
    if (st == CFLASH_STATUS_OK) {
        *slices = (const struct cuda_slice *)plan->gpu_copy[g];
        *tiles = (const int32_t *)((const char *)plan->gpu_copy[g] + slice_bytes);
        *varlen_cu = cu_bytes ? *tiles + ntiles + 1 : NULL;
    }
    pthread_mutex_unlock(&plan->gpu_lock);
    return st;
}
#endif
