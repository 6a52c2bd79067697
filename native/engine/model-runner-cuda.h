// model-runner-cuda.h: the forward pass on an NVIDIA GPU (model-runner.h's contract, CUDA kernels
// of native/kernels/cuda). Plain C++: callers need no CUDA header.
//
// Owns: CudaModelRunner = the weights copied to the device, the activations (in the model's dtype, as Hugging Face computes in bf16), a cuBLAS handle, one
// stream, and the CUDA graphs of decode steps.
// Stays true: the pool on the device has the CPU pool's layout (tensor-view.h), so block ids,
// slots and tables mean the same on both; a batch is validated on the host (the CPU runner's
// checks) before anything is copied, so no kernel reads or writes outside the pool.
// Decode steps (every sequence one new token, every one sampled, batch <= the largest graph
// size) replay a CUDA graph captured once per padded batch size; everything else runs eagerly.
// Tensor parallelism (a model loaded at tp_size > 1, model-weights.h): the runner holds its
// rank's slices; o_proj and down_proj write fp32 partial sums that are added over the ranks and
// rounded once to the model's dtype. Ranks on GPUs of their own add on the devices
// (kernels/cuda/all-reduce.h: one-shot over CUDA IPC for small sums, NCCL for large); ranks
// that share a GPU add through host memory (CudaRunnerOptions::tp: the group's shared-memory
// all-reduce, in a fixed order). KVSERVE_TP_ALL_REDUCE (auto, host, ipc, nccl) forces a method.
// The logits of each rank's vocabulary rows are gathered on rank 0; such steps run eagerly.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "model-runner.h"

namespace llm {

struct CudaRunnerOptions {
  bool cuda_graphs = true;        // decode steps replay captured graphs (KVSERVE_CUDA_GRAPHS=0 turns them off)
  int64_t max_graph_batch = 64;   // graphs for padded batch sizes 1, 2, 4, 8, 16, 24, 32, 48, 64, ... up to this
  int64_t max_num_tokens = 2048;  // activations are sized for this many tokens up front (they grow if needed)
  int device = 0;                 // the CUDA device (a tensor-parallel rank's: cuda_rank_device)
  TpCollectives tp;               // tensor parallelism: the group's sums and gather; empty at tp_size 1
};

class CudaModelRunner : public ModelRunner {
 public:
  // Copies the weights to opts.device and makes it current on the calling thread
  // (ERR_DEVICE_UNAVAILABLE without a usable device or cuBLAS, ERR_OUT_OF_MEMORY when they do
  // not fit). The KV pool comes next, with set_kv_cache.
  static Status create(const Model& model, const CudaRunnerOptions& opts, std::unique_ptr<CudaModelRunner>* out);

  // Free device memory now, in bytes (what a KV pool may take, less a margin for activations).
  virtual size_t free_device_bytes() const = 0;
  // The pool the runner reads and writes: device memory the engine owns (KvPoolMemory), which
  // outlives the runner.
  virtual Status set_kv_cache(const KVCacheView& pool) = 0;
  // The pool's view; data is a device pointer.
  virtual KVCacheView kv_cache() const = 0;
  // "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB), cuBLAS libcublas.so.13, graphs on"
  virtual std::string describe() const = 0;
};

// OK when a CUDA device is usable by this build (driver, device, code for its architecture);
// otherwise ERR_DEVICE_UNAVAILABLE saying why. *description names the device on OK.
Status cuda_device_usable(std::string* description);

// Whether this build has the CUDA backend at all (compiled with nvcc).
bool cuda_backend_built();

// The device of tensor-parallel rank `rank`: rank % the devices this process sees, so ranks
// share GPUs round-robin when they outnumber them (0 without a device).
int cuda_rank_device(int rank);
// How many tensor-parallel ranks of `tp_size` share rank 0's device (the most on any device).
int cuda_ranks_per_device(int tp_size);

// Device memory for a KV pool (kv-pool-memory.h) on the calling thread's current device (the
// one CudaModelRunner::create made current): `bytes`, zeroed; cuda_free frees it.
Status cuda_alloc_zeroed(size_t bytes, void** out);
void cuda_free(void* p);
// The CUDA IPC handle of the allocation starting at `base` (a KV pool cuda_alloc_zeroed made) and
// its GPU's UUID, so that another process (the transfer agent of a tensor-parallel worker's rank
// 0) can open it.
Status cuda_export_ipc(const void* base, std::string* handle_hex, std::string* device_uuid);

// For benchmarks: from cuda_op_trace_start, eager steps record the GPU time of each op (an
// event after each); cuda_op_trace_stop ends it and returns the table of ms per step and us per
// call, by op. Graph steps are not traced. Only from the thread that steps the engine.
void cuda_op_trace_start();
std::string cuda_op_trace_stop();
}  // namespace llm
