// serve.ts: the part both completion routes share: run a Generation and answer with its shape,
// streamed (SSE) or whole, and log one line for the request.
//
// Stays true: nothing is written before every choice was accepted by a worker (refusals are
// plain HTTP errors); a client that goes away (the response closes before it finished) aborts
// every engine request of the request; a failure after the stream began is sent as one
// `data: {"error": ...}` event before `data: [DONE]`.
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { TokenLogprobs } from '../protocol/index.ts';
import { toApiError } from './errors.ts';
import type { Generation } from './generation.ts';
import type { ChoiceResult, ResponseShape } from './openai-shapes.ts';
import { SseStream } from './sse.ts';

export async function serveGeneration(request: FastifyRequest, reply: FastifyReply, gen: Generation, shape: ResponseShape): Promise<unknown> {
  const { active, modelName } = request.server.frontend;
  const logLine = () => ({ model: modelName, ...gen.summary() });
  const onClose = () => {
    if (!reply.raw.writableFinished) gen.abort();
  };
  reply.raw.on('close', onClose);
  active.add(gen);
  try {
    await gen.start();
    const headers = { 'x-worker-id': gen.workerId ?? '', 'x-request-id': gen.id };
    if (gen.plan.stream) return await streamed(request, reply, gen, shape, headers, logLine);
    const body = await whole(gen, shape);
    request.log.info(logLine(), 'request finished');
    return reply.headers(headers).send(body);
  } finally {
    active.delete(gen);
    reply.raw.off('close', onClose);
  }
}

async function streamed(
  request: FastifyRequest,
  reply: FastifyReply,
  gen: Generation,
  shape: ResponseShape,
  headers: Record<string, string>,
  logLine: () => Record<string, unknown>,
): Promise<void> {
  const sse = SseStream.open(reply, headers);
  for (const chunk of shape.openingChunks()) sse.send(chunk);
  try {
    await gen.run((d) => sse.send(shape.chunk(d)));
    if (gen.plan.includeUsage) sse.send(shape.usageChunk(gen.usage()));
    request.log.info(logLine(), 'request finished');
  } catch (err) {
    const e = toApiError(err);
    request.log.error({ ...logLine(), err: e.message }, 'request failed mid-stream');
    sse.send(JSON.stringify(e.body()));
  }
  sse.end();
}

async function whole(gen: Generation, shape: ResponseShape): Promise<unknown> {
  const wantsLogprobs = gen.plan.sampling.logprobs !== undefined;
  const results = Array.from({ length: gen.plan.prompts.length * gen.plan.n }, (_, index) => ({
    index,
    parts: [] as string[],
    reasoningParts: null as string[] | null,
    logprobs: wantsLogprobs ? ([] as TokenLogprobs[]) : null,
    finishReason: 'abort',
    stopReason: null as string | number | null,
  }));
  await gen.run((d) => {
    const r = results[d.index];
    r.parts.push(d.text);
    if (d.reasoning !== null) (r.reasoningParts ??= []).push(d.reasoning);
    if (d.logprobs) r.logprobs!.push(...d.logprobs);
    if (d.finishReason !== null) {
      r.finishReason = d.finishReason;
      r.stopReason = d.stopReason;
    }
  });
  const choices: ChoiceResult[] = results.map(({ parts, reasoningParts, ...r }) => ({
    ...r,
    text: parts.join(''),
    reasoning: reasoningParts === null ? null : reasoningParts.join(''),
  }));
  return shape.body(choices, gen.usage());
}
