// structured-output.ts: the request fields that constrain the output's shape -> one GrammarSpec,
// checked before any worker is used.
//
// Accepted, on both routes (as vLLM): response_format {type: "json_object"} or {type:
// "json_schema", json_schema: {name, schema, strict}}; guided_json (a schema object or its JSON
// text), guided_regex, guided_choice (strings), guided_grammar (XGrammar EBNF with a `root` rule);
// structured_outputs {json | regex | choice | grammar | json_object} (vLLM's newer spelling);
// guided_decoding_backend only as "xgrammar" (or "auto"). Tools add theirs (tools.ts).
// Stays true:
// - at most one of them per request, else a 400 naming both;
// - a spec XGrammar cannot parse is a 400 naming the field and XGrammar's reason;
// - ignore_eos and min_tokens > 0 are refused with one: once the grammar is complete only EOS may
//   follow, so neither could be honoured.
import type { GrammarChecker } from '../grammar/grammar-service.ts';
import { GrammarError } from '../grammar/grammar-service.ts';
import type { GrammarSpec } from '../grammar/spec.ts';
import { ApiError } from './errors.ts';

export interface StructuredOutputBody {
  response_format?: unknown;
  guided_json?: unknown;
  guided_regex?: unknown;
  guided_choice?: unknown;
  guided_grammar?: unknown;
  guided_decoding_backend?: unknown;
  structured_outputs?: unknown;
  ignore_eos?: boolean | null;
  min_tokens?: number | null;
}

// The spec a request's fields ask for (unchecked by XGrammar), with the field it came from.
export interface RequestedGrammar {
  spec: GrammarSpec;
  param: string;
}

const invalid = (message: string, param: string) => new ApiError('ERR_INVALID_REQUEST', message, param);

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

// A schema given as an object or as its JSON text -> its JSON text.
function schemaText(value: unknown, param: string): string {
  let schema = value;
  if (typeof value === 'string') {
    try {
      schema = JSON.parse(value);
    } catch (err) {
      throw invalid(`${param} is not valid JSON: ${(err as Error).message}`, param);
    }
  }
  if (!isObject(schema)) throw invalid(`${param} must be a JSON schema (an object, or its JSON text)`, param);
  return JSON.stringify(schema);
}

function choices(value: unknown, param: string): string[] {
  if (!Array.isArray(value) || value.length === 0 || !value.every((c) => typeof c === 'string')) {
    throw invalid(`${param} must be a non-empty array of strings`, param);
  }
  return value as string[];
}

function nonEmptyString(value: unknown, param: string, what: string): string {
  if (typeof value !== 'string' || value.length === 0) throw invalid(`${param} must be a non-empty string (${what})`, param);
  return value;
}

function fromResponseFormat(rf: unknown): RequestedGrammar | undefined {
  if (rf === undefined || rf === null) return undefined;
  if (!isObject(rf) || typeof rf.type !== 'string') throw invalid('response_format must be an object with a type', 'response_format');
  switch (rf.type) {
    case 'text':
      return undefined;
    case 'json_object':
      return { spec: { kind: 'json_object' }, param: 'response_format' };
    case 'json_schema': {
      const js = rf.json_schema;
      if (!isObject(js)) throw invalid('response_format.json_schema must be an object with name and schema', 'response_format.json_schema');
      if (js.schema === undefined || js.schema === null) {
        throw invalid('response_format.json_schema.schema is required', 'response_format.json_schema.schema');
      }
      return { spec: { kind: 'json_schema', schema: schemaText(js.schema, 'response_format.json_schema.schema') }, param: 'response_format.json_schema.schema' };
    }
    default:
      throw new ApiError(
        'ERR_UNSUPPORTED',
        `response_format type ${JSON.stringify(rf.type)} is not supported (text, json_object, json_schema)`,
        'response_format.type',
      );
  }
}

