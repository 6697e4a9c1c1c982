// The weightcast command line: `plan` (dry run), `verify` (replay on host memory), `spec`
// (specs from a config.json), `demo`, `rendezvous` and `configs`.
// Exit status: 0 success, 1 a verification or system failure, 2 bad input (specs, flags, plan).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "demo.h"
#include "embedded_configs.h"
#include "spec_cmd.h"
#include "trace_cmd.h"
#include "weightcast/plan/plan_json.h"
#include "weightcast/plan/planner.h"
#include "weightcast/plan/report.h"
#include "weightcast/plan/verify.h"
#include "weightcast/sim/measure.h"
#include "weightcast/sim/sim.h"
#include "weightcast/transport/domain.h"
#include "weightcast/transport/rendezvous.h"

namespace {

using namespace weightcast;  // NOLINT

constexpr const char* kDefaultConfig = "kimi-k2";

struct InputFlags {
  std::string trainer, inference, topology, builtin;
  int64_t scale = 1;
  int64_t max_params = spec::ParseOptions{}.max_params;
  bool allow_unused = false;

  void add(CLI::App* app, int64_t default_scale) {
    scale = default_scale;
    app->add_option("--trainer,-t", trainer,
                    "Trainer sharding spec (JSON, weightcast.spec/v1 role trainer)");
    app->add_option("--inference,-i", inference, "Inference sharding spec (JSON, role inference)");
    app->add_option("--topology,-c", topology, "Cluster topology (JSON, weightcast.topology/v1)");
    std::string names;
    for (const auto& c : cli::embedded_configs())
      names += std::string(names.empty() ? "" : ", ") + c.name;
    app->add_option("--builtin,-b", builtin,
                    "Use a built-in config instead of files: " + names +
                        ". With no inputs at all, " + kDefaultConfig + " is used");
    app->add_option(
           "--scale", scale,
           "Divide every named dim of the specs (hidden sizes, vocab...) and the FP8 block "
           "size by this factor; layouts (mesh, experts, layers) stay as they are")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
    app->add_option("--max-params", max_params,
                    "Refuse specs with more parameters than this, after \"for\" expansion (a "
                    "bound on what a spec may cost to plan; each spec's tensors are also capped "
                    "at 64 TiB)")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 26));
    app->add_flag("--allow-unused", allow_unused,
                  "Accept trainer parameters that no inference tensor consumes (otherwise an "
                  "error naming them)");
  }

  Result<spec::Inputs> load(std::string& title) const {
    spec::ParseOptions opts{scale};
    opts.max_params = max_params;
    opts.allow_unused = allow_unused;
    const bool any_file = !trainer.empty() || !inference.empty() || !topology.empty();
    if (any_file) {
      if (!builtin.empty())
        return invalid("give either --builtin or the three spec files, not both");
      if (trainer.empty() || inference.empty() || topology.empty())
        return invalid("--trainer, --inference and --topology go together (missing: {}{}{})",
                       trainer.empty() ? "--trainer " : "", inference.empty() ? "--inference " : "",
                       topology.empty() ? "--topology" : "");
      title = trainer + " -> " + inference + " on " + topology;
      return spec::load_inputs(trainer, inference, topology, opts);
    }
    const std::string name = builtin.empty() ? kDefaultConfig : builtin;
    for (const auto& c : cli::embedded_configs()) {
      if (name != c.name) continue;
      title = "built-in " + name;
      try {
        return spec::make_inputs(
            nlohmann::json::parse(c.trainer), nlohmann::json::parse(c.inference),
            nlohmann::json::parse(c.topology), opts,
            {name + "/trainer.json", name + "/inference.json", name + "/topology.json"});
      } catch (const std::exception& e) {
        return Status(Code::kInternal, e.what());
      }
    }
    return invalid("no built-in config named '{}' (run `weightcast configs`)", name);
  }
};

struct PlanFlags {
  double max_write_mb = 16;
  double staging_mb = 512;
  bool intra_node_only = false;
  plan::Options defaults;

