// The KV index from event fixtures (test/fixtures/router/): statuses, the resulting block sets,
// overlaps, unknown parents, gaps and replay convergence, stale ids, dump round trips, and the
// bitmask walk against a naive reference with more workers than one 32-bit word.
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { BlockHash, KvEvent, WorkerId } from '../../ts/protocol/index.ts';
import { KvIndex, seededRng, type ApplyStatus } from '../../ts/router/index.ts';

function fixture<T>(name: string): T {
  return JSON.parse(fs.readFileSync(new URL(`../fixtures/router/${name}`, import.meta.url), 'utf8')) as T;
}

interface BasicStream {
  steps: { expect: ApplyStatus; event: KvEvent }[];
  final: {
    blocks: Record<string, string[]>;
    distinctBlocks: number;
    unknownParent: number;
    gaps: number;
    stale: number;
    overlaps: { hashes: BlockHash[]; expected: Record<string, number> }[];
  };
}

interface GapReplay {
  lossyMisses: number[];
  lossyStatuses: Record<string, ApplyStatus>;
  stream: KvEvent[];
  finalBlocks: string[];
}

const wid = (s: string) => s as WorkerId;
const hash = (i: number) => i.toString(16).padStart(16, '0') as BlockHash;

// Per worker, the sorted hashes the index holds, read back through dump().
function blocksOf(index: KvIndex): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const event of index.dump()) {
    const held = (out[event.worker_id] ??= []);
    if ('stored' in event.data) held.push(...event.data.stored.block_hashes);
  }
  for (const key of Object.keys(out)) out[key]!.sort();
  return out;
}

function replay(events: KvEvent[], index = new KvIndex()): KvIndex {
  for (const event of events) index.applyEvent(event);
  return index;
}

describe('KvIndex: stored, removed, cleared', () => {
  const basic = fixture<BasicStream>('basic-stream.json');

  it('returns the expected status for every event', () => {
    const index = new KvIndex();
    expect(basic.steps.map((s) => index.applyEvent(s.event))).toEqual(basic.steps.map((s) => s.expect));
  });

  it('holds exactly the blocks the events leave, and counts what it met', () => {
    const index = replay(basic.steps.map((s) => s.event));
    expect(blocksOf(index)).toEqual(basic.final.blocks);
    expect(index.stats()).toEqual({
      workers: 3,
      blocks: basic.final.distinctBlocks,
      unknownParent: basic.final.unknownParent,
      gaps: basic.final.gaps,
      stale: basic.final.stale,
    });
  });

  it('counts leading blocks per worker, stopping at the first miss', () => {
    const index = replay(basic.steps.map((s) => s.event));
    for (const { hashes, expected } of basic.final.overlaps) {
      expect(Object.fromEntries(index.overlaps(hashes))).toEqual(expected);
      for (const w of ['w1', 'w2', 'w3']) expect(index.overlap(wid(w), hashes)).toBe(expected[w] ?? 0);
    }
  });

  it('stores a block whose parent is unknown, and counts it', () => {
    const index = new KvIndex();
    index.applyEvent({ worker_id: wid('w'), event_id: 0, data: { cleared: {} } });
    const orphan = { stored: { parent_hash: hash(1), block_hashes: [hash(2), hash(3)] } };
    expect(index.applyEvent({ worker_id: wid('w'), event_id: 1, data: orphan })).toBe('ok');
    expect(index.stats().unknownParent).toBe(1);
    expect(index.overlap(wid('w'), [hash(2), hash(3)])).toBe(2);
    // A request starting at the true prefix stops at the missing parent.
    expect(index.overlap(wid('w'), [hash(1), hash(2), hash(3)])).toBe(0);
    // Its parent arriving later (known parent: not counted) completes the chain.
    index.applyEvent({ worker_id: wid('w'), event_id: 2, data: { stored: { parent_hash: null, block_hashes: [hash(1)] } } });
    expect(index.stats().unknownParent).toBe(1);
    expect(index.overlap(wid('w'), [hash(1), hash(2), hash(3)])).toBe(3);
  });

  it('drops every block of a removed worker', () => {
    const index = replay(basic.steps.map((s) => s.event));
    expect(index.removeWorker(wid('w1'))).toBe(true);
    expect(index.removeWorker(wid('w1'))).toBe(false);
    expect(index.workerBlocks(wid('w1'))).toBe(0);
    expect(Object.fromEntries(index.overlaps(basic.final.overlaps[0]!.hashes))).toEqual({ w2: 2 });
    expect(index.stats().blocks).toBe(5); // a3 was only on w1
  });
});

