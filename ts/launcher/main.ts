// main.ts: `npm run start -- [flags]`: the "leader". It resolves the model, starts the worker
// processes, then the frontend, prints where everything is, and stops them all on Ctrl-C /
// SIGTERM. A child that dies is reported, and the launcher exits non-zero unless --restart.
// Start-up order: flags -> model -> Redis (only when a mode needs it: --router kv or random,
// --prefill-workers, or --redis-url given; a private redis-server unless --redis-url) -> workers (each on two fixed free
// ports, HTTP and the TCP request plane, so a restarted worker keeps its addresses) -> frontend.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadAddon } from '../native/loader.ts';
import type { EngineDevice } from '../native/engine.ts';
import type { WorkerInfo, WorkerRole } from '../protocol/index.ts';
import type { WorkerConfig, WorkerMessage } from '../worker/main.ts';
import { loadSamplingDefaults } from '../processor/generation-config.ts';
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

// --device: cuda when asked (refused, clearly, without a usable device), auto = cuda when a device
// is usable, else cpu. Workers on the GPU move KV blocks by CUDA IPC. Each engine on CUDA sizes
// its KV cache to 90% of the GPU memory free when it starts, so several workers on one GPU need
// --kv-cache-memory: cuda refuses without it, auto then takes the CPU.
function resolveDevice(f: LauncherFlags): Exclude<EngineDevice, 'auto'> {
  if (f.device === 'cpu') return 'cpu';
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

// CPU engines on the amx path keep a private copy of the matmul weights in AMX tile order (a
// faster prefill) unless the copies of every engine started here would take more than half of
// the memory available now; then they all read the model files' mapping, one copy in the page
// cache for every engine (Example 3's 8 workers of a 1B model: 8 x 2.5 GB).
function cpuTileWeights(modelDir: string, engines: number): boolean {
  let weightBytes = 0;
  for (const name of fs.readdirSync(modelDir)) if (name.endsWith('.safetensors')) weightBytes += fs.statSync(path.join(modelDir, name)).size;
  const available = /MemAvailable:\s+(\d+) kB/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1];
  const availableBytes = available ? Number(available) * 1024 : os.freemem();
  const fits = engines * weightBytes <= availableBytes / 2;
  if (!fits) {
    const gb = (b: number) => `${(b / 1e9).toFixed(1)} GB`;
    log(`weights: ${engines} engines x ${gb(weightBytes)} of tile-order copies would pass half of the ${gb(availableBytes)} available; they share the model files' mapping instead`);
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
  redisUrl: string | undefined,
): WorkerConfig {
  const cores = os.availableParallelism?.() ?? os.cpus().length;
  return {
    workerId,
    role,
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
      numThreads: Math.max(1, Math.floor(cores / (f.workers + f.prefillWorkers))),
      cpuTileWeights: tileWeights,
      device,
    },
    logLevel: f.logLevel,
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

async function run(f: LauncherFlags): Promise<number> {
  refuseUnimplemented(f);
  const device = resolveDevice(f);
  log(`device: ${device === 'cuda' ? `cuda, ${loadAddon().cudaDevice().description}` : 'cpu'}`);

  // 1. The model.
  if (!f.model) log('no --model given: using the built-in tiny model (generated on first use)');
  const model = await resolveModel(f.model);
  const served = { ...model, name: f.servedModelName ?? model.name };
  log(`model ${served.name} at ${model.dir}`);
  loadSamplingDefaults(f.generationConfig, model.dir); // a bad generation config stops here, before any worker loads
  const tileWeights = device === 'cpu' && cpuTileWeights(model.dir, f.workers + f.prefillWorkers);

  // 2. Redis, when this mode needs it.
  const needsRedis = f.router !== 'round-robin' || f.redisUrl !== undefined || f.prefillWorkers > 0;
  let privateRedis: PrivateRedis | undefined;
  if (needsRedis && f.redisUrl === undefined) {
    privateRedis = await startPrivateRedis();
    const why = f.prefillWorkers > 0 ? 'the prefill queue needs one' : `--router ${f.router} needs one`;
    log(`started a private redis-server at ${privateRedis.url} (${why}; pass --redis-url to use yours)`);
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
    // 4. Workers (decode workers when prefill workers exist, then those), all loading at once.
    const disagg = f.prefillWorkers > 0;
    const roles: { role: WorkerRole; id: string }[] = [
      ...Array.from({ length: f.workers }, (_, i) => ({ role: (disagg ? 'decode' : 'monolith') as WorkerRole, id: `worker-${i}` })),
      ...Array.from({ length: f.prefillWorkers }, (_, i) => ({ role: 'prefill' as WorkerRole, id: `prefill-${i}` })),
    ];
    const ports = await freePorts(2 * roles.length);
    const started = await Promise.all(
      roles.map(async ({ role, id }, i) => {
        const config = workerConfig(f, device, tileWeights, served, role, id, ports[2 * i], ports[2 * i + 1], redisUrl);
        const child = supervisor.start({ name: id, entry: 'ts/worker/main.ts', config });
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
        log(`${info.workerId} (${info.role}) ready at ${info.address} (${info.kvTotalBlocks} KV blocks of ${info.blockSize} tokens, max model len ${info.maxModelLen})`);
        return info;
      }),
    );
    const workers = started.filter((w) => w.role !== 'prefill');

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
        reasoningParser: f.reasoningParser,
        generationConfig: f.generationConfig,
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
    const plural = (n: number, what: string) => `${n} ${what}${n > 1 ? 's' : ''}`;
    const topology = disagg ? `${plural(workers.length, 'decode worker')} + ${plural(f.prefillWorkers, 'prefill worker')}` : plural(workers.length, 'worker');
    log(`ready: ${url}  (model "${served.name}", ${topology}; Ctrl-C to stop)`);
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
