// bench/faults/cases.ts: the fault-injection cases of `npm run test:faults` (run.ts runs one).
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startPrivateRedis, type PrivateRedis } from '../../ts/launcher/redis.ts';
import { DEFAULT_NAMESPACE, getWorker } from '../../ts/runtime/discovery.ts';
import { RedisConnection } from '../../ts/runtime/redis-connection.ts';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { packageRoot } from '../../ts/native/loader.ts';
import { procFile, until } from '../../test/helpers/launcher.ts';
import { Hosts, netnsUnavailable } from '../../test/helpers/netns.ts';
import { promptTokens } from '../../test/helpers/prompts.ts';
import { descendants, percentile, streamOnce, type CaseContext, type Deployment, type FaultCase } from './run.ts';

const comm = (pid: number) => procFile(pid, 'comm').trim();
const cmdline = (pid: number) => procFile(pid, 'cmdline').replaceAll('\0', ' ');

async function kill(ctx: CaseContext, name: string, signal: NodeJS.Signals = 'SIGKILL'): Promise<number> {
  const pid = await ctx.dep.workerPid(name);
  process.kill(pid, signal);
  ctx.notes.push(`${signal} ${name} (pid ${pid})`);
  return pid;
}

// Rank 1 of worker-0 (--worker-tp 2): sent `signal`, which the case's notes record; undefined
// (and the case failed) when worker-0 has no rank process.
async function signalRank(ctx: CaseContext, signal: NodeJS.Signals): Promise<number | undefined> {
  const worker = await ctx.dep.workerPid('worker-0');
  const rank = descendants(worker).find((p) => cmdline(p).includes('tp-rank-main'));
  if (rank === undefined) {
    ctx.fail('worker-0 has no rank process');
    return undefined;
  }
  process.kill(rank, signal);
  ctx.notes.push(`${signal} rank 1 of worker-0 (pid ${rank})`);
  return rank;
}

function redisPid(dep: Deployment): number {
  const pid = dep.descendants().find((p) => comm(p) === 'redis-server');
  if (pid === undefined) throw new Error('no redis-server under the launcher');
  return pid;
}

const REDIS_AWAY_MS = 5000;

// alsoBind: the address it listened on besides loopback, if any (it listens there again).
async function restartEmpty(ctx: CaseContext, own: () => PrivateRedis, replace: (r: PrivateRedis) => void, alsoBind?: string): Promise<void> {
  const old = own();
  old.process.kill('SIGKILL');
  await ctx.sleep(REDIS_AWAY_MS);
  replace(await startPrivateRedis({ port: old.port, password: old.password, alsoBind }));
  ctx.notes.push(`Redis on ${alsoBind ? `${alsoBind}:` : 'port '}${old.port} killed and started again empty after ${REDIS_AWAY_MS / 1000} s`);
}

// A case on a Redis of its own (--redis-url), which `restart` kills and starts again empty on its port.
function withOwnRedis(c: Omit<FaultCase, 'prepare' | 'inject'>, inject: (ctx: CaseContext, restart: () => Promise<void>) => Promise<void>): FaultCase {
  let redis: PrivateRedis;
  return {
    ...c,
    prepare: async () => {
      redis = await startPrivateRedis();
      return { args: ['--redis-url', redis.url], cleanup: () => redis.stop() };
    },
    inject: (ctx) => inject(ctx, () => restartEmpty(ctx, () => redis, (r) => (redis = r))),
  };
}

// The TTFTs of short streamed requests sent one at a time, each SAMPLE_EVERY_MS after the
// previous one started (or when it ended, if later): `count` of them, or as many as start before
// `until` settles. With `at`, each one's start in ms from the first.
const SAMPLE_EVERY_MS = 100;
async function shortTtfts(url: string, seed: number, opts: { count?: number; until?: Promise<unknown> }, at?: number[]): Promise<number[]> {
  let settled = false;
  void opts.until?.finally(() => (settled = true));
  const ttft: number[] = [];
  const t0 = performance.now();
  for (let i = 0; opts.count === undefined ? !settled : i < opts.count; i++) {
    const started = performance.now();
    const r = await streamOnce(url, promptTokens(seed + i, 24), undefined, 4);
    if (r.ttftMs !== undefined) {
      ttft.push(r.ttftMs);
      at?.push(started - t0);
    }
    await sleep(Math.max(0, started + SAMPLE_EVERY_MS - performance.now()));
  }
  return ttft;
}

// body: an object, or bytes serialized once (a 10 MB body stringified for every request would
// stall this process, which measures the TTFT, rather than the server).
const post = (url: string, path: string, body: unknown) =>
  fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body instanceof Uint8Array ? (body as unknown as string) : JSON.stringify(body) }).then(
    async (r) => ({ status: r.status, body: await r.text() }),
    (err: Error) => ({ status: 0, body: err.message }),
  );

