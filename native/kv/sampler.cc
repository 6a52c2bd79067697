// sampler.cc: see sampler.h for the order of the steps.
//
// Determinism: greedy picks the lowest token id among exact ties. Random draws take exactly one
// 64-bit output of the request's std::mt19937_64 (fully specified by the C++ standard) and turn
// it into u = (x >> 11) * 2^-53 in [0, 1), instead of std::uniform_real_distribution whose
// algorithm is implementation-defined. Candidates are visited in a fixed order (descending
// probability, ties by lower id, once truncation sorted them; else by id), and the first whose
// cumulative probability exceeds u * (kept mass) is drawn.
//
// Truncation works on probabilities after temperature p_i = exp((l_i - l_max) / T) (so the top
// token has p = 1), renormalising implicitly after each step:
//   top-k: the k most probable;  top-p: the shortest descending prefix holding top_p of the
//   remaining mass (at least one token);  min-p: those with p_i >= min_p * p_max.
// The nucleus is found on a sorted prefix grown 64 -> 1024 -> ... rather than a full sort of the
// vocabulary, since it is usually short.
//
// Token mask: one pass over the words; a word of all ones (the usual case far from a grammar's
// constraint) costs a compare, a word of zeros a fill of 32 floats. When every allowed token's
// logit is -inf or NaN (a broken model), the lowest allowed id is taken rather than a disallowed
// argmax.
#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace llm {

namespace {

constexpr double kGreedyTemperature = 1e-5;  // below: greedy (vLLM's _SAMPLING_EPS)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

double key_of(float x) { return std::isnan(x) ? -std::numeric_limits<double>::infinity() : x; }

bool mask_allows(const int32_t* mask, int64_t t) {
  return (static_cast<uint32_t>(mask[t >> 5]) >> (t & 31)) & 1u;
}

int popcount32(uint32_t x) {
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_popcount(x);
#else
  int n = 0;
  for (; x; x &= x - 1) ++n;
  return n;
#endif
}

// Sets the logits of the tokens the mask disallows to -inf; returns how many of [0, vocab) it allows.
int64_t apply_token_mask(const int32_t* mask, float* logits, int64_t vocab) {
  int64_t allowed = 0;
  for (int64_t base = 0; base < vocab; base += 32) {
    const int64_t n = std::min<int64_t>(32, vocab - base);
    uint32_t bits = static_cast<uint32_t>(mask[base >> 5]);
    if (n < 32) bits &= (uint32_t{1} << n) - 1;  // bits past the vocabulary are ignored
    if (bits == 0xffffffffu) {
      allowed += 32;
      continue;
    }
    allowed += popcount32(bits);
    if (bits == 0) {
      std::fill(logits + base, logits + base + n, kNegInf);
      continue;
    }
    for (int64_t b = 0; b < n; ++b)
      if (!((bits >> b) & 1u)) logits[base + b] = kNegInf;
  }
  return allowed;
}

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  double best_key = key_of(x[0]);
  for (int64_t i = 1; i < n; ++i) {
    if (key_of(x[i]) > best_key) {
      best = i;
      best_key = key_of(x[i]);
    }
  }
  return static_cast<int32_t>(best);
}

}  // namespace

bool Sampler::is_plain_greedy(const Request& req) {
  const SamplingParams& p = req.params;
  return p.temperature < kGreedyTemperature && !p.constrained && p.logprobs < 0 && p.repetition_penalty == 1.0f &&
         p.presence_penalty == 0.0f && p.frequency_penalty == 0.0f && req.num_output_tokens() >= p.min_tokens;
}

