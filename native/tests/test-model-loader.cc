// test-model-loader.cc: loading tiny Hugging Face model directories written by model-writer.h.
// Valid models (Llama/Mistral/Qwen2, bf16/f16/f32, single file and sharded, tied, biases) load
// with the right config and views whose every element round-trips; then each error class is
// provoked once and must come back with its code and a message naming the culprit.
#include <string>

#include "model/model-weights.h"
#include "model-writer.h"
#include "test-harness.h"

using llm::DType;
using llm::StatusCode;
using llm_test::TinyModelSpec;

namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Loads dir at tp_size 1.
llm::Status load(const std::string& dir, std::unique_ptr<llm::Model>* model) {
  return llm::load_model(dir, llm::ModelLoadOptions(), model);
}

llm::Status load_status(const std::string& dir) {
  std::unique_ptr<llm::Model> model;
  return load(dir, &model);
}

bool expect_error(const llm::Status& st, StatusCode code, const std::string& part) {
  const bool ok = st.code() == code && contains(st.message(), part);
  if (!ok) {
    std::printf("  expected %s containing '%s', got %s: %s\n", llm::status_code_name(code), part.c_str(),
                st.code_name(), st.message().c_str());
  }
  return ok;
}

// Every element of the view equals what the writer stored under that name.
bool view_matches(const llm::Tensor& t, const std::string& name, int64_t rows, int64_t cols, DType dtype) {
  if (!t.present() || t.rows != rows || t.cols != cols || t.dtype != dtype) {
    std::printf("  %s: view (%lld, %lld) %s, expected (%lld, %lld) %s\n", name.c_str(),
                static_cast<long long>(t.rows), static_cast<long long>(t.cols), llm::dtype_name(t.dtype),
                static_cast<long long>(rows), static_cast<long long>(cols), llm::dtype_name(dtype));
    return false;
  }
  for (int64_t i = 0; i < rows * cols; ++i) {
    if (llm::load_f32(t.data, t.dtype, i) != llm_test::tensor_value(name, i)) {
      std::printf("  %s: element %lld differs\n", name.c_str(), static_cast<long long>(i));
      return false;
    }
  }
  return true;
}

// Checks config sizes against the spec and every bound view against the written values.
void check_model(const llm::Model& m, const TinyModelSpec& s) {
  const llm::ModelConfig& c = m.config;
  CHECK_EQ(c.vocab_size, s.vocab_size);
  CHECK_EQ(c.hidden_size, s.hidden_size);
  CHECK_EQ(c.intermediate_size, s.intermediate_size);
  CHECK_EQ(c.num_layers, s.num_layers);
  CHECK_EQ(c.num_heads, s.num_heads);
  CHECK_EQ(c.num_kv_heads, s.num_kv_heads);
  CHECK_EQ(c.head_dim, s.head_dim ? s.head_dim : s.hidden_size / s.num_heads);
  CHECK(c.dtype == s.dtype);
  CHECK_EQ(c.tie_word_embeddings, s.tie_word_embeddings);

  const llm::ModelWeights& w = m.weights;
  const int64_t h = s.hidden_size, q = s.q_dim(), kv = s.kv_dim(), inter = s.intermediate_size;
  const DType t = s.dtype;
  CHECK(view_matches(w.embed, "model.embed_tokens.weight", s.vocab_size, h, t));
  CHECK(view_matches(w.final_norm, "model.norm.weight", 1, h, t));
  if (s.tie_word_embeddings) {
    CHECK(w.lm_head.data == w.embed.data);
  } else {
    CHECK(view_matches(w.lm_head, "lm_head.weight", s.vocab_size, h, t));
  }
  CHECK_EQ(w.layers.size(), static_cast<size_t>(s.num_layers));
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const llm::LayerWeights& l = w.layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    CHECK(view_matches(l.attn_norm, p + "input_layernorm.weight", 1, h, t));
    CHECK(view_matches(l.wq, p + "self_attn.q_proj.weight", q, h, t));
    CHECK(view_matches(l.wk, p + "self_attn.k_proj.weight", kv, h, t));
    CHECK(view_matches(l.wv, p + "self_attn.v_proj.weight", kv, h, t));
    CHECK(view_matches(l.wo, p + "self_attn.o_proj.weight", h, q, t));
    CHECK(view_matches(l.mlp_norm, p + "post_attention_layernorm.weight", 1, h, t));
    CHECK(view_matches(l.w_gate, p + "mlp.gate_proj.weight", inter, h, t));
    CHECK(view_matches(l.w_up, p + "mlp.up_proj.weight", inter, h, t));
    CHECK(view_matches(l.w_down, p + "mlp.down_proj.weight", h, inter, t));
    const bool qkv_bias = s.qwen2() || s.attention_bias;
    CHECK_EQ(l.bq.present(), qkv_bias);
    if (qkv_bias) {
      CHECK(view_matches(l.bq, p + "self_attn.q_proj.bias", 1, q, t));
      CHECK(view_matches(l.bk, p + "self_attn.k_proj.bias", 1, kv, t));
      CHECK(view_matches(l.bv, p + "self_attn.v_proj.bias", 1, kv, t));
    }
    CHECK_EQ(l.bo.present(), s.attention_bias && !s.qwen2());
    if (l.bo.present()) CHECK(view_matches(l.bo, p + "self_attn.o_proj.bias", 1, h, t));
    CHECK_EQ(l.b_gate.present(), s.mlp_bias);
    if (s.mlp_bias) {
      CHECK(view_matches(l.b_gate, p + "mlp.gate_proj.bias", 1, inter, t));
      CHECK(view_matches(l.b_up, p + "mlp.up_proj.bias", 1, inter, t));
      CHECK(view_matches(l.b_down, p + "mlp.down_proj.bias", 1, h, t));
    }
  }
}

