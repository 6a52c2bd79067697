// --reasoning-parser deepseek_r1 and generation_config.json sampling defaults through the real
// frontend over HTTP, with the official `openai` client. The tiny model has random weights, so
// the worker here is scripted: it answers with the token ids of a chosen text (the real Llama 3
// tokenizer's, one token per delta unless a test cuts them otherwise) and records what the
// frontend asked of it (prompt ids, sampling).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import OpenAI from 'openai';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { buildApp } from '../../ts/frontend/app.ts';
import type { WorkerPool, WorkerSelection } from '../../ts/frontend/worker-pool.ts';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { loadSamplingDefaults, loadTokenizer, type ReasoningParserName, type SamplingDefaults, type TextTokenizer } from '../../ts/processor/index.ts';
import type { FinishReason, GenerateDelta, GenerateRequest, WorkerInfo } from '../../ts/protocol/index.ts';
import { sseEvents } from '../helpers/frontend-fixture.ts';

const MODEL = 'r1-distill';

interface Script {
  steps: number[][]; // the token ids of each delta
  finish: FinishReason;
}

// A worker pool of one scripted worker.
class ScriptedPool implements WorkerPool {
  readonly requests: GenerateRequest[] = [];
  script: (req: GenerateRequest) => Script = () => ({ steps: [[]], finish: 'length' });
  private readonly info = { workerId: 'scripted-0', model: MODEL, role: 'monolith' } as WorkerInfo;
  private readonly client = {
    generate: (req: GenerateRequest, signal?: AbortSignal) => this.generate(req, signal),
  };

  workers(): WorkerInfo[] {
    return [this.info];
  }
  ready(): boolean {
    return true;
  }
  async select(): Promise<WorkerSelection> {
    return { worker: this.info, client: this.client as unknown as WorkerSelection['client'], prefixHitRate: 0 };
  }
  release(): void {}
  async loads() {
    return [];
  }

  private async *generate(req: GenerateRequest, signal?: AbortSignal): AsyncGenerator<GenerateDelta> {
    this.requests.push(req);
    const { steps, finish } = this.script(req);
    for (let i = 0; i < steps.length; i++) {
      if (signal?.aborted) return;
      const last = i === steps.length - 1;
      yield { requestId: req.requestId, tokenIds: steps[i], numPromptTokens: req.promptTokenIds.length, numCachedTokens: 0, ...(last ? { finishReason: finish } : {}) };
      await new Promise((r) => setImmediate(r));
    }
  }
}

// DeepSeek-R1 distills' templates end the prompt with `<think>\n` after the assistant header.
const THINK_TEMPLATE =
  "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}" +
  '{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n{% endif %}';

let tmp: string;
let tinyDir: string;
let thinkDir: string; // tiny's tokenizer with THINK_TEMPLATE
let tokenizer: TextTokenizer;
let eos: number;
const servers: FastifyInstance[] = [];

async function serve(opts: { modelDir: string; reasoningParser?: ReasoningParserName; samplingDefaults?: SamplingDefaults }) {
  const pool = new ScriptedPool();
  const app = await buildApp({
    modelName: MODEL,
    modelDir: opts.modelDir,
    pool,
    tokenizer: await loadTokenizer(opts.modelDir),
    maxModelLen: 4096,
    reasoningParser: opts.reasoningParser,
    samplingDefaults: opts.samplingDefaults,
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  servers.push(app);
  const baseUrl = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  return { pool, baseUrl, client: new OpenAI({ baseURL: `${baseUrl}/v1`, apiKey: 'none', maxRetries: 0 }) };
}

const ids = (text: string) => tokenizer.encode(text, { addSpecialTokens: false });
// One token per delta, then EOS: how the engine ends an answer.
const untilEos = (text: string): Script => ({ steps: [...ids(text).map((id) => [id]), [eos]], finish: 'stop' });

beforeAll(async () => {
  tinyDir = (await ensureModel('tiny-llama')).dir;
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kvserve-reasoning-'));
  thinkDir = path.join(tmp, 'think');
  fs.mkdirSync(thinkDir);
  fs.copyFileSync(path.join(tinyDir, 'tokenizer.json'), path.join(thinkDir, 'tokenizer.json'));
  const config = JSON.parse(fs.readFileSync(path.join(tinyDir, 'tokenizer_config.json'), 'utf8'));
  fs.writeFileSync(path.join(thinkDir, 'tokenizer_config.json'), JSON.stringify({ ...config, chat_template: THINK_TEMPLATE }));
  tokenizer = await loadTokenizer(thinkDir);
  eos = tokenizer.eosToken!.id;
});

afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()));
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

