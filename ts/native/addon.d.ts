// addon.d.ts: THE definition of the native API (native/binding). Hand-written; a test checks
// that the built addon exports exactly these names. The addon takes only primitives and typed
// arrays, validated first by the TS wrappers in this folder (engine.ts, model.ts, transfer.ts);
// it throws errors whose `code` is one of NativeErrorCode.

export type NativeErrorCode =
  | 'ERR_INVALID_ARGUMENT'
  | 'ERR_MODEL_FILE_MISSING'
  | 'ERR_MODEL_CONFIG_INVALID'
  | 'ERR_MODEL_ARCH_UNSUPPORTED'
  | 'ERR_MODEL_FILE_TRUNCATED'
  | 'ERR_MODEL_HEADER_INVALID'
  | 'ERR_MODEL_TENSOR_MISSING'
  | 'ERR_MODEL_TENSOR_SHAPE'
  | 'ERR_MODEL_TENSOR_DTYPE'
  | 'ERR_IO'
  | 'ERR_OUT_OF_MEMORY'
  | 'ERR_REQUEST_INVALID'
  | 'ERR_REQUEST_TOO_LONG'
  | 'ERR_REQUEST_DUPLICATE'
  | 'ERR_ENGINE_CLOSED'
  | 'ERR_DEVICE_UNAVAILABLE'
  | 'ERR_TRANSFER_INVALID' // bad block ids (range, list lengths), metadata or KV layout
  | 'ERR_TRANSFER_PEER' // unknown, stale (restarted), gone or unreachable remote agent
  | 'ERR_TRANSFER_CLOSED'
  | 'ERR_INTERNAL';

export interface NativeModelInfo {
  architecture: string;
  dtype: 'f32' | 'f16' | 'bf16';
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  maxPositionEmbeddings: number;
  slidingWindow: number; // 0 = none
  ropeTheta: number;
  ropeScalingType: 'none' | 'linear' | 'llama3' | 'dynamic' | 'yarn';
  ropeAttentionFactor: number; // yarn's factor on cos and sin (1 for the other types)
  qkNorm: boolean; // Qwen3: per-head RMSNorm of q and k
  tieWordEmbeddings: boolean;
  bosTokenId: number; // -1 = none
  eosTokenIds: number[];
  weightBytes: number;
}

export interface NativeEngineOptions {
  modelDir: string;
  workerId: string;
  blockSize: number;
  maxModelLen: number; // 0 = the model's max_position_embeddings (capped by sliding_window)
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  numKvBlocks: number; // 0 = derived from kvCacheBytes
  kvCacheBytes: number; // used when numKvBlocks is 0
  numThreads: number; // 0 = all cores
  cpuOffset?: number; // >= 0: the threads take the allowed CPUs [cpuOffset, cpuOffset + numThreads); -1 = the first ones
  cpuTileWeights: boolean; // CPU paths with a packed layout (amx, avx512-bf16, avx2): a private copy of the weights in it
  enablePrefixCaching: boolean;
  kvSharedMemory: boolean; // the KV pool lives in a named shm segment (for the transfer agent)
  device?: string; // 'cpu' (default) | 'cuda' | 'auto' (cuda when usable, else cpu)
  seed: number; // engine seed for requests without their own (uint32)
  tokenMaskTimeoutMs?: number; // how long a step waits for a constrained request's token mask, [1, 3600000], default 10000
}

// One request as the native side takes it: every field present, already validated.
export interface NativeRequest {
  requestId: string;
  promptTokenIds: Int32Array;
  maxTokens: number;
  minTokens: number;
  temperature: number;
  topP: number;
  topK: number; // 0 = off
  minP: number;
  seed: number; // -1 = none; else a uint32
  repetitionPenalty: number;
  presencePenalty: number;
  frequencyPenalty: number;
  stopTokenIds: Int32Array;
  ignoreEos: boolean;
  logprobs: number; // -1 = none; N >= 0 = sampled token + top N
  // Remote prefill (DESIGN.md section 4): the KV of the first numExternalTokens prompt tokens
  // (<= prompt length - 1) comes from another worker unless the prefix cache has it: the request
  // is parked with blocks for its prompt (an output with awaitingKv) until completeExternalKv.
  numExternalTokens: number;
  // Compute the prompt except its last token, sample nothing, finish with 'prefilled' and hold
  // the blocks (listed in that output) until releaseHeld.
  prefillOnly: boolean;
  // Scheduling priority, an int32, lower first (vLLM's convention): admitted before waiting
  // requests of a higher value, whose running rows sit out its prefill steps (a few in a row at
  // most). Absent: 0.
  priority?: number;
  // A resumed request (request migration): tokens it generated before, put after the prompt and
  // counted as outputs (max_tokens, min_tokens, presence/frequency penalties, the seeded
  // generator's position); fewer than maxTokens. Absent: none.
  outputTokenIds?: Int32Array;
  // Structured output: present = the request is constrained, and this is the allowed-token mask
  // of its first sampled output (output index outputTokenIds.length), in XGrammar's layout: bit b
  // of word w (LSB first) allows token 32 * w + b; exactly Engine.info().tokenMaskWords words
  // (else ERR_REQUEST_INVALID naming both lengths). Every later output's mask comes through
  // Engine.setTokenMask. Absent: unconstrained.
  tokenMask?: Int32Array;
}

