// scenarios.ts: `npm run bench -- --scenario NAME[,NAME...]`: fixed comparisons, each case on a
// fresh deployment of the launcher (the built-in tiny model unless the scenario names a preset
// or the user gives `-- --model ...`), sized for
// this 2-core machine; each writes bench/results/scenario-<name>-<date>.{json,md} and its charts.
//
//   seed-1 .. seed-6  the seed README's six example topologies, with its launcher flags
//   seeds             all six in one table
//   router            --router kv (overlap weight 1, the default, and 2) against round-robin
//                     against random (4 workers, the small-llama preset), on a shared-prefix
//                     workload and a random (no sharing) control, held to the KV-routing
//                     issue's targets (also `npm run bench:router-serving`)
//   disagg            aggregated (2 workers) against disaggregated (1 prefill + 1 decode worker)
//                     on the interference workload: long prompts among decode-heavy short ones
//   engine            `npm run bench:engine` (our engine against llama.cpp; the flags after `--`
//                     go to it), its speeds and target ratios in the report
//   soak              one deployment under a mixed load for --duration (soak.ts): RSS, fds,
//                     active blocks and Redis memory sampled and checked flat
// A topology the launcher refuses (e.g. TP on a model it does not split) is reported as skipped
// with the launcher's reason. The user's workload flags override a scenario's, and
// launcher flags after `--` are added to every case's (engine: given to bench:engine).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { packageRoot } from '../../ts/native/loader.ts';
import { buildDataset, describeDataset, type Session } from './datasets.ts';
import { describeWorkload, parseBenchArgs, resolveWorkload, type CliOptions } from './flags.ts';
import { seededRng } from './random.ts';
import { isSkipped, type Report, type ReportGroup, type RunReport } from './report.ts';
import { measureOnDeployment, type Measure } from './run.ts';
import { runSoak } from './soak.ts';

interface Case {
  name: string;
  launcherArgs: string[];
}

interface ScenarioGroup {
  title: string;
  workload: string[][]; // bench flags; several are mixed into one workload
  cases: Case[];
}

interface Scenario {
  title: string;
  model?: string; // a modelgen preset its deployments serve (generated on first use); absent: the launcher's default
  groups: ScenarioGroup[];
  verdict?: (groups: ReportGroup[]) => NonNullable<Report['extra']>; // targets the runs are held to
}

// Every case's launcher flags start with these: a KV cache this machine can hold per worker.
const BASE_LAUNCHER_ARGS = ['--kv-cache-memory', '128MiB'];

// The launcher flags of the seed README's Examples 1 to 6, in order.
const SEED_TOPOLOGIES = [
  [],
  ['--router', 'kv'],
  ['--workers', '8', '--router', 'kv'],
  ['--decode-workers', '1', '--prefill-workers', '1'],
  ['--decode-workers', '1', '--prefill-workers', '4', '--decode-tp', '4', '--prefill-tp', '1'],
  ['--decode-workers', '1', '--prefill-workers', '4', '--decode-tp', '4', '--prefill-tp', '1', '--router', 'kv'],
];
const SEED_WORKLOAD = ['--dataset', 'random', '--num-prompts', '64', '--input-len', '512', '--output-len', '128', '--max-concurrency', '16'];

const SEED_CASES = SEED_TOPOLOGIES.map((launcherArgs, i) => ({ name: `seed-${i + 1}`, launcherArgs }));

// kv twice: with the default --kv-overlap-weight 1, and with 2. The cost weighs a block to
// prefill against a block held by a request in flight; on a prefill-heavy workload a block to
// prefill costs far more time than one a decoding request holds, so that at weight 1 a request
// whose prefix is cached on a busy worker is often sent cold to an idle one instead (a full
// prefill), which weight 2 avoids. The settings are the launcher's; nothing else differs.
const ROUTER_CASES = [
  ...['kv', 'round-robin', 'random'].map((policy) => ({ name: policy, launcherArgs: ['--workers', '4', '--router', policy] })),
  { name: 'kv (weight 2)', launcherArgs: ['--workers', '4', '--router', 'kv', '--kv-overlap-weight', '2'] },
];

