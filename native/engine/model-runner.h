// model-runner.h: the forward pass over a flattened batch (llama2.c's forward(), batched and
// paged). One ModelRunner per backend; the CPU one is the reference.
//
// A batch is every scheduled token of every scheduled sequence, flattened:
//   token_ids     // [num_tokens]
//   positions     // [num_tokens]   position of each token in its sequence
//   slot_mapping  // [num_tokens]   where its K/V go: block_id * block_size + offset; < 0 = padding
//   query_start_loc // [num_seqs + 1] sequence s owns tokens [qsl[s], qsl[s+1])
//   seq_lens      // [num_seqs]     context length of s after this step
//   block_tables  // [num_seqs, max_blocks_per_seq]
//   logits_indices // [num_logits]  tokens whose logits to return (a sequence's last token)
// Stays true: forward never reads or writes the pool outside the blocks named by the tables
// and slot_mapping, and leaves activations in RunState (no allocation per step once warm).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../common/status.h"
#include "../kernels/tensor-view.h"
#include "model-weights.h"

namespace llm {

struct ForwardBatch {
  int64_t num_tokens = 0;
  const int32_t* token_ids = nullptr;
  const int32_t* positions = nullptr;
  const int64_t* slot_mapping = nullptr;
  int64_t num_seqs = 0;
  const int32_t* query_start_loc = nullptr;
  const int32_t* seq_lens = nullptr;
  const int32_t* block_tables = nullptr;
  int64_t max_blocks_per_seq = 0;
  int64_t num_logits = 0;
  const int32_t* logits_indices = nullptr;
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  virtual const char* backend_name() const = 0;
  // logits: [num_logits, vocab_size] fp32.
  virtual Status forward(const ForwardBatch& batch, float* logits) = 0;
};

struct CpuRunnerOptions {
  int num_threads = 0;  // 0 = all cores
};

// Rotary inverse frequencies [head_dim / 2] with the config's rope_scaling applied.
std::vector<float> rope_inv_freq(const ModelConfig& cfg);

std::unique_ptr<ModelRunner> make_cpu_runner(const Model& model, KVCacheView kv_cache,
                                             const CpuRunnerOptions& opts);

}  // namespace llm
