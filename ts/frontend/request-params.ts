// request-params.ts: a validated request body -> the plan the generation runs: per-prompt token
// budgets, the engine's sampling parameters, and what the output processor and the response
// shapes need.
//
// Stays true (as vLLM):
// - a prompt must leave room for one token: prompt_tokens < max_model_len, else 400 naming both;
// - max_tokens defaults to the rest of the context (chat) or to 16 within it (completions, the
//   OpenAI legacy default); an explicit one with prompt_tokens + max_tokens > max_model_len is a
//   400 naming the three numbers;
// - choice j of n gets seed + j (mod 2^32), so n > 1 with a seed is reproducible yet varied;
// - the engine gets stop_token_ids; EOS is the engine's own business (unless ignore_eos); stop
//   strings stay here, for the output processor;
// - temperature, top_p, top_k, min_p and repetition_penalty a request leaves unset (or null) come
//   from the model's generation config when it has them (--generation-config auto), else are
//   neutral; its max_new_tokens caps max_tokens, after the context checks (vLLM's order);
// - the reasoning parser reaches the output processor only where the route passes it (chat).
import type { OutputProcessorOptions, ReasoningParserName, SamplingDefaults } from '../processor/index.ts';
import type { GrammarSpec, SamplingParams } from '../protocol/index.ts';
import { ApiError } from './errors.ts';
import type { SamplingBody } from './schemas.ts';

export interface GenerationPlan {
  prompts: number[][]; // token ids of each prompt (one for chat; a completions batch has several)
  n: number;
  maxTokens: number[]; // per prompt
  sampling: Omit<SamplingParams, 'maxTokens' | 'seed'>;
  seed: number | undefined;
  output: OutputProcessorOptions;
  returnTokensAsIds: boolean;
  stream: boolean;
  includeUsage: boolean;
  grammar?: GrammarSpec; // structured outputs: every choice's tokens follow it
}

export interface PlanOptions {
  prompts: number[][];
  maxModelLen: number;
  maxTokens: number | null | undefined; // as the request gave it
  defaultMaxTokens: number; // Infinity: the rest of the context
  logprobs: number | undefined; // top-N for the engine, undefined = none
  promptWord: 'messages' | 'prompt'; // for the context-length message
  samplingDefaults?: SamplingDefaults; // the model's generation config
  reasoningParser?: ReasoningParserName;
  grammar?: GrammarSpec; // checked (structured-output.ts)
}

// Choices (n times prompts) above which a request is bulk: engine priority 1 unless it names one.
export const BULK_CHOICES = 4;

export function planGeneration(body: SamplingBody, opts: PlanOptions): GenerationPlan {
  // 1. Token budgets against the context.
  const defaults = opts.samplingDefaults ?? {};
  const cap = defaults.maxTokens ?? Infinity;
  const maxTokens = opts.prompts.map((p) => Math.min(tokenBudget(p.length, opts), cap));
  const minTokens = body.min_tokens ?? 0;
  const smallest = Math.min(...maxTokens);
  if (minTokens > smallest) {
    throw new ApiError('ERR_INVALID_REQUEST', `min_tokens (${minTokens}) must be at most max_tokens (${smallest})`, 'min_tokens');
  }
  // 2. Engine sampling.
  const sampling: GenerationPlan['sampling'] = {
    minTokens,
    temperature: body.temperature ?? defaults.temperature ?? 1,
    topP: body.top_p ?? defaults.topP ?? 1,
    topK: body.top_k ?? defaults.topK ?? 0,
    minP: body.min_p ?? defaults.minP ?? 0,
    repetitionPenalty: body.repetition_penalty ?? defaults.repetitionPenalty ?? 1,
    presencePenalty: body.presence_penalty ?? 0,
    frequencyPenalty: body.frequency_penalty ?? 0,
    stopTokenIds: body.stop_token_ids ?? [],
    ignoreEos: body.ignore_eos ?? false,
  };
  if (opts.logprobs !== undefined) sampling.logprobs = opts.logprobs;
  // Scheduling priority, lower first (the engine's scheduler.h; vLLM's `priority` field): as the
  // request gives it, else 1 for a bulk request (more than BULK_CHOICES choices in all), whose
  // rows then sit out the prefill steps of other requests' prompts, so that a short request's
  // first token does not wait on steps full of its rows; else 0.
  const choices = (body.n ?? 1) * opts.prompts.length;
  const priority = body.priority ?? (choices > BULK_CHOICES ? 1 : 0);
  if (priority !== 0) sampling.priority = priority;
  // 3. Output: stop strings and detokenizing.
  const stop = typeof body.stop === 'string' ? [body.stop] : (body.stop ?? []);
  return {
    prompts: opts.prompts,
    n: body.n ?? 1,
    maxTokens,
    sampling,
    seed: body.seed ?? undefined,
    output: {
      stop,
      includeStopStrInOutput: body.include_stop_str_in_output ?? false,
      skipSpecialTokens: body.skip_special_tokens ?? true,
      ...(opts.reasoningParser ? { reasoningParser: opts.reasoningParser } : {}),
    },
    returnTokensAsIds: body.return_tokens_as_token_ids ?? false,
    stream: body.stream ?? false,
    includeUsage: body.stream_options?.include_usage ?? false,
    ...(opts.grammar ? { grammar: opts.grammar } : {}),
  };
}

// The engine sampling of choice j of n.
export function choiceSampling(plan: GenerationPlan, promptIndex: number, j: number): SamplingParams {
  const s: SamplingParams = { ...plan.sampling, maxTokens: plan.maxTokens[promptIndex] };
  if (plan.seed !== undefined) s.seed = (plan.seed + j) >>> 0;
  return s;
}

function tokenBudget(promptTokens: number, opts: PlanOptions): number {
  const { maxModelLen } = opts;
  if (promptTokens >= maxModelLen) {
    throw new ApiError(
      'ERR_CONTEXT_LENGTH_EXCEEDED',
      `This model's maximum context length is ${maxModelLen} tokens. However, your request has ${promptTokens} input tokens ` +
        `(${promptTokens} in the ${opts.promptWord}), which leaves no room for the completion. Please reduce the length of the ${opts.promptWord}.`,
      opts.promptWord,
    );
  }
  const maxTokens = opts.maxTokens ?? Math.min(opts.defaultMaxTokens, maxModelLen - promptTokens);
  if (promptTokens + maxTokens > maxModelLen) {
    throw new ApiError(
      'ERR_CONTEXT_LENGTH_EXCEEDED',
      `This model's maximum context length is ${maxModelLen} tokens. However, you requested ${promptTokens + maxTokens} tokens ` +
        `(${promptTokens} in the ${opts.promptWord}, ${maxTokens} in the completion). Please reduce the length of the ${opts.promptWord} or completion.`,
      'max_tokens',
    );
  }
  return maxTokens;
}
