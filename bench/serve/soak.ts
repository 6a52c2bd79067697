// soak.ts: `npm run bench -- --scenario soak [--duration 30m] [--sample-interval 10s]
// [--max-concurrency 8] [-- launcher flags]`: one deployment under a steady mixed load for a long
// time, to show that nothing grows.
//
// The deployment: 2 decode workers and 1 prefill worker under --router kv (prompts over 256
// tokens prefilled remotely), on a Redis of the bench's own (so that its memory can be read), or
// the launcher flags given after `--` instead of that topology.
// The load: `--max-concurrency` client loops (default 8), each picking per request:
//   random    45%  a fresh prompt of 32-384 tokens, 16-64 greedy tokens, streamed
//   shared    25%  one of 8 prefixes of 384 tokens + 32 fresh ones, 16 tokens (prefix cache, routing)
//   aborted   20%  a prompt of 64-256 tokens asking 256 tokens, the stream dropped after 20-1500 ms
//   bad       10%  one of the bad requests the tests send (bad-inputs.ts: bad JSON, bad fields,
//                  over-long prompts, HTTP the parser refuses), each expecting its own 4xx
// Every --sample-interval (default 10 s): the resident memory (in all, private, shared) and open
// file descriptors of every process of the deployment, the KV blocks active on each worker, and
// Redis's used memory and key count.
// The verdict, per series, over the samples after the first fifth of the run (warm-up): the
// least-squares slope times that span must stay within 10% of the series' mean or a floor
// (16 MiB, 8 fds, Redis 1 MiB, 64 keys). Memory is judged on private pages (RssAnon), where a
// leak grows: the shared pages are the KV pools (a worker's own, and a prefill worker's mapping of
// its decode workers' for the transfer), resident as their blocks are first touched, up to the
// pools' size; they are charted, not judged. After the load stops every worker must settle to 0
// active blocks; no process may have been restarted; every request must end as its kind expects.
import fs from 'node:fs';
import type * as vl from 'vega-lite';
import { Redis } from 'ioredis';
import { startPrivateRedis, type PrivateRedis } from '../../ts/launcher/redis.ts';
import { badHttpCases, badInputCases, sendRawHttp } from '../../test/helpers/bad-inputs.ts';
import { descendants, streamOnce, workerActiveBlocks } from '../faults/run.ts';
import { parentPid, procFile, readyWorkers } from '../../test/helpers/launcher.ts';
import { sendCompletion } from './client.ts';
import { startDeployment, type Launched } from './deployment.ts';
import { BenchFlagError, int, type CliOptions } from './flags.ts';
import { randomInt, randomTokens, seededRng, type Rng } from './random.ts';
import type { Report, RunReport } from './report.ts';
import { errorCounts, summarize, type RequestRecord } from './stats.ts';

const DEFAULT_TOPOLOGY = ['--decode-workers', '2', '--prefill-workers', '1', '--router', 'kv', '--max-local-prefill-length', '256', '--kv-cache-memory', '128MiB'];
const KINDS = [
  ['random', 0.45],
  ['shared', 0.25],
  ['aborted', 0.2],
  ['bad', 0.1],
] as const;
type Kind = (typeof KINDS)[number][0];
const PREFIXES = 8;
const PREFIX_LEN = 384;
const WARMUP_FRACTION = 0.2;
const SETTLE_MS = 15_000;

export interface SoakOptions {
  durationMs: number;
  sampleMs: number;
  concurrency: number;
  seed: number;
}

// "30m", "90s", "1h", "1500ms" or plain seconds.
export function parseDuration(flag: string, v: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(v.trim());
  const ms = m ? Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'] : NaN;
  if (!(ms > 0)) throw new BenchFlagError(`--${flag} takes a duration such as 30m, 90s or 1h, got '${v}'`);
  return ms;
}

