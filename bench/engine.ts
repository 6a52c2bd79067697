// bench/engine.ts: `npm run bench:engine`: engine speed on a Llama-3.2-1B-shaped bf16 model
// (16 layers, hidden 2048, 32 heads, 8 KV heads, FFN 8192, vocab 128256, tied), generated once
// and cached. Measures decode tokens/s at batch 1, 8 and 32 and prefill tokens/s for a
// 512-token prompt; prints a table and writes JSON (bench/results/engine-<time>.json).
//
// Flags: --model DIR (another model), --preset NAME (default llama-3.2-1b), --threads N,
//        --decode-tokens N (per request, default 16), --batches 1,8,32, --prefill-len 512,
//        --out FILE.
import os from 'node:os';
import { parseArgs } from 'node:util';
import { Engine, collect } from '../ts/native/index.ts';
import { ensureModel } from '../ts/modelgen/index.ts';
import { writeResult } from './common.ts';

const { values: args } = parseArgs({
  options: {
    model: { type: 'string' },
    preset: { type: 'string', default: 'llama-3.2-1b' },
    threads: { type: 'string', default: '0' },
    'decode-tokens': { type: 'string', default: '16' },
    batches: { type: 'string', default: '1,8,32' },
    'prefill-len': { type: 'string', default: '512' },
    out: { type: 'string' },
  },
});

function promptOf(seed: number, len: number): number[] {
  let x = seed + 1;
  return Array.from({ length: len }, () => {
    x = (x * 1103515245 + 12345) >>> 0;
    return 1000 + (x % 100000);
  });
}

async function main() {
  const t0 = performance.now();
  const modelDir = args.model ?? (await ensureModel(args.preset!)).dir;
  console.log(`model: ${modelDir} (ready in ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
  const prefillLen = Number(args['prefill-len']);
  const decodeTokens = Number(args['decode-tokens']);
  const batches = args.batches!.split(',').map(Number);
  const engine = new Engine({
    modelDir,
    numThreads: Number(args.threads),
    maxModelLen: Math.max(prefillLen + 8, 512),
    maxNumSeqs: Math.max(...batches),
    maxNumBatchedTokens: Math.max(prefillLen, ...batches),
    enablePrefixCaching: false,
    kvCacheBytes: 1 << 30,
  });
  const info = engine.info;
  console.log(`engine: backend ${info.backend}, kernels ${info.kernels}, KV ${info.kvCacheDtype}, ${info.numKvBlocks} blocks`);

  const rows: { name: string; tokens: number; seconds: number; tokensPerSecond: number }[] = [];
  let id = 0;

  // Decode: B requests with short prompts; time from the step where the last first token
  // arrived to the end, counting only tokens produced in that window.
  for (const B of batches) {
    let firstAt = 0;
    let firstSeen = 0;
    let tokensAfter = 0;
    const runs = Array.from({ length: B }, (_, i) =>
      (async () => {
        let seen = false;
        for await (const o of engine.generate(`d${id++}`, promptOf(i, 16), { temperature: 0, ignoreEos: true, maxTokens: decodeTokens })) {
          if (!seen) {
            seen = true;
            if (++firstSeen === B) firstAt = performance.now();
            continue;
          }
          if (firstSeen === B) tokensAfter += o.newTokenIds.length;
        }
      })(),
    );
    await Promise.all(runs);
    const seconds = (performance.now() - firstAt) / 1000;
    rows.push({ name: `decode batch ${B}`, tokens: tokensAfter, seconds, tokensPerSecond: tokensAfter / seconds });
    console.log(`decode batch ${B}: ${(tokensAfter / seconds).toFixed(2)} tok/s`);
  }

  // Prefill: one prompt of prefillLen tokens, one output token.
  {
    const start = performance.now();
    await collect(engine.generate(`p${id++}`, promptOf(99, prefillLen), { temperature: 0, maxTokens: 1 }));
    const seconds = (performance.now() - start) / 1000;
    rows.push({ name: `prefill ${prefillLen}`, tokens: prefillLen, seconds, tokensPerSecond: prefillLen / seconds });
    console.log(`prefill ${prefillLen}: ${(prefillLen / seconds).toFixed(1)} tok/s`);
  }
  await engine.close();

  console.log('\n| measurement | tokens | seconds | tokens/s |\n|---|---:|---:|---:|');
  for (const r of rows) console.log(`| ${r.name} | ${r.tokens} | ${r.seconds.toFixed(2)} | ${r.tokensPerSecond.toFixed(2)} |`);

  const result = {
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, memoryGiB: Math.round(os.totalmem() / 2 ** 30) },
    model: { dir: modelDir, ...info.model },
    engine: { backend: info.backend, kernels: info.kernels, kvCacheDtype: info.kvCacheDtype, threads: Number(args.threads) },
    results: rows,
  };
  writeResult('engine', result, args.out);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
