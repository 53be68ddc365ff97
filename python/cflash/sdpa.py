"""Reroute torch.nn.functional.scaled_dot_product_attention through cflash (opt-in).

    import cflash.sdpa
    cflash.sdpa.install()     # True: patched now; False: already installed, or CFLASH_SDPA=off
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    cflash.sdpa.stats()       # {"served": 1, "gate": 0, ...}: where each call went
    cflash.sdpa.uninstall()   # True: the original function object is back

What is served: 4-D CPU tensors q [B, Hq, Lq, D], k [B, Hk, Lk, D], v [B, Hk, Lk, Dv] of one
dtype (float32, float16, bfloat16), head dims 1..1024 with stride 1 on the head-dim axis;
is_causal (top-left: key j <= query i, as torch); attn_mask bool (True = keep) or additive
(float32 or q's dtype), of any shape torch broadcasts to [B, Hq, Lq, Lk] (passed to cflash as a
view, size-1 axes broadcast, no copy); scale (None = 1/sqrt(D)); Hk == Hq, Hk == 1, or Hq % Hk
== 0 with enable_gqa (query head h reads kv head h // (Hq / Hk), as torch's repeat_interleave).
The output is a new contiguous [B, Hq, Lq, Dv] tensor of q's dtype, as torch returns.

Gates (the mtlflashattn idea; read at install(), arguments override the environment):

    CFLASH_SDPA=off            install() patches nothing and returns False
    CFLASH_SDPA_MIN_SEQ=1024   speed gate: serve when max(Lq, Lk) >= this. Below ~1k tokens
                               torch's own CPU flash kernel wins (cflash's fixed per-call cost
                               is ~0.1-0.2 ms); from 1k on cflash was measured 1.1-2.5x faster
                               without a mask or with is_causal (docs/compat_sdpa.md has the table)
    CFLASH_SDPA_MIN_GB=1       memory gate: serve at any length when the Lq x Lk fp32 score
                               matrix of all heads (B * Hq * Lq * Lk * 4 bytes) reaches this many
                               GiB: the size torch's math backend would materialize (it does for
                               Dv != D); cflash never does

Everything else falls through to the function install() replaced, with the caller's
arguments, so it returns or raises exactly what the original does: dropout_p != 0, is_causal
with attn_mask, scale 0 or non-finite, inputs needing autograd (requires_grad under grad mode),
non-CPU devices, other dtypes, nested tensors and tensor subclasses, non-4-D inputs, shapes
torch would broadcast or reject, masks cflash cannot take as a view, calls under
torch.compile / torch.jit.trace / fx proxies / torch-function or dispatch modes (other than
torch.device contexts) / functorch transforms / autocast, and calls while an sdpa_kernel
context (or torch.backends.cuda.enable_flash_sdp(False)) disables the flash backend, whose role
cflash plays. A call cflash accepted but then failed on (it should not) also falls back to the
original: it is counted as "error" in stats() and kept by last_error(), so tests see it.

Threads: torch.get_num_threads() (torch.set_num_threads applies), or CFLASH_NUM_THREADS when
set. Only the name torch.nn.functional.scaled_dot_product_attention is patched: a reference
taken before install() (`from torch.nn.functional import scaled_dot_product_attention`) keeps
calling torch; nn.MultiheadAttention, which looks the name up in torch.nn.functional, is served.
Differences from torch: docs/compat_sdpa.md.
"""

import math
import numbers
import os
import threading

import torch
import torch.nn.functional as F

from ._api import attn_dense

DEFAULT_MIN_SEQ = 1024  # measured crossover with torch's CPU flash kernel (module docstring)
DEFAULT_MIN_GB = 1.0
MAX_HEAD_DIM = 1024     # the CPU backend's limit (SPEC.md section 8)
SCORE_BYTES = 4         # one fp32 score of the matrix the memory gate sizes
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_OFF = ("off", "0", "false", "no")

# stats() keys: "served", or why a call fell through (the first rule of _refusal it broke).
REASONS = ("served", "tensor_type", "shape", "gate", "mode", "sdpa_kernel", "args", "dropout",
           "causal_mask", "scale", "device", "dtype", "grad", "mask", "error")

