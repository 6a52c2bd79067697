// bench-cuda-kernels.cc: GPU kernel benchmark (a CMake target, not a test; gpu-check.sh runs it).
//
// Prints, for the device it runs on:
//   - device bandwidth: cudaMemcpy device-to-device of 1 GiB, counted as bytes read + written;
//   - decode attention (bf16 pool, block_size 16, a scattered block table): K/V bytes read + q
//     and out, per second, and that as a fraction of the measured bandwidth (issue 7's target is
//     >= 0.70 at batch 32, context 4096, Llama-3.1-8B's attention shape);
//   - prefill attention: one 2048-token prompt, causal, TFLOP/s (4 * heads * head_dim per
//     query-key pair);
//   - GEMM bf16 -> bf16 through cuBLAS, Llama-3.2-1B's projections (hidden 2048, intermediate
//     8192, 32 heads, 8 kv heads, head_dim 64) at decode (M = 1, 32, 64) and prefill (M = 2048)
//     sizes: TFLOP/s, and for decode the weight bytes per second as a fraction of the bandwidth.
//   - the one-shot all-reduce (all-reduce.h) with 2 and 4 ranks as streams of this process on
//     this GPU (every part read from this GPU's memory, not over NVLink: a lower bound on its
//     fixed costs, not a figure for ranks on separate GPUs), fp32 parts to a bf16 sum, for 16 KiB,
//     256 KiB and 4 MiB of parts, against a D2D memcpy of the same bytes.
// Timings: CUDA events around 20-50 back-to-back launches after 3 warm-up launches (the
// all-reduce: the host clock around 200 calls of every rank).
// Without a usable device it prints "SKIP: no CUDA device (reason)" and exits 0.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <chrono>

#include "kernels/cuda/all-reduce.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/paged-attention.h"

using namespace llm;

namespace {

constexpr cuda::AttentionVariant kAttentionVariants[] = {
    cuda::AttentionVariant::fast, cuda::AttentionVariant::pipelined_tiles, cuda::AttentionVariant::plain_tiles};

void die(const std::string& what) {
  std::fprintf(stderr, "bench-cuda-kernels: %s\n", what.c_str());
  std::exit(1);
}
void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) die(std::string(what) + ": " + cudaGetErrorString(e));
}
void check(const Status& st, const char* what) {
  if (!st.ok()) die(std::string(what) + ": " + st.message());
}

struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(size_t bytes) {
    check(cudaMalloc(&ptr, std::max<size_t>(bytes, 1)), "cudaMalloc");
    check(cudaMemset(ptr, 0, std::max<size_t>(bytes, 1)), "cudaMemset");
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
};

