// cpu-amx.cc: the AMX kernel paths: the AVX-512 table with matmul on AMX-BF16 tiles.
//
// y[M, N] = x[M, K] @ w[N, K]^T (+ bias) is computed as y^T = w @ x^T: the bf16 weights are the
// A operand, x the B operand, packed once per call into VNNI tiles:
//   xp  // [ceil(M / 16)][K / 32][terms] tiles of 16 (k pairs) x 16 (m) x 2 bf16 = 1 KiB each
// Two tables differ only in the terms of x:
//   amx       the default (also named amx-bf16): x = bf16(x), one term (|dx| <= 2^-9 |x|), as
//             Hugging Face transformers in bf16, llama.cpp's BF16 path and oneDNN's bf16 matmul
//             do. At every M, decode included, and in the columns and shapes this file hands to
//             the AVX-512 matmul (rounded_x): a bf16 weight sees the same rounded x whatever the
//             batch and whether AMX can run its shape (K % 32 == 0) or not, so that a sequence's
//             tokens depend neither on the batch it ran in (a preempted and recomputed request,
//             a request alone or batched: test/native/engine.test.ts) nor on a tensor-parallel
//             rank's slice of K (test-tensor-parallel). One term is ~1.4x the prefill speed of two
//             and free at batch-1 decode (the AVX-512 GEMV on rounded x).
//   amx-exact x = hi + lo, hi = bf16(x), lo = bf16(x - hi) (x to about 16 significant bits, where
//             bf16 alone keeps 8); every product is w hi + w lo; the AVX-512 parts see x itself.
//             Within the fp32 paths' bounds (the default before). Only when
//             KVSERVE_CPU_KERNELS=amx-exact names it.
// Work: blocks of 32 weight rows (two A tiles) by 32 rows of x (two B tiles), four C tiles.
// The weights come row-major or in Layout::amx_tiles (tensor-view.h: the CPU runner converts them
// at load), where every A tile is 1 KiB in one piece and nothing needs copying.
//   M <= 32 (batched decode): each weight block is used once; its tiles load in place from the
//     weights (row-major: stride K; prefetched ahead) over all of K. No copy.
//   M > 32 (prefill): a thread's blocks go in groups of 8, K in chunks (row-major: 256 columns
//     for one term, 128 for two, so that the x pair's chunk is 16 KiB and stays in L1; tiled:
//     half that). Row-major, each chunk of the group is copied into contiguous A tiles (2 x 64
//     KiB per thread, double-buffered: the next chunk is copied between the blocks of this one,
//     so weights stream in while the tiles work); tiled, the next chunk is prefetched into L2
//     in the same slices instead. The chunk meets every row of x; C waits in a per-thread fp32
//     buffer between chunks (M / 32 x 8 x 4 KiB = 512 KiB at M = 512). The weights are read
//     from memory once per call.
// Settings: AMX runs for bf16 weights with K % 32 == 0 and M >= kMinRows; every other shape,
// and the last N % 32 weight rows, go to the AVX-512 matmul (tiled weights: gemv_tiles, the
// same arithmetic in the same order, so that both layouts give the same bits).
// Stays true: only x is rounded (two terms leave |dx| <= 2^-18 |x|, one term 2^-9 |x|);
// products and sums are fp32 (bounds in test-kernels-fast.cc). Tiles are configured at the
// start of each thread's chunk of work and released at its end.
// Compiled with AVX-512 + AVX512_BF16 + AMX flags (CMakeLists.txt); called only when
// cpu_isa().amx_bf16 is set (which includes the Linux XTILEDATA permission).
#include <immintrin.h>

#include <cstring>

#include "cpu-amx-tiles.h"
#include "cpu-avx512-simd.h"
#include "cpu-paths.h"
#include "cpu-scratch.h"
#include "cpu-weights.h"

