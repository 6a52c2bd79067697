// test-tensor-parallel.cc: a model loaded as tp_size ranks (each with its slices of the weights,
// its part of the KV pool and its own runner) gives the logits of the whole model, once the ranks
// add their partial sums after o_proj and down_proj.
//
// First the ranks are threads of one process with a plain all-reduce between them (the sum in
// rank order 0..tp-1, so every rank gets the same bits): what is under test is the sharding
// (model-weights.cc) and the runner's use of it. Then the real thing: an Engine as rank 0 with
// ranks 1..tp-1 forked into processes running run_tp_rank (tensor-parallel.h), batched requests
// with preemption giving the greedy tokens of a TP 1 engine, and a rank killed with SIGKILL
// failing the step with an error that names it, in bounded time.
#include <condition_variable>
#include <cmath>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>

#include "common/shared-memory.h"
#include "engine/engine.h"
#include "engine/kv-pool-memory.h"
#include "engine/tensor-parallel.h"
#include "engine-steps.h"
#include "engine/model-runner.h"
#include "model-writer.h"
#include "tp-ranks.h"
#include "test-harness.h"

using namespace llm;
using llm_test::TinyModelSpec;
using llm_test::tp_spec;

namespace {

// Sums x over `world` threads in rank order; every caller gets the total.
class ThreadAllReduce {
 public:
  explicit ThreadAllReduce(int world) : world_(world), slots_(static_cast<size_t>(world)) {}

  Status reduce(int rank, float* x, int64_t n) {
    slots_[static_cast<size_t>(rank)].assign(x, x + n);
    barrier();
    for (int64_t i = 0; i < n; ++i) {
      float s = 0.0f;
      for (int r = 0; r < world_; ++r) s += slots_[static_cast<size_t>(r)][static_cast<size_t>(i)];
      x[i] = s;
    }
    barrier();  // nobody overwrites a slot before every rank has read it
    return Status::Ok();
  }

  // Rank 0's out <- every rank's x (counts[r] floats from rank r), in rank order.
  Status gather(int rank, const float* x, const std::vector<size_t>& counts, float* out) {
    slots_[static_cast<size_t>(rank)].assign(x, x + counts[static_cast<size_t>(rank)]);
    barrier();
    if (rank == 0)
      for (const std::vector<float>& slot : slots_) out = std::copy(slot.begin(), slot.end(), out);
    barrier();
    return Status::Ok();
  }

 private:
  void barrier() {
    std::unique_lock<std::mutex> lock(mu_);
    const int64_t gen = generation_;
    if (++arrived_ == world_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation_ != gen; });
    }
  }
  const int world_;
  std::vector<std::vector<float>> slots_;
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  int64_t generation_ = 0;
};

struct Rank {
  std::unique_ptr<Model> model;
  std::unique_ptr<KvPoolMemory> pool;
  std::unique_ptr<ModelRunner> runner;
  std::vector<float> logits;
  Status status;
};

constexpr int64_t kBlockSize = 4;
constexpr int64_t kBlocks = 16;

// Loads rank `rank` of `tp`, with its own pool (its kv heads) and runner.
Status make_rank(const std::string& dir, int rank, int tp, ThreadAllReduce* ar, Rank* out) {
  ModelLoadOptions o;
  o.tp_rank = rank;
  o.tp_size = tp;
  LLM_RETURN_IF_ERROR(load_model(dir, o, &out->model));
  KVCacheView kv = make_kv_view(*out->model, nullptr, kBlocks, kBlockSize);
  LLM_RETURN_IF_ERROR(KvPoolMemory::create(KvPoolMemory::Kind::host,
                                           static_cast<size_t>(kBlocks * kv.block_bytes()), &out->pool));
  kv.data = out->pool->data();
  CpuRunnerOptions ro;
  ro.num_threads = 1;
  if (ar) {
    ro.tp.all_reduce = [ar, rank](float* x, int64_t n) { return ar->reduce(rank, x, n); };
    ro.tp.gather = [ar, rank](const float* x, const std::vector<size_t>& counts, float* out) {
      return ar->gather(rank, x, counts, out);
    };
  }
  out->runner = make_cpu_runner(*out->model, kv, ro);
  return Status::Ok();
}

