// main.ts: the frontend process. Forked by the launcher with
//   --config '{"host", "port", "modelName", "modelDir", "maxModelLen", "workers": WorkerInfo[], "logLevel"}'
// it loads the tokenizer, serves the OpenAI API over a StaticWorkerPool of those workers, and
// tells the parent {type: 'ready', url} over IPC ({type: 'fatal', code, message} if it cannot
// start). SIGTERM drains first: new requests get 503 with Retry-After while the ones in flight
// finish, for up to shutdownGraceMs (default 30 s). Then, as at once on SIGINT or when the parent
// goes away (IPC disconnect), it closes cleanly: the streams still in flight end, their engine
// requests are aborted, and the process exits.
//
// With `router` set, workers are found through discovery leases in Redis and chosen by the KV
// router (routed-worker-pool.ts) instead; `workers` still sizes the context limit.
//
// `reasoningParser` (--reasoning-parser) splits chat answers into reasoning_content and content;
// `generationConfig` (--generation-config: auto, the default, vllm or a directory) says where the
// sampling defaults come from; they are logged at start, one line, and a bad file is fatal.
//
// The API key comes from the environment (KVSERVE_API_KEY, as the launcher passes it), never from
// the command line, which other local users can read; metricsRequireKey puts /metrics behind it.
// So does the router's Redis URL (KVSERVE_REDIS_URL; it may carry a password), and the cluster
// secret the request plane presents to workers (KVSERVE_CLUSTER_SECRET, read by
// runtime/request-client.ts).
//
// `migrationLimit` (--migration-limit, default 3; 0 = off) and `migrationMaxSeqLen`
// (--migration-max-seq-len, absent = no cap): how often, and up to which prompt + output length,
// a choice whose worker goes away mid-stream is sent to another worker (generation.ts).
//
// maxModelLen is capped by the smallest worker's KV capacity (kvTotalBlocks * blockSize): a
// request longer than that could never be scheduled, so its default max_tokens must not reach it.
import type { WorkerInfo } from '../protocol/index.ts';
import {
  EncoderPool,
  describeSamplingDefaults,
  isReasoningParserName,
  loadSamplingDefaults,
  loadTokenizer,
  reasoningMarkers,
  isToolCallParserName,
  unknownToolCallParserMessage,
  type ToolCallParserName,
  unknownReasoningParserMessage,
  type ReasoningParserName,
  type TextTokenizer,
} from '../processor/index.ts';
import type { PolicyName } from '../router/index.ts';
import { buildApp, DEFAULT_MIGRATION_LIMIT, drain } from './app.ts';
import { RoutedWorkerPool } from './routed-worker-pool.ts';
import { StaticWorkerPool, type OverloadSettings, type WorkerPool } from './worker-pool.ts';

export interface FrontendConfig {
  host: string;
  port: number;
  modelName: string;
  modelDir: string;
  maxModelLen: number;
  workers: WorkerInfo[];
  logLevel?: string;
  reasoningParser?: string;
  enableAutoToolChoice?: boolean;
  toolCallParser?: string;
  generationConfig?: string; // 'auto' when absent
  metricsRequireKey?: boolean;
  shutdownGraceMs?: number; // default 30000
  migrationLimit?: number; // DEFAULT_MIGRATION_LIMIT when absent
  migrationMaxSeqLen?: number;
  stallTimeoutMs?: number; // DEFAULT_STALL_TIMEOUT_MS when absent; 0 = off
  requestTimeoutMs?: number; // absent = no deadline
  maxChoicesPerRequest?: number;
  overload?: OverloadSettings; // busy thresholds and the wait queue, for either pool
  router?: {
    namespace?: string;
    policy: PolicyName;
    blockSize: number;
    overlapWeight?: number;
    temperature?: number;
    sharedLoad?: boolean; // share the router's pending load with other frontends (default on)
  };
}

export type FrontendMessage = { type: 'ready'; url: string } | { type: 'fatal'; code: string; message: string; stack?: string };

function send(msg: FrontendMessage): void {
  if (process.send) process.send(msg);
  else console.log(JSON.stringify(msg));
}

function parseConfig(argv: string[]): FrontendConfig {
  const i = argv.indexOf('--config');
  if (i < 0 || !argv[i + 1]) throw new Error("usage: frontend --config '<json>'");
  return JSON.parse(argv[i + 1]) as FrontendConfig;
}

