"""cflash.ContextCache + cflash.attn_mlm (flash-mlm layer context, SPEC.md section 6) against the
fp64 reference (reference.mlm): misses, shared / per-batch contexts and ctx_idx, prefill replace
and append, cumulative query attention, MLA (V := K and V := K[..., :Dv]), dtypes, lse, the
cache API, and misuse that raises and leaves out, lse and the cache unchanged."""

import threading

import numpy as np
import pytest

import reference
from cflash import _cflash
from cflash._context import ContextCache, attn_mlm
from helpers import FRAMEWORK_DTYPES, FRAMEWORK_IDS, check, make, randn, require

HQ, HK, D, DV = 4, 2, 16, 8
f32 = lambda x: np.ascontiguousarray(x, np.float32)


def dense_qkv(rng, dtype="float32", B=3, Lq=5, Lk=4):
    return (randn(rng, (B, Lq, HQ, D), dtype), randn(rng, (B, Lk, HK, D), dtype),
            randn(rng, (B, Lk, HK, DV), dtype))


def contexts(rng, lengths, dtype="float32", Hk=HK, d=D, dv=DV):
    """A list of (k_c, v_c) and the packed (k, v, cu) that stores them."""
    cs = [(randn(rng, (n, Hk, d), dtype), randn(rng, (n, Hk, dv), dtype)) for n in lengths]
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    k = np.concatenate([c[0] for c in cs]) if cs else np.zeros((0, Hk, d))
    v = np.concatenate([c[1] for c in cs]) if cs else np.zeros((0, Hk, dv))
    return cs, k, v, cu


@pytest.mark.parametrize("fw,dtype", FRAMEWORK_DTYPES, ids=FRAMEWORK_IDS)
def test_per_batch_contexts_all_frameworks(rng, fw, dtype):
    """B contexts of different lengths (stored packed), dense new tokens, lse."""
    require(fw)
    q, k, v = dense_qkv(rng, dtype)
    cs, ck, cv, cu = contexts(rng, [3, 0, 7], dtype)
    cache = ContextCache()
    cache.store(2, make(ck, fw, dtype), make(cv, fw, dtype), cu)
    out, lse = attn_mlm(make(q, fw, dtype), make(k, fw, dtype), make(v, fw, dtype), cache=cache, layer_id=2,
                        return_lse=True)
    assert type(out).__module__.partition(".")[0] == type(make(q, fw, dtype)).__module__.partition(".")[0]
    check(out, lse, lambda rnd: reference.mlm(q, k, v, cs, rnd=rnd), dtype)


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_miss_is_no_context(rng, packed):
    """No cache, and a cache without an entry for the layer: the new tokens only."""
    q, k, v = dense_qkv(rng)
    cache = ContextCache()
    cache.store(0, f32(k), f32(v))  # another layer
    if packed:
        cu = np.array([0, 2, 2, 7], np.int32)
        q, k, v = q.reshape(-1, HQ, D)[:7], k.reshape(-1, HK, D)[:7], v.reshape(-1, HK, DV)[:7]
        ref = reference.mlm(q, k, v, cu_q=cu)
        for kw in ({}, dict(cache=cache, layer_id=1)):
            out, lse = attn_mlm(f32(q), f32(k), f32(v), cu, return_lse=True, **kw)
            check(out, lse, lambda rnd: ref, "float32")
    else:
        ref = reference.mlm(q, k, v)
        for kw in ({}, dict(cache=cache, layer_id=1)):
            out, lse = attn_mlm(f32(q), f32(k), f32(v), return_lse=True, **kw)
            check(out, lse, lambda rnd: ref, "float32")
    assert 1 not in cache


def test_shared_context_and_ctx_idx(rng):
    """One context shared by every sequence; three contexts picked by ctx_idx (packed)."""
    q, k, v = dense_qkv(rng)
    cs, ck, cv, cu = contexts(rng, [6])
    cache = ContextCache()
    cache.store(0, f32(ck[None]), f32(cv[None]))  # dense store: 1 context of length 6
    assert cache.lengths(0) == (6,)
    out = attn_mlm(f32(q), f32(k), f32(v), cache=cache, layer_id=0)
    check(out, None, lambda rnd: reference.mlm(q, k, v, cs), "float32")

    cs, ck, cv, cu = contexts(rng, [2, 5, 1])
    cache.store(1, f32(ck), f32(cv), cu)
    cq, ckk = np.array([0, 3, 4, 4, 9], np.int32), np.array([0, 1, 6, 6, 8], np.int32)
    qp, kp, vp = randn(rng, (9, HQ, D)), randn(rng, (8, HK, D)), randn(rng, (8, HK, DV))
    idx = np.array([2, 2, 0, 1], np.int32)
    out, lse = attn_mlm(f32(qp), f32(kp), f32(vp), cq, ckk, cache=cache, layer_id=1, ctx_idx=idx, return_lse=True)
    check(out, lse, lambda rnd: reference.mlm(qp, kp, vp, cs, cu_q=cq, cu_k=ckk, ctx_idx=idx), "float32")


