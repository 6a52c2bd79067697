// model-runner-cuda-none.cc: the CUDA backend's entry points in a build without nvcc
// (model-runner-cuda.h): nothing is usable, and every call says why.
#include "model-runner-cuda.h"

namespace llm {

namespace {
Status not_built() {
  return Status(StatusCode::device_unavailable,
                "this build has no CUDA backend (nvcc was not found when it was compiled)");
}
}  // namespace

Status CudaModelRunner::create(const Model&, const CudaRunnerOptions&, std::unique_ptr<CudaModelRunner>*) {
  return not_built();
}

Status cuda_device_usable(std::string*) { return not_built(); }

bool cuda_backend_built() { return false; }

int cuda_rank_device(int) { return 0; }
int cuda_ranks_per_device(int tp_size) { return tp_size; }

Status cuda_alloc_zeroed(size_t, void**) { return not_built(); }
void cuda_free(void*) {}

Status cuda_export_ipc(const void*, std::string*, std::string*) { return not_built(); }

void cuda_op_trace_start() {}
std::string cuda_op_trace_stop() { return std::string(); }

}  // namespace llm
