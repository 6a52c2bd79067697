// app.ts: the OpenAI-compatible HTTP server (fastify): buildApp wires the routes, the JSON body
// parser, the one error handler and the shutdown.
//
//   POST /v1/chat/completions   routes-chat.ts
//   POST /v1/completions        routes-completions.ts
//   GET  /v1/models             the served model
//   GET  /health                200 while the process is up
//   GET  /ready                 503 until the pool has a worker serving the model, then 200
//   GET  /metrics               Prometheus text (metrics.ts)
//
// Stays true: every error leaves through setErrorHandler as an OpenAI error body (errors.ts);
// bodies are JSON (application/json only), valid UTF-8, at most 32 MiB; ajv never coerces types;
// closing the app aborts every generation in flight, so their streams end and close() returns.
import { isUtf8 } from 'node:buffer';
import Fastify, { LogController, type FastifyInstance, type FastifyServerOptions } from 'fastify';
import { ChatTemplate, ProcessorError, type ReasoningParserName, type SamplingDefaults, type TextTokenizer } from '../processor/index.ts';
import type { FrontendContext } from './context.ts';
import { ApiError, toApiError } from './errors.ts';
import type { MigrationSettings } from './generation.ts';
import { FrontendMetrics } from './metrics.ts';
import { chatRoutes } from './routes-chat.ts';
import { completionRoutes } from './routes-completions.ts';
import type { WorkerPool } from './worker-pool.ts';

export const BODY_LIMIT_BYTES = 32 << 20;

export interface AppOptions {
  modelName: string;
  modelDir: string;
  pool: WorkerPool;
  tokenizer: TextTokenizer;
  maxModelLen: number;
  samplingDefaults?: SamplingDefaults; // none when absent
  reasoningParser?: ReasoningParserName;
  migration?: MigrationSettings; // default: up to DEFAULT_MIGRATION_LIMIT migrations, no length cap
  logger?: FastifyServerOptions['logger'];
}

export const DEFAULT_MIGRATION_LIMIT = 3;

export async function buildApp(opts: AppOptions): Promise<FastifyInstance> {
  const app = Fastify({
    logger: opts.logger ?? false,
    // One line per request comes from serve.ts or the error handler, not fastify's two.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: BODY_LIMIT_BYTES,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false, verbose: true } },
  });

  const context: FrontendContext = {
    modelName: opts.modelName,
    modelDir: opts.modelDir,
    maxModelLen: opts.maxModelLen,
    pool: opts.pool,
    tokenizer: opts.tokenizer,
    chatTemplate: chatTemplateOf(opts.tokenizer),
    samplingDefaults: opts.samplingDefaults ?? {},
    reasoningParser: opts.reasoningParser,
    metrics: new FrontendMetrics(opts.modelName),
    migration: opts.migration ?? { limit: DEFAULT_MIGRATION_LIMIT },
    log: app.log,
    active: new Set(),
  };
  app.decorate('frontend', context);

  // Bodies: JSON only, checked for UTF-8 first (JSON.parse would silently turn bad bytes into U+FFFD).
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_request, body: Buffer, done) => {
    if (body.length === 0) return done(new ApiError('ERR_EMPTY_BODY', 'the request body is empty; send a JSON object'));
    if (!isUtf8(body)) return done(new ApiError('ERR_INVALID_UTF8', 'the request body is not valid UTF-8'));
    try {
      done(null, JSON.parse(body.toString('utf8')));
    } catch (err) {
      done(new ApiError('ERR_INVALID_JSON', `the request body is not valid JSON: ${(err as Error).message}`));
    }
  });

  app.setErrorHandler((err, request, reply) => {
    const e = toApiError(err);
    if (e.status >= 500) request.log.error({ err, status: e.status, url: request.url }, e.message);
    else request.log.info({ status: e.status, code: e.code, param: e.param, url: request.url }, e.message);
    return reply.code(e.status).send(e.body());
  });
  app.setNotFoundHandler((request) => {
    throw new ApiError('ERR_ROUTE_NOT_FOUND', `no route ${request.method} ${request.url}`);
  });

  app.get('/health', async () => ({ status: 'ok' }));
  app.get('/ready', async (_request, reply) =>
    context.pool.ready() ? { status: 'ready' } : reply.code(503).send({ status: 'not ready', message: 'no worker is serving the model yet' }),
  );
  app.get('/v1/models', async () => ({
    object: 'list',
    data: [
      {
        id: context.modelName,
        object: 'model',
        created: Math.floor(Date.now() / 1000),
        owned_by: 'kvserve',
        root: context.modelDir,
        parent: null,
        max_model_len: context.maxModelLen,
      },
    ],
  }));
  app.get('/metrics', async (_request, reply) => {
    context.metrics.refresh(await context.pool.loads(), context.pool.routerMetrics?.());
    return reply.type(context.metrics.registry.contentType).send(await context.metrics.registry.metrics());
  });
  await app.register(chatRoutes);
  await app.register(completionRoutes);

  // Closing: end the streams in flight (their engine requests are aborted) so close() can finish.
  app.addHook('preClose', async () => {
    for (const gen of context.active) gen.abort();
  });
  return app;
}

function chatTemplateOf(tokenizer: TextTokenizer): ChatTemplate | ProcessorError {
  try {
    return ChatTemplate.forTokenizer(tokenizer);
  } catch (err) {
    if (err instanceof ProcessorError && err.status < 500) return err;
    throw err;
  }
}
