// cpu-amx.cc: the AMX kernel path: the AVX-512 table with matmul on AMX-BF16 tiles.
//
// y[M, N] = x[M, K] @ w[N, K]^T (+ bias) is computed as y^T = w @ x^T, so the weights are the
// A operand and are read in place (tile rows are weight rows, stride K): no prepacking, the
// memory-mapped bf16 weights are what the tiles load. x is the B operand, split into two bf16
// terms, hi = bf16(x) and lo = bf16(x - hi) (x to about 16 significant bits, where bf16 alone
// keeps 8), packed once per call into VNNI tiles:
//   xp  // [ceil(M / 16)][K / 32][hi, lo] tiles of 16 (k pairs) x 16 (m) x 2 bf16 = 1 KiB each
// and every product is w hi + w lo. One term alone would be twice as fast but moves the logits
// of the golden tests 4-20x past their bounds and makes a sequence's tokens depend on the batch
// it ran in (a preempted and recomputed request diverged); two terms keep both within fp32-path
// behaviour.
// Each work item is 32 weight rows (two A tiles) against 32 rows of x (two B tiles), four C
// accumulators, written to y as C^T through a 16 x 16 transpose. A thread takes its weight rows
// in groups of ~1 MiB: the group stays in L2 while every 32 rows of x go by.
// Settings: AMX runs for bf16 weights with K % 32 == 0 and M >= kMinRows; every other shape,
// and the last N % 32 weight rows, go to the AVX-512 matmul.
// Stays true: only x is rounded (hi + lo leaves |dx| <= 2^-18 |x|); products and sums are fp32
// (bound in test-kernels-fast.cc). Tiles are configured at the
// start of each thread's chunk and released at its end.
// Compiled with AVX-512 + AVX512_BF16 + AMX flags (CMakeLists.txt); called only when
// cpu_isa().amx_bf16 is set (which includes the Linux XTILEDATA permission).
#include <immintrin.h>

#include <cstring>

#include "cpu-paths.h"
#include "cpu-scratch.h"

namespace llm::cpu {

namespace {

constexpr int64_t kMinRows = 4;
constexpr int64_t kGroupBytes = int64_t{1} << 20;

int64_t max_i64(int64_t a, int64_t b) { return a > b ? a : b; }

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: C (16 x 16 fp32); 4-5: A (16 rows x 32 bf16); 6-7: B (16 k pairs x 16 x 2 bf16).
void configure_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

// In-register transpose of a 16 x 16 matrix of 32-bit elements (r[i] is row i).
void transpose16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  // u[4g + c], lane L: column 4L + c of rows 4g .. 4g + 3
  for (int g = 0; g < 4; ++g) {
    u[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd);
    const __m512i w0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
    const __m512i w1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
    r[c] = _mm512_shuffle_i32x4(v0, w0, 0x88);
    r[8 + c] = _mm512_shuffle_i32x4(v0, w0, 0xdd);
    r[4 + c] = _mm512_shuffle_i32x4(v1, w1, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(v1, w1, 0xdd);
  }
}

// Packs rows [16 mt, 16 mt + 16) of x (rows past M are zeros) into xp's tiles (mt, 0 .. K/32),
// each followed by the tile of its rounding remainders: hi = bf16(x), lo = bf16(x - hi).
void pack_x_tiles(const float* x, int64_t M, int64_t K, int64_t mt, uint16_t* xp) {
  const int64_t kb_count = K / 32;
  for (int64_t kb = 0; kb < kb_count; ++kb) {
    __m512i hi[16], lo[16];  // [m] = the 16 bf16 pairs of row m, columns [32 kb, 32 kb + 32)
    for (int m = 0; m < 16; ++m) {
      const int64_t row = mt * 16 + m;
      if (row >= M) {
        hi[m] = lo[m] = _mm512_setzero_si512();
        continue;
      }
      __m256i h[2], l[2];
      for (int half = 0; half < 2; ++half) {
        const __m512 v = _mm512_loadu_ps(x + row * K + kb * 32 + 16 * half);
        h[half] = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
        const __m512 v_hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h[half]), 16));
        l[half] = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_sub_ps(v, v_hi)));
      }
      hi[m] = _mm512_inserti64x4(_mm512_castsi256_si512(h[0]), h[1], 1);
      lo[m] = _mm512_inserti64x4(_mm512_castsi256_si512(l[0]), l[1], 1);
    }
    transpose16(hi);  // [k pair] = 16 m
    transpose16(lo);
    uint16_t* tile = xp + (mt * kb_count + kb) * 1024;
    for (int i = 0; i < 16; ++i) {
      _mm512_store_si512(tile + i * 32, hi[i]);
      _mm512_store_si512(tile + 512 + i * 32, lo[i]);
    }
  }
}

