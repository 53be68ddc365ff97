"""cflash.flash_attn, the flash-attn 2.x drop-in: the seven functions against the fp64 reference
(reference.py) and against torch's own math for the same call (scaled_dot_product_attention with an
explicit mask, or an fp64 einsum softmax), called positionally in flash-attn's order; flash-attn's
signatures and defaults, return values (softmax_lse +inf for rows that see no key), its mask rules,
GQA, window, softcap, ALiBi, paged varlen, the KV-cache path, and errors that write nothing."""

import inspect

import numpy as np
import pytest

import reference
from cflash.flash_attn import (flash_attn_func, flash_attn_kvpacked_func, flash_attn_qkvpacked_func,
                               flash_attn_varlen_func, flash_attn_varlen_kvpacked_func,
                               flash_attn_varlen_qkvpacked_func, flash_attn_with_kvcache)
from helpers import assert_close, check, make, randn, require, round_to, to_np

torch = pytest.importorskip("torch", reason="torch is not installed (scripts/setup.sh installs torch==2.13.0)")
F = torch.nn.functional

HQ, HK, D, DV = 4, 2, 16, 8
INF = float("inf")
TORCH_DTYPES = ["float32", "float16", "bfloat16"]
DENSE_CASES = [("numpy", "float32"), ("numpy", "float16")] + [("torch", d) for d in TORCH_DTYPES]


def flipped(lse):
    """flash-attn's LSE (+inf for rows that see no key) in the reference's convention (-inf)."""
    lse = to_np(lse).copy()
    lse[np.isposinf(lse)] = -INF
    return lse


def check_fa(out, lse, ref_fn, dtype):
    """check() for flash-attn outputs: the +inf rows must be exactly the reference's -inf rows."""
    if lse is not None:
        assert not np.isneginf(to_np(lse)).any(), "softmax_lse: -inf (flash-attn writes +inf)"
        assert lse.dtype in (torch.float32, np.float32)
        lse = flipped(lse)
    check(out, lse, ref_fn, dtype)


def visible(Lq, Lk, causal=False, window=(-1, -1)):
    """[Lq, Lk] bool: flash-attn's bottom-right causal / window mask, built with torch."""
    i, j = torch.arange(Lq)[:, None], torch.arange(Lk)[None, :]
    c = i + Lk - Lq
    left, right = window
    if causal:
        right = 0
    vis = torch.ones(Lq, Lk, dtype=torch.bool)
    if left >= 0:
        vis &= j >= c - left
    if right >= 0:
        vis &= j <= c + right
    return vis


def torch_math(q, k, v, *, scale=None, causal=False, window=(-1, -1), softcap=0.0, alibi=None):
    """The same attention written with torch fp64 ops: q [B, Lq, Hq, D], k [B, Lk, Hk, D],
    v [B, Lk, Hk, Dv] -> out [B, Lq, Hq, Dv], lse [B, Hq, Lq] (+inf for rows without keys)."""
    q, k, v = (torch.as_tensor(x).double() for x in (q, k, v))
    (B, Lq, Hq, Dh), (Lk, Hk) = q.shape, k.shape[1:3]
    k, v = k.repeat_interleave(Hq // Hk, dim=2), v.repeat_interleave(Hq // Hk, dim=2)
    s = torch.einsum("bihd,bjhd->bhij", q, k) * (Dh ** -0.5 if scale is None else scale)
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if alibi is not None:
        a = torch.as_tensor(alibi).double()
        a = a.expand(B, Hq) if a.dim() == 1 else a
        dist = (torch.arange(Lq)[:, None] + Lk - Lq - torch.arange(Lk)[None, :]).abs()
        s = s - a[:, :, None, None] * dist
    s = s.masked_fill(~visible(Lq, Lk, causal, window), -INF)
    lse = torch.logsumexp(s, dim=-1)
    out = torch.einsum("bhij,bjhd->bihd", torch.softmax(s, dim=-1).nan_to_num(0.0), v)
    return out, lse.masked_fill(lse == -INF, INF)


def sdpa(q, k, v, *, causal=False, window=(-1, -1), alibi=None):
    """torch.nn.functional.scaled_dot_product_attention (fp64) with an explicit mask for flash-attn's
    bottom-right causal / window (bool, True = keep) or ALiBi (additive float mask)."""
    q, k, v = (torch.as_tensor(x).double().transpose(1, 2) for x in (q, k, v))
    Lq, Lk = q.shape[2], k.shape[2]
    mask = visible(Lq, Lk, causal, window)
    if alibi is not None:
        dist = (torch.arange(Lq)[:, None] + Lk - Lq - torch.arange(Lk)[None, :]).abs()
        bias = -torch.as_tensor(alibi).double()[..., None, None] * dist
        mask = bias.masked_fill(~mask, -INF)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True).transpose(1, 2)


