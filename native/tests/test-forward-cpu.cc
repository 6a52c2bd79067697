// test-forward-cpu.cc: the CPU forward pass on tiny random models built in memory (no loader).
//
// Models: a Llama with GQA 3:1 and llama3 rope scaling, a Mistral-like with a sliding window
// and linear rope scaling, and a Qwen2-like with q/k/v biases and tied embeddings.
// Checks, logits compared per position:
//   (a) a prompt in one step == the same prompt prefilled in chunks, then decoded token by token
//   (b) a contiguous block table == a permuted, non-contiguous one
//   (c) sequences batched together == each alone
//   (d) the runner == a naive dense (non-paged) transformer in double written here
//   plus rope_inv_freq against Hugging Face's formulas, and batch validation errors.
// Bounds: (a)-(c) |a - b| <= 1e-4 * max(1, max|b|) with f32 KV, 2e-2 * max(1, max|b|) with bf16
// KV (a faster kernel may round a K/V element differently in another batch shape); (d)
// |runner - naive| <= 1e-4 * max(1, max|naive|) for f32 KV and f32 or bf16 weights (the naive
// model reads the same rounded weights and, where the amx or avx512-bf16 kernels round a
// matmul's input x to bf16, rounds the same x: see naive_matvec; with bf16 weights on those
// paths 4e-3, as an x at a rounding midpoint may round apart: see the test).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "engine/model-runner.h"
#include "kernels/cpu/cpu-kernels.h"
#include "test-harness.h"

using namespace llm;

namespace {

std::mt19937& rng() {
  static std::mt19937 gen(4321);
  return gen;
}

float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng()); }

// ---------------------------------------------------------------------------------------------
// A tiny random model that owns its weight buffers.

// One weight matrix stored in `dtype`, plus its rounded values in double for the naive model.
struct Weight {
  int64_t rows = 0, cols = 0;
  DType dtype = DType::f32;
  std::vector<uint8_t> bytes;
  std::vector<double> values;  // (rows, cols)

  Tensor tensor() const {
    Tensor t;
    t.data = bytes.data();
    t.dtype = dtype;
    t.rows = rows;
    t.cols = cols;
    return t;
  }
  double at(int64_t r, int64_t c) const { return values[r * cols + c]; }
};

std::unique_ptr<Weight> random_weight(DType dt, int64_t rows, int64_t cols, float lo, float hi) {
  auto w = std::make_unique<Weight>();
  w->rows = rows;
  w->cols = cols;
  w->dtype = dt;
  w->bytes.resize(static_cast<size_t>(rows * cols * dtype_size(dt)));
  w->values.resize(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows * cols; ++i) {
    store_f32(w->bytes.data(), dt, i, uniform(lo, hi));
    w->values[i] = load_f32(w->bytes.data(), dt, i);
  }
  return w;
}

struct NaiveLayer {
  const Weight *attn_norm, *wq, *wk, *wv, *bq, *bk, *bv, *wo, *q_norm, *k_norm, *mlp_norm, *w_gate, *w_up, *w_down;
};

struct TinyModel {
  Model model;
  std::vector<std::unique_ptr<Weight>> storage;
  std::vector<NaiveLayer> layers;
  const Weight *embed = nullptr, *final_norm = nullptr, *lm_head = nullptr;

  const Weight* add(DType dt, int64_t rows, int64_t cols, float lo, float hi) {
    storage.push_back(random_weight(dt, rows, cols, lo, hi));
    return storage.back().get();
  }
};

enum class Flavor { llama_gqa_llama3, mistral_window_linear, qwen2_bias_tied, qwen3_qknorm_yarn };

