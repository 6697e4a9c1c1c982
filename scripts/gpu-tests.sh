#!/usr/bin/env bash
# Runs the GPU-labelled tests on a machine with a GPU (e.g. through the device tool):
# configures and builds into build-gpu/ and runs `ctest -L gpu`. On a machine without a GPU the
# tests skip themselves with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-gpu --target gpu_test -j"$(nproc)"
ctest --test-dir build-gpu -L gpu --output-on-failure
