// Where a tensor lives: the global box a rank holds under a placement, and the parts of an
// inference tensor's local buffer.
#pragma once

#include <optional>
#include <vector>

#include "weightcast/spec/spec.h"

namespace weightcast::spec {

// The global box of a tensor of `shape` held by `rank`, or nullopt when the rank holds nothing
// (not the owner). Shards on several axes nest in mesh-axis order, as DTensor does.
std::optional<core::Box> local_box(const core::Shape& shape, const PlacementMap& placement,
                                   const Mesh& mesh, int64_t rank);

// One part of an inference tensor's local buffer on a rank.
struct LocalPart {
  int part = 0;
  core::Box global;    // in the part's (post-transpose) coordinates
  int64_t offset = 0;  // where it starts along the concat dim of the local buffer
};

struct DestLocal {
  core::Shape shape;  // local buffer shape
  std::vector<LocalPart> parts;
};

// True when local index `idx` of a padded tensor (one part, at the buffer's origin) holds data of
// the part, false for padding.
bool holds(const LocalPart& lp, const std::array<int64_t, core::kMaxDims>& idx);

// nullopt when the rank holds nothing of the tensor.
std::optional<DestLocal> dest_local(const DestParam& p, const Mesh& mesh, int64_t rank);

// The shape the engine sees of a local buffer (or of its scales) of `p`: `local` itself, or with
// dim 0 split into [items held, rows per item] for a param with view_items.
core::Shape view_shape(const DestParam& p, const core::Shape& local, bool scales);

// Local shape of the FP32 scale tensor of a block-quantized local buffer.
core::Shape scale_shape(const core::Shape& local, const Quant& q);

}  // namespace weightcast::spec
