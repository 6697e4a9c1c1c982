// Python bindings of the public API (pybind11). Accepts numpy arrays (any C-contiguous, writable
// buffer) or raw pointers (a torch tensor's data_ptr()), releases the GIL in every blocking call,
// and turns Status errors into ValueError / TimeoutError / RuntimeError at this edge.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "weightcast/api/weightcast.h"

namespace py = pybind11;
using namespace weightcast;  // NOLINT

namespace {

[[noreturn]] void raise(const Status& s) {
  if (s.code() == Code::kInvalidArgument) throw py::value_error(s.message());
  if (s.code() == Code::kTimeout) {
    PyErr_SetString(PyExc_TimeoutError, s.message().c_str());
    throw py::error_already_set();
  }
  throw std::runtime_error(s.message());
}
void check(const Status& s) {
  if (!s) raise(s);
}
template <typename T>
T check(Result<T> r) {
  if (!r) raise(r.status());
  return std::move(r).value();
}
// Runs a blocking call without the GIL; errors are raised after the GIL is back.
template <typename F>
auto nogil(F&& f) {
  py::gil_scoped_release release;
  return f();
}

// A buffer's address and size, after checking it can be written in place.
std::pair<void*, uint64_t> writable(py::object obj, py::object nbytes) {
  if (py::isinstance<py::int_>(obj)) {  // a raw pointer, e.g. tensor.data_ptr()
    if (nbytes.is_none()) throw py::value_error("a raw pointer needs nbytes=");
    return {reinterpret_cast<void*>(obj.cast<uintptr_t>()), nbytes.cast<uint64_t>()};
  }
  py::buffer_info b = py::reinterpret_borrow<py::buffer>(obj).request(true);
  py::ssize_t expect = b.itemsize;
  for (py::ssize_t d = b.ndim - 1; d >= 0; --d) {
    if (b.shape[d] > 1 && b.strides[d] != expect)
      throw py::value_error("the array must be C-contiguous");
    expect *= b.shape[d];
  }
  return {b.ptr, static_cast<uint64_t>(b.size * b.itemsize)};
}

// Keeps registered Python buffers alive as long as the object that writes into them: `keep` is
// declared first, so it is destroyed last, after the Sender / Receiver closed its NICs.
template <typename T>
struct Holder {
  std::vector<py::object> keep;
  T obj;
};

}  // namespace

