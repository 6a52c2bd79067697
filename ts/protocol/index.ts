// ts/protocol: wire types only, shared by the frontend, workers, router and queue.
// Imports nothing from the project. JSON field names follow DESIGN.md section 5 where it fixes
// them (KV events, load metrics: snake_case); the internal request plane uses camelCase.

// ---- ids ----
export type WorkerId = string & { readonly __brand: 'WorkerId' };
export type RequestId = string & { readonly __brand: 'RequestId' };
export type BlockHash = string & { readonly __brand: 'BlockHash' }; // 16 lowercase hex digits

export type WorkerRole = 'monolith' | 'decode' | 'prefill';

// ---- discovery ----
export interface WorkerInfo {
  workerId: WorkerId;
  role: WorkerRole;
  address: string; // the worker's HTTP base URL (info, load, health; generate for curl), e.g. http://127.0.0.1:40123
  // The request plane proper: a persistent, multiplexed NDJSON-over-TCP endpoint, e.g.
  // tcp://127.0.0.1:40124 (runtime/request-client.ts, worker/server.ts). Absent on workers that
  // predate it: the frontend then streams `generate` over HTTP at `address`.
  requestPlane?: string;
  model: string; // the served model name
  modelDir: string;
  blockSize: number;
  kvTotalBlocks: number;
  maxNumSeqs: number; // request slots (the contract's request_total_slots)
  maxModelLen: number;
  vocabSize: number;
  pid: number;
  // Decode and prefill workers: the transfer agent's metadata (native/transfer, DESIGN.md
  // section 6), for peers to connect to; it changes when the worker restarts.
  transfer?: string;
}

// ---- request plane: processor -> worker `generate`, token deltas back ----
export interface SamplingParams {
  maxTokens: number;
  minTokens?: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  seed?: number;
  repetitionPenalty?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
  stopTokenIds?: number[];
  ignoreEos?: boolean;
  logprobs?: number; // top-N, [0, 20]
  // Scheduling priority, lower first (the engine's; vLLM's `priority`): the frontend's choice
  // (request-params.ts). Absent: 0.
  priority?: number;
}

// Structured outputs: the grammar every sampled token of a request must follow (ts/grammar).
// json_schema's schema is the JSON text of the schema; choice is one of the strings exactly;
// ebnf is XGrammar's EBNF (GBNF) with a `root` rule.
export type GrammarSpec =
  | { kind: 'json_schema'; schema: string }
  | { kind: 'json_object' }
  | { kind: 'regex'; pattern: string }
  | { kind: 'choice'; choices: string[] }
  | { kind: 'ebnf'; grammar: string };

export interface GenerateRequest {
  requestId: RequestId;
  promptTokenIds: number[];
  sampling: SamplingParams;
  prefixHitRate?: number; // the router's estimate for the chosen worker, [0, 1]
  // A migrated request: the tokens this request already generated (and the client was shown) on
  // a worker that went away. The worker continues after them: they follow the prompt and count
  // as outputs (sampling.maxTokens stays the total; penalties, min_tokens, the seed's position).
  outputTokenIds?: number[];
  // Structured outputs: the worker masks every sampled token to this grammar.
  grammar?: GrammarSpec;
}

export interface TokenLogprobs {
  tokenId: number;
  logprob: number;
  topIds: number[];
  topLogprobs: number[];
}

export type FinishReason = 'stop' | 'length' | 'abort' | 'error';

// One line of the worker's NDJSON response stream (HTTP), or the payload of a `delta` frame (TCP).
export interface GenerateDelta {
  requestId: RequestId;
  tokenIds: number[];
  logprobs?: TokenLogprobs[];
  finishReason?: FinishReason; // on the last delta only
  stopTokenId?: number;
  numPromptTokens: number;
  numCachedTokens: number;
  error?: WireError;
}

// ---- request plane over TCP: newline-delimited JSON frames, both directions ----
// `id` is chosen by the client and unique among the requests open on one connection: it keys the
// multiplexing (a requestId alone cannot: a request aborted by the client may still be draining
// in the engine when a retry reuses its requestId).
export type RequestPlaneClientFrame =
  | { t: 'gen'; id: number; body: GenerateRequest }
  | { t: 'abort'; id: number; requestId: RequestId };

export type RequestPlaneWorkerFrame =
  | ({ t: 'delta'; id: number } & GenerateDelta)
  | { t: 'err'; id: number; requestId: RequestId; status: number; code: string; message: string };

