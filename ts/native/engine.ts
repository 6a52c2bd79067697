// engine.ts: the typed, validated face of the native engine for the rest of the TS code.
//
// Owns: one native Engine, the per-request output streams, and the listeners for KV events and
// load metrics.
// Stays true: arguments are validated and normalised here, in labelled steps, before anything
// reaches native code (which gets only primitives and typed arrays); every stream ends, with
// its finish reason, with an abort, or with ERR_ENGINE_CLOSED when the engine closes.
import { loadAddon } from './loader.js';
import { NativeError, callNative, invalidArgument } from './errors.js';
import { REQUEST_LIMITS } from './request-limits.js';
import type {
  NativeEngineInfo,
  NativeKvEvent,
  NativeKvRegion,
  NativeLoadMetrics,
  NativeRequest,
  NativeRequestLimits,
  NativeRequestOutput,
  NativeStepOutput,
  Engine as NativeEngine,
} from './addon.js';

export type EngineDevice = 'cpu' | 'cuda' | 'auto';

export interface EngineOptions {
  modelDir: string;
  workerId?: string;
  blockSize?: number; // [1, 1024], default 16
  maxModelLen?: number; // 0 / absent = the model's
  maxNumSeqs?: number; // default 64
  maxNumBatchedTokens?: number; // default 2048
  numKvBlocks?: number; // absent = from kvCacheBytes
  kvCacheBytes?: number; // absent = sized by the engine (at most 1 GiB)
  numThreads?: number; // 0 / absent = all cores
  // CPU: the engine's threads (every rank's) take the allowed CPUs [cpuOffset, cpuOffset +
  // numThreads), so engines side by side get disjoint cores; absent = the first numThreads.
  cpuOffset?: number;
  // CPU kernel paths with a packed layout (amx: AMX tile order; avx512-bf16, avx2: bf16
  // pairs): keep a private copy of the matmul weights in it (default true: faster prefill and
  // batched decode, one more copy of the weights in memory); false reads them from the model
  // files' mapping, which every process loading that model shares.
  cpuTileWeights?: boolean;
  enablePrefixCaching?: boolean; // default true
  kvSharedMemory?: boolean; // default false: put the KV pool in shm for the transfer agent
  device?: EngineDevice; // default 'cpu'; 'auto' = cuda when a device is usable, else cpu
  seed?: number; // default 0
  // Tensor parallelism (CPU and CUDA): this engine is rank 0 of tpSize ranks meeting in the shared-memory
  // segment tpGroup; ranks 1..tpSize-1 are processes already started with the same options
  // (runTensorParallelRank; ts/worker/tp-ranks.ts starts them), tpRankPids their pids.
  tpSize?: number; // [1, 64], default 1
  tpGroup?: string;
  tpRankPids?: number[];
  // Structured output: how long a step waits for a constrained request's next token mask
  // (setTokenMask) before finishing that request with an error; [1, 3600000] ms, default 10000.
  tokenMaskTimeoutMs?: number;
}

