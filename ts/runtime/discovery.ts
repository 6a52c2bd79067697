// discovery.ts: worker leases in Redis (the role etcd leases play in Dynamo), and the watcher
// that clients (the frontend) use to see workers join and leave.
//
// Owns: one key per live worker, `<ns>:workers:<worker_id>` = JSON LeasedWorkerInfo, with a TTL
// refreshed every ttl/3; join/leave announcements on the pub/sub channel `<ns>:discovery`:
//   {"type": "join", "worker": LeasedWorkerInfo}
//   {"type": "leave", "workerId": "...", "instanceId": "..."}
// A lease carries `instanceId` (new for every process start) and `startedAt` (ms since the
// epoch), so a worker restarted under the same worker_id is a different instance: the watcher
// reports it as a leave of the old instance followed by a join of the new one.
// Stays true:
// - an orderly stop deletes the key and announces the leave, so it is seen at once;
// - a worker that dies without a word (kill -9) loses its key within one TTL, and a watcher
//   reports the leave at most one check period later: with the defaults (TTL 3 s refreshed
//   every 1 s, a check every 1 s) a dead worker is gone within 4 s;
// - a lease lost with Redis (restarted empty) is re-created as soon as the connection is back
//   (the lease refreshes and re-announces on 'ready'), and at the latest by the next refresh;
// - one worker id, one live worker: a lease that starts where another instance holds the key
//   watches it for one refresh period (plus CLAIM_SLACK_MS); if its holder refreshes it, start()
//   throws DuplicateWorkerIdError naming the holder (two nodes, or two deployments on one Redis,
//   name their workers alike), else the holder is a dead predecessor (kill -9, then a restart)
//   and the key is taken over. A refresh only renews a key that is absent or this instance's
//   (one script), so a live worker whose key another instance took reports it (onConflict)
//   instead of the two overwriting each other's address;
// - a watcher never reports a leave for a worker it could not check (Redis away keeps the last
//   known set), and after a reconnect it waits one TTL before it trusts a missing key, so a
//   restarted Redis does not make every worker flap.
// Settings: ttlMs in [1000, 60000], default 3000; checkIntervalMs in [200, 10000], default 1000
// (one SCAN + MGET per check, per watcher).
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { keyspace, serverOf, type RedisClient } from './redis-connection.ts';
import type { WorkerId, WorkerInfo } from '../protocol/index.ts';
import { RedisConnection } from './redis-connection.ts';

export const DEFAULT_NAMESPACE = 'kvserve';
export const DEFAULT_LEASE_TTL_MS = 3000;
export const DEFAULT_CHECK_INTERVAL_MS = 1000;

export interface LeasedWorkerInfo extends WorkerInfo {
  instanceId: string; // new for every process start
  startedAt: number; // ms since the epoch
}

export type DiscoveryMessage =
  | { type: 'join'; worker: LeasedWorkerInfo }
  | { type: 'leave'; workerId: WorkerId; instanceId: string };

export function workerKey(namespace: string, workerId: string): string {
  return `${keyspace(namespace)}:workers:${workerId}`;
}

export function discoveryChannel(namespace: string): string {
  return `${namespace}:discovery`;
}

// How long past one refresh period a starting lease waits for the holder of its key to refresh it.
const CLAIM_SLACK_MS = 500;

// The renewal: the key is set only where it is absent or holds this instance (ARGV[2] is the
// `"instanceId":"..."` text of the value); 0 back means another instance holds it.
const REFRESH_SCRIPT = `
local v = redis.call('GET', KEYS[1])
if v and not string.find(v, ARGV[2], 1, true) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1`;

// Another live worker holds this worker id (start() of a WorkerLease).
export class DuplicateWorkerIdError extends Error {
  readonly code = 'ERR_DUPLICATE_WORKER_ID';
  constructor(
    readonly workerId: WorkerId,
    readonly holder: LeasedWorkerInfo,
  ) {
    super(
      `worker id ${workerId} is held by a live worker at ${holder.address} (started ${new Date(holder.startedAt).toISOString()}): ` +
        'two nodes, or two deployments on one Redis and namespace, name their workers alike; give each node its own --advertise-host ' +
        '(a joining node names its workers <name>@<advertise host>) or each deployment its own Redis',
    );
  }
}

function parseLease(text: string | null): LeasedWorkerInfo | null {
  if (text === null) return null;
  try {
    return JSON.parse(text) as LeasedWorkerInfo;
  } catch {
    return null;
  }
}

export class WorkerLease {
  // Called once when a refresh finds the key held by another instance (see the header).
  onConflict: ((holder: LeasedWorkerInfo | null) => void) | undefined;
  private conflicted = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly key: string;
  private readonly leased: LeasedWorkerInfo;
  private readonly onReady = () => void this.announce().catch(() => undefined);