namespace llm::cpu {

namespace {

constexpr int64_t kMinRows = 4;
constexpr int64_t kGroupBlocks = 8;  // 32-row weight blocks per group (M > 32)

// Packs rows [16 mt, 16 mt + 16) of x (rows past M are zeros) into xp's tiles (mt, 0 .. K/32):
// per 32 columns the tile of hi = bf16(x), then (kTerms == 2) the tile of lo = bf16(x - hi).
template <int kTerms>
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
    uint16_t* tile = xp + (mt * kb_count + kb) * 512 * kTerms;
    for (int i = 0; i < 16; ++i) _mm512_store_si512(tile + i * 32, hi[i]);
    if (kTerms == 2) {
      transpose16(lo);
      for (int i = 0; i < 16; ++i) _mm512_store_si512(tile + 512 + i * 32, lo[i]);
    }
  }
}

// Copies rows [r0, r1) of the group's weight rows [32 g0, ...), columns [32 kb0, 32 (kb0 + kbn)),
// into the group's A tiles: ap[block][kb][half] = rows 32 (g0 + block) + 16 half .. + 16 of
// columns 32 (kb0 + kb) .. + 32, 1 KiB each.
void pack_w_rows(const uint16_t* w, int64_t K, int64_t g0, int64_t r0, int64_t r1, int64_t kb0, int64_t kbn,
                 uint16_t* ap) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* src = w + (g0 * 32 + r) * K + kb0 * 32;
    uint16_t* dst = ap + (r / 32) * kbn * 1024 + (r % 32 / 16) * 512 + (r % 16) * 32;
    for (int64_t kb = 0; kb < kbn; ++kb) _mm512_store_si512(dst + kb * 1024, _mm512_loadu_si512(src + kb * 32));
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

// Where block() reads its two A tiles of 16 weight rows for column tile kb: a0 + kb * step and
// a1 + kb * step, rows `stride` bytes apart. Packed tiles (step 1024, stride 64) or the weights
// in place (step 32, stride 2K; prefetch: fetch the rows a few tiles ahead, as tile loads with
// a stride of K elements defeat the hardware prefetcher).
struct ATiles {
  const uint16_t* a0;
  const uint16_t* a1;
  int64_t step, stride;
  bool prefetch;
};

