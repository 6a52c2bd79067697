// test-cuda-ipc.cc: disaggregated prefill/decode on one GPU through the transfer agent's CUDA IPC
// backend (native/transfer/device-ipc.h), the way a prefill and a decode worker use it:
//   - this process is the decode side: a CUDA engine parks a request with blocks for its prompt;
//   - a child process (CUDA IPC cannot open a handle in the process that exported it) is the
//     prefill side: a CUDA engine computes the prompt but its last token and holds the blocks;
//   - write: the prefill agent copies the blocks device to device into the decode pool and sends
//     a notification; read: the decode agent copies the held blocks out of the prefill pool;
//   - the decode engine completes the request. Its greedy tokens must equal those of a CUDA
//     engine serving the request alone (an f32 model, so the two paths agree to rounding).
// Then the same between tensor-parallel workers (model-runner-cuda.h): decode TP 2 from prefill
// TP 1 and decode TP 1 from prefill TP 2, every rank's pool its own allocation, exported by its
// process and opened by the other side's agent, the kv heads copied between the splits.
// Also: tcp and shm are refused for GPU pools, and the agents' byte counts add up.
// The child is this program run again (fork + exec, so it starts without the parent's CUDA
// state) with --prefill-child; it answers one line per command on its stdout. Tensor-parallel
// ranks are this program again too (tp-ranks.h).
//
// Without a usable device it prints "SKIP: no CUDA device (reason)" and exits 77 (ctest: skipped).
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "engine/model-runner-cuda.h"
#include "engine-steps.h"
#include "model-writer.h"
#include "cuda-test-main.h"
#include "test-harness.h"
#include "tp-ranks.h"
#include "transfer/transfer-agent.h"

using namespace llm;
using llm_test::awaiting;
using llm_test::finished;
using llm_test::Seen;
using llm_test::step_until;

namespace {

constexpr int64_t kBlockSize = 16;
constexpr int64_t kVocab = 64;

// A CUDA engine with a shared pool; at tp > 1 its ranks 1..tp-1 are started here (*ranks).
std::unique_ptr<Engine> cuda_engine(const std::string& dir, int tp = 1, std::vector<pid_t>* ranks = nullptr) {
  EngineConfig c;
  c.model_dir = dir;
  c.device = "cuda";
  c.block_size = kBlockSize;
  c.num_kv_blocks = 64;
  c.max_num_batched_tokens = 128;
  c.kv_shared_memory = true;
  c.tp_size = tp;
  if (tp > 1) {
    c.tp_group = SharedMemory::unique_name("tp");
    *ranks = llm_test::spawn_ranks(c);
    c.tp_rank_pids.assign(ranks->begin(), ranks->end());
  }
  std::unique_ptr<Engine> e;
  Status st = Engine::create(c, &e);
  if (!st.ok()) std::fprintf(stderr, "  Engine::create (tp %d): %s\n", tp, st.message().c_str());
  return e;
}

transfer::Layout layout_of(const KvRegion& r) {
  transfer::Layout l;
  l.num_blocks = r.view.num_blocks;
  l.block_bytes = r.view.block_bytes();
  l.num_layers = r.view.num_layers;
  l.block_size = r.view.block_size;
  l.num_kv_heads = r.view.num_kv_heads;
  l.head_dim = r.view.head_dim;
  l.dtype = r.view.dtype;
  return l;
}

// An agent for the engine's pool: one region per rank, rank 0's by its device pointer, the
// others' by the IPC handles their processes exported (as the addon's registerRegions does).
std::unique_ptr<transfer::Agent> agent_for(const std::string& name, const Engine& e) {
  transfer::AgentConfig cfg;
  cfg.name = name;
  std::unique_ptr<transfer::Agent> a;
  if (!transfer::Agent::create(cfg, &a).ok()) return nullptr;
  const std::vector<KvRegion> regions = e.kv_regions();
  transfer::Layout model = layout_of(regions[0]);
  model.num_kv_heads = regions[0].model_kv_heads;
  transfer::block_bytes_of(model, model.num_kv_heads, &model.block_bytes);
  std::vector<transfer::Agent::DeviceRegion> specs;
  for (const KvRegion& r : regions) {
    transfer::Agent::DeviceRegion d;
    d.spec.bytes = static_cast<int64_t>(r.bytes);
    d.spec.tp_rank = r.tp_rank;
    d.spec.first_kv_head = r.first_kv_head;
    d.spec.num_kv_heads = r.view.num_kv_heads;
    d.spec.cuda_ipc_handle = r.device_ipc_handle;
    d.spec.cuda_device = r.device_uuid;
    d.data = r.device_data;
    specs.push_back(d);
  }
  Status st = a->register_device_regions(specs, model);
  if (!st.ok()) {
    std::fprintf(stderr, "  register_device_regions: %s\n", st.message().c_str());
    return nullptr;
  }
  return a;
}

std::string join(const std::vector<int32_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s.empty() ? "-" : s;
}

std::vector<int32_t> split(const std::string& s) {
  std::vector<int32_t> v;
  if (s == "-") return v;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) v.push_back(static_cast<int32_t>(std::stol(item)));
  return v;
}

