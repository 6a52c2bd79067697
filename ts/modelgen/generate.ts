// generate.ts: writes a random-weight model in the Hugging Face layout, deterministically.
//
// Owns: generateModel. A model directory holds config.json, generation_config.json,
// tokenizer.json + tokenizer_config.json (copied from the tokenizer package), the weights as
// model.safetensors, or model-0000N-of-0000M.safetensors + model.safetensors.index.json when
// shardBytes splits them, and modelgen.json (the resolved spec and the hashes below).
// Stays true: the same spec gives the same bytes on any machine. The model's sha256 is the
// sha256 of the `sha256sum`-style lines ("<file sha256>  <name>\n", sorted by name) of the files
// generated here (configs and weights; not the copied tokenizer files nor modelgen.json).
// Weights are streamed: a 1B-parameter model never sits in memory.

import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';

import { DTYPE_BYTES, encodeChunk } from './float-encode.ts';
import { configJson, copyTokenizerFiles, generationConfigJson, pythonJson } from './hf-files.ts';
import { TensorRandom } from './random.ts';
import { tensorBytes, writeSafetensorsFile, type TensorSource } from './safetensors-writer.ts';
import {
  modelTensors,
  numElements,
  resolveSpec,
  type ModelSpec,
  type ModelSpecInput,
  type TensorSpec,
} from './spec.ts';

export interface GenerateOptions extends ModelSpecInput {
  outDir: string; // created if missing; existing files of the same names are overwritten
}

export interface GeneratedFile {
  name: string;
  bytes: number;
  sha256: string;
}

export interface GeneratedModel {
  dir: string;
  spec: ModelSpec;
  sha256: string;
  files: GeneratedFile[]; // the hashed files, sorted by name
  numParams: number;
}

export const MANIFEST_FILE = 'modelgen.json';

export async function generateModel(options: GenerateOptions): Promise<GeneratedModel> {
  const { outDir, ...input } = options;
  const spec = resolveSpec(input);
  await mkdir(outDir, { recursive: true });
  const files = [
    await writeTextFile(outDir, 'config.json', configJson(spec)),
    await writeTextFile(outDir, 'generation_config.json', generationConfigJson(spec)),
    ...(await writeWeights(outDir, spec)),
  ].sort((a, b) => (a.name < b.name ? -1 : 1));
  await copyTokenizerFiles(spec.architecture, outDir);
  const model: GeneratedModel = {
    dir: outDir,
    spec,
    sha256: combinedSha256(files),
    files,
    numParams: modelTensors(spec).reduce((sum, t) => sum + numElements(t.shape), 0),
  };
  const { dir: _dir, ...manifest } = model;
  await writeFile(path.join(outDir, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
  return model;
}

export function combinedSha256(files: readonly GeneratedFile[]): string {
  const lines = files.map((f) => `${f.sha256}  ${f.name}\n`).join('');
  return createHash('sha256').update(lines).digest('hex');
}

async function writeTextFile(dir: string, name: string, text: string): Promise<GeneratedFile> {
  const bytes = Buffer.from(text, 'utf8');
  await writeFile(path.join(dir, name), bytes);
  return { name, bytes: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') };
}

async function writeWeights(dir: string, spec: ModelSpec): Promise<GeneratedFile[]> {
  const sources = modelTensors(spec).map((t) => randomSource(spec, t));
  const shards = splitIntoShards(sources, spec.shardBytes);
  if (shards.length === 1) {
    const written = await writeSafetensorsFile(path.join(dir, 'model.safetensors'), sources);
    return [{ name: 'model.safetensors', ...written }];
  }
  const files: GeneratedFile[] = [];
  const weightMap: Record<string, string> = {};
  for (const [i, shard] of shards.entries()) {
    const name = shardFileName(i, shards.length);
    files.push({ name, ...(await writeSafetensorsFile(path.join(dir, name), shard)) });
    for (const t of shard) weightMap[t.name] = name;
  }
  const totalSize = sources.reduce((sum, t) => sum + tensorBytes(t), 0);
  const index = pythonJson({ metadata: { total_size: totalSize }, weight_map: weightMap });
  files.push(await writeTextFile(dir, 'model.safetensors.index.json', index));
  return files;
}

export function shardFileName(index: number, count: number): string {
  const pad = (n: number) => String(n).padStart(5, '0');
  return `model-${pad(index + 1)}-of-${pad(count)}.safetensors`;
}

// Fills shards in state_dict order, starting a new one when the next tensor would push the
// current one past maxBytes (a tensor larger than maxBytes gets a shard of its own).
function splitIntoShards(sources: TensorSource[], maxBytes: number | null): TensorSource[][] {
  if (maxBytes === null) return [sources];
  const shards: TensorSource[][] = [];
  let current: TensorSource[] = [];
  let currentBytes = 0;
  for (const source of sources) {
    const bytes = tensorBytes(source);
    if (current.length > 0 && currentBytes + bytes > maxBytes) {
      shards.push(current);
      current = [];
      currentBytes = 0;
    }
    current.push(source);
    currentBytes += bytes;
  }
  shards.push(current);
  return shards;
}

// One tensor's values, drawn chunk by chunk from its own random stream.
function randomSource(spec: ModelSpec, tensor: TensorSpec): TensorSource {
  const elementBytes = DTYPE_BYTES[spec.dtype];
  return {
    name: tensor.name,
    dtype: spec.dtype,
    shape: tensor.shape,
    open: () => {
      const random = new TensorRandom(spec.seed, tensor.name);
      let values = new Float32Array(0);
      return (out) => {
        const count = out.length / elementBytes;
        if (values.length < count) values = new Float32Array(count);
        const chunk = values.subarray(0, count);
        random.fillNormal(chunk, tensor.init.mean, tensor.init.std);
        encodeChunk(chunk, spec.dtype, out);
      };
    },
  };
}
