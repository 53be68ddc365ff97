"""cflash serving torch.nn.functional.scaled_dot_product_attention on CPU, checked against torch.

    PYTHONPATH=python python examples/python/sdpa_patch.py   (from the repository root, or with
                                                              cflash installed)

A long causal call passes the sequence gate (CFLASH_SDPA_MIN_SEQ, default 1024) and is served by
cflash; a short one falls through to torch. Exits non-zero if anything disagrees.
"""

import sys

import torch
import torch.nn.functional as F

import cflash.sdpa

torch.manual_seed(0)
torch_sdpa = F.scaled_dot_product_attention
q, k, v = (torch.randn(1, 4, 1024, 64) for _ in range(3))  # [B, H, L, D]
short = torch.randn(1, 4, 64, 64)

cflash.sdpa.install()
out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # max(Lq, Lk) = 1024: cflash
F.scaled_dot_product_attention(short, short, short)            # 64 tokens: torch
counts = cflash.sdpa.stats()
cflash.sdpa.uninstall()

diff = (out - torch_sdpa(q, k, v, is_causal=True)).abs().max().item()
ok = (counts["served"] == 1 and counts["gate"] == 1 and diff < 1e-5
      and F.scaled_dot_product_attention is torch_sdpa)
print(f"sdpa_patch: {'ok' if ok else 'FAILED'}: served {counts['served']} call (max abs diff vs torch "
      f"{diff:.1e}), {counts['gate']} fell through at the gate; uninstalled")
sys.exit(0 if ok else 1)
