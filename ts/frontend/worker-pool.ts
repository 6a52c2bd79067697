// worker-pool.ts: which workers the frontend may send a request to, and the choice of one.
//
// Owns: the WorkerPool interface the routes use, and StaticWorkerPool (the fixed list of workers
// the launcher hands over, chosen round-robin; one reported unavailable is passed over while
// another is up, and probed every PROBE_INTERVAL_MS until it answers again). The KV router implements the same interface:
// select() sees the prompt's token ids and the engine request id, so a policy can score prefix
// overlap and count the blocks it routed; release() tells it when that engine request ended
// (finished, stopped, aborted or refused), exactly once per successful select().
// Stays true: select() only returns a worker that serves the pool's model and is not a prefill
// worker; with none, it throws ERR_NO_WORKER (HTTP 503).
import type { RequestId, WorkerId, WorkerInfo, WorkerLoad } from '../protocol/index.ts';
import type { RouterMetrics } from '../router/index.ts';
import { WorkerClient } from '../runtime/request-client.ts';
import { ApiError } from './errors.ts';

export interface WorkerSelection {
  worker: WorkerInfo;
  client: WorkerClient;
  prefixHitRate: number; // the policy's estimate of the prompt's cached share on `worker`, [0, 1]
}

export interface WorkerPool {
  workers(): WorkerInfo[];
  // True once some worker serves the model.
  ready(): boolean;
  select(promptTokenIds: readonly number[], requestId: RequestId): Promise<WorkerSelection>;
  release(workerId: WorkerId, requestId: RequestId): void;
  // The worker did not answer on the request plane (connection refused or reset before any
  // output): the pool may stop choosing it until it answers again.
  reportUnavailable?(workerId: WorkerId): void;
  // What the router decided so far (pools that route by KV cache).
  routerMetrics?(): RouterMetrics;
  // The current load of every worker that answers (one that does not is left out).
  loads(): Promise<WorkerLoad[]>;
}

const PROBE_INTERVAL_MS = 1000;

export class StaticWorkerPool implements WorkerPool {
  private readonly serving: { info: WorkerInfo; client: WorkerClient }[];
  private readonly down = new Map<WorkerId, NodeJS.Timeout>(); // reported unavailable: its probe
  private next = 0;

  constructor(
    private readonly all: readonly WorkerInfo[],
    modelName: string,
  ) {
    this.serving = all.filter((w) => w.model === modelName && w.role !== 'prefill').map((info) => ({ info, client: new WorkerClient(info.address, info.requestPlane) }));
  }

  workers(): WorkerInfo[] {
    return [...this.all];
  }

  ready(): boolean {
    return this.serving.length > 0;
  }

  // Round-robin over the workers not reported down; when every one is, over all of them (a
  // request then fails as it would have, or finds one back).
  async select(): Promise<WorkerSelection> {
    if (this.serving.length === 0) throw new ApiError('ERR_NO_WORKER', 'no worker is serving this model');
    const up = this.serving.filter((w) => !this.down.has(w.info.workerId));
    const from = up.length > 0 ? up : this.serving;
    const w = from[this.next++ % from.length];
    return { worker: w.info, client: w.client, prefixHitRate: 0 };
  }

  release(): void {}

  reportUnavailable(id: WorkerId): void {
    const w = this.serving.find((s) => s.info.workerId === id);
    if (!w || this.down.has(id)) return;
    const timer = setInterval(() => {
      w.client.load().then(
        () => {
          if (this.down.get(id) !== timer) return;
          clearInterval(timer);
          this.down.delete(id);
        },
        () => undefined,
      );
    }, PROBE_INTERVAL_MS);
    timer.unref();
    this.down.set(id, timer);
  }

  async loads(): Promise<WorkerLoad[]> {
    const settled = await Promise.allSettled(this.serving.map((w) => w.client.load()));
    return settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  }
}
