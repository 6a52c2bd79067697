// test-all-reduce.cc: the shared-memory all-reduce (common/shm-all-reduce.h) across forked rank
// processes: 2, 3 and 4 ranks, each rank's input from a seeded generator, many messages back to
// back (1, 7, 1000 floats, one above the slot, 1M, and random sizes); every rank's output must be,
// bit for bit, the fp32 sum in rank order 0..N-1 that the test computes itself, with small slots
// (many rounds, both algorithms) and the default ones. A rank that exits, leaves, stalls or never
// joins makes the others fail with an error naming it, in bounded time; a stale segment of the
// same name does not stop a new group; the creator removes the name. broadcast and gather
// (a tensor-parallel worker's batch and logits) interleave with all_reduce on the same slots and
// arrive intact at every size; a rank idle without a deadline leaves once rank 0 has exited.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "common/shm-all-reduce.h"
#include "test-harness.h"

using llm::ShmAllReduce;
using llm::ShmAllReduceOptions;
using llm::SharedMemory;
using llm::Status;
using llm::StatusCode;

namespace {

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Rank `rank`'s input of message `iter`: signed values over 2^-12 .. 2^12, so that the order of
// the additions changes the rounding.
void fill_input(float* x, size_t n, int iter, int rank) {
  uint64_t s = 0x5eed0000ull ^ (static_cast<uint64_t>(iter) << 20) ^ static_cast<uint64_t>(rank);
  for (size_t i = 0; i < n; ++i) {
    const uint64_t r = splitmix(s);
    const float mant = static_cast<float>(r >> 40) / static_cast<float>(1 << 24) * 2.0f - 1.0f;
    x[i] = std::ldexp(mant, static_cast<int>((r >> 8) % 25) - 12);
  }
}

// The sum the ranks must return: ((in_0 + in_1) + in_2) + ..., each add rounded to fp32.
std::vector<float> expected_sum(size_t n, int iter, int world) {
  std::vector<float> sum(n), in(n);
  fill_input(sum.data(), n, iter, 0);
  for (int r = 1; r < world; ++r) {
    fill_input(in.data(), n, iter, r);
    for (size_t i = 0; i < n; ++i) sum[i] += in[i];
  }
  return sum;
}

// The message sizes of one run; the same on every rank.
std::vector<size_t> message_plan(size_t slot_floats, int count) {
  std::vector<size_t> plan = {1, 7, 1000, slot_floats + 123, size_t{1} << 20};
  uint64_t s = 42;
  while (static_cast<int>(plan.size()) < count) {
    const uint64_t r = splitmix(s);
    plan.push_back(r % 8 == 0 ? size_t{1} << 20 : 1 + r % (3 * slot_floats));
  }
  for (size_t i = plan.size() - 1; i > 0; --i) std::swap(plan[i], plan[splitmix(s) % (i + 1)]);
  return plan;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

[[noreturn]] void child_exit(bool ok) {
  std::fflush(stdout);
  _exit(ok && llm_test::failures() == 0 ? 0 : 1);
}

// Forks one process per rank running body(rank), which exits with its result (its objects
// destroyed; `_exit` in a body skips that, as a crash would), and waits for them
// in rank order (a rank that exits early stays a zombie meanwhile), killing every one still alive
// after `limit_s`. Returns whether every rank exited 0.
bool run_ranks(int world, double limit_s, const std::function<bool(int)>& body) {
  std::fflush(stdout);
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      llm_test::failures() = 0;
      child_exit(body(r));
    }
    pids.push_back(pid);
  }
  const auto t0 = std::chrono::steady_clock::now();
  bool ok = true;
  for (int r = 0; r < world; ++r) {
    int status = 0;
    pid_t got = 0;
    while ((got = waitpid(pids[r], &status, WNOHANG)) == 0 && seconds_since(t0) < limit_s)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    if (got == 0) {
      std::printf("  rank %d still running after %.0f s: killing the group\n", r, limit_s);
      for (pid_t p : pids) kill(p, SIGKILL);
      for (int q = r; q < world; ++q) waitpid(pids[q], &status, 0);
      return false;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      std::printf("  rank %d: %s %d\n", r, WIFEXITED(status) ? "exit" : "signal",
                  WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
      ok = false;
    }
  }
  return ok;
}

bool segment_exists(const std::string& name) {
  const int fd = shm_open(name.c_str(), O_RDONLY, 0);
  if (fd >= 0) close(fd);
  return fd >= 0;
}

// Every rank runs the plan and checks every output against expected_sum.
bool exact_sums(int world, const ShmAllReduceOptions& opts, int messages) {
  const std::string name = SharedMemory::unique_name("ar");
  const std::vector<size_t> plan = message_plan(opts.slot_floats, messages);
  const bool ok = run_ranks(world, 240, [&](int rank) {
    std::unique_ptr<ShmAllReduce> ar;
    Status st = ShmAllReduce::create(name, rank, world, opts, &ar);
    if (!st.ok()) {
      std::printf("  rank %d create: %s\n", rank, st.message().c_str());
      return false;
    }
    std::vector<float> x;
    for (int it = 0; it < static_cast<int>(plan.size()); ++it) {
      const size_t n = plan[static_cast<size_t>(it)];
      x.resize(n);
      fill_input(x.data(), n, it, rank);
      st = ar->all_reduce(x.data(), n);
      if (!st.ok()) {
        std::printf("  rank %d message %d (%zu floats): %s\n", rank, it, n, st.message().c_str());
        return false;
      }
      const std::vector<float> want = expected_sum(n, it, world);
      if (std::memcmp(x.data(), want.data(), n * sizeof(float)) != 0) {
        size_t i = 0;
        while (std::memcmp(&x[i], &want[i], sizeof(float)) == 0) ++i;
        std::printf("  rank %d of %d, message %d (%zu floats): x[%zu] = %.9g, the rank-order sum is %.9g\n", rank,
                    world, it, n, i, x[i], want[i]);
        return false;
      }
    }
    return true;
  });
  if (segment_exists(name)) {
    std::printf("  segment %s left behind\n", name.c_str());
    return false;
  }
  return ok;
}

ShmAllReduceOptions small_slots() {
  ShmAllReduceOptions o;
  o.slot_floats = 4096;       // 1M floats: 256 rounds
  o.split_min_floats = 1024;  // 1000 floats: every rank sums; a full slot: reduce-scatter + all-gather
  return o;
}

// A child's check that `st` is the failure the test expects, naming `peer`.
bool failed_naming(const Status& st, StatusCode code, const std::string& peer, const char* what) {
  const bool ok = !st.ok() && st.code() == code && st.message().find(peer) != std::string::npos &&
                  st.message().find(what) != std::string::npos;
  std::printf("  %s: %s\n", ok ? "as expected" : "UNEXPECTED", st.ok() ? "ok" : st.message().c_str());
  return ok;
}

}  // namespace

