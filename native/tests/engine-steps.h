// engine-steps.h: driving an Engine step by step in tests of remote prefill
// (test-engine-remote-prefill.cc on the CPU, test-cuda-ipc.cc on a GPU): greedy requests with
// the remote-prefill fields, and a loop that steps until one request reaches a state.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "test-harness.h"

namespace llm_test {

// A greedy request of max_tokens tokens (EOS ignored); `external` prompt tokens come from a
// remote prefill; prefill_only stops after the prompt, holding its blocks.
inline std::unique_ptr<llm::Request> greedy_request(const std::string& id, std::vector<int32_t> prompt,
                                                    int64_t external = 0, bool prefill_only = false,
                                                    int64_t max_tokens = 8) {
  auto r = std::make_unique<llm::Request>();
  r->request_id = id;
  r->prompt_token_ids = std::move(prompt);
  r->params.temperature = 0.0f;
  r->params.ignore_eos = true;
  r->params.max_tokens = max_tokens;
  r->num_external_tokens = external;
  r->prefill_only = prefill_only;
  return r;
}

// What stepping saw of one request: its tokens, its last output, and every step's KV events.
struct Seen {
  std::vector<int32_t> tokens;
  llm::RequestOutput last;
  std::vector<llm::KVEvent> events;
  bool found = false;
};

// Steps until `id` produces an output matching `pred` (500 steps at most; a CHECK fails
// otherwise), adding to `seen`.
template <typename Pred>
Seen step_until(llm::Engine& e, const std::string& id, Pred pred, Seen seen = {}) {
  for (int i = 0; i < 500 && !seen.found; ++i) {
    llm::StepResult s;
    CHECK(e.step(&s).ok());
    for (auto& ev : s.events) seen.events.push_back(ev);
    for (auto& o : s.outputs) {
      if (o.request_id != id) continue;
      seen.tokens.insert(seen.tokens.end(), o.new_token_ids.begin(), o.new_token_ids.end());
      if (pred(o)) {
        seen.last = o;
        seen.found = true;
      }
    }
  }
  CHECK(seen.found);
  return seen;
}

inline bool finished(const llm::RequestOutput& o) { return o.finish_reason != llm::FinishReason::none; }
inline bool awaiting(const llm::RequestOutput& o) { return o.awaiting_kv; }

}  // namespace llm_test
