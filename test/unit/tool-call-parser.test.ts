// The tool-call extractors (ts/processor/tool-call-parser.ts): the same calls and content however
// the text is cut into deltas; the formats of vLLM's hermes and llama3_json parsers; text that
// only looks like a call given back as content.
import { describe, expect, it } from 'vitest';
import {
  HermesExtractor,
  Llama3JsonExtractor,
  NamedCallExtractor,
  RequiredCallsExtractor,
  type ToolCallExtractor,
} from '../../ts/processor/index.ts';

interface Call {
  id: string;
  name: string;
  arguments: string;
}

// Feeds `text` in pieces of `step` characters; returns the content and the calls assembled.
function run(make: () => ToolCallExtractor, text: string, step: number): { content: string; calls: Call[]; pieces: number } {
  const e = make();
  let content = '';
  const calls: Call[] = [];
  let pieces = 0;
  const take = (s: ReturnType<ToolCallExtractor['feed']>) => {
    content += s.content;
    for (const p of s.calls) {
      pieces++;
      if (p.id !== undefined) {
        expect(calls[p.index]).toBeUndefined();
        calls[p.index] = { id: p.id, name: p.name!, arguments: '' };
      }
      calls[p.index]!.arguments += p.arguments;
    }
  };
  for (let i = 0; i < text.length; i += step) take(e.feed(text.slice(i, i + step)));
  take(e.flush());
  expect(e.callCount).toBe(calls.length);
  return { content, calls, pieces };
}

const steps = [1, 2, 5, 13, 10_000];
const shape = (r: { content: string; calls: Call[] }) => ({ content: r.content, calls: r.calls.map((c) => [c.name, c.arguments]) });

describe('required: the grammar-made JSON array', () => {
  const text = '[{"name": "get_weather", "parameters": {"city": "Paris \\"x\\" }", "days": [1, {"a": 2}]}}, {"name": "noop", "parameters": {}}]';
  it.each(steps)('gives each call its name and arguments, in pieces of %i', (step) => {
    const r = run(() => new RequiredCallsExtractor(), text, step);
    expect(shape(r)).toEqual({
      content: '',
      calls: [
        ['get_weather', '{"city": "Paris \\"x\\" }", "days": [1, {"a": 2}]}'],
        ['noop', '{}'],
      ],
    });
    expect(r.calls.every((c) => /^chatcmpl-tool-[0-9a-f]{32}$/.test(c.id))).toBe(true);
  });
  it('streams arguments as they come', () => {
    expect(run(() => new RequiredCallsExtractor(), text, 3).pieces).toBeGreaterThan(10);
  });
});

describe('named: the whole answer is the arguments', () => {
  it.each(steps)('in pieces of %i', (step) => {
    expect(shape(run(() => new NamedCallExtractor('f'), '{"x": 1}', step))).toEqual({ content: '', calls: [['f', '{"x": 1}']] });
  });
  it('an empty answer is still one call', () => {
    expect(shape(run(() => new NamedCallExtractor('f'), '', 1))).toEqual({ content: '', calls: [['f', '']] });
  });
});

describe('hermes', () => {
  const text = 'Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>\n';
  it.each(steps)('content before the first call, then the calls, in pieces of %i', (step) => {
    expect(shape(run(() => new HermesExtractor(), text, step))).toEqual({
      content: 'Let me check. ',
      calls: [
        ['get_weather', '{"city":"Paris"}'],
        ['b', '{}'],
      ],
    });
  });
  it('plain text, a "<tool" that never becomes a marker, and a call that does not parse stay content', () => {
    for (const t of ['Just text.', 'a <tool that is not', 'x <tool_call>not json</tool_call>', 'open <tool_call>{"name": "f"']) {
      for (const step of steps) expect(shape(run(() => new HermesExtractor(), t, step))).toEqual({ content: t, calls: [] });
    }
  });
});

describe('llama3_json', () => {
  it.each(steps)('one or more calls separated by ";", in pieces of %i', (step) => {
    const text = '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "b", "parameters": {"x": 1}}';
    expect(shape(run(() => new Llama3JsonExtractor(), text, step))).toEqual({
      content: '',
      calls: [
        ['get_weather', '{"city":"Paris"}'],
        ['b', '{"x":1}'],
      ],
    });
    expect(shape(run(() => new Llama3JsonExtractor(), `<|python_tag|>${text.split(';')[0]}`, step)).calls).toEqual([['get_weather', '{"city":"Paris"}']]);
  });
  it('text that does not start with a call, or does not parse, is content', () => {
    for (const t of ['Hello {"name": "x"}', '{not json', '  plain']) {
      for (const step of steps) expect(shape(run(() => new Llama3JsonExtractor(), t, step))).toEqual({ content: t, calls: [] });
    }
  });
});
