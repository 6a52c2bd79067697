// Shared load between frontends: the pure bookkeeping of the other frontends' snapshots
// (RemoteLoads: replace, lapse, sums), the router's side (setRemoteLoad in the cost and the
// capacity rule, pendingLoad and onPendingChange), and LoadSharing over a real Redis
// (startPrivateRedis): two routers that share do not both pick the same idle worker, a frontend
// that closes clears its share at once, one that dies leaves it for at most its lapse time, and
// a Redis that goes away leaves each router routing on its own view.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPrivateRedis, type PrivateRedis } from '../../ts/launcher/redis.ts';
import type { BlockHash, FrontendLoad, LoadMetrics, RequestId, WorkerId } from '../../ts/protocol/index.ts';
import { KvRouter, RemoteLoads, seededRng, type WorkerSpec } from '../../ts/router/index.ts';
import { frontendLoadChannel, LoadSharing } from '../../ts/runtime/load-sharing.ts';
import { RedisConnection } from '../../ts/runtime/redis-connection.ts';
import { until } from '../helpers/launcher.ts';

const wid = (s: string) => s as WorkerId;
const rid = (s: string) => s as RequestId;
const hash = (i: number) => i.toString(16).padStart(16, '0') as BlockHash;
const blocks = (from: number, count: number) => Array.from({ length: count }, (_, i) => hash(from + i));
const spec = (id: string): WorkerSpec => ({ workerId: wid(id), blockSize: 16, kvTotalBlocks: 1000, requestTotalSlots: 16 });
const snap = (frontend: string, workers: Record<string, [number, number]>, ttl = 1000): FrontendLoad => ({ frontend_id: frontend, ttl_ms: ttl, workers });
const idle: LoadMetrics = {
  request_active_slots: 0,
  request_total_slots: 16,
  kv_active_blocks: 0,
  kv_total_blocks: 1000,
  num_requests_waiting: 0,
  kv_cache_usage: 0,
  prefix_cache_hit_rate: 0,
};

function twoWorkerRouter(seed: number, onPendingChange?: () => void): KvRouter {
  const router = new KvRouter({ blockSize: 16, rng: seededRng(seed), onPendingChange });
  for (const id of ['w0', 'w1']) {
    router.addWorker(spec(id));
    router.applyEvent({ worker_id: wid(id), event_id: 0, data: { cleared: {} } });
  }
  return router;
}

describe('RemoteLoads', () => {
  it('sums the live snapshots per worker; a newer snapshot replaces the older whole', () => {
    const r = new RemoteLoads();
    expect(r.apply(snap('a', { w0: [10, 1], w1: [4, 1] }), 0).sort()).toEqual(['w0', 'w1']);
    expect(r.apply(snap('b', { w0: [5, 2] }), 0)).toEqual(['w0']);
    expect(r.total(wid('w0'))).toEqual({ blocks: 15, requests: 3 });
    expect(r.total(wid('w1'))).toEqual({ blocks: 4, requests: 1 });
    // a's next snapshot no longer lists w1: its share there goes
    expect(r.apply(snap('a', { w0: [3, 1] }), 10).sort()).toEqual(['w0', 'w1']);
    expect(r.total(wid('w0'))).toEqual({ blocks: 8, requests: 3 });
    expect(r.total(wid('w1'))).toEqual({ blocks: 0, requests: 0 });
    expect(r.frontends).toBe(2);
    // an empty snapshot forgets the frontend
    r.apply(snap('b', {}), 20);
    expect(r.frontends).toBe(1);
    expect(r.total(wid('w0'))).toEqual({ blocks: 3, requests: 1 });
  });

  it('drops a snapshot ttl after it arrived, unless a newer one came', () => {
    const r = new RemoteLoads();
    r.apply(snap('a', { w0: [10, 1] }, 1000), 0);
    r.apply(snap('b', { w0: [1, 1] }, 1000), 600);
    expect(r.expire(999)).toEqual([]);
    expect(r.expire(1000)).toEqual(['w0']);
    expect(r.total(wid('w0'))).toEqual({ blocks: 1, requests: 1 });
    r.apply(snap('b', { w0: [2, 1] }, 1000), 1500); // renewed
    expect(r.expire(1700)).toEqual([]);
    expect(r.total(wid('w0'))).toEqual({ blocks: 2, requests: 1 });
    expect(r.clear()).toEqual(['w0']);
    // a sender's ttl is capped at 60 s
    const capped = new RemoteLoads();
    capped.apply(snap('c', { w1: [7, 1] }, 1e12), 0);
    expect(capped.expire(59_999)).toEqual([]);
    expect(capped.expire(60_000)).toEqual(['w1']);
    expect(r.total(wid('w0'))).toEqual({ blocks: 0, requests: 0 });
  });

  it('ignores malformed shares', () => {
    const r = new RemoteLoads();
    r.apply({ frontend_id: 'a', ttl_ms: 1000, workers: { w0: 'x', w1: [NaN, 1], w2: [3, 1] } } as unknown as FrontendLoad, 0);
    expect(r.total(wid('w0')).blocks + r.total(wid('w1')).blocks).toBe(0);
    expect(r.total(wid('w2'))).toEqual({ blocks: 3, requests: 1 });
  });
});