export function soakOptions(cli: CliOptions): SoakOptions {
  const f = cli.flags;
  const o = {
    durationMs: parseDuration('duration', f.duration ?? '30m'),
    sampleMs: parseDuration('sample-interval', f['sample-interval'] ?? '10s'),
    concurrency: int('max-concurrency', f['max-concurrency'] ?? '8', 1),
    seed: int('seed', f.seed ?? '0', 0),
  };
  if (o.sampleMs * 5 > o.durationMs) throw new BenchFlagError(`--duration must be at least 5 sample intervals (${o.sampleMs * 5} ms) for the slopes to mean something`);
  return o;
}

// What one sample saw; maps are by a process's or worker's name.
interface Sample {
  t: number; // seconds since the load started
  rssMiB: Record<string, number>; // resident in all: private, file and shared-memory pages
  anonMiB: Record<string, number>; // resident private pages (RssAnon): what a leak grows
  shmemMiB: Record<string, number>; // resident shared memory (RssShmem): the KV pool's pages as they are touched
  fds: Record<string, number>;
  activeBlocks: Record<string, number>;
  redisMiB: number;
  redisKeys: number;
}

interface KindCount {
  sent: number;
  ok: number;
  unexpected: Map<string, number>; // what went wrong -> count
}

// The processes of a deployment by name: launcher, frontend, each worker by its id (rank
// processes as "<worker> rank N"), the Redis; what else runs under the launcher by its comm.
class ProcessNames {
  private byPid = new Map<number, string>();
  constructor(private d: Launched, private redis: PrivateRedis | null) {}

  // Each ready worker's address, by name.
  workers(): Map<string, string> {
    return readyWorkers(this.d.output());
  }

  // Current name -> pid of every process; a new pid is named from /info or its command line.
  async current(): Promise<Map<string, number>> {
    const launcher = this.d.proc.pid!;
    const pids = [launcher, ...descendants(launcher), ...(this.redis ? [this.redis.process.pid!] : [])];
    if (pids.some((p) => !this.byPid.has(p))) {
      for (const [name, address] of this.workers()) {
        const info = (await fetch(`${address}/info`, { signal: AbortSignal.timeout(2000) }).then((r) => r.json()).catch(() => null)) as { pid?: number } | null;
        if (info?.pid) this.byPid.set(info.pid, name);
      }
    }
    const out = new Map<string, number>();
    for (const pid of pids) {
      let name = this.byPid.get(pid);
      if (name === undefined) {
        const cmd = procFile(pid, 'cmdline').replaceAll('\0', ' ');
        const comm = procFile(pid, 'comm').trim();
        const rank = / --rank (\d+)/.exec(cmd);
        const parent = this.byPid.get(parentPid(pid));
        if (pid === launcher) name = 'launcher';
        else if (comm === 'redis-server') name = 'redis-server';
        else if (cmd.includes('ts/frontend/main.ts')) name = 'frontend';
        else if (rank && parent) name = `${parent} rank ${rank[1]}`;
        else name = `${comm} (${pid})`;
        if (!name.includes('(')) this.byPid.set(pid, name);
      }
      out.set(name, pid);
    }
    return out;
  }
}

