// Traces of real steps: what a process appends, bounded, and the merge of a job's files.
#include "weightcast/exec/step_trace.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace weightcast::exec {
namespace {

std::string dir() {
  const auto d =
      std::filesystem::temp_directory_path() / ("wc-step-trace-" + std::to_string(::getpid()));
  std::filesystem::create_directories(d);
  return d.string();
}

std::string read(const std::string& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

nlohmann::json events(const std::string& merged) {
  return nlohmann::json::parse(merged)["traceEvents"];
}

TEST(StepTrace, SpansAreAppendedPerFlushAndBounded) {
  const std::string p = dir() + "/a.trace.json";
  auto t = StepTrace::open(p, "trainer 0", 3);
  ASSERT_TRUE(t) << t.status().message();
  const auto t0 = StepTrace::Clock::now();
  (*t)->span("projection", StepTrace::kCompute, t0, t0 + std::chrono::microseconds(250), 7);
  ASSERT_TRUE((*t)->flush());
  // Flushed: on disk before the process ends, readable by the merge as it is (no closing ']').
  const std::string once = read(p);
  EXPECT_EQ(once.rfind("[\n", 0), 0u);
  EXPECT_NE(once.find(R"("name":"projection")"), std::string::npos);
  EXPECT_NE(once.find(R"("dur":250.000)"), std::string::npos);
  EXPECT_NE(once.find(R"("generation":7)"), std::string::npos);
  auto m = merge_traces({p}, false);
  ASSERT_TRUE(m) << m.status().message();
  // 5 metadata events (the process, 4 lanes) and the span, which starts at 0 after the shift.
  const auto ev = events(*m);
  ASSERT_EQ(ev.size(), 6u);
  EXPECT_EQ(ev[5]["name"], "projection");
  EXPECT_EQ(ev[5]["ts"].get<double>(), 0.0);
  // Past 3 events nothing more is kept, and the file says so once.
  for (int i = 0; i < 5; ++i) (*t)->counter("NIC 0 GB/s", t0, i);
  EXPECT_EQ((*t)->dropped(), 3u);
  ASSERT_TRUE((*t)->flush());
  const std::string full = read(p);
  EXPECT_NE(full.find("trace full: 3 events kept"), std::string::npos);
  EXPECT_EQ(events(*merge_traces({p}, false)).size(), 9u);  // 5 + 3 kept + the notice
  std::filesystem::remove_all(dir());
}

TEST(StepTrace, MergeKeepsOneClockRenumbersProcessesAndNamesBadFiles) {
  const std::string d = dir();
  // Two processes of one host with the same pid (as two files from different hosts may have),
  // and a simulated step in the object format, starting at 0.
  std::ofstream(d + "/x.json") << R"([{"ph":"X","pid":5,"tid":1,"ts":1000,"dur":10,"name":"a"},)";
  std::ofstream(d + "/y.json") << R"([{"ph":"X","pid":5,"tid":1,"ts":1500,"dur":10,"name":"b"}])";
  std::ofstream(d + "/sim.json")
      << R"({"traceEvents":[{"ph":"X","pid":1,"tid":0,"ts":0,"dur":10,"name":"predicted"}]})";
  auto m = merge_traces({d + "/x.json", d + "/y.json"}, false);
  ASSERT_TRUE(m) << m.status().message();
  auto ev = events(*m);
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0]["ts"].get<double>(), 0.0);  // one clock: y stays 500 us after x
  EXPECT_EQ(ev[1]["ts"].get<double>(), 500.0);
  EXPECT_NE(ev[0]["pid"], ev[1]["pid"]);  // one pid per (file, process)
  auto a = merge_traces({d + "/y.json", d + "/sim.json"}, true);
  ASSERT_TRUE(a);
  ev = events(*a);
  EXPECT_EQ(ev[0]["ts"].get<double>(), 0.0);  // aligned: each file from 0
  EXPECT_EQ(ev[1]["ts"].get<double>(), 0.0);
  // A process killed while it wrote: half an event at the end is cut back to the last whole one.
  std::ofstream(d + "/cut.json") << "[\n"
                                 << R"({"ph":"X","pid":5,"tid":1,"ts":1,"dur":1,"name":"a"},)"
                                 << "\n"
                                 << R"({"ph":"X","pid":5,"ti)";
  auto cut = merge_traces({d + "/cut.json"}, false);
  ASSERT_TRUE(cut) << cut.status().message();
  EXPECT_EQ(events(*cut).size(), 1u);
  std::ofstream(d + "/closed.json") << R"([{"ph":"X","pid":5,"tid":1,"ts":1,"dur":1,"name":"a"},)"
                                    << "\n]";
  ASSERT_TRUE(merge_traces({d + "/closed.json"}, false));
  std::ofstream(d + "/bad.json") << R"({"not": "a trace"})";
  auto bad = merge_traces({d + "/x.json", d + "/bad.json"}, false);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.status().message().find("bad.json"), std::string::npos);
  auto gone = merge_traces({d + "/missing.json"}, false);
  ASSERT_FALSE(gone);
  EXPECT_NE(gone.status().message().find("missing.json: cannot open"), std::string::npos);
  std::filesystem::remove_all(d);
}

