// kv-cache-manager.h: the policy of the paged KV cache (vLLM v1's KVCacheManager): which
// blocks each request holds, prefix-cache lookups, and freeing.
//
// Owns: the block table (ordered blocks) of every request that holds blocks.
// Stays true: a request's block table covers at least its computed tokens plus those scheduled
// this step; full blocks of computed tokens are cached (hashed) as soon as they are complete;
// a request never holds the same block twice.
// Prefix hits: the longest run of leading full blocks whose chained hashes are cached, capped
// so at least one token is left to compute (the last prompt token produces the logits).
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "kv-block-pool.h"
#include "request.h"

namespace llm {

struct KVCacheManagerConfig {
  int64_t num_blocks = 0;
  int64_t block_size = 16;
  bool enable_prefix_caching = true;
};

class KVCacheManager {
 public:
  explicit KVCacheManager(const KVCacheManagerConfig& cfg);

  int64_t block_size() const { return block_size_; }
  BlockPool& pool() { return pool_; }
  const BlockPool& pool() const { return pool_; }

  // Extends req->block_hashes to every full block of req->all_token_ids (no-op with prefix
  // caching off: then requests carry no hashes).
  void update_block_hashes(Request* req) const;

  // The cached prefix of a request not yet holding blocks: its blocks (not yet touched) and
  // the number of tokens they cover, at most (num_tokens - 1) / block_size blocks. Updates the
  // request's block_hashes as needed. Pure lookup: may be repeated while the request waits.
  std::vector<KVBlock*> get_computed_blocks(Request* req, int64_t* num_computed_tokens);

  // Gives req enough blocks for its computed tokens + num_new_tokens tokens. A request holding
  // no blocks first adopts new_computed_blocks (from get_computed_blocks; they become its
  // leading blocks, and req->num_computed_tokens must still be 0: the caller sets it to the
  // cached tokens after success); that adoption is what the prefix-cache counters count
  // (queries += num_tokens, hits += cached tokens). Returns false without changing anything
  // when the pool cannot supply the blocks.
  //
  //   | < computed > | < new computed (adopted) > | < new: num_new_tokens > |
  //   |<------------------ blocks: ceil(total / block_size) -------------->|
  bool allocate_slots(Request* req, int64_t num_new_tokens,
                      const std::vector<KVBlock*>& new_computed_blocks);

  // After a step computed tokens up to req->num_computed_tokens (and appended any sampled
  // token), extends the hashes and caches the newly full computed blocks: one `stored` event
  // whose parent is the hash of the block before them.
  void cache_blocks(Request* req);

  // Releases every block of req (tail first) and forgets its table.
  void free(Request* req);

  // The blocks of req in order (an empty table when it holds none; never nullptr).
  const std::vector<KVBlock*>* blocks_of(const std::string& request_id) const;

  int64_t num_active_blocks() const { return pool_.num_blocks() - pool_.num_free_blocks(); }
  int64_t prefix_cache_queries() const { return queries_; }  // tokens looked up, per admission
  int64_t prefix_cache_hits() const { return hits_; }        // tokens found

 private:
  int64_t block_size_;
  bool enable_prefix_caching_;
  BlockPool pool_;
  std::unordered_map<std::string, std::vector<KVBlock*>> tables_;
  std::unordered_map<std::string, int64_t> num_cached_blocks_;  // blocks already hashed+cached
  int64_t queries_ = 0;
  int64_t hits_ = 0;
};

}  // namespace llm
