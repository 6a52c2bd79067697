// engine-thread.cc: see engine-thread.h.
#include "engine-thread.h"

#include <chrono>

namespace llm {

EngineThread::EngineThread(std::unique_ptr<Engine> engine, StepCallback callback)
    : engine_(std::move(engine)), callback_(std::move(callback)) {
  metrics_ = engine_->metrics();
  thread_ = std::thread([this] { loop(); });
}

EngineThread::~EngineThread() { stop(); }

Status EngineThread::add_request(std::unique_ptr<Request> req) {
  LLM_RETURN_IF_ERROR(engine_->validate_request(*req));
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_) return Status(StatusCode::engine_closed, "the engine is closed");
  if (!live_ids_.insert(req->request_id).second)
    return Status(StatusCode::request_duplicate, "request id '" + req->request_id + "' is already in use");
  // Open now, so that set_token_mask takes masks while the add is still queued.
  if (req->params.constrained) engine_->token_masks().open(req->request_id, req->num_output_tokens());
  Command c{Command::Kind::add, std::move(req), {}};
  commands_.push_back(std::move(c));
  ++queued_adds_;
  cv_.notify_one();
  return Status::Ok();
}

void EngineThread::push(Command c) {
  std::lock_guard<std::mutex> lock(mu_);
  commands_.push_back(std::move(c));
  cv_.notify_one();
}

void EngineThread::abort(const std::string& request_id) {
  push(Command{Command::Kind::abort, nullptr, request_id});
  engine_->token_masks().cancel(request_id);  // a step waiting for its mask: now
}

bool EngineThread::set_token_mask(const std::string& request_id, int64_t output_index, std::vector<int32_t> words) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ || !live_ids_.count(request_id)) return false;
  }
  // Not open (not constrained, or finishing this very step), a sampled output, a bad length: refused.
  return engine_->token_masks().put(request_id, output_index, std::move(words)).ok();
}

void EngineThread::complete_external_kv(const std::string& request_id, bool ok) {
  push(Command{ok ? Command::Kind::kv_arrived : Command::Kind::kv_failed, nullptr, request_id});
}

void EngineThread::release_held(const std::string& request_id) {
  push(Command{Command::Kind::release, nullptr, request_id});
}

void EngineThread::request_replay() { push(Command{Command::Kind::replay, nullptr, {}}); }

LoadMetrics EngineThread::metrics() {
  std::lock_guard<std::mutex> lock(mu_);
  LoadMetrics m = metrics_;
  m.num_requests_waiting += queued_adds_;
  return m;
}

void EngineThread::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    stop_ = true;
    stopped_ = true;
  }
  engine_->token_masks().cancel_all();  // a step waiting for a token mask ends now
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

bool EngineThread::same_metrics(const LoadMetrics& a, const LoadMetrics& b) const {
  return a.request_active_slots == b.request_active_slots && a.kv_active_blocks == b.kv_active_blocks &&
         a.num_requests_waiting == b.num_requests_waiting && a.prefix_cache_queries == b.prefix_cache_queries &&
         a.num_preemptions == b.num_preemptions;
}

void EngineThread::loop() {
  std::deque<Command> batch;
  LoadMetrics delivered = metrics_;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !commands_.empty() || engine_->has_work(); });
      if (stop_) return;
      batch.swap(commands_);
      for (const Command& c : batch) queued_adds_ -= c.kind == Command::Kind::add;
    }

    // 1. Apply what callers asked for since the last step.
    std::vector<RequestOutput> rejected;
    for (Command& c : batch) {
      switch (c.kind) {
        case Command::Kind::add: {
          RequestOutput o;
          o.request_id = c.req->request_id;
          o.num_prompt_tokens = c.req->num_prompt_tokens();
          Status st = engine_->add_request(std::move(c.req));
          if (!st.ok()) {  // validated already; only an engine-side refusal lands here
            engine_->token_masks().drop(o.request_id);  // opened by add_request above
            o.finish_reason = FinishReason::error;
            o.error = std::string(st.code_name()) + ": " + st.message();
            rejected.push_back(std::move(o));
          }
          break;
        }
        case Command::Kind::abort: engine_->abort(c.request_id); break;
        case Command::Kind::replay: engine_->request_replay(); break;
        case Command::Kind::kv_arrived: engine_->complete_external_kv(c.request_id, true); break;
        case Command::Kind::kv_failed: engine_->complete_external_kv(c.request_id, false); break;
        case Command::Kind::release: engine_->release_held(c.request_id); break;
      }
    }
    batch.clear();

    // 2. One engine step.
    auto result = std::make_unique<StepResult>();
    if (engine_->has_work()) {
      engine_->step(result.get());  // a failed batch is reported through its outputs
    } else {
      result->metrics = engine_->metrics();
    }
    for (RequestOutput& o : rejected) result->outputs.push_back(std::move(o));

    // 3. Publish: finished ids leave the live set, metrics snapshot, callback.
    const bool idle_step = result->outputs.empty() && result->events.empty();
    const bool ran = result->num_scheduled_tokens > 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const RequestOutput& o : result->outputs)
        if (o.finish_reason != FinishReason::none) live_ids_.erase(o.request_id);
      metrics_ = result->metrics;
      result->metrics.num_requests_waiting += queued_adds_;  // what the callback reports
    }
    if (!idle_step || !same_metrics(result->metrics, delivered)) {
      delivered = result->metrics;
      callback_(std::move(result));
    } else if (!ran && engine_->has_work()) {
      // Work exists but nothing could run this step (should not happen: add_request only admits
      // requests that fit). Back off instead of spinning.
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
}

}  // namespace llm
