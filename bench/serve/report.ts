// report.ts: what a bench invocation produces: one Report (a plain run, a concurrency sweep or a
// scenario), as markdown tables on stdout and in a .md file, the full JSON (every request's
// timings) and the SVG charts beside it.
//
// A report holds groups (one workload each) of runs (one target each); a run the launcher
// refused is kept as skipped, with the launcher's reason. Stays true: failed requests appear in
// every table (the requests column) and their messages under it, never only in the JSON.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { packageRoot } from '../../ts/native/loader.ts';
import { writeCharts } from './charts.ts';
import type * as vl from 'vega-lite';
import type { WorkloadOptions } from './flags.ts';
import type { Distribution, RequestRecord, Summary } from './stats.ts';

export interface RunReport {
  name: string;
  model: string;
  launcherArgs: string[] | null; // null: an endpoint given with --url
  maxConcurrency: number | null;
  summary: Summary;
  prefixCacheHitRate: number | null; // the server's, from /metrics, over this run; null when it has none
  errors: { message: string; count: number }[];
  requests: RequestRecord[];
}

export interface SkippedRun {
  name: string;
  launcherArgs: string[];
  skipped: string; // why
}

export type RunOutcome = RunReport | SkippedRun;

export interface ReportGroup {
  title: string;
  workload: string; // one line
  options: WorkloadOptions | null; // null: a load of the scenario's own (soak)
  runs: RunOutcome[];
}

export interface Machine {
  cpus: number;
  cpuModel: string;
  memoryGiB: number;
  loadavgAtStart: number[];
}

export interface Report {
  kind: string; // file name prefix: serve, sweep, or the scenario's name
  title: string;
  date: string;
  command: string;
  machine: Machine;
  target: string; // an endpoint, or "its own deployments"
  groups: ReportGroup[];
  extra?: { markdown: string; data: unknown; charts?: [string, vl.TopLevelSpec][] }; // a scenario's own section (the engine's, the soak's) and charts
}

export const isSkipped = (r: RunOutcome): r is SkippedRun => 'skipped' in r;

export function machineInfo(): Machine {
  return {
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    loadavgAtStart: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
}

const f = (x: number | null, digits = 1) => (x === null || !Number.isFinite(x) ? '-' : x.toFixed(digits));

// One row per run: counts, throughputs and the headline latencies (ms).
function comparisonTable(group: ReportGroup): string {
  const goodput = group.runs.some((r) => !isSkipped(r) && r.summary.requestGoodput !== null);
  const cols = ['run', 'requests (failed)', 'req/s', ...(goodput ? ['goodput req/s'] : []), 'output tok/s', 'total tok/s',
    'TTFT mean', 'TTFT p50', 'TTFT p99', 'TPOT mean', 'TPOT p99', 'ITL p50', 'ITL p99', 'E2EL mean', 'E2EL p99', 'prefix hit rate'];
  const lines = [`| ${cols.join(' | ')} |`, `|---|${cols.slice(1).map(() => '---:').join('|')}|`];
  for (const r of group.runs) {
    if (isSkipped(r)) {
      lines.push(`| ${r.name} | skipped |${cols.slice(2).map(() => ' - |').join('')}`);
      continue;
    }
    const s = r.summary;
    lines.push(`| ${[r.name, `${s.requests} (${s.failed})`, f(s.requestThroughput, 2), ...(goodput ? [f(s.requestGoodput, 2)] : []),
      f(s.outputThroughput), f(s.totalTokenThroughput), f(s.ttftMs.mean), f(s.ttftMs.median), f(s.ttftMs.p99), f(s.tpotMs.mean, 2),
      f(s.tpotMs.p99, 2), f(s.itlMs.median, 2), f(s.itlMs.p99, 2), f(s.e2elMs.mean), f(s.e2elMs.p99), f(r.prefixCacheHitRate, 3)].join(' | ')} |`);
  }
  return lines.join('\n');
}

// A single run in full: every distribution.
function distributionTable(s: Summary): string {
  const row = (name: string, d: Distribution) => `| ${name} | ${[d.mean, d.median, d.std, d.p90, d.p99].map((x) => f(x, 2)).join(' | ')} |`;
  return [
    '| ms | mean | median | std | p90 | p99 |', '|---|---:|---:|---:|---:|---:|',
    row('TTFT', s.ttftMs), row('TPOT', s.tpotMs), row('ITL', s.itlMs), row('E2EL', s.e2elMs),
    '', `duration ${f(s.durationS, 2)} s; ${s.totalInputTokens} input and ${s.totalOutputTokens} output tokens`,
  ].join('\n');
}

function groupMarkdown(group: ReportGroup, single: boolean): string {
  const parts = [`#### ${group.title}`, '', `Workload: ${group.workload}.`, '', comparisonTable(group)];
  const notes: string[] = [];
  for (const r of group.runs) {
    if (isSkipped(r)) notes.push(`- ${r.name} (\`${r.launcherArgs.join(' ')}\`) skipped: ${r.skipped}`);
    else for (const e of r.errors) notes.push(`- ${r.name}: ${e.count} failed: ${e.message}`);
  }
  if (notes.length) parts.push('', ...notes);
  const only = group.runs[0];
  if (single && group.runs.length === 1 && only && !isSkipped(only)) parts.push('', distributionTable(only.summary));
  return parts.join('\n');
}

export function markdown(report: Report): string {
  const m = report.machine;
  const models = [...new Set(report.groups.flatMap((g) => g.runs.flatMap((r) => (isSkipped(r) ? [] : [r.model]))))];
  const head = [
    `### ${report.title}`, '',
    `\`${report.command}\` · ${m.cpus} × ${m.cpuModel}, ${m.memoryGiB} GiB (load average ${m.loadavgAtStart[0]} at start) · ` +
      `${report.date.slice(0, 10)} · ${report.target}${models.length ? `, model ${models.join(', ')}` : ''}`,
  ];
  if (report.groups.length) head.push('', "Latencies in ms (TTFT, TPOT, ITL, E2EL as vLLM defines them); prefix hit rate from the server's /metrics.");
  const single = report.groups.length === 1;
  return [...head, ...report.groups.map((g) => `\n${groupMarkdown(g, single)}`), ...(report.extra ? ['', report.extra.markdown] : [])].join('\n') + '\n';
}

// Writes <base>.json, <base>.md and the charts (base: --output-json without .json, or
// bench/results/<kind>-<date>); prints the markdown and where everything went.
export async function writeReport(report: Report, outputJson: string | null): Promise<void> {
  const base = outputJson?.replace(/\.json$/, '') ?? path.join(packageRoot, 'bench', 'results', `${report.kind}-${report.date.replace(/[:.]/g, '-')}`);
  fs.mkdirSync(path.dirname(base), { recursive: true });
  const md = markdown(report);
  process.stdout.write(`\n${md}`);
  const files = [`${base}.json`, `${base}.md`];
  fs.writeFileSync(files[0]!, JSON.stringify(report, (k, v: unknown) => (k === 'charts' ? undefined : v === Infinity ? 'inf' : v), 2));
  fs.writeFileSync(files[1]!, md);
  files.push(...(await writeCharts(report, base)));
  process.stdout.write(`\nwrote ${files.map((p) => path.relative(process.cwd(), p)).join(', ')}\n`);
}
