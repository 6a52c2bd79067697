// transfer-agent.h: the NIXL-style KV transfer agent (DESIGN.md section 6). One per worker.
//
// Owns: the mappings of this worker's KV pool (one named shm segment per tensor-parallel rank,
// each holding that rank's slice of the KV heads, every rank with the same block ids), a TCP
// listener that serves other agents (their writes, reads and notifications), the connections to
// remote agents (with every region of theirs mapped, for shm), and the queue of notifications
// received.
//
//   decode worker (TP 2)                        prefill worker (TP 1)
//   agent "decode-0"                            agent "prefill-0"
//     register_regions({rank 0: heads [0, 4),     register_region(pool)        all 8 heads
//                       rank 1: heads [4, 8)})
//     metadata() ---------- discovery ---------->  connect(meta)         shm on one host, else tcp
//                                                  read(...)    <- its cached prefix blocks
//                                                  write(..., "req-7 done")  -> the new blocks,
//                                                    heads [0, 4) to rank 0's region, [4, 8) to rank 1's
//     take_notifications() -> {prefill-0, "req-7 done"}   (only after the blocks are in place)
//
// Head slices: the two agents' model-level layouts must agree (layers, block_size, the model's
// kv heads, head_dim, dtype); their TP sizes and head splits need not. Every destination region
// gets every head it holds (each replica its own copy) from the lowest-rank source region that
// holds it (plan_head_copies). Where the two regions hold the same heads, whole blocks are copied
// (runs of adjacent blocks merged); else, per block, per (layer, K/V, token) row, the bytes of
// the heads they share.
//
// Backends, chosen by connect() (or forced):
//   shm       the peer is on this host (same hostname and boot id) and every segment of its pool
//             opens: write and read copy straight into / out of the peer's regions; the
//             notification of a write goes over the TCP connection after the copies.
//   tcp       the blocks travel over the TCP connection, one request per region of the listener:
//             a write sends each of its regions the blocks already in that region's layout
//             (gathered here from the local regions), the notification in the last request, so
//             it is queued only after every region's data is in place; a read asks for the blocks
//             of as many of its regions as hold all heads and scatters them into the local
//             regions. The listener bounds-checks and copies whole blocks into / out of the
//             region named.
//   cuda_ipc  both pools are in GPU memory (register_device_regions: one allocation per rank),
//             on this host: every allocation of the peer is opened by CUDA IPC (device-ipc.h),
//             write and read are device-to-device copies, whole blocks (adjacent blocks merged)
//             or one strided copy per block of the heads two regions share, that finish before
//             the notification is sent. GPU pools move only this way; a GPU pool and a host pool
//             cannot exchange blocks.
// Stays true:
//   - nothing is read or written out of bounds: every block id is checked against both pools
//     before any byte moves (the listener checks its own again, and the region index); a bad
//     list is ERR_TRANSFER_INVALID and moves nothing;
//   - two pools exchange blocks only when their model-level layouts agree (layout_mismatch), and
//     each pool's regions hold every kv head (check_regions), so every head has a source;
//   - a notification is delivered only after its write's data is in place (in every region),
//     and notifications from one agent arrive in the order its writes completed; write() returns
//     once the remote side has queued it (or handed it to on_notification);
//   - unknown agent names, a peer that restarted (new incarnation), is gone or unreachable are
//     ERR_TRANSFER_PEER; after close(), every call is ERR_TRANSFER_CLOSED;
//   - a connection whose peer breaks the protocol (a frame with a bad magic, an unknown type or
//     sizes over the limits, a hello whose metadata does not parse, a transfer before hello, a
//     region the listener does not have) is closed by the listener at once, after the reply
//     where the frame gets one, with one log line naming the peer's address and the reason; a
//     client whose request or reply fails closes that connection at once too (the error it
//     returns says why). A refused hello that parses (stale incarnation, another layout) is
//     answered and the connection stays open;
//   - thread-safe: write/read/connect may run on any threads at once; transfers to one peer
//     take turns (one request at a time on its connection), transfers to different peers and
//     the listener's work run in parallel.
// Cluster secret: with cluster_secret set, every connection proves both ways that its ends know it
// (transfer-auth.h), once per connection, before hello: the listener refuses a peer without it
// or with another one (ERR_TRANSFER_PEER naming why, then the connection closes), and connect()
// refuses a listener that cannot prove it. The secret never travels.
// Settings: name (non-empty, <= 256 bytes), listen_host ("0.0.0.0"/"::" advertise the hostname),
// listen_port (0 = ephemeral), cluster_secret ("" = none).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/shared-memory.h"
#include "device-ipc.h"
#include "transfer-auth.h"
#include "transfer-metadata.h"
#include "transfer-wire.h"

