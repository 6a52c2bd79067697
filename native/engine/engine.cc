// engine.cc: see engine.h. The step loop glues scheduler, runner and sampler together; the
// batch layout it builds is drawn in model-runner.h.
#include "engine.h"

#include "../kernels/cpu/cpu-kernels.h"
#include "../kv/request-limits.h"

#include <algorithm>
#include <cassert>
#include <chrono>
#include <cstring>

namespace llm {
namespace {

constexpr int64_t kDefaultKvCacheBytes = int64_t{1} << 30;  // when nothing else is said

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

Status invalid(const std::string& msg) { return Status(StatusCode::invalid_argument, msg); }

}  // namespace

Status Engine::create(const EngineConfig& cfg, std::unique_ptr<Engine>* out) {
  // 1. Settings that do not depend on the model.
  if (cfg.block_size < 1 || cfg.block_size > 1024) return invalid("block_size must be in [1, 1024]");
  if (cfg.max_num_seqs < 1 || cfg.max_num_seqs > 4096) return invalid("max_num_seqs must be in [1, 4096]");
  if (cfg.max_num_batched_tokens < 1) return invalid("max_num_batched_tokens must be >= 1");
  if (cfg.max_model_len < 0 || cfg.num_kv_blocks < 0 || cfg.kv_cache_bytes < 0 || cfg.num_threads < 0)
    return invalid("max_model_len, num_kv_blocks, kv_cache_bytes and num_threads must be >= 0");
  if (cfg.token_mask_timeout_ms < 1 || cfg.token_mask_timeout_ms > 3600000)
    return invalid("token_mask_timeout_ms must be in [1, 3600000]");

  std::unique_ptr<Engine> e(new Engine());
  e->cfg_ = cfg;

  // The device: auto takes CUDA when this build has it and a device is usable.
  std::string device;
  LLM_RETURN_IF_ERROR(resolve_engine_device(cfg.device, &device));

  // 2. Tensor parallelism: the other ranks join (they load their slices meanwhile). Then the
  // model (memory-mapped): all of it, or rank 0's slices.
  if (cfg.tp_size < 1 || cfg.tp_size > 64) return invalid("tp_size must be in [1, 64]");
  if (cfg.tp_size > 1) {
    if (cfg.tp_group.empty()) return invalid("tp_size > 1 needs tp_group, the ranks' shared-memory segment");
    // The split is checked before any rank is waited for.
    ModelConfig peek;
    LLM_RETURN_IF_ERROR(load_model_config(cfg.model_dir, &peek));
    RankShard unused;
    LLM_RETURN_IF_ERROR(plan_rank_shard(peek, 0, cfg.tp_size, &unused));
    LLM_RETURN_IF_ERROR(TpGroup::join(cfg.tp_group, 0, cfg.tp_size, cfg.tp_rank_pids, &e->tp_));
  }
  ModelLoadOptions lo;
  lo.tp_size = cfg.tp_size;
  LLM_RETURN_IF_ERROR(load_model(cfg.model_dir, lo, &e->model_));
  const ModelConfig& mc = e->model_->config;

  // 3. Context length: asked, else the model's, never beyond the model's or its window.
  int64_t model_len = mc.max_position_embeddings;
  if (mc.sliding_window > 0) model_len = std::min(model_len, mc.sliding_window);
  if (cfg.max_model_len > model_len)
    return invalid("max_model_len " + std::to_string(cfg.max_model_len) + " exceeds the model's " +
                   std::to_string(model_len));
  const int64_t max_model_len = cfg.max_model_len > 0 ? cfg.max_model_len : model_len;

  std::unique_ptr<CudaModelRunner> cuda_runner;
  if (device == "cuda") {
    CudaRunnerOptions co;
    co.max_num_tokens = cfg.max_num_batched_tokens;
    co.cuda_graphs = cfg.cuda_graphs;
    co.max_graph_batch = std::min<int64_t>(cfg.max_num_seqs, 512);
    co.device = cuda_rank_device(0);
    if (e->tp_) co.tp = e->tp_->collectives();
    LLM_RETURN_IF_ERROR(CudaModelRunner::create(*e->model_, co, &cuda_runner));
    // Every rank's weights are on its device before the free memory is read for the pool.
    if (e->tp_) LLM_RETURN_IF_ERROR(e->tp_->barrier());
  }

  // 4. The KV pool: [num_blocks][num_layers][2][block_size][num_kv_heads][head_dim], sized for
  // the whole model (with tensor parallelism each rank holds the same blocks of its kv heads).
  KVCacheView shape = make_kv_view(mc, nullptr, 0, cfg.block_size);
  const int64_t block_bytes = shape.block_bytes();
  int64_t num_blocks = cfg.num_kv_blocks;
  if (num_blocks == 0) {
    int64_t bytes = cfg.kv_cache_bytes;
    // A block's bytes in what `bytes` pays for: the whole model's on the CPU (kv_cache_bytes is
    // every rank's together), a rank's on CUDA (each device's free memory holds its ranks' parts).
    int64_t sized_block_bytes = block_bytes;
    if (bytes == 0) {
      const int64_t blocks_per_seq = (max_model_len + cfg.block_size - 1) / cfg.block_size;
      const double wanted = static_cast<double>(blocks_per_seq) * cfg.max_num_seqs * block_bytes;
      // CPU: a fixed default; CUDA: up to 90% of what the weights and activations leave free
      // (vLLM's gpu_memory_utilization), shared by the ranks on rank 0's device.
      double room = static_cast<double>(kDefaultKvCacheBytes);
      if (cuda_runner) {
        sized_block_bytes = make_kv_view(*e->model_, nullptr, 0, cfg.block_size).block_bytes();
        room = 0.9 * static_cast<double>(cuda_runner->free_device_bytes()) / cuda_ranks_per_device(cfg.tp_size);
      }
      bytes = static_cast<int64_t>(std::min<double>(wanted, room));
    }
    num_blocks = bytes / sized_block_bytes;
  }
  if (num_blocks < 1)
    return invalid("the KV cache holds no block: one block needs " + std::to_string(block_bytes) + " bytes");
  if (num_blocks > (int64_t{1} << 31) - 1) return invalid("too many KV blocks");
  if (e->tp_) LLM_RETURN_IF_ERROR(e->tp_->send_init(num_blocks));
  const KVCacheView rank_shape = make_kv_view(*e->model_, nullptr, num_blocks, cfg.block_size);
  const size_t kv_bytes = static_cast<size_t>(num_blocks) * static_cast<size_t>(rank_shape.block_bytes());
  const KvPoolMemory::Kind kind = cuda_runner         ? KvPoolMemory::Kind::device
                                  : cfg.kv_shared_memory ? KvPoolMemory::Kind::shared
                                                         : KvPoolMemory::Kind::host;
  LLM_RETURN_IF_ERROR(KvPoolMemory::create(kind, kv_bytes, &e->kv_memory_));
  const KVCacheView kv_view = make_kv_view(*e->model_, e->kv_memory_->data(), num_blocks, cfg.block_size);
  if (cuda_runner) {
    LLM_RETURN_IF_ERROR(cuda_runner->set_kv_cache(kv_view));
    // A shared pool on CUDA: the other ranks' allocations, by the IPC handles their processes made.
    if (e->tp_ && cfg.kv_shared_memory) LLM_RETURN_IF_ERROR(e->tp_->gather_device_pools(&e->rank_pools_));
    if (e->tp_) LLM_RETURN_IF_ERROR(e->tp_->ready());
  }

  // 5. Cache manager, scheduler, runner.
  KVCacheManagerConfig kvc;
  kvc.num_blocks = num_blocks;
  kvc.block_size = cfg.block_size;
  kvc.enable_prefix_caching = cfg.enable_prefix_caching;
  e->kv_ = std::make_unique<KVCacheManager>(kvc);
  SchedulerConfig sc;
  sc.max_num_seqs = cfg.max_num_seqs;
  sc.max_num_batched_tokens = cfg.max_num_batched_tokens;
  sc.max_model_len = max_model_len;
  sc.vocab_size = mc.vocab_size;
  e->scheduler_ = std::make_unique<Scheduler>(sc, e->kv_.get());
  e->scheduler_->set_eos_token_ids(mc.eos_token_ids);
  if (cuda_runner) {
    e->info_.kernels = cuda_runner->describe();
    e->runner_ = std::move(cuda_runner);
  } else {
    CpuRunnerOptions ro;
    ro.num_threads = cfg.num_threads;
    ro.tile_weights = cfg.cpu_tile_weights;
    ro.cpus = cpu::allowed_cpu_range(cfg.cpu_offset, cfg.num_threads);
    if (e->tp_) {
      ro.cpus = e->tp_->cpus(cfg.num_threads, cfg.cpu_offset);
      ro.num_threads = static_cast<int>(ro.cpus.size());
      ro.tp = e->tp_->collectives();
    }
    e->runner_ = make_cpu_runner(*e->model_, kv_view, ro);
    e->info_.kernels = e->runner_->describe();
    if (e->tp_) LLM_RETURN_IF_ERROR(e->tp_->ready());
  }
  e->info_.backend = e->runner_->backend_name();
  e->info_.num_kv_blocks = num_blocks;
  e->info_.block_size = cfg.block_size;
  e->info_.tp_size = cfg.tp_size;
  e->info_.max_model_len = max_model_len;
  e->info_.kv_dtype = mc.dtype;
  e->info_.kv_block_bytes = block_bytes;
  e->info_.vocab_size = mc.vocab_size;
  e->masks_ = std::make_unique<TokenMasks>(mc.vocab_size);
  e->info_.token_mask_words = e->masks_->num_words();
  e->max_blocks_per_seq_ = (max_model_len + cfg.block_size - 1) / cfg.block_size;
  *out = std::move(e);
  return Status::Ok();
}

Status resolve_engine_device(const std::string& asked, std::string* device) {
  *device = asked.empty() ? "cpu" : asked;
  if (*device != "cpu" && *device != "cuda" && *device != "auto")
    return invalid("device must be cpu, cuda or auto, not '" + *device + "'");
  if (*device == "cpu") return Status::Ok();
  const Status usable = cuda_device_usable(nullptr);  // probed once
  if (*device == "auto") {
    *device = usable.ok() ? "cuda" : "cpu";
    return Status::Ok();
  }
  if (!usable.ok()) return Status(StatusCode::device_unavailable, "device cuda: " + usable.message());
  return Status::Ok();
}

Engine::~Engine() {
  if (tp_) tp_->send_stop();
  runner_.reset();  // joins the runner's threads before the pool goes away
}

std::vector<KvRegion> Engine::kv_regions() const {
  std::vector<KvRegion> out;
  const ModelConfig& mc = model_->config;
  KvRegion r;
  r.view = make_kv_view(*model_, kv_memory_->data(), info_.num_kv_blocks, info_.block_size);
  r.bytes = kv_memory_->bytes();
  r.shm_name = kv_memory_->shm_name();
  r.device_data = kv_memory_->kind() == KvPoolMemory::Kind::device ? kv_memory_->data() : nullptr;
  r.first_kv_head = model_->shard.first_kv_head;
  r.model_kv_heads = mc.num_kv_heads;
  out.push_back(r);
  // The other ranks' pools, by the names they created them under (shared memory only).
  for (int rank = 1; tp_ && rank < tp_->size(); ++rank) {
    RankShard sh;
    if (!plan_rank_shard(mc, rank, tp_->size(), &sh).ok()) break;  // checked at create
    KvRegion o;
    o.view = make_kv_view(mc, nullptr, info_.num_kv_blocks, info_.block_size);
    o.view.num_kv_heads = sh.num_kv_heads;
    o.bytes = static_cast<size_t>(info_.num_kv_blocks) * static_cast<size_t>(o.view.block_bytes());
    o.shm_name = kv_memory_->kind() == KvPoolMemory::Kind::shared ? tp_->kv_pool_name(rank) : std::string();
    if (static_cast<size_t>(rank) <= rank_pools_.size()) {  // on CUDA, with shared pools
      o.device_ipc_handle = rank_pools_[static_cast<size_t>(rank) - 1].first;
      o.device_uuid = rank_pools_[static_cast<size_t>(rank) - 1].second;
    }
    o.tp_rank = rank;
    o.first_kv_head = sh.first_kv_head;
    o.model_kv_heads = mc.num_kv_heads;
    out.push_back(o);
  }
  return out;
}

// The limits live in request-limits.h; this engine's bounds are the scheduler's (create()).
Status Engine::validate_request(const Request& r) const {
  RequestBounds b;
  b.vocab_size = model_->config.vocab_size;
  b.max_model_len = info_.max_model_len;
  b.block_size = info_.block_size;
  b.num_kv_blocks = info_.num_kv_blocks;
  return check_request(r, b);
}

Status Engine::add_request(std::unique_ptr<Request> req) {
  // The scheduler checks the request (check_request, the engine's bounds) and takes it; only an
  // accepted request moves the seed counter, so a refused one shifts no other request's seed.
  // The rng is first used when the request is sampled, after this returns.
  Request* r = req.get();
  LLM_RETURN_IF_ERROR(scheduler_->add_request(std::move(req)));
  r->rng.seed(r->params.has_seed ? r->params.seed : splitmix64(cfg_.seed + (++seed_counter_)));
  // A resumed request continues its draws where the run it continues left them: the sampler
  // takes exactly one output of the generator per token drawn (sampler.cc).
  r->rng.discard(static_cast<unsigned long long>(r->num_output_tokens()));
  // Structured output: the first mask, for the first output this request samples (its length
  // was checked with the request).
  if (r->params.constrained) {
    masks_->open(r->request_id, r->num_output_tokens());
    const Status put = masks_->put(r->request_id, r->num_output_tokens(), std::move(r->token_mask));
    assert(put.ok());
    (void)put;
    r->token_mask.clear();
  }
  return Status::Ok();
}

void Engine::abort(const std::string& request_id) {
  if (scheduler_->abort(request_id)) {
    for (auto& r : scheduler_->take_aborted()) pending_aborts_.push_back(std::move(r));
  }
}

void Engine::complete_external_kv(const std::string& request_id, bool ok) {
  scheduler_->complete_external_kv(request_id, ok);  // not parked (any more): a duplicate, ignored
}

void Engine::release_held(const std::string& request_id) { scheduler_->release_held(request_id); }

RequestOutput Engine::block_output(const Request& r) const {
  RequestOutput o;
  o.request_id = r.request_id;
  o.num_prompt_tokens = r.num_prompt_tokens();
  o.num_cached_tokens = std::max<int64_t>(0, r.num_cached_tokens);
  for (const KVBlock* b : *kv_->blocks_of(r.request_id)) o.block_ids.push_back(b->block_id);
  return o;
}

LoadMetrics Engine::metrics() const {
  LoadMetrics m;
  m.request_active_slots = scheduler_->num_running();
  m.request_total_slots = cfg_.max_num_seqs;
  m.kv_active_blocks = kv_->num_active_blocks();
  m.kv_total_blocks = kv_->pool().num_blocks();
  m.num_requests_waiting = scheduler_->num_waiting();
  m.kv_cache_usage = kv_->pool().usage();
  m.prefix_cache_queries = kv_->prefix_cache_queries();
  m.prefix_cache_hits = kv_->prefix_cache_hits();
  m.prefix_cache_hit_rate =
      m.prefix_cache_queries > 0 ? static_cast<double>(m.prefix_cache_hits) / m.prefix_cache_queries : 0.0;
  m.num_preemptions = scheduler_->num_preemptions();
  m.token_mask_wait_seconds = mask_wait_seconds_;
  m.token_mask_wait_steps = mask_wait_steps_;
  m.token_mask_deferred_rows = mask_deferred_rows_;
  return m;
}

void Engine::wait_for_token_masks(const SchedulerOutput& sched) {
  mask_needs_.clear();
  bool others = false;  // a row this step advances whatever the masks do
  for (const ScheduledRequest& sr : sched.scheduled) {
    if (sr.samples && sr.req->params.constrained) mask_needs_.push_back({&sr.req->request_id, sr.req->num_output_tokens()});
    else others = true;
  }
  mask_states_.clear();
  if (mask_needs_.empty()) return;
  using Clock = TokenMasks::Clock;
  const Clock::time_point start = Clock::now();
  // A request's deadline runs from the first step that wanted its current mask.
  Clock::time_point deadline = Clock::time_point::max();
  for (const TokenMasks::Need& n : mask_needs_) {
    const Clock::time_point from = mask_wanted_since_.try_emplace(*n.request_id, start).first->second;
    deadline = std::min(deadline, from + std::chrono::milliseconds(cfg_.token_mask_timeout_ms));
  }
  // With other rows in the step, a late mask is waited for only briefly: its row is deferred.
  if (others) deadline = std::min(deadline, start + kTokenMaskGrace);
  if (masks_->wait(mask_needs_, deadline, &mask_states_)) {
    ++mask_wait_steps_;
    mask_wait_seconds_ += std::chrono::duration<double>(Clock::now() - start).count();
  }
}

bool Engine::token_mask_overdue(const std::string& request_id, TokenMasks::Clock::time_point now) const {
  const auto it = mask_wanted_since_.find(request_id);
  return it == mask_wanted_since_.end() || now - it->second >= std::chrono::milliseconds(cfg_.token_mask_timeout_ms);
}

// Flattens the scheduled requests into the batch arrays (layout in model-runner.h).
void Engine::build_batch(const SchedulerOutput& sched) {
  const int64_t bs = info_.block_size;
  const size_t n_seqs = sched.scheduled.size();
  token_ids_.clear();
  positions_.clear();
  slot_mapping_.clear();
  logits_indices_.clear();
  query_start_loc_.assign(1, 0);
  seq_lens_.clear();
  block_tables_.assign(n_seqs * static_cast<size_t>(max_blocks_per_seq_), 0);

  for (size_t s = 0; s < n_seqs; ++s) {
    const ScheduledRequest& sr = sched.scheduled[s];
    const Request& r = *sr.req;
    const std::vector<KVBlock*>& blocks = *kv_->blocks_of(r.request_id);
    const int64_t begin = r.num_computed_tokens;
    const int64_t end = begin + sr.num_new_tokens;
    for (int64_t pos = begin; pos < end; ++pos) {
      token_ids_.push_back(r.all_token_ids[pos]);
      positions_.push_back(static_cast<int32_t>(pos));
      slot_mapping_.push_back(static_cast<int64_t>(blocks[pos / bs]->block_id) * bs + pos % bs);
    }
    if (sr.samples) logits_indices_.push_back(static_cast<int32_t>(token_ids_.size() - 1));
    query_start_loc_.push_back(static_cast<int32_t>(token_ids_.size()));
    seq_lens_.push_back(static_cast<int32_t>(end));
    int32_t* row = &block_tables_[s * max_blocks_per_seq_];
    for (size_t b = 0; b < blocks.size() && static_cast<int64_t>(b) < max_blocks_per_seq_; ++b)
      row[b] = blocks[b]->block_id;
  }
}

Status Engine::step(StepResult* out) {
  out->outputs.clear();
  out->events.clear();
  out->num_scheduled_tokens = 0;
  const int64_t vocab = model_->config.vocab_size;

  // 1. Requests aborted since the last step.
  for (auto& r : pending_aborts_) {
    RequestOutput o;
    o.request_id = r->request_id;
    o.finish_reason = FinishReason::abort;
    o.num_prompt_tokens = r->num_prompt_tokens();
    o.num_cached_tokens = std::max<int64_t>(0, r->num_cached_tokens);
    out->outputs.push_back(std::move(o));
    if (r->params.constrained) drop_masks(r->request_id);
  }
  pending_aborts_.clear();

  // 2. Schedule, 3. run the batch.
  Status result = Status::Ok();
  SchedulerOutput sched = scheduler_->schedule();
  out->num_scheduled_tokens = sched.num_scheduled_tokens;
  if (!sched.scheduled.empty()) {
    build_batch(sched);
    ForwardBatch fb;
    fb.num_tokens = static_cast<int64_t>(token_ids_.size());
    fb.token_ids = token_ids_.data();
    fb.positions = positions_.data();
    fb.slot_mapping = slot_mapping_.data();
    fb.num_seqs = static_cast<int64_t>(sched.scheduled.size());
    fb.query_start_loc = query_start_loc_.data();
    fb.seq_lens = seq_lens_.data();
    fb.block_tables = block_tables_.data();
    fb.max_blocks_per_seq = max_blocks_per_seq_;
    fb.num_logits = static_cast<int64_t>(logits_indices_.size());
    fb.logits_indices = logits_indices_.data();
    // Every sampled request plain greedy, on a runner that takes the argmax where the logits
    // are (CUDA): only the ids come back, and the sampler is not needed.
    bool device_greedy = runner_->greedy_on_device() && fb.num_logits > 0;
    for (const ScheduledRequest& sr : sched.scheduled)
      if (sr.samples && !Sampler::is_plain_greedy(*sr.req)) device_greedy = false;
    if (tp_ && !(result = tp_->send_batch(fb)).ok()) {
      // the other ranks cannot run it: the batch fails below
    } else if (device_greedy) {
      greedy_ids_.resize(static_cast<size_t>(fb.num_logits));
      result = runner_->forward_greedy(fb, greedy_ids_.data());
    } else {
      logits_.resize(static_cast<size_t>(fb.num_logits) * vocab);
      result = runner_->forward(fb, logits_.data());
    }

    if (!result.ok()) {
      if (tp_) out->fatal = "tensor-parallel group broken: " + result.message();
      // The batch failed as a whole: finish its requests with the error, never leave them hanging.
      for (const ScheduledRequest& sr : sched.scheduled) scheduler_->abort(sr.req->request_id);
      for (auto& r : scheduler_->take_aborted()) {
        RequestOutput o;
        o.request_id = r->request_id;
        o.finish_reason = FinishReason::error;
        o.error = std::string(result.code_name()) + ": " + result.message();
        o.num_prompt_tokens = r->num_prompt_tokens();
        out->outputs.push_back(std::move(o));
        if (r->params.constrained) drop_masks(r->request_id);
      }
    } else {
      // 4. Sample; constrained rows once their token masks are there. A row that cannot be
      // sampled (no mask in time, aborted while waiting, a mask allowing nothing) is aborted in the
      // scheduler before update(), which then skips it, and finishes with its reason below.
      wait_for_token_masks(sched);
      struct Unsampled {
        const Request* req;
        FinishReason reason;
        std::string error;
      };
      std::vector<Unsampled> unsampled;
      std::vector<int32_t> sampled;
      std::vector<SampleResult> samples;
      std::vector<Request*> sampled_reqs;
      // Unconstrained rows first, on the runner's host threads: each request draws from its own
      // generator, so its token does not depend on how the rows are split.
      std::vector<Request*> rows;
      for (const ScheduledRequest& sr : sched.scheduled)
        if (sr.samples) rows.push_back(sr.req);
      std::vector<SampleResult> free_rows(device_greedy ? 0 : rows.size());
      if (!device_greedy) {
        row_samplers_.resize(static_cast<size_t>(std::max(1, runner_->host_threads())));
        runner_->parallel_rows(static_cast<int64_t>(rows.size()), [&](int worker, int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i)
            if (!rows[i]->params.constrained)
              free_rows[i] = row_samplers_[worker].sample(rows[i], logits_.data() + i * vocab, vocab, model_->config.eos_token_ids);
        });
      }
      int64_t row = 0;
      size_t need = 0;
      for (const ScheduledRequest& sr : sched.scheduled) {
        if (!sr.samples) continue;
        Request* r = sr.req;
        const int64_t this_row = row++;
        SampleResult res;
        if (device_greedy) {
          res.token_id = greedy_ids_[static_cast<size_t>(this_row)];
        } else if (!r->params.constrained) {
          res = std::move(free_rows[this_row]);
        } else {
          const int64_t index = r->num_output_tokens();
          const TokenMasks::State state = mask_states_[need++];
          Unsampled u{r, FinishReason::none, std::string()};
          if (state == TokenMasks::State::missing && !token_mask_overdue(r->request_id, TokenMasks::Clock::now())) {
            // Late, not yet overdue: not sampled this step; its last token runs again next step.
            ++mask_deferred_rows_;
            sampled.push_back(Scheduler::kDeferred);
            continue;
          }
          mask_wanted_since_.erase(r->request_id);
          if (state == TokenMasks::State::cancelled) {
            u.reason = FinishReason::abort;
          } else if (state != TokenMasks::State::ready || !masks_->take(r->request_id, index, &mask_words_)) {
            u.reason = FinishReason::error;
            u.error = "structured output: no token mask for output " + std::to_string(index) + " within " +
                      std::to_string(cfg_.token_mask_timeout_ms) + " ms";
          } else {
            res = row_samplers_[0].sample(r, logits_.data() + this_row * vocab, vocab, model_->config.eos_token_ids,
                                          mask_words_.data());
            if (!res.error.empty()) {
              u.reason = FinishReason::error;
              u.error = res.error;
            }
          }
          if (u.reason != FinishReason::none) {
            scheduler_->abort(r->request_id);
            unsampled.push_back(std::move(u));
            sampled.push_back(0);  // a placeholder: update() skips the aborted request
            continue;
          }
        }
        sampled.push_back(res.token_id);
        samples.push_back(std::move(res));
        sampled_reqs.push_back(r);
      }
      // 5. Update: tokens appended, stops applied, finished requests handed back.
      std::vector<std::unique_ptr<Request>> finished = scheduler_->update(sched, sampled);
      for (size_t i = 0; i < sampled_reqs.size(); ++i) {
        Request* r = sampled_reqs[i];
        RequestOutput o;
        o.request_id = r->request_id;
        o.new_token_ids.push_back(samples[i].token_id);
        if (samples[i].has_logprobs) {
          o.has_logprobs = true;
          o.logprobs.push_back(std::move(samples[i].logprobs));
        }
        o.finish_reason = r->finish_reason;
        o.stop_token_id = r->stop_token_id;
        o.num_prompt_tokens = r->num_prompt_tokens();
        o.num_cached_tokens = std::max<int64_t>(0, r->num_cached_tokens);
        out->outputs.push_back(std::move(o));
        if (r->params.constrained && r->finish_reason != FinishReason::none) drop_masks(r->request_id);
      }
      for (std::unique_ptr<Request>& r : scheduler_->take_aborted()) {
        const auto u = std::find_if(unsampled.begin(), unsampled.end(), [&](const Unsampled& x) { return x.req == r.get(); });
        RequestOutput o;
        o.request_id = r->request_id;
        o.finish_reason = u != unsampled.end() ? u->reason : FinishReason::abort;
        if (u != unsampled.end()) o.error = u->error;
        o.num_prompt_tokens = r->num_prompt_tokens();
        o.num_cached_tokens = std::max<int64_t>(0, r->num_cached_tokens);
        out->outputs.push_back(std::move(o));
        drop_masks(r->request_id);
      }
    }
  }

