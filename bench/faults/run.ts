// bench/faults/run.ts: one fault-injection case: a real deployment (the launcher, the tiny model,
// the reference CPU kernels so that a migrated greedy stream is exact, unless the case asks for
// the machine's own path), steady streaming load
// from `streams` client loops, one fault injected while it runs, then the accounting:
//   sent       requests the loops sent
//   ok         streamed to finish_reason 'length' with the tokens of an undisturbed run
//   failed     ended with a clean error: an HTTP error or an SSE error event with the OpenAI
//              error body, or finish_reason 'abort' (the server stopping), its tokens so far a
//              prefix of the undisturbed ones; or a connection refused (the server is gone)
//   hung       no end within HANG_MS
//   wrong      other tokens than the undisturbed run, or a stream that ended without a finish
//              reason or an error
//   leaked     KV blocks still active on the workers once the load stopped and settled
// Pass rule: no hang, no wrong answer, no leak; and no failure at all unless the case allows it
// (no other worker, Redis itself gone, the deployment stopping).
// References: each prompt's greedy tokens from the same deployment before the fault.
import { CLUSTER_AUTH_HEADER, clusterSecret, httpAuthHeader } from '../../ts/runtime/cluster-secret.ts';
import fs from 'node:fs';
import path from 'node:path';
import { ensureModel } from '../../ts/modelgen/index.ts';
import type { WorkerLoad } from '../../ts/protocol/index.ts';
import { packageRoot } from '../../ts/native/loader.ts';
import { alive, childPids, freePort, launch, launchNpm, readyWorkers, type Launched } from '../../test/helpers/launcher.ts';
import { promptTokens } from '../../test/helpers/prompts.ts';

export const HANG_MS = 30_000;
const MAX_TOKENS = 48;
const PROMPTS = 8;

export interface Outcome {
  sent: number;
  ok: number;
  failed: number;
  hung: number;
  wrong: number;
  leaked: number;
  ttftMs: number[]; // of the requests that got a token
  failures: Map<string, number>; // error code or message -> count
}

export interface CaseResult extends Outcome {
  name: string;
  pass: boolean;
  seconds: number;
  notes: string[];
  skipped?: string;
}

export interface Deployment {
  url: string;
  output(): string;
  launcherPid: number;
  exited: Promise<number | null>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  // The latest address of each worker the launcher said is ready (worker-N, decode-N, prefill-N).
  workers(): Map<string, string>;
  workerPid(name: string): Promise<number>;
  descendants(): number[];
}

export interface CaseContext {
  dep: Deployment;
  notes: string[];
  sleep(ms: number): Promise<void>;
  // Another request load beside the steady one, awaited before the accounting.
  extra(p: Promise<unknown>): void;
  fail(why: string): void; // the case's own check failed
}

export interface FaultCase {
  name: string;
  args: string[];
  viaNpm?: boolean; // start with `npm run start --` instead of the launcher itself
  allowFailures?: boolean;
  allowedFailures?: RegExp; // with allowFailures: only these codes; others fail the case
  gone?: boolean; // the deployment is meant to end: no leak check, and the "nothing left" check
  prompts?: number; // prompt length (default 40)
  // 'default': the kernel path this CPU serves with (KVSERVE_CPU_KERNELS, else the best it has),
  // for a case that measures latency and migrates nothing; the reference kernels are plain loops
  // whose step costs in proportion to its rows, which no deployment serves with.
  kernels?: 'reference' | 'default';
  durationMs?: number; // load time after the fault (default 8 s)
  skip?: () => string | undefined;
  // Resources of the case's own (a Redis it kills); extra launcher args; cleanup at the end.
  prepare?: () => Promise<{ args: string[]; cleanup(): Promise<void> }>;
  inject(ctx: CaseContext): Promise<void>;
}

