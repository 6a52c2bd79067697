// tensor-parallel.h: the ranks of a tensor-parallel worker: N processes on one host, each with
// its slices of the weights (model-weights.h), its part of the KV pool (its kv heads, the same
// block ids on every rank) and its own runner: on the CPU pinned to its share of the CPUs, on
// CUDA on device rank % the devices it sees (model-runner-cuda.h), several ranks to a GPU when
// they outnumber the GPUs. The sums and the logits gather go through this group's shared memory
// on both, except that CUDA ranks on GPUs of their own add on the devices (all-reduce.h) and use
// the group to exchange handles and to notice a rank that is gone.
//
//   rank 0: the Engine (scheduler, sampler)          ranks 1..N-1: run_tp_rank, one process each
//     TpGroup::join(group, 0, N)     <--- join --->    TpGroup::join(group, r, N)
//     load_model(rank 0's slices)                      load_model(rank r's slices)
//     CUDA: runner (weights on the device;  <--->    runner, barrier()
//       ranks on their own GPUs: the device all-reduce's handles, all_gather_notes), barrier()
//     send_init(num_blocks)          ------------->    recv_init: KV pool ("<group>-kv<r>" on the
//                                                      CPU with kv_shared_memory), runner (CPU)
//     CUDA, kv_shared_memory:
//       gather_device_pools          <-------------    send_device_pool(its pool's IPC handle)
//     ready()                        <------------>    ready()
//     each step: send_batch(batch)   ------------->    recv: forward(batch) with no logits out
//     forward(batch): all-reduce after o and down <--> the same all-reduces
//       logits: each rank its vocabulary rows, gathered on rank 0
//     ~Engine: send_stop()           ------------->    run_tp_rank returns
//
// Owns: a rank's membership of its group (ShmAllReduce over the segment `group`) and the message
// scratch.
// Stays true: every rank runs the same forward passes in the same order, so their all-reduces
// pair up; a failed exchange breaks the group for good (ShmAllReduce), and every later call fails
// with that error. Ranks 1..N-1 wait for work without a deadline but leave as soon as rank 0 has
// exited or left; run_tp_rank also dies with the process that started it (a parent-death signal).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../common/shm-all-reduce.h"
#include "../common/status.h"
#include "model-runner.h"

namespace llm {

struct EngineConfig;

class TpGroup {
 public:
  // Joins group `name` (a SharedMemory name; rank 0 creates it) as `rank` of `size`; returns once
  // every rank has joined. rank_pids (rank 0 only, optional): the other ranks' pids, so that one
  // that dies before joining fails the join at once.
  static Status join(const std::string& name, int rank, int size, const std::vector<int>& rank_pids,
                     std::unique_ptr<TpGroup>* out);

  int rank() const { return ar_->rank(); }
  int size() const { return ar_->world_size(); }
  const std::string& name() const { return name_; }
  // The shared-memory segment of rank r's KV pool.
  std::string kv_pool_name(int r) const { return name_ + "-kv" + std::to_string(r); }
  // This rank's CPUs: its contiguous share of the worker's CPUs (cpu::allowed_cpu_range of
  // cpu_offset and num_threads; without that range, the first num_threads allowed CPUs, 0: all);
  // with fewer CPUs than ranks, rank r shares CPU r * cpus / size with others.
  std::vector<int> cpus(int num_threads, int cpu_offset) const;
  // The runner's all-reduce and logits gather, over this group (which must outlive the runner).
  TpCollectives collectives();

  // Rank 0: what every rank must agree on before it builds its pool.
  Status send_init(int64_t num_blocks);
  Status recv_init(int64_t* num_blocks);  // ranks 1..N-1; waits without a deadline
  // Every rank has its pool and runner (a rank still loading its weights is waited for).
  Status ready();
  // CUDA: every rank's weights are on its device (rank 0 then reads the free memory for the pool).
  Status barrier();
  // Every rank passes `mine` (at most kMaxNoteBytes bytes); rank 0 gets them all in rank order in
  // *all (the others pass null).
  static constexpr size_t kMaxNoteBytes = 1020;
  Status gather_notes(const std::string& mine, std::vector<std::string>* all);
  // The same, and every rank gets them all (rank 0 sends them on). Waits for every rank without a
  // deadline (a rank may still be loading), though not for one that has exited.
  Status all_gather_notes(const std::string& mine, std::vector<std::string>* all);
  // CUDA with shared pools: ranks 1..N-1 send their KV pool as their process exported it (CUDA
  // IPC handle, GPU UUID); rank 0 gets theirs, in rank order.
  Status send_device_pool(const std::string& ipc_handle, const std::string& device_uuid);
  Status gather_device_pools(std::vector<std::pair<std::string, std::string>>* pools);

  // Rank 0: the step's batch to every rank, before its own forward.
  Status send_batch(const ForwardBatch& b);
  // Rank 0: tells the ranks to return from run_tp_rank (best effort: nothing if the group is broken).
  void send_stop();
  // Ranks 1..N-1: the next message; *stop when rank 0 is done, else *batch (views into this
  // object, valid until the next call).
  Status recv(bool* stop, ForwardBatch* batch);

 private:
  TpGroup() = default;

  std::string name_;
  std::unique_ptr<ShmAllReduce> ar_;
  std::vector<uint8_t> msg_;
  std::vector<int32_t> token_ids_, positions_, query_start_loc_, seq_lens_, block_tables_, logits_indices_;
  std::vector<int64_t> slot_mapping_;
};

// Runs rank `rank` (1..cfg.tp_size-1) of the tensor-parallel group cfg.tp_group until rank 0
// stops it (Ok) or the group breaks (the error). Blocks the calling thread.
Status run_tp_rank(const EngineConfig& cfg, int rank);

}  // namespace llm
