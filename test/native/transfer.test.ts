// The KV transfer agent through the addon: two engines with their KV pools in shm, one agent
// each, blocks written from one pool into the other and read back over both backends, checked
// byte for byte through /dev/shm (Linux); bad inputs give the right error codes. Tensor-parallel
// pools (one region per rank, fabricated as /dev/shm segments) exchange blocks with a TP 1 pool,
// each rank getting its slice of the kv heads. With a cluster secret, a peer without it, with
// another one, or a listener without one is refused, and a raw client whose handshake MAC is made
// with a wrong secret is answered with the reason and the connection closed.
import { spawnSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine, NativeError, packageRoot, type NativeKvRegion } from '../../ts/native/index.ts';
import { TransferAgent } from '../../ts/native/transfer.ts';
import { ensureModel } from '../../ts/modelgen/index.ts';

let modelDir: string;
const engines: Engine[] = [];
const agents: TransferAgent[] = [];

function engine(opts: Partial<ConstructorParameters<typeof Engine>[0]> = {}): NativeKvRegion {
  const e = new Engine({ modelDir, numThreads: 1, blockSize: 4, maxModelLen: 256, kvSharedMemory: true, ...opts });
  engines.push(e);
  return e.kvRegion();
}

// An agent over `region` whose notifications are kept in `inbox`, in arrival order.
function agent(name: string, region?: NativeKvRegion) {
  const inbox: { from: string; message: string }[] = [];
  let wake: (() => void) | undefined;
  const a = new TransferAgent({ name }, (from, message) => {
    inbox.push({ from, message });
    wake?.();
  });
  agents.push(a);
  if (region) a.registerRegion(region);
  const next = async (count: number) => {
    while (inbox.length < count) await new Promise<void>((resolve) => (wake = resolve));
    return inbox.slice(0, count);
  };
  return { a, inbox, next };
}

// The pool's bytes, seen through its shm segment.
function block(r: NativeKvRegion, id: number): Buffer {
  const buf = Buffer.alloc(r.blockBytes);
  const fd = fs.openSync(`/dev/shm${r.shmName}`, 'r');
  try {
    fs.readSync(fd, buf, 0, r.blockBytes, id * r.blockBytes);
  } finally {
    fs.closeSync(fd);
  }
  return buf;
}

function fillRandom(r: NativeKvRegion, seed: number): void {
  let x = seed >>> 0 || 1;
  const buf = Buffer.alloc(r.numBlocks * r.blockBytes);
  for (let i = 0; i < buf.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf[i] = x & 0xff;
  }
  fs.writeFileSync(`/dev/shm${r.shmName}`, buf);
}

function shuffled(n: number, seed: number): number[] {
  const ids = Array.from({ length: n }, (_, i) => i);
  let x = seed;
  for (let i = n - 1; i > 0; i--) {
    x = (x * 1103515245 + 12345) >>> 0;
    const j = x % (i + 1);
    [ids[i], ids[j]] = [ids[j], ids[i]];
  }
  return ids;
}

async function code(p: Promise<unknown> | (() => unknown)): Promise<string | undefined> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (err) {
    expect(err).toBeInstanceOf(NativeError);
    return (err as NativeError).code;
  }
  return undefined;
}

beforeAll(async () => {
  modelDir = (await ensureModel('test-llama-gqa-llama3rope')).dir;
});

afterAll(async () => {
  for (const a of agents) await a.close();
  for (const e of engines) await e.close();
  for (const name of segments) fs.rmSync(`/dev/shm${name}`, { force: true });
});

// A fabricated TP pool: 4 kv heads of a 2-layer model (blockSize 4, headDim 8, f16) over `tp`
// ranks, each rank a /dev/shm segment of numBlocks blocks of its heads.
const segments: string[] = [];
const tpModel = { numLayers: 2, blockSize: 4, headDim: 8, modelKvHeads: 4, dtype: 'f16' as const };
const tpRows = 2 * tpModel.numLayers * tpModel.blockSize; // (layer, K/V, token) rows of a block
const headBytes = tpModel.headDim * 2;
function tpPool(tag: string, tp: number, numBlocks: number): NativeKvRegion[] {
  return Array.from({ length: tp }, (_, rank) => {
    const numKvHeads = tpModel.modelKvHeads / tp;
    const blockBytes = tpRows * numKvHeads * headBytes;
    const shmName = `/kvserve-${process.pid}-tstp-${tag}-${rank}`;
    fs.writeFileSync(`/dev/shm${shmName}`, Buffer.alloc(numBlocks * blockBytes));
    segments.push(shmName);
    return { memory: 'host', shmName, bytes: numBlocks * blockBytes, numBlocks, blockBytes, numKvHeads,
      tpRank: rank, firstKvHead: rank * numKvHeads, ...tpModel };
  });
}

