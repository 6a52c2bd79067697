// Router policies on hand-built candidate lists: the kv cost on hand-checked numbers, random
// tie-breaks, temperature sampling (distributions with a seeded rng, never timing), round-robin
// and random, and the settings' ranges.
import { describe, expect, it } from 'vitest';
import type { WorkerId } from '../../ts/protocol/index.ts';
import { createPolicy, kvCost, seededRng, type Candidate, type Policy } from '../../ts/router/index.ts';

function candidates(rows: [overlap: number, activeBlocks: number][]): Candidate[] {
  return rows.map(([overlap, activeBlocks], i) => ({ workerId: `w${i}` as WorkerId, joinSeq: i, overlap, activeBlocks }));
}

// How often each candidate index is picked in `draws` selections.
function histogram(policy: Policy, list: Candidate[], n: number, draws: number): number[] {
  const counts = list.map(() => 0);
  for (let i = 0; i < draws; i++) counts[policy.select(list, n)]!++;
  return counts;
}

describe('kv policy: cost', () => {
  // n = 10 blocks. Worker rows: [overlap, active blocks].
  const list = candidates([
    [6, 3], // 1 * (10 - 6) + 3 = 7      | 2 * 4 + 3 = 11
    [0, 0], // 1 * 10 + 0 = 10           | 2 * 10 + 0 = 20
    [10, 8], // 1 * 0 + 8 = 8            | 2 * 0 + 8 = 8
  ]);

  it('computes overlap_weight * (n - overlap) + active_blocks', () => {
    expect(list.map((c) => kvCost(c, 10, 1))).toEqual([7, 10, 8]);
    expect(list.map((c) => kvCost(c, 10, 2))).toEqual([11, 20, 8]);
    expect(list.map((c) => kvCost(c, 10, 0))).toEqual([3, 0, 8]);
    expect(kvCost(list[0]!, 10, 0.5)).toBe(5);
  });

  it('leaves out of the load the blocks held for requests in flight that the request shares', () => {
    // n = 68: [overlap, active, held] -> 1 * (68 - overlap) + max(0, active - held)
    const rows: Candidate[] = [
      { workerId: 'w0' as WorkerId, joinSeq: 0, overlap: 64, activeBlocks: 68, heldBlocks: 64 }, // 4 + 4 = 8
      { workerId: 'w1' as WorkerId, joinSeq: 1, overlap: 0, activeBlocks: 0, heldBlocks: 0 }, // 68 + 0 = 68
      { workerId: 'w2' as WorkerId, joinSeq: 2, overlap: 64, activeBlocks: 10, heldBlocks: 30 }, // 4 + 0 (never below 0)
    ];
    expect(rows.map((c) => kvCost(c, 68, 1))).toEqual([8, 68, 4]);
    expect(kvCost({ ...rows[0]!, heldBlocks: undefined }, 68, 1)).toBe(72); // the plain DESIGN cost
  });

  it('picks the lowest cost', () => {
    const rng = seededRng(1);
    expect(createPolicy('kv', {}, rng).select(list, 10)).toBe(0);
    expect(createPolicy('kv', { overlapWeight: 2 }, rng).select(list, 10)).toBe(2);
    expect(createPolicy('kv', { overlapWeight: 0 }, rng).select(list, 10)).toBe(1);
  });

  it('breaks exact ties at random, covering every tied worker', () => {
    // Costs with n = 8: 8-4+2 = 6, 8-0+0 = 8, 8-6+4 = 6, 8-2+0 = 6, 8-8+7 = 7.
    const tied = candidates([[4, 2], [0, 0], [6, 4], [2, 0], [8, 7]]);
    const counts = histogram(createPolicy('kv', {}, seededRng(42)), tied, 8, 3000);
    expect(counts[1]).toBe(0);
    expect(counts[4]).toBe(0);
    for (const i of [0, 2, 3]) expect(counts[i]).toBeGreaterThan(850); // 1000 expected each
  });
});

describe('kv policy: temperature', () => {
  // n = 10, costs 0, 5, 10 -> normalised z = 0, 0.5, 1.
  const list = candidates([[10, 0], [5, 0], [0, 0]]);

  it('T -> 0 is the argmin', () => {
    const counts = histogram(createPolicy('kv', { temperature: 1e-9 }, seededRng(3)), list, 10, 2000);
    expect(counts).toEqual([2000, 0, 0]);
  });

  it('T = 1 follows exp(-z): weights 1, e^-0.5, e^-1', () => {
    // 1 + 0.60653 + 0.36788 = 1.97441 -> p = 0.5065, 0.3072, 0.1863
    const draws = 20000;
    const counts = histogram(createPolicy('kv', { temperature: 1 }, seededRng(5)), list, 10, draws);
    const expected = [0.5065, 0.3072, 0.1863];
    counts.forEach((c, i) => expect(Math.abs(c / draws - expected[i]!)).toBeLessThan(0.015));
  });

  it('a large T spreads choices almost uniformly', () => {
    const draws = 9000;
    const counts = histogram(createPolicy('kv', { temperature: 1000 }, seededRng(9)), list, 10, draws);
    for (const c of counts) expect(Math.abs(c / draws - 1 / 3)).toBeLessThan(0.03);
  });

  it('equal costs are uniform whatever T', () => {
    const same = candidates([[2, 1], [3, 2], [1, 0]]); // n = 4: costs 3, 3, 3
    const counts = histogram(createPolicy('kv', { temperature: 0.5 }, seededRng(11)), same, 4, 3000);
    for (const c of counts) expect(c).toBeGreaterThan(850);
  });
});

describe('round-robin and random policies', () => {
  it('round-robin cycles in join order and skips absent candidates', () => {
    const policy = createPolicy('round-robin', {}, seededRng(1));
    const all = candidates([[0, 0], [0, 0], [0, 0]]);
    const picked = Array.from({ length: 5 }, () => all[policy.select(all, 1)]!.workerId);
    expect(picked).toEqual(['w0', 'w1', 'w2', 'w0', 'w1']);
    // w2 is at capacity (not a candidate): after w1 comes w0.
    const withoutW2 = all.slice(0, 2);
    expect(withoutW2[policy.select(withoutW2, 1)]!.workerId).toBe('w0');
    expect(all[policy.select(all, 1)]!.workerId).toBe('w1');
  });

  it('random covers every candidate about evenly, ignoring the cost', () => {
    const list = candidates([[10, 0], [0, 50], [0, 0], [5, 5]]);
    const counts = histogram(createPolicy('random', {}, seededRng(13)), list, 10, 8000);
    for (const c of counts) expect(Math.abs(c / 8000 - 0.25)).toBeLessThan(0.03);
  });
});

describe('policy settings', () => {
  it('refuses values out of range', () => {
    const rng = seededRng(1);
    expect(() => createPolicy('kv', { overlapWeight: -1 }, rng)).toThrow(RangeError);
    expect(() => createPolicy('kv', { temperature: -0.1 }, rng)).toThrow(RangeError);
    expect(() => createPolicy('kv', { temperature: Number.NaN }, rng)).toThrow(/temperature/);
    expect(() => createPolicy('fastest' as 'kv', {}, rng)).toThrow(/kv, round-robin, random/);
  });
});