_original = F.scaled_dot_product_attention  # what install() replaced; stale references still reach it
_installed = False
_min_seq = DEFAULT_MIN_SEQ
_min_score_bytes = 0
_torch_threads = True   # False when CFLASH_NUM_THREADS is set (cflash reads it itself)
_stats = dict.fromkeys(REASONS, 0)
_stats_lock = threading.Lock()
_last_error = None


def _env_number(name, default, kind):
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if not number >= 0:
        raise ValueError(f"{name}: must be >= 0, got {value!r}")
    return number


def install(min_seq=None, min_gb=None):
    """Patch torch.nn.functional.scaled_dot_product_attention. Returns True when it was patched
    by this call; False when already installed (nothing changes, gates included: uninstall()
    first to change them) or when CFLASH_SDPA=off. min_seq / min_gb override
    CFLASH_SDPA_MIN_SEQ / CFLASH_SDPA_MIN_GB (defaults 1024 tokens, 1 GiB; module docstring).
    A bad environment value raises ValueError naming the variable."""
    global _original, _installed, _min_seq, _min_score_bytes, _torch_threads
    if _installed or os.environ.get("CFLASH_SDPA", "").strip().lower() in _OFF:
        return False
    if min_seq is None:
        min_seq = _env_number("CFLASH_SDPA_MIN_SEQ", DEFAULT_MIN_SEQ, int)
    if min_gb is None:
        min_gb = _env_number("CFLASH_SDPA_MIN_GB", DEFAULT_MIN_GB, float)
    _min_seq, _min_score_bytes = int(min_seq), float(min_gb) * 2 ** 30
    _torch_threads = not os.environ.get("CFLASH_NUM_THREADS", "").strip()
    _original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = scaled_dot_product_attention
    _installed = True
    return True


def uninstall():
    """Put back the function install() replaced. Returns True when a patch was removed; False
    when none was installed, or when another patch has since replaced ours (nothing changes:
    remove that one first)."""
    global _installed
    if not _installed or F.scaled_dot_product_attention is not scaled_dot_product_attention:
        return False
    F.scaled_dot_product_attention = _original
    _installed = False
    return True


def is_installed():
    return _installed


def stats():
    """Calls since the last reset_stats(): {"served": n, <fall-through reason>: n, ...} with
    every key of REASONS. Calls made while tracing under torch.compile are not counted."""
    with _stats_lock:
        return dict(_stats)


def reset_stats():
    global _last_error
    with _stats_lock:
        _stats.update(dict.fromkeys(REASONS, 0))
    _last_error = None


def last_error():
    """The exception of the last call cflash accepted but failed on (then served by the
    original), or None."""
    return _last_error


