// The launcher's private Redis has a random password that no command line carries: through the
// real launcher with --router kv on the tiny model, redis-cli without the password is refused
// (NOAUTH), no process of the deployment has the password in /proc/PID/cmdline, requests are
// served (the router's discovery and event plane authenticate), and the log never shows it.
// Also: a --redis-url carrying a password (a Redis of the test's own, with requirepass) works for
// the router and the prefill queue and is never logged.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPrivateRedis, type PrivateRedis } from '../../ts/launcher/redis.ts';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { childPids, freePort, launch, until, type Launched } from '../helpers/launcher.ts';

let modelDir: string;

beforeAll(async () => {
  modelDir = (await ensureModel('tiny-llama')).dir;
});

const cmdline = (pid: number) => {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
  } catch {
    return '';
  }
};

function descendants(pid: number): number[] {
  return childPids(pid).flatMap((c) => [c, ...descendants(c)]);
}

async function complete(url: string): Promise<Response> {
  return fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'the same long prompt for every request, so the router sees a prefix '.repeat(8), max_tokens: 3 }),
  });
}

function redisCli(port: number, ...args: string[]): string {
  const r = spawnSync('redis-cli', ['-p', String(port), ...args], { encoding: 'utf8', env: { ...process.env, REDISCLI_AUTH: '' } });
  return `${r.stdout}${r.stderr}`.trim();
}

describe('the private Redis', () => {
  let l: Launched;
  afterAll(async () => {
    await l?.stop();
  });

  it('requires a password that is on no command line and in no log line, and requests are served', async () => {
    l = await launch(['--model', modelDir, '--router', 'kv', '--http-port', String(await freePort()), '--kv-cache-memory', '64MiB']);
    const procs = descendants(l.proc.pid!);
    const redisPid = procs.find((p) => cmdline(p).includes('redis-server'));
    expect(redisPid, 'a redis-server among the launcher descendants').toBeDefined();
    const port = Number(/127\.0\.0\.1:(\d+)/.exec(cmdline(redisPid!))?.[1] ?? /redis-server at redis:\/\/:\*\*\*@127\.0\.0\.1:(\d+)/.exec(l.output())?.[1]);
    expect(port).toBeGreaterThan(0);

    // (1) No password, no access.
    expect(redisCli(port, 'ping')).toMatch(/NOAUTH/);

    // The password, read the way a child gets it: from a worker's environment (its owner only).
    const worker = procs.find((p) => cmdline(p).includes('worker/main.ts'))!;
    const env = fs.readFileSync(`/proc/${worker}/environ`, 'utf8').split('\0');
    const url = env.find((e) => e.startsWith('KVSERVE_REDIS_URL='))!.slice('KVSERVE_REDIS_URL='.length);
    const password = new URL(url).password;
    expect(password.length).toBeGreaterThanOrEqual(32);
    expect(redisCli(port, '--no-auth-warning', '-a', password, 'ping')).toBe('PONG');

    // (3) Served, through the router (discovery and events in the protected Redis).
    for (let i = 0; i < 3; i++) {
      const res = await complete(l.url);
      expect(res.status).toBe(200);
      expect(res.headers.get('x-worker-id')).toBe('worker-0');
    }

    // (2) No command line carries it: the launcher, the workers, the frontend, Redis.
    for (const pid of [l.proc.pid!, ...descendants(l.proc.pid!)]) expect(cmdline(pid)).not.toContain(password);
    // (4) Nor the log.
    expect(l.output()).toMatch(/started a private redis-server at redis:\/\/:\*\*\*@127\.0\.0\.1:\d+/);
    expect(l.output()).not.toContain(password);
  }, 180_000);
});

describe('--redis-url with a password', () => {
  let redis: PrivateRedis;
  let l: Launched;
  afterAll(async () => {
    await l?.stop();
    await redis?.stop();
  });

  it('serves the router and the prefill queue through it and never logs it', async () => {
    redis = await startPrivateRedis();
    expect(redis.url).toMatch(/^redis:\/\/:[0-9a-f]{64}@127\.0\.0\.1:\d+$/);
    // Given in the environment (KVSERVE_REDIS_URL), so the launcher's command line has it neither.
    l = await launch(
      ['--model', modelDir, '--router', 'kv', '--decode-workers', '1', '--prefill-workers', '1', '--http-port', String(await freePort()), '--kv-cache-memory', '64MiB', '--max-local-prefill-length', '0'],
      { KVSERVE_REDIS_URL: redis.url },
    );
    const res = await complete(l.url);
    expect(res.status).toBe(200);
    // The decode worker sent its prompt to the prefill queue (BullMQ, in the protected Redis).
    await until('a remote prefill counted', async () => /kvserve:remote_prefills_total\{[^}]*\} [1-9]/.test(await (await fetch(`${l.url}/metrics`)).text()));
    for (const pid of [l.proc.pid!, ...descendants(l.proc.pid!)]) expect(cmdline(pid)).not.toContain(redis.password);
    expect(l.output()).not.toContain(redis.password);
  }, 180_000);

  it('is masked in the error for a malformed URL', async () => {
    const { runLauncher } = await import('../helpers/launcher.ts');
    const r = await runLauncher(['--redis-url', 'http://:hunter2hunter2@127.0.0.1:1']);
    expect(r.code).toBe(2);
    expect(r.output).toMatch(/--redis-url \(or KVSERVE_REDIS_URL\) must look like redis:\/\/host:port \(or redis\+sentinel:\/\/host:port,...\/master, or redis\+cluster:\/\/host:port,...\), got 'http:\/\/:\*\*\*@127\.0\.0\.1:1'/);
    expect(r.output).not.toContain('hunter2');
  });
});
