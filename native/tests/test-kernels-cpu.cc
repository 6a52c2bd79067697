// test-kernels-cpu.cc: the thread pool and every reference CPU kernel against a naive
// single-threaded double-precision implementation written here.
//
// Inputs are rounded to the dtype under test first, and the double reference reads those
// rounded values, so each bound measures only the kernel's own fp32 arithmetic:
//   matmul            |y - ref| <= 1e-5 * (sum_k |x_k w_nk| + |b_n|)
//   rmsnorm, rope     |y - ref| <= 1e-5       (outputs of magnitude <= ~3)
//   silu_mul          |y - ref| <= 1e-6 * (1 + |ref|)
//   paged_attention   |y - ref| <= 1e-5       (outputs are averages of values in [-1, 1])
//   embedding, cache_write   exact (a copy, or one rounding to the pool dtype)
// Kernels run on a 4-thread pool (more threads than this machine may have) so that every
// shape is also split across workers unevenly.
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernel-fixtures.h"
#include "kernels/cpu/cpu-kernels.h"
#include "kernels/cpu/numa.h"
#include "test-harness.h"

using namespace llm;
using namespace llm::cpu;
using namespace llm_test;

namespace {

const CpuKernels& K() { return cpu_reference_kernels(); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Thread pool

// Runs parallel_for_indexed(n) and checks every index ran exactly once, in contiguous ranges,
// from distinct workers.
void check_pool_covers(ThreadPool& pool, int64_t n) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
  std::vector<std::atomic<int>> worker_calls(static_cast<size_t>(pool.size()));
  std::atomic<int> bad_ranges{0};
  pool.parallel_for_indexed(n, [&](int worker, int64_t begin, int64_t end) {
    if (worker < 0 || worker >= pool.size() || begin >= end || begin < 0 || end > n) {
      ++bad_ranges;
      return;
    }
    ++worker_calls[static_cast<size_t>(worker)];
    for (int64_t i = begin; i < end; ++i) ++hits[static_cast<size_t>(i)];
  });
  CHECK_EQ(bad_ranges.load(), 0);
  for (int64_t i = 0; i < n; ++i) CHECK_EQ(hits[static_cast<size_t>(i)].load(), 1);
  for (auto& c : worker_calls) CHECK(c.load() <= 1);
}

TEST(pool_zero_items_runs_nothing) {
  ThreadPool pool(4);
  int calls = 0;
  pool.parallel_for(0, [&](int64_t, int64_t) { ++calls; });
  pool.parallel_for(-3, [&](int64_t, int64_t) { ++calls; });
  CHECK_EQ(calls, 0);
}

TEST(pool_fewer_items_than_threads) {
  ThreadPool pool(8);
  CHECK_EQ(pool.size(), 8);
  for (int64_t n = 1; n <= 9; ++n) check_pool_covers(pool, n);
}

TEST(pool_many_items_and_sizes) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    CHECK_EQ(pool.size(), threads);
    for (int64_t n : {1, 2, 7, 100, 1001}) check_pool_covers(pool, n);
  }
  ThreadPool all_cores(0);
  CHECK(all_cores.size() >= 1);
  check_pool_covers(all_cores, 17);
}

TEST(pool_many_calls) {
  ThreadPool pool(4);
  std::atomic<int64_t> total{0};
  int64_t expected = 0;
  for (int call = 0; call < 3000; ++call) {
    const int64_t n = call % 13;  // includes 0 and n < threads
    expected += n * (n - 1) / 2;
    pool.parallel_for(n, [&](int64_t begin, int64_t end) {
      int64_t sum = 0;
      for (int64_t i = begin; i < end; ++i) sum += i;
      total += sum;
    });
  }
  CHECK_EQ(total.load(), expected);
}

