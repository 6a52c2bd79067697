// main.ts: `npm run start -- [flags]`: one node of a deployment (--role, flags.ts). The leader
// (default) resolves the model, starts Redis when a mode needs one, the worker processes, then
// the frontend, prints where everything is, and stops them all on Ctrl-C / SIGTERM. The other
// roles join the deployment whose Redis --redis-url names and start only their part: a worker or
// prefill node its workers (ids `worker-N@HOST`, `prefill-N@HOST`, HOST its --advertise-host, so
// nodes never collide in discovery), a frontend node its frontend. A frontend whose node started
// no worker (a frontend node, a leader with --workers 0) waits for the first worker of its model
// to join discovery, and takes its context length and block size from the workers it finds. SIGTERM drains: the frontend refuses new requests and lets the streams in flight
// finish (--shutdown-grace-s) before the workers and Redis stop; SIGINT, or a second signal,
// stops at once. Started by npm, the launcher also stops when npm is gone.
// Supervision: a child that dies after it served is restarted at once, and the private Redis
// on its port; a restart that fails is retried after 0.5 s, 1 s, 2 s ... and after
// MAX_FAILED_RESTARTS failures in a row the launcher stops with the child's reason. The
// frontend routes around a worker while it is down. --no-restart: a death stops everything.
// A fatal error before "ready" (a bad flag, a missing model, a model the engine refuses, a port
// in use, a child that exits during start-up), whichever process it came from, ends in one line
// on stderr, `kvserve: error: <message>`, and exit code 2 (flags) or 1 (the rest); the stack
// behind it only with --log-level debug or trace.
// Start-up order: flags -> model -> Redis (only when a mode needs it: --router kv or random,
// --prefill-workers, or --redis-url given; a private redis-server unless --redis-url) -> workers (each on two fixed free
// ports, HTTP and the TCP request plane, so a restarted worker keeps its addresses) -> frontend.
// Secrets never go on a child's command line (its --config JSON is one, readable by every local
// user): the Redis URL, which may carry a password (the private Redis always has one), the
// cluster secret and the API key reach children in their environment (KVSERVE_REDIS_URL,
// KVSERVE_CLUSTER_SECRET, KVSERVE_API_KEY), and a logged Redis URL is masked (maskRedisUrl).
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { loadAddon } from '../native/loader.ts';
import { inspectModel } from '../native/model.ts';
import type { EngineDevice } from '../native/engine.ts';
import type { WorkerInfo, WorkerRole } from '../protocol/index.ts';
import type { WorkerConfig, WorkerMessage } from '../worker/main.ts';
import { loadSamplingDefaults } from '../processor/generation-config.ts';
import { FlagError, HELP, checkTpSplit, parseFlags, refuseUnimplemented, type LauncherFlags } from './flags.ts';
import { cpuShares } from './placement.ts';
import { freePorts } from './ports.ts';
import { resolveModel, type ResolvedModel } from './model-resolve.ts';
import { isLoopback } from '../runtime/cluster-secret.ts';
import { DEFAULT_NAMESPACE, listWorkers, type LeasedWorkerInfo } from '../runtime/discovery.ts';
import { maskRedisUrl, RedisConnection, refuseRedisCluster } from '../runtime/redis-connection.ts';
import { newRedisPassword, startPrivateRedis, superviseRedis, type SupervisedRedis } from './redis.ts';
import { Supervisor, type Child } from './supervisor.ts';

const WORKER_READY_TIMEOUT_MS = 15 * 60_000; // large models take a while to page in
const FRONTEND_READY_TIMEOUT_MS = 120_000;
const REDIS_START_TIMEOUT_MS = 10_000; // a frontend node's first answer from the deployment's Redis
const MAX_FAILED_RESTARTS = 3;
const restartDelayMs = (failures: number) => (failures === 0 ? 0 : Math.min(10_000, 500 * 2 ** (failures - 1)));

