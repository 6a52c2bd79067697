// cpu-isa.cc: see cpu-isa.h. CPUID leaf 7 names the instructions; XGETBV(0) says which
// register states the OS saves (XCR0 bits 1-2: SSE/AVX, 5-7: opmask/ZMM, 17-18: AMX tiles);
// AMX also needs arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) on Linux >= 5.16.
#include "cpu-isa.h"

#include <cstdint>

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace llm::cpu {

namespace {

#if defined(__x86_64__) && defined(__linux__)
constexpr int kArchReqXcompPerm = 0x1023;
constexpr int kXfeatureXtiledata = 18;

uint64_t xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

CpuIsa detect() {
  CpuIsa isa;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return isa;
  const bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!osxsave) return isa;
  const uint64_t xcr0 = xgetbv0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6, os_zmm = (xcr0 & 0xe6) == 0xe6;
  const bool os_tiles = (xcr0 & 0x60000) == 0x60000;
  unsigned b7 = 0, c7 = 0, d7 = 0, a71 = 0;
  if (!__get_cpuid_count(7, 0, &a, &b7, &c7, &d7)) return isa;
  __get_cpuid_count(7, 1, &a71, &b, &c, &d);  // leaf 7 exists, so sub-leaf 1 reads (zeros if absent)
  isa.avx2 = os_ymm && fma && f16c && (b7 & (1u << 5));
  const bool f = b7 & (1u << 16), dq = b7 & (1u << 17), bw = b7 & (1u << 30), vl = b7 & (1u << 31);
  isa.avx512 = isa.avx2 && os_zmm && f && dq && bw && vl;
  isa.avx512_bf16 = isa.avx512 && (a71 & (1u << 5));
  const bool amx_bf16 = d7 & (1u << 22), amx_tile = d7 & (1u << 24);
  if (isa.avx512_bf16 && os_tiles && amx_bf16 && amx_tile)
    isa.amx_bf16 = syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  return isa;
}
#else
CpuIsa detect() { return CpuIsa{}; }
#endif

}  // namespace

std::vector<std::string> CpuIsa::names() const {
  std::vector<std::string> out;
  if (avx2) out.push_back("avx2");
  if (avx512) out.push_back("avx512");
  if (avx512_bf16) out.push_back("avx512_bf16");
  if (amx_bf16) out.push_back("amx_bf16");
  return out;
}

const CpuIsa& cpu_isa() {
  static const CpuIsa isa = detect();
  return isa;
}

}  // namespace llm::cpu
