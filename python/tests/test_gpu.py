"""The Python API on GPU tensors (torch CUDA): dense and varlen calls against the fp64 reference,
the output allocated by torch on the input's device, the call queued on torch's current stream,
and the calls the CUDA backend does not serve raising NotImplementedError. Skips (saying so)
without a CUDA build or a GPU; scripts/gpu_check.sh runs it on the GPU machine."""

import numpy as np
import pytest

import cflash
import reference
from cflash import _cflash, _env
from helpers import check, randn, require


@pytest.fixture
def torch():
    torch = require("torch")
    if not _cflash.HAVE_CUDA:
        pytest.skip("this cflash build has no CUDA backend")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (this machine has none)")
    return torch


def cuda(torch, x, dtype):
    return torch.from_numpy(np.ascontiguousarray(x)).to(device="cuda", dtype=getattr(torch, dtype))


def back(t):
    return t.float().cpu().numpy().astype(np.float64)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("D", [64, 128, 256, 72])
@pytest.mark.parametrize("mask", ["none", "causal", "causal_tl", "window"])
def test_dense(torch, rng, dtype, D, mask):
    B, Lq, Lk, Hq, Hk = 2, 77, 130, 4, 2
    q, k, v = randn(rng, (B, Lq, Hq, D), dtype), randn(rng, (B, Lk, Hk, D), dtype), randn(rng, (B, Lk, Hk, D), dtype)
    kw = {"none": {}, "causal": dict(causal=True), "causal_tl": dict(causal=True, align="top_left"),
          "window": dict(window=(20, 5))}[mask]
    out, lse = cflash.attn_dense(cuda(torch, q, dtype), cuda(torch, k, dtype), cuda(torch, v, dtype), return_lse=True, **kw)
    assert out.is_cuda and out.dtype == getattr(torch, dtype) and out.shape == (B, Lq, Hq, D)
    check(back(out), back(lse), lambda rnd: reference.dense(q, k, v, rnd=rnd, **kw), dtype)


