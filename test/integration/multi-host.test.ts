// multi-host.test.ts: one deployment over several hosts, each host a network namespace
// (test/helpers/netns.ts) and each node the real launcher with --role:
//   leader    (Redis + frontend, --router kv, --workers 0, its Redis open to the other hosts)
//   decode    (--role worker --workers 2 --remote-prefill; its address by default)
//   decode2   (--role worker --workers 1 --remote-prefill)
//   prefill   (--role prefill)
//   frontend2 (--role frontend --router kv)
//   nosecret  (a worker node without --cluster-secret, then with another one)
// Cases: the seed's Example 4 across the hosts gives the greedy tokens of a one-host
// `--decode-workers 1 --prefill-workers 1` deployment, long prompts prefilled remotely and the KV
// over TCP (the prefill host's connection to the decode host); both frontends put a shared prefix
// on one worker; decode2's link goes down mid-load: its streams migrate or fail cleanly, the rest
// go on, and it rejoins when the link is back; a node without the secret does not start and
// nothing of it reaches discovery; one with another secret is in discovery but never serves a
// request (the request plane's handshake fails both ways).
// Root only: elsewhere the suite is skipped with the reason (in its title and in the line `npm
// test` ends with). Test traffic goes to the namespaces' own addresses and to loopback only;
// every load loop is bounded in count and time.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { packageRoot } from '../../ts/native/loader.ts';
import { listWorkers } from '../../ts/runtime/discovery.ts';
import { freePort, launch, until, type Launched } from '../helpers/launcher.ts';
import { Hosts, netnsUnavailable } from '../helpers/netns.ts';
import { promptTokens } from '../helpers/prompts.ts';

const SECRET = 'multi-host-cluster-secret-0123';
const MAX_LOCAL = 32;
const HTTP_PORT = 8400;
const REDIS_PORT = 6400;
const NODE_READY_MS = 120_000;

function record(line: string): void {
  const file = process.env.KVSERVE_COVERAGE_FILE;
  if (file) fs.appendFileSync(file, `${line}\n`);
}

const why = netnsUnavailable();
record(why ? `skipped\tmulti-host deployment (network namespaces)\t${why}` : 'exercised\tmulti-host deployment (network namespaces)');

interface Node {
  proc: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
  stop: () => Promise<number | null>;
}

let hosts: Hosts;
let modelDir: string;
let passwordFile: string;
let redisUrl: string; // as the other hosts reach the leader's Redis
let redis: Redis; // the test's own connection to it
const nodes = new Map<string, Node>();
let oneHost: Launched;

// Starts the launcher in a host; resolves once it says "ready:" (rejects if it exits first).
function startNode(host: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = NODE_READY_MS): Promise<Node> {
  const proc = hosts.spawn(host, process.execPath, ['--import', 'tsx', path.join(packageRoot, 'ts/launcher/main.ts'), ...args], { ...process.env, ...env }, packageRoot);
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const node: Node = {
    proc,
    output: () => out,
    exited,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
  nodes.set(host, node);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${host} not ready in time:\n${out}`)), timeoutMs);
    proc.stdout!.on('data', () => {
      if (/\] ready: /.test(out)) {
        clearTimeout(timer);
        resolve(node);
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${host} exited (${code}) before ready:\n${out}`));
    });
  });
}

const frontendUrl = (host: string) => `http://${hosts.get(host).address}:${HTTP_PORT}`;
const seedBody = () => JSON.parse(fs.readFileSync(path.join(packageRoot, 'test/fixtures/seed-example-1.json'), 'utf8')) as Record<string, unknown>;