// Writes the spec into a fresh subdirectory and returns its path.
std::string write(const llm_test::TempDir& tmp, const std::string& name, const TinyModelSpec& s) {
  const std::string dir = tmp.sub(name);
  llm_test::write_model(dir, s);
  return dir;
}

void write_config(const std::string& dir, const llm_test::JsonFields& fields) {
  llm_test::write_file(dir + "/config.json", llm_test::json_object(fields));
}

}  // namespace

// ---- valid models ---------------------------------------------------------------------------

TEST(loads_llama_bf16_single_file) {
  llm_test::TempDir tmp;
  TinyModelSpec s;
  const std::string dir = write(tmp, "m", s);
  std::unique_ptr<llm::Model> m;
  llm::Status st = load(dir, &m);
  CHECK(st.ok());
  if (!st.ok()) return;
  check_model(*m, s);
  const llm::ModelConfig& c = m->config;
  CHECK(c.arch == llm::ModelArch::llama);
  CHECK(c.architecture == "LlamaForCausalLM");
  CHECK_EQ(c.max_position_embeddings, 128);
  CHECK_NEAR(c.rms_norm_eps, 1e-6, 1e-12);
  CHECK_NEAR(c.rope_theta, 10000.0, 0);
  CHECK(c.rope_scaling.type == llm::RopeScalingType::none);
  CHECK_EQ(c.sliding_window, 0);
  CHECK(!c.attention_bias && !c.mlp_bias);
  CHECK_EQ(c.bos_token_id, 1);
  CHECK(c.eos_token_ids == std::vector<int64_t>{2});
  // Untied: everything but the embedding table.
  CHECK_EQ(m->weight_bytes, m->files->total_bytes() - static_cast<uint64_t>(s.vocab_size * s.hidden_size * 2));
  CHECK(m->dir == dir);
}

// release_pages (after the CPU runner copies weights elsewhere) unmaps pages but changes nothing
// the views read: every tensor's bytes are the same before and after, and a range outside every
// file is ignored.
TEST(release_pages_keeps_what_the_views_read) {
  llm_test::TempDir tmp;
  TinyModelSpec s;
  s.hidden_size = 2048;  // tensors of several pages each
  s.intermediate_size = 4096;
  const std::string dir = write(tmp, "m", s);
  std::unique_ptr<llm::Model> m;
  CHECK(load(dir, &m).ok());
  if (!m) return;
  std::vector<std::vector<uint8_t>> before;
  for (const auto& [name, t] : m->files->tensors()) {
    const auto* p = static_cast<const uint8_t*>(t.data);
    before.emplace_back(p, p + t.nbytes);
  }
  for (const auto& [name, t] : m->files->tensors()) m->files->release_pages(t.data, t.nbytes);
  const int64_t outside = 0;
  m->files->release_pages(&outside, sizeof(outside));
  size_t i = 0;
  bool same = true;
  for (const auto& [name, t] : m->files->tensors()) {
    const auto* p = static_cast<const uint8_t*>(t.data);
    same = same && std::vector<uint8_t>(p, p + t.nbytes) == before[i++];
  }
  CHECK(same);
  check_model(*m, s);
}

TEST(loads_mistral_f16_sharded) {
  llm_test::TempDir tmp;
  TinyModelSpec s;
  s.arch = "MistralForCausalLM";
  s.dtype = DType::f16;
  s.num_shards = 3;
  const std::string dir = write(tmp, "m", s);
  std::unique_ptr<llm::Model> m;
  llm::Status st = load(dir, &m);
  CHECK(st.ok());
  if (!st.ok()) return;
  check_model(*m, s);
  CHECK(m->config.arch == llm::ModelArch::mistral);
  CHECK_EQ(m->config.sliding_window, 64);
}

TEST(loads_qwen2_f32_tied_with_bias) {
  llm_test::TempDir tmp;
  TinyModelSpec s;
  s.arch = "Qwen2ForCausalLM";
  s.dtype = DType::f32;
  s.tie_word_embeddings = true;
  s.lm_head_when_tied = true;  // present in the file but ignored
  s.num_shards = 2;
  s.generation_config = "{\"bos_token_id\": 5, \"eos_token_id\": [2, 7], \"do_sample\": true}";
  const std::string dir = write(tmp, "m", s);
  std::unique_ptr<llm::Model> m;
  llm::Status st = load(dir, &m);
  CHECK(st.ok());
  if (!st.ok()) return;
  check_model(*m, s);
  const llm::ModelConfig& c = m->config;
  CHECK(c.arch == llm::ModelArch::qwen2);
  CHECK(c.attention_bias);
  CHECK_EQ(c.sliding_window, 0);  // use_sliding_window false
  CHECK_EQ(c.bos_token_id, 5);
  CHECK((c.eos_token_ids == std::vector<int64_t>{2, 7}));
  // Tied: the table is counted once (as lm_head); the stray lm_head.weight is not counted.
  const uint64_t lm_head_bytes = static_cast<uint64_t>(s.vocab_size * s.hidden_size * 4);
  CHECK_EQ(m->weight_bytes, m->files->total_bytes() - lm_head_bytes);
}

