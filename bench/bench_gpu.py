"""GPU benchmark: cflash's CUDA backend against torch SDPA's cuDNN and FlashAttention-2 backends
(and FlexAttention for masks, packed documents and score mods), measured in the same run (PERF.md
protocol). "mma" is our mma.sync kernel on the same case (CFLASH_CUDA_KERNEL=mma).

    python3 bench/bench_gpu.py [--build build-gpu] [--quick] [--filter SUBSTR] [--out FILE]

Run on the GPU machine by scripts/gpu_check.sh (which builds the extension into --build and
puts it beside python/cflash). Every case is checked before it is timed: our output against an
fp32 reference on one (batch, head) slice (L <= 4096) or on a slice of rows, under the SPEC.md
section 1 rule with FA2's error as the same-precision yardstick (ours <= 2 * FA2's + 1e-3).
Timing: CUDA events, 3 warm-ups, median of 20 (PERF.md section 1); the output is poisoned
with NaN before the timed runs and must be finite after.
FLOPs: 2 * B * Hq * sum over rows of visible keys * (D + Dv) (useful FLOPs; non-causal square:
4 * B * Hq * L^2 * D). Results: bench/results/gpu_prefill.json (PERF.md section 5), and a
table on stdout.
"""

import argparse
import glob
import math
import os
import shutil
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_results import write_results  # noqa: E402


def load_cflash(build):
    """Import cflash from python/ with the CUDA-built extension of `build` beside it."""
    for so in glob.glob(os.path.join(ROOT, build, "python", "_cflash*.so")):
        shutil.copy(so, os.path.join(ROOT, "python", "cflash", os.path.basename(so)))
    sys.path.insert(0, os.path.join(ROOT, "python"))
    import cflash
    return cflash


# calls per timed sample (--inner): 1 times each call alone, host work included (a call's Python
# and launch overhead lies between its two events); N > 1 queues N calls back to back and
# divides, so the GPU time of short calls is measured without the host's share
INNER = 1


def time_ms(fn, warmup=3, reps=20, inner=None):
    import torch
    inner = INNER if inner is None else inner
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def visible_rows(Lq, Lk, causal, window):
    """Sum over rows of visible keys (bottom-right alignment), exactly."""
    left, right = window
    right = 0 if causal else right
    total = 0
    off = Lk - Lq
    if left < 0 and right < 0:
        return Lq * Lk
    for i in range(Lq):
        c = i + off
        lo = max(0, c - left) if left >= 0 else 0
        hi = min(Lk - 1, c + right) if right >= 0 else Lk - 1
        total += max(0, hi - lo + 1)
    return total


