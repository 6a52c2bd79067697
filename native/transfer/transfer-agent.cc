// transfer-agent.cc: see transfer-agent.h.
//
// Threads: the caller's threads run connect/write/read (a transfer to one peer holds that
// peer's mutex for its request and reply); the accept thread takes connections; one thread per
// inbound connection serves its requests in order. mu_ is never held across network I/O.
#include "transfer-agent.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>

#include "transfer-auth.h"

namespace llm {
namespace transfer {

// A connection to a remote agent.
struct Agent::Peer {
  Metadata meta;
  Backend backend = Backend::tcp;
  std::vector<std::unique_ptr<SharedMemory>> shm;  // shm backend: every region of the peer, mapped here
  std::vector<std::unique_ptr<DeviceMapping>> devices;  // cuda_ipc backend: every region of the peer, opened here
  std::vector<RegionView> regions;    // the peer's, by rank (base null for tcp)
  std::vector<HeadCopy> write_plan;   // this agent's regions -> the peer's
  std::vector<HeadCopy> read_plan;    // the peer's regions -> this agent's
  Socket socket;                      // requests and replies (and, tcp backend, block data)
  std::mutex mu;                      // one request at a time on socket; guards lost
  bool lost = false;                  // an I/O error broke the connection

  Status lost_error(const std::string& why) const {
    return Status(StatusCode::transfer_peer, "agent '" + meta.name + "': " + why +
                                                 "; connect again with its current metadata");
  }

