"""The torch SDPA patch (cflash.sdpa, docs/compat_sdpa.md): install/uninstall, served calls
against the fp64 reference and torch's math backend (stats() proves cflash served them), and
every fall-through case giving the original op's exact result or exception."""

import numpy as np
import pytest

import reference
from helpers import check, make, randn, to_np

torch = pytest.importorskip("torch", reason="torch is not installed (scripts/setup.sh installs it)")
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from cflash import sdpa  # noqa: E402

ORIGINAL = F.scaled_dot_product_attention
DTYPES = ["float32", "float16", "bfloat16"]
# served output against torch's math backend (the fp64 reference applies SPEC.md's rule)
MATH_TOL = {"float32": 1e-5, "float16": 5e-3, "bfloat16": 3e-2}


@pytest.fixture
def patched():
    """The patch with both gates open (min_seq=1), fresh stats; removed afterwards."""
    sdpa.uninstall()
    assert sdpa.install(min_seq=1)
    sdpa.reset_stats()
    yield
    assert sdpa.uninstall()
    assert F.scaled_dot_product_attention is ORIGINAL


def served_only(n=1):
    counts = {key: n for key, n in sdpa.stats().items() if n}
    assert counts == {"served": n}, f"expected {n} served call(s), got {counts} ({sdpa.last_error()!r})"


def fell_through(reason, n=1):
    counts = {key: n for key, n in sdpa.stats().items() if n}
    assert counts == {reason: n}, f"expected {n} fall-through(s) for {reason!r}, got {counts}"


def tensor(rng, shape, dtype, scale=1.0):
    return make(randn(rng, shape, dtype, scale), "torch", dtype)


def qkv(rng, dtype, B=2, Hq=4, Hk=None, Lq=19, Lk=29, D=16, Dv=None):
    Hk, Dv = Hk or Hq, Dv or D
    return (tensor(rng, (B, Hq, Lq, D), dtype), tensor(rng, (B, Hk, Lk, D), dtype),
            tensor(rng, (B, Hk, Lk, Dv), dtype))


