// bench-all-reduce.cc: the latency of the shared-memory all-reduce (common/shm-all-reduce.h)
// between rank processes on this host, per message size and number of ranks, against a memcpy of
// the same bytes in one process (the bound: every all-reduce at least copies its message into
// the segment and its result out). Not a test.
// Each configuration forks its ranks, runs warm-up messages, then times back-to-back messages on
// the same buffer (zeros: no denormals); rank 0 reports the median and mean time per message.
// More ranks than cores oversubscribe them: a waiting rank then has to give up its core.
// Build: the CMake target bench-all-reduce (LLM_BUILD_TESTS=ON).
// Run: bench-all-reduce [ranks=2,4] [bytes=16K,256K,4M] [seconds=0.5] [spin_us] [yield_us]
//      [split_min_floats] (the last three default to ShmAllReduceOptions')
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "bench-common.h"
#include "common/shm-all-reduce.h"

using namespace llm;
using llm_bench::now;
using llm_bench::split_list;

namespace {

size_t parse_bytes(const std::string& s) {
  const size_t v = std::strtoull(s.c_str(), nullptr, 10);
  const char u = s.empty() ? '\0' : s.back();
  return u == 'K' || u == 'k' ? v << 10 : u == 'M' || u == 'm' ? v << 20 : v;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

std::string load_average() {
  double l[3] = {0, 0, 0};
  if (getloadavg(l, 3) != 3) return "unknown";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f %.2f %.2f", l[0], l[1], l[2]);
  return buf;
}

struct Timing {
  double median_us = 0, mean_us = 0;
  bool ok = false;
};

Timing summarize(std::vector<double>& t, double total) {
  Timing r;
  if (t.empty()) return r;
  std::sort(t.begin(), t.end());
  r.median_us = t[t.size() / 2] * 1e6;
  r.mean_us = total / static_cast<double>(t.size()) * 1e6;
  r.ok = true;
  return r;
}

// Times `iters` messages of `floats` at `ranks` ranks; rank 0 sends its timing over a pipe.
Timing time_all_reduce(int ranks, size_t floats, int iters, const ShmAllReduceOptions& opts) {
  const std::string name = SharedMemory::unique_name("bench-ar");
  int fds[2];
  if (pipe(fds) != 0) return {};
  std::fflush(stdout);
  std::vector<pid_t> pids;
  for (int r = 0; r < ranks; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      close(fds[0]);
      std::unique_ptr<ShmAllReduce> ar;
      Status st = ShmAllReduce::create(name, r, ranks, opts, &ar);
      std::vector<float> x(floats, 0.0f);
      for (int i = 0; st.ok() && i < std::max(5, iters / 10); ++i) st = ar->all_reduce(x.data(), floats);
      std::vector<double> t;
      t.reserve(static_cast<size_t>(iters));
      const double t0 = now();
      for (int i = 0; st.ok() && i < iters; ++i) {
        const double a = now();
        st = ar->all_reduce(x.data(), floats);
        t.push_back(now() - a);
      }
      const double total = now() - t0;
      if (!st.ok()) std::fprintf(stderr, "rank %d: %s\n", r, st.message().c_str());
      if (r == 0) {
        Timing tm = st.ok() ? summarize(t, total) : Timing();
        if (write(fds[1], &tm, sizeof tm) != static_cast<ssize_t>(sizeof tm)) st = Status(StatusCode::io_error, "pipe");
      }
      ar.reset();
      _exit(st.ok() ? 0 : 1);
    }
    pids.push_back(pid);
  }
  close(fds[1]);
  Timing tm;
  if (read(fds[0], &tm, sizeof tm) != static_cast<ssize_t>(sizeof tm)) tm = Timing();
  close(fds[0]);
  for (pid_t p : pids) {
    int status = 0;
    waitpid(p, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) tm.ok = false;
  }
  return tm;
}

Timing time_memcpy(size_t bytes, int iters) {
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  for (int i = 0; i < std::max(5, iters / 10); ++i) std::memcpy(dst.data(), src.data(), bytes);
  std::vector<double> t;
  const double t0 = now();
  for (int i = 0; i < iters; ++i) {
    const double a = now();
    std::memcpy(dst.data(), src.data(), bytes);
    asm volatile("" : : "r"(dst.data()) : "memory");
    t.push_back(now() - a);
  }
  return summarize(t, now() - t0);
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> rank_list = split_list(argc > 1 ? argv[1] : "2,4");
  const std::vector<std::string> byte_list = split_list(argc > 2 ? argv[2] : "16K,256K,4M");
  const double seconds = argc > 3 ? std::atof(argv[3]) : 0.5;
  ShmAllReduceOptions opts;
  if (argc > 4) opts.spin_us = std::atoi(argv[4]);
  if (argc > 5) opts.yield_us = std::atoi(argv[5]);
  if (argc > 6) opts.split_min_floats = std::strtoull(argv[6], nullptr, 10);

  std::printf("%s, %ld CPUs online, load average %s\n", cpu_model().c_str(), sysconf(_SC_NPROCESSORS_ONLN),
              load_average().c_str());
  std::printf("options: slot_floats %zu, split_min_floats %zu, spin_us %d, yield_us %d\n", opts.slot_floats,
              opts.split_min_floats, opts.spin_us, opts.yield_us);
  std::printf("%10s %6s %12s %12s %12s %10s %10s\n", "bytes", "ranks", "median us", "mean us", "memcpy us",
              "x memcpy", "GB/s");
  for (const std::string& bs : byte_list) {
    const size_t bytes = parse_bytes(bs);
    const size_t floats = bytes / sizeof(float);
    // Enough messages to fill `seconds` at a guessed 1 GB/s, within [50, 20000].
    const int iters = static_cast<int>(std::clamp(seconds * 1e9 / static_cast<double>(bytes) / 4, 50.0, 20000.0));
    const Timing mc = time_memcpy(bytes, iters);
    for (const std::string& rs : rank_list) {
      const int ranks = std::atoi(rs.c_str());
      const Timing t = time_all_reduce(ranks, floats, iters, opts);
      if (!t.ok) {
        std::printf("%10zu %6d %12s\n", bytes, ranks, "failed");
        continue;
      }
      std::printf("%10zu %6d %12.1f %12.1f %12.2f %10.1f %10.2f\n", bytes, ranks, t.median_us, t.mean_us,
                  mc.median_us, t.median_us / mc.median_us, static_cast<double>(bytes) / (t.median_us * 1e3));
    }
  }
  std::printf("load average at the end %s\n", load_average().c_str());
  return 0;
}