namespace llm {
namespace transfer {

enum class Backend { automatic, shm, tcp, cuda_ipc };
const char* backend_name(Backend b);

struct Notification {
  std::string from;     // the writing agent's name
  std::string message;
};

struct AgentConfig {
  std::string name;
  std::string listen_host = "127.0.0.1";
  int listen_port = 0;
  std::string cluster_secret;  // "" = none: peers are not asked for it
  // A frame a peer has begun must keep arriving: a listener connection that receives nothing for
  // this long inside a frame is closed, with a log line (between frames a connection may idle);
  // 0: no limit.
  int frame_timeout_ms = 30000;
  // When set, each notification is handed to it (on a listener thread) instead of queued.
  std::function<void(Notification)> on_notification;
  // When set, each line the agent logs (why it disconnected a peer that broke the protocol) is
  // handed to it (on a listener thread) instead of written to stderr.
  std::function<void(const std::string&)> on_log;
};

// Cumulative, for this agent's own write() and read() calls; bytes are those that landed in the
// destination regions (the peer's for a write, this agent's for a read), every replica counted.
struct AgentStats {
  int64_t writes = 0;
  int64_t reads = 0;
  int64_t bytes_written = 0;
  int64_t bytes_read = 0;
  double write_seconds = 0;
  double read_seconds = 0;
  int64_t notifications_received = 0;
};

struct Connection {
  std::string remote_name;
  Backend backend = Backend::tcp;
};

class Agent {
 public:
  // Starts the listener.
  static Status create(const AgentConfig& cfg, std::unique_ptr<Agent>* out);
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Maps this worker's pool: one region per tensor-parallel rank (any order; ranks 0..n-1), each
  // a segment of exactly its `bytes` holding model_layout.num_blocks blocks of its heads; together
  // they hold every kv head (check_regions). Once per agent, before metadata() and connect().
  Status register_regions(const std::vector<RegionSpec>& regions, const Layout& model_layout);
  // One region holding all heads: segment `shm_name` of exactly `bytes`.
  Status register_region(const std::string& shm_name, size_t bytes, const Layout& layout);
  // Or: the pool (all heads) is the GPU allocation that starts at `data` (a device pointer of this process,
  // the allocation's first byte), `bytes` long; it is exported by CUDA IPC. The pool must outlive
  // the agent (close the agent first).
  Status register_device_region(void* data, size_t bytes, const Layout& layout);
  // Or a GPU pool of one allocation per tensor-parallel rank (RegionSpec as register_regions
  // takes it, with no segment name): this process's own has `data` (exported here); each other
  // rank's was exported by its process (spec.cuda_ipc_handle, spec.cuda_device) and is opened
  // here. Every allocation must outlive the agent.
  struct DeviceRegion {
    RegionSpec spec;
    void* data = nullptr;
  };
  Status register_device_regions(const std::vector<DeviceRegion>& regions, const Layout& model_layout);
  // This agent's metadata (JSON), for discovery; needs the region.
  Status metadata(std::string* out) const;
  // Connects to the agent `remote_metadata` describes (replacing an earlier connection to an
  // agent of that name: a restarted peer is reconnected with its new metadata). Blocks for a
  // TCP connect and one round trip, kConnectTimeoutSeconds at most.
  Status connect(const std::string& remote_metadata, Backend backend, Connection* out);

