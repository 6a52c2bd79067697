// embedding.cu: embedding (see embedding.h).
// Grid: (T); block: 256 threads striding over the D elements of one row.
#include "cuda-common.cuh"
#include "embedding.h"

namespace llm::cuda {

namespace {

template <typename T>
__global__ void embedding_kernel(const T* __restrict__ table, const int32_t* __restrict__ ids, int64_t D, T* out) {
  const int64_t t = blockIdx.x;
  const T* row = table + static_cast<int64_t>(ids[t]) * D;  // (D)
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) out[t * D + d] = row[d];
}

}  // namespace

Status embedding(const TensorView& table, const int32_t* ids, int64_t T, void* out, cudaStream_t stream) {
  if (T == 0) return Status::Ok();
  return dispatch_dtype(table.dtype, [&](auto tag) {
    using E = decltype(tag);
    embedding_kernel<E><<<T, 256, 0, stream>>>(static_cast<const E*>(table.data), ids, table.cols,
                                                static_cast<E*>(out));
    return launch_status("embedding");
  });
}

}  // namespace llm::cuda