function fromStructuredOutputs(so: unknown): RequestedGrammar[] {
  if (so === undefined || so === null) return [];
  if (!isObject(so)) throw invalid('structured_outputs must be an object', 'structured_outputs');
  const out: RequestedGrammar[] = [];
  for (const [key, value] of Object.entries(so)) {
    if (value === undefined || value === null || value === false) continue;
    const param = `structured_outputs.${key}`;
    switch (key) {
      case 'json':
        out.push({ spec: { kind: 'json_schema', schema: schemaText(value, param) }, param });
        break;
      case 'json_object':
        out.push({ spec: { kind: 'json_object' }, param });
        break;
      case 'regex':
        out.push({ spec: { kind: 'regex', pattern: nonEmptyString(value, param, 'a regular expression') }, param });
        break;
      case 'choice':
        out.push({ spec: { kind: 'choice', choices: choices(value, param) }, param });
        break;
      case 'grammar':
        out.push({ spec: { kind: 'ebnf', grammar: nonEmptyString(value, param, "an EBNF grammar with a 'root' rule") }, param });
        break;
      case 'disable_any_whitespace':
      case 'disable_fallback':
      case 'disable_additional_properties':
        break; // the output is always compact, never falls back, follows the schema's own additionalProperties
      default:
        throw new ApiError('ERR_UNSUPPORTED', `${param} is not supported (json, json_object, regex, choice, grammar)`, param);
    }
  }
  return out;
}

// What the request asks for; throws a 400 for a malformed field or two at once.
export function requestedGrammar(body: StructuredOutputBody): RequestedGrammar | undefined {
  const backend = body.guided_decoding_backend;
  if (backend !== undefined && backend !== null && backend !== 'xgrammar' && backend !== 'auto') {
    throw new ApiError('ERR_UNSUPPORTED', `guided_decoding_backend ${JSON.stringify(backend)} is not supported (xgrammar)`, 'guided_decoding_backend');
  }
  const asked: RequestedGrammar[] = [];
  const rf = fromResponseFormat(body.response_format);
  if (rf) asked.push(rf);
  if (body.guided_json !== undefined && body.guided_json !== null) {
    asked.push({ spec: { kind: 'json_schema', schema: schemaText(body.guided_json, 'guided_json') }, param: 'guided_json' });
  }
  if (body.guided_regex !== undefined && body.guided_regex !== null) {
    asked.push({ spec: { kind: 'regex', pattern: nonEmptyString(body.guided_regex, 'guided_regex', 'a regular expression') }, param: 'guided_regex' });
  }
  if (body.guided_choice !== undefined && body.guided_choice !== null) {
    asked.push({ spec: { kind: 'choice', choices: choices(body.guided_choice, 'guided_choice') }, param: 'guided_choice' });
  }
  if (body.guided_grammar !== undefined && body.guided_grammar !== null) {
    asked.push({ spec: { kind: 'ebnf', grammar: nonEmptyString(body.guided_grammar, 'guided_grammar', "an EBNF grammar with a 'root' rule") }, param: 'guided_grammar' });
  }
  asked.push(...fromStructuredOutputs(body.structured_outputs));
  if (asked.length > 1) {
    throw invalid(`only one structured output may be asked for; this request has ${asked[0].param} and ${asked[1].param}`, asked[1].param);
  }
  return asked[0];
}

// The request's grammar, checked; undefined when it asks for none. `forced`: the grammar of a
// forced tool choice (tools.ts), which excludes any other.
export async function grammarOf(checker: GrammarChecker, body: StructuredOutputBody, forced?: RequestedGrammar): Promise<GrammarSpec | undefined> {
  const asked = requestedGrammar(body);
  if (asked && forced) {
    throw invalid(`${asked.param} cannot be combined with a forced tool_choice: the calls' arguments follow the tools' parameters`, asked.param);
  }
  const grammar = asked ?? forced;
  return grammar && checkGrammar(checker, body, grammar);
}

// The conflicts of a grammar with the request's sampling, then XGrammar's own check.
export async function checkGrammar(checker: GrammarChecker, body: StructuredOutputBody, asked: RequestedGrammar): Promise<GrammarSpec> {
  if (body.ignore_eos) {
    throw invalid(`ignore_eos cannot be combined with ${asked.param}: the output ends where the grammar is complete`, 'ignore_eos');
  }
  if ((body.min_tokens ?? 0) > 0) {
    throw invalid(`min_tokens cannot be combined with ${asked.param}: the output ends where the grammar is complete`, 'min_tokens');
  }
  try {
    await checker.check(asked.spec);
  } catch (err) {
    if (err instanceof GrammarError) throw invalid(err.message, asked.param);
    throw err;
  }
  return asked.spec;
}
