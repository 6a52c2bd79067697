// flags.ts: the launcher's command line (DESIGN.md section 1; the seed's flag names, so its six
// examples run unchanged). Parsing is strict: an unknown flag or a bad value is an error with
// the flag's name; flags whose feature has not landed yet are refused, never ignored, and so are
// flags that do not apply to the node's --role (FLAG_GROUPS). checkNode holds what a node of a
// deployment over several hosts needs: the Redis URL, the cluster secret off loopback, and a
// leader's Redis password file when its Redis serves other hosts.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { CLUSTER_SECRET_ENV, isLoopback } from '../runtime/cluster-secret.ts';
import { maskRedisUrl, parseClusterUrl, parseSentinelUrl } from '../runtime/redis-connection.ts';
import { isReasoningParserName, unknownReasoningParserMessage, type ReasoningParserName } from '../processor/reasoning-parser.ts';
import { isToolCallParserName, unknownToolCallParserMessage, type ToolCallParserName } from '../processor/tool-call-parser.ts';

// What one launcher starts (DESIGN.md section 8): a leader is a whole deployment (its Redis when
// a mode needs one, workers, a frontend); the other roles join an existing deployment through its
// Redis and start only their own processes.
export const ROLES = ['leader', 'frontend', 'worker', 'prefill'] as const;
export type NodeRole = (typeof ROLES)[number];

export interface LauncherFlags {
  role: NodeRole;
  model?: string;
  workers: number; // monolithic workers, or decode workers when prefill workers exist (or --remote-prefill); 0 on a prefill or frontend node
  prefillWorkers: number; // 0 on a worker or frontend node
  remotePrefill: boolean; // decode workers push long prompts to the prefill queue: --prefill-workers > 0 or --remote-prefill
  advertiseHost: string; // what this node's workers bind to and publish in discovery
  redisPort?: number; // leader: the private redis-server's port (default: a free one)
  redisPasswordFile?: string; // leader: the private redis-server's password, read from (or written to) this file
  router: 'round-robin' | 'kv' | 'random';
  kvOverlapWeight: number;
  routerTemperature: number;
  decodeTp: number;
  prefillTp: number;
  blockSize: number;
  blockSizeGiven: boolean; // a frontend node without --block-size takes its workers'
  maxLocalPrefillLength: number;
  maxPrefillQueueSize: number;
  prefillDeadlineMs: number;
  httpPort: number;
  host: string;
  redisUrl?: string; // --redis-url, else $KVSERVE_REDIS_URL; may carry a password: log maskRedisUrl(redisUrl)
  device: 'cpu' | 'cuda' | 'auto';
  maxModelLen?: number;
  maxNumSeqs?: number;
  maxNumBatchedTokens?: number;
  kvCacheMemory?: number; // bytes
  servedModelName?: string;
  reasoningParser?: ReasoningParserName;
  enableAutoToolChoice: boolean;
  toolCallParser?: ToolCallParserName;
  generationConfig: string; // 'auto', 'vllm', or an absolute directory
  restart: boolean; // default on; --no-restart turns it off
  shutdownGraceS: number;
  apiKey?: string; // --api-key, else $KVSERVE_API_KEY
  metricsRequireKey: boolean;
  migrationLimit: number; // 0 = no request migration
  migrationMaxSeqLen?: number; // absent = no cap beyond the context length
  stallTimeoutS: number; // 0 = off
  requestTimeoutS?: number; // absent = no deadline
  activeDecodeBlocksThreshold?: number; // (0, 1]
  activePrefillTokensThreshold?: number;
  routerQueueThreshold: number;
  maxChoicesPerRequest: number;
  clusterSecret?: string; // --cluster-secret, else $KVSERVE_CLUSTER_SECRET: the internal planes' handshake
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace';
  help: boolean;
}

export class FlagError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FlagError';
  }
}