TEST(the_test_input_depends_on_the_order_of_the_ranks) {
  // With 3 ranks, (a + b) + c and (c + b) + a differ somewhere: the bitwise checks below would see
  // an all-reduce that adds in another order.
  const size_t n = 1000;
  std::vector<float> a(n), b(n), c(n);
  fill_input(a.data(), n, 0, 0);
  fill_input(b.data(), n, 0, 1);
  fill_input(c.data(), n, 0, 2);
  int differ = 0;
  for (size_t i = 0; i < n; ++i) differ += ((a[i] + b[i]) + c[i]) != ((c[i] + b[i]) + a[i]);
  CHECK(differ > 0);
}

TEST(every_rank_gets_the_rank_order_sum_bit_for_bit_with_small_slots) {
  for (int world : {2, 3, 4}) CHECK(exact_sums(world, small_slots(), 40));
}

TEST(every_rank_gets_the_rank_order_sum_bit_for_bit_with_default_slots) {
  for (int world : {2, 3, 4}) CHECK(exact_sums(world, ShmAllReduceOptions(), 40));
}

TEST(always_split_and_never_split_agree_with_the_rank_order_sum) {
  ShmAllReduceOptions split = small_slots(), whole = small_slots();
  split.split_min_floats = 0;
  whole.split_min_floats = size_t{1} << 30;
  CHECK(exact_sums(3, split, 30));
  CHECK(exact_sums(3, whole, 30));
}

TEST(one_rank_is_the_identity) {
  std::unique_ptr<ShmAllReduce> ar;
  CHECK_OK(ShmAllReduce::create(SharedMemory::unique_name("ar"), 0, 1, ShmAllReduceOptions(), &ar));
  float x[3] = {1.5f, -2.0f, 3.25f};
  if (ar) CHECK_OK(ar->all_reduce(x, 3));
  CHECK(x[0] == 1.5f && x[1] == -2.0f && x[2] == 3.25f);
}

