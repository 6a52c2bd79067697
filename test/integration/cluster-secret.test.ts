// cluster-secret.test.ts: --cluster-secret on the internal planes, against real processes on the
// generated tiny Llama:
//   - a worker with a secret refuses a request-plane client without it (one `refused` line, then
//     the connection closes), and one with a wrong secret; a client with it is served;
//   - the worker's HTTP answers 401 without the x-kvserve-cluster-auth header (a MAC of the
//     secret, the method, the path, the time and a nonce; never the secret), with a wrong one, a
//     replayed one, one for another path or one outside the time window, and 200 with a fresh
//     one; GET /ready needs none;
//   - a worker bound off loopback without a secret refuses to start, naming the flag;
//   - through the launcher (the secret in KVSERVE_CLUSTER_SECRET), disaggregated: requests are
//     served and prefilled remotely (the transfer agents authenticate too), and neither a command
//     line nor the log carries the secret.
import net from 'node:net';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLUSTER_AUTH_HEADER, httpAuthHeader } from '../../ts/runtime/cluster-secret.ts';
import { ensureModel } from '../../ts/modelgen/index.ts';
import type { RequestId, WorkerInfo } from '../../ts/protocol/index.ts';
import { newNonce, requestPlaneMac } from '../../ts/runtime/cluster-secret.ts';
import { RequestPlaneError, WorkerClient } from '../../ts/runtime/request-client.ts';
import type { WorkerConfig } from '../../ts/worker/main.ts';
import { childPids, freePort, launch } from '../helpers/launcher.ts';
import { forkWorker, type ForkedWorker } from '../helpers/worker.ts';

const SECRET = 'test-cluster-secret-0123456789';

let modelDir: string;
let worker: ForkedWorker;

function config(host = '127.0.0.1'): WorkerConfig {
  return {
    workerId: 'worker-s',
    role: 'monolith',
    model: 'tiny',
    modelDir,
    host,
    port: 0,
    engine: { blockSize: 16, kvCacheBytes: 64 << 20, numThreads: 1, maxModelLen: 256 },
  };
}

beforeAll(async () => {
  modelDir = (await ensureModel('tiny-llama')).dir;
  worker = await forkWorker(config(), { KVSERVE_CLUSTER_SECRET: SECRET });
}, 120_000);

afterAll(async () => {
  delete process.env.KVSERVE_CLUSTER_SECRET;
  await worker?.stop('SIGKILL');
});

// Writes lines to the worker's request plane and collects what it answers until it closes.
function rawSession(info: WorkerInfo, lines: (received: string[]) => string[]): Promise<string[]> {
  const url = new URL(info.requestPlane!);
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: url.hostname, port: Number(url.port) });
    const received: string[] = [];
    let buffered = '';
    socket.setEncoding('utf8');
    socket.setTimeout(10_000, () => reject(new Error(`no close; got ${JSON.stringify(received)}`)));
    socket.on('connect', () => socket.write(lines(received).join('')));
    socket.on('data', (d: string) => {
      buffered += d;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        received.push(buffered.slice(0, nl));
        buffered = buffered.slice(nl + 1);
        const more = lines(received);
        if (more.length > 0) socket.write(more.join(''));
      }
    });
    socket.on('error', reject);
    socket.on('close', () => resolve(received));
  });
}

const gen = (id: number) => JSON.stringify({ t: 'gen', id, body: { requestId: `cs-${id}`, promptTokenIds: [1, 2, 3], sampling: { maxTokens: 2 } } }) + '\n';

async function collect(client: WorkerClient, id: string): Promise<number[]> {
  const tokens: number[] = [];
  for await (const d of client.generate({ requestId: id as RequestId, promptTokenIds: [5, 6, 7, 8], sampling: { maxTokens: 4, temperature: 0, ignoreEos: true } })) {
    tokens.push(...d.tokenIds);
  }
  return tokens;
}

