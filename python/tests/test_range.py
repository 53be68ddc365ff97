"""cflash.RangePlan and cflash.attn_range against the fp64 reference: the four slice types, a
plan reused across calls, heads and dtypes, ALiBi per slice, segment_offsets, the worked
example of SPEC.md section 4, and plan errors."""

import numpy as np
import pytest

import cflash
import reference
from helpers import FRAMEWORK_DTYPES, FRAMEWORK_IDS, check, make, randn, require, to_np

TQ, TK = 20, 24
# slices (q_range, k_range, type): a document-like plan with every type and an uncovered row 19
SLICES = [((0, 6), (0, 8), "causal"), ((0, 6), (10, 14), "full"), ((6, 12), (8, 16), "inv_causal"),
          ((12, 19), (14, 24), "band"), ((12, 19), (0, 4), "full")]
QR = [s[0] for s in SLICES]
KR = [s[1] for s in SLICES]
TYPES = [s[2] for s in SLICES]


@pytest.fixture(scope="module")
def plan():
    return cflash.RangePlan(QR, KR, TQ, TK, attn_type_map=TYPES)


def test_plan_properties(plan):
    assert (plan.Tq, plan.Tk, plan.num_slices, plan.packed_sequences) == (TQ, TK, 5, 0)
    cells = 0
    for (qs, qe), (ks, ke), t in SLICES:
        Lq, Lk = qe - qs, ke - ks
        i, j = np.arange(Lq)[:, None], np.arange(Lk)[None, :]
        c = {"full": np.ones((Lq, Lk), bool), "causal": j <= i + Lk - Lq, "inv_causal": j >= i,
             "band": (j >= i) & (j <= i + Lk - Lq)}[t]
        cells += int(c.sum())
    assert plan.visible_cells == cells
    assert "RangePlan(" in repr(plan)


@pytest.mark.parametrize("fw,dtype", FRAMEWORK_DTYPES, ids=FRAMEWORK_IDS)
def test_range(rng, plan, fw, dtype):
    require(fw)
    q, k, v = randn(rng, (TQ, 4, 16), dtype), randn(rng, (TK, 2, 16), dtype), randn(rng, (TK, 2, 8), dtype)
    out, lse = cflash.attn_range(make(q, fw, dtype), make(k, fw, dtype), make(v, fw, dtype), plan,
                                 return_lse=True)
    check(out, lse, lambda rnd: reference.range_plan(q, k, v, QR, KR, TYPES, rnd=rnd), dtype)
    assert np.isneginf(to_np(lse)[:, 19]).all() and (to_np(out)[19] == 0).all()


# document masks (packed batches): (q_ranges, k_ranges, types, packed sequences); out of order,
# with rows and keys between the documents that no slice covers
DOC_PLANS = [
    ([(3, 9), (12, 20)], [(2, 10), (14, 24)], ["causal", "causal"], 6),
    ([(9, 20), (0, 9)], [(10, 24), (0, 10)], ["full", "full"], 2),
]


@pytest.mark.parametrize("qr,kr,types,packed", DOC_PLANS)
def test_document_mask_plan_runs_packed(rng, qr, kr, types, packed):
    """A plan of disjoint documents in order (all causal or all full) runs as a packed varlen
    batch, the gaps as sequences without keys or rows (their rows: 0 and -inf), with every score
    option; with a mask it walks the slices. Both against the reference."""
    plan = cflash.RangePlan(qr, kr, TQ, TK, attn_type_map=types)
    assert plan.packed_sequences == packed
    q, k, v = randn(rng, (TQ, 4, 16), "float32"), randn(rng, (TK, 2, 16), "float32"), randn(rng, (TK, 2, 8), "float32")
    slopes = rng.uniform(0.1, 0.4, 4).astype(np.float32)
    sinks = rng.standard_normal(4).astype(np.float32)
    tq, tk, tv = (make(x, "numpy", "float32") for x in (q, k, v))
    out, lse = cflash.attn_range(tq, tk, tv, plan, alibi_slopes=slopes, sinks=sinks, softcap=4.0, return_lse=True)
    check(out, lse, lambda rnd: reference.range_plan(q, k, v, qr, kr, types, alibi=slopes, sinks=sinks, softcap=4.0,
                                                     rnd=rnd), "float32")
    mask = rng.random((TK, 2)) < 0.6
    out, lse = cflash.attn_range(tq, tk, tv, plan, mask=mask, return_lse=True)
    check(out, lse, lambda rnd: reference.range_plan(q, k, v, qr, kr, types, mask=reference.head_variants(mask.T[:, None, :], 4),
                                                     rnd=rnd), "float32")


