// Structured outputs and tool calling through the real launcher, with the official `openai`
// client over HTTP. The models have random weights: only the token mask makes their output valid,
// so every output here is parsed and validated (ajv) against what was asked.
//   - tiny-llama (the Llama 3 tokenizer; a chat template without tools): twenty JSON schemas in
//     four modes (greedy and sampled, whole and streamed), json_object, vLLM's guided_* fields on
//     both routes, the 400s, a batch mixing constrained and unconstrained requests, logprobs of
//     the masked distribution, forced tool calls (required and named);
//   - test-qwen3 (Qwen 3's real chat template, which shows tools) with --enable-auto-tool-choice
//     --tool-call-parser hermes: tool_choice auto and a tool-result round trip.
import { Ajv } from 'ajv';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { jsonSchemas } from '../fixtures/json-schemas.ts';
import { freePort, launch, runLauncher, type Launched } from '../helpers/launcher.ts';

const ajv = new Ajv({ strict: false, allErrors: true });
let tiny: Launched;
let qwen: Launched;
let client: OpenAI;
let qwenClient: OpenAI;

beforeAll(async () => {
  const [tinyDir, qwenDir] = await Promise.all([ensureModel('tiny-llama'), ensureModel('test-qwen3')]);
  [tiny, qwen] = await Promise.all([
    launch(['--model', tinyDir.dir, '--served-model-name', 'tiny', '--http-port', String(await freePort()), '--kv-cache-memory', '64MiB', '--max-num-seqs', '32']),
    launch([
      '--model', qwenDir.dir, '--served-model-name', 'qwen', '--http-port', String(await freePort()), '--kv-cache-memory', '32MiB',
      '--enable-auto-tool-choice', '--tool-call-parser', 'hermes',
    ]),
  ]);
  client = new OpenAI({ baseURL: `${tiny.url}/v1`, apiKey: 'none', maxRetries: 0 });
  qwenClient = new OpenAI({ baseURL: `${qwen.url}/v1`, apiKey: 'none', maxRetries: 0 });
}, 240_000);

afterAll(async () => {
  await Promise.all([tiny?.stop(), qwen?.stop()]);
});

const messages = [{ role: 'user' as const, content: 'Answer in JSON.' }];
const MAX_TOKENS = 400;

// Runs fn over items, `limit` at a time.
async function pool<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!);
      }
    }),
  );
  return out;
}

// A chat answer (whole or streamed) as its text and finish reason.
async function chatText(body: Record<string, unknown>, stream: boolean, c = client): Promise<{ text: string; finish: string | null }> {
  if (!stream) {
    const r = await c.chat.completions.create({ model: 'tiny', messages, max_tokens: MAX_TOKENS, ...body } as never);
    return { text: (r as OpenAI.ChatCompletion).choices[0]!.message.content ?? '', finish: (r as OpenAI.ChatCompletion).choices[0]!.finish_reason };
  }
  const s = await c.chat.completions.create({ model: 'tiny', messages, max_tokens: MAX_TOKENS, ...body, stream: true } as never);
  let text = '';
  let finish: string | null = null;
  for await (const chunk of s as unknown as AsyncIterable<OpenAI.ChatCompletionChunk>) {
    const ch = chunk.choices[0];
    if (!ch) continue;
    text += ch.delta.content ?? '';
    finish = ch.finish_reason ?? finish;
  }
  return { text, finish };
}

const modes = [
  { name: 'greedy, whole', sampling: { temperature: 0 }, stream: false },
  { name: 'greedy, streamed', sampling: { temperature: 0 }, stream: true },
  { name: 'sampled, whole', sampling: { temperature: 1, top_p: 0.95, seed: 7 }, stream: false },
  { name: 'sampled, streamed', sampling: { temperature: 0.8, top_k: 50, seed: 11 }, stream: true },
];

