// Dry-run report: what moves, how balanced it is, and how long it should take next to the floor
// set by the busiest receiver's ingress.
#include "weightcast/plan/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <numeric>

namespace weightcast::plan {

namespace {
// Bucket upper bounds: < 4 KiB, < 64 KiB, < 1 MiB, < 4 MiB, < 16 MiB, >= 16 MiB.
constexpr uint64_t kBounds[] = {4ull << 10, 64ull << 10, 1ull << 20, 4ull << 20, 16ull << 20};
constexpr size_t kBuckets = std::size(kBounds) + 1;
}  // namespace

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int i = 0;
  while (b >= 1024 && i < 5) {
    b /= 1024;
    ++i;
  }
  return i == 0 ? fmt::format("{:.0f} B", b) : fmt::format("{:.2f} {}", b, units[i]);
}

std::string bucket_label(size_t i) {
  if (i == 0) return "< 4 KiB";
  if (i == kBuckets - 1) return ">= 16 MiB";
  return fmt::format("{} .. {}", human_bytes(static_cast<double>(kBounds[i - 1])),
                     human_bytes(static_cast<double>(kBounds[i])));
}

Stats stats_of(const std::vector<double>& v) {
  if (v.empty()) return {};
  const auto [mn, mx] = std::minmax_element(v.begin(), v.end());
  return {*mn, std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size()), *mx};
}

