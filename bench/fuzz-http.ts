// bench/fuzz-http.ts: `npm run fuzz:http -- [--duration S] [--seed N]`: a fuzzer over the HTTP
// API. It starts the real launcher on the tiny built-in model (as test/helpers/launcher.ts does,
// with --no-restart, so a child that dies stops it and is seen) and sends random and mutated
// requests over raw node:net sockets, so that malformed HTTP reaches the server as written:
//   bodies    valid chat and completions bodies (streaming on and off) with fields given wrong
//             types, huge, negative, fractional and NaN-like values, deep nesting, huge arrays,
//             unicode edge cases (lone surrogates, NUL, BOM, U+FFFF), invalid UTF-8, truncated
//             JSON, duplicate keys, random byte flips, inserts and deletes;
//   headers   content-type variants, content-encoding gzip (compressed or not) and bogus ones,
//             chunked transfer encoding (well formed or not), wrong, negative, repeated or
//             missing content-length, missing or repeated host, huge and invalid headers;
//   framing   odd and unknown methods, odd paths (unknown routes, query strings, percent
//             escapes, very long), HTTP/1.0 and garbage request lines.
// Rules checked on every response: no 5xx except 503 `overloaded`; every 4xx carries the OpenAI
// error body {"error": {"message", "type", "param", "code"}} (a HEAD reply has no body to
// check); a 200 is JSON or, streamed, SSE ending in `data: [DONE]` (unless the time ran out
// while it streamed: a request without max_tokens may generate up to the context length). After each batch: /health
// answers 200, a normal chat request still succeeds, and the launcher is still running.
// A request that breaks a rule is a finding: its exact bytes go to <out>/finding-N.http (replay:
// `npm run fuzz:http -- --replay <out>/finding-N.http`, or `nc HOST PORT < file`), with the
// response and the rule in finding-N.json. A connection closed without a response, or no
// response in time (--timeout-ms; 3 s for a request framed wrong, which may leave the server
// waiting for bytes that never come), is counted in the histogram ("closed", "timeout"), and is a
// finding for a request whose framing is well formed (a close while a body over 64 KiB was being
// sent excepted: see checkResponse).
// Stays true: the same --seed sends the same requests in the same order (responses may differ:
// sampling, timing). Writes <out>/report.json (default out: bench/results/fuzz-http-<time>/).
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { gzipSync } from 'node:zlib';
import { ensureModel } from '../ts/modelgen/index.ts';
import { seededRng, type Rng } from '../ts/router/index.ts';
import { freePort, launch, type Launched } from '../test/helpers/launcher.ts';

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '60' },
    seed: { type: 'string', default: '1' },
    batch: { type: 'string', default: '40' },
    concurrency: { type: 'string', default: '4' },
    'timeout-ms': { type: 'string', default: '30000' },
    out: { type: 'string' },
    url: { type: 'string' }, // fuzz a server already running (its health is still checked, its process is not)
    replay: { type: 'string' }, // send one saved request and print the response
  },
});

const MODEL = 'tiny-llama';

// ---- one raw request and its response ---------------------------------------------------------

interface RawRequest {
  kind: string; // the generator that made it
  bytes: Buffer;
  wellFramed: boolean; // the HTTP framing is valid, so the server must answer it
  head: boolean; // a HEAD request: the reply has no body
}

interface RawResponse {
  status: number | 'closed' | 'timeout';
  headers: Record<string, string>;
  body: Buffer;
  cut?: boolean; // the time ran out in the body (a long stream): its end is not checked
}

function sendRaw(host: string, port: number, bytes: Buffer, timeoutMs: number): Promise<RawResponse> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const socket = net.connect({ host, port });
    let settled = false;
    const finish = (timedOut: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      const raw = Buffer.concat(chunks);
      if (raw.length === 0) return resolve({ status: timedOut ? 'timeout' : 'closed', headers: {}, body: raw });
      const r = parseResponse(raw, timedOut);
      resolve({ ...r, cut: timedOut && !r.complete && typeof r.status === 'number' });
    };
    const timer = setTimeout(() => finish(true), timeoutMs);
    socket.on('data', (d) => {
      chunks.push(d);
      // A complete response (Connection: close or not) ends the exchange.
      const r = parseResponse(Buffer.concat(chunks), false);
      if (r.complete) finish(false);
    });
    socket.on('end', () => finish(false));
    socket.on('error', () => finish(false));
    // No half-close after writing: Node's HTTP server aborts a request whose client has ended.
    socket.on('connect', () => socket.write(bytes));
  });
}

