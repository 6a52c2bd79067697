// bench/engine.ts: `npm run bench:engine`: the engine's CPU speed against the hardware and against
// llama.cpp, on a Llama-3.2-1B-shaped bf16 model (16 layers, hidden 2048, 32 heads, 8 KV heads,
// FFN 8192, vocab 128256, tied; random weights: speed depends only on shapes and dtypes),
// generated once and cached. One run measures:
// - ours: decode tokens/s at batch 1, 8 and 32, prefill tokens/s of a 512-token prompt;
// - memory read bandwidth (the addon's STREAM-like readBandwidthGBs probe) and the batch-1 decode
//   roofline: bandwidth / weight bytes read per token (all weights; the lm_head included);
// - the compute peak of the kernel path's main instruction (computePeakGflops: fp32 FMA, vdpbf16ps
//   or AMX tdpbf16ps, data in registers), and prefill and batched decode as a fraction of it
//   (matmul FLOPs as the engine runs them: every token through the layers, the lm_head for a
//   prefill's last token only, for every decoded token; plus a prefill's causal attention);
// - llama.cpp (node-llama-cpp 3.21.1, CPU, same thread count) on GGUFs of the same model in BF16
//   and F16 (written by bench/gguf, cached next to the model): batch-1 decode and prompt
//   processing of the same 512 tokens;
// then prints a table of our/llama.cpp ratios against the path's targets (TARGETS) and writes JSON
// (bench/results/engine-<time>.json). The ratios the targets hold (against llama.cpp, the
// roofline, batch 32 over batch 1) are the median of each round's own ratio, since bandwidth moves
// between rounds; the tables of tokens/s show each figure's best round.
//
// Flags: --model DIR (another Llama model), --preset NAME (default llama-3.2-1b), --threads N
//        (default 2), --decode-tokens N (per request, default 16), --batches 1,8,32,
//        --prefill-len 512, --llamacpp bf16,f16 (GGUF dtypes; 'none' skips llama.cpp),
//        --llamacpp-cpu VARIANT (llama.cpp's CPU build: by default the best this CPU runs, e.g.
//        zen4; 'haswell' is its AVX2 build, llama.cpp as on a CPU without AVX-512, the peer of
//        our avx2 path; the build it ran is printed and kept in the JSON),
//        --repeat N (rounds; each figure is the fastest of its N: the machine is shared), --out FILE,
//        --paths P (kernel paths, each in a child process with KVSERVE_CPU_KERNELS=P, since the
//        addon picks its path once per process: a comma list, or 'all' = every one this CPU runs
//        among avx2, avx512, avx512-bf16, amx; llama.cpp runs in the first child only; then a
//        table of the paths side by side). Without --paths: the path the addon picks (or the one
//        KVSERVE_CPU_KERNELS names).
//        --sampling greedy|temperature|top-p (how our decode requests sample: greedy, the
//        default; temperature 1 over the whole vocabulary; temperature 0.6 with top_p 0.9, the
//        Llama 3 generation config; llama.cpp stays greedy, so pair it with --llamacpp none),
//        --tp 1,2,4 (tensor parallelism instead: for each size, an engine of that many rank
//        processes sharing the --threads cores, each rank pinned to its share; decode at
//        --batches and the prefill, then a table of the sizes; no llama.cpp).

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { ensureModel } from '../ts/modelgen/index.ts';
import { collect, Engine, loadAddon } from '../ts/native/index.ts';
import { writeResult } from './common.ts';
import { startTpRanks } from '../ts/worker/tp-ranks.ts';
import { ensureGguf, type GgufDtype } from './gguf/hf-to-gguf.ts';
import { llamaCppSpeed, loadedLlamaCppCpuVariant, openLlamaCpp, useLlamaCppCpuVariant, type LlamaCppSession, type LlamaCppSpeed } from './llamacpp.ts';

const { values: args } = parseArgs({
  options: {
    model: { type: 'string' },
    preset: { type: 'string', default: 'llama-3.2-1b' },
    threads: { type: 'string', default: '2' },
    'decode-tokens': { type: 'string', default: '16' },
    batches: { type: 'string', default: '1,8,32' },
    'prefill-len': { type: 'string', default: '512' },
    llamacpp: { type: 'string', default: 'bf16,f16' },
    'llamacpp-cpu': { type: 'string' },
    repeat: { type: 'string', default: '1' },
    out: { type: 'string' },
    paths: { type: 'string' },
    tp: { type: 'string' },
    sampling: { type: 'string', default: 'greedy' },
  },
});

