// errors.ts: the processor's one table of error codes. Every error the processor throws on bad
// input or a bad model directory is a ProcessorError with a stable `code` and the HTTP status the
// frontend should answer with (4xx: the request is at fault; 5xx: the model directory is).
// Broken invariants of our own (a caller misusing the API) are plain assertion errors instead.

export const processorErrorStatus = {
  ERR_TOKENIZER_FILE_MISSING: 500,
  ERR_TOKENIZER_INVALID: 500,
  ERR_CHAT_TEMPLATE_INVALID: 500,
  ERR_NO_CHAT_TEMPLATE: 400,
  ERR_INVALID_MESSAGE: 400,
  ERR_CHAT_TEMPLATE_RENDER: 400,
  ERR_INVALID_TOKEN_ID: 400,
  ERR_EMPTY_PROMPT: 400,
  ERR_GENERATION_CONFIG_INVALID: 500,
} as const;

export type ProcessorErrorCode = keyof typeof processorErrorStatus;

export class ProcessorError extends Error {
  readonly status: number;

  constructor(
    readonly code: ProcessorErrorCode,
    message: string,
    // The request field at fault, in OpenAI's `param` form (`messages[1].role`), when there is one.
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = 'ProcessorError';
    this.status = processorErrorStatus[code];
  }
}
