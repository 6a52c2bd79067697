// tensor-parallel.cc: see tensor-parallel.h.
//
// A message is five int64s, then (forward only) the batch arrays in ForwardBatch's order:
//   init     {1, num_blocks, 0, 0, 0}
//   forward  {2, num_tokens, num_seqs, max_blocks_per_seq, num_logits}
//            token_ids[T] positions[T] slot_mapping[T] (int64) query_start_loc[S+1] seq_lens[S]
//            block_tables[S*M] logits_indices[L]
//   stop     {3, 0, 0, 0, 0}
#include "tensor-parallel.h"

#include <signal.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif

#include <algorithm>
#include <cstring>

#include "../kernels/cpu/thread-pool.h"
#include "../model/model-weights.h"
#include "engine.h"
#include "kv-pool-memory.h"
#include "model-runner-cuda.h"

namespace llm {
namespace {

enum Op : int64_t { kInit = 1, kForward = 2, kStop = 3 };
constexpr size_t kHeader = 5;
// A rank waits this long at a barrier of a forward pass before the group counts as broken (a dead
// rank is noticed sooner, by its pid); generous, since ranks may share cores.
constexpr int kStepTimeoutMs = 30000;
constexpr int kJoinTimeoutMs = 60000;

Status invalid(const std::string& msg) { return Status(StatusCode::invalid_argument, msg); }

template <class T>
void put(std::vector<uint8_t>* m, const T* p, int64_t n) {
  if (n <= 0) return;
  const size_t at = m->size();
  m->resize(at + static_cast<size_t>(n) * sizeof(T));
  std::memcpy(m->data() + at, p, static_cast<size_t>(n) * sizeof(T));
}

template <class T>
bool take(const std::vector<uint8_t>& m, size_t* at, int64_t n, std::vector<T>* out) {
  const size_t bytes = static_cast<size_t>(std::max<int64_t>(n, 0)) * sizeof(T);
  if (n < 0 || m.size() - *at < bytes) return false;
  out->resize(static_cast<size_t>(std::max<int64_t>(n, 0)));
  if (bytes) std::memcpy(out->data(), m.data() + *at, bytes);
  *at += bytes;
  return true;
}

void put_header(std::vector<uint8_t>* m, int64_t op, int64_t a, int64_t b, int64_t c, int64_t d) {
  const int64_t h[kHeader] = {op, a, b, c, d};
  m->clear();
  put(m, h, kHeader);
}

}  // namespace

Status TpGroup::join(const std::string& name, int rank, int size, const std::vector<int>& rank_pids,
                     std::unique_ptr<TpGroup>* out) {
  std::unique_ptr<TpGroup> g(new TpGroup());
  g->name_ = name;
  ShmAllReduceOptions o;
  o.timeout_ms = kStepTimeoutMs;
  o.join_timeout_ms = kJoinTimeoutMs;
  if (rank == 0 && !rank_pids.empty()) {
    o.expected_pids.assign(1, 0);
    o.expected_pids.insert(o.expected_pids.end(), rank_pids.begin(), rank_pids.end());
  }
  LLM_RETURN_IF_ERROR(ShmAllReduce::create(name, rank, size, o, &g->ar_));
  *out = std::move(g);
  return Status::Ok();
}

std::vector<int> TpGroup::cpus(int num_threads, int cpu_offset) const {
  std::vector<int> all = cpu::allowed_cpu_range(cpu_offset, num_threads);
  if (all.empty()) {
    all = cpu::allowed_cpus();
    if (num_threads > 0 && static_cast<size_t>(num_threads) < all.size()) all.resize(static_cast<size_t>(num_threads));
  }
  if (all.empty()) return {};
  const size_t c = all.size(), n = static_cast<size_t>(size()), r = static_cast<size_t>(rank());
  if (c < n) return {all[r * c / n]};
  return std::vector<int>(all.begin() + static_cast<std::ptrdiff_t>(r * c / n),
                          all.begin() + static_cast<std::ptrdiff_t>((r + 1) * c / n));
}

TpCollectives TpGroup::collectives() {
  ShmAllReduce* ar = ar_.get();
  TpCollectives tp;
  tp.all_reduce = [ar](float* x, int64_t n) { return ar->all_reduce(x, static_cast<size_t>(n)); };
  tp.gather = [ar](const float* x, const std::vector<size_t>& counts, float* root_out) {
    return ar->gather(x, counts, root_out);
  };
  tp.all_gather = [this](const std::string& mine, std::vector<std::string>* all) { return all_gather_notes(mine, all); };
  tp.peers_alive = [ar] { return ar->peers_alive(); };
  return tp;
}

Status TpGroup::send_init(int64_t num_blocks) {
  put_header(&msg_, kInit, num_blocks, 0, 0, 0);
  return ar_->broadcast(&msg_, kJoinTimeoutMs);
}

Status TpGroup::recv_init(int64_t* num_blocks) {
  LLM_RETURN_IF_ERROR(ar_->broadcast(&msg_, -1));
  std::vector<int64_t> h;
  size_t at = 0;
  if (!take(msg_, &at, kHeader, &h) || h[0] != kInit || h[1] < 1 || at != msg_.size())
    return Status(StatusCode::internal, "tensor-parallel rank " + std::to_string(rank()) + ": a malformed init message");
  *num_blocks = h[1];
  return Status::Ok();
}

Status TpGroup::ready() { return ar_->sync(-1); }

Status TpGroup::barrier() { return ar_->sync(-1); }

// Each note travels as a fixed slot of floats (the gather copies bytes): its length, then its
// bytes.
Status TpGroup::gather_notes(const std::string& mine, std::vector<std::string>* all) {
  constexpr size_t kSlotFloats = (kMaxNoteBytes + 4) / 4;
  if (mine.size() > kMaxNoteBytes)
    return invalid("a tensor-parallel note has at most " + std::to_string(kMaxNoteBytes) + " bytes");
  std::vector<float> slot(kSlotFloats, 0.0f);
  const uint32_t len = static_cast<uint32_t>(mine.size());
  std::memcpy(slot.data(), &len, 4);
  std::memcpy(reinterpret_cast<char*>(slot.data()) + 4, mine.data(), mine.size());
  const std::vector<size_t> counts(static_cast<size_t>(size()), kSlotFloats);
  std::vector<float> gathered(rank() == 0 ? kSlotFloats * counts.size() : 0);
  LLM_RETURN_IF_ERROR(ar_->gather(slot.data(), counts, rank() == 0 ? gathered.data() : nullptr));
  if (rank() != 0 || !all) return Status::Ok();
  all->clear();
  for (size_t r = 0; r < counts.size(); ++r) {
    const char* at = reinterpret_cast<const char*>(gathered.data() + r * kSlotFloats);
    uint32_t n = 0;
    std::memcpy(&n, at, 4);
    if (n > kMaxNoteBytes) return Status(StatusCode::internal, "tensor-parallel rank " + std::to_string(r) + ": a malformed note");
    all->emplace_back(at + 4, n);
  }
  return Status::Ok();
}

// Rank 0 sends the notes on as one message: for each, its length (uint32) and its bytes.
Status TpGroup::all_gather_notes(const std::string& mine, std::vector<std::string>* all) {
  LLM_RETURN_IF_ERROR(ar_->sync(-1));
  std::vector<std::string> notes;
  LLM_RETURN_IF_ERROR(gather_notes(mine, &notes));
  std::vector<uint8_t> m;
  if (rank() == 0) {
    for (const std::string& n : notes) {
      const uint32_t len = static_cast<uint32_t>(n.size());
      put(&m, &len, 1);
      put(&m, n.data(), static_cast<int64_t>(n.size()));
    }
  }
  LLM_RETURN_IF_ERROR(ar_->broadcast(&m, rank() == 0 ? kJoinTimeoutMs : -1));
  all->clear();
  size_t at = 0;
  std::vector<uint32_t> len;
  std::vector<char> bytes;
  for (int r = 0; r < size(); ++r) {
    if (!take(m, &at, 1, &len) || !take(m, &at, len[0], &bytes))
      return Status(StatusCode::internal, "tensor-parallel rank " + std::to_string(rank()) + ": a malformed notes message");
    all->emplace_back(bytes.begin(), bytes.end());
  }
  return Status::Ok();
}

// A pool travels as the note "<handle> <uuid>".
Status TpGroup::send_device_pool(const std::string& ipc_handle, const std::string& device_uuid) {
  return gather_notes(ipc_handle + " " + device_uuid, nullptr);
}

Status TpGroup::gather_device_pools(std::vector<std::pair<std::string, std::string>>* pools) {
  std::vector<std::string> notes;
  LLM_RETURN_IF_ERROR(gather_notes("", &notes));
  pools->clear();
  for (size_t r = 1; r < notes.size(); ++r) {
    const size_t space = notes[r].find(' ');
    if (space == std::string::npos)
      return Status(StatusCode::internal, "tensor-parallel rank " + std::to_string(r) + " sent no KV pool handle");
    pools->emplace_back(notes[r].substr(0, space), notes[r].substr(space + 1));
  }
  return Status::Ok();
}

Status TpGroup::send_batch(const ForwardBatch& b) {
  const int64_t T = b.num_tokens, S = b.num_seqs, M = b.max_blocks_per_seq, L = b.num_logits;
  put_header(&msg_, kForward, T, S, M, L);
  put(&msg_, b.token_ids, T);
  put(&msg_, b.positions, T);
  put(&msg_, b.slot_mapping, T);
  const int32_t zero = 0;
  put(&msg_, S > 0 ? b.query_start_loc : &zero, S > 0 ? S + 1 : 1);
  put(&msg_, b.seq_lens, S);
  put(&msg_, b.block_tables, S * M);
  put(&msg_, b.logits_indices, L);
  return ar_->broadcast(&msg_, kStepTimeoutMs);
}

void TpGroup::send_stop() {
  put_header(&msg_, kStop, 0, 0, 0, 0);
  ar_->broadcast(&msg_, 1000).ok();  // a broken group's ranks leave on their own
}

Status TpGroup::recv(bool* stop, ForwardBatch* b) {
  LLM_RETURN_IF_ERROR(ar_->broadcast(&msg_, -1));
  std::vector<int64_t> h;
  size_t at = 0;
  const Status bad(StatusCode::internal, "tensor-parallel rank " + std::to_string(rank()) + ": a malformed message");
  if (!take(msg_, &at, kHeader, &h)) return bad;
  *stop = h[0] == kStop;
  if (*stop) return Status::Ok();
  const int64_t T = h[1], S = h[2], M = h[3], L = h[4];
  if (h[0] != kForward || S < 0 || M < 0 || S * M < 0) return bad;
  if (!take(msg_, &at, T, &token_ids_) || !take(msg_, &at, T, &positions_) || !take(msg_, &at, T, &slot_mapping_) ||
      !take(msg_, &at, S > 0 ? S + 1 : 1, &query_start_loc_) || !take(msg_, &at, S, &seq_lens_) ||
      !take(msg_, &at, S * M, &block_tables_) || !take(msg_, &at, L, &logits_indices_) || at != msg_.size())
    return bad;
  *b = ForwardBatch{};
  b->num_tokens = T;
  b->token_ids = token_ids_.data();
  b->positions = positions_.data();
  b->slot_mapping = slot_mapping_.data();
  b->num_seqs = S;
  b->query_start_loc = query_start_loc_.data();
  b->seq_lens = seq_lens_.data();
  b->block_tables = block_tables_.data();
  b->max_blocks_per_seq = M;
  b->num_logits = L;
  b->logits_indices = logits_indices_.data();
  return Status::Ok();
}

namespace {

// Rank `rank`'s pool and runner on the CPU: its KV heads of the blocks rank 0 sized, in shared
// memory under the group's name when the pools are shared, and a runner pinned to its CPUs.
Status cpu_rank(const EngineConfig& cfg, int rank, const Model& model, TpGroup* group, std::unique_ptr<KvPoolMemory>* pool,
                std::unique_ptr<ModelRunner>* runner) {
  int64_t num_blocks = 0;
  LLM_RETURN_IF_ERROR(group->recv_init(&num_blocks));
  KVCacheView kv = make_kv_view(model, nullptr, num_blocks, cfg.block_size);
  LLM_RETURN_IF_ERROR(KvPoolMemory::create(cfg.kv_shared_memory ? KvPoolMemory::Kind::shared : KvPoolMemory::Kind::host,
                                           static_cast<size_t>(num_blocks) * static_cast<size_t>(kv.block_bytes()), pool,
                                           cfg.kv_shared_memory ? group->kv_pool_name(rank) : std::string()));
  kv.data = (*pool)->data();
  CpuRunnerOptions ro;
  ro.cpus = group->cpus(cfg.num_threads, cfg.cpu_offset);
  ro.num_threads = static_cast<int>(ro.cpus.size());
  ro.tile_weights = cfg.cpu_tile_weights;
  ro.tp = group->collectives();
  *runner = make_cpu_runner(model, kv, ro);
  return Status::Ok();
}

// The same on CUDA: the weights go to the rank's device first, and once every rank's are on
// theirs (barrier) rank 0 reads the free memory and sizes the pool.
Status cuda_rank(const EngineConfig& cfg, int rank, const Model& model, TpGroup* group, std::unique_ptr<KvPoolMemory>* pool,
                 std::unique_ptr<ModelRunner>* runner) {
  CudaRunnerOptions co;
  co.max_num_tokens = cfg.max_num_batched_tokens;
  co.device = cuda_rank_device(rank);
  co.tp = group->collectives();
  std::unique_ptr<CudaModelRunner> cuda_runner;
  LLM_RETURN_IF_ERROR(CudaModelRunner::create(model, co, &cuda_runner));
  LLM_RETURN_IF_ERROR(group->barrier());
  int64_t num_blocks = 0;
  LLM_RETURN_IF_ERROR(group->recv_init(&num_blocks));
  KVCacheView kv = make_kv_view(model, nullptr, num_blocks, cfg.block_size);
  // On the runner's device, which create made current on this thread.
  LLM_RETURN_IF_ERROR(KvPoolMemory::create(KvPoolMemory::Kind::device,
                                           static_cast<size_t>(num_blocks) * static_cast<size_t>(kv.block_bytes()), pool));
  kv.data = (*pool)->data();
  LLM_RETURN_IF_ERROR(cuda_runner->set_kv_cache(kv));
  // A shared pool: rank 0's transfer agent opens this one by the handle it gets here.
  if (cfg.kv_shared_memory) {
    std::string handle, uuid;
    LLM_RETURN_IF_ERROR(cuda_export_ipc((*pool)->data(), &handle, &uuid));
    LLM_RETURN_IF_ERROR(group->send_device_pool(handle, uuid));
  }
  *runner = std::move(cuda_runner);
  return Status::Ok();
}

}  // namespace

Status run_tp_rank(const EngineConfig& cfg, int rank) {
  if (cfg.tp_size < 2 || rank < 1 || rank >= cfg.tp_size)
    return invalid("run_tp_rank: rank " + std::to_string(rank) + " of tp_size " + std::to_string(cfg.tp_size) +
                   " (rank 0 is the engine)");
  if (cfg.tp_group.empty()) return invalid("run_tp_rank: tp_group is required");
  std::string device;
  LLM_RETURN_IF_ERROR(resolve_engine_device(cfg.device, &device));  // rank 0's answer on this host
#if defined(__linux__)
  // This rank must not outlive the worker that started it.
  const pid_t parent = getppid();
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) return Status(StatusCode::transfer_peer, "the worker that started this rank is gone");
#endif
  std::unique_ptr<TpGroup> group;
  LLM_RETURN_IF_ERROR(TpGroup::join(cfg.tp_group, rank, cfg.tp_size, {}, &group));
  ModelLoadOptions lo;
  lo.tp_rank = rank;
  lo.tp_size = cfg.tp_size;
  std::unique_ptr<Model> model;
  LLM_RETURN_IF_ERROR(load_model(cfg.model_dir, lo, &model));
  std::unique_ptr<KvPoolMemory> pool;
  std::unique_ptr<ModelRunner> runner;
  LLM_RETURN_IF_ERROR(device == "cuda" ? cuda_rank(cfg, rank, *model, group.get(), &pool, &runner)
                                       : cpu_rank(cfg, rank, *model, group.get(), &pool, &runner));
  LLM_RETURN_IF_ERROR(group->ready());
  for (;;) {
    bool stop = false;
    ForwardBatch b;
    LLM_RETURN_IF_ERROR(group->recv(&stop, &b));
    if (stop) return Status::Ok();
    // An error here is rank 0's too (the same batch, the same checks), or breaks the group, and
    // the next recv reports it.
    runner->forward(b, nullptr).ok();
  }
}

}  // namespace llm