namespace {
// The summary's last fields, from the per-rank byte lists and the link times both costings
// compute: gathers of phase k+1 overlap the writes of phase k, so the slower of the two bounds
// the step (the pieces a rank sends are already in its links' time).
void finish(Summary& s, const std::vector<double>& sb, const std::vector<double>& rb,
            const std::vector<double>& snb, const std::vector<double>& rnb, double net, double gat,
            double floor) {
  s.sender_bytes = stats_of(sb);
  s.receiver_bytes = stats_of(rb);
  s.sender_nic_bytes = stats_of(snb);
  s.receiver_nic_bytes = stats_of(rnb);
  s.network_s = net;
  s.gather_s = gat;
  s.predicted_s = std::max(net, gat);
  s.ingress_floor_s = floor;
}

// hybrid_links: writes between ranks of one host ride its ipc link (at nvlink_gbps), the others
// their NIC (the one the plan picked); gather pieces stay inside a host, on the ipc links. Each
// rank's ipc link and NICs run at once: a rank's time is its busiest link's.
Summary summarize_hybrid(const Plan& p, Summary s, const std::vector<uint64_t>& gather_out) {
  std::vector<double> s_ipc(p.senders.size()), r_ipc(p.receivers.size());
  std::vector<std::vector<double>> s_nic(p.senders.size()), r_nic(p.receivers.size());
  for (size_t i = 0; i < p.senders.size(); ++i)
    s_nic[i].assign(std::max<size_t>(1, p.senders[i].nic_bytes.size()), 0);
  for (size_t j = 0; j < p.receivers.size(); ++j)
    r_nic[j].assign(std::max<size_t>(1, p.receivers[j].nic_bytes.size()), 0);
  for (const Write& w : p.writes) {
    const uint32_t rc = p.dests[w.dest].receiver;
    const auto len = static_cast<double>(w.len);
    if (p.senders[w.sender].host == p.receivers[rc].host) {
      s_ipc[w.sender] += len;
      r_ipc[rc] += len;
      s.ipc_bytes += w.len;
    } else {
      s_nic[w.sender][std::min<size_t>(w.nic, s_nic[w.sender].size() - 1)] += len;
      r_nic[rc][std::min<size_t>(w.dst_nic, r_nic[rc].size() - 1)] += len;
    }
  }
  std::vector<double> sb, rb, snb, rnb;
  double net = 0, gat = 0, floor = 0;
  for (size_t i = 0; i < p.senders.size(); ++i) {
    const Sender& x = p.senders[i];
    const double link = x.nvlink_gbps * 1e9;
    sb.push_back(static_cast<double>(x.bytes_out));
    s.staging_peak = std::max(s.staging_peak, x.staging_gather + x.staging_ring);
    s.staging_gather = std::max(s.staging_gather, x.staging_gather);
    net = std::max(net, (s_ipc[i] + static_cast<double>(gather_out[i])) * 8 / link);
    for (double n : s_nic[i]) {
      net = std::max(net, n * 8 / (x.nic_gbps * 1e9));
      snb.push_back(n);
    }
    gat = std::max(gat, static_cast<double>(x.gather_bytes_in) * 8 / link);
    s.gather_out_bytes = std::max(s.gather_out_bytes, gather_out[i]);
  }
  for (size_t j = 0; j < p.receivers.size(); ++j) {
    const Receiver& r = p.receivers[j];
    rb.push_back(static_cast<double>(r.bytes_in));
    // (A receiver's ipc link rate: its host's, as its senders on that host record it.)
    double link = 0;
    for (const Sender& x : p.senders)
      if (x.host == r.host) link = std::max(link, x.nvlink_gbps * 1e9);
    double t = link > 0 ? r_ipc[j] * 8 / link : 0;
    for (double n : r_nic[j]) {
      t = std::max(t, n * 8 / (r.nic_gbps * 1e9));
      rnb.push_back(n);
    }
    net = std::max(net, t);
    floor = std::max(floor, t);
    for (uint32_t c : r.expected_imms) s.imms += c;
  }
  finish(s, sb, rb, snb, rnb, net, gat, floor);
  return s;
}

// The ipc and NIC costings: every write and piece on the rank's NICs (striped), or all on its
// one ipc link.
Summary summarize_links(const Plan& p, Summary s, const std::vector<uint64_t>& gather_out) {
  // Same-host ipc links: one GPU-to-GPU path per rank at the host's nvlink_gbps, whatever the
  // number of links the transport stripes over.
  const bool ipc = p.options.ipc_links;
  const double ipc_gbps = p.senders.empty() ? 0 : p.senders[0].nvlink_gbps;
  std::vector<double> sb, rb, snb, rnb;
  double net = 0, gat = 0, floor = 0;
  for (size_t i = 0; i < p.senders.size(); ++i) {
    const Sender& x = p.senders[i];
    sb.push_back(static_cast<double>(x.bytes_out));
    s.staging_peak = std::max(s.staging_peak, x.staging_gather + x.staging_ring);
    s.staging_gather = std::max(s.staging_gather, x.staging_gather);
    const double nics = static_cast<double>(std::max<size_t>(1, x.nic_bytes.size()));
    const double out = static_cast<double>(gather_out[i]),
                 in = static_cast<double>(x.gather_bytes_in);
    if (ipc) {  // one link carries everything
      net = std::max(net, (static_cast<double>(x.bytes_out) + out) * 8 / (ipc_gbps * 1e9));
      gat = std::max(gat, in * 8 / (ipc_gbps * 1e9));
    } else {  // each NIC its stripe of the writes and of the pieces sent
      for (uint64_t n : x.nic_bytes)
        net = std::max(net, (static_cast<double>(n) + out / nics) * 8 / (x.nic_gbps * 1e9));
      gat = std::max(gat, in * 8 / (x.nic_gbps * 1e9 * nics));
    }
    for (uint64_t n : x.nic_bytes) snb.push_back(static_cast<double>(n));
    s.gather_out_bytes = std::max(s.gather_out_bytes, gather_out[i]);
  }
  for (const Receiver& r : p.receivers) {
    rb.push_back(static_cast<double>(r.bytes_in));
    const double link = ipc ? ipc_gbps : r.nic_gbps * r.nics;
    for (uint64_t n : r.nic_bytes) {
      rnb.push_back(static_cast<double>(n));
      if (!ipc) net = std::max(net, static_cast<double>(n) * 8 / (r.nic_gbps * 1e9));
    }
    if (ipc) net = std::max(net, static_cast<double>(r.bytes_in) * 8 / (link * 1e9));
    for (uint32_t c : r.expected_imms) s.imms += c;
    floor = std::max(floor, static_cast<double>(r.bytes_in) * 8 / (link * 1e9));
  }
  finish(s, sb, rb, snb, rnb, net, gat, floor);
  return s;
}
}  // namespace

