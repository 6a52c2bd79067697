// grammar-service.ts: structured outputs off the event loop. XGrammar runs on a thread of its own
// (grammar-thread.ts); this is its caller's side.
//
// - GrammarChecker (the frontend's): is a request's grammar valid? Parsed without a vocabulary,
//   so a bad schema, regex or EBNF is a 400 before any worker is used. Answers are remembered
//   (by specKey, LRU), so a repeated schema, good or bad, costs nothing.
// - GrammarMatchers (a worker's): one matcher per constrained request, on a thread holding the
//   model's vocabulary and the compiled grammars (cached by specKey). open() compiles (or finds)
//   the grammar and answers the first mask; accept() feeds each new output token and hands the
//   next mask to the callback given at open (the worker passes it on to the engine, which applies
//   it to the next sampled token).
// Stays true: a thread that XGrammar aborted in is replaced (its pending calls fail); a matcher
// thread's replacement loses the open matchers, whose requests get an error through their
// callbacks.
import { Worker } from 'node:worker_threads';
import { specKey, type GrammarSpec } from './spec.ts';

const THREAD_URL = new URL('./grammar-thread.ts', import.meta.url);

export class GrammarError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GrammarError';
  }
}

// A call that was waiting on a thread that went away: not an answer about its spec.
class ThreadLost extends GrammarError {}

interface Reply {
  id?: number;
  error?: string;
  mask?: Int32Array;
  compileMs?: number;
  reqId?: string;
  index?: number;
  done?: boolean;
  ready?: boolean;
  poisoned?: boolean;
}

// One thread and the calls waiting on it; restarted when XGrammar aborted in it.
class GrammarThread {
  private worker: Worker | undefined;
  private ready: Promise<void> | undefined;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (r: Reply) => void; reject: (e: Error) => void }>();

  constructor(
    private readonly setup: object,
    private readonly onEvent: (r: Reply) => void,
    private readonly onLost: (reason: string) => void,
  ) {}

  start(): Promise<void> {
    if (this.ready) return this.ready;
    // The thread is TypeScript: it registers tsx's loader in its own thread, then loads it.
    const boot = `import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(THREAD_URL.href)}); })`;
    const worker = new Worker(boot, { eval: true, workerData: this.setup });
    worker.unref();
    this.worker = worker;
    this.ready = new Promise<void>((resolve, reject) => {
      worker.once('message', (r: Reply) => {
        if (r.ready) resolve();
        else reject(new GrammarError(`XGrammar did not start: ${r.error ?? 'unknown error'}`));
      });
      worker.once('error', reject);
    });
    // A thread that did not start is not kept: the next call starts another.
    this.ready.catch(() => this.lose(worker, 'the grammar thread did not start'));
    worker.on('message', (r: Reply) => {
      if (r.ready !== undefined) return;
      if (r.id !== undefined) {
        const p = this.pending.get(r.id);
        this.pending.delete(r.id);
        p?.resolve(r);
      } else {
        this.onEvent(r);
      }
      if (r.poisoned) this.lose(worker, 'XGrammar aborted an earlier call');
    });
    worker.on('error', (err) => this.lose(worker, `the grammar thread failed: ${err.message}`));
    worker.on('exit', () => this.lose(worker, 'the grammar thread exited'));
    return this.ready;
  }

  async call(task: object): Promise<Reply> {
    await this.start();
    const id = this.nextId++;
    return new Promise<Reply>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker!.postMessage({ ...task, id });
    });
  }

  send(task: object): void {
    void this.start().then(() => this.worker?.postMessage(task), () => undefined);
  }

  async close(): Promise<void> {
    const w = this.worker;
    this.worker = undefined;
    this.ready = undefined;
    if (w) await w.terminate();
  }

  private lose(worker: Worker, reason: string): void {
    if (this.worker !== worker) return;
    this.worker = undefined;
    this.ready = undefined;
    void worker.terminate();
    for (const p of this.pending.values()) p.reject(new ThreadLost(reason));
    this.pending.clear();
    this.onLost(reason);
  }
}

