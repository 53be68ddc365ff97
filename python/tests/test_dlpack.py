"""The DLPack protocol as the extension consumes and produces it: versioned and legacy capsules,
the capsule renamed "used_dltensor[_versioned]" and the deleter called exactly once (also on
every error path), byte_offset and NULL strides, read-only flags, unsupported versions, dtypes
and devices, and the Buffer producer read by NumPy, torch and JAX."""

import ctypes
import sys

import numpy as np
import pytest

import cflash
import reference
from cflash import _cflash
from helpers import check, randn, require


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", DELETER)]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("version", DLPackVersion), ("manager_ctx", ctypes.c_void_p), ("deleter", DELETER),
                ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]


_new_capsule = ctypes.pythonapi.PyCapsule_New
_new_capsule.restype = ctypes.py_object
_new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_capsule_name = ctypes.pythonapi.PyCapsule_GetName
_capsule_name.restype = ctypes.c_char_p
_capsule_name.argtypes = [ctypes.py_object]
NAMES = {False: b"dltensor", True: b"dltensor_versioned"}  # alive as long as the module
READ_ONLY = 1


class Producer:
    """A DLPack producer written with ctypes over a NumPy buffer: the logical tensor starts
    `offset` elements into `base` (sent as byte_offset, data = the buffer's start). Every export
    makes a new managed tensor, kept in `live` until its deleter runs; `deleted` counts those
    calls (the Python layer may export an unknown producer to learn its shape and dtype)."""

    def __init__(self, base, shape, offset=0, strides=None, versioned=True, flags=0, major=1,
                 dtype=(2, 32), device=(1, 0), legacy_only=False):
        self.base, self.device, self.legacy_only = base, device, legacy_only
        self.shape = (ctypes.c_int64 * len(shape))(*shape)
        self.strides = None if strides is None else (ctypes.c_int64 * len(strides))(*strides)
        self.deleted, self.capsule, self.live = 0, None, {}
        self.deleter = DELETER(self._delete)
        self.dl = DLTensor(base.ctypes.data, DLDevice(*device), len(shape), DLDataType(dtype[0], dtype[1], 1),
                           self.shape, self.strides, offset * base.itemsize)
        self.versioned, self.flags, self.major = versioned, flags, major

    def _delete(self, ptr):
        assert ptr in self.live, "deleted twice, or not ours"
        del self.live[ptr]
        self.deleted += 1

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, stream=None, max_version=None, **kwargs):
        if self.legacy_only and max_version is not None:
            raise TypeError("__dlpack__() got an unexpected keyword argument 'max_version'")
        if self.versioned:
            m = DLManagedTensorVersioned(DLPackVersion(self.major, 0), None, self.deleter, self.flags, self.dl)
        else:
            m = DLManagedTensor(self.dl, None, self.deleter)
        self.live[ctypes.addressof(m)] = m
        self.capsule = _new_capsule(ctypes.addressof(m), NAMES[self.versioned], None)
        return self.capsule

    def capsule_name(self):
        return _capsule_name(self.capsule).decode()

    def all_deleted(self):
        return not self.live and self.deleted >= 1


@pytest.mark.parametrize("versioned", [True, False], ids=["versioned", "legacy"])
def test_byte_offset_and_null_strides(rng, versioned):
    """q read through byte_offset with NULL (C-contiguous) strides; deleter once; renamed."""
    shape = (1, 5, 2, 8)
    base = randn(rng, (80 + 3 + 16,)).astype(np.float32)
    q = base[3:83].reshape(shape)
    prod = Producer(base, shape, offset=3, versioned=versioned)
    d = _cflash.describe(prod)
    assert d["data"] == base.ctypes.data + 12 and d["strides"] == (80, 16, 8, 1)
    assert d["capsule"] == ("dltensor_versioned" if versioned else "dltensor")
    assert prod.all_deleted() and prod.capsule_name() == "used_" + NAMES[versioned].decode()
    k = randn(rng, (1, 7, 2, 8)).astype(np.float32)
    prod = Producer(base, shape, offset=3, versioned=versioned)
    out = cflash.attn_dense(prod, k, k, causal=True)
    assert isinstance(out, np.ndarray)  # another producer: NumPy out
    assert prod.all_deleted()
    check(out, None, lambda rnd: reference.dense(q, k, k, causal=True, rnd=rnd), "float32")


