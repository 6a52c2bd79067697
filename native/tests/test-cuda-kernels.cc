// test-cuda-kernels.cc: every CUDA kernel (native/kernels/cuda) against the CPU reference kernel
// of the same op (cpu_reference_kernels()) on the same inputs, like llama.cpp's
// test-backend-ops. Inputs are rounded to the dtype under test first, so both sides see the
// same values; the CPU computes in fp32 and the GPU stores its result in the dtype.
//
// Bounds: worst |gpu - cpu| / max(1, |cpu|) per kernel and dtype. Both sides compute in fp32,
// so what differs is summation order, libm ulps, and the GPU's final rounding to the dtype:
// one ulp of the result (f16 2^-10 = 1e-3, bf16 2^-7 = 7.8e-3 relative), hence the bounds
// below; cache_write, embedding and argmax copy or choose and must match exactly.
//   op                 f32     f16     bf16
//   rmsnorm_residual   1e-5    2e-3    1.6e-2   (the updated residual x: exact)
//   rope               1e-5    2e-3    1.6e-2   (in cache_write: q, k and the pool)
//   silu_mul           1e-5    2e-3    1.6e-2
//   paged_attention    2e-5    2e-3    1.6e-2
//   gemm (out f32)     1e-4 for every input dtype (fp32 sums of K products, K <= 2048)
//   gemm (out = in)    -       3e-3    2.4e-2   (cuBLAS rounds y, the bias add rounds again)
// Attention runs twice, with and without the pipelined (cp.async) K/V loads.
// Shapes: partial last blocks, block sizes 1, 7, 16; context lengths 1 and 4097; GQA ratios
// 1, 4 and 8; head_dim 64 and 128; batches mixing prefill chunks (fresh and on a cached prefix)
// with decodes; split and unsplit decode; a sliding window; padding slots; ties and NaN for argmax.
//
// Without a usable device (no driver, no GPU, no code for its architecture) it prints
// "SKIP: no CUDA device (reason)" and exits 77 (ctest: skipped).
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "engine/model-runner.h"
#include "kernel-fixtures.h"
#include "kernels/cuda/argmax.h"
#include "kernels/cuda/cache-write.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/paged-attention.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/silu-mul.h"
#include "cuda-test-main.h"
#include "test-harness.h"

using namespace llm;
using namespace llm_test;

