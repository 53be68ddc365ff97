"""GPU decode benchmark: cflash's split-KV decode kernel (cflash.attn_kvcache on torch CUDA
tensors, src/cuda/decode.cu) against torch SDPA's cuDNN and FlashAttention-2 backends on the same
contiguous data, and flash_attn.flash_attn_with_kvcache when a real flash-attn is installed
(cflash's own flash_attn drop-in is switched off with CFLASH_SHIM=off), measured in the same run.

    python3 bench/bench_gpu_decode.py [--build build-gpu] [--quick] [--filter SUBSTR] [--out FILE]

Grid (PERF.md section 3's decode table): bf16, D = 128, (Hq:Hk, B, L) in (32:8, 1, 32k),
(32:8, 1, 128k), (32:8, 8, 8k), (32:8, 32, 4k), (64:8, 4, 16k), (32:32, 16, 32000); q_len 1 and 4
(non-causal for every system: with q_len 4 a bottom-right causal mask would hide 6 of 4 * L
scores, and SDPA's is_causal is top-left); full caches (cache_seqlens = L, nothing appended).
Ours on the contiguous cache and on paged caches of page size 1, 16 and 256 holding the same
keys in shuffled pages.
Bytes: K + V read (B * L * Hk * 2 * D * 2) plus Q and O (block tables not counted);
GB/s = bytes / time.
Correctness first: every variant's output against a torch fp32 reference on the device (batch
entries 0 and B - 1, all heads) under the SPEC.md section 1 rule with SDPA's error as the
same-precision yardstick (ours <= 2 * SDPA's + 1e-3); the output is poisoned with NaN before the
timed runs and must be finite after.
Timing: CUDA graph replay (direct calls where capture fails), each sample queued behind a GPU
sleep so that no host launch time is timed; CUDA events, warm-up, median of --reps (default 30);
3 rotating KV buffers when the KV cache is below 150 MB (3x the H100's 50 MB L2).
Results: bench/results/gpu_decode.json (PERF.md section 5), and a table on stdout.
"""

import argparse
import math
import os
import statistics
import sys

os.environ.setdefault("CFLASH_SHIM", "off")  # a real flash_attn or none, never cflash's drop-in
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gpu import load_cflash  # noqa: E402
from gpu_results import write_results  # noqa: E402

GRID = [(32, 8, 1, 32768), (32, 8, 1, 131072), (32, 8, 8, 8192), (32, 8, 32, 4096), (64, 8, 4, 16384),
        (32, 32, 16, 32000)]
D = 128
PAGE_SIZES = (1, 16, 256)
L2_ROTATE_BELOW = 150e6   # bytes of K + V under which 3 buffers rotate
SLEEP_CYCLES = 1_000_000  # GPU sleep before each timed sample (~0.5 ms): covers the host's launch


def real_flash_attn():
    """flash_attn_with_kvcache of a real flash-attn install, or None."""
    try:
        import flash_attn
        if "cflash" in (getattr(flash_attn, "__file__", "") or ""):
            return None
        from flash_attn import flash_attn_with_kvcache
        return flash_attn_with_kvcache
    except Exception:
        return None


def capture(fn):
    """A CUDA graph of one call of fn, or None when fn cannot be captured."""
    import torch
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()  # warm-up outside the capture (lazy init, workspace sizing)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        torch.cuda.synchronize()
        return g
    except Exception as e:  # noqa: BLE001 - any capture failure: time direct calls
        torch.cuda.synchronize()
        print(f"  (graph capture failed, timing direct calls: {str(e).splitlines()[0][:90]})", file=sys.stderr)
        return None


def time_ms(fns, reps, warmup=3):
    """Median ms of one call, cycling through fns (one per rotating buffer)."""
    import torch
    graphs = [capture(f) for f in fns]
    runs = [g.replay if g is not None else f for g, f in zip(graphs, fns)]
    mode = "graph" if all(g is not None for g in graphs) else "direct"
    for i in range(warmup * len(runs)):
        runs[i % len(runs)]()
    torch.cuda.synchronize()
    sleep = getattr(torch.cuda, "_sleep", None)
    events = []
    for i in range(reps):
        if sleep:
            sleep(SLEEP_CYCLES)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        runs[i % len(runs)]()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    del graphs
    return statistics.median(s.elapsed_time(e) for s, e in events), mode


