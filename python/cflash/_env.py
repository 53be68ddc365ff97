"""The Python layer's environment variables (the C library reads CFLASH_KERNEL and
CFLASH_NUM_THREADS itself):

    CFLASH_BACKEND   auto (default) | cpu | cuda: which backend may serve a call. "auto" runs a
                     call on the backend of its tensors' device; "cpu" or "cuda" makes a call
                     whose tensors live elsewhere raise NotImplementedError naming the variable
                     (cflash never copies tensors between devices behind the caller's back).
                     Read at every call, so a test can change it.
    CFLASH_TRACE     1: count calls per (function, dtype, D, Lq, Lk, mask kind, kernel) and print
                     a table sorted by count to stderr when the interpreter exits. Read once at
                     import; when off, the only cost is one boolean test per call.

The table is the Python layer's output (the C library never prints), e.g.

    [CFLASH_TRACE] 12 attention call(s), 2 distinct shape/kernel combos:
      calls=10     varlen   bfloat16 D=128 Lq=4096   Lk=4096   causal       -> avx512bf16
      calls=2      dense    float32  D=64  Lq=1      Lk=8192   none         -> avx512
"""

import atexit
import os
import sys

from . import _cflash

_BACKENDS = ("auto", "cpu", "cuda")
_DEVICE_NAMES = {1: "cpu", 2: "cuda", 3: "cuda_host", 13: "cuda_managed"}  # DLPack device types

TRACE = os.environ.get("CFLASH_TRACE", "").strip().lower() in ("1", "true", "on", "yes")
_counts = {}


def backend():
    """CFLASH_BACKEND, checked: "auto", "cpu" or "cuda" (ValueError for anything else)."""
    value = os.environ.get("CFLASH_BACKEND", "auto").strip().lower() or "auto"
    if value not in _BACKENDS:
        raise ValueError(f"CFLASH_BACKEND: must be one of auto, cpu, cuda, got {value!r}")
    return value


def _device_type(x):
    """DLPack device type of a tensor (1 = CPU) without importing its framework."""
    device = getattr(x, "__dlpack_device__", None)
    return int(device()[0]) if device is not None else 1


def check_backend(x, name="q", y=None, y_name="k"):
    """NotImplementedError when CFLASH_BACKEND excludes the backend of x's device (and y's)."""
    if "CFLASH_BACKEND" not in os.environ:
        return
    want = backend()
    if want == "auto":
        return
    for t, t_name in ((x, name), (y, y_name)):
        if t is None:
            continue
        have = "cpu" if _device_type(t) == 1 else "cuda"
        if have != want:
            where = _DEVICE_NAMES.get(_device_type(t), f"device type {_device_type(t)}")
            raise NotImplementedError(f"{t_name}: CFLASH_BACKEND={want}, but the tensor is on {where} "
                                      f"(cflash does not copy between devices; unset CFLASH_BACKEND or "
                                      f"move the tensors)")


def call_stream(x):
    """(stream, owner) of a call on x. stream: the CUDA stream the call runs on, the framework's
    current stream for x's device (0 = the legacy default stream), None for CPU tensors. owner:
    the tensor type whose current stream that is, or None; tensors of exactly that type are
    exported without DLPack's stream synchronization (_cflash.c), which would do nothing there.

    Types with a DLPack exchange table (DLPack 1.3 `__dlpack_c_exchange_api__`: torch >= 2.10)
    answer in one C call (_cflash.work_stream); others: torch.cuda.current_stream, CuPy's
    current stream, 0 (the legacy default stream) for other producers."""
    found = _cflash.work_stream(x)
    if found is not None:
        stream = found[1]
        return stream, (type(x) if stream is not None else None)
    if _device_type(x) not in (2, 13):
        return None, None
    module = type(x).__module__.partition(".")[0]
    if module == "torch":
        import torch
        return torch.cuda.current_stream(x.device).cuda_stream, type(x)
    if module == "cupy":
        import cupy
        return cupy.cuda.get_current_stream().ptr, None
    return 0, None


def _kind(params, extra):
    parts = [extra] if extra else []
    if params.get("causal"):
        parts.append("causal" if params.get("align") == _cflash.ALIGN_BOTTOM_RIGHT else "causal_tl")
    if params.get("window_left", -1) >= 0 or params.get("window_right", -1) >= 0:
        parts.append("window")
    for key in ("alibi_slopes", "sinks", "mask", "bias"):
        if params.get(key) is not None:
            parts.append("alibi" if key == "alibi_slopes" else key)
    if params.get("softcap", 0.0):
        parts.append("softcap")
    return "+".join(parts) or "none"


def record(function, dtype, D, Lq, Lk, params, extra=""):
    """Count one call (only called when TRACE is on)."""
    kernel = params.get("kernel", 0)
    kernel = _cflash.kernel_name(_cflash.kernel_auto() if kernel == 0 else kernel)
    key = (function, dtype, int(D), int(Lq), int(Lk), _kind(params, extra), kernel)
    _counts[key] = _counts.get(key, 0) + 1


def table():
    """The trace table as text ("" when nothing was counted)."""
    if not _counts:
        return ""
    total = sum(_counts.values())
    lines = [f"[CFLASH_TRACE] {total} attention call(s), {len(_counts)} distinct shape/kernel combos:"]
    for (function, dtype, D, Lq, Lk, kind, kernel), n in sorted(_counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  calls={n:<6d} {function:<8s} {dtype:<8s} D={D:<4d} Lq={Lq:<7d} Lk={Lk:<7d} "
                     f"{kind:<12s} -> {kernel}")
    return "\n".join(lines) + "\n"


def reset():
    _counts.clear()


def _print_at_exit():
    text = table()
    if text:
        sys.stderr.write(text)


if TRACE:
    atexit.register(_print_at_exit)
