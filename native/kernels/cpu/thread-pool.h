// thread-pool.h: one fixed pool of worker threads for the CPU kernels.
//
// Owns: num_threads - 1 helper threads (the calling thread is worker 0 and runs the first chunk).
// Stays true: parallel_for returns only when every chunk has run; chunks never overlap;
// it is not re-entrant (a kernel must not call parallel_for from inside a chunk) and takes one
// caller at a time (the thread that owns the pool). An idle helper spins at most kSpinMicros
// after its last job (the kernels of one forward pass follow each other closely), then sleeps on
// a condition variable: many engine processes can share a few cores.
// Pinning: when the pool has no more threads than the CPUs this process may run on
// (sched_getaffinity), helper i is pinned to the i-th of those CPUs and the calling thread, on its
// first parallel_for, to the first; with more threads than CPUs nothing is pinned.
// Setting: num_threads in [1, CPUs]; 0 (or less) means every CPU this process may run on.
// only_cpus (a tensor-parallel rank's share): the CPUs to use instead of all allowed ones; the
// pool is then pinned to them even with one thread. pin = false: never pinned (a pool for short
// host work beside a GPU, which must not tie its caller to one CPU).
// NUMA: a pinned pool sets the constructing thread's memory policy to prefer the nodes of its
// CPUs before it starts its helpers (numa.h), where the machine has several nodes and the CPUs
// do not span them all; numa_nodes() says which (empty: unchanged).
// More threads than cores is allowed (tests do it) but only oversubscribes.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace llm::cpu {

// The CPUs this process may run on, in order; empty when unknown. Read once, at the first call
// (sched_getaffinity of the calling thread, before any pool has pinned it): a pool pins its
// caller to one CPU, and a later pool built on that thread must still see every CPU, or its
// helpers would inherit the caller's single CPU and run one after another.
std::vector<int> allowed_cpus();
// allowed_cpus()[offset, offset + count): a process's own cores when several share a machine;
// empty when offset < 0, count < 1 or the range passes the allowed CPUs.
std::vector<int> allowed_cpu_range(int offset, int count);

class ThreadPool {
 public:
  static constexpr int kSpinMicros = 50;

  explicit ThreadPool(int num_threads = 0, const std::vector<int>& only_cpus = {}, bool pin = true);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return num_threads_; }
  bool pinned() const { return !cpus_.empty(); }
  const std::vector<int>& numa_nodes() const { return numa_nodes_; }

  // Splits [0, n) into at most size() contiguous ranges and runs fn(begin, end) on each.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn);
  // Same, but fn also receives the worker index in [0, size()) for per-thread scratch.
  void parallel_for_indexed(int64_t n, const std::function<void(int, int64_t, int64_t)>& fn);

 private:
  // A helper's mailbox: the caller bumps `generation` (release) after publishing the job;
  // only helpers that have a chunk of the job are bumped.
  struct alignas(64) Slot {
    std::atomic<uint64_t> generation{0};
  };

  void worker_main(int index);

  int num_threads_ = 1;
  std::vector<int> cpus_;                    // CPU of worker i; empty = not pinned
  std::vector<int> numa_nodes_;              // the nodes memory is preferred on; empty = unchanged
  std::thread::id pinned_caller_;
  std::vector<std::thread> threads_;
  std::unique_ptr<Slot[]> slots_;            // [num_threads] (slot 0 unused)
  const std::function<void(int, int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0;
  int64_t job_chunks_ = 0;
  std::atomic<int> pending_{0};              // helpers still running the current job
  std::atomic<bool> stop_{false};
  std::mutex mu_;                            // guards sleeping only (cv waits)
  std::condition_variable cv_start_;
  std::condition_variable cv_done_;
};

}  // namespace llm::cpu
