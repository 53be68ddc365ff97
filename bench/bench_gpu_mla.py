"""GPU MLA decode benchmark: cflash's MLA kernel (D = 576, Dv = 512, V := K[..., :512], one
latent KV head; src/cuda/decode.cu) through cflash.attn_kvcache on torch CUDA tensors, against
torch SDPA on the same contiguous data (the first backend of cuDNN, efficient, math that accepts
the shape; FlashAttention-2 takes head dims up to 256 only), measured in the same run.

    python3 bench/bench_gpu_mla.py [--build build-gpu] [--quick] [--reps N] [--out FILE]

Grid: bf16, Hq 128 and 16 query heads on the one latent head (DeepSeek-V3 without and with
8-way tensor parallelism), q_len 1 and 2 (MTP), B in {1, 16, 64, 132}, cache length L 4096 and
16384 (full caches, non-causal); ours contiguous and paged with 64-key pages (FlashMLA's) in
shuffled pages.
Formulas: bytes = B * L * 576 * 2 (the latent cache, read once) + Q and O; FLOPs = B * Hq *
q_len * L * (576 + 512) * 2. FlashMLA reports up to 3000 GB/s memory-bound and 660 TFLOP/s
compute-bound on H800 (its README); quoted in docs/perf.md, not measured here.
Correctness first: batch entries 0 and B - 1 against a torch fp32 reference, tolerance 2x SDPA's
error + 1e-3 (SPEC.md section 1 style), output poisoned with NaN before and checked after.
Timing: bench_gpu_decode.py's (CUDA graphs, GPU sleep before each sample, CUDA events, median).
Results: bench/results/gpu_mla.json and a table on stdout.
"""

import argparse
import math
import os
import sys

os.environ.setdefault("CFLASH_SHIM", "off")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gpu import load_cflash  # noqa: E402
from bench_gpu_decode import time_ms  # noqa: E402
from gpu_results import write_results  # noqa: E402

D, DV, PAGE = 576, 512, 64
GRID = [(128, 1, 4096), (128, 16, 4096), (128, 64, 4096), (128, 132, 4096), (128, 16, 16384),
        (16, 1, 16384), (16, 16, 4096), (16, 64, 8192), (16, 132, 4096)]


