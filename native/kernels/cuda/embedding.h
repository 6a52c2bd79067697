// embedding.h: token embedding lookup (CUDA). Same meaning as CpuKernels::embedding, with the
// output in the table's dtype.
#pragma once

#include "cuda-common.h"

namespace llm::cuda {

// out[t, :] = table[ids[t], :] for t in [0, T).
//   table: [vocab, D] of table.dtype (device); ids: [T] int32; out: [T, D] of table.dtype
Status embedding(const TensorView& table, const int32_t* ids, int64_t T, void* out, cudaStream_t stream);

}  // namespace llm::cuda
