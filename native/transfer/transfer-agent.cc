// transfer-agent.cc: see transfer-agent.h.
//
// Threads: the caller's threads run connect/write/read (a transfer to one peer holds that
// peer's mutex for its request and reply); the accept thread takes connections; one thread per
// inbound connection serves its requests in order. mu_ is never held across network I/O.
#include "transfer-agent.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <random>

namespace llm {
namespace transfer {

// A connection to a remote agent.
struct Agent::Peer {
  Metadata meta;
  Backend backend = Backend::tcp;
  std::unique_ptr<SharedMemory> shm;  // shm backend: the peer's pool, mapped here
  std::unique_ptr<DeviceMapping> device;  // cuda_ipc backend: the peer's pool, opened here
  Socket socket;                      // requests and replies (and, tcp backend, block data)
  std::mutex mu;                      // one request at a time on socket; guards lost
  bool lost = false;                  // an I/O error broke the connection

  char* block(int32_t id) const {
    char* base = shm ? static_cast<char*>(shm->data()) : device->data();
    return base + static_cast<int64_t>(id) * meta.layout.block_bytes;
  }

  Status lost_error(const std::string& why) const {
    return Status(StatusCode::transfer_peer, "agent '" + meta.name + "': " + why +
                                                 "; connect again with its current metadata");
  }

  // One request and its reply, with mu held: sends the frame and then the blocks send_from;
  // on an ok reply receives the blocks recv_into. An I/O failure marks the connection lost.
  Status request(FrameType type, const std::string& text, const std::vector<int32_t>& ids, uint64_t arg,
                 const std::vector<const char*>& send_from, const std::vector<char*>& recv_into) {
    if (lost) return lost_error("the connection was lost");
    const size_t bytes = static_cast<size_t>(meta.layout.block_bytes);
    Status carried;
    Status io = send_frame(socket, type, text, ids, arg);
    for (size_t i = 0; io.ok() && i < send_from.size(); ++i) io = send_all(socket, send_from[i], bytes);
    if (io.ok()) io = recv_reply(socket, &carried);
    for (size_t i = 0; io.ok() && carried.ok() && i < recv_into.size(); ++i) io = recv_all(socket, recv_into[i], bytes);
    if (io.ok()) return carried;
    lost = true;
    return lost_error(io.message());
  }

  // shm and cuda_ipc backends, with mu held: the peer must still be there before bytes move in
  // its pool.
  Status check_alive() {
    if (lost) return lost_error("the connection was lost");
    if (!socket.peer_closed()) return Status::Ok();
    lost = true;
    return lost_error("it is gone (exited or restarted)");
  }
};

// A connection accepted by the listener, served by its own thread.
struct Agent::Inbound {
  Socket socket;
  std::thread thread;
  std::atomic<bool> done{false};
};

namespace {

Status invalid(const std::string& msg) { return Status(StatusCode::transfer_invalid, msg); }

Status closed_error() { return Status(StatusCode::transfer_closed, "the transfer agent is closed"); }

Status check_blocks(const std::vector<int32_t>& ids, int64_t num_blocks, const char* side) {
  for (int32_t id : ids)
    if (id < 0 || id >= num_blocks)
      return invalid(std::string(side) + " block id " + std::to_string(id) + " is out of range [0, " +
                     std::to_string(num_blocks) + ")");
  return Status::Ok();
}

uint64_t random_incarnation() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::automatic: return "auto";
    case Backend::shm: return "shm";
    case Backend::tcp: return "tcp";
    case Backend::cuda_ipc: return "cuda_ipc";
  }
  return "?";
}

// ---- lifecycle ----

Status Agent::create(const AgentConfig& cfg, std::unique_ptr<Agent>* out) {
  if (cfg.name.empty() || cfg.name.size() > 256) return invalid("an agent name must have 1 to 256 bytes");
  if (cfg.listen_port < 0 || cfg.listen_port > 65535) return invalid("listen_port must be in [0, 65535]");
  std::unique_ptr<Agent> a(new Agent());
  a->cfg_ = cfg;
  a->self_.name = cfg.name;
  a->self_.incarnation = random_incarnation();
  a->self_.host = this_host();
  LLM_RETURN_IF_ERROR(tcp_listen(cfg.listen_host, cfg.listen_port, &a->listener_, &a->self_.tcp_port));
  const bool wildcard = cfg.listen_host.empty() || cfg.listen_host == "0.0.0.0" || cfg.listen_host == "::";
  a->self_.tcp_host = wildcard ? a->self_.host.hostname : cfg.listen_host;
  Agent* raw = a.get();
  a->accept_thread_ = std::thread([raw] { raw->accept_loop(); });
  *out = std::move(a);
  return Status::Ok();
}

Agent::~Agent() { close(); }

void Agent::close() {
  std::vector<std::unique_ptr<Inbound>> inbound;
  std::map<std::string, std::shared_ptr<Peer>> peers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    closed_ = true;
    listener_.shutdown();
    for (auto& in : inbound_) in->socket.shutdown();
    for (auto& kv : peers_) kv.second->socket.shutdown();  // wakes transfers blocked on it
    inbound.swap(inbound_);
    peers.swap(peers_);
  }
  if (accept_thread_.joinable()) accept_thread_.join();
  for (auto& in : inbound) in->thread.join();
}