describe('KvRouter: remote load', () => {
  it('adds the other frontends\' load to the cost and the capacity rule', () => {
    const router = twoWorkerRouter(1);
    router.setRemoteLoad(wid('w0'), { blocks: 8, requests: 1 });
    for (let i = 0; i < 4; i++) {
      const d = router.tryRoute({ requestId: rid(`r${i}`), blockHashes: blocks(100 * i, 4) })!;
      router.finish(rid(`r${i}`));
      expect(d.workerId).toBe('w1'); // w0 costs 4 + 8, w1 costs 4
    }
    const m = router.metrics().workers.find((w) => w.workerId === 'w0')!;
    expect(m).toMatchObject({ activeBlocks: 0, remoteBlocks: 8, remoteRequests: 1 });
    // capacity: w0 is not idle for its remote requests, and has no room for 995 more blocks
    router.setRemoteLoad(wid('w0'), { blocks: 10, requests: 1 });
    router.setRemoteLoad(wid('w1'), { blocks: 10, requests: 1 });
    expect(router.tryRoute({ requestId: rid('big'), blockHashes: blocks(5000, 995) })).toBeUndefined();
    router.setRemoteLoad(wid('w1'), { blocks: 0, requests: 0 });
    expect(router.tryRoute({ requestId: rid('big2'), blockHashes: blocks(6000, 995) })!.workerId).toBe('w1');
  });

  it('pendingLoad: what changed since each worker\'s last report: routed since, less finished since of those it counted', () => {
    let changes = 0;
    const router = new KvRouter({ blockSize: 16, rng: seededRng(2), onPendingChange: () => changes++ });
    router.addWorker(spec('w0'));
    const d = router.tryRoute({ requestId: rid('a'), blockHashes: blocks(0, 6) })!;
    expect(changes).toBe(1);
    expect(router.pendingLoad().get(d.workerId)).toEqual({ blocks: 6, requests: 1 });
    router.updateLoad(d.workerId, { ...idle, kv_active_blocks: 6, request_active_slots: 1 });
    expect(changes).toBe(2);
    expect(router.pendingLoad().size).toBe(0);
    // counted by the report, finished since: the others lower the report by all its blocks
    router.finish(rid('a'));
    expect(changes).toBe(3);
    expect(router.pendingLoad().get(d.workerId)).toEqual({ blocks: -6, requests: -1 });
    // routed and finished between two reports: no report shows it, nothing to correct
    router.tryRoute({ requestId: rid('b'), blockHashes: blocks(50, 3) });
    expect(router.pendingLoad().get(d.workerId)).toEqual({ blocks: -3, requests: 0 });
    router.finish(rid('b'));
    expect(changes).toBe(5);
    expect(router.pendingLoad().get(d.workerId)).toEqual({ blocks: -6, requests: -1 });
    // the next report shows it all
    router.updateLoad(d.workerId, idle);
    expect(changes).toBe(6);
    expect(router.pendingLoad().size).toBe(0);
    // a negative remote share never makes the estimate negative
    const other = new KvRouter({ blockSize: 16, rng: seededRng(3) });
    other.addWorker(spec('w0'));
    other.setRemoteLoad(wid('w0'), { blocks: -50, requests: -2 });
    expect(other.metrics().workers[0]).toMatchObject({ remoteBlocks: -50, busy: false });
    expect(other.tryRoute({ requestId: rid('c'), blockHashes: blocks(70, 2) })).toMatchObject({ workerId: 'w0' });
  });
});

describe('KvRouter: holdUntilPrefilled', () => {
  it('a report empties pending only of requests that had their first output', () => {
    const router = new KvRouter({ blockSize: 16, rng: seededRng(4), holdUntilPrefilled: true });
    router.addWorker(spec('w0'));
    router.tryRoute({ requestId: rid('a'), blockHashes: blocks(0, 10) });
    // taken before the engine admitted it: a report of an idle worker leaves it pending
    router.updateLoad(wid('w0'), idle);
    expect(router.metrics().workers[0]).toMatchObject({ activeBlocks: 10, activeRequests: 1 });
    expect(router.pendingLoad().get(wid('w0'))).toEqual({ blocks: 10, requests: 1 });
    // admitted: the report counts it too until its first output
    router.updateLoad(wid('w0'), { ...idle, kv_active_blocks: 10, request_active_slots: 1 });
    expect(router.metrics().workers[0]).toMatchObject({ activeBlocks: 20, activeRequests: 2 });
    router.prefilled(rid('a'));
    router.updateLoad(wid('w0'), { ...idle, kv_active_blocks: 11, request_active_slots: 1 });
    expect(router.metrics().workers[0]).toMatchObject({ activeBlocks: 11, activeRequests: 1 });
    expect(router.pendingLoad().size).toBe(0);
    // prefilled and finished before a report absorbed it: it leaves pending and the base
    router.tryRoute({ requestId: rid('b'), blockHashes: blocks(100, 4) });
    router.updateLoad(wid('w0'), { ...idle, kv_active_blocks: 15, request_active_slots: 2 });
    router.prefilled(rid('b'));
    router.finish(rid('b'));
    expect(router.metrics().workers[0]).toMatchObject({ activeBlocks: 11, activeRequests: 1 });
    expect(router.pendingLoad().get(wid('w0'))).toEqual({ blocks: -4, requests: -1 });
  });
});

