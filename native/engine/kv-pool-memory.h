// kv-pool-memory.h: the memory one KV pool lives in. Every engine (every tensor-parallel rank)
// holds exactly one, whatever the backend: host memory mapped for this process, a shared-memory
// segment (the pool of a disaggregated worker, which another process's transfer agent writes
// into), or device memory (the CUDA backend).
//
// Owns: the allocation, freed with the object; the runners and the transfer agent only get views.
// Stays true: the memory is zeroed when created (the kernels never read a slot before it is
// written, but a pool exported to another process shows no stale bytes).
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "../common/shared-memory.h"
#include "../common/status.h"

namespace llm {

class KvPoolMemory {
 public:
  enum class Kind { host, shared, device };

  // ERR_OUT_OF_MEMORY when `bytes` cannot be had; device: ERR_DEVICE_UNAVAILABLE in a build
  // without CUDA. Kind::shared: the segment is `shm_name` (a SharedMemory name: a tensor-parallel
  // rank's pool, which rank 0's transfer agent opens by name), or a fresh name when empty.
  static Status create(Kind kind, size_t bytes, std::unique_ptr<KvPoolMemory>* out, const std::string& shm_name = "");
  ~KvPoolMemory();
  KvPoolMemory(const KvPoolMemory&) = delete;
  KvPoolMemory& operator=(const KvPoolMemory&) = delete;

  Kind kind() const { return kind_; }
  void* data() const { return data_; }  // a device pointer for Kind::device
  size_t bytes() const { return bytes_; }
  // The segment's name for Kind::shared (what another process opens), else empty.
  std::string shm_name() const { return shm_ ? shm_->name() : std::string(); }

 private:
  KvPoolMemory() = default;
  Kind kind_ = Kind::host;
  void* data_ = nullptr;
  size_t bytes_ = 0;
  std::unique_ptr<SharedMemory> shm_;
};

}  // namespace llm
