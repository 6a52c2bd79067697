// stop-strings.ts: finds stop strings in a stream of text deltas, across delta boundaries.
//
// What stays true:
// - the text emitted before a match never holds any part of a stop string: the matcher holds back
//   the longest suffix of the stream that is a prefix of some stop string, and emits the rest;
// - the stream stops at the first point where any stop string is complete (the match that ends
//   earliest; of two ending at once, the longer). That choice does not depend on how the text was
//   cut into deltas;
// - on a match the output is the text before the stop string, or through it with
//   includeStopStrInOutput (vLLM's include_stop_str_in_output; then nothing is held back, since
//   the stop string may be shown anyway);
// - settings: 1 to 32 stop strings, none empty (the frontend validates; asserted here).
import assert from 'node:assert/strict';

export const maxStopStrings = 32;

export interface StopStringOptions {
  readonly includeStopStrInOutput?: boolean;
}

export interface StopFeedResult {
  // Text that is now safe to show.
  readonly text: string;
  // The stop string that matched, or null while the stream goes on.
  readonly stop: string | null;
}

export class StopStringMatcher {
  private readonly includeStopStr: boolean;
  // A held suffix is a proper prefix of a stop string: at most the longest one less a character.
  private readonly maxHeld: number;
  // The longest suffix of the stream so far that is a proper prefix of some stop string. Not yet
  // emitted, unless includeStopStr.
  private pending = '';
  private stopped = false;

  constructor(
    private readonly stops: readonly string[],
    options: StopStringOptions = {},
  ) {
    assert(stops.length >= 1 && stops.length <= maxStopStrings, `1 to ${maxStopStrings} stop strings, got ${stops.length}`);
    assert(stops.every((s) => typeof s === 'string' && s.length > 0), 'stop strings must be non-empty strings');
    this.includeStopStr = options.includeStopStrInOutput ?? false;
    this.maxHeld = Math.max(...stops.map((s) => s.length)) - 1;
  }

  feed(delta: string): StopFeedResult {
    assert(!this.stopped, 'feed after a stop string matched');
    const buffer = this.pending + delta;
    const match = this.firstMatch(buffer);
    if (match !== null) {
      this.stopped = true;
      this.pending = '';
      const text = this.includeStopStr ? buffer.slice(buffer.length - delta.length, match.end) : buffer.slice(0, match.start);
      return { text, stop: match.stop };
    }
    const held = this.heldSuffixLength(buffer);
    this.pending = buffer.slice(buffer.length - held);
    return { text: this.includeStopStr ? delta : buffer.slice(0, buffer.length - held), stop: null };
  }

  // The stream ended without a match: returns the text still held back.
  flush(): string {
    const rest = this.includeStopStr ? '' : this.pending;
    this.pending = '';
    return rest;
  }

  private firstMatch(buffer: string): { stop: string; start: number; end: number } | null {
    let best: { stop: string; start: number; end: number } | null = null;
    for (const stop of this.stops) {
      const start = buffer.indexOf(stop);
      if (start < 0) continue;
      const end = start + stop.length;
      if (best === null || end < best.end || (end === best.end && start < best.start)) best = { stop, start, end };
    }
    return best;
  }

  private heldSuffixLength(buffer: string): number {
    for (let length = Math.min(buffer.length, this.maxHeld); length > 0; length--) {
      const suffix = buffer.slice(buffer.length - length);
      if (this.stops.some((stop) => stop.startsWith(suffix))) return length;
    }
    return 0;
  }
}
