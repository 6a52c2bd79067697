// Supervision and shutdown through the real launcher: SIGTERM drains (new requests 503 with
// Retry-After, streams in flight finish, then nothing is left: no process, no shm segment);
// SIGTERM to `npm run start` reaches the launcher; kill -9 of the launcher leaves nothing
// running (workers, tensor-parallel ranks, the private redis-server); the private Redis is
// restarted on its port when it dies; a dead worker's shm segments go at once; a child whose
// restarts keep failing stops the launcher with its reason.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { packageRoot } from '../../ts/native/loader.ts';
import { alive, childPids, freePort, launch } from '../helpers/launcher.ts';
import { promptTokens } from '../helpers/prompts.ts';

let modelDir: string;

beforeAll(async () => {
  modelDir = (await ensureModel('tiny-llama')).dir;
});

// Every descendant of pid, depth first, with its start time: a pid the kernel reuses later for
// another process (a short-lived helper's, say) does not count as the same process.
interface Proc {
  pid: number;
  start: string;
}
function startTime(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}
function descendants(pid: number): Proc[] {
  return childPids(pid).flatMap((c) => {
    const start = startTime(c);
    return start === undefined ? [] : [{ pid: c, start }, ...descendants(c)];
  });
}
const running = (p: Proc) => alive(p.pid) && startTime(p.pid) === p.start;

const cmdline = (pid: number) => {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
  } catch {
    return '';
  }
};

const shmOf = (pid: number) => fs.readdirSync('/dev/shm').filter((n) => n.startsWith(`kvserve-${pid}-`));

async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 20_000, everyMs = 100): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await Promise.resolve(check()).catch(() => false)) return;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function complete(url: string, maxTokens = 2): Promise<Response> {
  return fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'hello', max_tokens: maxTokens }),
  });
}

// A streamed completion read to its end: its tokens (usage) and finish reason; `started`
// resolves at its first chunk.
function stream(url: string, maxTokens: number): { started: Promise<void>; done: Promise<{ tokens: number; finish: string | null; error?: unknown }> } {
  let onStart!: () => void;
  const started = new Promise<void>((r) => (onStart = r));
  const done = (async () => {
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: promptTokens(3, 20), max_tokens: maxTokens, ignore_eos: true, stream: true, stream_options: { include_usage: true } }),
    });
    let text = '';
    let tokens = 0;
    let finish: string | null = null;
    let error: unknown;
    const decoder = new TextDecoder();
    for await (const part of res.body!) {
      text += decoder.decode(part as Uint8Array, { stream: true });
      onStart();
      let nl: number;
      while ((nl = text.indexOf('\n\n')) >= 0) {
        const line = text.slice(0, nl).replace(/^data: /, '');
        text = text.slice(nl + 2);
        if (line === '[DONE]') continue;
        const chunk = JSON.parse(line);
        if (chunk.error) error = chunk.error;
        if (chunk.usage) tokens = chunk.usage.completion_tokens;
        if (chunk.choices?.[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
      }
    }
    onStart();
    return { tokens, finish, error };
  })();
  return { started, done };
}

