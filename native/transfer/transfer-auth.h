// transfer-auth.h: the cluster-secret handshake of the transfer agents' TCP connections.
//
// Owns: SHA-256 and HMAC-SHA256 (FIPS 180-4, RFC 2104; no outside library), random nonces, and
// the handshake's MACs. The protocol (transfer-wire.h has the frames): a client with a secret
// sends, before its hello,
//   auth (arg 1)  text: Nc, its nonce              -> reply ok, text: "Ns MAC_listener"
//   auth (arg 2)  text: MAC_client                 -> reply ok, or ERR_TRANSFER_PEER and the
//                                                     connection is closed
//   MAC_listener = HMAC(secret, "kvserve transfer listener\n" Nc "\n" Ns)
//   MAC_client   = HMAC(secret, "kvserve transfer client\n" Ns "\n" Nc)
// so each side proves it knows the secret, bound to both nonces and to its direction (neither
// proof can be replayed as the other, nor on another connection). A listener with a secret
// answers a hello (or anything else) before a valid auth with ERR_TRANSFER_PEER naming the
// secret and closes the connection; a listener without one answers auth with ERR_TRANSFER_PEER
// ("runs without a cluster secret"), which the client reports. Nonces: 16 random bytes, hex.
// Stays true: MACs are compared in constant time; the secret is never part of a message.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>

namespace llm {
namespace transfer {

std::array<uint8_t, 32> sha256(const std::string& data);
std::string hmac_sha256_hex(const std::string& key, const std::string& message);
// 16 bytes from the kernel's random source (getrandom), hex.
std::string random_nonce_hex();
// Equal strings, in a time that depends on neither their contents nor which one is longer (their
// SHA-256 digests are compared).
bool equal_constant_time(const std::string& a, const std::string& b);

std::string listener_mac(const std::string& secret, const std::string& client_nonce,
                         const std::string& listener_nonce);
std::string client_mac(const std::string& secret, const std::string& listener_nonce, const std::string& client_nonce);

// The listener's side of the handshake on one connection: each auth frame's answer. A listener
// without a secret refuses every auth (its client is told to give one); with one, it takes
// exactly arg 1 (a 32-character nonce) then arg 2 (the client's MAC), once.
class ListenerHandshake {
 public:
  struct Answer {
    bool ok = false;       // an ok reply (with text) or a refusal (text: why); a refusal ends the connection
    std::string text;
  };
  ListenerHandshake(std::string secret, std::string agent_name)
      : secret_(std::move(secret)), name_(std::move(agent_name)), authenticated_(secret_.empty()) {}
  Answer on_auth(uint64_t arg, const std::string& text);
  // True once the client proved the secret, or from the start without one.
  bool authenticated() const { return authenticated_; }

 private:
  std::string secret_, name_;
  std::string client_nonce_, listener_nonce_;
  bool authenticated_;
};

}  // namespace transfer
}  // namespace llm
