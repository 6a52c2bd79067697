// router.ts: the KV router: the worker set, the router's own estimate of each worker's load, the
// capacity rule, and the bounded wait queue. It owns a KvIndex (fed through applyEvent) and a
// Policy (policy.ts: the cost and how a worker is picked). Pure TS: the owner feeds it worker
// joins and leaves, KV events and load metrics, and asks it to route requests whose block hashes
// it computed (DESIGN.md section 5).
//
// Driving it (the owner, e.g. the frontend):
//   worker joins (discovery)   addWorker(spec): a string back is a refusal to log (block size);
//                              its first event reports 'gap' unless the owner asks for a replay
//   worker leaves              removeWorker(id): its cached blocks go; nothing in flight is touched
//   each KV event              applyEvent(event): 'gap' -> ask that worker to replay its cache
//                              (`cleared` + `stored`); 'ok' | 'stale' | 'unknown_worker' -> nothing
//   each load report           updateLoad(id, load)
//   each request               await route({requestId, blockHashes, signal}) -> send it to
//                              decision.workerId with decision.prefixHitRate;
//                              RouterOverloadedError -> HTTP 503
//   request ends (any reason)  finish(requestId)
//   shutdown                   close()
//
// Overlap, per worker: the index's count of leading request blocks the worker holds, raised by
// the router's own predictions (predictions.ts) when predictionGraceMs > 0: a request routed to w
// a moment ago counts as cached on w until its events arrive.
// Held blocks, per worker: the leading request blocks that requests in flight on w hold there
// (predictions.ts held(), whatever predictionGraceMs): the cost does not count them as load.
//
// Active-block estimate, per worker (the `activeBlocks_w` of the cost):
//   activeBlocks = base + pending
//   - routing a request of n blocks to w with overlap o adds its new blocks, n - o, to `pending`
//     and remembers them per request (prompt blocks only: decode growth reaches the estimate
//     through the next load report);
//   - a load report sets base = kv_active_blocks and empties pending: every request routed so far
//     counts as included in the report. With holdUntilPrefilled, only the requests that have
//     had their first output (prefilled()) are: the engine counts a request in its metrics only
//     after the step that admitted it, so a report taken while the request travelled to the
//     worker, or waited there for a long step to end, does not show it, and forgetting it then
//     would make the worker look idle (to every frontend: two long requests entering two
//     frontends 40 ms apart would both go to it). A request then counts twice, in the report
//     and pending, from its admission until its first output: a worker looks busier while it
//     prefills;
//   - finish(request) subtracts the request's blocks from `pending` if it is still there, else
//     from `base` (clamped at 0): the report had counted it (held in pending after its first
//     output, from both);
//   - a report may have been taken before a request finished and arrive after it: so every report
//     is lowered by the blocks (and requests) of the requests that finished on that worker in the
//     last FINISH_WINDOW_MS: all n of a request's blocks, since the engine counts the cached
//     prefix it references as active too. A report taken after those finishes is under-counted
//     for that window, which only favours cache affinity; over-counting a finished request's
//     blocks would instead send the next request of the same prefix elsewhere.
//   Requests are estimated the same way: base = request_active_slots + num_requests_waiting, plus
//   one per request routed since the report, minus finished ones. Before a worker's first report,
//   base = 0 and the estimate is the router's own bookkeeping alone.
//   With several frontends, the estimate the cost and the capacity rule use is
//     activeBlocks = max(0, base + pending + remote)
//   where remote is the other frontends' own corrections to w's reports, summed, set by the
//   owner through setRemoteLoad() (ts/runtime/load-sharing.ts shares them over Redis). Each
//   router's correction, pendingLoad(), is what changed since w's last report as far as this
//   router knows: its pending part, minus all n blocks (and one request) of each request that
//   the report counted and that has finished since (it may be negative). Both drop back to 0 at
//   w's next report. onPendingChange tells the owner when it may have changed. The base is the
//   worker's own report, so it is shared by construction; only what no report shows yet travels
//   between frontends.
//
// Capacity: a request of n blocks skips worker w when w is not idle (estimated active blocks or
// requests > 0) and either
//   - activeBlocks_w + (n - overlap_w) > kv_total_blocks_w, or
//   - requests_w > request_total_slots_w: every slot is busy and at least one request waits.
// Busy thresholds (Dynamo's), optional: a worker that is not idle is also skipped while its
// active blocks exceed activeDecodeBlocksThreshold of its kv_total_blocks, or while the prompt
// tokens it has yet to prefill exceed activePrefillTokensThreshold. Prefill tokens are the
// router's own count: a routed request adds its prompt tokens beyond the cached overlap, and
// prefilled() (its first output) or finish() takes them off.
// An idle worker always takes the request (the engine rejects a prompt that can never fit), so a
// large request cannot wait forever. When every worker is skipped, the request waits in the
// queue; the queue is retried after finish(), prefilled(), updateLoad() and addWorker(), always
// with its fairest request first: the one whose group (RouteRequest.group: the HTTP request its
// choices belong to) has the fewest requests in flight, the oldest among equals; retrying stops
// at the first that still does not fit (so a large request is not starved by small ones behind
// it), and a new request waits behind a non-empty queue. So one HTTP request with many choices
// waiting does not hold back another that has none in flight: each freed slot goes to the group
// with the least. A request whose group already has one in flight (a later choice of an admitted
// HTTP request) is `bulk`: it takes a worker's slot only while requests_w < BULK_SHARE of
// request_total_slots_w, so half of every worker's slots stays for requests that have nothing
// in flight yet, and a step's bulk rows stay few enough that a short request waiting for the
// step in flight does not wait long (a CPU engine's step costs in proportion to its rows); and
// it waits without the queue's timeout, outside maxQueued (the HTTP request was admitted; its
// client's deadline or disconnect ends the wait).
//
// Settings (ranges):
//   blockSize       integer >= 1, required: a worker announcing another block size is refused
//   policy          'kv' | 'round-robin' | 'random', default 'kv'
//   overlapWeight   number >= 0, default 1 (policy.ts)
//   temperature     number >= 0, default 0 (policy.ts)
//   maxQueued       integer >= 0, default 256: requests that may wait; 0 rejects at once
//   queueTimeoutMs  number > 0, default 30000: longest wait before RouterOverloadedError
//   activeDecodeBlocksThreshold number in (0, 1], default 1 (only the capacity rule)
//   activePrefillTokensThreshold integer >= 1, default none
//   predictionGraceMs number >= 0, default 0 (off): how long a finished request's prediction lives
//   holdUntilPrefilled boolean, default false: a report empties pending only of prefilled requests
//   rng             () => [0, 1), default Math.random: tie-breaks and sampling (seed it in tests)
//   now             () => ms, default performance.now: the clock of FINISH_WINDOW_MS
//   onPendingChange () => void, default none: called (synchronously) after pendingLoad() changed
import type { BlockHash, KvEvent, LoadMetrics, RequestId, WorkerId } from '../protocol/index.ts';
import { RouterOverloadedError } from './errors.ts';
import { KvIndex, type ApplyStatus } from './kv-index.ts';
import { PredictedPrefixes } from './predictions.ts';

