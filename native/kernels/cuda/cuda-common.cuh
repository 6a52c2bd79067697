// cuda-common.cuh: device-side helpers shared by the .cu files (never included by callers).
//
// Owns: fp32 <-> element conversions, the DType -> element type dispatch, block reductions,
// and the launch check that turns a CUDA error into a Status.
// Stays true: conversions round to nearest even (the same as dtype.h on the CPU), so a value
// stored by a kernel equals the CPU's store_f32 of the same fp32 value.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "cuda-common.h"

namespace llm::cuda {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Calls f(T{}) with T the element type of `dtype` (float, __half, __nv_bfloat16).
template <typename F>
Status dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: return f(float{});
    case DType::f16: return f(__half{});
    case DType::bf16: return f(__nv_bfloat16{});
  }
  return Status(StatusCode::invalid_argument, "unknown dtype");
}

// The Status of the launch just made (configuration errors, a missing kernel image).
inline Status launch_status(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return Status::Ok();
  return Status(StatusCode::internal, std::string(kernel) + ": " + cudaGetErrorString(err));
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// The KV pool's strides for device code, taken from KVCacheView's own (host-only) methods so the
// layout is defined in one place (tensor-view.h).
struct PoolStrides {
  int64_t block = 0, layer = 0, kv = 0, token = 0;  // elements
  int64_t block_size = 0;
  PoolStrides() = default;
  explicit PoolStrides(const KVCacheView& v)
      : block(v.block_stride()), layer(v.layer_stride()), kv(v.kv_stride()), token(v.token_stride()),
        block_size(v.block_size) {}
  // Element offset of K (is_value = 0) or V (1) for (block, layer, offset in block): KVCacheView::offset.
  __device__ __forceinline__ int64_t offset(int64_t block_id, int64_t layer_id, int is_value, int64_t pos) const {
    return block_id * block + layer_id * layer + is_value * kv + pos * token;
  }
};

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();  // partial[] may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < warps ? partial[lane] : 0.0f;
  return warp_sum(v);
}

}  // namespace llm::cuda
