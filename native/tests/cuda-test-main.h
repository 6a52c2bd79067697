// cuda-test-main.h: the main of the CUDA test programs. Without a usable device (no driver, no
// GPU, no code for its architecture) it prints "SKIP: no CUDA device (reason)" and exits 77,
// which ctest reports as skipped (not passed), and records the skip for `npm test`'s last line;
// otherwise it names the device and runs every registered test.
#pragma once

#include <cstdio>
#include <string>

#include "engine/model-runner-cuda.h"
#include "test-harness.h"

namespace llm_test {

inline int run_all_on_cuda() {
  std::string device;
  const llm::Status st = llm::cuda_device_usable(&device);
  if (!st.ok()) {
    std::printf("SKIP: no CUDA device (%s)\n", st.message().c_str());
    record_coverage("device cuda", false, st.message());
    return kSkipExitCode;
  }
  std::printf("device: %s\n", device.c_str());
  record_coverage("device cuda " + device, true);
  return run_all();
}

}  // namespace llm_test
