// shm-all-reduce.cc: see shm-all-reduce.h.
//
// The segment: a Header (page 0, with one RankLine per rank after it), then two sets of
// world_size slots of slot_floats (rounded up to 16 floats, so slots and slices start on cache
// lines). Round k uses set k % 2; its partial sizes (op_n) alternate the same way.
//
// Barrier g: a rank stores g into its RankLine::arrive and waits until every rank's arrive is at
// least g (counters differ by at most one, compared modulo 2^32). A waiter that goes to sleep
// counts itself in Header::sleepers, reads Header::wake_seq, checks the counters once more, and
// sleeps on wake_seq; an arriving rank that sees sleepers bumps wake_seq and wakes them. Every
// one of these accesses is sequentially consistent, so either the arriving rank sees the sleeper
// or the sleeper sees the arrival.
#include "shm-all-reduce.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <thread>

namespace llm {

struct ShmAllReduce::Header {
  std::atomic<uint64_t> magic;  // stored last by the creator (release): the rest is set
  uint32_t world_size;
  uint32_t pad0;
  uint64_t slot_floats;  // rounded up to kAlignFloats
  std::atomic<int32_t> creator_pid;
  std::atomic<uint32_t> closed;  // the creator is destroying its ShmAllReduce
  alignas(64) std::atomic<uint32_t> wake_seq;
  std::atomic<uint32_t> sleepers;
};

struct alignas(64) ShmAllReduce::RankLine {
  std::atomic<uint32_t> arrive;  // the last barrier this rank reached
  std::atomic<int32_t> pid;      // 0 until the rank joins
  std::atomic<uint32_t> left;    // the rank destroyed its ShmAllReduce
  std::atomic<uint32_t> failed;  // a barrier of this rank's failed: its arrivals from then on mean nothing
  std::atomic<uint32_t> failed_at;  // that barrier (set before failed)
  std::atomic<uint64_t> op_n[2];  // the message size of the op whose first round used set k
};

namespace {

constexpr uint64_t kMagic = 0x6b76736172310002ull;  // "kvsar1", layout 2
constexpr size_t kAlignFloats = 16;                 // 64 bytes
constexpr size_t kPage = 4096;
constexpr size_t kBlockFloats = 2048;               // the sum's working set per block (8 KiB)

int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// Sleeps until *a != expected, a wake, or timeout_us. Without futexes (not Linux): a short nap.
void futex_wait(std::atomic<uint32_t>* a, uint32_t expected, int64_t timeout_us) {
#if defined(__linux__)
  timespec ts;
  ts.tv_sec = static_cast<time_t>(timeout_us / 1000000);
  ts.tv_nsec = static_cast<long>(timeout_us % 1000000) * 1000;
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(a), FUTEX_WAIT, expected, &ts, nullptr, 0);  // shared: not PRIVATE
#else
  std::this_thread::sleep_for(std::chrono::microseconds(std::min<int64_t>(timeout_us, 100)));
#endif
}

void futex_wake_all(std::atomic<uint32_t>* a) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(a), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
#endif
}

// True when `pid` has exited: no such process, or a zombie nobody has reaped yet.
// The state letter of /proc/PID/stat (R, S, D, T, t, Z, X, ...); '?' where it cannot be read,
// 'X' where the process does not exist.
char process_state(int pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE* f = std::fopen(path, "r");
  if (!f) return kill(pid, 0) != 0 && errno == ESRCH ? 'X' : '?';
  char buf[512];
  const size_t len = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[len] = '\0';
  const char* paren = std::strrchr(buf, ')');  // the name may hold spaces and parentheses
  if (!paren || paren[1] != ' ' || paren[2] == '\0') return '?';
  return paren[2];
}

bool process_gone(int pid) {
  if (pid <= 0) return false;
  const char state = process_state(pid);
  return state == 'Z' || state == 'X';
}

size_t header_bytes(int world) {
  return round_up(round_up(sizeof(ShmAllReduce::Header), 64) + static_cast<size_t>(world) * 64, kPage);
}

// d[i] += s[i]: one fp32 add per element, so the order of the terms is the caller's.
void add_to(float* __restrict d, const float* __restrict s, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] += s[i];
}

