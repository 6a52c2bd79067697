// bench/kv-net.ts: `npm run bench:kv-net`: KV blocks over the network, the transfer agent's TCP
// backend against the link's raw TCP throughput measured the same way.
//
// Two "hosts" are two network namespaces joined by a veth pair (as native/tests/test-transfer.cc
// `tcp_across_two_network_namespaces_joined_by_a_veth_pair` makes them; root only), one process
// in each, started with `ip netns exec`:
//   receiver (the decode side, 10.233.0.1)   a KV pool of --max-blocks blocks in a shm segment,
//                                            its transfer agent listening on its address
//   sender   (the prefill side, 10.233.0.2)  a pool of random bytes and its agent, connected to
//                                            the receiver's with the tcp backend forced (both
//                                            namespaces share a hostname, which would pick shm)
// The pools have the KV layout of the `llama-3.2-1b` preset (ts/modelgen: 16 layers, 8 KV heads,
// head dim 64, bf16) at block size 16: 512 KiB a block. Per block count (--blocks, 1,16,256 by
// default), timed from the sender:
//   agent   one `write` of blocks 0..N-1 into the receiver's 0..N-1 with a notification: from the
//           call until it resolves (the receiver has the bytes in its pool and queued the
//           notification);
//   raw     the same bytes over a plain TCP connection between the same two processes: an 8-byte
//           length, the bytes, read by the receiver into a reusable buffer (nothing copied after
//           the kernel), then a 1-byte answer; from the first write until the answer arrives.
// Both connections are opened (and the agent's cluster-secret handshake done) before timing. The
// two methods take turns, round after round (--rounds, each of --repeat transfers per method,
// scaled down for big counts), against the drift of a shared machine; GB/s = bytes / seconds /
// 1e9, the median and the best of the samples. After the agent's transfers the receiver's blocks
// are compared with the sender's (sha256), so a fast wrong transfer cannot pass.
// --link loopback runs both processes in this namespace over 127.0.0.1 instead (no root needed).
// Writes bench/results/kv-net-<date>.json.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import readline from 'node:readline';
import { parseArgs } from 'node:util';

import { PRESETS } from '../ts/modelgen/presets.ts';
import type { NativeKvRegion } from '../ts/native/addon.js';
import { TransferAgent } from '../ts/native/transfer.ts';
import { writeResult } from './common.ts';

const { values: args } = parseArgs({
  options: {
    peer: { type: 'string' }, // internal: 'sender' | 'receiver', a process in one namespace
    host: { type: 'string' }, // internal: the peer's address
    link: { type: 'string', default: 'veth' },
    blocks: { type: 'string', default: '1,16,256' },
    'max-blocks': { type: 'string' }, // internal: the pools' size
    rounds: { type: 'string', default: '5' },
    repeat: { type: 'string', default: '20' },
    'block-size': { type: 'string', default: '16' },
    out: { type: 'string' },
  },
});

// ---- the KV layout ----

const preset = PRESETS['llama-3.2-1b'];
const BYTES_OF = { f32: 4, f16: 2, bf16: 2 } as const;
const layout = {
  numLayers: preset.numLayers,
  blockSize: Number(args['block-size']),
  numKvHeads: preset.numKvHeads,
  headDim: preset.headDim,
  dtype: 'bf16' as const, // the preset's (modelgen's default dtype)
};
const blockBytes = 2 * layout.numLayers * layout.blockSize * layout.numKvHeads * layout.headDim * BYTES_OF[layout.dtype];
const SECRET = 'kv-net-bench-secret-0123456789';

// A pool of numBlocks blocks in a fresh shm segment (as an engine with kvSharedMemory has it).
function pool(tag: string, numBlocks: number, fill: boolean): NativeKvRegion {
  const shmName = `/kvserve-${process.pid}-kvnet-${tag}`;
  const data = Buffer.alloc(numBlocks * blockBytes);
  if (fill) randomFillSync(data);
  fs.writeFileSync(`/dev/shm${shmName}`, data);
  process.on('exit', () => fs.rmSync(`/dev/shm${shmName}`, { force: true }));
  return { memory: 'host', shmName, bytes: data.length, numBlocks, blockBytes, ...layout, tpRank: 0, firstKvHead: 0, modelKvHeads: layout.numKvHeads };
}

function digest(region: NativeKvRegion, numBlocks: number): string {
  const fd = fs.openSync(`/dev/shm${region.shmName}`, 'r');
  try {
    const buf = Buffer.alloc(numBlocks * blockBytes);
    fs.readSync(fd, buf, 0, buf.length, 0);
    return createHash('sha256').update(buf).digest('hex');
  } finally {
    fs.closeSync(fd);
  }
}

