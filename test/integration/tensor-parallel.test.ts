// Tensor parallelism through the real launcher: a worker of N rank processes (--worker-tp N)
// gives the greedy tokens of a one-rank worker, for requests batched together; a rank killed with
// -9 fails the request in flight with an error and, under --restart, the worker comes back with
// new ranks and serves the next request.
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { freePort, launch, type Launched } from '../helpers/launcher.ts';

let modelDir: string;
let agg: Launched;
let tp2: Launched;
let tp4: Launched;

function prompt(seed: number, len: number): number[] {
  let x = seed * 7919 + 17;
  return Array.from({ length: len }, () => {
    x = (x * 1103515245 + 12345) >>> 0;
    return 1000 + (x % 30000);
  });
}

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

  it('give the greedy tokens of one rank, for requests batched together', async () => {
    const prompts = [prompt(1, 5), prompt(2, 40), prompt(3, 130), prompt(4, 17), prompt(5, 300), prompt(6, 64)];
    const want = await Promise.all(prompts.map((p) => complete(agg.url, p, 16)));
    expect(await Promise.all(prompts.map((p) => complete(tp2.url, p, 16)))).toEqual(want);
    expect(await Promise.all(prompts.map((p) => complete(tp4.url, p, 16)))).toEqual(want);
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
    expect(outcome).toMatch(/HTTP 502: .*rank 2 \(pid \d+\) exited/);
    await expect.poll(() => tp4.output(), { timeout: 10_000 }).toMatch(/tensor-parallel rank 2 exited \(signal SIGKILL\); the worker stops/);
    // The launcher restarts the worker, which starts three new ranks.
    await expect
      .poll(async () => complete(tp4.url, prompt(8, 20)).then(() => true, () => false), { timeout: 60_000, interval: 500 })
      .toBe(true);
    const after = ranksOf(tp4);
    expect(after).toHaveLength(3);
    expect(after.map((r) => r.pid)).not.toContain(victim.pid);
    expect(await complete(tp4.url, prompt(2, 40), 16)).toBe(await complete(agg.url, prompt(2, 40), 16));
  }, 120_000);
});
