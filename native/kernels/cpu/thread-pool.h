// thread-pool.h: one fixed pool of worker threads for the CPU kernels.
//
// Owns: num_threads - 1 helper threads (the calling thread is worker 0 and runs the first chunk).
// Stays true: parallel_for returns only when every chunk has run; chunks never overlap;
// it is not re-entrant (a kernel must not call parallel_for from inside a chunk) and takes one
// caller at a time (the thread that owns the pool).
// Setting: num_threads in [1, hardware_concurrency]; 0 (or less) means hardware_concurrency.
// More threads than cores is allowed (tests do it) but only oversubscribes.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace llm::cpu {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return num_threads_; }

  // Splits [0, n) into at most size() contiguous ranges and runs fn(begin, end) on each.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn);
  // Same, but fn also receives the worker index in [0, size()) for per-thread scratch.
  void parallel_for_indexed(int64_t n, const std::function<void(int, int64_t, int64_t)>& fn);

 private:
  void worker_main(int index);

  int num_threads_ = 1;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_start_;
  std::condition_variable cv_done_;
  const std::function<void(int, int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

}  // namespace llm::cpu
