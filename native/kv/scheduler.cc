// scheduler.cc: see scheduler.h for the algorithm and its settings.
//
// Where a request lives, and who owns it:
//
//   add_request ──> waiting_ ──schedule()──> running_ ──update(): stop──> returned to caller
//                     ^  (front)                │
//                     └── preempt (newest, or ──┘          abort() ──> aborted_ ──> take_aborted()
//                         giving way to priority)
//
// requests_ owns every live (waiting, preempted or running) Request; waiting_ and running_ hold
// plain pointers into it. A request leaves requests_ exactly when it finishes or is aborted, and
// holds KV blocks exactly while it is in running_.
//
// Stop conditions, checked after a sampled token is appended, first match wins:
//   1. the token is in stop_token_ids, or is an EOS id and !ignore_eos -> stop (stop_token_id
//      records it; the token stays in the output). Suppressed while the token was sampled with
//      fewer than min_tokens outputs before it, the same rule the sampler masks by;
//   2. num_output_tokens >= max_tokens -> length;
//   3. num_tokens >= max_model_len -> length.
#include "scheduler.h"

#include <algorithm>
#include <cassert>
#include <limits>
#include <unordered_set>
#include <utility>

namespace llm {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::none:
      return "none";
    case FinishReason::stop:
      return "stop";
    case FinishReason::length:
      return "length";
    case FinishReason::abort:
      return "abort";
    case FinishReason::error:
      return "error";
    case FinishReason::prefilled:
      return "prefilled";
  }
  return "error";
}

Scheduler::Scheduler(const SchedulerConfig& cfg, KVCacheManager* kv) : cfg_(cfg), kv_(kv) {
  cfg_.max_num_seqs = std::max<int64_t>(cfg_.max_num_seqs, 1);
  cfg_.max_num_batched_tokens = std::max<int64_t>(cfg_.max_num_batched_tokens, 1);
  cfg_.max_model_len = std::max<int64_t>(cfg_.max_model_len, 1);
}

RequestBounds Scheduler::bounds() const {
  RequestBounds b;
  b.vocab_size = cfg_.vocab_size;
  b.max_model_len = cfg_.max_model_len;
  b.block_size = kv_->block_size();
  b.num_kv_blocks = kv_->pool().num_blocks();
  return b;
}

Status Scheduler::add_request(std::unique_ptr<Request> req) {
  if (!req) return Status(StatusCode::request_invalid, "no request");
  if (requests_.count(req->request_id))
    return Status(StatusCode::request_duplicate, "request id '" + req->request_id + "' is already in use");
  LLM_RETURN_IF_ERROR(check_request(*req, bounds()));
  if (req->num_external_tokens < 0 || req->num_external_tokens > req->num_prompt_tokens() - 1)
    return Status(StatusCode::request_invalid, "num_external_tokens must be in [0, prompt tokens - 1]");

  Request* r = req.get();
  r->all_token_ids = r->prompt_token_ids;
  r->all_token_ids.insert(r->all_token_ids.end(), r->output_token_ids.begin(), r->output_token_ids.end());
  r->status = RequestStatus::waiting;
  r->finish_reason = FinishReason::none;
  r->num_computed_tokens = 0;
  r->arrival_seq = next_arrival_seq_++;
  r->block_hashes.clear();
  kv_->update_block_hashes(r);
  requests_.emplace(r->request_id, std::move(req));
  waiting_.push_back(r);
  return Status::Ok();
}

bool Scheduler::abort(const std::string& request_id) {
  auto it = requests_.find(request_id);
  if (it == requests_.end()) return false;
  Request* r = it->second.get();
  unregister_prefill(r);
  for (auto* list : {&running_, &parked_, &held_, &prefilled_}) list->erase(std::remove(list->begin(), list->end(), r), list->end());
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), r), waiting_.end());
  kv_->free(r);
  r->status = RequestStatus::finished;
  r->finish_reason = FinishReason::abort;
  aborted_.push_back(std::move(it->second));
  requests_.erase(it);
  return true;
}

void Scheduler::preempt(Request* req) {
  assert(!running_.empty() && running_.back() == req);
  running_.pop_back();
  release_for_recompute(req);
  waiting_.push_front(req);
}

void Scheduler::release_for_recompute(Request* req) {
  unregister_prefill(req);
  kv_->free(req);
  req->num_computed_tokens = 0;
  req->status = RequestStatus::preempted;
  ++req->num_preemptions;
  ++num_preemptions_;
}

Request* Scheduler::give_way_to(const Request* r, uint64_t step) {
  auto victim = running_.end();
  for (auto it = running_.begin(); it != running_.end(); ++it)
    if ((*it)->priority > r->priority && (*it)->scheduled_step != step &&
        (victim == running_.end() || (*it)->priority >= (*victim)->priority))
      victim = it;
  if (victim == running_.end()) return nullptr;
  Request* v = *victim;
  running_.erase(victim);
  release_for_recompute(v);
  return v;
}