TEST(allowed_cpu_range_is_a_slice_of_the_allowed_cpus) {
  const std::vector<int> all = llm::cpu::allowed_cpus();
  CHECK(!all.empty());
  const int n = static_cast<int>(all.size());
  CHECK(llm::cpu::allowed_cpu_range(0, n) == all);
  CHECK(llm::cpu::allowed_cpu_range(n - 1, 1) == std::vector<int>{all.back()});
  CHECK(llm::cpu::allowed_cpu_range(-1, 1).empty());
  CHECK(llm::cpu::allowed_cpu_range(0, 0).empty());
  CHECK(llm::cpu::allowed_cpu_range(n, 1).empty());
  CHECK(llm::cpu::allowed_cpu_range(0, n + 1).empty());
}

// A pool pins its caller to its first CPU; a second pool built on that thread must still spread
// over the process's CPUs: its helpers were once created with the caller's single CPU as their
// whole mask, so two threads took turns on one CPU.
TEST(a_second_pool_on_a_pinned_thread_runs_its_threads_on_different_cpus) {
  if (sysconf(_SC_NPROCESSORS_ONLN) < 2) {
    std::printf("  skipped: one CPU\n");
    return;
  }
  {
    ThreadPool first(2);
    first.parallel_for(2, [](int64_t, int64_t) {});  // pins this thread
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  CHECK(sched_getaffinity(0, sizeof set, &set) == 0);
  CHECK(CPU_COUNT(&set) == 1);
  ThreadPool second(2);
  cpu_set_t mask[2];
  second.parallel_for(2, [&](int64_t begin, int64_t) {
    CPU_ZERO(&mask[begin]);
    sched_getaffinity(0, sizeof mask[begin], &mask[begin]);
  });
  CHECK(CPU_COUNT(&mask[0]) == 1 && CPU_COUNT(&mask[1]) == 1);  // each pinned to one CPU
  CHECK(!CPU_EQUAL(&mask[0], &mask[1]));                        // and not the same one
}

// An unpinned pool (host work beside a GPU) ties neither its caller nor its helpers to one CPU.
TEST(an_unpinned_pool_leaves_every_thread_on_all_the_allowed_cpus) {
  const std::vector<int> all = llm::cpu::allowed_cpus();
  if (all.size() < 2) {
    std::printf("  skipped: one CPU\n");
    return;
  }
  std::thread([&] {
    cpu_set_t every;
    CPU_ZERO(&every);
    for (int c : all) CPU_SET(c, &every);
    CHECK(sched_setaffinity(0, sizeof every, &every) == 0);  // this test's thread may have inherited a pin
    ThreadPool pool(2, {}, /*pin=*/false);
    cpu_set_t mask[2];
    pool.parallel_for(2, [&](int64_t begin, int64_t) {
      CPU_ZERO(&mask[begin]);
      sched_getaffinity(0, sizeof mask[begin], &mask[begin]);
    });
    CHECK(CPU_EQUAL(&mask[0], &every) && CPU_EQUAL(&mask[1], &every));
  }).join();
}

TEST(cpu_lists_parse_as_sysfs_writes_them) {
  CHECK((llm::cpu::parse_cpu_list("0-3,8,10-11\n") == std::vector<int>{0, 1, 2, 3, 8, 10, 11}));
  CHECK((llm::cpu::parse_cpu_list("5") == std::vector<int>{5}));
  CHECK(llm::cpu::parse_cpu_list("").empty());
  CHECK(llm::cpu::parse_cpu_list("3-1").empty());
  CHECK(llm::cpu::parse_cpu_list("a-b").empty());
}

// The nodes of a set of CPUs, from a sysfs-like tree of two nodes (with the entries that are not
// nodes which sysfs has beside them), and what a pinned pool does with the real one.
TEST(numa_nodes_of_cpus_and_a_pinned_pools_memory_policy) {
  char dir[] = "/tmp/kvserve-numa-XXXXXX";
  CHECK(mkdtemp(dir) != nullptr);
  const std::string root = dir;
  for (auto [node, list] : {std::pair<const char*, const char*>{"node0", "0-3,8-11"}, {"node1", "4-7,12-15"}}) {
    CHECK(mkdir((root + "/" + node).c_str(), 0700) == 0);
    FILE* f = std::fopen((root + "/" + node + "/cpulist").c_str(), "w");
    std::fprintf(f, "%s\n", list);
    std::fclose(f);
  }
  CHECK(mkdir((root + "/power").c_str(), 0700) == 0);
  CHECK(llm::cpu::numa_node_count(root) == 2);
  CHECK((llm::cpu::numa_nodes_of({4, 5}, root) == std::vector<int>{1}));
  CHECK((llm::cpu::numa_nodes_of({3, 4}, root) == std::vector<int>{0, 1}));
  CHECK((llm::cpu::numa_nodes_of({9, 10}, root) == std::vector<int>{0}));
  CHECK(llm::cpu::numa_nodes_of({16}, root).empty());
  CHECK(llm::cpu::numa_nodes_of({0}, root + "/missing").empty());
  std::system(("rm -rf " + root).c_str());

  // This machine: one node changes nothing; on several, a pool pinned to its first CPU prefers
  // that CPU's node, and the policy is this thread's.
  const std::vector<int> all = llm::cpu::allowed_cpus();
  ThreadPool pool(1, {all.front()});
  const int nodes = llm::cpu::numa_node_count();
  std::printf("  this machine: %d NUMA node(s); a pool on CPU %d prefers %s\n", nodes, all.front(),
              pool.numa_nodes().empty() ? "no node (policy unchanged)" : std::to_string(pool.numa_nodes()[0]).c_str());
  if (nodes < 2) CHECK(pool.numa_nodes().empty());
  else CHECK(pool.numa_nodes() == llm::cpu::numa_nodes_of({all.front()}));
}

TEST(pool_shuts_down_idle) {
  for (int i = 0; i < 20; ++i) ThreadPool pool(3);  // constructed and destroyed without a job
  CHECK(true);
}

TEST(dispatch_table_is_complete) {
  for (const CpuKernels* k : {&cpu_reference_kernels(), &cpu_kernels()}) {
    CHECK(k->name != nullptr);
    CHECK(k->matmul && k->rmsnorm && k->rope && k->silu_mul && k->embedding && k->cache_write &&
          k->paged_attention);
  }
}

// ---------------------------------------------------------------------------------------------
// matmul

TEST(matmul_matches_double_reference) {
  struct Shape { int64_t M, K, N; };
  const Shape shapes[] = {{1, 1, 1}, {1, 7, 5}, {3, 33, 17}, {5, 130, 61}, {70, 65, 19}, {2, 256, 300}, {129, 9, 33}};
  for (DType dt : kDTypes) {
    for (const Shape& sh : shapes) {
      for (bool with_bias : {false, true}) {
        const std::vector<float> x = random_floats(sh.M * sh.K);
        const TypedBuffer w(dt, random_floats(sh.N * sh.K));
        const TypedBuffer b(dt, random_floats(sh.N));
        const TensorView bias = b.view(1, sh.N);
        std::vector<float> y(static_cast<size_t>(sh.M * sh.N), NAN);
        K().matmul(test_pool(), x.data(), sh.M, w.view(sh.N, sh.K), with_bias ? &bias : nullptr, y.data());
        ErrorTracker err;
        for (int64_t m = 0; m < sh.M; ++m)
          for (int64_t n = 0; n < sh.N; ++n) {
            double ref = with_bias ? b.values[n] : 0.0, mag = with_bias ? std::fabs(b.values[n]) : 0.0;
            for (int64_t k = 0; k < sh.K; ++k) {
              ref += static_cast<double>(x[m * sh.K + k]) * w.values[n * sh.K + k];
              mag += std::fabs(static_cast<double>(x[m * sh.K + k]) * w.values[n * sh.K + k]);
            }
            err.add(y[m * sh.N + n], ref, mag + 1e-30);
          }
        if (!(err.worst <= 1e-5))
          std::printf("  matmul %s M=%ld K=%ld N=%ld bias=%d: worst relative error %g\n", dtype_name(dt),
                      (long)sh.M, (long)sh.K, (long)sh.N, with_bias, err.worst);
        CHECK(err.worst <= 1e-5);
      }
    }
  }
}

TEST(matmul_empty_batch_writes_nothing) {
  const TypedBuffer w(DType::bf16, random_floats(6 * 4));
  float y = 42.0f;
  K().matmul(test_pool(), nullptr, 0, w.view(6, 4), nullptr, &y);
  CHECK_EQ(y, 42.0f);
}

// ---------------------------------------------------------------------------------------------
// rmsnorm

TEST(rmsnorm_matches_double_reference) {
  const float eps = 1e-5f;
  for (DType dt : kDTypes) {
    for (auto [M, D] : {std::pair<int64_t, int64_t>{1, 7}, {5, 129}, {3, 4096}, {17, 64}}) {
      for (bool in_place : {false, true}) {
        std::vector<float> x = random_floats(M * D, -2.0f, 2.0f);
        const std::vector<float> x0 = x;
        const TypedBuffer g(dt, random_floats(D, 0.5f, 1.5f));
        std::vector<float> separate(static_cast<size_t>(M * D));
        float* out = in_place ? x.data() : separate.data();
        K().rmsnorm(test_pool(), x.data(), g.view(1, D), eps, M, D, out);
        ErrorTracker err;
        for (int64_t m = 0; m < M; ++m) {
          double ss = 0.0;
          for (int64_t d = 0; d < D; ++d) ss += static_cast<double>(x0[m * D + d]) * x0[m * D + d];
          const double inv_rms = 1.0 / std::sqrt(ss / D + eps);
          for (int64_t d = 0; d < D; ++d) err.add(out[m * D + d], x0[m * D + d] * inv_rms * g.values[d], 1.0);
        }
        CHECK(err.worst <= 1e-5);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// rope

TEST(rope_matches_double_reference) {
  const int32_t positions[] = {0, 1, 17, 4097, 131071};
  const int64_t T = 5;
  for (int64_t head_dim : {64, 128}) {
    for (auto [H, Hkv] : {std::pair<int64_t, int64_t>{4, 4}, {8, 2}, {8, 1}}) {
     for (float scale : {1.0f, 1.1386294f}) {  // 1, and yarn's attention factor at factor 4
      std::vector<float> inv_freq(static_cast<size_t>(head_dim / 2));
      for (int64_t i = 0; i < head_dim / 2; ++i)
        inv_freq[i] = static_cast<float>(1.0 / std::pow(500000.0, 2.0 * i / head_dim));
      std::vector<float> q = random_floats(T * H * head_dim), k = random_floats(T * Hkv * head_dim);
      const std::vector<float> q0 = q, k0 = k;
      K().rope(test_pool(), q.data(), k.data(), positions, T, H, Hkv, head_dim, inv_freq.data(), scale);
      // The kernel rounds angle = pos * inv_freq to fp32 like Hugging Face; the reference takes
      // that same angle and rotates in double.
      ErrorTracker err;
      auto check_heads = [&](const std::vector<float>& before, const std::vector<float>& after, int64_t heads) {
        for (int64_t t = 0; t < T; ++t)
          for (int64_t h = 0; h < heads; ++h)
            for (int64_t i = 0; i < head_dim / 2; ++i) {
              const double angle = static_cast<double>(static_cast<float>(positions[t]) * inv_freq[i]);
              const int64_t lo = (t * heads + h) * head_dim + i, hi = lo + head_dim / 2;
              const double a = before[lo], b = before[hi];
              err.add(after[lo], scale * (a * std::cos(angle) - b * std::sin(angle)), 1.0);
              err.add(after[hi], scale * (b * std::cos(angle) + a * std::sin(angle)), 1.0);
            }
      };
      check_heads(q0, q, H);
      check_heads(k0, k, Hkv);
      CHECK(err.worst <= 1e-5);
     }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// silu_mul, embedding

TEST(silu_mul_matches_double_reference) {
  for (int64_t n : {0, 1, 1001}) {
    std::vector<float> gate = random_floats(n, -8.0f, 8.0f);
    const std::vector<float> up = random_floats(n, -2.0f, 2.0f), gate0 = gate;
    K().silu_mul(test_pool(), gate.data(), up.data(), gate.data(), n);  // out aliases gate
    ErrorTracker err;
    for (int64_t i = 0; i < n; ++i) {
      const double g = gate0[i], ref = g / (1.0 + std::exp(-g)) * up[i];
      err.add(gate[i], ref, 1.0 + std::fabs(ref));
    }
    CHECK(err.worst <= 1e-6);
  }
}

TEST(embedding_copies_rows_exactly) {
  const int64_t vocab = 11, D = 13;
  for (DType dt : kDTypes) {
    const TypedBuffer table(dt, random_floats(vocab * D));
    const int32_t ids[] = {10, 0, 3, 3, 7};
    std::vector<float> out(5 * D);
    K().embedding(test_pool(), table.view(vocab, D), ids, 5, out.data());
    for (int64_t t = 0; t < 5; ++t)
      for (int64_t d = 0; d < D; ++d) CHECK_EQ(static_cast<double>(out[t * D + d]), table.values[ids[t] * D + d]);
  }
}

TEST(cache_write_stores_rounded_rows_at_slots_only) {
  const float kSentinel = 7.0f;
  for (DType dt : kDTypes) {
    TestPool pool(dt, /*num_blocks=*/5, /*num_layers=*/3, /*block_size=*/4, /*num_kv_heads=*/2, /*head_dim=*/6);
    for (int64_t i = 0; i < pool.elements(); ++i) pool.set(i, kSentinel);
    const int64_t layer = 1, row = pool.view.token_stride();
    const int64_t slots[] = {13, -1, 0, 19, 6};  // slot -1 is padding
    const int64_t T = 5;
    const std::vector<float> k = random_floats(T * row), v = random_floats(T * row);
    K().cache_write(test_pool(), k.data(), v.data(), slots, T, pool.view, layer);

    std::vector<double> expected(static_cast<size_t>(pool.elements()), kSentinel);
    for (int64_t t = 0; t < T; ++t) {
      if (slots[t] < 0) continue;
      const int64_t block_id = slots[t] / 4, offset = slots[t] % 4;
      for (int64_t e = 0; e < row; ++e) {
        TestPool one(dt, 1, 1, 1, 1, 2);
        one.set(0, k[t * row + e]);
        one.set(1, v[t * row + e]);
        expected[pool.view.offset(block_id, layer, 0, offset) + e] = one.get(0);
        expected[pool.view.offset(block_id, layer, 1, offset) + e] = one.get(1);
      }
    }
    int mismatches = 0;
    for (int64_t i = 0; i < pool.elements(); ++i) mismatches += pool.get(i) != expected[i];
    CHECK_EQ(mismatches, 0);
  }
}

// ---------------------------------------------------------------------------------------------
// paged_attention

// Naive attention in double for one query (token t of sequence s, head h), reading K/V
// through the block table exactly as laid out in the pool.
void reference_attention(const TestPool& pool, int64_t layer, const AttentionBatch& b, const float* q,
                         int64_t t, int64_t s, int64_t h, std::vector<double>* out) {
  const KVCacheView& kv = pool.view;
  const int64_t hd = kv.head_dim, kvh = h / (b.num_heads / kv.num_kv_heads);
  const int64_t q_len = b.query_start_loc[s + 1] - b.query_start_loc[s];
  const int64_t q_pos = b.seq_lens[s] - q_len + (t - b.query_start_loc[s]);
  const int32_t* table = b.block_tables + s * b.max_blocks_per_seq;
  std::vector<double> scores;
  std::vector<int64_t> keys;
  for (int64_t j = 0; j <= q_pos; ++j) {
    if (b.sliding_window > 0 && j <= q_pos - b.sliding_window) continue;
    const int64_t base = kv.offset(table[j / kv.block_size], layer, 0, j % kv.block_size) + kvh * hd;
    double dot = 0.0;
    for (int64_t d = 0; d < hd; ++d) dot += static_cast<double>(q[(t * b.num_heads + h) * hd + d]) * pool.get(base + d);
    scores.push_back(dot * b.scale);
    keys.push_back(j);
  }
  const double max_score = *std::max_element(scores.begin(), scores.end());
  double sum = 0.0;
  for (double& sc : scores) sum += (sc = std::exp(sc - max_score));
  out->assign(static_cast<size_t>(hd), 0.0);
  for (size_t c = 0; c < keys.size(); ++c) {
    const int64_t j = keys[c];
    const int64_t base = kv.offset(table[j / kv.block_size], layer, 1, j % kv.block_size) + kvh * hd;
    for (int64_t d = 0; d < hd; ++d) (*out)[d] += scores[c] / sum * pool.get(base + d);
  }
}

// Runs the reference kernel on an AttentionCase and returns its worst error against the double
// reference.
double run_attention_case(DType dt, int64_t H, int64_t Hkv, int64_t head_dim, int64_t block_size,
                          int64_t sliding_window, const std::vector<SeqSpec>& seqs) {
  const AttentionCase c(dt, H, Hkv, head_dim, block_size, sliding_window, seqs);
  const std::vector<float> out = c.run(K());
  ErrorTracker err;
  std::vector<double> ref;
  for (int64_t s = 0; s < c.batch.num_seqs; ++s)
    for (int64_t t = c.qsl[s]; t < c.qsl[s + 1]; ++t)
      for (int64_t h = 0; h < H; ++h) {
        reference_attention(c.pool, AttentionCase::kLayer, c.batch, c.q.data(), t, s, h, &ref);
        for (int64_t d = 0; d < head_dim; ++d) err.add(out[(t * H + h) * head_dim + d], ref[d], 1.0);
      }
  return err.worst;
}

// A batch that mixes a multi-token prefill chunk over a cached prefix, a decode with context
// length 1, a decode over a long partial-block context, a fresh prefill, and a full-block decode.
const std::vector<SeqSpec> kMixedBatch = {{13, 5}, {0, 1}, {32, 1}, {0, 7}, {15, 1}};

TEST(paged_attention_matches_double_reference) {
  struct Heads { int64_t H, Hkv, head_dim; };
  const Heads heads[] = {{4, 4, 64}, {8, 2, 128}, {8, 1, 64}, {16, 2, 128}};  // GQA 1, 4, 8, 8
  for (DType dt : kDTypes)
    for (const Heads& hc : heads)
      for (int64_t window : {0, 5}) {
        const double worst = run_attention_case(dt, hc.H, hc.Hkv, hc.head_dim, /*block_size=*/4, window, kMixedBatch);
        if (!(worst <= 1e-5))
          std::printf("  attention %s H=%ld Hkv=%ld hd=%ld window=%ld: worst error %g\n", dtype_name(dt), (long)hc.H,
                      (long)hc.Hkv, (long)hc.head_dim, (long)window, worst);
        CHECK(worst <= 1e-5);
      }
}

TEST(paged_attention_block_sizes_and_single_tokens) {
  for (int64_t block_size : {1, 3, 16})
    for (DType dt : kDTypes) {
      CHECK(run_attention_case(dt, 4, 2, 64, block_size, 0, {{0, 1}}) <= 1e-5);               // context length 1
      CHECK(run_attention_case(dt, 4, 2, 64, block_size, 0, {{40, 3}, {2, 1}}) <= 1e-5);
      CHECK(run_attention_case(dt, 8, 8, 128, block_size, 3, {{0, 20}, {6, 0}, {9, 1}}) <= 1e-5);  // a sequence with no new tokens
    }
}

int main() { return llm_test::run_all(); }
