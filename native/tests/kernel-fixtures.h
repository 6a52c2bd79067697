// kernel-fixtures.h: inputs shared by the CPU kernel tests (test-kernels-cpu.cc checks the
// reference kernels against double precision, test-kernels-fast.cc checks every ISA path against
// the reference kernels): seeded random data, buffers rounded to a dtype, a paged KV pool, and an
// attention batch over a scattered, poisoned pool.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/cpu-kernels.h"

namespace llm_test {

using namespace llm;
using namespace llm::cpu;

inline const DType kDTypes[] = {DType::f32, DType::f16, DType::bf16};

inline std::mt19937& rng() {
  static std::mt19937 gen(1234);
  return gen;
}

inline float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng()); }

inline std::vector<float> random_floats(int64_t n, float lo = -1.0f, float hi = 1.0f) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = uniform(lo, hi);
  return v;
}

// A typed buffer plus its values as the kernel sees them (rounded to the dtype).
struct TypedBuffer {
  DType dtype = DType::f32;
  std::vector<uint8_t> bytes;
  std::vector<double> values;

  TypedBuffer(DType t, const std::vector<float>& src) : dtype(t) {
    bytes.resize(src.size() * static_cast<size_t>(dtype_size(t)));
    values.resize(src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      store_f32(bytes.data(), t, static_cast<int64_t>(i), src[i]);
      values[i] = load_f32(bytes.data(), t, static_cast<int64_t>(i));
    }
  }
  TensorView view(int64_t rows, int64_t cols) const { return TensorView{bytes.data(), dtype, rows, cols}; }
};

// Worst |got - want| / scale over the elements; INFINITY once any element was NaN.
struct ErrorTracker {
  double worst = 0.0;
  void add(double got, double want, double scale) {
    const double e = std::fabs(got - want) / scale;
    worst = std::isnan(e) ? INFINITY : std::max(worst, e);
  }
};

inline ThreadPool& test_pool() {
  static ThreadPool pool(4);
  return pool;
}

// A paged KV pool filled by the test.

struct TestPool {
  KVCacheView view;
  std::vector<uint8_t> bytes;

  TestPool() = default;
  TestPool(DType dt, int64_t num_blocks, int64_t num_layers, int64_t block_size, int64_t num_kv_heads,
           int64_t head_dim) {
    view.dtype = dt;
    view.num_blocks = num_blocks;
    view.num_layers = num_layers;
    view.block_size = block_size;
    view.num_kv_heads = num_kv_heads;
    view.head_dim = head_dim;
    bytes.resize(static_cast<size_t>(num_blocks * view.block_bytes()));
    view.data = bytes.data();
  }
  int64_t elements() const { return view.num_blocks * view.block_stride(); }
  double get(int64_t i) const { return load_f32(view.data, view.dtype, i); }
  void set(int64_t i, float v) { store_f32(view.data, view.dtype, i, v); }
};

// One sequence of the attention batch: `cached` tokens already in the pool plus `new_tokens`.
struct SeqSpec {
  int64_t cached;
  int64_t new_tokens;
};

// An attention batch over a pool whose blocks are handed to the sequences in a random order; every
// used position holds random K/V and every other element a large poison value (a kernel that
// reads a masked or foreign position gets a visibly wrong answer).
struct AttentionCase {
  static constexpr int64_t kLayer = 1;
  TestPool pool;
  std::vector<int32_t> qsl{0}, seq_lens, tables;
  AttentionBatch batch;
  std::vector<float> q;  // [T, H, head_dim]
  int64_t T = 0;

  AttentionCase(DType dt, int64_t H, int64_t Hkv, int64_t head_dim, int64_t block_size, int64_t sliding_window,
                const std::vector<SeqSpec>& seqs) {
    const int64_t num_layers = 2, num_seqs = static_cast<int64_t>(seqs.size());
    int64_t max_blocks = 0, total_blocks = 0;
    for (const SeqSpec& sp : seqs) {
      qsl.push_back(static_cast<int32_t>(qsl.back() + sp.new_tokens));
      seq_lens.push_back(static_cast<int32_t>(sp.cached + sp.new_tokens));
      const int64_t blocks = (seq_lens.back() + block_size - 1) / block_size;
      max_blocks = std::max(max_blocks, blocks + 1);  // one spare column in every row
      total_blocks += blocks;
    }
    const int64_t num_blocks = total_blocks + 3;  // a few blocks nobody owns
    std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng());
    tables.assign(static_cast<size_t>(num_seqs * max_blocks), -1);
    size_t next = 0;
    for (int64_t s = 0; s < num_seqs; ++s)
      for (int64_t j = 0; j < (seq_lens[s] + block_size - 1) / block_size; ++j) tables[s * max_blocks + j] = ids[next++];

    pool = TestPool(dt, num_blocks, num_layers, block_size, Hkv, head_dim);
    for (int64_t i = 0; i < pool.elements(); ++i) pool.set(i, 1000.0f);
    for (int64_t s = 0; s < num_seqs; ++s)
      for (int64_t j = 0; j < seq_lens[s]; ++j)
        for (int kv = 0; kv < 2; ++kv) {
          const int64_t base = pool.view.offset(tables[s * max_blocks + j / block_size], kLayer, kv, j % block_size);
          for (int64_t e = 0; e < pool.view.token_stride(); ++e) pool.set(base + e, uniform(-1.0f, 1.0f));
        }

    batch.num_seqs = num_seqs;
    batch.query_start_loc = qsl.data();
    batch.seq_lens = seq_lens.data();
    batch.block_tables = tables.data();
    batch.max_blocks_per_seq = max_blocks;
    batch.num_heads = H;
    batch.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    batch.sliding_window = sliding_window;
    T = qsl.back();
    q = random_floats(T * H * head_dim, -3.0f, 3.0f);
  }
  AttentionCase(const AttentionCase&) = delete;

  std::vector<float> run(const CpuKernels& k) const {
    std::vector<float> out(static_cast<size_t>(T * batch.num_heads * pool.view.head_dim), NAN);
    k.paged_attention(test_pool(), q.data(), pool.view, kLayer, batch, out.data());
    return out;
  }
};

}  // namespace llm_test