describe('KvIndex: event ids, gaps and replays', () => {
  const gap = fixture<GapReplay>('gap-replay.json');

  it('a consumer that missed events reports gaps, and converges after the replay', () => {
    const full = new KvIndex();
    expect(gap.stream.every((e) => full.applyEvent(e) === 'ok')).toBe(true);

    const lossy = new KvIndex();
    const statuses: Record<string, ApplyStatus> = {};
    for (const event of gap.stream) {
      if (gap.lossyMisses.includes(event.event_id)) continue;
      statuses[event.event_id] = lossy.applyEvent(event);
      if (event.event_id === 8) expect(lossy.awaitingReplay(wid('w1'))).toBe(true);
    }
    expect(statuses).toEqual(gap.lossyStatuses);
    expect(lossy.awaitingReplay(wid('w1'))).toBe(false);
    expect(blocksOf(lossy)).toEqual(blocksOf(full));
    expect(blocksOf(full)).toEqual({ w1: gap.finalBlocks });
    expect(lossy.stats().blocks).toBe(full.stats().blocks);
  });

  it('keeps the worker state between a gap and its replay', () => {
    const index = new KvIndex();
    const upTo = gap.stream.filter((e) => e.event_id <= 2);
    for (const e of upTo) index.applyEvent(e);
    // id 5 skips 3 and 4: a gap, applied on top of what the index had.
    expect(index.applyEvent(gap.stream[5]!)).toBe('gap');
    expect(blocksOf(index).w1).toEqual(['0000000000000001', '0000000000000002', '0000000000000003', '0000000000000004', '0000000000000005', '0000000000000013']);
  });

  it('ignores stale and duplicate ids', () => {
    const index = replay(gap.stream.slice(0, 6));
    const before = blocksOf(index);
    expect(index.applyEvent(gap.stream[3]!)).toBe('stale');
    expect(index.applyEvent(gap.stream[5]!)).toBe('stale');
    expect(index.applyEvent({ worker_id: wid('w1'), event_id: 2, data: { cleared: {} } })).toBe('stale');
    expect(blocksOf(index)).toEqual(before);
    expect(index.stats().stale).toBe(3);
  });

  it('dump() replays into an equal index that continues with the live stream', () => {
    const source = replay(gap.stream.slice(0, 9));
    const copy = new KvIndex();
    expect(source.dump().map((e) => copy.applyEvent(e))).toEqual(['ok', 'ok']);
    expect(blocksOf(copy)).toEqual(blocksOf(source));
    expect(gap.stream.slice(9).map((e) => copy.applyEvent(e))).toEqual(['ok', 'ok', 'ok']);
    expect(blocksOf(copy)).toEqual({ w1: gap.finalBlocks });
  });
});

describe('KvIndex: many workers', () => {
  it('matches a naive per-worker reference with 70 workers under random churn', () => {
    const rng = seededRng(7);
    const index = new KvIndex();
    const reference = new Map<WorkerId, Set<BlockHash>>();
    const nextId = new Map<WorkerId, number>();
    const workers = Array.from({ length: 70 }, (_, i) => wid(`w${i}`));
    // Chains from 8 shared roots: hash(root * 1000 + depth) for depth 0..39.
    const chain = (root: number, len: number) => Array.from({ length: len }, (_, d) => hash(root * 1000 + d));
    const send = (w: WorkerId, data: KvEvent['data']) => {
      const id = nextId.get(w) ?? 0;
      nextId.set(w, id + 1);
      index.applyEvent({ worker_id: w, event_id: id, data });
    };
    for (const w of workers) {
      send(w, { cleared: {} });
      reference.set(w, new Set());
    }
    for (let step = 0; step < 4000; step++) {
      const w = workers[Math.floor(rng() * workers.length)]!;
      const held = reference.get(w)!;
      const blocks = chain(Math.floor(rng() * 8), 1 + Math.floor(rng() * 40));
      if (rng() < 0.7) {
        send(w, { stored: { parent_hash: null, block_hashes: blocks } });
        for (const b of blocks) held.add(b);
      } else {
        const tail = blocks.slice(Math.floor(rng() * blocks.length));
        send(w, { removed: { block_hashes: tail } });
        for (const b of tail) held.delete(b);
      }
      if (step % 1000 === 999) {
        const leaving = workers[Math.floor(rng() * workers.length)]!;
        index.removeWorker(leaving);
        nextId.delete(leaving);
        reference.set(leaving, new Set());
        send(leaving, { cleared: {} });
      }
    }
    for (let root = 0; root < 8; root++) {
      const request = [...chain(root, 30), hash(999_999)];
      const expected: Record<string, number> = {};
      for (const [w, held] of reference) {
        let n = 0;
        while (n < request.length && held.has(request[n]!)) n++;
        if (n > 0) expected[w] = n;
      }
      expect(Object.fromEntries(index.overlaps(request))).toEqual(expected);
    }
  });
});