export const HELP = `Usage: npm run start -- [flags]

Serves an OpenAI-compatible API (POST /v1/chat/completions, /v1/completions, GET /v1/models,
/health, /ready, /metrics) in front of native engine workers.

Roles (one launcher per host; a deployment has one leader, or an external Redis)
  --role leader|frontend|worker|prefill
                                leader (default): the whole deployment on this host: Redis
                                when a mode needs one, workers and a frontend. The other roles
                                join an existing deployment through --redis-url and start only
                                their own processes: frontend = a frontend with its router
                                (workers learnt from discovery); worker = decode (or monolithic)
                                workers (--workers N, --decode-tp N; --remote-prefill when the
                                deployment has prefill nodes); prefill = prefill workers
                                (--prefill-workers N, default 1, --prefill-tp N). A flag that
                                does not apply to the role is refused, naming it
  --remote-prefill              decode workers push long prompts to the prefill queue, served by
                                prefill workers of this or other nodes (--role prefill); implied
                                on a leader by --prefill-workers > 0
  --advertise-host HOST         the address this node's workers bind their internal listeners
                                (request plane, HTTP, KV transfer) to and publish in discovery
                                (default: 127.0.0.1 on a leader, else the host's first
                                non-loopback IPv4 address); off loopback it needs
                                --cluster-secret. On a leader it also opens the private Redis
                                to other hosts (on HOST as well as loopback)
  --redis-port N                leader: the private redis-server's port (default: a free one)
  --redis-password-file FILE    leader: the private redis-server's password is read from FILE,
                                or, if FILE does not exist, a random one is written to it (mode
                                0600); other nodes join with
                                --redis-url redis://:PASSWORD@HOST:PORT. Required when a leader
                                serves other hosts with its private Redis

Model
  --model DIR|ORG/NAME          Hugging Face model directory, or an id resolved in the local HF
                                cache ($HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub).
                                Default: a built-in tiny Llama, generated on first use.
  --served-model-name NAME      the name clients send as "model" (default: the --model value)
  --generation-config auto|vllm|DIR
                                sampling defaults (temperature, top_p, top_k, min_p,
                                repetition_penalty; max_new_tokens caps max_tokens) for
                                requests that leave them unset: auto = the model's
                                generation_config.json, vllm = none, DIR = the
                                generation_config.json in DIR (default auto)

Topology
  --workers N, --decode-workers N
                                monolithic worker processes (decode workers with prefill
                                workers) (default 1; a leader with a Redis may have 0 and
                                serve the workers of other nodes)
  --prefill-workers N           prefill worker processes; > 0 turns on disaggregation: decode
                                workers push long prompts to a prefill queue (Redis), a
                                prefill worker computes their KV and writes it into the decode
                                worker's cache (default 0)
  --router round-robin|kv|random
                                how requests pick a worker (default round-robin); kv weighs
                                each worker's cached prefix of the prompt against its load
  --kv-overlap-weight W         kv router: weight of the uncached prompt blocks against the
                                worker's active blocks, W >= 0 (default 1; 2 keeps long shared
                                prefixes on their busy worker, for prefill-heavy traffic)
  --router-temperature T        kv router: 0 picks the lowest cost (ties at random); T > 0
                                samples a softmax over the negated costs (default 0)
  --decode-tp N, --worker-tp N, --prefill-tp N
                                tensor-parallel ranks per worker (default 1): a worker is N
                                processes, each with 1/N of the attention heads, FFN columns
                                and vocabulary and its share of the cores (CUDA: rank r on
                                GPU r modulo the GPUs; not yet run on a GPU); N must
                                divide the attention heads and the FFN width, and divide or
                                be a multiple of the KV heads
  --max-local-prefill-length N  with prefill workers: prefill remotely only when more than N
                                prompt tokens are not in the decode worker's cache (default 1000)
  --max-prefill-queue-size N    ... and only while the prefill queue holds fewer than N jobs
                                (default 2)
  --prefill-deadline-ms N       ... and if the job is not done N ms after it was queued, the
                                decode worker prefills locally (default 30000)

Engine
  --device cpu|cuda|auto        engine backend (default auto: cuda when usable, else cpu)
  --block-size N                KV block size in tokens (default 16)
  --max-model-len N             context length (default: the model's)
  --max-num-seqs N              sequences batched at once per worker (default 64)
  --max-num-batched-tokens N    token budget per engine step (default 2048)
  --kv-cache-memory SIZE        KV cache size per worker, bytes or with a unit: 512MiB, 4GiB
                                (default: enough for max-num-seqs full sequences, at most 1 GiB)

Serving
  --reasoning-parser NAME       split chat answers into reasoning_content and content;
                                deepseek_r1: reasoning until </think> (default: off)
  --enable-auto-tool-choice     tool_choice "auto": the model may call the request's tools
                                (needs --tool-call-parser)
  --tool-call-parser NAME       how tool calls are read from the answer: hermes (Hermes,
                                Qwen 2.5, Qwen 3), llama3_json (Llama 3.1-3.3)
  --http-port N                 OpenAI server port (default 8181)
  --host ADDR                   address to listen on (default 0.0.0.0)
  --redis-url URL               use this Redis; otherwise a private redis-server, with a
                                random password, is started when a mode needs one (--router
                                kv or random, --prefill-workers; a plain round-robin needs
                                none). The URL may carry a password (redis://:PW@HOST:PORT,
                                rediss://USER:PW@HOST:PORT); it is never logged, and
                                $KVSERVE_REDIS_URL does the same without putting it on a
                                command line other local users can read. A Redis that
                                Sentinel watches: redis+sentinel://[:PW@]HOST:PORT[,HOST:PORT
                                ...]/MASTER (the sentinels, the master's name): every client
                                follows the master across a failover. A Redis Cluster:
                                redis+cluster://[:PW@]HOST:PORT[,HOST:PORT...] (some of its
                                nodes); a namespace's keys share one hash slot ({kvserve})
  --restart, --no-restart       a child process that dies is restarted, with backoff, while
                                the others keep serving, and one that fails to start again 3
                                times in a row stops the launcher (--restart, the default);
                                --no-restart stops everything when a child dies
  --shutdown-grace-s N          on SIGTERM, the frontend answers new requests with 503 and
                                Retry-After and lets the streams in flight finish for up to N
                                seconds before everything stops; then each worker (on a node
                                of workers only: at once) leaves the frontends' routing and
                                finishes its own streams within N seconds (default 30;
                                SIGINT/Ctrl-C stops at once)
  --api-key KEY                 require Authorization: Bearer KEY on every /v1/ route (401
                                otherwise); $KVSERVE_API_KEY does the same without putting the
                                key on a command line other local users can read
  --metrics-require-key         put /metrics behind the API key too (/health and /ready stay
                                open for probes)
  --migration-limit N           a streaming request whose worker dies or drops its connection
                                goes on on another worker, with its prompt and the tokens it
                                got so far, up to N times per choice; 0 = off: the client gets
                                the error (default 3)
  --migration-max-seq-len N     migrate only requests of at most N prompt + generated tokens
                                (default: no cap beyond the context length)
  --cluster-secret SECRET       every peer of the internal planes (the request plane, the
                                workers' HTTP, the KV transfer agents) must prove it knows
                                SECRET (an HMAC handshake once per connection; HTTP: an HMAC
                                in the x-kvserve-cluster-auth header), else it is refused; at least
                                16 printable ASCII characters; $KVSERVE_CLUSTER_SECRET does the
                                same without putting it on a command line. Loopback listeners
                                (the default) need none; a node whose --advertise-host is not
                                loopback, or a frontend node whose Redis is on another host,
                                refuses to start without it (default: none)

Overload and stalls
  --active-decode-blocks-threshold F
                                a worker whose active KV blocks exceed this share (0-1] of its
                                cache is busy: new requests go elsewhere (default 1: only when
                                the request's blocks do not fit)
  --active-prefill-tokens-threshold N
                                a worker with more than N prompt tokens routed to it and not yet
                                prefilled is busy (default: no limit)
  --router-queue-threshold N    requests that find every worker busy wait in a queue of at most
                                N (default 256); beyond it they get 503 with Retry-After at once
  --request-timeout S           a request not finished after S seconds is aborted on its worker
                                (its KV blocks freed) and fails with 504 (default: no deadline)
  --stall-timeout-s S           a request whose worker produced nothing for S seconds and does
                                not answer a health probe goes to another worker (default 5;
                                0 = off)
  --max-choices-per-request N   n times the number of prompts a request may ask for (default
                                128, OpenAI's own cap on n); beyond it, 400

  --log-level LEVEL             fatal|error|warn|info|debug|trace (default info)
  -h, --help                    this text
`;

