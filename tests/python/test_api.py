"""The Python binding drives a real transfer: 2 trainer senders (FSDP rows) -> 2 inference
receivers (TP columns, plus an FP32 cast), numpy buffers, threads for the peers (the GIL is
released in blocking calls). Expected bytes are computed here with numpy, independently."""
import json
import os
import re
import subprocess
import threading

import numpy as np
import pytest

import weightcast

ROWS, COLS = 8, 16


def write_specs(tmp_path):
    trainer = {
        "format": "weightcast.spec/v1", "role": "trainer",
        "mesh": {"axes": [{"name": "fsdp", "size": 2}],
                 "devices": [{"host": "local", "gpu": 0}, {"host": "local", "gpu": 1}]},
        "params": [{"name": "w", "shape": [ROWS, COLS], "dtype": "bf16", "placement": {"fsdp": "S(0)"}}],
    }
    inference = {
        "format": "weightcast.spec/v1", "role": "inference",
        "replicas": [{"axes": [{"name": "tp", "size": 2}],
                      "devices": [{"host": "local", "gpu": 2}, {"host": "local", "gpu": 3}]}],
        "params": [
            {"name": "w", "shape": [ROWS, COLS], "dtype": "bf16", "placement": {"tp": "S(1)"}, "from": "w"},
            {"name": "w32", "shape": [ROWS, COLS], "dtype": "fp32", "placement": {"tp": "S(0)"}, "from": "w"},
        ],
    }
    topo = {"format": "weightcast.topology/v1", "hosts": [{"name": "local", "gpus": 4}]}
    paths = []
    for name, obj in [("trainer", trainer), ("inference", inference), ("topology", topo)]:
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(obj))
        paths.append(str(p))
    return paths


def bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def full_weights(step):
    # bf16 bit patterns of small finite values that differ every step
    vals = (np.arange(ROWS * COLS, dtype=np.float32).reshape(ROWS, COLS) - 50.0) * 0.25 * step
    return (vals.view(np.uint32) >> 16).astype(np.uint16)


