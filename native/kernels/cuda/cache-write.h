// cache-write.h: writes this step's K and V into the paged KV pool (CUDA), applying the rotary
// embedding to q and k on the way when asked (one launch per layer for both).
// Same meaning as CpuKernels::rope followed by CpuKernels::cache_write, with q, k and v already
// in the pool's dtype. Rope is Hugging Face's "rotate_half" layout; its scaling (default, linear,
// llama3, dynamic, yarn) lives in inv_freq, computed once on the host by rope_inv_freq
// (engine/model-runner.h) and copied to the device, so CPU and GPU rotate by the same
// frequencies, and in `scale` (yarn's attention factor).
#pragma once

#include "cuda-common.h"

namespace llm::cuda {

// The rotary embedding cache_write applies first: for each token t, head, and i < head_dim / 2,
// with angle = float(positions[t]) * inv_freq[i], cos = scale * cos(angle), sin = scale * sin(angle):
//   (x[i], x[i + half]) <- (x[i] cos - x[i + half] sin, x[i + half] cos + x[i] sin)
// for x = q[t, head] and x = k[t, kv head].
struct RopeArgs {
  void* q = nullptr;                  // [T, num_heads, head_dim], rotated in place
  const int32_t* positions = nullptr; // [T] int32
  const float* inv_freq = nullptr;    // [head_dim / 2] fp32
  float scale = 1.0f;                 // multiplies cos and sin (yarn's attention factor)
  int64_t num_heads = 0;
};

// With rope: q and k rotated in place (RopeArgs). Then, for t in [0, T) with
// slot_mapping[t] >= 0 (negative = padding, skipped; null = write nothing):
//   pool[slot / block_size][layer][K | V][slot % block_size] = k[t], v[t]
//   k, v:          [T, num_kv_heads, head_dim], cache.dtype (head_dim even)
//   slot_mapping:  [T] int64
//   cache.data:    [num_blocks][num_layers][2][block_size][num_kv_heads][head_dim]
// Grid: one thread per rotated pair of q, of k and per pair of v elements, so a decode step's
// few tokens still spread over the GPU.
Status cache_write(void* k, const void* v, const int64_t* slot_mapping, int64_t T, KVCacheView cache, int64_t layer,
                   cudaStream_t stream, const RopeArgs* rope = nullptr);

}  // namespace llm::cuda
