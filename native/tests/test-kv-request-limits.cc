// test-kv-request-limits.cc: check_request (kv/request-limits.h), the one check of a request's
// limits: each limit's boundary is accepted and one step past it refused, with its code and
// its message; the Scheduler refuses with the same function.
#include <cmath>
#include <limits>
#include <memory>
#include <string>

#include "kv/request-limits.h"
#include "kv/scheduler.h"
#include "test-harness.h"

using namespace llm;

namespace {

using L = RequestLimits;

// vocab 100, context 64, 8 blocks of 4 tokens (32 tokens in the pool).
RequestBounds bounds() {
  RequestBounds b;
  b.vocab_size = 100;
  b.max_model_len = 64;
  b.block_size = 4;
  b.num_kv_blocks = 8;
  return b;
}

Request base() {
  Request r;
  r.request_id = "r";
  r.prompt_token_ids = {1, 2, 3};
  r.params.max_tokens = 4;
  return r;
}

template <typename Edit>
Status check(Edit edit, const RequestBounds& b = bounds()) {
  Request r = base();
  edit(r);
  return check_request(r, b);
}

// The refusal: code and exact message.
bool refused(const Status& s, StatusCode code, const std::string& message) {
  if (s.code() == code && s.message() == message) return true;
  std::printf("  got %s: '%s', wanted '%s'\n", s.code_name(), s.message().c_str(), message.c_str());
  return false;
}

bool invalid(const Status& s, const std::string& message) { return refused(s, StatusCode::request_invalid, message); }

float above(float v) { return std::nextafter(v, std::numeric_limits<float>::infinity()); }
float below(float v) { return std::nextafter(v, -std::numeric_limits<float>::infinity()); }
const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

}  // namespace

TEST(the_constants_are_the_documented_ones) {
  CHECK_EQ(L::min_max_tokens, int64_t{1});
  CHECK_EQ(L::max_logprobs, 20);
  CHECK_EQ(L::min_top_k, -1);
  CHECK(L::min_penalty == -2.0f && L::max_penalty == 2.0f);
  CHECK(L::min_temperature == 0.0f && L::max_top_p == 1.0f && L::max_min_p == 1.0f);
}

TEST(a_plain_request_passes) { CHECK_OK(check([](Request&) {})); }

TEST(identity_and_prompt) {
  CHECK(invalid(check([](Request& r) { r.request_id.clear(); }), "request_id must not be empty"));
  CHECK(invalid(check([](Request& r) { r.prompt_token_ids.clear(); }), "the prompt must contain at least one token"));
}

TEST(token_ids_within_the_vocabulary) {
  CHECK_OK(check([](Request& r) { r.prompt_token_ids = {0, 99}; }));
  CHECK(invalid(check([](Request& r) { r.prompt_token_ids = {1, 100}; }),
                "prompt token id 100 is outside the vocabulary [0, 100)"));
  CHECK(invalid(check([](Request& r) { r.prompt_token_ids = {-1}; }),
                "prompt token id -1 is outside the vocabulary [0, 100)"));
  CHECK_OK(check([](Request& r) { r.params.stop_token_ids = {0, 99}; }));
  CHECK(invalid(check([](Request& r) { r.params.stop_token_ids = {100}; }), "stop token id 100 is outside the vocabulary"));
  CHECK(invalid(check([](Request& r) { r.params.stop_token_ids = {-1}; }), "stop token id -1 is outside the vocabulary"));
  // vocab_size 0: no model to check against (a bare Scheduler).
  RequestBounds none = bounds();
  none.vocab_size = 0;
  CHECK_OK(check([](Request& r) { r.prompt_token_ids = {1000}; }, none));
  CHECK(invalid(check([](Request& r) { r.prompt_token_ids.clear(); }, none), "the prompt must contain at least one token"));
}

