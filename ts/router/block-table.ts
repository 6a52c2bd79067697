// block-table.ts: the KV index's storage: an open-addressing hash table from a 64-bit block hash
// to the bitmask of the worker slots holding it, all in one Uint32Array, so a lookup touches one
// cache line (a Map of strings plus a side array costs 3-4 cache misses per block at 1M blocks).
//
// Layout: `capacity` (a power of two) entries of `stride = 3 + words` uint32s:
//   | hi | lo | holders | mask[0] ... mask[words - 1] |
//   hi, lo   the block hash (16 lowercase hex digits) as two uint32
//   holders  how many workers hold it; 0 marks an empty entry
//   mask     bit (slot & 31) of mask[slot >> 5]: worker slot `slot` holds it
// Linear probing from a Fibonacci hash of (hi, lo); deletion shifts the rest of the probe run
// back (no tombstones), so an empty entry always ends a run. The table doubles before it is half
// full. Stays true: holders == popcount(mask) > 0 for every stored entry, and size == the number
// of stored entries.
import type { BlockHash } from '../protocol/index.ts';

const hexDigit = new Int8Array(128).fill(-1);
for (let d = 0; d < 16; d++) hexDigit[d.toString(16).charCodeAt(0)] = d;

function nibble(hash: string, at: number): number {
  const c = hash.charCodeAt(at);
  const d = c < 128 ? hexDigit[c] : -1;
  if (d < 0) throw new TypeError(`block hash must be 16 lowercase hex digits, got ${JSON.stringify(hash)}`);
  return d;
}

// The high / low 32 bits of a block hash, as uint32.
export function hashHi(hash: string): number {
  if (typeof hash !== 'string' || hash.length !== 16) {
    throw new TypeError(`block hash must be 16 lowercase hex digits, got ${JSON.stringify(hash)}`);
  }
  let v = 0;
  for (let i = 0; i < 8; i++) v = (v << 4) | nibble(hash, i);
  return v >>> 0;
}

export function hashLo(hash: string): number {
  let v = 0;
  for (let i = 8; i < 16; i++) v = (v << 4) | nibble(hash, i);
  return v >>> 0;
}

