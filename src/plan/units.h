// Internal: the planner's first stage. Cuts every inference rank's buffers into units, each a
// dest box that one sender can produce from a known set of trainer pieces.
#pragma once

#include <vector>

#include "weightcast/plan/plan.h"
#include "weightcast/spec/layout.h"
#include "weightcast/spec/spec_parser.h"

namespace weightcast::plan::detail {

// Ranks holding one identical box of a trainer param (replicas of one shard).
struct Holders {
  core::Box box;
  std::vector<uint32_t> ranks;
};

struct Need {
  uint32_t part;
  core::Box src;     // global coords of the part's trainer param
  uint32_t holders;  // index into the param's holder list
  bool operator==(const Need& o) const { return part == o.part && src == o.src; }
};

// Where a unit's bytes land: a dest tensor box (and its scales' box).
struct Target {
  uint32_t dest;
  int32_t scale_dest = -1;
  core::Box box, scale_box;
};

struct Unit {
  Target target;
  std::vector<Need> needs;
  uint64_t bytes = 0;  // dest bytes (scales included)
  Project::Kind kind = Project::Kind::kCopy;
  bool direct = false;  // a plain copy a holder can write straight from its shard
  uint64_t key = 0;     // equal keys (and equal needs) produce equal bytes: produce once
};

struct Layout {
  std::vector<std::vector<Holders>> holders;             // per trainer param
  std::vector<std::vector<spec::LocalPart>> dest_parts;  // per dest tensor (empty for scales)
  std::vector<Unit> units;
};

// Fills plan.dests / plan.receivers and returns the units.
Layout cut_units(const spec::Inputs& in, const Options& opts, Plan& plan);

// Part-global box -> dest-local box and back (concat offset along the concat dim).
core::Box to_dest(const core::Box& part_box, const spec::LocalPart& lp, int concat_dim);
core::Box to_part(const core::Box& dest_box, const spec::LocalPart& lp, int concat_dim);

}  // namespace weightcast::plan::detail
