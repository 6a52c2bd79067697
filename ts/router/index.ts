// index.ts: the router's public API. The KV router is pure TS, fed by its owner (the frontend):
// kv-index (block hash -> workers, replayed from KV events), policy (cost and selection),
// router (workers, load estimate, capacity, wait queue), errors (overload -> HTTP 503).
export { RouterOverloadedError, type RouterOverloadReason } from './errors.ts';
export { RemoteLoads } from './remote-loads.ts';
export { KvIndex, type ApplyStatus, type KvIndexStats } from './kv-index.ts';
export {
  createPolicy,
  defaultKvPolicySettings,
  kvCost,
  policyNames,
  seededRng,
  type Candidate,
  type KvPolicySettings,
  type Policy,
  type PolicyName,
  type Rng,
} from './policy.ts';
export {
  KvRouter,
  type EventStatus,
  type RouteDecision,
  type RouteRequest,
  type RouterMetrics,
  type RouterSettings,
  type WorkerMetrics,
  type LoadShare,
  type WorkerSpec,
} from './router.ts';
