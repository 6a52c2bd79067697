// flags.ts: `npm run bench`'s command line. vLLM's `bench serve` names where one exists
// (--num-prompts, --max-concurrency, --request-rate, --burstiness, --goodput, --seed,
// --dataset, --input-len, --output-len, --range-ratio), ours for the rest.
//
// Parsing is strict: an unknown flag or a bad value is an error naming the flag. Everything
// after `--` goes to the launcher (`npm run start`'s flags) when the bench starts its own
// deployment. Workload flags resolve in layers: the defaults, then a scenario's own settings,
// then the user's flags, so a user's flag always wins.
import path from 'node:path';
import { parseArgs } from 'node:util';
import { packageRoot } from '../../ts/native/loader.ts';
import { DATASETS, describeDataset, type DatasetName, type DatasetOptions } from './datasets.ts';
import type { Goodput } from './stats.ts';

export class BenchFlagError extends Error {}

export const USAGE = `Usage: npm run bench -- [flags] [-- launcher flags]

Measures an OpenAI-compatible endpoint the way vLLM's \`bench serve\` does: TTFT, TPOT, ITL,
E2E latency, throughput and goodput; prints a table, writes JSON (every request's timings) and
SVG charts. Without --url it starts its own deployment through the launcher (the flags after
\`--\`, e.g. \`-- --workers 4 --router kv\`) and always stops it.

Target
  --url URL                 an existing endpoint, e.g. http://localhost:8181
  --model NAME              the model to ask for (default: the first of GET /v1/models)

Workload
  --dataset NAME            random | shared-prefix | multi-turn | trace (default random)
  --num-prompts N           prompts (default 64; shared-prefix: groups x prompts per group;
                            multi-turn: conversations; trace: the first N, default all)
  --input-len N             prompt tokens (multi-turn: new tokens per turn) (default 256)
  --output-len N            output tokens, forced with ignore_eos (default 64)
  --range-ratio R           lengths uniform in len * [1 - R, 1 + R], 0 <= R < 1 (default 0)
  --groups N                shared-prefix: prefixes (default 8)
  --prompts-per-group N     shared-prefix: prompts per prefix (default 8)
  --prefix-len N            shared-prefix: prefix tokens (default 1024)
  --question-len N          shared-prefix: tokens after the prefix (default 64)
  --turns N                 multi-turn: turns per conversation (default 4)
  --trace-file FILE         trace: Mooncake JSONL, replayed at its timestamps
                            (default bench/data/mooncake-sample.jsonl)
  --seed N                  dataset and arrival seed (default 0)

Load
  --request-rate R          requests/s with gamma-distributed gaps, or inf (default inf)
  --burstiness B            gamma shape: 1 = Poisson, < 1 burstier (default 1)
  --max-concurrency N       requests in flight at most (default: no limit)
  --concurrency N,N,...     a sweep: one run per max concurrency (e.g. 1,4,16,64)
  --goodput KEY:MS ...      SLOs for goodput: ttft, tpot, e2el (e.g. --goodput ttft:500 tpot:50)

Output
  --output-json FILE        the JSON report; charts go beside it (default bench/results/)
  --scenario NAME[,NAME]    seed-1 .. seed-6, seeds (all six), router, disagg, engine, soak;
                            each case on a fresh deployment; launcher flags after -- go to
                            every case (engine: to npm run bench:engine; soak: instead of its
                            default topology)

Soak (--scenario soak)
  --duration D              how long the mixed load runs, e.g. 30m, 90s, 1h (default 30m)
  --sample-interval D       RSS, fds, active blocks and Redis memory sampled this often
                            (default 10s); --max-concurrency: client loops (default 8)
  -h, --help                this text
`;

