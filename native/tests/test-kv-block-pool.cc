// test-kv-block-pool.cc: the BlockPool mechanism: free-queue order and LRU eviction, O(1)
// removal from the middle, ref counts, and the event stream (stored / removed / cleared, replay,
// event ids without gaps).
#include <algorithm>
#include <map>

#include "kv/kv-block-pool.h"
#include "test-harness.h"

using llm::BlockPool;
using llm::KVBlock;
using llm::KVEvent;
using llm::KVEventType;

namespace {

// Block ids in free-queue order, head (next evicted) first.
std::vector<int32_t> queue_order(BlockPool& pool) {
  const int64_t n = pool.num_free_blocks();
  std::vector<int32_t> ids;
  // The head is the queued block without a predecessor; follow the links from it.
  KVBlock* head = nullptr;
  for (int32_t i = 0; i < pool.num_blocks(); ++i) {
    KVBlock* b = pool.block(i);
    if (b->in_free_queue && b->prev_free == nullptr) head = b;
  }
  for (KVBlock* b = head; b; b = b->next_free) ids.push_back(b->block_id);
  CHECK_EQ(static_cast<int64_t>(ids.size()), n);
  return ids;
}

std::vector<KVBlock*> take(BlockPool& pool, int64_t n) {
  std::vector<KVBlock*> out;
  CHECK(pool.get_new_blocks(n, &out));
  return out;
}

bool ids_are_consecutive(const std::vector<KVEvent>& events, int64_t first) {
  for (size_t i = 0; i < events.size(); ++i)
    if (events[i].event_id != first + static_cast<int64_t>(i)) return false;
  return true;
}

}  // namespace

TEST(fresh_pool_queues_blocks_in_id_order) {
  BlockPool pool(5, true);
  CHECK_EQ(pool.num_free_blocks(), int64_t{5});
  CHECK(queue_order(pool) == (std::vector<int32_t>{0, 1, 2, 3, 4}));
  CHECK_NEAR(pool.usage(), 0.0, 0);
  std::vector<KVBlock*> got = take(pool, 2);
  CHECK_EQ(got[0]->block_id, 0);
  CHECK_EQ(got[1]->block_id, 1);
  CHECK_EQ(got[0]->ref_cnt, 1);
  CHECK_NEAR(pool.usage(), 0.4, 1e-12);
  CHECK_EQ(pool.events().pending(), size_t{0});  // uncached blocks: nothing to remove
}

TEST(get_new_blocks_refuses_more_than_free_and_takes_nothing) {
  BlockPool pool(3, true);
  std::vector<KVBlock*> out;
  CHECK(!pool.get_new_blocks(4, &out));
  CHECK(out.empty());
  CHECK_EQ(pool.num_free_blocks(), int64_t{3});
  CHECK(pool.get_new_blocks(3, &out));
  CHECK(!pool.get_new_blocks(1, &out));
  CHECK_EQ(out.size(), size_t{3});
  CHECK_EQ(pool.num_free_blocks(), int64_t{0});
}

TEST(freed_blocks_join_the_tail_in_the_given_order) {
  BlockPool pool(4, true);
  std::vector<KVBlock*> a = take(pool, 3);  // 0 1 2; queue: 3
  pool.free_blocks({a[2], a[1], a[0]});     // tail first, as the manager frees
  CHECK(queue_order(pool) == (std::vector<int32_t>{3, 2, 1, 0}));
  // The next allocation evicts from the head: the least recently freed first.
  std::vector<KVBlock*> b = take(pool, 2);
  CHECK_EQ(b[0]->block_id, 3);
  CHECK_EQ(b[1]->block_id, 2);
}

TEST(touch_removes_from_the_middle_and_counts_references) {
  BlockPool pool(5, true);
  std::vector<KVBlock*> a = take(pool, 5);
  pool.free_blocks(a);  // queue: 0 1 2 3 4
  pool.touch({a[2]});
  CHECK(queue_order(pool) == (std::vector<int32_t>{0, 1, 3, 4}));
  CHECK_EQ(a[2]->ref_cnt, 1);
  CHECK(!a[2]->in_free_queue && a[2]->prev_free == nullptr && a[2]->next_free == nullptr);
  pool.touch({a[2], a[0], a[4]});  // a[2] shared by a second holder; head and tail removed
  CHECK_EQ(a[2]->ref_cnt, 2);
  CHECK(queue_order(pool) == (std::vector<int32_t>{1, 3}));
  pool.free_blocks({a[2]});
  CHECK_EQ(a[2]->ref_cnt, 1);
  CHECK(!a[2]->in_free_queue);  // still held: not free
  pool.free_blocks({a[2], a[4], a[0]});
  CHECK(queue_order(pool) == (std::vector<int32_t>{1, 3, 2, 4, 0}));
  CHECK_EQ(pool.num_free_blocks(), int64_t{5});
}

