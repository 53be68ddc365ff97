"""cflash's own Python API in one tour, on NumPy arrays (torch and JAX arrays work the same way):
dense GQA with a sliding window, packed variable-length sequences, a range plan, a KV cache with
in-place append, the state merge and the flash-mlm layer context. Each result is checked
against a small fp64 reference written here; prints one line.

    python examples/python/cflash_api.py
"""

import numpy as np

import cflash

rng = np.random.default_rng(0)


def ref(q, k, v, visible):
    """fp64 attention of one sequence: q [Lq, Hq, D], k/v [Lk, Hk, D], visible [Lq, Lk]."""
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, axis=1).astype(np.float64), np.repeat(v, g, axis=1).astype(np.float64)
    s = np.einsum("qhd,khd->hqk", q.astype(np.float64), k) / np.sqrt(q.shape[2])
    s = np.where(visible[None], s, -np.inf)
    m = s.max(-1, keepdims=True, initial=-np.inf)
    p = np.exp(s - np.where(np.isfinite(m), m, 0))
    l = p.sum(-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", p / np.where(l > 0, l, 1), v)


def randn(*shape):
    return rng.standard_normal(shape).astype(np.float32)


errors = {}

# 1. dense, GQA 8:2, causal with a 32-key sliding window (bottom-right aligned)
q, k, v = randn(1, 100, 8, 64), randn(1, 120, 2, 64), randn(1, 120, 2, 64)
out = cflash.attn_dense(q, k, v, causal=True, window=(32, 0))
i, j = np.arange(100)[:, None] + 20, np.arange(120)[None]
errors["dense"] = np.abs(out[0] - ref(q[0], k[0], v[0], (j <= i) & (j >= i - 32))).max()

# 2. packed variable-length sequences (cu_seqlens), one of them empty
cu = np.array([0, 30, 30, 75], np.int32)
q, k, v = randn(75, 4, 32), randn(75, 4, 32), randn(75, 4, 32)
out = cflash.attn_varlen(q, k, v, cu, cu, causal=True)
want = np.concatenate([ref(q[a:b], k[a:b], v[a:b], np.tri(b - a, dtype=bool)) for a, b in zip(cu[:-1], cu[1:])])
errors["varlen"] = np.abs(out - want).max()

# 3. a range plan: two documents, full attention inside each (MagiAttention-style slices)
plan = cflash.RangePlan([[0, 40], [40, 64]], [[0, 40], [40, 64]], Tq=64, Tk=64, attn_type_map=["full", "full"])
q, k, v = randn(64, 4, 32), randn(64, 4, 32), randn(64, 4, 32)
out = cflash.attn_range(q, k, v, plan)
doc = np.arange(64) >= 40
errors["range"] = np.abs(out - ref(q, k, v, doc[:, None] == doc[None])).max()

# 4. a KV cache: append 2 new keys at position 10, then attend (decode-style)
k_cache, v_cache = np.zeros((1, 64, 2, 32), np.float32), np.zeros((1, 64, 2, 32), np.float32)
k_cache[0, :10], v_cache[0, :10] = randn(10, 2, 32), randn(10, 2, 32)
q, k_new, v_new = randn(1, 1, 4, 32), randn(1, 2, 2, 32), randn(1, 2, 2, 32)
out = cflash.attn_kvcache(q, k_cache, v_cache, [10], k_new, v_new)
errors["kvcache"] = np.abs(out[0] - ref(q[0], k_cache[0, :12], v_cache[0, :12], np.ones((1, 12), bool))).max()

# 5. the merge: attention over keys [0, 60) from two halves
q, k, v = randn(1, 16, 4, 32), randn(1, 60, 4, 32), randn(1, 60, 4, 32)
o1, l1 = cflash.attn_dense(q, k[:, :25], v[:, :25], return_lse=True)
o2, l2 = cflash.attn_dense(q, k[:, 25:], v[:, 25:], return_lse=True)
out, _ = cflash.merge(o1, l1, o2, l2)
errors["merge"] = np.abs(out - cflash.attn_dense(q, k, v)).max()

# 6. flash-mlm layer context: store a context for layer 0, then attend to context + new tokens
cache = cflash.ContextCache()
ctx_k, ctx_v = randn(1, 20, 2, 32), randn(1, 20, 2, 32)
cache.store(0, ctx_k, ctx_v)
q, k, v = randn(1, 8, 4, 32), randn(1, 8, 2, 32), randn(1, 8, 2, 32)
out = cflash.attn_mlm(q, k, v, cache=cache, layer_id=0)
kk, vv = np.concatenate([ctx_k[0], k[0]]), np.concatenate([ctx_v[0], v[0]])
errors["mlm"] = np.abs(out[0] - ref(q[0], kk, vv, np.ones((8, 28), bool))).max()

worst = max(errors.values())
print("cflash_api: " + ", ".join(f"{n} {e:.1e}" for n, e in errors.items()) +
      (" -- ok" if worst < 1e-4 else " -- FAILED"))
raise SystemExit(0 if worst < 1e-4 else 1)
