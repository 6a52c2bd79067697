// request-plane.test.ts: the TCP request plane (runtime/request-client.ts <-> worker/server.ts)
// against a real worker process on the generated tiny Llama:
//   - a stream over TCP equals the HTTP stream of the same greedy request;
//   - 16 concurrent requests multiplexed on one connection all complete, each with its tokens;
//   - up-front refusals arrive as RequestPlaneError (status, code) before any delta;
//   - aborting (signal, consumer break) frees the worker's slot and KV blocks;
//   - SIGKILL fails an open stream with ERR_WORKER_UNAVAILABLE, and the same client reconnects
//     to a new worker on the same request port.
// Waits are bounded polls; nothing asserts on timing.
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../ts/launcher/ports.ts';
import { ensureModel } from '../../ts/modelgen/index.ts';
import type { GenerateDelta, GenerateRequest, RequestId, SamplingParams, WorkerInfo, WorkerLoad } from '../../ts/protocol/index.ts';
import { LineSplitter, RequestPlaneError, WorkerClient } from '../../ts/runtime/request-client.ts';
import type { WorkerConfig } from '../../ts/worker/main.ts';
import { forkWorker } from '../helpers/worker.ts';

const MAX_MODEL_LEN = 1024;

interface TestWorker {
  info: WorkerInfo;
  proc: ChildProcess;
  exited: Promise<void>;
}

const live = new Set<TestWorker>();

async function startWorker(requestPort: number): Promise<TestWorker> {
  const { dir } = await ensureModel('tiny-llama');
  const config: WorkerConfig = {
    workerId: 'worker-0',
    role: 'monolith',
    model: 'tiny',
    modelDir: dir,
    host: '127.0.0.1',
    port: 0,
    requestPort,
    engine: { blockSize: 16, kvCacheBytes: 64 << 20, numThreads: 1, maxModelLen: MAX_MODEL_LEN },
  };
  const { info, proc, exited } = await forkWorker(config);
  const w = { info, proc, exited };
  live.add(w);
  return w;
}

async function kill(w: TestWorker, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  live.delete(w);
  if (w.proc.exitCode === null && w.proc.signalCode === null) w.proc.kill(signal);
  await w.exited;
}

let ids = 0;
function request(promptTokenIds: number[], sampling: Partial<SamplingParams> = {}): GenerateRequest {
  return {
    requestId: `rp-${process.pid}-${++ids}` as RequestId,
    promptTokenIds,
    sampling: { maxTokens: 8, temperature: 0, ignoreEos: true, ...sampling },
  };
}

function prompt(n: number, salt = 0): number[] {
  return Array.from({ length: n }, (_, i) => (100 + salt * 977 + i * 31) % 30_000);
}

async function collect(stream: AsyncGenerator<GenerateDelta>): Promise<GenerateDelta[]> {
  const out: GenerateDelta[] = [];
  for await (const d of stream) out.push(d);
  return out;
}

