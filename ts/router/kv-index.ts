// kv-index.ts: which workers hold which KV block, built only by replaying KV events (DESIGN.md
// section 5: `stored | removed | cleared`, one event_id sequence per worker). The index is nothing
// but that replay: `dump()` writes it back as events, and replaying a dump into an empty index
// gives the same index.
//
// Layout. A chained block hash names its whole prefix, so the index is a flat map, not a tree:
// block-table.ts maps each hash to the bitmask of the workers holding it; a worker is a small
// integer slot (reused after it leaves; the masks widen past 32 workers). `overlaps()` walks the
// request's hashes once, AND-ing a running candidate mask with each block's mask; a worker leaves
// the candidates at its first miss, and the walk stops as soon as no candidate is left: one table
// probe per block, whatever the number of workers. `cleared` and `removeWorker` clear one slot in
// a pass over the table (rare: replays, restarts).
//
// Event ids, per worker (`applyEvent` returns the status; the owner acts on 'gap'):
//   'ok'     the next id (last + 1), or a `cleared` with any newer id: a `cleared` restarts the
//            worker's state from nothing, so it is complete even when ids were skipped (this is how
//            a replay starts: `cleared` followed by `stored` for every cached block);
//   'gap'    the first event seen from a worker that is not a `cleared`, or an id that skips ahead:
//            events were missed, so the owner should ask that worker to replay its cache. The event
//            is applied anyway (it is still true) and the worker's existing state is kept, so
//            routing keeps a best-effort view until the replay's `cleared` resets it;
//   'stale'  an id <= the last one seen (a duplicate or a late delivery): ignored.
//
// Stays true:
//   - a worker's `blocks` count equals the number of table entries with its bit set;
//   - an event is validated whole before anything changes: a hash that is not 16 lowercase hex
//     digits throws a TypeError and leaves the index (event ids included) as it was;
//   - a `stored` whose parent_hash the worker does not hold is stored anyway and counted
//     (`unknownParent`). Dynamo drops such an event; we keep it because the chained hash already
//     names the whole prefix, so a hit on it is a true hit, and a block whose parent is missing
//     can never add overlap on its own (the walk stops at the missing parent). The count flags
//     missed events or a block-size mismatch in the metrics.
import type { BlockHash, KvEvent, WorkerId } from '../protocol/index.ts';
import { BlockTable, hashHi, hashLo } from './block-table.ts';

export type ApplyStatus = 'ok' | 'gap' | 'stale';

export interface KvIndexStats {
  workers: number;
  blocks: number; // distinct hashes held by at least one worker
  unknownParent: number; // `stored` events whose parent_hash the worker did not hold
  gaps: number; // events that returned 'gap'
  stale: number; // events that returned 'stale'
}

interface WorkerState {
  readonly slot: number;
  lastEventId: number;
  awaitingReplay: boolean;
  blocks: number;
}

export class KvIndex {
  readonly #workers = new Map<WorkerId, WorkerState>();
  readonly #slotWorker: (WorkerId | undefined)[] = []; // slot -> worker
  readonly #freeSlots: number[] = [];
  readonly #table = new BlockTable();
  #keys = new Uint32Array(256); // an event's parsed hashes: hi, lo, hi, lo, ...
  #unknownParent = 0;
  #gaps = 0;
  #stale = 0;

  applyEvent(event: KvEvent): ApplyStatus {
    // 1. Validate the whole event (parse every hash) before anything changes.
    const { data } = event;
    const id = event.event_id;
    if (!Number.isSafeInteger(id)) throw new TypeError(`event_id must be an integer, got ${id}`);
    const stored = 'stored' in data ? data.stored : undefined;
    const hashes = stored?.block_hashes ?? ('removed' in data ? data.removed.block_hashes : []);
    const keys = this.#parse(hashes);
    const parent = stored?.parent_hash ?? null;
    const parentHi = parent === null ? 0 : hashHi(parent);
    const parentLo = parent === null ? 0 : hashLo(parent);

    // 2. Sequence: ok, gap or stale.
    const isCleared = 'cleared' in data;
    let worker = this.#workers.get(event.worker_id);
    let status: ApplyStatus = 'ok';
    if (worker === undefined) {
      worker = this.#addWorker(event.worker_id, id);
      if (!isCleared) status = 'gap';
    } else if (id <= worker.lastEventId) {
      this.#stale++;
      return 'stale';
    } else if (id !== worker.lastEventId + 1 && !isCleared) {
      status = 'gap';
    }
    worker.lastEventId = id;
    if (status === 'gap') {
      this.#gaps++;
      worker.awaitingReplay = true;
    }

    // 3. Apply.
    const table = this.#table;
    const { slot } = worker;
    if (stored !== undefined) {
      if (parent !== null && !table.has(parentHi, parentLo, slot)) this.#unknownParent++;
      for (let i = 0; i < hashes.length; i++) if (table.add(keys[2 * i], keys[2 * i + 1], slot)) worker.blocks++;
    } else if (!isCleared) {
      for (let i = 0; i < hashes.length; i++) if (table.remove(keys[2 * i], keys[2 * i + 1], slot)) worker.blocks--;
    } else {
      this.#clearWorker(worker);
      worker.awaitingReplay = false;
    }
    return status;
  }

