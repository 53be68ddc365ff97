"""cflash.dmattn.flash_dmattn_varlen_func against the fp64 reference: each mask / bias layout
(key-side, query-side, dense) detected from its shape, mask only / bias only / both, causal on
and off, head variants 1 / Hk / Hq, softcap, the LSE of return_attn_probs, an explicit torch fp64
softmax, shapes that fit no layout, and bad inputs."""

import numpy as np
import pytest

import reference
from cflash.dmattn import flash_dmattn_varlen_func
from helpers import FRAMEWORK_DTYPES, FRAMEWORK_IDS, check, make, randn, require, to_np

HQ, HK, D = 4, 2, 16
LENS_Q = [2, 0, 5, 6, 1]  # sequence 3: Lq > Lk (causal rows 0-1 see nothing)
LENS_K = [6, 3, 0, 4, 4]  # sequence 2: no keys


def cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


CU_Q, CU_K = cu(LENS_Q), cu(LENS_K)
TQ, TK, NB = int(CU_Q[-1]), int(CU_K[-1]), len(LENS_Q)
MAXQ, MAXK = max(LENS_Q), max(LENS_K)
HV = {"key_side": HK, "query_side": 1, "dense": HQ}  # a different head-variant count per layout


def source(rng, layout, is_mask, dtype="float32"):
    hv = HV[layout]
    shape = {"key_side": (TK, hv), "query_side": (TQ, hv, MAXK), "dense": (NB, hv, MAXQ, MAXK)}[layout]
    return rng.random(shape) < 0.65 if is_mask else randn(rng, shape, dtype)


def qkv(rng, dtype, tq=TQ, tk=TK):
    return randn(rng, (tq, HQ, D), dtype), randn(rng, (tk, HK, D), dtype), randn(rng, (tk, HK, D), dtype)


CASES = [(layout, what, causal) for layout in HV for what in ("mask", "bias", "both") for causal in (False, True)]


@pytest.mark.parametrize("layout,what,causal", CASES, ids=[f"{l}-{w}-causal={c}" for l, w, c in CASES])
def test_layouts(rng, layout, what, causal):
    torch = require("torch")
    q, k, v = qkv(rng, "float32")
    mask = source(rng, layout, True) if what in ("mask", "both") else None
    bias = source(rng, layout, False) if what in ("bias", "both") else None
    t = lambda x: None if x is None else torch.from_numpy(x) if x.dtype == bool else torch.from_numpy(x).float()
    out = flash_dmattn_varlen_func(t(q), t(k), t(v), t(mask), t(bias), torch.from_numpy(CU_Q),
                                   torch.from_numpy(CU_K), MAXQ, MAXK, is_causal=causal)
    check(out, None, lambda rnd: reference.varlen(q, k, v, CU_Q, CU_K, causal=causal, mask=mask, mask_layout=layout,
                                                  bias=bias, bias_layout=layout, rnd=rnd), "float32")


@pytest.mark.parametrize("fw,dtype", FRAMEWORK_DTYPES, ids=FRAMEWORK_IDS)
def test_frameworks_mixed_layouts(rng, fw, dtype):
    """Key-side mask with a query-side bias (the seed's mixed case), causal, softcap and scale,
    over every framework and dtype; the LSE of return_attn_probs."""
    require(fw)
    q, k, v = qkv(rng, dtype)
    mask, bias = source(rng, "key_side", True), source(rng, "query_side", False, dtype)
    out, lse, probs = flash_dmattn_varlen_func(
        make(q, fw, dtype), make(k, fw, dtype), make(v, fw, dtype), make(mask, fw, "bool"), make(bias, fw, dtype),
        make(CU_Q, fw, "int32"), make(CU_K, fw, "int32"), MAXQ, MAXK, softmax_scale=0.3, is_causal=True,
        softcap=4.0, return_attn_probs=True)
    assert probs is None
    ref = lambda rnd: reference.varlen(q, k, v, CU_Q, CU_K, causal=True, mask=mask, mask_layout="key_side",
                                       bias=bias, bias_layout="query_side", scale=0.3, softcap=4.0, rnd=rnd)
    ref_lse = ref(lambda x: x)[1]
    empty = np.isneginf(ref_lse)
    assert empty.any() and np.isposinf(to_np(lse)[empty]).all()  # flash-attn convention: +inf
    check(out, np.where(empty, -np.inf, to_np(lse)), ref, dtype)