Summary summarize(const Plan& p) {
  Summary s;
  s.histogram.assign(kBuckets, 0);
  std::map<int32_t, uint64_t> small;
  for (const Write& w : p.writes) {
    if (w.len < kBounds[0]) ++small[p.dests[w.dest].param * 2 + p.dests[w.dest].scale];
    s.bytes += w.len;
    ++s.writes;
    s.direct_writes += w.project == Write::kDirect;
    size_t b = 0;
    while (b < std::size(kBounds) && w.len >= kBounds[b]) ++b;
    ++s.histogram[b];
  }
  for (const Gather& g : p.gathers) {
    ++s.gathers;
    s.gather_bytes += g.bytes;
    if (g.cross_domain) {
      ++s.cross_gathers;
      s.cross_gather_bytes += g.bytes;
    }
  }
  for (const auto& [k, n] : small)
    s.small_writers.push_back({p.dest_names[k / 2] + (k % 2 ? " (scales)" : ""), n});
  std::sort(s.small_writers.begin(), s.small_writers.end(),
            [](const auto& a, const auto& b) { return a.second > b.second; });
  if (s.small_writers.size() > 3) s.small_writers.resize(3);
  // Gathers run on the host collective: each piece is a one-sided write from its member into
  // the root's registered buffer, striped over the member's NICs like any write. So the pieces
  // a rank sends share its NICs with its writes, and a root takes its pieces in at its NIC rate.
  // On NCCL (nccl_gathers) they ride NVLink instead: apart from the NICs, at nvlink_gbps.
  std::vector<uint64_t> gather_out(p.senders.size(), 0);
  for (const Gather& g : p.gathers) {
    int64_t from_others = 0;
    for (const Gather::Piece& pc : g.pieces) from_others += pc.rank != g.root ? pc.box.numel() : 0;
    if (from_others == 0) continue;
    for (const Gather::Piece& pc : g.pieces)
      if (pc.rank != g.root && pc.rank < gather_out.size())
        gather_out[pc.rank] +=
            g.bytes * static_cast<uint64_t>(pc.box.numel()) / static_cast<uint64_t>(from_others);
  }
  // On NCCL the pieces ride NVLink, apart from the NICs: the links carry only the writes, and
  // the gathers take their bytes' NVLink time (each rank's in and out at once).
  double nccl_s = 0;
  uint64_t most_out = 0;
  if (p.options.nccl_gathers) {
    for (size_t i = 0; i < p.senders.size(); ++i) {
      const double nv = p.senders[i].nvlink_gbps * 1e9;
      nccl_s = std::max({nccl_s, static_cast<double>(gather_out[i]) * 8 / nv,
                         static_cast<double>(p.senders[i].gather_bytes_in) * 8 / nv});
      most_out = std::max(most_out, gather_out[i]);
    }
    std::fill(gather_out.begin(), gather_out.end(), 0);
  }
  Summary out = p.options.hybrid_links ? summarize_hybrid(p, s, gather_out)
                                       : summarize_links(p, s, gather_out);
  if (p.options.nccl_gathers) {
    out.gather_s = nccl_s;
    out.predicted_s = std::max(out.network_s, nccl_s);
    out.gather_out_bytes = most_out;
  }
  return out;
}

