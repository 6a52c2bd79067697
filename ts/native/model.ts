// model.ts: the native Model (a model with a private KV pool, run synchronously) and model
// inspection, for tests and tools. Serving uses Engine.
import { loadAddon } from './loader.js';
import { callNative, invalidArgument } from './errors.js';
import type { NativeModelInfo, Model as NativeModel } from './addon.js';

export type ModelInfo = NativeModelInfo;

export function inspectModel(modelDir: string): ModelInfo {
  if (typeof modelDir !== 'string' || modelDir.length === 0) throw invalidArgument('modelDir must be a non-empty string');
  const addon = loadAddon();
  return callNative(() => addon.inspectModel(modelDir));
}

export class Model {
  private readonly native: NativeModel;
  readonly info: ModelInfo;

  constructor(modelDir: string, numThreads = 0) {
    const addon = loadAddon();
    this.native = callNative(() => new addon.Model(modelDir, numThreads));
    this.info = callNative(() => this.native.info());
  }

  // Logits [tokens.length * vocabSize] for every position of one sequence laid out on the
  // given block table (default: blocks 0, 1, 2, ... in order).
  forward(tokens: ArrayLike<number>, opts: { blockSize?: number; blockTable?: ArrayLike<number> } = {}): Float32Array {
    const blockSize = opts.blockSize ?? 16;
    const nBlocks = Math.ceil(tokens.length / blockSize);
    const table = opts.blockTable ?? Array.from({ length: nBlocks }, (_, i) => i);
    return callNative(() => this.native.forward(Int32Array.from(tokens), Int32Array.from(table), blockSize));
  }

  close(): void {
    this.native.close();
  }
}

export function blockHashes(tokens: ArrayLike<number>, blockSize: number): string[] {
  const addon = loadAddon();
  return callNative(() => addon.blockHashes(Int32Array.from(tokens), blockSize));
}
