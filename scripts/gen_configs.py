#!/usr/bin/env python3
"""Generates configs/<model>/{trainer,inference,topology}.json from published model numbers.

Named dims (the "dims" table) are what `--scale` shrinks; literal numbers (expert counts, layer
counts) are layout and never shrink. Run: scripts/gen_configs.py [--out configs]
"""
import argparse
import json
import os

SPEC = "weightcast.spec/v1"
TOPO = "weightcast.topology/v1"
FP8 = {"block": [128, 128]}


def p(name, shape, placement=None, dtype="bf16", **kw):
    d = {"name": name, "shape": shape, "dtype": dtype}
    if placement:
        d["placement"] = placement
    d.update(kw)
    return d


def q(name, scale_name):
    """Inference fields for an FP8 128x128 block-quantized weight."""
    return {"dtype": "fp8_e4m3", "quant": dict(FP8, scale=scale_name)}


def host_group(name, count, gpus=8, nics=1, gbps=400.0):
    return {"name": name, "for": {"h": [0, count]}, "gpus": gpus, "nics_per_gpu": nics,
            "nic_gbps": gbps, "nvlink_gbps": 3600.0}


def llama_8b():
    dims = {"hidden": 4096, "mlp": 14336, "q": 4096, "kv": 1024, "vocab": 128256}
    L = 32
    fs = {"fsdp": "S(0)"}
    li = {"i": [0, L]}
    tp = [
        p("model.embed_tokens.weight", ["vocab", "hidden"], fs),
        p("model.layers.{i}.self_attn.q_proj.weight", ["q", "hidden"], fs, **{"for": li}),
        p("model.layers.{i}.self_attn.k_proj.weight", ["kv", "hidden"], fs, **{"for": li}),
        p("model.layers.{i}.self_attn.v_proj.weight", ["kv", "hidden"], fs, **{"for": li}),
        p("model.layers.{i}.self_attn.o_proj.weight", ["hidden", "q"], fs, **{"for": li}),
        p("model.layers.{i}.mlp.gate_proj.weight", ["mlp", "hidden"], fs, **{"for": li}),
        p("model.layers.{i}.mlp.up_proj.weight", ["mlp", "hidden"], fs, **{"for": li}),
        p("model.layers.{i}.mlp.down_proj.weight", ["hidden", "mlp"], fs, **{"for": li}),
        p("model.layers.{i}.input_layernorm.weight", ["hidden"], fs, **{"for": li}),
        p("model.layers.{i}.post_attention_layernorm.weight", ["hidden"], fs, **{"for": li}),
        p("model.norm.weight", ["hidden"], fs),
        p("lm_head.weight", ["vocab", "hidden"], fs),
    ]
    trainer = {"format": SPEC, "role": "trainer", "model": "Llama-3.1-8B", "dims": dims,
               "mesh": {"axes": [{"name": "fsdp", "size": 8}],
                        "devices": {"host": "trn{h}", "gpus_per_host": 8}},
               "params": tp}
    col, row = {"tp": "S(0)"}, {"tp": "S(1)"}
    ip = [
        p("model.embed_tokens.weight", ["vocab", "hidden"], col, **{"from": "model.embed_tokens.weight"}),
        p("model.layers.{i}.self_attn.qkv_proj.weight", ["q+2kv", "hidden"], col, **{
            "for": li, "from": {"concat": ["model.layers.{i}.self_attn.q_proj.weight",
                                           "model.layers.{i}.self_attn.k_proj.weight",
                                           "model.layers.{i}.self_attn.v_proj.weight"], "dim": 0}}),
        p("model.layers.{i}.self_attn.o_proj.weight", ["hidden", "q"], row,
          **{"for": li, "from": "model.layers.{i}.self_attn.o_proj.weight"}),
        p("model.layers.{i}.mlp.gate_up_proj.weight", ["2*mlp", "hidden"], col, **{
            "for": li, "from": {"concat": ["model.layers.{i}.mlp.gate_proj.weight",
                                           "model.layers.{i}.mlp.up_proj.weight"], "dim": 0}}),
        p("model.layers.{i}.mlp.down_proj.weight", ["hidden", "mlp"], row,
          **{"for": li, "from": "model.layers.{i}.mlp.down_proj.weight"}),
        p("model.layers.{i}.input_layernorm.weight", ["hidden"], None,
          **{"for": li, "from": "model.layers.{i}.input_layernorm.weight"}),
        p("model.layers.{i}.post_attention_layernorm.weight", ["hidden"], None,
          **{"for": li, "from": "model.layers.{i}.post_attention_layernorm.weight"}),
        p("model.norm.weight", ["hidden"], None, **{"from": "model.norm.weight"}),
        p("lm_head.weight", ["vocab", "hidden"], col, **{"from": "lm_head.weight"}),
    ]
    idims = dict(dims)
    idims["q+2kv"] = dims["q"] + 2 * dims["kv"]
    inference = {"format": SPEC, "role": "inference", "model": "Llama-3.1-8B (vLLM TP4 layout)",
                 "dims": idims,
                 "replicas": {"count": 2, "mesh": {"axes": [{"name": "tp", "size": 4}]},
                              "devices": {"host": "inf{h}", "gpus_per_host": 8}},
                 "params": ip}
    topo = {"format": TOPO, "name": "1 trainer host, 1 inference host, 8x400G each",
            "hosts": [host_group("trn{h}", 1), host_group("inf{h}", 1)]}
    return trainer, inference, topo


