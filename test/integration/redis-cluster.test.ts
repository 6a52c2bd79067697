// redis-cluster.test.ts: a deployment on a Redis Cluster (--redis-url
// redis+cluster://:PW@HOST:PORT,...): three masters with a replica each, real redis-server
// processes with a password, made a cluster by redis-cli; the real launcher. A cluster node given
// as one server is refused, naming the URL to use; Example 4 carries its prefill jobs through the
// queue on the cluster (BullMQ's keys under the namespace's hash tag); kv routing over two
// workers goes on through a failover: the master holding the namespace's slot is killed with -9,
// its replica takes over, every request is answered, and new KV events reach the router.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { keyspace, maskRedisUrl, parseClusterUrl } from '../../ts/runtime/redis-connection.ts';
import { freePort, launch, metricValue, runLauncher, until, type Launched } from '../helpers/launcher.ts';

const PASSWORD = 'cluster-test-password';
const procs = new Map<number, ChildProcess>(); // port -> redis-server
let dir: string;
let ports: number[];
let url: string;
let server: Launched | undefined;

const cli = (port: number, ...args: string[]) =>
  spawnSync('redis-cli', ['-p', String(port), '--no-auth-warning', '-a', PASSWORD, ...args], { encoding: 'utf8', timeout: 60_000 }).stdout.trim();

// The port of the master that serves the namespace's hash slot now, asked of a live node.
function ownerOfNamespace(askPort: number): number | undefined {
  const slot = Number(cli(askPort, 'cluster', 'keyslot', keyspace('kvserve')));
  for (const line of cli(askPort, 'cluster', 'nodes').split('\n')) {
    const f = line.split(' ');
    if (!f[2]?.includes('master') || f[2].includes('fail')) continue;
    for (const range of f.slice(8)) {
      const [lo, hi] = range.split('-').map(Number);
      if (slot >= lo! && slot <= (hi ?? lo)!) return Number(/:(\d+)@/.exec(f[1]!)?.[1]);
    }
  }
  return undefined;
}

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvserve-cluster-'));
  ports = [];
  for (let i = 0; i < 6; i++) ports.push(await freePort());
  for (const port of ports) {
    const p = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--requirepass', PASSWORD, '--masterauth', PASSWORD,
        '--cluster-enabled', 'yes', '--cluster-config-file', path.join(dir, `nodes-${port}.conf`), '--cluster-node-timeout', '1000'],
      { stdio: 'ignore' },
    );
    procs.set(port, p);
  }
  for (const port of ports) await until(`redis-server on ${port}`, async () => cli(port, 'ping') === 'PONG');
  const made = spawnSync('redis-cli', ['--no-auth-warning', '-a', PASSWORD, '--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '1', '--cluster-yes'], { encoding: 'utf8', timeout: 60_000 });
  expect(made.status, made.stdout + made.stderr).toBe(0);
  await until('the cluster', async () => ports.every((p) => cli(p, 'cluster', 'info').includes('cluster_state:ok')), 30_000);
  await until('every replica in sync', async () => ports.every((p) => !cli(p, 'info', 'replication').includes('role:slave') || cli(p, 'info', 'replication').includes('master_link_status:up')), 30_000);
  url = `redis+cluster://:${PASSWORD}@127.0.0.1:${ports[0]},127.0.0.1:${ports[1]}`;
}, 120_000);

