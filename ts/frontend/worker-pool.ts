// worker-pool.ts: which workers the frontend may send a request to, and the choice of one.
//
// Owns: the WorkerPool interface the routes use, and StaticWorkerPool (the fixed list of workers
// the launcher hands over, chosen round-robin). The KV router implements the same interface:
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

export class StaticWorkerPool implements WorkerPool {
  private readonly serving: { info: WorkerInfo; client: WorkerClient }[];
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

  async select(): Promise<WorkerSelection> {
    if (this.serving.length === 0) throw new ApiError('ERR_NO_WORKER', 'no worker is serving this model');
    const w = this.serving[this.next++ % this.serving.length];
    return { worker: w.info, client: w.client, prefixHitRate: 0 };
  }

  release(): void {}

  async loads(): Promise<WorkerLoad[]> {
    const settled = await Promise.allSettled(this.serving.map((w) => w.client.load()));
    return settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  }
}