SchedulerOutput Scheduler::schedule() {
  SchedulerOutput out;
  const uint64_t step = ++step_;
  int64_t budget = cfg_.max_num_batched_tokens;
  auto emit = [&](Request* r, int64_t n) {
    r->scheduled_step = step;
    out.scheduled.push_back({r, n, r->num_computed_tokens + n == r->num_tokens()});
    out.num_scheduled_tokens += n;
    budget -= n;
  };

  // 1. Running requests, oldest first; the newest give way when blocks run out. Rows of a higher
  // priority value than a request still to be prefilled sit this step out (at most kMaxSatOut
  // steps in a row).
  const int32_t urgent = urgent_priority();
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Request* r = running_[i];
    const int64_t n = std::min(r->num_target_tokens() - r->num_computed_tokens, budget);
    if (n <= 0) continue;  // only if update() was not given its sampled token
    if (r->priority > urgent && r->sat_out < kMaxSatOut) {
      ++r->sat_out;
      continue;
    }
    r->sat_out = 0;
    bool allocated = kv_->allocate_slots(r, n, {});
    while (!allocated) {
      Request* victim = running_.back();  // never one scheduled already: those are older than r
      preempt(victim);
      out.preempted.push_back(victim->request_id);
      if (victim == r) break;  // r was the newest: it waits, and so does everyone after it
      allocated = kv_->allocate_slots(r, n, {});
    }
    if (!allocated) break;
    emit(r, n);
  }

  // 2. Waiting requests in priority order, then in order, only when nobody had to give way this
  // step. One that finds no seat or no blocks takes them from running rows of a higher priority
  // value that sat this step out (given_way: back to the front of waiting once the loop is done).
  if (!out.preempted.empty()) return out;
  const auto before = [](const Request* a, const Request* b) { return a->priority < b->priority; };
  if (!std::is_sorted(waiting_.begin(), waiting_.end(), before))
    std::stable_sort(waiting_.begin(), waiting_.end(), before);
  std::vector<Request*> given_way;
  auto give_way = [&](const Request* r) {
    Request* v = give_way_to(r, step);
    if (v == nullptr) return false;
    given_way.push_back(v);
    out.preempted.push_back(v->request_id);
    return true;
  };
  for (size_t i = 0; i < waiting_.size() && budget > 0;) {
    Request* r = waiting_[i];
    int64_t num_cached = 0;
    const std::vector<KVBlock*> cached = kv_->get_computed_blocks(r, &num_cached);
    if (r->num_external_tokens <= num_cached) r->num_external_tokens = 0;  // the cache has it all
    const bool parks = r->num_external_tokens > 0;
    if (!parks && waits_for_inflight_prefix(r, num_cached)) {
      ++i;  // its prefix is being computed: it starts from the cache once that is done
      continue;
    }
    if (num_running() >= cfg_.max_num_seqs && !give_way(r)) break;
    // A parked request gets blocks for all its target tokens now: the remote side writes them.
    const int64_t n = parks ? r->num_target_tokens() - num_cached
                            : std::min(r->num_target_tokens() - num_cached, budget);
    bool allocated = kv_->allocate_slots(r, n, cached);
    while (!allocated && give_way(r)) allocated = kv_->allocate_slots(r, n, cached);
    if (!allocated) break;
    waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(i));
    r->num_computed_tokens = num_cached;
    if (r->num_cached_tokens < 0) r->num_cached_tokens = num_cached;
    if (parks) {
      r->status = RequestStatus::awaiting_kv;
      parked_.push_back(r);
      out.parked.push_back(r);
    } else if (n == 0) {  // prefill_only, all of it cached already
      hold(r);
    } else {
      r->status = RequestStatus::running;
      running_.push_back(r);
      register_prefill(r, num_cached);
      emit(r, n);
    }
  }
  for (auto it = given_way.rbegin(); it != given_way.rend(); ++it) waiting_.push_front(*it);
  return out;
}

int32_t Scheduler::urgent_priority() const {
  int32_t urgent = std::numeric_limits<int32_t>::max();
  // Every waiting request counts: without a free seat it takes one of the rows that sit out.
  for (const Request* r : waiting_) urgent = std::min(urgent, r->priority);
  // Running: more than the last token left to compute (a prompt, or a resumed request's outputs).
  for (const Request* r : running_)
    if (r->num_computed_tokens + 1 < r->num_tokens()) urgent = std::min(urgent, r->priority);
  return urgent;
}

void Scheduler::register_prefill(Request* r, int64_t num_cached) {
  const size_t first = static_cast<size_t>(num_cached / kv_->block_size());
  const size_t end = std::min(r->block_hashes.size(), static_cast<size_t>(r->num_prompt_tokens() / kv_->block_size()));
  if (first >= end) return;
  std::vector<uint64_t>& mine = inflight_of_[r];
  for (size_t b = first; b < end; ++b) {
    ++inflight_blocks_[r->block_hashes[b]];
    mine.push_back(r->block_hashes[b]);
  }
}