std::unique_ptr<TinyModel> make_tiny_model(Flavor flavor, DType dt) {
  auto m = std::make_unique<TinyModel>();
  ModelConfig& c = m->model.config;
  c.vocab_size = 97;
  c.num_layers = 3;
  c.rms_norm_eps = 1e-5f;
  c.max_position_embeddings = 256;
  c.dtype = dt;
  switch (flavor) {
    case Flavor::llama_gqa_llama3:
      c.arch = ModelArch::llama;
      c.architecture = "LlamaForCausalLM";
      c.num_heads = 6;
      c.num_kv_heads = 2;
      c.head_dim = 16;
      c.intermediate_size = 160;
      c.rope_theta = 500000.0f;
      // original 64: wavelengths 2pi..~1e5 fall in all three llama3 bands (< 16, 16..64, > 64)
      c.rope_scaling = {RopeScalingType::llama3, 8.0f, 1.0f, 4.0f, 64};
      break;
    case Flavor::mistral_window_linear:
      c.arch = ModelArch::mistral;
      c.architecture = "MistralForCausalLM";
      c.num_heads = 4;
      c.num_kv_heads = 1;
      c.head_dim = 16;
      c.intermediate_size = 96;
      c.sliding_window = 6;
      c.rope_scaling.type = RopeScalingType::linear;
      c.rope_scaling.factor = 2.0f;
      break;
    case Flavor::qwen2_bias_tied:
      c.arch = ModelArch::qwen2;
      c.architecture = "Qwen2ForCausalLM";
      c.num_heads = 4;
      c.num_kv_heads = 2;
      c.head_dim = 32;
      c.intermediate_size = 200;
      c.rope_theta = 1000000.0f;
      c.tie_word_embeddings = true;
      c.attention_bias = true;
      break;
    case Flavor::qwen3_qknorm_yarn:
      c.arch = ModelArch::qwen3;
      c.architecture = "Qwen3ForCausalLM";
      c.num_heads = 4;
      c.num_kv_heads = 2;
      c.head_dim = 32;  // hidden_size 64 below: q is twice as wide as the residual stream
      c.intermediate_size = 96;
      c.rope_theta = 1000000.0f;
      c.tie_word_embeddings = true;
      c.qk_norm = true;
      // yarn over an original 32 positions: at head_dim 32 and theta 1e6 the ramp runs from pair
      // 3 to 8, so all three regions occur; attention factor 0.1 ln 4 + 1.
      c.rope_scaling.type = RopeScalingType::yarn;
      c.rope_scaling.factor = 4.0f;
      c.rope_scaling.original_max_position_embeddings = 32;
      c.rope_scaling.attention_factor = static_cast<float>(0.1 * std::log(4.0) + 1.0);
      break;
  }
  c.hidden_size = c.qk_norm ? 64 : c.num_heads * c.head_dim;
  const int64_t D = c.hidden_size, F = c.intermediate_size;
  const int64_t q_dim = c.num_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  const float wd = 1.0f / std::sqrt(static_cast<float>(D)), wf = 1.0f / std::sqrt(static_cast<float>(F));

  ModelWeights& w = m->model.weights;
  m->embed = m->add(dt, c.vocab_size, D, -1.0f, 1.0f);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    NaiveLayer nl{};
    nl.attn_norm = m->add(dt, 1, D, 0.8f, 1.2f);
    nl.wq = m->add(dt, q_dim, D, -wd, wd);
    nl.wk = m->add(dt, kv_dim, D, -wd, wd);
    nl.wv = m->add(dt, kv_dim, D, -wd, wd);
    if (c.attention_bias) {
      nl.bq = m->add(dt, 1, q_dim, -0.5f, 0.5f);
      nl.bk = m->add(dt, 1, kv_dim, -0.5f, 0.5f);
      nl.bv = m->add(dt, 1, kv_dim, -0.5f, 0.5f);
    }
    nl.wo = m->add(dt, D, q_dim, -wd, wd);
    if (c.qk_norm) {
      nl.q_norm = m->add(dt, 1, c.head_dim, 0.8f, 1.2f);
      nl.k_norm = m->add(dt, 1, c.head_dim, 0.8f, 1.2f);
    }
    nl.mlp_norm = m->add(dt, 1, D, 0.8f, 1.2f);
    nl.w_gate = m->add(dt, F, D, -wd, wd);
    nl.w_up = m->add(dt, F, D, -wd, wd);
    nl.w_down = m->add(dt, D, F, -wf, wf);
    m->layers.push_back(nl);

    LayerWeights lw;
    lw.attn_norm = nl.attn_norm->tensor();
    lw.wq = nl.wq->tensor();
    lw.wk = nl.wk->tensor();
    lw.wv = nl.wv->tensor();
    if (c.attention_bias) {
      lw.bq = nl.bq->tensor();
      lw.bk = nl.bk->tensor();
      lw.bv = nl.bv->tensor();
    }
    lw.wo = nl.wo->tensor();
    if (c.qk_norm) {
      lw.q_norm = nl.q_norm->tensor();
      lw.k_norm = nl.k_norm->tensor();
    }
    lw.mlp_norm = nl.mlp_norm->tensor();
    lw.w_gate = nl.w_gate->tensor();
    lw.w_up = nl.w_up->tensor();
    lw.w_down = nl.w_down->tensor();
    w.layers.push_back(lw);
  }
  m->final_norm = m->add(dt, 1, D, 0.8f, 1.2f);
  m->lm_head = c.tie_word_embeddings ? m->embed : m->add(dt, c.vocab_size, D, -wd, wd);
  w.embed = m->embed->tensor();
  w.final_norm = m->final_norm->tensor();
  w.lm_head = m->lm_head->tensor();
  return m;
}

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t& x : t) x = static_cast<int32_t>(std::uniform_int_distribution<int64_t>(0, vocab - 1)(rng()));
  return t;
}