namespace {

constexpr cuda::AttentionVariant kAttentionVariants[] = {
    cuda::AttentionVariant::fast, cuda::AttentionVariant::pipelined_tiles, cuda::AttentionVariant::plain_tiles};

const cpu::CpuKernels& R() { return cpu::cpu_reference_kernels(); }

#define CHECK_CUDA(expr)                                                                      \
  do {                                                                                        \
    const cudaError_t _e = (expr);                                                            \
    if (_e != cudaSuccess) {                                                                  \
      std::printf("  %s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(_e));    \
      ++llm_test::failures();                                                                 \
    }                                                                                         \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Device buffers

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  explicit DeviceBuffer(size_t n) : bytes(n) { CHECK_CUDA(cudaMalloc(&ptr, n > 0 ? n : 1)); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  template <typename T> T* as() const { return static_cast<T*>(ptr); }
};

std::unique_ptr<DeviceBuffer> upload(const void* src, size_t bytes) {
  auto d = std::make_unique<DeviceBuffer>(bytes);
  CHECK_CUDA(cudaMemcpy(d->ptr, src, bytes, cudaMemcpyHostToDevice));
  return d;
}
template <typename T>
std::unique_ptr<DeviceBuffer> upload(const std::vector<T>& v) { return upload(v.data(), v.size() * sizeof(T)); }

std::vector<uint8_t> download(const DeviceBuffer& d) {
  std::vector<uint8_t> out(d.bytes);
  CHECK_CUDA(cudaDeviceSynchronize());
  CHECK_CUDA(cudaMemcpy(out.data(), d.ptr, d.bytes, cudaMemcpyDeviceToHost));
  return out;
}

// n elements of dtype from the device, as fp32.
std::vector<float> download_f32(const DeviceBuffer& d, DType dt, int64_t n) {
  const std::vector<uint8_t> bytes = download(d);
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = load_f32(bytes.data(), dt, i);
  return out;
}

// src rounded to dt, as fp32 (what both sides compute on).
std::vector<float> rounded(DType dt, std::vector<float> src) {
  uint8_t tmp[4];
  for (float& x : src) {
    store_f32(tmp, dt, 0, x);
    x = load_f32(tmp, dt, 0);
  }
  return src;
}

std::vector<uint8_t> bytes_of(DType dt, const std::vector<float>& src) { return TypedBuffer(dt, src).bytes; }

// ---------------------------------------------------------------------------------------------
// Comparison

struct Bound {
  double f32, f16, bf16;
  double of(DType dt) const { return dt == DType::f32 ? f32 : dt == DType::f16 ? f16 : bf16; }
};
constexpr Bound kElementwise{1e-5, 2e-3, 1.6e-2};
constexpr Bound kAttention{2e-5, 2e-3, 1.6e-2};

// Checks worst |got - want| / max(1, |want|) <= bound and prints the worst for the log.
void expect_close(const char* what, const std::vector<float>& got, const std::vector<float>& want, double bound) {
  CHECK_EQ(got.size(), want.size());
  ErrorTracker err;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i)
    err.add(got[i], want[i], std::max(1.0, std::fabs(static_cast<double>(want[i]))));
  const bool ok = err.worst <= bound;
  std::printf("  %-58s worst %.3g (bound %.3g)%s\n", what, err.worst, bound, ok ? "" : "  <-- FAIL");
  if (!ok) ++llm_test::failures();
}

// ---------------------------------------------------------------------------------------------
// cache_write: the whole pool after the same writes, byte for byte.

TEST(cache_write_matches_cpu) {
  for (DType dt : kDTypes)
    for (int64_t block_size : {1, 7, 16}) {
      const int64_t Hkv = 2, head_dim = 64, T = 21;
      const int64_t num_blocks = (T + block_size - 1) / block_size + 3, num_slots = num_blocks * block_size;
      TestPool cpu_pool(dt, num_blocks, 3, block_size, Hkv, head_dim);
      for (int64_t i = 0; i < cpu_pool.elements(); ++i) cpu_pool.set(i, uniform(-1.0f, 1.0f));
      auto gpu_pool = upload(cpu_pool.bytes);
      // Slots: distinct (as in any real step: two tokens never share a slot, and the GPU writes
      // them in no particular order), scattered over blocks by a stride coprime to the slot
      // count, some blocks partial, every 5th token padding.
      int64_t stride = 7;
      while (std::gcd(stride, num_slots) != 1) ++stride;
      std::vector<int64_t> slots(static_cast<size_t>(T));
      for (int64_t t = 0; t < T; ++t) slots[t] = t % 5 == 4 ? -1 : (t * stride + 3) % num_slots;
      const std::vector<float> k = rounded(dt, random_floats(T * Hkv * head_dim));
      const std::vector<float> v = rounded(dt, random_floats(T * Hkv * head_dim));
      R().cache_write(test_pool(), k.data(), v.data(), slots.data(), T, cpu_pool.view, 1);
      auto d_k = upload(bytes_of(dt, k)), d_v = upload(bytes_of(dt, v)), d_slots = upload(slots);
      KVCacheView view = cpu_pool.view;
      view.data = gpu_pool->ptr;
      CHECK_OK(cuda::cache_write(d_k->ptr, d_v->ptr, d_slots->as<int64_t>(), T, view, 1, nullptr));
      CHECK(download(*gpu_pool) == cpu_pool.bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// paged_attention

struct AttentionShape {
  int64_t H, Hkv, head_dim, block_size, window;
  std::vector<SeqSpec> seqs;
};

void check_attention(DType dt, const AttentionShape& sh, const char* label) {
  AttentionCase c(dt, sh.H, sh.Hkv, sh.head_dim, sh.block_size, sh.window, sh.seqs);
  c.q = rounded(dt, c.q);
  const std::vector<float> want = c.run(R());

  auto d_pool = upload(c.pool.bytes);
  auto d_qsl = upload(c.qsl), d_seq_lens = upload(c.seq_lens), d_tables = upload(c.tables);
  auto d_q = upload(bytes_of(dt, c.q));
  const int64_t n_out = c.T * sh.H * sh.head_dim;
  DeviceBuffer d_out(static_cast<size_t>(n_out * dtype_size(dt)));
  KVCacheView view = c.pool.view;
  view.data = d_pool->ptr;
  cuda::AttentionBatch b;
  b.num_seqs = c.batch.num_seqs;
  b.query_start_loc = d_qsl->as<int32_t>();
  b.seq_lens = d_seq_lens->as<int32_t>();
  b.block_tables = d_tables->as<int32_t>();
  b.max_blocks_per_seq = c.batch.max_blocks_per_seq;
  b.num_heads = sh.H;
  b.scale = c.batch.scale;
  b.sliding_window = sh.window;
  b.num_tokens = c.T;
  for (const SeqSpec& sp : sh.seqs) {
    b.max_query_len = std::max(b.max_query_len, sp.new_tokens);
    b.max_seq_len = std::max(b.max_seq_len, sp.cached + sp.new_tokens);
  }
  const size_t ws_bytes = cuda::paged_attention_workspace_bytes(b, view);
  DeviceBuffer ws(ws_bytes);
  // Both ways of loading K/V tiles (cp.async double buffering, and load-then-compute).
  for (cuda::AttentionVariant variant : kAttentionVariants) {
    cuda::set_attention_variant(variant);
    CHECK_OK(cuda::paged_attention(d_q->ptr, view, AttentionCase::kLayer, b, d_out.ptr, ws.ptr, ws_bytes, nullptr));
    char what[160];
    std::snprintf(what, sizeof(what), "attention %s D%lld G%lld bs%lld %s%s%s", dtype_name(dt),
                  static_cast<long long>(sh.head_dim), static_cast<long long>(sh.H / sh.Hkv),
                  static_cast<long long>(sh.block_size), label, ws_bytes ? " (split)" : "",
                  (std::string(" ") + cuda::attention_variant_name(variant)).c_str());
    expect_close(what, download_f32(d_out, dt, n_out), want, kAttention.of(dt));
  }
  cuda::set_attention_variant(cuda::AttentionVariant::fast);
}

TEST(paged_attention_mixed_batches_match_cpu) {
  // Decodes at context 1, 41 (partial block) and 4097, prefill chunks fresh (37 tokens), on a
  // cached prefix (29 on 100) and up to context 4097 (65 on 4032).
  const std::vector<SeqSpec> mixed = {{0, 1}, {4096, 1}, {40, 1}, {0, 37}, {100, 29}, {4032, 65}};
  for (DType dt : kDTypes)
    for (int64_t head_dim : {64, 128})
      for (auto [H, Hkv] : {std::pair<int64_t, int64_t>{4, 4}, {8, 2}, {16, 2}})
        check_attention(dt, {H, Hkv, head_dim, 16, 0, mixed}, "mixed");
}

TEST(paged_attention_edge_batches_match_cpu) {
  for (DType dt : kDTypes) {
    // Short decodes only: the unsplit decode path.
    check_attention(dt, {8, 2, 128, 16, 0, {{0, 1}, {15, 1}, {32, 1}}}, "short decodes");
    // Odd block sizes, one long decode alone (many splits).
    check_attention(dt, {8, 1, 64, 7, 0, {{4096, 1}}}, "one long decode");
    check_attention(dt, {4, 4, 128, 1, 0, {{3, 5}, {0, 1}}}, "block size 1");
    // Sliding window: partitions wholly outside the window, prefill rows with different firsts.
    check_attention(dt, {8, 2, 64, 16, 50, {{4096, 1}, {0, 90}, {200, 33}}}, "window 50");
  }
}

// ---------------------------------------------------------------------------------------------
// Small kernels

TEST(rmsnorm_residual_matches_cpu) {
  for (DType dt : kDTypes)
    for (int64_t D : {64, 1000, 1001, 4096, 40000})  // 1001: the scalar path; 40000: > 4 vectors a thread
      for (bool with_delta : {false, true}) {
        const int64_t M = 5;
        const float eps = 1e-5f;
        const std::vector<float> x = rounded(dt, random_floats(M * D, -2.0f, 2.0f));
        const std::vector<float> delta = rounded(dt, random_floats(M * D, -2.0f, 2.0f));
        const std::vector<float> weight = rounded(dt, random_floats(D, 0.5f, 1.5f));
        // CPU: x_sum = round(x + delta) (the stored residual), then rmsnorm.
        std::vector<float> x_sum = x;
        if (with_delta)
          for (size_t i = 0; i < x.size(); ++i) x_sum[i] = x[i] + delta[i];
        x_sum = rounded(dt, x_sum);
        const TypedBuffer w(dt, weight);
        std::vector<float> want(static_cast<size_t>(M * D));
        R().rmsnorm(test_pool(), x_sum.data(), w.view(1, D), eps, M, D, want.data());

        auto d_x = upload(bytes_of(dt, x)), d_delta = upload(bytes_of(dt, delta)), d_w = upload(w.bytes);
        DeviceBuffer d_out(static_cast<size_t>(M * D * dtype_size(dt)));
        CHECK_OK(cuda::rmsnorm_residual(d_x->ptr, with_delta ? d_delta->ptr : nullptr, d_w->ptr, eps, M, D, d_out.ptr,
                                        dt, nullptr));
        CHECK(download_f32(*d_x, dt, M * D) == x_sum);
        char what[96];
        std::snprintf(what, sizeof(what), "rmsnorm %s D%lld%s", dtype_name(dt), static_cast<long long>(D),
                      with_delta ? " + residual" : "");
        expect_close(what, download_f32(d_out, dt, M * D), want, kElementwise.of(dt));
      }
}

// cache_write with rope: q and k rotated in place, then the rotated k and v in the pool; against
// the CPU's rope followed by its cache_write.
TEST(rope_matches_cpu_for_every_scaling) {
  for (DType dt : kDTypes)
    for (int64_t head_dim : {64, 128})
      for (RopeScalingType scaling : {RopeScalingType::none, RopeScalingType::linear, RopeScalingType::llama3}) {
        ModelConfig cfg;
        cfg.head_dim = head_dim;
        cfg.rope_theta = 500000.0f;
        cfg.rope_scaling.type = scaling;
        cfg.rope_scaling.factor = scaling == RopeScalingType::linear ? 4.0f : 8.0f;
        const std::vector<float> inv_freq = rope_inv_freq(cfg);
        const int64_t H = 8, Hkv = 2, block_size = 4, num_blocks = 3;
        const std::vector<int32_t> positions = {0, 1, 15, 16, 4095, 4096, 131071};
        const std::vector<int64_t> slots = {5, 0, 11, -1, 2, 7, 8};  // distinct; one padding token
        const int64_t T = static_cast<int64_t>(positions.size());
        std::vector<float> q = rounded(dt, random_floats(T * H * head_dim, -2.0f, 2.0f));
        std::vector<float> k = rounded(dt, random_floats(T * Hkv * head_dim, -2.0f, 2.0f));
        const std::vector<float> v = rounded(dt, random_floats(T * Hkv * head_dim, -2.0f, 2.0f));
        auto d_q = upload(bytes_of(dt, q)), d_k = upload(bytes_of(dt, k)), d_v = upload(bytes_of(dt, v));
        auto d_pos = upload(positions), d_freq = upload(inv_freq), d_slots = upload(slots);
        TestPool cpu_pool(dt, num_blocks, 2, block_size, Hkv, head_dim);
        auto gpu_pool = upload(cpu_pool.bytes);
        R().rope(test_pool(), q.data(), k.data(), positions.data(), T, H, Hkv, head_dim, inv_freq.data(), 1.0f);
        // The CPU writes k as the GPU computed it (the rotation is checked separately below), so
        // that the pool comparison checks placement exactly, rounding aside.
        R().cache_write(test_pool(), rounded(dt, k).data(), v.data(), slots.data(), T, cpu_pool.view, 1);
        cuda::RopeArgs rope;
        rope.q = d_q->ptr;
        rope.positions = d_pos->as<int32_t>();
        rope.inv_freq = d_freq->as<float>();
        rope.num_heads = H;
        KVCacheView view = cpu_pool.view;
        view.data = gpu_pool->ptr;
        CHECK_OK(cuda::cache_write(d_k->ptr, d_v->ptr, d_slots->as<int64_t>(), T, view, 1, nullptr, &rope));
        char what[96];
        std::snprintf(what, sizeof(what), "rope %s D%lld scaling %d (q, k)", dtype_name(dt),
                      static_cast<long long>(head_dim), static_cast<int>(scaling));
        std::vector<float> got = download_f32(*d_q, dt, T * H * head_dim), want = q;
        const std::vector<float> got_k = download_f32(*d_k, dt, T * Hkv * head_dim);
        got.insert(got.end(), got_k.begin(), got_k.end());
        want.insert(want.end(), k.begin(), k.end());
        expect_close(what, got, want, kElementwise.of(dt));
        std::snprintf(what, sizeof(what), "rope %s D%lld scaling %d (pool)", dtype_name(dt),
                      static_cast<long long>(head_dim), static_cast<int>(scaling));
        std::vector<float> want_pool(static_cast<size_t>(cpu_pool.elements()));
        for (int64_t i = 0; i < cpu_pool.elements(); ++i) want_pool[static_cast<size_t>(i)] = static_cast<float>(cpu_pool.get(i));
        expect_close(what, download_f32(*gpu_pool, dt, cpu_pool.elements()), want_pool, kElementwise.of(dt));
        // Rope alone (no slots): q and k rotate, nothing is written.
        auto d_q2 = upload(bytes_of(dt, rounded(dt, random_floats(T * H * head_dim)))), d_pool2 = upload(cpu_pool.bytes);
        rope.q = d_q2->ptr;
        view.data = d_pool2->ptr;
        CHECK_OK(cuda::cache_write(d_k->ptr, d_v->ptr, nullptr, T, view, 1, nullptr, &rope));
        CHECK(download(*d_pool2) == cpu_pool.bytes);
      }
}

TEST(silu_mul_matches_cpu) {
  for (DType dt : kDTypes) {
    const int64_t n = 10007;
    const std::vector<float> gate = rounded(dt, random_floats(n, -8.0f, 8.0f));
    const std::vector<float> up = rounded(dt, random_floats(n, -2.0f, 2.0f));
    std::vector<float> want(static_cast<size_t>(n));
    R().silu_mul(test_pool(), gate.data(), up.data(), want.data(), n);
    auto d_gate = upload(bytes_of(dt, gate)), d_up = upload(bytes_of(dt, up));
    CHECK_OK(cuda::silu_mul(d_gate->ptr, d_up->ptr, d_gate->ptr, n, dt, nullptr));  // out aliases gate
    char what[64];
    std::snprintf(what, sizeof(what), "silu_mul %s", dtype_name(dt));
    expect_close(what, download_f32(*d_gate, dt, n), want, kElementwise.of(dt));
  }
}

TEST(embedding_matches_cpu) {
  for (DType dt : kDTypes) {
    const int64_t vocab = 100, D = 96;
    const TypedBuffer table(dt, random_floats(vocab * D));
    const std::vector<int32_t> ids = {0, 99, 5, 5, 42};
    const int64_t T = static_cast<int64_t>(ids.size());
    std::vector<float> want(static_cast<size_t>(T * D));
    R().embedding(test_pool(), table.view(vocab, D), ids.data(), T, want.data());
    auto d_table = upload(table.bytes), d_ids = upload(ids);
    DeviceBuffer d_out(static_cast<size_t>(T * D * dtype_size(dt)));
    CHECK_OK(cuda::embedding(TensorView{d_table->ptr, dt, vocab, D}, d_ids->as<int32_t>(), T, d_out.ptr, nullptr));
    CHECK(download_f32(d_out, dt, T * D) == want);
  }
}

// The CPU sampler's greedy rule (sampler.cc): NaN counts as -inf, lowest index among ties.
int32_t greedy_reference(const float* x, int64_t n) {
  auto key = [](float v) { return std::isnan(v) ? -INFINITY : v; };
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (key(x[i]) > key(x[best])) best = i;
  return static_cast<int32_t>(best);
}

TEST(argmax_matches_greedy_sampler) {
  for (DType dt : kDTypes) {
    const int64_t M = 4, V = 32003;
    std::vector<float> logits = random_floats(M * V, -10.0f, 10.0f);
    logits[5] = logits[20000] = 50.0f;                          // row 0: a tie, lowest index wins
    for (int64_t v = 0; v < V; ++v) logits[V + v] = NAN;       // row 1: all NaN -> 0
    logits[2 * V + 7] = NAN;                                    // row 2: a NaN next to the max
    logits[2 * V + 8] = 60.0f;
    for (int64_t v = 0; v < V; ++v) logits[3 * V + v] = -INFINITY;  // row 3: all -inf except the last
    logits[3 * V + V - 1] = -1.0f;
    logits = rounded(dt, logits);
    auto d_logits = upload(bytes_of(dt, logits));
    DeviceBuffer d_ids(M * sizeof(int32_t));
    CHECK_OK(cuda::argmax(d_logits->ptr, M, V, dt, d_ids.as<int32_t>(), nullptr));
    const std::vector<uint8_t> got = download(d_ids);
    for (int64_t m = 0; m < M; ++m) {
      int32_t id;
      std::memcpy(&id, got.data() + m * sizeof(int32_t), sizeof(id));
      CHECK_EQ(id, greedy_reference(logits.data() + m * V, V));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// GEMM through cuBLAS

TEST(gemm_matches_cpu_matmul) {
  std::unique_ptr<cuda::CublasGemm> gemm;
  const Status st = cuda::CublasGemm::create(&gemm);
  CHECK_OK(st);
  if (!st.ok()) return;
  std::printf("  cuBLAS: %s\n", gemm->library().c_str());
  struct Shape { int64_t M, N, K; bool bias; };
  for (DType in : kDTypes)
    for (DType out : {in, DType::f32})
      for (const Shape& s : {Shape{1, 2048, 2048, false}, Shape{7, 1000, 64, true}, Shape{33, 512, 2048, true},
                             Shape{300, 96, 200, false}}) {
        if (in == DType::f32 && out != in) continue;  // (f32, f32) once
        const std::vector<float> x = rounded(in, random_floats(s.M * s.K));
        const TypedBuffer w(in, random_floats(s.N * s.K)), bias(in, random_floats(s.N));
        std::vector<float> want(static_cast<size_t>(s.M * s.N));
        const TensorView bias_view = bias.view(1, s.N);
        R().matmul(test_pool(), x.data(), s.M, w.view(s.N, s.K), s.bias ? &bias_view : nullptr, want.data());

        auto d_x = upload(bytes_of(in, x)), d_w = upload(w.bytes), d_b = upload(bias.bytes);
        DeviceBuffer d_y(static_cast<size_t>(s.M * s.N * dtype_size(out)));
        cuda::GemmArgs a;
        a.x = d_x->ptr;
        a.w = d_w->ptr;
        a.bias = s.bias ? d_b->ptr : nullptr;
        a.y = d_y.ptr;
        a.M = s.M;
        a.N = s.N;
        a.K = s.K;
        a.in_dtype = in;
        a.out_dtype = out;
        CHECK_OK(gemm->run(a, nullptr));
        const double bound = out == DType::f32 ? 1e-4 : (out == DType::f16 ? 3e-3 : 2.4e-2);
        char what[96];
        std::snprintf(what, sizeof(what), "gemm %s->%s M%lld N%lld K%lld%s", dtype_name(in), dtype_name(out),
                      static_cast<long long>(s.M), static_cast<long long>(s.N), static_cast<long long>(s.K),
                      s.bias ? " +bias" : "");
        expect_close(what, download_f32(d_y, out, s.M * s.N), want, bound);
      }
}


}  // namespace

int main() { return llm_test::run_all_on_cuda(); }
