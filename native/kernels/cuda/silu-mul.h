// silu-mul.h: the SwiGLU activation (CUDA). Same meaning as CpuKernels::silu_mul.
#pragma once

#include "cuda-common.h"

namespace llm::cuda {

// out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i], i in [0, n).
//   gate, up, out: [n] of `dtype`; out may alias gate or up.
Status silu_mul(const void* gate, const void* up, void* out, int64_t n, DType dtype, cudaStream_t stream);

}  // namespace llm::cuda
