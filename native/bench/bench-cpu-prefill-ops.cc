// bench-cpu-prefill-ops.cc: where one 512-token prefill's time goes on the CPU kernel paths, op by op,
// on the Llama-3.2-1B shapes (hidden 2048, 32 heads, 8 kv heads, head_dim 64, FFN 8192, 16
// layers), random bf16 weights and a bf16 KV pool. Not a test: timing only.
// Build: the CMake target bench-cpu-prefill-ops (x86 builds with LLM_BUILD_TESTS=ON).
// Run: bench-cpu-prefill-ops [T=512] [rounds=3] [paths=amx,amx-tiles,amx-exact,avx512,avx512-bf16,avx512-bf16-packed,avx2,avx2-packed]
//      (amx-tiles, avx512-bf16-packed, avx2-packed: the weights prepared as the CPU runner prepares them,
//      CpuWeights: packed, fused where the path fuses, and q/k/v, o and the MLP each timed as one
//      op) [only=all|matmul] [threads=2] [huge]
// Prints per op the best-of-rounds time for one layer and its share of the 16-layer total, and the
// matmuls' GFLOP/s as a fraction of the path's compute peak (compute-peak.h, measured per path).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <sys/mman.h>

#include "bench-common.h"
#include "kernels/cpu/compute-peak.h"
#include "kernels/cpu/cpu-kernels.h"
#include "kernels/cpu/cpu-weights.h"
#include "kernels/dtype.h"

using namespace llm;
using namespace llm::cpu;
using namespace llm_bench;

