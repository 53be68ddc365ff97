#!/usr/bin/env bash
# scripts/check_aarch64.sh - the portable kernel on aarch64: cross-compile the library and the
# C tests with Debian's gcc-aarch64-linux-gnu and run them under qemu-user. On aarch64 only the
# reference and generic kernels exist; the tests skip the x86 kernels and say so.
# Installs the cross compiler and qemu-user when missing (apt, root or sudo).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR=${ARM_BUILD_DIR:-build-aarch64}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
say() { printf '==> %s\n' "$*"; }

if [ "$(uname -m)" = aarch64 ]; then
    say "native aarch64: scripts/test.sh already covers it"
    exit 0
fi
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
if ((${#missing[@]})); then
    SUDO=()
    [ "$(id -u)" -ne 0 ] && SUDO=(sudo)
    say "apt-get install -y ${missing[*]}"
    ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update
    ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
say "cross build: $BUILD_DIR (aarch64, Release)"
cmake -S . -B "$BUILD_DIR" -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
    -DCMAKE_BUILD_TYPE=Release -DCFLASH_BUILD_BENCH=OFF -DCFLASH_BUILD_EXAMPLES=OFF -DCFLASH_CUDA=OFF
cmake --build "$BUILD_DIR" -j "$JOBS"
# The env group re-executes the test binary as a child process, which qemu-user (without binfmt
# registration) cannot do: it is skipped here and runs natively in scripts/test.sh.
say "ctest under qemu-aarch64 (group 'env' skipped: it re-executes the binary)"
(cd "$BUILD_DIR" && ctest --output-on-failure --no-tests=error -j "$JOBS" -E '^env$')
