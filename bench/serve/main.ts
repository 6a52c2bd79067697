// main.ts: `npm run bench`: the serving benchmark (flags in flags.ts, `--help`).
//
//   npm run bench -- --url http://localhost:8181 [workload flags]   an existing endpoint
//   npm run bench -- [workload flags] [-- launcher flags]           a deployment of its own
//   npm run bench -- --concurrency 1,4,16,64 ...                    a sweep, one run per value
//   npm run bench -- --scenario router                              a scenario (scenarios.ts)
//   npm run bench -- --scenario soak --duration 30m                 the soak (soak.ts)
// Stays true: a deployment the bench started is stopped on every way out (done, error, Ctrl-C,
// SIGTERM). Exit status: 0 done (failed requests are reported, not fatal), 1 the target failed
// (unreachable, refused, crashed), 2 bad flags or a bad dataset, 130/143 interrupted.
import { buildDataset, DatasetError } from './datasets.ts';
import { withDeployment, stopChildren, LaunchRefused } from './deployment.ts';
import { BenchFlagError, describeWorkload, parseCli, resolveWorkload, USAGE, type CliOptions } from './flags.ts';
import { machineInfo, writeReport, type ReportGroup, type RunReport } from './report.ts';
import { endpointModel, measure, TargetError, type Measure } from './run.ts';
import { runScenario, SCENARIO_NAMES } from './scenarios.ts';
import { soakOptions } from './soak.ts';

// The runs: one, or one per --concurrency value; every sweep point gets its own dataset seed,
// so a point never finds the previous point's prompts in the prefix cache. Built before any
// deployment starts, so a bad dataset fails at once.
function plan(cli: CliOptions): { group: Omit<ReportGroup, 'runs'>; measures: Measure[] } {
  const workload = resolveWorkload(cli.flags);
  const measures = (cli.concurrency ?? [workload.maxConcurrency]).map((c, i) => {
    const options = { ...workload, maxConcurrency: c, seed: workload.seed + i };
    return { name: cli.concurrency ? `concurrency ${c}` : 'run', options, sessions: buildDataset(options) };
  });
  return { group: { title: cli.concurrency ? 'concurrency sweep' : 'run', workload: describeWorkload(workload), options: workload }, measures };
}

async function runAll(cli: CliOptions, url: string, measures: Measure[], launcherArgs: string[] | null): Promise<RunReport[]> {
  const model = await endpointModel(url, cli.model);
  const runs: RunReport[] = [];
  for (const m of measures) runs.push(await measure(url, model, m, launcherArgs));
  return runs;
}

async function main(argv: string[]): Promise<void> {
  const cli = parseCli(argv);
  if (cli.help) {
    process.stdout.write(USAGE);
    return;
  }
  const unknown = cli.scenarios?.filter((s) => !SCENARIO_NAMES.includes(s)) ?? [];
  if (unknown.length) throw new BenchFlagError(`--scenario: unknown ${unknown.join(', ')}; the scenarios: ${SCENARIO_NAMES.join(', ')}`);
  if (cli.scenarios?.includes('soak')) soakOptions(cli); // bad soak flags fail now, not after start-up
  const base = { date: new Date().toISOString(), command: ['npm run bench --', ...argv].join(' '), machine: machineInfo() };

  if (cli.scenarios) {
    for (const name of cli.scenarios) {
      const out = cli.outputJson && cli.scenarios.length > 1 ? cli.outputJson.replace(/(\.json)?$/, `-${name}.json`) : cli.outputJson;
      await writeReport(await runScenario(name, cli, { ...base, date: new Date().toISOString(), machine: machineInfo() }), out);
    }
    return;
  }
  const { group, measures } = plan(cli);
  const runs = cli.url
    ? await runAll(cli, cli.url, measures, null)
    : await withDeployment(cli.launcherArgs, (d) => runAll(cli, d.url, measures, cli.launcherArgs));
  const kind = cli.concurrency ? 'sweep' : 'serve';
  await writeReport({ ...base, kind, title: `npm run bench (${kind})`, target: cli.url ?? 'its own deployment', groups: [{ ...group, runs }] }, cli.outputJson);
}

for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
  process.once(signal, () => {
    process.stderr.write(`\nbench: ${signal}: stopping\n`);
    void stopChildren().finally(() => process.exit(code));
  });
}

main(process.argv.slice(2)).catch(async (err: Error) => {
  const usage = err instanceof BenchFlagError || err instanceof DatasetError;
  const known = usage || err instanceof TargetError || err instanceof LaunchRefused;
  process.stderr.write(`bench: ${known ? err.message : (err.stack ?? err.message)}\n`);
  await stopChildren();
  process.exitCode = usage ? 2 : 1;
});