PYBIND11_MODULE(weightcast, m) {
  m.doc() = "weightcast: RL weight broadcast with one-sided RDMA writes";
  py::class_<api::JobConfig>(m, "JobConfig")
      .def(py::init([](std::string t, std::string i, std::string c, std::string rdv,
                       std::string token, std::string provider, std::vector<std::string> nics,
                       double deadline, std::string plan, int cuda_device, std::string backend) {
             api::JobConfig j;
             j.trainer_spec = std::move(t);
             j.inference_spec = std::move(i);
             j.topology = std::move(c);
             j.rendezvous = std::move(rdv);
             j.token = std::move(token);
             j.provider = std::move(provider);
             j.nics = std::move(nics);
             j.deadline_s = deadline;
             j.plan_file = std::move(plan);
             j.cuda_device = cuda_device;
             j.backend = std::move(backend);
             return j;
           }),
           py::arg("trainer_spec"), py::arg("inference_spec"), py::arg("topology"),
           py::arg("rendezvous") = "", py::arg("token") = "", py::arg("provider") = "tcp",
           py::arg("nics") = std::vector<std::string>{"127.0.0.1"}, py::arg("deadline_s") = 60.0,
           py::arg("plan_file") = "", py::arg("cuda_device") = -1, py::arg("backend") = "fabric")
      .def_readwrite("trainer_spec", &api::JobConfig::trainer_spec)
      .def_readwrite("inference_spec", &api::JobConfig::inference_spec)
      .def_readwrite("topology", &api::JobConfig::topology)
      .def_readwrite("rendezvous", &api::JobConfig::rendezvous)
      .def_readwrite("token", &api::JobConfig::token)
      .def_readwrite("provider", &api::JobConfig::provider)
      .def_readwrite("backend", &api::JobConfig::backend)
      .def_readwrite("nics", &api::JobConfig::nics)
      .def_readwrite("deadline_s", &api::JobConfig::deadline_s)
      .def_readwrite("plan_file", &api::JobConfig::plan_file)
      .def_readwrite("cuda_device", &api::JobConfig::cuda_device)
      .def_readwrite("receiver_staging", &api::JobConfig::receiver_staging,
                     "Receivers: 'auto', 'always' or 'never' stage writes through host memory")
      .def_readwrite("faults", &api::JobConfig::faults);
  py::class_<api::PeerInfo>(m, "PeerInfo")
      .def_readonly("role", &api::PeerInfo::role)
      .def_readonly("rank", &api::PeerInfo::rank)
      .def_readonly("plan_digest", &api::PeerInfo::plan_digest)
      .def_readonly("nics", &api::PeerInfo::nics)
      .def_readonly("tensors", &api::PeerInfo::tensors)
      .def_readonly("nbytes", &api::PeerInfo::bytes)
      .def("__repr__", [](const api::PeerInfo& p) {
        return "PeerInfo(" + p.role + " " + std::to_string(p.rank) + ", " +
               std::to_string(p.tensors) + " tensors, " + std::to_string(p.bytes) + " B)";
      });
  py::class_<api::TensorInfo>(m, "TensorInfo")
      .def_readonly("name", &api::TensorInfo::name)
      .def_readonly("scales", &api::TensorInfo::scales)
      .def_readonly("dtype", &api::TensorInfo::dtype)
      .def_readonly("shape", &api::TensorInfo::shape)
      .def_readonly("nbytes", &api::TensorInfo::bytes)
      .def("__repr__", [](const api::TensorInfo& t) {
        return "TensorInfo(" + t.name + (t.scales ? " scales" : "") + ", " + t.dtype + ", " +
               std::to_string(t.bytes) + " B)";
      });
  py::class_<api::PushStats>(m, "PushStats")
      .def_readonly("bytes", &api::PushStats::bytes)
      .def_readonly("writes", &api::PushStats::writes)
      .def_readonly("projections", &api::PushStats::projections)
      .def_readonly("seconds", &api::PushStats::seconds)
      .def_readonly("projection_seconds", &api::PushStats::projection_seconds)
      .def_readonly("post_seconds", &api::PushStats::post_seconds)
      .def_readonly("ready_seconds", &api::PushStats::ready_seconds)
      .def_readonly("gather_seconds", &api::PushStats::gather_seconds)
      .def_readonly("ring_wait_seconds", &api::PushStats::ring_wait_seconds)
      .def_readonly("mirror_seconds", &api::PushStats::mirror_seconds)
      .def_readonly("drain_seconds", &api::PushStats::drain_seconds)
      .def_readonly("nic_gbps", &api::PushStats::nic_gbps);
  py::class_<api::WaitStats>(m, "WaitStats")
      .def_readonly("bytes", &api::WaitStats::bytes)
      .def_readonly("immediates", &api::WaitStats::immediates)
      .def_readonly("seconds", &api::WaitStats::seconds)
      .def_readonly("generation", &api::WaitStats::generation)
      .def_readonly("stale", &api::WaitStats::stale)
      .def_readonly("mode", &api::WaitStats::mode)
      .def_readonly("staged_bytes", &api::WaitStats::staged_bytes)
      .def_readonly("staging_seconds", &api::WaitStats::staging_s);

  using CtlH = Holder<api::Controller>;
  py::class_<CtlH>(m, "Controller")
      .def(py::init([](api::JobConfig& job, const std::string& bind) {
             return new CtlH{{}, check(nogil([&] { return api::Controller::start(job, bind); }))};
           }),
           py::arg("job"), py::arg("bind_host") = "127.0.0.1",
           "Plans the job and starts its rendezvous; fills job.rendezvous and job.token.")
      .def_property_readonly("senders", [](const CtlH& h) { return h.obj.senders(); })
      .def_property_readonly("receivers", [](const CtlH& h) { return h.obj.receivers(); })
      .def("plan_report", [](const CtlH& h) { return h.obj.plan_report(); })
      .def(
          "peer_token",
          [](const CtlH& h, const std::string& role, uint32_t rank) {
            return h.obj.peer_token(role, rank);
          },
          py::arg("role"), py::arg("rank"),
          "The credential to give peer (role, rank) as JobConfig.token instead of the job token: "
          "its rendezvous session may write only that peer's own keys.")
      .def(
          "lost_peers",
          [](const CtlH& h) { return check(nogil([&] { return h.obj.lost_peers(); })); },
          "Peers whose current process went away (its rendezvous session closed), as "
          "'inference 1' / 'trainer 3'; returns at once.")
      .def(
          "wait_for_peers",
          [](const CtlH& h, double deadline_s) {
            return check(nogil([&] { return h.obj.wait_for_peers(deadline_s); }));
          },
          py::arg("deadline_s") = 60.0,
          "Collects every peer's metadata and checks it against the plan; raises naming the "
          "peers that did not join or disagree.");

  using SndH = Holder<api::Sender>;
  py::class_<SndH>(m, "Sender")
      .def(py::init([](const api::JobConfig& job, uint32_t rank) {
             return new SndH{{}, check(nogil([&] { return api::Sender::create(job, rank); }))};
           }),
           py::arg("job"), py::arg("rank"))
      .def("tensors", [](const SndH& h) { return h.obj.tensors(); })
      .def(
          "register_tensor",
          [](SndH& h, const std::string& name, py::object buf, py::object nbytes) {
            auto [p, n] = writable(buf, nbytes);
            check(h.obj.register_tensor(name, p, n));
            h.keep.push_back(buf);
          },
          py::arg("name"), py::arg("buffer"), py::arg("nbytes") = py::none())
      .def("prepare", [](SndH& h) { check(nogil([&] { return h.obj.prepare(); })); })
      .def(
          "push",
          [](SndH& h, uint64_t step) { return check(nogil([&] { return h.obj.push(step); })); },
          py::arg("step"));

  using RcvH = Holder<api::Receiver>;
  py::class_<RcvH>(m, "Receiver")
      .def(py::init([](const api::JobConfig& job, uint32_t index) {
             return new RcvH{{}, check(nogil([&] { return api::Receiver::create(job, index); }))};
           }),
           py::arg("job"), py::arg("index"))
      .def("tensors", [](const RcvH& h) { return h.obj.tensors(); })
      .def(
          "register_tensor",
          [](RcvH& h, const std::string& name, py::object buf, py::object nbytes, bool scales) {
            auto [p, n] = writable(buf, nbytes);
            check(h.obj.register_tensor(name, p, n, scales));
            h.keep.push_back(buf);
          },
          py::arg("name"), py::arg("buffer"), py::arg("nbytes") = py::none(),
          py::arg("scales") = false)
      .def("publish", [](RcvH& h) { check(nogil([&] { return h.obj.publish(); })); })
      .def(
          "wait",
          [](RcvH& h, uint64_t step) { return check(nogil([&] { return h.obj.wait(step); })); },
          py::arg("step"));
}
