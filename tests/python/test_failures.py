"""What the library does when a step fails, driven as an RL job drives it: a push that fails
mid-step and is retried (the aborted attempt's writes arrive late and must never count), a
receiver killed mid-step (its senders name it within one deadline), steps minutes apart. Real
peers over tcp;ofi_rxm on loopback; faults come from the fault-injecting layer beside the real
provider (JobConfig.faults) or from a real SIGKILL."""
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import weightcast
from test_api import COLS, ROWS, bf16_to_f32, full_weights
from test_api import write_specs as write_specs_with_gathers


def write_specs(tmp_path):
    """test_api's job, planned without gathers (a gather's cost outweighs any write saved), so
    each sender's ops are: one warm-up write per receiver in prepare, then the step's writes."""
    t, i, c = write_specs_with_gathers(tmp_path)
    topo = json.loads(open(c).read())
    topo["hosts"][0]["gather_us"] = 1000
    with open(c, "w") as f:
        f.write(json.dumps(topo))
    return t, i, c


def make_receiver(job, r, faults=""):
    job.faults = faults
    rc = weightcast.Receiver(job, r)
    bufs = {}
    for info in rc.tensors():
        dt = np.uint16 if info.dtype == "bf16" else np.float32
        bufs[info.name] = np.zeros(info.shape, dtype=dt)
        rc.register_tensor(info.name, bufs[info.name])
    rc.publish()
    return rc, bufs


