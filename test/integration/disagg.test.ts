// Disaggregated prefill and decode end to end (the seed's Example 4): the real launcher with
// --decode-workers 1 --prefill-workers 1 over a real Redis, BullMQ's prefill queue, and the
// native transfer agent writing KV blocks from the prefill worker's pool into the decode
// worker's shared-memory pool. Checked against an aggregated deployment of the same model:
// the same greedy tokens, whether the prompt was prefilled remotely, locally (short, queue
// full), after a missed deadline, or after the prefill worker was killed mid-job.
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPrivateRedis, type PrivateRedis } from '../../ts/launcher/redis.ts';
import { ensureModel } from '../../ts/modelgen/index.ts';
import type { WorkerLoad } from '../../ts/protocol/index.ts';
import { getWorker } from '../../ts/runtime/discovery.ts';
import { freePort, launch, type Launched } from '../helpers/launcher.ts';
import { promptTokens } from '../helpers/prompts.ts';

const MAX_LOCAL = 64;
const DEADLINE_MS = 8000;
let redis: PrivateRedis;
let client: Redis;
let agg: Launched;
let disagg: Launched;

const tokens = promptTokens;

async function complete(url: string, prompt: number[]): Promise<string> {
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt, max_tokens: 12, temperature: 0, ignore_eos: true }),
  });
  const body = (await res.json()) as { choices?: { text: string }[]; error?: unknown };
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${JSON.stringify(body)}`);
  return body.choices![0]!.text;
}

// The decode worker's value of a per-worker series on the frontend's /metrics.
async function metric(name: string): Promise<number> {
  const text = await (await fetch(`${disagg.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(name) && l.includes('worker_id="worker-0"'));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 20_000, everyMs = 100): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const prefillPid = async () => (await getWorker(client, 'kvserve', 'prefill-0'))!.pid;

beforeAll(async () => {
  const modelDir = (await ensureModel('tiny-llama')).dir;
  redis = await startPrivateRedis();
  client = new Redis(redis.url);
  [agg, disagg] = await Promise.all([
    launch(['--model', modelDir, '--http-port', String(await freePort()), '--kv-cache-memory', '64MiB']),
    launch(['--model', modelDir, '--decode-workers', '1', '--prefill-workers', '1', '--redis-url', redis.url,
      '--http-port', String(await freePort()), '--kv-cache-memory', '64MiB', '--max-local-prefill-length', String(MAX_LOCAL),
      '--prefill-deadline-ms', String(DEADLINE_MS), '--restart']),
  ]);
}, 240_000);

afterAll(async () => {
  await Promise.all([agg?.stop(), disagg?.stop()]);
  client?.disconnect();
  await redis?.stop();
});