// Every rank runs the same steps (a prompt as two chunks, then a decode step), as the engine's
// ranks would, and keeps the logits of every position.
void run_steps(Rank* r, const std::vector<int32_t>& tokens) {
  std::vector<int32_t> table(kBlocks);
  for (int64_t b = 0; b < kBlocks; ++b) table[b] = static_cast<int32_t>((b * 5 + 3) % kBlocks);  // scattered
  const int64_t vocab = r->runner->vocab_size();
  const size_t split = tokens.size() / 2;
  for (auto [begin, end] : {std::pair<size_t, size_t>{0, split}, {split, tokens.size() - 1}, {tokens.size() - 1, tokens.size()}}) {
    const SingleSequenceBatch one({tokens.begin() + begin, tokens.begin() + end}, static_cast<int64_t>(begin), table,
                                  kBlockSize, /*all_logits=*/true);
    std::vector<float> logits(static_cast<size_t>((end - begin) * vocab));
    const bool root = r->model->shard.rank == 0;  // only rank 0 gets the logits
    r->status = r->runner->forward(one.batch(), root ? logits.data() : nullptr);
    if (!root) continue;
    if (!r->status.ok()) return;
    r->logits.insert(r->logits.end(), logits.begin(), logits.end());
  }
}

// The logits of `tp` ranks (gathered on rank 0).
bool tp_logits(const std::string& dir, int tp, const std::vector<int32_t>& tokens, std::vector<float>* out) {
  ThreadAllReduce ar(tp);
  std::vector<Rank> ranks(static_cast<size_t>(tp));
  for (int r = 0; r < tp; ++r) {
    const Status st = make_rank(dir, r, tp, tp > 1 ? &ar : nullptr, &ranks[static_cast<size_t>(r)]);
    if (!st.ok()) {
      std::printf("  rank %d of %d: %s\n", r, tp, st.message().c_str());
      return false;
    }
  }
  std::vector<std::thread> threads;
  for (Rank& r : ranks) threads.emplace_back(run_steps, &r, tokens);
  for (std::thread& t : threads) t.join();
  for (const Rank& r : ranks) {
    if (!r.status.ok()) {
      std::printf("  tp %d: %s\n", tp, r.status.message().c_str());
      return false;
    }

  }
  *out = ranks[0].logits;
  return true;
}

// max |a - b| / max(1, max |a|)
double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0, scale = 1;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, static_cast<double>(std::fabs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(a[i])));
  }
  return worst / scale;
}

void check_model(const TinyModelSpec& spec, const std::vector<int>& tps) {
  llm_test::TempDir tmp;
  const std::string dir = tmp.path() + "/m";
  std::filesystem::create_directories(dir);
  llm_test::write_model(dir, spec);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 11; ++i) tokens.push_back(static_cast<int32_t>((i * 37 + 5) % spec.vocab_size));
  std::vector<float> whole;
  CHECK(tp_logits(dir, 1, tokens, &whole));
  for (int tp : tps) {
    std::vector<float> split;
    CHECK(tp_logits(dir, tp, tokens, &split));
    if (split.size() != whole.size()) continue;
    // Only the order of fp32 sums differs (each rank's partial, then the ranks').
    const double diff = relative_difference(whole, split);
    std::printf("  %s %s, %ld kv heads, tp %d: largest relative logit difference %.2e\n", spec.arch.c_str(),
                dtype_name(spec.dtype), static_cast<long>(spec.num_kv_heads), tp, diff);
    CHECK(diff <= 1e-4);
  }
}

}  // namespace

