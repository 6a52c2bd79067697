// coverage-setup.ts (vitest globalSetup): records, for the line `npm test` ends with
// (scripts/run-tests.mjs), the kernel path the engine, serving and golden tests run on: the
// default path of this CPU, or the one KVSERVE_CPU_KERNELS names.
import fs from 'node:fs';

import { loadAddon } from '../../ts/native/index.ts';

export default function setup(): void {
  const file = process.env.KVSERVE_COVERAGE_FILE;
  if (!file) return;
  const path = loadAddon().cpuKernelInfo().path;
  fs.appendFileSync(file, `exercised\tpath ${path}\nexercised\tdevice cpu\n`);
}
