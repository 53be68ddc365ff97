"""One decode call of the PERF.md grid's 268 MB row (B=8, L=8192, Hq:Hk=32:8, D=128, bf16,
q_len 1), contiguous and paged (page 16), a few times each: the program ncu profiles.

  ncu --clock-control none --kernel-name regex:decode --launch-skip 2 --launch-count 2 \\
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \\
      python3 scripts/profile_decode.py --build build-gpu
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from bench_gpu import load_cflash  # noqa: E402
from bench_gpu_decode import paged_copy  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build-gpu")
    ap.add_argument("--page", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    import torch
    cflash = load_cflash(args.build)
    B, L, Hq, Hk, D = 8, 8192, 32, 8, 128
    dt, dev = torch.bfloat16, torch.device("cuda")
    k = torch.randn(B, L, Hk, D, device=dev, dtype=dt)
    v = torch.randn(B, L, Hk, D, device=dev, dtype=dt)
    q = torch.randn(B, 1, Hq, D, device=dev, dtype=dt)
    seqlens = torch.full((B,), L, dtype=torch.int32, device=dev)
    pk, pv, table = paged_copy(k, v, args.page, torch.Generator().manual_seed(0))
    for _ in range(args.reps):
        cflash.attn_kvcache(q, k, v, seqlens)
    for _ in range(args.reps):
        cflash.attn_kvcache(q, pk, pv, seqlens, block_table=table)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