async function deploy(c: FaultCase, modelDir: string): Promise<Deployment> {
  const port = await freePort();
  const args = ['--model', modelDir, '--device', 'cpu', '--kv-cache-memory', '64MiB', '--http-port', String(port), ...c.args];
  const env: NodeJS.ProcessEnv = c.kernels === 'default' ? {} : { KVSERVE_CPU_KERNELS: 'reference' };
  let l: Launched;
  if (c.viaNpm) l = await launchNpm(args, env);
  else l = await launch(args, env);
  const workers = () => readyWorkers(l.output());
  return {
    url: l.url,
    output: l.output,
    launcherPid: l.proc.pid!,
    exited: l.exited,
    stop: l.stop,
    workers,
    workerPid: async (name) => ((await (await fetch(`${workers().get(name)}/info`, { headers: secretHeader('GET', '/info') })).json()) as { pid: number }).pid,
    descendants: () => descendants(l.proc.pid!),
  };
}

export function descendants(pid: number): number[] {
  return childPids(pid).flatMap((c) => [c, ...descendants(c)]);
}

interface StreamResult {
  tokens: string[];
  finish: string | null;
  error?: string; // a clean error's code
  unclean?: string;
  hung?: boolean;
  ttftMs?: number;
}

// One greedy streamed completion over plain fetch (no client retries), read to its end.
export async function streamOnce(url: string, prompt: number[], signal?: AbortSignal, maxTokens = MAX_TOKENS): Promise<StreamResult> {
  const out: StreamResult = { tokens: [], finish: null };
  const t0 = performance.now();
  const hang = AbortSignal.timeout(HANG_MS);
  const both = signal ? AbortSignal.any([signal, hang]) : hang;
  try {
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true, logprobs: 0, return_tokens_as_token_ids: true, stream: true }),
      signal: both,
    });
    if (res.status !== 200) {
      const body = (await res.json().catch(() => null)) as { error?: { code?: string; message?: string; type?: string } } | null;
      if (body?.error?.message && body.error.type) out.error = `${res.status} ${body.error.code}`;
      else out.unclean = `HTTP ${res.status} without an OpenAI error body`;
      return out;
    }
    let buffered = '';
    const decoder = new TextDecoder();
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buffered += decoder.decode(chunk, { stream: true });
      let at: number;
      while ((at = buffered.indexOf('\n\n')) >= 0) {
        const event = buffered.slice(0, at);
        buffered = buffered.slice(at + 2);
        if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
        const data = JSON.parse(event.slice(6)) as {
          error?: { code?: string; message?: string };
          choices?: { logprobs?: { tokens?: string[] }; finish_reason?: string | null }[];
        };
        if (data.error) {
          out.error = `stream ${data.error.code}`;
          continue;
        }
        for (const c of data.choices ?? []) {
          const t = c.logprobs?.tokens ?? [];
          if (t.length > 0 && out.ttftMs === undefined) out.ttftMs = performance.now() - t0;
          out.tokens.push(...t);
          if (c.finish_reason) out.finish = c.finish_reason;
        }
      }
    }
  } catch (err) {
    if (hang.aborted) out.hung = true;
    else if (signal?.aborted) out.error = 'client aborted';
    else out.error = `connection: ${(err as Error).cause ? ((err as Error).cause as Error).message : (err as Error).message}`;
  }
  return out;
}

function classify(r: StreamResult, want: string[], o: Outcome): void {
  o.sent++;
  if (r.ttftMs !== undefined) o.ttftMs.push(r.ttftMs);
  const prefix = r.tokens.every((t, i) => t === want[i]);
  if (r.hung) o.hung++;
  else if (r.unclean !== undefined || !prefix) o.wrong++;
  else if (r.error !== undefined) {
    o.failed++;
    o.failures.set(r.error, (o.failures.get(r.error) ?? 0) + 1);
  } else if (r.finish === 'length' && r.tokens.length === want.length) o.ok++;
  else if (r.finish === 'abort') {
    // The server ended the stream on purpose (it is stopping): a clean end, not an answer.
    o.failed++;
    o.failures.set('finish abort', (o.failures.get('finish abort') ?? 0) + 1);
  } else o.wrong++;
}

// Each worker's active KV blocks (GET /load), by name; NaN for one that does not answer.
// A case whose deployment has a cluster secret (in this process's environment) shows it to the workers' HTTP.
const secretHeader = (method: string, path: string): Record<string, string> => {
  const secret = clusterSecret();
  return secret ? { [CLUSTER_AUTH_HEADER]: httpAuthHeader(secret, method, path) } : {};
};