TEST(loads_llama_with_biases_and_explicit_head_dim) {
  llm_test::TempDir tmp;
  TinyModelSpec s;
  s.attention_bias = true;
  s.mlp_bias = true;
  s.head_dim = 8;  // 4 heads * 8 = 32 != hidden 16
  s.tie_word_embeddings = true;
  const std::string dir = write(tmp, "m", s);
  std::unique_ptr<llm::Model> m;
  llm::Status st = load(dir, &m);
  CHECK(st.ok());
  if (!st.ok()) return;
  check_model(*m, s);
  CHECK(m->config.attention_bias && m->config.mlp_bias);
  CHECK_EQ(m->weight_bytes, m->files->total_bytes());
}

TEST(dtype_from_weights_when_config_has_none) {
  llm_test::TempDir tmp;
  TinyModelSpec s;
  s.dtype = DType::f16;
  s.write_torch_dtype = false;
  std::unique_ptr<llm::Model> m;
  llm::Status st = load(write(tmp, "m", s), &m);
  CHECK(st.ok());
  if (st.ok()) CHECK(m->config.dtype == DType::f16 && !m->config.dtype_from_config);
}

TEST(config_options) {
  llm_test::TempDir tmp;
  TinyModelSpec s;
  const std::string dir = write(tmp, "m", s);
  llm_test::JsonFields f = llm_test::config_fields(s);
  llm::ModelConfig c;

  llm_test::set_field(&f, "rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
                                          "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}");
  llm_test::set_field(&f, "rope_theta", "500000.0");
  llm_test::set_field(&f, "eos_token_id", "[2, 3, 4]");
  llm_test::set_field(&f, "bos_token_id", "null");
  write_config(dir, f);
  CHECK(llm::load_model_config(dir, &c).ok());
  CHECK(c.rope_scaling.type == llm::RopeScalingType::llama3);
  CHECK_NEAR(c.rope_scaling.factor, 8.0, 0);
  CHECK_NEAR(c.rope_scaling.high_freq_factor, 4.0, 0);
  CHECK_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  CHECK_NEAR(c.rope_theta, 500000.0, 0);
  CHECK((c.eos_token_ids == std::vector<int64_t>{2, 3, 4}));
  CHECK_EQ(c.bos_token_id, -1);

  llm_test::set_field(&f, "rope_scaling", "{\"type\": \"linear\", \"factor\": 2}");
  llm_test::set_field(&f, "head_dim", "null");  // HF writes null for "derive it"
  write_config(dir, f);
  CHECK(llm::load_model_config(dir, &c).ok());
  CHECK(c.rope_scaling.type == llm::RopeScalingType::linear);
  CHECK_NEAR(c.rope_scaling.factor, 2.0, 0);
  CHECK_EQ(c.head_dim, 4);

  llm_test::set_field(&f, "rope_scaling", "{\"rope_type\": \"default\"}");
  llm_test::remove_field(&f, "num_key_value_heads");  // defaults to num_attention_heads
  llm_test::remove_field(&f, "rope_theta");           // defaults to 10000
  write_config(dir, f);
  CHECK(llm::load_model_config(dir, &c).ok());
  CHECK(c.rope_scaling.type == llm::RopeScalingType::none);
  CHECK_EQ(c.num_kv_heads, 4);
  CHECK_NEAR(c.rope_theta, 10000.0, 0);

  // Qwen2 with use_sliding_window true takes its sliding_window.
  TinyModelSpec q;
  q.arch = "Qwen2ForCausalLM";
  llm_test::JsonFields qf = llm_test::config_fields(q);
  llm_test::set_field(&qf, "use_sliding_window", "true");
  write_config(dir, qf);
  CHECK(llm::load_model_config(dir, &c).ok());
  CHECK_EQ(c.sliding_window, 4096);

  // Mistral's sliding_window may be null.
  TinyModelSpec mi;
  mi.arch = "MistralForCausalLM";
  llm_test::JsonFields mf = llm_test::config_fields(mi);
  llm_test::set_field(&mf, "sliding_window", "null");
  write_config(dir, mf);
  CHECK(llm::load_model_config(dir, &c).ok());
  CHECK_EQ(c.sliding_window, 0);
}

// ---- errors: files --------------------------------------------------------------------------

TEST(error_missing_directory_and_files) {
  llm_test::TempDir tmp;
  const std::string absent = tmp.path() + "/nope";
  CHECK(expect_error(load_status(absent), StatusCode::model_file_missing, "config.json"));
  std::unique_ptr<llm::SafetensorsModel> st_model;
  CHECK(expect_error(llm::SafetensorsModel::open_dir(absent, &st_model), StatusCode::model_file_missing,
                     "model.safetensors"));

  // Config but no weights.
  const std::string dir = write(tmp, "m", TinyModelSpec());
  std::remove((dir + "/model.safetensors").c_str());
  CHECK(expect_error(load_status(dir), StatusCode::model_file_missing, "no model.safetensors"));

  std::unique_ptr<llm::MappedFile> f;
  CHECK(expect_error(llm::MappedFile::open(dir + "/x.safetensors", &f), StatusCode::model_file_missing, "x.safetensors"));
  CHECK(llm::MappedFile::open(dir, &f).code() == StatusCode::io_error);  // a directory
}

