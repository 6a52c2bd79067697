// request-client.ts: the frontend's side of the request plane: streams a worker's `generate`
// over a persistent, multiplexed TCP connection (WorkerInfo.requestPlane, tcp://HOST:PORT), or,
// for a worker that advertises none, over HTTP/1.1 with a keep-alive connection pool.
// info() and load() are always HTTP.
//
// TCP: newline-delimited JSON frames, both directions (framing: worker/server.ts, types:
// protocol/index.ts). One connection per (frontend process, worker address), shared by every
// WorkerClient for that address, carries many requests at once, each under an id unique on the
// connection. The connection is opened lazily on first use (writes made while it connects are
// queued by the socket), and again on the next request after it failed: at most one connect is
// in flight per worker, and a failed connect fails the requests waiting on it. While no request
// is open the socket is unref'd (it keeps no process alive) and closed after IDLE_CLOSE_MS.
//
// Stays true (both transports): a stream yields GenerateDelta items in order and ends after the
// one carrying finishReason; aborting the signal (client disconnect, stop string) or returning
// from the generator early (consumer break) aborts the worker's engine request, and the stream
// then just ends; a worker that refuses the request up front becomes a RequestPlaneError with
// its status and error code, before any delta; a worker that cannot be reached, or whose
// connection breaks mid-stream, becomes RequestPlaneError(503, 'ERR_WORKER_UNAVAILABLE') (over
// HTTP a response cut short is 502 ERR_WORKER_STREAM) unless the stream's own signal aborted it.
//
// Cluster secret (KVSERVE_CLUSTER_SECRET in this process's environment): each new TCP connection
// first runs the handshake of cluster-secret.ts (frames written meanwhile wait for it, so it costs
// one round trip per connection, not per request); a worker that cannot prove it knows the secret,
// or that refuses ours, fails the connection's requests as unavailable, with the reason. Every
// HTTP request carries the secret in the x-kvserve-cluster-secret header.
import http from 'node:http';
import net from 'node:net';
import { CLUSTER_AUTH_HEADER, clusterSecret, httpAuthHeader, newNonce, requestPlaneMac, secretsEqual } from './cluster-secret.ts';
import type {
  GenerateDelta,
  GenerateRequest,
  RequestPlaneClientFrame,
  RequestPlaneClientHandshake,
  RequestPlaneWorkerFrame,
  RequestPlaneWorkerHandshake,
  WireError,
  WorkerInfo,
  WorkerLoad,
} from '../protocol/index.ts';

export class RequestPlaneError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'RequestPlaneError';
  }
}

// A worker's answer other than 200 as an error: the code and message of its {error} body, or its
// raw text with ERR_WORKER.
async function httpError(res: http.IncomingMessage): Promise<RequestPlaneError> {
  const text = await readAll(res);
  let error: WireError = { code: 'ERR_WORKER', message: text };
  try {
    error = (JSON.parse(text) as { error: WireError }).error ?? error;
  } catch {
    // not JSON: keep the raw text
  }
  return new RequestPlaneError(res.statusCode ?? 500, error.code, error.message);
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 1024, keepAliveMsecs: 10_000, noDelay: true });

function request(url: URL, method: string, body: string | undefined, signal?: AbortSignal): Promise<http.IncomingMessage> {
  const secret = clusterSecret();
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      {
        method,
        agent,
        signal,
        headers: {
          ...(body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }),
          ...(secret === undefined ? {} : { [CLUSTER_AUTH_HEADER]: httpAuthHeader(secret, method, url.pathname + url.search) }),
        },
      },
      resolve,
    );
    req.on('error', (err) => reject(err));
    req.end(body);
  });
}

async function readAll(res: http.IncomingMessage): Promise<string> {
  let text = '';
  res.setEncoding('utf8');
  for await (const chunk of res) text += chunk;
  return text;
}

function unavailable(url: string, err: unknown): RequestPlaneError {
  return new RequestPlaneError(503, 'ERR_WORKER_UNAVAILABLE', `worker at ${url} is unavailable: ${(err as Error).message}`);
}

// ---- TCP framing ----