// VmRSS, RssAnon and RssShmem of /proc/PID/status, MiB.
function memoryMiB(pid: number): { rss: number; anon: number; shmem: number } {
  const status = procFile(pid, 'status');
  const field = (name: string) => Number(new RegExp(`${name}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN) / 1024;
  return { rss: field('VmRSS'), anon: field('RssAnon'), shmem: field('RssShmem') };
}

function openFds(pid: number): number {
  try {
    return fs.readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return NaN;
  }
}

async function redisStats(redis: Redis): Promise<{ mib: number; keys: number }> {
  try {
    const info = await redis.info('memory');
    const used = Number(/used_memory:(\d+)/.exec(info)?.[1]);
    return { mib: used / 2 ** 20, keys: await redis.dbsize() };
  } catch {
    return { mib: NaN, keys: NaN };
  }
}

// One client loop's requests until `until`; random and shared requests as RequestRecords.
async function clientLoop(ctx: LoadContext, loop: number, until: number): Promise<void> {
  const rng = seededRng(ctx.seed * 1000 + loop + 1);
  while (performance.now() < until) {
    const kind = pick(rng);
    const count = ctx.counts.get(kind)!;
    count.sent++;
    const problem = await ctx.send[kind](rng);
    if (problem === null) count.ok++;
    else count.unexpected.set(problem, (count.unexpected.get(problem) ?? 0) + 1);
  }
}

function pick(rng: Rng): Kind {
  let x = rng();
  for (const [kind, share] of KINDS) if ((x -= share) < 0) return kind;
  return KINDS[0][0];
}

interface LoadContext {
  seed: number;
  counts: Map<Kind, KindCount>;
  send: Record<Kind, (rng: Rng) => Promise<string | null>>; // null: ended as the kind expects
}

function loadContext(url: string, model: string, maxModelLen: number, seed: number, records: RequestRecord[], t0: number): LoadContext {
  const prefixes = Array.from({ length: PREFIXES }, (_, i) => randomTokens(seededRng(seed * 7 + i + 100), PREFIX_LEN));
  const badJson = badInputCases(model, maxModelLen);
  const badHttp = badHttpCases();
  const { hostname, port } = new URL(url);
  let session = 0;
  const completion = async (prompt: number[], maxTokens: number): Promise<string | null> => {
    const startMs = performance.now() - t0;
    const { outputIds: _, ...t } = await sendCompletion(url, model, prompt, maxTokens, false);
    records.push({ session: session++, turn: 0, startMs, promptTokens: prompt.length, maxTokens, ...t });
    if (t.error !== null) return t.error;
    return t.outputTokens === maxTokens ? null : `${t.outputTokens} tokens of ${maxTokens}`;
  };
  return {
    seed,
    counts: new Map(KINDS.map(([k]) => [k, { sent: 0, ok: 0, unexpected: new Map() }])),
    send: {
      random: (rng) => completion(randomTokens(rng, randomInt(rng, 32, 384)), randomInt(rng, 16, 64)),
      shared: (rng) => completion([...prefixes[randomInt(rng, 0, PREFIXES - 1)]!, ...randomTokens(rng, 32)], 16),
      aborted: async (rng) => {
        const r = await streamOnce(url, randomTokens(rng, randomInt(rng, 64, 256)), AbortSignal.timeout(randomInt(rng, 20, 1500)), 256);
        if (r.error === 'client aborted' || r.finish === 'length') return null;
        return r.hung ? 'hung' : (r.error ?? r.unclean ?? `ended with finish_reason ${r.finish}`);
      },
      bad: async (rng) => {
        const i = randomInt(rng, 0, badJson.length + badHttp.length - 1);
        if (i >= badJson.length) {
          const c = badHttp[i - badJson.length]!;
          const r = await sendRawHttp(hostname, Number(port), c.raw).catch((err: Error) => ({ status: 0, body: err.message }));
          return r.status === c.status && r.body.includes(`"code":"${c.code}"`) ? null : `${c.name}: HTTP ${r.status} ${r.body.slice(0, 120)}`;
        }
        const c = badJson[i]!;
        const raw = typeof c.raw === 'string' || c.raw === undefined ? (c.raw ?? JSON.stringify(c.body)) : new Uint8Array(c.raw);
        const res = await fetch(`${url}${c.url ?? '/v1/chat/completions'}`, {
          method: 'POST',
          headers: { 'content-type': c.contentType ?? 'application/json' },
          body: raw,
          signal: AbortSignal.timeout(30_000),
        }).catch((err: Error) => err);
        if (res instanceof Error) return `${c.name}: ${res.message}`;
        const body = (await res.json().catch(() => null)) as { error?: { message?: string; type?: string; code?: string } } | null;
        if (res.status !== c.status) return `${c.name}: HTTP ${res.status}, expected ${c.status}`;
        if (!body?.error?.message || !body.error.type) return `${c.name}: HTTP ${res.status} without an OpenAI error body`;
        return c.code !== undefined && body.error.code !== c.code ? `${c.name}: code ${body.error.code}, expected ${c.code}` : null;
      },
    },
  };
}

export interface SeriesVerdict {
  series: string;
  mean: number;
  growth: number; // slope x the span after warm-up, in the series' unit
  allowed: number;
  flat: boolean;
}

const FLOORS = { rss: 16, fds: 8, redis: 1, keys: 64 } as const;

// Least-squares slope of (t, y) times the span of t; NaN points are left out.
export function growthOver(points: readonly { t: number; y: number }[]): { growth: number; mean: number } {
  const p = points.filter((q) => Number.isFinite(q.y));
  if (p.length < 2) return { growth: NaN, mean: NaN };
  const mt = p.reduce((s, q) => s + q.t, 0) / p.length;
  const my = p.reduce((s, q) => s + q.y, 0) / p.length;
  const sxx = p.reduce((s, q) => s + (q.t - mt) ** 2, 0);
  const sxy = p.reduce((s, q) => s + (q.t - mt) * (q.y - my), 0);
  const span = p[p.length - 1]!.t - p[0]!.t;
  return { growth: sxx > 0 ? (sxy / sxx) * span : 0, mean: my };
}

// Every series of the samples after warm-up: flat when its growth is within 10% of its mean or
// its floor, whichever is larger.
export function flatness(samples: readonly Sample[], warmupS: number): SeriesVerdict[] {
  const after = samples.filter((s) => s.t >= warmupS);
  const verdicts: SeriesVerdict[] = [];
  const judge = (series: string, floor: number, y: (s: Sample) => number | undefined) => {
    const { growth, mean } = growthOver(after.map((s) => ({ t: s.t, y: y(s) ?? NaN })));
    const allowed = Math.max(0.1 * Math.abs(mean), floor);
    verdicts.push({ series, mean, growth, allowed, flat: Number.isFinite(growth) && growth <= allowed });
  };
  const names = (f: (s: Sample) => Record<string, number>) => [...new Set(samples.flatMap((s) => Object.keys(f(s))))];
  for (const n of names((s) => s.anonMiB)) judge(`private RSS MiB: ${n}`, FLOORS.rss, (s) => s.anonMiB[n]);
  for (const n of names((s) => s.fds)) judge(`open fds: ${n}`, FLOORS.fds, (s) => s.fds[n]);
  judge('Redis used memory MiB', FLOORS.redis, (s) => s.redisMiB);
  judge('Redis keys', FLOORS.keys, (s) => s.redisKeys);
  return verdicts;
}

function lineChart(title: string, yTitle: string, values: { t: number; series: string; y: number }[]): vl.TopLevelSpec {
  return {
    title, width: 560, height: 320, config: { aria: false }, data: { values: values.filter((v) => Number.isFinite(v.y)) },
    mark: 'line',
    encoding: {
      x: { field: 't', type: 'quantitative', title: 'time since the load started (s)' },
      y: { field: 'y', type: 'quantitative', title: yTitle },
      color: { field: 'series', type: 'nominal', sort: null, title: null },
    },
  };
}

export function soakCharts(samples: readonly Sample[]): [string, vl.TopLevelSpec][] {
  const per = (f: (s: Sample) => Record<string, number>) => samples.flatMap((s) => Object.entries(f(s)).map(([series, y]) => ({ t: s.t, series, y })));
  return [
    ['rss', lineChart('soak: resident memory of every process (private, file and shared pages)', 'RSS (MiB)', per((s) => s.rssMiB))],
    ['private-rss', lineChart('soak: resident private memory of every process (RssAnon)', 'private RSS (MiB)', per((s) => s.anonMiB))],
    ['shmem', lineChart('soak: resident shared memory of every process (KV pools, own and mapped peers)', 'shared RSS (MiB)', per((s) => s.shmemMiB))],
    ['fds', lineChart('soak: open file descriptors of every process', 'open fds', per((s) => s.fds))],
    ['active-blocks', lineChart('soak: KV blocks active on each worker', 'active blocks', per((s) => s.activeBlocks))],
    ['redis', lineChart('soak: Redis', 'MiB / keys', samples.flatMap((s) => [{ t: s.t, series: 'used memory (MiB)', y: s.redisMiB }, { t: s.t, series: 'keys', y: s.redisKeys }]))],
  ];
}

const fmt = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');

function soakMarkdown(o: SoakOptions, counts: Map<Kind, KindCount>, verdicts: SeriesVerdict[], checks: { what: string; ok: boolean; detail: string }[], pass: boolean): string {
  const kindRows = [...counts].map(([k, c]) => {
    const problems = [...c.unexpected].map(([m, n]) => `${n} x ${m}`).join('; ');
    return `| ${k} | ${c.sent} | ${c.ok} | ${c.sent - c.ok} | ${problems.replaceAll('|', '/').slice(0, 300)} |`;
  });
  return [
    `#### soak: ${fmt(o.durationMs / 60_000)} min, ${o.concurrency} client loops, a sample every ${fmt(o.sampleMs / 1000)} s: ${pass ? 'PASS' : 'FAIL'}`, '',
    '| kind | sent | as expected | otherwise | what went otherwise |', '|---|---:|---:|---:|---|', ...kindRows, '',
    '| check | ok | detail |', '|---|---|---|', ...checks.map((c) => `| ${c.what} | ${c.ok ? 'yes' : 'no'} | ${c.detail} |`), '',
    `Growth after the warm-up (the first ${WARMUP_FRACTION * 100}% of the run): the least-squares slope times the span, against 10% of the mean or a floor.`, '',
    '| series | mean | growth | allowed | flat |', '|---|---:|---:|---:|---|',
    ...verdicts.map((v) => `| ${v.series} | ${fmt(v.mean)} | ${fmt(v.growth, 2)} | ${fmt(v.allowed)} | ${v.flat ? 'yes' : 'NO'} |`),
  ].join('\n');
}

export async function runSoak(cli: CliOptions, base: Omit<Report, 'kind' | 'title' | 'groups' | 'target'>): Promise<Report> {
  const o = soakOptions(cli);
  const userTopology = cli.launcherArgs.length > 0;
  const ownRedis = cli.launcherArgs.includes('--redis-url') ? null : await startPrivateRedis();
  const launcherArgs = [...(userTopology ? cli.launcherArgs : DEFAULT_TOPOLOGY), ...(ownRedis ? ['--redis-url', ownRedis.url] : [])];
  const shown = launcherArgs.map((a) => (ownRedis && a === ownRedis.url ? 'redis://:***@127.0.0.1:' + ownRedis.port : a));
  process.stderr.write(`soak: starting npm run start -- ${shown.join(' ')}\n`);
  let d: Launched | null = null;
  let redis: Redis | null = null;
  try {
    d = await startDeployment(launcherArgs);
    const url = d.url;
    const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string; max_model_len: number }[] };
    const { id: model, max_model_len: maxModelLen } = models.data[0]!;
    redis = ownRedis ? new Redis(ownRedis.url, { lazyConnect: false, maxRetriesPerRequest: 1 }) : null;
    const names = new ProcessNames(d, ownRedis);
    const samples: Sample[] = [];
    const records: RequestRecord[] = [];
    const t0 = performance.now();
    const firstPids = await names.current();
    const restarted = new Set<string>();
    const takeSample = async () => {
      const now = await names.current();
      const s: Sample = { t: (performance.now() - t0) / 1000, rssMiB: {}, anonMiB: {}, shmemMiB: {}, fds: {}, activeBlocks: await workerActiveBlocks(names.workers()), redisMiB: NaN, redisKeys: NaN };
      for (const [name, pid] of now) {
        const m = memoryMiB(pid);
        s.rssMiB[name] = m.rss;
        s.anonMiB[name] = m.anon;
        s.shmemMiB[name] = m.shmem;
        s.fds[name] = openFds(pid);
        const first = firstPids.get(name);
        if (first !== undefined && first !== pid) restarted.add(`${name} (pid ${first} -> ${pid})`);
      }
      for (const name of firstPids.keys()) if (!now.has(name)) restarted.add(`${name} (gone)`);
      if (redis) Object.assign(s, (({ mib, keys }) => ({ redisMiB: mib, redisKeys: keys }))(await redisStats(redis)));
      samples.push(s);
      process.stderr.write(`soak: ${fmt(s.t, 0)} s: ${Object.values(s.rssMiB).reduce((a, b) => a + b, 0).toFixed(0)} MiB RSS in all, ${records.length} completions, ${Object.values(s.activeBlocks).reduce((a, b) => a + b, 0)} active blocks, Redis ${fmt(s.redisMiB, 2)} MiB\n`);
    };
    await takeSample();
    const sampler = setInterval(() => void takeSample(), o.sampleMs);
    const ctx = loadContext(url, model, maxModelLen, o.seed, records, t0);
    const until = t0 + o.durationMs;
    await Promise.all(Array.from({ length: o.concurrency }, (_, i) => clientLoop(ctx, i, until)));
    const loadMs = performance.now() - t0;
    clearInterval(sampler);
    // The load has stopped: every worker settles to no active block.
    const settleEnd = Date.now() + SETTLE_MS;
    let loads = await workerActiveBlocks(names.workers());
    while (Object.values(loads).some((b) => b !== 0) && Date.now() < settleEnd) {
      await new Promise((r) => setTimeout(r, 250));
      loads = await workerActiveBlocks(names.workers());
    }
    await takeSample();

    const verdicts = flatness(samples, (o.durationMs / 1000) * WARMUP_FRACTION);
    const unexpected = [...ctx.counts.values()].reduce((n, c) => n + c.sent - c.ok, 0);
    const held = Object.entries(loads).filter(([, b]) => b !== 0);
    const checks = [
      { what: 'every request ended as its kind expects', ok: unexpected === 0, detail: `${unexpected} did not` },
      { what: `no active KV block ${SETTLE_MS / 1000} s after the load stopped`, ok: held.length === 0, detail: held.length ? held.map(([w, b]) => `${w}: ${b}`).join(', ') : Object.keys(loads).join(', ') + ': 0' },
      { what: 'no process restarted or gone', ok: restarted.size === 0, detail: restarted.size ? [...restarted].join(', ') : `${firstPids.size} processes, the same pids throughout` },
      { what: 'every series flat after the warm-up', ok: verdicts.every((v) => v.flat), detail: verdicts.filter((v) => !v.flat).map((v) => v.series).join(', ') || `${verdicts.length} series` },
    ];
    const pass = checks.every((c) => c.ok);
    const run: RunReport = {
      name: 'random and shared-prefix completions',
      model,
      launcherArgs: shown,
      maxConcurrency: o.concurrency,
      summary: summarize(records, loadMs),
      prefixCacheHitRate: null,
      errors: errorCounts(records),
      requests: records,
    };
    return {
      ...base,
      kind: 'scenario-soak',
      title: 'soak: one deployment under a steady mixed load',
      target: 'its own deployment',
      groups: [{ title: 'soak', workload: `${o.concurrency} client loops for ${fmt(o.durationMs / 60_000)} min: random 45%, shared prefix 25%, aborted 20%, bad requests 10%`, options: null, runs: [run] }],
      extra: {
        markdown: soakMarkdown(o, ctx.counts, verdicts, checks, pass),
        data: { options: o, pass, checks, verdicts, counts: Object.fromEntries([...ctx.counts].map(([k, c]) => [k, { ...c, unexpected: Object.fromEntries(c.unexpected) }])), samples },
        charts: soakCharts(samples),
      },
    };
  } finally {
    redis?.disconnect();
    await d?.stop();
    await ownRedis?.stop();
  }
}
