// rmsnorm.h: RMSNorm fused with the residual add (CUDA).
#pragma once

#include "cuda-common.h"

namespace llm::cuda {

// For each row m in [0, M):
//   x[m] = x[m] + delta[m]            (skipped when delta is null; the sum is rounded to dtype
//                                      and stored: x is the residual stream)
//   out[m] = x[m] / rms(x[m]) * weight    (CpuKernels::rmsnorm of the updated x)
//   x, out, delta: [M, D]; weight: [D]; all of `dtype`.
// out may alias x only when delta is null (the final norm); otherwise the residual is lost.
Status rmsnorm_residual(void* x, const void* delta, const void* weight, float eps, int64_t M, int64_t D,
                        void* out, DType dtype, cudaStream_t stream);

}  // namespace llm::cuda