  void add(CLI::App* app) {
    app->add_option("--max-write-mb", max_write_mb,
                    "Largest single write; longer runs are split (16 MiB saturates a 400G NIC; "
                    "the smallest allowed, 64 B = 0.00006103515625, is for tests)")
        ->capture_default_str()
        ->check(CLI::Range(64.0 / 1048576, 1048576.0));
    app->add_option(
           "--staging-mb", staging_mb,
           "Staging watermark per sender: gather buffers of one phase plus the projection ring")
        ->capture_default_str()
        ->check(CLI::Range(0.001, 16777216.0));
    app->add_option("--write-cost-us", defaults.write_cost_us,
                    "Packing trade: fixed cost of one write (posting, NIC, immediate). Small units "
                    "are merged into one projection, fed by a gather, when the writes saved cost "
                    "more than the gather added")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 1e9));
    app->add_option("--gather-cost-us", defaults.gather_cost_us,
                    "Packing trade: fixed cost per piece a gather root receives from another rank "
                    "(the member's send, the ranks meeting, the root's wait), on top of the bytes' "
                    "NVLink time. 0 packs whenever writes are saved; a large value never packs. "
                    "Default: the topology's gather_us (0 where not given)")
        ->check(CLI::Range(0.0, 1e9));
    app->add_flag("--ipc-links", defaults.ipc_links,
                  "Plan for the ipc backend: every rank on one host, writes and gathers costed "
                  "on same-host GPU links at the host's nvlink_gbps instead of its NICs (a job "
                  "with JobConfig.backend ipc plans so)");
    app->add_flag("--hybrid-links", defaults.hybrid_links,
                  "Plan for the hybrid backend: pairs on one host costed on its ipc link at "
                  "nvlink_gbps, the others on the NICs (a job with JobConfig.backend hybrid "
                  "plans so)");
    app->add_flag("--nccl-gathers", defaults.nccl_gathers,
                  "Plan for gathers on NCCL inside each NVLink domain (JobConfig.gathers "
                  "\"nccl\"): pieces costed at nvlink_gbps, apart from the NICs' writes "
                  "(default: the host collective, through the NICs)");
    app->add_flag("--intra-node-gathers-only", intra_node_only,
                  "Refuse plans that need a gather across NVLink domains (default: plan it, warn)");
  }
  plan::Options options() const {
    plan::Options o = defaults;
    o.max_write_bytes = static_cast<uint64_t>(max_write_mb * (1 << 20));
    o.staging_watermark = static_cast<uint64_t>(staging_mb * (1 << 20));
    o.intra_domain_gathers_only = intra_node_only;
    return o;
  }
};

int fail(const Status& s) {
  std::fprintf(stderr, "weightcast: error: %s\n", s.message().c_str());
  return s.code() == Code::kInvalidArgument ? 2 : 1;
}

Status write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f || !f.write(text.data(), static_cast<std::streamsize>(text.size())))
    return Status(Code::kSystem, path + ": cannot write");
  return Status::ok();
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int run_plan(const InputFlags& in_flags, const PlanFlags& pf, const std::string& json_out,
             const std::string& svg_out, const std::string& profile_path,
             const std::string& trace_out) {
  std::string title;
  const auto t0 = std::chrono::steady_clock::now();
  auto in = in_flags.load(title);
  if (!in) return fail(in.status());
  auto p = plan::make_plan(*in, pf.options());
  if (!p) return fail(p.status());
  const double took = seconds_since(t0);
  std::fputs(plan::report(*p, title).c_str(), stdout);
  std::printf("planned in %.3f s\n", took);
  std::string simulation;  // the plan JSON carries it
  if (!profile_path.empty()) {
    auto prof = sim::load_profile(profile_path);
    if (!prof) return fail(prof.status());
    sim::Options so;
    so.trace_path = trace_out;
    if (!in->trainer.params.empty())
      so.source_bytes_per_elem = static_cast<double>(core::dtype_size(in->trainer.params[0].dtype));
    for (const auto& h : in->topology.hosts)
      so.topology_gather_us = std::max(so.topology_gather_us, h.gather_us);
    const auto ts = std::chrono::steady_clock::now();
    auto r = sim::simulate(*p, *prof, so);
    if (!r) return fail(r.status());
    std::fputs(sim::report(*r, *prof).c_str(), stdout);
    simulation = "\"simulation\": " + sim::to_json(*r, *prof);
    std::printf("simulated in %.3f s\n", seconds_since(ts));
    if (!trace_out.empty())
      std::printf("predicted step's trace written to %s\n", trace_out.c_str());
  } else if (!trace_out.empty()) {
    return fail(invalid("--trace needs --profile (the trace is the simulated step's)"));
  }
  if (!json_out.empty()) {
    if (Status s = plan::save_json(*p, json_out, simulation); !s) return fail(s);
    std::printf("plan written to %s\n", json_out.c_str());
  }
  if (!svg_out.empty()) {
    if (Status s = write_file(svg_out, plan::svg_matrix(*p)); !s) return fail(s);
    std::printf("sender x receiver matrix written to %s\n", svg_out.c_str());
  }
  return 0;
}