const OPTIONS = {
  url: { type: 'string' },
  model: { type: 'string' },
  dataset: { type: 'string' },
  'num-prompts': { type: 'string' },
  'input-len': { type: 'string' },
  'output-len': { type: 'string' },
  'range-ratio': { type: 'string' },
  groups: { type: 'string' },
  'prompts-per-group': { type: 'string' },
  'prefix-len': { type: 'string' },
  'question-len': { type: 'string' },
  turns: { type: 'string' },
  'trace-file': { type: 'string' },
  seed: { type: 'string' },
  'request-rate': { type: 'string' },
  burstiness: { type: 'string' },
  'max-concurrency': { type: 'string' },
  concurrency: { type: 'string' },
  goodput: { type: 'string', multiple: true },
  'output-json': { type: 'string' },
  scenario: { type: 'string' },
  duration: { type: 'string' },
  'sample-interval': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

export type RawFlags = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; strict: true }>>['values'];

const DEFAULTS = {
  dataset: 'random',
  'input-len': '256',
  'output-len': '64',
  'range-ratio': '0',
  groups: '8',
  'prompts-per-group': '8',
  'prefix-len': '1024',
  'question-len': '64',
  turns: '4',
  'trace-file': path.join(packageRoot, 'bench', 'data', 'mooncake-sample.jsonl'),
  seed: '0',
  'request-rate': 'inf',
  burstiness: '1',
} satisfies RawFlags;

const DEFAULT_NUM_PROMPTS = '64';

export interface WorkloadOptions extends DatasetOptions {
  requestRate: number; // Infinity: all at once
  burstiness: number;
  maxConcurrency: number; // Infinity: no limit
  goodput: Goodput;
}

export interface CliOptions {
  flags: RawFlags; // the user's own, for layering over a scenario's
  url: string | null;
  model: string | null;
  concurrency: number[] | null;
  outputJson: string | null;
  scenarios: string[] | null;
  launcherArgs: string[];
  help: boolean;
}