SampleResult Sampler::sample(Request* req, float* logits, int64_t vocab,
                             const std::vector<int64_t>& eos_token_ids, const int32_t* token_mask) {
  SampleResult res;
  if (vocab <= 0) return res;
  const SamplingParams& p = req->params;
  if (static_cast<int64_t>(counts_.size()) != vocab) {
    counts_.assign(static_cast<size_t>(vocab), 0);
    seen_.assign(static_cast<size_t>(vocab), 0);
  }
  auto nothing_allowed = [&res] {
    res.token_id = -1;
    res.error = kNoAllowedToken;
    return res;
  };

  // 0. Token mask: disallowed tokens are gone before anything else looks at the logits.
  int64_t allowed = vocab;
  if (token_mask) {
    allowed = apply_token_mask(token_mask, logits, vocab);
    if (allowed == 0) return nothing_allowed();
  }
  const int64_t top_n = std::min<int64_t>(p.logprobs, allowed);
  if (p.logprobs >= 0) raw_.assign(logits, logits + vocab);

  // 1. Penalties, 2. min_tokens: EOS and stop ids cannot be drawn yet.
  apply_penalties(*req, logits, vocab);
  held_back_.clear();
  auto usable = [&](int64_t t) {  // with a token mask: allowed, and not held back by min_tokens
    return mask_allows(token_mask, t) && std::find(held_back_.begin(), held_back_.end(), t) == held_back_.end();
  };
  if (req->num_output_tokens() < p.min_tokens) {
    auto hold_back = [&](int64_t t) {
      if (t < 0 || t >= vocab) return;
      logits[t] = kNegInf;
      if (token_mask && usable(t)) held_back_.push_back(static_cast<int32_t>(t));
    };
    for (int64_t t : eos_token_ids) hold_back(t);
    for (int32_t t : p.stop_token_ids) hold_back(t);
    if (token_mask && static_cast<int64_t>(held_back_.size()) == allowed) return nothing_allowed();
  }

  // 3. Greedy, or temperature + truncation + draw.
  res.token_id = p.temperature < kGreedyTemperature ? argmax(logits, vocab) : draw(req, logits, vocab);
  if (token_mask && !usable(res.token_id)) {
    // Every usable logit is -inf or NaN (a broken model): the lowest usable id.
    for (int64_t t = 0; t < vocab; ++t) {
      if (usable(t)) {
        res.token_id = static_cast<int32_t>(t);
        break;
      }
    }
  }

  if (p.logprobs >= 0) {
    res.has_logprobs = true;
    res.logprobs = compute_logprobs(res.token_id, top_n, vocab);
  }
  return res;
}

// Repetition (HF/vLLM): each distinct token of prompt + output, once: l > 0 ? l / r : l * r.
// Presence and frequency (OpenAI): l -= frequency * count + presence * (count > 0), output only.
void Sampler::apply_penalties(const Request& req, float* logits, int64_t vocab) {
  const SamplingParams& p = req.params;
  if (p.repetition_penalty != 1.0f) {
    const float r = p.repetition_penalty;
    for (int32_t t : req.all_token_ids) {
      if (t < 0 || t >= vocab || seen_[t]) continue;
      seen_[t] = 1;
      logits[t] = logits[t] > 0 ? logits[t] / r : logits[t] * r;
    }
    for (int32_t t : req.all_token_ids)
      if (t >= 0 && t < vocab) seen_[t] = 0;
  }
  if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
    for (int32_t t : req.output_token_ids)
      if (t >= 0 && t < vocab) ++counts_[t];
    for (int32_t t : req.output_token_ids) {
      if (t < 0 || t >= vocab || counts_[t] == 0) continue;
      logits[t] -= p.frequency_penalty * static_cast<float>(counts_[t]) + p.presence_penalty;
      counts_[t] = 0;
    }
  }
}

// Puts the k highest keys' ids, in descending key order (ties: lower id), in idx_[0 .. k).
void Sampler::sort_top(int64_t k, const double* keys, int64_t vocab) {
  idx_.resize(static_cast<size_t>(vocab));
  std::iota(idx_.begin(), idx_.end(), 0);
  auto before = [keys](int32_t a, int32_t b) { return keys[a] > keys[b] || (keys[a] == keys[b] && a < b); };
  if (k < vocab) std::nth_element(idx_.begin(), idx_.begin() + k, idx_.end(), before);
  std::sort(idx_.begin(), idx_.begin() + k, before);
}

