// cpu-amx-attention.cc: paged attention of the amx paths, prefill on AMX-BF16 tiles.
//
// A sequence with at least kMinTokens new tokens (a prefill or a prefill chunk) on a bf16 KV
// cache, with head_dim % 32 == 0 and <= 256, runs here; every other sequence (decode, a few
// tokens, f32/f16 caches, odd head dims) runs the AVX-512 paged_attention, in runs of
// consecutive sequences (sub-batches that share q, out and the absolute query offsets).
//
// Per (sequence, kv head), K and V are packed once per call into VNNI B tiles over the keys
// [0, seq_len) rounded up to 32 (keys past seq_len are zeros):
//   kt  [chunk c][dim tile dt][key half nt]: 16 dim pairs (32 dt ..) x 16 keys (32 c + 16 nt ..) x 2
//   vt  [chunk c][dim tile dn]:              16 key pairs (32 c ..)  x 16 dims (16 dn ..) x 2
// A work item is (sequence, query head, 32 query tokens): the online-softmax loop over chunks of
// 32 keys with S = Q K^T in four C tiles (rows 0-15 / 16-31 x keys 0-15 / 16-31), the softmax in
// AVX-512 (the AVX-512 path's exp), and O += P V loaded into and stored from C tiles.
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
void split_bf16(__m512 v, uint16_t* hi, uint16_t* lo) {
  const __m256i h = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
  const __m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  _mm256_store_si256(reinterpret_cast<__m256i*>(hi), h);
  _mm256_store_si256(reinterpret_cast<__m256i*>(lo), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_sub_ps(v, hf))));
}

// Tiles of one (sequence, kv head): chunks of 32 keys, hd / 8 tiles of 512 bf16 per chunk.
int64_t chunk_elems(int64_t hd) { return hd / 8 * 512; }

// Packs K^T and V of kv head kvh, keys [0, seq_len), into kv (layout above).
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
    uint16_t* kt = kv + c * per;
    uint16_t* vt = kt + hd / 16 * 512;
    for (int64_t dt = 0; dt < hd / 32; ++dt)
      for (int nt = 0; nt < 2; ++nt) {
        __m512i r[16];  // [key] = its 32 dims of tile dt as 16 pairs
        for (int n = 0; n < 16; ++n) {
          const uint16_t* k = row(c * 32 + nt * 16 + n, 0);
          r[n] = k ? _mm512_loadu_si512(k + dt * 32) : _mm512_setzero_si512();
        }
        transpose16(r);  // [dim pair] = 16 keys
        uint16_t* tile = kt + (dt * 2 + nt) * 512;
        for (int i = 0; i < 16; ++i) _mm512_store_si512(tile + i * 32, r[i]);
      }
    for (int64_t dn = 0; dn < hd / 16; ++dn) {
      uint16_t* tile = vt + dn * 512;
      for (int kp = 0; kp < 16; ++kp) {
        const uint16_t* a = row(c * 32 + 2 * kp, 1);
        const uint16_t* b = row(c * 32 + 2 * kp + 1, 1);
        const __m256i va = a ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + dn * 16)) : _mm256_setzero_si256();
        const __m256i vb = b ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + dn * 16)) : _mm256_setzero_si256();
        const __m512i ab = _mm512_inserti64x4(_mm512_castsi256_si512(va), vb, 1);
        _mm512_store_si512(tile + kp * 32, _mm512_permutexvar_epi16(interleave, ab));
      }
    }
  }
}

// Per-thread buffers of one work item (32 query rows).
struct ItemBuffers {
  alignas(64) uint16_t q_hi[32 * kMaxHeadDim];
  alignas(64) uint16_t q_lo[32 * kMaxHeadDim];
  alignas(64) float o[32 * kMaxHeadDim];
  alignas(64) float s[32 * 32];
  alignas(64) uint16_t p_hi[32 * 32];
  alignas(64) uint16_t p_lo[32 * 32];
  float m_run[32], l_run[32];
};

// C tiles 0-3 += (A tiles from a and a + a_rows16: rows 0-15, 16-31; stride a_stride bytes) x
// (B tiles b0, b1), in the order C0 = (0, b0), C1 = (0, b1), C2 = (16, b0), C3 = (16, b1).
inline void dp4(const uint16_t* a, int64_t a_rows16, int64_t a_stride, const uint16_t* b0, const uint16_t* b1) {
  _tile_loadd(4, a, a_stride);
  _tile_loadd(5, a + a_rows16, a_stride);
  _tile_loadd(6, b0, 64);
  _tile_loadd(7, b1, 64);
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(1, 4, 7);
  _tile_dpbf16ps(2, 5, 6);
  _tile_dpbf16ps(3, 5, 7);
}

