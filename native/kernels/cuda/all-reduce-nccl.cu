// all-reduce-nccl.cu: the NCCL all-reduce (all-reduce.h).
//
// Why dlopen: as for cuBLAS (gemm.cu), the build has no NCCL header or library, and the GPU
// machines have libnccl.so.2 at run time (the CUDA toolkit's, a distribution's, or PyTorch's
// nvidia-nccl wheel). The few types, values and entry points used are declared below as nccl.h
// has them (they are ABI, stable across NCCL 2.x). Where it looks, in order: $KVSERVE_NCCL (a file
// path), then libnccl.so.2 and libnccl.so through the dynamic loader's search, then
// /usr/local/cuda/lib64.
//
// A call sums the ranks' fp32 parts in place (ncclAllReduce, ncclSum), then rounds once to the
// model's dtype. ncclCommInitRank blocks until every rank has joined; a sum that a peer never
// joins is ended by ncclCommAbort once the waiting host sees that peer gone (wait_for_stream).
#include <mutex>
#include <string>
#include <vector>

#include "all-reduce.h"
#include "cuda-common.cuh"
#include "device-memory.h"
#include "ipc-handle.h"
#include "shared-library.h"

namespace llm::cuda {

namespace {

// ---- the slice of nccl.h we use ----
using ncclResult_t = int;  // ncclSuccess = 0
using ncclComm_t = void*;
struct ncclUniqueId {
  char internal[128];
};
constexpr int kNcclSuccess = 0, kNcclInProgress = 7;
constexpr int kNcclFloat32 = 7;  // ncclDataType_t
constexpr int kNcclSum = 0;      // ncclRedOp_t

struct Nccl {
  std::string path;
  ncclResult_t (*get_version)(int*);
  ncclResult_t (*get_unique_id)(ncclUniqueId*);
  ncclResult_t (*comm_init_rank)(ncclComm_t*, int, ncclUniqueId, int);
  ncclResult_t (*comm_destroy)(ncclComm_t);
  ncclResult_t (*comm_abort)(ncclComm_t);
  ncclResult_t (*comm_get_async_error)(ncclComm_t, ncclResult_t*);
  ncclResult_t (*all_reduce)(const void*, void*, size_t, int, int, ncclComm_t, cudaStream_t);
  const char* (*error_string)(ncclResult_t);
};

const Nccl* load_nccl(std::string* error) {
  static std::once_flag once;
  static Nccl lib;
  static const Nccl* loaded = nullptr;
  static std::string why;
  std::call_once(once, [] {
    SharedLibrary so;
    if (!so.open("NCCL", "KVSERVE_NCCL", {"libnccl.so.2", "libnccl.so", "/usr/local/cuda/lib64/libnccl.so.2"}, &why)) return;
    lib.path = so.path();
    so.resolve("ncclGetVersion", &lib.get_version);
    so.resolve("ncclGetUniqueId", &lib.get_unique_id);
    so.resolve("ncclCommInitRank", &lib.comm_init_rank);
    so.resolve("ncclCommDestroy", &lib.comm_destroy);
    so.resolve("ncclCommAbort", &lib.comm_abort);
    so.resolve("ncclCommGetAsyncError", &lib.comm_get_async_error);
    so.resolve("ncclAllReduce", &lib.all_reduce);
    so.resolve("ncclGetErrorString", &lib.error_string);
    if (so.complete(&why)) loaded = &lib;
  });
  if (!loaded && error) *error = why;
  return loaded;
}

class NcclAllReduce : public DeviceAllReduce {
 public:
  NcclAllReduce(const Nccl* lib, ncclComm_t comm, int rank) : lib_(lib), comm_(comm), rank_(rank) {}
  ~NcclAllReduce() override {
    if (!comm_) return;
    if (broken_.ok()) lib_->comm_destroy(comm_);
    else lib_->comm_abort(comm_);  // a peer may be gone: destroy would wait for it
  }