TEST(cached_blocks_are_found_until_evicted_lru_first) {
  BlockPool pool(3, true);
  std::vector<KVBlock*> a = take(pool, 3);
  const std::vector<uint64_t> hashes = {0xa1, 0xa2, 0xa3};
  pool.cache_full_blocks(a, 0, hashes, nullptr);
  pool.free_blocks({a[2], a[1], a[0]});  // queue: 2 1 0
  CHECK(pool.get_cached_block(0xa1) == a[0]);
  CHECK(pool.get_cached_block(0xa3) == a[2]);
  pool.events().take();

  std::vector<KVBlock*> b = take(pool, 1);  // evicts block 2 (0xa3), the suffix
  CHECK(b[0] == a[2]);
  CHECK(pool.get_cached_block(0xa3) == nullptr);
  CHECK(!b[0]->has_hash);
  CHECK(pool.get_cached_block(0xa1) == a[0]);
  std::vector<KVEvent> ev = pool.events().take();
  CHECK_EQ(ev.size(), size_t{1});
  CHECK(ev[0].type == KVEventType::removed);
  CHECK(ev[0].block_hashes == std::vector<uint64_t>{0xa3});
}

TEST(stored_events_carry_the_parent) {
  BlockPool pool(4, true);
  std::vector<KVBlock*> a = take(pool, 4);
  pool.cache_full_blocks(a, 0, {0x10, 0x11}, nullptr);
  const uint64_t parent = 0x11;
  pool.cache_full_blocks(a, 2, {0x12}, &parent);
  std::vector<KVEvent> ev = pool.events().take();
  CHECK_EQ(ev.size(), size_t{2});
  CHECK(ev[0].type == KVEventType::stored && !ev[0].has_parent);
  CHECK(ev[0].block_hashes == (std::vector<uint64_t>{0x10, 0x11}));
  CHECK(ev[1].has_parent && ev[1].parent_hash == 0x11);
  CHECK(ev[1].block_hashes == std::vector<uint64_t>{0x12});
  CHECK(a[1]->has_parent && a[1]->parent_hash == 0x10);
  CHECK(a[2]->has_parent && a[2]->parent_hash == 0x11);
  CHECK(ids_are_consecutive(ev, 1));
}

TEST(a_hash_cached_twice_keeps_the_first_block_and_splits_the_event) {
  BlockPool pool(6, true);
  std::vector<KVBlock*> a = take(pool, 3);
  std::vector<KVBlock*> b = take(pool, 3);
  pool.cache_full_blocks(a, 0, {0x1, 0x2}, nullptr);
  pool.events().take();
  // b computed the same first two blocks concurrently, then a third.
  pool.cache_full_blocks(b, 0, {0x1, 0x2, 0x3}, nullptr);
  CHECK(pool.get_cached_block(0x2) == a[1]);
  CHECK(!b[0]->has_hash && !b[1]->has_hash);
  CHECK(pool.get_cached_block(0x3) == b[2]);
  std::vector<KVEvent> ev = pool.events().take();
  CHECK_EQ(ev.size(), size_t{1});
  CHECK(ev[0].has_parent && ev[0].parent_hash == 0x2);
  CHECK(ev[0].block_hashes == std::vector<uint64_t>{0x3});
}

TEST(caching_disabled_means_no_hashes_no_events) {
  BlockPool pool(2, false);
  std::vector<KVBlock*> a = take(pool, 2);
  pool.cache_full_blocks(a, 0, {0x1, 0x2}, nullptr);
  CHECK(pool.get_cached_block(0x1) == nullptr);
  CHECK(!a[0]->has_hash);
  pool.free_blocks(a);
  pool.replay_events();
  CHECK(pool.reset_prefix_cache());
  CHECK_EQ(pool.events().pending(), size_t{0});
}

