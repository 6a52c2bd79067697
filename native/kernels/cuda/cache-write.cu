// cache-write.cu: cache_write (see cache-write.h).
// Grid: (T); block: 128 threads striding over one token's num_kv_heads * head_dim elements of K,
// then of V. A padding token's block returns at once.
#include "cache-write.h"
#include "cuda-common.cuh"

namespace llm::cuda {

namespace {

template <typename T>
__global__ void cache_write_kernel(const T* __restrict__ k, const T* __restrict__ v,
                                   const int64_t* __restrict__ slot_mapping, T* pool, PoolStrides strides,
                                   int64_t layer) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  if (slot < 0) return;  // padding
  const int64_t row = strides.token;  // num_kv_heads * head_dim
  const int64_t block_id = slot / strides.block_size, offset = slot % strides.block_size;
  T* k_dst = pool + strides.offset(block_id, layer, 0, offset);  // (row)
  T* v_dst = pool + strides.offset(block_id, layer, 1, offset);  // (row)
  for (int64_t e = threadIdx.x; e < row; e += blockDim.x) {
    k_dst[e] = k[t * row + e];
    v_dst[e] = v[t * row + e];
  }
}

}  // namespace

Status cache_write(const void* k, const void* v, const int64_t* slot_mapping, int64_t T, KVCacheView cache,
                   int64_t layer, cudaStream_t stream) {
  if (T == 0) return Status::Ok();
  return dispatch_dtype(cache.dtype, [&](auto tag) {
    using E = decltype(tag);
    cache_write_kernel<E><<<T, 128, 0, stream>>>(static_cast<const E*>(k), static_cast<const E*>(v), slot_mapping,
                                                  static_cast<E*>(cache.data), PoolStrides(cache), layer);
    return launch_status("cache_write");
  });
}

}  // namespace llm::cuda