const SAMPLING = {
  greedy: { temperature: 0 },
  temperature: { temperature: 1, seed: 1 },
  'top-p': { temperature: 0.6, topP: 0.9, seed: 1 },
} as const;
if (!(args.sampling! in SAMPLING)) {
  console.error(`--sampling must be one of ${Object.keys(SAMPLING).join(', ')}, got '${args.sampling}'`);
  process.exit(2);
}
const decodeSampling = SAMPLING[args.sampling as keyof typeof SAMPLING];

// The targets the report holds a path to, on this 2-core machine: the AMX engine's (absolute
// prefill speed), and those of the paths for CPUs without AMX (prefill as a fraction of the path's
// compute peak). Other paths (avx512, reference) have none.
interface Targets {
  decodeVsLlamaCppBf16: number;
  decodeRooflineFraction: number;
  prefillTokensPerSecond?: number;
  prefillPeakFraction?: number;
  prefillVsLlamaCppBf16: number;
  batch32VsBatch1: number;
}
const AMX_TARGETS: Targets = { decodeVsLlamaCppBf16: 1.2, decodeRooflineFraction: 0.87, prefillTokensPerSecond: 800, prefillVsLlamaCppBf16: 5, batch32VsBatch1: 10 };
const TARGETS: Record<string, Targets> = {
  amx: AMX_TARGETS,
  'amx-exact': AMX_TARGETS,
  'amx-bf16': AMX_TARGETS,
  'avx512-bf16': { decodeVsLlamaCppBf16: 1.05, decodeRooflineFraction: 0.85, prefillPeakFraction: 0.7, prefillVsLlamaCppBf16: 2, batch32VsBatch1: 10 },
  avx2: { decodeVsLlamaCppBf16: 1.05, decodeRooflineFraction: 0.85, prefillPeakFraction: 0.7, prefillVsLlamaCppBf16: 1.5, batch32VsBatch1: 8 },
};

interface Rate {
  tokens: number;
  seconds: number;
  tokensPerSecond: number;
}

function rate(tokens: number, seconds: number): Rate {
  return { tokens, seconds, tokensPerSecond: tokens / seconds };
}

function promptOf(seed: number, len: number): number[] {
  let x = seed + 1;
  return Array.from({ length: len }, () => {
    x = (x * 1103515245 + 12345) >>> 0;
    return 1000 + (x % 100000);
  });
}

const threads = Number(args.threads);
const prefillLen = Number(args['prefill-len']);
const decodeTokens = Number(args['decode-tokens']);
const batches = args.batches!.split(',').map(Number);
const ggufDtypes = args.llamacpp === 'none' ? [] : (args.llamacpp!.split(',') as GgufDtype[]);
if (args['llamacpp-cpu'] !== undefined && ggufDtypes.length === 0) {
  console.error('--llamacpp-cpu chooses the build of llama.cpp, which --llamacpp none does not run');
  process.exit(2);
}
const repeat = Number(args.repeat);
const prefillPrompt = promptOf(99, prefillLen);

// Decode: B requests with 16-token prompts; timed from the step where the last first token
// arrived to the end, counting only tokens produced in that window.
async function measureDecode(engine: Engine, B: number, idPrefix: string): Promise<Rate> {
  let firstAt = 0;
  let firstSeen = 0;
  let tokensAfter = 0;
  await Promise.all(
    Array.from({ length: B }, async (_, i) => {
      let seen = false;
      for await (const o of engine.generate(`${idPrefix}-${i}`, promptOf(i, 16), { ...decodeSampling, ignoreEos: true, maxTokens: decodeTokens })) {
        if (!seen) {
          seen = true;
          if (++firstSeen === B) firstAt = performance.now();
          continue;
        }
        if (firstSeen === B) tokensAfter += o.newTokenIds.length;
      }
    }),
  );
  return rate(tokensAfter, (performance.now() - firstAt) / 1000);
}

