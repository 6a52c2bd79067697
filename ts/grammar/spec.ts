// spec.ts: a structured-output grammar as requests carry it (GrammarSpec, ts/protocol), its cache
// key, and guided_choice as the EBNF XGrammar compiles.
import type { GrammarSpec } from '../protocol/index.ts';

export type { GrammarSpec };

// One key per distinct grammar: compiled grammars are cached under it.
export function specKey(spec: GrammarSpec): string {
  switch (spec.kind) {
    case 'json_schema':
      return `json_schema\0${spec.schema}`;
    case 'json_object':
      return 'json_object';
    case 'regex':
      return `regex\0${spec.pattern}`;
    case 'choice':
      return `choice\0${JSON.stringify(spec.choices)}`;
    case 'ebnf':
      return `ebnf\0${spec.grammar}`;
  }
}

// root ::= "first" | "second" | ...: each choice a quoted EBNF literal ('"', '\' and control
// characters escaped; other characters as they are, UTF-8).
export function choiceEbnf(choices: readonly string[]): string {
  return `root ::= ${choices.map(ebnfLiteral).join(' | ')}`;
}

function ebnfLiteral(text: string): string {
  let out = '"';
  for (const ch of text) {
    const code = ch.codePointAt(0)!;
    if (ch === '"' || ch === '\\') out += `\\${ch}`;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (code < 0x20 || code === 0x7f) out += `\\x${code.toString(16).padStart(2, '0')}`;
    else out += ch;
  }
  return `${out}"`;
}
