// test-model-fuzz.cc: hundreds of deterministic corruptions of a valid tiny model. Each must
// load to a non-ok Status, or load fine when only tensor data bytes changed; none may crash
// (run it under ASan/UBSan to make "crash" include every invalid read and overflow).
//
// Corruptions (seeded, so every run tries the same variants): bit flips and byte overwrites
// in the safetensors length prefix and header, chosen length prefixes, truncations, data-only
// flips, config.json keys given wrong types/negative/huge values or removed, random bytes of
// config.json, shards and the index removed, index edits and random index bytes. Then the inputs
// the libFuzzer targets (native/fuzz) found, each kept as a regression case.
#include <filesystem>
#include <map>
#include <random>
#include <string>

#include "model/model-weights.h"
#include "model-writer.h"
#include "test-harness.h"

using llm_test::TinyModelSpec;

namespace {

using Files = std::map<std::string, std::string>;  // file name in the model dir -> content

struct Fuzzer {
  std::string dir;                         // rewritten for every variant
  std::mt19937_64 rng{0x5eed2024};         // the standard fixes mt19937_64's sequence
  int variants = 0;
  std::map<std::string, int> histogram;    // status code name -> count

  uint64_t below(uint64_t n) { return n == 0 ? 0 : rng() % n; }

  // Writes exactly `files` into the variant directory and loads it.
  void run(const Files& files, bool must_load, const char* what) {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
    std::filesystem::create_directories(dir, ec);
    for (const auto& [name, content] : files) llm_test::write_file(dir + "/" + name, content);

    std::unique_ptr<llm::Model> model;
    const llm::Status st = llm::load_model(dir, llm::ModelLoadOptions(), &model);
    ++variants;
    ++histogram[st.code_name()];
    if (must_load && !st.ok()) {
      std::printf("  %s: expected to load, got %s: %s\n", what, st.code_name(), st.message().c_str());
      CHECK(st.ok());
    }
    if (st.ok()) CHECK(model_is_consistent(*model));
  }

  // What a later layer relies on after an ok load: views sized by the config, readable to
  // their last byte (a view past its mapping would fault here).
  static bool model_is_consistent(const llm::Model& m) {
    const llm::ModelConfig& c = m.config;
    if (c.head_dim % 2 != 0 || c.num_heads % c.num_kv_heads != 0) return false;
    volatile uint8_t sink = 0;
    auto touch = [&](const llm::Tensor& t, int64_t rows, int64_t cols) {
      if (!t.present() || t.rows != rows || t.cols != cols || t.dtype != c.dtype) return false;
      const auto* p = static_cast<const uint8_t*>(t.data);
      const int64_t n = rows * cols * llm::dtype_size(t.dtype);
      for (int64_t i = 0; i < n; ++i) sink = static_cast<uint8_t>(sink ^ p[i]);
      return true;
    };
    const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
    bool ok = touch(m.weights.embed, c.vocab_size, h) && touch(m.weights.lm_head, c.vocab_size, h) &&
              touch(m.weights.final_norm, 1, h) &&
              m.weights.layers.size() == static_cast<size_t>(c.num_layers);
    for (const llm::LayerWeights& l : m.weights.layers) {
      ok = ok && touch(l.wq, q, h) && touch(l.wk, kv, h) && touch(l.wv, kv, h) && touch(l.wo, h, q) &&
           touch(l.w_gate, c.intermediate_size, h) && touch(l.w_down, h, c.intermediate_size);
    }
    return ok;
  }
};

uint64_t header_end(const std::string& st_bytes) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(st_bytes[static_cast<size_t>(i)]);
  return 8 + n;
}

std::string with_length_prefix(std::string bytes, uint64_t n) {
  for (int i = 0; i < 8; ++i) bytes[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return bytes;
}

}  // namespace

