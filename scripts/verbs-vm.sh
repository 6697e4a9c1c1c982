#!/usr/bin/env bash
# Runs the ibverbs suite for real inside a small qemu VM whose Debian kernel has Soft-RoCE
# (rdma_rxe): this host's kernel has no RDMA support at all.
#
#   scripts/verbs-vm.sh [--bench] [--quick] [BUILD_DIR]
#
# The VM boots Debian's linux-image-*-amd64 with a busybox initramfs built here, mounts this
# host's / read-only over 9p (so it runs the very binaries under BUILD_DIR) plus a writable
# results folder, and chroots into it to run tests/verbs/vm_suite.sh, which creates rxe0/rxe1 on
# the VM's two virtual NICs and runs the transport tests over the verbs backend and over
# libfabric's verbs;ofi_rxm, then the end-to-end demo over verbs. --bench also runs
# perf/transport_bw there. The suite's output is printed; the exit status is the suite's.
#
# Cached under BUILD_DIR/verbs-vm (the initramfs, keyed by kernel and this script's hash).
# Packages come from Debian (qemu-system-x86, linux-image-amd64, busybox-static, kmod,
# rdma-core, ibverbs-utils, ibverbs-providers) and are installed when missing and we are root.
#
# WC_VERBS_VM_ONLY=CMD runs CMD (a shell line) in the VM after the Soft-RoCE set-up instead of
# the suite: a debugging aid, e.g. WC_VERBS_VM_ONLY='fi_info -p verbs -v'.
#
# When the VM cannot start, the script fails loudly with the reason (CI must never skip it
# silently). A developer who cannot run it asks for a skip: WC_VERBS_VM=skip exits 77 (ctest:
# skipped) with the reason.
set -euo pipefail

bench=0
quick=0
while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --bench) bench=1 ;;
    --quick) quick=1 ;;  # the verbs;ofi_rxm suite cut to 3 tests (scripts/test.sh's budget)
    *) echo "verbs-vm: unknown option $1 (--bench, --quick)" >&2; exit 2 ;;
  esac
  shift
done
repo="$(cd "$(dirname "$0")/.." && pwd)"
build="$(cd "${1:-$repo/build}" && pwd)"
cache="$build/verbs-vm"
if [[ "${WC_VERBS_VM:-}" == "skip" ]]; then
  echo "verbs-vm: skipped on request (WC_VERBS_VM=skip): the ibverbs backend is not tested" >&2
  exit 77
fi

cannot() {
  echo "verbs-vm: FAILED: cannot run the VM suite: $*" >&2
  echo "verbs-vm: (a developer who cannot run it may set WC_VERBS_VM=skip)" >&2
  exit 1
}

packages=(qemu-system-x86 linux-image-amd64 busybox-static kmod cpio rdma-core ibverbs-utils
  ibverbs-providers iproute2)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  [[ $(id -u) == 0 ]] || cannot "packages missing (${missing[*]}) and not root to install them"
  echo "verbs-vm: installing ${missing[*]}" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "${missing[@]}"; } >"$build/verbs-vm-apt.log" 2>&1 ||
    cannot "apt-get install failed (see $build/verbs-vm-apt.log)"
fi