def qwen3_30b():
    dims = {"hidden": 2048, "q": 4096, "kv": 512, "head": 128, "moe": 768, "vocab": 151936}
    L, E = 48, 128
    li = {"i": [0, L]}
    le = {"i": [0, L], "e": [0, E]}
    dense = {"fsdp": "S(0)"}  # replicated over ep: four copies to balance from
    expert = {"ep": "O({e/32})", "fsdp": "S(0)"}
    pre = "model.layers.{i}"
    tp = [p("model.embed_tokens.weight", ["vocab", "hidden"], dense)]
    for n, s in [("q_proj", ["q", "hidden"]), ("k_proj", ["kv", "hidden"]), ("v_proj", ["kv", "hidden"]),
                 ("o_proj", ["hidden", "q"]), ("q_norm", ["head"]), ("k_norm", ["head"])]:
        tp.append(p(pre + ".self_attn." + n + ".weight", s, dense, **{"for": li}))
    tp.append(p(pre + ".mlp.gate.weight", [E, "hidden"], dense, **{"for": li}))
    for n, s in [("gate_proj", ["moe", "hidden"]), ("up_proj", ["moe", "hidden"]), ("down_proj", ["hidden", "moe"])]:
        tp.append(p(pre + ".mlp.experts.{e}." + n + ".weight", s, expert, **{"for": le}))
    for n in ["input_layernorm", "post_attention_layernorm"]:
        tp.append(p(pre + "." + n + ".weight", ["hidden"], dense, **{"for": li}))
    tp += [p("model.norm.weight", ["hidden"], dense), p("lm_head.weight", ["vocab", "hidden"], dense)]
    trainer = {"format": SPEC, "role": "trainer", "model": "Qwen3-30B-A3B", "dims": dims,
               "mesh": {"axes": [{"name": "ep", "size": 4}, {"name": "fsdp", "size": 8}],
                        "devices": {"host": "trn{h}", "gpus_per_host": 8}},
               "params": tp}
    ex = {"ep": "O({e/16})"}
    ip = [p("model.embed_tokens.weight", ["vocab", "hidden"], {"ep": "S(0)"}, **{"from": "model.embed_tokens.weight"}),
          p(pre + ".self_attn.qkv_proj.weight", ["q+2kv", "hidden"], None, **{
              "for": li, "from": {"concat": [pre + ".self_attn.q_proj.weight", pre + ".self_attn.k_proj.weight",
                                             pre + ".self_attn.v_proj.weight"], "dim": 0}}),
          p(pre + ".self_attn.o_proj.weight", ["hidden", "q"], None, **{"for": li, "from": pre + ".self_attn.o_proj.weight"})]
    for n in ["q_norm", "k_norm"]:
        ip.append(p(pre + ".self_attn." + n + ".weight", ["head"], None, **{"for": li, "from": pre + ".self_attn." + n + ".weight"}))
    ip.append(p(pre + ".mlp.gate.weight", [E, "hidden"], None, **{"for": li, "from": pre + ".mlp.gate.weight"}))
    ip.append(p(pre + ".mlp.experts.{e}.gate_up_proj.weight", ["2*moe", "hidden"], ex, **{
        "for": le, "from": {"concat": [pre + ".mlp.experts.{e}.gate_proj.weight", pre + ".mlp.experts.{e}.up_proj.weight"], "dim": 0},
        **q("", pre + ".mlp.experts.{e}.gate_up_proj.weight_scale_inv")}))
    ip.append(p(pre + ".mlp.experts.{e}.down_proj.weight", ["hidden", "moe"], ex, **{
        "for": le, "from": pre + ".mlp.experts.{e}.down_proj.weight",
        **q("", pre + ".mlp.experts.{e}.down_proj.weight_scale_inv")}))
    for n in ["input_layernorm", "post_attention_layernorm"]:
        ip.append(p(pre + "." + n + ".weight", ["hidden"], None, **{"for": li, "from": pre + "." + n + ".weight"}))
    ip += [p("model.norm.weight", ["hidden"], None, **{"from": "model.norm.weight"}),
           p("lm_head.weight", ["vocab", "hidden"], {"ep": "S(0)"}, **{"from": "lm_head.weight"})]
    idims = dict(dims)
    idims["q+2kv"] = dims["q"] + 2 * dims["kv"]
    inference = {"format": SPEC, "role": "inference",
                 "model": "Qwen3-30B-A3B (attention replicated, experts EP8, FP8 128x128 experts)",
                 "dims": idims,
                 "replicas": {"count": 4, "mesh": {"axes": [{"name": "ep", "size": 8}]},
                              "devices": {"host": "inf{h}", "gpus_per_host": 8}},
                 "params": ip}
    topo = {"format": TOPO, "name": "4 trainer hosts, 4 inference hosts, 8x400G each",
            "hosts": [host_group("trn{h}", 4), host_group("inf{h}", 4)]}
    return trainer, inference, topo


