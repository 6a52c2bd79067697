// structured.ts: `npm run bench:structured [-- launcher flags]`: what a JSON schema costs.
//
// One deployment (default: the 1B-shaped preset, llama-3.2-1b, one worker). Per batch size (1 and
// 16 by default), streamed completions of the same prompts:
//   plain        no schema: ignore_eos, max_tokens tokens each;
//   schema       guided_json with a schema that cannot end before max_tokens (an array of at
//                least that many small enum items), so both run the same number of steps;
//   mixed        half the batch with the schema, half without (the unconstrained half's TPOT is
//                what "leaves the others within noise" is about); not at batch 1.
// The modes take turns, round after round (--repeat rounds), against the machine's drift.
// TPOT = (E2E - TTFT) / (tokens - 1) per request, averaged. The worker's engine-thread waits for
// masks (GET /load: token_mask_wait_seconds / _steps) are read before and after each run.
// Then the compile time of a large schema (80 properties of every kind), on a matcher thread of
// this process with the served model's vocabulary, first compile and cached.
// Writes bench/results/structured-<date>.{json,md}.
import { ensureModel } from '../ts/modelgen/index.ts';
import { GrammarMatchers } from '../ts/grammar/grammar-service.ts';
import { loadGrammarVocabulary } from '../ts/grammar/vocabulary.ts';
import { streamCompletion, writeResult } from './common.ts';
import { withDeployment } from './serve/deployment.ts';
import { readyWorkers } from '../test/helpers/launcher.ts';
import fs from 'node:fs';

const argv = process.argv.slice(2);
const dash = argv.indexOf('--');
const own = dash < 0 ? argv : argv.slice(0, dash);
const launcherExtra = dash < 0 ? [] : argv.slice(dash + 1);
const flag = (name: string, dflt: string) => {
  const i = own.indexOf(`--${name}`);
  return i < 0 ? dflt : own[i + 1]!;
};
const batches = flag('batches', '1,16').split(',').map(Number);
const maxTokens = Number(flag('max-tokens', '64'));
const repeat = Number(flag('repeat', '2'));

const schema = {
  type: 'array',
  items: { enum: ['a', 'b', 'c', 'd'] },
  minItems: maxTokens,
  maxItems: maxTokens * 2,
};

interface Timing {
  tpotMs: number;
  ttftMs: number;
  tokens: number;
}

async function one(url: string, model: string, i: number, constrained: boolean): Promise<Timing> {
  const t0 = performance.now();
  let first = 0;
  let last = 0;
  let tokens = 0;
  const body = {
    model,
    prompt: `Request ${i}: list some letters.`,
    max_tokens: maxTokens,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
    ...(constrained ? { guided_json: schema } : { ignore_eos: true }),
  };
  await streamCompletion(url, body, (data, now) => {
    const choices = data.choices as unknown[] | undefined;
    if (choices && choices.length > 0) {
      if (first === 0) first = now;
      last = now;
    }
    const usage = data.usage as { completion_tokens: number } | undefined;
    if (usage) tokens = usage.completion_tokens;
  });
  return { ttftMs: first - t0, tpotMs: tokens > 1 ? (last - first) / (tokens - 1) : NaN, tokens };
}

interface Load {
  token_mask_wait_seconds?: number;
  token_mask_wait_steps?: number;
}