  // Copies local blocks local_blocks[i] into the remote's remote_blocks[i] (every head into every
  // region that holds it), then delivers `notification` to it ("" = none).
  Status write(const std::vector<int32_t>& local_blocks, const std::string& remote,
               const std::vector<int32_t>& remote_blocks, const std::string& notification);
  // Copies the remote's remote_blocks[i] into local blocks local_blocks[i].
  Status read(const std::string& remote, const std::vector<int32_t>& remote_blocks,
              const std::vector<int32_t>& local_blocks);

  // Drains the queued notifications, oldest first (empty when on_notification is set).
  std::vector<Notification> take_notifications();
  AgentStats stats() const;
  // Stops the listener and drops every connection (joining the listener threads); calls in
  // flight on other threads fail with ERR_TRANSFER_PEER or ERR_TRANSFER_CLOSED. Safe twice.
  void close();

 private:
  struct Peer;
  struct Inbound;
  // Where one region's blocks are: block b at base + b * block_bytes (base is null for a remote
  // pool reached over TCP); they hold num_kv_heads heads.
  struct RegionView {
    char* base = nullptr;
    int64_t block_bytes = 0;
    int64_t num_kv_heads = 0;
  };
  Agent() = default;

  // The peer a transfer goes to, after checking the block lists against both pools.
  Status prepare(const std::string& remote, const std::vector<int32_t>& local_blocks,
                 const std::vector<int32_t>& remote_blocks, std::shared_ptr<Peer>* peer);
  Status open_peer(const Metadata& meta, Backend backend, std::shared_ptr<Peer>* out);
  // The client's half of the cluster-secret handshake, with the peer's mu held.
  Status authenticate(Peer& p) const;
  // The listener's answer to an auth frame; false: the connection ends (the reply is sent).
  bool serve_auth(const Socket& s, const FrameHeader& h, const std::string& text, ListenerHandshake* handshake);
  void accept_loop();
  void serve(Inbound* in);
  // *malformed: the hello's metadata did not parse (the connection ends after the reply).
  Status serve_hello(const std::string& text, uint64_t expected, std::string* peer_name, bool* malformed);
  Status serve_write(const Socket& s, const std::string& peer_name, const FrameHeader& h, const std::string& text,
                     const std::vector<int32_t>& ids);
  Status serve_read(const Socket& s, const FrameHeader& h, const std::vector<int32_t>& ids);
  void deliver(Notification n);
  void log(const std::string& line) const;
  // shm and cuda_ipc, with the peer's mu held: the blocks from src_ids to dst_ids, this agent's
  // regions to the peer's (to_peer) or back.
  Status copy_direct(const Peer& p, bool to_peer, const std::vector<int32_t>& src_ids,
                     const std::vector<int32_t>& dst_ids) const;
  // tcp, with the peer's mu held: one write request per region of the peer, one read request per
  // region of the peer that read_plan takes heads from.
  Status send_blocks(Peer& p, const std::vector<int32_t>& local_blocks, const std::vector<int32_t>& remote_blocks,
                     const std::string& notification) const;
  Status receive_blocks(Peer& p, const std::vector<int32_t>& remote_blocks, const std::vector<int32_t>& local_blocks) const;
  char* block(size_t region, int32_t id) const;
  bool has_region() const { return !local_.empty(); }  // with mu_ held, or once registered

  AgentConfig cfg_;
  Metadata self_;                          // incarnation, host and listener from create(); regions
  std::vector<std::unique_ptr<SharedMemory>> segments_;  // set once by register_regions, by rank
  std::vector<std::unique_ptr<DeviceMapping>> device_maps_;  // or: the other ranks' GPU regions, opened
  bool gpu_pool_ = false;                  // the regions are GPU memory (register_device_regions)
  std::vector<RegionView> local_;          // the regions above, by rank
  Socket listener_;
  std::thread accept_thread_;

  mutable std::mutex mu_;                  // guards everything below
  bool closed_ = false;
  std::map<std::string, std::shared_ptr<Peer>> peers_;
  std::vector<std::unique_ptr<Inbound>> inbound_;
  std::deque<Notification> notifications_;
  AgentStats stats_;
};

}  // namespace transfer
}  // namespace llm
