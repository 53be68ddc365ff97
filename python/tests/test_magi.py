"""cflash.magi against the fp64 reference: MagiAttention's flex_flash_attn_func (every attn_type,
GQA, zero-length and uncovered ranges, lse [Tq, Hq], softcap, sink tokens, ignored tuning
knobs, the plan cache) and LocateAnything's range_attention (segment_offsets, MTP windows),
plus their errors."""

import numpy as np
import pytest

import reference
from cflash import magi
from helpers import FRAMEWORK_DTYPES, FRAMEWORK_IDS, assert_close, check, make, randn, require, to_np

TQ, TK, HQ, HK, D, DV = 21, 24, 4, 2, 16, 8
# (q_range, k_range, attn_type) with every type, a zero-length q range, a zero-length k range
# and rows 19-20 in no slice
SLICES = [((0, 6), (0, 8), 1), ((0, 6), (10, 14), 0), ((6, 12), (8, 16), 2), ((12, 19), (14, 24), 3),
          ((12, 19), (0, 4), 0), ((4, 4), (20, 24), 0), ((6, 12), (5, 5), 1)]
QR = [s[0] for s in SLICES]
KR = [s[1] for s in SLICES]
TYPES = [s[2] for s in SLICES]


def ranges_in(fw, x):
    """Range tensors as the caller's framework holds them (int32 tensors; lists for JAX)."""
    if fw == "torch":
        torch = require("torch")
        return torch.tensor(x, dtype=torch.int32)
    return np.asarray(x, np.int32) if fw == "numpy" else x


def qkv(rng, dtype, hq=HQ, hk=HK, tq=TQ, tk=TK):
    return randn(rng, (tq, hq, D), dtype), randn(rng, (tk, hk, D), dtype), randn(rng, (tk, hk, DV), dtype)


def lse_tq_h(fn):
    """A reference function returning lse [Hq, Tq] -> one returning Magi's [Tq, Hq]."""
    return lambda rnd: (lambda o, l: (o, l.T))(*fn(rnd))


@pytest.mark.parametrize("fw,dtype", FRAMEWORK_DTYPES, ids=FRAMEWORK_IDS)
def test_flex_every_type(rng, fw, dtype):
    """All four attn types in one plan, GQA, Dv != D, zero-length ranges, uncovered rows."""
    require(fw)
    q, k, v = qkv(rng, dtype)
    out, lse = magi.flex_flash_attn_func(make(q, fw, dtype), make(k, fw, dtype), make(v, fw, dtype),
                                         ranges_in(fw, QR), ranges_in(fw, KR), ranges_in(fw, TYPES))
    assert tuple(lse.shape) == (TQ, HQ) and "float32" in str(lse.dtype)
    assert type(out).__module__.partition(".")[0] == type(make(q, fw, dtype)).__module__.partition(".")[0]
    check(out, lse, lse_tq_h(lambda rnd: reference.range_plan(q, k, v, QR, KR, TYPES, rnd=rnd)), dtype)
    assert np.isneginf(to_np(lse)[19:]).all() and (to_np(out)[19:] == 0).all()


def test_flex_lse_layout_is_contiguous_tq_hq(rng):
    torch = require("torch")
    q, k, v = (torch.from_numpy(x).float() for x in qkv(rng, "float32"))
    _, lse = magi.flex_flash_attn_func(q, k, v, ranges_in("torch", QR), ranges_in("torch", KR))
    assert lse.is_contiguous() and lse.shape == (TQ, HQ)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_flex_softcap_scale_and_sink(rng, dtype):
    """softcap, softmax_scale and MagiAttention's "sh" sink tokens [num_sink, Hq], which act as
    one logit log(sum_s exp(sink[s, h])) per head."""
    torch = require("torch")
    q, k, v = qkv(rng, dtype, hq=6, hk=3)
    sink = rng.standard_normal((3, 6)).astype(np.float32)
    t = [torch.from_numpy(x).to(getattr(torch, dtype)) for x in (q, k, v)]
    out, lse = magi.flex_flash_attn_func(*t, QR, KR, TYPES, sink=torch.from_numpy(sink), softcap=5.0,
                                         softmax_scale=0.3)
    z = np.log(np.exp(sink.astype(np.float64)).sum(axis=0))
    check(out, lse, lse_tq_h(lambda rnd: reference.range_plan(q, k, v, QR, KR, TYPES, sinks=z, softcap=5.0,
                                                              scale=0.3, rnd=rnd)), dtype)
    # no sink tokens: no sink
    out0, lse0 = magi.flex_flash_attn_func(*t, QR, KR, TYPES, sink=torch.zeros(0, 6), softcap=5.0, softmax_scale=0.3)
    check(out0, lse0, lse_tq_h(lambda rnd: reference.range_plan(q, k, v, QR, KR, TYPES, softcap=5.0, scale=0.3,
                                                                rnd=rnd)), dtype)


