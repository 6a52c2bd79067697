// The frontend's OpenAI API through app.inject, against one real worker process on the tiny
// generated Llama: response shapes (whole and streamed), n, batches, usage, logprobs, stop
// strings, seeds, and the side routes (/v1/models, /health, /ready, /metrics).
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MODEL, buildTestApp, sseEvents, startWorker, type TestWorker } from '../helpers/frontend-fixture.ts';

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

const chat = (body: Record<string, unknown>) =>
  app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { model: MODEL, messages: [{ role: 'user', content: 'Hello there' }], ...body } });
const complete = (body: Record<string, unknown>) => app.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, prompt: 'Once upon a time', ...body } });

// Greedy, never stopping early: the same text every time.
const greedy = { temperature: 0, ignore_eos: true };

describe('chat completions', () => {
  it('answers a chat.completion with usage and the worker id header', async () => {
    const res = await chat({ max_tokens: 6, ...greedy });
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-worker-id']).toBe('worker-0');
    const body = res.json();
    expect(body).toMatchObject({ object: 'chat.completion', model: MODEL, choices: [{ index: 0, message: { role: 'assistant' }, logprobs: null, finish_reason: 'length' }] });
    expect(body.id).toMatch(/^chatcmpl-/);
    expect(typeof body.created).toBe('number');
    expect(typeof body.choices[0].message.content).toBe('string');
    expect(body.usage.completion_tokens).toBe(6);
    expect(body.usage.total_tokens).toBe(body.usage.prompt_tokens + 6);
  });

  it('streams chunks: the assistant role first, content deltas, finish_reason, then usage and [DONE]', async () => {
    const res = await chat({ max_tokens: 5, ...greedy, stream: true, stream_options: { include_usage: true } });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/event-stream/);
    expect(res.headers['cache-control']).toBe('no-cache');
    const events = sseEvents(res.body) as any[];
    expect(events.at(-1)).toBe('[DONE]');
    const chunks = events.slice(0, -1);
    expect(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0].id)).toBe(true);
    expect(chunks[0].choices[0].delta).toEqual({ role: 'assistant', content: '' });
    const usage = chunks.at(-1);
    expect(usage.choices).toEqual([]);
    expect(usage.usage.completion_tokens).toBe(5);
    const last = chunks.at(-2).choices[0];
    expect(last.finish_reason).toBe('length');
    expect(chunks.slice(1, -2).every((c) => c.choices[0].finish_reason === null)).toBe(true);
    // The streamed text is the whole response's text.
    const streamed = chunks.flatMap((c) => c.choices.map((ch: any) => ch.delta.content ?? '')).join('');
    const whole = (await chat({ max_tokens: 5, ...greedy })).json().choices[0].message.content;
    expect(streamed).toBe(whole);
  });

  it('runs n choices as separate requests, each with its own index', async () => {
    const body = (await chat({ max_tokens: 4, n: 2, seed: 7, ignore_eos: true })).json();
    expect(body.choices.map((c: any) => c.index)).toEqual([0, 1]);
    expect(body.choices.every((c: any) => c.finish_reason === 'length')).toBe(true);
    expect(body.usage.completion_tokens).toBe(8);
  });

  it('reports logprobs with top_logprobs, bytes, and token ids when asked', async () => {
    const body = (await chat({ max_tokens: 4, ...greedy, logprobs: true, top_logprobs: 3 })).json();
    const content = body.choices[0].logprobs.content;
    expect(content).toHaveLength(4);
    for (const t of content) {
      expect(typeof t.token).toBe('string');
      expect(t.logprob).toBeLessThanOrEqual(0);
      expect(t.bytes).toEqual([...Buffer.from(t.token, 'utf8')]);
      expect(t.top_logprobs).toHaveLength(3);
      // Greedy: the sampled token is the most likely one.
      expect(t.logprob).toBeCloseTo(t.top_logprobs[0].logprob, 5);
    }
    const ids = (await chat({ max_tokens: 2, ...greedy, logprobs: true, return_tokens_as_token_ids: true })).json();
    expect(ids.choices[0].logprobs.content.map((t: any) => t.token)).toEqual([expect.stringMatching(/^token_id:\d+$/), expect.stringMatching(/^token_id:\d+$/)]);
  });

  it('stops at a stop string, hiding it unless include_stop_str_in_output', async () => {
    const full = (await chat({ max_tokens: 12, ...greedy })).json().choices[0].message.content as string;
    const stop = full.slice(Math.floor(full.length / 2), Math.floor(full.length / 2) + 2);
    const cut = full.slice(0, full.indexOf(stop));
    const stopped = (await chat({ max_tokens: 12, ...greedy, stop })).json().choices[0];
    expect(stopped).toMatchObject({ message: { content: cut }, finish_reason: 'stop', stop_reason: stop });
    const shown = (await chat({ max_tokens: 12, ...greedy, stop: [stop], include_stop_str_in_output: true })).json().choices[0];
    expect(shown.message.content).toBe(cut + stop);
    const streamed = sseEvents((await chat({ max_tokens: 12, ...greedy, stop, stream: true })).body) as any[];
    const text = streamed.slice(0, -1).flatMap((c) => c.choices.map((ch: any) => ch.delta.content ?? '')).join('');
    expect(text).toBe(cut);
    expect(streamed.at(-2).choices[0]).toMatchObject({ finish_reason: 'stop', stop_reason: stop });
  });

  it('is reproducible with a seed', async () => {
    const a = (await chat({ max_tokens: 8, temperature: 1, seed: 42, ignore_eos: true })).json().choices[0].message.content;
    const b = (await chat({ max_tokens: 8, temperature: 1, seed: 42, ignore_eos: true })).json().choices[0].message.content;
    expect(a).toBe(b);
  });

  it('fills max_tokens up to the context when none is given', async () => {
    // A second app that believes in a short context, to keep the run short.
    const short = await buildTestApp([worker.info], 48);
    try {
      const res = await short.inject({ method: 'POST', url: '/v1/chat/completions', payload: { messages: [{ role: 'user', content: 'Hi' }], ...greedy } });
      expect(res.json().choices[0].finish_reason).toBe('length');
      expect(res.json().usage.total_tokens).toBe(48);
    } finally {
      await short.close();
    }
  });
});

