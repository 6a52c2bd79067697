// safetensors-writer.ts: streams tensors into a .safetensors file, byte for byte as the Python
// `safetensors` package (its Rust serializer) writes them.
//
// Owns: the header layout and the streaming write.
// Format: u64 little-endian header length N, then N bytes of compact JSON
//   {"__metadata__":{"format":"pt"},"<name>":{"dtype":"BF16","shape":[..],"data_offsets":[b,e]},..}
// padded with spaces to a multiple of 8, then the tensor bytes. Tensors are stored in name order
// (the serializer sorts by dtype alignment, then name; a model has one dtype), offsets relative
// to the end of the header.
// Stays true: at most two chunks of CHUNK_BYTES are in memory; the file is never held whole.
// A chunk is being written while the next one is produced (double buffering).

import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';

import { DTYPE_BYTES, type ModelDtype } from './float-encode.ts';
import { numElements } from './spec.ts';

const CHUNK_BYTES = 4 << 20; // a multiple of every element size
const SAFETENSORS_DTYPE: Record<ModelDtype, string> = { bf16: 'BF16', f16: 'F16', f32: 'F32' };

// A tensor to write: open() returns a function that fills `out` with the next out.length bytes.
export interface TensorSource {
  name: string;
  dtype: ModelDtype;
  shape: number[];
  open(): (out: Uint8Array) => void;
}

export interface TensorLayout {
  name: string;
  dtype: ModelDtype;
  shape: number[];
  dataOffsets: [number, number];
}

export interface WrittenFile {
  bytes: number;
  sha256: string;
}

export function tensorBytes(tensor: { dtype: ModelDtype; shape: readonly number[] }): number {
  return numElements(tensor.shape) * DTYPE_BYTES[tensor.dtype];
}

// Sorts the tensors into file order and returns the full header (length prefix included).
export function safetensorsHeader(tensors: readonly Omit<TensorSource, 'open'>[]): {
  header: Buffer;
  layouts: TensorLayout[];
} {
  const sorted = [...tensors].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  let offset = 0;
  const layouts = sorted.map((t): TensorLayout => {
    const start = offset;
    offset += tensorBytes(t);
    return { name: t.name, dtype: t.dtype, shape: t.shape, dataOffsets: [start, offset] };
  });
  const entries = layouts.map(
    (l) =>
      `${JSON.stringify(l.name)}:{"dtype":"${SAFETENSORS_DTYPE[l.dtype]}",` +
      `"shape":${JSON.stringify(l.shape)},"data_offsets":[${l.dataOffsets.join(',')}]}`,
  );
  let json = `{"__metadata__":{"format":"pt"}${entries.map((e) => `,${e}`).join('')}}`;
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const body = Buffer.from(json, 'utf8');
  const header = Buffer.alloc(8 + body.length);
  header.writeBigUInt64LE(BigInt(body.length), 0);
  body.copy(header, 8);
  return { header, layouts };
}

export async function writeSafetensorsFile(
  filePath: string,
  tensors: readonly TensorSource[],
): Promise<WrittenFile> {
  const { header, layouts } = safetensorsHeader(tensors);
  const byName = new Map(tensors.map((t) => [t.name, t]));
  const file = await open(filePath, 'w');
  const hash = createHash('sha256');
  const buffers = [new Uint8Array(CHUNK_BYTES), new Uint8Array(CHUNK_BYTES)];
  let position = 0;
  let pending: Promise<unknown> = Promise.resolve();
  // Starts writing chunk after the previous write has finished; chunk must stay untouched until
  // the next call returns.
  const write = async (chunk: Uint8Array): Promise<void> => {
    await pending;
    hash.update(chunk);
    pending = file.write(chunk, 0, chunk.length, position);
    position += chunk.length;
  };
  try {
    await write(header);
    let flip = 0;
    for (const layout of layouts) {
      const fill = byName.get(layout.name)!.open();
      for (let left = layout.dataOffsets[1] - layout.dataOffsets[0]; left > 0; ) {
        const chunk = buffers[flip]!.subarray(0, Math.min(left, CHUNK_BYTES));
        fill(chunk);
        await write(chunk);
        flip ^= 1;
        left -= chunk.length;
      }
    }
    await pending;
  } finally {
    await pending.catch(() => undefined); // a write in flight ends before the close
    await file.close();
  }
  return { bytes: position, sha256: hash.digest('hex') };
}
