"""A / B of one environment switch of the prefill kernel on the same GPU, interleaved.

Runs each case under CFLASH env setting A and setting B in alternating rounds (each round the
median of 5 timed calls, the result the median of the rounds; the library
reads its switches at every launch, so one process serves both), after checking both against an
fp32 torch reference on a slice of rows. Reports median TFLOP/s of each and the ratio A / B: a
GPU whose clocks drift between two separate benchmark runs (measured: +-15 % for the same kernel
on one H100 between runs minutes apart) cannot tell a 5 % change; alternating rounds can.

FLOPs: 4 * B * Hq * (visible scores) * D (QK^T and PV), as bench_gpu.py.

  python3 bench/bench_gpu_ab.py --env CFLASH_CUDA_KERNEL --a auto --b mma [--filter D=128]

(the prefill engine switch; docs/perf.md used it with a switch of a deleted experiment branch)
"""
import argparse
import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gpu import load_cflash, reference_slice, time_ms, visible_rows  # noqa: E402


def set_env(name, value):
    if value == "":
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build-gpu")
    ap.add_argument("--env", required=True)
    ap.add_argument("--a", default="", help="value for A ('' = unset)")
    ap.add_argument("--b", default="0", help="value for B ('' = unset)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--filter", default="", help="comma-separated substrings of case names")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    import torch
    cflash = load_cflash(args.build)
    dev, dt = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    cases = []
    for D in (64, 128, 256):
        for causal in (False, True):
            for L in (512, 1024, 2048, 4096, 8192, 16384):
                cases.append((f"prefill bf16 D={D} L={L} B={16384 // L} Hq={2048 // D} {'causal' if causal else 'full'}",
                              16384 // L, L, 2048 // D, D, causal))
    records = []
    print(f"{'case':<52} {'A':>8} {'B':>8} {'A/B':>6} ok   (A: {args.env}={args.a!r}, B: {args.b!r})")
    for name, B, L, H, D, causal in cases:
        if args.filter and not any(f in name for f in args.filter.split(",")):
            continue
        q, k, v = (torch.randn(B, L, H, D, device=dev, dtype=dt) for _ in range(3))
        out = torch.empty_like(q)
        run = lambda: cflash.attn_dense(q, k, v, causal=causal, out=out)  # noqa: E731
        rows = torch.arange(max(0, L - 64), L, device=dev)
        ref = reference_slice(q, k, v, causal, (-1, -1), 0.0, None, 1.0 / math.sqrt(D), rows)
        ok = True
        for val in (args.a, args.b):
            set_env(args.env, val)
            out.fill_(float("nan"))
            run()
            torch.cuda.synchronize()
            ok &= bool(torch.isfinite(out).all().item()) and (out[0, rows, 0].float() - ref).abs().max().item() < 2e-2
        flops = 4 * B * H * visible_rows(L, L, causal, (-1, -1)) * D
        ta, tb = [], []
        for _ in range(args.rounds):
            for val, acc in ((args.a, ta), (args.b, tb)):
                set_env(args.env, val)
                acc.append(time_ms(run, warmup=2, reps=5))
        fa, fb = flops / statistics.median(ta) / 1e9, flops / statistics.median(tb) / 1e9
        print(f"{name:<52} {fa:8.1f} {fb:8.1f} {fa / fb:6.3f} {'y' if ok else 'N'}")
        records.append({"case": name, "unit": "TFLOP/s", "ours": round(fa, 1), "peer": f"{args.env}={args.b}",
                        "peer_value": round(fb, 1), "ratio": round(fa / fb, 3), "correct": ok})
    set_env(args.env, "")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "commit": os.environ.get("CFLASH_COMMIT", ""),
                       "ab": {"env": args.env, "a": args.a, "b": args.b}, "records": records}, fh, indent=1)
    return 0 if all(r["correct"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