// out rows of query head h for tokens [t0, t0 + rows) (rows <= 32) at positions pos0 .., over the
// packed keys kv of its kv head.
void attend_item(const float* q, int64_t H, int64_t hd, int64_t h, int64_t t0, int64_t rows, int64_t pos0,
                 int64_t window, float scale, const uint16_t* kv, float* out, ItemBuffers& w) {
  const int64_t per = chunk_elems(hd);
  const __m512 scale_v = _mm512_set1_ps(scale);
  for (int64_t r = 0; r < 32; ++r) {
    for (int64_t d = 0; d < hd; d += 16) {
      const __m512 v = r < rows ? _mm512_mul_ps(_mm512_loadu_ps(q + ((t0 + r) * H + h) * hd + d), scale_v) : _mm512_setzero_ps();
      split_bf16(v, w.q_hi + r * hd + d, w.q_lo + r * hd + d);
    }
    w.m_run[r] = -INFINITY;
    w.l_run[r] = 0.0f;
  }
  std::memset(w.o, 0, sizeof(float) * 32 * hd);
  std::memset(w.p_hi, 0, sizeof(w.p_hi));  // rows past `rows` stay zero: their outputs are not read
  std::memset(w.p_lo, 0, sizeof(w.p_lo));
  auto first_key = [&](int64_t pos) { return window > 0 && pos - window + 1 > 0 ? pos - window + 1 : int64_t{0}; };
  const int64_t last_pos = pos0 + rows - 1;
  const int64_t c_begin = first_key(pos0) / 32, c_end = last_pos / 32;
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
  for (int64_t c = c_begin; c <= c_end; ++c) {
    const uint16_t* kt = kv + c * per;
    const uint16_t* vt = kt + hd / 16 * 512;
    // S = (q_hi + q_lo) K^T
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t dt = 0; dt < hd / 32; ++dt) {
      const uint16_t* b0 = kt + (dt * 2) * 512;
      dp4(w.q_hi + dt * 32, 16 * hd, hd * 2, b0, b0 + 512);
      dp4(w.q_lo + dt * 32, 16 * hd, hd * 2, b0, b0 + 512);
    }
    _tile_stored(0, w.s, 128);
    _tile_stored(1, w.s + 16, 128);
    _tile_stored(2, w.s + 16 * 32, 128);
    _tile_stored(3, w.s + 16 * 32 + 16, 128);
    // Online softmax. Keys of this chunk outside a row's [first_key, pos] are masked.
    const int64_t key0 = c * 32;
    const bool masked = key0 + 31 > pos0 || (window > 0 && key0 < first_key(last_pos));
    const __m512i keys0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(key0)), iota);
    const __m512i keys1 = _mm512_add_epi32(keys0, _mm512_set1_epi32(16));
    for (int64_t r = 0; r < rows; ++r) {
      __m512 s0 = _mm512_load_ps(w.s + r * 32), s1 = _mm512_load_ps(w.s + r * 32 + 16);
      if (masked) {
        const __m512i lo = _mm512_set1_epi32(static_cast<int>(first_key(pos0 + r)));
        const __m512i hi = _mm512_set1_epi32(static_cast<int>(pos0 + r));
        const __mmask16 v0 = _mm512_cmpge_epi32_mask(keys0, lo) & _mm512_cmple_epi32_mask(keys0, hi);
        const __mmask16 v1 = _mm512_cmpge_epi32_mask(keys1, lo) & _mm512_cmple_epi32_mask(keys1, hi);
        s0 = _mm512_mask_blend_ps(v0, neg_inf, s0);
        s1 = _mm512_mask_blend_ps(v1, neg_inf, s1);
      }
      const float m_new = std::fmax(w.m_run[r], _mm512_reduce_max_ps(_mm512_max_ps(s0, s1)));
      uint16_t* ph = w.p_hi + r * 32;
      uint16_t* pl = w.p_lo + r * 32;
      if (m_new == -INFINITY) {  // no key of this row so far (sliding window): nothing to add
        std::memset(ph, 0, 64);
        std::memset(pl, 0, 64);
        continue;
      }
      const float corr = std::exp(w.m_run[r] - m_new);
      const __m512 m_v = _mm512_set1_ps(m_new);
      const __m512 p0 = Vec::exp(_mm512_sub_ps(s0, m_v)), p1 = Vec::exp(_mm512_sub_ps(s1, m_v));
      w.l_run[r] = w.l_run[r] * corr + _mm512_reduce_add_ps(_mm512_add_ps(p0, p1));
      w.m_run[r] = m_new;
      split_bf16(p0, ph, pl);
      split_bf16(p1, ph + 16, pl + 16);
      if (corr != 1.0f) {
        float* orow = w.o + r * hd;
        const __m512 cv = _mm512_set1_ps(corr);
        for (int64_t d = 0; d < hd; d += 16) _mm512_store_ps(orow + d, _mm512_mul_ps(_mm512_load_ps(orow + d), cv));
      }
    }
    // O += (p_hi + p_lo) V, 32 dims at a time.
    for (int64_t dp = 0; dp < hd / 32; ++dp) {
      float* o0 = w.o + dp * 32;
      _tile_loadd(0, o0, hd * 4);
      _tile_loadd(1, o0 + 16, hd * 4);
      _tile_loadd(2, o0 + 16 * hd, hd * 4);
      _tile_loadd(3, o0 + 16 * hd + 16, hd * 4);
      const uint16_t* b0 = vt + (dp * 2) * 512;
      dp4(w.p_hi, 16 * 32, 64, b0, b0 + 512);
      dp4(w.p_lo, 16 * 32, 64, b0, b0 + 512);
      _tile_stored(0, o0, hd * 4);
      _tile_stored(1, o0 + 16, hd * 4);
      _tile_stored(2, o0 + 16 * hd, hd * 4);
      _tile_stored(3, o0 + 16 * hd + 16, hd * 4);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = out + ((t0 + r) * H + h) * hd;
    const __m512 inv = _mm512_set1_ps(1.0f / w.l_run[r]);
    for (int64_t d = 0; d < hd; d += 16) _mm512_storeu_ps(dst + d, _mm512_mul_ps(_mm512_load_ps(w.o + r * hd + d), inv));
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
  // Packed elements of one kv head of sequence s.
  auto head_elems = [&](int64_t s) { return (batch.seq_lens[s] + 31) / 32 * chunk_elems(hd); };
  // The AMX sequences, where their packed keys start, and their work items before them.
  thread_local Scratch<int64_t> index_buf;
  int64_t* seq = index_buf.get(3 * amx_seqs + 1);
  int64_t* kv_at = seq + amx_seqs;
  int64_t* items_before = kv_at + amx_seqs;
  int64_t kv_total = 0, n = 0;
  items_before[0] = 0;
  for (int64_t s = 0; s < batch.num_seqs; ++s) {
    if (!on_amx(s)) continue;
    seq[n] = s;
    kv_at[n] = kv_total;
    kv_total += Hkv * head_elems(s);
    items_before[n + 1] = items_before[n] + H * ((q_len_of(batch, s) + 31) / 32);
    ++n;
  }
  thread_local Scratch<uint16_t> kv_buf;
  uint16_t* kv = kv_buf.get(kv_total);
  pool.parallel_for(amx_seqs * Hkv, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t a = i / Hkv, kvh = i % Hkv, s = seq[a];
      pack_kv(cache, layer, batch.block_tables + s * batch.max_blocks_per_seq, batch.seq_lens[s], kvh,
              kv + kv_at[a] + kvh * head_elems(s));
    }
  });
  pool.parallel_for(items_before[amx_seqs], [&](int64_t begin, int64_t end) {
    thread_local Scratch<ItemBuffers> bufs;
    ItemBuffers& w = *bufs.get(1);
    configure_tiles();
    int64_t a = 0;
    for (int64_t item = begin; item < end; ++item) {
      while (items_before[a + 1] <= item) ++a;
      const int64_t s = seq[a], local = item - items_before[a];
      const int64_t q_len = q_len_of(batch, s), tiles = (q_len + 31) / 32;
      const int64_t h = local / tiles, tile = local % tiles;
      const int64_t t0 = batch.query_start_loc[s] + tile * 32;
      const int64_t rows = q_len - tile * 32 < 32 ? q_len - tile * 32 : 32;
      const int64_t pos0 = batch.seq_lens[s] - q_len + tile * 32;
      attend_item(q, H, hd, h, t0, rows, pos0, batch.sliding_window, batch.scale,
                  kv + kv_at[a] + (h / group) * head_elems(s), out, w);
    }
    _tile_release();
  });
}

}  // namespace llm::cpu
