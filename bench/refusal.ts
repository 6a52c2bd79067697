// bench/refusal.ts: `npm run bench:refusal`: how fast a full deployment says no. One worker with
// one slot and no frontend queue (`--workers 1 --max-num-seqs 1 --router-queue-threshold 0`, the
// tiny model on this CPU's default kernel path), two long greedy streams keep the slot busy and
// the engine decoding, then `requests` completions in a row, each timed by this client from the
// request to the end of the 503 `overloaded` body, over loopback, each followed by a GET /health
// timed the same way (the server's cheapest route, under the same load). Prints the median, p90,
// p99 and the most of both, and the CPU the engine, the frontend and this client shared.
// Flags: --requests 300, --rounds 2 (deployments, one after the other; the figures pool them),
//        --out FILE.
import os from 'node:os';
import { parseArgs } from 'node:util';
import { ensureModel } from '../ts/modelgen/index.ts';
import { freePort, launch } from '../test/helpers/launcher.ts';
import { promptTokens } from '../test/helpers/prompts.ts';
import { writeResult } from './common.ts';

const { values: args } = parseArgs({
  options: {
    requests: { type: 'string', default: '300' },
    rounds: { type: 'string', default: '2' },
    out: { type: 'string' },
  },
});
const requests = Number(args.requests);
const rounds = Number(args.rounds);
for (const [name, v] of [['requests', requests], ['rounds', rounds]] as const) {
  if (!Number.isInteger(v) || v < 1) {
    console.error(`--${name} must be an integer >= 1, got '${args[name]}'`);
    process.exit(2);
  }
}

const percentile = (sorted: number[], q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;

// Streams a long greedy completion to its end (or until the signal), reading every chunk.
async function longStream(url: string, model: string, signal: AbortSignal): Promise<void> {
  const body = { model, prompt: promptTokens(600, 16), max_tokens: 4000, ignore_eos: true, temperature: 0, stream: true };
  try {
    const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal });
    for await (const _ of res.body!) void _;
  } catch {
    // aborted at the end of the round
  }
}

const model = (await ensureModel('tiny-llama')).dir;
const ms: number[] = [];
const healthMs: number[] = [];
const statuses = new Map<string, number>();
for (let round = 0; round < rounds; round++) {
  const port = await freePort();
  const dep = await launch(['--model', model, '--device', 'cpu', '--kv-cache-memory', '64MiB', '--http-port', String(port), '--workers', '1', '--max-num-seqs', '1', '--router-queue-threshold', '0']);
  const stop = new AbortController();
  const streams = [longStream(dep.url, model, stop.signal), longStream(dep.url, model, stop.signal)];
  await new Promise((r) => setTimeout(r, 1000));
  const body = JSON.stringify({ model, prompt: 'Hello', max_tokens: 4 });
  for (let i = 0; i < requests; i++) {
    const t0 = performance.now();
    const res = await fetch(`${dep.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    const text = await res.text();
    const t = performance.now() - t0;
    const code = res.status === 503 ? (JSON.parse(text) as { error?: { code?: string } }).error?.code : undefined;
    const key = `${res.status}${code ? ` ${code}` : ''}`;
    statuses.set(key, (statuses.get(key) ?? 0) + 1);
    if (res.status === 503 && code === 'overloaded') ms.push(t);
    const h0 = performance.now();
    await (await fetch(`${dep.url}/health`)).text();
    healthMs.push(performance.now() - h0);
  }
  stop.abort();
  await Promise.all(streams);
  await dep.stop();
}

const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
console.log(`refusals: ${ms.length} of ${requests * rounds} requests (${[...statuses].map(([k, v]) => `${k}: ${v}`).join(', ')}), ${os.cpus().length} CPUs (${cpu})`);
if (ms.length === 0) process.exit(1);
const figuresOf = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  return { median: percentile(sorted, 0.5), p90: percentile(sorted, 0.9), p99: percentile(sorted, 0.99), max: sorted[sorted.length - 1]! };
};
const show = (f: ReturnType<typeof figuresOf>) => `median ${f.median.toFixed(2)}, p90 ${f.p90.toFixed(2)}, p99 ${f.p99.toFixed(2)}, max ${f.max.toFixed(2)}`;
const refusal = figuresOf(ms);
const health = figuresOf(healthMs);
console.log(`503 overloaded, ms: ${show(refusal)}`);
console.log(`GET /health,     ms: ${show(health)}`);
const result = { date: new Date().toISOString(), cpu, requests, rounds, statuses: Object.fromEntries(statuses), ms: refusal, healthMs: health };
writeResult('refusal', result, args.out);