TEST(max_tokens_and_min_tokens) {
  CHECK_OK(check([](Request& r) { r.params.max_tokens = L::min_max_tokens; }));
  CHECK(invalid(check([](Request& r) { r.params.max_tokens = L::min_max_tokens - 1; }), "max_tokens must be >= 1"));
  CHECK(invalid(check([](Request& r) { r.params.max_tokens = -5; }), "max_tokens must be >= 1"));
  CHECK_OK(check([](Request& r) { r.params.min_tokens = 0; }));
  CHECK_OK(check([](Request& r) { r.params.min_tokens = r.params.max_tokens; }));
  CHECK(invalid(check([](Request& r) { r.params.min_tokens = r.params.max_tokens + 1; }),
                "min_tokens must be in [0, max_tokens]"));
  CHECK(invalid(check([](Request& r) { r.params.min_tokens = -1; }), "min_tokens must be in [0, max_tokens]"));
}

TEST(temperature) {
  CHECK_OK(check([](Request& r) { r.params.temperature = L::min_temperature; }));
  CHECK_OK(check([](Request& r) { r.params.temperature = 1e6f; }));  // no upper bound in the engine
  const std::string msg = "temperature must be >= 0";
  CHECK(invalid(check([](Request& r) { r.params.temperature = below(L::min_temperature); }), msg));
  CHECK(invalid(check([](Request& r) { r.params.temperature = kInf; }), msg));
  CHECK(invalid(check([](Request& r) { r.params.temperature = kNaN; }), msg));
}

TEST(top_p_top_k_min_p) {
  CHECK_OK(check([](Request& r) { r.params.top_p = L::max_top_p; }));
  CHECK_OK(check([](Request& r) { r.params.top_p = std::numeric_limits<float>::denorm_min(); }));
  const std::string top_p = "top_p must be in (0, 1]";
  CHECK(invalid(check([](Request& r) { r.params.top_p = above(L::max_top_p); }), top_p));
  CHECK(invalid(check([](Request& r) { r.params.top_p = 0.0f; }), top_p));
  CHECK(invalid(check([](Request& r) { r.params.top_p = kNaN; }), top_p));

  CHECK_OK(check([](Request& r) { r.params.top_k = L::min_top_k; }));
  CHECK_OK(check([](Request& r) { r.params.top_k = 0; }));
  CHECK(invalid(check([](Request& r) { r.params.top_k = L::min_top_k - 1; }), "top_k must be -1, 0 (off) or positive"));

  CHECK_OK(check([](Request& r) { r.params.min_p = 0.0f; }));
  CHECK_OK(check([](Request& r) { r.params.min_p = L::max_min_p; }));
  const std::string min_p = "min_p must be in [0, 1]";
  CHECK(invalid(check([](Request& r) { r.params.min_p = above(L::max_min_p); }), min_p));
  CHECK(invalid(check([](Request& r) { r.params.min_p = below(0.0f); }), min_p));
  CHECK(invalid(check([](Request& r) { r.params.min_p = kNaN; }), min_p));
}

TEST(penalties) {
  CHECK_OK(check([](Request& r) { r.params.repetition_penalty = std::numeric_limits<float>::denorm_min(); }));
  CHECK(invalid(check([](Request& r) { r.params.repetition_penalty = 0.0f; }), "repetition_penalty must be > 0"));
  CHECK(invalid(check([](Request& r) { r.params.repetition_penalty = kInf; }), "repetition_penalty must be > 0"));

  CHECK_OK(check([](Request& r) { r.params.presence_penalty = L::min_penalty; r.params.frequency_penalty = L::max_penalty; }));
  CHECK_OK(check([](Request& r) { r.params.presence_penalty = L::max_penalty; r.params.frequency_penalty = L::min_penalty; }));
  const std::string msg = "presence_penalty and frequency_penalty must be in [-2, 2]";
  CHECK(invalid(check([](Request& r) { r.params.presence_penalty = above(L::max_penalty); }), msg));
  CHECK(invalid(check([](Request& r) { r.params.presence_penalty = below(L::min_penalty); }), msg));
  CHECK(invalid(check([](Request& r) { r.params.frequency_penalty = above(L::max_penalty); }), msg));
  CHECK(invalid(check([](Request& r) { r.params.frequency_penalty = below(L::min_penalty); }), msg));
  CHECK(invalid(check([](Request& r) { r.params.frequency_penalty = kNaN; }), msg));
}

