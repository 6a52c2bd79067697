// addon.cc: the N-API binding, the only code that includes napi.h. Its JS surface is defined
// by ts/native/addon.d.ts; keep the two in step (test/native/addon-exports.test.ts checks).
//
// Owns: JS <-> native conversion, the thread-safe function that carries step outputs from the
// engine thread to JS, and the mapping of Status to JS errors (error.code = StatusCode name).
// Stays true: nothing here runs a forward pass on the JS thread except Model.forward, a tool
// for tests; Engine work happens on the engine thread and close() joins it off the JS thread.
#include <napi.h>

#include <memory>
#include <string>
#include <vector>

#include "engine/engine-thread.h"
#include "kv/kv-block-hash.h"
#include "kv/request-limits.h"
#include "kernels/cpu/bandwidth-probe.h"
#include "kernels/cpu/compute-peak.h"
#include "kernels/cpu/cpu-kernels.h"
#include "napi-util.h"
#include "transfer-binding.h"

namespace {

using llm::Status;

#ifndef KVSERVE_VERSION
#define KVSERVE_VERSION "0.1.0"
#endif

using namespace llm::napi_util;

// ---- native -> JS ----

std::string hash_hex(uint64_t h) {
  static const char* digits = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, h >>= 4) s[i] = digits[h & 0xf];
  return s;
}

Napi::Object model_info_to_js(Napi::Env env, const llm::Model& m) {
  const llm::ModelConfig& c = m.config;
  Napi::Object o = Napi::Object::New(env);
  o.Set("architecture", c.architecture);
  o.Set("dtype", llm::dtype_name(c.dtype));
  o.Set("vocabSize", static_cast<double>(c.vocab_size));
  o.Set("hiddenSize", static_cast<double>(c.hidden_size));
  o.Set("intermediateSize", static_cast<double>(c.intermediate_size));
  o.Set("numLayers", static_cast<double>(c.num_layers));
  o.Set("numHeads", static_cast<double>(c.num_heads));
  o.Set("numKvHeads", static_cast<double>(c.num_kv_heads));
  o.Set("headDim", static_cast<double>(c.head_dim));
  o.Set("maxPositionEmbeddings", static_cast<double>(c.max_position_embeddings));
  o.Set("slidingWindow", static_cast<double>(c.sliding_window));
  o.Set("ropeTheta", static_cast<double>(c.rope_theta));
  o.Set("ropeScalingType", c.rope_scaling.type == llm::RopeScalingType::none ? "none"
                                                                              : llm::rope_type_name(c.rope_scaling.type));
  o.Set("ropeAttentionFactor", static_cast<double>(c.rope_scaling.attention_factor));
  o.Set("qkNorm", c.qk_norm);
  o.Set("tieWordEmbeddings", c.tie_word_embeddings);
  o.Set("bosTokenId", static_cast<double>(c.bos_token_id));
  Napi::Array eos = Napi::Array::New(env, c.eos_token_ids.size());
  for (size_t i = 0; i < c.eos_token_ids.size(); ++i) eos.Set(i, static_cast<double>(c.eos_token_ids[i]));
  o.Set("eosTokenIds", eos);
  o.Set("weightBytes", static_cast<double>(m.weight_bytes));
  return o;
}

Napi::Object metrics_to_js(Napi::Env env, const llm::LoadMetrics& m) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("requestActiveSlots", static_cast<double>(m.request_active_slots));
  o.Set("requestTotalSlots", static_cast<double>(m.request_total_slots));
  o.Set("kvActiveBlocks", static_cast<double>(m.kv_active_blocks));
  o.Set("kvTotalBlocks", static_cast<double>(m.kv_total_blocks));
  o.Set("numRequestsWaiting", static_cast<double>(m.num_requests_waiting));
  o.Set("kvCacheUsage", m.kv_cache_usage);
  o.Set("prefixCacheHitRate", m.prefix_cache_hit_rate);
  o.Set("prefixCacheQueries", static_cast<double>(m.prefix_cache_queries));
  o.Set("prefixCacheHits", static_cast<double>(m.prefix_cache_hits));
  o.Set("numPreemptions", static_cast<double>(m.num_preemptions));
  o.Set("tokenMaskWaitSeconds", m.token_mask_wait_seconds);
  o.Set("tokenMaskWaitSteps", static_cast<double>(m.token_mask_wait_steps));
  o.Set("tokenMaskDeferredRows", static_cast<double>(m.token_mask_deferred_rows));
  return o;
}

