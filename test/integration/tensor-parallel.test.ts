// Tensor parallelism through the real launcher: a worker of N rank processes (--worker-tp N)
// gives the greedy tokens of a one-rank worker where the margin allows, for requests batched
// together; a rank killed with
// -9 fails the request in flight with an error and, under --restart, the worker comes back with
// new ranks and serves the next request. Then the seed's Examples 5 and 6, and prefill and decode
// workers of other TP sizes, over a real Redis (the launcher's own).
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { freePort, launch, type Launched } from '../helpers/launcher.ts';
import { promptTokens } from '../helpers/prompts.ts';

let modelDir: string;
let agg: Launched;
let tp2: Launched;
let tp4: Launched;

const prompt = promptTokens;

async function complete(url: string, p: number[], maxTokens = 12): Promise<string> {
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: p, max_tokens: maxTokens, temperature: 0, ignore_eos: true }),
  });
  const body = (await res.json()) as { choices?: { text: string }[]; error?: unknown };
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${JSON.stringify(body)}`);
  return body.choices![0]!.text;
}

interface Scored {
  tokens: string[];
  top: Record<string, number>[]; // the two likeliest tokens at each position, with logprobs
}

async function scored(url: string, p: number[]): Promise<Scored> {
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: p, max_tokens: 12, temperature: 0, ignore_eos: true, logprobs: 2 }),
  });
  const body = (await res.json()) as { choices?: { logprobs: { tokens: string[]; top_logprobs: Record<string, number>[] } }[] };
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${JSON.stringify(body)}`);
  return { tokens: body.choices![0]!.logprobs.tokens, top: body.choices![0]!.logprobs.top_logprobs };
}

// Ranks sum in another order than one rank does, and a bf16 KV cache rounds the difference, so a
// long prompt's logprobs move by a few hundredths: the greedy tokens must be the reference's up
// to the first position where its two likeliest tokens are closer than MARGIN, where the other
// one may win instead (from there on the sequences differ). Every logprob compared stays within
// MARGIN of the reference's.
const MARGIN = 0.15;
function expectSameWhereMarginAllows(got: Scored, want: Scored): void {
  for (let i = 0; i < want.tokens.length; i++) {
    const ref = Object.values(want.top[i]!).sort((a, b) => b - a);
    const mine = got.top[i]![want.tokens[i]!];
    if (mine !== undefined) expect(Math.abs(mine - ref[0]!)).toBeLessThan(MARGIN);
    if (got.tokens[i] === want.tokens[i]) continue;
    expect(ref[0]! - ref[1]!, `position ${i}: ${JSON.stringify(got.tokens[i])} instead of ${JSON.stringify(want.tokens[i])}`).toBeLessThan(MARGIN);
    expect(Object.keys(want.top[i]!)).toContain(got.tokens[i]);
    return;
  }
}

