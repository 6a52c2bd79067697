// op-trace.cu: OpTrace (see op-trace.h).
#include "op-trace.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>

namespace llm::cuda {

OpTrace& OpTrace::instance() {
  static OpTrace* trace = new OpTrace();
  return *trace;
}

void OpTrace::mark(const char* op, cudaStream_t stream) {
  if (used_ == events_.size()) {
    cudaEvent_t e = nullptr;
    if (cudaEventCreate(&e) != cudaSuccess) return;
    events_.push_back(e);
  }
  cudaEventRecord(events_[used_], stream);
  names_.resize(used_ + 1);
  names_[used_++] = op;
}

void OpTrace::end_step() {
  for (size_t i = 1; i < used_; ++i) {
    float ms = 0;
    if (cudaEventElapsedTime(&ms, events_[i - 1], events_[i]) != cudaSuccess) continue;
    Total& t = totals_[names_[i]];
    t.ms += ms;
    t.count += 1;
  }
  if (used_ > 1) steps_ += 1;
  used_ = 0;
}

void OpTrace::reset() {
  totals_.clear();
  steps_ = 0;
}

std::string OpTrace::report() const {
  double all = 0;
  for (const auto& [op, t] : totals_) all += t.ms;
  std::string out;
  char line[160];
  std::snprintf(line, sizeof(line), "%-18s %10s %8s %10s %6s\n", "op", "ms/step", "calls", "us/call", "share");
  out += line;
  for (const auto& [op, t] : totals_) {
    std::snprintf(line, sizeof(line), "%-18s %10.3f %8.1f %10.2f %5.1f%%\n", op.c_str(), t.ms / std::max<int64_t>(steps_, 1),
                  static_cast<double>(t.count) / std::max<int64_t>(steps_, 1), 1000.0 * t.ms / std::max<int64_t>(t.count, 1),
                  all > 0 ? 100.0 * t.ms / all : 0.0);
    out += line;
  }
  std::snprintf(line, sizeof(line), "%-18s %10.3f   (%lld traced steps)\n", "total", all / std::max<int64_t>(steps_, 1),
                static_cast<long long>(steps_));
  return out + line;
}

}  // namespace llm::cuda
