// scheduler.h: continuous batching with a per-step token budget and chunked prefill
// (vLLM v1's scheduler). There are no prefill and decode phases: each step, every scheduled
// request's num_computed_tokens catches up with its num_tokens by up to its share of the budget.
//
// Owns: the waiting queue (FIFO, preempted requests at the front) and the running list
// (admission order), and every Request until it finishes.
// Stays true: a running request holds blocks for its computed tokens; sum of scheduled tokens
// <= max_num_batched_tokens; running.size() <= max_num_seqs.
// Each step:
//   1. running requests in order: schedule min(remaining, budget) tokens; when blocks run out,
//      preempt the newest running request (free its blocks, back to the front of waiting,
//      recomputed later) and retry; a request that would have to preempt itself waits.
//   2. if nothing was preempted, admit waiting requests in order while budget, seats and blocks
//      last (taking them from rows of a higher priority value: below), each starting from its
//      longest cached prefix.
// A request whose prompt + max_tokens can never fit (max_model_len, or the whole pool) is
// rejected by add_request, never admitted.
// In-flight prefixes: while a running request is still prefilling prompt blocks beyond its
// cached prefix, a waiting request whose first uncached block is one of them (same chained hash:
// same prefix) is not admitted yet; it waits (later requests may go ahead of it) until those
// blocks are cached and then starts from them, instead of computing the same prefix twice.
// Priority (Request::priority, lower first): waiting requests are admitted in priority order
// (arrival order within one priority). While a request is waiting or still prefilling, running
// rows of a higher priority value sit the step out, so that its first token does not wait on a
// step full of bulk rows; a row sits out at most kMaxSatOut steps in a row, then runs whatever
// waits. A waiting request that finds every seat taken, or too few free blocks, preempts rows of
// a higher priority value that sat out (the highest value first, the newest among equals),
// as vLLM's priority policy does: they go back to the front of waiting and are recomputed.
// Remote prefill (request.h): a request with num_external_tokens beyond its cached prefix is
// admitted with blocks for its target tokens and parked in parked_ (a seat, its blocks, never
// preempted: another worker may be writing into them) until complete_external_kv; a
// prefill_only request that reaches its target moves to held_ until release_held.
// Settings: max_num_seqs >= 1, max_num_batched_tokens >= 1 (chunks prompts longer than it),
// max_model_len >= 1.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "../common/status.h"
#include "kv-cache-manager.h"
#include "request-limits.h"
#include "request.h"

namespace llm {

struct SchedulerConfig {
  int64_t max_num_seqs = 64;
  int64_t max_num_batched_tokens = 2048;
  int64_t max_model_len = 4096;
  int64_t vocab_size = 0;  // token ids checked against [0, vocab_size); 0 = not checked (no model)
};

struct ScheduledRequest {
  Request* req = nullptr;
  int64_t num_new_tokens = 0;  // tokens computed this step, from req->num_computed_tokens
  bool samples = false;        // true when this step reaches the end of its tokens
};

struct SchedulerOutput {
  std::vector<ScheduledRequest> scheduled;  // in batch order
  std::vector<std::string> preempted;       // request ids preempted this step
  std::vector<Request*> parked;             // admitted this step to wait for external KV
  int64_t num_scheduled_tokens = 0;
};

// What happened to a request after a step's sampling.
struct RequestUpdate {
  Request* req = nullptr;
  std::vector<int32_t> new_token_ids;
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& cfg, KVCacheManager* kv);

  // Validates and queues a request. Rejects duplicates (ERR_REQUEST_DUPLICATE), what
  // check_request refuses against bounds() (request-limits.h: empty prompts, out-of-range
  // fields, requests that can never fit: ERR_REQUEST_TOO_LONG with the numbers involved) and a
  // num_external_tokens outside [0, prompt tokens - 1].
  Status add_request(std::unique_ptr<Request> req);
  // The per-engine bounds check_request applies: vocab_size, max_model_len, the KV pool.
  RequestBounds bounds() const;
  // Marks the request aborted and frees its blocks now. Unknown ids are ignored (it may have
  // finished already). Returns true if it existed.
  bool abort(const std::string& request_id);

  SchedulerOutput schedule();

