// fuzz-common.h: what the libFuzzer targets (fuzz-*.cc) and their seed writer (fuzz-seeds.cc)
// share: the tiny model every model seed is written from, the transfer layout the wire target
// checks hellos against, and a scratch directory for the readers that take a path.
//
// Stays true: a fuzz target stops the process (FUZZ_CHECK -> abort, which libFuzzer reports as a
// crash with the input) only when a reader broke a promise of its header: an ok Status for data
// it documents as refused, or a result that breaks its stated invariants. A non-ok Status is the
// expected answer to most inputs and is never a finding.
#pragma once

#include <stdlib.h>  // mkdtemp
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "model-writer.h"
#include "transfer/transfer-metadata.h"

#define FUZZ_CHECK(cond)                                                            \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)

namespace llm_fuzz {

// The model the config and safetensors seeds describe: every kind of tensor at its smallest
// (1 layer, 2 query heads on 1 kv head, head_dim 4), so a seed is a few KB.
inline llm_test::TinyModelSpec tiny_spec() {
  llm_test::TinyModelSpec s;
  s.vocab_size = 16;
  s.hidden_size = 8;
  s.intermediate_size = 8;
  s.num_layers = 1;
  s.num_heads = 2;
  s.num_kv_heads = 1;
  return s;
}

// The listener's own pool in the wire target: 2 layers, block_size 4, 2 kv heads of head_dim 8,
// bf16, 8 blocks, split over two tensor-parallel ranks (one kv head each).
inline llm::transfer::Layout wire_layout() {
  llm::transfer::Layout l;
  l.num_blocks = 8;
  l.num_layers = 2;
  l.block_size = 4;
  l.num_kv_heads = 2;
  l.head_dim = 8;
  l.dtype = llm::DType::bf16;
  l.block_bytes = 2 * l.num_layers * l.block_size * l.num_kv_heads * l.head_dim * 2;
  return l;
}

inline std::vector<llm::transfer::RegionSpec> wire_regions(int tp) {
  const llm::transfer::Layout l = wire_layout();
  std::vector<llm::transfer::RegionSpec> r;
  for (int i = 0; i < tp; ++i) {
    const int64_t heads = l.num_kv_heads / tp;
    r.push_back({"kvserve-fuzz-" + std::to_string(tp) + "-" + std::to_string(i),
                 l.num_blocks * l.block_bytes / tp, i, i * heads, heads});
  }
  return r;
}

// A directory of this process under /dev/shm (a tmpfs: no disk I/O per input), else $TMPDIR or
// /tmp, removed at exit.
inline const std::string& scratch_dir() {
  static const std::string* const dir = [] {  // never destroyed: the exit handler below reads it
    const char* tmp = std::getenv("TMPDIR");
    std::string base = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : (tmp && *tmp ? tmp : "/tmp");
    std::string templ = base + "/kvserve-fuzz-XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    if (mkdtemp(buf.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch_dir(), ec);
    });
    return new std::string(buf.data());
  }();
  return *dir;
}

// Replaces `path` with exactly `size` bytes, or removes it when data is null.
inline void put_file(const std::string& path, const uint8_t* data, size_t size) {
  if (data == nullptr) {
    ::unlink(path.c_str());
    return;
  }
  FILE* f = std::fopen(path.c_str(), "wb");
  FUZZ_CHECK(f != nullptr);
  if (size > 0) FUZZ_CHECK(std::fwrite(data, 1, size, f) == size);
  FUZZ_CHECK(std::fclose(f) == 0);
}

}  // namespace llm_fuzz
