// request-limits.cc: see request-limits.h.
#include "request-limits.h"

#include "token-masks.h"

#include <cmath>
#include <cstdio>
#include <string>

namespace llm {
namespace {

Status bad_request(const std::string& msg) { return Status(StatusCode::request_invalid, msg); }

std::string num(double v) {  // 2 -> "2", -2 -> "-2", 0.5 -> "0.5"
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

Status check_request(const Request& r, const RequestBounds& b) {
  using L = RequestLimits;
  const SamplingParams& p = r.params;
  // 1. Identity and prompt.
  if (r.request_id.empty()) return bad_request("request_id must not be empty");
  if (r.prompt_token_ids.empty()) return bad_request("the prompt must contain at least one token");
  if (b.vocab_size > 0) {
    for (int32_t t : r.prompt_token_ids)
      if (t < 0 || t >= b.vocab_size)
        return bad_request("prompt token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                           std::to_string(b.vocab_size) + ")");
    for (int32_t t : r.output_token_ids)
      if (t < 0 || t >= b.vocab_size)
        return bad_request("output token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                           std::to_string(b.vocab_size) + ")");
    for (int32_t t : p.stop_token_ids)
      if (t < 0 || t >= b.vocab_size)
        return bad_request("stop token id " + std::to_string(t) + " is outside the vocabulary");
  }
  // 2. Lengths.
  if (p.max_tokens < L::min_max_tokens) return bad_request("max_tokens must be >= " + std::to_string(L::min_max_tokens));
  if (p.min_tokens < 0 || p.min_tokens > p.max_tokens) return bad_request("min_tokens must be in [0, max_tokens]");
  if (r.num_output_tokens() >= p.max_tokens)
    return bad_request("a resumed request's output tokens (" + std::to_string(r.num_output_tokens()) +
                       ") must be fewer than max_tokens (" + std::to_string(p.max_tokens) + ")");
  // 3. Sampling (written so that NaN fails every check).
  if (!(p.temperature >= L::min_temperature) || !std::isfinite(p.temperature))
    return bad_request("temperature must be >= " + num(L::min_temperature));
  if (!(p.top_p > 0.0f && p.top_p <= L::max_top_p)) return bad_request("top_p must be in (0, " + num(L::max_top_p) + "]");
  if (p.top_k < L::min_top_k) return bad_request("top_k must be " + std::to_string(L::min_top_k) + ", 0 (off) or positive");
  if (!(p.min_p >= 0.0f && p.min_p <= L::max_min_p)) return bad_request("min_p must be in [0, " + num(L::max_min_p) + "]");
  // 4. Penalties and logprobs.
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty))
    return bad_request("repetition_penalty must be > 0");
  const auto penalty_ok = [](float v) { return v >= L::min_penalty && v <= L::max_penalty; };
  if (!penalty_ok(p.presence_penalty) || !penalty_ok(p.frequency_penalty))
    return bad_request("presence_penalty and frequency_penalty must be in [" + num(L::min_penalty) + ", " +
                       num(L::max_penalty) + "]");
  if (p.logprobs < -1 || p.logprobs > L::max_logprobs)
    return bad_request("logprobs must be in [0, " + std::to_string(L::max_logprobs) + "]");
  // 5. Structured output: a constrained request brings its first output's token mask, whose
  // length is the model's (token-masks.h); another request brings none.
  if (p.constrained && b.vocab_size > 0) LLM_RETURN_IF_ERROR(check_token_mask_words(r.token_mask.size(), b.vocab_size));
  if (!p.constrained && !r.token_mask.empty()) return bad_request("a token mask was given for a request that is not constrained");
  // 6. The engine's context and KV pool. Output tokens a resumed request brings count against
  // max_tokens, so the total is the same as for the request it continues.
  const int64_t total = r.num_prompt_tokens() + p.max_tokens;
  if (total > b.max_model_len)
    return Status(StatusCode::request_too_long,
                  "this model's maximum context length is " + std::to_string(b.max_model_len) +
                      " tokens; the request has " + std::to_string(r.num_prompt_tokens()) +
                      " prompt tokens and asks for " + std::to_string(p.max_tokens) + " more (" +
                      std::to_string(total) + " in all)");
  const int64_t blocks = (total + b.block_size - 1) / b.block_size;
  if (blocks > b.num_kv_blocks)
    return Status(StatusCode::request_too_long,
                  "the request needs " + std::to_string(blocks) + " KV blocks (" + std::to_string(total) +
                      " tokens) but the KV cache has " + std::to_string(b.num_kv_blocks));
  return Status::Ok();
}

}  // namespace llm