template <typename T>
std::unique_ptr<DeviceBuffer> upload(const std::vector<T>& v) {
  auto d = std::make_unique<DeviceBuffer>(v.size() * sizeof(T));
  check(cudaMemcpy(d->ptr, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
  return d;
}

// Mean milliseconds per call of f over `iters` calls, after 3 warm-up calls.
double time_ms(const std::function<void()>& f, int iters) {
  for (int i = 0; i < 3; ++i) f();
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  check(cudaEventRecord(start), "event");
  for (int i = 0; i < iters; ++i) f();
  check(cudaEventRecord(stop), "event");
  check(cudaEventSynchronize(stop), "sync");
  float ms = 0.0f;
  check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
  check(cudaGetLastError(), "kernel");
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms / iters;
}

// Microseconds per all-reduce of `bytes` of fp32 parts over `world` ranks as streams of this
// process (one-shot, bf16 result), every rank's call of a round in flight together.
double time_one_shot_us(int world, size_t bytes) {
  std::vector<std::unique_ptr<cuda::DeviceAllReduce>> ranks;
  check(cuda::make_local_ipc_all_reduce_group(world, std::max<size_t>(bytes, size_t{2} << 20), &ranks), "one-shot group");
  const int64_t n = static_cast<int64_t>(bytes / 4);
  std::vector<cudaStream_t> streams(static_cast<size_t>(world));
  std::vector<std::unique_ptr<DeviceBuffer>> in, out;
  for (cudaStream_t& st : streams) check(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "stream");
  for (int p = 0; p < world; ++p) {
    in.push_back(std::make_unique<DeviceBuffer>(bytes));
    out.push_back(std::make_unique<DeviceBuffer>(bytes / 2));
  }
  auto round = [&] {
    for (int p = 0; p < world; ++p)
      check(ranks[static_cast<size_t>(p)]->run(static_cast<const float*>(in[static_cast<size_t>(p)]->ptr), n,
                                               out[static_cast<size_t>(p)]->ptr, DType::bf16, streams[static_cast<size_t>(p)]),
            "one-shot");
  };
  for (int i = 0; i < 10; ++i) round();
  check(cudaDeviceSynchronize(), "sync");
  constexpr int kRounds = 200;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kRounds; ++i) round();
  check(cudaDeviceSynchronize(), "sync");
  const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / kRounds;
  for (int p = 0; p < world; ++p) check(ranks[static_cast<size_t>(p)]->error(), "one-shot");
  for (cudaStream_t st : streams) cudaStreamDestroy(st);
  return us;
}

double measure_bandwidth() {
  const size_t bytes = size_t{1} << 30;
  DeviceBuffer a(bytes), b(bytes);
  const double ms = time_ms([&] { check(cudaMemcpyAsync(b.ptr, a.ptr, bytes, cudaMemcpyDeviceToDevice), "copy"); }, 20);
  return 2.0 * static_cast<double>(bytes) / (ms * 1e-3);
}

struct AttentionRun {
  const char* label;
  int64_t num_seqs, cached, new_tokens, H, Hkv, head_dim;
};

// Seconds per call of paged_attention for num_seqs sequences of `cached` + `new_tokens` tokens.
double time_attention(const AttentionRun& r) {
  const int64_t block_size = 16, seq_len = r.cached + r.new_tokens;
  const int64_t blocks_per_seq = (seq_len + block_size - 1) / block_size;
  const int64_t num_blocks = r.num_seqs * blocks_per_seq;
  KVCacheView cache{nullptr, DType::bf16, num_blocks, 1, block_size, r.Hkv, r.head_dim};
  DeviceBuffer pool(static_cast<size_t>(num_blocks * cache.block_bytes()));
  cache.data = pool.ptr;
  // A scattered block table: block i of the pool goes to slot (i * 7919) % num_blocks.
  std::vector<int32_t> tables(static_cast<size_t>(num_blocks));
  for (int64_t i = 0; i < num_blocks; ++i) tables[(i * 7919) % num_blocks] = static_cast<int32_t>(i);
  std::vector<int32_t> qsl(1, 0), seq_lens;
  for (int64_t s = 0; s < r.num_seqs; ++s) {
    qsl.push_back(static_cast<int32_t>(qsl.back() + r.new_tokens));
    seq_lens.push_back(static_cast<int32_t>(seq_len));
  }
  auto d_tables = upload(tables), d_qsl = upload(qsl), d_seq_lens = upload(seq_lens);
  const int64_t T = qsl.back();
  DeviceBuffer q(static_cast<size_t>(T * r.H * r.head_dim * 2)), out(static_cast<size_t>(T * r.H * r.head_dim * 2));
  cuda::AttentionBatch b;
  b.num_seqs = r.num_seqs;
  b.query_start_loc = static_cast<const int32_t*>(d_qsl->ptr);
  b.seq_lens = static_cast<const int32_t*>(d_seq_lens->ptr);
  b.block_tables = static_cast<const int32_t*>(d_tables->ptr);
  b.max_blocks_per_seq = blocks_per_seq;
  b.num_heads = r.H;
  b.scale = 1.0f / std::sqrt(static_cast<float>(r.head_dim));
  b.num_tokens = T;
  b.max_query_len = r.new_tokens;
  b.max_seq_len = seq_len;
  const size_t ws_bytes = cuda::paged_attention_workspace_bytes(b, cache);
  DeviceBuffer ws(ws_bytes);
  const double ms = time_ms([&] { check(cuda::paged_attention(q.ptr, cache, 0, b, out.ptr, ws.ptr, ws_bytes, nullptr),
                                        "paged_attention"); }, r.new_tokens > 1 ? 10 : 50);
  return ms * 1e-3;
}

}  // namespace

