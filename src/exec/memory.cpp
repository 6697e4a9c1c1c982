// Host side of Buffer; the CUDA calls live in cuda_memory.cu (or the stubs below without CUDA).
#include "weightcast/exec/memory.h"

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <utility>

namespace weightcast::exec {

// Implemented in cuda_memory.cu when built with CUDA.
Status cuda_alloc(std::byte** p, uint64_t bytes, int device);
void cuda_free(std::byte* p, int device);
Status cuda_copy(void* dst, const void* src, uint64_t bytes, bool to_device, int device);
Status cuda_host_register(void* p, uint64_t bytes);
void cuda_host_unregister(void* p);

#ifndef WEIGHTCAST_HAVE_CUDA
bool cuda_built() { return false; }
int cuda_devices() { return 0; }
Status cuda_alloc(std::byte**, uint64_t, int) {
  return Status(Code::kInvalidArgument,
                "this weightcast was built without CUDA (no nvcc at configure time)");
}
void cuda_free(std::byte*, int) {}
Status cuda_copy(void*, const void*, uint64_t, bool, int) {
  return Status(Code::kInvalidArgument, "this weightcast was built without CUDA");
}
Status cuda_host_register(void*, uint64_t) {
  return Status(Code::kInvalidArgument, "pinning host memory needs a CUDA build");
}
void cuda_host_unregister(void*) {}
MemoryKind pointer_kind(const void*) { return MemoryKind::kHost; }
Status cuda_use_device(int) {
  return Status(Code::kInvalidArgument, "this weightcast was built without CUDA");
}
Status copy_device_to_host_async(void*, const void*, uint64_t) { return cuda_use_device(0); }
Status copy_host_to_device_async(void*, const void*, uint64_t) { return cuda_use_device(0); }
Status copy_device_to_device_async(void*, const void*, uint64_t) { return cuda_use_device(0); }
Status cuda_sync() { return cuda_use_device(0); }
Result<CopyQueue> CopyQueue::create(int, size_t, bool) { return cuda_use_device(0); }
Status CopyQueue::mark(size_t) { return cuda_use_device(0); }
void CopyQueue::release() {}
Status CopyQueue::to_host(size_t, void*, const void*, uint64_t) { return cuda_use_device(0); }
Status CopyQueue::to_device(size_t, void*, const void*, uint64_t) { return cuda_use_device(0); }
Status CopyQueue::wait(size_t) { return cuda_use_device(0); }
#endif

CopyQueue::CopyQueue(CopyQueue&& o) noexcept
    : stream_(std::exchange(o.stream_, nullptr)),
      events_(std::move(o.events_)),
      device_(o.device_),
      own_(o.own_) {}
CopyQueue& CopyQueue::operator=(CopyQueue&& o) noexcept {
  if (this != &o) {
    release();
    stream_ = std::exchange(o.stream_, nullptr);
    events_ = std::move(o.events_);
    device_ = o.device_;
    own_ = o.own_;
  }
  return *this;
}
CopyQueue::~CopyQueue() { release(); }

Result<Buffer> Buffer::allocate(MemoryKind kind, uint64_t bytes, int device) {
  Buffer b;
  b.kind_ = kind;
  b.size_ = bytes;
  b.device_ = device;
  if (kind == MemoryKind::kCuda) {
    if (Status s = cuda_alloc(&b.data_, bytes, device); !s) return s;
    return b;
  }
  void* p = nullptr;
  if (posix_memalign(&p, 4096, bytes ? bytes : 1) != 0)
    return Status(Code::kSystem, fmt::format("posix_memalign({} bytes) failed", bytes));
  std::memset(p, 0, bytes);
  b.data_ = static_cast<std::byte*>(p);
  return b;
}

Buffer::Buffer(Buffer&& o) noexcept { *this = std::move(o); }

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    this->~Buffer();
    data_ = o.data_;
    size_ = o.size_;
    kind_ = o.kind_;
    device_ = o.device_;
    pinned_ = o.pinned_;
    o.pinned_ = false;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

Buffer::~Buffer() {
  if (!data_) return;
  if (kind_ == MemoryKind::kCuda) {
    cuda_free(data_, device_);
  } else {
    if (pinned_) cuda_host_unregister(data_);
    std::free(data_);
  }
  data_ = nullptr;
}

Status Buffer::pin() {
  if (kind_ != MemoryKind::kHost) return invalid("pin: only host buffers can be page-locked");
  if (pinned_) return Status::ok();
  if (Status s = cuda_host_register(data_, size_); !s) return s;
  pinned_ = true;
  return Status::ok();
}

Status Buffer::copy_from_host(const void* src, uint64_t bytes, uint64_t offset) {
  if (offset + bytes > size_)
    return invalid("copy_from_host: {} bytes at {} exceed the {}-byte buffer", bytes, offset,
                   size_);
  if (kind_ == MemoryKind::kHost) {
    std::memcpy(data_ + offset, src, bytes);
    return Status::ok();
  }
  return cuda_copy(data_ + offset, src, bytes, true, device_);
}

Status Buffer::copy_to_host(void* dst, uint64_t bytes, uint64_t offset) const {
  if (offset + bytes > size_)
    return invalid("copy_to_host: {} bytes at {} exceed the {}-byte buffer", bytes, offset, size_);
  if (kind_ == MemoryKind::kHost) {
    std::memcpy(dst, data_ + offset, bytes);
    return Status::ok();
  }
  return cuda_copy(dst, data_ + offset, bytes, false, device_);
}

Status copy_device_to_host(void* host_dst, const void* device_src, uint64_t bytes, int device) {
  return cuda_copy(host_dst, device_src, bytes, false, device);
}
Status copy_host_to_device(void* device_dst, const void* host_src, uint64_t bytes, int device) {
  return cuda_copy(device_dst, host_src, bytes, true, device);
}

}  // namespace weightcast::exec