int32_t Sampler::draw(Request* req, const float* logits, int64_t vocab) {
  const SamplingParams& p = req->params;
  double max_logit = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < vocab; ++i) max_logit = std::max(max_logit, key_of(logits[i]));
  if (!std::isfinite(max_logit)) return argmax(logits, vocab);

  const double inv_t = 1.0 / static_cast<double>(p.temperature);
  probs_.resize(static_cast<size_t>(vocab));
  double total = 0.0;
  for (int64_t i = 0; i < vocab; ++i) {
    const double l = key_of(logits[i]);
    probs_[i] = l > -std::numeric_limits<double>::infinity() ? std::exp((l - max_logit) * inv_t) : 0.0;
    total += probs_[i];
  }

  // Candidates: idx_[0 .. count) in descending order once sorted, else every id in order.
  bool sorted = false;
  int64_t count = vocab;
  if (p.top_k > 0 && p.top_k < vocab) {
    sort_top(p.top_k, probs_.data(), vocab);
    sorted = true;
    count = p.top_k;
    total = 0.0;
    for (int64_t j = 0; j < count; ++j) total += probs_[idx_[j]];
  }
  if (p.top_p < 1.0f) {
    const double want = static_cast<double>(p.top_p) * total;
    const int64_t limit = count;
    int64_t sorted_k = sorted ? count : 0;  // idx_[0 .. sorted_k) is in order
    for (int64_t k = std::min<int64_t>(limit, 64);; k = std::min(limit, k * 16)) {
      if (k > sorted_k) {
        sort_top(k, probs_.data(), vocab);
        sorted_k = k;
      }
      double cum = 0.0;
      int64_t found = 0;
      for (int64_t j = 0; j < k && found == 0; ++j) {
        cum += probs_[idx_[j]];
        if (cum >= want) found = j + 1;
      }
      if (found > 0 || k == limit) {
        count = found > 0 ? found : limit;
        break;
      }
    }
    sorted = true;
  }
  const double min_p = static_cast<double>(p.min_p);  // p_max is 1 by construction
  if (sorted)
    while (count > 1 && probs_[idx_[count - 1]] < min_p) --count;

  auto candidate = [&](int64_t j) -> int32_t { return sorted ? idx_[j] : static_cast<int32_t>(j); };
  auto weight = [&](int32_t t) { return probs_[t] >= min_p ? probs_[t] : 0.0; };
  double mass = 0.0;
  for (int64_t j = 0; j < count; ++j) mass += weight(candidate(j));

  const double u = static_cast<double>(req->rng() >> 11) * 0x1.0p-53;
  const double target = u * mass;
  double cum = 0.0;
  int32_t last = candidate(0);
  for (int64_t j = 0; j < count; ++j) {
    const int32_t t = candidate(j);
    const double w = weight(t);
    if (w <= 0.0) continue;
    cum += w;
    last = t;
    if (cum > target) return t;
  }
  return last;  // only when rounding left target at the very end of the mass
}

TokenLogprobs Sampler::compute_logprobs(int32_t token_id, int64_t top_n, int64_t vocab) {
  keys_.resize(static_cast<size_t>(vocab));
  double max_logit = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < vocab; ++i) {
    keys_[i] = key_of(raw_[i]);
    max_logit = std::max(max_logit, keys_[i]);
  }
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(keys_[i] - max_logit);
  const double log_z = max_logit + std::log(sum);

  TokenLogprobs out;
  out.token_id = token_id;
  out.logprob = static_cast<float>(keys_[token_id] - log_z);
  const int64_t n = std::min<int64_t>(top_n, vocab);
  if (n > 0) {
    sort_top(n, keys_.data(), vocab);
    for (int64_t j = 0; j < n; ++j) {
      out.top_ids.push_back(idx_[j]);
      out.top_logprobs.push_back(static_cast<float>(keys_[idx_[j]] - log_z));
    }
  }
  return out;
}

}  // namespace llm
