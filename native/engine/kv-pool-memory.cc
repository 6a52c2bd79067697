// kv-pool-memory.cc: KvPoolMemory (see kv-pool-memory.h).
#include "kv-pool-memory.h"

#include <sys/mman.h>

#include "model-runner-cuda.h"

namespace llm {

Status KvPoolMemory::create(Kind kind, size_t bytes, std::unique_ptr<KvPoolMemory>* out,
                            const std::string& shm_name) {
  std::unique_ptr<KvPoolMemory> m(new KvPoolMemory());
  m->kind_ = kind;
  m->bytes_ = bytes;
  switch (kind) {
    case Kind::host: {
      // Anonymous pages are zero and cost nothing until touched.
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) p = nullptr;
      m->data_ = p;
      break;
    }
    case Kind::shared:
      SharedMemory::remove_stale_segments();
      LLM_RETURN_IF_ERROR(SharedMemory::create(shm_name.empty() ? SharedMemory::unique_name("kv") : shm_name, bytes, &m->shm_));
      m->data_ = m->shm_->data();
      break;
    case Kind::device:
      LLM_RETURN_IF_ERROR(cuda_alloc_zeroed(bytes, &m->data_));
      break;
  }
  if (!m->data_)
    return Status(StatusCode::out_of_memory, "cannot allocate the KV cache (" + std::to_string(bytes) + " bytes)");
  *out = std::move(m);
  return Status::Ok();
}

KvPoolMemory::~KvPoolMemory() {
  if (!data_) return;
  switch (kind_) {
    case Kind::host: munmap(data_, bytes_); break;
    case Kind::shared: break;  // shm_ unmaps and removes its segment
    case Kind::device: cuda_free(data_); break;
  }
}

}  // namespace llm
