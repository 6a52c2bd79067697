// runtime-planes.test.ts: the Redis planes end to end: a real redis-server (startPrivateRedis),
// real worker processes (ts/worker/main.ts on the generated tiny Llama), and the frontend-side
// clients of ts/runtime: EventPlaneConsumer and DiscoveryWatcher.
//   - event plane: gap-free, ordered event ids; a late consumer asks for a replay and converges
//     to the same cached blocks as one that saw everything;
//   - discovery: join, orderly leave (announced), kill -9 (lease expiry);
//   - Redis outage: stop redis-server and start an empty one on the same port: nothing crashes,
//     leases come back, the consumer is told to replay and converges.
// Waits are bounded polls (`until`); nothing asserts on timing except the deadlines the design
// promises (a kill -9 is seen within 5 s).
import type { ChildProcess } from 'node:child_process';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startPrivateRedis, type PrivateRedis } from '../../ts/launcher/redis.ts';
import { ensureModel } from '../../ts/modelgen/index.ts';
import type { KvEvent, RequestId, WorkerId, WorkerInfo, WorkerLoad } from '../../ts/protocol/index.ts';
import { DEFAULT_NAMESPACE, DiscoveryWatcher, WorkerLease, listWorkers, workerKey, type LeasedWorkerInfo } from '../../ts/runtime/discovery.ts';
import { EventPlaneConsumer, type KvEventMeta, type ResyncReason } from '../../ts/runtime/event-plane.ts';
import { RedisConnection } from '../../ts/runtime/redis-connection.ts';
import { WorkerClient } from '../../ts/runtime/request-client.ts';
import type { WorkerConfig } from '../../ts/worker/main.ts';
import { forkWorker } from '../helpers/worker.ts';

const BLOCK_SIZE = 16;
const NUM_KV_BLOCKS = 32; // small: the prompts below overflow it, so blocks are evicted (`removed`)

// ---- processes ----

interface TestWorker {
  info: WorkerInfo;
  proc: ChildProcess;
  client: WorkerClient;
  exited: Promise<void>;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

const live = new Set<TestWorker>();

async function startWorker(workerId: string, redisUrl: string, extra: Partial<WorkerConfig> = {}): Promise<TestWorker> {
  const { dir } = await ensureModel('tiny-llama');
  const config: WorkerConfig = {
    workerId,
    role: 'monolith',
    model: 'tiny',
    modelDir: dir,
    host: '127.0.0.1',
    port: 0,
    engine: { blockSize: BLOCK_SIZE, numKvBlocks: NUM_KV_BLOCKS, numThreads: 1, maxModelLen: 512 },
    ...extra,
  };
  const forked = await forkWorker(config, { KVSERVE_REDIS_URL: redisUrl });
  const w: TestWorker = {
    ...forked,
    client: new WorkerClient(forked.info.address),
    stop: async (signal = 'SIGTERM') => {
      live.delete(w);
      await forked.stop(signal);
    },
  };
  live.add(w);
  return w;
}

afterAll(async () => {
  await Promise.all([...live].map((w) => w.stop('SIGKILL')));
});

// Prompts sharing a prefix (so the prefix cache is hit) and long enough to evict blocks.
function prompt(i: number, tokens = 100): number[] {
  return Array.from({ length: tokens }, (_, t) => (t < 40 ? 100 + t : 1000 + i * 131 + t) % 30_000);
}

async function generate(w: TestWorker, id: string, tokens: number[]): Promise<void> {
  const body = { requestId: id as RequestId, promptTokenIds: tokens, sampling: { maxTokens: 4, temperature: 0 } };
  for await (const delta of w.client.generate(body)) {
    if (delta.error) throw new Error(delta.error.message);
  }
}

async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

// ---- a minimal owner: what the router's index does with the events ----

class Owner {
  readonly events: KvEvent[] = [];
  readonly loads: WorkerLoad[] = [];
  readonly resyncs: ResyncReason[] = [];
  readonly blocks = new Map<string, Set<string>>(); // worker -> cached block hashes
  readonly clearedSeen = new Set<string>(); // workers whose `cleared` this owner has applied
  private readonly last = new Map<string, { instanceId: string; eventId: number }>();
  readonly consumer: EventPlaneConsumer;

  constructor(url: string) {
    this.consumer = new EventPlaneConsumer({
      url,
      onKvEvent: (e, meta) => this.apply(e, meta),
      onLoad: (load) => this.loads.push(load),
      onResync: (reason) => {
        this.resyncs.push(reason);
        this.consumer.requestReplay('*');
      },
    });
  }

