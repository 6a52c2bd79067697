// generation.ts: one HTTP request's engine requests: n choices for each prompt, each its own
// engine request on a worker the pool picks, each with its own OutputProcessor and its own
// AbortController.
//
// Lifecycle:
//   start()  every choice gets a worker and is accepted by it (its first delta is awaited), so a
//            refusal (no worker, prompt too long for the engine) is still an HTTP error before
//            any byte of the response is written; the first refusal aborts the other choices;
//   run()    streams every choice to its end, calling onDelta for each delta with something to
//            show; a stop string aborts that choice's engine request (abortEngine);
//   abort()  (client gone) aborts every engine request; streams then end as 'abort'.
// Stays true: every choice that select() placed is release()d exactly once; choice index =
// promptIndex * n + j (vLLM's rule for batched completions); usage counts each prompt once and
// every completion token (EOS / stop token included), as vLLM.
import type { FinishReason, OutputProcessorOptions, TextTokenizer } from '../processor/index.ts';
import { OutputProcessor } from '../processor/index.ts';
import type { GenerateDelta, RequestId, TokenLogprobs } from '../protocol/index.ts';
import { RequestPlaneError } from '../runtime/request-client.ts';
import { ApiError, toApiError } from './errors.ts';
import type { FrontendMetrics } from './metrics.ts';
import { choiceSampling, type GenerationPlan } from './request-params.ts';
import type { WorkerPool, WorkerSelection } from './worker-pool.ts';

// Workers tried for one choice before a request-plane failure becomes the client's error.
const MAX_WORKER_ATTEMPTS = 3;

export interface ChoiceDelta {
  readonly index: number;
  readonly text: string; // the content, with a reasoning parser
  readonly reasoning: string | null; // null: no reasoning parser
  readonly logprobs: readonly TokenLogprobs[] | null; // of the tokens shown in this delta; null = not asked
  readonly finishReason: FinishReason | null;
  readonly stopReason: string | number | null;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface GenerationDeps {
  pool: WorkerPool;
  tokenizer: TextTokenizer;
  metrics: FrontendMetrics;
}

class Choice {
  readonly abort = new AbortController();
  readonly processor: OutputProcessor;
  selection: WorkerSelection | undefined;
  stream: AsyncGenerator<GenerateDelta> | undefined;
  first: IteratorResult<GenerateDelta> | undefined;
  finish: FinishReason | null = null;
  lastTokenAt = 0;
  released = false;

  constructor(
    readonly index: number,
    readonly promptIndex: number,
    readonly requestId: RequestId,
    tokenizer: TextTokenizer,
    output: OutputProcessorOptions,
  ) {
    this.processor = new OutputProcessor(tokenizer, output);
  }

  // Until the processor says otherwise, a choice that ends has been aborted.
  get finishReason(): FinishReason {
    return this.finish ?? 'abort';
  }
}

export class Generation {
  private readonly choices: Choice[] = [];
  private readonly startedAt = performance.now();
  private firstTokenAt: number | null = null;
  private readonly wantsLogprobs: boolean;

  constructor(
    private readonly deps: GenerationDeps,
    readonly plan: GenerationPlan,
    readonly id: string,
  ) {
    this.wantsLogprobs = plan.sampling.logprobs !== undefined;
    plan.prompts.forEach((_, p) => {
      for (let j = 0; j < plan.n; j++) {
        const index = p * plan.n + j;
        this.choices.push(new Choice(index, p, `${id}-${index}` as RequestId, deps.tokenizer, plan.output));
      }
    });
  }

  get promptTokens(): number {
    return this.plan.prompts.reduce((s, p) => s + p.length, 0);
  }

  // The worker of the first choice (the x-worker-id header).
  get workerId(): string | undefined {
    return this.choices[0]?.selection?.worker.workerId;
  }

  async start(): Promise<void> {
    const results = await Promise.allSettled(
      this.choices.map((c) =>
        this.startChoice(c).catch((err) => {
          this.abort();
          throw err;
        }),
      ),
    );
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) {
      await Promise.all(this.choices.map((c) => this.close(c)));
      throw toApiError((failed as PromiseRejectedResult).reason);
    }
  }

  async run(onDelta: (d: ChoiceDelta) => void): Promise<void> {
    try {
      await Promise.all(
        this.choices.map((c) =>
          this.runChoice(c, onDelta).catch((err) => {
            this.abort();
            throw err;
          }),
        ),
      );
    } finally {
      await Promise.all(this.choices.map((c) => this.close(c)));
      const now = performance.now();
      this.deps.metrics.recordRequest({
        promptTokens: this.promptTokens,
        choices: this.choices.map((c) => ({ completionTokens: c.processor.completionTokens, finishReason: c.finishReason })),
        ttftSeconds: this.firstTokenAt === null ? null : (this.firstTokenAt - this.startedAt) / 1000,
        e2eSeconds: (now - this.startedAt) / 1000,
      });
    }
  }

