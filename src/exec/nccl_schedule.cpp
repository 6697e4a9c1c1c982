// The NCCL collective's schedule (nccl_collective.h): groups, per-phase transfers, offsets and
// the run-by-run piece copies. No CUDA here: the CPU tests run it through an in-memory exchange.
#include <algorithm>
#include <map>

#include "weightcast/exec/nccl_collective.h"

namespace weightcast::exec {

std::vector<uint32_t> gather_group(const spec::Inputs& in, uint32_t rank) {
  const auto& devs = in.trainer.mesh.devices;
  auto domain = [&](uint32_t r) -> std::string {
    const auto* h = in.topology.find(devs[r].host);
    return h ? h->nvlink_domain : devs[r].host;
  };
  std::vector<uint32_t> g;
  if (rank >= devs.size()) return g;
  const std::string mine = domain(rank);
  for (uint32_t r = 0; r < devs.size(); ++r)
    if (domain(r) == mine) g.push_back(r);
  return g;
}

namespace {
uint64_t piece_bytes(const spec::Inputs& in, const plan::Gather& g, size_t p) {
  return static_cast<uint64_t>(g.pieces[p].box.numel()) *
         core::dtype_size(in.trainer.params[g.param].dtype);
}
}  // namespace

std::vector<PhaseTransfers> phase_transfers(const spec::Inputs& in, const plan::Plan& plan,
                                            uint32_t rank) {
  std::vector<PhaseTransfers> out(plan.phases);
  for (uint32_t gi = 0; gi < plan.gathers.size(); ++gi) {
    const plan::Gather& g = plan.gathers[gi];
    if (g.phase >= out.size()) continue;
    PhaseTransfers& ph = out[g.phase];
    for (uint32_t p = 0; p < g.pieces.size(); ++p) {
      const uint32_t member = g.pieces[p].rank;
      const uint64_t n = piece_bytes(in, g, p);
      if (g.root == rank && member == rank) {
        ph.local.push_back({gi, p, rank, n, 0});
      } else if (g.root == rank) {
        ph.recvs.push_back({gi, p, member, n, ph.recv_bytes});
        ph.recv_bytes += n;
      } else if (member == rank) {
        ph.sends.push_back({gi, p, g.root, n, ph.send_bytes});
        ph.send_bytes += n;
      }
    }
  }
  return out;
}

std::pair<std::vector<uint64_t>, uint64_t> gather_offsets(const spec::Inputs& in,
                                                          const plan::Plan& plan, uint32_t rank) {
  std::vector<uint64_t> off(plan.gathers.size(), 0);
  std::map<uint16_t, uint64_t> used;  // phase -> bytes of this root's boxes
  uint64_t most = 0;
  for (uint32_t gi = 0; gi < plan.gathers.size(); ++gi) {
    const plan::Gather& g = plan.gathers[gi];
    if (g.root != rank) continue;
    off[gi] = used[g.phase];
    used[g.phase] +=
        static_cast<uint64_t>(g.box.numel()) * core::dtype_size(in.trainer.params[g.param].dtype);
    most = std::max(most, used[g.phase]);
  }
  return {off, most};
}

Status copy_piece(const core::Box& piece, const core::Box& from, const std::byte* src,
                  const core::Box& to, std::byte* dst, size_t esize, const CopyFn& copy) {
  if (!from.contains(piece) || !to.contains(piece))
    return invalid("piece {} is not inside {} and {}", piece.str(), from.str(), to.str());
  // Both run lists follow the piece's row-major order: walk them together.
  std::vector<std::pair<int64_t, int64_t>> src_runs;
  core::for_each_run(from.extents(), core::relative(piece, from), [&](int64_t off, int64_t len) {
    src_runs.push_back({off, len});
  });
  size_t k = 0;
  int64_t used = 0;
  Status st;
  core::for_each_run(to.extents(), core::relative(piece, to), [&](int64_t off, int64_t len) {
    while (len > 0 && st && k < src_runs.size()) {
      const int64_t take = std::min(len, src_runs[k].second - used);
      st = copy(dst + off * static_cast<int64_t>(esize),
                src + (src_runs[k].first + used) * static_cast<int64_t>(esize),
                static_cast<uint64_t>(take) * esize);
      off += take;
      len -= take;
      used += take;
      if (used == src_runs[k].second) {
        ++k;
        used = 0;
      }
    }
  });
  return st;
}

}  // namespace weightcast::exec
