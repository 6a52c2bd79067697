// fuzz-seeds.cc: writes the seed corpora of the fuzz targets, small valid inputs that each
// target's mutations start from: `fuzz-seeds DIR` fills DIR/fuzz-model-config,
// DIR/fuzz-safetensors and DIR/fuzz-transfer-wire (the files under native/fuzz/corpus/ were
// written by it).
#include <sys/stat.h>

#include "fuzz-common.h"
#include "transfer/transfer-wire.h"

namespace xfer = llm::transfer;

namespace {

void put(const std::string& dir, const std::string& name, const std::string& bytes) {
  std::filesystem::create_directories(dir);
  llm_fuzz::put_file(dir + "/" + name, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

std::string config_of(const llm_test::TinyModelSpec& s, const llm_test::JsonFields& extra = {}) {
  llm_test::JsonFields f = llm_test::config_fields(s);
  for (const auto& [k, v] : extra) llm_test::set_field(&f, k, v);
  return llm_test::json_object(f);
}

void config_seeds(const std::string& dir) {
  llm_test::TinyModelSpec s = llm_fuzz::tiny_spec();
  put(dir, "llama.json", config_of(s));
  put(dir, "llama-generation-config.json",
      config_of(s) + std::string(1, '\0') + "{\"bos_token_id\": 1, \"eos_token_id\": [2, 3]}");
  put(dir, "llama3-rope.json",
      config_of(s, {{"rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
                                     "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 64}"}}));
  s.arch = "MistralForCausalLM";
  put(dir, "mistral.json", config_of(s));
  s.arch = "Qwen2ForCausalLM";
  put(dir, "qwen2-dynamic.json",
      config_of(s, {{"rope_scaling", "{\"type\": \"dynamic\", \"factor\": 2.0}"}, {"use_sliding_window", "true"}}));
  s.arch = "Qwen3ForCausalLM";
  s.head_dim = 4;
  llm_test::JsonFields t5 = {{"rope_scaling", "null"}, {"rope_theta", "null"},
                             {"rope_parameters", "{\"rope_type\": \"yarn\", \"rope_theta\": 1000000.0, "
                                                 "\"factor\": 4.0, \"original_max_position_embeddings\": 32, "
                                                 "\"mscale\": 0.707, \"mscale_all_dim\": 1.0, \"beta_fast\": 32, "
                                                 "\"beta_slow\": 1}"},
                             {"layer_types", "[\"full_attention\"]"}, {"dtype", "\"bfloat16\""}};
  put(dir, "qwen3-yarn-t5.json", config_of(s, t5));
}

void safetensors_seeds(const std::string& dir) {
  const llm_test::TinyModelSpec s = llm_fuzz::tiny_spec();
  put(dir, "tiny-llama.safetensors", llm_test::safetensors_bytes(llm_test::model_tensors(s)));
  put(dir, "one-tensor.safetensors",
      llm_test::safetensors_bytes({llm_test::make_tensor("model.norm.weight", llm::DType::f32, {4})}));
}

std::string frame(xfer::FrameType type, const std::string& text, const std::vector<int32_t>& ids, uint64_t arg,
                  int32_t code = 0) {
  xfer::FrameHeader h;
  h.type = static_cast<uint32_t>(type);
  h.num_blocks = static_cast<uint32_t>(ids.size());
  h.text_bytes = static_cast<uint32_t>(text.size());
  h.code = code;
  h.arg = arg;
  std::string out(reinterpret_cast<const char*>(&h), sizeof h);
  out += text;
  out.append(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(int32_t));
  return out;
}

std::string metadata(int tp) {
  xfer::Metadata m;
  m.name = "prefill-0";
  m.incarnation = 0x0123456789abcdefull;
  m.host = {"host", "boot"};
  m.tcp_host = "127.0.0.1";
  m.tcp_port = 4242;
  m.layout = llm_fuzz::wire_layout();
  m.regions = llm_fuzz::wire_regions(tp);
  return xfer::metadata_to_json(m);
}

void wire_seeds(const std::string& dir) {
  const xfer::Layout l = llm_fuzz::wire_layout();
  const std::string listener = std::string(1, '\0');
  const std::string data(static_cast<size_t>(2 * l.block_bytes / 2), '\x5a');  // 2 blocks of one region
  put(dir, "listener-tp1-hello-write-read",
      listener + frame(xfer::FrameType::hello, metadata(1), {}, 0x0123456789abcdefull) +
          frame(xfer::FrameType::write, "req-1 done", {3, 5}, 1) + data +
          frame(xfer::FrameType::read, "", {0, 7}, 0));
  put(dir, "listener-tp2-hello", listener + frame(xfer::FrameType::hello, metadata(2), {}, 7));
  // A listener with a cluster secret: the handshake's two auth frames (a MAC the fuzzer must not
  // be able to pass), then a hello it must not reach.
  const std::string with_secret = std::string(1, '\2');
  put(dir, "listener-secret-auth-hello",
      with_secret + frame(xfer::FrameType::auth, std::string(32, 'a'), {}, 1) +
          frame(xfer::FrameType::auth, std::string(64, '0'), {}, 2) + frame(xfer::FrameType::hello, metadata(1), {}, 0));
  const std::string client = std::string(1, '\1');
  put(dir, "client-replies",
      client + frame(xfer::FrameType::reply, "", {}, 0) +
          frame(xfer::FrameType::reply, "remote block id 9 is out of range [0, 8)", {}, 0,
                static_cast<int32_t>(llm::StatusCode::transfer_invalid)));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz-seeds DIR\n");
    return 2;
  }
  const std::string out = argv[1];
  config_seeds(out + "/fuzz-model-config");
  safetensors_seeds(out + "/fuzz-safetensors");
  wire_seeds(out + "/fuzz-transfer-wire");
  return 0;
}
