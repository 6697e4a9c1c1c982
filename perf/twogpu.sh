#!/usr/bin/env bash
# The two-GPU update (issue 15) in one run: the per-tensor NCCL broadcast baseline
# (perf/broadcast_baseline.py: GPU 0 -> one EP1 replica on GPU 1, as verl and OpenRLHF do it),
# then weightcast over ipc with the trainers on GPU 0 and the replica on GPU 1
# (perf/samehost_bench --inference-gpu 1), which prints its ratios to the baseline, to the
# NVLink peer-copy limit and to the device-to-device copy. Needs 2 GPUs and torch with CUDA
# (exits 77 with the reason otherwise). NVLink multicast stays off.
#   perf/twogpu.sh BUILD_DIR [extra samehost_bench options: --layers N --fsdp N]
set -euo pipefail
build="$1"; shift
export NCCL_NVLS_ENABLE=0
here="$(cd "$(dirname "$0")" && pwd)"
set +e
out="$(python3 "$here/broadcast_baseline.py" --ep 1 --inference-gpu 1 "$@" 2>&1)"
rc=$?
set -e
echo "$out" >&2
[[ $rc -eq 77 ]] && exit 77
[[ $rc -eq 0 ]] || { echo "twogpu.sh: the baseline failed (exit $rc)" >&2; exit 1; }
base="$(awk '/^baseline: [0-9.]+ GB\/s/ {print $2}' <<<"$out")"
[[ -n "$base" ]] || { echo "twogpu.sh: the baseline printed no GB/s" >&2; exit 1; }
"$build/perf/samehost_bench" --ep 1 --inference-gpu 1 --baseline-gbps "$base" "$@"
