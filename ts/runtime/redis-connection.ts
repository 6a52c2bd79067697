// redis-connection.ts: one Redis connection that survives outages, with a connection status.
//
// Owns: an ioredis client configured for the planes: it reconnects by itself forever with a
// capped exponential backoff (50 ms doubling, at most maxBackoffMs), never queues commands
// while disconnected (they reject at once, so callers keep their own buffers), and rejects
// the commands in flight when the connection drops (no silent resend: a caller that retries
// knows it may duplicate, and the event plane's consumers drop duplicates by event_id).
// Stays true: an 'error' from ioredis never crashes the process (one line per outage on
// stderr, not one per reconnect attempt); 'status' is emitted on every change between
// connected and disconnected; isConnected() is true exactly while commands can be sent.
// After an outage, Redis may be a new, empty server (no persistence): whenReady() callers use
// serverRunId() to tell, since the run id changes on every redis-server start.
// A Redis URL may carry a password (redis://:PASSWORD@host:port, rediss://user:PASSWORD@...):
// every line that shows one shows maskRedisUrl(url). A Sentinel URL,
// redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER[?sentinelPassword=P], names the
// sentinels and the master they watch: every client (newRedis) connects to the master they
// report and follows it across a failover (ioredis asks them again on reconnect, and listens for
// their +switch-master); PASSWORD is the master's. A Redis Cluster URL,
// redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...], names some of its nodes: the client
// learns the rest and the slots from them and follows failovers and resharding (ioredis's
// Cluster). Every key of a namespace starts with keyspace(namespace), `{NAMESPACE}`, a hash tag:
// they all live in one hash slot, so the scripts, pipelines, MGETs and BullMQ's multi-key scripts
// that touch several of them work on a cluster as on one server (one shard holds a namespace).
// Settings: maxBackoffMs in [100, 30000], default 1000.
import { EventEmitter } from 'node:events';
import { Cluster, Redis, type RedisOptions } from 'ioredis';

// A client of one server (redis://, or the master a redis+sentinel:// URL names) or of a cluster.
export type RedisClient = Redis | Cluster;

// The prefix of every key of namespace: a hash tag, so that they all map to one hash slot.
export function keyspace(namespace: string): string {
  return `{${namespace}}`;
}

export interface RedisConnectionOptions {
  name: string; // shows in logs and in CLIENT LIST
  maxBackoffMs?: number;
  log?: (line: string) => void; // default: stderr
}

export interface RedisConnectionEvents {
  status: [connected: boolean];
}

export class RedisConnection extends EventEmitter<RedisConnectionEvents> {
  readonly redis: RedisClient;
  private connected = false;
  private closed = false;
  private reportedOutage = false;

  constructor(
    readonly url: string,
    private readonly opts: RedisConnectionOptions,
  ) {
    super();
    const maxBackoffMs = opts.maxBackoffMs ?? 1000;
    if (maxBackoffMs < 100 || maxBackoffMs > 30_000) throw new RangeError('maxBackoffMs must be in [100, 30000]');
    const log = opts.log ?? ((line: string) => process.stderr.write(line + '\n'));
    this.redis = newRedis(url, {
      connectionName: opts.name,
      retryStrategy: (attempt) => Math.min(50 * 2 ** Math.min(attempt, 16), maxBackoffMs),
      maxRetriesPerRequest: 0, // in-flight commands reject when the connection drops
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      autoResubscribe: true,
      lazyConnect: false,
    });
    this.redis.on('error', (err: Error) => {
      if (this.reportedOutage || this.closed) return;
      this.reportedOutage = true;
      log(`[redis ${opts.name}] ${err.message}; reconnecting`);
    });
    this.redis.on('ready', () => {
      if (this.reportedOutage) log(`[redis ${opts.name}] reconnected`);
      this.reportedOutage = false;
      this.setConnected(true);
    });
    this.redis.on('close', () => this.setConnected(false));
  }

  isConnected(): boolean {
    return this.connected;
  }

