// The real launcher, end to end: the seed's Example 1 exactly as written (raw HTTP, its model
// id resolved in a local HF cache), the official openai client, 32 concurrent streams, flags,
// and process supervision (shutdown leaves no process, a dead child stops the launcher).
import fs from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { loadAddon, packageRoot } from '../../ts/native/loader.ts';
import { badHttpCases, badInputCases, sendRawHttp } from '../helpers/bad-inputs.ts';
import { alive, childPids, fakeHfCache, freePort, launch, runLauncher, type Launched } from '../helpers/launcher.ts';

const SEED_MODEL = 'deepseek-ai/DeepSeek-R1-Distill-Llama-8B';
// The body of Example 1 in the seed's README, byte for byte (test/fixtures/seed-example-1.json;
// checked against the seed itself where ../shared sits beside the checkout, as in CI).
const SEED_README = path.join(packageRoot, '..', 'shared', 'seed', 'vllm_worker_README.md');
const seedBody = () => fs.readFileSync(path.join(packageRoot, 'test', 'fixtures', 'seed-example-1.json'), 'utf8');

let modelDir: string;
let hfCache: string;
let server: Launched;

beforeAll(async () => {
  modelDir = (await ensureModel('tiny-llama')).dir;
  hfCache = fakeHfCache(SEED_MODEL, modelDir);
  // The seed's Example 1 command, plus a free port and a small KV cache for this machine.
  server = await launch(['--model', SEED_MODEL, '--http-port', String(await freePort()), '--kv-cache-memory', '256MiB'], {
    HF_HUB_CACHE: hfCache,
  });
});

afterAll(async () => {
  await server?.stop();
  fs.rmSync(hfCache, { recursive: true, force: true });
});

