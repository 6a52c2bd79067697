// cpu-amx-attention.cc: paged attention of the amx paths, prefill on AMX-BF16 tiles.
//
// A sequence with at least kMinTokens new tokens (a prefill or a prefill chunk) on a bf16 KV
// cache, with head_dim % 32 == 0 and <= 256, runs here; every other sequence (decode, a few
// tokens, f32/f16 caches, odd head dims) runs the AVX-512 paged_attention, in runs of
// consecutive sequences (sub-batches that share q, out and the absolute query offsets).
//
// Key-major, so that the softmax's vectors run along 16 queries and need no horizontal
// reductions: S^T = K Q^T and O^T += V^T P^T on the tiles. A thread packs the K and V^T of the
// (sequence, kv head) it works on into its own buffer (the keys its query tiles see, in chunks of
// 32; keys past them are zeros), then runs that kv head's query heads:
//   k_rows  [32 keys][head_dim]          A tiles of 16 keys x 32 dims (row stride head_dim)
//   v_t     [head_dim / 16][16 dims][32 keys]  A tiles of 16 dims x 32 keys
// A work item (attend_item) is (sequence, query head, 32 query tokens): Q^T as VNNI B tiles (16 dim pairs x 16
// queries x 2), then per chunk S^T in four C tiles (keys 0-15 / 16-31 x queries 0-15 / 16-31),
// the online softmax in AVX-512 (the AVX-512 path's exp; P^T written as VNNI B tiles), and
// O^T (fp32, [dim][32 queries]) loaded into C tiles, accumulated and stored back. The next
// chunk's S^T runs on the tiles while the vector units do this chunk's softmax.
// Precision: K and V are bf16 already, so their products are exact; q (times the scale) and P are
// split into two bf16 terms, v = hi + lo with hi = bf16(v), lo = bf16(v - hi), so each stands for
// its value to about 2^-17 relative (one term would keep 2^-9), and every product is summed in
// fp32. The results stay within the fp32 paths' bound against the reference (test-kernels-fast),
// and a prefill here and the decode steps on AVX-512 see the same attention up to fp32 rounding.
// Stays true: tiles are configured at the start of each thread's chunk of work and released at
// its end (cpu-amx-tiles.h); masked keys (after the row's position, before its sliding window,
// past seq_len) get weight 0, never NaN.
// Compiled with AVX-512 + AVX512_BF16 + AMX flags (CMakeLists.txt); called only from the amx
// tables (cpu-amx.cc), on a CPU with AMX.
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "cpu-amx-tiles.h"
#include "cpu-avx512-simd.h"
#include "cpu-paths.h"
#include "cpu-scratch.h"

namespace llm::cpu {

namespace {

using Vec = SimdKernels<Avx512>;

constexpr int64_t kMinTokens = 16;  // new tokens of a sequence for the AMX path
constexpr int64_t kMaxHeadDim = 256;

bool amx_shape(const KVCacheView& cache) {
  return cache.dtype == DType::bf16 && cache.head_dim % 32 == 0 && cache.head_dim <= kMaxHeadDim;
}

int64_t q_len_of(const AttentionBatch& b, int64_t s) { return b.query_start_loc[s + 1] - b.query_start_loc[s]; }

// hi = bf16(v), lo = bf16(v - hi), 16 values each.
inline void split_bf16(__m512 v, __m256i* hi, __m256i* lo) {
  *hi = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
  const __m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(*hi), 16));
  *lo = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_sub_ps(v, hf)));
}

// Packed keys of one (sequence, kv head): chunks of 32 keys, 64 hd bf16 per chunk (layout above).
int64_t chunk_elems(int64_t hd) { return 64 * hd; }