def test_explicit_strides(rng):
    """A [B, L, H, D] view of [B, H, L, D] storage, strides given by the producer."""
    base = randn(rng, (1, 2, 6, 8)).astype(np.float32)
    prod = Producer(base, (1, 6, 2, 8), strides=(96, 8, 48, 1))
    out = cflash.attn_dense(prod, base.transpose(0, 2, 1, 3), base.transpose(0, 2, 1, 3))
    q = base.transpose(0, 2, 1, 3)
    check(out, None, lambda rnd: reference.dense(q, q, q, rnd=rnd), "float32")
    assert prod.all_deleted()


def test_legacy_only_producer_falls_back():
    prod = Producer(np.zeros(6, np.float32), (2, 3), versioned=False, legacy_only=True)
    assert _cflash.describe(prod)["capsule"] == "dltensor" and prod.all_deleted()


def test_read_only_flag(rng):
    """A read-only versioned tensor is an input, never an output."""
    q = randn(rng, (1, 4, 2, 8)).astype(np.float32)
    ro_in = Producer(q, q.shape, flags=READ_ONLY)
    assert _cflash.describe(ro_in)["readonly"]
    ro_in = Producer(q, q.shape, flags=READ_ONLY)
    cflash.attn_dense(ro_in, q, q)
    assert ro_in.all_deleted()
    store = np.full(q.shape, 3.0, np.float32)
    ro_out = Producer(store, q.shape, flags=READ_ONLY)
    with pytest.raises(ValueError, match="out: the tensor is read-only"):
        cflash.attn_dense(q, q, q, out=ro_out)
    assert ro_out.all_deleted() and (store == 3.0).all()
    frozen = store.copy()
    frozen.flags.writeable = False  # NumPy sets the flag in its versioned capsules
    assert _cflash.describe(frozen)["readonly"]
    with pytest.raises(ValueError, match="read-only"):
        cflash.attn_dense(q, q, q, out=frozen)


def test_deleter_runs_on_every_error_path(rng):
    q = randn(rng, (1, 4, 2, 8)).astype(np.float32)
    cases = [
        (Producer(q, q.shape, major=2), TypeError, "DLPack version 2"),
        (Producer(q, q.shape, dtype=(2, 64)), TypeError, "dtype float64 is not supported"),
        (Producer(q, q.shape, dtype=(5, 64)), TypeError, "dtype complex64"),
        (Producer(q, (1, 1, 1, 1, 32)), ValueError, "at most 4 dimensions"),
        (Producer(q, q.shape, device=(2, 0)), *((ValueError, "k: must be on q's device") if _cflash.HAVE_CUDA
                                                 else (NotImplementedError, "CUDA backend not built"))),
    ]
    for prod, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            cflash.attn_dense(q, prod, q)
        # every export (the Python layer may export once more to read a shape) was released
        assert not prod.live and (prod.deleted == 0) == (prod.capsule is None), pattern
    # a failing later argument releases the earlier ones; a library error releases all
    first, second = Producer(q, q.shape), Producer(q, q.shape, dtype=(0, 64))
    with pytest.raises(TypeError, match="k: dtype int64"):
        _cflash.attn_dense(first, second, None, np.empty_like(q), None)
    assert first.all_deleted() and second.all_deleted()
    prods = [Producer(q, q.shape) for _ in range(3)]
    with pytest.raises(ValueError, match="window_left"):
        _cflash.attn_dense(prods[0], prods[1], prods[2], np.empty_like(q), None, window_left=-5)
    assert all(p.all_deleted() for p in prods)


def test_not_a_capsule():
    class Bad:
        def __dlpack__(self, **kw):
            return 42

        def __dlpack_device__(self):
            return (1, 0)

    with pytest.raises(TypeError, match="did not return a DLPack capsule"):
        _cflash.describe(Bad())
    with pytest.raises(TypeError, match="expected a DLPack tensor"):
        _cflash.describe(object())


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int32", "uint8", "bool"])
def test_buffer_producer(dtype):
    """empty() Buffers export both capsule kinds; NumPy, torch and JAX read them."""
    b = _cflash.empty((2, 3), dtype)
    assert b.shape == (2, 3) and b.dtype == dtype
    d = _cflash.describe(b)
    assert d["strides"] == (3, 1) and d["data"] % 64 == 0
    refs = sys.getrefcount(b)
    cap = b.__dlpack__()       # unconsumed capsules delete their tensor
    cap2 = b.__dlpack__(max_version=(1, 0))
    assert sys.getrefcount(b) == refs + 2
    del cap, cap2
    assert sys.getrefcount(b) == refs
    if dtype != "bfloat16":
        a = np.from_dlpack(b)
        a[...] = 1
        assert a.dtype == np.dtype(dtype) and a.shape == (2, 3)
    try:
        import torch
        t = torch.from_dlpack(b)
        t.fill_(1)
        assert str(t.dtype) == f"torch.{dtype}"
    except ImportError:
        pass
    del b
    if dtype != "bfloat16":
        assert (a == 1).all()  # the memory lives as long as a consumer holds it