TEST(fuzz_corrupted_models_never_crash) {
  llm_test::TempDir tmp;
  Fuzzer fz;
  fz.dir = tmp.path() + "/variant";

  // The single-file base: a Qwen2-style model with biases so more tensors are bound.
  TinyModelSpec s;
  s.arch = "Qwen2ForCausalLM";
  s.generation_config = "{\"eos_token_id\": [2, 3]}";
  const Files base = {
      {"config.json", llm_test::json_object(llm_test::config_fields(s))},
      {"generation_config.json", s.generation_config},
      {"model.safetensors", llm_test::safetensors_bytes(llm_test::model_tensors(s))},
  };
  fz.run(base, true, "base");
  const std::string& st_bytes = base.at("model.safetensors");
  const uint64_t hdr_end = header_end(st_bytes);
  const uint64_t file_size = st_bytes.size();

  // 1. Bit flips in the length prefix and header.
  for (int i = 0; i < 100; ++i) {
    Files f = base;
    f["model.safetensors"][fz.below(hdr_end)] ^= static_cast<char>(1u << fz.below(8));
    fz.run(f, false, "header bit flip");
  }
  // 2. Byte overwrites in the header, with bytes that matter to JSON and some at random.
  const char interesting[] = {'"', '{', '}', '[', ']', ',', ':', '0', '9', '-', ' ', 'e', '\0', '\xff', '\\'};
  for (int i = 0; i < 80; ++i) {
    Files f = base;
    const uint64_t at = 8 + fz.below(hdr_end - 8);
    f["model.safetensors"][at] = i % 2 ? interesting[fz.below(sizeof(interesting))] : static_cast<char>(fz.rng());
    fz.run(f, false, "header byte overwrite");
  }
  // 3. Chosen length prefixes: zero, off by one, past the end, huge, top bit set.
  const uint64_t n = hdr_end - 8;
  for (uint64_t len : {uint64_t{0}, uint64_t{1}, n - 1, n + 1, n + 8, file_size - 8, file_size - 7, file_size,
                       uint64_t{100} << 20, (uint64_t{100} << 20) + 1, uint64_t{1} << 32, uint64_t{1} << 63,
                       ~uint64_t{0}, ~uint64_t{0} - 7}) {
    Files f = base;
    f["model.safetensors"] = with_length_prefix(st_bytes, len);
    fz.run(f, false, "length prefix");
  }
  // 4. Truncations: every length up to 16, then spread over the whole file.
  for (uint64_t len = 0; len < 16; ++len) {
    Files f = base;
    f["model.safetensors"].resize(len);
    fz.run(f, false, "truncation");
  }
  for (int i = 0; i < 40; ++i) {
    Files f = base;
    f["model.safetensors"].resize(16 + fz.below(file_size - 16));
    fz.run(f, false, "truncation");
  }
  // 5. Data-only corruption: the model still loads (values are not checked).
  for (int i = 0; i < 20; ++i) {
    Files f = base;
    f["model.safetensors"][hdr_end + fz.below(file_size - hdr_end)] ^= static_cast<char>(fz.rng() | 1);
    fz.run(f, true, "data byte flip");
  }
  // 6. Every config key: wrong types, zero, negative, huge, fractional, removed.
  const char* replacements[] = {"-1", "0", "1", "3", "1e30", "-1e30", "1.5", "9223372036854775807",
                                "4294967296", "\"str\"", "null", "[]", "{}", "true", "[1, 2]",
                                "{\"rope_type\": \"llama3\", \"factor\": -1}"};
  for (const auto& [key, value] : llm_test::config_fields(s)) {
    for (const char* r : replacements) {
      llm_test::JsonFields fields = llm_test::config_fields(s);
      llm_test::set_field(&fields, key, r);
      Files f = base;
      f["config.json"] = llm_test::json_object(fields);
      fz.run(f, false, "config value");
    }
    llm_test::JsonFields fields = llm_test::config_fields(s);
    llm_test::remove_field(&fields, key);
    Files f = base;
    f["config.json"] = llm_test::json_object(fields);
    fz.run(f, false, "config key removed");
  }
  // 7. Random bytes of config.json and generation_config.json.
  for (int i = 0; i < 40; ++i) {
    Files f = base;
    std::string& text = f[i % 4 ? "config.json" : "generation_config.json"];
    text[fz.below(text.size())] = i % 2 ? interesting[fz.below(sizeof(interesting))] : static_cast<char>(fz.rng());
    fz.run(f, false, "config byte");
  }

  // The sharded base: three shards and an index.
  TinyModelSpec sh = s;
  sh.num_shards = 3;
  Files sharded;
  {
    llm_test::TempDir src;
    llm_test::write_model(src.path(), sh);
    for (const auto& e : std::filesystem::directory_iterator(src.path())) {
      sharded[e.path().filename().string()] = llm_test::read_file(e.path().string());
    }
  }
  fz.run(sharded, true, "sharded base");
  // 8. Each shard removed, the index removed.
  for (const auto& [name, content] : sharded) {
    if (name.find(".safetensors") == std::string::npos) continue;
    Files f = sharded;
    f.erase(name);
    fz.run(f, false, "file removed");
  }
  // 9. Index edits: random bytes, structural replacements.
  const std::string index_name = "model.safetensors.index.json";
  for (int i = 0; i < 40; ++i) {
    Files f = sharded;
    std::string& text = f[index_name];
    text[fz.below(text.size())] = i % 2 ? interesting[fz.below(sizeof(interesting))] : static_cast<char>(fz.rng());
    fz.run(f, false, "index byte");
  }
  for (const char* index : {"{}", "[]", "{\"weight_map\": null}", "{\"weight_map\": {}}",
                            "{\"weight_map\": {\"model.norm.weight\": \"model-00001-of-00003.safetensors\"}}",
                            "{\"weight_map\": {\"x\": \"\"}}", "{\"weight_map\": {\"x\": \".\"}}",
                            "{\"weight_map\": {\"x\": \"..\"}}", "{\"weight_map\": {\"x\": \"/dev/zero\"}}",
                            "{\"weight_map\": {\"x\": \"config.json\"}}"}) {
    Files f = sharded;
    f[index_name] = index;
    fz.run(f, false, "index replaced");
  }
  // 10. Header bit flips inside one shard.
  for (int i = 0; i < 30; ++i) {
    Files f = sharded;
    std::string& shard = f[llm_test::shard_name(static_cast<int>(fz.below(3)), 3)];
    shard[fz.below(header_end(shard))] ^= static_cast<char>(1u << fz.below(8));
    fz.run(f, false, "shard header bit flip");
  }

  std::printf("  %d variants ran\n", fz.variants);
  for (const auto& [code, count] : fz.histogram) std::printf("    %-28s %d\n", code.c_str(), count);
  CHECK(fz.variants >= 200);
  CHECK(fz.histogram.size() >= 6);  // the corruptions reach many different checks
}

