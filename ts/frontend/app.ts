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
// With apiKey set, every /v1/ route (and /metrics with metricsRequireKey) takes only requests
// carrying `Authorization: Bearer <apiKey>`; others get 401 with the OpenAI error body, and the
// key they sent is never logged. /health and /ready stay open for probes.
//
// drain(app, graceMs) (SIGTERM): from then on /v1/ requests get 503 `shutting_down` with
// Retry-After and /ready says 503; it resolves once the requests already in flight have ended,
// or after graceMs, whichever comes first (app.close() then aborts what is left).
//
// Stays true: every error leaves as an OpenAI error body (errors.ts): through setErrorHandler, or,
// for requests that never become one (bytes that are not HTTP, headers over Node's limit, a
// header timeout), through clientError, which writes the body on the socket and closes it; a URL
// that cannot be decoded and an HTTP/1.1 request without Host are 400s of the same shape;
// bodies are JSON (application/json only), valid UTF-8, at most 32 MiB; ajv never coerces types;
// closing the app aborts every generation in flight, so their streams end and close() returns,
// and a request that arrives while it closes gets 503 shutting_down with the OpenAI body.
import { createHash, timingSafeEqual } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import Fastify, { LogController, type FastifyInstance, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify';
import { BodyParseError, ChatTemplate, EncoderPool, ProcessorError, PromptTooLongError, type ReasoningParserName, type SamplingDefaults, type TextTokenizer } from '../processor/index.ts';
import { promptTooLong, type FrontendContext } from './context.ts';
import { ApiError, retryAfterSeconds, toApiError } from './errors.ts';
import type { MigrationSettings } from './generation.ts';
import { FrontendMetrics } from './metrics.ts';
import { chatRoutes } from './routes-chat.ts';
import { completionRoutes } from './routes-completions.ts';
import type { WorkerPool } from './worker-pool.ts';
import { GrammarChecker } from '../grammar/grammar-service.ts';
import type { ToolSettings } from './tools.ts';

export const BODY_LIMIT_BYTES = 32 << 20;

export interface AppOptions {
  modelName: string;
  modelDir: string;
  pool: WorkerPool;
  tokenizer: TextTokenizer;
  encoder?: EncoderPool; // default: inline only (no threads)
  grammar?: GrammarChecker; // structured outputs' checks; default: one of its own, started at first use
  maxModelLen: number;
  samplingDefaults?: SamplingDefaults; // none when absent
  reasoningParser?: ReasoningParserName;
  tools?: ToolSettings; // default: no auto tool choice
  migration?: MigrationSettings; // default: up to DEFAULT_MIGRATION_LIMIT migrations, no length cap
  stallTimeoutMs?: number; // default DEFAULT_STALL_TIMEOUT_MS; 0 = off (generation.ts)
  requestTimeoutMs?: number; // default none; 0 = none
  maxChoicesPerRequest?: number; // default DEFAULT_MAX_CHOICES_PER_REQUEST (request-params.ts)
  logger?: FastifyServerOptions['logger'];
  apiKey?: string;
  metricsRequireKey?: boolean;
}

// /v1/ requests in flight (from their onRequest to their response's close), and whether the
// server is draining.
interface DrainState {
  draining: boolean;
  inflight: number;
  idle?: () => void;
}
const drainStates = new WeakMap<FastifyInstance, DrainState>();

export function drain(app: FastifyInstance, graceMs: number): Promise<void> {
  const state = drainStates.get(app)!;
  state.draining = true;
  if (state.inflight === 0) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, graceMs);
    state.idle = () => {
      clearTimeout(timer);
      resolve();
    };
  });
}

export const DEFAULT_MIGRATION_LIMIT = 3;
export const DEFAULT_STALL_TIMEOUT_MS = 5000;
export const DEFAULT_MAX_CHOICES_PER_REQUEST = 128;