def test_buffer_jax_zero_copy():
    require("jax")
    import jax.dlpack
    b = _cflash.empty((4,), "bfloat16")
    ptr = _cflash.describe(b)["data"]
    j = jax.dlpack.from_dlpack(b)
    del b
    assert str(j.dtype) == "bfloat16" and j.unsafe_buffer_pointer() == ptr


def test_buffer_errors():
    with pytest.raises(TypeError, match="dtype"):
        _cflash.empty((2,), "float64")
    with pytest.raises(ValueError, match="shape"):
        _cflash.empty((-1,), "float32")
    with pytest.raises(ValueError, match="dimensions"):
        _cflash.empty((1,) * 5, "float32")
    b = _cflash.empty((2,), "float32")
    with pytest.raises(BufferError):
        b.__dlpack__(dl_device=(2, 0))
    with pytest.raises(BufferError):
        b.__dlpack__(copy=True)


class DLPackExchangeAPI(ctypes.Structure):
    """DLPack 1.3's C exchange table (`__dlpack_c_exchange_api__`), as a framework exposes it."""
    _fields_ = [("version", DLPackVersion), ("prev_api", ctypes.c_void_p),
                ("managed_tensor_allocator", ctypes.c_void_p),
                ("managed_tensor_from_py_object_no_sync",
                 ctypes.CFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.POINTER(ctypes.c_void_p))),
                ("managed_tensor_to_py_object_no_sync", ctypes.c_void_p),
                ("dltensor_from_py_object_no_sync",
                 ctypes.CFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.POINTER(DLTensor))),
                ("current_work_stream",
                 ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(ctypes.c_void_p)))]


_TABLES = []  # exchange tables and their callbacks live as long as the process (DLPack 1.3)


def exchange_producer(major=1, fail=False, stream=0x1234):
    """A Producer type with an exchange table (a new type each time: the extension caches tables
    per type). Its no-sync exports are counted in `exchanged`; __dlpack__ stays available."""

    class ExchangeProducer(Producer):
        exchanged = 0

    def from_py(obj, out):
        if fail:
            return -1  # no Python exception set: the extension must raise one itself
        m = DLManagedTensorVersioned(DLPackVersion(obj.major, 3), None, obj.deleter, obj.flags, obj.dl)
        obj.live[ctypes.addressof(m)] = m
        type(obj).exchanged += 1
        out[0] = ctypes.addressof(m)
        return 0

    def dltensor(obj, out):
        out[0] = obj.dl
        return 0

    def work_stream(device_type, device_id, out):
        out[0] = stream
        return 0

    fields = DLPackExchangeAPI._fields_
    table = DLPackExchangeAPI(DLPackVersion(major, 3), None, None, fields[3][1](from_py), None,
                              fields[5][1](dltensor), fields[6][1](work_stream))
    _TABLES.append(table)
    ExchangeProducer.__dlpack_c_exchange_api__ = _new_capsule(ctypes.addressof(table), b"dlpack_exchange_api", None)
    return ExchangeProducer


def test_exchange_table(rng):
    """Types with a DLPack 1.3 exchange table are read through it (no __dlpack__ call) where no
    stream synchronization is needed; the managed tensor's deleter runs once; values are right."""
    q = randn(rng, (1, 5, 2, 8)).astype(np.float32)
    k = randn(rng, (1, 7, 2, 8)).astype(np.float32)
    P = exchange_producer()
    prod = P(q, q.shape)
    d = _cflash.describe(prod)
    assert d["exchange"] and d["capsule"] == "dltensor_versioned" and d["shape"] == q.shape
    assert P.exchanged == 1 and prod.capsule is None and prod.all_deleted()
    assert _cflash.work_stream(prod) == (1, None)  # a CPU tensor: no stream
    prods = [P(x, x.shape) for x in (q, k, k)]
    out = cflash.attn_dense(*prods, causal=True)
    assert all(p.all_deleted() and p.capsule is None for p in prods)
    check(out, None, lambda rnd: reference.dense(q, k, k, causal=True, rnd=rnd), "float32")
    # read-only through the table: an input, never an output
    ro = P(np.empty_like(q), q.shape, flags=READ_ONLY)
    with pytest.raises(ValueError, match="out: the tensor is read-only"):
        cflash.attn_dense(q, k, k, out=ro)
    assert ro.all_deleted()
    # a subclass of a type with a table: __dlpack__ (the table is its base's)
    class Sub(P):
        pass
    sub = Sub(q, q.shape)
    assert not _cflash.describe(sub)["exchange"] and sub.all_deleted()
    # an object that requires grad: __dlpack__ instead (its producer decides)
    rg = P(q, q.shape)
    rg.requires_grad = True
    assert not _cflash.describe(rg)["exchange"] and rg.all_deleted()
    # an unknown major version of the table: __dlpack__ instead
    P2 = exchange_producer(major=2)
    prod = P2(q, q.shape)
    assert not _cflash.describe(prod)["exchange"] and P2.exchanged == 0 and prod.all_deleted()
    assert _cflash.work_stream(prod) is None
    # a table that fails: __dlpack__ instead (its error, if any, is the producer's own)
    P3 = exchange_producer(fail=True)
    prod = P3(k, k.shape)
    out = cflash.attn_dense(q, prod, k)
    assert P3.exchanged == 0 and prod.all_deleted() and prod.capsule is not None
    check(out, None, lambda rnd: reference.dense(q, k, k, rnd=rnd), "float32")


