"""cflash's own Python API: dense, packed (varlen), range-plan, KV-cache attention and the state
merge, over any DLPack array (NumPy, torch, JAX), each a thin layer over one C entry point of
include/cflash.h (semantics: SPEC.md).

Every attention function takes the same keyword options (struct cflash_attn_params):

    softmax_scale  float or None: multiplies q.k; None (or 0) = 1/sqrt(D)
    causal         bool: causal mask around the diagonal chosen by `align`
    align          "bottom_right" (flash-attn: key j is on row i's diagonal when
                   j == i + Lk - Lq) or "top_left" (torch SDPA is_causal: j == i)
    window         (left, right): keys c - left <= j <= c + right around the diagonal c;
                   -1 = unbounded side; causal caps right at 0
    softcap        float: > 0 gives s = softcap * tanh(s / softcap); 0 = off
    alibi_slopes   fp32 [Hq] or [B, Hq] (a sequence is accepted): adds -slope * |i + Lk - Lq - j|
    sinks          fp32 [Hq]: one sink logit per head, in the denominator only
    mask           bool/uint8, nonzero = keep; bias: fp32/fp16/bf16, added unscaled after the
    bias           softcap. Layouts (SPEC.md section 5), Hv in {1, Hk, Hq}:
                     "dense"       [B or 1, Hv, Lq or 1, Lk or 1]  (4-D)
                     "key_side"    [Tk, Hv]                        (2-D, packed calls)
                     "query_side"  [Tq, Hv, max_seqlen_k]          (3-D, packed calls)
    mask_layout    None (from the number of dimensions, above) or one of those names
    bias_layout
    num_threads    int: 0 = CFLASH_NUM_THREADS or all cores; results do not depend on it
    kernel         "auto" | "ref" | "avx512bf16" | "avx512" | "avx2" | "generic": a forced kernel
                   this machine cannot run raises NotImplementedError (never a silent fallback)

and these output arguments:

    out            None: allocated in the framework of q (torch -> torch.empty on q's device,
                   NumPy -> numpy.empty, JAX -> a new JAX array); or a writable tensor to write
    out_dtype      None (q's dtype) or float32 (when out is allocated)
    return_lse     also return the fp32 log-sum-exp of every row (natural log; -inf for rows
                   with no visible key, whose output is 0)
    lse            None, or a writable fp32 tensor for it (implies return_lse)

Errors: ValueError for a bad argument (TypeError for a wrong dtype or a non-tensor),
NotImplementedError for what this build or machine cannot do, MemoryError, RuntimeError. The
message names the argument. On any error nothing has been written.
"""

import numbers

from . import _cflash, _env
from ._frameworks import (dtype_name, dtype_of, empty, finish, host_array, require_tensor,
                          require_writable, shape_of)

_ALIGNS = {"bottom_right": _cflash.ALIGN_BOTTOM_RIGHT, "top_left": _cflash.ALIGN_TOP_LEFT}
_LAYOUTS = {"dense": _cflash.LAYOUT_DENSE, "key_side": _cflash.LAYOUT_KEY_SIDE,
            "query_side": _cflash.LAYOUT_QUERY_SIDE}
_LAYOUT_BY_NDIM = {4: "dense", 2: "key_side", 3: "query_side"}
_KERNELS = {_cflash.kernel_name(i): i for i in range(_cflash.KERNEL_COUNT)}
_RANGE_TYPES = {"full": _cflash.RANGE_FULL, "causal": _cflash.RANGE_CAUSAL,
                "inv_causal": _cflash.RANGE_INV_CAUSAL, "band": _cflash.RANGE_BAND}


def _choice(name, value, table):
    if value not in table:
        raise ValueError(f"{name}: must be one of {', '.join(table)}, got {value!r}")
    return table[value]


def _dims(name, x, ndim, layout):
    """x's shape after checking it is a tensor with `ndim` dimensions."""
    require_tensor(name, x)
    shape = shape_of(x, name)
    if len(shape) != ndim:
        raise ValueError(f"{name}: must have {ndim} dimensions {layout}, got {len(shape)}")
    return shape


