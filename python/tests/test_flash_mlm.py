"""cflash.flash_mlm, the flash-mlm drop-in, against the fp64 reference (reference.mlm): the
README's two quick-usage examples, dense and packed launchers with and without a context
(prefill, shared and per-batch contexts, context_batch_size=1, cumulative query attention),
pre-packed inputs, MLA (head 0 of k is the shared latent), prefill_kv_cache in both layouts,
pack metadata, and flash-mlm's validation rules (errors leave the cache unchanged)."""

import numpy as np
import pytest

import reference
from helpers import check, make, randn, require

torch = require("torch")
from cflash import flash_mlm as fm  # noqa: E402 (torch first: the drop-in is torch-only)

DTYPES = ["float32", "float16", "bfloat16"]


def t(x, dtype="float32"):
    return make(x, "torch", dtype)


def ref_padded(q, k, v, lengths, contexts, scale, is_mla=False, cumulative=False, rnd=None):
    """flash-mlm semantics on padded [B, H, N, D] fp64 arrays: out [B, H, N, D] (zeros past each
    length). contexts: [(k_c [L, Hk, D], v_c)] (Hk = 1 with MLA), one shared or one per batch entry."""
    B, H, N, D = q.shape
    lengths = [N] * B if lengths is None else [int(n) for n in lengths]
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    pack = lambda x: np.concatenate([x[b, :, :lengths[b]].transpose(1, 0, 2) for b in range(B)])
    kp = pack(k[:, :1] if is_mla else k)
    vp = kp if is_mla else pack(v)
    kw = {} if rnd is None else dict(rnd=rnd)
    o, _ = reference.mlm(pack(q), kp, vp, contexts, cu_q=cu, cumulative=cumulative, scale=scale, **kw)
    out = np.zeros((B, H, N, D))
    for b in range(B):
        out[b, :, :lengths[b]] = o[cu[b]:cu[b + 1]].transpose(1, 0, 2)
    return out, None


def check_padded(out, dtype, *args, **kw):
    check(out, None, lambda rnd: ref_padded(*args, rnd=rnd, **kw), dtype)


def as_contexts(k, v, is_mla=False):
    """The contexts a dense prefill of k, v [B, H, N, D] stores: one per batch entry."""
    return [(k[b, :1].transpose(1, 0, 2), k[b, :1].transpose(1, 0, 2)) if is_mla else
            (k[b].transpose(1, 0, 2), v[b].transpose(1, 0, 2)) for b in range(k.shape[0])]


def flat_cache(contexts, pad=0):
    """flash-mlm's packed cache layout: [H * total, D] head-major (plus `pad` zero rows per head)
    and cu_seqlens_kv; contexts [(k_c [L, H, D], v_c)]."""
    def rows(i):
        x = np.concatenate([c[i] for c in contexts])
        x = np.concatenate([x, np.zeros((pad,) + x.shape[1:])])
        return x.transpose(1, 0, 2).reshape(-1, x.shape[-1])
    cu = np.concatenate([[0], np.cumsum([len(c[0]) for c in contexts])]).astype(np.int32)
    return rows(0), rows(1), torch.from_numpy(cu), int(cu[-1]) + pad


# ---- the README's quick usage (seed), on the CPU ----

def test_readme_compressed_path(rng):
    B, H, N, D = 2, 8, 128, 64
    q, k, v = (randn(rng, (B, H, N, D), "float16") for _ in range(3))
    lengths_q = torch.tensor([N, N - 16], dtype=torch.int32)
    q_meta = fm.build_pack_metadata(lengths_q, N=N, block_n=64)
    cache = fm.InferenceCache()
    layer_id = 0
    packed_out = fm.flash_attn_mlm_compressed(
        t(q, "float16"), t(k, "float16"), t(v, "float16"), num_heads=H, q_meta=q_meta, scale=1.0 / (D ** 0.5),
        inference_cache=cache, layer_id=layer_id, prefill=True, causal_query_seq_attn=True)
    out = fm.unpack_from_kernel(packed_out, q_meta, H=H)
    assert packed_out.shape == (H * (2 * N - 16), D) and out.shape == (B, H, N, D)
    assert packed_out.dtype == torch.float16
    check_padded(out, "float16", q, k, v, [N, N - 16], [], 1.0 / D ** 0.5, cumulative=True)
    entry = cache.get_kv_cache(0, is_mla=False, num_heads=H, head_dim=D, dtype=torch.float16, device="cpu")
    assert entry.context_batch_size == B and entry.cu_seqlens_kv.tolist() == [0, N, 2 * N - 16]


