// hf-to-gguf.ts: converts a Hugging Face Llama directory (config.json, safetensors, tokenizer.json,
// tokenizer_config.json) into a GGUF that llama.cpp loads, the way llama.cpp's
// convert_hf_to_gguf.py does for LlamaForCausalLM; ensureGguf caches the result.
//
// Owns: the metadata (llama.* hyperparameters, the gpt2/llama-bpe tokenizer), the tensor name
// map, the Q/K row permutation and the dtype conversion.
// Stays true:
// - Only LlamaForCausalLM with the Llama 3 tokenizer, no biases, and rope_scaling none or llama3
//   (whose per-frequency divisors become the rope_freqs.weight tensor, F32 [head_dim / 2]);
//   anything else is refused with a message.
// - Q/K rows: HF applies RoPE to the halves of each head (rotate_half: element i pairs with
//   i + head_dim/2), GGML's llama RoPE to adjacent pairs (2i, 2i+1). So within each head, GGUF
//   row 2i + k is HF row k * head_dim/2 + i (k in {0, 1}); the head count for K is num_kv_heads.
// - 2-D tensors are written in the requested dtype: the same dtype is copied unchanged, other
//   pairs convert through f32 rounding to nearest even (from a 16-bit type, by a 65536-entry
//   table); 1-D tensors (norms) in F32.
// - Tensors stream in blocks of about BLOCK_BYTES: a 1B model's 2.5 GB GGUF never sits in memory.
// Cache: <kvserve model cache>/gguf/<model dir name>-<key>.<dtype>.gguf, key = hash of the
// writer version, the directory's real path and its weight files' sizes and mtimes.

import { createHash } from 'node:crypto';
import { mkdir, readFile, realpath, stat } from 'node:fs/promises';
import path from 'node:path';

import { defaultCacheRoot, type ModelDtype } from '../../ts/modelgen/index.ts';
import { DTYPE_BYTES, encodeChunk } from '../../ts/modelgen/float-encode.ts';
import { writeGguf, type GgmlTypeName, type GgufTensor, type GgufValue } from './gguf-file.ts';
import { listTensors, readRowBlocks, type StoredTensor } from './safetensors-reader.ts';

export type GgufDtype = 'bf16' | 'f16' | 'f32';

const WRITER_VERSION = 1;
const BLOCK_BYTES = 4 << 20;
const FILE_TYPE: Record<GgufDtype, number> = { f32: 0, f16: 1, bf16: 32 }; // LLAMA_FTYPE_ALL_F32, LLAMA_FTYPE_MOSTLY_*
const TOKEN_TYPE = { normal: 1, control: 3, userDefined: 4, unused: 5 } as const;
const LLAMA3_BOS = '<|begin_of_text|>';

// The cached GGUF of modelDir in dtype, written first if missing. Returns its path.
export async function ensureGguf(modelDir: string, dtype: GgufDtype): Promise<string> {
  const dir = await realpath(modelDir);
  const tensors = await listTensors(dir);
  const stamps = await Promise.all(
    [...new Set([...tensors.values()].map((t) => t.file))].sort().map(async (f) => {
      const s = await stat(f);
      return `${path.basename(f)}:${s.size}:${s.mtimeMs}`;
    }),
  );
  const key = createHash('sha256').update(JSON.stringify({ WRITER_VERSION, dir, stamps })).digest('hex').slice(0, 16);
  const file = path.join(defaultCacheRoot(), 'gguf', `${path.basename(dir)}-${key}.${dtype}.gguf`);
  if (await stat(file).then(() => true, () => false)) return file;
  await mkdir(path.dirname(file), { recursive: true });
  await convertHfToGguf(dir, file, dtype);
  return file;
}

