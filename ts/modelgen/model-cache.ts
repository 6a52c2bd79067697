// model-cache.ts: generate-once model directories shared by tests, benchmarks and the server.
//
// Owns: ensureModel and the cache layout: <cacheRoot>/<label>-<key>/ where key is a hash of the
// resolved spec, the generator version and the tokenizer package version, and label is the
// preset name (or architecture) and dtype, for humans.
// Stays true: a model directory appears in the cache only complete: it is generated into a
// private temp directory and renamed into place; of concurrent generators the first rename wins
// and the others discard their copy. Cache root: $KVSERVE_CACHE, else ~/.cache/kvserve/models.

import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { generateModel, MANIFEST_FILE, type GeneratedModel } from './generate.ts';
import { tokenizerPackageId } from './hf-files.ts';
import { isPresetName, PRESETS, type PresetName } from './presets.ts';
import { resolveSpec, type ModelSpec, type ModelSpecInput } from './spec.ts';

// Bump when the bytes generated for an unchanged spec change, so old cache entries go unused.
const GENERATOR_VERSION = 1;

export function defaultCacheRoot(): string {
  return process.env.KVSERVE_CACHE || path.join(os.homedir(), '.cache', 'kvserve', 'models');
}

// A preset name (checked at run time), or a spec, optionally with the preset it came from (for
// the directory label).
export type ModelRequest = PresetName | string | (ModelSpecInput & { preset?: PresetName });

export async function ensureModel(
  request: ModelRequest,
  cacheRoot: string = defaultCacheRoot(),
): Promise<GeneratedModel> {
  const { label, spec } = resolveRequest(request);
  const key = await cacheKey(spec);
  const dir = path.join(cacheRoot, `${label}-${spec.dtype}-${key}`);
  const cached = await readManifest(dir);
  if (cached !== null) return cached;

  await mkdir(cacheRoot, { recursive: true });
  const tempDir = path.join(cacheRoot, `.tmp-${key}-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    await generateModel({ ...spec, outDir: tempDir });
    await rename(tempDir, dir).catch(async (error: NodeJS.ErrnoException) => {
      if (error.code !== 'ENOTEMPTY' && error.code !== 'EEXIST') throw error;
    });
  } finally {
    await rm(tempDir, { recursive: true, force: true });
  }
  const model = await readManifest(dir);
  if (model === null) throw new Error(`modelgen: ${dir} is incomplete after generation`);
  return model;
}

function resolveRequest(request: ModelRequest): { label: string; spec: ModelSpec } {
  if (typeof request === 'string') {
    if (!isPresetName(request)) throw new Error(`modelgen: unknown preset ${request}`);
    return { label: request, spec: resolveSpec(PRESETS[request]) };
  }
  const { preset, ...input } = request;
  return { label: preset ?? input.architecture, spec: resolveSpec(input) };
}

async function cacheKey(spec: ModelSpec): Promise<string> {
  const tokenizer = await tokenizerPackageId(spec.architecture);
  const text = JSON.stringify({ generator: GENERATOR_VERSION, tokenizer, spec });
  return createHash('sha256').update(text).digest('hex').slice(0, 16);
}

async function readManifest(dir: string): Promise<GeneratedModel | null> {
  try {
    const manifest = JSON.parse(await readFile(path.join(dir, MANIFEST_FILE), 'utf8'));
    return { dir, ...manifest } as GeneratedModel;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
}
