"""weightcast.torch.trainer_spec on plain torch modules (Debian's python3-torch has no DTensor:
the FSDP2 / TP paths run on the device machine, tests/gpu/test_fsdp2_models.py): the spec read off
a module plans and carries a real step, byte for byte, and what a spec cannot say is refused
naming the parameter."""
import json
import threading

import pytest

import weightcast

torch = pytest.importorskip("torch")
wct = pytest.importorskip("weightcast.torch")


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 8, bias=False).to(torch.bfloat16)
        self.norm = torch.nn.Parameter(torch.arange(16, dtype=torch.float32))


def specs(tmp_path, model):
    spec = wct.write_trainer_spec(tmp_path / "trainer.json", model, {"dp": 2}, host="local",
                                  gpus_per_host=4, model_name="tiny")
    inference = {"format": "weightcast.spec/v1", "role": "inference",
                 "replicas": {"count": 1, "mesh": {"axes": [{"name": "tp", "size": 2}]},
                              "devices": {"host": "local", "gpus_per_host": 4, "first_gpu": 2}},
                 "params": [{"name": "proj.weight", "shape": [8, 16], "dtype": "bf16",
                             "placement": {"tp": "S(0)"}, "from": "proj.weight"},
                            {"name": "norm", "shape": [16], "dtype": "fp32", "from": "norm"}]}
    (tmp_path / "inference.json").write_text(json.dumps(inference))
    (tmp_path / "topology.json").write_text(json.dumps(
        {"format": "weightcast.topology/v1", "hosts": [{"name": "local", "gpus": 4}]}))
    return spec, [str(tmp_path / f"{n}.json") for n in ("trainer", "inference", "topology")]


def one_step(job, model, engine_of):
    """Step 1 from two data-parallel trainer ranks holding `model` whole into two receivers, each
    registering the module engine_of(rc) builds (after any checks it makes on rc.tensors());
    returns each receiver's parameters afterwards."""
    got, errors = {}, []
    with weightcast.Controller(job):
        def receive(r):
            try:
                with weightcast.Receiver(job, r) as rc:
                    engine = engine_of(rc)
                    assert rc.register_module(engine) == []
                    rc.publish()
                    rc.wait(1)
                    got[r] = {n: p.detach().clone() for n, p in engine.named_parameters()}
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(f"receiver {r}: {e!r}")

        threads = [threading.Thread(target=receive, args=(r,)) for r in range(2)]
        for th in threads:
            th.start()
        senders = [weightcast.Sender(job, s) for s in range(2)]
        for snd in senders:
            assert snd.register_module(model) == []
            snd.prepare()
        pushers = [threading.Thread(target=snd.push, args=(1,)) for snd in senders]
        for th in pushers:
            th.start()
        for th in pushers + threads:
            th.join()
        for snd in senders:
            snd.close()
    assert not errors, errors
    return got


def test_spec_of_a_plain_module(tmp_path):
    spec, _ = specs(tmp_path, Tiny())
    assert spec["mesh"] == {"axes": [{"name": "dp", "size": 2}],
                            "devices": {"host": "local", "gpus_per_host": 4}}
    # named_parameters() order: the module's own parameters, then its children's
    assert spec["params"] == [{"name": "norm", "shape": [16], "dtype": "fp32"},
                              {"name": "proj.weight", "shape": [8, 16], "dtype": "bf16"}]
    assert json.loads((tmp_path / "trainer.json").read_text()) == spec


def test_a_module_read_off_carries_a_step(tmp_path):
    torch.manual_seed(3)
    model = Tiny()
    _, (t, i, c) = specs(tmp_path, model)
    job = weightcast.JobConfig(t, i, c, deadline_s=30)

    def engine_of(rc):
        engine = torch.nn.Module()
        engine.proj = torch.nn.Module()
        engine.proj.register_parameter("weight", torch.nn.Parameter(torch.zeros(4, 16, dtype=torch.bfloat16), requires_grad=False))
        engine.norm = torch.nn.Parameter(torch.zeros(16), requires_grad=False)
        return engine

    got = one_step(job, model, engine_of)
    for r in range(2):
        assert torch.equal(got[r]["proj.weight"], model.proj.weight.detach()[4 * r:4 * r + 4])
        assert torch.equal(got[r]["norm"], model.norm.detach())


def test_what_a_spec_cannot_say_is_refused_by_name():
    with pytest.raises(ValueError, match="the module has no parameters"):
        wct.trainer_spec(torch.nn.Module(), {"dp": 1})
    m = Tiny()
    m.extra = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"parameter 'extra': dtype torch.float64 has no weightcast dtype"):
        wct.trainer_spec(m, {"dp": 1})
    with pytest.raises(ValueError, match="no DTensor parameters; pass mesh="):
        wct.trainer_spec(Tiny())
    with pytest.raises(ValueError, match="needs at least one axis"):
        wct.trainer_spec(Tiny(), {})


class Experts(torch.nn.Module):
    """transformers 4's MoE layout: one gate / up projection per expert."""

    def __init__(self, n=4, rows=4, cols=8):
        super().__init__()
        self.experts = torch.nn.ModuleList()
        for _ in range(n):
            e = torch.nn.Module()
            e.gate_proj = torch.nn.Linear(cols, rows, bias=False).to(torch.bfloat16)
            e.up_proj = torch.nn.Linear(cols, rows, bias=False).to(torch.bfloat16)
            self.experts.append(e)


def test_per_expert_weights_land_stacked_as_fused_moe_holds_them(tmp_path):
    """The receivers' tensors are [experts, 2*rows, cols] (FusedMoE's w13), registered as torch
    parameters of that shape; the spec stacks the per-expert weights whole over EP."""
    torch.manual_seed(5)
    model = Experts()
    wct.write_trainer_spec(tmp_path / "trainer.json", model, {"dp": 2}, host="local", gpus_per_host=4)
    parts = [f"experts.{e}.{n}.weight" for e in range(4) for n in ("gate_proj", "up_proj")]
    (tmp_path / "inference.json").write_text(json.dumps({
        "format": "weightcast.spec/v1", "role": "inference",
        "replicas": {"count": 1, "mesh": {"axes": [{"name": "ep", "size": 2}]},
                     "devices": {"host": "local", "gpus_per_host": 4, "first_gpu": 2}},
        "params": [{"name": "experts.w13_weight", "shape": [32, 8], "dtype": "bf16", "view_items": 4,
                    "placement": {"ep": "S(0)"},
                    "from": {"concat": parts, "dim": 0, "shard": "whole"}}]}))
    (tmp_path / "topology.json").write_text(json.dumps(
        {"format": "weightcast.topology/v1", "hosts": [{"name": "local", "gpus": 4}]}))
    job = weightcast.JobConfig(*[str(tmp_path / f"{n}.json") for n in ("trainer", "inference", "topology")],
                               deadline_s=30)

    def engine_of(rc):
        (info,) = rc.tensors()
        assert info.shape == [2, 8, 8], info.shape
        engine = torch.nn.Module()
        engine.experts = torch.nn.Module()
        engine.experts.w13_weight = torch.nn.Parameter(torch.zeros(2, 8, 8, dtype=torch.bfloat16),
                                                       requires_grad=False)
        return engine

    got = {r: t["experts.w13_weight"] for r, t in one_step(job, model, engine_of).items()}
    for r in range(2):
        want = torch.stack([torch.cat([model.experts[e].gate_proj.weight, model.experts[e].up_proj.weight])
                            for e in (2 * r, 2 * r + 1)]).detach()
        assert torch.equal(got[r], want)