const disagg = ['--max-local-prefill-length', '16'];

export const cases: FaultCase[] = [
  {
    name: 'kill -9 of a worker (monolith)',
    args: ['--workers', '2'],
    inject: async (ctx) => void (await kill(ctx, 'worker-0')),
  },
  {
    name: 'kill -9 of a worker, --no-restart',
    args: ['--workers', '2', '--no-restart'],
    allowFailures: true,
    gone: true,
    inject: async (ctx) => {
      await kill(ctx, 'worker-0');
      const code = await ctx.dep.exited;
      ctx.notes.push(`the launcher stopped the deployment (exit ${code}), as --no-restart asks`);
    },
  },
  {
    name: 'kill -9 of a decode worker',
    args: ['--decode-workers', '2', '--prefill-workers', '1', ...disagg],
    inject: async (ctx) => void (await kill(ctx, 'worker-0')),
  },
  {
    name: 'kill -9 of a prefill worker',
    args: ['--decode-workers', '1', '--prefill-workers', '2', ...disagg],
    inject: async (ctx) => void (await kill(ctx, 'prefill-0')),
  },
  {
    name: 'kill -9 of one tensor-parallel rank',
    args: ['--workers', '2', '--worker-tp', '2'],
    inject: async (ctx) => {
      await signalRank(ctx, 'SIGKILL');
    },
  },
  {
    // The rank's group gives up on it after 2 s stopped; the worker fails its requests, which
    // migrate, and the launcher restarts it (SIGCONT then finds the old rank killed).
    name: 'SIGSTOP of one tensor-parallel rank for 10 s, then SIGCONT',
    args: ['--workers', '2', '--worker-tp', '2'],
    durationMs: 4000,
    inject: async (ctx) => {
      const rank = await signalRank(ctx, 'SIGSTOP');
      if (rank === undefined) return;
      await ctx.sleep(10_000);
      try {
        process.kill(rank, 'SIGCONT');
      } catch {
        ctx.notes.push('rank 1 was gone by SIGCONT (its worker restarted)');
      }
    },
  },
  {
    name: 'SIGSTOP of a worker for 10 s, then SIGCONT',
    args: ['--workers', '2'],
    durationMs: 4000,
    inject: async (ctx) => {
      const pid = await kill(ctx, 'worker-0', 'SIGSTOP');
      await ctx.sleep(10_000);
      process.kill(pid, 'SIGCONT');
    },
  },
  {
    name: 'kill -9 of Redis (--router kv)',
    args: ['--workers', '2', '--router', 'kv'],
    inject: async (ctx) => {
      const pid = redisPid(ctx.dep);
      process.kill(pid, 'SIGKILL');
      ctx.notes.push(`SIGKILL redis-server (pid ${pid}); the launcher restarts it`);
    },
  },
  // While Redis is away the frontend routes on the workers it knew, and a decode worker prefills
  // locally; no request has to fail.
  withOwnRedis({ name: 'Redis away 5 s, then started empty (--router kv)', args: ['--workers', '2', '--router', 'kv'] }, (_ctx, restart) => restart()),
  withOwnRedis(
    { name: 'Redis away 5 s, then started empty (prefill workers)', args: ['--decode-workers', '1', '--prefill-workers', '1', ...disagg], durationMs: 10_000 },
    (_ctx, restart) => restart(),
  ),
  partitionOfAWorkerNode(),
  redisRestartWithAWorkerNode(),
  {
    name: 'client disconnect storm (100 streams aborted at random times)',
    args: ['--workers', '2'],
    inject: async (ctx) => {
      const storm = Array.from({ length: 100 }, async (_, i) => {
        const abort = new AbortController();
        setTimeout(() => abort.abort(), Math.random() * 2000);
        await streamOnce(ctx.dep.url, promptTokens(2000 + i, 30), abort.signal, 200);
      });
      ctx.extra(Promise.all(storm));
    },
  },
  {
    name: 'SIGTERM to the launcher with streams in flight',
    args: ['--workers', '2', '--shutdown-grace-s', '30'],
    allowFailures: true, // after SIGTERM: 503 shutting_down, then connection refused
    allowedFailures: /^(503 shutting_down|connection: .*)$/,
    gone: true,
    inject: async (ctx) => {
      process.kill(ctx.dep.launcherPid, 'SIGTERM');
      const code = await ctx.dep.exited;
      ctx.notes.push(`the launcher exited ${code} after draining`);
    },
  },
  {
    name: 'SIGTERM to npm run start with streams in flight',
    args: ['--workers', '2'],
    viaNpm: true,
    allowFailures: true,
    allowedFailures: /^(503 shutting_down|connection: .*)$/,
    gone: true,
    inject: async (ctx) => {
      process.kill(ctx.dep.launcherPid, 'SIGTERM');
      const code = await ctx.dep.exited;
      ctx.notes.push(`npm exited ${code} after the drain`);
    },
  },
  {
    name: 'kill -9 of the launcher',
    args: ['--workers', '2', '--router', 'kv'],
    allowFailures: true,
    allowedFailures: /^(connection: .*|finish abort|stream \w+|5\d\d \w+)$/,
    gone: true,
    durationMs: 3000,
    inject: async (ctx) => {
      process.kill(ctx.dep.launcherPid, 'SIGKILL');
      ctx.notes.push('SIGKILL the launcher');
    },
  },
  {
    // The issue's own mix: 4 bodies of 10 MB at once, 20 requests with n = 128, 20 with 1,000 prompts.
    name: 'a 10 MB body, n = 128 and 1,000-prompt requests mixed in',
    args: ['--workers', '2'],
    kernels: 'default',
    durationMs: 1000,
    inject: async (ctx) => {
      const url = ctx.dep.url;
      // The undisturbed TTFTs: 30 before the heavy requests and 30 after them, so that a drift of
      // the machine's speed over the case moves both sides.
      const before = await shortTtfts(url, 20_000, { count: 30 });
      const only = process.env.FAULTS_HEAVY_ONLY || undefined; // body | n | prompts: one kind alone, to see which costs what
      if (only !== undefined && !['body', 'n', 'prompts'].includes(only)) throw new Error(`FAULTS_HEAVY_ONLY must be body, n or prompts, got '${only}'`);
      const big = Buffer.from(JSON.stringify({ messages: [{ role: 'user', content: 'x'.repeat(10 << 20) }] }));
      const codes = new Map<string, number>();
      const send = (what: string, path: string, body: unknown) =>
        post(url, path, body).then((r) => void codes.set(`${what} ${r.status}`, (codes.get(`${what} ${r.status}`) ?? 0) + 1));
      const times = (n: number, kind: string, f: () => Promise<void>) => (!only || only === kind ? Array.from({ length: n }, f) : []);
      const heavy = Promise.all([
        ...times(4, 'body', () => send('10 MB body', '/v1/chat/completions', big)),
        ...times(20, 'n', () => send('n = 128', '/v1/completions', { prompt: promptTokens(3100, 40), max_tokens: 16, n: 128, ignore_eos: true })),
        ...times(20, 'prompts', () => send('1,000 prompts', '/v1/completions', { prompt: Array.from({ length: 1000 }, () => 'Hi'), max_tokens: 4 })),
      ]);
      await ctx.sleep(300);
      const at: number[] = [];
      const during = await shortTtfts(url, 30_000, { until: heavy }, at);
      await heavy;
      const quiet = percentile([...before, ...(await shortTtfts(url, 40_000, { count: 30 }))], 50);
      const loaded = percentile(during, 50);
      const firstSecond = during.filter((_, i) => at[i]! < 1000);
      ctx.notes.push(`median TTFT of a short request beside the load ${quiet.toFixed(0)} ms, with the heavy requests in flight ${loaded.toFixed(0)} ms (${(loaded / quiet).toFixed(2)}x; ${during.length} requests over ${(at.at(-1)! / 1000).toFixed(1)} s, p90 ${percentile(during, 90).toFixed(0)} ms; the first second's median ${percentile(firstSecond, 50).toFixed(0)} ms)`);
      ctx.notes.push(`heavy requests: ${[...codes].map(([k, v]) => `${k}: ${v}`).join(', ')}`);
      if (!(loaded <= 2 * quiet)) ctx.fail(`TTFT with heavy requests is ${(loaded / quiet).toFixed(2)}x the undisturbed one (> 2x)`);
    },
  },
];

