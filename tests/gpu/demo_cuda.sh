#!/usr/bin/env bash
# The demo with trainer shards in GPU memory and projections on the GPU (exec/project_cuda.h),
# then with the receivers' tensors in GPU memory too:
# every inference byte verified each step, then the trainer-kill drill. Skips (77) without a
# CUDA build or a GPU; scripts/gpu-tests.sh runs it on the GPU machine.
set -uo pipefail
wc="$1"
out="$("$wc" demo --device cuda --steps 1 2>&1)"
if [[ $? -eq 2 && "$out" == *"--device cuda needs"* ]]; then
  echo "skipped: $out"
  exit 77
fi
set -e
"$wc" demo --device cuda --steps 4 | tee /dev/stderr | grep -q "demo OK: 4 steps, every inference byte verified"
"$wc" demo --device cuda --steps 3 --replicas 2 --nics 2 --kill-trainer-at-step 2 --deadline 5 \
  --gather-cost-us 0 |
  tee /dev/stderr | grep -q "demo OK: 3 steps, every inference byte verified"
# Both ends in GPU memory: receiver tensors on the GPU, staged through pinned host memory over
# tcp (no FI_HMEM), read back from the GPU and checked; the trainer-kill drill with them.
out="$("$wc" demo --device cuda --inference-device cuda --steps 3 | tee /dev/stderr)"
grep -q "demo OK: 3 steps, every inference byte verified" <<<"$out"
grep -q "receiver tensors: staged" <<<"$out"
"$wc" demo --device cuda --inference-device cuda --steps 3 --replicas 2 --kill-trainer-at-step 2 \
  --deadline 5 --gather-cost-us 0 |
  tee /dev/stderr | grep -q "demo OK: 3 steps, every inference byte verified"
# The same-host backend: GPU to GPU through CUDA IPC (trainer shards and projection outputs
# written from the GPU straight into the receivers' GPU tensors), and the drills.
out="$("$wc" demo --backend ipc --device cuda --inference-device cuda --steps 3 | tee /dev/stderr)"
grep -q "demo OK: 3 steps, every inference byte verified" <<<"$out"
grep -q "receiver tensors: gpu" <<<"$out"
"$wc" demo --backend ipc --device cuda --inference-device cuda --steps 4 --replicas 2 --nics 2 \
  --restart-receiver-at-step 2 --kill-trainer-at-step 3 --deadline 5 --gather-cost-us 0 |
  tee /dev/stderr | grep -q "demo OK: 4 steps, every inference byte verified"
# GPU shards to host receivers over ipc (the bounce path), and host shards to GPU receivers.
"$wc" demo --backend ipc --device cuda --steps 2 | tee /dev/stderr |
  grep -q "demo OK: 2 steps, every inference byte verified"
"$wc" demo --backend ipc --inference-device cuda --steps 2 | tee /dev/stderr |
  grep -q "demo OK: 2 steps, every inference byte verified"
# Hybrid links, the processes posing as 2 hosts: GPU receiver tensors are split, written GPU to
# GPU by the senders of their host over ipc and staged for the other host's over tcp; the drills.
out="$("$wc" demo --backend hybrid --hosts 2 --device cuda --inference-device cuda --steps 4 \
  --replicas 2 --restart-receiver-at-step 2 --kill-trainer-at-step 3 --deadline 5 \
  --gather-cost-us 0 | tee /dev/stderr)"
grep -q "demo OK: 4 steps, every inference byte verified" <<<"$out"
grep -q "receiver tensors: gpu+staged" <<<"$out"
# NCCL gathers (needs libnccl.so.2 where the loader finds it, or WEIGHTCAST_NCCL): one GPU per
# trainer rank, the demo's 4; with fewer, NCCL refuses two ranks on one GPU, and the demo must
# fail at once naming NCCL (not hang, not crash).
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
if [[ "$gpus" -ge 4 ]]; then
  "$wc" demo --device cuda --inference-device cuda --gpus 4 --gathers nccl --steps 3 \
    --gather-cost-us 0 | tee /dev/stderr | grep -q "demo OK: 3 steps, every inference byte verified"
else
  set +e
  out="$(timeout 300 "$wc" demo --device cuda --gathers nccl --steps 1 --gather-cost-us 0 \
    --deadline 20 2>&1)"
  rc=$?
  set -e
  echo "$out" | tail -8 >&2
  [[ $rc -ne 0 && $rc -ne 124 ]] || { echo "FAIL: NCCL gathers on one GPU: exit $rc"; exit 1; }
  grep -q "NCCL" <<<"$out" || { echo "FAIL: the failure does not name NCCL"; exit 1; }
fi
echo "PASS demo with GPU shards, GPU projections and GPU receiver tensors, over tcp, ipc and hybrid"
