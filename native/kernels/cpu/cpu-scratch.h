// cpu-scratch.h: a per-thread (thread_local) buffer for the ISA kernel files, 64-byte aligned,
// that only grows. In an anonymous namespace like everything those files define: no function
// compiled with wide-vector flags may be shared with (and picked by the linker for) the
// baseline path, which rules out std::vector there.
#pragma once

#include <cstdint>
#include <cstdlib>

namespace llm::cpu {
namespace {

template <class T>
struct Scratch {
  T* data = nullptr;
  int64_t size = 0;
  ~Scratch() { std::free(data); }
  T* get(int64_t n) {
    if (n > size) {
      std::free(data);
      const int64_t bytes = (n * static_cast<int64_t>(sizeof(T)) + 63) / 64 * 64;
      data = static_cast<T*>(std::aligned_alloc(64, static_cast<size_t>(bytes)));
      size = n;
    }
    return data;
  }
};

}  // namespace
}  // namespace llm::cpu