// How long a finished request's blocks are subtracted from load reports (see the header).
const FINISH_WINDOW_MS = 500;
// The share of a worker's request slots bulk requests may fill (see the header).
const BULK_SHARE = 0.5;
import { createPolicy, type Candidate, type Policy, type PolicyName, type Rng } from './policy.ts';

export interface RouterSettings {
  blockSize: number;
  policy?: PolicyName;
  overlapWeight?: number;
  temperature?: number;
  maxQueued?: number;
  queueTimeoutMs?: number;
  activeDecodeBlocksThreshold?: number;
  activePrefillTokensThreshold?: number;
  predictionGraceMs?: number; // 0 = off (predictions.ts)
  holdUntilPrefilled?: boolean; // see the header
  rng?: Rng;
  now?: () => number; // milliseconds, default performance.now (tests pass their own clock)
  onPendingChange?: () => void; // pendingLoad() changed (see the header)
}

// Blocks and requests on one worker (pendingLoad(), setRemoteLoad()).
export interface LoadShare {
  blocks: number;
  requests: number;
}

// What a worker announces when it joins (discovery's WorkerInfo plus its request slots).
export interface WorkerSpec {
  workerId: WorkerId;
  blockSize: number;
  kvTotalBlocks: number;
  requestTotalSlots: number;
}

