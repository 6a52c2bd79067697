// remote-prefill.ts: both halves of disaggregated prefill in a worker (DESIGN.md sections 4-6).
//
// Decode side (RemotePrefillDecoder), per request, in order:
//   0. a resumed request (request migration: it brings output tokens) goes straight to the
//      engine, prefilled locally: the job contract carries a prompt, not prompt + outputs;
//   1. prompts whose uncached part cannot exceed --max-local-prefill-length (n - 1 tokens at
//      most) go straight to the engine: decided local, no round trip;
//   2. the others are admitted with numExternalTokens = n - 1: the engine parks them with
//      blocks for the whole prompt and reports its own prefix-cache hit (awaitingKv);
//   3. decision: remote only if uncached = n - cached > max-local-prefill-length and the queue
//      holds fewer than --max-prefill-queue-size jobs (each decision logged at debug, with
//      its reason); local: completeExternalKv(false), the engine prefills from its cache;
//   4. remote: claim `pending`, push the job (queue/prefill-queue.ts) and wait for the prefill
//      worker's notification (completeExternalKv(true)), or for the deadline: then the claim
//      is taken back (pending | taken:P -> local) and the engine prefills locally. While jobs
//      wait, their claims are read every LEASE_CHECK_MS: a job taken by a prefill worker whose
//      lease has lapsed (dead, stopped, partitioned, or restarted as another instance) is
//      taken back at once the same way, not at its deadline; so is a job whose claim has
//      vanished (Redis restarted empty: the job went with it), and one a prefill worker marked
//      dropped (it found this worker's lease naming another instance: a restarted worker serves
//      before its lease is taken over). A client abort of a parked
//      request takes the claim back the same way before the engine frees the blocks, so no
//      prefill worker ever writes into blocks that were given to someone else.
// Prefill side (PrefillJobRunner), per job: drop it if past its deadline or if the decode
// worker restarted; take its claim (pending or a former holder's -> taken:<me>; else the decode
// worker took it back: drop it); run the prompt prefill-only, reading first the decode worker's
// cached blocks this worker lacks; claim taken:<me> -> writing:<me> (else someone gave up on
// the job: drop it); write the new blocks with the notification; release the held blocks.
// Owns: the decode side's pending remote prefills and its counters.
// Stays true: a parked request ends in exactly one of: notified, fallen back, aborted; a
// duplicate or late notification is ignored.
import type { Engine, RequestOutput } from '../native/index.ts';
import type {
  DisaggCounters,
  GenerateRequest,
  RemotePrefillDone,
  RemotePrefillJob,
  RequestId,
  WorkerId,
} from '../protocol/index.ts';
import type { ClaimState, PrefillClaims, PrefillQueue } from '../queue/prefill-queue.ts';
import type { GenerateStart } from './server.ts';

// What the worker needs of the native transfer agent (ts/native/transfer.ts).
export interface KvTransfer {
  connect(metadata: string): string; // -> the remote agent's name
  read(remote: string, remoteBlocks: Int32Array, localBlocks: Int32Array): Promise<void>;
  write(localBlocks: Int32Array, remote: string, remoteBlocks: Int32Array, notification: string): Promise<void>;
}

export type Log = (level: 'debug' | 'info' | 'warn', msg: string) => void;

const SETTLE_RETRY_MS = 250;
const LEASE_CHECK_MS = 500;

export function newDisaggCounters(): DisaggCounters {
  return {
    remote_prefills: 0,
    local_prefills: 0,
    fallbacks: 0,
    prefill_queue_depth: 0,
    remote_prefill_seconds: 0,
    prefill_jobs: 0,
    prefill_jobs_dropped: 0,
    transfer_bytes: 0,
    transfer_seconds: 0,
  };
}

// A long prompt's life on the decode side:
//   parking   admitted with numExternalTokens, not yet parked by the engine (or its awaitingKv
//             output not yet read): no job can exist, an abort goes straight to the engine;
//   deciding  decide() runs (awaits the queue depth, the claim): an abort only sets the flag,
//             and decide() acts on it at its end;
//   pushed    the claim exists: only settle() (claim taken back) or the notification ends it.
interface Pending {
  state: 'parking' | 'deciding' | 'pushed';
  aborted: boolean;
  pushedAt: number; // performance.now()
  timer?: NodeJS.Timeout;
  settling: boolean;
}