  Status run(const float* in, int64_t n, void* out, DType out_dtype, cudaStream_t stream) override {
    LLM_RETURN_IF_ERROR(broken_);
    if (n <= 0) return Status::Ok();
    // In place when the result is fp32 and goes where the part is; else the sum lands in `in`
    // (the caller's scratch) and is rounded into out.
    float* sum = const_cast<float*>(in);
    const ncclResult_t r = lib_->all_reduce(in, sum, static_cast<size_t>(n), kNcclFloat32, kNcclSum, comm_, stream);
    if (r != kNcclSuccess && r != kNcclInProgress) return broken_ = failed("ncclAllReduce", r);
    return round_to_dtype(sum, n, out, out_dtype, stream);
  }

  Status error() override {
    if (!broken_.ok()) return broken_;
    ncclResult_t async = kNcclSuccess;
    if (const ncclResult_t r = lib_->comm_get_async_error(comm_, &async); r != kNcclSuccess)
      return broken_ = failed("ncclCommGetAsyncError", r);
    if (async != kNcclSuccess && async != kNcclInProgress) broken_ = failed("NCCL all-reduce", async);
    return broken_;
  }

  // ncclCommAbort ends the kernels in flight; the communicator is gone with it.
  void abandon(const Status& why) override {
    if (comm_) lib_->comm_abort(comm_);
    comm_ = nullptr;
    if (broken_.ok()) broken_ = why;
  }

  std::string describe() const override {
    int v = 0;
    lib_->get_version(&v);
    // NCCL_VERSION(X, Y, Z) = X * 10000 + Y * 100 + Z from 2.9 on (X * 1000 + Y * 100 + Z before).
    const int major = v >= 10000 ? v / 10000 : v / 1000, minor = v >= 10000 ? v / 100 % 100 : v / 100 % 10;
    return "NCCL " + std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(v % 100) + " (" + lib_->path + ")";
  }

 private:
  Status failed(const std::string& what, ncclResult_t r) const {
    return Status(StatusCode::transfer_peer, "NCCL rank " + std::to_string(rank_) + ": " + what + ": " + lib_->error_string(r));
  }

  const Nccl* lib_;
  ncclComm_t comm_;
  int rank_;
  Status broken_;
};

}  // namespace

bool nccl_available(std::string* why) { return load_nccl(why) != nullptr; }

Status make_nccl_all_reduce(int rank, int world, const AllGather& exchange, std::unique_ptr<DeviceAllReduce>* out) {
  if (world < 2 || rank < 0 || rank >= world)
    return Status(StatusCode::invalid_argument, "NCCL: rank " + std::to_string(rank) + " of " + std::to_string(world));
  std::string why;
  const Nccl* lib = load_nccl(&why);
  if (!lib) return Status(StatusCode::device_unavailable, why);
  // Rank 0 sends the id, or nothing when it has none: every rank's calls of the group pair up.
  ncclUniqueId id{};
  std::string mine;
  Status made;
  if (rank == 0) {
    if (const ncclResult_t r = lib->get_unique_id(&id); r != kNcclSuccess)
      made = Status(StatusCode::device_unavailable, std::string("ncclGetUniqueId: ") + lib->error_string(r));
    else
      mine = to_hex(&id, sizeof id);
  }
  std::vector<std::string> all;
  LLM_RETURN_IF_ERROR(exchange(mine, &all));
  LLM_RETURN_IF_ERROR(made);
  if (all.empty() || !from_hex(all[0], &id, sizeof id))
    return Status(StatusCode::device_unavailable, "NCCL rank " + std::to_string(rank) + ": rank 0 has no communicator id");
  ncclComm_t comm = nullptr;
  if (const ncclResult_t r = lib->comm_init_rank(&comm, world, id, rank); r != kNcclSuccess)
    return Status(StatusCode::device_unavailable,
                  "NCCL rank " + std::to_string(rank) + ": ncclCommInitRank: " + lib->error_string(r));
  *out = std::make_unique<NcclAllReduce>(lib, comm, rank);
  return Status::Ok();
}

}  // namespace llm::cuda
