// worker-health.ts: the frontend's health probe of its workers, for every worker pool.
//
// Owns: one timer per pool that asks every watched worker for GET /load each intervalMs, with a
// deadline of timeoutMs. A worker is `down` after failuresToDown probes in a row fail (no answer
// in time, connection refused or reset: a dead, stopped or partitioned worker), or at once when
// its owner calls markDown() (the request plane could not reach it); it is up again after one
// probe answers. The owner hears each change (onDown / onUp) and every load a probe brought
// (onLoad), and routes only to workers that are up.
// Stays true: at most one probe per worker is in flight; a worker no longer watched is never
// reported again; the timer keeps no process alive.
import { WORKER_DRAINING_CODE, type WorkerId, type WorkerLoad } from '../protocol/index.ts';
import { RequestPlaneError, type WorkerClient } from '../runtime/request-client.ts';

export interface HealthSettings {
  intervalMs: number;
  timeoutMs: number;
  failuresToDown: number;
}

export const DEFAULT_HEALTH: HealthSettings = { intervalMs: 1000, timeoutMs: 1000, failuresToDown: 2 };

export interface HealthListener {
  onDown(id: WorkerId, why: string): void;
  onUp(id: WorkerId): void;
  onLoad?(id: WorkerId, load: WorkerLoad): void;
}

interface Watched {
  client: WorkerClient;
  down: boolean;
  failures: number;
  probing: boolean;
}

export class HealthMonitor {
  private readonly watched = new Map<WorkerId, Watched>();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly listener: HealthListener,
    private readonly settings: HealthSettings = DEFAULT_HEALTH,
  ) {
    this.timer = setInterval(() => this.probeAll(), settings.intervalMs);
    this.timer.unref();
  }

  // Starts watching a worker, as up.
  watch(id: WorkerId, client: WorkerClient): void {
    this.watched.set(id, { client, down: false, failures: 0, probing: false });
  }

  unwatch(id: WorkerId): void {
    this.watched.delete(id);
  }

  isDown(id: WorkerId): boolean {
    return this.watched.get(id)?.down ?? false;
  }

  // The owner saw the worker fail (its request plane refused or dropped a request).
  markDown(id: WorkerId, why: string): void {
    const w = this.watched.get(id);
    if (!w || w.down) return;
    w.down = true;
    this.listener.onDown(id, why);
  }

  close(): void {
    clearInterval(this.timer);
    this.watched.clear();
  }

  private probeAll(): void {
    for (const [id, w] of this.watched) {
      if (w.probing) continue;
      w.probing = true;
      w.client.load(this.settings.timeoutMs).then(
        (load) => {
          w.probing = false;
          if (this.watched.get(id) !== w) return;
          w.failures = 0;
          if (w.down) {
            w.down = false;
            this.listener.onUp(id);
          }
          this.listener.onLoad?.(id, load);
        },
        (err: Error) => {
          w.probing = false;
          if (this.watched.get(id) !== w) return;
          if (err instanceof RequestPlaneError && err.code === WORKER_DRAINING_CODE) this.markDown(id, 'it is draining');
          else if (++w.failures >= this.settings.failuresToDown) this.markDown(id, `${w.failures} health probes failed: ${err.message}`);
        },
      );
    }
  }
}
