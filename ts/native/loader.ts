// loader.ts: the one place that loads the native addon. It tries, in order, the local cmake-js
// build (build/Release, then build/Debug) and a prebuild that fits (node-gyp-build), and when
// all fail it throws one error listing every attempt and why it failed.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { NativeAddon } from './addon.js';

const require = createRequire(import.meta.url);
export const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export class AddonLoadError extends Error {
  readonly code = 'ERR_ADDON_LOAD';
  constructor(readonly attempts: { from: string; error: string }[]) {
    super(
      'the kvserve native addon could not be loaded; tried:\n' +
        attempts.map((a) => `  - ${a.from}: ${a.error}`).join('\n') +
        '\nbuild it with `npm run build:native` (needs a C++17 compiler, and CMake or else node-gyp for the CPU-only fallback)',
    );
    this.name = 'AddonLoadError';
  }
}

let cached: NativeAddon | undefined;

export function loadAddon(): NativeAddon {
  if (cached) return cached;
  const attempts: { from: string; error: string }[] = [];
  const candidates: [string, () => unknown][] = [
    ...['Release', 'Debug'].map((cfg): [string, () => unknown] => {
      const file = path.join(packageRoot, 'build', cfg, 'kvserve.node');
      return [file, () => require(file)];
    }),
    ['prebuilds (node-gyp-build)', () => (require('node-gyp-build') as (dir: string) => unknown)(packageRoot)],
  ];
  for (const [from, load] of candidates) {
    try {
      cached = load() as NativeAddon;
      return cached;
    } catch (err) {
      attempts.push({ from, error: (err as Error).message.split('\n')[0] });
    }
  }
  throw new AddonLoadError(attempts);
}