def _layout(name, t, layout):
    if t is None:
        return _cflash.LAYOUT_DENSE
    if layout is None:
        require_tensor(name, t)
        ndim = len(shape_of(t, name))
        if ndim not in _LAYOUT_BY_NDIM:
            raise ValueError(f"{name}: must have 4 (dense [B|1, Hv, Lq|1, Lk|1]), 2 (key-side "
                             f"[Tk, Hv]) or 3 (query-side [Tq, Hv, max_seqlen_k]) dimensions, got {ndim}")
        layout = _LAYOUT_BY_NDIM[ndim]
    return _choice(f"{name}_layout", layout, _LAYOUTS)


def _params(softmax_scale, causal, align, window, softcap, alibi_slopes, sinks, mask, mask_layout,
            bias, bias_layout, num_threads, kernel, like=None):
    """The keyword arguments of the extension's attention calls (struct cflash_attn_params)."""
    if window is None:
        window = (-1, -1)
    try:
        left, right = window
    except (TypeError, ValueError):
        raise TypeError(f"window: must be a (left, right) pair, got {window!r}") from None
    if not isinstance(kernel, int):
        kernel = _choice("kernel", kernel, _KERNELS)
    return dict(
        scale=0.0 if softmax_scale is None else softmax_scale,
        softcap=softcap, causal=bool(causal), align=_choice("align", align, _ALIGNS),
        window_left=left, window_right=right,
        alibi_slopes=host_array("alibi_slopes", alibi_slopes, "float32", like),
        sinks=host_array("sinks", sinks, "float32", like),
        mask=mask, mask_layout=_layout("mask", mask, mask_layout),
        bias=bias, bias_layout=_layout("bias", bias, bias_layout),
        num_threads=num_threads, kernel=kernel)


def _outputs(q, out, out_shape, out_dtype, lse, lse_shape, return_lse, names=("q", "out", "lse")):
    """(out, lse) to write: the caller's (checked writable) or new ones in q's framework."""
    if out is None:
        out = empty(q, out_shape, dtype_of(q, names[0]) if out_dtype is None else dtype_name(out_dtype))
    else:
        require_writable(names[1], out)
    if lse is not None:
        require_writable(names[2], lse)
    elif return_lse:
        lse = empty(q, lse_shape, "float32")
    return out, lse


def _enter(function, q, k, D, Lq, Lk, params, extra=""):
    """What every call does before the kernel: the CFLASH_BACKEND check, the CUDA stream of a GPU
    call (the framework's current stream: the kernel is queued there, nothing waits) and, with
    CFLASH_TRACE=1, the call count (Lq / Lk: lengths for dense calls, token totals for packed ones)."""
    _env.check_backend(q, "q", k, "k")
    stream, owner = _env.call_stream(q)
    if stream is not None:
        params["stream"] = stream
        params["stream_owner"] = owner
    if _env.TRACE:
        _env.record(function, dtype_of(q), D, Lq, Lk, params, extra)


def _result(q, out, lse, return_lse):
    if return_lse or lse is not None:
        return finish(q, out), finish(q, lse)
    return finish(q, out)


def attn_dense(q, k, v=None, *, out=None, lse=None, return_lse=False, out_dtype=None,
               softmax_scale=None, causal=False, align="bottom_right", window=(-1, -1),
               softcap=0.0, alibi_slopes=None, sinks=None, mask=None, mask_layout=None,
               bias=None, bias_layout=None, num_threads=0, kernel="auto"):
    """Dense attention (cflash_attn_dense).

    q   [B, Lq, Hq, D]   float32 | float16 | bfloat16; any strides with stride 1 on the last
                         axis ([B, H, L, D] storage: pass q.transpose(1, 2), no copy)
    k   [B, Lk, Hk, D]   q's dtype; Hq % Hk == 0 (GQA / MQA)
    v   [B, Lk, Hk, Dv]  q's dtype; None: V := K (Dv = D)
    out [B, Lq, Hq, Dv]  returned; lse [B, Hq, Lq] fp32 with return_lse
    mask / bias: the dense layout only.
    Options and errors: see the module documentation.
    Returns out, or (out, lse) with return_lse.
    """
    B, Lq, Hq, D = _dims("q", q, 4, "[B, Lq, Hq, D]")
    Dv = _dims("v", v, 4, "[B, Lk, Hk, Dv]")[3] if v is not None else D
    _dims("k", k, 4, "[B, Lk, Hk, D]")
    params = _params(softmax_scale, causal, align, window, softcap, alibi_slopes, sinks, mask,
                     mask_layout, bias, bias_layout, num_threads, kernel, like=q)
    _enter("dense", q, k, D, Lq, shape_of(k, "k")[1], params)
    out, lse = _outputs(q, out, (B, Lq, Hq, Dv), out_dtype, lse, (B, Hq, Lq), return_lse)
    _cflash.attn_dense(q, k, v, out, lse, **params)
    return _result(q, out, lse, return_lse)


def attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, *,
                out=None, lse=None, return_lse=False, out_dtype=None, softmax_scale=None,
                causal=False, align="bottom_right", window=(-1, -1), softcap=0.0,
                alibi_slopes=None, sinks=None, mask=None, mask_layout=None, bias=None,
                bias_layout=None, num_threads=0, kernel="auto"):
    """Packed variable-length attention (cflash_attn_varlen).

    q   [Tq, Hq, D], k [Tk, Hk, D], v [Tk, Hk, Dv] (None: V := K)
    cu_seqlens_q, cu_seqlens_k: int32 [B + 1] (a sequence of ints is accepted): 0 first,
        non-decreasing, last = Tq / Tk; sequence b owns rows [cu[b], cu[b + 1]). Lengths may be
        0 (Lq = 0 writes nothing; Lk = 0 gives rows of zeros with lse -inf).
    max_seqlen_q, max_seqlen_k: hints (None = not given); smaller than a real length: ValueError.
    out [Tq, Hq, Dv]; lse [Hq, Tq] fp32 with return_lse. Masks align per sequence, in local
    coordinates; mask / bias in any of the three layouts. ALiBi slopes [Hq] or [B, Hq].
    Returns out, or (out, lse) with return_lse.
    """
    Tq, Hq, D = _dims("q", q, 3, "[Tq, Hq, D]")
    Dv = _dims("v", v, 3, "[Tk, Hk, Dv]")[2] if v is not None else D
    _dims("k", k, 3, "[Tk, Hk, D]")
    cu_q = host_array("cu_seqlens_q", cu_seqlens_q, "int32", q)
    cu_k = host_array("cu_seqlens_k", cu_seqlens_k, "int32", q)
    params = _params(softmax_scale, causal, align, window, softcap, alibi_slopes, sinks, mask,
                     mask_layout, bias, bias_layout, num_threads, kernel, like=q)
    _enter("varlen", q, k, D, Tq, shape_of(k, "k")[0], params)
    out, lse = _outputs(q, out, (Tq, Hq, Dv), out_dtype, lse, (Hq, Tq), return_lse)
    _cflash.attn_varlen(q, k, v, cu_q, cu_k, -1 if max_seqlen_q is None else max_seqlen_q,
                        -1 if max_seqlen_k is None else max_seqlen_k, out, lse, **params)
    return _result(q, out, lse, return_lse)


class RangePlan:
    """A compiled range plan (cflash_range_plan_create): slices over the packed token axes of
    q [Tq, Hq, D] and k, v [Tk, Hk, D|Dv], reusable across calls, heads, dims and dtypes.

    q_ranges, k_ranges: int32 [n, 2] [start, end) pairs (a list of pairs is accepted)
    Tq, Tk:             the token counts the plan indexes
    attn_type_map:      None (all "full"), or [n] of 0 "full" | 1 "causal" (bottom-right) |
                        2 "inv_causal" (top-left) | 3 "band" (ints or these names)
    segment_offsets:    None, or int32 [G + 1]: group g = slices [off[g], off[g + 1]), which
                        must share one q_range (LocateAnything's grouping)

    A row sees the union of its slices' keys in one softmax; rows in no slice are empty rows.
    Two slices sharing a (row, key) cell: ValueError naming both.
    Properties: num_slices (non-empty slices kept), visible_cells, Tq, Tk, packed_sequences
    (a plan whose slices are disjoint in both axes, in order, all full or all causal is a
    document mask: it runs as a packed varlen batch of that many sequences, the gaps between
    slices included; 0 for other plans).
    """

    def __init__(self, q_ranges, k_ranges, Tq, Tk, attn_type_map=None, segment_offsets=None):
        if attn_type_map is not None and not hasattr(attn_type_map, "__dlpack__"):
            attn_type_map = [_choice("attn_type_map", t, _RANGE_TYPES) if isinstance(t, str) else t
                             for t in attn_type_map]
        self._plan = _cflash.RangePlan(
            host_array("q_ranges", q_ranges, "int32"), host_array("k_ranges", k_ranges, "int32"),
            host_array("attn_type_map", attn_type_map, "int32"), Tq, Tk,
            host_array("segment_offsets", segment_offsets, "int32"))

    num_slices = property(lambda self: self._plan.num_slices)
    visible_cells = property(lambda self: self._plan.visible_cells)
    Tq = property(lambda self: self._plan.Tq)
    Tk = property(lambda self: self._plan.Tk)
    packed_sequences = property(lambda self: self._plan.packed_sequences)

    def __repr__(self):
        return f"RangePlan(Tq={self.Tq}, Tk={self.Tk}, num_slices={self.num_slices}, visible_cells={self.visible_cells})"


