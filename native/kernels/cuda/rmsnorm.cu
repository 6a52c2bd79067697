// rmsnorm.cu: rmsnorm_residual (see rmsnorm.h).
// Grid: (M); block: 256 threads striding over the row. Pass 1 adds the residual, stores x and
// sums x^2; a block reduction gives 1 / rms; pass 2 re-reads x (an L1/L2 hit) and writes out.
// Each thread reads back only the elements it stored itself, so no barrier is needed between.
#include "cuda-common.cuh"
#include "rmsnorm.h"

namespace llm::cuda {

namespace {

template <typename T>
__global__ void rmsnorm_residual_kernel(T* x, const T* __restrict__ delta, const T* __restrict__ weight, float eps,
                                        int64_t D, T* out) {
  const int64_t row = blockIdx.x;
  T* xr = x + row * D;  // (D)
  float sum_sq = 0.0f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float v = to_float(xr[d]);
    if (delta) {
      const T sum = from_float<T>(v + to_float(delta[row * D + d]));
      xr[d] = sum;
      v = to_float(sum);
    }
    sum_sq += v * v;
  }
  // inv_rms = 1 / sqrt(mean(x^2) + eps)
  const float inv_rms = 1.0f / sqrtf(block_sum(sum_sq) / static_cast<float>(D) + eps);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
    out[row * D + d] = from_float<T>(to_float(xr[d]) * inv_rms * to_float(weight[d]));
}

}  // namespace

Status rmsnorm_residual(void* x, const void* delta, const void* weight, float eps, int64_t M, int64_t D,
                        void* out, DType dtype, cudaStream_t stream) {
  if (M == 0) return Status::Ok();
  return dispatch_dtype(dtype, [&](auto tag) {
    using E = decltype(tag);
    rmsnorm_residual_kernel<E><<<M, 256, 0, stream>>>(static_cast<E*>(x), static_cast<const E*>(delta),
                                                       static_cast<const E*>(weight), eps, D, static_cast<E*>(out));
    return launch_status("rmsnorm_residual");
  });
}

}  // namespace llm::cuda
