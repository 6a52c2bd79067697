// test-engine-token-mask.cc: structured output in the engine (engine.h, engine-thread.h): a
// constrained request samples only what its token masks allow, whoever puts them and when;
// its unconstrained neighbours get the tokens they get alone; a mask that does not come in time
// finishes the request with an error, an abort while the step waits finishes it as aborted, a
// mask allowing nothing is an error; wrong lengths are refused; the engine thread's load snapshot
// counts requests added while a step runs. The model is a tiny random one,
// so the allowed tokens are rarely its argmax.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine-thread.h"
#include "engine/engine.h"
#include "engine-steps.h"
#include "model-writer.h"
#include "test-harness.h"

using namespace llm;
using llm_test::finished;
using llm_test::Seen;
using llm_test::step_until;

namespace {

constexpr int64_t kVocab = 70;  // 3 mask words, the last one partly past the vocabulary

struct Fixture {
  llm_test::TempDir tmp;
  std::string dir;
  Fixture() {
    dir = tmp.sub("model");
    llm_test::TinyModelSpec spec;
    spec.vocab_size = kVocab;
    llm_test::write_model(dir, spec);
  }
  EngineConfig config(int64_t timeout_ms = 10000) const {
    EngineConfig c;
    c.model_dir = dir;
    c.block_size = 4;
    c.num_kv_blocks = 64;
    c.max_num_batched_tokens = 64;
    c.num_threads = 2;
    c.token_mask_timeout_ms = timeout_ms;
    return c;
  }
  std::unique_ptr<Engine> engine(int64_t timeout_ms = 10000) const {
    std::unique_ptr<Engine> e;
    Status st = Engine::create(config(timeout_ms), &e);
    if (!st.ok()) std::printf("  Engine::create: %s\n", st.message().c_str());
    return e;
  }
};

std::vector<int32_t> prompt_of(int64_t n, int32_t salt) {
  std::vector<int32_t> p(n);
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<int32_t>((i * 11 + salt * 17 + 5) % kVocab);
  return p;
}

std::vector<int32_t> mask_of(const std::set<int32_t>& allowed) {
  std::vector<int32_t> w(static_cast<size_t>((kVocab + 31) / 32), 0);
  for (int32_t t : allowed) w[t / 32] = static_cast<int32_t>(static_cast<uint32_t>(w[t / 32]) | (1u << (t % 32)));
  return w;
}

std::unique_ptr<Request> greedy(const std::string& id, std::vector<int32_t> prompt, int64_t max_tokens = 8) {
  return llm_test::greedy_request(id, std::move(prompt), 0, false, max_tokens);
}

std::unique_ptr<Request> constrained(const std::string& id, std::vector<int32_t> prompt, std::vector<int32_t> first_mask,
                                     int64_t max_tokens = 8) {
  auto r = greedy(id, std::move(prompt), max_tokens);
  r->params.constrained = true;
  r->token_mask = std::move(first_mask);
  return r;
}

std::vector<int32_t> serve_alone(const Fixture& f, const std::vector<int32_t>& prompt, int64_t max_tokens = 8) {
  auto e = f.engine();
  CHECK(e->add_request(greedy("alone", prompt, max_tokens)).ok());
  return step_until(*e, "alone", finished).tokens;
}

// The token sequence the masks force: one allowed token per output, never the model's choice.
const std::vector<int32_t> kForced = {3, 64, 69, 0, 31, 32, 17, 5};

// Steps the engine until it is idle, putting the mask of output i + 1 of `id` as soon as output
// i appears (the worker does it from each step's outputs): forced[i + 1] alone is allowed;
// `resumed` outputs came before (output indices count them). Returns what it saw of every request.
std::map<std::string, Seen> run_forced(Engine& e, const std::string& id, const std::vector<int32_t>& forced,
                                       size_t resumed = 0) {
  std::map<std::string, Seen> seen;
  for (int i = 0; i < 500 && e.has_work(); ++i) {
    StepResult s;
    CHECK(e.step(&s).ok());
    for (RequestOutput& o : s.outputs) {
      Seen& x = seen[o.request_id];
      x.tokens.insert(x.tokens.end(), o.new_token_ids.begin(), o.new_token_ids.end());
      if (finished(o)) {
        x.last = o;
        x.found = true;
      }
      const size_t next = resumed + x.tokens.size();
      if (o.request_id == id && !finished(o) && !o.new_token_ids.empty() && next < forced.size())
        CHECK_OK(e.token_masks().put(id, static_cast<int64_t>(next), mask_of({forced[next]})));
    }
  }
  CHECK(!e.has_work());
  return seen;
}

}  // namespace

