// tp-ranks.h: a tensor-parallel engine in tests: ranks 1..N-1 as processes running run_tp_rank
// (tensor-parallel.h), the engine itself as rank 0, and the requests both tests serve.
//
// fork_ranks forks them (CPU only: a child of a process that has used CUDA cannot use it);
// spawn_ranks starts this test program again as each rank (`--tp-rank R ...`), which the test's
// main hands to run_rank_from_args, so CUDA ranks start fresh.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "common/shared-memory.h"
#include "engine-steps.h"
#include "engine/engine.h"
#include "engine/tensor-parallel.h"
#include "model-writer.h"

namespace llm_test {

// The tensor-parallel tests' model: 8 query heads and 2 kv heads (TP 2 splits them, TP 4
// replicates each on two ranks), FFN 96, vocabulary 64.
inline TinyModelSpec tp_spec(const std::string& arch, llm::DType dtype) {
  TinyModelSpec s;
  s.arch = arch;
  s.vocab_size = 64;
  s.hidden_size = 64;
  s.num_heads = 8;
  s.num_kv_heads = 2;
  s.intermediate_size = 96;
  s.dtype = dtype;
  return s;
}

// A small pool for three requests of 21 tokens (they need 18 blocks: preemption), prompts in
// chunks, one thread per rank.
inline llm::EngineConfig tp_config(const std::string& dir, int tp, const std::string& device = "cpu") {
  llm::EngineConfig c;
  c.model_dir = dir;
  c.device = device;
  c.block_size = 4;
  c.num_kv_blocks = 14;
  c.max_num_seqs = 8;
  c.max_num_batched_tokens = 16;
  c.num_threads = 1;
  c.tp_size = tp;
  if (tp > 1) c.tp_group = llm::SharedMemory::unique_name("tp");
  return c;
}

inline void exit_rank(int rank, const llm::Status& st) {
  if (!st.ok()) std::printf("  rank %d: %s\n", rank, st.message().c_str());
  std::fflush(stdout);
  _exit(st.ok() ? 0 : 1);
}

// Forks ranks 1..cfg.tp_size-1 of cfg's group, each running run_tp_rank (exit 0 when rank 0
// stopped it, 1 otherwise); their pids.
inline std::vector<pid_t> fork_ranks(const llm::EngineConfig& cfg) {
  std::fflush(stdout);
  std::vector<pid_t> pids;
  for (int r = 1; r < cfg.tp_size; ++r) {
    const pid_t pid = fork();
    if (pid == 0) exit_rank(r, llm::run_tp_rank(cfg, r));
    pids.push_back(pid);
  }
  return pids;
}

// The same as new processes of this program: `--tp-rank R MODEL_DIR TP GROUP DEVICE BLOCK_SIZE
// MAX_BATCHED_TOKENS SHARED`, tp_config's config with cfg's block size, token budget and
// kv_shared_memory (what a rank's pool, activations and start-up exchange depend on).
inline std::vector<pid_t> spawn_ranks(const llm::EngineConfig& cfg) {
  std::fflush(stdout);
  std::vector<pid_t> pids;
  for (int r = 1; r < cfg.tp_size; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      const std::string rank = std::to_string(r), tp = std::to_string(cfg.tp_size);
      const std::string block = std::to_string(cfg.block_size), budget = std::to_string(cfg.max_num_batched_tokens);
      execl("/proc/self/exe", "tp-rank", "--tp-rank", rank.c_str(), cfg.model_dir.c_str(), tp.c_str(),
            cfg.tp_group.c_str(), cfg.device.c_str(), block.c_str(), budget.c_str(), cfg.kv_shared_memory ? "1" : "0",
            static_cast<char*>(nullptr));
      std::printf("  rank %d: exec: %s\n", r, std::strerror(errno));
      _exit(1);
    }
    pids.push_back(pid);
  }
  return pids;
}

