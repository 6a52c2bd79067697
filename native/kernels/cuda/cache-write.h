// cache-write.h: writes this step's K and V into the paged KV pool (CUDA).
// Same meaning as CpuKernels::cache_write, with k and v already in the pool's dtype.
#pragma once

#include "cuda-common.h"

namespace llm::cuda {

// For t in [0, T) with slot_mapping[t] >= 0 (negative = padding, skipped):
//   pool[slot / block_size][layer][K | V][slot % block_size] = k[t], v[t]
//   k, v:          [T, num_kv_heads, head_dim], cache.dtype
//   slot_mapping:  [T] int64
//   cache.data:    [num_blocks][num_layers][2][block_size][num_kv_heads][head_dim]
Status cache_write(const void* k, const void* v, const int64_t* slot_mapping, int64_t T, KVCacheView cache,
                   int64_t layer, cudaStream_t stream);

}  // namespace llm::cuda