function log(msg: string): void {
  console.log(`[kvserve] ${msg}`);
}

// --device: cuda when asked (refused, clearly, without a usable device), auto = cuda when a device
// is usable, else cpu. Workers on the GPU move KV blocks by CUDA IPC. Each engine on CUDA sizes
// its KV cache to 90% of the GPU memory free when it starts, so several workers on one GPU need
// --kv-cache-memory: cuda refuses without it, auto then takes the CPU.
function resolveDevice(f: LauncherFlags): Exclude<EngineDevice, 'auto'> {
  if (f.device === 'cpu' || f.workers + f.prefillWorkers === 0) return 'cpu';
  const cuda = loadAddon().cudaDevice();
  const engines = f.workers + f.prefillWorkers;
  const shareGpu = engines > 1 && f.kvCacheMemory === undefined;
  if (f.device === 'cuda') {
    if (!cuda.usable) throw new FlagError(`--device cuda: no usable CUDA device (${cuda.description}); use --device cpu or auto`);
    if (shareGpu) {
      throw new FlagError(`--device cuda with ${engines} workers on one GPU: give each worker's KV cache with --kv-cache-memory (alone, each would take 90% of the free GPU memory)`);
    }
    return 'cuda';
  }
  if (!cuda.usable) return 'cpu';
  if (shareGpu) {
    log(`--device auto: ${cuda.description} is usable, but ${engines} workers would share it without --kv-cache-memory: using the CPU`);
    return 'cpu';
  }
  return 'cuda';
}

// CPU engines on a kernel path with a packed layout (amx: AMX tile order; avx512-bf16 and avx2:
// bf16 pairs) keep a private copy of the matmul weights in it (a faster prefill) unless the
// copies of every engine started here would take more than half of the memory available now;
// then they all read the model files' mapping, one copy in the page cache for every engine
// (Example 3's 8 workers of a 1B model: 8 x 2.5 GB).
function cpuTileWeights(modelDir: string, engines: number): boolean {
  let weightBytes = 0;
  for (const name of fs.readdirSync(modelDir)) if (name.endsWith('.safetensors')) weightBytes += fs.statSync(path.join(modelDir, name)).size;
  const available = /MemAvailable:\s+(\d+) kB/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1];
  const availableBytes = available ? Number(available) * 1024 : os.freemem();
  const fits = engines * weightBytes <= availableBytes / 2;
  if (!fits) {
    const gb = (b: number) => `${(b / 1e9).toFixed(1)} GB`;
    log(`weights: ${engines} engines x ${gb(weightBytes)} of packed copies would pass half of the ${gb(availableBytes)} available; they share the model files' mapping instead`);
  }
  return fits;
}

function workerConfig(
  f: LauncherFlags,
  device: Exclude<EngineDevice, 'auto'>,
  tileWeights: boolean,
  model: ResolvedModel,
  role: WorkerRole,
  workerId: string,
  port: number,
  requestPort: number,
  cpus: { numThreads: number; cpuOffset?: number },
): WorkerConfig {
  return {
    workerId,
    role,
    model: model.name,
    modelDir: model.dir,
    host: f.advertiseHost,
    port,
    requestPort,
    engine: {
      blockSize: f.blockSize,
      maxModelLen: f.maxModelLen,
      maxNumSeqs: f.maxNumSeqs,
      maxNumBatchedTokens: f.maxNumBatchedTokens,
      kvCacheBytes: f.kvCacheMemory,
      numThreads: cpus.numThreads,
      cpuOffset: device === 'cpu' ? cpus.cpuOffset : undefined,
      cpuTileWeights: tileWeights,
      device,
      tpSize: role === 'prefill' ? f.prefillTp : f.decodeTp,
    },
    logLevel: f.logLevel,
    drainMs: f.shutdownGraceS * 1000,
    disagg:
      role === 'monolith'
        ? undefined
        : {
            maxLocalPrefillLength: f.maxLocalPrefillLength,
            maxPrefillQueueSize: f.maxPrefillQueueSize,
            deadlineMs: f.prefillDeadlineMs,
            prefillConcurrency: Math.min(f.maxNumSeqs ?? 8, 8),
          },
  };
}