// Packs K and V^T of kv head kvh, keys [0, seq_len) (the rest of the last chunk: zeros), into kv
// (layout above).
void pack_kv(const KVCacheView& cache, int64_t layer, const int32_t* block_table, int64_t seq_len, int64_t kvh,
             uint16_t* kv) {
  const int64_t hd = cache.head_dim, chunks = (seq_len + 31) / 32, per = chunk_elems(hd);
  const uint16_t* pool = static_cast<const uint16_t*>(cache.data);
  auto row = [&](int64_t j, int which) -> const uint16_t* {
    if (j >= seq_len) return nullptr;
    return pool + cache.offset(block_table[j / cache.block_size], layer, which, j % cache.block_size) + kvh * hd;
  };
  alignas(64) uint16_t ix[32];
  for (int i = 0; i < 16; ++i) ix[2 * i] = static_cast<uint16_t>(i), ix[2 * i + 1] = static_cast<uint16_t>(16 + i);
  const __m512i interleave = _mm512_load_si512(ix);
  for (int64_t c = 0; c < chunks; ++c) {
    uint16_t* k_rows = kv + c * per;
    uint16_t* v_t = k_rows + 32 * hd;
    for (int64_t j = 0; j < 32; ++j) {
      const uint16_t* k = row(c * 32 + j, 0);
      if (k) std::memcpy(k_rows + j * hd, k, static_cast<size_t>(hd * 2));
      else std::memset(k_rows + j * hd, 0, static_cast<size_t>(hd * 2));
    }
    for (int64_t dn = 0; dn < hd / 16; ++dn) {
      __m512i r[16];  // [key pair] = (key 2 kp, key 2 kp + 1) of dims 16 dn .. + 16, as 16 pairs
      for (int kp = 0; kp < 16; ++kp) {
        const uint16_t* a = row(c * 32 + 2 * kp, 1);
        const uint16_t* b = row(c * 32 + 2 * kp + 1, 1);
        const __m256i va = a ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + dn * 16)) : _mm256_setzero_si256();
        const __m256i vb = b ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + dn * 16)) : _mm256_setzero_si256();
        r[kp] = _mm512_permutexvar_epi16(interleave, _mm512_inserti64x4(_mm512_castsi256_si512(va), vb, 1));
      }
      transpose16(r);  // [dim] = its 32 keys in order
      uint16_t* tile = v_t + dn * 512;
      for (int d = 0; d < 16; ++d) _mm512_store_si512(tile + d * 32, r[d]);
    }
  }
}

// Per-thread buffers of one work item (32 query rows; "query half" nh = rows 16 nh .. + 16).
struct ItemBuffers {
  alignas(64) uint16_t qt_hi[kMaxHeadDim / 32][2][512];  // Q^T B tiles [dim tile][query half]
  alignas(64) uint16_t qt_lo[kMaxHeadDim / 32][2][512];
  alignas(64) float ot[kMaxHeadDim * 32];                // O^T: [dim][32 queries]
  alignas(64) float st[2][32 * 32];                      // S^T of chunks c and c + 1: [key][32 queries]
  alignas(64) uint16_t pt_hi[2][512];                    // P^T B tiles [query half]: 16 key pairs x 16 queries x 2
  alignas(64) uint16_t pt_lo[2][512];
};

// C tiles 0-3 += (A tiles a and a + a_next: rows 0-15, 16-31 of the output; stride a_stride
// bytes) x (B tiles b0, b1: queries 0-15, 16-31): C0 = (a, b0), C1 = (a, b1), C2 = (a_next, b0),
// C3 = (a_next, b1).
inline void dp4(const uint16_t* a, int64_t a_next, int64_t a_stride, const uint16_t* b0, const uint16_t* b1) {
  _tile_loadd(4, a, a_stride);
  _tile_loadd(5, a + a_next, a_stride);
  _tile_loadd(6, b0, 64);
  _tile_loadd(7, b1, 64);
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(1, 4, 7);
  _tile_dpbf16ps(2, 5, 6);
  _tile_dpbf16ps(3, 5, 7);
}

// The four C tiles to or from a [32][32] fp32 block (rows row_stride floats apart): rows 0-15 /
// 16-31 x columns 0-15 / 16-31, in dp4's order.
inline void load_c(const float* m, int64_t row_stride) {
  _tile_loadd(0, m, row_stride * 4);
  _tile_loadd(1, m + 16, row_stride * 4);
  _tile_loadd(2, m + 16 * row_stride, row_stride * 4);
  _tile_loadd(3, m + 16 * row_stride + 16, row_stride * 4);
}
inline void store_c(float* m, int64_t row_stride) {
  _tile_stored(0, m, row_stride * 4);
  _tile_stored(1, m + 16, row_stride * 4);
  _tile_stored(2, m + 16 * row_stride, row_stride * 4);
  _tile_stored(3, m + 16 * row_stride + 16, row_stride * 4);
}

