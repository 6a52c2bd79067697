// all-reduce-ipc.cu: the one-shot all-reduce over CUDA IPC (all-reduce.h).
//
// Each rank has one allocation, mapped by every peer:
//   flags [kMaxBlocks][kMaxAllReduceRanks] uint64   flags[b][p]: the last call whose block b
//                                                   rank p has started (written by rank p)
//   data  [2][slot_floats] float                    call g's part goes in data[g % 2]
// Call g (1, 2, ...) on every rank: copy its part into its data[g % 2] (stream order: done before
// the kernel starts), then in the kernel block b of rank r writes g into flags[b][r] of every
// rank (release, system scope), waits until its own flags[b][p] >= g for every p (acquire), and
// adds data[g % 2][i] of ranks 0, 1, ..., N-1 for its elements, rounding once.
// Why two data slots and no second barrier: a rank writes data[g % 2] again at call g + 2, after
// its kernel of call g + 1 has seen every peer's block start g + 1, and a peer starts g + 1 only
// after all of its kernel of call g, the last reader of that slot, has finished (same stream).
// A peer may run one call ahead, so a flag is compared with >=, never ==; call numbers are 64-bit,
// so a block that sat out many calls (small sums use few blocks) never sees a number wrap.
// A kernel that waits for a peer gives up at the abort word (host memory the waiting host sets
// when a peer process is gone) or after kPeerTimeoutNs, and says so in the error word, so a dead
// rank never leaves a stream spinning.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>

#include "all-reduce.h"
#include "cuda-common.cuh"
#include "device-memory.h"
#include "ipc-handle.h"

namespace llm::cuda {

namespace {

constexpr int kMaxBlocks = 32;
constexpr int kThreads = 512;
constexpr size_t kFlagsBytes = 4096;  // kMaxBlocks * kMaxAllReduceRanks * 8, rounded to a page
constexpr uint64_t kPeerTimeoutNs = 30ull * 1000 * 1000 * 1000;
static_assert(kMaxBlocks * kMaxAllReduceRanks * 8 <= static_cast<int>(kFlagsBytes), "flags fit");

struct Ranks {
  const float* data[kMaxAllReduceRanks];  // rank p's data slots (slot 1 at + slot_floats)
  uint64_t* flags[kMaxAllReduceRanks];    // rank p's flags
};

// Host words the kernel and the host share (page-locked, mapped).
struct Control {
  uint32_t abort;  // set by the host: a peer is gone, stop waiting
  uint32_t error;  // set by a kernel: 1 + the rank it gave up on
};

__device__ __forceinline__ void store_release(uint64_t* p, uint64_t v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ uint64_t load_acquire(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ uint64_t now_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) one_shot_kernel(Ranks ranks, int rank, int world, uint64_t gen, int64_t slot_floats,
                                                            int64_t n, T* __restrict__ out, Control* control) {
  const int b = blockIdx.x;
  if (threadIdx.x < world) {
    const int p = threadIdx.x;
    store_release(&ranks.flags[p][b * kMaxAllReduceRanks + rank], gen);
    const uint64_t* mine = &ranks.flags[rank][b * kMaxAllReduceRanks + p];
    const uint64_t start = now_ns();
    for (uint32_t spins = 0; load_acquire(mine) < gen; ++spins) {
      if ((spins & 1023) == 1023 &&
          (*static_cast<volatile uint32_t*>(&control->abort) || now_ns() - start > kPeerTimeoutNs)) {
        // A plain store: atomics on mapped host memory are not atomic for the host anyway, and
        // any one of the ranks given up on will do for the message.
        *static_cast<volatile uint32_t*>(&control->error) = static_cast<uint32_t>(p + 1);
        break;
      }
    }
  }
  __syncthreads();
  const int64_t slot = (gen & 1) * slot_floats;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(b) * kThreads + threadIdx.x; i < n; i += stride) {
    float s = ranks.data[0][slot + i];
    for (int p = 1; p < world; ++p) s += ranks.data[p][slot + i];
    out[i] = from_float<T>(s);
  }
}

size_t slot_bytes_for(size_t max_bytes) { return (std::max<size_t>(max_bytes, 4096) + 255) / 256 * 256; }

// The buffers of every rank, as this process sees them, and who frees them.
struct Mapped {
  std::vector<void*> base;  // [world]: each rank's allocation (flags, then the two data slots)
  std::vector<bool> opened;  // base[p] was opened from a peer's handle (else this process allocated it)
  int device = 0;
  ~Mapped() {
    cudaSetDevice(device);
    for (size_t p = 0; p < base.size(); ++p) {
      if (!base[p]) continue;
      if (opened[p]) close_ipc_handle(base[p], device);
      else cudaFree(base[p]);
    }
    cudaGetLastError();
  }
};

class IpcAllReduce : public DeviceAllReduce {
 public:
  IpcAllReduce(std::shared_ptr<Mapped> mapped, int rank, int world, size_t slot_bytes)
      : mapped_(std::move(mapped)), rank_(rank), world_(world), slot_floats_(static_cast<int64_t>(slot_bytes / 4)) {}
  ~IpcAllReduce() override {
    if (control_) cudaFreeHost(control_);
  }

