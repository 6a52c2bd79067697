// model-runner-cpu.cc: the CPU forward pass (see model-runner.h), Llama / Mistral / Qwen2 / Qwen3.
//
// Owns: CpuModelRunner = the kernel table, a thread pool, and the RunState activations.
// Stays true: a batch is validated before any kernel runs, so the kernels never read or write
// outside the pool, the weights or the caller's arrays; RunState only grows (a step allocates
// only when it is larger than every step before it).
// Tensor parallelism: the per-rank head and FFN counts are read off the weight shapes (a rank's
// slices, model-weights.h), and the two all_reduce() calls are where ranks add their partial sums
// (CpuRunnerOptions::all_reduce).
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

#include <sys/mman.h>

#include "../kernels/cpu/cpu-kernels.h"
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
        weights_(model.weights),
        kv_cache_(kv_cache),
        kernels_(cpu::cpu_kernels()),
        pool_(opts.num_threads, opts.cpus),
        all_reduce_(opts.all_reduce),
        gather_(opts.gather),
        inv_freq_(rope_inv_freq(model.config)) {
    // This rank's share of heads and FFN columns (everything, without tensor parallelism).
    const ModelConfig& c = model.config;
    const bool has_layers = !model.weights.layers.empty() && c.head_dim > 0;
    const LayerWeights* l0 = has_layers ? &model.weights.layers[0] : nullptr;
    num_heads_ = l0 ? l0->wq.rows / c.head_dim : c.num_heads;
    num_kv_heads_ = l0 ? l0->wk.rows / c.head_dim : c.num_kv_heads;
    intermediate_ = l0 ? l0->w_gate.rows : c.intermediate_size;
    if (kernels_.pack && opts.tile_weights) pack_weights();
  }

  const char* backend_name() const override { return "cpu"; }
  // The kernel path, and how many weight matrices are in its packed layout (amx, avx512-bf16).
  std::string describe() const override {
    std::string s = kernels_.name;
    if (kernels_.pack)
      s += packed_count_ ? ", " + std::to_string(packed_count_) + " weight matrices in " + layout_name() +
                               " order (gate/up fused with silu in " + std::to_string(present_count(gate_up_)) +
                               " layers, q/k/v in " + std::to_string(present_count(qkv_)) + ")"
                         : ", weights row-major";
    return s;
  }
  int64_t vocab_size() const override { return model_.config.vocab_size; }

  Status forward(const ForwardBatch& batch, float* logits) override;

 private:
  Status validate(const ForwardBatch& b) const;
  Status tp_logits(int64_t num_logits, float* logits);

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
  // With attention heads (before o_proj) or FFN columns (before down_proj) split across ranks,
  // each rank's x[n] here is a partial sum and the ranks add theirs together. With one rank the
  // sum is already whole.
  Status all_reduce(float* x, int64_t n) { return all_reduce_ ? all_reduce_(x, n) : Status::Ok(); }

  // On the paths with a packed layout (kernels_.packed_layout: amx_tiles on the amx paths,
  // bf16_pairs on avx512-bf16), the matmul weights (and an lm_head, tied or not) go into it, in
  // one buffer this runner owns: a prefill then reads its weights where they lie instead of
  // reordering them on every matmul (about a fifth of the amx matmul's time at 512 tokens), and
  // decode reads them at the same bandwidth. weights_ points there; the embedding
  // table and the norms stay the model's views. The results are the same bits (cpu-kernels.h).
  // When the buffer cannot be allocated, the weights stay row-major.
  // A layer's gate and up go in together (gate_up_[l], for kernels_.mlp), and so do its
  // q, k and v (qkv_[l], for kernels_.matmul_qkv: packed one right after the other), where they
  // can and have no biases.
  void pack_weights() {
    std::vector<Tensor*> todo;
    std::vector<size_t> fused;  // layers whose gate and up go into gate_up_
    gate_up_.assign(weights_.layers.size(), Tensor{});
    qkv_.assign(weights_.layers.size(), Tensor{});
    for (size_t i = 0; i < weights_.layers.size(); ++i) {
      LayerWeights& l = weights_.layers[i];
      const bool fuse = kernels_.mlp && cpu::can_pack_amx_gate_up(l.w_gate, l.w_up) && !l.b_gate.present() &&
                        !l.b_up.present();
      if (fuse) fused.push_back(i);
      // q, k, v stay in this order in todo (and so in packed_): qkv_[i] then views all three.
      const bool qkv = kernels_.matmul_qkv && !l.bq.present() && !l.bk.present() && !l.bv.present() &&
                       kernels_.can_pack(l.wq) && kernels_.can_pack(l.wk) && kernels_.can_pack(l.wv) &&
                       l.wq.rows % 32 == 0 && l.wk.rows % 32 == 0 && l.wk.rows == l.wv.rows &&
                       l.wq.cols == l.wk.cols && l.wk.cols == l.wv.cols;
      if (qkv) qkv_[i] = Tensor{nullptr, DType::bf16, l.wq.rows + 2 * l.wk.rows, l.wq.cols, kernels_.packed_layout};
      for (Tensor* t : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down})
        if (!(fuse && (t == &l.w_gate || t == &l.w_up)) && kernels_.can_pack(*t)) todo.push_back(t);
    }
    if (kernels_.can_pack(weights_.lm_head)) todo.push_back(&weights_.lm_head);
    size_t total = 0;
    for (const Tensor* t : todo) total += static_cast<size_t>(t->rows * t->cols);
    for (size_t i : fused) total += static_cast<size_t>(2 * weights_.layers[i].w_gate.rows * weights_.layers[i].w_gate.cols);
    if (total == 0) return;
    constexpr size_t kHuge = size_t{2} << 20;
    const size_t bytes = (total * 2 + kHuge - 1) / kHuge * kHuge;
    packed_.reset(static_cast<uint16_t*>(std::aligned_alloc(kHuge, bytes)));
    if (!packed_) return;
    // Transparent huge pages where the system allows them ("madvise" mode, as on our machine):
    // the decode GEMV streams all of it every token (bench-cpu-gemv: 2.47 GB in 89-91 ms against
    // 94-106 in 4 KiB pages; `npm run bench:engine` batch 1: 9.3-9.7 against 7.6-8.5 tok/s).
    madvise(packed_.get(), bytes, MADV_HUGEPAGE);
    // Each matrix's place in packed_, then the copies on as many threads as the pool has (plain
    // threads: the pool would pin this thread, the engine's creator; thread-pool.h). The copies
    // read the model files (page cache, or disk the first time) and fault in the huge pages.
    // Then the model file's pages of what was copied are unmapped (they stay in the page cache):
    // this process's memory counts the weights once. A tied lm_head's table is the embedding,
    // which maps its rows in again as tokens need them.
    std::vector<std::function<void()>> jobs;
    uint16_t* at = packed_.get();
    auto release = [this](const Tensor& t) {
      if (model_.files) model_.files->release_pages(t.data, static_cast<uint64_t>(t.rows * t.cols) * 2);
    };
    for (Tensor* t : todo) {
      jobs.push_back([this, t, at, release] {
        const Tensor source = *t;
        *t = kernels_.pack(source, at);
        release(source);
      });
      at += t->rows * t->cols;
    }
    for (size_t i : fused) {
      LayerWeights& l = weights_.layers[i];
      jobs.push_back([this, i, &l, at, release] {
        gate_up_[i] = cpu::pack_amx_gate_up(l.w_gate, l.w_up, at);
        release(l.w_gate);
        release(l.w_up);
      });
      at += 2 * l.w_gate.rows * l.w_gate.cols;
    }
    std::atomic<size_t> next{0};
    auto work = [&] {
      for (size_t j; (j = next.fetch_add(1)) < jobs.size();) jobs[j]();
    };
    std::vector<std::thread> threads;
    for (int i = 1; i < pool_.size(); ++i) threads.emplace_back(work);
    work();
    for (std::thread& th : threads) th.join();
    for (size_t i = 0; i < qkv_.size(); ++i)
      if (qkv_[i].rows) qkv_[i].data = weights_.layers[i].wq.data;  // wk and wv follow it
    packed_count_ = static_cast<int64_t>(todo.size() + 2 * fused.size());
  }

  struct FreeDeleter {
    void operator()(uint16_t* p) const { std::free(p); }
  };

  const Model& model_;
  ModelWeights weights_;                            // model_.weights, or their packed copies
  std::unique_ptr<uint16_t, FreeDeleter> packed_;  // the packed weights (paths with a packed layout)
  int64_t packed_count_ = 0;                        // matrices in packed_
  const char* layout_name() const { return kernels_.packed_layout == Layout::amx_tiles ? "tile" : "bf16-pair"; }
  static int64_t present_count(const std::vector<Tensor>& ts) {
    return std::count_if(ts.begin(), ts.end(), [](const Tensor& t) { return t.present(); });
  }
  std::vector<Tensor> gate_up_;                     // per layer: gate and up packed together, or absent
  std::vector<Tensor> qkv_;                         // per layer: q, k, v packed one after another, or absent
  KVCacheView kv_cache_;
  const cpu::CpuKernels& kernels_;
  cpu::ThreadPool pool_;
  std::function<Status(float*, int64_t)> all_reduce_;  // empty at tp_size 1
  std::function<Status(const float*, const std::vector<size_t>&, float*)> gather_;  // empty at tp_size 1
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
  const ModelWeights& w = weights_;
  const int64_t T = b.num_tokens;
  const int64_t D = c.hidden_size;
  const int64_t head_dim = c.head_dim;
  const int64_t q_dim = num_heads_ * head_dim;
  const int64_t kv_dim = num_kv_heads_ * head_dim;
  const int64_t F = intermediate_;
  LLM_RETURN_IF_ERROR(validate(b));
  const RankShard& sh = model_.shard;
  if (sh.size > 1 && (!all_reduce_ || !gather_))
    return invalid("a tensor-parallel rank's runner needs CpuRunnerOptions::all_reduce and gather (its sums are partial)");
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
    if (!qkv_.empty() && qkv_[li].present()) {
      // q, k, v = xb @ (wq, wk, wv)^T in one pass (the same bits as below)
      kernels_.matmul_qkv(pool_, s.xb.data(), T, qkv_[li], q_dim, kv_dim, s.q.data(), s.k.data(), s.v.data());
    } else {
      // q = xb @ wq^T + bq;  k = xb @ wk^T + bk;  v = xb @ wv^T + bv   (biases: Qwen2)
      matmul(s.xb.data(), T, lw.wq, &lw.bq, s.q.data());
      matmul(s.xb.data(), T, lw.wk, &lw.bk, s.k.data());
      matmul(s.xb.data(), T, lw.wv, &lw.bv, s.v.data());
    }
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
    matmul(s.att.data(), T, lw.wo, &lw.bo, s.xb.data());
    LLM_RETURN_IF_ERROR(all_reduce(s.xb.data(), T * D));
    // x = x + xb
    add_in_place(s.x.data(), s.xb.data(), T * D);

    // ---- feed-forward block ----
    // xb = rmsnorm(x) * mlp_norm
    rmsnorm(s.x.data(), lw.mlp_norm, T, s.xb.data());
    if (!gate_up_.empty() && gate_up_[li].present()) {
      // xb = (silu(xb @ w_gate^T) * (xb @ w_up^T)) @ w_down^T + b_down, gate and up in one pass
      // and their product handed to down without the fp32 round trip (the same bits as below)
      const TensorView b_down = view(lw.b_down);
      kernels_.mlp(pool_, s.xb.data(), T, gate_up_[li], view(lw.w_down), b_down.present() ? &b_down : nullptr,
                   s.hb.data(), s.xb.data());
    } else {
      // hb = xb @ w_gate^T + b_gate;  hb2 = xb @ w_up^T + b_up   (biases: Llama mlp_bias)
      matmul(s.xb.data(), T, lw.w_gate, &lw.b_gate, s.hb.data());
      matmul(s.xb.data(), T, lw.w_up, &lw.b_up, s.hb2.data());
      // hb = silu(hb) * hb2
      kernels_.silu_mul(pool_, s.hb.data(), s.hb2.data(), s.hb.data(), T * F);
      // xb = hb @ w_down^T + b_down
      matmul(s.hb.data(), T, lw.w_down, &lw.b_down, s.xb.data());
    }
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
    matmul(s.x_out.data(), b.num_logits, w.lm_head, nullptr, logits);
    return Status::Ok();
  }
  return tp_logits(b.num_logits, logits);
}

