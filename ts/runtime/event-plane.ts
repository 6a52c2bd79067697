// event-plane.ts: KV events and load metrics over Redis (DESIGN.md section 5), both sides.
//
// Wire, per namespace <ns>:
//   `<ns>:kv-events`  ONE stream for all workers. Each entry: field `event` = the contract JSON
//                     {worker_id, event_id, data: {stored | removed | cleared}}, field `instance`
//                     = the publishing process's instance id (the lease's instanceId). Capped
//                     with XADD MAXLEN ~ streamMaxLen (approximate trimming, cheap): the
//                     stream is history for a consumer that fell behind or reconnects, not a
//                     log; an entry is about 270 bytes, so the default holds Redis to ~3 MB
//                     for it, and a consumer more than that many events behind resyncs.
//   `<ns>:load`       pub/sub, JSON WorkerLoad (the contract's load metrics + worker_id + the
//                     cumulative prefix-cache counters). Pub/sub, not a stream: a load report is a
//                     latest value, a lost one is replaced within ~100 ms, and nothing piles up.
//   `<ns>:replay`     pub/sub, JSON {"worker_id": "<id>" | "*"}: the named worker (or every
//                     worker) calls engine.replayKvEvents(): a `cleared`, then `stored` for every
//                     cached block, with event ids continuing its sequence.
//
// Publisher (worker side). Stays true:
// - events reach the stream in the engine's order, and none is dropped while Redis is up: they
//   are queued in memory and sent in pipelined batches, a batch's unacknowledged tail is resent
//   (so a consumer may see a duplicate: same worker, same event_id; it drops ids <= the last);
// - while Redis is down the queue holds up to maxBufferedEvents (while it is up, the queue only
//   holds what waits for the batch in flight, whatever its size). On overflow the queue is dropped
//   and later events are discarded; once Redis is back the worker asks its engine for a replay
//   and publishes from its `cleared` on. Consumers see ids skip ahead to a `cleared`, which
//   restarts that worker's state from nothing, so they converge without asking;
// - a (re)started worker's first event is `cleared` with event_id 1 (a new engine numbers from 1;
//   start() asks for a replay of the empty cache). A consumer tells a restarted worker by its
//   new `instance` (and the lease's new instanceId: the DiscoveryWatcher reports leave + join);
// - after Redis restarts empty (a new run id), the worker publishes a replay unasked: consumers
//   lost the entries they had not read yet.
// - load: published every loadIntervalMs, and after any engine step that changed it (at most one
//   per LOAD_MIN_GAP_MS; the last change always goes out).
//
// Consumer (the router's owner). Stays true:
// - it reads the stream from its end at start() (XREAD BLOCK on a dedicated connection) and
//   hands every event to onKvEvent in stream order, which is each worker's event order;
//   per-worker sequencing (drop ids <= last, detect gaps and ask that worker for a replay) is
//   the owner's index's job (ts/router/kv-index.ts does exactly that);
// - onResync(reason) says that events may have been missed for every worker, so the owner asks
//   all of them for a replay (requestReplay('*')): 'start' (it began at the end of the stream),
//   'redis-restarted' (a new run id: it then reads the new stream from its start), 'trimmed'
//   (entries after its position were trimmed, or the stream vanished);
// - after an outage it continues from the last entry id it saw; requestReplay while Redis is down
//   is remembered and sent on reconnect. ('trimmed' needs Redis >= 7.0's max-deleted-entry-id;
//   on older servers a trim shows up as a per-worker gap instead.)
// The owner: applies events only of workers it knows from discovery (a left worker's late
// events are dropped, its blocks were forgotten on 'leave'); treats a new meta.instanceId for a
// worker as that worker restarted (forget its state, then apply: the new instance opens with
// `cleared`, event_id 1); asks requestReplay(worker) on a per-worker gap; and on onResync calls
// requestReplay('*').
// Settings (ranges): maxBufferedEvents [1, 10^7] default 100000; streamMaxLen [1000, 10^8]
// default 10000; loadIntervalMs [10, 10000] default 100; batchSize [1, 10000] default 1000.
import { EventEmitter } from 'node:events';
import type { NativeKvEvent, NativeLoadMetrics } from '../native/addon.js';
import type { KvEvent, WorkerId, WorkerLoad } from '../protocol/index.ts';
import { DEFAULT_NAMESPACE } from './discovery.ts';
import { keyspace, RedisConnection, serverRunId } from './redis-connection.ts';