type Chunk = OpenAI.Chat.Completions.ChatCompletionChunk;
type Delta = { content?: string | null; reasoning_content?: string | null };

async function streamed(client: OpenAI, body: Record<string, unknown>) {
  const stream = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'What is 2 + 2?' }], ...body, stream: true } as never);
  const chunks: Chunk[] = [];
  for await (const chunk of stream as unknown as AsyncIterable<Chunk>) chunks.push(chunk);
  const byChoice = new Map<number, { reasoning: string; content: string; finish: string | null; stopReason: unknown; deltas: Delta[] }>();
  for (const chunk of chunks) {
    for (const c of chunk.choices) {
      const r = byChoice.get(c.index) ?? { reasoning: '', content: '', finish: null, stopReason: null, deltas: [] };
      const d = c.delta as Delta;
      r.deltas.push(d);
      r.reasoning += d.reasoning_content ?? '';
      r.content += d.content ?? '';
      if (c.finish_reason) {
        r.finish = c.finish_reason;
        r.stopReason = (c as unknown as { stop_reason: unknown }).stop_reason;
      }
      byChoice.set(c.index, r);
    }
  }
  return { chunks, choices: byChoice, usage: chunks.at(-1)?.usage };
}

async function unary(client: OpenAI, body: Record<string, unknown>) {
  const r = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'What is 2 + 2?' }], ...body } as never);
  return r as OpenAI.Chat.Completions.ChatCompletion & { choices: { message: { reasoning_content?: string | null }; stop_reason?: unknown }[] };
}

