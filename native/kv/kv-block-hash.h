// kv-block-hash.h: the chained block hash contract (DESIGN.md section 5), shared with the
// router through test/vectors/block-hash.json.
//
//   h_0 = xxh3_64(seed = 1337, bytes = le_u32(tokens[0 .. B)))
//   h_i = xxh3_64(seed = 1337, bytes = le_u64(h_{i-1}) ++ le_u32(tokens[i*B .. (i+1)*B)))
//
// Only full blocks are hashed. A chained hash names the whole prefix up to its block.
#pragma once

#include <cstdint>
#include <vector>

namespace llm {

constexpr uint64_t kBlockHashSeed = 1337;

// Hash of one full block of block_size tokens; parent is nullptr for the first block.
uint64_t block_hash(const uint64_t* parent, const int32_t* tokens, int64_t block_size);

// Extends `hashes` (the chained hashes of the first hashes->size() blocks of `tokens`) with
// every further full block of tokens[0 .. num_tokens).
void extend_block_hashes(const int32_t* tokens, int64_t num_tokens, int64_t block_size,
                         std::vector<uint64_t>* hashes);

}  // namespace llm
