// test-kernels-fast.cc: every fast CPU kernel path (avx2, avx512, avx512-bf16, amx, amx-exact, amx-bf16: each forced through
// cpu_kernels_for) against the reference kernels (cpu_reference_kernels()), op by op, on awkward
// shapes, like llama.cpp's test-backend-ops. A path this CPU cannot run is reported and skipped.
//
// Bounds (fast - reference, both on the same inputs already rounded to the dtype under test):
//   matmul, fp32 activations (avx2, avx512; amx for the shapes it hands to avx512)
//                     |d| <= 2e-5 * (sum_k |x_k w_nk| + |b_n|)   (each is within 1e-5 of exact)
//   matmul, amx-exact (x as two bf16 terms hi + lo: |dx| <= 2^-18 |x| = 3.8e-6 |x|)
//                     |d| <= 3e-5 * (sum_k |x_k w_nk| + |b_n|)   (3.8e-6 plus fp32 sums)
//   matmul, amx and amx-bf16 (x as one bf16 term wherever the weight is one AMX runs: bf16,
//   K % 32 == 0, at every M and in every column, also those handed to AVX-512): bf16 rounding of
//   x gives a relative error <= 2^-9 = 1.95e-3 per element, so against the reference on x the
//   error could reach ~2e-3 * sum_k |x_k w_nk|. Rather than that loose bound, these shapes are
//   checked against the reference on x rounded to bf16 (what the kernel multiplies):
//                     |d| <= 3e-5 * (sum_k |x_k w_nk| + |b_n|)
//   and every other shape against the reference on x, with the fp32 bound. A kernel that skips
//   the rounding somewhere (a batch-dependent result) fails as surely as a wrong one.
//   matmul, avx512-bf16 (x as one bf16 term for every bf16 weight, any K: vdpbf16ps): the same
//   check, against the reference on x rounded to bf16, 3e-5; other weights with the fp32 bound.
//   rmsnorm           |d| <= 2e-5          (outputs of magnitude <= ~3)
//   silu_mul          |d| <= 1e-6 * (1 + |ref|)   (vector exp: relative error < 3e-7)
//   paged_attention   |d| <= 2e-5          (outputs are averages of values in [-1, 1])
// And, exactly: on the amx paths a row of the matmul's y is the same bits in any batch of M >= 4;
// on avx512-bf16 in any batch (M >= 1), for every weight dtype.
// Shapes: odd K, N not a multiple of 16/32, M = 1, 3, 4, 32, 33, 70, K and N large enough for
// several of the AMX matmul's weight groups and K chunks; GQA ratios 1, 4, 8; block sizes
// 1, 3, 16; context length 1 and a long one (300 tokens), partial blocks, sliding windows.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <tuple>
#include <vector>

#include "kernel-fixtures.h"
#include "kernels/cpu/cpu-kernels.h"
#include "kernels/cpu/cpu-weights.h"
#include "test-harness.h"

using namespace llm;
using namespace llm::cpu;
using namespace llm_test;

namespace {

const CpuKernels& R() { return cpu_reference_kernels(); }

// The fast paths this CPU runs. Each path, run or skipped, is printed and recorded once (for the
// line `npm test` ends with), so a run on a CPU without AMX says it never tested the amx paths.
std::vector<std::pair<CpuPath, const CpuKernels*>> fast_paths() {
  std::vector<std::pair<CpuPath, const CpuKernels*>> out;
  static bool reported = false;
  if (!reported) record_coverage("path reference", true);
  for (auto [path, name] : {std::pair<CpuPath, const char*>{CpuPath::avx2, "avx2"},
                            {CpuPath::avx512, "avx512"}, {CpuPath::avx512_bf16, "avx512-bf16"}, {CpuPath::amx, "amx"},
                            {CpuPath::amx_exact, "amx-exact"}, {CpuPath::amx_bf16, "amx-bf16"}}) {
    const CpuKernels* k = cpu_kernels_for(path);
    if (k) out.emplace_back(path, k);
    if (reported) continue;
    if (!k) std::printf("  skipped: this CPU cannot run the %s path\n", name);
    record_coverage(std::string("path ") + name, k != nullptr, k ? "" : "this CPU cannot run it");
  }
  reported = true;
  return out;
}

}  // namespace