describe('LoadSharing over Redis', () => {
  let redis: PrivateRedis;
  beforeAll(async () => {
    redis = await startPrivateRedis();
  });
  afterAll(async () => {
    await redis?.stop();
  });

  function frontend(id: string, seed: number, ttlMs = 1000) {
    let sharing: LoadSharing | undefined;
    const router = twoWorkerRouter(seed, () => sharing?.changed());
    sharing = new LoadSharing({
      url: redis.url,
      namespace: 'share-test',
      frontendId: id,
      ttlMs,
      ownLoad: () => router.pendingLoad(),
      onRemote: (w, share) => router.setRemoteLoad(w, share),
    });
    return { router, sharing, remote: (w: string) => router.metrics().workers.find((m) => m.workerId === w)!.remoteBlocks };
  }

  it('two routers that share spread alternating requests over both idle workers', async () => {
    const a = frontend('fa', 11);
    const b = frontend('fb', 12);
    await Promise.all([a.sharing.start(), b.sharing.start()]);
    const counts = new Map<string, number>();
    const placed = new Map<string, number>(); // blocks per frontend and worker
    for (let i = 0; i < 8; i++) {
      const [self, other, key] = i % 2 === 0 ? [a, b, 'a'] : [b, a, 'b'];
      const d = self.router.tryRoute({ requestId: rid(`q${i}`), blockHashes: blocks(1000 * i, 32) })!;
      counts.set(d.workerId, (counts.get(d.workerId) ?? 0) + 1);
      const total = (placed.get(key + d.workerId) ?? 0) + 32;
      placed.set(key + d.workerId, total);
      // the other frontend has it within a pub/sub hop
      await until('the share reached the other frontend', async () => other.remote(d.workerId) === total, 5000, 5);
    }
    expect([...counts.values()]).toEqual([4, 4]);
    expect(a.sharing.stats().published).toBeGreaterThanOrEqual(4);
    expect(b.sharing.stats().received).toBeGreaterThanOrEqual(4);
    // reports of the workers' own load take over: the pending parts, and so the shares, go to 0
    for (const f of [a, b]) for (const w of ['w0', 'w1']) f.router.updateLoad(wid(w), { ...idle, kv_active_blocks: 128, request_active_slots: 4 });
    await until('the shares went back to 0', async () => a.remote('w0') + a.remote('w1') + b.remote('w0') + b.remote('w1') === 0, 5000, 5);
    // a frontend that closes takes its share with it at once
    a.router.tryRoute({ requestId: rid('last'), blockHashes: blocks(99_000, 5) });
    await until('b sees a\'s last request', async () => b.remote('w0') + b.remote('w1') === 5, 5000, 5);
    await a.sharing.close();
    await until('a\'s share is gone', async () => b.remote('w0') + b.remote('w1') === 0, 500, 5);
    await b.sharing.close();
  });

  it('a frontend that dies leaves its share for at most its lapse time; routing never waits on Redis', async () => {
    const b = frontend('fb2', 13, 300);
    await b.sharing.start();
    const dead = new RedisConnection(redis.url, { name: 'dead-frontend' });
    await dead.whenReady(5000);
    await dead.redis.publish(frontendLoadChannel('share-test'), JSON.stringify(snap('gone', { w0: [50, 3] }, 300)));
    await until('b sees the dead frontend\'s share', async () => b.remote('w0') === 50, 5000, 5);
    const seenAt = performance.now();
    expect(b.router.tryRoute({ requestId: rid('x'), blockHashes: blocks(7000, 4) })!.workerId).toBe('w1');
    await until('the share lapsed', async () => b.remote('w0') === 0, 5000, 5);
    expect(performance.now() - seenAt).toBeLessThan(5000); // bounded: 1.25 ttl plus scheduling
    await dead.close();
    // Redis away: routing goes on, on the router's own view
    await redis.stop();
    for (let i = 0; i < 4; i++) expect(b.router.tryRoute({ requestId: rid(`off${i}`), blockHashes: blocks(8000 + 100 * i, 4) })).toBeDefined();
    await b.sharing.close();
    redis = await startPrivateRedis({ port: redis.port, password: redis.password });
  });
});
