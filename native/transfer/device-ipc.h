// device-ipc.h: CUDA IPC for the transfer agent (DESIGN.md section 6): a KV pool in GPU memory
// exported by one process and opened by another on the same host, and block copies between
// device pools. Plain C++: callers need no CUDA header.
//
// Built from device-ipc-cuda.cc when nvcc was found, else device-ipc-none.cc, whose calls all
// return ERR_TRANSFER_INVALID saying the build has no CUDA.
// Stays true: an exported handle names a whole cudaMalloc allocation (the pool's first byte); a
// mapping is open until its owner is destroyed; device_copy returns only once every byte has
// landed (the caller may then tell the peer, which reads the blocks on its own stream).
// CUDA IPC cannot open a handle in the process that exported it: two engines in one process
// cannot use it (the GPU test runs the prefill side as a child process).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace llm {
namespace transfer {

// Whether this build can do CUDA IPC at all.
bool device_ipc_built();

// The IPC handle of the allocation that starts at `base` (128 lowercase hex digits) and the UUID
// of the device holding it ("GPU-xxxxxxxx-..."). ERR_TRANSFER_INVALID when `base` is not the
// start of device memory this process allocated.
Status export_device_region(const void* base, std::string* handle_hex, std::string* device_uuid);

// Another process's exported allocation, mapped into this one.
class DeviceMapping {
 public:
  // Opens `handle_hex` on the device named `device_uuid` (ERR_TRANSFER_PEER when this process
  // sees no such device, or the handle does not open: a stale handle, or one of this process).
  static Status open(const std::string& handle_hex, const std::string& device_uuid,
                     std::unique_ptr<DeviceMapping>* out);
  ~DeviceMapping();
  DeviceMapping(const DeviceMapping&) = delete;
  DeviceMapping& operator=(const DeviceMapping&) = delete;
  char* data() const { return data_; }

 private:
  DeviceMapping() = default;
  char* data_ = nullptr;
  int device_ = 0;
};

// One block copy of a transfer: `bytes` from src to dst, both device pointers.
struct DeviceCopy {
  const char* src;
  char* dst;
};
// Runs the copies (runs of adjacent blocks merge into one copy) on a stream of the calling thread
// and waits for them. `device_uuid`: the device both pools are on.
Status device_copy(const std::vector<DeviceCopy>& copies, size_t bytes, const std::string& device_uuid);

}  // namespace transfer
}  // namespace llm
