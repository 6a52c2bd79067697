// The launcher's core placement: disjoint contiguous ranges per worker, ranks' shares equal.
import { describe, expect, it } from 'vitest';
import { cpuShares } from '../../ts/launcher/placement.ts';

describe('cpuShares', () => {
  it('gives each worker its own contiguous range, ranks sharing the cores evenly', () => {
    expect(cpuShares([1, 1], 16)).toEqual([
      { numThreads: 8, cpuOffset: 0 },
      { numThreads: 8, cpuOffset: 8 },
    ]);
    // The seed's Example 5 on 16 cores: a TP 4 decode worker and 4 prefill workers.
    expect(cpuShares([4, 1, 1, 1, 1], 16)).toEqual([
      { numThreads: 8, cpuOffset: 0 },
      { numThreads: 2, cpuOffset: 8 },
      { numThreads: 2, cpuOffset: 10 },
      { numThreads: 2, cpuOffset: 12 },
      { numThreads: 2, cpuOffset: 14 },
    ]);
    // Cores that do not divide: the rest stays unused rather than shared.
    expect(cpuShares([2, 1], 7)).toEqual([
      { numThreads: 4, cpuOffset: 0 },
      { numThreads: 2, cpuOffset: 4 },
    ]);
  });

  it('gives no range when there are more ranks than cores', () => {
    expect(cpuShares([1, 1, 1, 1, 1, 1, 1, 1], 2)).toEqual(Array(8).fill({ numThreads: 1, cpuOffset: undefined }));
    expect(cpuShares([4, 1], 2)).toEqual([
      { numThreads: 4, cpuOffset: undefined },
      { numThreads: 1, cpuOffset: undefined },
    ]);
  });
});
