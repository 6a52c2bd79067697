// transfer-metadata.cc: see transfer-metadata.h.
#include "transfer-metadata.h"

#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "model/model-json.h"

namespace llm {
namespace transfer {
namespace {

constexpr int64_t kMaxDim = int64_t{1} << 31;

Status invalid(const std::string& msg) { return Status(StatusCode::transfer_invalid, msg); }

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

Status read_string(const JsonValue& o, const char* key, std::string* out) {
  const JsonValue* v = o.get(key);
  if (!v || !v->is_string()) return invalid(std::string("transfer metadata: '") + key + "' must be a string");
  *out = v->string_value;
  return Status::Ok();
}

Status read_int(const JsonValue& o, const char* key, int64_t min, int64_t max, int64_t* out) {
  const JsonValue* v = o.get(key);
  if (!v || !v->is_int() || v->int_value < min || v->int_value > max)
    return invalid(std::string("transfer metadata: '") + key + "' must be an integer in [" + std::to_string(min) +
                   ", " + std::to_string(max) + "]");
  *out = v->int_value;
  return Status::Ok();
}

}  // namespace

bool dtype_from_name(const std::string& name, DType* out) {
  for (DType t : {DType::f32, DType::f16, DType::bf16}) {
    if (name == dtype_name(t)) {
      *out = t;
      return true;
    }
  }
  return false;
}

Status check_layout(const Layout& l) {
  for (int64_t v : {l.num_blocks, l.num_layers, l.block_size, l.num_kv_heads, l.head_dim})
    if (v < 1 || v >= kMaxDim) return invalid("KV layout: every dimension must be in [1, 2^31)");
  if (l.tp_rank < 0) return invalid("KV layout: tp_rank must be >= 0");
  int64_t expect = 2 * dtype_size(l.dtype);
  for (int64_t v : {l.num_layers, l.block_size, l.num_kv_heads, l.head_dim})
    if (__builtin_mul_overflow(expect, v, &expect)) return invalid("KV layout: a block is larger than 2^63 bytes");
  if (l.block_bytes != expect)
    return invalid("KV layout: block_bytes " + std::to_string(l.block_bytes) + " is not 2 * layers * block_size * "
                   "kv_heads * head_dim * dtype size = " + std::to_string(expect));
  return Status::Ok();
}

std::string layout_mismatch(const Layout& a, const Layout& b) {
  std::string out;
  auto field = [&](const char* name, int64_t x, int64_t y) {
    if (x != y) out += std::string(out.empty() ? "" : ", ") + name + " " + std::to_string(x) + " vs " + std::to_string(y);
  };
  field("num_layers", a.num_layers, b.num_layers);
  field("block_size", a.block_size, b.block_size);
  field("num_kv_heads", a.num_kv_heads, b.num_kv_heads);
  field("head_dim", a.head_dim, b.head_dim);
  field("block_bytes", a.block_bytes, b.block_bytes);
  if (a.dtype != b.dtype)
    out += std::string(out.empty() ? "" : ", ") + "dtype " + dtype_name(a.dtype) + " vs " + dtype_name(b.dtype);
  return out;
}

HostIdentity this_host() {
  HostIdentity h;
  char name[256] = {0};
  if (gethostname(name, sizeof name - 1) == 0) h.hostname = name;
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::getline(f, h.boot_id);
  return h;
}

const char* memory_name(Memory m) { return m == Memory::cuda ? "cuda" : "host"; }

std::string metadata_to_json(const Metadata& m) {
  char inc[17];
  std::snprintf(inc, sizeof inc, "%016" PRIx64, m.incarnation);
  const Layout& l = m.layout;
  return "{\"name\":" + json_quote(m.name) + ",\"incarnation\":\"" + inc + "\",\"hostname\":" +
         json_quote(m.host.hostname) + ",\"boot_id\":" + json_quote(m.host.boot_id) +
         ",\"tcp_host\":" + json_quote(m.tcp_host) + ",\"tcp_port\":" + std::to_string(m.tcp_port) +
         ",\"memory\":\"" + memory_name(m.memory) + "\",\"shm_name\":" + json_quote(m.shm_name) +
         ",\"cuda_ipc_handle\":" + json_quote(m.cuda_ipc_handle) + ",\"cuda_device\":" + json_quote(m.cuda_device) +
         ",\"region_bytes\":" + std::to_string(m.region_bytes) +
         ",\"layout\":{\"num_blocks\":" + std::to_string(l.num_blocks) + ",\"block_bytes\":" +
         std::to_string(l.block_bytes) + ",\"num_layers\":" + std::to_string(l.num_layers) +
         ",\"block_size\":" + std::to_string(l.block_size) + ",\"num_kv_heads\":" + std::to_string(l.num_kv_heads) +
         ",\"head_dim\":" + std::to_string(l.head_dim) + ",\"dtype\":\"" + dtype_name(l.dtype) +
         "\",\"tp_rank\":" + std::to_string(l.tp_rank) + "}}";
}

Status metadata_from_json(const std::string& json, Metadata* out) {
  JsonValue root;
  Status st = json_parse(json.data(), json.size(), &root);
  if (!st.ok()) return invalid("transfer metadata: " + st.message());
  if (!root.is_object()) return invalid("transfer metadata must be a JSON object");
  Metadata m;
  std::string inc, dtype;
  int64_t port = 0;
  LLM_RETURN_IF_ERROR(read_string(root, "name", &m.name));
  LLM_RETURN_IF_ERROR(read_string(root, "incarnation", &inc));
  LLM_RETURN_IF_ERROR(read_string(root, "hostname", &m.host.hostname));
  LLM_RETURN_IF_ERROR(read_string(root, "boot_id", &m.host.boot_id));
  LLM_RETURN_IF_ERROR(read_string(root, "tcp_host", &m.tcp_host));
  LLM_RETURN_IF_ERROR(read_int(root, "tcp_port", 1, 65535, &port));
  std::string memory;
  LLM_RETURN_IF_ERROR(read_string(root, "memory", &memory));
  LLM_RETURN_IF_ERROR(read_string(root, "shm_name", &m.shm_name));
  LLM_RETURN_IF_ERROR(read_string(root, "cuda_ipc_handle", &m.cuda_ipc_handle));
  LLM_RETURN_IF_ERROR(read_string(root, "cuda_device", &m.cuda_device));
  LLM_RETURN_IF_ERROR(read_int(root, "region_bytes", 1, INT64_MAX, &m.region_bytes));
  const JsonValue* lj = root.get("layout");
  if (!lj || !lj->is_object()) return invalid("transfer metadata: 'layout' must be an object");
  Layout& l = m.layout;
  LLM_RETURN_IF_ERROR(read_int(*lj, "num_blocks", 1, kMaxDim - 1, &l.num_blocks));
  LLM_RETURN_IF_ERROR(read_int(*lj, "block_bytes", 1, INT64_MAX, &l.block_bytes));
  LLM_RETURN_IF_ERROR(read_int(*lj, "num_layers", 1, kMaxDim - 1, &l.num_layers));
  LLM_RETURN_IF_ERROR(read_int(*lj, "block_size", 1, kMaxDim - 1, &l.block_size));
  LLM_RETURN_IF_ERROR(read_int(*lj, "num_kv_heads", 1, kMaxDim - 1, &l.num_kv_heads));
  LLM_RETURN_IF_ERROR(read_int(*lj, "head_dim", 1, kMaxDim - 1, &l.head_dim));
  LLM_RETURN_IF_ERROR(read_int(*lj, "tp_rank", 0, kMaxDim - 1, &l.tp_rank));
  LLM_RETURN_IF_ERROR(read_string(*lj, "dtype", &dtype));
  if (!dtype_from_name(dtype, &l.dtype)) return invalid("transfer metadata: unknown dtype '" + dtype + "'");

  if (m.name.empty()) return invalid("transfer metadata: 'name' is empty");
  if (inc.size() != 16 || inc.find_first_not_of("0123456789abcdef") != std::string::npos)
    return invalid("transfer metadata: 'incarnation' must be 16 lowercase hex digits");
  m.incarnation = std::strtoull(inc.c_str(), nullptr, 16);
  m.tcp_port = static_cast<int>(port);
  LLM_RETURN_IF_ERROR(check_layout(l));
  if (memory == "host") {
    m.memory = Memory::host;
    if (m.shm_name.empty() || !m.cuda_ipc_handle.empty() || !m.cuda_device.empty())
      return invalid("transfer metadata: a host pool has a segment name and no CUDA handle or device");
  } else if (memory == "cuda") {
    m.memory = Memory::cuda;
    if (!m.shm_name.empty() || m.cuda_device.empty() || m.cuda_ipc_handle.size() != 128 ||
        m.cuda_ipc_handle.find_first_not_of("0123456789abcdef") != std::string::npos)
      return invalid("transfer metadata: a GPU pool has a CUDA IPC handle (128 lowercase hex digits), a device, "
                     "and no segment name");
  } else {
    return invalid("transfer metadata: 'memory' must be \"host\" or \"cuda\", not '" + memory + "'");
  }
  if (m.region_bytes / l.block_bytes < l.num_blocks)
    return invalid("transfer metadata: a region of " + std::to_string(m.region_bytes) + " bytes cannot hold " +
                   std::to_string(l.num_blocks) + " blocks of " + std::to_string(l.block_bytes) + " bytes");
  *out = std::move(m);
  return Status::Ok();
}

}  // namespace transfer
}  // namespace llm
