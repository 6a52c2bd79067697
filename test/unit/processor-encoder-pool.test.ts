// The encoder pool: long texts encoded on worker threads give exactly the inline ids, short
// ones stay inline, and the size bound never exceeds the real token count.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureModel } from '../../ts/modelgen/index.ts';
import { EncoderPool, loadTokenizer, type TextTokenizer } from '../../ts/processor/index.ts';

let tokenizer: TextTokenizer;
let pool: EncoderPool;

beforeAll(async () => {
  const dir = (await ensureModel('tiny-llama')).dir;
  tokenizer = await loadTokenizer(dir);
  pool = await EncoderPool.start(tokenizer, dir, { threads: 2, inlineChars: 100 });
});

afterAll(async () => {
  await pool?.close();
});

const texts = [
  'short',
  'Hello, world! '.repeat(50),
  '<|begin_of_text|>special tokens inside, ünïcödé, 漢字, emoji 🙂 and\ttabs\n'.repeat(40),
  Array.from({ length: 3000 }, (_, i) => `w${(i * 7919) % 1000}`).join(' '),
];

describe('EncoderPool', () => {
  it('gives the ids of the inline tokenizer, with and without special tokens, many at once', async () => {
    const jobs = texts.flatMap((t) => [true, false].map((addSpecialTokens) => ({ t, addSpecialTokens })));
    const got = await Promise.all(jobs.map((j) => pool.encode(j.t, { addSpecialTokens: j.addSpecialTokens })));
    jobs.forEach((j, i) => expect(got[i]).toEqual(tokenizer.encode(j.t, { addSpecialTokens: j.addSpecialTokens })));
  });

  it('bounds the token count from below without tokenizing', () => {
    expect(pool.maxTokenBytes).toBeGreaterThan(1);
    for (const t of texts) expect(pool.minTokens(t)).toBeLessThanOrEqual(tokenizer.encode(t, { addSpecialTokens: false }).length);
    // A run of one repeated byte is what BPE packs most densely.
    const dense = 'a'.repeat(100_000);
    expect(pool.minTokens(dense)).toBeLessThanOrEqual(tokenizer.encode(dense, { addSpecialTokens: false }).length);
  });

  it('keeps the event loop free while a long text is encoded', async () => {
    const long = 'lorem ipsum dolor sit amet '.repeat(20_000); // about 0.5 MB
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    const t0 = performance.now();
    await pool.encode(long, { addSpecialTokens: false });
    const ms = performance.now() - t0;
    clearInterval(timer);
    // Inline, the loop would not tick at all during the encode.
    expect(ticks).toBeGreaterThan(ms / 5 / 4);
  });
});

describe('EncoderPool.parseJson', () => {
  const inline = () => EncoderPool.inline(tokenizer);
  const big = (o: unknown) => Buffer.from(JSON.stringify(o));

  it('parses large bodies on a thread and small ones inline, to the value JSON.parse gives', async () => {
    const body = { messages: [{ role: 'user', content: 'ünïcödé 🙂 '.repeat(200) }], n: 2, stop: ['x'] };
    for (const p of [pool, inline()]) {
      expect(await p.parseJson(big(body))).toEqual(body);
      expect(await p.parseJson(big({ a: 1 }))).toEqual({ a: 1 });
    }
  });

  it('refuses bytes that are not UTF-8 or not JSON, naming which, on a thread as inline', async () => {
    const pad = Buffer.from('"' + 'x'.repeat(200));
    for (const p of [pool, inline()]) {
      await expect(p.parseJson(Buffer.concat([pad, Buffer.from([0xff, 0xfe]), Buffer.from('"')]))).rejects.toMatchObject({ code: 'ERR_INVALID_UTF8' });
      await expect(p.parseJson(Buffer.concat([Buffer.from('{"a": '), pad]))).rejects.toMatchObject({ code: 'ERR_INVALID_JSON' });
    }
  });

  it('with a screen, refuses a prompt whose size alone cannot fit, without sending the body back', async () => {
    const maxModelLen = 64;
    const long = 'y'.repeat(pool.maxTokenBytes * maxModelLen);
    const chat = { messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: [{ type: 'text', text: long }] }] };
    const batch = { prompt: ['short', long] };
    for (const p of [pool, inline()]) {
      await expect(p.parseJson(big(chat), { kind: 'chat', maxModelLen })).rejects.toMatchObject({ name: 'PromptTooLongError', size: { param: 'messages', atLeast: maxModelLen + 1 } });
      await expect(p.parseJson(big(batch), { kind: 'completions', maxModelLen })).rejects.toMatchObject({ size: { param: 'prompt[1]', bytes: long.length } });
      // One byte short of the bound passes, and token-id prompts are left to the exact count.
      expect(await p.parseJson(big({ prompt: long.slice(1 + pool.maxTokenBytes) }), { kind: 'completions', maxModelLen })).toBeTruthy();
      expect(await p.parseJson(big({ prompt: Array.from({ length: 500 }, () => 1) }), { kind: 'completions', maxModelLen })).toBeTruthy();
    }
  });
});
