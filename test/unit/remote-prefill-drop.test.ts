// A prefill job the prefill worker will not run comes back to its decode worker at once, not at
// its deadline: the prefill side (PrefillJobRunner) finds the decode worker's lease naming another
// instance (a restarted decode worker serves before it has taken over its lease), drops the job
// and marks its claim dropped:<me>; the decode side (RemotePrefillDecoder) sees that on its next
// claim check and prefills locally. Real claims on a private redis-server; the engines are stand-ins
// that record what the two sides ask of them.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Engine, RequestOutput } from '../../ts/native/index.ts';
import type { RemotePrefillJob, RequestId, WorkerId } from '../../ts/protocol/index.ts';
import { startPrivateRedis, type PrivateRedis } from '../../ts/launcher/redis.ts';
import { PrefillClaims, type PrefillQueue } from '../../ts/queue/prefill-queue.ts';
import { newRedis } from '../../ts/runtime/redis-connection.ts';
import { PrefillJobRunner, RemotePrefillDecoder, type KvTransfer } from '../../ts/worker/remote-prefill.ts';

let redis: PrivateRedis;
let client: ReturnType<typeof newRedis>;

beforeAll(async () => {
  redis = await startPrivateRedis();
  client = newRedis(redis.url, { lazyConnect: false });
}, 30_000);

afterAll(async () => {
  client?.disconnect();
  await redis?.stop();
});

// A decode engine that parks the request (awaitingKv) and finishes it once told where its KV came from.
function parkingEngine() {
  const completed: { id: string; ok: boolean; at: number }[] = [];
  let release: () => void = () => undefined;
  const engine = {
    info: { kvBlockBytes: 1024 },
    generate(requestId: string): AsyncIterable<RequestOutput> {
      return (async function* () {
        yield { requestId, awaitingKv: true, numCachedTokens: 0, blockIds: [0, 1, 2], newTokenIds: [] } as unknown as RequestOutput;
        await new Promise<void>((r) => (release = r));
        yield { requestId, newTokenIds: [7], finishReason: 'length' } as unknown as RequestOutput;
      })();
    },
    completeExternalKv(id: string, ok: boolean) {
      completed.push({ id, ok, at: performance.now() });
      release();
    },
    abort() {},
  };
  return { engine: engine as unknown as Engine, completed };
}

describe('a prefill job whose decode worker the prefill worker cannot find', () => {
  it('is marked dropped and taken back at once by the decode worker, which prefills locally', async () => {
    const claims = new PrefillClaims(client, 'test-drop');
    const pushed: RemotePrefillJob[] = [];
    const queue = { depth: async () => 0, push: async (job: RemotePrefillJob) => void pushed.push(job) } as unknown as PrefillQueue;
    const decode = parkingEngine();
    const logs: string[] = [];
    const decoder = new RemotePrefillDecoder({
      engine: decode.engine,
      workerId: 'worker-0' as WorkerId,
      instanceId: 'new-instance',
      blockSize: 16,
      maxLocalPrefillLength: 16,
      maxPrefillQueueSize: 8,
      deadlineMs: 60_000,
      queue,
      claims,
      isWriterAlive: async () => true,
      log: (_level, msg) => logs.push(msg),
    });
    const requestId = 'req-drop-0' as RequestId;
    const started = performance.now();
    const outputs = (async () => {
      const out: RequestOutput[] = [];
      for await (const o of decoder.generate({ requestId, promptTokenIds: Array.from({ length: 40 }, (_, i) => i + 1), sampling: { maxTokens: 1 } }, new AbortController().signal)) out.push(o);
      return out;
    })();
    const until = async (what: string, check: () => boolean | Promise<boolean>) => {
      const end = Date.now() + 10_000;
      while (!(await check())) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    await until('the job pushed', () => pushed.length === 1);
    expect(await claims.get(requestId)).toBe('pending');

    // The prefill side: the lease of worker-0 names the instance before the restart.
    const runner = new PrefillJobRunner({
      engine: { generate: () => expect.fail('a dropped job must not be run') } as unknown as Engine,
      transfer: {} as KvTransfer,
      workerId: 'prefill-0' as WorkerId,
      instanceId: 'prefill-instance',
      blockSize: 16,
      claims,
      lookupWorker: async () => ({ instanceId: 'old-instance', transfer: 'agent-metadata' }),
      log: (_level, msg) => logs.push(msg),
    });
    await runner.run(pushed[0]!, 1);
    expect(runner.counters.prefill_jobs_dropped).toBe(1);
    expect(await claims.get(requestId)).toBe('dropped:prefill-0/prefill-instance');

    const out = await outputs;
    expect(out.at(-1)?.finishReason).toBe('length');
    expect(decode.completed).toEqual([expect.objectContaining({ id: requestId, ok: false })]);
    // At the next claim check (every 500 ms), not at the 60 s deadline.
    expect(decode.completed[0]!.at - started).toBeLessThan(5_000);
    expect(decoder.counters.fallbacks).toBe(1);
    expect(await claims.get(requestId)).toBe('local');
    expect(logs.some((m) => /remote prefill given up \(its prefill worker prefill-0\/prefill-instance dropped the job\): prefilling locally/.test(m))).toBe(true);
  }, 30_000);
});
