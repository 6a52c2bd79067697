// errors.ts: the frontend's one table of error codes, and the conversion of every error a request
// can meet (ajv validation, fastify's body parsing, the processor, the request plane) into the
// OpenAI error body {"error": {"message", "type", "param", "code"}}.
//
// Stays true: bad input is always a 4xx with that body, never 422 and never a 500; a 5xx means
// the server or a worker failed. `code` in the body is the table row's OpenAI-style code.
import type { FastifyError } from 'fastify';
import { ProcessorError } from '../processor/index.ts';
import { RequestPlaneError } from '../runtime/request-client.ts';

export const apiErrors = {
  ERR_INVALID_REQUEST: { status: 400, type: 'invalid_request_error', code: 'invalid_value' },
  ERR_INVALID_JSON: { status: 400, type: 'invalid_request_error', code: 'invalid_json' },
  ERR_INVALID_UTF8: { status: 400, type: 'invalid_request_error', code: 'invalid_utf8' },
  ERR_EMPTY_BODY: { status: 400, type: 'invalid_request_error', code: 'empty_body' },
  ERR_CONTEXT_LENGTH_EXCEEDED: { status: 400, type: 'invalid_request_error', code: 'context_length_exceeded' },
  ERR_UNSUPPORTED: { status: 400, type: 'invalid_request_error', code: 'unsupported_parameter' },
  ERR_BAD_HTTP: { status: 400, type: 'invalid_request_error', code: 'invalid_http' },
  ERR_UNAUTHORIZED: { status: 401, type: 'invalid_request_error', code: 'invalid_api_key' },
  ERR_MODEL_NOT_FOUND: { status: 404, type: 'invalid_request_error', code: 'model_not_found' },
  ERR_ROUTE_NOT_FOUND: { status: 404, type: 'invalid_request_error', code: 'not_found' },
  ERR_BODY_TOO_LARGE: { status: 413, type: 'invalid_request_error', code: 'body_too_large' },
  ERR_UNSUPPORTED_MEDIA_TYPE: { status: 415, type: 'invalid_request_error', code: 'unsupported_media_type' },
  ERR_REQUEST_TIMEOUT: { status: 408, type: 'invalid_request_error', code: 'request_timeout' },
  ERR_HEADERS_TOO_LARGE: { status: 431, type: 'invalid_request_error', code: 'headers_too_large' },
  ERR_CANCELLED: { status: 499, type: 'invalid_request_error', code: 'client_closed_request' },
  ERR_INTERNAL: { status: 500, type: 'server_error', code: 'internal_error' },
  ERR_WORKER_FAILED: { status: 502, type: 'server_error', code: 'worker_error' },
  ERR_NO_WORKER: { status: 503, type: 'service_unavailable_error', code: 'no_worker_available' },
  ERR_WORKER_UNAVAILABLE: { status: 503, type: 'service_unavailable_error', code: 'worker_unavailable' },
  ERR_SHUTTING_DOWN: { status: 503, type: 'service_unavailable_error', code: 'shutting_down' },
  ERR_OVERLOADED: { status: 503, type: 'service_unavailable_error', code: 'overloaded' },
  ERR_DEADLINE_EXCEEDED: { status: 504, type: 'server_error', code: 'deadline_exceeded' },
} as const;

// Seconds a client should wait before retrying a 503 (the Retry-After header): an overloaded
// server frees room within a moment; the other states last longer.
export function retryAfterSeconds(code: ApiErrorCode): number | undefined {
  if (code === 'ERR_OVERLOADED') return 1;
  return apiErrors[code].status === 503 ? 5 : undefined;
}

export type ApiErrorCode = keyof typeof apiErrors;

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string };
}

export class ApiError extends Error {
  readonly status: number;

  constructor(
    readonly code: ApiErrorCode,
    message: string,
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = 'ApiError';
    this.status = apiErrors[code].status;
  }

  body(): ErrorBody {
    const row = apiErrors[this.code];
    return { error: { message: this.message, type: row.type, param: this.param, code: row.code } };
  }
}

// fastify's own errors, by code.
const fastifyCodes: Record<string, ApiErrorCode> = {
  FST_ERR_CTP_INVALID_JSON_BODY: 'ERR_INVALID_JSON',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'ERR_EMPTY_BODY',
  FST_ERR_CTP_BODY_TOO_LARGE: 'ERR_BODY_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'ERR_UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_EMPTY_TYPE: 'ERR_UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'ERR_INVALID_REQUEST',
};

export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof ProcessorError) {
    return new ApiError(err.status < 500 ? 'ERR_INVALID_REQUEST' : 'ERR_INTERNAL', err.message, err.param);
  }
  if (err instanceof RequestPlaneError) return fromRequestPlane(err);
  const fe = err as Partial<FastifyError>;
  if (fe.validation && fe.validation.length > 0) {
    // ajv reports each failed anyOf branch before the anyOf itself: the anyOf says it best.
    const issues = fe.validation as unknown as ValidationIssue[];
    return fromValidation(issues.find((i) => i.keyword === 'anyOf') ?? issues[0]);
  }
  const mapped = fe.code ? fastifyCodes[fe.code] : undefined;
  if (mapped) return new ApiError(mapped, fe.message ?? mapped);
  if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    return new ApiError('ERR_INVALID_REQUEST', fe.message ?? 'bad request');
  }
  return new ApiError('ERR_INTERNAL', `internal error: ${(err as Error)?.message ?? String(err)}`);
}

// A worker's refusal: its ERR_REQUEST_* codes are the request's fault.
function fromRequestPlane(err: RequestPlaneError): ApiError {
  if (err.code === 'ERR_REQUEST_TOO_LONG') return new ApiError('ERR_CONTEXT_LENGTH_EXCEEDED', err.message);
  if (err.status >= 400 && err.status < 500) return new ApiError('ERR_INVALID_REQUEST', err.message);
  if (err.status === 503) return new ApiError('ERR_WORKER_UNAVAILABLE', err.message); // a worker that was chosen, then lost
  return new ApiError('ERR_WORKER_FAILED', `${err.code}: ${err.message}`);
}

// One ajv error (fastify's ajv runs with verbose: true, so parentSchema is there). A property's
// schema may carry a `description` of what it accepts: anyOf failures quote it.
interface ValidationIssue {
  keyword: string;
  instancePath: string;
  message?: string;
  params: Record<string, unknown>;
  parentSchema?: { description?: string };
}

function fromValidation(issue: ValidationIssue): ApiError {
  const path = issue.instancePath
    .split('/')
    .slice(1)
    .map((p, i) => (/^\d+$/.test(p) ? `[${p}]` : i === 0 ? p : `.${p}`))
    .join('');
  const missing = issue.keyword === 'required' ? String(issue.params.missingProperty) : undefined;
  const param = missing ? (path ? `${path}.${missing}` : missing) : path || null;
  const what =
    issue.keyword === 'anyOf' && issue.parentSchema?.description
      ? `must be ${issue.parentSchema.description}`
      : issue.keyword === 'type'
        ? `must be of type ${String(issue.params.type).replace(',null', '').replace(',', ' or ')}`
        : issue.message;
  const message = missing ? `'${param}' is a required property` : param === null ? `the request body ${what}` : `'${param}' ${what}`;
  return new ApiError('ERR_INVALID_REQUEST', message, param);
}
