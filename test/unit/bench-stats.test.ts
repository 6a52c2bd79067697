// The bench's pure parts against hand-computed cases: numpy's percentiles, vLLM's TPOT,
// throughputs and goodput, gamma arrivals (mean gap 1/rate whatever the burstiness), the
// datasets' shapes, strict flags, and the soak's growth rule.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildDataset, DatasetError, type DatasetOptions } from '../../bench/serve/datasets.ts';
import { BenchFlagError, parseCli, resolveWorkload } from '../../bench/serve/flags.ts';
import { arrivalTimesMs, gammaSample, seededRng } from '../../bench/serve/random.ts';
import { flatness, growthOver, parseDuration, soakOptions } from '../../bench/serve/soak.ts';
import { distribution, errorCounts, percentile, summarize, tpotMs, type RequestRecord } from '../../bench/serve/stats.ts';

function record(r: Partial<RequestRecord>): RequestRecord {
  return { session: 0, turn: 0, startMs: 0, promptTokens: 0, maxTokens: 0, ttftMs: null, itlMs: [], e2eMs: null, outputTokens: 0, error: null, ...r };
}

describe('percentile and distribution (numpy, linear interpolation)', () => {
  it('interpolates between the two nearest ranks', () => {
    expect(percentile([1, 2, 3, 4], 50)).toBe(2.5);
    expect(percentile([1, 2, 3, 4], 90)).toBeCloseTo(3.7, 12); // rank 2.7
    expect(percentile([1, 2, 3, 4], 99)).toBeCloseTo(3.97, 12);
    expect(percentile([15, 20, 35, 40, 50], 40)).toBeCloseTo(29, 12); // rank 1.6: 20 + 0.6 * 15
    expect(percentile([10], 99)).toBe(10);
    expect(percentile([], 50)).toBeNaN();
  });

  it('gives mean, median, population std, p90 and p99', () => {
    const d = distribution([9, 2, 4, 4, 5, 4, 5, 7]);
    expect(d.mean).toBe(5);
    expect(d.std).toBe(2); // numpy's default ddof = 0
    expect(d.median).toBe(4.5);
    expect(d.p90).toBeCloseTo(7.6, 12); // sorted [2,4,4,4,5,5,7,9], rank 6.3
    expect(d.p99).toBeCloseTo(8.86, 12); // rank 6.93
    expect(Object.values(distribution([])).every(Number.isNaN)).toBe(true);
  });
});

describe('vLLM metrics of a run', () => {
  const a = record({ promptTokens: 10, ttftMs: 100, itlMs: [10, 20], e2eMs: 130, outputTokens: 3 });
  const b = record({ promptTokens: 20, ttftMs: 300, itlMs: [50], e2eMs: 350, outputTokens: 2 });
  const failed = record({ promptTokens: 99, error: 'HTTP 500: boom' });

  it('TPOT is (E2E - TTFT) / (output tokens - 1), none for one token', () => {
    expect(tpotMs(a)).toBe(15);
    expect(tpotMs(b)).toBe(50);
    expect(tpotMs(record({ ttftMs: 100, e2eMs: 100, outputTokens: 1 }))).toBeNull();
    expect(tpotMs(failed)).toBeNull();
  });

  it('counts failures apart and computes throughputs over the duration', () => {
    const s = summarize([a, b, failed], 2000);
    expect(s).toMatchObject({ requests: 3, completed: 2, failed: 1, durationS: 2, totalInputTokens: 30, totalOutputTokens: 5 });
    expect(s.requestThroughput).toBe(1);
    expect(s.outputThroughput).toBe(2.5);
    expect(s.totalTokenThroughput).toBe(17.5);
    expect(s.requestGoodput).toBeNull();
    expect(s.ttftMs).toMatchObject({ mean: 200, median: 200, std: 100 });
    expect(s.itlMs.mean).toBeCloseTo(80 / 3, 12); // pooled: 10, 20, 50
    expect(s.itlMs.median).toBe(20);
    expect(s.tpotMs.mean).toBe(32.5);
    expect(s.e2elMs.mean).toBe(240);
    expect(errorCounts([a, failed, failed])).toEqual([{ message: 'HTTP 500: boom', count: 2 }]);
  });

  it('goodput counts completed requests meeting every SLO; one token has TPOT 0', () => {
    const one = record({ promptTokens: 5, ttftMs: 150, e2eMs: 150, outputTokens: 1 });
    expect(summarize([a, b, failed], 2000, { ttftMs: 200 }).requestGoodput).toBe(0.5);
    expect(summarize([a, b, failed], 2000, { tpotMs: 20 }).requestGoodput).toBe(0.5);
    expect(summarize([a, b, failed], 2000, { ttftMs: 400, tpotMs: 60 }).requestGoodput).toBe(1);
    expect(summarize([a, b], 2000, { e2elMs: 100 }).requestGoodput).toBe(0);
    expect(summarize([one], 1000, { tpotMs: 1 }).requestGoodput).toBe(1);
  });
});

