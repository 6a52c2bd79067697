// tools.ts: a chat request's `tools`, `tool_choice` and `parallel_tool_calls` -> what the prompt,
// the grammar and the response do with them (as vLLM's OpenAI server does).
//
//   tool_choice            prompt            grammar                           answer
//   none                   tools listed      none                              content only
//   auto (the default      tools listed      none                              --tool-call-parser finds
//     when tools are given)                                                    calls in the text
//   required               tools listed      [{"name", "parameters"}, ...]     tool_calls; finish_reason
//                                            (one item without parallel calls)   "tool_calls"
//   {function: {name}}     tools listed      that function's parameters        one tool call; finish_reason
//                                                                              "stop" (as vLLM, OpenAI)
// `auto` needs --enable-auto-tool-choice and --tool-call-parser (a 400 says so otherwise, as vLLM),
// and a chat template that shows the tools to the model (Llama 3.0's does not: a 400 says so).
// A tool's parameters must be a JSON schema of an object (absent: any object). A request with a
// forced tool choice and a structured output as well is refused (two grammars).
import {
  NamedCallExtractor,
  RequiredCallsExtractor,
  autoCallExtractor,
  type ToolCallExtractor,
  type ToolCallParserName,
} from '../processor/index.ts';
import { ApiError } from './errors.ts';
import type { RequestedGrammar } from './structured-output.ts';

export interface ToolSettings {
  enableAutoToolChoice: boolean; // --enable-auto-tool-choice
  toolCallParser?: ToolCallParserName; // --tool-call-parser
}

export interface ToolFunction {
  name: string;
  description?: string;
  parameters?: Record<string, unknown>;
  strict?: boolean;
}

export interface ToolsBody {
  tools?: unknown;
  tool_choice?: unknown;
  parallel_tool_calls?: boolean | null;
}

export interface ToolPlan {
  // What the chat template gets as `tools` (OpenAI's shape), or undefined.
  templateTools?: { type: 'function'; function: ToolFunction }[];
  grammar?: RequestedGrammar;
  // A fresh extractor per choice; undefined = the answer is content only.
  extractor?: () => ToolCallExtractor;
  // Whether an answer with calls finishes as "tool_calls" (not for a named function).
  finishAsToolCalls: boolean;
}

const invalid = (message: string, param: string) => new ApiError('ERR_INVALID_REQUEST', message, param);

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseTools(tools: unknown): ToolFunction[] {
  if (!Array.isArray(tools)) throw invalid('tools must be an array of {type: "function", function: {...}}', 'tools');
  return tools.map((t, i) => {
    const at = `tools[${i}]`;
    if (!isObject(t) || t.type !== 'function' || !isObject(t.function)) {
      throw invalid(`${at} must be {type: "function", function: {name, description, parameters}}`, at);
    }
    const f = t.function;
    if (typeof f.name !== 'string' || !/^[a-zA-Z0-9_.-]{1,64}$/.test(f.name)) {
      throw invalid(`${at}.function.name must be 1 to 64 letters, digits, underscores, dots or dashes`, `${at}.function.name`);
    }
    if (f.parameters !== undefined && f.parameters !== null) {
      if (!isObject(f.parameters)) throw invalid(`${at}.function.parameters must be a JSON schema object`, `${at}.function.parameters`);
      if (f.parameters.type !== undefined && f.parameters.type !== 'object') {
        throw invalid(`${at}.function.parameters must describe an object (type "object")`, `${at}.function.parameters.type`);
      }
    }
    const out: ToolFunction = { name: f.name };
    if (typeof f.description === 'string') out.description = f.description;
    if (isObject(f.parameters)) out.parameters = f.parameters;
    if (typeof f.strict === 'boolean') out.strict = f.strict;
    return out;
  });
}

const parametersSchema = (f: ToolFunction) => ({ type: 'object', ...(f.parameters ?? {}) });

// rendersTools: the model's chat template shows the tools to the model (ChatTemplate.rendersTools).
export function planTools(body: ToolsBody, settings: ToolSettings, rendersTools: boolean): ToolPlan {
  const hasTools = body.tools !== undefined && body.tools !== null && !(Array.isArray(body.tools) && body.tools.length === 0);
  const tools = hasTools ? parseTools(body.tools) : [];
  const choice = body.tool_choice ?? (hasTools ? 'auto' : 'none');
  const templateTools = hasTools ? tools.map((f) => ({ type: 'function' as const, function: f })) : undefined;
  if (choice === 'none') return { templateTools, finishAsToolCalls: false };
  if (!hasTools) throw invalid(`tool_choice ${JSON.stringify(choice)} needs tools`, 'tool_choice');

  if (choice === 'auto') {
    if (!settings.enableAutoToolChoice || settings.toolCallParser === undefined) {
      throw invalid('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set', 'tool_choice');
    }
    if (!rendersTools) {
      throw invalid(`this model's chat template does not show tools to the model, so "auto" could not call them; use tool_choice "required" or a named function`, 'tool_choice');
    }
    const parser = settings.toolCallParser;
    return { templateTools, extractor: () => autoCallExtractor(parser), finishAsToolCalls: true };
  }

  if (choice === 'required') {
    const item = (f: ToolFunction) => ({
      type: 'object',
      properties: { name: { const: f.name }, parameters: parametersSchema(f) },
      required: ['name', 'parameters'],
      additionalProperties: false,
    });
    const schema = {
      type: 'array',
      items: tools.length === 1 ? item(tools[0]) : { anyOf: tools.map(item) },
      minItems: 1,
      ...(body.parallel_tool_calls === false ? { maxItems: 1 } : {}),
    };
    return {
      templateTools,
      grammar: { spec: { kind: 'json_schema', schema: JSON.stringify(schema) }, param: 'tool_choice' },
      extractor: () => new RequiredCallsExtractor(),
      finishAsToolCalls: true,
    };
  }

  if (isObject(choice) && choice.type === 'function' && isObject(choice.function) && typeof choice.function.name === 'string') {
    const name = choice.function.name;
    const f = tools.find((t) => t.name === name);
    if (!f) throw invalid(`tool_choice names the function ${JSON.stringify(name)}, which is not in tools`, 'tool_choice.function.name');
    return {
      templateTools,
      grammar: { spec: { kind: 'json_schema', schema: JSON.stringify(parametersSchema(f)) }, param: 'tool_choice' },
      extractor: () => new NamedCallExtractor(name),
      finishAsToolCalls: false,
    };
  }
  throw invalid('tool_choice must be "none", "auto", "required" or {type: "function", function: {name}}', 'tool_choice');
}
