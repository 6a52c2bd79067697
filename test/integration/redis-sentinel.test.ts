// redis-sentinel.test.ts: a deployment on a Redis that Sentinel watches (--redis-url
// redis+sentinel://HOST:PORT/MASTER): a master, its replica and one sentinel, all real
// redis-server processes; the real launcher: Example 4 (its prefill jobs through the queue), then
// kv routing over two workers, whose master is killed with -9 mid-load: the sentinel promotes
// the replica, every request sent before, during and after the failover is answered, and the KV
// events reach the router through the new master.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { parseSentinelUrl } from '../../ts/runtime/redis-connection.ts';
import { freePort, launch, metricValue, until, type Launched } from '../helpers/launcher.ts';

const MASTER = 'kvserve-test';
const procs: ChildProcess[] = [];
let dir: string;
let ports: { master: number; replica: number; sentinel: number };
let server: Launched;

function redisServer(args: string[]): ChildProcess {
  const p = spawn('redis-server', args, { stdio: 'ignore' });
  procs.push(p);
  return p;
}

const cli = (port: number, ...args: string[]) => spawnSync('redis-cli', ['-p', String(port), ...args], { encoding: 'utf8' }).stdout.trim();

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvserve-sentinel-'));
  ports = { master: await freePort(), replica: await freePort(), sentinel: await freePort() };
  const common = ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir];
  redisServer(['--port', String(ports.master), ...common]);
  redisServer(['--port', String(ports.replica), ...common, '--replicaof', '127.0.0.1', String(ports.master)]);
  await until('master and replica', async () => cli(ports.replica, 'info', 'replication').includes('master_link_status:up'));
  const conf = path.join(dir, 'sentinel.conf');
  fs.writeFileSync(
    conf,
    [
      `port ${ports.sentinel}`,
      'bind 127.0.0.1',
      `dir ${dir}`,
      `sentinel monitor ${MASTER} 127.0.0.1 ${ports.master} 1`,
      `sentinel down-after-milliseconds ${MASTER} 1000`,
      `sentinel failover-timeout ${MASTER} 5000`,
    ].join('\n') + '\n',
  );
  redisServer([conf, '--sentinel']);
  await until('the sentinel', async () => cli(ports.sentinel, 'sentinel', 'get-master-addr-by-name', MASTER).endsWith(String(ports.master)));
}, 60_000);

afterAll(async () => {
  await server?.stop();
  for (const p of procs) p.kill('SIGKILL');
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('--redis-url redis+sentinel://', () => {
  it('parses the sentinels, the master and the passwords, and refuses a URL without a master', () => {
    expect(parseSentinelUrl('redis://127.0.0.1:6379')).toBeUndefined();
    expect(parseSentinelUrl('redis+sentinel://:pw@10.0.0.1:26379,[fd00::2]:26380/main?sentinelPassword=sp')).toEqual({
      sentinels: [{ host: '10.0.0.1', port: 26379 }, { host: 'fd00::2', port: 26380 }],
      name: 'main',
      password: 'pw',
      sentinelPassword: 'sp',
    });
    expect(() => parseSentinelUrl('redis+sentinel://10.0.0.1:26379/')).toThrow(/MASTER_NAME/);
    expect(() => parseSentinelUrl('redis+sentinel://10.0.0.1/main')).toThrow(/HOST:PORT/);
  });

  it('carries prefill jobs through the queue on the master Sentinel names (Example 4)', async () => {
    const modelDir = (await ensureModel('tiny-llama')).dir;
    const disagg = await launch([
      '--model', modelDir, '--decode-workers', '1', '--prefill-workers', '1', '--max-local-prefill-length', '16', '--kv-cache-memory', '64MiB',
      '--redis-url', `redis+sentinel://127.0.0.1:${ports.sentinel}/${MASTER}`, '--http-port', String(await freePort()),
    ]);
    try {
      const client = new OpenAI({ baseURL: `${disagg.url}/v1`, apiKey: 'none', maxRetries: 0 });
      const model = (await client.models.list()).data[0]!.id;
      const r = await client.completions.create({ model, prompt: 'a prompt long enough to be prefilled remotely '.repeat(6), max_tokens: 3 });
      expect(r.choices[0]!.finish_reason).toBe('length');
      const text = await (await fetch(`${disagg.url}/metrics`)).text();
      expect(Number(/^kvserve:remote_prefills_total\{[^}]*\} (\d+)$/m.exec(text)?.[1])).toBeGreaterThanOrEqual(1);
    } finally {
      await disagg.stop();
    }
  }, 120_000);

  // After the one above stopped (its worker ids are this deployment's too, and two live workers
  // never share one).
  it('serves through the master Sentinel names, and on through a failover to the replica', async () => {
    const modelDir = (await ensureModel('tiny-llama')).dir;
    server = await launch([
      '--model', modelDir, '--workers', '2', '--router', 'kv', '--kv-cache-memory', '64MiB',
      '--redis-url', `redis+sentinel://127.0.0.1:${ports.sentinel}/${MASTER}`, '--http-port', String(await freePort()),
    ]);
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'none', maxRetries: 0 });
    const model = (await client.models.list()).data[0]!.id;
    await until('both workers in the router', async () => (await fetch(`${server.url}/metrics`)).text().then((t) => t.split('\n').filter((l) => l.startsWith('kvserve:worker_num_requests_running{')).length === 2));
    const ask = (i: number) => client.completions.create({ model, prompt: `sentinel request ${i} `.repeat(8), max_tokens: 3 });
    for (let i = 0; i < 4; i++) expect((await ask(i)).choices[0]!.finish_reason).toBe('length');
    await until('blocks in the router index', async () => (await metricValue(server, 'kvserve:router_indexed_blocks')) > 0);

    // Load across the failover: a request at a time, each one answered.
    let stop = false;
    let served = 0;
    const load = (async () => {
      for (let i = 100; !stop && i < 10_000; i++) {
        expect((await ask(i)).choices[0]!.finish_reason).toBe('length');
        served++;
      }
    })();
    await until('some load', async () => served >= 3);
    const master = procs[0]!;
    master.kill('SIGKILL');
    await until('the replica promoted', async () => cli(ports.sentinel, 'sentinel', 'get-master-addr-by-name', MASTER).endsWith(String(ports.replica)), 30_000);
    const promotedAt = served;
    await until('requests after the failover', async () => served >= promotedAt + 5, 30_000);
    // The KV events of new prompts reach the router through the new master.
    const before = await metricValue(server, 'kvserve:router_indexed_blocks');
    for (let i = 0; i < 3; i++) await client.completions.create({ model, prompt: `after the failover ${i} `.repeat(12), max_tokens: 2 });
    await until('new blocks indexed through the new master', async () => (await metricValue(server, 'kvserve:router_indexed_blocks')) > before, 20_000);
    stop = true;
    await load;
    expect(cli(ports.replica, 'info', 'replication')).toContain('role:master');
    // The frontend saw Redis go and come back as another server (its run id), and had the workers replay.
    expect(server.output()).toMatch(/"reason":"redis-restarted".*asking every worker to replay/);
    expect(Number(cli(ports.replica, 'dbsize'))).toBeGreaterThan(0); // the leases and streams live there now
  }, 120_000);
});