def reference_slice(q, k, v, causal, window, softcap, alibi, scale, rows):
    """fp32 reference of batch 0, head 0, query rows `rows` (q, k, v in [B, L, H, D])."""
    import torch
    qs = q[0, rows, 0].float()
    ks, vs = k[0, :, 0].float(), v[0, :, 0].float()
    s = (qs @ ks.T) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    Lq, Lk = q.shape[1], k.shape[1]
    i = torch.arange(Lq, device=q.device)[rows].unsqueeze(1)
    j = torch.arange(Lk, device=q.device).unsqueeze(0)
    c = i + (Lk - Lq)
    if alibi is not None:
        s = s - alibi[0].float() * (j - c).abs()
    left, right = window
    right = 0 if causal else right
    visible = torch.ones_like(s, dtype=torch.bool)
    if right >= 0:
        visible &= j <= c + right
    if left >= 0:
        visible &= j >= c - left
    s = s.masked_fill(~visible, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return p @ vs


_FLEX = {}


def flex_time(torch, q, k, v, B, H, Lq, Lk, mask_mod=None, score_mod=None, gqa=False):
    """Milliseconds of torch's FlexAttention (compiled once per process, block mask built outside
    the timing) on q, k, v in [B, H, L, D]; None when it cannot serve the case (compile errors,
    missing Triton): the table then shows 0."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        if "fn" not in _FLEX:
            _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
        # H=None: the masks here are the same for every head (a per-head block mask of 64 heads
        # over 16k x 16k tokens runs out of memory while it is built)
        bm = create_block_mask(mask_mod, B, None, Lq, Lk, device="cuda") if mask_mod is not None else None
        fn = lambda: _FLEX["fn"](q, k, v, score_mod=score_mod, block_mask=bm, enable_gqa=gqa)
        return time_ms(fn)
    except Exception as e:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
        print(f"  flex refused: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}", file=sys.stderr)
        return None


def packed_cases(cflash, torch, rows_out, time_ms):
    """varlen: 16 documents of random lengths summing to 16384 tokens, Hq:Hk = 16:16 and 64:8,
    D=128, causal per document; key-side keep mask (70% of keys, flash-dmattn style) over 2
    sequences of 8192, full. Each against our dense kernel at B=1, L=16384 (same mask kind)."""
    dev, dt, D = torch.device("cuda"), torch.bfloat16, 128
    gen = torch.Generator().manual_seed(1)
    records = []
    cuts = torch.sort(torch.randperm(16383, generator=gen)[:15] + 1).values.tolist()
    lens = [b - a for a, b in zip([0] + cuts, cuts + [16384])]
    for Hq, Hk in ((16, 16), (64, 8)):
        cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=dev)
        q = torch.randn(16384, Hq, D, device=dev, dtype=dt)
        k = torch.randn(16384, Hk, D, device=dev, dtype=dt)
        v = torch.randn(16384, Hk, D, device=dev, dtype=dt)
        out = torch.empty_like(q)
        run = lambda: cflash.attn_varlen(q, k, v, cu, cu, max(lens), max(lens), causal=True, out=out)
        out.fill_(float("nan")); run(); torch.cuda.synchronize()
        # check the first document (fp32 reference) and that every row was written
        a, b = 0, lens[0]
        g = Hq // Hk
        s_ = (q[a:b].float().transpose(0, 1) @ k[a:b].float().repeat_interleave(g, 1).permute(1, 2, 0)) / D ** 0.5
        s_ = s_.masked_fill(torch.ones(b - a, b - a, device=dev, dtype=torch.bool).triu(1), float("-inf"))
        ref = (torch.softmax(s_, -1) @ v[a:b].float().repeat_interleave(g, 1).transpose(0, 1)).transpose(0, 1)
        err = (out[a:b].float() - ref).abs().max().item()
        ok = bool(torch.isfinite(out).all().item()) and err < 2e-2
        flops = sum(2 * Hq * (n * (n + 1) // 2) * 2 * D for n in lens)
        tf = flops / time_ms(run) / 1e9
        qd, kd, vd = q.view(1, 16384, Hq, D), k.view(1, 16384, Hk, D), v.view(1, 16384, Hk, D)
        od = out.view(1, 16384, Hq, D)
        dense = 2 * Hq * (16384 * 16385 // 2) * 2 * D / time_ms(lambda: cflash.attn_dense(qd, kd, vd, causal=True, out=od)) / 1e9
        name = f"varlen bf16 D=128 16 docs 16384 tokens Hq:Hk={Hq}:{Hk} causal"
        records.append({"case": name, "unit": "TFLOP/s", "ours": round(tf, 1), "peer": "self_dense",
                        "peer_value": round(dense, 1), "ratio": round(tf / dense, 3), "correct": ok, "max_err": round(err, 5)})
        # FlexAttention with a document mask over the packed tokens (one batch entry)
        doc = torch.repeat_interleave(torch.arange(len(lens), device=dev), torch.tensor(lens, device=dev))
        ms = flex_time(torch, *(x.transpose(0, 1).unsqueeze(0).contiguous() for x in (q, k, v)), 1, Hq, 16384, 16384,
                       mask_mod=lambda b, h, i, j: (doc[i] == doc[j]) & (i >= j), gqa=Hq != Hk)
        if ms:
            records.append({"case": name, "unit": "TFLOP/s", "ours": round(tf, 1), "peer": "flex",
                            "peer_value": round(flops / ms / 1e9, 1), "ratio": round(tf / (flops / ms / 1e9), 3),
                            "correct": ok, "max_err": round(err, 5)})
        rows_out.append((name, tf, None, None, ok, err, 2e-2, None, flops / ms / 1e9 if ms else None))
        # the same documents as a range plan (one causal slice per document, MagiAttention style)
        starts = [0] + torch.tensor(lens).cumsum(0).tolist()
        ranges = [[a, b] for a, b in zip(starts[:-1], starts[1:])]
        plan = cflash.RangePlan(ranges, ranges, 16384, 16384, attn_type_map=["causal"] * len(ranges))
        run_p = lambda: cflash.attn_range(q, k, v, plan, out=out)
        out.fill_(float("nan")); run_p(); torch.cuda.synchronize()
        err_p = (out[a:b].float() - ref).abs().max().item()
        ok_p = bool(torch.isfinite(out).all().item()) and err_p < 2e-2
        tf_p = flops / time_ms(run_p) / 1e9
        name_p = f"range plan bf16 D=128 16 causal docs 16384 tokens Hq:Hk={Hq}:{Hk}"
        records.append({"case": name_p, "unit": "TFLOP/s", "ours": round(tf_p, 1), "peer": "self_varlen",
                        "peer_value": round(tf, 1), "ratio": round(tf_p / tf, 3), "correct": ok_p, "max_err": round(err_p, 5)})
        if ms:
            records.append({"case": name_p, "unit": "TFLOP/s", "ours": round(tf_p, 1), "peer": "flex",
                            "peer_value": round(flops / ms / 1e9, 1), "ratio": round(tf_p / (flops / ms / 1e9), 3),
                            "correct": ok_p, "max_err": round(err_p, 5)})
        rows_out.append((name_p, tf_p, None, None, ok_p, err_p, 2e-2, None, flops / ms / 1e9 if ms else None))
        # the documents plus the first one as a shared prefix of every other (a full slice each):
        # no packed batch, so the slice walk (cflash.RangePlan.packed_sequences == 0)
        pre = [[starts[0], starts[1]]] * (len(ranges) - 1)
        plan_s = cflash.RangePlan(ranges + ranges[1:], ranges + pre, 16384, 16384,
                                  attn_type_map=["causal"] * len(ranges) + ["full"] * (len(ranges) - 1))
        assert plan.packed_sequences > 0 and plan_s.packed_sequences == 0
        run_s = lambda: cflash.attn_range(q, k, v, plan_s, out=out)
        out.fill_(float("nan")); run_s(); torch.cuda.synchronize()
        err_s = (out[a:b].float() - ref).abs().max().item()  # the first document sees only itself
        ok_s = bool(torch.isfinite(out).all().item()) and err_s < 2e-2
        flops_s = flops + sum(2 * Hq * n * lens[0] * 2 * D for n in lens[1:])
        tf_s = flops_s / time_ms(run_s) / 1e9
        name_s = f"range plan bf16 D=128 16 causal docs + shared doc 0 Hq:Hk={Hq}:{Hk}"
        records.append({"case": name_s, "unit": "TFLOP/s", "ours": round(tf_s, 1), "peer": "self_varlen",
                        "peer_value": round(tf, 1), "ratio": round(tf_s / tf, 3), "correct": ok_s, "max_err": round(err_s, 5)})
        ms_s = flex_time(torch, *(x.transpose(0, 1).unsqueeze(0).contiguous() for x in (q, k, v)), 1, Hq, 16384, 16384,
                         mask_mod=lambda b, h, i, j: ((doc[i] == doc[j]) & (i >= j)) | ((doc[j] == 0) & (doc[i] != 0)), gqa=Hq != Hk)
        if ms_s:
            records.append({"case": name_s, "unit": "TFLOP/s", "ours": round(tf_s, 1), "peer": "flex",
                            "peer_value": round(flops_s / ms_s / 1e9, 1), "ratio": round(tf_s / (flops_s / ms_s / 1e9), 3),
                            "correct": ok_s, "max_err": round(err_s, 5)})
        rows_out.append((name_s, tf_s, None, None, ok_s, err_s, 2e-2, None, flops_s / ms_s / 1e9 if ms_s else None))
    # key-side mask, 70% of keys kept, 2 x 8192 keys, full attention
    Hq = Hk = 16
    cu = torch.tensor([0, 8192, 16384], dtype=torch.int32, device=dev)
    q = torch.randn(16384, Hq, D, device=dev, dtype=dt)
    k = torch.randn(16384, Hk, D, device=dev, dtype=dt)
    v = torch.randn(16384, Hk, D, device=dev, dtype=dt)
    keep = torch.rand(16384, 1, device=dev, generator=None) < 0.7
    out = torch.empty_like(q)
    run = lambda: cflash.attn_varlen(q, k, v, cu, cu, 8192, 8192, mask=keep, out=out)
    out.fill_(float("nan")); run(); torch.cuda.synchronize()
    s_ = (q[:256].float().transpose(0, 1) @ k[:8192].float().permute(1, 2, 0)) / D ** 0.5
    s_ = s_.masked_fill(~keep[:8192, 0][None, None, :], float("-inf"))
    ref = (torch.softmax(s_, -1) @ v[:8192].float().transpose(0, 1)).transpose(0, 1)
    err = (out[:256].float() - ref).abs().max().item()
    ok = bool(torch.isfinite(out).all().item()) and err < 2e-2
    kept = int(keep[:8192].sum().item()) + int(keep[8192:].sum().item())
    flops = 2 * Hq * 8192 * kept * 2 * D
    tf = flops / time_ms(run) / 1e9
    qd, kd, vd, od = (x.view(2, 8192, Hq, D) for x in (q, k, v, out))
    dense = 4 * 2 * Hq * 8192 * 8192 * D / time_ms(lambda: cflash.attn_dense(qd, kd, vd, out=od)) / 1e9
    name = "keyside bf16 D=128 2 x 8192 Hq=16 mask 70% kept full"
    records.append({"case": name, "unit": "TFLOP/s", "ours": round(tf, 1), "peer": "self_dense",
                    "peer_value": round(dense, 1), "ratio": round(tf / dense, 3), "correct": ok, "max_err": round(err, 5)})
    keep2 = keep[:, 0].view(2, 8192)
    ms = flex_time(torch, *(x.view(2, 8192, Hq, D).transpose(1, 2).contiguous() for x in (q, k, v)), 2, Hq, 8192, 8192,
                   mask_mod=lambda b, h, i, j: keep2[b, j])
    if ms:
        records.append({"case": name, "unit": "TFLOP/s", "ours": round(tf, 1), "peer": "flex",
                        "peer_value": round(flops / ms / 1e9, 1), "ratio": round(tf / (flops / ms / 1e9), 3),
                        "correct": ok, "max_err": round(err, 5)})
    rows_out.append((name, tf, None, None, ok, err, 2e-2, None, flops / ms / 1e9 if ms else None))
    return records


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build-gpu")
    ap.add_argument("--quick", action="store_true", help="D=128 only, L in {1k, 4k, 16k}")
    ap.add_argument("--filter", default="", help="comma-separated substrings of case names")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "gpu_prefill.json"))
    ap.add_argument("--inner", type=int, default=1,
                    help="calls per timed sample, back to back (1: each call alone, host work included)")
    args = ap.parse_args()
    global INNER
    INNER = max(1, args.inner)

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    cflash = load_cflash(args.build)
    dev = torch.device("cuda")
    dt = torch.bfloat16
    torch.manual_seed(0)

    cases = []  # (name, B, L, Hq, Hk, D, causal, window, softcap, alibi, peers)
    dims = [128] if args.quick else [64, 128, 256]
    lens = [1024, 4096, 16384] if args.quick else [512, 1024, 2048, 4096, 8192, 16384]
    for D in dims:
        for causal in (False, True):
            for L in lens:
                cases.append((f"prefill bf16 D={D} L={L} B={16384 // L} Hq={2048 // D} {'causal' if causal else 'full'}",
                              16384 // L, L, 2048 // D, 2048 // D, D, causal, (-1, -1), 0.0, False, ("cudnn", "fa2")))
    # features against our own plain kernel (PERF.md section 3 mask table shape: D=128, Hq=16, B=2, L=8192)
    feat = [("causal + ALiBi", True, (-1, -1), 0.0, True), ("causal + softcap 30", True, (-1, -1), 30.0, False),
            ("causal, window 1024", True, (1024, 0), 0.0, False), ("causal (yardstick)", True, (-1, -1), 0.0, False),
            ("full (yardstick)", False, (-1, -1), 0.0, False)]
    if not args.quick:
        for name, causal, window, softcap, alibi in feat:
            cases.append((f"feature bf16 D=128 L=8192 B=2 Hq=16 {name}", 2, 8192, 16, 16, 128, causal, window,
                          softcap, alibi, ("fa2",) if window == (-1, -1) and not softcap and not alibi else ()))
        cases.append(("gqa bf16 D=128 L=16384 B=1 Hq=32 Hk=8 causal", 1, 16384, 32, 8, 128, True, (-1, -1), 0.0,
                      False, ("cudnn", "fa2")))

    records, rows_out = [], []
    plain = {}
    for name, B, L, Hq, Hk, D, causal, window, softcap, alibi, peers in cases:
        if args.filter and not any(f in name for f in args.filter.split(",")):
            continue
        q = torch.randn(B, L, Hq, D, device=dev, dtype=dt)
        k = torch.randn(B, L, Hk, D, device=dev, dtype=dt)
        v = torch.randn(B, L, Hk, D, device=dev, dtype=dt)
        out = torch.empty_like(q)
        slopes = (torch.rand(Hq, device=dev, dtype=torch.float32) * 0.1 + 0.01) if alibi else None
        scale = 1.0 / math.sqrt(D)
        kw = dict(causal=causal, window=window, softcap=softcap, alibi_slopes=slopes)

        def ours():
            cflash.attn_dense(q, k, v, out=out, **kw)

        # correctness first
        out.fill_(float("nan"))
        ours()
        torch.cuda.synchronize()
        rows = slice(0, min(L, 2048)) if L <= 4096 else slice(L - 1024, L)
        ref = reference_slice(q, k, v, causal, window, softcap, slopes, scale, rows)
        err = (out[0, rows, 0].float() - ref).abs().max().item()
        finite = bool(torch.isfinite(out).all().item())
        # same-precision yardstick: torch SDPA (FA2 when it can serve the call, else math in bf16)
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        yard = None
        if not softcap and not alibi and window == (-1, -1):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION if Hq == Hk else SDPBackend.CUDNN_ATTENTION):
                o_y = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=Hq != Hk)
            yard = (o_y.transpose(1, 2)[0, rows, 0].float() - ref).abs().max().item()
        tol = 2 * (yard if yard is not None else 4e-3) + 1e-3
        correct = finite and err <= tol
        ms = time_ms(ours)
        out.fill_(float("nan"))
        ours()
        torch.cuda.synchronize()
        correct = correct and bool(torch.isfinite(out).all().item())
        flops = 2 * B * Hq * visible_rows(L, L, causal, window) * (D + D)
        tf = flops / ms / 1e9
        # the mma.sync kernel on the same case (what GPUs other than compute capability 9.0 run)
        os.environ["CFLASH_CUDA_KERNEL"] = "mma"
        try:
            tf_mma = flops / time_ms(ours) / 1e9
        finally:
            del os.environ["CFLASH_CUDA_KERNEL"]
        if name.startswith("feature") and "yardstick" in name:
            plain["causal" if causal else "full"] = tf
        peer_vals = {}
        if name.startswith("feature"):  # FlexAttention with the same rules as score / mask mods
            qf, kf, vf = (x.transpose(1, 2).contiguous() for x in (q, k, v))
            left = window[0]
            mask_mod = (lambda b, h, i, j: (i >= j) & (i - j <= left)) if causal and left >= 0 else \
                       (lambda b, h, i, j: i >= j) if causal else None
            score_mod = None
            if alibi:
                score_mod = lambda sc, b, h, i, j: sc - slopes[h] * (i - j).abs()
            elif softcap:
                score_mod = lambda sc, b, h, i, j: softcap * torch.tanh(sc / softcap)
            ms_flex = flex_time(torch, qf, kf, vf, B, Hq, L, L, mask_mod=mask_mod, score_mod=score_mod)
            peer_vals["flex"] = flops / ms_flex / 1e9 if ms_flex else None
            del qf, kf, vf
        for peer in peers:
            backend = SDPBackend.CUDNN_ATTENTION if peer == "cudnn" else SDPBackend.FLASH_ATTENTION
            try:
                with sdpa_kernel(backend):
                    def run_peer():
                        F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=Hq != Hk)
                    peer_vals[peer] = flops / time_ms(run_peer) / 1e9
            except RuntimeError as e:  # the backend refuses this shape
                peer_vals[peer] = None
                print(f"  {peer} refused {name}: {str(e).splitlines()[0][:100]}", file=sys.stderr)
        for peer, value in peer_vals.items():
            records.append({"case": name, "unit": "TFLOP/s", "ours": round(tf, 1), "ours_mma": round(tf_mma, 1), "peer": peer,
                            "peer_value": None if value is None else round(value, 1),
                            "ratio": None if not value else round(tf / value, 3), "correct": correct,
                            "max_err": round(err, 5)})
        if not peers or (name.startswith("feature") and "yardstick" not in name):  # ratio to our plain kernel below
            records.append({"case": name, "unit": "TFLOP/s", "ours": round(tf, 1), "ours_mma": round(tf_mma, 1),
                            "peer": "self_dense", "peer_value": None, "ratio": None, "correct": correct,
                            "max_err": round(err, 5)})
        rows_out.append((name, tf, peer_vals.get("cudnn"), peer_vals.get("fa2"), correct, err, tol, tf_mma,
                         peer_vals.get("flex")))
        del q, k, v, out
        torch.cuda.empty_cache()

    # packed sequences and a key-side mask against our own dense kernel on the same useful FLOPs
    # (PERF.md: varlen / masks >= 1.0x FA2 on the same-FLOP dense shape is the first bar; torch
    # has no varlen SDPA, so the peer here is our dense kernel, whose FA2 ratio is above)
    if not args.quick and (not args.filter or any(x in "varlen keyside range" for x in args.filter.split(","))):
        records.extend(packed_cases(cflash, torch, rows_out, time_ms))

    # feature rows: ratio to our own plain kernel on the same mask family
    for r in records:
        if r["case"].startswith("feature") and r["peer"] == "self_dense":
            base = plain.get("causal" if "causal" in r["case"] else "full")
            if base:
                r["peer_value"] = round(base, 1)
                r["ratio"] = round(r["ours"] / base, 3)

    write_results(args.out, records, torch)

    print(f"\n{'case':<62} {'ours':>7} {'mma':>7} {'cuDNN':>7} {'FA2':>7} {'flex':>7} {'/FA2':>6} ok  err")
    for name, tf, cu, fa, ok, err, tol, tf_mma, fx in rows_out:
        ratio = f"{tf / fa:6.2f}" if fa else "     -"
        print(f"{name:<62} {tf:7.1f} {tf_mma or 0:7.1f} {cu or 0:7.1f} {fa or 0:7.1f} {fx or 0:7.1f} {ratio} "
              f"{'y' if ok else 'N'}  {err:.2g}/{tol:.2g}")
    return 0 if all(r[4] for r in rows_out) else 1


if __name__ == "__main__":
    sys.exit(main())
