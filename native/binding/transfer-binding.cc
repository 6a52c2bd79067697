// transfer-binding.cc: class TransferAgent, the JS face of llm::transfer::Agent. Its surface is
// defined by ts/native/addon.d.ts (test/native/addon-exports.test.ts checks the two agree).
//
// Owns: one agent (shared with the workers running its transfers) and the thread-safe function
// that carries notifications from the agent's listener threads to onNotification.
// Stays true: write, read and close run off the JS thread (AsyncWorker) and settle a promise;
// connect runs on it, bounded by a short timeout. A failure throws or rejects with an error
// whose `code` is the StatusCode name. The function
// is unreferenced for its whole life, so an agent never keeps the process alive; it is
// released only after close() has joined the listener threads (the only callers).
#include "transfer-binding.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "napi-util.h"
#include "transfer/transfer-agent.h"

namespace llm {
namespace {

using transfer::Agent;
using transfer::Notification;

using namespace napi_util;

// Runs `work` on a worker thread, then (on the JS thread) `after` and settles the promise with
// the work's Status.
class StatusWorker : public Napi::AsyncWorker {
 public:
  using Work = std::function<Status()>;
  StatusWorker(Napi::Env env, Work work, std::function<void()> after = nullptr)
      : Napi::AsyncWorker(env),
        work_(std::move(work)),
        after_(std::move(after)),
        deferred_(Napi::Promise::Deferred::New(env)) {}

  // Queues the worker; the promise it will settle.
  Napi::Promise Start() {
    Napi::Promise p = deferred_.Promise();
    Queue();
    return p;
  }

  void Execute() override { status_ = work_(); }

  void OnOK() override {
    if (after_) after_();
    if (status_.ok()) {
      deferred_.Resolve(Env().Undefined());
    } else {
      deferred_.Reject(status_error(Env(), status_).Value());
    }
  }

