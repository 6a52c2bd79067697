// model-json.h: a small, strict JSON reader for config.json, generation_config.json,
// model.safetensors.index.json and safetensors headers.
//
// Owns: parsing text into a JsonValue tree. No writer.
// Stays true: never throws or aborts on bad input; a parse error is a Status with the byte
// offset. Nesting depth is bounded (kMaxJsonDepth) so hostile input cannot blow the stack.
// Numbers keep their integer value exactly when they are integers up to 2^63.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../common/status.h"

namespace llm {

constexpr int kMaxJsonDepth = 64;

class JsonValue {
 public:
  enum class Kind { null, boolean, number, string, array, object };

  Kind kind = Kind::null;
  bool bool_value = false;
  double number_value = 0;
  bool number_is_int = false;  // true when the literal had no fraction/exponent and fits int64
  int64_t int_value = 0;
  std::string string_value;
  std::vector<JsonValue> array;
  std::map<std::string, JsonValue> object;

  bool is_null() const { return kind == Kind::null; }
  bool is_number() const { return kind == Kind::number; }
  bool is_int() const { return kind == Kind::number && number_is_int; }
  bool is_string() const { return kind == Kind::string; }
  bool is_array() const { return kind == Kind::array; }
  bool is_object() const { return kind == Kind::object; }
  bool is_bool() const { return kind == Kind::boolean; }

  // Object member or nullptr (also nullptr when this is not an object).
  const JsonValue* get(const std::string& key) const;
};

// Parses the whole of `text` (trailing whitespace allowed, nothing else). A syntax error is
// ERR_INVALID_ARGUMENT "JSON parse error at byte N: ..."; callers re-code it for their file.
Status json_parse(const char* text, size_t len, JsonValue* out);
// Reads and parses a file of at most 100 MB. Missing file: ERR_MODEL_FILE_MISSING "<path>: file
// not found"; unreadable: ERR_IO; syntax error: as json_parse, message prefixed with "<path>: ".
Status json_parse_file(const std::string& path, JsonValue* out);

}  // namespace llm