Napi::Array hashes_to_js(Napi::Env env, const std::vector<uint64_t>& hashes) {
  Napi::Array a = Napi::Array::New(env, hashes.size());
  for (size_t i = 0; i < hashes.size(); ++i) a.Set(i, hash_hex(hashes[i]));
  return a;
}

Napi::Object event_to_js(Napi::Env env, const llm::KVEvent& e) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("eventId", static_cast<double>(e.event_id));
  switch (e.type) {
    case llm::KVEventType::stored:
      o.Set("type", "stored");
      o.Set("parentHash", e.has_parent ? Napi::Value(Napi::String::New(env, hash_hex(e.parent_hash))) : env.Null());
      o.Set("blockHashes", hashes_to_js(env, e.block_hashes));
      break;
    case llm::KVEventType::removed:
      o.Set("type", "removed");
      o.Set("blockHashes", hashes_to_js(env, e.block_hashes));
      break;
    case llm::KVEventType::cleared: o.Set("type", "cleared"); break;
  }
  return o;
}

Napi::Object output_to_js(Napi::Env env, const llm::RequestOutput& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("requestId", r.request_id);
  Napi::Array toks = Napi::Array::New(env, r.new_token_ids.size());
  for (size_t i = 0; i < r.new_token_ids.size(); ++i) toks.Set(i, r.new_token_ids[i]);
  o.Set("newTokenIds", toks);
  if (r.has_logprobs) {
    Napi::Array lps = Napi::Array::New(env, r.logprobs.size());
    for (size_t i = 0; i < r.logprobs.size(); ++i) {
      const llm::TokenLogprobs& t = r.logprobs[i];
      Napi::Object lp = Napi::Object::New(env);
      lp.Set("tokenId", t.token_id);
      lp.Set("logprob", t.logprob);
      Napi::Array ids = Napi::Array::New(env, t.top_ids.size());
      Napi::Array vals = Napi::Array::New(env, t.top_logprobs.size());
      for (size_t k = 0; k < t.top_ids.size(); ++k) ids.Set(k, t.top_ids[k]);
      for (size_t k = 0; k < t.top_logprobs.size(); ++k) vals.Set(k, t.top_logprobs[k]);
      lp.Set("topIds", ids);
      lp.Set("topLogprobs", vals);
      lps.Set(i, lp);
    }
    o.Set("logprobs", lps);
  }
  if (r.finish_reason != llm::FinishReason::none) o.Set("finishReason", llm::finish_reason_name(r.finish_reason));
  if (r.stop_token_id >= 0) o.Set("stopTokenId", r.stop_token_id);
  o.Set("numPromptTokens", static_cast<double>(r.num_prompt_tokens));
  o.Set("numCachedTokens", static_cast<double>(r.num_cached_tokens));
  if (!r.error.empty()) o.Set("error", r.error);
  if (r.awaiting_kv) o.Set("awaitingKv", true);
  if (r.awaiting_kv || r.finish_reason == llm::FinishReason::prefilled) {
    Napi::Array ids = Napi::Array::New(env, r.block_ids.size());
    for (size_t i = 0; i < r.block_ids.size(); ++i) ids.Set(i, r.block_ids[i]);
    o.Set("blockIds", ids);
  }
  return o;
}