export interface DecoderOptions {
  engine: Engine;
  workerId: WorkerId;
  instanceId: string;
  blockSize: number;
  maxLocalPrefillLength: number;
  maxPrefillQueueSize: number;
  deadlineMs: number;
  queue: PrefillQueue;
  claims: PrefillClaims;
  // Whether a writer (`<workerId>/<instanceId>`, from a writing:... claim) still holds its lease:
  // a restarted worker keeps its id but not its instance.
  isWriterAlive: (writer: string) => Promise<boolean>;
  log: Log;
}

export class RemotePrefillDecoder {
  readonly counters: DisaggCounters = newDisaggCounters();
  private readonly pending = new Map<string, Pending>();
  private leaseCheck: NodeJS.Timeout | undefined;
  private checking = false;

  constructor(private readonly opts: DecoderOptions) {}

  // Runs while some job waits: takes back the jobs whose prefill worker's lease has lapsed.
  private watchLeases(): void {
    if (this.leaseCheck) return;
    this.leaseCheck = setInterval(() => void this.checkLeases(), LEASE_CHECK_MS);
    this.leaseCheck.unref();
  }

  private async checkLeases(): Promise<void> {
    const pushed = [...this.pending].filter(([, p]) => p.state === 'pushed' && !p.settling);
    if (pushed.length === 0) {
      clearInterval(this.leaseCheck);
      this.leaseCheck = undefined;
      return;
    }
    if (this.checking) return;
    this.checking = true;
    try {
      for (const [id, p] of pushed) {
        const state = await this.opts.claims.get(id).catch(() => undefined); // undefined: Redis away, look next time
        if (state === undefined || this.pending.get(id) !== p || p.settling) continue;
        if (state === null) {
          // The claim is gone while its job waits: Redis lost its data (restarted empty), and the
          // job with it, so nobody will prefill it. Taken back as an expired claim is.
          void this.settle(id as RequestId, p, 'its claim and job were lost with Redis');
          continue;
        }
        if (state.startsWith('dropped:')) {
          void this.settle(id as RequestId, p, `its prefill worker ${state.slice('dropped:'.length)} dropped the job`);
          continue;
        }
        if (!state.startsWith('taken:')) continue;
        const holder = state.slice('taken:'.length);
        if (await this.opts.isWriterAlive(holder).catch(() => true)) continue;
        void this.settle(id as RequestId, p, `its prefill worker ${holder} lost its lease`);
      }
    } finally {
      this.checking = false;
    }
  }

  // Like Engine.generate: throws synchronously when the engine refuses the request. `start`: the
  // token mask of its first sampled output (structured outputs), whoever computes the prompt.
  generate(body: GenerateRequest, signal: AbortSignal, start: GenerateStart = {}): AsyncIterable<RequestOutput> {
    const { engine, maxLocalPrefillLength } = this.opts;
    const prompt = body.promptTokenIds ?? [];
    const outputTokenIds = body.outputTokenIds ?? [];
    if (outputTokenIds.length > 0) {
      this.counters.local_prefills++;
      this.opts.log('debug', `${body.requestId}: prefill local: a resumed request (${prompt.length} prompt + ${outputTokenIds.length} output tokens)`);
      return engine.generate(body.requestId, prompt, body.sampling ?? {}, signal, { outputTokenIds, ...start });
    }
    if (prompt.length - 1 <= maxLocalPrefillLength) {
      this.counters.local_prefills++;
      this.opts.log('debug', `${body.requestId}: prefill local: prompt ${prompt.length} tokens, at most ${prompt.length - 1} uncached <= max-local-prefill-length ${maxLocalPrefillLength}`);
      return engine.generate(body.requestId, prompt, body.sampling ?? {}, signal, start);
    }
    const stream = engine.generate(body.requestId, prompt, body.sampling ?? {}, undefined, {
      numExternalTokens: prompt.length - 1,
      ...start,
    });
    this.pending.set(body.requestId, { state: 'parking', aborted: false, pushedAt: 0, settling: false });
    return this.follow(body, stream, signal);
  }