TEST(bad_arguments_are_refused) {
  std::unique_ptr<ShmAllReduce> ar;
  CHECK(ShmAllReduce::create(SharedMemory::unique_name("ar"), 2, 2, ShmAllReduceOptions(), &ar).code() ==
        StatusCode::invalid_argument);
  CHECK(ShmAllReduce::create("no-slash", 0, 1, ShmAllReduceOptions(), &ar).code() == StatusCode::invalid_argument);
  ShmAllReduceOptions o;
  o.slot_floats = 0;
  CHECK(ShmAllReduce::create(SharedMemory::unique_name("ar"), 0, 1, o, &ar).code() == StatusCode::invalid_argument);
}

TEST(a_rank_that_exits_fails_the_others_naming_it_before_the_deadline) {
  // Rank 2 exits after joining (without destroying anything) and stays a zombie until ranks 0
  // and 1 are done; they must notice well before their 20 s deadline.
  const std::string name = SharedMemory::unique_name("ar");
  ShmAllReduceOptions o = small_slots();
  o.timeout_ms = 20000;
  CHECK(run_ranks(3, 60, [&](int rank) {
    std::unique_ptr<ShmAllReduce> ar;
    Status st = ShmAllReduce::create(name, rank, 3, o, &ar);
    if (!st.ok()) return false;
    std::vector<float> x(5000, 1.0f);
    if (rank == 2) {
      CHECK_OK(ar->all_reduce(x.data(), x.size()));
      _exit(0);
    }
    CHECK_OK(ar->all_reduce(x.data(), x.size()));
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 100 && st.ok(); ++i) st = ar->all_reduce(x.data(), x.size());
    const double took = seconds_since(t0);
    bool ok = failed_naming(st, StatusCode::transfer_peer, "rank 2 (pid", "exited") && took < 2.0;
    ok = ok && ar->all_reduce(x.data(), 1).code() == StatusCode::transfer_peer;  // the group stays broken
    return ok;
  }));
  CHECK(!segment_exists(name));
}

TEST(peers_alive_names_a_rank_that_exits_without_any_call_of_the_group) {
  // How a rank whose GPU waits on sums notices a dead peer: it asks, and makes no group call.
  const std::string name = SharedMemory::unique_name("ar");
  CHECK(run_ranks(3, 60, [&](int rank) {
    std::unique_ptr<ShmAllReduce> ar;
    if (!ShmAllReduce::create(name, rank, 3, small_slots(), &ar).ok()) return false;
    if (!ar->peers_alive().ok()) return false;  // every rank joined, none has exited yet
    if (!ar->sync(5000).ok()) return false;
    if (rank == 2) _exit(0);
    const auto t0 = std::chrono::steady_clock::now();
    Status st;
    while (st.ok() && seconds_since(t0) < 5.0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      st = ar->peers_alive();
    }
    return failed_naming(st, StatusCode::transfer_peer, "rank 2 (pid", "exited") && seconds_since(t0) < 2.0;
  }));
}

TEST(a_rank_that_leaves_fails_the_others_naming_it) {
  const std::string name = SharedMemory::unique_name("ar");
  CHECK(run_ranks(2, 60, [&](int rank) {
    std::unique_ptr<ShmAllReduce> ar;
    if (!ShmAllReduce::create(name, rank, 2, ShmAllReduceOptions(), &ar).ok()) return false;
    if (rank == 1) {
      ar.reset();  // destroyed; the process lives on
      std::this_thread::sleep_for(std::chrono::seconds(2));
      return true;
    }
    float x[4] = {};
    const auto t0 = std::chrono::steady_clock::now();
    const Status st = ar->all_reduce(x, 4);
    return failed_naming(st, StatusCode::transfer_peer, "rank 1 (pid", "left the group") &&
           seconds_since(t0) < 1.0;
  }));
}