// C tiles 0-3 (+)= the A tiles (32 weight rows, kbn x 32 columns) times the x tiles b0 (and
// b1): c[0] = (rows 0-15, b0), c[1] = (rows 16-31, b0), c[2], c[3] the same with b1. The C
// tiles start from zero (first = true) or from c, and are stored back to c.
template <bool kTwoB, int kTerms>
void block(const ATiles& a, int64_t kbn, const uint16_t* b0, const uint16_t* b1, bool first, float* c) {
  constexpr int64_t kAhead = 4;  // column tiles
  if (first) {
    _tile_zero(0);
    _tile_zero(1);
    if (kTwoB) {
      _tile_zero(2);
      _tile_zero(3);
    }
  } else {
    _tile_loadd(0, c, 64);
    _tile_loadd(1, c + 256, 64);
    if (kTwoB) {
      _tile_loadd(2, c + 512, 64);
      _tile_loadd(3, c + 768, 64);
    }
  }
  for (int64_t kb = 0; kb < kbn; ++kb) {
    if (a.prefetch && kb + kAhead < kbn)
      for (int r = 0; r < 16; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(a.a0) + r * a.stride + (kb + kAhead) * a.step * 2, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(a.a1) + r * a.stride + (kb + kAhead) * a.step * 2, _MM_HINT_T0);
      }
    _tile_loadd(4, a.a0 + kb * a.step, a.stride);
    _tile_loadd(5, a.a1 + kb * a.step, a.stride);
    for (int part = 0; part < kTerms; ++part) {  // hi, then lo: C += A hi + A lo
      _tile_loadd(6, b0 + (kb * kTerms + part) * 512, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 5, 6);
      if (kTwoB) {
        _tile_loadd(7, b1 + (kb * kTerms + part) * 512, 64);
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

// y[m0 .. m0 + rows0 + rows1, n0 .. n0 + 32) = the C tiles c (see block) + bias b (or none).
void store_block(const float* c, const float* b, int64_t m0, int64_t rows0, int64_t rows1, int64_t n0, int64_t N,
                 float* y) {
  store_transposed(c, b, m0, rows0, n0, N, y);
  store_transposed(c + 256, b ? b + 16 : nullptr, m0, rows0, n0 + 16, N, y);
  if (rows1 > 0) {
    store_transposed(c + 512, b, m0 + 16, rows1, n0, N, y);
    store_transposed(c + 768, b ? b + 16 : nullptr, m0 + 16, rows1, n0 + 16, N, y);
  }
}

// The fused gate/up matmul (gate_up_silu): c holds a gate tile and the up tile of the same 16
// rows (c and c + 256: 16 rows n x 16 rows m of x). out[m0 + m, f0 + n] = silu(gate) * up for
// m < rows, with the AVX-512 path's silu_mul arithmetic; each C value gets + 0 first, as
// store_transposed gives an unfused matmul's (so that a -0 turns +0 alike).
void store_silu_pair(const float* c, int64_t m0, int64_t rows, int64_t f0, int64_t F, float* out) {
  __m512i g[16], u[16];
  for (int i = 0; i < 16; ++i) g[i] = _mm512_load_si512(c + i * 16), u[i] = _mm512_load_si512(c + 256 + i * 16);
  transpose16(g);
  transpose16(u);
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t m = 0; m < rows; ++m) {
    const __m512 gv = _mm512_add_ps(_mm512_castsi512_ps(g[m]), zero), uv = _mm512_add_ps(_mm512_castsi512_ps(u[m]), zero);
    _mm512_storeu_ps(out + (m0 + m) * F + f0, SimdKernels<Avx512>::silu_mul_v(gv, uv));
  }
}

// The fused gate/up matmul writing the down matmul's x tiles (mlp): c holds a gate tile and the
// up tile of the same 16 features f0 .. f0 + 15 (c and c + 256: 16 rows n x 16 rows m of x).
// silu(gate) * up as store_silu_pair computes it, rounded to bf16 as pack_x_tiles<1> rounds,
// written where pack_x_tiles<1> would put it: x tile (mt, f0 / 32) of xp (kb_count tiles per mt),
// k pairs (f0 % 32) / 2 .. + 8, as two C rows (features 2i, 2i + 1) interleaved per m.
void store_silu_packed(const float* c, __m512i interleave, int64_t mt, int64_t f0, int64_t kb_count, uint16_t* xp) {
  const __m512 zero = _mm512_setzero_ps();
  uint16_t* tile = xp + (mt * kb_count + f0 / 32) * 512 + (f0 % 32) / 2 * 32;
  for (int i = 0; i < 8; ++i) {
    const __m512 h_even = SimdKernels<Avx512>::silu_mul_v(_mm512_add_ps(_mm512_load_ps(c + 32 * i), zero),
                                                          _mm512_add_ps(_mm512_load_ps(c + 256 + 32 * i), zero));
    const __m512 h_odd = SimdKernels<Avx512>::silu_mul_v(_mm512_add_ps(_mm512_load_ps(c + 32 * i + 16), zero),
                                                         _mm512_add_ps(_mm512_load_ps(c + 256 + 32 * i + 16), zero));
    const __m256i e = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(h_even));
    const __m256i o = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(h_odd));
    _mm512_store_si512(tile + i * 32, _mm512_permutexvar_epi16(interleave, _mm512_inserti64x4(_mm512_castsi256_si512(e), o, 1)));
  }
}

// x rounded to bf16 (round to nearest even, as the tiles' packing does), as fp32, in a
// per-thread buffer: what the AVX-512 matmul multiplies where the one-term path hands it a
// weight AMX would have run (few rows, the last N % 32 rows), so that every row of x and every
// output column is rounded alike whatever the batch.
const float* rounded_x(const float* x, int64_t n) {
  thread_local Scratch<float> buf;
  float* out = buf.get(n);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i h = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
    _mm512_storeu_ps(out + i, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m256i h = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i)));
    _mm512_mask_storeu_ps(out + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  }
  return out;
}