TEST(dispatch_names_and_forcing) {
  CHECK(cpu_kernels_for(CpuPath::reference) == &cpu_reference_kernels());
  for (auto [path, k] : fast_paths()) {
    CHECK(k->matmul && k->rmsnorm && k->rope && k->silu_mul && k->embedding && k->cache_write && k->paged_attention);
    CHECK(k != &cpu_reference_kernels());
  }
  const CpuKernelInfo info = cpu_kernel_info();
  CHECK(info.path == cpu_kernels().name);
}

TEST(matmul_fast_matches_reference) {
  struct Shape { int64_t M, K, N; };
  const Shape shapes[] = {{1, 1, 1},    {1, 7, 5},    {1, 64, 40},   {3, 96, 33},  {4, 64, 32},   {5, 130, 61},
                          {17, 128, 100}, {33, 64, 70}, {48, 96, 64},  {70, 65, 19}, {70, 256, 96}, {2, 256, 300},
                          // amx: several weight groups and K chunks (the last one partial), M > 32
                          {70, 288, 600}, {33, 160, 544}, {32, 320, 96}, {16, 64, 64},
                          // avx512-bf16: K tails of 1, 16, 17 and 31 columns after whole chunks, a
                          // long K, N past one weight panel, more rows than one block of x
                          {6, 33, 13}, {9, 48, 7}, {2, 81, 25}, {5, 95, 12}, {1, 2048, 40}, {7, 4096, 9},
                          {130, 64, 1100}, {1, 96, 1100}};
  for (auto [path, k] : fast_paths())
    for (DType dt : kDTypes)
      for (const Shape& sh : shapes)
        for (bool with_bias : {false, true}) {
          const std::vector<float> x = random_floats(sh.M * sh.K);
          const TypedBuffer w(dt, random_floats(sh.N * sh.K));
          const TypedBuffer b(dt, random_floats(sh.N));
          const TensorView bias = b.view(1, sh.N);
          const TensorView* bp = with_bias ? &bias : nullptr;
          // amx, amx-bf16 (cpu-amx.cc) and avx512-bf16 (cpu-avx512-bf16.cc) round x to one bf16
          // term for every bf16 weight, whatever its shape.
          const bool one_term =
              (path == CpuPath::amx || path == CpuPath::amx_bf16 || path == CpuPath::avx512_bf16) && dt == DType::bf16;
          const bool two_terms = path == CpuPath::amx_exact;
          std::vector<float> y(static_cast<size_t>(sh.M * sh.N), NAN), y_ref(y), y_ref_bf16(y);
          k->matmul(test_pool(), x.data(), sh.M, w.view(sh.N, sh.K), bp, y.data());
          R().matmul(test_pool(), x.data(), sh.M, w.view(sh.N, sh.K), bp, y_ref.data());
          // One term: the reference on x rounded to bf16 (round to nearest even, as the kernel's
          // vcvtneps2bf16).
          std::vector<float> x_bf16(x);
          for (float& v : x_bf16) v = bf16_to_f32(f32_to_bf16(v));
          if (one_term) R().matmul(test_pool(), x_bf16.data(), sh.M, w.view(sh.N, sh.K), bp, y_ref_bf16.data());
          ErrorTracker err;
          for (int64_t m = 0; m < sh.M; ++m)
            for (int64_t n = 0; n < sh.N; ++n) {
              double mag = with_bias ? std::fabs(b.values[n]) : 0.0;
              for (int64_t i = 0; i < sh.K; ++i) mag += std::fabs(x[m * sh.K + i] * w.values[n * sh.K + i]);
              const size_t at = static_cast<size_t>(m * sh.N + n);
              err.add(y[at], one_term ? y_ref_bf16[at] : y_ref[at], mag + 1e-30);
            }
          const double bound = two_terms || one_term ? 3e-5 : 2e-5;
          if (!(err.worst <= bound))
            std::printf("  matmul %s %s M=%ld K=%ld N=%ld bias=%d: worst relative error %g\n", k->name, dtype_name(dt),
                        (long)sh.M, (long)sh.K, (long)sh.N, with_bias, err.worst);
          CHECK(err.worst <= bound);
        }
}