const NODE_SECRET = 'fault-suite-cluster-secret-0123';
const PARTITION_MS = 8000;

// What a case with a worker node on another host sees: the hosts, the node's worker id, and a
// restart of the Redis the deployment and the node share (killed -9, started again empty on the
// same port and addresses after REDIS_AWAY_MS).
interface NodeContext {
  hosts: Hosts;
  far: string;
  restartRedis(): Promise<void>;
  // Whether the far node's worker holds its lease in the Redis now.
  leased(): Promise<boolean>;
  // Passes once the frontend routes to the far node (its id on /metrics) within `ms`.
  routed(ms?: number): Promise<boolean>;
}

// A worker node on another "host" (a network namespace, test/helpers/netns.ts) beside the
// deployment's own worker (args), both on a private Redis this process starts on an address of
// the hosts' network. inject runs once the frontend routes to the node. Root only (skipped with
// the reason elsewhere).
function withAWorkerNode(c: Omit<FaultCase, 'prepare' | 'inject' | 'skip'>, inject: (ctx: CaseContext, node: NodeContext) => Promise<void>): FaultCase {
  let hosts: Hosts | undefined;
  let redis: PrivateRedis | undefined;
  let here = '';
  let node: ReturnType<Hosts['spawn']> | undefined;
  return {
    ...c,
    skip: netnsUnavailable,
    prepare: async () => {
      const modelDir = (await ensureModel('tiny-llama')).dir;
      const cleanup = async () => {
        if (node && node.exitCode === null && node.signalCode === null) node.kill('SIGTERM');
        await redis?.stop();
        hosts?.destroy();
        delete process.env.KVSERVE_CLUSTER_SECRET;
      };
      try {
        hosts = new Hosts(['far']);
        here = `${hosts.subnet}.254`; // this process's address on the hosts' network
        redis = await startPrivateRedis({ alsoBind: here });
        const env = {
          ...process.env,
          KVSERVE_CPU_KERNELS: 'reference',
          KVSERVE_REDIS_URL: `redis://:${redis.password}@${here}:${redis.port}`,
          KVSERVE_CLUSTER_SECRET: NODE_SECRET,
        };
        const args = ['--import', 'tsx', path.join(packageRoot, 'ts/launcher/main.ts'), '--role', 'worker', '--model', modelDir, '--device', 'cpu', '--kv-cache-memory', '64MiB'];
        node = hosts.spawn('far', process.execPath, args, env, packageRoot);
        let out = '';
        node.stdout!.on('data', (d) => (out += d));
        node.stderr!.on('data', (d) => (out += d));
        await until('the worker node is ready', async () => {
          if (node!.exitCode !== null) throw new Error(`the worker node exited (${node!.exitCode}):\n${out}`);
          return /\] ready: /.test(out);
        }, 120_000);
        process.env.KVSERVE_CLUSTER_SECRET = NODE_SECRET; // the deployment's frontend talks to the node with it
        return { args: ['--redis-url', redis.url], cleanup };
      } catch (err) {
        await cleanup();
        throw err;
      }
    },
    inject: async (ctx) => {
      const far = `worker-0@${hosts!.get('far').address}`;
      const routed = (ms = 30_000) =>
        until('the frontend routes to the far node', async () => (await (await fetch(`${ctx.dep.url}/metrics`)).text()).includes(`worker_id="${far}"`), ms, 500).then(
          () => true,
          () => false,
        );
      if (!(await routed())) return ctx.fail(`the frontend never routed to ${far}`);
      const restartRedis = () => restartEmpty(ctx, () => redis!, (r) => (redis = r), here);
      const leased = async () => {
        const conn = new RedisConnection(redis!.url, { name: 'fault-suite', log: () => undefined });
        try {
          await conn.whenReady(2000);
          return (await getWorker(conn.redis, DEFAULT_NAMESPACE, far)) !== null;
        } catch {
          return false;
        } finally {
          await conn.close();
        }
      };
      await inject(ctx, { hosts: hosts!, far, restartRedis, routed, leased });
    },
  };
}

