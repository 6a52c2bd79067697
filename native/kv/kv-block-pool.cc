// kv-block-pool.cc: see kv-block-pool.h for what the pool owns and what stays true.
//
// The free queue, head evicted first (blocks start queued in block_id order):
//
//   free_head_ -> [b7] <-> [b2] <-> [b9] <-> ... <-> [b4] <- free_tail_
//                 LRU                                 MRU (freed last)
//
// touch() unlinks a block from anywhere in the queue in O(1); get_new_blocks() pops the head;
// free_blocks() appends at the tail.
//
// Duplicate hashes: the map keeps one block per hash. When two requests compute the same block
// at the same time, the second copy stays uncached (no hash, no event) and is reused as a plain
// block once freed; the `stored` event is split around it so every event's parent is right.
//
// Replay order (replay_events): `cleared`, then the cached blocks as a forest of chains. Roots
// are cached blocks whose parent is absent or not cached (a parent can be evicted while a
// duplicate-computed child lives on), taken in block_id order. From a root, one `stored` event
// follows the chain of first children (children in block_id order) to its end; every other
// child starts its own event later, with the block it hangs from as parent, before the next
// root. So a block's parent is always stored before it, and a linear prefix is one event.
#include "kv-block-pool.h"

#include <algorithm>
#include <cassert>

namespace llm {

BlockPool::BlockPool(int64_t num_blocks, bool enable_caching)
    : enable_caching_(enable_caching), blocks_(static_cast<size_t>(std::max<int64_t>(num_blocks, 0))) {
  for (size_t i = 0; i < blocks_.size(); ++i) {
    blocks_[i].block_id = static_cast<int32_t>(i);
    queue_append(&blocks_[i]);
  }
}

double BlockPool::usage() const {
  if (blocks_.empty()) return 0.0;
  return static_cast<double>(num_blocks() - num_free_) / static_cast<double>(num_blocks());
}

KVBlock* BlockPool::get_cached_block(uint64_t hash) {
  if (!enable_caching_) return nullptr;
  auto it = cached_.find(hash);
  return it == cached_.end() ? nullptr : it->second;
}

bool BlockPool::get_new_blocks(int64_t n, std::vector<KVBlock*>* out) {
  if (n < 0 || n > num_free_) return false;
  std::vector<uint64_t> removed;
  for (int64_t i = 0; i < n; ++i) {
    KVBlock* b = free_head_;
    queue_remove(b);
    evict_hash(b, &removed);
    assert(b->ref_cnt == 0);
    b->ref_cnt = 1;
    out->push_back(b);
  }
  events_.removed(std::move(removed));
  return true;
}

void BlockPool::touch(const std::vector<KVBlock*>& blocks) {
  for (KVBlock* b : blocks) {
    if (b->ref_cnt == 0) queue_remove(b);
    ++b->ref_cnt;
  }
}

void BlockPool::free_blocks(const std::vector<KVBlock*>& ordered) {
  for (KVBlock* b : ordered) {
    assert(b->ref_cnt > 0);
    if (--b->ref_cnt == 0) queue_append(b);
  }
}

void BlockPool::cache_full_blocks(const std::vector<KVBlock*>& blocks, size_t first,
                                  const std::vector<uint64_t>& hashes, const uint64_t* parent) {
  if (!enable_caching_) return;
  assert(first + hashes.size() <= blocks.size());
  bool run_has_parent = parent != nullptr;
  uint64_t run_parent = parent ? *parent : 0;
  std::vector<uint64_t> run;
  auto flush = [&]() {
    events_.stored(run_has_parent ? &run_parent : nullptr, std::move(run));
    run.clear();
  };
  for (size_t i = 0; i < hashes.size(); ++i) {
    KVBlock* b = blocks[first + i];
    const uint64_t h = hashes[i];
    const bool prev_has = i > 0 || parent != nullptr;
    const uint64_t prev = i > 0 ? hashes[i - 1] : (parent ? *parent : 0);
    if (!b->has_hash && cached_.emplace(h, b).second) {
      b->has_hash = true;
      b->block_hash = h;
      b->has_parent = prev_has;
      b->parent_hash = prev;
      run.push_back(h);
      continue;
    }
    // Already cached elsewhere: close the run; the next one hangs from this hash.
    flush();
    run_has_parent = true;
    run_parent = h;
  }
  flush();
}

bool BlockPool::reset_prefix_cache() {
  if (num_free_ != num_blocks()) return false;
  for (auto& entry : cached_) {
    KVBlock* b = entry.second;
    b->has_hash = false;
    b->has_parent = false;
    b->block_hash = b->parent_hash = 0;
  }
  cached_.clear();
  if (enable_caching_) events_.cleared();
  return true;
}

void BlockPool::replay_events() {
  if (!enable_caching_) return;
  events_.cleared();
  // children[parent hash] = cached blocks hanging from it, in block_id order.
  std::unordered_map<uint64_t, std::vector<KVBlock*>> children;
  std::vector<KVBlock*> roots;
  for (KVBlock& b : blocks_) {
    if (!b.has_hash) continue;
    if (b.has_parent && cached_.count(b.parent_hash))
      children[b.parent_hash].push_back(&b);
    else
      roots.push_back(&b);
  }
  // A stack of chain starts, popped in order: roots[0] first.
  std::vector<KVBlock*> starts(roots.rbegin(), roots.rend());
  while (!starts.empty()) {
    KVBlock* b = starts.back();
    starts.pop_back();
    const bool has_parent = b->has_parent;
    const uint64_t parent = b->parent_hash;
    std::vector<uint64_t> chain;
    std::vector<KVBlock*> later;  // other children along the chain, start after it
    while (b) {
      chain.push_back(b->block_hash);
      auto it = children.find(b->block_hash);
      if (it == children.end()) break;
      const std::vector<KVBlock*>& kids = it->second;
      for (size_t k = kids.size(); k-- > 1;) later.push_back(kids[k]);
      b = kids[0];
    }
    events_.stored(has_parent ? &parent : nullptr, std::move(chain));
    for (KVBlock* s : later) starts.push_back(s);
  }
}

void BlockPool::queue_append(KVBlock* b) {
  assert(!b->in_free_queue);
  b->prev_free = free_tail_;
  b->next_free = nullptr;
  if (free_tail_)
    free_tail_->next_free = b;
  else
    free_head_ = b;
  free_tail_ = b;
  b->in_free_queue = true;
  ++num_free_;
}

void BlockPool::queue_remove(KVBlock* b) {
  assert(b->in_free_queue);
  if (b->prev_free)
    b->prev_free->next_free = b->next_free;
  else
    free_head_ = b->next_free;
  if (b->next_free)
    b->next_free->prev_free = b->prev_free;
  else
    free_tail_ = b->prev_free;
  b->prev_free = b->next_free = nullptr;
  b->in_free_queue = false;
  --num_free_;
}

void BlockPool::evict_hash(KVBlock* b, std::vector<uint64_t>* removed) {
  if (!b->has_hash) return;
  cached_.erase(b->block_hash);
  removed->push_back(b->block_hash);
  b->has_hash = false;
  b->has_parent = false;
  b->block_hash = b->parent_hash = 0;
}

}  // namespace llm
