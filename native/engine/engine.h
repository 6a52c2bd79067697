// engine.h: one engine = one model + one paged KV pool + scheduler + sampler + model runner.
// Engine::step() is one iteration of continuous batching:
//
//   schedule -> build the flattened batch -> forward -> [wait for token masks] -> sample -> update
//   -> outputs + events
//
// Structured output: each sampled row of a constrained request (request.h) needs the token mask
// of its output index num_output_tokens() on the board (token_masks(), kv/token-masks.h), put
// there by another thread while the forward pass runs. After the forward pass the step waits
// once for all of them. When the step has other rows (unconstrained, or prefill chunks), it
// waits at most kTokenMaskGrace: a row whose mask is still missing is deferred (not sampled;
// its last token runs again in the next step, Scheduler::kDeferred), so a late matcher never
// holds back the other requests. When every row of the step needs a mask, it waits for them.
// A request whose mask has been missing for token_mask_timeout_ms (counted from the first step
// that wanted it) finishes with FinishReason::error ("structured output: no token mask for
// output N within T ms"); one whose request was cancelled on the board (aborted) finishes as
// aborted, and one whose mask allows no token finishes with the sampler's error. The time the
// engine thread spent waiting, the steps that waited and the rows deferred are in LoadMetrics.
//
// With tensor parallelism the engine is rank 0: it sends each batch to the other ranks
// (tensor-parallel.h) before its own forward, and samples from the logits gathered on it.
//
// Owns: the KV pool memory, the scheduler (and through it every live Request), the runner.
// Stays true: Engine is single-threaded (EngineThread owns the thread and the locking);
// validate_request() reads only immutable facts and token_masks() is thread-safe: both may be
// used from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "../common/status.h"
#include "../kv/kv-cache-manager.h"
#include "../kv/kv-events.h"
#include "../kv/request.h"
#include "../kv/sampler.h"
#include "../kv/scheduler.h"
#include "../kv/token-masks.h"
#include "../model/model-weights.h"
#include "kv-pool-memory.h"
#include "model-runner-cuda.h"
#include "model-runner.h"
#include "tensor-parallel.h"

