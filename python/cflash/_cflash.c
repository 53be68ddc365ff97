/*
 * _cflash.c - the CPython extension of cflash: DLPack tensors in, struct cflash_tensor to the C
 * library (include/cflash.h), statuses out as exceptions.
 *
 * It includes no framework header: NumPy, torch and JAX arrays reach it only through the DLPack
 * protocol (__dlpack__ / __dlpack_device__, versioned and legacy capsules). Every entry point
 * takes its outputs preallocated and writes into them; argument names, defaults and output
 * allocation in the caller's framework live in the Python layer (cflash/_api.py), which is the
 * user API. This file is not one: its functions take every tensor positionally.
 *
 * Rules kept here: every argument is imported and checked before the library is called (the
 * library then validates everything again and writes nothing on error); the GIL is released
 * around every library call; every imported tensor's deleter runs exactly once, with the GIL.
 * A small DLPack producer (Buffer, from empty()) serves frameworks whose own arrays cannot be
 * written (JAX) or cannot hold bfloat16 (NumPy).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "cflash.h"
#include "dlpack/dlpack.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The DLPack version requested from producers (max_version); capsules of any 1.x are read. */
#define DL_REQUEST_MAJOR 1
#define DL_REQUEST_MINOR 0
/* Tensors one call imports at most: kvcache has 13 positional plus 4 in the params. */
#define DL_ARGS_MAX 20
/* Alignment of Buffer memory: one cache line, and what XLA's CPU client wants for zero copy. */
#define BUFFER_ALIGN 64

/* ---- statuses -> exceptions ---- */

/* The exception class for a status. A wrong dtype is a TypeError: the library names it
 * "<argument>: dtype ..." in every message about a dtype. */
static PyObject *exception_for_status(enum cflash_status st, const char *msg) {
    switch (st) {
    case CFLASH_STATUS_OK: return NULL;
    case CFLASH_STATUS_INVALID_ARGUMENT: return strstr(msg, ": dtype ") ? PyExc_TypeError : PyExc_ValueError;
    case CFLASH_STATUS_UNSUPPORTED: return PyExc_NotImplementedError;
    case CFLASH_STATUS_OUT_OF_MEMORY: return PyExc_MemoryError;
    case CFLASH_STATUS_DEVICE_ERROR: return PyExc_RuntimeError;
    }
    return PyExc_RuntimeError;
}

/* ---- DLPack import (consumer side) ---- */

enum {
    ARG_OPTIONAL = 1, /* None is accepted and gives NULL */
    ARG_WRITTEN = 2   /* the call writes it: read-only tensors are rejected */
};

/* One imported tensor. The producer's memory stays valid until dl_release() calls its
 * deleter; `t` is the library's view of it (element strides, byte_offset applied). */
struct dl_ref {
    struct cflash_tensor t;
    DLManagedTensor *legacy;
    struct DLManagedTensorVersioned *versioned;
    int readonly;
    int exchange; /* imported through the type's DLPack exchange table (describe() reports it) */
};

/* All tensors of one call, released together. */
struct dl_args {
    struct dl_ref ref[DL_ARGS_MAX];
    int n;
    long long stream; /* the call's CUDA stream (keyword `stream`; 0 = the legacy default) */
    PyObject *owner;  /* keyword `stream_owner`: a tensor type whose current stream `stream` is, or NULL */
};

/* The tensors of an attention call are exported on its stream: a CUDA producer then orders
 * its pending work before the call (DLPack's stream argument), so nothing waits on the host.
 * Tensors of exactly the type `stream_owner` (the Python layer passes torch's tensor type when
 * `stream` is torch's current stream) are exported with stream -1, no synchronization: torch
 * orders its current stream before the consumer's, here the same stream, so its work there (a
 * stream object and an event check per tensor, tens of microseconds a call) would do nothing. */
static void args_init(struct dl_args *a, PyObject *kwargs) {
    a->n = 0;
    a->stream = 0;
    a->owner = kwargs ? PyDict_GetItemString(kwargs, "stream_owner") : NULL; /* borrowed: kwargs outlives the call */
    if (a->owner == Py_None) a->owner = NULL;
    PyObject *s = kwargs ? PyDict_GetItemString(kwargs, "stream") : NULL;
    if (s && PyLong_Check(s)) {
        a->stream = PyLong_AsLongLong(s);
        if (a->stream == -1 && PyErr_Occurred()) { PyErr_Clear(); a->stream = 0; }
    }
}

static void dl_release(struct dl_ref *r) {
    if (r->versioned && r->versioned->deleter) r->versioned->deleter(r->versioned);
    if (r->legacy && r->legacy->deleter) r->legacy->deleter(r->legacy);
    r->versioned = NULL;
    r->legacy = NULL;
}

static void dl_args_release(struct dl_args *a) {
    for (int i = 0; i < a->n; i++) dl_release(&a->ref[i]);
    a->n = 0;
}

static int dl_dtype(DLDataType d, enum cflash_dtype *out) {
    if (d.lanes != 1) return 0;
    if (d.code == kDLFloat && d.bits == 32) *out = CFLASH_DTYPE_F32;
    else if (d.code == kDLFloat && d.bits == 16) *out = CFLASH_DTYPE_F16;
    else if (d.code == kDLBfloat && d.bits == 16) *out = CFLASH_DTYPE_BF16;
    else if (d.code == kDLInt && d.bits == 32) *out = CFLASH_DTYPE_I32;
    else if ((d.code == kDLUInt || d.code == kDLBool) && d.bits == 8) *out = CFLASH_DTYPE_U8;
    else return 0;
    return 1;
}

/* "float64", "int64", "complex64", "bfloat16", ... for messages and describe() */
static void dl_dtype_str(DLDataType d, char *buf, size_t size) {
    static const char *codes[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
    const char *c = d.code < sizeof codes / sizeof codes[0] ? codes[d.code] : "code";
    if (d.code == kDLBool && d.bits == 8 && d.lanes == 1) snprintf(buf, size, "bool");
    else if (d.lanes == 1) snprintf(buf, size, "%s%u", c, (unsigned)d.bits);
    else snprintf(buf, size, "%s%ux%u", c, (unsigned)d.bits, (unsigned)d.lanes);
}

/* GPU memory the CUDA backend reads (pinned host memory, kDLCUDAHost, is host memory: CPU). */
static int is_cuda_device(int type) {
    return type == kDLCUDA || type == kDLCUDAManaged;
}

/* 0 for a device this build serves (the CPU, and CUDA GPUs in a build with the CUDA backend),
 * else -1 with NotImplementedError. */
static int dl_check_device(const char *name, int type) {
    if (type == kDLCPU || type == kDLCUDAHost) return 0;
#ifdef CFLASH_HAVE_CUDA
    if (is_cuda_device(type)) return 0;
#endif
    if (is_cuda_device(type))
        PyErr_Format(PyExc_NotImplementedError, "%s: a CUDA tensor: CUDA backend not built (this cflash is CPU-only)", name);
    else
        PyErr_Format(PyExc_NotImplementedError, "%s: DLPack device type %d is not supported (CPU and CUDA tensors only)", name, type);
    return -1;
}

/* obj.__dlpack_device__() checked before export, so that no producer is asked for a device
 * tensor (a CUDA producer would want a stream). Objects without it are checked after export. */
static int dl_precheck_device(const char *name, PyObject *obj, int *is_cuda) {
    *is_cuda = 0;
    PyObject *dev = PyObject_CallMethod(obj, "__dlpack_device__", NULL);
    if (!dev) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return -1;
        PyErr_Clear();
        return 0;
    }
    long type = -1;
    if (PyTuple_Check(dev) && PyTuple_GET_SIZE(dev) == 2) type = PyLong_AsLong(PyTuple_GET_ITEM(dev, 0));
    Py_DECREF(dev);
    if (type == -1) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: __dlpack_device__() must return (device_type, device_id)", name);
        return -1;
    }
    *is_cuda = is_cuda_device((int)type);
    return dl_check_device(name, (int)type);
}

/* obj.__dlpack__(max_version=(1, 0)), or obj.__dlpack__() for producers older than DLPack 1.0
 * (they reject the keyword with TypeError). */
