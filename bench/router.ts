// bench/router.ts: `npm run bench:router`: the KV router alone, in one Node process. Builds an
// index of ~1M distinct blocks over 64 workers from `stored` events, then routes 8k-token prompts
// (512 blocks of 16 tokens) and measures decisions/s and p50/p99 decision latency, event ingest in
// blocks/s (`stored` while building, `removed` at the end), and the router's prefix hit rate.
// Prints a table and writes JSON (bench/results/router-<time>.json).
//
// Workload. `groups` shared prefixes of `prefix-blocks` blocks (system prompts, documents), each
// cached on `replicas` random workers. Every worker also caches earlier conversations: a group
// prefix followed by a 128-block tail of its own, until the index holds `blocks` distinct hashes.
// Requests: 60% a group prefix + a fresh tail, 20% a cached conversation + a fresh suffix (a
// follow-up turn), 20% unrelated (all fresh). `in-flight` requests are outstanding at any time:
// each decision finishes the oldest one, so the active-block estimate and capacity checks run as
// in service. Hashes are random 16-hex strings (the router never recomputes them); the index
// stays fixed while routing (routed requests do not emit events).
//
// Flags: --workers 64, --blocks 1000000, --prompt-blocks 512, --groups 256, --prefix-blocks 384,
//        --replicas 3, --decisions 20000, --in-flight 256, --policy kv, --seed 1, --out FILE.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { BlockHash, KvEvent, RequestId, WorkerId } from '../ts/protocol/index.ts';
import { KvRouter, seededRng, type PolicyName } from '../ts/router/index.ts';

const { values: args } = parseArgs({
  options: {
    workers: { type: 'string', default: '64' },
    blocks: { type: 'string', default: '1000000' },
    'prompt-blocks': { type: 'string', default: '512' },
    groups: { type: 'string', default: '256' },
    'prefix-blocks': { type: 'string', default: '384' },
    replicas: { type: 'string', default: '3' },
    decisions: { type: 'string', default: '20000' },
    'in-flight': { type: 'string', default: '256' },
    policy: { type: 'string', default: 'kv' },
    seed: { type: 'string', default: '1' },
    out: { type: 'string' },
  },
});

const config = {
  workers: Number(args.workers),
  blocks: Number(args.blocks),
  promptBlocks: Number(args['prompt-blocks']),
  groups: Number(args.groups),
  prefixBlocks: Number(args['prefix-blocks']),
  replicas: Number(args.replicas),
  decisions: Number(args.decisions),
  inFlight: Number(args['in-flight']),
  policy: args.policy as PolicyName,
  seed: Number(args.seed),
  blockSize: 16,
  warmupDecisions: 2000,
};
const targets = { p99Ms: 1, ingestBlocksPerSecond: 250_000 };

const rng = seededRng(config.seed);
const pick = <T>(list: readonly T[]): T => list[Math.floor(rng() * list.length)]!;
// One flat string, as the native addon hands them over (a concatenation would be a rope).
const hexCodes = [...'0123456789abcdef'].map((c) => c.charCodeAt(0));
const randomHash = (): BlockHash =>
  String.fromCharCode(...Array.from({ length: 16 }, () => hexCodes[Math.floor(rng() * 16)]!)) as BlockHash;
const randomHashes = (n: number): BlockHash[] => Array.from({ length: n }, randomHash);

interface Conversation {
  worker: WorkerId;
  blocks: BlockHash[]; // group prefix + tail
}

// Stored events of 16-64 blocks each for one worker caching `chain` (parent = the block before).
function storedEvents(worker: WorkerId, chain: BlockHash[], from: number, nextId: Map<WorkerId, number>): KvEvent[] {
  const events: KvEvent[] = [];
  for (let at = from; at < chain.length; ) {
    const size = Math.min(chain.length - at, 16 + Math.floor(rng() * 49));
    const id = nextId.get(worker)!;
    nextId.set(worker, id + 1);
    events.push({
      worker_id: worker,
      event_id: id,
      data: { stored: { parent_hash: at === 0 ? null : chain[at - 1]!, block_hashes: chain.slice(at, at + size) } },
    });
    at += size;
  }
  return events;
}

