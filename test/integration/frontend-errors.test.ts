// Bad input at the frontend: every case is a 4xx with the OpenAI error body
// {"error": {"message", "type", "param", "code"}}, never a 422 or a 5xx, and the server stays
// healthy; the same for bytes that are not HTTP fastify can route, sent on a real socket. Also: no
// worker -> 503, a worker's refusal -> its 4xx.
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { badHttpCases, badInputCases, sendRawHttp } from '../helpers/bad-inputs.ts';
import { MAX_MODEL_LEN, MODEL, buildTestApp, startWorker, type TestWorker } from '../helpers/frontend-fixture.ts';

let worker: TestWorker;
let app: FastifyInstance;

beforeAll(async () => {
  worker = await startWorker();
  app = await buildTestApp([worker.info]);
});

afterAll(async () => {
  await app?.close();
  await worker?.stop();
});

const cases = badInputCases(MODEL, MAX_MODEL_LEN);
const chatBody = (extra: Record<string, unknown>) => ({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4, ...extra });
const completionBody = (extra: Record<string, unknown>) => ({ model: MODEL, prompt: 'Hi', max_tokens: 4, ...extra });
const longPrompt = Array.from({ length: MAX_MODEL_LEN + 200 }, () => 1000);

describe('bad input', () => {
  it.each(cases)('$name -> $status', async (c) => {
    const res = await app.inject({
      method: 'POST',
      url: c.url ?? '/v1/chat/completions',
      headers: { 'content-type': c.contentType ?? 'application/json' },
      payload: c.raw ?? JSON.stringify(c.body),
    });
    expect(res.statusCode).toBe(c.status);
    const { error } = res.json();
    expect(Object.keys(error).sort()).toEqual(['code', 'message', 'param', 'type']);
    expect(error.type).toBe('invalid_request_error');
    expect(typeof error.message).toBe('string');
    expect(error.message.length).toBeGreaterThan(0);
    expect(typeof error.code).toBe('string');
    if (c.param !== undefined) expect(error.param).toBe(c.param);
    if (c.code !== undefined) expect(error.code).toBe(c.code);
    if (c.message !== undefined) expect(error.message).toMatch(c.message);
  });

  it('refuses a body over 32 MiB with 413', async () => {
    const res = await app.inject({
      method: 'POST',
      url: '/v1/completions',
      headers: { 'content-type': 'application/json' },
      payload: JSON.stringify(completionBody({ prompt: 'x'.repeat(33 << 20) })),
    });
    expect(res.statusCode).toBe(413);
    expect(res.json().error.code).toBe('body_too_large');
  });

  it('stays healthy and serving afterwards', async () => {
    expect((await app.inject({ method: 'GET', url: '/health' })).statusCode).toBe(200);
    const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: chatBody({}) });
    expect(res.statusCode).toBe(200);
  });
});

describe('malformed HTTP on a real socket', () => {
  it.each(badHttpCases())('$name -> $status $code', async (c) => {
    const port = await listening();
    const res = await sendRawHttp('127.0.0.1', port, c.raw);
    expect(res.status).toBe(c.status);
    const { error } = JSON.parse(res.body);
    expect(Object.keys(error).sort()).toEqual(['code', 'message', 'param', 'type']);
    expect(error.code).toBe(c.code);
    expect(error.type).toBe('invalid_request_error');
  });

  it('stays healthy afterwards', async () => {
    expect((await fetch(`http://127.0.0.1:${await listening()}/health`)).status).toBe(200);
  });
});

// The shared app, listening on an ephemeral port from the first call on.
let port: number | undefined;
async function listening(): Promise<number> {
  if (port === undefined) {
    await app.listen({ host: '127.0.0.1', port: 0 });
    port = (app.server.address() as { port: number }).port;
  }
  return port;
}

describe('unavailable and refusing workers', () => {
  it('answers 503 when no worker serves the model, and /ready says so', async () => {
    const empty = await buildTestApp([]);
    try {
      expect((await empty.inject({ method: 'GET', url: '/ready' })).statusCode).toBe(503);
      const res = await empty.inject({ method: 'POST', url: '/v1/chat/completions', payload: chatBody({}) });
      expect(res.statusCode).toBe(503);
      expect(res.json().error).toMatchObject({ code: 'no_worker_available', type: 'service_unavailable_error' });
      expect(res.headers['retry-after']).toBe('5');
    } finally {
      await empty.close();
    }
  });

  it('answers 503 when the worker does not answer', async () => {
    const gone = await buildTestApp([{ ...worker.info, address: 'http://127.0.0.1:1', requestPlane: 'tcp://127.0.0.1:1' }]);
    try {
      const res = await gone.inject({ method: 'POST', url: '/v1/completions', payload: completionBody({}) });
      expect(res.statusCode).toBe(503);
      expect(res.json().error).toMatchObject({ code: 'worker_unavailable', type: 'service_unavailable_error' });
      expect(res.headers['retry-after']).toBe('5');
    } finally {
      await gone.close();
    }
  });

  it("passes a worker's refusal on as a 400 (the engine's context is shorter than the frontend thinks)", async () => {
    const optimistic = await buildTestApp([worker.info], 4 * MAX_MODEL_LEN);
    try {
      const res = await optimistic.inject({ method: 'POST', url: '/v1/completions', payload: completionBody({ prompt: longPrompt }) });
      expect(res.statusCode).toBe(400);
      expect(res.json().error.code).toBe('context_length_exceeded');
    } finally {
      await optimistic.close();
    }
  });
});
