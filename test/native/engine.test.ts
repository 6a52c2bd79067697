// The engine through the addon: continuous batching, prefix caching, preemption, sampling
// seeds, aborts, KV events and metrics. Equivalences are exact (greedy tokens), never timing.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine, Model, NativeError, collect, loadAddon, type KvEvent } from '../../ts/native/index.ts';
import { ensureModel } from '../../ts/modelgen/index.ts';

let modelDir: string;
const engines: Engine[] = [];

function open(opts: Partial<ConstructorParameters<typeof Engine>[0]> = {}) {
  const e = new Engine({ modelDir, numThreads: 2, blockSize: 4, maxModelLen: 512, ...opts });
  engines.push(e);
  return e;
}

// Deterministic pseudo-random prompts over the real vocabulary.
function prompt(seed: number, len: number): number[] {
  let x = seed * 2654435761 + 1;
  return Array.from({ length: len }, () => {
    x = (x * 1103515245 + 12345) >>> 0;
    return 1000 + (x % 20000);
  });
}

const greedy = { temperature: 0, ignoreEos: true } as const;

beforeAll(async () => {
  modelDir = (await ensureModel('test-llama-gqa-llama3rope')).dir;
});

afterAll(async () => {
  for (const e of engines) await e.close();
});

describe('engine', () => {
  it('runs on the device asked for: cpu, auto (cuda only with a usable GPU), cuda refused clearly without one', () => {
    const cuda = loadAddon().cudaDevice();
    expect(open({ device: 'cpu' }).info.backend).toBe('cpu');
    expect(open({ device: 'auto' }).info.backend).toBe(cuda.usable ? 'cuda' : 'cpu');
    expect(() => open({ device: 'tpu' as never })).toThrow(/device must be 'cpu', 'cuda' or 'auto'/);
    if (!cuda.usable) {
      let err: unknown;
      try {
        open({ device: 'cuda' });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(NativeError);
      expect((err as NativeError).code).toBe('ERR_DEVICE_UNAVAILABLE');
      expect((err as NativeError).message).toMatch(/^device cuda: /);
    }
  });

  it('generates max_tokens tokens and reports usage', async () => {
    const e = open();
    const r = await collect(e.generate('a', prompt(1, 20), { ...greedy, maxTokens: 12 }));
    expect(r.tokenIds).toHaveLength(12);
    expect(r.finishReason).toBe('length');
    expect(r.last?.numPromptTokens).toBe(20);
    expect(e.info.backend).toBe('cpu');
  });

  it('gives a request the same greedy tokens alone and batched with 7 others', async () => {
    const alone = await collect(open().generate('x', prompt(2, 37), { ...greedy, maxTokens: 24 }));
    const e = open({ enablePrefixCaching: false });
    const streams = Array.from({ length: 8 }, (_, i) =>
      collect(e.generate(`r${i}`, i === 3 ? prompt(2, 37) : prompt(100 + i, 10 + 7 * i), { ...greedy, maxTokens: 24 })),
    );
    const results = await Promise.all(streams);
    expect(results[3].tokenIds).toEqual(alone.tokenIds);
  });

  it('gives the same output on a prefix-cache hit as on a cold run', async () => {
    const e = open();
    const p = prompt(3, 45);
    const cold = await collect(e.generate('cold', p, { ...greedy, maxTokens: 16 }));
    expect(cold.last?.numCachedTokens).toBe(0);
    const warm = await collect(e.generate('warm', p, { ...greedy, maxTokens: 16 }));
    expect(warm.last?.numCachedTokens).toBe(44); // 11 full blocks of 4; the last token is recomputed
    expect(warm.tokenIds).toEqual(cold.tokenIds);
    const m = e.metrics();
    expect(m.prefixCacheHits).toBe(44);
    expect(m.prefixCacheQueries).toBeGreaterThanOrEqual(90);
  });

  it('gives the same output when preempted and recomputed as when never preempted', async () => {
    const prompts = [0, 1, 2, 3].map((i) => prompt(200 + i, 30));
    const run = async (e: Engine) =>
      Promise.all(prompts.map((p, i) => collect(e.generate(`p${i}`, p, { ...greedy, maxTokens: 40 }))));
    const roomy = await run(open({ enablePrefixCaching: false }));
    // 4 requests x 70 tokens need 72 blocks of 4; 40 blocks force preemptions.
    const tight = open({ numKvBlocks: 40, enablePrefixCaching: false });
    const squeezed = await run(tight);
    expect(tight.metrics().numPreemptions).toBeGreaterThan(0);
    expect(squeezed.map((r) => r.tokenIds)).toEqual(roomy.map((r) => r.tokenIds));
    expect(tight.metrics().kvActiveBlocks).toBe(0);
  });

  it('reproduces sampled tokens from the same seed, alone or batched', async () => {
    const sampling = { temperature: 1.0, topP: 0.95, topK: 50, seed: 1234, maxTokens: 20, ignoreEos: true };
    const e = open();
    const a = await collect(e.generate('s1', prompt(4, 16), sampling));
    const [b] = await Promise.all([
      collect(e.generate('s2', prompt(4, 16), sampling)),
      collect(e.generate('s3', prompt(5, 16), sampling)),
      collect(e.generate('s4', prompt(6, 33), { ...sampling, seed: 7 })),
    ]);
    expect(b.tokenIds).toEqual(a.tokenIds);
    const c = await collect(e.generate('s5', prompt(4, 16), { ...sampling, seed: 99 }));
    expect(c.tokenIds).not.toEqual(a.tokenIds);
  });

  it('returns logprobs: the sampled token and the top N, descending', async () => {
    const e = open();
    const r = await collect(e.generate('lp', prompt(7, 10), { ...greedy, maxTokens: 4, logprobs: 5 }));
    expect(r.logprobs).toHaveLength(4);
    for (const lp of r.logprobs) {
      expect(lp.topIds).toHaveLength(5);
      expect(lp.topIds[0]).toBe(lp.tokenId); // greedy: the sampled token is the most likely
      expect(lp.logprob).toBeCloseTo(lp.topLogprobs[0], 5);
      for (let i = 1; i < 5; i++) expect(lp.topLogprobs[i]).toBeLessThanOrEqual(lp.topLogprobs[i - 1]);
      expect(lp.logprob).toBeLessThanOrEqual(0);
    }
  });

  it('stops on a stop token id and keeps it', async () => {
    const e = open();
    const free = await collect(e.generate('f', prompt(8, 12), { ...greedy, maxTokens: 10 }));
    const stopAt = free.tokenIds[4];
    const r = await collect(e.generate('g', prompt(8, 12), { ...greedy, maxTokens: 10, stopTokenIds: [stopAt] }));
    const first = free.tokenIds.indexOf(stopAt);
    expect(r.tokenIds).toEqual(free.tokenIds.slice(0, first + 1));
    expect(r.finishReason).toBe('stop');
    expect(r.last?.stopTokenId).toBe(stopAt);
  });

  it('aborts a request and frees its blocks', async () => {
    const e = open({ enablePrefixCaching: false });
    const ac = new AbortController();
    const stream = e.generate('long', prompt(9, 40), { ...greedy, maxTokens: 400 }, ac.signal);
    let n = 0;
    let reason: string | undefined;
    for await (const o of stream) {
      n += o.newTokenIds.length;
      if (n === 3) ac.abort();
      reason = o.finishReason;
    }
    expect(reason).toBe('abort');
    expect(n).toBeLessThan(400);
    expect(e.metrics().kvActiveBlocks).toBe(0);
    expect(e.metrics().requestActiveSlots).toBe(0);
  });

  it('does not block the event loop while generating', async () => {
    const e = open();
    let finished = false;
    const done = collect(e.generate('bg', prompt(10, 64), { ...greedy, maxTokens: 64 })).then(() => (finished = true));
    await new Promise((r) => setImmediate(r));
    expect(finished).toBe(false);
    await done;
  });

  it('rejects bad requests up front with a clear error code', () => {
    const e = open();
    const code = (fn: () => unknown) => {
      try {
        fn();
      } catch (err) {
        return (err as NativeError).code;
      }
      return 'no error';
    };
    expect(code(() => e.generate('long1', prompt(11, 500), { maxTokens: 100 }))).toBe('ERR_REQUEST_TOO_LONG');
    expect(code(() => e.generate('empty', [], {}))).toBe('ERR_INVALID_ARGUMENT');
    expect(code(() => e.generate('vocab', [999_999_999], {}))).toBe('ERR_REQUEST_INVALID');
    expect(code(() => e.generate('topp', [1, 2], { topP: 0 }))).toBe('ERR_INVALID_ARGUMENT');
    const small = open({ numKvBlocks: 8 });
    expect(code(() => small.generate('pool', prompt(12, 30), { maxTokens: 10 }))).toBe('ERR_REQUEST_TOO_LONG');
    const msg = (() => {
      try {
        e.generate('long2', prompt(11, 500), { maxTokens: 100 });
      } catch (err) {
        return (err as Error).message;
      }
    })();
    expect(msg).toContain('512');
    expect(msg).toContain('500');
  });

  it('refuses a duplicate live request id', async () => {
    const e = open();
    const s = e.generate('dup', prompt(13, 8), { ...greedy, maxTokens: 50 });
    expect(() => e.generate('dup', prompt(13, 8), {})).toThrow(/already in use/);
    await collect(s);
  });

  it('emits stored/removed/cleared KV events with gapless ids, and replays its cache', async () => {
    const e = open({ numKvBlocks: 24 });
    const events: KvEvent[] = [];
    e.onKvEvents((evs) => events.push(...evs));
    await collect(e.generate('e1', prompt(14, 33), { ...greedy, maxTokens: 8 }));
    const stored = events.filter((ev) => ev.type === 'stored');
    expect(stored.length).toBeGreaterThan(0);
    const first = stored[0] as Extract<KvEvent, { type: 'stored' }>;
    expect(first.parentHash).toBeNull();
    expect(first.blockHashes[0]).toMatch(/^[0-9a-f]{16}$/);
    // Fill the pool with other prompts so cached blocks get evicted.
    for (let i = 0; i < 3; i++) await collect(e.generate(`fill${i}`, prompt(300 + i, 60), { ...greedy, maxTokens: 8 }));
    expect(events.some((ev) => ev.type === 'removed')).toBe(true);
    // Replay: cleared, then stored events covering exactly the cached hashes.
    const before = events.length;
    e.replayKvEvents();
    await collect(e.generate('e2', prompt(15, 1), { ...greedy, maxTokens: 1 }));
    const replay = events.slice(before);
    const clearedAt = replay.findIndex((ev) => ev.type === 'cleared');
    expect(clearedAt).toBeGreaterThanOrEqual(0);
    // Event ids run without gaps from 1.
    events.forEach((ev, i) => expect(ev.eventId).toBe(i + 1));
    // A consumer that saw every event and one that starts at the replay's `cleared` end with
    // the same set of cached blocks.
    const apply = (evs: KvEvent[]) => {
      const live = new Set<string>();
      for (const ev of evs) {
        if (ev.type === 'stored') ev.blockHashes.forEach((h) => live.add(h));
        if (ev.type === 'removed') ev.blockHashes.forEach((h) => live.delete(h));
        if (ev.type === 'cleared') live.clear();
      }
      return live;
    };
    const everything = apply(events.filter((_, i) => i !== before + clearedAt));
    const fromReplay = apply(replay.slice(clearedAt));
    expect(fromReplay.size).toBeGreaterThan(0);
    expect(fromReplay).toEqual(everything);
  });

  it('reports load metrics in the contract', async () => {
    const e = open({ maxNumSeqs: 8 });
    const m = e.metrics();
    expect(m.requestTotalSlots).toBe(8);
    expect(m.kvTotalBlocks).toBe(e.info.numKvBlocks);
    expect(m.kvActiveBlocks).toBe(0);
    expect(m.kvCacheUsage).toBe(0);
  });

  it('closes twice safely and refuses work after close', async () => {
    const e = open();
    const s = collect(e.generate('c', prompt(16, 8), { ...greedy, maxTokens: 500 }));
    await e.close();
    await e.close();
    await expect(s).rejects.toMatchObject({ code: 'ERR_ENGINE_CLOSED' });
    expect(() => e.generate('d', [1, 2, 3], {})).toThrow(/closed/);
  });
});

describe('model', () => {
  it('gives the same logits on a permuted block table as on a contiguous one', () => {
    const m = new Model(modelDir, 2);
    const tokens = prompt(17, 29);
    const contiguous = m.forward(tokens, { blockSize: 4 });
    const permuted = m.forward(tokens, { blockSize: 4, blockTable: [11, 3, 7, 0, 9, 2, 14, 5] });
    expect(permuted).toEqual(contiguous);
    m.close();
  });

  it('reports bad model directories with a code', () => {
    expect(() => new Model('/nonexistent/model', 1)).toThrow(expect.objectContaining({ code: 'ERR_MODEL_FILE_MISSING' }));
  });
});
