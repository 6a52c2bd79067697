// cpu-avx512-bf16.cc: the avx512-bf16 kernel path: the AVX-512 table with the matmul on
// vdpbf16ps (AVX512_BF16), for CPUs that have it and no AMX.
//
// y[M, N] = x[M, K] @ w[N, K]^T (+ bias) for bf16 w, on the layout vdpbf16ps is made for:
// Layout::bf16_pairs (tensor-view.h), 16 output columns in the lanes and pairs of K columns in
// each lane, so x is broadcast (one pair, 32 bits) and every product lands where its output lives:
// no horizontal sums, and a vector of weights serves MB rows of x. The CPU runner converts its
// weights at load (pack_bf16_pairs). Row-major bf16 weights give the same bits: for several rows
// of x they are converted here a chunk of a panel at a time into a per-thread buffer and run by
// the same tiles; for one row (gemv_rows) 16 rows of 16 pairs are transposed in registers and
// used at once, with a software prefetch two lines ahead on each of the 16 streams.
// x is rounded to bf16 once per call (round to nearest even, |dx| <= 2^-9 |x|, as the amx path's
// one term), into xb[M][Kp], Kp = K rounded up to 32, zero-padded.
// Register tile: MB rows of x by NB blocks of 16 columns, MB x NB accumulators; per pair of K
// columns NB weight loads, MB broadcasts and MB x NB vdpbf16ps. Work items are panels of kNB
// blocks (at M = 1, kGemvNB) by blocks of kBlockM rows of x; within an item, K goes in chunks of
// kChunk pairs, each chunk's weights read from memory once and from L1/L2 for every tile of rows
// after the first, the accumulators kept in a per-thread buffer between chunks (an fp32 store and
// load: exact). Threads split the items: N, and M where there are more rows than kBlockM.
// Stays true: y[m, n] is the sum over the pairs p = 0, 1, ... in order, from zero, of
// vdpbf16ps's pair products, then + bias[n]: it does not depend on M, on the other rows of x, on
// the tile or the chunk that computed it, or on the weights' layout. Preemption and
// disaggregation rely on it (test-kernels-fast). Only x is rounded; bf16 x bf16 products are exact
// in fp32 and sums are fp32 (bounds in test-kernels-fast.cc). Weights that are not bf16 go to the
// AVX-512 matmul with x as it is.
// The fusions (CpuFusions) run on the same tiles and differ only in where a finished tile goes:
// gate and up packed with their 16-row blocks alternating, so a tile holds a gate block and its up
// block and stores silu(gate) * up (the AVX-512 silu_mul's vector code); q, k and v packed one after
// another, each block stored to the matrix it belongs to.
// Compiled with the AVX-512 flags and -mavx512bf16 (CMakeLists.txt); called only when
// cpu_isa().avx512_bf16 is set.
#include <immintrin.h>

#include <cstring>

#include "cpu-avx512-simd.h"
#include "cpu-paths.h"
#include "cpu-scratch.h"
#include "cpu-weights.h"

namespace llm::cpu {

namespace {

constexpr int kMB = 4;              // 4 x 6 accumulators + 6 w + 1 x registers of 32
constexpr int kNB = 6;
constexpr int kGemvNB = 8;          // M = 1: blocks of 16 columns per tile and per work item
constexpr int64_t kBlockM = 64;     // rows of x per work item
constexpr int64_t kChunk = 256;     // pairs of K columns per chunk: kNB blocks of it are 96 KiB
// Row tiles per chunk from which the next chunk is prefetched while they run (below it the matmul
// is bound by memory, and the prefetches only compete with the demand stream; with more than
// kBlockM rows, prefill, the hardware's prefetch keeps up).
constexpr int64_t kPrefetchMinTiles = 6;

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

// r[e] = element e (32 bits) of the 16 rows r[0..15]: a 16 x 16 transpose, in place.
inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // r[4 i + j], 128-bit lane l: element 4 l + j of rows 4 i .. 4 i + 3.
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  // Then, for each j, the 4 x 4 transpose of the lanes of r[j], r[4 + j], r[8 + j], r[12 + j].
  for (int j = 0; j < 4; ++j) {
    const __m512i u0 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x44), u1 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xee);
    const __m512i u2 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x44), u3 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xee);
    t[j] = _mm512_shuffle_i32x4(u0, u2, 0x88);
    t[4 + j] = _mm512_shuffle_i32x4(u0, u2, 0xdd);
    t[8 + j] = _mm512_shuffle_i32x4(u1, u3, 0x88);
    t[12 + j] = _mm512_shuffle_i32x4(u1, u3, 0xdd);
  }
  for (int e = 0; e < 16; ++e) r[e] = t[e];
}

