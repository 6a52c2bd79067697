// index.ts: the model generator's public API (see generate.ts for the directory it writes,
// spec.ts for the options and the initialisation, model-cache.ts for ensureModel).

export { generateModel, combinedSha256, type GeneratedFile, type GeneratedModel, type GenerateOptions } from './generate.ts';
export { ensureModel, defaultCacheRoot, type ModelRequest } from './model-cache.ts';
export { PRESETS, isPresetName, type PresetName } from './presets.ts';
export {
  resolveSpec,
  ARCHITECTURES,
  CONFIG_FORMATS,
  type Architecture,
  type ConfigFormat,
  type ModelSpec,
  type ModelSpecInput,
  type RopeScaling,
} from './spec.ts';
export type { ModelDtype } from './float-encode.ts';
