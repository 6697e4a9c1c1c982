// The GPU executor's projection: what plan::project_cpu does for one plan unit (assemble the
// dest box from its sources through transposes and concat offsets, then cast or FP8-quantize it
// into staging), with every source and the staging in CUDA device memory. Same bytes as the CPU
// reference (tested on a GPU over whole plans). Needs a CUDA build and a GPU.
#pragma once

#include "weightcast/exec/memory.h"
#include "weightcast/plan/project.h"

namespace weightcast::exec {

// `resolve` returns device pointers; `staging` is device memory; `scratch` is a device buffer
// the call grows as needed (4 bytes per element of the largest box, on CUDA device `device`) and
// may be reused. Kernels run on the calling thread's current device (cuda_use_device) and default
// stream, and the call returns once they are queued: copy the results out on the same thread
// (copies wait for them) or cuda_sync().
Status project_cuda(const spec::Inputs& in, const plan::Plan& plan, const plan::Project& p,
                    const plan::InputResolver& resolve, std::byte* staging, uint64_t staging_size,
                    Buffer& scratch, int device = 0);

}  // namespace weightcast::exec
