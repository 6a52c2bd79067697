// A resumed request through the addon (request migration: outputTokenIds): started with the
// first k tokens of an undisturbed run as its outputs, it gives that run's tokens from step k on,
// greedy and seeded (temperature 1 over the whole vocabulary, where any other draw position or
// any other bit in the logits shows), with presence/frequency/repetition penalties and
// min_tokens, and finishes with 'length' at the original max_tokens. Token ids and logprobs are
// compared exactly: the file runs on the reference CPU kernels, which compute a token's KV and
// logits with the same bits in a prefill (how a resumed request computes its first k outputs) as
// in a decode step (how the undisturbed run did). The avx512-bf16 path differs there in the last
// bits (logprobs up to 2e-3 apart on this model, 0.02 on tiny-llama), which can turn a flat
// seeded draw, or a greedy near-tie.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine, collect, loadAddon, nativeEngineOptions, normaliseSampling, type SamplingOptions } from '../../ts/native/index.ts';
import { ensureModel } from '../../ts/modelgen/index.ts';

// Read once per process, when the first engine starts (this file runs in a process of its own).
process.env.KVSERVE_CPU_KERNELS = 'reference';

let modelDir: string;
const engines: Engine[] = [];

function open() {
  const e = new Engine({ modelDir, numThreads: 2, blockSize: 4, maxModelLen: 256 });
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

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
}

const MAX_TOKENS = 40;

beforeAll(async () => {
  modelDir = (await ensureModel('test-llama-gqa-llama3rope')).dir;
});

afterAll(async () => {
  for (const e of engines) await e.close();
});

// The undisturbed run on one engine, then from each k a resumed request on another engine (a
// worker that never saw it) and on the same one (its prefix cache holds the tokens).
async function checkResumes(sampling: SamplingOptions, ks: number[]): Promise<void> {
  const p = prompt(3, 21);
  const a = open();
  const b = open();
  const full = await collect(a.generate('full', p, { ...sampling, maxTokens: MAX_TOKENS, logprobs: 2 }));
  expect(full.tokenIds.length).toBe(MAX_TOKENS);
  expect(full.finishReason).toBe('length');
  for (const k of ks) {
    for (const [name, e] of [
      ['other', b],
      ['same', a],
    ] as const) {
      const outputTokenIds = full.tokenIds.slice(0, k);
      const r = await collect(e.generate(`resume-${name}-${k}`, p, { ...sampling, maxTokens: MAX_TOKENS, logprobs: 2 }, undefined, { outputTokenIds }));
      expect(r.tokenIds, `${name} engine, resumed at ${k}`).toEqual(full.tokenIds.slice(k));
      expect(r.finishReason).toBe('length');
      expect(r.last?.numPromptTokens).toBe(p.length);
      expect(r.logprobs).toEqual(full.logprobs.slice(k));
    }
  }
}

describe('a resumed request (outputTokenIds)', () => {
  it('greedy: continues exactly as the undisturbed run, to the same max_tokens', async () => {
    await checkResumes({ temperature: 0, ignoreEos: true }, [1, 8, 13, 39]);
  });

  it('greedy with presence, frequency and repetition penalties: they count the resumed outputs', async () => {
    await checkResumes({ temperature: 0, ignoreEos: true, presencePenalty: 1.5, frequencyPenalty: 0.8, repetitionPenalty: 1.3 }, [5, 22]);
  });

  it('seeded sampling continues from the right draw, with penalties and min_tokens', async () => {
    await checkResumes({ temperature: 1, seed: 77, presencePenalty: 0.7, frequencyPenalty: 0.4, minTokens: 30 }, [1, 9, 31]);
  });

  it('is refused with as many outputs as max_tokens, or an output outside the vocabulary', () => {
    const e = open();
    const p = prompt(4, 8);
    expect(code(() => e.generate('full', p, { maxTokens: 3 }, undefined, { outputTokenIds: [1, 2, 3] }))).toBe('ERR_INVALID_ARGUMENT');
    expect(code(() => e.generate('vocab', p, { maxTokens: 3 }, undefined, { outputTokenIds: [999_999_999] }))).toBe('ERR_REQUEST_INVALID');
    // The engine's own check, past the TS one: the same limit, the same refusal.
    const native = new (loadAddon().Engine)(nativeEngineOptions({ modelDir, numThreads: 1, blockSize: 4, maxModelLen: 256 }), () => undefined);
    try {
      const req = { ...normaliseSampling('n', p, { maxTokens: 3 }), outputTokenIds: Int32Array.from([1, 2, 3]) };
      expect(code(() => native.addRequest(req))).toBe('ERR_REQUEST_INVALID');
    } finally {
      void native.close();
    }
  });

  it('counts the outputs against the same context as the request it continues', () => {
    const e = open();
    const p = prompt(5, 200);
    // 200 + 56 = 256 = max model len: accepted with or without outputs; one more is not.
    const ac = new AbortController();
    expect(code(() => e.generate('fits', p, { maxTokens: 56 }, ac.signal, { outputTokenIds: [5, 6, 7] }))).toBeUndefined();
    ac.abort();
    expect(code(() => e.generate('long', p, { maxTokens: 57 }, undefined, { outputTokenIds: [5, 6, 7] }))).toBe('ERR_REQUEST_TOO_LONG');
  });
});

