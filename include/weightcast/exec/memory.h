// Memory the executor reads and writes: host memory now, CUDA device memory on GPUs. The CUDA
// side is compiled with nvcc when CUDA is present at configure time (src/exec/cuda_memory.cu);
// without it, asking for device memory is an error that says so.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "weightcast/core/status.h"

namespace weightcast::exec {

enum class MemoryKind : uint8_t { kHost, kCuda };

class Buffer {
 public:
  // Page-aligned host memory, or device memory on CUDA device `device`.
  static Result<Buffer> allocate(MemoryKind kind, uint64_t bytes, int device = 0);
  Buffer() = default;
  Buffer(Buffer&& o) noexcept;
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();

  std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }
  MemoryKind kind() const { return kind_; }
  // Copies between this buffer and host memory (a memcpy for host buffers).
  Status copy_from_host(const void* src, uint64_t bytes, uint64_t offset = 0);
  Status copy_to_host(void* dst, uint64_t bytes, uint64_t offset = 0) const;
  // Page-locks a host buffer for the CUDA driver (cudaHostRegister), so copies between it and the
  // device run at full PCIe speed and can be asynchronous; undone when the buffer is freed. An
  // error for device buffers and without CUDA. Idempotent.
  Status pin();
  bool pinned() const { return pinned_; }

 private:
  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
  MemoryKind kind_ = MemoryKind::kHost;
  int device_ = 0;
  bool pinned_ = false;
};

// Copies between CUDA device memory on `device` and host memory (errors name the CUDA call; an
// error without CUDA).
Status copy_device_to_host(void* host_dst, const void* device_src, uint64_t bytes, int device = 0);
Status copy_host_to_device(void* device_dst, const void* host_src, uint64_t bytes, int device = 0);

// Where a pointer points: kCuda for CUDA device memory (or managed memory), kHost otherwise
// (always kHost without CUDA). Lets APIs reject a device pointer given where host memory is
// expected, and the reverse, with a message instead of a crash.
MemoryKind pointer_kind(const void* p);
// Makes `device` the calling thread's current CUDA device (kernels launch there).
Status cuda_use_device(int device);

// The same on the calling thread's default stream, returning once queued: the host memory must
// be pinned (Buffer::pin) and stay untouched until cuda_sync() on this thread returns.
Status copy_device_to_host_async(void* host_dst, const void* device_src, uint64_t bytes);
Status copy_host_to_device_async(void* device_dst, const void* host_src, uint64_t bytes);
Status copy_device_to_device_async(void* dst, const void* src, uint64_t bytes);
// Waits for everything queued on the calling thread's default stream; reports the first error
// of its kernels and copies.
Status cuda_sync();

// Work on a CUDA stream marked by events (slots): queue work, mark a slot, queue more, and wait
// for a slot when its results are needed. `own_stream`: a stream of its own that neither waits
// for nor holds up others (the executor copies a step's host-read GPU shards to the host on it
// while the GPU projects); otherwise the calling thread's default stream (the executor marks each
// projection there and waits for one while the next computes). Host memory must be pinned.
// Without CUDA, create() is an error that says so.
class CopyQueue {
 public:
  static Result<CopyQueue> create(int device, size_t slots, bool own_stream = true);
  CopyQueue() = default;
  CopyQueue(CopyQueue&& o) noexcept;
  CopyQueue& operator=(CopyQueue&& o) noexcept;
  CopyQueue(const CopyQueue&) = delete;
  CopyQueue& operator=(const CopyQueue&) = delete;
  ~CopyQueue();
  // Queues the copy and marks `slot` (< slots) done when it completes.
  Status to_host(size_t slot, void* host_dst, const void* device_src, uint64_t bytes);
  // Queues a copy from pinned host memory to the device and marks `slot` done when it completes.
  Status to_device(size_t slot, void* device_dst, const void* host_src, uint64_t bytes);
  // Marks `slot` done once everything queued on the stream so far is.
  Status mark(size_t slot);
  // Blocks until the copy last queued under `slot` is done; reports its error.
  Status wait(size_t slot);

 private:
  void release();
  void* stream_ = nullptr;
  std::vector<void*> events_;
  int device_ = 0;
  bool own_ = false;
};

// Whether this build has CUDA, and how many devices the driver reports (0 without a GPU).
bool cuda_built();
int cuda_devices();

}  // namespace weightcast::exec