describe('arrivals', () => {
  it.each([1, 0.25, 4])('gamma gaps at burstiness %d have mean 1/rate and CV^2 1/burstiness', (burstiness) => {
    const rng = seededRng(42);
    const gaps = Array.from({ length: 40_000 }, () => gammaSample(rng, burstiness, 1 / (4 * burstiness)));
    const mean = gaps.reduce((s, g) => s + g, 0) / gaps.length;
    const variance = gaps.reduce((s, g) => s + (g - mean) ** 2, 0) / gaps.length;
    expect(mean).toBeGreaterThan(0.25 * 0.97);
    expect(mean).toBeLessThan(0.25 * 1.03);
    expect(variance / mean ** 2).toBeGreaterThan((1 / burstiness) * 0.9);
    expect(variance / mean ** 2).toBeLessThan((1 / burstiness) * 1.1);
  });

  it('starts at 0, is seeded, and sends everything at once at rate inf', () => {
    const times = arrivalTimesMs(seededRng(1), 1000, 10, 1);
    expect(times[0]).toBe(0);
    expect(times[999]! / 999).toBeGreaterThan(90); // ms per gap, about 100
    expect(times[999]! / 999).toBeLessThan(110);
    expect(arrivalTimesMs(seededRng(1), 1000, 10, 1)).toEqual(times);
    expect(arrivalTimesMs(seededRng(1), 5, Infinity, 1)).toEqual([0, 0, 0, 0, 0]);
  });
});

describe('datasets', () => {
  const base: DatasetOptions = { ...resolveWorkload({}) };

  it('random: lengths within the range ratio, seeded', () => {
    const sessions = buildDataset({ ...base, numPrompts: 200, inputLen: 100, outputLen: 20, rangeRatio: 0.5 });
    const turns = sessions.map((s) => s.turns[0]!);
    expect(sessions).toHaveLength(200);
    expect(turns.every((t) => t.tokens.length >= 50 && t.tokens.length <= 150 && t.outputLen >= 10 && t.outputLen <= 30)).toBe(true);
    expect(new Set(turns.map((t) => t.tokens.length)).size).toBeGreaterThan(50);
    expect(buildDataset({ ...base, numPrompts: 200, inputLen: 100, outputLen: 20, rangeRatio: 0.5 })).toEqual(sessions);
  });

  it('shared-prefix: groups x prompts (or --num-prompts), each group one prefix', () => {
    const sessions = buildDataset({ ...base, dataset: 'shared-prefix', numPrompts: null, groups: 3, promptsPerGroup: 4, prefixLen: 32, questionLen: 8 });
    const prompts = sessions.map((s) => s.turns[0]!.tokens);
    expect(prompts).toHaveLength(12);
    expect(prompts.every((p) => p.length === 40)).toBe(true);
    expect(new Set(prompts.map((p) => p.slice(0, 32).join())).size).toBe(3);
    expect(new Set(prompts.map((p) => p.join())).size).toBe(12);
    expect(buildDataset({ ...base, dataset: 'shared-prefix', numPrompts: 5, groups: 3, prefixLen: 32, questionLen: 8 })).toHaveLength(5);
  });

  it('multi-turn: conversations of turns', () => {
    const sessions = buildDataset({ ...base, dataset: 'multi-turn', numPrompts: 3, turns: 5, inputLen: 16 });
    expect(sessions.map((s) => s.turns.length)).toEqual([5, 5, 5]);
  });

  it('trace: equal hash ids give equal blocks, lengths exact, timestamps from the first', () => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'bench-trace-')), 't.jsonl');
    fs.writeFileSync(file, [
      '{"timestamp": 1500, "input_length": 700, "output_length": 5, "hash_ids": [7, 8]}',
      '{"timestamp": 1000, "input_length": 1100, "output_length": 9, "hash_ids": [7, 9, 10]}',
    ].join('\n'));
    const [first, second] = buildDataset({ ...base, dataset: 'trace', traceFile: file, numPrompts: null });
    expect(first!.atMs).toBe(0);
    expect(second!.atMs).toBe(500);
    expect(first!.turns[0]!.tokens).toHaveLength(1100);
    expect(second!.turns[0]!.tokens).toHaveLength(700);
    expect(second!.turns[0]!.tokens.slice(0, 512)).toEqual(first!.turns[0]!.tokens.slice(0, 512));
    expect(second!.turns[0]!.tokens.slice(512, 700)).not.toEqual(first!.turns[0]!.tokens.slice(512, 700));
    fs.writeFileSync(file, '{"timestamp": 0, "input_length": 1100, "output_length": 9, "hash_ids": [1]}\n');
    expect(() => buildDataset({ ...base, dataset: 'trace', traceFile: file, numPrompts: null })).toThrow(DatasetError);
  });

  it('the shipped sample trace parses', () => {
    expect(buildDataset({ ...base, dataset: 'trace', numPrompts: null }).length).toBe(32);
  });
});

