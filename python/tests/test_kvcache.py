"""cflash.attn_kvcache against the fp64 reference: contiguous caches (with cache_batch_idx),
paged caches (odd page sizes), in-place append, rotary on append (GPT-NeoX and GPT-J), V := K,
masks, and errors that leave the caches byte-for-byte unchanged."""

import numpy as np
import pytest

import cflash
import reference
from helpers import FRAMEWORK_DTYPES, FRAMEWORK_IDS, check, make, randn, require, to_np

HQ, HK, D, DV = 4, 2, 16, 8


def contiguous(rng, dtype, B=3, Bc=5, Lmax=12, Lq=2, Lnew=3):
    q = randn(rng, (B, Lq, HQ, D), dtype)
    kc, vc = randn(rng, (Bc, Lmax, HK, D), dtype), randn(rng, (Bc, Lmax, HK, DV), dtype)
    kn, vn = randn(rng, (B, Lnew, HK, D), dtype), randn(rng, (B, Lnew, HK, DV), dtype)
    seqlens = np.array([4, 0, 9], np.int32)[:B]
    bidx = np.array([3, 0, 1], np.int32)[:B]
    return q, kc, vc, kn, vn, seqlens, bidx


@pytest.mark.parametrize("fw,dtype", [p for p in FRAMEWORK_DTYPES if p[0] != "jax"],
                         ids=[i for i in FRAMEWORK_IDS if not i.startswith("jax")])
@pytest.mark.parametrize("causal", [False, True])
def test_contiguous_append(rng, fw, dtype, causal):
    require(fw)
    q, kc, vc, kn, vn, seqlens, bidx = contiguous(rng, dtype)
    tkc, tvc = make(kc, fw, dtype), make(vc, fw, dtype)
    out, lse = cflash.attn_kvcache(make(q, fw, dtype), tkc, tvc, make(seqlens, fw, "int32"), make(kn, fw, dtype),
                                   make(vn, fw, dtype), cache_batch_idx=bidx, causal=causal, return_lse=True)
    ref = reference.kvcache(q, kc, vc, seqlens, kn, vn, batch_idx=bidx, causal=causal)
    check(out, lse, lambda rnd: reference.kvcache(q, kc, vc, seqlens, kn, vn, batch_idx=bidx, causal=causal,
                                                  rnd=rnd), dtype)
    assert np.array_equal(to_np(tkc), ref[2]) and np.array_equal(to_np(tvc), ref[3])  # appended in place


@pytest.mark.parametrize("page", [1, 3, 16])
def test_paged(rng, page):
    """Pages of any size, shuffled; sequences of different lengths; the new keys straddle pages."""
    B, Lq, Lnew, maxp = 2, 3, 4, 20 // page + 1
    npages = B * maxp + 2
    q = randn(rng, (B, Lq, HQ, D))
    kc, vc = randn(rng, (npages, page, HK, D)), randn(rng, (npages, page, HK, DV))
    kn, vn = randn(rng, (B, Lnew, HK, D)), randn(rng, (B, Lnew, HK, DV))
    table = rng.permutation(npages)[: B * maxp].reshape(B, maxp).astype(np.int32)
    seqlens = np.array([7, 13], np.int32)
    f = lambda x: x.astype(np.float32)
    tkc, tvc = f(kc), f(vc)
    out, lse = cflash.attn_kvcache(f(q), tkc, tvc, seqlens, f(kn), f(vn), block_table=table, causal=True,
                                   return_lse=True)
    ref = reference.kvcache(q, kc, vc, seqlens, kn, vn, block_table=table, causal=True)
    check(out, lse, lambda rnd: ref, "float32")
    assert np.array_equal(tkc, ref[2]) and np.array_equal(tvc, ref[3])


