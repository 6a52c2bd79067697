// cpu-avx512-bf16.cc: the avx512-bf16 kernel path: the AVX-512 table with the matmul on
// vdpbf16ps (AVX512_BF16), for CPUs that have it and no AMX.
//
// y[M, N] = x[M, K] @ w[N, K]^T (+ bias) on the weights as they are, row-major bf16 (K
// contiguous). x is rounded to bf16 once per call (round to nearest even, |dx| <= 2^-9 |x|,
// as the amx path's one term), into xb[M][Kp], Kp = K rounded up to 32, zero-padded. Both
// operands then run along K, so vdpbf16ps needs no interleaving: lane j of an accumulator sums
// the products of columns 32 c + 2 j and 32 c + 2 j + 1 over the 32-column chunks c, in order; a
// last partial chunk loads w under a mask (the padded x is zero there). Each accumulator is
// summed horizontally once, at the end, then the bias is added.
// Register tile: MB rows of x by NB rows of w, MB x NB accumulators; per chunk MB + NB loads and
// MB x NB vdpbf16ps. Work items are panels of kPanel weight rows (48 KiB at K = 2048: about L1)
// by blocks of kBlockM rows of x, panel-major: a thread's contiguous range streams each panel
// from memory once and reads it again from L1/L2 for the next rows of x. Within an item, each
// MB rows of x meet the panel's weight rows NB at a time over the whole of K (blocking K, with
// the vector accumulators kept in memory between blocks, measured slower on the 1B shapes). At
// M = 1 this is the decode GEMV: every weight byte is read once, by one thread. The first MB
// rows of an item prefetch the next tile's weight rows as they go (the rest find the panel in
// cache). Threads split the items: N, and M where there are more rows than kBlockM.
// Stays true: a row's y does not depend on M or on the other rows of x (every accumulator sees
// the same chunks in the same order from zero, whichever tile shape computes it): preemption and
// disaggregation rely on it (test-kernels-fast). Only x is rounded; bf16 x bf16 products are
// exact in fp32 and sums are fp32 (bounds in test-kernels-fast.cc). Weights that are not bf16
// go to the AVX-512 matmul with x as it is.
// Compiled with the AVX-512 flags and -mavx512bf16 (CMakeLists.txt); called only when
// cpu_isa().avx512_bf16 is set.
#include <immintrin.h>

#include <cstring>

#include "cpu-avx512-simd.h"
#include "cpu-paths.h"
#include "cpu-scratch.h"

namespace llm::cpu {

namespace {

constexpr int kMB = 4;  // 4 x 6 accumulators + 4 x + 1 w registers of 32
constexpr int kNB = 6;
constexpr int kGemvNB = 8;            // M = 1: weight rows per tile
constexpr int64_t kBlockM = 64;       // rows of x per work item
constexpr int64_t kPanel = 12;        // weight rows per work item (a multiple of kNB and of kGemvNB / 2)

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// Rows [m0, m1) of x as bf16 into xb (row stride Kp), columns K .. Kp zero.
void round_rows(const float* x, int64_t K, int64_t Kp, int64_t m0, int64_t m1, uint16_t* xb) {
  for (int64_t m = m0; m < m1; ++m) {
    const float* xr = x + m * K;
    uint16_t* dst = xb + m * Kp;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      const __m512bh h = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(xr + k + 16), _mm512_loadu_ps(xr + k));
      _mm512_storeu_si512(dst + k, reinterpret_cast<__m512i>(h));
    }
    if (k < Kp) {  // the last K % 32 columns and the zero padding
      const int64_t rem = K - k;
      const __mmask16 lo = static_cast<__mmask16>(rem >= 16 ? 0xffff : (1u << rem) - 1);
      const __mmask16 hi = static_cast<__mmask16>(rem <= 16 ? 0 : (1u << (rem - 16)) - 1);
      const __m512bh h = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, xr + k + 16), _mm512_maskz_loadu_ps(lo, xr + k));
      _mm512_storeu_si512(dst + k, reinterpret_cast<__m512i>(h));
    }
  }
}

// y[m, n0 + n] = sum over K of xb[m] w[n0 + n] (+ bias[n]) for m < MB, n < NB; xb rows Kp apart,
// w rows K apart. ahead: prefetch the next NB weight rows, a line of each per chunk (the GEMV).
template <int MB, int NB>
void tile(const uint16_t* xb, int64_t Kp, const uint16_t* w, int64_t K, int64_t n0, const float* bias, float* y,
          int64_t N, bool ahead) {
  __m512 acc[MB][NB];
  for (int m = 0; m < MB; ++m)
    for (int n = 0; n < NB; ++n) acc[m][n] = _mm512_setzero_ps();
  const uint16_t* wr = w + n0 * K;
  const int64_t K_main = K / 32 * 32;
  const char* next = reinterpret_cast<const char*>(wr + NB * K);
  for (int64_t k = 0; k < K_main; k += 32) {
    if (ahead)
      for (int n = 0; n < NB; ++n) _mm_prefetch(next + (n * K + k) * 2, _MM_HINT_T0);
    __m512bh xv[MB];
    for (int m = 0; m < MB; ++m) xv[m] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(xb + m * Kp + k));
    for (int n = 0; n < NB; ++n) {
      const __m512bh wv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(wr + n * K + k));
      for (int m = 0; m < MB; ++m) acc[m][n] = _mm512_dpbf16_ps(acc[m][n], xv[m], wv);
    }
  }
  if (K_main < K) {  // the last K % 32 columns: w under a mask, x zero-padded
    const __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (K - K_main)) - 1);
    __m512bh xv[MB];
    for (int m = 0; m < MB; ++m) xv[m] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(xb + m * Kp + K_main));
    for (int n = 0; n < NB; ++n) {
      const __m512bh wv = reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(mask, wr + n * K + K_main));
      for (int m = 0; m < MB; ++m) acc[m][n] = _mm512_dpbf16_ps(acc[m][n], xv[m], wv);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int n = 0; n < NB; ++n) y[m * N + n0 + n] = _mm512_reduce_add_ps(acc[m][n]) + (bias ? bias[n] : 0.0f);
}

