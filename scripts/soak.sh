#!/usr/bin/env bash
# The long campaigns scripts/test.sh runs only briefly: the demo soak (every byte verified, no RSS
# growth on any process) and the fuzzers.
#   scripts/soak.sh [STEPS, default 5000] [FUZZ SECONDS per target, default 1800]
# About STEPS / 6 seconds of soak on a 2-core machine, then 3 x FUZZ SECONDS of fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-5000}"
fuzz_s="${2:-1800}"
[ -x build/weightcast ] || scripts/setup.sh
echo "soak: $steps demo steps"
WC_SOAK_STEPS="$steps" tests/e2e/demo_test.sh build/weightcast soak
echo "fuzz: ${fuzz_s}s per target"
scripts/fuzz.sh "$fuzz_s"
echo "soak.sh: all campaigns passed"
