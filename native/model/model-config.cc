// model-config.cc: config.json + generation_config.json -> ModelConfig.
//
// Reading is done in labelled steps: the architecture, then every key of config.json checked
// against kConfigKeys (the one list of the keys we know and what each gets), then sizes, rope
// (either transformers form), attention options, dtype, token ids, the generation config, and
// one validation pass of the cross-field rules. Every key is read through FieldReader, so a
// wrong type, a missing required key or an out-of-range value always gives an
// ERR_MODEL_CONFIG_INVALID naming the file and the key.
#include "model-config.h"

#include <cmath>
#include <cstdio>

#include "model-json.h"

namespace llm {

namespace {

constexpr int64_t kMaxDim = int64_t{1} << 24;    // any width, length or head count
constexpr int64_t kMaxVocab = int64_t{1} << 22;
constexpr int64_t kMaxLayers = 4096;

const char* const kSupportedArchs = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM";

Status config_invalid(const std::string& file, const std::string& msg) {
  return Status(StatusCode::model_config_invalid, file + ": " + msg);
}

// Typed access to the members of one JSON object. A key that is absent or null counts as not
// given: optional reads leave *out at its default, required reads fail.
class FieldReader {
 public:
  FieldReader(const JsonValue& obj, std::string file) : obj_(obj), file_(std::move(file)) {}

  const std::string& file() const { return file_; }

  bool has(const char* key) const {
    const JsonValue* v = obj_.get(key);
    return v != nullptr && !v->is_null();
  }

  Status get_int(const char* key, bool required, int64_t lo, int64_t hi, int64_t* out) const {
    const JsonValue* v = obj_.get(key);
    if (v == nullptr || v->is_null()) return required ? missing(key) : Status::Ok();
    if (!v->is_int()) return config_invalid(file_, std::string("'") + key + "' must be an integer");
    if (v->int_value < lo || v->int_value > hi) {
      return config_invalid(file_, std::string("'") + key + "' = " + std::to_string(v->int_value) +
                                       " is out of range [" + std::to_string(lo) + ", " +
                                       std::to_string(hi) + "]");
    }
    *out = v->int_value;
    return Status::Ok();
  }

  // A finite number in the open interval (lo, hi), as a float: the rounding to float must stay
  // inside it too (1e-76 is above 0 but rounds to 0.0f; 0.99999999999 rounds to 1.0f).
  Status get_float(const char* key, bool required, double lo, double hi, float* out) const {
    const JsonValue* v = obj_.get(key);
    if (v == nullptr || v->is_null()) return required ? missing(key) : Status::Ok();
    if (!v->is_number()) return config_invalid(file_, std::string("'") + key + "' must be a number");
    const double d = v->number_value;
    const std::string range = " is out of range (" + std::to_string(lo) + ", " + std::to_string(hi) + ")";
    if (!(d > lo && d < hi)) return config_invalid(file_, std::string("'") + key + "' = " + std::to_string(d) + range);
    const float f = static_cast<float>(d);  // in range: every bound is inside float's range
    if (!(f > lo && f < hi)) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.9g rounds to the float %.9g, which", d, static_cast<double>(f));
      return config_invalid(file_, std::string("'") + key + "' = " + buf + range);
    }
    *out = f;
    return Status::Ok();
  }

  Status get_bool(const char* key, bool* out) const {
    const JsonValue* v = obj_.get(key);
    if (v == nullptr || v->is_null()) return Status::Ok();
    if (!v->is_bool()) return config_invalid(file_, std::string("'") + key + "' must be true or false");
    *out = v->bool_value;
    return Status::Ok();
  }

  Status get_string(const char* key, std::string* out) const {
    const JsonValue* v = obj_.get(key);
    if (v == nullptr || v->is_null()) return Status::Ok();
    if (!v->is_string()) return config_invalid(file_, std::string("'") + key + "' must be a string");
    *out = v->string_value;
    return Status::Ok();
  }

  // An optional object member: *out is nullptr when absent or null.
  Status get_object(const char* key, const JsonValue** out) const {
    const JsonValue* v = obj_.get(key);
    *out = nullptr;
    if (v == nullptr || v->is_null()) return Status::Ok();
    if (!v->is_object()) return config_invalid(file_, std::string("'") + key + "' must be an object");
    *out = v;
    return Status::Ok();
  }

  // bos_token_id: integer or null. eos_token_id: integer, list of integers, or null.
  // Only keys that are present and non-null overwrite the outputs.
  Status get_token_ids(int64_t vocab_size, int64_t* bos, std::vector<int64_t>* eos) const {
    LLM_RETURN_IF_ERROR(get_int("bos_token_id", false, 0, vocab_size - 1, bos));
    const JsonValue* v = obj_.get("eos_token_id");
    if (v == nullptr || v->is_null()) return Status::Ok();
    std::vector<const JsonValue*> items;
    if (v->is_array()) {
      for (const JsonValue& id : v->array) items.push_back(&id);
    } else {
      items.push_back(v);
    }
    std::vector<int64_t> ids;
    for (const JsonValue* id : items) {
      if (!id->is_int() || id->int_value < 0 || id->int_value >= vocab_size) {
        return config_invalid(file_, "'eos_token_id' must be an integer or a list of integers in [0, " +
                                         std::to_string(vocab_size) + ")");
      }
      ids.push_back(id->int_value);
    }
    *eos = std::move(ids);
    return Status::Ok();
  }