  constructor(
    private readonly redis: RedisClient,
    info: WorkerInfo,
    private readonly namespace = DEFAULT_NAMESPACE,
    private readonly ttlMs = DEFAULT_LEASE_TTL_MS,
    readonly instanceId: string = randomUUID(),
  ) {
    if (ttlMs < 1000 || ttlMs > 60_000) throw new RangeError('ttlMs must be in [1000, 60000]');
    this.key = workerKey(namespace, info.workerId);
    this.leased = { ...info, instanceId, startedAt: Date.now() };
  }

  get info(): LeasedWorkerInfo {
    return this.leased;
  }

  // Creates and announces the lease; if Redis is away just then, it appears on reconnect.
  // Throws DuplicateWorkerIdError where a live worker holds the id.
  async start(): Promise<void> {
    await this.claim();
    this.redis.on('ready', this.onReady);
    await this.announce().catch(() => undefined);
    this.timer = setInterval(() => {
      this.refresh().catch(() => {
        // Redis is away: the connection comes back by itself, and 'ready' re-creates the key.
      });
    }, Math.floor(this.ttlMs / 3));
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.redis.off('ready', this.onReady);
    const leave: DiscoveryMessage = { type: 'leave', workerId: this.leased.workerId, instanceId: this.instanceId };
    await this.redis.del(this.key).catch(() => undefined);
    await this.redis.publish(discoveryChannel(this.namespace), JSON.stringify(leave)).catch(() => undefined);
  }

  // Returns once the key is free (absent, or this instance's) or taken over from a holder that did
  // not refresh it for one refresh period; Redis away: at once (the lease appears on reconnect,
  // unchecked).
  private async claim(): Promise<void> {
    const holderOf = async () => parseLease(await this.redis.get(this.key));
    let holder: LeasedWorkerInfo | null;
    try {
      holder = await holderOf();
      if (holder === null || holder.instanceId === this.instanceId) return;
      let pttl = await this.redis.pttl(this.key);
      const deadline = performance.now() + Math.floor(this.ttlMs / 3) + CLAIM_SLACK_MS;
      while (performance.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
        const current = await this.redis.pttl(this.key);
        if (current < 0) return; // lapsed or deleted
        const other = await holderOf();
        if (other === null) return;
        // Renewed (a TTL only goes up when its holder sets it again: by about a third of it, here
        // between two reads 100 ms apart), or taken by a third instance.
        if (current > pttl + 100 || other.instanceId !== holder.instanceId) throw new DuplicateWorkerIdError(this.leased.workerId, other);
        pttl = current;
      }
      await this.redis.set(this.key, JSON.stringify(this.leased), 'PX', this.ttlMs); // a dead holder's
    } catch (err) {
      if (err instanceof DuplicateWorkerIdError) throw err;
      // Redis away: start() goes on as before, and the lease appears on reconnect.
    }
  }

  private async refresh(): Promise<void> {
    const renewed = await this.redis.eval(REFRESH_SCRIPT, 1, this.key, JSON.stringify(this.leased), `"instanceId":"${this.instanceId}"`, String(this.ttlMs));
    if (renewed === 0 && !this.conflicted) {
      this.conflicted = true;
      const holder = parseLease(await this.redis.get(this.key).catch(() => null));
      this.onConflict?.(holder);
    }
  }

  private async announce(): Promise<void> {
    await this.refresh();
    const join: DiscoveryMessage = { type: 'join', worker: this.leased };
    await this.redis.publish(discoveryChannel(this.namespace), JSON.stringify(join));
  }
}

// One worker's lease, or null when it holds none (gone, or never there).
export async function getWorker(redis: RedisClient, namespace: string, workerId: string): Promise<LeasedWorkerInfo | null> {
  const v = await redis.get(workerKey(namespace, workerId));
  return v === null ? null : (JSON.parse(v) as LeasedWorkerInfo);
}

// Every worker holding a lease now: one SCAN pass (of the server that holds the namespace's
// slot, on a cluster) and one MGET.
export async function listWorkers(redis: RedisClient, namespace = DEFAULT_NAMESPACE): Promise<LeasedWorkerInfo[]> {
  const keys: string[] = [];
  const server = await serverOf(redis, workerKey(namespace, ''));
  let cursor = '0';
  do {
    const [next, batch] = await server.scan(cursor, 'MATCH', `${keyspace(namespace)}:workers:*`, 'COUNT', 1000);
    cursor = next;
    keys.push(...batch);
  } while (cursor !== '0');
  if (keys.length === 0) return [];
  const values = await redis.mget(...keys);
  return values.filter((v): v is string => v !== null).map((v) => JSON.parse(v) as LeasedWorkerInfo);
}

export interface DiscoveryWatcherOptions {
  url: string;
  namespace?: string;
  checkIntervalMs?: number;
  leaseTtlMs?: number; // the workers' lease TTL: the grace after a reconnect
  startTimeoutMs?: number; // how long start() waits for Redis, default 10000
}

