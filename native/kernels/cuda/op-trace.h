// op-trace.h: GPU time per op of eager steps, for benchmarks (the runner's
// cuda_op_trace_start / _stop).
//
// Owns: OpTrace. The runner records an event after each op (mark), and once the step has
// synchronised (end_step) the gap before each event is added to its op's total. Graph steps are
// not traced (an event in a capture times nothing), so a traced run is an eager one. One per
// process, used from the engine's thread.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "cuda-common.h"

struct CUevent_st;

namespace llm::cuda {

class OpTrace {
 public:
  static OpTrace& instance();
  bool on = false;
  void mark(const char* op, cudaStream_t stream);
  // After the step's stream has synchronised.
  void end_step();
  void reset();
  // A table: op, ms per step, calls per step, us per call, share of the step.
  std::string report() const;

 private:
  struct Total {
    double ms = 0;
    int64_t count = 0;
  };
  std::vector<CUevent_st*> events_;
  std::vector<const char*> names_;
  size_t used_ = 0;
  std::map<std::string, Total> totals_;
  int64_t steps_ = 0;
};

}  // namespace llm::cuda
