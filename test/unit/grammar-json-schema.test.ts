// json-schema.ts against XGrammar itself: the numeric range rules written here accept exactly the
// integers of each range (every value around the bounds tried), decimals only inside their range,
// and keywords XGrammar would not enforce are refused by name.
import { beforeAll, describe, expect, it } from 'vitest';
import { prepareJsonSchema, SchemaError, spliceRules, type JsonSchema } from '../../ts/grammar/json-schema.ts';
import { loadXGrammar, type XGrammar } from '../../ts/grammar/xgrammar.ts';

let xg: XGrammar;
beforeAll(() => {
  xg = loadXGrammar();
});

const JSON_OPTIONS = [false, -1, [', ', ': '] as [string, string], true] as const;

// A grammar for {"v": <schema>}, and a test of whether it takes {"v": text}.
async function acceptor(v: JsonSchema): Promise<(text: string) => Promise<boolean>> {
  const prepared = prepareJsonSchema({ type: 'object', properties: { v }, required: ['v'] });
  expect(prepared.rules.size).toBe(1);
  const ebnf = spliceRules(await xg.Testings._jsonSchemaToEBNF(JSON.stringify(prepared.schema), ...JSON_OPTIONS), prepared.rules);
  const grammar = await xg.Grammar.fromEBNF(ebnf, 'root');
  return (text) => xg.Testings.isGrammarAcceptString(grammar, `{"v": ${text}}`);
}

describe('integer ranges', () => {
  const cases: [JsonSchema, number, number][] = [
    [{ type: 'integer', minimum: 0, maximum: 120 }, 0, 120],
    [{ type: 'integer', minimum: -5, maximum: 5 }, -5, 5],
    [{ type: 'integer', minimum: 1, maximum: 999 }, 1, 999],
    [{ type: 'integer', minimum: 100, maximum: 250 }, 100, 250],
    [{ type: 'integer', minimum: -250, maximum: -100 }, -250, -100],
    [{ type: 'integer', minimum: 7, maximum: 7 }, 7, 7],
    [{ type: 'integer', exclusiveMinimum: 0, exclusiveMaximum: 10 }, 1, 9],
    [{ type: 'integer', minimum: 10.5, maximum: 19.99 }, 11, 19],
    [{ type: 'integer', minimum: 1234 }, 1234, Infinity],
    [{ type: 'integer', maximum: -3 }, -Infinity, -3],
    [{ type: 'integer', minimum: 0, maximum: 1_000_000 }, 0, 1_000_000],
  ];
  it.each(cases)('%j takes exactly its integers', async (schema, lo, hi) => {
    const accepts = await acceptor(schema);
    const values = new Set<number>();
    for (const edge of [lo, hi]) if (Number.isFinite(edge)) for (let d = -40; d <= 40; d++) values.add(edge + d);
    for (const v of [0, 1, -1, 9, 10, 99, 100, 101, 999, 1000, 1001, 12345, -12345, 999_999, 1_000_001]) values.add(v);
    const wrong: string[] = [];
    for (const v of values) if ((await accepts(String(v))) !== (v >= lo && v <= hi)) wrong.push(String(v));
    expect(wrong).toEqual([]);
    expect(await accepts(`${Number.isFinite(lo) ? lo : hi}.5`)).toBe(false);
    expect(await accepts('007')).toBe(false);
  });
});

describe('number ranges', () => {
  it('decimals only inside the range; its integers; no exponent', async () => {
    const accepts = await acceptor({ type: 'number', minimum: -1.5, maximum: 2.5 });
    for (const t of ['0', '2', '-1', '1.999999', '0.25', '-0.5', '1.5']) expect(await accepts(t), t).toBe(true);
    for (const t of ['-155', '2.6', '3', '-2', '-1.6', '25', '1e3', '2.51']) expect(await accepts(t), t).toBe(false);
    const open = await acceptor({ type: 'number', exclusiveMinimum: 0 });
    for (const t of ['1', '0.5', '123.25']) expect(await open(t), t).toBe(true);
    for (const t of ['0', '0.0', '-0.5', '-3']) expect(await open(t), t).toBe(false);
    const negative = await acceptor({ type: 'number', minimum: -10, exclusiveMaximum: 0 });
    for (const t of ['-0.5', '-10', '-9.75']) expect(await negative(t), t).toBe(true);
    for (const t of ['0', '-0.0', '0.5', '-10.5']) expect(await negative(t), t).toBe(false);
  });

  it('a nullable integer range keeps null', async () => {
    const accepts = await acceptor({ type: ['integer', 'null'], minimum: 0, maximum: 50 });
    for (const [t, ok] of [['null', true], ['50', true], ['51', false], ['-1', false]] as const) expect(await accepts(t), t).toBe(ok);
  });
});

describe('keywords', () => {
  it('refuses those XGrammar would not enforce, naming them and where', () => {
    for (const [schema, word] of [
      [{ type: 'integer', multipleOf: 5 }, 'multipleOf'],
      [{ type: 'object', properties: { d: { type: 'string', format: 'date' } } }, 'format'],
      [{ type: 'array', uniqueItems: true }, 'uniqueItems'],
      [{ not: { type: 'string' } }, 'not'],
      [{ oneOf: [{ type: 'string' }] }, 'oneOf'],
      [{ type: 'object', patternProperties: { '^a': {} } }, 'patternProperties'],
    ] as [JsonSchema, string][]) {
      expect(() => prepareJsonSchema(schema)).toThrow(SchemaError);
      expect(() => prepareJsonSchema(schema)).toThrow(new RegExp(`"${word}"`));
    }
    expect(() => prepareJsonSchema({ type: 'object', properties: { d: { type: 'string', format: 'date' } } })).toThrow('/properties/d');
  });

  it('checks enum values against the range, and refuses an empty range', () => {
    expect(() => prepareJsonSchema({ enum: [1, 200], minimum: 0, maximum: 100 })).toThrow(/200 .* outside/);
    expect(() => prepareJsonSchema({ type: 'integer', minimum: 5, maximum: 4 })).toThrow(/holds no integer/);
    expect(prepareJsonSchema({ type: 'object', title: 'T', description: 'd', properties: { a: { type: 'string', default: 'x' } } }).rules.size).toBe(0);
  });
});
