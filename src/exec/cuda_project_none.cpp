// cuda_project.h in a build without CUDA: every call says so.
#include "cuda_kernels.h"
#include "weightcast/exec/cuda_project.h"

namespace weightcast::exec {

namespace {
Status no_cuda() {
  return Status(Code::kInvalidArgument,
                "this weightcast was built without CUDA (no nvcc at configure time)");
}
}  // namespace

namespace kernels {
Status assemble(const AssembleInput*, int, float*) { return no_cuda(); }
Status convert(const ConvertJob*, int) { return no_cuda(); }
bool fast_eligible(const FastJob&, const char** why) {
  if (why) *why = "built without CUDA";
  return false;
}
Status convert_fast(const FastJob*, int) { return no_cuda(); }
}  // namespace kernels

Status cuda_cast(const void*, core::DType, void*, core::DType, uint64_t, bool) { return no_cuda(); }
Status cuda_quantize_blocks(const void*, core::DType, int64_t, int64_t, int64_t, int64_t, int64_t,
                            core::DType, void*, float*, bool) {
  return no_cuda();
}

}  // namespace weightcast::exec