// Block `id` of a whole pool (every head), put together from its regions' rows.
function wholeBlock(regions: NativeKvRegion[], id: number): Buffer {
  const rows: Buffer[] = [];
  for (let row = 0; row < tpRows; row++) {
    for (const r of regions) {
      const rowBytes = r.numKvHeads * headBytes;
      rows.push(block(r, id).subarray(row * rowBytes, (row + 1) * rowBytes));
    }
  }
  return Buffer.concat(rows);
}

describe('transfer agent', () => {
  it.each(['shm', 'tcp'] as const)('writes blocks into another engine pool and reads them back (%s)', async (backend) => {
    const prefill = engine({ numKvBlocks: 32 });
    const decode = engine({ numKvBlocks: 48 });
    fillRandom(prefill, 1);
    fillRandom(decode, 2);
    const p = agent(`prefill-${backend}`, prefill);
    const d = agent(`decode-${backend}`, decode);
    expect(p.a.connect(d.a.metadata(), backend)).toBe(`decode-${backend}`);

    const local = shuffled(32, 3).slice(0, 20);
    const remote = shuffled(40, 4).slice(0, 20); // decode blocks 40..47 stay untouched
    await p.a.write(local, `decode-${backend}`, remote, 'req-1 done');
    expect(await d.next(1)).toEqual([{ from: `prefill-${backend}`, message: 'req-1 done' }]);
    for (let i = 0; i < local.length; i++) expect(block(decode, remote[i]).equals(block(prefill, local[i]))).toBe(true);

    const before = [40, 41, 42, 43].map((id) => block(decode, id));
    await p.a.read(`decode-${backend}`, [40, 41, 42, 43], [0, 1, 2, 3]);
    for (let i = 0; i < 4; i++) expect(block(prefill, i).equals(before[i])).toBe(true);

    const s = p.a.stats();
    expect(s).toMatchObject({ writes: 1, reads: 1, bytesWritten: 20 * prefill.blockBytes, bytesRead: 4 * prefill.blockBytes });
    expect(d.a.stats().notificationsReceived).toBe(1);
  });

  it('delivers notifications in the order of the writes', async () => {
    const r1 = engine({ numKvBlocks: 16 });
    const r2 = engine({ numKvBlocks: 16 });
    const p = agent('order-p', r1);
    const d = agent('order-d', r2);
    p.a.connect(d.a.metadata());
    for (let i = 0; i < 10; i++) await p.a.write([i], 'order-d', [15 - i], `n${i}`);
    expect((await d.next(10)).map((n) => n.message)).toEqual(Array.from({ length: 10 }, (_, i) => `n${i}`));
  });

  it('gives the right error codes for bad inputs', async () => {
    const r1 = engine({ numKvBlocks: 8 });
    const r2 = engine({ numKvBlocks: 8 });
    const p = agent('err-p', r1);
    const d = agent('err-d', r2);
    p.a.connect(d.a.metadata(), 'tcp');

    expect(await code(p.a.write([8], 'err-d', [0]))).toBe('ERR_TRANSFER_INVALID'); // local out of range
    expect(await code(p.a.write([0], 'err-d', [-1]))).toBe('ERR_TRANSFER_INVALID'); // remote out of range
    expect(await code(p.a.read('err-d', [0, 1], [0]))).toBe('ERR_TRANSFER_INVALID'); // lengths differ
    expect(await code(p.a.write([0.5], 'err-d', [0]))).toBe('ERR_INVALID_ARGUMENT');
    expect(await code(p.a.write([0], '', [0]))).toBe('ERR_INVALID_ARGUMENT');
    expect(await code(() => p.a.connect(d.a.metadata(), 'rdma' as 'tcp'))).toBe('ERR_INVALID_ARGUMENT');
    expect(await code(p.a.write([0], 'nobody', [0]))).toBe('ERR_TRANSFER_PEER');
    expect(await code(() => p.a.connect('{"name": 1}'))).toBe('ERR_TRANSFER_INVALID');

    // Another KV layout (block size 8) is refused at connect.
    const other = agent('err-other', engine({ numKvBlocks: 8, blockSize: 8 }));
    expect(await code(() => p.a.connect(other.a.metadata()))).toBe('ERR_TRANSFER_INVALID');
    // A pool that is not in shm cannot be registered; metadata needs a region.
    const priv = agent('err-private');
    expect(await code(() => priv.a.metadata())).toBe('ERR_TRANSFER_INVALID');
    expect(await code(() => priv.a.registerRegion(engine({ numKvBlocks: 8, kvSharedMemory: false })))).toBe(
      'ERR_TRANSFER_INVALID',
    );

    // The remote goes away: its connection is stale; a closed agent refuses everything.
    const staleMeta = d.a.metadata();
    await d.a.close();
    expect(await code(p.a.write([0], 'err-d', [0], 'x'))).toBe('ERR_TRANSFER_PEER');
    expect(await code(() => p.a.connect(staleMeta))).toBe('ERR_TRANSFER_PEER');
    expect(await code(d.a.write([0], 'err-p', [0]))).toBe('ERR_TRANSFER_CLOSED');
    expect(await code(() => d.a.metadata())).toBe('ERR_TRANSFER_CLOSED');
  });

  it.each(['shm', 'tcp'] as const)('moves blocks between a TP 1 and a TP 2 pool, heads sliced per rank (%s)', async (backend) => {
    const [whole] = tpPool(`p1-${backend}`, 1, 8);
    const ranks = tpPool(`d2-${backend}`, 2, 8);
    fillRandom(whole, 5);
    const p = agent(`tp1-${backend}`, whole);
    const d = agent(`tp2-${backend}`);
    d.a.registerRegions([ranks[1], ranks[0]]); // any order
    expect(p.a.connect(d.a.metadata(), backend)).toBe(`tp2-${backend}`);

    await p.a.write([1, 2, 3], `tp2-${backend}`, [5, 6, 0], 'req done');
    expect(await d.next(1)).toEqual([{ from: `tp1-${backend}`, message: 'req done' }]);
    for (const [src, dst] of [[1, 5], [2, 6], [3, 0]]) expect(wholeBlock(ranks, dst).equals(block(whole, src))).toBe(true);
    // Rank 1 holds heads 2..3 only: the second half of every row.
    expect(block(ranks[1], 5).subarray(0, 32).equals(block(whole, 1).subarray(32, 64))).toBe(true);
    expect(block(ranks[0], 7).equals(Buffer.alloc(ranks[0].blockBytes))).toBe(true); // not named: untouched

    await p.a.read(`tp2-${backend}`, [6], [7]);
    expect(block(whole, 7).equals(block(whole, 2))).toBe(true);
    expect(p.a.stats()).toMatchObject({ bytesWritten: 3 * whole.blockBytes, bytesRead: whole.blockBytes });
  });

  it('refuses bad region lists and pools of another model', async () => {
    const ranks = tpPool('bad', 2, 4);
    const a = agent('tp-bad').a;
    expect(await code(() => a.registerRegions([]))).toBe('ERR_INVALID_ARGUMENT');
    expect(await code(() => a.registerRegions([ranks[0], null as unknown as NativeKvRegion]))).toBe('ERR_INVALID_ARGUMENT');
    expect(await code(() => a.registerRegions([ranks[0]]))).toBe('ERR_TRANSFER_INVALID'); // heads 2..3 missing
    expect(await code(() => a.registerRegions([ranks[0], { ...ranks[1], numLayers: 3 }]))).toBe('ERR_TRANSFER_INVALID');
    expect(await code(() => a.registerRegions([ranks[0], { ...ranks[1], tpRank: 0 }]))).toBe('ERR_TRANSFER_INVALID');
    expect(await code(() => a.registerRegions([ranks[0], { ...ranks[1], blockBytes: 64 }]))).toBe('ERR_TRANSFER_INVALID');
    // GPU regions: each its device pointer (this process's) or another process's IPC handle.
    const gpu = ranks.map((r) => ({ ...r, memory: 'cuda' as const, shmName: '' }));
    expect(() => a.registerRegions(gpu)).toThrow(/GPU KV region 0 needs its deviceRegion or its deviceIpcHandle and deviceUuid/);
    const opened = gpu.map((r, i) => ({ ...r, deviceIpcHandle: String(i + 1).repeat(128), deviceUuid: 'GPU-00000000-0000-0000-0000-000000000000' }));
    try {
      a.registerRegions(opened); // no GPU here holds them, whatever this machine has
      expect.unreachable();
    } catch (err) {
      expect((err as NativeError).code).toBe('ERR_TRANSFER_INVALID');
      expect((err as NativeError).message).toContain('cannot open the GPU KV region of rank 0');
    }
    a.registerRegions(ranks); // nothing above registered anything
    expect(await code(() => a.registerRegions(ranks))).toBe('ERR_TRANSFER_INVALID'); // once

    // The engine's model has another layout: refused at connect whatever the TP sizes.
    const e = agent('tp-engine', engine({ numKvBlocks: 8 }));
    expect(await code(() => e.a.connect(a.metadata()))).toBe('ERR_TRANSFER_INVALID');
    expect(() => e.a.connect(a.metadata())).toThrow(/another KV layout/);
  });

  const addon = path.join(packageRoot, 'build', 'Release', 'kvserve.node');
  it.skipIf(!fs.existsSync(addon))('never keeps the process alive', () => {
    const script = `const { TransferAgent } = require(${JSON.stringify(addon)});
      new TransferAgent({ name: 'idle', listenHost: '127.0.0.1', listenPort: 0 }, () => {});`;
    const r = spawnSync(process.execPath, ['-e', script], { timeout: 30_000 });
    expect(r.status).toBe(0);
  });
});