def test_matches_torch_fp64_softmax(rng):
    """One case against torch's own math: per sequence, scores in fp64, key-side mask and bias
    broadcast over queries, bottom-right causal, softmax by torch.softmax."""
    torch = require("torch")
    q, k, v = (torch.from_numpy(x) for x in qkv(rng, "float32"))
    mask = torch.from_numpy(rng.random((TK, 1)) < 0.7)
    bias = torch.from_numpy(rng.standard_normal((TK, HQ)))
    out = flash_dmattn_varlen_func(q.float(), k.float(), v.float(), mask, bias.float(), torch.from_numpy(CU_Q),
                                   torch.from_numpy(CU_K), MAXQ, MAXK, is_causal=True)
    ref = torch.zeros(TQ, HQ, D, dtype=torch.float64)
    for b in range(NB):
        (q0, q1), (k0, k1) = CU_Q[b:b + 2], CU_K[b:b + 2]
        lq, lk = q1 - q0, k1 - k0
        kk = k[k0:k1].repeat_interleave(HQ // HK, dim=1)
        vv = v[k0:k1].repeat_interleave(HQ // HK, dim=1)
        s = torch.einsum("ihd,jhd->hij", q[q0:q1], kk) / D ** 0.5 + bias[k0:k1].T[:, None, :]
        keep = mask[k0:k1, 0][None, None, :] & torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)
        s = s.masked_fill(~keep, float("-inf"))
        p = torch.nan_to_num(torch.softmax(s, dim=-1))  # rows with no key -> 0
        ref[q0:q1] = torch.einsum("hij,jhd->ihd", p, vv)
    assert torch.allclose(out.double(), ref, atol=2e-6)


def test_two_dim_is_key_side_even_when_tq_equals_tk(rng):
    """A 2-D mask/bias is [total_k, Hv] also when total_q == total_k (SPEC.md section 5); the
    per-query reading would give another result."""
    torch = require("torch")
    cu_q, cu_k = cu([3, 5]), cu([5, 3])
    q, k, v = qkv(rng, "float32", tq=8, tk=8)
    bias = randn(rng, (8, HQ))
    t = [torch.from_numpy(x).float() for x in (q, k, v, bias)]
    out = flash_dmattn_varlen_func(t[0], t[1], t[2], None, t[3], torch.from_numpy(cu_q), torch.from_numpy(cu_k), 5, 5)
    key_side = reference.varlen(q, k, v, cu_q, cu_k, bias=bias, bias_layout="key_side")[0]
    per_query = reference.varlen(q, k, v, cu_q, cu_k, bias=np.repeat(bias[:, :, None], 5, axis=2),
                                 bias_layout="query_side")[0]
    check(out, None, lambda rnd: (key_side, None), "float32")
    assert np.abs(key_side - per_query).max() > 1e-3


def test_defaults_and_ignored_arguments(rng):
    """is_causal / softcap / deterministic None: off; deterministic has no effect; without
    return_attn_probs the output alone comes back."""
    torch = require("torch")
    q, k, v = (torch.from_numpy(x).half() for x in qkv(rng, "float16"))
    args = (q, k, v, None, None, torch.from_numpy(CU_Q), torch.from_numpy(CU_K), MAXQ, MAXK)
    a = flash_dmattn_varlen_func(*args)
    b = flash_dmattn_varlen_func(*args, softmax_scale=None, is_causal=False, softcap=0.0, deterministic=True,
                                 return_attn_probs=False)
    assert isinstance(a, torch.Tensor) and torch.equal(a, b)
    assert (a[CU_Q[2]:CU_Q[3]] == 0).all()  # a sequence without keys: rows of zeros


def test_shapes_that_fit_no_layout(rng):
    torch = require("torch")
    q, k, v = (torch.from_numpy(x).float() for x in qkv(rng, "float32"))
    cq, ck = torch.from_numpy(CU_Q), torch.from_numpy(CU_K)
    call = lambda mask=None, bias=None: flash_dmattn_varlen_func(q, k, v, mask, bias, cq, ck, MAXQ, MAXK)
    with pytest.raises(ValueError, match="^attn_mask: .*fits no layout"):
        call(mask=torch.ones(TQ, HK, dtype=torch.bool))            # 2-D per-query: not a layout (TQ != TK)
    with pytest.raises(ValueError, match="^attn_bias: .*fits no layout"):
        call(bias=torch.zeros(TK, HK, MAXK))                       # 3-D over keys: not a layout
    with pytest.raises(ValueError, match="^attn_mask: .*fits no layout"):
        call(mask=torch.ones(TK, 3, dtype=torch.bool))             # Hv not in {1, Hk, Hq}
    with pytest.raises(ValueError, match="^attn_bias: .*fits no layout"):
        call(bias=torch.zeros(TK))
    with pytest.raises(ValueError, match="^attn_mask: .*fits no layout"):
        call(mask=torch.ones(NB, 3, MAXQ, MAXK, dtype=torch.bool))
    with pytest.raises(ValueError, match="^attn_bias: "):          # query-side narrower than a sequence
        call(bias=torch.zeros(TQ, HQ, MAXK - 1))
    with pytest.raises(ValueError, match="^attn_mask: "):          # dense with a wrong batch
        call(mask=torch.ones(NB + 1, 1, 1, MAXK, dtype=torch.bool))


def test_bad_inputs_raise_and_change_nothing(rng):
    torch = require("torch")
    q, k, v = (torch.from_numpy(x).float() for x in qkv(rng, "float32"))
    mask, bias = torch.ones(TK, 1, dtype=torch.bool), torch.zeros(TK, 1)
    keep = [x.clone() for x in (q, k, v, mask, bias)]
    cq, ck = torch.from_numpy(CU_Q), torch.from_numpy(CU_K)
    f = flash_dmattn_varlen_func
    with pytest.raises(TypeError, match="^key: "):
        f(q, k.double(), v, mask, bias, cq, ck, MAXQ, MAXK)
    with pytest.raises(ValueError, match="^query: "):
        f(q[None], k, v, mask, bias, cq, ck, MAXQ, MAXK)
    with pytest.raises(TypeError, match="^attn_mask: "):
        f(q, k, v, mask.float(), bias, cq, ck, MAXQ, MAXK)       # float mask
    with pytest.raises(TypeError, match="^attn_bias: "):
        f(q, k, v, mask, bias.int(), cq, ck, MAXQ, MAXK)
    with pytest.raises(TypeError, match="cu_seqlens_q"):
        f(q, k, v, mask, bias, cq.long(), ck, MAXQ, MAXK)
    with pytest.raises(ValueError, match="cu_seqlens_k"):
        f(q, k, v, mask, bias, cq, ck.flip(0), MAXQ, MAXK)
    with pytest.raises(ValueError, match="max_seqlen_k"):
        f(q, k, v, mask, bias, cq, ck, MAXQ, MAXK - 1)
    with pytest.raises(ValueError):                              # Hq % Hk != 0
        f(q[:, :3], k, v, None, None, cq, ck, MAXQ, MAXK)
    with pytest.raises(ValueError, match="softcap"):
        f(q, k, v, mask, bias, cq, ck, MAXQ, MAXK, softcap=-1.0)
    with pytest.raises(NotImplementedError, match="block_table"):
        f(q, k, v, mask, bias, cq, ck, MAXQ, MAXK, block_table=torch.zeros(NB, 1, dtype=torch.int32))
    assert all(torch.equal(a, b) for a, b in zip((q, k, v, mask, bias), keep))
