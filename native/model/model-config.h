// model-config.h: the blueprint of a model (llama2.c's Config), read from config.json and
// generation_config.json of a Hugging Face model directory.
//
// Owns: ModelConfig and its validation.
// Stays true: a ModelConfig that load_model_config returned ok is internally consistent
// (hidden_size == num_heads * head_dim unless head_dim was given, num_heads % num_kv_heads == 0,
// every size > 0), so later code may rely on it without re-checking.
// Architectures: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM.
// Every key of config.json is looked up in one table (model-config.cc, kConfigKeys) that says
// what the engine does with it: read and implemented, inert for inference, or refused unless it
// has its neutral value. A key that is in no table is refused, naming it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "../common/status.h"
#include "../kernels/dtype.h"

namespace llm {

enum class ModelArch : int32_t { llama = 0, mistral = 1, qwen2 = 2, qwen3 = 3 };
const char* model_arch_name(ModelArch a);  // the HF "architectures" string

// rope_type, from rope_scaling (transformers 4) or rope_parameters (transformers 5). `none` is
// "default". dynamic: transformers' dynamic NTK, which keeps the default frequencies for every
// sequence up to max_position_embeddings, the longest context the engine runs (engine.cc).
enum class RopeScalingType : int32_t { none = 0, linear = 1, llama3 = 2, dynamic = 3, yarn = 4 };
const char* rope_type_name(RopeScalingType t);  // as config.json spells it ("default" for none)

struct RopeScaling {
  RopeScalingType type = RopeScalingType::none;
  float factor = 1.0f;                       // linear, llama3, dynamic, yarn
  float low_freq_factor = 1.0f;              // llama3
  float high_freq_factor = 4.0f;             // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3; yarn (default max_position_embeddings)
  float beta_fast = 32.0f;                   // yarn
  float beta_slow = 1.0f;                    // yarn
  bool truncate = true;                      // yarn: floor/ceil the correction range
  // yarn: what cos and sin are multiplied by (so q.k by its square), as transformers computes
  // it: attention_factor when given, else from mscale / mscale_all_dim, else 0.1 ln(factor) + 1;
  // in (0, 1e6) (a config whose mscale_all_dim puts it outside is refused). 1 for every other type.
  float attention_factor = 1.0f;
};
bool operator==(const RopeScaling& a, const RopeScaling& b);

struct ModelConfig {
  ModelArch arch = ModelArch::llama;
  std::string architecture;        // as written in config.json
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;         // dim
  int64_t intermediate_size = 0;   // FFN hidden dim
  int64_t num_layers = 0;          // num_hidden_layers
  int64_t num_heads = 0;           // num_attention_heads
  int64_t num_kv_heads = 0;        // num_key_value_heads (defaults to num_heads)
  int64_t head_dim = 0;            // explicit head_dim, else hidden_size / num_heads
  int64_t max_position_embeddings = 0;
  int64_t sliding_window = 0;      // Mistral; 0 = none. The engine caps max_model_len to it.
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;     // q/k/v biases (Qwen2 always; Llama when attention_bias)
  bool mlp_bias = false;           // Llama's mlp_bias (gate/up/down biases)
  bool qk_norm = false;            // Qwen3: RMSNorm of each q and k head (weight [head_dim]) before rope
  DType dtype = DType::bf16;       // torch_dtype; the safetensors dtypes must agree
  bool dtype_from_config = false;  // torch_dtype was stated; if not, load_model takes the
                                   // embedding tensor's dtype
  // From config.json, overridden by generation_config.json where present.
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;
};

// Reads <dir>/config.json and (optionally) <dir>/generation_config.json.
// Errors: ERR_MODEL_FILE_MISSING (no config.json), ERR_MODEL_ARCH_UNSUPPORTED (architectures[0]
// is not one of the three), ERR_MODEL_CONFIG_INVALID (anything else wrong: syntax, types,
// missing keys, values out of range, unsupported rope_scaling, a key refused by kConfigKeys or
// in no table, rope_theta/rope_scaling and rope_parameters that disagree). Messages name the
// file, the key and its value.
// Bounds that keep a hostile config from sizing huge buffers: every dimension <= 2^24,
// vocab_size <= 2^22, num_hidden_layers <= 4096, token ids inside the vocabulary.
Status load_model_config(const std::string& dir, ModelConfig* out);

}  // namespace llm
