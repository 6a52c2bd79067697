// bench/router-serving.ts: `npm run bench:router-serving`: KV-aware routing against round-robin,
// served end to end on this machine (the serving comparison of the KV-routing issue, scaled to CPU).
//
// Each (workload, policy) pair gets a fresh launcher deployment of the built-in tiny model:
//   --model <tiny-llama> --workers N --router kv|round-robin --kv-cache-memory 128MiB
// and the same requests, at the same times, for both policies:
//   1. shared prefix: 8 groups, each with a 1,024-token system prompt; every request is its
//      group's prompt + a distinct 64-token question (groups interleaved at random).
//   2. low-sharing control: distinct random 512-token prompts, no shared prefix.
// Prompts are token-id arrays (ids in [1000, 100000), valid for the 128,256-token vocab) sent to
// /v1/completions, so lengths are exact; 32 output tokens (ignore_eos, temperature 0, streamed);
// Poisson arrivals (exponential gaps, seeded) at --rate requests/s.
// Per request: TTFT (first SSE event carrying a choice) and E2E, over a keep-alive node:http
// connection (fetch adds milliseconds per request here). Per run: output tokens/s (from the
// usage chunk, first send to last finish), the workers' prefix-cache hit rate (sum of
// vllm:prefix_cache_hits_total over workers / sum of vllm:prefix_cache_queries_total, deltas over
// the run, from /metrics) and, for kv, the router's own hit rate (kvserve:router_prefix_hit_rate;
// the deployment is fresh, so it covers exactly this run). Failed requests are counted and listed.
// Targets (issue): shared prefix: kv mean TTFT >= 2x lower and a higher prefix hit rate;
// control: kv within 10% of round-robin in mean TTFT and throughput.
// Flags: --num-prompts 64, --rate 2, --seed 1, --workers 4, --out FILE.
// Writes bench/results/router-serving-<time>.json.
import os from 'node:os';
import { parseArgs } from 'node:util';
import { ensureModel } from '../ts/modelgen/index.ts';
import { seededRng } from '../ts/router/index.ts';
import { freePort, launch, type Launched } from '../test/helpers/launcher.ts';
import { getText, streamCompletion, writeResult } from './common.ts';

const { values: args } = parseArgs({
  options: {
    'num-prompts': { type: 'string', default: '64' },
    rate: { type: 'string', default: '2' },
    seed: { type: 'string', default: '1' },
    workers: { type: 'string', default: '4' },
    out: { type: 'string' },
  },
});

const config = {
  numPrompts: Number(args['num-prompts']),
  rate: Number(args.rate),
  seed: Number(args.seed),
  workers: Number(args.workers),
  groups: 8,
  prefixLen: 1024,
  questionLen: 64,
  controlLen: 512,
  outputLen: 32,
  tokenIds: [1000, 100_000] as const,
  kvCacheMemory: '128MiB',
};
const POLICIES = ['kv', 'round-robin'] as const;
type Policy = (typeof POLICIES)[number];

interface Request {
  at: number; // seconds after the run starts
  prompt: number[];
}

interface Outcome {
  ttftMs: number;
  e2eMs: number;
  outputTokens: number;
  end: number; // performance.now() at the last byte
}

// ---- workloads --------------------------------------------------------------------------------

const rng = seededRng(config.seed);
const randomTokens = (n: number) =>
  Array.from({ length: n }, () => config.tokenIds[0] + Math.floor(rng() * (config.tokenIds[1] - config.tokenIds[0])));

// Poisson arrivals: cumulative exponential gaps at `rate` per second.
function arrivals(n: number, rate: number): number[] {
  let t = 0;
  return Array.from({ length: n }, () => (t += -Math.log(1 - rng()) / rate));
}

function sharedPrefixWorkload(): Request[] {
  const prefixes = Array.from({ length: config.groups }, () => randomTokens(config.prefixLen));
  return arrivals(config.numPrompts, config.rate).map((at) => ({
    at,
    prompt: [...prefixes[Math.floor(rng() * config.groups)]!, ...randomTokens(config.questionLen)],
  }));
}

