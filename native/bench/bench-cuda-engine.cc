// bench-cuda-engine.cc: the engine on CUDA, end to end (scheduler, runner, on-device greedy), on a
// model directory (scripts/gpu-reference.py make-8b writes one with Llama-3.1-8B's shape).
//
//   bench-cuda-engine MODEL_DIR [--tp N]
//
// Measures, on one engine (device cuda, bf16, block size 16, prefix caching off):
//   bandwidth   cudaMemcpy device to device, (read + write bytes) / time, the HBM roofline's base
//   decode      batch 1, 32, 64: 128-token prompts, 16 warm-up steps (graph capture), then the
//               mean of 64 timed steps; ms/step and tokens/s. Batch 1 also against the roofline:
//               weight bytes read per token / bandwidth, and the fraction reached.
//               Batch 1 is measured again with CUDA graphs off (an engine of its own).
//   prefill     one 2,048-token prompt per step, best of 3: tokens/s.
//   per op      batch 1 and 32 without graphs, traced: GPU time per op (cuda_op_trace_start).
// With --tp N: after those, an engine of N tensor-parallel ranks (ranks 1..N-1 are new processes
// of this program, on GPU rank % the GPUs: on one GPU they share it) against the TP 1 engine
// without graphs (a TP engine runs eagerly): decode batch 1 and 32, prefill 2048, and the
// difference per step, which on one GPU is the all-reduce's cost through host memory.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/model-runner-cuda.h"
#include "../tests/tp-ranks.h"

using namespace llm;

namespace {

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void die(const Status& st, const char* what) {
  if (st.ok()) return;
  std::fprintf(stderr, "bench-cuda-engine: %s: %s %s\n", what, st.code_name(), st.message().c_str());
  std::exit(1);
}

double d2d_bandwidth_gbs() {
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) return 0;
  cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
  cudaDeviceSynchronize();
  const int reps = 20;
  const double t0 = now_ms();
  for (int i = 0; i < reps; ++i) cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
  cudaDeviceSynchronize();
  const double ms = now_ms() - t0;
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes * reps / (ms * 1e-3) / 1e9;
}

std::mt19937 rng(7);

std::unique_ptr<Request> request(const std::string& id, int64_t prompt_len, int64_t vocab, int64_t max_tokens) {
  auto r = std::make_unique<Request>();
  r->request_id = id;
  std::uniform_int_distribution<int32_t> tok(1, static_cast<int32_t>(vocab - 1));
  for (int64_t i = 0; i < prompt_len; ++i) r->prompt_token_ids.push_back(tok(rng));
  r->params.temperature = 0.0f;
  r->params.ignore_eos = true;
  r->params.max_tokens = max_tokens;
  return r;
}

std::unique_ptr<Engine> make_engine(const std::string& dir, bool graphs, int tp = 1, std::vector<pid_t>* ranks = nullptr) {
  EngineConfig cfg;
  cfg.model_dir = dir;
  cfg.tp_size = tp;
  if (tp > 1) {
    cfg.tp_group = SharedMemory::unique_name("tp");
    *ranks = llm_test::spawn_ranks(cfg);
    cfg.tp_rank_pids.assign(ranks->begin(), ranks->end());
  }
  cfg.device = "cuda";
  cfg.cuda_graphs = graphs;
  cfg.max_model_len = 4096;
  cfg.max_num_seqs = 64;
  cfg.max_num_batched_tokens = 2048;
  cfg.enable_prefix_caching = false;
  std::unique_ptr<Engine> e;
  const double t0 = now_ms();
  die(Engine::create(cfg, &e), "creating the engine");
  std::printf("engine: %s, %lld KV blocks, loaded in %.1f s\n", e->info().kernels.c_str(),
              static_cast<long long>(e->info().num_kv_blocks), (now_ms() - t0) / 1e3);
  return e;
}

// Decode at batch B: ms per step (every request decoding one token). With `trace`, the timed
// steps also print the GPU time per op (an engine without graphs: graph steps are not traced).
double decode_ms(Engine& e, int64_t B, int tag, bool trace = false) {
  const int64_t vocab = e.model().config.vocab_size;
  const int warm = 16, timed = 64;
  for (int64_t i = 0; i < B; ++i)
    die(e.add_request(request("d" + std::to_string(tag) + "-" + std::to_string(i), 128, vocab, 1 + warm + timed + 4)), "add");
  StepResult out;
  // Steps until every request has its first token (every prompt done), then warm-up steps.
  std::set<std::string> started;
  for (int guard = 0; guard < 100 && static_cast<int64_t>(started.size()) < B; ++guard) {
    die(e.step(&out), "step");
    for (const RequestOutput& o : out.outputs)
      if (!o.new_token_ids.empty()) started.insert(o.request_id);
  }
  for (int i = 0; i < warm; ++i) die(e.step(&out), "step");
  if (trace) cuda_op_trace_start();
  const double t0 = now_ms();
  for (int i = 0; i < timed; ++i) {
    die(e.step(&out), "step");
    if (out.num_scheduled_tokens != B) std::fprintf(stderr, "warning: step ran %lld tokens, not %lld\n",
                                                    static_cast<long long>(out.num_scheduled_tokens), static_cast<long long>(B));
  }
  const double ms = (now_ms() - t0) / timed;
  if (trace)
    std::printf("GPU time per op, batch %lld without graphs (traced: %.2f ms/step):\n%s", static_cast<long long>(B), ms,
                cuda_op_trace_stop().c_str());
  while (e.has_work()) die(e.step(&out), "step");
  return ms;
}

