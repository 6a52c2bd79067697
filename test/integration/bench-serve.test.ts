// `npm run bench` end to end against live tiny deployments, a few seconds each: the JSON has
// every metric and the right counts (random, multi-turn with its growing history, a trace
// replay, a concurrency sweep on a deployment of its own, with its charts); bad flags, an
// unreachable endpoint and a refused topology are clear errors; SIGTERM mid-run stops the
// deployment the bench started.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packageRoot } from '../../ts/native/loader.ts';
import type { Report, RunReport } from '../../bench/serve/report.ts';
import { freePort, launch, type Launched } from '../helpers/launcher.ts';

interface BenchRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

// Runs the bench CLI; `onStderr` may act on its progress (e.g. signal it).
function bench(args: string[], onStderr?: (text: string, proc: ReturnType<typeof spawn>) => void): Promise<BenchRun> {
  const proc = spawn(process.execPath, ['--import', 'tsx', path.join(packageRoot, 'bench/serve/main.ts'), ...args], {
    cwd: packageRoot,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (d) => (stdout += d));
  proc.stderr.on('data', (d) => {
    stderr += d;
    onStderr?.(stderr, proc);
  });
  return new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal, stdout, stderr })));
}

const portOpen = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });

let server: Launched;
let dir: string;
const readReport = (file: string) => JSON.parse(fs.readFileSync(file, 'utf8')) as Report;
const onlyRun = (r: Report) => r.groups[0]!.runs[0] as RunReport;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvserve-bench-'));
  server = await launch(['--http-port', String(await freePort()), '--kv-cache-memory', '128MiB', '--log-level', 'warn']);
});

afterAll(async () => {
  await server?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('npm run bench against --url', () => {
  it('random: every metric, every request, a table and charts', async () => {
    const out = path.join(dir, 'random.json');
    const r = await bench(['--url', server.url, '--num-prompts', '8', '--input-len', '32', '--output-len', '8', '--max-concurrency', '4',
      '--request-rate', '50', '--burstiness', '0.5', '--goodput', 'ttft:60000', 'tpot:60000', '--output-json', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('| TTFT |');
    const run = onlyRun(readReport(out));
    const s = run.summary;
    expect(s).toMatchObject({ requests: 8, completed: 8, failed: 0, totalInputTokens: 8 * 32, totalOutputTokens: 8 * 8 });
    for (const k of ['durationS', 'requestThroughput', 'requestGoodput', 'outputThroughput', 'totalTokenThroughput'] as const) expect(s[k]).toBeGreaterThan(0);
    for (const d of [s.ttftMs, s.tpotMs, s.itlMs, s.e2elMs]) for (const v of Object.values(d)) expect(Number.isFinite(v)).toBe(true);
    expect(s.requestGoodput).toBe(s.requestThroughput);
    expect(run.requests).toHaveLength(8);
    for (const q of run.requests) {
      expect(q).toMatchObject({ promptTokens: 32, maxTokens: 8, outputTokens: 8, error: null });
      expect(q.itlMs.length).toBeGreaterThan(0);
      expect(q.e2eMs!).toBeGreaterThanOrEqual(q.ttftMs!);
    }
    for (const chart of ['ttft-cdf', 'itl']) expect(fs.readFileSync(path.join(dir, `random-${chart}.svg`), 'utf8')).toMatch(/^<svg/);
    expect(fs.readFileSync(path.join(dir, 'random.md'), 'utf8')).toContain('| run | 8 (0) |');
  });

  it('multi-turn: each turn sends the whole history; trace: replays its requests', async () => {
    const mt = path.join(dir, 'mt.json');
    const r = await bench(['--url', server.url, '--dataset', 'multi-turn', '--num-prompts', '2', '--turns', '3', '--input-len', '20', '--output-len', '6', '--output-json', mt]);
    expect(r.code, r.stderr).toBe(0);
    const turns = onlyRun(readReport(mt)).requests.filter((q) => q.session === 0).sort((a, b) => a.turn - b.turn);
    expect(turns.map((q) => q.promptTokens)).toEqual([20, 46, 72]); // + 6 output + 20 new each turn
    expect(turns.every((q) => q.error === null)).toBe(true);

    const trace = path.join(dir, 'trace.json');
    const t = await bench(['--url', server.url, '--dataset', 'trace', '--num-prompts', '3', '--output-json', trace]);
    expect(t.code, t.stderr).toBe(0);
    const first3 = fs.readFileSync(path.join(packageRoot, 'bench/data/mooncake-sample.jsonl'), 'utf8').trim().split('\n')
      .map((line) => JSON.parse(line) as { timestamp: number; input_length: number })
      .sort((a, b) => a.timestamp - b.timestamp)
      .slice(0, 3);
    expect(onlyRun(readReport(trace)).summary).toMatchObject({ requests: 3, completed: 3, totalInputTokens: first3.reduce((n, x) => n + x.input_length, 0) });
  });

  it('bad flags, an unreachable endpoint and a refused topology are clear errors', async () => {
    const bad = await bench(['--num-prompts', 'lots']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--num-prompts must be an integer');
    const unknown = await bench(['--request-rat', '2']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("Unknown option '--request-rat'");
    const down = await bench(['--url', `http://127.0.0.1:${await freePort()}`]);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/cannot reach http:\/\/127\.0\.0\.1:\d+: connect ECONNREFUSED/);
    const refused = await bench(['--', '--workers', '0']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('the launcher refused: --workers 0: a leader without workers serves the workers of other nodes');
  });
});

describe('npm run bench with a deployment of its own', () => {
  it('sweeps concurrency, then stops the deployment', async () => {
    const port = await freePort();
    const out = path.join(dir, 'sweep.json');
    const r = await bench(['--concurrency', '1,3', '--num-prompts', '3', '--input-len', '16', '--output-len', '4', '--output-json', out,
      '--', '--http-port', String(port), '--kv-cache-memory', '64MiB']);
    expect(r.code, r.stderr).toBe(0);
    const report = readReport(out);
    expect(report.groups[0]!.runs.map((run) => (run as RunReport).maxConcurrency)).toEqual([1, 3]);
    expect(fs.readFileSync(path.join(dir, 'sweep-throughput.svg'), 'utf8')).toMatch(/^<svg/);
    expect(await portOpen(port)).toBe(false);
  });

  it('SIGTERM mid-run stops the deployment and exits 143', async () => {
    const port = await freePort();
    let sent = false;
    const r = await bench(['--num-prompts', '100', '--input-len', '16', '--output-len', '32', '--max-concurrency', '2', '--', '--http-port', String(port)], (text, proc) => {
      if (!sent && /run: \d+\/100/.test(text)) {
        sent = true;
        proc.kill('SIGTERM');
      }
    });
    expect(sent, r.stderr).toBe(true);
    expect(r.code).toBe(143);
    expect(await portOpen(port)).toBe(false);
  });
});
