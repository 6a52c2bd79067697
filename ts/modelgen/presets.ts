// presets.ts: the named model shapes the project generates.
//
// Owns: PRESETS. 'tiny-llama' is the server's built-in default model (a second to generate, fast
// on 2 CPU cores); 'llama-3.2-1b' has Llama-3.2-1B's exact shape for benchmarks; the 'test-*'
// presets are tiny models, each aimed at one family of engine features, with committed goldens
// (test/goldens) computed by the PyTorch reference.
// Stays true: a preset's spec never changes silently: goldens record the spec and the sha256 of
// the bytes, so a change here fails the golden tests until the goldens are regenerated.

import type { ModelSpecInput } from './spec.ts';

export const PRESETS = {
  'tiny-llama': {
    architecture: 'LlamaForCausalLM',
    hiddenSize: 256,
    intermediateSize: 768,
    numLayers: 4,
    numHeads: 8,
    numKvHeads: 2,
    maxPositionEmbeddings: 8192,
    ropeTheta: 500000,
    tieWordEmbeddings: true,
    seed: 1,
  },
  // A small Llama for serving benchmarks on CPU (bench/serve scenario router): big enough that
  // a 1,024-token prefill costs far more than a request's fixed overheads, as on real models,
  // small enough that 4 workers decode at interactive speed on 2 cores (~90M parameters).
  'small-llama': {
    architecture: 'LlamaForCausalLM',
    hiddenSize: 512,
    intermediateSize: 1536,
    numLayers: 8,
    numHeads: 8,
    numKvHeads: 2,
    maxPositionEmbeddings: 8192,
    ropeTheta: 500000,
    tieWordEmbeddings: true,
    seed: 1,
  },
  'llama-3.2-1b': {
    architecture: 'LlamaForCausalLM',
    hiddenSize: 2048,
    intermediateSize: 8192,
    numLayers: 16,
    numHeads: 32,
    numKvHeads: 8,
    headDim: 64,
    maxPositionEmbeddings: 131072,
    ropeTheta: 500000,
    ropeScaling: {
      ropeType: 'llama3',
      factor: 32,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    },
    tieWordEmbeddings: true,
    seed: 1,
  },
  // GQA 4:1 and llama3 RoPE scaling whose three frequency bands (kept, interpolated, divided)
  // all occur at head_dim 16: wavelengths 6.3, 32 and >= 167 against 64/4 and 64/1.
  'test-llama-gqa-llama3rope': {
    architecture: 'LlamaForCausalLM',
    hiddenSize: 128,
    intermediateSize: 256,
    numLayers: 2,
    numHeads: 8,
    numKvHeads: 2,
    headDim: 16,
    maxPositionEmbeddings: 512,
    ropeTheta: 500000,
    ropeScaling: {
      ropeType: 'llama3',
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 64,
    },
    seed: 11,
  },
  // q/k/v biases, tied embeddings, rope theta 1e6, rms eps 1e-6, GQA 2:1. At the default
  // biasStd 0.5 and logitStd 4 greedy decoding locks onto one token (seeds 12..17 all gave 1..5
  // distinct tokens in 64): the big v bias adds the same vector to every position, and the tied
  // embedding puts the last token's own row, |e|^2 = logitStd^2, into its logit. biasStd 0.05
  // and logitStd 1 (the logit scale is otherwise immaterial: the bound scales with it) give 46
  // distinct greedy tokens, every step leading by >= 2.7x the bound; the biases still matter
  // (zeroing the q, k or v biases moves logits by 200x, 80x, 850x the bound).
  'test-qwen2-bias-tied': {
    architecture: 'Qwen2ForCausalLM',
    hiddenSize: 128,
    intermediateSize: 320,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    maxPositionEmbeddings: 512,
    ropeTheta: 1e6,
    tieWordEmbeddings: true,
    biasStd: 0.05,
    logitStd: 1,
    seed: 12,
  },
  // Mistral with GQA 3:1, an explicit head_dim (numHeads * headDim != hiddenSize, as in
  // Mistral-Nemo) and a sliding window longer than any test sequence. initStd 0.05 (about half
  // of the default 1/sqrt(fan_in)) keeps the model calm: a K/V element that lands on the other
  // side of a bf16 rounding boundary moves the logits little, so the golden's bound is tight and
  // all 64 greedy steps lead by >= 2x it (at the default init no seed in 15..250 did).
  'test-mistral': {
    architecture: 'MistralForCausalLM',
    hiddenSize: 96,
    intermediateSize: 192,
    numLayers: 3,
    numHeads: 6,
    numKvHeads: 2,
    headDim: 24,
    maxPositionEmbeddings: 512,
    ropeTheta: 10000,
    slidingWindow: 4096,
    initStd: 0.05,
    seed: 20,
  },
  // test-llama-gqa-llama3rope's numbers (and weights: the same seed) in transformers 5's
  // config.json form: rope_parameters instead of rope_theta + rope_scaling, dtype instead of
  // torch_dtype. Its golden must hold the same reference logits as the transformers 4 one.
  'test-llama-gqa-llama3rope-t5': {
    architecture: 'LlamaForCausalLM',
    hiddenSize: 128,
    intermediateSize: 256,
    numLayers: 2,
    numHeads: 8,
    numKvHeads: 2,
    headDim: 16,
    maxPositionEmbeddings: 512,
    ropeTheta: 500000,
    ropeScaling: {
      ropeType: 'llama3',
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 64,
    },
    configFormat: 'transformers5',
    seed: 11,
  },
  // Linear rope scaling (every frequency divided by 4), multi-head attention (no GQA). At
  // initStd 0.05 seeds 30..36 all had greedy near-ties (bounds 0.007-0.05); 0.035 keeps the
  // bound small while the rope still matters: factor 2 instead of 4 moves the logits of a
  // 120-token sequence by ~500x the bound.
  'test-llama-linearrope': {
    architecture: 'LlamaForCausalLM',
    hiddenSize: 128,
    intermediateSize: 256,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 4,
    maxPositionEmbeddings: 512,
    ropeTheta: 10000,
    ropeScaling: { ropeType: 'linear', factor: 4 },
    initStd: 0.035,
    seed: 30,
  },
  // Dynamic NTK rope: the base grows only past max_position_embeddings, which the engine never
  // runs past, so within it these are the default frequencies (the type must still be read).
  // initStd 0.05 for a calm model, as test-mistral.
  'test-llama-dynamicrope': {
    architecture: 'LlamaForCausalLM',
    hiddenSize: 128,
    intermediateSize: 256,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    maxPositionEmbeddings: 512,
    ropeTheta: 10000,
    ropeScaling: { ropeType: 'dynamic', factor: 2 },
    initStd: 0.05,
    seed: 40,
  },
  // Yarn at head_dim 32, theta 1e4, over an original 64 positions (the golden's sequences run
  // to ~110): beta_fast 4 (beta_slow the default 1) puts the ramp's ends at floor(1.62) = 1 and
  // ceil(4.03) = 5, so rotary pairs 0-1 keep their frequency, 2-4 are blended and 5-15 are
  // divided by the factor; the attention factor is 0.1 ln 4 + 1 = 1.139. factor 4 =
  // max_position_embeddings / original, where the transformers versions that derive the factor
  // from that ratio agree with those that read it. initStd 0.05 (at the default init the bound
  // was 0.14-0.24, with greedy near-ties); dropping the attention factor still moves the
  // logits of a 120-token sequence by ~150x the bound.
  'test-llama-yarn': {
    architecture: 'LlamaForCausalLM',
    hiddenSize: 128,
    intermediateSize: 256,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    maxPositionEmbeddings: 256,
    ropeTheta: 10000,
    ropeScaling: { ropeType: 'yarn', factor: 4, originalMaxPositionEmbeddings: 64, betaFast: 4 },
    initStd: 0.05,
    seed: 51,
  },
  // Yarn with mscale and mscale_all_dim (DeepSeek's keys): attention factor
  // (0.1 ln 8 + 1) / (0.05 ln 8 + 1) = 1.094; default betas over an original 32 positions at
  // head_dim 32 give the ramp's ends 0 and ceil(2.83) = 3 (pair 0 kept, 1-2 blended, 3-15
  // divided by 8 = 256 / 32). initStd 0.05 as test-llama-yarn.
  'test-llama-yarn-mscale': {
    architecture: 'LlamaForCausalLM',
    hiddenSize: 128,
    intermediateSize: 256,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    maxPositionEmbeddings: 256,
    ropeTheta: 10000,
    ropeScaling: {
      ropeType: 'yarn',
      factor: 8,
      originalMaxPositionEmbeddings: 32,
      mscale: 1,
      mscaleAllDim: 0.5,
    },
    initStd: 0.05,
    seed: 60,
  },
  // Qwen3: per-head q/k RMSNorm before rope, head_dim 32 with 8 heads on hidden 128 (q is twice
  // as wide as the residual stream), GQA 4:1, no biases, tied embeddings (as Qwen3-0.6B), theta
  // 1e6, rms eps 1e-6, the Qwen tokenizer. logitStd 1, as test-qwen2-bias-tied: at 4 the tied
  // embedding's own row wins and greedy decoding locks onto a few tokens (4 distinct in 64).
  'test-qwen3': {
    architecture: 'Qwen3ForCausalLM',
    hiddenSize: 128,
    intermediateSize: 384,
    numLayers: 2,
    numHeads: 8,
    numKvHeads: 2,
    headDim: 32,
    maxPositionEmbeddings: 512,
    ropeTheta: 1e6,
    tieWordEmbeddings: true,
    logitStd: 1,
    seed: 71,
  },
  // test-qwen3's layer shape with yarn rope in transformers 5's rope_parameters (theta 1e6,
  // factor 4, original 64 = 256 / 4, default betas: pair 0 kept, 1-2 blended, 3-15 divided by 4;
  // attention factor 1.139). One layer: Qwen3's normed q and k make attention sharp whatever
  // the init, and at two layers seeds 80..92 (also at initStd 0.05, logitStd 0.25, or attention
  // factor 1) all had bounds of 0.4-7% of the logit std and greedy near-ties.
  'test-qwen3-yarn-t5': {
    architecture: 'Qwen3ForCausalLM',
    hiddenSize: 128,
    intermediateSize: 384,
    numLayers: 1,
    numHeads: 8,
    numKvHeads: 2,
    headDim: 32,
    maxPositionEmbeddings: 256,
    ropeTheta: 1e6,
    ropeScaling: { ropeType: 'yarn', factor: 4, originalMaxPositionEmbeddings: 64 },
    tieWordEmbeddings: true,
    logitStd: 1,
    configFormat: 'transformers5',
    seed: 87,
  },
} as const satisfies Record<string, ModelSpecInput>;

export type PresetName = keyof typeof PRESETS;

export function isPresetName(name: string): name is PresetName {
  return Object.hasOwn(PRESETS, name);
}