// The node's link goes down for PARTITION_MS under load, then comes back. Its streams migrate to
// the local worker (--stall-timeout-s 2 finds them stalled), and when the link is back it
// rejoins; no request may fail.
function partitionOfAWorkerNode(): FaultCase {
  return withAWorkerNode(
    { name: 'network partition of a worker node (--role worker in a network namespace)', args: ['--workers', '1', '--router', 'kv', '--stall-timeout-s', '2'], durationMs: 12_000 },
    async (ctx, { hosts, far, routed }) => {
      hosts.linkDown('far');
      ctx.notes.push(`link of ${far} down for ${PARTITION_MS / 1000} s`);
      await ctx.sleep(PARTITION_MS);
      hosts.linkUp('far');
      if (await routed()) ctx.notes.push(`${far} rejoined after the link came back`);
      else ctx.fail(`${far} did not rejoin within 30 s of the link coming back`);
    },
  );
}

// The Redis of a deployment with a worker node on another host is killed and started again empty:
// the node's worker, over the network, announces its lease again and replays its KV events, and
// the frontend routes to it again; no request may fail meanwhile.
function redisRestartWithAWorkerNode(): FaultCase {
  return withAWorkerNode(
    { name: 'Redis away 5 s, then started empty, with a worker node on another host (--router kv)', args: ['--workers', '1', '--router', 'kv'], durationMs: 12_000 },
    async (ctx, { far, restartRedis, routed, leased }) => {
      await restartRedis();
      const back = await until('the far node\'s lease in the new Redis', leased, 30_000, 250).then(() => true, () => false);
      if (!back) return ctx.fail(`${far} held no lease in the new Redis within 30 s of its start`);
      if (await routed()) ctx.notes.push(`${far} leased again and routed to after Redis came back`);
      else ctx.fail(`${far} was leased again but not routed to within 30 s`);
    },
  );
}