def test_prefill_replace_then_read(rng):
    """A prefill attends to the old entry, then its new K/V become the layer's B contexts."""
    cache = ContextCache()
    q1, k1, v1 = dense_qkv(rng)
    out = attn_mlm(f32(q1), f32(k1), f32(v1), cache=cache, layer_id=4, prefill=True)  # miss, then store
    check(out, None, lambda rnd: reference.mlm(q1, k1, v1), "float32")
    info = cache.info(4)
    assert (info.num_contexts, info.lengths, info.Hk, info.D, info.Dv, info.dtype, info.v_is_k) == \
        (3, (4, 4, 4), HK, D, DV, "float32", False)
    q2, k2, v2 = dense_qkv(rng, Lk=2)
    out = attn_mlm(f32(q2), f32(k2), f32(v2), cache=cache, layer_id=4, prefill=True)
    check(out, None, lambda rnd: reference.mlm(q2, k2, v2, list(zip(k1, v1))), "float32")
    assert cache.lengths(4) == (2, 2, 2)
    q3, k3, v3 = dense_qkv(rng)
    out = attn_mlm(f32(q3), f32(k3), f32(v3), cache=cache, layer_id=4)
    check(out, None, lambda rnd: reference.mlm(q3, k3, v3, list(zip(k2, v2))), "float32")


def test_prefill_append_grows_contexts(rng):
    """append: sequence b's tokens join the context it attended, in batch order (a shared
    context receives every sequence's tokens)."""
    cache = ContextCache()
    cs, ck, cv, cu = contexts(rng, [3])
    cache.store(0, f32(ck), f32(cv), cu)
    cq = np.array([0, 2, 5], np.int32)
    q, k, v = randn(rng, (5, HQ, D)), randn(rng, (5, HK, D)), randn(rng, (5, HK, DV))
    out = attn_mlm(f32(q), f32(k), f32(v), cq, cache=cache, layer_id=0, prefill=True, prefill_mode="append")
    check(out, None, lambda rnd: reference.mlm(q, k, v, cs, cu_q=cq), "float32")
    assert cache.lengths(0) == (8,)
    grown = [(np.concatenate([cs[0][0], k]), np.concatenate([cs[0][1], v]))]
    q2 = randn(rng, (2, 3, HQ, D))
    k2, v2 = randn(rng, (2, 1, HK, D)), randn(rng, (2, 1, HK, DV))
    out = attn_mlm(f32(q2), f32(k2), f32(v2), cache=cache, layer_id=0)
    check(out, None, lambda rnd: reference.mlm(q2, k2, v2, grown), "float32")

    # per-batch contexts with ctx_idx: sequence b appends to context ctx_idx[b]
    cs, ck, cv, cu = contexts(rng, [1, 2])
    cache.store(1, f32(ck), f32(cv), cu)
    idx = np.array([1, 0, 1], np.int32)
    q, k, v = dense_qkv(rng, Lk=2)
    attn_mlm(f32(q), f32(k), f32(v), cache=cache, layer_id=1, ctx_idx=idx, prefill=True, prefill_mode="append")
    assert cache.lengths(1) == (1 + 2, 2 + 2 + 2)
    want = [(np.concatenate([cs[0][0], k[1]]), np.concatenate([cs[0][1], v[1]])),
            (np.concatenate([cs[1][0], k[0], k[2]]), np.concatenate([cs[1][1], v[0], v[2]]))]
    q2 = randn(rng, (2, 1, HQ, D))
    out = attn_mlm(f32(q2), f32(k2), f32(v2), cache=cache, layer_id=1)
    check(out, None, lambda rnd: reference.mlm(q2, k2, v2, want), "float32")


