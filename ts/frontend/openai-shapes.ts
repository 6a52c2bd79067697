// openai-shapes.ts: OpenAI's response objects: chat.completion / chat.completion.chunk and
// text_completion, streamed or whole, with their logprobs and usage.
//
// Owns: the per-request state of the shapes (a completion's text_offset per choice, the echo).
// Stays true: a stream chunk is built as a string from a prefix computed once per request (id,
// object, created, model), so the hot path JSON-encodes only the delta's text and logprobs;
// logprobs are clamped at -9999 (vLLM's floor for -inf, which JSON cannot carry); finish_reason
// and vLLM's stop_reason travel together, on a choice's last chunk.
// With a reasoning parser (chat only), as vLLM: a whole message carries reasoning_content (a
// string) and content (null when empty); a chunk's delta carries reasoning_content and/or content,
// whichever the delta has, and is {} when it has neither.
// With tools, content goes through the choice's tool-call extractor: a delta carries the content it
// lets through and OpenAI's delta.tool_calls ([{index, id, type, function: {name, arguments}}],
// id, type and name on a call's first piece only); a whole message has content (null when empty)
// and tool_calls (when there are calls).
import type { TextTokenizer, ToolCallExtractor, ToolCallPiece, ToolCallSplit } from '../processor/index.ts';
import type { TokenLogprobs } from '../protocol/index.ts';
import type { ChoiceDelta, Usage } from './generation.ts';

export interface ChoiceResult {
  index: number;
  text: string;
  reasoning: string | null; // null: no reasoning parser
  logprobs: TokenLogprobs[] | null;
  finishReason: string;
  stopReason: string | number | null;
}

export interface ResponseShape {
  // Chunks streamed before any delta (chat: each choice's assistant role; completions: the echo).
  openingChunks(): string[];
  chunk(d: ChoiceDelta): string;
  usageChunk(usage: Usage): string;
  body(choices: ChoiceResult[], usage: Usage): unknown;
}

export interface ShapeContext {
  id: string;
  created: number; // unix seconds
  model: string;
  choices: number; // how many
  tokenizer: TextTokenizer;
  returnTokensAsIds: boolean;
  // Chat with tools (tools.ts): each choice's content goes through a fresh extractor, which finds
  // its tool calls; finishAsToolCalls: an answer with calls that stopped says "tool_calls".
  tools?: { extractor: () => ToolCallExtractor; finishAsToolCalls: boolean };
}

const MIN_LOGPROB = -9999;

// Token strings as logprobs report them.
class TokenNames {
  constructor(
    private readonly tokenizer: TextTokenizer,
    private readonly asIds: boolean,
  ) {}

  of(id: number): string {
    return this.asIds ? `token_id:${id}` : this.tokenizer.idToToken(id);
  }
}

const clamp = (lp: number) => (lp > MIN_LOGPROB ? lp : MIN_LOGPROB);
const finishJson = (d: { finishReason: string | null; stopReason: string | number | null }) =>
  d.finishReason === null ? '"finish_reason":null' : `"finish_reason":${JSON.stringify(d.finishReason)},"stop_reason":${JSON.stringify(d.stopReason)}`;

const contentDelta = (d: ChoiceDelta) => (d.text.length > 0 || d.finishReason === null ? `{"content":${JSON.stringify(d.text)}}` : '{}');

function reasoningDelta(reasoning: string, content: string): string {
  const parts: string[] = [];
  if (reasoning.length > 0) parts.push(`"reasoning_content":${JSON.stringify(reasoning)}`);
  if (content.length > 0) parts.push(`"content":${JSON.stringify(content)}`);
  return `{${parts.join(',')}}`;
}

function chunkPrefix(ctx: ShapeContext, object: string): string {
  return `{"id":${JSON.stringify(ctx.id)},"object":"${object}","created":${ctx.created},"model":${JSON.stringify(ctx.model)},"choices":[`;
}