def test_readme_dense_path(rng):
    B, H, N, D = 2, 8, 128, 64
    q, k, v = (randn(rng, (B, H, N, D), "float16") for _ in range(3))
    cache = fm.InferenceCache()
    layer_id = 0
    out = fm.flash_attn_mlm(t(q, "float16"), t(k, "float16"), t(v, "float16"), scale=1.0 / (D ** 0.5),
                            inference_cache=cache, layer_id=layer_id, prefill=True)
    assert out.shape == (B, H, N, D) and out.dtype == torch.float16
    check_padded(out, "float16", q, k, v, None, [], 1.0 / D ** 0.5)
    # the next step attends to what the prefill stored (context b for batch entry b)
    q2, k2, v2 = (randn(rng, (B, H, 16, D), "float16") for _ in range(3))
    out = fm.flash_attn_mlm(t(q2, "float16"), t(k2, "float16"), t(v2, "float16"), 1.0 / D ** 0.5, cache, 0)
    check_padded(out, "float16", q2, k2, v2, None, as_contexts(k, v), 1.0 / D ** 0.5)


# ---- dense launcher ----

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_mla", [False, True], ids=["mha", "mla"])
def test_dense_prefill_then_context(rng, dtype, is_mla):
    B, H, N, D, scale = 3, 2, 6, 16, 0.55
    q1, k1, v1 = (randn(rng, (B, H, N, D), dtype) for _ in range(3))
    q2, k2, v2 = (randn(rng, (B, H, 4, D), dtype) for _ in range(3))
    cache = fm.InferenceCache()
    out = fm.flash_attn_mlm(t(q1, dtype), t(k1, dtype), t(v1, dtype), scale, cache, 3, is_mla=is_mla, prefill=True)
    check_padded(out, dtype, q1, k1, v1, None, [], scale, is_mla)
    out = fm.flash_attn_mlm(t(q2, dtype), t(k2, dtype), t(v2, dtype), scale, cache, 3, is_mla=is_mla,
                            context_batch_size=B)
    check_padded(out, dtype, q2, k2, v2, None, as_contexts(k1, v1, is_mla), scale, is_mla)
    if is_mla:  # only head 0 of k is read, and v not at all
        junk = t(randn(rng, (B, H, 4, D), dtype), dtype)
        k_other = t(k2, dtype).clone()
        k_other[:, 1:] = 9.0
        again = fm.flash_attn_mlm(t(q2, dtype), k_other, junk, scale, cache, 3, is_mla=True)
        assert torch.equal(again, out)


def test_dense_shared_context_and_concatenation(rng):
    """A prefill with B = 1 stores one context, shared by every batch entry later;
    context_batch_size=1 over an entry of B contexts attends to all of them concatenated."""
    H, N, D, scale = 2, 5, 16, 0.4
    q0, k0, v0 = (randn(rng, (1, H, N, D)) for _ in range(3))
    cache = fm.InferenceCache()
    fm.flash_attn_mlm(t(q0), t(k0), t(v0), scale, cache, "enc", prefill=True)
    q, k, v = (randn(rng, (3, H, 2, D)) for _ in range(3))
    out = fm.flash_attn_mlm(t(q), t(k), t(v), scale, cache, "enc")
    check_padded(out, "float32", q, k, v, None, as_contexts(k0, v0), scale)
    fm.flash_attn_mlm(t(q), t(k), t(v), scale, cache, "enc", prefill=True)  # now 3 contexts of 2
    q2, k2, v2 = (randn(rng, (3, H, 4, D)) for _ in range(3))
    out = fm.flash_attn_mlm(t(q2), t(k2), t(v2), scale, cache, "enc", context_batch_size=1)
    cs = as_contexts(k, v)
    concat = [(np.concatenate([c[0] for c in cs]), np.concatenate([c[1] for c in cs]))]
    check_padded(out, "float32", q2, k2, v2, None, concat, scale)


