"""Real transformers models under FSDP2, read and sent as a user's job would (needs torch >= 2.6
with DTensor and transformers; runs on the device machine, CPU processes on gloo):

- the model (Llama with 1 kv head and a 1000-row vocab, Qwen3-MoE with transformers 5's fused
  experts; random weights, bf16) is built in 4 processes and sharded with fully_shard;
- its trainer spec is read off the DTensors (weightcast.torch.trainer_spec) and the inference
  spec comes from `weightcast spec` on the model's config.json (vLLM's layout: TP2 with the kv
  head replicated and the vocab padded, or DP2 attention with EP2 experts);
- Sender.register_module registers each rank's local shards, Receiver.register_module a module
  laid out as vLLM lays it; two steps are pushed;
- every received tensor is compared with one built here from the model's full state dict, with
  the engine's rules written out independently."""
import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
try:
    from torch.distributed.fsdp import fully_shard  # noqa: F401  (FSDP2, torch >= 2.6)
except ImportError:
    pytest.skip(f"torch {torch.__version__} without FSDP2 (fully_shard)", allow_module_level=True)

import weightcast  # noqa: E402
import weightcast.torch as wct  # noqa: E402

BIN = os.environ.get("WEIGHTCAST_BIN", str(Path(__file__).resolve().parents[2] / "build" / "weightcast"))
TRAINERS = 4

MODELS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=1, head_dim=64, vocab_size=1000, tie_word_embeddings=False),
              ["--inference", "tp=2"]),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
                       num_experts=8, num_experts_per_tok=2, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=1024,
                       tie_word_embeddings=False),
                  ["--inference", "dp=2", "--expert-parallel", "--trainer-experts", "hf"]),
}


def build_model(kind):
    cfg_cls, model_cls, kw, _ = MODELS[kind]
    cfg = getattr(transformers, cfg_cls)(**kw)
    torch.manual_seed(0)
    return cfg, getattr(transformers, model_cls)(cfg).to(torch.bfloat16)


def trainer(rank, kind, out, job_file, port):
    """One FSDP2 rank: shard, write the spec (rank 0), register, push steps 1 and 2."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=TRAINERS)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cpu", (TRAINERS,), mesh_dim_names=("fsdp",))
    _, model = build_model(kind)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if rank == 0:
        wct.write_trainer_spec(out / "trainer.json", model, mesh, host="local", gpus_per_host=16,
                               model_name=kind)
    torch.distributed.barrier()
    while not job_file.exists():  # the parent starts the controller on the written spec
        threading.Event().wait(0.05)
    j = json.loads(job_file.read_text())
    job = weightcast.JobConfig(str(out / "trainer.json"), str(out / "inference.json"),
                               str(out / "topology.json"), rendezvous=j["rendezvous"], token=j["token"])
    with weightcast.Sender(job, rank) as snd:
        unused = snd.register_module(model)
        assert unused == [], unused
        snd.prepare()
        snd.push(1)
        with torch.no_grad():
            for p in model.parameters():
                p.to_local().mul_(2)  # step 2: every weight doubled, shard by shard
        snd.push(2)
    torch.distributed.destroy_process_group()


def receiver_module(infos):
    """A module whose named_parameters() are the receiver's tensors, as an engine holds them."""
    root = torch.nn.Module()
    for info in infos:
        *path, leaf = info.model_name.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, torch.nn.Module())
            mod = getattr(mod, part)
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[info.dtype]
        mod.register_parameter(leaf, torch.nn.Parameter(torch.zeros(info.shape, dtype=dtype), requires_grad=False))
    return root


