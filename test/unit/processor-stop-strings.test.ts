// Stop strings over text deltas: matches across delta boundaries, held-back prefixes, and the
// stop string never shown (unless includeStopStrInOutput).
import { describe, expect, it } from 'vitest';
import { StopStringMatcher, maxStopStrings } from '../../ts/processor/index.js';

interface Run {
  readonly texts: string[];
  readonly shown: string;
  readonly stop: string | null;
}

// Feeds the deltas until a stop; at the end of the deltas, flushes.
function run(stops: string[], deltas: string[], includeStopStrInOutput = false): Run {
  const matcher = new StopStringMatcher(stops, { includeStopStrInOutput });
  const texts: string[] = [];
  for (const delta of deltas) {
    const result = matcher.feed(delta);
    texts.push(result.text);
    if (result.stop !== null) return { texts, shown: texts.join(''), stop: result.stop };
  }
  texts.push(matcher.flush());
  return { texts, shown: texts.join(''), stop: null };
}

// Every way of cutting `text` into deltas of 1..3 characters, sampled deterministically.
function cuts(text: string): string[][] {
  const out: string[][] = [[text], [...text]];
  for (let seed = 1; seed <= 20; seed++) {
    const parts: string[] = [];
    for (let i = 0, k = seed; i < text.length; k = (k * 7 + 3) % 11) {
      const size = 1 + (k % 3);
      parts.push(text.slice(i, i + size));
      i += size;
    }
    out.push(parts);
  }
  return out;
}

describe('StopStringMatcher', () => {
  it('stops on a stop string spanning two deltas', () => {
    expect(run(['STOP'], ['Hello ST', 'OP and more'])).toEqual({ texts: ['Hello ', ''], shown: 'Hello ', stop: 'STOP' });
  });

  it('stops on a stop string spanning three deltas', () => {
    expect(run(['<end>'], ['one <e', 'n', 'd> two'])).toEqual({ texts: ['one ', '', ''], shown: 'one ', stop: '<end>' });
  });

  it('holds back only a suffix that can still start a stop string', () => {
    const matcher = new StopStringMatcher(['STOP']);
    expect(matcher.feed('abcS')).toEqual({ text: 'abc', stop: null });
    expect(matcher.feed('T')).toEqual({ text: '', stop: null });
    expect(matcher.feed('x')).toEqual({ text: 'STx', stop: null });
    expect(matcher.flush()).toBe('');
  });

  it('releases a held prefix when the stream ends', () => {
    expect(run(['STOP'], ['end with ST'])).toEqual({ texts: ['end with ', 'ST'], shown: 'end with ST', stop: null });
  });

  it('stops at the very start', () => {
    expect(run(['###'], ['###', 'rest'])).toEqual({ texts: [''], shown: '', stop: '###' });
    expect(run(['###'], ['#', '#', '#'])).toEqual({ texts: ['', '', ''], shown: '', stop: '###' });
  });

  it('with overlapping stop strings, stops where the first one completes', () => {
    // "ab" completes before "abc" could.
    expect(run(['abc', 'ab'], ['x a', 'bc'])).toMatchObject({ shown: 'x ', stop: 'ab' });
    // "abc" and "bc" complete together: the earlier start wins.
    expect(run(['bc', 'abc'], ['xab', 'c'])).toMatchObject({ shown: 'x', stop: 'abc' });
    // A held "ab" that turns into "abd" is not a stop for "abc".
    expect(run(['abc'], ['ab', 'd', 'abc'])).toMatchObject({ texts: ['', 'abd', ''], stop: 'abc' });
  });

  it('handles self-overlapping prefixes ("aab" in "aaab")', () => {
    expect(run(['aab'], ['a', 'a', 'a', 'b'])).toMatchObject({ texts: ['', '', 'a', ''], shown: 'a', stop: 'aab' });
  });

  it('finds the first of several stop strings', () => {
    expect(run(['\n\n', 'User:', '</s>'], ['Answer: 4.', ' User', ': more\n\n'])).toMatchObject({ shown: 'Answer: 4. ', stop: 'User:' });
  });

  it('includes the stop string when asked, holding nothing back', () => {
    expect(run(['STOP'], ['Hello ST', 'OP and more'], true)).toEqual({ texts: ['Hello ST', 'OP'], shown: 'Hello STOP', stop: 'STOP' });
    expect(run(['STOP'], ['ends ST'], true)).toEqual({ texts: ['ends ST', ''], shown: 'ends ST', stop: null });
  });

  it('never shows a stop string, however the text is cut', () => {
    const text = 'The answer is 42.<|end|> ignored <|end|>';
    for (const deltas of cuts(text)) {
      const result = run(['<|end|>', '|en'], deltas);
      expect(result).toMatchObject({ shown: 'The answer is 42.<', stop: '|en' });
      for (const t of result.texts) expect(t).not.toContain('|en');
    }
  });

  it('keeps emoji whole around held prefixes', () => {
    expect(run(['😀!'], ['hi 😀', '?😀', '!'])).toEqual({ texts: ['hi ', '😀?', ''], shown: 'hi 😀?', stop: '😀!' });
  });

  it('asserts its settings', () => {
    expect(() => new StopStringMatcher([])).toThrow();
    expect(() => new StopStringMatcher(['ok', ''])).toThrow();
    expect(() => new StopStringMatcher(Array.from({ length: maxStopStrings + 1 }, (_, i) => `s${i}`))).toThrow();
    const matcher = new StopStringMatcher(['x']);
    matcher.feed('x');
    expect(() => matcher.feed('more')).toThrow();
  });
});
