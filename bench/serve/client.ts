// client.ts: one benchmark request, as vLLM's `bench serve` sends it to an OpenAI completions
// endpoint: streamed, temperature 0, max_tokens = the output length with ignore_eos, and
// stream_options.include_usage so the output token count is the server's.
//
// Timing (vLLM's): TTFT at the first SSE chunk carrying a choice, an ITL gap at every later
// one, E2E at the last one. A non-200 status, an error event, a stream without a choice or
// without usage, or a dropped connection is a failed request with its message.
// withTokenIds: also ask for the output's token ids (logprobs 0 + return_tokens_as_token_ids,
// both vLLM parameters), which a multi-turn conversation needs to send its history exactly.
import { streamCompletion } from '../common.ts';

export interface CompletionTimings {
  ttftMs: number | null;
  itlMs: number[];
  e2eMs: number | null;
  outputTokens: number;
  outputIds: number[];
  error: string | null;
}

interface Chunk {
  choices?: { logprobs?: { tokens?: string[] } | null }[];
  usage?: { completion_tokens: number } | null;
  error?: { message?: string };
}

export async function sendCompletion(url: string, model: string, prompt: number[], maxTokens: number, withTokenIds: boolean): Promise<CompletionTimings> {
  const body = {
    model, prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true, stream: true,
    stream_options: { include_usage: true },
    ...(withTokenIds ? { logprobs: 0, return_tokens_as_token_ids: true } : {}),
  };
  const t: CompletionTimings = { ttftMs: null, itlMs: [], e2eMs: null, outputTokens: 0, outputIds: [], error: null };
  let usage: number | null = null;
  const t0 = performance.now();
  let last = t0;
  try {
    await streamCompletion(url, body, (data, now) => {
      const chunk = data as Chunk;
      if (chunk.error) throw new Error(`error event: ${chunk.error.message ?? JSON.stringify(chunk.error)}`);
      if (chunk.usage) usage = chunk.usage.completion_tokens;
      const choice = chunk.choices?.[0];
      if (!choice) return;
      if (t.ttftMs === null) t.ttftMs = now - t0;
      else t.itlMs.push(now - last);
      last = now;
      for (const token of choice.logprobs?.tokens ?? []) t.outputIds.push(Number(token.slice(token.indexOf(':') + 1)));
    });
    if (t.ttftMs === null) throw new Error('the stream ended without a token');
    if (usage === null) throw new Error('the stream ended without usage (stream_options.include_usage)');
    t.e2eMs = last - t0;
    t.outputTokens = usage;
  } catch (err) {
    return { ttftMs: null, itlMs: [], e2eMs: null, outputTokens: 0, outputIds: [], error: (err as Error).message };
  }
  return t;
}
