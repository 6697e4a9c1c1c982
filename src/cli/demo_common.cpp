// The demo's shared parts (demo_common.h).
#include "demo_common.h"

#include <unistd.h>

#include <fstream>
#include <memory>
#include <sstream>

#include "weightcast/exec/safetensors.h"

namespace weightcast::cli::demo {

Result<spec::Inputs> load(const DemoOptions& o) {
  return spec::load_inputs(o.trainer, o.inference, o.topology);
}

plan::Options demo_plan_options(const DemoOptions& o) {
  plan::Options opts;
  opts.gather_cost_us = o.gather_cost_us;
  opts.nccl_gathers = o.gathers == "nccl";  // as the job plans (api peer.cpp)
  opts.intra_domain_gathers_only = opts.nccl_gathers;
  // The links the job runs on, as the API's controller costs them.
  if (const transport::BackendInfo* b = transport::find_backend(o.backend)) {
    opts.ipc_links = b->links == transport::BackendInfo::Links::kSameHost;
    opts.hybrid_links = b->links == transport::BackendInfo::Links::kHybrid;
  }
  if (o.staging_mb > 0) opts.staging_watermark = static_cast<uint64_t>(o.staging_mb * (1 << 20));
  return opts;
}

std::vector<std::string> nic_names(const DemoOptions& o) {
  std::vector<std::string> v;
  std::istringstream ss(o.nic_list);
  for (std::string x; std::getline(ss, x, ',');) v.push_back(x);
  if (v.empty())
    for (int i = 0; i < o.nics; ++i) v.push_back("127.0.0." + std::to_string(i + 1));
  return v;
}

Result<plan::ValueFn> value_source(const spec::Inputs& in, const std::string& weights) {
  if (weights.empty()) return plan::ValueFn{};
  auto st = exec::read_safetensors(weights);
  if (!st) return st.status();
  auto table = std::make_shared<std::vector<exec::StTensor>>(in.trainer.params.size());
  std::string missing;
  for (size_t i = 0; i < in.trainer.params.size(); ++i) {
    const spec::Param& p = in.trainer.params[i];
    auto it = st->find(p.name);
    if (it == st->end()) {
      missing += (missing.empty() ? "" : ", ") + p.name;
      continue;
    }
    if (!(it->second.shape == p.shape))
      return invalid("{}: '{}' has shape {}, the trainer spec says {}", weights, p.name,
                     it->second.shape.str(), p.shape.str());
    (*table)[i] = std::move(it->second);
  }
  if (!missing.empty()) return invalid("{}: no tensors for trainer params {}", weights, missing);
  return plan::ValueFn([table](int param, int64_t index, uint64_t step) {
    const exec::StTensor& t = (*table)[static_cast<size_t>(param)];
    const float v = core::load_as_float(
        t.dtype, t.data.data() + static_cast<size_t>(index) * core::dtype_size(t.dtype));
    return v * (1.0f + static_cast<float>(step - 1) / 8.0f);
  });
}

uint64_t rss_kib() {
  std::ifstream f("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) / 1024;
}

api::JobConfig job_config(const DemoOptions& o, const std::string& rdv, const std::string& token) {
  api::JobConfig c;
  c.trainer_spec = o.trainer;
  c.inference_spec = o.inference;
  c.topology = o.topology;
  c.rendezvous = rdv;
  c.token = token;
  c.provider = o.provider;
  c.backend = o.backend;
  c.nics = nic_names(o);
  c.deadline_s = o.deadline_s;
  c.cuda_device = o.device == "cuda" ? 0 : -1;  // (each trainer: its rank's GPU of --gpus)
  c.receiver_staging = o.staging;
  c.gathers = o.gathers;
  return c;
}

std::string report_key(const std::string& role, size_t i) {
  return fmt::format("{}/{}/demo/report", role, i);
}
std::string joined_key(const std::string& role, size_t i) {
  return fmt::format("{}/{}/demo/joined", role, i);
}

Result<std::string> report_of(transport::RendezvousClient& rdv, const std::string& key, int round,
                              uint64_t& seen, Clock::time_point deadline) {
  for (;;) {
    auto v = rdv.get_newer(key, seen, deadline);
    if (!v) return v.status();
    seen = v->version;
    const std::string t(v->value.begin(), v->value.end());
    const auto sp = t.find(' ');
    if (sp != std::string::npos && t.substr(0, sp) == std::to_string(round))
      return t.substr(sp + 1);
  }
}

}  // namespace weightcast::cli::demo
