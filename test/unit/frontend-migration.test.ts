// Request migration in the frontend's Generation, against scripted workers (fake request-plane
// clients): what a migrated choice resends, that the client's output is the undisturbed one, that
// every selection is released once, and each way a migration ends in the original error (the
// limit, --migration-max-seq-len, a refusal, no worker left, migration off); and that a choice
// beyond those in flight waits for an earlier one's worker to be released.
import { beforeAll, describe, expect, it } from 'vitest';
import { Generation, MAX_CHOICES_IN_FLIGHT, type GenerationDeps, type MigrationSettings } from '../../ts/frontend/generation.ts';
import { FrontendMetrics } from '../../ts/frontend/metrics.ts';
import { planGeneration } from '../../ts/frontend/request-params.ts';
import type { WorkerPool, WorkerSelection } from '../../ts/frontend/worker-pool.ts';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { loadTokenizer, type TextTokenizer } from '../../ts/processor/index.ts';
import { WORKER_DRAINING_CODE, type GenerateDelta, type GenerateRequest, type RequestId, type WorkerId, type WorkerInfo } from '../../ts/protocol/index.ts';
import { RequestPlaneError } from '../../ts/runtime/request-client.ts';
import { ApiError } from '../../ts/frontend/errors.ts';

let tokenizer: TextTokenizer;

beforeAll(async () => {
  tokenizer = await loadTokenizer((await ensureModel('tiny-llama')).dir);
});

const PROMPT = [1000, 1001, 1002, 1003];
const MAX_TOKENS = 12;
const TOKENS = Array.from({ length: MAX_TOKENS }, (_, i) => 2000 + 37 * i); // the undisturbed output

const gone = (w: string) => new RequestPlaneError(503, 'ERR_WORKER_UNAVAILABLE', `worker at ${w} is unavailable: the worker closed the connection`);

// A worker's script: how many tokens of the rest it streams (2 per delta) before its connection
// drops; 'all' streams to the end; 'refuse' fails the request up front.
type Script = number | 'all' | 'refuse';

// Worker w0 may fall silent for pauseMs after its first delta; every worker's health probe
// (load) answers as `load` does (default: alive).
interface PoolOptions {
  pauseMs?: number;
  load?: () => Promise<unknown>;
}

class ScriptedPool implements WorkerPool {
  readonly events: string[] = [];
  readonly requests: GenerateRequest[] = [];
  private next = 0;
  constructor(
    private readonly scripts: Script[],
    private readonly opts: PoolOptions = {},
  ) {}

  workers(): WorkerInfo[] {
    return [];
  }
  ready(): boolean {
    return true;
  }
  async select(_prompt: readonly number[], requestId: RequestId): Promise<WorkerSelection> {
    if (this.next >= this.scripts.length) throw new ApiError('ERR_NO_WORKER', 'no worker is serving this model');
    const name = `w${this.next}`;
    const script = this.scripts[this.next++]!;
    this.events.push(`select ${name} ${requestId}`);
    const pauseMs = name === 'w0' ? (this.opts.pauseMs ?? 0) : 0;
    const client = {
      load: this.opts.load ?? (async () => ({})),
      generate: (body: GenerateRequest, signal?: AbortSignal) => {
        this.requests.push(body);
        return (async function* (): AsyncGenerator<GenerateDelta> {
          if (script === 'refuse') throw new RequestPlaneError(400, 'ERR_REQUEST_TOO_LONG', 'too long');
          const done = body.outputTokenIds?.length ?? 0;
          const rest = TOKENS.slice(done);
          const n = script === 'all' ? rest.length : script;
          yield { requestId: body.requestId, tokenIds: [], numPromptTokens: PROMPT.length, numCachedTokens: 0 };
          if (pauseMs > 0) {
            await new Promise((r) => setTimeout(r, pauseMs));
            if (signal?.aborted) throw gone(name); // the stall watchdog gave up on it
          }
          for (let i = 0; i < n; i += 2) {
            const ids = rest.slice(i, Math.min(i + 2, n));
            const last = done + i + ids.length >= MAX_TOKENS;
            yield { requestId: body.requestId, tokenIds: ids, numPromptTokens: PROMPT.length, numCachedTokens: 0, ...(last ? { finishReason: 'length' as const } : {}) };
            if (last) return;
          }
          throw gone(name);
        })();
      },
    };
    return { worker: { workerId: name as WorkerId } as WorkerInfo, client: client as unknown as WorkerSelection['client'], prefixHitRate: 0 };
  }
  release(workerId: WorkerId, requestId: RequestId): void {
    this.events.push(`release ${workerId} ${requestId}`);
  }
  reportUnavailable(workerId: WorkerId): void {
    this.events.push(`unavailable ${workerId}`);
  }
  async loads() {
    return [];
  }
}

async function run(scripts: Script[], migration: MigrationSettings | undefined, poolOptions: PoolOptions = {}, stallTimeoutMs = 0, n = 1) {
  const pool = new ScriptedPool(scripts, poolOptions);
  const metrics = new FrontendMetrics('m');
  const logs: string[] = [];
  const log = { info: (_o: unknown, msg: string) => logs.push(msg), warn: (_o: unknown, msg: string) => logs.push(msg) };
  const deps: GenerationDeps = { pool, tokenizer, metrics, migration, stallTimeoutMs, log: log as unknown as GenerationDeps['log'] };
  const plan = planGeneration({ max_tokens: MAX_TOKENS, temperature: 0, ignore_eos: true, stream: true, n }, {
    prompts: [PROMPT],
    maxModelLen: 64,
    maxTokens: MAX_TOKENS,
    defaultMaxTokens: 16,
    logprobs: undefined,
    promptWord: 'prompt',
  });
  const gen = new Generation(deps, plan, 'cmpl-x');
  let text = '';
  let finish: string | null = null;
  let error: string | undefined;
  try {
    await gen.start();
    await gen.run((d) => {
      text += d.text;
      finish = d.finishReason ?? finish;
    });
  } catch (err) {
    error = (err as Error).message;
  }
  const counter = (await metrics.registry.getSingleMetricAsString('kvserve:request_migrations_total')).match(/\} (\d+)$/m);
  return { pool, gen, text, finish, error, logs, migrations: Number(counter?.[1]) };
}