std::unique_ptr<Request> request(const std::string& id, std::vector<int32_t> prompt, int64_t external,
                                 bool prefill_only) {
  return llm_test::greedy_request(id, std::move(prompt), external, prefill_only, 12);
}

// ---- the prefill side (child process) ----------------------------------------------------------
// Commands (stdin), one line each, answered by one line (stdout):
//   connect JSON                      -> ok | error MSG
//   prefill ID PROMPT DECODE_BLOCKS write  -> written N (N blocks copied, then "done ID" notified)
//   prefill ID PROMPT - hold          -> held BLOCKS (kept until release)
//   release ID                        -> ok
//   quit
int prefill_child(const std::string& dir, int tp) {
  std::vector<pid_t> ranks;
  auto engine = cuda_engine(dir, tp, &ranks);
  if (!engine) return 3;
  auto agent = agent_for("prefill", *engine);
  if (!agent) return 3;
  std::string meta;
  if (!agent->metadata(&meta).ok()) return 3;
  std::cout << "meta " << meta << std::endl;
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string cmd;
    in >> cmd;
    if (cmd == "quit") return 0;
    if (cmd == "connect") {
      std::string json;
      std::getline(in >> std::ws, json);
      transfer::Connection c;
      Status st = agent->connect(json, transfer::Backend::cuda_ipc, &c);
      std::cout << (st.ok() ? "ok" : "error " + st.message()) << std::endl;
    } else if (cmd == "prefill") {
      std::string id, prompt, decode_blocks, mode;
      in >> id >> prompt >> decode_blocks >> mode;
      if (!engine->add_request(request(id, split(prompt), 0, true)).ok()) return 4;
      Seen p = step_until(*engine, id, finished);
      if (!p.found || p.last.finish_reason != FinishReason::prefilled || !p.tokens.empty()) return 5;
      const std::vector<int32_t>& held = p.last.block_ids;
      if (mode == "hold") {
        std::cout << "held " << join(held) << std::endl;
        continue;
      }
      std::vector<int32_t> remote = split(decode_blocks);
      remote.resize(held.size());
      Status st = agent->write(held, "decode", remote, "done " + id);
      engine->release_held(id);
      std::cout << (st.ok() ? "written " + std::to_string(held.size()) : "error " + st.message()) << std::endl;
    } else if (cmd == "release") {
      std::string id;
      in >> id;
      engine->release_held(id);
      std::cout << "ok" << std::endl;
    } else {
      return 6;
    }
  }
  return 0;
}

// ---- the decode side (this process) ------------------------------------------------------------

struct Child {
  pid_t pid = -1;
  FILE* to = nullptr;
  FILE* from = nullptr;

  explicit Child(const std::string& dir, int tp = 1) {
    int in[2], out[2];
    if (pipe(in) != 0 || pipe(out) != 0) return;
    pid = fork();
    if (pid == 0) {
      dup2(in[0], 0);
      dup2(out[1], 1);
      close(in[1]);
      close(out[0]);
      const std::string tp_arg = std::to_string(tp);
      execl("/proc/self/exe", "test-cuda-ipc", "--prefill-child", dir.c_str(), tp_arg.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    to = fdopen(in[1], "w");
    from = fdopen(out[0], "r");
  }
  std::string ask(const std::string& cmd) {
    std::fprintf(to, "%s\n", cmd.c_str());
    std::fflush(to);
    return read_line();
  }
  std::string read_line() {
    std::string s;
    for (int c; (c = std::fgetc(from)) != EOF && c != '\n';) s += static_cast<char>(c);
    return s;
  }
  int finish() {
    if (to) {
      std::fprintf(to, "quit\n");
      std::fclose(to);
    }
    if (from) std::fclose(from);
    int status = 0;
    if (pid > 0) waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
};

std::vector<int32_t> prompt_of(int64_t n, int32_t salt) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7 + salt * 13 + 3) % kVocab);
  return p;
}

void expect_reply(const std::string& got, const std::string& want) {
  if (got == want) return;
  std::printf("  the prefill side answered '%s', not '%s'\n", got.c_str(), want.c_str());
  ++llm_test::failures();
}

