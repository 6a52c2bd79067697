// routed-worker-pool.ts: the WorkerPool of the modes that use Redis: workers found through
// discovery leases, chosen by the KV router (ts/router) from the KV events and load metrics
// they publish on the event plane. This is the router's owner (DESIGN.md: "kv-router (in the
// frontend)"): it feeds the router joins, leaves, events and loads, and asks workers to
// replay when the router reports a gap or the event plane says it lost its place.
//
// Stays true:
//   - a worker whose block size differs from the router's is refused with one log line (a
//     silent mismatch would mean zero overlap forever);
//   - start() returns once the workers known at start have replayed their caches into the index
//     (a frontend started after the workers routes on their caches from its first request), or
//     after 3 s, logging the ones missing;
//   - a worker that leaves (lease gone, kill -9 included) leaves the router and its blocks the
//     index at once; one that does not answer the health probe (worker-health.ts) or the request
//     plane before its lease expires is set aside (not routed to) until it answers again (then
//     it rejoins with a replay) or its lease goes;
//   - while Redis is unreachable, requests are still routed: to the last known workers (the
//     discovery watcher keeps its set, and the health probe still sets aside a worker that stops
//     answering), on the probes' loads and on the KV index as it was (no events arrive, so the
//     overlap it scores may be stale: that costs a prefill, never a wrong answer). One line is
//     logged when Redis goes and one when it is back; after a reconnect the workers replay and
//     the index is the truth again.
//   - with several frontends on the same workers, each publishes what its router placed and the
//     workers' reports do not show yet, and adds the others' to its estimate
//     (ts/runtime/load-sharing.ts): no Redis round trip in the routing decision; with Redis away
//     the others' shares lapse within about a second and this frontend routes on its own view.
// The request's block hashes are computed once, here, with the engine's own hash (the addon).
import { randomUUID } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import { blockHashes } from '../native/index.ts';
import type { BlockHash, RequestId, WorkerId, WorkerInfo } from '../protocol/index.ts';
import { KvRouter, type PolicyName } from '../router/index.ts';
import { DiscoveryWatcher, type LeasedWorkerInfo } from '../runtime/discovery.ts';
import { EventPlaneConsumer } from '../runtime/event-plane.ts';
import { LoadSharing, type LoadSharingStats } from '../runtime/load-sharing.ts';
import { WorkerClient } from '../runtime/request-client.ts';
import { ApiError } from './errors.ts';
import type { HealthSettings } from './worker-health.ts';
import { overloadError, RouterBackedPool, type OverloadSettings, type SelectOptions, type WorkerPool, type WorkerSelection } from './worker-pool.ts';

const PREDICTION_GRACE_MS = 2000;
const START_REPLAY_WAIT_MS = 3000;

export interface RoutedPoolOptions {
  redisUrl: string;
  namespace?: string;
  modelName: string;
  blockSize: number;
  policy: PolicyName;
  overlapWeight?: number;
  temperature?: number;
  overload?: OverloadSettings;
  health?: HealthSettings;
  // Share this router's pending load with the other frontends (load-sharing.ts); default on.
  sharedLoad?: boolean;
  sharedLoadTtlMs?: number; // default 1000
  frontendId?: string; // default: a random id
}

export class RoutedWorkerPool extends RouterBackedPool implements WorkerPool {
  private readonly watcher: DiscoveryWatcher;
  private readonly consumer: EventPlaneConsumer;
  private readonly members = new Map<WorkerId, { info: LeasedWorkerInfo; client: WorkerClient }>();
  // Members the health probe or the request plane found down: out of the router meanwhile.
  private readonly suspects = new Map<WorkerId, LeasedWorkerInfo>();
  private log!: FastifyBaseLogger; // set by start()
  private readonly hashes = new WeakMap<readonly number[], BlockHash[]>();
  private readonly sharing: LoadSharing | undefined;

  constructor(private readonly opts: RoutedPoolOptions) {
    let sharing: LoadSharing | undefined;
    super(
      new KvRouter({
        onPendingChange: () => sharing?.changed(),
        blockSize: opts.blockSize,
        policy: opts.policy,
        overlapWeight: opts.overlapWeight,
        temperature: opts.temperature,
        // Count a routed prompt as cached on its worker until its KV events arrive.
        predictionGraceMs: PREDICTION_GRACE_MS,
        // A report shows a request only once the engine admitted it: keep it pending until then.
        holdUntilPrefilled: true,
        ...opts.overload,
      }),
      {
        onDown: (id, why) => this.setAside(id, why),
        onUp: (id) => {
          const info = this.suspects.get(id);
          if (!info) return;
          this.suspects.delete(id);
          this.onJoin(info);
        },
      },
      opts.health,
    );
    if (opts.sharedLoad !== false) {
      sharing = new LoadSharing({
        url: opts.redisUrl,
        namespace: opts.namespace,
        frontendId: opts.frontendId ?? `frontend-${randomUUID()}`,
        ttlMs: opts.sharedLoadTtlMs,
        ownLoad: () => this.router.pendingLoad(),
        onRemote: (id, share) => this.router.setRemoteLoad(id, share),
      });
    }
    this.sharing = sharing;
    this.watcher = new DiscoveryWatcher({ url: opts.redisUrl, namespace: opts.namespace });
    this.watcher.on('join', (w) => this.onJoin(w));
    this.watcher.on('leave', (id) => this.onLeave(id));
    this.consumer = new EventPlaneConsumer({
      url: opts.redisUrl,
      namespace: opts.namespace,
      onKvEvent: (event) => {
        try {
          if (this.router.applyEvent(event) === 'gap') this.consumer.requestReplay(event.worker_id);
        } catch (err) {
          this.log.warn({ workerId: event.worker_id, err: (err as Error).message }, 'malformed KV event ignored');
        }
      },
      onLoad: (load) => this.router.updateLoad(load.worker_id, load),
      onResync: (reason) => {
        this.log.info({ reason }, 'event plane resync: asking every worker to replay its KV cache');
        this.consumer.requestReplay('*');
      },
      log: (line) => this.log.warn(line),
    });
  }