// A test's main first: true when this process is a rank spawn_ranks started (it never returns
// then).
inline bool run_rank_from_args(int argc, char** argv) {
  if (argc != 10 || std::strcmp(argv[1], "--tp-rank") != 0) return false;
  const int rank = std::atoi(argv[2]);
  llm::EngineConfig cfg = tp_config(argv[3], std::atoi(argv[4]), argv[6]);
  cfg.tp_group = argv[5];
  cfg.block_size = std::atoll(argv[7]);
  cfg.max_num_batched_tokens = std::atoll(argv[8]);
  cfg.kv_shared_memory = std::strcmp(argv[9], "1") == 0;
  exit_rank(rank, llm::run_tp_rank(cfg, rank));
  return true;
}

// Whether every pid exits within limit_s with status 0 (or, want_zero false, at all).
inline bool reap(const std::vector<pid_t>& pids, double limit_s, bool want_zero = true) {
  const auto t0 = std::chrono::steady_clock::now();
  bool ok = true;
  for (pid_t p : pids) {
    int status = 0;
    pid_t got = 0;
    while ((got = waitpid(p, &status, WNOHANG)) == 0 &&
           std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < limit_s)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (got == 0) {
      kill(p, SIGKILL);
      waitpid(p, &status, 0);
      std::printf("  rank pid %d still running after %.0f s\n", static_cast<int>(p), limit_s);
      ok = false;
    } else if (want_zero && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
      ok = false;
    }
  }
  return ok;
}

struct Served {
  std::vector<std::vector<int32_t>> tokens;             // each request's
  std::vector<std::vector<llm::TokenLogprobs>> logprobs;  // each request's, with top_logprobs > 0
  int64_t preemptions = 0;
};

// Three greedy requests at once, stepped to the end (with the top `top_logprobs` of each token
// when > 0).
inline bool serve_three(llm::Engine& e, Served* out, int top_logprobs = -1) {
  for (int i = 0; i < 3; ++i) {
    std::vector<int32_t> prompt;
    for (int j = 0; j < 9; ++j) prompt.push_back(static_cast<int32_t>((i * 11 + j * 7 + 3) % 64));
    auto r = greedy_request("r" + std::to_string(i), prompt, 0, false, 12);
    r->params.logprobs = top_logprobs;
    if (!e.add_request(std::move(r)).ok()) return false;
  }
  out->tokens.assign(3, {});
  out->logprobs.assign(3, {});
  int done = 0;
  for (int step = 0; step < 500 && done < 3; ++step) {
    llm::StepResult s;
    if (!e.step(&s).ok()) return false;
    for (const llm::RequestOutput& o : s.outputs) {
      const size_t i = static_cast<size_t>(o.request_id[1] - '0');
      out->tokens[i].insert(out->tokens[i].end(), o.new_token_ids.begin(), o.new_token_ids.end());
      out->logprobs[i].insert(out->logprobs[i].end(), o.logprobs.begin(), o.logprobs.end());
      if (o.finish_reason != llm::FinishReason::none) ++done;
    }
    out->preemptions = s.metrics.num_preemptions;
  }
  return done == 3;
}

// The first step after rank `rank` was killed: one new request, one step, which must fail within
// 5 s naming "rank <rank>" and fail the request. The step's outputs, for further checks.
inline llm::StepResult step_after_a_kill(llm::Engine& e, int rank) {
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(e.add_request(greedy_request("r0", {1, 2, 3, 4, 5})).ok());
  llm::StepResult s;
  const llm::Status st = e.step(&s);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("  step after the kill (%.2f s): %s\n", took, st.message().c_str());
  CHECK(!st.ok() && st.message().find("rank " + std::to_string(rank)) != std::string::npos);
  CHECK(took < 5);
  CHECK(s.outputs.size() == 1 && s.outputs[0].finish_reason == llm::FinishReason::error);
  return s;
}

}  // namespace llm_test
