// tensor-view.h: non-owning views the kernels compute on. Kernels know nothing of the engine;
// the engine builds these views over its weights, activations and KV pool.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace llm {

// How a matrix's elements are ordered in memory. The layouts other than row_major are the
// order one kernel path's matmul reads its weights in, so that it reads them where they lie
// instead of reordering them on every call; only the kernel table whose packed_layout it is
// reads it, and the CPU runner converts its weights into it at load (CpuKernels::pack).
//   row_major   element (r, c) at r * cols + c.
//   amx_tiles   the amx paths (cpu-amx.cc): the AMX matmul's A tiles. 16-row blocks one after
//               the other; in each, cols / 32 tiles of 16 rows x 32 columns (1 KiB in bf16),
//               row by row. Element (r, c) at
//               ((r / 16) * (cols / 32) + c / 32) * 512 + (r % 16) * 32 + c % 32.
//               Only bf16, rows % 16 == 0 and cols % 32 == 0.
//   bf16_pairs  the avx512-bf16 path (cpu-avx512-bf16.cc): vdpbf16ps's operand, 16 rows (the
//               outputs) in the lanes and two columns in each lane. 16-row blocks one after the
//               other; in each, cols / 2 pairs of columns, each pair's 16 rows x 2 columns (64
//               bytes) row by row. Element (r, c) at
//               (r / 16) * 16 * cols + (c / 2) * 32 + (r % 16) * 2 + c % 2.
//               Only bf16, rows % 16 == 0 and cols % 2 == 0.
enum class Layout : uint8_t { row_major, amx_tiles, bf16_pairs };

// A read-only matrix (rows, cols) or vector (rows = 1); row-major (cols contiguous) unless
// layout says otherwise.
struct TensorView {
  const void* data = nullptr;
  DType dtype = DType::f32;
  int64_t rows = 0;
  int64_t cols = 0;
  Layout layout = Layout::row_major;
  bool present() const { return data != nullptr; }
};

// The paged KV pool, block-major so one block is one contiguous byte range:
//   data: [num_blocks][num_layers][2 (K, V)][block_size][num_kv_heads][head_dim]
// A slot is block_id * block_size + offset; a negative slot means padding (not written).
struct KVCacheView {
  void* data = nullptr;
  DType dtype = DType::f32;
  int64_t num_blocks = 0;
  int64_t num_layers = 0;
  int64_t block_size = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;

  int64_t token_stride() const { return num_kv_heads * head_dim; }          // elements
  int64_t kv_stride() const { return block_size * token_stride(); }          // K -> V
  int64_t layer_stride() const { return 2 * kv_stride(); }
  int64_t block_stride() const { return num_layers * layer_stride(); }       // elements
  int64_t block_bytes() const { return block_stride() * dtype_size(dtype); }
  // Element offset of K (is_value = 0) or V (1) for (block, layer, offset in block).
  int64_t offset(int64_t block_id, int64_t layer, int is_value, int64_t pos) const {
    return block_id * block_stride() + layer * layer_stride() + is_value * kv_stride() +
           pos * token_stride();
  }
};

// Per-sequence description of a flattened batch for attention (CPU and CUDA kernels; for
// CUDA the pointers are device pointers).
struct AttentionBatch {
  int64_t num_seqs = 0;
  const int32_t* query_start_loc = nullptr;  // [num_seqs + 1] token offsets into q/out
  const int32_t* seq_lens = nullptr;         // [num_seqs] context length incl. this step's tokens
  const int32_t* block_tables = nullptr;     // [num_seqs, max_blocks_per_seq]
  int64_t max_blocks_per_seq = 0;
  int64_t num_heads = 0;
  float scale = 1.0f;                        // usually 1/sqrt(head_dim)
  int64_t sliding_window = 0;                // 0 = none; else keys with pos <= q_pos - window are masked
};

}  // namespace llm