def dense_inputs(rng, dtype, B=2, Lq=5, Lk=9, Hq=HQ, Hk=HK, Dv=DV):
    return randn(rng, (B, Lq, Hq, D), dtype), randn(rng, (B, Lk, Hk, D), dtype), randn(rng, (B, Lk, Hk, Dv), dtype)


# ---- the interface itself ----

FLASH_ATTN_2_8_3 = {  # parameters and defaults of flash_attn/flash_attn_interface.py, v2.8.3
    flash_attn_func: "q k v dropout_p=0.0 softmax_scale=None causal=False window_size=(-1, -1) softcap=0.0 "
                     "alibi_slopes=None deterministic=False return_attn_probs=False",
    flash_attn_kvpacked_func: "q kv dropout_p=0.0 softmax_scale=None causal=False window_size=(-1, -1) "
                              "softcap=0.0 alibi_slopes=None deterministic=False return_attn_probs=False",
    flash_attn_qkvpacked_func: "qkv dropout_p=0.0 softmax_scale=None causal=False window_size=(-1, -1) "
                               "softcap=0.0 alibi_slopes=None deterministic=False return_attn_probs=False",
    flash_attn_varlen_func: "q k v cu_seqlens_q cu_seqlens_k max_seqlen_q max_seqlen_k dropout_p=0.0 "
                            "softmax_scale=None causal=False window_size=(-1, -1) softcap=0.0 alibi_slopes=None "
                            "deterministic=False return_attn_probs=False block_table=None",
    flash_attn_varlen_kvpacked_func: "q kv cu_seqlens_q cu_seqlens_k max_seqlen_q max_seqlen_k dropout_p=0.0 "
                                     "softmax_scale=None causal=False window_size=(-1, -1) softcap=0.0 "
                                     "alibi_slopes=None deterministic=False return_attn_probs=False",
    flash_attn_varlen_qkvpacked_func: "qkv cu_seqlens max_seqlen dropout_p=0.0 softmax_scale=None causal=False "
                                      "window_size=(-1, -1) softcap=0.0 alibi_slopes=None deterministic=False "
                                      "return_attn_probs=False",
    flash_attn_with_kvcache: "q k_cache v_cache k=None v=None rotary_cos=None rotary_sin=None cache_seqlens=None "
                             "cache_batch_idx=None cache_leftpad=None block_table=None softmax_scale=None "
                             "causal=False window_size=(-1, -1) softcap=0.0 rotary_interleaved=True "
                             "alibi_slopes=None num_splits=0 return_softmax_lse=False",
}


@pytest.mark.parametrize("fn", list(FLASH_ATTN_2_8_3), ids=lambda f: f.__name__)
def test_signature_is_flash_attn_2_8_3(fn):
    params = inspect.signature(fn).parameters.values()
    got = " ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}" for p in params)
    assert got == FLASH_ATTN_2_8_3[fn]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)


def test_package_exports_and_version():
    import cflash.flash_attn as fa
    import cflash.flash_attn.flash_attn_interface as fai
    assert fa.__version__ == "2.8.3+cflash"
    for fn in FLASH_ATTN_2_8_3:
        assert getattr(fa, fn.__name__) is fn is getattr(fai, fn.__name__)
    assert sorted(fa.__all__) == sorted(f.__name__ for f in FLASH_ATTN_2_8_3)


# ---- dense ----

@pytest.mark.parametrize("fw,dtype", DENSE_CASES, ids=[f"{f}-{d}" for f, d in DENSE_CASES])
@pytest.mark.parametrize("causal", [False, True])
def test_func_positional(rng, fw, dtype, causal):
    """Every argument positionally, in flash-attn's order; GQA; Lq < Lk; Dv != D."""
    q, k, v = dense_inputs(rng, dtype)
    out, lse, S = flash_attn_func(make(q, fw, dtype), make(k, fw, dtype), make(v, fw, dtype), 0.0, None, causal,
                                  (-1, -1), 0.0, None, False, True)
    assert S is None and type(out).__module__.partition(".")[0] == fw
    check_fa(out, lse, lambda rnd: reference.dense(q, k, v, causal=causal, rnd=rnd), dtype)
    plain = flash_attn_func(make(q, fw, dtype), make(k, fw, dtype), make(v, fw, dtype), causal=causal)
    assert np.array_equal(to_np(plain), to_np(out))  # return_attn_probs only adds the LSE


