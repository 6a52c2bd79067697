// supervisor.ts: starts and watches the launcher's child processes (workers, frontend).
//
// Owns: every child process. Each child is a Node process running one of our TS entry points
// with an IPC channel; children exit by themselves when that channel closes, so even a
// launcher killed with SIGKILL leaves no orphan behind.
// Stays true: after stopAll() resolves, no child is alive (SIGTERM, then SIGKILL after the
// grace period). A child that exits while we are not stopping is reported to onExit.
import { fork, type ChildProcess } from 'node:child_process';
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
}

export class Supervisor {
  private readonly children = new Map<string, Child>();
  private stopping = false;

  constructor(
    private readonly onExit: (child: Child, code: number | null, signal: NodeJS.Signals | null) => void,
    private readonly graceMs = 10_000,
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
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      proc.once('exit', (code, signal) => {
        if (this.children.get(spec.name)?.process === proc) this.children.delete(spec.name);
        resolve({ code, signal });
        if (!this.stopping) this.onExit(child, code, signal);
      });
    });
    const child: Child = { spec, process: proc, exited };
    this.children.set(spec.name, child);
    return child;
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

  async stopAll(): Promise<void> {
    this.stopping = true;
    const all = [...this.children.values()];
    for (const c of all) c.process.kill('SIGTERM');
    await Promise.all(
      all.map(async (c) => {
        const timer = setTimeout(() => c.process.kill('SIGKILL'), this.graceMs);
        await c.exited;
        clearTimeout(timer);
      }),
    );
  }
}
