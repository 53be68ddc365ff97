"""cflash.attn_dense against the fp64 reference over NumPy, torch and JAX inputs: every option,
strided and offset views, zero-length axes, every kernel, thread-count independence."""

import numpy as np
import pytest

import cflash
import reference
from helpers import FRAMEWORK_DTYPES, FRAMEWORK_IDS, check, make, randn, require, to_np

B, HQ, HK, D = 2, 4, 2, 16

# name -> (Lq, Lk, Dv, cflash options, reference options); tensors in options are built per test
CONFIGS = {
    "full": (9, 13, D, {}, {}),
    "causal_br": (7, 12, D, dict(causal=True), dict(causal=True)),
    "causal_tl_window": (12, 7, D, dict(causal=True, align="top_left", window=(3, 0)),
                         dict(causal=True, align="top_left", window=(3, 0))),
    "window": (10, 10, D, dict(window=(2, 1)), dict(window=(2, 1))),
    "lq_gt_lk_causal": (9, 4, D, dict(causal=True), dict(causal=True)),
    "scale_softcap": (6, 9, D, dict(softmax_scale=0.7, softcap=2.5), dict(scale=0.7, softcap=2.5)),
    "alibi_sinks": (8, 11, D, dict(alibi="Hq", sinks=True), dict(alibi="Hq", sinks=True)),
    "alibi_batch": (5, 9, D, dict(alibi="B,Hq", causal=True), dict(alibi="B,Hq", causal=True)),
    "mask_bias": (7, 10, D, dict(mask=(B, 1, 7, 10), bias=(1, HQ, 1, 10)),
                  dict(mask=True, bias=True)),
    "mask_hk": (6, 8, D, dict(mask=(1, HK, 6, 1)), dict(mask=True)),
    "dv": (5, 7, 8, dict(causal=True), dict(causal=True)),
    "v_is_k": (5, 7, None, {}, {}),
}


def build(rng, fw, dtype, name):
    """Inputs of a config: tensors for cflash, fp64 arrays and options for the reference."""
    Lq, Lk, Dv, opts, ropts = CONFIGS[name]
    opts, ropts = dict(opts), dict(ropts)
    q, k = randn(rng, (B, Lq, HQ, D), dtype), randn(rng, (B, Lk, HK, D), dtype)
    v = randn(rng, (B, Lk, HK, Dv), dtype) if Dv else None
    args = [make(q, fw, dtype), make(k, fw, dtype), make(v, fw, dtype) if Dv else None]
    if "alibi" in opts:
        shape = (HQ,) if opts["alibi"] == "Hq" else (B, HQ)
        slopes = rng.uniform(0.05, 0.5, shape).astype(np.float32)
        opts["alibi_slopes"], ropts["alibi"] = make(slopes, fw, "float32"), slopes.astype(np.float64)
        del opts["alibi"]
    if opts.pop("sinks", None):
        sinks = rng.standard_normal(HQ).astype(np.float32)
        opts["sinks"], ropts["sinks"] = make(sinks, fw, "float32"), sinks.astype(np.float64)
    if "mask" in opts:
        m = rng.random(opts["mask"]) < 0.7
        opts["mask"], ropts["mask"] = make(m, fw, "bool"), m
    if "bias" in opts:
        bias = randn(rng, opts["bias"], dtype)
        opts["bias"], ropts["bias"] = make(bias, fw, dtype), bias
    return args, (q, k, v), opts, ropts


