// `weightcast trace`: join a job's trace files into one view, draw one as an SVG timeline.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace weightcast::cli {

struct TraceFlags {
  std::vector<std::string> files;  // merge: the files to join
  std::string out;                 // merge: the joined trace; svg: the picture
  bool align = false;
  std::string svg_in;  // svg: the trace to draw
  CLI::App* cmd = nullptr;
  CLI::App* merge = nullptr;
  CLI::App* svg = nullptr;
};

void add_trace_command(CLI::App& app, TraceFlags& f);
int run_trace(const TraceFlags& f);

}  // namespace weightcast::cli