describe('--reasoning-parser deepseek_r1', () => {
  let s: Awaited<ReturnType<typeof serve>>;
  beforeAll(async () => {
    s = await serve({ modelDir: thinkDir, reasoningParser: 'deepseek_r1' });
  });
  beforeEach(() => {
    s.pool.requests.length = 0;
  });

  it('the template opens <think>: the answer starts inside the reasoning (unary and streamed agree)', async () => {
    const answer = 'Two plus two.\nThat is 4.\n</think>\n\nThe answer is **4**.';
    s.pool.script = () => untilEos(answer);
    const whole = await unary(s.client, {});
    const prompt = tokenizer.decode(s.pool.requests[0].promptTokenIds, { skipSpecialTokens: false });
    expect(prompt.endsWith('<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n')).toBe(true);
    expect(whole.choices[0].message).toEqual({ role: 'assistant', reasoning_content: 'Two plus two.\nThat is 4.\n', content: '\n\nThe answer is **4**.' });
    expect(whole.choices[0]).toMatchObject({ finish_reason: 'stop', stop_reason: null });
    // usage counts every token, EOS included, reasoning or not.
    expect(whole.usage).toMatchObject({ prompt_tokens: s.pool.requests[0].promptTokenIds.length, completion_tokens: ids(answer).length + 1 });

    const stream = await streamed(s.client, { stream_options: { include_usage: true } });
    const c = stream.choices.get(0)!;
    expect(c).toMatchObject({ reasoning: 'Two plus two.\nThat is 4.\n', content: '\n\nThe answer is **4**.', finish: 'stop' });
    expect(stream.usage).toMatchObject({ completion_tokens: ids(answer).length + 1 });
    // The role chunk first, then reasoning-only deltas, then content-only deltas; no piece of the
    // marker on either side; the finish chunk's delta is empty.
    expect(c.deltas[0]).toEqual({ role: 'assistant', content: '' });
    const body = c.deltas.slice(1, -1);
    const firstContent = body.findIndex((d) => d.content !== undefined);
    expect(firstContent).toBeGreaterThan(0);
    expect(body.slice(0, firstContent).every((d) => d.reasoning_content && d.content === undefined)).toBe(true);
    expect(body.slice(firstContent).every((d) => d.content && d.reasoning_content === undefined)).toBe(true);
    expect(body.every((d) => !`${d.reasoning_content ?? ''}${d.content ?? ''}`.includes('</'))).toBe(true);
    expect(c.deltas.at(-1)).toEqual({});
  });

  it('the model writes <think> itself (a template that does not open it): the same split', async () => {
    const plain = await serve({ modelDir: tinyDir, reasoningParser: 'deepseek_r1' });
    plain.pool.script = () => untilEos('<think>\nHmm, 4.\n</think>\n\n4');
    const whole = await unary(plain.client, {});
    const prompt = tokenizer.decode(plain.pool.requests[0].promptTokenIds, { skipSpecialTokens: false });
    expect(prompt.endsWith('<think>\n')).toBe(false);
    expect(whole.choices[0].message).toMatchObject({ reasoning_content: '\nHmm, 4.\n', content: '\n\n4' });
    const stream = await streamed(plain.client, {});
    expect(stream.choices.get(0)).toMatchObject({ reasoning: '\nHmm, 4.\n', content: '\n\n4' });
    expect(stream.chunks.some((ch) => JSON.stringify(ch).includes('think>'))).toBe(false);
  });

  it('</think> split across two deltas (</th + ink>) in one delta with the text around it', async () => {
    s.pool.script = () => ({ steps: [ids('Adding'), ids(' up.</th'), ids('ink>\n\nFour'), [eos]], finish: 'stop' });
    expect(tokenizer.decode(ids(' up.</th'), { skipSpecialTokens: true })).toBe(' up.</th');
    const whole = await unary(s.client, {});
    expect(whole.choices[0].message).toMatchObject({ reasoning_content: 'Adding up.', content: '\n\nFour' });
    const stream = await streamed(s.client, {});
    const c = stream.choices.get(0)!;
    expect(c).toMatchObject({ reasoning: 'Adding up.', content: '\n\nFour' });
    expect(c.deltas.slice(1, -1)).toEqual([{ reasoning_content: 'Adding' }, { reasoning_content: ' up.' }, { content: '\n\nFour' }]);
  });

  it('no </think> at all: everything is reasoning, content null', async () => {
    s.pool.script = () => ({ steps: ids('Still thinking about it').map((id) => [id]), finish: 'length' });
    const whole = await unary(s.client, { max_tokens: 4 });
    expect(whole.choices[0].message).toEqual({ role: 'assistant', reasoning_content: 'Still thinking about it', content: null });
    expect(whole.choices[0].finish_reason).toBe('length');
    const stream = await streamed(s.client, { max_tokens: 4 });
    const c = stream.choices.get(0)!;
    expect(c).toMatchObject({ reasoning: 'Still thinking about it', content: '', finish: 'length' });
    expect(c.deltas.slice(1).every((d) => d.content === undefined)).toBe(true);
  });

  it('a stop string inside the reasoning ends the answer there (as vLLM): reasoning cut, content null', async () => {
    s.pool.script = () => untilEos('Restating. Question: 2 + 2?\n</think>\n\n4');
    const whole = await unary(s.client, { stop: ['Question:'] });
    expect(whole.choices[0].message).toEqual({ role: 'assistant', reasoning_content: 'Restating. ', content: null });
    expect(whole.choices[0]).toMatchObject({ finish_reason: 'stop', stop_reason: 'Question:' });
    const stream = await streamed(s.client, { stop: ['Question:'] });
    expect(stream.choices.get(0)).toMatchObject({ reasoning: 'Restating. ', content: '', finish: 'stop', stopReason: 'Question:' });
  });

  it('a stop string after </think> cuts the content only', async () => {
    s.pool.script = () => untilEos('Easy.</think>4.\nUser: more');
    const whole = await unary(s.client, { stop: '\nUser:' });
    expect(whole.choices[0].message).toMatchObject({ reasoning_content: 'Easy.', content: '4.' });
    expect(whole.choices[0]).toMatchObject({ finish_reason: 'stop', stop_reason: '\nUser:' });
  });

  it('n = 2: each choice is split on its own; usage sums both', async () => {
    const answers = ['A.</think>one', 'B, longer.\n</think>two'];
    s.pool.script = (req) => untilEos(answers[Number(req.requestId.split('-').at(-1))]);
    const whole = await unary(s.client, { n: 2 });
    expect(whole.choices.map((c) => c.message)).toEqual([
      { role: 'assistant', reasoning_content: 'A.', content: 'one' },
      { role: 'assistant', reasoning_content: 'B, longer.\n', content: 'two' },
    ]);
    expect(whole.usage?.completion_tokens).toBe(ids(answers[0]).length + ids(answers[1]).length + 2);
    const stream = await streamed(s.client, { n: 2 });
    expect(stream.choices.get(0)).toMatchObject({ reasoning: 'A.', content: 'one' });
    expect(stream.choices.get(1)).toMatchObject({ reasoning: 'B, longer.\n', content: 'two' });
  });

  it('/v1/completions is not affected: the text as generated', async () => {
    s.pool.script = () => untilEos('Think.</think>Answer');
    const res = await fetch(`${s.baseUrl}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'Q:', max_tokens: 16 }),
    });
    const body = (await res.json()) as { choices: Record<string, unknown>[] };
    expect(body.choices[0].text).toBe('Think.</think>Answer');
    expect(body.choices[0]).not.toHaveProperty('reasoning_content');
    const sse = await fetch(`${s.baseUrl}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'Q:', max_tokens: 16, stream: true }),
    });
    const events = sseEvents(await sse.text()).filter((e) => e !== '[DONE]') as { choices: { text: string }[] }[];
    expect(events.map((e) => e.choices[0].text).join('')).toBe('Think.</think>Answer');
  });

  it('without the flag, chat answers are the text as generated, with no reasoning_content', async () => {
    const off = await serve({ modelDir: thinkDir });
    off.pool.script = () => untilEos('Think.</think>Answer');
    const whole = await unary(off.client, {});
    expect(whole.choices[0].message).toEqual({ role: 'assistant', content: 'Think.</think>Answer' });
  });
});

