// compute-peak.h: this machine's arithmetic peak for a kernel path's main instruction, with the
// data in registers (the bench's compute roofline, next to bandwidth-probe.h's memory one).
//
// Owns: one measurement: `threads` workers (pinned as ThreadPool pins them) each run a loop of
// independent instructions on registers only, best of a few passes, counted as GFLOP/s (a
// multiply-add is 2 flops). The instruction per path:
//   avx2                     vfmadd231ps ymm  (fp32, 8 lanes)       16 flops
//   avx512                   vfmadd231ps zmm  (fp32, 16 lanes)      32 flops
//   avx512-bf16              vdpbf16ps zmm    (bf16 pairs -> fp32)  64 flops
//   amx, amx-exact, amx-bf16 tdpbf16ps        (16 x 16 x 32 bf16)   16384 flops
// Settings: threads as in ThreadPool (0 = every CPU this process may run on).
#pragma once

#include "../../common/status.h"
#include "cpu-kernels.h"

namespace llm::cpu {

// GFLOP/s of `path`'s instruction on `threads` threads; an error for the reference path and for
// a path this CPU cannot run (cpu_kernels_for).
Status compute_peak_gflops(CpuPath path, int threads, double* gflops);

}  // namespace llm::cpu