// dst[dst_at..) <- src[src_at..), n bytes; nothing at all for n == 0, so that an empty message
// or part (null data) never meets pointer arithmetic or memcpy.
void copy_bytes(void* dst, size_t dst_at, const void* src, size_t src_at, size_t n) {
  if (n > 0) std::memcpy(static_cast<char*>(dst) + dst_at, static_cast<const char*>(src) + src_at, n);
}

// If `name` exists and its creator has exited or closed it, unlinks it. A live group's segment
// is an error.
Status remove_if_stale(const std::string& name, size_t header_size) {
  const int fd = shm_open(name.c_str(), O_RDONLY, 0);
  if (fd < 0) return Status::Ok();
  struct stat sb;
  int pid = 0;
  bool closed = false;
  if (fstat(fd, &sb) == 0 && static_cast<size_t>(sb.st_size) >= header_size) {
    void* p = mmap(nullptr, header_size, PROT_READ, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) {
      const auto* h = static_cast<const ShmAllReduce::Header*>(p);
      pid = h->creator_pid.load(std::memory_order_acquire);
      closed = h->closed.load(std::memory_order_acquire) != 0;
      munmap(p, header_size);
    }
  }
  close(fd);
  if (pid > 0 && !closed && !process_gone(pid))
    return Status(StatusCode::io_error, "all-reduce: shared-memory segment " + name + " is in use by pid " +
                                            std::to_string(pid) + " (another group with the same name)");
  shm_unlink(name.c_str());
  return Status::Ok();
}

}  // namespace

static_assert(sizeof(ShmAllReduce::RankLine) == 64, "one cache line per rank");

