// generation.ts: one HTTP request's engine requests: n choices for each prompt, each its own
// engine request on a worker the pool picks, each with its own OutputProcessor and its own
// AbortController.
//
// Lifecycle:
//   start()  the first MAX_CHOICES_IN_FLIGHT choices get a worker and are accepted by it (their
//            first delta is awaited), so a refusal (no worker, prompt too long for the engine)
//            is still an HTTP error before any byte of the response is written; the first
//            refusal aborts the other choices;
//   run()    streams every choice to its end, calling onDelta for each delta with something to
//            show; a stop string aborts that choice's engine request (abortEngine); each choice
//            that ends starts the next one not yet started, so one request never holds more
//            than MAX_CHOICES_IN_FLIGHT engine requests (with the router's fair queue, a request
//            with n = 128 does not hold back the requests that come after it);
//   abort()  (client gone) aborts every engine request; streams then end as 'abort'.
// Migration (--migration-limit, DESIGN.md section 8): when a choice's worker goes away after its
// stream began (the request plane's ERR_WORKER_UNAVAILABLE, over HTTP ERR_WORKER_STREAM, or an
// error delta: the engine failed the request it had accepted, ERR_ENGINE_FAILED), the
// worker is reported unavailable to the pool, its selection released, and the choice sent again
// to another worker as a new engine request `<requestId>-m<k>`: the original prompt, the token
// ids the choice got so far as outputTokenIds, the same sampling (max_tokens the original total).
// The OutputProcessor (detokenizer, stop strings, counts) stays the same object, so the client's
// stream goes on with no token lost or repeated and usage is as if undisturbed. At most
// `limit` migrations per choice; not for a choice whose prompt + output passed `maxSeqLen` (its
// token ids are no longer kept). A migration that cannot be served (no worker, a refusal, the
// limit) ends the choice with the error it would have had without migration.
// Stall (--stall-timeout-s): a choice whose worker produced nothing for stallTimeoutMs while
// it was waiting (for its first output or the next one) has that worker probed (GET /load, 1 s);
// one that does not answer is treated as gone: its engine request is aborted, the worker
// reported, and the choice placed again (before its first output) or migrated (after). A worker
// that answers is only slow (a long prefill, a full batch): the choice waits another window.
// Deadline (--request-timeout): past requestTimeoutMs, every engine request of the generation is
// aborted (their blocks freed on the workers) and the request fails with ERR_DEADLINE_EXCEEDED
// (504), a request still waiting for a worker with room included.
// Stays true: every choice that select() placed is release()d exactly once per engine request;
// choice index = promptIndex * n + j (vLLM's rule for batched completions); usage counts each
// prompt once and every completion token (EOS / stop token included), as vLLM.
import type { FastifyBaseLogger } from 'fastify';
import type { FinishReason, OutputProcessorOptions, TextTokenizer } from '../processor/index.ts';
import { OutputProcessor } from '../processor/index.ts';
import { WORKER_DRAINING_CODE, type GenerateDelta, type RequestId, type TokenLogprobs } from '../protocol/index.ts';
import { RequestPlaneError } from '../runtime/request-client.ts';
import { ApiError, toApiError } from './errors.ts';
import type { FrontendMetrics } from './metrics.ts';
import { choiceSampling, type GenerationPlan } from './request-params.ts';
import type { WorkerPool, WorkerSelection } from './worker-pool.ts';

// Workers tried for one choice before a request-plane failure becomes the client's error.
const MAX_WORKER_ATTEMPTS = 3;
// Engine requests one HTTP request holds at once (n times its prompts beyond it wait their turn).
export const MAX_CHOICES_IN_FLIGHT = 16;
// How long a stalled choice's worker has to answer its probe.
const STALL_PROBE_TIMEOUT_MS = 1000;

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

// Request migration's settings (--migration-limit, --migration-max-seq-len).
export interface MigrationSettings {
  limit: number; // migrations per choice, >= 0; 0 = off
  maxSeqLen?: number; // prompt + output tokens beyond which a choice is not migrated; absent = no cap
}

export interface GenerationDeps {
  pool: WorkerPool;
  tokenizer: TextTokenizer;
  metrics: FrontendMetrics;
  migration?: MigrationSettings; // absent = off
  stallTimeoutMs?: number; // absent or 0 = off
  requestTimeoutMs?: number; // absent or 0 = no deadline
  log?: FastifyBaseLogger; // one info line per migration
}

