// main.ts: the frontend process. Forked by the launcher with
//   --config '{"host", "port", "modelName", "modelDir", "maxModelLen", "workers": WorkerInfo[], "logLevel"}'
// it loads the tokenizer, serves the OpenAI API over a StaticWorkerPool of those workers, and
// tells the parent {type: 'ready', url} over IPC ({type: 'fatal', code, message} if it cannot
// start). SIGTERM, SIGINT or the parent going away (IPC disconnect) close it cleanly: the streams
// in flight end, their engine requests are aborted, then the process exits.
//
// With `router` set, workers are found through discovery leases in Redis and chosen by the KV
// router (routed-worker-pool.ts) instead; `workers` still sizes the context limit.
//
// maxModelLen is capped by the smallest worker's KV capacity (kvTotalBlocks * blockSize): a
// request longer than that could never be scheduled, so its default max_tokens must not reach it.
import type { WorkerInfo } from '../protocol/index.ts';
import { loadTokenizer } from '../processor/index.ts';
import type { PolicyName } from '../router/index.ts';
import { buildApp } from './app.ts';
import { RoutedWorkerPool } from './routed-worker-pool.ts';
import { StaticWorkerPool, type WorkerPool } from './worker-pool.ts';

export interface FrontendConfig {
  host: string;
  port: number;
  modelName: string;
  modelDir: string;
  maxModelLen: number;
  workers: WorkerInfo[];
  logLevel?: string;
  router?: {
    redisUrl: string;
    namespace?: string;
    policy: PolicyName;
    blockSize: number;
    overlapWeight?: number;
    temperature?: number;
  };
}

export type FrontendMessage = { type: 'ready'; url: string } | { type: 'fatal'; code: string; message: string };

function send(msg: FrontendMessage): void {
  if (process.send) process.send(msg);
  else console.log(JSON.stringify(msg));
}

function parseConfig(argv: string[]): FrontendConfig {
  const i = argv.indexOf('--config');
  if (i < 0 || !argv[i + 1]) throw new Error("usage: frontend --config '<json>'");
  return JSON.parse(argv[i + 1]) as FrontendConfig;
}

async function main(): Promise<void> {
  const cfg = parseConfig(process.argv.slice(2));
  const tokenizer = await loadTokenizer(cfg.modelDir);
  const kvLimit = Math.min(...cfg.workers.map((w) => w.kvTotalBlocks * w.blockSize));
  const routed = cfg.router ? new RoutedWorkerPool({ ...cfg.router, modelName: cfg.modelName }) : undefined;
  const pool: WorkerPool = routed ?? new StaticWorkerPool(cfg.workers, cfg.modelName);
  const app = await buildApp({
    modelName: cfg.modelName,
    modelDir: cfg.modelDir,
    maxModelLen: Math.min(cfg.maxModelLen, kvLimit),
    pool,
    tokenizer,
    logger: { level: cfg.logLevel ?? 'info' },
  });
  if (routed) {
    await routed.start(app.log); // it logs through the app's logger

    app.addHook('onClose', () => routed.close());
  }
  const url = await app.listen({ host: cfg.host, port: cfg.port });

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await app.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('disconnect', stop);
  send({ type: 'ready', url });
}

main().catch((err) => {
  const e = err as { code?: string; message?: string; stack?: string };
  send({ type: 'fatal', code: e.code ?? 'ERR_FRONTEND', message: e.message ?? String(err) });
  console.error(`frontend: ${e.stack ?? err}`);
  process.exit(1);
});
