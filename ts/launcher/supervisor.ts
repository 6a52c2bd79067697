// supervisor.ts: starts and watches the launcher's child processes (workers, frontend).
//
// Owns: every child process. Each child is a Node process running one of our TS entry points
// with an IPC channel; children exit by themselves when that channel closes, so even a
// launcher killed with SIGKILL leaves no orphan behind. A child reports {type: 'ready'} once it
// serves and {type: 'fatal', message} when it cannot start: the supervisor keeps both on the
// Child, so the launcher can tell a crash of a serving child from a failed start.
// Stays true: after stopAll() resolves, no child is alive and no restart is pending (a drain:
// SIGTERM, which the children take as "finish what you have", to a `first` group, awaited, then
// to the rest, each given the drain's grace; else SIGINT, "stop now", to all, given graceMs;
// SIGKILL after the grace). A child that exits while we are not stopping is reported to onExit,
// after the shared-memory segments it named after its pid are removed.
import { fork, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { packageRoot } from '../native/loader.ts';

export interface ChildSpec {
  name: string; // e.g. worker-0, frontend
  entry: string; // path relative to the package root, e.g. ts/worker/main.ts
  config: unknown; // passed as --config '<json>'
  env?: Record<string, string>; // added to the environment (secrets go here, not in config)
}

export interface Child {
  spec: ChildSpec;
  process: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  ready: boolean; // it said {type: 'ready'}
  fatal?: string; // what its {type: 'fatal'} message said
}

export class Supervisor {
  private readonly children = new Map<string, Child>();
  private readonly pending = new Set<NodeJS.Timeout>();
  private stopping = false;

  constructor(
    private readonly onExit: (child: Child, code: number | null, signal: NodeJS.Signals | null) => void,
    private readonly graceMs = 10_000,
    private readonly onReady?: (child: Child) => void,
  ) {}

  get isStopping(): boolean {
    return this.stopping;
  }

  start(spec: ChildSpec): Child {
    const proc = fork(path.join(packageRoot, spec.entry), ['--config', JSON.stringify(spec.config)], {
      cwd: packageRoot,
      execArgv: ['--import', 'tsx'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      env: { ...process.env, ...spec.env, KVSERVE_PROCESS: spec.name },
    });
    const child: Child = { spec, process: proc, exited: undefined as never, ready: false };
    proc.on('message', (m: { type?: string; message?: string }) => {
      if (m?.type === 'ready' && !child.ready) {
        child.ready = true;
        this.onReady?.(child);
      } else if (m?.type === 'fatal') child.fatal = m.message;
    });
    child.exited = new Promise((resolve) => {
      proc.once('exit', (code, signal) => {
        if (this.children.get(spec.name)?.process === proc) this.children.delete(spec.name);
        if (proc.pid !== undefined) removeSegmentsOf(proc.pid);
        resolve({ code, signal });
        if (!this.stopping) this.onExit(child, code, signal);
      });
    });
    this.children.set(spec.name, child);
    return child;
  }

  // Starts spec again after delayMs, unless stopAll() comes first.
  restartLater(spec: ChildSpec, delayMs: number): void {
    const timer = setTimeout(() => {
      this.pending.delete(timer);
      if (!this.stopping) this.start(spec);
    }, delayMs);
    this.pending.add(timer);
  }

  // Resolves with the first IPC message that `accept` takes; rejects with what `accept` throws
  // (a child's 'fatal' message), or when the child exits first or the timeout passes. The exit
  // is taken from 'close', which comes after every IPC message the child sent: a child that
  // sends 'fatal' and exits is rejected with its message, not with its exit.
  waitFor<T>(child: Child, accept: (msg: unknown) => T | undefined, timeoutMs: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`${child.spec.name} did not become ready within ${Math.round(timeoutMs / 1000)} s`));
      }, timeoutMs);
      const onMessage = (msg: unknown) => {
        let v: T | undefined;
        try {
          v = accept(msg);
        } catch (err) {
          cleanup();
          reject(err);
          return;
        }
        if (v !== undefined) {
          cleanup();
          resolve(v);
        }
      };
      const onClose = (code: number | null, signal: NodeJS.Signals | null) => {
        cleanup();
        reject(new Error(`${child.spec.name} exited during start-up (${signal ? `signal ${signal}` : `code ${code}`})`));
      };
      const cleanup = () => {
        clearTimeout(timer);
        child.process.off('message', onMessage);
        child.process.off('close', onClose);
      };
      child.process.on('message', onMessage);
      child.process.once('close', onClose);
    });
  }

  // Stops every child: with a drain, those named in `first` (the frontend, draining its streams)
  // before the others, each group given the drain's grace before SIGKILL; else all at once.
  async stopAll(drain?: { first: string[]; graceMs: number }): Promise<void> {
    this.stopping = true;
    for (const t of this.pending) clearTimeout(t);
    this.pending.clear();
    if (!drain) return this.stopSome(() => true, this.graceMs, 'SIGINT');
    await this.stopSome((c) => drain.first.includes(c.spec.name), drain.graceMs, 'SIGTERM');
    await this.stopSome(() => true, drain.graceMs, 'SIGTERM');
  }

  // SIGKILL to every child now (a second Ctrl-C while stopping); stopAll() then ends at once.
  killAll(): void {
    for (const c of this.children.values()) c.process.kill('SIGKILL');
  }

  private async stopSome(which: (c: Child) => boolean, graceMs: number, signal: NodeJS.Signals): Promise<void> {
    const some = [...this.children.values()].filter(which);
    for (const c of some) c.process.kill(signal);
    await Promise.all(
      some.map(async (c) => {
        const timer = setTimeout(() => c.process.kill('SIGKILL'), graceMs);
        await c.exited;
        clearTimeout(timer);
      }),
    );
  }
}

// A process's shared-memory segments are named /kvserve-<pid>-... (native/common/shared-memory.h,
// and a tensor-parallel worker's group and KV pools): once it has exited, nothing maps them by
// name any more, and a KV pool is hundreds of MiB of memory.
function removeSegmentsOf(pid: number): void {
  const prefix = `kvserve-${pid}-`;
  let names: string[];
  try {
    names = fs.readdirSync('/dev/shm');
  } catch {
    return;
  }
  for (const n of names) if (n.startsWith(prefix)) fs.rmSync(path.join('/dev/shm', n), { force: true });
}