// The errors that mean the worker's connection went away mid-request, or its engine failed the
// request after accepting it (a tensor-parallel rank that died takes its group down so): another
// worker may finish it.
function workerGone(err: unknown): boolean {
  return err instanceof RequestPlaneError && (err.code === 'ERR_WORKER_UNAVAILABLE' || err.code === 'ERR_WORKER_STREAM' || err.code === 'ERR_ENGINE_FAILED');
}

class Choice {
  readonly abort = new AbortController();
  readonly processor: OutputProcessor;
  selection: WorkerSelection | undefined;
  stream: AsyncGenerator<GenerateDelta> | undefined;
  attempt = new AbortController(); // the current engine request's own (a stall aborts it alone)
  lastActivityAt = 0; // performance.now() of the placement or the last delta
  stalled: RequestPlaneError | undefined; // set when a stall probe failed: the attempt was aborted for it
  probing = false;
  done = false;
  first: IteratorResult<GenerateDelta> | undefined;
  finish: FinishReason | null = null;
  lastTokenAt = 0;
  released = false;
  // The current engine request: requestId, then requestId-m<k> after k migrations.
  engineRequestId: RequestId;
  migrations = 0;
  // Every token id the engine gave this choice, in order (what a migration resends); null when
  // migration is off or prompt + output passed --migration-max-seq-len.
  outputTokenIds: number[] | null;