# ---- packed launchers ----

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_mla", [False, True], ids=["mha", "mla"])
def test_compressed_with_packed_cache(rng, dtype, is_mla):
    """prefill_kv_cache with cu_seqlens_kv (contexts [5, 3], padded rows past cu[-1])."""
    B, H, N, D, scale = 2, 3, 8, 16, 0.5
    lengths = [8, 5]
    q, k, v = (randn(rng, (B, H, N, D), dtype) for _ in range(3))
    hk = 1 if is_mla else H
    cs = [(randn(rng, (n, hk, D), dtype), None) for n in (5, 3)]
    cs = [(c, c if is_mla else randn(rng, c.shape, dtype)) for c, _ in cs]
    kc, vc, cu, total = flat_cache(cs, pad=4)
    cache = fm.InferenceCache()
    cache.prefill_kv_cache(0, k_cache=t(kc, dtype), v_cache=t(vc, dtype), total_context_len=total,
                           cu_seqlens_kv=cu, context_batch_size=B, is_mla=is_mla, num_heads=H, head_dim=D)
    meta = fm.build_pack_metadata(torch.tensor(lengths), N, block_n=32)
    packed = fm.flash_attn_mlm_compressed(t(q, dtype), t(k, dtype), t(v, dtype), H, meta, scale,
                                          inference_cache=cache, layer_id=0, is_mla=is_mla)
    assert packed.shape == (H * 13, D)
    check_padded(fm.unpack_from_kernel(packed, meta, H), dtype, q, k, v, lengths, cs, scale, is_mla)


def test_compressed_cumulative_and_empty_context(rng):
    """causal_query_seq_attn with lengths [9, 7, 5]; an entry of empty contexts (flash-mlm's
    total_context_len=0 test) equals no cache at all."""
    B, H, N, D, scale = 3, 2, 10, 16, 0.65
    lengths = [9, 7, 5]
    q, k, v = (randn(rng, (B, H, N, D)) for _ in range(3))
    cache = fm.InferenceCache()
    cache.prefill_kv_cache(0, k_cache=torch.empty(0, D), v_cache=torch.empty(0, D), total_context_len=0,
                           cu_seqlens_kv=torch.zeros(B + 1, dtype=torch.int32), context_batch_size=B,
                           is_mla=False, num_heads=H, head_dim=D)
    meta = fm.build_pack_metadata(torch.tensor(lengths), N, 32)

    def run(**kw):
        return fm.flash_attn_mlm_compressed(t(q), t(k), t(v), H, meta, scale, causal_query_seq_attn=True, **kw)

    with_cache, without = run(inference_cache=cache, layer_id=0), run()
    assert torch.equal(with_cache, without)
    check_padded(fm.unpack_from_kernel(without, meta, H), "float32", q, k, v, lengths, [], scale, cumulative=True)
    # with per-batch contexts next to the cumulative new tokens
    cs = [(randn(rng, (n, H, D)), randn(rng, (n, H, D))) for n in (2, 0, 4)]
    kc, vc, cu, total = flat_cache(cs)
    cache.prefill_kv_cache(0, k_cache=t(kc), v_cache=t(vc), cu_seqlens_kv=cu, context_batch_size=B,
                           is_mla=False, num_heads=H, head_dim=D)
    out = fm.unpack_from_kernel(run(inference_cache=cache, layer_id=0), meta, H)
    check_padded(out, "float32", q, k, v, lengths, cs, scale, cumulative=True)
    # context_batch_size=1: the three contexts concatenated, shared by every sequence
    out = fm.unpack_from_kernel(run(inference_cache=cache, layer_id=0, context_batch_size=1), meta, H)
    concat = [(np.concatenate([c[0] for c in cs]), np.concatenate([c[1] for c in cs]))]
    check_padded(out, "float32", q, k, v, lengths, concat, scale, cumulative=True)


def test_prefill_kv_cache_dense_layout_both_paths(rng):
    """cu_seqlens_kv omitted: [context_batch_size * H * L, D] rows, batch-major; both launchers
    read context b for batch entry b."""
    B, H, N, D, L, scale = 2, 2, 6, 16, 3, 0.5
    ck, cv = randn(rng, (B, H, L, D)), randn(rng, (B, H, L, D))
    cache = fm.InferenceCache()
    cache.prefill_kv_cache(1, k_cache=t(ck.reshape(-1, D)), v_cache=t(cv.reshape(-1, D)), context_batch_size=B,
                           is_mla=False, num_heads=H, head_dim=D)
    cs = as_contexts(ck, cv)
    q, k, v = (randn(rng, (B, H, N, D)) for _ in range(3))
    check_padded(fm.flash_attn_mlm(t(q), t(k), t(v), scale, cache, 1), "float32", q, k, v, None, cs, scale)
    meta = fm.build_pack_metadata(torch.tensor([4, 6]), N, 32)
    packed = fm.flash_attn_mlm_compressed(t(q), t(k), t(v), H, meta, scale, cache, 1)
    check_padded(fm.unpack_from_kernel(packed, meta, H), "float32", q, k, v, [4, 6], cs, scale)


