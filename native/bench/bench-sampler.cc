// bench-sampler.cc: the time the sampler takes per row, per sampling mode, on one thread, for a
// vocabulary of V logits shaped like a trained model's (a few tokens far above a normal bulk,
// "peaked") or like a random-weight model's (all of them close, "flat"). Not engine code.
//
//   bench-sampler [vocab=128256] [rounds=200] [only modes whose name contains this] [vector width cap]
//
// Prints one line per mode and shape: microseconds per row (median of rounds). A row is what the
// engine pays once per sampled request per step, on its own thread.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "bench-common.h"
#include "kv/sampler.h"

using namespace llm;

namespace {

struct Mode {
  const char* name;
  float temperature;
  int32_t top_k;
  float top_p;
  float min_p;
  int32_t logprobs;
};

std::vector<float> logits_of(const char* shape, int64_t vocab, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> normal(0.0f, std::string(shape) == "flat" ? 0.05f : 2.0f);
  std::vector<float> l(static_cast<size_t>(vocab));
  for (float& x : l) x = normal(g);
  if (std::string(shape) == "peaked")
    for (int i = 0; i < 20; ++i) l[static_cast<size_t>(g() % static_cast<uint64_t>(vocab))] = 14.0f + static_cast<float>(i % 5);
  return l;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t vocab = argc > 1 ? std::atoll(argv[1]) : 128256;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 200;
  const std::string only = argc > 3 ? argv[3] : "";
  if (argc > 4) sampler_force_lanes(std::atoi(argv[4]));
  const Mode modes[] = {
      {"greedy", 0.0f, 0, 1.0f, 0.0f, -1},
      {"temperature 1", 1.0f, 0, 1.0f, 0.0f, -1},
      {"temperature 0.6, top_p 0.9", 0.6f, 0, 0.9f, 0.0f, -1},
      {"top_k 50", 1.0f, 50, 1.0f, 0.0f, -1},
      {"min_p 0.05", 1.0f, 0, 1.0f, 0.05f, -1},
      {"temperature 1, logprobs 5", 1.0f, 0, 1.0f, 0.0f, 5},
  };
  std::printf("sampler, one thread, vocabulary %lld, vectors of %d floats, median of %d rows\n", static_cast<long long>(vocab),
              sampler_vector_lanes(), rounds);
  std::printf("%-28s %10s %10s\n", "mode", "peaked us", "flat us");
  for (const Mode& m : modes) {
    if (std::string(m.name).find(only) == std::string::npos) continue;
    double us[2];
    const char* shapes[] = {"peaked", "flat"};
    for (int s = 0; s < 2; ++s) {
      const std::vector<float> base = logits_of(shapes[s], vocab, 7);
      Request r;
      r.request_id = "bench";
      r.prompt_token_ids = {1, 2, 3};
      r.all_token_ids = {1, 2, 3};
      r.params.temperature = m.temperature;
      r.params.top_k = m.top_k;
      r.params.top_p = m.top_p;
      r.params.min_p = m.min_p;
      r.params.logprobs = m.logprobs;
      r.params.max_tokens = 1 << 30;
      r.rng.seed(1);
      Sampler sampler;
      std::vector<float> row;
      std::vector<double> times;
      int64_t checksum = 0;
      for (int i = 0; i < rounds + 3; ++i) {
        row = base;
        const double t0 = llm_bench::now();
        checksum += sampler.sample(&r, row.data(), vocab, {}).token_id;
        if (i >= 3) times.push_back(llm_bench::now() - t0);
      }
      std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
      us[s] = times[times.size() / 2] * 1e6;
      if (checksum < 0) std::printf("(no token)\n");
    }
    std::printf("%-28s %10.1f %10.1f\n", m.name, us[0], us[1]);
  }
  return 0;
}
