// sampler.h: turns one row of logits into the next token, per request's SamplingParams.
//
// Order (vLLM's): token mask (a constrained request's: disallowed tokens -> -inf) -> penalties
// (repetition on prompt+output, presence and frequency on output) -> min_tokens masking of
// EOS/stop ids -> greedy if temperature == 0, else temperature -> top-k -> top-p -> min-p -> draw
// with the request's own generator. Logprobs (when asked) are log_softmax of the logits after the
// token mask but before any other processing, like vLLM's default: a constrained request's
// logprobs are those of the distribution over its allowed tokens (at most that many top ones).
// Stays true: the same seed and the same logits give the same token, whatever the batch; a
// constrained request only ever gets a token its mask allows, or an error when it allows none
// (none left after min_tokens masking); an unconstrained request pays nothing for masks.
// Settings (validated by the engine): temperature >= 0 (below 1e-5 is greedy, as in vLLM);
// top_k 0/-1 off or >= 1; top_p in (0, 1]; min_p in [0, 1]; repetition_penalty > 0.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "request.h"

namespace llm {

struct TokenLogprobs {
  int32_t token_id = -1;
  float logprob = 0.0f;
  std::vector<int32_t> top_ids;       // top N, descending
  std::vector<float> top_logprobs;
};

struct SampleResult {
  int32_t token_id = -1;
  std::string error;                  // non-empty (token_id -1): nothing could be drawn
  bool has_logprobs = false;
  TokenLogprobs logprobs;
};

class Sampler {
 public:
  // logits: [vocab] for this request. On return they hold the values after the token mask,
  // penalties and min_tokens masking (before temperature); the raw values are gone.
  // eos_token_ids: masked while the request has fewer than min_tokens outputs.
  // token_mask: null, or ceil(vocab / 32) words in XGrammar's layout (token-masks.h), for a
  // constrained request. When it allows no token of [0, vocab), or none is left after
  // min_tokens masking, the result has token_id -1 and an error (the generator is not used).
  SampleResult sample(Request* req, float* logits, int64_t vocab,
                      const std::vector<int64_t>& eos_token_ids, const int32_t* token_mask = nullptr);

  // True when sample() would return the plain argmax of the raw logits for this request now:
  // greedy, not constrained, no penalty, no logprobs, and no EOS/stop masking (min_tokens
  // reached). A runner may then take the argmax itself (ModelRunner::forward_greedy).
  static bool is_plain_greedy(const Request& req);

  // The message of a SampleResult whose token mask allowed nothing.
  static constexpr const char* kNoAllowedToken = "structured output: the grammar allows no token";

 private:
  struct Prefix;
  void apply_penalties(const Request& req, float* logits, int64_t vocab);
  int32_t draw(Request* req, const float* logits, int64_t vocab);
  Prefix shortest_prefix(const uint32_t* keys, const float* mass, int64_t n, double need, uint32_t floor);
  TokenLogprobs compute_logprobs(int32_t token_id, int64_t top_n, int64_t vocab);

  // Scratch, reused across calls (sized to the vocabulary on first use).
  std::vector<float> probs_;     // [vocab] unnormalised probabilities after temperature
  std::vector<uint32_t> keys_;   // [vocab] sort keys (sampler.cc)
  std::vector<int32_t> members_; // ids of the group a radix select narrowed to, ascending
  std::vector<double> bucket_weight_;  // one radix select level's histograms
  std::vector<double> chunk_mass_;  // the draw's weight per chunk of ids
  std::vector<float> raw_;       // [vocab] logits before any processing (for logprobs)
  std::vector<int32_t> counts_;  // [vocab] output-token counts, all zero between calls
  std::vector<uint8_t> seen_;    // [vocab] repetition-penalty marks, all zero between calls
  std::vector<int32_t> held_back_;  // allowed EOS/stop ids that min_tokens masked (token mask only)
};

// The vector width, in floats, of the sampler's passes over the vocabulary on this CPU (16 with
// AVX-512, 8 with AVX2, else 4). sampler_force_lanes(w) caps it at w (tests: each width on one
// machine); 0 lifts the cap.
int sampler_vector_lanes();
void sampler_force_lanes(int lanes);

}  // namespace llm
