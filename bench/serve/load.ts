// load.ts: one benchmark run: sends a dataset's sessions to an endpoint and records every request.
//
// Sessions start at their arrival times (the trace's, else the gamma arrival process of
// random.ts); a session's turns run one after another, turn k sending the whole history (every
// earlier prompt and output, as token ids) + its own tokens. At most maxConcurrency requests are
// in flight (a semaphore; a request waits for a slot after its arrival, and its TTFT counts from
// when it is sent, as vLLM). Stays true: every turn of every session ends as one record; turns
// after a failed one are recorded as failed without being sent, never dropped.
import type { Session } from './datasets.ts';
import { sendCompletion } from './client.ts';
import { arrivalTimesMs, seededRng } from './random.ts';
import type { RequestRecord } from './stats.ts';

export interface LoadOptions {
  url: string;
  model: string;
  requestRate: number; // requests/s; Infinity: all at once
  burstiness: number;
  maxConcurrency: number; // Infinity: no limit
  seed: number;
  onRecord?: (r: RequestRecord) => void;
}

export interface LoadResult {
  durationMs: number; // first arrival to last finish
  records: RequestRecord[];
}

class Semaphore {
  private waiting: (() => void)[] = [];
  constructor(private free: number) {}

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((resolve) => this.waiting.push(resolve));
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.free++;
    }
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

export async function runLoad(sessions: readonly Session[], o: LoadOptions): Promise<LoadResult> {
  const arrivals = arrivalTimesMs(seededRng(o.seed), sessions.length, o.requestRate, o.burstiness);
  const slots = new Semaphore(o.maxConcurrency);
  const records: RequestRecord[] = [];
  const record = (r: RequestRecord) => {
    records.push(r);
    o.onRecord?.(r);
  };
  const start = performance.now();

  await Promise.all(
    sessions.map(async (session, s) => {
      await sleep(start + (session.atMs ?? arrivals[s]!) - performance.now());
      let history: number[] = [];
      let failed: string | null = null;
      for (const [k, turn] of session.turns.entries()) {
        const prompt = history.concat(turn.tokens);
        const base = { session: s, turn: k, promptTokens: prompt.length, maxTokens: turn.outputLen };
        if (failed !== null) {
          record({ ...base, startMs: performance.now() - start, ttftMs: null, itlMs: [], e2eMs: null, outputTokens: 0, error: failed });
          continue;
        }
        const more = k + 1 < session.turns.length;
        const { startMs, timings } = await slots.run(async () => {
          const startMs = performance.now() - start;
          return { startMs, timings: await sendCompletion(o.url, o.model, prompt, turn.outputLen, more) };
        });
        const { outputIds, ...rest } = timings;
        record({ ...base, startMs, ...rest });
        if (timings.error !== null) failed = `not sent: turn ${k} of its conversation failed`;
        history = prompt.concat(outputIds);
      }
    }),
  );
  return { durationMs: performance.now() - start, records };
}
