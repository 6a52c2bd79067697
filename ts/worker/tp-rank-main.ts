// tp-rank-main.ts: one rank (1..N-1) of a tensor-parallel worker, started by tp-ranks.ts:
//   tp-rank-main.ts --rank R --label WORKER --options '<EngineOptions with tpSize, tpGroup>'
// It runs only the forward pass (runTensorParallelRank) on its slices of the weights until the
// worker's engine stops it (exit 0); an error (a bad model, a broken group) is printed as one
// line and exits 1.
import { loadAddon, nativeEngineOptions, type EngineOptions } from '../native/index.ts';

function arg(name: string): string {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? process.argv[i + 1] : undefined;
  if (v === undefined) throw new Error(`usage: tp-rank-main --rank R --label NAME --options '<json>' (missing ${name})`);
  return v;
}

const label = process.argv.includes('--label') ? arg('--label') : 'worker';
let rank = -1;
try {
  rank = Number(arg('--rank'));
  const options = nativeEngineOptions(JSON.parse(arg('--options')) as EngineOptions);
  loadAddon().runTensorParallelRank(options, rank);
  process.exit(0);
} catch (err) {
  const e = err as { code?: string; message?: string };
  console.error(`[${label} rank ${rank}] error: ${e.code ? `${e.code}: ` : ''}${e.message ?? String(err)}`);
  process.exit(1);
}