// The first response in `raw` (status line, headers, body by content-length or chunked, else
// everything up to the close). complete: the body has all its bytes.
function parseResponse(raw: Buffer, timedOut: boolean): RawResponse & { complete: boolean } {
  while (/^HTTP\/1\.[01] 1\d\d /.test(raw.subarray(0, 13).toString('latin1')) && raw.indexOf('\r\n\r\n') >= 0) {
    raw = raw.subarray(raw.indexOf('\r\n\r\n') + 4); // 100 Continue and other interim replies
  }
  const end = raw.indexOf('\r\n\r\n');
  if (end < 0) return { status: timedOut ? 'timeout' : 'closed', headers: {}, body: Buffer.alloc(0), complete: false };
  const lines = raw.subarray(0, end).toString('latin1').split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const i = line.indexOf(':');
    if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  const rest = raw.subarray(end + 4);
  const status = m ? Number(m[1]) : 'closed';
  if (headers['content-length'] !== undefined) {
    const n = Number(headers['content-length']);
    return { status, headers, body: rest.subarray(0, n), complete: rest.length >= n };
  }
  if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
    const parts: Buffer[] = [];
    let at = 0;
    for (;;) {
      const nl = rest.indexOf('\r\n', at);
      if (nl < 0) break;
      const size = parseInt(rest.subarray(at, nl).toString('latin1'), 16);
      if (!Number.isFinite(size)) break;
      if (size === 0) return { status, headers, body: Buffer.concat(parts), complete: true };
      if (rest.length < nl + 2 + size + 2) break;
      parts.push(rest.subarray(nl + 2, nl + 2 + size));
      at = nl + 2 + size + 2;
    }
    return { status, headers, body: Buffer.concat(parts), complete: false };
  }
  return { status, headers, body: rest, complete: status === 204 || status === 304 };
}

// ---- generators --------------------------------------------------------------------------------

const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[Math.floor(rng() * xs.length)]!;
const int = (rng: Rng, lo: number, hi: number) => lo + Math.floor(rng() * (hi - lo + 1));

const ODD_STRINGS = [
  '', ' ', 'NaN', 'Infinity', '-Infinity', '-0', '1e309', 'null', 'true', '0x10', '\u0000', '\ufeff', '\uffff',
  '\ud800', '\udfff', '\ud83d\ude00', '\u202e\u0041', 'é', 'e\u0301', '\u4e2d\u6587', '<|begin_of_text|>',
  '<|eot_id|>', '{{ raise_exception("x") }}', '{% for x in y %}', '</think>', '\r\n\r\n', '%00', '../../etc/passwd',
];
const ODD_NUMBERS = [0, -0, 1, -1, 2, 0.5, 1.5, -1.5, 2 ** 31, -(2 ** 31), 2 ** 32, 2 ** 53, 2 ** 53 + 2, -(2 ** 53),
  1e308, -1e308, 5e-324, 1e-7, 129, 128, 20, 21, 32, 33, 8192, 8193, 1_000_000_000];

function oddValue(rng: Rng, depth = 0): unknown {
  switch (int(rng, 0, 9)) {
    case 0: return null;
    case 1: return rng() < 0.5;
    case 2:
    case 3: return pick(rng, ODD_NUMBERS);
    case 4:
    case 5: return pick(rng, ODD_STRINGS);
    case 6: return 'x'.repeat(pick(rng, [1, 1000, 100_000]));
    case 7: return depth > 2 ? [] : Array.from({ length: int(rng, 0, 3) }, () => oddValue(rng, depth + 1));
    case 8: return depth > 2 ? {} : { [pick(rng, ['role', 'content', 'type', 'text', 'include_usage', 'x'])]: oddValue(rng, depth + 1) };
    default: return nested(pick(rng, [10, 63, 64, 65, 1000, 100_000]), rng() < 0.5 ? '[' : '{"a":');
  }
}