// ---------------------------------------------------------------------------------------------
// Naive dense transformer in double: one sequence, K/V kept per position, no paging.

// rope_inv_freq written out independently, following Hugging Face's code line by line.
std::vector<double> hf_inv_freq(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<double> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv[i] = 1.0 / std::pow(static_cast<double>(c.rope_theta), 2.0 * i / c.head_dim);
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type == RopeScalingType::linear) {
    for (double& f : inv) f /= rs.factor;
  } else if (rs.type == RopeScalingType::llama3) {
    const double old_len = static_cast<double>(rs.original_max_position_embeddings);
    const double low_freq_wavelen = old_len / rs.low_freq_factor, high_freq_wavelen = old_len / rs.high_freq_factor;
    for (double& f : inv) {
      const double wavelen = 2.0 * M_PI / f;
      // inv_freq_llama = where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
      const double llama = wavelen > low_freq_wavelen ? f / rs.factor : f;
      const double smooth = (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
      const double smoothed = (1.0 - smooth) * llama / rs.factor + smooth * llama;
      const bool is_medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
      f = is_medium ? smoothed : llama;
    }
  } else if (rs.type == RopeScalingType::yarn) {
    const double dim = static_cast<double>(c.head_dim), base = c.rope_theta;
    const double original = static_cast<double>(rs.original_max_position_embeddings);
    auto correction_dim = [&](double rotations) {
      return dim * std::log(original / (rotations * 2 * M_PI)) / (2 * std::log(base));
    };
    double low = std::floor(correction_dim(rs.beta_fast)), high = std::ceil(correction_dim(rs.beta_slow));
    low = std::max(low, 0.0);
    high = std::min(high, dim - 1);
    if (low == high) high += 0.001;
    for (int64_t i = 0; i < half; ++i) {
      const double ramp = std::min(1.0, std::max(0.0, (i - low) / (high - low)));
      const double extrapolation_factor = 1 - ramp;
      inv[i] = inv[i] / rs.factor * (1 - extrapolation_factor) + inv[i] * extrapolation_factor;
    }
  }
  return inv;
}

using Vec = std::vector<double>;

Vec naive_rmsnorm(const Vec& x, const Weight& g, double eps) {
  double ss = 0.0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / x.size() + eps);
  Vec out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] * inv * g.values[i];
  return out;
}

// Whether the runner's kernels round a matmul's x to bf16 (one term) for weight w: the amx path
// (cpu-amx.cc) and avx512-bf16 (cpu-avx512-bf16.cc), for every bf16 weight. The naive model
// then does the same, so that (d) compares like with like (see its bounds).
bool kernels_round_x(const Weight& w) {
  const std::string name = cpu::cpu_kernels().name;
  if (w.dtype != DType::bf16) return false;
  return name == "avx512-bf16" || name == "amx" || name == "amx-bf16";
}

Vec naive_matvec(const Weight& w, const Vec& x_in, const Weight* bias) {
  Vec x = x_in;
  if (kernels_round_x(w))
    for (double& e : x) e = bf16_to_f32(f32_to_bf16(static_cast<float>(e)));
  Vec y(static_cast<size_t>(w.rows), 0.0);
  for (int64_t r = 0; r < w.rows; ++r) {
    double s = bias ? bias->values[r] : 0.0;
    for (int64_t c = 0; c < w.cols; ++c) s += w.at(r, c) * x[c];
    y[r] = s;
  }
  return y;
}