Napi::Object step_to_js(Napi::Env env, const llm::StepResult& s) {
  Napi::Object o = Napi::Object::New(env);
  Napi::Array outs = Napi::Array::New(env, s.outputs.size());
  for (size_t i = 0; i < s.outputs.size(); ++i) outs.Set(i, output_to_js(env, s.outputs[i]));
  Napi::Array evs = Napi::Array::New(env, s.events.size());
  for (size_t i = 0; i < s.events.size(); ++i) evs.Set(i, event_to_js(env, s.events[i]));
  o.Set("outputs", outs);
  o.Set("kvEvents", evs);
  o.Set("metrics", metrics_to_js(env, s.metrics));
  if (!s.fatal.empty()) o.Set("fatal", s.fatal);
  return o;
}

// ---- Engine ----

// EngineOptions (ts/native/engine.ts, already validated there) -> EngineConfig.
llm::EngineConfig engine_config(Napi::Env env, const Napi::Object& o) {
  llm::EngineConfig cfg;
  cfg.model_dir = get_string(o, "modelDir");
  cfg.worker_id = get_string(o, "workerId");
  cfg.block_size = get_int(o, "blockSize");
  cfg.max_model_len = get_int(o, "maxModelLen");
  cfg.max_num_seqs = get_int(o, "maxNumSeqs");
  cfg.max_num_batched_tokens = get_int(o, "maxNumBatchedTokens");
  cfg.num_kv_blocks = get_int(o, "numKvBlocks");
  cfg.kv_cache_bytes = get_int(o, "kvCacheBytes");
  cfg.num_threads = static_cast<int>(get_int(o, "numThreads"));
  cfg.cpu_offset = o.Has("cpuOffset") ? static_cast<int>(get_int(o, "cpuOffset")) : -1;
  cfg.cpu_tile_weights = get_bool(o, "cpuTileWeights");
  cfg.enable_prefix_caching = get_bool(o, "enablePrefixCaching");
  cfg.kv_shared_memory = get_bool(o, "kvSharedMemory");
  cfg.device = o.Has("device") ? get_string(o, "device") : std::string("cpu");
  cfg.seed = static_cast<uint64_t>(get_int(o, "seed"));
  cfg.tp_size = o.Has("tpSize") ? static_cast<int>(get_int(o, "tpSize")) : 1;
  cfg.tp_group = o.Has("tpGroup") ? get_string(o, "tpGroup") : std::string();
  if (o.Has("tpRankPids")) {
    for (int32_t pid : get_int32_array(env, o.Get("tpRankPids"), "tpRankPids")) cfg.tp_rank_pids.push_back(pid);
  }
  if (o.Has("tokenMaskTimeoutMs")) cfg.token_mask_timeout_ms = get_int(o, "tokenMaskTimeoutMs");
  return cfg;
}

// runTensorParallelRank(options, rank): runs rank `rank` (1..tpSize-1) of options.tpGroup on the
// calling thread until rank 0 stops it (returns) or the group breaks (throws).
Napi::Value RunTensorParallelRank(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsNumber())
    throw_invalid(env, "runTensorParallelRank(options, rank): options must be an object and rank a number");
  const llm::EngineConfig cfg = engine_config(env, info[0].As<Napi::Object>());
  const Status st = llm::run_tp_rank(cfg, info[1].As<Napi::Number>().Int32Value());
  if (!st.ok()) throw_status(env, st);
  return env.Undefined();
}

