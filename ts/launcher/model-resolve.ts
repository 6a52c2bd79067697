// model-resolve.ts: turns --model into a model directory.
//   - an existing directory: used as is;
//   - ORG/NAME: looked up in the local Hugging Face cache layout
//       <hub>/models--ORG--NAME/snapshots/<rev>/   (rev from refs/main, else the newest snapshot)
//     where <hub> is $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub;
//   - absent: the built-in default model, generated deterministically on first use.
// Nothing is downloaded. A model that cannot be found names every place that was looked at.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ensureModel } from '../modelgen/index.ts';

export const DEFAULT_MODEL_NAME = 'kvserve/tiny-llama';
const DEFAULT_MODEL_PRESET = 'tiny-llama';

export class ModelNotFoundError extends Error {
  readonly code = 'ERR_MODEL_NOT_FOUND';
  constructor(model: string, looked: string[]) {
    super(`model '${model}' was not found; looked in:\n${looked.map((p) => `  - ${p}`).join('\n')}\n` +
      'Give a model directory, or an id already in the local Hugging Face cache (nothing is downloaded).');
    this.name = 'ModelNotFoundError';
  }
}

export interface ResolvedModel {
  name: string; // what clients send as "model"
  dir: string;
  generated: boolean;
}

export function hfHubDirs(env: NodeJS.ProcessEnv = process.env): string[] {
  if (env.HF_HUB_CACHE) return [env.HF_HUB_CACHE];
  if (env.HF_HOME) return [path.join(env.HF_HOME, 'hub')];
  return [path.join(os.homedir(), '.cache', 'huggingface', 'hub')];
}

function snapshotOf(repoDir: string): string | undefined {
  const snapshots = path.join(repoDir, 'snapshots');
  if (!fs.existsSync(snapshots)) return undefined;
  const ref = path.join(repoDir, 'refs', 'main');
  if (fs.existsSync(ref)) {
    const dir = path.join(snapshots, fs.readFileSync(ref, 'utf8').trim());
    if (fs.existsSync(dir)) return dir;
  }
  const revs = fs
    .readdirSync(snapshots)
    .map((r) => path.join(snapshots, r))
    .filter((d) => fs.statSync(d).isDirectory())
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs);
  return revs[0];
}

export async function resolveModel(model: string | undefined, env: NodeJS.ProcessEnv = process.env): Promise<ResolvedModel> {
  if (model === undefined) {
    const { dir } = await ensureModel(DEFAULT_MODEL_PRESET);
    return { name: DEFAULT_MODEL_NAME, dir, generated: true };
  }
  const looked: string[] = [];
  const asDir = path.resolve(model);
  looked.push(asDir);
  if (fs.existsSync(asDir) && fs.statSync(asDir).isDirectory()) return { name: model, dir: asDir, generated: false };
  if (/^[\w.-]+\/[\w.-]+$/.test(model)) {
    const [org, name] = model.split('/');
    for (const hub of hfHubDirs(env)) {
      const repo = path.join(hub, `models--${org}--${name}`);
      looked.push(path.join(repo, 'snapshots', '<rev>'));
      const snap = snapshotOf(repo);
      if (snap) return { name: model, dir: snap, generated: false };
    }
  }
  throw new ModelNotFoundError(model, looked);
}