// Pairs [p0, p1) of blocks [b0, b1) of row-major w (N x K bf16) in Layout::bf16_pairs order
// into out (block stride 32 (p1 - p0)); p0 a multiple of 16. Rows past N and the column past an
// odd K are zero. 16 pairs (32 columns) of 16 rows at a time: 16 loads, one transpose of their
// 32-bit pairs.
void pack_blocks(const uint16_t* w, int64_t N, int64_t K, int64_t b0, int64_t b1, int64_t p0, int64_t p1,
                 uint16_t* out) {
  for (int64_t b = b0; b < b1; ++b) {
    uint16_t* dst = out + (b - b0) * 32 * (p1 - p0);
    const int64_t r0 = b * 16, live = min_i64(16, N - r0);
    for (int64_t p = p0; p < p1; p += 16) {
      const int64_t cols = min_i64(32, K - 2 * p);
      const __mmask32 mask = static_cast<__mmask32>(cols >= 32 ? 0xffffffffu : (1u << cols) - 1);
      __m512i r[16];
      for (int64_t i = 0; i < 16; ++i)
        r[i] = i < live ? _mm512_maskz_loadu_epi16(mask, w + (r0 + i) * K + 2 * p) : _mm512_setzero_si512();
      transpose16(r);
      const int64_t n = min_i64(16, p1 - p);
      for (int64_t e = 0; e < n; ++e) _mm512_storeu_si512(dst + (p - p0 + e) * 32, r[e]);
    }
  }
}

// Weight blocks in Layout::bf16_pairs order: pair p of block n at w + n * bs + (p - p_base) * 32.
struct Blocks {
  const uint16_t* w;
  int64_t bs;
  int64_t p_base;
  const uint16_t* at(int n, int64_t p) const { return w + n * bs + (p - p_base) * 32; }
};

// The packed weights of a chunk, as 64-byte lines (a pair of a block is one line): line i is pair
// p0 + i % (p1 - p0) of block i / (p1 - p0) from w (block stride bs elements); [l0, l1) are the
// lines one tile prefetches.
struct ChunkLines {
  const uint16_t* w = nullptr;
  int64_t bs = 0;
  int64_t p0 = 0, p1 = 0;
  int64_t l0 = 0, l1 = 0;
  void prefetch(int64_t i) const {
    const int64_t per = p1 - p0;
    _mm_prefetch(reinterpret_cast<const char*>(w + (i / per) * bs + (p0 + i % per) * 32), _MM_HINT_T0);
  }
};

// acc[m][n] (+)= the pair products of xb's rows m < MB (row stride Kp) and weight blocks n < NB
// over pairs [p0, p1), in order. Meanwhile the lines of `next` are prefetched, a few per pair.
template <int MB, int NB>
inline void tile(const uint16_t* xb, int64_t Kp, const Blocks& wb, int64_t p0, int64_t p1, __m512 (&acc)[MB][NB],
                 const ChunkLines& next) {
  const int64_t per_pair = next.l1 > next.l0 ? (next.l1 - next.l0 + (p1 - p0) - 1) / (p1 - p0) : 0;
  int64_t line = next.l0;
  for (int64_t p = p0; p < p1; ++p) {
    for (int64_t i = 0; i < per_pair && line < next.l1; ++i) next.prefetch(line++);
    __m512bh wv[NB];
    for (int n = 0; n < NB; ++n) wv[n] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(wb.at(n, p)));
    for (int m = 0; m < MB; ++m) {
      int32_t pair;
      std::memcpy(&pair, xb + m * Kp + 2 * p, 4);
      const __m512bh xv = reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair));
      for (int n = 0; n < NB; ++n) acc[m][n] = _mm512_dpbf16_ps(acc[m][n], xv, wv[n]);
    }
  }
}

