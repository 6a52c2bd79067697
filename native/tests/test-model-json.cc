// test-model-json.cc: the strict JSON reader: values, escapes, numbers, and every kind of
// malformed input (including a nesting bomb) failing with a byte offset instead of crashing.
#include <string>

#include "model/model-json.h"
#include "model-writer.h"
#include "test-harness.h"

using llm::JsonValue;

namespace {

llm::Status parse(const std::string& text, JsonValue* out) {
  return llm::json_parse(text.data(), text.size(), out);
}

bool parses(const std::string& text) {
  JsonValue v;
  return parse(text, &v).ok();
}

}  // namespace

TEST(json_parses_scalars_and_containers) {
  JsonValue v;
  CHECK(parse(" {\"a\": [1, -2.5, true, false, null, \"s\"], \"b\": {}, \"c\": []} ", &v).ok());
  CHECK(v.is_object());
  const JsonValue* a = v.get("a");
  CHECK(a != nullptr && a->is_array() && a->array.size() == 6);
  if (a == nullptr || a->array.size() != 6) return;
  CHECK(a->array[0].is_int() && a->array[0].int_value == 1);
  CHECK(a->array[1].is_number() && !a->array[1].is_int() && a->array[1].number_value == -2.5);
  CHECK(a->array[2].is_bool() && a->array[2].bool_value);
  CHECK(a->array[3].is_bool() && !a->array[3].bool_value);
  CHECK(a->array[4].is_null());
  CHECK(a->array[5].is_string() && a->array[5].string_value == "s");
  CHECK(v.get("b")->is_object() && v.get("b")->object.empty());
  CHECK(v.get("c")->is_array() && v.get("c")->array.empty());
  CHECK(v.get("missing") == nullptr);
  CHECK(a->get("x") == nullptr);  // get on a non-object
}

TEST(json_numbers) {
  JsonValue v;
  CHECK(parse("9223372036854775807", &v).ok() && v.is_int() && v.int_value == INT64_MAX);
  CHECK(parse("-9223372036854775808", &v).ok() && v.is_int() && v.int_value == INT64_MIN);
  // Beyond int64: still a number, no longer an exact integer.
  CHECK(parse("9223372036854775808", &v).ok() && v.is_number() && !v.is_int());
  CHECK(parse("1e3", &v).ok() && !v.is_int() && v.number_value == 1000.0);
  CHECK(parse("1E-2", &v).ok() && v.number_value == 0.01);
  CHECK(parse("-0", &v).ok() && v.is_int() && v.int_value == 0);
  CHECK(parse("10000.0", &v).ok() && !v.is_int() && v.number_value == 10000.0);
  CHECK(parse("1e-06", &v).ok() && v.number_value == 1e-6);
  CHECK(!parses("01"));
  CHECK(!parses("1."));
  CHECK(!parses(".5"));
  CHECK(!parses("+1"));
  CHECK(!parses("1e"));
  CHECK(!parses("-"));
  CHECK(!parses("1e400"));  // not a finite double
  CHECK(!parses("NaN"));
  CHECK(!parses("Infinity"));
}

TEST(json_string_escapes_and_utf8) {
  JsonValue v;
  CHECK(parse("\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\"", &v).ok());
  CHECK(v.string_value == "\" \\ / \b \f \n \r \t");
  CHECK(parse("\"\\u0041\\u00e9\\u20AC\"", &v).ok() && v.string_value == "A\xc3\xa9\xe2\x82\xac");
  // Surrogate pair U+1F600 -> 4-byte UTF-8.
  CHECK(parse("\"\\ud83d\\ude00\"", &v).ok() && v.string_value == "\xf0\x9f\x98\x80");
  CHECK(parse("\"\\u0000\"", &v).ok() && v.string_value == std::string(1, '\0'));
  // Raw UTF-8 passes through.
  CHECK(parse("\"caf\xc3\xa9 \xf0\x9f\x98\x80\"", &v).ok() && v.string_value == "caf\xc3\xa9 \xf0\x9f\x98\x80");
  CHECK(!parses("\"\\ud83d\""));          // lone high surrogate
  CHECK(!parses("\"\\ud83d\\u0041\""));   // high surrogate + non-surrogate
  CHECK(!parses("\"\\ude00\""));          // lone low surrogate
  CHECK(!parses("\"\\u12\""));            // short \u
  CHECK(!parses("\"\\u12g4\""));          // not hex
  CHECK(!parses("\"\\x\""));              // unknown escape
  CHECK(!parses("\"a\nb\""));             // raw control character
  CHECK(!parses("\"\xff\""));             // invalid UTF-8 byte
  CHECK(!parses("\"\xc3\""));             // truncated sequence
  CHECK(!parses("\"\xc0\xaf\""));         // overlong '/'
  CHECK(!parses("\"\xed\xa0\x80\""));     // encoded surrogate
  CHECK(!parses("\"abc"));                // unterminated
  CHECK(!parses("\"abc\\"));              // unterminated escape
}