def reference_fn(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """rnd -> (out [B, Lq, Hq, Dv], lse): the fp64 reference of torch's SDPA semantics."""
    qn, kn, vn = (to_np(t).transpose(0, 2, 1, 3) for t in (q, k, v))
    mask = bias = None
    if attn_mask is not None:
        m = to_np(attn_mask)
        m = m.reshape((1,) * (4 - m.ndim) + m.shape)  # dense layout [B|1, Hv, Lq|1, Lk|1]
        mask, bias = (m, None) if attn_mask.dtype == torch.bool else (None, m)
    return lambda rnd: reference.dense(qn, kn, vn, causal=is_causal, align="top_left",
                                       mask=mask, bias=bias, scale=scale, rnd=rnd)


def key_padding(rng, B, Lk):
    keep = np.ones((B, 1, 1, Lk), bool)
    keep[0, ..., Lk // 2:] = False
    return torch.from_numpy(keep)


def random_mask(rng, shape, empty_row=None):
    keep = rng.random(shape) < 0.7
    if empty_row is not None:
        keep[..., empty_row, :] = False  # a row with no key: 0, as torch's CPU kernels give
    return torch.from_numpy(keep)


def additive(rng, shape, dtype, empty_row=None):
    bias = randn(rng, shape, "float32")
    bias[rng.random(shape) < 0.2] = -np.inf
    if empty_row is not None:
        bias[..., empty_row, :] = -np.inf
    return make(bias, "torch", dtype)


def noncontiguous(rng, dtype):
    """q stored [B, Lq, Hq, D] (flash layout), k a slice of a longer buffer, v shared by the
    batch (stride 0), the mask expanded (stride 0)."""
    q = tensor(rng, (2, 23, 4, 16), dtype).transpose(1, 2)
    k = tensor(rng, (2, 4, 40, 16), dtype)[:, :, 3:34]
    v = tensor(rng, (1, 4, 31, 16), dtype).expand(2, -1, -1, -1)
    mask = random_mask(rng, (1, 1, 23, 31)).expand(2, 4, -1, -1)
    return (q, k, v), dict(attn_mask=mask)


# name -> (rng, dtype) -> (q, k, v), keyword arguments of the call
SERVED = {
    "plain": lambda rng, dt: (qkv(rng, dt), {}),
    "causal_Lq<Lk": lambda rng, dt: (qkv(rng, dt, Lq=13, Lk=41), dict(is_causal=True)),
    "causal_Lq>Lk": lambda rng, dt: (qkv(rng, dt, Lq=41, Lk=13), dict(is_causal=True)),
    "causal_square": lambda rng, dt: (qkv(rng, dt, Lq=33, Lk=33), dict(is_causal=True)),
    "bool_mask_LS": lambda rng, dt: (qkv(rng, dt), dict(attn_mask=random_mask(rng, (19, 29), 3))),
    "bool_key_padding": lambda rng, dt: (qkv(rng, dt), dict(attn_mask=key_padding(rng, 2, 29))),
    "bool_mask_HLS": lambda rng, dt: (qkv(rng, dt), dict(attn_mask=random_mask(rng, (4, 19, 29)))),
    "bool_mask_BHL1": lambda rng, dt: (qkv(rng, dt), dict(attn_mask=random_mask(rng, (2, 1, 19, 1), 0))),
    "additive_BHLS": lambda rng, dt: (qkv(rng, dt), dict(attn_mask=additive(rng, (2, 4, 19, 29), dt, 5))),
    "additive_fp32_1H1S": lambda rng, dt: (qkv(rng, dt), dict(attn_mask=additive(rng, (1, 4, 1, 29), "float32"))),
    "scale": lambda rng, dt: (qkv(rng, dt), dict(scale=0.3)),
    "negative_scale": lambda rng, dt: (qkv(rng, dt), dict(scale=-0.2, is_causal=True)),
    "gqa": lambda rng, dt: (qkv(rng, dt, Hq=6, Hk=2), dict(enable_gqa=True, is_causal=True)),
    "mqa_broadcast": lambda rng, dt: (qkv(rng, dt, Hq=4, Hk=1), {}),
    "Dv!=D": lambda rng, dt: (qkv(rng, dt, D=16, Dv=24), dict(attn_mask=key_padding(rng, 2, 29))),
    "decode_Lq=1": lambda rng, dt: (qkv(rng, dt, Lq=1, Lk=50), dict(is_causal=True)),
    "noncontiguous": noncontiguous,
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(SERVED))
def test_served(patched, rng, case, dtype):
    (q, k, v), kw = SERVED[case](rng, dtype)
    out = F.scaled_dot_product_attention(q, k, v, **kw)
    served_only()
    B, Hq, Lq = q.shape[:3]
    assert out.shape == (B, Hq, Lq, v.shape[3]) and out.dtype == q.dtype and out.is_contiguous()
    check(out.transpose(1, 2), None, reference_fn(q, k, v, **kw), dtype)
    with sdpa_kernel(SDPBackend.MATH):
        want = ORIGINAL(q, k, v, **kw)
    tol = MATH_TOL[dtype]
    torch.testing.assert_close(out, want, atol=tol, rtol=tol)


def test_install_uninstall():
    sdpa.uninstall()
    assert F.scaled_dot_product_attention is ORIGINAL and not sdpa.is_installed()
    assert sdpa.install() is True
    assert sdpa.install() is False  # idempotent
    assert F.scaled_dot_product_attention is sdpa.scaled_dot_product_attention and sdpa.is_installed()
    assert torch.nn.functional.scaled_dot_product_attention is sdpa.scaled_dot_product_attention
    assert sdpa.uninstall() is True
    assert sdpa.uninstall() is False
    assert F.scaled_dot_product_attention is ORIGINAL and not sdpa.is_installed()


def test_uninstall_leaves_a_later_patch(rng):
    sdpa.uninstall()
    assert sdpa.install(min_seq=1)
    ours = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda *a, **kw: ours(*a, **kw)  # someone patches over ours
    try:
        assert sdpa.uninstall() is False and sdpa.is_installed()
    finally:
        F.scaled_dot_product_attention = ours
    assert sdpa.uninstall() is True and F.scaled_dot_product_attention is ORIGINAL


def test_stale_reference_falls_through(rng):
    sdpa.uninstall()
    sdpa.install(min_seq=1)
    stale = F.scaled_dot_product_attention
    sdpa.uninstall()
    sdpa.reset_stats()
    q, k, v = qkv(rng, "float32")
    assert torch.equal(stale(q, k, v), ORIGINAL(q, k, v))
    assert not any(sdpa.stats().values())


def test_kill_switch(monkeypatch):
    sdpa.uninstall()
    monkeypatch.setenv("CFLASH_SDPA", "off")
    assert sdpa.install() is False
    assert F.scaled_dot_product_attention is ORIGINAL and not sdpa.is_installed()


def same_as_original(*args, **kw):
    """The patched call gives the original's exact result, or raises its exception."""
    torch.manual_seed(0)  # dropout draws the same mask in both calls
    try:
        want = ORIGINAL(*args, **kw)
    except Exception as e:
        torch.manual_seed(0)
        with pytest.raises(type(e)) as got:
            F.scaled_dot_product_attention(*args, **kw)
        assert str(got.value) == str(e)
        return None
    torch.manual_seed(0)
    got = F.scaled_dot_product_attention(*args, **kw)
    torch.testing.assert_close(got, want, atol=0, rtol=0, equal_nan=True)
    return got


class Subclass(torch.Tensor):
    pass


def mask_of(shape, dtype=torch.bool):
    return lambda rng: (qkv(rng, "float32"), dict(attn_mask=torch.ones(shape, dtype=dtype)))


def changed(fn, **kw):
    """Inputs of qkv(rng, "float32", **kw) passed through fn(q, k, v) -> (q, k, v)."""
    return lambda rng: (fn(*qkv(rng, "float32", **kw)), {})


# name -> (the stats() reason, (rng) -> ((q, k, v), keyword arguments))
FALL_THROUGH = {
    "dropout": ("dropout", lambda rng: (qkv(rng, "float32"), dict(dropout_p=0.5))),
    "causal_with_mask": ("causal_mask", lambda rng: (qkv(rng, "float32"), dict(
        is_causal=True, attn_mask=random_mask(rng, (19, 29))))),
    "scale_0": ("scale", lambda rng: (qkv(rng, "float32"), dict(scale=0.0))),
    "scale_tensor": ("scale", lambda rng: (qkv(rng, "float32"), dict(scale=torch.tensor(0.5)))),
    "3d": ("shape", changed(lambda q, k, v: (q[0], k[0], v[0]))),
    "5d": ("shape", changed(lambda q, k, v: (q[None], k[None], v[None]))),
    "heads_without_gqa": ("shape", lambda rng: (qkv(rng, "float32", Hq=4, Hk=2), {})),
    "gqa_not_dividing": ("shape", lambda rng: (qkv(rng, "float32", Hq=3, Hk=2), dict(enable_gqa=True))),
    "batch_broadcast": ("shape", changed(lambda q, k, v: (q, k[:1], v[:1]))),
    "Lk=0": ("shape", lambda rng: (qkv(rng, "float32", Lk=0), {})),
    "D_stride": ("shape", changed(lambda q, k, v: (q.transpose(2, 3), k, v), Lq=16, Lk=16)),
    "float64": ("dtype", lambda rng: (qkv(rng, "float64"), {})),
    "mixed_dtypes": ("dtype", changed(lambda q, k, v: (q, k.half(), v))),
    "meta_device": ("device", changed(lambda q, k, v: (q.to("meta"), k.to("meta"), v.to("meta")))),
    "mask_1d": ("mask", mask_of((29,))),
    "mask_5d": ("mask", mask_of((1, 1, 1, 19, 29))),
    "mask_heads": ("mask", mask_of((1, 2, 19, 29))),
    "mask_uint8": ("mask", mask_of((19, 29), torch.uint8)),
    "mask_fp16_for_fp32": ("mask", mask_of((19, 29), torch.float16)),
    "subclass": ("tensor_type", changed(lambda q, k, v: tuple(t.as_subclass(Subclass) for t in (q, k, v)))),
}


@pytest.mark.parametrize("case", list(FALL_THROUGH))
def test_falls_through(patched, rng, case):
    reason, build = FALL_THROUGH[case]
    (q, k, v), kw = build(rng)
    same_as_original(q, k, v, **kw)
    fell_through(reason)


def test_causal_with_mask_raises_like_math_backend(patched, rng):
    q, k, v = qkv(rng, "float32")
    mask = random_mask(rng, (19, 29))
    with sdpa_kernel(SDPBackend.MATH):
        with pytest.raises(RuntimeError, match="attn_mask"):
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)
    fell_through("sdpa_kernel")


def test_requires_grad(patched, rng):
    q, k, v = qkv(rng, "float32")
    q.requires_grad_(True)
    out = same_as_original(q, k, v)
    assert out.grad_fn is not None
    fell_through("grad")
    sdpa.reset_stats()
    with torch.no_grad():
        F.scaled_dot_product_attention(q, k, v)
    served_only()


def test_additive_mask_requires_grad(patched, rng):
    q, k, v = qkv(rng, "float32")
    same_as_original(q, k, v, attn_mask=additive(rng, (19, 29), "float32").requires_grad_(True))
    fell_through("grad")


def test_sdpa_kernel_context(patched, rng):
    q, k, v = qkv(rng, "float32")
    with sdpa_kernel(SDPBackend.MATH):
        same_as_original(q, k, v)
    fell_through("sdpa_kernel")
    sdpa.reset_stats()
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):  # no CPU kernel: torch's own error
        same_as_original(q, k, v)
    fell_through("sdpa_kernel")
    sdpa.reset_stats()
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
        F.scaled_dot_product_attention(q, k, v)
    served_only()


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
@pytest.mark.filterwarnings("ignore:There is a performance drop")  # torch's vmap of its own op
def test_modes(patched, rng):
    q, k, v = qkv(rng, "float32")
    traced = torch.jit.trace(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), (q, k, v),
                             check_trace=False)
    assert "scaled_dot_product_attention" in str(traced.graph)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert same_as_original(q, k, v).dtype == torch.bfloat16
    batched = torch.vmap(lambda q: F.scaled_dot_product_attention(q, k, v))(q[None])  # q is 4-D inside
    assert torch.equal(batched[0], ORIGINAL(q, k, v))
    fell_through("mode", 3)
    sdpa.reset_stats()
    with torch.device("cpu"):  # a torch-function mode that changes nothing here: served
        F.scaled_dot_product_attention(q, k, v)
    served_only()


