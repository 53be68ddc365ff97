"""flash-mlm drop-in (https://github.com/vymao/flash-mlm, v1.2.2 API) on cflash's CPU kernels:
the public names of ``flash_mlm`` with their arguments, defaults, shapes and validation rules.

    from cflash.flash_mlm import InferenceCache, flash_attn_mlm
    out = flash_attn_mlm(q, k, v, scale=D ** -0.5, inference_cache=cache, layer_id=0, prefill=True)

- ``flash_attn_mlm(q, k, v, scale, ...)``: dense, q/k/v [B, H, N, D] -> out [B, H, N, D].
- ``flash_attn_mlm_compressed(q, k, v, num_heads, q_meta, scale, ...)``: padded [B, H, N, D]
  inputs with per-sequence lengths (``q_meta``) -> packed out [H * total, D] (head-major).
- ``flash_attn_mlm_precompressed(q, k, v, num_heads, total_q_len, cu_seqlens_q, ...)``:
  pre-packed q [H * total_q_len, D], k/v [H * total_q_len, D] (MLA: [total_q_len, D]).
- ``InferenceCache`` (per-layer context, over a cflash ContextCache), ``PackingCache``,
  ``PackMetadata``, ``build_pack_metadata``, ``unpack_from_kernel``.

Semantics: each query row of sequence b attends, with no mask, to its context (the layer's
cached K/V: the shared one, or the b-th of B) and to its own new tokens (with
``causal_query_seq_attn``, those of sequences 0..b). ``prefill=True`` attends to the new tokens
only and then stores them as the layer's context. ``is_mla``: head 0 of k is the shared latent,
keys and values at once (V := K), in both paths; v is not read. Differences from flash-mlm, each
with its reason: docs/compat_flash_mlm.md. torch tensors on the CPU only.
"""

from dataclasses import dataclass

import torch

from . import _api
from ._context import ContextCache, attn_mlm as _attn_mlm

__all__ = ["PackMetadata", "PackingCache", "InferenceCache", "build_pack_metadata", "unpack_from_kernel",
           "flash_attn_mlm", "flash_attn_mlm_compressed", "flash_attn_mlm_precompressed"]


# ---- packing metadata ----

@dataclass
class PackMetadata:
    """Reusable indexing of variable-length sequences in padded [B, H, N, D] tensors.

    lengths int32 [B]; cu_seqlens int32 [B + 1]; token_indices int64 [total_tokens] (flat
    b * N + t of every valid token, in packed order); batch_ids_q / q_tile_starts_q int32
    [num_tiles]: the batch entry and packed start of each query tile of batch_ids_block_n rows
    (flash-mlm's kernel schedule; cflash does not need them).
    """

    B: int
    N: int
    lengths: torch.Tensor
    cu_seqlens: torch.Tensor
    token_indices: torch.Tensor
    total_tokens: int
    batch_ids_block_n: int
    batch_ids_q: torch.Tensor
    q_tile_starts_q: torch.Tensor


def build_pack_metadata(lengths, N, block_n):
    """PackMetadata for lengths (int [B], each in [0, N]) in tensors padded to N tokens, with
    query tiles of block_n rows."""
    if lengths.ndim != 1:
        raise ValueError("lengths must be rank-1 [B]")
    if N < 0:
        raise ValueError("N must be >= 0")
    if block_n < 1:
        raise ValueError("block_n must be >= 1")
    if bool((lengths < 0).any()) or bool((lengths > N).any()):
        raise ValueError("lengths values must be in [0, N]")
    if lengths.numel() == 0:
        raise ValueError("lengths must have at least one entry (cu_seqlens_q must have at least 2 elements)")
    device = lengths.device
    lengths = lengths.to(torch.int32)
    B = lengths.numel()
    cu = torch.zeros(B + 1, dtype=torch.int32, device=device)
    cu[1:] = torch.cumsum(lengths, 0)
    valid = torch.arange(N, device=device)[None, :] < lengths[:, None]
    token_indices = valid.reshape(-1).nonzero().reshape(-1)  # int64, row-major = packed order
    tiles = (lengths.to(torch.int64) + block_n - 1) // block_n
    batch_ids = torch.repeat_interleave(torch.arange(B, device=device), tiles)
    first_tile = torch.cumsum(tiles, 0) - tiles
    tile_in_seq = torch.arange(batch_ids.numel(), device=device) - first_tile[batch_ids]
    q_tile_starts = cu[:-1].to(torch.int64)[batch_ids] + tile_in_seq * block_n
    return PackMetadata(B=B, N=int(N), lengths=lengths, cu_seqlens=cu, token_indices=token_indices,
                        total_tokens=int(cu[-1]), batch_ids_block_n=int(block_n),
                        batch_ids_q=batch_ids.to(torch.int32), q_tile_starts_q=q_tile_starts.to(torch.int32))


