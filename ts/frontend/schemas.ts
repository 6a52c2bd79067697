// schemas.ts: the request bodies of /v1/chat/completions and /v1/completions: their TS types and
// the JSON schemas fastify's ajv checks them against (no type coercion; unknown fields pass, as
// OpenAI clients send many, except the answer-changing ones unsupported-fields.ts refuses). Ranges (DESIGN.md section 7, reference/anchors.md):
//   n 1..128; stop: a non-empty string or <= 32 of them; max_tokens >= 1; temperature 0..2;
//   top_p (0, 1]; top_k -1 or >= 0 (-1 and 0 = off); min_p 0..1; presence/frequency penalty
//   -2..2; repetition_penalty (0, 2]; top_logprobs (chat) and logprobs (completions) 0..20.
// Where a range is the engine's own limit (max_tokens, top_p, top_k, min_p, the penalties,
// logprobs) its numbers come from REQUEST_LIMITS (ts/native/request-limits.ts, checked against
// the addon's requestLimits() by test/native/request-limits.test.ts), so the frontend never
// accepts what the engine refuses. temperature 0..2 and repetition_penalty (0, 2] are the API's
// ranges (OpenAI's, vLLM's), deliberately narrower than the engine's (any finite value >= 0,
// > 0), and n, stop and stop_token_ids are the frontend's own: those numbers stay here.
// Checks a schema cannot express (message roles and content parts, lengths against the context,
// min_tokens <= max_tokens) are made by request-params.ts and the processor.
import { REQUEST_LIMITS as ENGINE } from '../native/request-limits.ts';
import type { StructuredOutputBody } from './structured-output.ts';
import type { ToolsBody } from './tools.ts';

export interface SamplingBody extends StructuredOutputBody {
  model?: string;
  n?: number | null;
  max_tokens?: number | null;
  stop?: string | string[] | null;
  stop_token_ids?: number[] | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean | null } | null;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  min_p?: number | null;
  seed?: number | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  repetition_penalty?: number | null;
  ignore_eos?: boolean | null;
  min_tokens?: number | null;
  include_stop_str_in_output?: boolean | null;
  skip_special_tokens?: boolean | null;
  return_tokens_as_token_ids?: boolean | null;
  priority?: number | null; // vLLM's: scheduling priority, lower first (request-params.ts)
}

export interface ChatMessageBody {
  role: string;
  content?: unknown;
  name?: string;
  tool_calls?: unknown[];
  tool_call_id?: string;
}

export interface ChatCompletionBody extends SamplingBody, ToolsBody {
  messages: ChatMessageBody[];
  max_completion_tokens?: number | null;
  logprobs?: boolean | null;
  top_logprobs?: number | null;
  chat_template_kwargs?: Record<string, unknown> | null;
  add_generation_prompt?: boolean | null;
}

export interface CompletionBody extends SamplingBody {
  prompt: string | string[] | number[] | number[][];
  logprobs?: number | null;
  echo?: boolean | null;
}

const maybe = (type: string) => ({ type: [type, 'null'] });
const int = (minimum: number, maximum?: number) => ({ type: ['integer', 'null'], minimum, ...(maximum === undefined ? {} : { maximum }) });
const num = (minimum: number, maximum: number) => ({ type: ['number', 'null'], minimum, maximum });

const samplingProperties = {
  model: { type: 'string' },
  n: int(1, 128),
  max_tokens: int(ENGINE.minMaxTokens),
  stop: {
    description: 'a non-empty string or an array of at most 32 non-empty strings',
    anyOf: [
      { type: 'null' },
      { type: 'string', minLength: 1 },
      { type: 'array', maxItems: 32, items: { type: 'string', minLength: 1 } },
    ],
  },
  stop_token_ids: { type: ['array', 'null'], maxItems: 1024, items: { type: 'integer', minimum: 0 } },
  stream: maybe('boolean'),
  stream_options: { type: ['object', 'null'], properties: { include_usage: maybe('boolean') } },
  temperature: num(0, 2), // OpenAI's range (the engine's has no upper bound)
  top_p: { type: ['number', 'null'], exclusiveMinimum: 0, maximum: ENGINE.maxTopP },
  top_k: int(ENGINE.minTopK),
  min_p: num(0, ENGINE.maxMinP),
  seed: { type: ['integer', 'null'] },
  presence_penalty: num(ENGINE.minPenalty, ENGINE.maxPenalty),
  frequency_penalty: num(ENGINE.minPenalty, ENGINE.maxPenalty),
  repetition_penalty: { type: ['number', 'null'], exclusiveMinimum: 0, maximum: 2 }, // vLLM's range (the engine's: > 0)
  ignore_eos: maybe('boolean'),
  min_tokens: int(0),
  include_stop_str_in_output: maybe('boolean'),
  skip_special_tokens: maybe('boolean'),
  return_tokens_as_token_ids: maybe('boolean'),
  priority: int(-(2 ** 31), 2 ** 31 - 1),
  user: maybe('string'),
  // Structured outputs: their shapes are checked by structured-output.ts, which names the field.
  response_format: { type: ['object', 'null'] },
};

export const chatCompletionSchema = {
  type: 'object',
  required: ['messages'],
  properties: {
    ...samplingProperties,
    messages: {
      type: 'array',
      minItems: 1,
      items: { type: 'object', required: ['role'], properties: { role: { type: 'string' } } },
    },
    max_completion_tokens: int(ENGINE.minMaxTokens),
    logprobs: maybe('boolean'),
    top_logprobs: int(0, ENGINE.maxLogprobs),
    chat_template_kwargs: maybe('object'),
    add_generation_prompt: maybe('boolean'),
  },
} as const;

export const completionSchema = {
  type: 'object',
  required: ['prompt'],
  properties: {
    ...samplingProperties,
    prompt: {
      description: 'a string, an array of token ids, an array of strings or an array of token id arrays (none empty)',
      anyOf: [
        { type: 'string' },
        { type: 'array', minItems: 1, items: { type: 'string' } },
        { type: 'array', minItems: 1, items: { type: 'integer' } },
        { type: 'array', minItems: 1, items: { type: 'array', minItems: 1, items: { type: 'integer' } } },
      ],
    },
    logprobs: int(0, ENGINE.maxLogprobs),
    echo: maybe('boolean'),
  },
} as const;
