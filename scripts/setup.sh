#!/usr/bin/env bash
# Installs weightcast's build dependencies from Debian packages (when any is missing) and builds
# into build/. Idempotent: a second run installs nothing and rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(build-essential cmake ninja-build pkg-config git python3 clang-format
          nlohmann-json3-dev libcli11-dev libfmt-dev libspdlog-dev libgtest-dev libgmock-dev
          libfabric-dev libibverbs-dev libssl-dev clang-14 libclang-rt-14-dev iproute2
          pybind11-dev python3-dev python3-numpy python3-pytest python3-torch
          # the Soft-RoCE VM that tests the ibverbs backend for real (scripts/verbs-vm.sh)
          qemu-system-x86 linux-image-amd64 busybox-static kmod cpio rdma-core ibverbs-utils
          ibverbs-providers)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" -DWEIGHTCAST_WERROR=ON
cmake --build build -j"$(nproc)"
echo "setup: built build/weightcast"