// ---- a peer: one process in one namespace, driven by JSON lines on stdin, answering on stdout ----

type Command =
  | { t: 'connect'; metadata: string } // sender: the agent to the receiver's
  | { t: 'raw-connect'; host: string; port: number } // receiver: the plain socket to the sender's
  | { t: 'agent'; blocks: number; repeat: number } // sender: timed writes
  | { t: 'raw'; blocks: number; repeat: number } // sender: timed plain sends of the same bytes
  | { t: 'digest'; blocks: number }
  | { t: 'quit' };

async function runPeer(role: 'sender' | 'receiver', host: string, maxBlocks: number): Promise<void> {
  const reply = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');
  const region = pool(role, maxBlocks, role === 'sender');
  const agent = new TransferAgent({ name: `kvnet-${role}`, listenHost: host, clusterSecret: SECRET }, () => undefined);
  agent.registerRegion(region);
  let remote = '';
  let rawServer: net.Server | undefined;
  let rawSocket: net.Socket | undefined; // the sender's side of the plain connection
  let rawAck: (() => void) | undefined;
  const rawSocketReady = new Promise<void>((resolve) => {
    if (role !== 'sender') return;
    rawServer = net.createServer({ noDelay: true }, (s) => {
      rawSocket = s;
      s.on('data', () => rawAck?.());
      resolve();
    });
  });
  const payload = role === 'sender' ? fs.readFileSync(`/dev/shm${region.shmName}`) : Buffer.alloc(0);
  if (rawServer) await new Promise<void>((resolve) => rawServer!.listen(0, host, resolve));
  reply({ t: 'hello', metadata: agent.metadata(), rawPort: rawServer ? (rawServer.address() as net.AddressInfo).port : 0 });

  const timed = async (repeat: number, once: () => Promise<void>): Promise<number[]> => {
    const seconds: number[] = [];
    for (let i = 0; i < repeat; i++) {
      const t0 = performance.now();
      await once();
      seconds.push((performance.now() - t0) / 1000);
    }
    return seconds;
  };
  const ids = (n: number) => Array.from({ length: n }, (_, i) => i);

  for await (const line of readline.createInterface({ input: process.stdin })) {
    const c = JSON.parse(line) as Command;
    if (c.t === 'connect') {
      remote = agent.connect(c.metadata, 'tcp');
      reply({ t: 'ok' });
    } else if (c.t === 'raw-connect') {
      // The receiver reads into one reusable buffer: an 8-byte length, that many bytes, then it
      // answers one byte.
      let header = Buffer.alloc(0);
      let left = -1;
      const socket: net.Socket = net.connect({
        host: c.host,
        port: c.port,
        noDelay: true,
        onread: {
          buffer: Buffer.alloc(4 << 20),
          callback: (n: number, buf: Uint8Array) => {
            let at = 0;
            while (at < n) {
              if (left < 0) {
                const take = Math.min(8 - header.length, n - at);
                header = Buffer.concat([header, buf.subarray(at, at + take)]);
                at += take;
                if (header.length === 8) {
                  left = Number(header.readBigUInt64LE(0));
                  header = Buffer.alloc(0);
                }
              } else {
                const take = Math.min(left, n - at);
                left -= take;
                at += take;
              }
              if (left === 0) {
                left = -1;
                socket.write('k');
              }
            }
            return true;
          },
        },
      });
      await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
      reply({ t: 'ok' });
    } else if (c.t === 'agent') {
      const blocks = ids(c.blocks);
      reply({ t: 'times', seconds: await timed(c.repeat, () => agent.write(blocks, remote, blocks, 'prefilled')) });
    } else if (c.t === 'raw') {
      await rawSocketReady;
      const header = Buffer.alloc(8);
      header.writeBigUInt64LE(BigInt(c.blocks * blockBytes));
      const body = payload.subarray(0, c.blocks * blockBytes);
      const seconds = await timed(c.repeat, () => {
        const acked = new Promise<void>((resolve) => (rawAck = resolve));
        rawSocket!.cork();
        rawSocket!.write(header);
        rawSocket!.write(body);
        rawSocket!.uncork();
        return acked;
      });
      reply({ t: 'times', seconds });
    } else if (c.t === 'digest') {
      reply({ t: 'digest', sha256: digest(region, c.blocks) });
    } else {
      break;
    }
  }
  rawSocket?.destroy();
  rawServer?.close();
  await agent.close();
  process.exit(0);
}

