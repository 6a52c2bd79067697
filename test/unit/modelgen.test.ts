// modelgen.test.ts: the model generator: determinism, the safetensors layout (single and
// sharded), the float conversions on their edge cases, config.json per architecture and in both
// transformers forms, the model cache, that every committed golden's model is still what the
// generator writes, and that the goldens of one model in both config forms agree.

import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { f32BitsToBf16, f32BitsToF16 } from '../../ts/modelgen/float-encode.ts';
import { generateModel, type GeneratedModel } from '../../ts/modelgen/generate.ts';
import { pythonFloatRepr } from '../../ts/modelgen/hf-files.ts';
import { ensureModel } from '../../ts/modelgen/model-cache.ts';
import { modelTensors, resolveSpec, type ModelSpecInput } from '../../ts/modelgen/spec.ts';

const SMALL: ModelSpecInput = {
  architecture: 'LlamaForCausalLM',
  vocabSize: 1000,
  hiddenSize: 64,
  intermediateSize: 96,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  seed: 5,
};

let tmp: string;
let counter = 0;

async function generate(spec: ModelSpecInput): Promise<GeneratedModel> {
  counter += 1;
  return generateModel({ ...spec, outDir: path.join(tmp, `m${counter}`) });
}

interface HeaderEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

async function readSafetensors(file: string) {
  const bytes = await readFile(file);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const headerText = bytes.subarray(8, 8 + headerLength).toString('utf8');
  const header = JSON.parse(headerText) as Record<string, HeaderEntry> & {
    __metadata__: Record<string, string>;
  };
  const { __metadata__: metadata, ...tensors } = header;
  const data = bytes.subarray(8 + headerLength);
  const tensorData = (name: string) => data.subarray(...tensors[name]!.data_offsets);
  return { headerLength, headerText, metadata, tensors, data, tensorData };
}

function bf16ToF32(bits: number): number {
  return new Float32Array(new Uint32Array([bits << 16]).buffer)[0]!;
}

function f32Bits(x: number): number {
  return new Uint32Array(new Float32Array([x]).buffer)[0]!;
}

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'modelgen-test-'));
});

afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('determinism', () => {
  it('writes the same bytes for the same spec and different bytes for another seed', async () => {
    const a = await generate(SMALL);
    const b = await generate(SMALL);
    const c = await generate({ ...SMALL, seed: 6 });
    expect(a.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(b.sha256).toBe(a.sha256);
    expect(c.sha256).not.toBe(a.sha256);
    const weights = (m: GeneratedModel) => readFile(path.join(m.dir, 'model.safetensors'));
    expect((await weights(b)).equals(await weights(a))).toBe(true);
  });

  it('still writes the model of every committed golden', async () => {
    const goldensDir = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'goldens');
    const files = (await readdir(goldensDir)).filter((f) => f.endsWith('.json'));
    expect(files.length).toBeGreaterThan(0);
    for (const file of files) {
      const golden = JSON.parse(await readFile(path.join(goldensDir, file), 'utf8'));
      const model = await generate(golden.generator);
      expect(model.sha256, file).toBe(golden.modelSha256);
    }
  });
});