// Measures this machine's profile: loopback writes for the NIC fields, the CPU projections of a
// config's plan for the projection fields.
int run_profile(InputFlags in_flags, const PlanFlags& pf, const std::string& out,
                uint64_t large_kib, uint64_t small_kib, uint64_t pair_mib) {
  if (in_flags.trainer.empty() && in_flags.inference.empty() && in_flags.topology.empty() &&
      in_flags.builtin.empty())
    in_flags.builtin = "demo-moe";
  std::string title;
  auto in = in_flags.load(title);
  if (!in) return fail(in.status());
  auto p = plan::make_plan(*in, pf.options());
  if (!p) return fail(p.status());
  std::printf("measuring one-sided writes over tcp;ofi_rxm on loopback:\n");
  std::fflush(stdout);
  auto lr = sim::measure_loopback(large_kib << 10, small_kib << 10, pair_mib << 20,
                                  [](const std::string& what) {
                                    std::printf("  %s ...\n", what.c_str());
                                    std::fflush(stdout);
                                  });
  if (!lr) return fail(lr.status());
  sim::Profile prof = sim::loopback_profile(*lr);
  std::printf("measuring the CPU projections of %s (%zu of them) ...\n", title.c_str(),
              p->projects.size());
  std::fflush(stdout);
  auto took = sim::measure_projection_cpu(*in, *p, prof);
  if (!took) return fail(took.status());
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  prof.name = fmt::format("loopback on {}", host);
  const std::string text = sim::profile_json(prof);
  std::fputs(text.c_str(), stdout);
  if (!out.empty()) {
    if (Status s = write_file(out, text); !s) return fail(s);
    std::printf("profile written to %s (use it: weightcast plan --profile %s)\n", out.c_str(),
                out.c_str());
  }
  return 0;
}

int run_verify(const InputFlags& in_flags, const PlanFlags& pf, const std::string& plan_in,
               uint64_t step) {
  std::string title;
  auto in = in_flags.load(title);
  if (!in) return fail(in.status());
  Result<plan::Plan> p =
      plan_in.empty() ? plan::make_plan(*in, pf.options()) : plan::load_json(plan_in);
  if (!p) return fail(p.status());
  std::printf("verifying %s at scale 1/%lld: %zu senders, %zu receivers, %zu writes\n",
              title.c_str(), static_cast<long long>(in->scale), p->senders.size(),
              p->receivers.size(), p->writes.size());
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  plan::VerifyProgress progress;  // long runs say where they are (on stderr)
  progress.fn = [t0 = std::chrono::steady_clock::now()](const std::string& m) {
    if (seconds_since(t0) < 2) return;  // quick runs stay quiet
    std::fprintf(stderr, "verify: %s (%.0f s)\n", m.c_str(), seconds_since(t0));
  };
  auto r = plan::verify_plan(*in, *p, step, progress);
  if (!r) {
    std::fprintf(stderr, "weightcast: FAILED: %s\n", r.status().message().c_str());
    return r.status().code() == Code::kInvalidArgument ? 2 : 1;
  }
  std::printf(
      "OK: %llu bytes in %llu tensors match the reference; %llu writes, %llu gathers, %llu "
      "projections replayed; imm counts exact (%.2f s)\n",
      static_cast<unsigned long long>(r->bytes_checked),
      static_cast<unsigned long long>(r->tensors), static_cast<unsigned long long>(r->writes),
      static_cast<unsigned long long>(r->gathers), static_cast<unsigned long long>(r->projects),
      seconds_since(t0));
  return 0;
}

volatile std::sig_atomic_t g_stop = 0;

