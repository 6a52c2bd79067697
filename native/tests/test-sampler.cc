// test-sampler.cc: greedy and its ties, temperature, top-k / top-p / min-p supports (by
// sampling many times), per-request seeds, penalties and logprobs against hand computations,
// min_tokens masking, and token masks (structured output) in every mode.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <map>
#include <set>

#include "kv/sampler.h"
#include "test-harness.h"

using namespace llm;

namespace {

Request make_request(float temperature, uint64_t seed = 1) {
  Request r;
  r.request_id = "r";
  r.prompt_token_ids = {0};
  r.all_token_ids = {0};
  r.params.temperature = temperature;
  r.params.max_tokens = 100;
  r.rng.seed(seed);
  return r;
}

int32_t sample(Sampler& s, Request* r, std::vector<float> logits, const std::vector<int64_t>& eos = {}) {
  return s.sample(r, logits.data(), static_cast<int64_t>(logits.size()), eos).token_id;
}

// Token frequencies over n draws.
std::map<int32_t, int> histogram(Request* r, const std::vector<float>& logits, int n) {
  Sampler s;
  std::map<int32_t, int> h;
  for (int i = 0; i < n; ++i) ++h[sample(s, r, logits)];
  return h;
}

std::set<int32_t> support(const std::map<int32_t, int>& h) {
  std::set<int32_t> out;
  for (auto& kv : h) out.insert(kv.first);
  return out;
}

// Logits whose softmax (temperature 1) is exactly proportional to these weights.
std::vector<float> logits_of(const std::vector<double>& weights) {
  std::vector<float> out;
  for (double w : weights) out.push_back(static_cast<float>(std::log(w)));
  return out;
}

// A token mask (XGrammar's layout) allowing exactly `allowed` of a vocabulary of `vocab`.
std::vector<int32_t> mask_of(int64_t vocab, const std::set<int32_t>& allowed) {
  std::vector<int32_t> words(static_cast<size_t>((vocab + 31) / 32), 0);
  for (int32_t t : allowed) words[t / 32] = static_cast<int32_t>(static_cast<uint32_t>(words[t / 32]) | (1u << (t % 32)));
  return words;
}

SampleResult sample_masked(Sampler& s, Request* r, std::vector<float> logits, const std::vector<int32_t>& mask,
                           const std::vector<int64_t>& eos = {}) {
  return s.sample(r, logits.data(), static_cast<int64_t>(logits.size()), eos, mask.data());
}

// Token frequencies over n masked draws.
std::map<int32_t, int> masked_histogram(Request* r, const std::vector<float>& logits, const std::vector<int32_t>& mask,
                                        int n) {
  Sampler s;
  std::map<int32_t, int> h;
  for (int i = 0; i < n; ++i) ++h[sample_masked(s, r, logits, mask).token_id];
  return h;
}

}  // namespace

TEST(greedy_takes_the_lowest_id_among_ties) {
  Sampler s;
  Request r = make_request(0.0f);
  CHECK_EQ(sample(s, &r, {0.1f, 2.0f, -1.0f, 1.9f}), 1);
  CHECK_EQ(sample(s, &r, {0.5f, 3.0f, 1.0f, 3.0f, 3.0f}), 1);
  const float inf = INFINITY;
  CHECK_EQ(sample(s, &r, {-inf, -inf, 0.0f}), 2);
  CHECK_EQ(sample(s, &r, {NAN, 1.0f, 0.5f}), 1);
}

TEST(temperature_zero_and_tiny_are_greedy) {
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, 1.5f};
  Request zero = make_request(0.0f);
  Request below_eps = make_request(1e-6f);  // below 1e-5: greedy, like vLLM
  Request tiny = make_request(0.01f);       // sampled, but e^-50 leaves only the argmax
  for (Request* r : {&zero, &below_eps, &tiny}) CHECK(support(histogram(r, logits, 300)) == std::set<int32_t>{1});
  Request warm = make_request(1.0f);
  CHECK_EQ(support(histogram(&warm, logits, 2000)).size(), size_t{4});
}