def reference(q, k, v, b):
    """fp32 attention of batch entry b over all its keys: q [B, Lq, Hq, D], k/v [B, L, Hk, D]."""
    import torch
    Lq, Hq, Dq = q.shape[1], q.shape[2], q.shape[3]
    Hk = k.shape[2]
    G = Hq // Hk
    qb = q[b].float().reshape(Lq, Hk, G, Dq)
    kb, vb = k[b].float(), v[b].float()
    s = torch.einsum("ihgd,jhd->hgij", qb, kb) / math.sqrt(Dq)
    p = torch.softmax(s, dim=-1)
    o = torch.einsum("hgij,jhd->ihgd", p, vb)
    return o.reshape(Lq, Hq, v.shape[3])


def max_err(out, refs):
    return max((out[b].float() - r).abs().max().item() for b, r in refs)


def paged_copy(k, v, page, gen):
    """The same keys in a shuffled page pool: (k_pool, v_pool, block_table)."""
    import torch
    B, L, Hk, Dk = k.shape
    per = (L + page - 1) // page
    n = B * per
    perm = torch.randperm(n, generator=gen, device="cpu").to(k.device)
    pool_k = torch.zeros(n, page, Hk, Dk, dtype=k.dtype, device=k.device)
    pool_v = torch.zeros(n, page, Hk, v.shape[3], dtype=v.dtype, device=v.device)
    pad = per * page - L
    kk, vv = k, v
    if pad:
        kk = torch.cat([k, k.new_zeros(B, pad, Hk, Dk)], dim=1)
        vv = torch.cat([v, v.new_zeros(B, pad, Hk, v.shape[3])], dim=1)
    pool_k[perm] = kk.reshape(n, page, Hk, Dk)
    pool_v[perm] = vv.reshape(n, page, Hk, v.shape[3])
    table = perm.reshape(B, per).to(torch.int32)
    return pool_k, pool_v, table


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build-gpu")
    ap.add_argument("--quick", action="store_true", help="the first three grid rows, q_len 1, page size 16")
    ap.add_argument("--filter", default="", help="comma-separated substrings of case names")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "gpu_decode.json"))
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    cflash = load_cflash(args.build)
    fa_kvcache = real_flash_attn()
    dev = torch.device("cuda")
    dt = torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    grid = GRID[:3] if args.quick else GRID
    qlens = (1,) if args.quick else (1, 4)
    pages = (16,) if args.quick else PAGE_SIZES

    records, table = [], []
    ok_all = True
    qlen1_ms = {}
    for Hq, Hk, B, L in grid:
        for Lq in qlens:
            name = f"decode bf16 D={D} Hq:Hk={Hq}:{Hk} B={B} L={L} q_len={Lq}"
            if args.filter and not any(f in name for f in args.filter.split(",")):
                continue
            kv_bytes = B * L * Hk * 2 * D * 2
            qo_bytes = 2 * B * Lq * Hq * D * 2
            nbuf = 3 if kv_bytes < L2_ROTATE_BELOW else 1
            ks = [torch.randn(B, L, Hk, D, device=dev, dtype=dt) for _ in range(nbuf)]
            vs = [torch.randn(B, L, Hk, D, device=dev, dtype=dt) for _ in range(nbuf)]
            q = torch.randn(B, Lq, Hq, D, device=dev, dtype=dt)
            seqlens = torch.full((B,), L, dtype=torch.int32, device=dev)
            out = torch.empty(B, Lq, Hq, D, device=dev, dtype=dt)
            refs = [(b, reference(q, ks[0], vs[0], b)) for b in sorted({0, B - 1})]
            gbs = lambda ms: (kv_bytes + qo_bytes) / (ms * 1e-3) / 1e9  # noqa: E731

            # peers on the contiguous data (SDPA wants [B, H, L, D]: transposed views, no copy)
            qt = q.transpose(1, 2)
            peer_gbs, yard = {}, None
            for peer, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("fa2", SDPBackend.FLASH_ATTENTION)):
                def run_peer(i, backend=backend):
                    with sdpa_kernel(backend):
                        return F.scaled_dot_product_attention(qt, ks[i].transpose(1, 2), vs[i].transpose(1, 2),
                                                              enable_gqa=Hq != Hk)
                try:
                    o_peer = run_peer(0).transpose(1, 2)
                    torch.cuda.synchronize()
                    e = max_err(o_peer, refs)
                    yard = e if yard is None else min(yard, e)
                    ms, _ = time_ms([lambda i=i: run_peer(i) for i in range(nbuf)], args.reps)
                    peer_gbs[peer] = gbs(ms)
                except RuntimeError as ex:  # the backend refuses this shape
                    peer_gbs[peer] = None
                    print(f"  {peer} refused {name}: {str(ex).splitlines()[0][:100]}", file=sys.stderr)
            if fa_kvcache is not None:
                try:
                    ms, _ = time_ms([lambda i=i: fa_kvcache(q, ks[i], vs[i], cache_seqlens=seqlens)
                                     for i in range(nbuf)], args.reps)
                    peer_gbs["flash_attn_kvcache"] = gbs(ms)
                except Exception as ex:  # noqa: BLE001
                    print(f"  flash_attn_with_kvcache failed on {name}: {str(ex).splitlines()[0][:100]}",
                          file=sys.stderr)
            tol = 2 * (yard if yard is not None else 2e-3) + 1e-3

            # ours: contiguous, then paged
            variants = [("contiguous", ks, vs, None)]
            for page in pages:
                variants.append((f"paged={page}", None, None, page))
            ours = {}
            for vname, kc, vc, page in variants:
                tables = None
                if page is not None:
                    pools = [paged_copy(ks[i], vs[i], page, gen) for i in range(nbuf)]
                    kc, vc, tables = [p[0] for p in pools], [p[1] for p in pools], [p[2] for p in pools]

                def run_ours(i, kc=kc, vc=vc, tables=tables):
                    cflash.attn_kvcache(q, kc[i], vc[i], seqlens, block_table=None if tables is None else tables[i],
                                        out=out)
                out.fill_(float("nan"))
                run_ours(0)
                torch.cuda.synchronize()
                err = max_err(out, refs)
                correct = bool(torch.isfinite(out).all().item()) and err <= tol
                ms, mode = time_ms([lambda i=i: run_ours(i) for i in range(nbuf)], args.reps)
                out.fill_(float("nan"))
                run_ours(0)
                torch.cuda.synchronize()
                correct = correct and bool(torch.isfinite(out).all().item()) and max_err(out, refs) <= tol
                ok_all = ok_all and correct
                ours[vname] = (gbs(ms), ms, correct, err, mode)
                if page is not None:  # free this page size's pools before the next one is built
                    del run_ours, kc, vc, tables, pools
                    torch.cuda.empty_cache()

            contig_gbs, contig_ms = ours["contiguous"][0], ours["contiguous"][1]
            if Lq == 1:
                qlen1_ms[(Hq, Hk, B, L)] = contig_ms
            for vname, (g, ms, correct, err, mode) in ours.items():
                case = f"{name} {vname}"
                base = {"unit": "GB/s", "ours": round(g, 1), "correct": correct, "max_err": round(err, 5),
                        "kv_mb": round(kv_bytes / 1e6, 1), "timing": mode, "ms": round(ms, 4)}
                if Lq > 1 and (Hq, Hk, B, L) in qlen1_ms and vname == "contiguous":
                    base["time_vs_qlen1"] = round(ms / qlen1_ms[(Hq, Hk, B, L)], 3)
                peers = dict(peer_gbs)
                if vname != "contiguous":
                    peers = {"self_dense": contig_gbs, "cudnn": peer_gbs.get("cudnn")}
                for peer, value in peers.items():
                    records.append(dict(case=case, peer=peer, peer_value=None if value is None else round(value, 1),
                                        ratio=None if not value else round(g / value, 3), **base))
            table.append((name, kv_bytes, ours, peer_gbs, tol))
            del ks, vs, q, out, refs
            torch.cuda.empty_cache()

    write_results(args.out, records, torch)

    pcols = [f"p{p}" for p in pages]
    print(f"\n{'case (GB/s)':<52} {'KV MB':>7} {'ours':>6} {'cuDNN':>6} {'FA2':>6} {'fa-kv':>6} {'/cuDNN':>6} "
          + " ".join(f"{c + '/c':>6}" for c in pcols) + "  ok  time/q1")
    for name, kv_bytes, ours, peer_gbs, tol in table:
        g = ours["contiguous"][0]
        cu, fa, fk = peer_gbs.get("cudnn"), peer_gbs.get("fa2"), peer_gbs.get("flash_attn_kvcache")
        ratios = " ".join(f"{ours[f'paged={p}'][0] / g:6.2f}" for p in pages)
        ok = all(v[2] for v in ours.values())
        q1 = next((f"{r['time_vs_qlen1']:.2f}" for r in records
                   if r["case"] == f"{name} contiguous" and "time_vs_qlen1" in r), "")
        print(f"{name:<52} {kv_bytes / 1e6:7.0f} {g:6.0f} {cu or 0:6.0f} {fa or 0:6.0f} {fk or 0:6.0f} "
              f"{(g / cu) if cu else 0:6.2f} {ratios}  {'y' if ok else 'N'}   {q1}")
    print("ratios: p<size>/c = paged GB/s over our contiguous GB/s; time/q1 = q_len 4 time over q_len 1")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
