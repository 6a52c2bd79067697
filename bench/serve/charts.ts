// charts.ts: a report's SVG charts, one set per group, as vega-lite specs rendered in Node by
// vega (no browser):
//   <base>[-group]-ttft-cdf.svg     the TTFT CDF of every run
//   <base>[-group]-itl.svg          ITL over the run: p50 and p99 of the gaps in 40 time bins
//   <base>[-group]-throughput.svg   output tokens/s against max concurrency (a sweep: runs that
//                                   differ in max concurrency)
//   <base>-<name>.svg               a scenario's own charts (report.extra.charts: the soak's)
// Stays true: the charts are drawn from the same records as the tables (completed requests).
import fs from 'node:fs';
import * as vega from 'vega';
import * as vl from 'vega-lite';
import type { Report, ReportGroup, RunReport } from './report.ts';
import { percentile } from './stats.ts';

// Size, and no ARIA labels per mark (they would triple the file size).
const LAYOUT = { width: 560, height: 320, config: { aria: false } } as const;
const ITL_BINS = 40;
const CDF_POINTS = 400;

export async function svgOf(spec: vl.TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' });
  return view.toSVG();
}

function ttftCdf(title: string, runs: RunReport[]): vl.TopLevelSpec {
  const values = runs.flatMap((r) => {
    const ttft = r.requests.flatMap((q) => (q.error === null ? [q.ttftMs!] : [])).sort((a, b) => a - b);
    const step = Math.max(1, Math.floor(ttft.length / CDF_POINTS));
    return ttft.flatMap((ms, i) => (i % step === 0 || i === ttft.length - 1 ? [{ run: r.name, ms, fraction: (i + 1) / ttft.length }] : []));
  });
  return {
    title: `${title}: TTFT CDF`, ...LAYOUT, data: { values },
    mark: { type: 'line', interpolate: 'step-after' },
    encoding: {
      x: { field: 'ms', type: 'quantitative', title: 'TTFT (ms)' },
      y: { field: 'fraction', type: 'quantitative', title: 'fraction of requests', scale: { domain: [0, 1] } },
      color: { field: 'run', type: 'nominal', sort: null },
    },
  };
}

function itlOverTime(title: string, runs: RunReport[]): vl.TopLevelSpec {
  const values = runs.flatMap((r) => {
    const gaps = r.requests.flatMap((q) => {
      if (q.error !== null) return [];
      let t = q.startMs + q.ttftMs!;
      return q.itlMs.map((gap) => ({ t: (t += gap), gap }));
    });
    const end = gaps.reduce((m, g) => Math.max(m, g.t), 0); // a spread of every gap would overflow the stack
    const bins = Array.from({ length: ITL_BINS }, () => [] as number[]);
    for (const g of gaps) bins[Math.min(ITL_BINS - 1, Math.floor((g.t / end) * ITL_BINS))]!.push(g.gap);
    return bins.flatMap((b, i) => {
      if (b.length === 0) return [];
      const sorted = b.sort((x, y) => x - y);
      const s = ((i + 0.5) * end) / ITL_BINS / 1000;
      return [{ run: r.name, s, stat: 'p50', ms: percentile(sorted, 50) }, { run: r.name, s, stat: 'p99', ms: percentile(sorted, 99) }];
    });
  });
  return {
    title: `${title}: inter-token latency over the run`, ...LAYOUT, data: { values },
    mark: 'line',
    encoding: {
      x: { field: 's', type: 'quantitative', title: 'time since the run started (s)' },
      y: { field: 'ms', type: 'quantitative', title: 'ITL (ms)' },
      color: { field: 'run', type: 'nominal', sort: null },
      strokeDash: { field: 'stat', type: 'nominal', title: 'percentile' },
    },
  };
}

function throughput(title: string, runs: RunReport[]): vl.TopLevelSpec {
  const values = runs.map((r) => ({ concurrency: r.maxConcurrency, tokens: r.summary.outputThroughput }));
  return {
    title: `${title}: output throughput against concurrency`, ...LAYOUT, data: { values },
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'concurrency', type: 'quantitative', title: 'max concurrency', scale: { type: 'log', base: 2 } },
      y: { field: 'tokens', type: 'quantitative', title: 'output tokens/s' },
    },
  };
}

const slug = (s: string) => s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');

function chartsOf(group: ReportGroup): [string, vl.TopLevelSpec][] {
  const runs = group.runs.filter((r): r is RunReport => !('skipped' in r) && r.summary.completed > 0);
  if (runs.length === 0) return [];
  const charts: [string, vl.TopLevelSpec][] = [['ttft-cdf', ttftCdf(group.title, runs)], ['itl', itlOverTime(group.title, runs)]];
  const concurrencies = new Set(runs.map((r) => r.maxConcurrency));
  if (runs.length > 1 && concurrencies.size === runs.length && !concurrencies.has(null)) charts.push(['throughput', throughput(group.title, runs)]);
  return charts;
}

// Writes the charts of every group; returns their paths.
export async function writeCharts(report: Report, base: string): Promise<string[]> {
  const files: string[] = [];
  for (const group of report.groups) {
    const prefix = report.groups.length > 1 ? `${base}-${slug(group.title)}` : base;
    for (const [name, spec] of chartsOf(group)) {
      const file = `${prefix}-${name}.svg`;
      fs.writeFileSync(file, await svgOf(spec));
      files.push(file);
    }
  }
  for (const [name, spec] of report.extra?.charts ?? []) {
    const file = `${base}-${name}.svg`;
    fs.writeFileSync(file, await svgOf(spec));
    files.push(file);
  }
  return files;
}