export interface RouteRequest {
  requestId: RequestId;
  blockHashes: readonly BlockHash[]; // the prompt's full blocks, chained (DESIGN.md section 5)
  promptTokens?: number; // the prompt's length, for the prefill-token threshold; default n * blockSize
  group?: string; // fairness in the queue (see the header); default: the request's own id
  signal?: AbortSignal; // aborting while queued withdraws the request (rejects with signal.reason)
}

export interface RouteDecision {
  workerId: WorkerId;
  requestBlocks: number; // n
  overlapBlocks: number; // leading blocks already cached on the worker
  prefixHitRate: number; // overlapBlocks / n (0 when n = 0): travels with the request
}

// 'unknown_worker': the event's worker has not joined (or has left): ignored. Once it joins, its
// first event reports 'gap' and the owner asks for a replay.
export type EventStatus = ApplyStatus | 'unknown_worker';

export interface WorkerMetrics {
  workerId: WorkerId;
  routed: number; // decisions that chose this worker
  overlapBlocks: number; // sum of the overlap of those decisions
  activeBlocks: number; // current estimate: this frontend's view (report + its own pending)
  activeRequests: number; // current estimate (running + waiting)
  remoteBlocks: number; // the other frontends' corrections (setRemoteLoad), on top of activeBlocks; may be < 0
  remoteRequests: number;
  prefillTokens: number; // prompt tokens routed to it and not yet prefilled
  busy: boolean; // a request of one new block would skip it now (capacity or a busy threshold)
  cachedBlocks: number; // blocks the index holds for it
  awaitingReplay: boolean;
}

export interface RouterMetrics {
  decisions: number;
  requestBlocks: number; // sum of n over decisions
  overlapBlocks: number; // sum of the chosen worker's overlap
  hitRate: number; // overlapBlocks / requestBlocks (0 before any block)
  inFlight: number;
  queueDepth: number;
  queuedTotal: number; // requests that had to wait
  rejected: Record<'queue_full' | 'timeout' | 'no_workers', number>;
  indexedBlocks: number; // distinct hashes in the index
  unknownParent: number;
  gaps: number;
  staleEvents: number;
  workers: WorkerMetrics[];
}

interface WorkerState {
  readonly workerId: WorkerId;
  readonly joinSeq: number;
  kvTotalBlocks: number;
  requestTotalSlots: number;
  baseBlocks: number;
  pendingBlocks: number;
  baseRequests: number;
  pendingRequests: number;
  flights: Set<InFlight>; // its requests in flight
  remoteBlocks: number; // setRemoteLoad()
  remoteRequests: number;
  finishedBlocks: number; // all n of the requests the last report counted and that finished since
  finishedRequests: number;
  recentFinishes: { at: number; blocks: number }[]; // finishes of the last FINISH_WINDOW_MS, oldest first
  prefillTokens: number; // of requests in flight that have not reported their first output
  routed: number;
  overlapBlocks: number;
}

interface InFlight {
  readonly worker: WorkerState;
  readonly newBlocks: number;
  readonly requestBlocks: number; // n: every block the request holds on its worker, cached ones too
  inPending: boolean; // its blocks are in the worker's pending part (not yet in a report)
  readonly group: string;
  prefillTokens: number; // 0 once prefilled
  prefilled: boolean; // its first output came
}

interface Waiting {
  readonly request: RouteRequest;
  readonly resolve: (decision: RouteDecision) => void;
  readonly reject: (error: unknown) => void;
  readonly timer: NodeJS.Timeout | undefined; // none for an admitted (bulk) request
  readonly onAbort: () => void;
  readonly admitted: boolean;
}

