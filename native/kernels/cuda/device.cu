// device.cu: probe_device (see cuda-common.h).
#include <cstdio>

#include "cuda-common.cuh"

namespace llm::cuda {

namespace {
__global__ void probe_kernel() {}
}  // namespace

std::string DeviceInfo::describe() const {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "%s (sm_%d%d, %d SMs, %.1f GiB)", name.c_str(), sm_major, sm_minor, num_sms,
                static_cast<double>(total_memory) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

Status probe_device(DeviceInfo* info, int device) {
  auto unavailable = [](const char* what, cudaError_t err) {
    return Status(StatusCode::device_unavailable, std::string(what) + ": " + cudaGetErrorString(err));
  };
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaErrorInsufficientDriver || err == cudaErrorNoDevice)  // also what a machine without a driver gets
    return Status(StatusCode::device_unavailable,
                  std::string("no NVIDIA GPU with a driver for CUDA 12+ found (") + cudaGetErrorString(err) + ")");
  if (err != cudaSuccess) return unavailable("cudaGetDeviceCount", err);
  if (count == 0) return Status(StatusCode::device_unavailable, "no CUDA device");
  if (device < 0 || device >= count)
    return Status(StatusCode::device_unavailable,
                  "CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) + " visible)");
  if ((err = cudaSetDevice(device)) != cudaSuccess) return unavailable("cudaSetDevice", err);
  cudaDeviceProp prop;
  if ((err = cudaGetDeviceProperties(&prop, device)) != cudaSuccess) return unavailable("cudaGetDeviceProperties", err);
  // A kernel of this build must have code the device runs (SASS for its arch, or PTX to JIT).
  cudaFuncAttributes attr;
  if ((err = cudaFuncGetAttributes(&attr, probe_kernel)) != cudaSuccess) return unavailable("kernel image", err);
  info->device = device;
  info->name = prop.name;
  info->sm_major = prop.major;
  info->sm_minor = prop.minor;
  info->num_sms = prop.multiProcessorCount;
  info->total_memory = prop.totalGlobalMem;
  return Status::Ok();
}

int device_count() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

}  // namespace llm::cuda