constexpr int64_t kPartStride = kGemvNB * 16;  // floats per row of x in a work item's partial sums

// Where the product goes. plain: y[M, N] (+ bias). silu_pairs (gate_up_silu: w from
// pack_gate_up_pairs, no bias): y[M, N / 2] = silu(gate) * up, each gate block combined with the
// up block after it where they are stored, with the AVX-512 path's silu_mul arithmetic. split
// (matmul_qkv: three matrices stacked, no bias): columns go to part[0..2][M, width[p]] in turn
// (widths multiples of 16, so no block straddles two parts), y unused.
struct Output {
  enum Kind { plain, silu_pairs, split } kind = plain;
  float* part[3] = {};
  int64_t width[3] = {};
};

// What one tile works on besides its weights: rows [row0, row0 + MB) of x (xb: row row0), the
// chunk [p0, p1) of P pairs, where its sums wait between chunks (part: a row of x every
// kPartStride floats), and the output (columns from col0 of N) with the bias of its columns
// (nullptr: none).
struct TileArgs {
  const uint16_t* xb;
  int64_t Kp, p0, p1, P;
  float* part;
  float* y;
  int64_t row0, N, col0;
  const float* bias;
  const Output* out;
};

// The tile's finished sums: acc + bias (+ 0 without one, so that -0 turns +0 as an unfused
// matmul's store does) to where out puts them; columns past N are not written.
template <int MB, int NB>
void store_tile(const TileArgs& a, __m512 (&acc)[MB][NB]) {
  const Output& o = *a.out;
  if (o.kind == Output::silu_pairs) {
    const int64_t F = a.N / 2;
    const __m512 zero = _mm512_setzero_ps();
    for (int n = 0; n + 1 < NB; n += 2) {
      const int64_t f = (a.col0 + n * 16) / 2;
      for (int m = 0; m < MB; ++m)
        _mm512_storeu_ps(a.y + (a.row0 + m) * F + f,
                         SimdKernels<Avx512>::silu_mul_v(_mm512_add_ps(acc[m][n], zero), _mm512_add_ps(acc[m][n + 1], zero)));
    }
    return;
  }
  for (int n = 0; n < NB; ++n) {
    const int64_t c = a.col0 + n * 16;
    const int64_t live = min_i64(16, a.N - c);
    const __mmask16 mask = static_cast<__mmask16>(live >= 16 ? 0xffff : (1u << live) - 1);
    const __m512 b = a.bias ? _mm512_loadu_ps(a.bias + n * 16) : _mm512_setzero_ps();
    float* dst = a.y + a.row0 * a.N + c;
    int64_t stride = a.N;
    if (o.kind == Output::split) {
      int64_t p = 0, begin = 0;
      while (c >= begin + o.width[p]) begin += o.width[p++];
      dst = o.part[p] + a.row0 * o.width[p] + (c - begin);
      stride = o.width[p];
    }
    for (int m = 0; m < MB; ++m) _mm512_mask_storeu_ps(dst + m * stride, mask, _mm512_add_ps(acc[m][n], b));
  }
}

// One tile of MB rows and NB blocks over one chunk: its accumulators start from zero (the first
// chunk) or from part, and go to part (not the last chunk) or to the output (the last).
template <int MB, int NB>
void run_tile(const Blocks& wb, const TileArgs& a, const ChunkLines& next) {
  __m512 acc[MB][NB];
  for (int m = 0; m < MB; ++m)
    for (int n = 0; n < NB; ++n) acc[m][n] = a.p0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(a.part + m * kPartStride + n * 16);
  tile<MB, NB>(a.xb, a.Kp, wb, a.p0, a.p1, acc, next);
  if (a.p1 < a.P) {
    for (int m = 0; m < MB; ++m)
      for (int n = 0; n < NB; ++n) _mm512_storeu_ps(a.part + m * kPartStride + n * 16, acc[m][n]);
    return;
  }
  store_tile<MB, NB>(a, acc);
}

