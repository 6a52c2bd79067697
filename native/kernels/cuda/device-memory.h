// device-memory.h: the CUDA backend's memory: device and page-locked host buffers that only
// grow, the CUDA error -> Status mapping, and the upload of a model's weights to the device.
//
// Owns: DeviceMemory, PinnedMemory, upload_tensors. Host code (the CUDA runtime API); the
// runner and the engine use it, the kernels take the raw pointers.
// Stays true: a buffer is freed with its owner; reserve() never shrinks and keeps the old
// buffer when the new size fits (callers that hold pointers into it, such as captured graphs,
// must drop them when it grows).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>
#include <vector>

#include "common/status.h"
#include "kernels/tensor-view.h"

namespace llm::cuda {

// ERR_OUT_OF_MEMORY for an allocation failure, ERR_INTERNAL otherwise; "<what>: <runtime's reason>".
Status cuda_error(const std::string& what, cudaError_t err);

#define LLM_CUDA_RETURN_IF_ERROR(what, expr)                        \
  do {                                                              \
    const cudaError_t _err = (expr);                                \
    if (_err != cudaSuccess) return ::llm::cuda::cuda_error(what, _err); \
  } while (0)

// `bytes` of zeroed device memory on the current device, for an owner that frees it with
// cudaFree ("<what> (N bytes): <reason>" on failure, nothing left allocated).
Status alloc_zeroed(size_t bytes, const std::string& what, void** out);

// Device memory that only grows (reserve) and is freed with its owner.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  ~DeviceMemory() { release(); }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  Status reserve(size_t bytes, const char* what);
  void release();
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locked host memory (async copies need it); grows like DeviceMemory.
class PinnedMemory {
 public:
  PinnedMemory() = default;
  ~PinnedMemory() { release(); }
  PinnedMemory(const PinnedMemory&) = delete;
  PinnedMemory& operator=(const PinnedMemory&) = delete;

  Status reserve(size_t bytes, const char* what);
  void release();
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// The weights on the device: every distinct present tensor of `tensors` (host views; a tensor
// listed twice, such as a tied lm_head, is copied once) goes into one allocation in `memory`,
// in the order given and 256-byte aligned, so tensors listed one after another lie back to back
// (the runner fuses such neighbours into one GEMM); each view is then pointed at its copy.
Status upload_tensors(const std::vector<TensorView*>& tensors, DeviceMemory* memory);

}  // namespace llm::cuda
