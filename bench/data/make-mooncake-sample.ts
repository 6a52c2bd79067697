// make-mooncake-sample.ts: writes bench/data/mooncake-sample.jsonl, the small trace the bench's
// `--dataset trace` replays by default (`npx tsx bench/data/make-mooncake-sample.ts`).
//
// The Mooncake trace format (one JSON object a line): timestamp (ms), input_length,
// output_length, hash_ids (one id per 512-token block of the input; equal ids, equal blocks).
// The sample: 32 requests over about 40 s (Poisson, mean gap 1.5 s) from 10 chat sessions on 3
// system prompts of 1 or 2 blocks; a session's next request is its previous input + output + a
// new user message, so it keeps its previous full blocks' ids; a session restarts past 2,500
// tokens. Outputs of 16 to 64 tokens. Deterministic (seeded): rerunning writes the same file.
import fs from 'node:fs';
import path from 'node:path';
import { seededRng } from '../../ts/router/index.ts';

const BLOCK = 512;
const REQUESTS = 32;
const SESSIONS = 10;
const MAX_INPUT = 2500;

const rng = seededRng(20261127);
const int = (lo: number, hi: number) => lo + Math.floor(rng() * (hi - lo + 1));
let nextHash = 0;
const newIds = (n: number) => Array.from({ length: n }, () => nextHash++);

const systems = [1, 2, 1].map((blocks) => ({ length: blocks * BLOCK, ids: newIds(blocks) }));

interface SessionState {
  length: number; // tokens of the history: the last input + its output
  ids: number[]; // ids of the history's full blocks
}
const fresh = (): SessionState => {
  const s = systems[int(0, systems.length - 1)]!;
  return { length: s.length, ids: [...s.ids] };
};
const sessions = Array.from({ length: SESSIONS }, fresh);

const lines: string[] = [];
let t = 0;
for (let i = 0; i < REQUESTS; i++) {
  t += Math.round(-Math.log(1 - rng()) * 1500);
  const k = int(0, SESSIONS - 1);
  if (sessions[k]!.length > MAX_INPUT - 600) sessions[k] = fresh();
  const s = sessions[k]!;
  const inputLength = s.length + int(50, 600);
  const outputLength = int(16, 64);
  const kept = s.ids.slice(0, Math.floor(s.length / BLOCK));
  const hashIds = [...kept, ...newIds(Math.ceil(inputLength / BLOCK) - kept.length)];
  lines.push(JSON.stringify({ timestamp: t, input_length: inputLength, output_length: outputLength, hash_ids: hashIds }));
  s.length = inputLength + outputLength;
  s.ids = hashIds.slice(0, Math.floor(inputLength / BLOCK));
}

const out = path.join(import.meta.dirname, 'mooncake-sample.jsonl');
fs.writeFileSync(out, `${lines.join('\n')}\n`);
console.log(`wrote ${out}: ${lines.length} requests over ${(t / 1000).toFixed(1)} s, ${nextHash} distinct blocks`);
