// model-json.cc: a recursive-descent JSON parser (RFC 8259, strict).
//
// Strict means: no comments, no trailing commas, no leading zeros, no NaN/Infinity, no raw
// control characters or invalid UTF-8 inside strings, no lone surrogates, no duplicate object
// keys (a safetensors header with two entries for one tensor must not pick one silently).
// Every error names the byte offset where it was found; the caller adds which file it was.
#include "model-json.h"

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>

namespace llm {

namespace {

// Files we parse are configs, indexes and headers: a few MB at most.
constexpr long kMaxJsonFileBytes = 100l << 20;

class Parser {
 public:
  Parser(const char* text, size_t len) : p_(text), len_(len) {}

  Status parse_document(JsonValue* out) {
    skip_ws();
    LLM_RETURN_IF_ERROR(parse_value(out, 0));
    skip_ws();
    if (pos_ != len_) return error("unexpected trailing characters");
    return Status::Ok();
  }

 private:
  const char* p_;
  size_t len_;
  size_t pos_ = 0;

  Status error(const char* what) const {
    return Status(StatusCode::invalid_argument,
                  "JSON parse error at byte " + std::to_string(pos_) + ": " + what);
  }

  bool at_end() const { return pos_ >= len_; }
  char peek() const { return p_[pos_]; }

  void skip_ws() {
    while (!at_end() && (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r')) ++pos_;
  }

  bool consume_literal(const char* lit) {
    const size_t n = std::strlen(lit);
    if (len_ - pos_ < n || std::memcmp(p_ + pos_, lit, n) != 0) return false;
    pos_ += n;
    return true;
  }

  // depth = number of arrays/objects enclosing this value.
  Status parse_value(JsonValue* out, int depth) {
    if (at_end()) return error("unexpected end of input");
    *out = JsonValue();
    const char c = peek();
    if (c == '{' || c == '[') {
      if (depth >= kMaxJsonDepth) return error("nesting deeper than kMaxJsonDepth");
      return c == '{' ? parse_object(out, depth + 1) : parse_array(out, depth + 1);
    }
    if (c == '"') {
      out->kind = JsonValue::Kind::string;
      return parse_string(&out->string_value);
    }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(out);
    if (consume_literal("true")) {
      out->kind = JsonValue::Kind::boolean;
      out->bool_value = true;
      return Status::Ok();
    }
    if (consume_literal("false")) {
      out->kind = JsonValue::Kind::boolean;
      return Status::Ok();
    }
    if (consume_literal("null")) return Status::Ok();
    return error("unexpected character");
  }

  Status parse_object(JsonValue* out, int depth) {
    out->kind = JsonValue::Kind::object;
    ++pos_;  // '{'
    skip_ws();
    if (!at_end() && peek() == '}') {
      ++pos_;
      return Status::Ok();
    }
    for (;;) {
      skip_ws();
      if (at_end() || peek() != '"') return error("expected a string key");
      const size_t key_pos = pos_;
      std::string key;
      LLM_RETURN_IF_ERROR(parse_string(&key));
      skip_ws();
      if (at_end() || peek() != ':') return error("expected ':'");
      ++pos_;
      skip_ws();
      JsonValue value;
      LLM_RETURN_IF_ERROR(parse_value(&value, depth));
      if (!out->object.emplace(std::move(key), std::move(value)).second) {
        pos_ = key_pos;
        return error("duplicate object key");
      }
      skip_ws();
      if (at_end()) return error("unterminated object");
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == '}') {
        ++pos_;
        return Status::Ok();
      }
      return error("expected ',' or '}'");
    }
  }

  Status parse_array(JsonValue* out, int depth) {
    out->kind = JsonValue::Kind::array;
    ++pos_;  // '['
    skip_ws();
    if (!at_end() && peek() == ']') {
      ++pos_;
      return Status::Ok();
    }
    for (;;) {
      skip_ws();
      out->array.emplace_back();
      LLM_RETURN_IF_ERROR(parse_value(&out->array.back(), depth));
      skip_ws();
      if (at_end()) return error("unterminated array");
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == ']') {
        ++pos_;
        return Status::Ok();
      }
      return error("expected ',' or ']'");
    }
  }

  // Reads 4 hex digits at pos_ (after "\u").
  bool parse_hex4(uint32_t* out) {
    if (len_ - pos_ < 4) return false;
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = p_[pos_ + i];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<uint32_t>(c - 'A' + 10);
      else return false;
    }
    pos_ += 4;
    *out = v;
    return true;
  }

  static void append_utf8(uint32_t cp, std::string* s) {
    if (cp < 0x80) {
      s->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      s->push_back(static_cast<char>(0xc0 | (cp >> 6)));
      s->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
      s->push_back(static_cast<char>(0xe0 | (cp >> 12)));
      s->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
      s->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    } else {
      s->push_back(static_cast<char>(0xf0 | (cp >> 18)));
      s->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
      s->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
      s->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    }
  }