def _count(reason):
    with _stats_lock:
        _stats[reason] += 1


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, *, scale=None, enable_gqa=False):
    """torch.nn.functional.scaled_dot_product_attention, served by cflash where it can
    (cflash.sdpa explains when); same signature, results and errors as torch's."""
    global _last_error
    if torch.compiler.is_compiling() or not _installed:  # first: Dynamo traces no further
        return _original(query, key, value, attn_mask, dropout_p, is_causal, scale=scale,
                         enable_gqa=enable_gqa)
    reason = _refusal(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    if reason is None:
        try:
            out = _serve(query, key, value, attn_mask, is_causal, scale)
        except Exception as e:  # accepted but failed: the original answers, stats() shows it
            _last_error = e
            reason = "error"
        else:
            _count("served")
            return out
    _count(reason)
    return _original(query, key, value, attn_mask, dropout_p, is_causal, scale=scale,
                     enable_gqa=enable_gqa)


def _serve(q, k, v, mask, is_causal, scale):
    B, Hq, Lq = q.shape[:3]
    out = torch.empty((B, Hq, Lq, v.shape[3]), dtype=q.dtype, device=q.device)
    extra = {}
    if mask is not None:  # [L, S] -> [1, 1, L, S] etc.: cflash's dense layout, size-1 axes broadcast
        mask = mask.detach()[(None,) * (4 - mask.dim())]
        extra["mask" if mask.dtype == torch.bool else "bias"] = mask
    # [B, H, L, D] storage is cflash's [B, L, H, D] with other strides: transposes, no copies.
    # detach(): DLPack refuses tensors that require grad, which reach here under no_grad.
    q, k, v = (t.detach().transpose(1, 2) for t in (q, k, v))
    attn_dense(q, k, v, out=out.transpose(1, 2),
               softmax_scale=None if scale is None else float(scale), causal=is_causal,
               align="top_left", num_threads=torch.get_num_threads() if _torch_threads else 0,
               **extra)
    return out


def _intercepted():
    """True when something other than plain eager execution must see the call: a dispatch mode
    (FakeTensorMode, FlopCounterMode, ...), a functorch transform (vmap, grad), CPU autocast
    (only CPU calls are served), a torch-function mode other than torch.device contexts."""
    if torch._C._len_torch_dispatch_stack():
        return True
    if torch._C._are_functorch_transforms_active() or torch.is_autocast_enabled("cpu"):
        return True
    if torch._C._len_torch_function_stack():
        from torch.overrides import _get_current_function_mode_stack
        from torch.utils._device import DeviceContext
        return not all(isinstance(m, DeviceContext) for m in _get_current_function_mode_stack())
    return False


def _refusal(q, k, v, mask, dropout_p, is_causal, scale, enable_gqa):
    """None when cflash serves the call, else the stats() key of the reason it falls through.
    The size gate comes early: most calls it refuses are small, and each check costs time."""
    tensors = (q, k, v) if mask is None else (q, k, v, mask)
    for t in tensors:
        if type(t) is not torch.Tensor or t.is_nested:
            return "tensor_type"  # subclasses, fx proxies, nested tensors, non-tensors
    if torch.jit.is_tracing():  # first: the tracer would warn about our size tests
        return "mode"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "shape"
    B, Hq, Lq, D = q.shape
    _, Hk, Lk, Dv = v.shape
    if max(Lq, Lk) < _min_seq and B * Hq * Lq * Lk * SCORE_BYTES < _min_score_bytes:
        return "gate"
    if _intercepted():
        return "mode"
    if not torch.backends.cuda.flash_sdp_enabled():  # also torch's switch for its CPU flash kernel
        return "sdpa_kernel"
    if not (isinstance(is_causal, bool) and isinstance(enable_gqa, bool)
            and isinstance(dropout_p, numbers.Real)):
        return "args"
    if dropout_p != 0:
        return "dropout"
    if is_causal and mask is not None:
        return "causal_mask"  # torch's math backend raises, its CPU flash kernel ANDs both
    if scale is not None and not (isinstance(scale, numbers.Real) and not isinstance(scale, bool)
                                  and math.isfinite(scale) and scale != 0):
        return "scale"  # cflash reads scale 0 as "default"
    if (tuple(k.shape) != (B, Hk, Lk, D) or v.shape[0] != B or min(B, Hq, Hk, Lq, Lk, D, Dv) == 0
            or max(D, Dv) > MAX_HEAD_DIM or any(t.stride(-1) != 1 for t in (q, k, v))):
        return "shape"
    if Hk != Hq and not (Hq % Hk == 0 and (enable_gqa or Hk == 1)):
        return "shape"  # torch raises, or broadcasts q's heads over k's
    if not all(t.is_cpu for t in tensors):
        return "device"
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return "dtype"
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "grad"
    if mask is not None and not _mask_fits(mask, (B, Hq, Lq, Lk), q.dtype):
        return "mask"
    return None


def _mask_fits(mask, full, dtype):
    """A bool mask, or an additive one of float32 or q's dtype (what torch accepts), whose
    shape broadcasts to [B, Hq, Lq, Lk] axis by axis: cflash's dense layout [B|1, Hv, Lq|1,
    Lk|1] with Hv in {1, Hq} takes it as a view."""
    if mask.dtype not in (torch.bool, torch.float32, dtype) or not 2 <= mask.dim() <= 4:
        return False
    shape = (1,) * (4 - mask.dim()) + tuple(mask.shape)
    return all(n in (1, size) for n, size in zip(shape, full))


# TorchScript compiles the Python functions a scripted function calls; map this one to the aten op
# (scripted code then runs torch's kernel, as before install()).
try:
    from torch.jit._builtins import _register_builtin
    _register_builtin(scaled_dot_product_attention, "aten::scaled_dot_product_attention")
except (ImportError, AttributeError):
    pass
