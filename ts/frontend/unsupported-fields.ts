// unsupported-fields.ts: request fields that OpenAI or vLLM define, that would change the answer,
// and that this server does not implement. A request carrying one with a value other than its
// neutral one gets a 400 naming it, before any work: it must never be served as if the field
// were absent. Fields that only label or route a request (user, metadata, store, service_tier)
// are not here: the schemas let them through (priority is implemented: request-params.ts).
import { ApiError } from './errors.ts';

type Neutral = 'null' | 'false' | 'empty' | 'one' | 'none' | 'true';

interface Refused {
  field: string;
  neutral: Neutral; // besides absent and null, the value that is accepted
  what: string;
}

// Both routes.
const COMMON: Refused[] = [
  { field: 'logit_bias', neutral: 'empty', what: 'logit_bias is not supported' },
  { field: 'best_of', neutral: 'one', what: 'best_of other than 1 is not supported' },
  { field: 'use_beam_search', neutral: 'false', what: 'beam search is not supported' },
  { field: 'length_penalty', neutral: 'one', what: 'length_penalty is used only by beam search, which is not supported' },
  { field: 'prompt_logprobs', neutral: 'null', what: 'prompt_logprobs is not supported' },
  { field: 'allowed_token_ids', neutral: 'null', what: 'allowed_token_ids is not supported' },
  { field: 'bad_words', neutral: 'empty', what: 'bad_words is not supported' },
  { field: 'truncate_prompt_tokens', neutral: 'null', what: 'truncate_prompt_tokens is not supported' },
  { field: 'logits_processors', neutral: 'empty', what: 'logits_processors is not supported' },
  { field: 'guided_whitespace_pattern', neutral: 'null', what: 'guided_whitespace_pattern is not supported (structured JSON output is compact)' },
  { field: 'spaces_between_special_tokens', neutral: 'true', what: 'spaces_between_special_tokens: false is not supported' },
];

const CHAT: Refused[] = [
  { field: 'functions', neutral: 'empty', what: 'function calling is not supported' },
  { field: 'function_call', neutral: 'none', what: 'function calling is not supported' },
  { field: 'include_reasoning', neutral: 'true', what: 'include_reasoning: false is not supported' },
  { field: 'continue_final_message', neutral: 'false', what: 'continue_final_message is not supported' },
  { field: 'chat_template', neutral: 'null', what: "a chat template in the request is not supported (the model's own is used)" },
  { field: 'documents', neutral: 'empty', what: 'documents are not supported' },
  { field: 'reasoning_effort', neutral: 'null', what: 'reasoning_effort is not supported' },
  { field: 'audio', neutral: 'null', what: 'audio output is not supported' },
  { field: 'modalities', neutral: 'null', what: 'output modalities are not supported' },
  { field: 'prediction', neutral: 'null', what: 'predicted outputs are not supported' },
  { field: 'echo', neutral: 'false', what: 'echo is not supported on chat completions' },
];

const COMPLETIONS: Refused[] = [
  { field: 'suffix', neutral: 'null', what: 'suffix is not supported' },
];

function isNeutral(value: unknown, neutral: Neutral): boolean {
  if (value === undefined || value === null) return true;
  switch (neutral) {
    case 'null': return false;
    case 'false': return value === false;
    case 'true': return value === true;
    case 'one': return value === 1;
    case 'none': return value === 'none';
    case 'empty':
      return (Array.isArray(value) && value.length === 0) ||
        (typeof value === 'object' && !Array.isArray(value) && Object.keys(value as object).length === 0);
  }
}

// Throws ERR_UNSUPPORTED (400, param = the field) for the first such field in `body`.
export function refuseUnsupportedFields(body: object, route: 'chat' | 'completions'): void {
  const record = body as Record<string, unknown>;
  for (const r of [...COMMON, ...(route === 'chat' ? CHAT : COMPLETIONS)]) {
    if (!isNeutral(record[r.field], r.neutral)) throw new ApiError('ERR_UNSUPPORTED', r.what, r.field);
  }
}