export async function buildApp(opts: AppOptions): Promise<FastifyInstance> {
  const app = Fastify({
    logger: opts.logger ?? false,
    // One line per request comes from serve.ts or the error handler, not fastify's two.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: BODY_LIMIT_BYTES,
    // While closing, the drain hook answers (503 shutting_down, the OpenAI body), not fastify.
    return503OnClosing: false,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false, verbose: true } },
    // Node would answer a missing Host itself, with an empty body: the hook below answers it.
    http: { requireHostHeader: false },
    clientErrorHandler: clientError,
    frameworkErrors: (err, _request, reply) => {
      const e = err.code === 'FST_ERR_BAD_URL' || err.code === 'FST_ERR_MAX_PARAM_LENGTH'
        ? new ApiError('ERR_BAD_HTTP', err.message) : toApiError(err);
      return (reply as FastifyReply).code(e.status).send(e.body());
    },
  });
  app.addHook('onRequest', async (request) => {
    if (request.raw.httpVersion === '1.1' && request.headers.host === undefined) {
      throw new ApiError('ERR_BAD_HTTP', 'an HTTP/1.1 request must have a Host header');
    }
  });

  const context: FrontendContext = {
    modelName: opts.modelName,
    modelDir: opts.modelDir,
    maxModelLen: opts.maxModelLen,
    pool: opts.pool,
    tokenizer: opts.tokenizer,
    encoder: opts.encoder ?? EncoderPool.inline(opts.tokenizer),
    grammar: opts.grammar ?? new GrammarChecker(),
    chatTemplate: chatTemplateOf(opts.tokenizer),
    samplingDefaults: opts.samplingDefaults ?? {},
    reasoningParser: opts.reasoningParser,
    tools: opts.tools ?? { enableAutoToolChoice: false },
    metrics: new FrontendMetrics(opts.modelName),
    migration: opts.migration ?? { limit: DEFAULT_MIGRATION_LIMIT },
    stallTimeoutMs: opts.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS,
    requestTimeoutMs: opts.requestTimeoutMs || undefined,
    maxChoicesPerRequest: opts.maxChoicesPerRequest ?? DEFAULT_MAX_CHOICES_PER_REQUEST,
    log: app.log,
    active: new Set(),
  };
  app.decorate('frontend', context);

  // Bodies: JSON only, checked for UTF-8 first (JSON.parse would silently turn bad bytes into U+FFFD).
  app.removeAllContentTypeParsers();
  // Large bodies are decoded and parsed on the encoder threads (EncoderPool.parseJson), and one
  // whose prompt cannot fit the context by its size alone is refused there.
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, async (request: FastifyRequest, body: Buffer) => {
    if (body.length === 0) throw new ApiError('ERR_EMPTY_BODY', 'the request body is empty; send a JSON object');
    const path = request.url.split('?')[0];
    const kind = path === '/v1/chat/completions' ? 'chat' : path === '/v1/completions' ? 'completions' : undefined;
    try {
      return await context.encoder.parseJson(body, kind && { kind, maxModelLen: context.maxModelLen });
    } catch (err) {
      if (err instanceof BodyParseError) throw new ApiError(err.code, err.message);
      if (err instanceof PromptTooLongError) throw promptTooLong(context, err.size);
      throw err;
    }
  });

  app.setErrorHandler((err, request, reply) => {
    const e = toApiError(err);
    // A stack only where it helps: an internal error; an unavailable worker or Redis is a state,
    // logged as one line (a warning), which may repeat for every request while it lasts.
    if (e.status === 500) request.log.error({ err, status: e.status, url: request.url }, e.message);
    else if (e.status > 500) request.log.warn({ status: e.status, code: e.code, url: request.url }, e.message);
    else request.log.info({ status: e.status, code: e.code, param: e.param, url: request.url }, e.message);
    const retryAfter = retryAfterSeconds(e.code);
    if (retryAfter !== undefined) reply.header('retry-after', String(retryAfter));
    return reply.code(e.status).send(e.body());
  });
  app.setNotFoundHandler((request) => {
    throw new ApiError('ERR_ROUTE_NOT_FOUND', `no route ${request.method} ${request.url}`);
  });

  const drainState: DrainState = { draining: false, inflight: 0 };
  drainStates.set(app, drainState);
  app.addHook('onRequest', async (request, reply) => {
    if (!request.url.startsWith('/v1/')) return;
    if (drainState.draining) {
      reply.header('retry-after', '5');
      throw new ApiError('ERR_SHUTTING_DOWN', 'the server is shutting down and takes no new requests; retry on another instance');
    }
    drainState.inflight++;
    reply.raw.once('close', () => {
      if (--drainState.inflight === 0 && drainState.draining) drainState.idle?.();
    });
  });
  if (opts.apiKey !== undefined) {
    const check = bearerCheck(opts.apiKey);
    const guarded = (url: string) => url.startsWith('/v1/') || (opts.metricsRequireKey === true && url.split('?')[0] === '/metrics');
    app.addHook('onRequest', async (request) => {
      if (guarded(request.url)) check(request.headers.authorization);
    });
  }

  app.get('/health', async () => ({ status: 'ok' }));
  app.get('/ready', async (_request, reply) => {
    if (drainState.draining) return reply.code(503).send({ status: 'draining', message: 'the server is shutting down' });
    return context.pool.ready() ? { status: 'ready' } : reply.code(503).send({ status: 'not ready', message: 'no worker is serving the model yet' });
  });
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
    drainState.draining = true;
    for (const gen of context.active) gen.abort();
  });
  app.addHook('onClose', async () => {
    await context.grammar.close();
    await context.pool.close?.();
  });
  return app;
}

