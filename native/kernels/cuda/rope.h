// rope.h: rotary embedding in place (CUDA), Hugging Face "rotate_half" layout.
// Same meaning as CpuKernels::rope. The scaling (none, linear, llama3) lives entirely in
// inv_freq, computed once on the host by rope_inv_freq (engine/model-runner.h) and copied to
// the device, so CPU and GPU rotate by the same frequencies.
#pragma once

#include "cuda-common.h"

namespace llm::cuda {

// For each token t, head, and i < head_dim / 2, with angle = float(positions[t]) * inv_freq[i]:
//   (x[i], x[i + half]) <- (x[i] cos - x[i + half] sin, x[i + half] cos + x[i] sin)
//   q: [T, num_heads, head_dim]; k: [T, num_kv_heads, head_dim]; both of `dtype`
//   positions: [T] int32; inv_freq: [head_dim / 2] fp32
Status rope(void* q, void* k, const int32_t* positions, int64_t T, int64_t num_heads, int64_t num_kv_heads,
            int64_t head_dim, const float* inv_freq, DType dtype, cudaStream_t stream);

}  // namespace llm::cuda
