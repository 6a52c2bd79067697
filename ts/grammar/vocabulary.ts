// vocabulary.ts: the model's vocabulary as XGrammar's TokenizerInfo takes it: every token id's raw
// token string (tokenizer.json's model vocabulary and its added tokens; "" for an id the
// tokenizer does not define, up to the model's vocab_size, which may be larger), and how those
// strings map to bytes (GPT-2's byte-level alphabet, sentencepiece's <0xNN> byte fallback, or
// raw text).
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { byteEncodingOf } from '../processor/index.ts';

export interface GrammarVocabulary {
  tokens: string[]; // by id, length = vocabSize
  kind: 'byte_level' | 'byte_fallback' | 'raw';
  prependSpace: boolean; // sentencepiece's "▁" before the first word
}

interface TokenizerJson {
  model?: { vocab?: Record<string, number> | [string, number][] };
  added_tokens?: { id: number; content: string }[];
  decoder?: unknown;
  pre_tokenizer?: { type?: string; prepend_scheme?: string; add_prefix_space?: boolean } | null;
}

export function grammarVocabulary(json: unknown, vocabSize: number): GrammarVocabulary {
  const t = json as TokenizerJson;
  const tokens: string[] = new Array<string>(vocabSize).fill('');
  const vocab = t.model?.vocab;
  if (Array.isArray(vocab)) {
    vocab.forEach(([piece], id) => {
      if (id < vocabSize) tokens[id] = piece;
    });
  } else if (vocab && typeof vocab === 'object') {
    for (const [piece, id] of Object.entries(vocab)) if (id >= 0 && id < vocabSize) tokens[id] = piece;
  } else {
    throw new Error('tokenizer.json has no model vocabulary');
  }
  for (const added of t.added_tokens ?? []) if (added.id >= 0 && added.id < vocabSize) tokens[added.id] = added.content;
  const bytes = byteEncodingOf(t.decoder);
  const kind = bytes === 'byte-level' ? 'byte_level' : bytes === 'byte-fallback' ? 'byte_fallback' : 'raw';
  const pre = t.pre_tokenizer;
  const prependSpace = pre?.type === 'Metaspace' && (pre.prepend_scheme === 'always' || pre.prepend_scheme === 'first' || pre.add_prefix_space === true);
  return { tokens, kind, prependSpace };
}

export async function loadGrammarVocabulary(modelDir: string, vocabSize: number): Promise<GrammarVocabulary> {
  return grammarVocabulary(JSON.parse(await readFile(join(modelDir, 'tokenizer.json'), 'utf8')), vocabSize);
}
