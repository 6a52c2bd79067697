// gguf-file.ts: writes a GGUF v3 file (the format llama.cpp loads), streaming the tensor data.
//
// Owns: the byte layout. Little-endian throughout:
//   "GGUF" | version u32 = 3 | tensor_count u64 | kv_count u64
//   | kv_count x (key: string, value_type u32, value)      string = u64 byte length + UTF-8
//   | tensor_count x (name: string, n_dims u32, ne u64[n_dims], ggml_type u32, offset u64)
//   | zero padding to `alignment` | tensor data, each tensor starting at an aligned offset
// ne is GGML's order, fastest-varying dimension first: a PyTorch [rows, cols] tensor is ne
// [cols, rows]. Offsets are relative to the start of the data section.
// Stays true: general.alignment is always written (as ALIGNMENT), so readers and this writer agree;
// the file appears under its name only complete (written to a temp name, then renamed).

import { open, rename, rm } from 'node:fs/promises';

const ALIGNMENT = 32;

// The ggml_type ids of the tensor types written here.
const GGML_TYPE = { f32: 0, f16: 1, bf16: 30 } as const;
export type GgmlTypeName = keyof typeof GGML_TYPE;
const GGML_TYPE_BYTES: Record<GgmlTypeName, number> = { f32: 4, f16: 2, bf16: 2 };

// A metadata value with its GGUF type.
export type GgufValue =
  | { type: 'u32'; value: number }
  | { type: 'f32'; value: number }
  | { type: 'string'; value: string }
  | { type: 'string[]'; value: readonly string[] }
  | { type: 'i32[]'; value: ArrayLike<number> };

const VALUE_TYPE = { u32: 4, i32: 5, f32: 6, string: 8, array: 9 } as const;

export interface GgufTensor {
  name: string;
  type: GgmlTypeName;
  ne: number[]; // GGML order: ne[0] varies fastest
  // Yields the tensor's bytes in order, exactly numElements(ne) * GGML_TYPE_BYTES[type] of them.
  data: () => AsyncIterable<Uint8Array>;
}

export async function writeGguf(file: string, metadata: Record<string, GgufValue>, tensors: readonly GgufTensor[]): Promise<void> {
  const all = { ...metadata, 'general.alignment': { type: 'u32', value: ALIGNMENT } } satisfies Record<string, GgufValue>;
  const header = new ByteWriter();
  header.raw(Buffer.from('GGUF', 'latin1'));
  header.u32(3);
  header.u64(tensors.length);
  header.u64(Object.keys(all).length);
  for (const [key, value] of Object.entries(all)) {
    header.string(key);
    writeValue(header, value);
  }
  let offset = 0;
  for (const t of tensors) {
    header.string(t.name);
    header.u32(t.ne.length);
    for (const n of t.ne) header.u64(n);
    header.u32(GGML_TYPE[t.type]);
    header.u64(offset);
    offset = alignUp(offset + tensorBytes(t), ALIGNMENT);
  }
  header.raw(new Uint8Array(alignUp(header.length, ALIGNMENT) - header.length));

  const temp = `${file}.tmp-${process.pid}`;
  const handle = await open(temp, 'w');
  try {
    await handle.write(header.bytes());
    for (const t of tensors) {
      let written = 0;
      for await (const chunk of t.data()) {
        await handle.write(chunk);
        written += chunk.length;
      }
      const expected = tensorBytes(t);
      if (written !== expected) throw new Error(`gguf: ${t.name} gave ${written} bytes, expected ${expected}`);
      const pad = alignUp(written, ALIGNMENT) - written;
      if (pad > 0) await handle.write(new Uint8Array(pad));
    }
    await handle.close();
    await rename(temp, file);
  } catch (error) {
    await handle.close().catch(() => {});
    await rm(temp, { force: true });
    throw error;
  }
}

function tensorBytes(t: Pick<GgufTensor, 'type' | 'ne'>): number {
  return t.ne.reduce((a, b) => a * b, 1) * GGML_TYPE_BYTES[t.type];
}

function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}

function writeValue(w: ByteWriter, v: GgufValue): void {
  switch (v.type) {
    case 'u32':
      w.u32(VALUE_TYPE.u32);
      w.u32(v.value);
      return;
    case 'f32':
      w.u32(VALUE_TYPE.f32);
      w.f32(v.value);
      return;
    case 'string':
      w.u32(VALUE_TYPE.string);
      w.string(v.value);
      return;
    case 'string[]':
      w.u32(VALUE_TYPE.array);
      w.u32(VALUE_TYPE.string);
      w.u64(v.value.length);
      for (const s of v.value) w.string(s);
      return;
    case 'i32[]':
      w.u32(VALUE_TYPE.array);
      w.u32(VALUE_TYPE.i32);
      w.u64(v.value.length);
      for (let i = 0; i < v.value.length; i++) w.i32(v.value[i]!);
  }
}

// A growable little-endian byte buffer for the header (a few MB with a 128k-token vocabulary).
class ByteWriter {
  private buf = Buffer.alloc(1 << 16);
  length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n));
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }

  raw(bytes: Uint8Array): void {
    this.reserve(bytes.length);
    this.buf.set(bytes, this.length);
    this.length += bytes.length;
  }

  u32(n: number): void {
    this.reserve(4);
    this.length = this.buf.writeUInt32LE(n, this.length);
  }

  i32(n: number): void {
    this.reserve(4);
    this.length = this.buf.writeInt32LE(n, this.length);
  }

  u64(n: number): void {
    this.reserve(8);
    this.length = this.buf.writeBigUInt64LE(BigInt(n), this.length);
  }

  f32(x: number): void {
    this.reserve(4);
    this.length = this.buf.writeFloatLE(x, this.length);
  }

  string(s: string): void {
    const bytes = Buffer.from(s, 'utf8');
    this.u64(bytes.length);
    this.raw(bytes);
  }

  bytes(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }
}