// The options as the addon takes them, checked and with defaults (new Engine and the ranks of a
// tensor-parallel worker both use this).
export function nativeEngineOptions(opts: EngineOptions) {
  if (!opts || typeof opts.modelDir !== 'string' || opts.modelDir.length === 0) {
    throw invalidArgument('modelDir must be a non-empty string');
  }
  const tpSize = checkInt('tpSize', opts.tpSize ?? 1, 1, 64);
  const tpGroup = opts.tpGroup ?? '';
  if (typeof tpGroup !== 'string' || (tpSize > 1 && !/^\/[A-Za-z0-9._-]{1,200}$/.test(tpGroup))) {
    throw invalidArgument(`tpGroup must name a shared-memory segment ('/name') when tpSize > 1, got ${String(tpGroup)}`);
  }
  const pids = opts.tpRankPids ?? [];
  if (!Array.isArray(pids)) throw invalidArgument('tpRankPids must be an array of pids');
  return {
    modelDir: opts.modelDir,
    workerId: opts.workerId ?? 'worker-0',
    blockSize: checkInt('blockSize', opts.blockSize ?? 16, 1, 1024),
    maxModelLen: checkInt('maxModelLen', opts.maxModelLen ?? 0, 0, INT_MAX),
    maxNumSeqs: checkInt('maxNumSeqs', opts.maxNumSeqs ?? 64, 1, 4096),
    maxNumBatchedTokens: checkInt('maxNumBatchedTokens', opts.maxNumBatchedTokens ?? 2048, 1, INT_MAX),
    numKvBlocks: checkInt('numKvBlocks', opts.numKvBlocks ?? 0, 0, INT_MAX),
    kvCacheBytes: checkInt('kvCacheBytes', opts.kvCacheBytes ?? 0, 0, Number.MAX_SAFE_INTEGER),
    numThreads: checkInt('numThreads', opts.numThreads ?? 0, 0, 1024),
    cpuOffset: checkInt('cpuOffset', opts.cpuOffset ?? -1, -1, 1023),
    cpuTileWeights: opts.cpuTileWeights ?? true,
    enablePrefixCaching: opts.enablePrefixCaching ?? true,
    kvSharedMemory: opts.kvSharedMemory ?? false,
    device: checkDevice(opts.device ?? 'cpu'),
    seed: checkInt('seed', opts.seed ?? 0, 0, 2 ** 32 - 1),
    tpSize,
    tpGroup,
    tpRankPids: Int32Array.from(pids.map((p, i) => checkInt(`tpRankPids[${i}]`, p, 1, INT_MAX))),
    tokenMaskTimeoutMs: checkInt('tokenMaskTimeoutMs', opts.tokenMaskTimeoutMs ?? 10000, 1, 3_600_000),
  };
}

export interface SamplingOptions {
  maxTokens?: number; // default 16
  minTokens?: number;
  temperature?: number; // default 1; 0 = greedy
  topP?: number;
  topK?: number; // 0 / -1 = off
  minP?: number;
  seed?: number; // uint32
  repetitionPenalty?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
  stopTokenIds?: number[];
  ignoreEos?: boolean;
  logprobs?: number; // top-N logprobs, N in [0, maxLogprobs] (20)
  priority?: number; // scheduling priority, an int32, lower first (NativeRequest.priority); default 0
}

// How a request starts, beyond its prompt and sampling (see NativeRequest in addon.d.ts).
export interface RemotePrefillOptions {
  // Remote prefill hooks (DESIGN.md section 4).
  numExternalTokens?: number; // [0, prompt length - 1], default 0
  prefillOnly?: boolean; // default false
  // A resumed request (request migration): the tokens it generated before, on a worker that went
  // away; fewer than maxTokens, which stays the request's total. Default none.
  outputTokenIds?: ArrayLike<number>;
  // Structured output: makes the request constrained; the allowed-token mask of its first sampled
  // output (index outputTokenIds.length), info.tokenMaskWords int32 words in XGrammar's layout
  // (NativeRequest.tokenMask). Each later output's mask goes in with Engine.setTokenMask.
  tokenMask?: Int32Array;
}

export type { NativeKvEvent as KvEvent, NativeLoadMetrics as LoadMetrics, NativeRequestOutput as RequestOutput };

// A pull stream of one request's outputs.
class OutputStream implements AsyncIterable<NativeRequestOutput> {
  private queue: NativeRequestOutput[] = [];
  private waiter: (() => void) | undefined;
  private error: Error | undefined;
  done = false;

  push(o: NativeRequestOutput): void {
    this.queue.push(o);
    if (o.finishReason) this.done = true;
    this.wake();
  }

