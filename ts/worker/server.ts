// server.ts: the worker's internal request-plane server (node:http, keep-alive).
//
//   POST /generate   GenerateRequest -> 200 NDJSON stream of GenerateDelta, the last with
//                    finishReason; a request the engine refuses up front -> 4xx {error}.
//                    Closing the response (client gone) aborts the engine request.
//   GET  /info       WorkerInfo
//   GET  /load       WorkerLoad (the contract's load metrics + counters)
//   GET  /health     {"status":"ok"}
// Owns: nothing but the HTTP plumbing; the engine belongs to the worker process (main.ts).
// Stays true: every accepted request ends with exactly one delta carrying finishReason, unless
// the client went away first (then the engine request is aborted instead).
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Engine, NativeError } from '../native/index.ts';
import type { GenerateDelta, GenerateRequest, RequestId, WorkerInfo } from '../protocol/index.ts';
import { toWorkerLoad } from '../runtime/event-plane.ts';

const MAX_BODY_BYTES = 64 << 20;

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

async function handleGenerate(engine: Engine, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  let body: GenerateRequest;
  try {
    body = (await readJson(req)) as GenerateRequest;
  } catch (err) {
    return sendJson(res, 400, { error: { code: 'ERR_WORKER_BAD_BODY', message: (err as Error).message } });
  }
  const abort = new AbortController();
  let stream: ReturnType<Engine['generate']>;
  try {
    stream = engine.generate(body.requestId, body.promptTokenIds ?? [], body.sampling ?? {}, abort.signal);
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
      const delta: GenerateDelta = {
        requestId: body.requestId as RequestId,
        tokenIds: o.newTokenIds,
        numPromptTokens: o.numPromptTokens,
        numCachedTokens: o.numCachedTokens,
      };
      if (o.logprobs) delta.logprobs = o.logprobs;
      if (o.finishReason) delta.finishReason = o.finishReason;
      if (o.stopTokenId !== undefined) delta.stopTokenId = o.stopTokenId;
      if (o.error) delta.error = { code: 'ERR_ENGINE', message: o.error };
      if (o.finishReason) finished = true;
      res.write(JSON.stringify(delta) + '\n');
    }
  } catch (err) {
    finished = true;
    const e = err as NativeError;
    const last: GenerateDelta = {
      requestId: body.requestId as RequestId,
      tokenIds: [],
      finishReason: 'error',
      numPromptTokens: body.promptTokenIds?.length ?? 0,
      numCachedTokens: 0,
      error: { code: e.code ?? 'ERR_INTERNAL', message: e.message },
    };
    if (!res.destroyed) res.write(JSON.stringify(last) + '\n');
  }
  res.end();
}

export interface WorkerServer {
  server: http.Server;
  address: string;
  close(): Promise<void>;
}

export async function startWorkerServer(opts: {
  engine: Engine;
  info: () => WorkerInfo;
  host?: string;
  port?: number;
}): Promise<WorkerServer> {
  const { engine } = opts;
  const server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    if (req.method === 'POST' && url === '/generate') {
      handleGenerate(engine, req, res).catch((err) => {
        if (!res.headersSent) sendJson(res, 500, { error: { code: 'ERR_INTERNAL', message: String(err) } });
        else res.destroy();
      });
    } else if (req.method === 'GET' && url === '/info') {
      sendJson(res, 200, opts.info());
    } else if (req.method === 'GET' && url === '/load') {
      sendJson(res, 200, toWorkerLoad(opts.info().workerId, engine.metrics()));
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
  return {
    server,
    address: `http://${opts.host ?? '127.0.0.1'}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