  // Resolves when commands can be sent (at once if they can now); rejects after timeoutMs, or
  // when the connection is closed.
  whenReady(timeoutMs = 0): Promise<void> {
    if (this.connected) return Promise.resolve();
    if (this.closed) return Promise.reject(new Error(`redis ${this.opts.name}: connection closed`));
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const onStatus = (up: boolean) => {
        if (!up) return;
        cleanup();
        resolve();
      };
      const onEnd = () => {
        cleanup();
        reject(new Error(`redis ${this.opts.name}: connection closed`));
      };
      const cleanup = () => {
        if (timer) clearTimeout(timer);
        this.off('status', onStatus);
        this.redis.off('end', onEnd);
      };
      this.on('status', onStatus);
      this.redis.once('end', onEnd);
      if (timeoutMs > 0) {
        timer = setTimeout(() => {
          cleanup();
          reject(new Error(`redis at ${maskRedisUrl(this.url)} did not answer within ${timeoutMs} ms`));
        }, timeoutMs);
      }
    });
  }

  // A second connection to the same server (for subscriptions and blocking reads).
  duplicate(name: string): RedisConnection {
    return new RedisConnection(this.url, { ...this.opts, name });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.redis.disconnect(false);
    this.setConnected(false);
  }

  private setConnected(up: boolean): void {
    if (this.connected === up) return;
    this.connected = up;
    this.emit('status', up);
  }
}

// A redis+sentinel:// URL's parts (see the header); undefined for any other URL. Throws on a
// Sentinel URL without a master name or with a host that has no port.
export function parseSentinelUrl(url: string): { sentinels: { host: string; port: number }[]; name: string; password?: string; sentinelPassword?: string } | undefined {
  if (!url.startsWith('redis+sentinel://')) return undefined;
  const m = /^redis\+sentinel:\/\/(?:([^@/]*)@)?([^/?]+)\/([^/?]*)(?:\?(.*))?$/.exec(url);
  if (!m || m[3] === '') throw new Error(`a Sentinel URL is redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME, got '${maskRedisUrl(url)}'`);
  const sentinels = m[2]!.split(',').map((hp) => {
    const at = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(hp);
    if (!at) throw new Error(`a sentinel in a Sentinel URL is HOST:PORT, got '${hp}'`);
    return { host: at[1]!.replace(/^\[(.*)\]$/, '$1'), port: Number(at[2]) };
  });
  const auth = m[1] ? decodeURIComponent(m[1].slice(m[1].indexOf(':') + 1)) : undefined;
  const sentinelPassword = new URLSearchParams(m[4] ?? '').get('sentinelPassword') ?? undefined;
  return { sentinels, name: decodeURIComponent(m[3]!), password: auth || undefined, sentinelPassword };
}

// A redis+cluster:// URL's parts (see the header); undefined for any other URL. Throws on a node
// without a port.
export function parseClusterUrl(url: string): { nodes: { host: string; port: number }[]; username?: string; password?: string } | undefined {
  if (!url.startsWith('redis+cluster://')) return undefined;
  const m = /^redis\+cluster:\/\/(?:([^@/]*)@)?([^/?]+)\/?$/.exec(url);
  if (!m) throw new Error(`a Redis Cluster URL is redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...], got '${maskRedisUrl(url)}'`);
  const nodes = m[2]!.split(',').map((hp) => {
    const at = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(hp);
    if (!at) throw new Error(`a node in a Redis Cluster URL is HOST:PORT, got '${hp}'`);
    return { host: at[1]!.replace(/^\[(.*)\]$/, '$1'), port: Number(at[2]) };
  });
  const colon = m[1]?.indexOf(':') ?? -1;
  const username = m[1] && colon > 0 ? decodeURIComponent(m[1].slice(0, colon)) : undefined;
  const password = m[1] ? decodeURIComponent(colon >= 0 ? m[1].slice(colon + 1) : m[1]) : undefined;
  return { nodes, username, password: password || undefined };
}

// An ioredis client for url (redis://, rediss://, redis+sentinel:// or redis+cluster://) with
// options (for a cluster: retryStrategy paces its reconnects, enableOfflineQueue is its own, the
// rest goes to the connection of each node).
export function newRedis(url: string, options: RedisOptions): RedisClient {
  const c = parseClusterUrl(url);
  if (c) {
    const { retryStrategy, enableOfflineQueue, ...nodeOptions } = options;
    return new Cluster(c.nodes, {
      clusterRetryStrategy: retryStrategy ? (times: number) => retryStrategy(times) : undefined,
      enableOfflineQueue: enableOfflineQueue ?? true,
      redisOptions: { ...nodeOptions, username: c.username, password: c.password },
    });
  }
  const s = parseSentinelUrl(url);
  if (!s) return new Redis(url, options);
  return new Redis({ ...options, sentinels: s.sentinels, name: s.name, password: s.password, sentinelPassword: s.sentinelPassword, failoverDetector: true });
}