function int(name: string, v: string | undefined, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw new FlagError(`--${name} must be an integer, got '${v}'`);
  const n = Number(v);
  if (n < min || n > max) throw new FlagError(`--${name} must be in [${min}, ${max}], got ${n}`);
  return n;
}

function share(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !(n > 0 && n <= 1)) throw new FlagError(`--${name} must be a number in (0, 1], got '${v}'`);
  return n;
}

function num(name: string, v: string | undefined, min: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < min) throw new FlagError(`--${name} must be a number >= ${min}, got '${v}'`);
  return n;
}

const UNITS: Record<string, number> = { '': 1, b: 1, k: 1e3, kb: 1e3, kib: 1024, m: 1e6, mb: 1e6, mib: 2 ** 20, g: 1e9, gb: 1e9, gib: 2 ** 30 };

export function parseBytes(name: string, v: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(v.trim());
  const unit = m ? UNITS[m[2].toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new FlagError(`--${name} must be a size like 536870912, 512MiB or 4GiB, got '${v}'`);
  const bytes = Math.floor(Number(m[1]) * unit);
  if (bytes < 1) throw new FlagError(`--${name} must be positive`);
  return bytes;
}

function oneOf<T extends string>(name: string, v: string | undefined, allowed: readonly T[], dflt: T): T {
  if (v === undefined) return dflt;
  if (!(allowed as readonly string[]).includes(v)) throw new FlagError(`--${name} must be one of ${allowed.join(', ')}, got '${v}'`);
  return v as T;
}

function toolCallParser(v: string | undefined): ToolCallParserName | undefined {
  if (v === undefined) return undefined;
  if (!isToolCallParserName(v)) throw new FlagError(`--tool-call-parser: ${unknownToolCallParserMessage(v)}`);
  return v;
}

function reasoningParser(v: string | undefined): ReasoningParserName | undefined {
  if (v === undefined) return undefined;
  if (!isReasoningParserName(v)) throw new FlagError(`--reasoning-parser: ${unknownReasoningParserMessage(v)}`);
  return v;
}

// auto | vllm | a directory (made absolute; its generation_config.json is checked with the
// model's, before any worker starts).
function generationConfig(v: string | undefined): string {
  if (v === undefined || v === 'auto' || v === 'vllm') return v ?? 'auto';
  const dir = path.resolve(v);
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
    throw new FlagError(`--generation-config must be auto, vllm or a directory holding a generation_config.json, got '${v}'`);
  }
  return dir;
}