// (hi, lo) VNNI rows of P^T from the weights of keys 2 kp and 2 kp + 1 (16 queries each).
inline void store_p_pair(__m512 p_even, __m512 p_odd, __m512i interleave, uint16_t* hi, uint16_t* lo) {
  __m256i he, le, ho, lo_odd;
  split_bf16(p_even, &he, &le);
  split_bf16(p_odd, &ho, &lo_odd);
  _mm512_store_si512(hi, _mm512_permutexvar_epi16(interleave, _mm512_inserti64x4(_mm512_castsi256_si512(he), ho, 1)));
  _mm512_store_si512(lo, _mm512_permutexvar_epi16(interleave, _mm512_inserti64x4(_mm512_castsi256_si512(le), lo_odd, 1)));
}

// out rows of query head h for tokens [t0, t0 + rows) (rows <= 32) at positions pos0 .., over the
// packed keys kv of its kv head. Key-major: S^T = K Q^T and O^T += V^T P^T on the tiles, so that
// the softmax's vectors run along the queries (no horizontal reductions).
void attend_item(const float* q, int64_t H, int64_t hd, int64_t h, int64_t t0, int64_t rows, int64_t pos0,
                 int64_t window, float scale, const uint16_t* kv, float* out, ItemBuffers& w) {
  const int64_t per = chunk_elems(hd), dts = hd / 32;
  // Q^T tiles: rows of q (scaled; rows past `rows` are zeros) as (hi, lo) pairs, transposed.
  for (int nh = 0; nh < 2; ++nh)
    for (int64_t dt = 0; dt < dts; ++dt) {
      __m512i hi[16], lo[16];  // [query] = its 32 dims of tile dt as 16 pairs
      for (int n = 0; n < 16; ++n) {
        const int64_t r = nh * 16 + n;
        if (r >= rows) {
          hi[n] = lo[n] = _mm512_setzero_si512();
          continue;
        }
        const float* qr = q + ((t0 + r) * H + h) * hd + dt * 32;
        __m256i h0, l0, h1, l1;
        split_bf16(_mm512_mul_ps(_mm512_loadu_ps(qr), _mm512_set1_ps(scale)), &h0, &l0);
        split_bf16(_mm512_mul_ps(_mm512_loadu_ps(qr + 16), _mm512_set1_ps(scale)), &h1, &l1);
        hi[n] = _mm512_inserti64x4(_mm512_castsi256_si512(h0), h1, 1);
        lo[n] = _mm512_inserti64x4(_mm512_castsi256_si512(l0), l1, 1);
      }
      transpose16(hi);  // [dim pair] = 16 queries
      transpose16(lo);
      for (int i = 0; i < 16; ++i) {
        _mm512_store_si512(w.qt_hi[dt][nh] + i * 32, hi[i]);
        _mm512_store_si512(w.qt_lo[dt][nh] + i * 32, lo[i]);
      }
    }
  std::memset(w.ot, 0, sizeof(float) * 32 * hd);
  auto first_key = [&](int64_t pos) { return window > 0 && pos - window + 1 > 0 ? pos - window + 1 : int64_t{0}; };
  const int64_t last_pos = pos0 + rows - 1;
  const int64_t c_begin = first_key(pos0) / 32, c_end = last_pos / 32;
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  alignas(64) uint16_t ix[32];
  for (int i = 0; i < 16; ++i) ix[2 * i] = static_cast<uint16_t>(i), ix[2 * i + 1] = static_cast<uint16_t>(16 + i);
  const __m512i interleave = _mm512_load_si512(ix);
  const __m512 neg_inf = _mm512_set1_ps(-INFINITY), one = _mm512_set1_ps(1.0f);
  __m512i pos_v[2], first_v[2];  // per query half: each query's position and first visible key
  __m512 m_run[2], l_run[2];
  for (int nh = 0; nh < 2; ++nh) {
    pos_v[nh] = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(pos0 + 16 * nh)), iota);
    first_v[nh] = window > 0 ? _mm512_max_epi32(_mm512_sub_epi32(pos_v[nh], _mm512_set1_epi32(static_cast<int>(window - 1))),
                                                _mm512_setzero_si512())
                             : _mm512_setzero_si512();
    m_run[nh] = neg_inf;
    l_run[nh] = _mm512_setzero_ps();
  }
  // S^T of chunk c into the C tiles: keys 0-15 / 16-31 x queries 0-15 / 16-31.
  auto scores = [&](int64_t c) {
    const uint16_t* k_rows = kv + c * per;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t dt = 0; dt < dts; ++dt) {
      dp4(k_rows + dt * 32, 16 * hd, hd * 2, w.qt_hi[dt][0], w.qt_hi[dt][1]);
      dp4(k_rows + dt * 32, 16 * hd, hd * 2, w.qt_lo[dt][0], w.qt_lo[dt][1]);
    }
  };
  // Software-pipelined: chunk c + 1's S^T runs on the tiles while the vector units do chunk c's
  // softmax (nothing in between depends on it), then is stored before chunk c's P V needs them.
  scores(c_begin);
  store_c(w.st[c_begin % 2], 32);
  for (int64_t c = c_begin; c <= c_end; ++c) {
    const uint16_t* v_t = kv + c * per + 32 * hd;
    const float* st = w.st[c % 2];
    if (c < c_end) scores(c + 1);
    // Online softmax along the queries. Keys of this chunk outside a query's [first, pos] are masked.
    const int64_t key0 = c * 32;
    const bool masked = key0 + 31 > pos0 || (window > 0 && key0 < first_key(last_pos));
    __m512 corr[2];
    for (int nh = 0; nh < 2; ++nh) {
      __m512 sv[32];
      __m512 m_c = neg_inf;
      for (int j = 0; j < 32; ++j) {
        sv[j] = _mm512_load_ps(st + j * 32 + nh * 16);
        if (masked) {
          const __m512i key = _mm512_set1_epi32(static_cast<int>(key0 + j));
          const __mmask16 ok = _mm512_cmpge_epi32_mask(key, first_v[nh]) & _mm512_cmple_epi32_mask(key, pos_v[nh]);
          sv[j] = _mm512_mask_blend_ps(ok, neg_inf, sv[j]);
        }
        m_c = _mm512_max_ps(m_c, sv[j]);
      }
      const __m512 m_new = _mm512_max_ps(m_run[nh], m_c);
      // A query that has seen no key yet (sliding window) keeps m = -inf: subtract 0 instead,
      // so that its weights are exp(-inf) = 0, not NaN.
      const __m512 m_safe = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(m_new, neg_inf, _CMP_EQ_OQ), m_new, _mm512_setzero_ps());
      corr[nh] = Vec::exp(_mm512_sub_ps(m_run[nh], m_safe));
      __m512 sum = _mm512_setzero_ps();
      for (int j = 0; j < 32; j += 2) {
        const __m512 pe = Vec::exp(_mm512_sub_ps(sv[j], m_safe)), po = Vec::exp(_mm512_sub_ps(sv[j + 1], m_safe));
        sum = _mm512_add_ps(sum, _mm512_add_ps(pe, po));
        store_p_pair(pe, po, interleave, w.pt_hi[nh] + j * 16, w.pt_lo[nh] + j * 16);
      }
      l_run[nh] = _mm512_fmadd_ps(l_run[nh], corr[nh], sum);
      m_run[nh] = m_new;
    }
    if (_mm512_cmp_ps_mask(corr[0], one, _CMP_NEQ_UQ) | _mm512_cmp_ps_mask(corr[1], one, _CMP_NEQ_UQ))
      for (int64_t d = 0; d < hd; ++d) {
        _mm512_store_ps(w.ot + d * 32, _mm512_mul_ps(_mm512_load_ps(w.ot + d * 32), corr[0]));
        _mm512_store_ps(w.ot + d * 32 + 16, _mm512_mul_ps(_mm512_load_ps(w.ot + d * 32 + 16), corr[1]));
      }
    if (c < c_end) store_c(w.st[(c + 1) % 2], 32);
    // O^T += V^T (p_hi + p_lo)^T, 32 dims at a time.
    for (int64_t dp = 0; dp < dts; ++dp) {
      float* ot = w.ot + dp * 32 * 32;
      load_c(ot, 32);
      dp4(v_t + (2 * dp) * 512, 512, 64, w.pt_hi[0], w.pt_hi[1]);
      dp4(v_t + (2 * dp) * 512, 512, 64, w.pt_lo[0], w.pt_lo[1]);
      store_c(ot, 32);
    }
  }
  // out = (O^T)^T / l, 16 dims x 16 queries at a time.
  alignas(64) float inv_l[32];
  _mm512_store_ps(inv_l, _mm512_div_ps(one, l_run[0]));
  _mm512_store_ps(inv_l + 16, _mm512_div_ps(one, l_run[1]));
  for (int nh = 0; nh < 2 && nh * 16 < rows; ++nh)
    for (int64_t d0 = 0; d0 < hd; d0 += 16) {
      __m512i r[16];  // [dim] = 16 queries
      for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(w.ot + (d0 + i) * 32 + nh * 16);
      transpose16(r);  // [query] = 16 dims
      for (int n = 0; n < 16 && nh * 16 + n < rows; ++n) {
        const int64_t qi = nh * 16 + n;
        _mm512_storeu_ps(out + ((t0 + qi) * H + h) * hd + d0, _mm512_mul_ps(_mm512_castsi512_ps(r[n]), _mm512_set1_ps(inv_l[qi])));
      }
    }
}

}  // namespace