afterAll(async () => {
  await server?.stop();
  for (const p of procs.values()) p.kill('SIGKILL');
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('--redis-url redis+cluster://', () => {
  it('parses the nodes and the password, masks it, and refuses a node without a port', () => {
    expect(parseClusterUrl('redis://127.0.0.1:6379')).toBeUndefined();
    expect(parseClusterUrl('redis+cluster://app:p%40ss@10.0.0.1:7000,[fd00::2]:7001')).toEqual({
      nodes: [{ host: '10.0.0.1', port: 7000 }, { host: 'fd00::2', port: 7001 }],
      username: 'app',
      password: 'p@ss',
    });
    expect(parseClusterUrl('redis+cluster://:pw@10.0.0.1:7000/')).toMatchObject({ password: 'pw', username: undefined });
    expect(() => parseClusterUrl('redis+cluster://10.0.0.1')).toThrow(/HOST:PORT/);
    expect(maskRedisUrl('redis+cluster://app:secret@10.0.0.1:7000')).toBe('redis+cluster://***@10.0.0.1:7000');
  });

  it('refuses a cluster node given as one server, by a worker and by a frontend node, naming the URL to use', async () => {
    const r = await runLauncher(['--model', (await ensureModel('tiny-llama')).dir, '--workers', '1', '--router', 'kv', '--redis-url', `redis://:${PASSWORD}@127.0.0.1:${ports[0]}`, '--http-port', String(await freePort())]);
    expect(r.code).toBe(1);
    expect(r.output).toMatch(/this Redis is a Redis Cluster node \(cluster_enabled:1\), given as one server: give its nodes as redis\+cluster:\/\//);
    expect(r.output).not.toContain(PASSWORD);
    // A frontend node, which waits for workers from elsewhere, refuses it as well.
    const f = await runLauncher(['--role', 'frontend', '--model', (await ensureModel('tiny-llama')).dir, '--router', 'kv', '--redis-url', `redis://:${PASSWORD}@127.0.0.1:${ports[0]}`, '--http-port', String(await freePort())]);
    expect(f.code).toBe(1);
    expect(f.output).toMatch(/this Redis is a Redis Cluster node \(cluster_enabled:1\), given as one server/);
  }, 120_000);

  it('carries prefill jobs through the queue on the cluster (Example 4)', async () => {
    const modelDir = (await ensureModel('tiny-llama')).dir;
    const disagg = await launch([
      '--model', modelDir, '--decode-workers', '1', '--prefill-workers', '1', '--max-local-prefill-length', '16', '--kv-cache-memory', '64MiB',
      '--redis-url', url, '--http-port', String(await freePort()),
    ]);
    try {
      const client = new OpenAI({ baseURL: `${disagg.url}/v1`, apiKey: 'none', maxRetries: 0 });
      const model = (await client.models.list()).data[0]!.id;
      for (let i = 0; i < 3; i++) {
        const r = await client.completions.create({ model, prompt: `a prompt long enough to be prefilled remotely ${i} `.repeat(6), max_tokens: 3 });
        expect(r.choices[0]!.finish_reason).toBe('length');
      }
      const text = await (await fetch(`${disagg.url}/metrics`)).text();
      expect(Number(/^kvserve:remote_prefills_total\{[^}]*\} (\d+)$/m.exec(text)?.[1])).toBeGreaterThanOrEqual(3);
      // The queue's and the claims' keys live on the master of the namespace's slot.
      const owner = ownerOfNamespace(ports[0]!)!;
      expect(cli(owner, 'keys', `${keyspace('kvserve')}:prefill:*`)).not.toBe('');
      expect(disagg.output()).not.toContain(PASSWORD);
    } finally {
      await disagg.stop();
    }
  }, 120_000);

  // After the one above stopped (its worker ids are this deployment's too).
  it('routes by KV cache over two workers, and on through a failover of the namespace\'s master', async () => {
    const modelDir = (await ensureModel('tiny-llama')).dir;
    const s = (server = await launch([
      '--model', modelDir, '--workers', '2', '--router', 'kv', '--kv-cache-memory', '64MiB', '--redis-url', url, '--http-port', String(await freePort()),
    ]));
    const client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'none', maxRetries: 0 });
    const model = (await client.models.list()).data[0]!.id;
    await until('both workers in the router', async () => (await fetch(`${s.url}/metrics`)).text().then((t) => t.split('\n').filter((l) => l.startsWith('kvserve:worker_num_requests_running{')).length === 2));
    const ask = (i: number) => client.completions.create({ model, prompt: `cluster request ${i} `.repeat(8), max_tokens: 3 });
    for (let i = 0; i < 4; i++) expect((await ask(i)).choices[0]!.finish_reason).toBe('length');
    await until('blocks in the router index', async () => (await metricValue(s, 'kvserve:router_indexed_blocks')) > 0);

    let stop = false;
    let served = 0;
    const load = (async () => {
      for (let i = 100; !stop && i < 10_000; i++) {
        expect((await ask(i)).choices[0]!.finish_reason).toBe('length');
        served++;
      }
    })();
    try {
      await until('some load', async () => served >= 3);
      const owner = ownerOfNamespace(ports[0]!)!;
      procs.get(owner)!.kill('SIGKILL');
      const live = ports.find((p) => p !== owner)!;
      await until("a replica promoted for the namespace's slot", async () => ![undefined, owner].includes(ownerOfNamespace(live)), 30_000);
      const promotedAt = served;
      await until('requests after the failover', async () => served >= promotedAt + 5, 30_000);
      const before = await metricValue(s, 'kvserve:router_indexed_blocks');
      for (let i = 0; i < 3; i++) await client.completions.create({ model, prompt: `after the failover ${i} `.repeat(12), max_tokens: 2 });
      await until('new blocks indexed through the new master', async () => (await metricValue(s, 'kvserve:router_indexed_blocks')) > before, 20_000).catch((e: Error) => {
        throw new Error(`${e.message}; the deployment's log ends:\n${s.output().split('\n').filter((l) => !l.includes('request finished')).slice(-40).join('\n')}`);
      });
    } finally {
      stop = true;
      await load;
    }
    expect(s.output()).not.toContain(PASSWORD);
  }, 120_000);
});