// The KV-routing issue's targets, for each kv case: on the shared prefix, kv's mean TTFT at
// least 2x lower than round-robin's with a higher prefix hit rate; on the random control, kv
// within 10% of round-robin in mean TTFT and output throughput.
function routerVerdict(groups: ReportGroup[]): NonNullable<Report['extra']> {
  const runOf = (group: number, name: string) => groups[group]?.runs.find((r): r is RunReport => r.name === name && !isSkipped(r));
  const ratio = (a: number | null | undefined, b: number | null | undefined) => (a ?? NaN) / (b ?? NaN);
  const [rrShared, rrControl] = [runOf(0, 'round-robin'), runOf(1, 'round-robin')];
  const targets = ['kv', 'kv (weight 2)'].flatMap((kv) => {
    const [kvShared, kvControl] = [runOf(0, kv), runOf(1, kv)];
    return [
      { target: `shared prefix: round-robin / ${kv} mean TTFT`, want: '>= 2', got: ratio(rrShared?.summary.ttftMs.mean, kvShared?.summary.ttftMs.mean), min: 2 },
      { target: `shared prefix: ${kv} / round-robin prefix hit rate`, want: '> 1', got: ratio(kvShared?.prefixCacheHitRate, rrShared?.prefixCacheHitRate), min: 1 + Number.EPSILON },
      { target: `random control: ${kv} / round-robin mean TTFT`, want: '<= 1.10', got: ratio(kvControl?.summary.ttftMs.mean, rrControl?.summary.ttftMs.mean), max: 1.1 },
      { target: `random control: ${kv} / round-robin output tok/s`, want: '>= 0.90', got: ratio(kvControl?.summary.outputThroughput, rrControl?.summary.outputThroughput), min: 0.9 },
    ];
  }).map((t) => ({ ...t, met: t.got >= (t.min ?? -Infinity) && t.got <= (t.max ?? Infinity) }));
  const rows = targets.map((t) => `| ${t.target} | ${t.want} | ${t.got.toFixed(3)} | ${t.met ? 'yes' : 'no'} |`);
  return { markdown: ['#### targets (KV-routing issue)', '', '| | want | got | met |', '|---|---|---:|---|', ...rows].join('\n'), data: targets };
}

export const SCENARIOS: Record<string, Scenario> = {
  ...Object.fromEntries(
    SEED_CASES.map((c, i) => [
      c.name,
      { title: `${c.name}: the seed's Example ${i + 1}`, groups: [{ title: `Example ${i + 1}`, workload: [SEED_WORKLOAD], cases: [c] }] },
    ]),
  ),
  seeds: {
    title: "seeds: the seed's six example topologies",
    groups: [{ title: 'Examples 1 to 6', workload: [SEED_WORKLOAD], cases: SEED_CASES }],
  },
  router: {
    title: 'router: kv against round-robin against random, 4 workers',
    // small-llama (hidden 512, 8 layers): the built-in tiny model's 128k-vocabulary lm_head is 94%
    // of its weights, so that every request costs nearly the same whatever its prefill; here a
    // prefill is most of a cold request's time, as with real models.
    model: 'small-llama',
    groups: [
      {
        title: 'shared prefix',
        workload: [['--dataset', 'shared-prefix', '--groups', '8', '--prompts-per-group', '8', '--prefix-len', '1024', '--question-len', '64', '--output-len', '32', '--request-rate', '2']],
        cases: ROUTER_CASES,
      },
      {
        title: 'random control',
        workload: [['--dataset', 'random', '--num-prompts', '64', '--input-len', '512', '--output-len', '32', '--request-rate', '2']],
        cases: ROUTER_CASES,
      },
    ],
    verdict: routerVerdict,
  },
  disagg: {
    title: 'disagg: aggregated against disaggregated prefill/decode',
    groups: [
      {
        title: 'interference',
        workload: [
          ['--dataset', 'random', '--num-prompts', '8', '--input-len', '2048', '--output-len', '16', '--request-rate', '1'],
          ['--dataset', 'random', '--num-prompts', '24', '--input-len', '64', '--output-len', '128'],
        ],
        cases: [
          { name: 'aggregated', launcherArgs: ['--workers', '2'] },
          { name: 'disaggregated', launcherArgs: ['--decode-workers', '1', '--prefill-workers', '1'] },
        ],
      },
    ],
  },
};

export const SCENARIO_NAMES = [...Object.keys(SCENARIOS), 'engine', 'soak'];

// The group's workload: its presets under the user's flags; several presets are mixed (each
// with its own seed, so they share no tokens) and shuffled into one arrival order.
function workloadOf(group: ScenarioGroup, cli: CliOptions): Omit<Measure, 'name'> & { description: string } {
  const parts = group.workload.map((preset, i) => {
    const options = resolveWorkload(parseBenchArgs(preset), cli.flags);
    return { options, sessions: buildDataset({ ...options, seed: options.seed + i }) };
  });
  const sessions: Session[] = parts.flatMap((p) => p.sessions);
  const rng = seededRng(parts[0]!.options.seed);
  for (let i = sessions.length - 1; parts.length > 1 && i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [sessions[i], sessions[j]] = [sessions[j]!, sessions[i]!];
  }
  const description = describeWorkload(parts[0]!.options, parts.map((p) => describeDataset(p.options)).join(' mixed with '));
  return { options: parts[0]!.options, sessions, description };
}

