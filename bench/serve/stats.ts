// stats.ts: the serving metrics, with exactly the definitions of vLLM's `bench serve`
// (calculate_metrics in vllm/benchmarks/serve.py), over the requests of one run.
//
//   TTFT   send -> first chunk carrying a choice
//   ITL    the gaps between consecutive chunks carrying a choice, pooled over all requests
//   E2EL   send -> last chunk carrying a choice
//   TPOT   (E2EL - TTFT) / (output tokens - 1), only for requests with more than one token
//   throughput: completed requests, output tokens and input + output tokens per second of the
//          run's duration (first send to last finish); goodput: completed requests that meet
//          every SLO given, per second (a request with one output token has TPOT 0 there, as vLLM)
// Output tokens are the server's count (the usage chunk); input tokens are the prompt sent.
// Stays true: failed requests count in `failed`, never in a latency or a throughput; every
// distribution is mean, median, std (population, as numpy) and p90/p99 with numpy's default
// linear interpolation; an empty distribution is NaN throughout (null in JSON).

// One request as the load generator saw it; times in ms.
export interface RequestRecord {
  session: number; // the dataset's session (conversation) index
  turn: number; // the turn inside the session, 0 for single-turn datasets
  startMs: number; // when it was sent, after the run's start
  promptTokens: number;
  maxTokens: number; // the output length asked for
  ttftMs: number | null;
  itlMs: number[];
  e2eMs: number | null;
  outputTokens: number; // from the server's usage; 0 for a failure
  error: string | null;
}

export interface Distribution {
  mean: number;
  median: number;
  std: number;
  p90: number;
  p99: number;
}

// SLOs in ms; a request is good when it meets every one given.
export interface Goodput {
  ttftMs?: number;
  tpotMs?: number;
  e2elMs?: number;
}

export interface Summary {
  requests: number;
  completed: number;
  failed: number;
  durationS: number;
  totalInputTokens: number;
  totalOutputTokens: number;
  requestThroughput: number; // completed requests/s
  requestGoodput: number | null; // null without SLOs
  outputThroughput: number; // output tokens/s
  totalTokenThroughput: number; // (input + output) tokens/s
  ttftMs: Distribution;
  tpotMs: Distribution;
  itlMs: Distribution;
  e2elMs: Distribution;
}

// numpy.percentile(xs, p) (method 'linear') of ascending `sorted`; NaN when empty.
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (rank - lo);
}

export function distribution(xs: readonly number[]): Distribution {
  const sorted = [...xs].sort((a, b) => a - b);
  const n = sorted.length;
  const mean = n ? sorted.reduce((s, x) => s + x, 0) / n : NaN;
  const std = n ? Math.sqrt(sorted.reduce((s, x) => s + (x - mean) ** 2, 0) / n) : NaN;
  return { mean, median: percentile(sorted, 50), std, p90: percentile(sorted, 90), p99: percentile(sorted, 99) };
}

// vLLM's TPOT of one completed request; null when it has one output token or fewer.
export function tpotMs(r: RequestRecord): number | null {
  if (r.error !== null || r.ttftMs === null || r.e2eMs === null || r.outputTokens <= 1) return null;
  return (r.e2eMs - r.ttftMs) / (r.outputTokens - 1);
}

function isGood(r: RequestRecord, slo: Goodput): boolean {
  const checks: [number | undefined, number][] = [
    [slo.ttftMs, r.ttftMs!],
    [slo.tpotMs, tpotMs(r) ?? 0],
    [slo.e2elMs, r.e2eMs!],
  ];
  return checks.every(([limit, value]) => limit === undefined || value <= limit);
}

export function summarize(records: readonly RequestRecord[], durationMs: number, goodput?: Goodput): Summary {
  const ok = records.filter((r) => r.error === null);
  const durationS = durationMs / 1000;
  const totalInputTokens = ok.reduce((s, r) => s + r.promptTokens, 0);
  const totalOutputTokens = ok.reduce((s, r) => s + r.outputTokens, 0);
  const hasSlo = goodput !== undefined && Object.values(goodput).some((v) => v !== undefined);
  return {
    requests: records.length,
    completed: ok.length,
    failed: records.length - ok.length,
    durationS,
    totalInputTokens,
    totalOutputTokens,
    requestThroughput: ok.length / durationS,
    requestGoodput: hasSlo ? ok.filter((r) => isGood(r, goodput)).length / durationS : null,
    outputThroughput: totalOutputTokens / durationS,
    totalTokenThroughput: (totalInputTokens + totalOutputTokens) / durationS,
    ttftMs: distribution(ok.map((r) => r.ttftMs!)),
    tpotMs: distribution(ok.flatMap((r) => tpotMs(r) ?? [])),
    itlMs: distribution(ok.flatMap((r) => r.itlMs)),
    e2elMs: distribution(ok.map((r) => r.e2eMs!)),
  };
}

// Failures grouped by message, most frequent first.
export function errorCounts(records: readonly RequestRecord[]): { message: string; count: number }[] {
  const counts = new Map<string, number>();
  for (const r of records) if (r.error !== null) counts.set(r.error, (counts.get(r.error) ?? 0) + 1);
  return [...counts].map(([message, count]) => ({ message, count })).sort((a, b) => b.count - a.count);
}