namespace llm {

// How long a step with other rows waits for a late token mask before deferring its row.
inline constexpr std::chrono::milliseconds kTokenMaskGrace{2};

struct EngineConfig {
  std::string model_dir;
  std::string worker_id;
  int64_t block_size = 16;              // tokens per KV block, [1, 1024]
  int64_t max_model_len = 0;            // 0 = model's max_position_embeddings (capped by sliding_window)
  int64_t max_num_seqs = 64;            // [1, 4096]
  int64_t max_num_batched_tokens = 2048;  // per-step token budget, >= 1
  int64_t num_kv_blocks = 0;            // 0 = derived from kv_cache_bytes
  int64_t kv_cache_bytes = 0;           // 0 = default (see engine.cc)
  int num_threads = 0;                  // 0 = all cores
  // CPU: >= 0 pins this engine's threads (all its ranks') to the allowed CPUs (sched_getaffinity,
  // in order) [cpu_offset, cpu_offset + num_threads), so engines started side by side take
  // disjoint cores; -1 = the pool's own placement (the first num_threads allowed CPUs).
  int cpu_offset = -1;
  bool cpu_tile_weights = true;         // CPU: CpuRunnerOptions::tile_weights
  std::string device = "cpu";           // cpu | cuda | auto (cuda when a device is usable, else cpu)
  bool cuda_graphs = true;              // CUDA: decode steps replay captured graphs
  bool enable_prefix_caching = true;
  bool kv_shared_memory = false;        // pool shareable with other processes (disaggregation, see kv_region):
                                        // a named shm segment on the CPU; on CUDA every pool is (CUDA IPC)
  uint64_t seed = 0;                    // for requests without their own seed
  // Tensor parallelism (CPU and CUDA; tensor-parallel.h): this engine is rank 0 of tp_size ranks that meet
  // in the shared-memory segment tp_group; ranks 1..tp_size-1 are processes already started
  // (run_tp_rank) with the same config, whose pids tp_rank_pids lists (optional).
  int tp_size = 1;
  std::string tp_group;
  std::vector<int> tp_rank_pids;
  // Structured output: how long a step waits for the token masks of its constrained rows,
  // [1, 3600000] ms.
  int64_t token_mask_timeout_ms = 10000;
};

// EngineConfig::device as the engine runs it: cpu or cuda (auto: cuda when a device is usable);
// ERR_DEVICE_UNAVAILABLE for cuda without a usable device, saying why.
Status resolve_engine_device(const std::string& asked, std::string* device);

struct LoadMetrics {
  int64_t request_active_slots = 0;
  int64_t request_total_slots = 0;
  int64_t kv_active_blocks = 0;
  int64_t kv_total_blocks = 0;
  int64_t num_requests_waiting = 0;
  double kv_cache_usage = 0;
  double prefix_cache_hit_rate = 0;     // hits / queries over the engine's life, tokens
  int64_t prefix_cache_queries = 0;
  int64_t prefix_cache_hits = 0;
  int64_t num_preemptions = 0;
  // Structured output: time the engine thread spent waiting for token masks, and the steps that
  // waited (a mask missing when sampling began), both cumulative.
  double token_mask_wait_seconds = 0;
  int64_t token_mask_wait_steps = 0;
  int64_t token_mask_deferred_rows = 0;  // rows not sampled in a step because their mask was late
};

struct RequestOutput {
  std::string request_id;
  std::vector<int32_t> new_token_ids;
  std::vector<TokenLogprobs> logprobs;  // one per new token when the request asked
  bool has_logprobs = false;
  FinishReason finish_reason = FinishReason::none;
  int32_t stop_token_id = -1;
  int64_t num_prompt_tokens = 0;
  int64_t num_cached_tokens = 0;
  std::string error;
  // Remote prefill: awaiting_kv is set once, when the request is parked for external KV;
  // block_ids then lists its blocks (and, for FinishReason::prefilled, the held blocks).
  bool awaiting_kv = false;
  std::vector<int32_t> block_ids;
};

struct StepResult {
  int64_t num_scheduled_tokens = 0;  // tokens the step ran through the model
  std::vector<RequestOutput> outputs;
  std::vector<KVEvent> events;
  LoadMetrics metrics;
  // Set when the engine can run no further step: a failed step of a tensor-parallel engine leaves
  // its group broken (a rank died, stopped or missed the deadline), so every later batch would
  // fail too. The owner stops the engine (a worker exits, and is restarted with new ranks).
  std::string fatal;
};

// Where the KV pool lives, for the transfer agent (native/transfer): the pool's view (block b is
// the byte range [b * view.block_bytes(), (b + 1) * view.block_bytes())) in the segment
// `shm_name` (empty when the pool is private memory and cannot be shared), or, on CUDA, in the
// device allocation `device_data` (view.data too; the agent exports it by CUDA IPC).
// With tensor parallelism every rank has a region of its own, holding kv heads [first_kv_head,
// first_kv_head + view.num_kv_heads) of the model's model_kv_heads (Engine::kv_regions).
struct KvRegion {
  KVCacheView view;
  size_t bytes = 0;
  std::string shm_name;
  void* device_data = nullptr;           // a GPU pool of this process (rank 0's)
  std::string device_ipc_handle;         // a GPU pool of another rank's process: its CUDA IPC handle
  std::string device_uuid;               // and the GPU holding it
  int tp_rank = 0;
  int64_t first_kv_head = 0;
  int64_t model_kv_heads = 0;
};

struct EngineInfo {
  std::string backend;                  // "cpu" or "cuda"
  std::string kernels;                  // the CPU kernel path, or the device and cuBLAS
  int64_t num_kv_blocks = 0;
  int64_t block_size = 0;
  int64_t max_model_len = 0;
  DType kv_dtype = DType::bf16;
  int64_t kv_block_bytes = 0;            // the whole model's block (every rank's part of it)
  int tp_size = 1;                       // tensor-parallel ranks
  int64_t vocab_size = 0;                // the logits' width (the model's config vocab_size)
  int64_t token_mask_words = 0;          // a token mask's length: ceil(vocab_size / 32)
};

class Engine {
 public:
  static Status create(const EngineConfig& cfg, std::unique_ptr<Engine>* out);
  ~Engine();

