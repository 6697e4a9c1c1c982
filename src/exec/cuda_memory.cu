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
  // The zeroing runs on this thread's stream; finish it before another thread uses the memory.
  if (cudaError_t e = cudaStreamSynchronize(cudaStreamPerThread); e != cudaSuccess)
    return cuda_err("cudaStreamSynchronize", e);
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

Status cuda_host_register(void* p, uint64_t bytes) {
  if (cudaError_t e = cudaHostRegister(p, bytes ? bytes : 1, cudaHostRegisterDefault);
      e != cudaSuccess)
    return cuda_err("cudaHostRegister", e);
  return Status::ok();
}

void cuda_host_unregister(void* p) { cudaHostUnregister(p); }

MemoryKind pointer_kind(const void* p) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();  // plain host memory on older drivers: clear the sticky-free error
    return MemoryKind::kHost;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged ? MemoryKind::kCuda
                                                                           : MemoryKind::kHost;
}

namespace {
Status copy_async(void* dst, const void* src, uint64_t bytes, cudaMemcpyKind kind) {
  if (cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, cudaStreamPerThread); e != cudaSuccess)
    return cuda_err(kind == cudaMemcpyDeviceToHost   ? "cudaMemcpyAsync (device to host)"
                    : kind == cudaMemcpyHostToDevice ? "cudaMemcpyAsync (host to device)"
                                                     : "cudaMemcpyAsync (device to device)",
                    e);
  return Status::ok();
}
}  // namespace

Status copy_device_to_host_async(void* host_dst, const void* device_src, uint64_t bytes) {
  return copy_async(host_dst, device_src, bytes, cudaMemcpyDeviceToHost);
}
Status copy_host_to_device_async(void* device_dst, const void* host_src, uint64_t bytes) {
  return copy_async(device_dst, host_src, bytes, cudaMemcpyHostToDevice);
}
Status copy_device_to_device_async(void* dst, const void* src, uint64_t bytes) {
  return copy_async(dst, src, bytes, cudaMemcpyDeviceToDevice);
}

Status cuda_sync() {
  if (cudaError_t e = cudaStreamSynchronize(cudaStreamPerThread); e != cudaSuccess)
    return cuda_err("cudaStreamSynchronize", e);
  return Status::ok();
}

Result<CopyQueue> CopyQueue::create(int device, size_t slots, bool own_stream) {
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) return cuda_err("cudaSetDevice", e);
  CopyQueue q;
  q.device_ = device;
  q.own_ = own_stream;
  cudaStream_t st = cudaStreamPerThread;
  // Non-blocking: it neither waits for nor holds up the ranks' own (per-thread) streams.
  if (own_stream)
    if (cudaError_t e = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking); e != cudaSuccess)
      return cuda_err("cudaStreamCreateWithFlags", e);
  q.stream_ = st;
  for (size_t i = 0; i < slots; ++i) {
    cudaEvent_t ev = nullptr;
    if (cudaError_t e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming); e != cudaSuccess)
      return cuda_err("cudaEventCreateWithFlags", e);
    q.events_.push_back(ev);
  }
  return Result<CopyQueue>(std::move(q));
}

void CopyQueue::release() {
  if (!stream_ && events_.empty()) return;
  cudaSetDevice(device_);
  for (void* ev : events_) {
    cudaEventSynchronize(static_cast<cudaEvent_t>(ev));
    cudaEventDestroy(static_cast<cudaEvent_t>(ev));
  }
  if (own_ && stream_) {
    cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
    cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
  }
  stream_ = nullptr;
  events_.clear();
}

Status CopyQueue::mark(size_t slot) {
  if (slot >= events_.size())
    return Status(Code::kInvalidArgument,
                  fmt::format("CopyQueue: slot {} of {}", slot, events_.size()));
  if (cudaError_t e = cudaEventRecord(static_cast<cudaEvent_t>(events_[slot]),
                                      static_cast<cudaStream_t>(stream_));
      e != cudaSuccess)
    return cuda_err("cudaEventRecord", e);
  return Status::ok();
}

Status CopyQueue::to_host(size_t slot, void* host_dst, const void* device_src, uint64_t bytes) {
  if (slot >= events_.size())
    return Status(Code::kInvalidArgument,
                  fmt::format("CopyQueue: slot {} of {}", slot, events_.size()));
  auto st = static_cast<cudaStream_t>(stream_);
  if (cudaError_t e = cudaMemcpyAsync(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, st);
      e != cudaSuccess)
    return cuda_err("cudaMemcpyAsync (device to host)", e);
  return mark(slot);
}

Status CopyQueue::to_device(size_t slot, void* device_dst, const void* host_src, uint64_t bytes) {
  if (slot >= events_.size())
    return Status(Code::kInvalidArgument,
                  fmt::format("CopyQueue: slot {} of {}", slot, events_.size()));
  if (cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) return cuda_err("cudaSetDevice", e);
  auto st = static_cast<cudaStream_t>(stream_);
  if (cudaError_t e = cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice, st);
      e != cudaSuccess)
    return cuda_err("cudaMemcpyAsync (host to device)", e);
  return mark(slot);
}

Status CopyQueue::wait(size_t slot) {
  if (slot >= events_.size())
    return Status(Code::kInvalidArgument,
                  fmt::format("CopyQueue: slot {} of {}", slot, events_.size()));
  if (cudaError_t e = cudaEventSynchronize(static_cast<cudaEvent_t>(events_[slot]));
      e != cudaSuccess)
    return cuda_err("cudaEventSynchronize", e);
  return Status::ok();
}

Status cuda_use_device(int device) {
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) return cuda_err("cudaSetDevice", e);
  return Status::ok();
}

}  // namespace weightcast::exec
