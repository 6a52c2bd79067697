// model-runner-cpu.cc: the CPU forward pass (see model-runner.h), Llama / Mistral / Qwen2 / Qwen3.
//
// Owns: CpuModelRunner = the kernel table, the matmul weights prepared for its path (CpuWeights,
// cpu-weights.h: packed layouts and fusions are the backend's), a thread pool, and the RunState
// activations. The runner itself is only the forward pass.
// Stays true: a batch is validated before any kernel runs, so the kernels never read or write
// outside the pool, the weights or the caller's arrays; RunState only grows (a step allocates
// only when it is larger than every step before it).
// Tensor parallelism: the per-rank head and FFN counts are read off the weight shapes (a rank's
// slices, model-weights.h), and the two all_reduce() calls are where ranks add their partial sums
// (TpCollectives::all_reduce).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "../kernels/cpu/cpu-kernels.h"
#include "../kernels/cpu/cpu-weights.h"
#include "model-runner.h"

namespace llm {

namespace {

Status invalid(const std::string& message) { return Status(StatusCode::invalid_argument, message); }

// Tensor (the weights) and TensorView (what kernels take) are one type.
const TensorView& view(const Tensor& t) { return t; }

// ---------------------------------------------------------------------------------------------
// RunState: the activations of one step (llama2.c's RunState), sized for the largest batch
// seen so far and reused across steps.

struct RunState {
  int64_t capacity_tokens = 0;
  int64_t capacity_logits = 0;
  std::vector<float> x;      // (num_tokens, hidden)                 residual stream
  std::vector<float> xb;     // (num_tokens, hidden)                 normed x, then a branch's output
  std::vector<float> q;      // (num_tokens, num_heads * head_dim)
  std::vector<float> k;      // (num_tokens, num_kv_heads * head_dim)
  std::vector<float> v;      // (num_tokens, num_kv_heads * head_dim)
  std::vector<float> att;    // (num_tokens, num_heads * head_dim)   attention output per head
  std::vector<float> hb;     // (num_tokens, intermediate)           gate, then silu(gate) * up
  std::vector<float> hb2;    // (num_tokens, intermediate)           up
  std::vector<float> x_out;  // (num_logits, hidden)                 final-normed logits rows
  std::vector<float> logits_part;  // (num_logits, vocab rows of this rank)  tensor parallelism
  std::vector<float> logits_all;   // rank 0: every rank's logits_part, in rank order

  Status grow(int64_t num_tokens, int64_t num_logits, int64_t hidden, int64_t q_dim, int64_t kv_dim,
              int64_t intermediate) {
    try {
      if (num_tokens > capacity_tokens) {
        const size_t n = static_cast<size_t>(num_tokens);
        x.resize(n * hidden);
        xb.resize(n * hidden);
        q.resize(n * q_dim);
        k.resize(n * kv_dim);
        v.resize(n * kv_dim);
        att.resize(n * q_dim);
        hb.resize(n * intermediate);
        hb2.resize(n * intermediate);
        capacity_tokens = num_tokens;
      }
      if (num_logits > capacity_logits) {
        x_out.resize(static_cast<size_t>(num_logits) * hidden);
        capacity_logits = num_logits;
      }
    } catch (const std::bad_alloc&) {
      return Status(StatusCode::out_of_memory,
                    "cannot allocate activations for " + std::to_string(num_tokens) + " tokens");
    }
    return Status::Ok();
  }
};

// ---------------------------------------------------------------------------------------------
// CpuModelRunner

class CpuModelRunner final : public ModelRunner {
 public:
  CpuModelRunner(const Model& model, KVCacheView kv_cache, const CpuRunnerOptions& opts)
      : model_(model),
        kv_cache_(kv_cache),
        kernels_(cpu::cpu_kernels()),
        pool_(opts.num_threads, opts.cpus),
        matmuls_(kernels_, layer_matmuls(model.weights), model.weights.lm_head, weight_options(model, opts, pool_.size())),
        tp_(opts.tp),
        inv_freq_(rope_inv_freq(model.config)) {
    // This rank's share of heads and FFN columns (everything, without tensor parallelism).
    const ModelConfig& c = model.config;
    const bool has_layers = !model.weights.layers.empty() && c.head_dim > 0;
    const LayerWeights* l0 = has_layers ? &model.weights.layers[0] : nullptr;
    num_heads_ = l0 ? l0->wq.rows / c.head_dim : c.num_heads;
    num_kv_heads_ = l0 ? l0->wk.rows / c.head_dim : c.num_kv_heads;
    intermediate_ = l0 ? l0->w_gate.rows : c.intermediate_size;
  }