  // Thread-safe: checks a request against immutable limits (token ids, lengths, params).
  Status validate_request(const Request& req) const;
  // Queues a validated request (seeds its rng; a constrained one's first token mask goes to the
  // board for output index num_output_tokens()).
  Status add_request(std::unique_ptr<Request> req);
  void abort(const std::string& request_id);
  // Remote prefill (request.h): see Scheduler::complete_external_kv / release_held.
  void complete_external_kv(const std::string& request_id, bool ok);
  void release_held(const std::string& request_id);
  // The next step's events start with `cleared` + `stored` for the whole cache.
  void request_replay() { replay_requested_ = true; }

  bool has_work() const { return scheduler_->has_work() || replay_requested_ || !pending_aborts_.empty(); }
  // One iteration; fills out (outputs, events, metrics). A forward failure finishes the
  // scheduled requests with FinishReason::error rather than leaving them hanging.
  Status step(StepResult* out);
  LoadMetrics metrics() const;

  const Model& model() const { return *model_; }
  const EngineInfo& info() const { return info_; }
  // The token masks of constrained requests; thread-safe. A request is open there from
  // add_request (or earlier: EngineThread) until the step that outputs its finish.
  TokenMasks& token_masks() const { return *masks_; }
  // Every rank's KV pool, in rank order (one region without tensor parallelism).
  std::vector<KvRegion> kv_regions() const;
  KvRegion kv_region() const { return kv_regions().front(); }  // this rank's (rank 0's)

 private:
  Engine() = default;
  void build_batch(const SchedulerOutput& sched);
  // Blocks until the token masks of the step's constrained rows are there (or the deadline);
  // fills mask_states_, one per constrained sampled row in batch order.
  void wait_for_token_masks(const SchedulerOutput& sched);
  // Whether the request's current mask has been wanted for token_mask_timeout_ms (its clock starts
  // at the first step that waits for it, wait_for_token_masks).
  bool token_mask_overdue(const std::string& request_id, TokenMasks::Clock::time_point now) const;
  // A constrained request is done: its masks and its deferral clock go.
  void drop_masks(const std::string& request_id) {
    masks_->drop(request_id);
    mask_wanted_since_.erase(request_id);
  }
  RequestOutput block_output(const Request& r) const;

  EngineConfig cfg_;
  EngineInfo info_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<KvPoolMemory> kv_memory_;  // the pool: host, shared (kv_shared_memory) or device memory
  // Tensor parallelism on CUDA with shared pools: ranks 1..N-1's pools, (IPC handle, GPU UUID).
  std::vector<std::pair<std::string, std::string>> rank_pools_;
  std::unique_ptr<KVCacheManager> kv_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<TpGroup> tp_;              // tensor parallelism: this engine is rank 0 of the group
  // One per host thread of the runner (the unconstrained rows); the first also samples the
  // constrained rows, in order on the engine thread, once the others are done.
  std::vector<Sampler> row_samplers_;
  bool replay_requested_ = false;
  std::vector<std::unique_ptr<Request>> pending_aborts_;
  uint64_t seed_counter_ = 0;
  std::unique_ptr<TokenMasks> masks_;
  double mask_wait_seconds_ = 0;
  int64_t mask_wait_steps_ = 0;
  int64_t mask_deferred_rows_ = 0;
  std::unordered_map<std::string, TokenMasks::Clock::time_point> mask_wanted_since_;  // by request, until sampled

  // Batch scratch, reused across steps.
  std::vector<int32_t> token_ids_, positions_, query_start_loc_, seq_lens_, block_tables_,
      logits_indices_;
  std::vector<int64_t> slot_mapping_;
  std::vector<float> logits_;
  std::vector<int32_t> greedy_ids_;
  std::vector<TokenMasks::Need> mask_needs_;
  std::vector<TokenMasks::State> mask_states_;
  std::vector<int32_t> mask_words_;
  int64_t max_blocks_per_seq_ = 0;
};

// Runs tokens as one sequence through blocks `block_table` of a private pool (for numerics
// tests): logits for every position, [tokens.size() * vocab].
Status forward_single_sequence(const Model& model, int num_threads, const std::vector<int32_t>& tokens,
                               const std::vector<int32_t>& block_table, int64_t block_size,
                               std::vector<float>* logits);

}  // namespace llm
