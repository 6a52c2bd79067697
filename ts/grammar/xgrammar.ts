// xgrammar.ts: XGrammar (the structured-output library vLLM uses by default) in this thread, from
// its WebAssembly build on npm (@mlc-ai/web-xgrammar), and a GrammarSpec compiled with it.
//
// The package is a UMD bundle in a folder that says "type": "module", which Node can neither
// require() nor import; it is evaluated here as the CommonJS module it is, its one dynamic
// import (of node:module) answered from here, so it loads in any context. Its WebAssembly runs
// synchronously on the calling thread: only grammar-thread.ts loads it, never an event loop that
// serves requests.
//
// When XGrammar refuses its input (a schema it cannot read, a bad regex or EBNF), the C++ side
// prints "[FATAL] file:line: message" and aborts the call; the message is taken from what it
// printed (this thread's console.error is captured for that), and XGrammarError carries it. After
// such an abort the instance is not trusted any more (C++ destructors did not run): `poisoned`
// says so, and the thread that owns it is replaced.
import { readFileSync } from 'node:fs';
import * as nodeModule from 'node:module';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import type * as XG from '@mlc-ai/web-xgrammar';
import { prepareJsonSchema, spliceRules, type JsonSchema } from './json-schema.ts';
import { choiceEbnf, type GrammarSpec } from './spec.ts';

export type XGrammar = typeof XG;

export class XGrammarError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'XGrammarError';
  }
}

let loaded: XGrammar | undefined;
const printed: string[] = [];
export let poisoned = false;

export function loadXGrammar(): XGrammar {
  if (loaded) return loaded;
  const require = createRequire(import.meta.url);
  const entry = require.resolve('@mlc-ai/web-xgrammar');
  const source = readFileSync(entry, 'utf8').replace("import('module')", 'Promise.resolve(__nodeModule)');
  const module = { exports: {} as Record<string, unknown> };
  // What the bundle prints goes to `printed` (the reason of an abort); nothing else prints here.
  console.error = (...args: unknown[]) => {
    printed.push(args.map(String).join(' '));
    if (printed.length > 16) printed.shift();
  };
  // eslint-disable-next-line @typescript-eslint/no-implied-eval
  new Function('exports', 'require', 'module', '__filename', '__dirname', '__nodeModule', source).call(
    module.exports,
    module.exports,
    createRequire(entry),
    module,
    entry,
    dirname(entry),
    nodeModule,
  );
  loaded = module.exports as unknown as XGrammar;
  return loaded;
}

// Runs one XGrammar call; an abort becomes an XGrammarError with the reason XGrammar printed.
export async function guarded<T>(what: string, fn: () => Promise<T> | T): Promise<T> {
  printed.length = 0;
  try {
    return await fn();
  } catch (err) {
    const fatal = printed.find((line) => line.startsWith('[FATAL]'));
    if (fatal !== undefined || /Aborted/.test(String(err))) poisoned = true;
    // "[FATAL] /path/file.cc:123: Check failed: (...) is false: the reason" -> "the reason"
    const reason = fatal
      ? fatal.replace(/^\[FATAL\]\s+\S+:\d+:\s*/, '').replace(/^Check failed: \(.*?\) is false:\s*/, '')
      : (err as Error).message;
    throw new XGrammarError(`${what}: ${reason.trim()}`);
  }
}

// JSON output is compact, as Python's json.dumps writes it: ", " and ": " separators, no other
// whitespace. Unbounded whitespace would let a model pad its answer until max_tokens.
// A schema is followed strictly (no properties or items it does not list, as OpenAI's strict
// mode); json_object is any object.
const JSON_OPTIONS = [false, -1, [', ', ': '] as [string, string], true] as const;
const ANY_OBJECT = '{"type": "object"}';
const ANY_OBJECT_OPTIONS = [false, -1, [', ', ': '] as [string, string], false] as const;

// The grammar of a spec, without a vocabulary (what the frontend checks a request with).
export async function parseSpec(xg: XGrammar, spec: GrammarSpec): Promise<XG.Grammar> {
  return guarded(describe(spec), async () => {
    switch (spec.kind) {
      case 'json_schema': {
        const ebnf = await schemaEbnf(xg, spec.schema);
        return ebnf === undefined ? xg.Grammar.fromJSONSchema(spec.schema, ...JSON_OPTIONS) : xg.Grammar.fromEBNF(ebnf, 'root');
      }
      case 'json_object':
        return xg.Grammar.fromJSONSchema(ANY_OBJECT, ...ANY_OBJECT_OPTIONS);
      case 'regex':
        return xg.Grammar.fromStructuralTag({ type: 'structural_tag', format: { type: 'regex', pattern: spec.pattern } });
      case 'choice':
        return xg.Grammar.fromEBNF(choiceEbnf(spec.choices), 'root');
      case 'ebnf':
        return xg.Grammar.fromEBNF(spec.grammar, 'root');
    }
  });
}

// The spec compiled against a vocabulary (what a matcher needs).
export async function compileSpec(xg: XGrammar, compiler: XG.GrammarCompiler, spec: GrammarSpec): Promise<XG.CompiledGrammar> {
  return guarded(describe(spec), async () => {
    switch (spec.kind) {
      case 'json_schema': {
        const ebnf = await schemaEbnf(xg, spec.schema);
        return ebnf === undefined ? compiler.compileJSONSchema(spec.schema, ...JSON_OPTIONS) : compiler.compileGrammar(ebnf, 'root');
      }
      case 'json_object':
        return compiler.compileJSONSchema(ANY_OBJECT, ...ANY_OBJECT_OPTIONS);
      case 'regex':
        return compiler.compileStructuralTag({ type: 'structural_tag', format: { type: 'regex', pattern: spec.pattern } });
      case 'choice':
        return compiler.compileGrammar(choiceEbnf(spec.choices), 'root');
      case 'ebnf':
        return compiler.compileGrammar(spec.grammar, 'root');
    }
  });
}

// The schema checked against what XGrammar enforces (json-schema.ts); the EBNF to compile when
// it has numeric ranges, which this module writes itself; undefined when XGrammar can take the
// schema as it is.
async function schemaEbnf(xg: XGrammar, text: string): Promise<string | undefined> {
  const prepared = prepareJsonSchema(JSON.parse(text) as JsonSchema);
  if (prepared.rules.size === 0) return undefined;
  const ebnf = await xg.Testings._jsonSchemaToEBNF(JSON.stringify(prepared.schema), ...JSON_OPTIONS);
  return spliceRules(ebnf, prepared.rules);
}

function describe(spec: GrammarSpec): string {
  switch (spec.kind) {
    case 'json_schema':
      return 'invalid JSON schema';
    case 'json_object':
      return 'JSON object grammar';
    case 'regex':
      return 'invalid regex';
    case 'choice':
      return 'invalid choice';
    case 'ebnf':
      return 'invalid grammar';
  }
}
