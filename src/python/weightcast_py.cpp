// Python bindings of the public API (pybind11). Accepts torch tensors and numpy arrays (checked
// against the plan's dtype and shape) or raw pointers, makes Controller / Sender / Receiver
// context managers with close(), releases the GIL in every blocking call, and turns Status
// errors into ValueError / TimeoutError / RuntimeError at this edge.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <tuple>

#include "weightcast/api/weightcast.h"
#include "weightcast/core/log.h"

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

// The weightcast dtype a torch dtype holds ("torch.bfloat16" -> "bf16"), or "" if none.
std::string torch_dtype(const std::string& t) {
  static const std::map<std::string, std::string> m = {
      {"torch.bfloat16", "bf16"},        {"torch.float16", "fp16"},
      {"torch.float32", "fp32"},         {"torch.float8_e4m3fn", "fp8_e4m3"},
      {"torch.float8_e5m2", "fp8_e5m2"}, {"torch.int8", "int8"}};
  auto it = m.find(t);
  return it == m.end() ? "" : it->second;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// A buffer's address and size, after checking it can be written in place and, against the plan's
// `info` for that tensor, its dtype and shape. Takes a torch tensor (CPU or CUDA; contiguous, of
// the tensor's dtype, or uint8 / int16 views of the same bytes), a numpy array (C-contiguous,
// writable, the tensor's shape and element size, or flat with exactly its bytes) or a raw
// pointer with nbytes=.
std::pair<void*, uint64_t> writable(py::object obj, py::object nbytes,
                                    const api::TensorInfo& info) {
  const std::string what =
      "register_tensor('" + info.name + (info.scales ? "', scales" : "'") + ")";
  if (py::isinstance<py::int_>(obj)) {  // a raw pointer, e.g. tensor.data_ptr()
    if (nbytes.is_none()) throw py::value_error(what + ": a raw pointer needs nbytes=");
    return {reinterpret_cast<void*>(obj.cast<uintptr_t>()), nbytes.cast<uint64_t>()};
  }
  std::vector<int64_t> shape;
  if (py::hasattr(obj, "data_ptr") && py::hasattr(obj, "element_size")) {  // a torch tensor
    for (auto d : obj.attr("shape")) shape.push_back(d.cast<int64_t>());
    const std::string dt = py::str(obj.attr("dtype"));
    const std::string ours = torch_dtype(dt);
    const size_t esz = obj.attr("element_size")().cast<size_t>();
    if (ours != info.dtype && !(ours.empty() && esz == 1 && info.dtype.rfind("fp8", 0) == 0) &&
        !(dt == "torch.int16" && (info.dtype == "bf16" || info.dtype == "fp16")))
      throw py::value_error(what + ": a " + dt + " tensor, but the plan's tensor is " + info.dtype);
    if (!obj.attr("is_contiguous")().cast<bool>())
      throw py::value_error(what + ": the tensor is not contiguous (strides " +
                            std::string(py::str(obj.attr("stride")())) +
                            "); weightcast writes memory in place, so a .contiguous() copy "
                            "would not be the tensor the engine reads");
    if (shape != info.shape)
      throw py::value_error(what + ": shape " + shape_str(shape) + ", the plan's is " +
                            shape_str(info.shape) + " (a transposed or padded view?)");
    const uint64_t n = obj.attr("numel")().cast<uint64_t>() * esz;
    return {reinterpret_cast<void*>(obj.attr("data_ptr")().cast<uintptr_t>()), n};
  }
  py::buffer_info b = py::reinterpret_borrow<py::buffer>(obj).request(true);
  py::ssize_t expect = b.itemsize;
  for (py::ssize_t d = b.ndim - 1; d >= 0; --d) {
    if (b.shape[d] > 1 && b.strides[d] != expect)
      throw py::value_error(what + ": the array must be C-contiguous");
    expect *= b.shape[d];
  }
  for (py::ssize_t d = 0; d < b.ndim; ++d) shape.push_back(b.shape[d]);
  // A flat buffer of exactly the tensor's bytes is taken as is (an engine's flat storage);
  // anything with dims must have the tensor's.
  const bool flat = b.ndim == 1 && static_cast<uint64_t>(b.size * b.itemsize) == info.bytes;
  if (!flat && shape != info.shape)
    throw py::value_error(what + ": shape " + shape_str(shape) + ", the plan's is " +
                          shape_str(info.shape));
  if (info.bytes && static_cast<uint64_t>(b.size * b.itemsize) != info.bytes)
    throw py::value_error(what + ": " + std::to_string(b.itemsize) +
                          "-byte elements, but the plan's tensor is " + info.dtype);
  return {b.ptr, static_cast<uint64_t>(b.size * b.itemsize)};
}

// Registers every tensor of this rank from an nn.Module's named_parameters() (DTensors by their
// local shard), matched by TensorInfo.model_name. Every tensor is checked first; on any problem
// nothing is registered and the error lists every missing or mismatched tensor. Returns the
// model's parameters the plan does not use (often fine: say, tied or non-trained ones).
template <typename H, typename Reg>
std::vector<std::string> register_module(H& h, py::object model, Reg reg) {
  std::map<std::string, py::object> params;
  for (py::handle item : model.attr("named_parameters")()) {
    auto pair = py::reinterpret_borrow<py::tuple>(item);
    py::object t = pair[1];
    if (py::hasattr(t, "to_local")) t = t.attr("to_local")();  // a DTensor: this rank's shard
    params[pair[0].cast<std::string>()] = t;
  }
  std::vector<std::string> problems;
  std::vector<std::tuple<api::TensorInfo, py::object, void*, uint64_t>> ok;
  std::set<std::string> used;
  for (const api::TensorInfo& info : h.get().tensors()) {
    auto it = params.find(info.model_name);
    if (it == params.end()) {
      problems.push_back("'" + info.model_name + "' is not a parameter of the module");
      continue;
    }
    used.insert(it->first);
    try {
      auto [p, n] = writable(it->second, py::none(), info);
      ok.emplace_back(info, it->second, p, n);
    } catch (const py::value_error& e) {
      problems.push_back(e.what());
    }
  }
  if (!problems.empty()) {
    std::string m = "register_module: " + std::to_string(problems.size()) +
                    " problem(s), nothing "
                    "registered: ";
    for (size_t i = 0; i < problems.size(); ++i) m += (i ? "; " : "") + problems[i];
    throw py::value_error(m);
  }
  for (auto& [info, obj, p, n] : ok) {
    check(reg(info, p, n));
    h.keep.push_back(obj);
  }
  std::vector<std::string> unused;
  for (const auto& [name, t] : params)
    if (!used.count(name)) unused.push_back(name);
  return unused;
}

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.6g", v);
  return b;
}

