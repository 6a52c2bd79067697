// datasets.ts: the bench's workloads, as sessions of turns of token ids (so prompt lengths are
// exact; the completions endpoint takes token-id prompts).
//
//   random         --num-prompts prompts of random tokens; input and output lengths uniform in
//                  [len * (1 - range-ratio), len * (1 + range-ratio)] (vLLM's random dataset)
//   shared-prefix  --groups prefixes of --prefix-len tokens; --num-prompts prompts (default
//                  --prompts-per-group per group), spread evenly over the groups, each the
//                  group's prefix + a distinct --question-len question, groups interleaved at
//                  random (SGLang's generated-shared-prefix)
//   multi-turn     --num-prompts conversations of --turns turns, each turn adding --input-len new
//                  tokens; the load generator sends turn k as the whole history (every earlier
//                  prompt and output) + the new tokens, after turn k - 1 has finished
//   trace          a Mooncake JSONL trace: {timestamp (ms), input_length, output_length,
//                  hash_ids}, one 512-token block per hash id (the last one cut to the input
//                  length); equal hash ids give equal block tokens, so prompts share exactly the
//                  prefixes the trace says; replayed at its timestamps
// Stays true: a dataset is plain data, built from its options and seed alone; the conversation
// state of multi-turn lives in the load generator.
import fs from 'node:fs';
import { randomInt, randomTokens, seededRng, type Rng } from './random.ts';

export const DATASETS = ['random', 'shared-prefix', 'multi-turn', 'trace'] as const;
export type DatasetName = (typeof DATASETS)[number];

export const TRACE_BLOCK_TOKENS = 512;

export interface Turn {
  tokens: number[]; // the tokens this turn adds to the conversation
  outputLen: number;
}

export interface Session {
  atMs: number | null; // the trace's arrival time; null: the arrival process decides
  turns: Turn[];
}

export interface DatasetOptions {
  dataset: DatasetName;
  numPrompts: number | null; // null: shared-prefix's groups x prompts per group, or the whole trace
  inputLen: number;
  outputLen: number;
  rangeRatio: number;
  groups: number;
  promptsPerGroup: number;
  prefixLen: number;
  questionLen: number;
  turns: number;
  traceFile: string;
  seed: number;
}

export class DatasetError extends Error {}

// A length uniformly in len * [1 - ratio, 1 + ratio], at least 1.
function lengthAround(rng: Rng, len: number, ratio: number): number {
  return Math.max(1, randomInt(rng, Math.floor(len * (1 - ratio)), Math.floor(len * (1 + ratio))));
}

function randomSessions(o: DatasetOptions, rng: Rng, turns: number): Session[] {
  return Array.from({ length: o.numPrompts ?? 0 }, () => ({
    atMs: null,
    turns: Array.from({ length: turns }, () => ({
      tokens: randomTokens(rng, lengthAround(rng, o.inputLen, o.rangeRatio)),
      outputLen: lengthAround(rng, o.outputLen, o.rangeRatio),
    })),
  }));
}

function sharedPrefixSessions(o: DatasetOptions, rng: Rng): Session[] {
  const prefixes = Array.from({ length: o.groups }, () => randomTokens(rng, o.prefixLen));
  const sessions = Array.from({ length: o.numPrompts ?? o.groups * o.promptsPerGroup }, (_, i) => ({
    atMs: null,
    turns: [{ tokens: [...prefixes[i % o.groups]!, ...randomTokens(rng, o.questionLen)], outputLen: o.outputLen }],
  }));
  for (let i = sessions.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [sessions[i], sessions[j]] = [sessions[j]!, sessions[i]!];
  }
  return sessions;
}

interface TraceRecord {
  timestamp: number;
  input_length: number;
  output_length: number;
  hash_ids: number[];
}

function parseTraceLine(line: string, where: string): TraceRecord {
  let r: TraceRecord;
  try {
    r = JSON.parse(line) as TraceRecord;
  } catch (err) {
    throw new DatasetError(`${where}: not JSON: ${(err as Error).message}`);
  }
  const count = (x: unknown) => Number.isInteger(x) && (x as number) >= 0;
  if (!count(r.timestamp) || !count(r.input_length) || !count(r.output_length) || r.output_length < 1 || !Array.isArray(r.hash_ids) || !r.hash_ids.every(count)) {
    throw new DatasetError(`${where}: want {"timestamp", "input_length", "output_length" >= 1, "hash_ids": [ints]}, got ${line}`);
  }
  if (r.hash_ids.length !== Math.ceil(r.input_length / TRACE_BLOCK_TOKENS)) {
    throw new DatasetError(`${where}: ${r.hash_ids.length} hash_ids for input_length ${r.input_length} (want one per ${TRACE_BLOCK_TOKENS} tokens)`);
  }
  return r;
}

function traceSessions(o: DatasetOptions): Session[] {
  let text: string;
  try {
    text = fs.readFileSync(o.traceFile, 'utf8');
  } catch (err) {
    throw new DatasetError(`--trace-file: ${(err as Error).message}`);
  }
  const records = text
    .split('\n')
    .map((line, i) => ({ line: line.trim(), where: `${o.traceFile}:${i + 1}` }))
    .filter(({ line }) => line !== '')
    .map(({ line, where }) => parseTraceLine(line, where))
    .sort((a, b) => a.timestamp - b.timestamp)
    .slice(0, o.numPrompts ?? undefined);
  if (records.length === 0) throw new DatasetError(`--trace-file ${o.traceFile} has no requests`);
  const blocks = new Map<number, number[]>();
  const block = (id: number) => {
    let b = blocks.get(id);
    if (!b) blocks.set(id, (b = randomTokens(seededRng(o.seed * 1_000_003 + id), TRACE_BLOCK_TOKENS)));
    return b;
  };
  const t0 = records[0]!.timestamp;
  return records.map((r) => ({
    atMs: r.timestamp - t0,
    turns: [{ tokens: r.hash_ids.flatMap(block).slice(0, r.input_length), outputLen: r.output_length }],
  }));
}

export function buildDataset(o: DatasetOptions): Session[] {
  const rng = seededRng(o.seed);
  switch (o.dataset) {
    case 'random':
      return randomSessions(o, rng, 1);
    case 'multi-turn':
      return randomSessions(o, rng, o.turns);
    case 'shared-prefix':
      return sharedPrefixSessions(o, rng);
    case 'trace':
      return traceSessions(o);
  }
}

// One line saying what a dataset holds.
export function describeDataset(o: DatasetOptions): string {
  const io = `input ${o.inputLen}, output ${o.outputLen}, range ratio ${o.rangeRatio}`;
  switch (o.dataset) {
    case 'random':
      return `random: ${o.numPrompts} prompts, ${io}`;
    case 'multi-turn':
      return `multi-turn: ${o.numPrompts} conversations x ${o.turns} turns, each turn the history + ${io}`;
    case 'shared-prefix':
      return `shared-prefix: ${o.numPrompts ?? o.groups * o.promptsPerGroup} prompts over ${o.groups} groups, prefix ${o.prefixLen} + question ${o.questionLen}, output ${o.outputLen}`;
    case 'trace':
      return `trace: ${o.traceFile}${o.numPrompts === null ? '' : `, first ${o.numPrompts} requests`}, ${TRACE_BLOCK_TOKENS}-token blocks`;
  }
}
