// frontend-fixture.ts (test helper for test/unit/frontend-*.test.ts): one real worker process on
// the generated tiny Llama (real Llama 3 tokenizer and chat template), and a frontend app over it.
import type { ChildProcess } from 'node:child_process';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../ts/frontend/app.ts';
import { StaticWorkerPool } from '../../ts/frontend/worker-pool.ts';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { loadTokenizer } from '../../ts/processor/index.ts';
import type { WorkerInfo, WorkerLoad } from '../../ts/protocol/index.ts';
import { WorkerClient } from '../../ts/runtime/request-client.ts';
import type { WorkerConfig } from '../../ts/worker/main.ts';
import { forkWorker } from './worker.ts';

export const MODEL = 'tiny';
export const MAX_MODEL_LEN = 1024;

export interface TestWorker {
  info: WorkerInfo;
  proc: ChildProcess;
  load(): Promise<WorkerLoad>;
  stop(): Promise<void>;
}

export async function startWorker(): Promise<TestWorker> {
  const { dir } = await ensureModel('tiny-llama');
  const config: WorkerConfig = {
    workerId: 'worker-0',
    role: 'monolith',
    model: MODEL,
    modelDir: dir,
    host: '127.0.0.1',
    port: 0,
    engine: { blockSize: 16, kvCacheBytes: 16 << 20, numThreads: 1, maxModelLen: MAX_MODEL_LEN },
  };
  const { info, proc, stop } = await forkWorker(config);
  const client = new WorkerClient(info.address);
  return { info, proc, load: () => client.load(), stop: () => stop() };
}

export async function buildTestApp(workers: WorkerInfo[], maxModelLen = MAX_MODEL_LEN): Promise<FastifyInstance> {
  const modelDir = (await ensureModel('tiny-llama')).dir;
  return buildApp({
    modelName: MODEL,
    modelDir,
    pool: new StaticWorkerPool(workers, MODEL),
    tokenizer: await loadTokenizer(modelDir),
    maxModelLen,
  });
}

// The `data:` payloads of an SSE body, [DONE] included as the string.
export function sseEvents(body: string): unknown[] {
  return body
    .split('\n\n')
    .filter((e) => e.startsWith('data: '))
    .map((e) => (e === 'data: [DONE]' ? '[DONE]' : JSON.parse(e.slice(6))));
}

// Polls until check() holds (or the time is up; then returns its last value).
export async function eventually<T>(probe: () => Promise<T>, check: (v: T) => boolean, timeoutMs = 5000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (check(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
}
