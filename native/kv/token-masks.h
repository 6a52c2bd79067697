// token-masks.h: the board where the allowed-token masks of constrained requests (structured
// output) wait for the engine thread.
//
// The caller (the worker's grammar matcher) computes the mask of a request's next output while the
// engine runs the forward pass, and puts it here from any thread; the engine thread waits for
// the masks its step samples with (one wait for all of them, with a deadline), takes each one
// and applies it in the sampler.
//
// Mask layout (XGrammar's token bitmask): int32 words, bit b of word w (LSB first) set means
// token 32 * w + b is allowed; exactly num_words() = ceil(vocab_size / 32) words, vocab_size
// being the model's (the logits' width); bits past vocab_size are ignored.
//
// Owns: one entry per open (constrained, live) request: its masks by output index, whether it
// was cancelled, and the lowest output index not yet taken.
// Stays true: masks are stored only for open requests and for indices not yet taken, so an entry
// holds at most the masks its caller put ahead of the engine, and nothing outlives drop().
// Thread-safe: every method may be called from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "../common/status.h"

namespace llm {

// The words of one mask for a vocabulary of vocab_size tokens: ceil(vocab_size / 32).
inline int64_t token_mask_words(int64_t vocab_size) { return vocab_size > 0 ? (vocab_size + 31) / 32 : 0; }
// Ok when n == token_mask_words(vocab_size), else ERR_REQUEST_INVALID naming both lengths.
Status check_token_mask_words(size_t n, int64_t vocab_size);

class TokenMasks {
 public:
  using Clock = std::chrono::steady_clock;

  explicit TokenMasks(int64_t vocab_size);

  int64_t vocab_size() const { return vocab_size_; }
  int64_t num_words() const { return num_words_; }
  Status check_words(size_t n) const { return check_token_mask_words(n, vocab_size_); }

  // Starts taking masks for request_id, from output index first_index on. Opening an open
  // request changes nothing.
  void open(const std::string& request_id, int64_t first_index);
  // The mask of output `output_index`. Ok (stored, replacing one put before for that index);
  // ERR_REQUEST_INVALID for a wrong length; ERR_INVALID_ARGUMENT, storing nothing, for a request
  // that is not open (finished, or never constrained) or an index already taken.
  Status put(const std::string& request_id, int64_t output_index, std::vector<int32_t> words);
  // The request was aborted: a wait for its masks ends (cancelled) now and from now on.
  void cancel(const std::string& request_id);
  // The request finished: its entry and masks go; later puts for it are refused.
  void drop(const std::string& request_id);
  // The engine is stopping: every wait ends now and from now on, each need cancelled.
  void cancel_all();

  enum class State { ready, missing, cancelled };
  struct Need {
    const std::string* request_id;  // valid during the call
    int64_t output_index;
  };
  // Blocks until every need is ready or cancelled, or until deadline; (*states)[i] says which
  // need i reached (missing: not there at the deadline, or its request is not open). Returns true
  // when it had to wait, i.e. some need was missing at the start.
  bool wait(const std::vector<Need>& needs, Clock::time_point deadline, std::vector<State>* states);
  // Moves out the mask of output `output_index` (false when absent); indices up to it are taken.
  bool take(const std::string& request_id, int64_t output_index, std::vector<int32_t>* words);

  size_t num_open() const;  // for tests

 private:
  struct Entry {
    std::map<int64_t, std::vector<int32_t>> masks;  // output index -> words
    int64_t next_index = 0;                         // indices below were taken
    bool cancelled = false;
  };
  State state_locked(const Need& n) const;

  const int64_t vocab_size_;
  const int64_t num_words_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<std::string, Entry> entries_;
  bool all_cancelled_ = false;
};

}  // namespace llm