TEST(top_k_one_is_greedy) {
  std::vector<float> logits;
  for (int i = 0; i < 50; ++i) logits.push_back(std::sin(i * 1.7f) * 3.0f);
  Sampler s;
  Request g = make_request(0.0f);
  const int32_t greedy = sample(s, &g, logits);
  Request r = make_request(1.5f, 9);
  r.params.top_k = 1;
  CHECK(support(histogram(&r, logits, 500)) == std::set<int32_t>{greedy});
}

TEST(top_k_keeps_the_k_most_likely) {
  Request r = make_request(1.0f, 3);
  r.params.top_k = 2;
  const auto h = histogram(&r, logits_of({0.1, 0.4, 0.2, 0.3}), 4000);
  CHECK(support(h) == (std::set<int32_t>{1, 3}));
  CHECK_NEAR(h.at(1) / 4000.0, 0.4 / 0.7, 0.03);  // renormalised over the kept two
}

TEST(top_p_keeps_the_shortest_prefix_holding_p) {
  const std::vector<float> logits = logits_of({0.05, 0.3, 0.5, 0.15});
  Request r = make_request(1.0f, 4);
  r.params.top_p = 0.75f;  // 0.5 < 0.75 <= 0.5 + 0.3
  auto h = histogram(&r, logits, 4000);
  CHECK(support(h) == (std::set<int32_t>{1, 2}));
  CHECK_NEAR(h.at(2) / 4000.0, 0.5 / 0.8, 0.03);
  r.params.top_p = 0.9f;  // + 0.15
  CHECK(support(histogram(&r, logits, 4000)) == (std::set<int32_t>{1, 2, 3}));
  r.params.top_p = 0.3f;  // the top token alone already holds it
  CHECK(support(histogram(&r, logits, 500)) == std::set<int32_t>{2});
  // After top-k = 3 (0.95 kept), top_p = 0.8 keeps 0.5 / 0.95 + 0.3 / 0.95 = 0.84 >= 0.8.
  r.params.top_k = 3;
  r.params.top_p = 0.8f;
  CHECK(support(histogram(&r, logits, 4000)) == (std::set<int32_t>{1, 2}));
}

TEST(top_p_on_a_large_flat_vocabulary_breaks_ties_by_lower_id) {
  // 5000 tokens, flat: the nucleus of 0.5 is the top token and the 2500 lowest ids of the rest.
  Request r = make_request(1.0f, 11);
  r.params.top_p = 0.5f;
  std::vector<float> logits(5000, 0.0f);
  logits[4321] = 0.01f;  // the most likely, at the end of the id order
  const auto h = histogram(&r, logits, 1000);
  for (auto& kv : h) CHECK(kv.first < 2500 || kv.first == 4321);
  CHECK(support(h).size() > 500);
}

namespace {

// 50,000 logits on a grid of 1/8 (many exact ties, over a range that spans the radix select's
// buckets), with their order by the sampler's rule: logit descending, then lower id.
struct TiedVocabulary {
  std::vector<float> logits;
  std::vector<int32_t> order;
  TiedVocabulary() {
    std::mt19937_64 g(17);
    std::normal_distribution<double> normal(0.0, 2.0);
    for (int i = 0; i < 50000; ++i) logits.push_back(static_cast<float>(std::floor(normal(g) * 8.0) / 8.0));
    for (int i = 0; i < 50000; ++i) order.push_back(i);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  }
  std::set<int32_t> first(size_t n) const { return std::set<int32_t>(order.begin(), order.begin() + n); }
};

}  // namespace

