// cpu-amx-attention.cc: paged attention of the amx paths, on AMX-BF16 tiles.
//
// On a bf16 KV cache with head_dim % 32 == 0 and <= 256 every sequence runs here, prefill chunks
// and decode steps alike, so that a token's output has the same bits whichever step computes it
// (attend_item; test-kernels-fast: paged_attention_amx_rows_do_not_depend_on_the_step): a request
// served from the prefix cache, preempted and recomputed, or batched differently streams the
// same logprobs. Other caches and head dims run the AVX-512 paged_attention.
//
// Key-major, so that the softmax's vectors run along 16 queries and need no horizontal
// reductions: S^T = K Q^T and O^T += V^T P^T on the tiles. A thread packs what it needs of the
// (sequence, kv head) it works on into its own buffer, per chunk of 32 keys (keys past the
// sequence are zeros), and then runs that kv head's queries:
//   v_t     [head_dim / 16][16 dims][32 keys]  A tiles of 16 dims x 32 keys
//   k_rows  [32 keys][head_dim]          A tiles of 16 keys x 32 dims; only when the cache's
//                                        block_size % 16 != 0, else the tiles load from the
//                                        cache's K rows in place (16 keys of one block)
// A work item (attend_item) is up to 32 queries (lanes): one query head's 32 tokens of a
// prefill, or all of a kv head's (token, head) pairs of a decode step or short chunk. Q^T goes
// in as VNNI B tiles (16 dim pairs x 16 lanes x 2); per chunk, S^T in C tiles (keys 0-15 / 16-31
// x lanes 0-15 / 16-31), the online softmax in AVX-512 (the AVX-512 path's exp; P^T written as
// VNNI B tiles), and O^T (fp32, [dim][32 lanes]) loaded into C tiles, accumulated and stored
// back. The next chunk's S^T runs on the tiles while the vector units do this chunk's softmax.
// Precision: K and V are bf16 already, so their products are exact; q (times the scale) and P are
// split into two bf16 terms, v = hi + lo with hi = bf16(v), lo = bf16(v - hi), so each stands for
// its value to about 2^-17 relative (one term would keep 2^-9), and every product is summed in
// fp32. The results stay within the fp32 paths' bound against the reference (test-kernels-fast).
// Stays true: tiles are configured at the start of each thread's chunk of work and released at
// its end (cpu-amx-tiles.h); masked keys (after the lane's position, before its sliding window,
// past seq_len) get weight 0, never NaN; a K tile half past the sequence's keys reads real K rows
// (its first half again), masked, so never NaN either.
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

// Packed keys of one (sequence, kv head): chunks of 32 keys, v_t then (with_k) k_rows, 32 hd bf16
// each (layout above).
int64_t chunk_elems(int64_t hd, bool with_k) { return (with_k ? 64 : 32) * hd; }

