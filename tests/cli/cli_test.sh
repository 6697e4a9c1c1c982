#!/usr/bin/env bash
# The CLI as a user meets it: help text, exit codes, error messages, plan -> JSON/SVG -> verify.
set -u
wc="$1"; src="$2"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
check() {  # check NAME EXPECTED_RC PATTERN -- command...
  local name="$1" want_rc="$2" pattern="$3"; shift 4
  local out rc
  out=$("$@" 2>&1); rc=$?
  if [ "$rc" != "$want_rc" ]; then echo "FAIL $name: exit $rc, wanted $want_rc"; echo "$out" | tail -5; fail=$((fail+1)); return; fi
  if ! grep -qE -- "$pattern" <<<"$out"; then echo "FAIL $name: output lacks /$pattern/"; echo "$out" | tail -5; fail=$((fail+1)); return; fi
  echo "ok   $name"; pass=$((pass+1))
}
cfg="$src/configs/llama-3.1-8b"
check help 0 "--staging-mb" -- "$wc" plan --help
check help-verify 0 "--scale" -- "$wc" verify --help
check no-subcommand 2 "subcommand" -- "$wc"
check configs 0 "kimi-k2" -- "$wc" configs
check default-plan 0 "predicted / floor" -- "$wc" plan -b llama-3.1-8b
check files-plan 0 "bytes +29.92 GiB" -- "$wc" plan -t "$cfg/trainer.json" -i "$cfg/inference.json" -c "$cfg/topology.json" \
  --json "$tmp/p.json" --svg "$tmp/m.svg"
check json-written 0 '"format": "weightcast.plan/v1"' -- head -3 "$tmp/p.json"
check svg-written 0 "<rect x=" -- grep -m1 "sender 0 -> receiver" "$tmp/m.svg"
check simulate 0 "slowest path +trainer rank" -- "$wc" plan -b demo-moe --profile "$src/configs/profiles/cx7-h100.json" \
  --trace "$tmp/t.json"
check sim-trace-written 0 '"ph":"X"' -- head -c 4000 "$tmp/t.json"
echo '{"format": "weightcast.profile/v1", "write_us": -1}' >"$tmp/bad-profile.json"
check bad-profile 2 "write_us = -1 is outside" -- "$wc" plan -b demo-moe --profile "$tmp/bad-profile.json"
check trace-needs-profile 2 "--trace needs --profile" -- "$wc" plan -b demo-moe --trace "$tmp/t2.json"
# The plan JSON carries the simulation, and a plan with one still loads (verify --plan).
check sim-in-plan-json 0 '"simulation": \{"critical_path"' -- sh -c "\"$wc\" plan -b demo-moe --profile \"$src/configs/profiles/cx7-h100.json\" --json \"$tmp/sim.plan.json\" >/dev/null && grep -m1 simulation \"$tmp/sim.plan.json\""
check sim-plan-loads 0 "OK: .* match the reference" -- "$wc" verify -b demo-moe --scale 1 --plan "$tmp/sim.plan.json"
# A profile measured here (loopback writes, the CPU projections), then used by plan.
check profile-measured 0 "profile written to" -- "$wc" profile --mib 8 -o "$tmp/here.json"
check profile-fields 0 '"host_path_on_cores": true' -- cat "$tmp/here.json"
check profile-used 0 "profile: loopback on" -- "$wc" plan -b demo-moe --profile "$tmp/here.json"
check profile-help 0 "about ten seconds" -- "$wc" profile --help
check trace-help 0 "--align" -- "$wc" trace merge --help
check trace-merge-missing 2 "nope.json: cannot open" -- "$wc" trace merge -o "$tmp/m.json" "$tmp/nope.json"
check demo-help-trace 0 "demo.trace.json" -- "$wc" demo --help
check trace-svg 0 "timeline of .* written" -- "$wc" trace svg "$tmp/t.json" -o "$tmp/t.svg"
check trace-svg-legend 0 "projections" -- grep -m1 ">projections<" "$tmp/t.svg"
check matrix-legend 0 "bytes per cell" -- grep -m1 "bytes per cell" "$tmp/m.svg"
check partial-files 2 "missing: --inference --topology" -- "$wc" plan -t "$cfg/trainer.json"
check missing-file 2 "nope.json: cannot open file" -- "$wc" plan -t nope.json -i "$cfg/inference.json" -c "$cfg/topology.json"
printf '{"format": "weightcast.spec/v1", "role": "trainer", "mesh": {"axes": []}, "params": []}' > "$tmp/bad.json"
check bad-spec 2 "bad.json: trainer.mesh.axes: expected at least one axis" -- \
  "$wc" plan -t "$tmp/bad.json" -i "$cfg/inference.json" -c "$cfg/topology.json"