def test_varlen_bhsd_and_stream(torch, rng):
    dtype, D, Hq, Hk = "bfloat16", 128, 8, 2
    lq, lk = [0, 17, 300, 1], [5, 0, 260, 64]
    cu_q, cu_k = np.cumsum([0] + lq), np.cumsum([0] + lk)
    q, k, v = randn(rng, (cu_q[-1], Hq, D), dtype), randn(rng, (cu_k[-1], Hk, D), dtype), randn(rng, (cu_k[-1], Hk, D), dtype)
    tq, tk, tv = cuda(torch, q, dtype), cuda(torch, k, dtype), cuda(torch, v, dtype)
    cq = torch.tensor(cu_q, dtype=torch.int32, device="cuda")
    ck = torch.tensor(cu_k, dtype=torch.int32, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # queued on the current (side) stream
        # the call's stream: torch's current one (through torch's DLPack exchange table, or torch)
        assert _env.call_stream(tq) == (stream.cuda_stream, type(tq))
        out, lse = cflash.attn_varlen(tq, tk, tv, cq, ck, max(lq), max(lk), causal=True, return_lse=True)
    stream.synchronize()
    check(back(out), back(lse), lambda rnd: reference.varlen(q, k, v, cu_q, cu_k, causal=True, rnd=rnd), dtype)
    assert _env.call_stream(tq) == (torch.cuda.current_stream().cuda_stream, type(tq))
    if hasattr(torch.Tensor, "__dlpack_c_exchange_api__"):
        assert _cflash.work_stream(tq) == (2, torch.cuda.current_stream().cuda_stream)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dense_mask_and_bias(torch, rng, dtype):
    """A bool mask [B, 1, Lq, Lk] and an fp32 bias [1, Hq, 1, Lk] (dense layout, broadcast axes)."""
    B, Lq, Lk, Hq, Hk, D = 2, 70, 150, 4, 2, 64
    q, k, v = randn(rng, (B, Lq, Hq, D), dtype), randn(rng, (B, Lk, Hk, D), dtype), randn(rng, (B, Lk, Hk, D), dtype)
    mask = rng.random((B, 1, Lq, Lk)) < 0.7
    bias = rng.standard_normal((1, Hq, 1, Lk)).astype(np.float32)
    out, lse = cflash.attn_dense(cuda(torch, q, dtype), cuda(torch, k, dtype), cuda(torch, v, dtype),
                                 mask=torch.from_numpy(mask).cuda(), bias=torch.from_numpy(bias).cuda(),
                                 causal=True, return_lse=True)
    check(back(out), back(lse), lambda rnd: reference.dense(q, k, v, mask=mask, bias=bias, causal=True, rnd=rnd), dtype)


def test_varlen_key_side_mask_query_side_bias(torch, rng):
    """flash-dmattn's layouts on the GPU: key-side mask [Tk, Hv], query-side bf16 bias [Tq, Hv, max_k]."""
    dtype, D, Hq, Hk = "float16", 128, 4, 2
    lq, lk = [3, 0, 90, 40], [50, 7, 130, 0]
    cu_q, cu_k = np.cumsum([0] + lq), np.cumsum([0] + lk)
    q, k, v = randn(rng, (cu_q[-1], Hq, D), dtype), randn(rng, (cu_k[-1], Hk, D), dtype), randn(rng, (cu_k[-1], Hk, D), dtype)
    mask = rng.random((cu_k[-1], Hk)) < 0.6
    bias = randn(rng, (cu_q[-1], 1, max(lk)), "bfloat16")
    cq = torch.tensor(cu_q, dtype=torch.int32, device="cuda")
    ck = torch.tensor(cu_k, dtype=torch.int32, device="cuda")
    args = (cuda(torch, q, dtype), cuda(torch, k, dtype), cuda(torch, v, dtype), cq, ck)
    kw = dict(mask=torch.from_numpy(mask).cuda(), bias=cuda(torch, bias, "bfloat16"), return_lse=True)
    with pytest.raises(ValueError, match="max_seqlen"):  # the lengths are on the device: hints needed
        cflash.attn_varlen(*args, **kw)
    out, lse = cflash.attn_varlen(*args, max(lq), max(lk), **kw)
    check(back(out), back(lse), lambda rnd: reference.varlen(q, k, v, cu_q, cu_k, mask=mask, mask_layout="key_side",
                                                             bias=bias, bias_layout="query_side", rnd=rnd), dtype)


@pytest.mark.parametrize("engine", ["auto", "mma"])
@pytest.mark.parametrize("varlen,D", [(False, 64), (False, 128), (False, 256), (True, 128)])
def test_key_side_mask_and_bias(torch, rng, monkeypatch, engine, varlen, D):
    """One mask / bias value per key, the same for every row (the kernels stage these per key
    block in shared memory): dense [B, 1, 1, Lk] mask with a [B, Hq, 1, Lk] bias (fp16 at D = 64,
    fp32 at 128, bf16 at 256; key blocks of 64 and 128; full and causal), and packed [Tk, Hv]
    masks; with the engine the library picks and with the mma.sync kernel forced."""
    monkeypatch.setenv("CFLASH_CUDA_KERNEL", engine)
    dtype, Hq, Hk = "bfloat16", 4, 2
    if not varlen:
        B, Lq, Lk, causal = 2, 70, 300, D != 64
        bias_dtype = {64: "float16", 128: "float32", 256: "bfloat16"}[D]
        q, k, v = randn(rng, (B, Lq, Hq, D), dtype), randn(rng, (B, Lk, Hk, D), dtype), randn(rng, (B, Lk, Hk, D), dtype)
        mask = rng.random((B, 1, 1, Lk)) < 0.6
        bias = randn(rng, (B, Hq, 1, Lk), bias_dtype)
        out, lse = cflash.attn_dense(cuda(torch, q, dtype), cuda(torch, k, dtype), cuda(torch, v, dtype),
                                     mask=torch.from_numpy(mask).cuda(), bias=cuda(torch, bias, bias_dtype),
                                     causal=causal, softcap=20.0 if D == 256 else 0.0, return_lse=True)
        check(back(out), back(lse), lambda rnd: reference.dense(q, k, v, mask=mask, bias=bias, causal=causal,
                                                                softcap=20.0 if D == 256 else 0.0, rnd=rnd), dtype)
        return
    lq, lk = [3, 0, 140, 40], [50, 7, 260, 0]
    cu_q, cu_k = np.cumsum([0] + lq), np.cumsum([0] + lk)
    q, k, v = randn(rng, (cu_q[-1], Hq, D), dtype), randn(rng, (cu_k[-1], Hk, D), dtype), randn(rng, (cu_k[-1], Hk, D), dtype)
    mask = rng.random((cu_k[-1], Hk)) < 0.6
    cq = torch.tensor(cu_q, dtype=torch.int32, device="cuda")
    ck = torch.tensor(cu_k, dtype=torch.int32, device="cuda")
    out, lse = cflash.attn_varlen(cuda(torch, q, dtype), cuda(torch, k, dtype), cuda(torch, v, dtype), cq, ck,
                                  max(lq), max(lk), mask=torch.from_numpy(mask).cuda(), window=(100, 0), return_lse=True)
    check(back(out), back(lse), lambda rnd: reference.varlen(q, k, v, cu_q, cu_k, mask=mask, mask_layout="key_side",
                                                             window=(100, 0), rnd=rnd), dtype)


RANGE_CASE = dict(Tq=700, Tk=900,
                  q_ranges=[[0, 150], [150, 400], [150, 400], [150, 400], [400, 530], [530, 600], [600, 650]],
                  k_ranges=[[0, 150], [0, 120], [200, 460], [500, 900], [600, 900], [100, 300], [640, 700]],
                  types=["causal", "full", "band", "inv_causal", "causal", "band", "full"])


@pytest.mark.parametrize("engine", ["auto", "mma"])
@pytest.mark.parametrize("D", [64, 128, 256, 96])
def test_range_plan(torch, rng, monkeypatch, engine, D):
    """A range plan on the GPU: a causal document, a row block seeing three key slices of
    different types, band and inverse-causal slices, rows in no slice (empty rows), ALiBi from
    each slice's diagonal and sinks; the plan reused with a key-side mask. Both engines."""
    monkeypatch.setenv("CFLASH_CUDA_KERNEL", engine)
    c = RANGE_CASE
    dtype, Hq, Hk, Tq, Tk = "bfloat16", 4, 2, c["Tq"], c["Tk"]
    q, k, v = randn(rng, (Tq, Hq, D), dtype), randn(rng, (Tk, Hk, D), dtype), randn(rng, (Tk, Hk, D), dtype)
    plan = cflash.RangePlan(c["q_ranges"], c["k_ranges"], Tq, Tk, attn_type_map=c["types"])
    slopes = (rng.random(Hq) * 0.1).astype(np.float32)
    sinks = rng.standard_normal(Hq).astype(np.float32)
    tq, tk, tv = cuda(torch, q, dtype), cuda(torch, k, dtype), cuda(torch, v, dtype)
    out, lse = cflash.attn_range(tq, tk, tv, plan, alibi_slopes=torch.from_numpy(slopes).cuda(),
                                 sinks=torch.from_numpy(sinks).cuda(), return_lse=True)
    check(back(out), back(lse), lambda rnd: reference.range_plan(q, k, v, c["q_ranges"], c["k_ranges"], c["types"],
                                                                 alibi=slopes, sinks=sinks, rnd=rnd), dtype)
    mask = rng.random((Tk, Hk)) < 0.6
    out, lse = cflash.attn_range(tq, tk, tv, plan, mask=torch.from_numpy(mask).cuda(), return_lse=True)
    check(back(out), back(lse), lambda rnd: reference.range_plan(q, k, v, c["q_ranges"], c["k_ranges"], c["types"],
                                                                 mask=reference.head_variants(mask.T[:, None, :], Hq),
                                                                 rnd=rnd), dtype)


@pytest.mark.parametrize("engine", ["auto", "mma"])
@pytest.mark.parametrize("causal", [True, False])
def test_document_mask_plan(torch, rng, monkeypatch, engine, causal):
    """A document mask as a range plan (slices out of order, rows and keys between documents in
    no slice) runs as a packed varlen batch on the GPU (cu_seqlens uploaded with the plan): with
    ALiBi, sinks and softcap, both engines; the same plan with a mask walks the slices."""
    monkeypatch.setenv("CFLASH_CUDA_KERNEL", engine)
    dtype, Hq, Hk, D, Tq, Tk = "bfloat16", 4, 2, 128, 700, 800
    qr, kr = [[300, 650], [0, 130], [140, 290]], [[420, 800], [0, 200], [200, 330]]
    types = ["causal" if causal else "full"] * 3
    plan = cflash.RangePlan(qr, kr, Tq, Tk, attn_type_map=types)
    assert plan.packed_sequences == 7  # three documents; rows 130-140, 290-300, 650-700; keys 330-420
    q, k, v = randn(rng, (Tq, Hq, D), dtype), randn(rng, (Tk, Hk, D), dtype), randn(rng, (Tk, Hk, D), dtype)
    slopes = (rng.random(Hq) * 0.1).astype(np.float32)
    sinks = rng.standard_normal(Hq).astype(np.float32)
    tq, tk, tv = cuda(torch, q, dtype), cuda(torch, k, dtype), cuda(torch, v, dtype)
    out, lse = cflash.attn_range(tq, tk, tv, plan, alibi_slopes=torch.from_numpy(slopes).cuda(),
                                 sinks=torch.from_numpy(sinks).cuda(), softcap=30.0, return_lse=True)
    check(back(out), back(lse), lambda rnd: reference.range_plan(q, k, v, qr, kr, types, alibi=slopes, sinks=sinks,
                                                                 softcap=30.0, rnd=rnd), dtype)
    mask = rng.random((Tk, Hk)) < 0.6
    out, lse = cflash.attn_range(tq, tk, tv, plan, mask=torch.from_numpy(mask).cuda(), return_lse=True)
    check(back(out), back(lse), lambda rnd: reference.range_plan(q, k, v, qr, kr, types,
                                                                 mask=reference.head_variants(mask.T[:, None, :], Hq),
                                                                 rnd=rnd), dtype)


def test_kvcache_chunked_prefill(torch, rng):
    """flash_attn_with_kvcache with 48 new queries and keys per sequence (chunked prefill, Lq > 8:
    the append, then the prefill kernel), cache_batch_idx, causal bottom-right over the whole
    cache; the appended rows land in the cache."""
    from cflash.flash_attn import flash_attn_with_kvcache
    dtype, B, Hq, Hk, D, Lq, L = "bfloat16", 2, 8, 2, 128, 48, 256
    seq, bidx = [30, 150], [2, 0]
    q, kc, vc = randn(rng, (B, Lq, Hq, D), dtype), randn(rng, (3, L, Hk, D), dtype), randn(rng, (3, L, Hk, D), dtype)
    kn, vn = randn(rng, (B, Lq, Hk, D), dtype), randn(rng, (B, Lq, Hk, D), dtype)
    tkc, tvc = cuda(torch, kc, dtype), cuda(torch, vc, dtype)
    out, lse = flash_attn_with_kvcache(cuda(torch, q, dtype), tkc, tvc, k=cuda(torch, kn, dtype), v=cuda(torch, vn, dtype),
                                      cache_seqlens=torch.tensor(seq, dtype=torch.int32, device="cuda"),
                                      cache_batch_idx=torch.tensor(bidx, dtype=torch.int32, device="cuda"),
                                      causal=True, return_softmax_lse=True)
    kw = dict(batch_idx=bidx, causal=True)
    _, _, k_after, v_after = reference.kvcache(q, kc, vc, seq, kn, vn, **kw)
    assert np.array_equal(back(tkc), k_after) and np.array_equal(back(tvc), v_after), "the appended rows"
    check(back(out), back(lse), lambda rnd: reference.kvcache(q, kc, vc, seq, kn, vn, rnd=rnd, **kw)[:2], dtype)


@pytest.mark.parametrize("page", [16, 5])
def test_kvcache_paged_chunked_prefill_rotary(torch, rng, page):
    """Chunked prefill over a paged cache with rotary (Lq = 20 > 8: the append rotates the new
    keys into their pages, q is rotated into a workspace, then the prefill kernel reads the
    pages through the block table), causal, against the fp64 reference."""
    from cflash.flash_attn import flash_attn_with_kvcache
    dtype, B, Hq, Hk, D, Lq, half = "float16", 2, 8, 2, 128, 20, 32
    per = 80 // page + 1
    seq = [33, 60 - Lq + 10]
    npages = B * per + 3
    q, kc, vc = randn(rng, (B, Lq, Hq, D), dtype), randn(rng, (npages, page, Hk, D), dtype), randn(rng, (npages, page, Hk, D), dtype)
    kn, vn = randn(rng, (B, Lq, Hk, D), dtype), randn(rng, (B, Lq, Hk, D), dtype)
    table = rng.permutation(npages)[:B * per].astype(np.int32).reshape(B, per)
    ang = rng.random((per * page, half)) * 3.0
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    tkc, tvc = cuda(torch, kc, dtype), cuda(torch, vc, dtype)
    out, lse = flash_attn_with_kvcache(cuda(torch, q, dtype), tkc, tvc, k=cuda(torch, kn, dtype), v=cuda(torch, vn, dtype),
                                      cache_seqlens=torch.tensor(seq, dtype=torch.int32, device="cuda"),
                                      block_table=torch.from_numpy(table).cuda(), rotary_cos=torch.from_numpy(cos).cuda(),
                                      rotary_sin=torch.from_numpy(sin).cuda(), rotary_interleaved=False, causal=True,
                                      return_softmax_lse=True)
    kw = dict(block_table=table, rotary_cos=cos, rotary_sin=sin, interleaved=False, causal=True)
    _, _, k_after, v_after = reference.kvcache(q, kc, vc, seq, kn, vn, **kw)
    assert np.allclose(back(tkc), k_after, rtol=2e-3, atol=2e-3) and np.array_equal(back(tvc), v_after), "the appended rows"
    check(back(out), back(lse), lambda rnd: reference.kvcache(q, kc, vc, seq, kn, vn, rnd=rnd, **kw)[:2], dtype)


def test_magi_on_gpu(torch, rng):
    """MagiAttention's call shape on CUDA tensors (ranges given as CUDA int32 tensors, read to the
    host once per distinct plan): out [Tq, Hq, D] and lse [Tq, Hq] on the GPU."""
    from cflash.magi import flex_flash_attn_func
    c = RANGE_CASE
    dtype, Hq, Hk, D, Tq, Tk = "float16", 4, 2, 128, c["Tq"], c["Tk"]
    codes = [{"full": 0, "causal": 1, "inv_causal": 2, "band": 3}[t] for t in c["types"]]
    q, k, v = randn(rng, (Tq, Hq, D), dtype), randn(rng, (Tk, Hk, D), dtype), randn(rng, (Tk, Hk, D), dtype)
    ints = lambda x: torch.tensor(x, dtype=torch.int32, device="cuda")
    out, lse = flex_flash_attn_func(cuda(torch, q, dtype), cuda(torch, k, dtype), cuda(torch, v, dtype),
                                    ints(c["q_ranges"]), ints(c["k_ranges"]), ints(codes))
    assert out.is_cuda and lse.is_cuda and tuple(lse.shape) == (Tq, Hq)
    check(back(out), back(lse).T, lambda rnd: reference.range_plan(q, k, v, c["q_ranges"], c["k_ranges"], codes, rnd=rnd),
          dtype)


def test_unsupported_on_gpu_raise(torch, rng):
    q = torch.randn(1, 16, 2, 64, device="cuda", dtype=torch.float16)
    with pytest.raises(NotImplementedError, match="float16 or bfloat16"):
        cflash.attn_dense(q.float(), q.float(), q.float())
    out = torch.full_like(q, 7.0)
    with pytest.raises(NotImplementedError, match="multiples of 8"):
        cflash.attn_dense(q[..., :20], q[..., :20], q[..., :20], out=out[..., :20])
    assert (out == 7.0).all()
    with pytest.raises(ValueError, match="must be on q's device"):
        cflash.attn_dense(q, q.cpu(), q)
    with pytest.raises(ValueError, match="must be on q's device"):
        cflash.attn_dense(q, q, q, mask=torch.ones(1, 1, 1, 16, dtype=torch.bool))


def test_host_metadata_and_side_stream(torch, rng):
    """flash-attn style GPU calls with Python metadata (an int cache_seqlens, a list of ALiBi
    slopes: they move to q's GPU), and the merge queued on torch's current side stream."""
    from cflash.flash_attn import flash_attn_with_kvcache
    dtype, B, Hq, Hk, D, L = "float16", 2, 8, 2, 64, 96
    q = randn(rng, (B, 1, Hq, D), dtype)
    kc, vc = randn(rng, (B, L, Hk, D), dtype), randn(rng, (B, L, Hk, D), dtype)
    slopes = [0.1 * (h + 1) for h in range(Hq)]
    out = flash_attn_with_kvcache(cuda(torch, q, dtype), cuda(torch, kc, dtype), cuda(torch, vc, dtype),
                                  cache_seqlens=50, alibi_slopes=torch.tensor(slopes).cuda())
    check(back(out), None, lambda rnd: reference.kvcache(q, kc, vc, [50, 50], alibi=np.array(slopes), rnd=rnd)[:1] + (None,),
          dtype)
    out2 = cflash.attn_kvcache(cuda(torch, q, dtype), cuda(torch, kc, dtype), cuda(torch, vc, dtype), 50,
                               alibi_slopes=slopes)
    assert torch.equal(out, out2)
    o1, l1 = cflash.attn_dense(cuda(torch, q, dtype), cuda(torch, kc[:, :30], dtype), cuda(torch, vc[:, :30], dtype), return_lse=True)
    o2, l2 = cflash.attn_dense(cuda(torch, q, dtype), cuda(torch, kc[:, 30:50], dtype), cuda(torch, vc[:, 30:50], dtype), return_lse=True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        merged, _ = cflash.merge(o1, l1, o2, l2)
    stream.synchronize()
    plain = cflash.attn_dense(cuda(torch, q, dtype), cuda(torch, kc[:, :50], dtype), cuda(torch, vc[:, :50], dtype))
    assert (merged.float() - plain.float()).abs().max().item() < 2e-3


@pytest.mark.parametrize("interleaved", [False, True])
def test_kvcache_rotary(torch, rng, interleaved):
    """Rotary embedding on the GPU: the appended keys rotated into the cache (fp32 math, stored
    in fp16) and q rotated per query position (causal), against the fp64 reference."""
    dtype, B, Hq, Hk, D, Lq, Lnew, L, half = "float16", 2, 8, 2, 64, 2, 3, 64, 16
    seq = [20, 45]
    q, kc, vc = randn(rng, (B, Lq, Hq, D), dtype), randn(rng, (B, L, Hk, D), dtype), randn(rng, (B, L, Hk, D), dtype)
    kn, vn = randn(rng, (B, Lnew, Hk, D), dtype), randn(rng, (B, Lnew, Hk, D), dtype)
    ang = rng.random((L, half)) * 3.0
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    tkc, tvc = cuda(torch, kc, dtype), cuda(torch, vc, dtype)
    out = cflash.attn_kvcache(cuda(torch, q, dtype), tkc, tvc, torch.tensor(seq, dtype=torch.int32, device="cuda"),
                              cuda(torch, kn, dtype), cuda(torch, vn, dtype), rotary_cos=torch.from_numpy(cos).cuda(),
                              rotary_sin=torch.from_numpy(sin).cuda(), rotary_interleaved=interleaved, causal=True)
    kw = dict(rotary_cos=cos, rotary_sin=sin, interleaved=interleaved, causal=True)
    _, _, k_after, v_after = reference.kvcache(q, kc, vc, seq, kn, vn, **kw)
    got_k, got_v = back(tkc), back(tvc)
    for b in range(B):
        rows = slice(seq[b], seq[b] + Lnew)
        assert np.allclose(got_k[b, rows], k_after[b, rows], rtol=2e-3, atol=2e-3), "rotated keys in the cache"
        assert np.array_equal(got_v[b, rows], v_after[b, rows])
        assert np.array_equal(got_k[b, :seq[b]], kc[b, :seq[b]]) and np.array_equal(got_k[b, seq[b] + Lnew:], kc[b, seq[b] + Lnew:])
    # q is rotated in fp16 on the GPU (fp32 on the CPU): the naive run rounds the rotated q too
    check(back(out), None, lambda rnd: reference.kvcache(q, kc, vc, seq, kn, vn, rnd=rnd, **kw)[:1] + (None,), dtype)


@pytest.mark.parametrize("case", ["paged_rotary", "contiguous_128_heads"])
def test_kvcache_mla(torch, rng, case):
    """MLA over a KV cache (D = 576, Dv = 512: V is the first 512 columns of the one latent K
    head, passed as views k_cache[..., :512] and k[..., :512]): the MLA kernel, paged with rotary
    and causal over 2 new tokens, or contiguous decode with 128 query heads (two 64-row tiles)."""
    from cflash.flash_attn import flash_attn_with_kvcache
    paged = case == "paged_rotary"
    dtype, B, Hq, D, Dv = "bfloat16", 2, 16 if paged else 128, 576, 512
    Lq, page, seq = (2, 16, [37, 70]) if paged else (1, 0, [200, 5])
    L = 96 if paged else 256
    q, kn = randn(rng, (B, Lq, Hq, D), dtype), randn(rng, (B, Lq, 1, D), dtype)
    kw = dict(causal=True) if paged else dict(softcap=15.0)
    if paged:
        npages = B * L // page
        kc = randn(rng, (npages, page, 1, D), dtype)
        table = rng.permutation(npages).astype(np.int32).reshape(B, L // page)
        ang = rng.random((L, 32)) * 3.0
        cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
        kw.update(block_table=table, rotary_cos=cos, rotary_sin=sin, rotary_interleaved=False)
    else:
        kc = randn(rng, (B, L, 1, D), dtype)
    tkc, tkn = cuda(torch, kc, dtype), cuda(torch, kn, dtype)
    gpu = {k: torch.from_numpy(v).cuda() if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    out, lse = flash_attn_with_kvcache(cuda(torch, q, dtype), tkc, tkc[..., :Dv], k=tkn, v=tkn[..., :Dv],
                                      cache_seqlens=torch.tensor(seq, dtype=torch.int32, device="cuda"),
                                      return_softmax_lse=True, **gpu)
    assert tuple(out.shape) == (B, Lq, Hq, Dv)
    ref = {("interleaved" if k == "rotary_interleaved" else k): v for k, v in kw.items()}
    _, _, k_after, _ = reference.kvcache(q, kc, None, seq, kn, None, **ref)
    assert np.allclose(back(tkc), k_after, rtol=1e-2, atol=1e-2), "the appended (rotated) rows"
    # out with V := K[..., :512] is the first 512 columns of out with V := K
    check(back(out), back(lse),
          lambda rnd: (lambda o, l: (o[..., :Dv], l))(*reference.kvcache(q, kc, None, seq, kn, None, rnd=rnd, **ref)[:2]),
          dtype)


def test_dense_mla(torch, rng):
    """flash_attn_func with the MLA shape on CUDA tensors (D = 576, v = k[..., :512], one latent
    KV head, 16 query heads, causal bottom-right with Lq < Lk): the MLA kernel through the dense
    entry point, against the fp64 reference (V := K, first 512 output columns)."""
    from cflash.flash_attn import flash_attn_func
    dtype, B, Lq, Lk, Hq, D, Dv = "bfloat16", 2, 40, 150, 16, 576, 512
    q, k = randn(rng, (B, Lq, Hq, D), dtype), randn(rng, (B, Lk, 1, D), dtype)
    tk = cuda(torch, k, dtype)
    out, lse, _ = flash_attn_func(cuda(torch, q, dtype), tk, tk[..., :Dv], causal=True, return_attn_probs=True)
    assert tuple(out.shape) == (B, Lq, Hq, Dv)
    check(back(out), back(lse), lambda rnd: (lambda o, l: (o[..., :Dv], l))(
        *reference.dense(q, k, k, causal=True, rnd=rnd)), dtype)


@pytest.mark.parametrize("case", ["decode", "decode_paged_q4", "chunked_prefill", "mla"])
def test_kvcache_mask_bias(torch, rng, case):
    """Boolean masks and additive biases (the dense layout over the cache's logical keys) in
    KV-cache calls on the GPU: the decode kernel (Lq 1; Lq 4 over pages of 16), the prefill
    kernel (Lq 20 > 8) and the MLA kernel (D 576 / Dv 512, mask only), causal, new keys appended,
    against the fp64 reference. The sources span the capacity (96 keys); the GPU cannot check
    them against cache_seqlens, so they must cover every sequence's keys."""
    Lq, Lnew, page = {"decode": (1, 1, 0), "decode_paged_q4": (4, 3, 16), "chunked_prefill": (20, 20, 0),
                      "mla": (2, 2, 0)}[case]
    mla = case == "mla"
    dtype, B, L = "bfloat16", 2, 96
    Hq, Hk, D, Dv = (16, 1, 576, 512) if mla else (8, 2, 128, 128)
    seq = [30, 70 - Lnew]
    q = randn(rng, (B, Lq, Hq, D), dtype)
    kn, vn = randn(rng, (B, Lnew, Hk, D), dtype), randn(rng, (B, Lnew, Hk, Dv), dtype)
    if page:
        npages = B * L // page
        kc, vc = randn(rng, (npages, page, Hk, D), dtype), randn(rng, (npages, page, Hk, Dv), dtype)
        table = rng.permutation(npages).astype(np.int32).reshape(B, L // page)
    else:
        kc, vc, table = randn(rng, (B, L, Hk, D), dtype), randn(rng, (B, L, Hk, Dv), dtype), None
    mask = rng.random((B, Hk, Lq, L)) > 0.3
    bias = None if mla else rng.standard_normal((1, Hq, 1, L)).astype(np.float16)
    tkc, tkn = cuda(torch, kc, dtype), cuda(torch, kn, dtype)
    tvc, tvn = (tkc[..., :Dv], tkn[..., :Dv]) if mla else (cuda(torch, vc, dtype), cuda(torch, vn, dtype))
    out, lse = cflash.attn_kvcache(cuda(torch, q, dtype), tkc, tvc, torch.tensor(seq, dtype=torch.int32, device="cuda"),
                                   tkn, tvn, block_table=None if table is None else torch.from_numpy(table).cuda(),
                                   mask=torch.from_numpy(mask).cuda(),
                                   bias=None if bias is None else torch.from_numpy(bias).cuda(),
                                   causal=True, return_lse=True)
    kw = dict(block_table=table, causal=True, mask=mask, bias=None if bias is None else bias.astype(np.float64))
    if mla:  # V := K[..., :512]: the first 512 output columns of V := K
        ref = lambda rnd: (lambda o, l: (o[..., :Dv], l))(*reference.kvcache(q, kc, None, seq, kn, None, rnd=rnd, **kw)[:2])
    else:
        ref = lambda rnd: reference.kvcache(q, kc, vc, seq, kn, vn, rnd=rnd, **kw)[:2]  # noqa: E731
    check(back(out), back(lse), ref, dtype)


def test_mlm_contexts_on_gpu(torch, rng):
    """flash-mlm layer contexts on CUDA tensors (entries in GPU memory; metadata on the GPU, read
    on the host once per call): per-batch contexts of lengths [3, 0, 7] stored packed then read by
    a dense call (lse too); a shared context grown by a packed cumulative prefill (append) and
    read again; ctx_idx with append; a host entry used by a GPU call is a ValueError."""
    from cflash._context import ContextCache, attn_mlm
    dtype, Hq, Hk, D = "bfloat16", 4, 2, 128
    t = lambda x: cuda(torch, x, dtype)  # noqa: E731
    ints = lambda x: torch.tensor(x, dtype=torch.int32, device="cuda")  # noqa: E731

    def ctxs(lengths):
        cs = [(randn(rng, (n, Hk, D), dtype), randn(rng, (n, Hk, D), dtype)) for n in lengths]
        cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        return cs, np.concatenate([c[0] for c in cs]), np.concatenate([c[1] for c in cs]), cu

    # per-batch contexts, dense new tokens
    cache = ContextCache()
    cs, ck, cv, cu = ctxs([3, 0, 7])
    cache.store(2, t(ck), t(cv), ints(cu))
    assert cache.lengths(2) == (3, 0, 7)
    q, k, v = randn(rng, (3, 5, Hq, D), dtype), randn(rng, (3, 6, Hk, D), dtype), randn(rng, (3, 6, Hk, D), dtype)
    out, lse = attn_mlm(t(q), t(k), t(v), cache=cache, layer_id=2, return_lse=True)
    assert out.is_cuda
    check(back(out), back(lse), lambda rnd: reference.mlm(q, k, v, cs, rnd=rnd), dtype)

    # a shared context, a packed cumulative prefill that appends, then a dense read
    cs, ck, cv, cu = ctxs([4])
    cache.store(0, t(ck), t(cv), ints(cu))
    cq = np.array([0, 2, 5, 9], np.int32)
    qp, kp, vp = randn(rng, (9, Hq, D), dtype), randn(rng, (9, Hk, D), dtype), randn(rng, (9, Hk, D), dtype)
    out = attn_mlm(t(qp), t(kp), t(vp), ints(cq), cache=cache, layer_id=0, cumulative=True, prefill=True,
                   prefill_mode="append")
    check(back(out), None, lambda rnd: (reference.mlm(qp, kp, vp, cs, cu_q=cq, cumulative=True, rnd=rnd)[0], None), dtype)
    assert cache.lengths(0) == (13,)
    grown = [(np.concatenate([cs[0][0], kp]), np.concatenate([cs[0][1], vp]))]
    q2, k2, v2 = randn(rng, (2, 3, Hq, D), dtype), randn(rng, (2, 1, Hk, D), dtype), randn(rng, (2, 1, Hk, D), dtype)
    out = attn_mlm(t(q2), t(k2), t(v2), cache=cache, layer_id=0)
    check(back(out), None, lambda rnd: (reference.mlm(q2, k2, v2, grown, rnd=rnd)[0], None), dtype)

    # ctx_idx: sequence b reads (and appends to) context ctx_idx[b]
    cs, ck, cv, cu = ctxs([1, 2])
    cache.store(1, t(ck), t(cv), ints(cu))
    idx = np.array([1, 0, 1], np.int32)
    q, k, v = randn(rng, (3, 2, Hq, D), dtype), randn(rng, (3, 2, Hk, D), dtype), randn(rng, (3, 2, Hk, D), dtype)
    out = attn_mlm(t(q), t(k), t(v), cache=cache, layer_id=1, ctx_idx=ints(idx), prefill=True, prefill_mode="append")
    check(back(out), None, lambda rnd: (reference.mlm(q, k, v, cs, ctx_idx=idx, rnd=rnd)[0], None), dtype)
    assert cache.lengths(1) == (1 + 2, 2 + 2 + 2)

    # an entry in host memory is not read by a GPU call
    host = ContextCache()
    host.store(0, ck.astype(np.float32), cv.astype(np.float32), cu)
    with pytest.raises(ValueError, match="layer_id"):
        attn_mlm(t(q), t(k), t(v), cache=host, layer_id=0, ctx_idx=ints(idx))
