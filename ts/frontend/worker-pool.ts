// worker-pool.ts: which workers the frontend may send a request to, and the choice of one.
//
// Owns: the WorkerPool interface the routes use, and StaticWorkerPool: the fixed list of workers
// the launcher hands over (no Redis), chosen by a KvRouter with the round-robin policy, so the
// capacity rule, the busy thresholds and the bounded wait queue (ts/router/router.ts) hold here
// as with Redis. Its loads come from the health probe (worker-health.ts): a worker that does not
// answer it, or that the request plane could not reach, leaves the router until it answers again.
// The KV router's pool (routed-worker-pool.ts) implements the same interface: select() sees the
// prompt's token ids and the engine request id, so a policy can score prefix overlap and count
// the blocks it routed; prefilled() says the request's first output came; release() tells it when
// that engine request ended (finished, stopped, aborted or refused), exactly once per successful
// select().
// Stays true: select() only returns a worker that serves the pool's model, is not a prefill
// worker and is not known to be down; with none, it throws ERR_NO_WORKER (HTTP 503); with every
// worker busy and the queue full (or the wait over), ERR_OVERLOADED (HTTP 503, Retry-After).
import type { FastifyBaseLogger } from 'fastify';
import type { RequestId, WorkerId, WorkerInfo, WorkerLoad } from '../protocol/index.ts';
import { KvRouter, RouterOverloadedError, type RouterMetrics, type RouterSettings } from '../router/index.ts';
import { WorkerClient } from '../runtime/request-client.ts';
import { ApiError } from './errors.ts';
import { DEFAULT_HEALTH, HealthMonitor, type HealthListener, type HealthSettings } from './worker-health.ts';

export interface WorkerSelection {
  worker: WorkerInfo;
  client: WorkerClient;
  prefixHitRate: number; // the policy's estimate of the prompt's cached share on `worker`, [0, 1]
}

// Overload settings, shared by both pools (--active-decode-blocks-threshold,
// --active-prefill-tokens-threshold, --router-queue-threshold).
export type OverloadSettings = Pick<RouterSettings, 'activeDecodeBlocksThreshold' | 'activePrefillTokensThreshold' | 'maxQueued' | 'queueTimeoutMs'>;

export interface SelectOptions {
  signal?: AbortSignal; // aborting it while the request waits for a worker with room withdraws it
  group?: string; // the HTTP request the engine request belongs to (fair queueing, router.ts)
}

export interface WorkerPool {
  // Starts background work (discovery, the health probe's logging); logs through `log`.
  start?(log: FastifyBaseLogger): Promise<void>;
  workers(): WorkerInfo[];
  // True once some worker serves the model.
  ready(): boolean;
  select(promptTokenIds: readonly number[], requestId: RequestId, opts?: SelectOptions): Promise<WorkerSelection>;
  // The engine request's first output came: its prompt is no longer waiting for prefill.
  prefilled?(requestId: RequestId): void;
  release(workerId: WorkerId, requestId: RequestId): void;
  // The worker did not answer on the request plane (connection refused or reset before any
  // output): the pool may stop choosing it until it answers again.
  reportUnavailable?(workerId: WorkerId): void;
  // A new request's refusal decided before its prompt is tokenized (every worker busy and the
  // queue full now: ERR_OVERLOADED); undefined when select() might place or queue it.
  refusesNow?(): ApiError | undefined;
  // What the router decided so far (pools that route by KV cache).
  routerMetrics?(): RouterMetrics;
  // The current load of every worker that answers (one that does not is left out).
  loads(): Promise<WorkerLoad[]>;
  // Stops background work; waiting requests are refused.
  close?(): Promise<void>;
}

// The pool's error for a router refusal: no worker at all, or every one busy.
export function overloadError(err: unknown): unknown {
  if (!(err instanceof RouterOverloadedError)) return err;
  if (err.reason === 'no_workers') return new ApiError('ERR_NO_WORKER', 'no worker is available: every worker serving this model is down or unreachable');
  return new ApiError('ERR_OVERLOADED', err.message);
}