def test_cumulative_query_attention(rng):
    """SPEC.md worked example: lengths [9, 7, 5]; sequence b also sees the new tokens of 0..b-1
    (seq 0 keys 0-8, seq 1 keys 0-15, seq 2 keys 0-20), next to its context."""
    cu = np.array([0, 9, 16, 21], np.int32)
    q, k, v = randn(rng, (21, HQ, D)), randn(rng, (21, HK, D)), randn(rng, (21, HK, DV))
    cs, ck, cv, ccu = contexts(rng, [2, 3, 4])
    cache = ContextCache()
    cache.store(0, f32(ck), f32(cv), ccu)
    out, lse = attn_mlm(f32(q), f32(k), f32(v), cu, cache=cache, layer_id=0, cumulative=True, return_lse=True)
    check(out, lse, lambda rnd: reference.mlm(q, k, v, cs, cu_q=cu, cumulative=True), "float32")
    # with no context, row 0 of seq 2 sees exactly 21 keys: its lse is the log-sum over them
    out, lse = attn_mlm(f32(q), f32(k), f32(v), cu, cumulative=True, return_lse=True)
    check(out, lse, lambda rnd: reference.mlm(q, k, v, cu_q=cu, cumulative=True), "float32")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_mla_576_512(rng, dtype):
    """MLA: one latent head, V := K[..., :512] (v a view of k), context stored as keys only."""
    torch = require("torch")
    Dl, Dv, Hq = 576, 512, 2
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, dtype))
    ctx_k = randn(rng, (2, 3, 1, Dl), dtype)  # 2 contexts of 3 latent tokens
    q, k = randn(rng, (2, 2, Hq, Dl), dtype), randn(rng, (2, 2, 1, Dl), dtype)
    cache = ContextCache()
    tck = t(ctx_k)
    cache.store(0, tck, tck[..., :Dv])
    info = cache.info(0)
    assert info.v_is_k and (info.Hk, info.D, info.Dv) == (1, Dl, Dv)
    tk = t(k)
    out, lse = attn_mlm(t(q), tk, tk[..., :Dv], cache=cache, layer_id=0, return_lse=True)
    cs = [(c, c[..., :Dv]) for c in ctx_k]
    check(out, lse, lambda rnd: reference.mlm(q, k, k[..., :Dv], cs, rnd=rnd), dtype)
    # V := K (v None) is another V kind: a mismatch, not a silent miss
    with pytest.raises(ValueError, match="layer_id"):
        attn_mlm(t(q), tk, None, cache=cache, layer_id=0)


def test_v_is_k_prefill(rng):
    """v None (V := K, Dv = D) through a prefill and a read."""
    cache = ContextCache()
    q, k, _ = dense_qkv(rng)
    attn_mlm(f32(q), f32(k), None, cache=cache, layer_id=0, prefill=True)
    assert cache.info(0).v_is_k and cache.info(0).Dv == D
    q2, k2, _ = dense_qkv(rng, Lk=1)
    out = attn_mlm(f32(q2), f32(k2), None, cache=cache, layer_id=0)
    check(out, None, lambda rnd: reference.mlm(q2, k2, None, [(c, c) for c in k]), "float32")


def test_scale_softcap_sinks(rng):
    q, k, v = dense_qkv(rng)
    cs, ck, cv, cu = contexts(rng, [2, 4, 3])
    cache = ContextCache()
    cache.store(0, f32(ck), f32(cv), cu)
    sinks = rng.standard_normal(HQ).astype(np.float32)
    out, lse = attn_mlm(f32(q), f32(k), f32(v), cache=cache, layer_id=0, softmax_scale=0.3, softcap=2.0,
                        sinks=sinks, return_lse=True, num_threads=2, kernel="ref")
    check(out, lse, lambda rnd: reference.mlm(q, k, v, cs, scale=0.3, softcap=2.0, sinks=sinks), "float32")


def test_out_lse_given_and_fp32_out(rng):
    q, k, v = dense_qkv(rng, "float16")
    cs, ck, cv, cu = contexts(rng, [2, 2, 2], "float16")
    cache = ContextCache()
    cache.store(0, ck.astype(np.float16), cv.astype(np.float16), cu)
    out = np.empty((3, 5, HQ, DV), np.float32)
    lse = np.empty((3, HQ, 5), np.float32)
    res = attn_mlm(q.astype(np.float16), k.astype(np.float16), v.astype(np.float16), cache=cache, layer_id=0,
                   out=out, lse=lse)
    assert res[0] is out and res[1] is lse
    check(out, lse, lambda rnd: reference.mlm(q, k, v, cs, rnd=rnd), "float16")


