// model-runner-cpu.cc: the CPU forward pass (see model-runner.h), Llama / Mistral / Qwen2.
//
// Owns: CpuModelRunner = the kernel table, a thread pool, and the RunState activations.
// Stays true: a batch is validated before any kernel runs, so the kernels never read or write
// outside the pool, the weights or the caller's arrays; RunState only grows (a step allocates
// only when it is larger than every step before it).
// Tensor parallelism: the per-rank head and FFN counts are read off the weight shapes, and the
// two all_reduce() calls mark where ranks add their partial sums.
#include <algorithm>
#include <cmath>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "../kernels/cpu/cpu-kernels.h"
#include "model-runner.h"

namespace llm {

// ---------------------------------------------------------------------------------------------
// Rotary frequencies

constexpr double kPi = 3.14159265358979323846;

std::vector<float> rope_inv_freq(const ModelConfig& cfg) {
  const int64_t half = cfg.head_dim / 2;
  const RopeScaling& rs = cfg.rope_scaling;
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    // inv_freq_i = 1 / theta^(2i / head_dim)
    double f = 1.0 / std::pow(static_cast<double>(cfg.rope_theta), 2.0 * i / cfg.head_dim);
    if (rs.type == RopeScalingType::linear) {
      // linear: every frequency slowed by `factor`
      f /= rs.factor;
    } else if (rs.type == RopeScalingType::llama3) {
      // llama3 (HF _compute_llama3_parameters): long wavelengths slowed by `factor`, short ones
      // kept, and the band between blended smoothly.
      const double original = static_cast<double>(rs.original_max_position_embeddings);
      const double low_freq_wavelen = original / rs.low_freq_factor;
      const double high_freq_wavelen = original / rs.high_freq_factor;
      const double wavelen = 2.0 * kPi / f;
      if (wavelen > low_freq_wavelen) {
        f /= rs.factor;
      } else if (wavelen >= high_freq_wavelen) {
        const double smooth =
            (original / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        f = (1.0 - smooth) * f / rs.factor + smooth * f;
      }
    }
    inv_freq[static_cast<size_t>(i)] = static_cast<float>(f);
  }
  return inv_freq;
}

namespace {

Status invalid(const std::string& message) { return Status(StatusCode::invalid_argument, message); }

// Tensor (the weights) and TensorView (what kernels take) share their fields.
TensorView view(const Tensor& t) { return TensorView{t.data, t.dtype, t.rows, t.cols}; }

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
        pool_(opts.num_threads),
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

  Status forward(const ForwardBatch& batch, float* logits) override;

 private:
  Status validate(const ForwardBatch& b) const;

  // The kernels, bound to this runner's pool and model.
  void matmul(const float* x, int64_t M, const Tensor& w, const Tensor* bias, float* y) {
    const TensorView wv = view(w);
    const TensorView bv = bias ? view(*bias) : TensorView{};
    kernels_.matmul(pool_, x, M, wv, bv.present() ? &bv : nullptr, y);
  }
  void rmsnorm(const float* x, const Tensor& weight, int64_t M, float* out) {
    kernels_.rmsnorm(pool_, x, view(weight), model_.config.rms_norm_eps, M, model_.config.hidden_size, out);
  }
  // x += y, n elements.
  void add_in_place(float* x, const float* y, int64_t n) {
    pool_.parallel_for(n, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) x[i] += y[i];
    });
  }
  // Tensor-parallel seam: with attention heads (before o_proj) or FFN columns (before down_proj)
  // split across ranks, each rank's x[n] here is a partial sum and the ranks add theirs together.
  // With one rank the sum is already whole.
  void all_reduce(float* x, int64_t n) {}

  const Model& model_;
  KVCacheView kv_cache_;
  const cpu::CpuKernels& kernels_;
  cpu::ThreadPool pool_;
  std::vector<float> inv_freq_;  // (head_dim / 2)
  RunState state_;
  int64_t num_heads_ = 0;        // query heads on this rank
  int64_t num_kv_heads_ = 0;     // kv heads on this rank
  int64_t intermediate_ = 0;     // FFN width on this rank
};