@pytest.mark.parametrize("is_mla", [False, True], ids=["mha", "mla"])
def test_precompressed_padded_rows(rng, is_mla):
    """Pre-packed [H * total_q_len, D] inputs with padding rows: the same output as the
    compressed launcher on the real rows, zeros on the padding; prefill stores the real rows."""
    B, H, N, D, scale = 2, 2, 6, 16, 0.5
    lengths = [6, 3]
    q, k, v = (randn(rng, (B, H, N, D)) for _ in range(3))
    meta = fm.build_pack_metadata(torch.tensor(lengths), N, 4)
    total, padded = 9, 12
    def pack(x, h):  # [B, h, N, D] -> [h * padded, D], head-major, zero rows past the tokens
        rows = t(x)[:, :h].transpose(1, 2)[meta.token_indices // N, meta.token_indices % N]
        return torch.cat([rows, torch.zeros(padded - total, h, D)]).transpose(0, 1).reshape(-1, D)

    qp, kp = pack(q, H), pack(k, 1 if is_mla else H)
    vp = kp if is_mla else pack(v, H)
    cache = fm.InferenceCache()
    out = fm.flash_attn_mlm_precompressed(qp, kp, vp, H, padded, meta.cu_seqlens, meta.batch_ids_q,
                                          meta.q_tile_starts_q, scale, cache, 0, is_mla=is_mla, prefill=True)
    assert out.shape == (H * padded, D)
    heads = out.reshape(H, padded, D)
    assert torch.equal(heads[:, total:], torch.zeros(H, padded - total, D))
    want = fm.flash_attn_mlm_compressed(t(q), t(k), t(v), H, meta, scale, is_mla=is_mla, block_n=4)
    assert torch.equal(heads[:, :total].reshape(-1, D), want)
    entry = cache.get_kv_cache(0, is_mla=is_mla, num_heads=H, head_dim=D, dtype=torch.float32, device="cpu")
    assert entry.total_context_len == total and entry.cu_seqlens_kv.tolist() == [0, 6, 9]
    q2, k2, v2 = (randn(rng, (B, H, 2, D)) for _ in range(3))
    out = fm.flash_attn_mlm(t(q2), t(k2), t(v2), scale, cache, 0, is_mla=is_mla)
    cs = [(k[b, :1 if is_mla else H, :lengths[b]].transpose(1, 0, 2),
           (k if is_mla else v)[b, :1 if is_mla else H, :lengths[b]].transpose(1, 0, 2)) for b in range(B)]
    check_padded(out, "float32", q2, k2, v2, None, cs, scale, is_mla)


# ---- cache bookkeeping ----

def test_layer_ids_clear_and_get_kv_cache(rng):
    H, D = 2, 16
    x = lambda: t(randn(rng, (1, H, 3, D)))
    cache = fm.InferenceCache()
    fm.flash_attn_mlm(x(), x(), x(), 0.5, cache, 3, prefill=True)
    e = cache.get_kv_cache("3", is_mla=False, num_heads=H, head_dim=D, dtype=torch.float32, device="cpu")
    assert (e.k_cache, e.v_cache, e.total_context_len, e.context_batch_size) == (None, None, 3, 1)
    for kw, msg in [(dict(is_mla=True), "is_mla"), (dict(num_heads=4), "num_heads"), (dict(head_dim=8), "head_dim"),
                    (dict(dtype=torch.float16), "dtype")]:
        args = dict(is_mla=False, num_heads=H, head_dim=D, dtype=torch.float32, device="cpu")
        args.update(kw)
        with pytest.raises(ValueError, match=msg):
            cache.get_kv_cache(3, **args)
    cache.clear_layer(3)
    with pytest.raises(ValueError, match="No cached KV context"):
        cache.get_kv_cache(3, is_mla=False, num_heads=H, head_dim=D, dtype=torch.float32, device="cpu")
    cache.clear_layer("never stored")
    fm.flash_attn_mlm(x(), x(), x(), 0.5, cache, 0, prefill=True)
    cache.clear()
    with pytest.raises(ValueError):
        cache.get_kv_cache(0, is_mla=False, num_heads=H, head_dim=D, dtype=torch.float32, device="cpu")


def test_pack_metadata_and_packing_cache():
    meta = fm.build_pack_metadata(torch.tensor([3, 0, 5]), N=5, block_n=2)
    assert (meta.B, meta.N, meta.total_tokens, meta.batch_ids_block_n) == (3, 5, 8, 2)
    assert meta.cu_seqlens.tolist() == [0, 3, 3, 8] and meta.cu_seqlens.dtype == torch.int32
    assert meta.token_indices.tolist() == [0, 1, 2, 10, 11, 12, 13, 14]
    assert meta.batch_ids_q.tolist() == [0, 0, 2, 2, 2] and meta.q_tile_starts_q.tolist() == [0, 2, 3, 5, 7]
    packed = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(2 * 8, 3)
    out = fm.unpack_from_kernel(packed, meta, H=2)
    assert out.shape == (3, 2, 5, 3) and torch.equal(out[1], torch.zeros(2, 5, 3))
    assert torch.equal(out[2, 1, 4], packed[8 + 7])
    assert torch.equal(fm.unpack_from_kernel(packed.reshape(2, 8, 3), meta, 2), out)
    for args, msg in [((torch.tensor([[1]]), 2, 1), "rank-1"), ((torch.tensor([1]), -1, 1), "N must"),
                      ((torch.tensor([1]), 2, 0), "block_n"), ((torch.tensor([3]), 2, 1), r"\[0, N\]")]:
        with pytest.raises(ValueError, match=msg):
            fm.build_pack_metadata(*args)
    with pytest.raises(ValueError, match="H \\* total_tokens"):
        fm.unpack_from_kernel(packed[:5], meta, 2)
    with pytest.raises(ValueError, match="rank-2 or rank-3"):
        fm.unpack_from_kernel(packed[0], meta, 2)
    pc = fm.PackingCache()
    a = pc.get_2d("q", 4, 3, dtype=torch.float16, device="cpu")
    b = pc.get_2d("q", 2, 3, dtype=torch.float16, device="cpu")
    assert a.shape == (4, 3) and b.data_ptr() == a.data_ptr()
    assert pc.get_pack_metadata(torch.tensor([3, 0, 5]), N=5, block_n=2) is \
        pc.get_pack_metadata(torch.tensor([3, 0, 5], dtype=torch.int32), N=5, block_n=2)
    with pytest.raises(ValueError):
        pc.get_2d("q", -1, 3, dtype=torch.float16, device="cpu")
    pc.clear()


# ---- flash-mlm's validation rules; the cache is unchanged after every error ----

def test_errors_leave_cache_unchanged(rng):
    B, H, N, D = 2, 2, 4, 16
    q, k, v = (t(randn(rng, (B, H, N, D))) for _ in range(3))
    cache = fm.InferenceCache()
    fm.flash_attn_mlm(q, k, v, 0.5, cache, 0, prefill=True)
    meta = fm.build_pack_metadata(torch.tensor([4, 2]), N, 32)
    meta1 = fm.build_pack_metadata(torch.tensor([3]), N, 32)
    probe = lambda: fm.flash_attn_mlm(q, k, v, 0.5, cache, 0)
    before = probe()
    dense, comp = fm.flash_attn_mlm, fm.flash_attn_mlm_compressed
    k2, v2 = k.reshape(-1, D), v.reshape(-1, D)

    def pkv(**kw):
        args = dict(k_cache=k2, v_cache=v2, context_batch_size=B, is_mla=False, num_heads=H, head_dim=D)
        cache.prefill_kv_cache(0, **{**args, **kw})

    cases = [
        (ValueError, "prefill=True requires inference_cache", lambda: dense(q, k, v, 0.5, prefill=True)),
        (ValueError, "provided together", lambda: dense(q, k, v, 0.5, cache)),
        (ValueError, "provided together", lambda: dense(q, k, v, 0.5, layer_id=0)),
        (ValueError, "rank-4", lambda: dense(q[0], k[0], v[0], 0.5, cache, 0, prefill=True)),
        (ValueError, "same shape", lambda: dense(q, k[:, :, :2], v, 0.5, cache, 0, prefill=True)),
        (ValueError, "context_batch_size", lambda: dense(q, k, v, 0.5, cache, 0, context_batch_size=3)),
        (ValueError, "context_batch_size must be >= 1", lambda: dense(q, k, v, 0.5, cache, 0, context_batch_size=0)),
        (ValueError, "is_mla", lambda: dense(q, k, v, 0.5, cache, 0, is_mla=True)),        # not a silent miss
        (ValueError, "num_heads", lambda: dense(q[:, :1], k[:, :1], v[:, :1], 0.5, cache, 0)),
        (ValueError, "dtype", lambda: dense(q.half(), k.half(), v.half(), 0.5, cache, 0)),
        (ValueError, "head_dim", lambda: dense(q[..., :8], k[..., :8], v[..., :8], 0.5, cache, 0)),
        (ValueError, "scale", lambda: dense(q, k, v, 0.0, cache, 0, prefill=True)),
        (TypeError, "torch.Tensor", lambda: dense(q.numpy(), k, v, 0.5, cache, 0, prefill=True)),
        (TypeError, "InferenceCache", lambda: dense(q, k, v, 0.5, object(), 0, prefill=True)),
        (TypeError, "float64", lambda: dense(q.double(), k.double(), v.double(), 0.5, cache, 0, prefill=True)),
        (ValueError, "num_heads", lambda: comp(q, k, v, 3, meta, 0.5, cache, 0, prefill=True)),
        (ValueError, "q_meta", lambda: comp(q[:1], k[:1], v[:1], H, meta, 0.5, cache, 0, prefill=True)),
        (ValueError, "contexts", lambda: comp(q[:1], k[:1], v[:1], H, meta1, 0.5, cache, 0)),  # 2 contexts, B = 1
        (ValueError, "pre-packed", lambda: fm.flash_attn_mlm_precompressed(
            q, k, v, H, 6, meta.cu_seqlens, meta.batch_ids_q, meta.q_tile_starts_q, 0.5, cache, 0, prefill=True)),
        (ValueError, "num_heads \\* total_q_len", lambda: fm.flash_attn_mlm_precompressed(
            q.reshape(-1, D)[:10], k.reshape(-1, D)[:12], v.reshape(-1, D)[:12], H, 6, meta.cu_seqlens,
            meta.batch_ids_q, meta.q_tile_starts_q, 0.5, cache, 0, prefill=True)),
        (ValueError, "within total_q_len", lambda: fm.flash_attn_mlm_precompressed(
            q.reshape(-1, D)[:8], k.reshape(-1, D)[:8], v.reshape(-1, D)[:8], H, 4, meta.cu_seqlens,
            meta.batch_ids_q, meta.q_tile_starts_q, 0.5, cache, 0, prefill=True)),
        (ValueError, "must be >= 1", lambda: pkv(context_batch_size=0)),
        (ValueError, "requires v_cache", lambda: pkv(v_cache=None)),
        (ValueError, "contiguous", lambda: pkv(k_cache=k2[::2], v_cache=v2[::2])),
        (ValueError, "divisible", lambda: pkv(k_cache=k2[:6], v_cache=v2[:6], context_batch_size=4)),
        (ValueError, "second dim", lambda: pkv(head_dim=8)),
        (ValueError, "first dim", lambda: pkv(total_context_len=3, context_batch_size=1)),
        (ValueError, "incompatible", lambda: pkv(cu_seqlens_kv=torch.tensor([0, 8]))),
        (ValueError, "within total_context_len",
         lambda: pkv(cu_seqlens_kv=torch.tensor([0, 9]), context_batch_size=1)),
        (ValueError, "cu_seqlens", lambda: pkv(cu_seqlens_kv=torch.tensor([0, 5, 3]))),      # decreasing
    ]
    for exc, msg, call in cases:
        with pytest.raises(exc, match=msg):
            call()
    assert torch.equal(probe(), before)
    e = cache.get_kv_cache(0, is_mla=False, num_heads=H, head_dim=D, dtype=torch.float32, device="cpu")
    assert e.context_batch_size == B and e.cu_seqlens_kv.tolist() == [0, N, 2 * N]
