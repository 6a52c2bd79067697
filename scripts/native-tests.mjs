#!/usr/bin/env node
// native-tests.mjs: builds and runs the plain C++ tests (native/tests, via ctest) twice:
//   build-tests       optimised, as shipped;
//   build-tests-asan  with AddressSanitizer + UBSan (the fuzz test's crash/overflow check).
// Set KVSERVE_SKIP_ASAN=1 to skip the second (e.g. while iterating locally).
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const jobs = String(Math.max(1, os.availableParallelism?.() ?? os.cpus().length));

function run(cmd, args, opts = {}) {
  console.log(`> ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts });
  if (r.status !== 0) {
    console.error(`native-tests: '${cmd} ${args.join(' ')}' failed (${r.error?.message ?? `exit code ${r.status}`})`);
    process.exit(1);
  }
}

function buildAndTest(dir, extra) {
  run('cmake', ['-S', '.', '-B', dir, '-DLLM_BUILD_TESTS=ON', '-DLLM_CUDA=AUTO', ...extra]);
  run('cmake', ['--build', dir, '--parallel', jobs]);
  run('ctest', ['--test-dir', dir, '--output-on-failure'], {
    env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=1', UBSAN_OPTIONS: 'print_stacktrace=1' },
  });
}

buildAndTest('build-tests', ['-DCMAKE_BUILD_TYPE=Release']);
if (process.env.KVSERVE_SKIP_ASAN !== '1') {
  buildAndTest('build-tests-asan', ['-DCMAKE_BUILD_TYPE=RelWithDebInfo', '-DLLM_ASAN=ON', '-DLLM_CUDA=OFF']);
}