TEST(a_greedy_constrained_request_gets_exactly_the_allowed_sequence_and_its_neighbours_are_unchanged) {
  Fixture f;
  const std::vector<int32_t> p_constrained = prompt_of(9, 1), p_a = prompt_of(13, 2), p_b = prompt_of(6, 3);
  const std::vector<int32_t> want_a = serve_alone(f, p_a), want_b = serve_alone(f, p_b);
  CHECK(serve_alone(f, p_constrained) != kForced);

  auto e = f.engine();
  CHECK_EQ(e->info().vocab_size, kVocab);
  CHECK_EQ(e->info().token_mask_words, int64_t{3});
  CHECK(e->add_request(greedy("a", p_a)).ok());
  CHECK(e->add_request(constrained("c", p_constrained, mask_of({kForced[0]}))).ok());
  CHECK(e->add_request(greedy("b", p_b)).ok());
  std::map<std::string, Seen> seen = run_forced(*e, "c", kForced);
  CHECK(seen["c"].tokens == kForced);
  CHECK(seen["c"].last.finish_reason == FinishReason::length);
  CHECK(seen["a"].tokens == want_a);
  CHECK(seen["b"].tokens == want_b);
  CHECK_EQ(e->token_masks().num_open(), size_t{0});
  CHECK_EQ(e->metrics().token_mask_wait_steps, int64_t{0});  // every mask was there in time
}

TEST(sampled_constrained_requests_draw_only_allowed_tokens_and_logprobs_cover_the_allowed_set) {
  Fixture f;
  auto e = f.engine();
  const std::set<int32_t> allowed = {2, 9, 40, 66};
  auto r = constrained("s", prompt_of(7, 4), mask_of(allowed), 12);
  r->params.temperature = 1.5f;
  r->params.top_k = 3;
  r->params.has_seed = true;
  r->params.seed = 99;
  r->params.logprobs = 5;
  CHECK(e->add_request(std::move(r)).ok());
  std::vector<int32_t> got;
  for (int i = 0; i < 500; ++i) {
    StepResult s;
    CHECK(e->step(&s).ok());
    bool done = false;
    for (RequestOutput& o : s.outputs) {
      for (size_t k = 0; k < o.new_token_ids.size(); ++k) {
        got.push_back(o.new_token_ids[k]);
        CHECK(o.has_logprobs);
        const TokenLogprobs& lp = o.logprobs[k];
        CHECK_EQ(lp.top_ids.size(), allowed.size());  // at most the allowed ones
        double mass = 0;
        for (size_t j = 0; j < lp.top_ids.size(); ++j) {
          CHECK(allowed.count(lp.top_ids[j]) == 1);
          mass += std::exp(lp.top_logprobs[j]);
        }
        CHECK_NEAR(mass, 1.0, 1e-4);
      }
      if (finished(o)) done = true;
      else CHECK_OK(e->token_masks().put("s", static_cast<int64_t>(got.size()), mask_of(allowed)));
    }
    if (done) break;
  }
  CHECK_EQ(got.size(), size_t{12});
  for (int32_t t : got) CHECK(allowed.count(t) == 1);
}

TEST(the_engine_waits_for_a_mask_put_late_from_another_thread) {
  Fixture f;
  auto e = f.engine(60000);
  CHECK(e->add_request(constrained("c", prompt_of(5, 5), mask_of({7}), 3)).ok());
  StepResult s;
  CHECK(e->step(&s).ok());  // the prompt and output 0
  CHECK(s.outputs.size() == 1 && s.outputs[0].new_token_ids == std::vector<int32_t>{7});
  std::thread late([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    CHECK_OK(e->token_masks().put("c", 1, mask_of({50})));
  });
  StepResult s2;
  CHECK(e->step(&s2).ok());  // blocks until the mask arrives
  late.join();
  CHECK(s2.outputs.size() == 1 && s2.outputs[0].new_token_ids == std::vector<int32_t>{50});
  CHECK_EQ(s2.metrics.token_mask_wait_steps, int64_t{1});
  CHECK(s2.metrics.token_mask_wait_seconds > 0.0);
}