// The AVX-512 matmul on weights in Layout::amx_tiles, for what matmul_amx hands to AVX-512 (few
// rows of x, the last N % 32 weight rows): y[m, n0 + n] for the 16-row blocks [b0, b1) of w. The
// same arithmetic as matmul_avx512 in the same order (per row of w, lane j sums the products
// of columns j, j + 16, j + 32, ... by fmadd, then one horizontal sum, then the bias), so the
// bits equal the row-major path's. A block's rows are 16 x K contiguous elements, read once in
// order: for MB = 1 (the decode GEMV) each thread streams one contiguous range, prefetched
// kAhead tiles ahead; for MB > 1 a block goes in two passes of 8 rows (the second from L2).
template <int MB>
void gemv_tiles(const float* x, int64_t K, const uint16_t* w, int64_t total_blocks, int64_t b0, int64_t b1,
                const TensorView* bias, int64_t N, float* y) {
  constexpr int kRows = MB == 1 ? 16 : 8;
  // Tiles (1 KiB each) prefetched ahead of the one in use. bench-cpu-gemv, the 1B model's 2.47 GB
  // at batch 1: 2 ahead reads at the row-major path's speed (4 KiB pages: 94-106 ms, 89-91 ms in
  // huge pages); 4 and more fall behind it (6: 107-117 ms), and so does none (117 ms).
  constexpr int64_t kAhead = 2;
  const int64_t kb_count = K / 32;
  const char* end = reinterpret_cast<const char*>(w + total_blocks * 16 * K);
  for (int64_t b = b0; b < b1; ++b) {
    const uint16_t* blk = w + b * 16 * K;
    for (int r0 = 0; r0 < 16; r0 += kRows) {
      __m512 acc[MB][kRows];
      for (int m = 0; m < MB; ++m)
        for (int r = 0; r < kRows; ++r) acc[m][r] = _mm512_setzero_ps();
      for (int64_t kb = 0; kb < kb_count; ++kb) {
        const uint16_t* tile = blk + kb * 512 + r0 * 32;
        if (MB == 1) {
          const char* ahead = reinterpret_cast<const char*>(tile + kAhead * 512);
          if (ahead < end)
            for (int line = 0; line < 16; ++line) _mm_prefetch(ahead + line * 64, _MM_HINT_T0);
        }
        for (int half = 0; half < 2; ++half) {
          __m512 xv[MB];
          for (int m = 0; m < MB; ++m) xv[m] = _mm512_loadu_ps(x + m * K + kb * 32 + half * 16);
          for (int r = 0; r < kRows; ++r) {
            const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile + r * 32 + half * 16));
            const __m512 wv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
            for (int m = 0; m < MB; ++m) acc[m][r] = _mm512_fmadd_ps(xv[m], wv, acc[m][r]);
          }
        }
      }
      for (int r = 0; r < kRows; ++r) {
        const int64_t n = b * 16 + r0 + r;
        const float bn = bias && bias->present() ? element_f32(bias->dtype, bias->data, n) : 0.0f;
        for (int m = 0; m < MB; ++m) y[m * N + n] = _mm512_reduce_add_ps(acc[m][r]) + bn;
      }
    }
  }
}

// y[M, N] (columns [16 b0, 16 b1)) = x @ w^T (+ bias) for w in Layout::amx_tiles, by gemv_tiles,
// rows of x three at a time; the blocks are split across the pool (parallel = true) or not.
void matmul_tiles_avx512(ThreadPool& pool, const float* x, int64_t M, const TensorView& w, const TensorView* bias,
                         int64_t b0, int64_t b1, float* y) {
  const int64_t K = w.cols, N = w.rows, total = N / 16;
  const uint16_t* wd = static_cast<const uint16_t*>(w.data);
  pool.parallel_for(b1 - b0, [&](int64_t begin, int64_t end) {
    for (int64_t m = 0; m < M;) {
      const float* xm = x + m * K;
      float* ym = y + m * N;
      if (M - m >= 3) gemv_tiles<3>(xm, K, wd, total, b0 + begin, b0 + end, bias, N, ym), m += 3;
      else if (M - m == 2) gemv_tiles<2>(xm, K, wd, total, b0 + begin, b0 + end, bias, N, ym), m += 2;
      else gemv_tiles<1>(xm, K, wd, total, b0 + begin, b0 + end, bias, N, ym), m += 1;
    }
  });
}

