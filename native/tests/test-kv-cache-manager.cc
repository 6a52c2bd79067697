// test-kv-cache-manager.cc: the KVCacheManager policy: longest cached prefix, the cap that
// leaves one token to compute, all-or-nothing allocation, caching as blocks fill, tail-first
// freeing (seen through eviction order) and the prefix-cache counters.
#include <memory>

#include "kv/kv-block-hash.h"
#include "kv/kv-cache-manager.h"
#include "test-harness.h"

using namespace llm;

namespace {

std::unique_ptr<Request> make_request(const std::string& id, std::vector<int32_t> prompt) {
  auto r = std::make_unique<Request>();
  r->request_id = id;
  r->prompt_token_ids = prompt;
  r->all_token_ids = std::move(prompt);
  return r;
}

std::vector<int32_t> range(int32_t from, int32_t n) {
  std::vector<int32_t> v;
  for (int32_t i = 0; i < n; ++i) v.push_back(from + i);
  return v;
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Admits req like the scheduler does: prefix lookup, allocation of the rest, all computed.
void admit_and_compute(KVCacheManager& kv, Request* req) {
  int64_t cached = 0;
  std::vector<KVBlock*> hit = kv.get_computed_blocks(req, &cached);
  CHECK(kv.allocate_slots(req, req->num_tokens() - cached, hit));
  req->num_computed_tokens = req->num_tokens();
  kv.cache_blocks(req);
}

}  // namespace

TEST(reuses_the_longest_cached_prefix) {
  KVCacheManager kv({/*num_blocks=*/16, /*block_size=*/4, true});
  auto a = make_request("a", range(100, 10));  // blocks [100..104) [104..108), 2 tokens left over
  admit_and_compute(kv, a.get());
  const std::vector<KVBlock*> a_blocks = *kv.blocks_of("a");
  CHECK_EQ(a_blocks.size(), size_t{3});
  kv.free(a.get());

  int64_t n = -1;
  auto b = make_request("b", concat(range(100, 8), range(7, 5)));
  std::vector<KVBlock*> hit = kv.get_computed_blocks(b.get(), &n);
  CHECK_EQ(n, int64_t{8});
  CHECK(hit.size() == 2 && hit[0] == a_blocks[0] && hit[1] == a_blocks[1]);

  auto c = make_request("c", concat(range(100, 4), range(0, 9)));  // only the first block matches
  hit = kv.get_computed_blocks(c.get(), &n);
  CHECK_EQ(n, int64_t{4});
  CHECK(hit.size() == 1 && hit[0] == a_blocks[0]);

  auto d = make_request("d", concat({99}, range(101, 12)));  // first block differs: chain broken
  hit = kv.get_computed_blocks(d.get(), &n);
  CHECK_EQ(n, int64_t{0});
  CHECK(hit.empty());
  // Pure lookups: nothing touched, nothing counted.
  CHECK_EQ(kv.num_active_blocks(), int64_t{0});
  CHECK_EQ(kv.prefix_cache_queries(), int64_t{10});
}

TEST(the_cap_leaves_at_least_one_token_to_compute) {
  KVCacheManager kv({16, 4, true});
  auto a = make_request("a", range(0, 12));
  admit_and_compute(kv, a.get());
  kv.free(a.get());
  int64_t n = -1;
  auto same = make_request("same", range(0, 12));  // fully cached: (12 - 1) / 4 = 2 blocks
  CHECK_EQ(kv.get_computed_blocks(same.get(), &n).size(), size_t{2});
  CHECK_EQ(n, int64_t{8});
  auto plus_one = make_request("plus1", range(0, 13));  // (13 - 1) / 4 = 3 blocks
  CHECK_EQ(kv.get_computed_blocks(plus_one.get(), &n).size(), size_t{3});
  CHECK_EQ(n, int64_t{12});
  auto one_block = make_request("one", range(0, 4));  // (4 - 1) / 4 = 0
  CHECK(kv.get_computed_blocks(one_block.get(), &n).empty());
  CHECK_EQ(n, int64_t{0});
}

TEST(failed_allocation_changes_nothing) {
  // Pool of 5, block size 4. "a" caches blocks 0 and 1 then frees everything; "x" takes the
  // two never-used blocks; 3 free remain, 2 of them a's cached prefix.
  KVCacheManager kv({5, 4, true});
  auto a = make_request("a", range(0, 9));
  admit_and_compute(kv, a.get());
  kv.free(a.get());
  auto x = make_request("x", range(50, 8));
  CHECK(kv.allocate_slots(x.get(), 8, {}));
  CHECK_EQ(kv.pool().num_free_blocks(), int64_t{3});
  kv.pool().events().take();

  // "b" hits the 2 cached blocks and needs 2 more (13 tokens): touching the hits uses 2 of the
  // 3 free blocks, so only 1 is left for the new ones: refused.
  auto b = make_request("b", range(0, 13));
  int64_t n = 0;
  std::vector<KVBlock*> hit = kv.get_computed_blocks(b.get(), &n);
  CHECK_EQ(hit.size(), size_t{2});
  const int64_t queries = kv.prefix_cache_queries(), hits = kv.prefix_cache_hits();
  CHECK(!kv.allocate_slots(b.get(), 13 - n, hit));
  CHECK_EQ(kv.pool().num_free_blocks(), int64_t{3});
  CHECK(kv.blocks_of("b")->empty());
  CHECK(hit[0]->ref_cnt == 0 && hit[0]->in_free_queue && hit[1]->in_free_queue);
  CHECK(kv.pool().get_cached_block(b->block_hashes[0]) == hit[0]);
  CHECK_EQ(kv.prefix_cache_queries(), queries);
  CHECK_EQ(kv.prefix_cache_hits(), hits);
  CHECK_EQ(kv.pool().events().pending(), size_t{0});

  // A running request that cannot grow keeps its table as it was: 8 + 16 tokens need 4 more.
  x->num_computed_tokens = 8;
  CHECK(!kv.allocate_slots(x.get(), 16, {}));
  CHECK_EQ(kv.blocks_of("x")->size(), size_t{2});
  // With 12 tokens "b" fits: 2 hits + 1 new block.
  auto b2 = make_request("b2", range(0, 12));
  hit = kv.get_computed_blocks(b2.get(), &n);
  CHECK(kv.allocate_slots(b2.get(), 12 - n, hit));
  CHECK_EQ(kv.blocks_of("b2")->size(), size_t{3});
  CHECK_EQ(kv.pool().num_free_blocks(), int64_t{0});
}

TEST(allocation_grows_a_table_block_by_block) {
  KVCacheManager kv({8, 4, true});
  auto r = make_request("r", range(0, 5));
  CHECK(kv.allocate_slots(r.get(), 5, {}));
  CHECK_EQ(kv.blocks_of("r")->size(), size_t{2});
  r->num_computed_tokens = 5;
  r->append_output_token(77);  // 6 tokens: still fits in 2 blocks
  CHECK(kv.allocate_slots(r.get(), 1, {}));
  CHECK_EQ(kv.blocks_of("r")->size(), size_t{2});
  r->num_computed_tokens = 6;
  r->append_output_token(78);
  r->append_output_token(79);
  r->append_output_token(80);  // 9 tokens: needs a third block
  CHECK(kv.allocate_slots(r.get(), 3, {}));
  const std::vector<KVBlock*>& t = *kv.blocks_of("r");
  CHECK_EQ(t.size(), size_t{3});
  CHECK(t[0] != t[1] && t[1] != t[2] && t[0] != t[2]);
}

TEST(cache_blocks_stores_each_block_once_with_its_parent) {
  KVCacheManager kv({8, 4, true});
  auto r = make_request("r", range(0, 6));
  CHECK(kv.allocate_slots(r.get(), 6, {}));
  r->num_computed_tokens = 6;
  kv.cache_blocks(r.get());
  std::vector<KVEvent> ev = kv.pool().events().take();
  CHECK_EQ(ev.size(), size_t{1});
  CHECK(!ev[0].has_parent);
  CHECK(ev[0].block_hashes == std::vector<uint64_t>{r->block_hashes[0]});

  // Decode: generated tokens fill the second block; it is cached once computed.
  r->append_output_token(40);
  r->append_output_token(41);  // 8 tokens, 6 computed: block 1 full but not computed
  kv.cache_blocks(r.get());
  CHECK_EQ(kv.pool().events().pending(), size_t{0});
  CHECK_EQ(r->block_hashes.size(), size_t{2});
  CHECK(kv.allocate_slots(r.get(), 2, {}));
  r->num_computed_tokens = 8;
  kv.cache_blocks(r.get());
  kv.cache_blocks(r.get());  // idempotent
  ev = kv.pool().events().take();
  CHECK_EQ(ev.size(), size_t{1});
  CHECK(ev[0].has_parent && ev[0].parent_hash == r->block_hashes[0]);
  CHECK(ev[0].block_hashes == std::vector<uint64_t>{r->block_hashes[1]});
  std::vector<uint64_t> expect;
  extend_block_hashes(r->all_token_ids.data(), 8, 4, &expect);
  CHECK(r->block_hashes == expect);
}

TEST(free_releases_tail_first_so_the_suffix_is_evicted_first) {
  KVCacheManager kv({3, 4, true});
  auto a = make_request("a", range(0, 12));
  admit_and_compute(kv, a.get());
  const std::vector<uint64_t> h = a->block_hashes;
  CHECK_EQ(h.size(), size_t{3});
  kv.free(a.get());
  kv.pool().events().take();
  CHECK(kv.blocks_of("a")->empty());

  auto x = make_request("x", range(500, 4));
  CHECK(kv.allocate_slots(x.get(), 4, {}));
  std::vector<KVEvent> ev = kv.pool().events().take();
  CHECK(ev.size() == 1 && ev[0].type == KVEventType::removed);
  CHECK(ev[0].block_hashes == std::vector<uint64_t>{h[2]});
  auto y = make_request("y", range(600, 8));
  CHECK(kv.allocate_slots(y.get(), 8, {}));
  ev = kv.pool().events().take();
  CHECK(ev.size() == 1 && ev[0].block_hashes == (std::vector<uint64_t>{h[1], h[0]}));
}

TEST(shared_prefix_blocks_are_counted_and_survive_one_free) {
  KVCacheManager kv({8, 4, true});
  auto a = make_request("a", range(0, 9));
  admit_and_compute(kv, a.get());
  auto b = make_request("b", range(0, 10));
  admit_and_compute(kv, b.get());
  const std::vector<KVBlock*>& ta = *kv.blocks_of("a");
  const std::vector<KVBlock*>& tb = *kv.blocks_of("b");
  CHECK(ta[0] == tb[0] && ta[1] == tb[1] && ta[2] != tb[2]);
  CHECK_EQ(ta[0]->ref_cnt, 2);
  CHECK_EQ(kv.num_active_blocks(), int64_t{4});
  kv.free(a.get());
  CHECK_EQ(tb[0]->ref_cnt, 1);
  CHECK_EQ(kv.num_active_blocks(), int64_t{3});
  // Counters, in tokens: a looked up 9 and found 0, b looked up 10 and found 8.
  CHECK_EQ(kv.prefix_cache_queries(), int64_t{19});
  CHECK_EQ(kv.prefix_cache_hits(), int64_t{8});
}

TEST(prefix_caching_off_means_no_hashes_events_or_hits) {
  KVCacheManager kv({8, 4, false});
  auto a = make_request("a", range(0, 9));
  admit_and_compute(kv, a.get());
  kv.free(a.get());
  auto b = make_request("b", range(0, 9));
  int64_t n = -1;
  CHECK(kv.get_computed_blocks(b.get(), &n).empty());
  CHECK_EQ(n, int64_t{0});
  CHECK(a->block_hashes.empty() && b->block_hashes.empty());
  CHECK_EQ(kv.pool().events().pending(), size_t{0});
  CHECK_EQ(kv.prefix_cache_queries(), int64_t{0});
  CHECK_EQ(kv.prefix_cache_hits(), int64_t{0});
}

int main() { return llm_test::run_all(); }
