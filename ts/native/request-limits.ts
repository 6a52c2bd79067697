// request-limits.ts: the engine's constant per-request limits (native/kv/request-limits.h), for
// code that checks requests without loading the native addon (the frontend's JSON schemas, built
// at import; the frontend process loads the addon only with --router kv, and lazily).
// The addon's requestLimits() is the source: test/native/request-limits.test.ts fails when
// these differ from it, and Engine (engine.ts) validates with the addon's own values.
import type { NativeRequestLimits } from './addon.js';

export const REQUEST_LIMITS: Readonly<NativeRequestLimits> = Object.freeze({
  minMaxTokens: 1,
  minTemperature: 0,
  maxTopP: 1,
  minTopK: -1,
  maxMinP: 1,
  minPenalty: -2,
  maxPenalty: 2,
  maxLogprobs: 20,
});