void Scheduler::unregister_prefill(Request* r) {
  auto it = inflight_of_.find(r);
  if (it == inflight_of_.end()) return;
  for (uint64_t h : it->second)
    if (--inflight_blocks_[h] == 0) inflight_blocks_.erase(h);
  inflight_of_.erase(it);
}

bool Scheduler::waits_for_inflight_prefix(const Request* r, int64_t num_cached) const {
  const size_t next = static_cast<size_t>(num_cached / kv_->block_size());
  return next < r->block_hashes.size() && next < static_cast<size_t>(r->num_prompt_tokens() / kv_->block_size()) &&
         inflight_blocks_.count(r->block_hashes[next]) > 0;
}

void Scheduler::hold(Request* r) {
  r->status = RequestStatus::held;
  held_.push_back(r);
  prefilled_.push_back(r);
}

bool Scheduler::complete_external_kv(const std::string& request_id, bool ok) {
  auto it = std::find_if(parked_.begin(), parked_.end(), [&](const Request* r) { return r->request_id == request_id; });
  if (it == parked_.end()) return false;
  Request* r = *it;
  parked_.erase(it);
  if (ok) {
    r->num_computed_tokens = std::max(r->num_computed_tokens, r->num_external_tokens);
    kv_->cache_blocks(r);
  }
  r->num_external_tokens = 0;
  if (r->num_computed_tokens >= r->num_target_tokens()) {
    hold(r);  // prefill_only with nothing left to compute
  } else {
    r->status = RequestStatus::running;
    running_.push_back(r);
  }
  return true;
}

bool Scheduler::release_held(const std::string& request_id) {
  auto it = std::find_if(held_.begin(), held_.end(), [&](const Request* r) { return r->request_id == request_id; });
  if (it == held_.end()) return false;
  Request* r = *it;
  held_.erase(it);
  prefilled_.erase(std::remove(prefilled_.begin(), prefilled_.end(), r), prefilled_.end());
  kv_->free(r);
  requests_.erase(request_id);
  return true;
}

std::vector<Request*> Scheduler::take_prefilled() {
  std::vector<Request*> out;
  out.swap(prefilled_);
  return out;
}

std::vector<std::unique_ptr<Request>> Scheduler::update(const SchedulerOutput& out,
                                                        const std::vector<int32_t>& sampled) {
  std::vector<std::unique_ptr<Request>> finished;
  // Requests aborted since schedule() are no longer running: skipped, compared by address only.
  const std::unordered_set<const Request*> live(running_.begin(), running_.end());
  size_t next_sample = 0;
  for (const ScheduledRequest& sr : out.scheduled) {
    const size_t sample_index = sr.samples ? next_sample++ : sampled.size();
    Request* r = sr.req;
    if (!live.count(r)) continue;
    const bool deferred = sr.samples && sample_index < sampled.size() && sampled[sample_index] == kDeferred;
    r->num_computed_tokens += deferred ? sr.num_new_tokens - 1 : sr.num_new_tokens;
    assert(r->num_computed_tokens <= r->num_tokens());
    if (r->num_computed_tokens >= std::min(r->num_prompt_tokens(), r->num_target_tokens()))
      unregister_prefill(r);  // done with its prompt: its full blocks are cached below

    FinishReason reason = FinishReason::none;
    if (sr.samples && sample_index < sampled.size() && !deferred) {
      const int32_t token = sampled[sample_index];
      const bool stops_allowed = r->num_output_tokens() >= r->params.min_tokens;
      r->append_output_token(token);
      const auto& stops = r->params.stop_token_ids;
      const bool is_stop = std::find(stops.begin(), stops.end(), token) != stops.end();
      const bool is_eos = !r->params.ignore_eos &&
                          std::find(eos_token_ids_.begin(), eos_token_ids_.end(), token) != eos_token_ids_.end();
      if (stops_allowed && (is_stop || is_eos)) {
        reason = FinishReason::stop;
        r->stop_token_id = token;
      } else if (r->num_output_tokens() >= r->params.max_tokens ||
                 r->num_tokens() >= cfg_.max_model_len) {
        reason = FinishReason::length;
      }
    }
    kv_->cache_blocks(r);
    if (r->prefill_only && r->num_computed_tokens >= r->num_target_tokens()) {
      hold(r);
      continue;
    }
    if (reason == FinishReason::none) continue;

    r->status = RequestStatus::finished;
    r->finish_reason = reason;
    kv_->free(r);
    auto it = requests_.find(r->request_id);
    finished.push_back(std::move(it->second));
    requests_.erase(it);
  }
  assert(next_sample == sampled.size());
  running_.erase(std::remove_if(running_.begin(), running_.end(),
                                [](const Request* r) {
                                  return r->status == RequestStatus::finished || r->status == RequestStatus::held;
                                }),
                 running_.end());
  return finished;
}

std::vector<std::unique_ptr<Request>> Scheduler::take_aborted() {
  std::vector<std::unique_ptr<Request>> out;
  out.swap(aborted_);
  return out;
}

}  // namespace llm
