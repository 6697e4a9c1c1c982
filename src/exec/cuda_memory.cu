// CUDA side of Buffer: device allocation and copies, with errors that name the call.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include "weightcast/exec/memory.h"

namespace weightcast::exec {

namespace {
Status cuda_err(const char* call, cudaError_t e) {
  return Status(Code::kSystem,
                fmt::format("{}: {} ({})", call, cudaGetErrorName(e), cudaGetErrorString(e)));
}
}  // namespace

bool cuda_built() { return true; }

int cuda_devices() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

Status cuda_alloc(std::byte** p, uint64_t bytes, int device) {
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) return cuda_err("cudaSetDevice", e);
  void* q = nullptr;
  if (cudaError_t e = cudaMalloc(&q, bytes ? bytes : 1); e != cudaSuccess)
    return cuda_err("cudaMalloc", e);
  if (cudaError_t e = cudaMemset(q, 0, bytes); e != cudaSuccess) return cuda_err("cudaMemset", e);
  *p = static_cast<std::byte*>(q);
  return Status::ok();
}

void cuda_free(std::byte* p, int device) {
  cudaSetDevice(device);
  cudaFree(p);
}

Status cuda_copy(void* dst, const void* src, uint64_t bytes, bool to_device, int device) {
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) return cuda_err("cudaSetDevice", e);
  const cudaError_t e =
      cudaMemcpy(dst, src, bytes, to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost);
  return e == cudaSuccess ? Status::ok() : cuda_err("cudaMemcpy", e);
}

}  // namespace weightcast::exec