TEST(top_k_and_top_p_on_a_large_vocabulary_keep_exactly_the_sorted_prefix) {
  const TiedVocabulary v;
  // The 37th and 38th most likely share a logit: the tie goes to the lower id.
  size_t k = 37;
  while (v.logits[v.order[k - 1]] != v.logits[v.order[k]]) ++k;
  Request r = make_request(1.0f, 21);
  r.params.top_k = static_cast<int32_t>(k);
  auto h = histogram(&r, v.logits, 4000);
  CHECK(support(h) == v.first(k));

  // top_p halfway between the masses of the first 60 and 61 (double precision): exactly 61 kept.
  const double top = v.logits[v.order[0]];
  double total = 0.0, first60 = 0.0, first61 = 0.0;
  for (size_t j = 0; j < v.order.size(); ++j) {
    const double p = std::exp(v.logits[v.order[j]] - top);
    total += p;
    if (j < 60) first60 += p;
    if (j < 61) first61 += p;
  }
  Request q = make_request(1.0f, 22);
  q.params.top_p = static_cast<float>((first60 + first61) / 2.0 / total);
  h = histogram(&q, v.logits, 5000);
  CHECK(support(h) == v.first(61));
}

TEST(logprobs_on_a_large_vocabulary_give_the_sorted_top_and_log_softmax) {
  const TiedVocabulary v;
  double top = v.logits[v.order[0]], sum = 0.0;
  for (float l : v.logits) sum += std::exp(l - top);
  const double log_z = top + std::log(sum);
  Request r = make_request(0.0f);
  r.params.logprobs = 20;
  Sampler s;
  std::vector<float> l = v.logits;
  const SampleResult res = s.sample(&r, l.data(), static_cast<int64_t>(l.size()), {});
  CHECK_EQ(res.token_id, v.order[0]);
  CHECK(res.logprobs.top_ids == std::vector<int32_t>(v.order.begin(), v.order.begin() + 20));
  for (size_t j = 0; j < 20; ++j) CHECK_NEAR(res.logprobs.top_logprobs[j], v.logits[v.order[j]] - log_z, 1e-5);
  CHECK_NEAR(res.logprobs.logprob, v.logits[v.order[0]] - log_z, 1e-5);
}

TEST(the_draw_walks_across_chunk_boundaries_in_proportion) {
  // Mass only at the edges of the walk's chunks of ids (and the last id): each drawn in
  // proportion to its weight.
  std::vector<float> logits(4100, -std::numeric_limits<float>::infinity());
  const std::vector<int32_t> ids = {0, 1023, 1024, 2047, 3072, 4099};
  const std::vector<double> weights = {1, 2, 3, 1, 2, 3};
  for (size_t j = 0; j < ids.size(); ++j) logits[ids[j]] = static_cast<float>(std::log(weights[j]));
  Request r = make_request(1.0f, 23);
  const auto h = histogram(&r, logits, 24000);
  CHECK(support(h) == std::set<int32_t>(ids.begin(), ids.end()));
  for (size_t j = 0; j < ids.size(); ++j) CHECK_NEAR(h.at(ids[j]) / 24000.0, weights[j] / 12.0, 0.015);
}

// The passes over the vocabulary at each vector width this CPU has (16: AVX-512, 8: AVX2, 4: the
// baseline): the same kept sets, top logprobs and seeded tokens.
TEST(every_vector_width_gives_the_same_tokens_and_logprobs) {
  const TiedVocabulary v;
  struct Run {
    std::vector<int32_t> tokens, top_ids;
    std::vector<float> top_logprobs;
  };
  auto run = [&] {
    Run out;
    for (int mode = 0; mode < 4; ++mode) {
      Request r = make_request(mode == 0 ? 1.0f : 0.7f, 31 + mode);
      if (mode == 1) r.params.top_k = 40;
      if (mode == 2) r.params.top_p = 0.8f;
      if (mode == 3) r.params.min_p = 0.02f;
      Sampler s;
      for (int i = 0; i < 300; ++i) out.tokens.push_back(sample(s, &r, v.logits));
    }
    Request g = make_request(0.0f);
    g.params.logprobs = 20;
    Sampler s;
    std::vector<float> l = v.logits;
    const SampleResult res = s.sample(&g, l.data(), static_cast<int64_t>(l.size()), {});
    out.top_ids = res.logprobs.top_ids;
    out.top_logprobs = res.logprobs.top_logprobs;
    out.tokens.push_back(res.token_id);
    return out;
  };
  const int widest = sampler_vector_lanes();
  CHECK(widest == 4 || widest == 8 || widest == 16);
  const Run base = run();
  for (int lanes = 4; lanes < widest; lanes *= 2) {
    sampler_force_lanes(lanes);
    CHECK_EQ(sampler_vector_lanes(), lanes);
    const Run other = run();
    CHECK(other.tokens == base.tokens);
    CHECK(other.top_ids == base.top_ids);
    for (size_t j = 0; j < base.top_logprobs.size(); ++j) CHECK_NEAR(other.top_logprobs[j], base.top_logprobs[j], 1e-6);
  }
  sampler_force_lanes(0);
  CHECK_EQ(sampler_vector_lanes(), widest);
  std::printf("  vector widths checked: 4 to %d floats\n", widest);
}

