// The frontend on a real listening port: the official `openai` client streams through it, and a
// client that disconnects mid-stream frees its engine request (the worker's blocks and slots).
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MODEL, buildTestApp, eventually, sseEvents, startWorker, type TestWorker } from '../helpers/frontend-fixture.ts';

let worker: TestWorker;
let app: FastifyInstance;
let baseUrl: string;
let client: OpenAI;

beforeAll(async () => {
  worker = await startWorker();
  app = await buildTestApp([worker.info]);
  await app.listen({ host: '127.0.0.1', port: 0 });
  baseUrl = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  client = new OpenAI({ baseURL: `${baseUrl}/v1`, apiKey: 'none', maxRetries: 0 });
});

afterAll(async () => {
  await app?.close();
  await worker?.stop();
});

describe('the openai client', () => {
  it('streams a chat completion with usage', async () => {
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: 'Count to five.' }],
      max_tokens: 8,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
      // vLLM's extension, sent as is.
      ...({ ignore_eos: true } as object),
    });
    let text = '';
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined | null;
    for await (const chunk of stream) {
      for (const c of chunk.choices) {
        text += c.delta.content ?? '';
        finish = c.finish_reason ?? finish;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    expect(finish).toBe('length');
    expect(usage?.completion_tokens).toBe(8);
    const whole = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: 'Count to five.' }],
      max_tokens: 8,
      temperature: 0,
      ...({ ignore_eos: true } as object),
    });
    expect(whole.choices[0].message.content).toBe(text);
  });

  it('streams completions for n = 2', async () => {
    const stream = await client.completions.create({ model: MODEL, prompt: 'The', max_tokens: 4, n: 2, stream: true, seed: 3 });
    const finished = new Set<number>();
    for await (const chunk of stream) for (const c of chunk.choices) if (c.finish_reason) finished.add(c.index);
    expect([...finished].sort()).toEqual([0, 1]);
  });

  it('surfaces a 400 as BadRequestError and an unknown model as NotFoundError', async () => {
    await expect(client.chat.completions.create({ model: MODEL, messages: [], max_tokens: 2 })).rejects.toBeInstanceOf(OpenAI.BadRequestError);
    await expect(client.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'x' }] })).rejects.toBeInstanceOf(OpenAI.NotFoundError);
  });
});

describe('client disconnect', () => {
  it('aborts the engine request and frees its blocks when the client goes away mid-stream', async () => {
    const body = JSON.stringify({ model: MODEL, prompt: 'Tell me everything.', max_tokens: 900, ignore_eos: true, stream: true });
    const req = http.request(`${baseUrl}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' } });
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      req.once('response', resolve);
      req.once('error', reject);
      req.end(body);
    });
    expect(res.statusCode).toBe(200);
    // Read a couple of chunks, then hang up.
    let chunks = 0;
    await new Promise<void>((resolve) => {
      res.on('data', () => {
        if (++chunks === 2) resolve();
      });
    });
    const busy = await worker.load();
    expect(busy.request_active_slots).toBe(1);
    req.destroy();
    const load = await eventually(
      () => worker.load(),
      (l) => l.kv_active_blocks === 0 && l.request_active_slots === 0,
    );
    expect(load.kv_active_blocks).toBe(0);
    expect(load.request_active_slots).toBe(0);
    expect(app.frontend.active.size).toBe(0);
  });

  it('aborts a non-streaming request whose client goes away', async () => {
    const body = JSON.stringify({ model: MODEL, prompt: 'Tell me everything.', max_tokens: 900, ignore_eos: true });
    const req = http.request(`${baseUrl}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' } });
    req.on('error', () => {});
    req.end(body);
    await eventually(
      () => worker.load(),
      (l) => l.request_active_slots === 1,
    );
    req.destroy();
    const load = await eventually(
      () => worker.load(),
      (l) => l.kv_active_blocks === 0 && l.request_active_slots === 0,
    );
    expect(load.request_active_slots).toBe(0);
    expect(load.kv_active_blocks).toBe(0);
  });

  it('closing the app ends the streams in flight: finish_reason abort, then [DONE]', async () => {
    const closing = await buildTestApp([worker.info]);
    const url = await closing.listen({ host: '127.0.0.1', port: 0 });
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'Go on', max_tokens: 900, ignore_eos: true, stream: true }),
    });
    expect(res.headers.get('x-worker-id')).toBe('worker-0');
    const reader = res.body!.getReader();
    await reader.read();
    const closed = closing.close();
    let text = '';
    for (let r = await reader.read(); !r.done; r = await reader.read()) text += new TextDecoder().decode(r.value);
    await closed;
    const events = sseEvents(text) as any[];
    expect(events.at(-1)).toBe('[DONE]');
    expect(events.at(-2).choices[0].finish_reason).toBe('abort');
    const load = await eventually(
      () => worker.load(),
      (l) => l.request_active_slots === 0,
    );
    expect(load.request_active_slots).toBe(0);
  });
});
