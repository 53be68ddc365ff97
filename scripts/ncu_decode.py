"""One contiguous and one paged decode call (bf16, D = 128, Hq:Hk 32:8, B = 32, L = 4096, no
split), for profiling the decode kernel under Nsight Compute:

    ncu -k regex:decode_kernel --section SpeedOfLight --section WarpStateStats \
        python3 scripts/ncu_decode.py [--build build-gpu] [--page 256]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from bench_gpu import load_cflash  # noqa: E402
from bench_gpu_decode import paged_copy  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--build", default="build-gpu")
ap.add_argument("--page", type=int, default=256)
args = ap.parse_args()
import torch  # noqa: E402

cflash = load_cflash(args.build)
B, L, Hq, Hk, D = 32, 4096, 32, 8, 128
dt, dev = torch.bfloat16, "cuda"
k, v = torch.randn(B, L, Hk, D, device=dev, dtype=dt), torch.randn(B, L, Hk, D, device=dev, dtype=dt)
q = torch.randn(B, 1, Hq, D, device=dev, dtype=dt)
seq = torch.full((B,), L, dtype=torch.int32, device=dev)
pk, pv, table = paged_copy(k, v, args.page, torch.Generator().manual_seed(0))
o1 = cflash.attn_kvcache(q, k, v, seq)
o2 = cflash.attn_kvcache(q, pk, pv, seq, block_table=table)
torch.cuda.synchronize()
print("max diff paged vs contiguous:", (o1.float() - o2.float()).abs().max().item())