void naive_rope(Vec& x, int64_t heads, int64_t hd, int64_t pos, const Vec& inv_freq, double scale) {
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < hd / 2; ++i) {
      const double angle = pos * inv_freq[i];
      double& a = x[h * hd + i];
      double& b = x[h * hd + i + hd / 2];
      const double a0 = a, b0 = b;
      a = scale * (a0 * std::cos(angle) - b0 * std::sin(angle));
      b = scale * (b0 * std::cos(angle) + a0 * std::sin(angle));
    }
}

// Qwen3's per-head norm: each head_dim slice of x through RMSNorm with g.
void naive_head_norm(Vec& x, int64_t heads, int64_t hd, const Weight& g, double eps) {
  for (int64_t h = 0; h < heads; ++h) {
    const Vec head(x.begin() + h * hd, x.begin() + (h + 1) * hd);
    const Vec normed = naive_rmsnorm(head, g, eps);
    std::copy(normed.begin(), normed.end(), x.begin() + h * hd);
  }
}

// Logits (T, vocab) for every position of one sequence.
std::vector<Vec> naive_forward(const TinyModel& m, const std::vector<int32_t>& tokens) {
  const ModelConfig& c = m.model.config;
  const int64_t T = static_cast<int64_t>(tokens.size()), D = c.hidden_size, hd = c.head_dim;
  const int64_t H = c.num_heads, group = c.num_heads / c.num_kv_heads;
  const Vec inv_freq = hf_inv_freq(c);
  std::vector<Vec> x(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) x[t] = Vec(m.embed->values.begin() + tokens[t] * D, m.embed->values.begin() + (tokens[t] + 1) * D);
  for (const NaiveLayer& L : m.layers) {
    std::vector<Vec> q(T), k(T), v(T);
    for (int64_t t = 0; t < T; ++t) {
      const Vec xb = naive_rmsnorm(x[t], *L.attn_norm, c.rms_norm_eps);
      q[t] = naive_matvec(*L.wq, xb, L.bq);
      k[t] = naive_matvec(*L.wk, xb, L.bk);
      v[t] = naive_matvec(*L.wv, xb, L.bv);
      if (L.q_norm) {
        naive_head_norm(q[t], H, hd, *L.q_norm, c.rms_norm_eps);
        naive_head_norm(k[t], c.num_kv_heads, hd, *L.k_norm, c.rms_norm_eps);
      }
      naive_rope(q[t], H, hd, t, inv_freq, c.rope_scaling.attention_factor);
      naive_rope(k[t], c.num_kv_heads, hd, t, inv_freq, c.rope_scaling.attention_factor);
    }
    for (int64_t t = 0; t < T; ++t) {
      Vec att(static_cast<size_t>(H * hd), 0.0);
      for (int64_t h = 0; h < H; ++h) {
        const int64_t kvh = h / group;
        const int64_t first = c.sliding_window > 0 ? std::max<int64_t>(0, t - c.sliding_window + 1) : 0;
        Vec p;
        for (int64_t j = first; j <= t; ++j) {
          double s = 0.0;
          for (int64_t d = 0; d < hd; ++d) s += q[t][h * hd + d] * k[j][kvh * hd + d];
          p.push_back(s / std::sqrt(static_cast<double>(hd)));
        }
        const double mx = *std::max_element(p.begin(), p.end());
        double sum = 0.0;
        for (double& e : p) sum += (e = std::exp(e - mx));
        for (int64_t j = first; j <= t; ++j)
          for (int64_t d = 0; d < hd; ++d) att[h * hd + d] += p[j - first] / sum * v[j][kvh * hd + d];
      }
      const Vec o = naive_matvec(*L.wo, att, nullptr);
      for (int64_t d = 0; d < D; ++d) x[t][d] += o[d];
    }
    for (int64_t t = 0; t < T; ++t) {
      const Vec xb = naive_rmsnorm(x[t], *L.mlp_norm, c.rms_norm_eps);
      const Vec g = naive_matvec(*L.w_gate, xb, nullptr), u = naive_matvec(*L.w_up, xb, nullptr);
      Vec hb(g.size());
      for (size_t i = 0; i < g.size(); ++i) hb[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      const Vec down = naive_matvec(*L.w_down, hb, nullptr);
      for (int64_t d = 0; d < D; ++d) x[t][d] += down[d];
    }
  }
  std::vector<Vec> logits(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) logits[t] = naive_matvec(*m.lm_head, naive_rmsnorm(x[t], *m.final_norm, c.rms_norm_eps), nullptr);
  return logits;
}

// ---------------------------------------------------------------------------------------------
// Driving the paged runner like the engine does.

struct KvPool {
  std::vector<uint8_t> bytes;
  KVCacheView view;
  KvPool(const ModelConfig& c, DType dt, int64_t num_blocks, int64_t block_size) {
    view.dtype = dt;
    view.num_blocks = num_blocks;
    view.num_layers = c.num_layers;
    view.block_size = block_size;
    view.num_kv_heads = c.num_kv_heads;
    view.head_dim = c.head_dim;
    bytes.assign(static_cast<size_t>(num_blocks * view.block_bytes()), 0);
    view.data = bytes.data();
  }
};

struct Seq {
  Seq(std::vector<int32_t> t, std::vector<int32_t> table) : tokens(std::move(t)), block_table(std::move(table)) {}
  std::vector<int32_t> tokens;
  std::vector<int32_t> block_table;
  int64_t num_computed_tokens = 0;
  std::vector<std::vector<float>> logits;  // (position) -> (vocab), filled as steps run
};

// One step: each (seq, n) computes the next n tokens of seq; logits come back for every one.
struct Work {
  Seq* seq;
  int64_t num_new_tokens;
};

Status run_step(ModelRunner& runner, int64_t block_size, int64_t vocab, const std::vector<Work>& work) {
  std::vector<int32_t> token_ids, positions, qsl{0}, seq_lens, block_tables, logits_indices;
  std::vector<int64_t> slot_mapping;
  int64_t max_blocks = 0;
  for (const Work& w : work) max_blocks = std::max<int64_t>(max_blocks, w.seq->block_table.size());
  for (const Work& w : work) {
    Seq& s = *w.seq;
    for (int64_t pos = s.num_computed_tokens; pos < s.num_computed_tokens + w.num_new_tokens; ++pos) {
      logits_indices.push_back(static_cast<int32_t>(token_ids.size()));
      token_ids.push_back(s.tokens[pos]);
      positions.push_back(static_cast<int32_t>(pos));
      slot_mapping.push_back(static_cast<int64_t>(s.block_table[pos / block_size]) * block_size + pos % block_size);
    }
    qsl.push_back(static_cast<int32_t>(token_ids.size()));
    seq_lens.push_back(static_cast<int32_t>(s.num_computed_tokens + w.num_new_tokens));
    std::vector<int32_t> row = s.block_table;
    row.resize(static_cast<size_t>(max_blocks), 0);
    block_tables.insert(block_tables.end(), row.begin(), row.end());
  }
  ForwardBatch b;
  b.num_tokens = static_cast<int64_t>(token_ids.size());
  b.token_ids = token_ids.data();
  b.positions = positions.data();
  b.slot_mapping = slot_mapping.data();
  b.num_seqs = static_cast<int64_t>(work.size());
  b.query_start_loc = qsl.data();
  b.seq_lens = seq_lens.data();
  b.block_tables = block_tables.data();
  b.max_blocks_per_seq = max_blocks;
  b.num_logits = b.num_tokens;
  b.logits_indices = logits_indices.data();
  std::vector<float> logits(static_cast<size_t>(b.num_tokens * vocab));
  LLM_RETURN_IF_ERROR(runner.forward(b, logits.data()));
  int64_t row = 0;
  for (const Work& w : work) {
    for (int64_t i = 0; i < w.num_new_tokens; ++i, ++row)
      w.seq->logits.emplace_back(logits.begin() + row * vocab, logits.begin() + (row + 1) * vocab);
    w.seq->num_computed_tokens += w.num_new_tokens;
  }
  return Status::Ok();
}

std::vector<int32_t> contiguous_table(int64_t first, int64_t n) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), static_cast<int32_t>(first));
  return t;
}

