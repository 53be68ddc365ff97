"""flash-dmattn's varlen function over cflash.attn_varlen (SPEC.md sections 5 and 9): packed
sequences with a boolean mask and an additive bias, each in a layout recognised from its shape.

    from cflash.dmattn import flash_dmattn_varlen_func
    out = flash_dmattn_varlen_func(q, k, v, attn_mask, attn_bias, cu_seqlens_q, cu_seqlens_k,
                                   max_seqlen_q, max_seqlen_k, is_causal=True)

Mask and bias layouts (Hv in {1, Hk, Hq}; query head h reads variant h // (Hq // Hv)):

    key-side    [Tk, Hv]                       2-D: one value per key, for every query of its
                                               sequence (flash-dmattn's "total_k" layout)
    query-side  [Tq, Hv, max_seqlen_k]         3-D: per query; column j is local key j of the
                                               query's sequence, columns >= its Lk are ignored
    dense       [B|1, Hv, Lq|1, Lk|1]          4-D: per sequence in local coordinates (a cflash
                                               addition; flash-dmattn's varlen has no dense form)

The ranks differ, so a shape fits at most one layout (a 2-D tensor is key-side even when
total_q == total_k); one that fits none is a ValueError naming attn_mask / attn_bias.
Mask: bool or uint8, True = keep. Bias: float32, float16 or bfloat16, added to the scaled (and
softcapped) scores.

What differs from flash-dmattn, and why: docs/compat_dmattn.md. This module never prints.
"""

from ._api import attn_varlen
from ._frameworks import JAX, framework, require_tensor, shape_of

__all__ = ["flash_dmattn_varlen_func"]

# cflash's argument names in error messages -> flash-dmattn's
_NAMES = {"q": "query", "k": "key", "v": "value", "mask": "attn_mask", "bias": "attn_bias"}


def _tokens(name, x):
    """(T, H) of a packed [T, H, D] tensor."""
    require_tensor(name, x)
    shape = shape_of(x, name)
    if len(shape) != 3:
        raise ValueError(f"{name}: must have 3 dimensions [total_tokens, num_heads, head_dim], got {len(shape)}")
    return shape[0], shape[1]


def _layout(name, t, total_q, total_k, num_heads, num_heads_k):
    """The SPEC.md section 5 layout of a mask or bias from its shape: "key_side" ([Tk, Hv]),
    "query_side" ([Tq, Hv, max_seqlen_k]) or "dense" ([B|1, Hv, Lq|1, Lk|1]); None for None.
    The rank, the token axis and the head-variant axis decide (the library checks the other
    sizes). The three layouts have different ranks, so no shape fits two of them: a 2-D tensor
    is key-side even when total_q == total_k. A shape that fits none: ValueError naming `name`."""
    if t is None:
        return None
    require_tensor(name, t)
    shape = shape_of(t, name)
    variants = (1, num_heads_k, num_heads)
    layouts = {2: ("key_side", total_k, f"[total_k = {total_k}, Hv]"),
               3: ("query_side", total_q, f"[total_q = {total_q}, Hv, max_seqlen_k]"),
               4: ("dense", None, "[B or 1, Hv, Lq or 1, Lk or 1]")}
    layout, tokens, _ = layouts.get(len(shape), (None, None, None))
    if layout and (tokens is None or shape[0] == tokens) and shape[1] in variants:
        return layout
    wanted = ", ".join(f"{lay} {text}" for lay, _, text in layouts.values())
    raise ValueError(f"{name}: shape {shape} fits no layout: expected {wanted} with Hv in "
                     f"{{1, num_heads_k = {num_heads_k}, num_heads = {num_heads}}}")


def _flash_lse(lse):
    """flash-attn's LSE convention: rows with no visible key hold +inf (cflash: -inf)."""
    if framework(lse) == JAX:
        import jax.numpy as jnp
        return jnp.where(jnp.isneginf(lse), jnp.inf, lse)
    lse[lse == float("-inf")] = float("inf")
    return lse


def flash_dmattn_varlen_func(query, key, value, attn_mask, attn_bias, cu_seqlens_q, cu_seqlens_k,
                             max_seqlen_q, max_seqlen_k, softmax_scale=None, is_causal=None,
                             softcap=None, deterministic=None, return_attn_probs=None,
                             block_table=None):
    """flash-dmattn's flash_dmattn_varlen_func (the signature of its key-side mask/bias version).

    query [total_q, Hq, D], key [total_k, Hk, D], value [total_k, Hk, Dv]: float32 | float16 |
        bfloat16, one dtype; Hq % Hk == 0 (GQA / MQA)
    attn_mask, attn_bias: None, or a tensor in one of the layouts of the module documentation
    cu_seqlens_q, cu_seqlens_k: int32 [B + 1]; max_seqlen_q, max_seqlen_k: the longest lengths
        (a hint smaller than a real length is a ValueError)
    softmax_scale: None = 1/sqrt(D); is_causal: None = False, True = bottom-right causal per
        sequence; softcap: None or 0 = off, > 0 = softcap * tanh(s / softcap), before the bias
    deterministic: ignored (cflash is always deterministic)
    block_table: paged KV caches are not supported here (NotImplementedError; cflash.attn_kvcache
        serves paged caches)

    Returns out [total_q, Hq, Dv] in query's dtype (rows with no visible key are 0); with
    return_attn_probs, (out, softmax_lse [Hq, total_q] float32 with +inf for such rows, None):
    the probabilities are never materialized.
    """
    if block_table is not None:
        raise NotImplementedError("block_table: paged KV is not supported by flash_dmattn_varlen_func "
                                  "here; use cflash.attn_kvcache for paged caches")
    total_q, num_heads = _tokens("query", query)
    total_k, num_heads_k = _tokens("key", key)
    layouts = [_layout(name, t, total_q, total_k, num_heads, num_heads_k)
               for name, t in (("attn_mask", attn_mask), ("attn_bias", attn_bias))]
    try:
        result = attn_varlen(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                             softmax_scale=softmax_scale, causal=bool(is_causal),
                             softcap=0.0 if softcap is None else softcap,
                             mask=attn_mask, mask_layout=layouts[0], bias=attn_bias,
                             bias_layout=layouts[1], return_lse=bool(return_attn_probs))
    except (ValueError, TypeError, NotImplementedError) as e:
        name, sep, rest = str(e).partition(":")
        if not sep or name not in _NAMES:
            raise
        raise type(e)(_NAMES[name] + sep + rest) from None
    if return_attn_probs:
        out, lse = result
        return out, _flash_lse(lse), None
    return result
