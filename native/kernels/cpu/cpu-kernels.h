// cpu-kernels.h: the CPU operations of the forward pass, behind one dispatch table.
//
// Owns: the reference kernels (plain C++, multi-threaded over the pool) and the table that
// selects an implementation per op. The fast paths (cpu-avx2.cc, cpu-avx512.cc, cpu-amx.cc)
// are copies of the reference table with the ops they speed up replaced; the reference entries
// stay and are what every fast kernel is tested against (test-kernels-fast.cc).
// Path choice (cpu-dispatch.cc): the best the CPU runs (amx > avx512-bf16 > avx512 > avx2 >
// reference), or the one named by
// KVSERVE_CPU_KERNELS=reference|avx2|avx512|avx512-bf16|amx|amx-exact|amx-bf16 (a path the CPU
// cannot run falls back to the best it can).
// Stays true: activations are fp32; weights and the KV pool may be f32, f16 or bf16 and are
// converted on load; accumulation is fp32. The amx paths round the matmul's x to bf16 (amx: one
// term, |dx| <= 2^-9 |x|; amx-exact: two terms, 2^-18 |x|), nothing else; see cpu-amx.cc;
// avx512-bf16 rounds it as amx does (one term) for bf16 weights; see cpu-avx512-bf16.cc.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "../tensor-view.h"
#include "thread-pool.h"

namespace llm::cpu {

using llm::AttentionBatch;  // tensor-view.h: shared with the CUDA kernels

struct CpuFusions;  // cpu-weights.h

struct CpuKernels {
  const char* name;

  // y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]).  x, y: fp32.
  void (*matmul)(ThreadPool& pool, const float* x, int64_t M, const TensorView& w,
                 const TensorView* bias, float* y);

  // out[M, D] = x[M, D] / rms(x) * weight[D].  out may alias x.
  void (*rmsnorm)(ThreadPool& pool, const float* x, const TensorView& weight, float eps, int64_t M,
                  int64_t D, float* out);

  // Rotary embedding in place, Hugging Face "rotate_half" layout (pairs i and i + head_dim/2),
  // with cos and sin multiplied by `scale` (yarn's attention factor; 1 otherwise).
  // q: [T, num_heads, head_dim], k: [T, num_kv_heads, head_dim], inv_freq: [head_dim / 2].
  void (*rope)(ThreadPool& pool, float* q, float* k, const int32_t* positions, int64_t T,
               int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, const float* inv_freq, float scale);

  // out[i] = silu(gate[i]) * up[i] for i in [0, n).  out may alias gate.
  void (*silu_mul)(ThreadPool& pool, const float* gate, const float* up, float* out, int64_t n);

  // out[T, D] = table[ids[t], :] as fp32.
  void (*embedding)(ThreadPool& pool, const TensorView& table, const int32_t* ids, int64_t T,
                    float* out);

  // Writes k, v: [T, num_kv_heads, head_dim] into the pool at slot_mapping[T] for `layer`.
  void (*cache_write)(ThreadPool& pool, const float* k, const float* v,
                      const int64_t* slot_mapping, int64_t T, KVCacheView cache, int64_t layer);

  // Causal attention of each sequence's new tokens over its whole context in the paged pool
  // (cached prefix + this step's tokens, already written by cache_write). GQA: query head h
  // reads kv head h / (num_heads / num_kv_heads).
  // q, out: [T, num_heads, head_dim]; the query for token i of sequence s sits at position
  // seq_lens[s] - q_len(s) + i.
  void (*paged_attention)(ThreadPool& pool, const float* q, KVCacheView cache, int64_t layer,
                          const AttentionBatch& batch, float* out);

  // The layout matmul is fastest on, besides row-major (tensor-view.h): Layout::amx_tiles on the
  // amx tables, Layout::bf16_pairs on avx512-bf16 and avx2, row_major (none) on the others.
  // CpuWeights (cpu-weights.h) converts every weight that can_pack() accepts into it at load,
  // with pack(): w into out (w.rows * w.cols bf16), returning the view of out; the matmul's
  // results on it are the same bits as on w. pack runs on the calling thread alone.
  Layout packed_layout = Layout::row_major;
  bool (*can_pack)(const TensorView& w) = nullptr;
  TensorView (*pack)(const TensorView& w, uint16_t* out) = nullptr;

  // The fused matmuls CpuWeights may prepare for this path (cpu-weights.h); nullptr where a table
  // has none (avx512, avx2, reference).
  const CpuFusions* fusions = nullptr;
};

// amx: the matmul's x rounded to bf16 (one term) for every bf16 weight, at every M. amx_bf16 ("amx-bf16", the name of that rounding before it became the
// default) is the same table under that name. amx_exact ("amx-exact": x as two bf16 terms, within
// the fp32 bounds) is never chosen by itself, only when named.
// avx512_bf16 ("avx512-bf16"): the AVX-512 table with the matmul on vdpbf16ps, x rounded to bf16 once
// for bf16 weights, as amx rounds it (cpu-avx512-bf16.cc); chosen where the CPU has AVX512_BF16
// and no AMX.
enum class CpuPath { reference, avx2, avx512, amx, amx_bf16, amx_exact, avx512_bf16 };

// The path KVSERVE_CPU_KERNELS names: "reference", "avx2", "avx512", "avx512-bf16", "amx",
// "amx-exact", "amx-bf16" (a table's name); false for any other name.
bool cpu_path_from_name(const char* name, CpuPath* path);

// The plain reference implementations.
const CpuKernels& cpu_reference_kernels();
// The table of one path, or nullptr when this CPU cannot run it (tests force paths this way).
const CpuKernels* cpu_kernels_for(CpuPath path);
// The implementation the engine uses: chosen once per process (see above); name = the path.
const CpuKernels& cpu_kernels();

// What the dispatch saw and chose, for logs and the addon's cpuKernelInfo().
struct CpuKernelInfo {
  std::vector<std::string> isa;  // detected: "avx2", "avx512", "avx512_bf16", "amx_bf16"
  std::string path;              // cpu_kernels().name
};
CpuKernelInfo cpu_kernel_info();

}  // namespace llm::cpu
