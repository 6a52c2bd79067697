// test-scheduler.cc: continuous batching: the token budget and chunked prefill, max_num_seqs,
// decode and prefill in one step, preemption under block pressure (newest first, recomputed,
// never deadlocked), priority (admission order, rows sitting out, seats and blocks taken from
// rows of a higher value), stop conditions, abort, and up-front rejection.
#include <algorithm>
#include <map>
#include <memory>

#include "kv/scheduler.h"
#include "test-harness.h"

using namespace llm;

namespace {

struct Fixture {
  KVCacheManager kv;
  Scheduler sched;
  Fixture(int64_t num_blocks, int64_t block_size, SchedulerConfig cfg, bool caching = true)
      : kv({num_blocks, block_size, caching}), sched(cfg, &kv) {}
};

SchedulerConfig config(int64_t seqs, int64_t tokens, int64_t model_len) {
  SchedulerConfig c;
  c.max_num_seqs = seqs;
  c.max_num_batched_tokens = tokens;
  c.max_model_len = model_len;
  return c;
}

std::unique_ptr<Request> make_request(const std::string& id, int32_t n_prompt, int64_t max_tokens,
                                      int32_t first_token = 1000) {
  auto r = std::make_unique<Request>();
  r->request_id = id;
  for (int32_t i = 0; i < n_prompt; ++i) r->prompt_token_ids.push_back(first_token + i);
  r->params.max_tokens = max_tokens;
  return r;
}

// The fake model: request "x" with n tokens samples token 7 * n (never an EOS in these tests).
std::vector<int32_t> fake_samples(const SchedulerOutput& out) {
  std::vector<int32_t> sampled;
  for (const ScheduledRequest& sr : out.scheduled)
    if (sr.samples) sampled.push_back(static_cast<int32_t>(7 * sr.req->num_tokens()));
  return sampled;
}

const ScheduledRequest* find(const SchedulerOutput& out, const std::string& id) {
  for (const ScheduledRequest& sr : out.scheduled)
    if (sr.req->request_id == id) return &sr;
  return nullptr;
}

// Checks the step's invariants against the configuration.
void check_step(const Fixture& f, const SchedulerOutput& out) {
  int64_t sum = 0;
  for (const ScheduledRequest& sr : out.scheduled) {
    CHECK(sr.num_new_tokens > 0);
    CHECK(sr.req->num_computed_tokens + sr.num_new_tokens <= sr.req->num_tokens());
    CHECK_EQ(sr.samples, sr.req->num_computed_tokens + sr.num_new_tokens == sr.req->num_tokens());
    CHECK(static_cast<int64_t>(f.kv.blocks_of(sr.req->request_id)->size()) * f.kv.block_size() >=
          sr.req->num_computed_tokens + sr.num_new_tokens);
    sum += sr.num_new_tokens;
  }
  CHECK_EQ(sum, out.num_scheduled_tokens);
  for (const std::string& id : out.preempted) CHECK(find(out, id) == nullptr);  // never both in one step
  CHECK(sum <= f.sched.config().max_num_batched_tokens);
  CHECK(f.sched.num_running() <= f.sched.config().max_num_seqs);
}

// Runs steps until idle (at most max_steps); returns finished requests by id.
std::map<std::string, std::unique_ptr<Request>> drive(Fixture& f, int max_steps,
                                                      std::vector<SchedulerOutput>* log = nullptr) {
  std::map<std::string, std::unique_ptr<Request>> done;
  for (int step = 0; step < max_steps && f.sched.has_work(); ++step) {
    SchedulerOutput out = f.sched.schedule();
    check_step(f, out);
    CHECK(!out.scheduled.empty());  // work exists, so something always runs
    std::vector<int32_t> sampled = fake_samples(out);
    for (auto& r : f.sched.update(out, sampled)) done[r->request_id] = std::move(r);
    if (log) log->push_back(std::move(out));
  }
  CHECK(!f.sched.has_work());
  return done;
}

}  // namespace