// run_tile<mb, nb> for runtime mb in [1, MB] and nb in [1, NB].
template <int NB, int MB>
void run_tile_rows(int mb, const Blocks& wb, const TileArgs& a, const ChunkLines& next) {
  if (mb == MB) return run_tile<MB, NB>(wb, a, next);
  if constexpr (MB > 1) run_tile_rows<NB, MB - 1>(mb, wb, a, next);
}
template <int NB, int MB>
void run_tile_any(int nb, int mb, const Blocks& wb, const TileArgs& a, const ChunkLines& next = ChunkLines{}) {
  if (nb == NB) return run_tile_rows<NB, MB>(mb, wb, a, next);
  if constexpr (NB > 1) run_tile_any<NB - 1, MB>(nb, mb, wb, a, next);
}

// The GEMV on row-major weights: y[n] for the NB blocks of 16 rows from block b (+ bias, columns
// past N not written), each 16 pairs of 16 rows loaded and transposed in registers into
// Layout::bf16_pairs order and summed at once: the same pair products in the same order as
// tile<1, NB> on packed weights, with no copy of the weights.
template <int NB>
void gemv_rows(const uint16_t* xb, const uint16_t* w, int64_t N, int64_t K, int64_t b, const float* bias, float* y) {
  const int64_t P = (K + 1) / 2;
  __m512 acc[NB];
  for (int n = 0; n < NB; ++n) acc[n] = _mm512_setzero_ps();
  for (int64_t p = 0; p < P; p += 16) {
    const int64_t cols = min_i64(32, K - 2 * p), count = min_i64(16, P - p);
    const __mmask32 mask = static_cast<__mmask32>(cols >= 32 ? 0xffffffffu : (1u << cols) - 1);
    for (int n = 0; n < NB; ++n) {
      const int64_t r0 = (b + n) * 16, live = min_i64(16, N - r0);
      __m512i r[16];
      for (int64_t i = 0; i < 16; ++i) {
        if (i >= live) { r[i] = _mm512_setzero_si512(); continue; }
        _mm_prefetch(reinterpret_cast<const char*>(w + (r0 + i) * K + 2 * p + 64), _MM_HINT_T0);
        r[i] = _mm512_maskz_loadu_epi16(mask, w + (r0 + i) * K + 2 * p);
      }
      transpose16(r);
      for (int64_t e = 0; e < count; ++e) {
        int32_t pair;
        std::memcpy(&pair, xb + 2 * (p + e), 4);
        acc[n] = _mm512_dpbf16_ps(acc[n], reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair)), reinterpret_cast<__m512bh>(r[e]));
      }
    }
  }
  for (int n = 0; n < NB; ++n) {
    const int64_t c = (b + n) * 16, live = min_i64(16, N - c);
    const __m512 bv = bias ? _mm512_loadu_ps(bias + n * 16) : _mm512_setzero_ps();
    _mm512_mask_storeu_ps(y + c, static_cast<__mmask16>(live >= 16 ? 0xffff : (1u << live) - 1), _mm512_add_ps(acc[n], bv));
  }
}