class EngineWrap;
void deliver_step(Napi::Env env, Napi::Function callback, EngineWrap* self, llm::StepResult* step);
using StepTsfn = Napi::TypedThreadSafeFunction<EngineWrap, llm::StepResult, deliver_step>;

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Engine",
                       {InstanceMethod("info", &EngineWrap::Info), InstanceMethod("addRequest", &EngineWrap::AddRequest),
                        InstanceMethod("abort", &EngineWrap::Abort),
                        InstanceMethod("setTokenMask", &EngineWrap::SetTokenMask),
                        InstanceMethod("completeExternalKv", &EngineWrap::CompleteExternalKv),
                        InstanceMethod("releaseHeld", &EngineWrap::ReleaseHeld),
                        InstanceMethod("replayKvEvents", &EngineWrap::ReplayKvEvents),
                        InstanceMethod("metrics", &EngineWrap::Metrics), InstanceMethod("kvRegion", &EngineWrap::KvRegion),
                        InstanceMethod("kvRegions", &EngineWrap::KvRegions),
                        InstanceMethod("close", &EngineWrap::Close)});
  }

  explicit EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction())
      throw_invalid(env, "new Engine(options, onStep): options must be an object and onStep a function");
    const llm::EngineConfig cfg = engine_config(env, info[0].As<Napi::Object>());

    std::unique_ptr<llm::Engine> engine;
    Status st = llm::Engine::create(cfg, &engine);
    if (!st.ok()) throw_status(env, st);
    model_info_ = Napi::Persistent(model_info_to_js(env, engine->model()));

    // Unreferenced while idle, so an idle engine never keeps the process alive; referenced while
    // requests are in flight (see AddRequest / OnStep).
    tsfn_ = StepTsfn::New(env, info[1].As<Napi::Function>(), "kvserve-engine", 0, 1, this);
    tsfn_.Unref(env);
    thread_ = std::make_unique<llm::EngineThread>(std::move(engine), [this](std::unique_ptr<llm::StepResult> s) {
      // On the engine thread: hand the step to JS; if JS is gone (closing), drop it.
      llm::StepResult* raw = s.release();
      if (tsfn_.NonBlockingCall(raw) != napi_ok) delete raw;
    });
  }

  ~EngineWrap() override { Shutdown(); }

  // On the JS thread, for every delivered step.
  void OnStep(Napi::Env env, Napi::Function callback, const llm::StepResult& step) {
    for (const llm::RequestOutput& o : step.outputs)
      if (o.finish_reason != llm::FinishReason::none && inflight_ > 0 && --inflight_ == 0) tsfn_.Unref(env);
    callback.Call({step_to_js(env, step)});
  }

  // Stops the engine thread (joining it) and releases the function. Safe to call twice.
  void Shutdown() {
    if (thread_) {
      thread_->stop();
      thread_.reset();
    }
    if (!released_) {
      released_ = true;
      tsfn_.Release();
    }
  }

 private:
  llm::EngineThread* live(Napi::Env env) {
    if (!thread_ || closing_) throw_status(env, Status(llm::StatusCode::engine_closed, "the engine is closed"));
    return thread_.get();
  }

  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const llm::EngineInfo& ei = live(env)->engine().info();
    Napi::Object o = Napi::Object::New(env);
    o.Set("backend", ei.backend);
    o.Set("kernels", ei.kernels);
    o.Set("numKvBlocks", static_cast<double>(ei.num_kv_blocks));
    o.Set("blockSize", static_cast<double>(ei.block_size));
    o.Set("maxModelLen", static_cast<double>(ei.max_model_len));
    o.Set("kvCacheDtype", llm::dtype_name(ei.kv_dtype));
    o.Set("kvBlockBytes", static_cast<double>(ei.kv_block_bytes));
    o.Set("tpSize", static_cast<double>(ei.tp_size));
    o.Set("vocabSize", static_cast<double>(ei.vocab_size));
    o.Set("tokenMaskWords", static_cast<double>(ei.token_mask_words));
    o.Set("model", model_info_.Value());
    return o;
  }

  Napi::Value KvRegions(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const std::vector<llm::KvRegion> regions = live(env)->engine().kv_regions();
    Napi::Array out = Napi::Array::New(env, regions.size());
    for (size_t i = 0; i < regions.size(); ++i) out.Set(static_cast<uint32_t>(i), kv_region_to_js(env, regions[i]));
    return out;
  }

  Napi::Value KvRegion(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return kv_region_to_js(env, live(env)->engine().kv_region());
  }

  static Napi::Object kv_region_to_js(Napi::Env env, const llm::KvRegion& r) {
    Napi::Object o = Napi::Object::New(env);
    const bool gpu = r.device_data || !r.device_ipc_handle.empty();
    o.Set("memory", gpu ? "cuda" : "host");
    o.Set("shmName", r.shm_name);
    // A GPU pool: this process's device pointer, opaque to JS, for TransferAgent.registerRegions;
    // another rank's allocation, by the CUDA IPC handle its process exported.
    if (r.device_data) o.Set("deviceRegion", Napi::External<void>::New(env, r.device_data));
    if (!r.device_ipc_handle.empty()) {
      o.Set("deviceIpcHandle", r.device_ipc_handle);
      o.Set("deviceUuid", r.device_uuid);
    }
    o.Set("bytes", static_cast<double>(r.bytes));
    o.Set("numBlocks", static_cast<double>(r.view.num_blocks));
    o.Set("blockBytes", static_cast<double>(r.view.block_bytes()));
    o.Set("numLayers", static_cast<double>(r.view.num_layers));
    o.Set("blockSize", static_cast<double>(r.view.block_size));
    o.Set("numKvHeads", static_cast<double>(r.view.num_kv_heads));
    o.Set("headDim", static_cast<double>(r.view.head_dim));
    o.Set("dtype", llm::dtype_name(r.view.dtype));
    o.Set("tpRank", static_cast<double>(r.tp_rank));
    o.Set("firstKvHead", static_cast<double>(r.first_kv_head));
    o.Set("modelKvHeads", static_cast<double>(r.model_kv_heads));
    return o;
  }

  Napi::Value AddRequest(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    llm::EngineThread* t = live(env);
    if (info.Length() < 1 || !info[0].IsObject()) throw_invalid(env, "addRequest(request): request must be an object");
    Napi::Object o = info[0].As<Napi::Object>();
    auto req = std::make_unique<llm::Request>();
    req->request_id = get_string(o, "requestId");
    req->prompt_token_ids = get_int32_array(env, required(o, "promptTokenIds"), "promptTokenIds");
    llm::SamplingParams& p = req->params;
    p.max_tokens = get_int(o, "maxTokens");
    p.min_tokens = get_int(o, "minTokens");
    p.temperature = static_cast<float>(get_number(o, "temperature"));
    p.top_p = static_cast<float>(get_number(o, "topP"));
    p.top_k = static_cast<int32_t>(get_int(o, "topK"));
    p.min_p = static_cast<float>(get_number(o, "minP"));
    const int64_t seed = get_int(o, "seed");
    p.has_seed = seed >= 0;
    p.seed = p.has_seed ? static_cast<uint64_t>(seed) : 0;
    p.repetition_penalty = static_cast<float>(get_number(o, "repetitionPenalty"));
    p.presence_penalty = static_cast<float>(get_number(o, "presencePenalty"));
    p.frequency_penalty = static_cast<float>(get_number(o, "frequencyPenalty"));
    p.stop_token_ids = get_int32_array(env, required(o, "stopTokenIds"), "stopTokenIds");
    p.ignore_eos = get_bool(o, "ignoreEos");
    p.logprobs = static_cast<int32_t>(get_int(o, "logprobs"));
    // A resumed request (request migration): the tokens it generated before, placed after the
    // prompt and counted as its outputs. Absent: none.
    const Napi::Value outputs = o.Get("outputTokenIds");
    if (!outputs.IsUndefined()) req->output_token_ids = get_int32_array(env, outputs, "outputTokenIds");
    req->num_external_tokens = get_int(o, "numExternalTokens");
    req->prefill_only = get_bool(o, "prefillOnly");
    // Scheduling priority, lower first (scheduler.h). Absent: 0.
    if (!o.Get("priority").IsUndefined()) req->priority = static_cast<int32_t>(get_int(o, "priority"));
    // Structured output: present = constrained, the mask of its first sampled output.
    const Napi::Value mask = o.Get("tokenMask");
    if (!mask.IsUndefined()) {
      req->params.constrained = true;
      req->token_mask = get_int32_array(env, mask, "tokenMask");
    }
    Status st = t->add_request(std::move(req));
    if (!st.ok()) throw_status(env, st);
    if (inflight_++ == 0) tsfn_.Ref(env);
    return env.Undefined();
  }

  Napi::Value Abort(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) throw_invalid(env, "abort(requestId): requestId must be a string");
    live(env)->abort(info[0].As<Napi::String>().Utf8Value());
    return env.Undefined();
  }

  // setTokenMask(requestId, outputIndex, mask) -> stored. Off the command queue (the engine
  // thread may be waiting for this very mask); a wrong length throws, naming both lengths.
  Napi::Value SetTokenMask(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    llm::EngineThread* t = live(env);
    if (info.Length() < 3 || !info[0].IsString() || !info[1].IsNumber())
      throw_invalid(env, "setTokenMask(requestId, outputIndex, mask): requestId must be a string and outputIndex a number");
    const int64_t index = info[1].As<Napi::Number>().Int64Value();
    std::vector<int32_t> words = arg_int32_array(info, 2, "mask");
    const Status st = t->engine().token_masks().check_words(words.size());
    if (!st.ok()) throw_status(env, st);
    return Napi::Boolean::New(env, t->set_token_mask(info[0].As<Napi::String>().Utf8Value(), index, std::move(words)));
  }

  Napi::Value CompleteExternalKv(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsBoolean())
      throw_invalid(env, "completeExternalKv(requestId, ok): requestId must be a string and ok a boolean");
    live(env)->complete_external_kv(info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::Boolean>().Value());
    return env.Undefined();
  }

  Napi::Value ReleaseHeld(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) throw_invalid(env, "releaseHeld(requestId): requestId must be a string");
    live(env)->release_held(info[0].As<Napi::String>().Utf8Value());
    return env.Undefined();
  }

  Napi::Value ReplayKvEvents(const Napi::CallbackInfo& info) {
    live(info.Env())->request_replay();
    return info.Env().Undefined();
  }

  Napi::Value Metrics(const Napi::CallbackInfo& info) {
    return metrics_to_js(info.Env(), live(info.Env())->metrics());
  }

  // Joins the engine thread off the JS thread, then (back on it) releases the function, so no
  // step can be handed to a released function. Resolves when everything is freed.
  class CloseWorker : public Napi::AsyncWorker {
   public:
    CloseWorker(Napi::Env env, EngineWrap* self)
        : Napi::AsyncWorker(env), self_(self), deferred_(Napi::Promise::Deferred::New(env)) {}
    Napi::Promise Promise() { return deferred_.Promise(); }
    void Execute() override { self_->thread_->stop(); }
    void OnOK() override {
      self_->Shutdown();
      self_->Unref();
      deferred_.Resolve(Env().Undefined());
    }

   private:
    EngineWrap* self_;
    Napi::Promise::Deferred deferred_;
  };

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closing_ || !thread_) {
      auto d = Napi::Promise::Deferred::New(env);
      d.Resolve(env.Undefined());
      return d.Promise();
    }
    closing_ = true;
    Ref();  // keep this wrapper alive until the worker is done with it
    auto* worker = new CloseWorker(env, this);
    Napi::Promise p = worker->Promise();
    worker->Queue();
    return p;
  }

  std::unique_ptr<llm::EngineThread> thread_;
  StepTsfn tsfn_;
  Napi::ObjectReference model_info_;
  int64_t inflight_ = 0;
  bool closing_ = false;
  bool released_ = false;
};