 private:
  Work work_;
  std::function<void()> after_;
  Napi::Promise::Deferred deferred_;
  Status status_;
};

void deliver_notification(Napi::Env env, Napi::Function callback, std::nullptr_t*, Notification* n) {
  std::unique_ptr<Notification> owned(n);
  if (env != nullptr && callback != nullptr)
    callback.Call({Napi::String::New(env, owned->from), Napi::String::New(env, owned->message)});
}
using NotifyTsfn = Napi::TypedThreadSafeFunction<std::nullptr_t, Notification, deliver_notification>;

class TransferAgentWrap : public Napi::ObjectWrap<TransferAgentWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "TransferAgent",
                       {InstanceMethod("registerRegion", &TransferAgentWrap::RegisterRegion),
                        InstanceMethod("registerRegions", &TransferAgentWrap::RegisterRegions),
                        InstanceMethod("metadata", &TransferAgentWrap::Metadata),
                        InstanceMethod("connect", &TransferAgentWrap::Connect),
                        InstanceMethod("write", &TransferAgentWrap::Write), InstanceMethod("read", &TransferAgentWrap::Read),
                        InstanceMethod("stats", &TransferAgentWrap::Stats), InstanceMethod("close", &TransferAgentWrap::Close)});
  }

  explicit TransferAgentWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TransferAgentWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction())
      throw_invalid(env, "new TransferAgent(options, onNotification): options must be an object and onNotification a function");
    Napi::Object o = info[0].As<Napi::Object>();
    transfer::AgentConfig cfg;
    cfg.name = get_string(o, "name");
    cfg.listen_host = get_string(o, "listenHost");
    cfg.listen_port = static_cast<int>(get_int(o, "listenPort"));
    cfg.cluster_secret = o.Has("clusterSecret") ? get_string(o, "clusterSecret") : std::string();
    tsfn_ = NotifyTsfn::New(env, info[1].As<Napi::Function>(), "kvserve-transfer", 0, 1, nullptr);
    tsfn_.Unref(env);
    NotifyTsfn tsfn = tsfn_;
    cfg.on_notification = [tsfn](Notification n) mutable {
      auto* raw = new Notification(std::move(n));
      if (tsfn.NonBlockingCall(raw) != napi_ok) delete raw;  // JS is shutting down
    };
    std::unique_ptr<Agent> agent;
    Status st = Agent::create(cfg, &agent);
    if (!st.ok()) {
      tsfn_.Release();
      throw status_error(env, st);
    }
    agent_ = std::move(agent);
  }

  // Collected without close(): stop the listener here (the threads wake at once) and release.
  ~TransferAgentWrap() override {
    if (closed_ || !agent_) return;  // closed, or the constructor threw (and released)
    agent_->close();
    tsfn_.Release();
  }

 private:
  void check(Napi::Env env, const Status& st) {
    if (!st.ok()) throw status_error(env, st);
  }

  // registerRegion(region) = registerRegions([region]).
  Napi::Value RegisterRegion(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) throw_invalid(env, "registerRegion(region): region must be an object");
    register_regions(env, {info[0].As<Napi::Object>()});
    return env.Undefined();
  }

  Napi::Value RegisterRegions(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsArray())
      throw_invalid(env, "registerRegions(regions): regions must be an array of KV regions");
    Napi::Array a = info[0].As<Napi::Array>();
    std::vector<Napi::Object> regions;
    for (uint32_t i = 0; i < a.Length(); ++i) {
      if (!a.Get(i).IsObject()) throw_invalid(env, "registerRegions(regions): regions[" + std::to_string(i) + "] must be an object");
      regions.push_back(a.Get(i).As<Napi::Object>());
    }
    register_regions(env, regions);
    return env.Undefined();
  }

  // One region per rank of one pool: they must agree on the model-level fields (regions[0]'s);
  // a region without tpRank / firstKvHead / modelKvHeads is rank 0 holding all its numKvHeads.
  void register_regions(Napi::Env env, const std::vector<Napi::Object>& regions) {
    if (regions.empty()) throw_invalid(env, "registerRegions(regions): regions is empty");
    auto optional_int = [](const Napi::Object& o, const char* key, int64_t fallback) {
      return o.Get(key).IsUndefined() ? fallback : get_int(o, key);
    };
    transfer::Layout model;
    std::string memory;
    std::vector<transfer::RegionSpec> specs;
    for (size_t i = 0; i < regions.size(); ++i) {
      const Napi::Object& o = regions[i];
      transfer::Layout l;
      l.num_blocks = get_int(o, "numBlocks");
      l.num_layers = get_int(o, "numLayers");
      l.block_size = get_int(o, "blockSize");
      l.head_dim = get_int(o, "headDim");
      const std::string dtype = get_string(o, "dtype");
      if (!transfer::dtype_from_name(dtype, &l.dtype)) throw_invalid(env, "unknown dtype '" + dtype + "'");
      transfer::RegionSpec r;
      r.num_kv_heads = get_int(o, "numKvHeads");
      r.tp_rank = optional_int(o, "tpRank", 0);
      r.first_kv_head = optional_int(o, "firstKvHead", 0);
      l.num_kv_heads = optional_int(o, "modelKvHeads", r.num_kv_heads);
      r.bytes = get_int(o, "bytes");
      if (r.bytes < 0) throw_invalid(env, "option 'bytes' must be >= 0");
      const std::string mem = o.Has("memory") ? get_string(o, "memory") : "host";
      const std::string what = "KV region " + std::to_string(i) + " (rank " + std::to_string(r.tp_rank) + "): ";
      if (!transfer::block_bytes_of(l, l.num_kv_heads, &l.block_bytes))
        check(env, Status(StatusCode::transfer_invalid, what + "its layout is not a valid KV layout"));
      int64_t block_bytes = 0;
      if (!transfer::block_bytes_of(l, r.num_kv_heads, &block_bytes) || block_bytes != get_int(o, "blockBytes"))
        check(env, Status(StatusCode::transfer_invalid, what + "blockBytes " + std::to_string(get_int(o, "blockBytes")) +
                                                            " is not 2 * layers * blockSize * numKvHeads * headDim * dtype size"));
      if (i == 0) {
        model = l;
        memory = mem;
      } else {
        const std::string differs = transfer::layout_mismatch(model, l);
        if (!differs.empty() || l.num_blocks != model.num_blocks || mem != memory)
          check(env, Status(StatusCode::transfer_invalid,
                            what + "another pool than region 0's: " +
                                (!differs.empty() ? differs : mem != memory ? "memory " + memory + " vs " + mem
                                                                            : "numBlocks " + std::to_string(model.num_blocks) +
                                                                                  " vs " + std::to_string(l.num_blocks))));
      }
      if (mem != "cuda") r.shm_name = get_string(o, "shmName");
      specs.push_back(std::move(r));
    }
    if (memory == "cuda") {
      // Rank 0's allocation is this process's (deviceRegion); every other rank's was exported by
      // its own process (deviceIpcHandle, deviceUuid).
      std::vector<transfer::Agent::DeviceRegion> device_regions;
      for (size_t i = 0; i < specs.size(); ++i) {
        transfer::Agent::DeviceRegion d;
        d.spec = specs[i];
        const Napi::Value local = regions[i].Get("deviceRegion");
        if (local.IsExternal()) {
          d.data = local.As<Napi::External<void>>().Data();
        } else if (regions[i].Has("deviceIpcHandle")) {
          d.spec.cuda_ipc_handle = get_string(regions[i], "deviceIpcHandle");
          d.spec.cuda_device = get_string(regions[i], "deviceUuid");
        } else {
          throw_invalid(env, "GPU KV region " + std::to_string(i) +
                                 " needs its deviceRegion or its deviceIpcHandle and deviceUuid (from Engine.kvRegions())");
        }
        device_regions.push_back(std::move(d));
      }
      check(env, agent_->register_device_regions(device_regions, model));
    } else {
      check(env, agent_->register_regions(specs, model));
    }
  }

  Napi::Value Metadata(const Napi::CallbackInfo& info) {
    std::string m;
    check(info.Env(), agent_->metadata(&m));
    return Napi::String::New(info.Env(), m);
  }

  // On the JS thread: a TCP connect and one round trip, bounded by kConnectTimeoutSeconds.
  Napi::Value Connect(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const std::string metadata = arg_string(info, 0, "metadata");
    const std::string name = arg_string(info, 1, "backend");
    transfer::Backend backend = transfer::Backend::automatic;
    if (name == "shm") backend = transfer::Backend::shm;
    else if (name == "tcp") backend = transfer::Backend::tcp;
    else if (name == "cuda_ipc") backend = transfer::Backend::cuda_ipc;
    else if (name != "auto") throw_invalid(env, "backend must be 'auto', 'shm', 'tcp' or 'cuda_ipc'");
    transfer::Connection c;
    check(env, agent_->connect(metadata, backend, &c));
    return Napi::String::New(env, c.remote_name);
  }

  Napi::Value Write(const Napi::CallbackInfo& info) {
    std::vector<int32_t> local = arg_int32_array(info, 0, "localBlocks");
    const std::string remote = arg_string(info, 1, "remote");
    std::vector<int32_t> remote_blocks = arg_int32_array(info, 2, "remoteBlocks");
    const std::string notification = arg_string(info, 3, "notification");
    std::shared_ptr<Agent> agent = agent_;
    auto work = [agent, local, remote, remote_blocks, notification] {
      return agent->write(local, remote, remote_blocks, notification);
    };
    return (new StatusWorker(info.Env(), work))->Start();
  }

  Napi::Value Read(const Napi::CallbackInfo& info) {
    const std::string remote = arg_string(info, 0, "remote");
    std::vector<int32_t> remote_blocks = arg_int32_array(info, 1, "remoteBlocks");
    std::vector<int32_t> local = arg_int32_array(info, 2, "localBlocks");
    std::shared_ptr<Agent> agent = agent_;
    auto work = [agent, remote, remote_blocks, local] { return agent->read(remote, remote_blocks, local); };
    return (new StatusWorker(info.Env(), work))->Start();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const transfer::AgentStats s = agent_->stats();
    Napi::Object o = Napi::Object::New(env);
    o.Set("writes", static_cast<double>(s.writes));
    o.Set("reads", static_cast<double>(s.reads));
    o.Set("bytesWritten", static_cast<double>(s.bytes_written));
    o.Set("bytesRead", static_cast<double>(s.bytes_read));
    o.Set("writeSeconds", s.write_seconds);
    o.Set("readSeconds", s.read_seconds);
    o.Set("notificationsReceived", static_cast<double>(s.notifications_received));
    return o;
  }

  // Joins the listener threads off the JS thread, then releases the function. Transfers still
  // in flight hold the agent and fail; later calls reject with ERR_TRANSFER_CLOSED.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) {
      auto d = Napi::Promise::Deferred::New(env);
      d.Resolve(env.Undefined());
      return d.Promise();
    }
    closed_ = true;
    std::shared_ptr<Agent> agent = agent_;
    NotifyTsfn tsfn = tsfn_;
    auto work = [agent] {
      agent->close();
      return Status::Ok();
    };
    return (new StatusWorker(env, work, [tsfn]() mutable { tsfn.Release(); }))->Start();
  }

  std::shared_ptr<Agent> agent_;
  NotifyTsfn tsfn_;
  bool closed_ = false;
};

}  // namespace

void register_transfer_exports(Napi::Env env, Napi::Object exports) {
  exports.Set("TransferAgent", TransferAgentWrap::Init(env));
}

}  // namespace llm
