// metrics.ts: the frontend's Prometheus metrics, under vLLM v1's names and buckets, in a registry
// of its own (label model_name on every series).
//
// Owns: the registry. Request-path metrics (tokens, finished requests, TTFT, inter-token
// latency, end-to-end latency) are recorded as requests run. Engine-side ones are read from the
// workers' GET /load at scrape time (refresh()): the gauges hold the sum over workers
// (kv_cache_usage_perc: the mean) and kvserve:worker_* gauges the same per worker_id; the
// prefix-cache counters are the workers' cumulative token counters, one series per worker_id.
// With the KV router, kvserve:router_* say what it decided: decisions, and its hit rate (the
// share of routed prompt blocks that were already cached on the chosen worker). With prefill
// workers, each decode worker's disaggregation counters (remote vs local prefills, fallbacks,
// queue depth, KV bytes moved) appear per worker_id under kvserve:*. kvserve:request_migrations_total
// counts the choices sent to another worker after theirs went away mid-stream (generation.ts).
// Overload: kvserve:router_queue_depth and kvserve:router_queued say who waited for a worker with
// room, kvserve:router_rejected_total{reason} who got 503, kvserve:worker_busy which workers the
// router counts busy (its capacity rule or a busy threshold). With several frontends,
// kvserve:router_remote_active_blocks{worker_id} is what the other frontends placed on a worker
// that its reports do not show yet, as this frontend adds it (ts/runtime/load-sharing.ts).
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { DisaggCounters, WorkerLoad } from '../protocol/index.ts';
import type { RouterMetrics } from '../router/index.ts';

// vLLM v1's buckets (vllm/v1/metrics/loggers.py).
const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560];
const ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const E2E_BUCKETS = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];

export interface FinishedRequest {
  promptTokens: number;
  choices: { completionTokens: number; finishReason: string }[];
  ttftSeconds: number | null; // null when no token came
  e2eSeconds: number;
}

export class FrontendMetrics {
  readonly registry = new Registry();
  private readonly labels: { model_name: string };
  private readonly running: Gauge;
  private readonly waiting: Gauge;
  private readonly kvUsage: Gauge;
  private readonly prefixQueries: Counter;
  private readonly prefixHits: Counter;
  private readonly workerGauges: Record<'running' | 'waiting' | 'kvUsage' | 'kvActiveBlocks', Gauge>;
  private readonly disagg: Record<keyof DisaggCounters, Counter | Gauge>;
  private readonly router: Record<'decisions' | 'hitRate' | 'queueDepth' | 'indexedBlocks' | 'queuedTotal', Gauge>;
  private readonly rejected: Counter;
  private readonly busy: Gauge;
  private readonly remoteBlocks: Gauge;
  private readonly promptTokens: Counter;
  private readonly generationTokens: Counter;
  private readonly success: Counter;
  private readonly ttft: Histogram;
  private readonly e2e: Histogram;
  // Incremented once per migration (a choice's request resent to another worker).
  readonly migrations: { inc(): void };
  // Observed once per streamed token: the labelled child, resolved once.
  readonly itl: { observe(seconds: number): void };

