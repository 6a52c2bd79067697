// model-writer.h: writes tiny Hugging Face model directories for tests (config.json, optional
// generation_config.json, model.safetensors or shards + model.safetensors.index.json).
//
// Owns: TinyModelSpec (what to write), the safetensors encoder, and TempDir.
// Stays true: element i of tensor `name` is tensor_value(name, i), which is exact in bf16, f16
// and f32, so a test can check every loaded element for equality. config.json is kept as an
// ordered list of (key, raw JSON) so tests can break one field at a time.
#pragma once

#include <stdlib.h>  // mkdtemp

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "kernels/dtype.h"

namespace llm_test {

struct TinyModelSpec {
  std::string arch = "LlamaForCausalLM";
  int64_t vocab_size = 32;
  int64_t hidden_size = 16;
  int64_t intermediate_size = 24;
  int64_t num_layers = 2;
  int64_t num_heads = 4;
  int64_t num_kv_heads = 2;
  int64_t head_dim = 0;            // 0: not written, so hidden_size / num_heads
  llm::DType dtype = llm::DType::bf16;
  bool write_torch_dtype = true;
  bool tie_word_embeddings = false;
  bool attention_bias = false;     // Llama only (Qwen2 always gets q/k/v biases)
  bool mlp_bias = false;           // Llama only
  bool lm_head_when_tied = false;  // also write lm_head.weight in a tied model
  int num_shards = 1;              // 1: model.safetensors; n > 1: n shards and an index
  std::set<std::string> omit;      // tensors not to write
  std::string generation_config;   // raw JSON; empty: no generation_config.json

  bool qwen2() const { return arch == "Qwen2ForCausalLM"; }
  int64_t q_dim() const { return num_heads * (head_dim ? head_dim : hidden_size / num_heads); }
  int64_t kv_dim() const { return num_kv_heads * (head_dim ? head_dim : hidden_size / num_heads); }
};

// ---- config.json as editable fields -------------------------------------------------------

using JsonFields = std::vector<std::pair<std::string, std::string>>;  // key -> raw JSON value

inline const char* torch_dtype_name(llm::DType t) {
  return t == llm::DType::f32 ? "float32" : t == llm::DType::f16 ? "float16" : "bfloat16";
}

inline JsonFields config_fields(const TinyModelSpec& s) {
  auto str = [](const std::string& v) { return "\"" + v + "\""; };
  auto num = [](int64_t v) { return std::to_string(v); };
  auto flag = [](bool v) { return std::string(v ? "true" : "false"); };
  JsonFields f = {
      {"architectures", "[" + str(s.arch) + "]"},
      {"vocab_size", num(s.vocab_size)},
      {"hidden_size", num(s.hidden_size)},
      {"intermediate_size", num(s.intermediate_size)},
      {"num_hidden_layers", num(s.num_layers)},
      {"num_attention_heads", num(s.num_heads)},
      {"num_key_value_heads", num(s.num_kv_heads)},
      {"max_position_embeddings", "128"},
      {"rms_norm_eps", "1e-06"},
      {"rope_theta", "10000.0"},
      {"rope_scaling", "null"},
      {"tie_word_embeddings", flag(s.tie_word_embeddings)},
      {"bos_token_id", "1"},
      {"eos_token_id", "2"},
  };
  if (s.head_dim) f.push_back({"head_dim", num(s.head_dim)});
  if (s.write_torch_dtype) f.push_back({"torch_dtype", str(torch_dtype_name(s.dtype))});
  if (s.arch == "LlamaForCausalLM") {
    f.push_back({"attention_bias", flag(s.attention_bias)});
    f.push_back({"mlp_bias", flag(s.mlp_bias)});
  } else if (s.arch == "MistralForCausalLM") {
    f.push_back({"sliding_window", "64"});
  } else if (s.qwen2()) {
    f.push_back({"use_sliding_window", "false"});
    f.push_back({"sliding_window", "4096"});
  }
  return f;
}

// Replaces key's value, or appends it.
inline void set_field(JsonFields* f, const std::string& key, const std::string& raw) {
  for (auto& kv : *f) {
    if (kv.first == key) {
      kv.second = raw;
      return;
    }
  }
  f->push_back({key, raw});
}

inline void remove_field(JsonFields* f, const std::string& key) {
  for (size_t i = 0; i < f->size(); ++i) {
    if ((*f)[i].first == key) {
      f->erase(f->begin() + static_cast<std::ptrdiff_t>(i));
      return;
    }
  }
}

inline std::string json_object(const JsonFields& f) {
  std::string s = "{\n";
  for (size_t i = 0; i < f.size(); ++i) {
    s += "  \"" + f[i].first + "\": " + f[i].second + (i + 1 < f.size() ? ",\n" : "\n");
  }
  return s + "}\n";
}

// ---- tensors --------------------------------------------------------------------------------

// k / 16 with |k| <= 30: five significant bits, exact in every dtype we use.
inline float tensor_value(const std::string& name, int64_t i) {
  uint32_t h = 2166136261u;  // FNV-1a
  for (char c : name) h = (h ^ static_cast<uint8_t>(c)) * 16777619u;
  return static_cast<float>(static_cast<int64_t>((h + static_cast<uint64_t>(i) * 7u) % 61u) - 30) / 16.0f;
}

struct WriterTensor {
  std::string name;
  llm::DType dtype = llm::DType::f32;
  std::vector<int64_t> shape;
  std::string bytes;
};

inline WriterTensor make_tensor(const std::string& name, llm::DType dtype, std::vector<int64_t> shape) {
  WriterTensor t{name, dtype, std::move(shape), {}};
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  t.bytes.resize(static_cast<size_t>(n * llm::dtype_size(dtype)));
  for (int64_t i = 0; i < n; ++i) llm::store_f32(&t.bytes[0], dtype, i, tensor_value(name, i));
  return t;
}

// Every tensor the spec's model has, in the order a checkpoint would list them.
inline std::vector<WriterTensor> model_tensors(const TinyModelSpec& s) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  const int64_t h = s.hidden_size, q = s.q_dim(), kv = s.kv_dim(), inter = s.intermediate_size;
  shapes.push_back({"model.embed_tokens.weight", {s.vocab_size, h}});
  for (int64_t i = 0; i < s.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const bool llama_bias = s.arch == "LlamaForCausalLM" && s.attention_bias;
    shapes.push_back({p + "input_layernorm.weight", {h}});
    shapes.push_back({p + "self_attn.q_proj.weight", {q, h}});
    shapes.push_back({p + "self_attn.k_proj.weight", {kv, h}});
    shapes.push_back({p + "self_attn.v_proj.weight", {kv, h}});
    shapes.push_back({p + "self_attn.o_proj.weight", {h, q}});
    if (s.qwen2() || llama_bias) {
      shapes.push_back({p + "self_attn.q_proj.bias", {q}});
      shapes.push_back({p + "self_attn.k_proj.bias", {kv}});
      shapes.push_back({p + "self_attn.v_proj.bias", {kv}});
    }
    if (llama_bias) shapes.push_back({p + "self_attn.o_proj.bias", {h}});
    shapes.push_back({p + "post_attention_layernorm.weight", {h}});
    shapes.push_back({p + "mlp.gate_proj.weight", {inter, h}});
    shapes.push_back({p + "mlp.up_proj.weight", {inter, h}});
    shapes.push_back({p + "mlp.down_proj.weight", {h, inter}});
    if (s.mlp_bias) {
      shapes.push_back({p + "mlp.gate_proj.bias", {inter}});
      shapes.push_back({p + "mlp.up_proj.bias", {inter}});
      shapes.push_back({p + "mlp.down_proj.bias", {h}});
    }
  }
  shapes.push_back({"model.norm.weight", {h}});
  if (!s.tie_word_embeddings || s.lm_head_when_tied) shapes.push_back({"lm_head.weight", {s.vocab_size, h}});

