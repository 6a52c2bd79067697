// cpu-simd-kernels.h: the vectorized CPU kernels, written once over a SIMD type S and
// instantiated by cpu-avx2.cc (S = 8 fp32 lanes) and cpu-avx512.cc (S = 16 lanes), each compiled
// with its own -m flags.
//
// Owns: matmul (fp32 activations and accumulation, f32/f16/bf16 weights read in place),
// rmsnorm, silu_mul and paged_attention (tiled, online softmax). rope, embedding and
// cache_write stay the reference entries (a few rows per step each).
// Stays true: results match the reference kernels within the bounds in test-kernels-fast.cc;
// only summation order differs (no reduced-precision arithmetic here).
//
// Include only from a file compiled for S's ISA, and only there: everything below sits in an
// anonymous namespace so that no function compiled with wide-vector flags can be picked by the
// linker for a caller on the baseline path. For the same reason this code keeps away from
// out-of-line library templates (std::vector and friends): scratch memory is cpu-scratch.h.
//
// S provides: V (a vector of W floats), M (a lane mask), kMB x kNB (the matmul register tile),
// zero, set1, load, store, fmadd(a, b, c) = a * b + c, mul, add, sub, max, min, hsum, hmax,
// round (to nearest), pow2n (2^n for integral n in [-126, 127]), lt (a < b lane mask),
// select(m, a, b) (m ? a : b), iota (0, 1, ..., W - 1), load_bf16, load_f16 (W elements -> V).
#pragma once

#include <cmath>
#include <cstring>

#include "cpu-kernels.h"
#include "cpu-scratch.h"

namespace llm::cpu {
namespace {

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Element i of a weight/norm/bias buffer of type DT as fp32.
template <DType DT>
float scalar_at(const void* p, int64_t i) {
  if constexpr (DT == DType::f32) {
    return static_cast<const float*>(p)[i];
  } else if constexpr (DT == DType::bf16) {
    const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  } else {
    return _cvtsh_ss(static_cast<const uint16_t*>(p)[i]);
  }
}

inline float scalar_any(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::f32: return scalar_at<DType::f32>(p, i);
    case DType::f16: return scalar_at<DType::f16>(p, i);
    case DType::bf16: return scalar_at<DType::bf16>(p, i);
  }
  return 0.0f;
}

template <class S>
struct SimdKernels {
  using V = typename S::V;
  static constexpr int W = S::W;

  using M_t = typename S::M;

  // exp(x), relative error < 3e-7 for x in [-87, 88]; below -87.3 (and -inf) it is 0, above 88
  // it is exp(88). Cephes expf: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-6 polynomial.
  static V exp(V x) {
    const V underflow = S::set1(-87.33654f);
    const M_t tiny = S::lt(x, underflow);
    x = S::min(S::max(x, underflow), S::set1(88.0f));
    const V n = S::round(S::mul(x, S::set1(1.44269504088896341f)));
    V r = S::fmadd(n, S::set1(-0.693359375f), x);
    r = S::fmadd(n, S::set1(2.12194440e-4f), r);
    V p = S::set1(1.9875691500e-4f);
    p = S::fmadd(p, r, S::set1(1.3981999507e-3f));
    p = S::fmadd(p, r, S::set1(8.3334519073e-3f));
    p = S::fmadd(p, r, S::set1(4.1665795894e-2f));
    p = S::fmadd(p, r, S::set1(1.6666665459e-1f));
    p = S::fmadd(p, r, S::set1(5.0000001201e-1f));
    p = S::fmadd(p, S::mul(r, r), S::add(r, S::set1(1.0f)));
    return S::select(tiny, S::zero(), S::mul(p, S::pow2n(n)));
  }

  // W elements of a DT buffer from element i, as fp32.
  template <DType DT>
  static V load_as_f32(const void* p, int64_t i) {
    if constexpr (DT == DType::f32) return S::load(static_cast<const float*>(p) + i);
    else if constexpr (DT == DType::bf16) return S::load_bf16(static_cast<const uint16_t*>(p) + i);
    else return S::load_f16(static_cast<const uint16_t*>(p) + i);
  }