std::vector<int32_t> permuted_table(int64_t num_blocks, int64_t n) {
  std::vector<int32_t> ids = contiguous_table(0, num_blocks);
  std::shuffle(ids.begin(), ids.end(), rng());
  ids.resize(static_cast<size_t>(n));
  return ids;
}

// max |a - b| over all positions and vocab entries, relative to max(1, max |b|).
double logits_diff(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  if (a.size() != b.size() || a.empty()) return INFINITY;
  double worst = 0.0, scale = 1.0;
  for (size_t t = 0; t < a.size(); ++t)
    for (size_t i = 0; i < a[t].size(); ++i) {
      const double d = std::fabs(static_cast<double>(a[t][i]) - b[t][i]);
      worst = std::isnan(d) ? INFINITY : std::max(worst, d);
      scale = std::max(scale, std::fabs(static_cast<double>(b[t][i])));
    }
  return worst / scale;
}

double logits_diff(const std::vector<std::vector<float>>& a, const std::vector<Vec>& ref) {
  std::vector<std::vector<float>> b(ref.size());
  for (size_t t = 0; t < ref.size(); ++t) b[t].assign(ref[t].begin(), ref[t].end());
  return logits_diff(a, b);
}

const Flavor kFlavors[] = {Flavor::llama_gqa_llama3, Flavor::mistral_window_linear, Flavor::qwen2_bias_tied,
                           Flavor::qwen3_qknorm_yarn};