TEST(min_p_drops_tokens_below_a_fraction_of_the_top) {
  const std::vector<float> logits = logits_of({0.4, 0.3, 0.08, 0.12, 0.1});
  Request r = make_request(1.0f, 5);
  r.params.min_p = 0.24f;  // threshold 0.096: keeps 0.4, 0.3, 0.12, 0.1
  CHECK(support(histogram(&r, logits, 4000)) == (std::set<int32_t>{0, 1, 3, 4}));
  r.params.min_p = 0.5f;  // threshold 0.2
  const auto h = histogram(&r, logits, 4000);
  CHECK(support(h) == (std::set<int32_t>{0, 1}));
  CHECK_NEAR(h.at(0) / 4000.0, 0.4 / 0.7, 0.03);
  r.params.min_p = 1.0f;  // only the top
  CHECK(support(histogram(&r, logits, 300)) == std::set<int32_t>{0});
}

TEST(the_draw_is_a_fixed_function_of_the_generator) {
  // std::mt19937_64's first output for the default seed 5489 is 14514284786278117030 (C++
  // standard); u = (x >> 11) * 2^-53 = 0.7868..., which falls in the 4th quarter.
  Request r = make_request(1.0f);
  r.rng.seed(5489);
  Sampler s;
  CHECK_EQ(sample(s, &r, {0.0f, 0.0f, 0.0f, 0.0f}), 3);
  // The second output, 4620546740167642908, gives u = 0.2504...: the 2nd quarter.
  CHECK_EQ(sample(s, &r, {0.0f, 0.0f, 0.0f, 0.0f}), 1);
}

TEST(the_same_seed_gives_the_same_tokens_whatever_the_batch) {
  std::vector<float> logits;
  for (int i = 0; i < 64; ++i) logits.push_back(std::cos(i * 0.37f));
  Request a = make_request(0.8f, 42), b = make_request(0.8f, 42), other = make_request(0.8f, 7);
  a.params.top_p = b.params.top_p = 0.9f;
  Sampler s1, s2;
  std::vector<int32_t> seq_a, seq_b, seq_other;
  for (int i = 0; i < 100; ++i) {
    seq_a.push_back(sample(s1, &a, logits));
    // b shares its sampler with another request, interleaved as in a batch.
    seq_other.push_back(sample(s2, &other, logits));
    seq_b.push_back(sample(s2, &b, logits));
  }
  CHECK(seq_a == seq_b);
  CHECK(seq_a != seq_other);
}

