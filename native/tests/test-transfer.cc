// test-transfer.cc: the KV transfer agent (native/transfer): metadata, both backends between
// two agents in one process and across two processes (fork), data integrity on random block
// lists, bounds and layout checks, unknown and stale agents, notification order (each one only
// after its data), the listener's own checks on raw frames, and the TCP backend across two
// network namespaces joined by a veth pair (root only; skipped with the reason otherwise).
// Tensor-parallel pools (one shm region per rank, each with its slice of the kv heads, filled
// per global head) exchange blocks with pools of other TP sizes on both backends.
#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include "common/shared-memory.h"
#include "test-harness.h"
#include "transfer/transfer-agent.h"

using llm::SharedMemory;
using llm::Status;
using llm::StatusCode;
using namespace llm::transfer;

namespace {

// 2 layers, block_size 4, 2 kv heads, head_dim 8, bf16: 512 bytes a block.
Layout test_layout(int64_t num_blocks, int64_t block_size = 4) {
  Layout l;
  l.num_blocks = num_blocks;
  l.num_layers = 2;
  l.block_size = block_size;
  l.num_kv_heads = 2;
  l.head_dim = 8;
  l.dtype = llm::DType::bf16;
  l.block_bytes = 2 * l.num_layers * l.block_size * l.num_kv_heads * l.head_dim * 2;
  return l;
}

// The byte a pool filled with `seed` holds at offset j of block id.
uint8_t pattern(uint32_t seed, int32_t id, int64_t j) {
  uint32_t x = seed * 0x9e3779b9u ^ static_cast<uint32_t>(id) * 0x85ebca6bu ^ static_cast<uint32_t>(j) * 0xc2b2ae35u;
  x ^= x >> 15;
  x *= 0x2c1b3c6du;
  return static_cast<uint8_t>(x >> 24);
}

// A KV pool in a shm segment, as an engine with kvSharedMemory has, and the agent serving it.
struct Side {
  std::unique_ptr<SharedMemory> shm;
  Layout layout;
  std::unique_ptr<Agent> agent;

