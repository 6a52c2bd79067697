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
} as const satisfies Record<string, ModelSpecInput>;

export type PresetName = keyof typeof PRESETS;

export function isPresetName(name: string): name is PresetName {
  return Object.hasOwn(PRESETS, name);
}