TEST(error_unsupported_architecture) {
  llm_test::TempDir tmp;
  TinyModelSpec s;
  s.arch = "GPT2LMHeadModel";
  llm::Status st = load_status(write(tmp, "m", s));
  CHECK(expect_error(st, StatusCode::model_arch_unsupported, "GPT2LMHeadModel"));
  CHECK(contains(st.message(), "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"));

  llm_test::JsonFields f = llm_test::config_fields(TinyModelSpec());
  llm_test::remove_field(&f, "architectures");
  const std::string dir = tmp.sub("noarch");
  write_config(dir, f);
  CHECK(expect_error(load_status(dir), StatusCode::model_config_invalid, "architectures"));
}

TEST(error_truncated_file) {
  llm_test::TempDir tmp;
  const std::string dir = write(tmp, "m", TinyModelSpec());
  const std::string path = dir + "/model.safetensors";
  const std::string full = llm_test::read_file(path);
  llm_test::write_file(path, full.substr(0, full.size() - 1));  // inside the data
  CHECK(expect_error(load_status(dir), StatusCode::model_file_truncated, "model.safetensors"));
  llm_test::write_file(path, full.substr(0, 100));  // inside the header
  CHECK(expect_error(load_status(dir), StatusCode::model_file_truncated, "header of"));
  llm_test::write_file(path, full.substr(0, 5));  // inside the length prefix
  CHECK(expect_error(load_status(dir), StatusCode::model_file_truncated, "8-byte"));
  llm_test::write_file(path, "");
  CHECK(expect_error(load_status(dir), StatusCode::model_file_truncated, "0 bytes"));
}

TEST(error_safetensors_header) {
  llm_test::TempDir tmp;
  const std::string path = tmp.path() + "/t.safetensors";
  const std::string data8(8, '\0');
  auto open_with = [&](const std::string& header, const std::string& data) {
    llm_test::write_file(path, llm_test::raw_safetensors(header, data));
    std::unique_ptr<llm::SafetensorsModel> m;
    return llm::SafetensorsModel::open_file(path, &m);
  };
  auto entry = [](const std::string& dtype, const std::string& shape, const std::string& offsets) {
    return "\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":" + offsets;
  };

  // Consistent header, data missing from the file: truncated.
  CHECK(expect_error(open_with("{\"a\":{" + entry("F32", "[4]", "[0,16]") + "}}", data8),
                     StatusCode::model_file_truncated, "need 16"));
  // Offsets disagreeing with each other or with the shape: header invalid.
  CHECK(expect_error(open_with("{\"a\":{" + entry("F32", "[2]", "[8,16]") + "}}", data8),
                     StatusCode::model_header_invalid, "tile"));
  CHECK(expect_error(open_with("{\"a\":{" + entry("F32", "[2]", "[8,0]") + "}}", data8),
                     StatusCode::model_header_invalid, "end < begin"));
  CHECK(expect_error(open_with("{\"a\":{" + entry("F32", "[3]", "[0,8]") + "}}", data8),
                     StatusCode::model_header_invalid, "needs 12"));
  CHECK(expect_error(open_with("{\"a\":{" + entry("F32", "[1]", "[0,4]") + "},\"b\":{" +
                                   entry("F32", "[2]", "[2,10]") + "}}", data8 + "xx"),
                     StatusCode::model_header_invalid, "tile"));
  CHECK(expect_error(open_with("{\"a\":{" + entry("F32", "[1]", "[0,4]") + "}}", data8),
                     StatusCode::model_header_invalid, "no tensor covers"));
  CHECK(expect_error(open_with("{\"a\":{" + entry("F32", "[4294967296,4294967296,4294967296]", "[0,8]") + "}}", data8),
                     StatusCode::model_header_invalid, "overflows"));
  CHECK(expect_error(open_with("{\"a\":{" + entry("F32", "[-2]", "[0,8]") + "}}", data8),
                     StatusCode::model_header_invalid, "shape"));
  CHECK(expect_error(open_with("{\"a\":{" + entry("F32", "[2]", "[0]") + "}}", data8),
                     StatusCode::model_header_invalid, "data_offsets"));
  CHECK(expect_error(open_with("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", data8),
                     StatusCode::model_header_invalid, "dtype"));
  CHECK(expect_error(open_with("{\"a\":{" + entry("I64", "[1]", "[0,8]") + "}}", data8),
                     StatusCode::model_tensor_dtype, "I64"));
  CHECK(expect_error(open_with("[1, 2]", data8), StatusCode::model_header_invalid, "not a JSON object"));
  CHECK(expect_error(open_with("{\"a\":", data8), StatusCode::model_header_invalid, "JSON parse error"));
  // Misaligned data: an unpadded header of odd length puts the F32 tensor at an odd address.
  {
    std::string hdr = "{\"a\":{" + entry("F32", "[1]", "[0,4]") + "}}";
    if (hdr.size() % 2 == 0) hdr += " ";
    std::string prefix(8, '\0');
    for (int i = 0; i < 8; ++i) prefix[static_cast<size_t>(i)] = static_cast<char>((hdr.size() >> (8 * i)) & 0xff);
    llm_test::write_file(path, prefix + hdr + "abcd");
    std::unique_ptr<llm::SafetensorsModel> m;
    CHECK(expect_error(llm::SafetensorsModel::open_file(path, &m), StatusCode::model_header_invalid, "aligned"));
  }
  // A huge declared header length is rejected before anything is read.
  llm_test::write_file(path, std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}");
  {
    std::unique_ptr<llm::SafetensorsModel> m;
    CHECK(expect_error(llm::SafetensorsModel::open_file(path, &m), StatusCode::model_header_invalid, "100 MB"));
  }
  // A valid file with metadata and a zero-sized tensor loads.
  CHECK(open_with("{\"__metadata__\":{\"format\":\"pt\"},\"z\":{" + entry("BF16", "[0,4]", "[0,0]") + "},\"a\":{" +
                      entry("BF16", "[4]", "[0,8]") + "}}", data8).ok());
}