TEST(a_late_mask_defers_its_row_and_the_others_are_not_held_back) {
  Fixture f;
  const std::vector<int32_t> p_other = prompt_of(10, 8);
  const std::vector<int32_t> want = serve_alone(f, p_other, 12);
  auto e = f.engine(60000);
  CHECK(e->add_request(constrained("c", prompt_of(6, 9), mask_of({4}), 3)).ok());
  CHECK(e->add_request(greedy("o", p_other, 12)).ok());
  StepResult s;
  CHECK(e->step(&s).ok());  // both prompts: c's output 0 (its first mask came with it), o's output 0
  CHECK_EQ(s.outputs.size(), size_t{2});
  // No mask for c's output 1 yet: o goes on, step after step, without waiting for it.
  std::vector<int32_t> o_tokens;
  for (const RequestOutput& o : s.outputs)
    if (o.request_id == "o") o_tokens = o.new_token_ids;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 5; ++i) {
    StepResult si;
    CHECK(e->step(&si).ok());
    CHECK_EQ(si.outputs.size(), size_t{1});
    CHECK(si.outputs[0].request_id == "o");
    o_tokens.insert(o_tokens.end(), si.outputs[0].new_token_ids.begin(), si.outputs[0].new_token_ids.end());
  }
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
  CHECK_EQ(e->metrics().token_mask_deferred_rows, int64_t{5});
  // The mask comes: c samples output 1 from the same position, then goes on.
  CHECK_OK(e->token_masks().put("c", 1, mask_of({60})));
  std::map<std::string, Seen> seen = run_forced(*e, "c", {4, 60, 2}, 1);
  o_tokens.insert(o_tokens.end(), seen["o"].tokens.begin(), seen["o"].tokens.end());
  CHECK(o_tokens == want);
  CHECK(seen["c"].tokens == (std::vector<int32_t>{60, 2}));
  CHECK(seen["c"].last.finish_reason == FinishReason::length);
}

TEST(a_mask_that_does_not_come_in_time_finishes_the_request_with_an_error_and_the_others_go_on) {
  Fixture f;
  const std::vector<int32_t> p_other = prompt_of(10, 6);
  const std::vector<int32_t> want = serve_alone(f, p_other);
  auto e = f.engine(30);
  CHECK(e->add_request(constrained("c", prompt_of(8, 7), mask_of({1}))).ok());
  CHECK(e->add_request(greedy("o", p_other)).ok());
  std::map<std::string, Seen> seen = run_forced(*e, "c", {1});  // no mask for output 1 ever comes
  const Seen& c = seen["c"];
  CHECK(c.tokens == std::vector<int32_t>{1});
  CHECK(c.last.finish_reason == FinishReason::error);
  CHECK(c.last.error == "structured output: no token mask for output 1 within 30 ms");
  CHECK(seen["o"].tokens == want);
  CHECK(e->metrics().token_mask_wait_steps >= int64_t{1});
  CHECK_EQ(e->token_masks().num_open(), size_t{0});
  CHECK(!e->token_masks().put("c", 1, mask_of({1})).ok());  // gone
}

TEST(a_mask_allowing_nothing_finishes_the_request_with_an_error) {
  Fixture f;
  auto e = f.engine();
  CHECK(e->add_request(constrained("c", prompt_of(4, 8), mask_of({}))).ok());
  Seen c = step_until(*e, "c", finished);
  CHECK(c.tokens.empty());
  CHECK(c.last.finish_reason == FinishReason::error);
  CHECK(c.last.error == "structured output: the grammar allows no token");
  CHECK_EQ(e->metrics().kv_active_blocks, int64_t{0});
}

TEST(wrong_mask_lengths_are_refused_and_prefill_only_and_resumed_requests_take_their_masks) {
  Fixture f;
  auto e = f.engine();
  auto short_mask = constrained("bad", prompt_of(4, 9), std::vector<int32_t>(2, -1));
  const Status st = e->validate_request(*short_mask);
  CHECK(st.code() == StatusCode::request_invalid);
  CHECK(st.message() == "the token mask has 2 words; this model's vocabulary of 70 tokens needs 3 (ceil(vocab_size / 32))");
  CHECK(!e->add_request(std::move(short_mask)).ok());
  CHECK(!e->token_masks().put("bad", 0, mask_of({1})).ok());  // never opened
  CHECK(e->token_masks().put("x", 0, std::vector<int32_t>(4, -1)).code() == StatusCode::request_invalid);

  // Prefill-only: samples nothing, and its board entry goes with it.
  auto p = constrained("p", prompt_of(9, 10), mask_of({1}));
  p->prefill_only = true;
  CHECK(e->add_request(std::move(p)).ok());
  Seen held = step_until(*e, "p", finished);
  CHECK(held.last.finish_reason == FinishReason::prefilled);
  CHECK_EQ(e->token_masks().num_open(), size_t{0});
  e->release_held("p");

  // Resumed with 3 outputs: its first mask is output 3's, the next ones 4, 5, ...
  auto r = constrained("r", prompt_of(6, 11), mask_of({kForced[3]}));
  r->output_token_ids = {kForced[0], kForced[1], kForced[2]};
  CHECK(e->add_request(std::move(r)).ok());
  CHECK(!e->token_masks().put("r", 2, mask_of({1})).ok());  // before its first: sampled already
  std::map<std::string, Seen> seen = run_forced(*e, "r", kForced, 3);
  CHECK(seen["r"].tokens == (std::vector<int32_t>{kForced[3], kForced[4], kForced[5], kForced[6], kForced[7]}));
}