export async function convertHfToGguf(modelDir: string, outFile: string, dtype: GgufDtype): Promise<void> {
  const config = await readJson(modelDir, 'config.json');
  const hp = llamaHparams(config);
  const stored = await listTensors(modelDir);
  const metadata: Record<string, GgufValue> = {
    'general.architecture': { type: 'string', value: 'llama' },
    'general.name': { type: 'string', value: path.basename(modelDir) },
    'general.file_type': { type: 'u32', value: FILE_TYPE[dtype] },
    'llama.vocab_size': { type: 'u32', value: hp.vocabSize },
    'llama.context_length': { type: 'u32', value: hp.contextLength },
    'llama.embedding_length': { type: 'u32', value: hp.hiddenSize },
    'llama.block_count': { type: 'u32', value: hp.numLayers },
    'llama.feed_forward_length': { type: 'u32', value: hp.intermediateSize },
    'llama.attention.head_count': { type: 'u32', value: hp.numHeads },
    'llama.attention.head_count_kv': { type: 'u32', value: hp.numKvHeads },
    'llama.attention.key_length': { type: 'u32', value: hp.headDim },
    'llama.attention.value_length': { type: 'u32', value: hp.headDim },
    'llama.attention.layer_norm_rms_epsilon': { type: 'f32', value: hp.rmsNormEps },
    'llama.rope.freq_base': { type: 'f32', value: hp.ropeTheta },
    'llama.rope.dimension_count': { type: 'u32', value: hp.headDim },
    ...(await llama3Tokenizer(modelDir, config, hp.vocabSize)),
  };

  const tensors: GgufTensor[] = [];
  if (hp.ropeFreqFactors !== null) tensors.push(f32Tensor('rope_freqs.weight', hp.ropeFreqFactors));
  const take = (hfName: string): StoredTensor => {
    const t = stored.get(hfName);
    if (t === undefined) throw new Error(`gguf: ${modelDir} has no tensor ${hfName}`);
    return t;
  };
  const add = (ggufName: string, hfName: string, permuteHeads = 0) =>
    tensors.push(convertedTensor(ggufName, take(hfName), dtype, permuteHeads));
  add('token_embd.weight', 'model.embed_tokens.weight');
  for (let i = 0; i < hp.numLayers; i++) {
    const hf = `model.layers.${i}`;
    add(`blk.${i}.attn_norm.weight`, `${hf}.input_layernorm.weight`);
    add(`blk.${i}.attn_q.weight`, `${hf}.self_attn.q_proj.weight`, hp.numHeads);
    add(`blk.${i}.attn_k.weight`, `${hf}.self_attn.k_proj.weight`, hp.numKvHeads);
    add(`blk.${i}.attn_v.weight`, `${hf}.self_attn.v_proj.weight`);
    add(`blk.${i}.attn_output.weight`, `${hf}.self_attn.o_proj.weight`);
    add(`blk.${i}.ffn_norm.weight`, `${hf}.post_attention_layernorm.weight`);
    add(`blk.${i}.ffn_gate.weight`, `${hf}.mlp.gate_proj.weight`);
    add(`blk.${i}.ffn_up.weight`, `${hf}.mlp.up_proj.weight`);
    add(`blk.${i}.ffn_down.weight`, `${hf}.mlp.down_proj.weight`);
  }
  add('output_norm.weight', 'model.norm.weight');
  // Tied embeddings: llama.cpp uses token_embd for the output when output.weight is absent.
  if (!hp.tieWordEmbeddings) add('output.weight', 'lm_head.weight');
  await writeGguf(outFile, metadata, tensors);
}

async function readJson(modelDir: string, name: string): Promise<Record<string, unknown>> {
  return JSON.parse(await readFile(path.join(modelDir, name), 'utf8')) as Record<string, unknown>;
}

interface LlamaHparams {
  vocabSize: number;
  contextLength: number;
  hiddenSize: number;
  numLayers: number;
  intermediateSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeFreqFactors: Float32Array | null; // llama3 rope scaling: theta_i is divided by factor i
  tieWordEmbeddings: boolean;
}

