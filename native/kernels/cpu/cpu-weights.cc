// cpu-weights.cc: CpuWeights (cpu-weights.h) and the amx tables' packers, which need no ISA.
#include "cpu-weights.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <thread>

#include <sys/mman.h>

namespace llm::cpu {

namespace {

// Rows [16 b, 16 b + 16) of the row-major src (K columns) as one 16-row block of
// Layout::amx_tiles at dst.
void pack_block16(const uint16_t* src, int64_t K, int64_t b, uint16_t* dst) {
  for (int64_t r = 0; r < 16; ++r) {
    const uint16_t* row = src + (b * 16 + r) * K;
    for (int64_t kb = 0; kb < K / 32; ++kb) std::memcpy(dst + kb * 512 + r * 32, row + kb * 32, 64);
  }
}

const TensorView* bias_or_null(const TensorView& b) { return b.present() ? &b : nullptr; }

int64_t elements(const TensorView& t) { return t.rows * t.cols; }

}  // namespace

bool can_pack_amx_tiles(const TensorView& w) {
  return w.present() && w.layout == Layout::row_major && w.dtype == DType::bf16 && w.rows > 0 && w.rows % 16 == 0 &&
         w.cols > 0 && w.cols % 32 == 0;
}

TensorView pack_amx_tiles(const TensorView& w, uint16_t* out) {
  const auto* src = static_cast<const uint16_t*>(w.data);
  for (int64_t b = 0; b < w.rows / 16; ++b) pack_block16(src, w.cols, b, out + b * 16 * w.cols);
  TensorView packed = w;
  packed.data = out;
  packed.layout = Layout::amx_tiles;
  return packed;
}

bool can_pack_bf16_pairs(const TensorView& w) {
  return w.data && w.dtype == DType::bf16 && w.layout == Layout::row_major && w.rows > 0 && w.rows % 16 == 0 &&
         w.cols > 0 && w.cols % 2 == 0;
}

bool can_pack_amx_gate_up(const TensorView& gate, const TensorView& up) {
  return can_pack_amx_tiles(gate) && can_pack_amx_tiles(up) && gate.rows == up.rows && gate.cols == up.cols &&
         gate.rows % 32 == 0;
}

TensorView pack_amx_gate_up(const TensorView& gate, const TensorView& up, uint16_t* out) {
  const int64_t K = gate.cols;
  for (int64_t b = 0; b < gate.rows / 16; ++b) {
    pack_block16(static_cast<const uint16_t*>(gate.data), K, b, out + 2 * b * 16 * K);
    pack_block16(static_cast<const uint16_t*>(up.data), K, b, out + (2 * b + 1) * 16 * K);
  }
  TensorView packed = gate;
  packed.data = out;
  packed.rows = 2 * gate.rows;
  packed.layout = Layout::amx_tiles;
  return packed;
}

void CpuWeights::FreeDeleter::operator()(uint16_t* p) const { std::free(p); }

CpuWeights::CpuWeights(const CpuKernels& kernels, std::vector<CpuLayerMatmuls> layers, TensorView lm_head,
                       const CpuWeightOptions& opts)
    : kernels_(kernels), lm_head_(lm_head) {
  layers_.reserve(layers.size());
  for (CpuLayerMatmuls& m : layers) layers_.push_back(Layer{m, TensorView{}, TensorView{}});
  if (opts.pack && kernels_.pack) pack(opts);
}

// Into the path's packed layout, in one buffer: a prefill then reads its weights where they lie
// instead of reordering them on every matmul, and decode reads them at the same bandwidth. A
// layer's gate and up go in together (gate_up) where the path fuses them and they have no
// biases; so do its q, k and v (qkv: packed one right after the other, so the three views are
// also the stacked one's parts).
void CpuWeights::pack(const CpuWeightOptions& opts) {
  const CpuFusions* f = kernels_.fusions;
  std::vector<TensorView*> todo;
  std::vector<Layer*> fused;  // layers whose gate and up go into gate_up
  for (Layer& l : layers_) {
    CpuLayerMatmuls& m = l.m;
    const bool fuse = f && !m.b_gate.present() && !m.b_up.present() && f->can_pack_gate_up(m.w_gate, m.w_up);
    if (fuse) fused.push_back(&l);
    const bool stack = f && !m.bq.present() && !m.bk.present() && !m.bv.present() && f->can_stack_qkv(m.wq, m.wk, m.wv);
    if (stack) l.qkv = TensorView{nullptr, DType::bf16, m.wq.rows + 2 * m.wk.rows, m.wq.cols, kernels_.packed_layout};
    // q, k, v stay in this order in todo (and so in packed_).
    for (TensorView* t : {&m.wq, &m.wk, &m.wv, &m.wo, &m.w_gate, &m.w_up, &m.w_down})
      if (!(fuse && (t == &m.w_gate || t == &m.w_up)) && kernels_.can_pack(*t)) todo.push_back(t);
  }
  if (kernels_.can_pack(lm_head_)) todo.push_back(&lm_head_);
  size_t total = 0;
  for (const TensorView* t : todo) total += static_cast<size_t>(elements(*t));
  for (const Layer* l : fused) total += static_cast<size_t>(2 * elements(l->m.w_gate));
  if (total == 0) return;
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t bytes = (total * 2 + kHuge - 1) / kHuge * kHuge;
  packed_.reset(static_cast<uint16_t*>(std::aligned_alloc(kHuge, bytes)));
  if (!packed_) {
    for (Layer& l : layers_) l.qkv = TensorView{};
    return;
  }
  // Transparent huge pages where the system allows them ("madvise" mode): the decode GEMV streams
  // all of it every token, and 4 KiB pages cost it TLB misses (bench-cpu-gemv's row/row-huge).
  madvise(packed_.get(), bytes, MADV_HUGEPAGE);
  // Each matrix's place in packed_, then the copies on opts.threads plain threads. The copies
  // read the model files (page cache, or disk the first time) and fault in the huge pages.
  std::vector<std::function<void()>> jobs;
  uint16_t* at = packed_.get();
  auto release = [&opts](const TensorView& t) {
    if (opts.release) opts.release(t.data, static_cast<uint64_t>(elements(t)) * 2);
  };
  for (TensorView* t : todo) {
    jobs.push_back([this, t, at, release] {
      const TensorView source = *t;
      *t = kernels_.pack(source, at);
      release(source);
    });
    at += elements(*t);
  }
  for (Layer* l : fused) {
    jobs.push_back([f, l, at, release] {
      l->gate_up = f->pack_gate_up(l->m.w_gate, l->m.w_up, at);
      release(l->m.w_gate);
      release(l->m.w_up);
    });
    at += 2 * elements(l->m.w_gate);
  }
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t j; (j = next.fetch_add(1)) < jobs.size();) jobs[j]();
  };
  std::vector<std::thread> threads;
  for (int i = 1; i < opts.threads; ++i) threads.emplace_back(work);
  work();
  for (std::thread& th : threads) th.join();
  for (Layer& l : layers_)
    if (l.qkv.rows) l.qkv.data = l.m.wq.data;  // wk and wv follow it
  packed_count_ = static_cast<int64_t>(todo.size() + 2 * fused.size());
}

