// model-config.cc: config.json + generation_config.json -> ModelConfig.
//
// Reading is done in labelled steps (architecture, sizes, attention options, rope, dtype, token
// ids, generation config), then one validation pass of the cross-field rules. Every key is read
// through FieldReader, so a wrong type, a missing required key or an out-of-range value always
// gives an ERR_MODEL_CONFIG_INVALID naming the file and the key.
#include "model-config.h"

#include <cmath>

#include "model-json.h"

namespace llm {

namespace {

constexpr int64_t kMaxDim = int64_t{1} << 24;    // any width, length or head count
constexpr int64_t kMaxVocab = int64_t{1} << 22;
constexpr int64_t kMaxLayers = 4096;

const char* const kSupportedArchs = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM";

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

  // A finite number in the open interval (lo, hi).
  Status get_float(const char* key, bool required, double lo, double hi, float* out) const {
    const JsonValue* v = obj_.get(key);
    if (v == nullptr || v->is_null()) return required ? missing(key) : Status::Ok();
    if (!v->is_number()) return config_invalid(file_, std::string("'") + key + "' must be a number");
    const double d = v->number_value;
    if (!(d > lo && d < hi)) {
      return config_invalid(file_, std::string("'") + key + "' = " + std::to_string(d) +
                                       " is out of range (" + std::to_string(lo) + ", " +
                                       std::to_string(hi) + ")");
    }
    *out = static_cast<float>(d);
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

Status read_architecture(const JsonValue& root, const std::string& file, ModelConfig* cfg) {
  const JsonValue* archs = root.get("architectures");
  if (archs == nullptr || !archs->is_array() || archs->array.empty() || !archs->array[0].is_string()) {
    return config_invalid(file, "'architectures' must be a non-empty list of strings");
  }
  cfg->architecture = archs->array[0].string_value;
  for (ModelArch a : {ModelArch::llama, ModelArch::mistral, ModelArch::qwen2}) {
    if (cfg->architecture == model_arch_name(a)) {
      cfg->arch = a;
      return Status::Ok();
    }
  }
  return Status(StatusCode::model_arch_unsupported, "architecture '" + cfg->architecture +
                                                        "' is not supported (supported: " +
                                                        kSupportedArchs + ")");
}

Status read_rope_scaling(const FieldReader& r, ModelConfig* cfg) {
  const JsonValue* obj;
  LLM_RETURN_IF_ERROR(r.get_object("rope_scaling", &obj));
  if (obj == nullptr) return Status::Ok();
  const FieldReader rs(*obj, r.file() + ": rope_scaling");
  std::string type;  // newer configs say rope_type, older ones type
  LLM_RETURN_IF_ERROR(rs.get_string("type", &type));
  LLM_RETURN_IF_ERROR(rs.get_string("rope_type", &type));
  RopeScaling& s = cfg->rope_scaling;
  if (type.empty()) return config_invalid(rs.file(), "missing 'rope_type'");
  if (type == "default") return Status::Ok();
  if (type == "linear") {
    s.type = RopeScalingType::linear;
    return rs.get_float("factor", true, 0.0, 1e6, &s.factor);
  }
  if (type == "llama3") {
    s.type = RopeScalingType::llama3;
    LLM_RETURN_IF_ERROR(rs.get_float("factor", true, 0.0, 1e6, &s.factor));
    LLM_RETURN_IF_ERROR(rs.get_float("low_freq_factor", true, 0.0, 1e6, &s.low_freq_factor));
    LLM_RETURN_IF_ERROR(rs.get_float("high_freq_factor", true, 0.0, 1e6, &s.high_freq_factor));
    LLM_RETURN_IF_ERROR(rs.get_int("original_max_position_embeddings", true, 1, kMaxDim,
                                   &s.original_max_position_embeddings));
    // The llama3 formula interpolates over 1 / (high_freq_factor - low_freq_factor).
    if (!(s.high_freq_factor > s.low_freq_factor)) {
      return config_invalid(rs.file(), "'high_freq_factor' must be greater than 'low_freq_factor'");
    }
    return Status::Ok();
  }
  return config_invalid(rs.file(), "type '" + type +
                                       "' is not supported (supported: default, linear, llama3)");
}

Status read_dtype(const FieldReader& r, ModelConfig* cfg) {
  std::string name;  // transformers >= 4.56 writes "dtype", older versions "torch_dtype"
  LLM_RETURN_IF_ERROR(r.get_string("dtype", &name));
  LLM_RETURN_IF_ERROR(r.get_string("torch_dtype", &name));
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
  LLM_RETURN_IF_ERROR(r.get_float("rope_theta", false, 0.0, 1e30, &cfg->rope_theta));
  LLM_RETURN_IF_ERROR(read_rope_scaling(r, cfg));

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
    case ModelArch::qwen2: {
      cfg->attention_bias = true;  // Qwen2 always has q/k/v biases
      bool use_sliding_window = false;
      LLM_RETURN_IF_ERROR(r.get_bool("use_sliding_window", &use_sliding_window));
      if (use_sliding_window) {
        LLM_RETURN_IF_ERROR(r.get_int("sliding_window", true, 1, kMaxDim, &cfg->sliding_window));
      }
      break;
    }
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
  }
  return "?";
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
