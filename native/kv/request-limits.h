// request-limits.h: the one place the engine's per-request limits live and are checked.
//
// RequestLimits holds the constant limits (the same for every engine; the addon exports them as
// requestLimits(), and ts/native/request-limits.ts mirrors them, checked by
// test/native/request-limits.test.ts). RequestBounds holds the per-engine ones (vocabulary,
// context length, KV pool). check_request applies both; Engine::validate_request (the engine
// thread's synchronous check) and Scheduler::add_request call it, so a request either engine
// path accepts fits the scheduler, and every refusal has the same message.
//
// Not here: what belongs to one caller's state: duplicate ids (the scheduler's and the engine
// thread's live sets) and num_external_tokens (the scheduler's remote-prefill contract).
#pragma once

#include <cstdint>

#include "../common/status.h"
#include "request.h"

namespace llm {

struct RequestLimits {
  static constexpr int64_t min_max_tokens = 1;      // max_tokens >= 1; min_tokens in [0, max_tokens]
  static constexpr float min_temperature = 0.0f;    // 0 = greedy; finite, no upper bound
  static constexpr float max_top_p = 1.0f;          // top_p in (0, max_top_p]
  static constexpr int32_t min_top_k = -1;          // -1 and 0 = off
  static constexpr float max_min_p = 1.0f;          // min_p in [0, max_min_p]
  static constexpr float min_penalty = -2.0f;       // presence_penalty, frequency_penalty in
  static constexpr float max_penalty = 2.0f;        //   [min_penalty, max_penalty]
  static constexpr int32_t max_logprobs = 20;       // logprobs in [0, max_logprobs]; -1 = none
  // repetition_penalty: finite and > 0 (no constant: the bound is the domain, not a choice).
};

// The per-engine limits a request is checked against.
struct RequestBounds {
  int64_t vocab_size = 0;     // prompt and stop token ids in [0, vocab_size), a constrained request's
                              // token mask ceil(vocab_size / 32) words; 0 = neither checked
  int64_t max_model_len = 1;  // prompt tokens + max_tokens <= max_model_len
  int64_t block_size = 1;     // with num_kv_blocks: the blocks prompt + max_tokens need fit the pool
  int64_t num_kv_blocks = 0;
};

// Ok, or ERR_REQUEST_INVALID (a field outside its limit, named with the limit), or
// ERR_REQUEST_TOO_LONG (the context or the KV pool, with the numbers involved).
Status check_request(const Request& r, const RequestBounds& b);

}  // namespace llm
