// bench/faults/main.ts: `npm run test:faults -- [--case TEXT] [--streams N]`: runs every
// fault-injection case (cases.ts; one case: run.ts) against a real deployment under steady
// streaming load, prints the table (requests sent, correct, failed cleanly, hung, wrong, KV
// blocks leaked) and what each case noticed, writes it to bench/results/faults-<time>.json, and
// exits 1 if a case broke its pass rule. --case runs the cases whose name contains TEXT.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { cases } from './cases.ts';
import { resultsDir, runCase, type CaseResult } from './run.ts';

const { values: args } = parseArgs({ options: { case: { type: 'string' }, streams: { type: 'string', default: '6' } } });
const streams = Number(args.streams);
if (!Number.isInteger(streams) || streams < 1) {
  console.error(`--streams must be an integer >= 1, got '${args.streams}'`);
  process.exit(2);
}
const chosen = cases.filter((c) => args.case === undefined || c.name.includes(args.case));
if (chosen.length === 0) {
  console.error(`no case matches '${args.case}'; the cases:\n${cases.map((c) => `  ${c.name}`).join('\n')}`);
  process.exit(2);
}

const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
console.log(`fault injection: ${chosen.length} cases, ${streams} streaming clients each, tiny model, reference kernels (the heavy-request case: this CPU's default path), ${cpu}\n`);
const results: CaseResult[] = [];
for (const c of chosen) {
  process.stdout.write(`${c.name} ... `);
  let r: CaseResult;
  try {
    r = await runCase(c, { streams });
  } catch (err) {
    r = { name: c.name, pass: false, seconds: 0, notes: [`the case could not run: ${(err as Error).message.split('\n')[0]}`], sent: 0, ok: 0, failed: 0, hung: 0, wrong: 0, leaked: 0, ttftMs: [], failures: new Map() };
  }
  results.push(r);
  console.log(r.skipped ? `SKIP (${r.skipped})` : `${r.pass ? 'pass' : 'FAIL'} (${r.seconds.toFixed(0)} s)`);
}

const row = (cells: (string | number)[]) => `| ${cells.join(' | ')} |`;
console.log(`\n${row(['case', 'sent', 'correct', 'failed cleanly', 'hung', 'wrong', 'blocks leaked', 'result'])}`);
console.log(row(['---', '---:', '---:', '---:', '---:', '---:', '---:', '---']));
for (const r of results) {
  if (r.skipped) console.log(row([r.name, '', '', '', '', '', '', `SKIP: ${r.skipped}`]));
  else console.log(row([r.name, r.sent, r.ok, r.failed, r.hung, r.wrong, r.leaked, r.pass ? 'pass' : 'FAIL']));
}
console.log('');
for (const r of results) {
  const failures = [...r.failures].map(([k, v]) => `${k} x${v}`).join(', ');
  const lines = [...r.notes, ...(failures ? [`failures: ${failures}`] : [])];
  if (lines.length > 0) console.log(`${r.name}:\n${lines.map((l) => `  - ${l}`).join('\n')}`);
}
fs.mkdirSync(resultsDir, { recursive: true });
const file = path.join(resultsDir, `faults-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
fs.writeFileSync(file, JSON.stringify({ cpu, streams, results: results.map((r) => ({ ...r, failures: Object.fromEntries(r.failures), ttftMs: undefined })) }, null, 2));
console.log(`\nwritten to ${path.relative(process.cwd(), file)}`);
process.exit(results.every((r) => r.pass) ? 0 : 1);