def test_fx_symbolic_trace(patched, rng):
    q, k, v = qkv(rng, "float32")
    gm = torch.fx.symbolic_trace(lambda q, k, v: F.scaled_dot_product_attention(q, k, v))
    fell_through("tensor_type")
    assert torch.equal(gm(q, k, v), ORIGINAL(q, k, v))  # the graph holds torch's op


def test_torch_compile(patched, rng):
    q, k, v = qkv(rng, "float32")
    compiled = torch.compile(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                             backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), ORIGINAL(q, k, v, is_causal=True))
    assert not any(sdpa.stats().values())  # traced to torch's op, never counted


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_jit_script(patched, rng):
    q, k, v = qkv(rng, "float32")
    scripted = torch.jit.script(attention)
    assert torch.equal(scripted(q, k, v), ORIGINAL(q, k, v))


def attention(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def test_multihead_attention_served(patched, rng):
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).train()  # eval() takes a fused path
    x = tensor(rng, (2, 21, 32), "float32")
    with torch.no_grad():
        out = mha(x, x, x, need_weights=False)[0]
        served_only()
        sdpa.uninstall()
        want = mha(x, x, x, need_weights=False)[0]
        sdpa.install(min_seq=1)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_error_falls_back(patched, rng, monkeypatch):
    def broken(*args, **kw):
        raise RuntimeError("cflash failed")
    monkeypatch.setattr(sdpa, "attn_dense", broken)
    q, k, v = qkv(rng, "float32")
    same_as_original(q, k, v)
    fell_through("error")
    assert str(sdpa.last_error()) == "cflash failed"