def transfer(job, ctl):
    """Two steps through real receivers and senders in threads; checks every byte with numpy and
    returns (each sender's PushStats of step 1, what the controller collected of the peers)."""
    results, errors, pushed, peers = {}, [], {}, []

    def receiver(r):
        try:
            rc = weightcast.Receiver(job, r)
            bufs = {}
            for info in rc.tensors():
                dt = np.uint16 if info.dtype == "bf16" else np.float32
                bufs[info.name] = np.zeros(info.shape, dtype=dt)
                rc.register_tensor(info.name, bufs[info.name])
            rc.publish()
            for step in (1, 2):
                stats = rc.wait(step)
                assert stats.immediates > 0
                results[(r, step)] = {k: v.copy() for k, v in bufs.items()}
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"receiver {r}: {e!r}")

    def sender(s):
        try:
            snd = weightcast.Sender(job, s)
            (info,) = snd.tensors()
            assert info.name == "w" and info.shape == [ROWS // 2, COLS]
            shard = np.zeros(info.shape, dtype=np.uint16)
            snd.register_tensor("w", shard.ctypes.data, shard.nbytes)  # raw pointer, as torch's data_ptr()
            snd.prepare()
            for step in (1, 2):
                shard[:] = full_weights(step)[s * ROWS // 2:(s + 1) * ROWS // 2]
                stats = snd.push(step)
                assert stats.bytes > 0 and len(stats.nic_gbps) == 1 and stats.nic_gbps[0] > 0
                pushed.setdefault(s, stats)
        except Exception as e:  # noqa: BLE001
            errors.append(f"sender {s}: {e!r}")

    threads = [threading.Thread(target=receiver, args=(r,)) for r in range(2)]
    threads += [threading.Thread(target=sender, args=(s,)) for s in range(2)]
    threads.append(threading.Thread(target=lambda: peers.extend(ctl.wait_for_peers(60))))
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    for step in (1, 2):
        full = full_weights(step)
        for r in range(2):
            got = results[(r, step)]
            np.testing.assert_array_equal(got["w"], full[:, r * COLS // 2:(r + 1) * COLS // 2])
            np.testing.assert_array_equal(got["w32"], bf16_to_f32(full[r * ROWS // 2:(r + 1) * ROWS // 2]))
    return pushed, peers


def test_transfer_two_steps(tmp_path):
    t, i, c = write_specs(tmp_path)
    job = weightcast.JobConfig(t, i, c, deadline_s=30)
    ctl = weightcast.Controller(job)
    assert job.rendezvous.startswith("127.0.0.1:") and job.token
    assert (ctl.senders, ctl.receivers) == (2, 2)
    _, peers = transfer(job, ctl)
    # The controller collected every peer's metadata and it matches the plan.
    got = sorted((p.role, p.rank, p.tensors, p.nbytes, p.nics) for p in peers)
    half = ROWS * COLS // 2
    assert got == [("inference", 0, 2, half * 2 + half * 4, 1), ("inference", 1, 2, half * 2 + half * 4, 1),
                   ("trainer", 0, 1, half * 2, 1), ("trainer", 1, 1, half * 2, 1)]


def test_trace_dir_records_every_step_of_every_peer(tmp_path):
    t, i, c = write_specs(tmp_path)
    job = weightcast.JobConfig(t, i, c, deadline_s=30)
    job.trace_dir = str(tmp_path / "trace")
    os.mkdir(job.trace_dir)
    ctl = weightcast.Controller(job)
    transfer(job, ctl)
    files = sorted(os.listdir(job.trace_dir))
    assert [re.sub(r"^(\w+-\d+)-\d+(-\d+)?\.", r"\1.", f) for f in files] == [
        "inference-0.trace.json", "inference-1.trace.json", "trainer-0.trace.json", "trainer-1.trace.json"]
    for f in files:
        text = (tmp_path / "trace" / f).read_text()
        events = json.loads(text.rstrip().rstrip(",") + "]")  # appended per step, left open
        names = [e["name"] for e in events]
        if f.startswith("trainer"):
            assert names.count("push") == 2 and "reading the receivers' arms" in names
            assert sum(e["name"] == "NIC 0 GB/s" for e in events) == 2
        else:
            assert "step 2: armed -> every immediate in" in names


def test_metrics_file_collects_one_record_per_step_of_every_peer(tmp_path):
    t, i, c = write_specs(tmp_path)
    job = weightcast.JobConfig(t, i, c, deadline_s=30)
    job.metrics_file = str(tmp_path / "metrics.jsonl")
    ctl = weightcast.Controller(job)
    pushed, _ = transfer(job, ctl)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sorted((r["role"], r["rank"], r["step"]) for r in lines) == sorted(
        (role, rank, step) for role in ("trainer", "inference") for rank in (0, 1) for step in (1, 2))
    assert all(r["ok"] and r["attempt"] == 1 and r["bytes"] > 0 for r in lines)
    trainer0 = next(r for r in lines if (r["role"], r["rank"], r["step"]) == ("trainer", 0, 1))
    assert trainer0["bytes"] == pushed[0].bytes and trainer0["writes"] == pushed[0].writes
    assert set(trainer0["stages"]) == {"ready", "gather", "projection", "ring_wait", "mirror", "drain", "post"}
    # The same record from the stats object itself.
    assert json.loads(pushed[0].to_json())["bytes"] == pushed[0].bytes
    assert all(r["immediates"] > 0 for r in lines if r["role"] == "inference")


def test_the_controller_serves_every_peers_steps_as_prometheus_text(tmp_path):
    import urllib.request
    t, i, c = write_specs(tmp_path)
    job = weightcast.JobConfig(t, i, c, deadline_s=30)
    ctl = weightcast.Controller(job)
    port = ctl.serve_metrics()
    pushed, _ = transfer(job, ctl)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    assert "# TYPE weightcast_step gauge" in text and "# TYPE weightcast_steps_total counter" in text
    assert 'weightcast_step{role="trainer",rank="1"} 2' in ctl.metrics_text()
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
    for role in ("trainer", "inference"):
        for rank in (0, 1):
            who = f'role="{role}",rank="{rank}"'
            assert samples[f"weightcast_step{{{who}}}"] == "2"
            assert samples[f"weightcast_step_ok{{{who}}}"] == "1"
            assert samples[f'weightcast_steps_total{{{who},result="ok"}}'] == "2"
    assert float(samples['weightcast_step_nic_bytes{role="trainer",rank="0",nic="0"}']) >= pushed[0].bytes
    assert pushed[0].nic_bytes[0] >= pushed[0].bytes and pushed[0].reconnected == 0
    with pytest.raises(ValueError, match="already serving"):
        ctl.serve_metrics()


def test_set_log_level_names_the_levels():
    weightcast.set_log_level("error")
    weightcast.set_log_level("warn")
    with pytest.raises(ValueError, match="expected trace, debug, info, warn, error or off"):
        weightcast.set_log_level("loud")


def test_a_saved_plan_is_loaded_not_recomputed(tmp_path):
    t, i, c = write_specs(tmp_path)
    plan = tmp_path / "plan.json"
    # 64-byte writes: a plan no peer would compute with the default options.
    subprocess.run([os.environ["WEIGHTCAST_BIN"], "plan", "-t", t, "-i", i, "-c", c,
                    "--max-write-mb", "0.00006103515625", "--json", str(plan)], check=True, capture_output=True)
    default = weightcast.Controller(weightcast.JobConfig(t, i, c))
    assert "writes" in default.plan_report()
    writes = json.loads(plan.read_text())["writes"]
    job = weightcast.JobConfig(t, i, c, deadline_s=30, plan_file=str(plan))
    ctl = weightcast.Controller(job)
    pushed, peers = transfer(job, ctl)
    assert len(peers) == 4
    for s, stats in pushed.items():
        assert stats.writes == sum(1 for w in writes if w[0] == s), (s, stats.writes)
    assert len(writes) > int(re.search(r"writes +(\d+)", default.plan_report()).group(1))


def test_a_plan_for_other_specs_is_refused(tmp_path):
    t, i, c = write_specs(tmp_path)
    plan = tmp_path / "plan.json"
    subprocess.run([os.environ["WEIGHTCAST_BIN"], "plan", "-t", t, "-i", i, "-c", c, "--json", str(plan)],
                   check=True, capture_output=True)
    spec = json.loads(open(t).read())
    spec["params"][0]["dtype"] = "fp32"
    open(t, "w").write(json.dumps(spec))
    with pytest.raises(ValueError, match=r"plan file .*plan.json was made for inputs fnv1a64:\w+, but these "
                                         r"specs give fnv1a64:\w+: re-run `weightcast plan --json`"):
        weightcast.Controller(weightcast.JobConfig(t, i, c, plan_file=str(plan)))


def test_a_tampered_plan_file_is_refused_naming_the_field(tmp_path):
    """The inputs digest matches, but a write's source offset wraps past 2^64: the job refuses the
    file before any peer joins, naming the JSON path, and nothing is written anywhere."""
    t, i, c = write_specs(tmp_path)
    plan = tmp_path / "plan.json"
    subprocess.run([os.environ["WEIGHTCAST_BIN"], "plan", "-t", t, "-i", i, "-c", c, "--json", str(plan)],
                   check=True, capture_output=True)
    p = json.loads(plan.read_text())
    p["writes"][0][7] = 2**64 - 64
    plan.write_text(json.dumps(p))
    with pytest.raises(ValueError, match=r"plan.json: plan: writes\[0\]: reads \[18446744073709551552"):
        weightcast.Controller(weightcast.JobConfig(t, i, c, plan_file=str(plan)))


def test_wait_for_peers_names_those_that_never_joined(tmp_path):
    t, i, c = write_specs(tmp_path)
    job = weightcast.JobConfig(t, i, c, deadline_s=5)
    ctl = weightcast.Controller(job)
    rc = weightcast.Receiver(job, 1)  # noqa: F841 - the only peer that joins
    with pytest.raises(TimeoutError, match=r"did not join within 1 s: trainer 0, trainer 1, inference 0$"):
        ctl.wait_for_peers(1)


def test_errors_are_python_exceptions(tmp_path):
    t, i, c = write_specs(tmp_path)
    job = weightcast.JobConfig(t, i, c, deadline_s=5)
    ctl = weightcast.Controller(job)  # noqa: F841 - keeps the rendezvous alive
    rc = weightcast.Receiver(job, 0)
    assert repr(next(x for x in rc.tensors() if x.name == "w")) == "TensorInfo('w', bf16 [8, 8], 128 bytes)"
    with pytest.raises(ValueError, match=r"receiver 0: wait\(1\) before publish\(\)"):
        rc.wait(1)
    snd = weightcast.Sender(job, 0)
    with pytest.raises(ValueError, match=r"trainer 0: push\(1\) before prepare\(\)"):
        snd.push(1)
    snd.close()
    with pytest.raises(ValueError, match=r"register_tensor\('w'\): shape \[3\], the plan's is \[8, 8\]"):
        rc.register_tensor("w", np.zeros(3, dtype=np.uint16))
    with pytest.raises(ValueError, match=r"4-byte elements, but the plan's tensor is bf16"):
        rc.register_tensor("w", np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="holds no such tensor"):
        rc.register_tensor("nope", np.zeros(64, dtype=np.uint16))
    with pytest.raises(ValueError, match="C-contiguous"):
        rc.register_tensor("w", np.zeros((16, 8), dtype=np.uint16).T)
    with pytest.raises(ValueError, match="tensors not bound"):
        rc.publish()
    bad = weightcast.JobConfig(t, i, str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="missing.json: cannot open file"):
        weightcast.Controller(bad)


def test_a_cuda_device_the_process_does_not_have_is_refused(tmp_path):
    t, i, c = write_specs(tmp_path)
    job = weightcast.JobConfig(t, i, c, deadline_s=5)
    ctl = weightcast.Controller(job)  # noqa: F841 - keeps the rendezvous alive
    job.cuda_device = 64
    with pytest.raises(ValueError, match=r"JobConfig.cuda_device is 64, but this process sees \d+ CUDA device"):
        weightcast.Sender(job, 0)
    job.cuda_device = -1
    weightcast.Sender(job, 0)  # host shards: fine


def test_wait_times_out_naming_the_silent_sender(tmp_path):
    t, i, c = write_specs(tmp_path)
    job = weightcast.JobConfig(t, i, c, deadline_s=1.5)
    ctl = weightcast.Controller(job)  # noqa: F841
    rc = weightcast.Receiver(job, 0)
    for info in rc.tensors():
        rc.register_tensor(info.name, np.zeros(info.nbytes, dtype=np.uint8))
    rc.publish()
    with pytest.raises(TimeoutError, match=r"missing: sender 0 \(phase \d+: 0 of \d+ imms\)"):
        rc.wait(1)


def test_peers_of_a_stopped_job_get_an_error_not_a_crash(tmp_path):
    t, i, c = write_specs(tmp_path)
    job = weightcast.JobConfig(t, i, c, deadline_s=1)
    weightcast.Controller(job)  # dropped at once: its rendezvous stops
    with pytest.raises((TimeoutError, RuntimeError)):
        weightcast.Receiver(job, 0)


def test_one_thread_can_prepare_senders_that_gather_from_each_other(tmp_path):
    # Senders publish their addresses when created, so preparing them one after another in a
    # single thread cannot wait on a peer that has not run yet.
    t, i, c = write_specs(tmp_path)
    job = weightcast.JobConfig(t, i, c, deadline_s=20)
    ctl = weightcast.Controller(job)
    assert re.search(r"gathers .*\n  count [1-9]", ctl.plan_report()), ctl.plan_report()
    got, errors = {}, []

    def receiver(r):
        try:
            rc = weightcast.Receiver(job, r)
            bufs = {}
            for info in rc.tensors():
                bufs[info.name] = np.zeros(info.shape, dtype=np.uint16 if info.dtype == "bf16" else np.float32)
                rc.register_tensor(info.name, bufs[info.name])
            rc.publish()
            rc.wait(1)
            got[r] = bufs["w"].copy()
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=receiver, args=(r,)) for r in range(2)]
    for th in threads:
        th.start()
    senders = [weightcast.Sender(job, s) for s in range(2)]
    shards = []
    for s, snd in enumerate(senders):
        shard = full_weights(1)[s * ROWS // 2:(s + 1) * ROWS // 2].copy()
        snd.register_tensor("w", shard)
        shards.append(shard)
    for snd in senders:
        snd.prepare()
    pushers = [threading.Thread(target=snd.push, args=(1,)) for snd in senders]
    for th in pushers:
        th.start()
    for th in pushers + threads:
        th.join(60)
    assert not errors, errors
    for r in range(2):
        np.testing.assert_array_equal(got[r], full_weights(1)[:, r * COLS // 2:(r + 1) * COLS // 2])


def test_a_gather_member_running_ahead_never_corrupts_its_roots_step(tmp_path, monkeypatch):
    # Every sender pushes on its own schedule (no controller rounds). Here sender 1 sends its rows
    # of receiver 0's "w" to root 0 and writes only to receiver 1, so once receiver 1 has step 1 it
    # may push step 2 while root 0 is still projecting step 1 (held there by a test hook). Its
    # step-2 pieces must wait until the root opens its gather buffer for step 2; transfer()
    # checks every byte of both steps.
    t, i, c = write_specs(tmp_path)
    plan = tmp_path / "plan.json"
    subprocess.run([os.environ["WEIGHTCAST_BIN"], "plan", "-t", t, "-i", i, "-c", c, "--json", str(plan)],
                   check=True, capture_output=True)
    p = json.loads(plan.read_text())
    assert [g[3] for g in p["gathers"]] == [0, 1], "the scenario needs each sender to root one gather"
    monkeypatch.setenv("WEIGHTCAST_DEBUG_PROJECT_DELAY", "0:400")
    job = weightcast.JobConfig(t, i, c, deadline_s=30, plan_file=str(plan))
    transfer(job, weightcast.Controller(job))


def test_every_public_call_has_a_docstring():
    for cls in (weightcast.Controller, weightcast.Sender, weightcast.Receiver):
        for name in dir(cls):
            attr = getattr(cls, name)
            if name.startswith("_") or not callable(attr):
                continue
            text = (attr.__doc__ or "").split("\n", 2)  # pybind11: signature, blank, the text
            assert len(text) == 3 and text[2].strip(), f"{cls.__name__}.{name} has no docstring"
