// fuzz-model-config.cc: libFuzzer target for config.json and generation_config.json
// (native/model/model-config.*, through the JSON reader native/model/model-json.*).
//
// Input: the bytes of config.json, optionally followed by a NUL byte and the bytes of
// generation_config.json (no valid JSON text holds a raw NUL, so the split loses nothing).
// Each input is written to a scratch directory on tmpfs and read with load_model_config, the
// path-based entry point the loader uses. A refusal is fine; an accepted config must hold what
// model-config.h promises (every size inside its bound, num_heads a multiple of num_kv_heads, an
// even head_dim, token ids inside the vocabulary) and its numbers must be finite.
#include <cmath>
#include <cstring>

#include "fuzz-common.h"
#include "model/model-config.h"

namespace {

bool finite_positive(float v) { return std::isfinite(v) && v > 0; }

void check_invariants(const llm::ModelConfig& c) {
  constexpr int64_t kMaxDim = int64_t{1} << 24, kMaxVocab = int64_t{1} << 22;
  FUZZ_CHECK(c.architecture == llm::model_arch_name(c.arch));
  FUZZ_CHECK(c.vocab_size >= 1 && c.vocab_size <= kMaxVocab);
  for (int64_t v : {c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim,
                    c.max_position_embeddings})
    FUZZ_CHECK(v >= 1 && v <= kMaxDim);
  FUZZ_CHECK(c.num_layers >= 1 && c.num_layers <= 4096);
  FUZZ_CHECK(c.num_heads % c.num_kv_heads == 0);
  FUZZ_CHECK(c.head_dim % 2 == 0);
  FUZZ_CHECK(c.num_heads * c.head_dim <= kMaxDim);
  FUZZ_CHECK(c.sliding_window >= 0 && c.sliding_window <= kMaxDim);
  FUZZ_CHECK(finite_positive(c.rms_norm_eps) && c.rms_norm_eps < 1);
  FUZZ_CHECK(finite_positive(c.rope_theta));
  const llm::RopeScaling& r = c.rope_scaling;
  FUZZ_CHECK(finite_positive(r.factor) && finite_positive(r.low_freq_factor) && finite_positive(r.high_freq_factor));
  FUZZ_CHECK(finite_positive(r.beta_fast) && finite_positive(r.beta_slow));
  FUZZ_CHECK(finite_positive(r.attention_factor) && r.attention_factor < 1e6f);
  FUZZ_CHECK(r.original_max_position_embeddings >= 1 && r.original_max_position_embeddings <= kMaxDim);
  FUZZ_CHECK(c.bos_token_id >= -1 && c.bos_token_id < c.vocab_size);
  for (int64_t id : c.eos_token_ids) FUZZ_CHECK(id >= 0 && id < c.vocab_size);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = llm_fuzz::scratch_dir();
  const auto* nul = static_cast<const uint8_t*>(std::memchr(data, 0, size));
  const size_t config_bytes = nul ? static_cast<size_t>(nul - data) : size;
  llm_fuzz::put_file(dir + "/config.json", data, config_bytes);
  llm_fuzz::put_file(dir + "/generation_config.json", nul ? nul + 1 : nullptr, nul ? size - config_bytes - 1 : 0);

  llm::ModelConfig cfg;
  const llm::Status st = llm::load_model_config(dir, &cfg);
  if (st.ok()) check_invariants(cfg);
  return 0;
}