def expected(kind, full, name, rank):
    """vLLM's tensor `name` on `rank` of the replica, built from the full state dict."""
    pre = name.rsplit(".", 2)[0] if ".layers." in name else ""
    if kind == "llama":
        tp, kv_heads, hd = 2, 1, 64
        if name.endswith("qkv_proj.weight"):
            q = full[pre + ".q_proj.weight"].chunk(tp)[rank]
            kv_head = rank * kv_heads // tp  # one kv head, replicated on both ranks
            k = full[pre + ".k_proj.weight"][kv_head * hd:(kv_head + 1) * hd]
            v = full[pre + ".v_proj.weight"][kv_head * hd:(kv_head + 1) * hd]
            return torch.cat([q, k, v])
        if name.endswith("gate_up_proj.weight"):
            return torch.cat([full[pre + ".gate_proj.weight"].chunk(tp)[rank], full[pre + ".up_proj.weight"].chunk(tp)[rank]])
        if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
            return full[name].chunk(tp, dim=1)[rank]
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            padded = torch.zeros(1024, full[name].shape[1], dtype=full[name].dtype)
            padded[:1000] = full[name]  # vLLM pads the vocab to a multiple of 64
            return padded.chunk(tp)[rank]
        return full[name]
    if name.endswith("qkv_proj.weight"):  # DP attention: whole on every rank
        return torch.cat([full[pre + f".{n}_proj.weight"] for n in "qkv"])
    if name.endswith("experts.w13_weight"):
        return full[name.replace("w13_weight", "gate_up_proj")][4 * rank:4 * rank + 4]
    if name.endswith("experts.w2_weight"):
        return full[name.replace("w2_weight", "down_proj")][4 * rank:4 * rank + 4]
    return full[name]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_fsdp2_model_into_vllm_layout(tmp_path, kind):
    cfg, _ = build_model(kind)
    (tmp_path / "config.json").write_text(cfg.to_json_string())
    args = MODELS[kind][3] + ["--trainer", f"fsdp={TRAINERS}", "--fp8", "none", "--single-host", "local",
                              "--gpus-per-host", "16"]
    run = subprocess.run([BIN, "spec", "--no-plan", "--config", str(tmp_path / "config.json"), "-o", str(tmp_path)] + args,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    generated = json.loads((tmp_path / "trainer.json").read_text())
    (tmp_path / "trainer.json").unlink()
    job_file = tmp_path / "job.json"
    ctx = torch.multiprocessing.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=trainer, args=(r, kind, tmp_path, job_file, port)) for r in range(TRAINERS)]
    for p in procs:
        p.start()
    try:
        while not (tmp_path / "trainer.json").exists():
            assert all(p.exitcode in (None, 0) for p in procs), "a trainer died before writing its spec"
            threading.Event().wait(0.05)
        read = json.loads((tmp_path / "trainer.json").read_text())
        # What the live model holds is what the generator assumed it would: same names, shapes
        # (named dims resolved) and dtypes.
        dims = generated.get("dims", {})
        held = {p["name"]: (p["shape"], p["dtype"]) for p in read["params"]}
        assumed = {}
        for p in generated["params"]:
            lo, hi = p.get("for", {}).get("i", [0, 1])
            shape = [dims.get(d, d) if isinstance(d, str) and "*" not in d else
                     2 * dims[d[2:]] if isinstance(d, str) else d for d in p["shape"]]
            for i in range(lo, hi):
                assumed[p["name"].replace("{i}", str(i))] = (shape, p["dtype"])
        assert held == assumed
        assert all(p.get("placement", {}).get("fsdp") == "Shard(dim=0)" for p in read["params"])
        job = weightcast.JobConfig(str(tmp_path / "trainer.json"), str(tmp_path / "inference.json"),
                                   str(tmp_path / "topology.json"))
        with weightcast.Controller(job):
            got, errors = {}, []

            def receive(r):
                try:
                    with weightcast.Receiver(job, r) as rc:
                        module = receiver_module(rc.tensors())
                        assert rc.register_module(module) == []
                        rc.publish()
                        for step in (1, 2):
                            rc.wait(step)
                            got[(r, step)] = {n: p.detach().clone() for n, p in module.named_parameters()}
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(f"receiver {r}: {e!r}")

            threads = [threading.Thread(target=receive, args=(r,)) for r in range(2)]
            for th in threads:
                th.start()
            job_file.write_text(json.dumps({"rendezvous": job.rendezvous, "token": job.token}))
            for p in procs:
                p.join(timeout=300)
            for th in threads:
                th.join(timeout=60)
            assert not errors, errors
            assert [p.exitcode for p in procs] == [0] * TRAINERS
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    _, reference = build_model(kind)
    full = {n: t.detach() for n, t in reference.state_dict().items()}
    checked = 0
    for (r, step), tensors in got.items():
        for name, t in tensors.items():
            want = expected(kind, full, name, r) * step  # doubling is exact in bf16
            assert t.shape == want.shape, (name, r, t.shape, want.shape)
            assert torch.equal(t, want), f"step {step} rank {r} {name} differs"
            checked += t.numel()
    assert len(got) == 4 and checked > 0
    print(f"{kind}: {checked} elements checked on 2 receivers over 2 steps")
