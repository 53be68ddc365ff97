"""MagiAttention and LocateAnything range attention over cflash's range plans (SPEC.md sections 4
and 9): the same names, arguments and defaults, computed by cflash.attn_range on the tensors' device
(CPU, or the CUDA backend for CUDA tensors).

    from cflash.magi import flex_flash_attn_func              # magi_attention.functional
    out, lse = flex_flash_attn_func(q, k, v, q_ranges, k_ranges, attn_type_map)

    from cflash.magi import range_attention                   # LocateAnything kernel_utils
    out = range_attention(q, k, v, q_ranges, k_ranges, attn_type_map, softmax_scale,
                          segment_offsets=offsets)

Shapes: q [Tq, Hq, D], k [Tk, Hk, D], v [Tk, Hk, Dv] (Hq % Hk == 0); q_ranges, k_ranges [n, 2]
[start, end) pairs on the packed token axes; attn_type_map [n]: 0 full, 1 causal (bottom-right),
2 inverse causal (top-left), 3 bidirectional causal (band) -- MagiAttention's codes, which are
cflash's. A row sees the union of the slices that contain it, in one softmax; rows in no slice
give out 0 and lse -inf. A (row, key) cell covered by two slices is a ValueError.

Plan cache: the range tensors are read to the host on every call (n pairs, cheap) and a compiled
RangePlan is kept per distinct (Tq, Tk, q_ranges, k_ranges, attn_type_map, segment_offsets)
contents, so a model calling every layer with one plan builds it once. The cache holds at most
PLAN_CACHE_SIZE plans and is emptied when full; clear_plan_cache() empties it.

What differs from the originals, and why: docs/compat_magi.md. This module needs NumPy (the
range tensors are read through it); it never prints.
"""

import numpy as np

from ._api import RangePlan, attn_range
from ._frameworks import JAX, NUMPY, empty, framework, require_tensor, shape_of

__all__ = ["flex_flash_attn_func", "range_attention", "is_available", "clear_plan_cache", "PLAN_CACHE_SIZE"]

PLAN_CACHE_SIZE = 64
_plan_cache = {}


def clear_plan_cache():
    """Forget every cached RangePlan."""
    _plan_cache.clear()


def _host(x):
    """A tensor of any framework (torch on any device, NumPy, JAX, another DLPack producer) or a
    sequence, as a NumPy array on the host (floating point as float64)."""
    if type(x).__module__.partition(".")[0] == "torch":
        x = x.detach().cpu()
        return (x.double() if x.is_floating_point() else x).numpy()
    if hasattr(x, "__dlpack__") and framework(x) not in (NUMPY, JAX):
        x = np.from_dlpack(x)
    a = np.asarray(x)
    return a.astype(np.float64) if a.dtype.kind == "f" or a.dtype.name == "bfloat16" else a


def _ints(name, x, ndim):
    """x as a C-contiguous int32 host array with `ndim` dimensions ([n, 2] pairs when ndim is 2);
    None stays None."""
    if x is None:
        return None
    a = _host(x)
    if a.size == 0:
        return np.zeros((0, 2) if ndim == 2 else (0,), np.int32)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integers, got {a.dtype}")
    if a.ndim != ndim or (ndim == 2 and a.shape[1] != 2):
        want = "[n, 2] (start, end) pairs" if ndim == 2 else "one dimension"
        raise ValueError(f"{name}: must be {want}, got shape {tuple(a.shape)}")
    if a.min() < -2**31 or a.max() >= 2**31:
        raise ValueError(f"{name}: values must fit in int32")
    return np.ascontiguousarray(a, np.int32)


def _tokens(name, x):
    """(T, H) of a packed [T, H, D] tensor."""
    require_tensor(name, x)
    shape = shape_of(x, name)
    if len(shape) != 3:
        raise ValueError(f"{name}: must have 3 dimensions [num_tokens, num_heads, head_dim], got {len(shape)}")
    return shape[0], shape[1]