// A raw JSON value nested `depth` deep (not an object: a marker the serializer splices in).
class RawJson {
  constructor(readonly text: string) {}
}
function nested(depth: number, open: '[' | '{"a":'): RawJson {
  const close = open === '[' ? ']' : '}';
  return new RawJson(open.repeat(depth) + '1' + close.repeat(depth));
}

function toJson(v: unknown): string {
  if (v instanceof RawJson) return v.text;
  if (Array.isArray(v)) return `[${v.map(toJson).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    return `{${Object.entries(v).filter(([, x]) => x !== undefined).map(([k, x]) => `${JSON.stringify(k)}:${toJson(x)}`).join(',')}}`;
  }
  // JSON.stringify writes lone surrogates as \ud800 escapes (well-formed JSON, odd text).
  return JSON.stringify(v) ?? 'null';
}

const CHAT_FIELDS = ['model', 'messages', 'max_tokens', 'max_completion_tokens', 'temperature', 'top_p', 'top_k', 'min_p',
  'n', 'stop', 'stop_token_ids', 'seed', 'stream', 'stream_options', 'logprobs', 'top_logprobs', 'presence_penalty',
  'frequency_penalty', 'repetition_penalty', 'min_tokens', 'ignore_eos', 'skip_special_tokens', 'response_format',
  'user', 'metadata', 'tools', 'tool_choice', 'logit_bias', 'chat_template_kwargs', 'add_generation_prompt',
  'continue_final_message', 'echo', 'include_reasoning', 'prompt', 'best_of', 'suffix', 'guided_json', 'x-unknown'];

function validBody(rng: Rng, chat: boolean): Record<string, unknown> {
  const body: Record<string, unknown> = { model: MODEL, max_tokens: int(rng, 1, 6), stream: rng() < 0.4 };
  if (chat) {
    body.messages = rng() < 0.3
      ? [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hello there' }]
      : [{ role: 'user', content: rng() < 0.5 ? 'Hi' : [{ type: 'text', text: 'Hi' }] }];
  } else {
    body.prompt = rng() < 0.7 ? 'Once upon a time' : [1000, 2000, 3000];
  }
  if (rng() < 0.3) body.temperature = rng() * 2;
  if (rng() < 0.2) body.stream_options = { include_usage: true };
  return body;
}

// Sets one field (maybe inside messages / prompt) to an odd value.
function mutateBody(rng: Rng, body: Record<string, unknown>): void {
  const r = rng();
  if (r < 0.5) {
    body[pick(rng, CHAT_FIELDS)] = oddValue(rng);
  } else if (r < 0.7 && Array.isArray(body.messages)) {
    const msgs = body.messages as Record<string, unknown>[];
    const m = msgs[int(rng, 0, msgs.length - 1)]!;
    m[pick(rng, ['role', 'content', 'name', 'tool_calls', 'reasoning_content', 'x'])] = rng() < 0.3
      ? pick(rng, ['user', 'assistant', 'system', 'tool', 'developer', 'wizard', ''])
      : oddValue(rng);
  } else if (r < 0.8) {
    // Huge arrays.
    const n = pick(rng, [1000, 20_000, 200_000]);
    if (rng() < 0.5) body.prompt = Array.from({ length: n }, (_, i) => 1000 + (i % 1000));
    else body.messages = Array.from({ length: Math.min(n, 20_000) }, () => ({ role: 'user', content: 'x' }));
  } else if (r < 0.9) {
    body.stop = rng() < 0.5 ? Array.from({ length: int(rng, 1, 40) }, () => pick(rng, ODD_STRINGS)) : pick(rng, ODD_STRINGS);
  } else {
    const text = pick(rng, ODD_STRINGS) + pick(rng, ODD_STRINGS);
    if (Array.isArray(body.messages)) body.messages = [{ role: 'user', content: text }];
    else body.prompt = text;
  }
}

// Byte-level damage to a serialized body.
function mutateBytes(rng: Rng, b: Buffer): { bytes: Buffer; kind: string } {
  const out = Buffer.from(b);
  switch (int(rng, 0, 5)) {
    case 0: return { bytes: out.subarray(0, int(rng, 0, Math.max(0, out.length - 1))), kind: 'truncated' };
    case 1: {
      for (let i = int(rng, 1, 4); i > 0 && out.length; --i) out[int(rng, 0, out.length - 1)] ^= 1 << int(rng, 0, 7);
      return { bytes: out, kind: 'bit-flip' };
    }
    case 2: {
      const at = int(rng, 0, out.length);
      const ins = Buffer.from(pick(rng, [[0xff], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0x00], [0x22], [0x5c], [0x7b], [0x2c]]));
      return { bytes: Buffer.concat([out.subarray(0, at), ins, out.subarray(at)]), kind: 'byte-insert' };
    }
    case 3: {
      const at = int(rng, 0, Math.max(0, out.length - 1));
      return { bytes: Buffer.concat([out.subarray(0, at), out.subarray(at + int(rng, 1, 8))]), kind: 'byte-delete' };
    }
    case 4: {
      // A duplicate key, by text: the later one wins in JSON.parse.
      const key = pick(rng, ['model', 'max_tokens', 'stream', 'messages', 'n', 'temperature']);
      const dup = `${JSON.stringify(key)}:${toJson(oddValue(rng))},`;
      return { bytes: Buffer.concat([Buffer.from('{' + dup), out.subarray(1)]), kind: 'duplicate-key' };
    }
    default: return { bytes: Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), out]), kind: 'utf8-bom' };
  }
}

const CONTENT_TYPES = ['application/json', 'application/json; charset=utf-8', 'APPLICATION/JSON', 'application/json;charset=latin1',
  'application/json, text/plain', ' application/json', 'application/jsonx', 'application/vnd.api+json', 'text/plain',
  'text/json', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', '', '*/*', 'application/json\u0000'];

interface Built {
  method: string;
  target: string;
  headers: [string, string][];
  body: Buffer;
  framing: 'length' | 'chunked' | 'none';
  wellFramed: boolean;
  kind: string[];
}

function serialize(b: Built): Buffer {
  const head = [`${b.method} ${b.target} HTTP/1.1`, ...b.headers.map(([k, v]) => `${k}: ${v}`)];
  let body = b.body;
  if (b.framing === 'chunked') {
    const parts: Buffer[] = [];
    for (let at = 0; at < body.length; at += 1000) {
      const c = body.subarray(at, at + 1000);
      parts.push(Buffer.from(`${c.length.toString(16)}\r\n`), c, Buffer.from('\r\n'));
    }
    parts.push(Buffer.from('0\r\n\r\n'));
    body = Buffer.concat(parts);
  }
  return Buffer.concat([Buffer.from(head.join('\r\n') + '\r\n\r\n', 'latin1'), body]);
}

function generate(rng: Rng, host: string): RawRequest {
  const chat = rng() < 0.6;
  const b: Built = {
    method: 'POST',
    target: chat ? '/v1/chat/completions' : '/v1/completions',
    headers: [['Host', host], ['Connection', 'close']],
    body: Buffer.alloc(0),
    framing: 'length',
    wellFramed: true,
    kind: [],
  };
  const body = validBody(rng, chat);
  // Body: valid, with odd fields, or damaged bytes.
  const r = rng();
  if (r < 0.15) {
    b.kind.push('valid');
    b.body = Buffer.from(toJson(body));
  } else if (r < 0.65) {
    for (let i = int(rng, 1, 3); i > 0; --i) mutateBody(rng, body);
    b.kind.push('odd-fields');
    b.body = Buffer.from(toJson(body));
  } else {
    const m = mutateBytes(rng, Buffer.from(toJson(body)));
    b.kind.push(m.kind);
    b.body = m.bytes;
  }
  let contentType: string | undefined = 'application/json';
  // Headers, methods, paths: each with some chance.
  if (rng() < 0.15) {
    contentType = rng() < 0.15 ? undefined : pick(rng, CONTENT_TYPES);
    b.kind.push('content-type');
  }
  if (contentType !== undefined) b.headers.push(['Content-Type', contentType]);
  if (rng() < 0.08) {
    const enc = pick(rng, ['gzip', 'gzip-plain', 'br', 'deflate', 'bogus', 'identity']);
    if (enc === 'gzip') b.body = gzipSync(b.body);
    b.headers.push(['Content-Encoding', enc === 'gzip-plain' ? 'gzip' : enc]);
    b.kind.push(`content-encoding-${enc}`);
  }
  if (rng() < 0.1) {
    b.method = pick(rng, ['GET', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD', 'TRACE', 'FOO', 'get', 'CONNECT']);
    b.kind.push('method');
    if (b.method === 'FOO' || b.method === 'get' || b.method === 'CONNECT') b.wellFramed = false;
  }
  if (rng() < 0.1) {
    b.target = pick(rng, ['/v1/chat/completions?x=1', '/v1/chat/completions/', '//v1/chat/completions', '/v1/models',
      '/v1/models/tiny-llama', '/v1/embeddings', '/v1/../health', '/v1/%zz', '/v1/chat%2Fcompletions', '/%00', '/\u00e9',
      '/v1/' + 'a'.repeat(10_000), '/v1/completions#frag', '*', 'http://x/v1/completions', '/health?', '/metrics', '/ready']);
    if (b.target === '*' || b.target === '/\u00e9') b.wellFramed = false;
    b.kind.push('path');
  }
  if (rng() < 0.15) {
    const h = int(rng, 0, 8);
    b.kind.push(['no-host', 'two-hosts', 'huge-header', 'many-headers', 'bad-header-char', 'accept-sse', 'authorization', 'expect-100', 'keep-alive'][h]!);
    if (h === 0) b.headers = b.headers.filter(([k]) => k !== 'Host');
    if (h === 1) b.headers.push(['Host', 'other']);
    if (h === 2) b.headers.push(['X-Big', 'y'.repeat(pick(rng, [8000, 20_000, 100_000]))]);
    if (h === 3) for (let i = 0; i < 2000; ++i) b.headers.push([`X-H${i}`, 'v']);
    if (h === 4) b.headers.push(['X-Bad\u0001', 'v\u0000']);
    if (h === 5) b.headers.push(['Accept', 'text/event-stream']);
    if (h === 6) b.headers.push(['Authorization', pick(rng, ['Bearer x', 'Basic Zm9vOmJhcg==', '', 'Bearer'])]);
    if (h === 7) b.headers.push(['Expect', '100-continue']);
    if (h === 8) b.headers = b.headers.map(([k, v]) => [k, k === 'Connection' ? 'keep-alive' : v]);
    if (h === 0 || h === 1 || h === 4) b.wellFramed = false;
  }
  // Framing of the body.
  const f = rng();
  if (f < 0.1) {
    b.framing = 'chunked';
    b.headers.push(['Transfer-Encoding', 'chunked']);
    b.kind.push('chunked');
  } else if (f < 0.14) {
    b.framing = 'chunked';
    b.headers.push(['Transfer-Encoding', 'chunked'], ['Content-Length', String(b.body.length)]);
    b.wellFramed = false;
    b.kind.push('chunked-and-length');
  } else if (f < 0.18) {
    b.framing = 'none';
    b.headers.push(['Transfer-Encoding', 'chunked']);
    b.body = Buffer.concat([Buffer.from(pick(rng, ['zz\r\n', '-1\r\n', 'ffffffffffffffff\r\n', '5\r\nab\r\n0\r\n\r\n'])), b.body]);
    b.wellFramed = false;
    b.kind.push('bad-chunks');
  } else if (f < 0.26) {
    const cl = pick(rng, ['short', 'long', 'negative', 'text', 'two', 'none', 'huge']);
    b.kind.push(`content-length-${cl}`);
    b.wellFramed = cl === 'short' || cl === 'none';
    const n = b.body.length;
    if (cl === 'short') b.headers.push(['Content-Length', String(Math.max(0, n - int(rng, 1, 10)))]);
    if (cl === 'long') b.headers.push(['Content-Length', String(n + int(rng, 1, 1000))]);
    if (cl === 'negative') b.headers.push(['Content-Length', '-5']);
    if (cl === 'text') b.headers.push(['Content-Length', 'abc']);
    if (cl === 'two') b.headers.push(['Content-Length', String(n)], ['Content-Length', String(n + 1)]);
    if (cl === 'huge') b.headers.push(['Content-Length', '99999999999999999999']);
    b.framing = 'none';
  } else {
    b.headers.push(['Content-Length', String(b.body.length)]);
  }
  const bytes = serialize(b);
  if (rng() < 0.03) {
    b.kind.push('request-line');
    const line = pick(rng, ['GET / HTTP/1.0\r\n\r\n', 'POST /v1/completions HTTP/2.0\r\n\r\n', 'GARBAGE\r\n\r\n',
      'POST /v1/completions HTTP/1.1\nHost: x\n\n', '\r\n\r\n', 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}']);
    return { kind: b.kind.join('+'), bytes: Buffer.from(line, 'latin1'), wellFramed: false, head: false };
  }
  return { kind: b.kind.join('+'), bytes, wellFramed: b.wellFramed, head: b.method === 'HEAD' };
}

// ---- rules -------------------------------------------------------------------------------------

function checkResponse(req: RawRequest, res: RawResponse): string | null {
  if (res.status === 'timeout') return req.wellFramed ? 'no response in time to a well-framed request' : null;
  // Node answers an early refusal (415, 413, 404) before reading a body and then closes, so a
  // client still sending a large one may see a reset in place of the reply: counted, not a finding.
  if (res.status === 'closed' && req.bytes.length > 64 << 10) return null;
  if (res.status === 'closed') return req.wellFramed ? 'connection closed without a response to a well-framed request' : null;
  if (res.cut) return null;
  const s = res.status;
  const json = () => {
    try {
      return JSON.parse(res.body.toString('utf8')) as unknown;
    } catch {
      return undefined;
    }
  };
  if (s >= 500) {
    const body = json() as { error?: { code?: string } } | undefined;
    if (s === 503 && body?.error?.code === 'overloaded') return null;
    return `status ${s} (a 5xx other than 503 overloaded)`;
  }
  if (s >= 400) {
    if (req.head) return null;
    const body = json() as { error?: Record<string, unknown> } | undefined;
    const e = body?.error;
    if (!e || typeof e !== 'object') return `status ${s} without the OpenAI error body`;
    const keys = Object.keys(e).sort().join(',');
    if (keys !== 'code,message,param,type') return `status ${s} error body has keys ${keys}`;
    if (typeof e.message !== 'string' || typeof e.type !== 'string' || typeof e.code !== 'string' ||
      !(e.param === null || typeof e.param === 'string')) return `status ${s} error body fields of the wrong types`;
    return null;
  }
  if (s === 200 && !req.head) {
    const text = res.body.toString('utf8');
    if (/text\/event-stream/.test(res.headers['content-type'] ?? '')) {
      if (!text.trimEnd().endsWith('data: [DONE]')) return 'a 200 stream that does not end with data: [DONE]';
    } else if (json() === undefined) {
      return 'a 200 whose body is not JSON';
    }
  }
  return null;
}

// ---- the run -----------------------------------------------------------------------------------

async function healthy(base: string, timeoutMs: number): Promise<string | null> {
  const signal = AbortSignal.timeout(timeoutMs);
  try {
    const h = await fetch(`${base}/health`, { signal });
    if (h.status !== 200) return `/health answered ${h.status}`;
    const r = await fetch(`${base}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2 }),
      signal,
    });
    const body = (await r.json()) as { choices?: unknown[] };
    if (r.status !== 200 || !Array.isArray(body.choices)) return `a normal chat request answered ${r.status}`;
    return null;
  } catch (err) {
    return `health check failed: ${(err as Error).message}`;
  }
}

