// random.ts: the bench's seeded randomness: request arrival times and random prompt tokens.
//
// Arrivals follow vLLM's `bench serve`: the first request at 0, then gaps drawn from a gamma
// distribution with shape = burstiness and scale = 1 / (rate * burstiness), so the mean gap is
// 1 / rate whatever the burstiness (1 = Poisson; < 1 burstier; > 1 more even); rate Infinity
// sends everything at 0. Stays true: the same seed gives the same arrivals and the same tokens.
import { seededRng, type Rng } from '../../ts/router/index.ts';

export { seededRng, type Rng };

// Token ids for generated prompts: inside every common vocabulary (Llama 2's 32,000 and up),
// clear of the low ids where tokenizers keep their special and byte tokens.
export const TOKEN_ID_RANGE = [1000, 30_000] as const;

export function randomTokens(rng: Rng, n: number): number[] {
  const [lo, hi] = TOKEN_ID_RANGE;
  return Array.from({ length: n }, () => lo + Math.floor(rng() * (hi - lo)));
}

// An integer uniformly in [lo, hi].
export function randomInt(rng: Rng, lo: number, hi: number): number {
  return lo + Math.floor(rng() * (hi - lo + 1));
}

function standardNormal(rng: Rng): number {
  return Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
}

// A gamma(shape, scale) sample: Marsaglia and Tsang (2000) for shape >= 1, and
// gamma(shape + 1) * U^(1/shape) below 1.
export function gammaSample(rng: Rng, shape: number, scale: number): number {
  if (shape < 1) return gammaSample(rng, shape + 1, scale) * (1 - rng()) ** (1 / shape);
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    let x: number;
    let v: number;
    do {
      x = standardNormal(rng);
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const u = 1 - rng();
    if (Math.log(u) < 0.5 * x * x + d - d * v + d * Math.log(v)) return d * v * scale;
  }
}

// n arrival times in ms after the start, for `rate` requests per second.
export function arrivalTimesMs(rng: Rng, n: number, rate: number, burstiness: number): number[] {
  let t = 0;
  return Array.from({ length: n }, (_, i) => {
    if (i > 0 && Number.isFinite(rate)) t += gammaSample(rng, burstiness, 1 / (rate * burstiness)) * 1000;
    return t;
  });
}