// ---- errors: weights against config ---------------------------------------------------------

TEST(error_shape_disagrees_with_config) {
  llm_test::TempDir tmp;
  TinyModelSpec s;
  const std::string dir = write(tmp, "m", s);
  llm_test::JsonFields f = llm_test::config_fields(s);
  llm_test::set_field(&f, "intermediate_size", "32");
  write_config(dir, f);
  CHECK(expect_error(load_status(dir), StatusCode::model_tensor_shape,
                     "tensor 'model.layers.0.mlp.gate_proj.weight': expected shape [32, 16], got [24, 16]"));
}

TEST(error_dtype_disagrees) {
  llm_test::TempDir tmp;
  TinyModelSpec s;
  const std::string dir = write(tmp, "m", s);  // bf16 weights
  llm_test::JsonFields f = llm_test::config_fields(s);
  llm_test::set_field(&f, "torch_dtype", "\"float16\"");
  write_config(dir, f);
  CHECK(expect_error(load_status(dir), StatusCode::model_tensor_dtype,
                     "tensor 'model.embed_tokens.weight': dtype bf16, but the model is f16"));
  llm_test::set_field(&f, "torch_dtype", "\"int8\"");
  write_config(dir, f);
  CHECK(expect_error(load_status(dir), StatusCode::model_config_invalid, "int8"));
}

TEST(error_missing_tensor) {
  llm_test::TempDir tmp;
  TinyModelSpec s;
  s.omit = {"model.layers.1.self_attn.v_proj.weight"};
  CHECK(expect_error(load_status(write(tmp, "a", s)), StatusCode::model_tensor_missing,
                     "tensor 'model.layers.1.self_attn.v_proj.weight' is missing"));
  // Untied config, no lm_head.
  TinyModelSpec t;
  t.tie_word_embeddings = true;
  const std::string dir = write(tmp, "b", t);
  llm_test::JsonFields f = llm_test::config_fields(t);
  llm_test::set_field(&f, "tie_word_embeddings", "false");
  write_config(dir, f);
  CHECK(expect_error(load_status(dir), StatusCode::model_tensor_missing, "lm_head.weight"));
  // Qwen2 without biases.
  TinyModelSpec q;
  q.arch = "Qwen2ForCausalLM";
  q.omit = {"model.layers.0.self_attn.k_proj.bias"};
  CHECK(expect_error(load_status(write(tmp, "c", q)), StatusCode::model_tensor_missing, "k_proj.bias"));
}

TEST(error_bad_index) {
  llm_test::TempDir tmp;
  TinyModelSpec s;
  s.num_shards = 2;
  const std::string dir = write(tmp, "m", s);
  const std::string index_path = dir + "/model.safetensors.index.json";
  const std::string index = llm_test::read_file(index_path);
  const std::string shard1 = llm_test::shard_name(0, 2);
  const std::string shard2 = llm_test::shard_name(1, 2);
  CHECK(load_status(dir).ok());

  // A tensor of shard 1 claimed by shard 2.
  std::string edited = index;
  const std::string key = "\"model.embed_tokens.weight\": \"" + shard1 + "\"";
  CHECK(contains(edited, key));
  edited.replace(edited.find(key), key.size(), "\"model.embed_tokens.weight\": \"" + shard2 + "\"");
  llm_test::write_file(index_path, edited);
  CHECK(expect_error(load_status(dir), StatusCode::model_tensor_missing, "model.embed_tokens.weight"));
  // A tensor no shard holds.
  llm_test::write_file(index_path, "{\"weight_map\": {\"ghost\": \"" + shard1 + "\"}}");
  CHECK(expect_error(load_status(dir), StatusCode::model_tensor_missing, "ghost"));
  // A shard that is not there.
  llm_test::write_file(index_path, "{\"weight_map\": {\"x\": \"model-00009-of-00009.safetensors\"}}");
  CHECK(expect_error(load_status(dir), StatusCode::model_file_missing, "model-00009-of-00009.safetensors"));
  // Malformed index.
  llm_test::write_file(index_path, "{\"weight_map\": ");
  CHECK(expect_error(load_status(dir), StatusCode::model_header_invalid, "index.json"));
  llm_test::write_file(index_path, "{\"weight_map\": []}");
  CHECK(expect_error(load_status(dir), StatusCode::model_header_invalid, "weight_map"));
  llm_test::write_file(index_path, "{\"weight_map\": {\"x\": \"../../etc/passwd\"}}");
  CHECK(expect_error(load_status(dir), StatusCode::model_header_invalid, "file name"));
  llm_test::write_file(index_path, "{\"weight_map\": {\"x\": 3}}");
  CHECK(expect_error(load_status(dir), StatusCode::model_header_invalid, "file name"));

  // The same tensor in two shards.
  llm_test::write_file(index_path, index);
  std::vector<llm_test::WriterTensor> dup = {llm_test::make_tensor("model.norm.weight", DType::bf16, {16})};
  const std::string extra = "model-extra.safetensors";
  llm_test::write_file(dir + "/" + extra, llm_test::safetensors_bytes(dup));
  llm_test::write_file(index_path, "{\"weight_map\": {\"model.norm.weight\": \"" + extra + "\", \"a\": \"" + shard1 +
                                       "\", \"b\": \"" + shard2 + "\"}}");
  CHECK(expect_error(load_status(dir), StatusCode::model_header_invalid, "'model.norm.weight' is also in"));

  // Missing shard file with the original index.
  llm_test::write_file(index_path, index);
  std::remove((dir + "/" + shard2).c_str());
  CHECK(expect_error(load_status(dir), StatusCode::model_file_missing, shard2));
}