TEST(repetition_presence_and_frequency_penalties) {
  // Token ids:           0     1     2     3     4
  std::vector<float> l = {2.0f, -1.0f, 0.5f, 3.0f, 1.0f};
  Request r = make_request(0.0f);
  r.prompt_token_ids = {0, 1};
  r.output_token_ids = {2, 2, 3};
  r.all_token_ids = {0, 1, 2, 2, 3};
  r.params.repetition_penalty = 2.0f;
  r.params.presence_penalty = 0.5f;
  r.params.frequency_penalty = 0.25f;
  Sampler s;
  const int32_t t = s.sample(&r, l.data(), 5, {}).token_id;
  CHECK_NEAR(l[0], 1.0, 1e-6);                        // prompt, > 0: 2 / 2
  CHECK_NEAR(l[1], -2.0, 1e-6);                       // prompt, < 0: -1 * 2
  CHECK_NEAR(l[2], 0.25 - 2 * 0.25 - 0.5, 1e-6);      // output twice: 0.5 / 2, then -0.5, -0.5
  CHECK_NEAR(l[3], 1.5 - 0.25 - 0.5, 1e-6);           // output once: 3 / 2, then -0.25, -0.5
  CHECK_NEAR(l[4], 1.0, 1e-6);                        // never seen
  CHECK_EQ(t, 0);  // 1.0 ties 4's 1.0: the lower id; 3 fell to 0.75
  // A negative presence penalty encourages repeats.
  std::vector<float> l2 = {1.0f, 1.2f};
  Request q = make_request(0.0f);
  q.output_token_ids = {0};
  q.all_token_ids = {0, 0};
  q.params.presence_penalty = -0.5f;
  CHECK_EQ(s.sample(&q, l2.data(), 2, {}).token_id, 0);
  CHECK_NEAR(l2[0], 1.5, 1e-6);
}

TEST(logprobs_are_log_softmax_of_the_raw_logits) {
  // log Z = log(e + e^2 + 2 e^3) = 3.9175757955891974
  std::vector<float> l = {1.0f, 2.0f, 3.0f, 3.0f};
  Request r = make_request(0.0f);
  r.params.logprobs = 3;
  r.params.repetition_penalty = 5.0f;  // touches token 0 only, and not the reported logprobs
  Sampler s;
  SampleResult res = s.sample(&r, l.data(), 4, {});
  CHECK(res.has_logprobs);
  CHECK_EQ(res.token_id, 2);
  CHECK_EQ(res.logprobs.token_id, 2);
  CHECK_NEAR(res.logprobs.logprob, -0.9175757955891974, 1e-6);
  CHECK(res.logprobs.top_ids == (std::vector<int32_t>{2, 3, 1}));  // ties by lower id
  CHECK_EQ(res.logprobs.top_logprobs.size(), size_t{3});
  CHECK_NEAR(res.logprobs.top_logprobs[0], -0.9175757955891974, 1e-6);
  CHECK_NEAR(res.logprobs.top_logprobs[1], -0.9175757955891974, 1e-6);
  CHECK_NEAR(res.logprobs.top_logprobs[2], -1.9175757955891974, 1e-6);

  r.params.logprobs = 0;  // the sampled token only
  std::vector<float> l2 = {1.0f, 2.0f, 3.0f, 3.0f};
  res = s.sample(&r, l2.data(), 4, {});
  CHECK(res.has_logprobs && res.logprobs.top_ids.empty());
  r.params.logprobs = 10;  // more than the vocabulary: all of it
  std::vector<float> l3 = {1.0f, 2.0f, 3.0f, 3.0f};
  res = s.sample(&r, l3.data(), 4, {});
  CHECK_EQ(res.logprobs.top_ids.size(), size_t{4});
  r.params.logprobs = -1;
  std::vector<float> l4 = {1.0f, 2.0f};
  CHECK(!s.sample(&r, l4.data(), 2, {}).has_logprobs);
}

TEST(min_tokens_masks_eos_and_stop_ids) {
  const std::vector<float> logits = {0.0f, 1.0f, 5.0f, 4.0f, 3.0f};  // EOS 2 is the argmax
  Request r = make_request(0.0f);
  r.params.min_tokens = 2;
  r.params.stop_token_ids = {3};
  Sampler s;
  CHECK_EQ(sample(s, &r, logits, {2}), 4);  // 0 outputs: EOS and stop id masked
  r.append_output_token(4);
  CHECK_EQ(sample(s, &r, logits, {2}), 4);  // 1 output
  r.append_output_token(4);
  CHECK_EQ(sample(s, &r, logits, {2}), 2);  // 2 outputs: allowed
  // Sampled paths mask too.
  Request t = make_request(1.0f, 8);
  t.params.min_tokens = 1;
  t.params.stop_token_ids = {3};
  std::set<int32_t> seen;
  for (int i = 0; i < 1000; ++i) seen.insert(sample(s, &t, logits, {2}));
  CHECK(seen == (std::set<int32_t>{0, 1, 4}));
}

