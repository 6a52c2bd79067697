// bench-cpu-gemv.cc: the batch-1 decode GEMV over a whole Llama-3.2-1B-shaped model's matmul
// weights (16 layers x q, k, v, o, gate, up, down, and the 128256 x 2048 lm_head: 2.47 GB of
// bf16, far past the caches), on the amx path, with the weights row-major or in
// Layout::amx_tiles, each in 4 KiB pages or (huge) madvise'd for transparent huge pages.
// Prints the best-of-rounds time of one pass and the bandwidth it reached. Not a test.
// Build: the CMake target bench-cpu-gemv (x86 builds with LLM_BUILD_TESTS=ON).
// Run: bench-cpu-gemv [rounds=5] [threads=2] [layouts=row,tiles,row-huge,tiles-huge]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <sys/mman.h>

#include "bench-common.h"
#include "kernels/cpu/cpu-kernels.h"
#include "kernels/dtype.h"

using namespace llm;
using namespace llm::cpu;
using namespace llm_bench;

namespace {

constexpr int64_t kD = 2048, kKv = 512, kF = 8192, kVocab = 128256, kLayers = 16;

struct Shape {
  int64_t rows, cols;
};

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 5;
  ThreadPool pool(argc > 2 ? std::atoi(argv[2]) : 2);
  const std::string layouts = argc > 3 ? argv[3] : "row,tiles,row-huge,tiles-huge";
  const CpuKernels* k = cpu_kernels_for(CpuPath::amx);
  if (!k) {
    std::printf("the amx path does not run on this CPU\n");
    return 0;
  }
  std::vector<Shape> shapes;
  for (int64_t l = 0; l < kLayers; ++l)
    for (Shape s : {Shape{kD, kD}, {kKv, kD}, {kKv, kD}, {kD, kD}, {kF, kD}, {kF, kD}, {kD, kF}}) shapes.push_back(s);
  shapes.push_back({kVocab, kD});
  size_t total = 0;
  for (const Shape& s : shapes) total += static_cast<size_t>(s.rows * s.cols);
  const size_t bytes = (total * 2 + (size_t{2} << 20) - 1) / (size_t{2} << 20) * (size_t{2} << 20);
  std::vector<float> x(kF, 0.5f), y(kVocab);
  for (const std::string& name : split_list(layouts)) {
    const bool tiles = name.rfind("tiles", 0) == 0, huge = name.find("huge") != std::string::npos;
    auto* src = static_cast<uint16_t*>(std::aligned_alloc(size_t{2} << 20, bytes));
    if (huge) madvise(src, bytes, MADV_HUGEPAGE);
    for (size_t i = 0; i < total; ++i) src[i] = f32_to_bf16(static_cast<float>(i % 251) * 1e-3f);
    uint16_t* dst = nullptr;
    if (tiles) {
      dst = static_cast<uint16_t*>(std::aligned_alloc(size_t{2} << 20, bytes));
      if (huge) madvise(dst, bytes, MADV_HUGEPAGE);
    }
    std::vector<TensorView> views;
    size_t at = 0;
    for (const Shape& s : shapes) {
      TensorView v{src + at, DType::bf16, s.rows, s.cols};
      if (tiles) v = pack_amx_tiles(v, dst + at);
      views.push_back(v);
      at += static_cast<size_t>(s.rows * s.cols);
    }
    double best = 1e9;
    for (int r = 0; r < rounds; ++r) {
      const double t0 = now();
      for (const TensorView& v : views) k->matmul(pool, x.data(), 1, v, nullptr, y.data());
      best = std::min(best, now() - t0);
    }
    std::printf("%-11s %7.2f ms   %5.1f GB/s   %.2f tok/s\n", name.c_str(), best * 1e3, total * 2 / best / 1e9, 1 / best);
    std::free(src);
    std::free(dst);
  }
  return 0;
}