@pytest.mark.parametrize("fw,dtype", FRAMEWORK_DTYPES, ids=FRAMEWORK_IDS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_dense(rng, fw, dtype, name):
    require(fw)
    args, (q, k, v), opts, ropts = build(rng, fw, dtype, name)
    out, lse = cflash.attn_dense(*args, return_lse=True, **opts)
    assert type(out).__module__.partition(".")[0] in ({"jax": ("jax", "jaxlib")}.get(fw, (fw,)))
    assert str(out.dtype).endswith(dtype) and str(lse.dtype).endswith("float32")
    check(out, lse, lambda rnd: reference.dense(q, k, v, rnd=rnd, **ropts), dtype)


@pytest.mark.parametrize("fw,dtype", FRAMEWORK_DTYPES, ids=FRAMEWORK_IDS)
def test_out_dtype_float32_and_out_argument(rng, fw, dtype):
    """out_dtype=float32 allocates fp32; out= writes the caller's tensor and returns it."""
    require(fw)
    q, k, v = (randn(rng, (1, L, 2, 8), dtype) for L in (5, 6, 6))
    tq, tk, tv = (make(x, fw, dtype) for x in (q, k, v))
    ref, _ = reference.dense(q, k, v, causal=True)
    out = cflash.attn_dense(tq, tk, tv, causal=True, out_dtype="float32")
    assert str(out.dtype).endswith("float32")
    assert np.abs(to_np(out) - ref).max() < (1e-5 if dtype == "float32" else 2e-2)
    if fw == "jax":
        return  # JAX arrays are immutable: out= is refused (test_errors)
    buf = make(np.zeros((1, 5, 2, 8)), fw, dtype)
    res = cflash.attn_dense(tq, tk, tv, causal=True, out=buf)
    assert res is buf
    check(buf, None, lambda rnd: reference.dense(q, k, v, causal=True, rnd=rnd), dtype)


def test_bhsd_strided_torch(rng):
    """[B, H, L, D] storage passed as transpose(1, 2) views, output too: no copies."""
    torch = require("torch")
    q, k, v = randn(rng, (2, 4, 9, 16)), randn(rng, (2, 2, 11, 16)), randn(rng, (2, 2, 11, 8))
    tq, tk, tv = (torch.from_numpy(x).float().transpose(1, 2) for x in (q, k, v))
    assert not tq.is_contiguous()
    out_bhsd = torch.empty(2, 4, 9, 8)
    res, lse = cflash.attn_dense(tq, tk, tv, causal=True, out=out_bhsd.transpose(1, 2), return_lse=True)
    check(res, lse, lambda rnd: reference.dense(*(x.transpose(0, 2, 1, 3) for x in (q, k, v)), causal=True,
                                                rnd=rnd), "float32")
    assert res.data_ptr() == out_bhsd.data_ptr()
    ref, _ = reference.dense(*(x.transpose(0, 2, 1, 3) for x in (q, k, v)), causal=True)
    assert np.abs(out_bhsd.double().numpy() - ref.transpose(0, 2, 1, 3)).max() < 1e-5


@pytest.mark.parametrize("fw", ["numpy", "torch"])
def test_non_contiguous_views(rng, fw):
    """Head-dim slices of wider tensors, every other token, negative strides on an input."""
    require(fw)
    big_q, big_k = randn(rng, (2, 14, 3, 24)), randn(rng, (2, 10, 3, 20))
    big_v = randn(rng, (2, 10, 3, 12))
    q, k, v = big_q[:, ::2, :, 4:20], big_k[:, :, :, 2:18], big_v[:, ::-1, :, :8]
    tq, tk, tv = (make(x, fw, "float32") for x in (big_q, big_k, big_v))
    vq, vk, vv = tq[:, ::2, :, 4:20], tk[:, :, :, 2:18], (tv[:, ::-1, :, :8] if fw == "numpy" else tv.flip(1)[..., :8])
    out, lse = cflash.attn_dense(vq, vk, vv, return_lse=True, window=(3, 2))
    check(out, lse, lambda rnd: reference.dense(q, k, np.ascontiguousarray(v), window=(3, 2), rnd=rnd), "float32")


def test_numpy_slice_view_offset(rng):
    """A view starting inside its buffer (the DLPack data pointer / byte_offset is honoured),
    output into an offset view of a larger buffer, whose other elements stay untouched."""
    base = randn(rng, (3, 6, 2, 8)).astype(np.float32)
    q = base[1:, 1:]              # starts (6 + 1) * 2 * 8 elements into the buffer
    k = base[1:]
    v = base[:2]
    store = np.full((3, 6, 2, 8), 7.5, np.float32)
    out = store[1:, 1:]
    res = cflash.attn_dense(q, k, v, out=out)
    assert res is out
    check(out, None, lambda rnd: reference.dense(q, k, v, rnd=rnd), "float32")
    assert (store[0] == 7.5).all() and (store[:, 0] == 7.5).all()


@pytest.mark.parametrize("fw", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("shape", [(2, 0, 5), (2, 5, 0), (0, 4, 4)], ids=["Lq=0", "Lk=0", "B=0"])
def test_zero_length(rng, fw, shape):
    """Lq = 0 or B = 0: empty outputs; Lk = 0: rows of zeros with lse -inf."""
    require(fw)
    B_, Lq, Lk = shape
    q, k, v = randn(rng, (B_, Lq, 2, 8)), randn(rng, (B_, Lk, 1, 8)), randn(rng, (B_, Lk, 1, 4))
    out, lse = cflash.attn_dense(*(make(x, fw, "float32") for x in (q, k, v)), return_lse=True)
    assert tuple(out.shape) == (B_, Lq, 2, 4) and tuple(lse.shape) == (B_, 2, Lq)
    assert (to_np(out) == 0).all() and np.isneginf(to_np(lse)).all()


@pytest.mark.parametrize("kernel", cflash.kernels())
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_kernel(rng, kernel, dtype):
    """Each kernel this machine runs, forced by name."""
    torch = require("torch")
    q, k, v = randn(rng, (1, 33, 4, 24), dtype), randn(rng, (1, 70, 2, 24), dtype), randn(rng, (1, 70, 2, 24), dtype)
    t = [torch.from_numpy(x).to(getattr(torch, dtype)) for x in (q, k, v)]
    out, lse = cflash.attn_dense(*t, causal=True, kernel=kernel, return_lse=True)
    check(out, lse, lambda rnd: reference.dense(q, k, v, causal=True, rnd=rnd), dtype)


def test_num_threads_independent(rng):
    q, k, v = randn(rng, (2, 64, 4, 32)), randn(rng, (2, 80, 4, 32)), randn(rng, (2, 80, 4, 32))
    q, k, v = (x.astype(np.float32) for x in (q, k, v))
    a = cflash.attn_dense(q, k, v, causal=True, num_threads=1)
    b = cflash.attn_dense(q, k, v, causal=True, num_threads=2)
    assert np.array_equal(a, b)


def test_mla_value_view_of_key(rng):
    """V := K[..., :Dv] as a view of k (same data, fewer columns)."""
    torch = require("torch")
    q, k = randn(rng, (1, 6, 4, 24)), randn(rng, (1, 9, 1, 24))
    tk = torch.from_numpy(k).float()
    out = cflash.attn_dense(torch.from_numpy(q).float(), tk, tk[..., :16], causal=True)
    check(out, None, lambda rnd: reference.dense(q, k, k[..., :16], causal=True, rnd=rnd), "float32")


def test_module_queries():
    assert "auto" in cflash.kernels() and "ref" in cflash.kernels()
    assert cflash.kernel_auto() in cflash.kernels()
    assert cflash.default_num_threads() >= 1
    assert cflash.__version__.count(".") == 2
