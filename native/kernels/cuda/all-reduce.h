// all-reduce.h: the sums of tensor-parallel ranks that each hold their own GPU, on the devices,
// as plain C++. Two methods:
//   - one-shot over CUDA IPC (all-reduce-ipc.cu), for the small sums of decode steps where every
//     pair of the ranks' GPUs has peer access: each rank copies its part into a buffer of its
//     own that every peer has mapped, the ranks signal each other per thread block, and every
//     rank adds all the parts itself, in rank order, and rounds once. One kernel, no host sync.
//   - NCCL (all-reduce-nccl.cu), loaded at run time from libnccl.so.2 (the build needs no NCCL
//     header), for large sums or GPUs without peer access.
// Ranks that share a GPU use neither (NCCL refuses two ranks on one GPU, and a spin wait between
// time-sliced processes can stall): the runner stages their sums through host memory
// (model-runner-cuda.h).
//
// Owns: a rank's side of one method (its buffers, the peers' mappings or the NCCL communicator).
// Stays true: every rank calls run() with the same n in the same order (the runner's forward
// passes pair up, as the host all-reduce's do); every rank gets the same bits; one-shot adds in
// rank order, NCCL in its own order (the same on every rank).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cuda-common.h"

namespace llm::cuda {

// Every rank passes `mine`; every rank gets all of them in rank order (the tensor-parallel
// group's exchange: TpCollectives::all_gather).
using AllGather = std::function<Status(const std::string& mine, std::vector<std::string>* all)>;

class DeviceAllReduce {
 public:
  virtual ~DeviceAllReduce() = default;
  // out[n] (out_dtype) = the sum over the ranks of their in[n] (fp32, device), rounded once.
  // in is the caller's scratch (a method may sum into it); out may be in when out_dtype is f32.
  // Enqueued on `stream`.
  virtual Status run(const float* in, int64_t n, void* out, DType out_dtype, cudaStream_t stream) = 0;
  // An error of the method's own so far (a peer that never joined a sum, NCCL's asynchronous
  // error), else OK. After any error the method is broken: every later call returns it.
  virtual Status error() = 0;
  // Ends the sums in flight that wait for a peer, so that the stream can finish; broken from here.
  virtual void abandon(const Status& why) = 0;
  virtual std::string describe() const = 0;  // "one-shot CUDA IPC (2 MiB buffers)", "NCCL 2.21.5 (libnccl.so.2)"
};

// Most ranks either method takes.
constexpr int kMaxAllReduceRanks = 8;

// Whether device a can map device b's memory (cudaDeviceCanAccessPeer; true when a == b).
bool peer_access(int a, int b);

// One-shot over CUDA IPC, rank `rank` of `world` on the calling thread's current device.
// Allocates two buffers of max_bytes (calls alternate between them) and the flags, exports them
// and opens every peer's (exchange). Sums over max_bytes go through in pieces.
Status make_ipc_all_reduce(int rank, int world, size_t max_bytes, const AllGather& exchange,
                           std::unique_ptr<DeviceAllReduce>* out);

// The same kernel with `world` ranks in this process on the current device, their buffers
// mapped directly: for testing the kernel on one GPU. The ranks' run() calls must be on
// different streams and be in flight together (a rank's kernel waits for the others').
Status make_local_ipc_all_reduce_group(int world, size_t max_bytes, std::vector<std::unique_ptr<DeviceAllReduce>>* out);

// NCCL: loads libnccl.so.2 ($KVSERVE_NCCL first), rank 0 makes the communicator's id and the
// exchange gives it to every rank, then every rank joins (ncclCommInitRank) on the current
// device. ERR_DEVICE_UNAVAILABLE naming every path tried when the library is not found.
Status make_nccl_all_reduce(int rank, int world, const AllGather& exchange, std::unique_ptr<DeviceAllReduce>* out);

// Whether libnccl.so.2 loads here (*why says why not).
bool nccl_available(std::string* why);

// out[n] (dtype) = in[n] (fp32, device) rounded; nothing to do when out is in and dtype is f32.
Status round_to_dtype(const float* in, int64_t n, void* out, DType dtype, cudaStream_t stream);

// Waits for `stream`, where sums of `methods` were enqueued, in place of cudaStreamSynchronize:
// a sum that a peer never joins would wait for ever. Every few milliseconds while it waits it
// asks peers_alive (when set) and each method's error(); on an error every method abandons its
// sums, the stream drains, and that error is returned. Then each method's error().
Status wait_for_stream(cudaStream_t stream, const std::vector<DeviceAllReduce*>& methods,
                       const std::function<Status()>& peers_alive);

}  // namespace llm::cuda
