// request.h: one generation request as the engine sees it, and its sampling parameters.
//
// Owns: the request's tokens (prompt + output so far), its progress (num_computed_tokens), its
// block hashes and its random generator.
// Stays true: 0 <= num_computed_tokens <= num_tokens(); block_hashes covers exactly the full
// blocks of all_token_ids (extended as tokens arrive).
//
//   | < computed (num_computed_tokens) > | < scheduled this step > | < not yet > |
//   |<---------------------- prompt + output tokens ---------------------------->|
//
// A resumed request (request migration: the worker that ran it went away) arrives with
// output_token_ids already set, the tokens it generated before: Scheduler::add_request puts
// them after the prompt, they are prefilled (or found in the prefix cache) like the prompt, and
// they count as outputs for max_tokens, min_tokens, the presence/frequency penalties and the
// generator's position (Engine::add_request), so it goes on as the request it continues would.
//
// A constrained request (structured output) is added with token_mask, the allowed-token bitmask
// of its first sampled output (output index num_output_tokens(), so a resumed request's index is
// the number of outputs it brings); the engine moves it to its TokenMasks board
// (token-masks.h), where the caller puts the mask of every later output.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace llm {

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy
  float top_p = 1.0f;               // (0, 1]
  int32_t top_k = 0;                // 0 or -1 = off
  float min_p = 0.0f;               // [0, 1]
  bool has_seed = false;
  uint64_t seed = 0;
  float repetition_penalty = 1.0f;  // > 0; 1 = off (prompt and output tokens)
  float presence_penalty = 0.0f;    // [-2, 2] (output tokens)
  float frequency_penalty = 0.0f;   // [-2, 2] (output tokens)
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int64_t max_tokens = 16;          // >= 1
  int64_t min_tokens = 0;           // EOS and stop tokens are masked until reached
  int32_t logprobs = -1;            // -1 = none; N >= 0: sampled token's logprob + top N
  bool constrained = false;         // structured output: every sampled token obeys a token mask
};

// awaiting_kv: admitted with blocks for its prompt, waiting for external KV (remote prefill);
// held: a prefill-only request whose prompt KV is computed, holding its blocks until released.
enum class RequestStatus : int32_t { waiting = 0, running = 1, preempted = 2, finished = 3, awaiting_kv = 4, held = 5 };

// prefilled: a prefill-only request computed its prompt (except the last token); its blocks
// stay held until Engine::release_held.
enum class FinishReason : int32_t { none = 0, stop = 1, length = 2, abort = 3, error = 4, prefilled = 5 };
const char* finish_reason_name(FinishReason r);

struct Request {
  std::string request_id;
  std::vector<int32_t> prompt_token_ids;
  std::vector<int32_t> output_token_ids;
  std::vector<int32_t> all_token_ids;  // prompt + output
  SamplingParams params;

  RequestStatus status = RequestStatus::waiting;
  FinishReason finish_reason = FinishReason::none;
  int32_t stop_token_id = -1;          // the token that ended it, for FinishReason::stop
  int64_t num_computed_tokens = 0;
  int64_t num_cached_tokens = -1;      // prefix-cache hit at first scheduling; -1 = not yet
  int64_t num_preemptions = 0;
  uint64_t arrival_seq = 0;            // admission order
  // Scheduling priority, lower first (vLLM's convention): admitted before requests of a higher
  // value, and while one is still to be prefilled, running rows of a higher value sit the step
  // out (scheduler.h). 0 by default; the frontend gives bulk requests (many choices) 1.
  int32_t priority = 0;
  int32_t sat_out = 0;                 // steps in a row this request was left out for priority
  uint64_t scheduled_step = 0;         // the scheduler's last step that ran it (0: none)
  std::vector<uint64_t> block_hashes;  // chained hashes of the full blocks of all_token_ids
  std::mt19937_64 rng;                 // seeded from params.seed, or from the engine's seed

  // Remote prefill (DESIGN.md sections 4-5). The KV of the first num_external_tokens prompt
  // tokens comes from another worker unless this worker's prefix cache covers them: such a
  // request is admitted with blocks for its prompt and parked (awaiting_kv) until
  // complete_external_kv. A prefill_only request computes its prompt except the last token,
  // samples nothing and then holds its blocks (held) until release_held.
  int64_t num_external_tokens = 0;     // [0, prompt tokens - 1]
  bool prefill_only = false;

  // params.constrained: the first sampled output's mask, ceil(vocab_size / 32) int32 words in
  // XGrammar's layout (token-masks.h); emptied when the engine takes the request. Else empty.
  std::vector<int32_t> token_mask;

  int64_t num_tokens() const { return static_cast<int64_t>(all_token_ids.size()); }
  int64_t num_prompt_tokens() const { return static_cast<int64_t>(prompt_token_ids.size()); }
  // The tokens this request computes: all of them, or for prefill_only the prompt but its last.
  int64_t num_target_tokens() const { return prefill_only ? num_prompt_tokens() - 1 : num_tokens(); }
  int64_t num_output_tokens() const { return static_cast<int64_t>(output_token_ids.size()); }
  void append_output_token(int32_t token) {
    output_token_ids.push_back(token);
    all_token_ids.push_back(token);
  }
};

}  // namespace llm
