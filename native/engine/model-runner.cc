// model-runner.cc: what every ModelRunner shares (model-runner.h): rotary frequencies, batch
// validation, and the host-side greedy fallback.
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "model-runner.h"

namespace llm {

namespace {
Status invalid(const std::string& message) { return Status(StatusCode::invalid_argument, message); }
}  // namespace

// ---------------------------------------------------------------------------------------------
// Rotary frequencies

constexpr double kPi = 3.14159265358979323846;

// transformers' yarn find_correction_dim: the dimension whose wavelength turns `rotations` times
// over the original context.
double yarn_correction_dim(double rotations, double dim, double base, double original) {
  return dim * std::log(original / (rotations * 2.0 * kPi)) / (2.0 * std::log(base));
}

std::vector<float> rope_inv_freq(const ModelConfig& cfg) {
  const int64_t half = cfg.head_dim / 2;
  const double dim = static_cast<double>(cfg.head_dim);
  const double base = static_cast<double>(cfg.rope_theta);
  const RopeScaling& rs = cfg.rope_scaling;
  // yarn's ramp over the pairs: [low, high] blends interpolated into extrapolated frequencies.
  double yarn_low = 0, yarn_high = 0;
  if (rs.type == RopeScalingType::yarn) {
    const double original = static_cast<double>(rs.original_max_position_embeddings);
    yarn_low = yarn_correction_dim(rs.beta_fast, dim, base, original);
    yarn_high = yarn_correction_dim(rs.beta_slow, dim, base, original);
    if (rs.truncate) {
      yarn_low = std::floor(yarn_low);
      yarn_high = std::ceil(yarn_high);
    }
    yarn_low = std::max(yarn_low, 0.0);
    yarn_high = std::min(yarn_high, dim - 1);
    if (yarn_low == yarn_high) yarn_high += 0.001;  // as transformers: no division by zero
  }
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    // inv_freq_i = 1 / theta^(2i / head_dim)
    double f = 1.0 / std::pow(base, 2.0 * i / dim);
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
    } else if (rs.type == RopeScalingType::yarn) {
      // yarn (HF _compute_yarn_parameters): pairs below `low` keep their frequency
      // (extrapolation), pairs above `high` are slowed by `factor` (interpolation), a linear
      // ramp between.
      const double ramp = std::clamp((static_cast<double>(i) - yarn_low) / (yarn_high - yarn_low), 0.0, 1.0);
      const double extrapolation = 1.0 - ramp;
      f = f / rs.factor * (1.0 - extrapolation) + f * extrapolation;
    }
    // dynamic: transformers' dynamic NTK changes the base only for sequences longer than
    // max_position_embeddings, which the engine never runs: the default frequencies.
    inv_freq[static_cast<size_t>(i)] = static_cast<float>(f);
  }
  return inv_freq;
}