// Parses bench flags (no launcher part); `--goodput ttft:500 tpot:50` (vLLM's spelling, one
// flag, several values) is read as two --goodput flags.
export function parseBenchArgs(argv: readonly string[]): RawFlags {
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    args.push(argv[i]!);
    if (argv[i] !== '--goodput' || i + 1 === argv.length) continue;
    args.push(argv[++i]!);
    while (/^[a-z0-9]+:/.test(argv[i + 1] ?? '')) args.push('--goodput', argv[++i]!);
  }
  try {
    return parseArgs({ args, options: OPTIONS, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new BenchFlagError(`${(err as Error).message} (see --help)`);
  }
}

export function int(name: string, v: string, min: number): number {
  if (!/^\d+$/.test(v) || Number(v) < min) throw new BenchFlagError(`--${name} must be an integer >= ${min}, got '${v}'`);
  return Number(v);
}

function positive(name: string, v: string): number {
  const n = Number(v);
  if (v.trim() === '' || !(n > 0) || !Number.isFinite(n)) throw new BenchFlagError(`--${name} must be a number > 0, got '${v}'`);
  return n;
}

function parseGoodput(entries: readonly string[]): Goodput {
  const keys = { ttft: 'ttftMs', tpot: 'tpotMs', e2el: 'e2elMs' } as const;
  const goodput: Goodput = {};
  for (const entry of entries.flatMap((e) => e.split(','))) {
    const [key, ms] = entry.split(':');
    if (!key || !(key in keys) || ms === undefined) throw new BenchFlagError(`--goodput takes ttft:MS, tpot:MS or e2el:MS, got '${entry}'`);
    goodput[keys[key as keyof typeof keys]] = positive('goodput', ms);
  }
  return goodput;
}

// The workload of the layers of flags, later layers winning.
export function resolveWorkload(...layers: RawFlags[]): WorkloadOptions {
  const f: RawFlags = Object.assign({}, DEFAULTS, ...layers);
  const dataset = f.dataset as DatasetName;
  if (!DATASETS.includes(dataset)) throw new BenchFlagError(`--dataset must be one of ${DATASETS.join(', ')}, got '${f.dataset}'`);
  const numPrompts = f['num-prompts'] ?? (dataset === 'random' || dataset === 'multi-turn' ? DEFAULT_NUM_PROMPTS : undefined);
  const rangeRatio = Number(f['range-ratio']);
  if (!(rangeRatio >= 0 && rangeRatio < 1)) throw new BenchFlagError(`--range-ratio must be in [0, 1), got '${f['range-ratio']}'`);
  return {
    dataset,
    numPrompts: numPrompts === undefined ? null : int('num-prompts', numPrompts, 1),
    inputLen: int('input-len', f['input-len']!, 1),
    outputLen: int('output-len', f['output-len']!, 1),
    rangeRatio,
    groups: int('groups', f.groups!, 1),
    promptsPerGroup: int('prompts-per-group', f['prompts-per-group']!, 1),
    prefixLen: int('prefix-len', f['prefix-len']!, 0),
    questionLen: int('question-len', f['question-len']!, 1),
    turns: int('turns', f.turns!, 1),
    traceFile: f['trace-file']!,
    seed: int('seed', f.seed!, 0),
    requestRate: f['request-rate'] === 'inf' ? Infinity : positive('request-rate', f['request-rate']!),
    burstiness: positive('burstiness', f.burstiness!),
    maxConcurrency: f['max-concurrency'] === undefined ? Infinity : int('max-concurrency', f['max-concurrency'], 1),
    goodput: parseGoodput(f.goodput ?? []),
  };
}

export function parseCli(argv: readonly string[]): CliOptions {
  const split = argv.indexOf('--');
  const flags = parseBenchArgs(split < 0 ? argv : argv.slice(0, split));
  const launcherArgs = split < 0 ? [] : argv.slice(split + 1);
  const o: CliOptions = {
    flags,
    url: flags.url?.replace(/\/+$/, '').replace(/\/v1$/, '') ?? null,
    model: flags.model ?? null,
    concurrency: flags.concurrency === undefined ? null : flags.concurrency.split(',').map((c) => int('concurrency', c.trim(), 1)),
    outputJson: flags['output-json'] ?? null,
    scenarios: flags.scenario === undefined ? null : flags.scenario.split(',').map((s) => s.trim()),
    launcherArgs,
    help: flags.help ?? false,
  };
  if (o.url !== null && !/^http:\/\/[^/]+$/.test(o.url)) throw new BenchFlagError(`--url must look like http://host:port, got '${o.url}'`);
  if (o.url !== null && launcherArgs.length > 0) throw new BenchFlagError('launcher flags (after --) start a deployment: leave out --url, or them');
  if (o.url !== null && o.scenarios !== null) throw new BenchFlagError('--scenario starts its own deployments: leave out --url');
  if (o.concurrency !== null && flags['max-concurrency'] !== undefined) throw new BenchFlagError('--concurrency sweeps --max-concurrency: give one of them');
  const soakOnly = (['duration', 'sample-interval'] as const).filter((f) => flags[f] !== undefined);
  if (soakOnly.length > 0 && !o.scenarios?.includes('soak')) throw new BenchFlagError(`--${soakOnly[0]} belongs to --scenario soak`);
  if (o.scenarios === null) resolveWorkload(flags); // bad workload flags fail now, not after start-up
  return o;
}

// One line: the dataset (or what is said of it) and how its requests arrive.
export function describeWorkload(w: WorkloadOptions, dataset = describeDataset(w)): string {
  const rate = w.dataset === 'trace'
    ? "the trace's timestamps"
    : Number.isFinite(w.requestRate) ? `${w.requestRate} requests/s (burstiness ${w.burstiness})` : 'all at once';
  const cap = Number.isFinite(w.maxConcurrency) ? `, at most ${w.maxConcurrency} in flight` : '';
  return `${dataset}; arrivals: ${rate}${cap}`;
}