int run_rendezvous(const std::string& bind, uint16_t port, const std::string& token,
                   double seconds) {
  auto s = transport::RendezvousServer::start(bind, port, token);
  if (!s) return fail(s.status());
  std::printf("rendezvous listening on %s:%u (job token required)\n", bind.c_str(), (*s)->port());
  std::fflush(stdout);
  std::signal(SIGINT, [](int) { g_stop = 1; });
  std::signal(SIGTERM, [](int) { g_stop = 1; });
  const auto end =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds > 0 ? seconds : 1e9);
  while (!g_stop && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto st = (*s)->stats();
  std::printf("rendezvous stopping: %llu connections, %llu puts, %llu gets, %llu rejected\n",
              static_cast<unsigned long long>(st.connections),
              static_cast<unsigned long long>(st.puts), static_cast<unsigned long long>(st.gets),
              static_cast<unsigned long long>(st.rejected));
  return 0;
}

}  // namespace

// The transports `--backend` offers: every row of transport::backends().
static std::vector<std::string> backend_choices() {
  std::vector<std::string> v;
  for (const transport::BackendInfo& b : transport::backends()) v.push_back(b.name);
  return v;
}
static std::string backend_help() {
  std::string s = "Transport:";
  for (const transport::BackendInfo& b : transport::backends())
    s += fmt::format("\n  {}: {}", b.name, b.summary);
  return s +
         "\n(ipc: --nics counts links, not NICs; hybrid: with --hosts the demo's processes "
         "pose as several hosts)";
}