def _plan(q_ranges, k_ranges, attn_type_map, segment_offsets, Tq, Tk):
    """The RangePlan of these host int32 arrays, from the cache when it was built before."""
    parts = (q_ranges, k_ranges, attn_type_map, segment_offsets)
    key = (Tq, Tk) + tuple(None if a is None else (a.shape, a.tobytes()) for a in parts)
    plan = _plan_cache.get(key)
    if plan is None:
        plan = RangePlan(q_ranges, k_ranges, Tq, Tk, attn_type_map=attn_type_map,
                         segment_offsets=segment_offsets)
        if len(_plan_cache) >= PLAN_CACHE_SIZE:
            _plan_cache.clear()
        _plan_cache[key] = plan
    return plan


def _sink_logits(sink, sink_layout, Hq):
    """MagiAttention's "sh" sink tokens [num_sink, Hq] as cflash's one sink logit per head: the
    sink tokens only join the softmax denominator, so they act as one logit
    z_h = log(sum_s exp(sink[s, h])) (computed in float64, stored fp32 [Hq])."""
    if sink is None:
        return None
    if sink_layout in ("ssh", "shd"):
        raise NotImplementedError(f"sink_layout={sink_layout!r}: cflash has one sink logit per query "
                                  "head (layout 'sh'); per-query ('ssh') and per-dim ('shd') sinks are not supported")
    if sink_layout != "sh":
        raise ValueError(f"sink_layout: must be 'sh', 'ssh' or 'shd', got {sink_layout!r}")
    s = _host(sink)
    if s.ndim != 2 or s.shape[1] != Hq:
        raise ValueError(f"sink: layout 'sh' is [num_tokens_sink, num_heads_q = {Hq}], got shape {tuple(s.shape)}")
    s = s.astype(np.float64)
    if s.shape[0] == 0:
        return None
    m = s.max(axis=0)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return (m + np.log(np.exp(s - m).sum(axis=0))).astype(np.float32)


def flex_flash_attn_func(q, k, v, q_ranges=None, k_ranges=None, attn_type_map=None, *,
                         index_attn_indices=None, q_block_size=1, k_block_size=1, sink=None,
                         sink_layout="sh", softmax_scale=None, softcap=0.0, deterministic=False,
                         sm_margin=0, disable_fwd_atomic_reduction=False,
                         disable_bwd_dkv_atomic_reduction=False, ref_block_size=None,
                         max_seqlen_q=None, auto_range_merge=False, swap_ab=False, pack_gqa=False,
                         cat_gqa=False, sparse_load=False, index_attn=False,
                         swap_bwd_qk_loop=False, return_max_logits=False):
    """MagiAttention's flex_flash_attn_func (argument order and defaults of MagiAttention 1.1):
    attention of packed tokens under a range plan.

    q [Tq, Hq, D], k [Tk, Hk, D], v [Tk, Hk, Dv]: float32 | float16 | bfloat16, one dtype
    q_ranges, k_ranges: int [n, 2] tensors or lists of [start, end) pairs
    attn_type_map: int [n] (0 full, 1 causal, 2 inverse causal, 3 bidirectional causal), or None
        (all full)
    sink: None, or [num_tokens_sink, Hq] sink logits (sink_layout "sh"), which join every row's
        denominator only
    softmax_scale: None = 1/sqrt(D); softcap: > 0 gives softcap * tanh(s / softcap)

    Returns (out [Tq, Hq, Dv] in q's dtype, lse [Tq, Hq] float32), natural-log LSE; rows covered
    by no slice have out 0 and lse -inf. The kernel-tuning arguments and `deterministic` are
    accepted and ignored; index_attn_indices / index_attn, return_max_logits and the 'ssh' /
    'shd' sink layouts raise NotImplementedError. Errors: ValueError (bad or overlapping ranges,
    shapes), TypeError (dtypes), NotImplementedError.
    """
    # The other keyword arguments tune MagiAttention's CUDA kernels (tiles, atomics, reserved SMs,
    # range merging, GQA packing) or its backward pass, and leave the result as it is: ignored.
    # deterministic too: cflash's forward is always bitwise reproducible.
    if index_attn_indices is not None or index_attn:
        raise NotImplementedError("index_attn_indices: cflash has no IndexAttn (per-token key index "
                                  "lists) path; express the pattern with q_ranges / k_ranges")
    if return_max_logits:
        raise NotImplementedError("return_max_logits: cflash does not compute the per-head maximum logit")
    if q_ranges is None or k_ranges is None:
        raise ValueError("q_ranges, k_ranges: both are required (index_attn_indices is not supported)")
    Tq, Hq = _tokens("q", q)
    Tk, _ = _tokens("k", k)
    plan = _plan(_ints("q_ranges", q_ranges, 2), _ints("k_ranges", k_ranges, 2),
                 _ints("attn_type_map", attn_type_map, 1), None, Tq, Tk)
    opts = dict(softmax_scale=softmax_scale, softcap=softcap, sinks=_sink_logits(sink, sink_layout, Hq))
    if framework(q) == JAX:  # immutable arrays: take lse [Hq, Tq] and return its transpose
        out, lse = attn_range(q, k, v, plan, return_lse=True, **opts)
        return out, lse.T
    lse = empty(q, (Tq, Hq), "float32")
    out, _ = attn_range(q, k, v, plan, lse=lse.T, **opts)  # writes lse [Tq, Hq] through a [Hq, Tq] view
    return out, lse


