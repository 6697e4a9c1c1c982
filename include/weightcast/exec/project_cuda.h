// The GPU executor's projection: what plan::project_cpu does for one plan unit (assemble the
// dest box from its sources through transposes and concat offsets, then cast or FP8-quantize it
// into staging), with every source and the staging in CUDA device memory. Same bytes as the CPU
// reference (tested on a GPU over whole plans). Needs a CUDA build and a GPU.
#pragma once

#include <functional>
#include <span>

#include "weightcast/exec/memory.h"
#include "weightcast/plan/project.h"

namespace weightcast::exec {

// How many projections of a call took the fast path (see project_cuda_batch) or were assembled.
struct ProjectCounts {
  uint64_t fast = 0, assembled = 0;
};

// Where a projection's output and scales go instead of their staging offsets (nullptr: staging):
// device memory the caller's stream may write, e.g. a receiver's tensor mapped over CUDA IPC.
struct ProjectOut {
  std::byte* out = nullptr;
  float* scales = nullptr;
};

// `resolve` returns device pointers; `staging` is device memory; `scratch` is a device buffer
// the call grows as needed (4 bytes per element of the largest box, on CUDA device `device`) and
// may be reused. Kernels run on the calling thread's current device (cuda_use_device) and default
// stream, and the call returns once they are queued: copy the results out on the same thread
// (copies wait for them) or cuda_sync().
Status project_cuda(const spec::Inputs& in, const plan::Plan& plan, const plan::Project& p,
                    const plan::InputResolver& resolve, std::byte* staging, uint64_t staging_size,
                    Buffer& scratch, int device = 0, ProjectCounts* counts = nullptr);

// Several projections at once, each with the bytes project_cuda gives it, in fewer launches (one
// assembly launch per 16 inputs, one conversion launch per 16 projections): at a small model's
// sizes a step's projections cost their CUDA calls, not their bytes. `scratch` holds every one's
// floats (4 bytes per element of all the boxes together). `resolve` is told which projection an
// input belongs to (its part indexes that projection's dest param).
// Projections whose inputs are whole rows of their box (untransposed, of one dtype, 16-byte
// aligned: experts, fused concats along rows, most casts) take the fast path: each source byte
// is read once, straight into the conversion, without the floats in `scratch`; `counts`, when
// given, is told how many took each path. `outs`, when given, has an entry per projection.
using BatchResolver = std::function<plan::Held(const plan::Project&, const plan::Project::Input&)>;
Status project_cuda_batch(const spec::Inputs& in, const plan::Plan& plan,
                          std::span<const plan::Project* const> ps, const BatchResolver& resolve,
                          std::byte* staging, uint64_t staging_size, Buffer& scratch,
                          int device = 0, ProjectCounts* counts = nullptr,
                          std::span<const ProjectOut> outs = {});

}  // namespace weightcast::exec
