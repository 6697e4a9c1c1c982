// `weightcast trace merge` and `weightcast trace svg` (docs/tracing.md).
#include "trace_cmd.h"

#include <cstdio>
#include <fstream>

#include "weightcast/exec/step_trace.h"

namespace weightcast::cli {

namespace {
int fail(const Status& s) {
  std::fprintf(stderr, "weightcast: error: %s\n", s.message().c_str());
  return s.code() == Code::kInvalidArgument ? 2 : 1;
}

int write(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f || !f.write(text.data(), static_cast<std::streamsize>(text.size())))
    return fail(Status(Code::kSystem, path + ": cannot write"));
  return 0;
}
}  // namespace

void add_trace_command(CLI::App& app, TraceFlags& f) {
  f.cmd = app.add_subcommand(
      "trace", "Traces of steps (Chrome trace / Perfetto JSON): join them into one view");
  f.cmd->require_subcommand(1);
  f.merge = f.cmd->add_subcommand(
      "merge",
      "Join trace files (each process's of a job, a predicted step from `plan --trace`) into "
      "one file for ui.perfetto.dev or chrome://tracing");
  f.merge->add_option("files", f.files, "Trace files to join")->required();
  f.merge->add_option("-o,--out", f.out, "The joined trace")->required();
  f.merge->add_flag("--align", f.align,
                    "Start every file at 0 (to set a predicted step beside a measured one); "
                    "default: one clock for all, as processes of one host share it");
  f.merge->footer(
      "Example: weightcast demo --trace /tmp/t && weightcast plan -b demo-moe --profile "
      "configs/profiles/cx7-h100.json --trace /tmp/p.json && weightcast trace merge --align -o "
      "both.json /tmp/t/demo.trace.json /tmp/p.json");
  f.svg = f.cmd->add_subcommand(
      "svg",
      "Draw a trace (one file, merged or not) as an SVG timeline: a row per process and "
      "lane, spans coloured by kind, with a legend");
  f.svg->add_option("trace", f.svg_in, "The trace file")->required();
  f.svg->add_option("-o,--out", f.out, "The SVG file")->required();
}

int run_trace(const TraceFlags& f) {
  const bool svg = f.svg->parsed();
  auto merged = svg ? exec::merge_traces({f.svg_in}, false) : exec::merge_traces(f.files, f.align);
  if (!merged) return fail(merged.status());
  if (!svg) {
    if (int rc = write(f.out, *merged); rc) return rc;
    std::printf("%zu trace file(s) joined into %s\n", f.files.size(), f.out.c_str());
    return 0;
  }
  auto picture = exec::trace_svg(*merged);
  if (!picture) return fail(picture.status());
  if (int rc = write(f.out, *picture); rc) return rc;
  std::printf("timeline of %s written to %s\n", f.svg_in.c_str(), f.out.c_str());
  return 0;
}

}  // namespace weightcast::cli
