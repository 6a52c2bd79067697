// tokenizer.ts: a Hugging Face tokenizer (tokenizer.json + tokenizer_config.json of a model
// directory) behind the few calls the serving path needs.
//
// What stays true:
// - encode/decode match the Python `tokenizers` library, except that decode never applies the
//   legacy `clean_up_tokenization_spaces` rewrite (" ." -> "."): served text is the model's text,
//   as in vLLM, and incremental detokenizing stays exact.
// - addSpecialTokens follows tokenizer.json's post-processor only (a TemplateProcessing that
//   prepends BOS adds it; a bare ByteLevel one adds nothing).
// - Special tokens are the added tokens marked `special` plus tokenizer_config's
//   `additional_special_tokens`; skipSpecialTokens drops exactly those.
// - Token ids are checked: an id outside the vocabulary is an ERR_INVALID_TOKEN_ID error, never a
//   silently wrong string.
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { ProcessorError } from './errors.js';

export interface SpecialToken {
  readonly text: string;
  readonly id: number;
}

export interface EncodeOptions {
  // Apply tokenizer.json's post-processor (adds BOS where the model's tokenizer does).
  readonly addSpecialTokens: boolean;
}

export interface DecodeOptions {
  readonly skipSpecialTokens: boolean;
}

// The fields of tokenizer_config.json we read. Tokens may be plain strings or AddedToken objects.
type ConfigToken = string | { content: string } | null | undefined;
type ConfigChatTemplate = string | ReadonlyArray<{ name: string; template: string }> | null | undefined;
interface TokenizerConfig {
  bos_token?: ConfigToken;
  eos_token?: ConfigToken;
  additional_special_tokens?: ConfigToken[];
  chat_template?: ConfigChatTemplate;
}

export interface TokenizerSources {
  readonly tokenizerJson: unknown;
  readonly tokenizerConfig: unknown;
  // The model directory's chat_template.jinja, which wins over tokenizer_config's chat_template.
  readonly chatTemplateFile?: string | null;
  // Where the sources came from, for error messages.
  readonly origin?: string;
}

export class TextTokenizer {
  // Number of token ids, added tokens included (the largest id + 1).
  readonly vocabSize: number;
  readonly bosToken: SpecialToken | null;
  readonly eosToken: SpecialToken | null;
  // The chat template source: a string template, or the one named 'default' of a list; null when
  // the model has none.
  readonly chatTemplate: string | null;
  private readonly hf: HfTokenizer;
  private readonly vocab: readonly (string | undefined)[];
  private readonly specialIds: ReadonlySet<number>;
  private readonly byteEncoding: ByteEncoding | null;

  constructor(sources: TokenizerSources) {
    const origin = sources.origin ?? 'tokenizer';
    const config = sources.tokenizerConfig as TokenizerConfig;
    if (!isObject(sources.tokenizerJson) || !isObject(config)) {
      throw new ProcessorError('ERR_TOKENIZER_INVALID', `${origin}: tokenizer.json and tokenizer_config.json must hold JSON objects`);
    }
    try {
      this.hf = new HfTokenizer(sources.tokenizerJson, config);
    } catch (err) {
      throw new ProcessorError('ERR_TOKENIZER_INVALID', `${origin}: unsupported tokenizer.json: ${(err as Error).message}`);
    }
    if (this.hf.model === null) {
      throw new ProcessorError('ERR_TOKENIZER_INVALID', `${origin}: tokenizer.json has no model`);
    }
    this.vocab = this.hf.model.vocab;
    this.vocabSize = this.vocab.length;

    const special = new Set<number>();
    for (const [id, token] of this.hf.get_added_tokens_decoder()) {
      if (token.special) special.add(id);
    }
    // One that is not in the vocabulary can never be decoded, so it needs no entry.
    for (const token of config.additional_special_tokens ?? []) {
      const id = this.tokenToId(typeof token === 'string' ? token : (token?.content ?? ''));
      if (id !== undefined) special.add(id);
    }
    this.specialIds = special;
    this.bosToken = this.resolveConfigToken(config.bos_token, 'bos_token', origin);
    this.eosToken = this.resolveConfigToken(config.eos_token, 'eos_token', origin);
    this.chatTemplate = sources.chatTemplateFile ?? pickDefaultTemplate(config.chat_template);
    this.byteEncoding = byteEncodingOf((sources.tokenizerJson as { decoder?: unknown }).decoder);
  }

  encode(text: string, options: EncodeOptions): number[] {
    return this.hf.encode(text, { add_special_tokens: options.addSpecialTokens }).ids;
  }

