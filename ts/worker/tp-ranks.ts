// tp-ranks.ts: starts ranks 1..N-1 of a tensor-parallel worker as processes (tp-rank-main.ts),
// before this process creates the Engine that is rank 0 (native/engine/tensor-parallel.h).
//
// Owns: the rank processes. Each gets the engine options and its rank on the command line, and
// runs runTensorParallelRank until the engine stops it; it dies with this process (a parent-death
// signal set natively), and this process learns of a rank's exit through onExit.
// Which cores: every rank's thread pool is pinned to its contiguous share of the worker's CPUs
// (numThreads of them from cpuOffset, given by the launcher): rank r of N takes [r C / N, (r + 1) C / N).
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { EngineOptions } from '../native/index.ts';

const RANK_MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), 'tp-rank-main.ts');

export interface TpRanks {
  group: string; // the shared-memory segment the ranks meet in
  pids: number[]; // ranks 1..N-1
  // Called once, for the first rank that exits while the ranks are meant to run.
  onExit(fn: (rank: number, how: string) => void): void;
  // The engine is closing: a rank's exit is expected from now on.
  stopping(): void;
  kill(): void;
}

let groups = 0;

export function startTpRanks(engine: EngineOptions, tpSize: number, label: string): TpRanks {
  const group = `/kvserve-${process.pid}-tp${groups++}`;
  const children: ChildProcess[] = [];
  let expected = false;
  let listener: ((rank: number, how: string) => void) | undefined;
  let first: { rank: number; how: string } | undefined;
  for (let rank = 1; rank < tpSize; rank++) {
    const options = { ...engine, tpSize, tpGroup: group };
    const child = spawn(process.execPath, [...process.execArgv, RANK_MAIN, '--rank', String(rank), '--label', label, '--options', JSON.stringify(options)], {
      stdio: ['ignore', 'inherit', 'inherit'],
      env: { ...process.env, KVSERVE_PROCESS: `${label} rank ${rank}` },
    });
    child.on('exit', (code, signal) => {
      if (expected || first) return;
      first = { rank, how: signal ? `signal ${signal}` : `exit code ${code}` };
      listener?.(first.rank, first.how);
    });
    children.push(child);
  }
  return {
    group,
    pids: children.map((c) => c.pid ?? 0).filter((p) => p > 0),
    onExit(fn) {
      listener = fn;
      if (first) fn(first.rank, first.how);
    },
    stopping() {
      expected = true;
    },
    kill() {
      expected = true;
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    },
  };
}
