// cluster-secret.ts: the cluster secret of the internal planes (--cluster-secret), and the checks
// every plane shares.
//
// Owns: reading the secret (KVSERVE_CLUSTER_SECRET in this process's environment, as the launcher
// passes it; never a command line), the request plane's handshake arithmetic, the HTTP header
// check, and the refusal to listen off loopback without a secret.
// Stays true: a secret is compared only in constant time (SHA-256 digests of both sides, so the
// lengths match too) and never logged; the HMACs are bound to both nonces and to their direction,
// so a server's proof cannot be replayed as a client's, nor one connection's on another.
//
// Request plane handshake (worker/server.ts <-> runtime/request-client.ts), once per connection,
// when the worker has a secret:
//   client -> worker  {"t":"hello","nonce":Nc}
//   worker -> client  {"t":"hello","nonce":Ns,"mac":HMAC(secret, "kvserve request-plane worker\n" Nc "\n" Ns)}
//   client -> worker  {"t":"auth","mac":HMAC(secret, "kvserve request-plane client\n" Ns "\n" Nc)}
// then the frames of server.ts, which the client may send right after its auth line. A worker
// without a secret answers the hello with {"t":"hello","nonce":null}, which a client with a secret
// refuses (it would talk to a worker anyone can reach). A worker with a secret refuses anything
// else before a valid auth with one line {"t":"refused","reason"} and closes the connection.
// Nonces: 16 random bytes, hex.
// HTTP: every request to a worker with a secret (but GET /ready, which tells nothing) carries
//   x-kvserve-cluster-auth: T.N.HMAC(secret, "kvserve http\n" METHOD "\n" PATH "\n" T "\n" N)
// (T: the sender's clock in ms, N: a nonce), else 401. The secret never crosses the network; a
// worker takes a header only within HTTP_AUTH_WINDOW_MS of its own clock (hosts' clocks may
// differ by that much) and only once (the nonces it saw within the window are kept), so a header
// overheard on the wire cannot be sent again, nor for another method or path.
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import net from 'node:net';

export const CLUSTER_SECRET_ENV = 'KVSERVE_CLUSTER_SECRET';
export const CLUSTER_AUTH_HEADER = 'x-kvserve-cluster-auth';
export const HTTP_AUTH_WINDOW_MS = 60_000;

// The secret of this process, or undefined (unset or empty).
export function clusterSecret(): string | undefined {
  return process.env[CLUSTER_SECRET_ENV] || undefined;
}

export function newNonce(): string {
  return randomBytes(16).toString('hex');
}

export function requestPlaneMac(secret: string, side: 'worker' | 'client', first: string, second: string): string {
  return createHmac('sha256', secret).update(`kvserve request-plane ${side}\n${first}\n${second}`).digest('hex');
}

// Constant time whatever the lengths: the SHA-256 digests of both are compared.
export function secretsEqual(a: string, b: string): boolean {
  const da = createHash('sha256').update(a).digest();
  const db = createHash('sha256').update(b).digest();
  return timingSafeEqual(da, db);
}

function httpMac(secret: string, method: string, path: string, time: string, nonce: string): string {
  return createHmac('sha256', secret).update(`kvserve http\n${method}\n${path}\n${time}\n${nonce}`).digest('hex');
}

// The header a request to a worker carries (see the header of this file).
export function httpAuthHeader(secret: string, method: string, path: string, now = Date.now()): string {
  const nonce = newNonce();
  return `${now}.${nonce}.${httpMac(secret, method, path, String(now), nonce)}`;
}

// A worker's check of that header: undefined when it is good, else why not.
export class HttpAuthCheck {
  private readonly seen = new Map<string, number>(); // nonce -> when it may be forgotten

  constructor(private readonly secret: string) {}

  check(method: string, path: string, header: string | string[] | undefined, now = Date.now()): string | undefined {
    if (typeof header !== 'string') return `no ${CLUSTER_AUTH_HEADER} header`;
    const m = /^(\d{1,16})\.([0-9a-f]{32})\.([0-9a-f]{64})$/.exec(header);
    if (!m) return `a malformed ${CLUSTER_AUTH_HEADER} header`;
    const [, time, nonce, mac] = m as unknown as [string, string, string, string];
    if (!secretsEqual(mac, httpMac(this.secret, method, path, time, nonce))) return 'a wrong cluster secret';
    if (Math.abs(now - Number(time)) > HTTP_AUTH_WINDOW_MS) return `a ${CLUSTER_AUTH_HEADER} header older or newer than ${HTTP_AUTH_WINDOW_MS / 1000} s (are the hosts' clocks apart?)`;
    for (const [n, until] of this.seen) {
      if (until > now) break; // inserted in time order, roughly: the rest are younger
      this.seen.delete(n);
    }
    if (this.seen.has(nonce)) return `a ${CLUSTER_AUTH_HEADER} header used before`;
    this.seen.set(nonce, now + 2 * HTTP_AUTH_WINDOW_MS);
    return undefined;
  }
}

export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, '$1');
  if (h === 'localhost') return true;
  if (net.isIPv4(h)) return h.startsWith('127.');
  if (net.isIPv6(h)) return h === '::1' || /^::ffff:127\./i.test(h);
  return false;
}

// An internal listener bound off loopback needs the secret: the error to refuse starting with.
export function offLoopbackWithoutSecret(host: string, secret: string | undefined): string | undefined {
  if (secret !== undefined || isLoopback(host)) return undefined;
  return `the worker's internal listeners would bind to ${host}, which is not loopback, without a cluster secret: set --cluster-secret (or ${CLUSTER_SECRET_ENV})`;
}
