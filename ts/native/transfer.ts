// transfer.ts: the typed, validated face of the native KV transfer agent (DESIGN.md section 6;
// native/transfer/transfer-agent.h has the algorithm and the guarantees).
//
// Owns: one native TransferAgent of one worker.
// Stays true: arguments are validated and normalised here, in labelled steps, before anything
// reaches native code (block lists become Int32Arrays); every failure is a NativeError:
// ERR_INVALID_ARGUMENT for a malformed argument, ERR_TRANSFER_INVALID for block ids out of
// range, unequal list lengths, bad metadata or another KV layout, ERR_TRANSFER_PEER for an
// unknown, restarted or unreachable agent, ERR_TRANSFER_CLOSED after close().
// onNotification(from, message) runs, on the JS thread, only after the blocks of the write that
// sent it are in this agent's pool; from one agent, in the order of its writes.
import { loadAddon } from './loader.js';
import { callNative, invalidArgument, toNativeError } from './errors.js';
import type { NativeKvRegion, NativeTransferStats, TransferAgent as NativeTransferAgent } from './addon.js';

export interface TransferAgentOptions {
  name: string; // unique among connected agents, e.g. the worker id
  listenHost?: string; // default '127.0.0.1'; '0.0.0.0' for other hosts
  listenPort?: number; // default 0 = ephemeral
  clusterSecret?: string; // every peer, both ways, must prove it knows it, once per connection
  // (native/transfer/transfer-auth.h); absent = none asked. Never logged, never sent.
}

// Absent = automatic: shm when the remote is on this host and its segment opens, else tcp.
export type TransferBackend = 'shm' | 'tcp' | 'cuda_ipc';

export type { NativeTransferStats as TransferStats };

function checkBlocks(name: string, blocks: ArrayLike<number>): Int32Array {
  if (blocks === null || typeof blocks !== 'object' || typeof blocks.length !== 'number') {
    throw invalidArgument(`${name} must be an array of block ids`);
  }
  const out = Int32Array.from(blocks);
  for (let i = 0; i < out.length; i++) {
    if (out[i] !== blocks[i]) throw invalidArgument(`${name}[${i}] is not an int32 block id: ${String(blocks[i])}`);
  }
  return out;
}

function checkString(name: string, v: unknown, allowEmpty: boolean): string {
  if (typeof v !== 'string' || (!allowEmpty && v.length === 0)) {
    throw invalidArgument(`${name} must be a${allowEmpty ? '' : ' non-empty'} string`);
  }
  return v;
}

// A native promise whose rejection becomes a NativeError.
async function settle<T>(p: () => Promise<T>): Promise<T> {
  try {
    return await p();
  } catch (err) {
    throw toNativeError(err);
  }
}

export class TransferAgent {
  private readonly native: NativeTransferAgent;
  readonly name: string;

  constructor(opts: TransferAgentOptions, onNotification: (from: string, message: string) => void) {
    // 1. Options, normalised with defaults.
    if (!opts || typeof opts !== 'object') throw invalidArgument('options must be an object');
    const name = checkString('name', opts.name, false);
    const listenHost = checkString('listenHost', opts.listenHost ?? '127.0.0.1', false);
    const listenPort = opts.listenPort ?? 0;
    if (!Number.isInteger(listenPort) || listenPort < 0 || listenPort > 65535) {
      throw invalidArgument(`listenPort must be an integer in [0, 65535], got ${String(listenPort)}`);
    }
    if (opts.clusterSecret !== undefined) checkString('clusterSecret', opts.clusterSecret, false);
    if (typeof onNotification !== 'function') throw invalidArgument('onNotification must be a function');
    // 2. The native agent: starts its listener.
    const addon = loadAddon();
    const secret = opts.clusterSecret === undefined ? {} : { clusterSecret: opts.clusterSecret };
    this.native = callNative(
      () => new addon.TransferAgent({ name, listenHost, listenPort, ...secret }, onNotification),
    );
    this.name = name;
  }

  // This worker's KV pool (Engine.kvRegion() of an engine created with kvSharedMemory, or of any
  // engine on CUDA: its pool moves by CUDA IPC); once. The same as registerRegions([region]).
  registerRegion(region: NativeKvRegion): void {
    this.registerRegions([region]);
  }

  // A tensor-parallel worker's pool: one region per rank (any order), each holding its slice of
  // the kv heads, together every head; once. Blocks then move to and from agents of any TP size
  // whose model-level layout agrees. On CUDA each rank's region is its own allocation, rank 0's by
  // its device pointer and the others' by the IPC handles their processes exported.
  registerRegions(regions: NativeKvRegion[]): void {
    // 1. A non-empty array of objects.
    if (!Array.isArray(regions) || regions.length === 0) {
      throw invalidArgument('regions must be a non-empty array of KV regions');
    }
    regions.forEach((region, i) => {
      if (!region || typeof region !== 'object') throw invalidArgument(`regions[${i}] must be a KV region`);
    });
    // 2. The native side checks the regions against each other and maps them.
    callNative(() => this.native.registerRegions(regions));
  }

  // This agent's metadata (JSON), to publish in discovery.
  metadata(): string {
    return callNative(() => this.native.metadata());
  }

  // Connects to the agent the metadata describes and returns its name; blocks the JS thread for
  // a TCP connect and one round trip (5 s at most). Connecting again to an agent of that name
  // (e.g. restarted, with new metadata) replaces the old connection.
  connect(metadata: string, backend?: TransferBackend): string {
    checkString('metadata', metadata, false);
    if (backend !== undefined && backend !== 'shm' && backend !== 'tcp' && backend !== 'cuda_ipc') {
      throw invalidArgument(`backend must be 'shm', 'tcp' or 'cuda_ipc', got ${String(backend)}`);
    }
    return callNative(() => this.native.connect(metadata, backend ?? 'auto'));
  }

  // Copies local blocks localBlocks[i] into the remote's remoteBlocks[i], then delivers the
  // notification ('' = none); resolves once the remote has it.
  async write(
    localBlocks: ArrayLike<number>,
    remote: string,
    remoteBlocks: ArrayLike<number>,
    notification = '',
  ): Promise<void> {
    const local = checkBlocks('localBlocks', localBlocks);
    const name = checkString('remote', remote, false);
    const dest = checkBlocks('remoteBlocks', remoteBlocks);
    const note = checkString('notification', notification, true);
    return settle(() => this.native.write(local, name, dest, note));
  }

  // Copies the remote's remoteBlocks[i] into local blocks localBlocks[i].
  async read(remote: string, remoteBlocks: ArrayLike<number>, localBlocks: ArrayLike<number>): Promise<void> {
    const name = checkString('remote', remote, false);
    const src = checkBlocks('remoteBlocks', remoteBlocks);
    const local = checkBlocks('localBlocks', localBlocks);
    return settle(() => this.native.read(name, src, local));
  }

  stats(): NativeTransferStats {
    return this.native.stats();
  }

  // Stops the listener and drops every connection; safe to call twice.
  async close(): Promise<void> {
    return settle(() => this.native.close());
  }
}
