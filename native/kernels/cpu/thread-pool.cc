// thread-pool.cc: see thread-pool.h.
//
// One job at a time. parallel_for publishes the job (fn, n) under the mutex and bumps
// `generation_`; helper i (1 <= i < size()) wakes, runs chunk i if the job has that many
// chunks, and counts itself off `pending_`. The calling thread runs chunk 0 and then waits
// for `pending_` to reach zero. Chunk c is [n * c / chunks, n * (c + 1) / chunks).
#include "thread-pool.h"

#include <algorithm>

namespace llm::cpu {

namespace {

// The c-th of `chunks` contiguous, near-equal ranges of [0, n).
int64_t chunk_begin(int64_t n, int64_t chunks, int64_t c) { return n * c / chunks; }

}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::thread::hardware_concurrency());
  num_threads_ = std::max(1, num_threads);
  threads_.reserve(static_cast<size_t>(num_threads_ - 1));
  for (int i = 1; i < num_threads_; ++i) threads_.emplace_back([this, i] { worker_main(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_start_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  parallel_for_indexed(n, [&fn](int, int64_t begin, int64_t end) { fn(begin, end); });
}

void ThreadPool::parallel_for_indexed(int64_t n, const std::function<void(int, int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t chunks = std::min<int64_t>(n, num_threads_);
  if (chunks == 1) {  // nothing to share: no wake-ups
    fn(0, 0, n);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &fn;
    job_n_ = n;
    pending_ = static_cast<int>(chunks - 1);
    ++generation_;
  }
  cv_start_.notify_all();
  fn(0, 0, chunk_begin(n, chunks, 1));  // the calling thread is worker 0
  std::unique_lock<std::mutex> lock(mu_);
  cv_done_.wait(lock, [this] { return pending_ == 0; });
}

void ThreadPool::worker_main(int index) {
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int, int64_t, int64_t)>* job;
    int64_t n;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_start_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      job = job_;
      n = job_n_;
    }
    // Only the first `chunks - 1` helpers are counted in pending_; the others sit this job out.
    const int64_t chunks = std::min<int64_t>(n, num_threads_);
    if (index >= chunks) continue;
    (*job)(index, chunk_begin(n, chunks, index), chunk_begin(n, chunks, index + 1));
    std::lock_guard<std::mutex> lock(mu_);
    if (--pending_ == 0) cv_done_.notify_one();
  }
}

}  // namespace llm::cpu