export interface DiscoveryWatcherEvents {
  join: [worker: LeasedWorkerInfo];
  leave: [workerId: WorkerId, worker: LeasedWorkerInfo];
  status: [connected: boolean];
}

interface Known {
  info: LeasedWorkerInfo;
  since: number; // performance.now() when it joined
}

// Sees workers join and leave: announcements for speed, a periodic SCAN + MGET for what
// announcements miss (kill -9, messages lost during an outage).
export class DiscoveryWatcher extends EventEmitter<DiscoveryWatcherEvents> {
  private readonly cmd: RedisConnection;
  private readonly sub: RedisConnection;
  private readonly namespace: string;
  private readonly checkIntervalMs: number;
  private readonly leaseTtlMs: number;
  private readonly known = new Map<string, Known>();
  private readonly tombstones = new Map<string, number>(); // instanceId -> forget after (performance.now())
  private timer: NodeJS.Timeout | undefined;
  private checking = false;
  private graceUntil = 0;
  private connected = false; // both connections up
  private everConnected = false;

  constructor(private readonly opts: DiscoveryWatcherOptions) {
    super();
    this.namespace = opts.namespace ?? DEFAULT_NAMESPACE;
    this.checkIntervalMs = opts.checkIntervalMs ?? DEFAULT_CHECK_INTERVAL_MS;
    this.leaseTtlMs = opts.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS;
    if (this.checkIntervalMs < 200 || this.checkIntervalMs > 10_000) throw new RangeError('checkIntervalMs must be in [200, 10000]');
    this.cmd = new RedisConnection(opts.url, { name: 'discovery-watcher' });
    this.sub = this.cmd.duplicate('discovery-watcher-sub');
    this.cmd.on('status', () => this.onStatus());
    this.sub.on('status', () => this.onStatus());
    this.sub.redis.on('message', (_channel: string, text: string) => this.onMessage(text));
  }

  // Resolves once the workers leasing now have been reported as 'join'.
  async start(): Promise<void> {
    const timeoutMs = this.opts.startTimeoutMs ?? 10_000;
    await Promise.all([this.cmd.whenReady(timeoutMs), this.sub.whenReady(timeoutMs)]);
    await this.sub.redis.subscribe(discoveryChannel(this.namespace));
    await this.check();
    this.timer = setInterval(() => void this.check(), this.checkIntervalMs);
    this.timer.unref();
  }

  workers(): LeasedWorkerInfo[] {
    return [...this.known.values()].map((k) => k.info);
  }

  isConnected(): boolean {
    return this.cmd.isConnected() && this.sub.isConnected();
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await Promise.all([this.cmd.close(), this.sub.close()]);
  }

  private onStatus(): void {
    const connected = this.isConnected();
    if (connected === this.connected) return;
    this.connected = connected;
    if (connected) {
      if (this.everConnected) {
        this.graceUntil = performance.now() + this.leaseTtlMs;
        void this.check();
      }
      this.everConnected = true;
    }
    this.emit('status', connected);
  }

  private onMessage(text: string): void {
    let msg: DiscoveryMessage;
    try {
      msg = JSON.parse(text) as DiscoveryMessage;
    } catch {
      return; // not ours
    }
    if (msg.type === 'join') this.upsert(msg.worker);
    else if (msg.type === 'leave' && this.known.get(msg.workerId)?.info.instanceId === msg.instanceId) this.remove(msg.workerId);
  }

  private async check(): Promise<void> {
    if (this.checking || !this.cmd.isConnected()) return;
    this.checking = true;
    const startedAt = performance.now();
    try {
      const leased = await listWorkers(this.cmd.redis, this.namespace);
      const seen = new Set<string>();
      for (const w of leased) {
        seen.add(w.workerId);
        this.upsert(w);
      }
      if (startedAt >= this.graceUntil) {
        for (const [id, k] of this.known) if (!seen.has(id) && k.since < startedAt) this.remove(id);
      }
      for (const [instanceId, until] of this.tombstones) if (until < startedAt) this.tombstones.delete(instanceId);
    } catch {
      // Redis went away mid-check: keep the last known set; the next check tries again.
    } finally {
      this.checking = false;
    }
  }

  private upsert(w: LeasedWorkerInfo): void {
    if (this.tombstones.has(w.instanceId)) return; // a check that read the key before it was deleted
    const k = this.known.get(w.workerId);
    if (k?.info.instanceId === w.instanceId) return;
    if (k) this.remove(w.workerId); // restarted under the same id: the old instance is gone
    this.known.set(w.workerId, { info: w, since: performance.now() });
    this.emit('join', w);
  }

  private remove(workerId: string): void {
    const k = this.known.get(workerId);
    if (!k) return;
    this.known.delete(workerId);
    this.tombstones.set(k.info.instanceId, performance.now() + this.leaseTtlMs + 2 * this.checkIntervalMs);
    this.emit('leave', k.info.workerId, k.info);
  }
}