  Status init() {
    LLM_CUDA_RETURN_IF_ERROR("the all-reduce's control words",
                             cudaHostAlloc(reinterpret_cast<void**>(&control_), sizeof(Control), cudaHostAllocMapped));
    std::memset(control_, 0, sizeof(Control));
    LLM_CUDA_RETURN_IF_ERROR("mapping the all-reduce's control words",
                             cudaHostGetDevicePointer(reinterpret_cast<void**>(&control_device_), control_, 0));
    for (int p = 0; p < world_; ++p) {
      ranks_.flags[p] = static_cast<uint64_t*>(mapped_->base[static_cast<size_t>(p)]);
      ranks_.data[p] = reinterpret_cast<const float*>(static_cast<const char*>(mapped_->base[static_cast<size_t>(p)]) + kFlagsBytes);
    }
    return Status::Ok();
  }

  Status run(const float* in, int64_t n, void* out, DType out_dtype, cudaStream_t stream) override {
    LLM_RETURN_IF_ERROR(broken_);
    const size_t e = static_cast<size_t>(dtype_size(out_dtype));
    for (int64_t done = 0; done < n; done += slot_floats_) {
      const int64_t c = std::min(slot_floats_, n - done);
      const uint64_t gen = ++gen_;
      float* mine = const_cast<float*>(ranks_.data[rank_]) + (gen & 1) * slot_floats_;
      LLM_CUDA_RETURN_IF_ERROR("copying a part into the all-reduce buffer",
                               cudaMemcpyAsync(mine, in + done, static_cast<size_t>(c) * 4, cudaMemcpyDeviceToDevice, stream));
      const int blocks = static_cast<int>(std::min<int64_t>(kMaxBlocks, ceil_div(c, kThreads)));
      char* at = static_cast<char*>(out) + static_cast<size_t>(done) * e;
      LLM_RETURN_IF_ERROR(dispatch_dtype(out_dtype, [&](auto tag) {
        using T = decltype(tag);
        one_shot_kernel<T><<<blocks, kThreads, 0, stream>>>(ranks_, rank_, world_, gen, slot_floats_, c,
                                                             reinterpret_cast<T*>(at), control_device_);
        return launch_status("one-shot all-reduce");
      }));
    }
    return Status::Ok();
  }

  Status error() override {
    if (!broken_.ok()) return broken_;
    if (const uint32_t e = *static_cast<volatile uint32_t*>(&control_->error); e != 0)
      broken_ = Status(StatusCode::transfer_peer, "one-shot all-reduce rank " + std::to_string(rank_) + ": rank " +
                                                      std::to_string(e - 1) + " did not take part in a sum within " +
                                                      std::to_string(kPeerTimeoutNs / 1000000000ull) + " s");
    return broken_;
  }

  // The kernels waiting for a peer stop at the abort word.
  void abandon(const Status& why) override {
    *static_cast<volatile uint32_t*>(&control_->abort) = 1;
    if (broken_.ok()) broken_ = why;
  }

  std::string describe() const override {
    return "one-shot CUDA IPC (" + std::to_string(slot_floats_ * 4 >> 10) + " KiB slots)";
  }