describe('response_format json_schema', () => {
  it(`every output of ${jsonSchemas.length} schemas in ${modes.length} modes parses and validates`, async () => {
    const cases = jsonSchemas.flatMap((s) => modes.map((m) => ({ s, m })));
    const failures: string[] = [];
    await pool(cases, 16, async ({ s, m }) => {
      const { text, finish } = await chatText(
        { ...m.sampling, response_format: { type: 'json_schema', json_schema: { name: 'answer', schema: s.schema, strict: true } } },
        m.stream,
      );
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch {
        failures.push(`${s.name} (${m.name}): not JSON (finish ${finish}): ${text.slice(0, 200)}`);
        return;
      }
      if (!ajv.validate(s.schema, value)) failures.push(`${s.name} (${m.name}): ${ajv.errorsText()} in ${text}`);
      if (finish !== 'stop') failures.push(`${s.name} (${m.name}): finish_reason ${finish}`);
    });
    expect(failures).toEqual([]);
  }, 300_000);

  it('json_object gives an object; guided_json and response_format work on completions too', async () => {
    const { text } = await chatText({ temperature: 0, response_format: { type: 'json_object' }, max_tokens: 200 }, false);
    // Random weights may run to max_tokens inside an object: only a finished one must parse.
    const r = await client.chat.completions.create({ model: 'tiny', messages, temperature: 0.7, seed: 3, max_tokens: MAX_TOKENS, response_format: { type: 'json_object' } });
    if (r.choices[0]!.finish_reason === 'stop') expect(typeof JSON.parse(r.choices[0]!.message.content!)).toBe('object');
    expect(text.startsWith('{')).toBe(true);
    const schema = jsonSchemas[0]!.schema;
    for (const extra of [{ guided_json: schema }, { guided_json: JSON.stringify(schema) }, { response_format: { type: 'json_schema', json_schema: { name: 'x', schema } } }]) {
      const c = await client.completions.create({ model: 'tiny', prompt: 'Data:', max_tokens: MAX_TOKENS, temperature: 0, ...extra } as never);
      const choice = (c as OpenAI.Completion).choices[0]!;
      expect(choice.finish_reason).toBe('stop');
      expect(ajv.validate(schema, JSON.parse(choice.text))).toBe(true);
    }
  }, 60_000);
});

describe("vLLM's guided_* fields", () => {
  it('guided_choice, guided_regex, guided_grammar and structured_outputs, greedy and sampled', async () => {
    const choices = ['yes', 'no', 'maybe "so"'];
    for (const temperature of [0, 1]) {
      const chat = await chatText({ temperature, seed: 5, guided_choice: choices }, false);
      expect(choices).toContain(chat.text);
      const so = await chatText({ temperature, seed: 6, structured_outputs: { choice: choices } }, true);
      expect(choices).toContain(so.text);
      const regex = await client.completions.create({ model: 'tiny', prompt: 'Code:', max_tokens: 50, temperature, seed: 8, guided_regex: '[A-Z]{2}-[0-9]{3}' } as never);
      expect((regex as OpenAI.Completion).choices[0]!.text).toMatch(/^[A-Z]{2}-[0-9]{3}$/);
      const grammar = 'root ::= "(" expr ")"\nexpr ::= num ("+" num)*\nnum ::= [1-9] [0-9]?';
      const g = await client.completions.create({ model: 'tiny', prompt: 'Sum:', max_tokens: 60, temperature, seed: 9, guided_grammar: grammar } as never);
      const gText = (g as OpenAI.Completion).choices[0]!;
      if (gText.finish_reason === 'stop') expect(gText.text).toMatch(/^\([1-9][0-9]?(\+[1-9][0-9]?)*\)$/);
      else expect(gText.text).toMatch(/^\([1-9][0-9]?(\+[1-9][0-9]?)*$/);
    }
  }, 60_000);

  it('refuses bad grammars and conflicting fields with a 400 naming the field, before any worker is used', async () => {
    const bad = async (body: Record<string, unknown>, param: string, message: RegExp) => {
      const err = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 5, ...body } as never).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAI.BadRequestError);
      expect((err as InstanceType<typeof OpenAI.BadRequestError>).param).toBe(param);
      expect((err as Error).message).toMatch(message);
    };
    await bad({ response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: { a: { type: 'nonsense' } } } } } }, 'response_format.json_schema.schema', /invalid JSON schema/);
    await bad({ guided_json: '{"type": ' }, 'guided_json', /not valid JSON/);
    await bad({ guided_regex: '[ab' }, 'guided_regex', /invalid regex: .*Unclosed/);
    await bad({ guided_grammar: 'root ::= (' }, 'guided_grammar', /invalid grammar: EBNF parser error/);
    await bad({ guided_choice: [] }, 'guided_choice', /non-empty array of strings/);
    await bad({ guided_regex: 'a', guided_choice: ['a'] }, 'guided_choice', /only one structured output/);
    await bad({ guided_choice: ['a'], ignore_eos: true }, 'ignore_eos', /ignore_eos cannot be combined/);
    await bad({ guided_choice: ['a'], min_tokens: 2 }, 'min_tokens', /min_tokens cannot be combined/);
    await bad({ response_format: { type: 'structural_tag' } }, 'response_format.type', /not supported/);
    await bad({ guided_choice: ['a'], guided_decoding_backend: 'outlines' }, 'guided_decoding_backend', /not supported/);
    await bad({ guided_choice: ['a'], guided_whitespace_pattern: ' *' }, 'guided_whitespace_pattern', /not supported/);
    expect(tiny.output()).not.toMatch(/grammar \(json_schema\) compiled[^\n]*nonsense/);
  }, 60_000);
});