@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("causal", [False, True])
def test_rotary(rng, interleaved, causal):
    torch = require("torch")
    q, kc, vc, kn, vn, seqlens, bidx = contiguous(rng, "float32")
    rot = 12  # rotary_dim < D: dims >= rot pass unchanged
    pos = np.arange(32)[:, None] * (1.0 / 100 ** (np.arange(rot // 2) / (rot // 2)))[None]
    cos, sin = np.cos(pos).astype(np.float32), np.sin(pos).astype(np.float32)
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).float()
    tkc, tvc = t(kc), t(vc)
    out = cflash.attn_kvcache(t(q), tkc, tvc, t(seqlens).int(), t(kn), t(vn), cache_batch_idx=t(bidx).int(),
                              rotary_cos=t(cos), rotary_sin=t(sin), rotary_interleaved=interleaved,
                              causal=causal)
    ref = reference.kvcache(q, kc, vc, seqlens, kn, vn, batch_idx=bidx, rotary_cos=cos, rotary_sin=sin,
                            interleaved=interleaved, causal=causal)
    check(out, None, lambda rnd: ref, "float32")
    assert np.abs(tkc.double().numpy() - ref[2]).max() < 1e-5


def test_v_is_k_and_no_append_readonly(rng):
    """V := K (v_cache None); without k_new nothing is written, so read-only caches are fine."""
    q, kc, _, kn, _, seqlens, _ = contiguous(rng, "float32", Bc=3)
    kc32 = kc.astype(np.float32)
    kc32.flags.writeable = False
    q32 = q.astype(np.float32)
    out = cflash.attn_kvcache(q32, kc32, None, seqlens, window=(2, 0))
    check(out, None, lambda rnd: reference.kvcache(q, kc, None, seqlens, window=(2, 0)), "float32")
    out2 = cflash.attn_kvcache(q32, kc.astype(np.float32), None, seqlens, kn.astype(np.float32), window=(2, 0))
    check(out2, None, lambda rnd: reference.kvcache(q, kc, None, seqlens, kn, window=(2, 0)), "float32")


def test_int_cache_seqlens_and_jax_query(rng):
    """cache_seqlens as an int (flash-attn style); JAX queries over NumPy caches give JAX out."""
    require("jax")
    q, kc, vc, _, _, _, _ = contiguous(rng, "float32", Bc=3)
    out = cflash.attn_kvcache(make(q, "jax", "float32"), kc.astype(np.float32), vc.astype(np.float32), 5)
    assert type(out).__module__.startswith(("jax", "jaxlib"))
    check(out, None, lambda rnd: reference.kvcache(q, kc, vc, [5, 5, 5]), "float32")
    out2 = cflash.attn_kvcache(q.astype(np.float32), kc.astype(np.float32), vc.astype(np.float32), np.int64(5))
    assert np.array_equal(out2, np.asarray(out))


def test_mask_and_bias(rng):
    """Dense-layout mask / bias over the logical keys of each batch entry."""
    q, kc, vc, kn, vn, seqlens, bidx = contiguous(rng, "float32")
    total = int(seqlens.max()) + kn.shape[1]
    m = rng.random((3, HK, 1, total + 2)) < 0.7
    bias = randn(rng, (1, HQ, q.shape[1], total))
    f = lambda x: x.astype(np.float32)
    out = cflash.attn_kvcache(f(q), f(kc), f(vc), seqlens, f(kn), f(vn), cache_batch_idx=bidx, mask=m,
                              bias=f(bias))
    check(out, None, lambda rnd: reference.kvcache(q, kc, vc, seqlens, kn, vn, batch_idx=bidx, mask=m,
                                                   bias=bias), "float32")


def test_errors_leave_caches_unchanged(rng):
    q, kc, vc, kn, vn, seqlens, bidx = contiguous(rng, "float32")
    f = lambda x: x.astype(np.float32)
    q32, kc32, vc32, kn32, vn32 = f(q), f(kc), f(vc), f(kn), f(vn)
    before = kc32.copy(), vc32.copy()
    out = np.full((3, 2, HQ, DV), -5.0, np.float32)

    def unchanged():
        assert np.array_equal(kc32, before[0]) and np.array_equal(vc32, before[1]) and (out == -5.0).all()

    with pytest.raises(ValueError, match="cache_seqlens"):  # capacity: 9 + 3 > 12 with one more
        cflash.attn_kvcache(q32, kc32, vc32, seqlens + 1, kn32, vn32, cache_batch_idx=bidx, out=out)
    unchanged()
    with pytest.raises(ValueError, match="cache_batch_idx"):  # two entries append to row 0
        cflash.attn_kvcache(q32, kc32, vc32, seqlens, kn32, vn32, cache_batch_idx=[0, 0, 1], out=out)
    unchanged()
    with pytest.raises(ValueError, match="cache_batch_idx"):
        cflash.attn_kvcache(q32, kc32, vc32, seqlens, kn32, vn32, cache_batch_idx=[3, 0, 5], out=out)
    unchanged()
    with pytest.raises(TypeError, match="k_new"):
        cflash.attn_kvcache(q32, kc32, vc32, seqlens, kn.astype(np.float16), vn32, cache_batch_idx=bidx, out=out)
    unchanged()
    with pytest.raises(ValueError, match="v_new"):
        cflash.attn_kvcache(q32, kc32, vc32, seqlens, kn32, None, cache_batch_idx=bidx, out=out)
    unchanged()
    with pytest.raises(ValueError, match="rotary"):
        cos = np.ones((4, 4), np.float32)
        cflash.attn_kvcache(q32, kc32, vc32, seqlens, kn32, vn32, cache_batch_idx=bidx, rotary_cos=cos,
                            rotary_sin=cos, out=out)
    unchanged()
    ro = kc32.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="k_cache.*read-only"):
        cflash.attn_kvcache(q32, ro, vc32, seqlens, kn32, vn32, cache_batch_idx=bidx, out=out)
    unchanged()


def test_jax_caches_are_not_appended_to(rng):
    """JAX arrays are immutable: appending to a JAX cache is refused (reading one is fine)."""
    require("jax")
    q, kc, vc, kn, vn, seqlens, bidx = contiguous(rng, "float32")
    f = lambda x: x.astype(np.float32)
    jkc = make(kc, "jax", "float32")
    with pytest.raises(ValueError, match="k_cache.*immutable"):
        cflash.attn_kvcache(f(q), jkc, f(vc), seqlens, f(kn), f(vn), cache_batch_idx=bidx)
    out = cflash.attn_kvcache(f(q), jkc, f(vc), seqlens, cache_batch_idx=bidx)
    check(out, None, lambda rnd: reference.kvcache(q, kc, vc, seqlens, batch_idx=bidx), "float32")
