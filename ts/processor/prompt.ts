// prompt.ts: a request's input turned into the prompt token ids the engine runs.
//
// BOS, as vLLM handles it (so it is never doubled nor lost):
// - chat: the rendered template already holds BOS where the model expects it (Llama 3 writes
//   `{{ bos_token }}`, Qwen's ChatML has none), so the prompt is tokenized WITHOUT special tokens;
// - completion text: tokenized WITH special tokens, i.e. whatever tokenizer.json's post-processor
//   adds (Llama 3's upstream tokenizer prepends <|begin_of_text|>);
// - completion token ids: taken as given, only checked against the vocabulary.
// A prompt of zero tokens is an ERR_EMPTY_PROMPT error.
import { ChatTemplate, type ChatMessage, type RenderOptions } from './chat-template.js';
import { ProcessorError } from './errors.js';
import type { TextTokenizer } from './tokenizer.js';

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

function nonEmpty(ids: number[], param: string): number[] {
  if (ids.length === 0) throw new ProcessorError('ERR_EMPTY_PROMPT', 'the prompt is empty', param);
  return ids;
}
