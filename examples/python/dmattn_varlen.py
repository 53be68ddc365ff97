"""flash-dmattn's varlen attention on the CPU with cflash.dmattn.

Decode-style batch: 3 sequences with 1-2 queries over 24-40 cached keys, GQA (8 query heads, 2
key/value heads), a key-side boolean mask [total_k, Hk] (e.g. a dynamic-sparsity gate) and a
query-side bias [total_q, 1, max_seqlen_k], the layouts recognised from the shapes, causal.
Checked against a small NumPy fp64 softmax per sequence.

    PYTHONPATH=python python examples/python/dmattn_varlen.py
"""

import numpy as np

from cflash.dmattn import flash_dmattn_varlen_func

HQ, HK, D = 8, 2, 64
lens_q, lens_k = [1, 2, 1], [24, 40, 31]
cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
tq, tk, max_q, max_k = int(cu_q[-1]), int(cu_k[-1]), max(lens_q), max(lens_k)

rng = np.random.default_rng(0)
q = rng.standard_normal((tq, HQ, D)).astype(np.float32)
k = rng.standard_normal((tk, HK, D)).astype(np.float32)
v = rng.standard_normal((tk, HK, D)).astype(np.float32)
mask = rng.random((tk, HK)) < 0.5                                    # key-side: True = keep
bias = rng.standard_normal((tq, 1, max_k)).astype(np.float32)       # query-side, one head variant

out = flash_dmattn_varlen_func(q, k, v, mask, bias, cu_q, cu_k, max_q, max_k, is_causal=True)

ref = np.zeros((tq, HQ, D))
for b in range(len(lens_q)):
    (q0, q1), (k0, k1) = cu_q[b:b + 2], cu_k[b:b + 2]
    lq, lk = q1 - q0, k1 - k0
    kk = np.repeat(k[k0:k1].astype(np.float64), HQ // HK, axis=1)
    vv = np.repeat(v[k0:k1].astype(np.float64), HQ // HK, axis=1)
    s = np.einsum("ihd,jhd->hij", q[q0:q1].astype(np.float64), kk) / np.sqrt(D)
    s += bias[q0:q1, 0, :lk][None]                                    # same bias for every head
    keep = np.repeat(mask[k0:k1].T, HQ // HK, axis=0)[:, None, :]     # head h reads mask column h // 4
    keep = keep & (np.arange(lk)[None, :] <= np.arange(lq)[:, None] + lk - lq)   # bottom-right causal
    s = np.where(keep, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    ref[q0:q1] = np.einsum("hij,jhd->ihd", p / p.sum(-1, keepdims=True), vv)

err = np.abs(out - ref).max()
assert err < 1e-5, err
print(f"dmattn_varlen: {len(lens_q)} sequences, total_q {tq}, total_k {tk}, key-side mask {mask.shape}, "
      f"query-side bias {bias.shape}: max error {err:.1e} vs fp64 -- ok")