CASES = {  # name -> flash-attn keyword arguments; alibi "h": [Hq], "bh": [B, Hq]
    "full": {},
    "causal": dict(causal=True),
    "window": dict(window_size=(3, 1)),
    "causal_left_window": dict(causal=True, window_size=(2, -1)),
    "scale": dict(softmax_scale=0.3),
    "softcap": dict(softcap=2.0, causal=True),
    "alibi": dict(alibi_slopes="h", causal=True),
    "alibi_batch_window": dict(alibi_slopes="bh", window_size=(4, 0)),
}


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_func_against_reference_and_torch(rng, dtype, case):
    kw = dict(CASES[case])
    B, Lq, Lk = 2, 6, 11
    q, k, v = dense_inputs(rng, dtype, B=B, Lq=Lq, Lk=Lk)
    if kw.get("alibi_slopes"):
        kw["alibi_slopes"] = rng.random((HQ,) if kw["alibi_slopes"] == "h" else (B, HQ)).astype(np.float32)
    t = lambda x: make(x, "torch", dtype)
    out, lse, _ = flash_attn_func(t(q), t(k), t(v), return_attn_probs=True,
                                  **{n: torch.from_numpy(a) if n == "alibi_slopes" else a for n, a in kw.items()})
    opts = dict(scale=kw.get("softmax_scale"), causal=kw.get("causal", False), window=kw.get("window_size", (-1, -1)),
                softcap=kw.get("softcap", 0.0), alibi=kw.get("alibi_slopes"))
    check_fa(out, lse, lambda rnd: reference.dense(q, k, v, rnd=rnd, **opts), dtype)
    m_out, m_lse = torch_math(q, k, v, **opts)
    naive = reference.dense(q, k, v, rnd=lambda x: round_to(x, dtype), **opts)[0]
    assert_close(out, m_out.numpy(), dtype, naive=naive, what="out vs torch math")
    assert torch.allclose(lse.double(), m_lse, rtol=1e-3, atol=1e-3)
    if not opts["softcap"] and opts["scale"] is None:
        s_out = sdpa(q, k, v, causal=opts["causal"], window=opts["window"], alibi=opts["alibi"])
        assert torch.allclose(s_out, m_out, atol=1e-10)  # torch's two paths agree: the mask is right


def test_packed_dense_positional(rng):
    """kvpacked (GQA) and qkvpacked, positionally, against flash_attn_func and the reference."""
    q, k, v = dense_inputs(rng, "float32", Lq=7, Lk=7, Dv=D)
    t = lambda x: torch.from_numpy(x).float()
    kv = torch.stack([t(k), t(v)], dim=2)  # [B, Lk, 2, Hk, D]
    out, lse, S = flash_attn_kvpacked_func(t(q), kv, 0.0, None, True, (-1, -1), 0.0, None, False, True)
    assert S is None
    check_fa(out, lse, lambda rnd: reference.dense(q, k, v, causal=True), "float32")
    assert torch.equal(out, flash_attn_func(t(q), t(k), t(v), causal=True))
    qkv_np = np.stack([q, np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2)], axis=2)  # [B, L, 3, H, D]
    qkv = t(qkv_np)
    out = flash_attn_qkvpacked_func(qkv, 0.0, 0.5, False, (2, 2))
    check_fa(out, None, lambda rnd: reference.dense(*(qkv_np[:, :, i] for i in range(3)), scale=0.5, window=(2, 2)),
             "float32")


def test_empty_rows_lse_pos_inf_and_zero_out(rng):
    """Lq > Lk, causal (bottom-right): the first Lq - Lk rows see no key: out 0, softmax_lse +inf."""
    q, k, v = dense_inputs(rng, "float32", Lq=7, Lk=3)
    t = lambda x: torch.from_numpy(x).float()
    out, lse, _ = flash_attn_func(t(q), t(k), t(v), causal=True, return_attn_probs=True)
    assert torch.isposinf(lse[:, :, :4]).all() and torch.isfinite(lse[:, :, 4:]).all()
    assert (out[:, :4] == 0).all()
    m_out, m_lse = torch_math(q, k, v, causal=True)
    assert torch.equal(torch.isposinf(m_lse), torch.isposinf(lse))
    check_fa(out, lse, lambda rnd: reference.dense(q, k, v, causal=True), "float32")


def test_flash_attn_window_rules(rng):
    """flash-attn drops a window side >= seqlen_k, and bounds an unbounded right side at seqlen_k
    when the left one is set (flash_api.cpp); with Lq > Lk that changes which keys rows see."""
    q, k, v = dense_inputs(rng, "float32", B=1, Lq=8, Lk=2)
    t = lambda x: torch.from_numpy(x).float()
    out = flash_attn_func(t(q), t(k), t(v), window_size=(-1, 3))  # right 3 >= Lk: no window at all
    check_fa(out, None, lambda rnd: reference.dense(q, k, v), "float32")
    out, lse, _ = flash_attn_func(t(q), t(k), t(v), window_size=(0, -1), return_attn_probs=True)
    check_fa(out, lse, lambda rnd: reference.dense(q, k, v, window=(0, 2)), "float32")  # right := Lk
    assert torch.isposinf(lse[0, :, :4]).all() and torch.isfinite(lse[0, :, 4:]).all()