def reference(q, k, b):
    """fp32 MLA attention of batch entry b: q [B, Lq, Hq, 576], k [B, L, 1, 576]."""
    import torch
    qb, kb = q[b].float(), k[b, :, 0].float()
    s = torch.einsum("ihd,jd->hij", qb, kb) / math.sqrt(D)
    return torch.einsum("hij,jd->ihd", torch.softmax(s, dim=-1), kb[:, :DV])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build-gpu")
    ap.add_argument("--quick", action="store_true", help="four grid rows, q_len 1")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "gpu_mla.json"))
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    cflash = load_cflash(args.build)
    dev, dt = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    grid = [GRID[i] for i in (0, 2, 5, 7)] if args.quick else GRID
    records, table, ok_all = [], [], True
    for Hq, B, L in grid:
        for Lq in ((1,) if args.quick else (1, 2)):
            name = f"mla bf16 Hq={Hq} B={B} L={L} q_len={Lq}"
            kv_bytes = B * L * D * 2
            nbytes = kv_bytes + B * Lq * Hq * (D + DV) * 2
            flops = 2 * B * Hq * Lq * L * (D + DV)
            nbuf = 3 if kv_bytes < 150e6 else 1
            ks = [torch.randn(B, L, 1, D, device=dev, dtype=dt) for _ in range(nbuf)]
            q = torch.randn(B, Lq, Hq, D, device=dev, dtype=dt)
            seqlens = torch.full((B,), L, dtype=torch.int32, device=dev)
            out = torch.empty(B, Lq, Hq, DV, device=dev, dtype=dt)
            refs = [(b, reference(q, ks[0], b)) for b in sorted({0, B - 1})]
            err_of = lambda o: max((o[b].float() - r).abs().max().item() for b, r in refs)  # noqa: E731

            # the peer: torch SDPA, first backend that takes D = 576 / Dv = 512 with 1 KV head
            qt = q.transpose(1, 2)
            peer, peer_ms, yard = None, None, None
            for pname, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                                   ("math", SDPBackend.MATH)):
                def run_peer(i, backend=backend):
                    k = ks[i].transpose(1, 2)
                    with sdpa_kernel(backend):
                        return F.scaled_dot_product_attention(qt, k, k[..., :DV], enable_gqa=True)
                try:
                    yard = err_of(run_peer(0).transpose(1, 2))
                    peer_ms, _ = time_ms([lambda i=i: run_peer(i) for i in range(nbuf)], args.reps)
                    peer = pname
                    break
                except RuntimeError as ex:
                    print(f"  sdpa {pname} refused {name}: {str(ex).splitlines()[0][:90]}", file=sys.stderr)
                    torch.cuda.empty_cache()
            tol = 2 * (yard if yard is not None else 2e-3) + 1e-3

            ours = {}
            for vname in ("contiguous", f"paged={PAGE}"):
                if vname == "contiguous":
                    kcs, tables = ks, [None] * nbuf
                else:
                    per = L // PAGE
                    kcs, tables = [], []
                    for i in range(nbuf):
                        perm = torch.randperm(B * per, device=dev)
                        pool = torch.empty(B * per, PAGE, 1, D, device=dev, dtype=dt)
                        pool[perm] = ks[i].reshape(B * per, PAGE, 1, D)
                        kcs.append(pool)
                        tables.append(perm.reshape(B, per).to(torch.int32))

                def run_ours(i, kcs=kcs, tables=tables):
                    cflash.attn_kvcache(q, kcs[i], kcs[i][..., :DV], seqlens, block_table=tables[i], out=out)
                out.fill_(float("nan"))
                run_ours(0)
                torch.cuda.synchronize()
                err = err_of(out)
                correct = bool(torch.isfinite(out).all().item()) and err <= tol
                ms, mode = time_ms([lambda i=i: run_ours(i) for i in range(nbuf)], args.reps)
                out.fill_(float("nan"))
                run_ours(0)
                torch.cuda.synchronize()
                correct = correct and bool(torch.isfinite(out).all().item()) and err_of(out) <= tol
                ok_all = ok_all and correct
                ours[vname] = (ms, correct, err, mode)
                del run_ours, kcs, tables
            for vname, (ms, correct, err, mode) in ours.items():
                gbs, tf = nbytes / (ms * 1e-3) / 1e9, flops / (ms * 1e-3) / 1e12
                rec = dict(case=f"{name} {vname}", unit="GB/s", ours=round(gbs, 1), tflops=round(tf, 1),
                           correct=correct, max_err=round(err, 5), ms=round(ms, 4), timing=mode,
                           kv_mb=round(kv_bytes / 1e6, 1), peer=f"sdpa_{peer}" if peer else None,
                           peer_value=round(nbytes / (peer_ms * 1e-3) / 1e9, 1) if peer_ms else None)
                rec["ratio"] = round(peer_ms / ms, 3) if peer_ms else None
                records.append(rec)
            table.append((name, kv_bytes, ours, peer, peer_ms, nbytes, flops))
            del ks, q, out, refs
            torch.cuda.empty_cache()

    write_results(args.out, records, torch)
    print(f"\n{'case':<40} {'KV MB':>7} {'GB/s':>6} {'TF/s':>6} {'p64 GB/s':>8} {'peer':>10} {'peer GB/s':>9} {'x peer':>6}  ok")
    for name, kv_bytes, ours, peer, peer_ms, nbytes, flops in table:
        ms, pms = ours["contiguous"][0], ours[f"paged={PAGE}"][0]
        ok = all(v[1] for v in ours.values())
        pg = nbytes / (peer_ms * 1e-3) / 1e9 if peer_ms else 0
        print(f"{name:<40} {kv_bytes / 1e6:7.0f} {nbytes / ms / 1e6:6.0f} {flops / ms / 1e9:6.1f} {nbytes / pms / 1e6:8.0f} "
              f"{peer or '-':>10} {pg:9.0f} {(peer_ms / ms) if peer_ms else 0:6.2f}  {'y' if ok else 'N'}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