namespace {

constexpr int64_t kD = 2048, kH = 32, kHkv = 8, kHd = 64, kF = 8192, kLayers = 16, kBlock = 16;

// With huge = true (argument 6 = "huge"), every buffer is 2 MiB aligned and madvise'd for
// transparent huge pages, to see what the TLB costs (THP is "madvise" on this host).
bool huge = false;

template <class T>
struct HugeAlloc {
  using value_type = T;
  HugeAlloc() = default;
  template <class U>
  HugeAlloc(const HugeAlloc<U>&) {}
  T* allocate(size_t n) {
    const size_t bytes = (n * sizeof(T) + (size_t{2} << 20) - 1) / (size_t{2} << 20) * (size_t{2} << 20);
    void* p = std::aligned_alloc(size_t{2} << 20, bytes);
    if (huge) madvise(p, bytes, MADV_HUGEPAGE);
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }
  bool operator==(const HugeAlloc&) const { return true; }
  bool operator!=(const HugeAlloc&) const { return false; }
};
template <class T>
using Buf = std::vector<T, HugeAlloc<T>>;

Buf<uint16_t> random_bf16(int64_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  Buf<uint16_t> v(static_cast<size_t>(n));
  for (auto& e : v) e = f32_to_bf16(u(rng));
  return v;
}

Buf<float> random_f32(int64_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  Buf<float> v(static_cast<size_t>(n));
  for (auto& e : v) e = u(rng);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t T = argc > 1 ? std::atoll(argv[1]) : 512;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 3;
  const std::string paths = argc > 3 ? argv[3] : "amx";
  const std::string only = argc > 4 ? argv[4] : "all";
  ThreadPool pool(argc > 5 ? std::atoi(argv[5]) : 2);
  huge = argc > 6 && std::string(argv[6]) == "huge";

  // Weights: one layer (reused for every layer: 120 MB, far past the caches either way).
  const auto wq = random_bf16(kD * kD, 0.02f, 1), wk = random_bf16(kHkv * kHd * kD, 0.02f, 2);
  const auto wv = random_bf16(kHkv * kHd * kD, 0.02f, 3), wo = random_bf16(kD * kD, 0.02f, 4);
  const auto wg = random_bf16(kF * kD, 0.02f, 5), wu = random_bf16(kF * kD, 0.02f, 6);
  const auto wd = random_bf16(kD * kF, 0.02f, 7), norm = random_bf16(kD, 1.0f, 8);
  const TensorView rq{wq.data(), DType::bf16, kD, kD}, rk{wk.data(), DType::bf16, kHkv * kHd, kD};
  const TensorView rv{wv.data(), DType::bf16, kHkv * kHd, kD}, ro{wo.data(), DType::bf16, kD, kD};
  const TensorView rg{wg.data(), DType::bf16, kF, kD}, ru{wu.data(), DType::bf16, kF, kD};
  const TensorView rd{wd.data(), DType::bf16, kD, kF}, vn{norm.data(), DType::bf16, 1, kD};

  // Activations.
  auto x = random_f32(T * kD, 1.0f, 10);
  // Every input starts random (AMX runs faster on zeros); matmul o writes yo, not xb, so that
  // with only=matmul the inputs of gate and up stay random.
  auto xb = random_f32(T * kD, 1.0f, 11), att = random_f32(T * kD, 1.0f, 12), hb = random_f32(T * kF, 1.0f, 13);
  Buf<float> q(T * kD), k(T * kHkv * kHd), v(T * kHkv * kHd), yo(T * kD), hb2(T * kF);
  // KV pool (bf16), one sequence of T tokens in blocks 0 ..
  KVCacheView cache;
  cache.dtype = DType::bf16;
  cache.num_blocks = (T + kBlock - 1) / kBlock;
  cache.num_layers = 1;
  cache.block_size = kBlock;
  cache.num_kv_heads = kHkv;
  cache.head_dim = kHd;
  Buf<uint16_t> pool_mem(static_cast<size_t>(cache.num_blocks * cache.block_stride()));
  cache.data = pool_mem.data();
  std::vector<int64_t> slots(T);
  std::vector<int32_t> positions(T);
  for (int64_t i = 0; i < T; ++i) slots[i] = i, positions[i] = static_cast<int32_t>(i);
  const OneSequence seq(T, cache.num_blocks, kH, 1.0f / 8.0f);
  const AttentionBatch& batch = seq.batch;
  std::vector<float> inv_freq(kHd / 2);
  for (int64_t i = 0; i < kHd / 2; ++i) inv_freq[i] = std::pow(500000.0f, -2.0f * i / kHd);

  for (const std::string& name : split_list(paths)) {
    // amx-tiles, avx512-bf16-packed: the path on weights in its packed layout (as the runner keeps them)
    const bool tiles = name == "amx-tiles" || name == "avx512-bf16-packed" || name == "avx2-packed";
    const CpuPath path = name == "amx" || name == "amx-tiles"                   ? CpuPath::amx
                         : name == "amx-exact"                                  ? CpuPath::amx_exact
                         : name == "avx512-bf16" || name == "avx512-bf16-packed" ? CpuPath::avx512_bf16
                         : name == "avx2" || name == "avx2-packed"              ? CpuPath::avx2
                                                                                : CpuPath::avx512;
    const CpuKernels* kp = cpu_kernels_for(path);
    if (!kp) {
      std::printf("%s: not on this CPU\n", name.c_str());
      continue;
    }
    const CpuKernels& K = *kp;
    // The weights as the CPU runner prepares them (cpu-weights.h): on the *-tiles / *-packed runs
    // packed, and fused where the path fuses; row-major otherwise.
    CpuWeightOptions prep;
    prep.pack = tiles;
    const CpuLayerMatmuls layer{rq, rk, rv, {}, {}, {}, ro, {}, rg, ru, rd, {}, {}, {}};
    const CpuWeights prepared(K, {layer}, TensorView{}, prep);
    const TensorView vq = rq, vk = rk, vv = rv, vo = ro, vg = rg, vu = ru, vd = rd;
    struct Op {
      const char* name;
      double flops;
      std::function<void()> run;
      double best = 1e9;
    };
    std::vector<Op> ops = {
        {"rmsnorm", 0, [&] { K.rmsnorm(pool, x.data(), vn, 1e-5f, T, kD, xb.data()); }},
        {"matmul q", 2.0 * T * kD * kD, [&] { K.matmul(pool, xb.data(), T, vq, nullptr, q.data()); }},
        {"matmul k", 2.0 * T * kD * 512, [&] { K.matmul(pool, xb.data(), T, vk, nullptr, k.data()); }},
        {"matmul v", 2.0 * T * kD * 512, [&] { K.matmul(pool, xb.data(), T, vv, nullptr, v.data()); }},
        {"rope", 0, [&] { K.rope(pool, q.data(), k.data(), positions.data(), T, kH, kHkv, kHd, inv_freq.data(), 1.0f); }},
        {"cache_write", 0, [&] { K.cache_write(pool, k.data(), v.data(), slots.data(), T, cache, 0); }},
        {"attention", 4.0 * kH * kHd * T * (T + 1) / 2, [&] { K.paged_attention(pool, q.data(), cache, 0, batch, att.data()); }},
        {"matmul o", 2.0 * T * kD * kD, [&] { K.matmul(pool, att.data(), T, vo, nullptr, yo.data()); }},
        {"rmsnorm2", 0, [&] { K.rmsnorm(pool, x.data(), vn, 1e-5f, T, kD, xb.data()); }},
        {"matmul gate", 2.0 * T * kD * kF, [&] { K.matmul(pool, xb.data(), T, vg, nullptr, hb.data()); }},
        {"matmul up", 2.0 * T * kD * kF, [&] { K.matmul(pool, xb.data(), T, vu, nullptr, hb2.data()); }},
        {"silu_mul", 0, [&] { K.silu_mul(pool, hb.data(), hb2.data(), hb.data(), T * kF); }},
        {"matmul down", 2.0 * T * kD * kF, [&] { K.matmul(pool, hb.data(), T, vd, nullptr, xb.data()); }},
    };
    if (tiles) {  // the matmuls as the runner calls them: q/k/v, o and the MLP, each one op
      ops.erase(ops.begin() + 9, ops.begin() + 13);
      ops.insert(ops.begin() + 9, Op{"matmul mlp", 6.0 * T * kD * kF,
                                     [&] { prepared.mlp(pool, 0, xb.data(), T, hb.data(), hb2.data(), yo.data()); }});
      ops[7].run = [&] { prepared.attn_out(pool, 0, att.data(), T, yo.data()); };
      ops.erase(ops.begin() + 1, ops.begin() + 4);
      ops.insert(ops.begin() + 1, Op{"matmul qkv", 2.0 * T * kD * (kD + 1024),
                                     [&] { prepared.qkv(pool, 0, xb.data(), T, q.data(), k.data(), v.data()); }});
      std::printf("%s: %s\n", name.c_str(), prepared.describe().c_str());
    }
    // Keep the attention input sane: softmax over random q.k is fine at scale 1/8.
    for (int r = 0; r < rounds; ++r)
      for (auto& op : ops) {
        if (only == "matmul" && std::strncmp(op.name, "matmul", 6) != 0) continue;
        const double t0 = now();
        op.run();
        const double dt = now() - t0;
        if (dt < op.best) op.best = dt;
      }
    double total = 0, mm = 0;
    for (auto& op : ops) {
      if (op.best > 1e8) continue;
      total += op.best;
      if (std::strncmp(op.name, "matmul", 6) == 0) mm += op.best;
    }
    std::printf("path %s, T=%lld, best of %d\n", name.c_str(), static_cast<long long>(T), rounds);
    for (auto& op : ops) {
      if (op.best > 1e8) continue;
      std::printf("  %-12s %8.2f ms  %5.1f%%", op.name, op.best * 1e3, 100 * op.best / total);
      if (op.flops > 0) std::printf("  %6.2f TFLOP/s", op.flops / op.best / 1e12);
      std::printf("\n");
    }
    std::printf("  layer %.2f ms (matmul %.2f ms, %.1f%%); 16 layers %.1f ms = %.0f tok/s (no lm_head/embedding)\n",
                total * 1e3, mm * 1e3, 100 * mm / total, total * kLayers * 1e3, T / (total * kLayers));
    double mm_flops = 0;
    for (auto& op : ops)
      if (op.best < 1e8 && std::strncmp(op.name, "matmul", 6) == 0) mm_flops += op.flops;
    double peak = 0.0;
    const bool has_peak = compute_peak_gflops(path, pool.size(), &peak).ok() && peak > 0;
    if (mm > 0)
      std::printf("  matmuls %.1f GFLOP/s; peak %.1f GFLOP/s (%s): %.0f%%\n", mm_flops / mm / 1e9, peak, K.name,
                  has_peak ? 100 * mm_flops / mm / 1e9 / peak : 0.0);
  }
  return 0;
}