// Every process below `root`, with its command line.
function descendants(root: number): { pid: number; cmd: string }[] {
  const parent = new Map<number, number>();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      parent.set(Number(d), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // gone meanwhile
    }
  }
  const out: { pid: number; cmd: string }[] = [];
  const below = (pid: number): boolean => {
    for (let p = parent.get(pid); p !== undefined && p > 1; p = parent.get(p)) if (p === root) return true;
    return false;
  };
  for (const pid of parent.keys()) {
    if (!below(pid)) continue;
    try {
      out.push({ pid, cmd: fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ') });
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

const ranksOf = (l: Launched) => descendants(l.proc.pid!).filter((p) => p.cmd.includes('tp-rank-main.ts'));

beforeAll(async () => {
  modelDir = (await ensureModel('tiny-llama')).dir; // 8 heads, 2 kv heads: TP 2 splits them, TP 4 replicates
  const common = ['--model', modelDir, '--device', 'cpu', '--kv-cache-memory', '64MiB'];
  [agg, tp2, tp4] = await Promise.all([
    launch([...common, '--http-port', String(await freePort())]),
    launch([...common, '--worker-tp', '2', '--http-port', String(await freePort())]),
    launch([...common, '--worker-tp', '4', '--http-port', String(await freePort()), '--restart']),
  ]);
}, 240_000);

afterAll(async () => {
  await Promise.all([agg?.stop(), tp2?.stop(), tp4?.stop()]);
});

describe('tensor-parallel workers', () => {
  it('start N - 1 rank processes beside the worker and say so', () => {
    expect(ranksOf(tp2)).toHaveLength(1);
    expect(ranksOf(tp4)).toHaveLength(3);
    expect(tp4.output()).toMatch(/worker-0\] engine: cpu, .* 4 tensor-parallel ranks/);
  });

  it('give the greedy tokens of one rank where the margin allows, for requests batched together', async () => {
    const prompts = [prompt(1, 5), prompt(2, 40), prompt(3, 130), prompt(4, 17), prompt(5, 300), prompt(6, 64)];
    const want = await Promise.all(prompts.map((p) => scored(agg.url, p)));
    for (const l of [tp2, tp4]) {
      const got = await Promise.all(prompts.map((p) => scored(l.url, p))); // batched together
      prompts.forEach((_, i) => expectSameWhereMarginAllows(got[i]!, want[i]!));
    }
  }, 120_000);

  it('a rank killed with -9 fails the request in flight; under --restart the worker returns with new ranks', async () => {
    const before = ranksOf(tp4);
    const victim = before.find((r) => r.cmd.includes('--rank 2'))!;
    const inFlight = complete(tp4.url, prompt(7, 50), 4000).then(
      () => 'completed',
      (e: Error) => e.message,
    );
    await new Promise((r) => setTimeout(r, 500)); // decoding
    process.kill(victim.pid, 'SIGKILL');
    const outcome = await inFlight;
    expect(outcome).not.toBe('completed');
    expect(outcome, `the deployment's log ends:\n${tp4.output().slice(-4000)}`).toMatch(/HTTP 502: .*rank 2 \(pid \d+\) exited/);
    // The worker stops, noticing the death either by the rank's exit or by its failed all-reduce.
    await expect
      .poll(() => tp4.output(), { timeout: 10_000 })
      .toMatch(/(tensor-parallel rank 2 exited \(signal SIGKILL\)|rank 2 \(pid \d+\) exited before barrier \d+); the worker stops/);
    // The launcher restarts the worker, which starts three new ranks.
    await expect
      .poll(async () => complete(tp4.url, prompt(8, 20)).then(() => true, () => false), { timeout: 60_000, interval: 500 })
      .toBe(true);
    const after = ranksOf(tp4);
    expect(after).toHaveLength(3);
    expect(after.map((r) => r.pid)).not.toContain(victim.pid);
    expectSameWhereMarginAllows(await scored(tp4.url, prompt(2, 40)), await scored(agg.url, prompt(2, 40)));
  }, 120_000);
});

// The seed's Examples 5 and 6 as written (plus a port and a KV cache size; the launcher starts its
// private Redis), and
// prefill and decode workers of other TP sizes: a long prompt is prefilled by a prefill worker and
// its KV written into the decode worker's ranks, each rank's KV heads from whichever source
// rank holds them; the tokens are those of one aggregated TP 1 worker.
describe('disaggregation between TP sizes', () => {
  const deployments: Launched[] = [];

  afterAll(async () => {
    await Promise.all(deployments.map((d) => d.stop()));
  });

  // The decode worker's value of a per-worker series on the frontend's /metrics.
  async function metric(l: Launched, name: string): Promise<number> {
    const text = await (await fetch(`${l.url}/metrics`)).text();
    const line = text.split('\n').find((x) => x.startsWith(name) && x.includes('worker_id="worker-0"'));
    return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
  }

  const cases: [string, string[]][] = [
    ['Example 5', ['--decode-workers', '1', '--prefill-workers', '4', '--decode-tp', '4', '--prefill-tp', '1']],
    ['Example 6', ['--decode-workers', '1', '--prefill-workers', '4', '--decode-tp', '4', '--prefill-tp', '1', '--router', 'kv']],
    ['prefill TP 2 -> decode TP 1', ['--decode-workers', '1', '--prefill-workers', '1', '--decode-tp', '1', '--prefill-tp', '2']],
    ['prefill TP 4 -> decode TP 2', ['--decode-workers', '1', '--prefill-workers', '1', '--decode-tp', '2', '--prefill-tp', '4']],
  ];
  it.each(cases)('%s gives the tokens of aggregated serving, long prompts prefilled remotely', async (_name, flags) => {
    const l = await launch([...flags, '--model', modelDir, '--device', 'cpu', '--kv-cache-memory', '64MiB', '--http-port', String(await freePort())]);
    deployments.push(l);
    const long = [prompt(11, 1100), prompt(12, 1300)]; // above the default --max-local-prefill-length 1000
    const short = prompt(13, 30);
    const before = await metric(l, 'kvserve:remote_prefills_total');
    for (const p of [...long, short]) expectSameWhereMarginAllows(await scored(l.url, p), await scored(agg.url, p));
    expect(await metric(l, 'kvserve:remote_prefills_total')).toBe(before + 2);
    await l.stop();
  }, 180_000);
});
