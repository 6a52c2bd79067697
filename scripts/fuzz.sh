#!/usr/bin/env bash
# fuzz.sh: builds the libFuzzer targets (native/fuzz/fuzz-*.cc) with Clang, ASan and UBSan in
# their own build directory and runs each in turn for the given time, one fuzzer process at a
# time, then prints per target the inputs tried (executions) and the crashes found.
#
#   bash scripts/fuzz.sh [seconds-per-target] [target...]     # default 120 s, every target
#
# Targets: fuzz-model-config (config.json and generation_config.json), fuzz-safetensors (a
# safetensors file, then the model bound to a fixed config), fuzz-transfer-wire (the transfer
# agents' frames and the metadata a hello carries). Each starts from its seeds in
# native/fuzz/corpus/<target>/ (written by the fuzz-seeds program) and keeps what it finds in
# <build>/corpus/<target>/, so a second run goes on from there. A crash is saved as
# <build>/artifacts/<target>/crash-<sha1> (or leak-, timeout-, oom-); reproduce it with
# `<build>/<target> <file>`. A target stops at its first crash.
# Settings: KVSERVE_FUZZ_BUILD (build dir, default build-fuzz), CC / CXX (default clang,
# clang++; Debian: apt-get install clang), KVSERVE_FUZZ_MAX_LEN (largest input, default 16384).
# Exit: 0 no crash; 1 a target crashed; 2 setup failed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-120}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz-model-config fuzz-safetensors fuzz-transfer-wire)
build=${KVSERVE_FUZZ_BUILD:-$root/build-fuzz}
max_len=${KVSERVE_FUZZ_MAX_LEN:-16384}
export CC=${CC:-clang} CXX=${CXX:-clang++}

if ! command -v "$CXX" >/dev/null; then
  echo "fuzz.sh: $CXX not found (libFuzzer comes with Clang: apt-get install clang)" >&2
  exit 2
fi
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLLM_FUZZ=ON -DLLM_CUDA=OFF >"$build.configure.log" 2>&1 ||
  { cat "$build.configure.log" >&2; exit 2; }
cmake --build "$build" --target "${targets[@]}" >"$build/build.log" 2>&1 || { tail -50 "$build/build.log" >&2; exit 2; }

echo "fuzz.sh: ${seconds} s per target on $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)"
status=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "$build/corpus/$t" "$build/artifacts/$t" "$build/logs"
  log=$build/logs/$t.log
  stamp=$build/logs/$t.start
  touch "$stamp"
  start=$SECONDS
  set +e
  "$build/$t" "$build/corpus/$t" "$root/native/fuzz/corpus/$t" -max_total_time="$seconds" -print_final_stats=1 \
    -max_len="$max_len" -timeout=10 -artifact_prefix="$build/artifacts/$t/" >"$log" 2>&1
  rc=$?
  set -e
  ran=$((SECONDS - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  crashes=$(find "$build/artifacts/$t" -type f -newer "$stamp" | wc -l)  # this run's
  [ "$rc" -eq 0 ] || status=1
  summary+=("$(printf '%-20s %6s s %12s executions %4s crashes (exit %s)' "$t" "$ran" "${execs:-?}" "$crashes" "$rc")")
  if [ "$rc" -ne 0 ]; then
    grep -m1 -E 'ERROR: |FUZZ_CHECK|runtime error' "$log" || true
    echo "  log: $log; artifacts: $build/artifacts/$t/"
  fi
done
printf '%s\n' "${summary[@]}"
exit $status
