// transfer-wire.cc: see transfer-wire.h.
#include "transfer-wire.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

namespace llm {
namespace transfer {
namespace {

Status peer_error(const std::string& what) { return Status(StatusCode::transfer_peer, what); }

Status sys_error(const std::string& what) { return peer_error(what + ": " + std::strerror(errno)); }

// getaddrinfo over host:port; the caller frees the list.
Status resolve(const std::string& host, int port, bool passive, addrinfo** out) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  const std::string service = std::to_string(port);
  const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, out);
  if (rc != 0) return peer_error("cannot resolve '" + host + "': " + gai_strerror(rc));
  return Status::Ok();
}

void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

}  // namespace

Socket::~Socket() {
  if (fd_ >= 0) close(fd_);
}

Socket& Socket::operator=(Socket&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

void Socket::shutdown() const {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

bool Socket::peer_closed() const {
  pollfd p{fd_, POLLIN | POLLRDHUP, 0};
  const int rc = poll(&p, 1, 0);
  return rc != 0;  // readable, hung up, an error, or poll itself failed
}

std::string peer_address(const Socket& s) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  char host[NI_MAXHOST], port[NI_MAXSERV];
  if (getpeername(s.fd(), reinterpret_cast<sockaddr*>(&addr), &len) != 0 ||
      getnameinfo(reinterpret_cast<sockaddr*>(&addr), len, host, sizeof host, port, sizeof port,
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return "an unknown address";
  return addr.ss_family == AF_INET6 ? std::string("[") + host + "]:" + port : std::string(host) + ":" + port;
}

Status tcp_listen(const std::string& host, int port, Socket* out, int* bound_port) {
  addrinfo* ai = nullptr;
  LLM_RETURN_IF_ERROR(resolve(host, port, true, &ai));
  Socket s(socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol));
  int one = 1;
  const bool ok = s.fd() >= 0 && setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
                  bind(s.fd(), ai->ai_addr, ai->ai_addrlen) == 0 && listen(s.fd(), 64) == 0;
  freeaddrinfo(ai);
  if (!ok) return sys_error("cannot listen on " + host + ":" + std::to_string(port));
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (getsockname(s.fd(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) return sys_error("getsockname");
  *bound_port = ntohs(addr.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                                                 : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  *out = std::move(s);
  return Status::Ok();
}

Status tcp_connect(const std::string& host, int port, Socket* out) {
  addrinfo* ai = nullptr;
  LLM_RETURN_IF_ERROR(resolve(host, port, false, &ai));
  Status st = peer_error("no address for " + host);
  for (addrinfo* a = ai; a; a = a->ai_next) {
    Socket s(socket(a->ai_family, a->ai_socktype, a->ai_protocol));
    if (s.fd() < 0) {
      st = sys_error("socket");
      continue;
    }
    set_io_timeout(s, kConnectTimeoutSeconds);  // SO_SNDTIMEO also bounds connect() on Linux
    if (connect(s.fd(), a->ai_addr, a->ai_addrlen) != 0) {
      st = sys_error("cannot connect to " + host + ":" + std::to_string(port));
      continue;
    }
    set_nodelay(s.fd());
    *out = std::move(s);
    st = Status::Ok();
    break;
  }
  freeaddrinfo(ai);
  return st;
}

void set_io_timeout(const Socket& s, int seconds) {
  timeval tv{seconds, 0};
  setsockopt(s.fd(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  setsockopt(s.fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

Status tcp_accept(const Socket& listener, Socket* out) {
  int fd;
  do {
    fd = accept(listener.fd(), nullptr, nullptr);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return sys_error("accept");
  set_nodelay(fd);
  *out = Socket(fd);
  return Status::Ok();
}

Status send_all(const Socket& s, const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = send(s.fd(), p, bytes, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return sys_error(errno == EAGAIN ? "send timed out" : "send");
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status recv_all(const Socket& s, void* data, size_t bytes) {
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    const ssize_t n = recv(s.fd(), p, bytes, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) return peer_error("connection closed by the other agent");
    if (n < 0) return sys_error(errno == EAGAIN ? "receive timed out" : "receive");
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status send_frame(const Socket& s, FrameType type, const std::string& text, const std::vector<int32_t>& ids,
                  uint64_t arg) {
  FrameHeader h;
  h.type = static_cast<uint32_t>(type);
  h.num_blocks = static_cast<uint32_t>(ids.size());
  h.text_bytes = static_cast<uint32_t>(text.size());
  h.arg = arg;
  // One buffer, one send: the frame leaves as one segment where it fits.
  std::string buf(reinterpret_cast<const char*>(&h), sizeof h);
  buf += text;
  buf.append(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(int32_t));
  return send_all(s, buf.data(), buf.size());
}

Status send_reply(const Socket& s, const Status& st) {
  FrameHeader h;
  h.type = static_cast<uint32_t>(FrameType::reply);
  h.code = static_cast<int32_t>(st.code());
  h.text_bytes = static_cast<uint32_t>(std::min<size_t>(st.message().size(), kMaxFrameText));
  std::string buf(reinterpret_cast<const char*>(&h), sizeof h);
  buf.append(st.message(), 0, h.text_bytes);
  return send_all(s, buf.data(), buf.size());
}

Status send_ok_reply(const Socket& s, const std::string& text) {
  FrameHeader h;
  h.type = static_cast<uint32_t>(FrameType::reply);
  h.text_bytes = static_cast<uint32_t>(std::min<size_t>(text.size(), kMaxFrameText));
  std::string buf(reinterpret_cast<const char*>(&h), sizeof h);
  buf.append(text, 0, h.text_bytes);
  return send_all(s, buf.data(), buf.size());
}

namespace {

Status protocol_error(const std::string& what) { return Status(StatusCode::transfer_invalid, what); }

// Receives n elements into *out (resized to n), growing it with the data that arrives: room for
// kFrameFirstChunk bytes first, then twice what has arrived, so a header that claims more than
// is sent never costs more than that first chunk and twice the bytes sent.
template <typename Buffer>
Status recv_growing(const Socket& s, size_t n, Buffer* out) {
  using T = typename Buffer::value_type;
  const size_t first = kFrameFirstChunk / sizeof(T);
  out->clear();
  size_t have = 0;
  while (have < n) {
    const size_t next = std::min(n, std::max(first, 2 * have));
    out->resize(next);
    LLM_RETURN_IF_ERROR(recv_all(s, &(*out)[have], (next - have) * sizeof(T)));
    have = next;
  }
  return Status::Ok();
}

}  // namespace

Status recv_frame(const Socket& s, FrameHeader* h, std::string* text, std::vector<int32_t>* ids) {
  LLM_RETURN_IF_ERROR(recv_all(s, h, sizeof *h));
  if (h->magic != kFrameMagic) {
    char got[16];
    std::snprintf(got, sizeof got, "0x%08x", h->magic);
    return protocol_error(std::string("not a kvserve transfer agent: frame magic ") + got + ", expected 0x4b565846");
  }
  const bool request = h->type == static_cast<uint32_t>(FrameType::hello) ||
                       h->type == static_cast<uint32_t>(FrameType::write) ||
                       h->type == static_cast<uint32_t>(FrameType::read) ||
                       h->type == static_cast<uint32_t>(FrameType::auth);
  if (!request && h->type != static_cast<uint32_t>(FrameType::reply))
    return protocol_error("unknown frame type " + std::to_string(h->type));
  if (h->text_bytes > kMaxFrameText)
    return protocol_error("frame text_bytes " + std::to_string(h->text_bytes) + " is over the limit " +
                          std::to_string(kMaxFrameText));
  if (h->num_blocks > kMaxFrameBlocks)
    return protocol_error("frame num_blocks " + std::to_string(h->num_blocks) + " is over the limit " +
                          std::to_string(kMaxFrameBlocks));
  if (!request && h->num_blocks != 0)
    return protocol_error("a reply frame with num_blocks " + std::to_string(h->num_blocks) + " (must be 0)");
  LLM_RETURN_IF_ERROR(recv_growing(s, h->text_bytes, text));
  return recv_growing(s, h->num_blocks, ids);
}

Status recv_reply(const Socket& s, Status* carried, std::string* ok_text) {
  FrameHeader h;
  std::string text;
  std::vector<int32_t> ids;
  LLM_RETURN_IF_ERROR(recv_frame(s, &h, &text, &ids));
  if (h.type != static_cast<uint32_t>(FrameType::reply))
    return protocol_error("frame type " + std::to_string(h.type) + " where a reply was expected");
  if (h.code < 0 || h.code > static_cast<int32_t>(StatusCode::internal))
    return protocol_error("a reply with unknown status code " + std::to_string(h.code));
  *carried = h.code == 0 ? Status::Ok() : Status(static_cast<StatusCode>(h.code), text);
  if (ok_text) *ok_text = h.code == 0 ? text : std::string();
  return Status::Ok();
}

}  // namespace transfer
}  // namespace llm
