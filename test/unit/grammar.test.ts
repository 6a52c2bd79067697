// The structured-output grammar layer (ts/grammar) on XGrammar's WebAssembly build, with the tiny
// model's real Llama 3 vocabulary: the vocabulary as XGrammar takes it, the checker's answers
// (XGrammar's own reasons for bad schemas, regexes and EBNF; a good spec after a bad one), and
// matchers driven token by token to the end of their grammar.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GrammarChecker, GrammarError, GrammarMatchers, type MaskEvent } from '../../ts/grammar/grammar-service.ts';
import { choiceEbnf, type GrammarSpec } from '../../ts/grammar/spec.ts';
import { loadGrammarVocabulary } from '../../ts/grammar/vocabulary.ts';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { loadTokenizer, type TextTokenizer } from '../../ts/processor/index.ts';

const VOCAB = 128256;
const EOS = 128001;
let dir: string;
let tokenizer: TextTokenizer;

beforeAll(async () => {
  dir = (await ensureModel('tiny-llama')).dir;
  tokenizer = await loadTokenizer(dir);
});

const allowed = (mask: Int32Array) => {
  const ids: number[] = [];
  for (let t = 0; t < VOCAB; t++) if ((mask[t >> 5]! >>> (t & 31)) & 1) ids.push(t);
  return ids;
};

describe('the vocabulary', () => {
  it('has every id of the model, in the byte-level alphabet, special tokens included', async () => {
    const v = await loadGrammarVocabulary(dir, VOCAB);
    expect(v.tokens.length).toBe(VOCAB);
    expect(v.kind).toBe('byte_level');
    expect(v.tokens[EOS]).toBe('<|end_of_text|>');
    expect(v.tokens[tokenizer.tokenToId('Ġhello')!]).toBe('Ġhello');
  });
});

describe('GrammarChecker', () => {
  const checker = new GrammarChecker();
  afterAll(() => checker.close());

  it('accepts valid specs of every kind', async () => {
    const specs: GrammarSpec[] = [
      { kind: 'json_schema', schema: JSON.stringify({ type: 'object', properties: { a: { type: 'integer' } }, required: ['a'] }) },
      { kind: 'json_object' },
      { kind: 'regex', pattern: '\\d{3}-[a-z]+' },
      { kind: 'choice', choices: ['yes', 'no', 'a "quoted" \\ one', 'été'] },
      { kind: 'ebnf', grammar: 'root ::= "a" b\nb ::= [0-9]+' },
    ];
    for (const s of specs) await checker.check(s);
  });

  it("refuses bad specs with XGrammar's reason, and checks the next one on a fresh thread", async () => {
    const cases: [GrammarSpec, RegExp][] = [
      [{ kind: 'json_schema', schema: '{"type": "object", "properties": {"a": {"type": "nonsense"}}}' }, /invalid JSON schema: .*nonsense/i],
      [{ kind: 'regex', pattern: '[ab' }, /invalid regex: .*Unclosed '\['/],
      [{ kind: 'ebnf', grammar: 'root ::= (' }, /invalid grammar: EBNF parser error at line 1/],
    ];
    for (const [spec, reason] of cases) {
      const err = await checker.check(spec).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(GrammarError);
      expect((err as Error).message).toMatch(reason);
      await checker.check({ kind: 'regex', pattern: 'ok' });
    }
  });
});

describe('GrammarMatchers', () => {
  let matchers: GrammarMatchers;
  beforeAll(async () => {
    matchers = new GrammarMatchers({ modelDir: dir, vocabSize: VOCAB, stopTokenIds: [EOS] });
    await matchers.start();
  }, 60_000);
  afterAll(() => matchers.shutdown());

  // Drives a matcher to its end, each time taking `pick` of the allowed ids; returns the text.
  async function drive(reqId: string, spec: GrammarSpec, pick: (ids: number[]) => number, prior: number[] = []): Promise<string> {
    const events: MaskEvent[] = [];
    let wake: (() => void) | undefined;
    const first = await matchers.open(reqId, spec, prior, (e) => {
      events.push(e);
      wake?.();
    });
    const out = [...prior];
    let mask: Int32Array = first.mask;
    for (let step = 0; step < 200; step++) {
      const ids = allowed(mask);
      expect(ids.length).toBeGreaterThan(0);
      const token = pick(ids);
      out.push(token);
      matchers.accept(reqId, out.length, [token]);
      while (events.length === 0) await new Promise<void>((r) => (wake = r));
      const e = events.shift()!;
      expect(e.index).toBe(out.length);
      if ('done' in e) {
        matchers.close(reqId);
        expect(token).toBe(EOS);
        return tokenizer.decode(out.slice(0, -1), { skipSpecialTokens: true });
      }
      if ('error' in e) throw new Error(e.error);
      mask = e.mask;
    }
    throw new Error('the grammar did not end');
  }

  it('a choice ends in one of its strings, whichever allowed token is taken', async () => {
    const spec: GrammarSpec = { kind: 'choice', choices: ['yes', 'no', 'maybe not'] };
    const first = await drive('c1', spec, (ids) => ids[0]!);
    const last = await drive('c2', spec, (ids) => ids.at(-1)!);
    expect(spec.choices).toContain(first);
    expect(spec.choices).toContain(last);
  });

  it('a regex and a JSON schema end in text that matches them', async () => {
    const regexText = await drive('r1', { kind: 'regex', pattern: '[0-9]{3}-[a-z]{2}' }, (ids) => ids[Math.floor(ids.length / 2)]!);
    expect(regexText).toMatch(/^[0-9]{3}-[a-z]{2}$/);
    const schema = { type: 'object', properties: { ok: { type: 'boolean' }, n: { enum: [1, 2, 3] } }, required: ['ok', 'n'] };
    const json = JSON.parse(await drive('j1', { kind: 'json_schema', schema: JSON.stringify(schema) }, (ids) => ids.at(-1)!));
    expect(typeof json.ok).toBe('boolean');
    expect([1, 2, 3]).toContain(json.n);
  });

  it("a migrated request's matcher starts after the tokens it already has", async () => {
    const prior = tokenizer.encode('ma', { addSpecialTokens: false });
    const text = await drive('m1', { kind: 'choice', choices: ['yes', 'maybe not'] }, (ids) => ids[0]!, prior);
    expect(text).toBe('maybe not');
    await expect(matchers.open('m2', { kind: 'choice', choices: ['yes'] }, tokenizer.encode('no', { addSpecialTokens: false }), () => undefined)).rejects.toThrow(
      /does not follow the grammar/,
    );
  });

  it('choiceEbnf quotes what EBNF would read otherwise', () => {
    expect(choiceEbnf(['a"b', 'c\\d', 'x\ny'])).toBe('root ::= "a\\"b" | "c\\\\d" | "x\\ny"');
  });
});
