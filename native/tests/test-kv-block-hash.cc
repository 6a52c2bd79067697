// test-kv-block-hash.cc: the engine's chained block hash against test/vectors/block-hash.json
// (written by test/vectors/make-block-hash-vectors.py with python-xxhash, an independent
// implementation). Runs with the repository root as working directory.
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "kv/kv-block-hash.h"
#include "test-harness.h"

namespace {

// Just enough JSON for the vectors file: objects, arrays, strings without escapes, integers.
struct Json {
  enum Kind { null_, number, string, array, object } kind = null_;
  double num = 0;
  std::string str;
  std::vector<Json> items;
  std::map<std::string, Json> fields;
  const Json& operator[](const std::string& key) const {
    static const Json none;
    auto it = fields.find(key);
    return it == fields.end() ? none : it->second;
  }
};

class JsonReader {
 public:
  explicit JsonReader(std::string text) : s_(std::move(text)) {}
  bool parse(Json* out) {
    ok_ = true;
    value(out);
    skip_ws();
    return ok_ && pos_ == s_.size();
  }

 private:
  void skip_ws() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool eat(char c) {
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  void string_value(std::string* out) {
    if (!eat('"')) {
      ok_ = false;
      return;
    }
    const size_t end = s_.find('"', pos_);
    if (end == std::string::npos) {
      ok_ = false;
      return;
    }
    *out = s_.substr(pos_, end - pos_);
    pos_ = end + 1;
  }
  void value(Json* v) {
    skip_ws();
    if (!ok_ || pos_ >= s_.size()) {
      ok_ = false;
      return;
    }
    const char c = s_[pos_];
    if (c == '"') {
      v->kind = Json::string;
      string_value(&v->str);
    } else if (c == '[') {
      v->kind = Json::array;
      ++pos_;
      if (eat(']')) return;
      do {
        v->items.emplace_back();
        value(&v->items.back());
      } while (ok_ && eat(','));
      if (!eat(']')) ok_ = false;
    } else if (c == '{') {
      v->kind = Json::object;
      ++pos_;
      if (eat('}')) return;
      do {
        std::string key;
        string_value(&key);
        if (!eat(':')) ok_ = false;
        if (ok_) value(&v->fields[key]);
      } while (ok_ && eat(','));
      if (!eat('}')) ok_ = false;
    } else {
      char* end = nullptr;
      v->kind = Json::number;
      v->num = std::strtod(s_.c_str() + pos_, &end);
      if (end == s_.c_str() + pos_) ok_ = false;
      pos_ = static_cast<size_t>(end - s_.c_str());
    }
  }
  std::string s_;
  size_t pos_ = 0;
  bool ok_ = true;
};

std::string hex16(uint64_t h) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

const Json& vectors() {
  static Json doc;
  static bool loaded = false;
  if (!loaded) {
    loaded = true;
    std::ifstream f("test/vectors/block-hash.json");
    std::stringstream ss;
    ss << f.rdbuf();
    if (!JsonReader(ss.str()).parse(&doc)) std::printf("  cannot read test/vectors/block-hash.json\n");
  }
  return doc;
}

}  // namespace

TEST(vectors_file_is_complete) {
  const Json& doc = vectors();
  CHECK(doc["format"].kind == Json::string);
  CHECK_EQ(static_cast<int64_t>(doc["seed"].num), static_cast<int64_t>(llm::kBlockHashSeed));
  const Json& cases = doc["cases"];
  CHECK(cases.items.size() >= 10);
  bool sizes[129] = {};
  bool long_case = false, partial = false, empty = false;
  bool xxh3_long_path = false;  // a chained block of more than 240 bytes: XXH3's long-input path
  for (const Json& c : cases.items) {
    const size_t bs = static_cast<size_t>(c["block_size"].num);
    if (bs <= 128) sizes[bs] = true;
    const size_t n = c["tokens"].items.size();
    long_case |= n >= 2048;
    partial |= bs > 0 && n % bs != 0;
    empty |= n == 0;
    xxh3_long_path |= n >= 2 * bs && 8 + 4 * bs > 240;
  }
  CHECK(sizes[1] && sizes[4] && sizes[16] && sizes[128]);
  CHECK(long_case && partial && empty && xxh3_long_path);
}

TEST(matches_vectors) {
  for (const Json& c : vectors()["cases"].items) {
    const int64_t bs = static_cast<int64_t>(c["block_size"].num);
    std::vector<int32_t> tokens;
    for (const Json& t : c["tokens"].items) tokens.push_back(static_cast<int32_t>(t.num));
    std::vector<uint64_t> hashes;
    llm::extend_block_hashes(tokens.data(), static_cast<int64_t>(tokens.size()), bs, &hashes);
    const std::vector<Json>& want = c["hashes"].items;
    CHECK_EQ(hashes.size(), want.size());
    for (size_t i = 0; i < hashes.size() && i < want.size(); ++i) {
      if (hex16(hashes[i]) != want[i].str) {
        std::printf("  case '%s' block %zu: %s vs %s\n", c["name"].str.c_str(), i, hex16(hashes[i]).c_str(),
                    want[i].str.c_str());
        CHECK(false);
      }
    }
  }
}

TEST(extend_is_incremental_and_matches_block_hash) {
  std::vector<int32_t> tokens;
  for (int i = 0; i < 37; ++i) tokens.push_back(i * 7919);
  std::vector<uint64_t> all;
  llm::extend_block_hashes(tokens.data(), 37, 4, &all);
  CHECK_EQ(all.size(), size_t{9});

  std::vector<uint64_t> step;
  for (int64_t n = 0; n <= 37; ++n) llm::extend_block_hashes(tokens.data(), n, 4, &step);
  CHECK(step == all);

  CHECK_EQ(all[0], llm::block_hash(nullptr, tokens.data(), 4));
  CHECK_EQ(all[1], llm::block_hash(&all[0], tokens.data() + 4, 4));
  // The chain names the whole prefix: the same block after a different prefix hashes differently.
  const uint64_t other_parent = all[0] + 1;
  CHECK(llm::block_hash(&other_parent, tokens.data() + 4, 4) != all[1]);
}

TEST(bad_block_size_hashes_nothing) {
  const int32_t tokens[4] = {1, 2, 3, 4};
  std::vector<uint64_t> hashes;
  llm::extend_block_hashes(tokens, 4, 0, &hashes);
  llm::extend_block_hashes(tokens, 4, -2, &hashes);
  CHECK(hashes.empty());
}

int main() { return llm_test::run_all(); }
