// shared-memory.h: a named POSIX shared-memory segment (shm_open + mmap).
//
// Owns: one mapping of one segment. The creator owns the name and unlinks it on destruction;
// an opener only maps it. Used for the KV pool of a worker that takes part in disaggregation,
// so that a prefill worker on the same host can copy blocks straight into it (native/transfer).
// Stays true: names are "/kvserve-<something>" (<= 200 chars, no other '/'); a segment is mapped
// in full, read-write, shared; open() checks the size it expects against the segment's.
// A process killed with -9 leaves its name behind in /dev/shm: remove_stale_segments() deletes
// "/kvserve-<pid>-*" names whose pid is no longer alive.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "status.h"

namespace llm {

class SharedMemory {
 public:
  // Creates a new segment of `bytes` (fails if the name exists), zero-filled, lazily committed.
  static Status create(const std::string& name, size_t bytes, std::unique_ptr<SharedMemory>* out);
  // Maps an existing segment; its size must be exactly `bytes`.
  static Status open(const std::string& name, size_t bytes, std::unique_ptr<SharedMemory>* out);
  // A fresh name for this process: "/kvserve-<pid>-<tag>-<counter>".
  static std::string unique_name(const std::string& tag);
  // Unlinks "/kvserve-<pid>-*" segments of processes that no longer exist; returns how many.
  static int remove_stale_segments();

  ~SharedMemory();
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& name() const { return name_; }

 private:
  SharedMemory() = default;
  std::string name_;
  void* data_ = nullptr;
  size_t size_ = 0;
  bool owner_ = false;
};

}  // namespace llm
