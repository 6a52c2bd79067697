// cpu-weights.h: a model's matmul weights prepared for one CPU kernel path, and the matmuls of
// the forward pass on them.
//
// Owns: the weights' copies in the path's packed layout (CpuKernels::packed_layout: amx_tiles on
// the amx paths, bf16_pairs on avx512-bf16 and avx2), in one buffer of transparent huge pages,
// and the choice of the path's fusions (CpuFusions: gate and up packed together and run with
// silu, and the MLP in one call; q, k and v in one pass). The forward pass
// (model-runner-cpu.cc) calls qkv / attn_out / mlp / logits and sees neither layouts nor fusions.
// Stays true: every method gives the same bits as the path's plain matmul (and silu_mul) on the
// weights as loaded, whatever was packed or fused (test-kernels-fast checks each kernel;
// test-forward-cpu the whole pass with and without preparation).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cpu-kernels.h"

namespace llm::cpu {

// One layer's matmul weights and biases as loaded (row-major views; a bias that is not
// present() is absent).
struct CpuLayerMatmuls {
  TensorView wq, wk, wv, bq, bk, bv;  // q, k, v = x @ w^T + b
  TensorView wo, bo;                  // attention output
  TensorView w_gate, w_up, w_down, b_gate, b_up, b_down;
};

// A path's fused matmuls over weights packed together (CpuKernels::fusions: the amx tables',
// cpu-amx.cc, and avx512-bf16's, cpu-avx512-bf16.cc, each on its packed layout). Each gives the
// same bits as the path's matmul and silu_mul unfused.
struct CpuFusions {
  // Whether gate and up can go in together (pack_gate_up), and their packing into out (2 F x K).
  bool (*can_pack_gate_up)(const TensorView& gate, const TensorView& up);
  TensorView (*pack_gate_up)(const TensorView& gate, const TensorView& up, uint16_t* out);
  // out[M, F] = silu(x @ gate^T) * (x @ up^T), w from pack_gate_up.
  void (*gate_up_silu)(ThreadPool& pool, const float* x, int64_t M, const TensorView& w, float* out);
  // y[M, D] = gate_up_silu(x) @ w_down^T (+ b_down), hb an [M, F] buffer it may use; faster where
  // silu's output goes to the down matmul without an fp32 round trip. y may alias x.
  void (*mlp)(ThreadPool& pool, const float* x, int64_t M, const TensorView& w_gate_up, const TensorView& w_down,
              const TensorView* b_down, float* hb, float* y);
  // Whether q, k and v (no biases) can be stacked for matmul_qkv: each packable, the same K,
  // k and v the same shape, and rows the fused kernel splits at (multiples of 32).
  bool (*can_stack_qkv)(const TensorView& wq, const TensorView& wk, const TensorView& wv);
  // q[M, nq], k[M, nkv], v[M, nkv] from w = wq, wk, wv each packed right after the one before.
  void (*matmul_qkv)(ThreadPool& pool, const float* x, int64_t M, const TensorView& w, int64_t nq, int64_t nkv,
                     float* q, float* k, float* v);
};

// Layout::amx_tiles (tensor-view.h), the amx tables' packed layout: whether w can be stored in
// it (row-major bf16, rows % 16 == 0, cols % 32 == 0), and w written into out (w.rows * w.cols
// bf16) in it, returning the view of out.
bool can_pack_amx_tiles(const TensorView& w);
TensorView pack_amx_tiles(const TensorView& w, uint16_t* out);
// Layout::bf16_pairs, the avx512-bf16 and avx2 tables' packed layout: whether w can be stored in
// it (row-major bf16, rows % 16 == 0, cols % 2 == 0). Each table packs with its own ISA.
bool can_pack_bf16_pairs(const TensorView& w);
// gate and up together for the amx fusions: both can_pack_amx_tiles, the same shape F x K, and
// F % 32 == 0; packed as Layout::amx_tiles of 2 F rows whose 16-row blocks alternate, gate rows
// [16 j, 16 j + 16) at block 2 j and the same rows of up at block 2 j + 1.
bool can_pack_amx_gate_up(const TensorView& gate, const TensorView& up);
TensorView pack_amx_gate_up(const TensorView& gate, const TensorView& up, uint16_t* out);

struct CpuWeightOptions {
  // Convert to the path's packed layout (and fuse): the launcher's default. Off: the weights stay
  // the loaded views (bench and tests compare the two).
  bool pack = true;
  // Plain threads the packing runs on (not a ThreadPool: a pool pins its caller, thread-pool.h,
  // and the packing runs on the thread that creates the engine).
  int threads = 1;
  // Called with each loaded matrix once its packed copy is made (the runner unmaps the model
  // file's pages there, so the process counts the weights once). May be empty.
  std::function<void(const void* data, uint64_t bytes)> release;
};

class CpuWeights {
 public:
  // Prepares `layers` and `lm_head` for `kernels`' path. When the buffer cannot be allocated,
  // or nothing can be packed, the weights stay as given.
  CpuWeights(const CpuKernels& kernels, std::vector<CpuLayerMatmuls> layers, TensorView lm_head,
             const CpuWeightOptions& opts);

  // q, k, v = x @ (wq, wk, wv)^T + (bq, bk, bv)   (biases: Qwen2)
  void qkv(ThreadPool& pool, size_t layer, const float* x, int64_t M, float* q, float* k, float* v) const;
  // y = x @ wo^T + bo
  void attn_out(ThreadPool& pool, size_t layer, const float* x, int64_t M, float* y) const;
  // y = (silu(x @ w_gate^T + b_gate) * (x @ w_up^T + b_up)) @ w_down^T + b_down; hb, hb2: [M, F]
  // buffers it may use; y may alias x.
  void mlp(ThreadPool& pool, size_t layer, const float* x, int64_t M, float* hb, float* hb2, float* y) const;
  // y = x @ lm_head^T
  void logits(ThreadPool& pool, const float* x, int64_t M, float* y) const;

  // "N weight matrices in <layout> order (gate/up fused with silu in L layers, q/k/v in L)", or
  // "weights row-major"; empty on paths without a packed layout.
  std::string describe() const;

 private:
  void pack(const CpuWeightOptions& opts);

  struct FreeDeleter {
    void operator()(uint16_t* p) const;
  };
  struct Layer {
    CpuLayerMatmuls m;  // packed where they could be
    TensorView gate_up;  // fused gate and up, or absent
    TensorView qkv;      // q, k, v stacked, or absent
  };

  const CpuKernels& kernels_;
  std::vector<Layer> layers_;
  TensorView lm_head_;
  std::unique_ptr<uint16_t, FreeDeleter> packed_;  // the packed copies
  int64_t packed_count_ = 0;                        // matrices in packed_
};

}  // namespace llm::cpu