void deliver_step(Napi::Env env, Napi::Function callback, EngineWrap* self, llm::StepResult* step) {
  std::unique_ptr<llm::StepResult> owned(step);
  if (env != nullptr && callback != nullptr) self->OnStep(env, callback, *owned);
}

// ---- Model (tests and tools) ----

class ModelWrap : public Napi::ObjectWrap<ModelWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Model",
                       {InstanceMethod("info", &ModelWrap::Info), InstanceMethod("forward", &ModelWrap::Forward),
                        InstanceMethod("close", &ModelWrap::Close)});
  }

  explicit ModelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ModelWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber())
      throw_invalid(env, "new Model(modelDir, numThreads)");
    num_threads_ = info[1].As<Napi::Number>().Int32Value();
    Status st = llm::load_model(info[0].As<Napi::String>().Utf8Value(), llm::ModelLoadOptions{}, &model_);
    if (!st.ok()) throw_status(env, st);
  }

 private:
  const llm::Model& live(Napi::Env env) {
    if (!model_) throw_status(env, Status(llm::StatusCode::engine_closed, "the model is closed"));
    return *model_;
  }

  Napi::Value Info(const Napi::CallbackInfo& info) { return model_info_to_js(info.Env(), live(info.Env())); }

  Napi::Value Forward(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const llm::Model& m = live(env);
    if (info.Length() < 3 || !info[2].IsNumber()) throw_invalid(env, "forward(tokens, blockTable, blockSize)");
    std::vector<int32_t> tokens = get_int32_array(env, info[0], "tokens");
    std::vector<int32_t> table = get_int32_array(env, info[1], "blockTable");
    std::vector<float> logits;
    Status st = llm::forward_single_sequence(m, num_threads_, tokens, table, info[2].As<Napi::Number>().Int64Value(),
                                             &logits);
    if (!st.ok()) throw_status(env, st);
    Napi::Float32Array out = Napi::Float32Array::New(env, logits.size());
    std::copy(logits.begin(), logits.end(), out.Data());
    return out;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    model_.reset();
    return info.Env().Undefined();
  }

  std::unique_ptr<llm::Model> model_;
  int num_threads_ = 0;
};

