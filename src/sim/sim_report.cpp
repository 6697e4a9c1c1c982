// The simulation as the dry-run's lines and as JSON: the predicted step, the floor beside it, and
// where the slowest path's time went.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "weightcast/sim/sim.h"

namespace weightcast::sim {

std::string report(const Simulation& s, const Profile& p) {
  std::string o;
  auto line = [&]<typename... A>(fmt::format_string<A...> f, A&&... args) {
    o += fmt::format(f, std::forward<A>(args)...) + "\n";
  };
  auto ms = [](double x) { return x * 1e3; };
  line("simulated step (profile: {})", p.name);
  line("  predicted              {:.3f} s ({} writes, {} NIC shards replayed)", s.predicted_s,
       s.writes, s.shards);
  line("  ingress floor          {:.3f} s (busiest receiver link at the profile's rate)",
       s.floor_s);
  line("  predicted / floor      {:.2f}x", s.floor_s > 0 ? s.predicted_s / s.floor_s : 0.0);
  line("  slowest path           trainer rank {} -> inference rank {}, {}", s.sender, s.receiver,
       s.nic < 0 ? std::string("ipc link") : fmt::format("sender NIC {}", s.nic));
  const Stages& st = s.stages;
  line("    start skew           {:9.2f} ms", ms(st.skew_s));
  line("    readiness            {:9.2f} ms (reading the receivers' arms; overlaps compute)",
       ms(st.ready_s));
  line("    gathers              {:9.2f} ms (incl. waiting for the group)", ms(st.gather_s));
  line("    projections          {:9.2f} ms", ms(st.project_s));
  line("    staging copies       {:9.2f} ms (to pinned host memory; overlaps the projections)",
       ms(st.staging_s));
  line("    ring waits           {:9.2f} ms (a slot reused only after its writes completed)",
       ms(st.ring_wait_s));
  line("    writes not hidden    {:9.2f} ms (its last write to that receiver after its compute)",
       ms(st.writes_s));
  line("    receiver tail        {:9.2f} ms (staging copies in, after that sender's last write)",
       ms(s.receiver_tail_s));
  line("  receiver {} ingress busy {:.2f} ms of {:.2f} ms{}", s.receiver, ms(s.receiver_busy_s),
       ms(s.predicted_s),
       s.receiver_busy_s > 0.85 * s.predicted_s
           ? ": bound by ingress (the sender's ring waits are its writes queued there)"
           : "");
  line("  trainer rank {} NIC busy {:.2f} ms of {:.2f} ms{}", s.sender, ms(s.sender_busy_s),
       ms(s.predicted_s),
       s.sender_busy_s > 0.9 * s.predicted_s
           ? ": bound by its NIC (its ring waits are its writes queued on it)"
           : "");
  return o;
}

std::string to_json(const Simulation& s, const Profile& p) {
  nlohmann::json j = {{"profile", p.name},
                      {"predicted_s", s.predicted_s},
                      {"floor_s", s.floor_s},
                      {"writes", s.writes},
                      {"shards", s.shards},
                      {"critical_path",
                       {{"sender", s.sender},
                        {"receiver", s.receiver},
                        {"nic", s.nic},
                        {"skew_s", s.stages.skew_s},
                        {"ready_s", s.stages.ready_s},
                        {"gather_s", s.stages.gather_s},
                        {"project_s", s.stages.project_s},
                        {"staging_s", s.stages.staging_s},
                        {"ring_wait_s", s.stages.ring_wait_s},
                        {"writes_s", s.stages.writes_s},
                        {"receiver_tail_s", s.receiver_tail_s},
                        {"receiver_busy_s", s.receiver_busy_s},
                        {"sender_busy_s", s.sender_busy_s}}}};
  return j.dump();
}

}  // namespace weightcast::sim
