// fuzz-transfer-wire.cc: libFuzzer target for the transfer agents' wire decoder
// (native/transfer/transfer-wire.*: recv_frame, recv_reply) and the metadata a hello carries
// (native/transfer/transfer-metadata.*: metadata_from_json, layout_mismatch, plan_head_copies).
//
// Input: byte 0 picks the side, the rest is what arrives on one connection, fed through a
// socketpair whose other end is then closed:
//   even  the listener's side: frames decoded as Agent::serve does (the agent's threads are not
//         run here); with byte 0 % 4 == 2 the listener has a cluster secret, and auth frames go
//         through the agent's own ListenerHandshake (transfer-auth.h) as Agent::serve_auth does,
//         any other frame before the handshake ending the connection; then a hello's metadata
//         parsed and checked against this listener's pool (the
//         two-rank pool of fuzz-common.h), a write's or read's region checked (a bad one ends
//         the connection), and a write's block data read past (the listener drains it for bad
//         block ids too), so the frames after it are decoded where the listener would decode them;
//   odd   the client's side: replies decoded by recv_reply.
// Findings: the handshake never lets a client in without the MAC only the secret gives (the
// fuzzer cannot compute it, so a connection with a secret never gets past it), and answers
// every auth frame with an ok text or a refusal; metadata that metadata_from_json accepts must pass check_regions, survive a
// metadata_to_json round trip unchanged, and plan a copy for every head of every region within
// both pools' bounds; a reply's carried code must be a known StatusCode; the listener's frame
// buffers never hold more than kFrameFirstChunk and twice the input, whatever the headers claim.
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz-common.h"
#include "transfer/transfer-auth.h"
#include "transfer/transfer-wire.h"

namespace xfer = llm::transfer;

namespace {

bool same(const xfer::Metadata& a, const xfer::Metadata& b) {
  if (a.name != b.name || a.incarnation != b.incarnation || !(a.host == b.host) || a.tcp_host != b.tcp_host ||
      a.tcp_port != b.tcp_port || a.memory != b.memory || !xfer::layout_mismatch(a.layout, b.layout).empty() ||
      a.layout.num_blocks != b.layout.num_blocks || a.regions.size() != b.regions.size())
    return false;
  for (size_t i = 0; i < a.regions.size(); ++i) {
    const xfer::RegionSpec &x = a.regions[i], &y = b.regions[i];
    if (x.shm_name != y.shm_name || x.bytes != y.bytes || x.tp_rank != y.tp_rank ||
        x.first_kv_head != y.first_kv_head || x.num_kv_heads != y.num_kv_heads ||
        x.cuda_ipc_handle != y.cuda_ipc_handle || x.cuda_device != y.cuda_device)
      return false;
  }
  return true;
}

// Every head of every destination region is copied once, from inside a source region.
void check_plan(const std::vector<xfer::RegionSpec>& src, const std::vector<xfer::RegionSpec>& dst) {
  const std::vector<xfer::HeadCopy> plan = xfer::plan_head_copies(src, dst);
  std::vector<int64_t> copied(dst.size(), 0);
  for (const xfer::HeadCopy& c : plan) {
    FUZZ_CHECK(c.src < src.size() && c.dst < dst.size() && c.num_heads >= 1);
    FUZZ_CHECK(c.src_head >= 0 && c.src_head + c.num_heads <= src[c.src].num_kv_heads);
    FUZZ_CHECK(c.dst_head >= 0 && c.dst_head + c.num_heads <= dst[c.dst].num_kv_heads);
    FUZZ_CHECK(src[c.src].first_kv_head + c.src_head == dst[c.dst].first_kv_head + c.dst_head);
    copied[c.dst] += c.num_heads;
  }
  for (size_t d = 0; d < dst.size(); ++d) FUZZ_CHECK(copied[d] == dst[d].num_kv_heads);
}

void check_hello(const std::string& text) {
  xfer::Metadata m;
  if (!xfer::metadata_from_json(text, &m).ok()) return;
  FUZZ_CHECK(xfer::check_regions(m.regions, m.layout, m.memory == xfer::Memory::cuda).ok());
  xfer::Metadata again;
  FUZZ_CHECK(xfer::metadata_from_json(xfer::metadata_to_json(m), &again).ok());
  FUZZ_CHECK(same(m, again));
  const xfer::Layout self = llm_fuzz::wire_layout();
  if (!xfer::layout_mismatch(self, m.layout).empty()) return;
  for (int tp : {1, 2}) {
    check_plan(m.regions, llm_fuzz::wire_regions(tp));
    check_plan(llm_fuzz::wire_regions(tp), m.regions);
  }
}

// The listener's loop: Agent::serve, serve_write and serve_read without the pool. `input_bytes`:
// all the bytes that arrive on the connection.
void serve(const xfer::Socket& s, size_t input_bytes, bool with_secret) {
  xfer::ListenerHandshake handshake(with_secret ? "fuzz secret" : "", "fuzz");
  const xfer::Layout self = llm_fuzz::wire_layout();
  const std::vector<xfer::RegionSpec> regions = llm_fuzz::wire_regions(2);
  xfer::FrameHeader h;
  std::string text;
  std::vector<int32_t> ids;
  const size_t bound = xfer::kFrameFirstChunk + 2 * input_bytes;
  for (;;) {
    const bool ok = xfer::recv_frame(s, &h, &text, &ids).ok();
    FUZZ_CHECK(text.capacity() <= bound && ids.capacity() * sizeof(int32_t) <= bound);
    if (!ok) return;
    FUZZ_CHECK(h.magic == xfer::kFrameMagic && text.size() == h.text_bytes && ids.size() == h.num_blocks);
    const auto type = static_cast<xfer::FrameType>(h.type);
    if (type == xfer::FrameType::auth) {
      const xfer::ListenerHandshake::Answer a = handshake.on_auth(h.arg, text);
      FUZZ_CHECK(!a.text.empty() || (a.ok && h.arg == 2));
      FUZZ_CHECK(!(with_secret && handshake.authenticated()));
      if (!a.ok) return;
      continue;
    }
    if (!handshake.authenticated()) return;  // the listener refuses it and ends the connection
    if (type == xfer::FrameType::hello) {
      check_hello(text);
      continue;
    }
    if (type != xfer::FrameType::write && type != xfer::FrameType::read) return;
    if (h.arg >= regions.size()) return;  // the listener answers and ends the connection
    if (type == xfer::FrameType::read) continue;
    // A write's data follows, valid block ids or not (bad ones are drained): read it.
    const auto block_bytes = static_cast<size_t>(xfer::region_block_bytes(self, regions[h.arg]));
    std::vector<char> scratch(block_bytes);
    for (size_t i = 0; i < ids.size(); ++i)
      if (!xfer::recv_all(s, scratch.data(), block_bytes).ok()) return;
  }
}

void client(const xfer::Socket& s) {
  llm::Status carried;
  while (xfer::recv_reply(s, &carried).ok())
    FUZZ_CHECK(static_cast<int32_t>(carried.code()) >= 0 &&
               static_cast<int32_t>(carried.code()) <= static_cast<int32_t>(llm::StatusCode::internal));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A socketpair holds about 200 KB unread; the whole input is written before it is read.
  if (size < 1 || size > (64u << 10)) return 0;
  int sv[2];
  FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  xfer::Socket writer(sv[0]), reader(sv[1]);
  FUZZ_CHECK(xfer::send_all(writer, data + 1, size - 1).ok());
  ::shutdown(writer.fd(), SHUT_WR);
  if (data[0] % 2 == 0) serve(reader, size - 1, data[0] % 4 == 2); else client(reader);
  return 0;
}