  // ---------------------------------------------------------------------------------------------
  // matmul: y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N])
  //
  // Register tile: MB rows of x by NB rows of w, MB * NB vector accumulators over K, reduced at
  // the end. The last K % W columns go through a zero-padded copy. Work items are
  // (panel of kPanelN weight rows) x (kBlockM rows of x), panel-major: a thread's contiguous
  // range streams each weight panel from memory once and re-reads it from L2 for the next
  // block of x rows. At M = 1 this is the decode GEMV: every weight byte is read once, by one
  // of the threads, in long sequential runs.

  static constexpr int64_t kPanelN = 64;
  static constexpr int64_t kBlockM = 64;

  // ahead: also prefetch the next NB weight rows (when they exist), one line of each per line
  // of this tile's rows, so that their streams are in flight before this tile ends (the decode
  // GEMV: the hardware prefetcher stops at every 4 KiB page, which is every row at K = 2048).
  template <DType DT, int MB, int NB>
  static void tile(const float* x, int64_t K, const void* w, int64_t n0, const float* bias, float* y,
                   int64_t N, bool ahead = false) {
    V acc[MB][NB];
    for (int m = 0; m < MB; ++m)
      for (int n = 0; n < NB; ++n) acc[m][n] = S::zero();
    const int64_t K_main = K - K % W;
    constexpr int64_t esize = DT == DType::f32 ? 4 : 2, line = 64 / esize;  // elements per line
    const char* next = static_cast<const char*>(w) + (n0 + NB) * K * esize;
    for (int64_t k = 0; k < K_main; k += W) {
      if (ahead && k % line == 0)
        for (int n = 0; n < NB; ++n) _mm_prefetch(next + (n * K + k) * esize, _MM_HINT_T0);
      V xv[MB];
      for (int m = 0; m < MB; ++m) xv[m] = S::load(x + m * K + k);
      for (int n = 0; n < NB; ++n) {
        const V wv = load_as_f32<DT>(w, (n0 + n) * K + k);
        for (int m = 0; m < MB; ++m) acc[m][n] = S::fmadd(xv[m], wv, acc[m][n]);
      }
    }
    if (K_main < K) {  // tail: zero-padded copies of the last K % W columns
      const int64_t rem = K - K_main, esize = DT == DType::f32 ? 4 : 2;
      alignas(64) float xt[MB][W];
      alignas(64) unsigned char wt[NB][W * 4];
      std::memset(xt, 0, sizeof(xt));
      std::memset(wt, 0, sizeof(wt));
      for (int m = 0; m < MB; ++m) std::memcpy(xt[m], x + m * K + K_main, static_cast<size_t>(rem * 4));
      for (int n = 0; n < NB; ++n)
        std::memcpy(wt[n], static_cast<const unsigned char*>(w) + ((n0 + n) * K + K_main) * esize,
                    static_cast<size_t>(rem * esize));
      for (int n = 0; n < NB; ++n) {
        const V wv = load_as_f32<DT>(wt[n], 0);
        for (int m = 0; m < MB; ++m) acc[m][n] = S::fmadd(S::load(xt[m]), wv, acc[m][n]);
      }
    }
    for (int m = 0; m < MB; ++m)
      for (int n = 0; n < NB; ++n) y[m * N + n0 + n] = S::hsum(acc[m][n]) + (bias ? bias[n] : 0.0f);
  }

  // tile<DT, mb, NB> for a runtime mb in [1, MB].
  template <DType DT, int NB, int MB = S::kMB>
  static void tile_rows(int mb, const float* x, int64_t K, const void* w, int64_t n0, const float* bias,
                        float* y, int64_t N, bool ahead = false) {
    if (mb == MB) return tile<DT, MB, NB>(x, K, w, n0, bias, y, N, ahead);
    if constexpr (MB > 1) tile_rows<DT, NB, MB - 1>(mb, x, K, w, n0, bias, y, N, ahead);
  }

