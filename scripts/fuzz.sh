#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (tree build/fuzz, ASan + UBSan) and runs each for a
# bounded time: scripts/fuzz.sh [SECONDS per target, default 60] [TARGET...]
#   spec        the spec parsers (seeds: tests/fuzz/corpus and the shipped configs)
#   plan        the plan loader, its checks and the verifier (whole plans and parts)
#   rendezvous  the rendezvous server's protocol (frames from several connections)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
((${#targets[@]})) || targets=(spec plan rendezvous)
CLANG="$(command -v clang++-14 || command -v clang++ || true)"
if [ -z "$CLANG" ]; then
  echo "fuzz: clang++ not found; scripts/setup.sh installs clang-14" >&2
  exit 1
fi
# -O1 with line tables only: quicker to build than RelWithDebInfo (the tree is built fresh on a
# clean clone), and crashes still come with file:line stacks.
cmake -S . -B build/fuzz -G Ninja -DCMAKE_CXX_COMPILER="$CLANG" -DCMAKE_BUILD_TYPE=None \
  -DCMAKE_CXX_FLAGS="-O1 -gline-tables-only" -DWEIGHTCAST_FUZZ=ON -DBUILD_TESTING=OFF >/dev/null
for t in "${targets[@]}"; do
  cmake --build build/fuzz --target "${t}_fuzzer"
  corpus="build/fuzz/corpus-$t"
  mkdir -p "$corpus"
  if [ "$t" = spec ]; then
    cp -n tests/fuzz/corpus/* "$corpus"/ 2>/dev/null || true
    for f in configs/*/*.json; do cp -n "$f" "$corpus/$(echo "$f" | tr / _)"; done
  fi
  # Crashes are libFuzzer's to report: libinfinipath's handler must not turn them into exit 1.
  IPATH_NO_BACKTRACE=1 HFI_NO_BACKTRACE=1 "build/fuzz/${t}_fuzzer" "$corpus" -max_total_time="$secs" \
    -max_len=8192 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="build/fuzz/$t-" 2>&1 | tail -15
  echo "fuzz $t: no crash in ${secs}s"
done