// The matmul, and the fused ones' (out.kind other than plain: w in Layout::bf16_pairs, no bias).
void matmul_bf16_impl(ThreadPool& pool, const float* x, int64_t M, const TensorView& w, const TensorView* bias, float* y,
                      const Output& out) {
  if (M <= 0) return;
  const bool pairs = w.layout == Layout::bf16_pairs;
  if (out.kind == Output::plain && (w.dtype != DType::bf16 || (w.layout != Layout::row_major && !pairs)))
    return matmul_avx512(pool, x, M, w, bias, y);
  const int64_t N = w.rows, K = w.cols, Kp = (K + 31) / 32 * 32;
  const int64_t P = (K + 1) / 2, bs = 32 * P;  // pairs; block stride in elements
  thread_local Scratch<uint16_t> xb_buf;
  uint16_t* xb = xb_buf.get(M * Kp);
  if (M * K < (int64_t{1} << 16)) round_rows(x, K, Kp, 0, M, xb);
  else pool.parallel_for(M, [&](int64_t m0, int64_t m1) { round_rows(x, K, Kp, m0, m1, xb); });
  const uint16_t* wd = static_cast<const uint16_t*>(w.data);
  const bool has_bias = bias && bias->present();
  const int64_t blocks = (N + 15) / 16;
  // Blocks per work item, and pairs per chunk. The GEMV reads K in one go, straight from memory:
  // packed weights by tile<1, kGemvNB>, row-major ones by gemv_rows.
  const int64_t panel = M == 1 ? kGemvNB : kNB;
  const int64_t chunk = M == 1 ? P : kChunk;
  const int64_t m_blocks = (M + kBlockM - 1) / kBlockM, panels = (blocks + panel - 1) / panel;
  pool.parallel_for(panels * m_blocks, [&](int64_t begin, int64_t end) {
    thread_local Scratch<uint16_t> chunk_buf;
    thread_local Scratch<float> part_buf;
    float* part = P > chunk ? part_buf.get(kBlockM * kPartStride) : nullptr;
    alignas(64) float b[kGemvNB * 16];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b0 = item / m_blocks * panel, b1 = min_i64(blocks, b0 + panel);
      const int64_t m0 = item % m_blocks * kBlockM, m1 = min_i64(M, m0 + kBlockM);
      const int nbl = static_cast<int>(b1 - b0);
      const float* bp = nullptr;
      if (has_bias) {
        for (int64_t n = b0 * 16; n < b1 * 16; ++n) b[n - b0 * 16] = n < N ? element_f32(bias->dtype, bias->data, n) : 0.0f;
        bp = b;
      }
      if (M == 1 && !pairs) {
        for (int64_t n = 0; n < nbl; ++n) gemv_rows<1>(xb, wd, N, K, b0 + n, bp ? bp + n * 16 : nullptr, y);
        continue;
      }
      for (int64_t p0 = 0; p0 < P; p0 += chunk) {
        const int64_t p1 = min_i64(P, p0 + chunk);
        Blocks wb{wd + b0 * bs, bs, 0};
        if (!pairs) {  // row-major: this chunk of the panel into bf16_pairs order first
          uint16_t* packed = chunk_buf.get(panel * 32 * chunk);
          pack_blocks(wd, N, K, b0, b1, p0, p1, packed);
          wb = Blocks{packed, 32 * (p1 - p0), p0};
        }
        // Batched decode (kPrefetchMinTiles to kBlockM rows): what this thread reads next,
        // prefetched a share per row tile, so that it streams from memory while the tiles compute
        // from the caches (else the first tile of every chunk waits on memory): the panel's next
        // chunk, else the next item's first.
        const int64_t tiles = (m1 - m0 + kMB - 1) / kMB;
        ChunkLines next;
        int64_t next_blocks = 0;
        if (pairs && m_blocks == 1 && tiles >= kPrefetchMinTiles) {
          if (p1 < P) {
            next = ChunkLines{wd + b0 * bs, bs, p1, min_i64(P, p1 + chunk)};
            next_blocks = b1 - b0;
          } else if (item + 1 < end) {
            const int64_t nb0 = (item + 1) * panel;
            next = ChunkLines{wd + nb0 * bs, bs, 0, min_i64(P, chunk)};
            next_blocks = min_i64(blocks, nb0 + panel) - nb0;
          }
        }
        const int64_t lines = next_blocks * (next.p1 - next.p0);
        for (int64_t m = m0; m < m1; m += kMB) {
          const int64_t t = (m - m0) / kMB;
          next.l0 = t * lines / tiles;
          next.l1 = (t + 1) * lines / tiles;
          const int mb = static_cast<int>(min_i64(kMB, m1 - m));
          const TileArgs a{xb + m * Kp, Kp, p0, p1, P, part ? part + (m - m0) * kPartStride : nullptr, y, m, N, b0 * 16, bp, &out};
          if (M == 1) run_tile_any<kGemvNB, 1>(nbl, 1, wb, a);
          else run_tile_any<kNB, kMB>(nbl, mb, wb, a, next);
        }
      }
    }
  });
}

