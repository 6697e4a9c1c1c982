// Binding a plan to memory on one process: where each trainer shard and each inference tensor
// sits inside one registered arena. Both sides compute the same layout from the plan and specs,
// so a receiver publishes one descriptor and senders address any tensor by offset.
#pragma once

#include <map>
#include <vector>

#include "weightcast/plan/plan.h"
#include "weightcast/spec/spec_parser.h"
#include "weightcast/transport/nic_group.h"

namespace weightcast::exec {

inline constexpr uint64_t kAlign = 256;

struct ShardSlot {
  int param = -1;
  core::Box box;  // global box this rank holds
  uint64_t offset = 0, bytes = 0;
};

// Trainer rank's shards: every trainer param it holds, in param order.
struct SenderLayout {
  std::vector<ShardSlot> shards;
  std::map<int, size_t> by_param;
  uint64_t bytes = 0;
};
SenderLayout sender_layout(const spec::Inputs& in, uint32_t rank);

// Inference rank's tensors: every dest tensor of the receiver, in plan order.
struct ReceiverLayout {
  std::map<uint32_t, uint64_t> offset;  // dest id -> offset in the arena
  uint64_t bytes = 0;
};
ReceiverLayout receiver_layout(const plan::Plan& plan, uint32_t receiver);

// Immediates a receiver must count per (phase, sender) in one step, with `nics` NICs per write.
struct Expectation {
  uint16_t phase, sender;
  uint64_t count;
};
std::vector<Expectation> expectations(const plan::Plan& plan, uint32_t receiver, uint32_t nics);

// A receiver's published buffers: one remote descriptor per dest tensor, in one blob.
std::vector<uint8_t> serialize_descriptors(
    const std::vector<std::pair<uint32_t, transport::RemoteRegion>>& d);
Result<std::map<uint32_t, transport::RemoteRegion>> parse_descriptors(
    std::span<const uint8_t> blob);

}  // namespace weightcast::exec