// What both pools share: a KvRouter that chooses the worker, a HealthMonitor whose probes feed it
// their loads, and the per-request bookkeeping, which goes straight to the router. A subclass says
// what a probe's failure and recovery do to its workers (onDown / onUp) and which workers it has.
export abstract class RouterBackedPool {
  protected readonly health: HealthMonitor;

  constructor(
    protected readonly router: KvRouter,
    listener: Omit<HealthListener, 'onLoad'>,
    health: HealthSettings = DEFAULT_HEALTH,
  ) {
    this.health = new HealthMonitor({ ...listener, onLoad: (id, load) => this.router.updateLoad(id, load) }, health);
  }

  // The clients of the workers routed to now (loads() asks each).
  protected abstract clients(): Iterable<WorkerClient>;

  prefilled(requestId: RequestId): void {
    this.router.prefilled(requestId);
  }

  release(_workerId: WorkerId, requestId: RequestId): void {
    this.router.finish(requestId);
  }

  reportUnavailable(id: WorkerId): void {
    this.health.markDown(id, 'the request plane could not reach it');
  }

  refusesNow(): ApiError | undefined {
    const refused = this.router.refusesNow();
    return refused ? (overloadError(refused) as ApiError) : undefined;
  }

  routerMetrics(): RouterMetrics {
    return this.router.metrics();
  }

  async loads(): Promise<WorkerLoad[]> {
    const settled = await Promise.allSettled([...this.clients()].map((c) => c.load()));
    return settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  }

  async close(): Promise<void> {
    this.health.close();
    this.router.close();
  }
}

export interface StaticPoolOptions {
  overload?: OverloadSettings;
  health?: HealthSettings;
}

export class StaticWorkerPool extends RouterBackedPool implements WorkerPool {
  private readonly serving = new Map<WorkerId, { info: WorkerInfo; client: WorkerClient }>();
  private log: FastifyBaseLogger | undefined;

  constructor(
    private readonly all: readonly WorkerInfo[],
    modelName: string,
    opts: StaticPoolOptions = {},
  ) {
    const mine = all.filter((w) => w.model === modelName && w.role !== 'prefill');
    super(
      new KvRouter({ blockSize: mine[0]?.blockSize ?? 16, policy: 'round-robin', ...opts.overload }),
      {
        onDown: (id, why) => {
          this.router.removeWorker(id);
          this.log?.warn({ workerId: id, why }, 'worker unreachable: not routed to until it answers again');
        },
        onUp: (id) => {
          this.join(this.serving.get(id)!.info);
          this.log?.info({ workerId: id }, 'worker answers again: routed to');
        },
      },
      opts.health,
    );
    for (const info of mine) {
      const client = new WorkerClient(info.address, info.requestPlane);
      this.serving.set(info.workerId, { info, client });
      this.health.watch(info.workerId, client);
      this.join(info);
    }
  }

  private join(info: WorkerInfo): void {
    const refused = this.router.addWorker({ workerId: info.workerId, blockSize: info.blockSize, kvTotalBlocks: info.kvTotalBlocks, requestTotalSlots: info.maxNumSeqs });
    if (refused !== undefined) throw new Error(refused);
  }

  async start(log: FastifyBaseLogger): Promise<void> {
    this.log = log;
  }

  workers(): WorkerInfo[] {
    return [...this.all];
  }

  ready(): boolean {
    return this.serving.size > 0;
  }

  async select(promptTokenIds: readonly number[], requestId: RequestId, opts: SelectOptions = {}): Promise<WorkerSelection> {
    if (this.serving.size === 0) throw new ApiError('ERR_NO_WORKER', 'no worker is serving this model');
    try {
      const d = await this.router.route({ requestId, blockHashes: [], promptTokens: promptTokenIds.length, ...opts });
      const w = this.serving.get(d.workerId)!;
      return { worker: w.info, client: w.client, prefixHitRate: 0 };
    } catch (err) {
      throw overloadError(err);
    }
  }

  protected *clients(): Iterable<WorkerClient> {
    for (const w of this.serving.values()) yield w.client;
  }
}
