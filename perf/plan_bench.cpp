// Planning time and peak RSS for a config (default Kimi-K2: 256 trainer GPUs -> 128 FP8
// inference GPUs), against the targets (<= 2 s, <= 1 GiB on a 2-core machine), and the plan's
// predicted transfer time against two baselines computed from the same topology: the ingress
// floor, and the open-source default of gathering on trainer rank 0 and sending from its NIC.
#include <algorithm>
#include <cstdio>
#include <string>

#include "harness.h"
#include "weightcast/plan/planner.h"
#include "weightcast/plan/report.h"

using namespace weightcast;  // NOLINT

int main(int argc, char** argv) {
  const std::string name = argc > 1 ? argv[1] : "kimi-k2";
  const std::string dir = std::string(WC_SOURCE_DIR) + "/configs/" + name + "/";
  const int reps = argc > 2 ? std::atoi(argv[2]) : 3;
  double best = 1e30;
  plan::Summary sum;
  size_t writes = 0;
  double rank0_gbps = 0;
  for (int r = 0; r < reps; ++r) {
    const double t0 = perf::now_s();
    auto in =
        spec::load_inputs(dir + "trainer.json", dir + "inference.json", dir + "topology.json");
    if (!in) {
      std::fprintf(stderr, "%s\n", in.status().message().c_str());
      return 2;
    }
    auto p = plan::make_plan(*in, {});
    if (!p) {
      std::fprintf(stderr, "%s\n", p.status().message().c_str());
      return 1;
    }
    best = std::min(best, perf::now_s() - t0);
    sum = plan::summarize(*p);
    writes = p->writes.size();
    rank0_gbps = p->senders[0].nic_gbps * p->senders[0].nics;
  }
  const double rss = perf::peak_rss_bytes();
  std::printf("plan_bench %s: best of %d runs, %zu writes, %.2f TiB moved\n", name.c_str(), reps,
              writes, static_cast<double>(sum.bytes) / (1ull << 40));
  perf::ratio("planning time (parse+plan)", best, 2.0, "s", "target <= 1.0 of 2 s");
  perf::ratio("peak RSS", rss / (1 << 20), 1024.0, "MiB", "target <= 1.0 of 1 GiB");
  perf::ratio("predicted step vs ingress floor", sum.predicted_s, sum.ingress_floor_s, "s",
              "1.0 is optimal");
  // Rank-0 baseline: every byte leaves through one trainer GPU's NICs.
  const double rank0_s = static_cast<double>(sum.bytes) * 8 / (rank0_gbps * 1e9);
  perf::ratio("predicted step vs rank-0 send", sum.predicted_s, rank0_s, "s", "lower is better");
  return 0;
}
