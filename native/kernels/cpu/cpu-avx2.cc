// cpu-avx2.cc: the AVX2 kernel path (the baseline fast path): cpu-simd-kernels.h over 8-lane
// fp32 vectors, and for bf16 weights a matmul of its own on fp32 FMAs.
//
// The bf16 matmul: y[M, N] = x[M, K] @ w[N, K]^T (+ bias) with x and every sum in fp32, on
// weights in Layout::bf16_pairs (tensor-view.h): per pair of K columns, 16 weight rows in 64
// bytes, each half (8 rows) one 32-byte load widened to fp32 in registers (even column: a shift;
// odd: a mask), 8 output columns in the lanes, x[m][k] broadcast. Register tile: kMB rows of x
// by the 16 rows of one block (2 x kMB accumulators); per column of K, 2 widenings, kMB
// broadcasts and 2 kMB FMAs. The CPU runner converts its weights at load (pack_pairs); row-major
// bf16 weights are converted here a chunk of a panel at a time into a per-thread buffer (at one
// row of x: transposed in registers, gemv_rows), so both layouts give the same bits. Work items
// are panels of kPanel blocks by kBlockM rows of x; K goes in chunks of kChunk pairs, each
// chunk's weights read from memory once (packed ones prefetched into L2 a chunk ahead), the sums
// kept in a per-thread fp32 buffer between chunks (exact). At M = 1 on packed weights the chunk
// is all of K.
// Stays true: y[m, n] is the fp32 sum over k = 0, 1, ... in order, from zero, of x[m][k] w[n][k]
// (one FMA each), then + bias[n]: it does not depend on M, on the other rows of x, on the tile or
// chunk, or on the layout (test-kernels-fast). f32 and f16 weights go to the shared SIMD matmul.
// Compiled with -mavx2 -mfma -mf16c (CMakeLists.txt); the dispatch calls into it only when
// cpu_isa().avx2 is set.
#include <immintrin.h>

#include "cpu-simd-kernels.h"
#include "cpu-paths.h"
#include "cpu-scratch.h"
#include "cpu-weights.h"

namespace llm::cpu {

namespace {

struct Avx2 {
  using V = __m256;
  using M = __m256;
  static constexpr int W = 8;
  static constexpr int kMB = 2;  // 2 x 4 accumulators + 4 weight + 2 input registers of 16
  static constexpr int kNB = 4;

  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float a) { return _mm256_set1_ps(a); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static float hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  static float hmax(V v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
  }
  static V round(V v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V pow2n(V n) {
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
  static M lt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static V select(M m, V a, V b) { return _mm256_blendv_ps(b, a, m); }
  static V iota() { return _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7); }
  static V load_bf16(const uint16_t* p) {
    const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
  }
  static V load_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  // Round to nearest even like f32_to_bf16 (dtype.h), NaN kept quiet.
  static void store_bf16(uint16_t* p, V v) {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
    r = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(quiet),
                                             _mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
  }
  static void store_f16(uint16_t* p, V v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};


// ---------------------------------------------------------------------------------------------
// The bf16 matmul (see the top of the file).

constexpr int kMB = 5;              // 5 x 2 accumulators + 2 weight + 1 x + 1 mask registers of 16
constexpr int64_t kPanel = 4;       // blocks of 16 weight rows per work item
constexpr int64_t kBlockM = 64;     // rows of x per work item
constexpr int64_t kChunk = 256;     // pairs of K columns per chunk: a panel's is 64 KiB

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// The 8 x 8 transpose of 32-bit elements: r[e] = element e of the rows r[0..7].
inline void transpose8(__m256i (&r)[8]) {
  __m256i t[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  __m256i u[8];
  for (int i = 0; i < 2; ++i) {
    u[4 * i] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x20);
    r[4 + j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x31);
  }
}

// Pairs [p0, p1) of blocks [b0, b1) of row-major w (N x K bf16) in Layout::bf16_pairs order into
// out (block stride 32 (p1 - p0)); p0 a multiple of 8. Rows past N and the column past an odd K
// are zero. 8 pairs of 8 rows at a time: 8 loads, one transpose of their 32-bit pairs.
void pack_blocks(const uint16_t* w, int64_t N, int64_t K, int64_t b0, int64_t b1, int64_t p0, int64_t p1,
                 uint16_t* out) {
  for (int64_t b = b0; b < b1; ++b) {
    uint16_t* dst = out + (b - b0) * 32 * (p1 - p0);
    for (int64_t half = 0; half < 2; ++half) {
      const int64_t r0 = b * 16 + half * 8, live = min_i64(8, N - r0);
      for (int64_t p = p0; p < p1; p += 8) {
        const int64_t cols = min_i64(16, K - 2 * p);
        __m256i r[8];
        for (int64_t i = 0; i < 8; ++i) {
          if (i >= live) {
            r[i] = _mm256_setzero_si256();
          } else if (cols == 16) {
            r[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + (r0 + i) * K + 2 * p));
          } else {
            alignas(32) uint16_t tail[16] = {};
            for (int64_t c = 0; c < cols; ++c) tail[c] = w[(r0 + i) * K + 2 * p + c];
            r[i] = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
          }
        }
        transpose8(r);
        const int64_t n = min_i64(8, p1 - p);
        for (int64_t e = 0; e < n; ++e)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (p - p0 + e) * 32 + half * 16), r[e]);
      }
    }
  }
}

// A tile's work: rows of x (row stride K) over the pairs [p0, p1) of P; its weight block in
// Layout::bf16_pairs order from pair p0 (w, 32 elements a pair); where its sums wait between
// chunks (part: 16 floats a row of x); y (row stride N; the block's columns from col0) and the
// bias of those columns (nullptr: none).
struct Tile {
  const float* x;
  int64_t K, p0, p1, P;
  const uint16_t* w;
  float* part;
  float* y;
  int64_t N, col0;
  const float* bias;
};

// y[m][col0 + 8 H + i] = acc[m][H] lane i + bias, for the columns before N.
template <int MB, int H>
inline void store_half(const Tile& t, const __m256 (&acc)[MB][2]) {
  const int64_t c = t.col0 + H * 8, live = min_i64(8, t.N - c);
  if (live <= 0) return;
  const __m256 b = t.bias ? _mm256_loadu_ps(t.bias + H * 8) : _mm256_setzero_ps();
  #pragma GCC unroll 16
  for (int m = 0; m < MB; ++m) {
    const __m256 v = _mm256_add_ps(acc[m][H], b);
    if (live == 8) {
      _mm256_storeu_ps(t.y + m * t.N + c, v);
    } else {
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, v);
      for (int64_t i = 0; i < live; ++i) t.y[m * t.N + c + i] = tmp[i];
    }
  }
}