TEST(chunked_prefill_under_the_token_budget) {
  Fixture f(16, 4, config(8, 8, 64));
  CHECK(f.sched.add_request(make_request("a", 20, 2)).ok());
  const int64_t expect[] = {8, 8, 4};
  for (int64_t n : expect) {
    SchedulerOutput out = f.sched.schedule();
    check_step(f, out);
    CHECK_EQ(out.scheduled.size(), size_t{1});
    CHECK_EQ(out.scheduled[0].num_new_tokens, n);
    CHECK_EQ(out.scheduled[0].samples, n == 4);
    auto finished = f.sched.update(out, fake_samples(out));
    CHECK(finished.empty());
  }
  Request* a = nullptr;
  SchedulerOutput out = f.sched.schedule();  // decode: the sampled token
  CHECK(out.scheduled.size() == 1 && out.scheduled[0].num_new_tokens == 1 && out.scheduled[0].samples);
  a = out.scheduled[0].req;
  CHECK_EQ(a->num_output_tokens(), int64_t{1});
  CHECK_EQ(a->num_computed_tokens, int64_t{20});
  auto finished = f.sched.update(out, fake_samples(out));
  CHECK_EQ(finished.size(), size_t{1});
  CHECK(finished[0]->finish_reason == FinishReason::length);
  CHECK_EQ(finished[0]->num_output_tokens(), int64_t{2});
  CHECK_EQ(f.kv.num_active_blocks(), int64_t{0});
}

TEST(decode_and_prefill_share_a_step) {
  Fixture f(32, 4, config(8, 10, 64));
  CHECK(f.sched.add_request(make_request("a", 6, 5)).ok());
  SchedulerOutput out = f.sched.schedule();
  f.sched.update(out, fake_samples(out));
  CHECK(f.sched.add_request(make_request("b", 30, 5, 5000)).ok());
  out = f.sched.schedule();
  check_step(f, out);
  CHECK_EQ(out.scheduled.size(), size_t{2});
  CHECK(out.scheduled[0].req->request_id == "a");  // running first
  CHECK(out.scheduled[0].num_new_tokens == 1 && out.scheduled[0].samples);
  CHECK(out.scheduled[1].req->request_id == "b");
  CHECK(out.scheduled[1].num_new_tokens == 9 && !out.scheduled[1].samples);  // the rest of the budget
  CHECK_EQ(out.num_scheduled_tokens, int64_t{10});
  f.sched.update(out, fake_samples(out));
  auto done = drive(f, 50);
  CHECK_EQ(done.size(), size_t{2});
}

TEST(max_num_seqs_limits_the_running_set) {
  Fixture f(64, 4, config(2, 100, 64));
  int32_t first_token = 1000;  // distinct prompts: identical ones would wait for each other's prefix
  for (const char* id : {"a", "b", "c"}) CHECK(f.sched.add_request(make_request(id, 5, 3, first_token += 100)).ok());
  SchedulerOutput out = f.sched.schedule();
  CHECK_EQ(out.scheduled.size(), size_t{2});
  CHECK_EQ(f.sched.num_running(), int64_t{2});
  CHECK_EQ(f.sched.num_waiting(), int64_t{1});
  CHECK(find(out, "c") == nullptr);
  f.sched.update(out, fake_samples(out));
  std::vector<SchedulerOutput> log;
  auto done = drive(f, 50, &log);
  CHECK_EQ(done.size(), size_t{3});
  for (auto& kv : done) CHECK_EQ(kv.second->num_output_tokens(), int64_t{3});
  // "c" is admitted only once a seat frees up: in the step after "a" and "b" finished.
  bool c_seen_with_others = false;
  for (const SchedulerOutput& o : log)
    if (find(o, "c") && (find(o, "a") || find(o, "b"))) c_seen_with_others = true;
  CHECK(!c_seen_with_others);
}

