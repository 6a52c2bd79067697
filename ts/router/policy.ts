// policy.ts: how the router picks one worker among those with room for the request.
//
// Algorithm ('kv', DESIGN.md section 5, Dynamo's default cost):
//   for a request of n blocks and each candidate worker w:
//     cost_w = overlapWeight * (n - overlap_w) + max(0, activeBlocks_w - held_w)
//   where overlap_w = leading request blocks already cached on w (blocks w must not prefill),
//   activeBlocks_w = the router's estimate of blocks w holds for requests in flight, and held_w =
//   the leading request blocks that requests in flight on w hold there. The DESIGN term is the
//   load already on w; the blocks this request would share with requests running there are not
//   load it adds (one physical copy serves them all), so they are left out. Without that, one
//   running request of a prefix group on the worker that caches the prefix cancels the worker's
//   whole overlap advantage, and the group's next request goes to an idle worker and computes the
//   prefix again (measured on the shared-prefix benchmark: kv's prefix hit rate 0.71-0.75 instead
//   of about 0.82). Dynamo's router counts the same way: it charges a worker the blocks it would
//   hold after the request, which is this cost plus the same n for every worker.
//   temperature == 0: the lowest cost wins; exact ties are broken uniformly at random.
//   temperature  > 0: costs are min-max normalised, z_w = (cost_w - min) / (max - min) in [0, 1]
//     (all equal: every z_w = 0), and w is drawn with probability proportional to
//     exp(-z_w / temperature). The scale is therefore the spread of this request's costs, whatever
//     n is: at T = 1 the costliest candidate is e times less likely than the cheapest, T -> 0 is
//     the argmin with random ties, and a large T approaches uniform.
// 'round-robin': the first candidate that joined after the last chosen worker, wrapping around.
// 'random': uniform over the candidates.
//
// Settings (ranges):
//   overlapWeight  number >= 0, default 1: prefill blocks weigh this many active blocks
//                  (0: balance active blocks only, ignore the cache)
//   temperature    number >= 0, default 0: softmax sampling over the normalised costs (0: argmin)
//
// A policy only reads its candidates; capacity (who is a candidate) is decided by the router.
import type { WorkerId } from '../protocol/index.ts';

export type PolicyName = 'kv' | 'round-robin' | 'random';
export const policyNames: readonly PolicyName[] = ['kv', 'round-robin', 'random'];

// A uniform random number in [0, 1), like Math.random.
export type Rng = () => number;

export interface Candidate {
  workerId: WorkerId;
  joinSeq: number; // increases with each join: candidates come in this order
  overlap: number; // leading request blocks cached on the worker, [0, n]
  activeBlocks: number; // the router's estimate, >= 0
  heldBlocks?: number; // leading request blocks held on the worker by requests in flight, [0, n]; default 0
}

export interface KvPolicySettings {
  overlapWeight: number;
  temperature: number;
}

export const defaultKvPolicySettings: KvPolicySettings = { overlapWeight: 1, temperature: 0 };

export interface Policy {
  readonly name: PolicyName;
  // The index in `candidates` (non-empty, in joinSeq order) of the worker to use for a request of
  // `n` blocks.
  select(candidates: readonly Candidate[], n: number): number;
}

export function kvCost(candidate: Candidate, n: number, overlapWeight: number): number {
  return overlapWeight * (n - candidate.overlap) + Math.max(0, candidate.activeBlocks - (candidate.heldBlocks ?? 0));
}

export function createPolicy(name: PolicyName, settings: Partial<KvPolicySettings>, rng: Rng): Policy {
  switch (name) {
    case 'kv':
      return new KvPolicy(checkKvSettings(settings), rng);
    case 'round-robin':
      return new RoundRobinPolicy();
    case 'random':
      return { name, select: (candidates) => Math.floor(rng() * candidates.length) };
    default:
      throw new RangeError(`router policy must be one of ${policyNames.join(', ')}, got ${String(name)}`);
  }
}

// mulberry32: a small seedable generator for tests and benchmarks.
export function seededRng(seed: number): Rng {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function checkKvSettings(settings: Partial<KvPolicySettings>): KvPolicySettings {
  const resolved: KvPolicySettings = {
    overlapWeight: settings.overlapWeight ?? defaultKvPolicySettings.overlapWeight,
    temperature: settings.temperature ?? defaultKvPolicySettings.temperature,
  };
  for (const key of ['overlapWeight', 'temperature'] as const) {
    const value = resolved[key];
    if (!Number.isFinite(value) || value < 0) {
      throw new RangeError(`router ${key} must be a finite number >= 0, got ${value}`);
    }
  }
  return resolved;
}

class KvPolicy implements Policy {
  readonly name = 'kv';
  #costs = new Float64Array(64);

  constructor(
    private readonly settings: KvPolicySettings,
    private readonly rng: Rng,
  ) {}

  select(candidates: readonly Candidate[], n: number): number {
    if (this.#costs.length < candidates.length) this.#costs = new Float64Array(candidates.length * 2);
    const costs = this.#costs;
    let min = Infinity;
    let max = -Infinity;
    for (let i = 0; i < candidates.length; i++) {
      const cost = kvCost(candidates[i], n, this.settings.overlapWeight);
      costs[i] = cost;
      if (cost < min) min = cost;
      if (cost > max) max = cost;
    }
    const { temperature } = this.settings;
    return temperature === 0 || max === min
      ? this.#argminRandomTie(costs, candidates.length, min)
      : this.#softmaxSample(costs, candidates.length, min, max - min, temperature);
  }

  #argminRandomTie(costs: Float64Array, count: number, min: number): number {
    let ties = 0;
    for (let i = 0; i < count; i++) if (costs[i] === min) ties++;
    let pick = Math.floor(this.rng() * ties);
    for (let i = 0; i < count; i++) {
      if (costs[i] === min && pick-- === 0) return i;
    }
    throw new Error('unreachable: argmin over a non-empty candidate list');
  }

  #softmaxSample(costs: Float64Array, count: number, min: number, spread: number, temperature: number): number {
    let total = 0;
    for (let i = 0; i < count; i++) {
      costs[i] = Math.exp(-(costs[i] - min) / spread / temperature);
      total += costs[i];
    }
    let r = this.rng() * total;
    let lastWeighted = 0;
    for (let i = 0; i < count; i++) {
      if (costs[i] === 0) continue;
      lastWeighted = i;
      r -= costs[i];
      if (r < 0) return i;
    }
    return lastWeighted; // rounding left r a hair above 0
  }
}

class RoundRobinPolicy implements Policy {
  readonly name = 'round-robin';
  #lastJoinSeq = -1;

  select(candidates: readonly Candidate[]): number {
    let pick = candidates.findIndex((c) => c.joinSeq > this.#lastJoinSeq);
    if (pick < 0) pick = 0;
    this.#lastJoinSeq = candidates[pick].joinSeq;
    return pick;
  }
}
