// tool-call-parser.ts: finds tool calls in a chat answer's text (its content, after any reasoning
// parser), as vLLM's tool parsers do, for whole answers and for streams alike.
//
// Three extractors, by how the request asked for tools (ts/frontend/tools.ts decides):
// - named (tool_choice names a function): the grammar made the whole answer that function's
//   arguments; every piece of text is arguments of call 0.
// - required (tool_choice "required"): the grammar made the answer a JSON array of
//   {"name": NAME, "parameters": ARGS} objects, written compactly; a small JSON lexer streams each
//   call's name as soon as it is complete and its arguments as they arrive.
// - auto (tool_choice "auto", --enable-auto-tool-choice --tool-call-parser NAME): the model decides;
//   the parser recognises its format (vLLM's names):
//     hermes       <tool_call>{"name": ..., "arguments": {...}}</tool_call>, any number of them
//                  (Hermes 2/3, Qwen 2.5 and Qwen 3); the text before the first is content
//     llama3_json  an answer that starts with a JSON object (after an optional <|python_tag|>):
//                  {"name": ..., "parameters": {...}}, several separated by ";" (Llama 3.1-3.3)
//   Content is streamed until a call may be starting (a suffix that could still become the
//   marker is held back); a call is sent whole once it is complete. Text that looked like a call
//   but does not parse is given back as content, never dropped.
// What stays true: a call's pieces concatenate to {id, name, arguments}; the first piece of each
// call carries its id and name; how the text was cut into deltas changes nothing.
import { randomBytes } from 'node:crypto';

export const toolCallParserNames = ['hermes', 'llama3_json'] as const;
export type ToolCallParserName = (typeof toolCallParserNames)[number];

export function isToolCallParserName(name: string): name is ToolCallParserName {
  return (toolCallParserNames as readonly string[]).includes(name);
}

export function unknownToolCallParserMessage(name: string): string {
  return `unknown tool call parser ${JSON.stringify(name)} (known: ${toolCallParserNames.join(', ')}; Qwen 3 uses hermes)`;
}

// A piece of tool call `index`: the first one of each call has id and name.
export interface ToolCallPiece {
  readonly index: number;
  readonly id?: string;
  readonly name?: string;
  readonly arguments: string;
}

export interface ToolCallSplit {
  readonly content: string;
  readonly calls: readonly ToolCallPiece[];
}

export interface ToolCallExtractor {
  feed(text: string): ToolCallSplit;
  flush(): ToolCallSplit;
  // How many calls were found so far.
  readonly callCount: number;
}

export function toolCallId(): string {
  return `chatcmpl-tool-${randomBytes(16).toString('hex')}`;
}

const none: ToolCallSplit = { content: '', calls: [] };

export class NamedCallExtractor implements ToolCallExtractor {
  private started = false;
  callCount = 1;

  constructor(private readonly name: string) {}

  feed(text: string): ToolCallSplit {
    if (this.started && text.length === 0) return none;
    const first = !this.started;
    this.started = true;
    return { content: '', calls: [first ? { index: 0, id: toolCallId(), name: this.name, arguments: text } : { index: 0, arguments: text }] };
  }

  flush(): ToolCallSplit {
    return this.started ? none : this.feed('');
  }
}

// The answer `[{"name": "f", "parameters": {...}}, ...]`: a JSON lexer that knows where each
// element's name string and parameters value are.
export class RequiredCallsExtractor implements ToolCallExtractor {
  private depth = 0;
  private inString = false;
  private escaped = false;
  private key = ''; // the last key read at element depth
  private readingKey = false;
  private current = ''; // the string being read at element depth
  private expectValue = false; // after "key": at element depth
  private inArgs = false;
  private argsDepth = 0;
  private argsBegun = false;
  callCount = 0;

  feed(text: string): ToolCallSplit {
    const calls: ToolCallPiece[] = [];
    let args = '';
    const flushArgs = () => {
      if (args.length > 0) calls.push({ index: this.callCount - 1, arguments: args });
      args = '';
    };
    for (const ch of text) {
      if (this.inArgs) {
        if (!this.argsBegun && ch === ' ') continue; // the separator's space, not the value's
        this.argsBegun = true;
        args += ch;
        this.lex(ch);
        if (this.depth === this.argsDepth && !this.inString) {
          this.inArgs = false; // the parameters object closed
          flushArgs();
        }
        continue;
      }
      const wasInString = this.inString;
      this.lex(ch);
      if (this.depth === 2) {
        // Inside an element object: keys and the name value.
        if (!wasInString && this.inString) {
          this.current = '';
          this.readingKey = !this.expectValue;
        } else if (wasInString && this.inString) {
          this.current += ch;
        } else if (wasInString && !this.inString) {
          if (this.readingKey) {
            this.key = this.current;
          } else if (this.key === 'name') {
            this.callCount++;
            calls.push({ index: this.callCount - 1, id: toolCallId(), name: this.current, arguments: '' });
            this.expectValue = false;
          }
        } else if (ch === '{') {
          // the element's own brace (handled below)
        } else if (ch === ':') {
          this.expectValue = true;
          if (this.key === 'parameters') this.startArgs();
        } else if (ch === ',') {
          this.expectValue = false;
        }
      }
      if (ch === '{' && !wasInString && this.depth === 2) {
        this.key = ''; // a new element
        this.expectValue = false;
      }
    }
    flushArgs();
    return { content: '', calls };
  }