// acc[m] (+)= x rows m < MB times the block over the tile's pairs; then to part (not the last
// chunk) or to y + bias (columns past N not written). Output lanes: acc[m][h] holds the block's
// rows 8 h .. 8 h + 7.
template <int MB>
void run_tile(const Tile& t) {
  __m256 acc[MB][2];
  #pragma GCC unroll 16
  for (int m = 0; m < MB; ++m)
    #pragma GCC unroll 16
    for (int h = 0; h < 2; ++h) acc[m][h] = t.p0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(t.part + m * 16 + h * 8);
  const __m256i odd = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  const int64_t full = min_i64(t.p1, t.K / 2);  // pairs whose both columns exist
  // Walked by pointer (the weights 32 elements a pair, x 2 floats), so that the loop's only
  // scalar work is two adds and the compare: rows of x at fixed multiples of K from xp.
  const uint16_t* wp = t.w;
  const float* xp = t.x + 2 * t.p0;
  const float* const wend = reinterpret_cast<const float*>(t.w + (full - t.p0) * 32);
  const int64_t K = t.K;
  for (; reinterpret_cast<const float*>(wp) < wend; wp += 32, xp += 2) {
    const __m256i raw0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp));
    const __m256i raw1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 16));
    const __m256 e0 = _mm256_castsi256_ps(_mm256_slli_epi32(raw0, 16));
    const __m256 e1 = _mm256_castsi256_ps(_mm256_slli_epi32(raw1, 16));
    #pragma GCC unroll 16
    for (int m = 0; m < MB; ++m) {
      const __m256 xv = _mm256_broadcast_ss(xp + m * K);
      acc[m][0] = _mm256_fmadd_ps(xv, e0, acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(xv, e1, acc[m][1]);
    }
    const __m256 o0 = _mm256_castsi256_ps(_mm256_and_si256(raw0, odd));
    const __m256 o1 = _mm256_castsi256_ps(_mm256_and_si256(raw1, odd));
    #pragma GCC unroll 16
    for (int m = 0; m < MB; ++m) {
      const __m256 xv = _mm256_broadcast_ss(xp + m * K + 1);
      acc[m][0] = _mm256_fmadd_ps(xv, o0, acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(xv, o1, acc[m][1]);
    }
  }
  if (full < t.p1) {  // an odd K's last column
    const uint16_t* wp = t.w + (full - t.p0) * 32;
    #pragma GCC unroll 16
    for (int h = 0; h < 2; ++h) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + h * 16));
      const __m256 e = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
      #pragma GCC unroll 16
      for (int m = 0; m < MB; ++m) acc[m][h] = _mm256_fmadd_ps(_mm256_broadcast_ss(t.x + m * t.K + 2 * full), e, acc[m][h]);
    }
  }
  if (t.p1 < t.P) {
    #pragma GCC unroll 16
    for (int m = 0; m < MB; ++m)
      #pragma GCC unroll 16
      for (int h = 0; h < 2; ++h) _mm256_storeu_ps(t.part + m * 16 + h * 8, acc[m][h]);
    return;
  }
  // Constant indices only, so that acc stays in registers (GCC keeps an array it cannot index at
  // compile time in memory, and stores it back every pair).
  store_half<MB, 0>(t, acc);
  store_half<MB, 1>(t, acc);
}

