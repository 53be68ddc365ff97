"""MagiAttention / LocateAnything range attention on the CPU with cflash.magi.

Two packed sequences of 10 tokens, each with LocateAnything's MTP decode window (block 3): rows
0-6 attend causally to keys 0-6, rows 7-9 attend to keys 0-5 and 7-9. The plan is given twice:
as MagiAttention's flat slice list (flex_flash_attn_func, returns out and lse [Tq, Hq]) and as
LocateAnything's grouped form with segment_offsets (range_attention, returns out). Both are
checked against a small NumPy fp64 softmax over the same visibility matrix.

    PYTHONPATH=python python examples/python/magi_ranges.py
"""

import numpy as np

from cflash.magi import flex_flash_attn_func, range_attention

L, HQ, HK, D = 10, 8, 2, 64
rng = np.random.default_rng(0)
q = rng.standard_normal((2 * L, HQ, D)).astype(np.float32)
k = rng.standard_normal((2 * L, HK, D)).astype(np.float32)
v = rng.standard_normal((2 * L, HK, D)).astype(np.float32)

FULL, CAUSAL = 0, 1
q_ranges, k_ranges, types, offsets = [], [], [], [0]
for b in range(2):
    o = b * L
    for qr, kr, t in (((o, o + 7), (o, o + 7), CAUSAL),          # group: rows 0-6
                      ((o + 7, o + 10), (o, o + 6), FULL),         # group: rows 7-9, two windows
                      ((o + 7, o + 10), (o + 7, o + 10), FULL)):
        q_ranges.append(qr)
        k_ranges.append(kr)
        types.append(t)
    offsets += [offsets[-1] + 1, offsets[-1] + 3]
q_ranges, k_ranges = np.array(q_ranges, np.int32), np.array(k_ranges, np.int32)
types, offsets = np.array(types, np.int32), np.array(offsets, np.int32)

out, lse = flex_flash_attn_func(q, k, v, q_ranges, k_ranges, types)
out_la = range_attention(q, k, v, q_ranges, k_ranges, types, D ** -0.5, segment_offsets=offsets)

# fp64 reference: the window rule as a dense visibility matrix, one softmax per row
vis = np.zeros((2 * L, 2 * L), bool)
for b in range(2):
    o = b * L
    for i in range(7):
        vis[o + i, o:o + i + 1] = True
    vis[o + 7:o + 10, o:o + 6] = vis[o + 7:o + 10, o + 7:o + 10] = True
kk = np.repeat(k.astype(np.float64), HQ // HK, axis=1)
vv = np.repeat(v.astype(np.float64), HQ // HK, axis=1)
s = np.einsum("ihd,jhd->hij", q.astype(np.float64), kk) / np.sqrt(D)
s = np.where(vis, s, -np.inf)
ref_lse = np.log(np.exp(s).sum(-1))                                   # [Hq, Tq]
ref = np.einsum("hij,jhd->ihd", np.exp(s - ref_lse[..., None]), vv)

err = max(np.abs(out - ref).max(), np.abs(out_la - ref).max())
lse_err = np.abs(lse - ref_lse.T).max()
assert lse.shape == (2 * L, HQ) and err < 1e-5 and lse_err < 1e-5, (err, lse_err)
print(f"magi_ranges: {len(types)} slices, out {out.shape}, lse {lse.shape}: "
      f"max error {err:.1e} (out), {lse_err:.1e} (lse) vs fp64 -- ok")