describe('completions', () => {
  it('answers a text_completion for a string prompt and for token ids', async () => {
    const res = await complete({ max_tokens: 5, ...greedy });
    expect(res.statusCode).toBe(200);
    const body = res.json();
    expect(body).toMatchObject({ object: 'text_completion', model: MODEL, choices: [{ index: 0, logprobs: null, finish_reason: 'length', stop_reason: null }] });
    expect(body.id).toMatch(/^cmpl-/);
    expect(body.usage).toEqual({ prompt_tokens: body.usage.prompt_tokens, completion_tokens: 5, total_tokens: body.usage.prompt_tokens + 5 });
    const ids = (await complete({ prompt: [128000, 12805, 5304, 264, 892], max_tokens: 5, ...greedy })).json();
    expect(ids.usage.prompt_tokens).toBe(5);
    expect(typeof ids.choices[0].text).toBe('string');
  });

  it('defaults max_tokens to 16 (OpenAI legacy)', async () => {
    expect((await complete({ ...greedy })).json().usage.completion_tokens).toBe(16);
  });

  it('gives each prompt of a batch its own choices: index = promptIndex * n + i', async () => {
    const body = (await complete({ prompt: ['The sky', 'A cat sat'], n: 2, max_tokens: 3, ...greedy })).json();
    expect(body.choices.map((c: any) => c.index)).toEqual([0, 1, 2, 3]);
    // Greedy: the two choices of a prompt agree, the two prompts (most likely) do not.
    expect(body.choices[0].text).toBe(body.choices[1].text);
    expect(body.choices[2].text).toBe(body.choices[3].text);
    expect(body.usage.completion_tokens).toBe(12);
    const tokenBatch = (await complete({ prompt: [[128000, 791], [128000, 32, 8415]], max_tokens: 2, ...greedy })).json();
    expect(tokenBatch.usage.prompt_tokens).toBe(5);
    expect(tokenBatch.choices).toHaveLength(2);
  });

  it('reports the legacy logprobs object, streamed and whole', async () => {
    const body = (await complete({ max_tokens: 5, ...greedy, logprobs: 2 })).json();
    const lp = body.choices[0].logprobs;
    expect(lp.tokens).toHaveLength(5);
    expect(lp.token_logprobs).toHaveLength(5);
    expect(lp.top_logprobs).toHaveLength(5);
    expect(lp.text_offset[0]).toBe(0);
    for (let i = 1; i < 5; i++) expect(lp.text_offset[i]).toBe(lp.text_offset[i - 1] + lp.tokens[i - 1].length);
    for (let i = 0; i < 5; i++) {
      expect(Object.keys(lp.top_logprobs[i]).length).toBeGreaterThanOrEqual(1);
      expect(lp.top_logprobs[i][lp.tokens[i]]).toBeCloseTo(lp.token_logprobs[i], 5);
    }
    const events = sseEvents((await complete({ max_tokens: 5, ...greedy, logprobs: 2, stream: true })).body) as any[];
    const streamed = events.slice(0, -1).flatMap((c) => c.choices[0].logprobs.tokens);
    expect(streamed).toEqual(lp.tokens);
    const asIds = (await complete({ max_tokens: 3, ...greedy, logprobs: 0, return_tokens_as_token_ids: true })).json();
    expect(asIds.choices[0].logprobs.tokens.every((t: string) => /^token_id:\d+$/.test(t))).toBe(true);
  });

  it('streams a batch with usage at the end', async () => {
    const res = await complete({ prompt: ['a', 'b'], max_tokens: 3, ...greedy, stream: true, stream_options: { include_usage: true } });
    const events = sseEvents(res.body) as any[];
    expect(events.at(-1)).toBe('[DONE]');
    expect(events.at(-2).usage.completion_tokens).toBe(6);
    const finished = events.slice(0, -2).flatMap((c) => c.choices.filter((ch: any) => ch.finish_reason !== null).map((ch: any) => ch.index));
    expect(finished.sort()).toEqual([0, 1]);
  });

  it('echoes the prompt', async () => {
    const body = (await complete({ prompt: 'Echo me', echo: true, max_tokens: 2, ...greedy })).json();
    expect(body.choices[0].text.startsWith('Echo me')).toBe(true);
  });
});