// Priority: a request of a lower value is admitted ahead of earlier waiting ones of a higher
// value, and while it prefills the running rows of a higher value sit the step out (keeping
// their blocks), never more than kMaxSatOut steps in a row; everyone finishes with the tokens it
// would have had.
TEST(priority_admits_first_and_bulk_rows_sit_out_its_prefill) {
  Fixture f(256, 4, config(8, 8, 256));
  int32_t first_token = 1000;
  for (const char* id : {"bulk1", "bulk2"}) {
    auto r = make_request(id, 4, 40, first_token += 100);
    r->priority = 1;
    CHECK(f.sched.add_request(std::move(r)).ok());
  }
  SchedulerOutput out = f.sched.schedule();
  f.sched.update(out, fake_samples(out));
  CHECK(find(out, "bulk1") && find(out, "bulk2"));
  // A later bulk request and a short one arrive together, the short one last.
  auto late = make_request("bulk3", 4, 40, first_token += 100);
  late->priority = 1;
  CHECK(f.sched.add_request(std::move(late)).ok());
  CHECK(f.sched.add_request(make_request("short", 20, 3, first_token += 100)).ok());
  // Its 20-token prompt takes 3 steps of 8 tokens; the bulk rows sit them out, and "short" is
  // admitted before "bulk3".
  for (int step = 0; step < 3; ++step) {
    out = f.sched.schedule();
    check_step(f, out);
    CHECK(find(out, "short") != nullptr);
    CHECK(find(out, "bulk1") == nullptr && find(out, "bulk2") == nullptr);
    if (step == 0) CHECK(find(out, "bulk3") == nullptr);
    f.sched.update(out, fake_samples(out));
  }
  // Prefilled: the bulk rows run again beside it.
  out = f.sched.schedule();
  CHECK(find(out, "bulk1") && find(out, "bulk2") && find(out, "short"));
  f.sched.update(out, fake_samples(out));
  auto done = drive(f, 400);
  CHECK_EQ(done.size(), size_t{4});
  for (auto& kv : done) CHECK_EQ(kv.second->num_output_tokens(), kv.first == "short" ? int64_t{3} : int64_t{40});
}

// A stream of urgent prompts cannot starve the bulk rows: they run at least every
// kMaxSatOut + 1 steps.
TEST(priority_never_starves_a_running_row) {
  Fixture f(1024, 4, config(64, 4, 512));
  auto bulk = make_request("bulk", 4, 30, 500);
  bulk->priority = 1;
  CHECK(f.sched.add_request(std::move(bulk)).ok());
  SchedulerOutput out = f.sched.schedule();
  f.sched.update(out, fake_samples(out));
  int since_bulk = 0, worst = 0, n = 0;
  for (int step = 0; step < 60; ++step) {
    // a new 8-token urgent prompt every step: 2 steps of prefill each at a budget of 4
    CHECK(f.sched.add_request(make_request("u" + std::to_string(n), 8, 1, 2000 + 20 * n)).ok());
    ++n;
    out = f.sched.schedule();
    check_step(f, out);
    since_bulk = find(out, "bulk") ? 0 : since_bulk + 1;
    worst = std::max(worst, since_bulk);
    f.sched.update(out, fake_samples(out));
  }
  CHECK(worst <= Scheduler::kMaxSatOut);
  CHECK(worst == Scheduler::kMaxSatOut);  // it did sit out
}

// A request that finds every seat taken by rows of a higher priority value takes the newest
// one's seat (vLLM's priority policy): it is admitted at once, the bulk row is recomputed later
// and ends with the tokens it would have had. One of the same value waits instead.
TEST(priority_takes_a_seat_from_a_bulk_row) {
  Fixture f(256, 4, config(2, 64, 256));
  int32_t first_token = 1000;
  for (const char* id : {"bulk1", "bulk2"}) {
    auto r = make_request(id, 4, 12, first_token += 100);
    r->priority = 1;
    CHECK(f.sched.add_request(std::move(r)).ok());
  }
  for (int step = 0; step < 3; ++step) {
    SchedulerOutput out = f.sched.schedule();
    f.sched.update(out, fake_samples(out));
  }
  auto same = make_request("same", 4, 3, first_token += 100);
  same->priority = 1;
  CHECK(f.sched.add_request(std::move(same)).ok());
  SchedulerOutput out = f.sched.schedule();
  check_step(f, out);
  CHECK(out.preempted.empty() && find(out, "same") == nullptr);  // no seat, and nobody gives way to an equal
  f.sched.update(out, fake_samples(out));

  CHECK(f.sched.add_request(make_request("short", 6, 3, first_token += 100)).ok());
  out = f.sched.schedule();
  check_step(f, out);
  CHECK(find(out, "short") != nullptr);
  CHECK(out.preempted == std::vector<std::string>{"bulk2"});
  CHECK_EQ(f.sched.num_running(), int64_t{2});
  CHECK_EQ(f.kv.blocks_of("bulk2")->size(), size_t{0});
  f.sched.update(out, fake_samples(out));
  auto done = drive(f, 200);
  CHECK_EQ(done.size(), size_t{4});
  CHECK_EQ(done["bulk2"]->num_preemptions, int64_t{1});
  CHECK_EQ(done["bulk1"]->num_preemptions, int64_t{0});
  for (auto& kv : done) CHECK_EQ(kv.second->num_output_tokens(), kv.first == "bulk1" || kv.first == "bulk2" ? int64_t{12} : int64_t{3});
  CHECK_EQ(f.kv.num_active_blocks(), int64_t{0});
}