  async start(log: FastifyBaseLogger): Promise<void> {
    this.log = log;
    this.watcher.on('status', (connected) => {
      if (connected) this.log.warn('Redis is back: discovery and KV events resume');
      else this.log.warn({ workers: this.members.size }, 'Redis is unreachable: routing on the last known workers, their health probes and the KV index as it was');
    });
    // Events first, so a worker's replay after its join is not missed.
    await this.consumer.start();
    await this.sharing?.start();
    await this.watcher.start();
    // The index is the replay of the workers' caches; a request routed before a worker's replay
    // arrived would see no overlap there. So start() returns once every worker known now has
    // replayed (one round trip through Redis and the worker), or after START_REPLAY_WAIT_MS.
    const deadline = performance.now() + START_REPLAY_WAIT_MS;
    const pending = () => [...this.members.keys()].filter((id) => !this.router.index.replayed(id));
    while (pending().length > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    const missing = pending();
    if (missing.length > 0) this.log.warn({ workers: missing }, `no KV replay from these workers within ${START_REPLAY_WAIT_MS} ms: routing starts without their caches, which arrive with their replay`);
  }

  // Snapshots this frontend sent and received (undefined when sharing is off).
  sharingStats(): LoadSharingStats | undefined {
    return this.sharing?.stats();
  }

  private onJoin(w: LeasedWorkerInfo): void {
    if (w.model !== this.opts.modelName || w.role === 'prefill') return;
    this.suspects.delete(w.workerId);
    const refused = this.router.addWorker({
      workerId: w.workerId,
      blockSize: w.blockSize,
      kvTotalBlocks: w.kvTotalBlocks,
      requestTotalSlots: w.maxNumSeqs,
    });
    if (refused !== undefined) {
      this.log.error({ workerId: w.workerId, blockSize: w.blockSize, routerBlockSize: this.opts.blockSize }, `worker refused: ${refused}`);
      return;
    }
    const client = new WorkerClient(w.address, w.requestPlane);
    this.members.set(w.workerId, { info: w, client });
    this.health.watch(w.workerId, client);
    this.log.info({ workerId: w.workerId, address: w.address }, 'worker joined');
    // Its cache so far: a worker (re)joining replays, so the index starts from the truth.
    this.consumer.requestReplay(w.workerId);
  }

  private onLeave(id: WorkerId): void {
    this.health.unwatch(id);
    this.suspects.delete(id);
    if (!this.members.delete(id)) return;
    this.router.removeWorker(id);
    this.log.warn({ workerId: id }, 'worker left: its blocks leave the index');
  }

  private setAside(id: WorkerId, why: string): void {
    const m = this.members.get(id);
    if (!m) return;
    this.members.delete(id);
    this.router.removeWorker(id);
    this.suspects.set(id, m.info);
    this.log.warn({ workerId: id, why }, 'worker unreachable: not routed to until it answers again');
  }

  workers(): WorkerInfo[] {
    return [...this.members.values()].map((m) => m.info);
  }

  ready(): boolean {
    return this.members.size > 0;
  }

  async select(promptTokenIds: readonly number[], requestId: RequestId, opts: SelectOptions = {}): Promise<WorkerSelection> {
    let hashes = this.hashes.get(promptTokenIds); // the n choices of one prompt share its hashes
    if (hashes === undefined) {
      hashes = blockHashes(promptTokenIds, this.opts.blockSize) as BlockHash[];
      this.hashes.set(promptTokenIds, hashes);
    }
    try {
      const d = await this.router.route({ requestId, blockHashes: hashes, promptTokens: promptTokenIds.length, ...opts });
      const m = this.members.get(d.workerId);
      if (!m) throw new ApiError('ERR_NO_WORKER', `worker ${d.workerId} has left`);
      this.log.debug({ requestId, workerId: d.workerId, prefixHitRate: d.prefixHitRate, overlapBlocks: d.overlapBlocks, requestBlocks: d.requestBlocks }, 'routed');
      return { worker: m.info, client: m.client, prefixHitRate: d.prefixHitRate };
    } catch (err) {
      throw overloadError(err);
    }
  }

  protected *clients(): Iterable<WorkerClient> {
    for (const m of this.members.values()) yield m.client;
  }

  async close(): Promise<void> {
    await super.close();
    await Promise.all([this.watcher.close(), this.consumer.close(), this.sharing?.close()]);
  }
}
