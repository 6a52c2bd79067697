// xxh3.cc: XXH3-64 with a seed (contract in xxh3.h), a plain scalar implementation.
//
// Length classes, each with its own mixing as the XXH3 specification defines it:
//   0, 1-3, 4-8, 9-16 bytes    one or two reads keyed by the default secret and the seed;
//   17-128, 129-240 bytes      16-byte mixes (mul128 folded to 64 bits) over the input;
//   > 240 bytes                the long path: 8 accumulators over 64-byte stripes, scrambled
//                              after each 1024-byte block, keyed by a secret derived from the
//                              seed (the default secret with the seed added and subtracted
//                              alternately per 8 bytes), the last stripe taken from the input's
//                              last 64 bytes.
// Reads are little-endian byte by byte, so the result is the same on every host.
#include "xxh3.h"

namespace llm {

namespace {

constexpr uint64_t kPrime32_1 = 0x9E3779B1u;
constexpr uint64_t kPrime32_2 = 0x85EBCA77u;
constexpr uint64_t kPrime32_3 = 0xC2B2AE3Du;
constexpr uint64_t kPrime64_1 = 0x9E3779B185EBCA87ull;
constexpr uint64_t kPrime64_2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kPrime64_3 = 0x165667B19E3779F9ull;
constexpr uint64_t kPrime64_4 = 0x85EBCA77C2B2AE63ull;
constexpr uint64_t kPrime64_5 = 0x27D4EB2F165667C5ull;
constexpr uint64_t kPrimeMx1 = 0x165667919E3779F9ull;
constexpr uint64_t kPrimeMx2 = 0x9FB21C651E98DF25ull;

constexpr size_t kSecretSize = 192;
constexpr size_t kStripeLen = 64;
constexpr size_t kSecretConsumeRate = 8;
constexpr size_t kMidSizeMax = 240;
constexpr size_t kSecretSizeMin = 136;
constexpr size_t kMidSizeStartOffset = 3;
constexpr size_t kMidSizeLastOffset = 17;
constexpr size_t kSecretLastAccStart = 7;
constexpr size_t kSecretMergeAccsStart = 11;

// The specification's default secret.
constexpr uint8_t kDefaultSecret[kSecretSize] = {
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
    0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
    0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
    0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
    0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
};

uint32_t read32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

uint64_t read64(const uint8_t* p) {
  return static_cast<uint64_t>(read32(p)) | static_cast<uint64_t>(read32(p + 4)) << 32;
}

void write64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

uint32_t swap32(uint32_t x) {
  return (x << 24) | ((x << 8) & 0x00ff0000u) | ((x >> 8) & 0x0000ff00u) | (x >> 24);
}

uint64_t swap64(uint64_t x) {
  return static_cast<uint64_t>(swap32(static_cast<uint32_t>(x))) << 32 | swap32(static_cast<uint32_t>(x >> 32));
}

// The 128-bit product of a and b, its two halves xored together.
uint64_t mul128_fold64(uint64_t a, uint64_t b) {
#if defined(__SIZEOF_INT128__)
  const unsigned __int128 p = static_cast<unsigned __int128>(a) * b;
  return static_cast<uint64_t>(p) ^ static_cast<uint64_t>(p >> 64);
#else
  const uint64_t a_lo = a & 0xffffffffu, a_hi = a >> 32, b_lo = b & 0xffffffffu, b_hi = b >> 32;
  const uint64_t lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi, hi_hi = a_hi * b_hi;
  const uint64_t cross = (lo_lo >> 32) + (hi_lo & 0xffffffffu) + lo_hi;
  const uint64_t upper = (hi_lo >> 32) + (cross >> 32) + hi_hi;
  const uint64_t lower = (cross << 32) | (lo_lo & 0xffffffffu);
  return lower ^ upper;
#endif
}

uint64_t xxh64_avalanche(uint64_t h) {
  h ^= h >> 33;
  h *= kPrime64_2;
  h ^= h >> 29;
  h *= kPrime64_3;
  h ^= h >> 32;
  return h;
}

uint64_t xxh3_avalanche(uint64_t h) {
  h ^= h >> 37;
  h *= kPrimeMx1;
  h ^= h >> 32;
  return h;
}

uint64_t rrmxmx(uint64_t h, uint64_t len) {
  h ^= rotl64(h, 49) ^ rotl64(h, 24);
  h *= kPrimeMx2;
  h ^= (h >> 35) + len;
  h *= kPrimeMx2;
  h ^= h >> 28;
  return h;
}

uint64_t len_1to3(const uint8_t* in, size_t len, const uint8_t* secret, uint64_t seed) {
  const uint32_t c1 = in[0], c2 = in[len >> 1], c3 = in[len - 1];
  const uint32_t combined = (c1 << 16) | (c2 << 24) | c3 | (static_cast<uint32_t>(len) << 8);
  const uint64_t bitflip = (read32(secret) ^ read32(secret + 4)) + seed;
  return xxh64_avalanche(static_cast<uint64_t>(combined) ^ bitflip);
}

uint64_t len_4to8(const uint8_t* in, size_t len, const uint8_t* secret, uint64_t seed) {
  seed ^= static_cast<uint64_t>(swap32(static_cast<uint32_t>(seed))) << 32;
  const uint64_t first = read32(in), last = read32(in + len - 4);
  const uint64_t bitflip = (read64(secret + 8) ^ read64(secret + 16)) - seed;
  return rrmxmx((last + (first << 32)) ^ bitflip, len);
}

uint64_t len_9to16(const uint8_t* in, size_t len, const uint8_t* secret, uint64_t seed) {
  const uint64_t bitflip_lo = (read64(secret + 24) ^ read64(secret + 32)) + seed;
  const uint64_t bitflip_hi = (read64(secret + 40) ^ read64(secret + 48)) - seed;
  const uint64_t lo = read64(in) ^ bitflip_lo;
  const uint64_t hi = read64(in + len - 8) ^ bitflip_hi;
  return xxh3_avalanche(len + swap64(lo) + hi + mul128_fold64(lo, hi));
}

uint64_t len_0to16(const uint8_t* in, size_t len, const uint8_t* secret, uint64_t seed) {
  if (len > 8) return len_9to16(in, len, secret, seed);
  if (len >= 4) return len_4to8(in, len, secret, seed);
  if (len > 0) return len_1to3(in, len, secret, seed);
  return xxh64_avalanche(seed ^ read64(secret + 56) ^ read64(secret + 64));
}

uint64_t mix16(const uint8_t* in, const uint8_t* secret, uint64_t seed) {
  return mul128_fold64(read64(in) ^ (read64(secret) + seed), read64(in + 8) ^ (read64(secret + 8) - seed));
}

// 17-128 bytes: pairs of 16-byte mixes from both ends, moving inwards.
uint64_t len_17to128(const uint8_t* in, size_t len, const uint8_t* secret, uint64_t seed) {
  uint64_t acc = len * kPrime64_1;
  const size_t pairs = (len - 1) / 32;  // 0 .. 3: how many further pairs beyond the outermost
  for (size_t i = pairs + 1; i-- > 0;) {
    acc += mix16(in + 16 * i, secret + 32 * i, seed);
    acc += mix16(in + len - 16 * (i + 1), secret + 32 * i + 16, seed);
  }
  return xxh3_avalanche(acc);
}

// 129-240 bytes: the first 8 blocks of 16 with the secret from its start, avalanched, then the
// rest with the secret offset by 3, and the last 16 bytes.
uint64_t len_129to240(const uint8_t* in, size_t len, const uint8_t* secret, uint64_t seed) {
  uint64_t acc = len * kPrime64_1;
  const size_t rounds = len / 16;
  for (size_t i = 0; i < 8; ++i) acc += mix16(in + 16 * i, secret + 16 * i, seed);
  acc = xxh3_avalanche(acc);
  for (size_t i = 8; i < rounds; ++i) acc += mix16(in + 16 * i, secret + 16 * (i - 8) + kMidSizeStartOffset, seed);
  acc += mix16(in + len - 16, secret + kSecretSizeMin - kMidSizeLastOffset, seed);
  return xxh3_avalanche(acc);
}

// One 64-byte stripe into the 8 accumulators.
void accumulate_stripe(uint64_t acc[8], const uint8_t* in, const uint8_t* secret) {
  for (int i = 0; i < 8; ++i) {
    const uint64_t value = read64(in + 8 * i);
    const uint64_t keyed = value ^ read64(secret + 8 * i);
    acc[i ^ 1] += value;
    acc[i] += (keyed & 0xffffffffu) * (keyed >> 32);
  }
}

void scramble(uint64_t acc[8], const uint8_t* secret) {
  for (int i = 0; i < 8; ++i) {
    uint64_t a = acc[i];
    a ^= a >> 47;
    a ^= read64(secret + 8 * i);
    a *= kPrime32_1;
    acc[i] = a;
  }
}

uint64_t hash_long(const uint8_t* in, size_t len, const uint8_t* secret) {
  uint64_t acc[8] = {kPrime32_3, kPrime64_1, kPrime64_2, kPrime64_3,
                     kPrime64_4, kPrime32_2, kPrime64_5, kPrime32_1};
  const size_t stripes_per_block = (kSecretSize - kStripeLen) / kSecretConsumeRate;
  const size_t block_len = kStripeLen * stripes_per_block;
  const size_t blocks = (len - 1) / block_len;
  for (size_t b = 0; b < blocks; ++b) {
    for (size_t s = 0; s < stripes_per_block; ++s)
      accumulate_stripe(acc, in + b * block_len + s * kStripeLen, secret + s * kSecretConsumeRate);
    scramble(acc, secret + kSecretSize - kStripeLen);
  }
  // The last block's full stripes, leaving at least one byte for the last stripe...
  const size_t stripes = ((len - 1) - block_len * blocks) / kStripeLen;
  for (size_t s = 0; s < stripes; ++s)
    accumulate_stripe(acc, in + blocks * block_len + s * kStripeLen, secret + s * kSecretConsumeRate);
  // ... which is the input's last 64 bytes (overlapping the stripes before it).
  accumulate_stripe(acc, in + len - kStripeLen, secret + kSecretSize - kStripeLen - kSecretLastAccStart);
  uint64_t result = len * kPrime64_1;
  const uint8_t* merge_secret = secret + kSecretMergeAccsStart;
  for (int i = 0; i < 4; ++i)
    result += mul128_fold64(acc[2 * i] ^ read64(merge_secret + 16 * i), acc[2 * i + 1] ^ read64(merge_secret + 16 * i + 8));
  return xxh3_avalanche(result);
}

}  // namespace

uint64_t xxh3_64_with_seed(const void* data, size_t len, uint64_t seed) {
  const uint8_t* in = static_cast<const uint8_t*>(data);
  if (len <= 16) return len_0to16(in, len, kDefaultSecret, seed);
  if (len <= 128) return len_17to128(in, len, kDefaultSecret, seed);
  if (len <= kMidSizeMax) return len_129to240(in, len, kDefaultSecret, seed);
  if (seed == 0) return hash_long(in, len, kDefaultSecret);
  uint8_t secret[kSecretSize];
  for (size_t i = 0; i < kSecretSize; i += 16) {
    write64(secret + i, read64(kDefaultSecret + i) + seed);
    write64(secret + i + 8, read64(kDefaultSecret + i + 8) - seed);
  }
  return hash_long(in, len, secret);
}

}  // namespace llm