// The same for blocks: a request of a lower value that needs more blocks than are free
// preempts rows of a higher value (the highest value first) until it fits.
TEST(priority_takes_blocks_from_bulk_rows) {
  // 8 blocks of 4 tokens; three bulk rows of 8-token prompts hold 2 blocks each (6 of 8).
  Fixture f(8, 4, config(8, 64, 32));
  int32_t first_token = 1000;
  for (auto [id, prio] : {std::pair{"p1", 1}, std::pair{"p2", 2}, std::pair{"p1b", 1}}) {
    auto r = make_request(id, 8, 4, first_token += 100);
    r->priority = prio;
    CHECK(f.sched.add_request(std::move(r)).ok());
  }
  SchedulerOutput out = f.sched.schedule();
  CHECK_EQ(out.scheduled.size(), size_t{3});
  f.sched.update(out, fake_samples(out));
  // 17 tokens: 5 blocks, 2 free: the priority-2 row goes first, then the newest priority-1 row.
  CHECK(f.sched.add_request(make_request("short", 17, 2, first_token += 100)).ok());
  out = f.sched.schedule();
  check_step(f, out);
  CHECK(find(out, "short") != nullptr);
  CHECK(out.preempted == (std::vector<std::string>{"p2", "p1b"}));
  f.sched.update(out, fake_samples(out));
  auto done = drive(f, 200);
  CHECK_EQ(done.size(), size_t{4});
  for (auto& kv : done) CHECK_EQ(kv.second->num_output_tokens(), kv.first == "short" ? int64_t{2} : int64_t{4});
  CHECK_EQ(f.kv.num_active_blocks(), int64_t{0});
}

TEST(preempts_the_newest_and_recomputes_it_later) {
  // 6 blocks of 4 tokens. a and b each start with 2 blocks (8-token prompts) and grow to 4.
  Fixture f(6, 4, config(4, 64, 64));
  CHECK(f.sched.add_request(make_request("a", 8, 8, 100)).ok());
  CHECK(f.sched.add_request(make_request("b", 8, 8, 200)).ok());
  SchedulerOutput out = f.sched.schedule();
  CHECK_EQ(out.scheduled.size(), size_t{2});
  f.sched.update(out, fake_samples(out));  // a, b: 9 tokens, 8 computed, 2 blocks each

  Request* b = out.scheduled[1].req;
  bool preempted = false;
  for (int step = 0; step < 20 && !preempted; ++step) {
    out = f.sched.schedule();
    check_step(f, out);
    if (!out.preempted.empty()) {
      preempted = true;
      CHECK(out.preempted == std::vector<std::string>{"b"});
      CHECK(b->status == RequestStatus::preempted);
      CHECK_EQ(b->num_computed_tokens, int64_t{0});
      CHECK(f.kv.blocks_of("b")->empty());
      CHECK(find(out, "a") != nullptr && find(out, "b") == nullptr);
      CHECK_EQ(f.sched.num_waiting(), int64_t{1});
    }
    f.sched.update(out, fake_samples(out));
  }
  CHECK(preempted);
  CHECK_EQ(f.sched.num_preemptions(), int64_t{1});
  CHECK_EQ(b->num_preemptions, int64_t{1});
  auto done = drive(f, 100);
  CHECK_EQ(done.size(), size_t{2});
  // b kept its outputs through the recompute and still produced exactly max_tokens.
  CHECK_EQ(done["b"]->num_output_tokens(), int64_t{8});
  CHECK_EQ(done["a"]->num_output_tokens(), int64_t{8});
  CHECK(done["b"]->finish_reason == FinishReason::length);
  CHECK_EQ(f.kv.num_active_blocks(), int64_t{0});
}