export async function workerActiveBlocks(workers: Map<string, string>): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const [name, address] of workers) {
    const load = (await fetch(`${address}/load`, { headers: secretHeader('GET', '/load'), signal: AbortSignal.timeout(2000) })
      .then((r) => (r.ok ? r.json() : null))
      .catch(() => null)) as WorkerLoad | null;
    out[name] = load ? load.kv_active_blocks : NaN;
  }
  return out;
}

// The blocks active on every worker; a worker that is gone holds nothing.
async function activeBlocks(dep: Deployment): Promise<number> {
  return Object.values(await workerActiveBlocks(dep.workers())).reduce((sum, b) => sum + (Number.isNaN(b) ? 0 : b), 0);
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export async function runCase(c: FaultCase, opts: { streams?: number } = {}): Promise<CaseResult> {
  const started = performance.now();
  const outcome: Outcome = { sent: 0, ok: 0, failed: 0, hung: 0, wrong: 0, leaked: 0, ttftMs: [], failures: new Map() };
  const notes: string[] = [];
  const skipped = c.skip?.();
  if (skipped) return { name: c.name, pass: true, seconds: 0, notes, skipped, ...outcome };
  const modelDir = (await ensureModel('tiny-llama')).dir;
  const own = await c.prepare?.();
  let failedCheck = false;
  const dep = await deploy({ ...c, args: [...c.args, ...(own?.args ?? [])] }, modelDir).catch(async (err) => {
    await own?.cleanup();
    throw err;
  });
  const before = new Set(dep.descendants());
  const streams = opts.streams ?? 6;
  try {
    const prompts = Array.from({ length: PROMPTS }, (_, i) => promptTokens(1000 + i, (c.prompts ?? 40) + 3 * i));
    const refs: string[][] = [];
    for (const p of prompts) {
      const r = await streamOnce(dep.url, p);
      if (r.finish !== 'length') throw new Error(`${c.name}: the undisturbed run failed: ${r.error ?? r.unclean ?? 'no finish'}`);
      refs.push(r.tokens);
    }
    let stopping = false;
    const extras: Promise<unknown>[] = [];
    const loops = Array.from({ length: streams }, async (_, s) => {
      for (let k = s; !stopping; k += streams) {
        const i = k % PROMPTS;
        classify(await streamOnce(dep.url, prompts[i]!), refs[i]!, outcome);
        if (c.gone && outcome.failures.size > 0 && !alive(dep.launcherPid)) await sleep(200); // nothing to hammer
      }
    });
    await sleep(2000);
    const fail = (why: string) => {
      failedCheck = true;
      notes.push(why);
    };
    await c.inject({ dep, notes, sleep, extra: (p) => extras.push(p), fail });
    await sleep(c.durationMs ?? 8000);
    stopping = true;
    await Promise.all([...loops, ...extras]);
    if (c.gone) {
      await sleep(5000);
      const left = [...before].filter((pid) => alive(pid));
      const shm = fs.readdirSync('/dev/shm').filter((n) => [...before, dep.launcherPid].some((pid) => n.startsWith(`kvserve-${pid}-`)));
      if (left.length > 0) notes.push(`processes left 5 s after: ${left.join(', ')}`);
      if (shm.length > 0) notes.push(`shm segments left: ${shm.join(', ')}`);
      outcome.leaked = left.length + shm.length;
    } else {
      // Aborted requests free their blocks within a moment; a restarted worker starts empty.
      const end = Date.now() + 15_000;
      while ((outcome.leaked = await activeBlocks(dep)) > 0 && Date.now() < end) await sleep(250);
    }
  } finally {
    if (alive(dep.launcherPid)) await dep.stop();
    await own?.cleanup();
  }
  const unexpected = [...outcome.failures.keys()].filter((code) => !c.allowFailures || (c.allowedFailures !== undefined && !c.allowedFailures.test(code)));
  if (unexpected.length > 0) notes.push(`failures not allowed here: ${unexpected.join(', ')}`);
  const pass = !failedCheck && outcome.hung === 0 && outcome.wrong === 0 && outcome.leaked === 0 && unexpected.length === 0;
  return { name: c.name, pass, seconds: (performance.now() - started) / 1000, notes, ...outcome };
}

export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

export const resultsDir = path.join(packageRoot, 'bench', 'results');