export class KvRouter {
  readonly index = new KvIndex();
  readonly blockSize: number;
  readonly #policy: Policy;
  readonly #maxQueued: number;
  readonly #queueTimeoutMs: number;
  readonly #busyBlocks: number;
  readonly #busyPrefillTokens: number;
  readonly #workers = new Map<WorkerId, WorkerState>();
  readonly #inFlight = new Map<RequestId, InFlight>();
  readonly #predicted: PredictedPrefixes; // running requests' prefixes (held blocks); with a grace, predictions
  readonly #predictOverlap: boolean;
  readonly #now: () => number;
  readonly #queue: Waiting[] = []; // in arrival order
  readonly #groupInFlight = new Map<string, number>();
  readonly #remote = new Map<WorkerId, LoadShare>(); // setRemoteLoad(); workers that left may stay
  readonly #onPendingChange: (() => void) | undefined;
  #joinSeq = 0;
  readonly #holdUntilPrefilled: boolean;
  #closed = false;
  #decisions = 0;
  #requestBlocks = 0;
  #overlapBlocks = 0;
  #queuedTotal = 0;
  readonly #rejected = { queue_full: 0, timeout: 0, no_workers: 0 };

  constructor(settings: RouterSettings) {
    const { blockSize, policy = 'kv', maxQueued = 256, queueTimeoutMs = 30_000, rng = Math.random } = settings;
    if (!Number.isInteger(blockSize) || blockSize < 1) {
      throw new RangeError(`router blockSize must be an integer >= 1, got ${blockSize}`);
    }
    if (!Number.isInteger(maxQueued) || maxQueued < 0) {
      throw new RangeError(`router maxQueued must be an integer >= 0, got ${maxQueued}`);
    }
    if (!Number.isFinite(queueTimeoutMs) || queueTimeoutMs <= 0) {
      throw new RangeError(`router queueTimeoutMs must be a number > 0, got ${queueTimeoutMs}`);
    }
    const { activeDecodeBlocksThreshold: busyBlocks = 1, activePrefillTokensThreshold: busyPrefill = Infinity } = settings;
    if (!(busyBlocks > 0 && busyBlocks <= 1)) {
      throw new RangeError(`router activeDecodeBlocksThreshold must be a number in (0, 1], got ${busyBlocks}`);
    }
    if (busyPrefill !== Infinity && !(Number.isInteger(busyPrefill) && busyPrefill >= 1)) {
      throw new RangeError(`router activePrefillTokensThreshold must be an integer >= 1, got ${busyPrefill}`);
    }
    this.#busyBlocks = busyBlocks;
    this.#busyPrefillTokens = busyPrefill;
    this.blockSize = blockSize;
    this.#maxQueued = maxQueued;
    this.#queueTimeoutMs = queueTimeoutMs;
    this.#policy = createPolicy(policy, { overlapWeight: settings.overlapWeight, temperature: settings.temperature }, rng);
    this.#now = settings.now ?? (() => performance.now());
    this.#onPendingChange = settings.onPendingChange;
    this.#holdUntilPrefilled = settings.holdUntilPrefilled ?? false;
    const grace = settings.predictionGraceMs ?? 0;
    if (!Number.isFinite(grace) || grace < 0) throw new RangeError(`router predictionGraceMs must be a number >= 0, got ${grace}`);
    this.#predicted = new PredictedPrefixes(grace);
    this.#predictOverlap = grace > 0;
  }

  get policy(): PolicyName {
    return this.#policy.name;
  }

  // ---- workers ----

