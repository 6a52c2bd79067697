// worker-ready.test.ts: a worker's GET /ready, the readiness probe of its Kubernetes Deployment
// (deploy/k8s/):
//   - the server alone (no engine is touched): 503 "starting" until setReadiness('ready'), then
//     200, then 503 "draining"; open without the cluster secret, while /health still wants it;
//   - a real worker process on the generated tiny Llama, with a secret: 200 once it reported
//     ready, without the header; scripts/worker-ready.mjs (the manifests' exec probe, which finds
//     the workers' ports in their command lines) exits 0 for it, and 1 when more workers are
//     wanted than run;
//   - a worker process on ::1: its advertised URLs bracket the address, and it serves over HTTP
//     and over its request plane (skipped where the machine has no IPv6 loopback);
//   - the probe against the workers a launcher started (the ports it picked, read from their
//     command lines): 0 with both workers of `--workers 2`.
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import type { Engine } from '../../ts/native/index.ts';
import { ensureModel } from '../../ts/modelgen/index.ts';
import type { GenerateRequest, RequestId, WorkerId, WorkerInfo } from '../../ts/protocol/index.ts';
import { WorkerClient } from '../../ts/runtime/request-client.ts';
import { startWorkerServer, type WorkerServer } from '../../ts/worker/server.ts';
import { freePort, launch, type Launched } from '../helpers/launcher.ts';
import { forkWorker, type ForkedWorker } from '../helpers/worker.ts';

const SECRET = 'test-cluster-secret-0123456789';

async function ready(address: string): Promise<{ status: number; body: unknown }> {
  const res = await fetch(new URL('/ready', address));
  return { status: res.status, body: await res.json() };
}

let server: WorkerServer | undefined;
let worker: ForkedWorker | undefined;
let launched: Launched | undefined;

afterAll(async () => {
  await server?.close();
  await worker?.stop('SIGKILL');
  await launched?.stop();
});

// Whether this machine can listen on host (an IPv6 loopback may be absent).
function canListen(host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(0, host, () => srv.close(() => resolve(true)));
  });
}

const probe = (parent: number, ...extra: string[]) =>
  spawnSync(process.execPath, ['scripts/worker-ready.mjs', '--parent', String(parent), ...extra], { encoding: 'utf8' });

describe('GET /ready on a worker', () => {
  it('is 503 starting, 200 ready, 503 draining, and needs no cluster secret', async () => {
    // /ready reads nothing of the engine: an empty stand-in, so no model loads here.
    server = await startWorkerServer({
      engine: {} as Engine,
      info: () => ({ workerId: 'w' as WorkerId }) as WorkerInfo,
      clusterSecret: SECRET,
    });
    expect(await ready(server.address)).toEqual({ status: 503, body: { status: 'starting' } });
    server.setReadiness('ready');
    expect(await ready(server.address)).toEqual({ status: 200, body: { status: 'ready' } });
    expect((await fetch(new URL('/health', server.address))).status).toBe(401);
    server.setReadiness('draining');
    expect(await ready(server.address)).toEqual({ status: 503, body: { status: 'draining' } });
  });

  it('is 200 on a worker process once it reported ready', async () => {
    const modelDir = (await ensureModel('tiny-llama')).dir;
    worker = await forkWorker(
      {
        workerId: 'worker-r',
        role: 'monolith',
        model: 'tiny',
        modelDir,
        host: '127.0.0.1',
        port: await freePort(), // fixed, as the launcher fixes it: the probe reads it from the command line
        engine: { blockSize: 16, kvCacheBytes: 64 << 20, numThreads: 1, maxModelLen: 256 },
      },
      { KVSERVE_CLUSTER_SECRET: SECRET },
    );
    expect(await ready(worker.info.address)).toEqual({ status: 200, body: { status: 'ready' } });
    const ok = probe(process.pid);
    expect(ok.stdout.trim()).toBe(`ready: ${new URL(worker.info.address).host}`);
    expect(ok.status).toBe(0);
    const two = probe(process.pid, '--min', '2');
    expect(two.stdout.trim()).toBe('not ready: 1 worker process(es) running, 2 wanted');
    expect(two.status).toBe(1);
  });

  it('on an IPv6 address: brackets in its URLs, and served over HTTP and the request plane', async (ctx) => {
    if (!(await canListen('::1'))) return ctx.skip(); // no IPv6 loopback on this machine
    const modelDir = (await ensureModel('tiny-llama')).dir;
    const v6 = await forkWorker({
      workerId: 'worker-v6',
      role: 'monolith',
      model: 'tiny',
      modelDir,
      host: '::1',
      port: 0,
      engine: { blockSize: 16, kvCacheBytes: 64 << 20, numThreads: 1, maxModelLen: 256 },
    });
    try {
      expect(v6.info.address).toMatch(/^http:\/\/\[::1\]:\d+$/);
      expect(v6.info.requestPlane).toMatch(/^tcp:\/\/\[::1\]:\d+$/);
      expect(await ready(v6.info.address)).toEqual({ status: 200, body: { status: 'ready' } });
      const body = { requestId: 'v6-1' as RequestId, promptTokenIds: [1, 2, 3, 4], sampling: { temperature: 0, maxTokens: 3, ignoreEos: true } } as GenerateRequest;
      for (const client of [new WorkerClient(v6.info.address), new WorkerClient(v6.info.address, v6.info.requestPlane)]) {
        const tokens: number[] = [];
        for await (const d of client.generate({ ...body, requestId: `v6-${tokens.length}-${Math.random()}` as RequestId })) tokens.push(...d.tokenIds);
        expect(tokens).toHaveLength(3);
      }
    } finally {
      await v6.stop('SIGKILL');
    }
  });

  it("the probe finds a launcher's workers on the ports it picked", async () => {
    launched = await launch(['--workers', '2', '--http-port', String(await freePort()), '--no-restart']);
    const r = probe(launched.proc.pid!, '--min', '2');
    expect(r.stdout).toMatch(/^ready: 127\.0\.0\.1:\d+, 127\.0\.0\.1:\d+$/m);
    expect(r.status).toBe(0);
  });
});
