// transfer-wire.h: the agents' TCP protocol: sockets and the frames they carry.
//
// Owns: listening/connecting sockets (Socket owns one fd) and the frame format below.
// Stays true: a connection carries one request and then its reply at a time, client first;
// every request gets exactly one reply. Integers travel in host byte order: hello's magic
// tells a peer of the other order (or anything that is not an agent) from a peer of ours.
// Every I/O failure (reset, EOF, timeout) is ERR_TRANSFER_PEER; a frame that breaks the protocol
// (bad magic, unknown type, a reply where a request belongs or the reverse, sizes over the limits
// below) is ERR_TRANSFER_INVALID, naming what is wrong, and is refused after its header. Within the limits,
// allocation follows the data that arrives, not the sizes a header claims: the text and id
// buffers start with room for kFrameFirstChunk bytes and double as the bytes come, so a peer that
// sends a header and stops costs at most that chunk.
//
//   frame = FrameHeader, text (text_bytes), block ids (num_blocks int32; requests only),
//           block data (num_blocks * the region's block_bytes, in id order; write requests and
//           read replies)
//   hello  client -> listener  text: the client's metadata JSON; arg: the listener's
//                              incarnation the client expects
//   write  client -> listener  arg: the listener's region (index in its metadata's regions, by
//                              tp_rank); text: the notification ("" = none), queued once the
//                              data is in place; ids: listener's blocks; data: in that region's
//                              layout (its kv heads only)
//   read   client -> listener  arg: the listener's region; ids: listener's blocks
//   auth   client -> listener  the cluster-secret handshake, before hello (transfer-auth.h):
//                              arg 1, text: the client's nonce; arg 2, text: the client's MAC
//   reply  listener -> client  code: StatusCode (ok or the error), text: the error's message
//                              (an ok reply to auth arg 1: the listener's nonce and MAC);
//                              a successful read reply is followed by the blocks' data
//   A region the listener does not have is answered with ERR_TRANSFER_INVALID and ends the
//   connection (the data that follows cannot be sized); bad block ids are answered with it and
//   the data drained, the connection staying in step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace llm {
namespace transfer {

constexpr uint32_t kFrameMagic = 0x4b565846;  // "KVXF"
constexpr uint32_t kMaxFrameBlocks = 1u << 24;
constexpr uint32_t kMaxFrameText = 1u << 20;   // metadata and notifications
constexpr size_t kFrameFirstChunk = 64u << 10;  // a frame's text or ids: room for this much, then doubling
constexpr int kConnectTimeoutSeconds = 5;      // a client's connect and hello (connect() blocks)
constexpr int kClientIoTimeoutSeconds = 30;    // then each of its sends and reply waits

enum class FrameType : uint32_t { hello = 1, write = 2, read = 3, reply = 4, auth = 5 };

struct FrameHeader {
  uint32_t magic = kFrameMagic;
  uint32_t type = 0;
  uint32_t num_blocks = 0;
  uint32_t text_bytes = 0;
  int32_t code = 0;
  uint32_t reserved = 0;
  uint64_t arg = 0;
};

// Owns one socket fd (closed on destruction); shutdown() wakes a thread blocked on it.
class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket();
  Socket(Socket&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Socket& operator=(Socket&& o) noexcept;
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  int fd() const { return fd_; }
  void shutdown() const;
  // True when the other end has closed or reset the connection (a non-blocking check; the
  // listener never sends unsolicited data, so anything readable on an idle client means that).
  bool peer_closed() const;

 private:
  int fd_ = -1;
};

// Listens on host:port (port 0 = ephemeral); *bound_port is the port actually bound.
Status tcp_listen(const std::string& host, int port, Socket* out, int* bound_port);
// Connects; sends and receives on the socket time out after kConnectTimeoutSeconds.
Status tcp_connect(const std::string& host, int port, Socket* out);
// Sets the socket's send and receive timeouts.
void set_io_timeout(const Socket& s, int seconds);
Status tcp_accept(const Socket& listener, Socket* out);
// The other end's address, "host:port" ("[host]:port" for IPv6), for log lines.
std::string peer_address(const Socket& s);

Status send_all(const Socket& s, const void* data, size_t bytes);
Status recv_all(const Socket& s, void* data, size_t bytes);

Status send_frame(const Socket& s, FrameType type, const std::string& text, const std::vector<int32_t>& ids,
                  uint64_t arg = 0);
Status send_reply(const Socket& s, const Status& st);
// An ok reply that carries text (the answer to auth arg 1).
Status send_ok_reply(const Socket& s, const std::string& text);
// Reads header, text and (requests) ids; a bad magic, an unknown type or sizes beyond the limits
// is an error naming what is wrong.
Status recv_frame(const Socket& s, FrameHeader* h, std::string* text, std::vector<int32_t>* ids);
// Reads a reply: the return value is the I/O's status, *carried the listener's answer, and
// *ok_text (when given) the text of an ok reply.
Status recv_reply(const Socket& s, Status* carried, std::string* ok_text = nullptr);

}  // namespace transfer
}  // namespace llm