static PyObject *dl_export(PyObject *meth, int is_cuda, long long stream) {
    PyObject *empty = PyTuple_New(0);
    /* CUDA producers get the consumer's stream (DLPack: 1 = the legacy default stream, 0 is
     * not allowed); CPU producers get none */
    PyObject *kw = is_cuda ? Py_BuildValue("{s:(ii),s:L}", "max_version", DL_REQUEST_MAJOR, DL_REQUEST_MINOR,
                                           "stream", stream ? stream : 1LL)
                           : Py_BuildValue("{s:(ii)}", "max_version", DL_REQUEST_MAJOR, DL_REQUEST_MINOR);
    PyObject *cap = empty && kw ? PyObject_Call(meth, empty, kw) : NULL;
    Py_XDECREF(empty);
    Py_XDECREF(kw);
    if (!cap && PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Clear();
        if (is_cuda) {
            kw = Py_BuildValue("{s:L}", "stream", stream ? stream : 1LL);
            empty = PyTuple_New(0);
            cap = empty && kw ? PyObject_Call(meth, empty, kw) : NULL;
            Py_XDECREF(empty);
            Py_XDECREF(kw);
        } else {
            cap = PyObject_CallObject(meth, NULL);
        }
    }
    return cap;
}

/* The library's view of an exported DLTensor: dtype, rank <= CFLASH_MAX_DIMS, element strides
 * (NULL strides = C-contiguous), data + byte_offset aligned to the element size. */
static int dl_fill(const char *name, const DLTensor *dl, int readonly, int flags, struct cflash_tensor *t) {
    char dts[32];
    if (dl_check_device(name, (int)dl->device.device_type)) return -1;
    if (!dl_dtype(dl->dtype, &t->dtype)) {
        dl_dtype_str(dl->dtype, dts, sizeof dts);
        PyErr_Format(PyExc_TypeError, "%s: dtype %s is not supported (float32, float16, bfloat16, int32, uint8, bool)", name, dts);
        return -1;
    }
    if (dl->ndim < 0 || dl->ndim > CFLASH_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "%s: at most %d dimensions are supported, got %d", name, CFLASH_MAX_DIMS, (int)dl->ndim);
        return -1;
    }
    if ((flags & ARG_WRITTEN) && readonly) {
        PyErr_Format(PyExc_ValueError, "%s: the tensor is read-only, and this call writes it", name);
        return -1;
    }
    const int64_t limit = (int64_t)1 << 62; /* contiguous strides saturate; the library rejects them */
    int64_t step = 1;
    int empty = 0;
    t->ndim = dl->ndim;
    for (int i = dl->ndim - 1; i >= 0; i--) {
        const int64_t n = dl->shape[i];
        if (n < 0) {
            PyErr_Format(PyExc_ValueError, "%s: shape[%d] = %lld is negative", name, i, (long long)n);
            return -1;
        }
        empty |= n == 0;
        t->shape[i] = n;
        t->stride[i] = dl->strides ? dl->strides[i] : step;
        if (n > 1) step = step > limit / n ? limit : step * n;
    }
    /* An empty tensor addresses nothing, and producers give it any strides (NumPy: all 0):
     * give it C-contiguous ones, which every stride rule of the library accepts. */
    for (int64_t i = dl->ndim - 1, s = 1; empty && i >= 0; i--) {
        t->stride[i] = s;
        s *= t->shape[i] > 1 && s <= limit / t->shape[i] ? t->shape[i] : 1;
    }
    const int64_t es = t->dtype == CFLASH_DTYPE_F32 || t->dtype == CFLASH_DTYPE_I32 ? 4 : t->dtype == CFLASH_DTYPE_U8 ? 1 : 2;
    t->data = dl->data ? (char *)dl->data + dl->byte_offset : NULL;
    if (!empty && (uintptr_t)t->data % (uintptr_t)es) {
        PyErr_Format(PyExc_ValueError, "%s: data is not aligned to its %lld-byte elements", name, (long long)es);
        return -1;
    }
    t->device = is_cuda_device((int)dl->device.device_type) ? CFLASH_DEVICE_CUDA : CFLASH_DEVICE_CPU;
    t->device_id = t->device == CFLASH_DEVICE_CUDA ? dl->device.device_id : 0;
    return 0;
}

/* DLPack 1.3's C exchange table of a tensor type (`type(x).__dlpack_c_exchange_api__`, a
 * capsule "dlpack_exchange_api"; torch >= 2.10 has one), or NULL. Only a table the type itself
 * defines counts (DLPack: the object must be of the type the table was found on): a subclass
 * (torch's with __torch_function__ overrides, nn.Parameter) takes __dlpack__, which honors them.
 * Types are looked up once and kept (a strong reference each, so a cached address cannot be
 * reused by another type); a call sees two or three types, so a short table does. Types past
 * the table are looked up per call. */
#define EXCHANGE_CACHE 8
static struct { PyTypeObject *type; const DLPackExchangeAPI *api; } exchange_cache[EXCHANGE_CACHE];

static const DLPackExchangeAPI *exchange_api(PyTypeObject *tp) {
    for (int i = 0; i < EXCHANGE_CACHE && exchange_cache[i].type; i++)
        if (exchange_cache[i].type == tp) return exchange_cache[i].api;
    const DLPackExchangeAPI *api = NULL;
    PyObject *own = PyObject_GetAttrString((PyObject *)tp, "__dict__"); /* the type's own namespace */
    PyObject *cap = own ? PyMapping_GetItemString(own, "__dlpack_c_exchange_api__") : NULL;
    Py_XDECREF(own);
    if (cap && PyCapsule_IsValid(cap, "dlpack_exchange_api")) {
        api = PyCapsule_GetPointer(cap, "dlpack_exchange_api");
        /* another major version lays the table out differently; the functions used here must be set */
        if (api && (api->header.version.major != DLPACK_MAJOR_VERSION || !api->managed_tensor_from_py_object_no_sync ||
                    !api->current_work_stream))
            api = NULL;
    }
    Py_XDECREF(cap); /* the table lives as long as the process (DLPack 1.3), not the capsule object */
    PyErr_Clear();
    for (int i = 0; i < EXCHANGE_CACHE; i++)
        if (!exchange_cache[i].type) {
            Py_INCREF(tp);
            exchange_cache[i].type = tp;
            exchange_cache[i].api = api;
            break;
        }
    return api;
}

/* The fast import through the exchange table (no Python call, no capsule). It performs no
 * stream synchronization, so it serves tensors that need none: CPU memory, and device tensors
 * of the type whose current stream the call runs on (stream == -1, see args_init). Returns 1
 * when r holds the tensor, 0 when the caller should take the __dlpack__ path (nothing held,
 * no exception), -1 with an exception set (the tensor itself is refused: dl_fill). */
static int dl_import_exchange(const char *name, PyObject *obj, int flags, long long stream, struct dl_ref *r) {
    const DLPackExchangeAPI *api = exchange_api(Py_TYPE(obj));
    if (!api) return 0;
    /* A tensor that requires grad takes __dlpack__, which refuses it (torch: BufferError,
     * "use tensor.detach()"): the table exports it without that check, and cflash has no
     * backward, so passing it would drop its gradient silently (docs/compat_*.md). */
    static PyObject *requires_grad;
    if (!requires_grad && !(requires_grad = PyUnicode_InternFromString("requires_grad"))) return -1;
    PyObject *rg = PyObject_GetAttr(obj, requires_grad);
    if (!rg) {
        PyErr_Clear();
    } else {
        const int on = PyObject_IsTrue(rg);
        Py_DECREF(rg);
        if (on) return 0;
        if (on < 0) PyErr_Clear();
    }
    /* A failed export (torch: sparse or meta tensors, with a C++ trace in the message) takes
     * __dlpack__, whose error is the producer's own (torch: BufferError naming the reason) */
    DLManagedTensorVersioned *m = NULL;
    if (api->managed_tensor_from_py_object_no_sync(obj, &m) != 0 || !m) {
        PyErr_Clear();
        return 0;
    }
    const int type = (int)m->dl_tensor.device.device_type;
    if (m->version.major != DLPACK_MAJOR_VERSION || (stream != -1 && type != kDLCPU && type != kDLCUDAHost)) {
        if (m->deleter) m->deleter(m); /* a device tensor wanting the stream argument: __dlpack__ */
        return 0;
    }
    r->versioned = m;
    r->readonly = (m->flags & DLPACK_FLAG_BITMASK_READ_ONLY) != 0;
    r->exchange = 1;
    return dl_fill(name, &m->dl_tensor, r->readonly, flags, &r->t) ? -1 : 1;
}

