// rmsnorm.cu: rmsnorm_residual (see rmsnorm.h).
// Grid: (M); block: one thread per 16-byte vector of the row (rounded up to a warp, at most
// 1024 threads; a row longer than 1024 vectors is strided). Each thread loads its vectors of x
// and delta at once, adds them (the sum rounded to the dtype and stored: the residual stream)
// and sums x^2; a block reduction gives 1 / rms; the thread then scales the same vectors, still
// in registers for rows up to kMaxVectors vectors per thread, and writes out.
// Decode rows are short (4,096 elements = 512 bf16 vectors): the whole row is in flight at once,
// so the kernel costs about one memory round trip per pass, not one per element a thread
// strides over (which made the previous version take 17 us for one 8B row).
// Rows whose length or address is not a multiple of 16 bytes take the scalar path.
#include <cstdint>

#include "cuda-common.cuh"
#include "rmsnorm.h"

namespace llm::cuda {

namespace {

constexpr int kMaxVectors = 4;  // vectors a thread keeps in registers between the passes

template <typename T>
struct alignas(16) Vec {
  static constexpr int kN = 16 / sizeof(T);
  T v[kN];
};

template <typename T>
__global__ void rmsnorm_residual_vec_kernel(T* x, const T* __restrict__ delta, const T* __restrict__ weight, float eps,
                                            int64_t D, T* out) {
  using V = Vec<T>;
  constexpr int N = V::kN;
  const int64_t row = blockIdx.x, nvec = D / N;
  V* xr = reinterpret_cast<V*>(x + row * D);                                            // (nvec)
  const V* dr = delta ? reinterpret_cast<const V*>(delta + row * D) : nullptr;          // (nvec)
  const V* wr = reinterpret_cast<const V*>(weight);                                     // (nvec)
  V* outr = reinterpret_cast<V*>(out + row * D);                                        // (nvec)
  V keep[kMaxVectors];
  float sum_sq = 0.0f;
  int i = 0;
  for (int64_t c = threadIdx.x; c < nvec; c += blockDim.x, ++i) {
    V a = xr[c];
    if (dr) {
      const V b = dr[c];
#pragma unroll
      for (int j = 0; j < N; ++j) a.v[j] = from_float<T>(to_float(a.v[j]) + to_float(b.v[j]));
      xr[c] = a;
    }
#pragma unroll
    for (int j = 0; j < N; ++j) sum_sq += to_float(a.v[j]) * to_float(a.v[j]);
    if (i < kMaxVectors) keep[i] = a;
  }
  // inv_rms = 1 / sqrt(mean(x^2) + eps)
  const float inv_rms = 1.0f / sqrtf(block_sum(sum_sq) / static_cast<float>(D) + eps);
  i = 0;
  for (int64_t c = threadIdx.x; c < nvec; c += blockDim.x, ++i) {
    const V a = i < kMaxVectors ? keep[i] : xr[c];  // past kMaxVectors: re-read what this thread stored
    const V w = wr[c];
    V o;
#pragma unroll
    for (int j = 0; j < N; ++j) o.v[j] = from_float<T>(to_float(a.v[j]) * inv_rms * to_float(w.v[j]));
    outr[c] = o;
  }
}

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
  const float inv_rms = 1.0f / sqrtf(block_sum(sum_sq) / static_cast<float>(D) + eps);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
    out[row * D + d] = from_float<T>(to_float(xr[d]) * inv_rms * to_float(weight[d]));
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

Status rmsnorm_residual(void* x, const void* delta, const void* weight, float eps, int64_t M, int64_t D,
                        void* out, DType dtype, cudaStream_t stream) {
  if (M == 0) return Status::Ok();
  const int64_t row_bytes = D * dtype_size(dtype);
  const bool vec = row_bytes % 16 == 0 && aligned16(x) && aligned16(weight) && aligned16(out) &&
                   (!delta || aligned16(delta));
  return dispatch_dtype(dtype, [&](auto tag) {
    using E = decltype(tag);
    if (vec) {
      const int64_t nvec = row_bytes / 16;
      const int threads = static_cast<int>(min64(1024, ceil_div(nvec, 32) * 32));
      rmsnorm_residual_vec_kernel<E><<<M, threads, 0, stream>>>(static_cast<E*>(x), static_cast<const E*>(delta),
                                                                 static_cast<const E*>(weight), eps, D,
                                                                 static_cast<E*>(out));
    } else {
      rmsnorm_residual_kernel<E><<<M, 256, 0, stream>>>(static_cast<E*>(x), static_cast<const E*>(delta),
                                                         static_cast<const E*>(weight), eps, D, static_cast<E*>(out));
    }
    return launch_status("rmsnorm_residual");
  });
}

}  // namespace llm::cuda