def make_sender(job, s, faults=""):
    job.faults = faults
    snd = weightcast.Sender(job, s)
    shard = np.zeros((ROWS // 2, COLS), dtype=np.uint16)
    snd.register_tensor("w", shard)
    return snd, shard


def run_all(calls):
    """Runs each (name, fn) on its own thread; returns name -> result or the exception raised."""
    out = {}

    def go(name, fn):
        try:
            out[name] = fn()
        except Exception as e:  # noqa: BLE001 - the caller checks
            out[name] = e

    threads = [threading.Thread(target=go, args=c) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(out) == len(calls), f"a peer hung: {sorted(out)}"
    return out


def check_bytes(bufs, r, step):
    full = full_weights(step)
    np.testing.assert_array_equal(bufs["w"], full[:, r * COLS // 2:(r + 1) * COLS // 2])
    np.testing.assert_array_equal(bufs["w32"], bf16_to_f32(full[r * ROWS // 2:(r + 1) * ROWS // 2]))


def test_a_failed_push_is_retried_and_the_aborted_attempts_late_writes_never_count(tmp_path):
    t, i, c = write_specs(tmp_path)
    job = weightcast.JobConfig(t, i, c, deadline_s=10)
    job.metrics_file = str(tmp_path / "metrics.jsonl")
    ctl = weightcast.Controller(job)  # noqa: F841
    # Receiver 0 holds back the first arrival of attempt 1 and delivers it only after the retry's
    # first arrival; sender 0's second write of the step (after one warm-up write per receiver in prepare) is refused by its NIC.
    (r0, b0), (r1, b1) = make_receiver(job, 0, "hold_arrivals=1:1"), make_receiver(job, 1)
    (s0, sh0), (s1, sh1) = make_sender(job, 0, "fail_post=4"), make_sender(job, 1)
    s0.prepare()
    s1.prepare()
    for s, sh in ((0, sh0), (1, sh1)):
        sh[:] = full_weights(1)[s * ROWS // 2:(s + 1) * ROWS // 2]
    peers = {"r0": lambda: r0.wait(1), "r1": lambda: r1.wait(1),
             "s0": lambda: s0.push(1), "s1": lambda: s1.push(1)}
    first = run_all(list(peers.items()))
    assert isinstance(first["s0"], RuntimeError), first["s0"]
    assert "injected post failure" in str(first["s0"])
    # A receiver that still missed writes of sender 0 fails: told by its abort at once, or (if
    # the abort was the arrival held back) at its deadline. One that had all it expects before
    # the failure may succeed; the job retries the step on every peer all the same.
    failed = [r for r in ("r0", "r1") if isinstance(first[r], Exception)]
    assert failed, first
    assert any("sender(s) 0 aborted" in str(first[r]) for r in failed), first
    # The retry: the same step on every peer; the shards still hold its weights.
    again = run_all(list(peers.items()))
    for name, res in again.items():
        assert not isinstance(res, Exception), f"{name}: {res!r}"
    check_bytes(b0, 0, 1)
    check_bytes(b1, 1, 1)
    # The late delivery happened during the retry, and was dropped as stale.
    assert again["r0"].stale >= 1, again["r0"].stale
    # And the job goes on.
    for s, sh in ((0, sh0), (1, sh1)):
        sh[:] = full_weights(2)[s * ROWS // 2:(s + 1) * ROWS // 2]
    step2 = run_all([("r0", lambda: r0.wait(2)), ("r1", lambda: r1.wait(2)),
                     ("s0", lambda: s0.push(2)), ("s1", lambda: s1.push(2))])
    for name, res in step2.items():
        assert not isinstance(res, Exception), f"{name}: {res!r}"
    check_bytes(b0, 0, 2)
    check_bytes(b1, 1, 2)
    # The metrics record every attempt: sender 0's failed one with its error, then the retry.
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    s0_recs = [(r["step"], r["attempt"], r["ok"]) for r in recs if (r["role"], r["rank"]) == ("trainer", 0)]
    assert s0_recs == [(1, 1, False), (1, 2, True), (2, 1, True)], s0_recs
    assert "injected post failure" in next(r["error"] for r in recs if not r["ok"] and r["role"] == "trainer")
    r0_step1 = [r for r in recs if (r["role"], r["rank"], r["step"]) == ("inference", 0, 1)]
    assert [r["attempt"] for r in r0_step1] == [1, 2] and r0_step1[-1]["stale"] >= 1


RECEIVER_THAT_DIES = textwrap.dedent("""
    import sys, numpy as np, weightcast
    t, i, c, rdv, token = sys.argv[1:6]
    job = weightcast.JobConfig(t, i, c, rendezvous=rdv, token=token, deadline_s=8)
    rc = weightcast.Receiver(job, 1)
    for info in rc.tensors():
        rc.register_tensor(info.name, np.zeros(info.nbytes, dtype=np.uint8))
    rc.publish()
    sys.stdin.readline()  # the senders are prepared: the step starts
    rc.wait(1)  # WEIGHTCAST_DEBUG_DIE_AFTER_ARM=1: SIGKILL right after it armed
""")


def test_a_receiver_killed_mid_step_is_named_by_its_senders_within_one_deadline(tmp_path):
    t, i, c = write_specs(tmp_path)
    deadline = 8
    job = weightcast.JobConfig(t, i, c, deadline_s=deadline)
    ctl = weightcast.Controller(job)
    assert ctl.lost_peers() == []
    env = dict(os.environ, WEIGHTCAST_DEBUG_DIE_AFTER_ARM="1")
    child = subprocess.Popen([sys.executable, "-c", RECEIVER_THAT_DIES, t, i, c, job.rendezvous,
                              job.token], env=env, stdin=subprocess.PIPE, text=True)
    r0, b0 = make_receiver(job, 0)
    (s0, sh0), (s1, sh1) = make_sender(job, 0), make_sender(job, 1)
    s0.prepare()
    s1.prepare()
    for s, sh in ((0, sh0), (1, sh1)):
        sh[:] = full_weights(1)[s * ROWS // 2:(s + 1) * ROWS // 2]
    child.stdin.write("go\n")
    child.stdin.flush()
    t0 = time.monotonic()
    res = run_all([("s0", lambda: s0.push(1)), ("s1", lambda: s1.push(1)),
                   ("r0", lambda: r0.wait(1))])
    took = time.monotonic() - t0
    assert child.wait(30) == -9  # it really died of SIGKILL
    # Both senders write to it: both fail naming it (a write error, which completions that mean
    # delivery give at once, or their deadline).
    for s in ("s0", "s1"):
        assert isinstance(res[s], (RuntimeError, TimeoutError)), res[s]
        assert re.search(r"receiver 1\b", str(res[s])), res[s]
    assert ctl.lost_peers() == ["inference 1"]
    # Within one deadline of the step's start (plus the drain's and abort's second).
    assert took < deadline + 5, took


@pytest.mark.skipif(os.environ.get("WC_LONG_TESTS") != "1",
                    reason="a 65 s pause: scripts/soak.sh runs it (WC_LONG_TESTS=1)")
def test_steps_minutes_apart_keep_working(tmp_path):
    """A pause longer than every timeout of the control plane: the 5 s handshake deadline, the
    job's 3 s deadline, the rendezvous' 60 s longest wait and 60 s TCP keepalive idle time (the
    30 s idle drop it used to have is gone). The peers hold their peer tokens only."""
    t, i, c = write_specs(tmp_path)
    job = weightcast.JobConfig(t, i, c, deadline_s=3)
    ctl = weightcast.Controller(job)

    def own(role, rank):  # what a launcher hands each process: its own credential
        j = weightcast.JobConfig(t, i, c, deadline_s=3)
        j.rendezvous = job.rendezvous
        j.token = ctl.peer_token(role, rank)
        return j

    (r0, b0), (r1, b1) = make_receiver(own("inference", 0), 0), make_receiver(own("inference", 1), 1)
    (s0, sh0), (s1, sh1) = make_sender(own("trainer", 0), 0), make_sender(own("trainer", 1), 1)
    s0.prepare()
    s1.prepare()
    for step in (1, 2):
        if step == 2:
            time.sleep(65)
        for s, sh in ((0, sh0), (1, sh1)):
            sh[:] = full_weights(step)[s * ROWS // 2:(s + 1) * ROWS // 2]
        res = run_all([("r0", lambda: r0.wait(step)), ("r1", lambda: r1.wait(step)),
                       ("s0", lambda: s0.push(step)), ("s1", lambda: s1.push(step))])
        for name, v in res.items():
            assert not isinstance(v, Exception), f"step {step} {name}: {v!r}"
        check_bytes(b0, 0, step)
        check_bytes(b1, 1, step)