def test_document_mask_plan_equals_varlen(rng):
    """A document-mask plan runs as the packed batch it describes: its output and LSE are the
    varlen call's on the same cu_seqlens, bit for bit (one code path)."""
    lens = [5, 9, 1, 5]
    cu = np.cumsum([0] + lens).astype(np.int32)
    T = int(cu[-1])
    ranges = [[int(a), int(b)] for a, b in zip(cu[:-1], cu[1:])]
    plan = cflash.RangePlan(ranges, ranges, T, T, attn_type_map=["causal"] * len(lens))
    assert plan.packed_sequences == len(lens)
    q, k, v = (make(randn(rng, (T, h, 16), "bfloat16"), "torch", "bfloat16") for h in (4, 2, 2))
    out_p, lse_p = cflash.attn_range(q, k, v, plan, return_lse=True)
    out_v, lse_v = cflash.attn_varlen(q, k, v, cu, cu, max(lens), max(lens), causal=True, return_lse=True)
    assert np.array_equal(to_np(out_p), to_np(out_v)) and np.array_equal(to_np(lse_p), to_np(lse_v))


def test_plan_reused_across_heads_dtypes_and_options(rng, plan):
    torch = require("torch")
    for hq, hk, d, dtype in ((4, 4, 8, "float32"), (6, 2, 32, "bfloat16"), (1, 1, 5, "float16")):
        q, k = randn(rng, (TQ, hq, d), dtype), randn(rng, (TK, hk, d), dtype)
        slopes = rng.uniform(0.1, 0.4, hq).astype(np.float32)
        sinks = rng.standard_normal(hq).astype(np.float32)
        t = [torch.from_numpy(x).to(getattr(torch, dtype)) for x in (q, k)]
        out, lse = cflash.attn_range(t[0], t[1], None, plan, alibi_slopes=slopes, sinks=sinks,
                                     softcap=4.0, softmax_scale=0.5, return_lse=True)
        check(out, lse, lambda rnd: reference.range_plan(q, k, None, QR, KR, TYPES, alibi=slopes, sinks=sinks,
                                                         softcap=4.0, scale=0.5, rnd=rnd), dtype)


@pytest.mark.parametrize("layout", ["dense", "key_side", "query_side"])
def test_range_mask_bias(rng, plan, layout):
    """Masks and biases on the plan's global axes, in each layout (detected from ndim)."""
    torch = require("torch")
    hq, hk = 4, 2
    q, k, v = randn(rng, (TQ, hq, 16)), randn(rng, (TK, hk, 16)), randn(rng, (TK, hk, 16))
    shape = {"dense": lambda hv: (1, hv, TQ, TK), "key_side": lambda hv: (TK, hv),
             "query_side": lambda hv: (TQ, hv, TK + 3)}[layout]
    m, bias = rng.random(shape(hk)) < 0.6, randn(rng, shape(1))
    out, lse = cflash.attn_range(*(torch.from_numpy(x).float() for x in (q, k, v)), plan, return_lse=True,
                                 mask=torch.from_numpy(m), bias=torch.from_numpy(bias).float())
    src = lambda x: reference.packed_source(x, layout, 0, [0, TQ], [0, TK], hq)
    check(out, lse, lambda rnd: reference.range_plan(q, k, v, QR, KR, TYPES, mask=src(m), bias=src(bias), rnd=rnd),
          "float32")