TEST(StepTrace, TimelinePicturesDrawEverySpanWithALegendOrSayWhatWasLeftOut) {
  const std::string merged = R"({"traceEvents":[
    {"ph":"M","name":"process_name","pid":1,"args":{"name":"trainer 0"}},
    {"ph":"M","name":"thread_name","pid":1,"tid":1,"args":{"name":"compute"}},
    {"ph":"X","pid":1,"tid":1,"ts":0,"dur":2000,"name":"projection"},
    {"ph":"X","pid":1,"tid":3,"ts":2000,"dur":500,"name":"drain: the last writes complete"}]})";
  auto svg = trace_svg(merged);
  ASSERT_TRUE(svg) << svg.status().message();
  EXPECT_NE(svg->find("trainer 0 / compute"), std::string::npos);
  EXPECT_NE(svg->find("trainer 0 / lane 3"), std::string::npos);  // no thread_name for lane 3
  EXPECT_NE(svg->find("<title>projection (2.000 ms)</title>"), std::string::npos);
  EXPECT_NE(svg->find(">projections</text>"), std::string::npos);
  EXPECT_NE(svg->find(">drain: last writes complete</text>"), std::string::npos);
  EXPECT_NE(svg->find(">2 ms</text>"), std::string::npos);  // the axis: 0 .. 2.5 ms
  EXPECT_EQ(svg->find("spans drawn"), std::string::npos);
  auto one = trace_svg(merged, 1);
  ASSERT_TRUE(one);
  EXPECT_NE(one->find("1 of 2 spans drawn (the longest)"), std::string::npos);
  EXPECT_EQ(one->find("<title>drain"), std::string::npos);
  EXPECT_FALSE(trace_svg(R"({"traceEvents":[]})"));
  EXPECT_FALSE(trace_svg(merged, 0));
  // A name that is not a string is drawn as "other", not an error.
  auto odd = trace_svg(R"([{"ph":"X","pid":1,"tid":0,"ts":0,"dur":5,"name":7}])");
  ASSERT_TRUE(odd) << odd.status().message();
  EXPECT_NE(odd->find(">other</text>"), std::string::npos);
  // Names that are not UTF-8 (peers' error messages) are written, never thrown.
  const std::string p = dir() + "/utf.trace.json";
  auto t = StepTrace::open(p, "trainer 0");
  ASSERT_TRUE(t);
  const auto now = StepTrace::Clock::now();
  (*t)->span(std::string("push failed: \xff\xfe"), StepTrace::kStep, now, now, 1);
  ASSERT_TRUE((*t)->flush());
  ASSERT_TRUE(merge_traces({p}, false));
  std::filesystem::remove_all(dir());
  EXPECT_FALSE(trace_svg("not json"));
}

}  // namespace
}  // namespace weightcast::exec