// Inputs the libFuzzer targets (native/fuzz, scripts/fuzz.sh) found accepted where they must be
// refused, each as the smallest config that shows it.
TEST(fuzzer_findings_are_refused) {
  llm_test::TempDir tmp;
  TinyModelSpec s;
  struct Case {
    const char* key;
    const char* value;
    const char* named;  // in the refusal
  };
  int n = 0;
  for (const Case& c : {
           // A float setting whose value is inside its open range as a double but rounds out of
           // it as a float: an rms_norm_eps of 1e-76 became 0.0f (a division by zero for an
           // all-zero row).
           Case{"rms_norm_eps", "1e-76", "rms_norm_eps"}, Case{"rms_norm_eps", "0.99999999999", "rms_norm_eps"},
           Case{"rope_theta", "1e-50", "rope_theta"},
           Case{"rope_scaling", "{\"rope_type\": \"linear\", \"factor\": 1e-50}", "factor"},
           // yarn's attention factor, (0.1 mscale ln(factor) + 1) / (0.1 mscale_all_dim ln(factor)
           // + 1), from a denominator next to zero (-8.07e15; these floats give the smallest
           // denominator there is, 2.2e-16) and from a negative one (-2.95).
           Case{"rope_scaling",
                "{\"rope_type\": \"yarn\", \"factor\": 2764.28784, \"mscale\": 1, \"mscale_all_dim\": -1.26190317}",
                "mscale_all_dim"},
           Case{"rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4, \"mscale\": 1, \"mscale_all_dim\": -10}",
                "mscale_all_dim"}}) {
    llm_test::JsonFields fields = llm_test::config_fields(s);
    llm_test::set_field(&fields, c.key, c.value);
    const std::string dir = tmp.sub("case-" + std::to_string(n++));
    llm_test::write_file(dir + "/config.json", llm_test::json_object(fields));
    llm::ModelConfig cfg;
    const llm::Status st = llm::load_model_config(dir, &cfg);
    if (st.ok())
      std::printf("  %s = %s: accepted (attention_factor %g)\n", c.key, c.value,
                  static_cast<double>(cfg.rope_scaling.attention_factor));
    CHECK(st.code() == llm::StatusCode::model_config_invalid);
    CHECK(st.message().find(c.named) != std::string::npos);
  }
}

int main() { return llm_test::run_all(); }