// Llama with q/k/v/o and MLP biases (o's and down's on rank 0 only): tp 2 splits the kv heads,
// tp 4 replicates each on two ranks.
TEST(llama_with_biases_tp_2_and_4_equal_tp_1) {
  for (DType dt : {DType::f32, DType::bf16}) {
    TinyModelSpec s = tp_spec("LlamaForCausalLM", dt);
    s.attention_bias = true;
    s.mlp_bias = true;
    check_model(s, {2, 4});
  }
}

// Qwen2: q/k/v biases, no o bias; tied embeddings.
TEST(qwen2_tp_2_and_4_equal_tp_1) {
  TinyModelSpec s = tp_spec("Qwen2ForCausalLM", DType::bf16);
  s.tie_word_embeddings = true;
  check_model(s, {2, 4});
}

// One kv head, eight ranks: every rank holds it.
TEST(mqa_tp_8_equals_tp_1) {
  TinyModelSpec s = tp_spec("LlamaForCausalLM", DType::f32);
  s.num_kv_heads = 1;
  check_model(s, {8});
}

TEST(a_split_that_is_not_whole_is_refused_naming_the_numbers) {
  llm_test::TempDir tmp;
  const std::string dir = tmp.path() + "/m";
  std::filesystem::create_directories(dir);
  TinyModelSpec s = tp_spec("LlamaForCausalLM", DType::f32);
  s.num_kv_heads = 4;
  llm_test::write_model(dir, s);
  std::unique_ptr<Model> m;
  ModelLoadOptions o;
  o.tp_size = 3;  // divides neither the 8 heads nor the 96 FFN columns
  Status st = load_model(dir, o, &m);
  CHECK(st.code() == StatusCode::invalid_argument &&
        st.message().find("tp_size 3 does not split this model: it must divide num_attention_heads 8") != std::string::npos);
  o.tp_size = 8;  // divides the heads, but is a multiple of the 4 kv heads: replicated, accepted
  CHECK(load_model(dir, o, &m).ok());
  if (m) CHECK(m->shard.num_kv_heads == 1 && m->shard.num_heads == 1 && m->shard.intermediate == 12);
}

using llm_test::fork_ranks;
using llm_test::reap;
using llm_test::tp_config;

TEST(an_engine_with_rank_processes_gives_the_greedy_tokens_of_tp_1_batched_and_preempted) {
  llm_test::TempDir tmp;
  const std::string dir = tmp.path() + "/m";
  std::filesystem::create_directories(dir);
  llm_test::write_model(dir, tp_spec("LlamaForCausalLM", DType::f32));
  llm_test::Served want;
  {
    std::unique_ptr<Engine> e;
    CHECK(Engine::create(tp_config(dir, 1), &e).ok());
    CHECK(serve_three(*e, &want));
    CHECK(want.preemptions > 0);
  }
  for (int tp : {2, 4}) {  // 2 kv heads: split, then each on two ranks
    EngineConfig cfg = tp_config(dir, tp);
    cfg.kv_shared_memory = true;
    const std::vector<pid_t> pids = fork_ranks(cfg);
    cfg.tp_rank_pids.assign(pids.begin(), pids.end());
    llm_test::Served got;
    {
      std::unique_ptr<Engine> e;
      const Status st = Engine::create(cfg, &e);
      if (!st.ok()) std::printf("  tp %d: %s\n", tp, st.message().c_str());
      CHECK(st.ok());
      if (!e) {
        reap(pids, 5, false);
        continue;
      }
      const std::vector<KvRegion> regions = e->kv_regions();
      CHECK(static_cast<int>(regions.size()) == tp);
      for (const KvRegion& r : regions) {
        CHECK(r.view.num_kv_heads == (tp == 2 ? 1 : 1) && r.model_kv_heads == 2 && !r.shm_name.empty());
        CHECK(r.first_kv_head == (tp == 2 ? r.tp_rank : r.tp_rank / 2));
      }
      CHECK(serve_three(*e, &got));
      std::printf("  tp %d: %lld preemptions, tokens %s those of tp 1\n", tp, static_cast<long long>(got.preemptions),
                  got.tokens == want.tokens ? "equal to" : "DIFFERENT from");
      CHECK(got.tokens == want.tokens);
      CHECK(got.preemptions == want.preemptions);
    }
    CHECK(reap(pids, 10));  // rank 0 stopped them: exit 0
  }
}