void CpuWeights::qkv(ThreadPool& pool, size_t layer, const float* x, int64_t M, float* q, float* k, float* v) const {
  const Layer& l = layers_[layer];
  if (l.qkv.present()) return kernels_.fusions->matmul_qkv(pool, x, M, l.qkv, l.m.wq.rows, l.m.wk.rows, q, k, v);
  kernels_.matmul(pool, x, M, l.m.wq, bias_or_null(l.m.bq), q);
  kernels_.matmul(pool, x, M, l.m.wk, bias_or_null(l.m.bk), k);
  kernels_.matmul(pool, x, M, l.m.wv, bias_or_null(l.m.bv), v);
}

void CpuWeights::attn_out(ThreadPool& pool, size_t layer, const float* x, int64_t M, float* y) const {
  const Layer& l = layers_[layer];
  kernels_.matmul(pool, x, M, l.m.wo, bias_or_null(l.m.bo), y);
}

void CpuWeights::mlp(ThreadPool& pool, size_t layer, const float* x, int64_t M, float* hb, float* hb2, float* y) const {
  const Layer& l = layers_[layer];
  if (l.gate_up.present()) return kernels_.fusions->mlp(pool, x, M, l.gate_up, l.m.w_down, bias_or_null(l.m.b_down), hb, y);
  kernels_.matmul(pool, x, M, l.m.w_gate, bias_or_null(l.m.b_gate), hb);
  kernels_.matmul(pool, x, M, l.m.w_up, bias_or_null(l.m.b_up), hb2);
  kernels_.silu_mul(pool, hb, hb2, hb, M * l.m.w_gate.rows);
  kernels_.matmul(pool, hb, M, l.m.w_down, bias_or_null(l.m.b_down), y);
}

void CpuWeights::logits(ThreadPool& pool, const float* x, int64_t M, float* y) const {
  kernels_.matmul(pool, x, M, lm_head_, nullptr, y);
}

std::string CpuWeights::describe() const {
  if (!kernels_.pack) return "";
  if (!packed_count_) return "weights row-major";
  int64_t gate_up = 0, qkv = 0;
  for (const Layer& l : layers_) {
    gate_up += l.gate_up.present();
    qkv += l.qkv.present();
  }
  const char* layout = kernels_.packed_layout == Layout::amx_tiles ? "tile" : "bf16-pair";
  std::string s = std::to_string(packed_count_) + " weight matrices in " + layout + " order";
  if (kernels_.fusions)
    s += " (gate/up fused with silu in " + std::to_string(gate_up) + " layers, q/k/v in " + std::to_string(qkv) + ")";
  return s;
}

}  // namespace llm::cpu