  const char* backend_name() const override { return "cpu"; }
  // The kernel path, and how its weights were prepared (packed layout, fusions).
  std::string describe() const override {
    std::string s = kernels_.name;
    const std::string prepared = matmuls_.describe();
    if (!prepared.empty()) s += ", " + prepared;
    const std::vector<int>& nodes = pool_.numa_nodes();
    for (size_t i = 0; i < nodes.size(); ++i) s += (i ? "," : nodes.size() > 1 ? ", memory on NUMA nodes " : ", memory on NUMA node ") + std::to_string(nodes[i]);
    return s;
  }
  int64_t vocab_size() const override { return model_.config.vocab_size; }
  int host_threads() const override { return pool_.size(); }
  void parallel_rows(int64_t n, const std::function<void(int, int64_t, int64_t)>& fn) override {
    pool_.parallel_for_indexed(n, fn);
  }

  Status forward(const ForwardBatch& batch, float* logits) override;

 private:
  Status validate(const ForwardBatch& b) const;
  Status tp_logits(int64_t num_logits, float* logits);

  // The kernels, bound to this runner's pool and model.
  void rmsnorm(const float* x, const Tensor& weight, int64_t M, float* out) {
    kernels_.rmsnorm(pool_, x, view(weight), model_.config.rms_norm_eps, M, model_.config.hidden_size, out);
  }
  // x += y, n elements.
  void add_in_place(float* x, const float* y, int64_t n) {
    pool_.parallel_for(n, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) x[i] += y[i];
    });
  }
  // With attention heads (before o_proj) or FFN columns (before down_proj) split across ranks,
  // each rank's x[n] here is a partial sum and the ranks add theirs together. With one rank the
  // sum is already whole.
  Status all_reduce(float* x, int64_t n) { return tp_.all_reduce ? tp_.all_reduce(x, n) : Status::Ok(); }

  static std::vector<cpu::CpuLayerMatmuls> layer_matmuls(const ModelWeights& w) {
    std::vector<cpu::CpuLayerMatmuls> out;
    for (const LayerWeights& l : w.layers)
      out.push_back({l.wq, l.wk, l.wv, l.bq, l.bk, l.bv, l.wo, l.bo, l.w_gate, l.w_up, l.w_down, l.b_gate, l.b_up, l.b_down});
    return out;
  }
  // Packing (CpuRunnerOptions::tile_weights) on as many plain threads as the pool has; the model
  // file's pages of what was copied are unmapped (they stay in the page cache), so this process
  // counts the weights once. A tied lm_head's table is the embedding, which maps its rows in
  // again as tokens need them.
  static cpu::CpuWeightOptions weight_options(const Model& model, const CpuRunnerOptions& opts, int threads) {
    cpu::CpuWeightOptions o;
    o.pack = opts.tile_weights;
    o.threads = threads;
    const SafetensorsModel* files = model.files.get();
    if (files) o.release = [files](const void* data, uint64_t bytes) { files->release_pages(data, bytes); };
    return o;
  }

  const Model& model_;
  KVCacheView kv_cache_;
  const cpu::CpuKernels& kernels_;
  cpu::ThreadPool pool_;
  cpu::CpuWeights matmuls_;  // the matmul weights, prepared for kernels_' path
  TpCollectives tp_;  // empty at tp_size 1
  std::vector<float> inv_freq_;  // (head_dim / 2)
  RunState state_;
  int64_t num_heads_ = 0;        // query heads on this rank
  int64_t num_kv_heads_ = 0;     // kv heads on this rank
  int64_t intermediate_ = 0;     // FFN width on this rank
};

Status CpuModelRunner::validate(const ForwardBatch& b) const {
  return validate_forward_batch(model_, num_heads_, num_kv_heads_, kv_cache_, b);
}