Status Agent::register_region(const std::string& shm_name, size_t bytes, const Layout& layout) {
  LLM_RETURN_IF_ERROR(check_layout(layout));
  if (shm_name.empty()) return invalid("the KV pool is not in shared memory (create the engine with kvSharedMemory)");
  if (bytes / static_cast<size_t>(layout.block_bytes) < static_cast<size_t>(layout.num_blocks))
    return invalid("a region of " + std::to_string(bytes) + " bytes cannot hold " +
                   std::to_string(layout.num_blocks) + " blocks of " + std::to_string(layout.block_bytes) + " bytes");
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return closed_error();
  if (has_region()) return invalid("a KV region is already registered");
  std::unique_ptr<SharedMemory> shm;
  Status st = SharedMemory::open(shm_name, bytes, &shm);
  if (!st.ok()) return invalid("cannot map the KV region: " + st.message());
  region_ = std::move(shm);
  self_.memory = Memory::host;
  self_.shm_name = shm_name;
  self_.region_bytes = static_cast<int64_t>(bytes);
  self_.layout = layout;
  return Status::Ok();
}

Status Agent::register_device_region(void* data, size_t bytes, const Layout& layout) {
  LLM_RETURN_IF_ERROR(check_layout(layout));
  if (!data) return invalid("the KV region's device pointer is null");
  if (bytes / static_cast<size_t>(layout.block_bytes) < static_cast<size_t>(layout.num_blocks))
    return invalid("a region of " + std::to_string(bytes) + " bytes cannot hold " +
                   std::to_string(layout.num_blocks) + " blocks of " + std::to_string(layout.block_bytes) + " bytes");
  std::string handle, device;
  LLM_RETURN_IF_ERROR(export_device_region(data, &handle, &device));
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return closed_error();
  if (has_region()) return invalid("a KV region is already registered");
  device_region_ = static_cast<char*>(data);
  self_.memory = Memory::cuda;
  self_.cuda_ipc_handle = handle;
  self_.cuda_device = device;
  self_.region_bytes = static_cast<int64_t>(bytes);
  self_.layout = layout;
  return Status::Ok();
}

Status Agent::metadata(std::string* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return closed_error();
  if (!has_region()) return invalid("register a KV region before asking for metadata");
  *out = metadata_to_json(self_);
  return Status::Ok();
}

// ---- client side ----