export function formatHash(hi: number, lo: number): BlockHash {
  return (hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0')) as BlockHash;
}

const minCapacity = 1024;

export class BlockTable {
  #words: number;
  #stride: number;
  #capacity: number;
  #shift: number; // 32 - log2(capacity)
  #data: Uint32Array;
  #size = 0;
  #candidates: Uint32Array; // matchPrefix scratch, `words` long

  constructor(words = 1) {
    this.#words = words;
    this.#stride = 3 + words;
    this.#capacity = minCapacity;
    this.#shift = 32 - Math.log2(minCapacity);
    this.#data = new Uint32Array(minCapacity * this.#stride);
    this.#candidates = new Uint32Array(words);
  }

  get size(): number {
    return this.#size;
  }

  get words(): number {
    return this.#words;
  }

  // Widens every mask to `words` words (more worker slots).
  setWords(words: number): void {
    this.#rebuild(this.#capacity, words);
  }

  // Sets the slot's bit for the hash; false if it was already set.
  add(hi: number, lo: number, slot: number): boolean {
    if ((this.#size + 1) * 2 > this.#capacity) this.#rebuild(this.#capacity * 2, this.#words);
    const data = this.#data;
    const stride = this.#stride;
    const word = 3 + (slot >>> 5);
    const bit = (1 << (slot & 31)) >>> 0;
    for (let i = this.#home(hi, lo); ; i = (i + 1) & (this.#capacity - 1)) {
      const base = i * stride;
      if (data[base + 2] === 0) {
        data[base] = hi;
        data[base + 1] = lo;
        data[base + 2] = 1;
        data[base + word] = bit;
        this.#size++;
        return true;
      }
      if (data[base] === hi && data[base + 1] === lo) {
        if ((data[base + word] & bit) !== 0) return false;
        data[base + word] |= bit;
        data[base + 2]++;
        return true;
      }
    }
  }

  // Clears the slot's bit for the hash; false if it was not set.
  remove(hi: number, lo: number, slot: number): boolean {
    const base = this.#find(hi, lo);
    if (base < 0) return false;
    const word = base + 3 + (slot >>> 5);
    const bit = 1 << (slot & 31);
    if ((this.#data[word] & bit) === 0) return false;
    this.#data[word] &= ~bit;
    if (--this.#data[base + 2] === 0) this.#deleteAt(base / this.#stride);
    return true;
  }

  has(hi: number, lo: number, slot: number): boolean {
    const base = this.#find(hi, lo);
    return base >= 0 && (this.#data[base + 3 + (slot >>> 5)] & (1 << (slot & 31))) !== 0;
  }

  // Clears the slot's bit everywhere (one pass over the table); returns how many entries had it.
  clearSlot(slot: number): number {
    const data = this.#data;
    const stride = this.#stride;
    const word = 3 + (slot >>> 5);
    const bit = 1 << (slot & 31);
    let cleared = 0;
    for (let i = 0; i < this.#capacity; i++) {
      const base = i * stride;
      if (data[base + 2] === 0 || (data[base + word] & bit) === 0) continue;
      data[base + word] &= ~bit;
      cleared++;
      if (--data[base + 2] === 0) {
        this.#deleteAt(i);
        i--; // the shift may have moved a later entry into i
      }
    }
    return cleared;
  }

  // Walks `hashes` once, AND-ing a running mask of candidate slots with each block's mask, and
  // calls emit(slot, length) for every slot holding hashes[0]: `length` = leading blocks it holds.
  matchPrefix(hashes: readonly string[], emit: (slot: number, length: number) => void): void {
    if (hashes.length === 0) return;
    const data = this.#data;
    const words = this.#words;
    const candidates = this.#candidates;
    let base = this.#find(hashHi(hashes[0]), hashLo(hashes[0]));
    if (base < 0) return;
    for (let k = 0; k < words; k++) candidates[k] = data[base + 3 + k];
    for (let i = 1; i < hashes.length; i++) {
      base = this.#find(hashHi(hashes[i]), hashLo(hashes[i]));
      let alive = 0;
      for (let k = 0; k < words; k++) {
        const current = candidates[k];
        if (current === 0) continue;
        const next = base < 0 ? 0 : (current & data[base + 3 + k]) >>> 0;
        if (next !== current) emitBits(current & ~next, k, i, emit);
        candidates[k] = next;
        alive |= next;
      }
      if (alive === 0) return;
    }
    for (let k = 0; k < words; k++) emitBits(candidates[k], k, hashes.length, emit);
  }

  // Every stored hash, grouped by the slots holding it: result[slot] = its hashes.
  hashesBySlot(slots: number): BlockHash[][] {
    const out: BlockHash[][] = Array.from({ length: slots }, () => []);
    const data = this.#data;
    const stride = this.#stride;
    for (let i = 0; i < this.#capacity; i++) {
      const base = i * stride;
      if (data[base + 2] === 0) continue;
      const hash = formatHash(data[base], data[base + 1]);
      for (let k = 0; k < this.#words; k++) {
        emitBits(data[base + 3 + k], k, 0, (slot) => out[slot].push(hash));
      }
    }
    return out;
  }

  #home(hi: number, lo: number): number {
    return Math.imul(lo ^ Math.imul(hi, 0x85ebca6b), 0x9e3779b1) >>> this.#shift;
  }

  // The base index of the hash's entry, or -1.
  #find(hi: number, lo: number): number {
    const data = this.#data;
    const stride = this.#stride;
    const mask = this.#capacity - 1;
    for (let i = this.#home(hi, lo); ; i = (i + 1) & mask) {
      const base = i * stride;
      if (data[base + 2] === 0) return -1;
      if (data[base] === hi && data[base + 1] === lo) return base;
    }
  }

  // Empties entry i, shifting back each later entry of the run that may live there.
  #deleteAt(i: number): void {
    const data = this.#data;
    const stride = this.#stride;
    const mask = this.#capacity - 1;
    let hole = i;
    for (let j = (i + 1) & mask; data[j * stride + 2] !== 0; j = (j + 1) & mask) {
      const home = this.#home(data[j * stride], data[j * stride + 1]);
      // j may move to the hole unless its home lies cyclically in (hole, j].
      const stays = hole <= j ? hole < home && home <= j : hole < home || home <= j;
      if (stays) continue;
      data.copyWithin(hole * stride, j * stride, (j + 1) * stride);
      hole = j;
    }
    data.fill(0, hole * stride, (hole + 1) * stride);
    this.#size--;
  }

  #rebuild(capacity: number, words: number): void {
    const old = this.#data;
    const oldStride = this.#stride;
    const oldCapacity = this.#capacity;
    const keep = Math.min(words, this.#words);
    this.#words = words;
    this.#stride = 3 + words;
    this.#capacity = capacity;
    this.#shift = 32 - Math.log2(capacity);
    this.#data = new Uint32Array(capacity * this.#stride);
    this.#candidates = new Uint32Array(words);
    const data = this.#data;
    const stride = this.#stride;
    for (let e = 0; e < oldCapacity; e++) {
      const from = e * oldStride;
      if (old[from + 2] === 0) continue;
      let i = this.#home(old[from], old[from + 1]);
      while (data[i * stride + 2] !== 0) i = (i + 1) & (capacity - 1);
      data.set(old.subarray(from, from + 3 + keep), i * stride);
    }
  }
}

// emit(word * 32 + b, length) for every set bit b of `mask`.
function emitBits(mask: number, word: number, length: number, emit: (slot: number, length: number) => void): void {
  while (mask !== 0) {
    emit(word * 32 + (31 - Math.clz32(mask & -mask)), length);
    mask &= mask - 1;
  }
}
