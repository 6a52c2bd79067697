// predictions.ts: where the router has just sent which prefix, before the KV events say so.
//
// A routed request's prompt blocks are cached on its worker once its prefill has run, but the
// `stored` events arrive only after that, and after the event plane's delay. Until then another
// request with the same prefix would see no overlap anywhere and could be sent to a different
// worker, which would compute the prefix a second time (measured: a shared-prefix workload's hit
// rate fell well short of one prefill per prefix, and back-to-back requests sometimes missed).
// So every routed request is remembered here as a prediction, while it runs and GRACE_MS after it
// finishes (the events have arrived by then), keyed by its first block hash; a worker's overlap
// is the larger of the index's and its longest leading match with a prediction on that worker.
// Predictions never enter the index: the index stays exactly the replay of the events.
//
// The same records, while their requests run, say which blocks each worker holds for requests in
// flight: held() gives, per worker, the longest leading match of a request with a running one
// there (the kv cost does not count those blocks as load the request adds: policy.ts). With
// graceMs 0 a record goes when its request finishes, and only held() uses them.
//
// Cost: one map lookup per routing decision, then a leading-match walk per record sharing the
// request's first block (requests of the same prefix group, usually a few). Finished records
// wait in expiry order (one grace for all, so finish order is expiry order) and every add,
// finish and merge sweeps the expired ones off the front: the number of records is bounded by
// the requests running plus those finished within the last graceMs, whatever the prefixes.
// Settings: graceMs >= 0, default 2000.
import type { BlockHash, RequestId, WorkerId } from '../protocol/index.ts';

interface Prediction {
  requestId: RequestId;
  workerId: WorkerId;
  hashes: readonly BlockHash[];
  expiresAt: number; // Infinity while the request runs
}

export class PredictedPrefixes {
  readonly #byFirst = new Map<BlockHash, Prediction[]>();
  readonly #byRequest = new Map<RequestId, Prediction>();
  readonly #graceMs: number;
  #expiring: Prediction[] = []; // finished, in expiry order, from #expiringHead on
  #expiringHead = 0;

  constructor(graceMs = 2000) {
    if (!(graceMs >= 0)) throw new RangeError('graceMs must be >= 0');
    this.#graceMs = graceMs;
  }

  get size(): number {
    return this.#byRequest.size;
  }

  // First-block keys held (each with at least one record).
  get keys(): number {
    return this.#byFirst.size;
  }

  add(requestId: RequestId, workerId: WorkerId, hashes: readonly BlockHash[], now = performance.now()): void {
    this.#sweep(now);
    const old = this.#byRequest.get(requestId);
    if (old) this.#remove(old); // the id routed again (a retry): the new record replaces it
    if (hashes.length === 0) return;
    const p: Prediction = { requestId, workerId, hashes, expiresAt: Infinity };
    const bucket = this.#byFirst.get(hashes[0]);
    if (bucket) bucket.push(p);
    else this.#byFirst.set(hashes[0], [p]);
    this.#byRequest.set(requestId, p);
  }

  // The request ended: its prediction lives on for the grace period (none: it goes now).
  finish(requestId: RequestId, now = performance.now()): void {
    this.#sweep(now);
    const p = this.#byRequest.get(requestId);
    if (!p || p.expiresAt !== Infinity) return;
    p.expiresAt = now + this.#graceMs;
    if (this.#graceMs === 0) this.#remove(p);
    else this.#expiring.push(p);
  }

  removeWorker(workerId: WorkerId): void {
    for (const [first, bucket] of this.#byFirst) this.#keep(first, bucket, (p) => p.workerId !== workerId);
  }

  // Raises overlaps[w] to the longest leading match of `hashes` with a live prediction on w.
  merge(hashes: readonly BlockHash[], overlaps: Map<WorkerId, number>, now = performance.now()): void {
    this.#sweep(now);
    if (hashes.length === 0) return;
    const bucket = this.#byFirst.get(hashes[0]);
    if (!bucket) return;
    this.#keep(hashes[0], bucket, (p) => p.expiresAt > now);
    for (const p of bucket) {
      const limit = Math.min(p.hashes.length, hashes.length);
      let m = 1; // the first block matched through the key
      while (m < limit && p.hashes[m] === hashes[m]) m++;
      if (m > (overlaps.get(p.workerId) ?? 0)) overlaps.set(p.workerId, m);
    }
  }

  // held[w] = the longest leading match of `hashes` with a request still running on w: blocks
  // that w holds for requests in flight and that this request would share there.
  held(hashes: readonly BlockHash[], held: Map<WorkerId, number>): void {
    if (hashes.length === 0) return;
    const bucket = this.#byFirst.get(hashes[0]);
    if (!bucket) return;
    for (const p of bucket) {
      if (p.expiresAt !== Infinity) continue;
      const limit = Math.min(p.hashes.length, hashes.length);
      let m = 1;
      while (m < limit && p.hashes[m] === hashes[m]) m++;
      if (m > (held.get(p.workerId) ?? 0)) held.set(p.workerId, m);
    }
  }

  // Drops the finished records whose grace has passed.
  #sweep(now: number): void {
    const q = this.#expiring;
    while (this.#expiringHead < q.length && q[this.#expiringHead].expiresAt <= now) this.#remove(q[this.#expiringHead++]);
    if (this.#expiringHead > 1024 && this.#expiringHead * 2 > q.length) {
      this.#expiring = q.slice(this.#expiringHead);
      this.#expiringHead = 0;
    }
  }

  // Takes p out of both maps, if it is still there (removeWorker may have dropped it already).
  #remove(p: Prediction): void {
    const bucket = this.#byFirst.get(p.hashes[0]);
    if (bucket) this.#keep(p.hashes[0], bucket, (q) => q !== p);
    if (this.#byRequest.get(p.requestId) === p) this.#byRequest.delete(p.requestId);
  }

  #keep(first: BlockHash, bucket: Prediction[], live: (p: Prediction) => boolean): void {
    let j = 0;
    for (const p of bucket) {
      if (live(p)) bucket[j++] = p;
      else if (this.#byRequest.get(p.requestId) === p) this.#byRequest.delete(p.requestId);
    }
    bucket.length = j;
    if (j === 0) this.#byFirst.delete(first);
  }
}