def test_flex_matches_torch_fp64_softmax(rng):
    """One case against torch's own math: a dense visibility matrix built from the ranges with
    torch ops, an explicit fp64 softmax, GQA by repeat_interleave."""
    torch = require("torch")
    q, k, v = (torch.from_numpy(x) for x in qkv(rng, "float32"))
    qr, kr, types = ranges_in("torch", QR), ranges_in("torch", KR), ranges_in("torch", TYPES)
    out, lse = magi.flex_flash_attn_func(q.float(), k.float(), v.float(), qr, kr, types)
    vis = torch.zeros(TQ, TK, dtype=torch.bool)
    for (qs, qe), (ks, ke), t in zip(qr.tolist(), kr.tolist(), types.tolist()):
        i = torch.arange(qe - qs)[:, None]
        j = torch.arange(ke - ks)[None, :]
        cell = torch.ones(qe - qs, ke - ks, dtype=torch.bool)
        if t in (1, 3):
            cell &= j <= i + (ke - ks) - (qe - qs)
        if t in (2, 3):
            cell &= j >= i
        vis[qs:qe, ks:ke] |= cell
    kk, vv = k.repeat_interleave(HQ // HK, dim=1), v.repeat_interleave(HQ // HK, dim=1)
    s = torch.einsum("ihd,jhd->hij", q, kk) / D ** 0.5
    s = s.masked_fill(~vis, float("-inf"))
    ref_lse = torch.logsumexp(s, dim=-1)                      # [Hq, Tq]
    p = torch.nan_to_num(torch.exp(s - ref_lse[..., None]))   # empty rows -> 0
    ref_out = torch.einsum("hij,jhd->ihd", p, vv)
    assert torch.allclose(out.double(), ref_out, atol=2e-6)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse.T))
    fin = torch.isfinite(ref_lse.T)
    assert torch.allclose(lse.double()[fin], ref_lse.T[fin], atol=2e-6)


def test_flex_ignores_tuning_knobs(rng):
    """Kernel-tuning arguments and deterministic leave the result bitwise unchanged; int64 and
    list ranges are accepted like int32 tensors."""
    torch = require("torch")
    q, k, v = (torch.from_numpy(x).to(torch.bfloat16) for x in qkv(rng, "bfloat16"))
    base = magi.flex_flash_attn_func(q, k, v, ranges_in("torch", QR), ranges_in("torch", KR), ranges_in("torch", TYPES))
    knobs = magi.flex_flash_attn_func(
        q, k, v, torch.tensor(QR), torch.tensor(KR), TYPES, deterministic=True, sm_margin=4,
        disable_fwd_atomic_reduction=True, disable_bwd_dkv_atomic_reduction=True, ref_block_size=(64, 64),
        max_seqlen_q=7, auto_range_merge=True, swap_ab=True, pack_gqa=True, cat_gqa=True, sparse_load=True,
        swap_bwd_qk_loop=True, q_block_size=1, k_block_size=1)
    assert torch.equal(base[0], knobs[0]) and torch.equal(base[1], knobs[1])


