// gemm.h: the matmul of the forward pass on the GPU, through cuBLAS (cublasGemmEx).
// Same meaning as CpuKernels::matmul: y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]), row-major,
// fp32 accumulation (CUBLAS_COMPUTE_32F: tensor cores for bf16/f16, no TF32 for f32).
//
// cuBLAS is loaded at run time (dlopen), not linked: see gemm.cu for why and where it looks.
#pragma once

#include <memory>
#include <string>

#include "cuda-common.h"

namespace llm::cuda {

struct GemmArgs {
  const void* x = nullptr;     // [M, K] of in_dtype
  const void* w = nullptr;     // [N, K] of in_dtype (a weight matrix as Hugging Face stores it)
  const void* bias = nullptr;  // [N] of in_dtype, or null
  void* y = nullptr;           // [M, N] of out_dtype
  int64_t M = 0, N = 0, K = 0;
  DType in_dtype = DType::bf16;
  DType out_dtype = DType::bf16;  // in_dtype, or f32 (e.g. logits)
};

// One cuBLAS handle on the current device. Not thread-safe: one per engine thread.
class CublasGemm {
 public:
  // Loads cuBLAS (once per process) and creates a handle. ERR_DEVICE_UNAVAILABLE when no
  // cuBLAS library can be loaded (the message lists what was tried) or the handle fails.
  static Status create(std::unique_ptr<CublasGemm>* out);
  ~CublasGemm();
  CublasGemm(const CublasGemm&) = delete;
  CublasGemm& operator=(const CublasGemm&) = delete;

  Status run(const GemmArgs& args, cudaStream_t stream);
  // Gives cuBLAS a workspace of the caller's (device memory, kept alive by the caller), so it
  // allocates nothing of its own inside a captured CUDA graph.
  Status set_workspace(void* workspace, size_t bytes);
  const std::string& library() const;  // the file cuBLAS was loaded from

 private:
  explicit CublasGemm(void* handle) : handle_(handle) {}
  void* handle_;  // cublasHandle_t
};

}  // namespace llm::cuda