export type NativeFinishReason = 'stop' | 'length' | 'abort' | 'error' | 'prefilled';

export interface NativeTokenLogprobs {
  tokenId: number;
  logprob: number;
  topIds: number[];
  topLogprobs: number[];
}

export interface NativeRequestOutput {
  requestId: string;
  newTokenIds: number[];
  logprobs?: NativeTokenLogprobs[]; // one per new token, when asked
  finishReason?: NativeFinishReason; // present on the request's last output
  stopTokenId?: number; // the stop/EOS token that ended it (included in newTokenIds)
  numPromptTokens: number;
  numCachedTokens: number; // prefix-cache hit, tokens
  error?: string;
  awaitingKv?: true; // parked for external KV (once); blockIds = the request's blocks
  blockIds?: number[]; // with awaitingKv, and with finishReason 'prefilled' (the held blocks)
}

// DESIGN.md section 5: hashes as 16-digit lowercase hex strings.
export type NativeKvEvent =
  | { eventId: number; type: 'stored'; parentHash: string | null; blockHashes: string[] }
  | { eventId: number; type: 'removed'; blockHashes: string[] }
  | { eventId: number; type: 'cleared' };

export interface NativeLoadMetrics {
  requestActiveSlots: number;
  requestTotalSlots: number;
  kvActiveBlocks: number;
  kvTotalBlocks: number;
  numRequestsWaiting: number;
  kvCacheUsage: number;
  prefixCacheHitRate: number;
  prefixCacheQueries: number; // tokens, cumulative
  prefixCacheHits: number; // tokens, cumulative
  numPreemptions: number; // cumulative
  // Structured output: seconds the engine thread waited for token masks (a mask not there when
  // the forward pass ended), and the steps that waited; both cumulative.
  tokenMaskWaitSeconds: number;
  tokenMaskWaitSteps: number;
  tokenMaskDeferredRows: number; // rows a step did not sample because their mask was late (run again next step)
}

export interface NativeStepOutput {
  outputs: NativeRequestOutput[];
  kvEvents: NativeKvEvent[];
  metrics: NativeLoadMetrics;
  fatal?: string; // the engine can run no further step (its tensor-parallel group broke): why
}

export interface NativeEngineInfo {
  backend: string; // e.g. 'cpu'
  kernels: string; // kernel path taken, e.g. 'reference'
  numKvBlocks: number;
  blockSize: number;
  maxModelLen: number;
  kvCacheDtype: 'f32' | 'f16' | 'bf16';
  kvBlockBytes: number; // the whole model's block (every tensor-parallel rank's part of it)
  tpSize: number; // tensor-parallel ranks (1 without)
  vocabSize: number; // the logits' width (model.vocabSize), what a token mask covers
  tokenMaskWords: number; // a token mask's length in int32 words: ceil(vocabSize / 32)
  model: NativeModelInfo;
}

