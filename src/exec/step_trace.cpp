// Real steps' spans as Chrome trace events, appended per step; and the merge of a job's files.
#include "weightcast/exec/step_trace.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
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
// Span names carry peers' error messages: bytes that are not UTF-8 become U+FFFD, never throw.
std::string safe_dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}
// A string member of an event, or "" (a name that is not a string is no reason to fail).
std::string str_of(const nlohmann::json& e, const char* key) {
  return e.contains(key) && e[key].is_string() ? e[key].get<std::string>() : std::string();
}
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
                  pid_, static_cast<int>(lane), a, d, safe_dump(nlohmann::json(what)), generation);
  std::lock_guard lk(mu_);
  add(std::move(e));
}

void StepTrace::counter(const std::string& what, Clock::time_point t, double value) {
  std::string e =
      fmt::format(R"({{"ph":"C","pid":{},"ts":{:.3f},"name":{},"args":{{"value":{:.6g}}}}})", pid_,
                  us(t), safe_dump(nlohmann::json(what)), value);
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
    // The array format may lack its closing bracket and end in a comma; a process killed while
    // it wrote may have left half an event at the end, which is cut back to the last whole one.
    const auto close_array = [](std::string t) {
      while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
      if (!t.empty() && t.back() == ']') t.pop_back();
      while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
      if (!t.empty() && t.back() == ',') t.pop_back();
      return t + "]";
    };
    json j = json::parse(text, nullptr, false);
    if ((j.is_discarded() || !j.is_array()) && !text.empty() && text.front() == '[') {
      j = json::parse(close_array(text), nullptr, false);
      if (j.is_discarded())
        if (const size_t cut = text.rfind(",\n"); cut != std::string::npos)
          j = json::parse(close_array(text.substr(0, cut)), nullptr, false);
    }
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
  return safe_dump(json({{"traceEvents", out}, {"displayTimeUnit", "ms"}})) + "\n";
}

namespace {
struct Kind {
  const char* prefix;
  const char* colour;
  const char* label;
};
// Span kinds by name prefix, in legend order; the last one takes everything else.
constexpr Kind kKinds[] = {
    {"projection", "#4e79a7", "projections"},
    {"waiting for GPU", "#4e79a7", "projections"},
    {"predicted: projection", "#4e79a7", "projections"},
    {"gather", "#f28e2b", "gathers"},
    {"ring wait", "#e15759", "ring waits"},
    {"reading the receivers", "#76b7b2", "readiness"},
    {"waiting for the receivers", "#9fd6d2", "first write waits for readiness"},
    {"readiness", "#76b7b2", "readiness"},
    {"drain", "#59a14f", "drain: last writes complete"},
    {"NIC writes", "#59a14f", "NIC / ipc writes"},
    {"ipc writes", "#59a14f", "NIC / ipc writes"},
    {"staging copy", "#b07aa1", "staging copies"},
    {"mirror", "#b07aa1", "staging copies"},
    {"push", "#d4d0cc", "whole push"},
    {"step ", "#edc948", "receiver: armed -> all immediates"},
    {"", "#9c755f", "other"},
};
const Kind& kind_of(const std::string& name) {
  for (const Kind& k : kKinds)
    if (name.rfind(k.prefix, 0) == 0) return k;
  return kKinds[std::size(kKinds) - 1];
}
std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<')
      o += "&lt;";
    else if (c == '>')
      o += "&gt;";
    else if (c == '&')
      o += "&amp;";
    else if (c == '"')
      o += "&quot;";
    else
      o += c;
  }
  return o;
}
}  // namespace

