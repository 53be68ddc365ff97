"""flash-attn 2.x's Python interface (flash_attn/flash_attn_interface.py, flash-attn 2.8.3) served
by cflash on the CPU: the seven forward functions with flash-attn's signatures, defaults and return
values, each a thin layer over cflash.attn_dense / attn_varlen / attn_kvcache.

What it is not: a training library. dropout_p > 0 raises NotImplementedError, and so does the
backward pass: an output computed from torch tensors that require grad joins the autograd graph
through a node whose backward raises. flash-attn's private helpers (_flash_attn_forward, the
autograd Function classes) and its other modules (bert_padding, layers, ops) are not provided.

Shapes, in flash-attn's names (batch_size B, seqlen Lq / Lk, nheads Hq, nheads_k Hk, headdim D;
Hq % Hk == 0, query head h reads key/value head h // (Hq // Hk)):

    dense   q [B, Lq, Hq, D], k [B, Lk, Hk, D], v [B, Lk, Hk, Dv]
            -> out [B, Lq, Hq, Dv], softmax_lse [B, Hq, Lq]
    varlen  q [Tq, Hq, D], k [Tk, Hk, D], v [Tk, Hk, Dv], cu_seqlens_q / cu_seqlens_k int32
            [B + 1] -> out [Tq, Hq, Dv], softmax_lse [Hq, Tq]
    packed  qkv [B, L, 3, H, D] (varlen: [T, 3, H, D]); kv [B, Lk, 2, Hk, D] (varlen: [Tk, 2, Hk, D])

softmax_lse is fp32, natural log of the row's sum of exp(score), and +inf for a row that sees no
key (its output row is 0), as flash-attn writes it. Masks are flash-attn's: causal aligned to the
bottom-right corner, window_size (left, right) around that diagonal, ALiBi -slope * |i + Lk - Lq - j|.

Inputs: torch CPU tensors, NumPy arrays or other DLPack CPU arrays, in fp32, fp16 or bf16; any
strides (a last axis that is not contiguous is copied, as flash-attn's maybe_contiguous does).
Outputs are allocated by the framework of q. Differences from flash-attn, with their reasons:
docs/compat_flash_attn.md.
"""

import numbers
import operator

from cflash import _api
from cflash._frameworks import JAX, NUMPY, TORCH, dtype_of, empty, framework, require_tensor, shape_of

__all__ = [
    "flash_attn_func", "flash_attn_kvpacked_func", "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func", "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func", "flash_attn_with_kvcache",
]

# cflash reads softmax_scale == 0 as "1/sqrt(D)"; flash-attn multiplies by 0 (uniform attention).
# The smallest normal fp32 stands in for 0: while |q.k| < 2^26 every |score| is below 2^-100, so
# exp(s - max) rounds to exactly 1 in fp32 and the weights are exactly uniform.
_SCALE_ZERO = 2.0 ** -126


# ---- argument rules shared by the seven functions ----

def _shape(name, x, ndim, layout):
    """x's shape after checking it is a tensor with `ndim` dimensions."""
    require_tensor(name, x)
    shape = shape_of(x, name)
    if len(shape) != ndim:
        raise ValueError(f"{name}: must have {ndim} dimensions {layout}, got {len(shape)}")
    return shape


def _input(x):
    """x as cflash takes it: torch tensors detached from autograd (DLPack refuses tensors that
    require grad), and a copy where the last axis is not contiguous (flash-attn's maybe_contiguous).
    Caches are not passed through here: they are written in place and must not be copied."""
    kind = framework(x)
    if kind == TORCH:
        x = x.detach() if x.requires_grad else x
        return x.contiguous() if x.dim() and x.stride(-1) != 1 else x
    if kind == NUMPY and x.ndim and x.strides[-1] != x.itemsize:
        import numpy
        return numpy.ascontiguousarray(x)
    return x