  fail(err: Error): void {
    this.error = err;
    this.done = true;
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<NativeRequestOutput> {
    for (;;) {
      if (this.queue.length > 0) {
        const o = this.queue.shift()!;
        yield o;
        if (o.finishReason) return;
        continue;
      }
      if (this.error) throw this.error;
      if (this.done) return;
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
  }
}

function checkInt(name: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw invalidArgument(`${name} must be an integer in [${min}, ${max}], got ${String(v)}`);
  }
  return v;
}

function checkDevice(v: unknown): EngineDevice {
  if (v !== 'cpu' && v !== 'cuda' && v !== 'auto') throw invalidArgument(`device must be 'cpu', 'cuda' or 'auto', got ${String(v)}`);
  return v;
}

function checkNumber(name: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) {
    throw invalidArgument(`${name} must be a number in [${min}, ${max}], got ${String(v)}`);
  }
  return v;
}

const INT_MAX = 2 ** 31 - 1;

// The engine's limits come from `limits` (Engine passes its addon's requestLimits(); the
// default is their TS mirror). The other bounds here are TS-side only: INT_MAX and 2^32 - 1 are
// what the native int32/uint32 fields hold, and temperature and repetitionPenalty stop at 1e6
// (the engine takes any finite value); a topP or repetitionPenalty of 0 is refused (> 0).
export function normaliseSampling(
  requestId: string,
  promptTokenIds: ArrayLike<number>,
  s: SamplingOptions,
  remote: RemotePrefillOptions = {},
  limits: Readonly<NativeRequestLimits> = REQUEST_LIMITS,
): NativeRequest {
  const L = limits;
  // 1. Identity and prompt.
  if (typeof requestId !== 'string' || requestId.length === 0) throw invalidArgument('requestId must be a non-empty string');
  const prompt = int32Tokens('prompt', promptTokenIds);
  if (prompt.length === 0) throw invalidArgument('the prompt must contain at least one token');
  // 2. Lengths.
  const maxTokens = checkInt('maxTokens', s.maxTokens ?? 16, L.minMaxTokens, INT_MAX);
  const minTokens = checkInt('minTokens', s.minTokens ?? 0, 0, maxTokens);
  // 3. Sampling.
  const temperature = checkNumber('temperature', s.temperature ?? 1, L.minTemperature, 1e6);
  const topP = checkNumber('topP', s.topP ?? 1, Number.MIN_VALUE, L.maxTopP);
  const topK = checkInt('topK', s.topK ?? 0, L.minTopK, INT_MAX);
  const minP = checkNumber('minP', s.minP ?? 0, 0, L.maxMinP);
  const seed = s.seed === undefined || s.seed === null ? -1 : checkInt('seed', s.seed, 0, 2 ** 32 - 1);
  // 4. Penalties and stops.
  const repetitionPenalty = checkNumber('repetitionPenalty', s.repetitionPenalty ?? 1, Number.MIN_VALUE, 1e6);
  const presencePenalty = checkNumber('presencePenalty', s.presencePenalty ?? 0, L.minPenalty, L.maxPenalty);
  const frequencyPenalty = checkNumber('frequencyPenalty', s.frequencyPenalty ?? 0, L.minPenalty, L.maxPenalty);
  const stops = s.stopTokenIds ?? [];
  if (!Array.isArray(stops)) throw invalidArgument('stopTokenIds must be an array of token ids');
  const stopTokenIds = Int32Array.from(stops.map((t, i) => checkInt(`stopTokenIds[${i}]`, t, 0, INT_MAX)));
  const ignoreEos = s.ignoreEos ?? false;
  if (typeof ignoreEos !== 'boolean') throw invalidArgument('ignoreEos must be a boolean');
  const logprobs = s.logprobs === undefined || s.logprobs === null ? -1 : checkInt('logprobs', s.logprobs, 0, L.maxLogprobs);
  const priority = checkInt('priority', s.priority ?? 0, -INT_MAX - 1, INT_MAX);
  // 5. Remote prefill.
  const numExternalTokens = checkInt('numExternalTokens', remote.numExternalTokens ?? 0, 0, prompt.length - 1);
  const prefillOnly = remote.prefillOnly ?? false;
  if (typeof prefillOnly !== 'boolean') throw invalidArgument('prefillOnly must be a boolean');
  // 6. A resumed request's output so far.
  const outputTokenIds = int32Tokens('output', remote.outputTokenIds ?? []);
  if (outputTokenIds.length >= maxTokens) {
    throw invalidArgument(`a resumed request's output tokens (${outputTokenIds.length}) must be fewer than maxTokens (${maxTokens})`);
  }
  // 7. Structured output: the first mask (its length, the model's, is checked by the engine).
  const tokenMask = remote.tokenMask;
  if (tokenMask !== undefined && !(tokenMask instanceof Int32Array)) throw invalidArgument('tokenMask must be an Int32Array');
  return {
    requestId,
    promptTokenIds: prompt,
    maxTokens,
    minTokens,
    temperature,
    topP,
    topK,
    minP,
    seed,
    repetitionPenalty,
    presencePenalty,
    frequencyPenalty,
    stopTokenIds,
    ignoreEos,
    logprobs,
    priority,
    numExternalTokens,
    prefillOnly,
    outputTokenIds,
    ...(tokenMask !== undefined ? { tokenMask } : {}),
  };
}