int main(int argc, char** argv) {
  CLI::App app{
      "weightcast: RL weight broadcast. Plans and verifies the point-to-point transfer that moves "
      "a trainer's sharded weights into inference GPUs' live weight tensors after every step.\n"
      "Specs are JSON (docs/spec-format.md); plans are weightcast.plan/v1 (docs/plan-format.md)."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "weightcast 0.1.0");

  InputFlags plan_in, verify_in;
  PlanFlags plan_pf, verify_pf;
  std::string json_out, svg_out, plan_file, profile_path, trace_out;
  uint64_t step = 1;

  CLI::App* plan_cmd = app.add_subcommand(
      "plan",
      "Dry run: compute the transfer plan and print a report (bytes per sender, receiver and "
      "NIC, imbalance, write sizes, gathers, staging, predicted time vs the ingress floor)");
  plan_in.add(plan_cmd, 1);
  plan_pf.add(plan_cmd);
  plan_cmd->add_option("--json", json_out, "Write the plan (weightcast.plan/v1 JSON) to this file");
  plan_cmd->add_option("--svg", svg_out, "Draw the sender x receiver byte matrix to this SVG file");
  plan_cmd->add_option("--profile", profile_path,
                       "Simulate the step on this machine profile (weightcast.profile/v1 JSON; "
                       "shipped: configs/profiles/*.json) and print the predicted step, the floor "
                       "and where the slowest path's time goes (docs/simulator.md)");
  plan_cmd->add_option("--trace", trace_out,
                       "With --profile: write the simulated step as a Chrome trace / Perfetto "
                       "JSON file (open it in ui.perfetto.dev)");
  plan_cmd->footer(
      "Example: weightcast plan -t configs/kimi-k2/trainer.json -i configs/kimi-k2/inference.json "
      "-c configs/kimi-k2/topology.json --json kimi.plan.json --svg kimi.svg");

  CLI::App* verify_cmd = app.add_subcommand(
      "verify",
      "Replay a plan on host memory with shrunken shapes and compare every inference byte "
      "against a reference reshard built from the full tensors");
  verify_in.add(verify_cmd, 16);
  verify_pf.add(verify_cmd);
  verify_cmd->add_option("--plan", plan_file,
                         "Replay this plan file instead of planning afresh "
                         "(it must have been made with the same specs and --scale)");
  verify_cmd->add_option("--step", step, "Training step: changes every weight value")
      ->capture_default_str();
  verify_cmd->footer("Example: weightcast verify --builtin qwen3-30b-a3b --scale 16");

  InputFlags profile_in;
  PlanFlags profile_pf;
  std::string profile_out;
  uint64_t profile_large_kib = 16384, profile_small_kib = 4, profile_pair_mib = 128;
  CLI::App* profile_cmd = app.add_subcommand(
      "profile",
      "Measure this machine's profile for the simulator (weightcast.profile/v1): one-sided "
      "writes over tcp;ofi_rxm on loopback give the NIC rate, the host's shared path and the "
      "cost of one write; the CPU projections of a config's plan (default: built-in demo-moe) "
      "give the projection rate. Takes about ten seconds");
  profile_in.add(profile_cmd, 1);
  profile_pf.add(profile_cmd);
  profile_cmd->add_option("--out,-o", profile_out, "Write the profile to this file");
  profile_cmd->add_option("--large-kib", profile_large_kib, "Size of the bandwidth runs' writes")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{64}, uint64_t{65536}));
  profile_cmd
      ->add_option("--small-kib", profile_small_kib,
                   "Size of the writes that measure the cost of one write")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{64}));
  profile_cmd
      ->add_option("--mib", profile_pair_mib,
                   "MiB each writer sends each target in every run (3 repetitions)")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{4096}));
  profile_cmd->footer(
      "Example: weightcast profile -o here.json && weightcast plan -b demo-moe --profile "
      "here.json\nShipped profiles for ConnectX-7 and EFA machines: configs/profiles/*.json "
      "(docs/simulator.md)");

  std::string rdv_bind = "127.0.0.1", rdv_token;
  uint16_t rdv_port = 0;
  double rdv_seconds = 0;
  CLI::App* rdv_cmd = app.add_subcommand(
      "rendezvous",
      "Run the key-value service through which peers exchange NIC addresses and memory "
      "descriptors; every client must present the job token");
  rdv_cmd->add_option("--bind", rdv_bind, "Address to listen on")->capture_default_str();
  rdv_cmd->add_option("--port", rdv_port, "TCP port (0 picks a free one and prints it)")
      ->required();
  std::string rdv_token_file;
  rdv_cmd->add_option("--token-file", rdv_token_file,
                      "File holding the job token clients must present (else WEIGHTCAST_TOKEN; "
                      "a token on the command line would show in ps)");
  rdv_cmd->add_option("--token", rdv_token, "Job token (prefer --token-file or WEIGHTCAST_TOKEN)");
  rdv_cmd->add_option("--seconds", rdv_seconds,
                      "Stop after this long (default: until SIGINT/SIGTERM)");

  cli::DemoOptions demo;
  CLI::App* demo_cmd = app.add_subcommand(
      "demo",
      "End to end on this machine: a rendezvous, the trainer and inference processes of the "
      "built-in demo-moe config (FSDP2 x EP2 -> EP2 replicas, fused qkv / gate_up, FP8 experts) "
      "over libfabric; K steps with new weights each step, every inference byte verified");
  demo_cmd->add_option("--steps", demo.steps, "Training steps to push")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  CLI::Option* replicas_opt =
      demo_cmd
          ->add_option("--replicas", demo.replicas,
                       "Inference replicas of the built-in config (2 processes each); with spec "
                       "files, their inference spec says")
          ->capture_default_str()
          ->check(CLI::Range(1, 4));
  demo_cmd->add_option("--nics", demo.nics, "NICs per process (loopback endpoints 127.0.0.1..N)")
      ->capture_default_str()
      ->check(CLI::Range(1, 4));
  demo_cmd->add_option("--provider", demo.provider, "libfabric provider")->capture_default_str();
  demo_cmd->add_option("--backend", demo.backend, backend_help())
      ->capture_default_str()
      ->check(CLI::IsMember(backend_choices()));
  demo_cmd
      ->add_option("--hosts", demo.hosts,
                   "With --backend hybrid: the processes pose as this many hosts to each other "
                   "(trainer i and inference i on host i % N), so that pairs on one host link "
                   "over ipc and the others over libfabric")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  demo_cmd
      ->add_option("--device", demo.device,
                   "Where trainer shards live: host, or cuda (shards in GPU memory, projections "
                   "on the GPU; needs a CUDA build and a GPU)")
      ->capture_default_str()
      ->check(CLI::IsMember({"host", "cuda"}));
  demo_cmd
      ->add_option("--gpus", demo.gpus,
                   "With --device / --inference-device cuda: GPUs to spread over, trainer rank r "
                   "on GPU r % N and the inference ranks on GPU N-1 (N=2: writes cross NVLink)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  demo_cmd
      ->add_option("--gathers", demo.gathers,
                   "Trainers' gathers: host (the host collective, one-sided writes) or nccl (NCCL "
                   "between the GPU shards; needs --device cuda and one GPU per trainer rank: NCCL "
                   "refuses two ranks on one GPU)")
      ->capture_default_str()
      ->check(CLI::IsMember({"host", "nccl"}));
  demo_cmd
      ->add_option("--inference-device", demo.inference_device,
                   "Where the inference ranks' tensors live: host, or cuda (GPU memory, written "
                   "directly where the transport can, else staged through pinned host memory)")
      ->capture_default_str()
      ->check(CLI::IsMember({"host", "cuda"}));
  demo_cmd
      ->add_option("--staging", demo.staging,
                   "Receivers: auto (stage only what the transport cannot write), always (every "
                   "tensor lands in host memory first, copied in per sender), never")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "always", "never"}));
  demo_cmd->add_option("--nic-list", demo.nic_list,
                       "NICs of every process, comma-separated: local IPs (fabric) or RDMA "
                       "devices such as rxe0,rxe1 (verbs; required there). Overrides --nics");
  demo_cmd
      ->add_option("--deadline", demo.deadline_s,
                   "Seconds every wait may take before the step fails")
      ->capture_default_str();
  demo_cmd->add_option(
      "--kill-trainer-at-step", demo.kill_trainer_at_step,
      "Fault drill: trainer 0 dies halfway through this step's writes; the step must fail "
      "on every receiver naming it, then pass after the trainer restarts and rejoins");
  demo_cmd->add_option(
      "--restart-receiver-at-step", demo.restart_receiver_at_step,
      "Fault drill: inference 0 is killed after the previous step and restarted with fresh "
      "buffers; trainers reconnect and the step must rewrite and verify every byte");
  demo_cmd->add_option(
      "--kill-receiver-at-step", demo.kill_receiver_at_step,
      "Fault drill: the last inference process is killed (SIGKILL) just before this step, "
      "unannounced; the driver must notice the death at once, restart it, and the step must "
      "verify every byte without a retry");
  demo_cmd->add_option(
      "--weights", demo.weights,
      "safetensors file with the full trainer weights (names and shapes of the trainer spec); "
      "step k pushes them scaled by 1 + (k-1)/8. Default: a deterministic pattern");
  demo_cmd
      ->add_option("--gather-cost-us", demo.gather_cost_us,
                   "The planner's fixed cost per gathered piece (see `weightcast plan --help`); "
                   "default: the topology's gather_us. 0 packs small units into gathers, which "
                   "exercises the trainers' host collective (the fault drills in tests/e2e do)")
      ->check(CLI::Range(0.0, 1e9));
  demo_cmd
      ->add_option("--staging-mb", demo.staging_mb,
                   "Staging watermark per sender (see `weightcast plan --help`; default 512). A "
                   "small one makes the projection ring wrap, and slots wait for their writes")
      ->check(CLI::Range(0.001, 16777216.0));
  demo_cmd->add_option("--trace", demo.trace,
                       "Directory: every process writes a trace of every step there (Chrome "
                       "trace / Perfetto JSON), merged at the end into DIR/demo.trace.json");
  demo_cmd
      ->add_option("--metrics-port", demo.metrics_port,
                   "Serve the job's metrics as Prometheus text at "
                   "http://127.0.0.1:PORT/metrics while it runs (0: a free port, printed); "
                   "at the end the demo checks every peer's last record there")
      ->check(CLI::Range(0, 65535));
  demo_cmd->add_option("--dump", demo.dump,
                       "Directory where each inference rank writes what it received after "
                       "the last step, as replica<R>-rank<Q>.safetensors");
  demo_cmd->add_option("-t,--trainer", demo.trainer, "Trainer spec instead of the built-in demo");
  demo_cmd->add_option("-i,--inference", demo.inference,
                       "Inference spec instead of the built-in demo");
  demo_cmd->add_option("-c,--topology", demo.topology, "Topology instead of the built-in demo");

  cli::WorkerOptions worker;
  CLI::App* worker_cmd =
      app.add_subcommand("worker", "A demo process (started by `weightcast demo`)");
  worker_cmd->group("");
  worker_cmd->add_option("--role", worker.role)
      ->required()
      ->check(CLI::IsMember({"trainer", "inference"}));
  worker_cmd->add_option("--index", worker.index)->required();
  worker_cmd->add_option("--rdv", worker.rdv)->required();
  worker_cmd->add_option("--trainer", worker.demo.trainer)->required();
  worker_cmd->add_option("--inference", worker.demo.inference)->required();
  worker_cmd->add_option("--topology", worker.demo.topology)->required();
  worker_cmd->add_option("--nics", worker.demo.nics);
  worker_cmd->add_option("--provider", worker.demo.provider);
  worker_cmd->add_option("--backend", worker.demo.backend);
  worker_cmd->add_option("--hosts", worker.demo.hosts);
  worker_cmd->add_option("--nic-list", worker.demo.nic_list);
  worker_cmd->add_option("--device", worker.demo.device);
  worker_cmd->add_option("--inference-device", worker.demo.inference_device);
  worker_cmd->add_option("--staging", worker.demo.staging);
  worker_cmd->add_option("--gpus", worker.demo.gpus);
  worker_cmd->add_option("--gathers", worker.demo.gathers);
  worker_cmd->add_option("--deadline", worker.demo.deadline_s);
  worker_cmd->add_option("--steps", worker.demo.steps);
  worker_cmd->add_option("--first-round", worker.first_round);
  worker_cmd->add_option("--weights", worker.demo.weights);
  worker_cmd->add_option("--dump", worker.demo.dump);

  cli::TraceFlags trace_flags;
  cli::add_trace_command(app, trace_flags);

  cli::SpecFlags spec_flags;
  cli::add_spec_command(app, spec_flags);

  app.add_subcommand("configs", "List the built-in configs");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  if (*plan_cmd) return run_plan(plan_in, plan_pf, json_out, svg_out, profile_path, trace_out);
  if (*verify_cmd) return run_verify(verify_in, verify_pf, plan_file, step);
  if (*trace_flags.cmd) return cli::run_trace(trace_flags);
  if (*profile_cmd)
    return run_profile(profile_in, profile_pf, profile_out, profile_large_kib, profile_small_kib,
                       profile_pair_mib);
  if (*spec_flags.cmd) return cli::run_spec(spec_flags);
  if (*rdv_cmd) {
    if (!rdv_token_file.empty()) {
      std::ifstream f(rdv_token_file);
      if (!std::getline(f, rdv_token) || rdv_token.empty())
        return fail(invalid("--token-file {}: no token in it", rdv_token_file));
    } else if (rdv_token.empty()) {
      if (const char* t = std::getenv("WEIGHTCAST_TOKEN")) rdv_token = t;
    }
    if (rdv_token.empty())
      return fail(invalid("rendezvous needs a job token: --token-file FILE or WEIGHTCAST_TOKEN"));
    return run_rendezvous(rdv_bind, rdv_port, rdv_token, rdv_seconds);
  }
  if (*worker_cmd) return cli::run_worker(worker);
  if (*demo_cmd) {
    demo.self = std::filesystem::canonical("/proc/self/exe").string();
    std::filesystem::path dir;
    if (demo.trainer.empty() && demo.inference.empty() && demo.topology.empty()) {
      // The built-in demo, with the requested replica count, written where the workers can read it.
      dir = std::filesystem::temp_directory_path() /
            fmt::format("weightcast-demo-specs-{}", getpid());
      std::filesystem::create_directories(dir);
      for (const auto& c : cli::embedded_configs()) {
        if (std::string(c.name) != "demo-moe") continue;
        auto inf = nlohmann::json::parse(c.inference);
        inf["replicas"]["count"] = demo.replicas;
        std::ofstream(dir / "trainer.json") << c.trainer;
        std::ofstream(dir / "inference.json") << inf.dump(1);
        std::ofstream(dir / "topology.json") << c.topology;
      }
      demo.trainer = (dir / "trainer.json").string();
      demo.inference = (dir / "inference.json").string();
      demo.topology = (dir / "topology.json").string();
    } else if (demo.trainer.empty() || demo.inference.empty() || demo.topology.empty()) {
      return fail(invalid("--trainer, --inference and --topology go together"));
    } else if (replicas_opt->count() > 0) {
      return fail(
          invalid("--replicas applies to the built-in config only; with -t/-i/-c the "
                  "inference spec's \"replicas\" decide"));
    }
    const int rc = cli::run_demo(demo);
    if (!dir.empty()) std::filesystem::remove_all(dir);
    return rc;
  }
  for (const auto& c : cli::embedded_configs()) std::printf("%s\n", c.name);
  return 0;
}
