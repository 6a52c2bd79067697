// json-schema.ts: a request's JSON schema made into what XGrammar enforces exactly.
//
// XGrammar's converter (the WebAssembly build on npm) ignores some keywords (multipleOf, format,
// uniqueItems, not, if/then/else, ...) and gets numeric ranges wrong (integer 0..120 allows
// 121..129; number -1.5..2.5 allows -155). Served as they are, such schemas would give outputs
// that do not validate. So:
// - only the keywords in ENFORCED (and annotations) are accepted; any other is refused naming it
//   and where it is, before any worker is used;
// - a number or integer with minimum / maximum / exclusiveMinimum / exclusiveMaximum is taken out
//   of the schema (a placeholder string enum stands in for it), XGrammar converts the rest to
//   EBNF, and the placeholder's literal in that EBNF is replaced by a rule written here:
//     integers: exactly the integers of the range (the classic range-to-pattern split by digit
//       count and by aligned blocks);
//     numbers: the integers of the range, and decimals I.F (up to 6 fraction digits, no
//       exponent) whose every possible fraction stays in the range (at an exclusive integral
//       bound, the fractions that are not zero): every value produced
//       validates, though not every valid value can be produced (2.3 in [-1.5, 2.5] cannot).
// Enum and const values are checked against the range instead.
export type JsonSchema = Record<string, unknown>;

export class SchemaError extends Error {}

const ANNOTATIONS = new Set(['title', 'description', 'default', 'examples', '$schema', '$id', '$comment', 'deprecated', 'readOnly', 'writeOnly']);
const ENFORCED = new Set([
  'type', 'properties', 'required', 'additionalProperties', 'items', 'prefixItems', 'minItems', 'maxItems', 'enum', 'const',
  'anyOf', '$ref', '$defs', 'definitions', 'minLength', 'maxLength', 'pattern', 'minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum',
]);
const RANGE = ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum'] as const;
const MAX_BOUND = 1e15; // bounds beyond this are refused (integer rules are built from their digits)

export interface PreparedSchema {
  schema: JsonSchema; // for XGrammar's converter
  // Placeholder literal (as it appears in the converter's EBNF) -> [rule name, rule body].
  rules: Map<string, [string, string]>;
}

const isObject = (v: unknown): v is JsonSchema => typeof v === 'object' && v !== null && !Array.isArray(v);

export function prepareJsonSchema(schema: JsonSchema): PreparedSchema {
  const rules = new Map<string, [string, string]>();
  const walk = (node: unknown, at: string): unknown => {
    if (typeof node === 'boolean') return node;
    if (!isObject(node)) throw new SchemaError(`the schema at ${at || '/'} must be an object or a boolean`);
    const out: JsonSchema = {};
    for (const [key, value] of Object.entries(node)) {
      if (ANNOTATIONS.has(key)) continue;
      if (!ENFORCED.has(key)) {
        throw new SchemaError(`the JSON schema keyword "${key}" (at ${at || '/'}) is not supported: its constraint would not be enforced`);
      }
      out[key] = value;
    }
    for (const key of ['properties', '$defs', 'definitions'] as const) {
      if (out[key] === undefined) continue;
      if (!isObject(out[key])) throw new SchemaError(`"${key}" at ${at || '/'} must be an object`);
      out[key] = Object.fromEntries(Object.entries(out[key]).map(([k, v]) => [k, walk(v, `${at}/${key}/${k}`)]));
    }
    if (isObject(out.additionalProperties)) out.additionalProperties = walk(out.additionalProperties, `${at}/additionalProperties`);
    if (out.items !== undefined) out.items = walk(out.items, `${at}/items`);
    for (const key of ['prefixItems', 'anyOf'] as const) {
      if (out[key] === undefined) continue;
      if (!Array.isArray(out[key])) throw new SchemaError(`"${key}" at ${at || '/'} must be an array`);
      out[key] = (out[key] as unknown[]).map((v, i) => walk(v, `${at}/${key}/${i}`));
    }
    return RANGE.some((k) => out[k] !== undefined) ? withRange(out, at, rules) : out;
  };
  return { schema: walk(schema, '') as JsonSchema, rules };
}

