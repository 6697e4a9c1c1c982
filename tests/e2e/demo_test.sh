#!/usr/bin/env bash
# End to end through `weightcast demo`: real trainer and inference processes over libfabric
# tcp;ofi_rxm, every inference byte verified against the reference each step.
#   demo_test.sh WEIGHTCAST basic|fault|rejoin|restart_then_kill|tight|llama|soak|ipc_basic|hybrid_hosts|hybrid_split|
#                ipc_restart_then_kill|receiver_killed|trace
set -u
wc="$1"; what="$2"
out=$(mktemp); trap 'rm -f "$out"' EXIT
expect() { grep -qE -- "$1" "$out" || { echo "FAIL: output lacks /$1/"; cat "$out"; echo "0 passed, 1 failed"; exit 1; }; }
case "$what" in
  basic)  # two replicas (4 inference processes), two NICs per process, small units packed into
    # gathers on the trainers' host collective (the built-in topology's cost would pack none)
    timeout 300 "$wc" demo --steps 3 --replicas 2 --nics 2 --gather-cost-us 0 >"$out" 2>&1; rc=$?
    expect "4 trainer -> 4 inference processes"; expect "writes and [1-9][0-9]* gathers"; expect "^step 3/3: .* on 4 receivers verified"; expect "demo OK" ;;
  fault)  # trainer 0 dies mid-step 2: a receiver still waiting on it must fail naming it, the retry must verify;
    # with gathers, so the restarted trainer also relinks its gather peers
    timeout 300 "$wc" demo --steps 3 --kill-trainer-at-step 2 --deadline 3 --gather-cost-us 0 \
      >"$out" 2>&1; rc=$?
    expect "writes and [1-9][0-9]* gathers"
    expect "step 2/3 attempt 1 FAILED"
    # Inference 0 names the dead sender, or the live one whose gather to it failed first and
    # aborted (a race; inference 1 may have had all of it)
    expect "inference 0: .*(missing: sender 0 \(phase|sender\(s\) [0-9, ]+ aborted their attempt)"
    expect "trainer 0 died \(Killed\); restarting"
    expect "^step 2/3: .*verified against the reference \(attempt 2\)"
    expect "demo OK: 3 steps" ;;
  rejoin)  # inference 0 restarted between steps: trainers reconnect, the next step rewrites it all
    timeout 300 "$wc" demo --steps 3 --restart-receiver-at-step 2 >"$out" 2>&1; rc=$?
    expect "inference 0 killed after step 1 and restarted \(incarnation 1\)"
    expect "^step 2/3: .*6840064 bytes on 2 receivers verified"
    expect "demo OK: 3 steps" ;;
  receiver_killed)  # inference 1 is SIGKILLed before step 2, unannounced: the driver names it at
    # once (not after a deadline), restarts it, the senders reconnect and step 2 verifies
    timeout 300 "$wc" demo --steps 3 --kill-receiver-at-step 2 --deadline 10 >"$out" 2>&1; rc=$?
    expect "inference 1 killed \(SIGKILL\) before step 2"
    expect "inference 1 died \(Killed\) during step 2; restarting it to rejoin the step"
    expect "^step 2/3: .*6840064 bytes on 2 receivers verified"
    expect "^step 3/3: .*6840064 bytes on 2 receivers verified"
    expect "demo OK: 3 steps" ;;
  restart_then_kill)  # inference 0 restarts, then trainer 0 dies: the new trainer must link to
    # inference 0's second incarnation, not its dead first one
    timeout 300 "$wc" demo --steps 4 --restart-receiver-at-step 2 --kill-trainer-at-step 3 \
      --deadline 5 --gather-cost-us 0 >"$out" 2>&1; rc=$?
    expect "inference 0 killed after step 1 and restarted \(incarnation 1\)"
    expect "step 3/4 attempt 1 FAILED"
    expect "trainer 0 died \(Killed\); restarting"
    expect "^step 3/4: .*verified against the reference \(attempt 2\)"
    expect "^step 4/4: .*6840064 bytes on 2 receivers verified"
    expect "demo OK: 4 steps" ;;
  tight)  # a 1.75 MiB staging watermark (one phase gathers 1 MiB): several gather phases, a ring that wraps every
    # step, slots reused only once their writes completed
    timeout 300 "$wc" demo --steps 3 --staging-mb 1.75 --gather-cost-us 0 >"$out" 2>&1; rc=$?
    expect "writes and [1-9][0-9]* gathers"; expect "^step 3/3: .*verified"; expect "demo OK: 3 steps" ;;
  llama)  # a shipped config instead of the built-in one: Llama-3.1-8B's FSDP8 -> 2 replicas of
    # TP4 (fused qkv / gate_up split by rows and columns), every named dim / 32, 2 layers:
    # 8 trainer and 8 inference processes
    dir=$(mktemp -d); trap 'rm -rf "$out" "$dir"' EXIT
    src="$(dirname "$0")/../../configs/llama-3.1-8b"
    python3 - "$src" "$dir" <<'PY' || { echo "FAIL: could not write the scaled specs"; exit 1; }
