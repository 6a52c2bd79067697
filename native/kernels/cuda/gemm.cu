// gemm.cu: CublasGemm (see gemm.h) and the bias add it needs.
//
// Why dlopen: the development machine has nvcc and the CUDA runtime but no cuBLAS headers or
// libraries, and the build must compile there (CI checks every .cu). The GPU machines have
// cuBLAS at run time (the CUDA toolkit's lib64, or PyTorch's nvidia-cublas wheel). So the few
// types, enum values and entry points used are declared below, copied from cublas_api.h (their
// values are ABI, stable across cuBLAS 11-13), and resolved with dlsym when the first
// CublasGemm is created. Where it looks, in order: $KVSERVE_CUBLAS (a file path), then
// libcublas.so.13, libcublas.so.12, libcublas.so through the dynamic loader's search
// (LD_LIBRARY_PATH, ld.so.cache), then /usr/local/cuda/lib64.
//
// Row-major y[M, N] = x[M, K] w[N, K]^T is the column-major product y^T[N, M] = w^T x^T:
// cublasGemmEx(op_A = T, op_B = N, m = N, n = M, k = K, A = w (lda K), B = x (ldb K), C = y (ldc N)).
#include <library_types.h>

#include <algorithm>
#include <climits>
#include <mutex>
#include <vector>

#include "cuda-common.cuh"
#include "gemm.h"
#include "shared-library.h"

namespace llm::cuda {

namespace {

// ---- the slice of cublas_api.h we use ----
using cublasStatus_t = int;     // CUBLAS_STATUS_SUCCESS = 0
using cublasHandle_t = void*;
using cublasOperation_t = int;  // CUBLAS_OP_N = 0, CUBLAS_OP_T = 1
using cublasComputeType_t = int;
using cublasGemmAlgo_t = int;
constexpr cublasOperation_t kOpN = 0, kOpT = 1;
constexpr cublasComputeType_t kCompute32F = 68;  // CUBLAS_COMPUTE_32F
constexpr cublasGemmAlgo_t kGemmDefault = -1;    // CUBLAS_GEMM_DEFAULT

struct Cublas {
  std::string path;
  cublasStatus_t (*create)(cublasHandle_t*);
  cublasStatus_t (*destroy)(cublasHandle_t);
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t);
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                            const void*, cudaDataType_t, int, const void*, cudaDataType_t, int, const void*, void*,
                            cudaDataType_t, int, cublasComputeType_t, cublasGemmAlgo_t);
  const char* (*status_string)(cublasStatus_t);
  cublasStatus_t (*set_workspace)(cublasHandle_t, void*, size_t);
};

// Loads cuBLAS once; *error says why not (every path tried) when it returns null.
const Cublas* load_cublas(std::string* error) {
  static std::once_flag once;
  static Cublas lib;
  static const Cublas* loaded = nullptr;
  static std::string why;
  std::call_once(once, [] {
    SharedLibrary so;
    if (!so.open("cuBLAS", "KVSERVE_CUBLAS",
                 {"libcublas.so.13", "libcublas.so.12", "libcublas.so", "/usr/local/cuda/lib64/libcublas.so.13",
                  "/usr/local/cuda/lib64/libcublas.so.12"},
                 &why))
      return;
    lib.path = so.path();
    so.resolve("cublasCreate_v2", &lib.create);
    so.resolve("cublasDestroy_v2", &lib.destroy);
    so.resolve("cublasSetStream_v2", &lib.set_stream);
    so.resolve("cublasGemmEx", &lib.gemm_ex);
    so.resolve("cublasGetStatusString", &lib.status_string);
    so.resolve("cublasSetWorkspace_v2", &lib.set_workspace);
    if (so.complete(&why)) loaded = &lib;
  });
  if (!loaded) *error = why;
  return loaded;
}

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::f32: return CUDA_R_32F;
    case DType::f16: return CUDA_R_16F;
    case DType::bf16: return CUDA_R_16BF;
  }
  return CUDA_R_32F;
}

// y[m, n] += bias[n] (y was rounded to out_dtype by cuBLAS, and is rounded again). Grid: enough 256-thread blocks for M * N (at most 65535), striding.
template <typename Y, typename B>
__global__ void add_bias_kernel(Y* y, const B* __restrict__ bias, int64_t M, int64_t N) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < M * N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = from_float<Y>(to_float(y[i]) + to_float(bias[i % N]));
}

Status add_bias(const GemmArgs& a, cudaStream_t stream) {
  const int64_t blocks = std::min<int64_t>(ceil_div(a.M * a.N, 256), 65535);
  return dispatch_dtype(a.out_dtype, [&](auto y_tag) {
    return dispatch_dtype(a.in_dtype, [&](auto b_tag) {
      using Y = decltype(y_tag);
      using B = decltype(b_tag);
      add_bias_kernel<Y, B><<<blocks, 256, 0, stream>>>(static_cast<Y*>(a.y), static_cast<const B*>(a.bias), a.M, a.N);
      return launch_status("gemm bias");
    });
  });
}

}  // namespace

Status CublasGemm::create(std::unique_ptr<CublasGemm>* out) {
  std::string error;
  const Cublas* lib = load_cublas(&error);
  if (!lib) return Status(StatusCode::device_unavailable, error);
  cublasHandle_t handle = nullptr;
  const cublasStatus_t st = lib->create(&handle);
  if (st != 0) return Status(StatusCode::device_unavailable, std::string("cublasCreate: ") + lib->status_string(st));
  out->reset(new CublasGemm(handle));
  return Status::Ok();
}

CublasGemm::~CublasGemm() {
  std::string unused;
  load_cublas(&unused)->destroy(handle_);
}

const std::string& CublasGemm::library() const {
  std::string unused;
  return load_cublas(&unused)->path;
}

Status CublasGemm::set_workspace(void* workspace, size_t bytes) {
  std::string unused;
  const Cublas* lib = load_cublas(&unused);
  const cublasStatus_t st = lib->set_workspace(handle_, workspace, bytes);
  if (st != 0) return Status(StatusCode::internal, std::string("cublasSetWorkspace: ") + lib->status_string(st));
  return Status::Ok();
}

Status CublasGemm::run(const GemmArgs& a, cudaStream_t stream) {
  auto invalid = [](const char* m) { return Status(StatusCode::invalid_argument, std::string("gemm: ") + m); };
  if (a.out_dtype != a.in_dtype && a.out_dtype != DType::f32) return invalid("out_dtype must be in_dtype or f32");
  if (a.M < 0 || a.N <= 0 || a.K <= 0 || a.M > INT_MAX || a.N > INT_MAX || a.K > INT_MAX)
    return invalid("M, N, K out of range");
  if (a.M == 0) return Status::Ok();
  std::string unused;
  const Cublas* lib = load_cublas(&unused);
  cublasStatus_t st = lib->set_stream(handle_, stream);
  const float alpha = 1.0f, beta = 0.0f;
  if (st == 0)
    st = lib->gemm_ex(handle_, kOpT, kOpN, static_cast<int>(a.N), static_cast<int>(a.M), static_cast<int>(a.K), &alpha,
                      a.w, cuda_type(a.in_dtype), static_cast<int>(a.K), a.x, cuda_type(a.in_dtype),
                      static_cast<int>(a.K), &beta, a.y, cuda_type(a.out_dtype), static_cast<int>(a.N), kCompute32F,
                      kGemmDefault);
  if (st != 0) return Status(StatusCode::internal, std::string("cublasGemmEx: ") + lib->status_string(st));
  return a.bias ? add_bias(a, stream) : Status::Ok();
}

}  // namespace llm::cuda