  // One request and its reply, with mu held: sends the frame and then send_body's block data;
  // on an ok reply recv_body receives the blocks' data. An I/O failure marks the connection lost.
  using Body = std::function<Status(const Socket&)>;
  Status request(FrameType type, const std::string& text, const std::vector<int32_t>& ids, uint64_t arg,
                 const Body& send_body = nullptr, const Body& recv_body = nullptr) {
    if (lost) return lost_error("the connection was lost");
    Status carried;
    Status io = send_frame(socket, type, text, ids, arg);
    if (io.ok() && send_body) io = send_body(socket);
    if (io.ok()) io = recv_reply(socket, &carried);
    if (io.ok() && carried.ok() && recv_body) io = recv_body(socket);
    if (io.ok()) return carried;
    lost = true;
    socket.shutdown();  // out of step or broken: never used again
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

// A block's rows ((layer, K/V, token): 2 * num_layers * block_size of them) and a head's bytes.
struct BlockShape {
  int64_t rows = 0;
  int64_t head_bytes = 0;
};

BlockShape shape_of(const Layout& l) {
  return BlockShape{2 * l.num_layers * l.block_size, l.head_dim * dtype_size(l.dtype)};
}

// Host memory: `rows` rows of `width` bytes, src_pitch and dst_pitch apart.
struct HostCopy {
  void operator()(char* dst, const char* src, size_t width, size_t rows, size_t dst_pitch, size_t src_pitch) const {
    for (size_t r = 0; r < rows; ++r) std::memcpy(dst + r * dst_pitch, src + r * src_pitch, width);
  }
};

// GPU memory: the same copies, collected for device_copy.
struct DeviceCopies {
  std::vector<DeviceCopy>* out;
  void operator()(char* dst, const char* src, size_t width, size_t rows, size_t dst_pitch, size_t src_pitch) const {
    out->push_back(DeviceCopy{src, dst, width, rows, src_pitch, dst_pitch});
  }
};

// Copies run `c` of n blocks: src's blocks src_ids[i] -> dst's dst_ids[i], by `copy` (HostCopy or
// DeviceCopies). Whole blocks (runs of adjacent ids merged) when both regions hold exactly the
// run's heads; else, per block, the run's heads of every row.
template <typename View, typename Copy>
void copy_heads(const BlockShape& g, const View& src, const View& dst, const HeadCopy& c, const int32_t* src_ids,
                const int32_t* dst_ids, size_t n, const Copy& copy) {
  if (c.num_heads == src.num_kv_heads && c.num_heads == dst.num_kv_heads) {
    const size_t bytes = static_cast<size_t>(src.block_bytes);
    for (size_t i = 0; i < n;) {
      size_t run = 1;
      while (i + run < n && src_ids[i + run] == src_ids[i] + static_cast<int32_t>(run) &&
             dst_ids[i + run] == dst_ids[i] + static_cast<int32_t>(run))
        ++run;
      copy(dst.base + dst_ids[i] * dst.block_bytes, src.base + src_ids[i] * src.block_bytes, run * bytes, 1, 0, 0);
      i += run;
    }
    return;
  }
  const size_t src_row = static_cast<size_t>(src.num_kv_heads * g.head_bytes);
  const size_t dst_row = static_cast<size_t>(dst.num_kv_heads * g.head_bytes);
  const size_t bytes = static_cast<size_t>(c.num_heads * g.head_bytes);
  for (size_t i = 0; i < n; ++i) {
    const char* from = src.base + src_ids[i] * src.block_bytes + c.src_head * g.head_bytes;
    char* to = dst.base + dst_ids[i] * dst.block_bytes + c.dst_head * g.head_bytes;
    copy(to, from, bytes, static_cast<size_t>(g.rows), dst_row, src_row);
  }
}

// The buffer of a gathered write or a scattered read: `chunk` blocks of one region's layout (about
// 4 MiB, at least one block, at most the transfer's n), and their slot ids 0..chunk-1.
struct Staging {
  Staging(size_t n, int64_t block_bytes)
      : chunk(std::min(n, static_cast<size_t>(std::max<int64_t>(1, (int64_t{4} << 20) / block_bytes)))),
        data(chunk * static_cast<size_t>(block_bytes)),
        slots(chunk) {
    for (size_t i = 0; i < chunk; ++i) slots[i] = static_cast<int32_t>(i);
  }
  size_t chunk;
  std::vector<char> data;
  std::vector<int32_t> slots;
};

// The bytes n blocks take in all of `regions` (every replica counted).
template <typename View>
int64_t bytes_of(const std::vector<View>& regions, size_t n) {
  int64_t b = 0;
  for (const View& r : regions) b += r.block_bytes * static_cast<int64_t>(n);
  return b;
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

Status Agent::register_regions(const std::vector<RegionSpec>& regions, const Layout& model_layout) {
  std::vector<RegionSpec> by_rank = regions;
  std::stable_sort(by_rank.begin(), by_rank.end(),
                   [](const RegionSpec& a, const RegionSpec& b) { return a.tp_rank < b.tp_rank; });
  for (const RegionSpec& r : by_rank)
    if (r.shm_name.empty())
      return invalid("KV region of rank " + std::to_string(r.tp_rank) +
                     " is not in shared memory (create the engine with kvSharedMemory)");
  LLM_RETURN_IF_ERROR(check_regions(by_rank, model_layout, false));
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return closed_error();
  if (has_region()) return invalid("a KV region is already registered");
  std::vector<std::unique_ptr<SharedMemory>> segments;
  std::vector<RegionView> views;
  for (const RegionSpec& r : by_rank) {
    std::unique_ptr<SharedMemory> shm;
    Status st = SharedMemory::open(r.shm_name, static_cast<size_t>(r.bytes), &shm);
    if (!st.ok()) return invalid("cannot map the KV region of rank " + std::to_string(r.tp_rank) + ": " + st.message());
    views.push_back(RegionView{static_cast<char*>(shm->data()), region_block_bytes(model_layout, r), r.num_kv_heads});
    segments.push_back(std::move(shm));
  }
  segments_ = std::move(segments);
  local_ = std::move(views);
  self_.memory = Memory::host;
  self_.layout = model_layout;
  self_.regions = std::move(by_rank);
  return Status::Ok();
}

Status Agent::register_region(const std::string& shm_name, size_t bytes, const Layout& layout) {
  if (bytes > static_cast<size_t>(INT64_MAX)) return invalid("a KV region is larger than 2^63 bytes");
  return register_regions({RegionSpec{shm_name, static_cast<int64_t>(bytes), 0, 0, layout.num_kv_heads}}, layout);
}

Status Agent::register_device_region(void* data, size_t bytes, const Layout& layout) {
  if (bytes > static_cast<size_t>(INT64_MAX)) return invalid("a KV region is larger than 2^63 bytes");
  DeviceRegion r;
  r.spec.bytes = static_cast<int64_t>(bytes);
  r.spec.num_kv_heads = layout.num_kv_heads;
  r.data = data;
  if (!data) return invalid("the KV region's device pointer is null");
  return register_device_regions({r}, layout);
}

Status Agent::register_device_regions(const std::vector<DeviceRegion>& regions, const Layout& model_layout) {
  std::vector<DeviceRegion> by_rank = regions;
  std::stable_sort(by_rank.begin(), by_rank.end(),
                   [](const DeviceRegion& a, const DeviceRegion& b) { return a.spec.tp_rank < b.spec.tp_rank; });
  std::vector<RegionSpec> specs;
  for (DeviceRegion& r : by_rank) {
    if (r.data) {  // this process's allocation: exported here
      if (!r.spec.cuda_ipc_handle.empty()) return invalid("a GPU KV region has a device pointer or a handle, not both");
      LLM_RETURN_IF_ERROR(export_device_region(r.data, &r.spec.cuda_ipc_handle, &r.spec.cuda_device));
    }
    specs.push_back(r.spec);
  }
  LLM_RETURN_IF_ERROR(check_regions(specs, model_layout, true));
  std::vector<std::unique_ptr<DeviceMapping>> maps;
  std::vector<RegionView> views;
  for (const DeviceRegion& r : by_rank) {
    char* base = static_cast<char*>(r.data);
    if (!base) {  // another process's (a tensor-parallel rank's): opened here
      std::unique_ptr<DeviceMapping> m;
      Status st = DeviceMapping::open(r.spec.cuda_ipc_handle, r.spec.cuda_device, &m);
      if (!st.ok())
        return invalid("cannot open the GPU KV region of rank " + std::to_string(r.spec.tp_rank) + ": " + st.message());
      base = m->data();
      maps.push_back(std::move(m));
    }
    views.push_back(RegionView{base, region_block_bytes(model_layout, r.spec), r.spec.num_kv_heads});
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return closed_error();
  if (has_region()) return invalid("a KV region is already registered");
  device_maps_ = std::move(maps);
  local_ = std::move(views);
  gpu_pool_ = true;
  self_.memory = Memory::cuda;
  self_.layout = model_layout;
  self_.regions = std::move(specs);
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
    for (const RegionSpec& r : m.regions) {
      std::unique_ptr<DeviceMapping> one;
      Status st = DeviceMapping::open(r.cuda_ipc_handle, r.cuda_device, &one);
      if (!st.ok())
        return Status(StatusCode::transfer_peer, who + "'s GPU KV region of rank " + std::to_string(r.tp_rank) +
                                                     " cannot be opened: " + st.message());
      p->devices.push_back(std::move(one));
    }
    p->backend = Backend::cuda_ipc;
  } else if (backend == Backend::cuda_ipc) {
    return invalid("the cuda_ipc backend needs GPU KV pools on both sides (register_device_region)");
  } else if (backend != Backend::tcp) {
    if (!(m.host == self_.host)) {
      if (backend == Backend::shm)
        return Status(StatusCode::transfer_peer, who + " is on another host; the shm backend needs one host");
    } else {
      std::vector<std::unique_ptr<SharedMemory>> maps;
      for (const RegionSpec& r : m.regions) {
        std::unique_ptr<SharedMemory> one;
        Status st = SharedMemory::open(r.shm_name, static_cast<size_t>(r.bytes), &one);
        if (!st.ok()) {
          if (backend == Backend::shm)
            return Status(StatusCode::transfer_peer, who + "'s KV segment of rank " + std::to_string(r.tp_rank) +
                                                         " cannot be opened (stale metadata?): " + st.message());
          maps.clear();  // automatic: tcp
          break;
        }
        maps.push_back(std::move(one));
      }
      p->shm = std::move(maps);
    }
  }
  if (p->devices.empty()) p->backend = p->shm.empty() ? Backend::tcp : Backend::shm;
  for (size_t i = 0; i < m.regions.size(); ++i) {
    char* base = !p->devices.empty() ? p->devices[i]->data()
                 : p->shm.empty()    ? nullptr
                                     : static_cast<char*>(p->shm[i]->data());
    p->regions.push_back(RegionView{base, region_block_bytes(m.layout, m.regions[i]), m.regions[i].num_kv_heads});
  }
  p->write_plan = plan_head_copies(self_.regions, m.regions);
  p->read_plan = plan_head_copies(m.regions, self_.regions);
  Status st = tcp_connect(m.tcp_host, m.tcp_port, &p->socket);
  if (!st.ok()) return Status(StatusCode::transfer_peer, who + " is unreachable (stale metadata?): " + st.message());
  std::lock_guard<std::mutex> lock(p->mu);
  if (!cfg_.cluster_secret.empty()) LLM_RETURN_IF_ERROR(authenticate(*p));
  LLM_RETURN_IF_ERROR(p->request(FrameType::hello, metadata_to_json(self_), {}, m.incarnation));
  set_io_timeout(p->socket, kClientIoTimeoutSeconds);
  *out = std::move(p);
  return Status::Ok();
}

Status Agent::authenticate(Peer& p) const {
  const std::string who = "agent '" + p.meta.name + "'";
  const std::string& secret = cfg_.cluster_secret;
  const std::string client_nonce = random_nonce_hex();
  if (client_nonce.empty()) return Status(StatusCode::internal, "no randomness for a handshake nonce");
  // One auth frame and its reply; an I/O failure or a refusal is ERR_TRANSFER_PEER saying which.
  auto step = [&](const std::string& text, uint64_t arg, std::string* answer) {
    Status carried;
    Status io = send_frame(p.socket, FrameType::auth, text, {}, arg);
    if (io.ok()) io = recv_reply(p.socket, &carried, answer);
    if (!io.ok())
      return Status(StatusCode::transfer_peer, who + ": the cluster-secret handshake failed: " + io.message());
    if (!carried.ok())
      return Status(StatusCode::transfer_peer, who + " refused the cluster-secret handshake: " + carried.message());
    return Status::Ok();
  };
  std::string answer;
  LLM_RETURN_IF_ERROR(step(client_nonce, 1, &answer));
  const size_t space = answer.find(' ');
  const std::string listener_nonce = answer.substr(0, space);
  const std::string mac = space == std::string::npos ? std::string() : answer.substr(space + 1);
  if (listener_nonce.size() != 32 || !equal_constant_time(mac, listener_mac(secret, client_nonce, listener_nonce)))
    return Status(StatusCode::transfer_peer, who + " did not prove it knows the cluster secret (another secret?)");
  return step(client_mac(secret, listener_nonce, client_nonce), 2, nullptr);
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
  {
    std::lock_guard<std::mutex> lock(p->mu);
    if (p->backend != Backend::tcp) {
      LLM_RETURN_IF_ERROR(p->check_alive());
      LLM_RETURN_IF_ERROR(copy_direct(*p, true, local_blocks, remote_blocks));
      // The copies are done before the notification's send (a system call) starts.
      if (!notification.empty()) LLM_RETURN_IF_ERROR(p->request(FrameType::write, notification, {}, 0));
    } else {
      LLM_RETURN_IF_ERROR(send_blocks(*p, local_blocks, remote_blocks, notification));
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.writes += 1;
  stats_.bytes_written += bytes_of(p->regions, local_blocks.size());
  stats_.write_seconds += seconds_since(t0);
  return Status::Ok();
}

Status Agent::read(const std::string& remote, const std::vector<int32_t>& remote_blocks,
                   const std::vector<int32_t>& local_blocks) {
  std::shared_ptr<Peer> p;
  LLM_RETURN_IF_ERROR(prepare(remote, local_blocks, remote_blocks, &p));
  const auto t0 = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> lock(p->mu);
    if (p->backend != Backend::tcp) {
      LLM_RETURN_IF_ERROR(p->check_alive());
      LLM_RETURN_IF_ERROR(copy_direct(*p, false, remote_blocks, local_blocks));
    } else {
      LLM_RETURN_IF_ERROR(receive_blocks(*p, remote_blocks, local_blocks));
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.reads += 1;
  stats_.bytes_read += bytes_of(local_, local_blocks.size());
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

Status Agent::copy_direct(const Peer& p, bool to_peer, const std::vector<int32_t>& src_ids,
                          const std::vector<int32_t>& dst_ids) const {
  const BlockShape g = shape_of(self_.layout);
  std::vector<DeviceCopy> device_copies;
  for (const HeadCopy& c : to_peer ? p.write_plan : p.read_plan) {
    const RegionView& src = to_peer ? local_[c.src] : p.regions[c.src];
    const RegionView& dst = to_peer ? p.regions[c.dst] : local_[c.dst];
    if (p.backend == Backend::cuda_ipc)
      copy_heads(g, src, dst, c, src_ids.data(), dst_ids.data(), src_ids.size(), DeviceCopies{&device_copies});
    else
      copy_heads(g, src, dst, c, src_ids.data(), dst_ids.data(), src_ids.size(), HostCopy{});
  }
  // Every GPU of the host reaches the others' memory (unified addressing): the copies run on
  // this agent's rank 0 GPU.
  return p.backend == Backend::cuda_ipc ? device_copy(device_copies, self_.regions[0].cuda_device) : Status::Ok();
}

Status Agent::send_blocks(Peer& p, const std::vector<int32_t>& local_blocks, const std::vector<int32_t>& remote_blocks,
                          const std::string& notification) const {
  const BlockShape g = shape_of(self_.layout);
  const size_t n = local_blocks.size();
  for (size_t d = 0; d < p.regions.size(); ++d) {
    std::vector<HeadCopy> runs;
    for (const HeadCopy& c : p.write_plan)
      if (c.dst == d) runs.push_back(c);
    const int64_t bytes = p.regions[d].block_bytes;
    Peer::Body body;
    if (runs.size() == 1 && whole_blocks(runs[0], self_.regions, p.meta.regions)) {  // straight from the pool
      const size_t src = runs[0].src;
      body = [&, src](const Socket& s) {
        for (int32_t id : local_blocks) LLM_RETURN_IF_ERROR(send_all(s, block(src, id), static_cast<size_t>(bytes)));
        return Status::Ok();
      };
    } else {  // gathered into the destination region's layout, a chunk of blocks at a time
      body = [&](const Socket& s) {
        Staging st(n, bytes);
        const RegionView dst{st.data.data(), bytes, p.regions[d].num_kv_heads};
        for (size_t i = 0; i < n; i += st.chunk) {
          const size_t k = std::min(st.chunk, n - i);
          for (const HeadCopy& c : runs) copy_heads(g, local_[c.src], dst, c, &local_blocks[i], st.slots.data(), k, HostCopy{});
          LLM_RETURN_IF_ERROR(send_all(s, st.data.data(), k * static_cast<size_t>(bytes)));
        }
        return Status::Ok();
      };
    }
    // The notification rides with the last region's blocks: the listener queues it only after
    // every region's data (the earlier requests were answered ok) is in place.
    const bool last = d + 1 == p.regions.size();
    LLM_RETURN_IF_ERROR(p.request(FrameType::write, last ? notification : std::string(), remote_blocks, d, body));
  }
  return Status::Ok();
}

Status Agent::receive_blocks(Peer& p, const std::vector<int32_t>& remote_blocks,
                             const std::vector<int32_t>& local_blocks) const {
  const BlockShape g = shape_of(self_.layout);
  const size_t n = local_blocks.size();
  for (size_t s_region = 0; s_region < p.regions.size(); ++s_region) {
    std::vector<HeadCopy> runs;
    for (const HeadCopy& c : p.read_plan)
      if (c.src == s_region) runs.push_back(c);
    if (runs.empty()) continue;  // every head it holds comes from a lower rank
    const int64_t bytes = p.regions[s_region].block_bytes;
    Peer::Body body;
    if (runs.size() == 1 && whole_blocks(runs[0], p.meta.regions, self_.regions)) {  // straight into the pool
      const size_t dst = runs[0].dst;
      body = [&, dst](const Socket& s) {
        for (int32_t id : local_blocks) LLM_RETURN_IF_ERROR(recv_all(s, block(dst, id), static_cast<size_t>(bytes)));
        return Status::Ok();
      };
    } else {  // a chunk of blocks at a time, scattered into the local regions
      body = [&](const Socket& s) {
        Staging st(n, bytes);
        const RegionView src{st.data.data(), bytes, p.regions[s_region].num_kv_heads};
        for (size_t i = 0; i < n; i += st.chunk) {
          const size_t k = std::min(st.chunk, n - i);
          LLM_RETURN_IF_ERROR(recv_all(s, st.data.data(), k * static_cast<size_t>(bytes)));
          for (const HeadCopy& c : runs) copy_heads(g, src, local_[c.dst], c, st.slots.data(), &local_blocks[i], k, HostCopy{});
        }
        return Status::Ok();
      };
    }
    LLM_RETURN_IF_ERROR(p.request(FrameType::read, "", remote_blocks, s_region, nullptr, body));
  }
  return Status::Ok();
}

char* Agent::block(size_t region, int32_t id) const {
  return local_[region].base + static_cast<int64_t>(id) * local_[region].block_bytes;
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

// Serves one connection until the peer closes it, I/O fails or the peer breaks the protocol:
// with a cluster secret the handshake first (anything else before it is refused, naming the
// secret), then hello, then writes and reads in order, each answered by one reply. A protocol
// break is logged with its reason; in every case the socket is closed here, at once.
void Agent::serve(Inbound* in) {
  const Socket& s = in->socket;
  const std::string address = peer_address(s);
  std::string peer_name;  // set by a successful hello
  ListenerHandshake handshake(cfg_.cluster_secret, self_.name);
  FrameHeader h;
  std::string text;
  std::vector<int32_t> ids;
  Status broke;  // the protocol break that ends the connection (ok: it ended otherwise)
  // Each receive inside a frame waits at most frame_timeout_ms; the wait for a frame's first byte
  // has no limit (close() shuts the socket down, which ends it).
  timeval tv{cfg_.frame_timeout_ms / 1000, (cfg_.frame_timeout_ms % 1000) * 1000};
  setsockopt(s.fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  for (;;) {
    pollfd p{s.fd(), POLLIN, 0};
    while (poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
    Status st = recv_frame(s, &h, &text, &ids);
    if (!st.ok()) {
      if (st.code() == StatusCode::transfer_invalid) broke = st;  // else the peer left or I/O failed
      if (st.message().find("receive timed out") != std::string::npos)
        broke = Status(st.code(), "nothing arrived for " + std::to_string(cfg_.frame_timeout_ms) + " ms inside a frame");
      break;
    }
    const auto type = static_cast<FrameType>(h.type);
    if (type == FrameType::auth) {
      if (!serve_auth(s, h, text, &handshake)) break;
    } else if (!handshake.authenticated()) {
      send_reply(s, Status(StatusCode::transfer_peer, "agent '" + self_.name +
                                                          "' requires the cluster secret (--cluster-secret, "
                                                          "KVSERVE_CLUSTER_SECRET)"));
      broke = Status(StatusCode::transfer_peer, "a frame before the cluster-secret handshake");
      break;
    } else if (type == FrameType::hello) {
      bool malformed = false;
      st = serve_hello(text, h.arg, &peer_name, &malformed);
      if (!send_reply(s, st).ok()) break;
      if (malformed) {
        broke = st;
        break;
      }
    } else if (type == FrameType::write || type == FrameType::read) {
      if (peer_name.empty()) {
        broke = invalid(std::string("a ") + (type == FrameType::write ? "write" : "read") + " frame before hello");
        break;
      }
      st = type == FrameType::write ? serve_write(s, peer_name, h, text, ids) : serve_read(s, h, ids);
      if (!st.ok()) {
        if (st.code() == StatusCode::transfer_invalid) broke = st;  // a region it does not have
        break;
      }
    } else {
      broke = invalid("a reply frame from a client");
      break;
    }
  }
  if (!broke.ok())
    log("transfer agent '" + self_.name + "': closed the connection from " + address +
        (peer_name.empty() ? std::string() : " (agent '" + peer_name + "')") + ": " + broke.message());
  {
    std::lock_guard<std::mutex> lock(mu_);  // close() shuts inbound sockets down under mu_
    in->socket = Socket();
  }
  in->done = true;
}

bool Agent::serve_auth(const Socket& s, const FrameHeader& h, const std::string& text, ListenerHandshake* handshake) {
  const ListenerHandshake::Answer a = handshake->on_auth(h.arg, text);
  if (!a.ok) {
    send_reply(s, Status(StatusCode::transfer_peer, a.text));
    return false;
  }
  return (a.text.empty() ? send_reply(s, Status::Ok()) : send_ok_reply(s, a.text)).ok();
}

Status Agent::serve_hello(const std::string& text, uint64_t expected, std::string* peer_name, bool* malformed) {
  Metadata m;
  Status st = metadata_from_json(text, &m);
  if (!st.ok()) {
    *malformed = true;
    return invalid("a hello whose metadata does not parse: " + st.message());
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!has_region()) return invalid("agent '" + self_.name + "' has no KV region registered");
  }
  if (expected != self_.incarnation)
    return Status(StatusCode::transfer_peer, "stale metadata: agent '" + self_.name + "' has restarted since");
  const std::string mismatch = layout_mismatch(self_.layout, m.layout);
  if (!mismatch.empty()) return invalid("agent '" + self_.name + "' has another KV layout: " + mismatch);
  *peer_name = m.name;
  return Status::Ok();
}

namespace {

// The region a write or read frame names (its arg), or the error that ends the connection: the
// frame's data cannot be drained without knowing its block size.
Status frame_region(const FrameHeader& h, size_t num_regions, const std::string& self_name, size_t* out) {
  if (h.arg >= num_regions)
    return invalid("agent '" + self_name + "' has no KV region " + std::to_string(h.arg) + " (it has " +
                   std::to_string(num_regions) + ")");
  *out = static_cast<size_t>(h.arg);
  return Status::Ok();
}

}  // namespace

// A write request: the blocks go straight into the region it names (or, for a bad id list, are
// drained so the connection stays in step); then the notification; then the reply. Non-ok =
// I/O failed or the connection must end.
Status Agent::serve_write(const Socket& s, const std::string& peer_name, const FrameHeader& h, const std::string& text,
                          const std::vector<int32_t>& ids) {
  size_t region = 0;
  Status bad_region = frame_region(h, local_.size(), self_.name, &region);
  if (!bad_region.ok()) {
    LLM_RETURN_IF_ERROR(send_reply(s, bad_region));
    return bad_region;
  }
  const size_t bytes = static_cast<size_t>(local_[region].block_bytes);
  Status st = check_blocks(ids, self_.layout.num_blocks, "remote");
  if (st.ok() && gpu_pool_ && !ids.empty())  // a GPU pool takes blocks only by cuda_ipc (no host copy of it here)
    st = invalid("agent '" + self_.name + "' has a GPU KV pool: blocks move by cuda_ipc, not over TCP");
  std::vector<char> scratch(st.ok() ? 0 : bytes);
  for (int32_t id : ids) LLM_RETURN_IF_ERROR(recv_all(s, st.ok() ? block(region, id) : scratch.data(), bytes));
  if (st.ok() && !text.empty()) deliver(Notification{peer_name, text});
  return send_reply(s, st);
}

Status Agent::serve_read(const Socket& s, const FrameHeader& h, const std::vector<int32_t>& ids) {
  size_t region = 0;
  Status bad_region = frame_region(h, local_.size(), self_.name, &region);
  if (!bad_region.ok()) {
    LLM_RETURN_IF_ERROR(send_reply(s, bad_region));
    return bad_region;
  }
  Status st = check_blocks(ids, self_.layout.num_blocks, "remote");
  if (st.ok() && gpu_pool_ && !ids.empty())
    st = invalid("agent '" + self_.name + "' has a GPU KV pool: blocks move by cuda_ipc, not over TCP");
  LLM_RETURN_IF_ERROR(send_reply(s, st));
  for (size_t i = 0; st.ok() && i < ids.size(); ++i)
    LLM_RETURN_IF_ERROR(send_all(s, block(region, ids[i]), static_cast<size_t>(local_[region].block_bytes)));
  return Status::Ok();
}

void Agent::log(const std::string& line) const {
  if (cfg_.on_log) {
    cfg_.on_log(line);
    return;
  }
  std::fprintf(stderr, "kvserve: %s\n", line.c_str());
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
