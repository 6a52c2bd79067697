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
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../common/status.h"
#include "../kernels/tensor-view.h"
#include "../model/model-weights.h"

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
  // The kernels it runs, for logs and EngineInfo::kernels.
  virtual std::string describe() const { return backend_name(); }
  virtual int64_t vocab_size() const = 0;
  // logits: [num_logits, vocab_size] fp32.
  virtual Status forward(const ForwardBatch& batch, float* logits) = 0;
  // token_ids: [num_logits], the argmax of each logits row (the sampler's greedy choice: NaN
  // counts as -inf, the lowest id wins a tie). Here: forward, then the argmax on the host; a GPU
  // runner takes it on the device and copies back only the ids.
  virtual Status forward_greedy(const ForwardBatch& batch, int32_t* token_ids);
  // Whether forward_greedy saves work over forward + the sampler (the engine then uses it for
  // steps whose every sampled request is plain greedy).
  virtual bool greedy_on_device() const { return false; }
  // Host threads for per-row work between forward passes (the sampler's): parallel_rows splits
  // [0, n) into at most host_threads() contiguous ranges and runs fn(worker, begin, end) on
  // each, worker in [0, host_threads()). Here one range on the calling thread; the CPU runner
  // uses its kernels' pool, idle between forward passes.
  virtual int host_threads() const { return 1; }
  virtual void parallel_rows(int64_t n, const std::function<void(int, int64_t, int64_t)>& fn) {
    if (n > 0) fn(0, 0, n);
  }

 private:
  std::vector<float> greedy_logits_;  // forward_greedy's scratch
};

// The KV pool's view for this model's shape (model dtype, layers, kv heads, head_dim): num_blocks
// blocks of block_size tokens at `data` (null for a shape only).
KVCacheView make_kv_view(const ModelConfig& c, void* data, int64_t num_blocks, int64_t block_size);
// The same for the kv heads this rank of `m` holds (RankShard::num_kv_heads).
KVCacheView make_kv_view(const Model& m, void* data, int64_t num_blocks, int64_t block_size);

// One sequence's step as a batch (tests, benchmarks, forward_single_sequence): `tokens` at
// positions [start, start + tokens.size()) of a sequence whose KV lives in `block_table`; logits
// for every token (all_logits) or the last. Owns the arrays batch() points into.
struct SingleSequenceBatch {
  SingleSequenceBatch(std::vector<int32_t> tokens, int64_t start, std::vector<int32_t> block_table, int64_t block_size,
                      bool all_logits);
  ForwardBatch batch() const;

  std::vector<int32_t> token_ids, positions, query_start_loc, seq_lens, block_table, logits_indices;
  std::vector<int64_t> slot_mapping;
};

// Checks everything a kernel will index with, so that a bad batch is an error, never a stray
// read or write: token ids, query_start_loc, seq_lens, the block ids each sequence's context
// needs, positions, slot_mapping (each slot must be where its position lives in the block
// table, or negative = padding) and logits_indices. num_heads and num_kv_heads are this rank's.
Status validate_forward_batch(const Model& model, int64_t num_heads, int64_t num_kv_heads, const KVCacheView& kv,
                              const ForwardBatch& batch);

// Tensor parallelism: what a rank's runner asks of its group (TpGroup::bind). Both empty at
// tp_size 1.
struct TpCollectives {
  // Sums x[n] over the ranks, in place (every rank gets the same bits). The runner calls it after
  // o_proj and after down_proj, where each rank holds a partial sum (a model loaded at tp_size > 1:
  // model-weights.h).
  std::function<Status(float* x, int64_t n)> all_reduce;
  // Each rank computes the logits of its vocabulary rows (RankShard::vocab_*); rank 0's root_out
  // <- every rank's x, concatenated in rank order (counts[r] floats from rank r).
  std::function<Status(const float* x, const std::vector<size_t>& counts, float* root_out)> gather;
  // Every rank passes a short note (at most TpGroup::kMaxNoteBytes) and gets every rank's, in
  // rank order: how CUDA ranks agree on their all-reduce and exchange its handles.
  std::function<Status(const std::string& mine, std::vector<std::string>* all)> all_gather;
  // An error naming a rank that has exited or left the group, else OK (cheap: asked while a
  // device waits on sums that need every rank).
  std::function<Status()> peers_alive;

  bool bound() const { return all_reduce && gather; }
};

// Tensor parallelism: rank 0's logits [num_logits, vocab] from every rank's part, each
// [num_logits, its RankShard::vocab_count]; `part` is this rank's. The other ranks only send
// theirs (logits may be null there). gathered: rank 0's scratch.
Status gather_vocab_logits(const RankShard& shard, int64_t vocab, int64_t num_logits, const float* part,
                           const TpCollectives& tp, std::vector<float>* gathered, float* logits);

struct CpuRunnerOptions {
  int num_threads = 0;  // 0 = all cores (of `cpus`, when given)
  std::vector<int> cpus;  // the CPUs the pool is pinned to (a tensor-parallel rank's share); empty = all allowed
  // On the kernel paths with a packed layout (amx, avx512-bf16, avx2), a private copy of the matmul
  // weights in it, fused where the path fuses (faster prefill; CpuWeights, cpu-weights.h).
  // false: every weight stays in the model files' mapping, which the processes that load the
  // same model share.
  bool tile_weights = true;
  // Tensor parallelism: this rank's sums and logits gather (TpGroup::bind). Empty at tp_size 1.
  TpCollectives tp;
};

// Rotary inverse frequencies [head_dim / 2] with the config's rope_scaling applied (default,
// linear, llama3, dynamic, yarn). The rope kernels also multiply cos and sin by
// cfg.rope_scaling.attention_factor (yarn's; 1 otherwise), as transformers does.
std::vector<float> rope_inv_freq(const ModelConfig& cfg);

std::unique_ptr<ModelRunner> make_cpu_runner(const Model& model, KVCacheView kv_cache,
                                             const CpuRunnerOptions& opts);

}  // namespace llm
