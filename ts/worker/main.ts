// main.ts: the worker process: hosts one native engine and serves the request plane: `generate`
// over a persistent, multiplexed TCP connection per frontend (cfg.requestPort, advertised as
// WorkerInfo.requestPlane) and HTTP at cfg.port (info, load, health; generate for curl). See
// server.ts for the framing.
// Started by the launcher (child_process.fork, so it has an IPC channel) with
//   --config '<WorkerConfig as JSON>'
// It reports progress and readiness to the parent over IPC ({type: 'loading' | 'ready' |
// 'fatal'}), and exits when the parent goes away, so a killed launcher leaves no orphan. Every
// failure before 'ready' ends in one 'fatal' message (code, message, and the stack for the
// launcher's --log-level debug) and exit code 1; the launcher prints it, the worker prints
// nothing of it.
// With engine.tpSize > 1 the worker is rank 0 of a tensor-parallel group and starts the other
// ranks as processes of its own (tp-ranks.ts); to the rest of the deployment it is one worker.
// A decode or prefill worker (disaggregation) keeps its KV pool in shared memory, runs a transfer
// agent (its metadata published in discovery) and the queue's producer or consumer
// (remote-prefill.ts has the protocol).
// Secrets come from the environment, never from --config (a command line every local user can
// read): KVSERVE_REDIS_URL, the Redis of the planes (it may carry a password), and
// KVSERVE_CLUSTER_SECRET (see server.ts and the transfer agent: every peer of the request plane,
// the HTTP server and the transfer listener must prove it knows the secret). A worker whose host
// is not loopback refuses to start without a cluster secret.
// With a Redis URL it also joins the planes there (without one nothing of this runs, so a single
// worker needs no Redis): a discovery lease announced on join and leave (runtime/discovery.ts),
// its KV events and load reports on the event plane, and replay requests answered
// (runtime/event-plane.ts). Redis must answer within REDIS_START_TIMEOUT_MS at start-up (else
// 'fatal' ERR_REDIS_UNAVAILABLE); later outages are ridden out (events buffered, lease
// re-created on reconnect).
import { randomUUID } from 'node:crypto';
import { Engine, TransferAgent, loadAddon, type EngineOptions, type RequestOutput } from '../native/index.ts';
import type { DisaggCounters, WorkerId, WorkerInfo, WorkerRole } from '../protocol/index.ts';
import { PrefillClaims, PrefillConsumer, PrefillQueue } from '../queue/prefill-queue.ts';
import { clusterSecret, offLoopbackWithoutSecret } from '../runtime/cluster-secret.ts';
import { DEFAULT_LEASE_TTL_MS, DEFAULT_NAMESPACE, WorkerLease, getWorker } from '../runtime/discovery.ts';
import { EventPlanePublisher } from '../runtime/event-plane.ts';
import { RedisConnection, refuseRedisCluster } from '../runtime/redis-connection.ts';
import { PrefillJobRunner, RemotePrefillDecoder, type Log } from './remote-prefill.ts';
import { engineGenerate, startWorkerServer, type EngineGenerateFn, type GenerateFn } from './server.ts';
import { grammarMatchersFor, withStructuredOutput } from './structured-output.ts';
import { startTpRanks, type TpRanks } from './tp-ranks.ts';

export interface WorkerConfig {
  workerId: string;
  role: WorkerRole;
  model: string; // served model name
  modelDir: string;
  host: string;
  port: number; // HTTP; 0 = any free port
  requestPort?: number; // the TCP request plane; 0 / absent = any free port (the launcher fixes it,
  // so a restarted worker keeps its address)
  namespace?: string; // Redis key prefix, default 'kvserve'
  leaseTtlMs?: number; // [1000, 60000], default 3000
  maxBufferedKvEvents?: number; // KV events held while Redis is away, [1, 10^7], default 100000
  engine: Omit<EngineOptions, 'modelDir' | 'workerId'>;
  disagg?: DisaggConfig; // decode and prefill workers (needs KVSERVE_REDIS_URL)
  logLevel?: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace'; // default info
  // SIGTERM: how long the requests in flight may take to finish (0 = none: they are cut). While
  // draining, GET /ready and GET /load answer 503 (the frontends set the worker aside at once), a
  // prefill worker takes no new job, and requests that still arrive are served.
  drainMs?: number;
}