  decode(ids: readonly number[], options: DecodeOptions): string {
    this.checkIds(ids);
    const kept = options.skipSpecialTokens ? ids.filter((id) => !this.specialIds.has(id)) : ids;
    if (kept.length === 0) return '';
    return this.hf.decode(kept as number[], { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }

  // The string the OpenAI API reports for one token in logprobs: the token decoded on its own,
  // special tokens included ("<|eot_id|>"). A byte-level piece of a multi-byte character decodes
  // to U+FFFD on its own, as in vLLM.
  idToToken(id: number): string {
    return this.decode([id], { skipSpecialTokens: false });
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  // The vocabulary entry for a raw token string (`"Ġhello"`, `"<0x0A>"`, `"<|eot_id|>"`).
  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  // The id of the token that stands for exactly one raw byte: the byte-level BPE alphabet's
  // character for it, or the `<0xNN>` byte-fallback token; undefined when the vocabulary has none.
  byteTokenId(byte: number): number | undefined {
    if (this.byteEncoding === 'byte-level') return this.tokenToId(byteLevelChar(byte));
    if (this.byteEncoding === 'byte-fallback') return this.tokenToId(`<0x${byte.toString(16).toUpperCase().padStart(2, '0')}>`);
    return undefined;
  }

  checkIds(ids: readonly number[]): void {
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || this.vocab[id] === undefined) {
        throw new ProcessorError('ERR_INVALID_TOKEN_ID', `token id ${id} is not in the vocabulary (size ${this.vocabSize})`);
      }
    }
  }

  private resolveConfigToken(token: ConfigToken, field: string, origin: string): SpecialToken | null {
    if (token === null || token === undefined) return null;
    const text = typeof token === 'string' ? token : token.content;
    const id = typeof text === 'string' ? this.tokenToId(text) : undefined;
    if (id === undefined) {
      throw new ProcessorError('ERR_TOKENIZER_INVALID', `${origin}: tokenizer_config.json ${field} ${JSON.stringify(text)} is not in the vocabulary`);
    }
    return { text, id };
  }
}

// Reads tokenizer.json, tokenizer_config.json and (when present) chat_template.jinja from a Hugging
// Face model directory.
export async function loadTokenizer(modelDir: string): Promise<TextTokenizer> {
  const [tokenizerJson, tokenizerConfig] = await Promise.all([
    readJson(join(modelDir, 'tokenizer.json')),
    readJson(join(modelDir, 'tokenizer_config.json')),
  ]);
  const templatePath = join(modelDir, 'chat_template.jinja');
  const chatTemplateFile = (await isFile(templatePath)) ? await readFile(templatePath, 'utf8') : null;
  return new TextTokenizer({ tokenizerJson, tokenizerConfig, chatTemplateFile, origin: modelDir });
}

async function readJson(path: string): Promise<unknown> {
  if (!(await isFile(path))) {
    throw new ProcessorError('ERR_TOKENIZER_FILE_MISSING', `${path} not found: a model directory needs tokenizer.json and tokenizer_config.json`);
  }
  try {
    return JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw new ProcessorError('ERR_TOKENIZER_INVALID', `${path} is not valid JSON: ${(err as Error).message}`);
  }
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

function isObject(value: unknown): value is object {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function pickDefaultTemplate(template: ConfigChatTemplate): string | null {
  if (typeof template === 'string') return template;
  if (Array.isArray(template)) return template.find((t) => t.name === 'default')?.template ?? null;
  return null;
}

// How the decoder turns tokens into raw bytes: GPT-2's byte-level alphabet (Llama 3, Qwen), or
// sentencepiece's `<0xNN>` byte-fallback tokens (Llama 2, Mistral).
export type ByteEncoding = 'byte-level' | 'byte-fallback';

export function byteEncodingOf(decoder: unknown): ByteEncoding | null {
  const d = decoder as { type?: unknown; decoders?: unknown } | null | undefined;
  if (d?.type === 'ByteLevel') return 'byte-level';
  if (d?.type === 'ByteFallback') return 'byte-fallback';
  if (d?.type === 'Sequence' && Array.isArray(d.decoders)) {
    for (const inner of d.decoders) {
      const found = byteEncodingOf(inner);
      if (found) return found;
    }
  }
  return null;
}

// GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other bytes are
// numbered in order from U+0100.
function byteLevelChar(byte: number): string {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  if (printable(byte)) return String.fromCharCode(byte);
  let rank = 0;
  for (let b = 0; b < byte; b++) if (!printable(b)) rank++;
  return String.fromCharCode(0x100 + rank);
}
