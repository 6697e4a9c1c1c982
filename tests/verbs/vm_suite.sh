#!/usr/bin/env bash
# Runs inside the Soft-RoCE VM (started by scripts/verbs-vm.sh), as root, chrooted into the
# host's read-only root: creates rxe0 on eth0 and rxe1 on eth1, then runs
#   1. the transport tests over the ibverbs backend (RC QPs, WRITE_WITH_IMM, SRQ, two NICs),
#   2. the same tests over libfabric's verbs;ofi_rxm (strict mr_mode, cq_data_size 4),
#   3. the end-to-end demo over verbs (4 trainers -> 2 inference processes, every byte verified),
#      plain and with an inference process restarted between steps (QPs reconnected),
#   4. with bench=1: perf/transport_bw over both.
# Usage: vm_suite.sh BUILD_DIR [bench] [ONLY]   (ONLY: a script to run instead of the tests)
set -uo pipefail
build="$1"
bench="${2:-0}"
only="${3:-}"
# Worker logs go to the shared results folder, so they outlive the VM.
# (/tmp is the host's, read-only here; /dev/shm is the VM's own tmpfs.)
mkdir -p /dev/wc-vm/tmp
export TMPDIR=/dev/wc-vm/tmp TEST_TMPDIR=/dev/wc-vm/tmp HOME=/dev/shm
failed=()

step() { echo; echo "=== $* ==="; }
run() {  # run NAME CMD...: records a failure, goes on
  local name="$1"
  shift
  local t0=$SECONDS
  if "$@"; then
    echo "--- $name: ok ($((SECONDS - t0)) s)"
  else
    echo "--- $name: FAILED (exit $?, $((SECONDS - t0)) s)"
    failed+=("$name")
  fi
}

step "kernel $(uname -r): Soft-RoCE set-up"
modprobe virtio_net || { echo "cannot load virtio_net"; exit 1; }
for _ in $(seq 50); do [[ -e /sys/class/net/eth1 ]] && break; sleep 0.1; done
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0
ip link set eth1 up && ip addr add 10.0.3.15/24 dev eth1
modprobe crc32_generic  # rdma_rxe needs crc32, which modules.dep does not list
modprobe rdma_rxe || { echo "cannot load rdma_rxe"; exit 1; }
modprobe ib_uverbs
modprobe rdma_ucm  # rdma_cm for userspace: libfabric's verbs provider connects through it
rdma link add rxe0 type rxe netdev eth0 || exit 1
rdma link add rxe1 type rxe netdev eth1 || exit 1
rdma link show
ibv_devinfo -v 2>/dev/null | grep -E "hca_id|max_qp_wr|max_cqe|max_srq_wr|max_msg_sz|active_mtu|GID\[" | head -20

if [[ -n "$only" ]]; then
  step "only: $only"
  bash "$only"
  exit $?
fi

gtest=(--gtest_brief=0 --gtest_color=no)
step "transport tests over the ibverbs backend (rxe0; rxe0,rxe1)"
run verbs_transport env WC_TEST_BACKEND=verbs WC_TEST_NICS=rxe0 WC_TEST_NICS2=rxe0,rxe1 \
  WC_TEST_MAX_SIZE=$((64 << 20)) "$build/tests/fabric_test" "${gtest[@]}"

step "transport tests over libfabric verbs;ofi_rxm (10.0.2.15; 10.0.2.15,10.0.3.15)"
export FI_UNIVERSE_SIZE=64  # rxe's max_cqe (32767) is below what ofi_rxm sizes for 256 peers
# (WC_VERBS_QUICK=1, as scripts/test.sh runs it: sizes, striping and a killed peer only; the
# native verbs run above has the whole suite)
rxm_filter=()
[[ "${WC_VERBS_QUICK:-0}" == 1 ]] && rxm_filter=(--gtest_filter='Fabric.WritesOf1ByteTo256MiBLandExactly:Fabric.StripedOverTwoLoopbackNics:Fabric.ReceiverKilledMidTransferSenderGetsError')
run fabric_verbs_rxm_transport env WC_TEST_BACKEND=fabric WC_TEST_PROVIDER=verbs \
  WC_TEST_NICS=10.0.2.15 WC_TEST_NICS2=10.0.2.15,10.0.3.15 WC_TEST_MAX_SIZE=$((64 << 20)) \
  "$build/tests/fabric_test" "${gtest[@]}" "${rxm_filter[@]}"

step "weightcast demo over verbs: 4 trainers -> 2 inference processes (built-in demo-moe)"
run demo_verbs "$build/weightcast" demo --backend verbs --nic-list rxe0,rxe1 --steps 3 --deadline 30
# (with gathers: trainers link to each other as gather members and roots, which once broke here)
run demo_verbs_trainer_killed "$build/weightcast" demo --backend verbs --nic-list rxe0 --steps 3 \
  --kill-trainer-at-step 2 --deadline 15 --gather-cost-us 0
run demo_verbs_restart "$build/weightcast" demo --backend verbs --nic-list rxe0 --steps 3 \
  --restart-receiver-at-step 2 --deadline 30

if [[ "$bench" == 1 ]]; then
  step "perf/transport_bw over the ibverbs backend (TCG/KVM speed, not a NIC's)"
  run bw_verbs "$build/perf/transport_bw" --mib 256 --backend verbs --nic-list rxe0,rxe1
  step "perf/transport_bw over libfabric verbs;ofi_rxm"
  run bw_fabric_verbs "$build/perf/transport_bw" --mib 256 --provider verbs \
    --nic-list 10.0.2.15,10.0.3.15
  step "perf/transport_bw over libfabric tcp;ofi_rxm in the same VM"
  run bw_fabric_tcp "$build/perf/transport_bw" --mib 256 --provider tcp \
    --nic-list 10.0.2.15,10.0.3.15
fi

echo
if ((${#failed[@]})); then
  echo "VM SUITE FAILED: ${failed[*]}"
  exit 1
fi
echo "VM SUITE PASSED"
