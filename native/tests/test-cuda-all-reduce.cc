// test-cuda-all-reduce.cc: the device all-reduce (kernels/cuda/all-reduce.h) on one GPU.
//   - one-shot: 2, 3, 4 and 8 ranks in this process (make_local_ipc_all_reduce_group: the same
//     kernel, flags and slots as between processes, the buffers mapped directly), each on its own
//     stream; sizes from one float to several times the slot (sums in pieces); f32, f16 and bf16
//     results; many calls in a row, so both slots and ranks running a call ahead are exercised.
//     Every rank's result must equal, bit for bit, the host's sum in rank order rounded once.
//   - a rank that never joins: the others' wait gives up when peers_alive says it is gone, within
//     a second, and the method stays broken.
//   - round_to_dtype against the CPU's store_f32.
// Between processes (a GPU per rank, CUDA IPC and NCCL) the engine tests cover it:
// test-cuda-tensor-parallel. Without a usable device: SKIP (exit 77).
#include <cuda_runtime_api.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cuda-test-main.h"
#include "kernels/cuda/all-reduce.h"
#include "kernels/dtype.h"
#include "test-harness.h"

using namespace llm;

namespace {

#define CHECK_CUDA(expr)                                                                      \
  do {                                                                                        \
    const cudaError_t _e = (expr);                                                            \
    if (_e != cudaSuccess) {                                                                  \
      std::printf("  %s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(_e)); \
      CHECK(false);                                                                           \
      return;                                                                                 \
    }                                                                                         \
  } while (0)

// Rank p's part: values of mixed magnitude and sign, so that the order of the sum shows in its bits.
std::vector<float> part_of(int p, int64_t n, uint32_t seed) {
  std::vector<float> x(static_cast<size_t>(n));
  uint32_t s = seed * 2654435761u + static_cast<uint32_t>(p) * 40503u + 1u;
  for (float& v : x) {
    s = s * 1664525u + 1013904223u;
    const float mantissa = static_cast<float>(s >> 8) / 16777216.0f - 0.5f;
    v = std::ldexp(mantissa, static_cast<int>((s >> 3) % 24) - 12);
  }
  return x;
}

// The element bytes of the rank-order sum rounded to `dtype` (dtype.h's store_f32).
std::vector<uint8_t> expected(const std::vector<std::vector<float>>& parts, DType dtype) {
  const size_t n = parts[0].size(), e = static_cast<size_t>(dtype_size(dtype));
  std::vector<uint8_t> out(n * e);
  for (size_t i = 0; i < n; ++i) {
    float s = parts[0][i];
    for (size_t p = 1; p < parts.size(); ++p) s += parts[p][i];
    store_f32(out.data(), dtype, static_cast<int64_t>(i), s);
  }
  return out;
}

struct DeviceBuffer {
  void* p = nullptr;
  explicit DeviceBuffer(size_t bytes) { cudaMalloc(&p, bytes); }
  ~DeviceBuffer() { cudaFree(p); }
};

void check_one_shot(int world, size_t slot_bytes, const std::vector<int64_t>& sizes, int calls) {
  std::vector<std::unique_ptr<cuda::DeviceAllReduce>> ranks;
  const Status made = cuda::make_local_ipc_all_reduce_group(world, slot_bytes, &ranks);
  if (!made.ok()) std::printf("  %s\n", made.message().c_str());
  CHECK(made.ok());
  if (!made.ok()) return;
  std::vector<cudaStream_t> streams(static_cast<size_t>(world));
  for (cudaStream_t& s : streams) CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  int checked = 0, wrong = 0;
  for (int call = 0; call < calls; ++call) {
    const int64_t n = sizes[static_cast<size_t>(call) % sizes.size()];
    const DType dtype = call % 3 == 0 ? DType::f32 : call % 3 == 1 ? DType::bf16 : DType::f16;
    const size_t e = static_cast<size_t>(dtype_size(dtype));
    std::vector<std::vector<float>> parts;
    std::vector<std::unique_ptr<DeviceBuffer>> in, out;
    for (int p = 0; p < world; ++p) {
      parts.push_back(part_of(p, n, static_cast<uint32_t>(call)));
      in.push_back(std::make_unique<DeviceBuffer>(static_cast<size_t>(n) * 4));
      out.push_back(std::make_unique<DeviceBuffer>(static_cast<size_t>(n) * e));
      CHECK_CUDA(cudaMemcpy(in.back()->p, parts.back().data(), static_cast<size_t>(n) * 4, cudaMemcpyHostToDevice));
    }
    CHECK_CUDA(cudaDeviceSynchronize());  // the uploads are done before the ranks' streams read them
    // Every rank's call in flight together, each on its stream, as ranks in processes would be.
    for (int p = 0; p < world; ++p) {
      const Status st = ranks[static_cast<size_t>(p)]->run(static_cast<const float*>(in[static_cast<size_t>(p)]->p), n,
                                                           out[static_cast<size_t>(p)]->p, dtype, streams[static_cast<size_t>(p)]);
      CHECK(st.ok());
      if (!st.ok()) return;
    }
    for (int p = 0; p < world; ++p) {
      const Status st = cuda::wait_for_stream(streams[static_cast<size_t>(p)], {ranks[static_cast<size_t>(p)].get()}, nullptr);
      if (!st.ok()) std::printf("  rank %d: %s\n", p, st.message().c_str());
      CHECK(st.ok());
      if (!st.ok()) return;
    }
    const std::vector<uint8_t> want = expected(parts, dtype);
    for (int p = 0; p < world; ++p) {
      std::vector<uint8_t> got(want.size());
      CHECK_CUDA(cudaMemcpy(got.data(), out[static_cast<size_t>(p)]->p, got.size(), cudaMemcpyDeviceToHost));
      ++checked;
      if (got != want) {
        if (++wrong <= 3) std::printf("  %d ranks, call %d, rank %d, n %lld, %s: not the rank-order sum\n", world, call, p,
                                      static_cast<long long>(n), dtype_name(dtype));
      }
    }
  }
  for (cudaStream_t s : streams) cudaStreamDestroy(s);
  std::printf("  %d ranks (%s): %d results checked, %d wrong\n", world, ranks[0]->describe().c_str(), checked, wrong);
  CHECK(wrong == 0);
}

}  // namespace

TEST(one_shot_gives_every_rank_the_rank_order_sum_bit_for_bit) {
  // A 64 KiB slot holds 16384 floats: the larger sizes go in pieces.
  const std::vector<int64_t> sizes = {1, 7, 512, 4096, 16384, 16385, 100000, 4096 * 8};
  for (int world : {2, 3, 4, 8}) check_one_shot(world, 64 << 10, sizes, 48);
}

TEST(one_shot_with_slots_of_a_decode_step) {
  // Batches of 1..64 rows of a 4096-wide model, in 2 MiB slots, back to back.
  std::vector<int64_t> sizes;
  for (int rows : {1, 2, 8, 32, 64}) sizes.push_back(int64_t{rows} * 4096);
  check_one_shot(2, size_t{2} << 20, sizes, 200);
  check_one_shot(4, size_t{1} << 20, sizes, 100);
}

TEST(a_rank_that_never_joins_is_given_up_on_when_peers_alive_says_so) {
  std::vector<std::unique_ptr<cuda::DeviceAllReduce>> ranks;
  CHECK(cuda::make_local_ipc_all_reduce_group(2, 64 << 10, &ranks).ok());
  if (ranks.size() != 2) return;
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  DeviceBuffer in(4096 * 4), out(4096 * 4);
  CHECK(ranks[0]->run(static_cast<const float*>(in.p), 4096, out.p, DType::f32, stream).ok());  // rank 1 never runs
  const auto t0 = std::chrono::steady_clock::now();
  int asked = 0;
  const Status st = cuda::wait_for_stream(stream, {ranks[0].get()}, [&] {
    return ++asked < 20 ? Status::Ok() : Status(StatusCode::transfer_peer, "rank 1 (pid 4242) exited");
  });
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("  gave up after %.3f s, %d questions: %s\n", took, asked, st.message().c_str());
  CHECK(st.code() == StatusCode::transfer_peer && st.message().find("rank 1") != std::string::npos);
  CHECK(took < 1.0);
  CHECK(cudaStreamQuery(stream) == cudaSuccess);  // the kernel stopped waiting
  CHECK(ranks[0]->run(static_cast<const float*>(in.p), 4096, out.p, DType::f32, stream).code() == StatusCode::transfer_peer);
  cudaStreamDestroy(stream);
}

TEST(round_to_dtype_rounds_like_the_cpu) {
  const int64_t n = 100003;
  const std::vector<float> x = part_of(0, n, 99);
  DeviceBuffer in(static_cast<size_t>(n) * 4), out(static_cast<size_t>(n) * 4);
  CHECK_CUDA(cudaMemcpy(in.p, x.data(), static_cast<size_t>(n) * 4, cudaMemcpyHostToDevice));
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    CHECK(cuda::round_to_dtype(static_cast<const float*>(in.p), n, out.p, dt, nullptr).ok());
    const std::vector<uint8_t> want = expected({x}, dt);
    std::vector<uint8_t> got(want.size());
    CHECK_CUDA(cudaMemcpy(got.data(), out.p, got.size(), cudaMemcpyDeviceToHost));
    CHECK(got == want);
  }
}

int main() { return llm_test::run_all_on_cuda(); }
