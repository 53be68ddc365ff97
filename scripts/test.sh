#!/usr/bin/env bash
# scripts/test.sh - the second command: every test, one command, non-zero exit on any failure.
#   1. Release build in build/ and its ctest (the same build scripts/setup.sh made).
#   2. AddressSanitizer + UndefinedBehaviorSanitizer build in build-asan/ (RelWithDebInfo,
#      -DCFLASH_SANITIZE=ON, benchmarks, examples and the CUDA backend off) and its ctest.
#   3. pytest for the Python package (python/tests; installed by scripts/setup.sh).
# Run scripts/setup.sh once first on a fresh machine (it installs the system packages).
#
# Environment: BUILD_DIR (default build), ASAN_BUILD_DIR (default build-asan), JOBS (default:
# number of cores), SKIP_ASAN=1 to run only step 1 (quick local iteration; CI never sets it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR=${BUILD_DIR:-build}
ASAN_BUILD_DIR=${ASAN_BUILD_DIR:-build-asan}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

say() { printf '==> %s\n' "$*"; }

# ---- 1. Release ------------------------------------------------------------------------------
say "Release build: $BUILD_DIR"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "$JOBS"
say "ctest (Release)"
(cd "$BUILD_DIR" && ctest --output-on-failure --no-tests=error -j "$JOBS")

# ---- 2. sanitizers ---------------------------------------------------------------------------
if [ "${SKIP_ASAN:-0}" = 1 ]; then
    say "SKIP_ASAN=1: skipping the sanitizer build"
else
    say "ASan+UBSan build: $ASAN_BUILD_DIR (RelWithDebInfo, CFLASH_SANITIZE=ON)"
    # CUDA off here: the host code is the same, and the GPU's sanitizers are compute-sanitizer's
    # (scripts/gpu_check.sh); the CUDA routing cases run in both builds
    cmake -S . -B "$ASAN_BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCFLASH_SANITIZE=ON \
        -DCFLASH_BUILD_BENCH=OFF -DCFLASH_BUILD_EXAMPLES=OFF -DCFLASH_CUDA=OFF
    cmake --build "$ASAN_BUILD_DIR" -j "$JOBS"
    say "ctest (ASan+UBSan)"
    (cd "$ASAN_BUILD_DIR" &&
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        ctest --output-on-failure --no-tests=error -j "$JOBS")
fi

# ---- 3. Python tests -------------------------------------------------------------------------
# The package installed by scripts/setup.sh (pip install .; after C changes run setup.sh again,
# or just: python3 -m pip install --no-build-isolation .). A failure fails this script (set -e).
say "pytest (python/tests, against the installed cflash package)"
"${PYTHON:-python3}" -m pytest -q python/tests

say "all tests passed"