def unpack_from_kernel(packed, meta, H):
    """Packed [H * total_tokens, D] (or [H, total_tokens, D]) -> padded [B, H, N, D], zeros at
    the padding."""
    if packed.ndim == 3:
        total, D = packed.shape[1], packed.shape[2]
        heads = packed
    elif packed.ndim == 2:
        total, D = meta.total_tokens, packed.shape[1]
        if total and packed.shape[0] != H * total:
            raise ValueError("packed first dim must be H * total_tokens")
        heads = packed.reshape(H, total, D)
    else:
        raise ValueError("packed must be rank-2 or rank-3")
    if total != meta.total_tokens:
        raise ValueError("packed token count mismatch with PackMetadata")
    x = heads.new_zeros((meta.B * meta.N, heads.shape[0], D))
    x[meta.token_indices] = heads.transpose(0, 1)
    return x.reshape(meta.B, meta.N, heads.shape[0], D).transpose(1, 2).contiguous()


class PackingCache:
    """Reusable 2-D workspaces and PackMetadata (flash-mlm's packing cache). cflash's launchers
    gather without workspaces; get_2d and get_pack_metadata behave as in flash-mlm."""

    def __init__(self):
        self._buffers = {}
        self._pack_meta = {}

    def get_2d(self, name, rows, cols, *, dtype, device):
        """A [rows, cols] view of a workspace named `name`, grown when too small."""
        if rows < 0:
            raise ValueError("rows must be >= 0")
        if cols < 1:
            raise ValueError("cols must be >= 1")
        device = torch.device(device)
        key = (name, device.type, device.index, dtype, cols)
        buf = self._buffers.get(key)
        if buf is None or buf.shape[0] < rows:
            buf = self._buffers[key] = torch.empty((rows, cols), dtype=dtype, device=device)
        return buf[:rows]

    def get_pack_metadata(self, lengths, *, N, block_n):
        """build_pack_metadata(lengths, N, block_n), memoized on the lengths' values."""
        key = (lengths.device.type, lengths.device.index, N, block_n,
               tuple(lengths.to(device="cpu", dtype=torch.int32).tolist()))
        if key not in self._pack_meta:
            self._pack_meta[key] = build_pack_metadata(lengths, N, block_n)
        return self._pack_meta[key]

    def clear(self):
        self._buffers.clear()
        self._pack_meta.clear()


# ---- the layer cache ----

@dataclass
class LayerKVEntry:
    """What InferenceCache.get_kv_cache returns. cflash keeps its own copy of the K/V, which it
    does not expose: k_cache and v_cache are None; the other fields are flash-mlm's."""

    k_cache: None
    v_cache: None
    total_context_len: int
    cu_seqlens_kv: torch.Tensor
    context_batch_size: int
    is_mla: bool
    num_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device


def _packed_rows(x, heads, rows):
    """flash-mlm's packed layout [heads * rows, D] (head-major) as cflash's [rows, heads, D]
    (a view when x is contiguous)."""
    return x.reshape(heads, rows, x.shape[-1]).transpose(0, 1)


