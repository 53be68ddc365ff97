"""cflash.attn_varlen against the fp64 reference: packed sequences (zero lengths included),
per-sequence masks, ALiBi [B, Hq], and boolean masks / additive biases in the three layouts
(SPEC.md section 5), over NumPy, torch and JAX inputs."""

import numpy as np
import pytest

import cflash
import reference
from helpers import FRAMEWORK_DTYPES, FRAMEWORK_IDS, check, make, randn, require, to_np

HQ, HK, D = 4, 2, 16
LENS_Q = [3, 0, 6, 2, 5]
LENS_K = [5, 4, 0, 7, 5]


def cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


CU_Q, CU_K = cu(LENS_Q), cu(LENS_K)
TQ, TK, NB = int(CU_Q[-1]), int(CU_K[-1]), len(LENS_Q)
MAXQ, MAXK = max(LENS_Q), max(LENS_K)

# name -> (cflash options, reference options); "mask:<layout>" / "bias:<layout>" build sources
CONFIGS = {
    "full": ({}, {}),
    "causal": (dict(causal=True), dict(causal=True)),
    "causal_tl": (dict(causal=True, align="top_left"), dict(causal=True, align="top_left")),
    "window_softcap": (dict(window=(1, 2), softcap=3.0), dict(window=(1, 2), softcap=3.0)),
    "alibi_batch_sinks": (dict(alibi=True, sinks=True), dict(alibi=True, sinks=True)),
    "mask_key_side": (dict(mask="key_side"), {}),
    "mask_query_side": (dict(mask="query_side", causal=True), dict(causal=True)),
    "mask_dense": (dict(mask="dense"), {}),
    "bias_key_side": (dict(bias="key_side"), {}),
    "bias_query_side": (dict(bias="query_side"), {}),
    "bias_dense_mask_key": (dict(bias="dense", mask="key_side", window=(2, 0)), dict(window=(2, 0))),
}


def source(rng, layout, hv, is_mask, dtype):
    shape = {"key_side": (TK, hv), "query_side": (TQ, hv, MAXK + 1), "dense": (NB, hv, MAXQ, MAXK)}[layout]
    return rng.random(shape) < 0.6 if is_mask else randn(rng, shape, dtype)


@pytest.mark.parametrize("fw,dtype", FRAMEWORK_DTYPES, ids=FRAMEWORK_IDS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_varlen(rng, fw, dtype, name):
    require(fw)
    opts, ropts = (dict(x) for x in CONFIGS[name])
    q, k, v = randn(rng, (TQ, HQ, D), dtype), randn(rng, (TK, HK, D), dtype), randn(rng, (TK, HK, 8), dtype)
    if opts.pop("alibi", None):
        slopes = rng.uniform(0.05, 0.5, (NB, HQ)).astype(np.float32)
        opts["alibi_slopes"], ropts["alibi"] = make(slopes, fw, "float32"), slopes
    if opts.pop("sinks", None):
        sinks = rng.standard_normal(HQ).astype(np.float32)
        opts["sinks"], ropts["sinks"] = make(sinks, fw, "float32"), sinks
    for kind, hv in (("mask", HK), ("bias", HQ)):
        if kind in opts:
            layout = opts[kind]
            x = source(rng, layout, hv, kind == "mask", dtype)
            opts[kind] = make(x, fw, "bool" if kind == "mask" else dtype)  # layout from ndim
            ropts[kind], ropts[kind + "_layout"] = x, layout
    out, lse = cflash.attn_varlen(make(q, fw, dtype), make(k, fw, dtype), make(v, fw, dtype), CU_Q, CU_K,
                                  MAXQ, MAXK, return_lse=True, **opts)
    check(out, lse, lambda rnd: reference.varlen(q, k, v, CU_Q, CU_K, rnd=rnd, **ropts), dtype)


@pytest.mark.parametrize("fw", ["numpy", "torch", "jax"])
def test_cu_seqlens_from_framework_and_lists(rng, fw):
    """cu_seqlens as the framework's int32 tensors, or as Python lists; V := K; hints omitted."""
    require(fw)
    q, k = randn(rng, (TQ, HQ, D)), randn(rng, (TK, HK, D))
    ref = reference.varlen(q, k, None, CU_Q, CU_K, causal=True)
    a = cflash.attn_varlen(make(q, fw, "float32"), make(k, fw, "float32"), None,
                           make(CU_Q, fw, "int32"), make(CU_K, fw, "int32"), causal=True)
    b = cflash.attn_varlen(make(q, fw, "float32"), make(k, fw, "float32"), None,
                           CU_Q.tolist(), CU_K.tolist(), causal=True)
    check(a, None, lambda rnd: ref, "float32")
    assert np.array_equal(to_np(a), to_np(b))


def test_explicit_layout_names(rng):
    """mask_layout / bias_layout given by name; a key-side [Tk, Hv] stored transposed (Hv, Tk)."""
    q, k, v = randn(rng, (TQ, HQ, D)), randn(rng, (TK, HK, D)), randn(rng, (TK, HK, D))
    m = rng.random((HQ, TK)) < 0.5  # storage (Hv, Tk); the view is [Tk, Hv]
    q32, k32, v32 = (x.astype(np.float32) for x in (q, k, v))
    out = cflash.attn_varlen(q32, k32, v32, CU_Q, CU_K, mask=m.T, mask_layout="key_side")
    check(out, None, lambda rnd: reference.varlen(q, k, v, CU_Q, CU_K, mask=m.T, mask_layout="key_side",
                                                  rnd=rnd), "float32")


def test_all_sequences_empty(rng):
    q, k = randn(rng, (0, 2, 8)).astype(np.float32), randn(rng, (4, 2, 8)).astype(np.float32)
    out, lse = cflash.attn_varlen(q, k, k, [0, 0, 0], [0, 4, 4], return_lse=True)
    assert out.shape == (0, 2, 8) and lse.shape == (2, 0)