async function runGroup(group: ScenarioGroup, cli: CliOptions, modelArgs: string[]): Promise<ReportGroup> {
  const { options, sessions, description } = workloadOf(group, cli);
  const runs = [];
  for (const c of group.cases) {
    runs.push(await measureOnDeployment([...c.launcherArgs, ...BASE_LAUNCHER_ARGS, ...modelArgs, ...cli.launcherArgs], { name: c.name, options, sessions }));
  }
  return { title: group.title, workload: description, options, runs };
}

// The parts of bench/engine.ts's JSON the report shows.
interface EngineResult {
  ours: { decode: { batch: number; tokensPerSecond: number }[]; prefill: { promptTokens: number; tokensPerSecond: number } };
  llamacpp: Partial<Record<'bf16' | 'f16', { decodeTokensPerSecond: number; prefillTokensPerSecond: number }>>;
  targets: { name: string; value: number | null; target: number; met: boolean | null }[];
}

function engineMarkdown(r: EngineResult, file: string): string {
  const n = (x: number | undefined, digits = 2) => (x === undefined ? '-' : x.toFixed(digits));
  const { bf16, f16 } = r.llamacpp;
  return [
    `#### engine (\`npm run bench:engine\`, ${file})`, '',
    '| tokens/s | ours | llama.cpp BF16 | llama.cpp F16 |', '|---|---:|---:|---:|',
    ...r.ours.decode.map((d) => `| decode batch ${d.batch} | ${n(d.tokensPerSecond)} | ${d.batch === 1 ? n(bf16?.decodeTokensPerSecond) : '-'} | ${d.batch === 1 ? n(f16?.decodeTokensPerSecond) : '-'} |`),
    `| prefill ${r.ours.prefill.promptTokens} | ${n(r.ours.prefill.tokensPerSecond, 1)} | ${n(bf16?.prefillTokensPerSecond, 1)} | ${n(f16?.prefillTokensPerSecond, 1)} |`,
    '', '| target | measured | want | met |', '|---|---:|---:|---|',
    ...r.targets.map((t) => `| ${t.name} | ${n(t.value ?? undefined, 3)} | >= ${t.target} | ${t.met === null ? '-' : t.met ? 'yes' : 'no'} |`),
  ].join('\n');
}

// `npm run bench:engine -- --out FILE [flags after --]`, its output on our stderr; its JSON
// in the report.
async function runEngine(date: string, engineArgs: string[]): Promise<NonNullable<Report['extra']>> {
  const out = path.join(packageRoot, 'bench', 'results', `engine-${date.replace(/[:.]/g, '-')}.json`);
  const proc = spawn('npm', ['run', '--silent', 'bench:engine', '--', ...engineArgs, '--out', out], { cwd: packageRoot, stdio: ['ignore', process.stderr, 'inherit'] });
  const code = await new Promise<number | null>((resolve) => proc.once('exit', resolve));
  if (code !== 0) throw new Error(`npm run bench:engine exited with ${code}`);
  const data = JSON.parse(fs.readFileSync(out, 'utf8')) as EngineResult;
  return { markdown: engineMarkdown(data, path.relative(packageRoot, out)), data };
}

export async function runScenario(name: string, cli: CliOptions, base: Omit<Report, 'kind' | 'title' | 'groups' | 'target'>): Promise<Report> {
  if (name === 'soak') return runSoak(cli, base);
  if (name === 'engine') {
    return { ...base, kind: 'scenario-engine', title: 'engine: our engine against llama.cpp', target: 'the engine in process', groups: [], extra: await runEngine(base.date, cli.launcherArgs) };
  }
  const scenario = SCENARIOS[name]!;
  // The scenario's model, unless the user's launcher flags name one.
  const modelArgs = scenario.model && !cli.launcherArgs.includes('--model') ? ['--model', (await ensureModel(scenario.model)).dir] : [];
  const groups: ReportGroup[] = [];
  for (const group of scenario.groups) groups.push(await runGroup(group, cli, modelArgs));
  return { ...base, kind: `scenario-${name}`, title: scenario.title, target: 'its own deployments', groups, extra: scenario.verdict?.(groups) };
}