async function main(): Promise<void> {
  const seed = Number(args.seed);
  const durationMs = Number(args.duration) * 1000;
  const batchSize = Number(args.batch);
  const concurrency = Number(args.concurrency);
  const timeoutMs = Number(args['timeout-ms']);
  const date = new Date().toISOString();
  const out = args.out ?? path.join('bench', 'results', `fuzz-http-${date.replace(/[:.]/g, '-')}`);
  fs.mkdirSync(out, { recursive: true });

  let server: Launched | undefined;
  let base = args.url;
  if (!base) {
    const modelDir = (await ensureModel(MODEL)).dir;
    // A short context bounds every generation (a request whose max_tokens was mutated away
    // generates up to it), so that no response takes long.
    server = await launch(['--model', modelDir, '--served-model-name', MODEL, '--http-port', String(await freePort()),
      '--kv-cache-memory', '64MiB', '--max-model-len', '512', '--no-restart']);
    base = server.url;
  }
  const { hostname, port } = new URL(base);
  const host = `${hostname}:${port}`;

  if (args.replay) {
    const res = await sendRaw(hostname, Number(port), fs.readFileSync(args.replay), timeoutMs);
    console.log(`status ${res.status}`, res.headers, res.body.toString('utf8').slice(0, 2000));
    await server?.stop();
    return;
  }

  const rng = seededRng(seed);
  const statuses = new Map<string, number>();
  const kinds = new Map<string, number>();
  const findings: { n: number; rule: string; kind: string; file: string }[] = [];
  let sent = 0;
  let batches = 0;
  const t0 = Date.now();
  const record = (req: RawRequest, rule: string, res?: RawResponse) => {
    const n = findings.length + 1;
    const file = path.join(out, `finding-${n}.http`);
    fs.writeFileSync(file, req.bytes);
    fs.writeFileSync(path.join(out, `finding-${n}.json`), JSON.stringify({
      rule, kind: req.kind, request: req.bytes.subarray(0, 4000).toString('latin1'),
      response: res && { status: res.status, headers: res.headers, body: res.body.subarray(0, 4000).toString('utf8') },
    }, null, 2));
    findings.push({ n, rule, kind: req.kind, file });
    console.log(`finding ${n}: ${rule} [${req.kind}] -> ${file}`);
  };

  let stopped: string | null = null;
  while (Date.now() - t0 < durationMs && stopped === null) {
    const batch = Array.from({ length: batchSize }, () => generate(rng, host));
    let next = 0;
    await Promise.all(Array.from({ length: concurrency }, async () => {
      while (next < batch.length) {
        const req = batch[next++]!;
        // A request framed wrong may leave the server waiting for bytes that never come.
        const res = await sendRaw(hostname, Number(port), req.bytes, req.wellFramed ? timeoutMs : 3000);
        sent++;
        const key = res.cut ? `${res.status} (cut at the timeout)` : String(res.status);
        statuses.set(key, (statuses.get(key) ?? 0) + 1);
        for (const k of req.kind.split('+')) kinds.set(k, (kinds.get(k) ?? 0) + 1);
        const rule = checkResponse(req, res);
        if (rule) record(req, rule, res);
      }
    }));
    batches++;
    if (server && (server.proc.exitCode !== null || server.proc.signalCode !== null)) {
      stopped = `the launcher exited (${server.proc.exitCode ?? server.proc.signalCode}) during batch ${batches}`;
    } else {
      const h = await healthy(base, timeoutMs);
      if (h) stopped = `${h} after batch ${batches}`;
    }
    if (stopped) {
      // The batch that broke the server: every request of it, in order, to replay together.
      const file = path.join(out, `batch-${batches}.http`);
      fs.writeFileSync(file, Buffer.concat(batch.map((r) => r.bytes)));
      findings.push({ n: findings.length + 1, rule: stopped, kind: 'batch', file });
      console.log(`finding: ${stopped}; the batch's requests -> ${file}`);
    }
  }
  const seconds = (Date.now() - t0) / 1000;
  await server?.stop();

  const report = {
    date, seed, seconds, requests: sent, batches,
    statuses: Object.fromEntries([...statuses].sort()),
    kinds: Object.fromEntries([...kinds].sort((a, b) => b[1] - a[1])),
    findings,
    serverOutputTail: server?.output().slice(-4000),
  };
  fs.writeFileSync(path.join(out, 'report.json'), JSON.stringify(report, null, 2));
  console.log(`\n${sent} requests in ${seconds.toFixed(0)} s (${batches} batches of ${batchSize}, seed ${seed})`);
  console.log('statuses:', report.statuses);
  console.log(`findings: ${findings.length}${stopped ? ` (stopped: ${stopped})` : ''}`);
  console.log(`wrote ${out}/report.json`);
  process.exitCode = findings.length > 0 ? 1 : 0;
}

await main();