// Frames of native/transfer/transfer-wire.h, little-endian (this host's order): magic, type,
// num_blocks, text_bytes, code, reserved, arg (u64), then the text.
function frame(type: number, text: string, arg: number): Buffer {
  const h = Buffer.alloc(32);
  h.writeUInt32LE(0x4b565846, 0);
  h.writeUInt32LE(type, 4);
  h.writeUInt32LE(Buffer.byteLength(text), 12);
  h.writeBigUInt64LE(BigInt(arg), 24);
  return Buffer.concat([h, Buffer.from(text)]);
}

// A raw client: sends `first`, then for each reply (code, text) what `next` returns, until the
// listener closes the connection; resolves with the replies.
function rawAgentSession(port: number, first: Buffer, next: (reply: { code: number; text: string }) => Buffer | undefined) {
  return new Promise<{ code: number; text: string }[]>((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port }, () => socket.write(first));
    const replies: { code: number; text: string }[] = [];
    let buf = Buffer.alloc(0);
    socket.setTimeout(10_000, () => reject(new Error(`the listener did not close; replies ${JSON.stringify(replies)}`)));
    socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 32 && buf.length >= 32 + buf.readUInt32LE(12)) {
        const len = buf.readUInt32LE(12);
        const reply = { code: buf.readInt32LE(16), text: buf.subarray(32, 32 + len).toString() };
        buf = buf.subarray(32 + len);
        replies.push(reply);
        const more = next(reply);
        if (more) socket.write(more);
      }
    });
    socket.on('error', reject);
    socket.on('close', () => resolve(replies));
  });
}

