// The KV index's hash table against a naive reference under random adds, removes and slot clears
// (growth, wider masks, backward-shift deletion), hash parsing, and malformed hashes.
import { describe, expect, it } from 'vitest';
import type { BlockHash, WorkerId } from '../../ts/protocol/index.ts';
import { BlockTable, formatHash, hashHi, hashLo } from '../../ts/router/block-table.ts';
import { KvIndex, seededRng } from '../../ts/router/index.ts';

describe('BlockTable', () => {
  it('parses and formats block hashes', () => {
    const hash = 'ffeeddcc00112233';
    expect([hashHi(hash), hashLo(hash)]).toEqual([0xffeeddcc, 0x00112233]);
    expect(formatHash(0xffeeddcc, 0x00112233)).toBe(hash);
    expect(formatHash(0, 5)).toBe('0000000000000005');
    for (const bad of ['FFEEDDCC00112233', 'ffeeddcc0011223', 'ffeeddcc001122334', 'ffeeddcc0011223g', 'ffeeddcc0011223:']) {
      expect(() => [hashHi(bad), hashLo(bad)]).toThrow(TypeError);
    }
  });

  it('matches a reference under 30,000 random operations on 40 slots', () => {
    const rng = seededRng(21);
    const table = new BlockTable(1);
    const reference = new Map<string, Set<number>>();
    const keys = Array.from({ length: 6000 }, () => formatHash((rng() * 2 ** 32) >>> 0, (rng() * 2 ** 32) >>> 0));
    const check = () => {
      expect(table.size).toBe(reference.size);
      for (const key of keys) {
        const held = reference.get(key);
        for (const slot of table.words === 1 ? [0, 7, 31] : [0, 7, 31, 32, 39]) expect(table.has(hashHi(key), hashLo(key), slot)).toBe(held?.has(slot) ?? false);
      }
      const bySlot = table.hashesBySlot(40);
      for (let slot = 0; slot < 40; slot++) {
        const expected = [...reference].filter(([, s]) => s.has(slot)).map(([k]) => k).sort();
        expect(bySlot[slot]!.slice().sort()).toEqual(expected);
      }
    };
    for (let op = 0; op < 30_000; op++) {
      if (op === 10_000) table.setWords(2); // slots 32..39 from here on
      const slot = Math.floor(rng() * (op < 10_000 ? 32 : 40));
      const key = keys[Math.floor(rng() * keys.length)]!;
      const held = reference.get(key) ?? new Set<number>();
      if (rng() < 0.6) {
        expect(table.add(hashHi(key), hashLo(key), slot)).toBe(!held.has(slot));
        held.add(slot);
        reference.set(key, held);
      } else {
        expect(table.remove(hashHi(key), hashLo(key), slot)).toBe(held.has(slot));
        held.delete(slot);
        if (held.size === 0) reference.delete(key);
      }
      if (op % 7_500 === 7_499) {
        const cleared = Math.floor(rng() * 32);
        const had = [...reference.values()].filter((s) => s.has(cleared)).length;
        expect(table.clearSlot(cleared)).toBe(had);
        for (const [k, s] of reference) if (s.delete(cleared) && s.size === 0) reference.delete(k);
        check();
      }
    }
    check();
  });
});

describe('BlockTable: a half-full table', () => {
  it('keeps every entry findable through deletions in long and wrapping probe runs', () => {
    // 511 entries in the initial 1024 (the most it holds before growing): long probe runs, and in
    // some of the 40 tables a run that crosses the end of the array.
    for (let seed = 1; seed <= 40; seed++) {
      const rng = seededRng(seed);
      const table = new BlockTable(1);
      const keys = Array.from({ length: 700 }, () => formatHash((rng() * 2 ** 32) >>> 0, (rng() * 2 ** 32) >>> 0));
      const present = keys.slice(0, 511);
      const absent = keys.slice(511);
      for (const k of present) table.add(hashHi(k), hashLo(k), 3);
      for (let op = 0; op < 2000; op++) {
        const i = Math.floor(rng() * present.length);
        const j = Math.floor(rng() * absent.length);
        const [out, into] = [present[i]!, absent[j]!];
        expect(table.remove(hashHi(out), hashLo(out), 3)).toBe(true);
        expect(table.add(hashHi(into), hashLo(into), 3)).toBe(true);
        [present[i], absent[j]] = [into, out];
        if (op % 100 === 99) {
          expect(present.every((k) => table.has(hashHi(k), hashLo(k), 3))).toBe(true);
          expect(absent.some((k) => table.has(hashHi(k), hashLo(k), 3))).toBe(false);
        }
      }
      expect(table.size).toBe(511);
      // Clearing the only slot empties the table, each deletion shifting its run back.
      expect(table.clearSlot(3)).toBe(511);
      expect(table.size).toBe(0);
      expect(present.some((k) => table.has(hashHi(k), hashLo(k), 3))).toBe(false);
    }
  });
});

describe('KvIndex: malformed events', () => {
  it('throws a TypeError and changes nothing', () => {
    const index = new KvIndex();
    const w = 'w' as WorkerId;
    index.applyEvent({ worker_id: w, event_id: 0, data: { stored: { parent_hash: null, block_hashes: ['0000000000000001' as BlockHash] } } });
    const bad = ['0000000000000002', 'not-a-hash'] as BlockHash[];
    expect(() => index.applyEvent({ worker_id: w, event_id: 1, data: { stored: { parent_hash: null, block_hashes: bad } } })).toThrow(TypeError);
    expect(index.workerBlocks(w)).toBe(1);
    // Event id 1 was not consumed: the next event is still in sequence.
    expect(index.applyEvent({ worker_id: w, event_id: 1, data: { removed: { block_hashes: ['0000000000000001' as BlockHash] } } })).toBe('ok');
    expect(() => index.overlaps(['XYZ' as BlockHash])).toThrow(TypeError);
  });
});