// y[m0 + m, n0 + n] = c[n][m] + bias[n] for m < rows.
void store_transposed(const float* c, const float* bias, int64_t m0, int64_t rows, int64_t n0, int64_t N, float* y) {
  __m512i r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(c + i * 16);
  transpose16(r);
  const __m512 b = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
  for (int64_t m = 0; m < rows; ++m) _mm512_storeu_ps(y + (m0 + m) * N + n0, _mm512_add_ps(_mm512_castsi512_ps(r[m]), b));
}

// C tiles 0-3 = weight rows [a0, a0 + 16) and [a1, a1 + 16) times the x tiles b0 (and b1).
// While the first rows of x go by, the weight rows are read from memory: prefetch them a few
// tiles ahead (tile loads with a stride of K elements defeat the hardware prefetcher).
template <bool kTwoB>
void block(const uint16_t* a0, const uint16_t* a1, int64_t K, const uint16_t* b0, const uint16_t* b1, bool prefetch,
           float* c) {
  constexpr int64_t kAhead = 4;  // tiles of 32 columns
  _tile_zero(0);
  _tile_zero(1);
  if (kTwoB) {
    _tile_zero(2);
    _tile_zero(3);
  }
  const int64_t stride = K * 2;
  for (int64_t kb = 0; kb < K / 32; ++kb) {
    if (prefetch && kb + kAhead < K / 32)
      for (int r = 0; r < 16; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(a0 + r * K + (kb + kAhead) * 32), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(a1 + r * K + (kb + kAhead) * 32), _MM_HINT_T0);
      }
    _tile_loadd(4, a0 + kb * 32, stride);
    _tile_loadd(5, a1 + kb * 32, stride);
    for (int part = 0; part < 2; ++part) {  // hi, then lo: C += A hi + A lo
      _tile_loadd(6, b0 + kb * 1024 + part * 512, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 5, 6);
      if (kTwoB) {
        _tile_loadd(7, b1 + kb * 1024 + part * 512, 64);
        _tile_dpbf16ps(2, 4, 7);
        _tile_dpbf16ps(3, 5, 7);
      }
    }
  }
  _tile_stored(0, c, 64);
  _tile_stored(1, c + 256, 64);
  if (kTwoB) {
    _tile_stored(2, c + 512, 64);
    _tile_stored(3, c + 768, 64);
  }
}

float bias_at(const TensorView& b, int64_t i) {
  switch (b.dtype) {
    case DType::f32: return static_cast<const float*>(b.data)[i];
    case DType::f16: return _cvtsh_ss(static_cast<const uint16_t*>(b.data)[i]);
    case DType::bf16: {
      const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(b.data)[i]) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
  }
  return 0.0f;
}