  flush(): ToolCallSplit {
    return none;
  }

  private startArgs(): void {
    this.inArgs = true;
    this.argsBegun = false;
    this.argsDepth = this.depth;
  }

  private lex(ch: string): void {
    if (this.inString) {
      if (this.escaped) this.escaped = false;
      else if (ch === '\\') this.escaped = true;
      else if (ch === '"') this.inString = false;
      return;
    }
    if (ch === '"') this.inString = true;
    else if (ch === '{' || ch === '[') this.depth++;
    else if (ch === '}' || ch === ']') this.depth--;
  }
}

// Parses one call object of an auto parser: {"name": string, "arguments" | "parameters": object}.
function parseCall(text: string): { name: string; arguments: string } | undefined {
  try {
    const v = JSON.parse(text) as { name?: unknown; arguments?: unknown; parameters?: unknown };
    if (typeof v !== 'object' || v === null || typeof v.name !== 'string') return undefined;
    const args = v.arguments ?? v.parameters ?? {};
    return { name: v.name, arguments: typeof args === 'string' ? args : JSON.stringify(args) };
  } catch {
    return undefined;
  }
}

// The longest suffix of `text` that is a proper prefix of `marker`.
function heldBack(text: string, marker: string): number {
  for (let n = Math.min(marker.length - 1, text.length); n > 0; n--) if (marker.startsWith(text.slice(-n))) return n;
  return 0;
}

export class HermesExtractor implements ToolCallExtractor {
  private static readonly open = '<tool_call>';
  private static readonly close = '</tool_call>';
  private pending = ''; // text not yet shown: a possible marker start, or a call being read
  private inCall = false;
  callCount = 0;

  feed(text: string): ToolCallSplit {
    this.pending += text;
    let content = '';
    const calls: ToolCallPiece[] = [];
    for (;;) {
      if (!this.inCall) {
        const at = this.pending.indexOf(HermesExtractor.open);
        if (at < 0) {
          const keep = heldBack(this.pending, HermesExtractor.open);
          this.text(this.pending.slice(0, this.pending.length - keep), (t) => (content += t));
          this.pending = this.pending.slice(this.pending.length - keep);
          break;
        }
        this.text(this.pending.slice(0, at), (t) => (content += t));
        this.pending = this.pending.slice(at + HermesExtractor.open.length);
        this.inCall = true;
      }
      const end = this.pending.indexOf(HermesExtractor.close);
      if (end < 0) break;
      const body = this.pending.slice(0, end);
      this.pending = this.pending.slice(end + HermesExtractor.close.length);
      this.inCall = false;
      const call = parseCall(body.trim());
      if (call) calls.push({ index: this.callCount++, id: toolCallId(), name: call.name, arguments: call.arguments });
      else this.text(HermesExtractor.open + body + HermesExtractor.close, (t) => (content += t));
    }
    return { content, calls };
  }

  flush(): ToolCallSplit {
    // An unclosed call is given back as text, as the model wrote it; text after the first call
    // only when it is more than the format's whitespace.
    let content = '';
    this.text((this.inCall ? HermesExtractor.open : '') + this.pending, (t) => (content += t));
    this.pending = '';
    this.inCall = false;
    if (this.after.trim().length > 0) content += this.after;
    this.after = '';
    return { content, calls: [] };
  }

  // Text outside calls: shown before the first call, held after it.
  private text(t: string, show: (t: string) => void): void {
    if (this.callCount === 0) show(t);
    else this.after += t;
  }

  private after = '';
}

export class Llama3JsonExtractor implements ToolCallExtractor {
  private static readonly tag = '<|python_tag|>';
  private text = '';
  private decided: 'content' | 'calls' | undefined;
  callCount = 0;

  feed(text: string): ToolCallSplit {
    if (this.decided === 'content') return { content: text, calls: [] };
    this.text += text;
    if (this.decided === undefined) {
      const start = this.text.trimStart();
      if (start.length === 0) return none;
      const looksLikeCall = start.startsWith('{') || start.startsWith(Llama3JsonExtractor.tag);
      const mayBeTag = Llama3JsonExtractor.tag.startsWith(start);
      if (!looksLikeCall && !mayBeTag) {
        this.decided = 'content';
        const out = this.text;
        this.text = '';
        return { content: out, calls: [] };
      }
      if (looksLikeCall) this.decided = 'calls';
    }
    return none; // a call: read whole at the end
  }

  flush(): ToolCallSplit {
    const text = this.text;
    this.text = '';
    if (this.decided !== 'calls') return { content: text, calls: [] };
    const body = text.trimStart().replace(Llama3JsonExtractor.tag, '');
    const calls: ToolCallPiece[] = [];
    for (const part of body.split(/\}\s*;\s*\{/).map((p, i, all) => (all.length === 1 ? p : (i > 0 ? '{' : '') + p + (i < all.length - 1 ? '}' : '')))) {
      const call = parseCall(part.trim());
      if (!call) return { content: text, calls: [] }; // not calls after all: the text as written
      calls.push({ index: calls.length, id: toolCallId(), name: call.name, arguments: call.arguments });
    }
    this.callCount = calls.length;
    return { content: '', calls };
  }
}

export function autoCallExtractor(parser: ToolCallParserName): ToolCallExtractor {
  return parser === 'hermes' ? new HermesExtractor() : new Llama3JsonExtractor();
}
