// cli.ts: `npm run gen-model -- --preset NAME [--out DIR] [overrides]`.
//
// Owns: argument parsing for the generator. With --out the model is written there; without it,
// into the model cache (ensureModel), and the directory is printed either way.
// Flags (each overrides the preset; --arch is required without --preset):
//   --arch Llama|Mistral|Qwen2|Qwen3 (or the full *ForCausalLM name)   --dtype bf16|f16|f32
//   --config-format transformers4|transformers5
//   --vocab-size N --hidden-size N --intermediate-size N --layers N --heads N --kv-heads N
//   --head-dim N --max-pos N --rms-norm-eps X --rope-theta X --sliding-window N --seed N
//   --init-std X --logit-std X --shard-bytes N --tie | --no-tie
//   --rope-scaling JSON, e.g. '{"ropeType":"linear","factor":2}' or
//     '{"ropeType":"yarn","factor":4,"originalMaxPositionEmbeddings":64}'

import { parseArgs } from 'node:util';

import { generateModel, type GeneratedModel } from './generate.ts';
import { ensureModel } from './model-cache.ts';
import { isPresetName, PRESETS, type PresetName } from './presets.ts';
import {
  ARCHITECTURES,
  CONFIG_FORMATS,
  type Architecture,
  type ConfigFormat,
  type ModelSpecInput,
  type RopeScaling,
} from './spec.ts';
import type { ModelDtype } from './float-encode.ts';

const NUMBER_FLAGS = {
  'vocab-size': 'vocabSize',
  'hidden-size': 'hiddenSize',
  'intermediate-size': 'intermediateSize',
  layers: 'numLayers',
  heads: 'numHeads',
  'kv-heads': 'numKvHeads',
  'head-dim': 'headDim',
  'max-pos': 'maxPositionEmbeddings',
  'rms-norm-eps': 'rmsNormEps',
  'rope-theta': 'ropeTheta',
  'sliding-window': 'slidingWindow',
  seed: 'seed',
  'init-std': 'initStd',
  'logit-std': 'logitStd',
  'shard-bytes': 'shardBytes',
} as const satisfies Record<string, keyof ModelSpecInput>;

const STRING_FLAGS = [
  'preset', 'out', 'arch', 'dtype', 'config-format', 'rope-scaling', ...Object.keys(NUMBER_FLAGS),
];
const OPTIONS = {
  ...Object.fromEntries(STRING_FLAGS.map((flag) => [flag, { type: 'string' as const }])),
  tie: { type: 'boolean' as const },
};

function parseArchitecture(text: string): Architecture {
  const match = ARCHITECTURES.find((a) => a === text || a === `${text}ForCausalLM`);
  if (match === undefined) throw new Error(`--arch: expected one of ${ARCHITECTURES.join(', ')}`);
  return match;
}

function parseNumber(flag: string, text: string): number {
  const value = Number(text);
  if (!Number.isFinite(value)) throw new Error(`--${flag}: not a number: ${text}`);
  return value;
}

function specFromArgs(values: Record<string, string | boolean | undefined>): {
  preset?: PresetName;
  input: ModelSpecInput;
} {
  const presetName = values.preset as string | undefined;
  if (presetName !== undefined && !isPresetName(presetName)) {
    throw new Error(`--preset: unknown preset ${presetName}; known: ${Object.keys(PRESETS).join(', ')}`);
  }
  const overrides: Partial<ModelSpecInput> = {};
  if (values.arch !== undefined) overrides.architecture = parseArchitecture(values.arch as string);
  if (values.dtype !== undefined) overrides.dtype = values.dtype as ModelDtype;
  if (values['config-format'] !== undefined) {
    const format = values['config-format'] as ConfigFormat;
    if (!CONFIG_FORMATS.includes(format)) throw new Error(`--config-format: expected one of ${CONFIG_FORMATS.join(', ')}`);
    overrides.configFormat = format;
  }
  if (values['rope-scaling'] !== undefined) {
    overrides.ropeScaling = JSON.parse(values['rope-scaling'] as string) as RopeScaling;
  }
  if (values.tie !== undefined) overrides.tieWordEmbeddings = values.tie as boolean;
  for (const [flag, key] of Object.entries(NUMBER_FLAGS)) {
    const text = values[flag];
    if (text !== undefined) overrides[key] = parseNumber(flag, text as string);
  }
  const base = presetName === undefined ? undefined : PRESETS[presetName];
  const architecture = overrides.architecture ?? base?.architecture;
  if (architecture === undefined) throw new Error('give --preset or --arch');
  return { preset: presetName, input: { ...base, ...overrides, architecture } };
}

async function main(): Promise<void> {
  const values: Record<string, string | boolean | undefined> = parseArgs({
    options: OPTIONS,
    allowNegative: true,
  }).values;
  const { preset, input } = specFromArgs(values);
  const started = performance.now();
  const model: GeneratedModel =
    typeof values.out === 'string'
      ? await generateModel({ ...input, outDir: values.out })
      : await ensureModel({ ...input, preset });
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  console.log(`${model.dir}\n  ${model.numParams} parameters, sha256 ${model.sha256} (${seconds} s)`);
}

main().catch((error: unknown) => {
  console.error(`gen-model: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
});
