// bench-cpu-attention-amx.cc: a prototype of causal prefill attention on AMX-BF16 tiles, timed
// against the engine's AVX-512 paged_attention on the Llama-3.2-1B shape (32 heads, 8 kv heads,
// head_dim 64, one sequence of T tokens, bf16 KV pool). Not a test and not engine code: it only
// measures what an AMX attention could gain (see the notes of issue 6).
// Build: the CMake target bench-cpu-attention-amx (x86 builds with LLM_BUILD_TESTS=ON; it runs
// only on a CPU with AMX).
// Run: bench-cpu-attention-amx [T=512] [rounds=5]
//
// Per kv head, K and V are packed once into VNNI B tiles (K^T: pairs of dims x 16 keys; V:
// pairs of keys x 16 dims). Work item = (query head, 32 query tokens): Q as two bf16 A tiles
// per 32 dims; per chunk of 32 keys: S = Q K^T (four C tiles), online softmax in AVX-512 (P
// rounded to bf16, as flash attention does on GPUs), O += P V (C tiles, added into fp32 O).
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "bench-common.h"
#include "kernels/cpu/cpu-amx-tiles.h"
#include "kernels/cpu/cpu-kernels.h"
#include "kernels/dtype.h"

using namespace llm;
using namespace llm::cpu;
using namespace llm_bench;

namespace {

constexpr int64_t kH = 32, kHkv = 8, kHd = 64, kBlock = 16;

// e^x for x <= 0 (Cephes-style: 2^n * poly), about 1e-7 relative.
__m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  const __m512 f = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, f), f, _mm512_add_ps(f, _mm512_set1_ps(1.0f)));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

__m256i to_bf16(__m512 v) { return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)); }

// K^T and V of one kv head as B tiles, for keys [0, T) (T % 32 == 0):
//   kt[c][dt][nt]: 16 dim pairs (dims 32 dt ..) x 16 keys (32 c + 16 nt ..) x 2
//   vt[c][dn]:     16 key pairs (keys 32 c ..) x 16 dims (16 dn ..) x 2
void pack_kv(const KVCacheView& cache, const int32_t* block_table, int64_t T, int64_t kvh, uint16_t* kt,
             uint16_t* vt) {
  const uint16_t* pool = static_cast<const uint16_t*>(cache.data);
  auto k_row = [&](int64_t j) { return pool + cache.offset(block_table[j / cache.block_size], 0, 0, j % cache.block_size) + kvh * kHd; };
  auto v_row = [&](int64_t j) { return pool + cache.offset(block_table[j / cache.block_size], 0, 1, j % cache.block_size) + kvh * kHd; };
  __m512i idx;
  {
    alignas(64) uint16_t ix[32];
    for (int i = 0; i < 16; ++i) ix[2 * i] = static_cast<uint16_t>(i), ix[2 * i + 1] = static_cast<uint16_t>(16 + i);
    idx = _mm512_load_si512(ix);
  }
  for (int64_t c = 0; c < T / 32; ++c) {
    for (int dt = 0; dt < 2; ++dt)
      for (int nt = 0; nt < 2; ++nt) {
        __m512i r[16];
        for (int n = 0; n < 16; ++n) r[n] = _mm512_loadu_si512(k_row(c * 32 + nt * 16 + n) + dt * 32);
        transpose16(r);
        uint16_t* tile = kt + ((c * 2 + dt) * 2 + nt) * 512;
        for (int i = 0; i < 16; ++i) _mm512_storeu_si512(tile + i * 32, r[i]);
      }
    for (int dn = 0; dn < 4; ++dn) {
      uint16_t* tile = vt + (c * 4 + dn) * 512;
      for (int kp = 0; kp < 16; ++kp) {
        const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v_row(c * 32 + 2 * kp) + dn * 16));
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v_row(c * 32 + 2 * kp + 1) + dn * 16));
        const __m512i ab = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
        _mm512_storeu_si512(tile + kp * 32, _mm512_permutexvar_epi16(idx, ab));
      }
    }
  }
}