export class GrammarChecker {
  private readonly thread = new GrammarThread({}, () => undefined, () => undefined);
  // The answers by specKey, least recently used first: true, or the reason it is refused (a
  // refusal costs a fresh thread when XGrammar aborted, so a repeated bad spec must not).
  private readonly answers = new Map<string, true | string>();

  constructor(private readonly cacheSize = 256) {}

  // Throws GrammarError naming what is wrong with the spec.
  async check(spec: GrammarSpec): Promise<void> {
    const key = specKey(spec);
    const known = this.answers.get(key);
    if (known !== undefined) {
      this.answers.delete(key);
      this.answers.set(key, known);
      if (known === true) return;
      throw new GrammarError(known);
    }
    let r: Reply;
    for (let attempt = 1; ; attempt++) {
      try {
        r = await this.thread.call({ op: 'check', spec });
        break;
      } catch (err) {
        if (!(err instanceof ThreadLost) || attempt === 3) throw err;
      }
    }
    this.answers.set(key, r.error ?? true);
    if (this.answers.size > this.cacheSize) this.answers.delete(this.answers.keys().next().value as string);
    if (r.error !== undefined) throw new GrammarError(r.error);
  }

  start(): Promise<void> {
    return this.thread.start();
  }

  close(): Promise<void> {
    return this.thread.close();
  }
}

// What a matcher says after the tokens of output `index - 1` (the mask of output `index`).
export type MaskEvent = { index: number; mask: Int32Array } | { index: number; done: true } | { index: number; error: string };

export interface MatcherSetup {
  modelDir: string;
  vocabSize: number; // the model's (logits width), not only the tokenizer's
  stopTokenIds: number[]; // the engine's EOS ids: the only tokens allowed once the grammar is complete
  cacheSize?: number; // compiled grammars kept, default 64
}

export class GrammarMatchers {
  private readonly thread: GrammarThread;
  private readonly listeners = new Map<string, (e: MaskEvent) => void>();

  constructor(setup: MatcherSetup) {
    this.thread = new GrammarThread(setup, (r) => this.onEvent(r), (reason) => this.onLost(reason));
  }

  start(): Promise<void> {
    return this.thread.start();
  }

  // The request's matcher, fed `prior` (outputs it already has): resolves with the mask of its
  // next output and the compile time (0 on a cache hit). Throws GrammarError.
  async open(reqId: string, spec: GrammarSpec, prior: readonly number[], onMask: (e: MaskEvent) => void): Promise<{ mask: Int32Array; compileMs: number }> {
    if (this.listeners.has(reqId)) throw new GrammarError(`request ${reqId} already has a matcher`);
    this.listeners.set(reqId, onMask);
    try {
      const r = await this.thread.call({ op: 'open', reqId, spec, prior: [...prior] });
      if (r.error !== undefined) throw new GrammarError(r.error);
      return { mask: r.mask!, compileMs: r.compileMs ?? 0 };
    } catch (err) {
      this.listeners.delete(reqId);
      throw err;
    }
  }

  // Feeds new output tokens; `index` = the request's output count after them.
  accept(reqId: string, index: number, tokens: readonly number[]): void {
    if (this.listeners.has(reqId)) this.thread.send({ op: 'accept', reqId, index, tokens: [...tokens] });
  }

  close(reqId: string): void {
    if (this.listeners.delete(reqId)) this.thread.send({ op: 'close', reqId });
  }

  async shutdown(): Promise<void> {
    this.listeners.clear();
    await this.thread.close();
  }

  private onEvent(r: Reply): void {
    const listener = r.reqId === undefined ? undefined : this.listeners.get(r.reqId);
    if (!listener || r.index === undefined) return;
    if (r.mask) listener({ index: r.index, mask: r.mask });
    else if (r.done) listener({ index: r.index, done: true });
    else listener({ index: r.index, error: r.error ?? 'structured output: the matcher failed' });
  }

  private onLost(reason: string): void {
    const listeners = [...this.listeners.values()];
    this.listeners.clear();
    for (const l of listeners) l({ index: -1, error: `structured output: ${reason}` });
  }
}
