#!/usr/bin/env bash
# The long campaigns scripts/test.sh runs only briefly or not at all: the demo soak (every byte
# verified, no RSS growth on any process), steps minutes apart through the Python API, and the
# fuzzers.
#   scripts/soak.sh [STEPS, default 5000] [FUZZ SECONDS per target, default 1800]
# About STEPS / 6 seconds of soak on a 2-core machine, then 3 x FUZZ SECONDS of fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-5000}"
fuzz_s="${2:-1800}"
[ -x build/weightcast ] || scripts/setup.sh
echo "soak: $steps demo steps"
WC_SOAK_STEPS="$steps" tests/e2e/demo_test.sh build/weightcast soak
echo "python: the long tests (a 65 s pause between steps)"
cmake --build build --target weightcast_py
py="$(sed -n 's/^Python3_EXECUTABLE:[A-Z]*=//p' build/CMakeCache.txt)"  # the one the build uses
WC_LONG_TESTS=1 PYTHONPATH=build/python WEIGHTCAST_BIN=build/weightcast \
  "${py:-python3}" -m pytest -q -p no:cacheprovider tests/python/test_failures.py -k minutes_apart
echo "fuzz: ${fuzz_s}s per target"
scripts/fuzz.sh "$fuzz_s"
echo "soak.sh: all campaigns passed"
