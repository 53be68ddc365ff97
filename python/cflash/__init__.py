"""cflash: exact flash attention for inference, over any DLPack array (NumPy, torch, JAX).

    import numpy as np, cflash
    q = np.random.randn(1, 128, 8, 64).astype(np.float32)   # [B, L, H, D]
    out = cflash.attn_dense(q, q, q, causal=True)            # NumPy in, NumPy out

Functions (shapes and options in their docstrings; the options are listed once in
cflash._api): attn_dense, attn_varlen, RangePlan + attn_range, attn_kvcache, merge, and the
flash-mlm layer context: ContextCache + attn_mlm.

Drop-ins for other libraries' call shapes (imported on demand, docs/compat_*.md):
cflash.flash_attn (flash-attn 2.x; `import flash_attn` through the guarded shim),
cflash.sdpa (torch SDPA patch), cflash.flash_mlm, cflash.magi (MagiAttention /
LocateAnything), cflash.dmattn (flash-dmattn). Environment: cflash._env. Inputs
reach the C library through DLPack without a copy; outputs are allocated by the input's
framework (or passed as out=). The GIL is released while a kernel runs. Semantics: SPEC.md.
"""

from . import _cflash
from ._api import RangePlan, attn_dense, attn_kvcache, attn_range, attn_varlen, merge
from ._context import ContextCache, ContextInfo, attn_mlm

__version__ = f"{_cflash.VERSION_MAJOR}.{_cflash.VERSION_MINOR}.{_cflash.VERSION_PATCH}"

__all__ = ["RangePlan", "attn_dense", "attn_kvcache", "attn_range", "attn_varlen", "merge",
           "ContextCache", "ContextInfo", "attn_mlm", "kernels", "kernel_auto", "default_num_threads"]


def kernels():
    """Names of the kernels this machine can run ("auto" and "ref" always)."""
    return [_cflash.kernel_name(i) for i in range(_cflash.KERNEL_COUNT) if _cflash.kernel_available(i)]


def kernel_auto():
    """The kernel "auto" means on this machine (after CFLASH_KERNEL)."""
    return _cflash.kernel_name(_cflash.kernel_auto())


def default_num_threads():
    """Threads used when num_threads=0 (CFLASH_NUM_THREADS, else the core count)."""
    return _cflash.default_num_threads()
