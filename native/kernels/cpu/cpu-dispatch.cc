// cpu-dispatch.cc: picks the kernel table the engine runs (see cpu-kernels.h).
//
// Once per process: cpu_isa() says what the CPU runs; KVSERVE_CPU_KERNELS (reference, avx2,
// avx512, avx512-bf16, amx, amx-exact, amx-bf16) may name a path, else the best one is taken
// (amx, then avx512-bf16, avx512, avx2; never amx-exact, which differs from amx only in the
// matmul's rounding of x; amx-bf16 is amx under its old name; see cpu-kernels.h). A named path
// the CPU cannot run, or an unknown name, falls back to the best path and says so on stderr
// once. The ISA paths exist only in builds that compiled their files (LLM_CPU_X86_PATHS, set by
// CMakeLists.txt).
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cpu-isa.h"
#include "cpu-kernels.h"
#include "cpu-paths.h"

namespace llm::cpu {

namespace {

const CpuKernels& best_kernels() {
  for (CpuPath p : {CpuPath::amx, CpuPath::avx512_bf16, CpuPath::avx512, CpuPath::avx2})
    if (const CpuKernels* k = cpu_kernels_for(p)) return *k;
  return cpu_reference_kernels();
}

const CpuKernels& choose_kernels() {
  const char* forced = std::getenv("KVSERVE_CPU_KERNELS");
  if (!forced || !*forced) return best_kernels();
  CpuPath path;
  if (cpu_path_from_name(forced, &path)) {
    if (const CpuKernels* k = cpu_kernels_for(path)) return *k;
    std::fprintf(stderr, "kvserve: KVSERVE_CPU_KERNELS=%s: this CPU cannot run it; using %s\n", forced,
                 best_kernels().name);
    return best_kernels();
  }
  std::fprintf(stderr, "kvserve: KVSERVE_CPU_KERNELS=%s is not one of reference, avx2, avx512, avx512-bf16, amx, amx-exact, amx-bf16; using %s\n",
               forced, best_kernels().name);
  return best_kernels();
}

}  // namespace

bool cpu_path_from_name(const char* name, CpuPath* path) {
  for (auto [n, p] : {std::pair<const char*, CpuPath>{"reference", CpuPath::reference},
                      {"avx2", CpuPath::avx2}, {"avx512", CpuPath::avx512},
                      {"avx512-bf16", CpuPath::avx512_bf16}, {"amx", CpuPath::amx},
                      {"amx-exact", CpuPath::amx_exact}, {"amx-bf16", CpuPath::amx_bf16}}) {
    if (std::strcmp(name, n) != 0) continue;
    *path = p;
    return true;
  }
  return false;
}

const CpuKernels* cpu_kernels_for(CpuPath path) {
#if defined(LLM_CPU_X86_PATHS)
  const CpuIsa& isa = cpu_isa();
  switch (path) {
    case CpuPath::reference: return &cpu_reference_kernels();
    case CpuPath::avx2: return isa.avx2 ? &cpu_avx2_kernels() : nullptr;
    case CpuPath::avx512: return isa.avx512 ? &cpu_avx512_kernels() : nullptr;
    case CpuPath::avx512_bf16: return isa.avx512_bf16 ? &cpu_avx512_bf16_kernels() : nullptr;
    case CpuPath::amx: return isa.amx_bf16 ? &cpu_amx_kernels() : nullptr;
    case CpuPath::amx_bf16: return isa.amx_bf16 ? &cpu_amx_bf16_kernels() : nullptr;
    case CpuPath::amx_exact: return isa.amx_bf16 ? &cpu_amx_exact_kernels() : nullptr;
  }
  return nullptr;
#else  // built without the ISA files (binding.gyp, or not x86-64)
  return path == CpuPath::reference ? &cpu_reference_kernels() : nullptr;
#endif
}

const CpuKernels& cpu_kernels() {
  static const CpuKernels& chosen = choose_kernels();
  return chosen;
}

CpuKernelInfo cpu_kernel_info() {
  CpuKernelInfo info;
  info.isa = cpu_isa().names();
  info.path = cpu_kernels().name;
  return info;
}

}  // namespace llm::cpu
