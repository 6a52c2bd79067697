// test-token-masks.cc: the mask board of constrained requests (kv/token-masks.h): lengths,
// which puts it stores, the engine thread's wait (a mask put late from another thread, the
// deadline, a cancel), take and drop.
#include <chrono>
#include <thread>

#include "kv/token-masks.h"
#include "test-harness.h"

using namespace llm;
using Clock = TokenMasks::Clock;
using State = TokenMasks::State;

namespace {

std::vector<int32_t> ones(const TokenMasks& b) { return std::vector<int32_t>(static_cast<size_t>(b.num_words()), -1); }

Clock::time_point in_ms(int ms) { return Clock::now() + std::chrono::milliseconds(ms); }

}  // namespace

TEST(a_mask_is_ceil_vocab_over_32_words_and_another_length_is_refused_naming_both) {
  TokenMasks b(70);
  CHECK_EQ(b.num_words(), int64_t{3});
  CHECK_EQ(TokenMasks(64).num_words(), int64_t{2});
  CHECK_OK(b.check_words(3));
  const Status st = b.check_words(2);
  CHECK(st.code() == StatusCode::request_invalid);
  CHECK(st.message() == "the token mask has 2 words; this model's vocabulary of 70 tokens needs 3 (ceil(vocab_size / 32))");
  b.open("r", 0);
  CHECK(b.put("r", 0, std::vector<int32_t>(4, -1)).code() == StatusCode::request_invalid);
}

TEST(masks_are_stored_for_open_requests_and_indices_not_yet_taken) {
  TokenMasks b(40);
  CHECK(!b.put("r", 0, ones(b)).ok());  // not open
  b.open("r", 3);                         // a resumed request: its first output is index 3
  CHECK(!b.put("r", 2, ones(b)).ok());
  CHECK_OK(b.put("r", 3, ones(b)));
  CHECK_OK(b.put("r", 4, {1, 0}));
  b.open("r", 0);  // already open: unchanged
  std::vector<int32_t> w;
  CHECK(b.take("r", 4, &w));
  CHECK(w == (std::vector<int32_t>{1, 0}));
  CHECK(!b.take("r", 3, &w));            // taken along with the index after it
  CHECK(!b.put("r", 4, ones(b)).ok());  // sampled already
  CHECK_OK(b.put("r", 5, ones(b)));
  b.drop("r");
  CHECK_EQ(b.num_open(), size_t{0});
  CHECK(!b.put("r", 6, ones(b)).ok());
}

TEST(wait_returns_at_once_when_every_mask_is_there) {
  TokenMasks b(32);
  const std::string a = "a", c = "c";
  b.open(a, 0);
  b.open(c, 5);
  CHECK_OK(b.put(a, 0, ones(b)));
  CHECK_OK(b.put(c, 5, ones(b)));
  std::vector<State> states;
  CHECK(!b.wait({{&a, 0}, {&c, 5}}, in_ms(10000), &states));
  CHECK(states == (std::vector<State>{State::ready, State::ready}));
}

TEST(wait_sees_a_mask_put_late_by_another_thread) {
  TokenMasks b(32);
  const std::string a = "a", c = "c";
  b.open(a, 0);
  b.open(c, 0);
  CHECK_OK(b.put(a, 0, ones(b)));
  std::thread late([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    CHECK_OK(b.put(c, 0, {7}));
  });
  std::vector<State> states;
  CHECK(b.wait({{&a, 0}, {&c, 0}}, in_ms(60000), &states));
  late.join();
  CHECK(states == (std::vector<State>{State::ready, State::ready}));
  std::vector<int32_t> w;
  CHECK(b.take(c, 0, &w) && w == std::vector<int32_t>{7});
}

TEST(wait_ends_at_the_deadline_with_the_missing_ones_named) {
  TokenMasks b(32);
  const std::string a = "a", c = "c";
  b.open(a, 0);
  b.open(c, 0);
  CHECK_OK(b.put(a, 0, ones(b)));
  std::vector<State> states;
  CHECK(b.wait({{&a, 0}, {&c, 0}}, in_ms(20), &states));
  CHECK(states == (std::vector<State>{State::ready, State::missing}));
}

TEST(a_cancel_ends_the_wait_and_every_later_one) {
  TokenMasks b(32);
  const std::string a = "a", c = "c";
  b.open(a, 0);
  b.open(c, 0);
  std::thread aborter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    b.cancel(c);
  });
  std::vector<State> states;
  CHECK_OK(b.put(a, 0, ones(b)));
  b.wait({{&a, 0}, {&c, 0}}, in_ms(60000), &states);
  aborter.join();
  CHECK(states == (std::vector<State>{State::ready, State::cancelled}));
  b.wait({{&c, 1}}, in_ms(60000), &states);
  CHECK(states == std::vector<State>{State::cancelled});
  b.cancel("unknown");  // ignored
}

TEST(cancel_all_ends_every_wait) {
  TokenMasks b(32);
  const std::string a = "a";
  b.open(a, 0);
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    b.cancel_all();
  });
  std::vector<State> states;
  b.wait({{&a, 0}}, in_ms(60000), &states);
  stopper.join();
  CHECK(states == std::vector<State>{State::cancelled});
}

TEST(a_request_that_is_not_open_is_missing_without_a_wait) {
  TokenMasks b(32);
  const std::string gone = "gone";
  std::vector<State> states;
  CHECK(!b.wait({{&gone, 0}}, in_ms(60000), &states));
  CHECK(states == std::vector<State>{State::missing});
}

int main() { return llm_test::run_all(); }