printf '{"format": ' > "$tmp/trunc.json"
check bad-json 2 "trunc.json: not valid JSON" -- "$wc" plan -t "$tmp/trunc.json" -i "$cfg/inference.json" -c "$cfg/topology.json"
check unknown-builtin 2 "no built-in config named 'gpt5'" -- "$wc" plan -b gpt5
check bad-scale 2 "not divisible by --scale 7" -- "$wc" verify -b llama-3.1-8b --scale 7
check verify 0 "^OK: [0-9]+ bytes in 1560 tensors match" -- "$wc" verify -b llama-3.1-8b --scale 32
# weightcast spec: the shipped config again from its config.json and spec.args, planned; then
# what a user gets wrong, named.
# shellcheck disable=SC2046
check spec 0 "predicted / floor" -- "$wc" spec --config "$cfg/config.json" -o "$tmp/spec" $(cat "$cfg/spec.args")
check spec-same 0 "^same$" -- python3 -c "import json, sys; print('same' if all(json.load(open(f'$tmp/spec/{n}.json')) == json.load(open(f'$cfg/{n}.json')) for n in ('trainer', 'inference', 'topology')) else 'differs')"
check spec-verify 0 "^OK:" -- "$wc" verify -t "$tmp/spec/trainer.json" -i "$tmp/spec/inference.json" -c "$tmp/spec/topology.json" --scale 32
check spec-help 0 "--trainer-experts" -- "$wc" spec --help
printf '{"model_type": "gpt2", "hidden_size": 8}' > "$tmp/gpt2.json"
check spec-bad-type 2 "config.json.model_type: 'gpt2' is not supported" -- "$wc" spec --config "$tmp/gpt2.json" -o "$tmp/x"
check spec-bad-tp 2 "--inference: tp=3 does not divide 32 attention heads" -- "$wc" spec --config "$cfg/config.json" -o "$tmp/x" --inference tp=3
check spec-bad-axis 2 "--trainer: unknown axis 'zp'" -- "$wc" spec --config "$cfg/config.json" -o "$tmp/x" --trainer zp=2
"$wc" plan -b llama-3.1-8b --scale 32 --json "$tmp/s.json" >/dev/null
check verify-plan-file 0 "^OK:" -- "$wc" verify -b llama-3.1-8b --scale 32 --plan "$tmp/s.json"
check verify-other-scale 2 "plan was made from other inputs" -- "$wc" verify -b llama-3.1-8b --scale 16 --plan "$tmp/s.json"
python3 - "$tmp/s.json" "$tmp/t.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
for w in p["writes"]:
    if w[2] >= 0 and w[9] > 2:  # a staged write: land it two bytes later
        w[8] += 2; w[9] -= 2; break
json.dump(p, open(sys.argv[2], "w"))
PY
check verify-tampered 1 "FAILED: verify failed: byte written 0 times: replica" -- "$wc" verify -b llama-3.1-8b --scale 32 --plan "$tmp/t.json"
# Hostile plans: refused with exit 2 and the JSON path of the field, never a signal.
python3 - "$tmp/s.json" "$tmp" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
def save(name, edit):
    q = json.loads(json.dumps(p)); edit(q); json.dump(q, open(f"{sys.argv[2]}/{name}.json", "w"))
save("wrap", lambda q: q["writes"][0].__setitem__(7, 2**64 - 64))
save("rank999", lambda q: q["gathers"][0][4][0].__setitem__(0, 999))
save("nic7", lambda q: q["writes"][0].__setitem__(5, 7))
PY
check verify-plan-wrapped 2 "writes\[0\]: reads \[18446744073709551552" -- "$wc" verify -b llama-3.1-8b --scale 32 --plan "$tmp/wrap.json"
check verify-plan-rank999 2 "gathers\[0\].pieces\[0\]: rank 999 is not a trainer rank" -- "$wc" verify -b llama-3.1-8b --scale 32 --plan "$tmp/rank999.json"
check verify-plan-nic7 2 "writes\[0\]: NIC 7 of sender" -- "$wc" verify -b llama-3.1-8b --scale 32 --plan "$tmp/nic7.json"
# Specs that leave a trainer parameter unused are refused unless the user says so.
python3 - "$cfg/inference.json" "$tmp/nolm.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
j["params"] = [p for p in j["params"] if p["name"] != "lm_head.weight"]
json.dump(j, open(sys.argv[2], "w"))
PY
check unused-param 2 "trainer parameter\(s\) reach no inference tensor: 'lm_head.weight'" -- \
  "$wc" plan -t "$cfg/trainer.json" -i "$tmp/nolm.json" -c "$cfg/topology.json"
check allow-unused 0 "predicted / floor" -- \
  "$wc" plan -t "$cfg/trainer.json" -i "$tmp/nolm.json" -c "$cfg/topology.json" --allow-unused
check demo-replicas-with-files 2 "--replicas applies to the built-in config only" -- \
  "$wc" demo -t "$cfg/trainer.json" -i "$cfg/inference.json" -c "$cfg/topology.json" --replicas 2
# Resource bounds: a 4M-entry "for" is refused at once, naming the path (exit 2).
python3 - "$cfg/trainer.json" "$tmp/huge.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
j["params"].append({"name": "x.{i}", "for": {"i": [0, 4000000]}, "shape": [8], "dtype": "bf16"})
json.dump(j, open(sys.argv[2], "w"))
PY
check huge-for 2 "trainer.params\[[0-9]+\]: 4000000 more parameters would pass the limit of 262144" -- \
  "$wc" plan -t "$tmp/huge.json" -i "$cfg/inference.json" -c "$cfg/topology.json"
check strict-gathers 2 "forbids a cross-host gather" -- "$wc" plan -b deepseek-v3 --intra-node-gathers-only
check rendezvous-no-token 2 "needs a job token: --token-file FILE or WEIGHTCAST_TOKEN" -- \
  env -u WEIGHTCAST_TOKEN "$wc" rendezvous --port 0 --seconds 1
echo tok > "$tmp/token"
check rendezvous-token-file 0 "rendezvous listening on 127.0.0.1:" -- \
  "$wc" rendezvous --port 0 --seconds 0.2 --token-file "$tmp/token"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
