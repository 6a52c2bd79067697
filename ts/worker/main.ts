// main.ts: the worker process: hosts one native engine and serves the request plane.
// Started by the launcher (child_process.fork, so it has an IPC channel) with
//   --config '<WorkerConfig as JSON>'
// It reports progress and readiness to the parent over IPC ({type: 'loading' | 'ready' |
// 'fatal'}), and exits when the parent goes away, so a killed launcher leaves no orphan.
import { Engine, type EngineOptions } from '../native/index.ts';
import type { WorkerId, WorkerInfo, WorkerRole } from '../protocol/index.ts';
import { connectRedis, WorkerLease } from '../runtime/discovery.ts';
import { startWorkerServer } from './server.ts';

export interface WorkerConfig {
  workerId: string;
  role: WorkerRole;
  model: string; // served model name
  modelDir: string;
  host: string;
  port: number; // 0 = any free port
  redisUrl?: string; // when set, the worker holds a discovery lease there
  engine: Omit<EngineOptions, 'modelDir' | 'workerId'>;
}

export type WorkerMessage =
  | { type: 'loading'; workerId: string; message: string }
  | { type: 'ready'; info: WorkerInfo }
  | { type: 'fatal'; workerId: string; code: string; message: string };

function send(msg: WorkerMessage): void {
  if (process.send) process.send(msg);
  else console.log(JSON.stringify(msg));
}

function parseConfig(argv: string[]): WorkerConfig {
  const i = argv.indexOf('--config');
  if (i < 0 || !argv[i + 1]) throw new Error("usage: worker --config '<json>'");
  return JSON.parse(argv[i + 1]) as WorkerConfig;
}

async function main(): Promise<void> {
  const cfg = parseConfig(process.argv.slice(2));
  send({ type: 'loading', workerId: cfg.workerId, message: `loading ${cfg.modelDir}` });
  let engine: Engine;
  try {
    engine = new Engine({ ...cfg.engine, modelDir: cfg.modelDir, workerId: cfg.workerId });
  } catch (err) {
    const e = err as { code?: string; message: string };
    send({ type: 'fatal', workerId: cfg.workerId, code: e.code ?? 'ERR_INTERNAL', message: e.message });
    process.exitCode = 1;
    return;
  }
  const info = (address: string): WorkerInfo => ({
    workerId: cfg.workerId as WorkerId,
    role: cfg.role,
    address,
    model: cfg.model,
    modelDir: cfg.modelDir,
    blockSize: engine.info.blockSize,
    kvTotalBlocks: engine.info.numKvBlocks,
    maxModelLen: engine.info.maxModelLen,
    vocabSize: engine.info.model.vocabSize,
    pid: process.pid,
  });
  let address = '';
  const server = await startWorkerServer({ engine, info: () => info(address), host: cfg.host, port: cfg.port });
  address = server.address;

  // Discovery: static (the launcher hands our info to the frontend) unless Redis is in use.
  let lease: WorkerLease | undefined;
  const redis = cfg.redisUrl ? connectRedis(cfg.redisUrl) : undefined;
  if (redis) {
    lease = new WorkerLease(redis, info(address));
    await lease.start();
  }

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await lease?.stop();
    redis?.disconnect();
    await server.close();
    await engine.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('disconnect', stop); // the launcher is gone
  send({ type: 'ready', info: info(address) });
}

main().catch((err) => {
  console.error(`worker: ${(err as Error).stack ?? err}`);
  process.exit(1);
});