// The amx paths: a row of y is the same bits whatever the other rows of x and their number
// (M >= 4, where AMX runs: 4..32 rows take the in-place path, more the copied one), so that a
// request's tokens do not depend on the batch it ran in.
TEST(matmul_amx_rows_do_not_depend_on_the_batch) {
  const int64_t K = 288, N = 600, M = 70;
  const std::vector<float> x = random_floats(M * K);
  const TypedBuffer w(DType::bf16, random_floats(N * K));
  for (auto [path, k] : fast_paths()) {
    if (path != CpuPath::amx && path != CpuPath::amx_exact && path != CpuPath::amx_bf16) continue;
    std::vector<float> y_all(static_cast<size_t>(M * N));
    k->matmul(test_pool(), x.data(), M, w.view(N, K), nullptr, y_all.data());
    for (int64_t first : {0, 3})
      for (int64_t rows : {4, 5, 32, 33, 48}) {
        std::vector<float> y(static_cast<size_t>(rows * N));
        k->matmul(test_pool(), x.data() + first * K, rows, w.view(N, K), nullptr, y.data());
        bool same = true;
        for (int64_t i = 0; i < rows * N; ++i) same = same && y[i] == y_all[first * N + i];
        if (!same) std::printf("  %s: rows %ld..%ld differ from the same rows in a batch of %ld\n", k->name,
                               (long)first, (long)(first + rows), (long)M);
        CHECK(same);
      }
  }
}

// avx512-bf16 and avx2 (their own bf16 matmuls on Layout::bf16_pairs, row-major weights packed a
// chunk at a time): a row of y is the same bits whatever the other rows of x and their number
// (from 1 row to more than one block of rows, starting anywhere in the batch), so that a
// request's tokens do not depend on the batch it ran in (preemption and disaggregation recompute
// or move them). For bf16 weights with K a multiple of 32 and not, and for the f32 and f16
// weights they hand to the shared SIMD matmul.
TEST(matmul_bf16_pairs_paths_rows_do_not_depend_on_the_batch) {
  for (CpuPath path : {CpuPath::avx512_bf16, CpuPath::avx2}) {
    const CpuKernels* k = cpu_kernels_for(path);
    if (!k) continue;
    const int64_t M = 140, N = 203;
    for (DType dt : kDTypes)
      for (int64_t K : {288, 100, 1100}) {
        const std::vector<float> x = random_floats(M * K);
        const TypedBuffer w(dt, random_floats(N * K)), b(dt, random_floats(N));
        const TensorView bias = b.view(1, N);
        std::vector<float> y_all(static_cast<size_t>(M * N));
        k->matmul(test_pool(), x.data(), M, w.view(N, K), &bias, y_all.data());
        for (int64_t first : {0, 3, 67})
          for (int64_t rows : {1, 2, 3, 4, 5, 8, 32, 33, 64, 65}) {
            if (first + rows > M) continue;
            std::vector<float> y(static_cast<size_t>(rows * N));
            k->matmul(test_pool(), x.data() + first * K, rows, w.view(N, K), &bias, y.data());
            bool same = true;
            for (int64_t i = 0; i < rows * N; ++i) same = same && y[i] == y_all[first * N + i];
            if (!same)
              std::printf("  %s %s K=%ld: rows %ld..%ld differ from the same rows in a batch of %ld\n", k->name,
                          dtype_name(dt), (long)K, (long)first, (long)(first + rows), (long)M);
            CHECK(same);
          }
        // The same rows among other rows: a batch of the row alone, then between two others.
        std::vector<float> mixed(static_cast<size_t>(3 * K)), y3(static_cast<size_t>(3 * N));
        const std::vector<float> other = random_floats(2 * K);
        std::copy(other.begin(), other.begin() + K, mixed.begin());
        std::copy(x.begin() + 10 * K, x.begin() + 11 * K, mixed.begin() + K);
        std::copy(other.begin() + K, other.end(), mixed.begin() + 2 * K);
        k->matmul(test_pool(), mixed.data(), 3, w.view(N, K), &bias, y3.data());
        bool same = true;
        for (int64_t n = 0; n < N; ++n) same = same && y3[N + n] == y_all[10 * N + n];
        CHECK(same);
      }
  }
}

