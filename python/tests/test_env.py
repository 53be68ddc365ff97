"""The environment variables: CFLASH_BACKEND, CFLASH_KERNEL, CFLASH_NUM_THREADS, CFLASH_TRACE
(python/cflash/_env.py; the C library reads CFLASH_KERNEL and CFLASH_NUM_THREADS itself)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cflash
from helpers import assert_close, randn
import reference


def run_python(code, **env):
    """Run code in a fresh interpreter with extra environment variables; (returncode, stdout, stderr)."""
    full = dict(os.environ)
    for key in ("CFLASH_TRACE", "CFLASH_BACKEND", "CFLASH_KERNEL", "CFLASH_NUM_THREADS"):
        full.pop(key, None)
    full.update(env)
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True,
                       text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


CALLS = """
    import numpy as np, cflash
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 40, 4, 32)).astype(np.float32)
    for _ in range(3):
        cflash.attn_dense(q, q, q, causal=True)
    cflash.attn_varlen(q[0], q[0], q[0], [0, 15, 40], [0, 15, 40], softcap=5.0, kernel="ref")
    print("ok")
"""


def test_trace_table_at_exit():
    rc, out, err = run_python(CALLS, CFLASH_TRACE="1")
    assert rc == 0 and out.strip() == "ok", err
    lines = err.strip().splitlines()
    assert lines[0] == "[CFLASH_TRACE] 4 attention call(s), 2 distinct shape/kernel combos:"
    # sorted by count: the three dense causal calls first, then the forced reference kernel
    assert lines[1].split()[:7] == ["calls=3", "dense", "float32", "D=32", "Lq=40", "Lk=40", "causal"]
    assert lines[1].endswith("-> " + cflash.kernel_auto())
    assert lines[2].split()[:7] == ["calls=1", "varlen", "float32", "D=32", "Lq=40", "Lk=40", "softcap"]
    assert lines[2].endswith("-> ref")


def test_trace_off_prints_nothing():
    rc, out, err = run_python(CALLS)
    assert rc == 0 and out.strip() == "ok" and err == ""
    rc, out, err = run_python(CALLS, CFLASH_TRACE="0")
    assert rc == 0 and err == ""


def test_backend_cpu_and_auto_serve_cpu_tensors(rng, monkeypatch):
    q, k, v = (randn(rng, (1, 17, 2, 16)) for _ in range(3))
    want = reference.dense(q, k, v, causal=True)
    for value in ("auto", "cpu", "CPU", ""):
        monkeypatch.setenv("CFLASH_BACKEND", value)
        got = cflash.attn_dense(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), causal=True)
        assert_close(got, want[0], "float32")


def test_backend_cuda_refuses_cpu_tensors_and_writes_nothing(rng, monkeypatch):
    monkeypatch.setenv("CFLASH_BACKEND", "cuda")
    q = randn(rng, (1, 9, 2, 16)).astype(np.float32)
    out = np.full((1, 9, 2, 16), 7.0, np.float32)
    with pytest.raises(NotImplementedError, match="CFLASH_BACKEND=cuda"):
        cflash.attn_dense(q, q, q, out=out)
    assert (out == 7.0).all()
    with pytest.raises(NotImplementedError, match="CFLASH_BACKEND=cuda"):
        cflash.attn_varlen(q[0], q[0], q[0], [0, 9], [0, 9])
    lse = np.zeros((2, 9), np.float32)
    with pytest.raises(NotImplementedError, match="o1: CFLASH_BACKEND=cuda"):
        cflash.merge(q[0], lse, q[0], lse)


def test_backend_unknown_value_is_value_error(monkeypatch):
    monkeypatch.setenv("CFLASH_BACKEND", "metal")
    q = np.ones((1, 2, 1, 8), np.float32)
    with pytest.raises(ValueError, match="CFLASH_BACKEND"):
        cflash.attn_dense(q, q, q)


def test_kernel_env_forces_and_rejects():
    code = """
        import numpy as np, cflash
        q = np.random.default_rng(0).standard_normal((1, 8, 1, 16)).astype(np.float32)
        try:
            cflash.attn_dense(q, q, q)
        except Exception as e:
            print(type(e).__name__, e)
        else:
            print("ran", cflash.kernel_auto())
    """
    rc, out, err = run_python(code, CFLASH_KERNEL="ref")
    assert rc == 0 and out.strip() == "ran ref", err
    rc, out, err = run_python(code, CFLASH_KERNEL="no-such-kernel")
    assert rc == 0 and out.startswith("ValueError") and "CFLASH_KERNEL" in out, out + err
    missing = [k for k in ("avx512bf16", "avx512", "avx2") if k not in cflash.kernels()]
    if not missing:
        pytest.skip("every kernel runs on this CPU: a forced kernel that cannot run is not provokable here")
    rc, out, err = run_python(code, CFLASH_KERNEL=missing[0])
    assert rc == 0 and out.startswith("NotImplementedError"), out + err


def test_num_threads_env():
    rc, out, err = run_python("import cflash; print(cflash.default_num_threads())", CFLASH_NUM_THREADS="3")
    assert rc == 0 and out.strip() == "3", err
