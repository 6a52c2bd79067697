// kv-events.h: KV cache events (DESIGN.md section 5) as the engine produces them.
//
// Owns: KVEventLog, the per-worker sequence of events not yet handed to the caller.
// Stays true: event_id increases by exactly one per event over the life of the log, replays
// included, so a consumer that sees a gap knows it missed something.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace llm {

enum class KVEventType : int32_t { stored = 0, removed = 1, cleared = 2 };

struct KVEvent {
  int64_t event_id = 0;
  KVEventType type = KVEventType::stored;
  bool has_parent = false;            // stored: false when the first block is the sequence's first
  uint64_t parent_hash = 0;           // stored: hash of the block before block_hashes[0]
  std::vector<uint64_t> block_hashes; // stored / removed; empty for cleared
};

class KVEventLog {
 public:
  void stored(const uint64_t* parent, std::vector<uint64_t> hashes);
  void removed(std::vector<uint64_t> hashes);
  void cleared();
  // Moves the pending events out (oldest first).
  std::vector<KVEvent> take();
  int64_t next_event_id() const { return next_event_id_; }
  size_t pending() const { return events_.size(); }

 private:
  int64_t next_event_id_ = 1;
  std::vector<KVEvent> events_;
};

}  // namespace llm