// Where the engine's KV pool lives (DESIGN.md section 6): block b is bytes
// [b * blockBytes, (b + 1) * blockBytes) of the shm segment shmName ('' = private, not shareable),
// or, with memory 'cuda', of the GPU allocation deviceRegion (opaque; moved by CUDA IPC), which
// for another tensor-parallel rank's allocation is deviceIpcHandle on the GPU deviceUuid (its
// process exported it). A tensor-parallel pool is one region per rank, each holding the kv heads
// [firstKvHead, firstKvHead + numKvHeads) of the model's modelKvHeads (a transfer agent takes a
// region without these three as rank 0 holding all modelKvHeads = numKvHeads).
export interface NativeKvRegion {
  memory: 'host' | 'cuda';
  shmName: string;
  deviceRegion?: unknown;
  deviceIpcHandle?: string; // 128 hex digits
  deviceUuid?: string; // 'GPU-...'
  bytes: number;
  numBlocks: number;
  blockBytes: number;
  numLayers: number;
  blockSize: number;
  numKvHeads: number; // the heads in this region
  headDim: number;
  dtype: 'f32' | 'f16' | 'bf16';
  tpRank: number;
  firstKvHead: number;
  modelKvHeads: number;
}

// The engine: its loop runs on its own native thread; onStep is called on the JS thread once
// per engine step that produced outputs, events or changed metrics.
export declare class Engine {
  constructor(options: NativeEngineOptions, onStep: (step: NativeStepOutput) => void);
  info(): NativeEngineInfo;
  addRequest(request: NativeRequest): void; // throws ERR_REQUEST_* synchronously
  abort(requestId: string): void; // unknown ids are ignored; ends a step's wait for its token mask
  // Structured output: the token mask (layout of NativeRequest.tokenMask) of output outputIndex
  // (0-based, counting resumed outputs) of a constrained request, for the step that samples it.
  // Not queued: it reaches a step already waiting for it. A step whose mask does not come within
  // tokenMaskTimeoutMs finishes the request with 'error'. Throws ERR_REQUEST_INVALID for a mask
  // of another length than tokenMaskWords; false (nothing stored) for an id that is not live or
  // not constrained, or an output already sampled.
  setTokenMask(requestId: string, outputIndex: number, mask: Int32Array): boolean;
  // A parked request's external KV is in its blocks (ok) or will not come (it computes it
  // itself). Ids not parked (duplicates, late completions) are ignored.
  completeExternalKv(requestId: string, ok: boolean): void;
  releaseHeld(requestId: string): void; // frees a prefilled request's blocks; unknown ids ignored
  replayKvEvents(): void; // the next step output carries 'cleared' + 'stored' for the cache
  metrics(): NativeLoadMetrics;
  kvRegion(): NativeKvRegion; // rank 0's
  kvRegions(): NativeKvRegion[]; // every rank's, in rank order
  close(): Promise<void>; // stops the thread, frees everything; safe to call twice
}

// A model with a private KV pool for one sequence, run synchronously on the calling thread.
// For tests and tools (numerics against references); serving uses Engine.
export declare class Model {
  constructor(modelDir: string, numThreads: number);
  info(): NativeModelInfo;
  // Runs tokens as one sequence whose blocks are blockTable (block ids in a private pool of
  // max(blockTable)+1 blocks of blockSize tokens); returns logits for every position,
  // [tokens.length * vocabSize].
  forward(tokens: Int32Array, blockTable: Int32Array, blockSize: number): Float32Array;
  close(): void;
}

export interface NativeTransferAgentOptions {
  name: string; // unique among the agents that connect to each other, 1 to 256 bytes
  listenHost: string; // '0.0.0.0' / '::' advertise the hostname in the metadata
  listenPort: number; // 0 = ephemeral
  clusterSecret?: string; // every peer must prove it knows it (transfer-auth.h); absent = none
}

export type NativeTransferBackend = 'auto' | 'shm' | 'tcp' | 'cuda_ipc';

export interface NativeTransferStats {
  writes: number; // this agent's own write() and read() calls, cumulative
  reads: number;
  bytesWritten: number;
  bytesRead: number;
  writeSeconds: number;
  readSeconds: number;
  notificationsReceived: number;
}

