// bench-common.h: what the CPU benchmark programs (native/bench/bench-cpu-*.cc) share: a clock,
// comma-separated argument lists, and the attention batch of one sequence of T tokens in
// blocks 0, 1, ... of a paged pool. Not engine code.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/tensor-view.h"

namespace llm_bench {

inline double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// "a,b,c" -> {"a", "b", "c"}.
inline std::vector<std::string> split_list(const std::string& list) {
  std::vector<std::string> out;
  for (size_t p0 = 0; p0 <= list.size();) {
    size_t p1 = list.find(',', p0);
    if (p1 == std::string::npos) p1 = list.size();
    out.push_back(list.substr(p0, p1 - p0));
    p0 = p1 + 1;
  }
  return out;
}

// One sequence of T new tokens (no cached prefix) whose KV sits in blocks 0 .. num_blocks - 1.
// Not copyable: batch points into the members.
struct OneSequence {
  std::vector<int32_t> block_table;
  int32_t query_start_loc[2];
  int32_t seq_len;
  llm::AttentionBatch batch;

  OneSequence(int64_t T, int64_t num_blocks, int64_t num_heads, float scale)
      : block_table(static_cast<size_t>(num_blocks)), query_start_loc{0, static_cast<int32_t>(T)},
        seq_len(static_cast<int32_t>(T)) {
    for (int64_t i = 0; i < num_blocks; ++i) block_table[static_cast<size_t>(i)] = static_cast<int32_t>(i);
    batch.num_seqs = 1;
    batch.query_start_loc = query_start_loc;
    batch.seq_lens = &seq_len;
    batch.block_tables = block_table.data();
    batch.max_blocks_per_seq = num_blocks;
    batch.num_heads = num_heads;
    batch.scale = scale;
  }
  OneSequence(const OneSequence&) = delete;
  OneSequence& operator=(const OneSequence&) = delete;
};

}  // namespace llm_bench
