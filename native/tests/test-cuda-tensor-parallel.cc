// test-cuda-tensor-parallel.cc: tensor parallelism on CUDA (model-runner-cuda.h). An Engine on
// CUDA is rank 0; ranks 1..N-1 are new processes of this program (tp-ranks.h) on the GPUs the
// machine has, several to a GPU when they outnumber the GPUs, so one GPU checks TP 2 and 4. Each
// rank holds its slices of the weights and its kv heads of the pool; o and down's partial sums
// meet in the group's host all-reduce. Against a TP 1 engine on the same device:
//   - three batched greedy requests with preemption: the same tokens (up to where TP 1's top two
//     were too close for the dtype to decide) and the top 5 logprobs of each token within a
//     bound, on f32 and bf16 models, kv heads split (TP 2) and replicated (TP 4), a tied
//     lm_head split by vocabulary rows;
//   - a rank killed with SIGKILL: the step fails naming it and the other ranks leave;
//   - the all-reduce (KVSERVE_TP_ALL_REDUCE): ranks that share a GPU refuse ipc and nccl naming
//     why and serve with host; with a GPU per rank, ipc and nccl each against TP 1 (reported as
//     skipped with fewer GPUs, or without NCCL).
// Without a usable device: SKIP (exit 77).
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "cuda-test-main.h"
#include "kernels/cuda/all-reduce.h"
#include "kernels/cuda/cuda-common.h"
#include "engine/engine.h"
#include "model-writer.h"
#include "test-harness.h"
#include "tp-ranks.h"

using namespace llm;
using llm_test::Served;
using llm_test::TinyModelSpec;
using llm_test::tp_spec;

namespace {

constexpr int kTopLogprobs = 5;

// Serves the three requests on a CUDA engine of `tp` ranks (its other ranks spawned here, with
// KVSERVE_TP_ALL_REDUCE as it is set). *create_error: why the engine did not start.
bool serve_on_cuda(const std::string& dir, int tp, Served* out, Status* create_error = nullptr) {
  EngineConfig cfg = llm_test::tp_config(dir, tp, "cuda");
  const std::vector<pid_t> pids = tp > 1 ? llm_test::spawn_ranks(cfg) : std::vector<pid_t>{};
  cfg.tp_rank_pids.assign(pids.begin(), pids.end());
  bool ok = false;
  {
    std::unique_ptr<Engine> e;
    const Status st = Engine::create(cfg, &e);
    if (create_error) *create_error = st;
    if (!st.ok()) std::printf("  tp %d: %s\n", tp, st.message().c_str());
    if (e) {
      if (tp > 1) std::printf("  tp %d: %s\n", tp, e->info().kernels.c_str());
      ok = llm_test::serve_three(*e, out, kTopLogprobs);
    }
  }
  // Rank 0 stopped them (exit 0), or failed and they left.
  return llm_test::reap(pids, 20, ok) && ok;
}

// TP n against TP 1: tokens equal up to the first token whose TP 1 top two logprobs were within
// `margin` (the paths may part there), and the top logprobs of every token compared within `bound`.
void compare(const Served& want, const Served& got, double bound, double margin, const std::string& what) {
  double worst = 0;
  int compared = 0, close = 0;
  for (size_t r = 0; r < want.tokens.size(); ++r) {
    const auto& wl = want.logprobs[r];
    const auto& gl = got.logprobs[r];
    CHECK(wl.size() == want.tokens[r].size() && gl.size() == got.tokens[r].size());
    for (size_t i = 0; i < std::min(wl.size(), gl.size()); ++i) {
      CHECK(wl[i].top_logprobs.size() == static_cast<size_t>(kTopLogprobs) &&
            gl[i].top_logprobs.size() == static_cast<size_t>(kTopLogprobs));
      if (wl[i].top_logprobs.size() < 2 || gl[i].top_logprobs.size() != wl[i].top_logprobs.size()) return;
      for (size_t k = 0; k < wl[i].top_logprobs.size(); ++k)
        worst = std::max(worst, static_cast<double>(std::fabs(wl[i].top_logprobs[k] - gl[i].top_logprobs[k])));
      ++compared;
      if (wl[i].top_logprobs[0] - wl[i].top_logprobs[1] < margin) {
        ++close;
        break;  // TP 1's choice was within rounding: the rest of this request may differ
      }
      CHECK(wl[i].token_id == gl[i].token_id);
      if (wl[i].token_id != gl[i].token_id) break;
    }
  }
  std::printf("  %s: %d tokens compared (%d stopped at a close call), largest top-%d logprob difference %.2e (bound %.0e)\n",
              what.c_str(), compared, close, kTopLogprobs, worst, bound);
  CHECK(compared >= 18);
  CHECK(worst <= bound);
}

void check_model(const TinyModelSpec& spec, const std::vector<int>& tps) {
  llm_test::TempDir tmp;
  const std::string dir = tmp.path() + "/m";
  std::filesystem::create_directories(dir);
  llm_test::write_model(dir, spec);
  const bool f32 = spec.dtype == DType::f32;
  Served want;
  CHECK(serve_on_cuda(dir, 1, &want));
  CHECK(want.preemptions > 0);
  for (int tp : tps) {
    Served got;
    CHECK(serve_on_cuda(dir, tp, &got));
    if (got.tokens.size() != want.tokens.size()) continue;
    const std::string what = spec.arch + " " + dtype_name(spec.dtype) + ", " + std::to_string(spec.num_kv_heads) +
                             " kv heads, tp " + std::to_string(tp);
    // f32: only the order of fp32 sums differs. bf16: each sum is rounded once, as TP 1's GEMM
    // output is, so a value on a rounding edge may land one bf16 step away.
    compare(want, got, f32 ? 1e-4 : 5e-2, f32 ? 1e-4 : 1e-1, what);
    if (f32) CHECK(got.tokens == want.tokens);
    CHECK(got.preemptions == want.preemptions);
  }
}

}  // namespace

