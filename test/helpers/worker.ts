// worker.ts (test helper): one real worker process (ts/worker/main.ts, forked with tsx as the
// launcher does), resolved once it reports ready; stop() signals it and waits for its exit.
import { fork, type ChildProcess } from 'node:child_process';
import type { WorkerInfo } from '../../ts/protocol/index.ts';
import type { WorkerConfig } from '../../ts/worker/main.ts';

export interface ForkedWorker {
  info: WorkerInfo;
  proc: ChildProcess;
  exited: Promise<void>;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

// env: added to the worker's environment, as the launcher passes secrets (KVSERVE_REDIS_URL,
// KVSERVE_CLUSTER_SECRET); both are emptied unless given, so the test's own environment does not
// leak into the worker.
export async function forkWorker(config: WorkerConfig, env: Record<string, string> = {}): Promise<ForkedWorker> {
  const proc = fork('ts/worker/main.ts', ['--config', JSON.stringify(config)], {
    execArgv: ['--import', 'tsx'],
    stdio: 'inherit',
    env: { ...process.env, KVSERVE_REDIS_URL: '', KVSERVE_CLUSTER_SECRET: '', ...env },
  });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const info = await new Promise<WorkerInfo>((resolve, reject) => {
    proc.on('message', (m: { type: string; info?: WorkerInfo; message?: string }) => {
      if (m.type === 'ready') resolve(m.info!);
      if (m.type === 'fatal') reject(new Error(m.message));
    });
    void exited.then(() => reject(new Error(`${config.workerId} exited before ready`)));
  });
  return {
    info,
    proc,
    exited,
    stop: async (signal = 'SIGTERM') => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      await exited;
    },
  };
}
