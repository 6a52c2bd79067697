// float-encode.ts: float32 -> bf16 / f16 / f32 bytes, as PyTorch rounds them.
//
// Owns: the bit-level conversions and encodeChunk, which turns a Float32Array of weights into the
// little-endian bytes of a safetensors tensor.
// Stays true: bf16 and f16 are round-to-nearest-even from the float32 value (ties to even,
// overflow to +-inf, f16 subnormals rounded correctly, NaN stays a quiet NaN with its sign).

export type ModelDtype = 'bf16' | 'f16' | 'f32';

export const DTYPE_BYTES: Record<ModelDtype, number> = { bf16: 2, f16: 2, f32: 4 };

// float32 bits (as an int32 or a uint32) -> bfloat16 bits.
export function f32BitsToBf16(bits: number): number {
  if ((bits & 0x7fffffff) > 0x7f800000) return (bits >>> 16) | 0x0040;
  return (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
}

// float32 bits (as an int32 or a uint32) -> IEEE half bits.
export function f32BitsToF16(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x0200 | (mant >>> 13) : 0);
  const halfExp = exp - 127 + 15;
  if (halfExp >= 0x1f) return sign | 0x7c00;
  if (halfExp <= 0) return sign | roundShift(mant | 0x800000, 14 - halfExp);
  // A carry out of the mantissa bumps the exponent, and from the largest finite value to inf.
  return sign | roundShiftedInto((halfExp << 10) | (mant >>> 13), mant & 0x1fff, 0x1000);
}

// value >> shift, rounded to nearest even (shift in 1..31; anything at or past 25 is zero).
function roundShift(value: number, shift: number): number {
  if (shift > 24) return 0;
  const half = 1 << (shift - 1);
  return roundShiftedInto(value >>> shift, value & ((1 << shift) - 1), half);
}

function roundShiftedInto(truncated: number, remainder: number, half: number): number {
  const up = remainder > half || (remainder === half && (truncated & 1) === 1);
  return up ? truncated + 1 : truncated;
}

// Encodes values into out, which must hold values.length * DTYPE_BYTES[dtype] bytes and start at
// an even offset. Typed arrays are little-endian on every platform Node runs on, as safetensors is.
export function encodeChunk(values: Float32Array, dtype: ModelDtype, out: Uint8Array): void {
  if (dtype === 'f32') {
    out.set(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
    return;
  }
  const bits = new Int32Array(values.buffer, values.byteOffset, values.length);
  const halves = new Uint16Array(out.buffer, out.byteOffset, values.length);
  if (dtype === 'bf16') {
    for (let i = 0; i < bits.length; i++) halves[i] = f32BitsToBf16(bits[i]!);
  } else {
    for (let i = 0; i < bits.length; i++) halves[i] = f32BitsToF16(bits[i]!);
  }
}
