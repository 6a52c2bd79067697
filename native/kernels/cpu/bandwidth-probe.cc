// bandwidth-probe.cc: see bandwidth-probe.h. Each worker sums its share as 64-bit words with
// eight independent accumulators (no dependency chain limits the loads); the sums are kept so
// the reads cannot be optimised away. Pages are mapped with MAP_POPULATE-like first touch
// (memset) before timing, and the buffer is unmapped afterwards.
#include "bandwidth-probe.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <string>

#include "thread-pool.h"

namespace llm::cpu {

Status read_bandwidth_gbs(int64_t bytes, int threads, double* gbs) {
  constexpr int64_t kMinBytes = int64_t{64} << 20;
  constexpr int kPasses = 4;
  if (bytes < kMinBytes) return Status(StatusCode::invalid_argument, "bandwidth probe: bytes must be >= 64 MiB");
  if (threads < 0) return Status(StatusCode::invalid_argument, "bandwidth probe: threads must be >= 0");
  const int64_t words = bytes / 8;
  void* mem = mmap(nullptr, static_cast<size_t>(words * 8), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED)
    return Status(StatusCode::out_of_memory, "bandwidth probe: cannot map " + std::to_string(bytes) + " bytes");
  auto* data = static_cast<uint64_t*>(mem);
  ThreadPool pool(threads);
  pool.parallel_for(words, [&](int64_t begin, int64_t end) {
    std::memset(data + begin, 1, static_cast<size_t>((end - begin) * 8));
  });
  std::atomic<uint64_t> checksum{0};
  double best = 0.0;
  for (int pass = 0; pass < kPasses; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(words / 8, [&](int64_t begin, int64_t end) {
      uint64_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t i = begin * 8; i < end * 8; i += 8)
        for (int j = 0; j < 8; ++j) acc[j] += data[i + j];
      uint64_t sum = 0;
      for (uint64_t a : acc) sum += a;
      checksum += sum;
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, static_cast<double>(words / 8 * 64) / seconds / 1e9);
  }
  munmap(mem, static_cast<size_t>(words * 8));
  *gbs = checksum.load() == 0 ? 0.0 : best;  // the sums are non-zero: the reads happened
  return Status::Ok();
}

}  // namespace llm::cpu
