// token-masks.cc: see token-masks.h.
#include "token-masks.h"

#include <algorithm>
#include <iterator>

namespace llm {

Status check_token_mask_words(size_t n, int64_t vocab_size) {
  const int64_t want = token_mask_words(vocab_size);
  if (static_cast<int64_t>(n) == want) return Status::Ok();
  return Status(StatusCode::request_invalid,
                "the token mask has " + std::to_string(n) + " words; this model's vocabulary of " +
                    std::to_string(vocab_size) + " tokens needs " + std::to_string(want) + " (ceil(vocab_size / 32))");
}

TokenMasks::TokenMasks(int64_t vocab_size) : vocab_size_(vocab_size), num_words_(token_mask_words(vocab_size)) {}

void TokenMasks::open(const std::string& request_id, int64_t first_index) {
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, inserted] = entries_.try_emplace(request_id);
  if (inserted) it->second.next_index = first_index;
}

Status TokenMasks::put(const std::string& request_id, int64_t output_index, std::vector<int32_t> words) {
  LLM_RETURN_IF_ERROR(check_words(words.size()));
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(request_id);
    if (it == entries_.end())
      return Status(StatusCode::invalid_argument, "request '" + request_id + "' is not a live constrained request");
    if (output_index < it->second.next_index)
      return Status(StatusCode::invalid_argument, "output " + std::to_string(output_index) + " of request '" +
                                                      request_id + "' was sampled already");
    it->second.masks[output_index] = std::move(words);
  }
  cv_.notify_all();
  return Status::Ok();
}

void TokenMasks::cancel(const std::string& request_id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(request_id);
    if (it == entries_.end()) return;
    it->second.cancelled = true;
  }
  cv_.notify_all();
}

void TokenMasks::drop(const std::string& request_id) {
  std::lock_guard<std::mutex> lock(mu_);
  entries_.erase(request_id);
}

void TokenMasks::cancel_all() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    all_cancelled_ = true;
  }
  cv_.notify_all();
}

TokenMasks::State TokenMasks::state_locked(const Need& n) const {
  if (all_cancelled_) return State::cancelled;
  auto it = entries_.find(*n.request_id);
  if (it == entries_.end()) return State::missing;
  if (it->second.cancelled) return State::cancelled;
  return it->second.masks.count(n.output_index) ? State::ready : State::missing;
}

bool TokenMasks::wait(const std::vector<Need>& needs, Clock::time_point deadline, std::vector<State>* states) {
  states->assign(needs.size(), State::missing);
  std::unique_lock<std::mutex> lock(mu_);
  bool waited = false;
  for (;;) {
    bool missing = false;
    for (size_t i = 0; i < needs.size(); ++i) {
      (*states)[i] = state_locked(needs[i]);
      missing = missing || (*states)[i] == State::missing;
    }
    if (!missing) return waited;
    // A need whose request is not open can never be met: it stays missing, no wait for it alone.
    bool can_arrive = false;
    for (size_t i = 0; i < needs.size() && !can_arrive; ++i)
      can_arrive = (*states)[i] == State::missing && entries_.count(*needs[i].request_id);
    if (!can_arrive) return waited;
    if (Clock::now() >= deadline) return true;
    waited = true;
    cv_.wait_until(lock, deadline);
  }
}

bool TokenMasks::take(const std::string& request_id, int64_t output_index, std::vector<int32_t>* words) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(request_id);
  if (it == entries_.end()) return false;
  Entry& e = it->second;
  auto m = e.masks.find(output_index);
  if (m == e.masks.end()) return false;
  *words = std::move(m->second);
  e.masks.erase(e.masks.begin(), std::next(m));
  e.next_index = std::max(e.next_index, output_index + 1);
  return true;
}

size_t TokenMasks::num_open() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

}  // namespace llm
