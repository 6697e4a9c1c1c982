#!/usr/bin/env bash
# Runs the GPU-labelled tests on a machine with a GPU (e.g. through the device tool):
# configures and builds into build-gpu/ and runs `ctest -L gpu`. On a machine without a GPU the
# tests skip themselves with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-gpu --target gpu_test -j"$(nproc)"
ctest --test-dir build-gpu -L gpu --output-on-failure
# Real transformers models under FSDP2 (needs torch >= 2.6 and transformers; skips otherwise).
cmake --build build-gpu --target weightcast weightcast_py -j"$(nproc)"
PYTHONPATH=build-gpu/python WEIGHTCAST_BIN=build-gpu/weightcast NCCL_NVLS_ENABLE=0 \
  python3 -m pytest -q -p no:cacheprovider tests/gpu/test_fsdp2_models.py