describe('safetensors layout', () => {
  it('has a padded header with metadata and contiguous, correctly sized tensors', async () => {
    const model = await generate({ ...SMALL, dtype: 'f16' });
    const file = await readSafetensors(path.join(model.dir, 'model.safetensors'));
    expect(file.headerLength % 8).toBe(0);
    expect(file.headerText.startsWith('{"__metadata__":{"format":"pt"},')).toBe(true);
    expect(file.headerText.trimEnd().endsWith('}')).toBe(true);
    const names = Object.keys(file.tensors);
    expect(names).toEqual([...names].sort());
    const expected = new Map(modelTensors(model.spec).map((t) => [t.name, t.shape]));
    expect(new Set(names)).toEqual(new Set(expected.keys()));
    let offset = 0;
    for (const name of names) {
      const { dtype, shape, data_offsets: [start, end] } = file.tensors[name]!;
      expect(dtype).toBe('F16');
      expect(shape).toEqual(expected.get(name));
      expect(start).toBe(offset);
      expect(end - start).toBe(2 * shape.reduce((a, b) => a * b, 1));
      offset = end;
    }
    expect(file.data.length).toBe(offset);
  });

  it('names and shapes tensors as Hugging Face does, per architecture', () => {
    const qwen = modelTensors(
      resolveSpec({ ...SMALL, architecture: 'Qwen2ForCausalLM', headDim: 32, tieWordEmbeddings: true }),
    );
    const shapes = Object.fromEntries(qwen.map((t) => [t.name, t.shape]));
    expect(shapes['model.layers.1.self_attn.q_proj.weight']).toEqual([128, 64]);
    expect(shapes['model.layers.1.self_attn.q_proj.bias']).toEqual([128]);
    expect(shapes['model.layers.1.self_attn.k_proj.weight']).toEqual([64, 64]);
    expect(shapes['model.layers.1.self_attn.v_proj.bias']).toEqual([64]);
    expect(shapes['model.layers.1.self_attn.o_proj.weight']).toEqual([64, 128]);
    expect(shapes['model.layers.0.mlp.down_proj.weight']).toEqual([64, 96]);
    expect(shapes['model.embed_tokens.weight']).toEqual([1000, 64]);
    expect(shapes['lm_head.weight']).toBeUndefined();
  });

  it('gives Qwen3 per-head q/k norms of head_dim, drawn like the other RMSNorm weights, and no biases', () => {
    const spec = resolveSpec({ ...SMALL, architecture: 'Qwen3ForCausalLM', headDim: 32 });
    expect(spec).toMatchObject({ biasStd: null, rmsNormEps: 1e-6 });
    expect(resolveSpec({ architecture: 'Qwen3ForCausalLM' }).vocabSize).toBe(151936);
    const tensors = modelTensors(spec);
    const byName = Object.fromEntries(tensors.map((t) => [t.name, t]));
    for (const layer of [0, 1]) {
      for (const norm of ['q_norm', 'k_norm']) {
        const t = byName[`model.layers.${layer}.self_attn.${norm}.weight`]!;
        expect(t.shape).toEqual([32]);
        expect(t.init).toEqual(byName['model.norm.weight']!.init);
      }
    }
    expect(byName['model.layers.0.self_attn.q_proj.weight']!.shape).toEqual([128, 64]);
    expect(tensors.filter((t) => t.name.endsWith('.bias'))).toEqual([]);
    expect(() => resolveSpec({ ...SMALL, architecture: 'Qwen3ForCausalLM', biasStd: 0.1 })).toThrow(/biasStd/);
    expect(modelTensors(resolveSpec(SMALL)).some((t) => t.name.includes('_norm.weight') && t.name.includes('self_attn'))).toBe(false);
  });

  it('draws q/k/v biases with biasStd: Qwen2 only, 0.5 by default', () => {
    const qwen = { ...SMALL, architecture: 'Qwen2ForCausalLM' } as const;
    const biasStds = (input: ModelSpecInput) =>
      modelTensors(resolveSpec(input)).filter((t) => t.name.endsWith('.bias')).map((t) => t.init.std);
    expect(resolveSpec(qwen).biasStd).toBe(0.5);
    expect(new Set(biasStds(qwen))).toEqual(new Set([0.5]));
    expect(biasStds(qwen)).toHaveLength(3 * 2);
    expect(new Set(biasStds({ ...qwen, biasStd: 0.05 }))).toEqual(new Set([0.05]));
    expect(resolveSpec(SMALL).biasStd).toBeNull();
    expect(biasStds(SMALL)).toEqual([]);
    expect(() => resolveSpec({ ...SMALL, biasStd: 0.1 })).toThrow(/biasStd is for Qwen2/);
    expect(() => resolveSpec({ ...qwen, biasStd: 0 })).toThrow(/biasStd must be > 0/);
  });

  it('draws RMSNorm weights near 1 and linear weights around 0', async () => {
    const model = await generate(SMALL);
    const file = await readSafetensors(path.join(model.dir, 'model.safetensors'));
    const mean = (name: string) => {
      const raw = file.tensorData(name);
      let sum = 0;
      for (let i = 0; i < raw.length; i += 2) sum += bf16ToF32(raw.readUInt16LE(i));
      return sum / (raw.length / 2);
    };
    expect(mean('model.norm.weight')).toBeCloseTo(1, 1);
    expect(Math.abs(mean('model.layers.0.mlp.up_proj.weight'))).toBeLessThan(0.02);
  });

  it('shards consistently with its index, with the same tensor bytes as one file', async () => {
    const single = await generate(SMALL);
    const sharded = await generate({ ...SMALL, shardBytes: 100_000 });
    const index = JSON.parse(await readFile(path.join(sharded.dir, 'model.safetensors.index.json'), 'utf8'));
    const shardNames = [...new Set(Object.values(index.weight_map) as string[])].sort();
    expect(shardNames.length).toBeGreaterThan(1);
    shardNames.forEach((name, i) => {
      expect(name).toBe(`model-${String(i + 1).padStart(5, '0')}-of-${String(shardNames.length).padStart(5, '0')}.safetensors`);
    });
    const whole = await readSafetensors(path.join(single.dir, 'model.safetensors'));
    let total = 0;
    for (const shardName of shardNames) {
      const shard = await readSafetensors(path.join(sharded.dir, shardName));
      for (const name of Object.keys(shard.tensors)) {
        expect(index.weight_map[name]).toBe(shardName);
        expect(shard.tensorData(name).equals(whole.tensorData(name))).toBe(true);
        total += shard.tensorData(name).length;
      }
    }
    expect(Object.keys(index.weight_map).sort()).toEqual(Object.keys(whole.tensors).sort());
    expect(index.metadata.total_size).toBe(total);
    expect(sharded.files.map((f) => f.name)).toContain('model.safetensors.index.json');
  });
});