  // The transfer agent's notification callback.
  onNotification(message: string): void {
    let done: RemotePrefillDone;
    try {
      done = JSON.parse(message) as RemotePrefillDone;
    } catch {
      this.opts.log('warn', `remote prefill: unreadable notification ${message.slice(0, 200)}`);
      return;
    }
    const id = done.request_id;
    const p = this.pending.get(id);
    if (!p || p.state !== 'pushed') return; // duplicate, late, or not ours: ignored
    this.pending.delete(id);
    clearTimeout(p.timer);
    this.counters.remote_prefills++;
    this.counters.remote_prefill_seconds += (performance.now() - p.pushedAt) / 1000;
    this.counters.transfer_bytes += (done.blocks_written + done.blocks_read) * this.opts.engine.info.kvBlockBytes;
    this.counters.transfer_seconds += done.transfer_seconds;
    this.opts.claims.remove(id).catch(() => undefined); // it expires anyway
    this.opts.log('debug', `${id}: remote prefill by ${done.prefill_worker_id} done (${done.blocks_written} blocks written, ${done.blocks_read} read)`);
    if (p.aborted) this.opts.engine.abort(id);
    else this.opts.engine.completeExternalKv(id, true);
  }

  private async *follow(body: GenerateRequest, stream: AsyncIterable<RequestOutput>, signal: AbortSignal) {
    const id = body.requestId;
    const onAbort = () => this.abort(id);
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    try {
      for await (const o of stream) {
        if (o.awaitingKv) void this.decide(body, o);
        else yield o;
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
      if (this.pending.get(id)?.state === 'parking') this.pending.delete(id); // ended unparked (refused, failed)
    }
  }

  private abort(id: RequestId): void {
    const p = this.pending.get(id);
    if (!p) return this.opts.engine.abort(id); // decided local, or done: nothing can write
    p.aborted = true;
    if (p.state === 'parking') {
      this.pending.delete(id); // decide() will find nothing to do
      this.opts.engine.abort(id);
    } else if (p.state === 'pushed') {
      void this.settle(id, p);
    } // deciding: decide() acts on the flag when it ends
  }

  private async decide(body: GenerateRequest, parked: RequestOutput): Promise<void> {
    const { engine, blockSize, maxLocalPrefillLength, maxPrefillQueueSize, log } = this.opts;
    const id = body.requestId;
    const p = this.pending.get(id);
    if (!p || p.state !== 'parking') return; // aborted while parking: the engine freed it
    p.state = 'deciding';
    const n = body.promptTokenIds.length;
    const uncached = n - parked.numCachedTokens;
    let reason: string | undefined;
    if (uncached <= maxLocalPrefillLength) {
      reason = `uncached ${uncached} <= max-local-prefill-length ${maxLocalPrefillLength}`;
    } else {
      try {
        const depth = await this.opts.queue.depth();
        this.counters.prefill_queue_depth = depth;
        if (depth >= maxPrefillQueueSize) reason = `prefill queue holds ${depth} >= max-prefill-queue-size ${maxPrefillQueueSize}`;
      } catch (err) {
        reason = `prefill queue unreachable (${(err as Error).message})`;
      }
    }
    if (p.aborted) {
      this.pending.delete(id);
      return engine.abort(id);
    }
    if (reason !== undefined) {
      this.pending.delete(id);
      this.counters.local_prefills++;
      log('debug', `${id}: prefill local: ${reason}`);
      return engine.completeExternalKv(id, false);
    }
    const job: RemotePrefillJob = {
      request_id: id,
      decode_worker_id: this.opts.workerId,
      decode_instance_id: this.opts.instanceId,
      token_ids: body.promptTokenIds,
      block_ids: parked.blockIds ?? [],
      computed_block_count: Math.floor(parked.numCachedTokens / blockSize),
      sampling_params: body.sampling,
      deadline_ms: Date.now() + this.opts.deadlineMs,
    };
    try {
      await this.opts.claims.create(id);
    } catch (err) {
      this.pending.delete(id);
      if (p.aborted) return engine.abort(id);
      this.counters.local_prefills++;
      log('debug', `${id}: prefill local: cannot create the job's claim (${(err as Error).message})`);
      return engine.completeExternalKv(id, false);
    }
    p.state = 'pushed'; // from here on only the claim decides who may write
    p.pushedAt = performance.now();
    try {
      await this.opts.queue.push(job);
    } catch (err) {
      log('debug', `${id}: cannot queue the job (${(err as Error).message}): taking its claim back`);
      return this.settle(id, p, 'the job could not be queued');
    }
    log('debug', `${id}: prefill remote: uncached ${uncached} > ${maxLocalPrefillLength}, ${job.block_ids.length - job.computed_block_count} blocks to write`);
    p.timer = setTimeout(() => void this.settle(id, p, 'it missed its deadline'), this.opts.deadlineMs);
    this.watchLeases();
    if (p.aborted) void this.settle(id, p);
  }

  // Takes the claim back (pending or taken:P -> local/aborted; writing:P -> ... once P is dead),
  // then prefills locally (saying why) or aborts. Retries while Redis is away; a notification
  // meanwhile wins.
  private async settle(id: RequestId, p: Pending, why = 'the request was aborted'): Promise<void> {
    if (p.settling) return;
    p.settling = true;
    clearTimeout(p.timer);
    const to: ClaimState = p.aborted ? 'aborted' : 'local';
    while (this.pending.get(id) === p) {
      try {
        let state: ClaimState | null = 'pending';
        if (!(await this.opts.claims.move(id, 'pending', to))) {
          state = await this.opts.claims.get(id);
          if (state === null) break; // expired: nobody holds it any more
          if (state.startsWith('taken:') || state.startsWith('dropped:')) {
            if (!(await this.opts.claims.move(id, state, to))) continue; // its holder moved on: look again
          } else if (state.startsWith('writing:')) {
            const writer = state.slice('writing:'.length);
            if (await this.opts.isWriterAlive(writer)) {
              await new Promise((r) => setTimeout(r, SETTLE_RETRY_MS));
              continue; // its notification is on the way
            }
            if (!(await this.opts.claims.move(id, state, to))) continue;
          } else if (state !== to) {
            continue;
          }
        }
        break;
      } catch {
        await new Promise((r) => setTimeout(r, SETTLE_RETRY_MS));
      }
    }
    if (this.pending.get(id) !== p) return; // notified meanwhile
    this.pending.delete(id);
    if (p.aborted) return this.opts.engine.abort(id);
    this.counters.fallbacks++;
    this.opts.log('info', `${id}: remote prefill given up (${why}): prefilling locally`);
    this.opts.engine.completeExternalKv(id, false);
  }

  get numPending(): number {
    return this.pending.size;
  }
}

export interface RunnerOptions {
  engine: Engine;
  transfer: KvTransfer;
  workerId: WorkerId;
  instanceId: string; // this process's discovery instance: names it in writing:... claims
  blockSize: number;
  claims: PrefillClaims;
  // The decode worker's current lease: its instanceId and transfer metadata (null: gone).
  lookupWorker: (workerId: string) => Promise<{ instanceId: string; transfer?: string } | null>;
  log: Log;
}

export class PrefillJobRunner {
  readonly counters: DisaggCounters = newDisaggCounters();
  private readonly peers = new Map<string, { metadata: string; name: string }>();