int main() {
  cuda::DeviceInfo info;
  const Status st = cuda::probe_device(&info);
  if (!st.ok()) {
    std::printf("SKIP: no CUDA device (%s)\n", st.message().c_str());
    return 0;
  }
  std::printf("device: %s\n", info.describe().c_str());
  const double bw = measure_bandwidth();
  std::printf("bandwidth (memcpy D2D, read + write): %.0f GB/s\n\n", bw / 1e9);

  std::printf("decode attention, bf16 KV, block_size 16:\n");
  for (const AttentionRun& r : {AttentionRun{"Llama-3.1-8B  batch 32 ctx 4096", 32, 4095, 1, 32, 8, 128},
                                AttentionRun{"Llama-3.1-8B  batch 1  ctx 4096", 1, 4095, 1, 32, 8, 128},
                                AttentionRun{"Llama-3.1-8B  batch 64 ctx 1024", 64, 1023, 1, 32, 8, 128},
                                AttentionRun{"Llama-3.2-1B  batch 32 ctx 4096", 32, 4095, 1, 32, 8, 64}}) {
    for (cuda::AttentionVariant variant : kAttentionVariants) {
      cuda::set_attention_variant(variant);
      const double s = time_attention(r);
      const double kv_bytes = 2.0 * r.num_seqs * (r.cached + 1) * r.Hkv * r.head_dim * 2;
      const double io_bytes = 2.0 * r.num_seqs * r.H * r.head_dim * 2;  // q + out
      const double achieved = (kv_bytes + io_bytes) / s;
      std::printf("  %-34s %-11s %8.1f us  %6.0f GB/s  fraction %.2f\n", r.label, cuda::attention_variant_name(variant),
                  s * 1e6, achieved / 1e9, achieved / bw);
    }
  }
  cuda::set_attention_variant(cuda::AttentionVariant::fast);

  std::printf("\nfast decode kernel, blocks per SM the context is split for (default 2):\n");
  for (int64_t per_sm : {2, 4, 8, 16}) {
    cuda::set_decode_blocks_per_sm(per_sm);
    for (const AttentionRun& r : {AttentionRun{"Llama-3.1-8B  batch 32 ctx 4096", 32, 4095, 1, 32, 8, 128},
                                  AttentionRun{"Llama-3.1-8B  batch 1  ctx 4096", 1, 4095, 1, 32, 8, 128}}) {
      const double s = time_attention(r);
      const double bytes = 2.0 * r.num_seqs * (r.cached + 1) * r.Hkv * r.head_dim * 2 + 2.0 * r.num_seqs * r.H * r.head_dim * 2;
      std::printf("  %-34s %2lld/SM %8.1f us  fraction %.2f\n", r.label, static_cast<long long>(per_sm), s * 1e6,
                  bytes / s / bw);
    }
  }
  cuda::set_decode_blocks_per_sm(2);

  std::printf("\nprefill attention, bf16, one prompt:\n");
  for (const AttentionRun& r : {AttentionRun{"Llama-3.1-8B  2048 tokens", 1, 0, 2048, 32, 8, 128},
                                AttentionRun{"Llama-3.2-1B  2048 tokens", 1, 0, 2048, 32, 8, 64}}) {
    for (cuda::AttentionVariant variant : kAttentionVariants) {
      cuda::set_attention_variant(variant);
      const double s = time_attention(r);
      const double pairs = static_cast<double>(r.new_tokens) * (r.new_tokens + 1) / 2;
      std::printf("  %-34s %-11s %8.1f us  %6.1f TFLOP/s\n", r.label, cuda::attention_variant_name(variant), s * 1e6,
                  4.0 * r.H * r.head_dim * pairs / s / 1e12);
    }
  }
  cuda::set_attention_variant(cuda::AttentionVariant::fast);

  std::unique_ptr<cuda::CublasGemm> gemm;
  check(cuda::CublasGemm::create(&gemm), "cuBLAS");
  std::printf("\nGEMM bf16 (cuBLAS %s), Llama-3.2-1B projections, y[M, N] = x[M, K] w[N, K]^T:\n",
              gemm->library().c_str());
  struct Proj { const char* name; int64_t N, K; };
  for (const Proj& p : {Proj{"qkv     N 3072 K 2048", 3072, 2048}, Proj{"o       N 2048 K 2048", 2048, 2048},
                        Proj{"gate_up N 16384 K 2048", 16384, 2048}, Proj{"down    N 2048 K 8192", 2048, 8192},
                        Proj{"lm_head N 128256 K 2048", 128256, 2048}})
    for (int64_t M : {1, 32, 64, 2048}) {
      DeviceBuffer x(static_cast<size_t>(M * p.K * 2)), w(static_cast<size_t>(p.N * p.K * 2)),
          y(static_cast<size_t>(M * p.N * 2));
      cuda::GemmArgs a;
      a.x = x.ptr;
      a.w = w.ptr;
      a.y = y.ptr;
      a.M = M;
      a.N = p.N;
      a.K = p.K;
      const double s = time_ms([&] { check(gemm->run(a, nullptr), "gemm"); }, 20) * 1e-3;
      const double tflops = 2.0 * M * p.N * p.K / s / 1e12;
      const double bytes = 2.0 * (p.N * p.K + M * p.K + M * p.N);
      std::printf("  %-24s M %5lld %8.1f us  %6.1f TFLOP/s  %6.0f GB/s (fraction %.2f)\n", p.name,
                  static_cast<long long>(M), s * 1e6, tflops, bytes / s / 1e9, bytes / s / bw);
    }

  std::printf("\none-shot all-reduce, ranks as streams on this GPU, fp32 parts -> bf16 sum:\n");
  for (size_t bytes : {size_t{16} << 10, size_t{256} << 10, size_t{4} << 20}) {
    DeviceBuffer a(bytes), b(bytes);
    const double copy_us = time_ms([&] { check(cudaMemcpyAsync(b.ptr, a.ptr, bytes, cudaMemcpyDeviceToDevice), "copy"); }, 50) * 1e3;
    for (int world : {2, 4})
      std::printf("  %5zu KiB  %d ranks %8.1f us   (memcpy D2D of the same bytes %6.1f us)\n", bytes >> 10, world,
                  time_one_shot_us(world, bytes), copy_us);
  }

  return 0;
}
