// `weightcast spec`: writes the three spec files from a config.json, then plans them once so that
// what it wrote is known to work. The options go through spec::parse_generate_args, the parser
// configs/<model>/spec.args is read with, so the CLI holds no layout logic of its own.
#include "spec_cmd.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "weightcast/plan/planner.h"
#include "weightcast/plan/report.h"
#include "weightcast/spec/generate.h"
#include "weightcast/spec/spec_parser.h"

namespace weightcast::cli {

namespace {

int fail(const Status& s) {
  std::fprintf(stderr, "weightcast spec: error: %s\n", s.message().c_str());
  return s.code() == Code::kInvalidArgument ? 2 : 1;
}

}  // namespace

void add_spec_command(CLI::App& app, SpecFlags& f) {
  f.cmd = app.add_subcommand(
      "spec",
      "Write trainer, inference and topology specs for a Hugging Face model from its "
      "config.json and each side's parallelism: the trainer holds the checkpoint's names "
      "(routed experts as --trainer-experts says), the inference side is vLLM's in-memory layout "
      "(fused "
      "qkv_proj and gate_up_proj, FusedMoE w13_weight/w2_weight, kv heads replicated when TP "
      "exceeds them, the vocab padded to 64, FP8 128x128 weight_scale_inv). The specs are then "
      "planned once");
  f.cmd->add_option("--config", f.config, "The model's config.json")->required();
  f.cmd
      ->add_option("--out,-o", f.out,
                   "Directory for trainer.json, inference.json and topology.json")
      ->required();
  auto pass = [&](const char* name, const char* help) {
    f.cmd->add_option_function<std::string>(
        name,
        [&f, name](const std::string& v) {
          f.args.insert(f.args.end(), {name, v});
        },
        help);
  };
  pass("--trainer",
       "Trainer axes among pp, dp (HSDP replicas), ep, fsdp, tp, laid out in that order (tp "
       "varies fastest): e.g. fsdp=64, dp=2,fsdp=32, pp=2,ep=8,fsdp=16, fsdp=8,tp=4 (FSDP2 over "
       "TP: _StridedShard). Default fsdp=1");
  pass("--inference",
       "One replica's axes: tp=N (attention and dense weights), dp=N (attention data parallel "
       "inside the replica, for --expert-parallel). Default tp=1");
  pass("--replicas", "Inference replicas (default 1)");
  f.cmd->add_flag_callback(
      "--expert-parallel", [&f] { f.args.push_back("--expert-parallel"); },
      "Routed experts split over every rank of a replica (vLLM --enable-expert-parallel); "
      "without it experts are tensor-parallel");
  pass("--fp8",
       "auto (what config.json's quantization_config says), none, experts (routed experts in "
       "FP8) or all (every linear but embeddings, lm_head and routers)");
  pass("--trainer-experts",
       "How the trainer holds routed experts: titan (experts.w1/w3/w2 stacked, torchtitan and "
       "Megatron; default), hf (transformers >= 5: experts.gate_up_proj and down_proj) or hf4 "
       "(transformers 4: experts.{e}.gate_proj.weight one by one, owned by EP rank e/(E/ep))");
  pass("--dense-shard",
       "Trainer dense parameters: all (FSDP over ep and fsdp ranks, torchtitan; default) or fsdp "
       "(FSDP over fsdp only, each EP group holding a copy)");
  pass("--engine", "vllm (default) or sglang: SGLang's names where they differ");
  pass("--gpus-per-host", "GPUs per host, both sides (default 8)");
  pass("--nics-per-gpu", "NICs per GPU in the topology (default 1)");
  pass("--nic-gbps", "Gigabits per second per NIC (default 400)");
  pass("--name", "Model name written into the specs (default: the config's model_type)");
  pass("--trainer-host", "Trainer host name template (default trn{h})");
  pass("--inference-host", "Inference host name template (default inf{h})");
  pass("--single-host",
       "Both sides on one machine of this name (--gpus-per-host GPUs): inference ranks on the "
       "GPUs after the trainer's");
  f.cmd->add_flag_callback(
      "--colocated", [&f] { f.args.push_back("--colocated"); },
      "With --single-host: trainer and inference ranks share GPUs (verl's hybrid engine; the "
      "topology host is marked colocated, for the ipc backend)");
  pass("--gather-us",
       "The topology's fixed cost per gathered piece, in us (docs/spec-format.md; 0 = NCCL)");
  f.cmd->add_flag("--no-plan", f.no_plan, "Write the specs without planning them");
  f.cmd->footer(
      "Example: weightcast spec --config Qwen3-30B-A3B/config.json --trainer fsdp=8 "
      "--inference tp=2 --replicas 4 --expert-parallel --fp8 experts -o specs/\n"
      "configs/<model>/spec.args holds the options each shipped config was generated with.");
}

int run_spec(const SpecFlags& f) {
  auto hf = spec::load_json_file(f.config);
  if (!hf) return fail(hf.status());
  auto opts = spec::parse_generate_args(f.args);
  if (!opts) return fail(opts.status());
  auto g = spec::generate_specs(*hf, *opts);
  if (!g) return fail(Status(g.status().code(), f.config + ": " + g.status().message()));
  std::error_code ec;
  std::filesystem::create_directories(f.out, ec);
  if (ec) return fail(Status(Code::kSystem, f.out + ": " + ec.message()));
  for (const auto& [name, j] : {std::pair{"trainer", &g->trainer},
                                {"inference", &g->inference},
                                {"topology", &g->topology}}) {
    const std::string path = f.out + "/" + name + ".json";
    std::ofstream o(path);
    o << j->dump(1) << "\n";
    if (!o) return fail(Status(Code::kSystem, path + ": cannot write"));
    const bool topo = j->contains("hosts");
    std::printf("wrote %s (%zu %s)\n", path.c_str(), (*j)[topo ? "hosts" : "params"].size(),
                topo ? "host groups" : "parameter entries");
  }
  for (const std::string& n : g->notes) std::printf("note: %s\n", n.c_str());
  if (f.no_plan) return 0;
  auto in = spec::make_inputs(
      g->trainer, g->inference, g->topology, {},
      {f.out + "/trainer.json", f.out + "/inference.json", f.out + "/topology.json"});
  if (!in) return fail(in.status());
  auto p = plan::make_plan(*in, {});
  if (!p) return fail(p.status());
  std::fputs(plan::report(*p, f.out).c_str(), stdout);
  return 0;
}

}  // namespace weightcast::cli
