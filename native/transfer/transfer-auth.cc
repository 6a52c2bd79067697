// transfer-auth.cc: see transfer-auth.h.
#include "transfer-auth.h"

#include <sys/random.h>

#include <cerrno>
#include <cstring>

namespace llm {
namespace transfer {

namespace {

constexpr uint32_t kK[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

inline uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

void compress(uint32_t h[8], const uint8_t* block) {
  uint32_t w[64];
  for (int i = 0; i < 16; ++i)
    w[i] = (uint32_t{block[4 * i]} << 24) | (uint32_t{block[4 * i + 1]} << 16) | (uint32_t{block[4 * i + 2]} << 8) |
           uint32_t{block[4 * i + 3]};
  for (int i = 16; i < 64; ++i) {
    const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
    const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
  for (int i = 0; i < 64; ++i) {
    const uint32_t t1 = k + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + kK[i] + w[i];
    const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    k = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  h[0] += a;
  h[1] += b;
  h[2] += c;
  h[3] += d;
  h[4] += e;
  h[5] += f;
  h[6] += g;
  h[7] += k;
}

std::string hex(const uint8_t* p, size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 15];
  }
  return out;
}

}  // namespace

std::array<uint8_t, 32> sha256(const std::string& data) {
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  const auto* p = reinterpret_cast<const uint8_t*>(data.data());
  const size_t n = data.size();
  size_t i = 0;
  for (; i + 64 <= n; i += 64) compress(h, p + i);
  uint8_t tail[128] = {};
  const size_t rest = n - i;
  std::memcpy(tail, p + i, rest);
  tail[rest] = 0x80;
  const size_t tail_len = rest + 9 <= 64 ? 64 : 128;
  const uint64_t bits = static_cast<uint64_t>(n) * 8;
  for (int b = 0; b < 8; ++b) tail[tail_len - 1 - b] = static_cast<uint8_t>(bits >> (8 * b));
  compress(h, tail);
  if (tail_len == 128) compress(h, tail + 64);
  std::array<uint8_t, 32> out{};
  for (int j = 0; j < 8; ++j)
    for (int b = 0; b < 4; ++b) out[4 * j + b] = static_cast<uint8_t>(h[j] >> (24 - 8 * b));
  return out;
}

std::string hmac_sha256_hex(const std::string& key, const std::string& message) {
  std::string k = key;
  if (k.size() > 64) {
    const auto d = sha256(k);
    k.assign(reinterpret_cast<const char*>(d.data()), d.size());
  }
  k.resize(64, '\0');
  std::string inner(64, '\0'), outer(64, '\0');
  for (size_t i = 0; i < 64; ++i) {
    inner[i] = static_cast<char>(k[i] ^ 0x36);
    outer[i] = static_cast<char>(k[i] ^ 0x5c);
  }
  const auto d_in = sha256(inner + message);
  const auto d_out = sha256(outer + std::string(reinterpret_cast<const char*>(d_in.data()), d_in.size()));
  return hex(d_out.data(), d_out.size());
}

std::string random_nonce_hex() {
  uint8_t bytes[16];
  size_t got = 0;
  while (got < sizeof bytes) {
    const ssize_t r = getrandom(bytes + got, sizeof bytes - got, 0);
    if (r > 0) got += static_cast<size_t>(r);
    else if (r < 0 && errno != EINTR) break;
  }
  if (got < sizeof bytes) return std::string();  // the kernel gave no randomness: the caller refuses
  return hex(bytes, sizeof bytes);
}

bool equal_constant_time(const std::string& a, const std::string& b) {
  const auto da = sha256(a), db = sha256(b);
  uint8_t diff = 0;
  for (size_t i = 0; i < da.size(); ++i) diff |= static_cast<uint8_t>(da[i] ^ db[i]);
  return diff == 0;
}

std::string listener_mac(const std::string& secret, const std::string& client_nonce,
                         const std::string& listener_nonce) {
  return hmac_sha256_hex(secret, "kvserve transfer listener\n" + client_nonce + "\n" + listener_nonce);
}

std::string client_mac(const std::string& secret, const std::string& listener_nonce, const std::string& client_nonce) {
  return hmac_sha256_hex(secret, "kvserve transfer client\n" + listener_nonce + "\n" + client_nonce);
}

ListenerHandshake::Answer ListenerHandshake::on_auth(uint64_t arg, const std::string& text) {
  auto refuse = [](std::string why) { return Answer{false, std::move(why)}; };
  if (secret_.empty())
    return refuse("agent '" + name_ + "' runs without a cluster secret: give every worker the same --cluster-secret");
  if (authenticated_) return refuse("a second cluster-secret handshake");
  if (arg == 1 && client_nonce_.empty() && text.size() == 32) {
    listener_nonce_ = random_nonce_hex();
    if (listener_nonce_.empty()) return refuse("agent '" + name_ + "' has no randomness for a handshake nonce");
    client_nonce_ = text;
    return Answer{true, listener_nonce_ + " " + listener_mac(secret_, client_nonce_, listener_nonce_)};
  }
  if (arg == 2 && !client_nonce_.empty()) {
    if (!equal_constant_time(text, client_mac(secret_, listener_nonce_, client_nonce_))) return refuse("wrong cluster secret");
    authenticated_ = true;
    return Answer{true, std::string()};
  }
  return refuse("a malformed cluster-secret handshake");
}

}  // namespace transfer
}  // namespace llm
