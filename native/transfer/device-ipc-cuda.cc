// device-ipc-cuda.cc: device-ipc.h with the CUDA runtime (cudaIpc*, cudaMemcpyAsync).
// Devices are named by UUID across processes: a device's index can differ between two processes
// (CUDA_VISIBLE_DEVICES), its UUID cannot.
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "device-ipc.h"

namespace llm {
namespace transfer {

namespace {

Status cuda_failed(StatusCode code, const std::string& what, cudaError_t err) {
  cudaGetLastError();  // clear it: the agent's next call must not see this one's error
  return Status(code, what + ": " + cudaGetErrorString(err));
}

std::string uuid_text(const cudaUUID_t& u) {
  const auto* b = reinterpret_cast<const unsigned char*>(u.bytes);
  char s[64];
  std::snprintf(s, sizeof s, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  return s;
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
      cudaDeviceProp prop;
      all.push_back(cudaGetDeviceProperties(&prop, d) == cudaSuccess ? uuid_text(prop.uuid) : std::string());
    }
    return all;
  }();
  for (size_t d = 0; d < uuids.size(); ++d)
    if (!uuid.empty() && uuids[d] == uuid) return static_cast<int>(d);
  return -1;
}

constexpr size_t kHandleBytes = sizeof(cudaIpcMemHandle_t);

}  // namespace

bool device_ipc_built() { return true; }

Status export_device_region(const void* base, std::string* handle_hex, std::string* device_uuid) {
  cudaPointerAttributes attr;
  cudaError_t err = cudaPointerGetAttributes(&attr, base);
  if (err != cudaSuccess) return cuda_failed(StatusCode::transfer_invalid, "the KV region is not device memory", err);
  if (attr.type != cudaMemoryTypeDevice) return Status(StatusCode::transfer_invalid, "the KV region is not device memory");
  cudaDeviceProp prop;
  if ((err = cudaGetDeviceProperties(&prop, attr.device)) != cudaSuccess)
    return cuda_failed(StatusCode::transfer_invalid, "cudaGetDeviceProperties", err);
  if ((err = cudaSetDevice(attr.device)) != cudaSuccess) return cuda_failed(StatusCode::transfer_invalid, "cudaSetDevice", err);
  cudaIpcMemHandle_t h;
  if ((err = cudaIpcGetMemHandle(&h, const_cast<void*>(base))) != cudaSuccess)
    return cuda_failed(StatusCode::transfer_invalid, "cudaIpcGetMemHandle (the KV region)", err);
  static_assert(kHandleBytes == 64, "CUDA IPC handles are 64 bytes");
  const auto* b = reinterpret_cast<const unsigned char*>(&h);
  std::string hex(2 * kHandleBytes, '0');
  for (size_t i = 0; i < kHandleBytes; ++i) std::snprintf(&hex[2 * i], 3, "%02x", b[i]);
  *handle_hex = hex;
  *device_uuid = uuid_text(prop.uuid);
  return Status::Ok();
}

Status DeviceMapping::open(const std::string& handle_hex, const std::string& device_uuid,
                           std::unique_ptr<DeviceMapping>* out) {
  if (handle_hex.size() != 2 * kHandleBytes || handle_hex.find_first_not_of("0123456789abcdef") != std::string::npos)
    return Status(StatusCode::transfer_invalid, "a CUDA IPC handle has 128 lowercase hex digits");
  cudaIpcMemHandle_t h;
  auto* b = reinterpret_cast<unsigned char*>(&h);
  for (size_t i = 0; i < kHandleBytes; ++i) b[i] = static_cast<unsigned char>(std::stoul(handle_hex.substr(2 * i, 2), nullptr, 16));
  const int device = device_of(device_uuid);
  if (device < 0) return Status(StatusCode::transfer_peer, "this process sees no GPU " + device_uuid);
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return cuda_failed(StatusCode::transfer_peer, "cudaSetDevice", err);
  void* p = nullptr;
  err = cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess);
  if (err != cudaSuccess)
    return cuda_failed(StatusCode::transfer_peer,
                       "cudaIpcOpenMemHandle (a stale handle, or one exported by this same process)", err);
  std::unique_ptr<DeviceMapping> m(new DeviceMapping());
  m->data_ = static_cast<char*>(p);
  m->device_ = device;
  *out = std::move(m);
  return Status::Ok();
}

DeviceMapping::~DeviceMapping() {
  if (!data_) return;
  cudaSetDevice(device_);
  cudaIpcCloseMemHandle(data_);
  cudaGetLastError();
}

Status device_copy(const std::vector<DeviceCopy>& copies, size_t bytes, const std::string& device_uuid) {
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
  for (size_t i = 0; i < copies.size();) {
    size_t n = 1;  // a run of blocks adjacent on both sides: one copy
    while (i + n < copies.size() && copies[i + n].src == copies[i].src + n * bytes &&
           copies[i + n].dst == copies[i].dst + n * bytes)
      ++n;
    if ((err = cudaMemcpyAsync(copies[i].dst, copies[i].src, n * bytes, cudaMemcpyDeviceToDevice, stream)) != cudaSuccess)
      return cuda_failed(StatusCode::transfer_peer, "cudaMemcpyAsync (device to device)", err);
    i += n;
  }
  if ((err = cudaStreamSynchronize(stream)) != cudaSuccess)
    return cuda_failed(StatusCode::transfer_peer, "the device-to-device copy", err);
  return Status::Ok();
}

}  // namespace transfer
}  // namespace llm
