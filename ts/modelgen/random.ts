// random.ts: the deterministic random numbers behind generated weights.
//
// Owns: TensorRandom, one xoshiro128** stream per tensor, seeded from (model seed, tensor name).
// Stays true: the numbers depend only on integer arithmetic (Math.imul, shifts, exact float64
// sums) and one correctly rounded multiply, never on Math.log/Math.cos whose last bits may differ
// between JS engines, so a model's bytes are identical on every machine. Because every tensor has
// its own stream, a tensor's values do not depend on the order or the files it is written in.
//
// Normal samples are Irwin-Hall sums of four 16-bit uniforms (two 32-bit draws): mean and
// standard deviation exact, shape close to a Gaussian, tails bounded at +-sqrt(12) = 3.46 sigma.

const U16_SUM_MEAN = 4 * 32767.5;
const U16_SUM_STD = Math.sqrt((4 * (65536 * 65536 - 1)) / 12);

// splitmix32: expands one 32-bit seed into well-mixed state words.
function splitmix32(state: number): { value: number; next: number } {
  const next = (state + 0x9e3779b9) | 0;
  let z = next;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return { value: (z ^ (z >>> 16)) >>> 0, next };
}

// FNV-1a over the UTF-16 code units of a (tensor) name, folded with the model seed.
function hashName(seed: number, name: string): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < name.length; i++) {
    h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
  }
  return h;
}

export class TensorRandom {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  // seed: a uint32; name: the tensor's name, so every tensor gets an independent stream.
  constructor(seed: number, name: string) {
    let state = hashName(seed >>> 0, name);
    const words: number[] = [];
    for (let i = 0; i < 4; i++) {
      const step = splitmix32(state);
      words.push(step.value);
      state = step.next;
    }
    [this.s0, this.s1, this.s2, this.s3] = words as [number, number, number, number];
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1; // xoshiro's one bad state
  }

  // Fills out with samples of mean + std * (approximately standard normal). The xoshiro step is
  // inlined with the state in locals: this loop writes every weight of a model.
  fillNormal(out: Float32Array, mean: number, std: number): void {
    const scale = std / U16_SUM_STD;
    let s0 = this.s0;
    let s1 = this.s1;
    let s2 = this.s2;
    let s3 = this.s3;
    for (let i = 0; i < out.length; i++) {
      let r = Math.imul(rotl(Math.imul(s1, 5), 7), 9);
      let t = s1 << 9;
      s2 ^= s0;
      s3 ^= s1;
      s1 ^= s2;
      s0 ^= s3;
      s2 ^= t;
      s3 = rotl(s3, 11);
      let sum = (r >>> 16) + (r & 0xffff);
      r = Math.imul(rotl(Math.imul(s1, 5), 7), 9);
      t = s1 << 9;
      s2 ^= s0;
      s3 ^= s1;
      s1 ^= s2;
      s0 ^= s3;
      s2 ^= t;
      s3 = rotl(s3, 11);
      sum += (r >>> 16) + (r & 0xffff);
      out[i] = mean + (sum - U16_SUM_MEAN) * scale;
    }
    this.s0 = s0;
    this.s1 = s1;
    this.s2 = s2;
    this.s3 = s3;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