  // Forgets a worker and every block it held. Returns false if the index never saw it.
  removeWorker(workerId: WorkerId): boolean {
    const worker = this.#workers.get(workerId);
    if (worker === undefined) return false;
    this.#clearWorker(worker);
    this.#workers.delete(workerId);
    this.#slotWorker[worker.slot] = undefined;
    this.#freeSlots.push(worker.slot);
    return true;
  }

  // For every worker holding the first request block: how many LEADING blocks of `hashes` it
  // holds. Workers absent from the map hold none. Throws a TypeError for a malformed hash.
  overlaps(hashes: readonly BlockHash[]): Map<WorkerId, number> {
    const out = new Map<WorkerId, number>();
    this.#table.matchPrefix(hashes, (slot, length) => out.set(this.#slotWorker[slot]!, length));
    return out;
  }

  // How many leading blocks of `hashes` one worker holds.
  overlap(workerId: WorkerId, hashes: readonly BlockHash[]): number {
    const worker = this.#workers.get(workerId);
    if (worker === undefined) return 0;
    let n = 0;
    while (n < hashes.length && this.#table.has(hashHi(hashes[n]), hashLo(hashes[n]), worker.slot)) n++;
    return n;
  }

  // The index as events: per worker, a `cleared` then one `stored` (parent null) of all its blocks,
  // numbered so that the last one carries the worker's last event id: a consumer that replays the
  // dump then continues with the live stream without a gap.
  dump(): KvEvent[] {
    const bySlot = this.#table.hashesBySlot(this.#slotWorker.length);
    const events: KvEvent[] = [];
    for (const [workerId, worker] of this.#workers) {
      const last = worker.lastEventId;
      const hashes = bySlot[worker.slot];
      if (hashes.length === 0) {
        events.push({ worker_id: workerId, event_id: last, data: { cleared: {} } });
        continue;
      }
      events.push({ worker_id: workerId, event_id: last - 1, data: { cleared: {} } });
      events.push({ worker_id: workerId, event_id: last, data: { stored: { parent_hash: null, block_hashes: hashes } } });
    }
    return events;
  }

  // True after a 'gap' until the worker's next `cleared` (the replay) arrives.
  // Whether the index has the worker's whole cache: it saw a `cleared` (a replay's start) and no
  // gap since.
  replayed(workerId: WorkerId): boolean {
    const worker = this.#workers.get(workerId);
    return worker !== undefined && !worker.awaitingReplay;
  }

  awaitingReplay(workerId: WorkerId): boolean {
    return this.#workers.get(workerId)?.awaitingReplay ?? false;
  }

  // How many blocks the index holds for a worker.
  workerBlocks(workerId: WorkerId): number {
    return this.#workers.get(workerId)?.blocks ?? 0;
  }

  stats(): KvIndexStats {
    return {
      workers: this.#workers.size,
      blocks: this.#table.size,
      unknownParent: this.#unknownParent,
      gaps: this.#gaps,
      stale: this.#stale,
    };
  }

  // Every hash as [hi, lo] pairs in #keys; throws before any change if one is malformed.
  #parse(hashes: readonly BlockHash[]): Uint32Array {
    if (this.#keys.length < 2 * hashes.length) this.#keys = new Uint32Array(4 * hashes.length);
    const keys = this.#keys;
    for (let i = 0; i < hashes.length; i++) {
      keys[2 * i] = hashHi(hashes[i]);
      keys[2 * i + 1] = hashLo(hashes[i]);
    }
    return keys;
  }

  #addWorker(workerId: WorkerId, firstEventId: number): WorkerState {
    const slot = this.#freeSlots.pop() ?? this.#slotWorker.length;
    if (slot >= this.#table.words * 32) this.#table.setWords(this.#table.words * 2);
    this.#slotWorker[slot] = workerId;
    const worker: WorkerState = { slot, lastEventId: firstEventId - 1, awaitingReplay: false, blocks: 0 };
    this.#workers.set(workerId, worker);
    return worker;
  }

  #clearWorker(worker: WorkerState): void {
    if (worker.blocks > 0) this.#table.clearSlot(worker.slot);
    worker.blocks = 0;
  }
}
