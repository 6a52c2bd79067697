// deployment.ts: the deployments the bench starts itself: the launcher (`npm run start`) with
// the given flags, on a free port unless --http-port is given, logging warnings only unless
// --log-level is given.
//
// Stays true: a deployment started here is stopped when its work ends, also when that work
// throws; on SIGINT/SIGTERM, stopChildren() stops every process this one started (started or
// still starting) and waits for them. A launcher that refuses its flags (exit status 2: a bad
// flag, or a feature that has not landed) is a LaunchRefused carrying the launcher's own words.
import { alive, childPids, freePort, launch, type Launched } from '../../test/helpers/launcher.ts';

export type { Launched };

export class LaunchRefused extends Error {
  constructor(readonly reason: string) {
    super(`the launcher refused: ${reason}`);
  }
}

let stopping = false;

export async function startDeployment(launcherArgs: readonly string[]): Promise<Launched> {
  const args = [...launcherArgs];
  if (!args.includes('--http-port')) args.push('--http-port', String(await freePort()));
  if (!args.includes('--log-level')) args.push('--log-level', 'warn');
  if (stopping) throw new Error('stopping: no new deployment');
  try {
    return await launch(args);
  } catch (err) {
    const m = /^launcher exited \(2\) before ready:\n([\s\S]*)$/.exec((err as Error).message);
    if (!m) throw err;
    const said = m[1]!.split('\n').filter((line) => line.startsWith('kvserve: '));
    throw new LaunchRefused((said.length ? said : [m[1]!.trim()]).map((line) => line.replace(/^kvserve: (error: )?/, '')).join('; '));
  }
}

export async function withDeployment<T>(launcherArgs: readonly string[], work: (d: Launched) => Promise<T>): Promise<T> {
  const d = await startDeployment(launcherArgs);
  try {
    return await work(d);
  } finally {
    await d.stop();
  }
}

// SIGTERM to every child of this process, then SIGKILL to those still alive after graceMs;
// no deployment starts after this.
export async function stopChildren(graceMs = 20_000): Promise<void> {
  stopping = true;
  const signal = (pid: number, sig: NodeJS.Signals) => {
    try {
      process.kill(pid, sig);
    } catch {
      // it has just exited
    }
  };
  const pids = childPids(process.pid);
  for (const pid of pids) signal(pid, 'SIGTERM');
  const deadline = performance.now() + graceMs;
  while (pids.some(alive) && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
  for (const pid of pids.filter(alive)) signal(pid, 'SIGKILL');
}