def mla_model(name, layers, dense_layers, experts, heads, vocab, trainer_axes, stage, inf_replicas,
              trainer_hosts, inf_hosts):
    """DeepSeek-V3 family: MLA attention, one shared expert, stacked routed experts (vLLM layout)."""
    dims = {"hidden": 7168, "inter": 18432, "moe": 2048, "q_lora": 1536, "kv_lora": 512,
            "rope": 64, "kv_a": 576, "q_b": heads * 192, "kv_b": heads * 256, "o": heads * 128,
            "vocab": vocab}
    L, E = layers, experts
    pre = "model.layers.{i}"
    st = {"pp": stage} if stage else {}
    dense = dict(st, fsdp="S(0)")
    routed = dict(st, ep="S(0)", fsdp="S(0)")
    ld = {"i": [0, dense_layers]}
    lm = {"i": [dense_layers, L]}
    la = {"i": [0, L]}
    first = dict({"pp": "O(0)"} if stage else {}, fsdp="S(0)")
    last = dict({"pp": "O(1)"} if stage else {}, fsdp="S(0)")
    # (name, shape, FP8 on inference, inference placement): vLLM's MLA tensor parallelism over
    # the 32 ranks of a replica: heads split for q_b / kv_b, o_proj row-parallel, the rest replicated.
    attn = [("self_attn.q_a_proj", ["q_lora", "hidden"], True, None),
            ("self_attn.q_a_layernorm", ["q_lora"], False, None),
            ("self_attn.q_b_proj", ["q_b", "q_lora"], True, {"ep": "S(0)"}),
            ("self_attn.kv_a_proj_with_mqa", ["kv_a", "hidden"], True, None),
            ("self_attn.kv_a_layernorm", ["kv_lora"], False, None),
            ("self_attn.kv_b_proj", ["kv_b", "kv_lora"], True, {"ep": "S(0)"}),
            ("self_attn.o_proj", ["hidden", "o"], True, {"ep": "S(1)"}),
            ("input_layernorm", ["hidden"], False, None),
            ("post_attention_layernorm", ["hidden"], False, None)]
    tp = [p("model.embed_tokens.weight", ["vocab", "hidden"], first)]
    for n, s, _, _ in attn:
        tp.append(p(pre + "." + n + ".weight", s, dense, **{"for": la}))
    for n, s in [("gate_proj", ["inter", "hidden"]), ("up_proj", ["inter", "hidden"]), ("down_proj", ["hidden", "inter"])]:
        tp.append(p(pre + ".mlp." + n + ".weight", s, dense, **{"for": ld}))
    tp.append(p(pre + ".mlp.gate.weight", [E, "hidden"], dense, **{"for": lm}))
    tp.append(p(pre + ".mlp.gate.e_score_correction_bias", [E], dense, dtype="fp32", **{"for": lm}))
    for n, s in [("gate_proj", ["moe", "hidden"]), ("up_proj", ["moe", "hidden"]), ("down_proj", ["hidden", "moe"])]:
        tp.append(p(pre + ".mlp.shared_experts." + n + ".weight", s, dense, **{"for": lm}))
    for n, s in [("w1", [E, "moe", "hidden"]), ("w3", [E, "moe", "hidden"]), ("w2", [E, "hidden", "moe"])]:
        tp.append(p(pre + ".mlp.experts." + n, s, routed, **{"for": lm}))
    tp += [p("model.norm.weight", ["hidden"], last), p("lm_head.weight", ["vocab", "hidden"], last)]
    trainer = {"format": SPEC, "role": "trainer", "model": name, "dims": dims,
               "mesh": {"axes": [{"name": a, "size": s} for a, s in trainer_axes],
                        "devices": {"host": "trn{h}", "gpus_per_host": 8}},
               "params": tp}

    def fp8(n):
        return q("", n + "_scale_inv")
    ip = [p("model.embed_tokens.weight", ["vocab", "hidden"], {"ep": "S(0)"}, **{"from": "model.embed_tokens.weight"})]
    for n, s, quant, place in attn:
        ip.append(p(pre + "." + n + ".weight", s, place, **{"for": la, "from": pre + "." + n + ".weight",
                                                           **(fp8(pre + "." + n + ".weight") if quant else {})}))
    for scope, lr, sdim in [("mlp", ld, "inter"), ("mlp.shared_experts", lm, "moe")]:
        g = pre + "." + scope
        ip.append(p(g + ".gate_up_proj.weight", ["2*" + sdim, "hidden"], None, **{
            "for": lr, "from": {"concat": [g + ".gate_proj.weight", g + ".up_proj.weight"], "dim": 0},
            **fp8(g + ".gate_up_proj.weight")}))
        ip.append(p(g + ".down_proj.weight", ["hidden", sdim], None, **{"for": lr, "from": g + ".down_proj.weight",
                                                                       **fp8(g + ".down_proj.weight")}))
    ip.append(p(pre + ".mlp.gate.weight", [E, "hidden"], None, **{"for": lm, "from": pre + ".mlp.gate.weight"}))
    ip.append(p(pre + ".mlp.gate.e_score_correction_bias", [E], None, dtype="fp32",
                **{"for": lm, "from": pre + ".mlp.gate.e_score_correction_bias"}))
    ex = pre + ".mlp.experts"
    ip.append(p(ex + ".w13_weight", [E, "2*moe", "hidden"], {"ep": "S(0)"}, **{
        "for": lm, "from": {"concat": [ex + ".w1", ex + ".w3"], "dim": 1},
        **q("", ex + ".w13_weight_scale_inv")}))
    ip.append(p(ex + ".w2_weight", [E, "hidden", "moe"], {"ep": "S(0)"}, **{
        "for": lm, "from": ex + ".w2", **q("", ex + ".w2_weight_scale_inv")}))
    ip += [p("model.norm.weight", ["hidden"], None, **{"from": "model.norm.weight"}),
           p("lm_head.weight", ["vocab", "hidden"], {"ep": "S(0)"}, **{"from": "lm_head.weight"})]
    inference = {"format": SPEC, "role": "inference",
                 "model": name + " (vLLM layout, FP8 128x128 block scales, TP32 MLA attention + EP32 experts)",
                 "dims": dict(dims),
                 "replicas": {"count": inf_replicas, "mesh": {"axes": [{"name": "ep", "size": 32}]},
                              "devices": {"host": "inf{h}", "gpus_per_host": 8}},
                 "params": ip}
    topo = {"format": TOPO, "name": "%d trainer hosts, %d inference hosts, 8 GPUs and 8x400G each" % (trainer_hosts, inf_hosts),
            "hosts": [host_group("trn{h}", trainer_hosts), host_group("inf{h}", inf_hosts)]}
    return trainer, inference, topo