describe('constrained and unconstrained requests in one batch', () => {
  it('leaves the unconstrained ones with the tokens they give alone', async () => {
    const plain = { model: 'tiny', prompt: 'The weather today is', max_tokens: 24, temperature: 0, ignore_eos: true };
    const alone = (await client.completions.create(plain)).choices[0]!.text;
    const constrained = jsonSchemas.slice(0, 6).map((s) =>
      client.chat.completions.create({ model: 'tiny', messages, max_tokens: MAX_TOKENS, temperature: 0.9, seed: 1, response_format: { type: 'json_schema', json_schema: { name: 'x', schema: s.schema } } }),
    );
    const together = await Promise.all([client.completions.create(plain), ...constrained, client.completions.create(plain)]);
    expect((together[0] as OpenAI.Completion).choices[0]!.text).toBe(alone);
    expect((together.at(-1) as OpenAI.Completion).choices[0]!.text).toBe(alone);
  }, 120_000);

  it('logprobs are those of the masked distribution', async () => {
    const r = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 10, temperature: 0, logprobs: true, top_logprobs: 20, guided_choice: ['yes', 'no'] } as never);
    const first = (r as OpenAI.ChatCompletion).choices[0]!.logprobs!.content![0]!;
    const allowed = first.top_logprobs.filter((t) => t.logprob > -9999);
    // Only prefixes of the choices have probability, and theirs sums to one.
    for (const t of allowed) expect(['yes', 'no'].some((c) => c.startsWith(t.token))).toBe(true);
    expect(allowed.reduce((sum, t) => sum + Math.exp(t.logprob), 0)).toBeCloseTo(1, 4);
  });
});

describe('the tool flags', () => {
  it('--help lists them; an unknown parser, or auto tool choice without one, is refused at start', async () => {
    const help = await runLauncher(['--help']);
    expect(help.output).toContain('--enable-auto-tool-choice');
    expect(help.output).toContain('--tool-call-parser NAME');
    const unknown = await runLauncher(['--tool-call-parser', 'mistral']);
    expect(unknown.code).toBe(2);
    expect(unknown.output).toContain('--tool-call-parser: unknown tool call parser "mistral" (known: hermes, llama3_json; Qwen 3 uses hermes)');
    const alone = await runLauncher(['--enable-auto-tool-choice']);
    expect(alone.code).toBe(2);
    expect(alone.output).toContain('--enable-auto-tool-choice needs --tool-call-parser');
  });
});