// The parser finds its markers in the text; a tokenizer that has them as tokens marked special
// would drop them from the text (skip_special_tokens), which the line warns of.
function describeReasoningParser(name: ReasoningParserName, tokenizer: TextTokenizer): string {
  const markers = Object.values(reasoningMarkers(name));
  const special = markers.filter((m) => {
    const id = tokenizer.tokenToId(m);
    return id !== undefined && tokenizer.isSpecial(id);
  });
  const single = markers.filter((m) => tokenizer.tokenToId(m) !== undefined);
  const tokens = single.length === markers.length ? 'each one token' : `${markers.filter((m) => !single.includes(m)).join(', ')} not one token: matched in the text as it arrives`;
  const warn = special.length > 0 ? `; WARNING: ${special.join(', ')} marked special, so requests with skip_special_tokens (the default) lose them` : '';
  return `reasoning parser ${name}: chat answers split at ${markers.join(' / ')} into reasoning_content and content (${tokens})${warn}`;
}

async function main(): Promise<void> {
  const cfg = parseConfig(process.argv.slice(2));
  const tokenizer = await loadTokenizer(cfg.modelDir);
  const encoder = await EncoderPool.start(tokenizer, cfg.modelDir);
  if (cfg.reasoningParser !== undefined && !isReasoningParserName(cfg.reasoningParser)) {
    throw new Error(unknownReasoningParserMessage(cfg.reasoningParser));
  }
  const reasoningParser = cfg.reasoningParser as ReasoningParserName | undefined;
  if (cfg.toolCallParser !== undefined && !isToolCallParserName(cfg.toolCallParser)) {
    throw new Error(unknownToolCallParserMessage(cfg.toolCallParser));
  }
  const tools = { enableAutoToolChoice: cfg.enableAutoToolChoice ?? false, toolCallParser: cfg.toolCallParser as ToolCallParserName | undefined };
  const sampling = loadSamplingDefaults(cfg.generationConfig ?? 'auto', cfg.modelDir);
  const kvLimit = Math.min(...cfg.workers.map((w) => w.kvTotalBlocks * w.blockSize));
  const redisUrl = process.env.KVSERVE_REDIS_URL || undefined;
  if (cfg.router && !redisUrl) throw new Error('the router needs its Redis: KVSERVE_REDIS_URL is not set');
  const overload = cfg.overload;
  const routed = cfg.router ? new RoutedWorkerPool({ ...cfg.router, redisUrl: redisUrl!, modelName: cfg.modelName, overload }) : undefined;
  const pool: WorkerPool = routed ?? new StaticWorkerPool(cfg.workers, cfg.modelName, { overload });
  const app = await buildApp({
    modelName: cfg.modelName,
    modelDir: cfg.modelDir,
    maxModelLen: Math.min(cfg.maxModelLen, kvLimit),
    pool,
    tokenizer,
    encoder,
    samplingDefaults: sampling.defaults,
    reasoningParser,
    tools,
    migration: { limit: cfg.migrationLimit ?? DEFAULT_MIGRATION_LIMIT, maxSeqLen: cfg.migrationMaxSeqLen },
    stallTimeoutMs: cfg.stallTimeoutMs,
    requestTimeoutMs: cfg.requestTimeoutMs,
    maxChoicesPerRequest: cfg.maxChoicesPerRequest,
    logger: { level: cfg.logLevel ?? 'info' },
    apiKey: process.env.KVSERVE_API_KEY || undefined,
    metricsRequireKey: cfg.metricsRequireKey,
  });
  app.log.info(describeSamplingDefaults(sampling));
  if (reasoningParser) app.log.info(describeReasoningParser(reasoningParser, tokenizer));
  await pool.start?.(app.log); // it logs through the app's logger
  const url = await app.listen({ host: cfg.host, port: cfg.port });

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    // Closing waits on the router's Redis connections; with Redis gone (the launcher killed, its
    // Redis with it) that could wait for ever, so the process exits after 2 s regardless.
    setTimeout(() => process.exit(0), 2000);
    await app.close();
    process.exit(0);
  };
  let draining = false;
  process.on('SIGTERM', async () => {
    if (draining || stopping) return void stop();
    draining = true;
    const graceMs = cfg.shutdownGraceMs ?? 30_000;
    app.log.info(`SIGTERM: draining (new requests get 503; those in flight have ${graceMs / 1000} s)`);
    await drain(app, graceMs);
    await stop();
  });
  process.on('SIGINT', stop);
  process.on('disconnect', stop);
  send({ type: 'ready', url });
}

// A start failure goes to the launcher as one 'fatal' message, its stack with it (the launcher
// prints the message as one line, the stack at debug); run on its own, the frontend prints it.
main().catch((err) => {
  const e = err as { code?: string; message?: string; stack?: string };
  send({ type: 'fatal', code: e.code ?? 'ERR_FRONTEND', message: e.message ?? String(err), stack: e.stack });
  if (!process.send) console.error(`frontend: ${e.stack ?? err}`);
  process.exit(1);
});