// Where matmul_amx_impl puts x @ w^T: y[M, N] (+ bias); silu_pairs (gate_up_silu: w from
// pack_amx_gate_up, no bias): y[M, N / 2] = silu(gate) * up, each pair of 16-row blocks combined
// where it is stored; split (matmul_qkv: w is 3 matrices stacked, no bias): columns go to
// part[0..2][M, width[p]] in turn (widths multiples of 32), y unused.
// silu_packed (mlp: w from pack_amx_gate_up, no bias, one term, M >= kMinRows): silu(gate) * up
// goes to packed, as the next matmul's x tiles (pack_x_tiles<1>'s layout, N / 64 column tiles),
// y unused. x_packed (any kind, one term, M >= kMinRows): x is already in tiles there (from a
// silu_packed call), x unused.
struct Output {
  enum Kind { plain, silu_pairs, split, silu_packed } kind = plain;
  float* part[3] = {};
  int64_t width[3] = {};
  uint16_t* packed = nullptr;
  const uint16_t* x_packed = nullptr;
};

template <int kTerms>
void matmul_amx_impl(ThreadPool& pool, const float* x, int64_t M, const TensorView& w, const TensorView* bias, float* y,
                     const Output& out) {
  const bool pairs = out.kind == Output::silu_pairs;
  const int64_t N = w.rows, K = w.cols;
  const int64_t N32 = N / 32 * 32;
  const bool tiled = w.layout == Layout::amx_tiles;  // else row-major
  if (!tiled && (w.dtype != DType::bf16 || K % 32 != 0)) {
    // A bf16 weight AMX cannot run still sees x rounded (one term): which rounding a matrix gets
    // must not depend on its shape (a tensor-parallel rank's slice of K, say).
    const bool round = kTerms == 1 && w.dtype == DType::bf16;
    return matmul_avx512(pool, round ? rounded_x(x, M * K) : x, M, w, bias, y);
  }
  // One term: the weights AMX runs (bf16, K % 32 == 0) see x rounded to bf16 at every M, in
  // every column; two terms: the AVX-512 parts see x itself (its hi + lo is x to 2^-18).
  if (M < kMinRows || N32 == 0) {
    const float* xr = kTerms == 1 ? rounded_x(x, M * K) : x;
    if (!tiled) return matmul_avx512(pool, xr, M, w, bias, y);
    if (out.kind == Output::plain) return matmul_tiles_avx512(pool, xr, M, w, bias, 0, N / 16, y);
    // Pairs, split: every row into a (M, N) buffer as the unfused matmuls would, then combined
    // or copied out.
    thread_local Scratch<float> all_buf;
    float* all = all_buf.get(M * N);
    matmul_tiles_avx512(pool, xr, M, w, nullptr, 0, N / 16, all);
    for (int64_t m = 0; m < M; ++m) {
      if (pairs) {
        for (int64_t j = 0; j < N / 32; ++j) {
          const float* g = all + m * N + 32 * j;
          _mm512_storeu_ps(y + m * (N / 2) + 16 * j, SimdKernels<Avx512>::silu_mul_v(_mm512_loadu_ps(g), _mm512_loadu_ps(g + 16)));
        }
      } else {
        for (int p = 0, n0 = 0; p < 3; n0 += out.width[p++])
          std::memcpy(out.part[p] + m * out.width[p], all + m * N + n0, static_cast<size_t>(out.width[p] * 4));
      }
    }
    return;
  }
  const int64_t m_tiles = (M + 15) / 16, m_pairs = (m_tiles + 1) / 2, kb_count = K / 32;
  const int64_t x_tile = 512 * kTerms;  // uint16 per (mt, kb) in xp
  thread_local Scratch<uint16_t> pack;
  const uint16_t* xp = out.x_packed;
  if (!xp) {
    uint16_t* packing = pack.get(m_tiles * kb_count * x_tile);
    pool.parallel_for(m_tiles, [&](int64_t begin, int64_t end) {
      for (int64_t mt = begin; mt < end; ++mt) pack_x_tiles<kTerms>(x, M, K, mt, packing);
    });
    xp = packing;
  }
  const bool has_bias = bias && bias->present();
  const uint16_t* wd = static_cast<const uint16_t*>(w.data);
  auto block_bias = [&](int64_t n0, float* b) -> const float* {
    if (!has_bias) return nullptr;
    for (int j = 0; j < 32; ++j) b[j] = element_f32(bias->dtype, bias->data, n0 + j);
    return b;
  };
  const __m512i interleave = pair_interleave();
  auto rows_of = [&](int64_t mt) { return mt >= m_tiles ? 0 : (M - mt * 16 < 16 ? M - mt * 16 : 16); };
  // The C tiles of 32-row weight block nb by x row tiles mt, mt + 1 into y.
  auto store = [&](const float* c, int64_t nb, int64_t mt, float* b) {
    if (out.kind == Output::plain)
      return store_block(c, block_bias(nb * 32, b), mt * 16, rows_of(mt), rows_of(mt + 1), nb * 32, N, y);
    if (out.kind == Output::split) {
      int64_t p = 0, n0 = nb * 32;
      while (n0 >= out.width[p]) n0 -= out.width[p++];
      return store_block(c, nullptr, mt * 16, rows_of(mt), rows_of(mt + 1), n0, out.width[p], out.part[p]);
    }
    if (out.kind == Output::silu_packed) {
      store_silu_packed(c, interleave, mt, nb * 16, N / 64, out.packed);
      if (rows_of(mt + 1) > 0) store_silu_packed(c + 512, interleave, mt + 1, nb * 16, N / 64, out.packed);
      return;
    }
    store_silu_pair(c, mt * 16, rows_of(mt), nb * 16, N / 2, y);
    if (rows_of(mt + 1) > 0) store_silu_pair(c + 512, mt * 16 + 16, rows_of(mt + 1), nb * 16, N / 2, y);
  };
  // Tiled weights: the A tile of 16-row block b, column tile kb (tensor-view.h).
  auto tile_at = [&](int64_t b, int64_t kb) { return wd + (b * kb_count + kb) * 512; };
  if (m_pairs == 1) {
    // Up to 32 rows of x (batched decode): each weight block is used once, so its tiles are
    // loaded in place over the whole of K.
    pool.parallel_for(N32 / 32, [&](int64_t begin, int64_t end) {
      configure_tiles();
      alignas(64) float c[1024];
      alignas(64) float b[32];
      for (int64_t nb = begin; nb < end; ++nb) {
        const ATiles a = tiled ? ATiles{tile_at(2 * nb, 0), tile_at(2 * nb + 1, 0), 512, 64, true}
                               : ATiles{wd + nb * 32 * K, wd + (nb * 32 + 16) * K, 32, K * 2, true};
        if (m_tiles == 2) block<true, kTerms>(a, kb_count, xp, xp + kb_count * x_tile, true, c);
        else block<false, kTerms>(a, kb_count, xp, nullptr, true, c);
        store(c, nb, 0, b);
      }
      _tile_release();
    });
  } else {
    // A thread's 32-row weight blocks go by in groups of kGroupBlocks, and K in chunks of
    // kChunkKb column tiles: the group's chunk (8 KiB of A tiles per block, L2) is multiplied
    // by every row of x, 32 rows at a time (the x pair's chunk, 16 KiB, stays in L1 across the
    // group's blocks). C (group x M, fp32) waits in cb between chunks. The next chunk is made
    // ready a slice at a time between the blocks of this one, so that its weights stream from
    // memory while the tiles work: row-major weights are copied into A tiles (the other half
    // of ap), tiled weights are read where they lie and only prefetched into L2.
    // Chunks: 256 columns of one term (128 of two) for copied tiles, half that for tiled
    // weights, which are not copied and so do not need the longer chunk to pay for the copy
    // (measured at 512 tokens on the 1B shape: 16 % less matmul time than 256 columns).
    const int64_t kChunkKb = (tiled ? 4 : 8) / kTerms;
    pool.parallel_for(N32 / 32, [&](int64_t begin, int64_t end) {
      auto chunk_at = [&](int64_t g0, int64_t kb0, int64_t* gn, int64_t* kbn) {
        *gn = end - g0 < kGroupBlocks ? end - g0 : kGroupBlocks;
        *kbn = kb_count - kb0 < kChunkKb ? kb_count - kb0 : kChunkKb;
      };
      // Rows [r0, r1) of group g0's chunk (kb0, kbn): copied into ap (row-major) or prefetched.
      auto prepare = [&](int64_t g0, int64_t r0, int64_t r1, int64_t kb0, int64_t kbn, uint16_t* ap) {
        if (!tiled) return pack_w_rows(wd, K, g0, r0, r1, kb0, kbn, ap);
        for (int64_t r = r0; r < r1; ++r) {
          const char* row = reinterpret_cast<const char*>(tile_at(2 * g0 + r / 16, kb0) + r % 16 * 32);
          for (int64_t kb = 0; kb < kbn; ++kb) _mm_prefetch(row + kb * 1024, _MM_HINT_T1);
        }
      };
      thread_local Scratch<uint16_t> a_buf;
      thread_local Scratch<float> c_buf;
      const int64_t ap_half = kGroupBlocks * kChunkKb * 1024;
      uint16_t* ap_both = tiled ? nullptr : a_buf.get(2 * ap_half);
      float* cb = c_buf.get(m_pairs * kGroupBlocks * 1024);
      configure_tiles();
      alignas(64) float b[32];
      int64_t gn, kbn;
      chunk_at(begin, 0, &gn, &kbn);
      prepare(begin, 0, gn * 32, 0, kbn, ap_both);
      int64_t parity = 0;
      for (int64_t g0 = begin; g0 < end; g0 += kGroupBlocks) {
        for (int64_t kb0 = 0; kb0 < kb_count; kb0 += kChunkKb, parity ^= 1) {
          chunk_at(g0, kb0, &gn, &kbn);
          const bool first = kb0 == 0, last = kb0 + kbn == kb_count;
          const uint16_t* ap = tiled ? nullptr : ap_both + parity * ap_half;
          // The next chunk: this group's next columns, or the next group's first.
          const int64_t ng0 = last ? g0 + kGroupBlocks : g0, nkb0 = last ? 0 : kb0 + kbn;
          int64_t ngn = 0, nkbn = 0;
          if (ng0 < end) chunk_at(ng0, nkb0, &ngn, &nkbn);
          uint16_t* next_ap = tiled ? nullptr : ap_both + (parity ^ 1) * ap_half;
          const int64_t rows_per_block = (ngn * 32 + m_pairs * gn - 1) / (m_pairs * gn);
          int64_t prepared = 0;
          for (int64_t mp = 0; mp < m_pairs; ++mp) {
            const int64_t mt = 2 * mp;
            const uint16_t* b0 = xp + (mt * kb_count + kb0) * x_tile;
            for (int64_t i = 0; i < gn; ++i) {
              float* c = cb + (mp * kGroupBlocks + i) * 1024;
              const ATiles a = tiled ? ATiles{tile_at(2 * (g0 + i), kb0), tile_at(2 * (g0 + i) + 1, kb0), 512, 64, false}
                                     : ATiles{ap + i * kbn * 1024, ap + i * kbn * 1024 + 512, 1024, 64, false};
              if (mt + 1 < m_tiles) block<true, kTerms>(a, kbn, b0, b0 + kb_count * x_tile, first, c);
              else block<false, kTerms>(a, kbn, b0, nullptr, first, c);
              if (prepared < ngn * 32) {
                const int64_t r1 = prepared + rows_per_block < ngn * 32 ? prepared + rows_per_block : ngn * 32;
                prepare(ng0, prepared, r1, nkb0, nkbn, next_ap);
                prepared = r1;
              }
              if (last) store(c, g0 + i, mt, b);
            }
          }
        }
      }
      _tile_release();
    });
  }
  if (N32 == N) return;  // always so with pairs and split
  // The last N % 32 weight rows: AVX-512 (tiled: straight into y's columns; row-major: into a
  // (M, N - N32) buffer, then into y's columns).
  const float* xr = kTerms == 1 ? rounded_x(x, M * K) : x;
  if (tiled) return matmul_tiles_avx512(pool, xr, M, w, bias, N32 / 16, N / 16, y);
  const int64_t n_tail = N - N32;
  const TensorView w_tail{wd + N32 * K, DType::bf16, n_tail, K};
  TensorView b_tail;
  if (has_bias) b_tail = TensorView{static_cast<const char*>(bias->data) + N32 * (bias->dtype == DType::f32 ? 4 : 2), bias->dtype, 1, n_tail};
  thread_local Scratch<float> tail_buf;
  float* tail = tail_buf.get(M * n_tail);
  matmul_avx512(pool, xr, M, w_tail, has_bias ? &b_tail : nullptr, tail);
  for (int64_t m = 0; m < M; ++m) std::memcpy(y + m * N + N32, tail + m * n_tail, static_cast<size_t>(n_tail * 4));
}

