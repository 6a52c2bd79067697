// kv-cache-manager.cc: see kv-cache-manager.h for what the manager owns and what stays true.
//
// A request's table, after allocate_slots, for block_size 4:
//
//   tokens  | t0 t1 t2 t3 | t4 t5 t6 t7 | t8 t9 .. .. |
//   blocks  |    b12      |     b3      |     b40     |
//            <- cached (hashed) -------> <- not full ->
//   num_cached_blocks_ = 2: blocks [0, 2) are in the pool's hash map under block_hashes[0, 2).
//
// Tables are freed in reverse (tail first): the pool queues the last block first, so the suffix
// of a sequence is evicted before its prefix, which other requests are likelier to share.
#include "kv-cache-manager.h"

#include <algorithm>
#include <cassert>

#include "kv-block-hash.h"

namespace llm {

KVCacheManager::KVCacheManager(const KVCacheManagerConfig& cfg)
    : block_size_(std::max<int64_t>(cfg.block_size, 1)),
      enable_prefix_caching_(cfg.enable_prefix_caching),
      pool_(cfg.num_blocks, cfg.enable_prefix_caching) {}

void KVCacheManager::update_block_hashes(Request* req) const {
  if (!enable_prefix_caching_) return;
  extend_block_hashes(req->all_token_ids.data(), req->num_tokens(), block_size_, &req->block_hashes);
}

std::vector<KVBlock*> KVCacheManager::get_computed_blocks(Request* req, int64_t* num_computed_tokens) {
  std::vector<KVBlock*> blocks;
  *num_computed_tokens = 0;
  if (!enable_prefix_caching_ || req->num_tokens() == 0) return blocks;
  update_block_hashes(req);
  // Leave at least one token to compute: its logits start the output.
  const size_t max_blocks = std::min(static_cast<size_t>((req->num_tokens() - 1) / block_size_),
                                     req->block_hashes.size());
  for (size_t i = 0; i < max_blocks; ++i) {
    KVBlock* b = pool_.get_cached_block(req->block_hashes[i]);
    if (!b) break;
    blocks.push_back(b);
  }
  *num_computed_tokens = static_cast<int64_t>(blocks.size()) * block_size_;
  return blocks;
}

bool KVCacheManager::allocate_slots(Request* req, int64_t num_new_tokens,
                                    const std::vector<KVBlock*>& new_computed_blocks) {
  assert(num_new_tokens >= 0);
  auto it = tables_.find(req->request_id);
  const bool adopting = it == tables_.end();
  assert(adopting ? req->num_computed_tokens == 0 : new_computed_blocks.empty());
  const int64_t num_adopted = adopting ? static_cast<int64_t>(new_computed_blocks.size()) : 0;
  const int64_t held = adopting ? 0 : static_cast<int64_t>(it->second.size());

  const int64_t computed = req->num_computed_tokens + num_adopted * block_size_;
  const int64_t required = (computed + num_new_tokens + block_size_ - 1) / block_size_;
  const int64_t to_allocate = std::max<int64_t>(required - held - num_adopted, 0);
  // Adopted blocks nobody holds sit in the free queue: touching them takes them out of it.
  int64_t adopted_free = 0;
  for (int64_t i = 0; i < num_adopted; ++i) adopted_free += new_computed_blocks[i]->ref_cnt == 0;
  if (to_allocate + adopted_free > pool_.num_free_blocks()) return false;

  std::vector<KVBlock*>& table = tables_[req->request_id];
  if (adopting) {
    pool_.touch(new_computed_blocks);
    table = new_computed_blocks;
    num_cached_blocks_[req->request_id] = num_adopted;
    if (enable_prefix_caching_) {
      queries_ += req->num_tokens();
      hits_ += num_adopted * block_size_;
    }
  }
  const bool ok = pool_.get_new_blocks(to_allocate, &table);
  assert(ok);
  (void)ok;
  return true;
}

void KVCacheManager::cache_blocks(Request* req) {
  if (!enable_prefix_caching_) return;
  auto it = tables_.find(req->request_id);
  if (it == tables_.end()) return;
  update_block_hashes(req);
  const std::vector<KVBlock*>& table = it->second;
  int64_t& num_cached = num_cached_blocks_[req->request_id];
  const int64_t num_full = std::min({req->num_computed_tokens / block_size_,
                                     static_cast<int64_t>(table.size()),
                                     static_cast<int64_t>(req->block_hashes.size())});
  if (num_full <= num_cached) return;
  const std::vector<uint64_t> hashes(req->block_hashes.begin() + num_cached,
                                     req->block_hashes.begin() + num_full);
  const uint64_t* parent = num_cached > 0 ? &req->block_hashes[num_cached - 1] : nullptr;
  pool_.cache_full_blocks(table, static_cast<size_t>(num_cached), hashes, parent);
  num_cached = num_full;
}

void KVCacheManager::free(Request* req) {
  auto it = tables_.find(req->request_id);
  if (it == tables_.end()) return;
  const std::vector<KVBlock*> tail_first(it->second.rbegin(), it->second.rend());
  pool_.free_blocks(tail_first);
  tables_.erase(it);
  num_cached_blocks_.erase(req->request_id);
}

const std::vector<KVBlock*>* KVCacheManager::blocks_of(const std::string& request_id) const {
  static const std::vector<KVBlock*> kNone;
  auto it = tables_.find(request_id);
  return it == tables_.end() ? &kNone : &it->second;
}

}  // namespace llm
