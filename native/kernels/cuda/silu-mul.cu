// silu-mul.cu: silu_mul (see silu-mul.h).
// Grid: enough 256-thread blocks to cover n (at most 65535 x 256 threads), each thread striding.
#include <algorithm>

#include "cuda-common.cuh"
#include "silu-mul.h"

namespace llm::cuda {

namespace {

template <typename T>
__global__ void silu_mul_kernel(const T* gate, const T* up, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = to_float(gate[i]);
    out[i] = from_float<T>(g / (1.0f + expf(-g)) * to_float(up[i]));
  }
}

}  // namespace

Status silu_mul(const void* gate, const void* up, void* out, int64_t n, DType dtype, cudaStream_t stream) {
  if (n == 0) return Status::Ok();
  const int64_t blocks = std::min<int64_t>(ceil_div(n, 256), 65535);
  return dispatch_dtype(dtype, [&](auto tag) {
    using E = decltype(tag);
    silu_mul_kernel<E><<<blocks, 256, 0, stream>>>(static_cast<const E*>(gate), static_cast<const E*>(up),
                                                    static_cast<E*>(out), n);
    return launch_status("silu_mul");
  });
}

}  // namespace llm::cuda
