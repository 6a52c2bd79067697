// argmax.cu: argmax (see argmax.h).
// Grid: (M); block: 1024 threads. Each thread keeps the best (key, index) of its strided share
// of the row (8 loads in flight), then a warp shuffle and one pass over the 32 warp winners reduce them, keeping the
// lowest index on equal keys.
#include <cfloat>

#include "argmax.h"
#include "cuda-common.cuh"

namespace llm::cuda {

namespace {

struct Best {
  float key;
  int32_t index;
};

__device__ __forceinline__ Best better(Best a, Best b) {
  return (b.key > a.key || (b.key == a.key && b.index < a.index)) ? b : a;
}

__device__ __forceinline__ Best warp_best(Best v) {
  for (int o = 16; o > 0; o >>= 1) {
    const Best other{__shfl_xor_sync(0xffffffffu, v.key, o), __shfl_xor_sync(0xffffffffu, v.index, o)};
    v = better(v, other);
  }
  return v;
}

template <typename T>
__global__ void argmax_kernel(const T* __restrict__ logits, int64_t V, int32_t* token_ids) {
  __shared__ Best warp_winner[32];
  const T* row = logits + blockIdx.x * V;  // (V)
  Best best{-INFINITY, INT32_MAX};
  // kInFlight loads issued before any is compared: one row is read in a few memory round trips
  // rather than one per element a thread strides over (50 us for a 128k vocabulary before).
  constexpr int kInFlight = 8;
  const int64_t stride = blockDim.x;
  int64_t v = threadIdx.x;
  for (; v + (kInFlight - 1) * stride < V; v += kInFlight * stride) {
    float x[kInFlight];
#pragma unroll
    for (int j = 0; j < kInFlight; ++j) x[j] = to_float(row[v + j * stride]);
#pragma unroll
    for (int j = 0; j < kInFlight; ++j)
      best = better(best, Best{isnan(x[j]) ? -INFINITY : x[j], static_cast<int32_t>(v + j * stride)});
  }
  for (; v < V; v += stride) {
    const float x = to_float(row[v]);
    best = better(best, Best{isnan(x) ? -INFINITY : x, static_cast<int32_t>(v)});
  }
  best = warp_best(best);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_winner[warp] = best;
  __syncthreads();
  if (warp == 0) {
    best = lane < static_cast<int>(blockDim.x / 32) ? warp_winner[lane] : Best{-INFINITY, INT32_MAX};
    best = warp_best(best);
    if (lane == 0) token_ids[blockIdx.x] = best.index;
  }
}

}  // namespace

Status argmax(const void* logits, int64_t M, int64_t V, DType dtype, int32_t* token_ids, cudaStream_t stream) {
  if (V <= 0 || V > INT32_MAX) return Status(StatusCode::invalid_argument, "argmax: vocab size out of range");
  if (M == 0) return Status::Ok();
  return dispatch_dtype(dtype, [&](auto tag) {
    using E = decltype(tag);
    argmax_kernel<E><<<M, 1024, 0, stream>>>(static_cast<const E*>(logits), V, token_ids);
    return launch_status("argmax");
  });
}

}  // namespace llm::cuda