export function parseFlags(argv: string[]): LauncherFlags {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        role: { type: 'string' },
        'remote-prefill': { type: 'boolean' },
        'advertise-host': { type: 'string' },
        'redis-port': { type: 'string' },
        'redis-password-file': { type: 'string' },
        model: { type: 'string' },
        'served-model-name': { type: 'string' },
        'generation-config': { type: 'string' },
        'reasoning-parser': { type: 'string' },
        'enable-auto-tool-choice': { type: 'boolean' },
        'tool-call-parser': { type: 'string' },
        workers: { type: 'string' },
        'decode-workers': { type: 'string' },
        'prefill-workers': { type: 'string' },
        router: { type: 'string' },
        'kv-overlap-weight': { type: 'string' },
        'router-temperature': { type: 'string' },
        'decode-tp': { type: 'string' },
        'worker-tp': { type: 'string' },
        'prefill-tp': { type: 'string' },
        'block-size': { type: 'string' },
        'max-local-prefill-length': { type: 'string' },
        'max-prefill-queue-size': { type: 'string' },
        'prefill-deadline-ms': { type: 'string' },
        'http-port': { type: 'string' },
        host: { type: 'string' },
        'redis-url': { type: 'string' },
        device: { type: 'string' },
        'max-model-len': { type: 'string' },
        'max-num-seqs': { type: 'string' },
        'max-num-batched-tokens': { type: 'string' },
        'kv-cache-memory': { type: 'string' },
        restart: { type: 'boolean' },
        'no-restart': { type: 'boolean' },
        'shutdown-grace-s': { type: 'string' },
        'api-key': { type: 'string' },
        'metrics-require-key': { type: 'boolean' },
        'migration-limit': { type: 'string' },
        'migration-max-seq-len': { type: 'string' },
        'stall-timeout-s': { type: 'string' },
        'request-timeout': { type: 'string' },
        'active-decode-blocks-threshold': { type: 'string' },
        'active-prefill-tokens-threshold': { type: 'string' },
        'router-queue-threshold': { type: 'string' },
        'max-choices-per-request': { type: 'string' },
        'cluster-secret': { type: 'string' },
        'log-level': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    throw new FlagError(`${(err as Error).message} (see --help)`);
  }
  const v = parsed.values;
  const role = oneOf('role', v.role, ROLES, 'leader');
  checkRoleFlags(role, Object.keys(v).filter((k) => v[k as keyof typeof v] !== undefined));
  if (v.workers !== undefined && v['decode-workers'] !== undefined && v.workers !== v['decode-workers']) {
    throw new FlagError('--workers and --decode-workers name the same thing; give one');
  }
  if (v['enable-auto-tool-choice'] && v['tool-call-parser'] === undefined) {
    throw new FlagError('--enable-auto-tool-choice needs --tool-call-parser (hermes or llama3_json)');
  }
  if (v['decode-tp'] !== undefined && v['worker-tp'] !== undefined && v['decode-tp'] !== v['worker-tp']) {
    throw new FlagError('--decode-tp and --worker-tp name the same thing; give one');
  }
  const flags: LauncherFlags = {
    model: v.model,
    servedModelName: v['served-model-name'],
    reasoningParser: reasoningParser(v['reasoning-parser']),
    enableAutoToolChoice: v['enable-auto-tool-choice'] ?? false,
    toolCallParser: toolCallParser(v['tool-call-parser']),
    generationConfig: generationConfig(v['generation-config']),
    role,
    workers: role === 'leader' || role === 'worker' ? (int(v.workers !== undefined ? 'workers' : 'decode-workers', v.workers ?? v['decode-workers'], role === 'leader' ? 0 : 1, 256) ?? 1) : 0,
    prefillWorkers: role === 'leader' || role === 'prefill' ? (int('prefill-workers', v['prefill-workers'], role === 'leader' ? 0 : 1, 256) ?? (role === 'prefill' ? 1 : 0)) : 0,
    remotePrefill: false, // set below
    advertiseHost: advertiseHost(role, v['advertise-host']),
    redisPort: int('redis-port', v['redis-port'], 1, 65535),
    redisPasswordFile: v['redis-password-file'] === undefined ? undefined : path.resolve(v['redis-password-file']),
    router: oneOf('router', v.router, ['round-robin', 'kv', 'random'] as const, 'round-robin'),
    kvOverlapWeight: num('kv-overlap-weight', v['kv-overlap-weight'], 0) ?? 1,
    routerTemperature: num('router-temperature', v['router-temperature'], 0) ?? 0,
    decodeTp: int('decode-tp', v['decode-tp'] ?? v['worker-tp'], 1, 64) ?? 1,
    prefillTp: int('prefill-tp', v['prefill-tp'], 1, 64) ?? 1,
    blockSize: int('block-size', v['block-size'], 1, 1024) ?? 16,
    blockSizeGiven: v['block-size'] !== undefined,
    maxLocalPrefillLength: int('max-local-prefill-length', v['max-local-prefill-length'], 0) ?? 1000,
    maxPrefillQueueSize: int('max-prefill-queue-size', v['max-prefill-queue-size'], 0) ?? 2,
    prefillDeadlineMs: int('prefill-deadline-ms', v['prefill-deadline-ms'], 100, 3_600_000) ?? 30_000,
    httpPort: int('http-port', v['http-port'], 0, 65535) ?? 8181,
    host: v.host ?? '0.0.0.0',
    redisUrl: v['redis-url'] ?? (process.env.KVSERVE_REDIS_URL || undefined),
    device: oneOf('device', v.device, ['cpu', 'cuda', 'auto'] as const, 'auto'),
    maxModelLen: int('max-model-len', v['max-model-len'], 1),
    maxNumSeqs: int('max-num-seqs', v['max-num-seqs'], 1, 4096),
    maxNumBatchedTokens: int('max-num-batched-tokens', v['max-num-batched-tokens'], 1),
    kvCacheMemory: v['kv-cache-memory'] === undefined ? undefined : parseBytes('kv-cache-memory', v['kv-cache-memory']),
    restart: !(v['no-restart'] ?? false),
    shutdownGraceS: int('shutdown-grace-s', v['shutdown-grace-s'], 0, 3600) ?? 30,
    apiKey: v['api-key'] ?? (process.env.KVSERVE_API_KEY || undefined),
    metricsRequireKey: v['metrics-require-key'] ?? false,
    migrationLimit: int('migration-limit', v['migration-limit'], 0, 1000) ?? 3,
    migrationMaxSeqLen: int('migration-max-seq-len', v['migration-max-seq-len'], 1),
    stallTimeoutS: num('stall-timeout-s', v['stall-timeout-s'], 0) ?? 5,
    requestTimeoutS: num('request-timeout', v['request-timeout'], 0.001),
    activeDecodeBlocksThreshold: share('active-decode-blocks-threshold', v['active-decode-blocks-threshold']),
    activePrefillTokensThreshold: int('active-prefill-tokens-threshold', v['active-prefill-tokens-threshold'], 1),
    routerQueueThreshold: int('router-queue-threshold', v['router-queue-threshold'], 0, 1_000_000) ?? 256,
    maxChoicesPerRequest: int('max-choices-per-request', v['max-choices-per-request'], 1, 100_000) ?? 128,
    clusterSecret: v['cluster-secret'] ?? (process.env.KVSERVE_CLUSTER_SECRET || undefined),
    logLevel: oneOf('log-level', v['log-level'], ['fatal', 'error', 'warn', 'info', 'debug', 'trace'] as const, 'info'),
    help: v.help ?? false,
  };
  flags.remotePrefill = role === 'worker' ? (v['remote-prefill'] ?? false) : flags.prefillWorkers > 0 || (v['remote-prefill'] ?? false);
  if (v.restart && v['no-restart']) throw new FlagError('--restart and --no-restart contradict each other; give one');
  const disaggKnobs = ['max-local-prefill-length', 'max-prefill-queue-size', 'prefill-deadline-ms'] as const;
  const givenKnob = disaggKnobs.find((k) => v[k] !== undefined);
  if (!flags.remotePrefill && givenKnob) {
    throw new FlagError(
      `--${givenKnob} applies to disaggregated serving: add ${role === 'worker' ? '--remote-prefill (prefill workers on other nodes)' : '--prefill-workers N (or --remote-prefill for prefill workers on other nodes)'}`,
    );
  }
  if (flags.apiKey !== undefined && !/^[\x21-\x7e]+$/.test(flags.apiKey)) {
    throw new FlagError('--api-key (or KVSERVE_API_KEY) must be printable ASCII without spaces, as an HTTP header carries it');
  }
  if (flags.metricsRequireKey && flags.apiKey === undefined) {
    throw new FlagError('--metrics-require-key needs an API key: add --api-key KEY or set KVSERVE_API_KEY');
  }
  if (flags.redisUrl !== undefined && !/^(rediss?|redis\+sentinel|redis\+cluster):\/\//.test(flags.redisUrl)) {
    throw new FlagError(`--redis-url (or KVSERVE_REDIS_URL) must look like redis://host:port (or redis+sentinel://host:port,.../master, or redis+cluster://host:port,...), got '${maskRedisUrl(flags.redisUrl)}'`);
  }
  if (flags.redisUrl !== undefined) {
    try {
      parseSentinelUrl(flags.redisUrl);
      parseClusterUrl(flags.redisUrl);
    } catch (err) {
      throw new FlagError(`--redis-url: ${(err as Error).message}`);
    }
  }
  if (flags.clusterSecret !== undefined && !/^[\x21-\x7e]{16,}$/.test(flags.clusterSecret)) {
    throw new FlagError('--cluster-secret (or KVSERVE_CLUSTER_SECRET) must have at least 16 printable ASCII characters without spaces, as an HTTP header carries it');
  }
  checkNode(flags, v['advertise-host'] !== undefined);
  return flags;
}