 private:
  Status missing(const char* key) const {
    return config_invalid(file_, std::string("missing required key '") + key + "'");
  }
  const JsonValue& obj_;
  std::string file_;
};

// Parses a JSON file that must hold one object; a syntax error becomes ERR_MODEL_CONFIG_INVALID.
Status read_json_object(const std::string& path, JsonValue* out) {
  Status st = json_parse_file(path, out);
  if (st.code() == StatusCode::invalid_argument) return Status(StatusCode::model_config_invalid, st.message());
  LLM_RETURN_IF_ERROR(st);
  if (!out->is_object()) return config_invalid(path, "expected a JSON object");
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// The config.json keys: every key of a config is looked up here, for its architecture, and gets
// what its row says. `read` keys are read by the steps below; `inert` keys do not change what
// transformers computes at inference; `neutral` keys are refused unless null or their neutral
// value (the reason is in the error). A key in no row is refused: it might change the numbers.

constexpr uint32_t kLlama = 1u << static_cast<int>(ModelArch::llama);
constexpr uint32_t kMistral = 1u << static_cast<int>(ModelArch::mistral);
constexpr uint32_t kQwen2 = 1u << static_cast<int>(ModelArch::qwen2);
constexpr uint32_t kQwen3 = 1u << static_cast<int>(ModelArch::qwen3);
constexpr uint32_t kQwen = kQwen2 | kQwen3;
constexpr uint32_t kAll = kLlama | kMistral | kQwen2 | kQwen3;

enum class KeyUse { read, inert, neutral };
// The neutral value of a `neutral` key: the one value (besides null) that is accepted.
enum class Neutral { none, is_false, is_one, is_zero, is_silu, is_empty };

struct ConfigKey {
  const char* key;
  uint32_t archs;
  KeyUse use;
  Neutral neutral;  // `neutral` keys only
  const char* what; // what the engine does with it, or why it is refused
};

const ConfigKey kConfigKeys[] = {
    // Shapes, norms, dtype, tokens: read (read_config_json).
    {"architectures", kAll, KeyUse::read, Neutral::none, "the architecture"},
    {"vocab_size", kAll, KeyUse::read, Neutral::none, "shape"},
    {"hidden_size", kAll, KeyUse::read, Neutral::none, "shape"},
    {"intermediate_size", kAll, KeyUse::read, Neutral::none, "shape"},
    {"num_hidden_layers", kAll, KeyUse::read, Neutral::none, "shape"},
    {"num_attention_heads", kAll, KeyUse::read, Neutral::none, "shape"},
    {"num_key_value_heads", kAll, KeyUse::read, Neutral::none, "shape (GQA)"},
    {"head_dim", kAll, KeyUse::read, Neutral::none, "shape; may differ from hidden_size / heads"},
    {"max_position_embeddings", kAll, KeyUse::read, Neutral::none, "the longest context"},
    {"rms_norm_eps", kAll, KeyUse::read, Neutral::none, "RMSNorm epsilon"},
    {"tie_word_embeddings", kAll, KeyUse::read, Neutral::none, "lm_head = embed_tokens"},
    {"torch_dtype", kAll, KeyUse::read, Neutral::none, "weight dtype (transformers 4)"},
    {"dtype", kAll, KeyUse::read, Neutral::none, "weight dtype (transformers 5)"},
    {"bos_token_id", kAll, KeyUse::read, Neutral::none, "BOS (generation_config.json wins)"},
    {"eos_token_id", kAll, KeyUse::read, Neutral::none, "stop tokens (generation_config.json wins)"},
    // Rope: read (read_rope). Types default, linear, llama3, dynamic, yarn; others refused.
    {"rope_theta", kAll, KeyUse::read, Neutral::none, "rope base (transformers 4)"},
    {"rope_scaling", kAll, KeyUse::read, Neutral::none, "rope type and its keys (transformers 4)"},
    {"rope_parameters", kAll, KeyUse::read, Neutral::none, "rope base, type and keys (transformers 5)"},
    {"partial_rotary_factor", kAll, KeyUse::neutral, Neutral::is_one, "partial rotary embeddings are not implemented"},
    // Attention and MLP options.
    {"attention_bias", kLlama | kQwen3, KeyUse::read, Neutral::none, "q/k/v/o biases"},
    {"attention_bias", kQwen2, KeyUse::inert, Neutral::none,
     "transformers' Qwen2 always has q/k/v biases and no o bias, whatever this says"},
    {"mlp_bias", kLlama, KeyUse::read, Neutral::none, "gate/up/down biases"},
    {"hidden_act", kAll, KeyUse::neutral, Neutral::is_silu, "only the SiLU-gated MLP is implemented"},
    {"sliding_window", kMistral | kQwen, KeyUse::read, Neutral::none,
     "the context is capped at the window (inside it, sliding and full attention agree)"},
    {"use_sliding_window", kQwen, KeyUse::read, Neutral::none, "turns sliding_window on"},
    {"layer_types", kQwen, KeyUse::read, Neutral::none,
     "full_attention or sliding_attention per layer; any sliding layer caps the context at the window"},
    {"max_window_layers", kQwen, KeyUse::inert, Neutral::none,
     "which layers slide: moot, the context is capped at the window"},
    // Keys of other architectures that change the numbers: refused unless neutral.
    {"attn_logit_softcapping", kAll, KeyUse::neutral, Neutral::none, "logit soft-capping is not implemented"},
    {"final_logit_softcapping", kAll, KeyUse::neutral, Neutral::none, "logit soft-capping is not implemented"},
    {"qk_norm", kAll, KeyUse::neutral, Neutral::is_false, "q/k norms exist only for Qwen3ForCausalLM"},
    {"use_qk_norm", kAll, KeyUse::neutral, Neutral::is_false, "q/k norms exist only for Qwen3ForCausalLM"},
    {"qk_layernorm", kAll, KeyUse::neutral, Neutral::is_false, "q/k norms exist only for Qwen3ForCausalLM"},
    {"quantization_config", kAll, KeyUse::neutral, Neutral::none, "quantized checkpoints are not supported"},
    {"compression_config", kAll, KeyUse::neutral, Neutral::none, "compressed checkpoints are not supported"},
    {"num_experts", kAll, KeyUse::neutral, Neutral::is_zero, "mixture-of-experts is not implemented"},
    {"num_local_experts", kAll, KeyUse::neutral, Neutral::is_zero, "mixture-of-experts is not implemented"},
    {"n_routed_experts", kAll, KeyUse::neutral, Neutral::is_zero, "mixture-of-experts is not implemented"},
    {"use_mrope", kAll, KeyUse::neutral, Neutral::is_false, "multimodal rope is not implemented"},
    {"query_pre_attn_scalar", kAll, KeyUse::neutral, Neutral::none, "the attention scale is 1 / sqrt(head_dim)"},
    {"attention_multiplier", kAll, KeyUse::neutral, Neutral::none, "the attention scale is 1 / sqrt(head_dim)"},
    {"embedding_multiplier", kAll, KeyUse::neutral, Neutral::none, "embeddings are not scaled"},
    {"residual_multiplier", kAll, KeyUse::neutral, Neutral::none, "residuals are not scaled"},
    {"logits_scaling", kAll, KeyUse::neutral, Neutral::none, "logits are not scaled"},
    {"attention_chunk_size", kAll, KeyUse::neutral, Neutral::none, "chunked attention is not implemented"},
    {"no_rope_layers", kAll, KeyUse::neutral, Neutral::is_empty, "every layer applies rope"},
    // Inert at inference.
    {"model_type", kAll, KeyUse::inert, Neutral::none, "architectures decides"},
    {"transformers_version", kAll, KeyUse::inert, Neutral::none, "provenance"},
    {"_name_or_path", kAll, KeyUse::inert, Neutral::none, "provenance"},
    {"initializer_range", kAll, KeyUse::inert, Neutral::none, "training only"},
    {"attention_dropout", kAll, KeyUse::inert, Neutral::none, "dropout: training only"},
    {"pretraining_tp", kLlama, KeyUse::inert, Neutral::none,
     "splits the same matmuls into slices: the same sums up to rounding order"},
    {"use_cache", kAll, KeyUse::inert, Neutral::none, "the engine always caches KV"},
    {"pad_token_id", kAll, KeyUse::inert, Neutral::none, "no padding in the engine's batches"},
    {"sep_token_id", kAll, KeyUse::inert, Neutral::none, "tokenizer metadata"},
    {"decoder_start_token_id", kAll, KeyUse::inert, Neutral::none, "encoder-decoder only"},
    {"tokenizer_class", kAll, KeyUse::inert, Neutral::none, "the tokenizer comes from tokenizer.json"},
    {"is_decoder", kAll, KeyUse::inert, Neutral::none, "PretrainedConfig bookkeeping"},
    {"is_encoder_decoder", kAll, KeyUse::inert, Neutral::none, "PretrainedConfig bookkeeping"},
    {"add_cross_attention", kAll, KeyUse::inert, Neutral::none, "PretrainedConfig bookkeeping"},
    {"tie_encoder_decoder", kAll, KeyUse::inert, Neutral::none, "PretrainedConfig bookkeeping"},
    {"cross_attention_hidden_size", kAll, KeyUse::inert, Neutral::none, "PretrainedConfig bookkeeping"},
    {"chunk_size_feed_forward", kAll, KeyUse::inert, Neutral::none, "PretrainedConfig bookkeeping"},
    {"return_dict", kAll, KeyUse::inert, Neutral::none, "PretrainedConfig bookkeeping"},
    {"output_attentions", kAll, KeyUse::inert, Neutral::none, "PretrainedConfig bookkeeping"},
    {"output_hidden_states", kAll, KeyUse::inert, Neutral::none, "PretrainedConfig bookkeeping"},
    {"torchscript", kAll, KeyUse::inert, Neutral::none, "PretrainedConfig bookkeeping"},
    {"use_bfloat16", kAll, KeyUse::inert, Neutral::none, "PretrainedConfig bookkeeping (the dtype comes from torch_dtype)"},
    {"pruned_heads", kAll, KeyUse::neutral, Neutral::is_empty, "pruned heads are not supported"},
    {"id2label", kAll, KeyUse::inert, Neutral::none, "classification heads only"},
    {"label2id", kAll, KeyUse::inert, Neutral::none, "classification heads only"},
    {"num_labels", kAll, KeyUse::inert, Neutral::none, "classification heads only"},
    {"problem_type", kAll, KeyUse::inert, Neutral::none, "classification heads only"},
    {"finetuning_task", kAll, KeyUse::inert, Neutral::none, "provenance"},
    {"task_specific_params", kAll, KeyUse::inert, Neutral::none, "pipelines only"},
    {"prefix", kAll, KeyUse::inert, Neutral::none, "pipelines only"},
    // Generation settings that old configs carry: nothing in the forward pass. The frontend takes
    // temperature, top_p, top_k, min_p and repetition_penalty from here as request defaults when
    // the model has no generation_config.json, as vLLM does (ts/processor/generation-config.ts).
    {"max_length", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"min_length", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"do_sample", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"early_stopping", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"num_beams", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"num_beam_groups", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"diversity_penalty", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"temperature", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"top_k", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"top_p", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"typical_p", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"repetition_penalty", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"length_penalty", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"no_repeat_ngram_size", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"encoder_no_repeat_ngram_size", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"bad_words_ids", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"num_return_sequences", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"output_scores", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"return_dict_in_generate", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"forced_bos_token_id", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"forced_eos_token_id", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"remove_invalid_values", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"exponential_decay_length_penalty", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"suppress_tokens", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"begin_suppress_tokens", kAll, KeyUse::inert, Neutral::none, "generation setting"},
    {"tf_legacy_loss", kAll, KeyUse::inert, Neutral::none, "training only"},
};

// A short rendering of a JSON value for error messages.
std::string json_brief(const JsonValue& v) {
  switch (v.kind) {
    case JsonValue::Kind::null: return "null";
    case JsonValue::Kind::boolean: return v.bool_value ? "true" : "false";
    case JsonValue::Kind::number: {
      if (v.is_int()) return std::to_string(v.int_value);
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.9g", v.number_value);
      return buf;
    }
    case JsonValue::Kind::string: return "\"" + (v.string_value.size() > 64 ? v.string_value.substr(0, 64) + "..." : v.string_value) + "\"";
    case JsonValue::Kind::array: return v.array.empty() ? "[]" : "[...]";
    case JsonValue::Kind::object: return v.object.empty() ? "{}" : "{...}";
  }
  return "?";
}

bool is_neutral(const JsonValue& v, Neutral n) {
  if (v.is_null()) return true;
  switch (n) {
    case Neutral::none: return false;
    case Neutral::is_false: return v.is_bool() && !v.bool_value;
    case Neutral::is_one: return v.is_number() && v.number_value == 1.0;
    case Neutral::is_zero: return v.is_number() && v.number_value == 0.0;
    case Neutral::is_silu: return v.is_string() && v.string_value == "silu";
    case Neutral::is_empty: return (v.is_array() && v.array.empty()) || (v.is_object() && v.object.empty());
  }
  return false;
}

Status check_config_keys(const JsonValue& root, const std::string& file, ModelArch arch) {
  const uint32_t bit = 1u << static_cast<int>(arch);
  for (const auto& [key, value] : root.object) {
    const ConfigKey* row = nullptr;
    for (const ConfigKey& k : kConfigKeys)
      if ((k.archs & bit) && key == k.key) row = &k;
    if (row == nullptr)
      return config_invalid(file, "key '" + key + "' = " + json_brief(value) + " is not known to this engine for " +
                                      model_arch_name(arch) +
                                      ": it may change the model's output, so the model is refused");
    if (row->use == KeyUse::neutral && !is_neutral(value, row->neutral))
      return config_invalid(file, "'" + key + "' = " + json_brief(value) + " is not supported: " + row->what);
  }
  return Status::Ok();
}

Status read_architecture(const JsonValue& root, const std::string& file, ModelConfig* cfg) {
  const JsonValue* archs = root.get("architectures");
  if (archs == nullptr || !archs->is_array() || archs->array.empty() || !archs->array[0].is_string()) {
    return config_invalid(file, "'architectures' must be a non-empty list of strings");
  }
  cfg->architecture = archs->array[0].string_value;
  for (ModelArch a : {ModelArch::llama, ModelArch::mistral, ModelArch::qwen2, ModelArch::qwen3}) {
    if (cfg->architecture == model_arch_name(a)) {
      cfg->arch = a;
      return Status::Ok();
    }
  }
  return Status(StatusCode::model_arch_unsupported, "architecture '" + cfg->architecture +
                                                        "' is not supported (supported: " +
                                                        kSupportedArchs + ")");
}

// ---------------------------------------------------------------------------------------------
// Rope: transformers 4 writes rope_theta + rope_scaling, transformers 5 one rope_parameters
// object holding rope_theta, rope_type and the type's keys. Both are read into the same numbers;
// where both are present they must agree.

// The keys a rope object may hold for each type (besides rope_type / type, and rope_theta and
// partial_rotary_factor in rope_parameters). Anything else in it is refused.
bool rope_key_allowed(RopeScalingType t, const std::string& key) {
  switch (t) {
    case RopeScalingType::none: return false;
    case RopeScalingType::linear: return key == "factor";
    case RopeScalingType::llama3:
      return key == "factor" || key == "low_freq_factor" || key == "high_freq_factor" ||
             key == "original_max_position_embeddings";
    case RopeScalingType::dynamic: return key == "factor" || key == "original_max_position_embeddings";
    case RopeScalingType::yarn:
      return key == "factor" || key == "original_max_position_embeddings" || key == "attention_factor" ||
             key == "beta_fast" || key == "beta_slow" || key == "mscale" || key == "mscale_all_dim" ||
             key == "truncate";
  }
  return false;
}

// transformers' yarn get_mscale.
double yarn_mscale(double scale, double mscale) { return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }

// One rope object into *out. `parameters`: it is rope_parameters (may hold rope_theta, written
// to *theta when present, and partial_rotary_factor).
Status read_rope_object(const JsonValue& obj, const std::string& file, bool parameters, const ModelConfig& cfg,
                        RopeScaling* out, double* theta, bool* has_theta) {
  const FieldReader r(obj, file);
  std::string type, type_old;  // newer configs say rope_type, older ones type
  LLM_RETURN_IF_ERROR(r.get_string("rope_type", &type));
  LLM_RETURN_IF_ERROR(r.get_string("type", &type_old));
  if (!type.empty() && !type_old.empty() && type != type_old)
    return config_invalid(file, "'rope_type' = \"" + type + "\" and 'type' = \"" + type_old + "\" disagree");
  if (type.empty()) type = type_old;
  if (type.empty()) {
    if (!parameters) return config_invalid(file, "missing 'rope_type'");
    type = "default";  // transformers 5: rope_parameters without a type is the default rope
  }
  RopeScaling s;
  if (type == "default") s.type = RopeScalingType::none;
  else if (type == "linear") s.type = RopeScalingType::linear;
  else if (type == "llama3") s.type = RopeScalingType::llama3;
  else if (type == "dynamic") s.type = RopeScalingType::dynamic;
  else if (type == "yarn") s.type = RopeScalingType::yarn;
  else
    return config_invalid(file, "rope_type '" + type +
                                    "' is not supported (supported: default, linear, llama3, dynamic, yarn)");
  for (const auto& [key, value] : obj.object) {
    if (key == "rope_type" || key == "type" || rope_key_allowed(s.type, key)) continue;
    if (parameters && key == "rope_theta") continue;
    if (parameters && key == "partial_rotary_factor") {
      if (!is_neutral(value, Neutral::is_one))
        return config_invalid(file, "'partial_rotary_factor' = " + json_brief(value) +
                                        " is not supported: partial rotary embeddings are not implemented");
      continue;
    }
    if (value.is_object() && parameters)
      return config_invalid(file, "rope parameters per layer type ('" + key + "') are not supported");
    return config_invalid(file, "key '" + key + "' = " + json_brief(value) + " is not used by rope_type '" + type +
                                    "': refused rather than ignored");
  }
  if (parameters && r.has("rope_theta")) {
    float t = 0;
    LLM_RETURN_IF_ERROR(r.get_float("rope_theta", true, 0.0, 1e30, &t));
    *theta = obj.get("rope_theta")->number_value;
    *has_theta = true;
  }
  switch (s.type) {
    case RopeScalingType::none: break;
    case RopeScalingType::linear:
      LLM_RETURN_IF_ERROR(r.get_float("factor", true, 0.0, 1e6, &s.factor));
      break;
    case RopeScalingType::llama3:
      LLM_RETURN_IF_ERROR(r.get_float("factor", true, 0.0, 1e6, &s.factor));
      LLM_RETURN_IF_ERROR(r.get_float("low_freq_factor", true, 0.0, 1e6, &s.low_freq_factor));
      LLM_RETURN_IF_ERROR(r.get_float("high_freq_factor", true, 0.0, 1e6, &s.high_freq_factor));
      LLM_RETURN_IF_ERROR(r.get_int("original_max_position_embeddings", true, 1, kMaxDim,
                                    &s.original_max_position_embeddings));
      // The llama3 formula interpolates over 1 / (high_freq_factor - low_freq_factor).
      if (!(s.high_freq_factor > s.low_freq_factor))
        return config_invalid(file, "'high_freq_factor' must be greater than 'low_freq_factor'");
      break;
    case RopeScalingType::dynamic: {
      LLM_RETURN_IF_ERROR(r.get_float("factor", true, 0.0, 1e6, &s.factor));
      // transformers scales from max_position_embeddings; a different original length would mean
      // frequencies other than the default ones inside the context the engine runs.
      s.original_max_position_embeddings = cfg.max_position_embeddings;
      int64_t original = cfg.max_position_embeddings;
      LLM_RETURN_IF_ERROR(r.get_int("original_max_position_embeddings", false, 1, kMaxDim, &original));
      if (original != cfg.max_position_embeddings)
        return config_invalid(file, "dynamic rope with 'original_max_position_embeddings' = " + std::to_string(original) +
                                        " other than max_position_embeddings " +
                                        std::to_string(cfg.max_position_embeddings) + " is not supported");
      break;
    }
    case RopeScalingType::yarn: {
      LLM_RETURN_IF_ERROR(r.get_float("factor", true, 0.0, 1e6, &s.factor));
      s.original_max_position_embeddings = cfg.max_position_embeddings;
      LLM_RETURN_IF_ERROR(r.get_int("original_max_position_embeddings", false, 1, kMaxDim,
                                    &s.original_max_position_embeddings));
      // beta_fast / beta_slow: transformers takes `value or default`, so 0 means the default too.
      float beta = 0;
      LLM_RETURN_IF_ERROR(r.get_float("beta_fast", false, -1e6, 1e6, &beta));
      s.beta_fast = beta != 0 ? beta : 32.0f;
      beta = 0;
      LLM_RETURN_IF_ERROR(r.get_float("beta_slow", false, -1e6, 1e6, &beta));
      s.beta_slow = beta != 0 ? beta : 1.0f;
      if (!(s.beta_fast > 0 && s.beta_slow > 0))
        return config_invalid(file, "'beta_fast' and 'beta_slow' must be positive");
      LLM_RETURN_IF_ERROR(r.get_bool("truncate", &s.truncate));
      float mscale = 0, mscale_all_dim = 0;
      LLM_RETURN_IF_ERROR(r.get_float("mscale", false, -1e6, 1e6, &mscale));
      LLM_RETURN_IF_ERROR(r.get_float("mscale_all_dim", false, -1e6, 1e6, &mscale_all_dim));
      if (r.has("attention_factor")) {
        LLM_RETURN_IF_ERROR(r.get_float("attention_factor", true, 0.0, 1e6, &s.attention_factor));
      } else if (mscale != 0 && mscale_all_dim != 0) {
        // A denominator at or next to zero (a negative mscale_all_dim) gives an infinite, NaN,
        // negative or huge factor: the computed one must lie where an explicit one may.
        const double f = yarn_mscale(s.factor, mscale) / yarn_mscale(s.factor, mscale_all_dim);
        if (!(std::isfinite(f) && f > 0 && f < 1e6)) {
          char buf[160];
          std::snprintf(buf, sizeof buf, "factor %.9g, mscale %.9g, mscale_all_dim %.9g",
                        static_cast<double>(s.factor), static_cast<double>(mscale), static_cast<double>(mscale_all_dim));
          char value[32];
          std::snprintf(value, sizeof value, "%.9g", f);
          return config_invalid(file, std::string("yarn's attention factor from ") + buf + " is " + value +
                                          ", out of range (0, 1e6)");
        }
        s.attention_factor = static_cast<float>(f);
      } else {
        s.attention_factor = static_cast<float>(yarn_mscale(s.factor, 1.0));
      }
      break;
    }
  }
  *out = s;
  return Status::Ok();
}

std::string rope_brief(const RopeScaling& s) {
  return std::string("rope_type ") + rope_type_name(s.type) + ", factor " + std::to_string(s.factor);
}

Status read_rope(const JsonValue& root, const std::string& file, ModelConfig* cfg) {
  const FieldReader r(root, file);
  const JsonValue* scaling;
  const JsonValue* parameters;
  LLM_RETURN_IF_ERROR(r.get_object("rope_scaling", &scaling));
  LLM_RETURN_IF_ERROR(r.get_object("rope_parameters", &parameters));
  const bool has_top_theta = r.has("rope_theta");
  LLM_RETURN_IF_ERROR(r.get_float("rope_theta", false, 0.0, 1e30, &cfg->rope_theta));

  RopeScaling from_scaling;
  if (scaling) {
    double unused = 0;
    bool no_theta = false;
    LLM_RETURN_IF_ERROR(read_rope_object(*scaling, file + ": rope_scaling", false, *cfg, &from_scaling, &unused, &no_theta));
  }
  if (!parameters) {
    cfg->rope_scaling = from_scaling;
    return Status::Ok();
  }
  RopeScaling from_parameters;
  double theta = 0;
  bool has_theta = false;
  LLM_RETURN_IF_ERROR(
      read_rope_object(*parameters, file + ": rope_parameters", true, *cfg, &from_parameters, &theta, &has_theta));
  if (has_theta) {
    if (has_top_theta && root.get("rope_theta")->number_value != theta)
      return config_invalid(file, "'rope_theta' = " + json_brief(*root.get("rope_theta")) +
                                      " and 'rope_parameters.rope_theta' = " + json_brief(*parameters->get("rope_theta")) +
                                      " disagree");
    cfg->rope_theta = static_cast<float>(theta);
  }
  if (scaling && !(from_scaling == from_parameters))
    return config_invalid(file, "'rope_scaling' (" + rope_brief(from_scaling) + ") and 'rope_parameters' (" +
                                    rope_brief(from_parameters) + ") disagree");
  cfg->rope_scaling = from_parameters;
  return Status::Ok();
}

// Qwen2 / Qwen3 sliding windows: use_sliding_window + sliding_window, or per-layer layer_types.
// Any sliding layer caps the context at the window (engine.cc), inside which it is full attention.
Status read_qwen_window(const JsonValue& root, const FieldReader& r, ModelConfig* cfg) {
  bool use_sliding_window = false;
  LLM_RETURN_IF_ERROR(r.get_bool("use_sliding_window", &use_sliding_window));
  bool any_sliding = false;
  if (const JsonValue* types = root.get("layer_types"); types != nullptr && !types->is_null()) {
    if (!types->is_array() || static_cast<int64_t>(types->array.size()) != cfg->num_layers)
      return config_invalid(r.file(), "'layer_types' must be a list of " + std::to_string(cfg->num_layers) + " strings");
    for (const JsonValue& t : types->array) {
      if (t.is_string() && t.string_value == "sliding_attention") any_sliding = true;
      else if (!t.is_string() || t.string_value != "full_attention")
        return config_invalid(r.file(), "'layer_types' entry " + json_brief(t) +
                                            " is not supported (supported: \"full_attention\", \"sliding_attention\")");
    }
  }
  if (use_sliding_window || any_sliding)
    return r.get_int("sliding_window", true, 1, kMaxDim, &cfg->sliding_window);
  int64_t unused = 0;  // still type-checked
  return r.get_int("sliding_window", false, 0, kMaxDim, &unused);
}

Status read_dtype(const FieldReader& r, ModelConfig* cfg) {
  std::string name, old_name;  // transformers >= 4.56 writes "dtype", older versions "torch_dtype"
  LLM_RETURN_IF_ERROR(r.get_string("dtype", &name));
  LLM_RETURN_IF_ERROR(r.get_string("torch_dtype", &old_name));
  if (!name.empty() && !old_name.empty() && name != old_name)
    return config_invalid(r.file(), "'dtype' = \"" + name + "\" and 'torch_dtype' = \"" + old_name + "\" disagree");
  if (name.empty()) name = old_name;
  if (name.empty()) return Status::Ok();
  if (name == "bfloat16") cfg->dtype = DType::bf16;
  else if (name == "float16") cfg->dtype = DType::f16;
  else if (name == "float32") cfg->dtype = DType::f32;
  else return config_invalid(r.file(), "'torch_dtype' = '" + name +
                                           "' is not supported (supported: bfloat16, float16, float32)");
  cfg->dtype_from_config = true;
  return Status::Ok();
}

Status read_config_json(const std::string& path, ModelConfig* cfg) {
  JsonValue root;
  LLM_RETURN_IF_ERROR(read_json_object(path, &root));
  const FieldReader r(root, path);
  LLM_RETURN_IF_ERROR(read_architecture(root, path, cfg));
  LLM_RETURN_IF_ERROR(check_config_keys(root, path, cfg->arch));

  // Sizes.
  LLM_RETURN_IF_ERROR(r.get_int("vocab_size", true, 1, kMaxVocab, &cfg->vocab_size));
  LLM_RETURN_IF_ERROR(r.get_int("hidden_size", true, 1, kMaxDim, &cfg->hidden_size));
  LLM_RETURN_IF_ERROR(r.get_int("intermediate_size", true, 1, kMaxDim, &cfg->intermediate_size));
  LLM_RETURN_IF_ERROR(r.get_int("num_hidden_layers", true, 1, kMaxLayers, &cfg->num_layers));
  LLM_RETURN_IF_ERROR(r.get_int("num_attention_heads", true, 1, kMaxDim, &cfg->num_heads));
  cfg->num_kv_heads = cfg->num_heads;
  LLM_RETURN_IF_ERROR(r.get_int("num_key_value_heads", false, 1, kMaxDim, &cfg->num_kv_heads));
  LLM_RETURN_IF_ERROR(r.get_int("head_dim", false, 1, kMaxDim, &cfg->head_dim));
  LLM_RETURN_IF_ERROR(r.get_int("max_position_embeddings", true, 1, kMaxDim,
                                &cfg->max_position_embeddings));

  // Norm, rope.
  LLM_RETURN_IF_ERROR(r.get_float("rms_norm_eps", true, 0.0, 1.0, &cfg->rms_norm_eps));
  LLM_RETURN_IF_ERROR(read_rope(root, path, cfg));

  // Architecture-specific options.
  LLM_RETURN_IF_ERROR(r.get_bool("tie_word_embeddings", &cfg->tie_word_embeddings));
  switch (cfg->arch) {
    case ModelArch::llama:
      LLM_RETURN_IF_ERROR(r.get_bool("attention_bias", &cfg->attention_bias));
      LLM_RETURN_IF_ERROR(r.get_bool("mlp_bias", &cfg->mlp_bias));
      break;
    case ModelArch::mistral:
      LLM_RETURN_IF_ERROR(r.get_int("sliding_window", false, 0, kMaxDim, &cfg->sliding_window));
      break;
    case ModelArch::qwen2:
      cfg->attention_bias = true;  // Qwen2 always has q/k/v biases
      LLM_RETURN_IF_ERROR(read_qwen_window(root, r, cfg));
      break;
    case ModelArch::qwen3:
      cfg->qk_norm = true;  // Qwen3 always normalises q and k per head
      LLM_RETURN_IF_ERROR(r.get_bool("attention_bias", &cfg->attention_bias));
      LLM_RETURN_IF_ERROR(read_qwen_window(root, r, cfg));
      break;
  }

  LLM_RETURN_IF_ERROR(read_dtype(r, cfg));
  return r.get_token_ids(cfg->vocab_size, &cfg->bos_token_id, &cfg->eos_token_ids);
}

// Rules between fields; on success the invariants promised in model-config.h hold.
Status validate(const std::string& file, ModelConfig* cfg) {
  if (cfg->head_dim == 0) {
    if (cfg->hidden_size % cfg->num_heads != 0) {
      return config_invalid(file, "hidden_size " + std::to_string(cfg->hidden_size) +
                                      " is not divisible by num_attention_heads " +
                                      std::to_string(cfg->num_heads) + " (and no head_dim is given)");
    }
    cfg->head_dim = cfg->hidden_size / cfg->num_heads;
  }
  if (cfg->head_dim % 2 != 0) {
    return config_invalid(file, "head_dim " + std::to_string(cfg->head_dim) + " must be even (rotary pairs)");
  }
  // Both factors are <= 2^24, so the product cannot overflow.
  if (cfg->num_heads * cfg->head_dim > kMaxDim) {
    return config_invalid(file, "num_attention_heads * head_dim exceeds " + std::to_string(kMaxDim));
  }
  if (cfg->num_kv_heads > cfg->num_heads || cfg->num_heads % cfg->num_kv_heads != 0) {
    return config_invalid(file, "num_attention_heads " + std::to_string(cfg->num_heads) +
                                    " is not a multiple of num_key_value_heads " +
                                    std::to_string(cfg->num_kv_heads));
  }
  return Status::Ok();
}

// generation_config.json is optional; where present its bos/eos win over config.json's.
Status read_generation_config(const std::string& path, ModelConfig* cfg) {
  JsonValue root;
  Status st = read_json_object(path, &root);
  if (st.code() == StatusCode::model_file_missing) return Status::Ok();
  LLM_RETURN_IF_ERROR(st);
  return FieldReader(root, path).get_token_ids(cfg->vocab_size, &cfg->bos_token_id, &cfg->eos_token_ids);
}

}  // namespace

const char* model_arch_name(ModelArch a) {
  switch (a) {
    case ModelArch::llama: return "LlamaForCausalLM";
    case ModelArch::mistral: return "MistralForCausalLM";
    case ModelArch::qwen2: return "Qwen2ForCausalLM";
    case ModelArch::qwen3: return "Qwen3ForCausalLM";
  }
  return "?";
}

const char* rope_type_name(RopeScalingType t) {
  switch (t) {
    case RopeScalingType::none: return "default";
    case RopeScalingType::linear: return "linear";
    case RopeScalingType::llama3: return "llama3";
    case RopeScalingType::dynamic: return "dynamic";
    case RopeScalingType::yarn: return "yarn";
  }
  return "?";
}

bool operator==(const RopeScaling& a, const RopeScaling& b) {
  return a.type == b.type && a.factor == b.factor && a.low_freq_factor == b.low_freq_factor &&
         a.high_freq_factor == b.high_freq_factor &&
         a.original_max_position_embeddings == b.original_max_position_embeddings && a.beta_fast == b.beta_fast &&
         a.beta_slow == b.beta_slow && a.truncate == b.truncate && a.attention_factor == b.attention_factor;
}

Status load_model_config(const std::string& dir, ModelConfig* out) {
  ModelConfig cfg;
  const std::string path = dir + "/config.json";
  LLM_RETURN_IF_ERROR(read_config_json(path, &cfg));
  LLM_RETURN_IF_ERROR(validate(path, &cfg));
  LLM_RETURN_IF_ERROR(read_generation_config(dir + "/generation_config.json", &cfg));
  *out = std::move(cfg);
  return Status::Ok();
}

}  // namespace llm
