// device-memory.cu: DeviceMemory, PinnedMemory and upload_tensors (see device-memory.h).
#include "device-memory.h"

#include <map>

namespace llm::cuda {

Status cuda_error(const std::string& what, cudaError_t err) {
  return Status(err == cudaErrorMemoryAllocation ? StatusCode::out_of_memory : StatusCode::internal,
                what + ": " + cudaGetErrorString(err));
}

Status alloc_zeroed(size_t bytes, const std::string& what, void** out) {
  *out = nullptr;
  void* p = nullptr;
  LLM_CUDA_RETURN_IF_ERROR("cudaMalloc " + what + " (" + std::to_string(bytes) + " bytes)", cudaMalloc(&p, bytes));
  if (const cudaError_t err = cudaMemset(p, 0, bytes); err != cudaSuccess) {
    cudaFree(p);
    return cuda_error("zeroing " + what, err);
  }
  *out = p;
  return Status::Ok();
}

Status DeviceMemory::reserve(size_t bytes, const char* what) {
  if (bytes <= bytes_) return Status::Ok();
  release();
  LLM_CUDA_RETURN_IF_ERROR(std::string("cudaMalloc ") + what + " (" + std::to_string(bytes) + " bytes)",
                           cudaMalloc(&ptr_, bytes));
  bytes_ = bytes;
  return Status::Ok();
}

void DeviceMemory::release() {
  if (ptr_) cudaFree(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
}

Status PinnedMemory::reserve(size_t bytes, const char* what) {
  if (bytes <= bytes_) return Status::Ok();
  release();
  LLM_CUDA_RETURN_IF_ERROR(std::string("cudaMallocHost ") + what, cudaMallocHost(&ptr_, bytes));
  bytes_ = bytes;
  return Status::Ok();
}

void PinnedMemory::release() {
  if (ptr_) cudaFreeHost(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
}

Status upload_tensors(const std::vector<TensorView*>& tensors, DeviceMemory* memory) {
  struct Slot {
    size_t offset, bytes;
  };
  std::map<const void*, Slot> slots;  // host data -> its place in memory
  size_t total = 0;
  for (const TensorView* t : tensors) {
    if (!t->present() || slots.count(t->data)) continue;
    const size_t bytes = static_cast<size_t>(t->rows * t->cols * dtype_size(t->dtype));
    slots[t->data] = Slot{total, bytes};
    total = (total + bytes + 255) / 256 * 256;
  }
  LLM_RETURN_IF_ERROR(memory->reserve(total, "weights"));
  char* base = memory->as<char>();
  for (const auto& [host, slot] : slots)
    LLM_CUDA_RETURN_IF_ERROR("copying the weights to the device",
                             cudaMemcpy(base + slot.offset, host, slot.bytes, cudaMemcpyHostToDevice));
  for (TensorView* t : tensors)
    if (t->present()) t->data = base + slots.at(t->data).offset;
  return Status::Ok();
}

}  // namespace llm::cuda
