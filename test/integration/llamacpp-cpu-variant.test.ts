// llamacpp-cpu-variant.test.ts: llama.cpp held to one of its CPU builds (bench/peer.ts's
// nodeLlamaCppCpuVariantDir, `npm run bench:engine -- --llamacpp-cpu haswell`): the build it loads
// is the one named, not the best this CPU runs, and it still gives our greedy tokens on the F32
// GGUF (the exact check of llamacpp-gguf.test.ts). Its own file, since llama.cpp loads once per
// process. Skipped, saying why, without the peer (npm run peer:install) or without AVX2.

import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

import { ensureGguf } from '../../bench/gguf/hf-to-gguf.ts';
import { llamaCppGreedy, loadedLlamaCppCpuVariant, useLlamaCppCpuVariant, withLlamaCpp } from '../../bench/llamacpp.ts';
import { NODE_LLAMA_CPP_VERSION, nodeLlamaCppCpuVariantDir, nodeLlamaCppDir, nodeLlamaCppInstalled } from '../../bench/peer.ts';
import { ensureModel, PRESETS } from '../../ts/modelgen/index.ts';
import { collect, Engine, loadAddon } from '../../ts/native/index.ts';

const PRESET = 'test-llama-gqa-llama3rope';
const PROMPT = [128000, 791, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679];
const STEPS = 24;
const THREADS = 2;

const why = !nodeLlamaCppInstalled()
  ? `node-llama-cpp ${NODE_LLAMA_CPP_VERSION} is not installed in ${nodeLlamaCppDir()} (npm run peer:install)`
  : !loadAddon().cpuKernelInfo().isa.includes('avx2')
    ? 'this CPU has no AVX2, which llama.cpp\'s haswell build needs'
    : '';
const title = "llama.cpp held to its AVX2 (haswell) CPU build";

describe.skipIf(why !== '')(why ? `${title} (skipped: ${why})` : title, () => {
  it('refuses a variant it does not have, naming those it has', () => {
    expect(() => nodeLlamaCppCpuVariantDir('pentium4')).toThrow(/no CPU variant 'pentium4' .*haswell/);
    expect(() => nodeLlamaCppCpuVariantDir('../x')).toThrow(/a name like haswell/);
  });

  it('holds only that CPU build, loads it, and gives our greedy tokens on the F32 GGUF', async () => {
    const dir = nodeLlamaCppCpuVariantDir('haswell');
    const platformPkg = `${process.platform}-${process.arch}`;
    const bins = path.join(dir, 'node_modules', '@node-llama-cpp', platformPkg, 'bins', platformPkg);
    expect(fs.readdirSync(bins).filter((f) => f.startsWith('libggml-cpu-'))).toEqual(['libggml-cpu-haswell.so']);

    const modelDir = (await ensureModel({ ...PRESETS[PRESET], dtype: 'f32', preset: PRESET })).dir;
    const engine = new Engine({ modelDir, numThreads: THREADS, maxModelLen: 128, enablePrefixCaching: false });
    let ours: number[];
    try {
      ours = (await collect(engine.generate('greedy', PROMPT, { temperature: 0, ignoreEos: true, maxTokens: STEPS }))).tokenIds;
    } finally {
      await engine.close();
    }
    useLlamaCppCpuVariant('haswell');
    const gguf = await ensureGguf(modelDir, 'f32');
    const context = { threads: THREADS, contextSize: 128, batchSize: 128, flashAttention: false, kvCacheType: 'F32' as const };
    const theirs = await withLlamaCpp(gguf, context, (seq) => llamaCppGreedy(seq, PROMPT, STEPS));
    expect(loadedLlamaCppCpuVariant()).toBe('haswell');
    expect(theirs).toEqual(ours);
  }, 120_000);
});
