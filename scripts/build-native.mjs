#!/usr/bin/env node
// build-native.mjs: builds the addon. Roles of the build files:
//   CMakeLists.txt  the full build (CPU, and CUDA whenever nvcc is found), through cmake-js;
//                   used by `npm install` when no prebuild fits.
//   binding.gyp     the CPU-only fallback for machines without CMake (node-gyp).
//   prebuilds/      made by `npm run prebuild` (prebuildify through scripts/prebuildify-cmake-shim.mjs),
//                   loaded by node-gyp-build when one fits this platform.
// Usage: node scripts/build-native.mjs [--debug] [--if-no-prebuild]
//   --if-no-prebuild (the npm install script): do nothing when a prebuild in prebuilds/ fits.
// (Not `node-gyp-build <cmd>`: that runs <cmd> and then `node-gyp rebuild` as well, which
// replaced the CMake build in build/Release with the CPU-only fallback.)
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const debug = process.argv.includes('--debug');
const jobs = String(Math.max(1, os.availableParallelism?.() ?? os.cpus().length));

function run(cmd, args) {
  console.log(`> ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.error) return { ok: false, why: r.error.message };
  return { ok: r.status === 0, why: `exit code ${r.status}` };
}

if (process.argv.includes('--if-no-prebuild')) {
  try {
    const found = require('node-gyp-build').path(root);
    if (found.includes(`${path.sep}prebuilds${path.sep}`)) {
      console.log(`build-native: using the prebuild ${found}`);
      process.exit(0);
    }
  } catch {
    // no prebuild fits: build
  }
}

const hasCmake = spawnSync('cmake', ['--version'], { stdio: 'ignore' }).status === 0;
if (hasCmake) {
  const cmakeJs = path.join(path.dirname(require.resolve('cmake-js/package.json')), 'bin', 'cmake-js');
  const args = ['compile', '--parallel', jobs, ...(debug ? ['--debug'] : [])];
  const r = run(process.execPath, [cmakeJs, ...args]);
  if (!r.ok) {
    console.error(`build-native: cmake-js failed (${r.why})`);
    process.exit(1);
  }
} else {
  console.warn('build-native: cmake not found; building the CPU-only fallback with node-gyp (binding.gyp)');
  const nodeGyp = process.env.npm_config_node_gyp;
  const r = nodeGyp
    ? run(process.execPath, [nodeGyp, 'rebuild', `--jobs=${jobs}`, ...(debug ? ['--debug'] : [])])
    : run('node-gyp', ['rebuild', `--jobs=${jobs}`, ...(debug ? ['--debug'] : [])]);
  if (!r.ok) {
    console.error(`build-native: node-gyp failed (${r.why})`);
    process.exit(1);
  }
}
