// The router's prefix predictions: what a later request sees, and that finished records go once
// their grace has passed, however many distinct prefixes come by.
import { describe, expect, it } from 'vitest';
import type { BlockHash, RequestId, WorkerId } from '../../ts/protocol/index.ts';
import { PredictedPrefixes } from '../../ts/router/predictions.ts';

const h = (n: number) => n.toString(16).padStart(16, '0') as BlockHash;
const rid = (n: number) => `req-${n}` as RequestId;
const w = (n: number) => `worker-${n}` as WorkerId;

describe('PredictedPrefixes', () => {
  it('raises the overlap of the worker a shared prefix went to, until the grace passes', () => {
    const p = new PredictedPrefixes(2000);
    p.add(rid(1), w(1), [h(1), h(2), h(3)], 0);
    const overlaps = new Map<WorkerId, number>();
    p.merge([h(1), h(2), h(9)], overlaps, 10);
    expect(overlaps.get(w(1))).toBe(2);
    p.finish(rid(1), 100);
    const later = new Map<WorkerId, number>();
    p.merge([h(1), h(2)], later, 2099);
    expect(later.get(w(1))).toBe(2);
    const expired = new Map<WorkerId, number>();
    p.merge([h(1), h(2)], expired, 2100);
    expect(expired.size).toBe(0);
    expect(p.size).toBe(0);
    expect(p.keys).toBe(0);
  });

  it('holds no more than the running requests and the last grace period of finished ones under 10,000 distinct prefixes', () => {
    const p = new PredictedPrefixes(2000);
    let most = 0;
    for (let i = 0; i < 10_000; i++) {
      const now = i; // one request a millisecond, each with its own first block, finished at once
      p.add(rid(i), w(i % 4), [h(2 * i), h(2 * i + 1)], now);
      p.finish(rid(i), now);
      most = Math.max(most, p.size, p.keys);
    }
    expect(most).toBeLessThanOrEqual(2001);
    // Nothing routed for a while: the next decision sweeps every expired record.
    p.merge([h(1 << 30)], new Map(), 10_000 + 2000);
    expect(p.size).toBe(0);
    expect(p.keys).toBe(0);
  });

  it('keeps running requests whatever the time, and a retried id replaces its record', () => {
    const p = new PredictedPrefixes(2000);
    p.add(rid(1), w(1), [h(1)], 0);
    p.add(rid(2), w(2), [h(5)], 0);
    p.finish(rid(2), 0);
    p.merge([h(7)], new Map(), 1e9);
    expect(p.size).toBe(1); // req-1 still runs
    p.add(rid(1), w(3), [h(1)], 1e9); // routed again, elsewhere
    const held = new Map<WorkerId, number>();
    p.held([h(1)], held);
    expect([...held.keys()]).toEqual([w(3)]);
    p.finish(rid(1), 1e9);
    p.finish(rid(1), 1e9 + 5); // a second finish changes nothing
    p.merge([h(7)], new Map(), 1e9 + 2000);
    expect(p.size).toBe(0);
    expect(p.keys).toBe(0);
  });

  it('drops a worker that leaves, and the sweep then skips its records', () => {
    const p = new PredictedPrefixes(2000);
    p.add(rid(1), w(1), [h(1)], 0);
    p.finish(rid(1), 0);
    p.removeWorker(w(1));
    expect(p.size).toBe(0);
    p.add(rid(2), w(2), [h(1)], 1);
    p.merge([h(1)], new Map(), 2500);
    expect(p.size).toBe(1);
  });
});