export interface DisaggConfig {
  maxLocalPrefillLength: number; // decode: prefill remotely only above this many uncached tokens
  maxPrefillQueueSize: number; // decode: ... and only while the queue holds fewer jobs
  deadlineMs: number; // decode: a job not done by then is prefilled locally
  prefillConcurrency: number; // prefill: jobs in flight at once
}

export type WorkerMessage =
  | { type: 'loading'; workerId: string; message: string }
  | { type: 'ready'; info: WorkerInfo }
  | { type: 'fatal'; workerId: string; code: string; message: string; stack?: string };

const REDIS_START_TIMEOUT_MS = 10_000;

function send(msg: WorkerMessage, then?: () => void): void {
  if (process.send) process.send(msg, undefined, {}, () => then?.());
  else {
    console.log(JSON.stringify(msg));
    then?.();
  }
}

function parseConfig(argv: string[]): WorkerConfig {
  const i = argv.indexOf('--config');
  if (i < 0 || !argv[i + 1]) throw new Error("usage: worker --config '<json>'");
  return JSON.parse(argv[i + 1]) as WorkerConfig;
}

async function main(): Promise<void> {
  const cfg = parseConfig(process.argv.slice(2));
  const redisUrl = process.env.KVSERVE_REDIS_URL || undefined;
  const secret = clusterSecret();
  const offLoopback = offLoopbackWithoutSecret(cfg.host, secret);
  if (offLoopback) {
    send({ type: 'fatal', workerId: cfg.workerId, code: 'ERR_INVALID_ARGUMENT', message: offLoopback });
    process.exitCode = 1;
    return;
  }
  send({ type: 'loading', workerId: cfg.workerId, message: `loading ${cfg.modelDir}` });
  const disaggregated = cfg.role !== 'monolith';
  if (disaggregated && (!redisUrl || !cfg.disagg)) {
    send({ type: 'fatal', workerId: cfg.workerId, code: 'ERR_INVALID_ARGUMENT', message: `a ${cfg.role} worker needs KVSERVE_REDIS_URL and disagg settings` });
    process.exitCode = 1;
    return;
  }
  let engine: Engine;
  let agent: TransferAgent | undefined;
  let onNotification: (message: string) => void = () => undefined;
  // Tensor parallelism: ranks 1..N-1 start first; the Engine below is rank 0 and waits for them.
  const tpSize = cfg.engine.tpSize ?? 1;
  let ranks: TpRanks | undefined;
  try {
    // A worker taking part in disaggregation keeps its KV pool in shared memory, so a prefill
    // worker on this host copies blocks straight into it (native/transfer); with tensor
    // parallelism every rank's pool, each holding its kv heads.
    const engineOptions = { ...cfg.engine, modelDir: cfg.modelDir, workerId: cfg.workerId, kvSharedMemory: disaggregated };
    if (tpSize > 1) {
      send({ type: 'loading', workerId: cfg.workerId, message: `starting ${tpSize - 1} tensor-parallel ranks` });
      ranks = startTpRanks(engineOptions, tpSize, cfg.workerId);
    }
    engine = new Engine(ranks ? { ...engineOptions, tpSize, tpGroup: ranks.group, tpRankPids: ranks.pids } : engineOptions);
    if (disaggregated) {
      agent = new TransferAgent({ name: cfg.workerId, listenHost: cfg.host, listenPort: 0, clusterSecret: secret }, (_from, message) =>
        onNotification(message),
      );
      agent.registerRegions(engine.kvRegions());
    }
  } catch (err) {
    ranks?.kill();
    const e = err as { code?: string; message: string; stack?: string };
    send({ type: 'fatal', workerId: cfg.workerId, code: e.code ?? 'ERR_INTERNAL', message: e.message, stack: e.stack });
    process.exitCode = 1;
    return;
  }
  // A rank that dies takes the worker down: the step it was in fails its requests with an error
  // naming the rank; the rest end when this process exits (the launcher restarts the worker
  // under --restart, new ranks with it).
  // So does a group that broke with every rank alive (one stopped, or past the step deadline):
  // no later step could run.
  ranks?.onExit((rank, how) => {
    console.error(`[${cfg.workerId}] error: tensor-parallel rank ${rank} exited (${how}); the worker stops`);
    setTimeout(() => process.exit(1), 200).unref();
  });
  engine.onFatal((why) => {
    console.error(`[${cfg.workerId}] error: ${why}; the worker stops`);
    setTimeout(() => process.exit(1), 200).unref();
  });
  if (engine.info.backend === 'cuda') {
    console.error(`[${cfg.workerId}] engine: cuda, ${engine.info.kernels}`);
  } else {
    const cpu = loadAddon().cpuKernelInfo();
    const tp = engine.info.tpSize > 1 ? `, ${engine.info.tpSize} tensor-parallel ranks` : '';
    console.error(`[${cfg.workerId}] engine: ${engine.info.backend}, ${engine.info.kernels} kernels (path ${cpu.path}; CPU has ${cpu.isa.join(', ') || 'no SIMD extension we use'})${tp}`);
  }
  const info = (address: string, requestPlane: string): WorkerInfo => ({
    workerId: cfg.workerId as WorkerId,
    role: cfg.role,
    address,
    requestPlane,
    model: cfg.model,
    modelDir: cfg.modelDir,
    blockSize: engine.info.blockSize,
    kvTotalBlocks: engine.info.numKvBlocks,
    maxModelLen: engine.info.maxModelLen,
    maxNumSeqs: engine.metrics().requestTotalSlots,
    vocabSize: engine.info.model.vocabSize,
    pid: process.pid,
    transfer: agent?.metadata(),
  });
  // The event plane starts before the server, so the opening `cleared` (event_id 1) precedes
  // every event a request causes.
  const namespace = cfg.namespace ?? DEFAULT_NAMESPACE;
  const instanceId = randomUUID();
  let redis: RedisConnection | undefined;
  let publisher: EventPlanePublisher | undefined;
  if (redisUrl) {
    redis = new RedisConnection(redisUrl, { name: cfg.workerId });
    try {
      await redis.whenReady(REDIS_START_TIMEOUT_MS);
      await refuseRedisCluster(redis.redis);
      publisher = new EventPlanePublisher({
        connection: redis,
        workerId: cfg.workerId as WorkerId,
        instanceId,
        source: engine,
        namespace,
        maxBufferedEvents: cfg.maxBufferedKvEvents,
      });
      await publisher.start();
    } catch (err) {
      const code = (err as { code?: unknown }).code === 'ERR_REDIS_CLUSTER' ? 'ERR_REDIS_CLUSTER' : 'ERR_REDIS_UNAVAILABLE';
      send({ type: 'fatal', workerId: cfg.workerId, code, message: (err as Error).message, stack: (err as Error).stack });
      await publisher?.close();
      await redis.close();
      await engine.close();
      process.exitCode = 1;
      return;
    }
  }

  // Disaggregation: the decode side wraps generate; the prefill side pulls jobs.
  const log: Log = (level, msg) => {
    const shown = { debug: ['debug', 'trace'], info: ['info', 'debug', 'trace'], warn: ['warn', 'info', 'debug', 'trace'] }[level];
    if (shown.includes(cfg.logLevel ?? 'info')) console.error(`[${cfg.workerId}] ${level}: ${msg}`);
  };
  let generate: EngineGenerateFn = engineGenerate(engine);
  let disaggCounters: (() => DisaggCounters) | undefined;
  let queue: PrefillQueue | undefined;
  let consumer: PrefillConsumer | undefined;
  if (disaggregated && redis && agent) {
    const claims = new PrefillClaims(redis.redis, namespace);
    if (cfg.role === 'decode') {
      queue = new PrefillQueue(redisUrl!, namespace);
      const decoder = new RemotePrefillDecoder({
        engine,
        workerId: cfg.workerId as WorkerId,
        instanceId,
        blockSize: engine.info.blockSize,
        ...cfg.disagg!,
        queue,
        claims,
        isWriterAlive: async (writer) => {
          const [id, instance] = writer.split('/');
          return (await getWorker(redis!.redis, namespace, id!))?.instanceId === instance;
        },
        log,
      });
      onNotification = (message) => decoder.onNotification(message);
      generate = (body, signal, start) => decoder.generate(body, signal, start);
      disaggCounters = () => ({ ...decoder.counters });
    } else {
      const runner = new PrefillJobRunner({
        engine,
        transfer: agent,
        workerId: cfg.workerId as WorkerId,
        instanceId,
        blockSize: engine.info.blockSize,
        claims,
        lookupWorker: (id) => getWorker(redis!.redis, namespace, id),
        log,
      });
      consumer = new PrefillConsumer(
        { redisUrl: redisUrl!, namespace, workerId: cfg.workerId, concurrency: cfg.disagg!.prefillConcurrency },
        (job, attempt) => runner.run(job, attempt),
      );
      disaggCounters = () => ({ ...runner.counters });
    }
  }

  let address = '';
  let requestPlane = '';
  const inFlight = { streams: 0 }; // generate streams open now
  const server = await startWorkerServer({
    engine,
    info: () => info(address, requestPlane),
    host: cfg.host,
    port: cfg.port,
    requestPort: cfg.requestPort,
    generate: counted(withStructuredOutput(generate, engine, grammarMatchersFor(engine, cfg.modelDir), log), inFlight),
    disagg: disaggCounters,
    clusterSecret: secret,
  });
  address = server.address;
  requestPlane = server.requestPlane;

  // Discovery: static (the launcher hands our info to the frontend) unless Redis is in use.
  let lease: WorkerLease | undefined;
  if (redis) {
    lease = new WorkerLease(redis.redis, info(address, requestPlane), namespace, cfg.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS, instanceId);
    // Another live worker took this id (two nodes name their workers alike): routing could no
    // longer tell the two apart, so this one stops (a restart then meets the holder at start).
    lease.onConflict = (holder) => {
      console.error(`[${cfg.workerId}] error: another worker (${holder ? `at ${holder.address}` : 'gone again'}) took the worker id ${cfg.workerId}; two workers must not share an id: the worker stops`);
      setTimeout(() => process.exit(1), 200).unref();
    };
    await lease.start();
  }
  server.setReadiness('ready');

  let stopping = false;
  let cut = false; // a second signal ends the drain
  const cutNow = () => {
    cut = true;
  };
  // graceMs: the closes below talk to Redis; if it is gone they must not keep the process alive
  // longer than that. With the launcher gone (its Redis usually with it) there is nobody to be
  // graceful to: 2 s, so nothing of a killed launcher is left 5 s later. drainMs: first, how long
  // the requests in flight may take (WorkerConfig.drainMs).
  const stop = async (graceMs: number, drainMs = 0) => {
    if (stopping) return;
    stopping = true;
    server.setReadiness('draining');
    setTimeout(() => process.exit(0), drainMs + graceMs);
    await consumer?.close(); // a prefill worker's jobs in flight finish first
    if (drainMs > 0 && inFlight.streams > 0) {
      log('info', `draining: ${inFlight.streams} request(s) in flight, up to ${drainMs / 1000} s`);
      const end = performance.now() + drainMs;
      while (inFlight.streams > 0 && performance.now() < end && !cut) await new Promise((r) => setTimeout(r, 50));
      if (inFlight.streams > 0) log('warn', `drain: ${inFlight.streams} request(s) still in flight are cut`);
    }
    await queue?.close();
    await publisher?.close();
    await lease?.stop();
    await redis?.close();
    await server.close();
    await agent?.close();
    ranks?.stopping();
    await engine.close(); // stops the ranks
    process.exit(0);
  };
  // SIGTERM: drain (a second one, or SIGINT: stop now, cutting what is in flight).
  process.on('SIGTERM', () => void (stopping ? cutNow() : stop(5000, cfg.drainMs ?? 0)));
  process.on('SIGINT', () => void (stopping ? cutNow() : stop(5000)));
  process.on('disconnect', () => void stop(2000)); // the launcher is gone
  send({ type: 'ready', info: info(address, requestPlane) });
}

// fn with the streams it has open counted in counter.streams (the drain waits for them).
function counted(fn: GenerateFn, counter: { streams: number }): GenerateFn {
  return async (body, signal) => {
    counter.streams++;
    let stream: AsyncIterable<RequestOutput>;
    try {
      stream = await fn(body, signal);
    } catch (err) {
      counter.streams--;
      throw err;
    }
    return (async function* () {
      try {
        yield* stream;
      } finally {
        counter.streams--;
      }
    })();
  };
}

// Any other failure on the way to 'ready' (the config, the servers, Redis, the lease): one
// 'fatal' message, then exit 1 once it is sent.
main().catch((err) => {
  const e = (err instanceof Error ? err : new Error(String(err))) as Error & { code?: unknown };
  const workerId = process.env.KVSERVE_PROCESS ?? 'worker';
  send({ type: 'fatal', workerId, code: typeof e.code === 'string' ? e.code : 'ERR_WORKER_START', message: e.message, stack: e.stack }, () => process.exit(1));
});
