// safetensors-reader.ts: the tensors of a Hugging Face model directory, read row block by row block.
//
// Owns: finding every tensor in the directory's .safetensors files (one file or shards), and
// reading a tensor in blocks of whole rows without loading the file.
// Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
// then the data, offsets relative to the end of the header.

import { open, readdir, type FileHandle } from 'node:fs/promises';
import path from 'node:path';

import { DTYPE_BYTES, type ModelDtype } from '../../ts/modelgen/float-encode.ts';

const DTYPES: Record<string, ModelDtype> = { BF16: 'bf16', F16: 'f16', F32: 'f32' };

export interface StoredTensor {
  name: string;
  dtype: ModelDtype;
  shape: number[];
  file: string;
  start: number; // absolute byte offset of the data in file
  bytes: number;
}

export async function listTensors(modelDir: string): Promise<Map<string, StoredTensor>> {
  const files = (await readdir(modelDir)).filter((f) => f.endsWith('.safetensors')).sort();
  if (files.length === 0) throw new Error(`gguf: no .safetensors files in ${modelDir}`);
  const tensors = new Map<string, StoredTensor>();
  for (const f of files) {
    const file = path.join(modelDir, f);
    const handle = await open(file, 'r');
    try {
      const lengthBytes = Buffer.alloc(8);
      await handle.read(lengthBytes, 0, 8, 0);
      const headerLength = Number(lengthBytes.readBigUInt64LE(0));
      const headerBytes = Buffer.alloc(headerLength);
      await handle.read(headerBytes, 0, headerLength, 8);
      const header = JSON.parse(headerBytes.toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
      for (const [name, entry] of Object.entries(header)) {
        if (name === '__metadata__') continue;
        const dtype = DTYPES[entry.dtype];
        if (dtype === undefined) throw new Error(`gguf: ${name} in ${file} has unsupported dtype ${entry.dtype}`);
        const [begin, end] = entry.data_offsets;
        tensors.set(name, { name, dtype, shape: entry.shape, file, start: 8 + headerLength + begin, bytes: end - begin });
      }
    } finally {
      await handle.close();
    }
  }
  return tensors;
}

// Yields the tensor's raw bytes in blocks of whole rows (a row is the last dimension); every block
// but the last holds exactly rowsPerBlock rows.
export async function* readRowBlocks(t: StoredTensor, rowsPerBlock: number): AsyncGenerator<Uint8Array> {
  const rowBytes = (t.shape.at(-1) ?? 1) * DTYPE_BYTES[t.dtype];
  const rows = t.bytes / rowBytes;
  const handle: FileHandle = await open(t.file, 'r');
  try {
    for (let row = 0; row < rows; row += rowsPerBlock) {
      const count = Math.min(rowsPerBlock, rows - row);
      const block = new Uint8Array(count * rowBytes);
      const { bytesRead } = await handle.read(block, 0, block.length, t.start + row * rowBytes);
      if (bytesRead !== block.length) throw new Error(`gguf: ${t.file} is truncated at ${t.name}`);
      yield block;
    }
  } finally {
    await handle.close();
  }
}