// A cluster's answer within CLUSTER_ASK_MS, or an error: a command that lands on a node that just
// died waits for it to come back (the node's connection queues it), which may be never.
const CLUSTER_ASK_MS = 3000;
function ask<T>(what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the Redis Cluster did not answer ${what} within ${CLUSTER_ASK_MS} ms`)), CLUSTER_ASK_MS);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

// The connection to the server that holds key: redis itself, or the cluster's master for the
// key's hash slot (from CLUSTER SLOTS, asked now).
export async function serverOf(redis: RedisClient, key: string): Promise<Redis> {
  if (!(redis instanceof Cluster)) return redis;
  const slot = Number(await ask('CLUSTER KEYSLOT', redis.cluster('KEYSLOT', key)));
  const ranges = (await ask('CLUSTER SLOTS', redis.cluster('SLOTS'))) as unknown as [number, number, [string, number, ...unknown[]], ...unknown[]][];
  const owner = ranges.find(([lo, hi]) => slot >= lo && slot <= hi)?.[2];
  // Among every node the client knows: a replica just promoted is still one of its replicas
  // until the client refreshes its view of the slots, which is asked for here then.
  const node = owner && redis.nodes('all').find((n) => n.options.host === owner[0] && n.options.port === owner[1]);
  if (!node) {
    redis.refreshSlotsCache();
    throw new Error(`the Redis Cluster's master of hash slot ${slot} (of ${key}) is not among the nodes this client knows yet`);
  }
  return node;
}

// The URL with its password replaced by ***: redis://:***@host:port, rediss://user:***@host:port;
// a user without a password (redis://NAME@host, which some clients take as the password) is
// masked too; so are a redis+sentinel:// URL's password and sentinelPassword, and a
// redis+cluster:// URL's user and password; a string that does not parse as a URL has everything
// between '//' and the last '@' replaced.
export function maskRedisUrl(url: string): string {
  if (url.startsWith('redis+cluster://')) return url.replace(/\/\/[^@/]*@/, '//***@');
  if (url.startsWith('redis+sentinel://')) return url.replace(/\/\/[^@/]*@/, '//***@').replace(/(sentinelPassword=)[^&]*/, '$1***');
  try {
    const u = new URL(url);
    if (u.password === '' && u.username === '') return url;
    if (u.password === '') u.username = '***';
    else u.password = '***';
    return u.toString().replace(/\/$/, url.endsWith('/') ? '/' : '');
  } catch {
    return url.replace(/\/\/.*@/, '//***@');
  }
}

// Throws (code ERR_REDIS_CLUSTER) when redis is a client of one server that turns out to be a
// Redis Cluster node: it would answer MOVED for the slots it does not hold, so the URL must say
// redis+cluster:// for the client to follow the cluster.
export async function refuseRedisCluster(redis: RedisClient): Promise<void> {
  if (redis instanceof Cluster) return;
  const info = await redis.info('cluster');
  if (/^cluster_enabled:1\s*$/m.test(info)) {
    throw Object.assign(
      new Error('this Redis is a Redis Cluster node (cluster_enabled:1), given as one server: give its nodes as redis+cluster://HOST:PORT[,HOST:PORT...] so that every client follows the cluster'),
      { code: 'ERR_REDIS_CLUSTER' },
    );
  }
}

// The run id of the server that holds key (serverOf): a new value on every redis-server start
// (so, with no persistence, a changed run id means the keys, streams and subscriptions of before
// are gone; on a cluster, also that another node took the key's slot over, a failover).
export async function serverRunId(redis: RedisClient, key: string): Promise<string> {
  const server = await serverOf(redis, key);
  const info = redis instanceof Cluster ? await ask('INFO server', server.info('server')) : await server.info('server');
  const m = /^run_id:(\w+)/m.exec(info);
  if (!m) throw new Error('INFO server carries no run_id');
  return m[1];
}