function int32Tokens(what: string, ids: ArrayLike<number>): Int32Array {
  const out = Int32Array.from(ids);
  for (let i = 0; i < out.length; i++) {
    if (out[i] !== ids[i]) throw invalidArgument(`${what} token ${i} is not an int32`);
  }
  return out;
}

export class Engine {
  private readonly native: NativeEngine;
  private readonly streams = new Map<string, OutputStream>();
  private readonly kvListeners = new Set<(events: NativeKvEvent[]) => void>();
  private readonly metricsListeners = new Set<(m: NativeLoadMetrics) => void>();
  private readonly fatalListeners = new Set<(why: string) => void>();
  private closed = false;
  readonly info: NativeEngineInfo;
  readonly limits: Readonly<NativeRequestLimits>; // the addon's; per-engine ones are in info

  constructor(opts: EngineOptions) {
    // 1. Options, normalised with defaults.
    const native = nativeEngineOptions(opts);
    // 2. The native engine: loads the model and starts its thread.
    const addon = loadAddon();
    this.native = callNative(() => new addon.Engine(native, (step) => this.onStep(step)));
    this.info = callNative(() => this.native.info());
    this.limits = addon.requestLimits();
  }

  // Starts a request; its outputs arrive through the returned stream (one item per engine step
  // that produced tokens, the last one with finishReason). An aborted signal aborts it.
  generate(
    requestId: string,
    promptTokenIds: ArrayLike<number>,
    sampling: SamplingOptions = {},
    signal?: AbortSignal,
    remote?: RemotePrefillOptions,
  ) {
    if (this.closed) throw new NativeError('ERR_ENGINE_CLOSED', 'the engine is closed');
    const req = normaliseSampling(requestId, promptTokenIds, sampling, remote, this.limits);
    const stream = new OutputStream();
    callNative(() => this.native.addRequest(req));
    this.streams.set(requestId, stream);
    if (signal) {
      const onAbort = () => this.abort(requestId);
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    }
    return stream as AsyncIterable<NativeRequestOutput>;
  }

  abort(requestId: string): void {
    if (!this.closed && this.streams.has(requestId)) this.native.abort(requestId);
  }