// Layout::amx_tiles (the CPU runner's weights on the amx paths): pack_amx_tiles puts every
// element where tensor-view.h says, and the amx matmul on the packed weights gives the same bits
// as on the row-major ones, on every route through it: few rows (the AVX-512 GEMV, 1 to 3 rows
// of x at a time), 4..32 rows (tiles in place), more (K chunks, weight groups), N % 32 == 16
// (the AVX-512 tail), with and without a bias, K one tile or several chunks.
TEST(matmul_amx_tiles_layout_gives_the_same_bits) {
  const TensorView not_bf16{nullptr, DType::f32, 16, 32};
  CHECK(!can_pack_amx_tiles(not_bf16));
  for (auto [N, K] : {std::pair<int64_t, int64_t>{16, 32}, {48, 64}, {96, 288}, {592, 544}}) {
    const TypedBuffer w(DType::bf16, random_floats(N * K));
    const TypedBuffer bias(DType::bf16, random_floats(N));
    CHECK(can_pack_amx_tiles(w.view(N, K)));
    CHECK(!can_pack_amx_tiles(w.view(N - 1, K)) && !can_pack_amx_tiles(w.view(N, K - 16)));
    std::vector<uint16_t> packed(static_cast<size_t>(N * K));
    const TensorView wt = pack_amx_tiles(w.view(N, K), packed.data());
    CHECK(wt.layout == Layout::amx_tiles && wt.rows == N && wt.cols == K && wt.data == packed.data());
    const auto* src = static_cast<const uint16_t*>(w.view(N, K).data);
    bool placed = true;
    for (int64_t r = 0; r < N; ++r)
      for (int64_t c = 0; c < K; ++c)
        placed = placed && packed[((r / 16) * (K / 32) + c / 32) * 512 + (r % 16) * 32 + c % 32] == src[r * K + c];
    CHECK(placed);
    for (auto [path, k] : fast_paths()) {
      if (!(k->packed_layout == Layout::amx_tiles)) continue;
      for (int64_t M : {1, 2, 3, 4, 5, 17, 32, 33, 70, 130})
        for (bool with_bias : {false, true}) {
          const std::vector<float> x = random_floats(M * K);
          const TensorView b = bias.view(1, N);
          std::vector<float> y(static_cast<size_t>(M * N)), y_tiles(y.size());
          k->matmul(test_pool(), x.data(), M, w.view(N, K), with_bias ? &b : nullptr, y.data());
          k->matmul(test_pool(), x.data(), M, wt, with_bias ? &b : nullptr, y_tiles.data());
          bool same = true;
          for (size_t i = 0; i < y.size(); ++i) same = same && y[i] == y_tiles[i];
          if (!same)
            std::printf("  %s: M %ld N %ld K %ld bias %d: tiles differ from row-major\n", k->name, (long)M, (long)N,
                        (long)K, (int)with_bias);
          CHECK(same);
        }
    }
  }
}

// Layout::bf16_pairs (the CPU runner's weights on avx512-bf16 and avx2): pack puts every element
// where tensor-view.h says, and the matmul on the packed weights gives the same bits as on the
// row-major ones (which it packs a chunk at a time itself), on every route: the GEMV (one row,
// K in one go on packed weights, in chunks on row-major ones), tiles of 1..4 rows, more rows
// than a work item's block, K in several chunks, N not a whole panel, with and without a bias.
TEST(matmul_bf16_pairs_layout_gives_the_same_bits) {
  for (auto [path, k] : fast_paths()) {
    if (k->packed_layout != Layout::bf16_pairs) continue;
    const TensorView not_bf16{nullptr, DType::f32, 16, 32};
    CHECK(!k->can_pack(not_bf16));
    for (auto [N, K] : {std::pair<int64_t, int64_t>{16, 2}, {48, 64}, {96, 290}, {592, 544}, {112, 1090}}) {
      const TypedBuffer w(DType::bf16, random_floats(N * K));
      const TypedBuffer bias(DType::bf16, random_floats(N));
      CHECK(k->can_pack(w.view(N, K)));
      CHECK(!k->can_pack(w.view(N - 1, K)) && !k->can_pack(w.view(N, K - 1)));
      std::vector<uint16_t> packed(static_cast<size_t>(N * K));
      const TensorView wp = k->pack(w.view(N, K), packed.data());
      CHECK(wp.layout == Layout::bf16_pairs && wp.rows == N && wp.cols == K && wp.data == packed.data());
      const auto* src = static_cast<const uint16_t*>(w.view(N, K).data);
      bool placed = true;
      for (int64_t r = 0; r < N; ++r)
        for (int64_t c = 0; c < K; ++c)
          placed = placed && packed[(r / 16) * 16 * K + (c / 2) * 32 + (r % 16) * 2 + c % 2] == src[r * K + c];
      CHECK(placed);
      for (int64_t M : {1, 2, 3, 4, 5, 17, 32, 33, 70, 130})
        for (bool with_bias : {false, true}) {
          const std::vector<float> x = random_floats(M * K);
          const TensorView b = bias.view(1, N);
          std::vector<float> y(static_cast<size_t>(M * N)), y_packed(y.size());
          k->matmul(test_pool(), x.data(), M, w.view(N, K), with_bias ? &b : nullptr, y.data());
          k->matmul(test_pool(), x.data(), M, wp, with_bias ? &b : nullptr, y_packed.data());
          bool same = true;
          for (size_t i = 0; i < y.size(); ++i) same = same && y[i] == y_packed[i];
          // and each row as a batch of one (the GEMV), against the batch
          if (M > 1)
            for (int64_t m : {int64_t{0}, M - 1}) {
              std::vector<float> y1(static_cast<size_t>(N));
              k->matmul(test_pool(), x.data() + m * K, 1, wp, with_bias ? &b : nullptr, y1.data());
              for (int64_t n = 0; n < N; ++n) same = same && y1[n] == y[m * N + n];
            }
          if (!same)
            std::printf("  %s: M %ld N %ld K %ld bias %d: bf16_pairs differ from row-major or from one row alone\n", k->name,
                        (long)M, (long)N, (long)K, (int)with_bias);
          CHECK(same);
        }
    }
  }
}

