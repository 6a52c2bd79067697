// generation-config.ts: the sampling defaults a model ships in generation_config.json, for the
// requests (chat and completions) that leave them unset: vLLM's --generation-config.
//
//   auto  (the default) the model directory's generation_config.json; without one, the same keys
//         in its config.json (vLLM reads the file through transformers' GenerationConfig, which
//         falls back to config.json the same way);
//   vllm  no defaults: the request's values or the neutral ones;
//   DIR   DIR/generation_config.json (refused when missing; vLLM would serve without defaults).
//
// Keys taken, as vLLM (and only these; vLLM takes no others):
//   temperature, top_p, top_k, min_p, repetition_penalty: the value for a request that does not
//     set the field (a field set to null counts as not set);
//   max_new_tokens: caps every request's max_tokens (vLLM takes the smallest of the request's
//     max_tokens, the room left in the context and this).
// Every other key is left alone, as vLLM does: `do_sample` included (`do_sample: false` with a
// temperature still samples at that temperature, in vLLM too), and num_beams, max_length,
// bos/eos (the engine reads those) and the rest. A key set to null is absent. A value equal to
// transformers' own default (temperature 1, top_p 1, top_k 50, repetition_penalty 1) is not
// applied, since GenerationConfig drops it before vLLM sees it: for top_k 50 this matters, and the
// start-up line says so.
// A value of the wrong type or out of the range a request may use is refused, naming the file and
// the key.
import fs from 'node:fs';
import path from 'node:path';
import { ProcessorError } from './errors.js';

// 'auto', 'vllm' or a directory.
export type GenerationConfigSetting = string;

export interface SamplingDefaults {
  readonly temperature?: number;
  readonly topP?: number;
  readonly topK?: number;
  readonly minP?: number;
  readonly repetitionPenalty?: number;
  readonly maxTokens?: number; // from max_new_tokens: a cap on every request's max_tokens
}

export interface LoadedSamplingDefaults {
  readonly setting: GenerationConfigSetting;
  readonly defaults: SamplingDefaults;
  readonly source: string | null; // the file the defaults came from; null: none read
  readonly notApplied: readonly string[]; // keys present but not applied, with why
}

interface KeyRule {
  readonly key: string;
  readonly field: keyof SamplingDefaults;
  readonly integer: boolean;
  readonly min: number;
  readonly minExclusive: boolean;
  readonly max: number;
  readonly transformersDefault: number | null;
}

// The ranges are the request's (schemas.ts), so a default never asks the engine for more.
const rules: readonly KeyRule[] = [
  { key: 'temperature', field: 'temperature', integer: false, min: 0, minExclusive: false, max: 2, transformersDefault: 1 },
  { key: 'top_p', field: 'topP', integer: false, min: 0, minExclusive: true, max: 1, transformersDefault: 1 },
  { key: 'top_k', field: 'topK', integer: true, min: -1, minExclusive: false, max: Number.MAX_SAFE_INTEGER, transformersDefault: 50 },
  { key: 'min_p', field: 'minP', integer: false, min: 0, minExclusive: false, max: 1, transformersDefault: null },
  { key: 'repetition_penalty', field: 'repetitionPenalty', integer: false, min: 0, minExclusive: true, max: 2, transformersDefault: 1 },
  { key: 'max_new_tokens', field: 'maxTokens', integer: true, min: 1, minExclusive: false, max: Number.MAX_SAFE_INTEGER, transformersDefault: null },
];

function invalid(file: string, message: string): ProcessorError {
  return new ProcessorError('ERR_GENERATION_CONFIG_INVALID', `${file}: ${message}`);
}

function readJsonObject(file: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw invalid(file, `cannot be read as JSON: ${(err as Error).message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw invalid(file, 'must hold a JSON object');
  return value as Record<string, unknown>;
}

function isFile(p: string): boolean {
  return fs.existsSync(p) && fs.statSync(p).isFile();
}

export function loadSamplingDefaults(setting: GenerationConfigSetting, modelDir: string): LoadedSamplingDefaults {
  if (setting === 'vllm') return { setting, defaults: {}, source: null, notApplied: [] };
  let file: string;
  if (setting === 'auto') {
    file = path.join(modelDir, 'generation_config.json');
    if (!isFile(file)) file = path.join(modelDir, 'config.json');
    if (!isFile(file)) return { setting, defaults: {}, source: null, notApplied: [] };
  } else {
    const dir = path.resolve(setting);
    file = path.join(dir, 'generation_config.json');
    if (!isFile(file)) {
      throw new ProcessorError('ERR_GENERATION_CONFIG_INVALID', `--generation-config ${setting}: ${file} not found (give auto, vllm, or a directory holding a generation_config.json)`);
    }
  }
  const json = readJsonObject(file);
  const defaults: Record<string, number> = {};
  const notApplied: string[] = [];
  for (const rule of rules) {
    const value = json[rule.key];
    if (value === undefined || value === null) continue;
    if (typeof value !== 'number' || !Number.isFinite(value) || (rule.integer && !Number.isInteger(value))) {
      throw invalid(file, `"${rule.key}" must be ${rule.integer ? 'an integer' : 'a number'}, got ${JSON.stringify(value)}`);
    }
    const low = rule.minExclusive ? value <= rule.min : value < rule.min;
    if (low || value > rule.max) {
      const range = `${rule.minExclusive ? '(' : '['}${rule.min}, ${rule.max === Number.MAX_SAFE_INTEGER ? 'inf)' : `${rule.max}]`}`;
      throw invalid(file, `"${rule.key}" must be in ${range}, got ${value}`);
    }
    if (value === rule.transformersDefault) {
      if (rule.key === 'top_k') notApplied.push(`top_k=${value} (transformers' default, which vLLM does not apply either)`);
      continue;
    }
    defaults[rule.field] = value;
  }
  return { setting, defaults: defaults as SamplingDefaults, source: file, notApplied };
}

// The start-up log line.
export function describeSamplingDefaults(loaded: LoadedSamplingDefaults): string {
  if (loaded.setting === 'vllm') return 'generation config: none (--generation-config vllm): requests get their own sampling values or the neutral ones';
  const names: Record<keyof SamplingDefaults, string> = {
    temperature: 'temperature',
    topP: 'top_p',
    topK: 'top_k',
    minP: 'min_p',
    repetitionPenalty: 'repetition_penalty',
    maxTokens: 'max_new_tokens (caps max_tokens)',
  };
  const applied = (Object.keys(loaded.defaults) as (keyof SamplingDefaults)[]).map((k) => `${names[k]}=${loaded.defaults[k]}`);
  const from = loaded.source ?? 'the model directory (no generation_config.json or config.json)';
  const skipped = loaded.notApplied.length > 0 ? `; not applied: ${loaded.notApplied.join(', ')}` : '';
  if (applied.length === 0) return `generation config: no sampling defaults in ${from}${skipped}`;
  return `generation config: sampling defaults from ${from} for requests that leave them unset: ${applied.join(', ')}${skipped} (--generation-config vllm turns them off)`;
}
