// Internal: the CUDA calls of the same-host backend, behind plain types so that the backend
// builds (and its host-memory path runs) without CUDA. Errors name the CUDA call.
#pragma once

#include <cstdint>
#include <vector>

#include "ipc_shm.h"

namespace weightcast::transport::ipc::cuda {

bool built();

struct Export {
  int device = -1;
  uint64_t offset = 0;  // of the pointer in its allocation
  uint8_t handle[kHandleBytes] = {};
};
// The IPC handle of the allocation holding [ptr, ptr + len), and ptr's offset in it. VMM memory
// (cuMemCreate, e.g. PyTorch's expandable segments) has no legacy IPC handle: refused by name.
Result<Export> export_region(void* ptr, uint64_t len);

// Maps a peer's allocation on `device` (this process's device for the copies); returns its base
// and size. Each handle is opened once per process: the caller caches.
struct Mapping {
  void* base = nullptr;
  uint64_t size = 0;
};
Result<Mapping> open_handle(const uint8_t* handle, int device);
void close_handle(void* base, int device);

// The CUDA device holding `ptr` (device or managed memory), for backends that register device
// memory with a NIC (libfabric's FI_HMEM_CUDA).
Result<int> device_of(const void* ptr);
// Whether this process sees a CUDA device at all (false without CUDA or without a GPU).
bool have_device();
// Whether kernels on device `from` can write memory of device `to` (peer access: NVLink or PCIe
// P2P); true when they are the same device.
bool can_access_peer(int from, int to);
// A small device allocation for probing a NIC's registration of GPU memory; free_probe frees it.
Result<void*> alloc_probe(uint64_t len);
void free_probe(void* ptr);

// One copy stream with its event pool.
class Stream {
 public:
  static Result<Stream*> create(int device);
  ~Stream();
  int device() const { return device_; }
  // Any direction (cudaMemcpyDefault: host or device, local or IPC-mapped).
  Status copy(void* dst, const void* src, uint64_t len);
  // An event recorded after everything enqueued so far; done() polls it.
  Result<void*> mark();
  Result<bool> done(void* event);
  void release(void* event);
  Status sync();

 private:
  Stream() = default;
  int device_ = -1;
  void* stream_ = nullptr;
  std::vector<void*> free_events_;
};

}  // namespace weightcast::transport::ipc::cuda