template <int kTerms>
void matmul_amx(ThreadPool& pool, const float* x, int64_t M, const TensorView& w, const TensorView* bias, float* y) {
  matmul_amx_impl<kTerms>(pool, x, M, w, bias, y, Output{});
}

template <int kTerms>
void gate_up_silu_amx(ThreadPool& pool, const float* x, int64_t M, const TensorView& w, float* out) {
  matmul_amx_impl<kTerms>(pool, x, M, w, nullptr, out, Output{Output::silu_pairs, {}, {}});
}

// The whole MLP: y = (silu(x gate^T) * (x up^T)) down^T (+ b_down). With one term, M >=
// kMinRows, a bf16 down and D % 32 == 0, silu(gate) * up goes straight into the down matmul's x tiles (bf16,
// as that matmul would round and pack it), so hb is neither written nor read; otherwise
// gate_up_silu into hb, then matmul. The same bits either way.
template <int kTerms>
void mlp_amx(ThreadPool& pool, const float* x, int64_t M, const TensorView& w_gate_up, const TensorView& w_down,
             const TensorView* b_down, float* hb, float* y) {
  const int64_t F = w_gate_up.rows / 2;
  if (kTerms != 1 || M < kMinRows || w_down.dtype != DType::bf16 || w_down.rows % 32 != 0 || w_down.cols != F) {
    gate_up_silu_amx<kTerms>(pool, x, M, w_gate_up, hb);
    return matmul_amx<kTerms>(pool, hb, M, w_down, b_down, y);
  }
  thread_local Scratch<uint16_t> h_tiles;
  uint16_t* hp = h_tiles.get((M + 15) / 16 * F * 16);
  Output first{Output::silu_packed, {}, {}};
  first.packed = hp;
  matmul_amx_impl<1>(pool, x, M, w_gate_up, nullptr, nullptr, first);
  Output second;
  second.x_packed = hp;
  matmul_amx_impl<1>(pool, nullptr, M, w_down, b_down, y, second);
}