// The seed's Example 4 request (its Example 1 body, for the model served) with greedy decoding:
// the answer and the worker that served it.
async function example4(url: string): Promise<{ content: string; tokens: number; worker: string | null }> {
  const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] };
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...seedBody(), model: models.data[0]!.id, temperature: 0, ignore_eos: true }),
  });
  const body = (await res.json()) as { choices?: { message: { content: string } }[]; usage?: { completion_tokens: number }; error?: unknown };
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${JSON.stringify(body)}`);
  return { content: body.choices![0]!.message.content, tokens: body.usage!.completion_tokens, worker: res.headers.get('x-worker-id') };
}

async function complete(url: string, prompt: number[], maxTokens = 8): Promise<{ text: string; worker: string | null }> {
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true }),
    signal: AbortSignal.timeout(60_000),
  });
  const body = (await res.json()) as { choices?: { text: string }[]; error?: unknown };
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${JSON.stringify(body)}`);
  return { text: body.choices![0]!.text, worker: res.headers.get('x-worker-id') };
}

// Sum over workers of a per-worker series on a frontend's /metrics.
async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${name}{`))
    .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}

const workerEnv = () => ({ KVSERVE_REDIS_URL: redisUrl, KVSERVE_CLUSTER_SECRET: SECRET });
const engineFlags = () => ['--model', modelDir, '--kv-cache-memory', '64MiB', '--device', 'cpu'];

describe.skipIf(why !== undefined)(why ? `several hosts (skipped: ${why})` : 'several hosts made of network namespaces', () => {
  beforeAll(async () => {
    modelDir = (await ensureModel('tiny-llama')).dir;
    hosts = new Hosts(['leader', 'decode', 'decode2', 'prefill', 'frontend2', 'nosecret']);
    passwordFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kvserve-mh-')), 'redis-password');
    const leaderAddress = hosts.get('leader').address;
    const leader = startNode(
      'leader',
      ['--model', modelDir, '--workers', '0', '--router', 'kv', '--advertise-host', leaderAddress, '--redis-port', String(REDIS_PORT),
        '--redis-password-file', passwordFile, '--http-port', String(HTTP_PORT), '--stall-timeout-s', '2'],
      { KVSERVE_CLUSTER_SECRET: SECRET },
    );
    await until('the leader writes its Redis password', async () => fs.existsSync(passwordFile) && fs.readFileSync(passwordFile, 'utf8').trim().length > 0, 60_000);
    redisUrl = `redis://:${fs.readFileSync(passwordFile, 'utf8').trim()}@${leaderAddress}:${REDIS_PORT}`;
    await until('the leader says how other nodes join', async () => /other nodes join with --redis-url/.test(nodes.get('leader')!.output()), 60_000);
    redis = new Redis(redisUrl, { lazyConnect: false, maxRetriesPerRequest: 2 });
    const disaggFlags = ['--remote-prefill', '--max-local-prefill-length', String(MAX_LOCAL), '--prefill-deadline-ms', '5000'];
    const started = await Promise.all([
      leader,
      startNode('decode', ['--role', 'worker', '--workers', '2', ...engineFlags(), ...disaggFlags], workerEnv()), // its address by default
      startNode('decode2', ['--role', 'worker', '--workers', '1', '--advertise-host', hosts.get('decode2').address, ...engineFlags(), ...disaggFlags], workerEnv()),
      startNode('prefill', ['--role', 'prefill', ...engineFlags()], workerEnv()),
      startNode('frontend2', ['--role', 'frontend', '--model', modelDir, '--router', 'kv', '--http-port', String(HTTP_PORT)], workerEnv()),
      launch(['--model', modelDir, '--decode-workers', '1', '--prefill-workers', '1', '--kv-cache-memory', '64MiB', '--device', 'cpu',
        '--max-local-prefill-length', String(MAX_LOCAL), '--http-port', String(await freePort())]),
    ]);
    oneHost = started[5] as Launched;
    // Both frontends know all three decode workers before the cases start.
    for (const fe of ['leader', 'frontend2']) {
      await until(`${fe} sees 3 workers`, async () => {
        const ready = await fetch(`${frontendUrl(fe)}/ready`);
        const text = await (await fetch(`${frontendUrl(fe)}/metrics`)).text();
        return ready.status === 200 && new Set([...text.matchAll(/kvserve:worker_busy\{[^}]*worker_id="([^"]+)"/g)].map((m) => m[1])).size === 3;
      }, 60_000);
    }
  }, 300_000);

  afterAll(async () => {
    redis?.disconnect();
    await Promise.all([...nodes.values()].map((n) => n.stop().catch(() => null)));
    await oneHost?.stop();
    hosts?.destroy();
  }, 60_000);

  it("serves the seed's Example 4 across the hosts with the greedy tokens of one host, prefilling remotely over TCP", async () => {
    const url = frontendUrl('leader');
    const remoteBefore = await metric(url, 'kvserve:remote_prefills_total');
    const across = await example4(url);
    const local = await example4(oneHost.url);
    expect(across.tokens).toBe(30);
    expect(across.content).toBe(local.content);
    const long = promptTokens(11, 300);
    expect((await complete(url, long, 12)).text).toBe((await complete(oneHost.url, long, 12)).text);
    expect(await metric(url, 'kvserve:remote_prefills_total')).toBeGreaterThanOrEqual(remoteBefore + 2);
    expect(await metric(url, 'kvserve:kv_transfer_bytes_total')).toBeGreaterThan(0);
    // The KV went over the link: the prefill host holds TCP connections to a decode host.
    const decodeHosts = [hosts.get('decode').address, hosts.get('decode2').address];
    const ss = hosts.run('prefill', ['ss', '-tnH', 'state', 'established']);
    expect(decodeHosts.some((a) => ss.includes(`${a}:`)), ss).toBe(true);
    // The workers publish their hosts' addresses, the decode node's found by default.
    const published = await listWorkers(redis);
    expect(published.filter((w) => w.workerId.endsWith(`@${hosts.get('decode').address}`)).map((w) => new URL(w.address).hostname)).toEqual([
      hosts.get('decode').address,
      hosts.get('decode').address,
    ]);
  });

  it('puts a shared prefix on one worker whichever frontend a request enters', async () => {
    const prefix = promptTokens(21, 256); // 16 blocks
    const indexed = () => metric(frontendUrl('frontend2'), 'kvserve:router_indexed_blocks').catch(() => 0);
    const before = await indexed();
    const served: string[] = [];
    for (let i = 0; i < 6; i++) {
      const fe = i % 2 === 0 ? 'leader' : 'frontend2';
      const r = await complete(frontendUrl(fe), [...prefix, ...promptTokens(100 + i, 8)], 2);
      served.push(r.worker ?? '?');
      if (i === 0) {
        // the other frontend learns the first one's blocks from the event plane
        await until('frontend2 indexes the prefix', async () => (await indexed()) >= before + 16, 20_000);
      }
    }
    expect(new Set(served).size, served.join(', ')).toBe(1);
  });

  it("goes on when a node's link goes down mid-load, and the node rejoins when it is back", async () => {
    const url = frontendUrl('leader');
    const d2 = `worker-0@${hosts.get('decode2').address}`;
    const results: { ok: boolean; worker: string | null; error?: string }[] = [];
    let next = 0;
    const deadline = Date.now() + 90_000;
    const one = async (i: number) => {
      const res = await fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: promptTokens(300 + i, 24), max_tokens: 24, temperature: 0, ignore_eos: true, stream: true }),
        signal: AbortSignal.timeout(60_000),
      });
      const text = await res.text();
      // A clean failure is an HTTP error with the OpenAI body or an SSE error event; success ends with [DONE].
      const ok = res.status === 200 && text.includes('data: [DONE]') && !text.includes('"error"');
      const clean = ok || (res.status >= 400 && text.includes('"error"')) || (res.status === 200 && text.includes('"error"'));
      if (!clean) throw new Error(`unclean end (HTTP ${res.status}): ${text.slice(-300)}`);
      results.push({ ok, worker: res.headers.get('x-worker-id'), error: ok ? undefined : text.slice(-200) });
    };
    const loop = async () => {
      while (next < 24 && Date.now() < deadline) await one(next++);
    };
    const load = Promise.all([loop(), loop(), loop()]);
    await until('load reaches decode2', async () => results.some((r) => r.worker === d2) || next >= 6, 30_000);
    hosts.linkDown('decode2');
    try {
      await until('decode2 leaves discovery', async () => !(await listWorkers(redis)).some((w) => w.workerId === d2), 30_000);
      await load;
    } finally {
      hosts.linkUp('decode2');
    }
    const afterDown = results.slice(-6);
    expect(afterDown.every((r) => r.ok), JSON.stringify(afterDown)).toBe(true); // the others go on
    expect(results.filter((r) => r.ok).length).toBeGreaterThanOrEqual(results.length - 3); // at most decode2's streams in flight fail
    // Back: its lease returns, the frontend's probe finds it answering, and routes to it again.
    await until('decode2 rejoins discovery', async () => (await listWorkers(redis)).some((w) => w.workerId === d2), 60_000);
    await until("decode2 is back in the leader's router", async () => (await (await fetch(`${url}/metrics`)).text()).includes(`worker_id="${d2}"`), 60_000, 500);
    let servedByD2 = false;
    for (let i = 0; i < 30 && !servedByD2; i++) servedByD2 = (await complete(url, promptTokens(500 + i, 24), 2)).worker === d2;
    const log = nodes.get('leader')!.output().split('\n').filter((l) => l.includes(d2) || l.includes('decode2')).slice(-20).join('\n');
    expect(servedByD2, `${JSON.stringify(results.map((r) => r.worker))}\n${log}`).toBe(true);
  }, 240_000);

  it('refuses a node without the cluster secret, which never joins', async () => {
    const address = hosts.get('nosecret').address;
    const node = startNode('nosecret', ['--role', 'worker', ...engineFlags()], { KVSERVE_REDIS_URL: redisUrl, KVSERVE_CLUSTER_SECRET: '' });
    await expect(node).rejects.toThrow(/exited \(2\) before ready/);
    const out = nodes.get('nosecret')!.output();
    expect(out).toContain(`--advertise-host ${address} is not loopback`);
    expect(out).toContain('--cluster-secret');
    // Neither the Redis password nor the cluster secret is ever printed, by any node.
    const password = fs.readFileSync(passwordFile, 'utf8').trim();
    for (const [name, n] of nodes) {
      expect(n.output(), name).not.toContain(password);
      expect(n.output(), name).not.toContain(SECRET);
    }
    expect(nodes.get('leader')!.output()).toContain(`other nodes join with --redis-url redis://:***@${hosts.get('leader').address}:${REDIS_PORT} (the password is in ${passwordFile}`);
    expect((await listWorkers(redis)).some((w) => w.workerId.endsWith(`@${address}`))).toBe(false);
    for (let i = 0; i < 4; i++) expect((await complete(frontendUrl('leader'), promptTokens(700 + i, 20), 2)).worker).not.toContain(address);
  });

  it('never serves a request on a node with another secret, which the frontends refuse at the handshake', async () => {
    const address = hosts.get('nosecret').address;
    const wrong = await startNode('nosecret', ['--role', 'worker', ...engineFlags()], { KVSERVE_REDIS_URL: redisUrl, KVSERVE_CLUSTER_SECRET: 'another-cluster-secret-45678901' });
    try {
      await until('the node with another secret is in discovery', async () => (await listWorkers(redis)).some((w) => w.workerId.endsWith(`@${address}`)), 30_000);
      // Both frontends saw it join and set it aside: it does not pass their checks.
      for (const fe of ['leader', 'frontend2']) {
        await until(`${fe} sets the node with another secret aside`, async () =>
          nodes.get(fe)!.output().split('\n').some((l) => l.includes(`@${address}`) && /worker unreachable|refused/.test(l)), 30_000);
      }
      for (const fe of ['leader', 'frontend2']) {
        for (let i = 0; i < 6; i++) {
          const r = await complete(frontendUrl(fe), promptTokens(800 + i, 20), 2);
          expect(r.worker).not.toContain(address);
        }
      }
    } finally {
      await wrong.stop();
    }
  });
});
