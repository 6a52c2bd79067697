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

std::string to_hex(const void* bytes, size_t n) {
  static const char digits[] = "0123456789abcdef";
  const auto* b = static_cast<const unsigned char*>(bytes);
  std::string s(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    s[2 * i] = digits[b[i] >> 4];
    s[2 * i + 1] = digits[b[i] & 15];
  }
  return s;
}

bool from_hex(const std::string& hex, void* bytes, size_t n) {
  if (hex.size() != 2 * n || hex.find_first_not_of("0123456789abcdef") != std::string::npos) return false;
  auto* b = static_cast<unsigned char*>(bytes);
  auto digit = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<unsigned char>(digit(hex[2 * i]) << 4 | digit(hex[2 * i + 1]));
  return true;
}

Status open_ipc_handle(const std::string& handle_hex, int device, void** out) {
  *out = nullptr;
  cudaIpcMemHandle_t h;
  if (!from_hex(handle_hex, &h, sizeof h)) return Status(StatusCode::transfer_invalid, "a CUDA IPC handle has 128 lowercase hex digits");
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
  *handle_hex = to_hex(&h, sizeof h);
  *uuid = uuid_text(prop.uuid);
  return Status::Ok();
}

}  // namespace llm::cuda
