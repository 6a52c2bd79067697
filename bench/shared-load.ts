// bench/shared-load.ts: `npm run bench:shared-load`: what sharing the routers' load between
// frontends costs (ts/runtime/load-sharing.ts), against a real private redis-server. Two routers,
// A and B, each with its LoadSharing, over the same `workers` idle workers (no index: the cost is
// the load part's). Measures, with a decision made one per event-loop turn as requests arrive:
//   - the routing decision's time in A with sharing on and off (route + finish, the decision
//     itself never touches Redis; on adds the snapshot bookkeeping), interleaved in rounds;
//   - Redis commands per decision: PUBLISHes counted by the server (INFO commandstats) over the
//     run with sharing on, and the snapshot's size;
//   - staleness: from A's decision to B's router showing it (pub/sub hop + both event loops),
//     p50 / p99 / max over `samples` decisions, one at a time.
// With --deployment: instead, two real frontend processes and two real workers (tiny-llama) on
// one Redis, `requests` completions (256-token prompts, 16 tokens out) sent to the two
// frontends in turn, `concurrency` at a time; counts the snapshots on `<ns>:frontend-load` (a
// subscriber of its own) per request, and how the requests spread over the workers.
// Flags: --workers 8, --decisions 20000, --rounds 3, --samples 500, --deployment,
//        --requests 64, --concurrency 8, --no-sharing (the deployment without it), --out FILE.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startPrivateRedis } from '../ts/launcher/redis.ts';
import type { BlockHash, RequestId, WorkerId } from '../ts/protocol/index.ts';
import { KvRouter, seededRng } from '../ts/router/index.ts';
import { LoadSharing } from '../ts/runtime/load-sharing.ts';
import { RedisConnection } from '../ts/runtime/redis-connection.ts';

const { values: args } = parseArgs({
  options: {
    workers: { type: 'string', default: '8' },
    decisions: { type: 'string', default: '20000' },
    rounds: { type: 'string', default: '3' },
    samples: { type: 'string', default: '500' },
    deployment: { type: 'boolean', default: false },
    'no-sharing': { type: 'boolean', default: false },
    requests: { type: 'string', default: '64' },
    concurrency: { type: 'string', default: '8' },
    out: { type: 'string' },
  },
});
const config = { workers: Number(args.workers), decisions: Number(args.decisions), rounds: Number(args.rounds), samples: Number(args.samples), promptBlocks: 64 };

const hash = (i: number) => i.toString(16).padStart(16, '0') as BlockHash;
const prompt = (i: number) => Array.from({ length: config.promptBlocks }, (_, k) => hash(i * 1000 + k));
const turn = () => new Promise<void>((r) => setImmediate(r));
const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;

function makeRouter(seed: number, changed: () => void): KvRouter {
  const router = new KvRouter({ blockSize: 16, rng: seededRng(seed), holdUntilPrefilled: true, onPendingChange: changed });
  for (let w = 0; w < config.workers; w++) router.addWorker({ workerId: `w${w}` as WorkerId, blockSize: 16, kvTotalBlocks: 1 << 20, requestTotalSlots: 1 << 16 });
  return router;
}

async function publishCount(conn: RedisConnection): Promise<number> {
  const info = (await conn.redis.info('commandstats')) as string;
  return Number(/cmdstat_publish:calls=(\d+)/.exec(info)?.[1] ?? 0);
}