def attn_range(q, k, v, plan, *, out=None, lse=None, return_lse=False, out_dtype=None,
               softmax_scale=None, causal=False, align="bottom_right", window=(-1, -1),
               softcap=0.0, alibi_slopes=None, sinks=None, mask=None, mask_layout=None,
               bias=None, bias_layout=None, num_threads=0, kernel="auto"):
    """Attention under a RangePlan (cflash_attn_range).

    q [Tq, Hq, D], k [Tk, Hk, D], v [Tk, Hk, Dv] (None: V := K); Tq, Tk those of the plan.
    out [Tq, Hq, Dv]; lse [Hq, Tq] fp32 with return_lse. The plan owns the masking: causal must
    be False and the window (-1, -1); ALiBi slopes are [Hq] (distance from each slice's own
    bottom-right diagonal); softcap, sinks and scale as usual. mask / bias index the plan's
    global axes: dense [1, Hv, Tq|1, Tk|1], key-side [Tk, Hv], query-side [Tq, Hv, >= Tk].
    Returns out, or (out, lse) with return_lse.
    """
    Tq, Hq, D = _dims("q", q, 3, "[Tq, Hq, D]")
    Dv = _dims("v", v, 3, "[Tk, Hk, Dv]")[2] if v is not None else D
    _dims("k", k, 3, "[Tk, Hk, D]")
    if not isinstance(plan, RangePlan):
        raise TypeError(f"plan: expected a cflash.RangePlan, got {type(plan).__name__}")
    params = _params(softmax_scale, causal, align, window, softcap, alibi_slopes, sinks, mask,
                     mask_layout, bias, bias_layout, num_threads, kernel)
    _enter("range", q, k, D, Tq, shape_of(k, "k")[0], params, "plan")
    out, lse = _outputs(q, out, (Tq, Hq, Dv), out_dtype, lse, (Hq, Tq), return_lse)
    _cflash.attn_range(q, k, v, plan._plan, out, lse, **params)
    return _result(q, out, lse, return_lse)