describe('choices beyond those in flight (Generation)', () => {
  it('a choice that ends frees its worker before its lane starts the next choice, each once', async () => {
    const n = MAX_CHOICES_IN_FLIGHT + 1;
    const r = await run(Array<Script>(n).fill('all'), undefined, {}, 0, n);
    expect(r.error).toBeUndefined();
    const later = r.pool.events.indexOf(`select w${n - 1} cmpl-x-${n - 1}`);
    expect(later).toBeGreaterThan(0);
    expect(r.pool.events.slice(0, later).filter((e) => e.startsWith('release')).length).toBeGreaterThan(0);
    expect(r.pool.events.filter((e) => e.startsWith('release'))).toHaveLength(n);
  });
});

describe('request migration (Generation)', () => {
  it('resends the prompt with the outputs so far to another worker; the client sees the undisturbed output', async () => {
    const r = await run([4, 'all'], { limit: 3 });
    expect(r.error).toBeUndefined();
    expect(r.finish).toBe('length');
    expect(r.text).toBe(tokenizer.decode(TOKENS, { skipSpecialTokens: true }));
    expect(r.gen.usage()).toEqual({ prompt_tokens: 4, completion_tokens: MAX_TOKENS, total_tokens: 4 + MAX_TOKENS });
    expect(r.pool.requests[1]).toMatchObject({ requestId: 'cmpl-x-0-m1', promptTokenIds: PROMPT, outputTokenIds: TOKENS.slice(0, 4) });
    expect(r.pool.requests[1]!.sampling).toEqual(r.pool.requests[0]!.sampling); // max_tokens stays the total
    expect(r.pool.requests[0]!.outputTokenIds).toBeUndefined();
    expect(r.pool.events).toEqual(['select w0 cmpl-x-0', 'release w0 cmpl-x-0', 'unavailable w0', 'select w1 cmpl-x-0-m1', 'release w1 cmpl-x-0-m1']);
    expect(r.migrations).toBe(1);
    expect(r.logs).toEqual(['request migrated: its worker went away mid-stream']);
  });

  it('migrates again from the second worker, with everything generated so far', async () => {
    const r = await run([2, 4, 'all'], { limit: 3 });
    expect(r.error).toBeUndefined();
    expect(r.text).toBe(tokenizer.decode(TOKENS, { skipSpecialTokens: true }));
    expect(r.pool.requests.map((q) => q.outputTokenIds?.length ?? 0)).toEqual([0, 2, 6]);
    expect(r.migrations).toBe(2);
  });

  it('stops at --migration-limit with the error the client had without migration, each worker released once', async () => {
    const r = await run([2, 2, 2, 'all'], { limit: 2 });
    expect(r.error).toBe(gone('w2').message);
    expect(r.pool.events.filter((e) => e.startsWith('select'))).toHaveLength(3);
    expect(r.pool.events.filter((e) => e.startsWith('release'))).toEqual(['release w0 cmpl-x-0', 'release w1 cmpl-x-0-m1', 'release w2 cmpl-x-0-m2']);
  });

  it('does not migrate past --migration-max-seq-len (prompt + output tokens)', async () => {
    const over = await run([4, 'all'], { limit: 3, maxSeqLen: PROMPT.length + 3 });
    expect(over.error).toBe(gone('w0').message);
    expect(over.migrations).toBe(0);
    const within = await run([4, 'all'], { limit: 3, maxSeqLen: PROMPT.length + 4 });
    expect(within.error).toBeUndefined();
  });

  it('ends in the original error when the new worker refuses, or none is left; with limit 0 it never migrates', async () => {
    const refused = await run([4, 'refuse'], { limit: 3 });
    expect(refused.error).toBe(gone('w0').message);
    expect(refused.logs).toContain('request migration failed');
    expect(refused.pool.events.filter((e) => e.startsWith('release'))).toHaveLength(2);
    const none = await run([4], { limit: 3 });
    expect(none.error).toBe(gone('w0').message);
    const off = await run([4, 'all'], { limit: 0 });
    expect(off.error).toBe(gone('w0').message);
    expect(off.pool.requests).toHaveLength(1);
    expect(off.migrations).toBe(0);
  });

  it('--stall-timeout-s: a silent worker that does not answer its probe is given up on; one that answers it is draining is waited for', async () => {
    const silent = await run(['all', 'all'], { limit: 3 }, { pauseMs: 800, load: async () => Promise.reject(gone('w0')) }, 200);
    expect(silent.error).toBeUndefined();
    expect(silent.migrations).toBe(1);
    expect(silent.pool.events).toContain('select w1 cmpl-x-0-m1');
    const draining = await run(['all', 'all'], { limit: 3 }, { pauseMs: 800, load: async () => Promise.reject(new RequestPlaneError(503, WORKER_DRAINING_CODE, 'draining')) }, 200);
    expect(draining.error).toBeUndefined();
    expect(draining.migrations).toBe(0);
    expect(draining.text).toBe(tokenizer.decode(TOKENS, { skipSpecialTokens: true }));
    expect(draining.pool.events.filter((e) => e.startsWith('select'))).toEqual(['select w0 cmpl-x-0']);
  });
});
