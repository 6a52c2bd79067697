// kv-block-pool.h: the mechanism of the paged KV cache (vLLM v1's BlockPool).
//
// Owns: every KV block's bookkeeping: ref count, block hash, and the free queue; the map from
// block hash to the cached block; the KV event log.
// Stays true:
//   - a block is in the free queue iff its ref_cnt == 0;
//   - a block with a hash is in cached_ (hash -> block) until it is evicted or the cache is
//     reset; each eviction emits `removed`, each newly cached block `stored`;
//   - the free queue is a doubly linked list in eviction order: the head is evicted first.
//     Freed blocks go to the tail, so least recently used cached blocks go first; a request's
//     blocks are freed tail first (caller's order) so its prefix outlives its suffix.
// Block 0 is an ordinary block (no reserved null block): padding uses negative slots instead.
// Policy (which request gets which blocks) lives in KVCacheManager.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "kv-events.h"

namespace llm {

struct KVBlock {
  int32_t block_id = 0;
  int32_t ref_cnt = 0;
  bool has_hash = false;
  uint64_t block_hash = 0;
  bool has_parent = false;       // for replay: the hash of the block before this one
  uint64_t parent_hash = 0;
  KVBlock* prev_free = nullptr;  // free-queue links; both null when not queued
  KVBlock* next_free = nullptr;
  bool in_free_queue = false;
};

class BlockPool {
 public:
  BlockPool(int64_t num_blocks, bool enable_caching);
  BlockPool(const BlockPool&) = delete;  // the free queue links point into blocks_
  BlockPool& operator=(const BlockPool&) = delete;

  int64_t num_blocks() const { return static_cast<int64_t>(blocks_.size()); }
  int64_t num_free_blocks() const { return num_free_; }
  // Fraction of blocks in use by requests (ref_cnt > 0), in [0, 1].
  double usage() const;
  KVBlock* block(int32_t block_id) { return &blocks_[block_id]; }

  // The cached block holding this chained hash, or nullptr.
  KVBlock* get_cached_block(uint64_t hash);
  // Takes n blocks from the head of the free queue (appended to *out, ref_cnt 1), evicting
  // their cached hashes in one `removed` event. Returns false (and takes nothing) when fewer
  // than n are free.
  bool get_new_blocks(int64_t n, std::vector<KVBlock*>* out);
  // Increments ref counts, pulling blocks with ref_cnt 0 out of the free queue (prefix hits).
  void touch(const std::vector<KVBlock*>& blocks);
  // Decrements ref counts in the given order; blocks reaching 0 join the queue tail in order.
  void free_blocks(const std::vector<KVBlock*>& ordered);
  // Marks blocks[first .. first + hashes.size()) as cached under these hashes and emits one
  // `stored` event. parent is the hash of the block before blocks[first] (nullptr for none).
  // A hash already cached by another block stays with that block: this copy is left uncached
  // and the event is split around it (each part with its true parent).
  void cache_full_blocks(const std::vector<KVBlock*>& blocks, size_t first,
                         const std::vector<uint64_t>& hashes, const uint64_t* parent);
  // Drops every cached hash of free blocks and emits `cleared`. Returns false (does nothing)
  // while any block is in use.
  bool reset_prefix_cache();
  // Emits `cleared` then `stored` events describing every cached block, parents first (order
  // in kv-block-pool.cc). Nothing with caching off.
  void replay_events();

  KVEventLog& events() { return events_; }

 private:
  void queue_append(KVBlock* b);
  void queue_remove(KVBlock* b);
  void evict_hash(KVBlock* b, std::vector<uint64_t>* removed);

  bool enable_caching_;
  std::vector<KVBlock> blocks_;
  KVBlock* free_head_ = nullptr;
  KVBlock* free_tail_ = nullptr;
  int64_t num_free_ = 0;
  std::unordered_map<uint64_t, KVBlock*> cached_;
  KVEventLog events_;
};

}  // namespace llm