// --advertise-host must be an address of this host: tried before any worker loads the model.
function checkLocalAddress(host: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', (err: NodeJS.ErrnoException) => {
      const why = err.code === 'EADDRNOTAVAIL' ? 'it is not an address of this host' : err.code === 'ENOTFOUND' ? 'the name does not resolve' : err.message;
      reject(new FlagError(`--advertise-host ${host}: cannot listen there (${why})`));
    });
    probe.listen({ host, port: 0 }, () => probe.close(() => resolve()));
  });
}

// --redis-password-file: the password of the leader's private Redis, read from the file, or a new
// random one written to it (mode 0600) when the file does not exist.
function redisPasswordFrom(file: string): { password: string; created: boolean } {
  if (fs.existsSync(file)) {
    const password = fs.readFileSync(file, 'utf8').trim();
    if (!/^[A-Za-z0-9_-]{16,}$/.test(password)) throw new FlagError(`--redis-password-file ${file}: the password must be 16 or more characters of [A-Za-z0-9_-]`);
    return { password, created: false };
  }
  const password = newRedisPassword();
  fs.writeFileSync(file, `${password}\n`, { mode: 0o600, flag: 'wx' });
  return { password, created: true };
}

// The workers a frontend serves when its node started none: the first worker of its model that
// discovery lists, waited for (one line now, one every minute), and any others already there.
async function awaitWorkers(redisUrl: string, modelName: string, isStopping: () => boolean): Promise<LeasedWorkerInfo[]> {
  const connection = new RedisConnection(redisUrl, { name: 'launcher-discovery' });
  try {
    // A Redis that does not answer, or refuses the password, is an error now, not a silent wait.
    try {
      await connection.whenReady(REDIS_START_TIMEOUT_MS);
      await connection.redis.ping();
    } catch (err) {
      throw new Error(`${(err as Error).message.split(redisUrl).join(maskRedisUrl(redisUrl))}: the deployment's Redis, which a frontend needs to find its workers (check --redis-url or KVSERVE_REDIS_URL)`);
    }
    await refuseRedisCluster(connection.redis); // no worker would ever join there
    log(`waiting for workers of model "${modelName}" to join discovery at ${maskRedisUrl(redisUrl)}`);
    let lastLog = Date.now();
    for (;;) {
      if (isStopping()) throw new Error('stopped while waiting for workers');
      const found = await listWorkers(connection.redis, DEFAULT_NAMESPACE).catch(() => []);
      const serving = found.filter((w) => w.model === modelName && w.role !== 'prefill');
      if (serving.length > 0) return serving;
      if (Date.now() - lastLog > 60_000) {
        lastLog = Date.now();
        const others = [...new Set(found.filter((w) => w.role !== 'prefill').map((w) => w.model))];
        log(`still waiting for workers of model "${modelName}"${others.length > 0 ? ` (discovery has workers of ${others.map((m) => `"${m}"`).join(', ')}: give the same --served-model-name)` : ''}`);
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  } finally {
    await connection.close();
  }
}

// The OpenAI server's port, tried before anything loads: taken, it is refused at once rather than
// by the frontend after every worker has loaded the model.
function checkPortFree(host: string, port: number): Promise<void> {
  if (port === 0) return Promise.resolve();
  return new Promise<void>((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', (err: NodeJS.ErrnoException) => {
      const why = err.code === 'EADDRINUSE' ? 'the address is already in use' : err.message;
      reject(new Error(`--http-port ${port} on ${host}: ${why} (another kvserve? pick a free port with --http-port)`));
    });
    probe.listen({ host, port, exclusive: true }, () => probe.close(() => resolve()));
  });
}