def test_scale_zero_softcap_negative_and_ignored_arguments(rng):
    """softmax_scale=0 is uniform attention (flash-attn multiplies by it); softcap <= 0 is off;
    deterministic changes nothing."""
    q, k, v = dense_inputs(rng, "float32", B=1)
    t = lambda x: torch.from_numpy(x).float()
    out, lse, _ = flash_attn_func(t(q), t(k), t(v), softmax_scale=0.0, return_attn_probs=True)
    uniform = np.repeat(v.mean(axis=1, keepdims=True), HQ // HK, axis=2).repeat(q.shape[1], axis=1)
    assert_close(out, uniform, "float32")
    assert torch.allclose(lse, torch.full_like(lse, np.log(k.shape[1])), atol=1e-6)
    base = flash_attn_func(t(q), t(k), t(v), causal=True)
    assert torch.equal(base, flash_attn_func(t(q), t(k), t(v), causal=True, softcap=-1.0, deterministic=True))


def test_noncontiguous_inputs(rng):
    """q, k, v as [B, H, L, D] storage transposed (no copy needed), and a v whose last axis is
    strided (copied, as flash-attn's maybe_contiguous does)."""
    q, k, v = dense_inputs(rng, "float32", Dv=D)
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).float()
    qt, kt = t(q.transpose(0, 2, 1, 3)).transpose(1, 2), t(k.transpose(0, 2, 1, 3)).transpose(1, 2)
    vt = t(v.transpose(0, 1, 3, 2)).transpose(2, 3)
    assert not qt.is_contiguous() and vt.stride(-1) != 1
    out = flash_attn_func(qt, kt, vt, causal=True)
    check_fa(out, None, lambda rnd: reference.dense(q, k, v, causal=True), "float32")
    out_np = flash_attn_func(q.astype(np.float32), k.astype(np.float32), np.asfortranarray(v.astype(np.float32)),
                             causal=True)
    assert np.array_equal(out_np, out.numpy())


# ---- varlen ----

LENS_Q, LENS_K = [3, 0, 5, 2], [5, 4, 7, 0]  # a sequence without queries, one without keys


def cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_positional(rng, dtype, causal):
    """Positional flash-attn order; the sequence with no keys gives out 0 and softmax_lse +inf."""
    tq, tk = sum(LENS_Q), sum(LENS_K)
    q, k, v = randn(rng, (tq, HQ, D), dtype), randn(rng, (tk, HK, D), dtype), randn(rng, (tk, HK, DV), dtype)
    alibi = rng.random((len(LENS_Q), HQ)).astype(np.float32)
    t = lambda x: make(x, "torch", dtype)
    out, lse, S = flash_attn_varlen_func(t(q), t(k), t(v), torch.from_numpy(cu(LENS_Q)), torch.from_numpy(cu(LENS_K)),
                                         max(LENS_Q), max(LENS_K), 0.0, None, causal, (-1, -1), 0.0,
                                         torch.from_numpy(alibi), False, True, None)
    assert S is None and lse.shape == (HQ, tq)
    assert torch.isposinf(lse[:, 8:]).all() and (out[8:] == 0).all()  # the last sequence has no keys
    check_fa(out, lse, lambda rnd: reference.varlen(q, k, v, cu(LENS_Q), cu(LENS_K), causal=causal, alibi=alibi,
                                                    rnd=rnd), dtype)


def test_varlen_against_torch_per_sequence(rng):
    """Each packed sequence equals torch's math on that sequence alone (window + softcap, GQA)."""
    tq, tk = sum(LENS_Q), sum(LENS_K)
    q, k, v = randn(rng, (tq, HQ, D)), randn(rng, (tk, HK, D)), randn(rng, (tk, HK, DV))
    t = lambda x: torch.from_numpy(x).float()
    out, lse, _ = flash_attn_varlen_func(t(q), t(k), t(v), cu(LENS_Q), cu(LENS_K), max(LENS_Q), max(LENS_K),
                                         window_size=(2, 1), softcap=3.0, return_attn_probs=True)
    cq, ck = cu(LENS_Q), cu(LENS_K)
    for b in range(len(LENS_Q)):
        if LENS_Q[b] == 0:
            continue
        sl, kl = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        m_out, m_lse = torch_math(q[None, sl], k[None, kl], v[None, kl], window=(2, 1), softcap=3.0)
        assert torch.allclose(out[sl].double(), m_out[0], atol=1e-5)
        assert torch.equal(torch.isposinf(lse[:, sl]), torch.isposinf(m_lse[0]))
        fin = torch.isfinite(m_lse[0])
        assert torch.allclose(lse[:, sl][fin].double(), m_lse[0][fin], atol=1e-5)