const char* flavor_name(Flavor f) {
  switch (f) {
    case Flavor::llama_gqa_llama3: return "llama";
    case Flavor::mistral_window_linear: return "mistral";
    case Flavor::qwen2_bias_tied: return "qwen2";
    case Flavor::qwen3_qknorm_yarn: return "qwen3";
  }
  return "?";
}

double bound_for(DType kv_dtype) { return kv_dtype == DType::f32 ? 1e-4 : 2e-2; }

CpuRunnerOptions three_threads() {
  CpuRunnerOptions o;
  o.num_threads = 3;
  return o;
}

// `what` names the check, dt the dtype it varies (KV pool or weights).
bool check_diff(const char* what, Flavor f, DType dt, double diff, double bound) {
  if (!(diff <= bound))
    std::printf("  %s %s %s: relative difference %g > %g\n", what, flavor_name(f), dtype_name(dt), diff, bound);
  return diff <= bound;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

TEST(rope_inv_freq_follows_hugging_face) {
  for (Flavor f : kFlavors) {
    auto m = make_tiny_model(f, DType::f32);
    const std::vector<float> got = rope_inv_freq(m->model.config);
    const Vec want = hf_inv_freq(m->model.config);
    CHECK_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size() && i < want.size(); ++i) CHECK_NEAR(got[i], want[i], 1e-6 * want[i]);
  }
  // Llama 3.1's published setting: the highest frequency is kept, the lowest divided by 8.
  ModelConfig c;
  c.head_dim = 128;
  c.rope_theta = 500000.0f;
  c.rope_scaling = {RopeScalingType::llama3, 8.0f, 1.0f, 4.0f, 8192};
  const std::vector<float> inv = rope_inv_freq(c);
  CHECK_NEAR(inv[0], 1.0, 1e-7);
  CHECK_NEAR(inv[63], 1.0 / std::pow(500000.0, 126.0 / 128.0) / 8.0, 1e-12);
}

TEST(a_one_step_prompt_equals_chunked_prefill_then_decode) {
  const int64_t block_size = 4, n = 23;
  for (Flavor f : kFlavors)
    for (DType kv_dtype : {DType::f32, DType::bf16}) {
      auto m = make_tiny_model(f, DType::f32);
      const int64_t vocab = m->model.config.vocab_size;
      const std::vector<int32_t> tokens = random_tokens(n, vocab);
      const int64_t blocks = (n + block_size - 1) / block_size;

      KvPool pool_a(m->model.config, kv_dtype, blocks, block_size);
      auto runner_a = make_cpu_runner(m->model, pool_a.view, three_threads());
      Seq whole{tokens, contiguous_table(0, blocks)};
      CHECK(run_step(*runner_a, block_size, vocab, {{&whole, n}}).ok());

      KvPool pool_b(m->model.config, kv_dtype, blocks, block_size);
      auto runner_b = make_cpu_runner(m->model, pool_b.view, three_threads());
      Seq chunked{tokens, contiguous_table(0, blocks)};
      for (int64_t chunk : {9, 6}) CHECK(run_step(*runner_b, block_size, vocab, {{&chunked, chunk}}).ok());
      while (chunked.num_computed_tokens < n) CHECK(run_step(*runner_b, block_size, vocab, {{&chunked, 1}}).ok());

      CHECK(check_diff("chunked", f, kv_dtype, logits_diff(chunked.logits, whole.logits), bound_for(kv_dtype)));
    }
}