void matmul_bf16(ThreadPool& pool, const float* x, int64_t M, const TensorView& w, const TensorView* bias, float* y) {
  matmul_bf16_impl(pool, x, M, w, bias, y, Output{});
}

TensorView pack_bf16_pairs(const TensorView& w, uint16_t* out) {
  pack_blocks(static_cast<const uint16_t*>(w.data), w.rows, w.cols, 0, w.rows / 16, 0, w.cols / 2, out);
  TensorView packed = w;
  packed.data = out;
  packed.layout = Layout::bf16_pairs;
  return packed;
}

// ---- the fusions (CpuFusions) on Layout::bf16_pairs ----

// gate and up packed together: the same shape F x K, each can_pack_bf16_pairs; 16-row blocks
// alternate, gate rows [16 j, 16 j + 16) at block 2 j and the same rows of up at block 2 j + 1. The
// work items' panels hold an even number of blocks, so a gate block and its up block always meet
// in one tile.
bool can_pack_gate_up_pairs(const TensorView& gate, const TensorView& up) {
  return can_pack_bf16_pairs(gate) && can_pack_bf16_pairs(up) && gate.rows == up.rows && gate.cols == up.cols;
}

TensorView pack_gate_up_pairs(const TensorView& gate, const TensorView& up, uint16_t* out) {
  const int64_t K = gate.cols, bs = 16 * K;  // a block of 16 rows, in either layout
  for (int64_t b = 0; b < gate.rows / 16; ++b) {
    pack_blocks(static_cast<const uint16_t*>(gate.data) + b * bs, 16, K, 0, 1, 0, K / 2, out + 2 * b * bs);
    pack_blocks(static_cast<const uint16_t*>(up.data) + b * bs, 16, K, 0, 1, 0, K / 2, out + (2 * b + 1) * bs);
  }
  TensorView packed = gate;
  packed.data = out;
  packed.rows = 2 * gate.rows;
  packed.layout = Layout::bf16_pairs;
  return packed;
}

void gate_up_silu_bf16(ThreadPool& pool, const float* x, int64_t M, const TensorView& w, float* out) {
  matmul_bf16_impl(pool, x, M, w, nullptr, out, Output{Output::silu_pairs});
}

// Gate/up with silu into hb, then down: the down matmul rounds hb to bf16 as any x.
void mlp_bf16(ThreadPool& pool, const float* x, int64_t M, const TensorView& w_gate_up, const TensorView& w_down,
              const TensorView* b_down, float* hb, float* y) {
  gate_up_silu_bf16(pool, x, M, w_gate_up, hb);
  matmul_bf16(pool, hb, M, w_down, b_down, y);
}

// q, k and v in one matmul: each can_pack_bf16_pairs (so every part is whole blocks), the same
// K, k and v the same shape.
bool can_stack_qkv_pairs(const TensorView& wq, const TensorView& wk, const TensorView& wv) {
  return can_pack_bf16_pairs(wq) && can_pack_bf16_pairs(wk) && can_pack_bf16_pairs(wv) && wk.rows == wv.rows &&
         wq.cols == wk.cols && wk.cols == wv.cols;
}

void matmul_qkv_bf16(ThreadPool& pool, const float* x, int64_t M, const TensorView& w, int64_t nq, int64_t nkv, float* q,
                     float* k, float* v) {
  matmul_bf16_impl(pool, x, M, w, nullptr, nullptr, Output{Output::split, {q, k, v}, {nq, nkv, nkv}});
}

}  // namespace

const CpuKernels& cpu_avx512_bf16_kernels() {
  static const CpuKernels table = [] {
    CpuKernels k = cpu_avx512_kernels();
    k.name = "avx512-bf16";
    k.matmul = matmul_bf16;
    k.packed_layout = Layout::bf16_pairs;
    k.can_pack = can_pack_bf16_pairs;
    k.pack = pack_bf16_pairs;
    static const CpuFusions fusions = {can_pack_gate_up_pairs, pack_gate_up_pairs, gate_up_silu_bf16,
                                       mlp_bf16, can_stack_qkv_pairs, matmul_qkv_bf16};
    k.fusions = &fusions;
    return k;
  }();
  return table;
}

}  // namespace llm::cpu