def _detached(x):
    """A torch tensor that requires grad, detached (same storage); anything else unchanged."""
    return x.detach() if framework(x) == TORCH and x.requires_grad else x


def _check_dropout(dropout_p):
    if not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p: expected a number, got {type(dropout_p).__name__}")
    if dropout_p < 0:
        raise ValueError(f"dropout_p: must be >= 0, got {dropout_p}")
    if dropout_p > 0:
        raise NotImplementedError(f"dropout_p={dropout_p}: dropout is not implemented (cflash is an "
                                  "inference library; pass dropout_p=0.0)")


def _scale(softmax_scale):
    if softmax_scale is None:
        return None
    if not isinstance(softmax_scale, numbers.Real):
        raise TypeError(f"softmax_scale: expected a number or None, got {type(softmax_scale).__name__}")
    return _SCALE_ZERO if softmax_scale == 0 else float(softmax_scale)


def _softcap(softcap):
    """flash-attn turns softcapping on for softcap > 0 only; 0 and negative values are off."""
    if not isinstance(softcap, numbers.Real):
        raise TypeError(f"softcap: expected a number, got {type(softcap).__name__}")
    return float(softcap) if softcap > 0 else 0.0


def _mask(window_size, causal, seqlen_q, seqlen_k, alibi_slopes):
    """flash-attn's mask rules (csrc/flash_attn/flash_api.cpp, set_params_fprop) replayed, so that
    cflash sees the same (causal, (left, right)) as flash-attn's kernel:

    - a negative side is unbounded (-1); a side >= seqlen_k is dropped (-1);
    - one query row without ALiBi: causal is off (bottom-right causal hides nothing there);
    - causal sets the right side to 0;
    - a set left side with an unbounded right side bounds the right side at seqlen_k.

    seqlen_q / seqlen_k: q's and k's lengths (dense), max_seqlen_q / max_seqlen_k (varlen), q's
    length and the cache capacity (with_kvcache). Usually none of this changes the mask; it does
    when Lq > Lk with a window, and it decides where with_kvcache rotates q ("causal or local").
    """
    try:
        left, right = (operator.index(w) for w in window_size)
    except (TypeError, ValueError):
        raise TypeError(f"window_size: expected a (left, right) pair of ints, got {window_size!r}") from None
    left = -1 if left < 0 or left >= seqlen_k else left
    right = -1 if right < 0 or right >= seqlen_k else right
    if seqlen_q == 1 and alibi_slopes is None:
        causal = False
    if causal:
        right = 0
    if left >= 0 and right < 0:
        right = seqlen_k
    return left < 0 and right == 0, (left, right)


def _empty_rows_pos_inf(lse):
    """cflash writes -inf for a row that sees no key, flash-attn +inf: flip them (in place for
    torch and NumPy; JAX arrays are immutable)."""
    kind = framework(lse)
    if kind == TORCH:
        return lse.masked_fill_(lse == float("-inf"), float("inf"))
    if kind == JAX:
        import jax.numpy as jnp
        return jnp.where(jnp.isneginf(lse), jnp.inf, lse)
    lse[lse == float("-inf")] = float("inf")
    return lse


_NoBackward = None  # built by _no_backward_function()


def _no_backward_function():
    """The torch.autograd.Function that joins an output to its inputs' graph and raises in
    backward (built on first use: cflash does not import torch itself)."""
    global _NoBackward
    if _NoBackward is None:
        import torch

        class NoBackward(torch.autograd.Function):
            @staticmethod
            def forward(ctx, out, *inputs):
                return out.view_as(out)

            @staticmethod
            def backward(ctx, *grads):
                raise NotImplementedError("cflash.flash_attn: the backward pass is not implemented "
                                          "(cflash is an inference library)")

        _NoBackward = NoBackward
    return _NoBackward