// ---- free functions ----

Napi::Value InspectModel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw_invalid(env, "inspectModel(modelDir): modelDir must be a string");
  std::unique_ptr<llm::Model> model;
  Status st = llm::load_model(info[0].As<Napi::String>().Utf8Value(), llm::ModelLoadOptions{}, &model);
  if (!st.ok()) throw_status(env, st);
  return model_info_to_js(env, *model);
}

Napi::Value BlockHashes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[1].IsNumber()) throw_invalid(env, "blockHashes(tokens, blockSize)");
  std::vector<int32_t> tokens = get_int32_array(env, info[0], "tokens");
  const int64_t block_size = info[1].As<Napi::Number>().Int64Value();
  if (block_size < 1 || block_size > 1024) throw_invalid(env, "blockSize must be in [1, 1024]");
  std::vector<uint64_t> hashes;
  llm::extend_block_hashes(tokens.data(), static_cast<int64_t>(tokens.size()), block_size, &hashes);
  return hashes_to_js(env, hashes);
}

// readBandwidthGBs(bytes = 1 GiB, threads = 0): the STREAM-like read probe (bandwidth-probe.h).
// Blocks the calling thread for about a second: for benchmarks, not the serving path.
Napi::Value ReadBandwidthGBs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t bytes = int64_t{1} << 30;
  int threads = 0;
  if (info.Length() > 0 && !info[0].IsUndefined()) {
    if (!info[0].IsNumber()) throw_invalid(env, "readBandwidthGBs(bytes, threads): bytes must be a number");
    bytes = info[0].As<Napi::Number>().Int64Value();
  }
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    if (!info[1].IsNumber()) throw_invalid(env, "readBandwidthGBs(bytes, threads): threads must be a number");
    threads = info[1].As<Napi::Number>().Int32Value();
  }
  double gbs = 0.0;
  Status st = llm::cpu::read_bandwidth_gbs(bytes, threads, &gbs);
  if (!st.ok()) throw_status(env, st);
  return Napi::Number::New(env, gbs);
}

