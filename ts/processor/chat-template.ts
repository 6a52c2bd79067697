// chat-template.ts: renders OpenAI chat messages into a prompt string with the model's Jinja chat
// template, as transformers' apply_chat_template does.
//
// What stays true:
// - Messages are checked before rendering: roles system/user/assistant/tool only; content is a
//   string or an array of {type: 'text', text} parts (joined with "\n", as vLLM does); null or
//   missing content only for an assistant message (one that carries tool_calls). Anything else is
//   an ERR_INVALID_MESSAGE error naming the field.
// - The template sees `messages` (tool calls' arguments as objects), `tools` (when given),
//   `add_generation_prompt`, `bos_token`, `eos_token` and any extra variables the request passes
//   (vLLM's chat_template_kwargs, e.g. Qwen 3's enable_thinking);
//   `raise_exception` and `strftime_now` are the Jinja globals. Whatever fails while rendering
//   (raise_exception included) is an ERR_CHAT_TEMPLATE_RENDER error: a 400, as in vLLM.
// - The rendered prompt already holds BOS where the model wants it: tokenize it without special
//   tokens (prompt.ts does).
import { Template } from '@huggingface/jinja';
import { ProcessorError } from './errors.js';
import type { TextTokenizer } from './tokenizer.js';

export type ChatRole = 'system' | 'user' | 'assistant' | 'tool';

export interface ChatTextPart {
  readonly type: 'text';
  readonly text: string;
}

export interface ChatMessage {
  readonly role: ChatRole;
  readonly content?: string | readonly ChatTextPart[] | null;
  readonly name?: string;
  readonly tool_calls?: readonly unknown[];
  readonly tool_call_id?: string;
}

export interface RenderOptions {
  // Append the header that opens the assistant's turn. Default true.
  readonly addGenerationPrompt?: boolean;
  // Extra template variables (vLLM's chat_template_kwargs).
  readonly templateKwargs?: Readonly<Record<string, unknown>>;
  // The request's tools, in OpenAI's shape ({type: 'function', function: {...}}): the template's
  // `tools` (absent when the request has none).
  readonly tools?: readonly unknown[];
}

const roles: ReadonlySet<string> = new Set<ChatRole>(['system', 'user', 'assistant', 'tool']);

// What the template sees of one message: content always a string.
interface TemplateMessage {
  role: ChatRole;
  content: string;
  name?: string;
  tool_calls?: readonly unknown[];
  tool_call_id?: string;
}

export class ChatTemplate {
  private readonly template: Template;
  // Whether the template reads `tools` at all (Llama 3.0's does not; Llama 3.1+ and Qwen's do).
  readonly rendersTools: boolean;

  constructor(
    source: string,
    private readonly specials: { readonly bosToken: string; readonly eosToken: string },
  ) {
    this.rendersTools = /\btools\b/.test(source);
    try {
      this.template = new Template(source);
    } catch (err) {
      throw new ProcessorError('ERR_CHAT_TEMPLATE_INVALID', `the model's chat template does not parse: ${(err as Error).message}`);
    }
  }

  // The model's own template; ERR_NO_CHAT_TEMPLATE (400) when it has none, as vLLM refuses chat
  // requests for such models rather than guessing a format.
  static forTokenizer(tokenizer: TextTokenizer): ChatTemplate {
    if (tokenizer.chatTemplate === null) {
      throw new ProcessorError(
        'ERR_NO_CHAT_TEMPLATE',
        'this model has no chat template (tokenizer_config.json chat_template or chat_template.jinja); use /v1/completions',
      );
    }
    return new ChatTemplate(tokenizer.chatTemplate, {
      bosToken: tokenizer.bosToken?.text ?? '',
      eosToken: tokenizer.eosToken?.text ?? '',
    });
  }

