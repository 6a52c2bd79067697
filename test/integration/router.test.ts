// KV-aware routing end to end: the real launcher with --router kv over a real Redis, workers
// publishing KV events, the frontend routing by cached prefix. Also a worker killed with -9
// under load, a frontend restarted mid-run, and the seed's Examples 2 and 3 as written.
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPrivateRedis, type PrivateRedis } from '../../ts/launcher/redis.ts';
import { ensureModel } from '../../ts/modelgen/index.ts';
import type { WorkerConfig } from '../../ts/worker/main.ts';
import { childPids, fakeHfCache, freePort, launch, until, type Launched } from '../helpers/launcher.ts';
import { forkWorker } from '../helpers/worker.ts';

const SEED_MODEL = 'deepseek-ai/DeepSeek-R1-Distill-Llama-8B';
let modelDir: string;
let redis: PrivateRedis;
let server: Launched;
let extra: ChildProcess; // a worker the test runs itself, so killing it does not stop the launcher

// Token ids of a deterministic pseudo-random prompt.
function tokens(seed: number, len: number): number[] {
  let x = seed * 7919 + 17;
  return Array.from({ length: len }, () => {
    x = (x * 1103515245 + 12345) >>> 0;
    return 1000 + (x % 30000);
  });
}

async function complete(prompt: number[], maxTokens = 2): Promise<{ status: number; workerId: string | null }> {
  const res = await fetch(`${server.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt, max_tokens: maxTokens, temperature: 0 }),
  });
  await res.arrayBuffer();
  return { status: res.status, workerId: res.headers.get('x-worker-id') };
}

async function metric(name: string): Promise<string[]> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  return text.split('\n').filter((l) => l.startsWith(name));
}

const workersSeen = async () => (await metric('kvserve:worker_num_requests_running')).map((l) => /worker_id="([^"]+)"/.exec(l)?.[1]);

beforeAll(async () => {
  modelDir = (await ensureModel('tiny-llama')).dir;
  redis = await startPrivateRedis();
  server = await launch(['--model', modelDir, '--workers', '3', '--router', 'kv', '--redis-url', redis.url,
    '--http-port', String(await freePort()), '--kv-cache-memory', '64MiB', '--restart']);
  const config: WorkerConfig = {
    workerId: 'worker-x',
    role: 'monolith',
    model: modelDir,
    modelDir,
    host: '127.0.0.1',
    port: 0,
    engine: { kvCacheBytes: 64 << 20, numThreads: 1 },
  };
  extra = (await forkWorker(config, { KVSERVE_REDIS_URL: redis.url })).proc;
  await until('4 workers in the pool', async () => (await workersSeen()).length === 4);
});

afterAll(async () => {
  extra?.kill('SIGKILL');
  await server?.stop();
  await redis?.stop();
});

describe('kv routing', () => {
  it('sends requests that share a long prefix to the worker that served the first', async () => {
    const prefix = tokens(1, 320); // 20 blocks of 16
    const first = await complete([...prefix, ...tokens(100, 24)]);
    expect(first.status).toBe(200);
    for (let i = 0; i < 5; i++) {
      const r = await complete([...prefix, ...tokens(200 + i, 24)]);
      expect(r.workerId).toBe(first.workerId);
    }
    const [rate] = await metric('kvserve:router_prefix_hit_rate');
    expect(Number(rate.split(' ').pop())).toBeGreaterThan(0);
  });

  it('spreads different prefixes across workers', async () => {
    const results = await Promise.all(Array.from({ length: 12 }, (_, i) => complete(tokens(1000 + i, 320), 8)));
    expect(results.every((r) => r.status === 200)).toBe(true);
    expect(new Set(results.map((r) => r.workerId)).size).toBeGreaterThanOrEqual(3);
  });

  it('routes by cache again after the frontend restarts, once the workers have replayed', async () => {
    const prefixes = [0, 1, 2, 3].map((i) => tokens(5000 + i, 320));
    const owners: string[] = [];
    for (const p of prefixes) owners.push((await complete([...p, 7, 8, 9]))!.workerId!);
    // Every block the workers cache, once their last events have landed (two equal reads, half a
    // second apart).
    const indexed = async () => Number((await metric('kvserve:router_indexed_blocks'))[0]?.split(' ').pop() ?? 0);
    let before = -1;
    await until('the index to settle', async () => {
      await new Promise((r) => setTimeout(r, 300));
      const now = await indexed();
      const settled = now === before;
      before = now;
      return settled;
    });
    const frontend = childPids(server.proc.pid!).find((pid) => fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('frontend/main.ts'))!;
    process.kill(frontend, 'SIGKILL');
    await until('the restarted frontend', async () => (await fetch(`${server.url}/ready`)).status === 200 && (await workersSeen()).length === 4);
    // The new frontend's index is rebuilt from every worker's replay (cleared + stored): all of
    // the blocks, not just the first replays to arrive (earlier tests' blocks are in it too).
    await until('the replays', async () => (await indexed()) >= before);
    // Before each request, every worker's latest load report shows it idle: a report taken while
    // the previous request ran but delivered late (a loaded CI machine) would otherwise charge its
    // worker that request's blocks, and this test is about the cache, not about load.
    const idle = async () => {
      const lines = await metric('kvserve:worker_kv_active_blocks{');
      return lines.length === 4 && lines.every((l) => Number(l.split(' ').pop()) === 0);
    };
    // A worker the health probe set aside on a loaded machine rejoins without its blocks until its
    // replay lands: wait for the whole index too, not only for four idle workers.
    for (let i = 0; i < prefixes.length; i++) {
      await until('idle workers with their caches indexed', async () => (await idle()) && (await indexed()) >= before);
      const r = await complete([...prefixes[i], 10, 11, 12]);
      expect(r.workerId).toBe(owners[i]);
    }
  });

  it('stops routing to a worker killed with -9 within one lease, and every later request succeeds', async () => {
    // Requests in flight on the worker when it dies fail (5xx, never a hang); every request that
    // starts after the kill succeeds: one sent to the dead worker before its lease expires finds
    // it unreachable and is retried on another worker; after the lease, none is routed to it.
    const results: { startedAt: number; status: number; workerId: string | null }[] = [];
    let killedAt = 0;
    const loop = async (k: number) => {
      for (let i = 0; i < 1000 && (killedAt === 0 || Date.now() - killedAt < 7000); i++) {
        const startedAt = Date.now();
        const r = await complete(tokens(9000 + k * 1000 + i, 64), 2);
        results.push({ startedAt, ...r });
      }
    };
    const loops = [0, 1, 2, 3].map(loop);
    await new Promise((r) => setTimeout(r, 1000));
    extra.kill('SIGKILL');
    killedAt = Date.now();
    await Promise.all(loops);
    const before = results.filter((r) => r.startedAt < killedAt);
    const after = results.filter((r) => r.startedAt >= killedAt);
    const afterLease = after.filter((r) => r.startedAt > killedAt + 5000);
    expect(before.filter((r) => r.status !== 200 && r.status < 500)).toEqual([]);
    expect(after.length).toBeGreaterThan(10);
    expect(after.filter((r) => r.status !== 200)).toEqual([]);
    expect(afterLease.length).toBeGreaterThan(0);
    expect(afterLease.map((r) => r.workerId)).not.toContain('worker-x');
  });
});

describe('Redis outage', () => {
  it('keeps routing on the last known workers while Redis is down, then routes by cache again on its own', async () => {
    const prefix = tokens(7000, 320);
    const owner = (await complete([...prefix, 1, 2, 3])).workerId;
    const port = redis.port;
    await redis.stop();
    await until('the frontend saw Redis go', async () => /Redis is unreachable: routing on the last known workers/.test(server.output()), 10_000);
    const during = [];
    for (let i = 0; i < 8; i++) during.push(await complete(tokens(7100 + i, 32)));
    expect(during.map((r) => r.status)).toEqual(Array(8).fill(200));
    expect(new Set(during.map((r) => r.workerId)).size).toBeGreaterThan(1); // spread over the workers it knew
    expect((await complete([...prefix, 7, 8, 9])).workerId).toBe(owner); // the index as it was
    expect((await fetch(`${server.url}/ready`)).status).toBe(200);
    redis = await startPrivateRedis({ port, password: redis.password }); // a new, empty Redis on the same address and password
    await until('Redis back', async () => /Redis is back/.test(server.output()), 30_000);
    expect((await complete(tokens(7200, 32))).status).toBe(200);
    await until('the replays', async () => {
      const [line] = await metric('kvserve:router_indexed_blocks');
      return line !== undefined && Number(line.split(' ').pop()) >= 20;
    });
    expect((await complete([...prefix, 4, 5, 6])).workerId).toBe(owner);
  });
});

describe("the seed's Examples 2 and 3", () => {
  const body = () => fs.readFileSync('test/fixtures/seed-example-1.json', 'utf8'); // the same request in all three

  it.each([
    ['Example 2', ['--router', 'kv']],
    ['Example 3', ['--workers', '8', '--router', 'kv']],
  ])('%s runs as written', async (_name, flags) => {
    const hf = fakeHfCache(SEED_MODEL, modelDir);
    const l = await launch(['--model', SEED_MODEL, ...flags, '--http-port', String(await freePort()), '--kv-cache-memory', '64MiB'], { HF_HUB_CACHE: hf });
    try {
      const res = await fetch(`${l.url}/v1/chat/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: body() });
      expect(res.status).toBe(200);
      const json = await res.json();
      expect(json.choices[0].message.role).toBe('assistant');
      expect(res.headers.get('x-worker-id')).toMatch(/^worker-\d$/);
    } finally {
      expect(await l.stop()).toBe(0);
      fs.rmSync(hf, { recursive: true, force: true });
    }
  });
});