// ---- the orchestrator: the namespaces, the two peers, the rounds, the result ----

interface Peer {
  proc: ChildProcess;
  ask(c: Command): Promise<Record<string, unknown>>;
  hello: Promise<{ metadata: string; rawPort: number }>;
}

function startPeer(role: 'sender' | 'receiver', host: string, netns: string | undefined, maxBlocks: number): Peer {
  const node = [process.execPath, '--import', 'tsx', 'bench/kv-net.ts', '--peer', role, '--host', host, '--max-blocks', String(maxBlocks), '--block-size', String(layout.blockSize)];
  const argv = netns ? ['ip', 'netns', 'exec', netns, ...node] : node;
  const proc = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'inherit'] });
  const waiting: ((o: Record<string, unknown>) => void)[] = [];
  const exited = new Promise<never>((_, reject) => proc.once('exit', (code) => reject(new Error(`the ${role} exited (${code})`))));
  exited.catch(() => undefined);
  readline.createInterface({ input: proc.stdout! }).on('line', (line) => waiting.shift()?.(JSON.parse(line) as Record<string, unknown>));
  const next = () => Promise.race([new Promise<Record<string, unknown>>((resolve) => waiting.push(resolve)), exited]);
  const hello = next() as Promise<{ metadata: string; rawPort: number }>;
  return {
    proc,
    hello,
    ask: (c) => {
      const answer = next();
      proc.stdin!.write(JSON.stringify(c) + '\n');
      return answer;
    },
  };
}

function sh(cmd: string): boolean {
  return spawnSync('sh', ['-c', cmd], { stdio: ['ignore', 'ignore', 'inherit'] }).status === 0;
}

// Two namespaces joined by a veth pair; returns their names and a cleanup, or throws why not.
function makeHosts(tag: string): { ns: [string, string]; mtu: number; remove(): void } {
  const nsR = `${tag}r`;
  const nsS = `${tag}s`;
  const remove = () => {
    sh(`ip netns del ${nsR} 2>/dev/null`); // deleting a namespace deletes its end of the veth pair
    sh(`ip netns del ${nsS} 2>/dev/null`);
  };
  const up =
    sh(`ip netns add ${nsR}`) &&
    sh(`ip netns add ${nsS}`) &&
    sh(`ip link add ${tag}vr type veth peer name ${tag}vs`) &&
    sh(`ip link set ${tag}vr netns ${nsR}`) &&
    sh(`ip link set ${tag}vs netns ${nsS}`) &&
    sh(`ip -n ${nsR} addr add 10.233.0.1/24 dev ${tag}vr`) &&
    sh(`ip -n ${nsS} addr add 10.233.0.2/24 dev ${tag}vs`) &&
    sh(`ip -n ${nsR} link set ${tag}vr up`) &&
    sh(`ip -n ${nsS} link set ${tag}vs up`) &&
    sh(`ip -n ${nsR} link set lo up`) &&
    sh(`ip -n ${nsS} link set lo up`);
  if (!up) {
    remove();
    throw new Error('could not make two network namespaces joined by a veth pair (`ip netns add` or `ip link add type veth` failed); try --link loopback');
  }
  const mtu = Number(/mtu (\d+)/.exec(spawnSync('ip', ['-n', nsR, '-o', 'link', 'show', `${tag}vr`], { encoding: 'utf8' }).stdout)?.[1]);
  return { ns: [nsR, nsS], mtu, remove };
}

interface Figures {
  seconds: number[];
  medianGBs: number;
  bestGBs: number;
}

function figures(bytes: number, seconds: number[]): Figures {
  const sorted = [...seconds].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)]!;
  return { seconds, medianGBs: bytes / median / 1e9, bestGBs: bytes / sorted[0]! / 1e9 };
}

