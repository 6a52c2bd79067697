// context.ts: what the routes share: the served model, the worker pool, the tokenizer and chat
// template, the metrics, and the generations in flight. buildApp (app.ts) decorates the fastify
// instance with it as `app.frontend`.
//
// Stays true: every generation in flight is in `active` until its response has ended, so closing
// the server can abort them (their streams then end at once).
import type { ToolSettings } from './tools.ts';
import type { GrammarChecker } from '../grammar/grammar-service.ts';
import type { FastifyBaseLogger } from 'fastify';
import type { ChatTemplate, EncoderPool, ProcessorError, PromptSize, ReasoningParserName, SamplingDefaults, TextTokenizer } from '../processor/index.ts';
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
  // Prompts to token ids: long ones on worker threads, after a size check that needs no tokenizing.
  encoder: EncoderPool;
  // Structured outputs: a request's grammar is checked here (on XGrammar's thread) before any worker is used.
  grammar: GrammarChecker;
  // The model's chat template, or why it has none usable (chat requests then get that error).
  chatTemplate: ChatTemplate | ProcessorError;
  // For requests that leave them unset (generation_config.json; {} with --generation-config vllm).
  samplingDefaults: SamplingDefaults;
  // --reasoning-parser: splits chat answers into reasoning_content and content; absent: off.
  reasoningParser?: ReasoningParserName;
  // --enable-auto-tool-choice, --tool-call-parser.
  tools: ToolSettings;
  metrics: FrontendMetrics;
  // --migration-limit, --migration-max-seq-len: a choice whose worker goes away mid-stream goes on
  // on another worker (generation.ts).
  migration: MigrationSettings;
  // --stall-timeout-s (0 = off) and --request-timeout (absent = none), in ms (generation.ts).
  stallTimeoutMs: number;
  requestTimeoutMs?: number;
  // --max-choices-per-request: n times the number of prompts, at most.
  maxChoicesPerRequest: number;
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

// A prompt whose UTF-8 length alone shows it cannot fit the context is refused before it is
// tokenized (a token covers at most encoder.maxTokenBytes bytes), so a huge body costs nothing.
export function checkPromptSize(ctx: FrontendContext, text: string, param: string): void {
  const atLeast = ctx.encoder.minTokens(text);
  if (atLeast >= ctx.maxModelLen) throw promptTooLong(ctx, { param, atLeast, bytes: Buffer.byteLength(text) });
}

// The refusal of a prompt whose size alone cannot fit (checkPromptSize, or the body's screen).
export function promptTooLong(ctx: FrontendContext, size: PromptSize): ApiError {
  const { param, atLeast, bytes } = size;
  return new ApiError(
    'ERR_CONTEXT_LENGTH_EXCEEDED',
    `This model's maximum context length is ${ctx.maxModelLen} tokens. However, your ${param} is at least ${atLeast} tokens ` +
      `(${bytes} bytes, at most ${ctx.encoder.maxTokenBytes} per token). Please reduce the length of the ${param}.`,
    param,
  );
}

// n times the number of prompts is at most --max-choices-per-request (OpenAI's own cap on n is
// 128; vLLM has none): checked before any prompt is tokenized, so a request with 1,000 prompts
// or n = 10,000 costs nothing. `promptParam` names the batch when it is the larger factor.
export function checkChoices(ctx: FrontendContext, prompts: number, n: number, promptParam: string): void {
  const max = ctx.maxChoicesPerRequest;
  if (prompts * n <= max) return;
  const param = prompts > n ? promptParam : 'n';
  throw new ApiError(
    'ERR_INVALID_REQUEST',
    `this request asks for ${prompts * n} completions (${prompts} prompt${prompts === 1 ? '' : 's'} times n = ${n}); this server allows at most ${max} per request (--max-choices-per-request)`,
    param,
  );
}

// Every worker busy and the queue full now: the 503 before any grammar is compiled or prompt
// tokenized (the pool's refusesNow), so a refusal costs neither. A request let through is routed
// as usual and may still wait or be refused there.
export function refuseWhenFull(ctx: FrontendContext): void {
  const refused = ctx.pool.refusesNow?.();
  if (refused) throw refused;
}

// stop_token_ids inside the vocabulary (the engine would refuse them without naming the field).
export function checkStopTokenIds(ctx: FrontendContext, ids: readonly number[] | null | undefined): void {
  if (!ids || ids.length === 0) return;
  const bad = ids.findIndex((id) => id >= ctx.tokenizer.vocabSize);
  if (bad >= 0) {
    throw new ApiError('ERR_INVALID_REQUEST', `stop token id ${ids[bad]} is not in the vocabulary (size ${ctx.tokenizer.vocabSize})`, `stop_token_ids[${bad}]`);
  }
}