// Packs K and V^T of kv head kvh, keys [0, seq_len) (the rest of the last chunk: zeros), into kv
// (layout above).
void pack_kv(const KVCacheView& cache, int64_t layer, const int32_t* block_table, int64_t seq_len, int64_t kvh,
             bool with_k, uint16_t* kv) {
  const int64_t hd = cache.head_dim, chunks = (seq_len + 31) / 32, per = chunk_elems(hd, with_k), bs = cache.block_size;
  const uint16_t* pool = static_cast<const uint16_t*>(cache.data);
  const __m512i interleave = pair_interleave();
  const uint16_t* k_row[32];  // the chunk's rows (nullptr past seq_len)
  const uint16_t* v_row[32];
  int64_t block = 0, off = 0;  // of key j, walked along (no division per key)
  for (int64_t c = 0; c < chunks; ++c) {
    for (int64_t j = 0; j < 32; ++j) {
      const bool in = c * 32 + j < seq_len;
      k_row[j] = in ? pool + cache.offset(block_table[block], layer, 0, off) + kvh * hd : nullptr;
      v_row[j] = in ? pool + cache.offset(block_table[block], layer, 1, off) + kvh * hd : nullptr;
      if (in && ++off == bs) off = 0, ++block;
    }
    uint16_t* v_t = kv + c * per;
    uint16_t* k_rows = v_t + 32 * hd;
    for (int64_t j = 0; j < (with_k ? 32 : 0); ++j) {
      if (k_row[j]) std::memcpy(k_rows + j * hd, k_row[j], static_cast<size_t>(hd * 2));
      else std::memset(k_rows + j * hd, 0, static_cast<size_t>(hd * 2));
    }
    for (int64_t dn = 0; dn < hd / 16; ++dn) {
      __m512i r[16];  // [key pair] = (key 2 kp, key 2 kp + 1) of dims 16 dn .. + 16, as 16 pairs
      for (int kp = 0; kp < 16; ++kp) {
        const uint16_t* a = v_row[2 * kp];
        const uint16_t* b = v_row[2 * kp + 1];
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

// C tiles 0-3 += (A tiles a0, a1: rows 0-15, 16-31 of the output; stride a_stride bytes) x (B
// tiles b0, b1: queries 0-15, 16-31): C0 = (a0, b0), C1 = (a0, b1), C2 = (a1, b0), C3 = (a1, b1).
inline void dp4(const uint16_t* a0, const uint16_t* a1, int64_t a_stride, const uint16_t* b0, const uint16_t* b1) {
  _tile_loadd(4, a0, a_stride);
  _tile_loadd(5, a1, a_stride);
  _tile_loadd(6, b0, 64);
  _tile_loadd(7, b1, 64);
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(1, 4, 7);
  _tile_dpbf16ps(2, 5, 6);
  _tile_dpbf16ps(3, 5, 7);
}

// C tiles 0 and 2 += (A tiles a0, a1) x (B tile b0): dp4 without its second B tile.
inline void dp2(const uint16_t* a0, const uint16_t* a1, int64_t a_stride, const uint16_t* b0) {
  _tile_loadd(4, a0, a_stride);
  _tile_loadd(5, a1, a_stride);
  _tile_loadd(6, b0, 64);
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(2, 5, 6);
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

// The queries of one work item: up to 32 lanes, each a (token, head) with its q row, its out
// row and its position. Lanes past `rows` are padding (q zeros, not written).
struct Lanes {
  int64_t rows = 0;
  const float* q[32];
  float* out[32];
  int32_t pos[32];
};

// Attention of the item's lanes over the packed keys kv of their kv head. Key-major: S^T = K Q^T
// and O^T += V^T P^T on the tiles, so that the softmax's vectors run along 16 lanes (no
// horizontal reductions). A lane's result depends only on its own q, position and keys: every
// sum runs in the same order (dims, then keys in 32-key chunks from key 0) whatever the other
// lanes are, and chunks past a lane's position add exact zeros; so a token gets the same bits in
// a prefill tile, a short chunk or a decode step.
void attend_item(const Lanes& ln, int64_t hd, int64_t window, float scale, const uint16_t* kv, int64_t per,
                 const uint16_t* const* k_at, int64_t k_stride, ItemBuffers& w) {
  const int64_t dts = hd / 32, rows = ln.rows;
  const int halves = rows > 16 ? 2 : 1;  // query halves with a lane in them
  // Q^T tiles: the lanes' q rows (scaled; padding lanes are zeros) as (hi, lo) pairs, transposed.
  for (int nh = 0; nh < halves; ++nh)
    for (int64_t dt = 0; dt < dts; ++dt) {
      __m512i hi[16], lo[16];  // [lane] = its 32 dims of tile dt as 16 pairs
      for (int n = 0; n < 16; ++n) {
        const int64_t r = nh * 16 + n;
        if (r >= rows) {
          hi[n] = lo[n] = _mm512_setzero_si512();
          continue;
        }
        const float* qr = ln.q[r] + dt * 32;
        __m256i h0, l0, h1, l1;
        split_bf16(_mm512_mul_ps(_mm512_loadu_ps(qr), _mm512_set1_ps(scale)), &h0, &l0);
        split_bf16(_mm512_mul_ps(_mm512_loadu_ps(qr + 16), _mm512_set1_ps(scale)), &h1, &l1);
        hi[n] = _mm512_inserti64x4(_mm512_castsi256_si512(h0), h1, 1);
        lo[n] = _mm512_inserti64x4(_mm512_castsi256_si512(l0), l1, 1);
      }
      transpose16(hi);  // [dim pair] = 16 lanes
      transpose16(lo);
      for (int i = 0; i < 16; ++i) {
        _mm512_store_si512(w.qt_hi[dt][nh] + i * 32, hi[i]);
        _mm512_store_si512(w.qt_lo[dt][nh] + i * 32, lo[i]);
      }
    }
  std::memset(w.ot, 0, sizeof(float) * 32 * hd);
  auto first_key = [&](int64_t pos) { return window > 0 && pos - window + 1 > 0 ? pos - window + 1 : int64_t{0}; };
  int64_t min_pos = ln.pos[0], max_pos = ln.pos[0];
  for (int64_t r = 1; r < rows; ++r) min_pos = ln.pos[r] < min_pos ? ln.pos[r] : min_pos, max_pos = ln.pos[r] > max_pos ? ln.pos[r] : max_pos;
  const int64_t c_begin = first_key(min_pos) / 32, c_end = max_pos / 32;
  const __m512i interleave = pair_interleave();
  const __m512 neg_inf = _mm512_set1_ps(-INFINITY), one = _mm512_set1_ps(1.0f);
  __m512i pos_v[2], first_v[2];  // per query half: each lane's position and first visible key
  __m512 m_run[2], l_run[2];
  for (int nh = 0; nh < 2; ++nh) {
    alignas(64) int32_t pos[16];
    for (int n = 0; n < 16; ++n) pos[n] = nh * 16 + n < rows ? ln.pos[nh * 16 + n] : static_cast<int32_t>(max_pos);
    pos_v[nh] = _mm512_load_si512(pos);
    first_v[nh] = window > 0 ? _mm512_max_epi32(_mm512_sub_epi32(pos_v[nh], _mm512_set1_epi32(static_cast<int>(window - 1))),
                                                _mm512_setzero_si512())
                             : _mm512_setzero_si512();
    m_run[nh] = neg_inf;
    l_run[nh] = _mm512_setzero_ps();
  }
  // S^T of chunk c into the C tiles: keys 0-15 / 16-31 x lanes 0-15 / 16-31 (with one half: C0, C2).
  auto scores = [&](int64_t c) {
    const uint16_t* k0 = k_at[2 * c];
    const uint16_t* k1 = k_at[2 * c + 1];
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t dt = 0; dt < dts; ++dt) {
      if (halves == 2) {
        dp4(k0 + dt * 32, k1 + dt * 32, k_stride, w.qt_hi[dt][0], w.qt_hi[dt][1]);
        dp4(k0 + dt * 32, k1 + dt * 32, k_stride, w.qt_lo[dt][0], w.qt_lo[dt][1]);
      } else {
        dp2(k0 + dt * 32, k1 + dt * 32, k_stride, w.qt_hi[dt][0]);
        dp2(k0 + dt * 32, k1 + dt * 32, k_stride, w.qt_lo[dt][0]);
      }
    }
  };
  auto store_scores = [&](float* st) {
    _tile_stored(0, st, 128);
    _tile_stored(2, st + 16 * 32, 128);
    if (halves == 2) {
      _tile_stored(1, st + 16, 128);
      _tile_stored(3, st + 16 * 32 + 16, 128);
    }
  };
  // Software-pipelined: chunk c + 1's S^T runs on the tiles while the vector units do chunk c's
  // softmax (nothing in between depends on it), then is stored before chunk c's P V needs them.
  scores(c_begin);
  store_scores(w.st[c_begin % 2]);
  for (int64_t c = c_begin; c <= c_end; ++c) {
    const uint16_t* v_t = kv + c * per;
    const float* st = w.st[c % 2];
    if (c < c_end) scores(c + 1);
    // Online softmax along the lanes. Keys of this chunk outside a lane's [first, pos] are masked.
    const int64_t key0 = c * 32;
    const bool masked = key0 + 31 > min_pos || (window > 0 && key0 < first_key(max_pos));
    __m512 corr[2] = {one, one};
    for (int nh = 0; nh < halves; ++nh) {
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
      // A lane that has seen no key yet (sliding window) keeps m = -inf: subtract 0 instead, so
      // that its weights are exp(-inf) = 0, not NaN.
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
        if (halves == 2) _mm512_store_ps(w.ot + d * 32 + 16, _mm512_mul_ps(_mm512_load_ps(w.ot + d * 32 + 16), corr[1]));
      }
    if (c < c_end) store_scores(w.st[(c + 1) % 2]);
    // O^T += V^T (p_hi + p_lo)^T, 32 dims at a time.
    for (int64_t dp = 0; dp < dts; ++dp) {
      float* ot = w.ot + dp * 32 * 32;
      const uint16_t* a = v_t + (2 * dp) * 512;
      if (halves == 2) {
        load_c(ot, 32);
        dp4(a, a + 512, 64, w.pt_hi[0], w.pt_hi[1]);
        dp4(a, a + 512, 64, w.pt_lo[0], w.pt_lo[1]);
        store_c(ot, 32);
      } else {
        _tile_loadd(0, ot, 128);
        _tile_loadd(2, ot + 16 * 32, 128);
        dp2(a, a + 512, 64, w.pt_hi[0]);
        dp2(a, a + 512, 64, w.pt_lo[0]);
        _tile_stored(0, ot, 128);
        _tile_stored(2, ot + 16 * 32, 128);
      }
    }
  }
  // out = (O^T)^T / l, 16 dims x 16 lanes at a time.
  alignas(64) float inv_l[32];
  _mm512_store_ps(inv_l, _mm512_div_ps(one, l_run[0]));
  _mm512_store_ps(inv_l + 16, _mm512_div_ps(one, l_run[1]));
  for (int nh = 0; nh < halves; ++nh)
    for (int64_t d0 = 0; d0 < hd; d0 += 16) {
      __m512i r[16];  // [dim] = 16 lanes
      for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(w.ot + (d0 + i) * 32 + nh * 16);
      transpose16(r);  // [lane] = 16 dims
      for (int n = 0; n < 16 && nh * 16 + n < rows; ++n) {
        const int64_t lane = nh * 16 + n;
        _mm512_storeu_ps(ln.out[lane] + d0, _mm512_mul_ps(_mm512_castsi512_ps(r[n]), _mm512_set1_ps(inv_l[lane])));
      }
    }
}

}  // namespace

void paged_attention_amx(ThreadPool& pool, const float* q, KVCacheView cache, int64_t layer,
                         const AttentionBatch& batch, float* out) {
  if (!amx_shape(cache)) return cpu_avx512_kernels().paged_attention(pool, q, cache, layer, batch, out);
  const int64_t H = batch.num_heads, Hkv = cache.num_kv_heads, hd = cache.head_dim, group = H / Hkv;
  // Work units: (sequence, kv head, part). A unit packs its kv head's keys into its thread's
  // buffer, then runs that kv head's queries: all of them in one item when they fit (q_len x
  // group <= 32: decode steps, short chunks; lanes = (token, head)), else one item per (query
  // head, 32 tokens), the query tiles part, part + parts, ... (interleaved: causal tiles grow in
  // cost). parts > 1 only when there would be fewer units than twice the threads.
  const int64_t S = batch.num_seqs;
  // K tiles straight from the cache when every 16-key half lies in one block (else a packed copy).
  const bool direct_k = cache.block_size % 16 == 0;
  const int64_t k_stride = (direct_k ? cache.token_stride() : hd) * 2;
  const int64_t want = 2 * pool.size(), parts = S * Hkv >= want ? 1 : (want + S * Hkv - 1) / (S * Hkv);
  pool.parallel_for(S * Hkv * parts, [&](int64_t begin, int64_t end) {
    thread_local Scratch<ItemBuffers> bufs;
    thread_local Scratch<uint16_t> kv_buf;
    thread_local Scratch<const uint16_t*> k_at_buf;
    ItemBuffers& w = *bufs.get(1);
    configure_tiles();
    Lanes ln;
    for (int64_t u = begin; u < end; ++u) {
      const int64_t s = u / (Hkv * parts), kvh = u / parts % Hkv, part = u % parts;
      const int64_t q_len = q_len_of(batch, s), qsl = batch.query_start_loc[s];
      const bool one_item = q_len * group <= 32;
      const int64_t tiles = one_item ? 1 : (q_len + 31) / 32;
      if (q_len == 0 || part >= tiles) continue;
      const int64_t last_tile = part + (tiles - 1 - part) / parts * parts;
      const int64_t past = batch.seq_lens[s] - q_len;  // keys before this step's tokens
      const int64_t keys = past + (one_item || q_len < (last_tile + 1) * 32 ? q_len : (last_tile + 1) * 32);
      const int64_t chunks = (keys + 31) / 32;
      const int64_t per = chunk_elems(hd, !direct_k);
      uint16_t* kv = kv_buf.get(chunks * per);
      const int32_t* table = batch.block_tables + s * batch.max_blocks_per_seq;
      pack_kv(cache, layer, table, keys, kvh, !direct_k, kv);
      // Where the scores read each chunk's two 16-key A tiles: the cache's own K rows (a half
      // past the keys reads the first half again: masked, and finite), or the packed copy.
      const uint16_t** k_at = k_at_buf.get(2 * chunks);
      for (int64_t c = 0; c < chunks; ++c)
        for (int64_t kh = 0; kh < 2; ++kh) {
          const int64_t j = c * 32 + (kh == 1 && c * 32 + 16 < keys ? 16 : 0);
          k_at[2 * c + kh] = direct_k ? static_cast<const uint16_t*>(cache.data) +
                                            cache.offset(table[j / cache.block_size], layer, 0, j % cache.block_size) + kvh * hd
                                      : kv + c * per + (32 + j - c * 32) * hd;
        }
      auto lane = [&](int64_t r, int64_t t, int64_t h) {
        ln.q[r] = q + ((qsl + t) * H + h) * hd;
        ln.out[r] = out + ((qsl + t) * H + h) * hd;
        ln.pos[r] = static_cast<int32_t>(past + t);
      };
      if (one_item) {
        ln.rows = q_len * group;
        for (int64_t t = 0; t < q_len; ++t)
          for (int64_t g = 0; g < group; ++g) lane(t * group + g, t, kvh * group + g);
        attend_item(ln, hd, batch.sliding_window, batch.scale, kv, per, k_at, k_stride, w);
        continue;
      }
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h)
        for (int64_t tile = part; tile < tiles; tile += parts) {
          ln.rows = q_len - tile * 32 < 32 ? q_len - tile * 32 : 32;
          for (int64_t r = 0; r < ln.rows; ++r) lane(r, tile * 32 + r, h);
          attend_item(ln, hd, batch.sliding_window, batch.scale, kv, per, k_at, k_stride, w);
        }
    }
    _tile_release();
  });
}

}  // namespace llm::cpu
