// argmax.h: greedy sampling on the GPU: the argmax of each row of logits.
// Same choice as the CPU sampler's greedy path (sampler.cc): NaN counts as -inf, and among exact
// ties the lowest token id wins (so a row of NaN or -inf gives 0).
#pragma once

#include "cuda-common.h"

namespace llm::cuda {

// token_ids[m] = argmax_v logits[m, v] for m in [0, M).
//   logits: [M, V] of `dtype`; token_ids: [M] int32
Status argmax(const void* logits, int64_t M, int64_t V, DType dtype, int32_t* token_ids, cudaStream_t stream);

}  // namespace llm::cuda