  constructor(
    readonly index: number,
    readonly promptIndex: number,
    readonly requestId: RequestId,
    tokenizer: TextTokenizer,
    output: OutputProcessorOptions,
    keepsOutput: boolean,
  ) {
    this.processor = new OutputProcessor(tokenizer, output);
    this.engineRequestId = requestId;
    this.outputTokenIds = keepsOutput ? [] : null;
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
  private watchdog: NodeJS.Timeout | undefined;
  private deadline: NodeJS.Timeout | undefined;
  private timedOut = false;

  constructor(
    private readonly deps: GenerationDeps,
    readonly plan: GenerationPlan,
    readonly id: string,
  ) {
    this.wantsLogprobs = plan.sampling.logprobs !== undefined;
    plan.prompts.forEach((_, p) => {
      for (let j = 0; j < plan.n; j++) {
        const index = p * plan.n + j;
        const migrates = (deps.migration?.limit ?? 0) > 0;
        this.choices.push(new Choice(index, p, `${id}-${index}` as RequestId, deps.tokenizer, plan.output, migrates));
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
    const { stallTimeoutMs = 0, requestTimeoutMs = 0 } = this.deps;
    if (requestTimeoutMs > 0) {
      this.deadline = setTimeout(() => {
        this.timedOut = true;
        this.abort();
      }, requestTimeoutMs);
      this.deadline.unref();
    }
    if (stallTimeoutMs > 0) {
      this.watchdog = setInterval(() => this.checkStalls(stallTimeoutMs), Math.min(1000, stallTimeoutMs / 2));
      this.watchdog.unref();
    }
    const results = await Promise.allSettled(
      this.choices.slice(0, MAX_CHOICES_IN_FLIGHT).map((c) =>
        this.startChoice(c).catch((err) => {
          this.abort();
          throw err;
        }),
      ),
    );
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) {
      await Promise.all(this.choices.map((c) => this.close(c)));
      this.stopTimers();
      throw this.deadlineError() ?? toApiError((failed as PromiseRejectedResult).reason);
    }
  }

  private stopTimers(): void {
    clearInterval(this.watchdog);
    clearTimeout(this.deadline);
  }

  private deadlineError(): ApiError | undefined {
    if (!this.timedOut) return undefined;
    return new ApiError('ERR_DEADLINE_EXCEEDED', `the request did not finish within --request-timeout (${(this.deps.requestTimeoutMs ?? 0) / 1000} s); it was aborted`);
  }

  // Every choice that waits on its worker and has heard nothing for stallMs has its worker
  // probed; no answer aborts the choice's current engine request as stalled (see the header).
  private checkStalls(stallMs: number): void {
    const now = performance.now();
    for (const c of this.choices) {
      if (c.done || c.probing || c.stalled || !c.selection || now - c.lastActivityAt < stallMs) continue;
      c.probing = true;
      const { worker, client } = c.selection;
      const attempt = c.attempt;
      const alive = () => {
        c.probing = false;
        c.lastActivityAt = performance.now(); // alive, only slow: another window
      };
      client.load(STALL_PROBE_TIMEOUT_MS).then(alive, (err: unknown) => {
        // A draining worker refuses the probe but still finishes the requests it has.
        if (err instanceof RequestPlaneError && err.code === WORKER_DRAINING_CODE) return alive();
        c.probing = false;
        if (c.attempt !== attempt || c.done) return;
        c.stalled = new RequestPlaneError(
          503,
          'ERR_WORKER_UNAVAILABLE',
          `worker ${worker.workerId} produced nothing for ${stallMs / 1000} s and did not answer its health probe`,
        );
        attempt.abort();
      });
    }
  }

  async run(onDelta: (d: ChoiceDelta) => void): Promise<void> {
    await this.runChoices(onDelta);
    const late = this.deadlineError();
    if (late) throw late;
  }

  private async runChoices(onDelta: (d: ChoiceDelta) => void): Promise<void> {
    const later = this.choices.slice(MAX_CHOICES_IN_FLIGHT);
    // One lane per started choice: when its choice ends, it releases that choice's worker (the
    // router counts the slot free again) and starts and runs the next waiting one.
    const lane = async (first: Choice) => {
      for (let c: Choice | undefined = first; c !== undefined; c = later.shift()) {
        if (c !== first) await this.startLater(c);
        await this.runChoice(c, onDelta);
        await this.close(c);
      }
    };
    try {
      await Promise.all(
        this.choices.slice(0, MAX_CHOICES_IN_FLIGHT).map((c) =>
          lane(c).catch((err) => {
            this.abort();
            throw err;
          }),
        ),
      );
    } finally {
      await Promise.all(this.choices.map((c) => this.close(c)));
      this.stopTimers();
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
  // (dead, or its lease not yet expired), drops the stream or fails the request before any output
  // is reported to the pool and another one is tried.
  private async startChoice(c: Choice): Promise<void> {
    let lost: unknown; // the worker that did not answer, when another is tried
    for (let attempt = 1; ; attempt++) {
      try {
        await this.place(c);
      } catch (err) {
        // No other worker to try: the client hears of the one that did not answer.
        if (lost !== undefined && err instanceof ApiError && err.code === 'ERR_NO_WORKER') throw lost;
        throw err;
      }
      try {
        c.first = await this.receive(c);
        if (!c.first.done) this.deps.pool.prefilled?.(c.engineRequestId);
        return;
      } catch (err) {
        // Nothing was streamed yet: a worker that went away or whose engine failed the request
        // can be replaced by another as if it had never been chosen.
        if (!workerGone(err) || attempt >= MAX_WORKER_ATTEMPTS || c.abort.signal.aborted) throw err;
        const workerId = c.selection!.worker.workerId;
        lost = err;
        await this.close(c);
        this.deps.pool.reportUnavailable?.(workerId);
      }
    }
  }

  // A choice started after others ended; one the request aborted meanwhile just ends as 'abort'.
  private async startLater(c: Choice): Promise<void> {
    if (c.abort.signal.aborted) {
      c.first = { done: true, value: undefined };
      return;
    }
    await this.startChoice(c);
  }

  // Selects a worker for the choice's current engine request and opens its stream: the prompt,
  // and after a migration the outputs so far.
  private async place(c: Choice): Promise<void> {
    const promptTokenIds = this.plan.prompts[c.promptIndex];
    try {
      c.selection = await this.deps.pool.select(promptTokenIds, c.engineRequestId, { signal: c.abort.signal, group: this.id });
    } catch (err) {
      if (!c.abort.signal.aborted) throw err;
      throw this.deadlineError() ?? new ApiError('ERR_CANCELLED', 'the request was cancelled while it waited for a worker');
    }
    c.released = false;
    c.attempt = new AbortController();
    c.stalled = undefined;
    c.lastActivityAt = performance.now();
    const outputs = c.migrations > 0 && c.outputTokenIds !== null && c.outputTokenIds.length > 0 ? [...c.outputTokenIds] : undefined;
    c.stream = c.selection.client.generate(
      {
        requestId: c.engineRequestId,
        promptTokenIds,
        sampling: choiceSampling(this.plan, c.promptIndex, c.index - c.promptIndex * this.plan.n),
        prefixHitRate: c.selection.prefixHitRate,
        ...(outputs ? { outputTokenIds: outputs } : {}),
        ...(this.plan.grammar ? { grammar: this.plan.grammar } : {}),
      },
      AbortSignal.any([c.abort.signal, c.attempt.signal]),
    );
  }

  private async runChoice(c: Choice, onDelta: (d: ChoiceDelta) => void): Promise<void> {
    try {
      await this.runChoiceToEnd(c, onDelta);
    } finally {
      c.done = true;
    }
  }

  private async runChoiceToEnd(c: Choice, onDelta: (d: ChoiceDelta) => void): Promise<void> {
    let r = c.first!;
    while (!r.done) {
      if (this.handle(c, r.value, onDelta)) return;
      r = await this.next(c);
    }
    // The stream ended unfinished: aborted (client gone or server closing).
    c.finish = 'abort';
    const reasoning = c.processor.reasoning === null ? null : '';
    onDelta({ index: c.index, text: '', reasoning, logprobs: this.wantsLogprobs ? [] : null, finishReason: 'abort', stopReason: null });
  }

  // The choice's next delta; when its worker went away, the first delta of its migration.
  private async next(c: Choice): Promise<IteratorResult<GenerateDelta>> {
    try {
      return await this.receive(c);
    } catch (err) {
      return this.migrate(c, err);
    }
  }

  // The stream's next item; a stall (the attempt aborted for it) is the worker's failure.
  private async receive(c: Choice): Promise<IteratorResult<GenerateDelta>> {
    const r = await c.stream!.next();
    if (c.stalled) throw c.stalled;
    const d = r.done ? undefined : r.value;
    if (d && (d.error || d.finishReason === 'error')) {
      throw new RequestPlaneError(502, 'ERR_ENGINE_FAILED', `the engine failed: ${d.error?.code ?? 'ERR_ENGINE'}: ${d.error?.message ?? 'unknown error'}`);
    }
    c.lastActivityAt = performance.now();
    return r;
  }

  private mayMigrate(c: Choice, err: unknown): boolean {
    const outputs = c.outputTokenIds;
    const prompt = this.plan.prompts[c.promptIndex].length;
    const { limit = 0, maxSeqLen = Infinity } = this.deps.migration ?? {};
    return (
      workerGone(err) &&
      !c.abort.signal.aborted &&
      c.migrations < limit &&
      outputs !== null &&
      outputs.length < this.plan.maxTokens[c.promptIndex] &&
      prompt + outputs.length <= maxSeqLen
    );
  }

  // Choice c's worker failed with err: while the choice may migrate, its worker is reported and
  // released and another one takes the request (with the outputs so far) until one gives its
  // first delta: that counts as a migration. Else err stands: the client gets the error it would
  // have had without migration.
  private async migrate(c: Choice, err: unknown): Promise<IteratorResult<GenerateDelta>> {
    let cause = err;
    while (this.mayMigrate(c, cause)) {
      const from = c.selection!.worker.workerId;
      await this.close(c);
      this.deps.pool.reportUnavailable?.(from);
      c.migrations++;
      c.engineRequestId = `${c.requestId}-m${c.migrations}` as RequestId;
      try {
        await this.place(c);
        const first = await this.receive(c);
        if (!first.done) this.deps.pool.prefilled?.(c.engineRequestId);
        this.deps.metrics.migrations.inc();
        this.deps.log?.info(
          {
            requestId: c.requestId,
            engineRequestId: c.engineRequestId,
            fromWorker: from,
            toWorker: c.selection!.worker.workerId,
            outputTokens: c.outputTokenIds!.length,
            migration: c.migrations,
          },
          'request migrated: its worker went away mid-stream',
        );
        return first;
      } catch (next) {
        cause = next;
      }
    }
    if (cause !== err) {
      this.deps.log?.warn({ requestId: c.requestId, migrations: c.migrations, err: (cause as Error).message }, 'request migration failed');
    }
    throw err;
  }

  // Feeds one delta of choice c; true once the choice has finished.
  private handle(c: Choice, d: GenerateDelta, onDelta: (d: ChoiceDelta) => void): boolean {
    if (d.tokenIds.length > 0) {
      const now = performance.now();
      this.firstTokenAt ??= now;
      if (c.lastTokenAt > 0) this.deps.metrics.itl.observe((now - c.lastTokenAt) / 1000);
      c.lastTokenAt = now;
    }
    if (c.outputTokenIds !== null && d.tokenIds.length > 0) {
      c.outputTokenIds.push(...d.tokenIds);
      const cap = this.deps.migration?.maxSeqLen;
      if (cap !== undefined && this.plan.prompts[c.promptIndex].length + c.outputTokenIds.length > cap) c.outputTokenIds = null;
    }
    const out = c.processor.feed(d.tokenIds, d.finishReason === 'error' ? null : (d.finishReason ?? null)); // 'error' threw in receive()
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
      this.deps.pool.release(c.selection.worker.workerId, c.engineRequestId);
    }
  }
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}
