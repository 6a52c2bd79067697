// cpu-amx-tiles.h: the AMX tile set-up and the 16 x 16 register transpose, shared by the AMX
// matmul (cpu-amx.cc) and the AMX prefill attention (cpu-amx-attention.cc).
// Include only from files compiled with the AVX-512 + AMX flags (CMakeLists.txt); everything here
// is inline and in an anonymous namespace, like cpu-simd-kernels.h, so no wide-vector code can be
// picked by the linker for a caller on the baseline path.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace llm::cpu {
namespace {

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-7 all 16 rows x 64 bytes (cpu-amx.cc: 0-3 C, 16 x 16 fp32; 4-5 A, 16 rows x 32 bf16;
// 6-7 B, 16 k pairs x 16 x 2 bf16).
inline void configure_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  // GCC 12 does not see that ldtilecfg reads cfg and may drop the stores above (seen at -O2):
  // make them visible first.
  asm volatile("" : : "m"(cfg) : "memory");
  _tile_loadconfig(&cfg);
}

// The _mm512_permutexvar_epi16 index that interleaves a register's two halves of 16 bf16
// (a0 .. a15, b0 .. b15) into pairs (a0, b0, a1, b1, ...): two rows become one VNNI row.
inline __m512i pair_interleave() {
  alignas(64) uint16_t ix[32];
  for (int i = 0; i < 16; ++i) ix[2 * i] = static_cast<uint16_t>(i), ix[2 * i + 1] = static_cast<uint16_t>(16 + i);
  return _mm512_load_si512(ix);
}

// In-register transpose of a 16 x 16 matrix of 32-bit elements (r[i] is row i).
inline void transpose16(__m512i r[16]) {
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

}  // namespace
}  // namespace llm::cpu
