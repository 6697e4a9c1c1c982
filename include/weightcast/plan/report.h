// The dry-run report and the sender x receiver SVG, both computed from a Plan alone (so a saved
// plan reports the same as a fresh one).
#pragma once

#include <string>

#include "weightcast/plan/plan.h"

namespace weightcast::plan {

struct Stats {
  double min = 0, mean = 0, max = 0;
  double imbalance() const { return mean > 0 ? max / mean : 1.0; }
};
Stats stats_of(const std::vector<double>& v);

struct Summary {
  uint64_t bytes = 0, writes = 0, direct_writes = 0, imms = 0;
  uint64_t gathers = 0, gather_bytes = 0, cross_gathers = 0, cross_gather_bytes = 0;
  uint64_t staging_peak = 0, staging_gather = 0;  // max over senders
  uint64_t gather_out_bytes = 0;                  // most gather bytes one rank sends to its roots
  Stats sender_bytes, receiver_bytes, sender_nic_bytes, receiver_nic_bytes;
  double network_s = 0, gather_s = 0, predicted_s = 0, ingress_floor_s = 0;
  uint64_t ipc_bytes = 0;           // hybrid_links: bytes of writes between ranks of one host
  std::vector<uint64_t> histogram;  // writes per size bucket, see bucket_label
  std::vector<std::pair<std::string, uint64_t>> small_writers;  // params with most writes < 4 KiB
};
Summary summarize(const Plan& plan);
std::string bucket_label(size_t i);

std::string report(const Plan& plan, const std::string& title);
std::string svg_matrix(const Plan& plan);

std::string human_bytes(double b);

}  // namespace weightcast::plan
