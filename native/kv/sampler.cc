// sampler.cc: see sampler.h for the order of the steps.
//
// Determinism: greedy picks the lowest token id among exact ties. Random draws take exactly one
// 64-bit output of the request's std::mt19937_64 (fully specified by the C++ standard) and turn
// it into u = (x >> 11) * 2^-53 in [0, 1), instead of std::uniform_real_distribution whose
// algorithm is implementation-defined. The kept tokens are visited in id order, and the first
// whose cumulative probability exceeds u * (kept mass) is drawn; whole chunks of kChunk ids whose
// summed weight stays below the target are skipped.
//
// Truncation works on probabilities after temperature p_i = exp((l_i - l_max) / T) (so the top
// token has p = 1), renormalising implicitly after each step, on the order "probability
// descending, ties by lower id":
//   top-k: the k first;  top-p: the shortest prefix holding top_p of the remaining mass (at
//   least one token);  min-p: those with p_i >= min_p * p_max.
// A kept prefix is found without sorting the vocabulary: a radix select on the probabilities'
// bits (Sampler::shortest_prefix), first among the likely tokens. The top logprobs use the same
// select on the logits, then sort only the ones it keeps.
//
// Token mask: one pass over the words; a word of all ones (the usual case far from a grammar's
// constraint) costs a compare, a word of zeros a fill of 32 floats. When every allowed token's
// logit is -inf or NaN (a broken model), the lowest allowed id is taken rather than a disallowed
// argmax.
#include "sampler.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