TEST(heavy_block_pressure_never_deadlocks) {
  // 10 blocks for 12 requests that each need up to 5: constant preemption, chunked prefill.
  Fixture f(10, 4, config(8, 16, 64));
  for (int i = 0; i < 12; ++i) {
    auto r = make_request("r" + std::to_string(i), 6 + i % 7, 4 + i % 5, 100 * (i % 3));
    CHECK(f.sched.add_request(std::move(r)).ok());
  }
  auto done = drive(f, 2000);
  CHECK_EQ(done.size(), size_t{12});
  for (int i = 0; i < 12; ++i) {
    const Request& r = *done["r" + std::to_string(i)];
    CHECK_EQ(r.num_output_tokens(), int64_t{4 + i % 5});
    CHECK_EQ(r.num_prompt_tokens(), int64_t{6 + i % 7});
    // Every output is what the fake model says for that position: recompute lost nothing.
    for (int64_t k = 0; k < r.num_output_tokens(); ++k)
      CHECK_EQ(r.output_token_ids[k], static_cast<int32_t>(7 * (r.num_prompt_tokens() + k)));
  }
  CHECK(f.sched.num_preemptions() > 0);
  CHECK_EQ(f.kv.num_active_blocks(), int64_t{0});
}

TEST(a_request_needing_the_whole_pool_runs_alone) {
  Fixture f(4, 4, config(4, 8, 64));
  CHECK(f.sched.add_request(make_request("small", 3, 2)).ok());
  CHECK(f.sched.add_request(make_request("big", 10, 6, 500)).ok());  // 16 tokens = 4 blocks
  auto done = drive(f, 200);
  CHECK_EQ(done.size(), size_t{2});
  CHECK_EQ(done["big"]->num_output_tokens(), int64_t{6});
}

TEST(stop_conditions) {
  Fixture f(32, 4, config(8, 64, 64));
  f.sched.set_eos_token_ids({2, 3});
  auto run_one = [&](std::unique_ptr<Request> r, const std::vector<int32_t>& tokens) {
    CHECK(f.sched.add_request(std::move(r)).ok());
    std::unique_ptr<Request> result;
    for (size_t i = 0; i < tokens.size() && !result; ++i) {
      SchedulerOutput out = f.sched.schedule();
      auto finished = f.sched.update(out, {tokens[i]});
      if (!finished.empty()) result = std::move(finished[0]);
    }
    CHECK(result != nullptr);
    return result;
  };

  auto eos = run_one(make_request("eos", 4, 10), {50, 3, 51});
  CHECK(eos->finish_reason == FinishReason::stop);
  CHECK_EQ(eos->stop_token_id, 3);
  CHECK(eos->output_token_ids == (std::vector<int32_t>{50, 3}));  // the EOS is kept

  auto r = make_request("ignore", 4, 3);
  r->params.ignore_eos = true;
  auto ignored = run_one(std::move(r), {3, 2, 9});
  CHECK(ignored->finish_reason == FinishReason::length);
  CHECK_EQ(ignored->num_output_tokens(), int64_t{3});

  r = make_request("stop-id", 4, 10);
  r->params.ignore_eos = true;
  r->params.stop_token_ids = {77};
  auto stopped = run_one(std::move(r), {3, 77});
  CHECK(stopped->finish_reason == FinishReason::stop);
  CHECK_EQ(stopped->stop_token_id, 77);

  r = make_request("min", 4, 10);
  r->params.min_tokens = 2;
  auto min = run_one(std::move(r), {3, 2, 3});  // the first two outputs may not stop it
  CHECK(min->finish_reason == FinishReason::stop);
  CHECK_EQ(min->num_output_tokens(), int64_t{3});

  // A stop token that is also the max_tokens-th token reports stop (stop is checked first).
  auto both = run_one(make_request("both", 4, 2), {9, 2});
  CHECK(both->finish_reason == FinishReason::stop);
  auto length = run_one(make_request("len", 4, 2), {9, 9});
  CHECK(length->finish_reason == FinishReason::length);
  CHECK_EQ(length->stop_token_id, -1);
  CHECK_EQ(f.kv.num_active_blocks(), int64_t{0});
}