TEST(llama_with_biases_tp_2_and_4_on_cuda_match_tp_1) {
  for (DType dt : {DType::f32, DType::bf16}) {
    TinyModelSpec s = tp_spec("LlamaForCausalLM", dt);
    s.attention_bias = true;  // o's and down's biases on rank 0 only
    s.mlp_bias = true;
    check_model(s, {2, 4});
  }
}

TEST(qwen2_tied_tp_2_and_4_on_cuda_match_tp_1) {
  TinyModelSpec s = tp_spec("Qwen2ForCausalLM", DType::bf16);
  s.tie_word_embeddings = true;  // each rank's lm_head rows are a slice of the embedding
  check_model(s, {2, 4});
}

TEST(a_killed_rank_on_cuda_fails_the_step_naming_it_and_the_others_leave) {
  llm_test::TempDir tmp;
  const std::string dir = tmp.path() + "/m";
  std::filesystem::create_directories(dir);
  llm_test::write_model(dir, tp_spec("LlamaForCausalLM", DType::bf16));
  EngineConfig cfg = llm_test::tp_config(dir, 4, "cuda");
  const std::vector<pid_t> pids = llm_test::spawn_ranks(cfg);
  cfg.tp_rank_pids.assign(pids.begin(), pids.end());
  std::unique_ptr<Engine> e;
  const Status created = Engine::create(cfg, &e);
  if (!created.ok()) std::printf("  %s\n", created.message().c_str());
  CHECK(created.ok());
  if (!e) {
    llm_test::reap(pids, 10, false);
    return;
  }
  kill(pids[1], SIGKILL);  // rank 2
  llm_test::step_after_a_kill(*e, 2);
  e.reset();
  CHECK(llm_test::reap(pids, 10, false));
}

// KVSERVE_TP_ALL_REDUCE=mode for this scope (ranks spawned inside it inherit it).
struct AllReduceMode {
  explicit AllReduceMode(const char* mode) { setenv("KVSERVE_TP_ALL_REDUCE", mode, 1); }
  ~AllReduceMode() { unsetenv("KVSERVE_TP_ALL_REDUCE"); }
};

TEST(the_all_reduce_method_is_chosen_and_one_the_gpus_cannot_take_is_refused_naming_why) {
  llm_test::TempDir tmp;
  const std::string dir = tmp.path() + "/m";
  std::filesystem::create_directories(dir);
  const TinyModelSpec spec = tp_spec("LlamaForCausalLM", DType::bf16);
  llm_test::write_model(dir, spec);
  Served want;
  CHECK(serve_on_cuda(dir, 1, &want));
  {
    AllReduceMode m("bogus");
    Served got;
    Status st;
    CHECK(!serve_on_cuda(dir, 2, &got, &st));
    CHECK(st.message().find("KVSERVE_TP_ALL_REDUCE=bogus: expected auto, host, ipc or nccl") != std::string::npos);
  }
  {
    AllReduceMode m("host");
    Served got;
    CHECK(serve_on_cuda(dir, 2, &got));
    compare(want, got, 5e-2, 1e-1, "tp 2, host");
  }
  const int gpus = llm::cuda::device_count();
  if (gpus < 2) {
    // One GPU: both ranks on it, so neither device method can run.
    for (const char* mode : {"ipc", "nccl"}) {
      AllReduceMode m(mode);
      Served got;
      Status st;
      CHECK(!serve_on_cuda(dir, 2, &got, &st));
      CHECK(st.code() == StatusCode::device_unavailable && st.message().find("shares its GPU") != std::string::npos);
    }
    std::printf("SKIP: ipc and nccl sums between GPUs (this machine has %d GPU)\n", gpus);
    llm_test::record_coverage("tensor parallelism on CUDA: device all-reduce between GPUs", false, "fewer than 2 GPUs");
    return;
  }
  std::string nccl_why;
  for (const char* mode : {"ipc", "nccl"}) {
    if (std::string(mode) == "nccl" && !llm::cuda::nccl_available(&nccl_why)) {
      std::printf("SKIP: nccl (%s)\n", nccl_why.c_str());
      llm_test::record_coverage("tensor parallelism on CUDA: NCCL", false, nccl_why);
      continue;
    }
    AllReduceMode m(mode);
    Served got;
    Status st;
    const bool served = serve_on_cuda(dir, 2, &got, &st);
    if (!served && std::string(mode) == "ipc" && st.message().find("peer access") != std::string::npos) {
      std::printf("SKIP: ipc (%s)\n", st.message().c_str());
      continue;
    }
    CHECK(served);
    if (served) compare(want, got, 5e-2, 1e-1, std::string("tp 2, ") + mode);
  }
}

int main(int argc, char** argv) {
  if (llm_test::run_rank_from_args(argc, argv)) return 0;  // not reached: a rank exits
  return llm_test::run_all_on_cuda();
}