describe('transfer agent with a cluster secret', () => {
  const SECRET = 'transfer-secret-0123456789';
  function secretAgent(name: string, clusterSecret?: string) {
    const a = new TransferAgent({ name, ...(clusterSecret === undefined ? {} : { clusterSecret }) }, () => {});
    agents.push(a);
    a.registerRegions(tpPool(name, 1, 8));
    return a;
  }

  it('connects and moves blocks when both ends have the secret', async () => {
    const listener = secretAgent('sec-l', SECRET);
    const client = secretAgent('sec-c', SECRET);
    expect(client.connect(listener.metadata(), 'tcp')).toBe('sec-l');
    await client.write([1, 2], 'sec-l', [3, 4], 'done');
  });

  it('refuses a peer without the secret, with another one, and a listener without one', async () => {
    const listener = secretAgent('sec-l2', SECRET);
    const refused = (a: TransferAgent, meta: string) => {
      try {
        a.connect(meta, 'tcp');
      } catch (err) {
        expect(err).toBeInstanceOf(NativeError);
        expect((err as NativeError).code).toBe('ERR_TRANSFER_PEER');
        return (err as Error).message;
      }
      return 'connected';
    };
    expect(refused(secretAgent('sec-none'), listener.metadata())).toMatch(/requires the cluster secret \(--cluster-secret, KVSERVE_CLUSTER_SECRET\)/);
    expect(refused(secretAgent('sec-other', 'another-secret-0123456789'), listener.metadata())).toMatch(/did not prove it knows the cluster secret/);
    expect(refused(secretAgent('sec-c2', SECRET), secretAgent('open-l').metadata())).toMatch(/runs without a cluster secret/);
  });

  it('answers a handshake MAC made with a wrong secret with the reason and closes the connection', async () => {
    const listener = secretAgent('sec-l3', SECRET);
    const port = (JSON.parse(listener.metadata()) as { tcp_port: number }).tcp_port;
    const nonce = 'ab'.repeat(16);
    const replies = await rawAgentSession(port, frame(5, nonce, 1), (reply) => {
      if (reply.code !== 0) return undefined;
      const [listenerNonce, mac] = reply.text.split(' ');
      // The listener's proof is made with the real secret.
      expect(mac).toBe(createHmac('sha256', SECRET).update(`kvserve transfer listener\n${nonce}\n${listenerNonce}`).digest('hex'));
      const wrong = createHmac('sha256', 'another-secret-0123456789').update(`kvserve transfer client\n${listenerNonce}\n${nonce}`).digest('hex');
      return frame(5, wrong, 2);
    });
    expect(replies).toHaveLength(2);
    expect(replies[1]!.code).not.toBe(0);
    expect(replies[1]!.text).toBe('wrong cluster secret');
  });
});