function openEngine(modelDir: string, tp = 1): Engine {
  const options = {
    modelDir,
    numThreads: threads,
    maxModelLen: Math.max(prefillLen + 8, 512),
    maxNumSeqs: Math.max(...batches),
    maxNumBatchedTokens: Math.max(prefillLen, ...batches),
    enablePrefixCaching: false,
    kvCacheBytes: 1 << 30,
  };
  const ranks = tp > 1 ? startTpRanks(options, tp, 'bench') : undefined;
  let engine: Engine;
  try {
    engine = new Engine(ranks ? { ...options, tpSize: tp, tpGroup: ranks.group, tpRankPids: ranks.pids } : options);
  } catch (err) {
    ranks?.kill();
    throw err;
  }
  ranks?.stopping(); // they stop with engine.close()
  const info = engine.info;
  console.log(`engine: backend ${info.backend}, kernels ${info.kernels}, KV ${info.kvCacheDtype}, ${info.numKvBlocks} blocks, ${threads} threads${tp > 1 ? ` over ${tp} tensor-parallel ranks` : ''}, decode sampling ${args.sampling}`);
  return engine;
}

// --tp: each size in turn (one engine at a time), best of --repeat rounds.
async function runTp(modelDir: string, list: string): Promise<void> {
  const sizes = list.split(',').map(Number);
  const rows: { tp: number; ours: OurRound }[] = [];
  for (const tp of sizes) {
    const engine = openEngine(modelDir, tp);
    try {
      let best: OurRound | undefined;
      for (let round = 0; round < repeat; round++) {
        const r = await measureOurs(engine, round);
        if (!best) best = r;
        else {
          best.decode = best.decode.map((d, i) => (r.decode[i]!.tokensPerSecond > d.tokensPerSecond ? r.decode[i]! : d));
          if (r.prefill.tokensPerSecond > best.prefill.tokensPerSecond) best.prefill = r.prefill;
        }
      }
      rows.push({ tp, ours: best! });
    } finally {
      await engine.close();
    }
  }
  const cpu = loadAddon().cpuKernelInfo();
  console.log(`\n${os.cpus()[0]?.model ?? 'CPU'}, path ${cpu.path}, ${threads} threads in all`);
  console.log(`| TP | threads per rank | prefill ${prefillLen} tok/s | ${batches.map((b) => `decode b${b} tok/s`).join(' | ')} |`);
  console.log(`|---:|---:|---:|${batches.map(() => '---:').join('|')}|`);
  for (const { tp, ours } of rows) {
    const per = threads >= tp ? String(Math.floor(threads / tp)) : `1 (${tp} ranks on ${threads} cores)`;
    console.log(`| ${tp} | ${per} | ${ours.prefill.tokensPerSecond.toFixed(1)} | ${ours.decode.map((d) => d.tokensPerSecond.toFixed(2)).join(' | ')} |`);
  }
  const result = { date: new Date().toISOString(), cpu: os.cpus()[0]?.model, kernels: cpu.path, threads, prefillLen, rows };
  writeResult('engine-tp', result, args.out);
}

interface OurRound {
  decode: (Rate & { batch: number })[];
  prefill: Rate;
}

// One round of our measurements, after a warm-up request that pages the weights in
// (llamaCppSpeed does the same for llama.cpp).
async function measureOurs(engine: Engine, round: number): Promise<OurRound> {
  await collect(engine.generate(`warmup-${round}`, promptOf(0, 8), { temperature: 0, maxTokens: 2 }));
  const decode: OurRound['decode'] = [];
  for (const B of batches) decode.push({ batch: B, ...(await measureDecode(engine, B, `d${B}-${round}`)) });
  const start = performance.now();
  await collect(engine.generate(`prefill-${round}`, prefillPrompt, { temperature: 0, maxTokens: 1 }));
  const prefill = rate(prefillLen, (performance.now() - start) / 1000);
  console.log(`ours: decode ${decode.map((d) => `batch ${d.batch} ${d.tokensPerSecond.toFixed(2)}`).join(', ')} tok/s; prefill ${prefillLen} ${prefill.tokensPerSecond.toFixed(1)} tok/s`);
  return { decode, prefill };
}

interface Peer {
  dtype: GgufDtype;
  gguf: string;
  session: LlamaCppSession;
}

