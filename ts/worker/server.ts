// server.ts: the worker's side of the request plane: a persistent, multiplexed TCP endpoint for
// `generate` (what the frontend uses), and a node:http server (keep-alive) for everything else.
//
// TCP (WorkerConfig.requestPort; advertised as WorkerInfo.requestPlane = tcp://HOST:PORT), with
// setNoDelay: newline-delimited JSON frames in both directions, one per line
// (RequestPlaneClientFrame / RequestPlaneWorkerFrame in protocol/index.ts):
//   client -> worker  {"t":"gen","id","body":GenerateRequest}   starts a request
//                     {"t":"abort","id","requestId"}             aborts it (signal / consumer gone)
//   worker -> client  {"t":"delta","id",...GenerateDelta}        in order, the last with finishReason
//                     {"t":"err","id","requestId","status","code","message"}
//                                                                an up-front refusal, instead of
//                                                                any delta: 400 NativeError refusals,
//                                                                409 duplicate, 503 closed, 500 other
//   One connection per (frontend process, worker) carries many requests at once, keyed by the
//   client's per-connection `id`. After an abort frame nothing more is sent for that id. A
//   connection that closes aborts every request that came over it (as closing an HTTP stream
//   did). A malformed frame (bad JSON, unknown type, reused open id, a line over 64 MiB) is a
//   protocol error: the connection is closed. Backpressure: deltas are small and produced at
//   engine speed, so a write that returns false is not waited on (Node buffers it; the engine is
//   never blocked by a slow reader); writes made in one tick are corked into one syscall.
//
// With a cluster secret (KVSERVE_CLUSTER_SECRET, passed here as clusterSecret), a TCP connection
// first goes through the handshake of runtime/cluster-secret.ts (once per connection, never per
// frame): anything but hello and a valid auth is answered with one {"t":"refused","reason"} line
// and the connection is closed; a handshake not done within HANDSHAKE_TIMEOUT_MS is closed too.
// Every HTTP request must carry the secret in the x-kvserve-cluster-secret header (compared in
// constant time), else 401 {error: ERR_WORKER_UNAUTHORIZED}.
//
// HTTP (WorkerConfig.port; WorkerInfo.address), for curl, debugging and the control plane:
//   POST /generate   GenerateRequest -> 200 NDJSON stream of GenerateDelta, the last with
//                    finishReason; a request the engine refuses up front -> 4xx {error}.
//                    Closing the response (client gone) aborts the engine request.
//   GET  /info       WorkerInfo
//   GET  /load       WorkerLoad (the contract's load metrics + counters)
//   GET  /health     {"status":"ok"}
//   GET  /ready      200 {"status":"ready"} once the worker said so (setReadiness: the engine is
//                    loaded, the server listens and, with Redis, its discovery lease is
//                    announced); 503 {"status":"starting"|"draining"} before that and once it
//                    stops. A readiness probe (Kubernetes) cannot carry a secret, and the answer
//                    reveals nothing else: /ready is open without the cluster secret.
// Owns: nothing but the plumbing; the engine belongs to the worker process (main.ts).
// Stays true: every accepted request ends with exactly one delta carrying finishReason, unless
// the client went away or aborted it first (then the engine request is aborted instead).
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { Engine, NativeError, type RequestOutput } from '../native/index.ts';
import {
  WORKER_DRAINING_CODE,
  type DisaggCounters,
  type GenerateDelta,
  type GenerateRequest,
  type RequestId,
  type RequestPlaneClientFrame,
  type RequestPlaneClientHandshake,
  type RequestPlaneWorkerFrame,
  type RequestPlaneWorkerHandshake,
  type WorkerInfo,
} from '../protocol/index.ts';
import { CLUSTER_AUTH_HEADER, CLUSTER_SECRET_ENV, HttpAuthCheck, newNonce, requestPlaneMac, secretsEqual } from '../runtime/cluster-secret.ts';
import { toWorkerLoad } from '../runtime/event-plane.ts';
import { LineSplitter } from '../runtime/request-client.ts';

const MAX_BODY_BYTES = 64 << 20;
const HANDSHAKE_TIMEOUT_MS = 10_000;