TEST(reset_is_refused_while_blocks_are_in_use) {
  BlockPool pool(3, true);
  std::vector<KVBlock*> a = take(pool, 2);
  pool.cache_full_blocks(a, 0, {0x1, 0x2}, nullptr);
  pool.events().take();
  CHECK(!pool.reset_prefix_cache());
  CHECK(pool.get_cached_block(0x1) == a[0]);
  CHECK_EQ(pool.events().pending(), size_t{0});

  pool.free_blocks({a[1], a[0]});
  CHECK(pool.reset_prefix_cache());
  CHECK(pool.get_cached_block(0x1) == nullptr && pool.get_cached_block(0x2) == nullptr);
  CHECK(!a[0]->has_hash);
  std::vector<KVEvent> ev = pool.events().take();
  CHECK_EQ(ev.size(), size_t{1});
  CHECK(ev[0].type == KVEventType::cleared);
  // Evicting a block after the reset emits no `removed` for its old hash.
  take(pool, 3);
  CHECK_EQ(pool.events().pending(), size_t{0});
}

TEST(replay_stores_parents_first_one_event_per_chain) {
  // A tree of cached blocks:   r1 -> x1 -> x2 -> x3
  //                                     \-> y2          and a second root r2 -> z1
  BlockPool pool(8, true);
  std::vector<KVBlock*> x = take(pool, 4);  // blocks 0..3
  std::vector<KVBlock*> y = take(pool, 2);  // blocks 4, 5 (block 5 stays uncached)
  std::vector<KVBlock*> z = take(pool, 2);  // blocks 6, 7
  pool.cache_full_blocks(x, 0, {0x1, 0x11, 0x12, 0x13}, nullptr);
  const uint64_t x1 = 0x11;
  pool.cache_full_blocks({x[0], x[1], y[0]}, 2, {0x22}, &x1);
  pool.cache_full_blocks(z, 0, {0x2, 0x21}, nullptr);
  const int64_t before = pool.events().next_event_id();
  pool.events().take();

  pool.replay_events();
  std::vector<KVEvent> ev = pool.events().take();
  CHECK(ids_are_consecutive(ev, before));
  CHECK_EQ(ev.size(), size_t{4});
  CHECK(ev[0].type == KVEventType::cleared);
  // Every block appears once, after its parent.
  std::map<uint64_t, uint64_t> parent_of = {{0x11, 0x1}, {0x12, 0x11}, {0x13, 0x12}, {0x22, 0x11}, {0x21, 0x2}};
  std::vector<uint64_t> seen;
  for (size_t i = 1; i < ev.size(); ++i) {
    CHECK(ev[i].type == KVEventType::stored);
    uint64_t prev = ev[i].parent_hash;
    bool has_prev = ev[i].has_parent;
    for (uint64_t h : ev[i].block_hashes) {
      auto p = parent_of.find(h);
      CHECK(has_prev == (p != parent_of.end()));
      if (p != parent_of.end()) {
        CHECK_EQ(prev, p->second);
        CHECK(std::find(seen.begin(), seen.end(), p->second) != seen.end());
      }
      CHECK(std::find(seen.begin(), seen.end(), h) == seen.end());
      seen.push_back(h);
      prev = h;
      has_prev = true;
    }
  }
  CHECK_EQ(seen.size(), size_t{7});
  // The documented order: root r1's chain of first children, its branch, then root r2.
  CHECK(ev[1].block_hashes == (std::vector<uint64_t>{0x1, 0x11, 0x12, 0x13}));
  CHECK(ev[2].block_hashes == std::vector<uint64_t>{0x22});
  CHECK(ev[3].block_hashes == (std::vector<uint64_t>{0x2, 0x21}));
}

TEST(event_ids_never_gap_across_takes_and_replays) {
  BlockPool pool(4, true);
  std::vector<KVEvent> all;
  auto drain = [&]() {
    for (KVEvent& e : pool.events().take()) all.push_back(std::move(e));
  };
  std::vector<KVBlock*> a = take(pool, 4);
  pool.cache_full_blocks(a, 0, {0x1, 0x2, 0x3, 0x4}, nullptr);
  drain();
  pool.replay_events();
  pool.free_blocks({a[3], a[2], a[1], a[0]});
  take(pool, 2);  // evicts 0x4, 0x3 in one `removed`
  drain();
  pool.replay_events();
  drain();
  CHECK(ids_are_consecutive(all, 1));
  CHECK_EQ(all.size(), size_t{6});
  CHECK(all[3].type == KVEventType::removed);
  CHECK(all[3].block_hashes == (std::vector<uint64_t>{0x4, 0x3}));
  CHECK(all[5].block_hashes == (std::vector<uint64_t>{0x1, 0x2}));
  CHECK_EQ(pool.events().next_event_id(), int64_t{7});
}

int main() { return llm_test::run_all(); }