function controlWorkload(): Request[] {
  return arrivals(config.numPrompts, config.rate).map((at) => ({ at, prompt: randomTokens(config.controlLen) }));
}

// ---- client -----------------------------------------------------------------------------------

// One streamed completion; resolves with its timings and the completion tokens of the usage chunk.
async function complete(url: string, model: string, prompt: number[]): Promise<Outcome> {
  const body = {
    model, prompt, max_tokens: config.outputLen, temperature: 0, ignore_eos: true, stream: true,
    stream_options: { include_usage: true },
  };
  const t0 = performance.now();
  let firstAt: number | undefined;
  let outputTokens: number | undefined;
  await streamCompletion(url, body, (data, now) => {
    const d = data as { choices?: unknown[]; usage?: { completion_tokens: number } | null };
    if (firstAt === undefined && d.choices?.length) firstAt = now;
    if (d.usage) outputTokens = d.usage.completion_tokens;
  });
  const end = performance.now();
  if (firstAt === undefined || outputTokens === undefined) throw new Error('stream ended without a token or usage');
  return { ttftMs: firstAt - t0, e2eMs: end - t0, outputTokens, end };
}

// Sends every request at its arrival time; failures are kept as their messages.
async function replay(url: string, model: string, requests: Request[]) {
  const start = performance.now();
  const results = await Promise.allSettled(
    requests.map(async (r) => {
      await new Promise((res) => setTimeout(res, r.at * 1000 - (performance.now() - start)));
      return complete(url, model, r.prompt);
    }),
  );
  const ok = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const errors = results.flatMap((r) => (r.status === 'rejected' ? [String(r.reason)] : []));
  return { start, ok, errors };
}

// ---- metrics ----------------------------------------------------------------------------------

// Sum of a Prometheus series over all its label sets (NaN when absent).
function metricSum(text: string, name: string): number {
  const values = text
    .split('\n')
    .filter((line) => line.startsWith(`${name}{`) || line.startsWith(`${name} `))
    .map((line) => Number(line.slice(line.lastIndexOf(' ') + 1)));
  return values.length ? values.reduce((a, b) => a + b, 0) : NaN;
}

const prefixCounters = (text: string) => ({
  hits: metricSum(text, 'vllm:prefix_cache_hits_total'),
  queries: metricSum(text, 'vllm:prefix_cache_queries_total'),
});

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : NaN;
};
const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);

// ---- runs -------------------------------------------------------------------------------------

let deployment: Launched | undefined;
process.once('SIGINT', () => {
  void (deployment?.stop() ?? Promise.resolve()).finally(() => process.exit(130));
});

async function deploy(modelDir: string, policy: Policy): Promise<Launched> {
  deployment = await launch([
    '--model', modelDir, '--workers', String(config.workers), '--router', policy,
    '--http-port', String(await freePort()), '--kv-cache-memory', config.kvCacheMemory, '--log-level', 'warn',
  ]);
  return deployment;
}

async function runPolicy(modelDir: string, policy: Policy, requests: Request[]) {
  const server = await deploy(modelDir, policy);
  try {
    const before = prefixCounters(await getText(`${server.url}/metrics`));
    const { start, ok, errors } = await replay(server.url, modelDir, requests);
    const text = await getText(`${server.url}/metrics`);
    const after = prefixCounters(text);
    const seconds = ok.length ? (Math.max(...ok.map((o) => o.end)) - start) / 1000 : NaN;
    const ttft = ok.map((o) => o.ttftMs);
    const outputTokens = ok.reduce((s, o) => s + o.outputTokens, 0);
    return {
      policy,
      requests: requests.length,
      completed: ok.length,
      failed: errors.length,
      errors,
      ttftMs: { mean: mean(ttft), p50: pct(ttft, 50), p90: pct(ttft, 90), p99: pct(ttft, 99) },
      meanE2eMs: mean(ok.map((o) => o.e2eMs)),
      seconds,
      outputTokens,
      outputTokensPerSecond: outputTokens / seconds,
      prefixHitRate: (after.hits - before.hits) / (after.queries - before.queries),
      routerHitRate: policy === 'kv' ? metricSum(text, 'kvserve:router_prefix_hit_rate') : null,
    };
  } finally {
    await server.stop();
    deployment = undefined;
  }
}

