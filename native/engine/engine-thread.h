// engine-thread.h: runs an Engine's step loop on its own native thread.
//
// Owns: the thread, the Engine, a command queue (add / abort / replay / remote-prefill hooks) and the set of live
// request ids.
// Stays true: only the loop thread touches the Engine after start(); callers on other threads
// talk to it through the queue. The callback runs on the loop thread, once per step that
// produced outputs or events or changed the load metrics; it must not block for long.
// A request id is live from add_request until the output that finishes it has been handed to
// the callback, so a duplicate id is refused synchronously.
// Token masks (structured output) bypass the queue: set_token_mask puts them straight on the
// engine's board (TokenMasks), since the loop may be inside step() waiting for them; abort also
// cancels such a wait, and stop() ends every one.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>

#include "engine.h"

namespace llm {

class EngineThread {
 public:
  using StepCallback = std::function<void(std::unique_ptr<StepResult>)>;

  EngineThread(std::unique_ptr<Engine> engine, StepCallback callback);
  ~EngineThread();  // stop()
  EngineThread(const EngineThread&) = delete;
  EngineThread& operator=(const EngineThread&) = delete;

  const Engine& engine() const { return *engine_; }
  // Validates on the calling thread, then queues. Fails on a duplicate live id. A constrained
  // request is open on the token-mask board from here on.
  Status add_request(std::unique_ptr<Request> req);
  // Queued; a step waiting for the request's token mask stops waiting at once and finishes it as
  // aborted.
  void abort(const std::string& request_id);
  // The token mask of output `output_index` of a live constrained request, for the step that
  // samples that output. False, storing nothing, for an id that is not live or not constrained,
  // an output already sampled, or a mask whose length is not ceil(vocab_size / 32) words
  // (engine().token_masks().check_words says why).
  bool set_token_mask(const std::string& request_id, int64_t output_index, std::vector<int32_t> words);
  void complete_external_kv(const std::string& request_id, bool ok);
  void release_held(const std::string& request_id);
  void request_replay();
  // The snapshot after the latest step, with the requests added since then counted as waiting
  // (so is the snapshot each callback gets): a load report never misses a request the engine
  // has taken.
  LoadMetrics metrics();
  // Stops the loop after the current step and joins; requests still live get no more output.
  // Idempotent.
  void stop();

 private:
  struct Command {
    enum class Kind { add, abort, replay, kv_arrived, kv_failed, release } kind;
    std::unique_ptr<Request> req;
    std::string request_id;
  };
  void loop();
  void push(Command c);
  bool same_metrics(const LoadMetrics& a, const LoadMetrics& b) const;

  std::unique_ptr<Engine> engine_;
  StepCallback callback_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Command> commands_;
  std::unordered_set<std::string> live_ids_;
  LoadMetrics metrics_;
  int64_t queued_adds_ = 0;  // add commands not yet taken by the loop
  bool stop_ = false;
  bool stopped_ = false;
  std::thread thread_;
};

}  // namespace llm