// The paths that fuse (CpuFusions): the amx ones and avx512-bf16, each on its own packed layout.
bool fuses(CpuPath path) {
  return path == CpuPath::amx || path == CpuPath::amx_exact || path == CpuPath::amx_bf16 || path == CpuPath::avx512_bf16;
}

// gate_up_silu (a fusing path's MLP half, on its own pack_gate_up layout): the same bits as the
// table's matmul on gate and on up, then its silu_mul, on every route (1..3 rows of x, 4..32, more;
// K in one chunk and in several), with gate values large enough to saturate the sigmoid both ways.
TEST(gate_up_silu_gives_the_same_bits_as_matmul_then_silu) {
  const TypedBuffer g16(DType::bf16, random_floats(48 * 64));
  CHECK(!can_pack_amx_gate_up(g16.view(48, 64), g16.view(48, 64)));  // F % 32 != 0
  CHECK(!can_pack_amx_gate_up(g16.view(32, 64), g16.view(32, 32)));  // shapes differ
  for (auto [F, K] : {std::pair<int64_t, int64_t>{32, 32}, {48, 64}, {64, 96}, {160, 288}, {32, 640}}) {
    const TypedBuffer gate(DType::bf16, random_floats(F * K, -3.0f, 3.0f)), up(DType::bf16, random_floats(F * K));
    for (auto [path, k] : fast_paths()) {
      CHECK((k->fusions != nullptr) == fuses(path));
      if (!k->fusions) continue;
      if (!k->fusions->can_pack_gate_up(gate.view(F, K), up.view(F, K))) {
        CHECK(F % 32 != 0 && k->packed_layout == Layout::amx_tiles);  // amx needs F % 32 == 0; bf16 pairs F % 16
        continue;
      }
      std::vector<uint16_t> packed(static_cast<size_t>(2 * F * K));
      const TensorView w = k->fusions->pack_gate_up(gate.view(F, K), up.view(F, K), packed.data());
      CHECK(w.rows == 2 * F && w.cols == K && w.layout == k->packed_layout);
      for (int64_t M : {1, 2, 3, 4, 5, 32, 33, 70}) {
        const std::vector<float> x = random_floats(M * K, -2.0f, 2.0f);
        std::vector<float> g(static_cast<size_t>(M * F)), u(g.size()), want(g.size()), got(g.size());
        k->matmul(test_pool(), x.data(), M, gate.view(F, K), nullptr, g.data());
        k->matmul(test_pool(), x.data(), M, up.view(F, K), nullptr, u.data());
        k->silu_mul(test_pool(), g.data(), u.data(), want.data(), M * F);
        k->fusions->gate_up_silu(test_pool(), x.data(), M, w, got.data());
        bool same = true;
        for (size_t i = 0; i < got.size(); ++i) same = same && got[i] == want[i];
        if (!same) std::printf("  %s: M %ld F %ld K %ld: gate_up_silu differs\n", k->name, (long)M, (long)F, (long)K);
        CHECK(same);
      }
    }
  }
}