/* Import one DLPack object into r (the caller releases r, also on error): through the type's
 * exchange table where it has one and no synchronization is needed, else __dlpack__. The
 * capsule is renamed "used_dltensor[_versioned]" as the protocol requires: its producer's
 * destructor then leaves the tensor to us, and dl_release() calls the deleter. */
static int dl_import(const char *name, PyObject *obj, int flags, long long stream, struct dl_ref *r) {
    const int fast = dl_import_exchange(name, obj, flags, stream, r);
    if (fast) return fast < 0 ? -1 : 0;
    PyObject *meth = PyObject_GetAttrString(obj, "__dlpack__");
    if (!meth) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: expected a DLPack tensor (an object with __dlpack__), got %s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    int is_cuda;
    if (dl_precheck_device(name, obj, &is_cuda)) {
        Py_DECREF(meth);
        return -1;
    }
    PyObject *cap = dl_export(meth, is_cuda, stream);
    Py_DECREF(meth);
    if (!cap) return -1;
    const DLTensor *dl = NULL;
    if (PyCapsule_IsValid(cap, "dltensor_versioned")) {
        r->versioned = PyCapsule_GetPointer(cap, "dltensor_versioned");
        if (r->versioned && PyCapsule_SetName(cap, "used_dltensor_versioned")) r->versioned = NULL;
        /* another major version may lay out everything after `flags` differently: only the
         * deleter may be used then */
        if (r->versioned && r->versioned->version.major != DLPACK_MAJOR_VERSION) {
            PyErr_Format(PyExc_TypeError, "%s: DLPack version %u.%u is not supported (major version %d)", name,
                         (unsigned)r->versioned->version.major, (unsigned)r->versioned->version.minor, DLPACK_MAJOR_VERSION);
        } else if (r->versioned) {
            r->readonly = (r->versioned->flags & DLPACK_FLAG_BITMASK_READ_ONLY) != 0;
            dl = &r->versioned->dl_tensor;
        }
    } else if (PyCapsule_IsValid(cap, "dltensor")) {
        r->legacy = PyCapsule_GetPointer(cap, "dltensor");
        if (r->legacy && PyCapsule_SetName(cap, "used_dltensor")) r->legacy = NULL;
        if (r->legacy) dl = &r->legacy->dl_tensor;
    } else {
        PyErr_Format(PyExc_TypeError, "%s: __dlpack__() did not return a DLPack capsule (got %s)", name, Py_TYPE(cap)->tp_name);
    }
    Py_DECREF(cap);
    if (!dl) return -1;
    return dl_fill(name, dl, r->readonly, flags, &r->t);
}

/* Import `obj` as argument `name` of a call: *t is the tensor, or NULL for an accepted None.
 * Returns 0, or -1 with an exception set. */
static int dl_get(struct dl_args *a, const char *name, PyObject *obj, int flags, const struct cflash_tensor **t) {
    *t = NULL;
    if (obj == Py_None) {
        if (flags & ARG_OPTIONAL) return 0;
        PyErr_Format(PyExc_TypeError, "%s: expected a tensor, got None", name);
        return -1;
    }
    if (a->n == DL_ARGS_MAX) {
        PyErr_SetString(PyExc_RuntimeError, "_cflash: too many tensor arguments");
        return -1;
    }
    struct dl_ref *r = &a->ref[a->n++];
    memset(r, 0, sizeof *r);
    const long long stream = a->owner && (PyObject *)Py_TYPE(obj) == a->owner ? -1 : a->stream;
    if (dl_import(name, obj, flags, stream, r)) return -1;
    *t = &r->t;
    return 0;
}

/* The error path of a call before the library ran: release what was imported, keeping the
 * exception (a deleter may run Python code). Returns NULL. */
static PyObject *fail(struct dl_args *a) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    dl_args_release(a);
    PyErr_Restore(type, value, tb);
    return NULL;
}

/* The end of every call: release the tensors (their deleters may run Python code, which may
 * call cflash again, so the message is copied first), then raise for a failed status.
 * Returns 0, or -1 with the exception set. */
static int release_status(struct dl_args *a, enum cflash_status st) {
    char msg[512];
    if (st != CFLASH_STATUS_OK) snprintf(msg, sizeof msg, "%s", cflash_last_error());
    dl_args_release(a);
    if (st == CFLASH_STATUS_OK) return 0;
    PyErr_SetString(exception_for_status(st, msg), msg[0] ? msg : cflash_status_string(st));
    return -1;
}

static PyObject *finish(struct dl_args *a, enum cflash_status st) {
    if (release_status(a, st)) return NULL;
    Py_RETURN_NONE;
}

/* ---- attention parameters (keyword arguments of every attention call) ---- */

static int parse_params(const char *fname, PyObject *kwargs, struct dl_args *a, struct cflash_attn_params *p) {
    static char *names[] = {"scale", "softcap", "causal", "align", "window_left", "window_right",
                            "alibi_slopes", "sinks", "num_threads", "kernel", "mask",
                            "mask_layout", "bias", "bias_layout", "stream", "stream_owner", NULL};
    *p = cflash_attn_params_default();
    PyObject *alibi = Py_None, *sinks = Py_None, *mask = Py_None, *bias = Py_None, *owner = Py_None;
    int causal = p->causal, align = (int)p->align, kernel = (int)p->kernel;
    int mask_layout = (int)p->mask_layout, bias_layout = (int)p->bias_layout, threads = p->num_threads;
    long long wl = p->window_left, wr = p->window_right, stream = 0;
    char fmt[64];
    snprintf(fmt, sizeof fmt, "|$ffpiLLOOiiOiOiLO:%s", fname);
    PyObject *empty = PyTuple_New(0);
    if (!empty) return -1;
    const int ok = PyArg_ParseTupleAndKeywords(empty, kwargs, fmt, names, &p->scale, &p->softcap,
                                               &causal, &align, &wl, &wr, &alibi, &sinks, &threads,
                                               &kernel, &mask, &mask_layout, &bias, &bias_layout, &stream, &owner);
    Py_DECREF(empty);
    if (!ok) return -1;
    p->causal = causal;
    p->align = (enum cflash_align)align;
    p->window_left = wl;
    p->window_right = wr;
    p->num_threads = threads;
    p->kernel = (enum cflash_kernel)kernel;
    p->mask_layout = (enum cflash_layout)mask_layout;
    p->bias_layout = (enum cflash_layout)bias_layout;
    p->cuda_stream = (void *)(intptr_t)stream; /* a cudaStream_t; 0, 1 and 2 are CUDA's own */
    if (dl_get(a, "alibi_slopes", alibi, ARG_OPTIONAL, &p->alibi_slopes)) return -1;
    if (dl_get(a, "sinks", sinks, ARG_OPTIONAL, &p->sinks)) return -1;
    if (dl_get(a, "mask", mask, ARG_OPTIONAL, &p->mask)) return -1;
    if (dl_get(a, "bias", bias, ARG_OPTIONAL, &p->bias)) return -1;
    return 0;
}

/* ---- range plans ---- */

typedef struct {
    PyObject_HEAD
    cflash_range_plan_t plan;
    int64_t Tq, Tk;
} RangePlanObject;

static PyTypeObject RangePlanType;

