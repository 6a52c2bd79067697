// placement.ts: which cores each worker's engine threads take.
//
// The ranks of every worker split the allowed CPUs evenly, and worker i takes the contiguous
// range after worker i-1's (a tensor-parallel worker's ranks then split that range:
// native/engine/tensor-parallel.h), so no two workers pin their threads to the same core. With
// more ranks than cores every rank gets one thread and workers get no range of their own.
export function cpuShares(tps: number[], cores: number): { numThreads: number; cpuOffset?: number }[] {
  const ranks = tps.reduce((s, tp) => s + tp, 0);
  const perRank = Math.max(1, Math.floor(cores / ranks));
  let offset = 0;
  return tps.map((tp) => {
    const share = { numThreads: tp * perRank, cpuOffset: ranks <= cores ? offset : undefined };
    offset += tp * perRank;
    return share;
  });
}
