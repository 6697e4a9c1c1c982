"""Torch tensors straight into register_tensor and whole modules into register_module (Debian's
python3-torch, CPU): bf16 transfers checked byte for byte, and every kind of mistake refused with
the tensor's name before anything is published. Skips where torch is not installed."""
import threading

import numpy as np
import pytest

import weightcast
from test_api import COLS, ROWS, full_weights, write_specs

torch = pytest.importorskip("torch")


def as_bf16(u16):
    return torch.from_numpy(u16.astype(np.int16)).view(torch.bfloat16)


def one_step(job, setup_receiver, setup_sender):
    """Step 1 through two receivers (threads) and two senders; setup_receiver(rc) registers and
    returns a dict of the tensors to read back, setup_sender(snd, shard) registers the shard."""
    got, errors = {}, []

    def receiver(r):
        try:
            with weightcast.Receiver(job, r) as rc:
                bufs = setup_receiver(rc)
                rc.publish()
                rc.wait(1)
                got[r] = {k: v.detach().clone() for k, v in bufs.items()}
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=receiver, args=(r,)) for r in range(2)]
    for th in threads:
        th.start()
    full = full_weights(1)
    senders = []
    for s in range(2):
        snd = weightcast.Sender(job, s)
        setup_sender(snd, as_bf16(full[s * ROWS // 2:(s + 1) * ROWS // 2]).clone())
        senders.append(snd)
    for snd in senders:
        snd.prepare()
    pushers = [threading.Thread(target=snd.push, args=(1,)) for snd in senders]
    for th in pushers:
        th.start()
    for th in pushers + threads:
        th.join()
    assert not errors, errors
    ref = as_bf16(full)
    for r in range(2):  # TP columns of the bf16 tensor, TP rows of the fp32 cast
        assert torch.equal(got[r]["w"], ref[:, r * COLS // 2:(r + 1) * COLS // 2])
        assert torch.equal(got[r]["w32"], ref.float()[r * ROWS // 2:(r + 1) * ROWS // 2])
    for snd in senders:
        snd.close()


def test_torch_tensors_carry_a_step_byte_exact(tmp_path):
    t, i, c = write_specs(tmp_path)
    job = weightcast.JobConfig(t, i, c, deadline_s=30)
    kept = []

    def setup_receiver(rc):
        bufs = {}
        for info in rc.tensors():
            dt = torch.bfloat16 if info.dtype == "bf16" else torch.float32
            bufs[info.name] = torch.zeros(info.shape, dtype=dt)
            rc.register_tensor(info.name, bufs[info.name])
        return bufs

    def setup_sender(snd, shard):
        kept.append(shard)
        snd.register_tensor("w", shard)

    with weightcast.Controller(job):
        one_step(job, setup_receiver, setup_sender)


def test_torch_mistakes_are_refused_by_name(tmp_path):
    t, i, c = write_specs(tmp_path)
    job = weightcast.JobConfig(t, i, c, deadline_s=5)
    ctl = weightcast.Controller(job)  # noqa: F841 - keeps the rendezvous alive
    rc = weightcast.Receiver(job, 0)
    shape = next(x.shape for x in rc.tensors() if x.name == "w")  # [8, 8]
    with pytest.raises(ValueError, match=r"register_tensor\('w'\): a torch.float32 tensor, but the plan's tensor is bf16"):
        rc.register_tensor("w", torch.zeros(shape, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"register_tensor\('w'\): shape \[4, 16\], the plan's is \[8, 8\]"):
        rc.register_tensor("w", torch.zeros((4, 16), dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"not contiguous"):
        rc.register_tensor("w", torch.zeros((8, 16), dtype=torch.bfloat16)[:, :8])
    with pytest.raises(ValueError, match=r"not contiguous"):
        rc.register_tensor("w", torch.zeros((8, 8), dtype=torch.bfloat16).t())
    good = torch.zeros(shape, dtype=torch.bfloat16)
    rc.register_tensor("w", good)
    with pytest.raises(ValueError, match=r"register_tensor\('w'\): registered already \(receiver 0\)"):
        rc.register_tensor("w", torch.zeros(shape, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="holds no such tensor"):
        rc.register_tensor("nope", good)
    rc.close()
    with pytest.raises(ValueError, match="closed"):
        rc.tensors()


class Engine(torch.nn.Module):
    """An inference engine's model as its weight-transfer backend sees it: named parameters."""

    def __init__(self, tensors, wrong=None):
        super().__init__()
        for info in tensors:
            dt = torch.bfloat16 if info.dtype == "bf16" else torch.float32
            if info.model_name == wrong:
                dt = torch.float16
            self.register_parameter(info.model_name, torch.nn.Parameter(torch.zeros(info.shape, dtype=dt),
                                                                        requires_grad=False))
        self.register_parameter("rotary_inv_freq", torch.nn.Parameter(torch.zeros(4), requires_grad=False))


def test_register_module_matches_named_parameters_and_refuses_mismatches(tmp_path):
    t, i, c = write_specs(tmp_path)
    job = weightcast.JobConfig(t, i, c, deadline_s=30)
    with weightcast.Controller(job):
        with weightcast.Receiver(job, 0) as rc:
            bad = Engine(rc.tensors(), wrong="w32")
            del bad.w
            with pytest.raises(ValueError, match=r"register_module: 2 problem\(s\), nothing registered: "
                                                 r"'w' is not a parameter of the module; "
                                                 r"register_tensor\('w32'\): a torch.float16 tensor"):
                rc.register_module(bad)
            with pytest.raises(ValueError, match="tensors not bound"):
                rc.publish()  # nothing was registered
        kept = []

        def setup_receiver(rc):
            model = Engine(rc.tensors())
            assert rc.register_module(model) == ["rotary_inv_freq"]
            return dict(model.named_parameters())

        def setup_sender(snd, shard):
            trainer = torch.nn.Module()
            trainer.w = torch.nn.Parameter(shard, requires_grad=False)
            kept.append(trainer)
            assert snd.register_module(trainer) == []

        one_step(job, setup_receiver, setup_sender)
