// cache-write.cu: cache_write with optional rope (see cache-write.h).
// Grid: (ceil(pairs / 256), T); block: 256 threads, one (head, i) pair each: q pairs (with rope),
// then k pairs, then v pairs, where a pair is elements i and i + head_dim / 2 of one head.
// Angles are fp32 products like the CPU's; sincosf is the accurate version (the build does not
// use --use_fast_math).
#include "cache-write.h"
#include "cuda-common.cuh"

namespace llm::cuda {

namespace {

template <typename T>
__global__ void cache_write_kernel(T* q, T* k, const T* __restrict__ v, const int32_t* __restrict__ positions,
                                   const float* __restrict__ inv_freq, float scale, int64_t num_heads, int64_t num_kv_heads,
                                   int64_t head_dim, const int64_t* __restrict__ slot_mapping, T* pool,
                                   PoolStrides strides, int64_t layer) {
  const int64_t t = blockIdx.y;
  const int64_t half = head_dim / 2;
  // Without rope the q pairs are not in the grid.
  int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x + (inv_freq ? 0 : num_heads * half);
  const int64_t q_items = num_heads * half, k_items = num_kv_heads * half;
  if (item >= q_items + 2 * k_items) return;
  const bool is_q = item < q_items, is_k = !is_q && item < q_items + k_items;
  if (!is_q) item -= is_k ? q_items : q_items + k_items;
  const int64_t head = item / half, i = item % half;
  T* x = is_q ? q + (t * num_heads + head) * head_dim : k + (t * num_kv_heads + head) * head_dim;  // (head_dim)
  T a, b;
  if (is_q || is_k) {
    a = x[i];
    b = x[i + half];
    if (inv_freq) {
      float s, c;
      sincosf(static_cast<float>(positions[t]) * inv_freq[i], &s, &c);
      s *= scale;
      c *= scale;
      const float fa = to_float(a), fb = to_float(b);
      a = from_float<T>(fa * c - fb * s);
      b = from_float<T>(fb * c + fa * s);
      x[i] = a;
      x[i + half] = b;
    }
    if (is_q) return;
  } else {
    const T* vr = v + (t * num_kv_heads + head) * head_dim;  // (head_dim)
    a = vr[i];
    b = vr[i + half];
  }
  const int64_t slot = slot_mapping ? slot_mapping[t] : -1;
  if (slot < 0) return;  // padding, or rope only
  const int64_t block_id = slot / strides.block_size, offset = slot % strides.block_size;
  T* dst = pool + strides.offset(block_id, layer, is_k ? 0 : 1, offset) + head * head_dim;  // (head_dim)
  dst[i] = a;
  dst[i + half] = b;
}

}  // namespace

Status cache_write(void* k, const void* v, const int64_t* slot_mapping, int64_t T, KVCacheView cache, int64_t layer,
                   cudaStream_t stream, const RopeArgs* rope) {
  if (cache.head_dim % 2 != 0) return Status(StatusCode::invalid_argument, "cache_write: head_dim must be even");
  if (T == 0) return Status::Ok();
  if (T > 65535) return Status(StatusCode::invalid_argument, "cache_write: at most 65,535 tokens per call");
  const int64_t half = cache.head_dim / 2;
  const int64_t pairs = ((rope ? rope->num_heads : 0) + 2 * cache.num_kv_heads) * half;
  const dim3 grid(static_cast<unsigned>(ceil_div(pairs, 256)), static_cast<unsigned>(T));
  return dispatch_dtype(cache.dtype, [&](auto tag) {
    using E = decltype(tag);
    cache_write_kernel<E><<<grid, 256, 0, stream>>>(
        rope ? static_cast<E*>(rope->q) : nullptr, static_cast<E*>(k), static_cast<const E*>(v),
        rope ? rope->positions : nullptr, rope ? rope->inv_freq : nullptr, rope ? rope->scale : 1.0f,
        rope ? rope->num_heads : 0,
        cache.num_kv_heads, cache.head_dim, slot_mapping, static_cast<E*>(cache.data), PoolStrides(cache), layer);
    return launch_status("cache_write");
  });
}

}  // namespace llm::cuda