async function openPeers(modelDir: string): Promise<Peer[]> {
  const peers: Peer[] = [];
  useLlamaCppCpuVariant(args['llamacpp-cpu']);
  for (const dtype of ggufDtypes) {
    const t0 = performance.now();
    const gguf = await ensureGguf(modelDir, dtype);
    console.log(`llama.cpp ${dtype}: ${gguf} (ready in ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    peers.push({ dtype, gguf, session: await openLlamaCpp(gguf, { threads, contextSize: prefillLen + 64, batchSize: prefillLen }) });
  }
  if (peers.length) console.log(`llama.cpp CPU build: ${loadedLlamaCppCpuVariant() ?? 'unknown'} (${args['llamacpp-cpu'] ? 'chosen by --llamacpp-cpu' : "llama.cpp's pick for this CPU"})`);
  return peers;
}

async function measurePeer(peer: Peer): Promise<LlamaCppSpeed> {
  const speed = await llamaCppSpeed(peer.session.seq, prefillPrompt, decodeTokens);
  console.log(`llama.cpp ${peer.dtype}: decode batch 1 ${speed.decodeTokensPerSecond.toFixed(2)} tok/s; prefill ${prefillLen} ${speed.prefillTokensPerSecond.toFixed(1)} tok/s`);
  return speed;
}

// a / b, undefined when either is missing.
const ratioOf = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined ? undefined : a / b);

// The median of the defined values (the mean of the middle two for an even count).
function median(xs: (number | undefined)[]): number | undefined {
  const v = xs.filter((x): x is number => x !== undefined && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const h = Math.floor(v.length / 2);
  return v.length % 2 ? v[h] : (v[h - 1]! + v[h]!) / 2;
}

const faster = <T extends { tokensPerSecond: number }>(a: T, b: T): T => (b.tokensPerSecond > a.tokensPerSecond ? b : a);

// Matmul FLOPs of one layer per token (q, k, v, o, gate, up, down) and of the lm_head per token.
function matmulFlops(m: { hiddenSize: number; intermediateSize: number; numHeads: number; numKvHeads: number; headDim: number; numLayers: number; vocabSize: number }) {
  const D = m.hiddenSize, qd = m.numHeads * m.headDim, kvd = m.numKvHeads * m.headDim;
  return { layers: 2 * m.numLayers * (D * qd + 2 * D * kvd + qd * D + 3 * D * m.intermediateSize), lmHead: 2 * m.vocabSize * D };
}

function probePeak(path: string): number | undefined {
  try {
    const gflops = loadAddon().computePeakGflops(path, threads);
    console.log(`compute peak: ${gflops.toFixed(1)} GFLOP/s (${path}'s main instruction, ${threads} threads)`);
    return gflops;
  } catch (err) {
    console.log(`compute peak: none for ${path} (${(err as Error).message})`);
    return undefined;
  }
}

function probeBandwidth(): number {
  const GBs = loadAddon().readBandwidthGBs(undefined, threads);
  console.log(`bandwidth: ${GBs.toFixed(1)} GB/s read, ${threads} threads`);
  return GBs;
}

const fmt = (x: number | undefined, digits = 2) => (x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(digits));
const times = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? '-' : `${x.toFixed(2)}x`);
const pct = (x: number | undefined) => (x === undefined ? '-' : `${(100 * x).toFixed(0)}%`);

async function main() {
  const loadBefore = os.loadavg();
  const t0 = performance.now();
  const modelDir = args.model ?? (await ensureModel(args.preset!)).dir;
  console.log(`model: ${modelDir} (ready in ${((performance.now() - t0) / 1000).toFixed(1)} s); load average ${loadBefore.map((l) => l.toFixed(2)).join(' ')}`);

  if (args.tp) return runTp(modelDir, args.tp);
  const engine = openEngine(modelDir);
  const info = engine.info;
  const peers = await openPeers(modelDir);
  // Rounds interleave the bandwidth probe, ours and llama.cpp, so that load from other processes
  // hits all alike; each figure is the best of its rounds.
  const rounds: { GBs: number; peak: number | undefined; ours: OurRound; peers: LlamaCppSpeed[] }[] = [];
  const kernelPath = loadAddon().cpuKernelInfo().path;
  try {
    for (let round = 0; round < repeat; round++) {
      const GBs = probeBandwidth();
      const peak = probePeak(kernelPath);
      const ours = await measureOurs(engine, round);
      const speeds: LlamaCppSpeed[] = [];
      for (const peer of peers) speeds.push(await measurePeer(peer));
      rounds.push({ GBs, peak, ours, peers: speeds });
    }
  } finally {
    await engine.close();
    for (const peer of peers) await peer.session.close();
  }
  const bandwidth = { GBs: Math.max(...rounds.map((r) => r.GBs)), threads };
  const peaks = rounds.map((r) => r.peak).filter((p): p is number => p !== undefined);
  const peakGflops = peaks.length ? Math.max(...peaks) : undefined;
  const ours: OurRound = {
    decode: batches.map((_, i) => rounds.map((r) => r.ours.decode[i]!).reduce(faster)),
    prefill: rounds.map((r) => r.ours.prefill).reduce(faster),
  };
  const llamacpp: Partial<Record<GgufDtype, LlamaCppSpeed & { gguf: string }>> = {};
  peers.forEach((peer, i) => {
    const runs = rounds.map((r) => r.peers[i]!);
    llamacpp[peer.dtype] = {
      gguf: peer.gguf,
      ...runs[0]!,
      decodeTokensPerSecond: Math.max(...runs.map((r) => r.decodeTokensPerSecond)),
      prefillTokensPerSecond: Math.max(...runs.map((r) => r.prefillTokensPerSecond)),
    };
  });

  const bytesPerToken = info.model.weightBytes;
  const rooflineTokensPerSecond = (bandwidth.GBs * 1e9) / bytesPerToken;
  // The same ratios within each round (its own bandwidth probe, ours and llama.cpp back to back),
  // and their median: the machine's bandwidth moves between rounds, so a ratio of two bests taken
  // in different rounds can be off by more than the difference it is meant to show.
  const ourB1 = (r: (typeof rounds)[number]) => r.ours.decode.find((d) => d.batch === 1)?.tokensPerSecond;
  const bf16Index = peers.findIndex((p) => p.dtype === 'bf16');
  const paired = {
    decodeVsLlamaCppBf16: median(rounds.map((r) => ratioOf(ourB1(r), r.peers[bf16Index]?.decodeTokensPerSecond))),
    decodeRooflineFraction: median(rounds.map((r) => ratioOf(ourB1(r), (r.GBs * 1e9) / bytesPerToken))),
    prefillVsLlamaCppBf16: median(rounds.map((r) => ratioOf(r.ours.prefill.tokensPerSecond, r.peers[bf16Index]?.prefillTokensPerSecond))),
    batch32VsBatch1: median(rounds.map((r) => ratioOf(r.ours.decode.find((d) => d.batch === 32)?.tokensPerSecond, ourB1(r)))),
  };
  const b1 = ours.decode.find((d) => d.batch === 1)?.tokensPerSecond;
  const prefill = ours.prefill.tokensPerSecond;
  const { bf16, f16 } = llamacpp;
  const ofRoofline = (x: number | undefined) => (x === undefined ? undefined : x / rooflineTokensPerSecond);
  // GFLOP/s reached: prefill (matmuls + causal attention) and each decode batch (matmuls).
  const m = info.model;
  const flops = matmulFlops(m);
  const prefillFlops = prefillLen * flops.layers + flops.lmHead + 4 * m.numLayers * m.numHeads * m.headDim * (prefillLen * (prefillLen + 1)) / 2;
  const prefillGflops = (prefillFlops * ours.prefill.tokensPerSecond) / prefillLen / 1e9;
  const decodeGflops = ours.decode.map((d) => ({ batch: d.batch, gflops: (d.tokensPerSecond * (flops.layers + flops.lmHead)) / 1e9 }));
  const ofPeak = (g: number) => (peakGflops === undefined ? undefined : g / peakGflops);

  const T = TARGETS[kernelPath];
  const targets = !T
    ? []
    : [
        { name: 'batch-1 decode / llama.cpp BF16, median of rounds', value: paired.decodeVsLlamaCppBf16, target: T.decodeVsLlamaCppBf16, show: times },
        { name: 'batch-1 decode / roofline, median of rounds', value: paired.decodeRooflineFraction, target: T.decodeRooflineFraction, show: pct },
        ...(T.prefillTokensPerSecond === undefined ? [] : [{ name: `prefill ${prefillLen}, tok/s`, value: prefill, target: T.prefillTokensPerSecond, show: (x?: number) => fmt(x, 1) }]),
        ...(T.prefillPeakFraction === undefined ? [] : [{ name: `prefill ${prefillLen} / compute peak`, value: ofPeak(prefillGflops), target: T.prefillPeakFraction, show: pct }]),
        { name: 'prefill / llama.cpp BF16, median of rounds', value: paired.prefillVsLlamaCppBf16, target: T.prefillVsLlamaCppBf16, show: times },
        { name: 'batch-32 decode / batch-1 decode, median of rounds', value: paired.batch32VsBatch1, target: T.batch32VsBatch1, show: times },
      ];

  console.log(`\nroofline: ${(bytesPerToken / 1e9).toFixed(2)} GB of weights per decoded token / ${bandwidth.GBs.toFixed(1)} GB/s = ${fmt(rooflineTokensPerSecond)} tok/s`);
  console.log('\n| tokens/s | ours | llama.cpp BF16 | llama.cpp F16 | ours / BF16 | ours / F16 |\n|---|---:|---:|---:|---:|---:|');
  for (const d of ours.decode) {
    const [lb, lf] = d.batch === 1 ? [bf16?.decodeTokensPerSecond, f16?.decodeTokensPerSecond] : [undefined, undefined];
    console.log(`| decode batch ${d.batch} | ${fmt(d.tokensPerSecond)} | ${fmt(lb)} | ${fmt(lf)} | ${times(ratioOf(d.tokensPerSecond, lb))} | ${times(ratioOf(d.tokensPerSecond, lf))} |`);
  }
  console.log(`| prefill ${prefillLen} | ${fmt(prefill, 1)} | ${fmt(bf16?.prefillTokensPerSecond, 1)} | ${fmt(f16?.prefillTokensPerSecond, 1)} | ${times(ratioOf(prefill, bf16?.prefillTokensPerSecond))} | ${times(ratioOf(prefill, f16?.prefillTokensPerSecond))} |`);
  console.log(`| batch-1 decode / roofline | ${pct(ofRoofline(b1))} | ${pct(ofRoofline(bf16?.decodeTokensPerSecond))} | ${pct(ofRoofline(f16?.decodeTokensPerSecond))} | | |`);
  console.log(`\ncompute peak (${kernelPath}): ${fmt(peakGflops, 1)} GFLOP/s, ${threads} threads`);
  console.log('\n| ours, kernels ' + kernelPath + ' | tokens/s | GFLOP/s | of peak | of roofline |\n|---|---:|---:|---:|---:|');
  console.log(`| prefill ${prefillLen} | ${fmt(prefill, 1)} | ${fmt(prefillGflops, 1)} | ${pct(ofPeak(prefillGflops))} | |`);
  for (const d of decodeGflops) {
    const tps = ours.decode.find((x) => x.batch === d.batch)!.tokensPerSecond;
    console.log(`| decode batch ${d.batch} | ${fmt(tps)} | ${fmt(d.gflops, 1)} | ${pct(ofPeak(d.gflops))} | ${d.batch === 1 ? pct(ofRoofline(tps)) : ''} |`);
  }
  console.log(
    `\nper round: batch-1 decode / llama.cpp BF16 ${rounds.map((r) => times(ratioOf(ourB1(r), r.peers[bf16Index]?.decodeTokensPerSecond))).join(', ')}; ` +
      `/ roofline ${rounds.map((r) => pct(ratioOf(ourB1(r), (r.GBs * 1e9) / bytesPerToken))).join(', ')}; ` +
      `batch 32 / batch 1 ${rounds.map((r) => times(ratioOf(r.ours.decode.find((d) => d.batch === 32)?.tokensPerSecond, ourB1(r)))).join(', ')}`,
  );
  if (targets.length === 0) console.log(`\nno targets for the ${kernelPath} path`);
  else console.log(`\n| target (${kernelPath}) | measured | target | met |\n|---|---:|---:|---|`);
  for (const t of targets) {
    const met = t.value === undefined ? '-' : t.value >= t.target ? 'yes' : 'no';
    console.log(`| ${t.name} | ${t.show(t.value)} | >= ${t.show(t.target)} | ${met} |`);
  }

  const result = {
    date: new Date().toISOString(),
    machine: {
      cpus: os.cpus().length,
      model: os.cpus()[0]?.model,
      memoryGiB: Math.round(os.totalmem() / 2 ** 30),
      loadAverageBefore: loadBefore,
      loadAverageAfter: os.loadavg(),
    },
    model: { dir: modelDir, ...info.model },
    engine: { backend: info.backend, kernels: info.kernels, kvCacheDtype: info.kvCacheDtype, threads, cpuKernelInfo: loadAddon().cpuKernelInfo() },
    repeat,
    bandwidth,
    computePeak: { path: kernelPath, gflops: peakGflops, threads },
    gflops: { prefill: prefillGflops, decode: decodeGflops, prefillFlops, decodeFlopsPerToken: flops.layers + flops.lmHead },
    roofline: { weightBytesPerToken: bytesPerToken, tokensPerSecond: rooflineTokensPerSecond },
    paired,
    ours: { decode: ours.decode, prefill: { promptTokens: prefillLen, ...ours.prefill } },
    llamacpp: { package: 'node-llama-cpp 3.21.1', cpuVariant: peers.length ? loadedLlamaCppCpuVariant() : undefined, cpuVariantForced: args['llamacpp-cpu'] !== undefined, ...llamacpp },
    targets: targets.map(({ show: _, ...t }) => ({ ...t, met: t.value === undefined ? null : t.value >= t.target })),
  };
  writeResult('engine', result, args.out);
}

// --paths: this script again per kernel path, in a child process with KVSERVE_CPU_KERNELS set,
// each writing its JSON to a temporary file; then the paths side by side.
function runPaths(list: string): void {
  const isa = loadAddon().cpuKernelInfo().isa;
  const has: Record<string, boolean> = { avx2: isa.includes('avx2'), avx512: isa.includes('avx512'), 'avx512-bf16': isa.includes('avx512_bf16'), amx: isa.includes('amx_bf16') };
  const paths = list === 'all' ? Object.keys(has).filter((p) => has[p]) : list.split(',');
  // argv without the flags named (each with its value).
  const without = (argv: string[], ...flags: string[]) => {
    const kept: string[] = [];
    for (let i = 0; i < argv.length; i++) {
      if (flags.includes(argv[i]!)) i++;
      else if (!flags.some((f) => argv[i]!.startsWith(`${f}=`))) kept.push(argv[i]!);
    }
    return kept;
  };
  const rest = without(process.argv.slice(2), '--paths', '--out');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-engine-'));
  const results: { path: string; result?: any }[] = [];
  paths.forEach((p, i) => {
    const out = path.join(dir, `${p}.json`);
    // llama.cpp runs in the first child only.
    const args = [...(i > 0 ? without(rest, '--llamacpp', '--llamacpp-cpu') : rest), '--out', out, ...(i > 0 ? ['--llamacpp', 'none'] : [])];
    console.log(`\n=== kernels ${p} (KVSERVE_CPU_KERNELS=${p}) ===`);
    const child = spawnSync(process.execPath, [...process.execArgv, process.argv[1]!, ...args], { stdio: 'inherit', env: { ...process.env, KVSERVE_CPU_KERNELS: p } });
    results.push({ path: p, result: child.status === 0 && fs.existsSync(out) ? JSON.parse(fs.readFileSync(out, 'utf8')) : undefined });
  });
  console.log('\n| kernels | prefill tok/s | prefill GFLOP/s | of peak | decode b1 tok/s | of roofline (median of rounds) | b8 tok/s | b32 tok/s | b32 GFLOP/s | of peak | peak GFLOP/s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const { path: p, result: r } of results) {
    if (!r) {
      console.log(`| ${p} | failed | | | | | | | | | |`);
      continue;
    }
    const peak: number | undefined = r.computePeak.gflops;
    const dec = (b: number) => r.ours.decode.find((d: { batch: number }) => d.batch === b)?.tokensPerSecond as number | undefined;
    const g32 = r.gflops.decode.find((d: { batch: number }) => d.batch === 32)?.gflops as number | undefined;
    const of = (g: number | undefined) => (g === undefined || peak === undefined ? '-' : pct(g / peak));
    const b1 = dec(1);
    console.log(
      `| ${r.engine.cpuKernelInfo.path} | ${fmt(r.ours.prefill.tokensPerSecond, 1)} | ${fmt(r.gflops.prefill, 1)} | ${of(r.gflops.prefill)} | ${fmt(b1)} | ${pct(r.paired?.decodeRooflineFraction)} | ${fmt(dec(8))} | ${fmt(dec(32))} | ${fmt(g32, 1)} | ${of(g32)} | ${fmt(peak, 1)} |`,
    );
  }
  const combined = { date: new Date().toISOString(), paths: results.map((x) => x.path), runs: results.map((x) => x.result ?? null) };
  writeResult('engine-paths', combined, args.out);
}

if (args.paths) {
  runPaths(args.paths);
} else {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
