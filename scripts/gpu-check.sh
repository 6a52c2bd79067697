#!/usr/bin/env bash
# gpu-check.sh: the GPU check for a machine with CMake, nvcc and Python (PyTorch, transformers)
# but no Node and no network. Builds the engine core, its CUDA tests and benchmarks as plain CMake
# targets, runs them, and prints one summary. Meant to finish in under 8 minutes on a fresh
# machine (the 8B benchmark takes most of it; KVSERVE_GPU_SKIP_8B=1 leaves it out).
#
#   bash scripts/gpu-check.sh
#
# Steps (each timed; a failed step is recorded and the rest still run where they can):
#   1. GPU: nvidia-smi; without a GPU it says so, still builds (a compile check) and exits 2.
#   2. cuBLAS: the kernels dlopen libcublas.so.13/.12 (gemm.cu); when the loader cannot find
#      it, the copy inside PyTorch's nvidia-cublas wheel is added to LD_LIBRARY_PATH.
#   3. configure build-gpu/ (Release, LLM_BUILD_TESTS=ON, LLM_CUDA=ON, the GPU's own
#      architecture only, to build fast: CMake's default is sm_80 + sm_90).
#   4. build test-cuda-kernels, test-cuda-forward, test-cuda-ipc, test-cuda-tensor-parallel,
#      test-cuda-all-reduce, bench-cuda-kernels, bench-cuda-engine.
#   5. test-cuda-kernels: every CUDA kernel against the CPU reference (per-op error bounds);
#      test-cuda-ipc: prefill in a second process, KV blocks moved by CUDA IPC, the decode
#      output against local serving, then between TP 2 and TP 1 workers both ways;
#      test-cuda-tensor-parallel: engines of TP 2 and 4 (ranks as
#      processes sharing the GPUs, all-reduce through host memory) against TP 1 on the GPU, and
#      with a GPU per rank (2+ GPUs) the one-shot CUDA IPC and NCCL sums;
#      test-cuda-all-reduce: the one-shot kernel with 2..8 ranks in one process, bit for bit.
#   6. test-cuda-forward on generated models (gpu-reference.py make-models): the CUDA runner and
#      the engine on CUDA against the CPU runner, greedy tokens and logits.
#   7. gpu-reference.py compare-hf: the same models' logits against HF transformers on the GPU.
#   8. bench-cuda-kernels: bandwidth, decode/prefill attention, cuBLAS GEMM figures.
#   9. the 8B benchmark: gpu-reference.py make-8b (random weights, Llama-3.1-8B's shape, bf16),
#      bench-cuda-engine on it (then TP 2, two ranks on the GPU, against TP 1 without graphs), and
#      gpu-reference.py torch-bench (HF generate, SDPA) on it.
# Settings: KVSERVE_GPU_BUILD (build dir, default build-gpu), KVSERVE_GPU_MODELS (where models
# are generated, default /tmp/kvserve-gpu-models), KVSERVE_GPU_SKIP_8B=1, KVSERVE_GPU_SKIP_TORCH=1
# (leaves out the PyTorch comparison), KVSERVE_GPU_SKIP_HF=1 (leaves out compare-hf),
# KVSERVE_GPU_SKIP_KERNEL_BENCH=1 (leaves out step 8).
# Exit: 0 all passed; 1 a step failed; 2 no GPU (build checked only).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KVSERVE_GPU_BUILD:-$root/build-gpu}"
logs="$build/gpu-check-logs"
jobs="$(nproc 2>/dev/null || echo 4)"
started=$SECONDS
summary=()
failed=0

# run_step NAME LOG CMD...: runs CMD, tees its output to LOG, records PASS/FAIL and the time.
run_step() {
  local name=$1 log=$2
  shift 2
  local t0=$SECONDS rc=0
  echo
  echo "==> $name"
  "$@" 2>&1 | tee "$log" || rc=${PIPESTATUS[0]}
  if [[ $rc -eq 0 ]]; then
    summary+=("PASS  $name ($((SECONDS - t0))s)")
  else
    summary+=("FAIL  $name ($((SECONDS - t0))s, exit $rc; log $log)")
    failed=1
  fi
  return $rc
}