async function main(): Promise<void> {
  const redis = await startPrivateRedis();
  const admin = new RedisConnection(redis.url, { name: 'bench-admin' });
  await admin.whenReady(5000);
  let sharingA: LoadSharing | undefined;
  let sharingB: LoadSharing | undefined;
  let bSeen: (() => void) | undefined;
  const a = makeRouter(1, () => sharingA?.changed());
  const b = makeRouter(2, () => sharingB?.changed());
  sharingA = new LoadSharing({ url: redis.url, namespace: 'bench', frontendId: 'A', ownLoad: () => a.pendingLoad(), onRemote: (w, s) => a.setRemoteLoad(w, s) });
  sharingB = new LoadSharing({
    url: redis.url,
    namespace: 'bench',
    frontendId: 'B',
    ownLoad: () => b.pendingLoad(),
    onRemote: (w, s) => {
      b.setRemoteLoad(w, s);
      bSeen?.();
    },
  });
  await Promise.all([sharingA.start(), sharingB.start()]);
  const plain = makeRouter(1, () => undefined);

  // 1. Decision time, sharing on (A) and off (plain), one decision per event-loop turn; each
  //    request finishes 8 decisions later, so the pending part keeps changing.
  let id = 0;
  const loopMs = { on: 0, off: 0 };
  async function run(router: KvRouter, n: number, which?: 'on' | 'off'): Promise<number[]> {
    const start = performance.now();
    const times: number[] = [];
    const live: RequestId[] = [];
    for (let i = 0; i < n; i++) {
      const requestId = `r${id++}` as RequestId;
      const t = performance.now();
      router.tryRoute({ requestId, blockHashes: prompt(i) });
      live.push(requestId);
      if (live.length > 8) router.finish(live.shift()!);
      times.push(performance.now() - t);
      await turn(); // the next request arrives in a later turn (the snapshot is sent in between)
    }
    for (const r of live) router.finish(r);
    if (which) loopMs[which] += performance.now() - start;
    return times;
  }
  await run(a, 2000); // warm-up
  await run(plain, 2000);
  const on: number[] = [];
  const off: number[] = [];
  let publishes = 0;
  let onDecisions = 0;
  const per = Math.floor(config.decisions / config.rounds);
  for (let round = 0; round < config.rounds; round++) {
    const before = await publishCount(admin);
    on.push(...(await run(a, per, 'on')));
    await new Promise((r) => setTimeout(r, 50));
    publishes += (await publishCount(admin)) - before - 1; // the INFO above is not a PUBLISH; the tick's repeats are counted
    onDecisions += per;
    off.push(...(await run(plain, per, 'off')));
  }
  const snapshotBytes = JSON.stringify({ frontend_id: `frontend-${'x'.repeat(36)}`, ttl_ms: 1000, workers: Object.fromEntries(a.metrics().workers.slice(0, 2).map((w) => [w.workerId, [64, 1]])) }).length;

  // 2. Staleness: A decides, B's router shows it.
  const lags: number[] = [];
  for (let i = 0; i < config.samples; i++) {
    const requestId = `s${i}` as RequestId;
    const seen = new Promise<number>((resolve) => {
      bSeen = () => {
        if (b.metrics().workers.some((w) => w.remoteRequests > 0)) resolve(performance.now());
      };
    });
    const t = performance.now();
    a.tryRoute({ requestId, blockHashes: prompt(100_000 + i) });
    lags.push((await seen) - t);
    bSeen = undefined;
    a.finish(requestId);
    await new Promise((r) => setTimeout(r, 5));
    await until(() => b.metrics().workers.every((w) => w.remoteRequests === 0));
  }

  await Promise.all([sharingA.close(), sharingB.close(), admin.close()]);
  await redis.stop();

  const sortedOn = [...on].sort((x, y) => x - y);
  const sortedOff = [...off].sort((x, y) => x - y);
  const sortedLag = [...lags].sort((x, y) => x - y);
  const us = (ms: number) => `${(ms * 1000).toFixed(1)} µs`;
  const mean = (v: number[]) => v.reduce((s, x) => s + x, 0) / v.length;
  const results = {
    decisionMs: {
      on: { mean: mean(on), p50: percentile(sortedOn, 50), p99: percentile(sortedOn, 99) },
      off: { mean: mean(off), p50: percentile(sortedOff, 50), p99: percentile(sortedOff, 99) },
    },
    turnMs: { on: loopMs.on / onDecisions, off: loopMs.off / onDecisions },
    publishesPerDecision: publishes / onDecisions,
    snapshotBytes,
    stalenessMs: { p50: percentile(sortedLag, 50), p99: percentile(sortedLag, 99), max: sortedLag[sortedLag.length - 1]! },
  };
  console.log(`\n${config.workers} workers, ${config.promptBlocks}-block prompts, ${onDecisions} decisions each way, one per event-loop turn\n`);
  console.log('| measurement | sharing on | sharing off |\n|---|---:|---:|');
  console.log(`| decision (route + finish) mean | ${us(results.decisionMs.on.mean)} | ${us(results.decisionMs.off.mean)} |`);
  console.log(`| decision p50 | ${us(results.decisionMs.on.p50)} | ${us(results.decisionMs.off.p50)} |`);
  console.log(`| decision p99 | ${us(results.decisionMs.on.p99)} | ${us(results.decisionMs.off.p99)} |`);
  console.log(`| whole event-loop turn per decision (the snapshot's JSON and PUBLISH included) | ${us(results.turnMs.on)} | ${us(results.turnMs.off)} |`);
  console.log(`| Redis commands per decision (PUBLISH, fire and forget) | ${results.publishesPerDecision.toFixed(2)} | 0 |`);
  console.log(`| snapshot size (2 workers listed) | ${snapshotBytes} B | |`);
  console.log(`| staleness: A decides -> B counts it, p50 / p99 / max | ${results.stalenessMs.p50.toFixed(2)} / ${results.stalenessMs.p99.toFixed(2)} / ${results.stalenessMs.max.toFixed(2)} ms | |`);
  const result = {
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, node: process.version, loadavg: os.loadavg() },
    config,
    results,
  };
  const out = args.out ?? path.join('bench', 'results', `shared-load-${result.date.replace(/[:.]/g, '-')}.json`);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, JSON.stringify(result, null, 2));
  console.log(`\nwrote ${out}`);
}

