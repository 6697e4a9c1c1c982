#!/usr/bin/env bash
# The same-host benchmark in one run on one GPU: the colocated torch baseline
# (perf/colocated_baseline.py), then weightcast over ipc (perf/samehost_bench), which prints its
# ratios to the baseline and to the device-to-device copy. Needs a GPU and torch with CUDA.
#   perf/samehost.sh BUILD_DIR [extra samehost_bench / baseline options: --layers N --ep N]
set -euo pipefail
build="$1"; shift
here="$(cd "$(dirname "$0")" && pwd)"
base="$(python3 "$here/colocated_baseline.py" "$@" | tee -a /dev/stderr | awk '/^baseline: [0-9.]+ GB\/s/ {print $2}')"
[[ -n "$base" ]] || { echo "samehost.sh: the baseline printed no GB/s" >&2; exit 1; }
"$build/perf/samehost_bench" --baseline-gbps "$base" "$@"