static PyObject *range_plan_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"q_ranges", "k_ranges", "attn_type_map", "Tq", "Tk", "segment_offsets", NULL};
    PyObject *qr, *kr, *types = Py_None, *segs = Py_None;
    long long Tq, Tk;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOLL|O:RangePlan", names, &qr, &kr, &types, &Tq, &Tk, &segs))
        return NULL;
    struct dl_args a = {.n = 0};
    const struct cflash_tensor *tqr, *tkr, *ttypes, *tsegs;
    if (dl_get(&a, "q_ranges", qr, 0, &tqr) || dl_get(&a, "k_ranges", kr, 0, &tkr) ||
        dl_get(&a, "attn_type_map", types, ARG_OPTIONAL, &ttypes) ||
        dl_get(&a, "segment_offsets", segs, ARG_OPTIONAL, &tsegs)) {
        return fail(&a);
    }
    cflash_range_plan_t plan = NULL;
    enum cflash_status st;
    Py_BEGIN_ALLOW_THREADS
    st = cflash_range_plan_create(&plan, tqr, tkr, ttypes, Tq, Tk, tsegs);
    Py_END_ALLOW_THREADS
    if (release_status(&a, st)) return NULL;
    RangePlanObject *self = (RangePlanObject *)type->tp_alloc(type, 0);
    if (!self) {
        cflash_range_plan_destroy(plan);
        return NULL;
    }
    self->plan = plan;
    self->Tq = Tq;
    self->Tk = Tk;
    return (PyObject *)self;
}

