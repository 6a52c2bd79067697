// transfer-metadata.h: what one transfer agent tells another about itself (DESIGN.md section 6).
//
// Owns: the model-level KV Layout, the regions of a worker's pool (one per tensor-parallel rank,
// each holding a slice of the KV heads), the agent's Metadata and their JSON form, the plan of
// which heads each destination region takes from which source region, and the host identity.
// Stays true: metadata_from_json accepts only complete, self-consistent metadata (every field
// present and in range, block_bytes equal to the layout's product for the model and for each
// region, each region large enough for num_blocks blocks, regions listed by tp_rank 0..n-1 and
// together holding every kv head, a host pool's regions each with their own segment name and no
// CUDA handle, a GPU pool's regions each with a CUDA IPC handle and device and no segment);
// anything else is ERR_TRANSFER_INVALID. Two pools can exchange blocks only when
// layout_mismatch() is empty: every model-level field but num_blocks agrees (layers, block_size,
// the model's kv heads, head_dim, dtype); their TP sizes and head splits may differ.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "kernels/dtype.h"

namespace llm {
namespace transfer {

// The model-level layout of a block-major KV pool. A pool holding every kv head has block b at
// bytes [b * block_bytes, (b + 1) * block_bytes), [num_layers][2][block_size][num_kv_heads]
// [head_dim] elements of dtype. A region holding a slice of the heads (RegionSpec) has the same
// num_blocks and block ids, and blocks of that shape with only its heads.
struct Layout {
  int64_t num_blocks = 0;
  int64_t block_bytes = 0;    // of a block holding all num_kv_heads
  int64_t num_layers = 0;
  int64_t block_size = 0;
  int64_t num_kv_heads = 0;   // the model's
  int64_t head_dim = 0;
  DType dtype = DType::bf16;
};

// Every field positive and block_bytes == 2 * layers * block_size * heads * head_dim * dtype
// size; ERR_TRANSFER_INVALID otherwise.
Status check_layout(const Layout& l);
// 2 * layers * block_size * num_kv_heads * head_dim * dtype size of `l` -> *out; false when a
// factor is below 1 or the product overflows.
bool block_bytes_of(const Layout& l, int64_t num_kv_heads, int64_t* out);
// "" when blocks of `a` and `b` are interchangeable (whatever their regions), else what differs
// ("block_size 16 vs 32").
std::string layout_mismatch(const Layout& a, const Layout& b);

// One tensor-parallel rank's part of a pool: the kv heads [first_kv_head, first_kv_head +
// num_kv_heads) of every block, in its own segment `shm_name` of `bytes` (a host pool), or in
// its own GPU allocation named by `cuda_ipc_handle` (128 hex digits) on the GPU `cuda_device`
// (a UUID; a GPU pool). Ranks may hold the same heads (a kv head replicated when TP size > the
// model's kv heads).
struct RegionSpec {
  std::string shm_name;
  int64_t bytes = 0;
  int64_t tp_rank = 0;
  int64_t first_kv_head = 0;
  int64_t num_kv_heads = 0;
  std::string cuda_ipc_handle = {};
  std::string cuda_device = {};
};
constexpr size_t kMaxRegions = 1024;

// The bytes of one block of region `r` under `model` (check_regions has passed).
int64_t region_block_bytes(const Layout& model, const RegionSpec& r);

// `regions`, in tp_rank order 0..n-1, against `model` (checked too): 1 to kMaxRegions regions,
// each a non-empty head range inside the model's, large enough for num_blocks blocks; together
// they hold every kv head. `gpu`: every region has no segment name and has a CUDA IPC handle
// and device; else every region names its own segment and has no CUDA handle.
// ERR_TRANSFER_INVALID naming the problem otherwise.
Status check_regions(const std::vector<RegionSpec>& regions, const Layout& model, bool gpu);

// A run of kv heads that destination region `dst` takes from source region `src`: the source's
// heads [src_head, src_head + num_heads) (counted inside that region) are the destination's
// [dst_head, dst_head + num_heads).
struct HeadCopy {
  size_t src = 0;
  size_t dst = 0;
  int64_t src_head = 0;
  int64_t dst_head = 0;
  int64_t num_heads = 0;
};
// For every destination region, every head it holds, from the lowest-rank source region that
// holds it; adjacent heads from one source form one run. Both lists pass check_regions for
// models with the same kv heads, so every head has a source.
std::vector<HeadCopy> plan_head_copies(const std::vector<RegionSpec>& src, const std::vector<RegionSpec>& dst);
// Whether `c` is whole blocks: the two regions hold exactly the same heads.
bool whole_blocks(const HeadCopy& c, const std::vector<RegionSpec>& src, const std::vector<RegionSpec>& dst);

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
  Layout layout;                // model-level
  std::vector<RegionSpec> regions;  // by tp_rank
};

std::string metadata_to_json(const Metadata& m);
Status metadata_from_json(const std::string& json, Metadata* out);

}  // namespace transfer
}  // namespace llm