  // A parked request's external KV arrived (ok: its first num_external_tokens tokens are
  // computed and their full blocks become cached) or will not (!ok: it computes them itself,
  // from its cached prefix). Returns false for an id that is not parked (e.g. a duplicate).
  bool complete_external_kv(const std::string& request_id, bool ok);
  // Frees a held request's blocks. Returns false for an id that is not held.
  bool release_held(const std::string& request_id);
  // prefill_only requests that reached their target since the last call (still owned here,
  // status held, valid until released or aborted).
  std::vector<Request*> take_prefilled();

  // After the forward pass: advances num_computed_tokens of every scheduled request, caches
  // newly full blocks, appends sampled tokens, applies stop conditions (stop_token_ids or EOS
  // unless ignore_eos, then max_tokens, then max_model_len) and frees finished requests'
  // blocks. `sampled` holds one token per scheduled request with samples=true, in batch order
  // (requests with samples=false have no entry). Requests aborted between schedule() and
  // update() are skipped (their Request must still be alive: take_aborted() only after update).
  // An entry of kDeferred: the row was not sampled this step (its token mask came late): its last
  // scheduled token counts as not computed, so the next step runs that token again (its KV is
  // rewritten with the same values) and samples then.
  // Returns the finished requests (owned by the caller from then on).
  std::vector<std::unique_ptr<Request>> update(const SchedulerOutput& out,
                                               const std::vector<int32_t>& sampled);
  static constexpr int32_t kDeferred = -1;
  // The most steps in a row a running row sits out for requests of a lower priority value.
  static constexpr int32_t kMaxSatOut = 4;

  // Aborted requests since the last call (owned by the caller from then on).
  std::vector<std::unique_ptr<Request>> take_aborted();

  void set_eos_token_ids(std::vector<int64_t> eos) { eos_token_ids_ = std::move(eos); }

  int64_t num_running() const { return static_cast<int64_t>(running_.size() + parked_.size()); }
  int64_t num_held() const { return static_cast<int64_t>(held_.size()); }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_preemptions() const { return num_preemptions_; }  // cumulative
  bool has_work() const { return !running_.empty() || !waiting_.empty() || !prefilled_.empty(); }
  const SchedulerConfig& config() const { return cfg_; }

 private:
  void preempt(Request* req);
  // Frees a running request's blocks for recomputation (its status: preempted); the caller
  // has taken it out of running_ and puts it back in waiting_.
  void release_for_recompute(Request* req);
  // Takes out of running_ the row r may preempt (see the header): of a higher priority value than
  // r's and not scheduled this step; nullptr when there is none.
  Request* give_way_to(const Request* r, uint64_t step);
  // The lowest priority value among requests still to be prefilled: waiting ones and running
  // ones with more than their last token to compute (INT32_MAX: none).
  int32_t urgent_priority() const;
  void hold(Request* req);
  // In-flight prefixes (see the header): r's prompt blocks it will compute, registered while it
  // prefills; r waits while its first uncached block is someone else's.
  void register_prefill(Request* r, int64_t num_cached);
  void unregister_prefill(Request* r);
  bool waits_for_inflight_prefix(const Request* r, int64_t num_cached) const;

  SchedulerConfig cfg_;
  KVCacheManager* kv_;
  std::vector<int64_t> eos_token_ids_;
  std::unordered_map<std::string, std::unique_ptr<Request>> requests_;  // every live request
  std::deque<Request*> waiting_;
  std::vector<Request*> running_;
  std::vector<Request*> parked_;     // awaiting_kv: hold blocks and a seat
  std::vector<Request*> held_;       // prefill_only, done: hold blocks until released
  std::vector<Request*> prefilled_;  // newly held, for take_prefilled()
  std::unordered_map<uint64_t, int> inflight_blocks_;  // block hash -> running requests computing it
  std::unordered_map<const Request*, std::vector<uint64_t>> inflight_of_;  // what each registered
  std::vector<std::unique_ptr<Request>> aborted_;
  uint64_t next_arrival_seq_ = 0;
  int64_t num_preemptions_ = 0;
  uint64_t step_ = 0;  // schedule() calls so far (Request::scheduled_step)
};

}  // namespace llm