namespace llm {

namespace {

constexpr double kGreedyTemperature = 1e-5;  // below: greedy (vLLM's _SAMPLING_EPS)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// exp of the shifted logits is taken as 0 below this (under 1e-37).
constexpr float kExpFloor = -86.0f;
// The draw's walk sums the weights of kChunk ids at a time and skips the chunks below its target.
constexpr int64_t kChunk = 1024;
// The radix select's first cut (Sampler::shortest_prefix): probabilities of at least 2^-12 of
// the top one's (as bits), logits at most 8.3 below the top (the same ratio).
constexpr uint32_t kLikelyFloor = 0x39800000u;  // bits of 2^-12
constexpr float kLikelyLogits = 8.317766f;       // ln 2^12

uint32_t bits_of(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

// Sort keys, higher first: a probability's bits as they are (p >= 0 orders like its bits); a
// logit's bits mapped so that unsigned order is float order, NaN as -inf.
uint32_t logit_key(float x) {
  const uint32_t b = bits_of(std::isnan(x) ? kNegInf : x);
  return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}

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

// The passes over the whole vocabulary (the max, exp of the shifted logits, sums) run on GCC/Clang
// vector types of W floats: W = 16 on a CPU with AVX-512, 8 with AVX2 and FMA, else 4 (the
// baseline ISA's register: SSE on x86-64, NEON on AArch64); sums keep a double per lane. A row's
// result depends on W only in the last bits of the probabilities (FMA or not), never on the batch.
// The templates below are only ever inlined into the functions compiled for their width, so the
// ABI of a wide vector passed by value (GCC's -Wpsabi note, which it gives at the end of the file)
// never applies.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
template <int W>
struct Lanes {
  typedef float Floats __attribute__((vector_size(W * 4)));
  typedef int32_t Ints __attribute__((vector_size(W * 4)));
  typedef uint32_t Words __attribute__((vector_size(W * 4)));
  // A sum in double: two accumulators of W / 2 doubles, each one register (one of W doubles
  // would span two, and GCC keeps such a vector in memory between iterations).
  typedef float HalfFloats __attribute__((vector_size(W * 2)));
  typedef double HalfDoubles __attribute__((vector_size(W * 4)));
  struct Sum {
    HalfDoubles lo = {}, hi = {};
  };
};

template <int W>
[[gnu::always_inline]] inline typename Lanes<W>::Floats load(const float* p) {
  typename Lanes<W>::Floats v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// mask lanes (-1 or 0) ? a : b.
template <int W>
[[gnu::always_inline]] inline typename Lanes<W>::Floats select(const typename Lanes<W>::Ints& mask,
                                                                const typename Lanes<W>::Floats& a,
                                                                const typename Lanes<W>::Floats& b) {
  using Floats = typename Lanes<W>::Floats;
  using Ints = typename Lanes<W>::Ints;
  return (Floats)(((Ints)a & mask) | ((Ints)b & ~mask));
}

template <int W>
[[gnu::always_inline]] inline typename Lanes<W>::Floats splat(float x) {
  return typename Lanes<W>::Floats{} + x;
}

template <int W>
[[gnu::always_inline]] inline void accumulate(typename Lanes<W>::Sum& sum, const typename Lanes<W>::Floats& v) {
  using HalfFloats = typename Lanes<W>::HalfFloats;
  using HalfDoubles = typename Lanes<W>::HalfDoubles;
  HalfFloats a, b;
  std::memcpy(&a, &v, sizeof a);
  std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof a, sizeof b);
  sum.lo += __builtin_convertvector(a, HalfDoubles);
  sum.hi += __builtin_convertvector(b, HalfDoubles);
}

template <int W>
[[gnu::always_inline]] inline double total(const typename Lanes<W>::Sum& sum) {
  double s = 0.0;
  for (int j = 0; j < W / 2; ++j) s += sum.lo[j] + sum.hi[j];
  return s;
}

// The largest logit, NaN counted as -inf (a NaN never compares greater).
template <int W>
[[gnu::always_inline]] inline float max_logit_of(const float* x, int64_t n) {
  using Floats = typename Lanes<W>::Floats;
  Floats lane = splat<W>(kNegInf);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const Floats v = load<W>(x + i);
    lane = select<W>(v > lane, v, lane);
  }
  float m = kNegInf;
  for (int j = 0; j < W; ++j) m = lane[j] > m ? lane[j] : m;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// exp(z) (float, a few ulp: range reduction by ln 2 and Cephes' expf polynomial) for z in
// [kExpFloor, 0]; 0 below kExpFloor (where exp is under 1e-37), for -inf and for NaN.
template <int W>
[[gnu::always_inline]] inline typename Lanes<W>::Floats exp_nonpositive(const typename Lanes<W>::Floats& z) {
  using Floats = typename Lanes<W>::Floats;
  using Ints = typename Lanes<W>::Ints;
  using Words = typename Lanes<W>::Words;
  const Ints in_range = z >= splat<W>(kExpFloor);
  const Floats shifter = splat<W>(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const Floats t = z * 1.44269504088896341f + shifter;
  const Floats n = t - shifter;
  const Words ni = (Words)t - (Words)shifter;
  const Floats r = (z - n * 0.693359375f) - n * -2.12194440e-4f;
  Floats p = splat<W>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const Floats e = (Floats)((Words)p + (ni << 23));  // p * 2^n, a normal float in range
  return select<W>(in_range, e, Floats{});
}

// p[i] = exp((x[i] - m) * inv_t), as exp_nonpositive; returns the sum.
template <int W>
[[gnu::always_inline]] inline double exp_shifted_of(const float* x, int64_t n, float m, float inv_t, float* p) {
  using Floats = typename Lanes<W>::Floats;
  typename Lanes<W>::Sum lane;
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const Floats e = exp_nonpositive<W>((load<W>(x + i) - m) * inv_t);
    std::memcpy(p + i, &e, sizeof e);
    accumulate<W>(lane, e);
  }
  double sum = total<W>(lane);
  if (i < n) {  // the tail, through a padded vector
    float tail[W];
    std::fill(tail, tail + W, kNegInf);
    std::copy(x + i, x + n, tail);
    const Floats e = exp_nonpositive<W>((load<W>(tail) - m) * inv_t);
    for (int64_t j = 0; i + j < n; ++j) {
      p[i + j] = e[j];
      sum += e[j];
    }
  }
  return sum;
}

template <int W>
[[gnu::always_inline]] inline double sum_of(const float* p, int64_t n) {
  typename Lanes<W>::Sum lane;
  int64_t i = 0;
  for (; i + W <= n; i += W) accumulate<W>(lane, load<W>(p + i));
  double s = total<W>(lane);
  for (; i < n; ++i) s += p[i];
  return s;
}

// The sum of p[i] over i in [begin, end) that are above floor (at or above it when inclusive)
// and at least min_p.
template <int W>
[[gnu::always_inline]] inline double sum_above_of(const float* p, int64_t begin, int64_t end, float floor, bool inclusive,
                                                  float min_p) {
  using Floats = typename Lanes<W>::Floats;
  using Ints = typename Lanes<W>::Ints;
  const Floats f = splat<W>(floor), lowest = splat<W>(min_p);
  typename Lanes<W>::Sum lane;
  int64_t i = begin;
  for (; i + W <= end; i += W) {
    const Floats v = load<W>(p + i);
    const Ints kept = (inclusive ? v >= f : v > f) & (v >= lowest);
    accumulate<W>(lane, select<W>(kept, v, Floats{}));
  }
  double s = total<W>(lane);
  for (; i < end; ++i)
    if ((inclusive ? p[i] >= floor : p[i] > floor) && p[i] >= min_p) s += p[i];
  return s;
}

// keys[i] = logit_key(x[i]).
template <int W>
[[gnu::always_inline]] inline void logit_keys_of(const float* x, int64_t n, uint32_t* keys) {
  using Floats = typename Lanes<W>::Floats;
  using Ints = typename Lanes<W>::Ints;
  const Floats neg_inf = splat<W>(kNegInf);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    Floats v = load<W>(x + i);
    v = select<W>(v == v, v, neg_inf);  // NaN -> -inf
    const Ints b = (Ints)v;
    const Ints k = b ^ ((b >> 31) | (Ints{} + static_cast<int32_t>(0x80000000u)));
    std::memcpy(keys + i, &k, sizeof k);
  }
  for (; i < n; ++i) keys[i] = logit_key(x[i]);
}

// The passes at one width, as plain functions (each compiled for its ISA).
struct VocabPasses {
  int lanes;
  float (*max_logit)(const float* x, int64_t n);
  double (*exp_shifted)(const float* x, int64_t n, float m, float inv_t, float* p);
  double (*sum)(const float* p, int64_t n);
  double (*sum_above)(const float* p, int64_t begin, int64_t end, float floor, bool inclusive, float min_p);
  void (*logit_keys)(const float* x, int64_t n, uint32_t* keys);
};

#define LLM_SAMPLER_PASSES(W, TARGET)                                                                          \
  TARGET float max_logit_##W(const float* x, int64_t n) { return max_logit_of<W>(x, n); }                     \
  TARGET double exp_shifted_##W(const float* x, int64_t n, float m, float inv_t, float* p) {                   \
    return exp_shifted_of<W>(x, n, m, inv_t, p);                                                               \
  }                                                                                                            \
  TARGET double sum_##W(const float* p, int64_t n) { return sum_of<W>(p, n); }                                 \
  TARGET double sum_above_##W(const float* p, int64_t begin, int64_t end, float floor, bool inclusive,          \
                              float min_p) {                                                                   \
    return sum_above_of<W>(p, begin, end, floor, inclusive, min_p);                                            \
  }                                                                                                            \
  TARGET void logit_keys_##W(const float* x, int64_t n, uint32_t* keys) { logit_keys_of<W>(x, n, keys); }       \
  constexpr VocabPasses kPasses##W = {W, max_logit_##W, exp_shifted_##W, sum_##W, sum_above_##W, logit_keys_##W};

