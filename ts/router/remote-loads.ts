// remote-loads.ts: the other frontends' shares of the workers' load, as their snapshots say
// (FrontendLoad, ts/protocol): per frontend, its latest snapshot and when it lapses; per worker,
// the sum over the live snapshots. Pure bookkeeping with the caller's clock; the Redis side is
// ts/runtime/load-sharing.ts, the router takes the sums through setRemoteLoad().
//
// Stays true:
//   - a frontend's newer snapshot replaces its older one whole (a worker it no longer lists
//     drops to 0 from it);
//   - a snapshot lapses ttl_ms after it arrived (the receiver's clock: no clocks compared across
//     hosts; at most MAX_TTL_MS whatever the sender says): a frontend that died, or a Redis that
//     went away, leaves its share for at most that long, then the sums are this frontend's own
//     view again;
//   - total(w) is the sum over the live snapshots, kept up to date by apply() and expire(),
//     which return the workers whose sum changed.
import type { FrontendLoad, WorkerId } from '../protocol/index.ts';
import type { LoadShare } from './router.ts';

const MAX_TTL_MS = 60_000;

interface Snapshot {
  workers: Map<WorkerId, LoadShare>;
  expiresAt: number;
}

export class RemoteLoads {
  readonly #byFrontend = new Map<string, Snapshot>();
  readonly #totals = new Map<WorkerId, LoadShare>();

  get frontends(): number {
    return this.#byFrontend.size;
  }

  // Replaces the frontend's snapshot; returns the workers whose sum changed. A snapshot with no
  // worker forgets the frontend (it left, or has nothing pending).
  apply(load: FrontendLoad, now: number): WorkerId[] {
    const workers = new Map<WorkerId, LoadShare>();
    for (const [id, share] of Object.entries(load.workers)) {
      if (!Array.isArray(share)) continue;
      const [blocks, requests] = share;
      if (Number.isFinite(blocks) && Number.isFinite(requests) && (blocks !== 0 || requests !== 0)) workers.set(id as WorkerId, { blocks, requests });
    }
    const changed = this.#drop(load.frontend_id);
    if (workers.size > 0) {
      const ttl = Number.isFinite(load.ttl_ms) ? Math.min(Math.max(load.ttl_ms, 0), MAX_TTL_MS) : 0;
      this.#byFrontend.set(load.frontend_id, { workers, expiresAt: now + ttl });
      for (const [id, share] of workers) this.#add(id, share, 1, changed);
    }
    return [...changed];
  }

  // Drops the snapshots that lapsed by `now`; returns the workers whose sum changed.
  expire(now: number): WorkerId[] {
    const changed = new Set<WorkerId>();
    for (const [frontend, snap] of this.#byFrontend) {
      if (snap.expiresAt <= now) for (const id of this.#drop(frontend)) changed.add(id);
    }
    return [...changed];
  }

  // Forgets every snapshot; returns the workers whose sum changed.
  clear(): WorkerId[] {
    const changed = [...this.#totals.keys()];
    this.#byFrontend.clear();
    this.#totals.clear();
    return changed;
  }

  total(workerId: WorkerId): LoadShare {
    return this.#totals.get(workerId) ?? { blocks: 0, requests: 0 };
  }

  #drop(frontend: string): Set<WorkerId> {
    const changed = new Set<WorkerId>();
    const snap = this.#byFrontend.get(frontend);
    if (snap === undefined) return changed;
    this.#byFrontend.delete(frontend);
    for (const [id, share] of snap.workers) this.#add(id, share, -1, changed);
    return changed;
  }

  #add(id: WorkerId, share: LoadShare, sign: 1 | -1, changed: Set<WorkerId>): void {
    const t = this.#totals.get(id) ?? { blocks: 0, requests: 0 };
    t.blocks += sign * share.blocks;
    t.requests += sign * share.requests;
    if (t.blocks === 0 && t.requests === 0) this.#totals.delete(id);
    else this.#totals.set(id, t);
    changed.add(id);
  }
}