  constructor(private readonly opts: RunnerOptions) {}

  async run(job: RemotePrefillJob, attempt: number): Promise<void> {
    const { engine, transfer, blockSize, claims, log, workerId } = this.opts;
    const id = job.request_id;
    if (Date.now() > job.deadline_ms) return this.drop(id, 'past its deadline', 'pending');
    const peer = await this.peer(job);
    // The lease names another instance: the job's decode worker died, or it has not yet taken
    // over its lease after a restart and is waiting for this job.
    if (!peer) return this.drop(id, `decode worker ${job.decode_worker_id} restarted or left`, 'pending');
    const taken: ClaimState = `taken:${workerId}/${this.opts.instanceId}`;
    if (!(await claims.take(id, taken))) return this.drop(id, 'the decode worker took it back');

    const localId = `${id}#prefill-${attempt}`;
    const first = job.computed_block_count;
    let held: number[] | undefined;
    let read = 0;
    let readSeconds = 0;
    const stream = engine.generate(localId, job.token_ids, { maxTokens: 1, temperature: 0 }, undefined, {
      prefillOnly: true,
      numExternalTokens: first * blockSize,
    });
    try {
      for await (const o of stream) {
        if (o.awaitingKv) {
          // Blocks [cached, first) are on the decode worker only: read them, or compute them.
          const from = Math.floor(o.numCachedTokens / blockSize);
          const t0 = performance.now();
          try {
            await transfer.read(peer, Int32Array.from(job.block_ids.slice(from, first)), Int32Array.from(o.blockIds!.slice(from, first)));
            read = first - from;
            readSeconds = this.count(read, t0);
            engine.completeExternalKv(localId, true);
          } catch (err) {
            log('warn', `${id}: reading the decode worker's cached blocks failed (${(err as Error).message}): computing them`);
            engine.completeExternalKv(localId, false);
          }
        } else if (o.finishReason === 'prefilled') {
          held = o.blockIds;
        } else if (o.finishReason) {
          throw new Error(`prefill of ${id} ended with ${o.finishReason}${o.error ? `: ${o.error}` : ''}`);
        }
      }
      if (!held) throw new Error(`prefill of ${id} ended without its blocks`);
      if (Date.now() > job.deadline_ms) return this.drop(id, 'computed after its deadline', taken);
      const writing: ClaimState = `writing:${workerId}/${this.opts.instanceId}`;
      if (!(await claims.move(id, taken, writing))) return this.drop(id, 'the decode worker took it back');
      // The blocks, then (so the notification can say how long they took) the notification: the
      // agent delivers a peer's notifications after the data of its earlier writes.
      const written = held.length - first;
      const t0 = performance.now();
      try {
        await transfer.write(Int32Array.from(held.slice(first)), peer, Int32Array.from(job.block_ids.slice(first, held.length)), '');
        const writeSeconds = this.count(written, t0);
        const done: RemotePrefillDone = {
          request_id: id,
          prefill_worker_id: workerId,
          blocks_written: written,
          blocks_read: read,
          transfer_seconds: readSeconds + writeSeconds,
        };
        await transfer.write(new Int32Array(0), peer, new Int32Array(0), JSON.stringify(done));
      } catch (err) {
        await claims.move(id, writing, taken).catch(() => undefined); // a retry or the fallback takes it
        throw err;
      }
      this.counters.prefill_jobs++;
    } finally {
      if (held) engine.releaseHeld(localId);
      else engine.abort(localId);
    }
  }

