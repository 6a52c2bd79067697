// The engine's per-request limits have one source, native/kv/request-limits.h: the addon exports
// them (requestLimits()), ts/native/request-limits.ts mirrors them for code that does not load
// the addon (the frontend), and this test fails when the two differ. It also checks that the TS
// checks before the engine use those numbers: normaliseSampling (each limit's boundary accepted,
// one past it refused) and the frontend's JSON schemas where their ranges are the engine's.
import { describe, expect, it } from 'vitest';
import { chatCompletionSchema, completionSchema } from '../../ts/frontend/schemas.ts';
import { loadAddon, normaliseSampling, type NativeRequestLimits } from '../../ts/native/index.ts';
import { REQUEST_LIMITS } from '../../ts/native/request-limits.ts';

const L = REQUEST_LIMITS;

function refusal(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return `${(err as { code?: string }).code}: ${(err as Error).message}`;
  }
  return 'no error';
}

describe('request limits', () => {
  it("the TS constants are the addon's requestLimits()", () => {
    const native: NativeRequestLimits = loadAddon().requestLimits();
    expect(native).toEqual({ ...REQUEST_LIMITS });
  });

  it('normaliseSampling accepts each limit and refuses one step past it', () => {
    const ok = (s: Parameters<typeof normaliseSampling>[2]) => normaliseSampling('r', [1, 2, 3], s);
    const bad = (s: Parameters<typeof normaliseSampling>[2]) => refusal(() => ok(s));
    expect(ok({ maxTokens: L.minMaxTokens }).maxTokens).toBe(L.minMaxTokens);
    expect(bad({ maxTokens: L.minMaxTokens - 1 })).toMatch(/^ERR_INVALID_ARGUMENT: maxTokens must be an integer in \[1, /);
    expect(ok({ temperature: L.minTemperature }).temperature).toBe(0);
    expect(bad({ temperature: L.minTemperature - 1e-9 })).toMatch(/temperature must be a number in \[0, /);
    expect(ok({ topP: L.maxTopP }).topP).toBe(1);
    expect(bad({ topP: L.maxTopP + 1e-9 })).toMatch(/topP must be a number in \[.*, 1\]/);
    expect(ok({ topK: L.minTopK }).topK).toBe(-1);
    expect(bad({ topK: L.minTopK - 1 })).toMatch(/topK must be an integer in \[-1, /);
    expect(ok({ minP: L.maxMinP }).minP).toBe(1);
    expect(bad({ minP: L.maxMinP + 1e-9 })).toMatch(/minP must be a number in \[0, 1\]/);
    for (const name of ['presencePenalty', 'frequencyPenalty'] as const) {
      expect(ok({ [name]: L.minPenalty })[name]).toBe(-2);
      expect(ok({ [name]: L.maxPenalty })[name]).toBe(2);
      expect(bad({ [name]: L.maxPenalty + 1e-9 })).toContain(`${name} must be a number in [-2, 2]`);
      expect(bad({ [name]: L.minPenalty - 1e-9 })).toContain(`${name} must be a number in [-2, 2]`);
    }
    expect(ok({ logprobs: L.maxLogprobs }).logprobs).toBe(20);
    expect(bad({ logprobs: L.maxLogprobs + 1 })).toBe('ERR_INVALID_ARGUMENT: logprobs must be an integer in [0, 20], got 21');
  });

  it('normaliseSampling checks against the limits it is given (Engine passes its addon\'s)', () => {
    const narrower = { ...REQUEST_LIMITS, maxLogprobs: 5 };
    expect(refusal(() => normaliseSampling('r', [1], { logprobs: 6 }, {}, narrower))).toContain('logprobs must be an integer in [0, 5]');
    expect(normaliseSampling('r', [1], { logprobs: 6 }).logprobs).toBe(6);
  });

  it("the frontend schemas take the engine's ranges from the same constants", () => {
    const chat = chatCompletionSchema.properties;
    const completion = completionSchema.properties;
    expect(chat.max_tokens.minimum).toBe(L.minMaxTokens);
    expect(chat.max_completion_tokens.minimum).toBe(L.minMaxTokens);
    expect(chat.top_p.maximum).toBe(L.maxTopP);
    expect(chat.top_k.minimum).toBe(L.minTopK);
    expect(chat.min_p.maximum).toBe(L.maxMinP);
    for (const p of [chat.presence_penalty, chat.frequency_penalty]) {
      expect([p.minimum, p.maximum]).toEqual([L.minPenalty, L.maxPenalty]);
    }
    expect(chat.top_logprobs.maximum).toBe(L.maxLogprobs);
    expect(completion.logprobs.maximum).toBe(L.maxLogprobs);
    // The API's own, narrower ranges stay the API's.
    expect(chat.temperature.maximum).toBe(2);
    expect(chat.repetition_penalty.maximum).toBe(2);
  });
});