async function run(f: LauncherFlags): Promise<number> {
  const device = resolveDevice(f);
  refuseUnimplemented(f);
  if (f.workers + f.prefillWorkers > 0) log(`device: ${device === 'cuda' ? `cuda, ${loadAddon().cudaDevice().description}` : 'cpu'}`);

  // 1. The model.
  if (!f.model) log('no --model given: using the built-in tiny model (generated on first use)');
  const model = await resolveModel(f.model);
  const served = { ...model, name: f.servedModelName ?? model.name };
  log(`model ${served.name} at ${model.dir}`);
  const hasFrontend = f.role === 'leader' || f.role === 'frontend';
  const engines = f.workers + f.prefillWorkers;
  if (hasFrontend) loadSamplingDefaults(f.generationConfig, model.dir); // a bad generation config stops here, before any worker loads
  if (f.decodeTp > 1 || f.prefillTp > 1) checkTpSplit(f, inspectModel(model.dir));
  const tileWeights = device === 'cpu' && engines > 0 && cpuTileWeights(model.dir, engines);
  if (engines > 0 && !isLoopback(f.advertiseHost)) await checkLocalAddress(f.advertiseHost);
  if (hasFrontend) await checkPortFree(f.host, f.httpPort); // after every refusal of the flags, before any process starts

  // 2. Redis, when this mode needs it: a leader's private one unless --redis-url; a node of
  // another role always has --redis-url (flags.ts).
  const servesOthers = f.role === 'leader' && !isLoopback(f.advertiseHost);
  const needsRedis = f.role !== 'leader' || f.router !== 'round-robin' || f.redisUrl !== undefined || f.remotePrefill || servesOthers;
  let privateRedis: SupervisedRedis | undefined;
  if (needsRedis && f.redisUrl === undefined) {
    const fromFile = f.redisPasswordFile ? redisPasswordFrom(f.redisPasswordFile) : undefined;
    const redisOptions = { alsoBind: servesOthers ? f.advertiseHost : undefined };
    const first = await startPrivateRedis({ ...redisOptions, port: f.redisPort, password: fromFile?.password });
    privateRedis = superviseRedis(first, {
      onRestart: (message) => {
        if (!f.restart) {
          log(`${message.replace(/; restarting.*/, '')}; stopping (--no-restart)`);
          return void shutdown(1);
        }
        log(message);
      },
      onGiveUp: (err) => fail(err),
    }, redisOptions);
    const why = servesOthers ? 'other nodes join through it' : f.remotePrefill ? 'the prefill queue needs one' : `--router ${f.router} needs one`;
    log(`started a private redis-server at ${maskRedisUrl(first.url)} (${why}; pass --redis-url to use yours)`);
    if (servesOthers) {
      const joinUrl = `redis://:${first.password}@${f.advertiseHost.includes(':') ? `[${f.advertiseHost}]` : f.advertiseHost}:${first.port}`;
      const file = `${f.redisPasswordFile}${fromFile!.created ? ', written now' : ''}`;
      log(`other nodes join with --redis-url ${maskRedisUrl(joinUrl)} (the password is in ${file}) and the same --cluster-secret`);
    }
  }
  const redisUrl = needsRedis ? (f.redisUrl ?? privateRedis!.url) : undefined;
  // Every child's secrets, set or emptied (a variable of the launcher's own environment must not
  // reach a child that is not meant to have it).
  const secretEnv = { KVSERVE_REDIS_URL: redisUrl ?? '', KVSERVE_CLUSTER_SECRET: f.clusterSecret ?? '' };

  // 3. Children, watched: a death restarts the child (stops everything with --no-restart).
  // During start-up a child still awaited reports its own failure (its 'fatal' message, or its
  // exit) through waitFor, never restarted; any other child that exits then, with --no-restart,
  // stops the start-up, named as the reason.
  let exitCode = 0;
  let starting = true;
  let startFailure: Error | undefined;
  let runFailure: Error | undefined; // a reason to stop after start-up (a child that cannot come back)
  const awaited = new Set<Child>();
  const failedRestarts = new Map<string, number>();
  let shuttingDown: Promise<void> | undefined;
  let stopped!: () => void;
  const done = new Promise<void>((resolve) => (stopped = resolve));
  // drainMs > 0: the frontend is stopped first and given that long to finish its streams; then
  // the workers, given as long to finish theirs (a node without a frontend: the requests other
  // nodes' frontends sent them).
  const shutdown = (code: number, drainMs = 0) => {
    exitCode = Math.max(exitCode, code);
    shuttingDown ??= supervisor
      .stopAll(drainMs > 0 ? { first: ['frontend'], graceMs: drainMs } : undefined)
      .then(() => privateRedis?.stop())
      .then(stopped);
    return shuttingDown;
  };
  const fail = (err: Error) => {
    if (starting) startFailure ??= err;
    else runFailure ??= err;
    void shutdown(1);
  };
  const supervisor = new Supervisor(
    (child: Child, code, signal) => {
      const name = child.spec.name;
      const how = signal ? `signal ${signal}` : `code ${code}`;
      if (starting && awaited.has(child)) return; // its waitFor reports it
      if (!f.restart) {
        if (starting) fail(new Error(`${name} exited during start-up (${how})`));
        else {
          log(`${name} exited unexpectedly (${how}); stopping (--no-restart)`);
          void shutdown(1);
        }
        return;
      }
      // A child that served and died is restarted at once; one whose restart died before it
      // served again waits longer each time, and after MAX_FAILED_RESTARTS the launcher stops.
      const failures = child.ready ? 0 : (failedRestarts.get(name) ?? 0) + 1;
      failedRestarts.set(name, failures);
      const reason = child.fatal ?? how;
      if (failures >= MAX_FAILED_RESTARTS) {
        return fail(new Error(`${name} failed to start again ${failures} times in a row; the last time: ${reason}`));
      }
      const delay = restartDelayMs(failures);
      log(`${name} exited (${reason}); restarting it${delay > 0 ? ` in ${delay / 1000} s` : ''}`);
      supervisor.restartLater(child.spec, delay);
    },
    10_000,
    (child) => {
      if (failedRestarts.has(child.spec.name)) {
        failedRestarts.delete(child.spec.name);
        log(`${child.spec.name} is serving again`);
      }
    },
  );
  let signals = 0;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      const drain = sig === 'SIGTERM' && signals++ === 0 && !starting && f.shutdownGraceS > 0;
      if (shuttingDown && !drain) {
        log(`${sig}: stopping now`);
        return void supervisor.killAll();
      }
      const how = hasFrontend ? 'new requests get 503' : 'the frontends stop sending requests here';
      log(drain ? `${sig}: draining (${how}; streams in flight have ${f.shutdownGraceS} s), then stopping` : `${sig}: stopping`);
      void shutdown(0, drain ? f.shutdownGraceS * 1000 + 5000 : 0);
    });
  }
  // Started by npm (npm run start): npm forwards SIGTERM and SIGINT, but if npm itself is killed
  // the launcher would serve on unowned; it stops when its parent changes.
  if (process.env.npm_lifecycle_event !== undefined) {
    const parent = process.ppid;
    setInterval(() => {
      if (process.ppid !== parent && !shuttingDown) {
        log(`the parent process (npm, pid ${parent}) is gone: stopping`);
        void shutdown(0);
      }
    }, 1000).unref();
  }

  try {
    // 4. Workers (decode workers when prefill workers exist, then those), all loading at once.
    // A node that joins another's deployment names its workers after its address.
    const disagg = f.remotePrefill;
    const suffix = f.role === 'leader' ? '' : `@${f.advertiseHost}`;
    const roles: { role: WorkerRole; id: string }[] = [
      ...Array.from({ length: f.workers }, (_, i) => ({ role: (disagg ? 'decode' : 'monolith') as WorkerRole, id: `worker-${i}${suffix}` })),
      ...Array.from({ length: f.prefillWorkers }, (_, i) => ({ role: 'prefill' as WorkerRole, id: `prefill-${i}${suffix}` })),
    ];
    const ports = await freePorts(2 * roles.length);
    const cores = os.availableParallelism?.() ?? os.cpus().length;
    const shares = cpuShares(roles.map(({ role }) => (role === 'prefill' ? f.prefillTp : f.decodeTp)), cores);
    const started = await Promise.all(
      roles.map(async ({ role, id }, i) => {
        const config = workerConfig(f, device, tileWeights, served, role, id, ports[2 * i], ports[2 * i + 1], shares[i]);
        const child = supervisor.start({ name: id, entry: 'ts/worker/main.ts', config, env: secretEnv });
        child.process.on('message', (m: WorkerMessage) => {
          if (m.type === 'loading') log(`${m.workerId}: ${m.message}`);
        });
        awaited.add(child);
        const info = await supervisor
          .waitFor<WorkerInfo>(
            child,
            (m) => {
              const msg = m as WorkerMessage;
              if (msg.type === 'fatal') throw new ChildError(`${msg.workerId}: ${msg.message} (${msg.code})`, msg.stack);
              return msg.type === 'ready' ? msg.info : undefined;
            },
            WORKER_READY_TIMEOUT_MS,
          )
          .finally(() => awaited.delete(child));
        log(`${info.workerId} (${info.role}) ready at ${info.address} (${info.kvTotalBlocks} KV blocks of ${info.blockSize} tokens, max model len ${info.maxModelLen})`);
        return info;
      }),
    );
    const plural = (n: number, what: string) => `${n} ${what}${n > 1 ? 's' : ''}`;
    if (!hasFrontend) {
      starting = false;
      const what = f.role === 'prefill' ? plural(started.length, 'prefill worker') : plural(started.length, disagg ? 'decode worker' : 'worker');
      log(`ready: ${what} of model "${served.name}" at ${f.advertiseHost}, in the deployment of ${maskRedisUrl(redisUrl!)}: ${started.map((w) => w.workerId).join(', ')} (Ctrl-C to stop)`);
      await done;
      if (runFailure) throw runFailure;
      return exitCode;
    }
    const local = started.filter((w) => w.role !== 'prefill');
    const workers: WorkerInfo[] = local.length > 0 ? local : await awaitWorkers(redisUrl!, served.name, () => shuttingDown !== undefined);
    // The router's block size: this node's, else --block-size when given, else the workers'.
    const routerBlockSize = local.length > 0 || f.blockSizeGiven ? f.blockSize : workers[0]!.blockSize;

    // 5. The frontend.
    const frontend = supervisor.start({
      name: 'frontend',
      entry: 'ts/frontend/main.ts',
      env: { ...secretEnv, KVSERVE_API_KEY: f.apiKey ?? '' },
      config: {
        host: f.host,
        port: f.httpPort,
        modelName: served.name,
        modelDir: model.dir,
        maxModelLen: Math.min(...workers.map((w) => w.maxModelLen)),
        workers,
        logLevel: f.logLevel,
        reasoningParser: f.reasoningParser,
        enableAutoToolChoice: f.enableAutoToolChoice,
        toolCallParser: f.toolCallParser,
        generationConfig: f.generationConfig,
        metricsRequireKey: f.metricsRequireKey,
        shutdownGraceMs: f.shutdownGraceS * 1000,
        migrationLimit: f.migrationLimit,
        migrationMaxSeqLen: f.migrationMaxSeqLen,
        stallTimeoutMs: f.stallTimeoutS * 1000,
        requestTimeoutMs: f.requestTimeoutS === undefined ? undefined : f.requestTimeoutS * 1000,
        maxChoicesPerRequest: f.maxChoicesPerRequest,
        overload: {
          activeDecodeBlocksThreshold: f.activeDecodeBlocksThreshold,
          activePrefillTokensThreshold: f.activePrefillTokensThreshold,
          maxQueued: f.routerQueueThreshold,
        },
        router: redisUrl
          ? { policy: f.router, blockSize: routerBlockSize, overlapWeight: f.kvOverlapWeight, temperature: f.routerTemperature }
          : undefined,
      },
    });
    awaited.add(frontend);
    const url = await supervisor
      .waitFor<string>(
        frontend,
        (m) => {
          const msg = m as { type?: string; url?: string; message?: string; code?: string; stack?: string };
          if (msg.type === 'fatal') throw new ChildError(`frontend: ${msg.message}${msg.code ? ` (${msg.code})` : ''}`, msg.stack);
          return msg.type === 'ready' ? msg.url : undefined;
        },
        FRONTEND_READY_TIMEOUT_MS,
      )
      .finally(() => awaited.delete(frontend));
    starting = false;
    const topology =
      local.length === 0
        ? `the workers of the deployment, ${plural(workers.length, 'worker')} so far`
        : disagg
          ? `${plural(workers.length, 'decode worker')} + ${plural(f.prefillWorkers, 'prefill worker')}`
          : plural(workers.length, 'worker');
    log(`ready: ${url}  (model "${served.name}", ${topology}; Ctrl-C to stop)`);
  } catch (err) {
    // The first failure is the reason; those after it (children stopped because of it) are not.
    if (!supervisor.isStopping) startFailure ??= err as Error;
    await shutdown(1);
    if (startFailure) throw startFailure;
    return exitCode;
  }
  await done;
  if (runFailure) throw runFailure;
  return exitCode;
}