def _result(res, return_attn_probs, inputs):
    """flash-attn's return value: out, or (out, softmax_lse, S_dmask) with return_attn_probs.
    S_dmask is None: flash-attn returns the attention probabilities only when dropout_p > 0,
    which cflash does not implement (with dropout_p == 0 flash-attn's S_dmask is None too)."""
    out, lse = res if return_attn_probs else (res, None)
    if framework(out) == TORCH:
        import torch
        tracked = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
        if tracked and torch.is_grad_enabled():
            out = _no_backward_function().apply(out, *tracked)
    if not return_attn_probs:
        return out
    return out, _empty_rows_pos_inf(lse), None


def _unpack(name, x, n, layout):
    """The n tensors stacked on axis -3 of a packed qkv / kv tensor, as views."""
    shape = _shape(name, x, len(layout.split(",")), layout)
    if shape[-3] != n:
        raise ValueError(f"{name}: axis -3 must have size {n} {layout}, got {shape[-3]}")
    lead = (slice(None),) * (len(shape) - 3)
    return [x[lead + (i,)] for i in range(n)]


def _seqlen(name, x):
    if x is None or isinstance(x, bool):
        raise TypeError(f"{name}: expected an int, got {type(x).__name__}")
    try:
        n = operator.index(x)
    except TypeError:
        raise TypeError(f"{name}: expected an int, got {type(x).__name__}") from None
    if n < 0:
        raise ValueError(f"{name}: must be >= 0, got {n}")
    return n


def _any_shape(x):
    """Shape of a tensor or of a (nested) Python sequence."""
    if hasattr(x, "__dlpack__"):
        return shape_of(x)
    import numpy
    return numpy.shape(x)


def _host_ints(name, x, ndim):
    """Small int32 host arrays (cu_seqlens, cache_leftpad) as a NumPy array, for reading values.
    Tensors must be int32, as flash-attn requires."""
    import numpy
    if hasattr(x, "__dlpack__"):
        if dtype_of(x, name) != "int32":
            raise TypeError(f"{name}: must be int32, got {dtype_of(x, name)}")
        a = numpy.from_dlpack(x.cpu() if framework(x) == TORCH else x)  # values are read on the host
    else:
        a = numpy.asarray(x)
        if a.size and a.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected integers, got {a.dtype}")
        a = a.astype(numpy.int64)
    if a.ndim != ndim:
        raise ValueError(f"{name}: must have {ndim} dimension(s), got {a.ndim}")
    return a


# ---- dense ----

def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                    return_attn_probs=False):
    """Dense attention.

    q [B, Lq, Hq, D], k [B, Lk, Hk, D], v [B, Lk, Hk, Dv]; alibi_slopes fp32 [Hq] or [B, Hq].
    Returns out [B, Lq, Hq, Dv], or (out, softmax_lse [B, Hq, Lq] fp32, None) with
    return_attn_probs. deterministic is accepted and ignored (cflash is always deterministic).
    """
    _check_dropout(dropout_p)
    Lq = _shape("q", q, 4, "[B, Lq, Hq, D]")[1]
    Lk = _shape("k", k, 4, "[B, Lk, Hk, D]")[1]
    causal, window = _mask(window_size, causal, Lq, Lk, alibi_slopes)
    res = _api.attn_dense(_input(q), _input(k), _input(v), softmax_scale=_scale(softmax_scale),
                          causal=causal, window=window, softcap=_softcap(softcap),
                          alibi_slopes=_input(alibi_slopes), return_lse=return_attn_probs)
    return _result(res, return_attn_probs, (q, k, v))


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False,
                             window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                             deterministic=False, return_attn_probs=False):
    """flash_attn_func with k and v stacked: q [B, Lq, Hq, D], kv [B, Lk, 2, Hk, D]."""
    k, v = _unpack("kv", kv, 2, "[B, Lk, 2, Hk, D]")
    _check_dropout(dropout_p)
    Lq = _shape("q", q, 4, "[B, Lq, Hq, D]")[1]
    causal, window = _mask(window_size, causal, Lq, shape_of(k)[1], alibi_slopes)
    res = _api.attn_dense(_input(q), _input(k), _input(v), softmax_scale=_scale(softmax_scale),
                          causal=causal, window=window, softcap=_softcap(softcap),
                          alibi_slopes=_input(alibi_slopes), return_lse=return_attn_probs)
    return _result(res, return_attn_probs, (q, kv))


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False,
                              window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                              deterministic=False, return_attn_probs=False):
    """flash_attn_func with q, k and v stacked: qkv [B, L, 3, H, D] (Hq = Hk = H, Lq = Lk = L)."""
    q, k, v = _unpack("qkv", qkv, 3, "[B, L, 3, H, D]")
    _check_dropout(dropout_p)
    L = shape_of(q)[1]
    causal, window = _mask(window_size, causal, L, L, alibi_slopes)
    res = _api.attn_dense(_input(q), _input(k), _input(v), softmax_scale=_scale(softmax_scale),
                          causal=causal, window=window, softcap=_softcap(softcap),
                          alibi_slopes=_input(alibi_slopes), return_lse=return_attn_probs)
    return _result(res, return_attn_probs, (qkv,))


