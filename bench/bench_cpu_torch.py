#!/usr/bin/env python3
"""bench_cpu_torch.py - the torch CPU SDPA peer of bench_cpu, and the merge into one result file.

What it is: reads the partial result file bench_cpu wrote (default
bench/results/cpu_prefill_cflash_openblas.json), times torch.nn.functional.scaled_dot_product_attention
on the CPU on exactly those cases (same shapes, dtypes, masks and thread counts), checks torch's
output against an fp64 torch computation on a subset of rows, and writes
bench/results/cpu_prefill.json in the PERF.md section 5 format: per case one record with peer
"torch_cpu" and, when bench_cpu had OpenBLAS, one with peer "openblas". Then prints a short table.
What it is not: a benchmark of cflash (its numbers come from bench_cpu, measured in that run).

Method (PERF.md 1): torch layout [B, H, L, D] (contiguous); causal prefill uses is_causal=True
(top-left, equal to cflash's bottom-right when Lq == Lk); decode (Lq=1, Hq:Hk 32:8) is timed two
ways, enable_gqa=True and K/V repeat_interleave'd to Hq heads outside the timed region, and the
faster one is the peer (its name is in the record, "torch_variant"). torch.set_num_threads(threads)
per case; wall clock; one warm-up call (the checked one), then the median of --reps (>= 5) calls.
FLOPs and bytes are the ones bench_cpu recorded: 2*B*Hq*Lq*avg_k*(D+Dv), avg_k = Lk or (Lk+1)/2
for causal with Lq == Lk; decode GB/s = bytes of K+V (the Hk heads once) / time.

Correctness (SPEC.md 1): fp32 relative L2 error <= 1e-5 against fp64; bf16 max abs error
<= 2 * e_naive + 1e-3, e_naive the error of a naive bf16 computation of the same rows (q*scale,
scores and probabilities rounded to bf16, matmuls in bf16).
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_C_JSON = os.path.join(ROOT, "bench", "results", "cpu_prefill_cflash_openblas.json")
DEFAULT_OUT = os.path.join(ROOT, "bench", "results", "cpu_prefill.json")
TORCH_VERSION = "2.13.0"
CHECK_BLOCKS = 4        # row blocks checked against fp64: first, last, two random
CHECK_ROWS = 4          # query rows per block, all heads
F32_REL_TOL = 1e-5      # SPEC.md 1
LOWP_ABS_TOL = 1e-3     # SPEC.md 1: + 2 * e_naive
FMA_PEAK_GFLOPS = {1: 117.0, 2: 233.0}  # PERF.md 2, fp32 AVX-512 FMA, the 2-core dev/CI machine


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def git_commit():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def check_blocks(Lq, rng):
    """(r0, n) row blocks: all rows when Lq is small, else first, last and random blocks."""
    if Lq <= CHECK_BLOCKS * CHECK_ROWS:
        return [(0, Lq)]
    span = Lq - CHECK_ROWS
    return [(0, CHECK_ROWS), (span, CHECK_ROWS)] + [
        (int(rng.randint(0, span)), CHECK_ROWS) for _ in range(CHECK_BLOCKS - 2)]


def rows_attention(torch, q, k, v, r0, n, causal, scale, lowp):
    """Rows [r0, r0+n) of attention, [B, H, n, Dv]. q [B, Hq, Lq, D], k/v [B, Hk, Lk, *].
    lowp=False: fp64 throughout. lowp=True: the naive bf16 yardstick (e_naive)."""
    B, Hq, Lq, D = q.shape
    Hk, Lk = k.shape[1], k.shape[2]
    G = Hq // Hk
    k = k.repeat_interleave(G, dim=1)
    v = v.repeat_interleave(G, dim=1)
    qr = q[:, :, r0:r0 + n]
    if lowp:
        qs = (qr.float() * scale).to(q.dtype)
        s = qs @ k.transpose(-1, -2)                       # bf16 matmul, bf16 scores
    else:
        s = (qr.double() @ k.double().transpose(-1, -2)) * scale
    if causal:  # bottom-right: key j visible to row i iff j <= i + Lk - Lq
        i = torch.arange(r0, r0 + n).view(n, 1)
        j = torch.arange(Lk).view(1, Lk)
        s = s.masked_fill(j > i + (Lk - Lq), float("-inf"))
    if lowp:
        p = torch.softmax(s.float(), dim=-1).to(q.dtype)
        return p @ v                                       # bf16 output
    p = torch.softmax(s, dim=-1)
    return p @ v.double()


def median_time(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_torch_case(torch, rec, reps, rng):
    F = torch.nn.functional
    B, Hq, Hk, Lq, Lk, D, Dv = (rec[x] for x in ("B", "Hq", "Hk", "Lq", "Lk", "D", "Dv"))
    causal, decode, threads = bool(rec["causal"]), rec["kind"] == "decode", rec["threads"]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[rec["dtype"]]
    if causal and Lq != Lk:
        raise ValueError("causal with Lq != Lk: torch is_causal is top-left, cflash bottom-right")
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(1234)
    q = torch.randn(B, Hq, Lq, D, generator=gen).to(dtype)
    k = torch.randn(B, Hk, Lk, D, generator=gen).to(dtype)
    v = torch.randn(B, Hk, Lk, Dv, generator=gen).to(dtype)
    scale = 1.0 / math.sqrt(D)

    variants = {}
    if Hq == Hk:
        variants["sdpa"] = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    else:
        G = Hq // Hk
        kr, vr = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)  # outside timing
        variants["enable_gqa"] = lambda: F.scaled_dot_product_attention(
            q, k, v, is_causal=causal, enable_gqa=True)
        variants["repeat_interleave"] = lambda: F.scaled_dot_product_attention(
            q, kr, vr, is_causal=causal)

    result = None
    with torch.inference_mode():
        for name, fn in variants.items():
            out = fn()  # warm-up, and the output that is checked
            max_err, e2, r2, e_naive = 0.0, 0.0, 0.0, 0.0
            for r0, n in check_blocks(Lq, rng):
                ref = rows_attention(torch, q, k, v, r0, n, causal, scale, lowp=False)
                err = (out[:, :, r0:r0 + n].double() - ref).abs()
                max_err = max(max_err, float(err.max()) if not torch.isnan(err).any() else math.inf)
                e2 += float((err * err).sum())
                r2 += float((ref * ref).sum())
                if dtype != torch.float32:
                    naive = rows_attention(torch, q, k, v, r0, n, causal, scale, lowp=True)
                    e_naive = max(e_naive, float((naive.double() - ref).abs().max()))
            rel_l2 = math.sqrt(e2 / r2) if r2 > 0 else math.sqrt(e2)
            if dtype == torch.float32:
                tol, ok = F32_REL_TOL, rel_l2 <= F32_REL_TOL
            else:
                tol = 2 * e_naive + LOWP_ABS_TOL
                ok = max_err <= tol
            ok = ok and bool(torch.isfinite(out).all())
            t = median_time(fn, reps)
            cand = {"variant": name, "seconds": t, "correct": ok, "max_err": max_err,
                    "rel_l2": rel_l2, "tol": tol}
            # the peer is the fastest correct variant (a wrong one never wins)
            if result is None or (cand["correct"], -t) > (result["correct"], -result["seconds"]):
                result = cand
    return result


def fmt(x, spec):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--c-json", default=DEFAULT_C_JSON, help="bench_cpu's result file (input)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="merged result file (output)")
    ap.add_argument("--reps", type=int, default=5, help="timed calls per case after the warm-up")
    ap.add_argument("--filter", action="append", default=[],
                    help="only cases whose name contains this (repeatable: all must match)")
    args = ap.parse_args()

    try:
        import torch
    except ImportError:
        sys.exit(f"bench_cpu_torch: torch is not installed (pip install torch=={TORCH_VERSION})")
    if not torch.__version__.startswith(TORCH_VERSION):
        print(f"bench_cpu_torch: warning: torch {torch.__version__}, the peer is pinned to "
              f"{TORCH_VERSION}", file=sys.stderr)
    try:
        with open(args.c_json) as f:
            cres = json.load(f)
    except OSError as e:
        sys.exit(f"bench_cpu_torch: cannot read {args.c_json} ({e.strerror}); run build/bench/bench_cpu first")

    import random
    rng = random.Random(7)
    crecs = [r for r in cres["records"] if all(s in r["case"] for s in args.filter)]
    if not crecs:
        sys.exit("bench_cpu_torch: no case to run")
    print(f"bench_cpu_torch: torch {torch.__version__} CPU SDPA on {len(crecs)} case(s) from "
          f"{args.c_json}; median of {args.reps} after 1 warm-up")

    records, rows = [], []
    failures = 0
    for cr in crecs:
        tr = run_torch_case(torch, cr, args.reps, rng)
        decode = cr["kind"] == "decode"
        torch_gflops = cr["flops"] / tr["seconds"] * 1e-9
        torch_rate = cr["kv_bytes"] / tr["seconds"] * 1e-9 if decode else torch_gflops
        ours, ours_ok = cr["ours"], bool(cr.get("ours_correct", cr["correct"]))
        failures += not (ours_ok and tr["correct"])
        extra = {k: cr[k] for k in ("kind", "dtype", "B", "Hq", "Hk", "Lq", "Lk", "D", "Dv", "causal",
                                    "threads", "flops", "kv_bytes", "ours_ms", "ours_gflops",
                                    "ours_pct_fma_peak", "ours_correct") if k in cr}
        records.append(dict(
            {"case": cr["case"], "unit": cr["unit"], "ours": ours, "peer": "torch_cpu",
             "peer_value": round(torch_rate, 4),
             "ratio": round(ours / torch_rate, 4) if ours is not None else None,
             "correct": ours_ok and tr["correct"], "max_err": cr["max_err"]},
            **extra, torch_ms=round(tr["seconds"] * 1e3, 4), torch_gflops=round(torch_gflops, 4),
            torch_correct=tr["correct"], torch_max_err=tr["max_err"], torch_variant=tr["variant"]))
        if cr.get("peer") == "openblas":
            records.append(cr)
        ob = cr.get("peer_value") if cr.get("peer") == "openblas" else None
        rows.append((cr["case"], cr["unit"], ours, torch_rate, ob, cr.get("ours_pct_fma_peak"),
                     ours_ok and tr["correct"] and (ob is None or cr["correct"]), tr["variant"]))
        print(f"  {cr['case']:<66} torch {torch_rate:8.1f} {cr['unit']:<7} ({tr['variant']}, "
              f"max_err {tr['max_err']:.2e}, {'ok' if tr['correct'] else 'WRONG'})", flush=True)

    threads = sorted({r["threads"] for r in crecs})
    out = {"device": f"{cpu_model()} ({os.cpu_count()} CPUs online; threads "
                     f"{','.join(map(str, threads))}, per record)",
           "commit": git_commit(), "date": time.strftime("%Y-%m-%d"),
           "kernel": cres.get("kernel"), "torch": torch.__version__, "reps": args.reps,
           "openblas_mode": cres.get("openblas_mode"), "flops": cres.get("flops"),
           "records": records}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")

    print(f"\n{'case':<66} {'unit':<7} {'ours':>8} {'torch':>8} {'openblas':>8} {'/torch':>7} "
          f"{'/oblas':>7} {'%peak':>6}  ok")
    for case, unit, ours, tv, ob, pk, ok, _ in rows:
        print(f"{case:<66} {unit:<7} {fmt(ours, '8.1f')} {fmt(tv, '8.1f')} {fmt(ob, '8.1f')} "
              f"{fmt(ours / tv if ours else None, '6.2f')}x {fmt(ours / ob if ob else None, '6.2f')}x "
              f"{fmt(pk, '5.0f') + '%' if pk is not None else '     -'}  {'ok' if ok else 'WRONG'}")
    print(f"\nwrote {len(records)} records to {args.out}"
          f"{'' if not failures else f'; {failures} case(s) with a failed check'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
