// prompt.ts: a request's input turned into the prompt token ids the engine runs.
//
// BOS, as vLLM handles it (so it is never doubled nor lost):
// - chat: the rendered template already holds BOS where the model expects it (Llama 3 writes
//   `{{ bos_token }}`, Qwen's ChatML has none), so the prompt is tokenized WITHOUT special tokens;
// - completion text: tokenized WITH special tokens, i.e. whatever tokenizer.json's post-processor
//   adds (Llama 3's upstream tokenizer prepends <|begin_of_text|>);
// - completion token ids: taken as given, only checked against the vocabulary.
// A prompt of zero tokens is an ERR_EMPTY_PROMPT error.
// The async forms encode through a PromptEncoder (encoder-pool.ts: long texts off the event
// loop) and call `check` with the text first, so a caller can refuse it before it is encoded.
import { ChatTemplate, type ChatMessage, type RenderOptions } from './chat-template.js';
import { ProcessorError } from './errors.js';
import type { EncodeOptions, TextTokenizer } from './tokenizer.js';

export interface ChatPrompt {
  readonly prompt: string;
  readonly promptTokenIds: number[];
}

export function chatPrompt(
  tokenizer: TextTokenizer,
  template: ChatTemplate,
  messages: readonly ChatMessage[],
  options: RenderOptions = {},
): ChatPrompt {
  const prompt = template.render(messages, options);
  const promptTokenIds = tokenizer.encode(prompt, { addSpecialTokens: false });
  return { prompt, promptTokenIds: nonEmpty(promptTokenIds, 'messages') };
}

export function completionPromptTokenIds(tokenizer: TextTokenizer, prompt: string | readonly number[]): number[] {
  if (typeof prompt === 'string') {
    return nonEmpty(tokenizer.encode(prompt, { addSpecialTokens: true }), 'prompt');
  }
  tokenizer.checkIds(prompt);
  return nonEmpty([...prompt], 'prompt');
}

export interface PromptEncoder {
  encode(text: string, options: EncodeOptions): Promise<number[]>;
}

export async function encodeChatPrompt(
  encoder: PromptEncoder,
  template: ChatTemplate,
  messages: readonly ChatMessage[],
  options: RenderOptions = {},
  check: (text: string) => void = () => {},
): Promise<ChatPrompt> {
  const prompt = template.render(messages, options);
  check(prompt);
  const promptTokenIds = await encoder.encode(prompt, { addSpecialTokens: false });
  return { prompt, promptTokenIds: nonEmpty(promptTokenIds, 'messages') };
}

export async function encodeCompletionPrompt(
  encoder: PromptEncoder,
  tokenizer: TextTokenizer,
  prompt: string | readonly number[],
  check: (text: string) => void = () => {},
): Promise<number[]> {
  if (typeof prompt !== 'string') return completionPromptTokenIds(tokenizer, prompt);
  check(prompt);
  return nonEmpty(await encoder.encode(prompt, { addSpecialTokens: true }), 'prompt');
}

function nonEmpty(ids: number[], param: string): number[] {
  if (ids.length === 0) throw new ProcessorError('ERR_EMPTY_PROMPT', 'the prompt is empty', param);
  return ids;
}