  // 6. Remote prefill: requests parked for external KV, prefill-only requests done.
  for (const Request* r : sched.parked) {
    RequestOutput o = block_output(*r);
    o.awaiting_kv = true;
    out->outputs.push_back(std::move(o));
  }
  for (const Request* r : scheduler_->take_prefilled()) {
    RequestOutput o = block_output(*r);
    o.finish_reason = FinishReason::prefilled;
    out->outputs.push_back(std::move(o));
    if (r->params.constrained) drop_masks(r->request_id);
  }

  // 7. Events (a requested replay follows whatever this step changed) and metrics.
  if (replay_requested_) {
    kv_->pool().replay_events();
    replay_requested_ = false;
  }
  out->events = kv_->pool().events().take();
  out->metrics = metrics();
  return result;
}

Status forward_single_sequence(const Model& model, int num_threads, const std::vector<int32_t>& tokens,
                               const std::vector<int32_t>& block_table, int64_t block_size,
                               std::vector<float>* logits) {
  const ModelConfig& mc = model.config;
  if (tokens.empty()) return invalid("tokens must not be empty");
  if (block_size < 1 || block_size > 1024) return invalid("block_size must be in [1, 1024]");
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t needed = (n + block_size - 1) / block_size;
  if (static_cast<int64_t>(block_table.size()) < needed)
    return invalid("the block table has " + std::to_string(block_table.size()) + " blocks; " +
                   std::to_string(n) + " tokens need " + std::to_string(needed));
  int32_t max_block = 0;
  for (int32_t b : block_table) {
    if (b < 0 || b > (1 << 20)) return invalid("block ids must be in [0, 2^20]");
    max_block = std::max(max_block, b);
  }
  for (int32_t t : tokens)
    if (t < 0 || t >= mc.vocab_size) return invalid("token id " + std::to_string(t) + " is outside the vocabulary");

  const int64_t num_blocks = static_cast<int64_t>(max_block) + 1;
  KVCacheView kv = make_kv_view(mc, nullptr, num_blocks, block_size);
  std::unique_ptr<KvPoolMemory> pool;
  LLM_RETURN_IF_ERROR(KvPoolMemory::create(KvPoolMemory::Kind::host,
                                           static_cast<size_t>(num_blocks) * static_cast<size_t>(kv.block_bytes()), &pool));
  kv.data = pool->data();

  const SingleSequenceBatch one(tokens, 0, block_table, block_size, /*all_logits=*/true);
  const ForwardBatch fb = one.batch();
  logits->assign(static_cast<size_t>(n) * mc.vocab_size, 0.0f);
  Status st;
  {
    CpuRunnerOptions ro;
    ro.num_threads = num_threads;
    std::unique_ptr<ModelRunner> runner = make_cpu_runner(model, kv, ro);
    st = runner->forward(fb, logits->data());
  }
  return st;
}

}  // namespace llm