TEST(token_mask_greedy_takes_the_best_allowed_token) {
  // 70 tokens: three words, the last one partly past the vocabulary (its high bits are ignored).
  std::vector<float> logits(70);
  for (int i = 0; i < 70; ++i) logits[i] = std::sin(i * 0.9f) * 4.0f;
  Sampler s;
  Request r = make_request(0.0f);
  r.params.constrained = true;
  CHECK(!Sampler::is_plain_greedy(r));
  for (const std::set<int32_t>& allowed : {std::set<int32_t>{5}, std::set<int32_t>{3, 40, 65}, std::set<int32_t>{69}}) {
    int32_t best = *allowed.begin();
    for (int32_t t : allowed)
      if (logits[t] > logits[best]) best = t;
    const SampleResult res = sample_masked(s, &r, logits, mask_of(70, allowed));
    CHECK(res.error.empty());
    CHECK_EQ(res.token_id, best);
  }
  // Bits past the vocabulary allow nothing.
  std::vector<int32_t> past = mask_of(70, {});
  past[2] = static_cast<int32_t>(0xffffffc0u);  // tokens 70..95
  const SampleResult none = sample_masked(s, &r, logits, past);
  CHECK_EQ(none.token_id, -1);
  CHECK(none.error == Sampler::kNoAllowedToken);
  // Every allowed logit -inf (a broken model): the lowest allowed id, never a disallowed argmax.
  std::vector<float> dead(70, 1.0f);
  dead[7] = dead[9] = -INFINITY;
  CHECK_EQ(sample_masked(s, &r, dead, mask_of(70, {9, 7})).token_id, 7);
  r.params.min_tokens = 1;  // ... and one min_tokens leaves: 7 is EOS
  CHECK_EQ(sample_masked(s, &r, dead, mask_of(70, {9, 7}), {7}).token_id, 9);
}

TEST(token_mask_restricts_every_sampling_mode) {
  const std::vector<float> logits = logits_of({0.3, 0.05, 0.25, 0.1, 0.2, 0.1});
  const std::set<int32_t> allowed = {1, 3, 4};
  const std::vector<int32_t> mask = mask_of(6, allowed);
  // Temperature alone: the allowed tokens in proportion 0.05 : 0.1 : 0.2.
  Request t = make_request(1.0f, 21);
  auto h = masked_histogram(&t, logits, mask, 6000);
  CHECK(support(h) == allowed);
  CHECK_NEAR(h.at(4) / 6000.0, 0.2 / 0.35, 0.03);
  // top-k over the allowed tokens only: 4 and 3.
  Request k = make_request(1.0f, 22);
  k.params.top_k = 2;
  CHECK(support(masked_histogram(&k, logits, mask, 3000)) == (std::set<int32_t>{3, 4}));
  // top-p of the allowed mass: 0.2 / 0.35 = 0.57 < 0.6 <= (0.2 + 0.1) / 0.35.
  Request p = make_request(1.0f, 23);
  p.params.top_p = 0.6f;
  CHECK(support(masked_histogram(&p, logits, mask, 3000)) == (std::set<int32_t>{3, 4}));
  // min-p relative to the best allowed token (0.2): 0.3 keeps 0.1 and 0.2.
  Request m = make_request(1.0f, 24);
  m.params.min_p = 0.3f;
  CHECK(support(masked_histogram(&m, logits, mask, 3000)) == (std::set<int32_t>{3, 4}));
  // Penalties act on the allowed tokens only: 4 repeated twice falls below 3.
  Request pen = make_request(0.0f);
  pen.params.constrained = true;
  pen.output_token_ids = {4, 4};
  pen.all_token_ids = {0, 4, 4};
  pen.params.frequency_penalty = 1.0f;
  Sampler s;
  CHECK_EQ(sample_masked(s, &pen, logits, mask).token_id, 3);
  // A seed gives the same constrained draws whatever else the sampler served in between.
  Request a = make_request(0.9f, 77), b = make_request(0.9f, 77), other = make_request(0.9f, 5);
  Sampler s1, s2;
  std::vector<int32_t> seq_a, seq_b;
  for (int i = 0; i < 200; ++i) {
    seq_a.push_back(sample_masked(s1, &a, logits, mask).token_id);
    sample(s2, &other, logits);
    seq_b.push_back(sample_masked(s2, &b, logits, mask).token_id);
  }
  CHECK(seq_a == seq_b);
  for (int32_t x : seq_a) CHECK(allowed.count(x) == 1);
}

