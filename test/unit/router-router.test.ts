// KvRouter: joins and leaves, block-size refusal, routing by overlap, the active-block estimate
// (route adds, finish removes, load reports correct), capacity skipping, the wait queue
// (release on finish, full, timeout, abort), policies through the router, and its metrics.
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { BlockHash, KvEvent, LoadMetrics, RequestId, WorkerId } from '../../ts/protocol/index.ts';
import { KvRouter, RouterOverloadedError, seededRng, type RouterSettings, type WorkerSpec } from '../../ts/router/index.ts';

const wid = (s: string) => s as WorkerId;
const rid = (s: string) => s as RequestId;
const hash = (i: number) => i.toString(16).padStart(16, '0') as BlockHash;
const blocks = (from: number, count: number) => Array.from({ length: count }, (_, i) => hash(from + i));

function spec(id: string, over: Partial<WorkerSpec> = {}): WorkerSpec {
  return { workerId: wid(id), blockSize: 16, kvTotalBlocks: 100, requestTotalSlots: 4, ...over };
}

function load(over: Partial<LoadMetrics>): LoadMetrics {
  return {
    request_active_slots: 0,
    request_total_slots: 4,
    kv_active_blocks: 0,
    kv_total_blocks: 100,
    num_requests_waiting: 0,
    kv_cache_usage: 0,
    prefix_cache_hit_rate: 0,
    ...over,
  };
}

// A router with workers joined and each worker's cache seeded by a `cleared` + `stored` replay.
function routerWith(caches: Record<string, BlockHash[]>, settings: Partial<RouterSettings> = {}, specs: Record<string, Partial<WorkerSpec>> = {}) {
  const router = new KvRouter({ blockSize: 16, rng: seededRng(1), ...settings });
  for (const [id, held] of Object.entries(caches)) {
    expect(router.addWorker(spec(id, specs[id]))).toBeUndefined();
    expect(router.applyEvent({ worker_id: wid(id), event_id: 0, data: { cleared: {} } })).toBe('ok');
    if (held.length > 0) {
      const stored: KvEvent = { worker_id: wid(id), event_id: 1, data: { stored: { parent_hash: null, block_hashes: held } } };
      expect(router.applyEvent(stored)).toBe('ok');
    }
  }
  return router;
}

const activeOf = (router: KvRouter, id: string) => router.metrics().workers.find((w) => w.workerId === id)!;

afterEach(() => {
  vi.useRealTimers();
});

