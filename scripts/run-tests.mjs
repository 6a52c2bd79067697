#!/usr/bin/env node
// run-tests.mjs: `npm test`. The C++ tests (native-tests.mjs: Release, then ASan), then vitest,
// then one line saying which kernel paths and devices the run exercised and which it skipped,
// with why: a green run on a machine without AMX, a GPU or a container tool says so instead of
// passing silently.
// The tests append what they ran to $KVSERVE_COVERAGE_FILE (test-harness.h record_coverage,
// test/helpers/coverage-setup.ts); this script sets it to a fresh file.
// Exit: non-zero when either suite failed (the line is printed either way).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const coverage = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kvserve-coverage-')), 'coverage.tsv');
fs.writeFileSync(coverage, '');
const env = { ...process.env, KVSERVE_COVERAGE_FILE: coverage };

function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env });
  return r.status === 0;
}

const nativeOk = run(process.execPath, [path.join(root, 'scripts', 'native-tests.mjs')]);
// Arguments after `npm test --` go to vitest (file filters, -t NAME).
const vitestOk =
  nativeOk && run(process.execPath, [path.join(root, 'node_modules', 'vitest', 'vitest.mjs'), 'run', ...process.argv.slice(2)]);

// "exercised\t<what>" or "skipped\t<what>\t<why>"; a thing exercised anywhere counts as exercised.
const exercised = new Set();
const skipped = new Map();
for (const line of fs.readFileSync(coverage, 'utf8').split('\n')) {
  const [kind, what, why] = line.split('\t');
  if (kind === 'exercised' && what) exercised.add(what);
  else if (kind === 'skipped' && what) skipped.set(what, why ?? '');
}
for (const what of exercised) skipped.delete(what);
const ran = [...exercised].sort().join(', ') || 'nothing recorded';
const missed = [...skipped].map(([what, why]) => (why ? `${what} (${why})` : what)).join('; ') || 'nothing';
console.log(`\nnpm test: exercised ${ran}. Skipped for what this machine lacks (hardware, a container tool): ${missed}.`);
fs.rmSync(path.dirname(coverage), { recursive: true, force: true });
process.exit(nativeOk && vitestOk ? 0 : 1);