export const LOAD_MIN_GAP_MS = 10;
const PUBLISH_BATCH = 512; // XADDs per pipeline
const BLOCK_MS = 1000; // XREAD BLOCK timeout: how often the read loop looks at close()

export function kvEventsStream(namespace: string): string {
  return `${keyspace(namespace)}:kv-events`;
}

export function loadChannel(namespace: string): string {
  return `${namespace}:load`;
}

export function replayChannel(namespace: string): string {
  return `${namespace}:replay`;
}

export interface ReplayRequest {
  worker_id: WorkerId | '*';
}

export function toKvEvent(workerId: WorkerId, e: NativeKvEvent): KvEvent {
  const base = { worker_id: workerId, event_id: e.eventId };
  if (e.type === 'stored') {
    return { ...base, data: { stored: { parent_hash: e.parentHash, block_hashes: e.blockHashes } } } as KvEvent;
  }
  if (e.type === 'removed') return { ...base, data: { removed: { block_hashes: e.blockHashes } } } as KvEvent;
  return { ...base, data: { cleared: {} } };
}

export function toWorkerLoad(workerId: WorkerId, m: NativeLoadMetrics): WorkerLoad {
  return {
    worker_id: workerId,
    request_active_slots: m.requestActiveSlots,
    request_total_slots: m.requestTotalSlots,
    kv_active_blocks: m.kvActiveBlocks,
    kv_total_blocks: m.kvTotalBlocks,
    num_requests_waiting: m.numRequestsWaiting,
    kv_cache_usage: m.kvCacheUsage,
    prefix_cache_hit_rate: m.prefixCacheHitRate,
    prefix_cache_queries: m.prefixCacheQueries,
    prefix_cache_hits: m.prefixCacheHits,
    num_preemptions: m.numPreemptions,
  };
}

// What the publisher needs from an engine (ts/native Engine has it).
export interface EventSource {
  onKvEvents(fn: (events: NativeKvEvent[]) => void): () => void;
  onMetrics(fn: (m: NativeLoadMetrics) => void): () => void;
  replayKvEvents(): void;
  metrics(): NativeLoadMetrics;
}

function checkRange(name: string, v: number, min: number, max: number): number {
  if (!Number.isInteger(v) || v < min || v > max) throw new RangeError(`${name} must be an integer in [${min}, ${max}], got ${v}`);
  return v;
}

export interface EventPlanePublisherOptions {
  connection: RedisConnection; // commands (XADD, PUBLISH); may be shared with the lease
  workerId: WorkerId;
  instanceId: string;
  source: EventSource;
  namespace?: string;
  maxBufferedEvents?: number;
  streamMaxLen?: number;
  loadIntervalMs?: number;
  log?: (line: string) => void;
}

// 'live': queue and send; 'overflowed': discard until Redis is back, then ask for a replay;
// 'awaiting-replay': discard until the replay's `cleared`.
type PublisherState = 'live' | 'overflowed' | 'awaiting-replay';

export class EventPlanePublisher {
  private readonly conn: RedisConnection;
  private sub: RedisConnection | undefined;
  private readonly stream: string;
  private readonly namespace: string;
  private readonly maxBuffered: number;
  private readonly streamMaxLen: string;
  private readonly loadIntervalMs: number;
  private readonly log: (line: string) => void;
  private queue: string[] = []; // contract JSON, oldest first
  private generation = 0; // bumped when the queue is dropped, so an in-flight batch does not splice the new one
  private state: PublisherState = 'live';
  private pumping = false;
  private runId: string | undefined;
  private closed = false;
  private readonly disposers: (() => void)[] = [];
  private loadTimer: NodeJS.Timeout | undefined;
  private trailingLoad: NodeJS.Timeout | undefined;
  private lastLoadText = '';
  private lastLoadAt = 0;
  private readonly onStatus = (up: boolean) => {
    if (up) void this.onReconnect();
  };

  constructor(private readonly opts: EventPlanePublisherOptions) {
    this.conn = opts.connection;
    this.namespace = opts.namespace ?? DEFAULT_NAMESPACE;
    this.stream = kvEventsStream(this.namespace);
    this.maxBuffered = checkRange('maxBufferedEvents', opts.maxBufferedEvents ?? 100_000, 1, 10_000_000);
    this.streamMaxLen = String(checkRange('streamMaxLen', opts.streamMaxLen ?? 10_000, 1000, 100_000_000));
    this.loadIntervalMs = checkRange('loadIntervalMs', opts.loadIntervalMs ?? 100, 10, 10_000);
    this.log = opts.log ?? ((line) => process.stderr.write(line + '\n'));
  }