  // Length of the well-formed UTF-8 sequence at pos_ (lead byte >= 0x80), or 0 if malformed
  // (bad continuation, overlong form, surrogate code point, or beyond U+10FFFF).
  size_t utf8_sequence_length() const {
    const auto* u = reinterpret_cast<const unsigned char*>(p_ + pos_);
    const size_t avail = len_ - pos_;
    size_t n;
    uint32_t cp;
    if (u[0] >= 0xc2 && u[0] <= 0xdf) { n = 2; cp = u[0] & 0x1fu; }
    else if (u[0] >= 0xe0 && u[0] <= 0xef) { n = 3; cp = u[0] & 0x0fu; }
    else if (u[0] >= 0xf0 && u[0] <= 0xf4) { n = 4; cp = u[0] & 0x07u; }
    else return 0;
    if (avail < n) return 0;
    for (size_t i = 1; i < n; ++i) {
      if ((u[i] & 0xc0) != 0x80) return 0;
      cp = (cp << 6) | (u[i] & 0x3fu);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000)) return 0;  // overlong
    if (cp >= 0xd800 && cp <= 0xdfff) return 0;
    if (cp > 0x10ffff) return 0;
    return n;
  }

  Status parse_string(std::string* out) {
    ++pos_;  // opening quote
    for (;;) {
      if (at_end()) return error("unterminated string");
      const auto c = static_cast<unsigned char>(peek());
      if (c == '"') {
        ++pos_;
        return Status::Ok();
      }
      if (c < 0x20) return error("control character in string");
      if (c >= 0x80) {
        const size_t n = utf8_sequence_length();
        if (n == 0) return error("invalid UTF-8 in string");
        out->append(p_ + pos_, n);
        pos_ += n;
        continue;
      }
      if (c != '\\') {
        out->push_back(static_cast<char>(c));
        ++pos_;
        continue;
      }
      ++pos_;  // backslash
      if (at_end()) return error("unterminated escape");
      const char e = peek();
      ++pos_;
      switch (e) {
        case '"': out->push_back('"'); break;
        case '\\': out->push_back('\\'); break;
        case '/': out->push_back('/'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          uint32_t cp;
          if (!parse_hex4(&cp)) return error("bad \\u escape");
          if (cp >= 0xdc00 && cp <= 0xdfff) return error("lone low surrogate");
          if (cp >= 0xd800 && cp <= 0xdbff) {  // high surrogate: a low one must follow
            uint32_t lo;
            if (!consume_literal("\\u") || !parse_hex4(&lo) || lo < 0xdc00 || lo > 0xdfff) {
              return error("high surrogate without a low surrogate");
            }
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          }
          append_utf8(cp, out);
          break;
        }
        default:
          --pos_;
          return error("unknown escape");
      }
    }
  }

  static bool is_digit(char c) { return c >= '0' && c <= '9'; }

  Status parse_number(JsonValue* out) {
    const size_t start = pos_;
    bool integral = true;
    if (peek() == '-') ++pos_;
    if (at_end() || !is_digit(peek())) return error("expected a digit");
    if (peek() == '0') {
      ++pos_;
      if (!at_end() && is_digit(peek())) return error("leading zero in number");
    } else {
      while (!at_end() && is_digit(peek())) ++pos_;
    }
    if (!at_end() && peek() == '.') {
      integral = false;
      ++pos_;
      if (at_end() || !is_digit(peek())) return error("expected a digit after '.'");
      while (!at_end() && is_digit(peek())) ++pos_;
    }
    if (!at_end() && (peek() == 'e' || peek() == 'E')) {
      integral = false;
      ++pos_;
      if (!at_end() && (peek() == '+' || peek() == '-')) ++pos_;
      if (at_end() || !is_digit(peek())) return error("expected a digit in exponent");
      while (!at_end() && is_digit(peek())) ++pos_;
    }
    const char* first = p_ + start;
    const char* last = p_ + pos_;
    out->kind = JsonValue::Kind::number;
    // from_chars is locale-independent (strtod would follow the process locale).
    double d = 0;
    const auto dr = std::from_chars(first, last, d);
    if (dr.ec != std::errc() || dr.ptr != last || !std::isfinite(d)) {
      pos_ = start;
      return error("number out of range");
    }
    out->number_value = d;
    if (integral) {
      int64_t i = 0;
      const auto ir = std::from_chars(first, last, i);
      if (ir.ec == std::errc() && ir.ptr == last) {
        out->number_is_int = true;
        out->int_value = i;
      }
    }
    return Status::Ok();
  }
};

}  // namespace

const JsonValue* JsonValue::get(const std::string& key) const {
  if (kind != Kind::object) return nullptr;
  auto it = object.find(key);
  return it == object.end() ? nullptr : &it->second;
}

Status json_parse(const char* text, size_t len, JsonValue* out) {
  Parser parser(text, len);
  return parser.parse_document(out);
}

Status json_parse_file(const std::string& path, JsonValue* out) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    if (errno == ENOENT) return Status(StatusCode::model_file_missing, path + ": file not found");
    return Status(StatusCode::io_error, path + ": " + std::strerror(errno));
  }
  std::string text;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) {
    if (text.size() + n > static_cast<size_t>(kMaxJsonFileBytes)) {
      std::fclose(f);
      return Status(StatusCode::invalid_argument, path + ": larger than 100 MB, not a JSON config");
    }
    text.append(buf, n);
  }
  const bool read_error = std::ferror(f) != 0;
  std::fclose(f);
  if (read_error) return Status(StatusCode::io_error, path + ": read error");
  Status st = json_parse(text.data(), text.size(), out);
  if (!st.ok()) return Status(st.code(), path + ": " + st.message());
  return Status::Ok();
}

}  // namespace llm