double prefill_tok_s(Engine& e, int64_t len) {
  const int64_t vocab = e.model().config.vocab_size;
  double best = 1e30;
  for (int round = 0; round < 3; ++round) {
    die(e.add_request(request("p" + std::to_string(round), len, vocab, 1)), "add");
    StepResult out;
    const double t0 = now_ms();
    die(e.step(&out), "step");
    const double ms = now_ms() - t0;
    if (out.num_scheduled_tokens != len) std::fprintf(stderr, "warning: the prefill step ran %lld tokens\n",
                                                      static_cast<long long>(out.num_scheduled_tokens));
    best = std::min(best, ms);
    while (e.has_work()) die(e.step(&out), "step");
  }
  return len * 1000.0 / best;
}

// TP N against TP 1 without graphs: decode batch 1 and 32, prefill 2048.
void compare_tp(const std::string& dir, int tp) {
  double ms1[2] = {0, 0}, prefill1 = 0;
  {
    auto e = make_engine(dir, false);
    ms1[0] = decode_ms(*e, 1, 200);
    ms1[1] = decode_ms(*e, 32, 201);
    prefill1 = prefill_tok_s(*e, 2048);
  }
  std::vector<pid_t> ranks;
  {
    auto e = make_engine(dir, false, tp, &ranks);
    const int64_t batches[2] = {1, 32};
    for (int i = 0; i < 2; ++i) {
      const double ms = decode_ms(*e, batches[i], 300 + i);
      std::printf("tp %d decode batch %2lld: %7.2f ms/step against %7.2f at tp 1 without graphs (%+.2f ms)\n", tp,
                  static_cast<long long>(batches[i]), ms, ms1[i], ms - ms1[i]);
    }
    std::printf("tp %d prefill 2048 tokens: %.0f tokens/s against %.0f at tp 1\n", tp, prefill_tok_s(*e, 2048), prefill1);
  }
  llm_test::reap(ranks, 30);
}

}  // namespace

int main(int argc, char** argv) {
  if (llm_test::run_rank_from_args(argc, argv)) return 0;  // not reached: a rank exits
  if (argc != 2 && !(argc == 4 && std::string(argv[2]) == "--tp" && std::atoi(argv[3]) > 1)) {
    std::fprintf(stderr, "usage: bench-cuda-engine MODEL_DIR [--tp N]   (N >= 2)\n");
    return 2;
  }
  const std::string dir = argv[1];
  const int tp = argc == 4 ? std::atoi(argv[3]) : 1;
  const double bw = d2d_bandwidth_gbs();
  std::printf("bandwidth (cudaMemcpy D2D, read + write): %.0f GB/s\n", bw);

  double eager_b1 = 0;
  {
    auto e = make_engine(dir, false);
    eager_b1 = decode_ms(*e, 1, 0);
    decode_ms(*e, 1, 100, true);
    decode_ms(*e, 32, 101, true);
  }
  auto e = make_engine(dir, true);
  const double weight_gb = static_cast<double>(e->model().weight_bytes) / 1e9;
  const double roofline_ms = weight_gb / bw * 1e3;
  const double b1 = decode_ms(*e, 1, 1);
  std::printf("decode batch  1: %7.2f ms/token; roofline %.2f ms (%.2f GB of weights / %.0f GB/s): %.0f%% of it\n",
              b1, roofline_ms, weight_gb, bw, 100.0 * roofline_ms / b1);
  std::printf("                 %7.2f ms/token without CUDA graphs\n", eager_b1);
  for (int64_t B : {32, 64}) {
    const double ms = decode_ms(*e, B, static_cast<int>(B));
    std::printf("decode batch %2lld: %7.2f ms/step, %8.1f tokens/s\n", static_cast<long long>(B), ms, B * 1000.0 / ms);
  }
  std::printf("prefill 2048 tokens: %.0f tokens/s\n", prefill_tok_s(*e, 2048));
  e.reset();
  if (tp > 1) compare_tp(dir, tp);
  return 0;
}