Status Agent::connect(const std::string& remote_metadata, Backend backend, Connection* out) {
  Metadata m;
  LLM_RETURN_IF_ERROR(metadata_from_json(remote_metadata, &m));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return closed_error();
    if (!has_region()) return invalid("register a KV region before connecting");
  }
  const std::string mismatch = layout_mismatch(self_.layout, m.layout);
  if (!mismatch.empty()) return invalid("agent '" + m.name + "' has another KV layout: " + mismatch);
  std::shared_ptr<Peer> peer;
  LLM_RETURN_IF_ERROR(open_peer(m, backend, &peer));
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return closed_error();
  peers_[m.name] = peer;
  *out = Connection{m.name, peer->backend};
  return Status::Ok();
}

Status Agent::open_peer(const Metadata& m, Backend backend, std::shared_ptr<Peer>* out) {
  auto p = std::make_shared<Peer>();
  p->meta = m;
  const std::string who = "agent '" + m.name + "'";
  if (self_.memory == Memory::cuda || m.memory == Memory::cuda) {
    if (self_.memory != m.memory)
      return invalid(who + "'s KV pool is in " + (m.memory == Memory::cuda ? "GPU" : "host") + " memory and this one's in " +
                     (self_.memory == Memory::cuda ? "GPU" : "host") +
                     " memory: blocks move between two GPU pools (cuda_ipc) or two host pools (shm, tcp)");
    if (backend != Backend::automatic && backend != Backend::cuda_ipc)
      return invalid(std::string("GPU KV pools move only by cuda_ipc, not ") + backend_name(backend));
    if (!(m.host == self_.host)) return Status(StatusCode::transfer_peer, who + " is on another host; CUDA IPC needs one host");
    Status st = DeviceMapping::open(m.cuda_ipc_handle, m.cuda_device, &p->device);
    if (!st.ok()) return Status(StatusCode::transfer_peer, who + "'s GPU pool cannot be opened: " + st.message());
    p->backend = Backend::cuda_ipc;
  } else if (backend == Backend::cuda_ipc) {
    return invalid("the cuda_ipc backend needs GPU KV pools on both sides (register_device_region)");
  } else if (backend != Backend::tcp) {
    if (!(m.host == self_.host)) {
      if (backend == Backend::shm)
        return Status(StatusCode::transfer_peer, who + " is on another host; the shm backend needs one host");
    } else {
      Status st = SharedMemory::open(m.shm_name, static_cast<size_t>(m.region_bytes), &p->shm);
      if (!st.ok() && backend == Backend::shm)
        return Status(StatusCode::transfer_peer, who + "'s KV segment cannot be opened (stale metadata?): " + st.message());
    }
  }
  if (!p->device) p->backend = p->shm ? Backend::shm : Backend::tcp;
  Status st = tcp_connect(m.tcp_host, m.tcp_port, &p->socket);
  if (!st.ok()) return Status(StatusCode::transfer_peer, who + " is unreachable (stale metadata?): " + st.message());
  std::lock_guard<std::mutex> lock(p->mu);
  LLM_RETURN_IF_ERROR(p->request(FrameType::hello, metadata_to_json(self_), {}, m.incarnation, {}, {}));
  set_io_timeout(p->socket, kClientIoTimeoutSeconds);
  *out = std::move(p);
  return Status::Ok();
}

Status Agent::prepare(const std::string& remote, const std::vector<int32_t>& local_blocks,
                      const std::vector<int32_t>& remote_blocks, std::shared_ptr<Peer>* peer) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return closed_error();
    if (!has_region()) return invalid("no KV region is registered");
    auto it = peers_.find(remote);
    if (it == peers_.end()) return Status(StatusCode::transfer_peer, "no agent named '" + remote + "' is connected");
    *peer = it->second;
  }
  if (local_blocks.size() != remote_blocks.size())
    return invalid(std::to_string(local_blocks.size()) + " local blocks for " + std::to_string(remote_blocks.size()) +
                   " remote blocks");
  if (local_blocks.size() > kMaxFrameBlocks) return invalid("too many blocks in one transfer");
  LLM_RETURN_IF_ERROR(check_blocks(local_blocks, self_.layout.num_blocks, "local"));
  return check_blocks(remote_blocks, (*peer)->meta.layout.num_blocks, "remote");
}