LLM_SAMPLER_PASSES(4, )
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LLM_SAMPLER_X86 1
LLM_SAMPLER_PASSES(8, __attribute__((target("avx2,fma"))))
LLM_SAMPLER_PASSES(16, __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl"))))
#endif
#undef LLM_SAMPLER_PASSES

int widest_lanes() {
#ifdef LLM_SAMPLER_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
    return 16;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 8;
#endif
  return 4;
}

std::atomic<int> forced_lanes{0};

const VocabPasses& passes() {
  static const int widest = widest_lanes();
  const int want = forced_lanes.load(std::memory_order_relaxed);
  const int lanes = want > 0 && want < widest ? want : widest;
#ifdef LLM_SAMPLER_X86
  if (lanes == 16) return kPasses16;
  if (lanes == 8) return kPasses8;
#endif
  return kPasses4;
}

float max_logit(const float* x, int64_t n) { return passes().max_logit(x, n); }

int32_t argmax(const float* x, int64_t n) {
  const float m = max_logit(x, n);
  if (m == kNegInf) return 0;  // all -inf or NaN
  for (int64_t i = 0;; ++i)
    if (x[i] == m) return static_cast<int32_t>(i);
}

// The sum of p[i] over i in [begin, end) that the prefix (key, cut) keeps and that are at least
// min_p: probabilities are >= 0, so their order by bits is their order by value; ids up to cut
// keep the key itself, later ids only what lies above it.
double kept_sum(const float* p, int64_t begin, int64_t end, uint32_t key, int64_t cut, float min_p) {
  float floor;
  std::memcpy(&floor, &key, sizeof floor);
  const int64_t mid = cut >= end ? end : std::max(begin, cut + 1);
  return passes().sum_above(p, begin, mid, floor, true, min_p) + passes().sum_above(p, mid, end, floor, false, min_p);
}

}  // namespace