def attn_kvcache(q, k_cache, v_cache, cache_seqlens, k_new=None, v_new=None, *,
                 cache_batch_idx=None, block_table=None, rotary_cos=None, rotary_sin=None,
                 rotary_interleaved=False, out=None, lse=None, return_lse=False, out_dtype=None,
                 softmax_scale=None, causal=False, align="bottom_right", window=(-1, -1),
                 softcap=0.0, alibi_slopes=None, sinks=None, mask=None, mask_layout=None,
                 bias=None, bias_layout=None, num_threads=0, kernel="auto"):
    """Attention over a KV cache, appending new keys/values in place first
    (cflash_attn_kvcache; flash-attn's flash_attn_with_kvcache).

    q             [B, Lq, Hq, D]
    k_cache       contiguous [Bc, Lmax, Hk, D], or paged [num_pages, page_size, Hk, D] with
    v_cache       block_table; v_cache likewise with Dv, or None: V := K
    cache_seqlens int32 [B] (an int or a sequence is accepted): keys [0, cache_seqlens[b]) are
                  in the cache; it is not advanced (the caller does, as in flash-attn)
    k_new, v_new  [B, Lnew, Hk, D|Dv] or None: written at cache_seqlens[b] ... before attending
                  (the caches must be writable; nothing is written on any error)
    cache_batch_idx int32 [B] or None: batch b uses cache row cache_batch_idx[b] (contiguous)
    block_table   int32 [B, max_pages] or None: key t of b is row t % page_size of page
                  block_table[b][t // page_size] (any page_size >= 1)
    rotary_cos, rotary_sin [Lro, rotary_dim / 2] or None: rotary embedding of the new keys (at
                  cache_seqlens[b] + t) and of q (at cache_seqlens[b] + i with causal or a window,
                  else cache_seqlens[b]); rotary_interleaved: GPT-J pairs instead of GPT-NeoX halves
    Queries see keys [0, cache_seqlens[b] + Lnew); causal and window align bottom-right to that.
    out [B, Lq, Hq, Dv]; lse [B, Hq, Lq] fp32 with return_lse. mask / bias: the dense layout
    [B|1, Hv, Lq|1, Lk|1] with Lk >= the longest cache_seqlens[b] + Lnew; column t is logical
    key t of batch entry b.
    Returns out, or (out, lse) with return_lse.
    """
    B, Lq, Hq, D = _dims("q", q, 4, "[B, Lq, Hq, D]")
    _dims("k_cache", k_cache, 4, "[Bc | num_pages, Lmax | page_size, Hk, D]")
    Dv = _dims("v_cache", v_cache, 4, "[Bc | num_pages, Lmax | page_size, Hk, Dv]")[3] if v_cache is not None else D
    if k_new is not None:
        require_writable("k_cache", k_cache)
        if v_cache is not None:
            require_writable("v_cache", v_cache)
    if isinstance(cache_seqlens, numbers.Integral):
        cache_seqlens = [int(cache_seqlens)] * B
    params = _params(softmax_scale, causal, align, window, softcap, alibi_slopes, sinks, mask,
                     mask_layout, bias, bias_layout, num_threads, kernel, like=q)
    _enter("kvcache", q, k_cache, D, Lq, _cache_keys(cache_seqlens, k_new) if _env.TRACE else 0,
           params, "paged" if block_table is not None else "cache")
    out, lse = _outputs(q, out, (B, Lq, Hq, Dv), out_dtype, lse, (B, Hq, Lq), return_lse)
    _cflash.attn_kvcache(q, k_cache, v_cache, host_array("cache_seqlens", cache_seqlens, "int32", q),
                         host_array("cache_batch_idx", cache_batch_idx, "int32", q),
                         host_array("block_table", block_table, "int32", q), rotary_cos, rotary_sin,
                         bool(rotary_interleaved), k_new, v_new, out, lse, **params)
    return _result(q, out, lse, return_lse)


def _cache_keys(cache_seqlens, k_new):
    """Longest key count of a cache call, for the trace table (host lengths only; -1 if unknown)."""
    try:
        import numpy
        a = numpy.asarray(cache_seqlens)
        n = int(a.max()) if a.size else 0
    except Exception:  # device tensors or odd inputs: the table says -1
        return -1
    return n + (shape_of(k_new, "k")[1] if k_new is not None else 0)


def merge(o1, lse1, o2, lse2, *, out=None, lse_out=None, return_lse=True, out_dtype=None):
    """Merge two partial attention states over disjoint key sets (cflash_merge, SPEC.md 7).

    o1, o2  [T, H, Dv] with lse1, lse2 [H, T]; or [B, L, H, Dv] with lse [B, H, L]
            (o: float32 | float16 | bfloat16, one dtype; lse: fp32)
    out, lse_out: None (allocated like o1) or writable tensors; they may be o1 / lse1 (in place).
    -inf (+) x = x; -inf (+) -inf gives out 0, lse -inf.
    Returns (out, lse_out), or out with return_lse=False.
    """
    require_tensor("o1", o1)
    shape = shape_of(o1, "o1")
    if len(shape) not in (3, 4):
        raise ValueError(f"o1: must have 3 ([T, H, Dv]) or 4 ([B, L, H, Dv]) dimensions, got {len(shape)}")
    lse_shape = (shape[1], shape[0]) if len(shape) == 3 else (shape[0], shape[2], shape[1])
    _env.check_backend(o1, "o1")
    out, lse_out = _outputs(o1, out, shape, out_dtype, lse_out, lse_shape, return_lse, ("o1", "out", "lse_out"))
    stream, owner = _env.call_stream(o1)
    _cflash.merge(o1, lse1, o2, lse2, out, lse_out, stream=stream or 0, stream_owner=owner)
    return _result(o1, out, lse_out, return_lse)
