"""cflash._shim, the guarded `flash_attn` import shim, each case in a fresh interpreter (so this
process's sys.modules and sys.meta_path stay clean): it serves `import flash_attn` and
flash_attn.flash_attn_interface when no real flash-attn exists; it yields to a (fake) real one on
sys.path or behind a later finder; the .pth line activates it without loading cflash; the kill
switch CFLASH_SHIM=off|0|false; install() / uninstall() report whether anything changed."""

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cflash

# the directory holding the cflash package under test: the installed one (CI: site-packages,
# where the built extension is) or python/ with PYTHONPATH=python in development
PYTHON_DIR = Path(cflash.__file__).resolve().parents[1]
ROOT = Path(__file__).resolve().parents[2]  # the repository (python/CMakeLists.txt)


@pytest.fixture(autouse=True)
def no_real_flash_attn():
    spec = importlib.util.find_spec("flash_attn") if "flash_attn" not in sys.modules else sys.modules["flash_attn"].__spec__
    if spec is not None and "cflash" not in str(spec.origin):
        pytest.skip(f"a real flash_attn is installed here ({spec.origin}): the shim must yield to it")


def run(code, tmp_path=None, path=(), env=None):
    """Run code in a fresh interpreter with python/ (and `path`) on PYTHONPATH; returns stdout."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CFLASH_SHIM", "PYTHONPATH")}
    environ["PYTHONPATH"] = os.pathsep.join([*map(str, path), str(PYTHON_DIR)])
    environ.update(env or {})
    # start clean: an installed cflash has its .pth line put a finder in place at start-up;
    # each case decides itself whether one is installed
    prologue = ("import sys as _s; _s.meta_path[:] = [f for f in _s.meta_path if not getattr(f, '_cflash_shim', False)]; "
                "_s.modules.pop('_cflash_shim', None)\n")
    r = subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(code)], env=environ, capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, f"subprocess failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def pth_line():
    """The line python/CMakeLists.txt writes into cflash_shim.pth."""
    text = (ROOT / "python" / "CMakeLists.txt").read_text()
    m = re.search(r"cflash_shim\.pth \[=\[(.*?)\n\]=\]", text, re.S)
    assert m, "the .pth content was not found in python/CMakeLists.txt"
    return m.group(1)


def test_serves_flash_attn_when_absent(tmp_path):
    out = run("""
        import sys
        import numpy as np
        import cflash._shim as shim
        assert "flash_attn" not in sys.modules
        assert shim.install() is True and shim.install() is False and shim.installed()
        assert sys.meta_path[-1]._cflash_shim  # appended at the end: every other finder goes first
        import importlib, importlib.util
        assert importlib.util.find_spec("flash_attn").origin.endswith("__init__.py")
        import flash_attn
        assert importlib.reload(flash_attn) is flash_attn
        from flash_attn.flash_attn_interface import flash_attn_func
        from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache
        import cflash.flash_attn as ours
        q = np.random.default_rng(0).standard_normal((1, 4, 2, 8)).astype(np.float32)
        assert np.array_equal(flash_attn_func(q, q, q, causal=True), ours.flash_attn_func(q, q, q, causal=True))
        assert flash_attn.flash_attn_func is flash_attn_func
        fai = sys.modules["flash_attn.flash_attn_interface"]
        print(flash_attn.__version__, flash_attn.__file__, fai.__file__, sep="\\n")
        """, tmp_path)
    version, init_file, interface_file = out.split()
    assert version == "2.8.3+cflash"
    assert Path(init_file) == PYTHON_DIR / "cflash" / "flash_attn" / "__init__.py"
    assert Path(interface_file) == PYTHON_DIR / "cflash" / "flash_attn" / "flash_attn_interface.py"


def write_fake_flash_attn(root):
    pkg = root / "flash_attn"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('__version__ = "2.8.3"\nREAL = True\n')
    (pkg / "flash_attn_interface.py").write_text("def flash_attn_func(*args, **kwargs):\n    return 'real'\n")
    return root


def test_yields_to_real_flash_attn_on_sys_path(tmp_path):
    real = write_fake_flash_attn(tmp_path / "site")
    out = run("""
        import cflash._shim as shim
        assert shim.install()
        import flash_attn
        from flash_attn.flash_attn_interface import flash_attn_func
        assert flash_attn.REAL and flash_attn_func() == "real"
        print(flash_attn.__file__)
        """, tmp_path, path=[real])
    assert Path(out.strip()) == real / "flash_attn" / "__init__.py"


def test_yields_to_a_finder_appended_after_it(tmp_path):
    """A finder added to sys.meta_path after the shim (another .pth, an editable install) wins."""
    real = write_fake_flash_attn(tmp_path / "elsewhere")
    run(f"""
        import importlib.util, sys
        import cflash._shim as shim
        assert shim.install()

        class Later:
            def find_spec(self, name, path=None, target=None):
                if name == "flash_attn":
                    return importlib.util.spec_from_file_location(
                        name, {str(real / "flash_attn" / "__init__.py")!r},
                        submodule_search_locations=[{str(real / "flash_attn")!r}])

        sys.meta_path.append(Later())
        import flash_attn
        assert flash_attn.REAL
        """, tmp_path)


@pytest.mark.parametrize("switch", ["", "off"])
def test_pth_line_activates_without_loading_cflash(tmp_path, switch):
    """The .pth route: site processes the line; the shim is then active (unless CFLASH_SHIM=off)
    and neither cflash nor its extension has been imported."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "cflash_shim.pth").write_text(pth_line() + "\n")
    out = run(f"""
        import site, sys
        site.addsitedir({str(site_dir)!r})
        active = any(getattr(f, "_cflash_shim", False) for f in sys.meta_path)
        assert not [m for m in sys.modules if m.startswith("cflash")], "the .pth line imported cflash"
        try:
            import flash_attn
            served = flash_attn.__version__
        except ModuleNotFoundError:
            served = "none"
        import cflash._shim as shim  # the package's copy sees (and removes) the .pth copy's finder
        assert shim.installed() == active and shim.uninstall() == active and not shim.installed()
        print(active, served)
        """, tmp_path, env={"CFLASH_SHIM": switch})
    assert out.split() == (["False", "none"] if switch == "off" else ["True", "2.8.3+cflash"])


def test_kill_switch_values_and_uninstall(tmp_path):
    """CFLASH_SHIM=off / 0 / false (any case): install() does nothing; set after install, the
    finder serves nothing. uninstall() removes the finder and says whether it did."""
    run("""
        import os, sys
        import cflash._shim as shim
        for value in ("off", "0", "false", " OFF ", "False"):
            os.environ["CFLASH_SHIM"] = value
            assert not shim.enabled() and shim.install() is False and not shim.installed(), value
        os.environ["CFLASH_SHIM"] = "on"
        assert shim.install() is True
        os.environ["CFLASH_SHIM"] = "off"
        try:
            import flash_attn
            raise AssertionError("served with CFLASH_SHIM=off")
        except ModuleNotFoundError:
            pass
        del os.environ["CFLASH_SHIM"]
        assert shim.uninstall() is True and shim.uninstall() is False
        try:
            import flash_attn
            raise AssertionError("served after uninstall()")
        except ModuleNotFoundError:
            pass
        assert shim.install() is True
        import flash_attn
        assert flash_attn.__version__ == "2.8.3+cflash"
        """, tmp_path)
