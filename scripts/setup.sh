#!/usr/bin/env bash
# scripts/setup.sh - the first command on a fresh machine (Debian/Ubuntu): install what the C
# core needs, build Release into build/, install the Python package (pip install . and the test
# requirements), and run the example (build/examples/cflash_example), which checks the fast
# kernel against the fp64 reference and prints its speed.
#
# Idempotent: packages already installed are skipped (no apt-get at all when nothing is
# missing), and an existing build/ is rebuilt incrementally.
#
# Environment: BUILD_DIR (default build), JOBS (default: number of cores), PYTHON (default
# python3), CFLASH_NUM_THREADS and CFLASH_KERNEL are passed through to the example. Nothing from
# PyPI is needed for the C core; the Python package and its tests take what is listed below.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

say() { printf '==> %s\n' "$*"; }

# ---- system packages -------------------------------------------------------------------------
# libopenblas-dev + pkg-config: the OpenBLAS peer of bench/bench_cpu (the library itself needs
# only a C compiler, cmake and pthreads). cmake and a compiler are installed only when missing.
missing=()
if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
    missing+=(build-essential)
fi
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
for pkg in libopenblas-dev pkg-config; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup.sh: missing ${missing[*]} and no apt-get; install them by hand" >&2
        exit 1
    fi
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "setup.sh: not root and no sudo" >&2; exit 1; }
        SUDO=(sudo)
    fi
    say "apt-get update"
    ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update
    say "apt-get install -y ${missing[*]}"
    ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
else
    say "system packages present (compiler, cmake, libopenblas-dev, pkg-config): skipping apt"
fi
say "$(cmake --version | head -n1); $(cc --version 2>/dev/null | head -n1 || gcc --version | head -n1)"

# ---- build ------------------------------------------------------------------------------------
say "configure: cmake -S . -B $BUILD_DIR -DCMAKE_BUILD_TYPE=Release"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release
say "build: cmake --build $BUILD_DIR -j $JOBS"
cmake --build "$BUILD_DIR" -j "$JOBS"

# ---- the Python package ------------------------------------------------------------------------
# pip install of the package itself: scikit-build-core compiles the library and the extension
# (python/CMakeLists.txt) with the system CMake, without build isolation (no second download of
# the build tools). Then what the tests need: pytest, NumPy (>= 2.1, DLPack 1.0), JAX on the CPU,
# and torch pinned to 2.13.0 (its CPU build here; an unpinned torch pulls a multi-GB CUDA build),
# each installed only when missing.
PYTHON=${PYTHON:-python3}
TORCH_PIN=2.13.0
pip_missing=()
"$PYTHON" -c "import scikit_build_core" >/dev/null 2>&1 || pip_missing+=("scikit-build-core>=0.10")
"$PYTHON" -c "import pytest" >/dev/null 2>&1 || pip_missing+=(pytest)
"$PYTHON" -c "import numpy, sys; sys.exit(tuple(map(int, numpy.__version__.split('.')[:2])) < (2, 1))" >/dev/null 2>&1 || pip_missing+=("numpy>=2.1")
"$PYTHON" -c "import jax" >/dev/null 2>&1 || pip_missing+=("jax[cpu]")
"$PYTHON" -c "import torch" >/dev/null 2>&1 || pip_missing+=("torch==$TORCH_PIN")
if ((${#pip_missing[@]})); then
    say "$PYTHON -m pip install ${pip_missing[*]}"
    "$PYTHON" -m pip install "${pip_missing[@]}"
else
    say "Python packages present (scikit-build-core, pytest, numpy, jax, torch): skipping pip"
fi
PIP_LOG="$BUILD_DIR/pip-install.log"
say "$PYTHON -m pip install --no-build-isolation -v .   (the cflash package; log: $PIP_LOG)"
if ! "$PYTHON" -m pip install --no-build-isolation -v . >"$PIP_LOG" 2>&1; then
    tail -n 60 "$PIP_LOG" >&2
    echo "setup.sh: pip install of the cflash package failed (full log: $PIP_LOG)" >&2
    exit 1
fi
grep -E '^ *\*\*\* ' "$PIP_LOG" || true
"$PYTHON" -c "import cflash; print('==> cflash', cflash.__version__, 'kernels:', ' '.join(cflash.kernels()))"

# ---- the main job: the example (correctness vs the reference kernel, then timing) -------------
say "run: $BUILD_DIR/examples/cflash_example"
"$BUILD_DIR/examples/cflash_example"
say "setup done. Next: bash scripts/test.sh   (benchmark: bash bench/run_cpu.sh)"