// Through the engine thread, as the worker drives it: the callback sets the next mask from each
// output; an abort while the step waits for a mask ends it at once as aborted.
TEST(the_engine_thread_takes_masks_beside_its_queue_and_abort_ends_a_wait) {
  Fixture f;
  std::unique_ptr<Engine> engine;
  CHECK_OK(Engine::create(f.config(60000), &engine));
  std::mutex mu;
  std::condition_variable cv;
  std::map<std::string, std::vector<int32_t>> tokens;
  std::map<std::string, RequestOutput> last;
  EngineThread* self = nullptr;
  std::atomic<bool> feed_c{true};
  EngineThread t(std::move(engine), [&](std::unique_ptr<StepResult> s) {
    for (RequestOutput& o : s->outputs) {
      std::vector<int32_t>* got;
      {
        std::lock_guard<std::mutex> lock(mu);
        got = &tokens[o.request_id];
        got->insert(got->end(), o.new_token_ids.begin(), o.new_token_ids.end());
        if (finished(o)) last[o.request_id] = o;
      }
      const size_t next = got->size();
      if (o.request_id == "c" && feed_c && !finished(o) && next < kForced.size())
        CHECK(self->set_token_mask("c", static_cast<int64_t>(next), mask_of({kForced[next]})));
    }
    cv.notify_all();
  });
  self = &t;
  auto wait_for = [&](auto pred) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(60), pred);
  };

  // A whole forced sequence.
  CHECK_OK(t.add_request(constrained("c", prompt_of(9, 1), mask_of({kForced[0]}))));
  CHECK(wait_for([&] { return last.count("c") == 1; }));
  CHECK(tokens["c"] == kForced);
  CHECK(!t.set_token_mask("c", 8, mask_of({1})));  // finished: not live

  // Not constrained, unknown, wrong length: refused.
  CHECK_OK(t.add_request(greedy("g", prompt_of(5, 2), 100)));
  CHECK(!t.set_token_mask("g", 1, mask_of({1})));
  CHECK(!t.set_token_mask("nobody", 0, mask_of({1})));

  // An abort while the step waits for output 1's mask.
  feed_c = false;
  CHECK_OK(t.add_request(constrained("w", prompt_of(7, 3), mask_of({4}), 8)));
  CHECK(t.set_token_mask("w", 1, mask_of({5})));
  CHECK(!t.set_token_mask("w", 2, std::vector<int32_t>(5, 0)));  // wrong length
  CHECK(wait_for([&] { return tokens["w"].size() == 2; }));      // outputs 0 and 1; no mask for 2
  CHECK(tokens["w"] == (std::vector<int32_t>{4, 5}));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let the step start waiting (either way works)
  t.abort("w");
  CHECK(wait_for([&] { return last.count("w") == 1; }));
  CHECK(last["w"].finish_reason == FinishReason::abort);
  CHECK(last["w"].error.empty());
  t.abort("g");
  CHECK(wait_for([&] { return last.count("g") == 1; }));
  t.stop();
  CHECK_EQ(t.engine().token_masks().num_open(), size_t{0});
}

// The load snapshot counts requests added while a step runs (here: one waiting for a mask that
// does not come) as waiting, so a router reading it never misses a request the engine took.
TEST(requests_added_during_a_step_count_as_waiting_in_the_load_snapshot) {
  Fixture f;
  std::unique_ptr<Engine> engine;
  CHECK_OK(Engine::create(f.config(60000), &engine));
  std::mutex mu;
  std::condition_variable cv;
  std::map<std::string, size_t> outputs;
  std::set<std::string> done;
  EngineThread t(std::move(engine), [&](std::unique_ptr<StepResult> s) {
    std::lock_guard<std::mutex> lock(mu);
    for (RequestOutput& o : s->outputs) {
      outputs[o.request_id] += o.new_token_ids.size();
      if (finished(o)) done.insert(o.request_id);
    }
    cv.notify_all();
  });
  auto wait_for = [&](auto pred) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(60), pred);
  };
  CHECK_OK(t.add_request(constrained("w", prompt_of(7, 3), mask_of({4}), 8)));
  CHECK(wait_for([&] { return outputs["w"] == 1; }));  // no mask for output 1: the next step waits
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  for (int i = 0; i < 3; ++i) CHECK_OK(t.add_request(greedy("g" + std::to_string(i), prompt_of(5, 10 + i), 4)));
  const LoadMetrics m = t.metrics();
  CHECK_EQ(m.request_active_slots + m.num_requests_waiting, int64_t{4});
  t.abort("w");
  CHECK(wait_for([&] { return done.size() == 4; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK_EQ(t.metrics().num_requests_waiting + t.metrics().request_active_slots, int64_t{0});
  t.stop();
}

int main() { return llm_test::run_all(); }
