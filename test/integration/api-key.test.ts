// API keys through the real launcher: /v1/ routes need `Authorization: Bearer KEY` (the official
// openai client sends it as apiKey), probes stay open, /metrics follows --metrics-require-key, and
// the key appears neither in any output nor on a child's command line.
// Also large prompts: a 10 MB one is refused before tokenizing, large legal ones are tokenized
// off the event loop while a small request is answered.
import fs from 'node:fs';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { childPids, freePort, launch, runLauncher, type Launched } from '../helpers/launcher.ts';

const KEY = 'sk-test-7f3a9c2e41d8b6';
let modelDir: string;
let server: Launched;

beforeAll(async () => {
  modelDir = (await ensureModel('tiny-llama')).dir;
  server = await launch(['--model', modelDir, '--http-port', String(await freePort()), '--kv-cache-memory', '64MiB', '--metrics-require-key'], {
    KVSERVE_API_KEY: KEY,
  });
});

afterAll(async () => {
  await server?.stop();
});

const client = (apiKey: string) => new OpenAI({ baseURL: `${server.url}/v1`, apiKey, maxRetries: 0 });

describe('--api-key', () => {
  it('serves the openai client that sends the key', async () => {
    const r = await client(KEY).chat.completions.create({ model: modelDir, messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 });
    expect(r.choices[0]!.message.role).toBe('assistant');
    const models = await client(KEY).models.list();
    expect(models.data.length).toBe(1);
  });

  it('answers a wrong key with 401 and the OpenAI error body', async () => {
    const err = await client('sk-wrong').chat.completions.create({ model: modelDir, messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 }).catch((e) => e);
    expect(err).toBeInstanceOf(OpenAI.AuthenticationError);
    expect(err.status).toBe(401);
    expect(err.code).toBe('invalid_api_key');
    // A key that is a prefix or an extension of the real one is wrong too.
    for (const key of [KEY.slice(0, -1), `${KEY}x`]) {
      const e = await client(key).models.list().catch((x) => x);
      expect(e).toBeInstanceOf(OpenAI.AuthenticationError);
    }
  });

  it('answers a missing header with 401 on every /v1/ route, and leaves the probes open', async () => {
    for (const [method, route] of [['GET', '/v1/models'], ['POST', '/v1/completions'], ['POST', '/v1/chat/completions'], ['GET', '/v1/no-such-route']]) {
      const res = await fetch(`${server.url}${route}`, {
        method,
        headers: method === 'POST' ? { 'content-type': 'application/json' } : {},
        body: method === 'POST' ? JSON.stringify({ model: modelDir, prompt: 'hi', max_tokens: 1 }) : undefined,
      });
      expect(res.status, route).toBe(401);
      const body = (await res.json()) as { error: { type: string; code: string; message: string } };
      expect(body.error.code).toBe('invalid_api_key');
      expect(body.error.message).toMatch(/Authorization: Bearer/);
    }
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
    expect((await fetch(`${server.url}/ready`)).status).toBe(200);
  });

  it('puts /metrics behind the key with --metrics-require-key', async () => {
    expect((await fetch(`${server.url}/metrics`)).status).toBe(401);
    const res = await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${KEY}` } });
    expect(res.status).toBe(200);
    expect(await res.text()).toMatch(/vllm:num_requests_running/);
  });

  it('never shows the key: not in the output, not on a command line', async () => {
    await client('sk-wrong').models.list().catch(() => undefined);
    expect(server.output()).not.toContain(KEY);
    expect(server.output()).not.toContain('sk-wrong');
    for (const pid of [server.proc.pid!, ...childPids(server.proc.pid!)]) {
      expect(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8')).not.toContain(KEY);
    }
  });

  it('refuses --metrics-require-key without a key, and a key an HTTP header cannot carry', async () => {
    const a = await runLauncher(['--model', modelDir, '--metrics-require-key'], { KVSERVE_API_KEY: '' });
    expect(a.code).toBe(2);
    expect(a.output).toMatch(/--metrics-require-key needs an API key/);
    const b = await runLauncher(['--model', modelDir, '--api-key', 'two words']);
    expect(b.code).toBe(2);
    expect(b.output).toMatch(/--api-key .* must be printable ASCII/);
  });
});

describe('large prompts', () => {
  it('refuses a 10 MB prompt at once, and a large legal one does not stall a small request', async () => {
    const post = (body: unknown) =>
      fetch(`${server.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
        body: JSON.stringify(body),
      });
    let t0 = performance.now();
    const huge = await post({ model: modelDir, prompt: 'hello world '.repeat(900_000), max_tokens: 1 });
    expect(huge.status).toBe(400);
    expect(((await huge.json()) as { error: { code: string } }).error.code).toBe('context_length_exceeded');
    expect(performance.now() - t0).toBeLessThan(1500); // parsing 10 MB of JSON, no tokenizing
    // Four prompts of ~0.5 MB each: under the byte bound, so they are tokenized (off the event
    // loop) before the context check refuses them; a small request meanwhile is answered.
    const big = Array.from({ length: 4 }, () => post({ model: modelDir, prompt: 'lorem ipsum dolor sit amet '.repeat(20_000), max_tokens: 1 }));
    await new Promise((r) => setTimeout(r, 50));
    t0 = performance.now();
    const small = await post({ model: modelDir, prompt: 'hi', max_tokens: 1 });
    const smallMs = performance.now() - t0;
    expect(small.status).toBe(200);
    const bigDone = await Promise.all(big);
    const bigMs = performance.now() - t0;
    for (const r of bigDone) expect(r.status).toBe(400);
    expect(smallMs).toBeLessThan(bigMs);
  }, 60_000);
});
