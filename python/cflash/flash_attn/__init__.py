"""flash_attn, served by cflash: a drop-in for flash-attn 2.x's seven forward functions on the CPU.

    from cflash.flash_attn import flash_attn_func       # always available
    from flash_attn import flash_attn_func              # the same, through cflash's import shim,
                                                        # when no real flash-attn is installed

Functions (signatures, defaults and return values of flash-attn 2.8.3; shapes in their docstrings):
flash_attn_func, flash_attn_kvpacked_func, flash_attn_qkvpacked_func, flash_attn_varlen_func,
flash_attn_varlen_kvpacked_func, flash_attn_varlen_qkvpacked_func, flash_attn_with_kvcache.

__version__ is "2.8.3+cflash": the flash-attn API version these functions follow, and a PEP 440
local label that says who serves them (version checks such as `>= 2.6` pass; code can tell
cflash from the real thing with `__version__.endswith("+cflash")`).

This package is also loaded under the name `flash_attn` by cflash._shim, so its modules import
cflash by absolute name. Differences from flash-attn: docs/compat_flash_attn.md.
"""

from .flash_attn_interface import (flash_attn_func, flash_attn_kvpacked_func,
                                   flash_attn_qkvpacked_func, flash_attn_varlen_func,
                                   flash_attn_varlen_kvpacked_func,
                                   flash_attn_varlen_qkvpacked_func, flash_attn_with_kvcache)

__version__ = "2.8.3+cflash"

__all__ = ["flash_attn_func", "flash_attn_kvpacked_func", "flash_attn_qkvpacked_func",
           "flash_attn_varlen_func", "flash_attn_varlen_kvpacked_func",
           "flash_attn_varlen_qkvpacked_func", "flash_attn_with_kvcache"]