template <int MB = kMB>
void run_tile_rows(int mb, const Tile& t) {
  if (mb == MB) return run_tile<MB>(t);
  if constexpr (MB > 1) run_tile_rows<MB - 1>(mb, t);
}

// The GEMV on row-major weights: y[n] for the NB blocks of 16 rows from block b (+ bias, columns
// past N not written), each 8 pairs of 8 rows loaded and transposed in registers into
// Layout::bf16_pairs order and summed at once: the same FMAs in the same order as run_tile<1> on
// packed weights, with no copy of the weights. Each row's next lines are prefetched (a row is a
// stream of its own, and the hardware prefetcher stops at page ends).
template <int NB>
void gemv_rows(const float* x, const uint16_t* w, int64_t N, int64_t K, int64_t b, const float* bias, float* y) {
  const int64_t P = (K + 1) / 2, full = K / 2;
  const __m256i odd = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  __m256 acc[NB][2];
  for (int n = 0; n < NB; ++n) acc[n][0] = acc[n][1] = _mm256_setzero_ps();
  for (int64_t p = 0; p < P; p += 8) {
    const int64_t cols = min_i64(16, K - 2 * p), count = min_i64(8, P - p);
    for (int n = 0; n < NB; ++n)
      for (int h = 0; h < 2; ++h) {
        const int64_t r0 = (b + n) * 16 + h * 8, live = min_i64(8, N - r0);
        __m256i r[8];
        for (int64_t i = 0; i < 8; ++i) {
          const uint16_t* row = w + (r0 + i) * K + 2 * p;
          if (i >= live) {
            r[i] = _mm256_setzero_si256();
          } else if (cols == 16) {
            _mm_prefetch(reinterpret_cast<const char*>(row) + 128, _MM_HINT_T0);
            r[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row));
          } else {
            alignas(32) uint16_t tail[16] = {};
            for (int64_t c = 0; c < cols; ++c) tail[c] = row[c];
            r[i] = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
          }
        }
        transpose8(r);
        for (int64_t e = 0; e < count; ++e) {
          const int64_t k = 2 * (p + e);
          acc[n][h] = _mm256_fmadd_ps(_mm256_broadcast_ss(x + k), _mm256_castsi256_ps(_mm256_slli_epi32(r[e], 16)), acc[n][h]);
          if (p + e < full)
            acc[n][h] = _mm256_fmadd_ps(_mm256_broadcast_ss(x + k + 1), _mm256_castsi256_ps(_mm256_and_si256(r[e], odd)), acc[n][h]);
        }
      }
  }
  for (int n = 0; n < NB; ++n) {
    const Tile t{x, K, 0, P, P, nullptr, nullptr, y, N, (b + n) * 16, bias ? bias + n * 16 : nullptr};
    const __m256 a[1][2] = {{acc[n][0], acc[n][1]}};
    store_half<1, 0>(t, a);
    store_half<1, 1>(t, a);
  }
}

