// cpu-avx512.cc: the AVX-512 kernel path: cpu-simd-kernels.h over 16-lane fp32 vectors.
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c (CMakeLists.txt);
// the dispatch calls into it only when cpu_isa().avx512 is set.
#include <immintrin.h>

#include "cpu-avx512-simd.h"
#include "cpu-paths.h"

namespace llm::cpu {

const CpuKernels& cpu_avx512_kernels() {
  static const CpuKernels table = SimdKernels<Avx512>::table("avx512");
  return table;
}

void matmul_avx512(ThreadPool& pool, const float* x, int64_t M, const TensorView& w, const TensorView* bias,
                   float* y) {
  SimdKernels<Avx512>::matmul(pool, x, M, w, bias, y);
}

}  // namespace llm::cpu