  constructor(modelName: string) {
    this.labels = { model_name: modelName };
    const registers = [this.registry];
    const gauge = (name: string, help: string, labelNames = ['model_name']) => new Gauge({ name, help, labelNames, registers });
    const counter = (name: string, help: string, labelNames = ['model_name']) => new Counter({ name, help, labelNames, registers });
    const histogram = (name: string, help: string, buckets: number[]) => new Histogram({ name, help, buckets, labelNames: ['model_name'], registers });

    this.running = gauge('vllm:num_requests_running', 'Number of requests running in the engines (sum over workers).');
    this.waiting = gauge('vllm:num_requests_waiting', 'Number of requests waiting in the engines (sum over workers).');
    this.kvUsage = gauge('vllm:kv_cache_usage_perc', 'KV-cache usage, 1 = full (mean over workers).');
    const perWorker = ['model_name', 'worker_id'];
    this.prefixQueries = counter('vllm:prefix_cache_queries_total', 'Prefix-cache queries, in tokens, per worker.', perWorker);
    this.prefixHits = counter('vllm:prefix_cache_hits_total', 'Prefix-cache hits, in tokens, per worker.', perWorker);
    this.router = {
      decisions: gauge('kvserve:router_decisions', 'Routing decisions the KV router made.'),
      hitRate: gauge('kvserve:router_prefix_hit_rate', 'Share of routed prompt blocks already cached on the chosen worker.'),
      queueDepth: gauge('kvserve:router_queue_depth', 'Requests waiting for a worker with room.'),
      indexedBlocks: gauge('kvserve:router_indexed_blocks', "Blocks in the router's index (distinct hashes)."),
      queuedTotal: gauge('kvserve:router_queued', 'Requests that had to wait for a worker with room, since start.'),
    };
    this.rejected = counter('kvserve:router_rejected_total', 'Requests refused with 503 by the router: queue_full, timeout (waited too long), no_workers.', ['model_name', 'reason']);
    this.remoteBlocks = gauge('kvserve:router_remote_active_blocks', "Blocks the other frontends placed on this worker that its load reports do not show yet.", perWorker);
    this.busy = gauge('kvserve:worker_busy', 'Whether the router counts this worker busy (1) or with room (0).', perWorker);
    this.workerGauges = {
      running: gauge('kvserve:worker_num_requests_running', 'Requests running in one worker.', perWorker),
      waiting: gauge('kvserve:worker_num_requests_waiting', 'Requests waiting in one worker.', perWorker),
      kvUsage: gauge('kvserve:worker_kv_cache_usage_perc', "One worker's KV-cache usage, 1 = full.", perWorker),
      kvActiveBlocks: gauge('kvserve:worker_kv_active_blocks', 'KV blocks held by requests in one worker.', perWorker),
    };
    // Disaggregation, per decode worker (its GET /load `disagg`).
    this.disagg = {
      remote_prefills: counter('kvserve:remote_prefills_total', 'Prompts prefilled by a prefill worker.', perWorker),
      local_prefills: counter('kvserve:local_prefills_total', 'Prompts prefilled locally by decision (short, or queue full).', perWorker),
      fallbacks: counter('kvserve:remote_prefill_fallbacks_total', 'Remote prefills given up (deadline, failure) and done locally.', perWorker),
      prefill_queue_depth: gauge('kvserve:prefill_queue_depth', 'Jobs waiting in the prefill queue, as the decode worker last saw.', perWorker),
      remote_prefill_seconds: counter('kvserve:remote_prefill_seconds_total', 'Time from pushing a prefill job to its notification, summed.', perWorker),
      prefill_jobs: counter('kvserve:prefill_jobs_total', 'Prefill jobs written (prefill workers).', perWorker),
      prefill_jobs_dropped: counter('kvserve:prefill_jobs_dropped_total', 'Prefill jobs dropped (prefill workers).', perWorker),
      transfer_bytes: counter('kvserve:kv_transfer_bytes_total', 'KV bytes moved between workers.', perWorker),
      transfer_seconds: counter('kvserve:kv_transfer_seconds_total', 'Time in KV transfers for this worker (measured by the prefill workers).', perWorker),
    };
    this.promptTokens = counter('vllm:prompt_tokens_total', 'Prompt tokens processed.');
    this.generationTokens = counter('vllm:generation_tokens_total', 'Generation tokens produced.');
    this.success = counter('vllm:request_success_total', 'Finished requests (choices), by finish reason.', ['model_name', 'finished_reason']);
    this.ttft = histogram('vllm:time_to_first_token_seconds', 'Time to first token, seconds.', TTFT_BUCKETS);
    this.itl = histogram('vllm:inter_token_latency_seconds', 'Inter-token latency, seconds.', ITL_BUCKETS).labels(this.labels);
    this.e2e = histogram('vllm:e2e_request_latency_seconds', 'End-to-end request latency, seconds.', E2E_BUCKETS);
    const migrations = counter('kvserve:request_migrations_total', 'Requests (choices) resent to another worker after theirs went away mid-stream.');
    migrations.inc(this.labels, 0); // exported from the start, at 0
    this.migrations = migrations.labels(this.labels);
  }

  recordRequest(r: FinishedRequest): void {
    this.promptTokens.inc(this.labels, r.promptTokens);
    for (const c of r.choices) {
      this.generationTokens.inc(this.labels, c.completionTokens);
      this.success.inc({ ...this.labels, finished_reason: c.finishReason });
    }
    if (r.ttftSeconds !== null) this.ttft.observe(this.labels, r.ttftSeconds);
    this.e2e.observe(this.labels, r.e2eSeconds);
  }

  // Sets the engine-side metrics from the workers' loads (call just before a scrape).
  refresh(loads: readonly WorkerLoad[], router?: RouterMetrics): void {
    const sum = (f: (l: WorkerLoad) => number) => loads.reduce((s, l) => s + f(l), 0);
    this.running.set(this.labels, sum((l) => l.request_active_slots));
    this.waiting.set(this.labels, sum((l) => l.num_requests_waiting));
    this.kvUsage.set(this.labels, loads.length > 0 ? sum((l) => l.kv_cache_usage) / loads.length : 0);
    this.prefixQueries.reset();
    this.prefixHits.reset();
    for (const g of Object.values(this.workerGauges)) g.reset();
    for (const m of Object.values(this.disagg)) m.reset();
    for (const l of loads) {
      const labels = { ...this.labels, worker_id: l.worker_id };
      this.prefixQueries.inc(labels, l.prefix_cache_queries);
      this.prefixHits.inc(labels, l.prefix_cache_hits);
      this.workerGauges.running.set(labels, l.request_active_slots);
      this.workerGauges.waiting.set(labels, l.num_requests_waiting);
      this.workerGauges.kvUsage.set(labels, l.kv_cache_usage);
      this.workerGauges.kvActiveBlocks.set(labels, l.kv_active_blocks);
      if (l.disagg) {
        for (const [k, m] of Object.entries(this.disagg) as [keyof DisaggCounters, Counter | Gauge][]) {
          if (m instanceof Gauge) m.set(labels, l.disagg[k]);
          else m.inc(labels, l.disagg[k]);
        }
      }
    }
    if (router) {
      this.router.decisions.set(this.labels, router.decisions);
      this.router.hitRate.set(this.labels, router.hitRate);
      this.router.queueDepth.set(this.labels, router.queueDepth);
      this.router.indexedBlocks.set(this.labels, router.indexedBlocks);
      this.router.queuedTotal.set(this.labels, router.queuedTotal);
      this.rejected.reset();
      for (const [reason, count] of Object.entries(router.rejected)) this.rejected.inc({ ...this.labels, reason }, count);
      this.busy.reset();
      this.remoteBlocks.reset();
      for (const w of router.workers) {
        this.busy.set({ ...this.labels, worker_id: w.workerId }, w.busy ? 1 : 0);
        this.remoteBlocks.set({ ...this.labels, worker_id: w.workerId }, w.remoteBlocks);
      }
    }
  }
}