describe('disaggregated serving', () => {
  it('gives the tokens of aggregated serving, prefilling long prompts remotely and short ones locally', async () => {
    const long = tokens(1, 700);
    const sharing = [...long.slice(0, 512), ...tokens(2, 200)]; // hits the decode worker's cache
    const short = tokens(3, MAX_LOCAL - 10);
    const before = { remote: await metric('kvserve:remote_prefills_total'), local: await metric('kvserve:local_prefills_total') };
    for (const prompt of [long, sharing]) expect(await complete(disagg.url, prompt)).toBe(await complete(agg.url, prompt));
    expect(await metric('kvserve:remote_prefills_total')).toBe(before.remote + 2);
    expect(await metric('kvserve:kv_transfer_bytes_total')).toBeGreaterThan(0);
    expect(await metric('kvserve:kv_transfer_seconds_total')).toBeGreaterThan(0);

    expect(await complete(disagg.url, short)).toBe(await complete(agg.url, short));
    // Long, but all but its last 32 tokens are in the decode worker's cache: uncached 32 <= 64.
    const mostlyCached = [...long, ...tokens(4, 32)];
    expect(await complete(disagg.url, mostlyCached)).toBe(await complete(agg.url, mostlyCached));
    expect(await metric('kvserve:local_prefills_total')).toBe(before.local + 2);
    expect(await metric('kvserve:remote_prefills_total')).toBe(before.remote + 2);
    await until('no KV blocks held', async () => (await metric('kvserve:worker_kv_active_blocks')) === 0);
  }, 60_000);

  it('a constrained request prefilled remotely follows its grammar, with the tokens of aggregated serving', async () => {
    const body = (prompt: number[]) => ({ prompt, max_tokens: 60, temperature: 0, guided_regex: '[a-z]{2,8}-[0-9]{1,3}' });
    const post = async (url: string, prompt: number[]) => {
      const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body(prompt)) });
      expect(res.status).toBe(200);
      return ((await res.json()) as { choices: { text: string }[] }).choices[0]!.text;
    };
    const before = await metric('kvserve:remote_prefills_total');
    const prompt = tokens(20, 300);
    const text = await post(disagg.url, prompt);
    expect(text).toMatch(/^[a-z]{2,8}-[0-9]{1,3}$/);
    expect(text).toBe(await post(agg.url, prompt));
    expect(await metric('kvserve:remote_prefills_total')).toBe(before + 1);
  }, 60_000);

  it('prefills locally when the queue is full, and after a missed deadline, with the same tokens', async () => {
    const pid = await prefillPid();
    process.kill(pid, 'SIGSTOP'); // jobs pile up in the queue (default size 2)
    try {
      const prompts = [tokens(10, 300), tokens(11, 300), tokens(12, 300)];
      const before = { local: await metric('kvserve:local_prefills_total'), fallbacks: await metric('kvserve:remote_prefill_fallbacks_total') };
      const started = Date.now();
      const first = [complete(disagg.url, prompts[0]!), complete(disagg.url, prompts[1]!)];
      await until('two jobs queued', async () => (await client.llen('{kvserve}:prefill:wait')) === 2);
      const third = await complete(disagg.url, prompts[2]!); // the queue holds 2: local at once
      expect(Date.now() - started).toBeLessThan(DEADLINE_MS);
      expect(await metric('kvserve:local_prefills_total')).toBe(before.local + 1);
      const texts = await Promise.all(first); // nobody took them: local after the deadline
      expect(Date.now() - started).toBeGreaterThanOrEqual(DEADLINE_MS);
      expect(await metric('kvserve:remote_prefill_fallbacks_total')).toBe(before.fallbacks + 2);
      expect([...texts, third]).toEqual(await Promise.all(prompts.map((p) => complete(agg.url, p))));
    } finally {
      process.kill(pid, 'SIGCONT'); // it finds the stale jobs and drops them unwritten
    }
    await until('stale jobs drained', async () => (await client.llen('{kvserve}:prefill:wait')) === 0);
    await until('no KV blocks held', async () => (await metric('kvserve:worker_kv_active_blocks')) === 0);
  }, 60_000);

  it('a client that gives up on a queued prompt frees its blocks, and the job is dropped unwritten', async () => {
    const prefill = (await getWorker(client, 'kvserve', 'prefill-0'))!;
    const counters = async () => ((await (await fetch(`${prefill.address}/load`)).json()) as WorkerLoad).disagg!;
    const before = await counters();
    const pid = prefill.pid;
    process.kill(pid, 'SIGSTOP');
    try {
      const abort = new AbortController();
      const res = fetch(`${disagg.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: tokens(30, 400), max_tokens: 8, stream: true }),
        signal: abort.signal,
      }).then((r) => r.text());
      await until('the job queued', async () => (await client.llen('{kvserve}:prefill:wait')) === 1);
      expect(await metric('kvserve:worker_kv_active_blocks')).toBeGreaterThan(0);
      abort.abort();
      await expect(res).rejects.toThrow();
      await until('blocks freed', async () => (await metric('kvserve:worker_kv_active_blocks')) === 0);
      const claims = await client.keys('{kvserve}:prefill-claim:*');
      expect(await Promise.all(claims.map((k) => client.get(k)))).toContain('aborted');
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    // The prefill worker takes the job, finds its claim taken back, and drops it unwritten.
    await until('the job dropped', async () => (await counters()).prefill_jobs_dropped > before.prefill_jobs_dropped);
    expect((await counters()).prefill_jobs).toBe(before.prefill_jobs);
    expect(await metric('kvserve:worker_kv_active_blocks')).toBe(0);
  }, 60_000);

  it('completes a request whose prefill worker is killed with -9 mid-job, taking the job back before its deadline', async () => {
    const prompt = tokens(20, 4000);
    const pid = await prefillPid();
    const started = Date.now();
    const text = complete(disagg.url, prompt);
    // Mid-job: the job is active and its claim names the worker (a prefill worker takes the claim
    // just after the queue hands it the job).
    const claimed = async () => {
      const claims = await client.keys('{kvserve}:prefill-claim:*');
      return (await Promise.all(claims.map((k) => client.get(k)))).some((v) => /^taken:prefill-0\//.test(v ?? ''));
    };
    await until('the job is claimed', async () => (await client.llen('{kvserve}:prefill:active')) > 0 && (await claimed()), 10_000, 5);
    const fallbacksBefore = await metric('kvserve:remote_prefill_fallbacks_total');
    process.kill(pid, 'SIGKILL');
    expect(await claimed()).toBe(true);
    const got = await text;
    // Taken back once its lease lapsed (or its restart replaced the lease), not at the deadline.
    expect(Date.now() - started).toBeLessThan(DEADLINE_MS);
    expect(disagg.output()).toMatch(/remote prefill given up \(its prefill worker prefill-0\/\S+ lost its lease\): prefilling locally/);
    expect(await metric('kvserve:remote_prefill_fallbacks_total')).toBe(fallbacksBefore + 1);
    expect(got).toBe(await complete(agg.url, prompt));
    await until('no KV blocks held', async () => (await metric('kvserve:worker_kv_active_blocks')) === 0);
    // The launcher (--restart) brings a new prefill worker, which serves the next long prompt.
    await until('a new prefill worker', async () => (await getWorker(client, 'kvserve', 'prefill-0'))?.pid !== pid, 60_000);
    const before = await metric('kvserve:remote_prefills_total');
    const next = tokens(21, 400);
    expect(await complete(disagg.url, next)).toBe(await complete(agg.url, next));
    expect(await metric('kvserve:remote_prefills_total')).toBe(before + 1);
  }, 120_000);
});