  // Needs Redis up (the caller waited for it); subscribes to replay requests, publishes the
  // opening `cleared`, starts the load reports.
  async start(): Promise<void> {
    const { source, workerId } = this.opts;
    this.runId = await serverRunId(this.conn.redis, this.stream);
    this.sub = this.conn.duplicate(`${workerId}-replay`);
    await this.sub.whenReady(10_000);
    this.sub.redis.on('message', (_channel: string, text: string) => this.onReplayRequest(text));
    await this.sub.redis.subscribe(replayChannel(this.namespace));
    this.conn.on('status', this.onStatus);
    this.disposers.push(
      source.onKvEvents((events) => this.onKvEvents(events)),
      source.onMetrics((m) => this.onMetrics(m)),
    );
    source.replayKvEvents();
    this.loadTimer = setInterval(() => this.publishLoad(this.currentLoad()), this.loadIntervalMs);
    this.loadTimer.unref();
  }

  isConnected(): boolean {
    return this.conn.isConnected();
  }

  // Stops publishing (events still queued are dropped: a worker that leaves announces it, and
  // owners forget its blocks). The shared connection stays open for its owner.
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const dispose of this.disposers) dispose();
    if (this.loadTimer) clearInterval(this.loadTimer);
    if (this.trailingLoad) clearTimeout(this.trailingLoad);
    this.conn.off('status', this.onStatus);
    await this.sub?.close();
  }

  private onKvEvents(events: NativeKvEvent[]): void {
    for (const e of events) {
      if (this.state === 'awaiting-replay') {
        if (e.type !== 'cleared') continue;
        this.state = 'live';
      }
      if (this.state === 'overflowed') continue;
      if (this.queue.length >= this.maxBuffered && !this.conn.isConnected()) {
        this.log(`[event-plane ${this.opts.workerId}] ${this.queue.length} KV events buffered while Redis is away: dropped; a replay follows once it is back`);
        this.queue = [];
        this.generation++;
        this.state = 'overflowed';
        continue;
      }
      this.queue.push(JSON.stringify(toKvEvent(this.opts.workerId, e)));
    }
    void this.pump();
  }

  private async pump(): Promise<void> {
    if (this.pumping || this.closed) return;
    this.pumping = true;
    try {
      if (this.state === 'overflowed' && this.conn.isConnected()) {
        this.state = 'awaiting-replay';
        this.opts.source.replayKvEvents();
      }
      while (this.queue.length > 0 && this.conn.isConnected() && !this.closed) {
        const generation = this.generation;
        const batch = this.queue.slice(0, PUBLISH_BATCH);
        const pipe = this.conn.redis.pipeline();
        for (const json of batch) {
          pipe.xadd(this.stream, 'MAXLEN', '~', this.streamMaxLen, '*', 'instance', this.opts.instanceId, 'event', json);
        }
        let acked = 0;
        try {
          const results = (await pipe.exec()) ?? [];
          while (acked < results.length && results[acked][0] === null) acked++;
        } catch {
          // the connection dropped under the batch: nothing counts as sent
        }
        if (generation === this.generation) this.queue.splice(0, acked);
        if (acked < batch.length) break; // resent from the first unacknowledged one on reconnect
      }
    } finally {
      this.pumping = false;
    }
  }

  private async onReconnect(): Promise<void> {
    try {
      const runId = await serverRunId(this.conn.redis, this.stream);
      if (runId !== this.runId && this.state === 'live') this.opts.source.replayKvEvents();
      this.runId = runId;
    } catch {
      // down again: the next 'ready' comes back here
    }
    void this.pump();
  }

  private onReplayRequest(text: string): void {
    let req: ReplayRequest;
    try {
      req = JSON.parse(text) as ReplayRequest;
    } catch {
      return;
    }
    if (req.worker_id === '*' || req.worker_id === this.opts.workerId) this.opts.source.replayKvEvents();
  }

  private currentLoad(): string {
    return JSON.stringify(toWorkerLoad(this.opts.workerId, this.opts.source.metrics()));
  }

  private onMetrics(m: NativeLoadMetrics): void {
    const text = JSON.stringify(toWorkerLoad(this.opts.workerId, m));
    if (text === this.lastLoadText) return;
    const wait = this.lastLoadAt + LOAD_MIN_GAP_MS - performance.now();
    if (wait <= 0) return this.publishLoad(text);
    if (this.trailingLoad) clearTimeout(this.trailingLoad);
    this.trailingLoad = setTimeout(() => {
      this.trailingLoad = undefined;
      this.publishLoad(text);
    }, wait);
  }

  private publishLoad(text: string): void {
    if (this.closed || !this.conn.isConnected()) return;
    this.lastLoadText = text;
    this.lastLoadAt = performance.now();
    this.conn.redis.publish(loadChannel(this.namespace), text).catch(() => undefined);
  }
}