function llamaHparams(config: Record<string, unknown>): LlamaHparams {
  const num = (key: string, fallback?: number): number => {
    const v = config[key] ?? fallback;
    if (typeof v !== 'number') throw new Error(`gguf: config.json has no number ${key}`);
    return v;
  };
  const architectures = config.architectures as string[] | undefined;
  if (architectures?.[0] !== 'LlamaForCausalLM') throw new Error(`gguf: only LlamaForCausalLM is converted, not ${String(architectures)}`);
  if (config.attention_bias === true || config.mlp_bias === true) throw new Error('gguf: Llama with biases is not converted');
  const numHeads = num('num_attention_heads');
  const hp: LlamaHparams = {
    vocabSize: num('vocab_size'),
    contextLength: num('max_position_embeddings'),
    hiddenSize: num('hidden_size'),
    numLayers: num('num_hidden_layers'),
    intermediateSize: num('intermediate_size'),
    numHeads,
    numKvHeads: num('num_key_value_heads', numHeads),
    headDim: num('head_dim', num('hidden_size') / numHeads),
    rmsNormEps: num('rms_norm_eps'),
    ropeTheta: num('rope_theta', 10000),
    ropeFreqFactors: null,
    tieWordEmbeddings: config.tie_word_embeddings === true,
  };
  const scaling = config.rope_scaling as Record<string, number | string> | null | undefined;
  if (scaling != null) {
    const type = scaling.rope_type ?? scaling.type;
    if (type !== 'llama3') throw new Error(`gguf: rope_scaling ${String(type)} is not converted (only llama3)`);
    hp.ropeFreqFactors = llama3RopeFactors(hp.headDim, hp.ropeTheta, scaling as Record<string, number>);
  }
  return hp;
}

// Llama 3's RoPE scaling as per-frequency divisors: wavelengths shorter than
// original / high_freq_factor keep their frequency, longer than original / low_freq_factor are
// slowed by `factor`, and the band between interpolates smoothly (transformers'
// _compute_llama3_parameters, as a divisor of the unscaled frequency).
function llama3RopeFactors(headDim: number, theta: number, s: Record<string, number>): Float32Array {
  const { factor, low_freq_factor: low, high_freq_factor: high, original_max_position_embeddings: original } = s;
  if ([factor, low, high, original].some((v) => typeof v !== 'number')) throw new Error('gguf: llama3 rope_scaling is incomplete');
  const factors = new Float32Array(headDim / 2);
  for (let i = 0; i < factors.length; i++) {
    const freq = 1 / theta ** ((2 * i) / headDim);
    const wavelen = (2 * Math.PI) / freq;
    if (wavelen < original! / high!) factors[i] = 1;
    else if (wavelen > original! / low!) factors[i] = factor!;
    else {
      const smooth = (original! / wavelen - low!) / (high! - low!);
      factors[i] = 1 / ((1 - smooth) / factor! + smooth);
    }
  }
  return factors;
}

// tokenizer.ggml.*: the byte-level BPE vocabulary, token types and merges of a Llama 3
// tokenizer.json, padded with unused [PADn] tokens up to vocabSize.
async function llama3Tokenizer(modelDir: string, config: Record<string, unknown>, vocabSize: number): Promise<Record<string, GgufValue>> {
  const tokenizer = await readJson(modelDir, 'tokenizer.json');
  const model = tokenizer.model as { type: string; vocab: Record<string, number>; merges: (string | [string, string])[] };
  const added = tokenizer.added_tokens as { id: number; content: string; special: boolean }[];
  if (model.type !== 'BPE' || !added.some((t) => t.content === LLAMA3_BOS)) {
    throw new Error(`gguf: ${modelDir} does not have the Llama 3 tokenizer (BPE with ${LLAMA3_BOS})`);
  }
  const tokens: string[] = [];
  const types = new Int32Array(vocabSize).fill(TOKEN_TYPE.normal);
  const put = (id: number, text: string) => {
    if (id >= vocabSize) throw new Error(`gguf: token id ${id} is outside vocab_size ${vocabSize}`);
    tokens[id] = text;
  };
  for (const [text, id] of Object.entries(model.vocab)) put(id, text);
  for (const t of added) {
    put(t.id, t.content);
    types[t.id] = t.special ? TOKEN_TYPE.control : TOKEN_TYPE.userDefined;
  }
  for (let id = 0; id < vocabSize; id++) {
    if (tokens[id] !== undefined) continue;
    tokens[id] = `[PAD${id}]`;
    types[id] = TOKEN_TYPE.unused;
  }
  const firstId = (v: unknown): number => (Array.isArray(v) ? (v[0] as number) : (v as number));
  return {
    'tokenizer.ggml.model': { type: 'string', value: 'gpt2' },
    'tokenizer.ggml.pre': { type: 'string', value: 'llama-bpe' },
    'tokenizer.ggml.tokens': { type: 'string[]', value: tokens },
    'tokenizer.ggml.token_type': { type: 'i32[]', value: types },
    'tokenizer.ggml.merges': { type: 'string[]', value: model.merges.map((m) => (typeof m === 'string' ? m : m.join(' '))) },
    'tokenizer.ggml.bos_token_id': { type: 'u32', value: firstId(config.bos_token_id) },
    'tokenizer.ggml.eos_token_id': { type: 'u32', value: firstId(config.eos_token_id) },
  };
}