TEST(logprobs) {
  CHECK_OK(check([](Request& r) { r.params.logprobs = -1; }));  // none
  CHECK_OK(check([](Request& r) { r.params.logprobs = 0; }));
  CHECK_OK(check([](Request& r) { r.params.logprobs = L::max_logprobs; }));
  CHECK(invalid(check([](Request& r) { r.params.logprobs = L::max_logprobs + 1; }), "logprobs must be in [0, 20]"));
  CHECK(invalid(check([](Request& r) { r.params.logprobs = -2; }), "logprobs must be in [0, 20]"));
}

TEST(a_constrained_request_brings_a_token_mask_of_the_models_length) {
  // vocab 100: ceil(100 / 32) = 4 words.
  CHECK_OK(check([](Request& r) {
    r.params.constrained = true;
    r.token_mask.assign(4, -1);
  }));
  CHECK(invalid(check([](Request& r) {
                  r.params.constrained = true;
                  r.token_mask.assign(3, -1);
                }),
                "the token mask has 3 words; this model's vocabulary of 100 tokens needs 4 (ceil(vocab_size / 32))"));
  CHECK(invalid(check([](Request& r) { r.params.constrained = true; }),
                "the token mask has 0 words; this model's vocabulary of 100 tokens needs 4 (ceil(vocab_size / 32))"));
  CHECK(invalid(check([](Request& r) { r.token_mask.assign(4, -1); }),
                "a token mask was given for a request that is not constrained"));
  // Prefill-only and resumed constrained requests are checked the same way.
  CHECK_OK(check([](Request& r) {
    r.params.constrained = true;
    r.prefill_only = true;
    r.output_token_ids = {5, 6};
    r.token_mask.assign(4, -1);
  }));
}

TEST(the_context_length) {
  RequestBounds b = bounds();
  b.num_kv_blocks = 1000;  // only the context limits here
  CHECK_OK(check([](Request& r) { r.params.max_tokens = 61; }, b));  // 3 + 61 = 64
  CHECK(refused(check([](Request& r) { r.params.max_tokens = 62; }, b), StatusCode::request_too_long,
                "this model's maximum context length is 64 tokens; the request has 3 prompt tokens and asks for "
                "62 more (65 in all)"));
}

TEST(the_kv_blocks) {
  CHECK_OK(check([](Request& r) { r.params.max_tokens = 29; }));  // 32 tokens = 8 blocks of 4
  CHECK(refused(check([](Request& r) { r.params.max_tokens = 30; }), StatusCode::request_too_long,
                "the request needs 9 KV blocks (33 tokens) but the KV cache has 8"));
}

TEST(the_scheduler_refuses_with_the_same_check) {
  KVCacheManager kv({8, 4, true});
  SchedulerConfig cfg;
  cfg.max_model_len = 64;
  cfg.vocab_size = 100;
  Scheduler sched(cfg, &kv);
  CHECK_EQ(sched.bounds().vocab_size, int64_t{100});
  CHECK_EQ(sched.bounds().max_model_len, int64_t{64});
  CHECK_EQ(sched.bounds().block_size, int64_t{4});
  CHECK_EQ(sched.bounds().num_kv_blocks, int64_t{8});
  auto make = [](auto edit) {
    auto r = std::make_unique<Request>(base());
    edit(*r);
    return r;
  };
  CHECK(invalid(sched.add_request(make([](Request& r) { r.params.logprobs = 21; })), "logprobs must be in [0, 20]"));
  CHECK(invalid(sched.add_request(make([](Request& r) { r.prompt_token_ids = {100}; })),
                "prompt token id 100 is outside the vocabulary [0, 100)"));
  CHECK(refused(sched.add_request(make([](Request& r) { r.params.max_tokens = 30; })), StatusCode::request_too_long,
                "the request needs 9 KV blocks (33 tokens) but the KV cache has 8"));
  // Its own checks stay its own.
  CHECK(invalid(sched.add_request(make([](Request& r) { r.num_external_tokens = 3; })),
                "num_external_tokens must be in [0, prompt tokens - 1]"));
  CHECK_OK(sched.add_request(make([](Request&) {})));
  CHECK(sched.add_request(make([](Request&) {})).code() == StatusCode::request_duplicate);
  CHECK_EQ(sched.num_waiting(), int64_t{1});
}

int main() { return llm_test::run_all(); }