def test_varlen_packed_positional(rng):
    """varlen kvpacked [Tk, 2, Hk, D] and qkvpacked [T, 3, H, D], positionally."""
    tq, tk = sum(LENS_Q), sum(LENS_K)
    q, k, v = randn(rng, (tq, HQ, D)), randn(rng, (tk, HK, D)), randn(rng, (tk, HK, D))
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).float()
    kv = t(np.stack([k, v], axis=1))
    out, lse, _ = flash_attn_varlen_kvpacked_func(t(q), kv, cu(LENS_Q), cu(LENS_K), max(LENS_Q), max(LENS_K), 0.0,
                                                  None, True, (-1, -1), 0.0, None, False, True)
    check_fa(out, lse, lambda rnd: reference.varlen(q, k, v, cu(LENS_Q), cu(LENS_K), causal=True), "float32")
    lens = [4, 1, 6]
    qkv_np = randn(rng, (sum(lens), 3, HQ, D))
    out = flash_attn_varlen_qkvpacked_func(t(qkv_np), torch.from_numpy(cu(lens)), max(lens), 0.0, None, True)
    check_fa(out, None, lambda rnd: reference.varlen(qkv_np[:, 0], qkv_np[:, 1], qkv_np[:, 2], cu(lens), cu(lens),
                                                     causal=True), "float32")