// Which flags each role takes: a leader takes every one; a flag outside its role's groups is
// refused, naming it and the role (never ignored).
const FLAG_GROUPS = {
  common: ['role', 'model', 'served-model-name', 'redis-url', 'cluster-secret', 'restart', 'no-restart', 'log-level', 'shutdown-grace-s', 'help'],
  engine: ['device', 'block-size', 'max-model-len', 'max-num-seqs', 'max-num-batched-tokens', 'kv-cache-memory', 'advertise-host'],
  decode: ['workers', 'decode-workers', 'decode-tp', 'worker-tp', 'remote-prefill', 'max-local-prefill-length', 'max-prefill-queue-size', 'prefill-deadline-ms'],
  prefill: ['prefill-workers', 'prefill-tp'],
  frontend: [
    'generation-config', 'reasoning-parser', 'enable-auto-tool-choice', 'tool-call-parser', 'router', 'kv-overlap-weight', 'router-temperature',
    'http-port', 'host', 'api-key', 'metrics-require-key', 'migration-limit', 'migration-max-seq-len', 'stall-timeout-s', 'request-timeout',
    'active-decode-blocks-threshold', 'active-prefill-tokens-threshold', 'router-queue-threshold', 'max-choices-per-request',
  ],
} as const;
const ROLE_FLAGS: Record<Exclude<NodeRole, 'leader'>, ReadonlySet<string>> = {
  worker: new Set([...FLAG_GROUPS.common, ...FLAG_GROUPS.engine, ...FLAG_GROUPS.decode]),
  prefill: new Set([...FLAG_GROUPS.common, ...FLAG_GROUPS.engine, ...FLAG_GROUPS.prefill]),
  // --block-size on a frontend: the router's block size (default: its first worker's)
  frontend: new Set([...FLAG_GROUPS.common, ...FLAG_GROUPS.frontend, 'block-size']),
};
const ROLE_HINT: Record<Exclude<NodeRole, 'leader'>, string> = {
  worker: 'a worker node starts decode (or monolithic) workers only; prefill workers run on --role prefill nodes (--remote-prefill sends them long prompts), the frontend on the leader or --role frontend nodes',
  prefill: 'a prefill node starts prefill workers only; decode workers run on --role worker nodes, the frontend on the leader or --role frontend nodes',
  frontend: 'a frontend node starts a frontend only; workers run on --role worker and --role prefill nodes, each with its own engine flags',
};

