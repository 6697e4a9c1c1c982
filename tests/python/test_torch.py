"""Torch tensors straight into register_tensor (Debian's python3-torch, CPU): a bf16 transfer
checked byte for byte, and every kind of mistake refused with the tensor's name before anything
is published. Skips where torch is not installed."""
import threading

import numpy as np
import pytest

import weightcast
from test_api import COLS, ROWS, full_weights, write_specs

torch = pytest.importorskip("torch")


def as_bf16(u16):
    return torch.from_numpy(u16.astype(np.int16)).view(torch.bfloat16)


def test_torch_tensors_carry_a_step_byte_exact(tmp_path):
    t, i, c = write_specs(tmp_path)
    job = weightcast.JobConfig(t, i, c, deadline_s=30)
    with weightcast.Controller(job) as ctl:
        got, errors = {}, []

        def receiver(r):
            try:
                with weightcast.Receiver(job, r) as rc:
                    bufs = {}
                    for info in rc.tensors():
                        dt = torch.bfloat16 if info.dtype == "bf16" else torch.float32
                        bufs[info.name] = torch.zeros(info.shape, dtype=dt)
                        rc.register_tensor(info.name, bufs[info.name])
                    rc.publish()
                    rc.wait(1)
                    got[r] = {k: v.clone() for k, v in bufs.items()}
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=receiver, args=(r,)) for r in range(2)]
        for th in threads:
            th.start()
        full = full_weights(1)
        senders = []
        for s in range(2):
            snd = weightcast.Sender(job, s)
            shard = as_bf16(full[s * ROWS // 2:(s + 1) * ROWS // 2]).clone()
            snd.register_tensor("w", shard)
            senders.append((snd, shard))
        for snd, _ in senders:
            snd.prepare()
        pushers = [threading.Thread(target=snd.push, args=(1,)) for snd, _ in senders]
        for th in pushers:
            th.start()
        for th in pushers + threads:
            th.join()
        assert not errors, errors
        ref = as_bf16(full)
        for r in range(2):  # TP columns of the bf16 tensor, TP rows of the fp32 cast
            assert torch.equal(got[r]["w"], ref[:, r * COLS // 2:(r + 1) * COLS // 2])
            assert torch.equal(got[r]["w32"], ref.float()[r * ROWS // 2:(r + 1) * ROWS // 2])
        for snd, _ in senders:
            snd.close()


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
