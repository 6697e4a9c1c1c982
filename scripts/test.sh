#!/usr/bin/env bash
# Builds if needed and runs every test with ctest (unit, golden, property, CLI, fuzz).
# Extra arguments go to ctest, e.g. scripts/test.sh -L unit  or  scripts/test.sh -R verify
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f build/build.ninja ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" -DWEIGHTCAST_WERROR=ON
fi
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure -j"$(nproc)" "$@"