int sampler_vector_lanes() { return passes().lanes; }
void sampler_force_lanes(int lanes) { forced_lanes.store(lanes, std::memory_order_relaxed); }

// The order every truncation and logprob uses is key descending, then id ascending. A prefix of
// that order is {i : key[i] > key, or key[i] == key and i <= cut}.
struct Sampler::Prefix {
  uint32_t key = 0;
  int64_t cut = std::numeric_limits<int64_t>::max();  // key 0, no cut: everything
  bool contains(uint32_t k, int64_t i) const { return k > key || (k == key && i <= cut); }
  bool shorter_than(const Prefix& o) const { return key > o.key || (key == o.key && cut < o.cut); }
};

// The shortest prefix of the order whose weight (mass[i], or 1 each when mass is null) reaches
// need; everything when the whole vocabulary does not. A radix select: bucket the candidates by
// the key's top 11 bits, walk the buckets down to the one where the weight is reached, keep only
// its members (in id order), and again on the next 11 bits and the last 10; the members left
// share one key, and the cut is where, in id order, the weight is reached. No sort of the
// vocabulary.
Sampler::Prefix Sampler::shortest_prefix(const uint32_t* keys, const float* mass, int64_t n, double need,
                                         uint32_t floor) {
  Prefix out;
  double acc = 0.0;  // weight of the keys above the current bucket
  members_.clear();
  bool all = true;  // members_ not built yet: every id
  // First cut: the keys at or above floor are a prefix of the order; when they weigh enough
  // (the usual case: a few likely tokens), the select runs on them alone. Given up as soon as
  // they are more than an eighth of the ids.
  if (floor > 0) {
    double weight = 0.0;
    const size_t most = static_cast<size_t>(n / 8);
    for (int64_t i = 0; i < n && members_.size() <= most; ++i)
      if (keys[i] >= floor) {
        members_.push_back(static_cast<int32_t>(i));
        weight += mass ? static_cast<double>(mass[i]) : 1.0;
      }
    if (members_.size() <= most && weight >= need)
      all = false;
    else
      members_.clear();
  }
  // Levels of 11, 11 and 10 key bits; each level's weights go to kCopies interleaved histograms
  // (by position), so that runs of equal buckets are not one chain of dependent additions.
  const int shifts[] = {21, 10, 0};
  const uint32_t masks[] = {0x7ff, 0x7ff, 0x3ff};
  constexpr int64_t kBuckets = 2048, kCopies = 4;
  bucket_weight_.resize(static_cast<size_t>(kBuckets * kCopies));
  double* const hist = bucket_weight_.data();
  for (int level = 0; level < 3; ++level) {
    const int shift = shifts[level];
    const uint32_t mask = masks[level];
    std::fill(bucket_weight_.begin(), bucket_weight_.end(), 0.0);
    auto add = [&](int64_t pos, int64_t i) {
      hist[(pos & (kCopies - 1)) * kBuckets + ((keys[i] >> shift) & mask)] += mass ? static_cast<double>(mass[i]) : 1.0;
    };
    if (all)
      for (int64_t i = 0; i < n; ++i) add(i, i);
    else
      for (size_t j = 0; j < members_.size(); ++j) add(static_cast<int64_t>(j), members_[j]);
    for (int64_t c = 1; c < kCopies; ++c)
      for (int64_t b = 0; b <= static_cast<int64_t>(mask); ++b) hist[b] += hist[c * kBuckets + b];
    int64_t chosen = -1;
    for (int64_t b = mask; b >= 0; --b) {
      if (hist[b] == 0.0) continue;
      if (acc + hist[b] >= need) {
        chosen = b;
        break;
      }
      acc += hist[b];
    }
    if (chosen < 0) {
      if (level == 0) {  // the whole vocabulary weighs less than need
        return out;
      }
      // Rounding: this group sums to a hair under what its bucket did. Its lowest bucket holds
      // the boundary: take back that bucket's weight and choose it.
      for (int64_t b = 0; b <= static_cast<int64_t>(mask) && chosen < 0; ++b)
        if (hist[b] > 0.0) chosen = b;
      if (chosen < 0) chosen = 0;
      acc -= hist[chosen];
    }
    const uint32_t c = static_cast<uint32_t>(chosen);
    if (all) {
      for (int64_t i = 0; i < n; ++i)
        if (((keys[i] >> shift) & mask) == c) members_.push_back(static_cast<int32_t>(i));
      all = false;
    } else {
      size_t kept = 0;
      for (int32_t i : members_)
        if (((keys[i] >> shift) & mask) == c) members_[kept++] = i;
      members_.resize(kept);
    }
  }
  // One key left; ids in ascending order.
  out.key = keys[members_.front()];
  out.cut = members_.back();
  for (int32_t i : members_) {
    acc += mass ? static_cast<double>(mass[i]) : 1.0;
    if (acc >= need) {
      out.cut = i;
      break;
    }
  }
  return out;
}

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

