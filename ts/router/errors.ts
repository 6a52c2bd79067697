// errors.ts: the router's one error class. The router refuses a request only for overload: every
// worker is at capacity and the wait queue is full, the request waited longer than the queue
// timeout, no worker has joined, or the router was closed. The frontend answers all of them with
// HTTP 503. Misuse of the API by the owner (a duplicate request id, a bad setting) is a plain
// TypeError / RangeError instead.

export type RouterOverloadReason = 'queue_full' | 'timeout' | 'no_workers' | 'closed';

export class RouterOverloadedError extends Error {
  readonly code = 'ERR_ROUTER_OVERLOADED';
  readonly status = 503;

  constructor(readonly reason: RouterOverloadReason, message: string) {
    super(message);
    this.name = 'RouterOverloadedError';
  }
}
