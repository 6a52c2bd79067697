// common.ts: what the serving benchmarks share: one streamed completion over a keep-alive
// node:http client (fetch adds milliseconds of its own per request on this machine, which would
// be billed to the server), and writing a result file under bench/results/.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

// POSTs body to `${url}/v1/completions` with stream: true and calls onEvent for every SSE data
// event that carries JSON, with the time its bytes arrived. Resolves when the stream ends;
// rejects on a status other than 200 with the status and the error body's message, and with
// what onEvent throws (the request is then dropped).
export function streamCompletion(url: string, body: unknown, onEvent: (data: Record<string, unknown>, now: number) => void): Promise<void> {
  const text = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      `${url}/v1/completions`,
      { method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) } },
      (res) => {
        res.setEncoding('utf8');
        if (res.statusCode !== 200) {
          let body = '';
          res.on('data', (d: string) => (body += d));
          res.on('end', () => reject(new Error(`HTTP ${res.statusCode}: ${errorMessage(body)}`)));
          return;
        }
        let buf = '';
        res.on('data', (chunk: string) => {
          const now = performance.now();
          buf += chunk;
          let i: number;
          try {
            while ((i = buf.indexOf('\n\n')) >= 0) {
              const event = buf.slice(0, i);
              buf = buf.slice(i + 2);
              if (event.startsWith('data: {')) onEvent(JSON.parse(event.slice(6)) as Record<string, unknown>, now);
            }
          } catch (err) {
            req.destroy();
            reject(err as Error);
          }
        });
        res.on('end', resolve);
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(text);
  });
}

// The message of an OpenAI error body, else the body itself (cut short).
function errorMessage(body: string): string {
  try {
    const message = (JSON.parse(body) as { error?: { message?: unknown } }).error?.message;
    if (typeof message === 'string') return message;
  } catch {
    // not JSON: the text itself
  }
  return body.slice(0, 200);
}

// GETs a URL's body as text over the same keep-alive agent.
export function getText(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent }, (res) => {
        res.setEncoding('utf8');
        let body = '';
        res.on('data', (d: string) => (body += d));
        res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`GET ${url}: HTTP ${res.statusCode}`))));
        res.on('error', reject);
      })
      .on('error', reject);
  });
}

// Writes result as JSON to `out`, or to bench/results/<kind>-<date>.json; returns the path.
export function writeResult(kind: string, result: { date: string }, out?: string): string {
  const file = out ?? path.join('bench', 'results', `${kind}-${result.date.replace(/[:.]/g, '-')}.json`);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(result, null, 2));
  console.log(`\nwrote ${file}`);
  return file;
}
