// all-reduce.cu: what the device all-reduce methods share (all-reduce.h): peer access, the
// rounding of an fp32 sum to the model's dtype, and the wait for a stream whose sums need peers.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "all-reduce.h"
#include "cuda-common.cuh"
#include "device-memory.h"

namespace llm::cuda {

namespace {

template <typename T>
__global__ void round_kernel(const float* __restrict__ in, int64_t n, T* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = from_float<T>(in[i]);
}

}  // namespace

bool peer_access(int a, int b) {
  if (a == b) return true;
  int can = 0;
  if (cudaDeviceCanAccessPeer(&can, a, b) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return can != 0;
}

Status round_to_dtype(const float* in, int64_t n, void* out, DType dtype, cudaStream_t stream) {
  if (n <= 0) return Status::Ok();
  if (dtype == DType::f32 && static_cast<const void*>(in) == out) return Status::Ok();
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(n, 256), 65535));
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    round_kernel<T><<<blocks, 256, 0, stream>>>(in, n, static_cast<T*>(out));
    return launch_status("round_to_dtype");
  });
}

Status wait_for_stream(cudaStream_t stream, const std::vector<DeviceAllReduce*>& methods,
                       const std::function<Status()>& peers_alive) {
  using Clock = std::chrono::steady_clock;
  auto methods_error = [&] {
    for (DeviceAllReduce* m : methods)
      if (Status st = m->error(); !st.ok()) return st;
    return Status::Ok();
  };
  const Clock::time_point start = Clock::now();
  Clock::time_point checked = start;
  for (;;) {
    const cudaError_t q = cudaStreamQuery(stream);
    if (q == cudaSuccess) return methods_error();
    if (q != cudaErrorNotReady) return cuda_error("the forward pass", q);
    const Clock::time_point now = Clock::now();
    if (now - checked > std::chrono::milliseconds(5)) {
      checked = now;
      Status st = peers_alive ? peers_alive() : Status::Ok();
      if (st.ok()) st = methods_error();
      if (!st.ok()) {
        for (DeviceAllReduce* m : methods) m->abandon(st);
        cudaStreamSynchronize(stream);
        cudaGetLastError();
        return st;
      }
    }
    // A decode step's sums take tens of microseconds: spin that long, then nap.
    if (now - start > std::chrono::microseconds(200)) std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

}  // namespace llm::cuda