async function until<T>(what: string, probe: () => Promise<T>, check: (v: T) => boolean, timeoutMs = 10_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (check(v)) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what} (last: ${JSON.stringify(v)})`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const idle = (l: WorkerLoad) => l.kv_active_blocks === 0 && l.request_active_slots === 0;

afterAll(async () => {
  await Promise.all([...live].map((w) => kill(w)));
});

describe('LineSplitter', () => {
  it('splits partial lines and several lines per chunk', () => {
    const lines: string[] = [];
    const s = new LineSplitter((l) => lines.push(l), 16);
    for (const chunk of ['a', 'b\ncd', '\n\nef\ng', 'h', 'i\n', 'jk\nl']) s.push(chunk);
    expect(lines).toEqual(['ab', 'cd', 'ef', 'ghi', 'jk']);
    expect(() => s.push('x'.repeat(20))).toThrow(/exceeds/);
  });
});

describe('request plane over TCP', () => {
  let worker: TestWorker;
  let requestPort: number;
  let tcp: WorkerClient;
  let http: WorkerClient;

  beforeAll(async () => {
    requestPort = await freePort();
    worker = await startWorker(requestPort);
    expect(worker.info.requestPlane).toBe(`tcp://127.0.0.1:${requestPort}`);
    tcp = new WorkerClient(worker.info.address, worker.info.requestPlane);
    http = new WorkerClient(worker.info.address);
  });

  it('streams what HTTP streams for the same greedy request', async () => {
    const tokens = prompt(40);
    const sampling = { maxTokens: 24, logprobs: 2 };
    const viaHttp = await collect(http.generate(request(tokens, sampling)));
    const viaTcp = await collect(tcp.generate(request(tokens, sampling)));
    const shape = (ds: GenerateDelta[]) => ({
      tokenIds: ds.flatMap((d) => d.tokenIds),
      logprobs: ds.flatMap((d) => d.logprobs ?? []),
      finish: ds.map((d) => d.finishReason ?? null),
      numPromptTokens: ds.map((d) => d.numPromptTokens),
    });
    expect(shape(viaTcp)).toEqual(shape(viaHttp));
    expect(viaTcp.at(-1)!.finishReason).toBe('length');
    expect(viaTcp.flatMap((d) => d.tokenIds)).toHaveLength(24);
    const ids = new Set(viaTcp.map((d) => d.requestId));
    expect(ids.size).toBe(1);
    expect(viaTcp[0]).not.toHaveProperty('t');
    expect(viaTcp[0]).not.toHaveProperty('id');
  });

  it('multiplexes 16 concurrent requests', async () => {
    const reqs = Array.from({ length: 16 }, (_, i) => request(prompt(10 + i, i + 1), { maxTokens: 4 + i }));
    const results = await Promise.all(reqs.map((r) => collect(tcp.generate(r))));
    results.forEach((ds, i) => {
      expect(ds.every((d) => d.requestId === reqs[i].requestId)).toBe(true);
      expect(ds.flatMap((d) => d.tokenIds)).toHaveLength(4 + i);
      expect(ds.at(-1)!.finishReason).toBe('length');
      expect(ds.slice(0, -1).every((d) => d.finishReason === undefined)).toBe(true);
    });
    await until('the worker idles', () => http.load(), idle);
  });

  it('turns up-front refusals into RequestPlaneError before any delta', async () => {
    const refusal = async (body: GenerateRequest) => {
      const stream = tcp.generate(body);
      const err = await stream.next().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(RequestPlaneError);
      return err as RequestPlaneError;
    };
    const tooLong = await refusal(request(prompt(MAX_MODEL_LEN + 10)));
    expect([tooLong.status, tooLong.code]).toEqual([400, 'ERR_REQUEST_TOO_LONG']);
    const empty = await refusal(request([]));
    expect([empty.status, empty.code]).toEqual([400, 'ERR_INVALID_ARGUMENT']);

    // The same requestId twice while the first is running: 409, and the first is unharmed.
    const first = request(prompt(20, 99), { maxTokens: 100 });
    const running = tcp.generate(first);
    expect((await running.next()).done).toBe(false);
    const dup = await refusal({ ...first });
    expect([dup.status, dup.code]).toEqual([409, 'ERR_REQUEST_DUPLICATE']);
    const rest = await collect(running);
    expect(rest.at(-1)!.finishReason).toBe('length');
  });

  it('aborting the signal mid-stream ends the stream and frees the worker', async () => {
    const ac = new AbortController();
    const stream = tcp.generate(request(prompt(30, 7), { maxTokens: 900 }), ac.signal);
    const first = await stream.next();
    expect(first.done).toBe(false);
    ac.abort();
    const rest = await collect(stream); // ends, without throwing and without a final delta
    expect(rest.every((d) => d.finishReason === undefined)).toBe(true);
    await until('the worker idles', () => http.load(), idle);
  });

  it('a consumer that stops iterating aborts the request', async () => {
    let seen = 0;
    for await (const d of tcp.generate(request(prompt(30, 8), { maxTokens: 900 }))) {
      seen += d.tokenIds.length;
      if (seen > 0) break;
    }
    await until('the worker idles', () => http.load(), idle);
    // The connection still serves.
    const ds = await collect(tcp.generate(request(prompt(12, 9), { maxTokens: 3 })));
    expect(ds.flatMap((d) => d.tokenIds)).toHaveLength(3);
  });

  it('a killed worker fails open streams; the same client reconnects to its successor', async () => {
    const open = tcp.generate(request(prompt(30, 10), { maxTokens: 900 }));
    expect((await open.next()).done).toBe(false);
    await kill(worker);
    const err = await collect(open).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(RequestPlaneError);
    expect((err as RequestPlaneError).code).toBe('ERR_WORKER_UNAVAILABLE');
    expect((err as RequestPlaneError).status).toBe(503);

    // Nobody listens: the connect fails, and so does the request.
    const refused = await tcp
      .generate(request(prompt(10)))
      .next()
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect((refused as RequestPlaneError).code).toBe('ERR_WORKER_UNAVAILABLE');

    worker = await startWorker(requestPort);
    expect(worker.info.requestPlane).toBe(tcp.requestPlane);
    const ds = await collect(tcp.generate(request(prompt(12, 11), { maxTokens: 5 })));
    expect(ds.flatMap((d) => d.tokenIds)).toHaveLength(5);
    expect(ds.at(-1)!.finishReason).toBe('length');
  });
});