# ---- packed variable-length sequences ----

def _varlen_paged(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table,
                  return_lse, **params):
    """Varlen queries over a paged key/value pool: sequence b's keys t in [0, Lk_b) are row
    t % page_size of page block_table[b][t // page_size]. One cflash.attn_kvcache call per
    sequence (no append), writing straight into its rows of out and softmax_lse."""
    Tq, Hq = _shape("q", q, 3, "[Tq, Hq, D]")[:2]
    Dv = _shape("v", v, 4, "[num_blocks, page_block_size, Hk, Dv]")[3]
    _shape("k", k, 4, "[num_blocks, page_block_size, Hk, D]")
    if framework(q) not in (TORCH, NUMPY):
        raise TypeError("block_table: paged varlen attention needs torch or NumPy arrays "
                        f"(it writes into slices of the output), got {type(q).__name__}")
    cq = _host_ints("cu_seqlens_q", cu_seqlens_q, 1)
    ck = _host_ints("cu_seqlens_k", cu_seqlens_k, 1)
    if framework(block_table) is None:
        block_table = _host_ints("block_table", block_table, 2).astype("int32")
    B = _shape("block_table", block_table, 2, "[B, max_num_blocks_per_seq]")[0]
    for name, cu in (("cu_seqlens_q", cq), ("cu_seqlens_k", ck)):
        if len(cu) != B + 1:
            raise ValueError(f"{name}: must have B + 1 = {B + 1} values (B = rows of block_table), got {len(cu)}")
        if cu[0] != 0 or (cu[1:] < cu[:-1]).any():
            raise ValueError(f"{name}: must start at 0 and be non-decreasing")
    if cq[-1] != Tq:
        raise ValueError(f"cu_seqlens_q: must end at Tq = {Tq}, got {cq[-1]}")
    for name, cu, hint in (("max_seqlen_q", cq, max_seqlen_q), ("max_seqlen_k", ck, max_seqlen_k)):
        longest = int((cu[1:] - cu[:-1]).max(initial=0))
        if hint < longest:
            raise ValueError(f"{name}: {hint} is smaller than the longest sequence ({longest})")
    capacity = _shape("block_table", block_table, 2, "[B, max_num_blocks_per_seq]")[1] * shape_of(k)[1]
    if (ck[1:] - ck[:-1] > capacity).any():
        raise ValueError(f"cu_seqlens_k: a sequence is longer than block_table can address "
                         f"(max_num_blocks_per_seq * page_block_size = {capacity})")
    alibi = params.pop("alibi_slopes")
    alibi_2d = alibi is not None and len(_any_shape(alibi)) == 2
    out = empty(q, (Tq, Hq, Dv), dtype_of(q, "q"))
    lse = empty(q, (Hq, Tq), "float32") if return_lse else None
    for b in range(B):
        q0, q1 = int(cq[b]), int(cq[b + 1])
        if q0 == q1:
            continue
        _api.attn_kvcache(q[q0:q1][None], k, v, [int(ck[b + 1] - ck[b])],
                          block_table=block_table[b:b + 1],
                          alibi_slopes=alibi[b:b + 1] if alibi_2d else alibi,
                          out=out[q0:q1][None], lse=None if lse is None else lse[:, q0:q1][None],
                          **params)
    return (out, lse) if return_lse else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                           softcap=0.0, alibi_slopes=None, deterministic=False,
                           return_attn_probs=False, block_table=None):
    """Packed variable-length attention.

    q [Tq, Hq, D]; k [Tk, Hk, D], v [Tk, Hk, Dv], or with block_table int32 [B, max_blocks] paged
    pools k [num_blocks, page_block_size, Hk, D], v [num_blocks, page_block_size, Hk, Dv] (any
    page_block_size >= 1; sequence b's key t is row t % page_block_size of page
    block_table[b][t // page_block_size]). cu_seqlens_q, cu_seqlens_k int32 [B + 1]: 0 first,
    non-decreasing; cu_seqlens_q ends at Tq (and cu_seqlens_k at Tk without block_table).
    max_seqlen_q, max_seqlen_k: ints, at least the longest sequence (smaller: ValueError).
    Masks align per sequence. alibi_slopes fp32 [Hq] or [B, Hq].
    Returns out [Tq, Hq, Dv], or (out, softmax_lse [Hq, Tq] fp32, None) with return_attn_probs.
    """
    _check_dropout(dropout_p)
    max_seqlen_q = _seqlen("max_seqlen_q", max_seqlen_q)
    max_seqlen_k = _seqlen("max_seqlen_k", max_seqlen_k)
    causal, window = _mask(window_size, causal, max_seqlen_q, max_seqlen_k, alibi_slopes)
    params = dict(softmax_scale=_scale(softmax_scale), causal=causal, window=window,
                  softcap=_softcap(softcap), alibi_slopes=_input(alibi_slopes))
    if block_table is None:
        res = _api.attn_varlen(_input(q), _input(k), _input(v), cu_seqlens_q, cu_seqlens_k,
                               max_seqlen_q, max_seqlen_k, return_lse=return_attn_probs, **params)
    else:
        res = _varlen_paged(_input(q), _detached(k), _detached(v), cu_seqlens_q, cu_seqlens_k,
                            max_seqlen_q, max_seqlen_k, block_table, return_attn_probs, **params)
    return _result(res, return_attn_probs, (q, k, v))


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                    dropout_p=0.0, softmax_scale=None, causal=False,
                                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                                    deterministic=False, return_attn_probs=False):
    """flash_attn_varlen_func with k and v stacked: q [Tq, Hq, D], kv [Tk, 2, Hk, D]."""
    k, v = _unpack("kv", kv, 2, "[Tk, 2, Hk, D]")
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                  dropout_p, softmax_scale, causal, window_size, softcap,
                                  alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0,
                                     softmax_scale=None, causal=False, window_size=(-1, -1),
                                     softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    """flash_attn_varlen_func with q, k and v stacked: qkv [T, 3, H, D], one cu_seqlens [B + 1]
    and max_seqlen for queries and keys."""
    q, k, v = _unpack("qkv", qkv, 3, "[T, 3, H, D]")
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                  dropout_p, softmax_scale, causal, window_size, softcap,
                                  alibi_slopes, deterministic, return_attn_probs)