const MAX_LINE_CHARS = 64 << 20;
const IDLE_CLOSE_MS = 60_000;

// Splits a stream of text chunks into lines (without the '\n'; empty lines skipped) in O(n):
// each chunk is scanned once, and a partial line is kept as a list of pieces joined once.
// Throws (from push) when onLine throws or a line grows past maxLineChars.
export class LineSplitter {
  private parts: string[] = [];
  private partChars = 0;

  constructor(
    private readonly onLine: (line: string) => void,
    private readonly maxLineChars = MAX_LINE_CHARS,
  ) {}

  push(chunk: string): void {
    let start = 0;
    let nl: number;
    while ((nl = chunk.indexOf('\n', start)) >= 0) {
      let line = chunk.slice(start, nl);
      if (this.parts.length > 0) {
        this.parts.push(line);
        line = this.parts.join('');
        this.parts = [];
        this.partChars = 0;
      }
      start = nl + 1;
      if (line.length > this.maxLineChars) throw new Error(`line of ${line.length} chars exceeds ${this.maxLineChars}`);
      if (line.length > 0) this.onLine(line);
    }
    if (start < chunk.length) {
      this.partChars += chunk.length - start;
      if (this.partChars > this.maxLineChars) throw new Error(`line exceeds ${this.maxLineChars} chars`);
      this.parts.push(start === 0 ? chunk : chunk.slice(start));
    }
  }
}

// One open request on a connection.
class TcpStream {
  readonly queue: GenerateDelta[] = [];
  error: RequestPlaneError | undefined;
  ended = false; // the final delta or an error arrived, or the client aborted it
  aborted = false; // by the client (signal or early return)
  private waiter: (() => void) | undefined;

  constructor(
    readonly id: number,
    readonly requestId: GenerateRequest['requestId'],
  ) {}

  wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  wait(): Promise<void> {
    return new Promise((resolve) => (this.waiter = resolve));
  }
}

function parseTcpAddress(address: string): { host: string; port: number } {
  const url = new URL(address);
  if (url.protocol !== 'tcp:' || !url.port) throw new Error(`not a tcp://host:port address: ${address}`);
  return { host: url.hostname.replace(/^\[(.*)\]$/, '$1'), port: Number(url.port) };
}

// The connection to one worker's request plane (shared by this process).
class RequestPlaneConnection {
  private socket: net.Socket | undefined;
  private readonly streams = new Map<number, TcpStream>();
  private nextId = 1;
  private corked = false;
  // While the socket's handshake runs: the secret, our nonce, and the lines that wait for it.
  private handshake: { secret: string; nonce: string; waiting: string[] } | undefined;

  constructor(readonly address: string) {}

  // Registers a request and sends its gen frame, connecting first if needed.
  open(body: GenerateRequest): TcpStream {
    const s = new TcpStream(this.nextId++, body.requestId);
    if (this.nextId > Number.MAX_SAFE_INTEGER) this.nextId = 1;
    const socket = this.connected();
    this.streams.set(s.id, s);
    if (this.streams.size === 1) {
      socket.setTimeout(0);
      socket.ref();
    }
    this.send(socket, { t: 'gen', id: s.id, body });
    return s;
  }

  // The client is done with s before its end (signal, early return): tells the worker.
  abort(s: TcpStream): void {
    if (s.ended) return;
    s.ended = true;
    s.aborted = true;
    this.forget(s);
    if (this.socket && !this.socket.destroyed) this.send(this.socket, { t: 'abort', id: s.id, requestId: s.requestId });
    s.wake();
  }

  private forget(s: TcpStream): void {
    if (this.streams.get(s.id) !== s) return;
    this.streams.delete(s.id);
    if (this.streams.size === 0 && this.socket) this.idle(this.socket);
  }

  private idle(socket: net.Socket): void {
    socket.unref();
    socket.setTimeout(IDLE_CLOSE_MS);
  }

