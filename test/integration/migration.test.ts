// Request migration through the real launcher (--workers 2 --restart), the official `openai`
// client streaming: a worker killed with -9 while six greedy streams run moves its streams to
// the other worker, and every stream ends with finish_reason 'length', the token ids of an
// undisturbed run and its usage; seeded sampling (temperature 1, n = 2) continues the same way;
// the migrations show in /metrics and in one log line each; the KV router's pool (Redis) moves
// them the same way. With --migration-limit 0 the stream ends with the error it had before
// migration existed.
// Every deployment runs the reference CPU kernels: they compute a token with the same bits in the
// resumed request's prefill as in the undisturbed decode step, so the comparisons are exact
// whatever step the kill lands on (on avx512-bf16 they differ in the last bits, which can turn a
// greedy near-tie or a seeded draw: test/native/engine-resume.test.ts, README "Request migration").
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { freePort, launch, type Launched } from '../helpers/launcher.ts';
import { promptTokens } from '../helpers/prompts.ts';

let modelDir: string;
let dep: Launched;

const EXACT_KERNELS = { KVSERVE_CPU_KERNELS: 'reference' };

function start(extra: string[]): Promise<Launched> {
  return freePort().then((port) =>
    launch(['--model', modelDir, '--device', 'cpu', '--workers', '2', '--restart', '--kv-cache-memory', '64MiB', '--http-port', String(port), ...extra], EXACT_KERNELS),
  );
}

const MAX_TOKENS = 240;

interface StreamResult {
  tokens: Map<number, string[]>; // choice index -> its token ids ('token_id:N'), in order
  finish: Map<number, string | null>;
  usage?: { prompt_tokens: number; completion_tokens: number };
  error?: string;
}

type Sampling = { temperature: number; seed?: number; n?: number; top_k?: number; top_p?: number };

function client(url: string): OpenAI {
  return new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0 });
}

// One streamed completion; onToken is called after each chunk with the tokens seen so far.
async function stream(url: string, prompt: number[], s: Sampling, onToken: (n: number) => void = () => undefined): Promise<StreamResult> {
  const out: StreamResult = { tokens: new Map(), finish: new Map() };
  let seen = 0;
  try {
    const chunks = await client(url).completions.create({
      model: modelDir,
      prompt,
      max_tokens: MAX_TOKENS,
      ignore_eos: true,
      logprobs: 0,
      return_tokens_as_token_ids: true,
      stream: true,
      stream_options: { include_usage: true },
      ...s,
    } as OpenAI.CompletionCreateParamsStreaming);
    for await (const chunk of chunks) {
      if (chunk.usage) out.usage = chunk.usage;
      for (const c of chunk.choices) {
        const list = out.tokens.get(c.index) ?? [];
        list.push(...(c.logprobs?.tokens ?? []));
        out.tokens.set(c.index, list);
        seen += c.logprobs?.tokens?.length ?? 0;
        if (c.finish_reason) out.finish.set(c.index, c.finish_reason);
      }
      onToken(seen);
    }
  } catch (err) {
    out.error = (err as Error).message;
  }
  return out;
}

// Worker addresses from the launcher's "worker-N (monolith) ready at URL" lines.
function workerAddresses(l: Launched): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of l.output().matchAll(/(worker-\d+) \(monolith\) ready at (http:\/\/\S+)/g)) out.set(m[1]!, m[2]!);
  return out;
}

async function workerPid(address: string): Promise<number> {
  const info = (await (await fetch(`${address}/info`)).json()) as { pid: number };
  return info.pid;
}

async function migrations(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const m = /^kvserve:request_migrations_total\{[^}]*\} (\d+)/m.exec(text);
  return m ? Number(m[1]) : NaN;
}

// Runs the streams concurrently and kills worker-0 with -9 once every stream has `after` tokens.
async function streamsWithKill(l: Launched, prompts: number[][], s: Sampling, after: number): Promise<StreamResult[]> {
  const counts = prompts.map(() => 0);
  let release!: () => void;
  const allStarted = new Promise<void>((r) => (release = r));
  const running = prompts.map((p, i) =>
    stream(l.url, p, s, (n) => {
      counts[i] = n;
      if (counts.every((c) => c >= after)) release();
    }),
  );
  await allStarted;
  process.kill(await workerPid(workerAddresses(l).get('worker-0')!), 'SIGKILL');
  return Promise.all(running);
}

beforeAll(async () => {
  modelDir = (await ensureModel('tiny-llama')).dir;
  dep = await start([]);
}, 120_000);

afterAll(async () => {
  await dep?.stop();
});

