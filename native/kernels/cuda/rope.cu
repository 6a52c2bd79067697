// rope.cu: rope (see rope.h).
// Grid: (T); block: 128 threads striding over the token's (head, i) pairs, q heads first then
// k heads. Angles are fp32 products like the CPU's; cosf / sinf are the accurate versions
// (the build does not use --use_fast_math).
#include "cuda-common.cuh"
#include "rope.h"

namespace llm::cuda {

namespace {

template <typename T>
__global__ void rope_kernel(T* q, T* k, const int32_t* __restrict__ positions, int64_t num_heads,
                            int64_t num_kv_heads, int64_t head_dim, const float* __restrict__ inv_freq) {
  const int64_t t = blockIdx.x;
  const int64_t half = head_dim / 2;
  const float pos = static_cast<float>(positions[t]);
  for (int64_t item = threadIdx.x; item < (num_heads + num_kv_heads) * half; item += blockDim.x) {
    const int64_t head = item / half, i = item % half;
    T* x = head < num_heads ? q + (t * num_heads + head) * head_dim
                            : k + (t * num_kv_heads + head - num_heads) * head_dim;  // (head_dim)
    const float angle = pos * inv_freq[i];
    const float c = cosf(angle), s = sinf(angle);
    const float a = to_float(x[i]), b = to_float(x[i + half]);
    x[i] = from_float<T>(a * c - b * s);
    x[i + half] = from_float<T>(b * c + a * s);
  }
}

}  // namespace

Status rope(void* q, void* k, const int32_t* positions, int64_t T, int64_t num_heads, int64_t num_kv_heads,
            int64_t head_dim, const float* inv_freq, DType dtype, cudaStream_t stream) {
  if (head_dim % 2 != 0) return Status(StatusCode::invalid_argument, "rope: head_dim must be even");
  if (T == 0) return Status::Ok();
  return dispatch_dtype(dtype, [&](auto tag) {
    using E = decltype(tag);
    rope_kernel<E><<<T, 128, 0, stream>>>(static_cast<E*>(q), static_cast<E*>(k), positions, num_heads,
                                          num_kv_heads, head_dim, inv_freq);
    return launch_status("rope");
  });
}

}  // namespace llm::cuda