// add_request admits only prompt + max_tokens <= max_model_len, so the model's limit is reached
// together with max_tokens at the latest; outputs a request arrives with count toward both.
TEST(a_resumed_request_counts_its_outputs_toward_the_limits) {
  Fixture f(32, 4, config(8, 64, 10));
  auto r = make_request("m", 4, 6);
  r->output_token_ids = {1, 1, 1};  // resumed: 7 tokens already, 3 to both limits
  CHECK(f.sched.add_request(std::move(r)).ok());
  auto done = drive(f, 20);
  CHECK(done["m"]->finish_reason == FinishReason::length);
  CHECK_EQ(done["m"]->num_tokens(), int64_t{10});
  CHECK_EQ(done["m"]->num_output_tokens(), int64_t{6});
}

TEST(abort_frees_blocks_at_once) {
  Fixture f(32, 4, config(8, 64, 64));
  CHECK(f.sched.add_request(make_request("a", 9, 5)).ok());
  CHECK(f.sched.add_request(make_request("w", 9, 5, 3000)).ok());
  SchedulerOutput out = f.sched.schedule();
  f.sched.update(out, fake_samples(out));
  CHECK(f.kv.num_active_blocks() > 0);
  CHECK(f.sched.abort("a"));
  CHECK(f.sched.abort("w"));
  CHECK(!f.sched.abort("a"));
  CHECK(!f.sched.abort("nobody"));
  CHECK_EQ(f.kv.num_active_blocks(), int64_t{0});
  CHECK(!f.sched.has_work());
  auto aborted = f.sched.take_aborted();
  CHECK_EQ(aborted.size(), size_t{2});
  for (auto& r : aborted) {
    CHECK(r->finish_reason == FinishReason::abort);
    CHECK(r->status == RequestStatus::finished);
  }
  CHECK(f.sched.take_aborted().empty());
  // The id is free again.
  CHECK(f.sched.add_request(make_request("a", 3, 1)).ok());
}

TEST(abort_between_schedule_and_update_is_skipped) {
  Fixture f(32, 4, config(8, 64, 64));
  CHECK(f.sched.add_request(make_request("a", 5, 3)).ok());
  CHECK(f.sched.add_request(make_request("b", 5, 3, 2000)).ok());
  SchedulerOutput out = f.sched.schedule();
  CHECK(f.sched.abort("a"));
  auto finished = f.sched.update(out, fake_samples(out));
  CHECK(finished.empty());
  const ScheduledRequest* b = find(out, "b");
  CHECK(b && b->req->num_output_tokens() == 1);
  auto aborted = f.sched.take_aborted();
  CHECK(aborted.size() == 1 && aborted[0]->num_output_tokens() == 0);
}

TEST(rejects_requests_that_can_never_fit) {
  Fixture f(4, 4, config(8, 64, 32));
  Status s = f.sched.add_request(make_request("long", 30, 5));
  CHECK(s.code() == StatusCode::request_too_long);
  CHECK(std::string(s.code_name()) == "ERR_REQUEST_TOO_LONG");
  CHECK(s.message().find("35") != std::string::npos && s.message().find("32") != std::string::npos);

  s = f.sched.add_request(make_request("pool", 14, 3));  // 17 tokens = 5 blocks > 4
  CHECK(s.code() == StatusCode::request_too_long);
  CHECK(s.message().find("5 KV blocks") != std::string::npos && s.message().find("has 4") != std::string::npos);

  CHECK(f.sched.add_request(make_request("fits", 13, 3)).ok());  // exactly 4 blocks
  CHECK(f.sched.add_request(make_request("empty", 0, 3)).code() == StatusCode::request_invalid);
  CHECK(f.sched.add_request(make_request("zero", 3, 0)).code() == StatusCode::request_invalid);
  CHECK(f.sched.add_request(nullptr).code() == StatusCode::request_invalid);
  CHECK_EQ(f.sched.num_waiting(), int64_t{1});
}