  uint8_t* block(int32_t id) const { return static_cast<uint8_t*>(shm->data()) + id * layout.block_bytes; }
  void fill(uint32_t seed) {
    for (int32_t b = 0; b < layout.num_blocks; ++b)
      for (int64_t j = 0; j < layout.block_bytes; ++j) block(b)[j] = pattern(seed, b, j);
  }
  bool holds(int32_t id, uint32_t seed, int32_t src_id) const {
    for (int64_t j = 0; j < layout.block_bytes; ++j)
      if (block(id)[j] != pattern(seed, src_id, j)) return false;
    return true;
  }
  std::string metadata() const {
    std::string m;
    CHECK(agent->metadata(&m).ok());
    return m;
  }
};

Side make_side(const std::string& name, int64_t num_blocks, uint32_t seed, AgentConfig cfg = {},
               int64_t block_size = 4) {
  Side s;
  s.layout = test_layout(num_blocks, block_size);
  const size_t bytes = static_cast<size_t>(num_blocks * s.layout.block_bytes);
  CHECK(SharedMemory::create(SharedMemory::unique_name("xfer"), bytes, &s.shm).ok());
  s.fill(seed);
  cfg.name = name;
  Status st = Agent::create(cfg, &s.agent);
  CHECK(st.ok());
  if (st.ok()) CHECK(s.agent->register_region(s.shm->name(), bytes, s.layout).ok());
  return s;
}

AgentConfig named(const std::string& name) {
  AgentConfig cfg;
  cfg.name = name;
  return cfg;
}

Connection connect(Side& from, const Side& to, Backend backend) {
  Connection c;
  Status st = from.agent->connect(to.metadata(), backend, &c);
  if (!st.ok()) std::printf("  connect: %s\n", st.message().c_str());
  CHECK(st.ok());
  return c;
}

// n distinct ids in [0, num_blocks), in random order.
std::vector<int32_t> random_ids(std::mt19937& rng, int64_t num_blocks, size_t n) {
  std::vector<int32_t> all(static_cast<size_t>(num_blocks));
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int32_t>(i);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(n);
  return all;
}

// Polls the queue until `n` notifications have arrived (10 s at most).
std::vector<Notification> wait_notifications(Agent& a, size_t n) {
  std::vector<Notification> got;
  for (int i = 0; i < 10000 && got.size() < n; ++i) {
    for (Notification& x : a.take_notifications()) got.push_back(std::move(x));
    if (got.size() < n) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return got;
}

const Backend kBackends[] = {Backend::shm, Backend::tcp};

}  // namespace

TEST(metadata_round_trips_and_rejects_bad_input) {
  Metadata m;
  m.name = "decode-\"0\"\n";
  m.incarnation = 0x0123456789abcdefULL;
  m.host = this_host();
  m.tcp_host = "127.0.0.1";
  m.tcp_port = 4242;
  m.layout = test_layout(8);
  m.regions = {RegionSpec{"/kvserve-1-kv-0", 8 * m.layout.block_bytes, 0, 0, 2}};
  const std::string json = metadata_to_json(m);
  Metadata back;
  CHECK(metadata_from_json(json, &back).ok());
  CHECK(back.name == m.name && back.incarnation == m.incarnation && back.host == m.host);
  CHECK(back.tcp_port == 4242 && back.regions.size() == 1 && back.regions[0].shm_name == m.regions[0].shm_name &&
        back.regions[0].bytes == m.regions[0].bytes && back.memory == Memory::host);
  CHECK(layout_mismatch(back.layout, m.layout).empty() && back.layout.num_blocks == 8);
  CHECK(!m.host.boot_id.empty());

  auto edited = [&](const std::string& from, const std::string& to) {
    std::string j = json;
    const size_t at = j.find(from);
    CHECK(at != std::string::npos);
    return j.replace(at, from.size(), to);
  };
  const std::string bad[] = {
      "", "[]", "{", json.substr(0, json.size() - 1),
      edited("\"dtype\":\"bf16\"", "\"dtype\":\"int8\""),
      edited("\"block_bytes\":512", "\"block_bytes\":500"),        // not the layout's product
      edited("\"region_bytes\":4096", "\"region_bytes\":4095"),    // cannot hold 8 blocks
      edited("\"memory\":\"host\"", "\"memory\":\"disk\""),
      edited("\"shm_name\":\"/kvserve-1-kv-0\"", "\"shm_name\":\"\""),       // a host pool without a segment
      edited("\"cuda_device\":\"\"", "\"cuda_device\":\"GPU-1\""),           // a host pool with a GPU
      edited("\"memory\":\"host\"", "\"memory\":\"cuda\""),                  // a GPU pool without a handle
      edited("\"incarnation\":\"0123456789abcdef\"", "\"incarnation\":\"0x23456789abcdef\""),
      edited("\"tcp_port\":4242", "\"tcp_port\":0"),
      edited("\"num_blocks\":8", "\"num_blocks\":-8"),
      edited("\"head_dim\":8", "\"head_dim\":2147483647"),         // block_bytes overflow check
      edited(",\"tp_rank\":0", ""),
  };
  for (const std::string& b : bad) {
    Status st = metadata_from_json(b, &back);
    CHECK(!st.ok() && st.code() == StatusCode::transfer_invalid);
  }

  // A GPU pool: a CUDA IPC handle and device, no segment.
  Metadata g = m;
  g.memory = Memory::cuda;
  g.regions[0].shm_name.clear();
  g.regions[0].cuda_ipc_handle = std::string(128, 'a');
  g.regions[0].cuda_device = "GPU-00112233-4455-6677-8899-aabbccddeeff";
  CHECK(metadata_from_json(metadata_to_json(g), &back).ok());
  CHECK(back.memory == Memory::cuda && back.regions[0].cuda_ipc_handle == g.regions[0].cuda_ipc_handle &&
        back.regions[0].cuda_device == g.regions[0].cuda_device);
  for (const std::string& handle : {std::string(127, 'a'), std::string(128, 'A'), std::string(128, 'g')}) {
    Metadata h = g;
    h.regions[0].cuda_ipc_handle = handle;
    CHECK(metadata_from_json(metadata_to_json(h), &back).code() == StatusCode::transfer_invalid);
  }
  Metadata no_device = g;
  no_device.regions[0].cuda_device.clear();
  CHECK(metadata_from_json(metadata_to_json(no_device), &back).code() == StatusCode::transfer_invalid);
}

// What a host pool does with a GPU one, and the cuda_ipc backend without GPU pools: refused
// before anything moves (the GPU-to-GPU path itself is test-cuda-ipc.cc, on a GPU).
TEST(gpu_pools_are_refused_by_host_pools_and_cuda_ipc_needs_them) {
  Side a = make_side("a", 8, 1), b = make_side("b", 8, 2);
  Metadata g;
  CHECK(metadata_from_json(b.metadata(), &g).ok());
  g.memory = Memory::cuda;
  g.regions[0].shm_name.clear();
  g.regions[0].cuda_ipc_handle = std::string(128, '0');
  g.regions[0].cuda_device = "GPU-00000000-0000-0000-0000-000000000000";
  Connection c;
  for (Backend backend : {Backend::automatic, Backend::shm, Backend::tcp, Backend::cuda_ipc}) {
    Status st = a.agent->connect(metadata_to_json(g), backend, &c);
    CHECK(st.code() == StatusCode::transfer_invalid && st.message().find("GPU memory") != std::string::npos);
  }
  Status st = a.agent->connect(b.metadata(), Backend::cuda_ipc, &c);
  CHECK(st.code() == StatusCode::transfer_invalid && st.message().find("GPU KV pools on both sides") != std::string::npos);
  // Host memory is not a GPU region, whatever this build has.
  std::unique_ptr<Agent> d;
  CHECK(Agent::create(named("d"), &d).ok());
  std::vector<char> host(8 * 512);
  st = d->register_device_region(host.data(), host.size(), test_layout(8));
  CHECK(st.code() == StatusCode::transfer_invalid);
  std::printf("  register_device_region(host memory): %s\n", st.message().c_str());
  CHECK(d->register_device_region(nullptr, host.size(), test_layout(8)).code() == StatusCode::transfer_invalid);
  std::string m;
  CHECK(d->metadata(&m).code() == StatusCode::transfer_invalid);  // still no region
}

TEST(layout_mismatch_names_what_differs) {
  Layout a = test_layout(8), b = test_layout(64);
  CHECK(layout_mismatch(a, b).empty());  // pools of different sizes still exchange blocks
  b = test_layout(8, 16);
  const std::string d = layout_mismatch(a, b);
  CHECK(d.find("block_size 4 vs 16") != std::string::npos && d.find("block_bytes") != std::string::npos);
  b = a;
  b.dtype = llm::DType::f16;
  CHECK(layout_mismatch(a, b) == "dtype bf16 vs f16");
  CHECK(check_layout(a).ok());
  b = a;
  b.block_bytes += 2;
  CHECK(check_layout(b).code() == StatusCode::transfer_invalid);
}

TEST(write_and_read_random_block_lists_on_both_backends) {
  for (Backend backend : kBackends) {
    Side a = make_side("prefill-0", 32, 1);
    Side b = make_side("decode-0", 48, 2);
    const Connection c = connect(a, b, backend);
    CHECK(c.remote_name == "decode-0" && c.backend == backend);
    std::mt19937 rng(7);
    for (size_t n : {1, 5, 32}) {
      const std::vector<int32_t> local = random_ids(rng, 32, n), remote = random_ids(rng, 40, n);
      CHECK(a.agent->write(local, "decode-0", remote, "req-" + std::to_string(n)).ok());
      bool same = true;
      for (size_t i = 0; i < n; ++i) same = same && b.holds(remote[i], 1, local[i]);
      CHECK(same);
      const std::vector<Notification> got = b.agent->take_notifications();  // queued before write() returned
      CHECK(got.size() == 1 && got[0].from == "prefill-0" && got[0].message == "req-" + std::to_string(n));
    }
    // Read back: B's blocks 40..47, never written (seed 2), into A's 0..7.
    const std::vector<int32_t> remote = {47, 40, 45, 41, 46, 42, 44, 43}, local = {0, 1, 2, 3, 4, 5, 6, 7};
    CHECK(a.agent->read("decode-0", remote, local).ok());
    bool same = true;
    for (size_t i = 0; i < local.size(); ++i) same = same && a.holds(local[i], 2, remote[i]);
    CHECK(same);
    // A write with no notification moves the data and queues nothing.
    CHECK(a.agent->write({31}, "decode-0", {0}, "").ok());
    CHECK(b.holds(0, 1, 31) && b.agent->take_notifications().empty());

    const AgentStats s = a.agent->stats();
    CHECK_EQ(s.writes, 4);
    CHECK_EQ(s.reads, 1);
    CHECK_EQ(s.bytes_written, (1 + 5 + 32 + 1) * 512);
    CHECK_EQ(s.bytes_read, 8 * 512);
    CHECK(s.write_seconds > 0 && s.read_seconds > 0);
    CHECK_EQ(b.agent->stats().notifications_received, 3);
  }
}

TEST(automatic_backend_is_shm_on_this_host_and_tcp_when_the_segment_does_not_open) {
  Side a = make_side("a", 8, 1), b = make_side("b", 8, 2);
  CHECK(connect(a, b, Backend::automatic).backend == Backend::shm);
  std::string meta = b.metadata();
  const std::string name = b.shm->name();
  meta.replace(meta.find(name), name.size(), "/kvserve-no-such-segment");
  Connection c;
  CHECK(a.agent->connect(meta, Backend::automatic, &c).ok() && c.backend == Backend::tcp);
  CHECK(a.agent->write({3}, "b", {4}, "x").ok() && b.holds(4, 1, 3));
  CHECK(a.agent->connect(meta, Backend::shm, &c).code() == StatusCode::transfer_peer);
}

TEST(block_ids_and_list_lengths_are_checked_before_anything_moves) {
  for (Backend backend : kBackends) {
    Side a = make_side("a", 8, 1), b = make_side("b", 16, 2);
    connect(a, b, backend);
    const std::vector<std::vector<int32_t>> bad_local = {{8}, {-1}, {0, 8}}, bad_remote = {{16}, {-5}, {1, 16}};
    for (const auto& l : bad_local) {
      const std::vector<int32_t> r(l.size(), 0);
      CHECK(a.agent->write(l, "b", r, "n").code() == StatusCode::transfer_invalid);
      CHECK(a.agent->read("b", r, l).code() == StatusCode::transfer_invalid);
    }
    for (const auto& r : bad_remote) {
      const std::vector<int32_t> l(r.size(), 0);
      CHECK(a.agent->write(l, "b", r, "n").code() == StatusCode::transfer_invalid);
      CHECK(a.agent->read("b", r, l).code() == StatusCode::transfer_invalid);
    }
    CHECK(a.agent->write({0, 1}, "b", {0}, "n").code() == StatusCode::transfer_invalid);
    CHECK(a.agent->read("b", {0}, {0, 1}).code() == StatusCode::transfer_invalid);
    bool untouched = true;
    for (int32_t id = 0; id < 16; ++id) untouched = untouched && b.holds(id, 2, id);
    for (int32_t id = 0; id < 8; ++id) untouched = untouched && a.holds(id, 1, id);
    CHECK(untouched);
    CHECK(b.agent->take_notifications().empty());
    CHECK(a.agent->write({7}, "b", {15}, "").ok());  // the connection is still good
  }
}

TEST(the_listener_checks_block_ids_of_raw_frames_itself) {
  Side b = make_side("b", 4, 2);
  Metadata bm;
  CHECK(metadata_from_json(b.metadata(), &bm).ok());
  Socket s;
  CHECK(tcp_connect(bm.tcp_host, bm.tcp_port, &s).ok());
  Metadata me = bm;
  me.name = "raw";
  Status carried;
  // A stale incarnation first, then the right one.
  CHECK(send_frame(s, FrameType::hello, metadata_to_json(me), {}, bm.incarnation + 1).ok());
  CHECK(recv_reply(s, &carried).ok() && carried.code() == StatusCode::transfer_peer);
  CHECK(send_frame(s, FrameType::hello, metadata_to_json(me), {}, bm.incarnation).ok());
  CHECK(recv_reply(s, &carried).ok() && carried.ok());
  // Out-of-range ids: the data is drained, nothing lands, the reply says why.
  const std::vector<char> data(2 * 512, 'x');
  CHECK(send_frame(s, FrameType::write, "bad", {1, 4}, 0).ok() && send_all(s, data.data(), data.size()).ok());
  CHECK(recv_reply(s, &carried).ok() && carried.code() == StatusCode::transfer_invalid);
  CHECK(send_frame(s, FrameType::read, "", {-1}, 0).ok());
  CHECK(recv_reply(s, &carried).ok() && carried.code() == StatusCode::transfer_invalid);
  CHECK(b.holds(1, 2, 1) && b.agent->take_notifications().empty());
  // Still in step: a good write lands.
  CHECK(send_frame(s, FrameType::write, "good", {3}, 0).ok() && send_all(s, data.data(), 512).ok());
  CHECK(recv_reply(s, &carried).ok() && carried.ok() && b.block(3)[0] == 'x');
  const std::vector<Notification> got = b.agent->take_notifications();
  CHECK(got.size() == 1 && got[0].from == "raw" && got[0].message == "good");
}

// However many text bytes and block ids a header claims, the decoder allocates only for what
// has arrived: its buffers start at 64 KiB and grow as the data comes, so a peer that sends a
// header and stops cannot make a listener (or a client) reserve the 1 MiB of text and 64 MiB of
// ids the limits allow.
TEST(a_frame_header_alone_does_not_allocate_what_it_claims) {
  constexpr size_t kFirstChunk = size_t{64} << 10;
  struct Claim {
    uint32_t text_bytes, num_blocks;
    size_t sent;  // bytes after the header
  };
  for (const Claim& c : {Claim{kMaxFrameText, 0, 0}, Claim{0, kMaxFrameBlocks, 400},
                         Claim{kMaxFrameText, kMaxFrameBlocks, 1000}, Claim{16, kMaxFrameBlocks, 16 + 4 * 100}}) {
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    Socket writer(sv[0]), reader(sv[1]);
    FrameHeader h;
    h.type = static_cast<uint32_t>(FrameType::write);
    h.text_bytes = c.text_bytes;
    h.num_blocks = c.num_blocks;
    std::string bytes(reinterpret_cast<const char*>(&h), sizeof h);
    bytes.append(c.sent, '\x01');
    CHECK(send_all(writer, bytes.data(), bytes.size()).ok());
    ::shutdown(writer.fd(), SHUT_WR);
    FrameHeader got;
    std::string text;
    std::vector<int32_t> ids;
    const Status st = recv_frame(reader, &got, &text, &ids);
    CHECK(st.code() == StatusCode::transfer_peer);  // the data ends early: an I/O failure
    const size_t allocated = text.capacity() + ids.capacity() * sizeof(int32_t);
    if (allocated > kFirstChunk + 2 * c.sent)
      std::printf("  header claims %u text bytes and %u ids, %zu bytes sent: %zu bytes allocated\n", c.text_bytes,
                  c.num_blocks, c.sent, allocated);
    CHECK(allocated <= kFirstChunk + 2 * c.sent);
  }
}

TEST(another_layout_is_refused_on_connect) {
  Side a = make_side("a", 8, 1), b = make_side("b", 8, 2, {}, 16);
  Connection c;
  Status st = a.agent->connect(b.metadata(), Backend::automatic, &c);
  CHECK(st.code() == StatusCode::transfer_invalid && st.message().find("block_size") != std::string::npos);
  CHECK(a.agent->write({0}, "b", {0}, "").code() == StatusCode::transfer_peer);  // never connected
}

TEST(unknown_and_stale_agents_are_peer_errors) {
  for (Backend backend : kBackends) {
    Side a = make_side("a", 8, 1), b = make_side("b", 8, 2);
    CHECK(a.agent->write({0}, "nobody", {0}, "").code() == StatusCode::transfer_peer);
    CHECK(a.agent->read("nobody", {0}, {0}).code() == StatusCode::transfer_peer);
    connect(a, b, backend);
    const std::string old_meta = b.metadata();
    // B restarts: its old connection dies, and its old metadata is stale.
    b.agent.reset();
    Status st = a.agent->write({0}, "b", {0}, "n");
    CHECK(st.code() == StatusCode::transfer_peer);
    CHECK(a.agent->read("b", {0}, {0}).code() == StatusCode::transfer_peer);
    Connection c;
    CHECK(a.agent->connect(old_meta, backend, &c).code() == StatusCode::transfer_peer);  // refused
    CHECK(Agent::create(named("b"), &b.agent).ok());
    CHECK(b.agent->register_region(b.shm->name(), b.shm->size(), b.layout).ok());
    // Old metadata edited to the new listener: the incarnation still gives it away.
    Metadata fresh, old;
    CHECK(metadata_from_json(b.metadata(), &fresh).ok() && metadata_from_json(old_meta, &old).ok());
    old.tcp_port = fresh.tcp_port;
    st = a.agent->connect(metadata_to_json(old), backend, &c);
    CHECK(st.code() == StatusCode::transfer_peer && st.message().find("restarted") != std::string::npos);
    // Reconnecting with the new metadata replaces the dead connection.
    connect(a, b, backend);
    CHECK(a.agent->write({5}, "b", {6}, "again").ok() && b.holds(6, 1, 5));
  }
}

TEST(closed_agents_refuse_everything) {
  Side a = make_side("a", 8, 1), b = make_side("b", 8, 2);
  connect(a, b, Backend::tcp);
  a.agent->close();
  a.agent->close();
  std::string m;
  Connection c;
  CHECK(a.agent->metadata(&m).code() == StatusCode::transfer_closed);
  CHECK(a.agent->connect(b.metadata(), Backend::tcp, &c).code() == StatusCode::transfer_closed);
  CHECK(a.agent->write({0}, "b", {0}, "").code() == StatusCode::transfer_closed);
  CHECK(a.agent->read("b", {0}, {0}).code() == StatusCode::transfer_closed);
}

TEST(registering_a_region_is_checked) {
  std::unique_ptr<Agent> a;
  CHECK(Agent::create(named(""), &a).code() == StatusCode::transfer_invalid);
  CHECK(Agent::create(named("a"), &a).ok());
  std::string m;
  CHECK(a->metadata(&m).code() == StatusCode::transfer_invalid);  // no region yet
  const Layout l = test_layout(4);
  std::unique_ptr<SharedMemory> shm;
  CHECK(SharedMemory::create(SharedMemory::unique_name("xfer"), 4 * 512, &shm).ok());
  CHECK(a->register_region("", 4 * 512, l).code() == StatusCode::transfer_invalid);
  CHECK(a->register_region(shm->name(), 3 * 512, l).code() == StatusCode::transfer_invalid);  // too small
  CHECK(a->register_region("/kvserve-no-such-segment", 4 * 512, l).code() == StatusCode::transfer_invalid);
  CHECK(a->register_region(shm->name(), 4 * 512, l).ok());
  CHECK(a->register_region(shm->name(), 4 * 512, l).code() == StatusCode::transfer_invalid);  // once
}

TEST(notifications_arrive_in_order_and_only_after_their_data) {
  for (Backend backend : kBackends) {
    // B checks, in its callback, that the block named by each notification already holds A's data.
    std::vector<std::string> seen;
    bool data_first = true;
    Side* pb = nullptr;
    AgentConfig cfg;
    cfg.on_notification = [&](Notification n) {
      const int32_t i = std::stoi(n.message);
      data_first = data_first && pb->holds(i, 1, i);
      seen.push_back(n.message);
    };
    Side a = make_side("a", 24, 1), b = make_side("b", 24, 2, cfg);
    pb = &b;
    connect(a, b, backend);
    for (int32_t i = 0; i < 24; ++i) CHECK(a.agent->write({i}, "b", {i}, std::to_string(i)).ok());
    CHECK_EQ(seen.size(), size_t{24});
    bool in_order = true;
    for (size_t i = 0; i < seen.size(); ++i) in_order = in_order && seen[i] == std::to_string(i);
    CHECK(in_order && data_first);
    CHECK(b.agent->take_notifications().empty());  // the callback took them all
  }
}

TEST(concurrent_writers_to_one_peer_all_land) {
  for (Backend backend : kBackends) {
    Side a = make_side("a", 64, 1), b = make_side("b", 64, 2);
    connect(a, b, backend);
    std::vector<std::thread> threads;
    for (int32_t t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        for (int32_t k = 0; k < 16; ++k) {
          const int32_t id = t * 16 + k;
          CHECK(a.agent->write({id}, "b", {63 - id}, "").ok());
        }
      });
    for (auto& th : threads) th.join();
    bool all = true;
    for (int32_t id = 0; id < 64; ++id) all = all && b.holds(63 - id, 1, id);
    CHECK(all);
  }
}