class InferenceCache:
    """Layer-scoped context K/V (flash-mlm's InferenceCache) plus a PackingCache (`packing`).

    Entries are keyed by str(layer_id) (ints and strings alike, as in flash-mlm) and live in a
    cflash ContextCache, which owns copies of the stored K/V.
    """

    def __init__(self):
        self.packing = PackingCache()
        self._contexts = ContextCache()
        self._ids = {}    # str(layer_id) -> the ContextCache layer id
        self._meta = {}   # str(layer_id) -> (num_heads, is_mla, head_dim) of the stored entry

    @staticmethod
    def _layer_key(layer_id):
        return str(layer_id)

    def _id(self, layer_id):
        return self._ids.setdefault(self._layer_key(layer_id), len(self._ids))

    def _store(self, layer_id, k, v, cu, *, num_heads, is_mla, head_dim):
        """k, v in cflash's layout (dense [C, L, Hk, D] or packed [T, Hk, D] with cu); v None for MLA."""
        self._contexts.store(self._id(layer_id), k, v, cu, mode="replace")
        self._meta[self._layer_key(layer_id)] = (int(num_heads), bool(is_mla), int(head_dim))

    def _entry(self, layer_id):
        """(ContextCache layer id, ContextInfo, (num_heads, is_mla, head_dim)) or None."""
        key = self._layer_key(layer_id)
        if key not in self._meta:
            return None
        slot = self._ids[key]
        return slot, self._contexts.info(slot), self._meta[key]

    @staticmethod
    def _validate_kv_common_inputs(*, k_cache, v_cache, total_context_len, is_mla, num_heads, head_dim):
        if k_cache.ndim != 2:
            raise ValueError("k_cache must be a rank-2 packed tensor")
        if k_cache.shape[1] != head_dim:
            raise ValueError("k_cache second dim must match head_dim")
        if not k_cache.is_contiguous():
            raise ValueError("k_cache must be contiguous")
        if is_mla:
            if v_cache is not None:
                if v_cache.ndim != 2:
                    raise ValueError("MLA v_cache must be a rank-2 packed tensor")
                if v_cache.shape != k_cache.shape:
                    raise ValueError("MLA v_cache shape must match k_cache shape")
                if not v_cache.is_contiguous():
                    raise ValueError("MLA v_cache must be contiguous")
        else:
            if v_cache is None:
                raise ValueError("non-MLA cache requires v_cache")
            if v_cache.ndim != 2:
                raise ValueError("v_cache must be a rank-2 packed tensor")
            if v_cache.shape != k_cache.shape:
                raise ValueError("v_cache shape must match k_cache shape")
            if not v_cache.is_contiguous():
                raise ValueError("v_cache must be contiguous")
        rows = total_context_len if is_mla else num_heads * total_context_len
        if k_cache.shape[0] != rows:
            raise ValueError(f"k_cache first dim mismatch: expected {rows} rows for is_mla={is_mla}")
        if not is_mla and v_cache.shape[0] != rows:
            raise ValueError(f"v_cache first dim mismatch: expected {rows} rows for is_mla={is_mla}")

    def prefill_kv_cache(self, layer_id, *, k_cache, v_cache=None, total_context_len=None,
                         cu_seqlens_kv=None, context_batch_size, is_mla, num_heads, head_dim):
        """Store pre-packed context K/V for a layer (replacing its entry).

        k_cache, v_cache: MLA [total_context_len, D] (v_cache ignored: V := K), else
        [num_heads * total_context_len, D].
        Packed (cu_seqlens_kv int [>= context_batch_size + 1]): head-major rows, context c =
        tokens [cu[c], cu[c + 1]) of every head. Dense-style (cu_seqlens_kv None): batch-major
        [context_batch_size, num_heads, L, D] rows with L = total_context_len / context_batch_size.
        cflash copies the data (flash-mlm keeps the tensors).
        """
        if context_batch_size < 1:
            raise ValueError("context_batch_size must be >= 1")
        if num_heads < 1:
            raise ValueError("num_heads must be >= 1")
        if total_context_len is None:
            if not is_mla and k_cache.shape[0] % num_heads != 0:
                raise ValueError("non-MLA k_cache rows must be divisible by num_heads")
            total_context_len = k_cache.shape[0] if is_mla else k_cache.shape[0] // num_heads
        total = int(total_context_len)
        self._validate_kv_common_inputs(k_cache=k_cache, v_cache=v_cache, total_context_len=total,
                                        is_mla=is_mla, num_heads=num_heads, head_dim=head_dim)
        heads = 1 if is_mla else num_heads
        if cu_seqlens_kv is None:
            if total % context_batch_size != 0:
                raise ValueError("when cu_seqlens_kv is omitted, total_context_len must be divisible by "
                                 "context_batch_size")
            L = total // context_batch_size
            as_dense = lambda x: x.reshape(context_batch_size, heads, L, head_dim).transpose(1, 2)
            k, v, cu = as_dense(k_cache), None if is_mla else as_dense(v_cache), None
        else:
            if cu_seqlens_kv.ndim != 1 or cu_seqlens_kv.numel() < 2:
                raise ValueError("cu_seqlens_kv must be rank-1 with at least 2 elements")
            if context_batch_size + 1 > cu_seqlens_kv.numel():
                raise ValueError("context_batch_size is incompatible with cu_seqlens_kv length")
            cu = cu_seqlens_kv[: context_batch_size + 1].to(device="cpu", dtype=torch.int64)
            first, last = int(cu[0]), int(cu[-1])
            if first < 0 or last > total:
                raise ValueError(f"cu_seqlens_kv: its rows [{first}, {last}) must lie within "
                                 f"total_context_len = {total}")
            # flash-mlm stores padded rows (total_context_len >= cu[-1]): only [cu[0], cu[-1]) are context
            k = _packed_rows(k_cache, heads, total)[first:last]
            v = None if is_mla else _packed_rows(v_cache, heads, total)[first:last]
            cu = (cu - first).to(torch.int32)
        self._store(layer_id, k, v, cu, num_heads=num_heads, is_mla=is_mla, head_dim=head_dim)

    def get_kv_cache(self, layer_id, *, is_mla, num_heads, head_dim, dtype, device):
        """The entry of layer_id (ValueError when absent or when it does not match the request),
        as a LayerKVEntry without the tensors (cflash does not expose its copy)."""
        entry = self._entry(layer_id)
        if entry is None:
            raise ValueError(f"No cached KV context for layer_id={layer_id}")
        problem = _mismatch(entry, is_mla, num_heads, head_dim, dtype, device)
        if problem:
            raise ValueError(problem)
        _, info, _ = entry
        cu = torch.zeros(info.num_contexts + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(info.lengths, dtype=torch.int64), 0)
        return LayerKVEntry(k_cache=None, v_cache=None, total_context_len=info.total_len, cu_seqlens_kv=cu,
                            context_batch_size=info.num_contexts, is_mla=bool(is_mla), num_heads=int(num_heads),
                            head_dim=int(head_dim), dtype=dtype, device=torch.device("cpu"))

    def clear_layer(self, layer_id):
        key = self._layer_key(layer_id)
        if key in self._ids:
            self._contexts.clear(self._ids[key])
        self._meta.pop(key, None)

    def clear(self):
        self.packing.clear()
        self._contexts.clear()
        self._meta.clear()