// The draw: probabilities after temperature, the kept prefix of the order (top-k, then top-p
// within it), min-p as a floor, then the request's one generator output walks the kept tokens in
// id order. The walk skips whole chunks of kChunk ids by their summed weight.
int32_t Sampler::draw(Request* req, const float* logits, int64_t vocab) {
  const SamplingParams& p = req->params;
  const float m = max_logit(logits, vocab);
  if (!std::isfinite(m)) return argmax(logits, vocab);

  probs_.resize(static_cast<size_t>(vocab));
  float* prob = probs_.data();
  const double total = passes().exp_shifted(logits, vocab, m, static_cast<float>(1.0 / static_cast<double>(p.temperature)), prob);

  // Truncation: a prefix of the order (probability descending, ties by lower id).
  Prefix keep;
  if ((p.top_k > 0 && p.top_k < vocab) || p.top_p < 1.0f) {
    keys_.resize(static_cast<size_t>(vocab));
    std::memcpy(keys_.data(), prob, static_cast<size_t>(vocab) * sizeof(float));  // p >= 0: bits order like values
    double kept = total;
    if (p.top_k > 0 && p.top_k < vocab) {
      keep = shortest_prefix(keys_.data(), nullptr, vocab, static_cast<double>(p.top_k), kLikelyFloor);
      kept = kept_sum(prob, 0, vocab, keep.key, keep.cut, 0.0f);
    }
    if (p.top_p < 1.0f) {
      const Prefix nucleus = shortest_prefix(keys_.data(), prob, vocab, static_cast<double>(p.top_p) * kept, kLikelyFloor);
      if (nucleus.shorter_than(keep)) keep = nucleus;
    }
  }
  const float min_p = p.min_p;  // p_max is 1 by construction
  const bool everything = keep.key == 0 && min_p <= 0.0f;
  auto weight = [&](int64_t i) -> float {
    return keep.contains(bits_of(prob[i]), i) && prob[i] >= min_p ? prob[i] : 0.0f;
  };

  const int64_t chunks = (vocab + kChunk - 1) / kChunk;
  chunk_mass_.assign(static_cast<size_t>(chunks), 0.0);
  double mass = 0.0;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk, end = std::min(vocab, begin + kChunk);
    const double sum = everything ? passes().sum(prob + begin, end - begin)
                                  : kept_sum(prob, begin, end, keep.key, keep.cut, min_p);
    chunk_mass_[c] = sum;
    mass += sum;
  }

  const double u = static_cast<double>(req->rng() >> 11) * 0x1.0p-53;
  const double target = u * mass;
  double cum = 0.0;
  int64_t last_chunk = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    if (chunk_mass_[c] <= 0.0) continue;
    last_chunk = c;
    if (cum + chunk_mass_[c] <= target) {
      cum += chunk_mass_[c];
      continue;
    }
    for (int64_t i = c * kChunk, end = std::min(vocab, i + kChunk); i < end; ++i) {
      const float w = weight(i);
      if (w <= 0.0f) continue;
      cum += w;
      if (cum > target) return static_cast<int32_t>(i);
    }
  }
  // Rounding left target at the very end of the mass: the last token with weight.
  for (int64_t i = std::min(vocab, (last_chunk + 1) * kChunk) - 1; i >= 0; --i)
    if (weight(i) > 0.0f) return static_cast<int32_t>(i);
  return argmax(logits, vocab);  // unreachable: the top token has weight 1
}