  template <DType DT>
  static void matmul_typed(ThreadPool& pool, const float* x, int64_t M, const TensorView& w,
                           const TensorView* bias, float* y) {
    const int64_t N = w.rows, K = w.cols;
    const int64_t m_blocks = (M + kBlockM - 1) / kBlockM, panels = (N + kPanelN - 1) / kPanelN;
    pool.parallel_for(panels * m_blocks, [&](int64_t begin, int64_t end) {
      float bias_panel[kPanelN];
      for (int64_t item = begin; item < end; ++item) {
        const int64_t p0 = item / m_blocks * kPanelN, p1 = min64(N, p0 + kPanelN);
        const int64_t m0 = item % m_blocks * kBlockM, m1 = min64(M, m0 + kBlockM);
        const float* b = nullptr;
        if (bias && bias->present()) {
          for (int64_t n = p0; n < p1; ++n) bias_panel[n - p0] = scalar_any(bias->data, bias->dtype, n);
          b = bias_panel;
        }
        for (int64_t m = m0; m < m1; m += S::kMB) {
          const int mb = static_cast<int>(min64(S::kMB, m1 - m));
          const float* xm = x + m * K;
          float* ym = y + m * N;
          int64_t n = p0;
          for (; n + S::kNB <= p1; n += S::kNB)
            tile_rows<DT, S::kNB>(mb, xm, K, w.data, n, b ? b + (n - p0) : nullptr, ym, N,
                                  M <= S::kMB && n + 2 * S::kNB <= N);
          for (; n < p1; ++n) tile_rows<DT, 1>(mb, xm, K, w.data, n, b ? b + (n - p0) : nullptr, ym, N);
        }
      }
    });
  }

  static void matmul(ThreadPool& pool, const float* x, int64_t M, const TensorView& w,
                     const TensorView* bias, float* y) {
    if (M <= 0) return;
    switch (w.dtype) {
      case DType::f32: return matmul_typed<DType::f32>(pool, x, M, w, bias, y);
      case DType::f16: return matmul_typed<DType::f16>(pool, x, M, w, bias, y);
      case DType::bf16: return matmul_typed<DType::bf16>(pool, x, M, w, bias, y);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // rmsnorm: out[m, :] = x[m, :] / sqrt(mean(x[m, :]^2) + eps) * weight

  template <DType DT>
  static void rmsnorm_typed(ThreadPool& pool, const float* x, const void* g, float eps, int64_t M,
                            int64_t D, float* out) {
    const int64_t D_main = D - D % W;
    pool.parallel_for(M, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        const float* xm = x + m * D;
        float* om = out + m * D;
        V ss = S::zero();
        for (int64_t d = 0; d < D_main; d += W) ss = S::fmadd(S::load(xm + d), S::load(xm + d), ss);
        float sum = S::hsum(ss);
        for (int64_t d = D_main; d < D; ++d) sum += xm[d] * xm[d];
        const float inv_rms = 1.0f / std::sqrt(sum / static_cast<float>(D) + eps);
        const V inv = S::set1(inv_rms);
        for (int64_t d = 0; d < D_main; d += W)
          S::store(om + d, S::mul(S::mul(S::load(xm + d), inv), load_as_f32<DT>(g, d)));
        for (int64_t d = D_main; d < D; ++d) om[d] = xm[d] * inv_rms * scalar_at<DT>(g, d);
      }
    });
  }