  std::vector<WriterTensor> out;
  for (auto& [name, shape] : shapes) {
    if (!s.omit.count(name)) out.push_back(make_tensor(name, s.dtype, shape));
  }
  return out;
}

// ---- safetensors encoding -------------------------------------------------------------------

inline const char* safetensors_dtype_name(llm::DType t) {
  return t == llm::DType::f32 ? "F32" : t == llm::DType::f16 ? "F16" : "BF16";
}

// u64 LE header length, header (space-padded to a multiple of 8), data.
inline std::string raw_safetensors(std::string header, const std::string& data) {
  while (header.size() % 8 != 0) header.push_back(' ');
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

inline std::string safetensors_bytes(const std::vector<WriterTensor>& tensors) {
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
  std::string data;
  for (const WriterTensor& t : tensors) {
    std::string shape;
    for (size_t i = 0; i < t.shape.size(); ++i) shape += (i ? "," : "") + std::to_string(t.shape[i]);
    header += ",\"" + t.name + "\":{\"dtype\":\"" + safetensors_dtype_name(t.dtype) + "\",\"shape\":[" +
              shape + "],\"data_offsets\":[" + std::to_string(data.size()) + "," +
              std::to_string(data.size() + t.bytes.size()) + "]}";
    data += t.bytes;
  }
  return raw_safetensors(header + "}", data);
}

// ---- files ----------------------------------------------------------------------------------

inline void write_file(const std::string& path, const std::string& content) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(content.data(), static_cast<std::streamsize>(content.size()));
}

inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

inline std::string shard_name(int k, int n) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model-%05d-of-%05d.safetensors", k + 1, n);
  return buf;
}

// Writes config.json, generation_config.json (if the spec has one) and the weights.
inline void write_model(const std::string& dir, const TinyModelSpec& s) {
  write_file(dir + "/config.json", json_object(config_fields(s)));
  if (!s.generation_config.empty()) write_file(dir + "/generation_config.json", s.generation_config);
  const std::vector<WriterTensor> tensors = model_tensors(s);
  if (s.num_shards <= 1) {
    write_file(dir + "/model.safetensors", safetensors_bytes(tensors));
    return;
  }
  // Contiguous runs of tensors per shard, the way HF splits by size.
  std::vector<std::vector<WriterTensor>> shards(static_cast<size_t>(s.num_shards));
  JsonFields weight_map;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const size_t k = i * shards.size() / tensors.size();
    shards[k].push_back(tensors[i]);
    weight_map.push_back({tensors[i].name, "\"" + shard_name(static_cast<int>(k), s.num_shards) + "\""});
  }
  for (size_t k = 0; k < shards.size(); ++k) {
    write_file(dir + "/" + shard_name(static_cast<int>(k), s.num_shards), safetensors_bytes(shards[k]));
  }
  write_file(dir + "/model.safetensors.index.json",
             "{\"metadata\": {\"total_size\": 0}, \"weight_map\": " + json_object(weight_map) + "}");
}

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base && *base ? base : "/tmp") + "/llm-model-test-XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    if (mkdtemp(buf.data()) != nullptr) path_ = buf.data();
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // A new empty subdirectory.
  std::string sub(const std::string& name) const {
    const std::string p = path_ + "/" + name;
    std::error_code ec;
    std::filesystem::create_directories(p, ec);
    return p;
  }

 private:
  std::string path_;
};

}  // namespace llm_test
