// worker-node-drain.test.ts: SIGTERM to a node of workers only (`--role worker`), which a rolling
// update of the workers' Deployment sends: its workers leave the frontends' routing at once and
// finish the streams they have, and the node exits once they are done; requests sent meanwhile go
// to the leader's worker. The real launcher, twice (a leader with a worker, and a worker node on
// the leader's Redis), the official openai client.
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPrivateRedis, type PrivateRedis } from '../../ts/launcher/redis.ts';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { childPids, freePort, launch, launchNode, until, type Launched } from '../helpers/launcher.ts';

let redis: PrivateRedis;
let leader: Launched;
let node: Launched;

beforeAll(async () => {
  const modelDir = (await ensureModel('tiny-llama')).dir;
  redis = await startPrivateRedis();
  const common = ['--model', modelDir, '--redis-url', redis.url, '--workers', '1', '--kv-cache-memory', '64MiB'];
  leader = await launch([...common, '--http-port', String(await freePort())]);
  node = await launchNode(['--role', 'worker', ...common, '--advertise-host', '127.0.0.1', '--shutdown-grace-s', '60']);
  await until('both workers in the frontend', async () => {
    const text = await (await fetch(`${leader.url}/metrics`)).text();
    return text.split('\n').filter((l) => l.startsWith('kvserve:worker_num_requests_running{')).length === 2;
  });
}, 240_000);

afterAll(async () => {
  node?.proc.kill('SIGKILL');
  await leader?.stop();
  await redis?.stop();
});

describe('a worker node on SIGTERM', () => {
  it('finishes its streams, takes no new ones, and exits once they are done', async () => {
    const client = new OpenAI({ baseURL: `${leader.url}/v1`, apiKey: 'none', maxRetries: 0 });
    const model = (await client.models.list()).data[0]!.id;
    // Streams on both nodes' workers (round-robin); the worker node's are the ones the drain must finish.
    const run = async (i: number) => {
      const s = await client.completions.create({
        model,
        prompt: `drain ${i}`,
        max_tokens: 400,
        stream: true,
        stream_options: { include_usage: true },
        ignore_eos: true,
      } as OpenAI.CompletionCreateParamsStreaming);
      let tokens = 0;
      let finish: string | null = null;
      for await (const chunk of s) {
        finish = chunk.choices[0]?.finish_reason ?? finish;
        tokens = chunk.usage?.completion_tokens ?? tokens;
      }
      return { tokens, finish };
    };
    const streams = Array.from({ length: 4 }, (_, i) => run(i));
    await new Promise((r) => setTimeout(r, 1500)); // every stream has started and is mid-way
    const drained = node;
    const workerPids = childPids(drained.proc.pid!);
    const signalledAt = Date.now();
    drained.proc.kill('SIGTERM');
    // Requests sent while it drains are served (by the leader's worker, or by this one before the
    // frontend's next probe sets it aside), none refused.
    const during = await Promise.all(Array.from({ length: 4 }, (_, i) => client.completions.create({ model, prompt: `during ${i}`, max_tokens: 4 })));
    for (const r of during) expect(r.choices[0]!.finish_reason).toBeTruthy();
    for (const r of await Promise.all(streams)) expect(r).toEqual({ tokens: 400, finish: 'length' });
    // Finished where they ran: none was cut and migrated to the leader's worker.
    const metrics = await (await fetch(`${leader.url}/metrics`)).text();
    expect(metrics).toMatch(/^kvserve:request_migrations_total\{[^}]*\} 0$/m);
    const code = await drained.exited;
    expect(code).toBe(0);
    expect(Date.now() - signalledAt).toBeLessThan(60_000);
    expect(drained.output()).toMatch(/SIGTERM: draining \(the frontends stop sending requests here; streams in flight have 60 s\)/);
    expect(drained.output()).toMatch(/draining: \d+ request\(s\) in flight/);
    expect(drained.output()).not.toMatch(/still in flight are cut/);
    for (const pid of workerPids) expect(() => process.kill(pid, 0)).toThrow();
    // Later requests go to the worker that is left.
    const after = await client.completions.create({ model, prompt: 'after', max_tokens: 4 });
    expect(after.choices[0]!.finish_reason).toBe('length');
  }, 120_000);
});