// ---- tensor-parallel pools: one region per rank, each with a slice of the kv heads ----

namespace {

// 2 layers, block_size 4, `heads` kv heads of head_dim 4, f16: a rank's block is 64 bytes per
// head (head_dim and block_size larger for transfers larger than the staging buffer).
Layout model_layout(int64_t num_blocks, int64_t heads, int64_t head_dim = 4, int64_t block_size = 4) {
  Layout l;
  l.num_blocks = num_blocks;
  l.num_layers = 2;
  l.block_size = block_size;
  l.num_kv_heads = heads;
  l.head_dim = head_dim;
  l.dtype = llm::DType::f16;
  l.block_bytes = 2 * l.num_layers * l.block_size * heads * l.head_dim * 2;
  return l;
}

// The regions of `heads` kv heads over `tp` ranks, as vLLM/Megatron split them: heads >= tp:
// rank r holds [r * heads / tp, (r + 1) * heads / tp); else each head on tp / heads ranks, rank
// r holds head r / (tp / heads). Segment names and sizes are filled in by make_tp.
std::vector<RegionSpec> head_split(int64_t heads, int64_t tp) {
  std::vector<RegionSpec> out;
  for (int64_t r = 0; r < tp; ++r) {
    RegionSpec s;
    s.tp_rank = r;
    if (heads >= tp) {
      s.first_kv_head = r * heads / tp;
      s.num_kv_heads = heads / tp;
    } else {
      s.first_kv_head = r / (tp / heads);
      s.num_kv_heads = 1;
    }
    out.push_back(s);
  }
  return out;
}

// The f16 bits a pool filled with `seed` holds at (block, layer, K/V, token, GLOBAL kv head, dim):
// a head in the wrong place, or from the wrong block, reads differently.
uint16_t element(uint32_t seed, int32_t block, int64_t layer, int64_t kv, int64_t token, int64_t head, int64_t dim) {
  uint32_t x = seed * 0x9e3779b9u;
  for (int64_t v : {static_cast<int64_t>(block), layer, kv, token, head, dim}) {
    x ^= static_cast<uint32_t>(v) + 0x7f4a7c15u + (x << 6) + (x >> 2);
    x *= 0x85ebca6bu;
  }
  return static_cast<uint16_t>(x >> 16);
}

// A TP worker's pool: one shm segment per rank, and the agent serving all of them.
struct TpSide {
  Layout model;
  std::vector<RegionSpec> regions;
  std::vector<std::unique_ptr<SharedMemory>> shm;
  std::unique_ptr<Agent> agent;