describe('shutdown', () => {
  it('drains on SIGTERM: new requests get 503 with Retry-After, the streams in flight finish, then nothing is left', async () => {
    const l = await launch(['--model', modelDir, '--http-port', String(await freePort()), '--kv-cache-memory', '64MiB', '--shutdown-grace-s', '60']);
    const pids = descendants(l.proc.pid!);
    const streams = [stream(l.url, 600), stream(l.url, 600)];
    await Promise.all(streams.map((s) => s.started));
    l.proc.kill('SIGTERM');
    // The frontend refuses new work once it has heard.
    let refused: Response | undefined;
    await until('a 503 from the draining frontend', async () => {
      const res = await complete(l.url, 1);
      if (res.status === 503) refused = res;
      else await res.text();
      return res.status === 503;
    });
    expect(refused!.headers.get('retry-after')).toBe('5');
    expect(((await refused!.json()) as { error: { code: string } }).error.code).toBe('shutting_down');
    expect((await fetch(`${l.url}/ready`)).status).toBe(503);
    for (const s of streams) expect(await s.done).toEqual({ tokens: 600, finish: 'length', error: undefined });
    expect(await l.exited).toBe(0);
    for (const p of pids) expect(running(p), cmdline(p.pid)).toBe(false);
    for (const p of pids) expect(shmOf(p.pid)).toEqual([]);
    expect(l.output()).toMatch(/SIGTERM: draining/);
  }, 120_000);

  it('stops everything when npm run start gets SIGTERM', async () => {
    const port = await freePort();
    const npm = spawn('npm', ['run', 'start', '--', '--model', modelDir, '--http-port', String(port), '--kv-cache-memory', '64MiB', '--router', 'kv'], {
      cwd: packageRoot,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    npm.stdout!.on('data', (d) => (out += d));
    npm.stderr!.on('data', (d) => (out += d));
    await until('ready', () => /ready: http/.test(out), 120_000);
    const pids = descendants(npm.pid!);
    expect(pids.some((p) => cmdline(p.pid).includes('redis-server'))).toBe(true);
    npm.kill('SIGTERM');
    await until('every process of the deployment gone', () => pids.every((p) => !running(p)), 20_000);
  }, 150_000);

  it('leaves nothing running 5 s after kill -9 of the launcher: workers, tensor-parallel ranks, redis-server', async () => {
    const l = await launch(['--model', modelDir, '--http-port', String(await freePort()), '--kv-cache-memory', '64MiB', '--router', 'kv', '--worker-tp', '2']);
    const pids = descendants(l.proc.pid!);
    expect(pids.some((p) => cmdline(p.pid).includes('redis-server'))).toBe(true);
    expect(pids.some((p) => cmdline(p.pid).includes('tp-rank-main'))).toBe(true);
    l.proc.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 5000));
    for (const p of pids) expect(running(p), cmdline(p.pid)).toBe(false);
  }, 120_000);
});

describe('supervision', () => {
  it('restarts the private redis-server on its port when it is killed, and requests are served again', async () => {
    const l = await launch(['--model', modelDir, '--http-port', String(await freePort()), '--kv-cache-memory', '64MiB', '--router', 'kv']);
    try {
      const redisPid = childPids(l.proc.pid!).find((p) => cmdline(p).includes('redis-server'))!;
      expect((await complete(l.url)).status).toBe(200);
      process.kill(redisPid, 'SIGKILL');
      await until('redis-server restarted', () => /redis-server is back on port/.test(l.output()));
      const again = childPids(l.proc.pid!).find((p) => cmdline(p).includes('redis-server'));
      expect(again).toBeDefined();
      expect(again).not.toBe(redisPid);
      await until('a request served again', async () => (await complete(l.url)).status === 200, 30_000, 250);
      // A 503 while Redis was away is one warning line, not a stack trace.
      expect(l.output()).not.toMatch(/"stack":/);
    } finally {
      await l.stop();
    }
  }, 120_000);

  it("removes a dead worker's shared-memory segments at once and restarts it", async () => {
    const l = await launch(['--model', modelDir, '--http-port', String(await freePort()), '--kv-cache-memory', '64MiB', '--decode-workers', '1', '--prefill-workers', '1']);
    try {
      const prefill = childPids(l.proc.pid!).find((p) => cmdline(p).includes('"role":"prefill"'))!;
      expect(shmOf(prefill).length).toBeGreaterThan(0);
      process.kill(prefill, 'SIGKILL');
      await until('the segments removed', () => shmOf(prefill).length === 0, 2000, 20);
      await until('prefill-0 serving again', () => /prefill-0 is serving again/.test(l.output()), 60_000);
    } finally {
      await l.stop();
    }
  }, 120_000);

  it('stops with the reason when a restarted worker keeps failing to start', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvserve-vanishing-'));
    fs.cpSync(modelDir, dir, { recursive: true });
    const l = await launch(['--model', dir, '--http-port', String(await freePort()), '--kv-cache-memory', '64MiB']);
    const worker = childPids(l.proc.pid!).find((p) => cmdline(p).includes('worker/main.ts'))!;
    fs.rmSync(dir, { recursive: true, force: true }); // every restart now fails to load the model
    process.kill(worker, 'SIGKILL');
    expect(await l.exited).toBe(1);
    expect(l.output()).toMatch(/restarting it in 0.5 s/);
    expect(l.output()).toMatch(/kvserve: error: worker-0 failed to start again 3 times in a row; the last time: .*config\.json/);
  }, 120_000);
});