// The KV transfer agent of one worker (DESIGN.md section 6, native/transfer/transfer-agent.h).
// onNotification is called on the JS thread for each notification another agent's write
// delivered, after that write's blocks are in this pool.
export declare class TransferAgent {
  constructor(options: NativeTransferAgentOptions, onNotification: (from: string, message: string) => void);
  registerRegion(region: NativeKvRegion): void; // = registerRegions([region])
  // Once: every rank's region of this worker's pool (any order), together holding every kv head;
  // a host region must have a shmName; a GPU pool is one region holding every head.
  registerRegions(regions: NativeKvRegion[]): void;
  metadata(): string; // JSON, for discovery
  // Blocks the JS thread for a TCP connect and one round trip (5 s at most); -> the remote's name.
  connect(metadata: string, backend: NativeTransferBackend): string;
  // Copies local blocks localBlocks[i] into the remote's remoteBlocks[i], then delivers the
  // notification ('' = none); resolves once the remote has it.
  write(localBlocks: Int32Array, remote: string, remoteBlocks: Int32Array, notification: string): Promise<void>;
  // Copies the remote's remoteBlocks[i] into local blocks localBlocks[i].
  read(remote: string, remoteBlocks: Int32Array, localBlocks: Int32Array): Promise<void>;
  stats(): NativeTransferStats;
  close(): Promise<void>; // stops the listener and drops connections; safe to call twice
}

export declare function inspectModel(modelDir: string): NativeModelInfo;
export declare function blockHashes(tokens: Int32Array, blockSize: number): string[];
// STREAM-like memory read bandwidth in GB/s: a fresh buffer of `bytes` (>= 64 MiB, default
// 1 GiB) summed by `threads` workers (0 = every CPU), best of 4 passes. Blocks for ~1 s.
export declare function readBandwidthGBs(bytes?: number, threads?: number): number;
// GFLOP/s of a kernel path's main instruction with data in registers, on `threads` pinned workers
// (0 = every CPU): fp32 FMA for 'avx2'/'avx512', vdpbf16ps for 'avx512-bf16', AMX tdpbf16ps for
// the amx paths; path defaults to the one in use. Throws for 'reference' and for a path this CPU
// cannot run. Blocks for a fraction of a second.
export declare function computePeakGflops(path?: string, threads?: number): number;
export interface NativeCpuKernelInfo {
  isa: string[]; // detected: 'avx2', 'avx512', 'avx512_bf16', 'amx_bf16'
  path: string; // the kernel path in use: 'reference' | 'avx2' | 'avx512' | 'avx512-bf16' | 'amx' | 'amx-exact' | 'amx-bf16' (KVSERVE_CPU_KERNELS forces one; amx-exact and amx-bf16 only then)
}
export declare function cpuKernelInfo(): NativeCpuKernelInfo;
// The engine's constant per-request limits (native/kv/request-limits.h), the same for every
// engine; the per-engine ones are in Engine.info() (maxModelLen, numKvBlocks, blockSize,
// model.vocabSize). ts/native/request-limits.ts mirrors these for code that does not load the
// addon; test/native/request-limits.test.ts checks the two agree.
export interface NativeRequestLimits {
  minMaxTokens: number; // maxTokens >= this (1); minTokens in [0, maxTokens]
  minTemperature: number; // temperature >= this (0 = greedy), finite; no upper bound
  maxTopP: number; // topP in (0, maxTopP]
  minTopK: number; // topK >= this (-1); -1 and 0 = off
  maxMinP: number; // minP in [0, maxMinP]
  minPenalty: number; // presencePenalty, frequencyPenalty in [minPenalty, maxPenalty]
  maxPenalty: number;
  maxLogprobs: number; // logprobs in [0, maxLogprobs]; -1 = none
}
export declare function requestLimits(): NativeRequestLimits;
// Runs rank `rank` (1..tpSize-1) of the tensor-parallel group options.tpGroup, blocking the
// calling thread until rank 0 stops it (returns) or the group breaks (throws, naming why).
export declare function runTensorParallelRank(options: object, rank: number): void;
export declare const version: string;
export declare const cudaCompiled: boolean;
export interface NativeCudaDevice {
  compiled: boolean; // this build has the CUDA backend (nvcc was found)
  usable: boolean; // ... and a device it can run on
  description: string; // the device when usable ("NVIDIA H100 80GB HBM3 (sm_90, ...)"), else why not
}
export declare function cudaDevice(): NativeCudaDevice;

export interface NativeAddon {
  Engine: typeof Engine;
  Model: typeof Model;
  inspectModel: typeof inspectModel;
  blockHashes: typeof blockHashes;
  readBandwidthGBs: typeof readBandwidthGBs;
  computePeakGflops: typeof computePeakGflops;
  cpuKernelInfo: typeof cpuKernelInfo;
  requestLimits: typeof requestLimits;
  runTensorParallelRank: typeof runTensorParallelRank;
  TransferAgent: typeof TransferAgent;
  version: string;
  cudaCompiled: boolean;
  cudaDevice: typeof cudaDevice;
}