  // Calls f(address, expected element of `seed`'s block src_id) for every element of region r's block id.
  template <typename F>
  void each(size_t r, int32_t id, uint32_t seed, int32_t src_id, F f) const {
    const RegionSpec& reg = regions[r];
    uint16_t* b = static_cast<uint16_t*>(shm[r]->data()) + id * region_block_bytes(model, reg) / 2;
    for (int64_t layer = 0, i = 0; layer < model.num_layers; ++layer)
      for (int64_t kv = 0; kv < 2; ++kv)
        for (int64_t t = 0; t < model.block_size; ++t)
          for (int64_t h = 0; h < reg.num_kv_heads; ++h)
            for (int64_t d = 0; d < model.head_dim; ++d, ++i)
              f(b + i, element(seed, src_id, layer, kv, t, reg.first_kv_head + h, d));
  }
  void fill(uint32_t seed) {
    for (size_t r = 0; r < regions.size(); ++r)
      for (int32_t id = 0; id < model.num_blocks; ++id) each(r, id, seed, id, [](uint16_t* p, uint16_t v) { *p = v; });
  }
  // Whether every region's block id holds seed's block src_id (its own heads of it).
  bool holds(int32_t id, uint32_t seed, int32_t src_id) const {
    bool same = true;
    for (size_t r = 0; r < regions.size(); ++r) each(r, id, seed, src_id, [&](uint16_t* p, uint16_t v) { same = same && *p == v; });
    return same;
  }
  std::string metadata() const {
    std::string m;
    CHECK(agent->metadata(&m).ok());
    return m;
  }
};

TpSide make_tp(const std::string& name, int64_t num_blocks, int64_t heads, int64_t tp, uint32_t seed,
               AgentConfig cfg = {}, int64_t head_dim = 4, int64_t block_size = 4) {
  TpSide s;
  s.model = model_layout(num_blocks, heads, head_dim, block_size);
  s.regions = head_split(heads, tp);
  for (RegionSpec& r : s.regions) {
    r.bytes = num_blocks * region_block_bytes(s.model, r);
    std::unique_ptr<SharedMemory> shm;
    CHECK(SharedMemory::create(SharedMemory::unique_name("xfer-tp"), static_cast<size_t>(r.bytes), &shm).ok());
    r.shm_name = shm->name();
    s.shm.push_back(std::move(shm));
  }
  s.fill(seed);
  cfg.name = name;
  CHECK(Agent::create(cfg, &s.agent).ok());
  std::vector<RegionSpec> reversed(s.regions.rbegin(), s.regions.rend());  // any order: sorted by rank
  Status st = s.agent->register_regions(reversed, s.model);
  if (!st.ok()) std::printf("  register_regions: %s\n", st.message().c_str());
  CHECK(st.ok());
  return s;
}

}  // namespace

