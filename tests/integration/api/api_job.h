// What the API integration tests share: the demo-moe job with a controller in this process,
// receivers and senders that check every byte against the reference, one step on all of them.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <future>
#include <thread>

#include "weightcast/api/weightcast.h"
#include "weightcast/exec/binding.h"
#include "weightcast/plan/planner.h"
#include "weightcast/plan/verify.h"
#include "weightcast/spec/layout.h"

namespace weightcast::api::apitest {

struct Job {
  JobConfig cfg;
  std::unique_ptr<Controller> ctl;
  spec::Inputs in;
  plan::Plan plan;

  Job() {
    const std::string dir = std::string(WC_SOURCE_DIR) + "/configs/demo-moe/";
    cfg.trainer_spec = dir + "trainer.json";
    cfg.inference_spec = dir + "inference.json";
    cfg.topology = dir + "topology.json";
    cfg.deadline_s = 30;
    auto c = Controller::start(cfg);
    EXPECT_TRUE(c) << c.status().message();
    ctl = std::make_unique<Controller>(std::move(c).value());
    in = *spec::load_inputs(cfg.trainer_spec, cfg.inference_spec, cfg.topology);
    plan = *plan::make_plan(in, plan::Options{});  // what the controller planned
  }
};

struct Recv {
  std::unique_ptr<Receiver> r;
  std::vector<std::vector<std::byte>> bufs;
  WaitStats last;  // of the last successful wait
  Status open(const JobConfig& cfg, uint32_t index) {
    auto x = Receiver::create(cfg, index);
    if (!x) return x.status();
    r = std::make_unique<Receiver>(std::move(x).value());
    bufs.clear();
    for (const TensorInfo& t : r->tensors()) {
      bufs.emplace_back(t.bytes, std::byte{0xee});  // fresh buffers: nothing of the old ones
      if (Status s = r->register_tensor(t.name, bufs.back().data(), t.bytes, t.scales); !s)
        return s;
    }
    return r->publish();
  }
  // Every byte of every tensor of receiver `index` against the reference of `step`.
  std::string check(const Job& j, uint32_t index, uint64_t step) const {
    size_t k = 0;
    for (uint32_t d = 0; d < j.plan.dests.size(); ++d) {
      if (j.plan.dests[d].receiver != index) continue;
      const auto ref = plan::reference_tensor(j.in, j.plan.dests[d], j.plan.receivers[index], step);
      if (ref.size() != bufs[k].size() || std::memcmp(ref.data(), bufs[k].data(), ref.size()))
        return fmt::format("receiver {} step {}: '{}' differs from the reference", index, step,
                           j.plan.dest_names[j.plan.dests[d].param]);
      ++k;
    }
    return "";
  }
};

struct Send {
  std::unique_ptr<Sender> s;
  std::vector<std::pair<TensorInfo, std::vector<std::byte>>> shards;
  PushStats last;  // of the last successful push
  Status open(const JobConfig& cfg, uint32_t rank) {
    auto x = Sender::create(cfg, rank);
    if (!x) return x.status();
    s = std::make_unique<Sender>(std::move(x).value());
    shards.clear();
    for (const TensorInfo& t : s->tensors()) shards.push_back({t, std::vector<std::byte>(t.bytes)});
    for (auto& [t, buf] : shards)
      if (Status st = s->register_tensor(t.name, buf.data(), t.bytes); !st) return st;
    return s->prepare();
  }
  void train(const Job& j, uint32_t rank, uint64_t step) {  // new values in every element
    for (auto& shard : shards) {
      const auto& t = shard.first;
      auto& buf = shard.second;  // (not a structured binding: the lambda uses it)
      const spec::Param& p = j.in.trainer.params[j.in.trainer.index.at(t.name)];
      const auto box = *spec::local_box(p.shape, p.placement, j.in.trainer.mesh, rank);
      const uint64_t seed = plan::pattern_seed(t.name);
      size_t e = 0;
      core::for_each_run(p.shape, box, [&](int64_t off, int64_t len) {
        for (int64_t i = 0; i < len; ++i, ++e)
          core::store_from_float(p.dtype, plan::pattern_value(seed, off + i, step),
                                 buf.data() + e * core::dtype_size(p.dtype));
      });
    }
  }
};

// One step on every peer at once; the errors of those that failed.
inline std::vector<std::string> step_all(const Job& j, std::vector<Recv>& rs, std::vector<Send>& ss,
                                         uint64_t step) {
  std::vector<std::future<std::string>> f;
  for (uint32_t r = 0; r < rs.size(); ++r)
    f.push_back(std::async(std::launch::async, [&, r] {
      auto w = rs[r].r->wait(step);
      if (w) rs[r].last = *w;
      return w ? rs[r].check(j, r, step) : fmt::format("receiver {}: {}", r, w.status().message());
    }));
  for (uint32_t s = 0; s < ss.size(); ++s)
    f.push_back(std::async(std::launch::async, [&, s] {
      ss[s].train(j, s, step);
      auto p = ss[s].s->push(step);
      if (p) ss[s].last = *p;
      return p ? std::string() : fmt::format("sender {}: {}", s, p.status().message());
    }));
  std::vector<std::string> bad;
  for (auto& x : f)
    if (std::string e = x.get(); !e.empty()) bad.push_back(e);
  return bad;
}

// Opens every receiver and sender at once (each on a thread of its own); the first error.
inline Status open_all(const Job& j, std::vector<Recv>& rs, std::vector<Send>& ss) {
  std::vector<std::future<Status>> f;
  for (uint32_t r = 0; r < rs.size(); ++r)
    f.push_back(std::async(std::launch::async, [&, r] { return rs[r].open(j.cfg, r); }));
  for (uint32_t s = 0; s < ss.size(); ++s)
    f.push_back(std::async(std::launch::async, [&, s] { return ss[s].open(j.cfg, s); }));
  Status first;
  for (auto& x : f)
    if (Status st = x.get(); !st && first) first = st;
  return first;
}

}  // namespace weightcast::api::apitest