template <int kTerms>
void matmul_qkv_amx(ThreadPool& pool, const float* x, int64_t M, const TensorView& w, int64_t nq, int64_t nkv, float* q,
                    float* k, float* v) {
  matmul_amx_impl<kTerms>(pool, x, M, w, nullptr, nullptr, Output{Output::split, {q, k, v}, {nq, nkv, nkv}});
}

// q, k and v can go in one matmul_qkv: each in Layout::amx_tiles, the same K, k and v the same
// shape, every part a multiple of 32 rows (the fused matmul's blocks never straddle two parts).
bool can_stack_qkv(const TensorView& wq, const TensorView& wk, const TensorView& wv) {
  return can_pack_amx_tiles(wq) && can_pack_amx_tiles(wk) && can_pack_amx_tiles(wv) && wq.rows % 32 == 0 &&
         wk.rows % 32 == 0 && wk.rows == wv.rows && wq.cols == wk.cols && wk.cols == wv.cols;
}

template <int kTerms>
CpuKernels amx_table(const char* name) {
  CpuKernels k = cpu_avx512_kernels();
  k.name = name;
  k.matmul = matmul_amx<kTerms>;
  k.packed_layout = Layout::amx_tiles;
  k.can_pack = can_pack_amx_tiles;
  k.pack = pack_amx_tiles;
  static const CpuFusions fusions = {can_pack_amx_gate_up, pack_amx_gate_up, gate_up_silu_amx<kTerms>,
                                     mlp_amx<kTerms>, can_stack_qkv, matmul_qkv_amx<kTerms>};
  k.fusions = &fusions;
  k.paged_attention = paged_attention_amx;
  return k;
}

}  // namespace

const CpuKernels& cpu_amx_kernels() {
  static const CpuKernels table = amx_table<1>("amx");
  return table;
}

const CpuKernels& cpu_amx_exact_kernels() {
  static const CpuKernels table = amx_table<2>("amx-exact");
  return table;
}

const CpuKernels& cpu_amx_bf16_kernels() {
  static const CpuKernels table = amx_table<1>("amx-bf16");
  return table;
}

}  // namespace llm::cpu