 private:
  std::shared_ptr<Mapped> mapped_;
  int rank_, world_;
  int64_t slot_floats_;
  Ranks ranks_{};
  Control* control_ = nullptr;
  Control* control_device_ = nullptr;
  uint64_t gen_ = 0;
  Status broken_;
};

Status check_world(int rank, int world) {
  if (world < 2 || world > kMaxAllReduceRanks || rank < 0 || rank >= world)
    return Status(StatusCode::invalid_argument, "a device all-reduce takes 2.." + std::to_string(kMaxAllReduceRanks) +
                                                    " ranks (rank " + std::to_string(rank) + " of " +
                                                    std::to_string(world) + ")");
  return Status::Ok();
}

}  // namespace

Status make_ipc_all_reduce(int rank, int world, size_t max_bytes, const AllGather& exchange,
                           std::unique_ptr<DeviceAllReduce>* out) {
  LLM_RETURN_IF_ERROR(check_world(rank, world));
  const size_t slot = slot_bytes_for(max_bytes);
  auto mapped = std::make_shared<Mapped>();
  mapped->base.assign(static_cast<size_t>(world), nullptr);
  mapped->opened.assign(static_cast<size_t>(world), false);
  // The exchange happens whatever this rank's allocation gave (an empty handle when it failed),
  // so that every rank's calls of the group still pair up.
  std::string handle, uuid;
  auto checked = [](const char* what, cudaError_t err) { return err == cudaSuccess ? Status::Ok() : cuda_error(what, err); };
  Status mine = checked("cudaGetDevice", cudaGetDevice(&mapped->device));
  if (mine.ok()) mine = alloc_zeroed(kFlagsBytes + 2 * slot, "the all-reduce buffer", &mapped->base[static_cast<size_t>(rank)]);
  // Zeroed flags before any peer can signal into them.
  if (mine.ok()) mine = checked("zeroing the all-reduce buffer", cudaDeviceSynchronize());
  if (mine.ok()) mine = export_ipc_handle(mapped->base[static_cast<size_t>(rank)], &handle, &uuid);
  std::vector<std::string> handles;
  LLM_RETURN_IF_ERROR(exchange(mine.ok() ? handle : std::string(), &handles));
  LLM_RETURN_IF_ERROR(mine);
  if (handles.size() != static_cast<size_t>(world))
    return Status(StatusCode::internal, "the all-reduce exchange returned " + std::to_string(handles.size()) + " handles");
  for (int p = 0; p < world; ++p) {
    if (p == rank) continue;
    if (handles[static_cast<size_t>(p)].empty())
      return Status(StatusCode::device_unavailable, "one-shot all-reduce: rank " + std::to_string(p) + " has no buffer to share");
    LLM_RETURN_IF_ERROR(open_ipc_handle(handles[static_cast<size_t>(p)], mapped->device, &mapped->base[static_cast<size_t>(p)]));
    mapped->opened[static_cast<size_t>(p)] = true;
  }
  auto ar = std::make_unique<IpcAllReduce>(std::move(mapped), rank, world, slot);
  LLM_RETURN_IF_ERROR(ar->init());
  *out = std::move(ar);
  return Status::Ok();
}

Status make_local_ipc_all_reduce_group(int world, size_t max_bytes, std::vector<std::unique_ptr<DeviceAllReduce>>* out) {
  LLM_RETURN_IF_ERROR(check_world(0, world));
  const size_t slot = slot_bytes_for(max_bytes);
  auto mapped = std::make_shared<Mapped>();
  LLM_CUDA_RETURN_IF_ERROR("cudaGetDevice", cudaGetDevice(&mapped->device));
  mapped->base.assign(static_cast<size_t>(world), nullptr);
  mapped->opened.assign(static_cast<size_t>(world), false);
  for (int p = 0; p < world; ++p)
    LLM_RETURN_IF_ERROR(alloc_zeroed(kFlagsBytes + 2 * slot, "the all-reduce buffer", &mapped->base[static_cast<size_t>(p)]));
  LLM_CUDA_RETURN_IF_ERROR("zeroing the all-reduce buffers", cudaDeviceSynchronize());
  out->clear();
  for (int p = 0; p < world; ++p) {
    auto ar = std::make_unique<IpcAllReduce>(mapped, p, world, slot);
    LLM_RETURN_IF_ERROR(ar->init());
    out->push_back(std::move(ar));
  }
  return Status::Ok();
}

}  // namespace llm::cuda
