// load-sharing.ts: the frontends' shares of the workers' load over Redis, so that several
// frontends serving the same workers do not all pick the same idle one (DESIGN.md section 8).
//
// What is shared. A worker's own load report (the event plane's `<ns>:load`, ~100 ms and after
// every engine step that changed it) already reaches every frontend, and each router's estimate
// starts from it. What a report cannot show yet is what was routed since it was taken (each
// router's `pending` part, ts/router/router.ts), and which of the requests it counted have
// finished since. So each frontend publishes that
// correction, per worker (KvRouter.pendingLoad), as one snapshot (FrontendLoad, ts/protocol) on
// the pub/sub channel `<ns>:frontend-load`, and adds the other frontends' latest snapshots to
// its estimate (ts/router/remote-loads.ts -> KvRouter.setRemoteLoad). Both parts drop back to 0
// at each report of the worker, so a snapshot is small and lives about one report interval.
//
// Stays true:
//   - the routing decision never waits on Redis: changed() only marks the snapshot dirty; it is
//     sent once per event-loop turn (setImmediate), so a burst of decisions in one turn is one
//     PUBLISH, fire and forget; it is also recomputed every TICK_MS; an
//     unchanged snapshot is not sent again, except that a non-empty one is repeated every
//     ttlMs / 3 so it does not lapse while it is true;
//   - a snapshot lapses ttlMs after it arrived unless a newer one replaced it (swept every
//     TICK_MS): a frontend that dies leaves phantom load for at most ttlMs + TICK_MS; one that
//     closes sends an empty snapshot first, which clears its share at once;
//   - Redis away: nothing is sent (not queued either: a snapshot is a latest value), nothing
//     arrives, the others' shares lapse, and each frontend routes on its own view, as before
//     there were several. When Redis is back the next change (or repeat) resumes sharing;
//   - a frontend ignores its own snapshots (by frontend_id).
// Settings: ttlMs integer in [100, 60000], default 1000.
import type { FrontendLoad, WorkerId } from '../protocol/index.ts';
import { RemoteLoads, type LoadShare } from '../router/index.ts';
import { DEFAULT_NAMESPACE } from './discovery.ts';
import { RedisConnection } from './redis-connection.ts';

const TICK_MS = 100; // how often lapsed snapshots go and this frontend's own is recomputed

export function frontendLoadChannel(namespace: string): string {
  return `${namespace}:frontend-load`;
}

export interface LoadSharingOptions {
  url: string;
  namespace?: string;
  frontendId: string; // unique per frontend process
  ttlMs?: number;
  ownLoad: () => ReadonlyMap<WorkerId, LoadShare>; // this frontend's pending part (KvRouter.pendingLoad)
  onRemote: (workerId: WorkerId, share: LoadShare) => void; // the others' sum changed (KvRouter.setRemoteLoad)
  now?: () => number; // ms, default performance.now
  startTimeoutMs?: number; // how long start() waits for Redis, default 10000
}

export interface LoadSharingStats {
  published: number; // PUBLISH commands sent
  received: number; // other frontends' snapshots applied
  frontends: number; // other frontends with a live, non-empty snapshot
}

export class LoadSharing {
  private readonly pub: RedisConnection;
  private readonly sub: RedisConnection;
  private readonly channel: string;
  private readonly ttlMs: number;
  private readonly now: () => number;
  private readonly remote = new RemoteLoads();
  private dirty = false;
  private flushing: NodeJS.Immediate | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lastText = '';
  private lastEmpty = true;
  private lastSentAt = -Infinity;
  private closed = false;
  private published = 0;
  private received = 0;

  constructor(private readonly opts: LoadSharingOptions) {
    const ttl = opts.ttlMs ?? 1000;
    if (!Number.isInteger(ttl) || ttl < 100 || ttl > 60_000) throw new RangeError(`load sharing ttlMs must be an integer in [100, 60000], got ${ttl}`);
    this.ttlMs = ttl;
    this.now = opts.now ?? (() => performance.now());
    this.channel = frontendLoadChannel(opts.namespace ?? DEFAULT_NAMESPACE);
    this.pub = new RedisConnection(opts.url, { name: 'load-sharing-pub' });
    this.sub = this.pub.duplicate('load-sharing-sub');
  }

  async start(): Promise<void> {
    const timeoutMs = this.opts.startTimeoutMs ?? 10_000;
    await Promise.all([this.pub.whenReady(timeoutMs), this.sub.whenReady(timeoutMs)]);
    this.sub.redis.on('message', (_channel: string, text: string) => this.onMessage(text));
    await this.sub.redis.subscribe(this.channel);
    this.timer = setInterval(() => this.tick(), TICK_MS);
    this.timer.unref();
  }

  // This frontend's pending part changed: sent within this event-loop turn's end.
  changed(): void {
    if (this.closed) return;
    this.dirty = true;
    this.flushing ??= setImmediate(() => {
      this.flushing = undefined;
      this.flush(false);
    });
  }

  stats(): LoadSharingStats {
    return { published: this.published, received: this.received, frontends: this.remote.frontends };
  }

  // Sends an empty snapshot (the others drop this frontend's share at once), then closes.
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.flushing) clearImmediate(this.flushing);
    if (this.timer) clearInterval(this.timer);
    if (!this.lastEmpty && this.pub.isConnected()) {
      const empty: FrontendLoad = { frontend_id: this.opts.frontendId, ttl_ms: this.ttlMs, workers: {} };
      await this.pub.redis.publish(this.channel, JSON.stringify(empty)).catch(() => undefined);
    }
    await Promise.all([this.pub.close(), this.sub.close()]);
  }

  private tick(): void {
    for (const id of this.remote.expire(this.now())) this.opts.onRemote(id, this.remote.total(id));
    // Repeat a non-empty snapshot before it lapses at the others; else send it if it changed.
    if (!this.lastEmpty && this.now() - this.lastSentAt >= this.ttlMs / 3) this.flush(true);
    else {
      this.dirty = true;
      this.flush(false);
    }
  }

  private flush(repeat: boolean): void {
    if (!repeat && !this.dirty) return;
    this.dirty = false;
    const workers: FrontendLoad['workers'] = {};
    let empty = true;
    for (const [id, share] of this.opts.ownLoad()) {
      workers[id] = [share.blocks, share.requests];
      empty = false;
    }
    const text = JSON.stringify({ frontend_id: this.opts.frontendId, ttl_ms: this.ttlMs, workers } satisfies FrontendLoad);
    if (text === this.lastText && !repeat) return;
    if (!this.pub.isConnected()) {
      this.lastText = ''; // sent again once Redis is back and something changes
      return;
    }
    this.lastText = text;
    this.lastEmpty = empty;
    this.lastSentAt = this.now();
    this.published++;
    this.pub.redis.publish(this.channel, text).catch(() => {
      this.lastText = '';
    });
  }

  private onMessage(text: string): void {
    let load: FrontendLoad;
    try {
      load = JSON.parse(text) as FrontendLoad;
    } catch {
      return;
    }
    if (typeof load?.frontend_id !== 'string' || load.frontend_id === this.opts.frontendId || typeof load.workers !== 'object' || load.workers === null) return;
    this.received++;
    for (const id of this.remote.apply(load, this.now())) this.opts.onRemote(id, this.remote.total(id));
  }
}