def test_cache_api_and_copies(rng):
    cache = ContextCache()
    assert cache.info(0) is None and cache.lengths(0) == () and 0 not in cache
    k, v = f32(randn(rng, (2, 3, HK, D))), f32(randn(rng, (2, 3, HK, DV)))
    cache.store(0, k, v)
    cache.store(7, k, v, mode="append")  # absent: created
    cache.store(7, k[:, :1], v[:, :1], mode="append")
    assert cache.lengths(7) == (4, 4) and cache.info(7).total_len == 8
    # the cache owns copies: changing the stored tensors changes nothing
    q = f32(randn(rng, (2, 1, HQ, D)))
    kn, vn = f32(randn(rng, (2, 1, HK, D))), f32(randn(rng, (2, 1, HK, DV)))
    before = attn_mlm(q, kn, vn, cache=cache, layer_id=0)
    k[:] = 0
    v[:] = 0
    assert np.array_equal(attn_mlm(q, kn, vn, cache=cache, layer_id=0), before)
    cache.clear(0)
    assert 0 not in cache and 7 in cache
    cache.clear()
    assert 7 not in cache
    assert "ContextCache" in repr(cache)


def test_empty_contexts_and_empty_batch(rng):
    """Contexts of length 0 behave as none; B = 0 is a no-op."""
    cache = ContextCache()
    _, ck, cv, cu = contexts(rng, [0, 0, 0])
    cache.store(0, f32(ck), f32(cv), cu)
    q, k, v = dense_qkv(rng)
    check(attn_mlm(f32(q), f32(k), f32(v), cache=cache, layer_id=0), None,
          lambda rnd: reference.mlm(q, k, v), "float32")
    out = attn_mlm(f32(q[:0]), f32(k[:0]), f32(v[:0]))
    assert out.shape == (0, 5, HQ, DV)


def _snapshot(cache, layers, q, k, v):
    """What a read of each layer gives now (to prove a failed call changed nothing)."""
    def read(info, layer):
        idx = [min(b, info.num_contexts - 1) for b in range(q.shape[0])]
        return attn_mlm(q, k, v, cache=cache, layer_id=layer, ctx_idx=idx)
    return [(cache.info(l), None if l not in cache else read(cache.info(l), l)) for l in layers]


def _same(a, b):
    return all(ia == ib and (oa is None and ob is None or np.array_equal(oa, ob)) for (ia, oa), (ib, ob) in zip(a, b))