def test_exchange_table_device_tensor(rng):
    """A device tensor's table gives its framework's current stream (work_stream); exported
    through the table only when the call runs on that stream (stream_owner), else __dlpack__
    with the stream argument, and the table's export is released."""
    q = randn(rng, (1, 5, 2, 8)).astype(np.float32)
    P = exchange_producer(stream=0x1234)
    prod = P(q, q.shape, device=(2, 0))
    assert _cflash.work_stream(prod) == (2, 0x1234)
    if _cflash.HAVE_CUDA:
        d = _cflash.describe(prod)  # no stream owner: __dlpack__
        assert not d["exchange"] and P.exchanged == 1 and prod.all_deleted()
    else:
        with pytest.raises(NotImplementedError, match="q: a CUDA tensor: CUDA backend not built"):
            _cflash.attn_dense(prod, q, q, np.empty_like(q), None, stream=0x1234, stream_owner=P)
        assert prod.all_deleted()


def test_torch_exchange_table(rng):
    """torch >= 2.10 tensors go through torch's exchange table (CPU tensors always; CUDA tensors
    when the call runs on torch's current stream: test_gpu.py)."""
    torch = require("torch")
    if not hasattr(torch.Tensor, "__dlpack_c_exchange_api__"):
        pytest.skip(f"torch {torch.__version__} has no DLPack exchange table")
    q = torch.from_numpy(randn(rng, (1, 6, 2, 8)).astype(np.float32))
    # a tensor that requires grad takes __dlpack__, which refuses it (cflash has no backward)
    with pytest.raises(BufferError, match="require"):
        cflash.attn_dense(q.clone().requires_grad_(), q, q)
    # a subclass (nn.Parameter) takes __dlpack__; its values are the same
    assert not _cflash.describe(torch.nn.Parameter(q, requires_grad=False))["exchange"]
    # what the table cannot export takes __dlpack__ and gets torch's own error
    with pytest.raises(BufferError, match="strided"):
        cflash.attn_dense(q.to_sparse(), q, q)
    d = _cflash.describe(q.transpose(1, 2))
    assert d["exchange"] and d["shape"] == (1, 2, 6, 8) and d["strides"] == (96, 8, 16, 1)
    assert _cflash.work_stream(q) == (1, None)
    out = cflash.attn_dense(q, q, q, causal=True)
    qn = q.numpy()
    check(out.numpy(), None, lambda rnd: reference.dense(qn, qn, qn, causal=True, rnd=rnd), "float32")


def test_torch_cuda_tensors():
    torch = require("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (this machine has none)")
    q = torch.randn(1, 4, 2, 8, device="cuda")
    if not _cflash.HAVE_CUDA:
        with pytest.raises(NotImplementedError, match="CUDA backend not built"):
            cflash.attn_dense(q, q, q)
        return
    # fp32 has no CUDA kernel (the GPU tests of every feature: tests/test_cuda.c, test_gpu.py)
    with pytest.raises(NotImplementedError, match="float16 or bfloat16"):
        cflash.attn_dense(q, q, q)
    h = q.half()
    out = cflash.attn_dense(h, h, h, causal=True)
    assert out.device == h.device and out.dtype == h.dtype
    ref = cflash.attn_dense(h.cpu().float(), h.cpu().float(), h.cpu().float(), causal=True)
    assert (out.cpu().float() - ref).abs().max().item() < 2e-3
