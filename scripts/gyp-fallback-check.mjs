#!/usr/bin/env node
// gyp-fallback-check.mjs: builds the node-gyp fallback (binding.gyp, for machines without CMake)
// in a temporary copy of the build inputs, never in build/, and loads the .node it makes in a
// fresh `node -e`: the NativeAddon names of ts/native/addon.d.ts exported, the block hash equal
// to test/vectors/block-hash.json on a long-input case, the CPU kernel path that cmake's build
// would pick (the ISA files are compiled in). Run by .ci/run; `npm run test:gyp-fallback`.
// A Debug build (-O0) unless --release: this checks that the fallback builds, links and loads,
// in about half the time of an -O3 build.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const jobs = String(Math.max(1, os.availableParallelism?.() ?? os.cpus().length));
const release = process.argv.includes('--release');

class CheckFailed extends Error {}

function fail(message) {
  throw new CheckFailed(message);
}

// node-gyp: npm's own (npm sets npm_config_node_gyp for scripts), else the one bundled with the
// npm next to this node, else on PATH.
function nodeGyp() {
  if (process.env.npm_config_node_gyp) return [process.execPath, process.env.npm_config_node_gyp];
  const bundled = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  return fs.existsSync(bundled) ? [process.execPath, bundled] : ['node-gyp'];
}

// The headers of the running node: npm's nodedir setting, else the install's own include/node
// (so node-gyp downloads nothing), else node-gyp's default (a download).
function nodedirArgs() {
  if (process.env.npm_config_nodedir) return [`--nodedir=${process.env.npm_config_nodedir}`];
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  return fs.existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) ? [`--nodedir=${prefix}`] : [];
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvserve-gyp-'));
try {
  fs.copyFileSync(path.join(root, 'binding.gyp'), path.join(dir, 'binding.gyp'));
  fs.mkdirSync(path.join(dir, 'scripts'));
  fs.copyFileSync(path.join(root, 'scripts', 'native-sources.mjs'), path.join(dir, 'scripts', 'native-sources.mjs'));
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'kvserve-gyp-check', private: true }));
  fs.symlinkSync(path.join(root, 'native'), path.join(dir, 'native'));
  fs.symlinkSync(path.join(root, 'node_modules'), path.join(dir, 'node_modules'));

  const [cmd, ...pre] = nodeGyp();
  const args = [...pre, 'rebuild', `--jobs=${jobs}`, ...nodedirArgs(), ...(release ? [] : ['--debug'])];
  console.log(`> (in ${dir}) ${cmd} ${args.join(' ')}`);
  const started = Date.now();
  const built = spawnSync(cmd, args, { cwd: dir, stdio: 'inherit' });
  if (built.status !== 0) fail(`node-gyp failed (${built.error?.message ?? `exit code ${built.status}`})`);
  const addon = path.join(dir, 'build', release ? 'Release' : 'Debug', 'kvserve.node');
  console.log(`gyp-fallback-check: built ${addon} in ${((Date.now() - started) / 1000).toFixed(0)} s`);

  const declared = fs.readFileSync(path.join(root, 'ts', 'native', 'addon.d.ts'), 'utf8');
  const body = /export interface NativeAddon \{([^}]*)\}/.exec(declared)?.[1];
  if (!body) fail('no NativeAddon interface in ts/native/addon.d.ts');
  const names = [...body.matchAll(/^\s*(\w+):/gm)].map((m) => m[1]);
  const vectors = JSON.parse(fs.readFileSync(path.join(root, 'test', 'vectors', 'block-hash.json'), 'utf8'));
  const longCase = vectors.cases.find((c) => 8 + 4 * c.block_size > 240 && c.hashes.length >= 2);
  if (!longCase) fail('test/vectors/block-hash.json has no case on XXH3\'s long path');

  const probe = `
    const a = require(${JSON.stringify(addon)});
    const want = ${JSON.stringify(names)};
    const have = Object.keys(a);
    const missing = want.filter((n) => !have.includes(n)), extra = have.filter((n) => !want.includes(n));
    if (missing.length || extra.length) throw new Error('exports differ from addon.d.ts: missing ' + missing + '; extra ' + extra);
    const c = ${JSON.stringify(longCase)};
    const got = a.blockHashes(Int32Array.from(c.tokens), c.block_size);
    if (JSON.stringify(got) !== JSON.stringify(c.hashes)) throw new Error('blockHashes differ on "' + c.name + '": ' + got + ' vs ' + c.hashes);
    const cpu = a.cpuKernelInfo();
    console.log('gyp-fallback-check: loaded; exports ' + have.length + ', block hashes equal the vectors, CPU ISA [' + cpu.isa + '], kernel path ' + cpu.path + ', cudaCompiled ' + a.cudaCompiled);
    if (process.arch === 'x64' && process.platform !== 'win32' && cpu.isa.length > 0 && cpu.path === 'reference') throw new Error('the ISA kernel paths are missing: the CPU has ' + cpu.isa);
  `;
  const loaded = spawnSync(process.execPath, ['-e', probe], { stdio: 'inherit' });
  if (loaded.status !== 0) fail(`the built addon did not pass the load check (exit code ${loaded.status})`);
} catch (err) {
  if (!(err instanceof CheckFailed)) throw err;
  console.error(`gyp-fallback-check: ${err.message}`);
  process.exitCode = 1;
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