Status CpuModelRunner::forward(const ForwardBatch& b, float* logits) {
  const ModelConfig& c = model_.config;
  const ModelWeights& w = model_.weights;
  const int64_t T = b.num_tokens;
  const int64_t D = c.hidden_size;
  const int64_t head_dim = c.head_dim;
  const int64_t q_dim = num_heads_ * head_dim;
  const int64_t kv_dim = num_kv_heads_ * head_dim;
  const int64_t F = intermediate_;
  LLM_RETURN_IF_ERROR(validate(b));
  const RankShard& sh = model_.shard;
  if (sh.size > 1 && !tp_.bound())
    return invalid("a tensor-parallel rank's runner needs CpuRunnerOptions::tp (its sums are partial)");
  if (T == 0) return Status::Ok();
  if (b.num_logits > 0 && !logits && sh.rank == 0) return invalid("logits is required");
  LLM_RETURN_IF_ERROR(state_.grow(T, b.num_logits, D, q_dim, kv_dim, F));
  RunState& s = state_;

  cpu::AttentionBatch attn;
  attn.num_seqs = b.num_seqs;
  attn.query_start_loc = b.query_start_loc;
  attn.seq_lens = b.seq_lens;
  attn.block_tables = b.block_tables;
  attn.max_blocks_per_seq = b.max_blocks_per_seq;
  attn.num_heads = num_heads_;
  attn.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  attn.sliding_window = c.sliding_window;

  // x = embed[token_ids]
  kernels_.embedding(pool_, view(w.embed), b.token_ids, T, s.x.data());

  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = w.layers[static_cast<size_t>(l)];

    // ---- attention block ----
    // xb = rmsnorm(x) * attn_norm
    rmsnorm(s.x.data(), lw.attn_norm, T, s.xb.data());
    const size_t li = static_cast<size_t>(l);
    // q = xb @ wq^T + bq;  k = xb @ wk^T + bk;  v = xb @ wv^T + bv   (biases: Qwen2)
    matmuls_.qkv(pool_, li, s.xb.data(), T, s.q.data(), s.k.data(), s.v.data());
    if (lw.q_norm.present()) {
      // q, k = rmsnorm(q) * q_norm, rmsnorm(k) * k_norm, each head on its own   (Qwen3)
      kernels_.rmsnorm(pool_, s.q.data(), view(lw.q_norm), c.rms_norm_eps, T * num_heads_, head_dim, s.q.data());
      kernels_.rmsnorm(pool_, s.k.data(), view(lw.k_norm), c.rms_norm_eps, T * num_kv_heads_, head_dim, s.k.data());
    }
    // q, k = rope(q, k) at each token's position (cos and sin times yarn's attention factor)
    kernels_.rope(pool_, s.q.data(), s.k.data(), b.positions, T, num_heads_, num_kv_heads_, head_dim,
                  inv_freq_.data(), c.rope_scaling.attention_factor);
    // kv_cache[l][slot_mapping] = k, v
    kernels_.cache_write(pool_, s.k.data(), s.v.data(), b.slot_mapping, T, kv_cache_, l);
    // att = softmax(q K^T / sqrt(head_dim), causal, sliding window) V over each sequence's context
    kernels_.paged_attention(pool_, s.q.data(), kv_cache_, l, attn, s.att.data());
    // xb = att @ wo^T + bo   (bias: Llama attention_bias)
    matmuls_.attn_out(pool_, li, s.att.data(), T, s.xb.data());
    LLM_RETURN_IF_ERROR(all_reduce(s.xb.data(), T * D));
    // x = x + xb
    add_in_place(s.x.data(), s.xb.data(), T * D);

    // ---- feed-forward block ----
    // xb = rmsnorm(x) * mlp_norm
    rmsnorm(s.x.data(), lw.mlp_norm, T, s.xb.data());
    // xb = (silu(xb @ w_gate^T + b_gate) * (xb @ w_up^T + b_up)) @ w_down^T + b_down
    //   (biases: Llama mlp_bias; hb, hb2: gate and up)
    matmuls_.mlp(pool_, li, s.xb.data(), T, s.hb.data(), s.hb2.data(), s.xb.data());
    LLM_RETURN_IF_ERROR(all_reduce(s.xb.data(), T * D));
    // x = x + xb
    add_in_place(s.x.data(), s.xb.data(), T * D);
  }

  // x_out = rmsnorm(x[logits_indices]) * final_norm   (only the rows that need logits)
  for (int64_t i = 0; i < b.num_logits; ++i) {
    const float* row = s.x.data() + static_cast<int64_t>(b.logits_indices[i]) * D;
    std::copy(row, row + D, s.x_out.data() + i * D);
  }
  rmsnorm(s.x_out.data(), w.final_norm, b.num_logits, s.x_out.data());
  if (sh.size == 1) {
    // logits = x_out @ lm_head^T
    matmuls_.logits(pool_, s.x_out.data(), b.num_logits, logits);
    return Status::Ok();
  }
  return tp_logits(b.num_logits, logits);
}

// Tensor parallelism: logits_part = x_out @ (this rank's lm_head rows)^T, gathered on rank 0 and
// laid out as (num_logits, vocab).
Status CpuModelRunner::tp_logits(int64_t num_logits, float* logits) {
  RunState& s = state_;
  try {
    s.logits_part.resize(static_cast<size_t>(num_logits * model_.shard.vocab_count));
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::out_of_memory, "cannot allocate logits for " + std::to_string(num_logits) + " rows");
  }
  matmuls_.logits(pool_, s.x_out.data(), num_logits, s.logits_part.data());
  return gather_vocab_logits(model_.shard, model_.config.vocab_size, num_logits, s.logits_part.data(), tp_,
                             &s.logits_all, logits);
}

}  // namespace

std::unique_ptr<ModelRunner> make_cpu_runner(const Model& model, KVCacheView kv_cache,
                                             const CpuRunnerOptions& opts) {
  return std::make_unique<CpuModelRunner>(model, kv_cache, opts);
}

}  // namespace llm
