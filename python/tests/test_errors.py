"""Misuse: every bad input raises its exact exception type with a message naming the argument,
and nothing is written (outputs are poisoned first and must come back unchanged). Also the
status -> exception mapping and garbage passed straight to the extension (never a crash)."""

import numpy as np
import pytest

import cflash
from cflash import _cflash
from helpers import make, randn, require

POISON = 7.25
B, LQ, LK, HQ, HK, D = 2, 5, 6, 4, 2, 8


class FakeDevice:
    """A DLPack object on another device; __dlpack__ must not be called for it."""

    def __init__(self, device_type):
        self.device_type = device_type
        self.shape, self.dtype = (B, LQ, HQ, D), "float32"

    def __dlpack_device__(self):
        return (self.device_type, 0)

    def __dlpack__(self, **kwargs):
        raise AssertionError("__dlpack__ called on a device tensor")


def as_strided(a, shape, strides):
    """A view of a with element strides (writable)."""
    return np.lib.stride_tricks.as_strided(a, shape=shape, strides=[s * a.itemsize for s in strides])


def readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def misaligned(shape):
    n = int(np.prod(shape))
    return np.frombuffer(bytearray(4 * n + 4), np.float32, count=n, offset=2).reshape(shape)


# name -> (function of the valid arguments returning the bad ones, exception, message pattern)
DENSE_CASES = {
    "q_int32": (lambda a: a.update(q=a["q"].astype(np.int32)), TypeError, "q: dtype"),
    "q_float64": (lambda a: a.update(q=a["q"].astype(np.float64)), TypeError, "q: dtype float64"),
    "k_other_dtype": (lambda a: a.update(k=a["k"].astype(np.float16)), TypeError, "k: dtype"),
    "q_list": (lambda a: a.update(q=a["q"].tolist()), TypeError, "q:"),
    "q_none": (lambda a: a.update(q=None), TypeError, "q:"),
    "k_str": (lambda a: a.update(k="k"), TypeError, "k:"),
    "v_int": (lambda a: a.update(v=3), TypeError, "v:"),
    "mask_list": (lambda a: a.update(mask=[[True]]), TypeError, "mask:"),
    "mask_float": (lambda a: a.update(mask=np.ones((1, 1, 1, LK), np.float32)), TypeError, "mask: dtype"),
    "mask_shape": (lambda a: a.update(mask=np.ones((1, 3, 1, LK), bool)), ValueError, "mask"),
    "mask_layout": (lambda a: a.update(mask=np.ones((1, 1, 1, LK), bool), mask_layout="diag"), ValueError, "mask_layout"),
    "mask_keyside_dense_call": (lambda a: a.update(mask=np.ones((LK, 1), bool)), ValueError, "mask"),
    "bias_int": (lambda a: a.update(bias=np.ones((1, 1, 1, LK), np.int32)), TypeError, "bias: dtype"),
    "alibi_str": (lambda a: a.update(alibi_slopes="slopes"), TypeError, "alibi_slopes"),
    "alibi_f16": (lambda a: a.update(alibi_slopes=np.ones(HQ, np.float16)), TypeError, "alibi_slopes: dtype"),
    "alibi_shape": (lambda a: a.update(alibi_slopes=np.ones(HQ + 1, np.float32)), ValueError, "alibi_slopes"),
    "sinks_shape": (lambda a: a.update(sinks=np.ones((HQ, 1), np.float32)), ValueError, "sinks"),
    "q_ndim": (lambda a: a.update(q=a["q"][0]), ValueError, "q: must have 4"),
    "q_5d": (lambda a: a.update(q=a["q"][None]), ValueError, "q: must have 4"),
    "gqa_ratio": (lambda a: a.update(k=np.ascontiguousarray(np.repeat(a["k"], 3, 2)[:, :, :3]),
                                     v=np.ascontiguousarray(np.repeat(a["v"], 3, 2)[:, :, :3])), ValueError, "Hq"),
    "k_head_dim": (lambda a: a.update(k=np.ascontiguousarray(a["k"][..., :4])), ValueError, "k:"),
    "v_batch": (lambda a: a.update(v=a["v"][:1]), ValueError, "v:"),
    "q_last_stride": (lambda a: a.update(q=as_strided(np.repeat(a["q"], 2, -1), (B, LQ, HQ, D), (LQ * HQ * 2 * D, HQ * 2 * D, 2 * D, 2))),
                      ValueError, "q: the head-dim"),
    "window_left": (lambda a: a.update(window=(-2, 0)), ValueError, "window_left"),
    "window_type": (lambda a: a.update(window=5), TypeError, "window"),
    "softcap": (lambda a: a.update(softcap=-1.0), ValueError, "softcap"),
    "scale_inf": (lambda a: a.update(softmax_scale=float("inf")), ValueError, "scale"),
    "num_threads": (lambda a: a.update(num_threads=-1), ValueError, "num_threads"),
    "kernel_name": (lambda a: a.update(kernel="fastest"), ValueError, "kernel"),
    "kernel_number": (lambda a: a.update(kernel=99), ValueError, "kernel"),
    "align": (lambda a: a.update(align="middle"), ValueError, "align"),
    "out_shape": (lambda a: a.update(out=np.full((B, LQ, HQ, D + 1), POISON, np.float32)), ValueError, "out:"),
    "out_dtype": (lambda a: a.update(out=np.full((B, LQ, HQ, D), POISON, np.float16)), TypeError, "out: dtype"),
    "out_readonly": (lambda a: a.update(out=readonly(a["out"])), ValueError, "out: the tensor is read-only"),
    "out_overlap": (lambda a: a.update(out=as_strided(np.full(HQ * D, POISON, np.float32), (B, LQ, HQ, D), (0, 0, D, 1))), ValueError, "out:"),
    "out_misaligned": (lambda a: a.update(out=misaligned((B, LQ, HQ, D))), ValueError, "out: data is not aligned"),
    "lse_readonly": (lambda a: a.update(lse=readonly(a["lse"])), ValueError, "lse: the tensor is read-only"),
    "lse_dtype": (lambda a: a.update(lse=np.full((B, HQ, LQ), POISON, np.float16)), TypeError, "lse: dtype"),
    "lse_shape": (lambda a: a.update(lse=np.full((B, LQ, HQ), POISON, np.float32)), ValueError, "lse:"),
    "v_vulkan": (lambda a: a.update(v=FakeDevice(7)), NotImplementedError, "v: DLPack device type 7"),
}
if not _cflash.HAVE_CUDA:  # a CUDA build exports CUDA tensors (its routing: tests/test_cuda.c)
    DENSE_CASES["q_cuda"] = (lambda a: a.update(q=FakeDevice(2)), NotImplementedError, "q: .*CUDA backend not built")
    DENSE_CASES["k_cuda_managed"] = (lambda a: a.update(k=FakeDevice(13)), NotImplementedError, "k: .*CUDA backend not built")