describe('generation_config.json sampling defaults', () => {
  let modelDir: string;
  beforeAll(() => {
    modelDir = path.join(tmp, 'genconfig');
    fs.mkdirSync(modelDir);
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(tinyDir, f), path.join(modelDir, f));
    fs.writeFileSync(path.join(modelDir, 'generation_config.json'), JSON.stringify({ do_sample: true, temperature: 0.6, top_p: 0.95, top_k: 20, eos_token_id: eos }));
  });

  const ask = (baseUrl: string, route: 'chat/completions' | 'completions', body: Record<string, unknown>) =>
    fetch(`${baseUrl}/v1/${route}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, max_tokens: 2, ...(route === 'completions' ? { prompt: 'Hi' } : { messages: [{ role: 'user', content: 'Hi' }] }), ...body }),
    }).then((r) => expect(r.status).toBe(200));

  it("auto: a request without temperature gets the model's; one with it keeps its own (chat and completions)", async () => {
    const s = await serve({ modelDir, samplingDefaults: loadSamplingDefaults('auto', modelDir).defaults });
    s.pool.script = () => ({ steps: [ids('ok')], finish: 'length' });
    await ask(s.baseUrl, 'chat/completions', {});
    await ask(s.baseUrl, 'chat/completions', { temperature: 0.2, top_p: null });
    await ask(s.baseUrl, 'completions', {});
    await ask(s.baseUrl, 'completions', { temperature: 0, top_k: -1 });
    expect(s.pool.requests.map((r) => [r.sampling.temperature, r.sampling.topP, r.sampling.topK, r.sampling.minP])).toEqual([
      [0.6, 0.95, 20, 0],
      [0.2, 0.95, 20, 0],
      [0.6, 0.95, 20, 0],
      [0, 0.95, -1, 0],
    ]);
  });

  it('vllm: the neutral values', async () => {
    const s = await serve({ modelDir, samplingDefaults: loadSamplingDefaults('vllm', modelDir).defaults });
    s.pool.script = () => ({ steps: [ids('ok')], finish: 'length' });
    await ask(s.baseUrl, 'chat/completions', {});
    await ask(s.baseUrl, 'completions', {});
    expect(s.pool.requests.map((r) => [r.sampling.temperature, r.sampling.topP, r.sampling.topK])).toEqual([
      [1, 1, 0],
      [1, 1, 0],
    ]);
  });
});
