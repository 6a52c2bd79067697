// bench/frontend.ts: `npm run bench:frontend`: what the serving path adds on top of the engine,
// on the tiny built-in model, in one run.
//   1. TTFT and inter-token latency of single requests from the engine called directly
//      (in-process, no HTTP), then through the launcher's HTTP + SSE path; the difference is
//      the frontend's (processor + request plane + SSE) own cost.
//   2. 64 concurrent streams through HTTP + SSE: streamed tokens/s, and the CPU the frontend
//      process used (from /proc), so its cost per token and the rate one core would sustain.
// Every request asks for logprobs (top 0) on both paths, so each engine token makes one SSE event
// even when its text is held back (a partial UTF-8 character): TTFT and ITL are per token.
// Writes bench/results/frontend-<time>.json.
import fs from 'node:fs';
import os from 'node:os';
import { parseArgs } from 'node:util';
import { Engine } from '../ts/native/index.ts';
import { ensureModel } from '../ts/modelgen/index.ts';
import { loadTokenizer } from '../ts/processor/index.ts';
import { childPids, freePort, launch } from '../test/helpers/launcher.ts';
import { streamCompletion, writeResult } from './common.ts';

const { values: args } = parseArgs({
  options: {
    requests: { type: 'string', default: '30' },
    'output-len': { type: 'string', default: '32' },
    streams: { type: 'string', default: '64' },
    'stream-len': { type: 'string', default: '256' },
    out: { type: 'string' },
  },
});

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] : NaN;
};

function cpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, in clock ticks of 1/100 s
}

const PROMPT = 'Write a short story about a lighthouse keeper who finds a message in a bottle.';

async function direct(modelDir: string, promptIds: number[], n: number, outLen: number) {
  const engine = new Engine({ modelDir, numThreads: 2, kvCacheBytes: 256 << 20 });
  const ttft: number[] = [];
  const itl: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    let last = t0;
    let first = true;
    for await (const o of engine.generate(`d${i}`, promptIds, { temperature: 0, ignoreEos: true, maxTokens: outLen, logprobs: 0 })) {
      const now = performance.now();
      if (first) ttft.push(now - t0);
      else itl.push(now - last);
      first = false;
      last = now;
      void o;
    }
  }
  await engine.close();
  return { ttft, itl };
}

// One streamed completion; onChunk runs per SSE event carrying a choice.
function sse(url: string, body: Record<string, unknown>, onChunk: (now: number) => void): Promise<void> {
  return streamCompletion(url, body, (data, now) => {
    if (Array.isArray(data.choices) && data.choices.length > 0) onChunk(now);
  });
}

async function main() {
  const n = Number(args.requests);
  const outLen = Number(args['output-len']);
  const { dir } = await ensureModel('tiny-llama');
  const tokenizer = await loadTokenizer(dir);
  const promptIds = tokenizer.encode(PROMPT, { addSpecialTokens: true });

  // 1a. The engine, directly.
  const d = await direct(dir, promptIds, n, outLen);

  // 1b. The same requests through the launcher (HTTP + SSE).
  const server = await launch(['--model', dir, '--http-port', String(await freePort()), '--kv-cache-memory', '256MiB', '--log-level', 'warn']);
  const h = { ttft: [] as number[], itl: [] as number[] };
  try {
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      let last = t0;
      let first = true;
      await sse(server.url, { model: dir, prompt: promptIds, max_tokens: outLen, temperature: 0, ignore_eos: true, stream: true, logprobs: 0 }, (now) => {
        if (first) h.ttft.push(now - t0);
        else h.itl.push(now - last);
        first = false;
        last = now;
      });
    }

    // 2. 64 concurrent streams: throughput and the frontend's CPU.
    const frontendPid = childPids(server.proc.pid!).find((pid) => fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('frontend/main.ts'))!;
    const streams = Number(args.streams);
    const streamLen = Number(args['stream-len']);
    let tokens = 0;
    const cpu0 = cpuSeconds(frontendPid);
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: streams }, (_, i) =>
        sse(server.url, { model: dir, prompt: `${i}: ${PROMPT}`, max_tokens: streamLen, temperature: 0, ignore_eos: true, stream: true, logprobs: 0 }, () => tokens++),
      ),
    );
    const seconds = (performance.now() - t0) / 1000;
    const cpu = cpuSeconds(frontendPid) - cpu0;
    const load = {
      streams,
      tokens,
      seconds,
      tokensPerSecond: tokens / seconds,
      frontendCpuSeconds: cpu,
      frontendCores: cpu / seconds,
      frontendCpuMicrosPerToken: (cpu / tokens) * 1e6,
      tokensPerSecondPerFrontendCore: tokens / cpu,
    };

    const row = (name: string, xs: number[]) => `| ${name} | ${pct(xs, 50).toFixed(2)} | ${pct(xs, 90).toFixed(2)} | ${pct(xs, 99).toFixed(2)} |`;
    console.log('\n| latency (ms) | p50 | p90 | p99 |\n|---|---:|---:|---:|');
    console.log(row('TTFT, engine direct', d.ttft));
    console.log(row('TTFT, HTTP + SSE', h.ttft));
    console.log(row('ITL, engine direct', d.itl));
    console.log(row('ITL, HTTP + SSE', h.itl));
    console.log(`\nadded p50 TTFT: ${(pct(h.ttft, 50) - pct(d.ttft, 50)).toFixed(2)} ms; added p50 ITL: ${(pct(h.itl, 50) - pct(d.itl, 50)).toFixed(2)} ms`);
    console.log(`\n${streams} streams: ${load.tokensPerSecond.toFixed(0)} streamed tokens/s; frontend used ${load.frontendCores.toFixed(3)} cores ` +
      `(${load.frontendCpuMicrosPerToken.toFixed(1)} µs CPU per token, i.e. ${load.tokensPerSecondPerFrontendCore.toFixed(0)} tokens/s per frontend core)`);

    const result = {
      date: new Date().toISOString(),
      machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model },
      model: dir,
      requests: n,
      outputLen: outLen,
      direct: { ttftP50: pct(d.ttft, 50), itlP50: pct(d.itl, 50), ttft: d.ttft, itl: d.itl },
      http: { ttftP50: pct(h.ttft, 50), itlP50: pct(h.itl, 50), ttft: h.ttft, itl: h.itl },
      addedTtftP50Ms: pct(h.ttft, 50) - pct(d.ttft, 50),
      load,
    };
    writeResult('frontend', result, args.out);
  } finally {
    await server.stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
