// transfer-metadata.h: what one transfer agent tells another about itself (DESIGN.md section 6).
//
// Owns: the KV pool's Layout, the agent's Metadata and their JSON form, the host identity.
// Stays true: metadata_from_json accepts only complete, self-consistent metadata (every field
// present and in range, block_bytes equal to the layout's product, the region large enough
// for num_blocks blocks, a host pool with a segment name and no CUDA handle, a GPU pool with a
// CUDA IPC handle and device and no segment); anything else is ERR_TRANSFER_INVALID. Two pools can exchange blocks
// only when layout_mismatch() is empty: every field but num_blocks and tp_rank agrees.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"
#include "kernels/dtype.h"

namespace llm {
namespace transfer {

// A block-major KV pool: block b is bytes [b * block_bytes, (b + 1) * block_bytes) and holds
// [num_layers][2][block_size][num_kv_heads][head_dim] elements of dtype.
struct Layout {
  int64_t num_blocks = 0;
  int64_t block_bytes = 0;
  int64_t num_layers = 0;
  int64_t block_size = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  DType dtype = DType::bf16;
  int64_t tp_rank = 0;
};

// Every field positive (tp_rank >= 0) and block_bytes == 2 * layers * block_size * heads *
// head_dim * dtype size; ERR_TRANSFER_INVALID otherwise.
Status check_layout(const Layout& l);
// "" when blocks of `a` and `b` are interchangeable, else what differs ("block_size 16 vs 32").
std::string layout_mismatch(const Layout& a, const Layout& b);

// "f32" | "f16" | "bf16" (dtype_name's names) -> *out; false for anything else.
bool dtype_from_name(const std::string& name, DType* out);

// Two agents on one host see the same hostname and boot id (/proc/sys/kernel/random/boot_id).
struct HostIdentity {
  std::string hostname;
  std::string boot_id;
  bool operator==(const HostIdentity& o) const { return hostname == o.hostname && boot_id == o.boot_id; }
};
HostIdentity this_host();

// Where a KV pool lives: host memory (a shared-memory segment) or GPU memory (CUDA IPC).
enum class Memory { host, cuda };
const char* memory_name(Memory m);  // "host" | "cuda"

struct Metadata {
  std::string name;         // the agent's name, unique among connected agents
  uint64_t incarnation = 0; // random per agent instance: a restarted agent has a new one
  HostIdentity host;
  std::string tcp_host;     // where its listener accepts connections
  int tcp_port = 0;
  Memory memory = Memory::host;
  std::string shm_name;         // host: its KV pool's segment
  std::string cuda_ipc_handle;  // cuda: the pool allocation's IPC handle, 128 hex digits
  std::string cuda_device;      // cuda: the UUID of the GPU holding it
  int64_t region_bytes = 0;     // the pool's region (the segment or the allocation)
  Layout layout;
};

std::string metadata_to_json(const Metadata& m);
Status metadata_from_json(const std::string& json, Metadata* out);

}  // namespace transfer
}  // namespace llm