  abort(): void {
    for (const c of this.choices) c.abort.abort();
  }

  usage(): Usage {
    const completion = this.choices.reduce((s, c) => s + c.processor.completionTokens, 0);
    return { prompt_tokens: this.promptTokens, completion_tokens: completion, total_tokens: this.promptTokens + completion };
  }

  // One log line's worth of the request.
  summary(): Record<string, unknown> {
    return {
      requestId: this.id,
      promptTokens: this.promptTokens,
      completionTokens: this.usage().completion_tokens,
      finishReasons: this.choices.map((c) => c.finishReason),
      ttftMs: this.firstTokenAt === null ? null : round(this.firstTokenAt - this.startedAt),
      durationMs: round(performance.now() - this.startedAt),
      workerId: this.workerId,
    };
  }

  // Picks a worker and waits for the choice's first delta. A worker that does not answer at all
  // (dead, or its lease not yet expired) is reported to the pool and another one is tried.
  private async startChoice(c: Choice): Promise<void> {
    const promptTokenIds = this.plan.prompts[c.promptIndex];
    for (let attempt = 1; ; attempt++) {
      c.selection = await this.deps.pool.select(promptTokenIds, c.requestId);
      c.released = false;
      c.stream = c.selection.client.generate(
        {
          requestId: c.requestId,
          promptTokenIds,
          sampling: choiceSampling(this.plan, c.promptIndex, c.index - c.promptIndex * this.plan.n),
          prefixHitRate: c.selection.prefixHitRate,
        },
        c.abort.signal,
      );
      try {
        c.first = await c.stream.next();
        return;
      } catch (err) {
        const unavailable = err instanceof RequestPlaneError && err.code === 'ERR_WORKER_UNAVAILABLE';
        if (!unavailable || attempt >= MAX_WORKER_ATTEMPTS || c.abort.signal.aborted) throw err;
        const workerId = c.selection.worker.workerId;
        await this.close(c);
        this.deps.pool.reportUnavailable?.(workerId);
      }
    }
  }

  private async runChoice(c: Choice, onDelta: (d: ChoiceDelta) => void): Promise<void> {
    let r = c.first!;
    while (!r.done) {
      if (this.handle(c, r.value, onDelta)) return;
      r = await c.stream!.next();
    }
    // The stream ended unfinished: aborted (client gone or server closing).
    c.finish = 'abort';
    const reasoning = c.processor.reasoning === null ? null : '';
    onDelta({ index: c.index, text: '', reasoning, logprobs: this.wantsLogprobs ? [] : null, finishReason: 'abort', stopReason: null });
  }

  // Feeds one delta of choice c; true once the choice has finished.
  private handle(c: Choice, d: GenerateDelta, onDelta: (d: ChoiceDelta) => void): boolean {
    if (d.error || d.finishReason === 'error') {
      throw new ApiError('ERR_WORKER_FAILED', `the engine failed: ${d.error?.code ?? 'ERR_ENGINE'}: ${d.error?.message ?? 'unknown error'}`);
    }
    if (d.tokenIds.length > 0) {
      const now = performance.now();
      this.firstTokenAt ??= now;
      if (c.lastTokenAt > 0) this.deps.metrics.itl.observe((now - c.lastTokenAt) / 1000);
      c.lastTokenAt = now;
    }
    const out = c.processor.feed(d.tokenIds, d.finishReason ?? null);
    if (out.abortEngine) c.abort.abort();
    // The token that ended the sequence in the engine is not shown, so neither is its logprob.
    let logprobs: readonly TokenLogprobs[] | null = null;
    if (this.wantsLogprobs) logprobs = d.finishReason === 'stop' ? (d.logprobs ?? []).slice(0, -1) : (d.logprobs ?? []);
    if (out.finished) c.finish = out.finishReason;
    const shows = out.text.length > 0 || (out.reasoning !== null && out.reasoning.length > 0);
    if (shows || out.finished || (logprobs !== null && logprobs.length > 0)) {
      onDelta({ index: c.index, text: out.text, reasoning: out.reasoning, logprobs, finishReason: out.finishReason, stopReason: out.stopReason });
    }
    return out.finished;
  }

  private async close(c: Choice): Promise<void> {
    await c.stream?.return(undefined);
    if (c.selection && !c.released) {
      c.released = true;
      this.deps.pool.release(c.selection.worker.workerId, c.requestId);
    }
  }
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}
