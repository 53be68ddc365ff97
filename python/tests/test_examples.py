"""Every example of examples/python runs, checks itself against its fp64 reference and says ok
(each is a call shape users copy: it must keep working)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = sorted(f for f in os.listdir(os.path.join(ROOT, "examples", "python")) if f.endswith(".py"))
NEEDS_TORCH = {"flash_attn_dropin.py", "flash_mlm_usage.py", "sdpa_patch.py"}


def test_every_call_shape_has_an_example():
    for name in ("cflash_api.py", "flash_attn_dropin.py", "sdpa_patch.py", "flash_mlm_usage.py",
                 "magi_ranges.py", "dmattn_varlen.py"):
        assert name in EXAMPLES


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name):
    if name in NEEDS_TORCH:
        pytest.importorskip("torch", reason=f"{name} needs torch (scripts/setup.sh installs torch==2.13.0)")
    env = dict(os.environ)
    for key in ("CFLASH_TRACE", "CFLASH_BACKEND", "CFLASH_KERNEL", "CFLASH_SHIM"):
        env.pop(key, None)
    p = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "python", name)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ok" in p.stdout.lower() and "fail" not in p.stdout.lower(), p.stdout