static void range_plan_dealloc(RangePlanObject *self) {
    cflash_range_plan_destroy(self->plan);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *range_plan_get(RangePlanObject *self, void *which) {
    switch ((intptr_t)which) {
    case 0: return PyLong_FromLongLong(cflash_range_plan_num_slices(self->plan));
    case 1: return PyLong_FromLongLong(cflash_range_plan_visible_cells(self->plan));
    case 2: return PyLong_FromLongLong(self->Tq);
    case 3: return PyLong_FromLongLong(self->Tk);
    default: return PyLong_FromLongLong(cflash_range_plan_packed_sequences(self->plan));
    }
}

static PyGetSetDef range_plan_getset[] = {
    {"num_slices", (getter)range_plan_get, NULL, "slices kept (empty slices are dropped)", (void *)0},
    {"visible_cells", (getter)range_plan_get, NULL, "visible (row, key) cells of the plan", (void *)1},
    {"Tq", (getter)range_plan_get, NULL, "query tokens the plan indexes", (void *)2},
    {"Tk", (getter)range_plan_get, NULL, "key tokens the plan indexes", (void *)3},
    {"packed_sequences", (getter)range_plan_get, NULL,
     "sequences of a plan that runs as a packed (varlen) batch, else 0", (void *)4},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject RangePlanType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cflash._cflash.RangePlan",
    .tp_basicsize = sizeof(RangePlanObject),
    .tp_dealloc = (destructor)range_plan_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RangePlan(q_ranges, k_ranges, attn_type_map, Tq, Tk, segment_offsets=None): a compiled "
              "cflash_range_plan (int32 [n, 2] ranges, int32 [n] types or None, int32 [G + 1] groups or None)",
    .tp_getset = range_plan_getset,
    .tp_new = range_plan_new,
};

/* ---- flash-mlm layer context caches ---- */

/* A cflash_context_cache_t. The library does not make a cache safe for a store concurrent with
 * any other call on it, and every call here runs without the GIL, so each call takes the
 * object's lock (waiting for it without the GIL): calls on one cache are serialized. */
typedef struct {
    PyObject_HEAD
    cflash_context_cache_t cache;
    PyThread_type_lock lock;
} ContextCacheObject;

static PyTypeObject ContextCacheType;

static void context_lock(ContextCacheObject *self) {
    if (PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) return;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    Py_END_ALLOW_THREADS
}

static void context_unlock(ContextCacheObject *self) { PyThread_release_lock(self->lock); }

static PyObject *context_cache_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    if (!PyArg_ParseTuple(args, ":ContextCache") || (kwargs && PyDict_Size(kwargs))) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "ContextCache() takes no arguments");
        return NULL;
    }
    ContextCacheObject *self = (ContextCacheObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->lock = PyThread_allocate_lock();
    if (!self->lock) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    const enum cflash_status st = cflash_context_cache_create(&self->cache);
    if (st != CFLASH_STATUS_OK) {
        PyErr_SetString(exception_for_status(st, cflash_last_error()), cflash_last_error());
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void context_cache_dealloc(ContextCacheObject *self) {
    cflash_context_cache_destroy(self->cache); /* NULL-safe */
    if (self->lock) PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The status of a call that imported no tensor, as an exception. */
static int raise_status(enum cflash_status st) {
    struct dl_args none = {.n = 0};
    return release_status(&none, st);
}

/* clear(layer_id): drop one layer's entry, or every entry with -1. */
static PyObject *context_cache_clear(ContextCacheObject *self, PyObject *args) {
    long long layer = -1;
    if (!PyArg_ParseTuple(args, "L:clear", &layer)) return NULL;
    context_lock(self);
    const enum cflash_status st = cflash_context_cache_clear(self->cache, layer);
    context_unlock(self);
    if (raise_status(st)) return NULL;
    Py_RETURN_NONE;
}

/* info(layer_id): None for no entry, else a dict of struct cflash_context_info with the
 * context lengths (a list) added. */
static PyObject *context_cache_info(ContextCacheObject *self, PyObject *args) {
    static const char *dtypes[] = {"float32", "float16", "bfloat16", "int32", "uint8"};
    long long layer;
    if (!PyArg_ParseTuple(args, "L:info", &layer)) return NULL;
    struct cflash_context_info info;
    int64_t *lengths = NULL;
    context_lock(self);
    enum cflash_status st = cflash_context_cache_info(self->cache, layer, &info);
    if (st == CFLASH_STATUS_OK && info.present) {
        lengths = malloc(sizeof(int64_t) * (size_t)(info.num_contexts > 0 ? info.num_contexts : 1));
        if (lengths) st = cflash_context_cache_lengths(self->cache, layer, lengths);
    }
    context_unlock(self);
    if (st == CFLASH_STATUS_OK && info.present && !lengths) return PyErr_NoMemory();
    if (raise_status(st)) {
        free(lengths);
        return NULL;
    }
    if (!info.present) Py_RETURN_NONE;
    PyObject *lens = PyList_New((Py_ssize_t)info.num_contexts);
    for (int64_t c = 0; lens && c < info.num_contexts; c++) {
        PyObject *n = PyLong_FromLongLong(lengths[c]);
        if (!n) Py_CLEAR(lens);
        else PyList_SET_ITEM(lens, (Py_ssize_t)c, n);
    }
    free(lengths);
    if (!lens) return NULL;
    PyObject *d = Py_BuildValue("{s:O,s:s,s:L,s:L,s:L,s:L,s:L,s:N}", "v_is_k", info.v_is_k ? Py_True : Py_False,
                                "dtype", (unsigned)info.dtype < 5 ? dtypes[info.dtype] : "unknown",
                                "num_contexts", (long long)info.num_contexts, "Hk", (long long)info.Hk,
                                "D", (long long)info.D, "Dv", (long long)info.Dv,
                                "total_len", (long long)info.total_len, "lengths", lens);
    return d; /* "N" gave lens away, also on failure */
}

/* store(layer_id, k, v, cu_seqlens, mode): cflash_context_cache_store. */
static PyObject *context_cache_store(ContextCacheObject *self, PyObject *args) {
    long long layer;
    PyObject *k, *v, *cu;
    int mode;
    if (!PyArg_ParseTuple(args, "LOOOi:store", &layer, &k, &v, &cu, &mode)) return NULL;
    struct dl_args a = {.n = 0};
    const struct cflash_tensor *tk, *tv, *tcu;
    if (dl_get(&a, "k", k, 0, &tk) || dl_get(&a, "v", v, ARG_OPTIONAL, &tv) ||
        dl_get(&a, "cu_seqlens", cu, ARG_OPTIONAL, &tcu))
        return fail(&a);
    enum cflash_status st;
    context_lock(self);
    Py_BEGIN_ALLOW_THREADS
    st = cflash_context_cache_store(self->cache, layer, tk, tv, tcu, (enum cflash_prefill_mode)mode);
    Py_END_ALLOW_THREADS
    context_unlock(self);
    return finish(&a, st);
}

static PyMethodDef context_cache_methods[] = {
    {"clear", (PyCFunction)context_cache_clear, METH_VARARGS,
     "clear(layer_id): drop layer_id's entry (absent is fine), or every entry with -1"},
    {"info", (PyCFunction)context_cache_info, METH_VARARGS,
     "info(layer_id): None (no entry) or a dict: v_is_k, dtype, num_contexts, Hk, D, Dv, total_len, lengths"},
    {"store", (PyCFunction)context_cache_store, METH_VARARGS,
     "store(layer_id, k, v, cu_seqlens, mode): cflash_context_cache_store (k [B, L, Hk, D] with cu_seqlens None, "
     "or [Tk, Hk, D] with int32 [B + 1]; v None: V := K; mode PREFILL_REPLACE | PREFILL_APPEND)"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject ContextCacheType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cflash._cflash.ContextCache",
    .tp_basicsize = sizeof(ContextCacheObject),
    .tp_dealloc = (destructor)context_cache_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ContextCache(): a cflash_context_cache_t (flash-mlm per-layer context K/V, owned copies); "
              "calls on one cache are serialized",
    .tp_methods = context_cache_methods,
    .tp_new = context_cache_new,
};

/* ---- attention entry points ---- */

static PyObject *py_attn_dense(PyObject *self, PyObject *args, PyObject *kwargs) {
    PyObject *q, *k, *v, *out, *lse;
    if (!PyArg_ParseTuple(args, "OOOOO:attn_dense", &q, &k, &v, &out, &lse)) return NULL;
    struct dl_args a;
    args_init(&a, kwargs);
    const struct cflash_tensor *tq, *tk, *tv, *to, *tl;
    struct cflash_attn_params p;
    if (dl_get(&a, "q", q, 0, &tq) || dl_get(&a, "k", k, 0, &tk) || dl_get(&a, "v", v, ARG_OPTIONAL, &tv) ||
        dl_get(&a, "out", out, ARG_WRITTEN, &to) || dl_get(&a, "lse", lse, ARG_OPTIONAL | ARG_WRITTEN, &tl) ||
        parse_params("attn_dense", kwargs, &a, &p))
        return fail(&a);
    enum cflash_status st;
    Py_BEGIN_ALLOW_THREADS
    st = cflash_attn_dense(tq, tk, tv, to, tl, &p);
    Py_END_ALLOW_THREADS
    return finish(&a, st);
}

static PyObject *py_attn_varlen(PyObject *self, PyObject *args, PyObject *kwargs) {
    PyObject *q, *k, *v, *cq, *ck, *out, *lse;
    long long mq, mk;
    if (!PyArg_ParseTuple(args, "OOOOOLLOO:attn_varlen", &q, &k, &v, &cq, &ck, &mq, &mk, &out, &lse)) return NULL;
    struct dl_args a;
    args_init(&a, kwargs);
    const struct cflash_tensor *tq, *tk, *tv, *tcq, *tck, *to, *tl;
    struct cflash_attn_params p;
    if (dl_get(&a, "q", q, 0, &tq) || dl_get(&a, "k", k, 0, &tk) || dl_get(&a, "v", v, ARG_OPTIONAL, &tv) ||
        dl_get(&a, "cu_seqlens_q", cq, 0, &tcq) || dl_get(&a, "cu_seqlens_k", ck, 0, &tck) ||
        dl_get(&a, "out", out, ARG_WRITTEN, &to) || dl_get(&a, "lse", lse, ARG_OPTIONAL | ARG_WRITTEN, &tl) ||
        parse_params("attn_varlen", kwargs, &a, &p))
        return fail(&a);
    enum cflash_status st;
    Py_BEGIN_ALLOW_THREADS
    st = cflash_attn_varlen(tq, tk, tv, tcq, tck, mq, mk, to, tl, &p);
    Py_END_ALLOW_THREADS
    return finish(&a, st);
}

static PyObject *py_attn_range(PyObject *self, PyObject *args, PyObject *kwargs) {
    PyObject *q, *k, *v, *plan, *out, *lse;
    if (!PyArg_ParseTuple(args, "OOOOOO:attn_range", &q, &k, &v, &plan, &out, &lse)) return NULL;
    if (!PyObject_TypeCheck(plan, &RangePlanType)) {
        PyErr_Format(PyExc_TypeError, "plan: expected a RangePlan, got %s", Py_TYPE(plan)->tp_name);
        return NULL;
    }
    struct dl_args a;
    args_init(&a, kwargs);
    const struct cflash_tensor *tq, *tk, *tv, *to, *tl;
    struct cflash_attn_params p;
    if (dl_get(&a, "q", q, 0, &tq) || dl_get(&a, "k", k, 0, &tk) || dl_get(&a, "v", v, ARG_OPTIONAL, &tv) ||
        dl_get(&a, "out", out, ARG_WRITTEN, &to) || dl_get(&a, "lse", lse, ARG_OPTIONAL | ARG_WRITTEN, &tl) ||
        parse_params("attn_range", kwargs, &a, &p))
        return fail(&a);
    const struct cflash_range_plan *rp = ((RangePlanObject *)plan)->plan; /* args keeps it alive */
    enum cflash_status st;
    Py_BEGIN_ALLOW_THREADS
    st = cflash_attn_range(tq, tk, tv, rp, to, tl, &p);
    Py_END_ALLOW_THREADS
    return finish(&a, st);
}

static PyObject *py_attn_kvcache(PyObject *self, PyObject *args, PyObject *kwargs) {
    PyObject *q, *kc, *vc, *seqlens, *bidx, *bt, *rcos, *rsin, *kn, *vn, *out, *lse;
    int interleaved;
    if (!PyArg_ParseTuple(args, "OOOOOOOOpOOOO:attn_kvcache", &q, &kc, &vc, &seqlens, &bidx, &bt, &rcos,
                          &rsin, &interleaved, &kn, &vn, &out, &lse))
        return NULL;
    struct dl_args a;
    args_init(&a, kwargs);
    struct cflash_kvcache cache;
    memset(&cache, 0, sizeof cache);
    const struct cflash_tensor *tq, *tkn, *tvn, *to, *tl;
    struct cflash_attn_params p;
    const int cache_flags = kn != Py_None ? ARG_WRITTEN : 0; /* appended to in place */
    if (dl_get(&a, "q", q, 0, &tq) || dl_get(&a, "k_cache", kc, cache_flags, &cache.k_cache) ||
        dl_get(&a, "v_cache", vc, ARG_OPTIONAL | cache_flags, &cache.v_cache) ||
        dl_get(&a, "cache_seqlens", seqlens, 0, &cache.cache_seqlens) ||
        dl_get(&a, "cache_batch_idx", bidx, ARG_OPTIONAL, &cache.cache_batch_idx) ||
        dl_get(&a, "block_table", bt, ARG_OPTIONAL, &cache.block_table) ||
        dl_get(&a, "rotary_cos", rcos, ARG_OPTIONAL, &cache.rotary_cos) ||
        dl_get(&a, "rotary_sin", rsin, ARG_OPTIONAL, &cache.rotary_sin) ||
        dl_get(&a, "k_new", kn, ARG_OPTIONAL, &tkn) || dl_get(&a, "v_new", vn, ARG_OPTIONAL, &tvn) ||
        dl_get(&a, "out", out, ARG_WRITTEN, &to) || dl_get(&a, "lse", lse, ARG_OPTIONAL | ARG_WRITTEN, &tl) ||
        parse_params("attn_kvcache", kwargs, &a, &p))
        return fail(&a);
    cache.rotary_interleaved = interleaved;
    enum cflash_status st;
    Py_BEGIN_ALLOW_THREADS
    st = cflash_attn_kvcache(tq, &cache, tkn, tvn, to, tl, &p);
    Py_END_ALLOW_THREADS
    return finish(&a, st);
}

static PyObject *py_attn_mlm(PyObject *self, PyObject *args, PyObject *kwargs) {
    PyObject *q, *k, *v, *cq, *ck, *cache, *ctx_idx, *out, *lse;
    long long layer;
    int cumulative, prefill, mode;
    if (!PyArg_ParseTuple(args, "OOOOOOLOppiOO:attn_mlm", &q, &k, &v, &cq, &ck, &cache, &layer, &ctx_idx,
                          &cumulative, &prefill, &mode, &out, &lse))
        return NULL;
    if (cache != Py_None && !PyObject_TypeCheck(cache, &ContextCacheType)) {
        PyErr_Format(PyExc_TypeError, "cache: expected a ContextCache or None, got %s", Py_TYPE(cache)->tp_name);
        return NULL;
    }
    ContextCacheObject *cc = cache == Py_None ? NULL : (ContextCacheObject *)cache; /* args keeps it alive */
    struct dl_args a;
    args_init(&a, kwargs);
    const struct cflash_tensor *tq, *tk, *tv, *tcq, *tck, *to, *tl;
    struct cflash_mlm_args m;
    memset(&m, 0, sizeof m);
    struct cflash_attn_params p;
    if (dl_get(&a, "q", q, 0, &tq) || dl_get(&a, "k", k, 0, &tk) || dl_get(&a, "v", v, ARG_OPTIONAL, &tv) ||
        dl_get(&a, "cu_seqlens_q", cq, ARG_OPTIONAL, &tcq) || dl_get(&a, "cu_seqlens_k", ck, ARG_OPTIONAL, &tck) ||
        dl_get(&a, "ctx_idx", ctx_idx, ARG_OPTIONAL, &m.ctx_idx) ||
        dl_get(&a, "out", out, ARG_WRITTEN, &to) || dl_get(&a, "lse", lse, ARG_OPTIONAL | ARG_WRITTEN, &tl) ||
        parse_params("attn_mlm", kwargs, &a, &p))
        return fail(&a);
    m.cache = cc ? cc->cache : NULL;
    m.layer_id = layer;
    m.cumulative = cumulative;
    m.prefill = prefill;
    m.prefill_mode = (enum cflash_prefill_mode)mode;
    enum cflash_status st;
    if (cc) context_lock(cc);
    Py_BEGIN_ALLOW_THREADS
    st = cflash_attn_mlm(tq, tk, tv, tcq, tck, &m, to, tl, &p);
    Py_END_ALLOW_THREADS
    if (cc) context_unlock(cc);
    return finish(&a, st);
}

static PyObject *py_merge(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"o1", "lse1", "o2", "lse2", "out", "lse_out", "stream", "stream_owner", NULL};
    PyObject *o1, *l1, *o2, *l2, *out, *lout, *owner = Py_None;
    long long stream = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOO|$LO:merge", names, &o1, &l1, &o2, &l2, &out, &lout, &stream,
                                     &owner))
        return NULL;
    struct dl_args a;
    args_init(&a, kwargs);
    const struct cflash_tensor *to1, *tl1, *to2, *tl2, *to, *tlo;
    if (dl_get(&a, "o1", o1, 0, &to1) || dl_get(&a, "lse1", l1, 0, &tl1) || dl_get(&a, "o2", o2, 0, &to2) ||
        dl_get(&a, "lse2", l2, 0, &tl2) || dl_get(&a, "out", out, ARG_WRITTEN, &to) ||
        dl_get(&a, "lse_out", lout, ARG_OPTIONAL | ARG_WRITTEN, &tlo))
        return fail(&a);
    enum cflash_status st;
    Py_BEGIN_ALLOW_THREADS
    st = cflash_merge_on_stream(to1, tl1, to2, tl2, to, tlo, (void *)(intptr_t)stream);
    Py_END_ALLOW_THREADS
    return finish(&a, st);
}

/* describe(x, name="x"): what the converter sees (tests, debugging, shapes of producers the
 * Python layer does not know); errors name `name`. */
static PyObject *py_describe(PyObject *self, PyObject *args) {
    PyObject *obj;
    const char *name = "x";
    if (!PyArg_ParseTuple(args, "O|s:describe", &obj, &name)) return NULL;
    struct dl_args a = {.n = 0};
    const struct cflash_tensor *t;
    if (dl_get(&a, name, obj, 0, &t)) return fail(&a);
    static const char *dtypes[] = {"float32", "float16", "bfloat16", "int32", "uint8"};
    PyObject *shape = PyTuple_New(t->ndim), *strides = PyTuple_New(t->ndim);
    for (int i = 0; shape && strides && i < t->ndim; i++) {
        PyTuple_SET_ITEM(shape, i, PyLong_FromLongLong(t->shape[i]));
        PyTuple_SET_ITEM(strides, i, PyLong_FromLongLong(t->stride[i]));
    }
    PyObject *d = shape && strides ? Py_BuildValue("{s:O,s:O,s:s,s:K,s:O,s:s,s:O}", "shape", shape, "strides", strides,
                                                   "dtype", dtypes[t->dtype], "data", (unsigned long long)(uintptr_t)t->data,
                                                   "readonly", a.ref[0].readonly ? Py_True : Py_False,
                                                   "capsule", a.ref[0].versioned ? "dltensor_versioned" : "dltensor",
                                                   "exchange", a.ref[0].exchange ? Py_True : Py_False)
                                   : NULL;
    Py_XDECREF(shape);
    Py_XDECREF(strides);
    dl_args_release(&a);
    return d;
}

/* ---- Buffer: a minimal DLPack producer of uninitialized CPU memory ---- */

typedef struct {
    PyObject_HEAD
    void *data;
    int32_t ndim;
    int64_t shape[CFLASH_MAX_DIMS];
    int64_t strides[CFLASH_MAX_DIMS];
    DLDataType dtype;
    const char *dtype_name;
} BufferObject;

static PyTypeObject BufferType;

/* One export: the managed tensor (either kind) and the shape/strides it points to. It owns a
 * reference to the Buffer, dropped by the deleter. */
struct buffer_export {
    struct DLManagedTensorVersioned versioned;
    DLManagedTensor legacy;
    int64_t shape[CFLASH_MAX_DIMS], strides[CFLASH_MAX_DIMS];
    PyObject *owner;
};

/* Deleters may run on any thread (XLA frees buffers on its own threads), so take the GIL. */
static void buffer_export_free(struct buffer_export *e) {
    if (Py_IsInitialized()) {
        PyGILState_STATE g = PyGILState_Ensure();
        Py_DECREF(e->owner);
        PyGILState_Release(g);
    }
    free(e);
}
static void buffer_delete_versioned(struct DLManagedTensorVersioned *m) { buffer_export_free(m->manager_ctx); }
static void buffer_delete_legacy(DLManagedTensor *m) { buffer_export_free(m->manager_ctx); }

/* A capsule nobody consumed still owns its tensor (the name is unchanged): delete it. */
static void buffer_capsule_destructor(PyObject *cap) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (PyCapsule_IsValid(cap, "dltensor_versioned")) {
        struct DLManagedTensorVersioned *m = PyCapsule_GetPointer(cap, "dltensor_versioned");
        m->deleter(m);
    } else if (PyCapsule_IsValid(cap, "dltensor")) {
        DLManagedTensor *m = PyCapsule_GetPointer(cap, "dltensor");
        m->deleter(m);
    }
    PyErr_Restore(type, value, tb);
}