def _mismatch(entry, is_mla, num_heads, head_dim, dtype, device):
    """flash-mlm's message for an entry that does not match the request, or None."""
    _, info, (heads, mla, dim) = entry
    if mla != bool(is_mla):
        return "Cached KV mode (is_mla) does not match request"
    if heads != num_heads:
        return "Cached num_heads does not match request"
    if dim != head_dim:
        return "Cached head_dim does not match request"
    if info.dtype != str(dtype).replace("torch.", ""):
        return "Cached KV dtype does not match request"
    if torch.device(device).type != "cpu":
        return "Cached KV device does not match request"
    return None


# ---- launchers ----

def _validate_cache_request(prefill, inference_cache, layer_id):
    if prefill and inference_cache is None:
        raise ValueError("prefill=True requires inference_cache")
    if (inference_cache is None) != (layer_id is None):
        raise ValueError("inference_cache and layer_id must be provided together or both omitted")
    if inference_cache is not None and not isinstance(inference_cache, InferenceCache):
        raise TypeError(f"inference_cache: expected a cflash.flash_mlm.InferenceCache, got "
                        f"{type(inference_cache).__name__}")


def _validate_qkv(q, k, v):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError("q/k/v must be rank-4 tensors [B, H, N, D]")
    if q.shape != k.shape or q.shape != v.shape:
        raise ValueError("q, k, v must have the same shape")
    return tuple(int(n) for n in q.shape)