// mlp (a fusing path's whole MLP; on amx, silu(gate) * up handed to down as its bf16 x tiles where
// it can): the same bits as gate_up_silu then matmul, on every route (amx: few rows, D % 32 != 0 or
// an f32 down: the two calls; else the packed hand-over), with down in the path's packed layout or
// row-major or f32, with a bias.
TEST(mlp_gives_the_same_bits_as_gate_up_silu_then_matmul) {
  for (auto [F, K, D] : {std::tuple<int64_t, int64_t, int64_t>{32, 32, 32}, {64, 96, 64}, {160, 288, 96}, {64, 64, 48}}) {
    const TypedBuffer gate(DType::bf16, random_floats(F * K, -3.0f, 3.0f)), up(DType::bf16, random_floats(F * K));
    const std::vector<float> down_values = random_floats(D * F);
    const TypedBuffer down(DType::bf16, down_values), down_f32(DType::f32, down_values), bias(DType::bf16, random_floats(D));
    const TensorView b = bias.view(1, D);
    for (auto [path, k] : fast_paths()) {
      CHECK((k->fusions != nullptr) == fuses(path));
      if (!k->fusions) continue;
      std::vector<uint16_t> packed(static_cast<size_t>(2 * F * K)), down_packed(static_cast<size_t>(D * F));
      const TensorView w = k->fusions->pack_gate_up(gate.view(F, K), up.view(F, K), packed.data());
      CHECK(k->can_pack(down.view(D, F)));
      for (const TensorView& wd : {down.view(D, F), k->pack(down.view(D, F), down_packed.data()), down_f32.view(D, F)})
        for (int64_t M : {1, 3, 4, 5, 32, 33, 70})
          for (const TensorView* bp : {static_cast<const TensorView*>(nullptr), &b}) {
            const std::vector<float> x = random_floats(M * K, -2.0f, 2.0f);
            std::vector<float> h(static_cast<size_t>(M * F)), want(static_cast<size_t>(M * D)), got(want.size());
            k->fusions->gate_up_silu(test_pool(), x.data(), M, w, h.data());
            k->matmul(test_pool(), h.data(), M, wd, bp, want.data());
            std::vector<float> scratch(h.size());
            k->fusions->mlp(test_pool(), x.data(), M, w, wd, bp, scratch.data(), got.data());
            bool same = true;
            for (size_t i = 0; i < got.size(); ++i) same = same && got[i] == want[i];
            if (!same)
              std::printf("  %s: M %ld F %ld K %ld D %ld %s%s: mlp differs\n", k->name, (long)M, (long)F, (long)K, (long)D,
                          wd.layout != Layout::row_major ? "packed" : wd.dtype == DType::f32 ? "f32" : "row-major", bp ? " bias" : "");
            CHECK(same);
          }
    }
  }
}

// matmul_qkv (a fusing path's q, k and v in one pass, on the three packed one after another in
// its layout): the same bits as three matmuls, on every route (1..3 rows of x, 4..32, more).
TEST(matmul_qkv_gives_the_same_bits_as_three_matmuls) {
  for (auto [nq, nkv, K] : {std::tuple<int64_t, int64_t, int64_t>{32, 32, 32}, {128, 32, 96}, {256, 64, 288}, {96, 32, 640}}) {
    const TypedBuffer wq(DType::bf16, random_floats(nq * K)), wk(DType::bf16, random_floats(nkv * K));
    const TypedBuffer wv(DType::bf16, random_floats(nkv * K));
    for (auto [path, k] : fast_paths()) {
      CHECK((k->fusions != nullptr) == fuses(path));
      if (!k->fusions) continue;
      CHECK(k->fusions->can_stack_qkv(wq.view(nq, K), wk.view(nkv, K), wv.view(nkv, K)));
      CHECK(!k->fusions->can_stack_qkv(wq.view(nq, K), wk.view(nkv, K), wv.view(nkv - 16, K)));
      std::vector<uint16_t> packed(static_cast<size_t>((nq + 2 * nkv) * K));
      k->pack(wq.view(nq, K), packed.data());
      k->pack(wk.view(nkv, K), packed.data() + nq * K);
      k->pack(wv.view(nkv, K), packed.data() + (nq + nkv) * K);
      const TensorView w{packed.data(), DType::bf16, nq + 2 * nkv, K, k->packed_layout};
      for (int64_t M : {1, 2, 3, 4, 5, 32, 33, 70}) {
        const std::vector<float> x = random_floats(M * K);
        std::vector<float> q(static_cast<size_t>(M * nq)), kk(static_cast<size_t>(M * nkv)), v(kk.size());
        std::vector<float> q2(q.size()), k2(kk.size()), v2(v.size());
        k->matmul(test_pool(), x.data(), M, wq.view(nq, K), nullptr, q.data());
        k->matmul(test_pool(), x.data(), M, wk.view(nkv, K), nullptr, kk.data());
        k->matmul(test_pool(), x.data(), M, wv.view(nkv, K), nullptr, v.data());
        k->fusions->matmul_qkv(test_pool(), x.data(), M, w, nq, nkv, q2.data(), k2.data(), v2.data());
        const bool same = q == q2 && kk == k2 && v == v2;
        if (!same) std::printf("  %s: M %ld nq %ld nkv %ld K %ld: matmul_qkv differs\n", k->name, (long)M, (long)nq, (long)nkv, (long)K);
        CHECK(same);
      }
    }
  }
}

