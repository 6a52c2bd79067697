// context.ts: what the routes share: the served model, the worker pool, the tokenizer and chat
// template, the metrics, and the generations in flight. buildApp (app.ts) decorates the fastify
// instance with it as `app.frontend`.
//
// Stays true: every generation in flight is in `active` until its response has ended, so closing
// the server can abort them (their streams then end at once).
import type { FastifyBaseLogger } from 'fastify';
import type { ChatTemplate, ProcessorError, ReasoningParserName, SamplingDefaults, TextTokenizer } from '../processor/index.ts';
import { ApiError } from './errors.ts';
import type { Generation, MigrationSettings } from './generation.ts';
import type { FrontendMetrics } from './metrics.ts';
import type { WorkerPool } from './worker-pool.ts';

export interface FrontendContext {
  modelName: string;
  modelDir: string;
  maxModelLen: number;
  pool: WorkerPool;
  tokenizer: TextTokenizer;
  // The model's chat template, or why it has none usable (chat requests then get that error).
  chatTemplate: ChatTemplate | ProcessorError;
  // For requests that leave them unset (generation_config.json; {} with --generation-config vllm).
  samplingDefaults: SamplingDefaults;
  // --reasoning-parser: splits chat answers into reasoning_content and content; absent: off.
  reasoningParser?: ReasoningParserName;
  metrics: FrontendMetrics;
  // --migration-limit, --migration-max-seq-len: a choice whose worker goes away mid-stream goes on
  // on another worker (generation.ts).
  migration: MigrationSettings;
  log: FastifyBaseLogger;
  active: Set<Generation>;
}

declare module 'fastify' {
  interface FastifyInstance {
    frontend: FrontendContext;
  }
}

// A request's `model` must name the served model (absent: the served one, as vLLM).
export function checkModel(ctx: FrontendContext, model: string | undefined): void {
  if (model !== undefined && model !== ctx.modelName) {
    throw new ApiError('ERR_MODEL_NOT_FOUND', `The model \`${model}\` does not exist.`, 'model');
  }
}