Status Agent::write(const std::vector<int32_t>& local_blocks, const std::string& remote,
                    const std::vector<int32_t>& remote_blocks, const std::string& notification) {
  std::shared_ptr<Peer> p;
  LLM_RETURN_IF_ERROR(prepare(remote, local_blocks, remote_blocks, &p));
  if (notification.size() > kMaxFrameText) return invalid("a notification has at most 1 MiB");
  const auto t0 = std::chrono::steady_clock::now();
  const size_t bytes = static_cast<size_t>(self_.layout.block_bytes);
  {
    std::lock_guard<std::mutex> lock(p->mu);
    if (p->backend != Backend::tcp) {
      LLM_RETURN_IF_ERROR(p->check_alive());
      std::vector<DeviceCopy> copies;
      for (size_t i = 0; i < local_blocks.size(); ++i) copies.push_back({block(local_blocks[i]), p->block(remote_blocks[i])});
      LLM_RETURN_IF_ERROR(copy_direct(*p, copies));
      // The copies are done before the notification's send (a system call) starts.
      if (!notification.empty()) LLM_RETURN_IF_ERROR(p->request(FrameType::write, notification, {}, 0, {}, {}));
    } else {
      std::vector<const char*> from;
      for (int32_t id : local_blocks) from.push_back(block(id));
      LLM_RETURN_IF_ERROR(p->request(FrameType::write, notification, remote_blocks, 0, from, {}));
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.writes += 1;
  stats_.bytes_written += static_cast<int64_t>(bytes * local_blocks.size());
  stats_.write_seconds += seconds_since(t0);
  return Status::Ok();
}

Status Agent::read(const std::string& remote, const std::vector<int32_t>& remote_blocks,
                   const std::vector<int32_t>& local_blocks) {
  std::shared_ptr<Peer> p;
  LLM_RETURN_IF_ERROR(prepare(remote, local_blocks, remote_blocks, &p));
  const auto t0 = std::chrono::steady_clock::now();
  const size_t bytes = static_cast<size_t>(self_.layout.block_bytes);
  {
    std::lock_guard<std::mutex> lock(p->mu);
    if (p->backend != Backend::tcp) {
      LLM_RETURN_IF_ERROR(p->check_alive());
      std::vector<DeviceCopy> copies;
      for (size_t i = 0; i < local_blocks.size(); ++i) copies.push_back({p->block(remote_blocks[i]), block(local_blocks[i])});
      LLM_RETURN_IF_ERROR(copy_direct(*p, copies));
    } else {
      std::vector<char*> into;
      for (int32_t id : local_blocks) into.push_back(block(id));
      LLM_RETURN_IF_ERROR(p->request(FrameType::read, "", remote_blocks, 0, {}, into));
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.reads += 1;
  stats_.bytes_read += static_cast<int64_t>(bytes * local_blocks.size());
  stats_.read_seconds += seconds_since(t0);
  return Status::Ok();
}

std::vector<Notification> Agent::take_notifications() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Notification> out(std::make_move_iterator(notifications_.begin()),
                                std::make_move_iterator(notifications_.end()));
  notifications_.clear();
  return out;
}

AgentStats Agent::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

Status Agent::copy_direct(const Peer& p, const std::vector<DeviceCopy>& copies) const {
  const size_t bytes = static_cast<size_t>(self_.layout.block_bytes);
  if (p.backend == Backend::cuda_ipc) return device_copy(copies, bytes, self_.cuda_device);
  for (const DeviceCopy& c : copies) std::memcpy(c.dst, c.src, bytes);
  return Status::Ok();
}

char* Agent::block(int32_t id) const {
  char* base = region_ ? static_cast<char*>(region_->data()) : device_region_;
  return base + static_cast<int64_t>(id) * self_.layout.block_bytes;
}

// ---- listener side ----

void Agent::accept_loop() {
  for (;;) {
    Socket s;
    const bool accepted = tcp_accept(listener_, &s).ok();
    if (!accepted) {  // closing, or e.g. out of file descriptors: retry without spinning
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (closed_) return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    for (auto it = inbound_.begin(); it != inbound_.end();) {  // reap finished connections
      if ((*it)->done) {
        (*it)->thread.join();
        it = inbound_.erase(it);
      } else {
        ++it;
      }
    }
    auto in = std::make_unique<Inbound>();
    in->socket = std::move(s);
    Inbound* raw = in.get();
    in->thread = std::thread([this, raw] { serve(raw); });
    inbound_.push_back(std::move(in));
  }
}

// Serves one connection until it closes or breaks the protocol: hello first, then writes and
// reads in order, each answered by one reply.
void Agent::serve(Inbound* in) {
  const Socket& s = in->socket;
  std::string peer_name;  // set by a successful hello
  FrameHeader h;
  std::string text;
  std::vector<int32_t> ids;
  while (recv_frame(s, &h, &text, &ids).ok()) {
    const auto type = static_cast<FrameType>(h.type);
    if (type == FrameType::hello) {
      if (!send_reply(s, serve_hello(text, h.arg, &peer_name)).ok()) break;
    } else if ((type == FrameType::write || type == FrameType::read) && !peer_name.empty()) {
      if (!(type == FrameType::write ? serve_write(s, peer_name, text, ids) : serve_read(s, ids)).ok()) break;
    } else {
      break;  // a reply, or a transfer before hello: not a client of ours
    }
  }
  in->done = true;
}

Status Agent::serve_hello(const std::string& text, uint64_t expected, std::string* peer_name) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!has_region()) return invalid("agent '" + self_.name + "' has no KV region registered");
  }
  if (expected != self_.incarnation)
    return Status(StatusCode::transfer_peer, "stale metadata: agent '" + self_.name + "' has restarted since");
  Metadata m;
  LLM_RETURN_IF_ERROR(metadata_from_json(text, &m));
  const std::string mismatch = layout_mismatch(self_.layout, m.layout);
  if (!mismatch.empty()) return invalid("agent '" + self_.name + "' has another KV layout: " + mismatch);
  *peer_name = m.name;
  return Status::Ok();
}

// A write request: the blocks go straight into the pool (or, for a bad id list, are drained so
// the connection stays in step); then the notification; then the reply. Non-ok = I/O failed.
Status Agent::serve_write(const Socket& s, const std::string& peer_name, const std::string& text,
                          const std::vector<int32_t>& ids) {
  const size_t bytes = static_cast<size_t>(self_.layout.block_bytes);
  Status st = check_blocks(ids, self_.layout.num_blocks, "remote");
  if (st.ok() && device_region_ && !ids.empty())  // a GPU pool takes blocks only by cuda_ipc (no host copy of it here)
    st = invalid("agent '" + self_.name + "' has a GPU KV pool: blocks move by cuda_ipc, not over TCP");
  std::vector<char> scratch(st.ok() ? 0 : bytes);
  for (int32_t id : ids) LLM_RETURN_IF_ERROR(recv_all(s, st.ok() ? block(id) : scratch.data(), bytes));
  if (st.ok() && !text.empty()) deliver(Notification{peer_name, text});
  return send_reply(s, st);
}

Status Agent::serve_read(const Socket& s, const std::vector<int32_t>& ids) {
  Status st = check_blocks(ids, self_.layout.num_blocks, "remote");
  if (st.ok() && device_region_ && !ids.empty())
    st = invalid("agent '" + self_.name + "' has a GPU KV pool: blocks move by cuda_ipc, not over TCP");
  LLM_RETURN_IF_ERROR(send_reply(s, st));
  for (size_t i = 0; st.ok() && i < ids.size(); ++i)
    LLM_RETURN_IF_ERROR(send_all(s, block(ids[i]), static_cast<size_t>(self_.layout.block_bytes)));
  return Status::Ok();
}

void Agent::deliver(Notification n) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.notifications_received += 1;
    if (!cfg_.on_notification) {
      notifications_.push_back(std::move(n));
      return;
    }
  }
  cfg_.on_notification(std::move(n));
}

}  // namespace transfer
}  // namespace llm
