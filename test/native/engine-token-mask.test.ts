// Structured output through the addon: a constrained request (generate with remote.tokenMask)
// samples only what its token masks allow, its next masks set from each output as the worker
// does (setTokenMask), while unconstrained requests beside it keep their tokens; a mask that
// never comes ends the request with 'error' after tokenMaskTimeoutMs; wrong lengths are clear
// errors. Equivalences are exact (greedy tokens), never timing.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine, NativeError, collect, type EngineOptions, type RequestOutput } from '../../ts/native/index.ts';
import { ensureModel } from '../../ts/modelgen/index.ts';

let modelDir: string;
const engines: Engine[] = [];

function open(opts: Partial<EngineOptions> = {}) {
  const e = new Engine({ modelDir, numThreads: 2, blockSize: 4, maxModelLen: 256, ...opts });
  engines.push(e);
  return e;
}

function prompt(seed: number, len: number): number[] {
  let x = seed * 2654435761 + 1;
  return Array.from({ length: len }, () => {
    x = (x * 1103515245 + 12345) >>> 0;
    return 1000 + (x % 20000);
  });
}

const greedy = { temperature: 0, ignoreEos: true } as const;

// XGrammar's layout: bit b of word w allows token 32 * w + b.
function maskOf(e: Engine, allowed: number[]): Int32Array {
  const m = new Int32Array(e.info.tokenMaskWords);
  for (const t of allowed) m[t >>> 5] |= 1 << (t & 31);
  return m;
}

function thrown(fn: () => unknown): NativeError {
  try {
    fn();
  } catch (err) {
    return err as NativeError;
  }
  throw new Error('did not throw');
}

// Consumes a constrained request's stream, setting the mask of output i + 1 (forced[i + 1] alone)
// as soon as output i arrives.
async function forced(e: Engine, id: string, stream: AsyncIterable<RequestOutput>, seq: number[]) {
  const tokenIds: number[] = [];
  let last: RequestOutput | undefined;
  for await (const o of stream) {
    tokenIds.push(...o.newTokenIds);
    last = o;
    if (!o.finishReason && tokenIds.length < seq.length) {
      expect(e.setTokenMask(id, tokenIds.length, maskOf(e, [seq[tokenIds.length]]))).toBe(true);
    }
  }
  return { tokenIds, last };
}

beforeAll(async () => {
  modelDir = (await ensureModel('test-llama-gqa-llama3rope')).dir;
});

afterAll(async () => {
  for (const e of engines) await e.close();
});

describe('engine token masks', () => {
  it('reports the mask length: ceil(vocabSize / 32) int32 words of the logits width', () => {
    const e = open();
    expect(e.info.vocabSize).toBe(e.info.model.vocabSize);
    expect(e.info.tokenMaskWords).toBe(Math.ceil(e.info.vocabSize / 32));
    const m = e.metrics();
    expect(m.tokenMaskWaitSeconds).toBe(0);
    expect(m.tokenMaskWaitSteps).toBe(0);
  });

  it('gives a greedy constrained request exactly the sequence its masks allow, its neighbours their own tokens', async () => {
    const pa = prompt(1, 21);
    const pb = prompt(2, 9);
    const alone = open();
    const wantA = (await collect(alone.generate('a', pa, { ...greedy, maxTokens: 10 }))).tokenIds;
    const wantB = (await collect(alone.generate('b', pb, { ...greedy, maxTokens: 10 }))).tokenIds;
    const free = (await collect(alone.generate('c', prompt(3, 14), { ...greedy, maxTokens: 6 }))).tokenIds;
    const seq = [17, 31999, 1234, 5, 20000, 77];
    expect(free).not.toEqual(seq);

    const e = open();
    const a = collect(e.generate('a', pa, { ...greedy, maxTokens: 10 }));
    const c = forced(e, 'c', e.generate('c', prompt(3, 14), { ...greedy, maxTokens: 6 }, undefined, { tokenMask: maskOf(e, [seq[0]]) }), seq);
    const b = collect(e.generate('b', pb, { ...greedy, maxTokens: 10 }));
    const [ra, rc, rb] = await Promise.all([a, c, b]);
    expect(rc.tokenIds).toEqual(seq);
    expect(rc.last?.finishReason).toBe('length');
    expect(ra.tokenIds).toEqual(wantA);
    expect(rb.tokenIds).toEqual(wantB);
    expect(e.setTokenMask('c', 6, maskOf(e, [1]))).toBe(false); // finished
    expect(e.setTokenMask('nobody', 0, maskOf(e, [1]))).toBe(false);
    expect(typeof e.metrics().tokenMaskWaitSeconds).toBe('number');
  });

  it('finishes a request whose next mask never comes with an error, after tokenMaskTimeoutMs', async () => {
    const e = open({ tokenMaskTimeoutMs: 50 });
    const r = await collect(e.generate('t', prompt(4, 7), { ...greedy, maxTokens: 5 }, undefined, { tokenMask: maskOf(e, [42]) }));
    expect(r.tokenIds).toEqual([42]);
    expect(r.finishReason).toBe('error');
    expect(r.last?.error).toBe('structured output: no token mask for output 1 within 50 ms');
    expect(e.metrics().tokenMaskWaitSteps).toBe(1);
    expect(e.metrics().tokenMaskWaitSeconds).toBeGreaterThan(0);
  });

  it('refuses masks of the wrong length clearly, at the request and at setTokenMask', async () => {
    const e = open({ tokenMaskTimeoutMs: 60000 });
    const words = e.info.tokenMaskWords;
    const bad = thrown(() => e.generate('x', prompt(5, 5), greedy, undefined, { tokenMask: new Int32Array(words - 1) }));
    expect(bad).toBeInstanceOf(NativeError);
    expect(bad.code).toBe('ERR_REQUEST_INVALID');
    expect(bad.message).toBe(
      `the token mask has ${words - 1} words; this model's vocabulary of ${e.info.vocabSize} tokens needs ${words} (ceil(vocab_size / 32))`,
    );
    const notTyped = thrown(() => e.generate('y', prompt(5, 5), greedy, undefined, { tokenMask: [1, 2] as unknown as Int32Array }));
    expect(notTyped.code).toBe('ERR_INVALID_ARGUMENT');

    // A live constrained request: a wrong-length mask throws and is not stored; the request then
    // waits for its mask until aborted.
    const ac = new AbortController();
    const stream = e.generate('z', prompt(6, 5), { ...greedy, maxTokens: 4 }, ac.signal, { tokenMask: maskOf(e, [3]) });
    const long = thrown(() => e.setTokenMask('z', 1, new Int32Array(words + 1)));
    expect(long.code).toBe('ERR_REQUEST_INVALID');
    expect(long.message).toContain(`has ${words + 1} words`);
    expect(thrown(() => e.setTokenMask('z', -1, maskOf(e, [1]))).code).toBe('ERR_INVALID_ARGUMENT');
    const seen: number[] = [];
    for await (const o of stream) {
      seen.push(...o.newTokenIds);
      if (o.newTokenIds.length > 0 && !o.finishReason) ac.abort(); // the step now waits for output 1's mask
      if (o.finishReason) expect(o.finishReason).toBe('abort');
    }
    expect(seen).toEqual([3]);
  });
});