// The plan's description of tensor `name` (its scales when `scales`) on this peer.
template <typename T>
api::TensorInfo info_of(const T& peer, const std::string& name, bool scales) {
  for (const api::TensorInfo& t : peer.tensors())
    if (t.name == name && t.scales == scales) return t;
  throw py::value_error("register_tensor('" + name + "'" + (scales ? ", scales" : "") +
                        "): this rank holds no such tensor (tensors() lists what it holds)");
}

// Keeps registered Python buffers alive as long as the object that writes into them: `keep` is
// declared first, so it is destroyed last, after the Sender / Receiver closed its NICs.
template <typename T>
struct Holder {
  std::vector<py::object> keep;
  std::optional<T> obj;
  T& get() {
    if (!obj) throw py::value_error("it was closed");
    return *obj;
  }
  const T& get() const {
    if (!obj) throw py::value_error("it was closed");
    return *obj;
  }
  // Closes the NICs and the rendezvous session, then lets go of the registered buffers.
  void close() {
    obj.reset();
    keep.clear();
  }
};

// close(), and `with` blocks that close on the way out.
template <typename H, typename C>
C closable(C cls) {
  cls.def(
         "close", [](H& h) { h.close(); }, "Closes it at once (also at the end of a with block).")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](H& h, py::args) {
        h.close();
        return false;
      });
  return cls;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "weightcast: RL weight broadcast with one-sided RDMA writes";
  m.def(
      "set_log_level",
      [](const std::string& name) {
        core::log::Level l;
        if (!core::log::parse_level(name, l))
          throw py::value_error("set_log_level('" + name +
                                "'): expected trace, debug, info, warn, error or off");
        core::log::set_level(l);
      },
      py::arg("level"),
      "The level of weightcast's log lines on stderr (default: $WEIGHTCAST_LOG, else warn).");
  py::class_<api::JobConfig>(m, "JobConfig")
      .def("__repr__",
           [](const api::JobConfig& j) {
             return "JobConfig(trainer_spec='" + j.trainer_spec + "', inference_spec='" +
                    j.inference_spec + "', topology='" + j.topology + "', rendezvous='" +
                    j.rendezvous + "', token=" + (j.token.empty() ? "''" : "'<set>'") +
                    ", backend='" + j.backend + "', provider='" + j.provider +
                    "', deadline_s=" + num(j.deadline_s) +
                    ", cuda_device=" + std::to_string(j.cuda_device) + ", receiver_staging='" +
                    j.receiver_staging + "')";
           })
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
      .def_readwrite("trace_dir", &api::JobConfig::trace_dir,
                     "Directory for traces of every step, one file per process (empty: "
                     "$WEIGHTCAST_TRACE_DIR, else off)")
      .def_readwrite("metrics_file", &api::JobConfig::metrics_file,
                     "File collecting one JSON line per step of every peer given it (empty: "
                     "$WEIGHTCAST_METRICS_FILE, else none)")
      .def_readwrite("faults", &api::JobConfig::faults);
  py::class_<api::PeerInfo>(m, "PeerInfo")
      .def("__repr__",
           [](const api::PeerInfo& p) {
             return "PeerInfo(" + p.role + " " + std::to_string(p.rank) + ", " +
                    std::to_string(p.tensors) + " tensors, " + std::to_string(p.bytes) +
                    " bytes, " + std::to_string(p.nics) + " NIC(s))";
           })
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
      .def("__repr__",
           [](const api::TensorInfo& t) {
             std::string sh;
             for (int64_t d : t.shape) sh += (sh.empty() ? "" : ", ") + std::to_string(d);
             return "TensorInfo('" + t.name + "'" + (t.scales ? " scales" : "") + ", " + t.dtype +
                    " [" + sh + "], " + std::to_string(t.bytes) + " bytes)";
           })
      .def_readonly("name", &api::TensorInfo::name)
      .def_readonly("scales", &api::TensorInfo::scales)
      .def_readonly("dtype", &api::TensorInfo::dtype)
      .def_readonly("shape", &api::TensorInfo::shape)
      .def_readonly("nbytes", &api::TensorInfo::bytes)
      .def_readonly("model_name", &api::TensorInfo::model_name)
      .def("__repr__", [](const api::TensorInfo& t) {
        return "TensorInfo(" + t.name + (t.scales ? " scales" : "") + ", " + t.dtype + ", " +
               std::to_string(t.bytes) + " B)";
      });
  py::class_<api::PushStats>(m, "PushStats")
      .def("__repr__",
           [](const api::PushStats& p) {
             return "PushStats(" + std::to_string(p.bytes) + " bytes in " +
                    std::to_string(p.writes) + " writes, " + num(p.seconds) + " s, ready " +
                    num(p.ready_seconds) + " s, projection " + num(p.projection_seconds) +
                    " s, drain " + num(p.drain_seconds) + " s)";
           })
      .def_readonly("bytes", &api::PushStats::bytes)
      .def_readonly("writes", &api::PushStats::writes)
      .def_readonly("projections", &api::PushStats::projections)
      .def_readonly("in_place_projections", &api::PushStats::in_place_projections)
      .def_readonly("seconds", &api::PushStats::seconds)
      .def_readonly("projection_seconds", &api::PushStats::projection_seconds)
      .def_readonly("post_seconds", &api::PushStats::post_seconds)
      .def_readonly("ready_seconds", &api::PushStats::ready_seconds)
      .def_readonly("gather_seconds", &api::PushStats::gather_seconds)
      .def_readonly("ring_wait_seconds", &api::PushStats::ring_wait_seconds)
      .def_readonly("mirror_seconds", &api::PushStats::mirror_seconds)
      .def_readonly("drain_seconds", &api::PushStats::drain_seconds)
      .def_readonly("nic_gbps", &api::PushStats::nic_gbps)
      .def_readonly("nic_bytes", &api::PushStats::nic_bytes)
      .def_readonly("staging_peak_bytes", &api::PushStats::staging_peak_bytes)
      .def_readonly("reconnected", &api::PushStats::reconnected)
      .def(
          "to_json", [](const api::PushStats& p) { return api::metrics_json(p); },
          "The step's record as JSON (json.loads() gives a dict; JobConfig.metrics_file "
          "collects these)");
  py::class_<api::WaitStats>(m, "WaitStats")
      .def(
          "__repr__",
          [](const api::WaitStats& w) {
            return "WaitStats(" + std::to_string(w.bytes) + " bytes, " +
                   std::to_string(w.immediates) + " immediates, " + num(w.seconds) +
                   " s, generation " + std::to_string(w.generation) + ", mode " + w.mode +
                   (w.staged_bytes ? ", staged " + std::to_string(w.staged_bytes) + " bytes" : "") +
                   ", stale " + std::to_string(w.stale) + ")";
          })
      .def_readonly("bytes", &api::WaitStats::bytes)
      .def_readonly("immediates", &api::WaitStats::immediates)
      .def_readonly("seconds", &api::WaitStats::seconds)
      .def_readonly("generation", &api::WaitStats::generation)
      .def_readonly("stale", &api::WaitStats::stale)
      .def_readonly("mode", &api::WaitStats::mode)
      .def_readonly("staged_bytes", &api::WaitStats::staged_bytes)
      .def_readonly("staging_seconds", &api::WaitStats::staging_s)
      .def(
          "to_json", [](const api::WaitStats& w) { return api::metrics_json(w); },
          "The step's record as JSON (json.loads() gives a dict; JobConfig.metrics_file "
          "collects these)");

  using CtlH = Holder<api::Controller>;
  closable<CtlH>(py::class_<CtlH>(m, "Controller"))
      .def(py::init([](api::JobConfig& job, const std::string& bind) {
             return new CtlH{{}, check(nogil([&] { return api::Controller::start(job, bind); }))};
           }),
           py::arg("job"), py::arg("bind_host") = "127.0.0.1",
           "Plans the job and starts its rendezvous; fills job.rendezvous and job.token.")
      .def_property_readonly("senders", [](const CtlH& h) { return h.get().senders(); })
      .def_property_readonly("receivers", [](const CtlH& h) { return h.get().receivers(); })
      .def(
          "plan_report", [](const CtlH& h) { return h.get().plan_report(); },
          "The dry-run report of the plan in force (what `weightcast plan` prints).")
      .def(
          "peer_token",
          [](const CtlH& h, const std::string& role, uint32_t rank) {
            return h.get().peer_token(role, rank);
          },
          py::arg("role"), py::arg("rank"),
          "The credential to give peer (role, rank) as JobConfig.token instead of the job token: "
          "its rendezvous session may write only that peer's own keys.")
      .def(
          "lost_peers",
          [](const CtlH& h) { return check(nogil([&] { return h.get().lost_peers(); })); },
          "Peers whose current process went away (its rendezvous session closed), as "
          "'inference 1' / 'trainer 3'; returns at once.")
      .def(
          "serve_metrics",
          [](CtlH& h, const std::string& host, uint16_t port) {
            return check(nogil([&] { return h.get().serve_metrics(host, port); }));
          },
          py::arg("host") = "127.0.0.1", py::arg("port") = 0,
          "Serves the job's metrics as Prometheus text at http://host:port/metrics (port 0: a "
          "free one) and returns the port. Call it before peers join: each peer created after "
          "it puts its step records where the controller reads them.")
      .def(
          "metrics_text",
          [](const CtlH& h) { return check(nogil([&] { return h.get().metrics_text(); })); },
          "The Prometheus text that GET /metrics answers, read now.")
      .def(
          "wait_for_peers",
          [](const CtlH& h, double deadline_s) {
            return check(nogil([&] { return h.get().wait_for_peers(deadline_s); }));
          },
          py::arg("deadline_s") = 60.0,
          "Collects every peer's metadata and checks it against the plan; raises naming the "
          "peers that did not join or disagree.");

  using SndH = Holder<api::Sender>;
  closable<SndH>(py::class_<SndH>(m, "Sender"))
      .def(
          py::init([](const api::JobConfig& job, uint32_t rank) {
            return new SndH{{}, check(nogil([&] { return api::Sender::create(job, rank); }))};
          }),
          py::arg("job"), py::arg("rank"),
          "Joins the job as trainer rank `rank`: fetches its part of the plan from the controller.")
      .def(
          "tensors", [](const SndH& h) { return h.get().tensors(); },
          "The shards this rank must register: name, dtype, local shape, bytes.")
      .def(
          "register_tensor",
          [](SndH& h, const std::string& name, py::object buf, py::object nbytes) {
            auto [p, n] = writable(buf, nbytes, info_of(h.get(), name, false));
            check(h.get().register_tensor(name, p, n));
            h.keep.push_back(buf);
          },
          py::arg("name"), py::arg("buffer"), py::arg("nbytes") = py::none(),
          "Registers this rank's shard of trainer parameter `name`: a torch tensor, a numpy array "
          "or a raw pointer with nbytes=, checked against the plan. Kept alive until close().")
      .def(
          "register_module",
          [](SndH& h, py::object model) {
            return register_module(h, model, [&](const api::TensorInfo& t, void* p, uint64_t n) {
              return h.get().register_tensor(t.name, p, n);
            });
          },
          py::arg("module"),
          "Registers this rank's shard of every trainer parameter from module.named_parameters() "
          "(DTensors by to_local()); checks all first, registers none on a mismatch; returns the "
          "module's parameters the plan does not use.")
      .def(
          "prepare", [](SndH& h) { check(nogil([&] { return h.get().prepare(); })); },
          "Connects to every receiver and gather peer as they run now (after registering).")
      .def(
          "push",
          [](SndH& h, uint64_t step) { return check(nogil([&] { return h.get().push(step); })); },
          py::arg("step"),
          "Pushes this step's weights once each receiver armed the step (Receiver.wait); on "
          "failure "
          "raises naming the receiver, after draining its writes: call push(step) again to retry.");

  using RcvH = Holder<api::Receiver>;
  closable<RcvH>(py::class_<RcvH>(m, "Receiver"))
      .def(py::init([](const api::JobConfig& job, uint32_t index) {
             return new RcvH{{}, check(nogil([&] { return api::Receiver::create(job, index); }))};
           }),
           py::arg("job"), py::arg("index"),
           "Joins the job as inference rank `index`: fetches its part of the plan.")
      .def(
          "tensors", [](const RcvH& h) { return h.get().tensors(); },
          "The tensors this rank must register (weights, and FP32 scales with scales=True).")
      .def(
          "register_tensor",
          [](RcvH& h, const std::string& name, py::object buf, py::object nbytes, bool scales) {
            auto [p, n] = writable(buf, nbytes, info_of(h.get(), name, scales));
            check(h.get().register_tensor(name, p, n, scales));
            h.keep.push_back(buf);
          },
          py::arg("name"), py::arg("buffer"), py::arg("nbytes") = py::none(),
          py::arg("scales") = false,
          "Registers the engine's live tensor `name` (its block scales with scales=True): a torch "
          "tensor, numpy array or raw pointer with nbytes=, checked against the plan.")
      .def(
          "register_module",
          [](RcvH& h, py::object model) {
            return register_module(h, model, [&](const api::TensorInfo& t, void* p, uint64_t n) {
              return h.get().register_tensor(t.name, p, n, t.scales);
            });
          },
          py::arg("module"),
          "Registers every tensor of this rank from module.named_parameters() (how an engine's "
          "weight-transfer backend sees the model; scales by their spec name), checking name, "
          "dtype, shape, contiguity and device against the plan; refuses with every mismatch "
          "before anything is registered; returns the module's parameters the plan does not use.")
      .def(
          "publish", [](RcvH& h) { check(nogil([&] { return h.get().publish(); })); },
          "Publishes this rank's address and tensor descriptors (every tensor registered).")
      .def(
          "wait",
          [](RcvH& h, uint64_t step) { return check(nogil([&] { return h.get().wait(step); })); },
          py::arg("step"),
          "Arms a fresh attempt of `step` and returns once every byte of it is in the tensors; "
          "raises naming the senders that are short at the deadline or that aborted.");
}
