// cpu-paths.h: the kernel tables of each ISA path, for cpu-dispatch.cc and the tests (through
// cpu_kernels_for in cpu-kernels.h). Each lives in a file compiled with that ISA's flags; call
// one only when cpu_isa() says the CPU has it.
#pragma once

#include "cpu-kernels.h"

namespace llm::cpu {

const CpuKernels& cpu_avx2_kernels();    // cpu-avx2.cc
const CpuKernels& cpu_avx512_kernels();  // cpu-avx512.cc
const CpuKernels& cpu_avx512_bf16_kernels();  // cpu-avx512-bf16.cc: the AVX-512 table, matmul on vdpbf16ps, x as bf16
const CpuKernels& cpu_amx_kernels();     // cpu-amx.cc: the AVX-512 table, matmul on AMX tiles, x as bf16
const CpuKernels& cpu_amx_exact_kernels();  // cpu-amx.cc: the same with x as two bf16 terms
const CpuKernels& cpu_amx_bf16_kernels();  // cpu-amx.cc: cpu_amx_kernels() named "amx-bf16"

// The AVX-512 matmul, for the shapes the AMX matmul hands back (cpu-avx512.cc).
void matmul_avx512(ThreadPool& pool, const float* x, int64_t M, const TensorView& w, const TensorView* bias,
                   float* y);

// The amx tables' paged attention: prefills on AMX tiles, the rest by the AVX-512 attention
// (cpu-amx-attention.cc).
void paged_attention_amx(ThreadPool& pool, const float* q, KVCacheView cache, int64_t layer,
                         const AttentionBatch& batch, float* out);

}  // namespace llm::cpu
