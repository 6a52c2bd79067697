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

bool block_bytes_of(const Layout& l, int64_t num_kv_heads, int64_t* out) {
  int64_t b = 2 * dtype_size(l.dtype);
  for (int64_t v : {l.num_layers, l.block_size, num_kv_heads, l.head_dim})
    if (v < 1 || __builtin_mul_overflow(b, v, &b)) return false;
  *out = b;
  return true;
}

Status check_layout(const Layout& l) {
  for (int64_t v : {l.num_blocks, l.num_layers, l.block_size, l.num_kv_heads, l.head_dim})
    if (v < 1 || v >= kMaxDim) return invalid("KV layout: every dimension must be in [1, 2^31)");
  int64_t expect = 0;
  if (!block_bytes_of(l, l.num_kv_heads, &expect)) return invalid("KV layout: a block is larger than 2^63 bytes");
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
  field("model kv heads", a.num_kv_heads, b.num_kv_heads);
  field("head_dim", a.head_dim, b.head_dim);
  field("block_bytes", a.block_bytes, b.block_bytes);
  if (a.dtype != b.dtype)
    out += std::string(out.empty() ? "" : ", ") + "dtype " + dtype_name(a.dtype) + " vs " + dtype_name(b.dtype);
  return out;
}

int64_t region_block_bytes(const Layout& model, const RegionSpec& r) {
  int64_t b = 0;
  block_bytes_of(model, r.num_kv_heads, &b);
  return b;
}

Status check_regions(const std::vector<RegionSpec>& regions, const Layout& model, bool gpu) {
  LLM_RETURN_IF_ERROR(check_layout(model));
  if (regions.empty() || regions.size() > kMaxRegions)
    return invalid("KV regions: a pool has 1 to " + std::to_string(kMaxRegions) + " regions, not " +
                   std::to_string(regions.size()));
  const int64_t heads = model.num_kv_heads;
  std::vector<bool> held(static_cast<size_t>(heads), false);
  for (size_t i = 0; i < regions.size(); ++i) {
    const RegionSpec& r = regions[i];
    const std::string what = "KV region " + std::to_string(i) + ": ";
    if (r.tp_rank != static_cast<int64_t>(i))
      return invalid(what + "tp_rank " + std::to_string(r.tp_rank) + " where " + std::to_string(i) +
                     " was expected (one region per rank 0..n-1, in rank order)");
    if (r.first_kv_head < 0 || r.num_kv_heads < 1 || r.first_kv_head >= heads ||
        r.num_kv_heads > heads - r.first_kv_head)
      return invalid(what + "kv heads [" + std::to_string(r.first_kv_head) + ", " +
                     std::to_string(r.first_kv_head + r.num_kv_heads) + ") are not a non-empty range inside the model's [0, " +
                     std::to_string(heads) + ")");
    if (gpu != r.shm_name.empty())
      return invalid(what + (gpu ? "a GPU pool has no segment name" : "a host pool's region needs its segment name"));
    const bool handle_ok = r.cuda_ipc_handle.size() == 128 &&
                           r.cuda_ipc_handle.find_first_not_of("0123456789abcdef") == std::string::npos;
    if (gpu && (!handle_ok || r.cuda_device.empty()))
      return invalid(what + "a GPU pool's region has a CUDA IPC handle (128 lowercase hex digits) and a device");
    if (!gpu && (!r.cuda_ipc_handle.empty() || !r.cuda_device.empty()))
      return invalid(what + "a host pool's region has no CUDA handle or device");
    for (size_t j = 0; j < i; ++j)
      if (!gpu && regions[j].shm_name == r.shm_name) return invalid(what + "segment '" + r.shm_name + "' is also region " + std::to_string(j) + "'s");
    const int64_t bb = region_block_bytes(model, r);
    if (r.bytes < 1 || r.bytes / bb < model.num_blocks)
      return invalid(what + "a region of " + std::to_string(r.bytes) + " bytes cannot hold " +
                     std::to_string(model.num_blocks) + " blocks of " + std::to_string(bb) + " bytes");
    for (int64_t h = r.first_kv_head; h < r.first_kv_head + r.num_kv_heads; ++h) held[static_cast<size_t>(h)] = true;
  }
  for (int64_t h = 0; h < heads; ++h)
    if (!held[static_cast<size_t>(h)])
      return invalid("KV regions: no region holds kv head " + std::to_string(h) + " of the model's " + std::to_string(heads));
  return Status::Ok();
}