# ---- KV cache ----

def _leftpad_mask(cache_leftpad, B, capacity):
    """cache_leftpad int32 [B]: batch entry b's keys start at cache position cache_leftpad[b]. As
    a cflash key mask [B, 1, 1, capacity] (keep t >= cache_leftpad[b]). Causal, window and ALiBi
    need no change: flash-attn measures them from the last key, which leftpad does not move; and
    its rotary positions are cache positions, as cflash's are."""
    import numpy
    pad = _host_ints("cache_leftpad", cache_leftpad, 1)
    if len(pad) != B:
        raise ValueError(f"cache_leftpad: must have B = {B} values, got {len(pad)}")
    if ((pad < 0) | (pad > capacity)).any():
        raise ValueError(f"cache_leftpad: values must be in [0, {capacity}] (the cache capacity)")
    return (numpy.arange(capacity)[None, :] >= pad[:, None])[:, None, None, :]


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None,
                            block_table=None, softmax_scale=None, causal=False,
                            window_size=(-1, -1), softcap=0.0, rotary_interleaved=True,
                            alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """Attention over a KV cache, appending k, v in place first (incremental decoding).

    q        [B, Lq, Hq, D]
    k_cache  [B_cache, seqlen_cache, Hk, D], or with block_table [num_blocks, page_block_size,
    v_cache  Hk, D] (any page_block_size >= 1); v_cache likewise with Dv
    k, v     [B, Lnew, Hk, D|Dv] or None: written at cache positions cache_seqlens[b] ... before
             attending (k_cache and v_cache change in place; nothing is written on any error)
    rotary_cos, rotary_sin [seqlen_ro, rotary_dim / 2] or None: rotate k at cache_seqlens[b] + t
             and q at cache_seqlens[b] + i (causal or local) or cache_seqlens[b] (otherwise);
             rotary_interleaved: pairs (0, 1), (2, 3)... (True) or (i, i + rotary_dim / 2)
    cache_seqlens int or int32 [B]: keys already in the cache; None: the whole cache
             (seqlen_cache, or max_num_blocks_per_seq * page_block_size); required with k, v
    cache_batch_idx int32 [B] or None: batch b uses cache row cache_batch_idx[b]
    cache_leftpad   int32 [B] or None: batch b's keys start at cache position cache_leftpad[b]
    block_table     int32 [B, max_num_blocks_per_seq] or None: paged cache
    Queries see keys [cache_leftpad[b], cache_seqlens[b] + Lnew); masks align bottom-right.
    num_splits is accepted and ignored (results never depend on it).
    Returns out [B, Lq, Hq, Dv], or (out, softmax_lse [B, Hq, Lq] fp32) with return_softmax_lse.
    """
    B, Lq = _shape("q", q, 4, "[B, Lq, Hq, D]")[:2]
    cache = _shape("k_cache", k_cache, 4, "[B_cache | num_blocks, seqlen_cache | page_block_size, Hk, D]")
    if (k is None) != (v is None):
        raise ValueError(f"{'k' if k is None else 'v'}: missing; k and v are appended together (pass both or neither)")
    if block_table is None:
        capacity = cache[1]
    else:
        capacity = _any_shape(block_table)[-1] * cache[1]
    if cache_seqlens is None:
        if k is not None:
            raise ValueError("cache_seqlens: required when k and v are appended (where to write them)")
        cache_seqlens = capacity
    causal, window = _mask(window_size, causal, Lq, capacity, alibi_slopes)
    mask = None if cache_leftpad is None else _leftpad_mask(cache_leftpad, B, capacity)
    res = _api.attn_kvcache(_input(q), _detached(k_cache), _detached(v_cache), cache_seqlens,
                            _input(k), _input(v), cache_batch_idx=cache_batch_idx,
                            block_table=block_table, rotary_cos=_input(rotary_cos),
                            rotary_sin=_input(rotary_sin), rotary_interleaved=bool(rotary_interleaved),
                            softmax_scale=_scale(softmax_scale), causal=causal, window=window,
                            softcap=_softcap(softcap), alibi_slopes=_input(alibi_slopes), mask=mask,
                            return_lse=return_softmax_lse)
    if not return_softmax_lse:
        return res
    out, lse = res
    return out, _empty_rows_pos_inf(lse)
