"""flash-mlm's README quick usage, run on CPU tensors through cflash's drop-in
(cflash.flash_mlm), each output checked against a plain fp32 torch computation.

    PYTHONPATH=python python examples/python/flash_mlm_usage.py

The snippets are flash-mlm's with device="cuda" dropped (cflash runs on the CPU).
"""

import torch

from cflash.flash_mlm import (InferenceCache, build_pack_metadata, flash_attn_mlm,
                              flash_attn_mlm_compressed, unpack_from_kernel)


def reference(q, keys, values, scale):
    """softmax(q keys^T * scale) values in fp32, per head: q [H, Lq, D], keys/values [H, Lk, D]."""
    p = torch.softmax((q.float() @ keys.float().transpose(-1, -2)) * scale, dim=-1)
    return p @ values.float()


def max_error(out, ref):
    return (out.float() - ref).abs().max().item()


# 1) Compressed path (packed queries)
B, H, N, D = 2, 8, 128, 64
q = torch.randn(B, H, N, D, dtype=torch.float16)
k = torch.randn_like(q)
v = torch.randn_like(q)

lengths_q = torch.tensor([N, N - 16], dtype=torch.int32)
q_meta = build_pack_metadata(lengths_q, N=N, block_n=64)

cache = InferenceCache()
layer_id = 0

packed_out = flash_attn_mlm_compressed(
    q,
    k,
    v,
    num_heads=H,
    q_meta=q_meta,
    scale=1.0 / (D ** 0.5),
    inference_cache=cache,
    layer_id=layer_id,
    # prefill=True stores this call's packed K/V as next-step context.
    prefill=True,
    # Optional: each query subsequence can attend previous subsequences.
    causal_query_seq_attn=True,
)
out = unpack_from_kernel(packed_out, q_meta, H=H)

# sequence b attends (no mask) to the tokens of sequences 0..b; the cache was empty
err1 = 0.0
for b in range(B):
    L = int(lengths_q[b])
    keys = torch.cat([k[j, :, :int(lengths_q[j])] for j in range(b + 1)], dim=1)
    values = torch.cat([v[j, :, :int(lengths_q[j])] for j in range(b + 1)], dim=1)
    err1 = max(err1, max_error(out[b, :, :L], reference(q[b, :, :L], keys, values, 1.0 / D ** 0.5)))
assert err1 < 1e-2, err1

# 2) Dense path (non-packed)
B, H, N, D = 2, 8, 128, 64
q = torch.randn(B, H, N, D, dtype=torch.float16)
k = torch.randn_like(q)
v = torch.randn_like(q)

cache = InferenceCache()
layer_id = 0

out = flash_attn_mlm(
    q,
    k,
    v,
    scale=1.0 / (D ** 0.5),
    inference_cache=cache,
    layer_id=layer_id,
    prefill=True,
)
err2 = max_error(out, reference(q, k, v, 1.0 / D ** 0.5))

# the next step sees the stored context (batch entry b: context b) next to its new tokens
q2, k2, v2 = (torch.randn(B, H, 16, D, dtype=torch.float16) for _ in range(3))
out2 = flash_attn_mlm(q2, k2, v2, scale=1.0 / (D ** 0.5), inference_cache=cache, layer_id=layer_id)
err3 = max_error(out2, reference(q2, torch.cat([k, k2], dim=2), torch.cat([v, v2], dim=2), 1.0 / D ** 0.5))
assert max(err2, err3) < 1e-2, (err2, err3)

print(f"flash-mlm usage on CPU: compressed {tuple(packed_out.shape)} max err {err1:.1e}; "
      f"dense {tuple(out.shape)} max err {err2:.1e}, with context {err3:.1e}: OK")