  private connected(): net.Socket {
    if (this.socket) {
      if (!this.socket.destroyed) return this.socket;
      // Destroyed, its 'error' / 'close' not yet emitted: fail its requests now, or they would
      // be carried over to the new socket, which never saw their gen frames.
      this.fail(this.socket, new Error('the connection was destroyed'));
    }
    const { host, port } = parseTcpAddress(this.address);
    const socket = net.connect({ host, port, noDelay: true });
    this.socket = socket;
    socket.setEncoding('utf8');
    const secret = clusterSecret();
    this.handshake = undefined;
    if (secret !== undefined) {
      this.handshake = { secret, nonce: newNonce(), waiting: [] };
      socket.write(JSON.stringify({ t: 'hello', nonce: this.handshake.nonce } satisfies RequestPlaneClientHandshake) + '\n');
    }
    const lines = new LineSplitter((line) => {
      const f = JSON.parse(line) as RequestPlaneWorkerFrame | RequestPlaneWorkerHandshake;
      if (f.t === 'refused') this.fail(socket, new Error(`it refused the connection: ${f.reason}`));
      else if (f.t === 'hello') this.onHello(socket, f);
      else if (this.handshake) this.fail(socket, new Error(`a '${f.t}' frame before the handshake's end`));
      else this.onFrame(f);
    });
    socket.on('data', (chunk: string) => {
      try {
        lines.push(chunk);
      } catch (err) {
        socket.destroy(err as Error);
      }
    });
    socket.on('timeout', () => {
      if (this.socket === socket && this.streams.size === 0) socket.end();
    });
    let failure: Error | undefined;
    socket.on('error', (err) => {
      failure ??= err;
      this.fail(socket, err);
    });
    socket.on('end', () => this.fail(socket, new Error('the worker closed the connection')));
    socket.on('close', () => this.fail(socket, failure ?? new Error('the connection closed')));
    return socket;
  }

  // The worker's hello: it proves it knows the secret, and we prove it back; then the frames that
  // waited go out.
  private onHello(socket: net.Socket, f: RequestPlaneWorkerHandshake & { t: 'hello' }): void {
    const h = this.handshake;
    if (this.socket !== socket || !h) return this.fail(socket, new Error('an unexpected hello'));
    if (f.nonce === null) {
      return this.fail(socket, new Error('it has no cluster secret and this process has one: start both with the same --cluster-secret'));
    }
    if (typeof f.mac !== 'string' || !secretsEqual(f.mac, requestPlaneMac(h.secret, 'worker', h.nonce, f.nonce))) {
      return this.fail(socket, new Error('it did not prove it knows the cluster secret (another secret?)'));
    }
    this.handshake = undefined;
    socket.cork();
    socket.write(JSON.stringify({ t: 'auth', mac: requestPlaneMac(h.secret, 'client', f.nonce, h.nonce) } satisfies RequestPlaneClientHandshake) + '\n');
    for (const line of h.waiting) socket.write(line);
    socket.uncork();
  }

  // The socket is gone: every request open on it fails (those aborted by their signal just end).
  private fail(socket: net.Socket, err: Error): void {
    if (this.socket !== socket) return;
    this.socket = undefined;
    this.handshake = undefined;
    socket.destroy();
    const streams = [...this.streams.values()];
    this.streams.clear();
    for (const s of streams) {
      s.ended = true;
      s.error = unavailable(this.address, err);
      s.wake();
    }
  }

  private onFrame(f: RequestPlaneWorkerFrame): void {
    const s = this.streams.get(f.id);
    if (!s) return; // aborted by the client: what the worker sent meanwhile is dropped
    if (f.t === 'delta') {
      const { t: _t, id: _id, ...delta } = f;
      s.queue.push(delta);
      if (delta.finishReason) {
        s.ended = true;
        this.forget(s);
      }
    } else if (f.t === 'err') {
      s.error = new RequestPlaneError(f.status, f.code, f.message);
      s.ended = true;
      this.forget(s);
    } else {
      throw new Error(`unknown frame type ${String((f as { t?: unknown }).t)}`);
    }
    s.wake();
  }