Result<std::string> trace_svg(const std::string& merged, size_t max_spans) {
  using nlohmann::json;
  json j = json::parse(merged, nullptr, false);
  if (j.is_object() && j.contains("traceEvents")) j = j["traceEvents"];
  if (j.is_discarded() || !j.is_array())
    return Status(Code::kInvalidArgument, "trace_svg: not a trace (merge the files first)");
  std::map<int64_t, std::string> process;
  std::map<std::pair<int64_t, int64_t>, std::string> lane_name;
  struct Span {
    double t, d;
    std::string name;
  };
  std::map<std::pair<int64_t, int64_t>, std::vector<Span>> lanes;
  double t0 = 1e300, t1 = -1e300;
  size_t total = 0;
  std::vector<double> durs;
  for (const json& e : j) {
    if (!e.is_object() || !e.contains("ph") || !e["ph"].is_string()) continue;
    const std::string ph = e["ph"];
    const int64_t pid =
        e.contains("pid") && e["pid"].is_number_integer() ? e["pid"].get<int64_t>() : 0;
    const int64_t tid =
        e.contains("tid") && e["tid"].is_number_integer() ? e["tid"].get<int64_t>() : 0;
    const bool has_args_name = e.contains("args") && e["args"].is_object() &&
                               e["args"].contains("name") && e["args"]["name"].is_string();
    if (ph == "M" && has_args_name && str_of(e, "name") == "process_name")
      process[pid] = e["args"]["name"];
    if (ph == "M" && has_args_name && str_of(e, "name") == "thread_name")
      lane_name[{pid, tid}] = e["args"]["name"];
    if (ph != "X" || !e.contains("ts") || !e["ts"].is_number() || !e.contains("dur") ||
        !e["dur"].is_number())
      continue;
    const double t = e["ts"], d = e["dur"];
    lanes[{pid, tid}].push_back({t, d, str_of(e, "name")});
    durs.push_back(d);
    t0 = std::min(t0, t);
    t1 = std::max(t1, t + d);
    ++total;
  }
  if (total == 0) return Status(Code::kInvalidArgument, "trace_svg: the trace has no spans");
  // Past max_spans, only the longest are drawn.
  double min_dur = -1;
  if (max_spans == 0) return Status(Code::kInvalidArgument, "trace_svg: max_spans is 0");
  if (total > max_spans) {
    std::nth_element(durs.begin(), durs.begin() + static_cast<long>(total - max_spans), durs.end());
    min_dur = durs[total - max_spans];
  }
  constexpr double kLeft = 230, kWidth = 1000, kRow = 16, kTop = 30;
  const double span_us = std::max(t1 - t0, 1.0);
  const auto x = [&](double t) { return kLeft + (t - t0) / span_us * kWidth; };
  std::string o;  // the body; the header (which needs the height) goes in front at the end
  // Time axis: about 8 ticks at 1, 2 or 5 x 10^k ms.
  const double ms = span_us / 1e3;
  double step = std::pow(10.0, std::floor(std::log10(ms / 8)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (ms / (step * m) <= 8) {
      step *= m;
      break;
    }
  const double bottom = kTop + kRow * static_cast<double>(lanes.size());
  for (double m = 0; m <= ms + 1e-9; m += step) {
    const double px = x(t0 + m * 1e3);
    o += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1:.0f}\" x2=\"{0:.1f}\" y2=\"{2:.0f}\" stroke=\"#ddd\"/>"
        "<text x=\"{0:.1f}\" y=\"{3:.0f}\" text-anchor=\"middle\">{4:g} ms</text>\n",
        px, kTop - 4, bottom, bottom + 14, m);
  }
  size_t row = 0, drawn = 0;
  std::map<std::string, const char*> legend;
  std::vector<std::string> legend_order;
  for (const auto& [key, spans] : lanes) {
    const double y = kTop + kRow * static_cast<double>(row++);
    const auto pn = process.find(key.first);
    const auto ln = lane_name.find(key);
    o += fmt::format("<text x=\"4\" y=\"{:.0f}\">{} / {}</text>\n", y + 12,
                     esc(pn == process.end() ? fmt::format("pid {}", key.first) : pn->second),
                     esc(ln == lane_name.end() ? fmt::format("lane {}", key.second) : ln->second));
    for (const Span& s : spans) {
      if (s.d < min_dur) continue;
      const Kind& k = kind_of(s.name);
      if (!legend.count(k.label)) {
        legend[k.label] = k.colour;
        legend_order.push_back(k.label);
      }
      o += fmt::format(
          "<rect x=\"{:.2f}\" y=\"{:.0f}\" width=\"{:.2f}\" height=\"{:.0f}\" "
          "fill=\"{}\"><title>{} "
          "({:.3f} ms)</title></rect>\n",
          x(s.t), y + 2, std::max(0.5, s.d / span_us * kWidth), kRow - 4, k.colour, esc(s.name),
          s.d / 1e3);
      ++drawn;
    }
  }
  double ly = bottom + 34;
  for (const std::string& l : legend_order) {
    o += fmt::format(
        "<rect x=\"{:.0f}\" y=\"{:.0f}\" width=\"12\" height=\"10\" fill=\"{}\"/><text "
        "x=\"{:.0f}\" "
        "y=\"{:.0f}\">{}</text>\n",
        kLeft, ly, legend[l], kLeft + 18, ly + 9, esc(l));
    ly += 16;
  }
  if (drawn < total)
    o += fmt::format("<text x=\"{:.0f}\" y=\"{:.0f}\">{} of {} spans drawn (the longest)</text>\n",
                     kLeft + 300, bottom + 43, drawn, total);
  o += "</svg>\n";
  return fmt::format(R"(<svg xmlns="http://www.w3.org/2000/svg" width="{:.0f}" height="{:.0f}" )"
                     R"(font-family="sans-serif" font-size="11">)"
                     "\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
                     kLeft + kWidth + 20, ly + 10) +
         o;
}

}  // namespace weightcast::exec