describe('KvRouter: workers', () => {
  it('refuses a worker whose block size differs, and never routes to it', () => {
    const router = new KvRouter({ blockSize: 16 });
    expect(router.addWorker(spec('big', { blockSize: 32 }))).toMatch(/block size 32 differs from the router's 16/);
    expect(router.addWorker(spec('ok'))).toBeUndefined();
    expect(router.metrics().workers.map((w) => w.workerId)).toEqual(['ok']);
    expect(router.applyEvent({ worker_id: wid('big'), event_id: 0, data: { cleared: {} } })).toBe('unknown_worker');
    for (let i = 0; i < 5; i++) {
      expect(router.tryRoute({ requestId: rid(`r${i}`), blockHashes: blocks(0, 2) })!.workerId).toBe('ok');
    }
  });

  it('refuses a worker without capacity', () => {
    const router = new KvRouter({ blockSize: 16 });
    expect(router.addWorker(spec('w', { kvTotalBlocks: 0 }))).toMatch(/must be > 0/);
  });

  it('a worker that leaves loses its blocks and is never chosen', () => {
    const router = routerWith({ a: blocks(0, 8), b: [] });
    expect(router.tryRoute({ requestId: rid('r0'), blockHashes: blocks(0, 8) })).toMatchObject({ workerId: 'a', overlapBlocks: 8 });
    expect(router.removeWorker(wid('a'))).toBe(true);
    expect(router.index.overlaps(blocks(0, 8)).size).toBe(0);
    expect(router.metrics().indexedBlocks).toBe(0);
    for (let i = 1; i < 6; i++) {
      expect(router.tryRoute({ requestId: rid(`r${i}`), blockHashes: blocks(0, 8) })).toMatchObject({ workerId: 'b', overlapBlocks: 0 });
    }
    // Late events from the departed worker are ignored; its request can still finish.
    expect(router.applyEvent({ worker_id: wid('a'), event_id: 2, data: { removed: { block_hashes: [hash(0)] } } })).toBe('unknown_worker');
    router.finish(rid('r0'));
    expect(router.metrics().inFlight).toBe(5);
  });

  it("a joined worker's first event is a gap unless it is a replay's `cleared`", () => {
    const router = new KvRouter({ blockSize: 16 });
    router.addWorker(spec('a'));
    router.addWorker(spec('b'));
    const stored: KvEvent['data'] = { stored: { parent_hash: null, block_hashes: [hash(1)] } };
    expect(router.applyEvent({ worker_id: wid('a'), event_id: 40, data: stored })).toBe('gap');
    expect(router.metrics().workers[0]!.awaitingReplay).toBe(true);
    expect(router.applyEvent({ worker_id: wid('b'), event_id: 40, data: { cleared: {} } })).toBe('ok');
    expect(router.applyEvent({ worker_id: wid('a'), event_id: 41, data: { cleared: {} } })).toBe('ok');
    expect(router.metrics()).toMatchObject({ gaps: 1, workers: [{ awaitingReplay: false }, { awaitingReplay: false }] });
  });
});

describe('KvRouter: routing and the active-block estimate', () => {
  it('routes to the longest cached prefix and returns the prefix hit rate', () => {
    const router = routerWith({ a: blocks(0, 3), b: blocks(0, 6), c: [] });
    const decision = router.tryRoute({ requestId: rid('r'), blockHashes: blocks(0, 8) });
    // costs (n = 8): a 5 + 0, b 2 + 0, c 8 + 0
    expect(decision).toEqual({ workerId: 'b', requestBlocks: 8, overlapBlocks: 6, prefixHitRate: 0.75 });
  });

  it('route adds the new blocks, finish removes them, and the cost follows', () => {
    const router = routerWith({ a: blocks(0, 6), b: [] });
    // Requests of n = 10: the 6 blocks a caches, then 4 of their own.
    const req = (i: number) => ({ requestId: rid(`r${i}`), blockHashes: [...blocks(0, 6), ...blocks(100 * i, 4)] });
    // r1: a costs 4 + 0, b 10 + 0 -> a, +4 active blocks.
    expect(router.tryRoute(req(1))!.workerId).toBe('a');
    expect(activeOf(router, 'a')).toMatchObject({ activeBlocks: 4, activeRequests: 1 });
    // r2: a holds r2's first 6 blocks for r1, so 4 + max(0, 4 - 6) = 4; b 10 -> a, 8 active.
    expect(router.tryRoute(req(2))!.workerId).toBe('a');
    expect(activeOf(router, 'a').activeBlocks).toBe(8);
    // r3: a 4 + (8 - 6) = 6, b 10 -> a, 12 active; r4: a 4 + (12 - 6) = 10 = b: a tie.
    expect(router.tryRoute(req(3))!.workerId).toBe('a');
    expect(activeOf(router, 'a').activeBlocks).toBe(12);
    router.finish(rid('r1'));
    router.finish(rid('r1')); // idempotent
    expect(activeOf(router, 'a')).toMatchObject({ activeBlocks: 8, activeRequests: 2 });
    // r5 after r1 left: a 4 + (8 - 6) = 6 -> a, 12 active; r6: a 4 + (12 - 6) = 10; r7: 14 > 10 -> b.
    expect(router.tryRoute(req(5))!.workerId).toBe('a');
    router.tryRoute(req(6));
    const sixth = activeOf(router, 'a').activeRequests === 4 ? 'a' : 'b';
    expect(router.tryRoute(req(7))!.workerId).toBe(sixth === 'a' ? 'b' : 'a');
    for (const i of [2, 3, 5, 6, 7]) router.finish(rid(`r${i}`));
    expect(router.metrics().workers.map((w) => [w.activeBlocks, w.activeRequests])).toEqual([[0, 0], [0, 0]]);
  });

  it('does not count as load the blocks a request shares with requests in flight on a worker', () => {
    // The shared-prefix case: a caches a 64-block prefix and runs one request of its group; b is
    // idle. Without the held term a would cost 4 + 68 = 72 against b's 68 + 0, and the group's
    // next request would compute the prefix again on b.
    const prefix = blocks(0, 64);
    const router = routerWith({ a: prefix, b: [] });
    expect(router.tryRoute({ requestId: rid('q1'), blockHashes: [...prefix, ...blocks(1000, 4)] })!.workerId).toBe('a');
    router.updateLoad(wid('a'), load({ kv_active_blocks: 68, request_active_slots: 1, kv_total_blocks: 1000 }));
    router.updateLoad(wid('b'), load({ kv_total_blocks: 1000 }));
    // q2: a costs 4 + max(0, 68 - 64) = 8, b 68 + 0 -> a.
    const d = router.tryRoute({ requestId: rid('q2'), blockHashes: [...prefix, ...blocks(2000, 4)] })!;
    expect(d).toMatchObject({ workerId: 'a', overlapBlocks: 64 });
    // An unrelated request gets nothing held anywhere: a 68 + 72, b 68 + 0 -> b.
    expect(router.tryRoute({ requestId: rid('u'), blockHashes: blocks(5000, 68) })!.workerId).toBe('b');
    // Once the group's requests finish, a holds nothing for them: the plain DESIGN cost again.
    router.finish(rid('q1'));
    router.finish(rid('q2'));
    router.updateLoad(wid('a'), load({ kv_active_blocks: 60, kv_total_blocks: 1000 }));
    // q3: a 4 + 60 = 64 against b 68 + 68 (u's blocks, nothing held for q3) = 136 -> a.
    expect(router.tryRoute({ requestId: rid('q3'), blockHashes: [...prefix, ...blocks(3000, 4)] })!.workerId).toBe('a');
  });

  it('a load report replaces the base; only requests routed after it stay pending', () => {
    const clock = { ms: 0 };
    const router = routerWith({ a: [] }, { now: () => clock.ms });
    router.tryRoute({ requestId: rid('old'), blockHashes: blocks(0, 5) }); // estimate 5
    router.updateLoad(wid('a'), load({ kv_active_blocks: 12, request_active_slots: 1, num_requests_waiting: 1 }));
    expect(activeOf(router, 'a')).toMatchObject({ activeBlocks: 12, activeRequests: 2 });
    router.tryRoute({ requestId: rid('new'), blockHashes: blocks(100, 3) });
    expect(activeOf(router, 'a')).toMatchObject({ activeBlocks: 15, activeRequests: 3 });
    router.finish(rid('new')); // routed after the report: leaves the pending part
    expect(activeOf(router, 'a')).toMatchObject({ activeBlocks: 12, activeRequests: 2 });
    router.finish(rid('old')); // counted in the report: leaves the base
    expect(activeOf(router, 'a')).toMatchObject({ activeBlocks: 7, activeRequests: 1 });
    // Reports within 500 ms of those finishes are lowered by their 8 blocks and 2 requests (a
    // report may have been taken before they finished); later ones are taken as they are.
    router.updateLoad(wid('a'), load({ kv_active_blocks: 2 }));
    expect(activeOf(router, 'a')).toMatchObject({ activeBlocks: 0, activeRequests: 0 });
    clock.ms += 600;
    router.updateLoad(wid('a'), load({ kv_active_blocks: 2 }));
    router.finish(rid('old'));
    expect(activeOf(router, 'a')).toMatchObject({ activeBlocks: 2, activeRequests: 0 });
    expect(router.updateLoad(wid('nobody'), load({}))).toBe(false);
  });

  it('a report taken before a request finished does not bring its blocks back', () => {
    const router = routerWith({ a: [] });
    router.tryRoute({ requestId: rid('r'), blockHashes: blocks(0, 22) });
    router.updateLoad(wid('a'), load({ kv_active_blocks: 22, request_active_slots: 1 }));
    router.finish(rid('r'));
    expect(activeOf(router, 'a')).toMatchObject({ activeBlocks: 0, activeRequests: 0 });
    // Published while the request still ran, delivered after it finished:
    router.updateLoad(wid('a'), load({ kv_active_blocks: 22, request_active_slots: 1 }));
    expect(activeOf(router, 'a')).toMatchObject({ activeBlocks: 0, activeRequests: 0 });
  });

  it('round-robin and random policies through the router', () => {
    const rr = routerWith({ a: blocks(0, 4), b: [], c: [] }, { policy: 'round-robin' });
    const picks = Array.from({ length: 6 }, (_, i) => rr.tryRoute({ requestId: rid(`r${i}`), blockHashes: blocks(0, 4) })!);
    expect(picks.map((d) => d.workerId)).toEqual(['a', 'b', 'c', 'a', 'b', 'c']);
    expect(picks.map((d) => d.prefixHitRate)).toEqual([1, 0, 0, 1, 0, 0]);

    const random = routerWith({ a: [], b: [], c: [] }, { policy: 'random' }, { a: { requestTotalSlots: 1000 }, b: { requestTotalSlots: 1000 }, c: { requestTotalSlots: 1000 } });
    const seen = new Set<string>();
    for (let i = 0; i < 60; i++) seen.add(random.tryRoute({ requestId: rid(`r${i}`), blockHashes: blocks(0, 1) })!.workerId);
    expect([...seen].sort()).toEqual(['a', 'b', 'c']);
  });

  it('refuses a request id already in flight', () => {
    const router = routerWith({ a: [] });
    router.tryRoute({ requestId: rid('r'), blockHashes: blocks(0, 1) });
    expect(() => router.tryRoute({ requestId: rid('r'), blockHashes: blocks(0, 1) })).toThrow(TypeError);
  });

  it('keeps metrics: decisions, hit rate, routed and overlap per worker', () => {
    const router = routerWith({ a: blocks(0, 4), b: [] });
    router.tryRoute({ requestId: rid('r1'), blockHashes: blocks(0, 8) }); // a: overlap 4, cost 4 < 8
    router.tryRoute({ requestId: rid('r2'), blockHashes: blocks(50, 4) }); // a: 4 + 4 = 8, b: 4 -> b
    expect(router.metrics()).toMatchObject({
      decisions: 2,
      requestBlocks: 12,
      overlapBlocks: 4,
      hitRate: 4 / 12,
      inFlight: 2,
      workers: [
        { workerId: 'a', routed: 1, overlapBlocks: 4, cachedBlocks: 4 },
        { workerId: 'b', routed: 1, overlapBlocks: 0, cachedBlocks: 0 },
      ],
    });
  });
});

describe('KvRouter: capacity and the wait queue', () => {
  it('skips a worker whose blocks would overflow, even with the best overlap', () => {
    const router = routerWith({ a: blocks(0, 10), b: [] }, {}, { a: { kvTotalBlocks: 20 } });
    router.updateLoad(wid('a'), load({ kv_active_blocks: 15, kv_total_blocks: 20, request_active_slots: 1 }));
    // n = 16: on a, 15 active + 6 new = 21 > 20 -> skipped despite its 10 cached blocks.
    expect(router.tryRoute({ requestId: rid('r1'), blockHashes: blocks(0, 16) })!.workerId).toBe('b');
    // n = 12, 10 of them a's: 15 + 2 = 17 <= 20 -> a fits, cost 2 + 15 = 17 vs b 12 + (16 - 10) = 18
    // (b holds the first 10 for r1, in flight there).
    expect(router.tryRoute({ requestId: rid('r2'), blockHashes: [...blocks(0, 10), ...blocks(50, 2)] })!.workerId).toBe('a');
  });

  it('skips a worker whose slots are full with requests waiting', () => {
    const router = routerWith({ a: blocks(0, 4), b: [] });
    // 4 of 4 slots busy, none waiting: a still takes one more (it will wait in the engine).
    router.updateLoad(wid('a'), load({ request_active_slots: 4, kv_active_blocks: 1 }));
    expect(router.tryRoute({ requestId: rid('r1'), blockHashes: blocks(0, 4) })!.workerId).toBe('a');
    // Now 5 requests for 4 slots: skipped.
    expect(router.tryRoute({ requestId: rid('r2'), blockHashes: blocks(0, 4) })!.workerId).toBe('b');
    router.updateLoad(wid('a'), load({ request_active_slots: 4, num_requests_waiting: 1 }));
    expect(router.tryRoute({ requestId: rid('r3'), blockHashes: blocks(0, 4) })!.workerId).toBe('b');
  });

  it('an idle worker takes a request larger than its cache', () => {
    const router = routerWith({ a: [] }, {}, { a: { kvTotalBlocks: 8 } });
    expect(router.tryRoute({ requestId: rid('huge'), blockHashes: blocks(0, 20) })!.workerId).toBe('a');
  });

  it('when every worker is full, requests wait in FIFO order and go when one finishes', async () => {
    const router = routerWith({ a: [], b: [] }, {}, { a: { kvTotalBlocks: 10 }, b: { kvTotalBlocks: 10 } });
    const d1 = await router.route({ requestId: rid('r1'), blockHashes: blocks(0, 8) });
    const d2 = await router.route({ requestId: rid('r2'), blockHashes: blocks(100, 8) });
    expect(d2.workerId).not.toBe(d1.workerId); // costs 16 vs 8
    const order: string[] = [];
    const r3 = router.route({ requestId: rid('r3'), blockHashes: blocks(200, 8) }).then((d) => (order.push('r3'), d));
    const r4 = router.route({ requestId: rid('r4'), blockHashes: blocks(300, 1) }).then((d) => (order.push('r4'), d));
    // 8 + 8 > 10 everywhere: r3 waits. r4 would fit (8 + 1 <= 10) but waits behind r3; so does a
    // new tryRoute.
    expect(router.tryRoute({ requestId: rid('r5'), blockHashes: blocks(400, 1) })).toBeUndefined();
    expect(router.metrics()).toMatchObject({ queueDepth: 2, queuedTotal: 2 });
    router.finish(rid('r1'));
    const [d3, d4] = await Promise.all([r3, r4]);
    expect(order).toEqual(['r3', 'r4']);
    expect(d3.workerId).toBe(d1.workerId);
    expect(d4.requestBlocks).toBe(1);
    expect(router.metrics().queueDepth).toBe(0);
  });

  it('a load report that frees blocks releases the queue', async () => {
    const router = routerWith({ a: [] }, {}, { a: { kvTotalBlocks: 10 } });
    router.updateLoad(wid('a'), load({ kv_active_blocks: 9, kv_total_blocks: 10, request_active_slots: 1 }));
    const waiting = router.route({ requestId: rid('r'), blockHashes: blocks(0, 4) });
    expect(router.metrics().queueDepth).toBe(1);
    router.updateLoad(wid('a'), load({ kv_active_blocks: 2, kv_total_blocks: 10, request_active_slots: 1 }));
    await expect(waiting).resolves.toMatchObject({ workerId: 'a' });
  });

  it('a full queue rejects with RouterOverloadedError at once', async () => {
    const router = routerWith({ a: [] }, { maxQueued: 1 }, { a: { kvTotalBlocks: 4 } });
    await router.route({ requestId: rid('r1'), blockHashes: blocks(0, 4) });
    const queued = router.route({ requestId: rid('r2'), blockHashes: blocks(10, 4) });
    const rejected = router.route({ requestId: rid('r3'), blockHashes: blocks(20, 4) });
    await expect(rejected).rejects.toBeInstanceOf(RouterOverloadedError);
    await expect(rejected).rejects.toMatchObject({ reason: 'queue_full', status: 503, code: 'ERR_ROUTER_OVERLOADED' });
    router.finish(rid('r1'));
    await expect(queued).resolves.toMatchObject({ workerId: 'a' });
    expect(router.metrics().rejected).toEqual({ queue_full: 1, timeout: 0, no_workers: 0 });
  });

  it('refusesNow says before any prompt what route() would: queue_full only when nothing has room and the queue is full', async () => {
    const none = routerWith({}, { maxQueued: 0 });
    expect(none.refusesNow()).toBeUndefined(); // no workers: route() answers no_workers itself
    const router = routerWith({ a: [] }, { maxQueued: 1 }, { a: { kvTotalBlocks: 4 } });
    expect(router.refusesNow()).toBeUndefined(); // idle
    await router.route({ requestId: rid('r1'), blockHashes: blocks(0, 4) });
    expect(router.refusesNow()).toBeUndefined(); // full, but one may wait
    const queued = router.route({ requestId: rid('r2'), blockHashes: blocks(10, 4) });
    const refused = router.refusesNow();
    expect(refused).toBeInstanceOf(RouterOverloadedError);
    expect(refused).toMatchObject({ reason: 'queue_full', status: 503 });
    await expect(router.route({ requestId: rid('r3'), blockHashes: blocks(20, 1) })).rejects.toMatchObject({ reason: 'queue_full' });
    expect(router.metrics().rejected.queue_full).toBe(2); // counted as route() counts it
    // Once the requests finish, nothing is refused.
    router.finish(rid('r1'));
    await queued;
    router.finish(rid('r2'));
    expect(router.refusesNow()).toBeUndefined();
  });

  it('a request that waits past the timeout is rejected', async () => {
    vi.useFakeTimers();
    const router = routerWith({ a: [] }, { queueTimeoutMs: 5000 }, { a: { kvTotalBlocks: 4 } });
    await router.route({ requestId: rid('r1'), blockHashes: blocks(0, 4) });
    const waiting = router.route({ requestId: rid('r2'), blockHashes: blocks(10, 4) });
    const outcome = expect(waiting).rejects.toMatchObject({ name: 'RouterOverloadedError', reason: 'timeout' });
    vi.advanceTimersByTime(4999);
    expect(router.metrics().queueDepth).toBe(1);
    vi.advanceTimersByTime(1);
    await outcome;
    expect(router.metrics()).toMatchObject({ queueDepth: 0, rejected: { timeout: 1 } });
    // The timed-out request is gone: finishing r1 routes nothing.
    router.finish(rid('r1'));
    expect(router.metrics().decisions).toBe(1);
  });

  it('an aborted request leaves the queue', async () => {
    const router = routerWith({ a: [] }, {}, { a: { kvTotalBlocks: 4 } });
    await router.route({ requestId: rid('r1'), blockHashes: blocks(0, 4) });
    const controller = new AbortController();
    const waiting = router.route({ requestId: rid('r2'), blockHashes: blocks(10, 4), signal: controller.signal });
    controller.abort(new Error('client went away'));
    await expect(waiting).rejects.toThrow('client went away');
    expect(router.metrics().queueDepth).toBe(0);
  });

  it('a queued request with a malformed hash is rejected without blocking the queue', async () => {
    const router = routerWith({ a: [] }, {}, { a: { kvTotalBlocks: 4 } });
    await router.route({ requestId: rid('r1'), blockHashes: blocks(0, 4) });
    const first = router.route({ requestId: rid('r2'), blockHashes: blocks(10, 4) });
    const bad = router.route({ requestId: rid('bad'), blockHashes: ['not-a-hash' as BlockHash] });
    const last = router.route({ requestId: rid('r3'), blockHashes: blocks(20, 1) });
    expect(() => router.route({ requestId: rid('r3'), blockHashes: [] })).toThrow(TypeError); // already waiting
    router.finish(rid('r1'));
    await expect(first).resolves.toMatchObject({ workerId: 'a' });
    await expect(bad).rejects.toBeInstanceOf(TypeError);
    router.finish(rid('r2'));
    await expect(last).resolves.toMatchObject({ workerId: 'a' });
  });

  it('no workers, or a closed router, reject with RouterOverloadedError', async () => {
    const router = new KvRouter({ blockSize: 16 });
    await expect(router.route({ requestId: rid('r'), blockHashes: [] })).rejects.toMatchObject({ reason: 'no_workers' });
    const full = routerWith({ a: [] }, {}, { a: { kvTotalBlocks: 4 } });
    await full.route({ requestId: rid('r1'), blockHashes: blocks(0, 4) });
    const waiting = full.route({ requestId: rid('r2'), blockHashes: blocks(10, 4) });
    full.close();
    await expect(waiting).rejects.toMatchObject({ reason: 'closed' });
    await expect(full.route({ requestId: rid('r3'), blockHashes: [] })).rejects.toMatchObject({ reason: 'closed' });
  });

  it("gives a freed slot to the waiting group with the fewest in flight, not to a big request's next choice", async () => {
    const router = routerWith({ a: [] }, {}, { a: { requestTotalSlots: 4 } });
    const big = (i: number) => router.route({ requestId: rid(`big-${i}`), blockHashes: [], group: 'big' });
    const order: string[] = [];
    await big(0);
    await big(1); // 2 in flight: a bulk request may fill 2 of 4 slots (BULK_SHARE)
    const waiting = [2, 3].map((i) => big(i).then(() => order.push(`big-${i}`)));
    expect(router.metrics().queueDepth).toBe(2);
    // Requests with nothing in flight take the slots kept free, though bulk ones wait ahead of them.
    await router.route({ requestId: rid('small'), blockHashes: [], group: 'small' });
    const other = router.route({ requestId: rid('other'), blockHashes: [], group: 'other' }).then(() => order.push('other'));
    await other;
    await router.route({ requestId: rid('one-more'), blockHashes: [], group: 'one-more' }); // 5 requests for 4 slots: a still takes one more (it waits in the engine)
    const late = router.route({ requestId: rid('late'), blockHashes: [], group: 'late' }).then(() => order.push('late'));
    expect(router.metrics().queueDepth).toBe(3);
    router.finish(rid('big-0'));
    await late;
    expect(order).toEqual(['other', 'late']); // the freed slot went to `late`, not to big's next choice
    for (const id of ['small', 'other', 'one-more', 'late', 'big-1']) router.finish(rid(id));
    await Promise.all(waiting);
    expect(order).toEqual(['other', 'late', 'big-2', 'big-3']);
  });

  it('an admitted group waits without the timeout and outside the queue limit; a new one is refused at the limit', async () => {
    vi.useFakeTimers();
    const router = routerWith({ a: [] }, { maxQueued: 1, queueTimeoutMs: 1000 }, { a: { requestTotalSlots: 4 } });
    for (let i = 0; i < 2; i++) await router.route({ requestId: rid(`big-${i}`), blockHashes: [], group: 'big' });
    const bulk = [2, 3, 4].map((i) => router.route({ requestId: rid(`big-${i}`), blockHashes: [], group: 'big' }));
    for (const g of ['x', 'y', 'v']) await router.route({ requestId: rid(g), blockHashes: [], group: g }); // 5 of 4: full now
    const queued = router.route({ requestId: rid('z'), blockHashes: [], group: 'z' });
    await expect(router.route({ requestId: rid('w'), blockHashes: [], group: 'w' })).rejects.toMatchObject({ reason: 'queue_full' });
    const timedOut = expect(queued).rejects.toMatchObject({ reason: 'timeout' });
    vi.advanceTimersByTime(1000);
    await timedOut;
    expect(router.metrics().queueDepth).toBe(3); // the bulk ones still wait
    for (const id of ['x', 'y', 'v', 'big-0', 'big-1']) router.finish(rid(id));
    await Promise.all(bulk.slice(0, 2)); // big's share again: 2 in flight
    router.finish(rid('big-2'));
    await bulk[2];
  });

  it('--active-decode-blocks-threshold: a worker above that share of its cache is busy', async () => {
    const router = routerWith({ a: [], b: [] }, { activeDecodeBlocksThreshold: 0.5, maxQueued: 0 });
    router.updateLoad(wid('a'), load({ kv_active_blocks: 51, request_active_slots: 1 }));
    router.updateLoad(wid('b'), load({ kv_active_blocks: 50, request_active_slots: 1 }));
    expect(activeOf(router, 'a').busy).toBe(true);
    expect(activeOf(router, 'b').busy).toBe(false);
    expect(router.tryRoute({ requestId: rid('r1'), blockHashes: blocks(0, 2) })!.workerId).toBe('b');
    // b is now at 52 of 100: both busy, and with no queue the next one is refused at once.
    await expect(router.route({ requestId: rid('r2'), blockHashes: blocks(10, 2) })).rejects.toMatchObject({ reason: 'queue_full' });
    expect(router.metrics().rejected.queue_full).toBe(1);
  });

  it('--active-prefill-tokens-threshold: prompt tokens routed and not yet prefilled make a worker busy until prefilled()', async () => {
    const router = routerWith({ a: [] }, { activePrefillTokensThreshold: 100 });
    router.tryRoute({ requestId: rid('long'), blockHashes: blocks(0, 8), promptTokens: 130 });
    expect(activeOf(router, 'a')).toMatchObject({ prefillTokens: 130, busy: true });
    const waiting = router.route({ requestId: rid('next'), blockHashes: blocks(100, 1), promptTokens: 20 });
    expect(router.metrics().queueDepth).toBe(1);
    router.prefilled(rid('long'));
    await expect(waiting).resolves.toMatchObject({ workerId: 'a' });
    expect(activeOf(router, 'a').prefillTokens).toBe(20);
    router.prefilled(rid('long')); // idempotent
    router.finish(rid('next')); // finishing before its first output takes its tokens off too
    router.finish(rid('long'));
    expect(activeOf(router, 'a').prefillTokens).toBe(0);
  });

  it('counts only the uncached part of a prompt as prefill tokens', () => {
    const router = routerWith({ a: blocks(0, 4) }, { activePrefillTokensThreshold: 1000 });
    router.tryRoute({ requestId: rid('r'), blockHashes: blocks(0, 6), promptTokens: 100 });
    expect(activeOf(router, 'a').prefillTokens).toBe(100 - 4 * 16);
  });

  it('refuses settings out of range', () => {
    expect(() => new KvRouter({ blockSize: 0 })).toThrow(RangeError);
    expect(() => new KvRouter({ blockSize: 16, maxQueued: -1 })).toThrow(/maxQueued/);
    expect(() => new KvRouter({ blockSize: 16, queueTimeoutMs: 0 })).toThrow(/queueTimeoutMs/);
    expect(() => new KvRouter({ blockSize: 16, overlapWeight: -2 })).toThrow(/overlapWeight/);
    expect(() => new KvRouter({ blockSize: 16, activeDecodeBlocksThreshold: 0 })).toThrow(/activeDecodeBlocksThreshold/);
    expect(() => new KvRouter({ blockSize: 16, activeDecodeBlocksThreshold: 1.5 })).toThrow(/activeDecodeBlocksThreshold/);
    expect(() => new KvRouter({ blockSize: 16, activePrefillTokensThreshold: 0.5 })).toThrow(/activePrefillTokensThreshold/);
  });
});

describe('KvRouter: predictions (predictionGraceMs > 0)', () => {
  const hashes = (seed: number, n: number) => Array.from({ length: n }, (_, i) => (seed * 1000 + i).toString(16).padStart(16, '0') as BlockHash);
  const worker = (id: string) => ({ workerId: id as WorkerId, blockSize: 16, kvTotalBlocks: 1000, requestTotalSlots: 64 });

  it('sends a second request of the same prefix to the first one\'s worker before any event arrives', async () => {
    const router = new KvRouter({ blockSize: 16, predictionGraceMs: 2000, rng: seededRng(3) });
    for (const id of ['a', 'b', 'c', 'd']) router.addWorker(worker(id));
    const prefix = hashes(1, 20);
    const first = await router.route({ requestId: 'r1' as RequestId, blockHashes: [...prefix, ...hashes(2, 2)] });
    router.finish('r1' as RequestId);
    const second = await router.route({ requestId: 'r2' as RequestId, blockHashes: [...prefix, ...hashes(3, 2)] });
    expect(second.workerId).toBe(first.workerId);
    expect(second.overlapBlocks).toBe(20);
    router.close();
  });

  it('forgets a prediction when its worker leaves, and never touches the index', async () => {
    const router = new KvRouter({ blockSize: 16, predictionGraceMs: 2000, rng: seededRng(4) });
    for (const id of ['a', 'b']) router.addWorker(worker(id));
    const prefix = hashes(5, 8);
    const first = await router.route({ requestId: 'r1' as RequestId, blockHashes: prefix });
    expect(router.index.stats().blocks).toBe(0);
    router.removeWorker(first.workerId);
    const second = await router.route({ requestId: 'r2' as RequestId, blockHashes: prefix });
    expect(second.workerId).not.toBe(first.workerId);
    expect(second.overlapBlocks).toBe(0);
    router.close();
  });

  it('is off by default', async () => {
    const router = new KvRouter({ blockSize: 16, rng: seededRng(5) });
    for (const id of ['a', 'b']) router.addWorker(worker(id));
    const prefix = hashes(6, 8);
    await router.route({ requestId: 'r1' as RequestId, blockHashes: prefix });
    const second = await router.route({ requestId: 'r2' as RequestId, blockHashes: prefix });
    expect(second.overlapBlocks).toBe(0);
    router.close();
  });
});