def deepseek_v3():
    return mla_model("DeepSeek-V3", 61, 3, 256, 128, 129280, [("ep", 8), ("fsdp", 16)], None, 2, 16, 8)


def kimi_k2():
    # Layers 0..30 on pipeline stage 0, 31..60 on stage 1.
    return mla_model("Kimi-K2", 61, 1, 384, 64, 163840, [("pp", 2), ("ep", 8), ("fsdp", 16)], "O({i/31})",
                     4, 32, 16)


def demo_moe():
    """A Qwen3-MoE-like model small enough to run end to end on one machine: FSDP2 x EP2 trainer
    (4 processes) -> EP2 inference replicas, fused qkv / gate_up, FP8 128x128 experts. Shards are
    block-aligned, so the host executor needs no gathers."""
    dims = {"hidden": 256, "q": 256, "kv": 128, "moe": 256, "vocab": 1024}
    L, E = 2, 8
    li = {"i": [0, L]}
    le = {"i": [0, L], "e": [0, E]}
    dense = {"fsdp": "S(0)"}
    expert = {"ep": "O({e/4})", "fsdp": "S(0)"}
    pre = "model.layers.{i}"
    tp = [p("model.embed_tokens.weight", ["vocab", "hidden"], dense)]
    for n, s in [("q_proj", ["q", "hidden"]), ("k_proj", ["kv", "hidden"]), ("v_proj", ["kv", "hidden"]),
                 ("o_proj", ["hidden", "q"])]:
        tp.append(p(pre + ".self_attn." + n + ".weight", s, dense, **{"for": li}))
    for n, s in [("gate_proj", ["moe", "hidden"]), ("up_proj", ["moe", "hidden"]), ("down_proj", ["hidden", "moe"])]:
        tp.append(p(pre + ".mlp.experts.{e}." + n + ".weight", s, expert, **{"for": le}))
    tp.append(p(pre + ".input_layernorm.weight", ["hidden"], dense, **{"for": li}))
    tp += [p("model.norm.weight", ["hidden"], dense), p("lm_head.weight", ["vocab", "hidden"], dense)]
    trainer = {"format": SPEC, "role": "trainer", "model": "demo-moe (Qwen3-MoE-like, small)", "dims": dims,
               "mesh": {"axes": [{"name": "ep", "size": 2}, {"name": "fsdp", "size": 2}],
                        "devices": {"host": "local", "gpus_per_host": 16}},
               "params": tp}
    ex = {"ep": "O({e/4})"}
    ip = [p("model.embed_tokens.weight", ["vocab", "hidden"], {"ep": "S(0)"}, **{"from": "model.embed_tokens.weight"}),
          p(pre + ".self_attn.qkv_proj.weight", ["q+2kv", "hidden"], None, **{
              "for": li, "from": {"concat": [pre + ".self_attn.q_proj.weight", pre + ".self_attn.k_proj.weight",
                                             pre + ".self_attn.v_proj.weight"], "dim": 0}}),
          p(pre + ".self_attn.o_proj.weight", ["hidden", "q"], None, **{"for": li, "from": pre + ".self_attn.o_proj.weight"}),
          p(pre + ".mlp.experts.{e}.gate_up_proj.weight", ["2*moe", "hidden"], ex, **{
              "for": le, "from": {"concat": [pre + ".mlp.experts.{e}.gate_proj.weight", pre + ".mlp.experts.{e}.up_proj.weight"], "dim": 0},
              **q("", pre + ".mlp.experts.{e}.gate_up_proj.weight_scale_inv")}),
          p(pre + ".mlp.experts.{e}.down_proj.weight", ["hidden", "moe"], ex, **{
              "for": le, "from": pre + ".mlp.experts.{e}.down_proj.weight",
              **q("", pre + ".mlp.experts.{e}.down_proj.weight_scale_inv")}),
          p(pre + ".input_layernorm.weight", ["hidden"], None, **{"for": li, "from": pre + ".input_layernorm.weight"}),
          p("model.norm.weight", ["hidden"], None, **{"from": "model.norm.weight"}),
          p("lm_head.weight", ["vocab", "hidden"], {"ep": "S(0)"}, **{"from": "lm_head.weight"})]
    idims = dict(dims)
    idims["q+2kv"] = dims["q"] + 2 * dims["kv"]
    inference = {"format": SPEC, "role": "inference", "model": "demo-moe (EP2, FP8 experts)", "dims": idims,
                 "replicas": {"count": 1, "mesh": {"axes": [{"name": "ep", "size": 2}]},
                              "devices": {"host": "local", "gpus_per_host": 16, "first_gpu": 8}},
                 "params": ip}
    topo = {"format": TOPO, "name": "one machine, 16 GPU slots, loopback NICs",
            "hosts": [{"name": "local", "gpus": 16, "nics_per_gpu": 1, "nic_gbps": 100.0}]}
    return trainer, inference, topo


MODELS = {"demo-moe": demo_moe, "llama-3.1-8b": llama_8b, "qwen3-30b-a3b": qwen3_30b, "deepseek-v3": deepseek_v3, "kimi-k2": kimi_k2}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "configs"))
    args = ap.parse_args()
    for name, fn in MODELS.items():
        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        for part, obj in zip(["trainer", "inference", "topology"], fn()):
            with open(os.path.join(d, part + ".json"), "w") as f:
                json.dump(obj, f, indent=1)
                f.write("\n")
        print("wrote", d)


if __name__ == "__main__":
    main()