def test_spec_worked_example(rng):
    """SPEC.md section 4, Lq=4, Lk=6: causal rows see 0-2 .. 0-5; inverse causal 0-5 .. 3-5;
    band 0-2, 1-3, 2-4, 3-5 (one plan per type, checked through the attention result)."""
    q, k, v = randn(rng, (4, 1, 8)), randn(rng, (6, 1, 8)), randn(rng, (6, 1, 8))
    expect = {"causal": [(0, 2), (0, 3), (0, 4), (0, 5)], "inv_causal": [(0, 5), (1, 5), (2, 5), (3, 5)],
              "band": [(0, 2), (1, 3), (2, 4), (3, 5)]}
    q32, k32, v32 = (x.astype(np.float32) for x in (q, k, v))
    for t, rows in expect.items():
        out = cflash.attn_range(q32, k32, v32, cflash.RangePlan([(0, 4)], [(0, 6)], 4, 6, [t]))
        for i, (lo, hi) in enumerate(rows):
            vis = np.zeros((1, 6), bool)
            vis[0, lo:hi + 1] = True
            ref, _ = reference.attend(q[i:i + 1], k, v, visible=vis)
            assert np.abs(out[i] - ref[0]).max() < 1e-5, (t, i)


def test_segment_offsets_and_tensor_inputs(rng):
    """Groups sharing a q_range (LocateAnything), ranges given as torch int32 tensors."""
    torch = require("torch")
    qr = torch.tensor([[0, 3], [0, 3], [3, 7]], dtype=torch.int32)
    kr = torch.tensor([[0, 2], [4, 6], [2, 9]], dtype=torch.int32)
    types = torch.tensor([0, 1, 3], dtype=torch.int32)
    p = cflash.RangePlan(qr, kr, 7, 9, attn_type_map=types, segment_offsets=[0, 2, 3])
    q, k = randn(rng, (7, 2, 8)), randn(rng, (9, 2, 8))
    out = cflash.attn_range(torch.from_numpy(q).float(), torch.from_numpy(k).float(), None, p)
    check(out, None, lambda rnd: reference.range_plan(q, k, None, qr.tolist(), kr.tolist(), [0, 1, 3], rnd=rnd),
          "float32")
    with pytest.raises(ValueError, match="segment_offsets"):
        cflash.RangePlan(qr, kr, 7, 9, attn_type_map=types, segment_offsets=[0, 1, 3])  # group 1 mixes q_ranges


def test_plan_errors(rng, plan):
    with pytest.raises(ValueError, match="overlap|both|slice"):
        cflash.RangePlan([(0, 4), (2, 6)], [(0, 4), (3, 5)], 8, 8)
    with pytest.raises(ValueError, match="q_ranges"):
        cflash.RangePlan([(0, 9)], [(0, 4)], 8, 8)
    with pytest.raises(ValueError, match="attn_type_map"):
        cflash.RangePlan([(0, 4)], [(0, 4)], 8, 8, attn_type_map=["diagonal"])
    with pytest.raises(TypeError, match="q_ranges"):
        cflash.RangePlan([(0.5, 4)], [(0, 4)], 8, 8)
    with pytest.raises(TypeError, match="q_ranges"):
        cflash.RangePlan(np.array([[0, 4]], np.int64), [(0, 4)], 8, 8)  # int64: the library wants int32
    q, k = randn(rng, (TQ, 2, 8)).astype(np.float32), randn(rng, (TK, 2, 8)).astype(np.float32)
    out = np.full((TQ, 2, 8), 3.0, np.float32)
    with pytest.raises(ValueError, match="causal"):
        cflash.attn_range(q, k, k, plan, causal=True, out=out)
    with pytest.raises(ValueError, match="window"):
        cflash.attn_range(q, k, k, plan, window=(4, 0), out=out)
    with pytest.raises(ValueError, match="Tq"):
        cflash.attn_range(q[:-1], k, k, plan, out=out[:-1])
    with pytest.raises(ValueError, match="mask"):
        cflash.attn_range(q, k, k, plan, mask=np.ones((TK - 1, 2), bool), out=out)
    with pytest.raises(TypeError, match="plan"):
        cflash.attn_range(q, k, k, "plan", out=out)
    assert (out == 3.0).all()