TEST(head_copies_take_each_head_from_the_lowest_rank_holding_it) {
  auto same = [](const std::vector<HeadCopy>& got, const std::vector<HeadCopy>& want) {
    bool ok = got.size() == want.size();
    for (size_t i = 0; ok && i < got.size(); ++i)
      ok = got[i].src == want[i].src && got[i].dst == want[i].dst && got[i].src_head == want[i].src_head &&
           got[i].dst_head == want[i].dst_head && got[i].num_heads == want[i].num_heads;
    return ok;
  };
  // TP 1 -> TP 2 over 4 heads: each rank its half.
  CHECK(same(plan_head_copies(head_split(4, 1), head_split(4, 2)), {{0, 0, 0, 0, 2}, {0, 1, 2, 0, 2}}));
  // TP 2 -> TP 1: the two halves side by side.
  CHECK(same(plan_head_copies(head_split(4, 2), head_split(4, 1)), {{0, 0, 0, 0, 2}, {1, 0, 0, 2, 2}}));
  // 2 heads over TP 4 (each head on ranks 2h, 2h+1) -> TP 1: from ranks 0 and 2.
  CHECK(same(plan_head_copies(head_split(2, 4), head_split(2, 1)), {{0, 0, 0, 0, 1}, {2, 0, 0, 1, 1}}));
  // TP 1 -> 2 heads over TP 4: every replica gets its head.
  CHECK(same(plan_head_copies(head_split(2, 1), head_split(2, 4)),
             {{0, 0, 0, 0, 1}, {0, 1, 0, 0, 1}, {0, 2, 1, 0, 1}, {0, 3, 1, 0, 1}}));
  // TP 4 -> TP 2 over 4 heads: two runs per destination.
  CHECK(same(plan_head_copies(head_split(4, 4), head_split(4, 2)),
             {{0, 0, 0, 0, 1}, {1, 0, 0, 1, 1}, {2, 1, 0, 0, 1}, {3, 1, 0, 1, 1}}));
  const std::vector<RegionSpec> a = head_split(4, 2);
  CHECK(whole_blocks(plan_head_copies(a, a)[0], a, a) && whole_blocks(plan_head_copies(a, a)[1], a, a));
}

TEST(blocks_move_between_pools_of_different_tp_sizes_on_both_backends) {
  struct Case {
    int64_t heads, tp_prefill, tp_decode;
  };
  const Case cases[] = {{2, 1, 4}, {2, 2, 1}, {2, 4, 2}, {2, 2, 2}, {2, 4, 1},
                        {4, 1, 4}, {4, 2, 1}, {4, 4, 2}, {4, 2, 2}, {4, 1, 2}};
  const std::vector<int32_t> local = {3, 4, 5, 9, 0}, remote = {10, 11, 12, 2, 20};  // runs of adjacent ids
  const std::vector<int32_t> back_remote = {21, 22, 7}, back_local = {12, 13, 1};
  for (Backend backend : kBackends) {
    for (const Case& c : cases) {
      const std::string label = std::to_string(c.heads) + " kv heads, TP " + std::to_string(c.tp_prefill) + " -> TP " +
                                std::to_string(c.tp_decode) + " over " + backend_name(backend);
      // The decode side checks, on the notification, that every region already holds the blocks.
      TpSide* pd = nullptr;
      bool data_first = false;
      AgentConfig cfg;
      cfg.on_notification = [&](Notification) {
        data_first = true;
        for (size_t i = 0; i < local.size(); ++i) data_first = data_first && pd->holds(remote[i], 1, local[i]);
      };
      TpSide p = make_tp("prefill", 16, c.heads, c.tp_prefill, 1);
      TpSide d = make_tp("decode", 24, c.heads, c.tp_decode, 2, cfg);
      pd = &d;
      Connection conn;
      Status st = p.agent->connect(d.metadata(), backend, &conn);
      CHECK(st.ok() && conn.backend == backend);

      CHECK(p.agent->write(local, "decode", remote, "done").ok());
      bool ok = data_first;
      for (int32_t id = 0; id < 24; ++id) {
        const auto at = std::find(remote.begin(), remote.end(), id);
        ok = ok && (at == remote.end() ? d.holds(id, 2, id) : d.holds(id, 1, local[at - remote.begin()]));
      }
      CHECK(p.agent->read("decode", back_remote, back_local).ok());
      for (int32_t id = 0; id < 16; ++id) {
        const auto at = std::find(back_local.begin(), back_local.end(), id);
        ok = ok && (at == back_local.end() ? p.holds(id, 1, id) : p.holds(id, 2, back_remote[at - back_local.begin()]));
      }
      int64_t decode_bytes = 0, prefill_bytes = 0;
      for (const RegionSpec& r : d.regions) decode_bytes += region_block_bytes(d.model, r);
      for (const RegionSpec& r : p.regions) prefill_bytes += region_block_bytes(p.model, r);
      const AgentStats s = p.agent->stats();
      ok = ok && s.bytes_written == 5 * decode_bytes && s.bytes_read == 3 * prefill_bytes;
      if (!ok) std::printf("  wrong: %s\n", label.c_str());
      CHECK(ok);
    }
  }
}

// 32 KiB region blocks: 300 of them are more than the 4 MiB staging buffer of a gathered tcp
// write or a scattered tcp read, so both go in several chunks.
TEST(tcp_transfers_larger_than_the_staging_buffer_go_in_chunks) {
  TpSide p = make_tp("prefill", 320, 4, 1, 1, {}, 128, 16);
  TpSide d = make_tp("decode", 320, 4, 2, 2, {}, 128, 16);
  Connection c;
  CHECK(p.agent->connect(d.metadata(), Backend::tcp, &c).ok() && c.backend == Backend::tcp);
  std::vector<int32_t> local(300), remote(300);
  for (int32_t i = 0; i < 300; ++i) {
    local[i] = i;
    remote[i] = 319 - i;
  }
  CHECK(p.agent->write(local, "decode", remote, "big").ok());
  bool ok = true;
  for (int32_t i = 0; i < 300; ++i) ok = ok && d.holds(remote[i], 1, local[i]);
  for (int32_t id = 0; id < 20; ++id) ok = ok && d.holds(id, 2, id);
  CHECK(ok);
  d.fill(3);
  CHECK(p.agent->read("decode", local, remote).ok());  // decode's 0..299 into prefill's 319..20
  for (int32_t i = 0; i < 300; ++i) ok = ok && p.holds(remote[i], 3, local[i]);
  for (int32_t id = 0; id < 20; ++id) ok = ok && p.holds(id, 1, id);
  CHECK(ok);
}