describe('the request plane with a cluster secret', () => {
  it('refuses a client without the secret with a reason line, then closes', async () => {
    const got = await rawSession(worker.info, (received) => (received.length === 0 ? [gen(1)] : []));
    expect(got).toHaveLength(1);
    const f = JSON.parse(got[0]!);
    expect(f.t).toBe('refused');
    expect(f.reason).toMatch(/requires the cluster secret \(--cluster-secret, KVSERVE_CLUSTER_SECRET\)/);
  });

  it('refuses a client whose auth is made with another secret', async () => {
    const nonce = newNonce();
    let sent = false;
    const got = await rawSession(worker.info, (received) => {
      if (received.length === 0) return [JSON.stringify({ t: 'hello', nonce }) + '\n'];
      if (received.length === 1 && !sent) {
        sent = true;
        const hello = JSON.parse(received[0]!);
        // The worker proved itself: its mac is made with the real secret over both nonces.
        expect(hello.mac).toBe(requestPlaneMac(SECRET, 'worker', nonce, hello.nonce));
        return [JSON.stringify({ t: 'auth', mac: requestPlaneMac('another-secret-0123456789', 'client', hello.nonce, nonce) }) + '\n', gen(2)];
      }
      return [];
    });
    expect(got).toHaveLength(2);
    expect(JSON.parse(got[1]!)).toEqual({ t: 'refused', reason: 'wrong cluster secret' });
  });

  it('serves a client with the secret, and fails one with another secret as unavailable', async () => {
    process.env.KVSERVE_CLUSTER_SECRET = 'another-secret-0123456789';
    const client = new WorkerClient(worker.info.address, worker.info.requestPlane);
    const wrong = await collect(client, 'cs-wrong').catch((e: unknown) => e);
    expect(wrong).toBeInstanceOf(RequestPlaneError);
    expect((wrong as RequestPlaneError).code).toBe('ERR_WORKER_UNAVAILABLE');
    expect((wrong as RequestPlaneError).message).toMatch(/did not prove it knows the cluster secret/);

    process.env.KVSERVE_CLUSTER_SECRET = SECRET;
    expect(await collect(client, 'cs-right')).toHaveLength(4);
    // Several requests on the one authenticated connection.
    const many = await Promise.all([1, 2, 3].map((i) => collect(client, `cs-many-${i}`)));
    for (const t of many) expect(t).toHaveLength(4);
    expect((await client.load()).worker_id).toBe('worker-s');
    delete process.env.KVSERVE_CLUSTER_SECRET;
  });

  it('answers HTTP without a good x-kvserve-cluster-auth header with 401, and never needs the secret on the wire', async () => {
    const get = (path: string, header?: string) =>
      fetch(new URL(path, worker.info.address), header === undefined ? {} : { headers: { [CLUSTER_AUTH_HEADER]: header } });
    const refused = async (res: Response, why: RegExp) => {
      expect(res.status).toBe(401);
      const e = (await res.json()).error;
      expect(e.code).toBe('ERR_WORKER_UNAUTHORIZED');
      expect(e.message).toMatch(why);
    };
    for (const path of ['/load', '/info', '/health']) await refused(await get(path), /no x-kvserve-cluster-auth header/);
    await refused(await fetch(new URL('/generate', worker.info.address), { method: 'POST', body: '{}' }), /no x-kvserve-cluster-auth/);
    await refused(await get('/load', httpAuthHeader(SECRET + 'x', 'GET', '/load')), /wrong cluster secret/);
    await refused(await get('/load', httpAuthHeader(SECRET, 'GET', '/info')), /wrong cluster secret/); // made for another path
    await refused(await get('/load', httpAuthHeader(SECRET, 'GET', '/load', Date.now() - 5 * 60_000)), /older or newer/);
    await refused(await get('/load', 'not-a-header'), /malformed/);
    const header = httpAuthHeader(SECRET, 'GET', '/load');
    expect(header).not.toContain(SECRET);
    expect((await get('/load', header)).status).toBe(200);
    await refused(await get('/load', header), /used before/); // overheard and sent again
    expect((await get('/ready')).status).toBe(200);
  });
});

describe('listeners off loopback', () => {
  it('refuse to start without a secret, naming the flag', async () => {
    const err = await forkWorker(config('0.0.0.0')).catch((e: unknown) => e as Error);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/bind to 0\.0\.0\.0, which is not loopback, without a cluster secret: set --cluster-secret \(or KVSERVE_CLUSTER_SECRET\)/);
  });
});

describe('the launcher with a cluster secret', () => {
  it('serves requests and keeps the secret off command lines and out of the log', async () => {
    // Disaggregated, so the transfer agents' connection (prefill -> decode) runs the handshake too.
    const l = await launch(
      ['--model', modelDir, '--router', 'kv', '--decode-workers', '1', '--prefill-workers', '1', '--max-local-prefill-length', '0',
        '--http-port', String(await freePort()), '--kv-cache-memory', '64MiB'],
      { KVSERVE_CLUSTER_SECRET: SECRET },
    );
    try {
      for (let i = 0; i < 3; i++) {
        const res = await fetch(`${l.url}/v1/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ prompt: `hello ${i} `.repeat(20), max_tokens: 3 }),
        });
        expect(res.status).toBe(200);
      }
      // The prompts were prefilled by the prefill worker and their KV written by its agent.
      const metrics = await (await fetch(`${l.url}/metrics`)).text();
      expect(metrics).toMatch(/kvserve:remote_prefills_total\{[^}]*\} [1-9]/);
      expect(metrics).toMatch(/kvserve:kv_transfer_bytes_total\{[^}]*\} [1-9]/);
      const all = (pid: number): number[] => childPids(pid).flatMap((c) => [c, ...all(c)]);
      const pids = [l.proc.pid!, ...all(l.proc.pid!)];
      const workerPid = pids.find((p) => fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('worker/main.ts'))!;
      expect(fs.readFileSync(`/proc/${workerPid}/environ`, 'utf8')).toContain(`KVSERVE_CLUSTER_SECRET=${SECRET}`);
      for (const pid of pids) expect(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8')).not.toContain(SECRET);
      expect(l.output()).not.toContain(SECRET);
    } finally {
      await l.stop();
    }
  }, 180_000);
});