def _check_groups(offsets, q_ranges, attn_type_map, group_q_ranges, group_attn_type_map):
    """LocateAnything passes each group's q_range and type twice: per slice (q_ranges,
    attn_type_map) and per group (group_q_ranges, group_attn_type_map). They must agree."""
    n = q_ranges.shape[0]
    if offsets.size == 0 or offsets[0] != 0 or offsets[-1] != n or (np.diff(offsets) < 0).any():
        raise ValueError(f"segment_offsets: must start at 0, not decrease and end at the number of slices ({n})")
    counts = np.diff(offsets)
    types = np.zeros(n, np.int32) if attn_type_map is None else attn_type_map
    for name, group, per_slice in (("group_q_ranges", group_q_ranges, q_ranges),
                                   ("group_attn_type_map", group_attn_type_map, types)):
        g = _ints(name, group, per_slice.ndim)
        if g is None:
            continue
        if g.shape[0] != counts.size:
            raise ValueError(f"{name}: must have one entry per group ({counts.size}), got {g.shape[0]}")
        differs = np.repeat(g, counts, axis=0) != per_slice
        bad = np.flatnonzero(differs.any(axis=1) if differs.ndim == 2 else differs)
        if bad.size:
            raise ValueError(f"{name}: disagrees with {'q_ranges' if per_slice is q_ranges else 'attn_type_map'} "
                             f"at slice {bad[0]}")


def range_attention(q, k, v, q_ranges, k_ranges, attn_type_map, softmax_scale, *,
                    segment_offsets=None, group_q_ranges=None, group_attn_type_map=None,
                    max_q_len=None, max_k_len=None, flash_cu_seqlens_q=None,
                    flash_cu_seqlens_k=None, flash_causal=None, disjoint_q_ranges=None):
    """LocateAnything's kernel_utils.range_attention: sparse range-plan attention.

    q [Tq, Hq, D], k [Tk, Hk, D], v [Tk, Hk, Dv]; q_ranges, k_ranges [n, 2] and attn_type_map [n]
    per slice (any of the four types; None = all full); softmax_scale a float (None = 1/sqrt(D)).
    segment_offsets: None or int [G + 1]: group g is slices [off[g], off[g + 1]), which must share
        one q_range (a query block attending several key windows, e.g. LocateAnything's MTP
        window packing); group_q_ranges [G, 2] and group_attn_type_map [G], when given, must
        agree with the per-slice values.
    max_q_len, max_k_len, flash_cu_seqlens_q/k, flash_causal, disjoint_q_ranges: accepted and
        ignored (they select LocateAnything's FlashAttention fast paths; the plan is the same).

    Returns out [Tq, Hq, Dv] in q's dtype (no LSE, as in LocateAnything). Rows in no slice are 0.
    """
    Tq, _ = _tokens("q", q)
    Tk, _ = _tokens("k", k)
    qr, kr = _ints("q_ranges", q_ranges, 2), _ints("k_ranges", k_ranges, 2)
    types, offsets = _ints("attn_type_map", attn_type_map, 1), _ints("segment_offsets", segment_offsets, 1)
    if offsets is not None and (group_q_ranges is not None or group_attn_type_map is not None):
        _check_groups(offsets, qr, types, group_q_ranges, group_attn_type_map)
    return attn_range(q, k, v, _plan(qr, kr, types, offsets, Tq, Tk), softmax_scale=softmax_scale)


def is_available():
    """LocateAnything's kernel_utils.is_available(): cflash's CPU path is always available."""
    return True