def valid(rng):
    f = lambda x: x.astype(np.float32)
    return dict(q=f(randn(rng, (B, LQ, HQ, D))), k=f(randn(rng, (B, LK, HK, D))), v=f(randn(rng, (B, LK, HK, D))),
                out=np.full((B, LQ, HQ, D), POISON, np.float32), lse=np.full((B, HQ, LQ), POISON, np.float32))


def poisoned(x):
    return x is None or not isinstance(x, np.ndarray) or (x.view(x.dtype) == POISON).all()


@pytest.mark.parametrize("name", list(DENSE_CASES))
def test_dense_bad_input(rng, name):
    args = valid(rng)
    out, lse = cflash.attn_dense(args["q"], args["k"], args["v"], out=args["out"], lse=args["lse"])
    assert not poisoned(out)  # the valid call writes
    args = valid(rng)
    change, exc, pattern = DENSE_CASES[name]
    change(args)
    if isinstance(args["out"], np.ndarray) and args["out"].flags.writeable:
        args["out"][...] = POISON
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(exc, match=pattern) as info:
        cflash.attn_dense(q, k, v, **args)
    assert type(info.value) is exc
    assert poisoned(args["out"]) and poisoned(args["lse"]), "an output was written"


def test_jax_out_is_refused(rng):
    require("jax")
    args = valid(rng)
    with pytest.raises(ValueError, match="out: JAX arrays are immutable"):
        cflash.attn_dense(make(args["q"], "jax", "float32"), args["k"], args["v"],
                          out=make(args["out"], "jax", "float32"))


def test_forced_kernel_unavailable(rng):
    missing = [_cflash.kernel_name(i) for i in range(_cflash.KERNEL_COUNT) if not _cflash.kernel_available(i)]
    if not missing:
        pytest.skip("every kernel runs on this CPU: no unavailable kernel to force")
    args = valid(rng)
    with pytest.raises(NotImplementedError, match="kernel"):
        cflash.attn_dense(args["q"], args["k"], args["v"], out=args["out"], kernel=missing[0])
    assert poisoned(args["out"])


