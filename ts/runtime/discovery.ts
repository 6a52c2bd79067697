// discovery.ts: worker leases in Redis (the role etcd leases play in Dynamo).
//
// Owns: one key per live worker, `<namespace>:workers:<worker_id>` = JSON WorkerInfo, with a
// TTL refreshed every ttl/3, so a worker that dies (even kill -9) disappears within one TTL.
// Stays true: a lease that could not be refreshed (Redis away) is re-created as soon as Redis
// is back; stop() deletes the key so an orderly exit disappears at once.
// Settings: ttlMs in [1000, 60000], default 5000.
import { Redis } from 'ioredis';
import type { WorkerInfo } from '../protocol/index.ts';

export const DEFAULT_NAMESPACE = 'kvserve';

export function workerKey(namespace: string, workerId: string): string {
  return `${namespace}:workers:${workerId}`;
}

export class WorkerLease {
  private timer: NodeJS.Timeout | undefined;
  private readonly key: string;

  constructor(
    private readonly redis: Redis,
    private readonly info: WorkerInfo,
    private readonly namespace = DEFAULT_NAMESPACE,
    private readonly ttlMs = 5000,
  ) {
    if (ttlMs < 1000 || ttlMs > 60_000) throw new RangeError('ttlMs must be in [1000, 60000]');
    this.key = workerKey(namespace, info.workerId);
  }

  async start(): Promise<void> {
    await this.refresh();
    this.timer = setInterval(() => {
      this.refresh().catch(() => {
        // Redis is away: ioredis reconnects by itself and the next refresh re-creates the key.
      });
    }, Math.floor(this.ttlMs / 3));
    this.timer.unref();
  }

  private async refresh(): Promise<void> {
    await this.redis.set(this.key, JSON.stringify(this.info), 'PX', this.ttlMs);
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.redis.del(this.key).catch(() => undefined);
  }
}

// Every worker holding a lease now.
export async function listWorkers(redis: Redis, namespace = DEFAULT_NAMESPACE): Promise<WorkerInfo[]> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', `${namespace}:workers:*`, 'COUNT', 1000);
    cursor = next;
    keys.push(...batch);
  } while (cursor !== '0');
  if (keys.length === 0) return [];
  const values = await redis.mget(...keys);
  return values.filter((v): v is string => v !== null).map((v) => JSON.parse(v) as WorkerInfo);
}

export function connectRedis(url: string): Redis {
  return new Redis(url, { maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: false });
}