// Checks everything a kernel will index with, so that a bad batch is an error, never a stray
// read or write: token ids, query_start_loc, seq_lens, the block ids each sequence's context
// needs, positions, slot_mapping (each slot must be where its position lives in the block
// table, or negative = padding) and logits_indices.
Status validate_forward_batch(const Model& model, int64_t num_heads, int64_t num_kv_heads, const KVCacheView& kv,
                              const ForwardBatch& b) {
  const ModelConfig& c = model.config;
  if (static_cast<int64_t>(model.weights.layers.size()) != c.num_layers)
    return invalid("the model has " + std::to_string(model.weights.layers.size()) + " layers of weights, its config " +
                   std::to_string(c.num_layers));
  if (num_heads <= 0 || num_kv_heads <= 0 || num_heads % num_kv_heads != 0 || c.head_dim % 2 != 0)
    return invalid("the model's head counts or head_dim are inconsistent");
  if (kv.data == nullptr || kv.block_size <= 0 || kv.num_layers < c.num_layers ||
      kv.num_kv_heads != num_kv_heads || kv.head_dim != c.head_dim)
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

SingleSequenceBatch::SingleSequenceBatch(std::vector<int32_t> tokens, int64_t start, std::vector<int32_t> table,
                                         int64_t block_size, bool all_logits)
    : token_ids(std::move(tokens)), block_table(std::move(table)) {
  const int64_t n = static_cast<int64_t>(token_ids.size());
  query_start_loc = {0, static_cast<int32_t>(n)};
  seq_lens = {static_cast<int32_t>(start + n)};
  for (int64_t i = 0; i < n; ++i) {
    const int64_t pos = start + i;
    positions.push_back(static_cast<int32_t>(pos));
    // A position past the table gets slot -1 (nothing written): validation then reports it.
    const int64_t b = pos / block_size;
    slot_mapping.push_back(b < static_cast<int64_t>(block_table.size())
                               ? static_cast<int64_t>(block_table[static_cast<size_t>(b)]) * block_size + pos % block_size
                               : -1);
    if (all_logits || i == n - 1) logits_indices.push_back(static_cast<int32_t>(i));
  }
}

ForwardBatch SingleSequenceBatch::batch() const {
  ForwardBatch fb;
  fb.num_tokens = static_cast<int64_t>(token_ids.size());
  fb.token_ids = token_ids.data();
  fb.positions = positions.data();
  fb.slot_mapping = slot_mapping.data();
  fb.num_seqs = 1;
  fb.query_start_loc = query_start_loc.data();
  fb.seq_lens = seq_lens.data();
  fb.block_tables = block_table.data();
  fb.max_blocks_per_seq = static_cast<int64_t>(block_table.size());
  fb.num_logits = static_cast<int64_t>(logits_indices.size());
  fb.logits_indices = logits_indices.data();
  return fb;
}

KVCacheView make_kv_view(const ModelConfig& c, void* data, int64_t num_blocks, int64_t block_size) {
  KVCacheView v;
  v.data = data;
  v.dtype = c.dtype;
  v.num_blocks = num_blocks;
  v.num_layers = c.num_layers;
  v.block_size = block_size;
  v.num_kv_heads = c.num_kv_heads;
  v.head_dim = c.head_dim;
  return v;
}

KVCacheView make_kv_view(const Model& m, void* data, int64_t num_blocks, int64_t block_size) {
  KVCacheView v = make_kv_view(m.config, data, num_blocks, block_size);
  v.num_kv_heads = m.shard.num_kv_heads;
  return v;
}

// The sampler's greedy choice (sampler.cc): NaN counts as -inf, the lowest id wins a tie.
Status ModelRunner::forward_greedy(const ForwardBatch& batch, int32_t* token_ids) {
  const int64_t vocab = vocab_size();
  greedy_logits_.resize(static_cast<size_t>(batch.num_logits * vocab));
  LLM_RETURN_IF_ERROR(forward(batch, greedy_logits_.data()));
  for (int64_t i = 0; i < batch.num_logits; ++i) {
    const float* row = greedy_logits_.data() + i * vocab;
    int32_t best = 0;
    float best_value = -INFINITY;
    for (int64_t v = 0; v < vocab; ++v)
      if (row[v] > best_value) {  // NaN never compares greater
        best_value = row[v];
        best = static_cast<int32_t>(v);
      }
    token_ids[i] = best;
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Tensor parallelism: the logits of every rank's vocabulary rows, on rank 0

Status gather_vocab_logits(const RankShard& shard, int64_t vocab, int64_t num_logits, const float* part,
                           const TpCollectives& tp, std::vector<float>* gathered, float* logits) {
  const size_t n = static_cast<size_t>(shard.size);
  std::vector<size_t> counts(n);
  std::vector<int64_t> begins(n);
  size_t total = 0;
  for (size_t r = 0; r < n; ++r) {
    int64_t count = 0;
    vocab_part(vocab, static_cast<int>(r), shard.size, &begins[r], &count);
    counts[r] = static_cast<size_t>(num_logits * count);
    total += counts[r];
  }
  if (shard.rank == 0) {
    try {
      gathered->resize(total);
    } catch (const std::bad_alloc&) {
      return Status(StatusCode::out_of_memory, "cannot allocate logits for " + std::to_string(num_logits) + " rows");
    }
  }
  LLM_RETURN_IF_ERROR(tp.gather(part, counts, shard.rank == 0 ? gathered->data() : nullptr));
  if (shard.rank != 0) return Status::Ok();
  // gathered: rank 0's [num_logits, count_0], then rank 1's, ...; logits: [num_logits, vocab]
  const float* from = gathered->data();
  for (size_t r = 0; r < n; ++r) {
    const int64_t cols = static_cast<int64_t>(counts[r]) / std::max<int64_t>(1, num_logits);
    for (int64_t i = 0; i < num_logits; ++i, from += cols) std::copy(from, from + cols, logits + i * vocab + begins[r]);
  }
  return Status::Ok();
}

}  // namespace llm