// tile<mb, NB> for a runtime mb in [1, MB].
template <int NB, int MB = kMB>
void tile_rows(int mb, const uint16_t* xb, int64_t Kp, const uint16_t* w, int64_t K, int64_t n0, const float* bias,
               float* y, int64_t N, bool ahead) {
  if (mb == MB) return tile<MB, NB>(xb, Kp, w, K, n0, bias, y, N, ahead);
  if constexpr (MB > 1) tile_rows<NB, MB - 1>(mb, xb, Kp, w, K, n0, bias, y, N, ahead);
}

// tile_rows<nb> for a runtime nb in [1, NB].
template <int NB = kNB>
void tile_cols(int nb, int mb, const uint16_t* xb, int64_t Kp, const uint16_t* w, int64_t K, int64_t n0,
               const float* bias, float* y, int64_t N) {
  if (nb == NB) return tile_rows<NB>(mb, xb, Kp, w, K, n0, bias, y, N, false);
  if constexpr (NB > 1) tile_cols<NB - 1>(nb, mb, xb, Kp, w, K, n0, bias, y, N);
}

void matmul_bf16(ThreadPool& pool, const float* x, int64_t M, const TensorView& w, const TensorView* bias, float* y) {
  if (M <= 0) return;
  if (w.dtype != DType::bf16 || w.layout != Layout::row_major) return matmul_avx512(pool, x, M, w, bias, y);
  const int64_t N = w.rows, K = w.cols, Kp = (K + 31) / 32 * 32;
  thread_local Scratch<uint16_t> xb_buf;
  uint16_t* xb = xb_buf.get(M * Kp);
  if (M * K < (int64_t{1} << 16)) round_rows(x, K, Kp, 0, M, xb);
  else pool.parallel_for(M, [&](int64_t m0, int64_t m1) { round_rows(x, K, Kp, m0, m1, xb); });
  const uint16_t* wd = static_cast<const uint16_t*>(w.data);
  const bool has_bias = bias && bias->present();
  // Panels of kPanel weight rows (at M = 1, 2 kPanel: whole GEMV tiles) by blocks of kBlockM rows
  // of x.
  const int64_t panel = M == 1 ? 2 * kPanel : kPanel;
  const int64_t m_blocks = (M + kBlockM - 1) / kBlockM, panels = (N + panel - 1) / panel;
  pool.parallel_for(panels * m_blocks, [&](int64_t begin, int64_t end) {
    alignas(64) float b[2 * kPanel];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t p0 = item / m_blocks * panel, p1 = min_i64(N, p0 + panel);
      const int64_t m0 = item % m_blocks * kBlockM, m1 = min_i64(M, m0 + kBlockM);
      const float* bp = nullptr;
      if (has_bias) {
        for (int64_t n = p0; n < p1; ++n) b[n - p0] = element_f32(bias->dtype, bias->data, n);
        bp = b;
      }
      if (M == 1) {  // the GEMV: weight rows kGemvNB at a time, the next ones prefetched
        int64_t n = p0;
        for (; n + kGemvNB <= p1; n += kGemvNB)
          tile<1, kGemvNB>(xb, Kp, wd, K, n, bp ? bp + (n - p0) : nullptr, y, N, n + 2 * kGemvNB <= N);
        for (; n < p1; ++n) tile<1, 1>(xb, Kp, wd, K, n, bp ? bp + (n - p0) : nullptr, y, N, false);
        continue;
      }
      for (int64_t m = m0; m < m1; m += kMB) {
        const int mb = static_cast<int>(min_i64(kMB, m1 - m));
        const uint16_t* xm = xb + m * Kp;
        float* ym = y + m * N;
        int64_t n = p0;
        for (; n + kNB <= p1; n += kNB)
          tile_rows<kNB>(mb, xm, Kp, wd, K, n, bp ? bp + (n - p0) : nullptr, ym, N, m == m0 && n + 2 * kNB <= N);
        if (n < p1) tile_cols(static_cast<int>(p1 - n), mb, xm, Kp, wd, K, n, bp ? bp + (n - p0) : nullptr, ym, N);
      }
    }
  });
}

}  // namespace

const CpuKernels& cpu_avx512_bf16_kernels() {
  static const CpuKernels table = [] {
    CpuKernels k = cpu_avx512_kernels();
    k.name = "avx512-bf16";
    k.matmul = matmul_bf16;
    return k;
  }();
  return table;
}

}  // namespace llm::cpu