def test_misuse_changes_nothing(rng):
    """Each bad argument raises its exception; out, lse and the cache are unchanged."""
    q, k, v = (f32(x) for x in dense_qkv(rng))
    cache = ContextCache()
    cache.store(0, k, v)                                   # 3 contexts
    cache.store(1, k[:1], v[:1])                           # 1 context
    cache.store(2, k[:2], v[:2])                           # 2 contexts: neither 1 nor 3
    cp = np.array([0, 2, 5], np.int32)
    qp, kp, vp = q.reshape(-1, HQ, D)[:5], k.reshape(-1, HK, D)[:5], v.reshape(-1, HK, DV)[:5]
    k16, v16 = k.astype(np.float16), v.astype(np.float16)
    cases = [
        (ValueError, dict(cache=cache)),                                    # no layer_id
        (ValueError, dict(layer_id=0)),                                     # no cache
        (ValueError, dict(prefill=True)),                                   # prefill without a cache
        (ValueError, dict(cache=cache, layer_id=-1)),
        (TypeError, dict(cache=object(), layer_id=0)),
        (TypeError, dict(cache=cache, layer_id="0")),
        (ValueError, dict(cache=cache, layer_id=0, prefill=True, prefill_mode="merge")),
        (ValueError, dict(cache=cache, layer_id=0, ctx_idx=[0, 3, 1])),     # out of range
        (ValueError, dict(cache=cache, layer_id=0, ctx_idx=[0, 1])),        # not [B]
        (TypeError, dict(cache=cache, layer_id=0, ctx_idx=[0.5, 1, 1])),
        (ValueError, dict(cache=cache, layer_id=2)),                        # 2 contexts, B = 3
        (ValueError, dict(cache=cache, layer_id=0, cumulative=True)),       # dense
        (ValueError, dict(ctx_idx=[0, 0, 0])),                              # ctx_idx without a cache
        (ValueError, dict(softcap=-1.0, cache=cache, layer_id=0, prefill=True)),
        (ValueError, dict(cache=cache, layer_id=0, prefill=True, prefill_mode="append", sinks=[1.0])),
    ]
    layers = [0, 1, 2, 3]
    before = _snapshot(cache, layers, q[:, :1], k[:, :1], v[:, :1])
    for exc, kw in cases:
        out = np.full((3, 5, HQ, DV), 7.0, np.float32)
        lse = np.full((3, HQ, 5), 7.0, np.float32)
        with pytest.raises(exc):
            attn_mlm(q, k, v, out=out, lse=lse, **kw)
        assert (out == 7).all() and (lse == 7).all(), kw
    bad_calls = [
        (ValueError, lambda o, l: attn_mlm(q, k[:, :, :1], v[:, :, :1], cache=cache, layer_id=0,
                                           out=o, lse=l)),                               # Hk differs
        (ValueError, lambda o, l: attn_mlm(q.astype(np.float16), k16, v16, cache=cache, layer_id=0,
                                           out=o, lse=l)),                               # dtype differs
        (ValueError, lambda o, l: attn_mlm(q, k, None, cache=cache, layer_id=0, prefill=True,
                                           prefill_mode="append", out=np.empty((3, 5, HQ, D), np.float32), lse=l)),
        (TypeError, lambda o, l: attn_mlm(q, k16, v16, cache=cache, layer_id=1, prefill=True, out=o, lse=l)),
        (TypeError, lambda o, l: attn_mlm(q.astype(np.float64), k, v, out=o, lse=l)),
        (ValueError, lambda o, l: attn_mlm(qp, kp, vp, cp, np.array([0, 1, 9], np.int32), cache=cache, layer_id=3,
                                           prefill=True, out=o[0], lse=l[0])),           # cu_seqlens_k bad
        (ValueError, lambda o, l: attn_mlm(qp, kp, vp, cp, cache=cache, layer_id=0, prefill=True,
                                           prefill_mode="append", out=o[0], lse=l[0])),  # 2 sequences vs 3 contexts
        (ValueError, lambda o, l: attn_mlm(q, k, v, cp, out=o, lse=l)),                 # rank
    ]
    for exc, call in bad_calls:
        out = np.full((3, 5, HQ, DV), 7.0, np.float32)
        lse = np.full((3, HQ, 5), 7.0, np.float32)
        with pytest.raises(exc):
            call(out, lse)
        assert (out == 7).all() and (lse == 7).all()
    # store misuse
    for exc, call in [
        (ValueError, lambda: cache.store(0, kp, vp, [0, 2, 9])),             # last != Tk
        (ValueError, lambda: cache.store(0, k[:2], v[:2], mode="append")),   # 2 vs 3 contexts
        (ValueError, lambda: cache.store(0, k, v[:, :, :, :4], mode="append")),  # Dv differs
        (TypeError, lambda: cache.store(0, k.astype(np.float64), None)),
        (ValueError, lambda: cache.store(-2, k, v)),
        (ValueError, lambda: cache.store(0, k, v, mode="prepend")),
    ]:
        with pytest.raises(exc):
            call()
    with pytest.raises(ValueError):
        cache.clear(-3)
    assert _same(before, _snapshot(cache, layers, q[:, :1], k[:, :1], v[:, :1]))


def test_extension_rejects_masks_as_unsupported(rng):
    """Causal, windows, ALiBi, masks: NotImplementedError (flash-mlm attention is bidirectional)."""
    q, k, v = (f32(x) for x in dense_qkv(rng))
    out = np.zeros((3, 5, HQ, DV), np.float32)
    for kw in (dict(causal=True), dict(window_left=2), dict(alibi_slopes=np.ones(HQ, np.float32))):
        with pytest.raises(NotImplementedError):
            _cflash.attn_mlm(q, k, v, None, None, None, -1, None, False, False, 0, out, None, **kw)
    assert (out == 0).all()


def test_threads_share_one_cache(rng):
    """Readers and prefilling writers on one cache from several threads (calls are serialized):
    every read sees one whole entry, old or new."""
    q, k, v = (f32(x) for x in dense_qkv(rng, Lq=2, Lk=3))
    ka, va = f32(randn(rng, (3, 4, HK, D))), f32(randn(rng, (3, 4, HK, DV)))
    kb, vb = f32(randn(rng, (3, 4, HK, D))), f32(randn(rng, (3, 4, HK, DV)))
    cache = ContextCache()
    cache.store(0, ka, va)
    ra = attn_mlm(q, k, v, cache=cache, layer_id=0)
    cache.store(0, kb, vb)
    rb = attn_mlm(q, k, v, cache=cache, layer_id=0)
    errors = []

    def writer():
        for i in range(30):
            cache.store(0, *((ka, va) if i % 2 else (kb, vb)))

    def reader():
        for _ in range(30):
            out = attn_mlm(q, k, v, cache=cache, layer_id=0, num_threads=1)
            if not (np.array_equal(out, ra) or np.array_equal(out, rb)):
                errors.append("torn read")

    threads = [threading.Thread(target=f) for f in (writer, reader, reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
