// reasoning-parser.ts: splits a chat answer's text into its reasoning and its content, as vLLM's
// --reasoning-parser does on /v1/chat/completions (message.reasoning_content / message.content,
// and delta.reasoning_content / delta.content when streaming).
//
// Parsers by name (vLLM's names; any other name is refused with this list):
//   deepseek_r1  the answer is reasoning until the first `</think>`, content after it.
//
// How deepseek_r1 reads the text (the text as generated, after stop strings were applied):
// - the answer starts inside the reasoning: DeepSeek-R1 distills' chat templates end the prompt
//   with `<think>\n`, so the model usually never writes `<think>` itself;
// - a `<think>` the model writes before the first `</think>` is dropped (vLLM drops it too); text
//   before it stays reasoning, as vLLM's streaming path has it (vLLM's whole-response path drops
//   that text; here the streamed and the whole response always agree);
// - the first `</think>` ends the reasoning and is dropped; everything after it is content,
//   verbatim (no whitespace is trimmed, as vLLM), `<think>` and `</think>` included;
// - no `</think>` at all: everything is reasoning and the content is empty (the response says
//   null, as vLLM);
// - the markers are found in the text, not by token id, so a marker that arrives in pieces (`</th`
//   then `ink>`, from a tokenizer without a `</think>` token) is found too: a suffix of the text
//   that could still become a marker is held back until it does or cannot, and flush() releases
//   it at the end of the answer.
// What stays true: all the reasoning, then all the content, is the text fed less the markers
// dropped; how the text was cut into deltas changes nothing.

export const reasoningParserNames = ['deepseek_r1'] as const;
export type ReasoningParserName = (typeof reasoningParserNames)[number];

export interface ReasoningSplit {
  readonly reasoning: string;
  readonly content: string;
}

export interface ReasoningParser {
  // Text that followed the text fed so far -> what of it can be shown now, on each side.
  feed(text: string): ReasoningSplit;
  // The answer ended: whatever was held back, on the side it was on.
  flush(): ReasoningSplit;
}

export function isReasoningParserName(name: string): name is ReasoningParserName {
  return (reasoningParserNames as readonly string[]).includes(name);
}

// The message for an unknown name, listing the known ones.
export function unknownReasoningParserMessage(name: string): string {
  return `unknown reasoning parser '${name}'; known parsers: ${reasoningParserNames.join(', ')}`;
}

export function createReasoningParser(name: ReasoningParserName): ReasoningParser {
  switch (name) {
    case 'deepseek_r1':
      return new ThinkTagParser('<think>', '</think>');
  }
  throw new Error(unknownReasoningParserMessage(name));
}

// The markers a parser looks for in the text (for the start-up check of the tokenizer).
export function reasoningMarkers(name: ReasoningParserName): { start: string; end: string } {
  switch (name) {
    case 'deepseek_r1':
      return { start: '<think>', end: '</think>' };
  }
  throw new Error(unknownReasoningParserMessage(name));
}

const none: ReasoningSplit = { reasoning: '', content: '' };

class ThinkTagParser implements ReasoningParser {
  private inReasoning = true;
  private startSeen = false;
  // A suffix of the text that is a proper prefix of a marker still looked for: not yet shown.
  private held = '';

  constructor(
    private readonly start: string,
    private readonly end: string,
  ) {}

  feed(text: string): ReasoningSplit {
    if (!this.inReasoning) return text.length > 0 ? { reasoning: '', content: text } : none;
    let buffer = this.held + text;
    this.held = '';
    let reasoning = '';
    if (!this.startSeen) {
      const s = buffer.indexOf(this.start);
      const e = buffer.indexOf(this.end);
      if (s >= 0 && (e < 0 || s < e)) {
        reasoning += buffer.slice(0, s);
        buffer = buffer.slice(s + this.start.length);
        this.startSeen = true;
      }
    }
    const e = buffer.indexOf(this.end);
    if (e >= 0) {
      this.inReasoning = false;
      return { reasoning: reasoning + buffer.slice(0, e), content: buffer.slice(e + this.end.length) };
    }
    const held = this.heldLength(buffer);
    this.held = buffer.slice(buffer.length - held);
    return { reasoning: reasoning + buffer.slice(0, buffer.length - held), content: '' };
  }

  flush(): ReasoningSplit {
    const rest = this.held;
    this.held = '';
    if (rest.length === 0) return none;
    return this.inReasoning ? { reasoning: rest, content: '' } : { reasoning: '', content: rest };
  }

  // The longest suffix of buffer that is a proper prefix of a marker still looked for.
  private heldLength(buffer: string): number {
    const markers = this.startSeen ? [this.end] : [this.start, this.end];
    const longest = Math.max(...markers.map((m) => m.length)) - 1;
    for (let length = Math.min(buffer.length, longest); length > 0; length--) {
      const suffix = buffer.slice(buffer.length - length);
      if (markers.some((m) => m.startsWith(suffix))) return length;
    }
    return 0;
  }
}