function checkRoleFlags(role: NodeRole, given: string[]): void {
  if (role === 'leader') return;
  const refused = given.filter((k) => !ROLE_FLAGS[role].has(k));
  if (refused.length > 0) {
    throw new FlagError(`${refused.map((k) => `--${k}`).join(', ')} ${refused.length > 1 ? 'do' : 'does'} not apply to --role ${role}: ${ROLE_HINT[role]}`);
  }
}

// The host's first non-loopback IPv4 address, in the order the interfaces are listed.
export function firstNonLoopbackIPv4(): string | undefined {
  for (const addrs of Object.values(os.networkInterfaces())) {
    for (const a of addrs ?? []) if (a.family === 'IPv4' && !a.internal && !isLoopback(a.address)) return a.address;
  }
  return undefined;
}

function advertiseHost(role: NodeRole, given: string | undefined): string {
  if (given !== undefined) {
    const h = given.replace(/^\[(.*)\]$/, '$1');
    if (h === '' || h === '0.0.0.0' || h === '::') {
      throw new FlagError(`--advertise-host must be one address of this host that other nodes reach, not '${given}' (a wildcard is not an address to publish)`);
    }
    if (!net.isIP(h) && !/^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(h)) throw new FlagError(`--advertise-host must be an IP address or a host name, got '${given}'`);
    return h;
  }
  if (role === 'leader' || role === 'frontend') return '127.0.0.1';
  const found = firstNonLoopbackIPv4();
  if (!found) throw new FlagError(`--role ${role}: this host has no non-loopback IPv4 address to publish; give --advertise-host HOST`);
  return found;
}

