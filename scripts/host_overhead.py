"""Host time of one call on the GPU (what a call costs the CPU before its kernel is queued).

Tiny shapes (the GPU work is a few microseconds), N calls queued back to back, one synchronize
at the end: microseconds of CPU time per call for torch SDPA, cflash.attn_dense, and the pieces
of cflash's path (DLPack export with and without DLPack's stream synchronization, the stream
lookup). bench/bench_gpu.py times each call alone (--inner 1), so this host time is part of its
short-sequence numbers; --inner N takes it out.

  python3 scripts/host_overhead.py --build build-gpu
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from bench_gpu import load_cflash  # noqa: E402


def per_call_us(fn, n=2000):
    import torch
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build-gpu")
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F
    cflash = load_cflash(args.build)
    from cflash import _env
    q, k, v = (torch.randn(1, 16, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = torch.empty_like(q)
    s = torch.cuda.current_stream().cuda_stream or 1  # DLPack: 1 names the legacy default stream
    from cflash import _api, _cflash
    params = _api._params(None, False, "bottom_right", (-1, -1), 0.0, None, None, None, None, None, None, 0, "auto",
                          like=q)
    _api._enter("dense", q, k, 64, 16, 16, params)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    rows = [("torch SDPA", lambda: F.scaled_dot_product_attention(qt, kt, vt)),
            ("cflash.attn_dense(out=)", lambda: cflash.attn_dense(q, k, v, out=out)),
            ("q.__dlpack__(stream=current)", lambda: q.__dlpack__(stream=s, max_version=(1, 0))),
            ("q.__dlpack__(stream=-1)", lambda: q.__dlpack__(stream=-1, max_version=(1, 0))),
            ("_env.call_stream(q)", lambda: _env.call_stream(q)),
            ("q.__dlpack_device__()", lambda: q.__dlpack_device__()),
            ("_cflash.attn_dense (C: 4 exports, checks, launch)", lambda: _cflash.attn_dense(q, k, v, out, None, **params))]
    for name, fn in rows:
        print(f"{name:<50} {per_call_us(fn):8.2f} us")


if __name__ == "__main__":
    main()