// computePeakGflops(path = the path in use, threads = 0): GFLOP/s of the path's main instruction
// with data in registers (compute-peak.h). Blocks for a fraction of a second: for benchmarks.
Napi::Value ComputePeakGflops(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = llm::cpu::cpu_kernels().name;
  int threads = 0;
  if (info.Length() > 0 && !info[0].IsUndefined()) {
    if (!info[0].IsString()) throw_invalid(env, "computePeakGflops(path, threads): path must be a string");
    name = info[0].As<Napi::String>().Utf8Value();
  }
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    if (!info[1].IsNumber()) throw_invalid(env, "computePeakGflops(path, threads): threads must be a number");
    threads = info[1].As<Napi::Number>().Int32Value();
  }
  llm::cpu::CpuPath path;
  if (!llm::cpu::cpu_path_from_name(name.c_str(), &path))
    throw_invalid(env, "computePeakGflops(path, threads): unknown kernel path '" + name + "'");
  double gflops = 0.0;
  Status st = llm::cpu::compute_peak_gflops(path, threads, &gflops);
  if (!st.ok()) throw_status(env, st);
  return Napi::Number::New(env, gflops);
}

// cpuKernelInfo(): the ISA the dispatch detected and the kernel path it picked (cpu-kernels.h).
Napi::Value CpuKernelInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const llm::cpu::CpuKernelInfo k = llm::cpu::cpu_kernel_info();
  Napi::Array isa = Napi::Array::New(env, k.isa.size());
  for (size_t i = 0; i < k.isa.size(); ++i) isa.Set(static_cast<uint32_t>(i), k.isa[i]);
  Napi::Object o = Napi::Object::New(env);
  o.Set("isa", isa);
  o.Set("path", k.path);
  return o;
}