void paged_attention_amx(ThreadPool& pool, const float* q, KVCacheView cache, int64_t layer,
                         const AttentionBatch& batch, float* out) {
  const auto& avx512 = cpu_avx512_kernels().paged_attention;
  const bool shape_ok = amx_shape(cache);
  auto on_amx = [&](int64_t s) { return shape_ok && q_len_of(batch, s) >= kMinTokens; };
  // Runs of sequences that AMX does not take: the AVX-512 attention, as sub-batches.
  int64_t amx_seqs = 0;
  for (int64_t s = 0; s < batch.num_seqs;) {
    if (on_amx(s)) {
      ++amx_seqs, ++s;
      continue;
    }
    int64_t e = s;
    while (e < batch.num_seqs && !on_amx(e)) ++e;
    AttentionBatch sub = batch;
    sub.num_seqs = e - s;
    sub.query_start_loc = batch.query_start_loc + s;
    sub.seq_lens = batch.seq_lens + s;
    sub.block_tables = batch.block_tables + s * batch.max_blocks_per_seq;
    avx512(pool, q, cache, layer, sub, out);
    s = e;
  }
  if (amx_seqs == 0) return;
  const int64_t H = batch.num_heads, Hkv = cache.num_kv_heads, hd = cache.head_dim, group = H / Hkv;
  // Work units: (AMX sequence, kv head, part): the unit packs its kv head's keys into its thread's
  // buffer and runs that kv head's query heads over the query tiles part, part + parts, ...
  // (interleaved: causal tiles grow in cost). parts > 1 only when there would be fewer units than
  // twice the threads (few kv heads).
  thread_local Scratch<int64_t> seq_buf;
  int64_t* seq = seq_buf.get(amx_seqs);
  for (int64_t s = 0, n = 0; s < batch.num_seqs; ++s)
    if (on_amx(s)) seq[n++] = s;
  const int64_t want = 2 * pool.size(), parts = amx_seqs * Hkv >= want ? 1 : (want + amx_seqs * Hkv - 1) / (amx_seqs * Hkv);
  pool.parallel_for(amx_seqs * Hkv * parts, [&](int64_t begin, int64_t end) {
    thread_local Scratch<ItemBuffers> bufs;
    thread_local Scratch<uint16_t> kv_buf;
    ItemBuffers& w = *bufs.get(1);
    configure_tiles();
    for (int64_t u = begin; u < end; ++u) {
      const int64_t s = seq[u / (Hkv * parts)], kvh = u / parts % Hkv, part = u % parts;
      const int64_t q_len = q_len_of(batch, s), tiles = (q_len + 31) / 32;
      if (part >= tiles) continue;
      const int64_t last_tile = part + (tiles - 1 - part) / parts * parts;
      const int64_t past = batch.seq_lens[s] - q_len;  // keys before this step's tokens
      const int64_t keys = past + (q_len < (last_tile + 1) * 32 ? q_len : (last_tile + 1) * 32);
      uint16_t* kv = kv_buf.get((keys + 31) / 32 * chunk_elems(hd));
      pack_kv(cache, layer, batch.block_tables + s * batch.max_blocks_per_seq, keys, kvh, kv);
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h)
        for (int64_t tile = part; tile < tiles; tile += parts) {
          const int64_t rows = q_len - tile * 32 < 32 ? q_len - tile * 32 : 32;
          attend_item(q, H, hd, h, batch.query_start_loc[s] + tile * 32, rows, past + tile * 32, batch.sliding_window,
                      batch.scale, kv, out, w);
        }
    }
    _tile_release();
  });
}

}  // namespace llm::cpu