TEST(b_permuted_block_table_equals_contiguous) {
  const int64_t block_size = 3, n = 20, num_blocks = 17;
  for (Flavor f : kFlavors)
    for (DType kv_dtype : {DType::f32, DType::bf16}) {
      auto m = make_tiny_model(f, DType::bf16);
      const int64_t vocab = m->model.config.vocab_size;
      const std::vector<int32_t> tokens = random_tokens(n, vocab);
      const int64_t blocks = (n + block_size - 1) / block_size;
      std::vector<std::vector<std::vector<float>>> results;
      for (bool permuted : {false, true}) {
        KvPool pool(m->model.config, kv_dtype, num_blocks, block_size);
        auto runner = make_cpu_runner(m->model, pool.view, three_threads());
        Seq s{tokens, permuted ? permuted_table(num_blocks, blocks) : contiguous_table(0, blocks)};
        for (int64_t chunk : {8, 7, 1, 1, 1, 1, 1}) CHECK(run_step(*runner, block_size, vocab, {{&s, chunk}}).ok());
        results.push_back(s.logits);
      }
      CHECK(check_diff("permuted", f, kv_dtype, logits_diff(results[1], results[0]), bound_for(kv_dtype)));
    }
}

TEST(c_batched_sequences_equal_each_alone) {
  const int64_t block_size = 4, num_blocks = 16;
  for (Flavor f : kFlavors)
    for (DType kv_dtype : {DType::f32, DType::bf16}) {
      auto m = make_tiny_model(f, DType::f32);
      const int64_t vocab = m->model.config.vocab_size;
      const std::vector<int32_t> tokens_a = random_tokens(19, vocab), tokens_b = random_tokens(11, vocab);

      // Each alone, whole prompt in one step.
      KvPool pool_alone(m->model.config, kv_dtype, num_blocks, block_size);
      auto alone = make_cpu_runner(m->model, pool_alone.view, three_threads());
      Seq a_alone{tokens_a, contiguous_table(0, 5)}, b_alone{tokens_b, contiguous_table(5, 3)};
      CHECK(run_step(*alone, block_size, vocab, {{&a_alone, 19}}).ok());
      CHECK(run_step(*alone, block_size, vocab, {{&b_alone, 11}}).ok());

      // Together, sharing one pool and every step: prefill chunks, a decode beside a chunk, ...
      KvPool pool_both(m->model.config, kv_dtype, num_blocks, block_size);
      auto both = make_cpu_runner(m->model, pool_both.view, three_threads());
      const std::vector<int32_t> ids = permuted_table(num_blocks, 8);
      Seq a{tokens_a, {ids.begin(), ids.begin() + 5}}, b{tokens_b, {ids.begin() + 5, ids.end()}};
      CHECK(run_step(*both, block_size, vocab, {{&a, 10}, {&b, 6}}).ok());
      CHECK(run_step(*both, block_size, vocab, {{&b, 1}, {&a, 9}}).ok());
      CHECK(run_step(*both, block_size, vocab, {{&a, 0}, {&b, 4}}).ok());

      CHECK(check_diff("batched a", f, kv_dtype, logits_diff(a.logits, a_alone.logits), bound_for(kv_dtype)));
      CHECK(check_diff("batched b", f, kv_dtype, logits_diff(b.logits, b_alone.logits), bound_for(kv_dtype)));
    }
}

TEST(d_forward_matches_naive_dense_transformer) {
  const int64_t block_size = 4, n = 21;
  for (Flavor f : kFlavors)
    for (DType weight_dtype : {DType::f32, DType::bf16}) {
      auto m = make_tiny_model(f, weight_dtype);
      const int64_t vocab = m->model.config.vocab_size;
      const std::vector<int32_t> tokens = random_tokens(n, vocab);
      KvPool pool(m->model.config, DType::f32, 8, block_size);
      auto runner = make_cpu_runner(m->model, pool.view, three_threads());
      Seq s{tokens, permuted_table(8, 6)};
      for (int64_t chunk : {13, 5, 1, 1, 1}) CHECK(run_step(*runner, block_size, vocab, {{&s, chunk}}).ok());
      const double diff = logits_diff(s.logits, naive_forward(*m, tokens));
      // Where the kernels round x to bf16, the naive model rounds the same x, but x values built
      // from bf16 products often lie within a few fp32 ulps of a bf16 rounding midpoint, where
      // the runner's fp32 x and the naive's double x round apart, more or less often with the
      // kernel's fp32 summation order: each such element moves a matvec by up to 2^-8 |x w|,
      // and the flips compound over the layers (to ~2e-3 on the avx512-bf16 path), so those
      // paths get 4e-3 here. What holds each rounding kernel to its precision is
      // test-kernels-fast (bf16-rounded x, 3e-5 of the products' magnitude); f32 weights hold
      // the forward pass itself to 1e-4 on every path.
      const bool rounded = weight_dtype == DType::bf16 && kernels_round_x(*m->layers[0].wq);
      CHECK(check_diff("naive", f, weight_dtype, diff, rounded ? 4e-3 : 1e-4));
    }
}