TEST(a_tp_size_that_does_not_split_the_model_is_refused_before_any_rank_is_awaited) {
  llm_test::TempDir tmp;
  const std::string dir = tmp.path() + "/m";
  std::filesystem::create_directories(dir);
  llm_test::write_model(dir, tp_spec("LlamaForCausalLM", DType::f32));
  std::unique_ptr<Engine> e;
  const auto t0 = std::chrono::steady_clock::now();
  const Status st = Engine::create(tp_config(dir, 3), &e);
  CHECK(st.code() == StatusCode::invalid_argument && st.message().find("tp_size 3") != std::string::npos);
  CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < 2);
}

TEST(a_killed_rank_fails_the_step_naming_it_and_the_others_leave) {
  llm_test::TempDir tmp;
  const std::string dir = tmp.path() + "/m";
  std::filesystem::create_directories(dir);
  llm_test::write_model(dir, tp_spec("LlamaForCausalLM", DType::f32));
  EngineConfig cfg = tp_config(dir, 3 - 1 + 2);  // 4 ranks
  const std::vector<pid_t> pids = fork_ranks(cfg);
  cfg.tp_rank_pids.assign(pids.begin(), pids.end());
  std::unique_ptr<Engine> e;
  CHECK(Engine::create(cfg, &e).ok());
  if (!e) return;
  kill(pids[0], SIGKILL);  // rank 1
  const StepResult s = llm_test::step_after_a_kill(*e, 1);
  CHECK(s.outputs.size() == 1 && s.outputs[0].error.find("rank 1") != std::string::npos);
  e.reset();
  CHECK(reap(pids, 10, false));  // ranks 2 and 3 leave (they report the broken group)
}

// The notes CUDA ranks send rank 0 (their pools' IPC handles): every rank's, in rank order, the
// longest allowed one intact; a longer one is refused before anything is sent.
TEST(notes_from_every_rank_reach_rank_0_in_rank_order_and_all_gather_reaches_every_rank) {
  const std::string group = SharedMemory::unique_name("tp");
  const int n = 4;
  auto note_of = [](int r) { return r == 2 ? std::string(TpGroup::kMaxNoteBytes, 'x') : "rank " + std::to_string(r); };
  std::fflush(stdout);
  std::vector<pid_t> pids;
  for (int r = 1; r < n; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      std::unique_ptr<TpGroup> g;
      Status st = TpGroup::join(group, r, n, {}, &g);
      if (st.ok()) st = g->gather_notes(note_of(r), nullptr);
      std::vector<std::string> all;
      if (st.ok()) st = g->all_gather_notes(note_of(r), &all);
      const bool got = all.size() == 4 && all[0] == note_of(0) && all[2] == note_of(2) && all[3] == note_of(3);
      _exit(st.ok() && got ? 0 : 1);
    }
    pids.push_back(pid);
  }
  std::unique_ptr<TpGroup> g;
  CHECK(TpGroup::join(group, 0, n, std::vector<int>(pids.begin(), pids.end()), &g).ok());
  if (!g) return;
  CHECK(g->gather_notes(std::string(TpGroup::kMaxNoteBytes + 1, 'y'), nullptr).code() == StatusCode::invalid_argument);
  std::vector<std::string> notes;
  CHECK(g->gather_notes("", &notes).ok());
  CHECK(notes.size() == 4 && notes[0].empty() && notes[1] == "rank 1" && notes[2] == note_of(2) && notes[3] == "rank 3");
  CHECK(g->all_gather_notes(note_of(0), &notes).ok());
  CHECK(notes.size() == 4 && notes[0] == "rank 0" && notes[1] == "rank 1" && notes[2] == note_of(2));
  CHECK(reap(pids, 10));
}

int main() { return llm_test::run_all(); }
