// prefill-queue.ts: the remote-prefill queue (DESIGN.md section 5) on BullMQ, and the claim that
// decides, per job, whether the prefill worker may still write into the decode worker's blocks.
//
// Owns: the BullMQ Queue (decode side: push, depth) and Worker (prefill side: pull), both on
// queue `prefill` under the namespace's key prefix `{<namespace>}` (a hash tag: BullMQ's scripts
// touch several keys, which must share a slot on a Redis Cluster), and the claim keys
// `{<namespace>}:prefill-claim:<request_id>`.
// Delivery is at least once: a prefill worker that dies mid-job stops renewing its lock, the job
// is stalled after lockDurationMs and handed to another worker (up to MAX_ATTEMPTS attempts).
// The claim makes late writes impossible. A job's claim moves, by atomic compare-and-set, from
//   pending --(prefill worker P, when it starts the job)--> taken:P   (P = <worker id>/<instance id>)
//   taken:Q --(prefill worker P: BullMQ handed it the job, Q lost its lock)--> taken:P
//   taken:P --(P, just before writing)--> writing:P
//   pending | taken:P --(decode worker: deadline passed, request aborted, or P's lease gone)--> local | aborted
//   writing:P --(decode worker, once P's lease is gone or held by another instance)--> local | aborted
// so once the decode worker has moved a claim off `pending` / `taken:P`, no prefill worker starts
// a write, and while it reads `writing:P` it keeps the blocks until P's notification or P's death.
// Stays true: every key expires (claims after CLAIM_TTL_MS); a Redis error rejects the call
// (callers decide: the decode side falls back to local prefill).
import { Queue, Worker, type Job } from 'bullmq';
import type { RemotePrefillJob } from '../protocol/index.ts';
import { keyspace, newRedis, type RedisClient } from '../runtime/redis-connection.ts';

export const PREFILL_QUEUE = 'prefill';
export const MAX_ATTEMPTS = 3;
export const CLAIM_TTL_MS = 10 * 60_000;

// dropped:<prefill worker>: that worker will not run the job (its decode worker's lease names
// another instance, or the deadline passed): the decode side takes it back at once.
export type ClaimState = 'pending' | 'local' | 'aborted' | `taken:${string}` | `writing:${string}` | `dropped:${string}`;

// Sets KEYS[1] to ARGV[2] (with a TTL of ARGV[3] ms) if it holds ARGV[1]; returns 1 if it did.
const CAS = `if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 end return 0`;

// BullMQ needs its own connections that retry commands (its blocking reads do).
function bullConnection(url: string, name: string): RedisClient {
  const r = newRedis(url, { connectionName: name, maxRetriesPerRequest: null, retryStrategy: (n) => Math.min(50 * 2 ** Math.min(n, 10), 1000) });
  r.on('error', () => {
    // reconnects by itself; callers see rejected commands
  });
  return r;
}

export class PrefillClaims {
  constructor(
    private readonly redis: RedisClient,
    private readonly namespace: string,
  ) {}

  key(requestId: string): string {
    return `${keyspace(this.namespace)}:prefill-claim:${requestId}`;
  }

  async create(requestId: string): Promise<void> {
    await this.redis.set(this.key(requestId), 'pending', 'PX', CLAIM_TTL_MS);
  }

  async get(requestId: string): Promise<ClaimState | null> {
    return (await this.redis.get(this.key(requestId))) as ClaimState | null;
  }

  async move(requestId: string, from: ClaimState, to: ClaimState): Promise<boolean> {
    return (await this.redis.eval(CAS, 1, this.key(requestId), from, to, String(CLAIM_TTL_MS))) === 1;
  }

  // Prefill side: takes the job for `taken` (taken:<me>) from `pending`, or from the prefill
  // worker that held it before (BullMQ redelivers a job only once its holder lost the lock).
  // False when the decode worker has taken it back (or the claim expired).
  async take(requestId: string, taken: ClaimState): Promise<boolean> {
    for (let tries = 0; tries < 3; tries++) {
      const state = await this.get(requestId);
      if (state === null || !(state === 'pending' || state.startsWith('taken:'))) return false;
      if (await this.move(requestId, state, taken)) return true;
    }
    return false;
  }

  async remove(requestId: string): Promise<void> {
    await this.redis.del(this.key(requestId));
  }
}

// Decode side.
export class PrefillQueue {
  private readonly queue: Queue;
  private readonly connection: RedisClient;

  constructor(redisUrl: string, namespace: string) {
    this.connection = bullConnection(redisUrl, 'prefill-queue');
    this.queue = new Queue(PREFILL_QUEUE, { connection: this.connection, prefix: keyspace(namespace) });
    this.queue.on('error', () => {
      // a Redis outage: push() and depth() reject meanwhile
    });
  }

  // The connection retries commands while Redis is away (BullMQ needs that), so a call made then
  // would wait for Redis: refuse it at once instead, and the caller prefills locally.
  private connected(): void {
    if (this.connection.status !== 'ready') throw new Error(`Redis is not connected (${this.connection.status})`);
  }

  async push(job: RemotePrefillJob): Promise<void> {
    this.connected();
    await this.queue.add('prefill', job, {
      attempts: MAX_ATTEMPTS,
      backoff: { type: 'fixed', delay: 100 },
      removeOnComplete: true,
      removeOnFail: true,
    });
  }

  // Jobs not yet taken by a prefill worker.
  async depth(): Promise<number> {
    this.connected();
    return this.queue.getWaitingCount();
  }

  async close(): Promise<void> {
    await this.queue.close();
    this.connection.disconnect();
  }
}

export interface PrefillConsumerOptions {
  redisUrl: string;
  namespace: string;
  workerId: string;
  concurrency: number; // jobs in flight at once (the engine batches them)
  lockDurationMs?: number; // a dead worker's job is retried after this, default 5000
}

// Prefill side: runs `handle` for each job; a throw fails the attempt (retried up to MAX_ATTEMPTS).
export class PrefillConsumer {
  private readonly worker: Worker<RemotePrefillJob>;
  private readonly connection: RedisClient;

  constructor(opts: PrefillConsumerOptions, handle: (job: RemotePrefillJob, attempt: number) => Promise<void>) {
    this.connection = bullConnection(opts.redisUrl, `prefill-consumer-${opts.workerId}`);
    const lockDuration = opts.lockDurationMs ?? 5000;
    this.worker = new Worker<RemotePrefillJob>(
      PREFILL_QUEUE,
      (job: Job<RemotePrefillJob>) => handle(job.data, job.attemptsMade + 1),
      {
        connection: this.connection,
        prefix: keyspace(opts.namespace),
        concurrency: opts.concurrency,
        lockDuration,
        stalledInterval: Math.max(500, Math.floor(lockDuration / 2)),
        maxStalledCount: MAX_ATTEMPTS,
        drainDelay: 1,
      },
    );
    this.worker.on('error', () => {
      // a Redis outage: BullMQ reconnects and resumes
    });
  }

  async close(): Promise<void> {
    await this.worker.close();
    this.connection.disconnect();
  }
}