  // Drops the job; one whose claim is still `claim` is marked dropped:<me>, so that a decode
  // worker waiting for it takes it back at once instead of at its deadline.
  private async drop(id: string, why: string, claim?: ClaimState): Promise<void> {
    this.counters.prefill_jobs_dropped++;
    this.opts.log('debug', `${id}: job dropped: ${why}`);
    if (claim) await this.opts.claims.move(id, claim, `dropped:${this.opts.workerId}/${this.opts.instanceId}`).catch(() => undefined);
  }

  // Counts a transfer of `blocks` that started at `since`; returns its seconds.
  private count(blocks: number, since: number): number {
    const seconds = (performance.now() - since) / 1000;
    this.counters.transfer_bytes += blocks * this.opts.engine.info.kvBlockBytes;
    this.counters.transfer_seconds += seconds;
    return seconds;
  }

  // The decode worker's agent, connected once per instance (reconnected after a restart).
  private async peer(job: RemotePrefillJob): Promise<string | undefined> {
    const lease = await this.opts.lookupWorker(job.decode_worker_id);
    if (!lease || lease.instanceId !== job.decode_instance_id || !lease.transfer) return undefined;
    const known = this.peers.get(job.decode_worker_id);
    if (known && known.metadata === lease.transfer) return known.name;
    const name = this.opts.transfer.connect(lease.transfer);
    this.peers.set(job.decode_worker_id, { metadata: lease.transfer, name });
    return name;
  }
}