async function workerLoads(addresses: string[]): Promise<Load[]> {
  return Promise.all(addresses.map(async (a) => (await (await fetch(`${a}/load`)).json()) as Load));
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

async function main(): Promise<void> {
  const launcherArgs = launcherExtra.includes('--model') ? launcherExtra : ['--model', (await ensureModel('llama-3.2-1b')).dir, ...launcherExtra];
  if (!launcherArgs.includes('--kv-cache-memory')) launcherArgs.push('--kv-cache-memory', '256MiB');
  const modelDir = launcherArgs[launcherArgs.indexOf('--model') + 1]!;
  const rows: Record<string, unknown>[] = [];
  await withDeployment([...launcherArgs, '--log-level', 'info'], async (d) => {
    const model = ((await (await fetch(`${d.url}/v1/models`)).json()) as { data: { id: string }[] }).data[0]!.id;
    const workers = [...readyWorkers(d.output()).values()];
    await one(d.url, model, -1, true); // compiles the schema and warms both paths
    await one(d.url, model, -2, false);
    const modes = ['plain', 'schema', 'mixed'] as const;
    for (const batch of batches) {
      // Rounds interleave the modes (plain, schema, mixed, plain, ...), so a drift of the
      // machine's memory bandwidth falls on all three alike.
      const acc = modes.map(() => ({ plain: [] as number[], constrained: [] as number[], waitS: 0, waitSteps: 0 }));
      for (let r = 0; r < repeat; r++) {
        for (const [m, mode] of modes.entries()) {
          if (batch === 1 && mode === 'mixed') continue; // half of one request is none
          const before = await workerLoads(workers);
          await Promise.all(
            Array.from({ length: batch }, (_, i) => {
              const isConstrained = mode === 'schema' || (mode === 'mixed' && i % 2 === 1);
              return one(d.url, model, r * 1000 + i, isConstrained).then((t) => (isConstrained ? acc[m]!.constrained : acc[m]!.plain).push(t.tpotMs));
            }),
          );
          const after = await workerLoads(workers);
          acc[m]!.waitS += after.reduce((s, l, k) => s + (l.token_mask_wait_seconds ?? 0) - (before[k]?.token_mask_wait_seconds ?? 0), 0);
          acc[m]!.waitSteps += after.reduce((s, l, k) => s + (l.token_mask_wait_steps ?? 0) - (before[k]?.token_mask_wait_steps ?? 0), 0);
        }
      }
      for (const [m, mode] of modes.entries()) {
        const a = acc[m]!;
        if (a.plain.length + a.constrained.length === 0) continue;
        const row = {
          batch,
          mode,
          tpot_plain_ms: a.plain.length ? +mean(a.plain).toFixed(2) : null,
          tpot_schema_ms: a.constrained.length ? +mean(a.constrained).toFixed(2) : null,
          mask_wait_ms: +(a.waitS * 1000).toFixed(1),
          mask_wait_steps: a.waitSteps,
        };
        rows.push(row);
        console.log(JSON.stringify(row));
      }
    }
  });
  // The compile time of a large schema, first and cached.
  const info = (await import('../ts/native/index.ts')).inspectModel(modelDir);
  const vocab = await loadGrammarVocabulary(modelDir, info.vocabSize);
  const matchers = new GrammarMatchers({ modelDir, vocabSize: info.vocabSize, stopTokenIds: info.eosTokenIds });
  await matchers.start();
  const kinds = [
    { type: 'string', maxLength: 20 },
    { type: 'integer', minimum: 0, maximum: 1000 },
    { type: 'number', minimum: -5, maximum: 5 },
    { type: 'boolean' },
    { enum: ['x', 'y', 'z'] },
    { type: 'array', items: { type: 'string', pattern: '^[a-z]{1,8}$' }, maxItems: 4 },
    { type: 'object', properties: { a: { type: 'integer' }, b: { type: ['string', 'null'] } }, required: ['a'] },
    { anyOf: [{ type: 'integer' }, { type: 'string', maxLength: 4 }] },
  ];
  const properties = Object.fromEntries(Array.from({ length: 80 }, (_, i) => [`field_${i}`, kinds[i % kinds.length]]));
  const large = JSON.stringify({ type: 'object', properties, required: Object.keys(properties).filter((_, i) => i % 2 === 0) });
  const first = await matchers.open('large-1', { kind: 'json_schema', schema: large }, [], () => undefined);
  const cached = await matchers.open('large-2', { kind: 'json_schema', schema: large }, [], () => undefined);
  await matchers.shutdown();
  const compile = { schema_bytes: large.length, properties: 80, vocab: vocab.tokens.length, first_compile_ms: +first.compileMs.toFixed(1), cached_compile_ms: +cached.compileMs.toFixed(1) };
  console.log(JSON.stringify(compile));
  const md = [
    `# Structured outputs: TPOT with and without a JSON schema`,
    '',
    `max_tokens ${maxTokens}, ${repeat} rounds per row; launcher: ${launcherArgs.join(' ')}`,
    '',
    '| batch | mode | TPOT plain ms | TPOT schema ms | engine waited for masks ms (steps) |',
    '|---:|---|---:|---:|---:|',
    ...rows.map((r) => `| ${r.batch} | ${r.mode} | ${r.tpot_plain_ms ?? ''} | ${r.tpot_schema_ms ?? ''} | ${r.mask_wait_ms} (${r.mask_wait_steps}) |`),
    '',
    `Large schema (${compile.properties} properties, ${compile.schema_bytes} bytes, vocabulary ${compile.vocab}): first compile ${compile.first_compile_ms} ms, cached ${compile.cached_compile_ms} ms.`,
  ].join('\n');
  const result = { date: new Date().toISOString(), rows, compile, launcherArgs };
  const file = writeResult('structured', result);
  fs.writeFileSync(file.replace(/\.json$/, '.md'), md + '\n');
  console.log(md);
}

main().catch((err: Error) => {
  console.error(err.stack ?? err.message);
  process.exitCode = 1;
});
