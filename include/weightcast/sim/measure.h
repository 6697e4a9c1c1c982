// Measuring a machine profile on the machine at hand: one-sided writes over libfabric's
// tcp;ofi_rxm on loopback (the NIC rate, the host's shared path, the cost of one write) and the
// CPU projections of a plan (their rate and fixed cost). `weightcast profile` writes what these
// measure; the perf benchmarks measure the same way in their own run and set the simulated step
// beside the measured one (docs/simulator.md).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "weightcast/core/status.h"
#include "weightcast/plan/plan.h"
#include "weightcast/sim/sim.h"
#include "weightcast/spec/spec_parser.h"

namespace weightcast::sim {

// A raw transfer: per writer, the writes it posts (all at once, one batch). Writers are
// progress engines in this process; targets are engines in a child process.
struct WritePattern {
  struct Op {
    uint32_t target = 0;
    uint64_t src_off = 0, dst_off = 0, len = 0;
  };
  std::vector<uint64_t> src_bytes, dst_bytes;  // buffer size per writer, per target
  std::vector<std::vector<Op>> ops;            // per writer
};

// Every writer sends writes of `size` bytes to every target (`per_pair` bytes, at least 8
// writes, per pair), all from and to one buffer of `size` bytes (`fresh` = false), or each from and
// to memory of its own (`fresh`), as a step's writes are: then no byte comes from a CPU cache.
WritePattern all_pairs(uint32_t writers, uint32_t targets, uint64_t size, bool fresh,
                       uint64_t per_pair = 128ull << 20);
// A plan's writes as its senders order them (sizes, pairs), each from and to memory of its own:
// no gathers, no projections, no phases.
WritePattern plan_writes(const plan::Plan& plan);

// Bytes per second over all writes of the pattern on loopback (tcp;ofi_rxm, one NIC per
// engine): the best of 2 repetitions after a warm-up; a repetition ends when every target
// counted every immediate. Forks the targets' process: call it before this process starts
// threads it needs in a child, or touches CUDA.
Result<double> write_rate(const WritePattern& pattern);

// What measure_loopback found, and how: the inputs of the profile's NIC fields.
struct LoopbackRates {
  uint64_t large_bytes = 16 << 20, small_bytes = 4 << 10, per_pair = 128ull << 20;
  double pair_bytes_per_s = 0;        // 1 writer -> 1 target, large writes
  double pair_small_bytes_per_s = 0;  // 1 writer -> 1 target, small writes
  double host_bytes_per_s = 0;        // 4 writers -> 2 targets, large writes, fresh memory
  double host_small_bytes_per_s = 0;  // 4 writers -> 2 targets, small writes
  // The rendezvous: one client's get() round trip, the server's time per request when 8
  // clients ask at once, and its time per key of a 128-key many-key request.
  double rdv_rtt_us = 0, rdv_server_us = 0, rdv_key_us = 0;
};
// `progress` (optional) hears what each run measures before it starts.
Result<LoopbackRates> measure_loopback(
    uint64_t large_bytes = 16 << 20, uint64_t small_bytes = 4 << 10,
    uint64_t per_pair = 128ull << 20, const std::function<void(const std::string&)>& progress = {});

// The rendezvous part of measure_loopback (an embedded server on loopback, as the Controller's).
Status measure_rendezvous(LoopbackRates& into);

// The loopback profile those rates give: nic_gbps = one pair's rate, host_bytes_per_s = the
// 4 x 2 rate from fresh memory (every loopback write is a copy by this host's CPUs), write_us =
// what a small write costs beyond its bytes at the pair's rate, host_write_us the same at the
// 4 x 2 rate, the readiness from the rendezvous; host memory on both sides.
Profile loopback_profile(const LoopbackRates& r);

// Runs every projection of `plan` on this CPU, on all its cores at once (source bytes filled
// with `fill`), and sets the profile's project_bytes_per_s (per core, from the larger half),
// project_us (from the smaller half) and cpu_cores. Returns the seconds a pass over all of
// them took.
Result<double> measure_projection_cpu(const spec::Inputs& in, const plan::Plan& plan,
                                      Profile& profile, std::byte fill = std::byte{0x3c});

}  // namespace weightcast::sim