type PolicyResult = Awaited<ReturnType<typeof runPolicy>>;

function printTable(title: string, rows: PolicyResult[]) {
  const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
  console.log(`\n${title}\n`);
  console.log('| policy | requests (failed) | mean TTFT ms | p50 | p90 | p99 | mean E2E ms | output tok/s | prefix hit rate | router hit rate |');
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(`| ${r.policy} | ${r.requests} (${r.failed}) | ${f(r.ttftMs.mean)} | ${f(r.ttftMs.p50)} | ${f(r.ttftMs.p90)} | ${f(r.ttftMs.p99)} | ` +
      `${f(r.meanE2eMs)} | ${f(r.outputTokensPerSecond)} | ${f(r.prefixHitRate, 3)} | ${r.routerHitRate === null ? '-' : f(r.routerHitRate, 3)} |`);
  }
  const [kv, rr] = rows;
  const ratios = ratiosOf(kv!, rr!);
  console.log(`| kv / round-robin | | ${f(ratios.meanTtft, 3)} | ${f(ratios.p50Ttft, 3)} | ${f(ratios.p90Ttft, 3)} | ${f(ratios.p99Ttft, 3)} | ` +
    `${f(ratios.meanE2e, 3)} | ${f(ratios.throughput, 3)} | ${f(ratios.prefixHitRate, 3)} | |`);
  for (const r of rows) for (const e of r.errors) console.log(`  ${r.policy} failure: ${e}`);
}

function ratiosOf(kv: PolicyResult, rr: PolicyResult) {
  return {
    meanTtft: kv.ttftMs.mean / rr.ttftMs.mean,
    p50Ttft: kv.ttftMs.p50 / rr.ttftMs.p50,
    p90Ttft: kv.ttftMs.p90 / rr.ttftMs.p90,
    p99Ttft: kv.ttftMs.p99 / rr.ttftMs.p99,
    meanE2e: kv.meanE2eMs / rr.meanE2eMs,
    throughput: kv.outputTokensPerSecond / rr.outputTokensPerSecond,
    prefixHitRate: kv.prefixHitRate / rr.prefixHitRate,
  };
}

async function runWorkload(modelDir: string, title: string, requests: Request[]) {
  const rows: PolicyResult[] = [];
  for (const policy of POLICIES) rows.push(await runPolicy(modelDir, policy, requests));
  printTable(title, rows);
  return { rows, ratios: ratiosOf(rows[0]!, rows[1]!) };
}

async function main() {
  const loadavgAtStart = os.loadavg();
  const { dir } = await ensureModel('tiny-llama');
  const shared = await runWorkload(dir, 'shared prefix', sharedPrefixWorkload());
  const control = await runWorkload(dir, 'low-sharing control', controlWorkload());
  const targets = {
    sharedMeanTtftSpeedup: { want: '>= 2', got: 1 / shared.ratios.meanTtft },
    sharedPrefixHitRateHigher: shared.rows[0]!.prefixHitRate > shared.rows[1]!.prefixHitRate,
    controlMeanTtftRatio: { want: '<= 1.10', got: control.ratios.meanTtft },
    controlThroughputRatio: { want: '>= 0.90', got: control.ratios.throughput },
  };
  console.log(`\ntargets: ${JSON.stringify(targets)}`);

  const date = new Date().toISOString();
  const result = { date, machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, loadavgAtStart }, model: dir, config, shared, control, targets };
  writeResult('router-serving', result, args.out);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
