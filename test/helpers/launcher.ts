// launcher.ts (test helper): runs the real launcher (`npm run start` = ts/launcher/main.ts) as
// a child process, waits for its "ready:" line, and stops it; also a fake local Hugging Face
// cache holding a generated model under a real model id.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { packageRoot } from '../../ts/native/loader.ts';

export { freePort } from '../../ts/launcher/ports.ts';

export interface Launched {
  proc: ChildProcess;
  url: string; // its frontend's; '' for a node without one
  output: () => string;
  exited: Promise<number | null>;
  stop: (signal?: NodeJS.Signals) => Promise<number | null>;
}

// Starts the launcher with args; resolves once it prints "ready: URL" (rejects if it exits first).
export async function launch(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 180_000): Promise<Launched> {
  return untilReady('launcher', process.execPath, ['--import', 'tsx', path.join(packageRoot, 'ts/launcher/main.ts'), ...args], env, timeoutMs);
}

// The same for a node without a frontend (`--role worker` or `prefill`): ready once it prints
// "ready: N worker(s) ..."; its url is ''.
export async function launchNode(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 180_000): Promise<Launched> {
  const entry = path.join(packageRoot, 'ts/launcher/main.ts');
  return untilReady('worker node', process.execPath, ['--import', 'tsx', entry, ...args], env, timeoutMs, /ready: \d+ (?:decode |prefill )?workers? /);
}

// The same through `npm run start -- ARGS`, as a user starts it: signals go to the npm process.
export async function launchNpm(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 180_000): Promise<Launched> {
  return untilReady('npm run start', 'npm', ['run', '--silent', 'start', '--', ...args], env, timeoutMs);
}

// ready: the line that says so; its first group, if any, is the url.
async function untilReady(what: string, command: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number, ready = /ready: (http:\/\/\S+)/): Promise<Launched> {
  const proc = spawn(command, args, { cwd: packageRoot, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} not ready in time:\n${out}`)), timeoutMs);
    const onData = () => {
      const m = ready.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1] ?? '');
      }
    };
    proc.stdout!.on('data', onData);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited (${code}) before ready:\n${out}`));
    });
  });
  return {
    proc,
    url,
    output: () => out,
    exited,
    stop: async (signal = 'SIGTERM') => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
  };
}

// Polls check() every everyMs until it holds (a throw counts as not yet); throws naming `what`
// when timeoutMs pass first.
export async function until(what: string, check: () => Promise<boolean>, timeoutMs = 20_000, everyMs = 200): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`timed out waiting for ${what}`);
}

// The value of the first line of a deployment's /metrics that starts with `name` (a series
// with its labels, or a metric without); NaN where none does.
export async function metricValue(l: { url: string }, name: string): Promise<number> {
  const text = await (await fetch(`${l.url}/metrics`)).text();
  const line = text.split('\n').find((x) => x.startsWith(name));
  return Number(line?.split(' ').pop() ?? NaN);
}

// Runs the launcher to completion (for flags that make it exit at once).
export async function runLauncher(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; output: string }> {
  const proc = spawn(process.execPath, ['--import', 'tsx', path.join(packageRoot, 'ts/launcher/main.ts'), ...args], {
    cwd: packageRoot,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  proc.stdout!.on('data', (d) => (output += d));
  proc.stderr!.on('data', (d) => (output += d));
  const code = await new Promise<number | null>((resolve) => proc.once('exit', (c) => resolve(c)));
  return { code, output };
}

// A fake HF hub cache: <root>/models--ORG--NAME/snapshots/<rev>/ -> a copy of modelDir, with
// refs/main naming the revision, exactly the layout huggingface_hub writes.
export function fakeHfCache(modelId: string, modelDir: string): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'kvserve-hf-'));
  const [org, name] = modelId.split('/');
  const repo = path.join(root, `models--${org}--${name}`);
  const rev = '0123456789abcdef0123456789abcdef01234567';
  const snap = path.join(repo, 'snapshots', rev);
  fs.mkdirSync(snap, { recursive: true });
  fs.mkdirSync(path.join(repo, 'refs'));
  fs.writeFileSync(path.join(repo, 'refs', 'main'), rev);
  for (const f of fs.readdirSync(modelDir)) fs.symlinkSync(path.join(modelDir, f), path.join(snap, f));
  return root;
}

// Whether a process id is alive.
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

// /proc/PID/FILE as text; '' when it cannot be read (the process has ended).
export function procFile(pid: number, file: string): string {
  try {
    return fs.readFileSync(`/proc/${pid}/${file}`, 'utf8');
  } catch {
    return '';
  }
}

// The parent of pid from /proc/PID/stat; NaN when it has ended.
export function parentPid(pid: number): number {
  const stat = procFile(pid, 'stat');
  return stat ? Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) : NaN;
}

// Pids of the processes whose parent is pid.
export function childPids(pid: number): number[] {
  return fs
    .readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d) && parentPid(Number(d)) === pid)
    .map(Number);
}

// The workers a launcher's output says are ready, by name (worker-N, decode-N, prefill-N), each at
// its latest address.
export function readyWorkers(output: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of output.matchAll(/((?:worker|decode|prefill)-\d+) \(\w+\) ready at (http:\/\/\S+)/g)) out.set(m[1]!, m[2]!);
  return out;
}