function f32Tensor(name: string, values: Float32Array): GgufTensor {
  return {
    name,
    type: 'f32',
    ne: [values.length],
    data: async function* () {
      yield new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
    },
  };
}

// A stored HF tensor as a GGUF tensor: ne reversed, 1-D in F32, the rest in dtype; when
// permuteHeads > 0 the rows are permuted for GGML's RoPE, head by head (see the header).
function convertedTensor(name: string, t: StoredTensor, dtype: GgufDtype, permuteHeads: number): GgufTensor {
  const type: GgmlTypeName = t.shape.length === 1 ? 'f32' : dtype;
  const rowBytes = (t.shape.at(-1) ?? 1) * DTYPE_BYTES[t.dtype];
  const headRows = permuteHeads > 0 ? t.shape[0]! / permuteHeads : 1;
  if (permuteHeads > 0 && (!Number.isInteger(headRows) || headRows % 2 !== 0)) throw new Error(`gguf: ${t.name} rows do not split into ${permuteHeads} heads`);
  const rowsPerBlock = Math.max(1, Math.floor(BLOCK_BYTES / rowBytes / headRows)) * headRows;
  return {
    name,
    type,
    ne: [...t.shape].reverse(),
    data: async function* () {
      for await (const block of readRowBlocks(t, rowsPerBlock)) {
        const rows = permuteHeads > 0 ? permuteRopeRows(block, rowBytes, headRows) : block;
        yield convertDtype(rows, t.dtype, type);
      }
    },
  };
}

function permuteRopeRows(block: Uint8Array, rowBytes: number, headRows: number): Uint8Array {
  const out = new Uint8Array(block.length);
  const half = headRows / 2;
  const numRows = block.length / rowBytes;
  for (let head = 0; head < numRows; head += headRows) {
    for (let i = 0; i < half; i++) {
      for (let k = 0; k < 2; k++) {
        const from = (head + k * half + i) * rowBytes;
        out.set(block.subarray(from, from + rowBytes), (head + 2 * i + k) * rowBytes);
      }
    }
  }
  return out;
}

function convertDtype(bytes: Uint8Array, from: ModelDtype, to: GgmlTypeName): Uint8Array {
  if (from === to) return bytes;
  const count = bytes.length / DTYPE_BYTES[from];
  const out = new Uint8Array(count * DTYPE_BYTES[to]);
  if (from === 'f32') {
    encodeChunk(new Float32Array(bytes.buffer, bytes.byteOffset, count), to, out);
    return out;
  }
  const src = new Uint16Array(bytes.buffer, bytes.byteOffset, count);
  const table = conversionTable(from, to);
  const dst = to === 'f32' ? new Uint32Array(out.buffer) : new Uint16Array(out.buffer);
  for (let i = 0; i < count; i++) dst[i] = table[src[i]!]!;
  return out;
}

const tables = new Map<string, Uint16Array | Uint32Array>();

// For a 16-bit source type: the target's bits for each of the 65536 source bit patterns.
function conversionTable(from: 'bf16' | 'f16', to: GgmlTypeName): Uint16Array | Uint32Array {
  const key = `${from}-${to}`;
  let table = tables.get(key);
  if (table !== undefined) return table;
  const values = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) values[h] = from === 'bf16' ? bf16ToF32(h) : f16ToF32(h);
  const bytes = new Uint8Array(65536 * DTYPE_BYTES[to]);
  encodeChunk(values, to, bytes);
  table = to === 'f32' ? new Uint32Array(bytes.buffer) : new Uint16Array(bytes.buffer);
  tables.set(key, table);
  return table;
}

function bf16ToF32(h: number): number {
  return new Float32Array(new Uint32Array([h << 16]).buffer)[0]!;
}

function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}
