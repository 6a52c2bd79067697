// test-engine-remote-prefill.cc: the engine's remote-prefill hooks (DESIGN.md sections 4-5),
// with two or three engines in one process and the transfer done by memcpy between their pools:
// the decode side parks a request with blocks for its prompt, the prefill side computes the
// prompt but its last token and holds the blocks, the blocks are copied, the decode side
// completes. Greedy tokens must equal those of one engine serving the request alone.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine-steps.h"
#include "model-writer.h"
#include "test-harness.h"

using namespace llm;
using llm_test::TempDir;
using llm_test::awaiting;
using llm_test::finished;
using llm_test::Seen;
using llm_test::step_until;

namespace {

constexpr int64_t kBlockSize = 4;

struct Fixture {
  TempDir tmp;
  std::string dir;
  Fixture() {
    dir = tmp.sub("model");
    llm_test::TinyModelSpec spec;
    spec.vocab_size = 48;
    llm_test::write_model(dir, spec);
  }
  std::unique_ptr<Engine> engine(int64_t num_blocks = 64) const {
    EngineConfig c;
    c.model_dir = dir;
    c.block_size = kBlockSize;
    c.num_kv_blocks = num_blocks;
    c.max_num_batched_tokens = 64;
    c.num_threads = 2;
    c.kv_shared_memory = true;
    std::unique_ptr<Engine> e;
    Status st = Engine::create(c, &e);
    if (!st.ok()) std::printf("  Engine::create: %s\n", st.message().c_str());
    return e;
  }
};

std::vector<int32_t> prompt_of(int64_t n, int32_t salt) {
  std::vector<int32_t> p(n);
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<int32_t>((i * 7 + salt * 13 + 3) % 48);
  return p;
}

std::unique_ptr<Request> request(const std::string& id, std::vector<int32_t> prompt, int64_t external = 0,
                                 bool prefill_only = false) {
  return llm_test::greedy_request(id, std::move(prompt), external, prefill_only);
}

std::vector<int32_t> serve_alone(const Fixture& f, const std::vector<int32_t>& prompt) {
  auto e = f.engine();
  CHECK(e->add_request(request("alone", prompt)).ok());
  return step_until(*e, "alone", finished).tokens;
}

// Copies blocks src_ids[i] of `from` into dst_ids[i] of `to`, for i in [begin, end).
void copy_blocks(const Engine& from, const std::vector<int32_t>& src_ids, const Engine& to,
                 const std::vector<int32_t>& dst_ids, size_t begin, size_t end) {
  const KVCacheView a = from.kv_region().view, b = to.kv_region().view;
  const int64_t block_bytes = a.block_bytes();
  CHECK_EQ(block_bytes, b.block_bytes());
  for (size_t i = begin; i < end; ++i)
    std::memcpy(static_cast<char*>(b.data) + dst_ids[i] * block_bytes,
                static_cast<const char*>(a.data) + src_ids[i] * block_bytes, block_bytes);
}

}  // namespace

TEST(remote_prefill_gives_the_tokens_of_local_serving) {
  Fixture f;
  for (int64_t n : {23, 21, 2}) {  // partial last block; (n - 1) % block_size == 0; shortest
    const std::vector<int32_t> prompt = prompt_of(n, static_cast<int32_t>(n));
    const std::vector<int32_t> want = serve_alone(f, prompt);

    auto decode = f.engine(), prefill = f.engine();
    CHECK(decode->add_request(request("r", prompt, n - 1)).ok());
    Seen d = step_until(*decode, "r", awaiting);
    CHECK_EQ(d.last.block_ids.size(), static_cast<size_t>((n + kBlockSize - 1) / kBlockSize));
    CHECK_EQ(d.last.num_cached_tokens, 0);
    CHECK(d.tokens.empty());

    CHECK(prefill->add_request(request("p", prompt, 0, true)).ok());
    Seen p = step_until(*prefill, "p", finished);
    CHECK(p.last.finish_reason == FinishReason::prefilled);
    CHECK(p.tokens.empty());
    const size_t held = static_cast<size_t>((n - 1 + kBlockSize - 1) / kBlockSize);
    CHECK_EQ(p.last.block_ids.size(), held);
    CHECK_EQ(prefill->metrics().kv_active_blocks, static_cast<int64_t>(held));

    copy_blocks(*prefill, p.last.block_ids, *decode, d.last.block_ids, 0, held);
    prefill->release_held("p");
    CHECK_EQ(prefill->metrics().kv_active_blocks, 0);
    decode->complete_external_kv("r", true);
    Seen done = step_until(*decode, "r", finished);
    CHECK(done.tokens == want);
    CHECK_EQ(decode->metrics().kv_active_blocks, 0);
  }
}