// A stream's tool-call pieces as OpenAI's delta.tool_calls.
function toolCallDeltas(pieces: readonly ToolCallPiece[]) {
  return pieces.map((p) =>
    p.id === undefined
      ? { index: p.index, function: { arguments: p.arguments } }
      : { index: p.index, id: p.id, type: 'function', function: { name: p.name, arguments: p.arguments } },
  );
}

// A whole answer's pieces as message.tool_calls.
function toolCalls(pieces: readonly ToolCallPiece[]) {
  const calls: { id: string; type: 'function'; function: { name: string; arguments: string } }[] = [];
  for (const p of pieces) {
    if (p.id !== undefined) calls[p.index] = { id: p.id, type: 'function', function: { name: p.name ?? '', arguments: '' } };
    calls[p.index].function.arguments += p.arguments;
  }
  return calls;
}

const joinSplits = (a: ToolCallSplit, b: ToolCallSplit): ToolCallSplit => ({ content: a.content + b.content, calls: [...a.calls, ...b.calls] });

export class ChatShape implements ResponseShape {
  private readonly prefix: string;
  private readonly names: TokenNames;
  private readonly extractors = new Map<number, ToolCallExtractor>(); // streaming, by choice

  constructor(private readonly ctx: ShapeContext) {
    this.prefix = chunkPrefix(ctx, 'chat.completion.chunk');
    this.names = new TokenNames(ctx.tokenizer, ctx.returnTokensAsIds);
  }

  openingChunks(): string[] {
    return Array.from(
      { length: this.ctx.choices },
      (_, i) => `${this.prefix}{"index":${i},"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}`,
    );
  }

  chunk(d: ChoiceDelta): string {
    if (this.ctx.tools) return this.toolChunk(d, this.ctx.tools);
    const delta = d.reasoning === null ? contentDelta(d) : reasoningDelta(d.reasoning, d.text);
    const logprobs = d.logprobs === null ? 'null' : JSON.stringify(this.logprobs(d.logprobs));
    return `${this.prefix}{"index":${d.index},"delta":${delta},"logprobs":${logprobs},${finishJson(d)}}]}`;
  }

  private toolChunk(d: ChoiceDelta, tools: NonNullable<ShapeContext['tools']>): string {
    let extractor = this.extractors.get(d.index);
    if (!extractor) this.extractors.set(d.index, (extractor = tools.extractor()));
    let split = extractor.feed(d.text);
    if (d.finishReason !== null) {
      split = joinSplits(split, extractor.flush());
      this.extractors.delete(d.index);
    }
    const delta: Record<string, unknown> = {};
    if (d.reasoning !== null && d.reasoning.length > 0) delta.reasoning_content = d.reasoning;
    if (split.content.length > 0) delta.content = split.content;
    if (split.calls.length > 0) delta.tool_calls = toolCallDeltas(split.calls);
    const finishReason = tools.finishAsToolCalls && d.finishReason === 'stop' && extractor.callCount > 0 ? 'tool_calls' : d.finishReason;
    const logprobs = d.logprobs === null ? 'null' : JSON.stringify(this.logprobs(d.logprobs));
    return `${this.prefix}{"index":${d.index},"delta":${JSON.stringify(delta)},"logprobs":${logprobs},${finishJson({ finishReason, stopReason: d.stopReason })}}]}`;
  }

  usageChunk(usage: Usage): string {
    return `${this.prefix}],"usage":${JSON.stringify(usage)}}`;
  }

  body(choices: ChoiceResult[], usage: Usage): unknown {
    return {
      id: this.ctx.id,
      object: 'chat.completion',
      created: this.ctx.created,
      model: this.ctx.model,
      choices: choices.map((c) => {
        const message: Record<string, unknown> =
          c.reasoning === null ? { role: 'assistant', content: c.text } : { role: 'assistant', reasoning_content: c.reasoning, content: c.text.length > 0 ? c.text : null };
        let finishReason = c.finishReason;
        const tools = this.ctx.tools;
        if (tools) {
          const extractor = tools.extractor();
          const split = joinSplits(extractor.feed(c.text), extractor.flush());
          message.content = split.content.length > 0 ? split.content : null;
          if (split.calls.length > 0) message.tool_calls = toolCalls(split.calls);
          if (tools.finishAsToolCalls && finishReason === 'stop' && extractor.callCount > 0) finishReason = 'tool_calls';
        }
        return {
          index: c.index,
          message,
          logprobs: c.logprobs === null ? null : this.logprobs(c.logprobs),
          finish_reason: finishReason,
          stop_reason: c.stopReason,
        };
      }),
      usage,
    };
  }