function buildWorkload(workers: WorkerId[], nextId: Map<WorkerId, number>) {
  const prefixes = Array.from({ length: config.groups }, () => randomHashes(config.prefixBlocks));
  const events: KvEvent[] = [];
  const hostsOf = prefixes.map(() => new Set<WorkerId>());
  for (let g = 0; g < prefixes.length; g++) {
    while (hostsOf[g]!.size < Math.min(config.replicas, workers.length)) hostsOf[g]!.add(pick(workers));
    for (const w of hostsOf[g]!) events.push(...storedEvents(w, prefixes[g]!, 0, nextId));
  }
  const tailBlocks = config.promptBlocks - config.prefixBlocks;
  const conversations: Conversation[] = [];
  let distinct = config.groups * config.prefixBlocks;
  while (distinct < config.blocks) {
    const g = Math.floor(rng() * prefixes.length);
    const worker = pick([...hostsOf[g]!]);
    const chain = [...prefixes[g]!, ...randomHashes(tailBlocks)];
    events.push(...storedEvents(worker, chain, config.prefixBlocks, nextId));
    conversations.push({ worker, blocks: chain });
    distinct += tailBlocks;
  }
  // Interleave workers as one event stream would (each worker's own order is kept).
  const byWorker = new Map<WorkerId, KvEvent[]>();
  for (const e of events) (byWorker.get(e.worker_id) ?? byWorker.set(e.worker_id, []).get(e.worker_id)!).push(e);
  const queues = [...byWorker.values()];
  const stream: KvEvent[] = [];
  for (let round = 0; stream.length < events.length; round++) {
    for (const q of queues) if (round < q.length) stream.push(q[round]!);
  }
  return { prefixes, conversations, stream };
}

