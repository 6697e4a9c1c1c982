// The same-host backend's CUDA calls: IPC handles (the allocation's handle plus the offset, as
// PyTorch shares tensors), mapping, one copy stream and its events.
#include "ipc_cuda.h"

#include <cstring>
#include <vector>

#if WEIGHTCAST_HAVE_CUDA
#include <cuda.h>  // types of the two driver entry points only; libcuda is reached through cudart
#include <cuda_runtime.h>
#endif

namespace weightcast::transport::ipc::cuda {

#if WEIGHTCAST_HAVE_CUDA

namespace {

Status cuda_err(const char* call, cudaError_t e) {
  cudaGetLastError();
  return Status(Code::kSystem,
                fmt::format("{}: {} ({})", call, cudaGetErrorName(e), cudaGetErrorString(e)));
}

using AddressRangeFn = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);
using PointerAttrFn = CUresult (*)(void*, CUpointer_attribute, CUdeviceptr);

template <typename Fn>
Fn driver_fn(const char* name) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult q{};
  if (cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &q) != cudaSuccess ||
      q != cudaDriverEntryPointSuccess)
    return nullptr;
  return reinterpret_cast<Fn>(fn);
}

Result<Mapping> range_of(const void* p) {
  static const auto fn = driver_fn<AddressRangeFn>("cuMemGetAddressRange");
  if (!fn) return Status(Code::kSystem, "cuMemGetAddressRange is not available from the driver");
  CUdeviceptr base = 0;
  size_t size = 0;
  if (CUresult r = fn(&base, &size, reinterpret_cast<CUdeviceptr>(p)); r != CUDA_SUCCESS)
    return Status(Code::kSystem, fmt::format("cuMemGetAddressRange: CUresult {}", int(r)));
  return Mapping{reinterpret_cast<void*>(base), size};
}

}  // namespace

bool built() { return true; }

Result<int> device_of(const void* ptr) {
  cudaPointerAttributes a{};
  if (cudaError_t e = cudaPointerGetAttributes(&a, ptr); e != cudaSuccess)
    return cuda_err("cudaPointerGetAttributes", e);
  if (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged)
    return invalid("the region at {} is not CUDA device memory", ptr);
  return a.device;
}

bool have_device() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

bool can_access_peer(int from, int to) {
  if (from == to) return true;
  int ok = 0;
  return cudaDeviceCanAccessPeer(&ok, from, to) == cudaSuccess && ok == 1;
}

Result<void*> alloc_probe(uint64_t len) {
  void* p = nullptr;
  if (cudaError_t e = cudaMalloc(&p, len); e != cudaSuccess) return cuda_err("cudaMalloc", e);
  return p;
}

void free_probe(void* ptr) { cudaFree(ptr); }

Result<Export> export_region(void* ptr, uint64_t len) {
  cudaPointerAttributes a{};
  if (cudaError_t e = cudaPointerGetAttributes(&a, ptr); e != cudaSuccess)
    return cuda_err("cudaPointerGetAttributes", e);
  if (a.type != cudaMemoryTypeDevice)
    return invalid("the region at {} is not CUDA device memory", ptr);
  Export x;
  x.device = a.device;
  if (cudaError_t e = cudaSetDevice(a.device); e != cudaSuccess)
    return cuda_err("cudaSetDevice", e);
  static const auto attr = driver_fn<PointerAttrFn>("cuPointerGetAttribute");
  int legacy = 1;
  if (attr &&
      attr(&legacy, CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE,
           reinterpret_cast<CUdeviceptr>(ptr)) == CUDA_SUCCESS &&
      !legacy)
    return invalid(
        "the CUDA region at {} is VMM memory (cuMemCreate, e.g. PyTorch's expandable segments) "
        "and has no CUDA IPC handle: allocate it with cudaMalloc (PYTORCH_CUDA_ALLOC_CONF="
        "expandable_segments:False) or use the fabric backend",
        ptr);
  auto r = range_of(ptr);
  if (!r) return r.status();
  const auto off =
      static_cast<uint64_t>(static_cast<const char*>(ptr) - static_cast<const char*>(r->base));
  if (off > r->size || len > r->size - off)
    return invalid("the CUDA region at {} ({} B) runs past its allocation ({} B at {})", ptr, len,
                   r->size, r->base);
  x.offset = off;
  cudaIpcMemHandle_t h;
  if (cudaError_t e = cudaIpcGetMemHandle(&h, ptr); e != cudaSuccess)
    return cuda_err("cudaIpcGetMemHandle", e);
  static_assert(sizeof h == kHandleBytes);
  std::memcpy(x.handle, &h, kHandleBytes);
  return x;
}