def test_flex_default_types_full_and_plan_cache(rng):
    """attn_type_map=None is all-full; one plan is built per distinct range contents."""
    magi.clear_plan_cache()
    q, k, v = (x.astype(np.float32) for x in qkv(rng, "float32"))
    qr, kr = [(0, 10), (10, 21)], [(0, 12), (12, 24)]
    out, lse = magi.flex_flash_attn_func(q, k, v, qr, kr)
    check(out, lse, lse_tq_h(lambda rnd: reference.range_plan(q, k, v, qr, kr, rnd=rnd)), "float32")
    magi.flex_flash_attn_func(q, k, v, np.array(qr, np.int32), np.array(kr, np.int64), None)
    assert len(magi._plan_cache) == 1
    magi.flex_flash_attn_func(q, k, v, qr, kr, [1, 1])
    assert len(magi._plan_cache) == 2
    magi.clear_plan_cache()
    assert not magi._plan_cache


def test_flex_errors_leave_inputs_unchanged(rng):
    torch = require("torch")
    q, k, v = (torch.from_numpy(x).float() for x in qkv(rng, "float32"))
    keep = [x.clone() for x in (q, k, v)]
    call = lambda qr, kr, types=None, **kw: magi.flex_flash_attn_func(q, k, v, qr, kr, types, **kw)
    with pytest.raises(ValueError, match="overlap|both|slice"):
        call([(0, 4), (2, 6)], [(0, 4), (3, 5)])                    # cells (2..3, 3) twice
    with pytest.raises(ValueError, match="overlap|both|slice"):
        call([(0, 6), (0, 6)], [(0, 8), (0, 8)], [1, 2])             # causal and inverse causal share the diagonal
    call([(0, 6), (0, 6)], [(0, 8), (8, 9)], [1, 0])                 # adjacent key windows: fine
    with pytest.raises(ValueError, match="q_ranges"):
        call([(0, TQ + 1)], [(0, 4)])
    with pytest.raises(ValueError, match="k_ranges"):
        call([(0, 4)], [(3, 2)])
    with pytest.raises(ValueError, match="attn_type_map"):
        call([(0, 4)], [(0, 4)], [4])
    with pytest.raises(ValueError, match="k_ranges"):
        call([(0, 4), (4, 8)], [(0, 4)])                             # lengths differ
    with pytest.raises(ValueError, match="attn_type_map"):
        call([(0, 4)], [(0, 4)], [0, 1])
    with pytest.raises(ValueError, match="q_ranges"):
        call([0, 4], [(0, 4)])
    with pytest.raises(TypeError, match="q_ranges"):
        call([(0.5, 4)], [(0, 4)])
    with pytest.raises(ValueError, match="k_ranges"):
        call([(0, 4)], None)
    with pytest.raises(NotImplementedError, match="index_attn"):
        magi.flex_flash_attn_func(q, k, v, index_attn_indices=torch.zeros(TQ, HK, 128, dtype=torch.int32))
    with pytest.raises(NotImplementedError, match="max_logits"):
        call(QR, KR, TYPES, return_max_logits=True)
    with pytest.raises(NotImplementedError, match="ssh"):
        call(QR, KR, TYPES, sink=torch.zeros(TQ, 2, HQ), sink_layout="ssh")
    with pytest.raises(ValueError, match="sink"):
        call(QR, KR, TYPES, sink=torch.zeros(2, HQ + 1))
    with pytest.raises(ValueError, match="sink_layout"):
        call(QR, KR, TYPES, sink=torch.zeros(2, HQ), sink_layout="hs")
    with pytest.raises(ValueError, match="q"):
        magi.flex_flash_attn_func(q[None], k, v, QR, KR)
    with pytest.raises(ValueError):                                  # Hq % Hk != 0
        magi.flex_flash_attn_func(q[:, :3], k, v, QR, KR)
    with pytest.raises(TypeError):
        magi.flex_flash_attn_func(q, k.double(), v, QR, KR)
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), keep))


