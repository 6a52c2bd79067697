// model-safetensors.h: memory-mapped safetensors files, single or sharded.
//
// Owns: the mappings (munmap on destruction) and the tensor directory of a model: name ->
// (file, dtype, shape, byte range).
// Stays true: every TensorInfo handed out lies wholly inside its mapped file, its byte length
// equals product(shape) * dtype_size, and its dtype is one we compute with (F32, F16, BF16).
// Any file that breaks this is rejected with a Status naming the file and tensor.
// Format: u64 little-endian header length N, N bytes of JSON header, then the data section;
// offsets in the header are relative to the data section. As in the reference implementation
// the tensors must tile the data section exactly; each must also be aligned to its element size.
// Errors (messages start with the file's path):
//   ERR_MODEL_FILE_MISSING    no directory / file / shard named by the index
//   ERR_MODEL_FILE_TRUNCATED  shorter than 8 bytes, than 8 + N, or than the data the header describes
//   ERR_MODEL_HEADER_INVALID  N > 100 MB, bad JSON, bad entry, inconsistent offsets, uncovered or
//                             misaligned data, a tensor in two shards, a malformed index
//   ERR_MODEL_TENSOR_DTYPE    a dtype other than F32, F16, BF16
//   ERR_MODEL_TENSOR_MISSING  the index names a tensor in a shard that does not hold it
//   ERR_IO                    open/fstat/mmap failed, or not a regular file
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../common/status.h"
#include "../kernels/dtype.h"

namespace llm {

class MappedFile {
 public:
  static Status open(const std::string& path, std::unique_ptr<MappedFile>* out);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

struct TensorInfo {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // inside the mapping
  uint64_t nbytes = 0;
  int file_index = 0;
};

class SafetensorsModel {
 public:
  // Opens <dir>/model.safetensors, or (when there is none) every shard listed in the weight_map
  // of <dir>/model.safetensors.index.json. Shard names must be plain file names in <dir>.
  static Status open_dir(const std::string& dir, std::unique_ptr<SafetensorsModel>* out);
  // Opens one file (used by tests and tools).
  static Status open_file(const std::string& path, std::unique_ptr<SafetensorsModel>* out);

  const TensorInfo* find(const std::string& name) const;  // nullptr if absent
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  uint64_t total_bytes() const;
  // Drops this process's mapping of the whole pages inside [data, data + nbytes) (tensor data of
  // one of the files) without changing what it reads: the next read maps them in again from the
  // file. For weights the caller has copied elsewhere, so that they stop counting in its memory.
  void release_pages(const void* data, uint64_t nbytes) const;

 private:
  Status add_file(const std::string& path);
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::map<std::string, TensorInfo> tensors_;
};

}  // namespace llm