def _validate_scale(scale):
    # cflash reads a scale of 0 as "the default 1/sqrt(D)": a literal 0 cannot be passed on
    if scale == 0:
        raise ValueError("scale: must be nonzero (cflash reads 0 as 1/sqrt(D))")
    return float(scale)


def _context(cache, layer_id, B, H, D, is_mla, dtype, context_batch_size, prefill):
    """How a call uses the layer's entry: None (no cache, a miss, or a prefill, which attends to
    no context), ("own", id) (context 0 shared, or context b for batch entry b) or
    ("concat", id, C) (context_batch_size=1 over C > 1 contexts: all of them, concatenated)."""
    if context_batch_size is not None and context_batch_size < 1:
        raise ValueError("context_batch_size must be >= 1")
    entry = None if cache is None else cache._entry(layer_id)
    if entry is None:
        return None
    problem = _mismatch(entry, is_mla, H, D, dtype, "cpu")
    if problem:
        if prefill:  # replaced without being read
            return None
        raise ValueError(f"{problem} (layer_id={layer_id})")
    slot, info, _ = entry
    C = info.num_contexts
    if context_batch_size not in (None, 1) and context_batch_size != C:
        raise ValueError(f"context_batch_size ({context_batch_size}) must match cached entry "
                         f"context_batch_size ({C})")
    if prefill:
        return None
    if context_batch_size == 1 and C > 1:
        return ("concat", slot, C)
    if C not in (1, B):
        raise ValueError(f"the cached entry of layer_id={layer_id} holds {C} contexts: a batch of {B} "
                         f"needs 1 (shared) or {B} (one per batch entry)")
    return ("own", slot)