TEST(the_decode_side_prefix_hit_is_read_and_only_new_blocks_are_written) {
  Fixture f;
  const std::vector<int32_t> first = prompt_of(17, 1);
  std::vector<int32_t> second(first.begin(), first.begin() + 16);  // 4 shared full blocks
  for (int32_t t : prompt_of(13, 2)) second.push_back(t);
  const std::vector<int32_t> want = serve_alone(f, second);

  auto decode = f.engine(), prefill = f.engine();
  CHECK(decode->add_request(request("warm", first)).ok());
  step_until(*decode, "warm", finished);

  const int64_t n = static_cast<int64_t>(second.size());
  CHECK(decode->add_request(request("r", second, n - 1)).ok());
  Seen d = step_until(*decode, "r", awaiting);
  CHECK_EQ(d.last.num_cached_tokens, 16);
  const size_t computed_blocks = 4;

  // The prefill side has none of it cached: it parks too, and reads the decode side's blocks.
  CHECK(prefill->add_request(request("p", second, computed_blocks * kBlockSize, true)).ok());
  Seen pa = step_until(*prefill, "p", awaiting);
  CHECK_EQ(pa.last.num_cached_tokens, 0);
  copy_blocks(*decode, d.last.block_ids, *prefill, pa.last.block_ids, 0, computed_blocks);
  prefill->complete_external_kv("p", true);
  Seen p = step_until(*prefill, "p", finished);
  CHECK(p.last.finish_reason == FinishReason::prefilled);
  // The read blocks became cached on the prefill side too: one stored event covers them all.
  size_t stored = 0;
  for (const KVEvent& ev : p.events) stored += ev.block_hashes.size();
  CHECK_EQ(stored, static_cast<size_t>((n - 1) / kBlockSize));

  copy_blocks(*prefill, p.last.block_ids, *decode, d.last.block_ids, computed_blocks, p.last.block_ids.size());
  prefill->release_held("p");
  decode->complete_external_kv("r", true);
  Seen done = step_until(*decode, "r", finished);
  CHECK(done.tokens == want);
}

TEST(a_failed_remote_prefill_falls_back_to_local_and_late_completions_are_ignored) {
  Fixture f;
  const std::vector<int32_t> prompt = prompt_of(30, 5);
  const std::vector<int32_t> want = serve_alone(f, prompt);
  auto decode = f.engine();
  CHECK(decode->add_request(request("r", prompt, 29)).ok());
  step_until(*decode, "r", awaiting);
  decode->complete_external_kv("r", false);
  decode->complete_external_kv("r", true);        // a duplicate / late completion: ignored
  decode->complete_external_kv("unknown", true);  // ignored
  Seen done = step_until(*decode, "r", finished);
  CHECK(done.tokens == want);
  CHECK_EQ(decode->metrics().kv_active_blocks, 0);
}

TEST(parked_requests_hold_a_seat_and_blocks_and_are_never_preempted) {
  Fixture f;
  auto decode = f.engine(12);  // 12 blocks of 4 tokens
  CHECK(decode->add_request(request("parked", prompt_of(24, 1), 23)).ok());  // 6 blocks
  step_until(*decode, "parked", awaiting);
  CHECK_EQ(decode->metrics().kv_active_blocks, 6);
  CHECK_EQ(decode->metrics().request_active_slots, 1);
  // "other" needs 8 blocks (24 + 8 tokens) beside the parked 6: it can start but not finish,
  // and when blocks run out it is the one that gives way, never the parked request.
  CHECK(decode->add_request(request("other", prompt_of(24, 2))).ok());
  Seen other;
  for (int i = 0; i < 6; ++i) {
    StepResult s;
    CHECK(decode->step(&s).ok());
    for (auto& o : s.outputs) {
      CHECK(o.request_id != "parked");
      other.tokens.insert(other.tokens.end(), o.new_token_ids.begin(), o.new_token_ids.end());
    }
    CHECK(decode->metrics().kv_active_blocks >= 6);
  }
  CHECK(decode->metrics().num_preemptions > 0);
  // Once it goes on locally, both finish, with the tokens each would get alone.
  decode->complete_external_kv("parked", false);
  Seen parked = step_until(*decode, "parked", finished);
  CHECK(parked.tokens == serve_alone(f, prompt_of(24, 1)));
  other = step_until(*decode, "other", finished, other);
  CHECK(other.tokens == serve_alone(f, prompt_of(24, 2)));
  CHECK_EQ(decode->metrics().kv_active_blocks, 0);
}

TEST(external_tokens_are_validated) {
  Fixture f;
  auto e = f.engine();
  CHECK(!e->add_request(request("a", prompt_of(5, 1), 5)).ok());
  CHECK(!e->add_request(request("b", prompt_of(5, 1), -1)).ok());
  CHECK(e->add_request(request("c", prompt_of(5, 1), 4)).ok());
  CHECK(!e->kv_region().shm_name.empty());
}

int main() { return llm_test::run_all(); }