describe('flags', () => {
  it('reads vLLM spellings, launcher flags after --, and rejects bad ones', () => {
    const cli = parseCli(['--request-rate', '2.5', '--goodput', 'ttft:500', 'tpot:50', '--seed', '3', '--', '--workers', '2']);
    expect(cli.launcherArgs).toEqual(['--workers', '2']);
    expect(resolveWorkload(cli.flags)).toMatchObject({ requestRate: 2.5, seed: 3, goodput: { ttftMs: 500, tpotMs: 50 }, maxConcurrency: Infinity });
    expect(resolveWorkload(parseCli(['--max-concurrency', '4']).flags).requestRate).toBe(Infinity);
    for (const bad of [['--nope'], ['--num-prompts', 'x'], ['--request-rate', '0'], ['--goodput', 'ttfx:1'], ['--dataset', 'sharegpt'],
      ['--range-ratio', '1'], ['--url', 'localhost:8181'], ['--url', 'http://h:1', '--', '--workers', '2']]) {
      expect(() => parseCli(bad), bad.join(' ')).toThrow(BenchFlagError);
    }
  });

  it('layers a scenario under the user flags', () => {
    const scenario = parseCli(['--input-len', '7', '--output-len', '5']).flags;
    const user = parseCli(['--input-len', '9']).flags;
    expect(resolveWorkload(scenario, user)).toMatchObject({ inputLen: 9, outputLen: 5 });
  });
});

describe('soak', () => {
  const sample = (t: number, anon: number, fds = 30) => ({ t, rssMiB: { w: anon + 100 }, anonMiB: { w: anon }, shmemMiB: { w: 100 }, fds: { w: fds }, activeBlocks: { w: 0 }, redisMiB: 2, redisKeys: 10 });

  it('measures growth as the least-squares slope times the span', () => {
    const line = Array.from({ length: 11 }, (_, i) => ({ t: i * 10, y: 2 * i * 10 + 5 }));
    expect(growthOver(line)).toEqual({ growth: 200, mean: 105 });
    expect(growthOver([{ t: 0, y: 1 }, { t: 10, y: NaN }, { t: 20, y: 1 }]).growth).toBe(0); // a missed sample is left out
    expect(growthOver([{ t: 0, y: 1 }]).growth).toBeNaN();
  });

  it('calls noise flat and a slow leak not flat, after the warm-up', () => {
    const rng = seededRng(1);
    // 30 min at 10 s: a warm-up climb of 50 MiB, then noise of +-3 MiB around 200 MiB.
    const steady = Array.from({ length: 181 }, (_, i) => sample(i * 10, i < 36 ? 150 + (50 * i) / 36 : 200 + 6 * (rng() - 0.5)));
    expect(flatness(steady, 360).every((v) => v.flat)).toBe(true);
    // 1 MiB a minute on top: 24 MiB over the 24 min after the warm-up, above 10% of ~212 MiB.
    const leak = steady.map((s) => sample(s.t, s.anonMiB.w + s.t / 60));
    const anon = flatness(leak, 360).find((v) => v.series === 'private RSS MiB: w')!;
    expect(anon.flat).toBe(false);
    expect(anon.growth).toBeCloseTo(24, 0);
    // File descriptors: one more every minute is a leak whatever the mean.
    const fds = flatness(steady.map((s) => sample(s.t, 200, 30 + Math.floor(s.t / 60))), 360).find((v) => v.series === 'open fds: w')!;
    expect(fds.flat).toBe(false);
  });

  it('takes durations and refuses soak flags elsewhere', () => {
    expect(parseDuration('duration', '30m')).toBe(1_800_000);
    expect(parseDuration('duration', '90s')).toBe(90_000);
    expect(parseDuration('duration', '1.5h')).toBe(5_400_000);
    expect(parseDuration('duration', '45')).toBe(45_000);
    for (const bad of ['', '0', '-1m', '3d', 'soon']) expect(() => parseDuration('duration', bad), bad).toThrow(BenchFlagError);
    expect(() => parseCli(['--duration', '10m'])).toThrow(/belongs to --scenario soak/);
    expect(soakOptions(parseCli(['--scenario', 'soak', '--duration', '2m', '--max-concurrency', '3']))).toEqual({ durationMs: 120_000, sampleMs: 10_000, concurrency: 3, seed: 0 });
    expect(() => soakOptions(parseCli(['--scenario', 'soak', '--duration', '30s']))).toThrow(/at least 5 sample intervals/);
  });
});