// out[t, h, :] for tokens [t0, t0 + 32) of query head h (one sequence at positions 0 .. T-1).
void attend_block(const float* q, int64_t h, int64_t t0, float scale, const uint16_t* kt, const uint16_t* vt,
                  float* out) {
  alignas(64) uint16_t qb[32 * 64];  // Q rows as bf16: A tiles (mt, dt) at 16 mt rows, 32 dt cols
  alignas(64) uint16_t pb[32 * 32];  // P rows as bf16: A tiles mt
  alignas(64) float s[32 * 32], pv[32 * 32], o[32 * 64];
  float m_run[32], l_run[32];
  for (int r = 0; r < 32; ++r) {
    const float* qr = q + ((t0 + r) * kH + h) * kHd;
    for (int d = 0; d < 64; d += 16) _mm256_store_si256(reinterpret_cast<__m256i*>(qb + r * 64 + d), to_bf16(_mm512_mul_ps(_mm512_loadu_ps(qr + d), _mm512_set1_ps(scale))));
    m_run[r] = -INFINITY;
    l_run[r] = 0.0f;
  }
  std::memset(o, 0, sizeof(o));
  const int64_t chunks = t0 / 32 + 1;
  for (int64_t c = 0; c < chunks; ++c) {
    // S = Q K^T: C tiles 0-3 = (mt, nt)
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    for (int dt = 0; dt < 2; ++dt) {
      _tile_loadd(4, qb + dt * 32, 128);
      _tile_loadd(5, qb + 16 * 64 + dt * 32, 128);
      _tile_loadd(6, kt + ((c * 2 + dt) * 2 + 0) * 512, 64);
      _tile_loadd(7, kt + ((c * 2 + dt) * 2 + 1) * 512, 64);
      _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, s, 128); _tile_stored(1, s + 16, 128); _tile_stored(2, s + 16 * 32, 128); _tile_stored(3, s + 16 * 32 + 16, 128);
    // Online softmax; causal mask on the diagonal chunk.
    const bool diag = c == chunks - 1;
    for (int r = 0; r < 32; ++r) {
      __m512 s0 = _mm512_load_ps(s + r * 32), s1 = _mm512_load_ps(s + r * 32 + 16);
      if (diag) {  // keys 32 c + k > token t0 + r are masked (32 c == t0 here)
        const __mmask16 k0 = static_cast<__mmask16>(r >= 15 ? 0xffff : (2u << r) - 1);
        const __mmask16 k1 = static_cast<__mmask16>(r < 16 ? 0 : (r >= 31 ? 0xffff : (2u << (r - 16)) - 1));
        s0 = _mm512_mask_blend_ps(k0, _mm512_set1_ps(-INFINITY), s0);
        s1 = _mm512_mask_blend_ps(k1, _mm512_set1_ps(-INFINITY), s1);
      }
      const float m_new = std::fmax(m_run[r], _mm512_reduce_max_ps(_mm512_max_ps(s0, s1)));
      const float corr = std::exp(m_run[r] - m_new);
      const __m512 mv = _mm512_set1_ps(m_new);
      const __m512 p0 = exp512(_mm512_sub_ps(s0, mv)), p1 = exp512(_mm512_sub_ps(s1, mv));
      l_run[r] = l_run[r] * corr + _mm512_reduce_add_ps(_mm512_add_ps(p0, p1));
      m_run[r] = m_new;
      _mm256_store_si256(reinterpret_cast<__m256i*>(pb + r * 32), to_bf16(p0));
      _mm256_store_si256(reinterpret_cast<__m256i*>(pb + r * 32 + 16), to_bf16(p1));
      if (corr != 1.0f)
        for (int d = 0; d < 64; d += 16) _mm512_store_ps(o + r * 64 + d, _mm512_mul_ps(_mm512_load_ps(o + r * 64 + d), _mm512_set1_ps(corr)));
    }
    // O += P V, 32 dims at a time: C tiles (mt, dn)
    for (int dh = 0; dh < 2; ++dh) {
      _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
      _tile_loadd(4, pb, 64);
      _tile_loadd(5, pb + 16 * 32, 64);
      _tile_loadd(6, vt + (c * 4 + 2 * dh) * 512, 64);
      _tile_loadd(7, vt + (c * 4 + 2 * dh + 1) * 512, 64);
      _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
      _tile_stored(0, pv, 128); _tile_stored(1, pv + 16, 128); _tile_stored(2, pv + 16 * 32, 128); _tile_stored(3, pv + 16 * 32 + 16, 128);
      for (int r = 0; r < 32; ++r)
        for (int d = 0; d < 32; d += 16)
          _mm512_store_ps(o + r * 64 + dh * 32 + d, _mm512_add_ps(_mm512_load_ps(o + r * 64 + dh * 32 + d), _mm512_load_ps(pv + r * 32 + d)));
    }
  }
  for (int r = 0; r < 32; ++r) {
    float* dst = out + ((t0 + r) * kH + h) * kHd;
    const __m512 inv = _mm512_set1_ps(1.0f / l_run[r]);
    for (int d = 0; d < 64; d += 16) _mm512_storeu_ps(dst + d, _mm512_mul_ps(_mm512_load_ps(o + r * 64 + d), inv));
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t T = argc > 1 ? std::atoll(argv[1]) : 512;  // a multiple of 32
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 5;
  syscall(SYS_arch_prctl, 0x1023, 18);  // ARCH_REQ_XCOMP_PERM, XTILEDATA
  ThreadPool pool(2);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> q(T * kH * kHd), out(T * kH * kHd), out_ref(T * kH * kHd);
  for (auto& e : q) e = u(rng) * 2.0f;
  KVCacheView cache;
  cache.dtype = DType::bf16;
  cache.num_blocks = (T + kBlock - 1) / kBlock;
  cache.num_layers = 1;
  cache.block_size = kBlock;
  cache.num_kv_heads = kHkv;
  cache.head_dim = kHd;
  std::vector<uint16_t> pool_mem(static_cast<size_t>(cache.num_blocks * cache.block_stride()));
  for (auto& e : pool_mem) e = f32_to_bf16(u(rng));
  cache.data = pool_mem.data();
  const OneSequence seq(T, cache.num_blocks, kH, 0.125f);
  const AttentionBatch& batch = seq.batch;
  const std::vector<int32_t>& block_table = seq.block_table;
  const CpuKernels* avx = cpu_kernels_for(CpuPath::avx512);
  std::vector<uint16_t> kt(kHkv * T * kHd), vt(kHkv * T * kHd);
  auto amx_attention = [&] {
    pool.parallel_for(kHkv, [&](int64_t b, int64_t e) {
      for (int64_t kvh = b; kvh < e; ++kvh) pack_kv(cache, block_table.data(), T, kvh, kt.data() + kvh * T * kHd, vt.data() + kvh * T * kHd);
    });
    const int64_t qblocks = T / 32;
    pool.parallel_for(kH * qblocks, [&](int64_t b, int64_t e) {
      configure_tiles();
      for (int64_t item = b; item < e; ++item) {
        const int64_t h = item / qblocks, qbk = item % qblocks, kvh = h / (kH / kHkv);
        attend_block(q.data(), h, qbk * 32, batch.scale, kt.data() + kvh * T * kHd, vt.data() + kvh * T * kHd, out.data());
      }
      _tile_release();
    });
  };
  double best_ref = 1e9, best_amx = 1e9;
  for (int r = 0; r < rounds; ++r) {
    double t0 = now();
    avx->paged_attention(pool, q.data(), cache, 0, batch, out_ref.data());
    best_ref = std::fmin(best_ref, now() - t0);
    t0 = now();
    amx_attention();
    best_amx = std::fmin(best_amx, now() - t0);
  }
  double worst = 0;
  for (size_t i = 0; i < out.size(); ++i) worst = std::fmax(worst, std::fabs(out[i] - out_ref[i]));
  std::printf("T=%lld: avx512 paged_attention %.2f ms, AMX prototype %.2f ms (%.1fx); max |diff| %.2e\n",
              static_cast<long long>(T), best_ref * 1e3, best_amx * 1e3, best_ref / best_amx, worst);
  return 0;
}
