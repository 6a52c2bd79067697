// detokenizer.ts: streamed token ids -> text deltas, exact across multi-byte UTF-8 characters split
// over several byte-level / byte-fallback tokens.
//
// vLLM's prefix/read offsets, kept as a small window of the stream:
//
//   | < emitted long ago, dropped > | < prefix: emitted > | < read: not yet emitted > |
//                                   ^ window[0]           ^ window[readIndex]
//
// Each new id decodes only the window; the text past decode(prefix) is the delta, unless it ends
// in an incomplete character, in which case the tokens wait for more. After an emit the window
// shrinks to the tokens just emitted (the context later tokens decode against), so the work per
// token is O(1) amortised.
//
// What stays true:
// - concat(all deltas of feed and finish) === tokenizer.decode(all ids) (for byte-level and
//   byte-fallback decoders, whose output is prefix-stable);
// - no delta ends in a U+FFFD that more bytes could still complete. A trailing U+FFFD is told
//   apart by probing: append a continuation byte token (0x80, then 0xA0, which together cover
//   every lead byte's valid range) and decode again: a genuinely invalid sequence yields one more
//   U+FFFD, an incomplete one does not. Genuine ones are emitted at once, incomplete ones only by
//   finish(). Without byte tokens in the vocabulary every trailing U+FFFD waits (vLLM's rule).
// - skipSpecialTokens (default true, as in OpenAI serving) drops exactly the ids
//   tokenizer.decode would drop.
import type { TextTokenizer } from './tokenizer.js';

export interface DetokenizerOptions {
  readonly skipSpecialTokens?: boolean;
}

const replacementChar = '\uFFFD';

export class IncrementalDetokenizer {
  private readonly skipSpecialTokens: boolean;
  private readonly probes: readonly number[] | null;
  private window: number[] = [];
  private readIndex = 0;
  private prefixText = '';

  constructor(
    private readonly tokenizer: TextTokenizer,
    options: DetokenizerOptions = {},
  ) {
    this.skipSpecialTokens = options.skipSpecialTokens ?? true;
    this.probes = continuationProbes(tokenizer);
  }

  // Adds newly generated ids; returns the text they settled (possibly ''). Each id is a step of
  // its own, so the text before an incomplete character at the end of a batch is not held back.
  feed(ids: readonly number[]): string {
    this.tokenizer.checkIds(ids);
    let settled = '';
    for (const id of ids) {
      if (this.skipSpecialTokens && this.tokenizer.isSpecial(id)) continue;
      this.window.push(id);
      settled += this.step();
    }
    return settled;
  }

  // The stream has ended: returns whatever was held back, incomplete bytes as U+FFFD.
  finish(): string {
    const delta = this.decode(this.window).slice(this.prefixText.length);
    this.window = [];
    this.readIndex = 0;
    this.prefixText = '';
    return delta;
  }

  private step(): string {
    const text = this.decode(this.window);
    if (text.length <= this.prefixText.length || this.endsIncomplete(text)) return '';
    const delta = text.slice(this.prefixText.length);
    this.window = this.window.slice(this.readIndex);
    this.readIndex = this.window.length;
    this.prefixText = this.decode(this.window);
    return delta;
  }

  private decode(ids: readonly number[]): string {
    return this.tokenizer.decode(ids, { skipSpecialTokens: false });
  }

  private endsIncomplete(text: string): boolean {
    if (!text.endsWith(replacementChar)) return false;
    if (this.probes === null) return true;
    return this.probes.some((probe) => this.decode([...this.window, probe]) !== text + replacementChar);
  }
}

const probeCache = new WeakMap<TextTokenizer, readonly number[] | null>();
const probeBytes = [0x80, 0xa0];

function continuationProbes(tokenizer: TextTokenizer): readonly number[] | null {
  if (!probeCache.has(tokenizer)) probeCache.set(tokenizer, findProbes(tokenizer));
  return probeCache.get(tokenizer) ?? null;
}

// The tokens for the raw bytes 0x80 and 0xA0, checked by decoding each after a 0xC2 lead byte
// (C2 80 is U+0080, C2 A0 is U+00A0); null when the vocabulary has no such byte tokens.
function findProbes(tokenizer: TextTokenizer): number[] | null {
  const lead = tokenizer.byteTokenId(0xc2);
  if (lead === undefined) return null;
  const probes: number[] = [];
  for (const byte of probeBytes) {
    const id = tokenizer.byteTokenId(byte);
    if (id === undefined || tokenizer.decode([lead, id], { skipSpecialTokens: false }) !== String.fromCharCode(byte)) return null;
    probes.push(id);
  }
  return probes;
}
