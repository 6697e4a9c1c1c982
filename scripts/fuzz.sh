#!/usr/bin/env bash
# Builds the libFuzzer target for the spec parser with clang (tree build/fuzz) and runs it for
# a bounded time (seconds, default 60) on the seed corpus plus the shipped configs.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
CLANG="$(command -v clang++-14 || command -v clang++ || true)"
if [ -z "$CLANG" ]; then
  echo "fuzz: clang++ not found; scripts/setup.sh installs clang-14" >&2
  exit 1
fi
cmake -S . -B build/fuzz -G Ninja -DCMAKE_CXX_COMPILER="$CLANG" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DWEIGHTCAST_FUZZ=ON -DBUILD_TESTING=OFF >/dev/null
cmake --build build/fuzz --target spec_fuzzer
corpus=build/fuzz/corpus
mkdir -p "$corpus"
cp -n tests/fuzz/corpus/* "$corpus"/ 2>/dev/null || true
for f in configs/*/*.json; do cp -n "$f" "$corpus/$(echo "$f" | tr / _)"; done
build/fuzz/spec_fuzzer "$corpus" -max_total_time="$secs" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 2>&1 | tail -15
echo "fuzz: no crash in ${secs}s"