TEST(rmsnorm_fast_matches_reference) {
  for (auto [path, k] : fast_paths())
    for (DType dt : kDTypes)
      for (auto [M, D] : {std::pair<int64_t, int64_t>{1, 7}, {5, 129}, {3, 2048}, {17, 64}}) {
        const std::vector<float> x = random_floats(M * D, -2.0f, 2.0f);
        const TypedBuffer g(dt, random_floats(D, 0.5f, 1.5f));
        std::vector<float> out(x), out_ref(x.size());
        k->rmsnorm(test_pool(), out.data(), g.view(1, D), 1e-5f, M, D, out.data());  // in place
        R().rmsnorm(test_pool(), x.data(), g.view(1, D), 1e-5f, M, D, out_ref.data());
        ErrorTracker err;
        for (size_t i = 0; i < x.size(); ++i) err.add(out[i], out_ref[i], 1.0);
        CHECK(err.worst <= 2e-5);
      }
}

TEST(silu_mul_fast_matches_reference) {
  for (auto [path, k] : fast_paths())
    for (int64_t n : {0, 1, 15, 1001, 5000}) {
      std::vector<float> gate = random_floats(n, -30.0f, 30.0f);
      const std::vector<float> up = random_floats(n, -2.0f, 2.0f), gate0 = gate;
      if (n > 4) gate[1] = -100.0f, gate[2] = 100.0f, gate[3] = 0.0f;  // saturation and zero
      std::vector<float> ref(static_cast<size_t>(n));
      R().silu_mul(test_pool(), gate.data(), up.data(), ref.data(), n);
      k->silu_mul(test_pool(), gate.data(), up.data(), gate.data(), n);  // out aliases gate
      ErrorTracker err;
      for (int64_t i = 0; i < n; ++i) err.add(gate[i], ref[i], 1.0 + std::fabs(ref[i]));
      CHECK(err.worst <= 1e-6);
    }
}

// One attention batch on a fast path and on the reference; worst |difference|.
double attention_difference(const CpuKernels& k, DType dt, int64_t H, int64_t Hkv, int64_t head_dim,
                            int64_t block_size, int64_t window, const std::vector<SeqSpec>& seqs) {
  const AttentionCase c(dt, H, Hkv, head_dim, block_size, window, seqs);
  const std::vector<float> out = c.run(k), ref = c.run(R());
  ErrorTracker err;
  for (size_t i = 0; i < out.size(); ++i) err.add(out[i], ref[i], 1.0);
  if (!(err.worst <= 2e-5))
    std::printf("  attention %s %s H=%ld Hkv=%ld hd=%ld bs=%ld window=%ld: worst error %g\n", k.name, dtype_name(dt),
                (long)H, (long)Hkv, (long)head_dim, (long)block_size, (long)window, err.worst);
  return err.worst;
}

TEST(paged_attention_fast_matches_reference) {
  // Prefill over a cached prefix, context length 1, a long partial-block decode, a fresh prefill
  // longer than a query tile, a full-block decode, a sequence with no new tokens.
  const std::vector<SeqSpec> mixed = {{13, 5}, {0, 1}, {300, 1}, {0, 40}, {15, 1}, {6, 0}};
  struct Heads { int64_t H, Hkv, head_dim; };
  const Heads heads[] = {{4, 4, 64}, {8, 2, 128}, {8, 1, 64}, {16, 2, 128}};  // GQA 1, 4, 8, 8
  for (auto [path, k] : fast_paths())
    for (DType dt : kDTypes)
      for (const Heads& hc : heads)
        for (int64_t window : {0, 5})
          for (int64_t block_size : {1, 3, 16})
            CHECK(attention_difference(*k, dt, hc.H, hc.Hkv, hc.head_dim, block_size, window, mixed) <= 2e-5);
}