# LocateAnything MTP decode (SPEC.md section 4): kv = q = 10 per sequence, block 3: rows 0-6
# causal over keys 0-6; rows 7-9 see keys 0-5 and 7-9. Two sequences packed, built the way
# LocateAnything's batch_utils does: per-slice ranges plus groups sharing a q_range.
L = 10
LA_QR = [(0, 7), (7, 10), (7, 10), (10, 17), (17, 20), (17, 20)]
LA_KR = [(0, 7), (0, 6), (7, 10), (10, 17), (10, 16), (17, 20)]
LA_TYPES = [1, 0, 0, 1, 0, 0]
LA_OFFSETS = [0, 1, 3, 4, 6]
LA_GROUP_QR = [(0, 7), (7, 10), (10, 17), (17, 20)]
LA_GROUP_TYPES = [1, 0, 1, 0]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_range_attention_mtp_windows(rng, dtype):
    torch = require("torch")
    q, k, v = qkv(rng, dtype, tq=2 * L, tk=2 * L)
    t = [torch.from_numpy(x).to(getattr(torch, dtype)) for x in (q, k, v)]
    ints = lambda x: torch.tensor(x, dtype=torch.int32)
    out = magi.range_attention(*t, ints(LA_QR), ints(LA_KR), ints(LA_TYPES), D ** -0.5,
                               segment_offsets=ints(LA_OFFSETS), group_q_ranges=ints(LA_GROUP_QR),
                               group_attn_type_map=ints(LA_GROUP_TYPES), max_q_len=7, max_k_len=7,
                               flash_cu_seqlens_q=None, disjoint_q_ranges=False)
    assert out.dtype == t[0].dtype and out.shape == (2 * L, HQ, DV)
    # the window rule as an explicit visibility matrix, independent of the plan
    vis = np.zeros((2 * L, 2 * L), bool)
    for b in range(2):
        o = b * L
        for i in range(7):
            vis[o + i, o:o + i + 1] = True
        vis[o + 7:o + 10, o:o + 6] = True
        vis[o + 7:o + 10, o + 7:o + 10] = True
    check(out, None, lambda rnd: reference.attend(q, k, v, visible=vis, rnd=rnd), dtype)


def test_range_attention_without_groups_and_all_types(rng):
    """segment_offsets alone (validated as groups), no segment_offsets, every attn type (the
    LocateAnything release path has only 0 and 1), NumPy inputs, scale None."""
    q, k, v = (x.astype(np.float32) for x in qkv(rng, "float32"))
    ref = lambda rnd: reference.range_plan(q, k, v, QR, KR, TYPES, scale=0.2, rnd=rnd)
    check(magi.range_attention(q, k, v, QR, KR, TYPES, 0.2), None, ref, "float32")
    qr, kr, types = [(0, 5), (0, 5), (5, 9)], [(0, 3), (6, 9), (2, 8)], [1, 0, 3]
    out = magi.range_attention(q, k, v, qr, kr, types, None, segment_offsets=[0, 2, 3])
    check(out, None, lambda rnd: reference.range_plan(q, k, v, qr, kr, types, rnd=rnd), "float32")
    assert magi.is_available()


def test_range_attention_errors(rng):
    torch = require("torch")
    q, k, v = (torch.from_numpy(x).float() for x in qkv(rng, "float32", tq=2 * L, tk=2 * L))
    call = lambda **kw: magi.range_attention(q, k, v, LA_QR, LA_KR, LA_TYPES, None, **kw)
    with pytest.raises(ValueError, match="segment_offsets"):
        call(segment_offsets=[0, 2, 3, 4, 6])                     # group 1 mixes q_ranges
    with pytest.raises(ValueError, match="segment_offsets"):
        call(segment_offsets=[0, 1, 3, 4, 5], group_q_ranges=LA_GROUP_QR)  # does not end at 6
    with pytest.raises(ValueError, match="group_q_ranges"):
        call(segment_offsets=LA_OFFSETS, group_q_ranges=[(0, 7), (7, 10), (10, 17), (17, 19)])
    with pytest.raises(ValueError, match="group_attn_type_map"):
        call(segment_offsets=LA_OFFSETS, group_attn_type_map=[1, 1, 1, 0])
    with pytest.raises(ValueError, match="group_q_ranges"):
        call(segment_offsets=LA_OFFSETS, group_q_ranges=LA_GROUP_QR[:3])
    with pytest.raises(ValueError, match="overlap|both|slice"):
        magi.range_attention(q, k, v, [(7, 10), (7, 10)], [(0, 6), (5, 8)], [0, 0], None)
    out = call(segment_offsets=LA_OFFSETS, group_q_ranges=LA_GROUP_QR, group_attn_type_map=LA_GROUP_TYPES)
    assert_close(out, to_np(call()), "float32")