  // Structured output: the token mask of output outputIndex (0-based, counting a resumed
  // request's outputs) of a constrained request (generate with remote.tokenMask), for the step
  // that samples it; it reaches a step already waiting for it. Call it as soon as output
  // outputIndex - 1 arrives: the engine samples that output once the forward pass ends, waiting
  // up to tokenMaskTimeoutMs for the mask, else the request finishes with 'error'. The mask is
  // info.tokenMaskWords words (else ERR_REQUEST_INVALID naming both lengths). False, nothing
  // stored: the engine is closed, the request is not live (finished, aborted) or not
  // constrained, or that output was sampled already.
  setTokenMask(requestId: string, outputIndex: number, mask: Int32Array): boolean {
    // 1. Arguments.
    if (typeof requestId !== 'string' || requestId.length === 0) throw invalidArgument('requestId must be a non-empty string');
    checkInt('outputIndex', outputIndex, 0, INT_MAX);
    if (!(mask instanceof Int32Array)) throw invalidArgument('mask must be an Int32Array');
    // 2. Straight to the engine's mask board (not its command queue).
    if (this.closed) return false;
    return callNative(() => this.native.setTokenMask(requestId, outputIndex, mask));
  }

  // Remote prefill hooks; ids that are not parked / held are ignored by the engine.
  completeExternalKv(requestId: string, ok: boolean): void {
    if (!this.closed) this.native.completeExternalKv(requestId, ok);
  }

  releaseHeld(requestId: string): void {
    if (!this.closed) this.native.releaseHeld(requestId);
  }

  onKvEvents(fn: (events: NativeKvEvent[]) => void): () => void {
    this.kvListeners.add(fn);
    return () => this.kvListeners.delete(fn);
  }

  onMetrics(fn: (m: NativeLoadMetrics) => void): () => void {
    this.metricsListeners.add(fn);
    return () => this.metricsListeners.delete(fn);
  }

  // Called once a step says the engine can run no further step (NativeStepOutput.fatal), after
  // that step's outputs (the failed requests' errors) have gone to their streams.
  onFatal(fn: (why: string) => void): () => void {
    this.fatalListeners.add(fn);
    return () => this.fatalListeners.delete(fn);
  }

  replayKvEvents(): void {
    if (!this.closed) this.native.replayKvEvents();
  }

  metrics(): NativeLoadMetrics {
    if (this.closed) throw new NativeError('ERR_ENGINE_CLOSED', 'the engine is closed');
    return this.native.metrics();
  }

  kvRegion(): NativeKvRegion {
    if (this.closed) throw new NativeError('ERR_ENGINE_CLOSED', 'the engine is closed');
    return this.native.kvRegion();
  }

  // Every rank's KV pool, in rank order (one without tensor parallelism).
  kvRegions(): NativeKvRegion[] {
    if (this.closed) throw new NativeError('ERR_ENGINE_CLOSED', 'the engine is closed');
    return this.native.kvRegions();
  }

  get numInFlight(): number {
    return this.streams.size;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.native.close();
    const err = new NativeError('ERR_ENGINE_CLOSED', 'the engine was closed before the request finished');
    for (const s of this.streams.values()) s.fail(err);
    this.streams.clear();
  }

  private onStep(step: NativeStepOutput): void {
    if (this.closed) return;
    for (const o of step.outputs) {
      const s = this.streams.get(o.requestId);
      if (!s) continue;
      s.push(o);
      if (o.finishReason) this.streams.delete(o.requestId);
    }
    if (step.kvEvents.length > 0) for (const fn of this.kvListeners) fn(step.kvEvents);
    for (const fn of this.metricsListeners) fn(step.metrics);
    if (step.fatal !== undefined) for (const fn of this.fatalListeners) fn(step.fatal);
  }
}

// Collects a request's outputs into token ids and the final output (tests and tools).
export async function collect(stream: AsyncIterable<NativeRequestOutput>) {
  const tokenIds: number[] = [];
  const logprobs: NonNullable<NativeRequestOutput['logprobs']> = [];
  let last: NativeRequestOutput | undefined;
  for await (const o of stream) {
    tokenIds.push(...o.newTokenIds);
    if (o.logprobs) logprobs.push(...o.logprobs);
    last = o;
  }
  return { tokenIds, logprobs, finishReason: last?.finishReason, last };
}
