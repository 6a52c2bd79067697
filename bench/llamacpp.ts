// llamacpp.ts: llama.cpp as the peer, through node-llama-cpp (pinned 3.21.1), CPU only.
//
// Owns: loading llama.cpp (node-llama-cpp from the peer cache, installed there on first use by
// peer.ts; its prebuilt CPU binaries, never a download or a source build), opening a GGUF with a one-sequence context of `threads` threads, greedy
// decoding from token ids, teacher-forced next-token log-probabilities, and the two speeds the
// engine benchmark compares against: prompt processing in one batch, and batch-1 decode.
// Stays true: token ids go in and come out unchanged (no BOS, no chat template, no detokenizing);
// greedy is temperature 0 with no repeat penalty; every model and context is disposed.

import fs from 'node:fs';

import { importNodeLlamaCpp } from './peer.ts';

// The part of node-llama-cpp 3.21.1's API used here (the package lives in the peer cache, not in
// node_modules, so its own declarations are not where tsc looks).
type Token = number & { __token?: never };
interface GenerateNextOptions {
  probabilities: boolean;
  options: { temperature: number; topK: number; topP: number; minP: number };
}
export interface LlamaContextSequence {
  readonly context: { readonly idealThreads: number; readonly flashAttention: boolean | 'auto' };
  evaluate(tokens: Token[], options: { temperature: number }): AsyncGenerator<Token, void>;
  evaluateWithoutGeneratingNewTokens(tokens: Token[]): Promise<void>;
  controlledEvaluate(
    input: (Token | [Token, { generateNext: GenerateNextOptions }])[],
  ): Promise<({ next: { probabilities?: Map<Token, number> } } | undefined)[]>;
  clearHistory(): Promise<void>;
}
interface LlamaContext {
  getSequence(): LlamaContextSequence;
  dispose(): Promise<void>;
}
interface LlamaModel {
  createContext(options: {
    contextSize: number;
    batchSize: number;
    threads: { ideal: number; min: number };
    sequences: number;
    flashAttention?: boolean;
    experimentalKvCacheKeyType?: string;
    experimentalKvCacheValueType?: string;
  }): Promise<LlamaContext>;
  dispose(): Promise<void>;
}
interface Llama {
  loadModel(options: { modelPath: string; gpuLayers: number }): Promise<LlamaModel>;
}
interface NodeLlamaCpp {
  getLlama(options: { gpu: false; build: 'never'; logLevel: string }): Promise<Llama>;
  LlamaLogLevel: { error: string };
}

let llamaPromise: Promise<Llama> | undefined;
let llamaCpuVariant: string | undefined;

// Which of llama.cpp's CPU builds (libggml-cpu-VARIANT.so) the next load takes: undefined (the
// default) lets llama.cpp pick the best this CPU runs; a name keeps only that one
// (nodeLlamaCppCpuVariantDir). Set it before the first openLlamaCpp of the process.
export function useLlamaCppCpuVariant(variant: string | undefined): void {
  if (llamaPromise && variant !== llamaCpuVariant) throw new Error('llama.cpp is already loaded in this process: choose its CPU variant first');
  llamaCpuVariant = variant;
}

// One llama.cpp instance per process, CPU only, from the prebuilt binaries.
function loadLlamaCpp(): Promise<Llama> {
  llamaPromise ??= importNodeLlamaCpp<NodeLlamaCpp>(llamaCpuVariant).then(({ getLlama, LlamaLogLevel }) =>
    getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error }),
  );
  return llamaPromise;
}

// The CPU build llama.cpp loaded in this process (the VARIANT of the libggml-cpu-VARIANT.so
// mapped into it, from /proc/self/maps), or undefined where none is mapped or /proc is absent.
export function loadedLlamaCppCpuVariant(): string | undefined {
  try {
    return /libggml-cpu-([A-Za-z0-9_]+)\.so/.exec(fs.readFileSync('/proc/self/maps', 'utf8'))?.[1];
  } catch {
    return undefined;
  }
}