  private send(socket: net.Socket, frame: RequestPlaneClientFrame): void {
    if (this.handshake) {
      this.handshake.waiting.push(JSON.stringify(frame) + '\n');
      return;
    }
    if (!this.corked) {
      this.corked = true;
      socket.cork();
      process.nextTick(() => {
        this.corked = false;
        socket.uncork();
      });
    }
    socket.write(JSON.stringify(frame) + '\n');
  }
}

const connections = new Map<string, RequestPlaneConnection>();

function connectionTo(address: string): RequestPlaneConnection {
  let c = connections.get(address);
  if (!c) connections.set(address, (c = new RequestPlaneConnection(address)));
  return c;
}

export class WorkerClient {
  // address: the worker's HTTP base URL; requestPlane: its tcp://HOST:PORT (WorkerInfo.
  // requestPlane). Without one, generate() streams over HTTP.
  constructor(
    readonly address: string,
    readonly requestPlane?: string,
  ) {}

  generate(body: GenerateRequest, signal?: AbortSignal): AsyncGenerator<GenerateDelta> {
    return this.requestPlane ? this.generateTcp(this.requestPlane, body, signal) : this.generateHttp(body, signal);
  }

  private async *generateTcp(address: string, body: GenerateRequest, signal?: AbortSignal): AsyncGenerator<GenerateDelta> {
    if (signal?.aborted) return;
    const conn = connectionTo(address);
    let s: TcpStream;
    try {
      s = conn.open(body);
    } catch (err) {
      throw unavailable(address, err); // a malformed address
    }
    const onAbort = () => conn.abort(s);
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      for (;;) {
        if (s.aborted) return;
        if (s.queue.length > 0) {
          const delta = s.queue.shift()!;
          yield delta;
          if (delta.finishReason) return;
          continue;
        }
        if (s.error) {
          if (signal?.aborted && s.error.code === 'ERR_WORKER_UNAVAILABLE') return; // as over HTTP
          throw s.error;
        }
        if (s.ended) return; // not reached: a stream ends with a final delta, an error or an abort
        await s.wait();
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      conn.abort(s); // a no-op unless the consumer stopped early
    }
  }

  private async *generateHttp(body: GenerateRequest, signal?: AbortSignal): AsyncGenerator<GenerateDelta> {
    let res: http.IncomingMessage;
    try {
      res = await request(new URL('/generate', this.address), 'POST', JSON.stringify(body), signal);
    } catch (err) {
      if (signal?.aborted) return;
      throw unavailable(this.address, err);
    }
    if (res.statusCode !== 200) throw await httpError(res);
    res.setEncoding('utf8');
    // The final delta is held until the response has ended (the worker ends it right after),
    // so the keep-alive socket goes back to the pool instead of being destroyed mid-response.
    let buffered = '';
    let final: GenerateDelta | undefined;
    try {
      for await (const chunk of res) {
        buffered += chunk as string;
        let nl: number;
        while ((nl = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          if (line.length === 0 || final) continue;
          const delta = JSON.parse(line) as GenerateDelta;
          if (delta.finishReason) final = delta;
          else yield delta;
        }
      }
    } catch (err) {
      if (signal?.aborted) return;
      throw unavailable(this.address, err);
    }
    if (final) {
      yield final;
    } else if (!signal?.aborted) {
      throw new RequestPlaneError(502, 'ERR_WORKER_STREAM', `worker at ${this.address} ended the stream early`);
    }
  }

  async info(): Promise<WorkerInfo> {
    return this.getJson<WorkerInfo>('/info');
  }

  // timeoutMs: how long to wait for the answer (a stopped worker accepts but never answers).
  async load(timeoutMs = 5000): Promise<WorkerLoad> {
    return this.getJson<WorkerLoad>('/load', timeoutMs);
  }

  private async getJson<T>(path: string, timeoutMs = 5000): Promise<T> {
    let res: http.IncomingMessage;
    try {
      res = await request(new URL(path, this.address), 'GET', undefined, AbortSignal.timeout(timeoutMs));
    } catch (err) {
      throw unavailable(this.address, err);
    }
    if (res.statusCode !== 200) throw await httpError(res);
    return JSON.parse(await readAll(res)) as T;
  }
}
