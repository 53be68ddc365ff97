"""cflash.merge: two partial attention states over a split key set reproduce the unsplit
attention (SPEC.md section 7), in both ranks, in place, with -inf states, over every framework."""

import numpy as np
import pytest

import cflash
import reference
from helpers import FRAMEWORK_DTYPES, FRAMEWORK_IDS, assert_lse, check, make, randn, require, to_np


@pytest.mark.parametrize("fw,dtype", FRAMEWORK_DTYPES, ids=FRAMEWORK_IDS)
def test_merge_split_keys_rank4(rng, fw, dtype):
    require(fw)
    q, k, v = randn(rng, (2, 5, 4, 16), dtype), randn(rng, (2, 12, 2, 16), dtype), randn(rng, (2, 12, 2, 8), dtype)
    t = lambda x: make(x, fw, dtype)
    for partial_dtype in ("float32", dtype):  # fp32 partial states, or in the input dtype
        o1, l1 = cflash.attn_dense(t(q), t(k[:, :7]), t(v[:, :7]), return_lse=True, out_dtype=partial_dtype)
        o2, l2 = cflash.attn_dense(t(q), t(k[:, 7:]), t(v[:, 7:]), return_lse=True, out_dtype=partial_dtype)
        out, lse = cflash.merge(o1, l1, o2, l2)
        assert str(out.dtype).endswith(partial_dtype)
        check(out, lse, lambda rnd: reference.dense(q, k, v, rnd=rnd), dtype)


def test_merge_rank3_reference_and_spec_example(rng):
    T, H, Dv = 6, 3, 4
    o1, o2 = randn(rng, (T, H, Dv)), randn(rng, (T, H, Dv))
    l1, l2 = randn(rng, (H, T)), randn(rng, (H, T))
    l1[0, 0] = -np.inf                     # -inf (+) x = x
    l1[1, 1] = l2[1, 1] = -np.inf          # -inf (+) -inf: out 0, lse -inf
    l1[2, 2], l2[2, 2] = 1.0, 2.0          # SPEC: weights 0.2689 / 0.7311, lse 2.3133
    f = lambda x: x.astype(np.float32)
    out, lse = cflash.merge(f(o1), f(l1), f(o2), f(l2))
    ro, rl = reference.merge(o1.transpose(1, 0, 2), l1, o2.transpose(1, 0, 2), l2)
    assert np.abs(out - ro.transpose(1, 0, 2)).max() < 1e-5
    assert_lse(lse, rl)
    assert (out[1, 1] == 0).all() and np.isneginf(lse[1, 1])
    assert np.allclose(out[0, 0], o2[0, 0]) and abs(lse[2, 2] - 2.3133) < 1e-4


def test_merge_in_place_torch(rng):
    torch = require("torch")
    o1, o2 = (torch.from_numpy(randn(rng, (2, 3, 2, 4))).float() for _ in range(2))
    l1, l2 = (torch.from_numpy(randn(rng, (2, 2, 3))).float() for _ in range(2))
    ro, rl = reference.merge(to_np(o1).transpose(0, 2, 1, 3), to_np(l1), to_np(o2).transpose(0, 2, 1, 3), to_np(l2))
    out, lse = cflash.merge(o1, l1, o2, l2, out=o1, lse_out=l1)
    assert out is o1 and lse is l1
    assert np.abs(to_np(o1) - ro.transpose(0, 2, 1, 3)).max() < 1e-5
    assert_lse(l1, rl)


def test_merge_without_lse(rng):
    o = randn(rng, (4, 2, 3)).astype(np.float32)
    l = randn(rng, (2, 4)).astype(np.float32)
    out = cflash.merge(o, l, o, l, return_lse=False)
    assert isinstance(out, np.ndarray) and np.abs(out - o).max() < 1e-6


def test_merge_errors_write_nothing(rng):
    o = randn(rng, (4, 2, 3)).astype(np.float32)
    l = randn(rng, (2, 4)).astype(np.float32)
    out, lse_out = np.full_like(o, 9.0), np.full_like(l, 9.0)
    with pytest.raises(ValueError, match="lse2"):
        cflash.merge(o, l, o, l.T, out=out, lse_out=lse_out)
    with pytest.raises(TypeError, match="lse1"):
        cflash.merge(o, l.astype(np.float16), o, l, out=out, lse_out=lse_out)
    with pytest.raises(ValueError, match="o1"):
        cflash.merge(o[0], l, o[0], l, out=out, lse_out=lse_out)
    with pytest.raises(TypeError, match="o2"):
        cflash.merge(o, l, None, l, out=out, lse_out=lse_out)
    assert (out == 9.0).all() and (lse_out == 9.0).all()