void matmul_bf16(ThreadPool& pool, const float* x, int64_t M, const TensorView& w, const TensorView* bias, float* y) {
  if (M <= 0) return;
  const bool pairs = w.layout == Layout::bf16_pairs;
  if (w.dtype != DType::bf16 || (w.layout != Layout::row_major && !pairs))
    return SimdKernels<Avx2>::matmul(pool, x, M, w, bias, y);
  const int64_t N = w.rows, K = w.cols;
  const int64_t P = (K + 1) / 2, bs = 32 * P;  // pairs; block stride in elements
  const uint16_t* wd = static_cast<const uint16_t*>(w.data);
  const bool has_bias = bias && bias->present();
  const int64_t blocks = (N + 15) / 16;
  // At M = 1 the weights stream once in long runs: packed ones a whole block's K at a time,
  // row-major ones two blocks at a time through gemv_rows.
  const int64_t panel = M == 1 ? (pairs ? 1 : 2) : kPanel;
  const int64_t chunk = M == 1 && pairs ? P : kChunk;
  const int64_t m_blocks = (M + kBlockM - 1) / kBlockM, panels = (blocks + panel - 1) / panel;
  pool.parallel_for(panels * m_blocks, [&](int64_t begin, int64_t end) {
    thread_local Scratch<uint16_t> chunk_buf;
    thread_local Scratch<float> part_buf;
    float* part = P > chunk ? part_buf.get(kBlockM * kPanel * 16) : nullptr;
    alignas(32) float b[kPanel * 16];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b0 = item / m_blocks * panel, b1 = min_i64(blocks, b0 + panel);
      const int64_t m0 = item % m_blocks * kBlockM, m1 = min_i64(M, m0 + kBlockM);
      const float* bp = nullptr;
      if (has_bias) {
        for (int64_t n = b0 * 16; n < b1 * 16; ++n) b[n - b0 * 16] = n < N ? element_f32(bias->dtype, bias->data, n) : 0.0f;
        bp = b;
      }
      if (M == 1 && !pairs) {
        if (b1 - b0 == 2) gemv_rows<2>(x, wd, N, K, b0, bp, y);
        else gemv_rows<1>(x, wd, N, K, b0, bp, y);
        continue;
      }
      for (int64_t p0 = 0; p0 < P; p0 += chunk) {
        const int64_t p1 = min_i64(P, p0 + chunk);
        const uint16_t* wb = wd + b0 * bs + p0 * 32;
        int64_t stride = bs;
        if (!pairs) {  // row-major: this chunk of the panel into bf16_pairs order first
          uint16_t* packed = chunk_buf.get(kPanel * 32 * kChunk);
          pack_blocks(wd, N, K, b0, b1, p0, p1, packed);
          wb = packed;
          stride = 32 * (p1 - p0);
        }
        // Packed weights: each tile of rows also prefetches into L2 its share of the block's next
        // chunk, so that memory streams it while the tiles compute this one.
        const int64_t tiles = (m1 - m0 + kMB - 1) / kMB;
        const int64_t next_lines = pairs ? (min_i64(P, p1 + chunk) - p1) : 0;  // 64-byte lines: one a pair
        auto tile = [&](int64_t m, int64_t blk) {
          const int mb = static_cast<int>(min_i64(kMB, m1 - m));
          if (next_lines > 0) {
            const int64_t i = (m - m0) / kMB;
            const char* next = reinterpret_cast<const char*>(wd + blk * bs + p1 * 32);
            for (int64_t l = i * next_lines / tiles; l < (i + 1) * next_lines / tiles; ++l)
              _mm_prefetch(next + l * 64, _MM_HINT_T1);
          }
          float* pt = part ? part + ((blk - b0) * kBlockM + (m - m0)) * 16 : nullptr;
          const Tile t{x + m * K, K, p0, p1, P, wb + (blk - b0) * stride, pt, y + m * N, N, blk * 16,
                       bp ? bp + (blk - b0) * 16 : nullptr};
          run_tile_rows(mb, t);
        };
        // Few rows: block by block, its chunk read from memory by the first tile of rows and from
        // L1 by the rest. More: tile of rows by tile of rows, its x in L1 across the panel's
        // blocks (their chunks, 16 KiB each, from L2).
        if (m1 - m0 <= 2 * kMB) {
          for (int64_t blk = b0; blk < b1; ++blk)
            for (int64_t m = m0; m < m1; m += kMB) tile(m, blk);
        } else {
          for (int64_t m = m0; m < m1; m += kMB)
            for (int64_t blk = b0; blk < b1; ++blk) tile(m, blk);
        }
      }
    }
  });
}

TensorView pack_pairs(const TensorView& w, uint16_t* out) {
  pack_blocks(static_cast<const uint16_t*>(w.data), w.rows, w.cols, 0, w.rows / 16, 0, w.cols / 2, out);
  TensorView packed = w;
  packed.data = out;
  packed.layout = Layout::bf16_pairs;
  return packed;
}

}  // namespace

const CpuKernels& cpu_avx2_kernels() {
  static const CpuKernels table = [] {
    CpuKernels k = SimdKernels<Avx2>::table("avx2");
    k.matmul = matmul_bf16;
    k.packed_layout = Layout::bf16_pairs;
    k.can_pack = can_pack_bf16_pairs;
    k.pack = pack_pairs;
    return k;
  }();
  return table;
}

}  // namespace llm::cpu
