"""Which array library a tensor comes from, and outputs allocated by that library.

cflash depends on no framework: a framework is imported only when an input comes from it (its
module is then already loaded). Outputs follow the framework of a reference input:

- torch in: ``torch.empty`` on the input's device, torch out.
- NumPy in: ``numpy.empty``, NumPy out.
- JAX in: JAX arrays are immutable, so the kernel writes into a ``_cflash.Buffer`` (64-byte
  aligned memory exported through DLPack) which becomes a JAX array with
  ``jax.dlpack.from_dlpack`` (zero copy; also for bfloat16, which NumPy cannot hold).
- any other DLPack producer: NumPy out (a ``Buffer`` for bfloat16).

What this is not: a conversion layer. Inputs are never copied; they reach the extension
through DLPack as they are.
"""

from . import _cflash

TORCH, NUMPY, JAX, DLPACK = "torch", "numpy", "jax", "dlpack"


_BY_TYPE = {}  # type -> framework(): a call asks for its tensors' frameworks several times


def framework(x):
    """"torch", "numpy", "jax" or "dlpack" (another DLPack producer); None for a non-tensor."""
    kind = _BY_TYPE.get(type(x), False)
    if kind is not False:
        return kind
    root = type(x).__module__.partition(".")[0]
    if root == "torch":
        kind = TORCH
    elif root == "numpy":
        kind = NUMPY
    elif root in ("jax", "jaxlib"):
        kind = JAX
    else:
        kind = DLPACK if hasattr(x, "__dlpack__") else None
    if kind is not None and len(_BY_TYPE) < 64:
        _BY_TYPE[type(x)] = kind
    return kind


def require_tensor(name, x):
    """TypeError unless x is a DLPack tensor (the extension checks again; the Python layer
    needs shapes before it can allocate outputs)."""
    if framework(x) is None:
        raise TypeError(f"{name}: expected a DLPack tensor (an object with __dlpack__), got "
                        f"{'None' if x is None else type(x).__name__}")


def shape_of(x, name="x"):
    if framework(x) == DLPACK:
        return tuple(_cflash.describe(x, name)["shape"])
    return tuple(x.shape)  # torch.Size, NumPy and JAX shapes hold Python ints


def dtype_of(x, name="x"):
    """The dtype's name as cflash spells it: "float32", "float16", "bfloat16", "int32", ..."""
    if framework(x) == DLPACK:
        return _cflash.describe(x, name)["dtype"]
    name = str(x.dtype)
    return name[len("torch."):] if name.startswith("torch.") else name


def dtype_name(dtype):
    """A dtype given by the caller (str, NumPy, torch or JAX dtype) as a name."""
    if isinstance(dtype, str):
        return dtype
    name = str(dtype)
    if name.startswith("torch."):
        return name[len("torch."):]
    return getattr(dtype, "__name__", name)


def require_writable(name, x):
    """ValueError for arrays that must not be written in place (JAX arrays are immutable;
    read-only NumPy arrays are refused by the extension, which sees the DLPack flag)."""
    if framework(x) == JAX:
        raise ValueError(f"{name}: JAX arrays are immutable and cannot be written in place; "
                         "pass a NumPy or torch array")


def empty(like, shape, dtype):
    """An uninitialized output of `shape` and dtype name `dtype` for inputs like `like`, in the
    form the extension writes into (see finish())."""
    kind = framework(like)
    if kind == TORCH:
        import torch
        return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)
    device = getattr(like, "__dlpack_device__", None)
    if device is not None and int(device()[0]) not in (1, 3):  # not CPU or pinned host memory
        raise NotImplementedError(f"outputs for GPU arrays of {type(like).__module__} are not allocated by cflash "
                                  f"(torch only): pass out= (and lse=)")
    if kind == NUMPY or (kind == DLPACK and dtype != "bfloat16"):
        import numpy
        return numpy.empty(shape, dtype=dtype)
    return _cflash.empty(shape, dtype)


def finish(like, x):
    """An output written by the extension, in the framework of `like`."""
    if x is None or framework(like) != JAX or framework(x) == JAX:
        return x
    import jax.dlpack
    return jax.dlpack.from_dlpack(x)


def host_array(name, x, dtype, like=None):
    """Small host-side arguments (sequence lengths, ranges, slopes) may be Python sequences or
    numbers: those become NumPy arrays of `dtype` (torch tensors on like's GPU when `like` is a
    torch CUDA tensor: a GPU call takes its metadata on the GPU); tensors pass unchanged."""
    if x is None or hasattr(x, "__dlpack__"):
        return x
    if like is not None and framework(like) == TORCH and like.is_cuda:
        import torch
        return torch.as_tensor(host_array(name, x, dtype), device=like.device)
    import numpy
    try:
        a = numpy.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected a tensor or a sequence of numbers ({e})") from None
    if a.dtype == object or (a.size and a.dtype.kind not in "biuf"):
        raise TypeError(f"{name}: expected a tensor or a sequence of numbers, got {type(x).__name__}")
    if numpy.dtype(dtype).kind in "iu" and a.size and a.dtype.kind == "f":
        raise TypeError(f"{name}: expected integers, got {a.dtype}")
    return numpy.ascontiguousarray(a, dtype=dtype)
