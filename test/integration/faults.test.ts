// The bounded CI subset of the fault-injection suite (`npm run test:faults`, bench/faults/): a
// real deployment under steady streaming load, with a worker killed with -9, then with 100
// client streams aborted at random times. The pass rule is the suite's: no request hangs, none
// gets other tokens than its undisturbed run, no KV block stays held, and none fails (another
// worker exists).
import { describe, expect, it } from 'vitest';
import { cases } from '../../bench/faults/cases.ts';
import { runCase } from '../../bench/faults/run.ts';

const named = (prefix: string) => cases.find((c) => c.name.startsWith(prefix))!;

describe('fault injection under load', () => {
  it.each(['kill -9 of a worker (monolith)', 'client disconnect storm'])('%s: no hang, no wrong answer, no leak, no failure', async (name) => {
    const r = await runCase(named(name), { streams: 4 });
    expect({ hung: r.hung, wrong: r.wrong, leaked: r.leaked, failed: r.failed, notes: r.notes.filter((n) => /not allowed|left/.test(n)) }).toEqual({
      hung: 0,
      wrong: 0,
      leaked: 0,
      failed: 0,
      notes: [],
    });
    expect(r.ok).toBeGreaterThan(10);
    expect(r.pass).toBe(true);
  }, 120_000);
});