describe('seed Example 1', () => {
  it.runIf(fs.existsSync(SEED_README))('uses the body the seed README gives (where the seed is beside the checkout)', () => {
    expect(fs.readFileSync(SEED_README, 'utf8')).toContain(`-d '${seedBody()}'`);
  });

  it('answers the seed README request exactly as written', async () => {
    const res = await fetch(`${server.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: seedBody(),
    });
    expect(res.status).toBe(200);
    const body = await res.json();
    expect(body.object).toBe('chat.completion');
    expect(body.model).toBe(SEED_MODEL);
    expect(body.choices[0].message.role).toBe('assistant');
    expect(typeof body.choices[0].message.content).toBe('string');
    expect(body.usage.completion_tokens).toBeLessThanOrEqual(30);
    expect(body.usage.prompt_tokens).toBeGreaterThan(150); // 198 with the Llama 3 template
    expect(body.usage.total_tokens).toBe(body.usage.prompt_tokens + body.usage.completion_tokens);
  });
});

describe('openai client', () => {
  const client = () => new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused' });

  it('lists the model', async () => {
    const models = await client().models.list();
    expect(models.data.map((m) => m.id)).toEqual([SEED_MODEL]);
  });

  it('chat, not streaming', async () => {
    const r = await client().chat.completions.create({
      model: SEED_MODEL,
      messages: [{ role: 'user', content: 'Say hello.' }],
      max_tokens: 8,
      temperature: 0,
    });
    expect(r.choices[0].finish_reason).toMatch(/stop|length/);
    expect(r.usage!.completion_tokens).toBeGreaterThan(0);
  });

  it('chat, streaming with usage: the deltas make the same text as the unary call', async () => {
    // ignore_eos is vLLM's extension, which the openai client passes through.
    const params = { model: SEED_MODEL, messages: [{ role: 'user' as const, content: 'Count to five.' }], max_tokens: 16, temperature: 0, ignore_eos: true };
    const unary = await client().chat.completions.create(params as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const stream = await client().chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } } as OpenAI.ChatCompletionCreateParamsStreaming);
    let text = '';
    let usage;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe(unary.choices[0].message.content);
    expect(usage?.completion_tokens).toBe(16);
  });

  it('completions, streaming and not, from a string and from token ids', async () => {
    const c = client();
    const a = await c.completions.create({ model: SEED_MODEL, prompt: 'Once upon a time', max_tokens: 10, temperature: 0 });
    const s = await c.completions.create({ model: SEED_MODEL, prompt: 'Once upon a time', max_tokens: 10, temperature: 0, stream: true });
    let text = '';
    for await (const chunk of s) text += chunk.choices[0]?.text ?? '';
    expect(text).toBe(a.choices[0].text);
    const ids = await c.completions.create({ model: SEED_MODEL, prompt: [791, 2068, 374], max_tokens: 4, temperature: 0 });
    expect(ids.usage!.prompt_tokens).toBe(3);
  });

  it('is reproducible with a seed', async () => {
    const params = { model: SEED_MODEL, prompt: 'The weather today', max_tokens: 12, temperature: 1, seed: 42 };
    const a = await client().completions.create(params);
    const b = await client().completions.create(params);
    expect(b.choices[0].text).toBe(a.choices[0].text);
  });

  it('serves 32 concurrent streams, each complete', async () => {
    const c = client();
    const runs = Array.from({ length: 32 }, async (_, i) => {
      const stream = await c.chat.completions.create({
        model: SEED_MODEL,
        messages: [{ role: 'user', content: `Request number ${i}: tell me something.` }],
        max_tokens: 12,
        temperature: 0,
        ignore_eos: true,
        stream: true,
        stream_options: { include_usage: true },
      } as OpenAI.ChatCompletionCreateParamsStreaming);
      let finish: string | null | undefined;
      let tokens = 0;
      for await (const chunk of stream) {
        if (chunk.choices[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
        if (chunk.usage) tokens = chunk.usage.completion_tokens;
      }
      return { finish, tokens };
    });
    const results = await Promise.all(runs);
    for (const r of results) expect(r).toEqual({ finish: 'length', tokens: 12 });
    const health = await fetch(`${server.url}/health`);
    expect(health.status).toBe(200);
  });
});

describe('bad input through the real server', () => {
  it('answers every case of the matrix with a 4xx and the OpenAI error body, and stays healthy', async () => {
    const maxModelLen = (await (await fetch(`${server.url}/v1/models`)).json()).data[0].max_model_len;
    for (const c of badInputCases(SEED_MODEL, maxModelLen)) {
      const res = await fetch(`${server.url}${c.url ?? '/v1/chat/completions'}`, {
        method: 'POST',
        headers: { 'content-type': c.contentType ?? 'application/json' },
        body: typeof c.raw === 'string' || c.raw === undefined ? (c.raw ?? JSON.stringify(c.body)) : new Uint8Array(c.raw),
      });
      expect(res.status, c.name).toBe(c.status);
      const { error } = await res.json();
      expect(Object.keys(error).sort(), c.name).toEqual(['code', 'message', 'param', 'type']);
      if (c.code !== undefined) expect(error.code, c.name).toBe(c.code);
    }
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
  });

  it('answers malformed HTTP on a raw socket with the OpenAI error body too', async () => {
    const { hostname, port } = new URL(server.url);
    for (const c of badHttpCases()) {
      const res = await sendRawHttp(hostname, Number(port), c.raw);
      expect(res.status, c.name).toBe(c.status);
      const { error } = JSON.parse(res.body);
      expect(Object.keys(error).sort(), c.name).toEqual(['code', 'message', 'param', 'type']);
      expect(error.code, c.name).toBe(c.code);
    }
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
  });
});

describe('launcher', () => {
  it('prints every flag in --help', async () => {
    const { code, output } = await runLauncher(['--help']);
    expect(code).toBe(0);
    for (const flag of ['--model', '--workers', '--decode-workers', '--prefill-workers', '--router', '--decode-tp', '--prefill-tp',
      '--block-size', '--max-local-prefill-length', '--max-prefill-queue-size', '--http-port', '--redis-url', '--device',
      '--max-model-len', '--max-num-seqs', '--max-num-batched-tokens', '--kv-cache-memory', '--restart', '--kv-overlap-weight', '--router-temperature',
      '--prefill-deadline-ms', '--no-restart', '--shutdown-grace-s', '--api-key', '--metrics-require-key', '--migration-limit', '--migration-max-seq-len',
      '--stall-timeout-s', '--request-timeout', '--active-decode-blocks-threshold', '--active-prefill-tokens-threshold', '--router-queue-threshold', '--max-choices-per-request',
      '--cluster-secret', '--role', '--remote-prefill', '--advertise-host', '--redis-port', '--redis-password-file']) {
      expect(output).toContain(flag);
    }
  });

  it.each([
    [['--bogus'], /bogus/],
    [['--block-size', 'abc'], /--block-size must be an integer/],
    [['--device', 'tpu'], /--device must be one of/],
    [['--kv-cache-memory', 'lots'], /--kv-cache-memory must be a size/],
    [['--router', 'nearest'], /--router must be one of/],
    [['--kv-overlap-weight', 'heavy'], /--kv-overlap-weight must be a number >= 0/],
    [['--max-local-prefill-length', '10'], /applies to disaggregated serving: add --prefill-workers/],
    [['--prefill-workers', '1', '--prefill-deadline-ms', '5'], /--prefill-deadline-ms must be in \[100, /],
    [['--prefill-tp', '2'], /--prefill-tp applies to prefill workers: add --prefill-workers N/],
    [['--migration-limit', 'many'], /--migration-limit must be an integer, got 'many'/],
    [['--migration-max-seq-len', '0'], /--migration-max-seq-len must be in \[1, /],
    [['--active-decode-blocks-threshold', '1.5'], /--active-decode-blocks-threshold must be a number in \(0, 1\]/],
    [['--stall-timeout-s', 'soon'], /--stall-timeout-s must be a number >= 0/],
    [['--cluster-secret', 'short-secret'], /--cluster-secret \(or KVSERVE_CLUSTER_SECRET\) must have at least 16 printable ASCII characters/],
    [['--role', 'primary'], /--role must be one of leader, frontend, worker, prefill, got 'primary'/],
    [['--redis-url', 'redis+sentinel://:pw@127.0.0.1:26379/'], /--redis-url: a Sentinel URL is redis\+sentinel:\/\/\[:PASSWORD@\]HOST:PORT\[,HOST:PORT\.\.\.\]\/MASTER_NAME, got 'redis\+sentinel:\/\/\*\*\*@127\.0\.0\.1:26379\/'/],
    [['--role', 'worker'], /--role worker joins an existing deployment: give --redis-url/],
    [['--role', 'worker', '--redis-url', 'redis://127.0.0.1:1', '--router', 'kv', '--prefill-workers', '1'], /--router, --prefill-workers do not apply to --role worker/],
    [['--role', 'prefill', '--redis-url', 'redis://127.0.0.1:1', '--decode-tp', '2'], /--decode-tp does not apply to --role prefill/],
    [['--role', 'frontend', '--redis-url', 'redis://127.0.0.1:1', '--kv-cache-memory', '1GiB'], /--kv-cache-memory does not apply to --role frontend/],
    [['--role', 'worker', '--redis-url', 'redis://127.0.0.1:1', '--advertise-host', '127.0.0.1', '--max-prefill-queue-size', '3'], /add --remote-prefill/],
    [['--role', 'worker', '--redis-url', 'redis://127.0.0.1:1', '--advertise-host', '10.11.12.13'], /--advertise-host 10\.11\.12\.13 is not loopback.*give --cluster-secret/],
    [['--role', 'frontend', '--redis-url', 'redis://10.11.12.13:6379'], /--role frontend with a Redis on 10\.11\.12\.13, another host.*--cluster-secret/],
    [['--advertise-host', '0.0.0.0'], /--advertise-host must be one address of this host/],
    [['--advertise-host', '10.11.12.13', '--cluster-secret', 'test-cluster-secret-0123456789'], /--advertise-host 10\.11\.12\.13: the leader's private Redis then serves other hosts.*--redis-password-file/],
    [['--redis-url', 'redis://127.0.0.1:1', '--redis-port', '7000'], /--redis-port configures the leader's private redis-server, which --redis-url replaces/],
    [['--workers', '0'], /--workers 0: a leader without workers serves the workers of other nodes/],
    [['--worker-tp', '3'], /--decode-tp 3 does not split this model: it must divide num_attention_heads 8 and intermediate_size/],
    ...((loadAddon().cudaDevice().usable
      ? [[['--device', 'cuda', '--workers', '2'], /2 workers on one GPU: give each worker's KV cache with --kv-cache-memory/]]
      : [
          [['--device', 'cuda'], /--device cuda: no usable CUDA device \(/],
          [['--device', 'cuda', '--prefill-workers', '1'], /--device cuda: no usable CUDA device \(/],
        ]) as [string[], RegExp][]),
  ])('refuses %j with a clear message', async (args, message) => {
    const { code, output } = await runLauncher(args as string[]);
    expect(code).toBe(2);
    expect(output).toMatch(message);
  });

  it('says where it looked for a missing model', async () => {
    const { code, output } = await runLauncher(['--model', 'no-such-org/no-such-model'], { HF_HUB_CACHE: '/tmp/kvserve-empty-hub' });
    expect(code).toBe(1);
    expect(output).toContain('/tmp/kvserve-empty-hub/models--no-such-org--no-such-model');
  });

  it('stops every child on SIGTERM, leaving no process behind', async () => {
    const l = await launch(['--model', modelDir, '--workers', '2', '--http-port', String(await freePort()), '--kv-cache-memory', '64MiB']);
    const children = childPids(l.proc.pid!);
    expect(children.length).toBe(3); // 2 workers + the frontend
    // Each worker's engine threads are pinned to cores of their own (round-robin: one request each
    // runs a forward on both workers, which pins the engine thread).
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${l.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: modelDir, prompt: 'hi', max_tokens: 2 }),
      });
      expect(res.status).toBe(200);
    }
    const workers = children.filter((pid) => fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('worker/main.ts'));
    const pinned = workers.map((pid) => pinnedCpus(pid));
    for (const cpus of pinned) expect(cpus.size).toBeGreaterThan(0);
    expect([...pinned[0]!].filter((c) => pinned[1]!.has(c))).toEqual([]);
    expect(await l.stop('SIGTERM')).toBe(0);
    for (const pid of children) expect(alive(pid)).toBe(false);
  });

  it('exits non-zero when a worker dies under --no-restart, and restarts it by default', async () => {
    const port = String(await freePort());
    const l = await launch(['--model', modelDir, '--http-port', port, '--kv-cache-memory', '64MiB', '--no-restart']);
    const worker = childPids(l.proc.pid!).find((pid) => fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('worker/main.ts'))!;
    process.kill(worker, 'SIGKILL');
    expect(await l.exited).toBe(1);
    expect(l.output()).toMatch(/worker-0 exited unexpectedly/);

    const r = await launch(['--model', modelDir, '--http-port', port, '--kv-cache-memory', '64MiB']);
    const w2 = childPids(r.proc.pid!).find((pid) => fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('worker/main.ts'))!;
    process.kill(w2, 'SIGKILL');
    // The restarted worker takes the same address: requests succeed again.
    let ok = false;
    for (let i = 0; i < 100 && !ok; i++) {
      await new Promise((res) => setTimeout(res, 200));
      const res = await fetch(`${r.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: modelDir, prompt: 'hi', max_tokens: 2 }),
      }).catch(() => undefined);
      ok = res?.status === 200;
    }
    expect(ok).toBe(true);
    expect(r.output()).toMatch(/restarting it/);
    expect(r.output()).toMatch(/worker-0 is serving again/);
    expect(await r.stop()).toBe(0);
  });
});

// The CPUs that threads of `pid` are pinned to: each thread's Cpus_allowed_list when it is
// narrower than the process's own.
function pinnedCpus(pid: number): Set<number> {
  const list = (text: string) => {
    const spec = /Cpus_allowed_list:\s*(\S+)/.exec(text)![1]!;
    return spec.split(',').flatMap((r) => {
      const [a, b] = r.split('-').map(Number);
      return Array.from({ length: (b ?? a!) - a! + 1 }, (_, i) => a! + i);
    });
  };
  const all = list(fs.readFileSync(`/proc/${pid}/status`, 'utf8')).length;
  const out = new Set<number>();
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    const cpus = list(fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'));
    if (cpus.length < all) for (const c of cpus) out.add(c);
  }
  return out;
}
