// device-ipc-cuda.cc: device-ipc.h with the CUDA runtime (cudaIpc*, cudaMemcpyAsync); handles are
// made by kernels/cuda/ipc-handle.h, which names devices by UUID.
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "device-ipc.h"
#include "kernels/cuda/ipc-handle.h"

namespace llm {
namespace transfer {

namespace {

Status cuda_failed(StatusCode code, const std::string& what, cudaError_t err) {
  cudaGetLastError();  // clear it: the agent's next call must not see this one's error
  return Status(code, what + ": " + cudaGetErrorString(err));
}

// The index of the device named `uuid` in this process, or -1. The UUIDs of this process's
// devices are read once (cudaGetDeviceProperties is slow, and every transfer asks).
int device_of(const std::string& uuid) {
  static const std::vector<std::string> uuids = [] {
    std::vector<std::string> all;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
      cudaGetLastError();
      return all;
    }
    for (int d = 0; d < count; ++d) {
      all.push_back(cuda::device_uuid(d));
    }
    return all;
  }();
  for (size_t d = 0; d < uuids.size(); ++d)
    if (!uuid.empty() && uuids[d] == uuid) return static_cast<int>(d);
  return -1;
}

}  // namespace

bool device_ipc_built() { return true; }

Status export_device_region(const void* base, std::string* handle_hex, std::string* device_uuid) {
  return cuda::export_ipc_handle(base, handle_hex, device_uuid);
}

Status DeviceMapping::open(const std::string& handle_hex, const std::string& device_uuid,
                           std::unique_ptr<DeviceMapping>* out) {
  const int device = device_of(device_uuid);
  if (device < 0) return Status(StatusCode::transfer_peer, "this process sees no GPU " + device_uuid);
  void* p = nullptr;
  LLM_RETURN_IF_ERROR(cuda::open_ipc_handle(handle_hex, device, &p));
  std::unique_ptr<DeviceMapping> m(new DeviceMapping());
  m->data_ = static_cast<char*>(p);
  m->device_ = device;
  *out = std::move(m);
  return Status::Ok();
}

DeviceMapping::~DeviceMapping() { cuda::close_ipc_handle(data_, device_); }

Status device_copy(const std::vector<DeviceCopy>& copies, const std::string& device_uuid) {
  if (copies.empty()) return Status::Ok();
  const int device = device_of(device_uuid);
  if (device < 0) return Status(StatusCode::transfer_peer, "this process sees no GPU " + device_uuid);
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return cuda_failed(StatusCode::transfer_peer, "cudaSetDevice", err);
  // One stream per thread and device, kept: transfers from one thread run in order.
  thread_local int stream_device = -1;
  thread_local cudaStream_t stream = nullptr;
  if (stream_device != device) {
    if (stream) cudaStreamDestroy(stream);
    stream = nullptr;
    if ((err = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)) != cudaSuccess)
      return cuda_failed(StatusCode::transfer_peer, "cudaStreamCreate", err);
    stream_device = device;
  }
  // cudaMemcpyDefault: the pointers may be on other GPUs of the host (unified addressing).
  for (const DeviceCopy& c : copies) {
    err = c.rows == 1 ? cudaMemcpyAsync(c.dst, c.src, c.width, cudaMemcpyDefault, stream)
                      : cudaMemcpy2DAsync(c.dst, c.dst_pitch, c.src, c.src_pitch, c.width, c.rows, cudaMemcpyDefault, stream);
    if (err != cudaSuccess) return cuda_failed(StatusCode::transfer_peer, "cudaMemcpyAsync (device to device)", err);
  }
  if ((err = cudaStreamSynchronize(stream)) != cudaSuccess)
    return cuda_failed(StatusCode::transfer_peer, "the device-to-device copy", err);
  return Status::Ok();
}

}  // namespace transfer
}  // namespace llm