TEST(a_rank_that_leaves_after_another_exited_is_not_named_as_the_cause) {
  // Rank 2 exits without leaving (as a kill -9 does); rank 1 then leaves cleanly, for a reason of
  // its own. Rank 0, waiting for rank 1 first, names the rank that exited.
  const std::string name = SharedMemory::unique_name("ar");
  ShmAllReduceOptions o;
  o.timeout_ms = 20000;
  CHECK(run_ranks(3, 60, [&](int rank) {
    std::unique_ptr<ShmAllReduce> ar;
    if (!ShmAllReduce::create(name, rank, 3, o, &ar).ok()) return false;
    if (rank == 2) _exit(0);
    if (rank == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      ar.reset();
      std::this_thread::sleep_for(std::chrono::seconds(1));
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
    float x[4] = {};
    return failed_naming(ar->all_reduce(x, 4), StatusCode::transfer_peer, "rank 2 (pid", "exited");
  }));
}

TEST(a_rank_that_stalls_fails_the_others_at_the_deadline_and_then_fails_itself) {
  const std::string name = SharedMemory::unique_name("ar");
  ShmAllReduceOptions o;
  o.timeout_ms = 300;
  CHECK(run_ranks(2, 60, [&](int rank) {
    std::unique_ptr<ShmAllReduce> ar;
    if (!ShmAllReduce::create(name, rank, 2, o, &ar).ok()) return false;
    float x[4] = {};
    if (rank == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      // Rank 0 gave up meanwhile: its arrival at this barrier does not count.
      return failed_naming(ar->all_reduce(x, 4), StatusCode::transfer_peer, "rank 0 (pid", "gave up");
    }
    const auto t0 = std::chrono::steady_clock::now();
    const Status st = ar->all_reduce(x, 4);
    const double took = seconds_since(t0);
    return failed_naming(st, StatusCode::transfer_peer, "rank 1 (pid", "within 300 ms") && took >= 0.29 &&
           took < 1.2;
  }));
}

TEST(a_stopped_rank_fails_the_others_after_stopped_timeout_ms_naming_it) {
  const std::string name = SharedMemory::unique_name("ar");
  ShmAllReduceOptions o;
  o.timeout_ms = 20000;
  o.stopped_timeout_ms = 300;
  CHECK(run_ranks(2, 60, [&](int rank) {
    std::unique_ptr<ShmAllReduce> ar;
    if (!ShmAllReduce::create(name, rank, 2, o, &ar).ok()) return false;
    float x[4] = {};
    if (!ar->all_reduce(x, 4).ok()) return false;
    if (rank == 1) {
      raise(SIGSTOP);  // continued by rank 0 once it has given up
      return failed_naming(ar->all_reduce(x, 4), StatusCode::transfer_peer, "rank 0 (pid", "gave up");
    }
    const auto t0 = std::chrono::steady_clock::now();
    const Status st = ar->all_reduce(x, 4);
    const double took = seconds_since(t0);
    kill(0, SIGCONT);  // the process group: rank 1 (and the others, which are running anyway)
    return failed_naming(st, StatusCode::transfer_peer, "rank 1 (pid", "stopped (SIGSTOP) for 300 ms") &&
           took >= 0.29 && took < 5.0;
  }));
}

TEST(a_rank_that_never_joins_fails_create_naming_it_or_the_segment) {
  ShmAllReduceOptions o;
  o.join_timeout_ms = 400;
  // Rank 1 never starts: rank 0 waits for it to join.
  const std::string a = SharedMemory::unique_name("ar");
  CHECK(run_ranks(2, 30, [&](int rank) {
    if (rank == 1) return true;
    std::unique_ptr<ShmAllReduce> ar;
    return failed_naming(ShmAllReduce::create(a, 0, 2, o, &ar), StatusCode::transfer_peer, "rank 1 (never joined)",
                         "within 400 ms");
  }));
  CHECK(!segment_exists(a));
  // Rank 0 never starts: rank 1 waits for the segment.
  const std::string b = SharedMemory::unique_name("ar");
  CHECK(run_ranks(2, 30, [&](int rank) {
    if (rank == 0) return true;
    std::unique_ptr<ShmAllReduce> ar;
    return failed_naming(ShmAllReduce::create(b, 1, 2, o, &ar), StatusCode::transfer_peer, b, "did not appear");
  }));
}

TEST(ranks_that_disagree_on_the_size_both_fail) {
  const std::string name = SharedMemory::unique_name("ar");
  CHECK(run_ranks(2, 30, [&](int rank) {
    std::unique_ptr<ShmAllReduce> ar;
    if (!ShmAllReduce::create(name, rank, 2, ShmAllReduceOptions(), &ar).ok()) return false;
    std::vector<float> x(16);
    return failed_naming(ar->all_reduce(x.data(), rank == 0 ? 10 : 12), StatusCode::invalid_argument,
                         rank == 0 ? "rank 1 12" : "rank 0 10", "floats");
  }));
}

TEST(a_stale_segment_of_the_same_name_does_not_stop_a_new_group) {
  const std::string name = SharedMemory::unique_name("ar");
  // A one-rank group whose process dies without destroying it leaves the segment behind.
  CHECK(run_ranks(1, 30, [&](int) {
    std::unique_ptr<ShmAllReduce> ar;
    if (!ShmAllReduce::create(name, 0, 1, ShmAllReduceOptions(), &ar).ok()) return false;
    _exit(0);
  }));
  CHECK(segment_exists(name));
  CHECK(run_ranks(2, 60, [&](int rank) {
    std::unique_ptr<ShmAllReduce> ar;
    Status st = ShmAllReduce::create(name, rank, 2, small_slots(), &ar);
    if (!st.ok()) {
      std::printf("  rank %d: %s\n", rank, st.message().c_str());
      return false;
    }
    std::vector<float> x(3000);
    fill_input(x.data(), x.size(), 0, rank);
    CHECK_OK(ar->all_reduce(x.data(), x.size()));
    const std::vector<float> want = expected_sum(x.size(), 0, 2);
    return std::memcmp(x.data(), want.data(), x.size() * sizeof(float)) == 0;
  }));
  CHECK(!segment_exists(name));
}

// Messages of every size class, in rank 0's broadcast, every rank's gather (different counts per
// rank) and all_reduce, one after another on the same slots: every rank gets rank 0's bytes, rank
// 0 gets every part in rank order, and the sums stay exact.
TEST(broadcast_and_gather_interleave_with_all_reduce_intact) {
  for (int world : {2, 3, 4}) {
    const std::string name = SharedMemory::unique_name("ar");
    const ShmAllReduceOptions opts = small_slots();
    const std::vector<size_t> plan = message_plan(opts.slot_floats, 6);
    CHECK(run_ranks(world, 120, [&](int rank) {
      std::unique_ptr<ShmAllReduce> ar;
      if (!ShmAllReduce::create(name, rank, world, opts, &ar).ok()) return false;
      for (int it = 0; it < static_cast<int>(plan.size()); ++it) {
        const size_t n = plan[static_cast<size_t>(it)];
        // broadcast: n bytes (0 included) from rank 0
        std::vector<uint8_t> msg;
        if (rank == 0)
          for (size_t i = 0; i < n; ++i) msg.push_back(static_cast<uint8_t>(i * 7 + it));
        if (!ar->broadcast(&msg, 5000).ok() || msg.size() != n) return false;
        for (size_t i = 0; i < n; ++i)
          if (msg[i] != static_cast<uint8_t>(i * 7 + it)) return false;
        // gather: rank r sends n / (r + 1) floats
        std::vector<size_t> counts;
        for (int r = 0; r < world; ++r) counts.push_back(n / static_cast<size_t>(r + 1));
        std::vector<float> mine(counts[static_cast<size_t>(rank)]);
        fill_input(mine.data(), mine.size(), it, rank);
        size_t total = 0;
        for (size_t c : counts) total += c;
        std::vector<float> all(rank == 0 ? total : 0);
        if (!ar->gather(mine.data(), counts, rank == 0 ? all.data() : nullptr).ok()) return false;
        if (rank == 0) {
          size_t at = 0;
          for (int r = 0; r < world; ++r) {
            std::vector<float> theirs(counts[static_cast<size_t>(r)]);
            fill_input(theirs.data(), theirs.size(), it, r);
            if (!theirs.empty() && std::memcmp(all.data() + at, theirs.data(), theirs.size() * sizeof(float)) != 0) {
              std::printf("  gather of %d ranks, message %d: rank %d's part differs\n", world, it, r);
              return false;
            }
            at += theirs.size();
          }
        }
        std::vector<float> x(n);
        fill_input(x.data(), n, it, rank);
        if (!ar->all_reduce(x.data(), n).ok()) return false;
        const std::vector<float> want = expected_sum(n, it, world);
        if (n > 0 && std::memcmp(x.data(), want.data(), n * sizeof(float)) != 0) return false;
      }
      return ar->sync(5000).ok();
    }));
  }
}

// Ranks waiting for rank 0's next message without a deadline fail, naming rank 0, once it is gone.
TEST(ranks_idle_without_a_deadline_leave_when_rank_0_exits) {
  const std::string name = SharedMemory::unique_name("ar");
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(run_ranks(3, 30, [&](int rank) {
    std::unique_ptr<ShmAllReduce> ar;
    if (!ShmAllReduce::create(name, rank, 3, ShmAllReduceOptions{}, &ar).ok()) return false;
    if (rank == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      _exit(0);  // as a kill -9 would: no goodbye
    }
    std::vector<uint8_t> msg;
    const Status st = ar->broadcast(&msg, -1);
    return failed_naming(st, StatusCode::transfer_peer, "rank 0", "exited");
  }));
  CHECK(seconds_since(t0) < 10);
  SharedMemory::remove_stale_segments();
}

int main() { return llm_test::run_all(); }