export interface KvEventMeta {
  instanceId: string; // the publishing worker process (the lease's instanceId)
  streamId: string; // the Redis stream entry id
}

export type ResyncReason = 'start' | 'redis-restarted' | 'trimmed';

export interface EventPlaneConsumerOptions {
  url: string;
  namespace?: string;
  onKvEvent: (event: KvEvent, meta: KvEventMeta) => void;
  onLoad?: (load: WorkerLoad) => void;
  onResync: (reason: ResyncReason) => void; // every worker should replay: requestReplay('*')
  batchSize?: number;
  startTimeoutMs?: number; // how long start() waits for Redis, default 10000
  log?: (line: string) => void;
}

export interface EventPlaneConsumerEvents {
  status: [connected: boolean];
}

// Stream ids are "<ms>-<seq>"; compares them as numbers.
export function compareStreamIds(a: string, b: string): number {
  const [am, as] = a.split('-').map(BigInt);
  const [bm, bs] = b.split('-').map(BigInt);
  if (am !== bm) return am < bm ? -1 : 1;
  if (as !== bs) return as < bs ? -1 : 1;
  return 0;
}

export class EventPlaneConsumer extends EventEmitter<EventPlaneConsumerEvents> {
  private readonly read: RedisConnection; // XREAD BLOCK only (and the checks between reads)
  private readonly sub: RedisConnection; // load reports
  private readonly cmd: RedisConnection; // replay requests
  private readonly namespace: string;
  private readonly stream: string;
  private readonly batchSize: number;
  private readonly log: (line: string) => void;
  private lastId = '0-0';
  private runId = '';
  private recheck = false; // after a reconnect: run id and trimming
  private readonly pendingReplays = new Set<string>();
  private connected = false;
  private closed = false;
  private loop: Promise<void> | undefined;

  constructor(private readonly opts: EventPlaneConsumerOptions) {
    super();
    this.namespace = opts.namespace ?? DEFAULT_NAMESPACE;
    this.stream = kvEventsStream(this.namespace);
    this.batchSize = checkRange('batchSize', opts.batchSize ?? 1000, 1, 10_000);
    this.log = opts.log ?? ((line) => process.stderr.write(line + '\n'));
    this.read = new RedisConnection(opts.url, { name: 'event-plane-read' });
    this.sub = this.read.duplicate('event-plane-load');
    this.cmd = this.read.duplicate('event-plane-cmd');
    this.read.on('status', (up) => {
      if (!up) this.recheck = true;
      this.updateStatus();
    });
    this.sub.on('status', () => this.updateStatus());
    this.cmd.on('status', (up) => {
      if (up) void this.flushReplays();
      this.updateStatus();
    });
  }

  // Positions at the end of the stream, subscribes to load reports, reports onResync('start').
  async start(): Promise<void> {
    const timeoutMs = this.opts.startTimeoutMs ?? 10_000;
    await Promise.all([this.read.whenReady(timeoutMs), this.sub.whenReady(timeoutMs), this.cmd.whenReady(timeoutMs)]);
    this.runId = await serverRunId(this.read.redis, this.stream);
    const last = await this.read.redis.xrevrange(this.stream, '+', '-', 'COUNT', 1);
    this.lastId = last[0]?.[0] ?? '0-0';
    this.recheck = false;
    if (this.opts.onLoad) {
      const onLoad = this.opts.onLoad;
      this.sub.redis.on('message', (_channel: string, text: string) => {
        let load: WorkerLoad;
        try {
          load = JSON.parse(text) as WorkerLoad;
        } catch {
          return;
        }
        onLoad(load);
      });
      await this.sub.redis.subscribe(loadChannel(this.namespace));
    }
    this.updateStatus();
    this.opts.onResync('start');
    this.loop = this.readLoop();
  }