# The newest installed kernel that ships rdma_rxe.
kver=""
for d in /lib/modules/*; do
  k="$(basename "$d")"
  [[ -f "/boot/vmlinuz-$k" ]] || continue
  find "$d/kernel/drivers/infiniband/sw/rxe" -name 'rdma_rxe.ko*' 2>/dev/null | grep -q . || continue
  kver="$k"
done
[[ -n "$kver" ]] || cannot "no /boot/vmlinuz-* with a matching rdma_rxe module"
[[ -r "/boot/vmlinuz-$kver" ]] || cannot "/boot/vmlinuz-$kver is not readable"
[[ -x "$build/tests/fabric_test" && -x "$build/weightcast" ]] ||
  cannot "$build has no fabric_test / weightcast: build first (scripts/setup.sh)"

# One VM at a time per build tree (they share the cache and the results folder).
mkdir -p "$cache"
exec 9>"$cache/lock"
if ! flock -n 9; then
  echo "verbs-vm: another VM suite runs on $build; waiting for it" >&2
  flock 9
fi

# The initramfs: busybox, the modules that reach the 9p root, and /init.
hash="$(sha1sum "$0" | cut -c1-12)"
initrd="$cache/initramfs-$kver-$hash.cpio.gz"
if [[ ! -f "$initrd" ]]; then
  echo "verbs-vm: building the initramfs for $kver" >&2
  rm -rf "$cache/root"
  mkdir -p "$cache/root"/{bin,dev,proc,sys,host,mods}
  cp /bin/busybox "$cache/root/bin/busybox"
  n=0
  for m in virtio_pci 9pnet_virtio 9p; do
    modprobe -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
  done | awk '!seen[$0]++' | while read -r ko; do
    n=$((n + 1))
    dst="$cache/root/mods/$(printf %02d $n)-$(basename "${ko%.xz}")"
    case "$ko" in
      *.xz) xz -dc "$ko" >"$dst" ;;
      *.zst) zstd -dqc "$ko" >"$dst" ;;
      *) cp "$ko" "$dst" ;;
    esac
  done
  cat >"$cache/root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /mods/*.ko; do insmod "$m" || echo "init: insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288 hostroot /host || {
  echo "init: cannot mount the host root"; poweroff -f; }
# The host's /tmp stays visible (a checkout may live there): scratch space is /dev/shm and the
# results folder is mounted at /dev/wc-vm, both on the VM's own file systems.
mount -t tmpfs run /host/run
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm /host/dev/wc-vm
mount -t devpts pts /host/dev/pts
mount -t tmpfs -o size=1g shm /host/dev/shm
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 results /host/dev/wc-vm
chroot /host /bin/bash /dev/wc-vm/run.sh >/host/dev/wc-vm/suite.log 2>&1
echo $? >/host/dev/wc-vm/rc
sync
poweroff -f
EOF
  chmod +x "$cache/root/init"
  (cd "$cache/root" && find . | cpio -o -H newc --quiet | gzip -1) >"$initrd.tmp"
  mv "$initrd.tmp" "$initrd"
fi

results="$cache/results"
rm -rf "$results"
mkdir -p "$results"
only=""
if [[ -n "${WC_VERBS_VM_ONLY:-}" ]]; then
  printf '%s\n' "$WC_VERBS_VM_ONLY" >"$results/only.sh"
  only=/dev/wc-vm/only.sh  # where the VM sees the results folder
fi
cat >"$results/run.sh" <<EOF
cd "$repo"
export WC_VERBS_QUICK=$quick
exec bash tests/verbs/vm_suite.sh "$build" $bench $only
EOF

# Software emulation by default: on these machines /dev/kvm exists but a KVM guest hangs before
# its first console line (nested virtualisation). WC_VERBS_VM_ACCEL=kvm tries it anyway.
accel="${WC_VERBS_VM_ACCEL:-tcg}"
cpu=max
[[ "$accel" == kvm ]] && cpu=host
limit="${WC_VERBS_VM_TIMEOUT:-1500}"
echo "verbs-vm: booting $kver ($accel), suite log at $results/suite.log" >&2
t0=$(date +%s)
set +e
timeout "$limit" qemu-system-x86_64 -machine q35,accel="$accel" -cpu "$cpu" -smp 2 -m 3072 \
  -nographic -no-reboot -monitor none -serial file:"$cache/console.log" \
  -kernel "/boot/vmlinuz-$kver" -initrd "$initrd" \
  -append "console=ttyS0 panic=-1 quiet rdinit=/init" \
  -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
  -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
  -fsdev local,id=results,path="$results",security_model=none \
  -device virtio-9p-pci,fsdev=results,mount_tag=results \
  -netdev user,id=n0,restrict=on,net=10.0.2.0/24 -device virtio-net-pci,netdev=n0 \
  -netdev user,id=n1,restrict=on,net=10.0.3.0/24 -device virtio-net-pci,netdev=n1
qrc=$?
set -e
echo "verbs-vm: VM ran $(($(date +%s) - t0)) s" >&2
[[ -f "$results/suite.log" ]] && cat "$results/suite.log"
if [[ ! -f "$results/rc" ]]; then
  tail -30 "$cache/console.log" >&2 || true
  ((qrc == 124)) && { echo "verbs-vm: the VM ran past ${limit} s" >&2; exit 1; }
  cannot "the VM stopped (qemu exit $qrc) without a suite result; console: $cache/console.log"
fi
exit "$(cat "$results/rc")"