TEST(bad_region_lists_are_refused_naming_the_problem) {
  const Layout model = model_layout(4, 4);
  std::vector<std::unique_ptr<SharedMemory>> shm(3);
  for (auto& m : shm) CHECK(SharedMemory::create(SharedMemory::unique_name("xfer-tp"), 4 * 256, &m).ok());
  auto region = [&](size_t seg, int64_t rank, int64_t first, int64_t heads) {
    return RegionSpec{shm[seg]->name(), static_cast<int64_t>(shm[seg]->size()), rank, first, heads};
  };
  struct Bad {
    std::vector<RegionSpec> regions;
    const char* says;
  };
  const Bad bad[] = {
      {{}, "1 to 1024 regions"},
      {{region(0, 0, 0, 2), region(1, 1, 3, 1)}, "no region holds kv head 2"},
      {{region(0, 0, 0, 2), region(1, 1, 3, 2)}, "inside the model's [0, 4)"},
      {{region(0, 0, 0, 2), region(1, 1, 2, 0)}, "non-empty range"},
      {{region(0, 0, 0, 2), region(1, 0, 2, 2)}, "tp_rank 0 where 1"},
      {{region(0, 0, 0, 2), region(1, 2, 2, 2)}, "tp_rank 2 where 1"},
      {{region(0, 0, 0, 2), region(0, 1, 2, 2)}, "is also region 0's"},
      {{region(0, 0, 0, 4)}, "cannot hold 4 blocks of 512 bytes"},
      {{region(0, 0, 0, 2), RegionSpec{"", 1024, 1, 2, 2}}, "not in shared memory"},
      {{region(0, 0, 0, 2), RegionSpec{"/kvserve-no-such-segment", 1024, 1, 2, 2}}, "cannot map the KV region of rank 1"},
  };
  std::unique_ptr<Agent> a;
  CHECK(Agent::create(named("a"), &a).ok());
  for (const Bad& b : bad) {
    Status st = a->register_regions(b.regions, model);
    const bool named_it = st.code() == StatusCode::transfer_invalid && st.message().find(b.says) != std::string::npos;
    if (!named_it) std::printf("  expected '%s', got: %s\n", b.says, st.message().c_str());
    CHECK(named_it);
  }
  Layout wrong = model;
  wrong.block_bytes += 2;
  CHECK(a->register_regions({region(0, 0, 0, 2), region(1, 1, 2, 2)}, wrong).code() == StatusCode::transfer_invalid);
  std::string m;
  CHECK(a->metadata(&m).code() == StatusCode::transfer_invalid);  // nothing was registered
  // Replicas: heads 0 and 1 on two ranks each, listed in any order.
  CHECK(a->register_regions({region(2, 3, 1, 1), region(0, 0, 0, 1), region(1, 1, 0, 1), region(2, 2, 1, 1)},
                            model_layout(4, 2))
            .code() == StatusCode::transfer_invalid);  // segment 2 twice
  std::unique_ptr<SharedMemory> fourth;
  CHECK(SharedMemory::create(SharedMemory::unique_name("xfer-tp"), 4 * 256, &fourth).ok());
  const RegionSpec r3{fourth->name(), 4 * 256, 3, 1, 1};
  CHECK(a->register_regions({r3, region(0, 0, 0, 1), region(1, 1, 0, 1), region(2, 2, 1, 1)}, model_layout(4, 2)).ok());
  CHECK(a->metadata(&m).ok());
  Metadata back;
  CHECK(metadata_from_json(m, &back).ok() && back.regions.size() == 4 && back.regions[3].shm_name == fourth->name());
  CHECK(a->register_regions({region(0, 0, 0, 4)}, model_layout(1, 4)).code() == StatusCode::transfer_invalid);  // once
}

TEST(tp_metadata_is_checked_and_only_the_model_layout_must_agree) {
  TpSide p = make_tp("p", 4, 4, 2, 1), d = make_tp("d", 8, 4, 4, 2);
  const std::string json = p.metadata();
  Metadata m;
  CHECK(metadata_from_json(json, &m).ok() && m.regions.size() == 2 && m.regions[1].tp_rank == 1 &&
        m.regions[1].first_kv_head == 2 && m.regions[1].num_kv_heads == 2 && m.regions[1].shm_name == p.shm[1]->name());
  auto edited = [&](const std::string& from, const std::string& to) {
    std::string j = json;
    const size_t at = j.find(from);
    CHECK(at != std::string::npos);
    return at == std::string::npos ? j : j.replace(at, from.size(), to);
  };
  const std::string regions = json.substr(json.find("\"regions\":"));
  const std::pair<std::string, const char*> bad[] = {
      {edited("\"num_kv_heads\":2,\"block_bytes\":256", "\"num_kv_heads\":2,\"block_bytes\":512"), "block_bytes 512"},
      {edited("\"first_kv_head\":2,\"num_kv_heads\":2,\"block_bytes\":256",
              "\"first_kv_head\":2,\"num_kv_heads\":1,\"block_bytes\":128"),
       "no region holds kv head 3"},
      {edited("\"tp_rank\":1", "\"tp_rank\":0"), "tp_rank 0 where 1"},
      {edited("\"region_bytes\":1024", "\"region_bytes\":1023"), "cannot hold 4 blocks"},
      {edited(regions, "\"regions\":[]}"), "'regions' must be an array"},
      {edited("\"regions\":", "\"region\":"), "'regions' must be an array"},
      {edited(",\"first_kv_head\":0", ""), "'first_kv_head'"},
  };
  for (const auto& b : bad) {
    Status st = metadata_from_json(b.first, &m);
    const bool named_it = st.code() == StatusCode::transfer_invalid && st.message().find(b.second) != std::string::npos;
    if (!named_it) std::printf("  expected '%s', got: %s\n", b.second, st.message().c_str());
    CHECK(named_it);
  }
  // A GPU pool of two ranks: each region its own allocation's handle and device; a region
  // without one is refused, saying which.
  CHECK(metadata_from_json(json, &m).ok());
  m.memory = Memory::cuda;
  for (RegionSpec& r : m.regions) {
    r.shm_name.clear();
    r.cuda_ipc_handle = std::string(128, r.tp_rank == 0 ? 'a' : 'b');
    r.cuda_device = "GPU-00112233-4455-6677-8899-aabbccddeeff";
  }
  Metadata gpu_back;
  CHECK(metadata_from_json(metadata_to_json(m), &gpu_back).ok());
  CHECK(gpu_back.regions.size() == 2 && gpu_back.regions[1].cuda_ipc_handle == std::string(128, 'b'));
  m.regions[1].cuda_ipc_handle.clear();
  Status st = metadata_from_json(metadata_to_json(m), &m);
  CHECK(st.code() == StatusCode::transfer_invalid &&
        st.message().find("KV region 1: a GPU pool's region has a CUDA IPC handle") != std::string::npos);

  // Different TP sizes and pool sizes connect; another model (2 kv heads) does not.
  Connection c;
  CHECK(p.agent->connect(d.metadata(), Backend::automatic, &c).ok() && c.backend == Backend::shm);
  CHECK(d.agent->connect(p.metadata(), Backend::tcp, &c).ok());
  TpSide other = make_tp("other", 4, 2, 2, 3);
  st = p.agent->connect(other.metadata(), Backend::automatic, &c);
  CHECK(st.code() == StatusCode::transfer_invalid && st.message().find("model kv heads 4 vs 2") != std::string::npos);
  // The automatic backend falls back to tcp when any one of the peer's segments does not open.
  std::string meta = d.metadata();
  const std::string name = d.shm[3]->name();
  meta.replace(meta.find(name), name.size(), "/kvserve-no-such-segment");
  CHECK(p.agent->connect(meta, Backend::automatic, &c).ok() && c.backend == Backend::tcp);
  CHECK(p.agent->connect(meta, Backend::shm, &c).code() == StatusCode::transfer_peer);
}