TEST(paged_attention_fast_prefill_chunks_match_reference) {
  // The amx paths run sequences of 16 or more new tokens on AMX tiles (cpu-amx-attention.cc):
  // prefills from position 0 and after a cached prefix, query tiles cut at 16, 33 and 50 rows,
  // decodes and short chunks between them (run on AVX-512), sliding windows shorter and longer
  // than a 32-key chunk.
  const std::vector<SeqSpec> prefills = {{0, 1}, {37, 50}, {0, 16}, {5, 1}, {100, 33}, {3, 15}, {0, 64}};
  struct Heads { int64_t H, Hkv, head_dim; };
  const Heads heads[] = {{4, 4, 64}, {8, 2, 128}, {4, 1, 32}};
  for (auto [path, k] : fast_paths())
    for (const Heads& hc : heads)
      for (int64_t window : {0, 5, 40})
        for (int64_t block_size : {3, 16})
          CHECK(attention_difference(*k, DType::bf16, hc.H, hc.Hkv, hc.head_dim, block_size, window, prefills) <= 2e-5);
  // One sequence on one or two kv heads: fewer (sequence, kv head) units than twice the pool's
  // threads, so the query tiles are split across threads too.
  for (auto [path, k] : fast_paths())
    for (int64_t Hkv : {1, 2})
      for (int64_t window : {0, 40})
        CHECK(attention_difference(*k, DType::bf16, 4, Hkv, 64, 16, window, {{20, 150}}) <= 2e-5);
}

// On the amx paths a token's attention does not depend on the step that computes it: in a whole
// prefill, in a chunk after a cached prefix, in a decode step, alone or next to other sequences,
// its output has the same bits (so that a request served from the prefix cache, preempted and
// recomputed, or batched differently streams the same logprobs:
// test/integration/request-plane.test.ts). The AVX2 / AVX-512 attention does not promise this
// (its few-row and key-major routes sum in different orders).
TEST(paged_attention_amx_rows_do_not_depend_on_the_step) {
  for (auto [path, k] : fast_paths())
    if (k->packed_layout == Layout::amx_tiles)
    for (auto [H, Hkv] : {std::pair<int64_t, int64_t>{8, 2}, {4, 4}})
      for (int64_t window : {0, 21}) {
        const int64_t hd = 64, L = 70;
        const AttentionCase whole(DType::bf16, H, Hkv, hd, 16, window, {{0, L}});
        const std::vector<float> ref = whole.run(*k);
        for (int64_t tail : {1, 3, 9, 40}) {  // the last `tail` tokens as this step's, the rest cached
          for (bool with_other : {false, true}) {
            // This step: the sequence's last `tail` tokens, then (with_other) a 1-token decode of the same
            // sequence's context again as a second sequence, so the batch mixes shapes.
            std::vector<int32_t> qsl{0, static_cast<int32_t>(tail)}, lens{static_cast<int32_t>(L)};
            std::vector<int32_t> tables(whole.tables.begin(), whole.tables.begin() + whole.batch.max_blocks_per_seq);
            if (with_other) {
              qsl.push_back(static_cast<int32_t>(tail + 1));
              lens.push_back(static_cast<int32_t>(L - 30));
              tables.insert(tables.end(), whole.tables.begin(), whole.tables.begin() + whole.batch.max_blocks_per_seq);
            }
            AttentionBatch b = whole.batch;
            b.num_seqs = with_other ? 2 : 1;
            b.query_start_loc = qsl.data();
            b.seq_lens = lens.data();
            b.block_tables = tables.data();
            std::vector<float> q(whole.q.end() - tail * H * hd, whole.q.end());
            if (with_other) q.insert(q.end(), whole.q.begin() + (L - 31) * H * hd, whole.q.begin() + (L - 30) * H * hd);
            std::vector<float> got(q.size(), NAN);
            k->paged_attention(test_pool(), q.data(), whole.pool.view, AttentionCase::kLayer, b, got.data());
            bool same = true;
            for (int64_t i = 0; i < tail * H * hd; ++i) same = same && got[i] == ref[(L - tail) * H * hd + i];
            if (with_other)
              for (int64_t i = 0; i < H * hd; ++i) same = same && got[tail * H * hd + i] == ref[(L - 31) * H * hd + i];
            if (!same)
              std::printf("  %s H=%ld Hkv=%ld window=%ld tail=%ld%s: rows differ from the whole prefill\n", k->name, (long)H,
                          (long)Hkv, (long)window, (long)tail, with_other ? " (+ a decode)" : "");
            CHECK(same);
          }
        }
      }
}

TEST(paged_attention_fast_odd_head_dim_falls_back) {
  for (auto [path, k] : fast_paths())
    CHECK(attention_difference(*k, DType::bf16, 4, 2, 36, 4, 0, {{5, 3}, {0, 1}}) <= 2e-5);
}

int main() { return llm_test::run_all(); }