// Tensor parallelism: logits_part = x_out @ (this rank's lm_head rows)^T, gathered on rank 0 and
// laid out as (num_logits, vocab).
Status CpuModelRunner::tp_logits(int64_t num_logits, float* logits) {
  const RankShard& sh = model_.shard;
  const int64_t V = model_.config.vocab_size;
  RunState& s = state_;
  std::vector<size_t> counts(static_cast<size_t>(sh.size));
  std::vector<int64_t> begins(static_cast<size_t>(sh.size));
  size_t total = 0;
  for (int r = 0; r < sh.size; ++r) {
    int64_t count = 0;
    vocab_part(V, r, sh.size, &begins[static_cast<size_t>(r)], &count);
    counts[static_cast<size_t>(r)] = static_cast<size_t>(num_logits * count);
    total += counts[static_cast<size_t>(r)];
  }
  try {
    s.logits_part.resize(counts[static_cast<size_t>(sh.rank)]);
    if (sh.rank == 0) s.logits_all.resize(total);
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::out_of_memory, "cannot allocate logits for " + std::to_string(num_logits) + " rows");
  }
  matmul(s.x_out.data(), num_logits, weights_.lm_head, nullptr, s.logits_part.data());
  LLM_RETURN_IF_ERROR(gather_(s.logits_part.data(), counts, sh.rank == 0 ? s.logits_all.data() : nullptr));
  if (sh.rank != 0) return Status::Ok();
  const float* from = s.logits_all.data();
  for (int r = 0; r < sh.size; ++r) {
    const int64_t n = static_cast<int64_t>(counts[static_cast<size_t>(r)]) / std::max<int64_t>(1, num_logits);
    for (int64_t i = 0; i < num_logits; ++i, from += n)
      std::copy(from, from + n, logits + i * V + begins[static_cast<size_t>(r)]);
  }
  return Status::Ok();
}

}  // namespace

std::unique_ptr<ModelRunner> make_cpu_runner(const Model& model, KVCacheView kv_cache,
                                             const CpuRunnerOptions& opts) {
  return std::make_unique<CpuModelRunner>(model, kv_cache, opts);
}

}  // namespace llm
