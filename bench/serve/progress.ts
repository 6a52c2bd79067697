// progress.ts: a run's progress on stderr (stdout carries only the report): a redrawn bar on a
// terminal, a plain line every 10% otherwise (logs, CI).
export class Progress {
  private done = 0;
  private failed = 0;
  private lastDraw = 0;
  private lastDecile = 0;
  private readonly t0 = performance.now();
  private readonly tty = process.stderr.isTTY === true;

  constructor(
    private readonly label: string,
    private readonly total: number,
  ) {}

  tick(failed: boolean): void {
    this.done++;
    if (failed) this.failed++;
    const now = performance.now();
    if (this.tty) {
      if (now - this.lastDraw > 100 || this.done === this.total) this.draw(now);
    } else if (Math.floor((10 * this.done) / this.total) > this.lastDecile) {
      this.lastDecile = Math.floor((10 * this.done) / this.total);
      process.stderr.write(`${this.line(now)}\n`);
    }
  }

  end(): void {
    if (this.tty) process.stderr.write('\n');
  }

  private line(now: number): string {
    const failed = this.failed ? `, ${this.failed} failed` : '';
    return `${this.label}: ${this.done}/${this.total} requests${failed}, ${((now - this.t0) / 1000).toFixed(1)} s`;
  }

  private draw(now: number): void {
    this.lastDraw = now;
    const width = 30;
    const full = Math.round((width * this.done) / this.total);
    process.stderr.write(`\r[${'#'.repeat(full)}${'.'.repeat(width - full)}] ${this.line(now)}\x1b[K`);
  }
}