std::vector<HeadCopy> plan_head_copies(const std::vector<RegionSpec>& src, const std::vector<RegionSpec>& dst) {
  std::vector<HeadCopy> plan;
  for (size_t d = 0; d < dst.size(); ++d) {
    for (int64_t k = 0; k < dst[d].num_kv_heads; ++k) {
      const int64_t h = dst[d].first_kv_head + k;
      size_t s = 0;
      while (s < src.size() && !(h >= src[s].first_kv_head && h < src[s].first_kv_head + src[s].num_kv_heads)) ++s;
      if (s == src.size()) continue;  // not a checked pair of lists
      HeadCopy* last = plan.empty() ? nullptr : &plan.back();
      if (last && last->dst == d && last->src == s && last->dst_head + last->num_heads == k &&
          last->src_head + last->num_heads == h - src[s].first_kv_head) {
        last->num_heads += 1;
      } else {
        plan.push_back(HeadCopy{s, d, h - src[s].first_kv_head, k, 1});
      }
    }
  }
  return plan;
}

bool whole_blocks(const HeadCopy& c, const std::vector<RegionSpec>& src, const std::vector<RegionSpec>& dst) {
  return c.src_head == 0 && c.dst_head == 0 && c.num_heads == src[c.src].num_kv_heads &&
         c.num_heads == dst[c.dst].num_kv_heads;
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
  std::string out = "{\"name\":" + json_quote(m.name) + ",\"incarnation\":\"" + inc + "\",\"hostname\":" +
         json_quote(m.host.hostname) + ",\"boot_id\":" + json_quote(m.host.boot_id) +
         ",\"tcp_host\":" + json_quote(m.tcp_host) + ",\"tcp_port\":" + std::to_string(m.tcp_port) +
         ",\"memory\":\"" + memory_name(m.memory) + "\"" +
         ",\"layout\":{\"num_blocks\":" + std::to_string(l.num_blocks) + ",\"block_bytes\":" +
         std::to_string(l.block_bytes) + ",\"num_layers\":" + std::to_string(l.num_layers) +
         ",\"block_size\":" + std::to_string(l.block_size) + ",\"num_kv_heads\":" + std::to_string(l.num_kv_heads) +
         ",\"head_dim\":" + std::to_string(l.head_dim) + ",\"dtype\":\"" + dtype_name(l.dtype) + "\"}";
  out += ",\"regions\":[";
  for (size_t i = 0; i < m.regions.size(); ++i) {
    const RegionSpec& r = m.regions[i];
    out += std::string(i ? "," : "") + "{\"shm_name\":" + json_quote(r.shm_name) + ",\"region_bytes\":" +
           std::to_string(r.bytes) + ",\"tp_rank\":" + std::to_string(r.tp_rank) + ",\"first_kv_head\":" +
           std::to_string(r.first_kv_head) + ",\"num_kv_heads\":" + std::to_string(r.num_kv_heads) +
           ",\"block_bytes\":" + std::to_string(region_block_bytes(l, r)) + ",\"cuda_ipc_handle\":" +
           json_quote(r.cuda_ipc_handle) + ",\"cuda_device\":" + json_quote(r.cuda_device) + "}";
  }
  return out + "]}";
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
  const JsonValue* lj = root.get("layout");
  if (!lj || !lj->is_object()) return invalid("transfer metadata: 'layout' must be an object");
  Layout& l = m.layout;
  LLM_RETURN_IF_ERROR(read_int(*lj, "num_blocks", 1, kMaxDim - 1, &l.num_blocks));
  LLM_RETURN_IF_ERROR(read_int(*lj, "block_bytes", 1, INT64_MAX, &l.block_bytes));
  LLM_RETURN_IF_ERROR(read_int(*lj, "num_layers", 1, kMaxDim - 1, &l.num_layers));
  LLM_RETURN_IF_ERROR(read_int(*lj, "block_size", 1, kMaxDim - 1, &l.block_size));
  LLM_RETURN_IF_ERROR(read_int(*lj, "num_kv_heads", 1, kMaxDim - 1, &l.num_kv_heads));
  LLM_RETURN_IF_ERROR(read_int(*lj, "head_dim", 1, kMaxDim - 1, &l.head_dim));
  LLM_RETURN_IF_ERROR(read_string(*lj, "dtype", &dtype));
  if (!dtype_from_name(dtype, &l.dtype)) return invalid("transfer metadata: unknown dtype '" + dtype + "'");

  if (m.name.empty()) return invalid("transfer metadata: 'name' is empty");
  if (inc.size() != 16 || inc.find_first_not_of("0123456789abcdef") != std::string::npos)
    return invalid("transfer metadata: 'incarnation' must be 16 lowercase hex digits");
  m.incarnation = std::strtoull(inc.c_str(), nullptr, 16);
  m.tcp_port = static_cast<int>(port);
  LLM_RETURN_IF_ERROR(check_layout(l));
  const JsonValue* rj = root.get("regions");
  if (!rj || !rj->is_array() || rj->array.empty() || rj->array.size() > kMaxRegions)
    return invalid("transfer metadata: 'regions' must be an array of 1 to " + std::to_string(kMaxRegions) + " regions");
  for (const JsonValue& r : rj->array) {
    if (!r.is_object()) return invalid("transfer metadata: every region must be an object");
    RegionSpec spec;
    int64_t block_bytes = 0;
    LLM_RETURN_IF_ERROR(read_string(r, "shm_name", &spec.shm_name));
    LLM_RETURN_IF_ERROR(read_int(r, "region_bytes", 1, INT64_MAX, &spec.bytes));
    LLM_RETURN_IF_ERROR(read_int(r, "tp_rank", 0, kMaxDim - 1, &spec.tp_rank));
    LLM_RETURN_IF_ERROR(read_int(r, "first_kv_head", 0, kMaxDim - 1, &spec.first_kv_head));
    LLM_RETURN_IF_ERROR(read_int(r, "num_kv_heads", 1, kMaxDim - 1, &spec.num_kv_heads));
    LLM_RETURN_IF_ERROR(read_int(r, "block_bytes", 1, INT64_MAX, &block_bytes));
    LLM_RETURN_IF_ERROR(read_string(r, "cuda_ipc_handle", &spec.cuda_ipc_handle));
    LLM_RETURN_IF_ERROR(read_string(r, "cuda_device", &spec.cuda_device));
    int64_t expect = 0;
    if (!block_bytes_of(l, spec.num_kv_heads, &expect) || block_bytes != expect)
      return invalid("transfer metadata: region " + std::to_string(m.regions.size()) + "'s block_bytes " +
                     std::to_string(block_bytes) + " is not 2 * layers * block_size * its kv heads * head_dim * dtype size");
    m.regions.push_back(std::move(spec));
  }
  if (memory == "host") {
    m.memory = Memory::host;
  } else if (memory == "cuda") {
    m.memory = Memory::cuda;
  } else {
    return invalid("transfer metadata: 'memory' must be \"host\" or \"cuda\", not '" + memory + "'");
  }
  Status checked = check_regions(m.regions, l, m.memory == Memory::cuda);
  if (!checked.ok()) return invalid("transfer metadata: " + checked.message());
  *out = std::move(m);
  return Status::Ok();
}

}  // namespace transfer
}  // namespace llm
