// kv-events.cc: see kv-events.h. Empty `stored` and `removed` events are never emitted (they
// would spend an event_id on nothing); `cleared` always is.
#include "kv-events.h"

#include <utility>

namespace llm {

void KVEventLog::stored(const uint64_t* parent, std::vector<uint64_t> hashes) {
  if (hashes.empty()) return;
  KVEvent e;
  e.event_id = next_event_id_++;
  e.type = KVEventType::stored;
  e.has_parent = parent != nullptr;
  e.parent_hash = parent ? *parent : 0;
  e.block_hashes = std::move(hashes);
  events_.push_back(std::move(e));
}

void KVEventLog::removed(std::vector<uint64_t> hashes) {
  if (hashes.empty()) return;
  KVEvent e;
  e.event_id = next_event_id_++;
  e.type = KVEventType::removed;
  e.block_hashes = std::move(hashes);
  events_.push_back(std::move(e));
}

void KVEventLog::cleared() {
  KVEvent e;
  e.event_id = next_event_id_++;
  e.type = KVEventType::cleared;
  events_.push_back(std::move(e));
}

std::vector<KVEvent> KVEventLog::take() {
  std::vector<KVEvent> out;
  out.swap(events_);
  return out;
}

}  // namespace llm
