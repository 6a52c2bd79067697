// model-safetensors.cc: mapping safetensors files and checking their headers.
//
// A file is laid out as
//   | u64 LE N | N bytes of JSON header | data section |
// and the header maps tensor name -> {dtype, shape, data_offsets: [begin, end)} with offsets
// relative to the data section. Like the reference implementation we require the tensors to tile
// the data section exactly (sorted by begin: no gap, no overlap, the last one ends at its end),
// so a header that disagrees with itself is ERR_MODEL_HEADER_INVALID, while a consistent header
// whose data runs past the end of the file is ERR_MODEL_FILE_TRUNCATED.
// All size arithmetic is done in uint64 with overflow checks: shapes and offsets are hostile.
#include "model-safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <set>

#include "model-json.h"

namespace llm {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

Status header_invalid(const std::string& path, const std::string& msg) {
  return Status(StatusCode::model_header_invalid, path + ": " + msg);
}

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }

// Maps a safetensors dtype string to ours. Returns false for dtypes we do not compute with.
bool parse_dtype(const std::string& s, DType* out) {
  if (s == "F32") *out = DType::f32;
  else if (s == "F16") *out = DType::f16;
  else if (s == "BF16") *out = DType::bf16;
  else return false;
  return true;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// One header entry, before it is placed in the file.
struct HeaderEntry {
  TensorInfo info;
  uint64_t begin = 0;
  uint64_t end = 0;
};

// Checks one header entry on its own (types, dtype, shape, byte length vs offsets).
Status parse_entry(const std::string& path, const std::string& name, const JsonValue& v,
                   HeaderEntry* out) {
  const std::string where = "tensor '" + name + "': ";
  if (!v.is_object()) return header_invalid(path, where + "entry is not an object");
  const JsonValue* dtype = v.get("dtype");
  const JsonValue* shape = v.get("shape");
  const JsonValue* offsets = v.get("data_offsets");
  if (dtype == nullptr || !dtype->is_string()) return header_invalid(path, where + "'dtype' must be a string");
  if (shape == nullptr || !shape->is_array()) return header_invalid(path, where + "'shape' must be a list");
  if (offsets == nullptr || !offsets->is_array() || offsets->array.size() != 2) {
    return header_invalid(path, where + "'data_offsets' must be a list [begin, end]");
  }

  TensorInfo& t = out->info;
  t.name = name;
  if (!parse_dtype(dtype->string_value, &t.dtype)) {
    return Status(StatusCode::model_tensor_dtype,
                  path + ": " + where + "dtype '" + dtype->string_value +
                      "' is not supported (supported: F32, F16, BF16)");
  }
  uint64_t elements = 1;
  for (const JsonValue& d : shape->array) {
    if (!d.is_int() || d.int_value < 0) return header_invalid(path, where + "shape entries must be integers >= 0");
    if (mul_overflows(elements, static_cast<uint64_t>(d.int_value), &elements)) {
      return header_invalid(path, where + "shape " + shape_string(t.shape) + "... overflows");
    }
    t.shape.push_back(d.int_value);
  }
  if (mul_overflows(elements, static_cast<uint64_t>(dtype_size(t.dtype)), &t.nbytes)) {
    return header_invalid(path, where + "byte size of shape " + shape_string(t.shape) + " overflows");
  }
  for (const JsonValue& o : offsets->array) {
    if (!o.is_int() || o.int_value < 0) return header_invalid(path, where + "data_offsets must be integers >= 0");
  }
  out->begin = static_cast<uint64_t>(offsets->array[0].int_value);
  out->end = static_cast<uint64_t>(offsets->array[1].int_value);
  if (out->end < out->begin) return header_invalid(path, where + "data_offsets end < begin");
  if (out->end - out->begin != t.nbytes) {
    return header_invalid(path, where + "data_offsets span " + std::to_string(out->end - out->begin) +
                                    " bytes but shape " + shape_string(t.shape) + " of " +
                                    dtype_name(t.dtype) + " needs " + std::to_string(t.nbytes));
  }
  return Status::Ok();
}

// A shard name from the index must be a plain file name inside the model directory.
bool is_plain_file_name(const std::string& s) {
  return !s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos &&
         s.find('\\') == std::string::npos && s.find('\0') == std::string::npos;
}

bool is_directory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace

// ---- MappedFile ------------------------------------------------------------------------------

Status MappedFile::open(const std::string& path, std::unique_ptr<MappedFile>* out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Status(StatusCode::model_file_missing, path + ": file not found");
    return Status(StatusCode::io_error, path + ": open failed: " + std::strerror(errno));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return Status(StatusCode::io_error, path + ": fstat failed: " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status(StatusCode::io_error, path + ": not a regular file");
  }
  std::unique_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ > 0) {  // mmap of length 0 fails; an empty file simply has no bytes
    void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return Status(StatusCode::io_error, path + ": mmap failed: " + std::strerror(err));
    }
    f->data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping stays valid without the descriptor
  *out = std::move(f);
  return Status::Ok();
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

// ---- SafetensorsModel ------------------------------------------------------------------------

void SafetensorsModel::release_pages(const void* data, uint64_t nbytes) const {
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(data), end = begin + nbytes;
  for (const auto& f : files_) {
    const auto fb = reinterpret_cast<uintptr_t>(f->data()), fe = fb + f->size();
    if (f->size() == 0 || begin < fb || end > fe) continue;
    const uintptr_t first = (begin + page - 1) / page * page, last = end / page * page;
    // A private, read-only file mapping: the pages go back to the page cache, unchanged.
    if (first < last) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
  }
}

Status SafetensorsModel::add_file(const std::string& path) {
  std::unique_ptr<MappedFile> file;
  LLM_RETURN_IF_ERROR(MappedFile::open(path, &file));
  const uint64_t size = file->size();
  if (size < 8) {
    return Status(StatusCode::model_file_truncated,
                  path + ": " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | file->data()[i];  // little endian
  if (header_len > kMaxHeaderBytes) {
    return header_invalid(path, "header length " + std::to_string(header_len) + " exceeds 100 MB");
  }
  if (header_len > size - 8) {
    return Status(StatusCode::model_file_truncated,
                  path + ": header of " + std::to_string(header_len) + " bytes but the file has only " +
                      std::to_string(size) + " bytes");
  }
  const uint8_t* data_section = file->data() + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  JsonValue header;
  Status st = json_parse(reinterpret_cast<const char*>(file->data()) + 8, header_len, &header);
  if (!st.ok()) return header_invalid(path, st.message());
  if (!header.is_object()) return header_invalid(path, "header is not a JSON object");

  std::vector<HeaderEntry> entries;
  for (const auto& [name, value] : header.object) {
    if (name == "__metadata__") continue;  // free-form string map, not a tensor
    HeaderEntry e;
    LLM_RETURN_IF_ERROR(parse_entry(path, name, value, &e));
    entries.push_back(std::move(e));
  }

  // The tensors must tile [0, covered) with no gap or overlap. Sorting by (begin, end) puts a
  // zero-sized tensor before the one that starts where it sits.
  std::sort(entries.begin(), entries.end(), [](const HeaderEntry& a, const HeaderEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t covered = 0;
  for (const HeaderEntry& e : entries) {
    if (e.begin != covered) {
      return header_invalid(path, "tensor '" + e.info.name + "' starts at " + std::to_string(e.begin) +
                                      " but the previous tensor ends at " + std::to_string(covered) +
                                      " (data_offsets must tile the data section)");
    }
    covered = e.end;
  }
  if (covered > data_size) {
    return Status(StatusCode::model_file_truncated,
                  path + ": tensors need " + std::to_string(covered) + " data bytes but the file holds " +
                      std::to_string(data_size));
  }
  if (covered < data_size) {
    return header_invalid(path, "data section has " + std::to_string(data_size - covered) +
                                    " bytes that no tensor covers");
  }

  const int file_index = static_cast<int>(files_.size());
  for (HeaderEntry& e : entries) {
    TensorInfo& t = e.info;
    t.data = data_section + e.begin;
    t.file_index = file_index;
    // Kernels load elements through typed pointers, which must be aligned.
    if (reinterpret_cast<uintptr_t>(t.data) % static_cast<uintptr_t>(dtype_size(t.dtype)) != 0) {
      return header_invalid(path, "tensor '" + t.name + "' is not aligned to its element size "
                                  "(re-save the file with a current safetensors)");
    }
    auto prev = tensors_.find(t.name);
    if (prev != tensors_.end()) {
      return header_invalid(path, "tensor '" + t.name + "' is also in " +
                                      files_[static_cast<size_t>(prev->second.file_index)]->path());
    }
    tensors_.emplace(t.name, std::move(t));
  }
  files_.push_back(std::move(file));
  return Status::Ok();
}

Status SafetensorsModel::open_file(const std::string& path, std::unique_ptr<SafetensorsModel>* out) {
  std::unique_ptr<SafetensorsModel> m(new SafetensorsModel());
  LLM_RETURN_IF_ERROR(m->add_file(path));
  *out = std::move(m);
  return Status::Ok();
}

Status SafetensorsModel::open_dir(const std::string& dir, std::unique_ptr<SafetensorsModel>* out) {
  const std::string single = dir + "/model.safetensors";
  const std::string index_path = dir + "/model.safetensors.index.json";
  if (!is_directory(dir)) {
    return Status(StatusCode::model_file_missing, "model directory not found: " + dir +
                                                      " (looked for model.safetensors and "
                                                      "model.safetensors.index.json in it)");
  }
  std::unique_ptr<SafetensorsModel> m(new SafetensorsModel());
  // Like transformers, a single model.safetensors wins over an index beside it.
  if (file_exists(single)) {
    LLM_RETURN_IF_ERROR(m->add_file(single));
    *out = std::move(m);
    return Status::Ok();
  }
  if (!file_exists(index_path)) {
    return Status(StatusCode::model_file_missing,
                  dir + ": no model.safetensors or model.safetensors.index.json");
  }

  // Sharded: the index's weight_map names, for every tensor, the shard that holds it.
  JsonValue index;
  Status st = json_parse_file(index_path, &index);
  if (st.code() == StatusCode::invalid_argument) return Status(StatusCode::model_header_invalid, st.message());
  LLM_RETURN_IF_ERROR(st);
  const JsonValue* weight_map = index.get("weight_map");
  if (weight_map == nullptr || !weight_map->is_object() || weight_map->object.empty()) {
    return header_invalid(index_path, "'weight_map' must be a non-empty object");
  }
  std::set<std::string> shards;
  for (const auto& [name, shard] : weight_map->object) {
    if (!shard.is_string() || !is_plain_file_name(shard.string_value)) {
      return header_invalid(index_path, "weight_map['" + name + "'] must be a file name in the model directory");
    }
    shards.insert(shard.string_value);
  }
  std::map<std::string, int> shard_index;  // shard name -> file_index
  for (const std::string& shard : shards) {
    shard_index[shard] = static_cast<int>(m->files_.size());
    LLM_RETURN_IF_ERROR(m->add_file(dir + "/" + shard));
  }
  for (const auto& [name, shard] : weight_map->object) {
    const TensorInfo* t = m->find(name);
    if (t == nullptr || t->file_index != shard_index[shard.string_value]) {
      return Status(StatusCode::model_tensor_missing,
                    index_path + ": names tensor '" + name + "' in " + shard.string_value +
                        ", which does not hold it");
    }
  }
  *out = std::move(m);
  return Status::Ok();
}

const TensorInfo* SafetensorsModel::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

uint64_t SafetensorsModel::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, t] : tensors_) total += t.nbytes;
  return total;
}

}  // namespace llm
