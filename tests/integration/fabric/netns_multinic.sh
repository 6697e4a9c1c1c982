#!/usr/bin/env bash
# Multi-NIC for real: two network namespaces joined by K veth pairs (each veth a NIC with its own
# address). A receiver in one namespace and a sender in the other stripe every write over the K
# NICs; the peers check every byte and that each write yields exactly K immediates. The
# namespaces are created here and removed on exit; without the privilege the test skips (ctest
# SKIP_RETURN_CODE 77) with the reason.
set -u
wc="$1"; peer="$2"; K="${3:-3}"
tag="wc$$"; A="${tag}a"; B="${tag}b"
cleanup() {
  [ -n "${rdv_pid:-}" ] && kill "$rdv_pid" 2>/dev/null
  ip netns del "$A" 2>/dev/null; ip netns del "$B" 2>/dev/null
}
trap cleanup EXIT
if ! command -v ip >/dev/null; then echo "SKIP: iproute2 (ip) not installed"; exit 77; fi
if ! ip netns add "$A" 2>/tmp/${tag}.err; then echo "SKIP: cannot create network namespaces: $(cat /tmp/${tag}.err)"; rm -f /tmp/${tag}.err; exit 77; fi
rm -f /tmp/${tag}.err
ip netns add "$B" || exit 1
a_ips=(); b_ips=()
for i in $(seq 0 $((K - 1))); do
  ip link add "${tag}x$i" type veth peer name "${tag}y$i" || exit 1
  ip link set "${tag}x$i" netns "$A"; ip link set "${tag}y$i" netns "$B"
  ip -n "$A" addr add "10.213.$i.1/24" dev "${tag}x$i"; ip -n "$B" addr add "10.213.$i.2/24" dev "${tag}y$i"
  ip -n "$A" link set "${tag}x$i" up; ip -n "$B" link set "${tag}y$i" up
  a_ips+=("10.213.$i.1"); b_ips+=("10.213.$i.2")
done
ip -n "$A" link set lo up; ip -n "$B" link set lo up
tok="netns-$$"
log=$(mktemp -d)
ip netns exec "$A" "$wc" rendezvous --bind 10.213.0.1 --port 29517 --token "$tok" --seconds 600 >"$log/rdv" 2>&1 &
rdv_pid=$!
anics=$(IFS=,; echo "${a_ips[*]}"); bnics=$(IFS=,; echo "${b_ips[*]}")
timeout 300 ip netns exec "$A" "$peer" --role receiver --scenario sizes --rdv 10.213.0.1:29517 --token "$tok" --nics "$anics" >"$log/r" 2>&1 &
rpid=$!
timeout 300 ip netns exec "$B" "$peer" --role sender --scenario sizes --rdv 10.213.0.1:29517 --token "$tok" --nics "$bnics" >"$log/s" 2>&1 &
spid=$!
wait $rpid; rrc=$?; wait $spid; src=$?
cat "$log/r" "$log/s"
# Traffic really used every veth: each NIC's counters moved.
used=0
for i in $(seq 0 $((K - 1))); do
  tx=$(ip netns exec "$B" cat /sys/class/net/${tag}y$i/statistics/tx_bytes)
  echo "NIC $i (${tag}y$i): $tx bytes sent"
  [ "$tx" -gt $((100 * 1024 * 1024)) ] && used=$((used + 1))
done
rm -rf "$log"
if [ $rrc = 0 ] && [ $src = 0 ] && [ $used = "$K" ]; then echo "1 passed, 0 failed"; exit 0; fi
echo "FAIL: receiver $rrc, sender $src, NICs carrying > 100 MiB: $used of $K"; echo "0 passed, 1 failed"; exit 1