describe('tool calling', () => {
  const weather = {
    type: 'function' as const,
    function: {
      name: 'get_weather',
      description: 'The weather in a city',
      parameters: { type: 'object', properties: { city: { type: 'string', maxLength: 12 }, days: { type: 'integer', minimum: 1, maximum: 7 } }, required: ['city', 'days'] },
    },
  };
  const time = { type: 'function' as const, function: { name: 'get_time', parameters: { type: 'object', properties: { zone: { enum: ['UTC', 'CET'] } }, required: ['zone'] } } };
  const paramsOf = (name: string) => [weather, time].find((t) => t.function.name === name)!.function.parameters;

  // Calls from a whole answer, or assembled from a stream's delta.tool_calls.
  async function calls(body: Record<string, unknown>, stream: boolean) {
    const req = { model: 'tiny', messages, max_tokens: MAX_TOKENS, tools: [weather, time], ...body };
    if (!stream) {
      const r = await client.chat.completions.create(req as never);
      const c = (r as OpenAI.ChatCompletion).choices[0]!;
      return { calls: (c.message.tool_calls ?? []) as OpenAI.ChatCompletionMessageFunctionToolCall[], content: c.message.content, finish: c.finish_reason };
    }
    const s = await client.chat.completions.create({ ...req, stream: true } as never);
    const out: { id: string; type: 'function'; function: { name: string; arguments: string } }[] = [];
    let finish: string | null = null;
    let content = '';
    for await (const chunk of s as unknown as AsyncIterable<OpenAI.ChatCompletionChunk>) {
      const ch = chunk.choices[0];
      if (!ch) continue;
      content += ch.delta.content ?? '';
      finish = ch.finish_reason ?? finish;
      for (const d of ch.delta.tool_calls ?? []) {
        if (d.id) out[d.index] = { id: d.id, type: 'function', function: { name: d.function!.name!, arguments: '' } };
        out[d.index]!.function.arguments += d.function?.arguments ?? '';
      }
    }
    return { calls: out, content: content.length > 0 ? content : null, finish };
  }

  for (const stream of [false, true]) {
    it(`tool_choice "required" and a named function are calls whose arguments validate (${stream ? 'streamed' : 'whole'})`, async () => {
      for (const temperature of [0, 0.9]) {
        const required = await calls({ tool_choice: 'required', temperature, seed: 4 }, stream);
        expect(required.finish).toBe('tool_calls');
        expect(required.content).toBeNull();
        expect(required.calls.length).toBeGreaterThanOrEqual(1);
        for (const c of required.calls) {
          expect(c.id).toMatch(/^chatcmpl-tool-/);
          expect(ajv.validate(paramsOf(c.function.name), JSON.parse(c.function.arguments))).toBe(true);
        }
        const single = await calls({ tool_choice: 'required', parallel_tool_calls: false, temperature, seed: 2 }, stream);
        expect(single.calls.length).toBe(1);
        const named = await calls({ tool_choice: { type: 'function', function: { name: 'get_time' } }, temperature, seed: 3 }, stream);
        expect(named.finish).toBe('stop');
        expect(named.calls.map((c) => c.function.name)).toEqual(['get_time']);
        expect(ajv.validate(time.function.parameters, JSON.parse(named.calls[0]!.function.arguments))).toBe(true);
      }
    }, 120_000);
  }

  it('refuses what it cannot honour', async () => {
    const bad = async (body: Record<string, unknown>, param: string, message: RegExp) => {
      const err = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 5, tools: [weather], ...body } as never).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAI.BadRequestError);
      expect((err as InstanceType<typeof OpenAI.BadRequestError>).param).toBe(param);
      expect((err as Error).message).toMatch(message);
    };
    await bad({}, 'tool_choice', /"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser/);
    await bad({ tool_choice: { type: 'function', function: { name: 'nope' } } }, 'tool_choice.function.name', /not in tools/);
    await bad({ tool_choice: 'required', guided_choice: ['a'] }, 'guided_choice', /forced tool_choice/);
    await bad({ tools: [{ type: 'function', function: { name: 'bad name!' } }], tool_choice: 'none' }, 'tools[0].function.name', /letters, digits/);
    // tool_choice none: plain content, no calls.
    const none = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 5, tools: [weather], tool_choice: 'none', temperature: 0 });
    expect(none.choices[0]!.message.tool_calls).toBeUndefined();
    expect(typeof none.choices[0]!.message.content).toBe('string');
  });

  it('auto on a model whose template shows tools, and a tool-result round trip through the template', async () => {
    const first = await qwenClient.chat.completions.create({
      model: 'qwen',
      messages: [{ role: 'user', content: 'Weather in Paris?' }],
      tools: [weather],
      max_tokens: 40,
      temperature: 0,
    });
    const m = first.choices[0]!.message;
    // Random weights: the answer is whatever it is, but well-formed.
    expect(typeof m.content === 'string' || Array.isArray(m.tool_calls)).toBe(true);
    const followUp = await qwenClient.chat.completions.create({
      model: 'qwen',
      messages: [
        { role: 'user', content: 'Weather in Paris?' },
        { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris", "days": 1}' } }] },
        { role: 'tool', tool_call_id: 'call_1', content: '{"temp": 21}' },
      ],
      tools: [weather],
      max_tokens: 8,
      temperature: 0,
    });
    // The tool turn and the call were rendered into the prompt: it is longer than the question alone.
    expect(followUp.usage!.prompt_tokens).toBeGreaterThan(first.usage!.prompt_tokens + 20);
    const forced = await qwenClient.chat.completions.create({
      model: 'qwen',
      messages: [{ role: 'user', content: 'Weather?' }],
      tools: [weather],
      tool_choice: 'required',
      parallel_tool_calls: false,
      max_tokens: 300,
      temperature: 0,
    });
    expect(forced.choices[0]!.finish_reason).toBe('tool_calls');
    const call = forced.choices[0]!.message.tool_calls![0] as OpenAI.ChatCompletionMessageFunctionToolCall;
    expect(ajv.validate(weather.function.parameters, JSON.parse(call.function.arguments))).toBe(true);
  }, 60_000);
});
