// cpu-dispatch.cc: picks the kernel table the engine runs (see cpu-kernels.h).
//
// Today every op runs the reference. This is the seam for faster kernels: a later issue
// checks the CPU once here (AVX2, AVX-512, AVX-512 BF16, AMX) and returns a copy of the
// reference table with the ops it speeds up replaced entry by entry, so an op without a fast
// version keeps its reference entry and every fast entry is tested against the reference.
#include "cpu-kernels.h"

namespace llm::cpu {

const CpuKernels& cpu_kernels() { return cpu_reference_kernels(); }

}  // namespace llm::cpu