@pytest.mark.parametrize("page", [3, 16])
@pytest.mark.parametrize("fw,dtype", [("torch", "bfloat16"), ("torch", "float32"), ("numpy", "float32")])
def test_varlen_block_table(rng, page, fw, dtype):
    """Paged varlen: keys of sequence b through block_table[b]; against the reference on the same
    keys packed, with ALiBi [B, Hq], causal and the LSE."""
    B, maxp = len(LENS_Q), max(LENS_K) // page + 1
    npages = B * maxp + 1
    tq, tk = sum(LENS_Q), sum(LENS_K)
    q = randn(rng, (tq, HQ, D), dtype)
    kp, vp = randn(rng, (npages, page, HK, D), dtype), randn(rng, (npages, page, HK, DV), dtype)
    table = rng.permutation(npages)[: B * maxp].reshape(B, maxp).astype(np.int32)
    ck = cu(LENS_K)
    rows = [(table[b][t // page], t % page) for b in range(B) for t in range(LENS_K[b])]
    k = np.stack([kp[p, o] for p, o in rows])
    v = np.stack([vp[p, o] for p, o in rows])
    alibi = rng.random((B, HQ)).astype(np.float32)
    m = lambda x: make(x, fw, dtype)
    out, lse, _ = flash_attn_varlen_func(m(q), m(kp), m(vp), cu(LENS_Q), ck, max(LENS_Q), max(LENS_K), causal=True,
                                         alibi_slopes=alibi, return_attn_probs=True, block_table=make(table, fw, "int32"))
    assert k.shape[0] == tk
    check_fa(out, lse, lambda rnd: reference.varlen(q, k, v, cu(LENS_Q), ck, causal=True, alibi=alibi, rnd=rnd), dtype)


# ---- KV cache ----

def cache_inputs(rng, dtype, B=3, Bc=4, Lmax=12, Lq=2, Lnew=2):
    q = randn(rng, (B, Lq, HQ, D), dtype)
    kc, vc = randn(rng, (Bc, Lmax, HK, D), dtype), randn(rng, (Bc, Lmax, HK, DV), dtype)
    kn, vn = randn(rng, (B, Lnew, HK, D), dtype), randn(rng, (B, Lnew, HK, DV), dtype)
    return q, kc, vc, kn, vn


@pytest.mark.parametrize("fw,dtype", DENSE_CASES, ids=[f"{f}-{d}" for f, d in DENSE_CASES])
def test_kvcache_append_positional(rng, fw, dtype):
    """k, v appended in place at cache_seqlens (a tensor), cache_batch_idx, causal, the LSE;
    every argument positionally in flash-attn's order."""
    q, kc, vc, kn, vn = cache_inputs(rng, dtype)
    seqlens, bidx = np.array([4, 0, 9], np.int32), np.array([2, 0, 3], np.int32)
    tkc, tvc = make(kc, fw, dtype), make(vc, fw, dtype)
    m = lambda x: make(x, fw, dtype)
    out, lse = flash_attn_with_kvcache(m(q), tkc, tvc, m(kn), m(vn), None, None, make(seqlens, fw, "int32"),
                                       make(bidx, fw, "int32"), None, None, None, True, (-1, -1), 0.0, True, None,
                                       0, True)
    ref = reference.kvcache(q, kc, vc, seqlens, kn, vn, batch_idx=bidx, causal=True)
    check_fa(out, lse, lambda rnd: reference.kvcache(q, kc, vc, seqlens, kn, vn, batch_idx=bidx, causal=True,
                                                     rnd=rnd), dtype)
    assert np.array_equal(to_np(tkc), ref[2]) and np.array_equal(to_np(tvc), ref[3])


def test_kvcache_int_seqlens_none_seqlens_and_torch_math(rng):
    """cache_seqlens as an int (no append: the cache is only read), None (the whole cache), and
    the result against torch's math on the visible keys (window, softcap, ALiBi)."""
    q, kc, vc, _, _ = cache_inputs(rng, "float32", Bc=3)
    t = lambda x: torch.from_numpy(x).float()
    tkc, tvc = t(kc), t(vc)
    alibi = rng.random(HQ).astype(np.float32)
    out = flash_attn_with_kvcache(t(q), tkc, tvc, cache_seqlens=7, window_size=(3, 0), softcap=4.0,
                                  alibi_slopes=torch.from_numpy(alibi))
    m_out, _ = torch_math(q, kc[:, :7], vc[:, :7], window=(3, 0), softcap=4.0, alibi=alibi)
    assert torch.allclose(out.double(), m_out, atol=1e-5)
    check_fa(out, None, lambda rnd: reference.kvcache(q, kc, vc, [7] * 3, window=(3, 0), softcap=4.0, alibi=alibi),
             "float32")
    assert torch.equal(tkc, t(kc)) and torch.equal(tvc, t(vc))
    out, lse = flash_attn_with_kvcache(t(q), tkc, tvc, return_softmax_lse=True)
    m_out, m_lse = torch_math(q, kc, vc)
    assert torch.allclose(out.double(), m_out, atol=1e-5) and torch.allclose(lse.double(), m_lse, atol=1e-5)


@pytest.mark.parametrize("page", [1, 5])
def test_kvcache_block_table(rng, page):
    """Paged cache with append straddling pages."""
    B, Lq, Lnew, maxp = 2, 3, 4, 20 // page + 1
    npages = B * maxp + 1
    q = randn(rng, (B, Lq, HQ, D))
    kc, vc = randn(rng, (npages, page, HK, D)), randn(rng, (npages, page, HK, DV))
    kn, vn = randn(rng, (B, Lnew, HK, D)), randn(rng, (B, Lnew, HK, DV))
    table = rng.permutation(npages)[: B * maxp].reshape(B, maxp).astype(np.int32)
    seqlens = np.array([7, 13], np.int32)
    t = lambda x: torch.from_numpy(x).float()
    tkc, tvc = t(kc), t(vc)
    out, lse = flash_attn_with_kvcache(t(q), tkc, tvc, t(kn), t(vn), cache_seqlens=torch.from_numpy(seqlens),
                                       block_table=torch.from_numpy(table), causal=True, return_softmax_lse=True)
    ref = reference.kvcache(q, kc, vc, seqlens, kn, vn, block_table=table, causal=True)
    check_fa(out, lse, lambda rnd: ref, "float32")
    assert np.array_equal(tkc.numpy(), ref[2]) and np.array_equal(tvc.numpy(), ref[3])


@pytest.mark.parametrize("interleaved", [None, True, False], ids=["default", "gptj", "neox"])
@pytest.mark.parametrize("causal", [False, True])
def test_kvcache_rotary(rng, interleaved, causal):
    """Rotary on append; flash-attn's default is rotary_interleaved=True (GPT-J pairs)."""
    q, kc, vc, kn, vn = cache_inputs(rng, "float32")
    seqlens, bidx = np.array([4, 0, 9], np.int32), np.array([2, 0, 3], np.int32)
    rot = 8
    pos = np.arange(16)[:, None] * (1.0 / 100 ** (np.arange(rot // 2) / (rot // 2)))[None]
    cos, sin = np.cos(pos).astype(np.float32), np.sin(pos).astype(np.float32)
    t = lambda x: torch.from_numpy(x).float()
    tkc, tvc = t(kc), t(vc)
    kw = {} if interleaved is None else dict(rotary_interleaved=interleaved)
    out = flash_attn_with_kvcache(t(q), tkc, tvc, t(kn), t(vn), t(cos), t(sin), torch.from_numpy(seqlens),
                                  torch.from_numpy(bidx), causal=causal, **kw)
    ref = reference.kvcache(q, kc, vc, seqlens, kn, vn, batch_idx=bidx, rotary_cos=cos, rotary_sin=sin,
                            interleaved=interleaved is not False, causal=causal)
    check_fa(out, None, lambda rnd: ref, "float32")
    assert np.abs(tkc.double().numpy() - ref[2]).max() < 1e-5


@pytest.mark.parametrize("left", [5, 12, 100])
def test_kvcache_rotary_follows_flash_attn_local_rule(rng, left):
    """flash-attn rotates q per row when "causal or local", after dropping a window side >= the
    cache length (12 here): window (12, -1) or (100, -1) is not local, (5, -1) is."""
    q, kc, vc, kn, vn = cache_inputs(rng, "float32", Lq=3)
    seqlens, bidx = np.array([4, 0, 7], np.int32), np.array([2, 0, 3], np.int32)
    pos = np.arange(16)[:, None] * (1.0 / 10 ** (np.arange(4) / 4))[None]
    cos, sin = np.cos(pos).astype(np.float32), np.sin(pos).astype(np.float32)
    t = lambda x: torch.from_numpy(x).float()
    out = flash_attn_with_kvcache(t(q), t(kc), t(vc), t(kn), t(vn), t(cos), t(sin), torch.from_numpy(seqlens),
                                  torch.from_numpy(bidx), window_size=(left, -1))
    window = (left, 12) if left < 12 else (-1, -1)
    ref = reference.kvcache(q, kc, vc, seqlens, kn, vn, batch_idx=bidx, rotary_cos=cos, rotary_sin=sin,
                            interleaved=True, window=window)
    check_fa(out, None, lambda rnd: ref, "float32")


def test_kvcache_leftpad(rng):
    """cache_leftpad[b]: keys start at that cache position. Equal to the same keys shifted to the
    front of the cache without leftpad; k, v still land at cache_seqlens[b]."""
    q, kc, vc, kn, vn = cache_inputs(rng, "float32", Bc=3)
    seqlens, pad = np.array([6, 3, 9], np.int32), np.array([2, 3, 0], np.int32)
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).float()
    tkc, tvc = t(kc), t(vc)
    out, lse = flash_attn_with_kvcache(t(q), tkc, tvc, t(kn), t(vn), cache_seqlens=torch.from_numpy(seqlens),
                                       cache_leftpad=torch.from_numpy(pad), causal=True, return_softmax_lse=True)
    shifted_k, shifted_v = np.zeros_like(kc), np.zeros_like(vc)
    for b in range(3):
        n = seqlens[b] - pad[b]
        shifted_k[b, :n], shifted_v[b, :n] = kc[b, pad[b]:seqlens[b]], vc[b, pad[b]:seqlens[b]]
    ref = reference.kvcache(q, shifted_k, shifted_v, seqlens - pad, kn, vn, causal=True)
    check_fa(out, lse, lambda rnd: ref, "float32")
    appended = reference.kvcache(q, kc, vc, seqlens, kn, vn)
    assert np.array_equal(tkc.numpy(), appended[2]) and np.array_equal(tvc.numpy(), appended[3])


# ---- errors ----

def test_dropout_and_backward_not_implemented(rng):
    q, k, v = (torch.from_numpy(x).float() for x in dense_inputs(rng, "float32", Lq=4, Lk=4, Hk=HQ, Dv=D))
    cu_ = torch.tensor([0, 4], dtype=torch.int32)
    qkv, kv = torch.stack([q, k, v], 2), torch.stack([k, v], 2)
    calls = [lambda p, r: flash_attn_func(q, k, v, p, return_attn_probs=r),
             lambda p, r: flash_attn_kvpacked_func(q, kv, p, return_attn_probs=r),
             lambda p, r: flash_attn_qkvpacked_func(qkv, p, return_attn_probs=r),
             lambda p, r: flash_attn_varlen_func(q[0], k[0], v[0], cu_, cu_, 4, 4, p, return_attn_probs=r),
             lambda p, r: flash_attn_varlen_kvpacked_func(q[0], kv[0], cu_, cu_, 4, 4, p, return_attn_probs=r),
             lambda p, r: flash_attn_varlen_qkvpacked_func(qkv[0], cu_, 4, p, return_attn_probs=r)]
    for call in calls:
        for probs in (False, True):
            with pytest.raises(NotImplementedError, match="dropout"):
                call(0.1, probs)
        with pytest.raises(ValueError, match="dropout_p"):
            call(-0.5, False)
    qg = q.clone().requires_grad_()
    out = flash_attn_func(qg, k, v, causal=True)  # the forward works under autograd ...
    assert out.requires_grad
    check_fa(out.detach(), None, lambda rnd: reference.dense(*(x.double().numpy() for x in (q, k, v)), causal=True),
             "float32")
    with pytest.raises(NotImplementedError, match="backward"):  # ... the backward does not
        out.sum().backward()
    with torch.no_grad():
        assert not flash_attn_func(qg, k, v).requires_grad


def test_bad_dense_and_varlen_arguments(rng):
    q, k, v = (torch.from_numpy(x).float() for x in dense_inputs(rng, "float32", Lq=4, Lk=4, Dv=D))
    with pytest.raises(ValueError, match="q: must have 4 dimensions"):
        flash_attn_func(q[0], k, v)
    with pytest.raises(ValueError):  # Hq % Hk != 0
        flash_attn_func(q[:, :, :3], k, v)
    with pytest.raises(TypeError):
        flash_attn_func(q.double(), k.double(), v.double())
    with pytest.raises(TypeError, match="window_size"):
        flash_attn_func(q, k, v, window_size=3)
    with pytest.raises(TypeError, match="softmax_scale"):
        flash_attn_func(q, k, v, softmax_scale="big")
    with pytest.raises(ValueError, match="kv: axis -3"):
        flash_attn_kvpacked_func(q, torch.stack([k, v, v], 2))
    qp, kp, vp = q.reshape(-1, HQ, D), k.reshape(-1, HK, D), v.reshape(-1, HK, D)
    with pytest.raises(ValueError, match="cu_seqlens_k"):
        flash_attn_varlen_func(qp, kp, vp, [0, 4, 8], [0, 4, 7], 4, 4)
    with pytest.raises(ValueError, match="max_seqlen_q"):
        flash_attn_varlen_func(qp, kp, vp, [0, 4, 8], [0, 4, 8], 3, 4)
    with pytest.raises(TypeError, match="max_seqlen_k"):
        flash_attn_varlen_func(qp, kp, vp, [0, 4, 8], [0, 4, 8], 4, None)
    with pytest.raises(ValueError, match="max_seqlen_k"):
        flash_attn_varlen_func(qp, kp, vp, [0, 4, 8], [0, 4, 8], 4, -1)
    pages = torch.zeros(4, 4, HK, D)
    for cu_q, cu_k, maxq, table, match in [([0, 4, 8], [0, 4], 4, [[0], [1]], "cu_seqlens_k"),
                                           ([0, 4, 7], [0, 4, 8], 4, [[0], [1]], "cu_seqlens_q"),
                                           ([0, 4, 8], [0, 4, 8], 2, [[0], [1]], "max_seqlen_q"),
                                           ([0, 4, 8], [0, 5, 8], 5, [[0], [1]], "cu_seqlens_k: a sequence is longer")]:
        with pytest.raises(ValueError, match=match):
            flash_attn_varlen_func(qp, pages, pages, cu_q, cu_k, maxq, 5, block_table=table)
    with pytest.raises(TypeError, match="cu_seqlens_q: must be int32"):
        flash_attn_varlen_func(qp, pages, pages, torch.tensor([0, 4, 8]), [0, 4, 8], 4, 4, block_table=[[0], [1]])


def test_bad_kvcache_arguments_leave_caches_unchanged(rng):
    q, kc, vc, kn, vn = cache_inputs(rng, "float32", Bc=3)
    t = lambda x: torch.from_numpy(x).float()
    tkc, tvc, tkn, tvn = t(kc), t(vc), t(kn), t(vn)
    before = tkc.clone(), tvc.clone()
    seqlens = torch.tensor([4, 0, 9], dtype=torch.int32)
    bad = [(ValueError, "v: missing", dict(k=tkn)),
           (ValueError, "k: missing", dict(v=tvn, cache_seqlens=seqlens)),
           (ValueError, "cache_seqlens: required", dict(k=tkn, v=tvn)),
           (ValueError, "cache_seqlens", dict(k=tkn, v=tvn, cache_seqlens=seqlens + 2)),  # 11 + 2 > 12
           (ValueError, "cache_batch_idx", dict(k=tkn, v=tvn, cache_seqlens=seqlens, cache_batch_idx=[0, 0, 1])),
           (TypeError, "k_new", dict(k=tkn.half(), v=tvn, cache_seqlens=seqlens)),
           (ValueError, "cache_leftpad", dict(k=tkn, v=tvn, cache_seqlens=seqlens, cache_leftpad=[0, 13, 0])),
           (ValueError, "rotary", dict(k=tkn, v=tvn, cache_seqlens=seqlens, rotary_cos=torch.ones(4, 12),
                                       rotary_sin=torch.ones(4, 12)))]
    for exc, match, kw in bad:
        with pytest.raises(exc, match=match):
            flash_attn_with_kvcache(t(q), tkc, tvc, **kw)
        assert torch.equal(tkc, before[0]) and torch.equal(tvc, before[1]), match


def test_jax_arrays_in_jax_arrays_out(rng):
    """The drop-in over JAX arrays: JAX out (lse too), the same numbers as NumPy in."""
    jnp = require("jax")
    q, k, v = (randn(rng, (2, 33, 4, 32)).astype(np.float32) for _ in range(3))
    want, want_lse, _ = flash_attn_func(q, k, v, causal=True, window_size=(8, 0), return_attn_probs=True)
    out, lse, _ = flash_attn_func(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), causal=True, window_size=(8, 0),
                                  return_attn_probs=True)
    assert type(out).__module__.startswith(("jax", "jaxlib")) and type(lse).__module__.startswith(("jax", "jaxlib"))
    np.testing.assert_array_equal(np.asarray(out), want)
    np.testing.assert_array_equal(np.asarray(lse), want_lse)
