// xxh3.h: XXH3-64 with a seed, the project's own implementation of the published XXH3 algorithm
// (xxHash 0.8 specification), so the build needs no system xxhash. It returns what
// XXH3_64bits_withSeed returns for every input length; test/vectors/block-hash.json (written with
// python-xxhash) checks it through the block hash, across the short, mid-size and long paths.
#pragma once

#include <cstddef>
#include <cstdint>

namespace llm {

// XXH3-64 of data[0 .. len) with `seed`; data may be nullptr when len is 0.
uint64_t xxh3_64_with_seed(const void* data, size_t len, uint64_t seed);

}  // namespace llm
