// golden.test.ts: the native engine's numerics against the independent PyTorch reference.
//
// For every test/goldens/*.json (written by test/reference/make-goldens.ts): the model is
// regenerated through ensureModel from the golden's spec and must hash to the golden's sha256
// (goldens stay tied to the generator); then
// - Model.forward over a scattered block table gives, at every prompt position, logits within
//   tolerance.logitAbs of the reference at the golden's top-16 and 64 fixed vocabulary ids, and
//   the reference's full-vocabulary argmax wherever its margin is at least
//   tolerance.argmaxMinMargin;
// - Engine, greedy with ignore_eos, generates the reference's 64 tokens, all of them compared
//   (make_goldens.py only writes goldens whose every greedy step leads by >= 2 x the bound, and
//   whose continuation has >= 16 distinct tokens; both are re-asserted here).
// The tolerances and their reasoning are in test/reference/make_goldens.py. Without a built addon
// these tests fail (loadAddon's error lists what it tried); they are never skipped.

import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { beforeAll, describe, expect, it } from 'vitest';

import { ensureModel, type ModelSpec, type PresetName } from '../../ts/modelgen/index.ts';
import { loadAddon, type NativeAddon, type NativeRequest } from '../../ts/native/index.ts';

interface GoldenPosition {
  argmax: number;
  margin: number;
  topIds: number[];
  topLogits: number[];
  fixedLogits: number[];
}

interface Golden {
  preset: PresetName;
  dtype: string;
  generator: ModelSpec;
  modelSha256: string;
  tolerance: { logitAbs: number; argmaxMinMargin: number };
  promptTokenIds: number[];
  fixedIds: number[];
  greedyTokenIds: number[];
  greedyCheckedSteps: number;
  greedyMargins: number[];
  positions: GoldenPosition[];
}

const BLOCK_SIZE = 16;
const MIN_GREEDY_STEPS = 64;
const MIN_DISTINCT_GREEDY = 16;
const NUM_THREADS = 2;

const goldensDir = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'goldens');
const goldenFiles = readdirSync(goldensDir).filter((f) => f.endsWith('.json')).sort();

function readGolden(file: string): Golden {
  return JSON.parse(readFileSync(path.join(goldensDir, file), 'utf8')) as Golden;
}

// Odd block ids in reverse order (3 blocks: 5, 3, 1), so that paging bugs cannot hide behind an
// identity table.
function scatteredBlockTable(numTokens: number): Int32Array {
  const numBlocks = Math.ceil(numTokens / BLOCK_SIZE);
  return Int32Array.from({ length: numBlocks }, (_, i) => 2 * (numBlocks - i) - 1);
}

function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}

function greedyRequest(requestId: string, prompt: number[], maxTokens: number): NativeRequest {
  return {
    requestId,
    promptTokenIds: Int32Array.from(prompt),
    maxTokens,
    minTokens: 0,
    temperature: 0,
    topP: 1,
    topK: 0,
    minP: 0,
    seed: -1,
    repetitionPenalty: 1,
    presencePenalty: 0,
    frequencyPenalty: 0,
    stopTokenIds: new Int32Array(0),
    ignoreEos: true,
    logprobs: -1,
    numExternalTokens: 0,
    prefillOnly: false,
  };
}

// Runs one greedy request on a fresh engine and returns its generated tokens.
async function engineGreedy(addon: NativeAddon, modelDir: string, prompt: number[], maxTokens: number) {
  const tokens: number[] = [];
  let engine: InstanceType<NativeAddon['Engine']> | undefined;
  const finished = new Promise<string>((resolve, reject) => {
    engine = new addon.Engine(
      {
        modelDir,
        workerId: 'golden-test',
        blockSize: BLOCK_SIZE,
        maxModelLen: 0,
        maxNumSeqs: 4,
        maxNumBatchedTokens: 256,
        numKvBlocks: 64,
        kvCacheBytes: 0,
        numThreads: NUM_THREADS,
        enablePrefixCaching: false,
        kvSharedMemory: false,
        seed: 0,
      },
      (step) => {
        for (const output of step.outputs) {
          tokens.push(...output.newTokenIds);
          if (output.error !== undefined) reject(new Error(`engine: ${output.error}`));
          else if (output.finishReason !== undefined) resolve(output.finishReason);
        }
      },
    );
    engine.addRequest(greedyRequest('golden', prompt, maxTokens));
  });
  try {
    return { tokens, finishReason: await finished };
  } finally {
    await engine?.close();
  }
}

let addon: NativeAddon;

beforeAll(() => {
  addon = loadAddon();
});

describe.each(goldenFiles)('golden %s', (file) => {
  const golden = readGolden(file);
  const { logitAbs, argmaxMinMargin } = golden.tolerance;
  let modelDir: string;

  beforeAll(async () => {
    const model = await ensureModel({ ...golden.generator, preset: golden.preset });
    modelDir = model.dir;
    expect(model.sha256, 'the generator no longer writes the golden model: regenerate goldens').toBe(
      golden.modelSha256,
    );
  });

  it('matches the reference logits at every prompt position', () => {
    const model = new addon.Model(modelDir, NUM_THREADS);
    try {
      const vocab = model.info().vocabSize;
      const prompt = Int32Array.from(golden.promptTokenIds);
      const logits = model.forward(prompt, scatteredBlockTable(prompt.length), BLOCK_SIZE);
      expect(logits.length).toBe(prompt.length * vocab);
      golden.positions.forEach((expected, pos) => {
        const row = logits.subarray(pos * vocab, (pos + 1) * vocab);
        const ids = [...expected.topIds, ...golden.fixedIds];
        const want = [...expected.topLogits, ...expected.fixedLogits];
        const worst = Math.max(...ids.map((id, i) => Math.abs(row[id]! - want[i]!)));
        expect(worst, `position ${pos}: largest logit difference`).toBeLessThanOrEqual(logitAbs);
        if (expected.margin >= argmaxMinMargin) {
          expect(argmax(row), `position ${pos}: argmax`).toBe(expected.argmax);
        }
      });
    } finally {
      model.close();
    }
  });

  it('has a varied greedy path with a clear margin at every one of its steps', () => {
    expect(golden.greedyTokenIds.length).toBeGreaterThanOrEqual(MIN_GREEDY_STEPS);
    expect(golden.greedyCheckedSteps).toBe(golden.greedyTokenIds.length);
    expect(new Set(golden.greedyTokenIds).size).toBeGreaterThanOrEqual(MIN_DISTINCT_GREEDY);
    expect(golden.greedyMargins).toHaveLength(golden.greedyTokenIds.length);
    for (const margin of golden.greedyMargins) expect(margin).toBeGreaterThanOrEqual(2 * logitAbs);
  });

  it('generates the reference greedy tokens', async () => {
    const maxTokens = golden.greedyTokenIds.length;
    const run = await engineGreedy(addon, modelDir, golden.promptTokenIds, maxTokens);
    expect(run.finishReason).toBe('length');
    expect(run.tokens).toHaveLength(maxTokens);
    expect(run.tokens).toEqual(golden.greedyTokenIds);
  });
});