// The EBNF XGrammar's converter wrote for `prepared.schema`, with each placeholder replaced by its rule.
export function spliceRules(ebnf: string, rules: PreparedSchema['rules']): string {
  let out = ebnf;
  for (const [literal, [name, body]] of rules) {
    if (!out.includes(literal)) throw new SchemaError(`internal: the number rule ${name} was not found in the converted grammar`);
    out = out.split(literal).join(name) + `\n${name} ::= ${body}`;
  }
  return out;
}

// ---- numeric ranges ----

interface Bounds {
  lo: number; // -Infinity = none
  hi: number; // Infinity = none
  loExclusive: boolean;
  hiExclusive: boolean;
}

function boundsOf(node: JsonSchema, at: string): Bounds {
  const num = (k: string): number | undefined => {
    const v = node[k];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new SchemaError(`"${k}" at ${at || '/'} must be a number`);
    if (Math.abs(v) > MAX_BOUND) throw new SchemaError(`"${k}" at ${at || '/'} is beyond ±${MAX_BOUND}, which is not supported`);
    return v;
  };
  let lo = -Infinity;
  let hi = Infinity;
  let loExclusive = false;
  let hiExclusive = false;
  const min = num('minimum');
  const max = num('maximum');
  const xmin = num('exclusiveMinimum');
  const xmax = num('exclusiveMaximum');
  if (min !== undefined) lo = min;
  if (xmin !== undefined && xmin >= lo) [lo, loExclusive] = [xmin, true];
  if (max !== undefined) hi = max;
  if (xmax !== undefined && xmax <= hi) [hi, hiExclusive] = [xmax, true];
  return { lo, hi, loExclusive, hiExclusive };
}

const inRange = (v: number, b: Bounds) => (b.loExclusive ? v > b.lo : v >= b.lo) && (b.hiExclusive ? v < b.hi : v <= b.hi);

function withRange(node: JsonSchema, at: string, rules: PreparedSchema['rules']): JsonSchema {
  const b = boundsOf(node, at);
  const rest: JsonSchema = Object.fromEntries(Object.entries(node).filter(([k]) => !(RANGE as readonly string[]).includes(k)));
  // Enum and const: their numbers are checked against the range here.
  if (rest.enum !== undefined || rest.const !== undefined) {
    const values = rest.const !== undefined ? [rest.const] : (rest.enum as unknown[]);
    const bad = values.find((v) => typeof v === 'number' && !inRange(v, b));
    if (bad !== undefined) throw new SchemaError(`the value ${bad} at ${at || '/'} is outside the schema's own range`);
    return rest;
  }
  const types = rest.type === undefined ? ['number'] : Array.isArray(rest.type) ? (rest.type as string[]) : [rest.type as string];
  const numeric = types.includes('number') ? 'number' : types.includes('integer') ? 'integer' : undefined;
  if (numeric === undefined) return rest; // range keywords on a non-number: nothing to enforce
  const name = `kvserve_${numeric}_${rules.size}`;
  const literal = `"\\"__${name}__\\""`;
  const body = numeric === 'integer' ? integerRule(b) : numberRule(b);
  if (body === undefined) throw new SchemaError(`the range at ${at || '/'} holds no ${numeric}`);
  rules.set(literal, [name, body]);
  const placeholder = { enum: [`__${name}__`] };
  const others = types.filter((t) => t !== 'number' && t !== 'integer');
  if (others.length === 0) return placeholder;
  return { anyOf: [placeholder, { ...rest, type: others.length === 1 ? others[0] : others }] };
}

// Integers in [lo, hi] (bounds already integral, either may be infinite) as EBNF alternatives.
function integerAlternatives(lo: number, hi: number): string[] {
  const alts: string[] = [];
  if (lo < 0) {
    // -m for m in [max(1, -hi), -lo]
    const mLo = hi >= -1 ? 1 : -hi;
    const mHi = -lo;
    if (mLo <= mHi) for (const a of nonNegative(mLo, mHi)) alts.push(`"-" ${a}`);
  }
  if (hi >= 0) alts.push(...nonNegative(Math.max(lo, 0), hi));
  return alts;
}

function integerRule(b: Bounds): string | undefined {
  const lo = b.lo === -Infinity ? -Infinity : b.loExclusive ? Math.floor(b.lo) + 1 : Math.ceil(b.lo);
  const hi = b.hi === Infinity ? Infinity : b.hiExclusive ? Math.ceil(b.hi) - 1 : Math.floor(b.hi);
  if (lo > hi) return undefined;
  const alts = integerAlternatives(lo, hi);
  return alts.length === 0 ? undefined : `(${alts.join(' | ')})`;
}