print_summary() {
  echo
  echo "==================== gpu-check summary ($((SECONDS - started))s) ===================="
  echo "GPU: ${gpu_line:-none}"
  printf '%s\n' "${summary[@]}"
  if [[ -f "$logs/test.log" ]]; then
    echo "-- per-test results (test-cuda-kernels):"
    grep -E '^(ok  |FAIL|SKIP)|passed, .* failed|<-- FAIL' "$logs/test.log" || true
  fi
  if [[ -f "$logs/forward.log" ]]; then
    echo "-- test-cuda-forward:"
    grep -E '^(ok  |FAIL|SKIP|device)|worst|equal|skipped|passed, .* failed|failed' "$logs/forward.log" || true
  fi
  if [[ -f "$logs/ipc.log" ]]; then
    echo "-- test-cuda-ipc:"
    grep -E '^(ok  |FAIL|SKIP)|blocks written|decode TP|answered|got|CHECK|read:|connect:|passed, .* failed' "$logs/ipc.log" || true
  fi
  if [[ -f "$logs/tp.log" ]]; then
    echo "-- test-cuda-tensor-parallel:"
    grep -E '^(ok  |FAIL|SKIP)|tp [0-9]|compared|step after|CHECK|passed, .* failed' "$logs/tp.log" || true
  fi
  if [[ -f "$logs/all-reduce.log" ]]; then
    echo "-- test-cuda-all-reduce:"
    grep -E '^(ok  |FAIL|SKIP)|ranks|gave up|CHECK|passed, .* failed' "$logs/all-reduce.log" || true
  fi
  if [[ -f "$logs/compare-hf.log" ]]; then
    echo "-- against HF transformers:"
    grep -E 'vs HF|compare-hf' "$logs/compare-hf.log" || true
  fi
  for b in bench bench-engine torch-bench; do
    if [[ -f "$logs/$b.log" ]]; then
      echo "-- $b:"
      grep -vE '^(torch |made )' "$logs/$b.log" || true
    fi
  done
}

mkdir -p "$logs"

# 1. GPU
echo "==> GPU"
have_gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  nvidia-smi
  gpu_line="$(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader | head -1)"
  have_gpu=1
else
  gpu_line="none"
  echo "gpu-check: NO GPU: nvidia-smi is missing or finds no device; building only (a compile check)."
fi

# Tools
if ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
for tool in cmake nvcc; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "gpu-check: $tool not found"
    exit 1
  fi
done
echo "cmake: $(cmake --version | head -1); nvcc: $(nvcc --version | tail -1); cores: $jobs"

# 2. cuBLAS (only needed at run time)
if [[ -z "${KVSERVE_CUBLAS:-}" ]] && ! ldconfig -p 2>/dev/null | grep -qE 'libcublas\.so\.1[23] '; then
  wheel_lib="$(timeout 60 python3 -c 'import nvidia.cublas as m; print(list(m.__path__)[0] + "/lib")' 2>/dev/null || true)"
  if [[ -n "$wheel_lib" && -d "$wheel_lib" ]]; then
    export LD_LIBRARY_PATH="$wheel_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "cuBLAS: from PyTorch's wheel, $wheel_lib"
  else
    echo "cuBLAS: not found by the loader nor in PyTorch's wheel (the GEMM test will fail; set KVSERVE_CUBLAS)"
  fi
else
  echo "cuBLAS: ${KVSERVE_CUBLAS:-found by the dynamic loader}"
fi

# 3. configure
cmake_args=(-S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLLM_BUILD_TESTS=ON -DLLM_CUDA=ON -DLLM_ASAN=OFF)
if [[ $have_gpu -eq 1 ]]; then
  arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')"
  [[ -n "$arch" ]] && cmake_args+=("-DCMAKE_CUDA_ARCHITECTURES=$arch")
fi
if ! run_step "configure" "$logs/configure.log" cmake "${cmake_args[@]}"; then
  print_summary
  exit 1
fi