static PyObject *buffer_dlpack(BufferObject *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"stream", "max_version", "dl_device", "copy", NULL};
    PyObject *stream = Py_None, *max_version = Py_None, *dl_device = Py_None, *copy = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOOO:__dlpack__", names, &stream, &max_version, &dl_device, &copy))
        return NULL;
    if (dl_device != Py_None) {
        long type = -1, id = -1;
        if (PyTuple_Check(dl_device) && PyTuple_GET_SIZE(dl_device) == 2) {
            type = PyLong_AsLong(PyTuple_GET_ITEM(dl_device, 0));
            id = PyLong_AsLong(PyTuple_GET_ITEM(dl_device, 1));
        }
        if (PyErr_Occurred()) return NULL;
        if (type != kDLCPU || id != 0) {
            PyErr_SetString(PyExc_BufferError, "Buffer: only exports to the CPU device (1, 0)");
            return NULL;
        }
    }
    if (copy == Py_True) {
        PyErr_SetString(PyExc_BufferError, "Buffer: copy=True is not supported");
        return NULL;
    }
    int versioned = 0;
    if (max_version != Py_None) {
        if (!PyTuple_Check(max_version) || PyTuple_GET_SIZE(max_version) != 2) {
            PyErr_SetString(PyExc_TypeError, "Buffer: max_version must be a (major, minor) tuple");
            return NULL;
        }
        const long major = PyLong_AsLong(PyTuple_GET_ITEM(max_version, 0));
        if (major == -1 && PyErr_Occurred()) return NULL;
        versioned = major >= DLPACK_MAJOR_VERSION;
    }
    struct buffer_export *e = calloc(1, sizeof *e);
    if (!e) return PyErr_NoMemory();
    memcpy(e->shape, self->shape, sizeof e->shape);
    memcpy(e->strides, self->strides, sizeof e->strides);
    DLTensor dl = {.data = self->data, .device = {kDLCPU, 0}, .ndim = self->ndim, .dtype = self->dtype,
                   .shape = e->shape, .strides = e->strides, .byte_offset = 0};
    e->owner = (PyObject *)self;
    Py_INCREF(self);
    PyObject *cap;
    if (versioned) {
        e->versioned.version.major = DLPACK_MAJOR_VERSION;
        e->versioned.version.minor = DL_REQUEST_MINOR;
        e->versioned.manager_ctx = e;
        e->versioned.deleter = buffer_delete_versioned;
        e->versioned.flags = 0;
        e->versioned.dl_tensor = dl;
        cap = PyCapsule_New(&e->versioned, "dltensor_versioned", buffer_capsule_destructor);
    } else {
        e->legacy.manager_ctx = e;
        e->legacy.deleter = buffer_delete_legacy;
        e->legacy.dl_tensor = dl;
        cap = PyCapsule_New(&e->legacy, "dltensor", buffer_capsule_destructor);
    }
    if (!cap) {
        Py_DECREF(self);
        free(e);
    }
    return cap;
}