function statusOf(err: unknown): number {
  const code = (err as NativeError).code;
  if (code === 'ERR_REQUEST_DUPLICATE') return 409;
  if (code === 'ERR_ENGINE_CLOSED') return 503;
  if (err instanceof NativeError) return 400;
  return 500;
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function toDelta(requestId: RequestId, o: RequestOutput): GenerateDelta {
  const delta: GenerateDelta = {
    requestId,
    tokenIds: o.newTokenIds,
    numPromptTokens: o.numPromptTokens,
    numCachedTokens: o.numCachedTokens,
  };
  if (o.logprobs) delta.logprobs = o.logprobs;
  if (o.finishReason && o.finishReason !== 'prefilled') delta.finishReason = o.finishReason; // prefilled: never on the request plane
  if (o.stopTokenId !== undefined) delta.stopTokenId = o.stopTokenId;
  if (o.error) delta.error = { code: 'ERR_ENGINE', message: o.error };
  return delta;
}

// The last delta of a stream the engine failed (e.g. closed) after accepting the request.
function failedDelta(body: GenerateRequest, err: unknown): GenerateDelta {
  const e = err as NativeError;
  return {
    requestId: body.requestId,
    tokenIds: [],
    finishReason: 'error',
    numPromptTokens: body.promptTokenIds?.length ?? 0,
    numCachedTokens: 0,
    error: { code: e.code ?? 'ERR_INTERNAL', message: e.message },
  };
}

async function readJson(req: http.IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new Error('request body too large');
    chunks.push(chunk as Buffer);
  }
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

// How an engine request starts beyond its body: the allowed tokens of its first sampled output
// (structured outputs: the grammar's first mask; structured-output.ts computes it).
export interface GenerateStart {
  tokenMask?: Int32Array;
}

// Starts a request on the engine, or through disaggregation's wrapper of it (remote-prefill.ts).
// Throws synchronously when the engine refuses the request up front.
export type EngineGenerateFn = (body: GenerateRequest, signal: AbortSignal, start?: GenerateStart) => AsyncIterable<RequestOutput>;
// What the servers call: an EngineGenerateFn, or the structured-output wrapper of one, which first
// prepares the request's grammar (a rejected promise is a refusal, like a synchronous throw).
export type GenerateFn = (body: GenerateRequest, signal: AbortSignal) => AsyncIterable<RequestOutput> | Promise<AsyncIterable<RequestOutput>>;

async function handleGenerate(generate: GenerateFn, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  let body: GenerateRequest;
  try {
    body = (await readJson(req)) as GenerateRequest;
  } catch (err) {
    return sendJson(res, 400, { error: { code: 'ERR_WORKER_BAD_BODY', message: (err as Error).message } });
  }
  const abort = new AbortController();
  let stream: AsyncIterable<RequestOutput>;
  try {
    stream = await generate(body, abort.signal);
  } catch (err) {
    const e = err as NativeError;
    return sendJson(res, statusOf(err), { error: { code: e.code ?? 'ERR_INTERNAL', message: e.message } });
  }
  // The client closing the stream before the end aborts the engine request.
  let finished = false;
  res.on('close', () => {
    if (!finished) abort.abort();
  });
  res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
  try {
    for await (const o of stream) {
      if (o.finishReason) finished = true;
      res.write(JSON.stringify(toDelta(body.requestId, o)) + '\n');
    }
  } catch (err) {
    finished = true;
    if (!res.destroyed) res.write(JSON.stringify(failedDelta(body, err)) + '\n');
  }
  res.end();
}

// The engine's own generate, for a request body.
export function engineGenerate(engine: Engine): EngineGenerateFn {
  return (body, signal, start = {}) =>
    engine.generate(body.requestId, body.promptTokenIds ?? [], body.sampling ?? {}, signal, { outputTokenIds: body.outputTokenIds, ...start });
}

// ---- the TCP request plane ----

// One client connection: its open requests by the client's id; with a secret, its handshake first.
function serveRequestPlane(generate: GenerateFn, socket: net.Socket, secret: string | undefined): void {
  socket.setNoDelay(true);
  socket.setEncoding('utf8');
  const open = new Map<number, AbortController>();
  let closed = false;
  let handshake: 'hello' | 'auth' | 'done' = secret === undefined ? 'done' : 'hello';
  let nonces = { client: '', worker: '' };
  if (handshake !== 'done') socket.setTimeout(HANDSHAKE_TIMEOUT_MS, () => socket.destroy());
  const refuse = (reason: string): void => {
    closed = true;
    socket.end(JSON.stringify({ t: 'refused', reason } satisfies RequestPlaneWorkerHandshake) + '\n');
  };
  // The handshake's lines (hello, auth), and whatever comes before it is done.
  const onHandshake = (f: RequestPlaneClientHandshake | RequestPlaneClientFrame): void => {
    if (secret === undefined) {
      // A client with a secret asks; this worker has none, which that client refuses.
      socket.write(JSON.stringify({ t: 'hello', nonce: null } satisfies RequestPlaneWorkerHandshake) + '\n');
    } else if (handshake === 'hello' && f.t === 'hello' && typeof f.nonce === 'string' && /^[0-9a-f]{32}$/.test(f.nonce)) {
      nonces = { client: f.nonce, worker: newNonce() };
      handshake = 'auth';
      const mac = requestPlaneMac(secret, 'worker', nonces.client, nonces.worker);
      socket.write(JSON.stringify({ t: 'hello', nonce: nonces.worker, mac } satisfies RequestPlaneWorkerHandshake) + '\n');
    } else if (handshake === 'auth' && f.t === 'auth' && typeof f.mac === 'string') {
      if (!secretsEqual(f.mac, requestPlaneMac(secret, 'client', nonces.worker, nonces.client))) return refuse('wrong cluster secret');
      handshake = 'done';
      socket.setTimeout(0);
    } else {
      refuse(`this worker requires the cluster secret (--cluster-secret, ${CLUSTER_SECRET_ENV}): a hello and an auth line come first`);
    }
  };
  let corked = false;
  const send = (frame: RequestPlaneWorkerFrame): void => {
    if (closed || socket.destroyed) return;
    if (!corked) {
      corked = true;
      socket.cork();
      process.nextTick(() => {
        corked = false;
        socket.uncork();
      });
    }
    // A false return (the kernel buffer is full) is not waited on: see the header.
    socket.write(JSON.stringify(frame) + '\n');
  };

  const pump = async (id: number, body: GenerateRequest, stream: AsyncIterable<RequestOutput>, abort: AbortController): Promise<void> => {
    try {
      for await (const o of stream) {
        if (abort.signal.aborted) continue; // aborted by the client: drain silently
        send({ t: 'delta', id, ...toDelta(body.requestId, o) });
      }
    } catch (err) {
      if (!abort.signal.aborted) send({ t: 'delta', id, ...failedDelta(body, err) });
    } finally {
      if (open.get(id) === abort) open.delete(id);
    }
  };

  const start = (id: number, body: GenerateRequest): void => {
    if (!Number.isSafeInteger(id) || open.has(id)) throw new Error(`bad or reused request id ${String(id)}`);
    if (body === null || typeof body !== 'object') {
      send({ t: 'err', id, requestId: '' as RequestId, status: 400, code: 'ERR_WORKER_BAD_BODY', message: 'the gen frame has no body' });
      return;
    }
    const abort = new AbortController();
    const refuse = (err: unknown): void => {
      if (open.get(id) === abort) open.delete(id);
      const e = err as NativeError;
      send({ t: 'err', id, requestId: body.requestId, status: statusOf(err), code: e.code ?? 'ERR_INTERNAL', message: e.message });
    };
    let started: AsyncIterable<RequestOutput> | Promise<AsyncIterable<RequestOutput>>;
    try {
      started = generate(body, abort.signal);
    } catch (err) {
      return refuse(err);
    }
    open.set(id, abort); // an abort frame from here on reaches the request, even while it starts
    if (started instanceof Promise) started.then((stream) => void pump(id, body, stream, abort), refuse);
    else void pump(id, body, started, abort);
  };

  const lines = new LineSplitter((line) => {
    if (closed) return; // refused: the rest of what the peer sent is dropped
    const f = JSON.parse(line) as RequestPlaneClientFrame | RequestPlaneClientHandshake;
    if (handshake !== 'done' || f.t === 'hello' || f.t === 'auth') {
      onHandshake(f);
    } else if (f.t === 'gen') {
      start(f.id, f.body);
    } else if (f.t === 'abort') {
      const abort = open.get(f.id);
      if (abort) {
        open.delete(f.id);
        abort.abort();
      }
    } else {
      throw new Error(`unknown frame type ${String((f as { t?: unknown }).t)}`);
    }
  }, MAX_BODY_BYTES);
  socket.on('data', (chunk: string) => {
    try {
      lines.push(chunk);
    } catch {
      socket.destroy(); // a protocol error: 'close' aborts what came over this connection
    }
  });
  socket.on('error', () => {
    // 'close' follows
  });
  socket.on('close', () => {
    closed = true;
    for (const abort of open.values()) abort.abort();
    open.clear();
  });
}

// What GET /ready answers: 'starting' until the worker calls setReadiness('ready'), 'draining'
// once it stops.
export type WorkerReadiness = 'starting' | 'ready' | 'draining';

export interface WorkerServer {
  server: http.Server;
  address: string; // http://HOST:PORT
  requestPlane: string; // tcp://HOST:PORT
  setReadiness(readiness: WorkerReadiness): void;
  close(): Promise<void>;
}

export async function startWorkerServer(opts: {
  engine: Engine;
  info: () => WorkerInfo;
  host?: string;
  port?: number; // HTTP, 0 / absent = any free port
  requestPort?: number; // the TCP request plane, 0 / absent = any free port
  generate?: GenerateFn; // default: the engine's own
  disagg?: () => DisaggCounters; // reported in GET /load
  clusterSecret?: string; // every peer must present it (see the header); absent = none asked
}): Promise<WorkerServer> {
  const { engine, clusterSecret } = opts;
  const generate: GenerateFn = opts.generate ?? engineGenerate(engine);
  let readiness: WorkerReadiness = 'starting';
  const auth = clusterSecret === undefined ? undefined : new HttpAuthCheck(clusterSecret);
  const server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    const refused = req.method === 'GET' && url === '/ready' ? undefined : auth?.check(req.method ?? '', url, req.headers[CLUSTER_AUTH_HEADER]);
    if (req.method === 'GET' && url === '/ready') {
      sendJson(res, readiness === 'ready' ? 200 : 503, { status: readiness });
    } else if (refused !== undefined) {
      // The body is not read: the connection is closed after the answer.
      res.setHeader('connection', 'close');
      sendJson(res, 401, {
        error: { code: 'ERR_WORKER_UNAUTHORIZED', message: `this worker requires the cluster secret's proof in the ${CLUSTER_AUTH_HEADER} header: ${refused}` },
      });
    } else if (req.method === 'POST' && url === '/generate') {
      handleGenerate(generate, req, res).catch((err) => {
        if (!res.headersSent) sendJson(res, 500, { error: { code: 'ERR_INTERNAL', message: String(err) } });
        else res.destroy();
      });
    } else if (req.method === 'GET' && url === '/info') {
      sendJson(res, 200, opts.info());
    } else if (req.method === 'GET' && url === '/load' && readiness === 'draining') {
      // The frontends' health probe: a draining worker is set aside at once (worker-health.ts).
      sendJson(res, 503, { error: { code: WORKER_DRAINING_CODE, message: 'the worker is draining: it finishes the requests it has and takes no new ones' } });
    } else if (req.method === 'GET' && url === '/load') {
      const metrics = engine.metrics();
      const load = toWorkerLoad(opts.info().workerId, metrics);
      load.token_mask_wait_seconds = metrics.tokenMaskWaitSeconds;
      load.token_mask_wait_steps = metrics.tokenMaskWaitSteps;
      load.token_mask_deferred_rows = metrics.tokenMaskDeferredRows;
      if (opts.disagg) load.disagg = opts.disagg();
      sendJson(res, 200, load);
    } else if (req.method === 'GET' && url === '/health') {
      sendJson(res, 200, { status: 'ok' });
    } else {
      sendJson(res, 404, { error: { code: 'ERR_WORKER_NOT_FOUND', message: `no route ${req.method} ${url}` } });
    }
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  const sockets = new Set<net.Socket>();
  const tcp = net.createServer({ noDelay: true }, (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    serveRequestPlane(generate, socket, clusterSecret);
  });
  try {
    await new Promise<void>((resolve, reject) => {
      tcp.once('error', reject);
      tcp.listen(opts.requestPort ?? 0, opts.host ?? '127.0.0.1', () => resolve());
    });
  } catch (err) {
    server.close();
    throw err;
  }
  const requestPort = (tcp.address() as AddressInfo).port;
  const host = opts.host ?? '127.0.0.1';
  const urlHost = net.isIPv6(host) ? `[${host}]` : host; // an IPv6 literal in a URL is bracketed
  return {
    server,
    address: `http://${urlHost}:${port}`,
    requestPlane: `tcp://${urlHost}:${requestPort}`,
    setReadiness: (r) => {
      readiness = r;
    },
    close: () =>
      Promise.all([
        new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        }),
        new Promise<void>((resolve) => {
          tcp.close(() => resolve());
          for (const socket of sockets) socket.destroy();
        }),
      ]).then(() => undefined),
  };
}
