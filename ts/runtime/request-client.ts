// request-client.ts: the frontend's side of the request plane: streams a worker's `generate`
// over HTTP/1.1 with a keep-alive connection pool.
//
// Stays true: a stream yields GenerateDelta items in order and ends after the one carrying
// finishReason; aborting the signal (client disconnect, stop string) destroys the HTTP request,
// which makes the worker abort the engine request; a worker that refuses the request up front
// becomes a RequestPlaneError with its HTTP status and error code.
import http from 'node:http';
import type { GenerateDelta, GenerateRequest, WireError, WorkerInfo, WorkerLoad } from '../protocol/index.ts';

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

const agent = new http.Agent({ keepAlive: true, maxSockets: 1024, keepAliveMsecs: 10_000, noDelay: true });

function request(url: URL, method: string, body: string | undefined, signal?: AbortSignal): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      {
        method,
        agent,
        signal,
        headers: body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
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

export class WorkerClient {
  constructor(readonly address: string) {}

  async *generate(body: GenerateRequest, signal?: AbortSignal): AsyncGenerator<GenerateDelta> {
    let res: http.IncomingMessage;
    try {
      res = await request(new URL('/generate', this.address), 'POST', JSON.stringify(body), signal);
    } catch (err) {
      if (signal?.aborted) return;
      throw unavailable(this.address, err);
    }
    if (res.statusCode !== 200) {
      const text = await readAll(res);
      let error: WireError = { code: 'ERR_WORKER', message: text };
      try {
        error = (JSON.parse(text) as { error: WireError }).error;
      } catch {
        // not JSON: keep the raw text
      }
      throw new RequestPlaneError(res.statusCode ?? 500, error.code, error.message);
    }
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

  async load(): Promise<WorkerLoad> {
    return this.getJson<WorkerLoad>('/load');
  }

  private async getJson<T>(path: string): Promise<T> {
    let res: http.IncomingMessage;
    try {
      res = await request(new URL(path, this.address), 'GET', undefined, AbortSignal.timeout(5000));
    } catch (err) {
      throw unavailable(this.address, err);
    }
    const text = await readAll(res);
    if (res.statusCode !== 200) throw new RequestPlaneError(res.statusCode ?? 500, 'ERR_WORKER', text);
    return JSON.parse(text) as T;
  }
}
