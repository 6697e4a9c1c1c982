// The public API end to end in one process: a controller, every inference receiver and every
// trainer sender of a job (each in its own thread here; in production each is its own process
// on its own GPU). Trainers fill their shards with new values each step; receivers check every
// byte they got against the reference reshard.
//   api_example TRAINER.json INFERENCE.json TOPOLOGY.json [STEPS]
#include <cstdio>
#include <cstring>
#include <thread>

#include "weightcast/api/weightcast.h"
#include "weightcast/plan/planner.h"
#include "weightcast/plan/verify.h"
#include "weightcast/spec/layout.h"

using namespace weightcast;  // NOLINT

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s TRAINER.json INFERENCE.json TOPOLOGY.json [STEPS]\n", argv[0]);
    return 2;
  }
  api::JobConfig job;
  job.trainer_spec = argv[1];
  job.inference_spec = argv[2];
  job.topology = argv[3];
  job.deadline_s = 30;
  const int steps = argc > 4 ? std::atoi(argv[4]) : 2;
  auto ctl = api::Controller::start(job);
  if (!ctl) {
    std::fprintf(stderr, "%s\n", ctl.status().message().c_str());
    return 2;
  }
  // The reference side of the check (not part of the API).
  auto in = spec::load_inputs(job.trainer_spec, job.inference_spec, job.topology);
  plan::Options o;
  auto p = plan::make_plan(*in, o);
  std::atomic<int> errors{0};
  auto report = [&](const Status& s, const char* who) {
    if (!s) {
      std::fprintf(stderr, "%s: %s\n", who, s.message().c_str());
      ++errors;
    }
  };
  std::vector<std::thread> threads;
  for (uint32_t r = 0; r < ctl->receivers(); ++r)
    threads.emplace_back([&, r] {
      auto rc = api::Receiver::create(job, r);
      if (!rc) return report(rc.status(), "receiver");
      std::vector<std::vector<std::byte>> bufs;
      for (const api::TensorInfo& t : rc->tensors()) {
        bufs.emplace_back(t.bytes);
        report(rc->register_tensor(t.name, bufs.back().data(), t.bytes, t.scales), "register");
      }
      report(rc->publish(), "publish");
      for (int step = 1; step <= steps; ++step) {
        auto w = rc->wait(static_cast<uint64_t>(step));
        if (!w) return report(w.status(), "wait");
        size_t k = 0;
        for (uint32_t d = 0; d < p->dests.size(); ++d) {
          if (p->dests[d].receiver != r) continue;
          const auto ref = plan::reference_tensor(*in, p->dests[d], p->receivers[r],
                                                  static_cast<uint64_t>(step));
          if (std::memcmp(ref.data(), bufs[k++].data(), ref.size()) != 0)
            report(invalid("step {}: '{}' differs from the reference", step,
                           p->dest_names[p->dests[d].param]),
                   "verify");
        }
        std::printf("receiver %u step %d: %llu bytes landed and verified\n", r, step,
                    static_cast<unsigned long long>(w->bytes));
      }
    });
  for (uint32_t s = 0; s < ctl->senders(); ++s)
    threads.emplace_back([&, s] {
      auto snd = api::Sender::create(job, s);
      if (!snd) return report(snd.status(), "sender");
      std::vector<std::pair<api::TensorInfo, std::vector<std::byte>>> shards;
      for (const api::TensorInfo& t : snd->tensors()) {
        shards.push_back({t, std::vector<std::byte>(t.bytes)});
        report(snd->register_tensor(t.name, shards.back().second.data(), t.bytes), "register");
      }
      report(snd->prepare(), "prepare");
      for (int step = 1; step <= steps; ++step) {
        // "Training": new values for every element of every shard.
        for (auto& shard : shards) {
          const auto& t = shard.first;
          auto& buf = shard.second;
          const spec::Param& prm = in->trainer.params[in->trainer.index.at(t.name)];
          const auto box = *spec::local_box(prm.shape, prm.placement, in->trainer.mesh, s);
          const uint64_t seed = plan::pattern_seed(t.name);
          size_t e = 0;
          core::for_each_run(prm.shape, box, [&](int64_t off, int64_t len) {
            for (int64_t i = 0; i < len; ++i, ++e)
              core::store_from_float(
                  prm.dtype, plan::pattern_value(seed, off + i, static_cast<uint64_t>(step)),
                  buf.data() + e * core::dtype_size(prm.dtype));
          });
        }
        auto st = snd->push(static_cast<uint64_t>(step));
        if (!st) return report(st.status(), "push");
      }
    });
  for (auto& t : threads) t.join();
  std::printf("%s\n", errors ? "api_example FAILED" : "api_example OK");
  return errors ? 1 : 0;
}