async function until(check: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !check(); i++) await new Promise((r) => setTimeout(r, 2));
}

async function deployment(): Promise<void> {
  const { fork } = await import('node:child_process');
  const { ensureModel } = await import('../ts/modelgen/index.ts');
  const { forkWorker } = await import('../test/helpers/worker.ts');
  const modelDir = (await ensureModel('tiny-llama')).dir;
  const redis = await startPrivateRedis();
  const workers = [];
  for (const workerId of ['worker-a', 'worker-b']) {
    workers.push(await forkWorker({ workerId, role: 'monolith', model: 'tiny', modelDir, host: '127.0.0.1', port: 0, engine: { kvCacheBytes: 64 << 20, numThreads: 1 } }, { KVSERVE_REDIS_URL: redis.url }));
  }
  const infos = workers.map((w) => w.info);
  const frontends = await Promise.all(
    [0, 1].map(async () => {
      const config = { host: '127.0.0.1', port: 0, modelName: 'tiny', modelDir, maxModelLen: Math.min(...infos.map((w) => w.maxModelLen)), workers: infos, logLevel: 'warn', router: { policy: 'kv', blockSize: 16, sharedLoad: !args['no-sharing'] } };
      const proc = fork('ts/frontend/main.ts', ['--config', JSON.stringify(config)], { execArgv: ['--import', 'tsx'], stdio: 'inherit', env: { ...process.env, KVSERVE_REDIS_URL: redis.url, KVSERVE_API_KEY: '' } });
      const url = await new Promise<string>((resolve, reject) => {
        proc.on('message', (m: { type: string; url?: string; message?: string }) => (m.type === 'ready' ? resolve(m.url!) : m.type === 'fatal' && reject(new Error(m.message))));
      });
      return { url, proc };
    }),
  );
  const sub = new RedisConnection(redis.url, { name: 'bench-sub' });
  await sub.whenReady(5000);
  let snapshots = 0;
  let bytes = 0;
  sub.redis.on('message', (_c: string, text: string) => {
    snapshots++;
    bytes += text.length;
  });
  await sub.redis.subscribe('kvserve:frontend-load');
  await new Promise((r) => setTimeout(r, 500));
  const idle = snapshots;
  const n = Number(args.requests);
  const counts = new Map<string, number>();
  let next = 0;
  const running = new Map<string, number>(); // streams in flight per worker, as the client sees them
  const gaps: number[] = [];
  const sampler = setInterval(() => {
    const [x = 0, y = 0] = ['worker-a', 'worker-b'].map((w) => running.get(w) ?? 0);
    if (x + y > 0) gaps.push(Math.abs(x - y));
  }, 10);
  const t = performance.now();
  const client = async () => {
    while (next < n) {
      const i = next++;
      const prompt = Array.from({ length: 256 }, (_, k) => 1000 + ((i * 7919 + k * 104729) % 30000));
      const res = await fetch(`${frontends[i % 2]!.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'tiny', prompt, max_tokens: 16, temperature: 0, ignore_eos: true, stream: true }),
      });
      const w = res.headers.get('x-worker-id') ?? 'none';
      counts.set(w, (counts.get(w) ?? 0) + 1);
      running.set(w, (running.get(w) ?? 0) + 1);
      await res.arrayBuffer();
      running.set(w, running.get(w)! - 1);
    }
  };
  await Promise.all(Array.from({ length: Number(args.concurrency) }, client));
  const seconds = (performance.now() - t) / 1000;
  clearInterval(sampler);
  await new Promise((r) => setTimeout(r, 300));
  const during = snapshots - idle;
  console.log(`\n${n} requests, ${args.concurrency} at a time, over 2 frontends and 2 workers, ${seconds.toFixed(1)} s`);
  console.log(`snapshots on kvserve:frontend-load: ${during} (${(during / n).toFixed(2)} per request, ${(during / seconds).toFixed(0)}/s), ${Math.round(bytes / Math.max(1, snapshots))} B each on average; ${idle} while idle (0.5 s)`);
  console.log(`requests per worker: ${[...counts].map(([w, c]) => `${w} ${c}`).join(', ')}`);
  const mean = gaps.reduce((a, b) => a + b, 0) / Math.max(1, gaps.length);
  console.log(`streams in flight, |worker-a - worker-b| sampled every 10 ms: mean ${mean.toFixed(2)}, share of samples with a gap > 2: ${(gaps.filter((g) => g > 2).length / Math.max(1, gaps.length)).toFixed(3)}`);
  await sub.close();
  for (const f of frontends) f.proc.kill('SIGINT');
  for (const w of workers) await w.stop();
  await redis.stop();
}

(args.deployment ? deployment() : main()).then(() => process.exit(0)).catch((err) => {
  console.error(err);
  process.exit(1);
});
