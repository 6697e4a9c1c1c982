// The NCCL collective's schedule on the CPU (no NCCL, no GPU): every trainer rank's part of a
// plan with gathers runs its phases through an in-memory exchange that matches sends and
// receives per pair in issue order, as NCCL's point-to-point calls do; each root's gathered
// boxes are then compared element by element with the boxes cut from the full tensors.
#include <gtest/gtest.h>

#include <cstring>
#include <deque>
#include <map>

#include "weightcast/exec/binding.h"
#include "weightcast/exec/memory.h"
#include "weightcast/exec/nccl_collective.h"
#include "weightcast/plan/part.h"
#include "weightcast/plan/planner.h"

namespace weightcast::exec {
namespace {

spec::Inputs config(const std::string& name) {
  const std::string dir = std::string(WC_SOURCE_DIR) + "/configs/" + name + "/";
  auto in =
      spec::load_inputs(dir + "trainer.json", dir + "inference.json", dir + "topology.json", {1});
  EXPECT_TRUE(in) << in.status().message();
  return std::move(in).value();
}

// Element `flat` (row-major in the full tensor) of trainer param `param`, as bytes: distinct per
// param and position.
void element(int param, int64_t flat, size_t esize, std::byte* out) {
  const uint64_t v =
      (static_cast<uint64_t>(param) << 40) ^ (static_cast<uint64_t>(flat) * 2654435761u);
  for (size_t b = 0; b < esize; ++b) out[b] = static_cast<std::byte>((v >> (8 * (b % 8))) + b);
}

// Box `box` of param `param` (full shape `shape`) cut element by element.
std::vector<std::byte> cut(int param, const core::Shape& shape, const core::Box& box,
                           size_t esize) {
  std::vector<std::byte> out(static_cast<size_t>(box.numel()) * esize);
  std::array<int64_t, core::kMaxDims> idx{};
  for (int d = 0; d < box.nd; ++d) idx[d] = box.lo[d];
  for (int64_t k = 0; k < box.numel(); ++k) {
    int64_t flat = 0;
    for (int d = 0; d < box.nd; ++d) flat = flat * shape[d] + idx[d];
    element(param, flat, esize, out.data() + static_cast<size_t>(k) * esize);
    for (int d = box.nd - 1; d >= 0; --d) {
      if (++idx[d] < box.hi[d]) break;
      idx[d] = box.lo[d];
    }
  }
  return out;
}

// Runs every rank's part phase by phase and checks every gathered box; counts the pieces moved.
void exchange_and_check(const spec::Inputs& in, const plan::Plan& whole, size_t& moved) {
  const uint32_t ranks = static_cast<uint32_t>(whole.senders.size());
  const CopyFn memcpy_fn = [](std::byte* d, const std::byte* s, uint64_t n) {
    std::memcpy(d, s, n);
    return Status::ok();
  };
  struct Rank {
    plan::Plan part;
    std::vector<PhaseTransfers> t;
    std::vector<uint64_t> off;
    std::vector<std::byte> gbuf;
    std::map<int, std::pair<core::Box, std::vector<std::byte>>> shards;
  };
  std::vector<Rank> rs(ranks);
  for (uint32_t r = 0; r < ranks; ++r) {
    rs[r].part = plan::trainer_part(whole, r);
    rs[r].t = phase_transfers(in, rs[r].part, r);
    auto [off, bytes] = gather_offsets(in, rs[r].part, r);
    rs[r].off = off;
    rs[r].gbuf.assign(bytes, std::byte{0});
    for (const ShardSlot& s : sender_layout(in, r).shards) {
      const auto& p = in.trainer.params[s.param];
      rs[r].shards[s.param] = {s.box, cut(s.param, p.shape, s.box, core::dtype_size(p.dtype))};
    }
  }
  for (uint16_t phase = 0; phase < whole.phases; ++phase) {
    std::map<std::pair<uint32_t, uint32_t>, std::deque<std::vector<std::byte>>> wire;
    for (uint32_t r = 0; r < ranks; ++r) {  // sends first (NCCL groups make the order moot)
      const PhaseTransfers& t = rs[r].t[phase];
      std::vector<std::byte> pack(t.send_bytes);
      for (const PieceTransfer& x : t.sends) {
        const plan::Gather& g = rs[r].part.gathers[x.gather];
        const size_t es = core::dtype_size(in.trainer.params[g.param].dtype);
        const auto& [box, data] = rs[r].shards.at(g.param);
        const core::Box& piece = g.pieces[x.piece].box;
        ASSERT_TRUE(copy_piece(piece, box, data.data(), piece, pack.data() + x.off, es, memcpy_fn));
        wire[{r, x.peer}].emplace_back(pack.begin() + static_cast<int64_t>(x.off),
                                       pack.begin() + static_cast<int64_t>(x.off + x.bytes));
      }
    }
    for (uint32_t r = 0; r < ranks; ++r) {
      const PhaseTransfers& t = rs[r].t[phase];
      for (const PieceTransfer& x : t.local) {
        const plan::Gather& g = rs[r].part.gathers[x.gather];
        const size_t es = core::dtype_size(in.trainer.params[g.param].dtype);
        const auto& [box, data] = rs[r].shards.at(g.param);
        ASSERT_TRUE(copy_piece(g.pieces[x.piece].box, box, data.data(), g.box,
                               rs[r].gbuf.data() + rs[r].off[x.gather], es, memcpy_fn));
      }
      for (const PieceTransfer& x : t.recvs) {
        auto& q = wire[{x.peer, r}];
        ASSERT_FALSE(q.empty()) << "phase " << phase << ": rank " << r << " receives from "
                                << x.peer << " more than it sent";
        ASSERT_EQ(q.front().size(), x.bytes)
            << "phase " << phase << ": sizes disagree, " << x.peer << " -> " << r;
        const plan::Gather& g = rs[r].part.gathers[x.gather];
        const size_t es = core::dtype_size(in.trainer.params[g.param].dtype);
        const core::Box& piece = g.pieces[x.piece].box;
        ASSERT_TRUE(copy_piece(piece, piece, q.front().data(), g.box,
                               rs[r].gbuf.data() + rs[r].off[x.gather], es, memcpy_fn));
        q.pop_front();
        ++moved;
      }
    }
    for (const auto& [pair, q] : wire)
      EXPECT_TRUE(q.empty()) << "phase " << phase << ": " << q.size() << " piece(s) from "
                             << pair.first << " to " << pair.second << " never received";
    // Every box gathered in this phase, before the next phase reuses the buffer.
    for (uint32_t r = 0; r < ranks; ++r)
      for (uint32_t gi = 0; gi < rs[r].part.gathers.size(); ++gi) {
        const plan::Gather& g = rs[r].part.gathers[gi];
        if (g.root != r || g.phase != phase) continue;
        const auto& p = in.trainer.params[g.param];
        const auto want = cut(g.param, p.shape, g.box, core::dtype_size(p.dtype));
        EXPECT_EQ(std::memcmp(rs[r].gbuf.data() + rs[r].off[gi], want.data(), want.size()), 0)
            << "phase " << phase << ": root " << r << " gathered '" << p.name << "' " << g.box.str()
            << " wrong";
      }
  }
}

TEST(NcclSchedule, EveryRankPartGathersTheRightBoxesThroughMatchedSendsAndReceives) {
  for (const char* name : {"demo-moe"}) {
    const spec::Inputs in = config(name);
    plan::Options packed;
    packed.gather_cost_us = 0;  // gathers wherever they pay for nothing
    packed.nccl_gathers = true;
    packed.intra_domain_gathers_only = true;
    auto p = plan::make_plan(in, packed);
    ASSERT_TRUE(p) << name << ": " << p.status().message();
    ASSERT_GT(p->gathers.size(), 0u) << name;
    size_t moved = 0;
    exchange_and_check(in, *p, moved);
    EXPECT_GT(moved, 0u) << name << ": no piece crossed ranks";
  }
}

TEST(NcclSchedule, GroupsAreNvlinkDomainsAndPiecesOutsideOneAreNamed) {
  const spec::Inputs in = config("demo-moe");
  const auto g0 = gather_group(in, 0);
  ASSERT_FALSE(g0.empty());
  EXPECT_EQ(g0.front(), 0u);
  for (uint32_t r : g0) EXPECT_EQ(gather_group(in, r), g0);  // every member agrees
  EXPECT_TRUE(gather_group(in, 1u << 20).empty());
  // A piece outside its box is refused, not copied.
  const CopyFn none = [](std::byte*, const std::byte*, uint64_t) { return Status::ok(); };
  core::Box a{2, {0, 0}, {4, 4}}, b{2, {0, 0}, {2, 8}};
  Status s = copy_piece(b, a, nullptr, b, nullptr, 2, none);
  EXPECT_FALSE(s);
  EXPECT_NE(s.message().find("is not inside"), std::string::npos) << s.message();
}

// Without NCCL or without a GPU (CI), creating the collective fails saying why.
TEST(NcclSchedule, WithoutNcclOrAGpuTheCollectiveIsRefusedWithTheReason) {
  if (cuda_devices() > 0 && nccl_available()) GTEST_SKIP() << "NCCL and a GPU are here";
  const spec::Inputs in = config("demo-moe");
  auto p = plan::make_plan(in, {});
  ASSERT_TRUE(p);
  auto c = create_nccl_collective(in, *p, 0, nullptr, nullptr, 0);
  ASSERT_FALSE(c);
  EXPECT_NE(c.status().message().find("NCCL gathers"), std::string::npos) << c.status().message();
}

}  // namespace
}  // namespace weightcast::exec