# 4. build
if ! run_step "build" "$logs/build.log" \
    cmake --build "$build" --target test-cuda-kernels test-cuda-forward test-cuda-ipc test-cuda-tensor-parallel test-cuda-all-reduce \
      bench-cuda-kernels bench-cuda-engine \
    --parallel "$jobs"; then
  print_summary
  exit 1
fi

if [[ $have_gpu -eq 0 ]]; then
  run_step "test-cuda-kernels (expects SKIP without a GPU)" "$logs/test.log" "$build/test-cuda-kernels" || true
  print_summary
  echo
  echo "gpu-check: NO GPU: built only; no kernel was run, nothing numeric was checked."
  exit 2
fi

# 5, 6a-6c. the CUDA test programs; each must run here, not skip for want of a device.
run_gpu_test() {  # NAME LOG TIMEOUT_S
  run_step "$1" "$2" timeout "$3" "$build/$1" || true
  if grep -q '^SKIP: no CUDA' "$2"; then
    summary+=("FAIL  $1 skipped although nvidia-smi sees a GPU")
    failed=1
  fi
}
# every CUDA kernel against the CPU reference
run_gpu_test test-cuda-kernels "$logs/test.log" 300
# disaggregated prefill/decode by CUDA IPC (two processes, one GPU)
run_gpu_test test-cuda-ipc "$logs/ipc.log" 300
# tensor parallelism: TP 2 and 4 against TP 1, the ranks sharing the GPUs (and, with 2+ GPUs,
# the device all-reduce methods)
run_gpu_test test-cuda-tensor-parallel "$logs/tp.log" 300
# the one-shot all-reduce kernel, ranks as streams of this process
run_gpu_test test-cuda-all-reduce "$logs/all-reduce.log" 180

# 6. end to end on generated models, 7. against HF transformers
models="${KVSERVE_GPU_MODELS:-/tmp/kvserve-gpu-models}"
if run_step "make test models" "$logs/make-models.log" python3 "$root/scripts/gpu-reference.py" make-models "$models"; then
  dirs="$models/llama-gqa4-f32:$models/llama-gqa4-bf16:$models/qwen2-bias-tied-bf16:$models/mistral-window-bf16"
  run_step "test-cuda-forward" "$logs/forward.log" env KVSERVE_CUDA_TEST_MODELS="$dirs" timeout 300 \
    "$build/test-cuda-forward" || true
  if [[ "${KVSERVE_GPU_SKIP_HF:-0}" != 1 ]]; then
    run_step "compare-hf" "$logs/compare-hf.log" timeout 300 python3 "$root/scripts/gpu-reference.py" compare-hf \
      ${dirs//:/ } || true
  fi
fi

# 8. kernel benchmark
if [[ "${KVSERVE_GPU_SKIP_KERNEL_BENCH:-0}" != 1 ]]; then
  run_step "bench-cuda-kernels" "$logs/bench.log" timeout 180 "$build/bench-cuda-kernels" || true
fi

# 9. the 8B benchmark and PyTorch on the same model
if [[ "${KVSERVE_GPU_SKIP_8B:-0}" != 1 ]]; then
  # 16 GB of weights: in /dev/shm (memory) when it has room, so writing and reading them is fast.
  big="$models/llama-8b"
  if [[ -d /dev/shm ]] && (( $(df --output=avail -k /dev/shm | tail -1) > 24 * 1024 * 1024 )); then
    big=/dev/shm/kvserve-llama-8b
  fi
  if run_step "make-8b" "$logs/make-8b.log" timeout 300 python3 "$root/scripts/gpu-reference.py" make-8b "$big"; then
    run_step "bench-cuda-engine (8B, then TP 2 on this GPU)" "$logs/bench-engine.log" timeout 480 \
      "$build/bench-cuda-engine" "$big" --tp 2 || true
    if [[ "${KVSERVE_GPU_SKIP_TORCH:-0}" != 1 ]]; then
      run_step "torch-bench (8B)" "$logs/torch-bench.log" timeout 300 python3 "$root/scripts/gpu-reference.py" \
        torch-bench "$big" || true
    fi
  fi
fi

print_summary
exit $failed
