// device-ipc.h: CUDA IPC for the transfer agent (DESIGN.md section 6): a KV pool in GPU memory
// exported by one process and opened by another on the same host, and block copies between
// device pools. Plain C++: callers need no CUDA header.
//
// Built from device-ipc-cuda.cc when nvcc was found, else device-ipc-none.cc, whose calls all
// return ERR_TRANSFER_INVALID saying the build has no CUDA.
// Stays true: an exported handle names a whole cudaMalloc allocation (the pool's first byte); a
// mapping is open until its owner is destroyed; device_copy returns only once every byte has
// landed (the caller may then tell the peer, which reads the blocks on its own stream).
// A pool split by tensor parallelism is one allocation per rank, each exported by its own
// process (the engine's ranks: kernels/cuda/ipc-handle.h) and opened here one by one.
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

// One copy of a transfer: `rows` rows of `width` bytes from src (rows src_pitch bytes apart) to
// dst (dst_pitch apart); device pointers of this process, on any GPU of this host (a pool opened
// by DeviceMapping included).
struct DeviceCopy {
  const char* src;
  char* dst;
  size_t width;
  size_t rows;
  size_t src_pitch;
  size_t dst_pitch;
};
// Runs the copies on a stream of the calling thread on the device named `device_uuid` and waits
// for them.
Status device_copy(const std::vector<DeviceCopy>& copies, const std::string& device_uuid);

}  // namespace transfer
}  // namespace llm