  // Per worker: drop ids <= the last (a resent duplicate), a new instance starts over, a gap
  // (not healed by a `cleared`) asks that worker for a replay.
  private apply(e: KvEvent, meta: KvEventMeta): void {
    this.events.push(e);
    const prev = this.last.get(e.worker_id);
    const sameInstance = prev?.instanceId === meta.instanceId;
    if (sameInstance && e.event_id <= prev!.eventId) return;
    const isCleared = 'cleared' in e.data;
    if (!isCleared && (!sameInstance || e.event_id !== prev!.eventId + 1)) this.consumer.requestReplay(e.worker_id);
    this.last.set(e.worker_id, { instanceId: meta.instanceId, eventId: e.event_id });
    let set = this.blocks.get(e.worker_id);
    if (!set || !sameInstance) this.blocks.set(e.worker_id, (set = new Set()));
    if ('stored' in e.data) for (const h of e.data.stored.block_hashes) set.add(h);
    else if ('removed' in e.data) for (const h of e.data.removed.block_hashes) set.delete(h);
    else {
      set.clear();
      this.clearedSeen.add(e.worker_id);
    }
  }

  idsOf(workerId: string): number[] {
    return this.events.filter((e) => e.worker_id === workerId).map((e) => e.event_id);
  }

  hashesOf(workerId: string): string[] {
    return [...(this.blocks.get(workerId) ?? [])].sort();
  }
}

function sameBlocks(a: Owner, b: Owner, workerId: string): boolean {
  const x = a.hashesOf(workerId);
  const y = b.hashesOf(workerId);
  return x.length === y.length && x.every((h, i) => h === y[i]);
}

describe('event plane', () => {
  let redis: PrivateRedis;
  const owners: Owner[] = [];

  beforeAll(async () => {
    redis = await startPrivateRedis();
  });
  afterAll(async () => {
    await Promise.all(owners.map((o) => o.consumer.close()));
    await redis?.stop();
  });

  it('delivers every event in order, and a late consumer converges through a replay', async () => {
    const early = new Owner(redis.url);
    owners.push(early);
    await early.consumer.start();
    expect(early.resyncs).toEqual(['start']);

    const w = await startWorker('worker-ev', redis.url);
    for (let i = 0; i < 8; i++) await generate(w, `r${i}`, prompt(i));
    await until('load reports', () => early.loads.some((l) => l.worker_id === 'worker-ev' && l.prefix_cache_queries > 0));

    // Everything so far: ids 1, 2, 3, ... without a gap, the first a `cleared`, and evictions.
    await until('events', () => early.events.some((e) => 'removed' in e.data));
    const ids = early.idsOf('worker-ev');
    expect(ids).toEqual(ids.map((_, i) => ids[0] + i));
    expect(early.events[0].data).toEqual({ cleared: {} });
    expect(early.hashesOf('worker-ev').length).toBeGreaterThan(0);

    const late = new Owner(redis.url);
    owners.push(late);
    await late.consumer.start(); // starts at the end of the stream and asks every worker to replay
    await until('the late consumer converges', () => late.clearedSeen.has('worker-ev') && sameBlocks(early, late, 'worker-ev'));

    // More traffic: both stay equal, and the early one's ids are still gap-free (the replay
    // continues the worker's sequence).
    for (let i = 8; i < 12; i++) await generate(w, `r${i}`, prompt(i));
    const lastId = (await w.client.load()) && early.idsOf('worker-ev').length;
    await until('both see the new traffic', () => sameBlocks(early, late, 'worker-ev') && late.idsOf('worker-ev').at(-1) === early.idsOf('worker-ev').at(-1));
    expect(early.idsOf('worker-ev').length).toBeGreaterThanOrEqual(lastId);
    const after = early.idsOf('worker-ev');
    expect(after).toEqual(after.map((_, i) => i + 1));
    expect(late.hashesOf('worker-ev')).toEqual(early.hashesOf('worker-ev'));
    const load = early.loads.at(-1)!;
    expect(Object.keys(load).sort()).toEqual(
      [
        'worker_id',
        'request_active_slots',
        'request_total_slots',
        'kv_active_blocks',
        'kv_total_blocks',
        'num_requests_waiting',
        'kv_cache_usage',
        'prefix_cache_hit_rate',
        'prefix_cache_queries',
        'prefix_cache_hits',
        'num_preemptions',
      ].sort(),
    );
    expect(load.kv_total_blocks).toBe(NUM_KV_BLOCKS);
    await w.stop();
  }, 30_000);
});

describe('discovery', () => {
  let redis: PrivateRedis;
  const watchers: DiscoveryWatcher[] = [];

  beforeAll(async () => {
    redis = await startPrivateRedis();
  });
  afterEach(async () => {
    await Promise.all(watchers.splice(0).map((w) => w.close()));
  });
  afterAll(async () => {
    await redis?.stop();
  });

  function watch(checkIntervalMs?: number): { watcher: DiscoveryWatcher; joins: LeasedWorkerInfo[]; leaves: { id: WorkerId; at: number }[] } {
    const watcher = new DiscoveryWatcher({ url: redis.url, checkIntervalMs });
    watchers.push(watcher);
    const joins: LeasedWorkerInfo[] = [];
    const leaves: { id: WorkerId; at: number }[] = [];
    watcher.on('join', (w) => joins.push(w));
    watcher.on('leave', (id) => leaves.push({ id, at: Date.now() }));
    return { watcher, joins, leaves };
  }

  it('sees a join and an orderly leave from the announcements alone', async () => {
    // A check period far longer than the test: only the pub/sub announcements can be seen.
    const { watcher, joins, leaves } = watch(10_000);
    await watcher.start();
    const w = await startWorker('worker-d1', redis.url);
    await until('join', () => joins.some((j) => j.workerId === 'worker-d1'));
    const joined = joins.find((j) => j.workerId === 'worker-d1')!;
    expect(joined.address).toBe(w.info.address);
    expect(joined.blockSize).toBe(BLOCK_SIZE);
    expect(joined.instanceId).toMatch(/^[0-9a-f-]{36}$/);
    await w.stop('SIGTERM');
    await until('leave', () => leaves.some((l) => l.id === 'worker-d1'), 2000);
    expect(watcher.workers()).toEqual([]);
  }, 30_000);

  it('sees a worker killed with -9 leave within 5 s, and its restart as a new instance', async () => {
    const { watcher, joins, leaves } = watch();
    const w = await startWorker('worker-d2', redis.url);
    await watcher.start(); // the lease already there is reported as a join by start()
    expect(joins.map((j) => j.workerId)).toEqual(['worker-d2']);
    const killedAt = Date.now();
    await w.stop('SIGKILL');
    await until('leave after kill -9', () => leaves.some((l) => l.id === 'worker-d2'), 6000);
    expect(leaves[0].at - killedAt).toBeLessThanOrEqual(5000);

    const again = await startWorker('worker-d2', redis.url);
    await until('re-join', () => joins.length === 2);
    expect(joins[1].instanceId).not.toBe(joins[0].instanceId);
    expect(watcher.workers().map((x) => x.workerId)).toEqual(['worker-d2']);
    await again.stop();
  }, 30_000);

  it('refuses a second live worker with the same id, naming the first, which goes on serving', async () => {
    const { watcher, joins } = watch();
    const first = await startWorker('worker-d3', redis.url);
    await watcher.start();
    await expect(startWorker('worker-d3', redis.url)).rejects.toThrow(new RegExp(`worker id worker-d3 is held by a live worker at ${first.info.address}.*--advertise-host`));
    await new Promise((r) => setTimeout(r, 1500)); // past a refresh of the first
    expect(watcher.workers().map((x) => [x.workerId, x.address])).toEqual([['worker-d3', first.info.address]]);
    expect(joins.map((j) => j.instanceId)).toEqual([joins[0].instanceId]);
    expect((await first.client.load(2000)).worker_id).toBe('worker-d3');
    await first.stop();
  }, 30_000);

  it('takes over the lease a dead worker left; a live worker whose id is taken reports it', async () => {
    const conn = new RedisConnection(redis.url, { name: 'lease-test' });
    await conn.whenReady(5000);
    const info = (n: string): WorkerInfo => ({ workerId: 'worker-d4' as WorkerId, role: 'monolith', address: `http://${n}`, model: 'tiny', modelDir: '/m', blockSize: BLOCK_SIZE, kvTotalBlocks: 8, maxNumSeqs: 4, maxModelLen: 64, vocabSize: 100, pid: 1 });
    try {
      // A predecessor killed with -9: its lease is there, and nobody refreshes it.
      const dead = { ...info('dead'), instanceId: 'dead-instance', startedAt: Date.now() };
      await conn.redis.set(workerKey(DEFAULT_NAMESPACE, 'worker-d4'), JSON.stringify(dead), 'PX', 3000);
      const lease = new WorkerLease(conn.redis, info('new'), DEFAULT_NAMESPACE, 3000);
      const t0 = Date.now();
      await lease.start();
      expect(Date.now() - t0).toBeLessThan(2500); // one refresh period and the slack, not the whole TTL
      expect(JSON.parse((await conn.redis.get(workerKey(DEFAULT_NAMESPACE, 'worker-d4')))!).instanceId).toBe(lease.instanceId);
      // Another instance writes over the key while this one lives: its next refresh says so.
      const conflicts: (LeasedWorkerInfo | null)[] = [];
      lease.onConflict = (holder) => conflicts.push(holder);
      await conn.redis.set(workerKey(DEFAULT_NAMESPACE, 'worker-d4'), JSON.stringify({ ...info('other'), instanceId: 'other-instance', startedAt: Date.now() }), 'PX', 3000);
      await until('the conflict', async () => conflicts.length === 1, 3000);
      expect(conflicts[0]?.address).toBe('http://other');
      await lease.stop();
    } finally {
      await conn.close();
    }
  }, 30_000);
});

describe('Redis outage', () => {
  let redis: PrivateRedis;
  let owner: Owner | undefined;
  let watcher: DiscoveryWatcher | undefined;
  let fresh: Owner | undefined;

  afterAll(async () => {
    await owner?.consumer.close();
    await fresh?.consumer.close();
    await watcher?.close();
    await redis?.stop();
  });

  it('rides out a restart of redis-server: no crash, leases back, consumers converge', async () => {
    redis = await startPrivateRedis();
    // One worker buffers its events through the outage; the other may hold only 2, so it
    // overflows and recovers through a replay.
    const [wa, wb] = await Promise.all([
      startWorker('worker-oa', redis.url),
      startWorker('worker-ob', redis.url, { maxBufferedKvEvents: 2 }),
    ]);
    owner = new Owner(redis.url);
    await owner.consumer.start();
    watcher = new DiscoveryWatcher({ url: redis.url });
    await watcher.start();
    expect(watcher.workers().map((w) => w.workerId).sort()).toEqual(['worker-oa', 'worker-ob']);
    const o = owner;
    await until('initial replays', () => o.clearedSeen.has('worker-oa') && o.clearedSeen.has('worker-ob'));
    await Promise.all([generate(wa, 'a0', prompt(0)), generate(wb, 'b0', prompt(0))]);

    // Down: the clients say so; the workers keep serving (the request plane needs no Redis).
    const port = redis.port;
    await redis.stop();
    await until('consumer disconnected', () => !o.consumer.isConnected());
    await until('watcher disconnected', () => !watcher!.isConnected());
    for (let i = 1; i < 6; i++) await Promise.all([generate(wa, `a${i}`, prompt(i)), generate(wb, `b${i}`, prompt(i))]);

    // Back, empty, on the same port, with the same password (as superviseRedis restarts it).
    redis = await startPrivateRedis({ port, password: redis.password });
    await until('consumer reconnected', () => o.consumer.isConnected(), 15_000);
    await until('watcher reconnected', () => watcher!.isConnected());
    await until('the consumer is told to replay', () => o.resyncs.length === 2);
    expect(o.resyncs).toEqual(['start', 'redis-restarted']);
    const probe = new RedisConnection(redis.url, { name: 'test-probe' });
    try {
      await probe.whenReady(5000);
      await until('leases re-created', async () => (await listWorkers(probe.redis)).length === 2);
    } finally {
      await probe.close();
    }
    expect(watcher.workers().map((w) => w.workerId).sort()).toEqual(['worker-oa', 'worker-ob']);

    // The truth: a consumer started now gets both workers' whole caches by replay.
    fresh = new Owner(redis.url);
    await fresh.consumer.start();
    const f = fresh;
    await until(
      'the surviving consumer converges',
      () =>
        f.clearedSeen.has('worker-oa') &&
        f.clearedSeen.has('worker-ob') &&
        sameBlocks(o, f, 'worker-oa') &&
        sameBlocks(o, f, 'worker-ob'),
      15_000,
    );
    expect(o.hashesOf('worker-oa').length).toBeGreaterThan(0);
    // worker-oa buffered through the outage: from the first id this consumer saw (it started at
    // the end of the stream) not one is missing (a resent batch may repeat some).
    const ids = [...new Set(o.idsOf('worker-oa'))].sort((x, y) => x - y);
    expect(ids).toEqual(ids.map((_, i) => ids[0] + i));
    expect(wa.proc.exitCode).toBeNull();
    expect(wb.proc.exitCode).toBeNull();
    await generate(wa, 'a-after', prompt(7));
    await Promise.all([wa.stop(), wb.stop()]);
  }, 30_000);
});
