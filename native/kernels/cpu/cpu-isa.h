// cpu-isa.h: what this CPU (and the OS) can run, detected once with CPUID and XGETBV.
//
// Owns: the feature flags the dispatch (cpu-dispatch.cc) picks a kernel path from, and the
// Linux permission request AMX needs before its first tile instruction.
// Stays true: a flag is set only when the CPU reports the instructions AND the OS saves the
// register state they use (YMM for AVX2, ZMM + opmask for AVX-512, XTILEDATA for AMX), so a
// kernel path picked from these flags never faults. Off x86-64 every flag is false.
#pragma once

#include <string>
#include <vector>

namespace llm::cpu {

struct CpuIsa {
  bool avx2 = false;        // AVX2 + FMA + F16C
  bool avx512 = false;      // AVX-512 F, BW, VL, DQ
  bool avx512_bf16 = false; // AVX512_BF16 (vcvtne2ps2bf16, vdpbf16ps)
  bool amx_bf16 = false;    // AMX-TILE + AMX-BF16, and the OS granted XTILEDATA to this process

  std::vector<std::string> names() const;  // e.g. {"avx2", "avx512", "avx512_bf16", "amx_bf16"}
};

// Detected on first use (thread-safe); AMX permission is requested then, once per process.
const CpuIsa& cpu_isa();

}  // namespace llm::cpu