  render(messages: readonly ChatMessage[], options: RenderOptions = {}): string {
    const context = {
      ...options.templateKwargs,
      messages: messages.map(toTemplateMessage),
      ...(options.tools ? { tools: options.tools } : {}),
      add_generation_prompt: options.addGenerationPrompt ?? true,
      bos_token: this.specials.bosToken,
      eos_token: this.specials.eosToken,
    };
    try {
      return this.template.render(context);
    } catch (err) {
      // The field at fault: chat_template_kwargs when the messages render without them.
      const kwargs = options.templateKwargs !== undefined && Object.keys(options.templateKwargs).length > 0;
      const param = kwargs && this.renders(withoutKwargs(context, options.templateKwargs!)) ? 'chat_template_kwargs' : 'messages';
      throw new ProcessorError('ERR_CHAT_TEMPLATE_RENDER', `chat template error: ${(err as Error).message}`, param);
    }
  }

  private renders(context: Record<string, unknown>): boolean {
    try {
      this.template.render(context);
      return true;
    } catch {
      return false;
    }
  }
}

// The render context without the request's extra keys (the reserved ones it may not override stay).
function withoutKwargs(context: Record<string, unknown>, kwargs: Readonly<Record<string, unknown>>): Record<string, unknown> {
  const reserved = new Set(['messages', 'tools', 'add_generation_prompt', 'bos_token', 'eos_token']);
  return Object.fromEntries(Object.entries(context).filter(([k]) => reserved.has(k) || !(k in kwargs)));
}

function toTemplateMessage(message: ChatMessage, index: number): TemplateMessage {
  const at = `messages[${index}]`;
  if (typeof message !== 'object' || message === null) {
    throw new ProcessorError('ERR_INVALID_MESSAGE', `${at} must be an object`, at);
  }
  const { role, name, tool_calls, tool_call_id } = message;
  if (typeof role !== 'string' || !roles.has(role)) {
    throw new ProcessorError('ERR_INVALID_MESSAGE', `${at}.role ${JSON.stringify(role)} is not one of ${[...roles].join(', ')}`, `${at}.role`);
  }
  const out: TemplateMessage = { role, content: contentText(message, at) };
  if (name !== undefined) out.name = name;
  if (tool_calls !== undefined) out.tool_calls = Array.isArray(tool_calls) ? tool_calls.map(withParsedArguments) : tool_calls;
  if (tool_call_id !== undefined) out.tool_call_id = tool_call_id;
  return out;
}

// An assistant message's tool call with its arguments as an object, as templates expect them
// (Llama 3's writes `arguments | tojson`, Qwen's an object or a string as it is); OpenAI clients
// send the JSON text. Arguments that are not a JSON object's text stay as they are.
function withParsedArguments(call: unknown): unknown {
  const f = (call as { function?: { arguments?: unknown } } | null)?.function;
  if (typeof f?.arguments !== 'string') return call;
  try {
    const args: unknown = JSON.parse(f.arguments);
    if (typeof args !== 'object' || args === null || Array.isArray(args)) return call;
    return { ...(call as object), function: { ...f, arguments: args } };
  } catch {
    return call;
  }
}

function contentText(message: ChatMessage, at: string): string {
  const { content } = message;
  if (typeof content === 'string') return content;
  if ((content === null || content === undefined) && message.role === 'assistant') return '';
  if (!Array.isArray(content)) {
    throw new ProcessorError('ERR_INVALID_MESSAGE', `${at}.content must be a string or an array of text parts`, `${at}.content`);
  }
  return content
    .map((part: ChatTextPart, j) => {
      const partAt = `${at}.content[${j}]`;
      if (typeof part !== 'object' || part === null || part.type !== 'text') {
        const type = typeof part === 'object' && part !== null ? JSON.stringify(part.type) : 'missing';
        throw new ProcessorError('ERR_INVALID_MESSAGE', `${partAt}.type ${type} is not supported (only "text")`, `${partAt}.type`);
      }
      if (typeof part.text !== 'string') {
        throw new ProcessorError('ERR_INVALID_MESSAGE', `${partAt}.text must be a string`, `${partAt}.text`);
      }
      return part.text;
    })
    .join('\n');
}
