// Real steps' spans as Chrome trace events, appended per step; and the merge of a job's files.
#include "weightcast/exec/step_trace.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

namespace weightcast::exec {

namespace {
double us(StepTrace::Clock::time_point t) {
  return std::chrono::duration<double, std::micro>(t.time_since_epoch()).count();
}
constexpr const char* kLaneNames[] = {"step", "compute", "readiness", "writes"};
}  // namespace

Result<std::unique_ptr<StepTrace>> StepTrace::open(const std::string& path, const std::string& name,
                                                   size_t max_events) {
  std::unique_ptr<StepTrace> t(new StepTrace());
  t->f_ = std::fopen(path.c_str(), "w");
  if (!t->f_) return Status(Code::kSystem, fmt::format("trace {}: cannot create it", path));
  t->path_ = path;
  t->pid_ = static_cast<int>(::getpid());
  t->max_ = max_events;
  nlohmann::json meta = {
      {"ph", "M"}, {"name", "process_name"}, {"pid", t->pid_}, {"args", {{"name", name}}}};
  t->pending_.push_back(meta.dump());
  for (int lane = 0; lane < 4; ++lane)
    t->pending_.push_back(nlohmann::json({{"ph", "M"},
                                          {"name", "thread_name"},
                                          {"pid", t->pid_},
                                          {"tid", lane},
                                          {"args", {{"name", kLaneNames[lane]}}}})
                              .dump());
  std::fputs("[\n", t->f_);
  if (Status s = t->flush(); !s) return s;
  return t;
}

StepTrace::~StepTrace() {
  (void)flush();
  if (f_) std::fclose(f_);
}

std::string StepTrace::directory(const std::string& configured) {
  if (!configured.empty()) return configured;
  const char* env = std::getenv("WEIGHTCAST_TRACE_DIR");
  return env ? env : "";
}

void StepTrace::add(std::string event) {
  // (under mu_)
  if (recorded_ >= max_) {
    ++dropped_;
    return;
  }
  ++recorded_;
  pending_.push_back(std::move(event));
}

void StepTrace::span(const std::string& what, Lane lane, Clock::time_point t0, Clock::time_point t1,
                     uint64_t generation) {
  const double a = us(t0), d = std::max(0.0, us(t1) - a);
  std::string e =
      fmt::format(R"({{"ph":"X","pid":{},"tid":{},"ts":{:.3f},"dur":{:.3f},"name":{},)"
                  R"("args":{{"generation":{}}}}})",
                  pid_, static_cast<int>(lane), a, d, nlohmann::json(what).dump(), generation);
  std::lock_guard lk(mu_);
  add(std::move(e));
}

void StepTrace::counter(const std::string& what, Clock::time_point t, double value) {
  std::string e =
      fmt::format(R"({{"ph":"C","pid":{},"ts":{:.3f},"name":{},"args":{{"value":{:.6g}}}}})", pid_,
                  us(t), nlohmann::json(what).dump(), value);
  std::lock_guard lk(mu_);
  add(std::move(e));
}

Status StepTrace::flush() {
  std::lock_guard lk(mu_);
  if (!f_) return Status::ok();
  if (dropped_ > 0 && !told_dropped_) {
    told_dropped_ = true;
    pending_.push_back(fmt::format(
        R"({{"ph":"i","s":"p","pid":{},"ts":{:.3f},"name":"trace full: {} events kept, later ones dropped"}})",
        pid_, us(Clock::now()), max_));
  }
  for (const std::string& e : pending_) {
    std::fputs(e.c_str(), f_);
    std::fputs(",\n", f_);
  }
  pending_.clear();
  if (std::fflush(f_) != 0)
    return Status(Code::kSystem, fmt::format("trace {}: write failed", path_));
  return Status::ok();
}

uint64_t StepTrace::dropped() const {
  std::lock_guard lk(mu_);
  return dropped_;
}

Result<std::string> merge_traces(const std::vector<std::string>& paths, bool align) {
  using nlohmann::json;
  std::vector<json> files;
  for (const std::string& p : paths) {
    std::ifstream in(p);
    if (!in) return Status(Code::kInvalidArgument, fmt::format("trace {}: cannot open", p));
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    // The array format may lack its closing bracket and end in a comma.
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
    if (!text.empty() && text.front() == '[' && text.back() != ']') {
      if (text.back() == ',') text.pop_back();
      text += "]";
    }
    json j = json::parse(text, nullptr, false);
    if (j.is_object() && j.contains("traceEvents")) j = j["traceEvents"];
    if (j.is_discarded() || !j.is_array())
      return Status(Code::kInvalidArgument,
                    fmt::format("trace {}: neither a JSON array of events nor an object with "
                                "traceEvents",
                                p));
    files.push_back(std::move(j));
  }
  const auto min_ts = [](const json& ev) {
    double m = 1e300;
    for (const json& e : ev)
      if (e.is_object() && e.contains("ts") && e["ts"].is_number())
        m = std::min(m, e["ts"].get<double>());
    return m;
  };
  double global = 1e300;
  for (const json& f : files) global = std::min(global, min_ts(f));
  json out = json::array();
  std::map<std::pair<size_t, int64_t>, int64_t> pids;  // (file, pid) -> pid in the merge
  for (size_t i = 0; i < files.size(); ++i) {
    const double shift = align ? min_ts(files[i]) : global;
    for (json e : files[i]) {
      if (!e.is_object())
        return Status(Code::kInvalidArgument,
                      fmt::format("trace {}: an event that is not an object", paths[i]));
      if (e.contains("pid") && e["pid"].is_number_integer()) {
        auto it =
            pids.try_emplace({i, e["pid"].get<int64_t>()}, static_cast<int64_t>(pids.size()) + 1)
                .first;
        e["pid"] = it->second;
      }
      if (e.contains("ts") && e["ts"].is_number() && shift < 1e300)
        e["ts"] = e["ts"].get<double>() - shift;
      out.push_back(std::move(e));
    }
  }
  return json({{"traceEvents", out}, {"displayTimeUnit", "ms"}}).dump() + "\n";
}

}  // namespace weightcast::exec