  private logprobs(lps: readonly TokenLogprobs[]) {
    const entry = (id: number, logprob: number) => {
      const token = this.names.of(id);
      return { token, logprob: clamp(logprob), bytes: [...Buffer.from(token, 'utf8')] };
    };
    return {
      content: lps.map((lp) => ({
        ...entry(lp.tokenId, lp.logprob),
        top_logprobs: lp.topIds.map((id, k) => entry(id, lp.topLogprobs[k])),
      })),
    };
  }
}

export class CompletionShape implements ResponseShape {
  private readonly prefix: string;
  private readonly names: TokenNames;
  private readonly textOffsets: number[];

  constructor(
    private readonly ctx: ShapeContext,
    // The prompt texts to echo (one per prompt, choices in order of index), or null.
    private readonly echo: string[] | null,
  ) {
    this.prefix = chunkPrefix(ctx, 'text_completion');
    this.names = new TokenNames(ctx.tokenizer, ctx.returnTokensAsIds);
    this.textOffsets = new Array<number>(ctx.choices).fill(0);
  }

  openingChunks(): string[] {
    const echo = this.echo;
    if (echo === null) return [];
    return Array.from({ length: this.ctx.choices }, (_, i) => this.chunkOf(i, this.echoOf(i), 'null', '"finish_reason":null'));
  }

  chunk(d: ChoiceDelta): string {
    const logprobs = d.logprobs === null ? 'null' : JSON.stringify(this.logprobs(d.index, d.logprobs));
    return this.chunkOf(d.index, d.text, logprobs, finishJson(d));
  }

  usageChunk(usage: Usage): string {
    return `${this.prefix}],"usage":${JSON.stringify(usage)}}`;
  }

  body(choices: ChoiceResult[], usage: Usage): unknown {
    return {
      id: this.ctx.id,
      object: 'text_completion',
      created: this.ctx.created,
      model: this.ctx.model,
      choices: choices.map((c) => ({
        index: c.index,
        text: this.echoOf(c.index) + c.text,
        logprobs: c.logprobs === null ? null : this.logprobs(c.index, c.logprobs),
        finish_reason: c.finishReason,
        stop_reason: c.stopReason,
      })),
      usage,
    };
  }

  private echoOf(index: number): string {
    if (this.echo === null) return '';
    const n = this.ctx.choices / this.echo.length; // choices per prompt
    return this.echo[Math.floor(index / n)];
  }

  private chunkOf(index: number, text: string, logprobs: string, finish: string): string {
    return `${this.prefix}{"index":${index},"text":${JSON.stringify(text)},"logprobs":${logprobs},${finish}}]}`;
  }

  // The legacy logprobs object; text_offset continues across the chunks of one choice.
  private logprobs(index: number, lps: readonly TokenLogprobs[]) {
    const tokens: string[] = [];
    const tokenLogprobs: number[] = [];
    const top: Record<string, number>[] = [];
    const textOffset: number[] = [];
    for (const lp of lps) {
      const token = this.names.of(lp.tokenId);
      tokens.push(token);
      tokenLogprobs.push(clamp(lp.logprob));
      const map: Record<string, number> = {};
      lp.topIds.forEach((id, k) => (map[this.names.of(id)] = clamp(lp.topLogprobs[k])));
      map[token] ??= clamp(lp.logprob);
      top.push(map);
      textOffset.push(this.textOffsets[index]);
      this.textOffsets[index] += token.length;
    }
    return { tokens, token_logprobs: tokenLogprobs, top_logprobs: top, text_offset: textOffset };
  }
}