// Bytes on a connection that are not an HTTP request fastify can take (a parse error, headers
// over Node's size limit, headers that did not arrive in time): the OpenAI error body, written
// straight on the socket, which is then closed (as Node and fastify do by default).
function clientError(this: FastifyInstance, err: NodeJS.ErrnoException & { reason?: string }, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const e =
    err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? new ApiError('ERR_REQUEST_TIMEOUT', 'the request did not arrive in time')
    : err.code === 'HPE_HEADER_OVERFLOW' ? new ApiError('ERR_HEADERS_TOO_LARGE', 'the request headers exceed the size limit')
    : new ApiError('ERR_BAD_HTTP', `the request is not valid HTTP/1.1 (${err.code ?? 'parse error'}${err.reason ? `: ${err.reason}` : ''})`);
  this.log.info({ status: e.status, code: e.code }, e.message);
  if (socket.writable && socket.bytesWritten === 0) {  // never inside a reply already started
    const body = JSON.stringify(e.body());
    socket.write(`HTTP/1.1 ${e.status} ${STATUS_CODES[e.status]}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
      `Content-Type: application/json\r\nConnection: close\r\n\r\n${body}`);
  }
  socket.destroy(err);
}

// Checks an Authorization header against the key in constant time (both sides hashed first, so
// the comparison does not depend on the lengths either); throws the 401.
function bearerCheck(apiKey: string): (header: string | undefined) => void {
  const digest = (s: string) => createHash('sha256').update(s).digest();
  const want = digest(apiKey);
  return (header) => {
    if (header === undefined) {
      throw new ApiError('ERR_UNAUTHORIZED', 'this server requires an API key: send it as the header Authorization: Bearer <key>');
    }
    const m = /^Bearer\s+(.+)$/i.exec(header.trim());
    if (!m || !timingSafeEqual(digest(m[1]!), want)) throw new ApiError('ERR_UNAUTHORIZED', 'the API key in the Authorization header is not valid');
  };
}

function chatTemplateOf(tokenizer: TextTokenizer): ChatTemplate | ProcessorError {
  try {
    return ChatTemplate.forTokenizer(tokenizer);
  } catch (err) {
    if (err instanceof ProcessorError && err.status < 500) return err;
    throw err;
  }
}
