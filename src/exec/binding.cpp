// Arena layouts and per-sender immediate expectations.
#include "weightcast/exec/binding.h"

#include "weightcast/spec/layout.h"

namespace weightcast::exec {

namespace {
uint64_t align(uint64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }
}  // namespace

SenderLayout sender_layout(const spec::Inputs& in, uint32_t rank) {
  SenderLayout l;
  for (size_t i = 0; i < in.trainer.params.size(); ++i) {
    const spec::Param& p = in.trainer.params[i];
    auto b = spec::local_box(p.shape, p.placement, in.trainer.mesh, rank);
    if (!b || b->empty()) continue;
    ShardSlot s{static_cast<int>(i), *b, l.bytes, static_cast<uint64_t>(b->numel()) * core::dtype_size(p.dtype)};
    l.by_param[s.param] = l.shards.size();
    l.shards.push_back(s);
    l.bytes = align(l.bytes + s.bytes);
  }
  return l;
}

ReceiverLayout receiver_layout(const plan::Plan& plan, uint32_t receiver) {
  ReceiverLayout l;
  for (uint32_t d = 0; d < plan.dests.size(); ++d) {
    if (plan.dests[d].receiver != receiver) continue;
    l.offset[d] = l.bytes;
    l.bytes = align(l.bytes + plan.dests[d].bytes);
  }
  return l;
}

std::vector<Expectation> expectations(const plan::Plan& plan, uint32_t receiver, uint32_t nics) {
  std::map<std::pair<uint16_t, uint16_t>, uint64_t> n;
  for (const plan::Write& w : plan.writes)
    if (plan.dests[w.dest].receiver == receiver) n[{w.phase, static_cast<uint16_t>(w.sender)}] += nics;
  std::vector<Expectation> out;
  for (const auto& [k, c] : n) out.push_back({k.first, k.second, c});
  return out;
}

}  // namespace weightcast::exec