function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function main() {
  const workers = Array.from({ length: config.workers }, (_, i) => `worker-${i}` as WorkerId);
  const nextId = new Map(workers.map((w) => [w, 0]));
  // As the frontend runs it: predictions on (ts/frontend/routed-worker-pool.ts).
  const router = new KvRouter({ blockSize: config.blockSize, policy: config.policy, predictionGraceMs: 2000, rng: seededRng(config.seed + 1) });
  for (const w of workers) {
    const refused = router.addWorker({ workerId: w, blockSize: config.blockSize, kvTotalBlocks: 32768, requestTotalSlots: 64 });
    if (refused !== undefined) throw new Error(refused);
    router.applyEvent({ worker_id: w, event_id: nextId.get(w)!, data: { cleared: {} } });
    nextId.set(w, nextId.get(w)! + 1);
  }

  let t = performance.now();
  const { prefixes, conversations, stream } = buildWorkload(workers, nextId);
  const storedBlocks = stream.reduce((sum, e) => sum + ('stored' in e.data ? e.data.stored.block_hashes.length : 0), 0);
  console.log(`workload: ${stream.length} stored events, ${storedBlocks} blocks (built in ${((performance.now() - t) / 1000).toFixed(1)} s)`);

  // ---- ingest: stored ----
  t = performance.now();
  for (const e of stream) {
    if (router.applyEvent(e) !== 'ok') throw new Error(`event ${e.worker_id}#${e.event_id} was not 'ok'`);
  }
  const storedSeconds = (performance.now() - t) / 1000;
  const indexed = router.metrics().indexedBlocks;
  console.log(`ingest stored: ${storedBlocks} blocks in ${storedSeconds.toFixed(2)} s; index holds ${indexed} distinct blocks`);

  // ---- routing ----
  const freshTail = config.promptBlocks - config.prefixBlocks;
  const nextRequest = (): BlockHash[] => {
    const kind = rng();
    if (kind < 0.6) return [...pick(prefixes), ...randomHashes(freshTail)];
    if (kind < 0.8) {
      const conv = pick(conversations).blocks;
      const keep = config.promptBlocks - 16 - Math.floor(rng() * 64);
      return [...conv.slice(0, keep), ...randomHashes(config.promptBlocks - keep)];
    }
    return randomHashes(config.promptBlocks);
  };
  const outstanding: RequestId[] = [];
  const latencies = new Float64Array(config.decisions);
  let routed = 0;
  const decide = (i: number, record: boolean) => {
    const requestId = `req-${i}` as RequestId;
    const blockHashes = nextRequest();
    const start = performance.now();
    const decision = router.tryRoute({ requestId, blockHashes });
    const elapsed = performance.now() - start;
    if (decision === undefined) throw new Error('no worker had room: raise kvTotalBlocks in the bench');
    if (record) latencies[routed++] = elapsed;
    outstanding.push(requestId);
    if (outstanding.length > config.inFlight) router.finish(outstanding.shift()!);
  };
  for (let i = 0; i < config.warmupDecisions; i++) decide(i, false);
  const before = router.metrics();
  for (let i = 0; i < config.decisions; i++) decide(config.warmupDecisions + i, true);
  const after = router.metrics();
  const sorted = latencies.slice().sort();
  const totalMs = latencies.reduce((a, b) => a + b, 0);
  const hitRate = (after.overlapBlocks - before.overlapBlocks) / (after.requestBlocks - before.requestBlocks);
  const routedPerWorker = after.workers.map((w) => w.routed);

  // ---- ingest: removed (evict a quarter of every conversation tail, tail first) ----
  const removals: KvEvent[] = [];
  for (const conv of conversations) {
    const id = nextId.get(conv.worker)!;
    nextId.set(conv.worker, id + 1);
    removals.push({ worker_id: conv.worker, event_id: id, data: { removed: { block_hashes: conv.blocks.slice(-32).reverse() } } });
  }
  const removedBlocks = removals.length * 32;
  t = performance.now();
  for (const e of removals) router.applyEvent(e);
  const removedSeconds = (performance.now() - t) / 1000;

  const results = {
    indexedBlocks: indexed,
    storedEvents: stream.length,
    ingestStoredBlocksPerSecond: storedBlocks / storedSeconds,
    ingestRemovedBlocksPerSecond: removedBlocks / removedSeconds,
    decisions: config.decisions,
    decisionsPerSecond: config.decisions / (totalMs / 1000),
    decisionMs: {
      p50: percentile(sorted, 50),
      p90: percentile(sorted, 90),
      p99: percentile(sorted, 99),
      p999: percentile(sorted, 99.9),
      max: sorted[sorted.length - 1]!,
      mean: totalMs / config.decisions,
    },
    hitRate,
    routedPerWorker: { min: Math.min(...routedPerWorker), max: Math.max(...routedPerWorker) },
    heapUsedMiB: Math.round(process.memoryUsage().heapUsed / 2 ** 20),
  };

  const ms = (v: number) => `${(v * 1000).toFixed(1)} µs`;
  const rows: [string, string, string][] = [
    ['indexed blocks (distinct)', String(indexed), '~' + config.blocks],
    ['ingest stored', `${Math.round(results.ingestStoredBlocksPerSecond).toLocaleString('en')} blocks/s`, `>= ${targets.ingestBlocksPerSecond.toLocaleString('en')}`],
    ['ingest removed', `${Math.round(results.ingestRemovedBlocksPerSecond).toLocaleString('en')} blocks/s`, ''],
    ['decisions/s (one thread)', Math.round(results.decisionsPerSecond).toLocaleString('en'), ''],
    ['decision p50', ms(results.decisionMs.p50), ''],
    ['decision p90', ms(results.decisionMs.p90), ''],
    ['decision p99', ms(results.decisionMs.p99), `<= ${targets.p99Ms * 1000} µs`],
    ['decision p99.9 / max', `${ms(results.decisionMs.p999)} / ${ms(results.decisionMs.max)}`, ''],
    ['prefix hit rate', `${(hitRate * 100).toFixed(1)} %`, ''],
    ['routed per worker (min / max)', `${results.routedPerWorker.min} / ${results.routedPerWorker.max}`, ''],
    ['heap used', `${results.heapUsedMiB} MiB`, ''],
  ];
  console.log(`\n${config.workers} workers, ${config.promptBlocks}-block prompts, policy ${config.policy}\n`);
  console.log('| measurement | value | target |\n|---|---:|---:|');
  for (const [name, value, target] of rows) console.log(`| ${name} | ${value} | ${target} |`);

  const result = {
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, node: process.version, memoryGiB: Math.round(os.totalmem() / 2 ** 30) },
    config,
    targets,
    met: { p99: results.decisionMs.p99 <= targets.p99Ms, ingest: results.ingestStoredBlocksPerSecond >= targets.ingestBlocksPerSecond },
    results,
  };
  const out = args.out ?? path.join('bench', 'results', `router-${result.date.replace(/[:.]/g, '-')}.json`);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, JSON.stringify(result, null, 2));
  console.log(`\nwrote ${out}`);
}

main();