void matmul_amx(ThreadPool& pool, const float* x, int64_t M, const TensorView& w, const TensorView* bias, float* y) {
  const int64_t N = w.rows, K = w.cols;
  const int64_t N32 = N / 32 * 32;
  if (w.dtype != DType::bf16 || K % 32 != 0 || M < kMinRows || N32 == 0)
    return matmul_avx512(pool, x, M, w, bias, y);
  const int64_t m_tiles = (M + 15) / 16, kb_count = K / 32;
  thread_local Scratch<uint16_t> pack;
  uint16_t* xp = pack.get(m_tiles * kb_count * 1024);
  pool.parallel_for(m_tiles, [&](int64_t begin, int64_t end) {
    for (int64_t mt = begin; mt < end; ++mt) pack_x_tiles(x, M, K, mt, xp);
  });
  const bool has_bias = bias && bias->present();
  const uint16_t* wd = static_cast<const uint16_t*>(w.data);
  // A thread's weight rows go by in groups of about kGroupBytes (kept in L2 while every 32 rows
  // of x pass; x's 32 rows stay in L2 across the group).
  const int64_t group = max_i64(1, kGroupBytes / (32 * K * 2));
  pool.parallel_for(N32 / 32, [&](int64_t begin, int64_t end) {
    configure_tiles();
    alignas(64) float c[4][16 * 16];  // C tiles: (n0, mt), (n0 + 16, mt), (n0, mt + 1), (n0 + 16, mt + 1)
    alignas(64) float b[32] = {};
    for (int64_t g0 = begin; g0 < end; g0 += group) {
      const int64_t g1 = g0 + group < end ? g0 + group : end;
      for (int64_t mt = 0; mt < m_tiles; mt += 2) {
        const uint16_t* b0 = xp + mt * kb_count * 1024;
        const bool two = mt + 1 < m_tiles;
        const int64_t rows0 = M - mt * 16 < 16 ? M - mt * 16 : 16;
        const int64_t rows1 = two ? (M - mt * 16 - 16 < 16 ? M - mt * 16 - 16 : 16) : 0;
        for (int64_t nb = g0; nb < g1; ++nb) {
          const int64_t n0 = nb * 32;
          if (has_bias)
            for (int i = 0; i < 32; ++i) b[i] = bias_at(*bias, n0 + i);
          const uint16_t* a0 = wd + n0 * K;
          const uint16_t* a1 = a0 + 16 * K;
          if (two) block<true>(a0, a1, K, b0, b0 + kb_count * 1024, mt == 0, c[0]);
          else block<false>(a0, a1, K, b0, nullptr, mt == 0, c[0]);
          store_transposed(c[0], has_bias ? b : nullptr, mt * 16, rows0, n0, N, y);
          store_transposed(c[1], has_bias ? b + 16 : nullptr, mt * 16, rows0, n0 + 16, N, y);
          if (two) {
            store_transposed(c[2], has_bias ? b : nullptr, mt * 16 + 16, rows1, n0, N, y);
            store_transposed(c[3], has_bias ? b + 16 : nullptr, mt * 16 + 16, rows1, n0 + 16, N, y);
          }
        }
      }
    }
    _tile_release();
  });
  if (N32 == N) return;
  // The last N % 32 weight rows: AVX-512 into a (M, N - N32) buffer, then into y's columns.
  const int64_t n_tail = N - N32;
  const TensorView w_tail{wd + N32 * K, DType::bf16, n_tail, K};
  TensorView b_tail;
  if (has_bias) b_tail = TensorView{static_cast<const char*>(bias->data) + N32 * (bias->dtype == DType::f32 ? 4 : 2), bias->dtype, 1, n_tail};
  thread_local Scratch<float> tail_buf;
  float* tail = tail_buf.get(M * n_tail);
  matmul_avx512(pool, x, M, w_tail, has_bias ? &b_tail : nullptr, tail);
  for (int64_t m = 0; m < M; ++m) std::memcpy(y + m * N + N32, tail + m * n_tail, static_cast<size_t>(n_tail * 4));
}

}  // namespace

const CpuKernels& cpu_amx_kernels() {
  static const CpuKernels table = [] {
    CpuKernels k = cpu_avx512_kernels();
    k.name = "amx";
    k.matmul = matmul_amx;
    return k;
  }();
  return table;
}

}  // namespace llm::cpu