describe('side routes', () => {
  it('lists the model', async () => {
    const body = (await app.inject({ method: 'GET', url: '/v1/models' })).json();
    expect(body).toMatchObject({ object: 'list', data: [{ id: MODEL, object: 'model', owned_by: 'kvserve' }] });
  });

  it('answers /health and /ready', async () => {
    expect((await app.inject({ method: 'GET', url: '/health' })).json()).toEqual({ status: 'ok' });
    expect((await app.inject({ method: 'GET', url: '/ready' })).statusCode).toBe(200);
  });

  it('exposes the vLLM metric names', async () => {
    const res = await app.inject({ method: 'GET', url: '/metrics' });
    expect(res.statusCode).toBe(200);
    for (const name of [
      'vllm:num_requests_running',
      'vllm:num_requests_waiting',
      'vllm:kv_cache_usage_perc',
      'vllm:prefix_cache_queries',
      'vllm:prefix_cache_hits',
      'vllm:prompt_tokens_total',
      'vllm:generation_tokens_total',
      'vllm:request_success_total{model_name="tiny",finished_reason="length"}',
      'vllm:time_to_first_token_seconds_bucket',
      'vllm:inter_token_latency_seconds_bucket',
      'vllm:e2e_request_latency_seconds_bucket',
      'kvserve:worker_kv_cache_usage_perc{model_name="tiny",worker_id="worker-0"}',
    ]) {
      expect(res.body).toContain(name);
    }
  });
});
