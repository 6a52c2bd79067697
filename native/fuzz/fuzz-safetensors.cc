// fuzz-safetensors.cc: libFuzzer target for the safetensors reader (native/model/
// model-safetensors.*) and the binding of its tensors to a config (native/model/model-weights.*).
//
// Input: the bytes of one model.safetensors. Each input is written to a scratch directory on
// tmpfs beside a fixed config.json (the tiny model of fuzz-common.h, whose own weights are the
// seed), then read twice: SafetensorsModel::open_file, whose result must keep the promises of
// model-safetensors.h (every tensor inside the file, nbytes = product(shape) * dtype size,
// aligned, the tensors tiling the data section), and load_model on the directory, whose views
// must match the config's shapes and be readable to their last byte (a view past the mapping
// faults there).
#include <algorithm>

#include "fuzz-common.h"
#include "model/model-weights.h"

namespace {

volatile uint8_t g_sink;

void touch(const void* data, uint64_t nbytes) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint8_t x = 0;
  for (uint64_t i = 0; i < nbytes; ++i) x = static_cast<uint8_t>(x ^ p[i]);
  g_sink = x;
}

void check_file(const llm::SafetensorsModel& m, size_t file_size) {
  uint64_t total = 0;
  for (const auto& [name, t] : m.tensors()) {
    FUZZ_CHECK(name == t.name);
    uint64_t elements = 1;
    for (int64_t d : t.shape) {
      FUZZ_CHECK(d >= 0);
      FUZZ_CHECK(!__builtin_mul_overflow(elements, static_cast<uint64_t>(d), &elements));
    }
    FUZZ_CHECK(elements * static_cast<uint64_t>(llm::dtype_size(t.dtype)) == t.nbytes);
    FUZZ_CHECK(reinterpret_cast<uintptr_t>(t.data) % static_cast<uintptr_t>(llm::dtype_size(t.dtype)) == 0);
    total += t.nbytes;
    touch(t.data, t.nbytes);
  }
  FUZZ_CHECK(total <= file_size);  // they tile the data section, which is inside the file
  FUZZ_CHECK(m.total_bytes() == total);
}

bool view_ok(const llm::Tensor& t, int64_t rows, int64_t cols, llm::DType dtype) {
  if (!t.present()) return false;
  if (t.rows != rows || t.cols != cols || t.dtype != dtype) return false;
  touch(t.data, static_cast<uint64_t>(rows * cols * llm::dtype_size(dtype)));
  return true;
}

void check_model(const llm::Model& m) {
  const llm::ModelConfig& c = m.config;
  const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  FUZZ_CHECK(view_ok(m.weights.embed, c.vocab_size, h, c.dtype));
  FUZZ_CHECK(view_ok(m.weights.lm_head, c.vocab_size, h, c.dtype));
  FUZZ_CHECK(view_ok(m.weights.final_norm, 1, h, c.dtype));
  FUZZ_CHECK(m.weights.layers.size() == static_cast<size_t>(c.num_layers));
  for (const llm::LayerWeights& l : m.weights.layers) {
    FUZZ_CHECK(view_ok(l.attn_norm, 1, h, c.dtype) && view_ok(l.mlp_norm, 1, h, c.dtype));
    FUZZ_CHECK(view_ok(l.wq, q, h, c.dtype) && view_ok(l.wk, kv, h, c.dtype) && view_ok(l.wv, kv, h, c.dtype));
    FUZZ_CHECK(view_ok(l.wo, h, q, c.dtype));
    FUZZ_CHECK(view_ok(l.w_gate, c.intermediate_size, h, c.dtype) && view_ok(l.w_up, c.intermediate_size, h, c.dtype));
    FUZZ_CHECK(view_ok(l.w_down, h, c.intermediate_size, c.dtype));
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string config = llm_test::json_object(llm_test::config_fields(llm_fuzz::tiny_spec()));
  llm_fuzz::put_file(llm_fuzz::scratch_dir() + "/config.json", reinterpret_cast<const uint8_t*>(config.data()),
                     config.size());
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = llm_fuzz::scratch_dir();
  const std::string path = dir + "/model.safetensors";
  llm_fuzz::put_file(path, data, size);

  std::unique_ptr<llm::SafetensorsModel> file;
  if (!llm::SafetensorsModel::open_file(path, &file).ok()) return 0;
  check_file(*file, size);

  std::unique_ptr<llm::Model> model;
  if (llm::load_model(dir, llm::ModelLoadOptions(), &model).ok()) check_model(*model);
  return 0;
}