import json, sys
src, dst = sys.argv[1], sys.argv[2]
for f in ("trainer", "inference", "topology"):
    j = json.load(open(f"{src}/{f}.json"))
    for k, v in j.get("dims", {}).items():
        j["dims"][k] = v // 32
    for p in j.get("params", []):
        if "i" in p.get("for", {}):
            p["for"]["i"] = [0, 2]
    json.dump(j, open(f"{dst}/{f}.json", "w"))
PY
    timeout 300 "$wc" demo -t "$dir/trainer.json" -i "$dir/inference.json" -c "$dir/topology.json" \
      --steps 3 >"$out" 2>&1; rc=$?
    expect "8 trainer -> 8 inference processes"; expect "^step 3/3: .* on 8 receivers verified"
    expect "demo OK: 3 steps" ;;
  soak)  # consecutive steps (WC_SOAK_STEPS, default 200; scripts/soak.sh runs 5000), every byte
    # verified, no RSS growth on any of the job's 7 processes (the driver, which holds the
    # controller and the rendezvous, included)
    n="${WC_SOAK_STEPS:-200}"
    timeout $((120 + n)) "$wc" demo --steps "$n" >"$out" 2>&1; rc=$?
    expect "^step $n/$n: "; expect "RSS: largest growth after step 10 is .* over $n steps, 7 processes"
    expect "demo OK: $n steps" ;;
  packed_gathers)  # gather pieces packed before they are written (as for pieces whose runs in
    # the shard differ from their runs in the root's box) instead of written from the shards
    WEIGHTCAST_DEBUG_PACK_GATHERS=1 timeout 300 "$wc" demo --steps 3 --staging-mb 1.75 \
      --gather-cost-us 0 >"$out" 2>&1; rc=$?
    expect "writes and [1-9][0-9]* gathers"; expect "^step 3/3: .*verified"; expect "demo OK: 3 steps" ;;
  ipc_basic)  # the same-host backend: two replicas, two links per process, gathers
    timeout 300 "$wc" demo --backend ipc --steps 3 --replicas 2 --nics 2 --gather-cost-us 0 \
      >"$out" 2>&1; rc=$?
    expect "4 trainer -> 4 inference processes over same-host ipc"
    expect "^step 3/3: .* on 4 receivers verified"; expect "demo OK" ;;
  hybrid_hosts)  # hybrid links: the processes pose as 2 hosts, so pairs of one host go over ipc
    # and the others over libfabric, in one job; two replicas, 2 links each, then both drills
    timeout 300 "$wc" demo --backend hybrid --hosts 2 --steps 4 --replicas 2 --nics 2 \
      --restart-receiver-at-step 2 --kill-trainer-at-step 3 --deadline 5 --gather-cost-us 0 \
      >"$out" 2>&1; rc=$?
    expect "over hybrid links \(ipc within a host, libfabric tcp between; 2 posing host\(s\)\)"
    expect "inference 0 killed after step 1 and restarted \(incarnation 1\)"
    expect "trainer 0 died \(Killed\); restarting"
    expect "^step 4/4: .*on 4 receivers verified"
    expect "demo OK: 4 steps" ;;
  hybrid_split)  # staged receiver tensors on hybrid links are split: senders of the receiver's
    # (posing) host write the tensors directly over ipc, only the other host's bytes land in the
    # staging area and are copied in; the drills change the senders' incarnations in between
    # (--deadline 10: with 5 s it failed once in a full test run beside the verbs VM, the
    # restarted trainer's relink not done in time; see the session note)
    timeout 300 "$wc" demo --backend hybrid --hosts 2 --steps 4 --replicas 2 --staging always \
      --restart-receiver-at-step 2 --kill-trainer-at-step 3 --deadline 10 --gather-cost-us 0 \
      >"$out" 2>&1; rc=$?
    expect "trainer 0 died \(Killed\); restarting"
    expect "^step 4/4: .*13680128 bytes on 4 receivers verified"
    expect "receiver tensors: host\+staged; [0-9.]+ MB staged"
    # Some bytes, and not all: 4 steps of 13.68 MB, the restarted receiver's and the retried
    # attempt's included, are more than 54.7 MB if every byte were staged.
    staged=$(sed -n 's/^receiver tensors: .*; \([0-9.]*\) MB staged.*/\1/p' "$out")
    awk -v s="$staged" 'BEGIN { exit !(s > 0 && s < 54.7 * 0.75) }' ||
      { echo "FAIL: $staged MB staged: expected the cross-host half of the bytes"; rc=1; }
    expect "demo OK: 4 steps" ;;
  ipc_restart_then_kill)  # the same-host backend through the restart and kill drills: writers
    # take over the lanes of the dead, the new trainer maps the restarted receiver's memory
    timeout 300 "$wc" demo --backend ipc --steps 4 --restart-receiver-at-step 2 \
      --kill-trainer-at-step 3 --deadline 5 --gather-cost-us 0 >"$out" 2>&1; rc=$?
    expect "over same-host ipc"
    expect "inference 0 killed after step 1 and restarted \(incarnation 1\)"
    expect "inference 0: .*(missing: sender 0 \(phase|sender\(s\) [0-9, ]+ aborted their attempt)"
    expect "trainer 0 died \(Killed\); restarting"
    expect "^step 3/4: .*verified against the reference \(attempt 2\)"
    expect "^step 4/4: .*6840064 bytes on 2 receivers verified"
    expect "demo OK: 4 steps" ;;
  trace)  # every process traces every step; the driver joins them; a predicted step beside it
    d=$(mktemp -d); trap 'rm -f "$out"; rm -rf "$d"' EXIT
    timeout 300 "$wc" demo --steps 2 --trace "$d" >"$out" 2>&1; rc=$?
    expect "trace of every step: .*demo.trace.json \(6 processes"; expect "demo OK: 2 steps"
    for f in "$d"/trainer-*.trace.json; do  # 2 pushes each, each with its readiness and drain
      [ "$(grep -c '"name":"push"' "$f")" = 2 ] || { echo "FAIL: $f lacks 2 push spans"; cat "$f"; exit 1; }
      grep -q "reading the receivers' arms" "$f" && grep -q '"name":"drain' "$f" || { echo "FAIL: $f lacks readiness or drain"; exit 1; }
    done
    for f in "$d"/inference-*.trace.json; do
      grep -q 'step 2: armed -> every immediate in' "$f" || { echo "FAIL: $f lacks step 2's barrier span"; exit 1; }
    done
    "$wc" plan -b demo-moe --profile "$(dirname "$0")/../../configs/profiles/cx7-h100.json" --trace "$d/p.json" >/dev/null &&
      "$wc" trace merge --align -o "$d/both.json" "$d/demo.trace.json" "$d/p.json" >>"$out" 2>&1 || rc=1
    expect "2 trace file\(s\) joined"
    grep -q '"predicted: trainer rank 0"' "$d/both.json" && grep -q '"trainer 0"' "$d/both.json" ||
      { echo "FAIL: the joined trace lacks the predicted or the measured trainer 0"; exit 1; } ;;
  *) echo "unknown case $what"; exit 2 ;;
esac
cat "$out"
[ "$rc" = 0 ] || { echo "FAIL: exit $rc"; echo "0 passed, 1 failed"; exit 1; }
echo "1 passed, 0 failed"
