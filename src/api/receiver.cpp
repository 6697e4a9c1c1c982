// The public API's Receiver (what it shares with the Sender and Controller: peer.h).
#include <signal.h>
#include <unistd.h>

#include <set>

#include "peer.h"
#include "weightcast/exec/executor.h"
#include "weightcast/exec/memory.h"
#include "weightcast/session/records.h"
#include "weightcast/spec/layout.h"

namespace weightcast::api {

using namespace detail;  // NOLINT: the API's own internals

struct Receiver::Impl : PeerBase {
  std::unique_ptr<exec::InferenceReceiver> rc;
  std::set<std::pair<std::string, bool>> registered;  // (name, scales) register_tensor accepted
  bool published = false;
  uint32_t index = 0;
  uint8_t generation = 0;  // of the last attempt armed
  uint64_t last_step = 0;  // the step waited for last, and how many times (metrics records)
  uint32_t attempt = 0;
  std::vector<uint32_t> senders;
  int die_after_arm = -1;  // test hook (WEIGHTCAST_DEBUG_DIE_AFTER_ARM)
  int cuda_device = -1;    // where its tensors live (-1: host memory)
};

Result<Receiver> Receiver::create(const JobConfig& cfg, uint32_t index) {
  if (cfg.cuda_device >= 0 && cfg.cuda_device >= exec::cuda_devices())
    return invalid("JobConfig.cuda_device is {}, but this process sees {} CUDA device(s){}",
                   cfg.cuda_device, exec::cuda_devices(),
                   exec::cuda_built() ? "" : " (weightcast was built without CUDA)");
  const std::map<std::string, exec::Staging> staging{{"auto", exec::Staging::kAuto},
                                                     {"always", exec::Staging::kAlways},
                                                     {"never", exec::Staging::kNever}};
  auto st = staging.find(cfg.receiver_staging);
  if (st == staging.end())
    return invalid("JobConfig.receiver_staging is '{}'; expected auto, always or never",
                   cfg.receiver_staging);
  auto impl = std::make_unique<Impl>();
  if (Status s = open_peer(cfg, *impl, "inference", index); !s) return s;
  const plan::Plan& pl = impl->job->plan;
  auto rc = exec::InferenceReceiver::create(
      impl->job->in, pl, index,
      nics(cfg, static_cast<uint32_t>(pl.senders.size()) + index, peer_count(pl)), impl->rdv.get(),
      false);
  if (!rc) return rc.status();
  impl->rc = std::move(rc).value();
  impl->index = index;
  impl->rc->set_staging(st->second, cfg.cuda_device);
  impl->cuda_device = cfg.cuda_device;
  impl->incarnation = new_incarnation();
  impl->rc->set_incarnation(impl->incarnation);
  if (Status s = impl->rdv->identify(session::keys::session("inference", index, impl->incarnation));
      !s)
    return s;
  impl->generation = static_cast<uint8_t>(new_incarnation());  // any start; each arm moves on
  std::set<uint32_t> senders;
  for (const plan::Write& w : impl->job->plan.writes)
    if (impl->job->plan.dests[w.dest].receiver == index) senders.insert(w.sender);
  impl->senders.assign(senders.begin(), senders.end());
  // Test hook: WEIGHTCAST_DEBUG_DIE_AFTER_ARM=K kills receiver K with SIGKILL right after it
  // armed its first attempt (a receiver dying mid-step, after its senders were told to write).
  if (const char* d = std::getenv("WEIGHTCAST_DEBUG_DIE_AFTER_ARM"))
    impl->die_after_arm = std::atoi(d);
  uint32_t count = 0;
  uint64_t bytes = 0;
  for (const plan::DestTensor& d : impl->job->plan.dests)
    if (d.receiver == index) ++count, bytes += d.bytes;
  if (Status s = publish_meta(*impl, "inference", index, count, bytes); !s) return s;
  core::log::info(impl->who(), core::log::kNoStep,
                  "joined: {} tensors, {} bytes from {} senders over {} ({} NICs)", count, bytes,
                  impl->senders.size(), cfg.backend, cfg.nics.size());
  return Receiver(std::move(impl));
}
Receiver::Receiver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Receiver::Receiver(Receiver&&) noexcept = default;
Receiver& Receiver::operator=(Receiver&&) noexcept = default;
Receiver::~Receiver() = default;

std::vector<TensorInfo> Receiver::tensors() const {
  std::vector<TensorInfo> out;
  const plan::Plan& p = impl_->job->plan;
  for (const plan::DestTensor& d : p.dests)
    if (d.receiver == impl_->index) {
      const spec::DestParam& dp = impl_->job->in.inference.params[static_cast<size_t>(d.param)];
      out.push_back(
          info(p.dest_names[d.param], d.scale, d.dtype, spec::view_shape(dp, d.shape, d.scale)));
      if (d.scale && dp.quant) out.back().model_name = dp.quant->scale_name;
    }
  return out;
}
Status Receiver::register_tensor(const std::string& name, void* data, uint64_t bytes, bool scales) {
  const bool cuda = exec::pointer_kind(data) == exec::MemoryKind::kCuda;
  if (cuda != (impl_->cuda_device >= 0))
    return invalid("register_tensor('{}'): a {} pointer, but JobConfig.cuda_device is {} ({})",
                   name, cuda ? "CUDA device" : "host", impl_->cuda_device,
                   impl_->cuda_device >= 0
                       ? "tensors must be GPU memory on that device"
                       : "tensors must be host memory; set it to the tensors' GPU");
  if (impl_->registered.count({name, scales}))
    return invalid("register_tensor('{}'{}): registered already (receiver {})", name,
                   scales ? ", scales" : "", impl_->index);
  if (Status s = impl_->rc->bind_tensor(name, scales, data, bytes); !s) return s;
  impl_->registered.insert({name, scales});
  return Status::ok();
}
Status Receiver::publish() {
  if (Status s = impl_->rc->publish(); !s) return s;
  impl_->published = true;
  const auto before = incarnation_of(*impl_->rdv, "inference", impl_->index, Clock::now());
  // Last: a sender that sees this incarnation finds its address and descriptors published.
  if (Status s = impl_->rdv->put(session::keys::incarnation("inference", impl_->index),
                                 session::IncarnationRecord{impl_->incarnation}.encode());
      !s)
    return s;
  if (before && before->value != impl_->incarnation) {  // the dead predecessor's keys
    (void)impl_->rdv->del(session::keys::receiver_address(impl_->index, before->value));
    (void)impl_->rdv->del(session::keys::receiver_tensors(impl_->index, before->value));
  }
  return Status::ok();
}

Result<WaitStats> Receiver::wait(uint64_t step) {
  Impl& m = *impl_;
  if (!m.published)
    return invalid("receiver {}: wait({}) before publish(): register every tensor, then publish()",
                   m.index, step);
  const auto deadline = in_s(m.job->cfg.deadline_s);
  // Transports whose targets connect too (verbs), and split tensors (hybrid): to every sender
  // as it runs now, before arming (a no-op once connected, and on libfabric).
  if (m.rc->watches_senders()) {
    auto inc = incarnations_of(*m.rdv, "trainer", m.senders, deadline,
                               fmt::format("receiver {}", m.index));
    if (!inc) return inc.status();
    if (Status s = m.rc->connect_senders(*inc, deadline); !s) return s;
  }
  // A fresh generation for every attempt: writes of earlier attempts (late, or of a sender that
  // died) are stale from here on.
  const auto t_arm = Clock::now();
  m.attempt = step == m.last_step ? m.attempt + 1 : 1;
  m.last_step = step;
  const uint8_t gen = ++m.generation;
  const uint64_t stale0 = m.rc->stale();
  m.rc->begin(gen);
  if (Status s = m.rdv->put(session::keys::armed(m.index),
                            session::ArmRecord{step, gen, m.incarnation}.encode());
      !s)
    return s;
  if (m.die_after_arm == static_cast<int>(m.index)) ::kill(::getpid(), SIGKILL);
  auto w = m.rc->wait(gen, deadline);
  if (m.trace) {
    m.trace->span(w ? fmt::format("step {}: armed -> every immediate in", step)
                    : fmt::format("step {} failed: {}", step, w.status().message()),
                  exec::StepTrace::kStep, t_arm, Clock::now(), gen);
    (void)m.flush_trace();  // a trace that cannot be written is switched off, the step stands
  }
  if (!w) {
    core::log::warn(m.who(), step, "attempt {} failed: {}", m.attempt, w.status().message());
    Status st(w.status().code(), fmt::format("step {}: {}", step, w.status().message()));
    m.record_step(step, m.attempt, st);
    return st;
  }
  WaitStats out{
      w->bytes,        w->imms,     w->wait_s, gen, m.rc->stale() - stale0, m.rc->memory_mode(),
      w->staged_bytes, w->staging_s};
  core::log::info(m.who(), step,
                  "attempt {}: every byte in: {} bytes, {} immediates, {:.3f} s ({}{})", m.attempt,
                  out.bytes, out.immediates, out.seconds, out.mode,
                  out.stale ? fmt::format(", {} stale arrivals dropped", out.stale) : "");
  m.record_step(step, m.attempt, metrics_json(out), out.bytes, out.seconds);
  return out;
}

}  // namespace weightcast::api