// What a node needs to take part in a deployment of several hosts.
function checkNode(f: LauncherFlags, advertiseGiven: boolean): void {
  const secretHint = `--cluster-secret SECRET (or ${CLUSTER_SECRET_ENV}), the same on every node`;
  if (f.role !== 'leader') {
    if (f.redisUrl === undefined) {
      throw new FlagError(`--role ${f.role} joins an existing deployment: give --redis-url redis://:PASSWORD@HOST:PORT of the leader's (or any shared) Redis, or set KVSERVE_REDIS_URL`);
    }
    const redisHost = redisUrlHost(f.redisUrl);
    if (f.role === 'frontend' && f.clusterSecret === undefined && !isLoopback(redisHost)) {
      throw new FlagError(`--role frontend with a Redis on ${redisHost}, another host: its workers are off loopback and let in only peers that know the cluster secret; give ${secretHint}`);
    }
  }
  if (f.role !== 'frontend' && f.clusterSecret === undefined && !isLoopback(f.advertiseHost)) {
    throw new FlagError(
      `${advertiseGiven ? '' : `--role ${f.role} advertises this host's address by default: `}--advertise-host ${f.advertiseHost} is not loopback, so this node's internal listeners (request plane, workers' HTTP, KV transfer) would be open to the network; give ${secretHint}`,
    );
  }
  if (f.role === 'leader') {
    const servesOthers = !isLoopback(f.advertiseHost);
    const hasRedis = f.router !== 'round-robin' || f.redisUrl !== undefined || f.prefillWorkers > 0 || f.remotePrefill || servesOthers;
    if (f.workers === 0 && !hasRedis) {
      throw new FlagError('--workers 0: a leader without workers serves the workers of other nodes, which join through its Redis: add --advertise-host HOST (and --redis-password-file FILE), or --router kv, or --redis-url URL');
    }
    if (f.redisUrl !== undefined) {
      const own = f.redisPort !== undefined ? '--redis-port' : f.redisPasswordFile !== undefined ? '--redis-password-file' : undefined;
      if (own) throw new FlagError(`${own} configures the leader's private redis-server, which --redis-url replaces; give one of them`);
    } else if (!hasRedis && (f.redisPort !== undefined || f.redisPasswordFile !== undefined)) {
      throw new FlagError(`${f.redisPort !== undefined ? '--redis-port' : '--redis-password-file'} configures the leader's private redis-server, which this mode does not start (round-robin on one host): add --router kv, --prefill-workers N or --advertise-host HOST`);
    } else if (servesOthers && hasRedis && f.redisPasswordFile === undefined) {
      throw new FlagError(
        `--advertise-host ${f.advertiseHost}: the leader's private Redis then serves other hosts, which need its password: give --redis-password-file FILE (read if it exists, else written with a random password) or --redis-url of your own Redis`,
      );
    }
  }
}

export function redisUrlHost(url: string): string {
  try {
    const sentinel = parseSentinelUrl(url);
    if (sentinel) return sentinel.sentinels[0]!.host;
    const cluster = parseClusterUrl(url);
    if (cluster) return cluster.nodes[0]!.host;
    return new URL(url).hostname.replace(/^\[(.*)\]$/, '$1') || '127.0.0.1';
  } catch {
    return '127.0.0.1';
  }
}

// A tensor-parallel split must be whole, as vLLM requires (the engine checks it again):
// tp divides the attention heads and the FFN width, and divides or is a multiple of the kv heads.
export function checkTpSplit(f: LauncherFlags, m: { numHeads: number; numKvHeads: number; intermediateSize: number; vocabSize: number }): void {
  for (const [flag, tp] of [['--decode-tp', f.decodeTp], ['--prefill-tp', f.prefillTp]] as const) {
    if (tp === 1) continue;
    const kv = m.numKvHeads;
    if (m.numHeads % tp !== 0 || m.intermediateSize % tp !== 0 || (kv % tp !== 0 && tp % kv !== 0) || m.vocabSize < tp) {
      throw new FlagError(
        `${flag} ${tp} does not split this model: it must divide num_attention_heads ${m.numHeads} and intermediate_size ` +
          `${m.intermediateSize}, and divide or be a multiple of num_key_value_heads ${kv}`,
      );
    }
  }
}

// Combinations that are not implemented: refused with a clear message, never ignored.
export function refuseUnimplemented(f: LauncherFlags): void {
  if (f.prefillTp > 1 && f.prefillWorkers === 0) {
    throw new FlagError('--prefill-tp applies to prefill workers: add --prefill-workers N');
  }
}