// transformers 4 (rope_theta + rope_scaling) and transformers 5 (rope_parameters) forms of the
// same config read into the same numbers, alone or together; yarn's defaults and attention
// factor are transformers'.
TEST(config_rope_forms) {
  llm_test::TempDir tmp;
  TinyModelSpec s;
  const std::string dir = write(tmp, "m", s);
  auto load_with = [&](const std::vector<std::pair<std::string, const char*>>& set, const std::vector<std::string>& drop,
                       llm::ModelConfig* c) {
    llm_test::JsonFields f = llm_test::config_fields(s);
    for (const auto& [k, v] : set) llm_test::set_field(&f, k, v);
    for (const std::string& k : drop) llm_test::remove_field(&f, k);
    write_config(dir, f);
    const llm::Status st = llm::load_model_config(dir, c);
    if (!st.ok()) std::fprintf(stderr, "  %s\n", st.message().c_str());
    return st.ok();
  };
  struct Form {
    const char* scaling;     // transformers 4 rope_scaling
    const char* parameters;  // transformers 5 rope_parameters (theta 500000)
  };
  const Form forms[] = {
      {"null", "{\"rope_type\": \"default\", \"rope_theta\": 500000.0}"},
      {"{\"rope_type\": \"linear\", \"factor\": 2.0}", "{\"rope_type\": \"linear\", \"factor\": 2.0, \"rope_theta\": 500000.0}"},
      {"{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
       "\"original_max_position_embeddings\": 64}",
       "{\"factor\": 8.0, \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0, \"original_max_position_embeddings\": 64, "
       "\"rope_theta\": 500000.0, \"rope_type\": \"llama3\"}"},
      {"{\"type\": \"dynamic\", \"factor\": 2.0}", "{\"rope_type\": \"dynamic\", \"factor\": 2.0, \"rope_theta\": 500000.0}"},
      {"{\"rope_type\": \"yarn\", \"factor\": 4.0, \"original_max_position_embeddings\": 32}",
       "{\"rope_type\": \"yarn\", \"factor\": 4.0, \"original_max_position_embeddings\": 32, \"rope_theta\": 500000.0}"},
  };
  for (const Form& form : forms) {
    llm::ModelConfig t4, t5, both;
    CHECK(load_with({{"rope_theta", "500000.0"}, {"rope_scaling", form.scaling}}, {}, &t4));
    CHECK(load_with({{"rope_parameters", form.parameters}}, {"rope_theta", "rope_scaling"}, &t5));
    CHECK(load_with({{"rope_theta", "500000.0"}, {"rope_scaling", form.scaling}, {"rope_parameters", form.parameters}}, {},
                    &both));
    CHECK(t4.rope_scaling == t5.rope_scaling);
    CHECK(t4.rope_scaling == both.rope_scaling);
    CHECK_NEAR(t4.rope_theta, 500000.0, 0);
    CHECK_NEAR(t5.rope_theta, 500000.0, 0);
  }

  // Both forms, disagreeing: refused naming both.
  llm::ModelConfig bad;
  CHECK(!load_with({{"rope_scaling", "{\"rope_type\": \"linear\", \"factor\": 2.0}"},
                    {"rope_parameters", "{\"rope_type\": \"linear\", \"factor\": 4.0, \"rope_theta\": 10000.0}"}},
                   {}, &bad));
  {
    llm_test::JsonFields f = llm_test::config_fields(s);
    llm_test::set_field(&f, "rope_scaling", "{\"rope_type\": \"linear\", \"factor\": 2.0}");
    llm_test::set_field(&f, "rope_parameters", "{\"rope_type\": \"yarn\", \"factor\": 2.0, \"rope_theta\": 10000.0}");
    write_config(dir, f);
    CHECK(expect_error(llm::load_model_config(dir, &bad), StatusCode::model_config_invalid,
                       "'rope_scaling' (rope_type linear, factor 2.000000) and 'rope_parameters' (rope_type yarn, factor "
                       "2.000000) disagree"));
  }

  // yarn: beta 32 / 1, truncate, original = max_position_embeddings by default; the attention
  // factor 0.1 ln(factor) + 1, or mscale / mscale_all_dim, or the one given.
  llm::ModelConfig c;
  CHECK(load_with({{"rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4.0}"}}, {}, &c));
  CHECK(c.rope_scaling.type == llm::RopeScalingType::yarn);
  CHECK_EQ(c.rope_scaling.original_max_position_embeddings, 128);
  CHECK_NEAR(c.rope_scaling.beta_fast, 32.0, 0);
  CHECK_NEAR(c.rope_scaling.beta_slow, 1.0, 0);
  CHECK(c.rope_scaling.truncate);
  CHECK_NEAR(c.rope_scaling.attention_factor, 0.1 * std::log(4.0) + 1.0, 1e-6);
  CHECK(load_with({{"rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 40.0, \"mscale\": 1.0, \"mscale_all_dim\": 0.707}"}},
                  {}, &c));
  CHECK_NEAR(c.rope_scaling.attention_factor, (0.1 * std::log(40.0) + 1.0) / (0.1 * 0.707 * std::log(40.0) + 1.0), 1e-6);
  CHECK(load_with({{"rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4.0, \"attention_factor\": 0.5, "
                                    "\"beta_fast\": 16, \"beta_slow\": 2, \"truncate\": false}"}},
                  {}, &c));
  CHECK_NEAR(c.rope_scaling.attention_factor, 0.5, 0);
  CHECK_NEAR(c.rope_scaling.beta_fast, 16.0, 0);
  CHECK(!c.rope_scaling.truncate);
}

