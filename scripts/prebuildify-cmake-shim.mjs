#!/usr/bin/env node
// prebuildify-cmake-shim.mjs: prebuildify drives node-gyp; this stands in for node-gyp and
// runs cmake-js instead, so prebuilds come from the same CMakeLists.txt as `npm install`.
// prebuildify calls: <shim> rebuild --target=V --devdir=D [--arch=A] (--debug | --release)
// and then collects build/Release/*.node (build/Debug with --debug).
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(import.meta.url);
const argv = process.argv.slice(2);
const arch = argv.find((a) => a.startsWith('--arch='))?.slice('--arch='.length);
const debug = argv.includes('--debug');

const cmakeJs = path.join(path.dirname(require.resolve('cmake-js/package.json')), 'bin', 'cmake-js');
const args = [cmakeJs, 'rebuild', ...(arch ? ['--arch', arch] : []), ...(debug ? ['--debug'] : [])];
const r = spawnSync(process.execPath, args, { stdio: 'inherit' });
process.exit(r.status ?? 1);