TEST(the_listener_checks_the_region_of_raw_frames) {
  TpSide d = make_tp("d", 4, 4, 2, 2);
  Metadata dm;
  CHECK(metadata_from_json(d.metadata(), &dm).ok());
  Metadata me = dm;
  me.name = "raw";
  auto hello = [&](Socket* s) {
    Status carried;
    CHECK(tcp_connect(dm.tcp_host, dm.tcp_port, s).ok());
    CHECK(send_frame(*s, FrameType::hello, metadata_to_json(me), {}, dm.incarnation).ok());
    CHECK(recv_reply(*s, &carried).ok() && carried.ok());
  };
  const std::vector<char> data(256, 'x');
  Socket s;
  hello(&s);
  Status carried;
  // Region 2 of two: refused, and the connection ends (its data cannot be sized).
  CHECK(send_frame(s, FrameType::write, "bad", {1}, 2).ok() && send_all(s, data.data(), data.size()).ok());
  CHECK(recv_reply(s, &carried).ok() && carried.code() == StatusCode::transfer_invalid &&
        carried.message().find("no KV region 2") != std::string::npos);
  CHECK(!recv_reply(s, &carried).ok());
  CHECK(d.holds(1, 2, 1) && d.agent->take_notifications().empty());
  // Region 1: lands there only; a read names its region too.
  Socket s2;
  hello(&s2);
  CHECK(send_frame(s2, FrameType::write, "good", {3}, 1).ok() && send_all(s2, data.data(), data.size()).ok());
  CHECK(recv_reply(s2, &carried).ok() && carried.ok());
  CHECK(static_cast<char*>(d.shm[1]->data())[3 * 256] == 'x' && static_cast<char*>(d.shm[0]->data())[3 * 256] != 'x');
  std::vector<char> got(256);
  CHECK(send_frame(s2, FrameType::read, "", {3}, 0).ok());
  CHECK(recv_reply(s2, &carried).ok() && carried.ok() && recv_all(s2, got.data(), got.size()).ok());
  CHECK(std::memcmp(got.data(), static_cast<char*>(d.shm[0]->data()) + 3 * 256, 256) == 0);
  CHECK(send_frame(s2, FrameType::read, "", {0}, 9).ok());
  CHECK(recv_reply(s2, &carried).ok() && carried.code() == StatusCode::transfer_invalid);
  const std::vector<Notification> n = d.agent->take_notifications();
  CHECK(n.size() == 1 && n[0].message == "good");
}

// A peer that breaks the protocol (bytes that are not a frame, an unknown frame type, a size
// over the limits, a hello whose metadata does not parse, a transfer before hello) has its
// connection closed by the listener at once, with one log line naming why; the listener goes on
// serving well-behaved peers. "At once": the close is seen within 3 s, where a listener that
// kept the connection open would leave the read waiting.
TEST(a_peer_that_breaks_the_protocol_is_disconnected_at_once) {
  std::mutex log_mu;
  std::vector<std::string> lines;
  AgentConfig cfg;
  cfg.on_log = [&](const std::string& line) {
    std::lock_guard<std::mutex> lock(log_mu);
    lines.push_back(line);
  };
  Side b = make_side("b", 8, 2, cfg), a = make_side("a", 8, 1);
  Metadata bm;
  CHECK(metadata_from_json(b.metadata(), &bm).ok());
  auto header = [](uint32_t magic, uint32_t type, uint32_t text_bytes, uint32_t num_blocks, uint64_t arg) {
    FrameHeader h;
    h.magic = magic;
    h.type = type;
    h.text_bytes = text_bytes;
    h.num_blocks = num_blocks;
    h.arg = arg;
    return std::string(reinterpret_cast<const char*>(&h), sizeof h);
  };
  const uint32_t hello = static_cast<uint32_t>(FrameType::hello), write = static_cast<uint32_t>(FrameType::write);
  const std::string bad_metadata = "{\"name\": \"raw\", \"incarnation\": ";
  struct Case {
    const char* what;
    std::string bytes;
    const char* reason;  // in the log line
    bool replied;        // the listener answers the frame before closing
  };
  const std::vector<Case> cases = {
      {"bytes that are not a frame", std::string(sizeof(FrameHeader), '\xab'), "magic", false},
      {"an unknown frame type", header(kFrameMagic, 99, 0, 0, 0), "frame type 99", false},
      {"text over the limit", header(kFrameMagic, hello, kMaxFrameText + 1, 0, 0), "text_bytes", false},
      {"block ids over the limit", header(kFrameMagic, write, 0, kMaxFrameBlocks + 1, 0), "num_blocks", false},
      {"a hello whose metadata does not parse",
       header(kFrameMagic, hello, static_cast<uint32_t>(bad_metadata.size()), 0, bm.incarnation) + bad_metadata,
       "metadata", true},
      {"a write before hello", header(kFrameMagic, write, 0, 0, 0), "before hello", false},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    Socket s;
    CHECK(tcp_connect(bm.tcp_host, bm.tcp_port, &s).ok());
    set_io_timeout(s, 3);
    CHECK(send_all(s, c.bytes.data(), c.bytes.size()).ok());
    if (c.replied) {
      Status carried;
      CHECK(recv_reply(s, &carried).ok() && carried.code() == StatusCode::transfer_invalid);
    }
    char buf[64];
    ssize_t n;
    do {
      n = recv(s.fd(), buf, sizeof buf, 0);
    } while (n > 0 || (n < 0 && errno == EINTR));
    const bool closed = n == 0 || errno == ECONNRESET;
    if (!closed) std::printf("  %s: the connection is still open (%s)\n", c.what, std::strerror(errno));
    CHECK(closed);
    std::lock_guard<std::mutex> lock(log_mu);
    const bool logged = lines.size() == i + 1 && lines.back().find(c.reason) != std::string::npos;
    if (!logged) std::printf("  %s: %zu log lines, the last: %s\n", c.what, lines.size(), lines.empty() ? "" : lines.back().c_str());
    CHECK(logged);
  }
  // A well-behaved peer is still served.
  connect(a, b, Backend::tcp);
  CHECK(a.agent->write({1, 2}, "b", {5, 6}, "after").ok());
  CHECK(b.holds(5, 1, 1) && b.holds(6, 1, 2));
  std::vector<Notification> n = b.agent->take_notifications();
  CHECK(n.size() == 1 && n[0].from == "a" && n[0].message == "after");
  CHECK(a.agent->read("b", {7}, {0}).ok() && a.holds(0, 2, 7));
  std::lock_guard<std::mutex> lock(log_mu);
  CHECK(lines.size() == cases.size());  // nothing logged for the good peer
}

