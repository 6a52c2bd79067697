// encoder-pool.ts: tokenizing off the event loop. A long text (a chat prompt or a completion
// prompt) is encoded on one of a few worker threads, each holding its own copy of the model's
// tokenizer (encoder-worker.ts), so one large request does not stall every other request's
// stream on the frontend's one event loop; short texts, the usual case, are encoded inline,
// where a thread hop would cost more than the encoding.
//
// Before any encoding, minTokens() bounds the token count from below without tokenizing (a
// token covers at most maxTokenBytes UTF-8 bytes of the text), so a text that cannot fit the
// context is refused at once, whatever its size.
// Stays true: encode() gives the ids TextTokenizer.encode gives for the same text and options
// (the threads load the same tokenizer files); results come back in any order, each to its caller.
// Settings: threads (default min(4, cores - 1), at least 1), inlineChars (default 16384).
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import type { EncodeOptions, TextTokenizer } from './tokenizer.js';

const WORKER_URL = new URL('./encoder-worker.ts', import.meta.url);

interface Pending {
  resolve: (ids: number[]) => void;
  reject: (err: Error) => void;
}

export interface EncoderPoolOptions {
  threads?: number;
  inlineChars?: number;
}

export class EncoderPool {
  readonly maxTokenBytes: number;
  private readonly workers: { worker: Worker; load: number }[] = [];
  private readonly pending = new Map<number, Pending>();
  private readonly inlineChars: number;
  private nextId = 0;
  private closed = false;

  private constructor(
    private readonly tokenizer: TextTokenizer,
    inlineChars: number,
  ) {
    this.inlineChars = inlineChars;
    let max = 1;
    for (let id = 0; id < tokenizer.vocabSize; id++) {
      const t = tokenizer.idToToken(id);
      if (t) max = Math.max(max, Buffer.byteLength(t));
    }
    this.maxTokenBytes = max;
  }

  // Starts the threads and waits until each has loaded the tokenizer of modelDir.
  static async start(tokenizer: TextTokenizer, modelDir: string, opts: EncoderPoolOptions = {}): Promise<EncoderPool> {
    const pool = new EncoderPool(tokenizer, opts.inlineChars ?? 16384);
    const cores = os.availableParallelism?.() ?? os.cpus().length;
    const threads = Math.max(1, opts.threads ?? Math.min(4, cores - 1));
    await Promise.all(Array.from({ length: threads }, () => pool.spawn(modelDir)));
    return pool;
  }

  // No threads: everything is encoded inline (tests and tools that build the app in-process).
  static inline(tokenizer: TextTokenizer): EncoderPool {
    return new EncoderPool(tokenizer, Infinity);
  }

  // A lower bound on the tokens of `text`, from its UTF-8 length alone.
  minTokens(text: string): number {
    return Math.ceil(Buffer.byteLength(text) / this.maxTokenBytes);
  }

  async encode(text: string, options: EncodeOptions): Promise<number[]> {
    if (text.length <= this.inlineChars || this.workers.length === 0) return this.tokenizer.encode(text, options);
    if (this.closed) throw new Error('the encoder pool is closed');
    const w = this.workers.reduce((a, b) => (b.load < a.load ? b : a));
    const id = this.nextId++;
    w.load++;
    try {
      return await new Promise<number[]>((resolve, reject) => {
        this.pending.set(id, { resolve, reject });
        w.worker.postMessage({ id, text, addSpecialTokens: options.addSpecialTokens });
      });
    } finally {
      w.load--;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.workers.map((w) => w.worker.terminate()));
    for (const p of this.pending.values()) p.reject(new Error('the encoder pool closed'));
    this.pending.clear();
  }

  private spawn(modelDir: string): Promise<void> {
    // The worker is TypeScript: it registers tsx's loader in its own thread, then loads it.
    const boot = `import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(WORKER_URL.href)}); })`;
    const worker = new Worker(boot, { eval: true, workerData: { modelDir } });
    worker.unref();
    return new Promise<void>((resolve, reject) => {
      worker.once('error', reject);
      worker.once('message', (m: { ready?: boolean; error?: string }) => {
        worker.off('error', reject);
        if (!m.ready) return reject(new Error(`encoder thread: ${m.error ?? 'did not start'}`));
        worker.on('message', (r: { id: number; ids?: Int32Array; error?: string }) => {
          const p = this.pending.get(r.id);
          if (!p) return;
          this.pending.delete(r.id);
          if (r.ids) p.resolve(Array.from(r.ids));
          else p.reject(new Error(`encoder thread: ${r.error}`));
        });
        worker.on('error', (err) => {
          // A thread that died takes its requests with it; the others keep serving.
          for (const [id, p] of this.pending) {
            this.pending.delete(id);
            p.reject(err);
          }
          const i = this.workers.findIndex((x) => x.worker === worker);
          if (i >= 0) this.workers.splice(i, 1);
        });
        this.workers.push({ worker, load: 0 });
        resolve();
      });
    });
  }
}
