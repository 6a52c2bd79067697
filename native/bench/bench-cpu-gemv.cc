// bench-cpu-gemv.cc: the decode matmuls over a whole Llama-3.2-1B-shaped model's matmul
// weights (16 layers x q, k, v, o, gate, up, down, and the 128256 x 2048 lm_head: 2.47 GB of
// bf16, far past the caches) for a batch of `rows` tokens (1: the GEMV), on one kernel path,
// with the weights row-major or (tiles) in the path's packed layout (Layout::amx_tiles or
// bf16_pairs, on paths that have one), each in 4 KiB pages or (huge) madvise'd for transparent
// huge pages.
// Prints the best-of-rounds time of one pass (one decode step's matmuls), the weight bandwidth
// it reached, and tokens/s (rows / time); then that bandwidth as a fraction of the read-bandwidth
// probe's (bandwidth-probe.h) and the GFLOP/s as a fraction of the path's compute peak
// (compute-peak.h). Not a test.
// Build: the CMake target bench-cpu-gemv (x86 builds with LLM_BUILD_TESTS=ON).
// Run: bench-cpu-gemv [rounds=5] [threads=2] [layouts=row,tiles,row-huge,tiles-huge] [path=amx]
//      [rows=1] (rows: a list, e.g. 1,8,32; path: amx, avx512, avx512-bf16, avx2)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <sys/mman.h>

#include "bench-common.h"
#include "kernels/cpu/bandwidth-probe.h"
#include "kernels/cpu/compute-peak.h"
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
  const std::string path_name = argc > 4 ? argv[4] : "amx";
  const std::string rows_list = argc > 5 ? argv[5] : "1";
  const CpuPath path = path_name == "avx512"        ? CpuPath::avx512
                       : path_name == "avx512-bf16" ? CpuPath::avx512_bf16
                       : path_name == "avx2"        ? CpuPath::avx2
                                                    : CpuPath::amx;
  const CpuKernels* k = cpu_kernels_for(path);
  if (!k) {
    std::printf("the %s path does not run on this CPU\n", path_name.c_str());
    return 0;
  }
  double gbs = 0.0, peak = 0.0;
  read_bandwidth_gbs(int64_t{1} << 30, pool.size(), &gbs);
  compute_peak_gflops(path, pool.size(), &peak);
  std::printf("read bandwidth %.1f GB/s; %s peak %.1f GFLOP/s; %d threads\n", gbs, k->name, peak, pool.size());
  int64_t max_rows = 1;
  for (const std::string& r : split_list(rows_list)) max_rows = std::max<int64_t>(max_rows, std::atoll(r.c_str()));
  std::vector<Shape> shapes;
  for (int64_t l = 0; l < kLayers; ++l)
    for (Shape s : {Shape{kD, kD}, {kKv, kD}, {kKv, kD}, {kD, kD}, {kF, kD}, {kF, kD}, {kD, kF}}) shapes.push_back(s);
  shapes.push_back({kVocab, kD});
  size_t total = 0;
  for (const Shape& s : shapes) total += static_cast<size_t>(s.rows * s.cols);
  const size_t bytes = (total * 2 + (size_t{2} << 20) - 1) / (size_t{2} << 20) * (size_t{2} << 20);
  std::vector<float> x(static_cast<size_t>(max_rows * kF)), y(static_cast<size_t>(max_rows * kVocab));
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 17) * 0.0625f - 0.5f;
  for (const std::string& name : split_list(layouts)) {
    const bool tiles = name.rfind("tiles", 0) == 0, huge = name.find("huge") != std::string::npos;
    if (tiles && !k->pack) continue;
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
      if (tiles) v = k->pack(v, dst + at);
      views.push_back(v);
      at += static_cast<size_t>(s.rows * s.cols);
    }
    for (const std::string& r : split_list(rows_list)) {
      const int64_t M = std::atoll(r.c_str());
      double best = 1e9;
      for (int round = 0; round < rounds; ++round) {
        const double t0 = now();
        for (const TensorView& v : views) k->matmul(pool, x.data(), M, v, nullptr, y.data());
        best = std::min(best, now() - t0);
      }
      const double bw = total * 2 / best / 1e9, gf = 2.0 * total * M / best / 1e9;
      std::printf("%s %-11s rows %3ld  %8.2f ms   %5.1f GB/s (%3.0f%% of read)   %7.2f tok/s   %6.1f GFLOP/s (%3.0f%% of peak)\n",
                  k->name, name.c_str(), static_cast<long>(M), best * 1e3, bw, gbs > 0 ? 100 * bw / gbs : 0.0, M / best,
                  gf, peak > 0 ? 100 * gf / peak : 0.0);
    }
    std::free(src);
    std::free(dst);
  }
  return 0;
}