TEST(json_rejects_malformed_documents) {
  const char* bad[] = {
      "", " ", "{", "}", "[", "]", "[1,]", "[1 2]", "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "{\"a\":}",
      "{,}", "[,1]", "tru", "nul", "falsey", "{} {}", "1 2", "[1]x", "{\"a\":1 \"b\":2}",
      "{\"a\":1,\"a\":2}",  // duplicate key
      "// comment\n{}", "'single'", "[\"a\"\x01]",
  };
  for (const char* text : bad) {
    JsonValue v;
    llm::Status st = parse(text, &v);
    if (st.ok()) std::printf("  unexpectedly parsed: %s\n", text);
    CHECK(!st.ok());
    CHECK(st.code() == llm::StatusCode::invalid_argument);
  }
}

TEST(json_error_names_byte_offset) {
  JsonValue v;
  llm::Status st = parse("{\"a\": [1, 2,, 3]}", &v);
  CHECK(!st.ok());
  CHECK(st.message().find("at byte 12") != std::string::npos);
  st = parse("{\"k\": 1, \"k\": 2}", &v);
  CHECK(st.message().find("duplicate") != std::string::npos);
  CHECK(st.message().find("at byte 9") != std::string::npos);
}

TEST(json_depth_limit) {
  // kMaxJsonDepth nested containers parse; one more fails; a deep bomb fails without recursion
  // past the limit (it would overflow the stack otherwise).
  auto nested = [](int depth) { return std::string(static_cast<size_t>(depth), '[') + std::string(static_cast<size_t>(depth), ']'); };
  CHECK(parses(nested(llm::kMaxJsonDepth)));
  CHECK(!parses(nested(llm::kMaxJsonDepth + 1)));
  CHECK(!parses(std::string(1000000, '[')));
  std::string objs;
  for (int i = 0; i < 200000; ++i) objs += "{\"a\":";
  JsonValue v;
  llm::Status st = parse(objs, &v);
  CHECK(!st.ok() && st.message().find("nesting") != std::string::npos);
}

TEST(json_does_not_read_past_length) {
  // The buffer is not NUL-terminated at len: "true" cut to "tru" must fail.
  const std::string text = "truex";
  JsonValue v;
  CHECK(!llm::json_parse(text.data(), 3, &v).ok());
  CHECK(llm::json_parse(text.data(), 4, &v).ok() && v.bool_value);
  CHECK(!llm::json_parse("123", 0, &v).ok());
}

TEST(json_parse_file) {
  llm_test::TempDir dir;
  JsonValue v;
  llm::Status st = llm::json_parse_file(dir.path() + "/absent.json", &v);
  CHECK(st.code() == llm::StatusCode::model_file_missing);
  CHECK(st.message().find("absent.json") != std::string::npos);

  llm_test::write_file(dir.path() + "/ok.json", "{\"x\": [1, 2]}\n");
  CHECK(llm::json_parse_file(dir.path() + "/ok.json", &v).ok());
  CHECK(v.get("x") != nullptr && v.get("x")->array.size() == 2);

  llm_test::write_file(dir.path() + "/bad.json", "{\"x\": }");
  st = llm::json_parse_file(dir.path() + "/bad.json", &v);
  CHECK(st.code() == llm::StatusCode::invalid_argument);
  CHECK(st.message().find("bad.json") != std::string::npos);

  st = llm::json_parse_file(dir.path(), &v);  // a directory
  CHECK(st.code() == llm::StatusCode::io_error);
}

int main() { return llm_test::run_all(); }