def _unit_last(x):
    """x, or a copy when its last axis is strided (cflash reads rows of stride 1)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _attend(q, k, v, cu, ctx, cache, scale, cumulative, out):
    """Run cflash over cflash-layout views (dense [B, N, H, D] with cu None, or packed
    [T, H, D] with cu) into `out`, with the context chosen by _context()."""
    common = dict(cumulative=cumulative, softmax_scale=scale)
    if ctx is None:
        _attn_mlm(q, k, v, cu, out=out, **common)
    elif ctx[0] == "own":
        _attn_mlm(q, k, v, cu, cache=cache._contexts, layer_id=ctx[1], out=out, **common)
    else:
        # one shared context made of all C contexts: attend to each of them (with no new
        # tokens) and to the new tokens separately, and merge the partial states exactly
        # (SPEC.md section 7), in fp32
        _, slot, C = ctx
        B = q.shape[0] if cu is None else cu.numel() - 1
        no_keys = (lambda x: x[:, :0]) if cu is None else (lambda x: x[:0])
        no_cu = None if cu is None else torch.zeros_like(cu)
        o, lse = _attn_mlm(q, k, v, cu, out_dtype="float32", return_lse=True, **common)
        for c in range(C):
            o_c, lse_c = _attn_mlm(q, no_keys(k), None if v is None else no_keys(v), cu, no_cu,
                                   cache=cache._contexts, layer_id=slot,
                                   ctx_idx=torch.full((B,), c, dtype=torch.int32),
                                   softmax_scale=scale, out_dtype="float32", return_lse=True)
            _api.merge(o, lse, o_c, lse_c, out=o, lse_out=lse)
        out.copy_(o)


def flash_attn_mlm(q, k, v, scale, inference_cache=None, layer_id=None, is_mla=False,
                   context_batch_size=None, block_m=64, block_n=32, auto_tune_tiles=False, prefill=False):
    """Dense MLM attention. q, k, v [B, H, N, D] (one shape); returns out [B, H, N, D] in q's dtype.

    Each query of batch entry b attends to the layer's context (context 0 when the entry holds
    one, context b when it holds B; all contexts concatenated with context_batch_size=1) and to
    the N new tokens of b. prefill=True attends to the new tokens only, then stores them as the
    layer's B contexts. is_mla: k[:, 0] is the shared latent (keys and values); v is not read.
    block_m, block_n, auto_tune_tiles: flash-mlm's tile sizes, accepted and unused.
    """
    B, H, N, D = _validate_qkv(q, k, v)
    _validate_cache_request(prefill, inference_cache, layer_id)
    scale = _validate_scale(scale)
    ctx = _context(inference_cache, layer_id, B, H, D, is_mla, q.dtype, context_batch_size, prefill)
    q4 = _unit_last(q).transpose(1, 2)                                    # [B, N, H, D]
    k4 = _unit_last(k[:, :1] if is_mla else k).transpose(1, 2)
    v4 = None if is_mla else _unit_last(v).transpose(1, 2)
    out = torch.empty((B, H, N, D), dtype=q.dtype, device=q.device)
    _attend(q4, k4, v4, None, ctx, inference_cache, scale, False, out.transpose(1, 2))
    if prefill:
        inference_cache._store(layer_id, k4, v4, None, num_heads=H, is_mla=is_mla, head_dim=D)
    return out


def _packed(q3, k3, v3, cu, out3, *, H, D, scale, inference_cache, layer_id, is_mla,
            context_batch_size, prefill, cumulative):
    """The packed launchers' common part over cflash-layout views: q3 [T, H, D], k3 / v3
    [T, H | 1, D] (v3 None with is_mla), cu int32 [B + 1] from 0 to T, out3 [T, H, D]."""
    ctx = _context(inference_cache, layer_id, cu.numel() - 1, H, D, is_mla, q3.dtype, context_batch_size,
                   prefill)
    _attend(q3, k3, v3, cu, ctx, inference_cache, scale, bool(cumulative), out3)
    if prefill:
        inference_cache._store(layer_id, k3, v3, cu, num_heads=H, is_mla=is_mla, head_dim=D)


def flash_attn_mlm_compressed(q, k, v, num_heads, q_meta, scale, inference_cache=None, layer_id=None,
                              is_mla=False, context_batch_size=None, block_m=64, block_n=32,
                              auto_tune_tiles=False, prefill=False, causal_query_seq_attn=False):
    """Packed MLM attention. q, k, v padded [B, H, N, D] (one shape) with q_meta (lengths of
    the sequences, from build_pack_metadata); returns the packed output [H * total, D]
    (head-major: row h * total + t is token t of head h; unpack_from_kernel makes [B, H, N, D]).

    Sequence b's queries attend to the layer's context (context 0, or context b of B; all
    contexts with context_batch_size=1) and to its own tokens, or with causal_query_seq_attn to
    the tokens of sequences 0..b. prefill=True attends to no context and stores this call's
    packed K/V as the layer's B contexts. is_mla: head 0 of k is the shared latent (keys and
    values). block_m, block_n, auto_tune_tiles: flash-mlm's tile sizes, accepted and unused.
    """
    B, H, N, D = _validate_qkv(q, k, v)
    if H != num_heads:
        raise ValueError("q/k/v head dimension must match num_heads")
    _validate_cache_request(prefill, inference_cache, layer_id)
    if q_meta.B != B or q_meta.N != N:
        raise ValueError("q_meta shape metadata does not match q/k/v padded shape")
    scale = _validate_scale(scale)
    idx = q_meta.token_indices.to(q.device)
    b_of, t_of = idx // N, idx % N
    pack = lambda x: x.transpose(1, 2)[b_of, t_of]                      # [B, h, N, D] -> [total, h, D]
    total = q_meta.total_tokens
    out = torch.empty((H, total, D), dtype=q.dtype, device=q.device)    # flash-mlm's packed layout
    _packed(pack(q), pack(k[:, :1] if is_mla else k), None if is_mla else pack(v),
            q_meta.cu_seqlens.to(device="cpu", dtype=torch.int32), out.transpose(0, 1), H=H, D=D,
            scale=scale, inference_cache=inference_cache, layer_id=layer_id, is_mla=is_mla,
            context_batch_size=context_batch_size, prefill=prefill, cumulative=causal_query_seq_attn)
    return out.reshape(H * total, D)


def flash_attn_mlm_precompressed(q, k, v, num_heads, total_q_len, cu_seqlens_q, batch_ids_q, q_tile_starts_q,
                                 scale, inference_cache=None, layer_id=None, is_mla=False,
                                 context_batch_size=None, block_m=64, block_n=32, auto_tune_tiles=False,
                                 prefill=False, causal_query_seq_attn=False):
    """flash_attn_mlm_compressed on tensors already packed (and possibly padded):
    q [H * total_q_len, D]; k, v [H * total_q_len, D], or [total_q_len, D] with is_mla (v is
    not read then); cu_seqlens_q [B + 1] (rows past cu_seqlens_q[-1] are padding: zeros in the
    output). batch_ids_q, q_tile_starts_q: flash-mlm's tile schedule, checked and unused.
    Returns the packed output [H * total_q_len, D].
    """
    _validate_cache_request(prefill, inference_cache, layer_id)
    for name, x in (("q", q), ("k", k), ("v", v), ("cu_seqlens_q", cu_seqlens_q)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if q.ndim != 2 or k.ndim != 2 or v.ndim != 2:
        raise ValueError("q/k/v must be pre-packed rank-2 tensors")
    D = q.shape[1]
    if k.shape[1] != D or v.shape[1] != D:
        raise ValueError("q/k/v head_dim (dim 1) must match")
    if num_heads < 1:
        raise ValueError("num_heads must be >= 1")
    if q.shape[0] != num_heads * total_q_len:
        raise ValueError("q first dim must equal num_heads * total_q_len")
    rows = total_q_len if is_mla else num_heads * total_q_len
    if k.shape[0] != rows or v.shape[0] != rows:
        raise ValueError(f"k/v first dim mismatch: expected {rows} rows for is_mla={is_mla}")
    if cu_seqlens_q.ndim != 1 or cu_seqlens_q.numel() < 2:
        raise ValueError("cu_seqlens tensors must be rank-1 with at least 2 elements")
    if batch_ids_q.ndim != 1 or batch_ids_q.numel() != q_tile_starts_q.numel():
        raise ValueError("batch_ids_q must be rank-1 with exactly one entry per query tile")
    if q_tile_starts_q.ndim != 1:
        raise ValueError("q_tile_starts_q must be rank-1")
    scale = _validate_scale(scale)
    cu = cu_seqlens_q.to(device="cpu", dtype=torch.int64)
    first, last = int(cu[0]), int(cu[-1])
    if first < 0 or last > total_q_len:
        raise ValueError(f"cu_seqlens_q: its rows [{first}, {last}) must lie within total_q_len = {total_q_len}")
    heads = 1 if is_mla else num_heads
    seqs = slice(first, last)  # rows outside [cu[0], cu[-1]) are padding: not attended, zeros out
    rows_of = lambda x, h: _packed_rows(_unit_last(x), h, total_q_len)[seqs]
    alloc = torch.empty if (first, last) == (0, total_q_len) else torch.zeros
    out = alloc((num_heads, total_q_len, D), dtype=q.dtype, device=q.device)
    _packed(rows_of(q, num_heads), rows_of(k, heads), None if is_mla else rows_of(v, heads),
            (cu - first).to(torch.int32), out.transpose(0, 1)[seqs], H=num_heads, D=D, scale=scale,
            inference_cache=inference_cache, layer_id=layer_id, is_mla=is_mla,
            context_batch_size=context_batch_size, prefill=prefill, cumulative=causal_query_seq_attn)
    return out.reshape(num_heads * total_q_len, D)