// Checks everything a kernel will index with, so that a bad batch is an error, never a stray
// read or write: token ids, query_start_loc, seq_lens, the block ids each sequence's context
// needs, positions, slot_mapping (each slot must be where its position lives in the block
// table, or negative = padding) and logits_indices.
Status CpuModelRunner::validate(const ForwardBatch& b) const {
  const ModelConfig& c = model_.config;
  const KVCacheView& kv = kv_cache_;
  if (static_cast<int64_t>(model_.weights.layers.size()) != c.num_layers)
    return invalid("the model has " + std::to_string(model_.weights.layers.size()) + " layers of weights, its config " +
                   std::to_string(c.num_layers));
  if (num_heads_ <= 0 || num_kv_heads_ <= 0 || num_heads_ % num_kv_heads_ != 0 || c.head_dim % 2 != 0)
    return invalid("the model's head counts or head_dim are inconsistent");
  if (kv.data == nullptr || kv.block_size <= 0 || kv.num_layers < c.num_layers ||
      kv.num_kv_heads != num_kv_heads_ || kv.head_dim != c.head_dim)
    return invalid("the KV cache view does not match the model");
  if (b.num_tokens < 0 || b.num_seqs < 0 || b.num_logits < 0 || b.max_blocks_per_seq < 0)
    return invalid("batch sizes must not be negative");
  if (b.num_tokens > 0 && (!b.token_ids || !b.positions || !b.slot_mapping))
    return invalid("token_ids, positions and slot_mapping are required");
  if (b.num_tokens > 0 && b.num_seqs == 0) return invalid("tokens without sequences");
  if (b.num_seqs > 0 && (!b.query_start_loc || !b.seq_lens || (!b.block_tables && b.max_blocks_per_seq > 0)))
    return invalid("query_start_loc, seq_lens and block_tables are required");
  if (b.num_logits > 0 && !b.logits_indices) return invalid("logits_indices is required");

  for (int64_t t = 0; t < b.num_tokens; ++t)
    if (b.token_ids[t] < 0 || b.token_ids[t] >= c.vocab_size)
      return invalid("token id " + std::to_string(b.token_ids[t]) + " at " + std::to_string(t) +
                     " is outside the vocabulary");

  const int64_t bs = kv.block_size;
  if (b.num_seqs > 0 && b.query_start_loc[0] != 0) return invalid("query_start_loc[0] must be 0");
  for (int64_t s = 0; s < b.num_seqs; ++s) {
    const int64_t q_begin = b.query_start_loc[s], q_end = b.query_start_loc[s + 1];
    const int64_t q_len = q_end - q_begin, seq_len = b.seq_lens[s];
    const std::string seq = "sequence " + std::to_string(s);
    if (q_len < 0 || q_end > b.num_tokens) return invalid(seq + ": query_start_loc out of order or range");
    if (seq_len < q_len) return invalid(seq + ": seq_len is shorter than its new tokens");
    if (seq_len > b.max_blocks_per_seq * bs) return invalid(seq + ": seq_len exceeds its block table");
    const int32_t* table = b.block_tables + s * b.max_blocks_per_seq;
    for (int64_t j = 0; j < (seq_len + bs - 1) / bs; ++j)
      if (table[j] < 0 || table[j] >= kv.num_blocks)
        return invalid(seq + ": block id " + std::to_string(table[j]) + " is outside the pool");
    for (int64_t t = q_begin; t < q_end; ++t) {
      const int64_t pos = seq_len - q_len + (t - q_begin);
      if (b.positions[t] != pos)
        return invalid(seq + ": token " + std::to_string(t) + " has position " +
                       std::to_string(b.positions[t]) + ", expected " + std::to_string(pos));
      const int64_t slot = b.slot_mapping[t];
      if (slot >= 0 && slot != static_cast<int64_t>(table[pos / bs]) * bs + pos % bs)
        return invalid(seq + ": token " + std::to_string(t) + " has slot " + std::to_string(slot) +
                       ", not where its block table puts position " + std::to_string(pos));
    }
  }
  if (b.num_seqs > 0 && b.query_start_loc[b.num_seqs] != b.num_tokens)
    return invalid("query_start_loc does not end at num_tokens");
  for (int64_t i = 0; i < b.num_logits; ++i)
    if (b.logits_indices[i] < 0 || b.logits_indices[i] >= b.num_tokens)
      return invalid("logits index " + std::to_string(b.logits_indices[i]) + " is outside the batch");
  return Status::Ok();
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
  if (T == 0) return Status::Ok();
  if (b.num_logits > 0 && !logits) return invalid("logits is required");
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
    // q = xb @ wq^T + bq;  k = xb @ wk^T + bk;  v = xb @ wv^T + bv   (biases: Qwen2)
    matmul(s.xb.data(), T, lw.wq, &lw.bq, s.q.data());
    matmul(s.xb.data(), T, lw.wk, &lw.bk, s.k.data());
    matmul(s.xb.data(), T, lw.wv, &lw.bv, s.v.data());
    // q, k = rope(q, k) at each token's position
    kernels_.rope(pool_, s.q.data(), s.k.data(), b.positions, T, num_heads_, num_kv_heads_, head_dim,
                  inv_freq_.data());
    // kv_cache[l][slot_mapping] = k, v
    kernels_.cache_write(pool_, s.k.data(), s.v.data(), b.slot_mapping, T, kv_cache_, l);
    // att = softmax(q K^T / sqrt(head_dim), causal, sliding window) V over each sequence's context
    kernels_.paged_attention(pool_, s.q.data(), kv_cache_, l, attn, s.att.data());
    // xb = att @ wo^T + bo   (bias: Llama attention_bias)
    matmul(s.att.data(), T, lw.wo, &lw.bo, s.xb.data());
    all_reduce(s.xb.data(), T * D);
    // x = x + xb
    add_in_place(s.x.data(), s.xb.data(), T * D);

    // ---- feed-forward block ----
    // xb = rmsnorm(x) * mlp_norm
    rmsnorm(s.x.data(), lw.mlp_norm, T, s.xb.data());
    // hb = xb @ w_gate^T + b_gate;  hb2 = xb @ w_up^T + b_up   (biases: Llama mlp_bias)
    matmul(s.xb.data(), T, lw.w_gate, &lw.b_gate, s.hb.data());
    matmul(s.xb.data(), T, lw.w_up, &lw.b_up, s.hb2.data());
    // hb = silu(hb) * hb2
    kernels_.silu_mul(pool_, s.hb.data(), s.hb2.data(), s.hb.data(), T * F);
    // xb = hb @ w_down^T + b_down
    matmul(s.hb.data(), T, lw.w_down, &lw.b_down, s.xb.data());
    all_reduce(s.xb.data(), T * D);
    // x = x + xb
    add_in_place(s.x.data(), s.xb.data(), T * D);
  }

  // x_out = rmsnorm(x[logits_indices]) * final_norm   (only the rows that need logits)
  for (int64_t i = 0; i < b.num_logits; ++i) {
    const float* row = s.x.data() + static_cast<int64_t>(b.logits_indices[i]) * D;
    std::copy(row, row + D, s.x_out.data() + i * D);
  }
  rmsnorm(s.x_out.data(), w.final_norm, b.num_logits, s.x_out.data());
  // logits = x_out @ lm_head^T
  matmul(s.x_out.data(), b.num_logits, w.lm_head, nullptr, logits);
  return Status::Ok();
}

}  // namespace

std::unique_ptr<ModelRunner> make_cpu_runner(const Model& model, KVCacheView kv_cache,
                                             const CpuRunnerOptions& opts) {
  return std::make_unique<CpuModelRunner>(model, kv_cache, opts);
}

}  // namespace llm