std::string report(const Plan& p, const std::string& title) {
  const Summary s = summarize(p);
  std::string o;
  auto line = [&]<typename... A>(fmt::format_string<A...> f, A&&... args) {
    o += fmt::format(f, std::forward<A>(args)...) + "\n";
  };
  auto row = [&](const char* what, const Stats& st) {
    line("  {:<22} min {:>12}  mean {:>12}  max {:>12}  imbalance {:.3f}", what,
         human_bytes(st.min), human_bytes(st.mean), human_bytes(st.max), st.imbalance());
  };
  uint64_t nparams = 0;
  for (const DestTensor& d : p.dests) nparams += !d.scale;
  line("weightcast plan: {}", title);
  line("  inputs {}  (scale 1/{})", p.inputs_digest, p.scale);
  line("  trainer params {}, inference params {}, senders {}, receivers {}, phases {}",
       p.source_names.size(), p.dest_names.size(), p.senders.size(), p.receivers.size(), p.phases);
  line("  dest tensors {} ({} weights, {} scale tensors)", p.dests.size(), nparams,
       p.dests.size() - nparams);
  line("moved");
  line("  bytes                  {} ({} B)", human_bytes(static_cast<double>(s.bytes)), s.bytes);
  line("  writes                 {} ({} direct from trainer shards, {} from staging), imms {}",
       s.writes, s.direct_writes, s.writes - s.direct_writes, s.imms);
  line("balance");
  row("per sender", s.sender_bytes);
  row("per receiver", s.receiver_bytes);
  row("per sender NIC", s.sender_nic_bytes);
  row("per receiver NIC", s.receiver_nic_bytes);
  line("write sizes");
  for (size_t i = 0; i < s.histogram.size(); ++i)
    line("  {:<22} {:>10}  {:5.1f}%", bucket_label(i), s.histogram[i],
         s.writes ? 100.0 * static_cast<double>(s.histogram[i]) / static_cast<double>(s.writes)
                  : 0.0);
  for (const auto& [name, n] : s.small_writers) line("  most writes < 4 KiB:   {} x {}", n, name);
  if (p.options.nccl_gathers)
    line(
        "gathers (NCCL inside each NVLink domain: sends and receives over NVLink, costed at "
        "nvlink_gbps apart from the NICs)");
  else
    line(
        "gathers (host collective: one-sided writes into the root's registered buffer, over the "
        "trainers' {}; JobConfig.gathers \"nccl\" runs them on NCCL)",
        p.options.ipc_links      ? "ipc links"
        : p.options.hybrid_links ? "ipc links in a host"
                                 : "NICs");
  line("  count {}, bytes {}, most sent by one rank {}", s.gathers,
       human_bytes(static_cast<double>(s.gather_bytes)),
       human_bytes(static_cast<double>(s.gather_out_bytes)));
  if (s.cross_gathers)
    line(
        "  WARNING: {} gathers ({}) cross NVLink domains and would run over the inter-node "
        "network; lay the trainer mesh so shard groups sit inside a host, or refuse them with "
        "--intra-node-gathers-only",
        s.cross_gathers, human_bytes(static_cast<double>(s.cross_gather_bytes)));
  line("staging");
  line(
      "  peak per sender        {} (watermark {}): gather buffers of one phase (max {}) plus a "
      "ring the projections cycle through",
      human_bytes(static_cast<double>(s.staging_peak)),
      human_bytes(static_cast<double>(p.options.staging_watermark)),
      human_bytes(static_cast<double>(s.staging_gather)));
  const char* link = p.options.ipc_links || p.options.hybrid_links ? "link" : "NIC";
  if (p.options.hybrid_links)
    line(
        "time (links: same-host pairs over ipc at the host's nvlink_gbps, {} of the bytes; the "
        "others on the NICs)",
        human_bytes(static_cast<double>(s.ipc_bytes)));
  else if (p.options.ipc_links)
    line("time (links: same-host ipc, {:g} Gb/s per GPU, the host's nvlink_gbps)",
         p.senders.empty() ? 0.0 : p.senders[0].nvlink_gbps);
  else
    line("time (links: the NICs, at the topology's rates)");
  line("  network                {:.3f} s (busiest {}: writes, and the gather pieces a rank sends)",
       s.network_s, link);
  line("  gathers                {:.3f} s (busiest root taking its pieces in at its {} rate)",
       s.gather_s, link);
  line("  predicted              {:.3f} s", s.predicted_s);
  line("  ingress floor          {:.3f} s (busiest receiver's bytes / its {} rate)",
       s.ingress_floor_s,
       p.options.ipc_links      ? "ipc link's"
       : p.options.hybrid_links ? "ipc link's and NICs'"
                                : "NICs'");
  line("  predicted / floor      {:.2f}x",
       s.ingress_floor_s > 0 ? s.predicted_s / s.ingress_floor_s : 0.0);
  return o;
}

}  // namespace weightcast::plan
