// thread-pool.cc: see thread-pool.h.
//
// One job at a time. parallel_for publishes the job (fn, n, chunks), sets pending_ and bumps the
// generation in the slot of each helper 1 <= i < chunks; a helper whose slot changed runs chunk i
// and counts itself off pending_. Helpers without a chunk are not woken. The calling thread runs
// chunk 0, then waits for pending_ to reach zero. Both waits spin up to kSpinMicros, then sleep
// on mu_ + a condition variable (the waker takes mu_ before notifying, so no wake-up is lost).
// Chunk c is [n * c / chunks, n * (c + 1) / chunks).
#include "thread-pool.h"

#include <algorithm>
#include <chrono>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LLM_CPU_RELAX() _mm_pause()
#else
#define LLM_CPU_RELAX() std::this_thread::yield()
#endif

#include "numa.h"

namespace llm::cpu {

namespace {

// The c-th of `chunks` contiguous, near-equal ranges of [0, n).
int64_t chunk_begin(int64_t n, int64_t chunks, int64_t c) { return n * c / chunks; }

}  // namespace

std::vector<int> allowed_cpus() {
  static const std::vector<int> process_cpus = [] {
    std::vector<int> cpus;
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
      for (int c = 0; c < CPU_SETSIZE; ++c)
        if (CPU_ISSET(c, &set)) cpus.push_back(c);
#endif
    return cpus;
  }();
  return process_cpus;
}

std::vector<int> allowed_cpu_range(int offset, int count) {
  const std::vector<int> all = allowed_cpus();
  if (offset < 0 || count < 1 || static_cast<size_t>(offset) + static_cast<size_t>(count) > all.size()) return {};
  return std::vector<int>(all.begin() + offset, all.begin() + offset + count);
}

namespace {

void pin_current_thread(int cpu) {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);  // best effort: a refusal only costs speed
#endif
}

// Spins until done() or kSpinMicros have passed; returns done().
template <class Done>
bool spin_until(const Done& done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(ThreadPool::kSpinMicros);
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      LLM_CPU_RELAX();
    }
    if (std::chrono::steady_clock::now() >= deadline) return done();
  }
}

}  // namespace

ThreadPool::ThreadPool(int num_threads, const std::vector<int>& only_cpus, bool pin) {
  const std::vector<int> cpus = only_cpus.empty() ? allowed_cpus() : only_cpus;
  const int available = cpus.empty() ? static_cast<int>(std::thread::hardware_concurrency()) : static_cast<int>(cpus.size());
  if (num_threads <= 0) num_threads = available;
  num_threads_ = std::max(1, num_threads);
  if (pin && !cpus.empty() && num_threads_ <= static_cast<int>(cpus.size()) && (num_threads_ > 1 || !only_cpus.empty()))
    cpus_.assign(cpus.begin(), cpus.begin() + num_threads_);
  if (!cpus_.empty()) numa_nodes_ = prefer_memory_near(cpus_);  // before the helpers: they inherit it
  slots_.reset(new Slot[static_cast<size_t>(num_threads_)]);
  threads_.reserve(static_cast<size_t>(num_threads_ - 1));
  for (int i = 1; i < num_threads_; ++i) threads_.emplace_back([this, i] { worker_main(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
  }
  cv_start_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  parallel_for_indexed(n, [&fn](int, int64_t begin, int64_t end) { fn(begin, end); });
}

void ThreadPool::parallel_for_indexed(int64_t n, const std::function<void(int, int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (!cpus_.empty() && pinned_caller_ != std::this_thread::get_id()) {
    pin_current_thread(cpus_[0]);
    pinned_caller_ = std::this_thread::get_id();
  }
  const int64_t chunks = std::min<int64_t>(n, num_threads_);
  if (chunks == 1) {  // nothing to share: no wake-ups
    fn(0, 0, n);
    return;
  }
  job_ = &fn;
  job_n_ = n;
  job_chunks_ = chunks;
  pending_.store(static_cast<int>(chunks - 1), std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mu_);  // a helper about to sleep sees the bump or gets the notify
    for (int64_t i = 1; i < chunks; ++i) slots_[i].generation.fetch_add(1, std::memory_order_release);
  }
  cv_start_.notify_all();
  fn(0, 0, chunk_begin(n, chunks, 1));  // the calling thread is worker 0
  auto done = [this] { return pending_.load(std::memory_order_acquire) == 0; };
  if (spin_until(done)) return;
  std::unique_lock<std::mutex> lock(mu_);
  cv_done_.wait(lock, done);
}

void ThreadPool::worker_main(int index) {
  if (!cpus_.empty()) pin_current_thread(cpus_[static_cast<size_t>(index)]);
  Slot& slot = slots_[index];
  uint64_t seen = 0;
  for (;;) {
    auto ready = [&] { return stop_.load(std::memory_order_relaxed) || slot.generation.load(std::memory_order_acquire) != seen; };
    if (!spin_until(ready)) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_start_.wait(lock, ready);
    }
    if (stop_.load()) return;
    seen = slot.generation.load(std::memory_order_acquire);
    (*job_)(index, chunk_begin(job_n_, job_chunks_, index), chunk_begin(job_n_, job_chunks_, index + 1));
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mu_);
      cv_done_.notify_one();
    }
  }
}

}  // namespace llm::cpu