  // Adds a worker, or updates the capacity of one already known. Returns undefined when accepted,
  // else why it was refused (the owner logs it; the worker is not routed to).
  addWorker(spec: WorkerSpec): string | undefined {
    if (spec.blockSize !== this.blockSize) {
      return `worker ${spec.workerId} refused: its block size ${spec.blockSize} differs from the router's ${this.blockSize}`;
    }
    if (!(spec.kvTotalBlocks > 0) || !(spec.requestTotalSlots > 0)) {
      return `worker ${spec.workerId} refused: kvTotalBlocks (${spec.kvTotalBlocks}) and requestTotalSlots (${spec.requestTotalSlots}) must be > 0`;
    }
    const known = this.#workers.get(spec.workerId);
    if (known !== undefined) {
      known.kvTotalBlocks = spec.kvTotalBlocks;
      known.requestTotalSlots = spec.requestTotalSlots;
    } else {
      this.#workers.set(spec.workerId, {
        workerId: spec.workerId,
        joinSeq: this.#joinSeq++,
        kvTotalBlocks: spec.kvTotalBlocks,
        requestTotalSlots: spec.requestTotalSlots,
        baseBlocks: 0,
        pendingBlocks: 0,
        baseRequests: 0,
        pendingRequests: 0,
        flights: new Set(),
        remoteBlocks: this.#remote.get(spec.workerId)?.blocks ?? 0,
        remoteRequests: this.#remote.get(spec.workerId)?.requests ?? 0,
        finishedBlocks: 0,
        finishedRequests: 0,
        recentFinishes: [],
        prefillTokens: 0,
        routed: 0,
        overlapBlocks: 0,
      });
    }
    this.#drainQueue();
    return undefined;
  }

  // Drops a worker and its cached blocks. Requests in flight on it are left to the owner (it sees
  // their failure); their finish() is still accepted.
  removeWorker(workerId: WorkerId): boolean {
    this.index.removeWorker(workerId);
    this.#predicted.removeWorker(workerId);
    const worker = this.#workers.get(workerId);
    if (worker === undefined) return false;
    this.#workers.delete(workerId);
    if (worker.pendingBlocks !== 0 || worker.pendingRequests !== 0) this.#onPendingChange?.();
    return true;
  }

  // ---- event plane ----

  // Applies one KV event. On 'gap' the owner asks that worker to replay its cache; 'stale' and
  // 'unknown_worker' need nothing. A malformed event (a hash that is not 16 lowercase hex digits,
  // a non-integer id) throws a TypeError and changes nothing: the owner logs and drops it.
  applyEvent(event: KvEvent): EventStatus {
    if (!this.#workers.has(event.worker_id)) return 'unknown_worker';
    return this.index.applyEvent(event);
  }

  // A worker's load report corrects the router's estimate (see the header). Returns false for a
  // worker that has not joined.
  updateLoad(workerId: WorkerId, load: LoadMetrics): boolean {
    const worker = this.#workers.get(workerId);
    if (worker === undefined) return false;
    const now = this.#now();
    const recent = worker.recentFinishes;
    while (recent.length > 0 && now - recent[0].at > FINISH_WINDOW_MS) recent.shift();
    const finishedBlocks = recent.reduce((sum, f) => sum + f.blocks, 0);
    const hadPending = worker.pendingBlocks !== 0 || worker.pendingRequests !== 0 || worker.finishedRequests !== 0;
    worker.finishedBlocks = 0;
    worker.finishedRequests = 0;
    worker.baseBlocks = Math.max(0, load.kv_active_blocks - finishedBlocks);
    worker.baseRequests = Math.max(0, load.request_active_slots + load.num_requests_waiting - recent.length);
    worker.pendingBlocks = 0;
    worker.pendingRequests = 0;
    for (const flight of worker.flights) {
      if (!flight.inPending) continue;
      if (this.#holdUntilPrefilled && !flight.prefilled) {
        worker.pendingBlocks += flight.newBlocks;
        worker.pendingRequests += 1;
      } else {
        flight.inPending = false;
      }
    }
    if (load.kv_total_blocks > 0) worker.kvTotalBlocks = load.kv_total_blocks;
    if (load.request_total_slots > 0) worker.requestTotalSlots = load.request_total_slots;
    if (hadPending) this.#onPendingChange?.();
    this.#drainQueue();
    return true;
  }

  // What the other frontends routed to a worker and its reports do not show yet (their pending
  // blocks and requests, summed): added to this router's estimate of it. Zeros forget it. Kept
  // for a worker that has not joined (or left), for when it does.
  setRemoteLoad(workerId: WorkerId, load: LoadShare): void {
    const old = this.#remote.get(workerId);
    if (load.blocks === 0 && load.requests === 0) this.#remote.delete(workerId);
    else this.#remote.set(workerId, { blocks: load.blocks, requests: load.requests });
    const worker = this.#workers.get(workerId);
    if (worker !== undefined) {
      worker.remoteBlocks = load.blocks;
      worker.remoteRequests = load.requests;
    }
    if (load.blocks < (old?.blocks ?? 0) || load.requests < (old?.requests ?? 0)) this.#drainQueue();
  }

  // This router's correction to each worker's last report, per worker with one (see the header):
  // the requests it routed there since (and not finished), with their new blocks, less those the
  // report counted that finished since, with all their blocks.
  pendingLoad(): Map<WorkerId, LoadShare> {
    const out = new Map<WorkerId, LoadShare>();
    for (const w of this.#workers.values()) {
      const blocks = w.pendingBlocks - w.finishedBlocks;
      const requests = w.pendingRequests - w.finishedRequests;
      if (blocks !== 0 || requests !== 0) out.set(w.workerId, { blocks, requests });
    }
    return out;
  }

  // ---- requests ----

  // route()'s queue_full refusal of a new request, decided now without its prompt: no worker has
  // room even for a fully cached prompt (or requests wait ahead) and the queue is full; counted as
  // route() counts it. Undefined when route() might place or queue it (closed, no workers: route()
  // answers those itself). A frontend asks before tokenizing, so a refusal costs no tokenizer time.
  refusesNow(): RouterOverloadedError | undefined {
    if (this.#closed || this.#workers.size === 0) return undefined;
    if (this.#queue.length === 0 && [...this.#workers.values()].some((w) => this.#hasRoom(w, 0))) return undefined;
    const waiting = this.#queue.reduce((k, w) => k + (w.admitted ? 0 : 1), 0);
    if (waiting < this.#maxQueued) return undefined;
    this.#rejected.queue_full++;
    return new RouterOverloadedError('queue_full', `every worker is at capacity and ${waiting} requests wait`);
  }

  // Routes now if a worker has room and nothing waits ahead, else waits in the queue. Rejects
  // with RouterOverloadedError (queue full, timeout, no workers, closed) or the signal's reason.
  // A request id already routed or waiting throws a TypeError at once; so does a malformed block
  // hash, or it rejects the promise when the request was queued without a routing attempt.
  route(request: RouteRequest): Promise<RouteDecision> {
    this.#checkNewRequest(request.requestId);
    const now = this.tryRoute(request);
    if (now !== undefined) return Promise.resolve(now);
    const { signal } = request;
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#closed) return Promise.reject(new RouterOverloadedError('closed', 'the router is closed'));
    if (this.#workers.size === 0) {
      this.#rejected.no_workers++;
      return Promise.reject(new RouterOverloadedError('no_workers', 'no worker has joined'));
    }
    const admitted = this.#isBulk(request);
    if (!admitted) {
      const waiting = this.#queue.reduce((k, w) => k + (w.admitted ? 0 : 1), 0);
      if (waiting >= this.#maxQueued) {
        this.#rejected.queue_full++;
        return Promise.reject(new RouterOverloadedError('queue_full', `every worker is at capacity and ${waiting} requests wait`));
      }
    }
    this.#queuedTotal++;
    return new Promise<RouteDecision>((resolve, reject) => {
      const onAbort = () => {
        this.#withdraw(waiting);
        reject(signal!.reason);
      };
      const timer = admitted
        ? undefined
        : setTimeout(() => {
            this.#withdraw(waiting);
            this.#rejected.timeout++;
            reject(new RouterOverloadedError('timeout', `no worker had room within ${this.#queueTimeoutMs} ms`));
          }, this.#queueTimeoutMs);
      timer?.unref();
      const waiting: Waiting = { request, resolve, reject, timer, onAbort, admitted };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#queue.push(waiting);
      // It may be the fairest of the queue and fit now (bulk requests ahead of it may not).
      this.#drainQueue();
    });
  }

  // Routes now, or returns undefined (every worker at capacity, none joined, closed, or requests
  // already waiting: they go first). Synchronous; a decision is committed like route()'s.
  tryRoute(request: RouteRequest): RouteDecision | undefined {
    this.#checkNewRequest(request.requestId);
    if (this.#queue.length > 0 || this.#closed) return undefined;
    return this.#place(request);
  }

  // The request's worker is done with it (finished, failed or aborted): its blocks leave the
  // estimate and waiting requests are retried. Unknown ids are ignored (finish is idempotent).
  finish(requestId: RequestId): void {
    const flight = this.#inFlight.get(requestId);
    if (flight === undefined) return;
    this.#inFlight.delete(requestId);
    this.#predicted.finish(requestId, this.#now());
    const worker = flight.worker;
    const left = (this.#groupInFlight.get(flight.group) ?? 1) - 1;
    if (left > 0) this.#groupInFlight.set(flight.group, left);
    else this.#groupInFlight.delete(flight.group);
    worker.prefillTokens -= flight.prefillTokens;
    worker.recentFinishes.push({ at: this.#now(), blocks: flight.requestBlocks }); // kv_active_blocks counted them all
    worker.flights.delete(flight);
    if (flight.inPending) {
      worker.pendingBlocks -= flight.newBlocks;
      worker.pendingRequests -= 1;
    }
    // Held in pending after its first output (holdUntilPrefilled): the last report may count it
    // too, so it leaves the base as well (an undercount only until the next report).
    if (!flight.inPending || flight.prefilled) {
      worker.baseBlocks = Math.max(0, worker.baseBlocks - flight.newBlocks);
      worker.baseRequests = Math.max(0, worker.baseRequests - 1);
      worker.finishedBlocks += flight.requestBlocks;
      worker.finishedRequests += 1;
    }
    if (this.#workers.get(worker.workerId) === worker) this.#onPendingChange?.();
    this.#drainQueue();
  }

  // The request's prompt is prefilled (its first output came): its tokens leave the worker's
  // prefill count, and waiting requests are retried. Unknown ids are ignored.
  prefilled(requestId: RequestId): void {
    const flight = this.#inFlight.get(requestId);
    if (flight === undefined || flight.prefilled) return;
    flight.prefilled = true;
    flight.worker.prefillTokens -= flight.prefillTokens;
    flight.prefillTokens = 0;
    this.#drainQueue();
  }

  // Rejects every waiting request and every later route() with RouterOverloadedError('closed').
  close(): void {
    this.#closed = true;
    for (const waiting of [...this.#queue]) {
      this.#withdraw(waiting);
      waiting.reject(new RouterOverloadedError('closed', 'the router is closed'));
    }
  }

  metrics(): RouterMetrics {
    const stats = this.index.stats();
    return {
      decisions: this.#decisions,
      requestBlocks: this.#requestBlocks,
      overlapBlocks: this.#overlapBlocks,
      hitRate: this.#requestBlocks === 0 ? 0 : this.#overlapBlocks / this.#requestBlocks,
      inFlight: this.#inFlight.size,
      queueDepth: this.#queue.length,
      queuedTotal: this.#queuedTotal,
      rejected: { ...this.#rejected },
      indexedBlocks: stats.blocks,
      unknownParent: stats.unknownParent,
      gaps: stats.gaps,
      staleEvents: stats.stale,
      workers: [...this.#workers.values()].map((w) => ({
        workerId: w.workerId,
        routed: w.routed,
        overlapBlocks: w.overlapBlocks,
        activeBlocks: w.baseBlocks + w.pendingBlocks,
        activeRequests: w.baseRequests + w.pendingRequests,
        remoteBlocks: w.remoteBlocks,
        remoteRequests: w.remoteRequests,
        prefillTokens: w.prefillTokens,
        busy: !this.#hasRoom(w, 1),
        cachedBlocks: this.index.workerBlocks(w.workerId),
        awaitingReplay: this.index.awaitingReplay(w.workerId),
      })),
    };
  }

  // Whether the request's group already has one in flight (see the header).
  #isBulk(request: RouteRequest): boolean {
    return (this.#groupInFlight.get(request.group ?? request.requestId) ?? 0) > 0;
  }

  // The capacity rule, the bulk share and the busy thresholds (see the header), for a request
  // adding newBlocks.
  #hasRoom(worker: WorkerState, newBlocks: number, bulk = false): boolean {
    const activeBlocks = this.#activeBlocks(worker);
    const requests = this.#activeRequests(worker);
    if (activeBlocks <= 0 && requests <= 0) return true; // idle
    if (activeBlocks + newBlocks > worker.kvTotalBlocks || requests > worker.requestTotalSlots) return false;
    if (bulk && requests + 1 > Math.max(1, Math.floor(BULK_SHARE * worker.requestTotalSlots))) return false;
    return activeBlocks <= this.#busyBlocks * worker.kvTotalBlocks && worker.prefillTokens <= this.#busyPrefillTokens;
  }

  // The estimate the cost and the capacity rule use (see the header).
  #activeBlocks(worker: WorkerState): number {
    return Math.max(0, worker.baseBlocks + worker.pendingBlocks + worker.remoteBlocks);
  }

  #activeRequests(worker: WorkerState): number {
    return Math.max(0, worker.baseRequests + worker.pendingRequests + worker.remoteRequests);
  }

  // Picks and commits a worker with room, or returns undefined.
  #place(request: RouteRequest): RouteDecision | undefined {
    const hashes = request.blockHashes;
    const n = hashes.length;
    const overlaps = this.index.overlaps(hashes);
    if (this.#predictOverlap) this.#predicted.merge(hashes, overlaps, this.#now());
    const held = new Map<WorkerId, number>();
    this.#predicted.held(hashes, held);
    const candidates: Candidate[] = [];
    const states: WorkerState[] = [];
    const bulk = this.#isBulk(request);
    for (const worker of this.#workers.values()) {
      const overlap = overlaps.get(worker.workerId) ?? 0;
      if (!this.#hasRoom(worker, n - overlap, bulk)) continue;
      const activeBlocks = this.#activeBlocks(worker);
      const heldBlocks = held.get(worker.workerId) ?? 0;
      candidates.push({ workerId: worker.workerId, joinSeq: worker.joinSeq, overlap, activeBlocks, heldBlocks });
      states.push(worker);
    }
    if (candidates.length === 0) return undefined;

    const pick = this.#policy.select(candidates, n);
    const worker = states[pick];
    const overlap = candidates[pick].overlap;
    const newBlocks = n - overlap;
    const prefillTokens = Math.max(0, (request.promptTokens ?? n * this.blockSize) - overlap * this.blockSize);
    worker.prefillTokens += prefillTokens;
    worker.pendingBlocks += newBlocks;
    worker.pendingRequests += 1;
    worker.routed++;
    worker.overlapBlocks += overlap;
    const group = request.group ?? request.requestId;
    this.#groupInFlight.set(group, (this.#groupInFlight.get(group) ?? 0) + 1);
    const flight: InFlight = { worker, newBlocks, requestBlocks: n, inPending: true, group, prefillTokens, prefilled: false };
    this.#inFlight.set(request.requestId, flight);
    worker.flights.add(flight);
    this.#predicted.add(request.requestId, worker.workerId, hashes);
    this.#decisions++;
    this.#requestBlocks += n;
    this.#overlapBlocks += overlap;
    this.#onPendingChange?.();
    return { workerId: worker.workerId, requestBlocks: n, overlapBlocks: overlap, prefixHitRate: n === 0 ? 0 : overlap / n };
  }

  #checkNewRequest(requestId: RequestId): void {
    if (this.#inFlight.has(requestId) || this.#queue.some((w) => w.request.requestId === requestId)) {
      throw new TypeError(`request ${requestId} is already routed or waiting, and not finished`);
    }
  }

  // The waiting request to try first: the oldest of the group with the fewest in flight.
  #fairest(): Waiting {
    let best = this.#queue[0];
    let bestCount = Infinity;
    for (const w of this.#queue) {
      const count = this.#groupInFlight.get(w.request.group ?? w.request.requestId) ?? 0;
      if (count < bestCount) {
        best = w;
        bestCount = count;
        if (count === 0) break;
      }
    }
    return best;
  }

  #drainQueue(): void {
    while (this.#queue.length > 0) {
      const head = this.#fairest();
      let decision: RouteDecision | undefined;
      try {
        decision = this.#place(head.request);
      } catch (error) {
        // A malformed block hash in a request that was queued without a routing attempt.
        this.#withdraw(head);
        head.reject(error);
        continue;
      }
      if (decision === undefined) return;
      this.#withdraw(head);
      head.resolve(decision);
    }
  }

  #withdraw(waiting: Waiting): void {
    const at = this.#queue.indexOf(waiting);
    if (at >= 0) this.#queue.splice(at, 1);
    clearTimeout(waiting.timer);
    waiting.request.signal?.removeEventListener('abort', waiting.onAbort);
  }
}
