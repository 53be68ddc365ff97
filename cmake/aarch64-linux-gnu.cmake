# Cross-compile for 64-bit ARM Linux with Debian's gcc-aarch64-linux-gnu; tests run under
# qemu-user (scripts/check_aarch64.sh). Checks that the portable kernel builds and is exact
# on a non-x86 target.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-L;/usr/aarch64-linux-gnu)