TEST(rejects_duplicate_ids) {
  Fixture f(32, 4, config(8, 64, 64));
  CHECK(f.sched.add_request(make_request("a", 3, 2)).ok());
  Status s = f.sched.add_request(make_request("a", 4, 2));
  CHECK(s.code() == StatusCode::request_duplicate);
  SchedulerOutput out = f.sched.schedule();
  f.sched.update(out, fake_samples(out));
  CHECK(f.sched.add_request(make_request("a", 4, 2)).code() == StatusCode::request_duplicate);
  CHECK_EQ(f.sched.num_running() + f.sched.num_waiting(), int64_t{1});
}

TEST(admission_starts_from_the_cached_prefix) {
  Fixture f(32, 4, config(8, 64, 64));
  CHECK(f.sched.add_request(make_request("a", 10, 1)).ok());
  auto done = drive(f, 10);
  CHECK_EQ(done["a"]->num_cached_tokens, int64_t{0});
  CHECK(f.sched.add_request(make_request("b", 12, 1)).ok());  // shares a's first 10 tokens
  SchedulerOutput out = f.sched.schedule();
  CHECK(out.scheduled.size() == 1 && out.scheduled[0].num_new_tokens == 4);
  CHECK_EQ(out.scheduled[0].req->num_cached_tokens, int64_t{8});
  f.sched.update(out, fake_samples(out));
  CHECK_EQ(f.kv.prefix_cache_hits(), int64_t{8});
  CHECK_EQ(f.kv.prefix_cache_queries(), int64_t{22});
}

TEST(a_prefix_being_computed_is_waited_for_not_computed_twice) {
  Fixture f(64, 4, config(8, 16, 128));  // 16 tokens per step: a 20-token prompt takes 2 steps
  CHECK(f.sched.add_request(make_request("a", 20, 1)).ok());
  SchedulerOutput first = f.sched.schedule();  // a computes 16 of its 20 prompt tokens
  f.sched.update(first, fake_samples(first));
  CHECK(f.sched.add_request(make_request("b", 22, 1)).ok());        // shares a's 20 tokens
  CHECK(f.sched.add_request(make_request("c", 6, 1, 5000)).ok());   // shares nothing
  SchedulerOutput out = f.sched.schedule();
  // b's first uncached block (tokens 16..19) is a's to compute: b waits, c goes ahead of it.
  CHECK(find(out, "b") == nullptr);
  CHECK(find(out, "c") != nullptr);
  std::map<std::string, std::unique_ptr<Request>> done;
  for (auto& r : f.sched.update(out, fake_samples(out))) done[r->request_id] = std::move(r);
  for (int i = 0; i < 20 && (!done.count("b") || !done.count("a")); ++i) {
    SchedulerOutput o = f.sched.schedule();
    for (auto& r : f.sched.update(o, fake_samples(o))) done[r->request_id] = std::move(r);
  }
  CHECK(done.count("a") && done.count("b"));
  // b started from a's 5 cached blocks: it computed only its last 2 tokens.
  CHECK_EQ(done["b"]->num_cached_tokens, int64_t{20});
}

TEST(a_waiting_request_goes_on_when_the_prefix_owner_is_aborted) {
  Fixture f(64, 4, config(8, 8, 128));
  CHECK(f.sched.add_request(make_request("a", 20, 1)).ok());
  SchedulerOutput first = f.sched.schedule();
  f.sched.update(first, fake_samples(first));
  CHECK(f.sched.add_request(make_request("b", 22, 1)).ok());
  SchedulerOutput waiting = f.sched.schedule();
  CHECK(find(waiting, "b") == nullptr);
  f.sched.update(waiting, fake_samples(waiting));
  f.sched.abort("a");
  SchedulerOutput out = f.sched.schedule();
  CHECK(find(out, "b") != nullptr);
}

TEST(finish_reason_names) {
  CHECK(std::string(finish_reason_name(FinishReason::none)) == "none");
  CHECK(std::string(finish_reason_name(FinishReason::stop)) == "stop");
  CHECK(std::string(finish_reason_name(FinishReason::length)) == "length");
  CHECK(std::string(finish_reason_name(FinishReason::abort)) == "abort");
  CHECK(std::string(finish_reason_name(FinishReason::error)) == "error");
}

int main() { return llm_test::run_all(); }
