// `weightcast spec`: trainer, inference and topology specs from a Hugging Face config.json.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace weightcast::cli {

struct SpecFlags {
  std::string config, out;
  std::vector<std::string> args;  // what spec::parse_generate_args takes
  bool no_plan = false;
  CLI::App* cmd = nullptr;
};

void add_spec_command(CLI::App& app, SpecFlags& f);
int run_spec(const SpecFlags& f);

}  // namespace weightcast::cli