// Decimals: integers of the range, and I.F where every fraction F keeps I.F in the range.
function numberRule(b: Bounds): string | undefined {
  const alts: string[] = [];
  const ints = integerRule(b);
  if (ints !== undefined) alts.push(ints);
  const FRACTION = '"." [0-9]{1,6}';
  const NONZERO_FRACTION = '"." [0-9]{0,5} [1-9]';
  // Non-negative I: I.F in [I, I + 1) needs I >= lo (> lo when exclusive) and I + 1 <= hi.
  const iLo = Math.max(0, b.lo === -Infinity ? 0 : b.loExclusive ? Math.floor(b.lo) + 1 : Math.ceil(b.lo));
  const iHi = b.hi === Infinity ? Infinity : Math.floor(b.hi) - 1;
  if (iLo <= iHi) alts.push(`(${nonNegative(iLo, iHi).join(' | ')}) ${FRACTION}`);
  // An exclusive integral lower bound L >= 0: L.F with a fraction that is not zero.
  if (b.loExclusive && Number.isInteger(b.lo) && b.lo >= 0 && b.lo + 1 <= b.hi) alts.push(`"${b.lo}" ${NONZERO_FRACTION}`);
  // Negative: -I.F in (-(I + 1), -I] needs -(I + 1) >= lo and -I <= hi (< hi when exclusive).
  const nLo = b.hi === Infinity ? 0 : Math.max(0, b.hiExclusive ? Math.floor(-b.hi) + 1 : Math.ceil(-b.hi));
  const nHi = b.lo === -Infinity ? Infinity : Math.floor(-b.lo) - 1;
  if (nLo <= nHi) alts.push(`"-" (${nonNegative(nLo, nHi).join(' | ')}) ${FRACTION}`);
  // An exclusive integral upper bound -L <= 0: -L.F with a fraction that is not zero.
  if (b.hiExclusive && Number.isInteger(b.hi) && b.hi <= 0 && b.hi - 1 >= b.lo) alts.push(`"-${-b.hi}" ${NONZERO_FRACTION}`);
  return alts.length === 0 ? undefined : `(${alts.join(' | ')})`;
}

const digits = (n: number) => String(n).length;

// Non-negative integers in [a, b] (b may be Infinity), no leading zeros.
function nonNegative(a: number, b: number): string[] {
  const alts: string[] = [];
  if (b === Infinity) {
    const d = digits(a);
    alts.push(...nonNegative(a, 10 ** d - 1));
    alts.push(`[1-9] [0-9]{${d},}`);
    return alts;
  }
  for (let len = digits(a); len <= digits(b); len++) {
    const lo = Math.max(a, len === 1 ? 0 : 10 ** (len - 1));
    const hi = Math.min(b, 10 ** len - 1);
    if (lo <= hi) alts.push(...sameLength(String(lo), String(hi)));
  }
  return alts;
}

// Strings of one length between lo and hi, as sequences of EBNF atoms.
function sameLength(lo: string, hi: string): string[] {
  if (lo.length === 0) return [''];
  const rest = lo.length - 1;
  const anyRest = rest === 0 ? '' : rest === 1 ? ' [0-9]' : ` [0-9]{${rest}}`;
  const join = (head: string, tail: string) => (tail.length === 0 ? head : `${head} ${tail}`);
  const dl = Number(lo[0]);
  const dh = Number(hi[0]);
  if (dl === dh) return sameLength(lo.slice(1), hi.slice(1)).map((t) => join(`"${dl}"`, t));
  const alts: string[] = [];
  let start = dl;
  let end = dh;
  if (rest > 0 && !/^0*$/.test(lo.slice(1))) {
    alts.push(...sameLength(lo.slice(1), '9'.repeat(rest)).map((t) => join(`"${dl}"`, t)));
    start = dl + 1;
  }
  const hiTail: string[] = [];
  if (rest > 0 && !/^9*$/.test(hi.slice(1))) {
    hiTail.push(...sameLength('0'.repeat(rest), hi.slice(1)).map((t) => join(`"${dh}"`, t)));
    end = dh - 1;
  }
  if (start <= end) alts.push(`${start === end ? `"${start}"` : `[${start}-${end}]`}${anyRest}`);
  alts.push(...hiTail);
  return alts;
}