async function main(): Promise<void> {
  const counts = args.blocks!.split(',').map(Number);
  if (counts.some((n) => !Number.isInteger(n) || n < 1)) throw new Error(`--blocks must be a list of positive integers, got ${args.blocks}`);
  const rounds = Number(args.rounds);
  const repeat = Number(args.repeat);
  const maxBlocks = Math.max(...counts);
  const link = args.link;
  if (link !== 'veth' && link !== 'loopback') throw new Error(`--link must be veth or loopback, got ${link}`);
  if (link === 'veth' && process.getuid?.() !== 0) throw new Error('--link veth makes network namespaces, which needs root; run as root, or --link loopback');

  const loadAverageAtStart = os.loadavg();
  const hosts = link === 'veth' ? makeHosts(`kvn${process.pid}`) : undefined;
  const onSignal = () => {
    hosts?.remove();
    process.exit(130);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const [rHost, sHost] = hosts ? ['10.233.0.1', '10.233.0.2'] : ['127.0.0.1', '127.0.0.1'];
  const receiver = startPeer('receiver', rHost, hosts?.ns[0], maxBlocks);
  const sender = startPeer('sender', sHost, hosts?.ns[1], maxBlocks);
  try {
    const [r, s] = await Promise.all([receiver.hello, sender.hello]);
    await sender.ask({ t: 'connect', metadata: r.metadata });
    await receiver.ask({ t: 'raw-connect', host: sHost, port: s.rawPort });

    const cases = [];
    console.log(`KV blocks of ${blockBytes} bytes (llama-3.2-1b: ${layout.numLayers} layers, ${layout.numKvHeads} KV heads, head dim ${layout.headDim}, ${layout.dtype}, block size ${layout.blockSize}), link: ${link}`);
    console.log('blocks      bytes   agent GB/s (median, best)   raw TCP GB/s (median, best)   agent / raw');
    for (const blocks of counts) {
      const bytes = blocks * blockBytes;
      // About the same time per round whatever the size: fewer transfers of many blocks.
      const per = Math.max(2, Math.round(repeat / Math.max(1, blocks / 16)));
      await sender.ask({ t: 'agent', blocks, repeat: 2 }); // warm-up: pages, buffers, window
      await sender.ask({ t: 'raw', blocks, repeat: 2 });
      const agentSeconds: number[] = [];
      const rawSeconds: number[] = [];
      for (let round = 0; round < rounds; round++) {
        agentSeconds.push(...((await sender.ask({ t: 'agent', blocks, repeat: per })).seconds as number[]));
        rawSeconds.push(...((await sender.ask({ t: 'raw', blocks, repeat: per })).seconds as number[]));
      }
      const [sd, rd] = await Promise.all([sender.ask({ t: 'digest', blocks }), receiver.ask({ t: 'digest', blocks })]);
      if (sd.sha256 !== rd.sha256) throw new Error(`${blocks} blocks: the receiver's pool differs from the sender's after the agent's writes`);
      const agent = figures(bytes, agentSeconds);
      const raw = figures(bytes, rawSeconds);
      const ratio = agent.medianGBs / raw.medianGBs;
      cases.push({ blocks, bytes, agent, raw, agentOverRawMedian: ratio, bytesVerified: true });
      console.log(
        `${String(blocks).padStart(6)} ${String(bytes).padStart(10)}   ${agent.medianGBs.toFixed(3).padStart(8)} ${agent.bestGBs.toFixed(3).padStart(8)}` +
          `            ${raw.medianGBs.toFixed(3).padStart(8)} ${raw.bestGBs.toFixed(3).padStart(8)}           ${ratio.toFixed(2)}`,
      );
    }
    await Promise.all([sender.ask({ t: 'quit' }).catch(() => undefined), receiver.ask({ t: 'quit' }).catch(() => undefined)]);
    const commit = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim();
    const result = {
      date: new Date().toISOString(),
      commit,
      link: hosts
        ? { kind: 'veth pair between two network namespaces on one machine', addresses: [rHost, sHost], mtu: hosts.mtu }
        : { kind: 'loopback (one namespace)', addresses: [rHost, sHost] },
      machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, kernel: os.release(), node: process.version },
      loadAverageAtStart,
      loadAverageAfter: os.loadavg(),
      layout: { preset: 'llama-3.2-1b', ...layout, blockBytes },
      method: { rounds, repeatPerRound: 'max(2, round(repeat / max(1, blocks / 16)))', repeat, clusterSecret: true, gb: 1e9 },
      cases,
    };
    writeResult('kv-net', result, args.out);
  } finally {
    for (const p of [receiver.proc, sender.proc]) {
      p.kill();
      // A peer killed here leaves its pool behind (its exit handler did not run).
      for (const f of fs.readdirSync('/dev/shm')) if (f.startsWith(`kvserve-${p.pid}-kvnet-`)) fs.rmSync(`/dev/shm/${f}`, { force: true });
    }
    hosts?.remove();
  }
}

if (args.peer === 'sender' || args.peer === 'receiver') {
  await runPeer(args.peer, args.host ?? '127.0.0.1', Number(args['max-blocks']));
} else {
  await main();
}
