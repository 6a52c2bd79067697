// output-processor.ts: one choice of one request, from the engine's streamed token ids to the
// text deltas and finish the OpenAI API reports.
//
// Per feed: ids -> IncrementalDetokenizer -> StopStringMatcher -> ReasoningParser (when asked)
// -> delta. What stays true:
// - the token that ended a request in the engine (EOS or a stop token id; the last id of the
//   feed that reports 'stop') is counted but never shown, as in vLLM;
// - finishReason is 'stop' when a stop string, a stop token or EOS ended the choice, 'length'
//   when max_tokens / the model length did, 'abort' when the engine dropped it; stopReason is
//   the stop string, or the stop token id (null for the tokenizer's EOS), as vLLM's stop_reason;
// - a stop string is found here, not in the engine: the feed that finds it answers
//   abortEngine: true once, and the caller must then cancel the request in the engine;
// - completionTokens counts every id fed until the choice finished, stop token included
//   (vLLM's usage). Ids fed after that are ignored;
// - with a reasoning parser, stop strings apply to the text as generated, reasoning included (as
//   vLLM: a stop string inside the reasoning ends the answer there, with no content), and the
//   parser splits what they let through: delta.text is then the content, delta.reasoning the
//   reasoning; without one, delta.reasoning is null.
import { IncrementalDetokenizer } from './detokenizer.js';
import { createReasoningParser, type ReasoningParser, type ReasoningParserName } from './reasoning-parser.js';
import { StopStringMatcher } from './stop-strings.js';
import type { TextTokenizer } from './tokenizer.js';

// Why the engine ended a sequence: 'stop' = it sampled EOS or a stop token id (the last id fed).
export type EngineFinishReason = 'stop' | 'length' | 'abort';
export type FinishReason = 'stop' | 'length' | 'abort';

export interface OutputProcessorOptions {
  readonly stop?: readonly string[];
  readonly includeStopStrInOutput?: boolean;
  readonly skipSpecialTokens?: boolean;
  readonly reasoningParser?: ReasoningParserName;
}

export interface OutputDelta {
  readonly text: string; // the content, with a reasoning parser
  readonly reasoning: string | null; // null: no reasoning parser
  readonly finished: boolean;
  readonly finishReason: FinishReason | null;
  readonly stopReason: string | number | null;
  // True in the one delta where a stop string ended the choice while the engine was still running.
  readonly abortEngine: boolean;
}

export interface Usage {
  readonly promptTokens: number;
  readonly completionTokens: number;
  readonly totalTokens: number;
}

export class OutputProcessor {
  private readonly detokenizer: IncrementalDetokenizer;
  private readonly stopMatcher: StopStringMatcher | null;
  private readonly reasoningParser: ReasoningParser | null;
  private finish: { reason: FinishReason; stopReason: string | number | null } | null = null;
  private tokenCount = 0;
  private textSoFar = '';
  private reasoningSoFar: string | null;

  constructor(
    private readonly tokenizer: TextTokenizer,
    options: OutputProcessorOptions = {},
  ) {
    this.detokenizer = new IncrementalDetokenizer(tokenizer, { skipSpecialTokens: options.skipSpecialTokens });
    this.stopMatcher =
      options.stop && options.stop.length > 0
        ? new StopStringMatcher(options.stop, { includeStopStrInOutput: options.includeStopStrInOutput })
        : null;
    this.reasoningParser = options.reasoningParser ? createReasoningParser(options.reasoningParser) : null;
    this.reasoningSoFar = this.reasoningParser ? '' : null;
  }

  // newTokenIds: the ids the engine produced since the last feed; engineFinish: set on the engine's
  // last message for this sequence.
  feed(newTokenIds: readonly number[], engineFinish: EngineFinishReason | null = null): OutputDelta {
    if (this.finish !== null) return this.delta('', false, false);
    this.tokenCount += newTokenIds.length;
    const stopTokenId = engineFinish === 'stop' ? newTokenIds.at(-1) : undefined;
    const shown = stopTokenId === undefined ? newTokenIds : newTokenIds.slice(0, -1);

    let text = this.detokenizer.feed(shown);
    if (engineFinish !== null) text += this.detokenizer.finish();
    if (this.stopMatcher !== null) {
      const matched = this.stopMatcher.feed(text);
      if (matched.stop !== null) {
        this.finish = { reason: 'stop', stopReason: matched.stop };
        return this.delta(matched.text, engineFinish === null, true);
      }
      text = matched.text + (engineFinish !== null ? this.stopMatcher.flush() : '');
    }
    if (engineFinish !== null) {
      const stopReason = stopTokenId === undefined || stopTokenId === this.tokenizer.eosToken?.id ? null : stopTokenId;
      this.finish = { reason: engineFinish, stopReason };
    }
    return this.delta(text, false, engineFinish !== null);
  }

  get finished(): boolean {
    return this.finish !== null;
  }

  get completionTokens(): number {
    return this.tokenCount;
  }

  // All text shown so far (the concatenation of the deltas): a non-streaming response's content.
  get text(): string {
    return this.textSoFar;
  }

  // All reasoning shown so far; null without a reasoning parser.
  get reasoning(): string | null {
    return this.reasoningSoFar;
  }

  // text: what the stop strings let through; last: the answer ends with it.
  private delta(text: string, abortEngine: boolean, last: boolean): OutputDelta {
    let reasoning: string | null = null;
    if (this.reasoningParser !== null) {
      const split = this.reasoningParser.feed(text);
      const rest = last ? this.reasoningParser.flush() : { reasoning: '', content: '' };
      reasoning = split.reasoning + rest.reasoning;
      text = split.content + rest.content;
      this.reasoningSoFar += reasoning;
    }
    this.textSoFar += text;
    return {
      text,
      reasoning,
      finished: this.finish !== null,
      finishReason: this.finish?.reason ?? null,
      stopReason: this.finish?.stopReason ?? null,
      abortEngine,
    };
  }
}

// A request's usage: its prompt once, and the completion tokens of all its choices (n > 1).
export function usageOf(promptTokens: number, choices: readonly OutputProcessor[]): Usage {
  const completionTokens = choices.reduce((sum, choice) => sum + choice.completionTokens, 0);
  return { promptTokens, completionTokens, totalTokens: promptTokens + completionTokens };
}
