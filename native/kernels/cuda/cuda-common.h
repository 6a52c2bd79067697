// cuda-common.h: what every CUDA launcher header shares, as plain C++ (no CUDA header needed).
//
// Owns: the cudaStream_t declaration callers see, the device probe, and the conventions below.
// Stays true for every launcher in native/kernels/cuda/:
//   - pointers are device pointers unless a comment says "host"; each carries its shape;
//   - one DType per call for activations, weights and the KV pool (the engine's model dtype);
//     arithmetic and accumulation are fp32, results are rounded once when stored;
//   - argument meaning is that of the CPU kernel of the same name (cpu-kernels.h), which is
//     the reference the tests compare against;
//   - a launcher checks what it can on the host (dtype, shapes it has code for) and the launch
//     itself, and returns a Status; it never synchronises the stream. Device data (token ids,
//     slots, block tables) is trusted: the engine validates batches before any kernel runs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/status.h"
#include "kernels/tensor-view.h"

// Same declaration as the CUDA runtime's driver_types.h, so callers need no CUDA include path.
struct CUstream_st;
typedef struct CUstream_st* cudaStream_t;

namespace llm::cuda {

struct DeviceInfo {
  int device = 0;
  std::string name;
  int sm_major = 0;
  int sm_minor = 0;
  int num_sms = 0;
  size_t total_memory = 0;  // bytes
  std::string describe() const;  // "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)"
};

// OK when device `device` can run this build's kernels (a driver, the device, and code for its
// architecture); otherwise ERR_DEVICE_UNAVAILABLE with the runtime's reason. Fills *info on OK
// and leaves `device` current on the calling thread.
Status probe_device(DeviceInfo* info, int device = 0);

// How many CUDA devices this process sees (0 without a driver or a device).
int device_count();

}  // namespace llm::cuda
