"""The guarded `flash_attn` import shim: `import flash_attn` gives cflash.flash_attn (flash-attn
2.x's seven forward functions on the CPU) when, and only when, no real flash-attn can be imported.

How it stays out of the way of a real flash-attn:

- Its finder is appended at the END of sys.meta_path, so the normal finders (PathFinder over
  sys.path, editable-install finders) are asked first; a real flash_attn anywhere on sys.path wins.
- A finder appended after it is asked first as well (at find time), whatever the order in which
  .pth files ran.
- It serves the top-level name `flash_attn` only. That package's __path__ is cflash/flash_attn,
  so `flash_attn.flash_attn_interface` then loads through the normal machinery; under a real
  flash_attn, submodule imports never reach the shim.
- Kill switch: CFLASH_SHIM=off (or 0, false, no), read at install time and again at find time.

The modules are loaded from cflash/flash_attn's files under the names flash_attn and
flash_attn.flash_attn_interface (ordinary modules, with __file__ and __spec__ of their own; they
are equal to, not identical with, cflash.flash_attn's).

Activation at interpreter start: the wheel installs cflash_shim.pth into site-packages (written
by python/CMakeLists.txt). Its line finds the cflash directory without importing it, loads this
file by path as the module `_cflash_shim` (not `import cflash._shim`, which would run
cflash/__init__.py and load the C extension in every Python process) and calls _auto(). This file
imports only os, sys and importlib.machinery (importlib.util would cost ~3 ms per interpreter
start); the extension loads when flash_attn is first imported. Finders are recognised by a marker
attribute, so install() / uninstall() work across that copy and `import cflash._shim`.
"""

import os
import sys
from importlib.machinery import ModuleSpec, SourceFileLoader

_NAME = "flash_attn"
_PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flash_attn")
_OFF_VALUES = ("off", "0", "false", "no")


def enabled():
    """False when the CFLASH_SHIM environment variable is off, 0, false or no."""
    return os.environ.get("CFLASH_SHIM", "").strip().lower() not in _OFF_VALUES


class FlashAttnShimFinder:
    """sys.meta_path finder serving `flash_attn` from cflash/flash_attn when nothing else can."""

    _cflash_shim = True  # marker: recognises finders from any copy of this module

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _NAME or not enabled():
            return None
        if self in sys.meta_path:  # finders after this one get their turn first
            for finder in sys.meta_path[sys.meta_path.index(self) + 1:]:
                find = None if _ours(finder) else getattr(finder, "find_spec", None)
                if find is not None and find(fullname, path, target) is not None:
                    return None
        init = os.path.join(_PACKAGE_DIR, "__init__.py")
        spec = ModuleSpec(_NAME, SourceFileLoader(_NAME, init), origin=init, is_package=True)
        spec.submodule_search_locations = [_PACKAGE_DIR]
        spec.has_location = True  # __file__ = origin, and a __cached__ of its own
        return spec

    def __repr__(self):
        return f"<cflash flash_attn shim for {_PACKAGE_DIR}>"


def _ours(finder):
    return getattr(finder, "_cflash_shim", False) is True


def installed():
    """Whether a shim finder is on sys.meta_path."""
    return any(_ours(f) for f in sys.meta_path)


def install():
    """Append the shim's finder to the end of sys.meta_path. Returns whether anything changed:
    False when it is already there or CFLASH_SHIM is off. A flash_attn already imported (real or
    not) stays as it is."""
    if not enabled() or installed():
        return False
    sys.meta_path.append(FlashAttnShimFinder())
    return True


def uninstall():
    """Remove every shim finder from sys.meta_path. Returns whether anything changed. Modules
    already imported through it stay in sys.modules (as with any import)."""
    before = len(sys.meta_path)
    sys.meta_path[:] = [f for f in sys.meta_path if not _ours(f)]
    return len(sys.meta_path) != before


def _auto():
    """Called by cflash_shim.pth at interpreter start."""
    install()
