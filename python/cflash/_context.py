"""cflash's flash-mlm layer context (SPEC.md section 6): `ContextCache`, a library-owned cache of
per-layer context K/V, and `attn_mlm`, bidirectional attention of new tokens over (their
context + the new tokens), each a thin layer over include/cflash.h (cflash_context_cache_*,
cflash_attn_mlm). The flash-mlm drop-in (same names and arguments as flash-mlm) is
cflash.flash_mlm, built on these two.

Layouts are cflash's: dense [B, L, H, D], packed [T, H, D] with cu_seqlens (int32 [B + 1]).
"""

import collections
import numbers

from . import _cflash
from ._api import _dims, _enter, _outputs, _params, _result
from ._frameworks import host_array

_MODES = {"replace": _cflash.PREFILL_REPLACE, "append": _cflash.PREFILL_APPEND}

ContextInfo = collections.namedtuple(
    "ContextInfo", "num_contexts lengths Hk D Dv dtype v_is_k total_len")
ContextInfo.__doc__ = """One layer's entry: num_contexts contexts of lengths[c] keys each
(total_len in all), Hk heads, head dims D (keys) and Dv (values), dtype name, and v_is_k (True:
V := K[..., :Dv], nothing stored for V: MLA)."""


def _mode(value, name="prefill_mode"):
    if value not in _MODES:
        raise ValueError(f"{name}: must be 'replace' or 'append', got {value!r}")
    return _MODES[value]


def _layer(layer_id):
    if isinstance(layer_id, bool) or not isinstance(layer_id, numbers.Integral):
        raise TypeError(f"layer_id: expected an int, got {type(layer_id).__name__}")
    return int(layer_id)


class ContextCache:
    """Per-layer context K/V for masked-LM inference loops (cflash_context_cache_t).

    An entry (one per layer_id >= 0) holds C >= 1 contexts, context c being keys
    [lengths[c], Hk, D] and values [lengths[c], Hk, Dv] (or, for MLA, only the keys: V := K or
    V := K[..., :Dv]), in one dtype. The cache owns copies: the tensors given to store() or to a
    prefill may be freed or changed afterwards. Calls on one cache are serialized (a store
    never races a read); the GIL is released while they run.

    Entries are written by store() or by attn_mlm(..., prefill=True), read by attn_mlm, and
    dropped by clear(). Errors leave the cache unchanged.
    """

    def __init__(self):
        self._cache = _cflash.ContextCache()

    def store(self, layer_id, k, v=None, cu_seqlens=None, *, mode="replace"):
        """Store K/V as layer_id's contexts, outside an attention call.

        Dense:  k [B, L, Hk, D], v [B, L, Hk, Dv]      -> B contexts of length L
        Packed: k [Tk, Hk, D], v [Tk, Hk, Dv] and cu_seqlens int32 [B + 1] (a sequence of ints
                is accepted)                           -> context b = rows [cu[b], cu[b + 1])
        v None: V := K. v a view of k's first Dv columns (k[..., :Dv], same storage): V := K[..., :Dv].
        mode "replace": the entry becomes these B contexts. "append": sequence b's tokens are
        appended to context b (an absent entry is created; a present one must have B contexts
        and the same Hk, D, Dv, dtype and V kind, else ValueError).
        """
        self._cache.store(_layer(layer_id), k, v, host_array("cu_seqlens", cu_seqlens, "int32", k), _mode(mode, "mode"))

    def clear(self, layer_id=None):
        """Drop layer_id's entry (absent is fine), or every entry with layer_id=None."""
        self._cache.clear(-1 if layer_id is None else _layer(layer_id))

    def info(self, layer_id):
        """layer_id's entry as a ContextInfo, or None when the layer has none."""
        d = self._cache.info(_layer(layer_id))
        if d is None:
            return None
        return ContextInfo(d["num_contexts"], tuple(d["lengths"]), d["Hk"], d["D"], d["Dv"], d["dtype"],
                           d["v_is_k"], d["total_len"])

    def lengths(self, layer_id):
        """Context lengths of layer_id's entry (a tuple; () when the layer has none)."""
        info = self.info(layer_id)
        return () if info is None else info.lengths

    def __contains__(self, layer_id):
        return self.info(layer_id) is not None

    def __repr__(self):
        return "cflash.ContextCache()"