// The weights as the runner prepares them for its path (cpu-weights.h: packed layout, fused
// gate/up and q/k/v where the path fuses) give the same bits as the weights as loaded, over
// prefill chunks and decode steps. On paths without a packed layout both runs are the same.
TEST(e_prepared_weights_give_the_same_logits_as_loaded) {
  const int64_t block_size = 4, n = 21;
  for (Flavor f : kFlavors) {
    auto m = make_tiny_model(f, DType::bf16);
    const int64_t vocab = m->model.config.vocab_size;
    const std::vector<int32_t> tokens = random_tokens(n, vocab);
    std::vector<std::vector<std::vector<float>>> results;
    for (bool prepared : {false, true}) {
      KvPool pool(m->model.config, DType::bf16, 8, block_size);
      CpuRunnerOptions o = three_threads();
      o.tile_weights = prepared;
      auto runner = make_cpu_runner(m->model, pool.view, o);
      if (prepared) std::printf("  %s: %s\n", flavor_name(f), runner->describe().c_str());
      Seq s{tokens, permuted_table(8, 6)};
      for (int64_t chunk : {13, 5, 1, 1, 1}) CHECK(run_step(*runner, block_size, vocab, {{&s, chunk}}).ok());
      results.push_back(s.logits);
    }
    CHECK(results[0] == results[1]);
  }
}

TEST(bad_batches_are_rejected_without_touching_memory) {
  auto m = make_tiny_model(Flavor::llama_gqa_llama3, DType::f32);
  const ModelConfig& c = m->model.config;
  const int64_t block_size = 4;
  KvPool pool(c, DType::f32, 2, block_size);
  auto runner = make_cpu_runner(m->model, pool.view, three_threads());

  // A valid two-token batch (slots 4 and 5 of block 1, logits of the last), broken one field at a time.
  auto valid = [&] { return SingleSequenceBatch({5, 6}, 0, {1, 0}, block_size, /*all_logits=*/false); };
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  auto expect_invalid = [&](const SingleSequenceBatch& fields, const char* what) {
    const Status st = runner->forward(fields.batch(), logits.data());
    if (st.code() != StatusCode::invalid_argument) std::printf("  %s was not rejected\n", what);
    CHECK(st.code() == StatusCode::invalid_argument);
  };
  SingleSequenceBatch f = valid();
  f.token_ids[1] = static_cast<int32_t>(c.vocab_size);
  expect_invalid(f, "token id == vocab");
  f = valid();
  f.token_ids[0] = -1;
  expect_invalid(f, "negative token id");
  f = valid();
  f.block_table[0] = 2;
  f.slot_mapping = {8, 9};
  expect_invalid(f, "block id outside the pool");
  f = valid();
  f.slot_mapping[1] = 2;
  expect_invalid(f, "slot not where the block table puts it");
  f = valid();
  f.seq_lens[0] = 1;
  expect_invalid(f, "seq_len shorter than the new tokens");
  f = valid();
  f.seq_lens[0] = 9;
  expect_invalid(f, "seq_len beyond the block table");
  f = valid();
  f.positions[1] = 5;
  expect_invalid(f, "position inconsistent with seq_len");
  f = valid();
  f.query_start_loc[1] = 3;
  expect_invalid(f, "query_start_loc past num_tokens");
  f = valid();
  f.logits_indices[0] = 2;
  expect_invalid(f, "logits index outside the batch");

  // Padding slots are allowed, and the runner still works after the rejections.
  f = valid();
  f.slot_mapping[0] = -1;
  CHECK(runner->forward(f.batch(), logits.data()).ok());
  f = valid();
  CHECK(runner->forward(f.batch(), logits.data()).ok());
  ForwardBatch empty;
  CHECK(runner->forward(empty, nullptr).ok());
}

int main() { return llm_test::run_all(); }
