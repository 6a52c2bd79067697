// ts/native: the addon loader and the typed binding. addon.d.ts is the native API's definition.
export { loadAddon, AddonLoadError, packageRoot } from './loader.js';
export { NativeError } from './errors.js';
export { Engine, collect, nativeEngineOptions, normaliseSampling } from './engine.js';
export type { EngineOptions, SamplingOptions, RemotePrefillOptions, KvEvent, LoadMetrics, RequestOutput } from './engine.js';
export { Model, inspectModel, blockHashes } from './model.js';
export type { ModelInfo } from './model.js';
export type * from './addon.js';
export { TransferAgent } from './transfer.js';
export type { TransferAgentOptions, TransferBackend, TransferStats } from './transfer.js';