// cudaDevice(): whether this build has the CUDA backend and a device it can use
// (model-runner-cuda.h): {compiled, usable, description}, description naming the device when
// usable, else why not.
Napi::Value CudaDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string description;
  const Status st = llm::cuda_device_usable(&description);
  Napi::Object o = Napi::Object::New(env);
  o.Set("compiled", llm::cuda_backend_built());
  o.Set("usable", st.ok());
  o.Set("description", st.ok() ? description : st.message());
  return o;
}

// requestLimits(): the engine's constant per-request limits (kv/request-limits.h), for the TS
// checks that run before a request reaches the engine; the per-engine ones are in Engine.info().
Napi::Value RequestLimits(const Napi::CallbackInfo& info) {
  using L = llm::RequestLimits;
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("minMaxTokens", static_cast<double>(L::min_max_tokens));
  o.Set("minTemperature", static_cast<double>(L::min_temperature));
  o.Set("maxTopP", static_cast<double>(L::max_top_p));
  o.Set("minTopK", static_cast<double>(L::min_top_k));
  o.Set("maxMinP", static_cast<double>(L::max_min_p));
  o.Set("minPenalty", static_cast<double>(L::min_penalty));
  o.Set("maxPenalty", static_cast<double>(L::max_penalty));
  o.Set("maxLogprobs", static_cast<double>(L::max_logprobs));
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Engine", EngineWrap::Init(env));
  exports.Set("Model", ModelWrap::Init(env));
  exports.Set("inspectModel", Napi::Function::New(env, InspectModel, "inspectModel"));
  exports.Set("blockHashes", Napi::Function::New(env, BlockHashes, "blockHashes"));
  exports.Set("readBandwidthGBs", Napi::Function::New(env, ReadBandwidthGBs, "readBandwidthGBs"));
  exports.Set("cpuKernelInfo", Napi::Function::New(env, CpuKernelInfo, "cpuKernelInfo"));
  exports.Set("computePeakGflops", Napi::Function::New(env, ComputePeakGflops, "computePeakGflops"));
  exports.Set("requestLimits", Napi::Function::New(env, RequestLimits, "requestLimits"));
  exports.Set("runTensorParallelRank", Napi::Function::New(env, RunTensorParallelRank, "runTensorParallelRank"));
  llm::register_transfer_exports(env, exports);
  exports.Set("version", Napi::String::New(env, KVSERVE_VERSION));
  exports.Set("cudaCompiled", Napi::Boolean::New(env, llm::cuda_backend_built()));
  exports.Set("cudaDevice", Napi::Function::New(env, CudaDevice, "cudaDevice"));
  return exports;
}

}  // namespace

NODE_API_MODULE(kvserve, Init)