// A peer that stops in the middle of a frame is disconnected once nothing has arrived for
// frame_timeout_ms, with a log line saying so; a connection idle between frames is not.
TEST(a_peer_stalled_mid_frame_is_disconnected_and_an_idle_one_is_not) {
  std::mutex log_mu;
  std::vector<std::string> lines;
  AgentConfig cfg;
  cfg.frame_timeout_ms = 300;
  cfg.on_log = [&](const std::string& line) {
    std::lock_guard<std::mutex> lock(log_mu);
    lines.push_back(line);
  };
  Side b = make_side("b", 8, 2, cfg);
  Metadata bm;
  CHECK(metadata_from_json(b.metadata(), &bm).ok());
  auto closed_within = [](const Socket& s, int seconds) {
    set_io_timeout(s, seconds);
    char buf[64];
    ssize_t n;
    do {
      n = recv(s.fd(), buf, sizeof buf, 0);
    } while (n > 0 || (n < 0 && errno == EINTR));
    return n == 0 || errno == ECONNRESET;
  };
  // Half a frame header, then silence.
  Socket stalled;
  CHECK(tcp_connect(bm.tcp_host, bm.tcp_port, &stalled).ok());
  FrameHeader h;
  h.type = static_cast<uint32_t>(FrameType::hello);
  CHECK(send_all(stalled, &h, sizeof h / 2).ok());
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(closed_within(stalled, 3));
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(waited > 0.2 && waited < 2.5);
  {
    std::lock_guard<std::mutex> lock(log_mu);
    const bool logged = lines.size() == 1 && lines[0].find("nothing arrived for 300 ms inside a frame") != std::string::npos;
    if (!logged) std::printf("  %zu log lines, the last: %s\n", lines.size(), lines.empty() ? "" : lines.back().c_str());
    CHECK(logged);
  }
  // Idle for 3 x the timeout before its first frame: still served (its bad frame is answered by
  // the protocol check, not by a timeout).
  Socket idle;
  CHECK(tcp_connect(bm.tcp_host, bm.tcp_port, &idle).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(900));
  h.type = static_cast<uint32_t>(FrameType::write);
  CHECK(send_all(idle, &h, sizeof h).ok());
  CHECK(closed_within(idle, 3));
  std::lock_guard<std::mutex> lock(log_mu);
  CHECK(lines.size() == 2 && lines[1].find("before hello") != std::string::npos);
}

// ---- two processes ----

namespace {

[[noreturn]] void child_exit(bool ok) {
  std::fflush(stdout);
  _exit(ok && llm_test::failures() == 0 ? 0 : 1);
}

// Runs the receiving side ("decode", in a child) and the sending side ("prefill", in another
// child) of one transfer, each after its setup (e.g. entering a network namespace); the decode
// side's metadata goes over a pipe. The prefill side writes 6 blocks with "done", reads 4 blocks
// back and says "bye"; the decode side checks, on "done", that the 6 blocks are in place.
// Returns true when both children exit 0.
struct ProcessSide {
  std::string listen_host;
  std::function<bool()> setup;
};

bool two_processes(Backend backend, const ProcessSide& decode_side, const ProcessSide& prefill_side) {
  const std::vector<int32_t> local = {3, 0, 7, 12, 5, 9}, remote = {14, 2, 8, 1, 11, 6};
  const std::vector<int32_t> back_remote = {0, 15, 4, 10}, back_local = {1, 2, 4, 6};
  int fds[2];
  if (pipe(fds) != 0) return false;
  std::fflush(stdout);  // or both children would print what is buffered
  const pid_t decode = fork();
  if (decode == 0) {
    llm_test::failures() = 0;  // count this child's checks only
    ::close(fds[0]);
    if (!decode_side.setup()) child_exit(false);
    AgentConfig cfg;
    cfg.listen_host = decode_side.listen_host;
    Side d = make_side("decode", 16, 2, cfg);
    if (!d.agent) child_exit(false);
    const std::string meta = d.metadata();
    const uint32_t len = static_cast<uint32_t>(meta.size());
    if (write(fds[1], &len, sizeof len) != sizeof len || write(fds[1], meta.data(), len) != len) child_exit(false);
    ::close(fds[1]);
    const std::vector<Notification> got = wait_notifications(*d.agent, 2);  // "bye": the read is done
    bool ok = got.size() == 2 && got[0].from == "prefill" && got[0].message == "done" && got[1].message == "bye";
    for (size_t i = 0; ok && i < local.size(); ++i) ok = d.holds(remote[i], 1, local[i]);
    child_exit(ok);
  }
  ::close(fds[1]);
  const pid_t prefill = fork();
  if (prefill == 0) {
    llm_test::failures() = 0;
    if (!prefill_side.setup()) child_exit(false);
    uint32_t len = 0;
    if (read(fds[0], &len, sizeof len) != sizeof len) child_exit(false);
    std::string meta(len, '\0');
    for (size_t got = 0; got < len;) {
      const ssize_t n = read(fds[0], &meta[got], len - got);
      if (n <= 0) child_exit(false);
      got += static_cast<size_t>(n);
    }
    AgentConfig cfg;
    cfg.listen_host = prefill_side.listen_host;
    Side p = make_side("prefill", 16, 1, cfg);
    if (!p.agent) child_exit(false);
    Connection c;
    Status st = p.agent->connect(meta, backend, &c);
    if (!st.ok()) std::printf("  prefill connect: %s\n", st.message().c_str());
    bool ok = st.ok() && c.backend == backend && p.agent->write(local, "decode", remote, "done").ok() &&
              p.agent->read("decode", back_remote, back_local).ok();
    for (size_t i = 0; ok && i < back_local.size(); ++i) ok = p.holds(back_local[i], 2, back_remote[i]);
    child_exit(p.agent->write({}, "decode", {}, "bye").ok() && ok);
  }
  ::close(fds[0]);
  int sd = -1, sp = -1;
  waitpid(decode, &sd, 0);
  waitpid(prefill, &sp, 0);
  if (sd != 0 || sp != 0) std::printf("  decode exit %d, prefill exit %d\n", sd, sp);
  return sd == 0 && sp == 0;
}

bool shell(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0; }

bool enter_netns(const std::string& ns) {
  const int fd = open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
  const bool ok = fd >= 0 && setns(fd, CLONE_NEWNET) == 0;
  if (fd >= 0) ::close(fd);
  return ok;
}

}  // namespace

TEST(two_processes_on_both_backends) {
  const ProcessSide plain{"127.0.0.1", [] { return true; }};
  for (Backend backend : kBackends) CHECK(two_processes(backend, plain, plain));
}

TEST(tcp_across_two_network_namespaces_joined_by_a_veth_pair) {
  if (geteuid() != 0) {
    std::printf("  skip: not root, so no network namespaces (the TCP backend ran over loopback above)\n");
    return;
  }
  const std::string tag = "kvx" + std::to_string(getpid());
  const std::string ns_d = tag + "d", ns_p = tag + "p";
  const bool up = shell("ip netns add " + ns_d) && shell("ip netns add " + ns_p) &&
                  shell("ip link add " + tag + "vd type veth peer name " + tag + "vp") &&
                  shell("ip link set " + tag + "vd netns " + ns_d) && shell("ip link set " + tag + "vp netns " + ns_p) &&
                  shell("ip -n " + ns_d + " addr add 10.231.0.1/24 dev " + tag + "vd") &&
                  shell("ip -n " + ns_p + " addr add 10.231.0.2/24 dev " + tag + "vp") &&
                  shell("ip -n " + ns_d + " link set " + tag + "vd up") &&
                  shell("ip -n " + ns_p + " link set " + tag + "vp up");
  if (!up) {
    std::printf("  skip: this machine does not allow network namespaces with a veth pair (`ip netns add` or "
                "`ip link add type veth` failed); the TCP backend ran over loopback above\n");
  } else {
    CHECK(two_processes(Backend::tcp, {"10.231.0.1", [&] { return enter_netns(ns_d); }},
                        {"10.231.0.2", [&] { return enter_netns(ns_p); }}));
  }
  shell("ip netns del " + ns_d);  // deleting a namespace deletes its end of the veth pair, and so both
  shell("ip netns del " + ns_p);
}

int main() { return llm_test::run_all(); }