Result<Mapping> open_handle(const uint8_t* handle, int device) {
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) return cuda_err("cudaSetDevice", e);
  cudaIpcMemHandle_t h;
  std::memcpy(&h, handle, kHandleBytes);
  void* p = nullptr;
  if (cudaError_t e = cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess); e != cudaSuccess)
    return cuda_err("cudaIpcOpenMemHandle", e);
  auto r = range_of(p);
  if (!r) {
    cudaIpcCloseMemHandle(p);
    return r.status();
  }
  return Mapping{p, r->size};
}

void close_handle(void* base, int device) {
  cudaSetDevice(device);
  cudaIpcCloseMemHandle(base);
}

Result<Stream*> Stream::create(int device) {
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) return cuda_err("cudaSetDevice", e);
  cudaStream_t s = nullptr;
  if (cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking); e != cudaSuccess)
    return cuda_err("cudaStreamCreateWithFlags", e);
  auto* out = new Stream();
  out->device_ = device;
  out->stream_ = s;
  return out;
}

Stream::~Stream() {
  cudaSetDevice(device_);
  cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
  for (void* e : free_events_) cudaEventDestroy(static_cast<cudaEvent_t>(e));
  cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

Status Stream::copy(void* dst, const void* src, uint64_t len) {
  if (cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) return cuda_err("cudaSetDevice", e);
  if (cudaError_t e =
          cudaMemcpyAsync(dst, src, len, cudaMemcpyDefault, static_cast<cudaStream_t>(stream_));
      e != cudaSuccess)
    return cuda_err("cudaMemcpyAsync", e);
  return Status::ok();
}

Result<void*> Stream::mark() {
  cudaEvent_t ev = nullptr;
  if (!free_events_.empty()) {
    ev = static_cast<cudaEvent_t>(free_events_.back());
    free_events_.pop_back();
  } else if (cudaError_t e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
             e != cudaSuccess) {
    return cuda_err("cudaEventCreateWithFlags", e);
  }
  if (cudaError_t e = cudaEventRecord(ev, static_cast<cudaStream_t>(stream_)); e != cudaSuccess) {
    free_events_.push_back(ev);
    return cuda_err("cudaEventRecord", e);
  }
  return static_cast<void*>(ev);
}

Result<bool> Stream::done(void* event) {
  const cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(event));
  if (e == cudaSuccess) return true;
  if (e == cudaErrorNotReady) {
    cudaGetLastError();
    return false;
  }
  return cuda_err("cudaEventQuery", e);
}

void Stream::release(void* event) { free_events_.push_back(event); }

Status Stream::sync() {
  if (cudaError_t e = cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)); e != cudaSuccess)
    return cuda_err("cudaStreamSynchronize", e);
  return Status::ok();
}

#else  // built without CUDA: host regions only

namespace {
Status no_cuda() {
  return Status(Code::kInvalidArgument,
                "this build of weightcast has no CUDA: the ipc backend links host memory only");
}
}  // namespace

bool built() { return false; }
Result<int> device_of(const void*) { return no_cuda(); }
bool have_device() { return false; }
bool can_access_peer(int from, int to) { return from == to; }
Result<void*> alloc_probe(uint64_t) { return no_cuda(); }
void free_probe(void*) {}
Result<Export> export_region(void*, uint64_t) { return no_cuda(); }
Result<Mapping> open_handle(const uint8_t*, int) { return no_cuda(); }
void close_handle(void*, int) {}
Result<Stream*> Stream::create(int) { return no_cuda(); }
Stream::~Stream() = default;
Status Stream::copy(void*, const void*, uint64_t) { return no_cuda(); }
Result<void*> Stream::mark() { return no_cuda(); }
Result<bool> Stream::done(void*) { return no_cuda(); }
void Stream::release(void*) {}
Status Stream::sync() { return no_cuda(); }

#endif

}  // namespace weightcast::transport::ipc::cuda