Status ShmAllReduce::create(const std::string& name, int rank, int world_size, const ShmAllReduceOptions& opts,
                            std::unique_ptr<ShmAllReduce>* out) {
  if (world_size < 1 || rank < 0 || rank >= world_size)
    return Status(StatusCode::invalid_argument, "all-reduce: rank " + std::to_string(rank) + " of " +
                                                    std::to_string(world_size) + " ranks");
  if (opts.slot_floats == 0 || opts.timeout_ms <= 0 || opts.join_timeout_ms <= 0)
    return Status(StatusCode::invalid_argument, "all-reduce: slot_floats, timeout_ms and join_timeout_ms must be > 0");
  std::unique_ptr<ShmAllReduce> ar(new ShmAllReduce());
  ar->opts_ = opts;
  ar->rank_ = rank;
  ar->world_ = world_size;
  ar->slot_stride_ = round_up(opts.slot_floats, kAlignFloats);
  const size_t hdr = header_bytes(world_size);
  const size_t bytes = hdr + 2 * static_cast<size_t>(world_size) * ar->slot_stride_ * sizeof(float);
  const std::string who = "all-reduce rank " + std::to_string(rank) + " of " + std::to_string(world_size);

  if (rank == 0) {
    LLM_RETURN_IF_ERROR(remove_if_stale(name, sizeof(Header)));
    LLM_RETURN_IF_ERROR(SharedMemory::create(name, bytes, &ar->shm_));
    auto* h = static_cast<Header*>(ar->shm_->data());
    h->world_size = static_cast<uint32_t>(world_size);
    h->slot_floats = ar->slot_stride_;
    h->creator_pid.store(getpid(), std::memory_order_relaxed);
    h->magic.store(kMagic, std::memory_order_release);
  } else {
    // Rank 0 may not have created the segment yet, or be between creating and sizing it; a
    // segment whose creator is gone is a stale one that rank 0 is about to replace.
    const int64_t deadline = now_us() + int64_t{opts.join_timeout_ms} * 1000;
    Status last;
    for (;;) {
      std::unique_ptr<SharedMemory> shm;
      last = SharedMemory::open(name, bytes, &shm);
      if (last.ok()) {
        const auto* h = static_cast<const Header*>(shm->data());
        while (h->magic.load(std::memory_order_acquire) != kMagic && now_us() < deadline)
          std::this_thread::sleep_for(std::chrono::microseconds(200));
        if (h->magic.load(std::memory_order_acquire) == kMagic) {
          const int creator = h->creator_pid.load(std::memory_order_acquire);
          if (h->closed.load(std::memory_order_acquire) || process_gone(creator)) {
            last = Status(StatusCode::io_error, "its creator (pid " + std::to_string(creator) + ") is gone");
          } else if (h->world_size != static_cast<uint32_t>(world_size) || h->slot_floats != ar->slot_stride_) {
            return Status(StatusCode::invalid_argument,
                          who + ": segment " + name + " was made for " + std::to_string(h->world_size) +
                              " ranks and " + std::to_string(h->slot_floats) + " floats a slot, this rank expects " +
                              std::to_string(world_size) + " and " + std::to_string(ar->slot_stride_));
          } else {
            ar->shm_ = std::move(shm);
            break;
          }
        } else {
          last = Status(StatusCode::io_error, "it was never initialized");
        }
      }
      if (now_us() >= deadline)
        return Status(StatusCode::transfer_peer, who + ": shared-memory segment " + name + " did not appear within " +
                                                     std::to_string(opts.join_timeout_ms) +
                                                     " ms (rank 0 creates it): " + last.message());
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }

  auto* base = static_cast<char*>(ar->shm_->data());
  ar->header_ = reinterpret_cast<Header*>(base);
  ar->lines_ = reinterpret_cast<RankLine*>(base + round_up(sizeof(Header), 64));
  ar->slots_ = reinterpret_cast<float*>(base + hdr);
  RankLine& me = ar->lines_[rank];
  me.left.store(0, std::memory_order_relaxed);
  me.pid.store(getpid(), std::memory_order_relaxed);
  // Join: every rank has mapped the segment before anyone uses it (or rank 0 removes its name).
  Status st = ar->barrier(opts.join_timeout_ms);
  if (!st.ok()) return st;
  *out = std::move(ar);
  return Status::Ok();
}

ShmAllReduce::~ShmAllReduce() {
  if (lines_) {
    lines_[rank_].left.store(1, std::memory_order_seq_cst);
    if (rank_ == 0) header_->closed.store(1, std::memory_order_seq_cst);
    wake_all();
  }
}

float* ShmAllReduce::slot(int set, int r) const {
  return slots_ + (static_cast<size_t>(set) * static_cast<size_t>(world_) + static_cast<size_t>(r)) * slot_stride_;
}

void ShmAllReduce::wake_all() {
  if (header_->sleepers.load(std::memory_order_seq_cst) > 0) {
    header_->wake_seq.fetch_add(1, std::memory_order_seq_cst);
    futex_wake_all(&header_->wake_seq);
  }
}

Status ShmAllReduce::barrier(int timeout_ms) {
  ++gen_;
  lines_[rank_].arrive.store(gen_, std::memory_order_seq_cst);
  wake_all();
  Status st = wait_all(gen_, timeout_ms);
  if (!st.ok()) {
    // This rank stored its arrival and leaves without the others: they must not take it as one.
    lines_[rank_].failed_at.store(gen_, std::memory_order_seq_cst);
    lines_[rank_].failed.store(1, std::memory_order_seq_cst);
    wake_all();
    return st;
  }
  // A peer that gave up at this barrier or an earlier one did not pass it; one that gave up at a
  // later barrier did pass this one (every rank reached it), and this one is whole.
  for (int r = 0; r < world_; ++r) {
    if (r != rank_ && lines_[r].failed.load(std::memory_order_acquire) &&
        static_cast<int32_t>(lines_[r].failed_at.load(std::memory_order_acquire) - gen_) <= 0) {
      Status exited = exited_rank(gen_);
      if (!exited.ok()) return exited;
      return Status(StatusCode::transfer_peer, "all-reduce rank " + std::to_string(rank_) + ", segment " +
                                                   shm_->name() + ": rank " + std::to_string(r) + " (pid " +
                                                   std::to_string(lines_[r].pid.load(std::memory_order_relaxed)) +
                                                   ") gave up on the group at barrier " + std::to_string(gen_));
    }
  }
  return Status::Ok();
}

// The error naming a rank whose process exited without giving up or leaving first, if one has:
// the cause, when other ranks gave up or left because of it.
Status ShmAllReduce::exited_rank(uint32_t gen) const {
  for (int r = 0; r < world_; ++r) {
    if (r == rank_ || lines_[r].failed.load(std::memory_order_acquire) || lines_[r].left.load(std::memory_order_acquire))
      continue;  // gave up or left first: not the cause
    const int pid = lines_[r].pid.load(std::memory_order_acquire);
    if (pid > 0 && process_gone(pid))
      return Status(StatusCode::transfer_peer, "all-reduce rank " + std::to_string(rank_) + ", segment " +
                                                   shm_->name() + ": rank " + std::to_string(r) + " (pid " +
                                                   std::to_string(pid) + ") exited before barrier " +
                                                   std::to_string(gen));
  }
  return Status::Ok();
}

Status ShmAllReduce::peers_alive() const {
  if (!broken_.ok()) return broken_;
  for (int q = 0; q < world_; ++q)
    if (q != rank_) LLM_RETURN_IF_ERROR(check_peer(q, gen_, true));
  return Status::Ok();
}

Status ShmAllReduce::check_peer(int q, uint32_t gen, bool check_pid) const {
  const RankLine& l = lines_[q];
  int pid = l.pid.load(std::memory_order_acquire);
  if (pid == 0 && static_cast<size_t>(q) < opts_.expected_pids.size()) pid = opts_.expected_pids[static_cast<size_t>(q)];
  const char* what = l.failed.load(std::memory_order_acquire) ? "gave up on the group"
                     : l.left.load(std::memory_order_acquire) ? "left the group"
                     : check_pid && process_gone(pid)         ? "exited"
                                                              : nullptr;
  if (!what) return Status::Ok();
  // A rank that gave up or left may have done so because another one died: name that one.
  if (l.failed.load(std::memory_order_acquire) || l.left.load(std::memory_order_acquire))
    LLM_RETURN_IF_ERROR(exited_rank(gen));
  return Status(StatusCode::transfer_peer, "all-reduce rank " + std::to_string(rank_) + ", segment " + shm_->name() +
                                               ": rank " + std::to_string(q) +
                                               (pid > 0 ? " (pid " + std::to_string(pid) + ") " : " ") + what +
                                               " before barrier " + std::to_string(gen));
}

Status ShmAllReduce::wait_all(uint32_t gen, int timeout_ms) {
  int q = 0;  // ranks below q have arrived
  auto arrived = [&] {
    for (; q < world_; ++q)
      if (static_cast<int32_t>(lines_[q].arrive.load(std::memory_order_acquire) - gen) < 0) return false;
    return true;
  };
  if (arrived()) return Status::Ok();
  const int64_t start = now_us();
  const int64_t deadline = timeout_ms < 0 ? INT64_MAX : start + int64_t{timeout_ms} * 1000;
  int64_t t = start;
  while (t - start < opts_.spin_us) {
    for (int i = 0; i < 64; ++i) {
      cpu_relax();
      if (arrived()) return Status::Ok();
    }
    t = now_us();
  }
  while (t - start < opts_.yield_us) {
    sched_yield();
    if (arrived()) return Status::Ok();
    LLM_RETURN_IF_ERROR(check_peer(q, gen, false));
    t = now_us();
  }
  int64_t next_pid_check = t;
  std::vector<int64_t> stopped_since(static_cast<size_t>(world_), 0);  // when a rank was first seen stopped
  for (;;) {
    if (arrived()) return Status::Ok();
    t = now_us();
    if (t >= next_pid_check) {
      for (int r = q; r < world_; ++r) {
        if (static_cast<int32_t>(lines_[r].arrive.load(std::memory_order_acquire) - gen) >= 0) continue;
        LLM_RETURN_IF_ERROR(check_peer(r, gen, true));
        const int pid = lines_[r].pid.load(std::memory_order_acquire);
        int64_t& since = stopped_since[static_cast<size_t>(r)];
        if (timeout_ms < 0 || pid <= 0 || process_state(pid) != 'T') {
          since = 0;
        } else if (since == 0) {
          since = t;
        } else if (t - since >= int64_t{opts_.stopped_timeout_ms} * 1000) {
          return Status(StatusCode::transfer_peer, "all-reduce rank " + std::to_string(rank_) + ", segment " +
                                                       shm_->name() + ": rank " + std::to_string(r) + " (pid " +
                                                       std::to_string(pid) + ") has been stopped (SIGSTOP) for " +
                                                       std::to_string(opts_.stopped_timeout_ms) +
                                                       " ms at barrier " + std::to_string(gen));
        }
      }
      next_pid_check = t + 10000;
    } else {
      LLM_RETURN_IF_ERROR(check_peer(q, gen, false));
    }
    if (t >= deadline) {
      const int pid = lines_[q].pid.load(std::memory_order_acquire);
      return Status(StatusCode::transfer_peer,
                    "all-reduce rank " + std::to_string(rank_) + ", segment " + shm_->name() + ": rank " +
                        std::to_string(q) + (pid > 0 ? " (pid " + std::to_string(pid) + ")" : " (never joined)") +
                        " did not reach barrier " + std::to_string(gen) + " within " + std::to_string(timeout_ms) +
                        " ms");
    }
    header_->sleepers.fetch_add(1, std::memory_order_seq_cst);
    const uint32_t seq = header_->wake_seq.load(std::memory_order_seq_cst);
    if (!arrived()) futex_wait(&header_->wake_seq, seq, std::min<int64_t>(deadline - t, 10000));
    header_->sleepers.fetch_sub(1, std::memory_order_seq_cst);
  }
}

Status ShmAllReduce::all_reduce(float* x, size_t n) {
  if (!broken_.ok()) return broken_;
  if (world_ == 1 || n == 0) return Status::Ok();
  for (size_t off = 0; off < n; off += slot_stride_) {
    const size_t c = std::min(slot_stride_, n - off);
    Status st = round(x + off, c, n, off == 0);
    if (!st.ok()) {
      broken_ = st;
      return st;
    }
  }
  return Status::Ok();
}

Status ShmAllReduce::round(float* x, size_t c, uint64_t total_n, bool first_round) {
  const int set = static_cast<int>(rounds_++ & 1);
  float* mine = slot(set, rank_);
  std::memcpy(mine, x, c * sizeof(float));
  if (first_round) lines_[rank_].op_n[set].store(total_n, std::memory_order_relaxed);  // published by the barrier
  LLM_RETURN_IF_ERROR(barrier(opts_.timeout_ms));
  if (first_round) {
    for (int r = 0; r < world_; ++r) {
      const uint64_t theirs = lines_[r].op_n[set].load(std::memory_order_relaxed);
      if (theirs != total_n)
        return Status(StatusCode::invalid_argument, "all-reduce rank " + std::to_string(rank_) + ", segment " +
                                                        shm_->name() + ": this rank reduces " +
                                                        std::to_string(total_n) + " floats, rank " + std::to_string(r) +
                                                        " " + std::to_string(theirs));
    }
  }
  // x[lo, hi) <- slot 0 + slot 1 + ... + slot N-1 over [lo, hi), a block at a time (x's block
  // stays in L1 while every slot is added to it). x is free: this rank's partial is in `mine`.
  auto sum = [&](size_t lo, size_t hi) {
    for (size_t b = lo; b < hi; b += kBlockFloats) {
      const size_t len = std::min(kBlockFloats, hi - b);
      std::memcpy(x + b, slot(set, 0) + b, len * sizeof(float));
      for (int r = 1; r < world_; ++r) add_to(x + b, slot(set, r) + b, len);
    }
  };
  if (c < opts_.split_min_floats) {
    sum(0, c);
    return Status::Ok();
  }
  // Reduce-scatter: this rank sums its slice and publishes it in its own slot (no rank reads that
  // slice of this slot for anything else); all-gather after the barrier.
  const size_t slice = round_up((c + static_cast<size_t>(world_) - 1) / static_cast<size_t>(world_), kAlignFloats);
  auto lo_of = [&](int r) { return std::min(c, static_cast<size_t>(r) * slice); };
  const size_t lo = lo_of(rank_), hi = std::min(c, lo + slice);
  sum(lo, hi);
  std::memcpy(mine + lo, x + lo, (hi - lo) * sizeof(float));
  LLM_RETURN_IF_ERROR(barrier(opts_.timeout_ms));
  for (int r = 0; r < world_; ++r) {
    if (r == rank_) continue;
    const size_t rlo = lo_of(r), rhi = std::min(c, rlo + slice);
    std::memcpy(x + rlo, slot(set, r) + rlo, (rhi - rlo) * sizeof(float));
  }
  return Status::Ok();
}

Status ShmAllReduce::sync(int timeout_ms) {
  if (!broken_.ok()) return broken_;
  if (world_ == 1) return Status::Ok();
  Status st = barrier(timeout_ms);
  if (!st.ok()) broken_ = st;
  return st;
}

// Rounds of at most one slot's bytes through rank 0's slot; the first carries the total size
// (rank 0's op_n, published by the barrier).
Status ShmAllReduce::broadcast(std::vector<uint8_t>* msg, int timeout_ms) {
  if (!broken_.ok()) return broken_;
  if (world_ == 1) return Status::Ok();
  const size_t cap = slot_stride_ * sizeof(float);
  uint64_t total = rank_ == 0 ? msg->size() : 0;
  size_t off = 0;
  bool first = true;
  do {
    const int set = static_cast<int>(rounds_++ & 1);
    auto* s = reinterpret_cast<uint8_t*>(slot(set, 0));
    if (rank_ == 0) {
      copy_bytes(s, 0, msg->data(), off, std::min<size_t>(cap, total - off));
      if (first) lines_[0].op_n[set].store(total, std::memory_order_relaxed);
    }
    Status st = barrier(first ? timeout_ms : opts_.timeout_ms);
    if (!st.ok()) {
      broken_ = st;
      return st;
    }
    if (rank_ != 0) {
      if (first) {
        total = lines_[0].op_n[set].load(std::memory_order_relaxed);
        msg->resize(static_cast<size_t>(total));
      }
      copy_bytes(msg->data(), off, s, 0, std::min<size_t>(cap, total - off));
    }
    off += std::min<size_t>(cap, total - off);
    first = false;
  } while (off < total);
  return Status::Ok();
}

// Round k carries floats [k * slot, (k + 1) * slot) of every rank's part (fewer, or none, for a
// short part); rank 0 copies them out before it reaches the next barrier.
Status ShmAllReduce::gather(const float* x, const std::vector<size_t>& counts, float* root_out) {
  if (!broken_.ok()) return broken_;
  if (counts.size() != static_cast<size_t>(world_))
    return Status(StatusCode::invalid_argument, "all-reduce gather: " + std::to_string(counts.size()) +
                                                    " counts for " + std::to_string(world_) + " ranks");
  std::vector<size_t> at(counts.size(), 0);
  size_t total = 0, longest = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    at[r] = total;
    total += counts[r];
    longest = std::max(longest, counts[r]);
  }
  if (world_ == 1) {
    copy_bytes(root_out, 0, x, 0, total * sizeof(float));
    return Status::Ok();
  }
  auto part = [&](size_t r, size_t off) { return counts[r] > off ? std::min(slot_stride_, counts[r] - off) : 0; };
  for (size_t off = 0; off == 0 || off < longest; off += slot_stride_) {
    const int set = static_cast<int>(rounds_++ & 1);
    copy_bytes(slot(set, rank_), 0, x, off * sizeof(float), part(static_cast<size_t>(rank_), off) * sizeof(float));
    if (off == 0) lines_[rank_].op_n[set].store(total, std::memory_order_relaxed);
    Status st = barrier(opts_.timeout_ms);
    if (st.ok() && off == 0) {
      for (int r = 0; r < world_; ++r) {
        const uint64_t theirs = lines_[r].op_n[set].load(std::memory_order_relaxed);
        if (theirs != total)
          st = Status(StatusCode::invalid_argument, "all-reduce rank " + std::to_string(rank_) + ", segment " +
                                                        shm_->name() + ": this rank gathers " + std::to_string(total) +
                                                        " floats, rank " + std::to_string(r) + " " +
                                                        std::to_string(theirs));
      }
    }
    if (!st.ok()) {
      broken_ = st;
      return st;
    }
    if (rank_ == 0)
      for (int r = 0; r < world_; ++r)
        copy_bytes(root_out, (at[static_cast<size_t>(r)] + off) * sizeof(float), slot(set, r), 0,
                   part(static_cast<size_t>(r), off) * sizeof(float));
  }
  return Status::Ok();
}

}  // namespace llm