// Qwen3: q/k norms, head_dim of its own, attention_bias read (not implied as for Qwen2).
TEST(config_qwen3) {
  llm_test::TempDir tmp;
  TinyModelSpec s;
  const std::string dir = write(tmp, "m", s);
  llm_test::JsonFields f = llm_test::config_fields(s);
  llm_test::set_field(&f, "architectures", "[\"Qwen3ForCausalLM\"]");
  llm_test::remove_field(&f, "mlp_bias");
  llm_test::set_field(&f, "head_dim", "8");
  llm_test::set_field(&f, "layer_types", "[\"full_attention\", \"full_attention\"]");
  llm_test::set_field(&f, "max_window_layers", "2");
  llm_test::set_field(&f, "use_sliding_window", "false");
  llm_test::set_field(&f, "sliding_window", "null");
  write_config(dir, f);
  llm::ModelConfig c;
  const llm::Status st = llm::load_model_config(dir, &c);
  CHECK(st.ok());
  if (!st.ok()) std::fprintf(stderr, "  %s\n", st.message().c_str());
  CHECK(c.arch == llm::ModelArch::qwen3);
  CHECK(c.qk_norm);
  CHECK(!c.attention_bias);
  CHECK_EQ(c.head_dim, 8);
  CHECK_EQ(c.sliding_window, 0);
  // A sliding layer caps the context at the window.
  llm_test::set_field(&f, "layer_types", "[\"full_attention\", \"sliding_attention\"]");
  llm_test::set_field(&f, "sliding_window", "64");
  write_config(dir, f);
  CHECK(llm::load_model_config(dir, &c).ok());
  CHECK_EQ(c.sliding_window, 64);
  llm_test::set_field(&f, "layer_types", "[\"full_attention\", \"chunked_attention\"]");
  write_config(dir, f);
  CHECK(expect_error(llm::load_model_config(dir, &c), StatusCode::model_config_invalid, "\"chunked_attention\""));
}

