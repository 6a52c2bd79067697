// shm-all-reduce.h: the CPU all-reduce of a tensor-parallel worker's ranks (processes on one
// host), over one POSIX shared-memory segment.
//
// Owns: one rank's membership of one group: its mapping of the segment (rank 0 creates the
// segment and removes its name on destruction; the others open it) and its barrier count.
// Stays true:
//  - Every rank gets the same bits: each element is summed in the fixed order rank 0, 1, ..., N-1
//    in fp32 ((x0 + x1) + x2 ...), whichever algorithm runs and however the ranks are scheduled.
//  - A message goes in rounds of at most slot_floats; a round writes this rank's partial into its
//    slot, then either every rank sums all slots (one barrier), or, from split_min_floats up, each
//    rank sums a 1/N slice into its own slot and all copy the slices out (reduce-scatter +
//    all-gather, two barriers). Rounds alternate between two sets of slots, so a slot is written
//    again only after every rank has passed a later barrier, i.e. finished reading it.
//  - A barrier is a per-rank generation counter in the segment: spin, then sched_yield, then a
//    futex sleep (ranks may outnumber cores). It gives up at a deadline (timeout_ms), or as soon as
//    a rank that has not arrived is seen to have exited (its pid gone or a zombie) or to have
//    destroyed its ShmAllReduce, with an error (StatusCode::transfer_peer) naming that rank and the
//    segment (when a rank gave up or left while another had exited without leaving, the error
//    names the one that exited). After any error the group is broken: later calls return the same
//    error, and a rank whose barrier failed marks itself with that barrier, so that peers arriving
//    at it later fail too instead of counting its arrival (a peer still checking an earlier
//    barrier, which every rank passed, is not failed by it; nor by a rank destroyed after a
//    barrier that passed).
//  - Every rank must make the same calls (all_reduce with the same n, broadcast, gather with the
//    same counts, sync) in the same order; a size mismatch is reported (invalid_argument) on
//    every rank. broadcast and gather go in rounds through the same slots, under the same rule.
//  - A barrier with a deadline also fails once a rank it waits for has been stopped (SIGSTOP:
//    state T in /proc) for stopped_timeout_ms, naming it: a stopped rank holds its whole group,
//    and its worker's requests can go elsewhere only once the group says so. A rank stopped by a
//    debugger (state t) is waited for as usual.
//  - A negative timeout waits without a deadline (a rank idle until rank 0 has work); it still
//    fails as soon as a rank it waits for has exited, left or given up.
//  - One thread per rank calls all_reduce at a time. Sleeping waits use futexes and a zombie is
//    recognized through /proc on Linux; elsewhere waits nap and only vanished pids count as exited.
// Names: a "/kvserve-<pid>-..." name from SharedMemory::unique_name in the process that launches
// the ranks lets SharedMemory::remove_stale_segments() clear a crashed group's segment; rank 0 also
// replaces a segment of the same name whose creator is gone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "shared-memory.h"
#include "status.h"

namespace llm {

struct ShmAllReduceOptions {
  // Floats per rank per round: larger messages go in rounds of this size. The segment holds
  // 2 * world_size slots of this size (rounded up to 16 floats).
  size_t slot_floats = size_t{1} << 18;
  // Rounds of at least this many floats use reduce-scatter + all-gather; smaller ones have every
  // rank sum every slot. 0: always split.
  size_t split_min_floats = size_t{1} << 14;
  // How long a barrier waits for the slowest rank before failing.
  int timeout_ms = 5000;
  // How long a barrier with a deadline waits for a rank the kernel reports stopped (SIGSTOP).
  int stopped_timeout_ms = 2000;
  // How long create() waits for the segment to appear (ranks > 0) and for every rank to join.
  int join_timeout_ms = 30000;
  // A waiting rank spins this long, then yields the CPU until yield_us, then sleeps on a futex.
  int spin_us = 20;
  int yield_us = 200;
  // The pids of the ranks (index = rank; 0 = unknown), when the caller started them: a rank that
  // exits before it has joined then fails the join at once instead of at join_timeout_ms.
  std::vector<int> expected_pids;
};

class ShmAllReduce {
 public:
  // Rank 0 creates the segment `name` (a SharedMemory name); ranks 1..world_size-1 open it. Every
  // rank must pass the same name, world_size and slot_floats. Returns once every rank has joined.
  static Status create(const std::string& name, int rank, int world_size, const ShmAllReduceOptions& opts,
                       std::unique_ptr<ShmAllReduce>* out);

  ~ShmAllReduce();
  ShmAllReduce(const ShmAllReduce&) = delete;
  ShmAllReduce& operator=(const ShmAllReduce&) = delete;

  // x[0..n) <- the sum over ranks of their x[0..n), in rank order; the same bits on every rank.
  Status all_reduce(float* x, size_t n);
  // Rank 0's *msg, copied into every other rank's *msg (resized to it). The first round waits
  // timeout_ms (negative: no deadline), later rounds ShmAllReduceOptions::timeout_ms.
  Status broadcast(std::vector<uint8_t>* msg, int timeout_ms);
  // Rank 0's root_out <- every rank's x, concatenated in rank order: counts[r] floats from rank r
  // (every rank passes the same counts; root_out holds their sum, and is unused elsewhere).
  Status gather(const float* x, const std::vector<size_t>& counts, float* root_out);
  // Returns once every rank has called sync (timeout_ms negative: no deadline).
  Status sync(int timeout_ms);
  // The group's error once broken, else an error naming a rank that has exited (its pid gone or a
  // zombie), left or given up, else OK. Reads the segment only; asked by the thread that makes
  // this rank's calls, between them.
  Status peers_alive() const;

  int rank() const { return rank_; }
  int world_size() const { return world_; }
  const std::string& name() const { return shm_->name(); }

  // The segment's layout (shm-all-reduce.cc).
  struct Header;
  struct RankLine;

 private:
  ShmAllReduce() = default;

  Status barrier(int timeout_ms);
  Status wait_all(uint32_t gen, int timeout_ms);
  Status check_peer(int q, uint32_t gen, bool check_pid) const;
  Status exited_rank(uint32_t gen) const;
  Status round(float* x, size_t c, uint64_t total_n, bool first_round);
  float* slot(int set, int r) const;
  void wake_all();

  std::unique_ptr<SharedMemory> shm_;
  ShmAllReduceOptions opts_;
  Header* header_ = nullptr;
  RankLine* lines_ = nullptr;
  float* slots_ = nullptr;
  size_t slot_stride_ = 0;  // floats between consecutive slots
  int rank_ = 0;
  int world_ = 1;
  uint32_t gen_ = 0;        // barriers this rank has passed
  uint64_t rounds_ = 0;     // rounds run; round k uses set k % 2 of the slots
  Status broken_;
};

}  // namespace llm