describe('float conversion', () => {
  const bf16 = (x: number) => f32BitsToBf16(f32Bits(x));
  const f16 = (x: number) => f32BitsToF16(f32Bits(x));

  it('rounds to bf16 to nearest even', () => {
    expect(bf16(0)).toBe(0x0000);
    expect(bf16(-0)).toBe(0x8000);
    expect(bf16(1)).toBe(0x3f80);
    expect(bf16(Infinity)).toBe(0x7f80);
    expect(bf16(-Infinity)).toBe(0xff80);
    expect(bf16(NaN) & 0x7fc0).toBe(0x7fc0);
    expect(f32BitsToBf16(0xffc00001)).toBe(0xffc0); // a negative NaN stays a negative quiet NaN
    expect(f32BitsToBf16(0x7f800001) & 0x7fff).toBeGreaterThan(0x7f80); // never becomes inf
    expect(f32BitsToBf16(0x3f808000)).toBe(0x3f80); // tie, even stays
    expect(f32BitsToBf16(0x3f818000)).toBe(0x3f82); // tie, odd rounds up
    expect(f32BitsToBf16(0x3f808001)).toBe(0x3f81); // above the tie
    expect(f32BitsToBf16(0x00008000)).toBe(0x0000); // subnormal tie to even
    expect(f32BitsToBf16(0x00018000)).toBe(0x0002);
    expect(f32BitsToBf16(0x7f7fffff)).toBe(0x7f80); // the largest float32 overflows to inf
    expect(f32BitsToBf16(0xbf7fffff)).toBe(0xbf80); // -0.99999994 rounds to -1
  });

  it('rounds to f16 correctly', () => {
    expect(f16(0)).toBe(0x0000);
    expect(f16(-0)).toBe(0x8000);
    expect(f16(1)).toBe(0x3c00);
    expect(f16(-2)).toBe(0xc000);
    expect(f16(65504)).toBe(0x7bff);
    expect(f16(65519)).toBe(0x7bff); // below the midpoint to 65536
    expect(f16(65520)).toBe(0x7c00); // the midpoint rounds to even: inf
    expect(f16(1e6)).toBe(0x7c00);
    expect(f16(-Infinity)).toBe(0xfc00);
    expect(f16(NaN) & 0x7e00).toBe(0x7e00);
    expect(f16(2 ** -14)).toBe(0x0400); // smallest normal
    expect(f16(2 ** -24)).toBe(0x0001); // smallest subnormal
    expect(f16(2 ** -25)).toBe(0x0000); // half of it: tie to even (0)
    expect(f16(1.5 * 2 ** -24)).toBe(0x0002); // tie to even (2)
    expect(f16(2 ** -25 + 2 ** -40)).toBe(0x0001); // just above the tie
    expect(f16(2 ** -14 - 2 ** -25)).toBe(0x0400); // rounds up from subnormal to normal
    expect(f16(1 + 2 ** -11)).toBe(0x3c00); // tie, even stays
    expect(f16(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie, odd rounds up
    expect(f16(1e-10)).toBe(0x0000);
  });

  it('writes floats as Python repr does', () => {
    expect(pythonFloatRepr(500000)).toBe('500000.0');
    expect(pythonFloatRepr(1e-5)).toBe('1e-05');
    expect(pythonFloatRepr(1e-6)).toBe('1e-06');
    expect(pythonFloatRepr(0.02)).toBe('0.02');
    expect(pythonFloatRepr(0)).toBe('0.0');
    expect(pythonFloatRepr(1e16)).toBe('1e+16');
    expect(pythonFloatRepr(0.0001)).toBe('0.0001');
  });
});

describe('config.json', () => {
  const config = async (spec: ModelSpecInput) =>
    JSON.parse(await readFile(path.join((await generate(spec)).dir, 'config.json'), 'utf8'));

  it('describes a Llama with llama3 rope scaling as transformers writes it', async () => {
    const model = await generate({
      ...SMALL,
      headDim: 32,
      ropeTheta: 500000,
      tieWordEmbeddings: true,
      ropeScaling: { ropeType: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
    });
    const text = await readFile(path.join(model.dir, 'config.json'), 'utf8');
    expect(text).toContain('"rope_theta": 500000.0,');
    expect(text).toContain('"rms_norm_eps": 1e-05,');
    const c = JSON.parse(text);
    expect(Object.keys(c)).toEqual(Object.keys(c).sort());
    expect(c).toMatchObject({
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      attention_bias: false,
      mlp_bias: false,
      head_dim: 32,
      hidden_size: 64,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      tie_word_embeddings: true,
      torch_dtype: 'bfloat16',
      bos_token_id: 128000,
      eos_token_id: 128001,
      vocab_size: 1000,
      rope_scaling: {
        factor: 32,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 8192,
        rope_type: 'llama3',
      },
    });
    const files = await readdir(model.dir);
    expect(files).toEqual(expect.arrayContaining(['tokenizer.json', 'tokenizer_config.json', 'generation_config.json']));
  });

  it('describes Mistral with its sliding window and Qwen2 with its tokenizer ids', async () => {
    const mistral = await config({ ...SMALL, architecture: 'MistralForCausalLM', slidingWindow: 4096, dtype: 'f32' });
    expect(mistral).toMatchObject({ model_type: 'mistral', sliding_window: 4096, torch_dtype: 'float32' });
    expect(mistral.rope_scaling).toBeUndefined();
    const qwen = await config({ ...SMALL, architecture: 'Qwen2ForCausalLM', dtype: 'f16' });
    expect(qwen).toMatchObject({
      model_type: 'qwen2',
      torch_dtype: 'float16',
      bos_token_id: 151643,
      eos_token_id: 151645,
      use_sliding_window: false,
      rope_scaling: null,
    });
    expect(qwen.attention_bias).toBeUndefined();
  });

  it('describes Qwen3 as Qwen3Config writes it, with the Qwen3 instruct special tokens', async () => {
    const model = await generate({ ...SMALL, architecture: 'Qwen3ForCausalLM', headDim: 32, tieWordEmbeddings: true });
    const read = async (name: string) => JSON.parse(await readFile(path.join(model.dir, name), 'utf8'));
    const c = await read('config.json');
    expect(c).toEqual({
      architectures: ['Qwen3ForCausalLM'],
      attention_bias: false,
      attention_dropout: 0,
      bos_token_id: 151643,
      eos_token_id: 151645,
      head_dim: 32,
      hidden_act: 'silu',
      hidden_size: 64,
      initializer_range: 0.02,
      intermediate_size: 96,
      max_position_embeddings: 2048,
      max_window_layers: 2,
      model_type: 'qwen3',
      num_attention_heads: 4,
      num_hidden_layers: 2,
      num_key_value_heads: 2,
      rms_norm_eps: 1e-6,
      rope_scaling: null,
      rope_theta: 10000,
      sliding_window: null,
      tie_word_embeddings: true,
      torch_dtype: 'bfloat16',
      transformers_version: '4.51.0',
      use_cache: true,
      use_sliding_window: false,
      vocab_size: 1000,
    });
    expect(await read('generation_config.json')).toMatchObject({
      bos_token_id: 151643,
      eos_token_id: [151645, 151643],
      pad_token_id: 151643,
    });
    const tokenizer = await read('tokenizer_config.json');
    expect(tokenizer.eos_token).toBe('<|im_end|>');
  });

  it('writes dynamic and yarn rope scaling with only the keys given', async () => {
    const dynamic = await config({ ...SMALL, ropeScaling: { ropeType: 'dynamic', factor: 2 } });
    expect(dynamic.rope_scaling).toEqual({ rope_type: 'dynamic', factor: 2 });
    const yarn = await config({ ...SMALL, ropeScaling: { ropeType: 'yarn', factor: 4 } });
    expect(yarn.rope_scaling).toEqual({ rope_type: 'yarn', factor: 4 });
    const full = await generate({
      ...SMALL,
      ropeScaling: {
        ropeType: 'yarn',
        factor: 4,
        originalMaxPositionEmbeddings: 64,
        betaFast: 8,
        betaSlow: 2,
        attentionFactor: 1.5,
        mscale: 1,
        mscaleAllDim: 0.5,
      },
    });
    const text = await readFile(path.join(full.dir, 'config.json'), 'utf8');
    expect(text).toContain('"mscale": 1.0,');
    expect(text).toContain('"original_max_position_embeddings": 64,');
    expect(JSON.parse(text).rope_scaling).toEqual({
      rope_type: 'yarn',
      factor: 4,
      original_max_position_embeddings: 64,
      beta_fast: 8,
      beta_slow: 2,
      attention_factor: 1.5,
      mscale: 1,
      mscale_all_dim: 0.5,
    });
    expect(() => resolveSpec({ ...SMALL, ropeScaling: { ropeType: 'yarn', factor: 4, betaFast: 0 } })).toThrow(/ropeScaling/);
    expect(() =>
      resolveSpec({ ...SMALL, ropeScaling: { ropeType: 'yarn', factor: 4, originalMaxPositionEmbeddings: 6.5 } }),
    ).toThrow(/ropeScaling/);
  });

  it('writes the transformers 5 form: rope_parameters and dtype, the same weights', async () => {
    const llama3 = {
      ...SMALL,
      ropeTheta: 500000,
      ropeScaling: { ropeType: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 },
    } as const;
    const t4 = await generate(llama3);
    const t5 = await generate({ ...llama3, configFormat: 'transformers5' });
    expect(t4.spec.configFormat).toBe('transformers4');
    const read = async (m: GeneratedModel) => JSON.parse(await readFile(path.join(m.dir, 'config.json'), 'utf8'));
    const [c4, c5] = [await read(t4), await read(t5)];
    expect(c5.rope_parameters).toEqual({ ...c4.rope_scaling, rope_theta: 500000 });
    expect(c5.dtype).toBe('bfloat16');
    expect(c5.transformers_version).toBe('5.0.0');
    for (const key of ['rope_theta', 'rope_scaling', 'torch_dtype']) expect(c5).not.toHaveProperty(key);
    const { rope_theta: _theta, rope_scaling: _scaling, torch_dtype: _dtype, transformers_version: _v4, ...rest4 } = c4;
    const { rope_parameters: _parameters, dtype: _dtype5, transformers_version: _v5, ...rest5 } = c5;
    expect(rest5).toEqual(rest4);
    const weights = (m: GeneratedModel) => m.files.find((f) => f.name === 'model.safetensors')!.sha256;
    expect(weights(t5)).toBe(weights(t4));
    expect(t5.sha256).not.toBe(t4.sha256);

    const plain = await config({ ...SMALL, architecture: 'MistralForCausalLM', configFormat: 'transformers5' });
    expect(plain.rope_parameters).toEqual({ rope_theta: 10000, rope_type: 'default' });
    const qwen3 = await config({ ...SMALL, architecture: 'Qwen3ForCausalLM', configFormat: 'transformers5' });
    expect(qwen3).toMatchObject({ model_type: 'qwen3', dtype: 'bfloat16', rope_parameters: { rope_type: 'default' } });
    expect(qwen3).not.toHaveProperty('rope_scaling');
    expect(() => resolveSpec({ ...SMALL, configFormat: 'transformers6' as never })).toThrow(/configFormat/);
  });

  it('defaults the vocabulary to the full tokenizer size', async () => {
    const spec = (await generate({ ...SMALL, vocabSize: undefined, numLayers: 1, hiddenSize: 16 })).spec;
    expect(spec.vocabSize).toBe(128256);
  });
});

describe('goldens of one model in both config forms', () => {
  // The same weights and rope numbers, so the reference computes the same logits from either
  // config.json. The transformers 4 golden was computed on another machine, whose float32 sums
  // differ from this one's (its own float64 check measured 1.1e-3): its float32 logits agree
  // with the transformers 5 golden's to 1.1e-4, not to the 1e-6 of one machine, hence
  // FLOAT32_AGREEMENT (a misread rope moves logits by whole units). Their bf16MatmulInputs
  // logits (x rounded to bf16, where such differences flip roundings) agree only to ~0.04, well
  // within those goldens' own tolerance, so they are held to that tolerance.
  const FLOAT32_AGREEMENT = 2e-4;

  it('hold the same reference logits (transformers 4 and 5 forms of test-llama-gqa-llama3rope)', async () => {
    const goldensDir = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'goldens');
    const read = async (name: string) => JSON.parse(await readFile(path.join(goldensDir, name), 'utf8'));
    const t4 = await read('test-llama-gqa-llama3rope-bf16.json');
    const t5 = await read('test-llama-gqa-llama3rope-t5-bf16.json');
    expect(t5.generator).toEqual({ ...t4.generator, configFormat: 'transformers5' });
    expect(t4.generator.configFormat ?? 'transformers4').toBe('transformers4');
    expect(t5.modelSha256).not.toBe(t4.modelSha256);
    expect(t5.promptTokenIds).toEqual(t4.promptTokenIds);
    expect(t5.fixedIds).toEqual(t4.fixedIds);
    expect(t5.greedyTokenIds).toEqual(t4.greedyTokenIds);
    const close = (a: number[], b: number[], bound: number, what: string) => {
      expect(a.length, what).toBe(b.length);
      a.forEach((x, i) => expect(Math.abs(x - b[i]!), `${what}[${i}]`).toBeLessThanOrEqual(bound));
    };
    close(t5.greedyMargins, t4.greedyMargins, FLOAT32_AGREEMENT, 'greedyMargins');
    const bf16Bound = Math.min(t4.bf16MatmulInputs.tolerance.logitAbs, t5.bf16MatmulInputs.tolerance.logitAbs);
    expect(t5.positions).toHaveLength(t4.positions.length);
    t4.positions.forEach((p4: { argmax: number; topIds: number[]; topLogits: number[]; fixedLogits: number[] }, i: number) => {
      const p5 = t5.positions[i];
      expect(p5.argmax, `position ${i}`).toBe(p4.argmax);
      expect(p5.topIds, `position ${i}`).toEqual(p4.topIds);
      close(p5.topLogits, p4.topLogits, FLOAT32_AGREEMENT, `position ${i} topLogits`);
      close(p5.fixedLogits, p4.fixedLogits, FLOAT32_AGREEMENT, `position ${i} fixedLogits`);
      close(t5.bf16MatmulInputs.logits[i], t4.bf16MatmulInputs.logits[i], bf16Bound, `position ${i} bf16MatmulInputs`);
    });
  });
});

describe('ensureModel', () => {
  it('generates once into the cache, also under concurrent callers', async () => {
    const root = path.join(tmp, 'cache');
    const [a, b] = await Promise.all([ensureModel(SMALL, root), ensureModel(SMALL, root)]);
    expect(b.dir).toBe(a.dir);
    expect(b.sha256).toBe(a.sha256);
    expect(await readdir(root)).toEqual([path.basename(a.dir)]); // no temp dirs left behind
    const again = await ensureModel(SMALL, root);
    expect(again).toEqual(a);
    await expect(ensureModel('no-such-preset', root)).rejects.toThrow(/unknown preset/);
  });
});