describe('request migration', () => {
  it('moves greedy streams off a worker killed with -9: the tokens of an undisturbed run, finish length, usage as undisturbed', async () => {
    const prompts = Array.from({ length: 6 }, (_, i) => promptTokens(40 + i, 20 + 7 * i));
    const greedy = { temperature: 0 };
    const want = await Promise.all(prompts.map((p) => stream(dep.url, p, greedy)));
    for (const w of want) expect(w.tokens.get(0)).toHaveLength(MAX_TOKENS);
    const before = await migrations(dep.url);

    const got = await streamsWithKill(dep, prompts, greedy, 30);
    got.forEach((g, i) => {
      expect(g.error, `stream ${i}`).toBeUndefined();
      expect(g.tokens.get(0), `stream ${i}`).toEqual(want[i]!.tokens.get(0));
      expect(g.finish.get(0)).toBe('length');
      expect(g.usage).toMatchObject({ prompt_tokens: prompts[i]!.length, completion_tokens: MAX_TOKENS });
    });
    const moved = (await migrations(dep.url)) - before;
    expect(moved).toBeGreaterThanOrEqual(1);
    const lines = dep.output().match(/request migrated: its worker went away mid-stream/g) ?? [];
    expect(lines.length).toBeGreaterThanOrEqual(moved);
    expect(dep.output()).toMatch(/"fromWorker":"worker-0","toWorker":"worker-1"/);
  }, 120_000);

  it('continues seeded sampling (temperature 1, n = 2) from the step it reached', async () => {
    // A draw over the whole vocabulary: any other generator position would show at once.
    const exact = await start([]);
    try {
      const prompts = Array.from({ length: 3 }, (_, i) => promptTokens(60 + i, 30));
      const seeded = { temperature: 1, seed: 1234, n: 2 };
      const want = await Promise.all(prompts.map((p) => stream(exact.url, p, seeded)));

      const got = await streamsWithKill(exact, prompts, seeded, 2 * 30);
      got.forEach((g, i) => {
        expect(g.error, `stream ${i}`).toBeUndefined();
        for (const c of [0, 1]) {
          expect(g.tokens.get(c), `stream ${i} choice ${c}`).toEqual(want[i]!.tokens.get(c));
          expect(g.finish.get(c)).toBe('length');
        }
        expect(g.usage).toMatchObject({ prompt_tokens: prompts[i]!.length, completion_tokens: 2 * MAX_TOKENS });
      });
      expect(await migrations(exact.url)).toBeGreaterThanOrEqual(1);
    } finally {
      await exact.stop();
    }
  }, 120_000);

  it('moves streams the KV router placed (--router kv, over Redis) the same way', async () => {
    const routed = await start(['--router', 'kv']);
    try {
      const prompts = Array.from({ length: 4 }, (_, i) => promptTokens(90 + i, 24 + 5 * i));
      const greedy = { temperature: 0 };
      const want = await Promise.all(prompts.map((p) => stream(routed.url, p, greedy)));
      const got = await streamsWithKill(routed, prompts, greedy, 30);
      got.forEach((g, i) => {
        expect(g.error, `stream ${i}`).toBeUndefined();
        expect(g.tokens.get(0), `stream ${i}`).toEqual(want[i]!.tokens.get(0));
        expect(g.finish.get(0)).toBe('length');
      });
      // The router may have put every stream on worker-1; then nothing had to move.
      const moved = await migrations(routed.url);
      expect(moved).toBe((routed.output().match(/request migrated: its worker went away mid-stream/g) ?? []).length);
      if (moved > 0) expect(routed.output()).toMatch(/"fromWorker":"worker-0","toWorker":"worker-1"/);
    } finally {
      await routed.stop();
    }
  }, 120_000);

  it('with --migration-limit 0, a stream whose worker dies ends with the worker-unavailable error', async () => {
    const off = await start(['--migration-limit', '0']);
    try {
      // Round-robin: of two streams, one runs on worker-0.
      const got = await streamsWithKill(off, [promptTokens(80, 16), promptTokens(81, 16)], { temperature: 0 }, 20);
      const failed = got.filter((g) => g.error !== undefined);
      expect(failed).toHaveLength(1);
      expect(failed[0]!.error).toMatch(/worker at .* is unavailable: the worker closed the connection/);
      expect(got.find((g) => g.error === undefined)!.finish.get(0)).toBe('length');
      expect(await migrations(off.url)).toBe(0);
      expect(off.output()).not.toMatch(/request migrated/);
    } finally {
      await off.stop();
    }
  }, 120_000);
});
