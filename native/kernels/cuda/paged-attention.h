// paged-attention.h: attention over the paged KV pool (CUDA), decode and prefill in one call.
// Same meaning as CpuKernels::paged_attention: causal attention of each sequence's new tokens
// over its whole context (cached prefix + this step's tokens, already written by cache_write),
// GQA (query head h reads kv head h / (num_heads / num_kv_heads)), optional sliding window.
//
// One tiled kernel (paged-attention.cu) serves both shapes of a mixed batch:
//   decode  (sequences with one new token): the group's query heads share each K/V tile, and
//           the context is split into partitions run by separate blocks (flash-decoding) when
//           the batch alone would not fill the GPU; a second kernel combines the partitions.
//   prefill (sequences with more new tokens): tiles of query tokens x the group's heads, an
//           online softmax over K/V tiles read through the block table (flash-attention style,
//           no score matrix beyond one tile).
// head_dim 64 and 128 have code; other values return ERR_INVALID_ARGUMENT.
#pragma once

#include "cuda-common.h"

namespace llm::cuda {

// llm::AttentionBatch (tensor-view.h) with device pointers, plus the host-side sizes a launch
// needs (upper bounds are fine; they size the grid and the workspace).
struct AttentionBatch : llm::AttentionBatch {
  int64_t num_tokens = 0;     // T = query_start_loc[num_seqs]
  int64_t max_query_len = 0;  // max over sequences of their new tokens
  int64_t max_seq_len = 0;    // max over sequences of seq_lens
};

// Process-wide choice of kernels, for tests and benchmarks (all compute the same values):
//   fast             decode by decode_kernel (registers, no staging) when a kv head serves at most
//                    8 query heads, prefill by the tiled kernel with cp.async double buffering
//   pipelined_tiles  decode and prefill by the tiled kernel, double-buffered
//   plain_tiles      the tiled kernel loading a tile, then computing it
enum class AttentionVariant : int { fast = 0, pipelined_tiles = 1, plain_tiles = 2 };
void set_attention_variant(AttentionVariant v);
AttentionVariant attention_variant();
const char* attention_variant_name(AttentionVariant v);
// The fast decode kernel splits long contexts until the grid has about this many blocks per SM
// (default 2; a benchmark knob: changing it changes the workspace size).
void set_decode_blocks_per_sm(int64_t blocks);

// Scratch bytes paged_attention needs for this batch (the split-decode partials; 0 when the
// decode part runs unsplit). Depends on the batch sizes and the device's SM count.
size_t paged_attention_workspace_bytes(const AttentionBatch& batch, const KVCacheView& cache);

// out = attention(q, pool) for every new token of the batch.
//   q, out:     [T, num_heads, head_dim], cache.dtype
//   cache.data: [num_blocks][num_layers][2][block_size][num_kv_heads][head_dim]
//   workspace:  at least paged_attention_workspace_bytes(batch, cache) bytes (may be null if 0)
Status paged_attention(const void* q, KVCacheView cache, int64_t layer, const AttentionBatch& batch, void* out,
                       void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace llm::cuda