TEST(token_mask_logprobs_are_normalised_over_the_allowed_tokens) {
  // Allowed {1, 2}: log Z = log(e^2 + e^3) = 3.3132616875182226.
  std::vector<float> l = {5.0f, 2.0f, 3.0f, 4.0f};
  Request r = make_request(0.0f);
  r.params.constrained = true;
  r.params.logprobs = 3;  // more than the allowed two: those two only
  Sampler s;
  const SampleResult res = sample_masked(s, &r, l, mask_of(4, {1, 2}));
  CHECK_EQ(res.token_id, 2);
  CHECK(res.has_logprobs);
  CHECK_NEAR(res.logprobs.logprob, 3.0 - 3.3132616875182226, 1e-6);
  CHECK(res.logprobs.top_ids == (std::vector<int32_t>{2, 1}));
  CHECK_NEAR(res.logprobs.top_logprobs[1], 2.0 - 3.3132616875182226, 1e-6);
  CHECK_NEAR(std::exp(res.logprobs.top_logprobs[0]) + std::exp(res.logprobs.top_logprobs[1]), 1.0, 1e-6);
}

TEST(token_mask_allowing_nothing_is_an_error_not_a_draw) {
  const std::vector<float> logits = {0.0f, 1.0f, 5.0f, 4.0f};
  Sampler s;
  Request r = make_request(1.0f, 3);
  Request twin = make_request(1.0f, 3);
  const SampleResult res = sample_masked(s, &r, logits, mask_of(4, {}));
  CHECK_EQ(res.token_id, -1);
  CHECK(res.error == "structured output: the grammar allows no token");
  // The generator was not used: r goes on drawing as its twin does.
  CHECK_EQ(sample(s, &r, logits), sample(s, &twin, logits));
  // Only EOS and a stop id allowed while min_tokens masks them: nothing left.
  Request m = make_request(0.0f);
  m.params.min_tokens = 1;
  m.params.stop_token_ids = {3, 2};
  CHECK(sample_masked(s, &m, logits, mask_of(4, {2, 3}), {2}).error == Sampler::kNoAllowedToken);
  // One more allowed token: that one.
  CHECK_EQ(sample_masked(s, &m, logits, mask_of(4, {0, 2, 3}), {2}).token_id, 0);
  m.append_output_token(0);
  CHECK_EQ(sample_masked(s, &m, logits, mask_of(4, {0, 2, 3}), {2}).token_id, 2);
}

TEST(an_all_ones_mask_changes_nothing) {
  std::vector<float> logits;
  for (int i = 0; i < 100; ++i) logits.push_back(std::cos(i * 0.61f) * 2.0f);
  std::vector<int32_t> ones((100 + 31) / 32, -1);
  Request a = make_request(0.7f, 13), b = make_request(0.7f, 13);
  a.params.top_k = b.params.top_k = 20;
  a.params.logprobs = b.params.logprobs = 2;
  Sampler s;
  for (int i = 0; i < 50; ++i) {
    const SampleResult x = s.sample(&a, std::vector<float>(logits).data(), 100, {});
    const SampleResult y = sample_masked(s, &b, logits, ones);
    CHECK_EQ(x.token_id, y.token_id);
    CHECK(x.logprobs.top_ids == y.logprobs.top_ids);
  }
}

int main() { return llm_test::run_all(); }