// The cluster-secret handshake before those frames (runtime/cluster-secret.ts has the protocol).
export type RequestPlaneClientHandshake = { t: 'hello'; nonce: string } | { t: 'auth'; mac: string };
export type RequestPlaneWorkerHandshake =
  | { t: 'hello'; nonce: string; mac: string }
  | { t: 'hello'; nonce: null } // the worker has no secret
  | { t: 'refused'; reason: string }; // then the worker closes the connection

export interface WireError {
  code: string; // a NativeErrorCode or ERR_WORKER_*
  message: string;
}

// ---- event plane (DESIGN.md section 5, contract) ----
export type KvEventData =
  | { stored: { parent_hash: BlockHash | null; block_hashes: BlockHash[] } }
  | { removed: { block_hashes: BlockHash[] } }
  | { cleared: Record<string, never> };

export interface KvEvent {
  worker_id: WorkerId;
  event_id: number;
  data: KvEventData;
}

export interface LoadMetrics {
  request_active_slots: number;
  request_total_slots: number;
  kv_active_blocks: number;
  kv_total_blocks: number;
  num_requests_waiting: number;
  kv_cache_usage: number;
  prefix_cache_hit_rate: number;
}

// What one frontend routed to each worker and that worker's load reports do not show yet (its
// router's pending blocks and requests), pub/sub on `<namespace>:frontend-load`
// (ts/runtime/load-sharing.ts). A snapshot: it replaces the frontend's previous one, and lapses
// ttl_ms after it arrived unless a newer one came. `workers` lists only workers with any.
export interface FrontendLoad {
  frontend_id: string;
  ttl_ms: number;
  workers: Record<WorkerId, [blocks: number, requests: number]>;
}

// What GET /load answers instead (503, {error: {code}}) while a worker drains: the frontends'
// health probe then sets it aside at once, and its requests in flight go on.
export const WORKER_DRAINING_CODE = 'ERR_WORKER_DRAINING';

// What a worker reports on GET /load: the contract's load metrics plus counters the frontend
// exports as Prometheus metrics.
export interface WorkerLoad extends LoadMetrics {
  worker_id: WorkerId;
  prefix_cache_queries: number; // tokens, cumulative
  prefix_cache_hits: number; // tokens, cumulative
  num_preemptions: number;
  disagg?: DisaggCounters; // decode workers only
  // Structured outputs: how long the engine thread waited for token masks (the matcher was
  // slower than the forward pass), in how many steps, and the rows it deferred rather than
  // wait with other rows in the step; cumulative. GET /load only.
  token_mask_wait_seconds?: number;
  token_mask_wait_steps?: number;
  token_mask_deferred_rows?: number; // rows deferred to the next step, their mask being late
}

// ---- disaggregation (DESIGN.md section 5, contract) ----
// A remote-prefill job on the BullMQ queue `prefill` (key prefix: the namespace). The decode
// worker has allocated block_ids for the whole prompt and holds the first computed_block_count
// of them from its own prefix cache; the prefill worker reads those, computes the rest of the
// prompt except its last token, writes the new blocks into block_ids, then notifies.
export interface RemotePrefillJob {
  request_id: RequestId;
  decode_worker_id: WorkerId;
  token_ids: number[];
  block_ids: number[];
  computed_block_count: number;
  sampling_params: SamplingParams;
  deadline_ms: number; // epoch ms: after it the decode worker prefills locally
  // Beyond the DESIGN contract: the decode worker's discovery instanceId when it pushed the
  // job; a prefill worker that finds another instance under that worker id (a restart) drops
  // the job instead of writing into a pool whose block ids mean something else now.
  decode_instance_id: string;
}

// The notification a prefill worker sends with its last write (transfer agent message).
export interface RemotePrefillDone {
  request_id: RequestId;
  prefill_worker_id: WorkerId;
  blocks_written: number;
  blocks_read: number;
  transfer_seconds: number; // the prefill worker's time in the read and the write
}

// A worker's disaggregation counters (cumulative, except the queue depth). Decode workers
// fill the first five and the transfer pair (from the notifications), prefill workers the last
// four.
export interface DisaggCounters {
  remote_prefills: number; // decode: completed by a prefill worker
  local_prefills: number; // decode: decided local (short enough, queue full or unreachable)
  fallbacks: number; // decode: sent remote, then prefilled locally (deadline, failure)
  prefill_queue_depth: number; // decode: jobs waiting, as last seen
  remote_prefill_seconds: number; // decode: job pushed -> notification, summed
  prefill_jobs: number; // prefill: jobs written
  prefill_jobs_dropped: number; // prefill: past the deadline, taken back, or decode restarted
  transfer_bytes: number; // KV bytes moved (decode: into/out of its pool; prefill: by its agent)
  transfer_seconds: number; // time in the agent's reads and writes (measured by the prefill worker)
}