  // Asks one worker, or every worker ('*'), to replay its cache. While Redis is down the request
  // is kept and sent on reconnect.
  requestReplay(target: WorkerId | '*'): void {
    this.pendingReplays.add(target);
    void this.flushReplays();
  }

  isConnected(): boolean {
    return this.connected;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([this.read.close(), this.sub.close(), this.cmd.close()]);
    await this.loop;
  }

  private updateStatus(): void {
    const up = !this.closed && this.read.isConnected() && this.sub.isConnected() && this.cmd.isConnected();
    if (up === this.connected) return;
    this.connected = up;
    this.emit('status', up);
  }

  private async flushReplays(): Promise<void> {
    for (const target of [...this.pendingReplays]) {
      if (!this.cmd.isConnected()) return;
      const req: ReplayRequest = { worker_id: target as ReplayRequest['worker_id'] };
      try {
        await this.cmd.redis.publish(replayChannel(this.namespace), JSON.stringify(req));
        this.pendingReplays.delete(target);
      } catch {
        return; // down again: sent on the next reconnect
      }
    }
  }

  private async readLoop(): Promise<void> {
    while (!this.closed) {
      if (!this.read.isConnected()) {
        try {
          await this.read.whenReady();
        } catch {
          return; // closed
        }
        continue;
      }
      let reply: [string, [string, string[]][]][] | null;
      try {
        if (this.recheck) {
          await this.checkPosition();
          this.recheck = false;
        }
        reply = (await this.read.redis.xread('COUNT', this.batchSize, 'BLOCK', BLOCK_MS, 'STREAMS', this.stream, this.lastId)) as typeof reply;
      } catch {
        // The connection dropped (the next turn waits for it), or the command failed: retry,
        // asking first whether the stream's server changed (on a cluster, a failover of the
        // stream's node shows only as failed commands, the client staying connected).
        this.recheck = true;
        if (this.read.isConnected() && !this.closed) await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      const entries = reply?.[0]?.[1] ?? [];
      for (const [id, fields] of entries) {
        this.lastId = id;
        this.deliver(id, fields);
      }
      if (entries.length === this.batchSize) this.recheck = true; // behind: trimming may have passed us
    }
  }

  private deliver(streamId: string, fields: string[]): void {
    let json: string | undefined;
    let instanceId = '';
    for (let i = 0; i + 1 < fields.length; i += 2) {
      if (fields[i] === 'event') json = fields[i + 1];
      else if (fields[i] === 'instance') instanceId = fields[i + 1];
    }
    if (json === undefined) return;
    let event: KvEvent;
    try {
      event = JSON.parse(json) as KvEvent;
    } catch {
      return;
    }
    try {
      this.opts.onKvEvent(event, { instanceId, streamId });
    } catch (err) {
      this.log(`[event-plane consumer] onKvEvent threw: ${(err as Error).stack ?? err}`);
    }
  }

  // After a reconnect, or a full batch: did Redis restart (a new run id: start the new stream
  // from its beginning) or trim entries this consumer had not read?
  private async checkPosition(): Promise<void> {
    const runId = await serverRunId(this.read.redis, this.stream);
    if (runId !== this.runId) {
      this.runId = runId;
      this.lastId = '0-0';
      this.opts.onResync('redis-restarted');
      return;
    }
    let info: unknown[];
    try {
      info = (await this.read.redis.xinfo('STREAM', this.stream)) as unknown[];
    } catch (err) {
      if (!/no such key/i.test((err as Error).message)) throw err;
      if (this.lastId !== '0-0') {
        this.lastId = '0-0';
        this.opts.onResync('trimmed');
      }
      return;
    }
    // Redis >= 7.0 records the last deleted (trimmed) entry; older servers leave this check to
    // the owner's per-worker gap detection.
    const at = info.indexOf('max-deleted-entry-id');
    const maxDeleted = at >= 0 ? info[at + 1] : undefined;
    const missed = typeof maxDeleted === 'string' && compareStreamIds(maxDeleted, this.lastId) > 0;
    if (missed) this.opts.onResync('trimmed');
  }
}