def test_cflash_kernel_environment(rng, monkeypatch):
    args = valid(rng)
    monkeypatch.setenv("CFLASH_KERNEL", "warp-drive")
    with pytest.raises(ValueError, match="CFLASH_KERNEL"):
        cflash.attn_dense(args["q"], args["k"], args["v"], out=args["out"])
    assert poisoned(args["out"])
    monkeypatch.setenv("CFLASH_KERNEL", "ref")
    assert cflash.kernel_auto() == "ref"
    cflash.attn_dense(args["q"], args["k"], args["v"], out=args["out"])
    assert not poisoned(args["out"])


VARLEN_CASES = {
    "cu_start": (dict(cu_q=[1, 3, 5]), ValueError, "cu_seqlens_q: must start at 0"),
    "cu_decreasing": (dict(cu_k=[0, 5, 4, 6][:3] + [6], cu_q=[0, 3, 2, 5]), ValueError, "cu_seqlens_q: must be non-decreasing"),
    "cu_last": (dict(cu_k=[0, 3, 5]), ValueError, "cu_seqlens_k: last entry"),
    "cu_count": (dict(cu_k=[0, 6]), ValueError, "cu_seqlens_k"),
    "cu_float": (dict(cu_q=np.array([0, 2, 5], np.float32)), TypeError, "cu_seqlens_q: dtype"),
    "cu_float_list": (dict(cu_q=[0.0, 2.5, 5.0]), TypeError, "cu_seqlens_q"),
    "cu_int64": (dict(cu_q=np.array([0, 2, 5], np.int64)), TypeError, "cu_seqlens_q: dtype"),
    "hint": (dict(max_q=2), ValueError, "max_seqlen_q"),
    "mask_5d": (dict(mask=np.ones((1, 1, 1, 1, 1), bool)), ValueError, "mask: must have 4"),
    "mask_key_side_len": (dict(mask=np.ones((5, 1), bool)), ValueError, "mask"),
    "bias_query_side_short": (dict(bias=np.ones((5, 1, 2), np.float32)), ValueError, "bias"),
}


@pytest.mark.parametrize("name", list(VARLEN_CASES))
def test_varlen_bad_input(rng, name):
    f = lambda x: x.astype(np.float32)
    q, k = f(randn(rng, (5, 2, 8))), f(randn(rng, (6, 2, 8)))
    args = dict(cu_q=[0, 2, 5], cu_k=[0, 4, 6], max_q=None, mask=None, bias=None)
    change, exc, pattern = VARLEN_CASES[name]
    args.update(change)
    out, lse = np.full((5, 2, 8), POISON, np.float32), np.full((2, 5), POISON, np.float32)
    with pytest.raises(exc, match=pattern) as info:
        cflash.attn_varlen(q, k, k, args["cu_q"], args["cu_k"], args["max_q"], mask=args["mask"],
                           bias=args["bias"], out=out, lse=lse)
    assert type(info.value) is exc
    assert poisoned(out) and poisoned(lse)


def test_status_to_exception():
    e = _cflash.exception_for_status
    assert e(_cflash.STATUS_OK) is None
    assert e(_cflash.STATUS_INVALID_ARGUMENT, "q: must have 4 dimensions") is ValueError
    assert e(_cflash.STATUS_INVALID_ARGUMENT, "q: dtype must be float32") is TypeError
    assert e(_cflash.STATUS_UNSUPPORTED) is NotImplementedError
    assert e(_cflash.STATUS_OUT_OF_MEMORY) is MemoryError
    assert e(_cflash.STATUS_DEVICE_ERROR) is RuntimeError


GARBAGE = [None, 1, 2.5, "x", b"y", [], [1, 2], {}, object(), np.float32(1), np.zeros(0), np.ones((2, 2))]


@pytest.mark.parametrize("fn,nargs", [("attn_dense", 5), ("attn_varlen", 9), ("attn_range", 6),
                                      ("attn_kvcache", 13), ("merge", 6), ("describe", 1), ("empty", 2)])
def test_extension_never_crashes(fn, nargs):
    """Garbage straight into the extension's functions: exceptions, never a crash."""
    f = getattr(_cflash, fn)
    for i, g in enumerate(GARBAGE):
        args = [GARBAGE[(i + j) % len(GARBAGE)] for j in range(nargs)]
        with pytest.raises((TypeError, ValueError, NotImplementedError, OverflowError)):
            f(*args)
    with pytest.raises(TypeError):
        f()
    if fn.startswith("attn"):
        with pytest.raises(TypeError):
            f(*([np.ones(1, np.float32)] * nargs), no_such_option=1)
    with pytest.raises(TypeError):
        _cflash.RangePlan(None, None, None, 1, 1)
