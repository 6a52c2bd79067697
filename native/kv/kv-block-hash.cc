// kv-block-hash.cc: the chained block hash (contract in kv-block-hash.h, DESIGN.md section 5).
//
// Owns: nothing but the byte layout of one hashed block:
//
//   first block:  | le_u32 t[0] | le_u32 t[1] | ... | le_u32 t[B-1] |             (4B bytes)
//   later blocks: | le_u64 parent | le_u32 t[iB] | ... | le_u32 t[iB+B-1] |      (8 + 4B bytes)
//
// Stays true: the bytes are written explicitly little-endian, so the hash is the same on every
// host and equals what test/vectors/make-block-hash-vectors.py computes with python-xxhash
// (xxh3_64_with_seed, xxh3.h, is the project's own XXH3).
#include "kv-block-hash.h"

#include "xxh3.h"

namespace llm {

namespace {

void put_le_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

void put_le_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

}  // namespace

uint64_t block_hash(const uint64_t* parent, const int32_t* tokens, int64_t block_size) {
  const size_t header = parent ? 8 : 0;
  std::vector<uint8_t> bytes(header + 4 * static_cast<size_t>(block_size));
  if (parent) put_le_u64(bytes.data(), *parent);
  for (int64_t i = 0; i < block_size; ++i)
    put_le_u32(bytes.data() + header + 4 * i, static_cast<uint32_t>(tokens[i]));
  return xxh3_64_with_seed(bytes.data(), bytes.size(), kBlockHashSeed);
}

void extend_block_hashes(const int32_t* tokens, int64_t num_tokens, int64_t block_size,
                         std::vector<uint64_t>* hashes) {
  if (block_size <= 0) return;
  const int64_t num_full = num_tokens / block_size;
  for (int64_t i = static_cast<int64_t>(hashes->size()); i < num_full; ++i) {
    const uint64_t* parent = i > 0 ? &(*hashes)[i - 1] : nullptr;
    const uint64_t h = block_hash(parent, tokens + i * block_size, block_size);
    hashes->push_back(h);
  }
}

}  // namespace llm
