"""Helpers of the Python tests: tensors in each framework (NumPy, torch CPU, JAX CPU; a missing
framework skips its cases with the reason), conversion back to fp64, and the SPEC.md section 1
accuracy rule against the fp64 reference (reference.py)."""

import numpy as np
import pytest

# (framework, dtype) pairs every "all frameworks" test runs over. NumPy has no bfloat16 (its
# DLPack export refuses ml_dtypes), so bf16 comes from torch and JAX.
FRAMEWORK_DTYPES = [
    ("numpy", "float32"), ("numpy", "float16"),
    ("torch", "float32"), ("torch", "float16"), ("torch", "bfloat16"),
    ("jax", "float32"), ("jax", "bfloat16"),
]


FRAMEWORK_IDS = [f"{fw}-{dtype}" for fw, dtype in FRAMEWORK_DTYPES]


def require(framework):
    """Import a framework or skip the test with the reason."""
    if framework == "torch":
        return pytest.importorskip("torch", reason="torch is not installed (scripts/setup.sh installs torch==2.13.0)")
    if framework == "jax":
        pytest.importorskip("jax", reason="jax is not installed (pip install 'jax[cpu]')")
        import jax.numpy as jnp
        return jnp
    return np


def round_to(x, dtype):
    """x (fp64) rounded to dtype and back to fp64."""
    x = np.asarray(x, np.float64)
    if dtype == "float32":
        return x.astype(np.float32).astype(np.float64)
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float64)
    if dtype == "bfloat16":
        try:
            import ml_dtypes
            return x.astype(ml_dtypes.bfloat16).astype(np.float64)
        except ImportError:
            torch = require("torch")
            return torch.from_numpy(x).to(torch.bfloat16).double().numpy()
    return x


def randn(rng, shape, dtype="float32", scale=1.0):
    """Normal random values already representable in dtype (fp64 array): the reference then
    sees exactly the kernel's inputs."""
    return round_to(rng.standard_normal(shape) * scale, dtype)


def make(x, framework, dtype):
    """A tensor of the framework holding x (fp64 values representable in dtype)."""
    x = np.asarray(x)
    if framework == "numpy":
        return np.ascontiguousarray(x.astype(dtype))
    if framework == "torch":
        torch = require("torch")
        return torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, dtype))
    jnp = require("jax")
    return jnp.asarray(x, dtype=dtype)


def to_np(t):
    """Any framework's tensor as a fp64 (or bool/int) NumPy array."""
    mod = type(t).__module__.partition(".")[0]
    if mod == "torch":
        t = t.detach()
        if t.dtype.is_floating_point:
            t = t.double()
        return t.numpy()
    a = np.asarray(t)
    return a.astype(np.float64) if a.dtype.kind == "f" or a.dtype.name == "bfloat16" else a


def assert_close(out, ref, dtype, naive=None, what="out"):
    """SPEC.md section 1: fp32 relative L2 error <= 1e-5; fp16/bf16 max abs error
    <= 2 * e_naive + 1e-3 with e_naive the error of the naive same-precision computation."""
    out = to_np(out)
    assert out.shape == ref.shape, f"{what}: shape {out.shape} != {ref.shape}"
    assert np.isfinite(out).all(), f"{what}: non-finite values"
    if dtype == "float32":
        den = max(np.linalg.norm(ref), 1e-30)
        err = np.linalg.norm(out - ref) / den
        assert err <= 1e-5 or np.linalg.norm(out - ref) <= 1e-6, f"{what}: relative L2 error {err:.3g} > 1e-5"
    else:
        e_naive = 0.0 if naive is None else float(np.abs(naive - ref).max(initial=0.0))
        err = float(np.abs(out - ref).max(initial=0.0))
        assert err <= 2 * e_naive + 1e-3, f"{what}: max abs error {err:.3g} > 2 * {e_naive:.3g} + 1e-3"


def assert_lse(lse, ref, dtype="float32"):
    """LSE (fp32): -inf exactly where the reference has it, else within fp32 rounding (fp16 /
    bf16 kernels may sum rounded probabilities: 1e-3)."""
    lse = to_np(lse)
    assert lse.shape == ref.shape, f"lse: shape {lse.shape} != {ref.shape}"
    inf = np.isneginf(ref)
    assert (np.isneginf(lse) == inf).all(), "lse: -inf rows differ"
    tol = 1e-5 if dtype == "float32" else 1e-3
    assert np.allclose(lse[~inf], ref[~inf], rtol=tol, atol=tol), \
        f"lse: max error {np.abs(lse[~inf] - ref[~inf]).max(initial=0):.3g}"


def check(out, lse, ref_fn, dtype):
    """Compare out (and lse if given) with ref_fn(rnd) -> (out, lse): fp64 reference, plus the
    naive same-precision run for fp16/bf16."""
    ref_out, ref_lse = ref_fn(lambda x: x)[:2]
    naive = None
    if dtype != "float32":
        naive = ref_fn(lambda x: round_to(x, dtype))[0]
    assert_close(out, ref_out, dtype, naive)
    if lse is not None:
        assert_lse(lse, ref_lse, dtype)
