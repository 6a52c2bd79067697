// encoder-pool.ts: tokenizing off the event loop. A long text (a chat prompt or a completion
// prompt) is encoded on one of a few worker threads, each holding its own copy of the model's
// tokenizer (encoder-worker.ts), so one large request does not stall every other request's
// stream on the frontend's one event loop; short texts, the usual case, are encoded inline,
// where a thread hop would cost more than the encoding.
//
// Large request bodies are decoded and parsed there too (parseJson: UTF-8 check, JSON.parse,
// then the prompt's size bound of minTokens() when a screen is given), so a body whose prompt
// cannot fit the context never comes back to the event loop, and another one comes back parsed.
//
// Before any encoding, minTokens() bounds the token count from below without tokenizing (a
// token covers at most maxTokenBytes UTF-8 bytes of the text), so a text that cannot fit the
// context is refused at once, whatever its size.
// Stays true: encode() gives the ids TextTokenizer.encode gives for the same text and options
// (the threads load the same tokenizer files); results come back in any order, each to its caller.
// Settings: threads (default min(4, cores - 1), at least 1), inlineChars (default 16384).
import { isUtf8 } from 'node:buffer';
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import type { EncodeOptions, TextTokenizer } from './tokenizer.js';

const WORKER_URL = new URL('./encoder-worker.ts', import.meta.url);

// A thread's answer (encoder-worker.ts).
interface Reply {
  id: number;
  ids?: Int32Array;
  value?: unknown;
  tooLong?: PromptSize;
  error?: string;
  code?: 'ERR_INVALID_UTF8' | 'ERR_INVALID_JSON';
}

interface Pending {
  resolve: (r: Reply) => void;
  reject: (err: Error) => void;
}

// parseJson's screen: where the body's prompt is (a chat's messages, a completion's prompt) and
// the context, in tokens.
export interface PromptScreen {
  kind: 'chat' | 'completions';
  maxModelLen: number;
}

// A prompt whose UTF-8 length alone shows at least `atLeast` tokens.
export interface PromptSize {
  param: string;
  atLeast: number;
  bytes: number;
}

// parseJson found a prompt that cannot fit the context.
export class PromptTooLongError extends Error {
  constructor(readonly size: PromptSize) {
    super(`${size.param} is at least ${size.atLeast} tokens`);
    this.name = 'PromptTooLongError';
  }
}

// A body that is not UTF-8 or not JSON (parseJson); code says which.
export class BodyParseError extends Error {
  constructor(
    readonly code: 'ERR_INVALID_UTF8' | 'ERR_INVALID_JSON',
    message: string,
  ) {
    super(message);
    this.name = 'BodyParseError';
  }
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
    const r = await this.run({ kind: 'encode', text, addSpecialTokens: options.addSpecialTokens });
    if (!r.ids) throw new Error(`encoder thread: ${r.error}`);
    return Array.from(r.ids);
  }

  // The JSON value of a body (bytes): on a thread when it is larger than inlineChars and the
  // pool has threads, else inline. Throws BodyParseError for bytes that are not UTF-8 or JSON,
  // and, with a screen, PromptTooLongError for a prompt whose size alone cannot fit it.
  async parseJson(bytes: Buffer, screen?: PromptScreen): Promise<unknown> {
    if (bytes.length <= this.inlineChars || this.workers.length === 0) {
      const value = parseJsonBytes(bytes);
      const tooLong = screen && screenPrompt(value, screen, this.maxTokenBytes);
      if (tooLong) throw new PromptTooLongError(tooLong);
      return value;
    }
    // A buffer that owns its whole ArrayBuffer moves to the thread without a copy.
    const own = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.buffer instanceof ArrayBuffer;
    const r = await this.run({ kind: 'json', bytes, screen, maxTokenBytes: this.maxTokenBytes }, own ? [bytes.buffer as ArrayBuffer] : []);
    if (r.code) throw new BodyParseError(r.code, r.error ?? 'unreadable body');
    if (r.tooLong) throw new PromptTooLongError(r.tooLong);
    if (r.error !== undefined) throw new Error(`encoder thread: ${r.error}`);
    return r.value;
  }

  private async run(task: Record<string, unknown>, transfer: ArrayBuffer[] = []): Promise<Reply> {
    if (this.closed) throw new Error('the encoder pool is closed');
    const w = this.workers.reduce((a, b) => (b.load < a.load ? b : a));
    const id = this.nextId++;
    w.load++;
    try {
      return await new Promise<Reply>((resolve, reject) => {
        this.pending.set(id, { resolve, reject });
        w.worker.postMessage({ id, ...task }, transfer);
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
        worker.on('message', (r: Reply) => {
          const p = this.pending.get(r.id);
          if (!p) return;
          this.pending.delete(r.id);
          p.resolve(r);
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

// UTF-8 first (JSON.parse would silently turn bad bytes into U+FFFD), then JSON.
export function parseJsonBytes(bytes: Uint8Array): unknown {
  if (!isUtf8(bytes)) throw new BodyParseError('ERR_INVALID_UTF8', 'the request body is not valid UTF-8');
  try {
    return JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch (err) {
    throw new BodyParseError('ERR_INVALID_JSON', `the request body is not valid JSON: ${(err as Error).message}`);
  }
}

// The first prompt of a parsed body whose UTF-8 length alone means at least screen.maxModelLen
// tokens (a token covers at most maxTokenBytes bytes), or undefined. A chat's prompt holds every
// message's text; a completion's, each text prompt of its batch (token-id prompts are counted
// exactly later). Shapes it does not know are left to the schema.
export function screenPrompt(value: unknown, screen: PromptScreen, maxTokenBytes: number): PromptSize | undefined {
  const size = (param: string, bytes: number) => {
    const atLeast = Math.ceil(bytes / maxTokenBytes);
    return atLeast >= screen.maxModelLen ? { param, atLeast, bytes } : undefined;
  };
  const body = value as { messages?: unknown; prompt?: unknown } | null;
  if (typeof body !== 'object' || body === null) return undefined;
  if (screen.kind === 'chat') {
    if (!Array.isArray(body.messages)) return undefined;
    let bytes = 0;
    for (const m of body.messages as { content?: unknown }[]) {
      const content = m?.content;
      if (typeof content === 'string') bytes += Buffer.byteLength(content);
      else if (Array.isArray(content)) for (const part of content as { text?: unknown }[]) if (typeof part?.text === 'string') bytes += Buffer.byteLength(part.text);
    }
    return size('messages', bytes);
  }
  const prompts = typeof body.prompt === 'string' || (Array.isArray(body.prompt) && typeof body.prompt[0] === 'number') ? [body.prompt] : body.prompt;
  if (!Array.isArray(prompts)) return undefined;
  for (let i = 0; i < prompts.length; i++) {
    const p = prompts[i] as unknown;
    const param = prompts.length > 1 ? `prompt[${i}]` : 'prompt';
    const found = typeof p === 'string' ? size(param, Buffer.byteLength(p)) : undefined;
    if (found) return found;
  }
  return undefined;
}