  static void rmsnorm(ThreadPool& pool, const float* x, const TensorView& weight, float eps, int64_t M,
                      int64_t D, float* out) {
    switch (weight.dtype) {
      case DType::f32: return rmsnorm_typed<DType::f32>(pool, x, weight.data, eps, M, D, out);
      case DType::f16: return rmsnorm_typed<DType::f16>(pool, x, weight.data, eps, M, D, out);
      case DType::bf16: return rmsnorm_typed<DType::bf16>(pool, x, weight.data, eps, M, D, out);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // silu_mul: out = gate / (1 + exp(-gate)) * up

  // One vector of it (also the amx path's fused gate/up matmul, which must give the same bits).
  static V silu_mul_v(V g, V up) {
    const V sigmoid = S::div(S::set1(1.0f), S::add(S::set1(1.0f), exp(S::sub(S::zero(), g))));
    return S::mul(S::mul(g, sigmoid), up);
  }

  static void silu_mul(ThreadPool& pool, const float* gate, const float* up, float* out, int64_t n) {
    constexpr int64_t kChunk = 1024;  // every range but the last starts vector-aligned
    pool.parallel_for((n + kChunk - 1) / kChunk, [&](int64_t begin, int64_t end) {
      const int64_t i1 = min64(n, end * kChunk);
      int64_t i = begin * kChunk;
      for (; i + W <= i1; i += W) S::store(out + i, silu_mul_v(S::load(gate + i), S::load(up + i)));
      for (; i < i1; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
    });
  }

  // ---------------------------------------------------------------------------------------------
  // paged_attention: flash-attention style, one work item per (sequence, kv head, tile of query
  // tokens). The item's rows are every (query token, query head of this kv head) pair, so each
  // K/V row of the context is converted to fp32 once per item and used by all of them: at
  // decode (one token per sequence) that is once per step. Keys go by in chunks of C = kChunkVectors
  // x W (64 keys with AVX-512), so the softmax bookkeeping is paid once per C keys:
  //
  //   for each chunk of C keys j0..j0+C-1 (up to the tile's last query position):
  //     Kc, Vc = K, V rows of the chunk as fp32                        (each read once)
  //     for each row r:  s = scale * q_r . Kc^T, masked to [first_r, pos_r]
  //                      m' = max(m_r, max s);  p = exp(s - m')
  //                      l_r = l_r e^(m_r - m') + sum p;  O_r = O_r e^(m_r - m') + p Vc
  //   out_r = O_r / l_r
  //
  // Two layouts of the same arithmetic:
  //   few rows (decode, < kTransposeRows): per row, scores by dot products along head_dim, the
  //     row's maximum and sum by horizontal reductions.
  //   many rows (prefill): the item's q is transposed once (rows across vector lanes), so scores
  //     come out key-major, s^T[c] = a vector of rows, from broadcasts of K and no horizontal
  //     sum; the maxima, sums and rescales of all rows are then vector operations across keys.
  // Both accumulate O += P Vc with rows x head_dim vectors in registers (update_outputs).

  static constexpr int64_t kMaxRows = 64;        // query rows per item (tokens x heads per kv head)
  static constexpr int64_t kTransposeRows = 8;
  static constexpr int64_t kChunkVectors = 4;    // keys per chunk, in vectors of W
  static constexpr int64_t C = kChunkVectors * W;

  // O[r] += sum over c < n of P[r, c] Vc[c] for rows r0 .. r0 + NR, P[r, c] at p[r * prs + c * pcs]:
  // NR rows x DV vectors of head_dim held in registers over the keys, so each load of Vc serves
  // NR rows and each broadcast of P serves DV vectors.
  template <int NR, int DV>
  static void update_rows(float* o, const float* p, int64_t prs, int64_t pcs, const float* vc, int64_t r0, int64_t n,
                          int64_t hd) {
    for (int64_t d0 = 0; d0 < hd; d0 += DV * W) {
      V acc[NR][DV];
      for (int i = 0; i < NR; ++i)
        for (int v = 0; v < DV; ++v) acc[i][v] = S::load(o + (r0 + i) * hd + d0 + v * W);
      for (int64_t c = 0; c < n; ++c) {
        V vv[DV];
        for (int v = 0; v < DV; ++v) vv[v] = S::load(vc + c * hd + d0 + v * W);
        for (int i = 0; i < NR; ++i) {
          const V pb = S::set1(p[(r0 + i) * prs + c * pcs]);
          for (int v = 0; v < DV; ++v) acc[i][v] = S::fmadd(pb, vv[v], acc[i][v]);
        }
      }
      for (int i = 0; i < NR; ++i)
        for (int v = 0; v < DV; ++v) S::store(o + (r0 + i) * hd + d0 + v * W, acc[i][v]);
    }
  }

  template <int NR>
  static void update_block(float* o, const float* p, int64_t prs, int64_t pcs, const float* vc, int64_t r0, int64_t n,
                           int64_t hd) {
    const int64_t vectors = hd / W;
    if (vectors % 4 == 0) {
      update_rows<NR, 4>(o, p, prs, pcs, vc, r0, n, hd);
    } else if (vectors % 2 == 0) {
      update_rows<NR, 2>(o, p, prs, pcs, vc, r0, n, hd);
    } else {
      update_rows<NR, 1>(o, p, prs, pcs, vc, r0, n, hd);
    }
  }

  static void update_outputs(float* o, const float* p, int64_t prs, int64_t pcs, const float* vc, int64_t rows,
                             int64_t n, int64_t hd) {
    int64_t r0 = 0;
    for (; r0 + 4 <= rows; r0 += 4) update_block<4>(o, p, prs, pcs, vc, r0, n, hd);
    for (; r0 < rows; ++r0) update_block<1>(o, p, prs, pcs, vc, r0, n, hd);
  }

  // s^T[c * rp + r] = scale * q_r . Kc[c] for the chunk's keys c < C (keys past n have zero rows)
  // and every row vector: 4 keys x RB row vectors of sums in registers, from qt (hd x rp, the
  // item's q transposed) and broadcasts of Kc.
  template <int RB>
  static void scores_key_major(const float* qt, int64_t rp, const float* kc, int64_t hd, float scale, float* st) {
    const V sv = S::set1(scale);
    for (int64_t c0 = 0; c0 < C; c0 += 4)
      for (int64_t rv0 = 0; rv0 < rp; rv0 += RB * W) {
        V acc[4][RB];
        for (int k = 0; k < 4; ++k)
          for (int b = 0; b < RB; ++b) acc[k][b] = S::zero();
        for (int64_t d = 0; d < hd; ++d) {
          V qv[RB];
          for (int b = 0; b < RB; ++b) qv[b] = S::load(qt + d * rp + rv0 + b * W);
          for (int k = 0; k < 4; ++k) {
            const V kb = S::set1(kc[(c0 + k) * hd + d]);
            for (int b = 0; b < RB; ++b) acc[k][b] = S::fmadd(kb, qv[b], acc[k][b]);
          }
        }
        for (int k = 0; k < 4; ++k)
          for (int b = 0; b < RB; ++b) S::store(st + (c0 + k) * rp + rv0 + b * W, S::mul(acc[k][b], sv));
      }
  }

  template <DType DT>
  static void attention_typed(ThreadPool& pool, const float* q, const KVCacheView& cache, int64_t layer,
                              const AttentionBatch& batch, float* out) {
    const int64_t H = batch.num_heads, hd = cache.head_dim, Hkv = cache.num_kv_heads;
    const int64_t group = H / Hkv;
    const int64_t tile_tokens = max64(1, kMaxRows / group);
    // items_before[s]: work items of the sequences before s; items of s are (kv head, tile).
    thread_local Scratch<int64_t> index_buf;
    int64_t* items_before = index_buf.get(batch.num_seqs + 1);
    items_before[0] = 0;
    for (int64_t s = 0; s < batch.num_seqs; ++s) {
      const int64_t q_len = batch.query_start_loc[s + 1] - batch.query_start_loc[s];
      items_before[s + 1] = items_before[s] + Hkv * ((q_len + tile_tokens - 1) / tile_tokens);
    }
    pool.parallel_for(items_before[batch.num_seqs], [&](int64_t begin, int64_t end) {
      thread_local Scratch<float> buf;
      const int64_t rows_max = tile_tokens * group;
      const int64_t rp_max = (rows_max + W - 1) / W * W;  // rows rounded up to whole vectors
      float* kc = buf.get(2 * C * hd + rows_max * hd + C * rp_max + hd * rp_max + 5 * rp_max);  // (C, hd) K rows
      float* vc = kc + C * hd;            // (C, hd)        the chunk's V rows
      float* o = vc + C * hd;             // (rows, hd)     unnormalised outputs
      float* sc = o + rows_max * hd;      // (rows, C) or, key-major, (C, rp): scores, then weights
      float* qt = sc + C * rp_max;        // (hd, rp)       q transposed (key-major layout)
      float* m_run = qt + hd * rp_max;    // (rp)           running max
      float* l_run = m_run + rp_max;      // (rp)           running sum
      float* corr = l_run + rp_max;       // (rp)           this chunk's rescale of O
      float* first_f = corr + rp_max;     // (rp)           first key position a row sees
      float* pos_f = first_f + rp_max;    // (rp)           last key position a row sees (-1: padding)
      int64_t s = 0;
      for (int64_t item = begin; item < end; ++item) {
        while (items_before[s + 1] <= item) ++s;
        const int64_t local = item - items_before[s];
        const int64_t tiles = (items_before[s + 1] - items_before[s]) / Hkv;
        const int64_t kvh = local / tiles, tile_idx = local % tiles;
        const int64_t qsl = batch.query_start_loc[s], q_len = batch.query_start_loc[s + 1] - qsl;
        const int64_t t0 = qsl + tile_idx * tile_tokens, t1 = min64(qsl + q_len, t0 + tile_tokens);
        const int64_t pos0 = batch.seq_lens[s] - q_len + (t0 - qsl);  // position of token t0
        const int64_t rows = (t1 - t0) * group;
        const int32_t* block_table = batch.block_tables + s * batch.max_blocks_per_seq;
        // Row r = (token t0 + r / group, head kvh * group + r % group).
        auto row_pos = [&](int64_t r) { return pos0 + r / group; };
        auto row_first = [&](int64_t r) {
          return batch.sliding_window > 0 ? max64(0, row_pos(r) - batch.sliding_window + 1) : int64_t{0};
        };
        auto q_row = [&](int64_t r) { return q + ((t0 + r / group) * H + kvh * group + r % group) * hd; };
        const bool key_major = rows >= kTransposeRows;
        const int64_t rp = key_major ? (rows + W - 1) / W * W : rows;
        for (int64_t r = 0; r < rp; ++r) {
          m_run[r] = -INFINITY;
          l_run[r] = 0.0f;
        }
        std::memset(o, 0, static_cast<size_t>(rows * hd * 4));
        if (key_major) {
          for (int64_t r = 0; r < rp; ++r) {
            const float* qr = r < rows ? q_row(r) : nullptr;
            for (int64_t d = 0; d < hd; ++d) qt[d * rp + r] = qr ? qr[d] : 0.0f;
            first_f[r] = r < rows ? static_cast<float>(row_first(r)) : 0.0f;
            pos_f[r] = r < rows ? static_cast<float>(row_pos(r)) : -1.0f;
          }
        }
        const int64_t j_last = row_pos(rows - 1);
        for (int64_t j0 = row_first(0); j0 <= j_last; j0 += C) {
          const int64_t n = min64(C, j_last + 1 - j0);
          // Kc, Vc: the chunk's rows as fp32 (rows past n zeroed).
          for (int64_t c = 0; c < C; ++c) {
            float* kr = kc + c * hd;
            float* vr = vc + c * hd;
            if (c >= n) {
              std::memset(kr, 0, static_cast<size_t>(hd * 4));
              std::memset(vr, 0, static_cast<size_t>(hd * 4));
              continue;
            }
            const int64_t j = j0 + c;
            const int64_t block = block_table[j / cache.block_size], off = j % cache.block_size;
            const int64_t k_at = cache.offset(block, layer, 0, off) + kvh * hd;
            const int64_t v_at = cache.offset(block, layer, 1, off) + kvh * hd;
            for (int64_t d = 0; d < hd; d += W) {
              S::store(kr + d, load_as_f32<DT>(cache.data, k_at + d));
              S::store(vr + d, load_as_f32<DT>(cache.data, v_at + d));
            }
          }
          if (key_major) {
            key_major_chunk(qt, rp, kc, hd, batch.scale, j0, n, first_f, pos_f, sc, m_run, l_run, corr);
            for (int64_t r = 0; r < rows; ++r) {
              if (corr[r] == 1.0f) continue;
              float* orow = o + r * hd;
              for (int64_t d = 0; d < hd; d += W) S::store(orow + d, S::mul(S::load(orow + d), S::set1(corr[r])));
            }
            update_outputs(o, sc, 1, rp, vc, rows, n, hd);
            continue;
          }
          // Few rows: sc[r, c] = scale * q_r . Kc[c] by dot products along head_dim.
          for (int64_t r = 0; r < rows; ++r) {
            const float* qr = q_row(r);
            for (int64_t c = 0; c < C; ++c) {
              if (c >= n) {
                sc[r * C + c] = 0.0f;
                continue;
              }
              V acc = S::zero();
              for (int64_t d = 0; d < hd; d += W) acc = S::fmadd(S::load(qr + d), S::load(kc + c * hd + d), acc);
              sc[r * C + c] = S::hsum(acc) * batch.scale;
            }
          }
          // Online softmax update of every row that sees a key of this chunk.
          const int64_t nv = (n + W - 1) / W;  // vectors of keys holding the chunk's n keys
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t first = row_first(r), pos = row_pos(r);
            if (pos < j0 || first >= j0 + n) {  // sees no key of this chunk: weights 0
              for (int64_t v = 0; v < nv; ++v) S::store(sc + r * C + v * W, S::zero());
              continue;
            }
            const V neg_inf = S::set1(-INFINITY), first_v = S::set1(static_cast<float>(first)),
                    pos_v = S::set1(static_cast<float>(pos));
            V chunk_max = neg_inf;
            for (int64_t v = 0; v < nv; ++v) {  // mask keys outside [first, pos]: scores -> -inf
              const V key_pos = S::add(S::set1(static_cast<float>(j0 + v * W)), S::iota());
              V score = S::load(sc + r * C + v * W);
              score = S::select(S::lt(key_pos, first_v), neg_inf, score);
              score = S::select(S::lt(pos_v, key_pos), neg_inf, score);
              S::store(sc + r * C + v * W, score);
              chunk_max = S::max(chunk_max, score);
            }
            const float m_new = std::fmax(m_run[r], S::hmax(chunk_max));
            const float cr = std::exp(m_run[r] - m_new);
            V p_sum = S::zero();
            for (int64_t v = 0; v < nv; ++v) {
              const V p = exp(S::sub(S::load(sc + r * C + v * W), S::set1(m_new)));
              p_sum = S::add(p_sum, p);
              S::store(sc + r * C + v * W, p);
            }
            l_run[r] = l_run[r] * cr + S::hsum(p_sum);
            m_run[r] = m_new;
            float* orow = o + r * hd;
            if (cr != 1.0f)
              for (int64_t d = 0; d < hd; d += W) S::store(orow + d, S::mul(S::load(orow + d), S::set1(cr)));
          }
          // O += P Vc over the chunk's n keys (P = the weights in sc, 0 outside each row's keys).
          update_outputs(o, sc, C, 1, vc, rows, n, hd);
        }
        for (int64_t r = 0; r < rows; ++r) {
          float* dst = out + ((t0 + r / group) * H + kvh * group + r % group) * hd;
          const V inv = S::set1(1.0f / l_run[r]);
          for (int64_t d = 0; d < hd; d += W) S::store(dst + d, S::mul(S::load(o + r * hd + d), inv));
        }
      }
    });
  }

  // One chunk of keys [j0, j0 + n) for an item in the key-major layout: the scores s^T (C x rp),
  // masked to each row's [first, pos], the online softmax of every row at once (vectors of rows
  // across the keys), the weights left in st, and corr[r] = e^(m_old - m_new) for O's rescale.
  // A row that has seen no key yet keeps m = -inf, weights 0 and corr 0 (its O and l are 0).
  static void key_major_chunk(const float* qt, int64_t rp, const float* kc, int64_t hd, float scale, int64_t j0,
                              int64_t n, const float* first_f, const float* pos_f, float* st, float* m_run,
                              float* l_run, float* corr) {
    const int64_t rvs = rp / W;
    if (rvs % 4 == 0) {
      scores_key_major<4>(qt, rp, kc, hd, scale, st);
    } else if (rvs % 2 == 0) {
      scores_key_major<2>(qt, rp, kc, hd, scale, st);
    } else {
      scores_key_major<1>(qt, rp, kc, hd, scale, st);
    }
    const V neg_inf = S::set1(-INFINITY), lowest = S::set1(-3.0e38f);
    for (int64_t rv = 0; rv < rp; rv += W) {
      const V first = S::load(first_f + rv), pos = S::load(pos_f + rv), m_old = S::load(m_run + rv);
      V m_new = m_old;
      for (int64_t c = 0; c < n; ++c) {  // mask keys outside [first, pos]: scores -> -inf
        const V key = S::set1(static_cast<float>(j0 + c));
        V score = S::load(st + c * rp + rv);
        score = S::select(S::lt(key, first), neg_inf, score);
        score = S::select(S::lt(pos, key), neg_inf, score);
        S::store(st + c * rp + rv, score);
        m_new = S::max(m_new, score);
      }
      // Rows with no key so far subtract 0 instead of -inf (their weights and corr come out 0).
      const V m_safe = S::select(S::lt(m_new, lowest), S::zero(), m_new);
      V sum = S::zero();
      for (int64_t c = 0; c < n; ++c) {
        const V p = exp(S::sub(S::load(st + c * rp + rv), m_safe));
        sum = S::add(sum, p);
        S::store(st + c * rp + rv, p);
      }
      const V cr = exp(S::sub(m_old, m_safe));
      S::store(corr + rv, cr);
      S::store(l_run + rv, S::add(S::mul(S::load(l_run + rv), cr), sum));
      S::store(m_run + rv, m_new);
    }
  }

  static void paged_attention(ThreadPool& pool, const float* q, KVCacheView cache, int64_t layer,
                              const AttentionBatch& batch, float* out) {
    if (cache.head_dim % W != 0)  // every vector loop below runs whole vectors of head_dim
      return cpu_reference_kernels().paged_attention(pool, q, cache, layer, batch, out);
    switch (cache.dtype) {
      case DType::f32: return attention_typed<DType::f32>(pool, q, cache, layer, batch, out);
      case DType::f16: return attention_typed<DType::f16>(pool, q, cache, layer, batch, out);
      case DType::bf16: return attention_typed<DType::bf16>(pool, q, cache, layer, batch, out);
    }
  }

  // The reference table with every entry above replaced.
  static CpuKernels table(const char* name) {
    CpuKernels k = cpu_reference_kernels();
    k.name = name;
    k.matmul = matmul;
    k.rmsnorm = rmsnorm;
    k.silu_mul = silu_mul;
    k.paged_attention = paged_attention;
    return k;
  }
};

}  // namespace
}  // namespace llm::cpu
