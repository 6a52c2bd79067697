// main.ts: `npm run start -- [flags]`: the "leader". It resolves the model, starts the worker
// processes, then the frontend, prints where everything is, and stops them all on Ctrl-C /
// SIGTERM. A child that dies is reported, and the launcher exits non-zero unless --restart.
// Start-up order: flags -> model -> Redis (only when a mode needs it: --router kv or random, or
// --redis-url given; a private redis-server unless --redis-url) -> workers (each on two fixed free
// ports, HTTP and the TCP request plane, so a restarted worker keeps its addresses) -> frontend.
import os from 'node:os';
import type { WorkerInfo } from '../protocol/index.ts';
import type { WorkerConfig, WorkerMessage } from '../worker/main.ts';
import { FlagError, HELP, parseFlags, refuseUnimplemented, type LauncherFlags } from './flags.ts';
import { freePorts } from './ports.ts';
import { resolveModel, type ResolvedModel } from './model-resolve.ts';
import { startPrivateRedis, type PrivateRedis } from './redis.ts';
import { Supervisor, type Child } from './supervisor.ts';

const WORKER_READY_TIMEOUT_MS = 15 * 60_000; // large models take a while to page in
const FRONTEND_READY_TIMEOUT_MS = 120_000;

function log(msg: string): void {
  console.log(`[kvserve] ${msg}`);
}

function workerConfig(
  f: LauncherFlags,
  model: ResolvedModel,
  index: number,
  port: number,
  requestPort: number,
  redisUrl: string | undefined,
): WorkerConfig {
  const cores = os.availableParallelism?.() ?? os.cpus().length;
  return {
    workerId: `worker-${index}`,
    role: 'monolith',
    model: model.name,
    modelDir: model.dir,
    host: '127.0.0.1',
    port,
    requestPort,
    redisUrl,
    engine: {
      blockSize: f.blockSize,
      maxModelLen: f.maxModelLen,
      maxNumSeqs: f.maxNumSeqs,
      maxNumBatchedTokens: f.maxNumBatchedTokens,
      kvCacheBytes: f.kvCacheMemory,
      numThreads: Math.max(1, Math.floor(cores / f.workers)),
    },
  };
}

async function run(f: LauncherFlags): Promise<number> {
  refuseUnimplemented(f);

  // 1. The model.
  if (!f.model) log('no --model given: using the built-in tiny model (generated on first use)');
  const model = await resolveModel(f.model);
  const served = { ...model, name: f.servedModelName ?? model.name };
  log(`model ${served.name} at ${model.dir}`);

  // 2. Redis, when this mode needs it.
  const needsRedis = f.router !== 'round-robin' || f.redisUrl !== undefined;
  let privateRedis: PrivateRedis | undefined;
  if (needsRedis && f.redisUrl === undefined) {
    privateRedis = await startPrivateRedis();
    log(`started a private redis-server at ${privateRedis.url} (--router ${f.router} needs one; pass --redis-url to use yours)`);
  }
  const redisUrl = needsRedis ? (f.redisUrl ?? privateRedis!.url) : undefined;

  // 3. Children, watched: a death stops everything unless --restart.
  let exitCode = 0;
  let shuttingDown: Promise<void> | undefined;
  let stopped!: () => void;
  const done = new Promise<void>((resolve) => (stopped = resolve));
  const shutdown = (code: number) => {
    exitCode = Math.max(exitCode, code);
    shuttingDown ??= supervisor
      .stopAll()
      .then(() => privateRedis?.stop())
      .then(stopped);
    return shuttingDown;
  };
  const supervisor = new Supervisor((child: Child, code, signal) => {
    const how = signal ? `signal ${signal}` : `code ${code}`;
    if (f.restart) {
      log(`${child.spec.name} exited (${how}); restarting it (--restart)`);
      supervisor.start(child.spec);
    } else {
      log(`${child.spec.name} exited unexpectedly (${how}); stopping (use --restart to restart it instead)`);
      void shutdown(1);
    }
  });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      log(`${sig}: stopping`);
      void shutdown(0);
    });
  }

  try {
    // 4. Workers, all loading at once.
    const ports = await freePorts(2 * f.workers);
    const workers = await Promise.all(
      Array.from({ length: f.workers }, async (_, i) => {
        const config = workerConfig(f, served, i, ports[2 * i], ports[2 * i + 1], redisUrl);
        const child = supervisor.start({ name: `worker-${i}`, entry: 'ts/worker/main.ts', config });
        child.process.on('message', (m: WorkerMessage) => {
          if (m.type === 'loading') log(`${m.workerId}: ${m.message}`);
        });
        const info = await supervisor.waitFor<WorkerInfo>(
          child,
          (m) => {
            const msg = m as WorkerMessage;
            if (msg.type === 'fatal') throw new Error(`${msg.workerId}: ${msg.code}: ${msg.message}`);
            return msg.type === 'ready' ? msg.info : undefined;
          },
          WORKER_READY_TIMEOUT_MS,
        );
        log(`${info.workerId} ready at ${info.address} (${info.kvTotalBlocks} KV blocks of ${info.blockSize} tokens, max model len ${info.maxModelLen})`);
        return info;
      }),
    );

    // 5. The frontend.
    const frontend = supervisor.start({
      name: 'frontend',
      entry: 'ts/frontend/main.ts',
      config: {
        host: f.host,
        port: f.httpPort,
        modelName: served.name,
        modelDir: model.dir,
        maxModelLen: Math.min(...workers.map((w) => w.maxModelLen)),
        workers,
        logLevel: f.logLevel,
        router: redisUrl
          ? { redisUrl, policy: f.router, blockSize: f.blockSize, overlapWeight: f.kvOverlapWeight, temperature: f.routerTemperature }
          : undefined,
      },
    });
    const url = await supervisor.waitFor<string>(
      frontend,
      (m) => ((m as { type?: string }).type === 'ready' ? (m as { url: string }).url : undefined),
      FRONTEND_READY_TIMEOUT_MS,
    );
    log(`ready: ${url}  (model "${served.name}", ${workers.length} worker${workers.length > 1 ? 's' : ''}; Ctrl-C to stop)`);
  } catch (err) {
    if (!supervisor.isStopping) log(`start-up failed: ${(err as Error).message}`);
    await shutdown(1);
    return exitCode;
  }
  await done;
  return exitCode;
}

async function main(): Promise<void> {
  let flags: LauncherFlags;
  try {
    flags = parseFlags(process.argv.slice(2));
    if (flags.help) {
      process.stdout.write(HELP);
      return;
    }
    process.exitCode = await run(flags);
  } catch (err) {
    if (err instanceof FlagError) {
      console.error(`kvserve: ${err.message}`);
      process.exitCode = 2;
      return;
    }
    console.error(`kvserve: ${(err as Error).message}`);
    process.exitCode = 1;
  }
}

await main();