// A failure a child reported: its message, and the stack from the child (shown at debug).
class ChildError extends Error {
  constructor(
    message: string,
    readonly childStack?: string,
  ) {
    super(message);
  }
}

// --log-level as given, for an error before the flags parsed.
function rawLogLevel(argv: string[]): string {
  let level = 'info';
  argv.forEach((a, i) => {
    if (a === '--log-level' && argv[i + 1]) level = argv[i + 1]!;
    else if (a.startsWith('--log-level=')) level = a.slice('--log-level='.length);
  });
  return level;
}

async function main(): Promise<void> {
  let flags: LauncherFlags | undefined;
  try {
    flags = parseFlags(process.argv.slice(2));
    if (flags.help) {
      process.stdout.write(HELP);
      return;
    }
    process.exitCode = await run(flags);
  } catch (err) {
    process.exitCode = reportFatal(err, flags?.logLevel);
  }
}

// The one line of a fatal error (a multi-line message's lines joined, list bullets dropped), the
// stack after it at debug and trace; returns the exit code: 2 for a flag error, else 1.
function reportFatal(err: unknown, logLevel: string | undefined): number {
  const e = err instanceof Error ? err : new Error(String(err));
  const lines = e.message.split('\n').map((l) => l.trim().replace(/^- /, '')).filter((l) => l !== '');
  const line = lines.reduce((acc, l) => (acc === '' ? l : `${acc}${acc.endsWith(':') ? ' ' : '; '}${l}`), '');
  console.error(`kvserve: error: ${line}`);
  if (['debug', 'trace'].includes(logLevel ?? rawLogLevel(process.argv.slice(2)))) {
    console.error(e instanceof ChildError ? (e.childStack ?? '(the child sent no stack)') : e.stack);
  }
  return e instanceof FlagError ? 2 : 1;
}

// Thrown outside run()'s own handling (in an event handler): the same line, and exit 1; the
// children exit by themselves when the launcher's IPC channels close.
process.on('uncaughtException', (err) => process.exit(reportFatal(err, undefined)));

await main();