export interface LlamaCppContextOptions {
  threads: number;
  contextSize: number;
  batchSize: number;
  kvCacheType?: 'F16' | 'BF16' | 'F32'; // default: llama.cpp's (F16)
  flashAttention?: boolean; // default: llama.cpp's (auto: on for CPU; it rounds Q and K/V to F16)
}

export interface LlamaCppSession {
  seq: LlamaContextSequence; // the one sequence of a fresh context
  close(): Promise<void>; // disposes the context and the model
}

export async function openLlamaCpp(ggufPath: string, opts: LlamaCppContextOptions): Promise<LlamaCppSession> {
  const llama = await loadLlamaCpp();
  const model = await llama.loadModel({ modelPath: ggufPath, gpuLayers: 0 });
  try {
    const context = await model.createContext({
      contextSize: opts.contextSize,
      batchSize: opts.batchSize,
      threads: { ideal: opts.threads, min: opts.threads },
      sequences: 1,
      flashAttention: opts.flashAttention,
      experimentalKvCacheKeyType: opts.kvCacheType,
      experimentalKvCacheValueType: opts.kvCacheType,
    });
    return {
      seq: context.getSequence(),
      close: async () => {
        await context.dispose();
        await model.dispose();
      },
    };
  } catch (error) {
    await model.dispose();
    throw error;
  }
}

// Opens ggufPath, runs fn on its sequence, and closes it.
export async function withLlamaCpp<T>(ggufPath: string, opts: LlamaCppContextOptions, fn: (seq: LlamaContextSequence) => Promise<T>): Promise<T> {
  const session = await openLlamaCpp(ggufPath, opts);
  try {
    return await fn(session.seq);
  } finally {
    await session.close();
  }
}

// Greedy continuation of prompt: steps token ids.
export async function llamaCppGreedy(seq: LlamaContextSequence, prompt: number[], steps: number): Promise<number[]> {
  const out: number[] = [];
  for await (const token of seq.evaluate(prompt as Token[], { temperature: 0 })) {
    out.push(token);
    if (out.length === steps) break;
  }
  return out;
}

// Teacher forcing: evaluates tokens and returns, after each of tokens[from..], the top k next
// tokens with their log-probabilities renormalised over those k (so differences between them are
// logit differences), highest first.
export async function llamaCppTopNext(seq: LlamaContextSequence, tokens: number[], from: number, k: number): Promise<[number, number][][]> {
  const next = { probabilities: true, options: { temperature: 1, topK: k, topP: 1, minP: 0 } };
  const results = await seq.controlledEvaluate(tokens.map((t, i) => (i >= from ? [t as Token, { generateNext: next }] : (t as Token))));
  return results.slice(from).map((r) => [...r!.next.probabilities!].map(([token, p]) => [token, Math.log(p)]));
}

export interface LlamaCppSpeed {
  threads: number;
  flashAttention: boolean | 'auto';
  promptTokens: number;
  prefillTokensPerSecond: number;
  decodeTokens: number;
  decodeTokensPerSecond: number;
}

// Prompt processing of promptIds (one batch), then batch-1 decode of decodeTokens tokens after a
// short prompt, timed from the first generated token. A warm-up pass first pages the weights in.
export async function llamaCppSpeed(seq: LlamaContextSequence, promptIds: number[], decodeTokens: number): Promise<LlamaCppSpeed> {
  await llamaCppGreedy(seq, promptIds.slice(0, 8), 2);
  await seq.clearHistory();

  let start = performance.now();
  await seq.evaluateWithoutGeneratingNewTokens(promptIds as Token[]);
  const prefillSeconds = (performance.now() - start) / 1000;
  await seq.clearHistory();

  let produced = 0;
  for await (const _ of seq.evaluate(promptIds.slice(0, 16) as Token[], { temperature: 0 })) {
    if (produced === 0) start = performance.now();
    if (++produced === decodeTokens + 1) break;
  }
  const decodeSeconds = (performance.now() - start) / 1000;
  await seq.clearHistory();
  return {
    threads: seq.context.idealThreads,
    flashAttention: seq.context.flashAttention,
    promptTokens: promptIds.length,
    prefillTokensPerSecond: promptIds.length / prefillSeconds,
    decodeTokens,
    decodeTokensPerSecond: decodeTokens / decodeSeconds,
  };
}