static PyObject *buffer_dlpack_device(BufferObject *self, PyObject *unused) {
    return Py_BuildValue("(ii)", (int)kDLCPU, 0);
}

static PyObject *buffer_get(BufferObject *self, void *which) {
    if ((intptr_t)which == 1) return PyUnicode_FromString(self->dtype_name);
    PyObject *shape = PyTuple_New(self->ndim);
    for (int i = 0; shape && i < self->ndim; i++) PyTuple_SET_ITEM(shape, i, PyLong_FromLongLong(self->shape[i]));
    return shape;
}

static void buffer_dealloc(BufferObject *self) {
    free(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef buffer_methods[] = {
    {"__dlpack__", (PyCFunction)(void (*)(void))buffer_dlpack, METH_VARARGS | METH_KEYWORDS,
     "__dlpack__(*, stream=None, max_version=None, dl_device=None, copy=None): a DLPack capsule (versioned "
     "when max_version >= (1, 0))"},
    {"__dlpack_device__", (PyCFunction)buffer_dlpack_device, METH_NOARGS, "(kDLCPU, 0)"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef buffer_getset[] = {
    {"shape", (getter)buffer_get, NULL, "shape tuple", (void *)0},
    {"dtype", (getter)buffer_get, NULL, "dtype name", (void *)1},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject BufferType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cflash._cflash.Buffer",
    .tp_basicsize = sizeof(BufferObject),
    .tp_dealloc = (destructor)buffer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "C-contiguous CPU memory (64-byte aligned) exported through DLPack; made by empty()",
    .tp_methods = buffer_methods,
    .tp_getset = buffer_getset,
};

/* empty(shape, dtype): an uninitialized C-contiguous Buffer; dtype float32 | float16 |
 * bfloat16 | int32 | uint8 | bool. */
static PyObject *py_empty(PyObject *self, PyObject *args) {
    static const struct { const char *name; DLDataType dt; } types[] = {
        {"float32", {kDLFloat, 32, 1}}, {"float16", {kDLFloat, 16, 1}}, {"bfloat16", {kDLBfloat, 16, 1}},
        {"int32", {kDLInt, 32, 1}},     {"uint8", {kDLUInt, 8, 1}},     {"bool", {kDLBool, 8, 1}}};
    PyObject *shape;
    const char *dtype;
    if (!PyArg_ParseTuple(args, "Os:empty", &shape, &dtype)) return NULL;
    int ti = -1;
    for (int i = 0; i < (int)(sizeof types / sizeof types[0]); i++)
        if (!strcmp(dtype, types[i].name)) ti = i;
    if (ti < 0) {
        PyErr_Format(PyExc_TypeError, "dtype: must be float32, float16, bfloat16, int32, uint8 or bool, got '%s'", dtype);
        return NULL;
    }
    PyObject *seq = PySequence_Fast(shape, "shape: must be a sequence of ints");
    if (!seq) return NULL;
    const Py_ssize_t ndim = PySequence_Fast_GET_SIZE(seq);
    if (ndim > CFLASH_MAX_DIMS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "shape: at most %d dimensions, got %zd", CFLASH_MAX_DIMS, ndim);
        return NULL;
    }
    int64_t dims[CFLASH_MAX_DIMS];
    const int64_t limit = (int64_t)1 << 53;
    int64_t numel = 1;
    for (Py_ssize_t i = 0; i < ndim; i++) {
        const long long n = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (n == -1 && PyErr_Occurred()) { Py_DECREF(seq); return NULL; }
        if (n < 0 || n > limit || (n > 0 && numel > limit / n)) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "shape: entry %zd (%lld) is negative or too large", i, n);
            return NULL;
        }
        dims[i] = n;
        numel *= n;
    }
    Py_DECREF(seq);
    const size_t bytes = (size_t)numel * (types[ti].dt.bits / 8);
    const size_t rounded = (bytes + BUFFER_ALIGN - 1) / BUFFER_ALIGN * BUFFER_ALIGN;
    void *data = aligned_alloc(BUFFER_ALIGN, rounded ? rounded : BUFFER_ALIGN);
    if (!data) return PyErr_NoMemory();
    BufferObject *b = (BufferObject *)BufferType.tp_alloc(&BufferType, 0);
    if (!b) { free(data); return NULL; }
    b->data = data;
    b->ndim = (int32_t)ndim;
    b->dtype = types[ti].dt;
    b->dtype_name = types[ti].name;
    int64_t step = 1;
    for (int i = (int)ndim - 1; i >= 0; i--) {
        b->shape[i] = dims[i];
        b->strides[i] = step;
        step *= dims[i] > 1 ? dims[i] : 1;
    }
    return (PyObject *)b;
}

/* ---- small queries ---- */

static PyObject *py_kernel_name(PyObject *self, PyObject *arg) {
    const long k = PyLong_AsLong(arg);
    if (k == -1 && PyErr_Occurred()) return NULL;
    return PyUnicode_FromString(cflash_kernel_name((enum cflash_kernel)k));
}

static PyObject *py_kernel_available(PyObject *self, PyObject *arg) {
    const long k = PyLong_AsLong(arg);
    if (k == -1 && PyErr_Occurred()) return NULL;
    if (k < 0 || k >= CFLASH_KERNEL_COUNT) Py_RETURN_FALSE;
    return PyBool_FromLong(cflash_kernel_available((enum cflash_kernel)k));
}

static PyObject *py_kernel_auto(PyObject *self, PyObject *unused) {
    return PyLong_FromLong((long)cflash_kernel_auto());
}

static PyObject *py_default_num_threads(PyObject *self, PyObject *unused) {
    return PyLong_FromLong((long)cflash_default_num_threads());
}

static PyObject *py_cpu_workspace_size(PyObject *self, PyObject *args) {
    long long Hq, Hk, D, Dv;
    int threads;
    if (!PyArg_ParseTuple(args, "LLLLi:cpu_workspace_size", &Hq, &Hk, &D, &Dv, &threads)) return NULL;
    return PyLong_FromSize_t(cflash_cpu_workspace_size(Hq, Hk, D, Dv, threads));
}

/* work_stream(x): for a tensor whose type has a DLPack exchange table, (device_type, stream):
 * the framework's current work stream on x's device as an int for CUDA tensors (0 = the legacy
 * default stream), None for others; None when the type has no table or the table cannot export
 * x (the Python layer then asks the framework itself). One C call instead of
 * torch.cuda.current_stream(x.device). */
static PyObject *py_work_stream(PyObject *self, PyObject *x) {
    const DLPackExchangeAPI *api = exchange_api(Py_TYPE(x));
    if (!api) Py_RETURN_NONE;
    DLDevice dev;
    if (api->dltensor_from_py_object_no_sync) {
        DLTensor t;
        if (api->dltensor_from_py_object_no_sync(x, &t) != 0) goto fallback;
        dev = t.device;
    } else {
        DLManagedTensorVersioned *m = NULL;
        if (api->managed_tensor_from_py_object_no_sync(x, &m) != 0 || !m) goto fallback;
        dev = m->dl_tensor.device;
        if (m->deleter) m->deleter(m);
    }
    if (!is_cuda_device((int)dev.device_type)) return Py_BuildValue("(iO)", (int)dev.device_type, Py_None);
    void *stream = NULL;
    if (api->current_work_stream(dev.device_type, dev.device_id, &stream) != 0) goto fallback;
    return Py_BuildValue("(iL)", (int)dev.device_type, (long long)(intptr_t)stream);
fallback: /* what the table cannot export (torch: sparse, meta): the framework is asked instead */
    PyErr_Clear();
    Py_RETURN_NONE;
}

static PyObject *py_exception_for_status(PyObject *self, PyObject *args) {
    int st;
    const char *msg = "";
    if (!PyArg_ParseTuple(args, "i|s:exception_for_status", &st, &msg)) return NULL;
    PyObject *e = exception_for_status((enum cflash_status)st, msg);
    if (!e) Py_RETURN_NONE;
    Py_INCREF(e);
    return e;
}

static PyMethodDef module_methods[] = {
    {"attn_dense", (PyCFunction)(void (*)(void))py_attn_dense, METH_VARARGS | METH_KEYWORDS,
     "attn_dense(q, k, v, out, lse, **params): cflash_attn_dense; writes out (and lse)"},
    {"attn_varlen", (PyCFunction)(void (*)(void))py_attn_varlen, METH_VARARGS | METH_KEYWORDS,
     "attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, out, lse, **params)"},
    {"attn_range", (PyCFunction)(void (*)(void))py_attn_range, METH_VARARGS | METH_KEYWORDS,
     "attn_range(q, k, v, plan, out, lse, **params)"},
    {"attn_kvcache", (PyCFunction)(void (*)(void))py_attn_kvcache, METH_VARARGS | METH_KEYWORDS,
     "attn_kvcache(q, k_cache, v_cache, cache_seqlens, cache_batch_idx, block_table, rotary_cos, rotary_sin, "
     "rotary_interleaved, k_new, v_new, out, lse, **params)"},
    {"attn_mlm", (PyCFunction)(void (*)(void))py_attn_mlm, METH_VARARGS | METH_KEYWORDS,
     "attn_mlm(q, k, v, cu_seqlens_q, cu_seqlens_k, cache, layer_id, ctx_idx, cumulative, prefill, prefill_mode, "
     "out, lse, **params): cflash_attn_mlm"},
    {"merge", (PyCFunction)(void (*)(void))py_merge, METH_VARARGS | METH_KEYWORDS,
     "merge(o1, lse1, o2, lse2, out, lse_out, *, stream=0): cflash_merge_on_stream"},
    {"work_stream", py_work_stream, METH_O, "work_stream(x): (DLPack device type, current CUDA stream or None) through x's DLPack exchange table; None without one"},
    {"describe", py_describe, METH_VARARGS, "describe(x, name='x'): the converter's view of a DLPack tensor, as a dict"},
    {"empty", py_empty, METH_VARARGS, "empty(shape, dtype): an uninitialized Buffer"},
    {"kernel_name", py_kernel_name, METH_O, "kernel_name(k): cflash_kernel_name"},
    {"kernel_available", py_kernel_available, METH_O, "kernel_available(k): cflash_kernel_available"},
    {"kernel_auto", py_kernel_auto, METH_NOARGS, "kernel_auto(): cflash_kernel_auto"},
    {"default_num_threads", py_default_num_threads, METH_NOARGS, "cflash_default_num_threads()"},
    {"cpu_workspace_size", py_cpu_workspace_size, METH_VARARGS, "cpu_workspace_size(Hq, Hk, D, Dv, num_threads)"},
    {"exception_for_status", py_exception_for_status, METH_VARARGS,
     "exception_for_status(status, message=''): the exception class a status raises (None for OK)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef cflash_module = {
    PyModuleDef_HEAD_INIT, "_cflash", "cflash's CPython extension (DLPack in, status -> exception out)", -1,
    module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__cflash(void) {
    if (PyType_Ready(&RangePlanType) < 0 || PyType_Ready(&BufferType) < 0 || PyType_Ready(&ContextCacheType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&cflash_module);
    if (!m) return NULL;
    Py_INCREF(&RangePlanType);
    Py_INCREF(&BufferType);
    Py_INCREF(&ContextCacheType);
    if (PyModule_AddObject(m, "RangePlan", (PyObject *)&RangePlanType) ||
        PyModule_AddObject(m, "Buffer", (PyObject *)&BufferType) ||
        PyModule_AddObject(m, "ContextCache", (PyObject *)&ContextCacheType)) {
        Py_DECREF(m);
        return NULL;
    }
    static const struct { const char *name; long value; } ints[] = {
        {"VERSION_MAJOR", CFLASH_VERSION_MAJOR}, {"VERSION_MINOR", CFLASH_VERSION_MINOR},
        {"VERSION_PATCH", CFLASH_VERSION_PATCH}, {"MAX_HEAD_DIM", CFLASH_MAX_HEAD_DIM},
        {"KERNEL_COUNT", CFLASH_KERNEL_COUNT},
#ifdef CFLASH_HAVE_CUDA
        {"HAVE_CUDA", 1},
#else
        {"HAVE_CUDA", 0},
#endif
        {"STATUS_OK", CFLASH_STATUS_OK}, {"STATUS_INVALID_ARGUMENT", CFLASH_STATUS_INVALID_ARGUMENT},
        {"STATUS_UNSUPPORTED", CFLASH_STATUS_UNSUPPORTED}, {"STATUS_OUT_OF_MEMORY", CFLASH_STATUS_OUT_OF_MEMORY},
        {"STATUS_DEVICE_ERROR", CFLASH_STATUS_DEVICE_ERROR},
        {"ALIGN_BOTTOM_RIGHT", CFLASH_ALIGN_BOTTOM_RIGHT}, {"ALIGN_TOP_LEFT", CFLASH_ALIGN_TOP_LEFT},
        {"LAYOUT_DENSE", CFLASH_LAYOUT_DENSE}, {"LAYOUT_KEY_SIDE", CFLASH_LAYOUT_KEY_SIDE},
        {"LAYOUT_QUERY_SIDE", CFLASH_LAYOUT_QUERY_SIDE},
        {"RANGE_FULL", CFLASH_RANGE_FULL}, {"RANGE_CAUSAL", CFLASH_RANGE_CAUSAL},
        {"RANGE_INV_CAUSAL", CFLASH_RANGE_INV_CAUSAL}, {"RANGE_BAND", CFLASH_RANGE_BAND},
        {"PREFILL_REPLACE", CFLASH_PREFILL_REPLACE}, {"PREFILL_APPEND", CFLASH_PREFILL_APPEND},
        {"DLPACK_MAJOR_VERSION", DLPACK_MAJOR_VERSION}, {"DLPACK_MINOR_VERSION", DLPACK_MINOR_VERSION}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (PyModule_AddIntConstant(m, ints[i].name, ints[i].value)) {
            Py_DECREF(m);
            return NULL;
        }
    return m;
}
