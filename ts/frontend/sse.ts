// sse.ts: a Server-Sent Events response written straight to the socket: `data: {json}\n\n` per
// event, `data: [DONE]\n\n` at the end (OpenAI's stream framing).
//
// Stays true: the reply is hijacked (fastify sends nothing more); every event is written at once
// (no buffering of the whole response; the server's sockets have Nagle off); writes after the
// end or after the client went away are dropped.
import type { ServerResponse } from 'node:http';
import type { FastifyReply } from 'fastify';

export class SseStream {
  private ended = false;

  private constructor(private readonly res: ServerResponse) {}

  static open(reply: FastifyReply, headers: Record<string, string>): SseStream {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', ...headers });
    res.flushHeaders();
    return new SseStream(res);
  }

  send(json: string): void {
    if (!this.ended && !this.res.destroyed) this.res.write(`data: ${json}\n\n`);
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    if (!this.res.destroyed) this.res.end('data: [DONE]\n\n');
  }
}