TEST(error_bad_config_values) {
  llm_test::TempDir tmp;
  TinyModelSpec s;
  const std::string dir = write(tmp, "m", s);
  struct Case {
    const char* key;
    const char* value;  // nullptr: remove the key
    const char* expect;
  };
  const Case cases[] = {
      {"hidden_size", nullptr, "missing required key 'hidden_size'"},
      {"hidden_size", "\"16\"", "'hidden_size' must be an integer"},
      {"hidden_size", "16.0", "'hidden_size' must be an integer"},
      {"hidden_size", "-16", "out of range"},
      {"hidden_size", "0", "out of range"},
      {"vocab_size", "4194305", "out of range"},  // 2^22 + 1
      {"intermediate_size", "9223372036854775807", "out of range"},
      {"num_hidden_layers", "100000", "out of range"},
      {"num_key_value_heads", "3", "not a multiple"},
      {"num_key_value_heads", "8", "not a multiple"},
      {"num_attention_heads", "3", "not divisible"},
      {"head_dim", "5", "must be even"},
      {"head_dim", "16777216", "exceeds"},
      {"rms_norm_eps", "0", "out of range"},
      {"rms_norm_eps", "\"x\"", "must be a number"},
      {"rope_theta", "-1", "out of range"},
      {"rope_scaling", "{\"rope_type\": \"longrope\", \"factor\": 4}", "rope_type 'longrope' is not supported"},
      {"rope_scaling", "{\"rope_type\": \"yarn\"}", "'factor'"},
      {"rope_scaling", "{\"rope_type\": \"linear\", \"factor\": 2, \"low_freq_factor\": 1}",
       "'low_freq_factor' = 1 is not used by rope_type 'linear'"},
      {"rope_scaling", "{\"rope_type\": \"yarn\", \"type\": \"linear\", \"factor\": 2}", "disagree"},
      {"rope_scaling", "{\"rope_type\": \"dynamic\", \"factor\": 2, \"original_max_position_embeddings\": 64}",
       "'original_max_position_embeddings' = 64"},
      {"rope_parameters", "{\"rope_type\": \"mrope\", \"rope_theta\": 10000.0}", "rope_type 'mrope' is not supported"},
      {"rope_parameters", "{\"rope_type\": \"default\", \"rope_theta\": 500000.0}",
       "'rope_theta' = 10000 and 'rope_parameters.rope_theta' = 500000 disagree"},
      {"rope_parameters", "{\"full_attention\": {\"rope_type\": \"default\"}, \"rope_type\": \"default\"}",
       "rope parameters per layer type ('full_attention')"},
      {"rope_parameters", "{\"rope_type\": \"default\", \"partial_rotary_factor\": 0.5}", "'partial_rotary_factor' = 0.5"},
      {"rope_scaling", "{\"factor\": 4}", "missing 'rope_type'"},
      {"rope_scaling", "{\"rope_type\": \"linear\"}", "'factor'"},
      {"rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 4, \"high_freq_factor\": 1, "
                       "\"original_max_position_embeddings\": 8192}", "greater than"},
      {"rope_scaling", "[1]", "must be an object"},
      {"tie_word_embeddings", "1", "must be true or false"},
      {"eos_token_id", "[2, \"x\"]", "eos_token_id"},
      {"eos_token_id", "32", "eos_token_id"},  // == vocab_size
      {"bos_token_id", "-1", "out of range"},
      {"architectures", "[]", "architectures"},
      // Keys that change the numbers and are not implemented: refused, naming key and value.
      {"hidden_act", "\"gelu\"", "'hidden_act' = \"gelu\" is not supported"},
      {"partial_rotary_factor", "0.5", "'partial_rotary_factor' = 0.5 is not supported"},
      {"attn_logit_softcapping", "50.0", "'attn_logit_softcapping' = 50 is not supported"},
      {"final_logit_softcapping", "30.0", "'final_logit_softcapping' = 30 is not supported"},
      {"qk_norm", "true", "'qk_norm' = true is not supported"},
      {"use_qk_norm", "true", "'use_qk_norm' = true is not supported"},
      {"quantization_config", "{\"quant_method\": \"awq\"}", "'quantization_config' = {...} is not supported"},
      {"num_local_experts", "8", "'num_local_experts' = 8 is not supported"},
      {"use_mrope", "true", "'use_mrope' = true is not supported"},
      {"query_pre_attn_scalar", "256", "'query_pre_attn_scalar' = 256 is not supported"},
      {"logits_scaling", "4.0", "'logits_scaling' = 4 is not supported"},
      {"sliding_window", "4096", "key 'sliding_window' = 4096 is not known to this engine for LlamaForCausalLM"},
      {"some_new_key", "1", "key 'some_new_key' = 1 is not known to this engine"},
      {"dtype", "\"float16\"", "'dtype' = \"float16\" and 'torch_dtype' = \"bfloat16\" disagree"},
      {"architectures", "[7]", "architectures"},
  };
  for (const Case& c : cases) {
    llm_test::JsonFields f = llm_test::config_fields(s);
    if (c.value) llm_test::set_field(&f, c.key, c.value);
    else llm_test::remove_field(&f, c.key);
    write_config(dir, f);
    llm::ModelConfig cfg;
    CHECK(expect_error(llm::load_model_config(dir, &cfg), StatusCode::model_config_invalid, c.expect));
  }
  llm_test::write_file(dir + "/config.json", "[]");
  llm::ModelConfig cfg;
  CHECK(expect_error(llm::load_model_config(dir, &cfg), StatusCode::model_config_invalid, "JSON object"));
  llm_test::write_file(dir + "/config.json", "{\"architectures\": [\"LlamaForCausalLM\"],}");
  CHECK(expect_error(llm::load_model_config(dir, &cfg), StatusCode::model_config_invalid, "config.json: JSON parse error"));

  // A broken generation_config.json is an error too, not silently skipped.
  write_config(dir, llm_test::config_fields(s));
  llm_test::write_file(dir + "/generation_config.json", "{\"eos_token_id\": ");
  CHECK(expect_error(llm::load_model_config(dir, &cfg), StatusCode::model_config_invalid, "generation_config.json"));
  llm_test::write_file(dir + "/generation_config.json", "{\"eos_token_id\": 1000}");
  CHECK(expect_error(llm::load_model_config(dir, &cfg), StatusCode::model_config_invalid, "generation_config.json"));
}

TEST(tensor_parallel_options) {
  llm_test::TempDir tmp;
  const std::string dir = write(tmp, "m", TinyModelSpec());
  std::unique_ptr<llm::Model> m;
  llm::ModelLoadOptions o;
  o.tp_size = 2;  // 4 heads, 2 kv heads, 24 FFN columns: rank 1 of 2 takes heads 2-3, kv head 1, columns 12-23
  o.tp_rank = 1;
  CHECK(llm::load_model(dir, o, &m).ok());
  if (m) {
    CHECK(m->shard.num_heads == 2 && m->shard.num_kv_heads == 1 && m->shard.first_kv_head == 1 &&
          m->shard.intermediate == 12);
    const llm::LayerWeights& l = m->weights.layers[0];
    CHECK(l.wq.rows == 8 && l.wq.cols == 16 && l.wk.rows == 4 && l.wo.rows == 16 && l.wo.cols == 8);
    CHECK(l.w_gate.rows == 12 && l.w_down.rows == 16 && l.w_down.cols == 12);
    // Rows are views into the file, columns copies: element (r, c) of rank 1's o_proj is (r, 8 + c).
    CHECK(llm::load_f32(l.wo.data, l.wo.dtype, 1 * 8 + 3) ==
          llm_test::tensor_value("model.layers.0.self_attn.o_proj.weight", 1 * 16 + 8 + 3));
    CHECK(llm::load_f32(l.wq.data, l.wq.dtype, 0) ==
          llm_test::tensor_value("model.layers.0.self_attn.q_proj.weight", 8 * 16));
  }
  m.reset();
  o.tp_rank = 0;
  o.tp_size = 3;
  CHECK(expect_error(llm::load_model(dir, o, &m), StatusCode::invalid_argument, "does not split this model"));
  o.tp_size = 1;
  o.tp_rank = 1;
  CHECK(expect_error(llm::load_model(dir, o, &m), StatusCode::invalid_argument, "tp_rank"));
  o.tp_size = 0;
  o.tp_rank = 0;
  CHECK(expect_error(llm::load_model(dir, o, &m), StatusCode::invalid_argument, "tp_size"));
  CHECK(m == nullptr);
}

int main() { return llm_test::run_all(); }
