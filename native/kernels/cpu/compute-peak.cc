// compute-peak.cc: see compute-peak.h. Each loop is one instruction on 24 (AVX2: 12, AMX: 4 C
// tiles) independent accumulators, enough to cover its latency at full throughput; the operands
// are non-zero values (AMX runs faster on zeros) and the results are summed after the loop so
// that the work cannot be optimised away. The loops carry their ISA as function target
// attributes, so this file needs no per-file flags; they run only when cpu_kernels_for(path)
// says the CPU has the path (for AMX: the XTILEDATA permission too, cpu-isa.cc).
#include "compute-peak.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "thread-pool.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// GCC 12 warns inside its own AVX-512 intrinsic headers (as the ISA files' -Wno- flags say).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#define LLM_PEAK_X86 1
#endif

namespace llm::cpu {

namespace {

#if defined(LLM_PEAK_X86)

constexpr int64_t kIters = 1 << 20;  // per pass and thread: about 5-50 ms

// Each returns a sum of its accumulators, and sets *flops to the flops it ran. The inner loops are
// unrolled by pragma so that the accumulators live in registers.

__attribute__((target("avx2,fma"))) float loop_avx2(int64_t iters, double* flops) {
  __m256 acc[12];
  const __m256 a = _mm256_set1_ps(1.0000001f), b = _mm256_set1_ps(0.9999999f);
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i));
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, acc[i]);
  *flops = static_cast<double>(iters) * 12 * 8 * 2;
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  return out[0];
}

__attribute__((target("avx512f,fma"))) float loop_avx512(int64_t iters, double* flops) {
  __m512 acc[24];
  const __m512 a = _mm512_set1_ps(1.0000001f), b = _mm512_set1_ps(0.9999999f);
  for (int i = 0; i < 24; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < 24; ++i) s = _mm512_add_ps(s, acc[i]);
  *flops = static_cast<double>(iters) * 24 * 16 * 2;
  return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) float loop_avx512_bf16(int64_t iters, double* flops) {
  __m512 acc[24];
  // bf16 pairs of 1.0 and 0.5 (0x3f80, 0x3f00): non-zero, exact.
  const __m512bh a = reinterpret_cast<__m512bh>(_mm512_set1_epi32(0x3f803f80));
  const __m512bh b = reinterpret_cast<__m512bh>(_mm512_set1_epi32(0x3f003f00));
  for (int i = 0; i < 24; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < 24; ++i) s = _mm512_add_ps(s, acc[i]);
  *flops = static_cast<double>(iters) * 24 * 16 * 2 * 2;
  return _mm512_reduce_add_ps(s);
}

struct alignas(64) PeakTileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: C (16 x 16 fp32), 4-5: A (16 x 32 bf16), 6-7: B (16 pairs x 16 x 2 bf16), all 16
// rows of 64 bytes; each step is 4 tdpbf16ps on 4 independent C tiles.
__attribute__((target("amx-tile,amx-bf16"))) float loop_amx(int64_t iters, double* flops) {
  PeakTileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  asm volatile("" : : "m"(cfg) : "memory");  // ldtilecfg reads cfg: keep its stores
  _tile_loadconfig(&cfg);
  alignas(64) uint16_t ab[512];
  for (int i = 0; i < 512; ++i) ab[i] = static_cast<uint16_t>(i % 2 ? 0x3f80 : 0x3f00);
  alignas(64) float c[256];
  _tile_loadd(4, ab, 64);
  _tile_loadd(5, ab, 64);
  _tile_loadd(6, ab, 64);
  _tile_loadd(7, ab, 64);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t it = 0; it < iters / 4; ++it) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  float sum = 0.0f;
  for (int t = 0; t < 4; ++t) {
    switch (t) {
      case 0: _tile_stored(0, c, 64); break;
      case 1: _tile_stored(1, c, 64); break;
      case 2: _tile_stored(2, c, 64); break;
      default: _tile_stored(3, c, 64); break;
    }
    sum += c[0];
  }
  _tile_release();
  *flops = static_cast<double>(iters / 4) * 4 * 16 * 16 * 32 * 2;
  return sum;
}

#endif  // LLM_PEAK_X86

}  // namespace

Status compute_peak_gflops(CpuPath path, int threads, double* gflops) {
  if (threads < 0) return Status(StatusCode::invalid_argument, "compute peak: threads must be >= 0");
  if (path == CpuPath::reference)
    return Status(StatusCode::invalid_argument, "compute peak: the reference path has no vector instruction to measure");
  if (!cpu_kernels_for(path))
    return Status(StatusCode::invalid_argument, "compute peak: this CPU (or build) cannot run that kernel path");
#if defined(LLM_PEAK_X86)
  float (*loop)(int64_t, double*) = nullptr;
  switch (path) {
    case CpuPath::avx2: loop = loop_avx2; break;
    case CpuPath::avx512: loop = loop_avx512; break;
    case CpuPath::avx512_bf16: loop = loop_avx512_bf16; break;
    case CpuPath::amx:
    case CpuPath::amx_bf16:
    case CpuPath::amx_exact: loop = loop_amx; break;
    case CpuPath::reference: break;
  }
  ThreadPool pool(threads);
  const int n = pool.size();
  std::vector<double> flops(static_cast<size_t>(n)), sums(static_cast<size_t>(n));
  double best = 0.0, sink = 0.0;
  for (int pass = 0; pass < 4; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(n, [&](int64_t begin, int64_t end) {  // one worker per index
      for (int64_t i = begin; i < end; ++i) sums[static_cast<size_t>(i)] = loop(kIters, &flops[static_cast<size_t>(i)]);
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double total = 0.0;
    for (int i = 0; i < n; ++i) total += flops[static_cast<size_t>(i)], sink += sums[static_cast<size_t>(i)];
    best = std::max(best, total / seconds / 1e9);
  }
  *gflops = sink == 0.0 ? 0.0 : best;  // the sums are non-zero: the loops ran
  return Status::Ok();
#else
  *gflops = 0.0;
  return Status(StatusCode::invalid_argument, "compute peak: built without the x86 kernel paths");
#endif
}

}  // namespace llm::cpu