// Polls until `message` arrives (10 s at most).
bool wait_notification(transfer::Agent& a, const std::string& message) {
  for (int i = 0; i < 10000; ++i) {
    for (const transfer::Notification& n : a.take_notifications())
      if (n.from == "prefill" && n.message == message) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

}  // namespace

TEST(cuda_ipc_prefill_gives_the_tokens_of_local_serving) {
  llm_test::TempDir tmp;
  const std::string dir = tmp.sub("model");
  llm_test::TinyModelSpec spec;
  spec.vocab_size = kVocab;
  spec.hidden_size = 128;
  spec.intermediate_size = 256;
  spec.num_heads = 2;
  spec.num_kv_heads = 1;  // head_dim 64: the CUDA kernels have code for 64 and 128
  spec.dtype = DType::f32;
  llm_test::write_model(dir, spec);

  auto alone = cuda_engine(dir), decode = cuda_engine(dir);
  CHECK(alone && decode);
  if (!alone || !decode) return;
  auto agent = agent_for("decode", *decode);
  CHECK(agent != nullptr);
  if (!agent) return;
  Child child(dir);
  const std::string meta_line = child.read_line();
  CHECK(meta_line.rfind("meta ", 0) == 0);
  if (meta_line.rfind("meta ", 0) != 0) {
    child.finish();
    return;
  }
  const std::string prefill_meta = meta_line.substr(5);

  // GPU pools refuse the host backends; cuda_ipc opens the child's pool.
  transfer::Connection c;
  for (transfer::Backend b : {transfer::Backend::tcp, transfer::Backend::shm})
    CHECK(agent->connect(prefill_meta, b, &c).code() == StatusCode::transfer_invalid);
  Status st = agent->connect(prefill_meta, transfer::Backend::automatic, &c);
  if (!st.ok()) std::printf("  connect: %s\n", st.message().c_str());
  CHECK(st.ok() && c.backend == transfer::Backend::cuda_ipc);
  std::string my_meta;
  CHECK(agent->metadata(&my_meta).ok());
  expect_reply(child.ask("connect " + my_meta), "ok");

  const int64_t block_bytes = decode->kv_region().view.block_bytes();
  int64_t written_blocks = 0, read_blocks = 0;
  int round = 0;
  // Lengths: a partial last block, (n - 1) % block_size == 0, two blocks and a bit, the shortest.
  for (int64_t n : {37, 33, 50, 2}) {
    for (const char* mode : {"write", "read"}) {
      const std::string id = "r" + std::to_string(round++);
      const std::vector<int32_t> prompt = prompt_of(n, static_cast<int32_t>(n) + round);
      CHECK(alone->add_request(request("alone-" + id, prompt, 0, false)).ok());
      const std::vector<int32_t> want = step_until(*alone, "alone-" + id, finished).tokens;

      CHECK(decode->add_request(request(id, prompt, n - 1, false)).ok());
      Seen d = step_until(*decode, id, awaiting);
      CHECK(d.found && d.tokens.empty());
      const size_t held = static_cast<size_t>((n - 1 + kBlockSize - 1) / kBlockSize);
      if (std::strcmp(mode, "write") == 0) {
        const std::string reply = child.ask("prefill " + id + " " + join(prompt) + " " + join(d.last.block_ids) + " write");
        expect_reply(reply, "written " + std::to_string(held));
        CHECK(wait_notification(*agent, "done " + id));
        written_blocks += static_cast<int64_t>(held);
      } else {
        const std::string reply = child.ask("prefill " + id + " " + join(prompt) + " - hold");
        CHECK(reply.rfind("held", 0) == 0);
        const std::vector<int32_t> remote = split(reply.size() > 5 ? reply.substr(5) : "-");
        CHECK_EQ(remote.size(), held);
        std::vector<int32_t> local = d.last.block_ids;
        local.resize(remote.size());
        CHECK(agent->read("prefill", remote, local).ok());
        expect_reply(child.ask("release " + id), "ok");
        read_blocks += static_cast<int64_t>(held);
      }
      decode->complete_external_kv(id, true);
      Seen done = step_until(*decode, id, finished);
      CHECK(done.found);
      if (done.tokens != want)
        std::printf("  %s (%s, %lld prompt tokens): got %s, want %s\n", id.c_str(), mode, static_cast<long long>(n),
                    join(done.tokens).c_str(), join(want).c_str());
      CHECK(done.tokens == want);
      CHECK_EQ(want.size(), size_t{12});
    }
  }
  const transfer::AgentStats s = agent->stats();
  CHECK_EQ(s.bytes_read, read_blocks * block_bytes);
  CHECK_EQ(s.notifications_received, static_cast<int64_t>(4));
  CHECK_EQ(decode->metrics().kv_active_blocks, 0);
  std::printf("  %lld blocks written and %lld read by CUDA IPC (%lld bytes each), tokens equal to local serving\n",
              static_cast<long long>(written_blocks), static_cast<long long>(read_blocks),
              static_cast<long long>(block_bytes));
  agent->close();
  CHECK_EQ(child.finish(), 0);
}

// Decode TP 2 from prefill TP 1, and decode TP 1 from prefill TP 2 (the direction Dynamo
// refuses): writes and reads between the splits give the tokens of local serving.
TEST(cuda_ipc_between_tensor_parallel_sizes_gives_the_tokens_of_local_serving) {
  llm_test::TempDir tmp;
  const std::string dir = tmp.sub("model");
  llm_test::TinyModelSpec spec;
  spec.vocab_size = kVocab;
  spec.hidden_size = 256;
  spec.intermediate_size = 256;
  spec.num_heads = 4;
  spec.num_kv_heads = 2;  // head_dim 64; TP 2 splits the kv heads
  spec.dtype = DType::f32;
  llm_test::write_model(dir, spec);
  auto alone = cuda_engine(dir);
  CHECK(alone != nullptr);
  if (!alone) return;
  for (auto [decode_tp, prefill_tp] : {std::pair<int, int>{2, 1}, {1, 2}}) {
    std::vector<pid_t> ranks;
    {
      auto decode = cuda_engine(dir, decode_tp, &ranks);
      CHECK(decode != nullptr);
      if (!decode) break;
      auto agent = agent_for("decode", *decode);
      CHECK(agent != nullptr);
      if (!agent) break;
      Child child(dir, prefill_tp);
      const std::string meta_line = child.read_line();
      CHECK(meta_line.rfind("meta ", 0) == 0);
      if (meta_line.rfind("meta ", 0) != 0) {
        child.finish();
        break;
      }
      transfer::Connection c;
      Status st = agent->connect(meta_line.substr(5), transfer::Backend::automatic, &c);
      if (!st.ok()) std::printf("  connect: %s\n", st.message().c_str());
      CHECK(st.ok() && c.backend == transfer::Backend::cuda_ipc);
      std::string my_meta;
      CHECK(agent->metadata(&my_meta).ok());
      expect_reply(child.ask("connect " + my_meta), "ok");
      int round = 0, equal = 0;
      for (int64_t n : {37, 2}) {
        for (const char* mode : {"write", "read"}) {
          const std::string id = "t" + std::to_string(decode_tp) + std::to_string(round++);
          const std::vector<int32_t> prompt = prompt_of(n, static_cast<int32_t>(n) + round + 7);
          CHECK(alone->add_request(request("alone-" + id, prompt, 0, false)).ok());
          const std::vector<int32_t> want = step_until(*alone, "alone-" + id, finished).tokens;
          CHECK(decode->add_request(request(id, prompt, n - 1, false)).ok());
          Seen d = step_until(*decode, id, awaiting);
          CHECK(d.found && d.tokens.empty());
          if (std::strcmp(mode, "write") == 0) {
            const std::string reply = child.ask("prefill " + id + " " + join(prompt) + " " + join(d.last.block_ids) + " write");
            CHECK(reply.rfind("written", 0) == 0);
            if (reply.rfind("written", 0) != 0) std::printf("  %s\n", reply.c_str());
            CHECK(wait_notification(*agent, "done " + id));
          } else {
            const std::string reply = child.ask("prefill " + id + " " + join(prompt) + " - hold");
            CHECK(reply.rfind("held", 0) == 0);
            const std::vector<int32_t> remote = split(reply.size() > 5 ? reply.substr(5) : "-");
            std::vector<int32_t> local = d.last.block_ids;
            local.resize(remote.size());
            st = agent->read("prefill", remote, local);
            if (!st.ok()) std::printf("  read: %s\n", st.message().c_str());
            CHECK(st.ok());
            expect_reply(child.ask("release " + id), "ok");
          }
          decode->complete_external_kv(id, true);
          Seen done = step_until(*decode, id, finished);
          CHECK(done.found && done.tokens == want);
          if (done.tokens == want) ++equal;
        }
      }
      std::printf("  decode TP %d <- prefill TP %d: %d of 4 requests gave the tokens of local serving\n", decode_tp,
                  prefill_tp, equal);
      agent->close();
      CHECK_EQ(child.finish(), 0);
    }
    CHECK(llm_test::reap(ranks, 20));
  }
}

int main(int argc, char** argv) {
  if (llm_test::run_rank_from_args(argc, argv)) return 0;  // not reached: a rank exits
  if (argc == 4 && std::strcmp(argv[1], "--prefill-child") == 0) return prefill_child(argv[2], std::atoi(argv[3]));
  return llm_test::run_all_on_cuda();
}
