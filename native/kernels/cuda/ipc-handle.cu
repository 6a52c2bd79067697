// ipc-handle.cu: export_ipc_handle and device_uuid (see ipc-handle.h).
#include "ipc-handle.h"

#include <cstdio>
#include <string>

#include "cuda-common.cuh"

namespace llm::cuda {

namespace {

Status failed(const std::string& what, cudaError_t err) {
  cudaGetLastError();  // clear it: the next call must not see this one's error
  return Status(StatusCode::transfer_invalid, what + ": " + cudaGetErrorString(err));
}

Status failed_peer(const std::string& what, cudaError_t err) {
  cudaGetLastError();
  return Status(StatusCode::transfer_peer, what + ": " + cudaGetErrorString(err));
}

std::string uuid_text(const cudaUUID_t& u) {
  const auto* b = reinterpret_cast<const unsigned char*>(u.bytes);
  char s[64];
  std::snprintf(s, sizeof s, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  return s;
}

}  // namespace

std::string device_uuid(int device) {
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return std::string();
  }
  return uuid_text(prop.uuid);
}

Status open_ipc_handle(const std::string& handle_hex, int device, void** out) {
  *out = nullptr;
  cudaIpcMemHandle_t h;
  if (handle_hex.size() != 2 * sizeof h || handle_hex.find_first_not_of("0123456789abcdef") != std::string::npos)
    return Status(StatusCode::transfer_invalid, "a CUDA IPC handle has 128 lowercase hex digits");
  auto* b = reinterpret_cast<unsigned char*>(&h);
  for (size_t i = 0; i < sizeof h; ++i) b[i] = static_cast<unsigned char>(std::stoul(handle_hex.substr(2 * i, 2), nullptr, 16));
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return failed_peer("cudaSetDevice", err);
  if ((err = cudaIpcOpenMemHandle(out, h, cudaIpcMemLazyEnablePeerAccess)) != cudaSuccess) {
    *out = nullptr;
    return failed_peer("cudaIpcOpenMemHandle (a stale handle, or one exported by this same process)", err);
  }
  return Status::Ok();
}

void close_ipc_handle(void* p, int device) {
  if (!p) return;
  cudaSetDevice(device);
  cudaIpcCloseMemHandle(p);
  cudaGetLastError();
}

Status export_ipc_handle(const void* base, std::string* handle_hex, std::string* uuid) {
  cudaPointerAttributes attr;
  cudaError_t err = cudaPointerGetAttributes(&attr, base);
  if (err != cudaSuccess) return failed("the KV region is not device memory", err);
  if (attr.type != cudaMemoryTypeDevice) return Status(StatusCode::transfer_invalid, "the KV region is not device memory");
  cudaDeviceProp prop;
  if ((err = cudaGetDeviceProperties(&prop, attr.device)) != cudaSuccess) return failed("cudaGetDeviceProperties", err);
  if ((err = cudaSetDevice(attr.device)) != cudaSuccess) return failed("cudaSetDevice", err);
  cudaIpcMemHandle_t h;
  if ((err = cudaIpcGetMemHandle(&h, const_cast<void*>(base))) != cudaSuccess)
    return failed("cudaIpcGetMemHandle (the KV region)", err);
  static_assert(sizeof(cudaIpcMemHandle_t) == 64, "CUDA IPC handles are 64 bytes");
  const auto* b = reinterpret_cast<const unsigned char*>(&h);
  std::string hex(2 * sizeof h, '0');
  for (size_t i = 0; i < sizeof h; ++i) std::snprintf(&hex[2 * i], 3, "%02x", b[i]);
  *handle_hex = hex;
  *uuid = uuid_text(prop.uuid);
  return Status::Ok();
}

}  // namespace llm::cuda