def test_sequence_gate(rng):
    sdpa.uninstall()
    sdpa.install(min_seq=40, min_gb=float("inf"))
    sdpa.reset_stats()
    try:
        q, k, v = qkv(rng, "float32", Lq=39, Lk=39)
        same_as_original(q, k, v)
        fell_through("gate")
        sdpa.reset_stats()
        F.scaled_dot_product_attention(*qkv(rng, "float32", Lq=1, Lk=40))  # max(Lq, Lk) counts
        served_only()
    finally:
        sdpa.uninstall()


def test_memory_gate(rng):
    B, H, L = 2, 4, 24
    score_gb = B * H * L * L * 4 / 2 ** 30
    sdpa.uninstall()
    for min_gb, want in ((score_gb, "served"), (score_gb * 1.01, "gate")):
        sdpa.install(min_seq=10 ** 9, min_gb=min_gb)
        sdpa.reset_stats()
        F.scaled_dot_product_attention(*qkv(rng, "float32", B=B, Hq=H, Lq=L, Lk=L))
        assert sdpa.stats()[want] == 1
        sdpa.uninstall()


def test_environment_gates(rng, monkeypatch):
    sdpa.uninstall()
    monkeypatch.setenv("CFLASH_SDPA_MIN_SEQ", "30")
    monkeypatch.setenv("CFLASH_SDPA_MIN_GB", "inf")
    assert sdpa.install()
    sdpa.reset_stats()
    try:
        F.scaled_dot_product_attention(*qkv(rng, "float32", Lq=29, Lk=29))
        fell_through("gate")
        F.scaled_dot_product_attention(*qkv(rng, "float32", Lq=30, Lk=30))
        assert sdpa.stats()["served"] == 1
        assert sdpa.install(min_seq=1) is False  # installed: gates unchanged until uninstall()
        F.scaled_dot_product_attention(*qkv(rng, "float32", Lq=29, Lk=29))
        assert sdpa.stats()["gate"] == 2
    finally:
        sdpa.uninstall()
    monkeypatch.setenv("CFLASH_SDPA_MIN_SEQ", "many")
    with pytest.raises(ValueError, match="CFLASH_SDPA_MIN_SEQ"):
        sdpa.install()
    assert not sdpa.is_installed() and F.scaled_dot_product_attention is ORIGINAL


def test_default_gate(rng, monkeypatch):
    monkeypatch.delenv("CFLASH_SDPA_MIN_SEQ", raising=False)
    monkeypatch.delenv("CFLASH_SDPA_MIN_GB", raising=False)
    sdpa.uninstall()
    sdpa.install()
    sdpa.reset_stats()
    try:
        F.scaled_dot_product_attention(*qkv(rng, "float32", Lq=1, Lk=sdpa.DEFAULT_MIN_SEQ - 1))
        fell_through("gate")
        F.scaled_dot_product_attention(*qkv(rng, "float32", B=1, Hq=1, Lq=1, Lk=sdpa.DEFAULT_MIN_SEQ))
        assert sdpa.stats()["served"] == 1
    finally:
        sdpa.uninstall()