TokenLogprobs Sampler::compute_logprobs(int32_t token_id, int64_t top_n, int64_t vocab) {
  const float* raw = raw_.data();
  const float m = max_logit(raw, vocab);
  double log_z = m;
  if (std::isfinite(m)) {
    probs_.resize(static_cast<size_t>(vocab));
    log_z = static_cast<double>(m) + std::log(passes().exp_shifted(raw, vocab, m, 1.0f, probs_.data()));
  }
  auto logprob = [&](int32_t t) { return static_cast<float>(static_cast<double>(std::isnan(raw[t]) ? kNegInf : raw[t]) - log_z); };

  TokenLogprobs out;
  out.token_id = token_id;
  out.logprob = logprob(token_id);
  const int64_t n = std::min<int64_t>(top_n, vocab);
  if (n > 0) {
    keys_.resize(static_cast<size_t>(vocab));
    passes().logit_keys(raw, vocab, keys_.data());
    const Prefix top = shortest_prefix(keys_.data(), nullptr, vocab, static_cast<double>(n),
                                       std::isfinite(m) ? logit_key(m - kLikelyLogits) : 0);
    members_.clear();
    for (int64_t i = 0; i < vocab; ++i)
      if (top.contains(keys_[i], i)) members_.push_back(static_cast<int32_t>(i));
    const uint32_t* keys = keys_.data();
    std::sort(members_.begin(), members_.end(), [keys](int32_t a, int32_t b) { return keys[a] > keys[b] || (keys[a] == keys[b] && a < b); });
    for (int32_t t : members_) {
      out.top_ids.push_back(t);
      out.top_logprobs.push_back(logprob(t));
    }
  }
  return out;
}

}  // namespace llm
