// ipc-handle.cu: export_ipc_handle and device_uuid (see ipc-handle.h).
#include "ipc-handle.h"

#include <cstdio>

#include "cuda-common.cuh"

namespace llm::cuda {

namespace {

Status failed(const std::string& what, cudaError_t err) {
  cudaGetLastError();  // clear it: the next call must not see this one's error
  return Status(StatusCode::transfer_invalid, what + ": " + cudaGetErrorString(err));
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
