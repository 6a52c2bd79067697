// run.ts: measuring one workload against one target: the endpoint's model, the server's prefix
// cache counters around the run, the load itself with its progress bar, and the summary.
// A target is an endpoint (--url) or a fresh deployment started for this run alone, so runs
// never see each other's cache; a deployment the launcher refuses is a skipped run.
import { getText } from '../common.ts';
import { LaunchRefused, withDeployment } from './deployment.ts';
import type { WorkloadOptions } from './flags.ts';
import type { Session } from './datasets.ts';
import { runLoad } from './load.ts';
import { Progress } from './progress.ts';
import type { RunOutcome, RunReport } from './report.ts';
import { errorCounts, summarize } from './stats.ts';

// The time the server's load metrics take to reach /metrics after the last request.
const METRICS_SETTLE_MS = 500;

export class TargetError extends Error {}

// The model to ask for: `model`, else the first the endpoint lists; a clear error when the
// endpoint cannot be reached.
export async function endpointModel(url: string, model: string | null): Promise<string> {
  let body: string;
  try {
    body = await getText(`${url}/v1/models`);
  } catch (err) {
    throw new TargetError(`cannot reach ${url}: ${(err as Error).message || (err as { code?: string }).code}`);
  }
  if (model !== null) return model;
  const first = (JSON.parse(body) as { data?: { id?: string }[] }).data?.[0]?.id;
  if (!first) throw new TargetError(`${url}/v1/models lists no model: give --model`);
  return first;
}

// Sum of a Prometheus series over all its label sets (NaN when absent).
function metricSum(text: string, name: string): number {
  const values = text
    .split('\n')
    .filter((line) => line.startsWith(`${name}{`) || line.startsWith(`${name} `))
    .map((line) => Number(line.slice(line.lastIndexOf(' ') + 1)));
  return values.length ? values.reduce((a, b) => a + b, 0) : NaN;
}

// vLLM's prefix cache counters (tokens), summed over workers; NaN without /metrics.
async function prefixCounters(url: string): Promise<{ hits: number; queries: number }> {
  const text = await getText(`${url}/metrics`).catch(() => '');
  return { hits: metricSum(text, 'vllm:prefix_cache_hits_total'), queries: metricSum(text, 'vllm:prefix_cache_queries_total') };
}

export interface Measure {
  name: string;
  sessions: Session[];
  options: WorkloadOptions;
}

export async function measure(url: string, model: string, m: Measure, launcherArgs: string[] | null): Promise<RunReport> {
  const before = await prefixCounters(url);
  const progress = new Progress(m.name, m.sessions.reduce((n, s) => n + s.turns.length, 0));
  const o = m.options;
  const { durationMs, records } = await runLoad(m.sessions, {
    url, model, requestRate: o.requestRate, burstiness: o.burstiness, maxConcurrency: o.maxConcurrency, seed: o.seed,
    onRecord: (r) => progress.tick(r.error !== null),
  });
  progress.end();
  await new Promise((resolve) => setTimeout(resolve, METRICS_SETTLE_MS));
  const after = await prefixCounters(url);
  const hitRate = (after.hits - before.hits) / (after.queries - before.queries);
  return {
    name: m.name,
    model,
    launcherArgs,
    maxConcurrency: Number.isFinite(o.maxConcurrency) ? o.maxConcurrency : null,
    summary: summarize(records, durationMs, o.goodput),
    prefixCacheHitRate: Number.isFinite(hitRate) ? hitRate : null,
    errors: errorCounts(records),
    requests: records,
  };
}

// The run on a fresh deployment of launcherArgs; skipped, with the launcher's reason, when the
// launcher refuses them.
export async function measureOnDeployment(launcherArgs: string[], m: Measure): Promise<RunOutcome> {
  process.stderr.write(`${m.name}: starting npm run start -- ${launcherArgs.join(' ')}\n`);
  try {
    return await withDeployment(launcherArgs, async (d) => measure(d.url, await endpointModel(d.url, null), m, launcherArgs));
  } catch (err) {
    if (!(err instanceof LaunchRefused)) throw err;
    process.stderr.write(`${m.name}: skipped: ${err.reason}\n`);
    return { name: m.name, launcherArgs, skipped: err.reason };
  }
}