def attn_mlm(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, *, cache=None, layer_id=None, ctx_idx=None,
             cumulative=False, prefill=False, prefill_mode="replace", out=None, lse=None,
             return_lse=False, out_dtype=None, softmax_scale=None, softcap=0.0, sinks=None,
             num_threads=0, kernel="auto"):
    """flash-mlm attention (cflash_attn_mlm): every query row of sequence b sees, with no mask,
    its context (context ctx(b) of cache's entry for layer_id) and its new tokens.

    Dense:  q [B, Lq, Hq, D], k [B, Lk, Hk, D], v [B, Lk, Hk, Dv]; out [B, Lq, Hq, Dv],
            lse [B, Hq, Lq] (fp32, with return_lse)
    Packed: q [Tq, Hq, D] with cu_seqlens_q int32 [B + 1]; k [Tk, Hk, D], v [Tk, Hk, Dv] with
            cu_seqlens_k (None: cu_seqlens_q, and then Tk must equal Tq); out [Tq, Hq, Dv],
            lse [Hq, Tq]
    v None: V := K. MLA: v = k[..., :Dv] (a view of k; e.g. D = 576, Dv = 512, Hk = 1).
    cache, layer_id  a ContextCache and a layer id >= 0, given together (or neither: no
                   context). No entry for layer_id is a miss: no context.
    ctx_idx        None, or int32 [B] (a sequence is accepted): sequence b attends context
                   ctx_idx[b]. Without it, ctx(b) = 0 for an entry of one context (shared),
                   b for an entry of B; any other count is a ValueError.
    cumulative     packed calls only: sequence b also sees the new tokens of sequences 0..b-1
                   (flash-mlm's causal_query_seq_attn).
    prefill        store this call's K/V as the layer's contexts after attending
                   (prefill_mode "replace": they become the entry, B contexts; "append": sequence
                   b's tokens are appended to the context it attended, in batch order).
    An entry whose Hk, D, Dv, dtype or V kind differ from the call's is a ValueError (never a
    silent miss). Options: softmax_scale, softcap, sinks, num_threads, kernel, out, lse,
    return_lse, out_dtype as in the cflash module documentation; flash-mlm attention takes no
    masks. On any error nothing is written: not out, not lse, not the cache.
    Returns out, or (out, lse) with return_lse.
    """
    packed = cu_seqlens_q is not None
    if packed:
        Tq, Hq, D = _dims("q", q, 3, "[Tq, Hq, D]")
        Dv = _dims("v", v, 3, "[Tk, Hk, Dv]")[2] if v is not None else D
        Lk = _dims("k", k, 3, "[Tk, Hk, D]")[0]
        out_shape, lse_shape, Lq = (Tq, Hq, Dv), (Hq, Tq), Tq
    else:
        if cu_seqlens_k is not None:
            raise ValueError("cu_seqlens_k: a dense call (cu_seqlens_q None) takes no cu_seqlens_k")
        B, Lq, Hq, D = _dims("q", q, 4, "[B, Lq, Hq, D]")
        Dv = _dims("v", v, 4, "[B, Lk, Hk, Dv]")[3] if v is not None else D
        Lk = _dims("k", k, 4, "[B, Lk, Hk, D]")[1]
        out_shape, lse_shape = (B, Lq, Hq, Dv), (B, Hq, Lq)
    if cache is not None and not isinstance(cache, ContextCache):
        raise TypeError(f"cache: expected a cflash.ContextCache, got {type(cache).__name__}")
    if (cache is None) != (layer_id is None):
        raise ValueError("cache, layer_id: must be given together (or neither)")
    if prefill and cache is None:
        raise ValueError("prefill: needs a cache (and a layer_id)")
    if ctx_idx is not None and cache is None:
        raise ValueError("ctx_idx: needs a cache (and a layer_id)")
    mode = _mode(prefill_mode)
    layer = -1 if layer_id is None else _layer(layer_id)
    params = _params(softmax_scale, False, "bottom_right", None, softcap, None, sinks, None, None,
                     None, None, num_threads, kernel)
    _enter("mlm", q, k, D, Lq, Lk, params)
    out, lse = _outputs(q, out, out_shape, out_dtype, lse, lse_shape, return_lse)
    _cflash.attn_mlm(q, k, v, host_array("cu_seqlens_q", cu_seqlens_q, "int32", q),
                     host_array("cu_seqlens_k", cu_seqlens_k, "int32", q),
                     None if cache is None else cache._cache, layer,
                     host_array("ctx_idx", ctx_idx, "int32", q), bool(cumulative), bool(prefill), mode,
                     out, lse, **params)
    return _result(q, out, lse, return_lse)
